//! Cluster mode: several real `tandem` processes and a real etcd. Every node accepts inserts;
//! all converge to the parts etcd lists; a node that was down, or behind a compaction, or
//! whose source died, catches up; a corrupt copy or a peer without the secret is refused.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tandem_coordinator::{Coordinator, EtcdKv, KvBackend};
use tandem_tests::{Cluster, Tandem};

const CONVERGE: Duration = Duration::from_secs(30);
const TABLE: &str =
    "CREATE TABLE t (id UInt64, ts DateTime, host String, v Float64) ORDER BY (host, id) PARTITION BY toYYYYMM(ts)";

fn rows(from: u64, count: u64) -> String {
    (from..from + count)
        .map(|i| format!("{i},2024-0{}-01 00:00:00,h{},{}\n", 1 + i % 3, i % 5, i as f64 / 4.0))
        .collect()
}

async fn active_parts(node: &Tandem) -> BTreeSet<String> {
    let text = node.sql("SELECT name FROM system.parts WHERE \"table\" = 't' AND active").await;
    text.lines().map(str::to_string).collect()
}

async fn coordinator(cluster: &Cluster) -> Coordinator {
    let kv = EtcdKv::connect(std::slice::from_ref(&cluster.etcd.endpoint)).await.expect("etcd connects");
    Coordinator::new(Arc::new(kv), cluster.prefix())
}

async fn etcd_parts(cluster: &Cluster) -> BTreeSet<String> {
    let snapshot = coordinator(cluster).await.snapshot().await.expect("etcd lists");
    snapshot.parts.into_iter().filter(|p| p.table == "t").map(|p| p.id.to_string()).collect()
}

/// Waits until every running node serves exactly the parts etcd lists, then checks that they
/// all give the same answer to a query over every row.
async fn assert_converged(cluster: &Cluster, expected_rows: u64) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM t", &expected_rows.to_string(), CONVERGE).await;
        loop {
            // Merges change the registered set: compare with what etcd lists now.
            let expected = etcd_parts(cluster).await;
            let parts = active_parts(node).await;
            if parts == expected {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} holds {parts:?}, etcd lists {expected:?}", node.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let digest = "SELECT count(), sum(id), sum(v), min(ts), max(host) FROM t";
    let answers: BTreeSet<String> =
        futures::future::join_all(cluster.nodes.iter().map(|n| n.sql(digest))).await.into_iter().collect();
    assert_eq!(answers.len(), 1, "nodes disagree: {answers:?}");
}

async fn create_table(cluster: &Cluster) {
    cluster.nodes[0].sql(TABLE).await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM system.tables WHERE name = 't'", "1", CONVERGE).await;
    }
}

#[tokio::test]
async fn a_row_inserted_on_one_node_is_read_on_the_others() {
    let cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    let summary = cluster.nodes[0].insert("t", "CSV", "7,2024-01-01 00:00:00,web,1.5\n").await;
    let revision = summary["revision"].as_i64().unwrap().to_string();
    // Read-your-writes on another node: the answer waits until that node has the part.
    let answer = cluster.nodes[2]
        .request("SELECT id, host, v FROM t FORMAT CSV", &[("after_revision", &revision)], Vec::new())
        .await
        .ok();
    assert_eq!(answer.text(), "7,\"web\",1.5\n");
    cluster.nodes[1].wait_for("SELECT host FROM t WHERE id = 7", "web", CONVERGE).await;
    assert_converged(&cluster, 1).await;
    let written_by = cluster.nodes[1].sql("SELECT written_by FROM system.parts").await;
    assert_eq!(written_by.trim(), "n1");
}

#[tokio::test]
async fn inserts_on_every_node_at_once_converge() {
    let cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    let writers = cluster.nodes.iter().enumerate().map(|(n, node)| async move {
        for batch in 0..8u64 {
            node.insert("t", "CSV", rows((n as u64 * 100 + batch) * 1000, 50)).await;
        }
    });
    futures::future::join_all(writers).await;
    assert_converged(&cluster, 3 * 8 * 50).await;
}

#[tokio::test]
async fn a_killed_node_catches_up_from_where_it_was() {
    let mut cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    cluster.nodes[0].insert("t", "CSV", rows(0, 20)).await;
    assert_converged(&cluster, 20).await;
    cluster.n(2).kill();
    let mut last_revision = 0;
    for i in 1..=5 {
        for (node, first) in [(0, i * 1000), (2, i * 1000 + 500)] {
            let summary = cluster.nodes[node].insert("t", "CSV", rows(first, 20)).await;
            last_revision = last_revision.max(summary["revision"].as_i64().unwrap());
        }
    }
    cluster.n(2).restart().await.unwrap();
    // Ready means caught up: every registration acknowledged before the start is applied,
    // though the local copy it resumed from predates them.
    let applied = cluster.nodes[1].sql("SELECT applied_revision FROM system.replicas WHERE node_id = 'n2'").await;
    assert!(applied.trim().parse::<i64>().unwrap() >= last_revision, "n2 is ready at revision {applied}");
    assert_converged(&cluster, 20 + 10 * 20).await;
    assert!(cluster.nodes[1].log_text().contains("resumed from the local catalog"), "n2 resumed from its revision");
}

#[tokio::test]
async fn a_node_behind_a_compaction_lists_again_and_catches_up() {
    let mut cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    cluster.nodes[0].insert("t", "CSV", rows(0, 10)).await;
    assert_converged(&cluster, 10).await;
    cluster.n(2).kill();
    for i in 1..=4 {
        cluster.nodes[0].insert("t", "CSV", rows(i * 1000, 10)).await;
    }
    let kv = EtcdKv::connect(std::slice::from_ref(&cluster.etcd.endpoint)).await.unwrap();
    let current = kv.current_revision().await.unwrap();
    kv.compact(current).await.unwrap();
    cluster.n(2).restart().await.unwrap();
    assert_converged(&cluster, 50).await;
    let log = cluster.nodes[1].log_text();
    assert!(log.contains("compacted"), "n2 learned its revision was compacted:\n{log}");
}

#[tokio::test]
async fn a_part_whose_writer_died_is_fetched_from_another_holder() {
    let mut cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    cluster.n(3).kill();
    cluster.nodes[0].insert("t", "CSV", rows(0, 30)).await;
    cluster.nodes[1].wait_for("SELECT count() FROM t", "30", CONVERGE).await;
    cluster.n(1).kill();
    cluster.n(3).restart().await.unwrap();
    cluster.nodes[2].wait_for("SELECT count() FROM t", "30", CONVERGE).await;
    let expected = cluster.nodes[1].sql("SELECT sum(v), sum(id) FROM t").await;
    assert_eq!(cluster.nodes[2].sql("SELECT sum(v), sum(id) FROM t").await, expected);
}

#[tokio::test]
async fn a_corrupt_copy_on_a_peer_is_refused_and_another_source_used() {
    let mut cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    cluster.n(3).kill();
    let summary = cluster.nodes[0].insert("t", "CSV", "1,2024-01-01 00:00:00,a,2.5\n").await;
    let id = summary["parts"][0]["part"].as_str().unwrap().to_string();
    cluster.nodes[1].wait_for("SELECT count() FROM t", "1", CONVERGE).await;
    // Rot the writer's copy: the writer is the first source n3 asks.
    let path = cluster.nodes[0].data_dir.join("parts").join(format!("{id}.parquet"));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();

    cluster.n(3).restart().await.unwrap();
    cluster.nodes[2].wait_for("SELECT sum(v) FROM t", "2.5", CONVERGE).await;
    let metrics = cluster.nodes[2].get("metrics").await.text();
    assert!(metrics.contains("tandem_fetch_corrupt_total 1"), "n3 refused n1's copy:\n{metrics}");
    // The writer noticed while serving, moved its copy aside, and fetched a good one.
    cluster.nodes[0].wait_for("SELECT sum(v) FROM t", "2.5", CONVERGE).await;
    assert_eq!(std::fs::read_dir(cluster.nodes[0].data_dir.join("quarantine")).unwrap().count(), 1);
}

#[tokio::test]
async fn a_fetch_without_the_cluster_secret_is_refused() {
    use tandem_proto::v1::FetchPartRequest;
    use tandem_proto::v1::interserver_client::InterserverClient;

    let cluster = Cluster::start(1).await.unwrap();
    create_table(&cluster).await;
    let summary = cluster.nodes[0].insert("t", "CSV", "1,2024-01-01 00:00:00,a,2.5\n").await;
    let id = summary["parts"][0]["part"].as_str().unwrap().to_string();
    let mut client = InterserverClient::connect(format!("http://{}", cluster.nodes[0].grpc_addr)).await.unwrap();
    let fetch = |secret: Option<&str>| {
        let mut request = tonic::Request::new(FetchPartRequest {
            format_version: tandem_proto::WIRE_FORMAT_VERSION,
            table: "t".into(),
            part_id: id.clone(),
        });
        if let Some(secret) = secret {
            request.metadata_mut().insert(tandem_proto::SECRET_METADATA_KEY, secret.parse().unwrap());
        }
        request
    };
    for secret in [None, Some("wrong")] {
        let status = client.fetch_part(fetch(secret)).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{secret:?}: {status}");
    }
    let mut stream = client.fetch_part(fetch(Some(&cluster.secret))).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), id, "with the secret, the part's exact bytes");
    let bad = client.fetch_part(fetch(Some(&cluster.secret)).map(|mut r| {
        r.part_id = "../../etc/passwd".into();
        r
    }));
    assert_eq!(bad.await.expect_err("not a hash").code(), tonic::Code::InvalidArgument);

    // A cluster node with no secret does not start: it would serve every part to anyone.
    let mut open = cluster.extra_node(2, false).unwrap();
    let refused = format!("{:#}", open.ensure_running().await.expect_err("no secret, no start"));
    assert!(refused.contains("needs a cluster secret") && refused.contains("--insecure"), "{refused}");
    // Unless told the network is trusted: then it starts, and says what that means.
    let mut open = cluster.extra_node_with(2, false, &["--insecure"]).unwrap();
    open.ensure_running().await.unwrap();
    assert!(open.log_text().contains("no cluster secret is configured"), "an insecure node warns");
    let refusals = cluster.nodes[0].metric("tandem_interserver_auth_failures_total").await;
    assert!(refusals >= 2.0, "the refused calls are counted: {refusals}");
}

/// A secret rotation rolled out one node at a time while inserts go on: every node first gets the
/// new secret with the old one as the previous, then the new one alone. No fetch fails for its
/// secret at any step (a node presents the old secret to a peer the rollout has not reached yet)
/// and every insert reaches every node.
#[tokio::test]
async fn the_cluster_secret_rotates_one_node_at_a_time_with_no_refused_fetch() {
    let mut cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    let (old, new) = (cluster.secret.clone(), format!("{}-rotated", cluster.secret));
    let mut inserted = 0u64;
    let steps: [&[(&str, &str)]; 2] = [
        &[("TANDEM_CLUSTER_SECRET", &new), ("TANDEM_CLUSTER_SECRET_PREVIOUS", &old)],
        &[("TANDEM_CLUSTER_SECRET", &new)],
    ];
    for env in steps {
        for restarting in 0..cluster.nodes.len() {
            for (k, v) in env {
                cluster.nodes[restarting].set_env(k, v);
            }
            if !env.iter().any(|(k, _)| *k == "TANDEM_CLUSTER_SECRET_PREVIOUS") {
                cluster.nodes[restarting].remove_env("TANDEM_CLUSTER_SECRET_PREVIOUS");
            }
            cluster.nodes[restarting].restart().await.unwrap();
            // Inserts on every node, so each one fetches from peers on both sides of the rollout.
            for node in &cluster.nodes {
                node.insert("t", "CSV", rows(inserted, 5)).await;
                inserted += 5;
            }
            assert_converged(&cluster, inserted).await;
        }
    }
    for node in &cluster.nodes {
        let log = node.log_text();
        let failed: Vec<_> = log.lines().filter(|l| l.contains("requires the cluster secret")).collect();
        assert!(failed.is_empty(), "no fetch failed for its secret during the rotation: {failed:?}");
        assert!(!log.contains(&old) && !log.contains(&new), "no secret in the log");
    }
    // Once the rollout is over, the old secret opens nothing.
    for node in &cluster.nodes {
        assert_eq!(status_call(node, &old).await, tonic::Code::Unauthenticated);
        assert_eq!(status_call(node, &new).await, tonic::Code::Ok);
    }
}

/// The code a raw interserver `Status` call presenting `secret` gets from `node`.
async fn status_call(node: &Tandem, secret: &str) -> tonic::Code {
    use tandem_proto::v1::StatusRequest;
    use tandem_proto::v1::interserver_client::InterserverClient;
    let mut client = InterserverClient::connect(format!("http://{}", node.grpc_addr)).await.unwrap();
    let mut request = tonic::Request::new(StatusRequest { format_version: tandem_proto::WIRE_FORMAT_VERSION });
    request.metadata_mut().insert(tandem_proto::SECRET_METADATA_KEY, secret.parse().unwrap());
    match client.status(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn replication_state_is_visible() {
    let mut cluster = Cluster::start(2).await.unwrap();
    create_table(&cluster).await;
    cluster.nodes[0].insert("t", "CSV", rows(0, 10)).await;
    assert_converged(&cluster, 10).await;
    let replicas = cluster.nodes[0]
        .sql("SELECT node_id, is_local, pending_parts, lag_revisions FROM system.replicas ORDER BY node_id FORMAT CSV")
        .await;
    let lines: Vec<_> = replicas.lines().collect();
    assert_eq!(lines.len(), 2, "{replicas}");
    assert!(lines[0].starts_with("\"n1\",true,0,"), "{replicas}");
    assert!(lines[1].starts_with("\"n2\",false,"), "{replicas}");
    let metrics = cluster.nodes[1].get("metrics").await.text();
    for name in ["tandem_replication_lag_seconds", "tandem_replication_lag_revisions", "tandem_fetch_bytes_total"] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // A dead node's membership ends with its lease (10 s).
    cluster.n(2).kill();
    cluster.nodes[0].wait_for("SELECT count() FROM system.replicas", "1", CONVERGE).await;
}

#[tokio::test]
async fn without_etcd_inserts_fail_clearly_and_reads_go_on() {
    let mut cluster = Cluster::start(2).await.unwrap();
    create_table(&cluster).await;
    cluster.nodes[0].insert("t", "CSV", rows(0, 10)).await;
    assert_converged(&cluster, 10).await;
    cluster.etcd.kill();
    let answer = cluster.nodes[1].request("INSERT INTO t FORMAT CSV", &[], rows(100, 10)).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(answer.text().contains("etcd"), "the message names the metadata store: {}", answer.text());
    assert_eq!(answer.header("x-tandem-retryable").as_deref(), Some("true"));
    for node in &cluster.nodes {
        assert_eq!(node.sql("SELECT count() FROM t").await.trim(), "10", "reads of local parts go on");
        assert_eq!(node.get("health").await.status, 200);
    }
}

#[tokio::test]
async fn a_node_bound_to_all_interfaces_is_reached_at_its_advertised_address() {
    let etcd = tandem_tests::Etcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let common = ["--etcd", etcd.endpoint.as_str(), "--cluster", "advertise"];
    let secret = [("TANDEM_CLUSTER_SECRET", "advertise-secret")];
    let n1 = Tandem::start_with(&dir.path().join("n1"), &[&common[..], &["--node-id", "n1"]].concat(), &secret, true)
        .await
        .unwrap();
    let port = tandem_tests::free_port();
    let (bind, advertised) = (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}"));
    let own = ["--node-id", "n2", "--grpc-addr", bind.as_str(), "--advertise-grpc-addr", advertised.as_str()];
    let n2 =
        Tandem::start_with(&dir.path().join("n2"), &[&common[..], &own[..]].concat(), &secret, false).await.unwrap();
    n1.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    n2.wait_for("SELECT count() FROM system.tables WHERE name = 't'", "1", CONVERGE).await;
    n2.insert("t", "CSV", "1\n2\n3\n").await;
    n1.wait_for("SELECT count() FROM t", "3", CONVERGE).await;
    let announced = n1.sql("SELECT grpc_addr FROM system.replicas WHERE node_id = 'n2'").await;
    assert_eq!(announced.trim(), advertised, "peers see the advertised address, not 0.0.0.0");
}

#[tokio::test]
async fn nodes_reach_etcd_over_tls_with_client_certificates() {
    let (etcd, tls) = tandem_tests::Etcd::start_tls().await.unwrap();
    assert!(etcd.endpoint.starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) =
        (tls.ca.to_str().unwrap(), tls.client_cert.to_str().unwrap(), tls.client_key.to_str().unwrap());
    let mut nodes = Vec::new();
    for id in ["n1", "n2"] {
        let args = [
            "--etcd",
            etcd.endpoint.as_str(),
            "--node-id",
            id,
            "--etcd-ca-file",
            ca,
            "--etcd-cert-file",
            cert,
            "--etcd-key-file",
            key,
        ];
        let secret = [("TANDEM_CLUSTER_SECRET", "tls-secret")];
        nodes.push(Tandem::start_with(&dir.path().join(id), &args, &secret, true).await.unwrap());
    }
    nodes[0].sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    nodes[1].wait_for("SELECT count() FROM system.tables WHERE name = 't'", "1", CONVERGE).await;
    nodes[1].insert("t", "CSV", "1\n2\n").await;
    nodes[0].wait_for("SELECT count() FROM t", "2", CONVERGE).await;

    // Without a client certificate the member refuses the connection: the node says so and exits.
    let args = ["--etcd", etcd.endpoint.as_str(), "--node-id", "n3", "--etcd-ca-file", ca];
    let refused =
        Tandem::start_with(&dir.path().join("n3"), &args, &[("TANDEM_CLUSTER_SECRET", "tls-secret")], true).await;
    let error = format!("{:#}", refused.err().expect("no client certificate, no connection"));
    assert!(error.contains("cannot use etcd at"), "{error}");
    // TLS asked for, plain endpoint given: a configuration error before any connection.
    let plain = etcd.endpoint.replace("https://", "http://");
    let args = ["--etcd", plain.as_str(), "--node-id", "n4", "--etcd-ca-file", ca];
    let refused =
        Tandem::start_with(&dir.path().join("n4"), &args, &[("TANDEM_CLUSTER_SECRET", "tls-secret")], true).await;
    let error = format!("{:#}", refused.err().expect("an http endpoint with TLS settings is refused"));
    assert!(error.contains("is not https://"), "{error}");
}

/// Waits until `check` holds, asking every 200 ms; fails with `what` after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node that cannot reach etcd cannot renew its membership lease: it stops being ready
/// before the lease expires, its peers stop counting it for quorums once it has, and it comes
/// back by itself when etcd is reachable again.
#[tokio::test]
async fn a_node_cut_off_from_etcd_steps_down_and_returns() {
    let cluster = Cluster::start(2).await.unwrap();
    let proxy = tandem_tests::Proxy::start(&cluster.etcd.endpoint).await.unwrap();
    let mut n3 = cluster.node_via(3, &proxy.url(), true, &[]).unwrap();
    n3.restart().await.unwrap();
    let n1 = &cluster.nodes[0];
    n1.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    let quorum_of_three = || async {
        let settings = [("insert_quorum", "3"), ("insert_quorum_timeout", "2000"), ("insert_deduplicate", "0")];
        n1.request("INSERT INTO t FORMAT CSV", &settings, "1\n").await
    };
    eventually("all three nodes hold an insert_quorum=3 insert", CONVERGE, || async {
        quorum_of_three().await.status == 200
    })
    .await;

    proxy.set_cut(true);
    eventually("the cut-off node stops being ready", CONVERGE, || async { n3.get("ready").await.status == 503 }).await;
    eventually("its peers stop counting it", CONVERGE, || async {
        let answer = quorum_of_three().await;
        answer.status == 503 && answer.text().contains("2 are live")
    })
    .await;

    proxy.set_cut(false);
    eventually("the node is ready again", Duration::from_secs(60), || async { n3.get("ready").await.status == 200 })
        .await;
    eventually("its peers count it again", CONVERGE, || async { quorum_of_three().await.status == 200 }).await;
}
