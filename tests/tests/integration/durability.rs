//! What was acknowledged survives a crash; a damaged part file is detected and never served.

use tandem_tests::single_node;

#[tokio::test]
async fn acknowledged_inserts_survive_sigkill() {
    let (mut node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, ts DateTime, v Float64) ORDER BY id PARTITION BY toYYYYMMDD(ts)").await;
    for batch in 0..10 {
        let body: String =
            (0..100).map(|i| format!("{},2024-01-{:02} 00:00:00,{i}\n", batch * 100 + i, 1 + i % 3)).collect();
        node.insert("t", "CSV", body).await;
    }
    let before = node.sql("SELECT count(), sum(v), min(id), max(id) FROM t").await;
    node.kill();
    node.restart().await.unwrap();
    assert_eq!(node.sql("SELECT count(), sum(v), min(id), max(id) FROM t").await, before);
    assert_eq!(node.sql("SHOW TABLES").await, "t\n");
    let summary = node.insert("t", "CSV", "5000,2024-01-05 00:00:00,1\n").await;
    assert!(summary["revision"].as_i64().unwrap() > 10, "revisions keep growing after a restart: {summary}");
}

#[tokio::test]
async fn corrupt_part_is_detected_on_restart_and_not_served() {
    let (mut node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, v Float64) ORDER BY id").await;
    let damaged = node.insert("t", "CSV", "1,10\n2,20\n").await;
    node.insert("t", "CSV", "3,30\n").await;
    let damaged_id = damaged["parts"][0]["part"].as_str().unwrap().to_string();
    node.kill();

    let path = node.data_dir.join("parts").join(format!("{damaged_id}.parquet"));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    node.restart().await.unwrap();
    assert_eq!(node.sql("SELECT sum(v) FROM t").await.trim(), "30.0", "only the intact part is served");
    let problem = node.sql(&format!("SELECT active, problem FROM system.parts WHERE name = '{damaged_id}'")).await;
    assert!(problem.starts_with("false\tcorrupt"), "system.parts reports the damage: {problem:?}");
    assert!(!path.exists(), "the damaged file is moved aside");
    let quarantined = std::fs::read_dir(node.data_dir.join("quarantine")).unwrap().count();
    assert_eq!(quarantined, 1);
    let metrics = node.get("metrics").await.text();
    assert!(metrics.contains("tandem_parts_corrupt_total 1"), "{metrics}");
}

#[tokio::test]
async fn truncated_part_is_detected_too() {
    let (mut node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    let part = node.insert("t", "TSV", "1\n2\n3\n").await;
    let id = part["parts"][0]["part"].as_str().unwrap().to_string();
    node.kill();
    let path = node.data_dir.join("parts").join(format!("{id}.parquet"));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    node.restart().await.unwrap();
    assert_eq!(node.count("t").await, 0);
}
