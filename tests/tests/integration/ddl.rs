//! Tables: create in ClickHouse or SQL-standard spelling, describe, list, drop; pruning.

use tandem_tests::single_node;

#[tokio::test]
async fn create_describe_show_drop() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE metrics (ts TIMESTAMP, name VARCHAR, value DOUBLE, n BIGINT, flag BOOLEAN) ORDER BY (name, ts) PARTITION BY toYYYYMMDD(ts)").await;
    node.sql("CREATE TABLE logs (ts DateTime64(3), line String) ORDER BY ts").await;
    assert_eq!(node.sql("SHOW TABLES").await, "logs\nmetrics\n");
    let describe = node.sql("DESCRIBE TABLE metrics FORMAT CSV").await;
    let types: Vec<_> = describe
        .lines()
        .map(|l| l.split(',').take(2).map(|f| f.trim_matches('"')).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(types, ["ts DateTime64(6)", "name String", "value Float64", "n Int64", "flag Bool"]);

    node.insert("logs", "TSV", "2024-01-01 00:00:00\thello\n").await;
    node.sql("DROP TABLE logs").await;
    assert_eq!(node.sql("SHOW TABLES").await, "metrics\n");
    assert_eq!(node.request("SELECT * FROM logs", &[], Vec::new()).await.status, 404);
    // A re-created table starts empty, and its first insert is not mistaken for a duplicate.
    node.sql("CREATE TABLE logs (ts DateTime64(3), line String) ORDER BY ts").await;
    assert_eq!(node.count("logs").await, 0);
    let again = node.insert("logs", "TSV", "2024-01-01 00:00:00\thello\n").await;
    assert_eq!(again["deduplicated"], false);
}

#[tokio::test]
async fn parts_outside_a_filter_are_skipped() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (ts DateTime, host String, v Float64) ORDER BY (host, ts) PARTITION BY toYYYYMM(ts)")
        .await;
    for month in 1..=6 {
        let body: String =
            (0..50).map(|i| format!("2024-{month:02}-{:02} 00:00:00\th{}\t{i}\n", 1 + i % 28, i % 5)).collect();
        node.insert("t", "TSV", body).await;
    }
    let plan = node.sql("EXPLAIN SELECT count() FROM t WHERE ts >= '2024-06-01 00:00:00'").await;
    assert!(plan.contains("file_groups={1 group: [["), "only June's part is scanned:\n{plan}");
    assert_eq!(node.sql("SELECT count() FROM t WHERE ts >= '2024-06-01 00:00:00'").await.trim(), "50");
    assert_eq!(node.sql("SELECT count() FROM t WHERE host = 'h1'").await.trim(), "60");
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let (node, _dir) = single_node(&[]).await;
    assert_eq!(node.get("health").await.text(), "Ok.\n");
    assert_eq!(node.get("ready").await.status, 200);
    node.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    node.insert("t", "TSV", "1\n").await;
    let metrics = node.get("metrics").await.text();
    assert!(metrics.contains("tandem_insert_rows_total 1"), "{metrics}");
    assert!(metrics.contains("tandem_catalog_active_parts 1"), "{metrics}");
}
