//! What operators rely on when they run tandem as a service: server-wide defaults of the
//! per-request and per-table settings, and `/drain`, the preStop hook that keeps acknowledged
//! rows available while a node is stopped.

use std::time::Duration;

use tandem_tests::{Cluster, single_node};

const CONVERGE: Duration = Duration::from_secs(30);

fn rows(from: u64, count: u64) -> String {
    (from..from + count).map(|i| format!("{i}\n")).collect()
}

#[tokio::test]
async fn server_defaults_apply_when_a_request_or_table_does_not_say() {
    let args = ["--insert-quorum", "2", "--insert-quorum-timeout-ms", "1500", "--dedup-window-seconds", "1"];
    let cluster = Cluster::start_with(2, args.iter().map(|a| a.to_string()).collect(), Vec::new()).await.unwrap();
    let n1 = &cluster.nodes[0];
    n1.sql("CREATE TABLE short_window (id UInt64) ORDER BY id").await;
    n1.sql("CREATE TABLE long_window (id UInt64) ORDER BY id SETTINGS dedup_window_seconds = 3600").await;
    let settings = n1.sql("SELECT name, settings FROM system.tables ORDER BY name FORMAT JSONEachRow").await;
    let settings: Vec<serde_json::Value> = settings.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let window = |i: usize| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(settings[i]["settings"].as_str().unwrap()).unwrap()["dedup_window_seconds"]
            .clone()
    };
    assert_eq!(
        (settings[0]["name"].as_str(), window(0)),
        (Some("long_window"), 3600.into()),
        "the SETTINGS clause wins"
    );
    assert_eq!((settings[1]["name"].as_str(), window(1)), (Some("short_window"), 1.into()), "the server default");

    // No insert_quorum in the request: the server's default of 2 applies.
    let answer = n1.request("INSERT INTO short_window FORMAT CSV", &[], rows(0, 10)).await.ok();
    assert_eq!(answer.json()["quorum"]["required"], 2, "{}", answer.text());
    // A request still overrides it.
    let answer = n1.request("INSERT INTO long_window FORMAT CSV", &[("insert_quorum", "1")], rows(0, 10)).await.ok();
    assert!(answer.json()["quorum"].is_null(), "quorum 1 waits for nobody: {}", answer.text());

    // The 1 s dedup window of the table created under the server default: the same block two
    // seconds later is stored again; under the table's own 3600 s window it is a duplicate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = n1.request("INSERT INTO short_window FORMAT CSV", &[], rows(0, 10)).await.ok().json();
    assert_eq!(again["deduplicated"], false, "{again}");
    let again =
        n1.request("INSERT INTO long_window FORMAT CSV", &[("insert_quorum", "1")], rows(0, 10)).await.ok().json();
    assert_eq!(again["deduplicated"], true, "{again}");

    // The server's quorum timeout: with the peer stopped, the default quorum of 2 gives up
    // after 1.5 s with the usual "committed on 1 of 2".
    cluster.nodes[1].pause();
    let started = std::time::Instant::now();
    let answer = n1.request("INSERT INTO long_window FORMAT CSV", &[], rows(100, 10)).await;
    cluster.nodes[1].resume();
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert!(answer.text().contains("committed on 1 of 2"), "{}", answer.text());
    assert!(started.elapsed() < Duration::from_secs(10), "the server's 1.5 s timeout, not the built-in 30 s");
}

#[tokio::test]
async fn a_bad_server_default_is_refused_at_start() {
    let output = std::process::Command::new(tandem_tests::tandem_binary().unwrap())
        .args(["serve", "--insert-quorum", "most", "--check-config"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The flag, what it takes and the value given (in clap's words around tandem's).
    assert!(stderr.contains("--insert-quorum"), "{stderr}");
    assert!(stderr.contains("takes 1, a number of nodes, or `auto`, got `most`"), "{stderr}");
}

#[tokio::test]
async fn drain_waits_until_every_part_has_another_copy() {
    let cluster = Cluster::start(2).await.unwrap();
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    n1.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    n2.wait_for("SELECT count() FROM system.tables WHERE name = 't'", "1", CONVERGE).await;
    assert_eq!(n1.get("ready").await.status, 200);

    // The peer is stopped, so the part acknowledged by n1 exists only there.
    n2.pause();
    n1.request("INSERT INTO t FORMAT CSV", &[], rows(0, 100)).await.ok();
    let drain = n1.post("drain?timeout_seconds=1").await;
    assert_eq!(drain.status, 503, "{}", drain.text());
    let report = drain.json();
    assert_eq!(report["drained"], false);
    assert_eq!(report["parts_only_here"], 1, "{report}");
    assert!(report["reason"].as_str().unwrap().contains("timed out"), "{report}");
    let ready = n1.get("ready").await;
    assert_eq!(ready.status, 503, "a draining node is taken out of load balancing");
    assert!(ready.text().contains("draining"), "{}", ready.text());
    assert_eq!(n1.sql("SELECT count() FROM t").await.trim(), "100", "a draining node still answers");

    // Once the peer runs again and copies the part, the drain completes.
    n2.resume();
    let drain = n1.post("drain?timeout_seconds=30").await;
    assert_eq!(drain.status, 200, "{}", drain.text());
    assert_eq!(drain.json()["parts_only_here"], 0);
    assert_eq!(n2.sql("SELECT count() FROM t").await.trim(), "100", "the copy the drain waited for");
}

#[tokio::test]
async fn drain_of_a_lone_node_says_nothing_can_take_its_parts() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    node.request("INSERT INTO t FORMAT CSV", &[], rows(0, 10)).await.ok();
    let started = std::time::Instant::now();
    let drain = node.post("drain?timeout_seconds=30").await;
    assert!(started.elapsed() < Duration::from_secs(5), "nothing to wait for");
    assert_eq!(drain.status, 503, "{}", drain.text());
    assert!(drain.json()["reason"].as_str().unwrap().contains("no other live node and no object store"));
    assert_eq!(node.get("ready").await.status, 503);
}

#[tokio::test]
async fn drain_takes_post_and_can_be_cancelled() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    node.request("INSERT INTO t FORMAT CSV", &[], rows(0, 10)).await.ok();
    let get = node.get("drain?timeout_seconds=0").await;
    assert_eq!(get.status, 405, "GET never changes state: {}", get.text());
    assert_eq!(node.get("ready").await.status, 200, "the GET did not drain the node");

    // What the Kubernetes preStop hook runs: the binary sends the POST and fails when the
    // node cannot drain (a lone node: nothing can take its parts).
    let addr = node.url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let output = std::process::Command::new(tandem_tests::tandem_binary().unwrap())
        .args(["drain", "--http-addr", &addr, "--timeout-seconds", "1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("no other live node"), "{output:?}");
    assert_eq!(node.get("ready").await.status, 503, "the node is draining");

    let cancel = node.post("drain?cancel=1").await;
    assert_eq!(cancel.status, 200, "{}", cancel.text());
    assert_eq!(node.get("ready").await.status, 200, "ready again after the cancel");
    node.request("INSERT INTO t FORMAT CSV", &[], rows(10, 10)).await.ok();
    assert_eq!(node.count("t").await, 20);
}
