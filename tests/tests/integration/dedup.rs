//! An insert block is admitted once: by content (whatever the format) or by client token.

use tandem_tests::single_node;

use crate::{EVENTS, event_rows, json_each_row};

#[tokio::test]
async fn same_rows_in_another_format_are_deduplicated() {
    let (node, _dir) = single_node(&[]).await;
    node.sql(EVENTS).await;
    let rows = event_rows();
    let first = node.insert("events", "JSONEachRow", json_each_row(&rows)).await;
    assert_eq!(first["deduplicated"], false);
    assert_eq!(first["rows_written"], 20);
    let first_parts: Vec<_> = first["parts"].as_array().unwrap().iter().map(|p| p["part"].clone()).collect();
    assert_eq!(first_parts.len(), 2, "two months, two parts");

    // The same rows, exported as CSV and as TSV in the order they were sent: the same block.
    for format in ["CSV", "TabSeparated"] {
        let export =
            node.request(&format!("SELECT * FROM events ORDER BY id FORMAT {format}"), &[], Vec::new()).await.ok();
        let again = node.request(&format!("INSERT INTO events FORMAT {format}"), &[], export.body).await.ok();
        assert_eq!(again.header("x-tandem-deduplicated").as_deref(), Some("true"), "{format}");
        let summary = again.json();
        assert_eq!(summary["rows_written"], 0);
        let parts: Vec<_> = summary["parts"].as_array().unwrap().iter().map(|p| p["part"].clone()).collect();
        assert_eq!(parts, first_parts, "a duplicate names the parts that hold the block");
    }
    assert_eq!(node.count("events").await, 20);

    // The same rows in another order are another block.
    let reversed: Vec<_> = rows.iter().rev().cloned().collect();
    let other = node.insert("events", "JSONEachRow", json_each_row(&reversed)).await;
    assert_eq!(other["deduplicated"], false);
    assert_eq!(node.count("events").await, 40);

    // Block ids belong to their table.
    node.sql(&EVENTS.replace("events", "scratch")).await;
    let scratch = node.insert("scratch", "JSONEachRow", json_each_row(&rows)).await;
    assert_eq!(scratch["deduplicated"], false, "block ids are per table");
}

#[tokio::test]
async fn token_identifies_the_block_and_dedup_can_be_turned_off() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, v Float64) ORDER BY id").await;
    let token = [("insert_deduplication_token", "batch-7")];
    node.request("INSERT INTO t FORMAT CSV", &token, "1,1\n2,2\n").await.ok();
    let retried = node.request("INSERT INTO t FORMAT CSV", &token, "1,1\n2,2\n3,3\n").await.ok().json();
    assert_eq!(retried["deduplicated"], true, "the token, not the content, names the block: {retried}");
    assert_eq!(node.count("t").await, 2);

    let other =
        node.request("INSERT INTO t FORMAT CSV", &[("insert_deduplication_token", "batch-8")], "1,1\n2,2\n").await.ok();
    assert_eq!(other.json()["deduplicated"], false);
    assert_eq!(node.count("t").await, 4);

    for _ in 0..2 {
        let answer = node.request("INSERT INTO t FORMAT CSV", &[("insert_deduplicate", "0")], "9,9\n").await.ok();
        assert_eq!(answer.json()["deduplicated"], false);
    }
    assert_eq!(node.sql("SELECT count() FROM t WHERE id = 9").await.trim(), "2", "without dedup both copies are kept");
}

#[tokio::test]
async fn dedup_survives_a_restart() {
    let (mut node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    node.insert("t", "TSV", "1\n2\n").await;
    node.kill();
    node.restart().await.unwrap();
    let retry = node.insert("t", "TSV", "1\n2\n").await;
    assert_eq!(retry["deduplicated"], true);
    assert_eq!(node.count("t").await, 2);
}

#[tokio::test]
async fn the_dedup_window_expires_by_count_and_by_time() {
    let (node, _dir) = single_node(&["--dedup-prune-interval-ms", "100"]).await;
    node.sql("CREATE TABLE c (id UInt64) ORDER BY id SETTINGS dedup_window_blocks = 3").await;
    for block in 1..=4 {
        node.insert("c", "TSV", format!("{block}\n")).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let inside = node.insert("c", "TSV", "2\n").await;
    assert_eq!(inside["deduplicated"], true, "block 2 is the 3rd newest: inside the window");
    let outside = node.insert("c", "TSV", "1\n").await;
    assert_eq!(outside["deduplicated"], false, "block 1 is the 4th newest: outside the window");
    assert_eq!(node.count("c").await, 5, "the re-admitted block is stored again");

    node.sql("CREATE TABLE s (id UInt64) ORDER BY id SETTINGS dedup_window_seconds = 2").await;
    let started = std::time::Instant::now();
    node.insert("s", "TSV", "1\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let inside = node.insert("s", "TSV", "1\n").await;
    assert!(started.elapsed() < std::time::Duration::from_millis(1900), "the check ran inside the window");
    assert_eq!(inside["deduplicated"], true, "1 s into a 2 s window");
    tokio::time::sleep(std::time::Duration::from_millis(2300).saturating_sub(started.elapsed())).await;
    let outside = node.insert("s", "TSV", "1\n").await;
    assert_eq!(outside["deduplicated"], false, "2.3 s into a 2 s window: forgotten, even before a prune pass");
    assert_eq!(node.count("s").await, 2);
}
