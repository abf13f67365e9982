//! What was acknowledged survives a crash; a damaged part file is detected and never served.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tandem_tests::single_node;
use tokio::sync::Mutex;

const ROWS_PER_INSERT: u64 = 50;

/// How one insert ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Acknowledged: every row must survive the crash.
    Ok,
    /// Refused with a status: nothing of it may be there.
    Failed,
    /// Cut off by the crash: all of it or nothing.
    Unknown,
}

/// Writers insert without pause while the node is killed (SIGKILL) in the middle of their
/// requests, three times; after each restart every acknowledged row is there, no refused row
/// is, and no insert is there in part.
#[tokio::test]
async fn acknowledged_inserts_survive_sigkill_while_acks_are_in_flight() {
    let (mut node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, ts DateTime, v Float64) ORDER BY id PARTITION BY toYYYYMMDD(ts)").await;
    let inserts: Arc<Mutex<BTreeMap<u64, Class>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    for round in 0..3u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let (http, url, stop, inserts) = (http.clone(), node.url.clone(), stop.clone(), inserts.clone());
                tokio::spawn(async move {
                    let mut insert = (round * 10 + w) * 100_000;
                    while !stop.load(Ordering::SeqCst) {
                        insert += 1;
                        let body: String = (0..ROWS_PER_INSERT)
                            .map(|i| format!("{},2024-01-{:02} 00:00:00,{i}\n", insert * 1000 + i, 1 + i % 3))
                            .collect();
                        let answer =
                            http.post(&url).query(&[("query", "INSERT INTO t FORMAT CSV")]).body(body).send().await;
                        // A 5xx may come after the write (a timeout waiting for it to apply):
                        // only a 4xx is a certain refusal.
                        let (class, connection_lost) = match answer {
                            Ok(r) if r.status().is_success() => (Class::Ok, false),
                            Ok(r) if r.status().is_client_error() => (Class::Failed, false),
                            Ok(_) => (Class::Unknown, false),
                            Err(_) => (Class::Unknown, true),
                        };
                        inserts.lock().await.insert(insert, class);
                        if connection_lost {
                            return;
                        }
                    }
                })
            })
            .collect();
        // Kill once acknowledgements are flowing, with requests in flight.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while inserts.lock().await.values().filter(|c| **c == Class::Ok).count() < 20 * (round as usize + 1) {
            assert!(tokio::time::Instant::now() < deadline, "inserts are acknowledged");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        node.kill();
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            tokio::time::timeout(Duration::from_secs(30), writer).await.expect("writers stop").unwrap();
        }
        node.restart().await.unwrap();

        let ids = node.sql("SELECT id FROM t ORDER BY id FORMAT TSV").await;
        let mut present: BTreeMap<u64, u64> = BTreeMap::new();
        for id in ids.lines().map(|l| l.parse::<u64>().unwrap()) {
            *present.entry(id / 1000).or_default() += 1;
        }
        let inserts = inserts.lock().await;
        for (insert, class) in inserts.iter() {
            let rows = present.get(insert).copied().unwrap_or(0);
            match class {
                Class::Ok => assert_eq!(rows, ROWS_PER_INSERT, "acknowledged insert {insert} survives whole"),
                Class::Failed => assert_eq!(rows, 0, "refused insert {insert} stored nothing"),
                Class::Unknown => assert!(rows == 0 || rows == ROWS_PER_INSERT, "insert {insert}: {rows} rows"),
            }
        }
        assert!(present.keys().all(|i| inserts.contains_key(i)), "no rows nobody wrote");
    }
    let inserts = inserts.lock().await;
    let unknown = inserts.values().filter(|c| **c == Class::Unknown).count();
    assert!(unknown > 0, "the kills caught requests in flight");
    assert_eq!(node.sql("SHOW TABLES").await, "t\n");
    let summary = node.insert("t", "CSV", "5,2024-01-05 00:00:00,1\n").await;
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
    assert_eq!(node.sql("SELECT sum(v) FROM t").await.trim(), "30", "only the intact part is served");
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
