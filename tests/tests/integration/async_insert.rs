//! Asynchronous inserts: buffered into few parts, acknowledged from the fsynced log or once
//! registered, stored once however often and wherever they are retried, replayed after a
//! crash, and accepted while etcd is away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem_tests::{Cluster, Tandem, single_node};
use tokio::sync::Mutex;

const TABLE: &str = "CREATE TABLE t (id UInt64, ts DateTime, v Float64) ORDER BY id PARTITION BY toYYYYMMDD(ts)";

/// Insert `k`: ten rows with ids `k * 1000 + i`, over two days (two partitions).
fn rows(k: u64) -> String {
    (0..10u64).map(|i| format!("{},2024-01-{:02} 00:00:00,{i}\n", k * 1000 + i, 1 + i % 2)).collect()
}

async fn insert(node: &Tandem, k: u64, params: &[(&str, &str)]) -> tandem_tests::Answer {
    let mut all = vec![("async_insert", "1")];
    all.extend_from_slice(params);
    node.request("INSERT INTO t FORMAT CSV", &all, rows(k)).await
}

/// Inserts present on `node` with the number of rows each has.
async fn stored(node: &Tandem) -> BTreeMap<u64, u64> {
    node.sql("SELECT intDiv(id, 1000) AS k, count() FROM t GROUP BY k ORDER BY k FORMAT TSV")
        .await
        .lines()
        .map(|line| {
            let (k, n) = line.split_once('\t').expect("two columns");
            (k.parse().expect("a number"), n.parse().expect("a number"))
        })
        .collect()
}

async fn active_parts(node: &Tandem) -> u64 {
    node.sql("SELECT count() FROM system.parts WHERE table = 't' AND active").await.trim().parse().expect("a count")
}

/// A hundred concurrent inserts become a few parts; both acknowledgements mean what they say;
/// retries are answered as duplicates; refused inserts are never logged.
#[tokio::test]
async fn buffered_inserts_become_few_parts_and_count_once() {
    let (node, _dir) = single_node(&[]).await;
    node.sql(TABLE).await;
    let node = Arc::new(node);
    let tasks: Vec<_> = (0..100u64)
        .map(|k| {
            let node = node.clone();
            tokio::spawn(async move { insert(&node, k, &[]).await })
        })
        .collect();
    for task in tasks {
        let answer = task.await.unwrap().ok();
        assert_eq!(answer.header("x-tandem-acknowledged").as_deref(), Some("registered"), "{}", answer.text());
        assert_eq!(answer.json()["rows_written"], 10);
    }
    // Registered means visible on this node at once, with no wait.
    assert_eq!(node.count("t").await, 1000);
    let parts = active_parts(&node).await;
    assert!(parts <= 40, "100 inserts over 2 partitions were buffered into {parts} parts, not one per insert");

    // Retries of registered inserts, in either ack mode: duplicates, answered at once.
    for wait in ["0", "1"] {
        let answer = insert(&node, 7, &[("wait_for_async_insert", wait)]).await.ok();
        let summary = answer.json();
        assert_eq!((summary["rows_written"].as_u64(), summary["deduplicated"].as_bool()), (Some(0), Some(true)));
    }
    // A logged ack: in the log now, registered by the next flush.
    let logged = insert(&node, 500, &[("wait_for_async_insert", "0")]).await.ok();
    assert_eq!(logged.header("x-tandem-acknowledged").as_deref(), Some("logged"));
    node.wait_for("SELECT count() FROM t", "1010", Duration::from_secs(20)).await;

    // Refused before the log: a malformed body, object-store durability, a bad setting.
    let malformed = node.request("INSERT INTO t FORMAT CSV", &[("async_insert", "1")], "1,not a time,2\n").await;
    assert_eq!(malformed.status, 400, "{}", malformed.text());
    let durable = insert(&node, 600, &[("insert_durability", "object_store")]).await;
    assert_eq!(durable.status, 400, "{}", durable.text());
    let size = insert(&node, 601, &[("async_insert_max_data_size", "0")]).await;
    assert_eq!(size.status, 400, "{}", size.text());
    // More partitions than one flush's transaction takes.
    let wide: String =
        (0..41u64).map(|d| format!("{},2024-{:02}-{:02} 00:00:00,1\n", 900_000 + d, 1 + d / 28, 1 + d % 28)).collect();
    let wide = node.request("INSERT INTO t FORMAT CSV", &[("async_insert", "1")], wide).await;
    assert_eq!(wide.status, 400, "{}", wide.text());
    assert!(wide.text().contains("async_insert=0"), "{}", wide.text());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.count("t").await, 1010, "nothing refused is stored");
    let backlog = node.sql("SELECT count() FROM system.asynchronous_inserts").await;
    assert_eq!(backlog.trim(), "0", "nothing is left in the buffer");

    // A table setting makes every insert into it asynchronous.
    node.sql("ALTER TABLE t MODIFY SETTING async_insert = 1").await;
    let answer = node.request("INSERT INTO t FORMAT CSV", &[], rows(700)).await.ok();
    assert_eq!(answer.header("x-tandem-acknowledged").as_deref(), Some("registered"));
    let synchronous = node.request("INSERT INTO t FORMAT CSV", &[("async_insert", "0")], rows(701)).await.ok();
    assert_eq!(synchronous.json()["parts"].as_array().map(Vec::len), Some(2), "async_insert=0 overrides the table");
}

/// Inserts acknowledged from the log (and not yet flushed) survive SIGKILL and are registered
/// once on restart; a torn record at the log's tail is cut and the node starts.
#[tokio::test]
async fn a_killed_node_replays_its_log_once_and_cuts_a_torn_tail() {
    let (mut node, _dir) = single_node(&[]).await;
    node.sql(TABLE).await;
    // A long busy timeout keeps the inserts in the buffer: only the log has them.
    let params = [("wait_for_async_insert", "0"), ("async_insert_busy_timeout_ms", "600000")];
    for k in 0..50 {
        let answer = insert(&node, k, &params).await.ok();
        assert_eq!(answer.header("x-tandem-acknowledged").as_deref(), Some("logged"));
    }
    assert_eq!(node.count("t").await, 0, "the inserts wait in the buffer");
    let backlog = node.sql("SELECT inserts, rows FROM system.asynchronous_inserts WHERE table = 't'").await;
    assert_eq!(backlog.trim(), "50\t500");
    node.kill();

    let log_dir = node.data_dir.join("insert_log");
    let newest = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .expect("a log segment");
    // The start of a record whose write the crash cut short.
    let mut file = std::fs::OpenOptions::new().append(true).open(&newest).unwrap();
    std::io::Write::write_all(&mut file, &[200, 1, 0, 0, 9, 9, 9]).unwrap();
    drop(file);

    node.restart().await.unwrap();
    node.wait_for("SELECT count() FROM t", "500", Duration::from_secs(20)).await;
    assert!(node.log_text().contains("torn tail"), "the cut is reported");
    let counts = stored(&node).await;
    assert_eq!(counts.len(), 50);
    assert!(counts.values().all(|&n| n == 10), "every insert once: {counts:?}");

    // Once more: what was registered is not registered again.
    node.kill();
    node.restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(node.count("t").await, 500);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Ok,
    Failed,
    Unknown,
}

/// etcd freezes (SIGSTOP) for 20 s under a steady stream of inserts to both nodes, every
/// fourth one also sent to the other node: inserts are acknowledged throughout, the backlog
/// shows, and afterwards every acknowledged insert is on both nodes exactly once.
#[tokio::test]
async fn async_inserts_are_accepted_while_etcd_is_paused_and_stored_once() {
    let cluster = Cluster::start(2).await.unwrap();
    cluster.nodes[0].sql(TABLE).await;
    cluster.nodes[1].wait_for("EXISTS TABLE t", "1", Duration::from_secs(10)).await;
    // A quorum needs registered parts, which a log acknowledgement does not wait for.
    let quorum = insert(&cluster.nodes[0], 3_000_000, &[("wait_for_async_insert", "0"), ("insert_quorum", "2")]).await;
    assert_eq!(quorum.status, 400, "{}", quorum.text());
    assert!(quorum.text().contains("wait_for_async_insert=1"), "{}", quorum.text());
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let outcomes: Arc<Mutex<BTreeMap<u64, (Class, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (http, urls, outcomes, stop) = (http.clone(), urls.clone(), outcomes.clone(), stop.clone());
            tokio::spawn(async move {
                let mut k = w * 1_000_000;
                while !stop.load(Ordering::SeqCst) {
                    k += 1;
                    let mut targets = vec![&urls[w as usize]];
                    if k % 4 == 0 {
                        targets.push(&urls[1 - w as usize]);
                    }
                    let mut class = Class::Failed;
                    for url in targets {
                        let params = [
                            ("query", "INSERT INTO t FORMAT CSV"),
                            ("async_insert", "1"),
                            ("wait_for_async_insert", "0"),
                        ];
                        match http.post(url).query(&params).body(rows(k)).send().await {
                            Ok(r) if r.status().is_success() => class = Class::Ok,
                            Ok(r) if r.status().is_client_error() => {}
                            _ if class == Class::Failed => class = Class::Unknown,
                            _ => {}
                        }
                    }
                    outcomes.lock().await.insert(k, (class, Instant::now()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.etcd.pause();
    let paused_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let backlog = cluster.nodes[0].sql("SELECT sum(inserts) FROM system.asynchronous_inserts").await;
    let ready = cluster.nodes[0].get("ready").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let resumed_at = Instant::now();
    cluster.etcd.resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let outcomes = outcomes.lock().await.clone();
    let acked_while_paused = outcomes
        .values()
        .filter(|(class, at)| *class == Class::Ok && *at > paused_at + Duration::from_secs(6) && *at < resumed_at)
        .count();
    assert!(acked_while_paused > 50, "inserts were acknowledged while etcd was paused: {acked_while_paused}");
    assert!(backlog.trim().parse::<u64>().unwrap_or(0) > 0, "the backlog shows while etcd is paused: {backlog}");
    // Cut off from etcd, the node steps down from load balancing (as any node that cannot renew
    // its membership); its answer says what waits in its log.
    assert!(ready.text().contains("not yet registered"), "/ready shows the backlog: {}", ready.text());

    let acked: Vec<u64> = outcomes.iter().filter(|(_, (c, _))| *c == Class::Ok).map(|(k, _)| *k).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in &cluster.nodes {
        loop {
            let counts = stored(node).await;
            if acked.iter().all(|k| counts.contains_key(k)) {
                break;
            }
            assert!(Instant::now() < deadline, "acknowledged inserts missing after etcd came back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Let any straggler of an unknown outcome land before comparing the nodes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = stored(&cluster.nodes[0]).await;
    let second = stored(&cluster.nodes[1]).await;
    for (k, n) in &first {
        assert_eq!(*n, 10, "insert {k} is stored once, whole: {n} rows");
        assert_ne!(outcomes.get(k).map(|(c, _)| *c), Some(Class::Failed), "refused insert {k} is stored");
    }
    assert_eq!(first, second, "both nodes hold the same inserts");
    let retried = acked.iter().filter(|k| *k % 4 == 0).count();
    assert!(retried > 10, "inserts were retried across nodes: {retried}");
}
