//! The README's walkthrough, run as written (with the test node's address): the commands a
//! newcomer copies must work and answer what the README says they answer.

use tandem_tests::single_node;

/// The first ```sh block after the given heading.
fn shell_block(readme: &str, heading: &str) -> String {
    let section = readme.split(heading).nth(1).unwrap_or_else(|| panic!("README has no {heading:?}"));
    let block = section.split("```sh\n").nth(1).expect("a sh block in the section");
    block.split("\n```").next().expect("the block ends").to_string()
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_written() {
    let (node, _dir) = single_node(&[]).await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let address = node.url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let script = shell_block(&readme, "## Walkthrough")
        .replace("127.0.0.1:8123", &address)
        .replace("curl ", "curl --fail-with-body ");
    let output = std::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the walkthrough failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(r#""rows_written":2,"rows_deduplicated":0,"deduplicated":false"#), "{stdout}");
    assert!(
        stdout.contains(r#""rows_written":0,"rows_deduplicated":2,"deduplicated":true"#),
        "the retry is a duplicate: {stdout}"
    );
    // Columns are named as written; count() is a 64-bit integer: quoted in JSON, as ClickHouse
    // writes both.
    assert!(stdout.contains(r#"{"host":"a","count()":"1","avg(v)":1.5}"#), "{stdout}");
    assert!(stdout.contains("events\t"), "system.parts lists the parts: {stdout}");
}
