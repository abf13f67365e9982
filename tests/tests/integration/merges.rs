//! Replicated background merges on a 3-node cluster with a real etcd: many small inserts end
//! as few parts per partition, the same on every node, with every row once, replicas fetching
//! the merged parts; a merge leader killed in the middle of merging is replaced; queries during
//! merges see every row once, replicas rebuilding the merged parts themselves;
//! retried blocks are still deduplicated after their part was merged; too many parts slow and
//! then refuse inserts; a source rotted on the leader's disk is fetched again, not merged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tandem_coordinator::{Coordinator, EtcdKv};
use tandem_tests::{Cluster, Tandem};

const CONVERGE: Duration = Duration::from_secs(60);
/// At rest, the size-tiered selector (at least 4 similar parts per merge, similar = within a
/// factor 4) leaves fewer than 4 parts per size tier; 1,000 inserts span at most 5 tiers.
const MAX_PARTS_PER_PARTITION: usize = 15;
const TABLE: &str =
    "CREATE TABLE t (id UInt64, ts DateTime, host String, v Float64) ORDER BY (host, id) PARTITION BY toYYYYMM(ts)";

/// Rows `from..from+count` as CSV; ids are unique, months alternate.
fn rows(from: u64, count: u64) -> String {
    (from..from + count)
        .map(|i| format!("{i},2024-0{}-01 00:00:00,h{},{}\n", 1 + i % 2, i % 7, i as f64 / 8.0))
        .collect()
}

/// What `SELECT id, ts, host, v FROM t ORDER BY id FORMAT CSV` must answer for these ids (as
/// ClickHouse writes CSV: text quoted, numbers bare and as short as they go).
fn expected_dump(ids: &BTreeSet<u64>) -> String {
    ids.iter()
        .map(|&i| format!("{i},\"2024-0{}-01 00:00:00\",\"h{}\",{}\n", 1 + i % 2, i % 7, i as f64 / 8.0))
        .collect()
}

async fn coordinator(cluster: &Cluster) -> Coordinator {
    let kv = EtcdKv::connect(std::slice::from_ref(&cluster.etcd.endpoint)).await.expect("etcd connects");
    Coordinator::new(Arc::new(kv), cluster.prefix())
}

/// The node that leads `table`'s merges (waiting for one to), and its number.
async fn merge_leader(c: &Coordinator, table: &str) -> (String, usize) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        if let Some(leader) = c.leader(&format!("merge/{table}")).await.unwrap() {
            let index = leader.trim_start_matches('n').parse().unwrap();
            return (leader, index);
        }
        assert!(tokio::time::Instant::now() < deadline, "some node leads the merges of {table}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_table(cluster: &Cluster) {
    cluster.nodes[0].sql(TABLE).await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM system.tables WHERE name = 't'", "1", CONVERGE).await;
    }
}

/// Active parts per partition on a node.
async fn parts_per_partition(node: &Tandem) -> BTreeMap<String, usize> {
    let text = node
        .sql("SELECT partition, count() FROM system.parts WHERE \"table\" = 't' AND active GROUP BY partition")
        .await;
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(partition, n)| (partition.to_string(), n.parse().expect("a count")))
        .collect()
}

async fn active_parts(node: &Tandem) -> BTreeSet<String> {
    node.sql("SELECT name FROM system.parts WHERE \"table\" = 't' AND active")
        .await
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until merges have brought every partition to at most the bound on every node, every
/// node serves exactly the parts etcd lists, and every node answers the full dump expected.
async fn assert_merged_and_converged(cluster: &Cluster, nodes: &[&Tandem], ids: &BTreeSet<u64>) {
    let c = coordinator(cluster).await;
    let dump = expected_dump(ids);
    let deadline = tokio::time::Instant::now() + CONVERGE;
    for node in nodes {
        node.wait_for("SELECT count() FROM t", &ids.len().to_string(), CONVERGE).await;
        loop {
            let registered: BTreeSet<String> = c
                .snapshot()
                .await
                .unwrap()
                .parts
                .into_iter()
                .filter(|p| p.table == "t")
                .map(|p| p.id.to_string())
                .collect();
            let per_partition = parts_per_partition(node).await;
            let merged = per_partition.values().all(|n| *n <= MAX_PARTS_PER_PARTITION);
            let here = active_parts(node).await;
            if merged && here == registered {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: parts per partition {per_partition:?}; holds {} parts, etcd lists {}",
                node.url,
                here.len(),
                registered.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let answer = node.request("SELECT id, ts, host, v FROM t ORDER BY id FORMAT CSV", &[], Vec::new()).await.ok();
        let text = answer.text();
        let first_difference = text.lines().zip(dump.lines()).find(|(a, b)| a != b);
        assert!(
            text == dump,
            "{} does not hold every row exactly once: first difference {first_difference:?}",
            node.url
        );
    }
}

#[tokio::test]
async fn a_thousand_small_inserts_end_as_few_parts_the_same_everywhere() {
    let cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    let writers = cluster.nodes.iter().enumerate().map(|(n, node)| async move {
        let mut inserted = 0;
        for i in (n as u64..1000).step_by(3) {
            node.insert("t", "CSV", rows(i * 4, 4)).await;
            inserted += 1;
        }
        inserted
    });
    let inserted: usize = futures::future::join_all(writers).await.into_iter().sum();
    assert_eq!(inserted, 1000);
    let ids: BTreeSet<u64> = (0..4000).collect();
    let nodes: Vec<&Tandem> = cluster.nodes.iter().collect();
    assert_merged_and_converged(&cluster, &nodes, &ids).await;
    let sums: BTreeSet<String> =
        futures::future::join_all(nodes.iter().map(|n| n.sql("SELECT count(), sum(id), sum(v) FROM t")))
            .await
            .into_iter()
            .collect();
    let (sum_id, sum_v): (u64, f64) = (ids.iter().sum(), ids.iter().map(|&i| i as f64 / 8.0).sum());
    assert_eq!(sums.into_iter().collect::<Vec<_>>(), [format!("4000\t{sum_id}\t{sum_v}\n")]);
    let levels = cluster.nodes[0].sql("SELECT max(level) FROM system.parts WHERE active").await;
    assert!(levels.trim().parse::<u64>().unwrap() >= 2, "parts were merged more than once: level {levels}");
    // By default replicas fetch the parts their leader merged rather than merging again.
    let mut fetched = 0.0;
    for node in &cluster.nodes {
        fetched += node.metric("tandem_merge_fetched_parts_total").await;
    }
    assert!(fetched > 0.0, "replicas fetched merged parts");
}

#[tokio::test]
async fn a_merge_leader_killed_while_merging_is_replaced_and_nothing_is_lost_or_doubled() {
    let mut cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    let c = coordinator(&cluster).await;
    let mut ids = BTreeSet::new();
    let mut next = 0u64;
    // Enough inserts that merges are running all the time.
    for i in 0..120 {
        cluster.nodes[i % 3].insert("t", "CSV", rows(next, 50)).await;
        ids.extend(next..next + 50);
        next += 50;
    }
    let (leader, index) = merge_leader(&c, "t").await;
    let survivors: Vec<usize> = (1..=3).filter(|i| *i != index).collect();
    // Inserts are acknowledged with one copy (insert_quorum=1): let every node hold them, so
    // that what the survivors must end with does not depend on replication racing the kill.
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM t", &ids.len().to_string(), CONVERGE).await;
    }
    // Keep the leader busy with parts written on the survivors, and kill it the moment it
    // reports a merge in progress.
    let mut caught = false;
    for round in 0..400 {
        cluster.n(survivors[round % 2]).insert("t", "CSV", rows(next, 50)).await;
        ids.extend(next..next + 50);
        next += 50;
        let merging =
            cluster.n(index).sql("SELECT count() FROM system.replication_queue WHERE kind LIKE 'merge (leader%'").await;
        if merging.trim() != "0" {
            caught = true;
            break;
        }
    }
    assert!(caught, "the leader was seen merging");
    cluster.n(index).kill();

    // The others go on inserting; one of them takes the leadership over and merges.
    for i in 0..60 {
        cluster.n(survivors[i % 2]).insert("t", "CSV", rows(next, 50)).await;
        ids.extend(next..next + 50);
        next += 50;
    }
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let now = c.leader("merge/t").await.unwrap();
        if now.as_ref().is_some_and(|l| *l != leader) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "another node takes the merge leadership over (still {now:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let nodes: Vec<&Tandem> = survivors.iter().map(|i| &cluster.nodes[i - 1]).collect();
    assert_merged_and_converged(&cluster, &nodes, &ids).await;

    cluster.n(index).restart().await.unwrap();
    let nodes: Vec<&Tandem> = cluster.nodes.iter().collect();
    assert_merged_and_converged(&cluster, &nodes, &ids).await;
}

/// A source that rotted on the merge leader's disk never goes into a merged part, whose new
/// hash would vouch for the damage and which the replicas fetch: the leader moves its copy
/// aside, fetches a good one, and merges that.
#[tokio::test]
async fn a_source_rotted_on_the_merge_leader_is_fetched_again_not_merged() {
    use tandem_parts::parquet::file::reader::{FileReader, SerializedFileReader};

    let cluster = Cluster::start(2).await.unwrap();
    // Uncompressed, so a flipped byte in a value changes the value rather than failing to decode.
    cluster.nodes[0]
        .sql("CREATE TABLE r (id UInt64, v Float64) ORDER BY id SETTINGS default_compression_codec = 'NONE'")
        .await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM system.tables WHERE name = 'r'", "1", CONVERGE).await;
    }
    let batch = |ids: std::ops::Range<u64>| ids.map(|i| format!("{i},{}\n", i as f64 / 4.0)).collect::<String>();
    // Four parts make a merge, which names the leader; the merged part is too large to be
    // merged again with the small parts that follow.
    for n in 0..4 {
        cluster.nodes[0].insert("r", "CSV", batch(n * 2000..(n + 1) * 2000)).await;
    }
    let (_, index) = merge_leader(&coordinator(&cluster).await, "r").await;
    let leader = &cluster.nodes[index - 1];
    let level_0 = "SELECT count() FROM system.parts WHERE \"table\" = 'r' AND active AND level = 0";
    leader.wait_for(level_0, "0", CONVERGE).await;

    // Three more parts, on both nodes; then one of them rots on the leader's disk, in the
    // middle of its values.
    for n in 0..3 {
        cluster.nodes[1].insert("r", "CSV", batch(8000 + n * 500..8500 + n * 500)).await;
    }
    for node in &cluster.nodes {
        node.wait_for(level_0, "3", CONVERGE).await;
    }
    let victim = leader.sql(&format!("{} LIMIT 1", level_0.replace("count()", "name"))).await;
    let path = leader.data_dir.join("parts").join(format!("{}.parquet", victim.trim()));
    let values = {
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let chunk = reader.metadata().row_group(0).column(1).clone();
        assert_eq!(chunk.column_path().string(), "v");
        chunk.byte_range()
    };
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(values.0 + values.1 / 2) as usize] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();

    // A fourth part sets off the merge that would take the rotten copy.
    cluster.nodes[1].insert("r", "CSV", batch(9500..10_000)).await;
    let ids = 0..10_000u64;
    let expected = format!("10000\t{}\t{}", ids.clone().sum::<u64>(), ids.map(|i| i as f64 / 4.0).sum::<f64>());
    for node in &cluster.nodes {
        node.wait_for(level_0, "0", CONVERGE).await;
        node.wait_for("SELECT count(), sum(id), sum(v) FROM r", &expected, CONVERGE).await;
    }
    assert_eq!(leader.metric("tandem_parts_corrupt_total").await, 1.0, "the leader found its copy corrupt");
    assert_eq!(std::fs::read_dir(leader.data_dir.join("quarantine")).unwrap().count(), 1, "and moved it aside");
}

#[tokio::test]
async fn queries_running_across_merges_see_every_row_once() {
    // Replicas rebuild merged parts from their own sources here (the other tests fetch them).
    let cluster = Cluster::start_with(3, vec!["--always-fetch-merged-part=false".into()], Vec::new()).await.unwrap();
    // Merges start only once the queries run, so the queries certainly run across them. A
    // codec other than the default: replicas must rebuild with the codec the leader merged with.
    cluster.nodes[0]
        .sql(&format!("{TABLE} SETTINGS background_merges = 0, default_compression_codec = 'ZSTD(3)'"))
        .await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM system.tables WHERE name = 't'", "1", CONVERGE).await;
    }
    let mut revision = 0;
    for i in 0..64u64 {
        let summary = cluster.nodes[(i % 3) as usize].insert("t", "CSV", rows(i * 10, 10)).await;
        revision = revision.max(summary["revision"].as_i64().unwrap());
    }
    let revision = revision.to_string();
    let expected = format!("640\t{}\n", (0..640u64).sum::<u64>());
    let mut merges_before = 0.0;
    for node in &cluster.nodes {
        merges_before += node.metric("tandem_merges_total").await;
    }
    // Every node answers, as of the last insert, while merges replace parts under it: never a
    // row twice (sources and merged part), never a row missing (neither).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut answers = 0;
    while tokio::time::Instant::now() < deadline {
        for node in &cluster.nodes {
            let answer = node
                .request("SELECT count(), sum(id) FROM t", &[("after_revision", revision.as_str())], Vec::new())
                .await
                .ok()
                .text();
            assert_eq!(answer, expected, "{} during merges", node.url);
            answers += 1;
        }
        if answers == 3 {
            cluster.nodes[1].sql("ALTER TABLE t MODIFY SETTING background_merges = 1").await;
        }
    }
    let mut merges_after = 0.0;
    for node in &cluster.nodes {
        merges_after += node.metric("tandem_merges_total").await;
    }
    assert!(merges_after > merges_before, "merges ran while the {answers} queries did");
    let ids: BTreeSet<u64> = (0..640).collect();
    let nodes: Vec<&Tandem> = cluster.nodes.iter().collect();
    assert_merged_and_converged(&cluster, &nodes, &ids).await;
    let mut rebuilt = 0.0;
    for node in &cluster.nodes {
        rebuilt += node.metric("tandem_merge_local_rebuilds_total").await;
        assert_eq!(node.metric("tandem_merge_mismatches_total").await, 0.0, "local merges match the leader's bytes");
    }
    assert!(rebuilt > 0.0, "replicas rebuilt merged parts from their own sources");
    for node in &cluster.nodes {
        let codecs =
            node.sql("SELECT DISTINCT default_compression_codec FROM system.parts WHERE \"table\" = 't'").await;
        assert_eq!(codecs, "ZSTD(3)\n", "{}", node.url);
    }
}

#[tokio::test]
async fn a_table_chooses_how_its_parts_and_merges_are_compressed() {
    let cluster = Cluster::start(1).await.unwrap();
    let node = &cluster.nodes[0];
    node.sql(&format!("{TABLE} SETTINGS background_merges = 0")).await;
    // Each insert of rows alternating between two months is one part per month.
    node.insert("t", "CSV", rows(0, 10)).await;
    let codecs = "SELECT default_compression_codec, count() FROM system.parts WHERE \"table\" = 't' AND active \
                  GROUP BY 1 ORDER BY 1";
    assert_eq!(node.sql(codecs).await, "LZ4\t2\n", "LZ4 unless the table says otherwise");

    for codec in ["'ZSTD(23)'", "'LZ4HC'", "3"] {
        let refused =
            node.request(&format!("ALTER TABLE t MODIFY SETTING default_compression_codec = {codec}"), &[], "").await;
        assert_eq!(refused.status, 400, "{codec}: {}", refused.text());
        assert!(refused.text().contains("default_compression_codec"), "{codec}: {}", refused.text());
    }
    node.sql("ALTER TABLE t MODIFY SETTING default_compression_codec = 'zstd(3)'").await;
    let settings = node.sql("SELECT settings FROM system.tables WHERE name = 't'").await;
    assert!(settings.contains(r#""default_compression_codec":"ZSTD(3)""#), "{settings}");
    for i in 1..4 {
        node.insert("t", "CSV", rows(i * 10, 10)).await;
    }
    assert_eq!(node.sql(codecs).await, "LZ4\t2\nZSTD(3)\t6\n", "new parts take the table's codec");

    // A merge of parts written with either codec writes the table's.
    node.sql("ALTER TABLE t MODIFY SETTING background_merges = 1").await;
    node.wait_for(codecs, "ZSTD(3)\t2", CONVERGE).await;
    let ids: BTreeSet<u64> = (0..40).collect();
    let dump = node.request("SELECT id, ts, host, v FROM t ORDER BY id FORMAT CSV", &[], Vec::new()).await.ok();
    assert_eq!(dump.text(), expected_dump(&ids));
}

#[tokio::test]
async fn a_retried_block_is_deduplicated_after_its_part_was_merged() {
    let cluster = Cluster::start(3).await.unwrap();
    create_table(&cluster).await;
    let block = rows(1_000_000, 5);
    let first = cluster.nodes[0].insert("t", "CSV", block.clone()).await;
    let part = first["parts"][0]["part"].as_str().unwrap().to_string();
    for i in 0..12u64 {
        cluster.nodes[(i % 3) as usize].insert("t", "CSV", rows(i * 5, 5)).await;
    }
    let gone = format!("SELECT count() FROM system.parts WHERE name = '{part}'");
    for node in &cluster.nodes {
        node.wait_for(&gone, "0", CONVERGE).await;
    }
    let retry = cluster.nodes[2].insert("t", "CSV", block).await;
    assert_eq!(retry["deduplicated"], true, "{retry}");
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM t WHERE id >= 1000000", "5", CONVERGE).await;
        node.wait_for("SELECT count() FROM t", "65", CONVERGE).await;
    }
}

#[tokio::test]
async fn too_many_parts_slow_inserts_down_then_refuse_them_by_name() {
    let cluster = Cluster::start(1).await.unwrap();
    let node = &cluster.nodes[0];
    // Merges need 4 similar parts: with a limit of 3, nothing can bring the count down.
    node.sql(&format!("{TABLE} SETTINGS parts_to_delay_insert = 2, parts_to_throw_insert = 3")).await;
    for i in 0..3u64 {
        node.insert("t", "CSV", rows(i * 2, 1)).await;
    }
    assert!(node.metric("tandem_insert_delayed_total").await >= 1.0, "the third insert was slowed down");
    let refused = node.request("INSERT INTO t FORMAT CSV", &[], rows(100, 1)).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    let text = refused.text();
    assert!(text.contains("`t`") && text.contains("`202401`") && text.contains("3 active parts"), "{text}");
    assert_eq!(refused.header("x-tandem-retryable").as_deref(), Some("true"));
    assert_eq!(node.count("t").await, 3, "the refused insert wrote nothing");
    node.sql("ALTER TABLE t MODIFY SETTING parts_to_throw_insert = 100").await;
    node.insert("t", "CSV", rows(100, 1)).await;
}
