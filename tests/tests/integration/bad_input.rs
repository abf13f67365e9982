//! Bad input gets a specific status and a message naming the problem, stores nothing, and the
//! node keeps serving.

use tandem_tests::{Tandem, single_node};

async fn refused(node: &Tandem, sql: &str, body: &str, status: u16, needles: &[&str]) {
    let answer = node.request(sql, &[], body.to_string()).await;
    let text = answer.text();
    assert_eq!(answer.status, status, "{sql}: {text}");
    assert_eq!(answer.header("x-tandem-retryable").as_deref(), Some("false"), "{sql}: resending bad input cannot help");
    for needle in needles {
        assert!(text.contains(needle), "{sql}: expected {needle:?} in {text:?}");
    }
}

#[tokio::test]
async fn each_bad_insert_is_refused_and_changes_nothing() {
    let (node, _dir) = single_node(&["--max-body-bytes", "4096"]).await;
    node.sql("CREATE TABLE t (id UInt64, ts DateTime64(3), v Float64) ORDER BY id PARTITION BY toYYYYMM(ts)").await;
    node.insert("t", "JSONEachRow", "{\"id\":1,\"ts\":\"2024-01-01 00:00:00\",\"v\":1}\n").await;
    let parts_before = node.sql("SELECT count() FROM system.parts").await;

    // Malformed JSON on line 3: the two good rows before it are not stored either.
    let body = "{\"id\":2,\"ts\":\"2024-01-01 00:00:00\",\"v\":2}\n{\"id\":3,\"ts\":\"2024-02-01 00:00:00\",\"v\":3}\n{\"id\":4,\"ts\":\"2024-01-01 00:00:00\" \"v\":4}\n";
    refused(&node, "INSERT INTO t FORMAT JSONEachRow", body, 400, &["line 3", "column"]).await;
    // A value of the wrong type: the column, its type, and what was sent.
    let body =
        "{\"id\":2,\"ts\":\"2024-01-01 00:00:00\",\"v\":2}\n{\"id\":5,\"ts\":\"2024-01-01 00:00:00\",\"v\":\"fast\"}\n";
    refused(&node, "INSERT INTO t FORMAT JSONEachRow", body, 400, &["line 2", "`v`", "Float64", "string", "fast"])
        .await;
    refused(
        &node,
        "INSERT INTO t FORMAT JSONEachRow",
        "{\"id\":2.5,\"ts\":\"2024-01-01 00:00:00\",\"v\":1}\n",
        400,
        &["line 1", "`id`", "UInt64", "2.5"],
    )
    .await;
    refused(
        &node,
        "INSERT INTO t FORMAT JSONEachRow",
        "{\"id\":2,\"ts\":\"2024-01-01 00:00:00\",\"v\":1}\n\n{\"id\":\"two\",\"ts\":\"2024-01-01 00:00:00\",\"v\":1}\n",
        400,
        &["line 3", "`id`", "UInt64", "two"],
    )
    .await;
    refused(
        &node,
        "INSERT INTO t FORMAT CSV",
        "2,2024-01-01 00:00:00,2\n6,2024-01-01 00:00:00,abc\n",
        400,
        &["line 2", "`v`", "Float64", "abc"],
    )
    .await;
    refused(
        &node,
        "INSERT INTO t FORMAT CSV",
        "2,2024-01-01 00:00:00\n",
        400,
        &["line 1", "expected 3 fields, found 2"],
    )
    .await;
    refused(
        &node,
        "INSERT INTO t FORMAT TSV",
        "7\tyesterday\t1\n",
        400,
        &["line 1", "`ts`", "DateTime64(3)", "yesterday"],
    )
    .await;
    refused(&node, "INSERT INTO t FORMAT JSONEachRow", "{\"id\":8,\"colour\":\"red\"}\n", 400, &["colour"]).await;
    refused(&node, "INSERT INTO t FORMAT Parquet", "not parquet", 400, &["Parquet"]).await;
    refused(&node, "INSERT INTO t FORMAT XML", "<row/>", 400, &["unknown format `XML`", "JSONEachRow"]).await;
    refused(&node, "INSERT INTO nope FORMAT CSV", "1\n", 404, &["`nope`"]).await;
    refused(&node, "SELECT * FROM nope", "", 404, &["`nope`"]).await;
    refused(&node, "SELEKT 1", "", 400, &[]).await;
    let big = "9,2024-01-01 00:00:00,1\n".repeat(400);
    refused(&node, "INSERT INTO t FORMAT CSV", &big, 413, &["4096 bytes"]).await;

    assert_eq!(node.count("t").await, 1, "no rejected insert stored anything");
    assert_eq!(node.sql("SELECT count() FROM system.parts").await, parts_before, "no part was registered");
    assert_eq!(node.get("health").await.status, 200);
    // Unknown fields can be skipped on request.
    node.request(
        "INSERT INTO t FORMAT JSONEachRow",
        &[("input_format_skip_unknown_fields", "1")],
        "{\"id\":8,\"colour\":\"red\"}\n",
    )
    .await
    .ok();
    assert_eq!(node.count("t").await, 2);
}

#[tokio::test]
async fn bad_ddl_and_settings_are_named() {
    let (node, _dir) = single_node(&[]).await;
    refused(&node, "CREATE TABLE t (a Int64) ORDER BY b", "", 400, &["`b`"]).await;
    refused(&node, "CREATE TABLE t (a Map(String, Int64))", "", 400, &["column `a`", "supported"]).await;
    refused(&node, "CREATE TABLE t (a Int64) PARTITION BY toYYYYMM(a)", "", 400, &["`a` is Int64"]).await;
    node.sql("CREATE TABLE t (a Int64) ORDER BY a").await;
    refused(&node, "CREATE TABLE t (a Int64)", "", 409, &["already exists"]).await;
    node.sql("CREATE TABLE IF NOT EXISTS t (a Int64)").await;
    refused(&node, "DROP TABLE nope", "", 404, &["`nope`"]).await;
    node.sql("DROP TABLE IF EXISTS nope").await;
    let answer = node.request("INSERT INTO t FORMAT CSV", &[("insert_deduplicate", "maybe")], "1\n").await;
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("insert_deduplicate"));
    let answer = node.request("INSERT INTO t FORMAT CSV", &[("insert_quorum", "2")], "1\n").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(node.count("t").await, 0);
}
