//! The object-store mirror, against a real S3-compatible server (moto by default, any S3
//! endpoint through `TANDEM_TEST_S3_*`), a real etcd and real nodes: parts land in the bucket
//! under their hashes; `insert_durability=object_store` acks only once the object exists; a
//! part whose only holder died comes from the bucket, and one that is nowhere is reported lost;
//! a new node fills its disk from the bucket; a corrupt object is refused; an outage queues
//! uploads; unreferenced objects are collected by one node after the grace period, those of
//! parts a TTL expired included.

use std::collections::BTreeSet;
use std::time::Duration;

use object_store::{ObjectStoreExt, PutPayload};
use tandem_tests::{Cluster, Proxy, S3, Tandem};

const CONVERGE: Duration = Duration::from_secs(30);
/// A killed node's lease runs out within its TTL (10 s); a lost part is declared after that.
const LOST: Duration = Duration::from_secs(60);
/// Merges off: these tests count and name parts (the collector test turns them on).
const TABLE: &str =
    "CREATE TABLE t (id UInt64, host String, v Float64) ORDER BY (host, id) SETTINGS background_merges = 0";

fn rows(from: u64, count: u64) -> String {
    (from..from + count).map(|i| format!("{i},h{},{}\n", i % 5, i as f64 / 4.0)).collect()
}

async fn start_cluster(n: usize, s3: &S3, endpoint: &str, extra: &[&str]) -> Cluster {
    let mut args = s3.args(endpoint);
    args.extend(extra.iter().map(|s| s.to_string()));
    Cluster::start_with(n, args, s3.env()).await.expect("the cluster starts")
}

async fn create_table(cluster: &Cluster, ddl: &str, table: &str) {
    cluster.nodes[0].sql(ddl).await;
    for node in &cluster.nodes {
        let sql = format!("SELECT count() FROM system.tables WHERE name = '{table}'");
        node.wait_for(&sql, "1", CONVERGE).await;
    }
}

async fn active_parts(node: &Tandem, table: &str) -> BTreeSet<String> {
    let sql = format!("SELECT name FROM system.parts WHERE \"table\" = '{table}' AND active");
    node.sql(&sql).await.lines().map(str::to_string).collect()
}

/// Waits until `node` records `n` parts of `table` as uploaded.
async fn wait_uploaded(node: &Tandem, table: &str, n: usize) {
    let sql = format!("SELECT count() FROM system.parts WHERE \"table\" = '{table}' AND in_object_store");
    node.wait_for(&sql, &n.to_string(), CONVERGE).await;
}

fn part_of(summary: &serde_json::Value) -> String {
    summary["parts"][0]["part"].as_str().expect("a part id").to_string()
}

const DIGEST: &str = "SELECT count(), sum(id), sum(v), min(host), max(host) FROM t";

#[tokio::test]
async fn parts_land_in_the_bucket_under_their_hash_and_durable_acks_wait_for_the_object() {
    let s3 = S3::start().await.expect("an S3 server");
    let cluster = start_cluster(2, &s3, &s3.endpoint, &[]).await;
    create_table(&cluster, TABLE, "t").await;
    for i in 0..5 {
        cluster.nodes[i % 2].insert("t", "CSV", rows(i as u64 * 100, 100)).await;
    }
    wait_uploaded(&cluster.nodes[0], "t", 5).await;
    let parts = active_parts(&cluster.nodes[0], "t").await;
    let objects = s3.objects("t").await.unwrap();
    assert_eq!(objects.keys().cloned().collect::<BTreeSet<_>>(), parts, "one object per part, named by its id");
    for (name, bytes) in &objects {
        assert_eq!(&blake3::hash(bytes).to_hex().to_string(), name, "an object's bytes hash to its name");
    }

    // Per request: the object exists when the ack arrives, and the part says so everywhere.
    let durable = cluster.nodes[1]
        .request("INSERT INTO t FORMAT CSV", &[("insert_durability", "object_store")], rows(1000, 50))
        .await
        .ok()
        .json();
    let part = part_of(&durable);
    let object = s3.client().unwrap().get(&s3.key("t", &part)).await.expect("the object exists at the ack");
    assert_eq!(blake3::hash(&object.bytes().await.unwrap()).to_hex().to_string(), part);
    let recorded = format!("SELECT in_object_store FROM system.parts WHERE name = '{part}'");
    assert_eq!(cluster.nodes[1].sql(&recorded).await.trim(), "true");

    // Per table: the same guarantee without the URL parameter.
    cluster.nodes[0].sql("ALTER TABLE t MODIFY SETTING insert_durability = 'object_store'").await;
    let summary = cluster.nodes[0].insert("t", "CSV", rows(2000, 50)).await;
    let part = part_of(&summary);
    s3.client().unwrap().head(&s3.key("t", &part)).await.expect("the table's setting makes the ack wait");
    let bad = cluster.nodes[0]
        .request("INSERT INTO t FORMAT CSV", &[("insert_durability", "somewhere")], rows(3000, 1))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("insert_durability"), "{}", bad.text());
}

#[tokio::test]
async fn an_unreachable_object_store_queues_uploads_and_fails_durable_inserts() {
    let s3 = S3::start().await.expect("an S3 server");
    let proxy = Proxy::start(&s3.endpoint).await.unwrap();
    let mut cluster = start_cluster(1, &s3, &proxy.url(), &[]).await;
    let node = &cluster.nodes[0];
    create_table(&cluster, TABLE, "t").await;
    node.insert("t", "CSV", rows(0, 10)).await;
    wait_uploaded(node, "t", 1).await;

    proxy.set_cut(true);
    let queued = part_of(&node.insert("t", "CSV", rows(100, 10)).await);
    let refused =
        node.request("INSERT INTO t FORMAT CSV", &[("insert_durability", "object_store")], rows(200, 10)).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("object store") && refused.text().contains("nothing was registered"),
        "the error says what failed and that nothing was written: {}",
        refused.text()
    );
    assert_eq!(node.count("t").await, 20, "the refused insert left nothing behind");
    assert_eq!(node.get("ready").await.status, 200, "the node keeps serving");
    assert_eq!(node.get("ready?durability=object_store").await.status, 503);
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while node.metric("tandem_object_store_upload_backlog").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the unsent part is counted in the backlog");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!s3.objects("t").await.unwrap().contains_key(&queued));

    proxy.set_cut(false);
    wait_uploaded(node, "t", 2).await;
    assert!(s3.objects("t").await.unwrap().contains_key(&queued), "the backlog is uploaded once the store is back");
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while node.metric("tandem_object_store_upload_backlog").await > 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the backlog drains");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.request("INSERT INTO t FORMAT CSV", &[("insert_durability", "object_store")], rows(200, 10)).await.ok();
    assert_eq!(node.get("ready?durability=object_store").await.status, 200);

    // A node starts while the store is down, serves, and says it cannot give object-store durability.
    proxy.set_cut(true);
    cluster.n(1).restart().await.expect("a node starts while the object store is unreachable");
    let node = &cluster.nodes[0];
    assert_eq!(node.count("t").await, 30);
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while node.get("ready?durability=object_store").await.status != 503 {
        assert!(tokio::time::Instant::now() < deadline, "the restarted node reports the store unreachable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.set_cut(false);
}

#[tokio::test]
async fn a_part_whose_only_holder_died_comes_from_the_bucket_and_one_nowhere_is_reported_lost() {
    let s3 = S3::start().await.expect("an S3 server");
    let proxy = Proxy::start(&s3.endpoint).await.unwrap();
    let mut cluster = start_cluster(1, &s3, &proxy.url(), &[]).await;
    create_table(&cluster, TABLE, "t").await;
    let uploaded = part_of(&cluster.nodes[0].insert("t", "CSV", rows(0, 30)).await);
    wait_uploaded(&cluster.nodes[0], "t", 1).await;
    proxy.set_cut(true);
    let stranded = part_of(&cluster.nodes[0].insert("t", "CSV", rows(100, 7)).await);
    cluster.n(1).kill();
    proxy.set_cut(false);

    // n2 never saw n1 alive: the uploaded part can only come from the bucket.
    let mut n2 = cluster.extra_node(2, true).unwrap();
    n2.restart().await.unwrap();
    n2.wait_for("SELECT count() FROM t", "30", CONVERGE).await;
    assert!(active_parts(&n2, "t").await.contains(&uploaded));
    assert_eq!(n2.metric("tandem_object_store_fetched_parts_total").await, 1.0);
    let lost = format!("SELECT lost FROM system.replication_queue WHERE part = '{stranded}'");
    n2.wait_for(&lost, "true", LOST).await;
    assert_eq!(n2.metric("tandem_replication_lost_parts").await, 1.0);
    let error = n2.sql(&format!("SELECT last_error FROM system.replication_queue WHERE part = '{stranded}'")).await;
    assert!(error.contains("lost"), "the replication view says why: {error}");

    // The only copy comes back with its node: n2 gets it, and it reaches the bucket.
    cluster.n(1).restart().await.unwrap();
    n2.wait_for("SELECT count() FROM t", "37", LOST).await;
    n2.wait_for("SELECT count() FROM system.replication_queue", "0", CONVERGE).await;
    wait_uploaded(&n2, "t", 2).await;
    assert!(s3.objects("t").await.unwrap().contains_key(&stranded));
}

#[tokio::test]
async fn a_new_node_bootstraps_from_the_bucket_and_refuses_a_corrupt_object() {
    let s3 = S3::start().await.expect("an S3 server");
    let mut cluster = start_cluster(2, &s3, &s3.endpoint, &[]).await;
    create_table(&cluster, TABLE, "t").await;
    for i in 0..6 {
        cluster.nodes[i % 2].insert("t", "CSV", rows(i as u64 * 1000, 500)).await;
    }
    wait_uploaded(&cluster.nodes[0], "t", 6).await;
    wait_uploaded(&cluster.nodes[1], "t", 6).await;
    let expected = cluster.nodes[0].sql(DIGEST).await;
    let served = "tandem_interserver_served_bytes_total";
    let served_before = cluster.n(1).metric(served).await + cluster.n(2).metric(served).await;

    let mut n3 = cluster.extra_node_with(3, true, &["--bootstrap-from-object-store"]).unwrap();
    n3.restart().await.unwrap();
    n3.wait_for("SELECT count() FROM t", "3000", CONVERGE).await;
    assert_eq!(n3.sql(DIGEST).await, expected, "the bootstrapped node answers as its peers do");
    assert_eq!(active_parts(&n3, "t").await, active_parts(&cluster.nodes[0], "t").await);
    assert_eq!(n3.metric("tandem_object_store_fetched_parts_total").await, 6.0);
    assert_eq!(n3.metric("tandem_fetch_parts_total").await, 0.0, "nothing was fetched from peers");
    let served_after = cluster.n(1).metric(served).await + cluster.n(2).metric(served).await;
    assert_eq!(served_after, served_before, "the peers sent no part bytes");

    // Flip one byte of one object: a bootstrapping node refuses it and asks a peer instead.
    let (victim, bytes) = s3.objects("t").await.unwrap().into_iter().next().unwrap();
    let mut flipped = bytes.to_vec();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    s3.client().unwrap().put(&s3.key("t", &victim), PutPayload::from(flipped)).await.unwrap();
    let mut n4 = cluster.extra_node_with(4, true, &["--bootstrap-from-object-store"]).unwrap();
    n4.restart().await.unwrap();
    n4.wait_for("SELECT count() FROM t", "3000", CONVERGE).await;
    assert_eq!(n4.sql(DIGEST).await, expected);
    assert_eq!(n4.metric("tandem_object_store_corrupt_objects_total").await, 1.0, "the mismatch is counted");
    assert_eq!(n4.metric("tandem_fetch_parts_total").await, 1.0, "only the corrupt object's part came from a peer");
    assert_eq!(n4.metric("tandem_object_store_fetched_parts_total").await, 5.0);
    assert!(n4.log_text().contains("refused a part whose bytes do not match its hash"));

    // The corrupt object is removed and the part uploaded again by a node that has it.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let repaired = s3.objects("t").await.unwrap().get(&victim).map(|b| blake3::hash(b).to_hex().to_string());
        if repaired.as_deref() == Some(victim.as_str()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the corrupt object is replaced: now {repaired:?} {victim}\n{}\n{}\n{}",
            cluster.nodes[0].log_text(),
            cluster.nodes[1].log_text(),
            n4.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn unreferenced_objects_are_collected_by_one_node_after_the_grace_period() {
    let s3 = S3::start().await.expect("an S3 server");
    let gc = ["--object-store-gc-grace-seconds", "2", "--object-store-gc-interval-seconds", "1"];
    let cluster = start_cluster(2, &s3, &s3.endpoint, &gc).await;
    for table in ["keep", "gone", "merged"] {
        let ddl = format!(
            "CREATE TABLE {table} (id UInt64, host String, v Float64) ORDER BY id SETTINGS background_merges = 0"
        );
        create_table(&cluster, &ddl, table).await;
    }
    for i in 0..4 {
        for table in ["keep", "gone", "merged"] {
            cluster.nodes[i % 2].insert(table, "CSV", rows(i as u64 * 10, 10)).await;
        }
    }
    for table in ["keep", "gone", "merged"] {
        wait_uploaded(&cluster.nodes[0], table, 4).await;
    }
    let kept = active_parts(&cluster.nodes[0], "keep").await;

    cluster.nodes[1].sql("DROP TABLE gone").await;
    cluster.nodes[0].sql("ALTER TABLE merged MODIFY SETTING background_merges = 1").await;
    assert_eq!(s3.objects("gone").await.unwrap().len(), 4, "nothing is deleted before the grace period");
    let merged_part = "SELECT count() FROM system.parts WHERE \"table\" = 'merged' AND active AND level = 1";
    cluster.nodes[0].wait_for(merged_part, "1", CONVERGE).await;
    wait_uploaded(&cluster.nodes[0], "merged", 1).await;
    let merged = active_parts(&cluster.nodes[0], "merged").await;

    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let gone = s3.objects("gone").await.unwrap();
        let left: BTreeSet<String> = s3.objects("merged").await.unwrap().into_keys().collect();
        if gone.is_empty() && left == merged {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped table's and the merged-away parts' objects are collected: {} and {left:?} left",
            gone.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let remaining: BTreeSet<String> = s3.objects("keep").await.unwrap().into_keys().collect();
    assert_eq!(remaining, kept, "every referenced object is still there");
    assert_eq!(s3.outboards("keep").await.unwrap(), kept, "with its outboard");
    assert!(s3.outboards("gone").await.unwrap().is_empty(), "outboards are collected with their parts");
    let deleted = "tandem_object_store_gc_deleted_objects_total";
    let total = cluster.nodes[0].metric(deleted).await + cluster.nodes[1].metric(deleted).await;
    assert_eq!(total, 8.0, "one collector deleted each of the 4 + 4 objects once");
}

#[tokio::test]
async fn rows_past_the_ttl_leave_every_node_and_their_objects_are_collected() {
    let s3 = S3::start().await.expect("an S3 server");
    let gc = ["--object-store-gc-grace-seconds", "2", "--object-store-gc-interval-seconds", "1"];
    let cluster = start_cluster(2, &s3, &s3.endpoint, &gc).await;
    // Three parts (a merge needs four): no size-tiered merge happens, only what the TTL asks.
    create_table(
        &cluster,
        "CREATE TABLE events (ts DateTime, id UInt64) ORDER BY id SETTINGS merge_with_ttl_timeout = 0",
        "events",
    )
    .await;
    let now = chrono::Utc::now();
    let at = |age: chrono::TimeDelta| (now - age).format("%Y-%m-%d %H:%M:%S").to_string();
    let rows = |ids: std::ops::Range<u64>, age: &dyn Fn(u64) -> chrono::TimeDelta| -> String {
        ids.map(|i| format!("{},{i}\n", at(age(i)))).collect()
    };
    // All expired; half expired (ids 100..150); none expired.
    let all = cluster.nodes[0].insert("events", "CSV", rows(0..100, &|_| chrono::TimeDelta::days(10))).await;
    let half = cluster.nodes[1]
        .insert(
            "events",
            "CSV",
            rows(100..200, &|i| if i < 150 { chrono::TimeDelta::days(2) } else { chrono::TimeDelta::hours(1) }),
        )
        .await;
    let fresh = cluster.nodes[0].insert("events", "CSV", rows(200..300, &|_| chrono::TimeDelta::minutes(1))).await;
    let (all, half, fresh) = (part_of(&all), part_of(&half), part_of(&fresh));
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM events", "300", CONVERGE).await;
        wait_uploaded(node, "events", 3).await;
    }
    assert_eq!(s3.objects("events").await.unwrap().len(), 3);

    cluster.nodes[1].sql("ALTER TABLE events MODIFY TTL ts + INTERVAL 1 DAY").await;
    // The ALTER answers once node 2 applied it; node 1 follows through its watch.
    let ttl = "SELECT ttl FROM system.tables WHERE name = 'events'";
    cluster.nodes[0].wait_for(ttl, "ts + INTERVAL 1 DAY", CONVERGE).await;
    for node in &cluster.nodes {
        node.wait_for(
            "SELECT count(), min(id), max(id), count(DISTINCT id) FROM events",
            "150\t150\t299\t150",
            CONVERGE,
        )
        .await;
        let parts = active_parts(node, "events").await;
        assert!(parts.contains(&fresh), "the part with no expired row is untouched: {parts:?}");
        assert!(!parts.contains(&all) && !parts.contains(&half), "{parts:?}");
        assert_eq!(parts.len(), 2, "the half-expired part was rewritten as one part: {parts:?}");
    }
    let dropped: f64 = cluster.nodes[0].metric("tandem_ttl_dropped_parts_total").await
        + cluster.nodes[1].metric("tandem_ttl_dropped_parts_total").await;
    let deleted: f64 = cluster.nodes[0].metric("tandem_ttl_deleted_rows_total").await
        + cluster.nodes[1].metric("tandem_ttl_deleted_rows_total").await;
    assert_eq!((dropped, deleted), (1.0, 150.0), "one part dropped whole; 100 + 50 rows deleted once");

    let kept = active_parts(&cluster.nodes[0], "events").await;
    wait_uploaded(&cluster.nodes[0], "events", 2).await;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let objects: BTreeSet<String> = s3.objects("events").await.unwrap().into_keys().collect();
        if objects == kept {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired parts' objects are collected and the others kept: {objects:?}, want {kept:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
