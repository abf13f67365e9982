//! `docs/compatibility.md` stays true: its examples run, in order, against a real node, and
//! each answer it shows is the answer tandem gives.

use std::path::Path;

use tandem_tests::single_node;

/// The `sql` blocks of the document's Examples section, each with the `text` block that
/// follows it, if any.
fn examples(document: &str) -> Vec<(String, Option<String>)> {
    let section = document.split("\n## Examples\n").nth(1).expect("docs/compatibility.md has an Examples section");
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(language) = line.strip_prefix("```").filter(|l| !l.is_empty()) {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push((language.to_string(), body.join("\n")));
        }
    }
    let mut examples: Vec<(String, Option<String>)> = Vec::new();
    for (language, body) in blocks {
        match language.as_str() {
            "sql" => examples.push((body, None)),
            "text" => examples.last_mut().expect("a text block follows a sql block").1 = Some(body),
            other => panic!("unexpected block language {other}"),
        }
    }
    examples
}

#[tokio::test]
async fn the_compatibility_examples_answer_as_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/compatibility.md");
    let document = std::fs::read_to_string(&path).unwrap();
    let examples = examples(&document);
    assert!(examples.len() >= 8, "the examples were found: {}", examples.len());
    let (node, _dir) = single_node(&[]).await;
    for (sql, expected) in examples {
        let answer = node.request(&sql, &[], Vec::new()).await;
        assert_eq!(answer.status, 200, "{sql}\n{}", answer.text());
        if let Some(expected) = expected {
            assert_eq!(answer.text().trim_end(), expected.trim_end(), "{sql}");
        }
    }
}
