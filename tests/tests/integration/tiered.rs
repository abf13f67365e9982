//! Tiered storage on a real S3-compatible server (moto by default) and a real etcd: nodes with a
//! local budget of about a fifth of the table keep their disks within it by evicting parts that
//! are in the bucket, and answer every query of a set exactly as a node holding everything does,
//! reading the rest from the bucket with verified ranged reads; a flipped byte in an object
//! makes a query over that part fail by name, never return other rows.

use std::time::Duration;

use tandem_tests::{Cluster, S3, Tandem};

const CONVERGE: Duration = Duration::from_secs(60);
/// Merges off: the test follows parts of known sizes through eviction. One part per insert.
const TABLE: &str = "CREATE TABLE m (ts DateTime, host String, id UInt64, v Float64) ORDER BY (host, ts) \
                     SETTINGS background_merges = 0";

/// Rows of insert `batch`: 8 hosts, three days, values that do not compress to nothing.
fn rows(batch: u64, count: u64) -> String {
    (0..count)
        .map(|i| {
            let id = batch * count + i;
            let (day, second) = (1 + id % 3, (id * 7919) % 86_400);
            let ts = format!("2026-01-0{day} {:02}:{:02}:{:02}", second / 3600, second / 60 % 60, second % 60);
            format!("{ts},h{},{id},{}\n", id % 8, (id * 2_654_435_761 % 1_000_003) as f64 / 7.0)
        })
        .collect()
}

const QUERIES: &[&str] = &[
    "SELECT count(), sum(id), round(sum(v), 3) FROM m",
    "SELECT host, count(), round(avg(v), 6) FROM m GROUP BY host ORDER BY host",
    "SELECT count(), min(ts), max(ts), sum(id) FROM m WHERE host = 'h3'",
    "SELECT count(), sum(id) FROM m WHERE ts >= '2026-01-02 06:00:00' AND ts < '2026-01-02 18:00:00'",
    "SELECT toStartOfHour(ts) AS hour, count() FROM m WHERE host IN ('h1', 'h5') GROUP BY hour ORDER BY hour",
    "SELECT id, host, ts, v FROM m ORDER BY v DESC, id LIMIT 10",
    "SELECT count(DISTINCT host), count(DISTINCT id) FROM m WHERE id % 97 = 3",
];

async fn answers(node: &Tandem) -> Vec<String> {
    let mut out = Vec::new();
    for sql in QUERIES {
        out.push(node.request(sql, &[], "").await.ok().text());
    }
    out
}

async fn table_bytes(node: &Tandem) -> u64 {
    node.sql("SELECT sum(bytes) FROM system.parts WHERE \"table\" = 'm' AND active").await.trim().parse().unwrap()
}

async fn largest_part(node: &Tandem) -> u64 {
    node.sql("SELECT max(bytes) FROM system.parts WHERE \"table\" = 'm' AND active").await.trim().parse().unwrap()
}

async fn wait_uploaded(node: &Tandem, parts: usize) {
    let sql = "SELECT count() FROM system.parts WHERE \"table\" = 'm' AND in_object_store";
    node.wait_for(sql, &parts.to_string(), CONVERGE).await;
}

async fn start(s3: &S3) -> Cluster {
    let args = s3.args(&s3.endpoint);
    let cluster = Cluster::start_with(1, args, s3.env()).await.expect("the reference node starts");
    cluster.nodes[0].sql(TABLE).await;
    cluster
}

#[tokio::test]
async fn nodes_with_a_fifth_of_the_table_on_disk_answer_like_a_node_with_all_of_it() {
    let s3 = S3::start().await.expect("an S3 server");
    let mut cluster = start(&s3).await;
    let batches = 24u64;
    let per_batch = 30_000u64;
    // Half the table first, on the reference node (it keeps everything).
    for batch in 0..batches / 2 {
        cluster.nodes[0].insert("m", "CSV", rows(batch, per_batch)).await;
    }
    wait_uploaded(&cluster.nodes[0], 12).await;
    let half = table_bytes(&cluster.nodes[0]).await;
    let budget = half * 2 / 5;
    let budget_flag = budget.to_string();
    for i in 2..=4 {
        let mut node = cluster.extra_node_with(i, true, &["--local-storage-bytes", &budget_flag]).unwrap();
        node.restart().await.expect("a budget node starts");
        cluster.nodes.push(node);
    }
    // The other half through the budget nodes: each new part is fetched everywhere (it is new,
    // so hot), then evicted once it is in the bucket.
    let mut peak = [0f64; 3];
    for batch in batches / 2..batches {
        let writer = 1 + (batch as usize % 3);
        cluster.nodes[writer].insert("m", "CSV", rows(batch, per_batch)).await;
        wait_uploaded(&cluster.nodes[0], batch as usize + 1).await;
        for (i, node) in cluster.nodes[1..].iter().enumerate() {
            node.wait_for("SELECT count() FROM m", &((batch + 1) * per_batch).to_string(), CONVERGE).await;
            peak[i] = peak[i].max(node.metric("tandem_local_part_bytes").await);
        }
    }
    let total = table_bytes(&cluster.nodes[0]).await;
    let slack = largest_part(&cluster.nodes[0]).await;
    assert!(
        budget * 5 <= total * 11 / 10 && budget * 5 >= total * 9 / 10,
        "the budget is about a fifth: {budget} of {total}"
    );
    // Every part is in the bucket now: each node settles within its budget (no further
    // eviction changes what the queries below read).
    for node in &cluster.nodes[1..] {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        while node.metric("tandem_local_part_bytes").await > budget as f64 {
            assert!(tokio::time::Instant::now() < deadline, "a node stays over its budget");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (i, peak) in peak.iter().enumerate() {
        assert!(
            *peak <= (budget + slack) as f64,
            "node {} held {peak} bytes, budget {budget} + one part {slack}",
            i + 2
        );
    }

    let expected = answers(&cluster.nodes[0]).await;
    assert!(expected[0].starts_with(&format!("{}\t", batches * per_batch)), "{}", expected[0]);
    for node in &cluster.nodes[1..] {
        assert!(node.metric("tandem_evicted_parts_total").await > 0.0);
    }
    // Cold (a restart empties the cache), a filter on the sort key reads the footers and the
    // pages of one host of eight, not the parts. Evicted parts stay in the bucket's care across
    // the restart: nothing is fetched back.
    cluster.nodes[3].restart().await.expect("the node restarts");
    cluster.nodes[3]
        .wait_for("SELECT count() FROM system.parts WHERE \"table\" = 'm' AND active", "24", CONVERGE)
        .await;
    assert!(cluster.nodes[3].metric("tandem_local_part_bytes").await <= (budget + slack) as f64);
    let one_host = "SELECT count(), sum(id) FROM m WHERE host = 'h3'";
    let read = cluster.nodes[3].metric("tandem_bucket_read_bytes_total").await;
    assert_eq!(cluster.nodes[3].sql(one_host).await, cluster.nodes[0].sql(one_host).await);
    let read = cluster.nodes[3].metric("tandem_bucket_read_bytes_total").await - read;
    let in_bucket: f64 = cluster.nodes[3]
        .sql("SELECT sum(bytes) FROM system.parts WHERE \"table\" = 'm' AND location = 'bucket'")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(read > 0.0 && read < in_bucket / 2.0, "ranged reads of what the filter keeps: {read} of {in_bucket}");
    for node in &cluster.nodes[1..] {
        let evicted = "SELECT count() FROM system.parts WHERE \"table\" = 'm' AND active AND location = 'bucket'";
        let from_bucket: usize = node.sql(evicted).await.trim().parse().unwrap();
        assert!(from_bucket >= 12, "most parts are read from the bucket: {from_bucket} of 24");
        let before = node.metric("tandem_bucket_read_bytes_total").await;
        assert_eq!(answers(node).await, expected, "the same answers as a node holding everything");
        let cold = node.metric("tandem_bucket_read_bytes_total").await - before;
        // Warm: the same answers again, from the cache. (Not nothing: a top-10 prunes pages by
        // the rows it has seen so far, and the parallel scans deliver them in another order.)
        assert_eq!(answers(node).await, expected);
        let warm = node.metric("tandem_bucket_read_bytes_total").await - before - cold;
        assert!(warm <= cold / 10.0, "a warm cache reads little again: {warm} after {cold}");
        assert!(node.metric("tandem_bucket_cache_hits_total").await > 0.0);
        let storage = node
            .sql("SELECT local_part_bytes, local_storage_budget, bucket_cache_bytes, bucket_cache_hit_rate FROM system.replicas WHERE is_local")
            .await;
        let fields: Vec<f64> = storage.split_whitespace().map(|f| f.parse().unwrap()).collect();
        assert!(fields[0] <= (budget + slack) as f64 && fields[1] == budget as f64, "{storage}");
        assert!(fields[2] > 0.0 && fields[3] > 0.0 && fields[3] <= 1.0, "the cache's size and hit rate: {storage}");
    }
}

#[tokio::test]
async fn a_flipped_byte_in_an_object_fails_the_query_by_name_and_never_changes_an_answer() {
    let s3 = S3::start().await.expect("an S3 server");
    let mut cluster = start(&s3).await;
    for batch in 0..2 {
        cluster.nodes[0].insert("m", "CSV", rows(batch, 20_000)).await;
    }
    wait_uploaded(&cluster.nodes[0], 2).await;
    let expected = answers(&cluster.nodes[0]).await;
    // Flip one byte in the middle of every object: in column data, not the footer.
    let objects = s3.objects("m").await.unwrap();
    let client = s3.client().unwrap();
    for (name, bytes) in &objects {
        let mut flipped = bytes.to_vec();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x10;
        use object_store::ObjectStoreExt;
        client.put(&s3.key("m", name), flipped.into()).await.unwrap();
    }
    // A node that holds nothing on disk reads every part from the bucket.
    let mut node = cluster.extra_node_with(2, true, &["--local-storage-bytes", "1"]).unwrap();
    node.restart().await.expect("the node starts");
    node.wait_for("SELECT count() FROM system.parts WHERE \"table\" = 'm' AND location = 'bucket'", "2", CONVERGE)
        .await;
    let answer = node.request("SELECT * FROM m ORDER BY id FORMAT CSV", &[], "").await;
    assert_ne!(
        answer.status,
        200,
        "a corrupt object never answers: {}",
        answer.text().chars().take(300).collect::<String>()
    );
    assert!(answer.text().contains("do not verify against its id"), "{}", answer.text());
    // Every query either fails the same way or gives the reference answer.
    for (sql, expected) in QUERIES.iter().zip(&expected) {
        let answer = node.request(sql, &[], "").await;
        if answer.status == 200 {
            assert_eq!(&answer.text(), expected, "{sql}");
        } else {
            assert!(answer.text().contains("do not verify"), "{sql}: {}", answer.text());
        }
    }
    assert!(node.metric("tandem_object_store_corrupt_objects_total").await > 0.0);
    cluster.nodes.push(node);
}

#[tokio::test]
async fn a_query_node_started_empty_answers_from_the_bucket_and_holds_nothing() {
    let s3 = S3::start().await.expect("an S3 server");
    let mut cluster = start(&s3).await;
    let mut storage = cluster.extra_node(2, true).unwrap();
    storage.restart().await.expect("a second storage node starts");
    cluster.nodes.push(storage);
    for batch in 0..6 {
        cluster.nodes[batch as usize % 2].insert("m", "CSV", rows(batch, 10_000)).await;
    }
    wait_uploaded(&cluster.nodes[0], 6).await;
    let mut query = cluster.extra_node_with(3, true, &["--role", "query"]).unwrap();
    query.restart().await.expect("a query node starts");
    cluster.nodes.push(query);
    let query = &cluster.nodes[2];
    let from_bucket = "SELECT count() FROM system.parts WHERE \"table\" = 'm' AND active AND location = 'bucket'";
    query.wait_for(from_bucket, "6", CONVERGE).await;
    assert_eq!(answers(query).await, answers(&cluster.nodes[0]).await, "the same answers as a storage node");

    // A new insert shows on the query node once its object is in the bucket; it never holds it.
    cluster.nodes[1].insert("m", "CSV", rows(6, 10_000)).await;
    query.wait_for(from_bucket, "7", CONVERGE).await;
    assert_eq!(answers(query).await, answers(&cluster.nodes[0]).await);
    let held = "SELECT count() FROM system.parts WHERE \"table\" = 'm' AND location = 'local'";
    assert_eq!(query.sql(held).await.trim(), "0", "a query node holds nothing but cache");
    assert_eq!(query.metric("tandem_local_part_bytes").await, 0.0);
    let parts_dir = std::fs::read_dir(query.data_dir.join("parts")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(parts_dir, 0, "no part file on its disk");

    let refused = query.request("INSERT INTO m FORMAT CSV", &[], rows(7, 10)).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("query node"), "{}", refused.text());
    assert_eq!(cluster.nodes[0].count("m").await, 70_000, "nothing refused is stored");
    // Quorums count the nodes that hold parts: two here, not three.
    let roles = cluster.nodes[0].sql("SELECT node_id, role FROM system.replicas ORDER BY node_id").await;
    assert_eq!(roles, "n1\tstorage\nn2\tstorage\nn3\tquery\n");
    let two = cluster.nodes[0].request("INSERT INTO m FORMAT CSV", &[("insert_quorum", "3")], rows(8, 10)).await;
    assert_eq!(two.status, 503, "insert_quorum=3 with two storage nodes: {}", two.text());
    cluster.nodes[0].request("INSERT INTO m FORMAT CSV", &[("insert_quorum", "2")], rows(9, 10)).await.ok();
}

#[tokio::test]
async fn with_local_replicas_each_part_is_on_that_many_disks_and_every_node_answers() {
    let s3 = S3::start().await.expect("an S3 server");
    let cluster = Cluster::start_with(3, s3.args(&s3.endpoint), s3.env()).await.expect("the cluster starts");
    cluster.nodes[0]
        .sql(
            "CREATE TABLE m (ts DateTime, host String, id UInt64, v Float64) ORDER BY (host, ts) \
             SETTINGS local_replicas = 2, background_merges = 0",
        )
        .await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM system.tables WHERE name = 'm'", "1", CONVERGE).await;
    }
    for batch in 0..9 {
        cluster.nodes[batch as usize % 3].insert("m", "CSV", rows(batch, 2_000)).await;
    }
    let visible = "SELECT count() FROM system.parts WHERE \"table\" = 'm' AND active";
    let mut local_copies = std::collections::BTreeMap::<String, usize>::new();
    for node in &cluster.nodes {
        node.wait_for(visible, "9", CONVERGE).await;
        let local = node.sql("SELECT name FROM system.parts WHERE \"table\" = 'm' AND location = 'local'").await;
        for part in local.lines() {
            *local_copies.entry(part.to_string()).or_default() += 1;
        }
    }
    assert_eq!(local_copies.len(), 9, "every part is on some disk: {local_copies:?}");
    assert!(local_copies.values().all(|n| *n == 2), "each part on exactly local_replicas = 2 disks: {local_copies:?}");
    let expected = answers(&cluster.nodes[0]).await;
    assert!(expected[0].starts_with("18000\t"), "{}", expected[0]);
    for node in &cluster.nodes[1..] {
        assert_eq!(answers(node).await, expected, "every node answers the same");
    }
    let refused = cluster.nodes[0].request("INSERT INTO m FORMAT CSV", &[("insert_quorum", "3")], rows(20, 5)).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.text().contains("local_replicas = 2"), "{}", refused.text());
    assert_eq!(cluster.nodes[0].count("m").await, 18_000, "nothing refused is stored");

    // Merges read the sources the leader does not hold from the bucket.
    cluster.nodes[0]
        .sql("CREATE TABLE g (ts DateTime, host String, id UInt64, v Float64) ORDER BY (host, ts) SETTINGS local_replicas = 1")
        .await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM system.tables WHERE name = 'g'", "1", CONVERGE).await;
    }
    for batch in 0..8 {
        cluster.nodes[batch as usize % 3].insert("g", "CSV", rows(batch, 500)).await;
    }
    let merged = "SELECT count() > 0 FROM system.parts WHERE \"table\" = 'g' AND active AND level > 0";
    cluster.nodes[0].wait_for(merged, "true", CONVERGE).await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count(), count(DISTINCT id) FROM g", "4000\t4000", CONVERGE).await;
    }
}
