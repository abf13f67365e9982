//! Write guarantees across nodes: identical blocks sent to two nodes at once make one part;
//! `insert_quorum` acks mean the peers hold the part, fail at once when too few nodes live,
//! and time out with a "committed on k of n" answer that a retry resolves; reads wait for the
//! revision they are given.

use std::time::{Duration, Instant};

use tandem_tests::Cluster;

const CONVERGE: Duration = Duration::from_secs(30);

async fn setup(nodes: usize) -> Cluster {
    let cluster = Cluster::start(nodes).await.unwrap();
    cluster.nodes[0].sql("CREATE TABLE t (id UInt64, v Float64) ORDER BY id").await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM system.tables WHERE name = 't'", "1", CONVERGE).await;
    }
    cluster
}

fn rows(from: u64, count: u64) -> String {
    (from..from + count).map(|i| format!("{i},{}\n", i as f64 * 0.5)).collect()
}

#[tokio::test]
async fn identical_blocks_sent_to_two_nodes_at_once_make_one_part() {
    let cluster = setup(3).await;
    for round in 0..5u64 {
        let body = rows(round * 1000, 100);
        let (a, b) = tokio::join!(
            cluster.nodes[0].request("INSERT INTO t FORMAT CSV", &[], body.clone()),
            cluster.nodes[1].request("INSERT INTO t FORMAT CSV", &[], body.clone()),
        );
        let (a, b) = (a.ok().json(), b.ok().json());
        let deduplicated = [&a, &b].iter().filter(|s| s["deduplicated"] == true).count();
        assert_eq!(deduplicated, 1, "exactly one of the two is the duplicate: {a} {b}");
        assert_eq!(a["parts"][0]["part"], b["parts"][0]["part"], "both name the one part");
    }
    for node in &cluster.nodes {
        node.wait_for(
            "SELECT count(), sum(id) FROM t",
            &format!("500\t{}", (0..5u64).map(|r| (r * 1000..r * 1000 + 100).sum::<u64>()).sum::<u64>()),
            CONVERGE,
        )
        .await;
    }
}

#[tokio::test]
async fn a_quorum_ack_means_the_peers_hold_the_part() {
    let cluster = setup(3).await;
    let answer =
        cluster.nodes[0].request("INSERT INTO t FORMAT CSV", &[("insert_quorum", "3")], rows(0, 50)).await.ok();
    let summary = answer.json();
    assert_eq!(summary["quorum"]["required"], 3);
    assert_eq!(summary["quorum"]["holders"], serde_json::json!(["n1", "n2", "n3"]));
    // No waiting: the ack already means every node holds the part.
    for node in &cluster.nodes {
        assert_eq!(node.sql("SELECT count() FROM t").await.trim(), "50", "{}", node.url);
    }
    // The writer timed every stage of that insert once (what the benchmark reads latency from).
    for stage in ["live_nodes", "split", "encode", "register", "apply", "quorum"] {
        let count = cluster.nodes[0].metric(&format!("tandem_insert_stage_seconds_count{{stage=\"{stage}\"}}")).await;
        assert_eq!(count, 1.0, "stage {stage} was timed once");
    }
    let auto =
        cluster.nodes[1].request("INSERT INTO t FORMAT CSV", &[("insert_quorum", "auto")], rows(100, 50)).await.ok();
    assert_eq!(auto.json()["quorum"]["required"], 2, "auto is a majority of 3 live nodes");
    // A read with select_sequential_consistency sees every quorum-acknowledged insert.
    let read = cluster.nodes[2]
        .request("SELECT count() FROM t", &[("select_sequential_consistency", "1")], Vec::new())
        .await
        .ok();
    assert_eq!(read.text().trim(), "100");
}

#[tokio::test]
async fn a_quorum_larger_than_the_live_nodes_fails_at_once() {
    let mut cluster = setup(3).await;
    cluster.n(3).kill();
    cluster.nodes[0].wait_for("SELECT count() FROM system.replicas", "2", CONVERGE).await;
    let started = Instant::now();
    let answer = cluster.nodes[0].request("INSERT INTO t FORMAT CSV", &[("insert_quorum", "3")], rows(0, 10)).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not after a timeout");
    assert!(answer.text().contains("2 are live"), "{}", answer.text());
    assert_eq!(cluster.nodes[0].sql("SELECT count() FROM system.parts").await.trim(), "0", "nothing was written");
}

#[tokio::test]
async fn a_quorum_timeout_says_k_of_n_and_a_retry_is_deduplicated() {
    let cluster = setup(3).await;
    cluster.nodes[2].pause();
    let params = [("insert_quorum", "3"), ("insert_quorum_timeout", "1500")];
    let answer = cluster.nodes[0].request("INSERT INTO t FORMAT CSV", &params, rows(0, 20)).await;
    cluster.nodes[2].resume();
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(answer.header("x-tandem-retryable").as_deref(), Some("true"));
    let text = answer.text();
    assert!(text.contains("committed on 2 of 3 nodes (n1, n2)"), "{text}");
    assert!(text.contains("retrying it is safe"), "{text}");

    let retry =
        cluster.nodes[1].request("INSERT INTO t FORMAT CSV", &[("insert_quorum", "3")], rows(0, 20)).await.ok().json();
    assert_eq!(retry["deduplicated"], true, "{retry}");
    assert_eq!(retry["quorum"]["holders"], serde_json::json!(["n1", "n2", "n3"]));
    for node in &cluster.nodes {
        assert_eq!(node.sql("SELECT count() FROM t").await.trim(), "20");
    }
}

#[tokio::test]
async fn after_revision_reads_on_a_lagging_node_wait_then_see_the_write() {
    let cluster = setup(3).await;
    cluster.nodes[2].pause();
    let summary = cluster.nodes[0].insert("t", "CSV", rows(0, 30)).await;
    let revision = summary["revision"].as_i64().unwrap().to_string();
    let lagging = &cluster.nodes[2];
    let params = [("after_revision", revision.as_str())];
    let read = lagging.request("SELECT count() FROM t", &params, Vec::new());
    let resume = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        lagging.resume();
    };
    let (answer, ()) = tokio::join!(read, resume);
    assert_eq!(answer.ok().text().trim(), "30", "the read waited for the part, not answered stale");

    // A revision the cluster has not reached: refused at once, not waited for.
    let future = (summary["revision"].as_i64().unwrap() + 1000).to_string();
    let answer = lagging
        .request(
            "SELECT count() FROM t",
            &[("after_revision", &future), ("after_revision_timeout_ms", "60000")],
            Vec::new(),
        )
        .await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("does not exist yet"), "{}", answer.text());

    // A revision whose part this node cannot fetch (both holders are stopped): a clear
    // timeout, never stale data.
    cluster.nodes[1].pause();
    lagging.pause();
    let summary = cluster.nodes[0].insert("t", "CSV", rows(100, 10)).await;
    let revision = summary["revision"].as_i64().unwrap().to_string();
    cluster.nodes[0].pause();
    lagging.resume();
    let answer = lagging
        .request(
            "SELECT count() FROM t",
            &[("after_revision", &revision), ("after_revision_timeout_ms", "300")],
            Vec::new(),
        )
        .await;
    cluster.nodes[0].resume();
    cluster.nodes[1].resume();
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert!(answer.text().contains("not answering with stale data"), "{}", answer.text());
}
