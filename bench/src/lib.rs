//! tandem-bench measures what users feel, on fresh nodes in temporary directories: insert
//! throughput and latency over HTTP per format, query latency, merges, replication in a cluster
//! on a real etcd, and the object-store mirror on moto. The nodes are real `tandem` processes
//! started by the integration tests' harness (`tandem_tests`), driven over HTTP only; the
//! benchmark is not part of the production binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tandem_tests::{Cluster, S3, Tandem};

mod clickhouse;
mod cpu;
mod lean_http;
mod small_inserts;
pub use small_inserts::Mode as SmallInsertMode;
mod tiered;
mod versus;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Rows per scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Number of insert requests the rows are split into.
    #[arg(long, default_value_t = 100)]
    pub batches: usize,
    /// Times each query is run (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub query_runs: usize,
    /// Nodes of the cluster scenarios (they need an `etcd` binary); 0 skips them.
    #[arg(long, default_value_t = 3)]
    pub cluster_nodes: usize,
    /// Replication lag trials (inserts of 10,000 rows on node 1, read on node 2).
    #[arg(long, default_value_t = 15)]
    pub lag_trials: usize,
    /// Rows of each large insert used to measure part fetch throughput.
    #[arg(long, default_value_t = 400_000)]
    pub large_rows: usize,
    /// Small inserts of the merge scenario (100 rows each, 4 concurrent writers).
    #[arg(long, default_value_t = 4000)]
    pub merge_inserts: usize,
    /// Seconds the small-insert scenario sends inserts in each mode.
    #[arg(long, default_value_t = 10)]
    pub small_insert_seconds: u64,
    /// Concurrent connections of the small-insert scenario.
    #[arg(long, default_value_t = 256)]
    pub small_insert_connections: usize,
    /// Rounds of the small-insert scenario, each running every mode once: with more than one,
    /// each mode's rate is also given as min / median / max over the rounds, and as a share of
    /// the same round's `GET /ping` ceiling (this machine's speed swings by a quarter within
    /// minutes; a mode's share of the ceiling swings less).
    #[arg(long, default_value_t = 1)]
    pub small_insert_rounds: usize,
    /// Modes of the small-insert scenario to run (repeat the flag or separate with commas); all
    /// by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub small_insert_modes: Vec<SmallInsertMode>,
    /// HTTP URLs of ClickHouse replicas, comma-separated (`../shared/clickhouse-anchor/` serves
    /// two: http://127.0.0.1:8123,http://127.0.0.1:8124): the small-insert scenario runs against
    /// the first too, from the same client, with its replicated table on all of them.
    #[arg(long, value_delimiter = ',')]
    pub clickhouse_url: Vec<String>,
    /// Rounds of the ingest workloads in the ClickHouse comparison (ratios per round).
    #[arg(long, default_value_t = 3)]
    pub versus_rounds: usize,
    /// Rows of the table the ClickHouse comparison's dashboard queries run over.
    #[arg(long, default_value_t = 10_000_000)]
    pub versus_rows: usize,
    /// Rows of the table the tiered-storage scenario queries (local, evicted cold, warm).
    #[arg(long, default_value_t = 2_000_000)]
    pub tiered_rows: usize,
    /// Run only these scenarios (repeat the flag or separate with commas); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// Where each node's log is copied when its scenario ends.
    #[arg(long, default_value = "tandem-bench-logs")]
    pub log_dir: PathBuf,
}

/// The benchmark's scenarios, as `--only` names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Bulk inserts per format and queries on one node.
    Single,
    /// Sustained small inserts with background merges.
    Merges,
    /// Replication lag and part fetch throughput in a cluster.
    Cluster,
    /// Many clients sending small inserts, synchronous and asynchronous, in a 2-node cluster.
    SmallInserts,
    /// The object-store mirror on moto.
    ObjectStore,
    /// tandem against ClickHouse 18.16 (installed with apt if missing), 2 replicas each:
    /// ingest, replication lag, one-row inserts and dashboard queries, as ratios.
    Clickhouse,
    /// The dashboard queries with every part local, evicted (read from the bucket, cold) and
    /// warm, with the bytes each reads from the bucket.
    Tiered,
}

impl BenchArgs {
    fn wants(&self, scenario: Scenario) -> bool {
        self.only.is_empty() || self.only.contains(&scenario)
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn of(node: &Tandem) -> Self {
        Client { http: reqwest::Client::new(), base: node.url.clone() }
    }

    async fn query(&self, sql: &str, body: Vec<u8>) -> anyhow::Result<String> {
        self.query_with(sql, &[], body).await
    }

    /// A statement sent as the request body, the way both tandem and ClickHouse 18.16 take it
    /// (18.16 refuses a POST without a Content-Length, which an empty body does not get).
    async fn statement(&self, sql: &str) -> anyhow::Result<String> {
        let response = self.http.post(&self.base).body(sql.to_string()).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("`{sql}` at {} failed with {status}: {}", self.base, text.trim());
        }
        Ok(text)
    }

    async fn query_with(&self, sql: &str, settings: &[(&str, &str)], body: Vec<u8>) -> anyhow::Result<String> {
        let response = self.http.post(&self.base).query(&[("query", sql)]).query(settings).body(body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("`{sql}` failed with {status}: {text}");
        }
        Ok(text)
    }
}

/// 200 one-row inserts into `table` (`ts, id, v`) with one setting: p50 and p99 latency in ms.
/// Ids start at `first_id`, so every run's rows are distinct (a repeated row would be a
/// deduplicated no-op).
async fn one_row_inserts(
    client: &Client,
    table: &str,
    setting: (&str, &str),
    first_id: usize,
) -> anyhow::Result<(f64, f64)> {
    let sql = format!("INSERT INTO {table} FORMAT TabSeparated");
    let mut latencies = Vec::new();
    for i in 0..200usize {
        let body = format!("2024-01-01 00:00:00.000\t{}\t{i}\n", first_id + i).into_bytes();
        let t = Instant::now();
        client.query_with(&sql, &[setting], body).await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    Ok((percentile(&latencies, 0.5).as_secs_f64() * 1e3, percentile(&latencies, 0.99).as_secs_f64() * 1e3))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn row(i: usize) -> (i64, u64, f64) {
    const BASE_MS: i64 = 1_704_067_200_000; // 2024-01-01
    // A cheap deterministic spread of values.
    let v = ((i as u64).wrapping_mul(2_654_435_761) % 10_000) as f64 / 100.0;
    (BASE_MS + i as i64 * 10, (i % 1000) as u64, v)
}

fn json_batch(start: usize, end: usize) -> Vec<u8> {
    let mut out = String::with_capacity((end - start) * 60);
    for i in start..end {
        let (ts, id, v) = row(i);
        out.push_str(&format!("{{\"ts\":{ts},\"id\":{id},\"v\":{v}}}\n"));
    }
    out.into_bytes()
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.batches == 0 || args.rows < args.batches {
        bail!("--rows must be at least --batches, and --batches at least 1");
    }
    std::fs::create_dir_all(&args.log_dir)
        .with_context(|| format!("cannot create the log directory {}", args.log_dir.display()))?;
    println!("tandem-bench: the nodes' logs go to {}", args.log_dir.display());
    if args.wants(Scenario::Single) {
        single(&args).await?;
    }
    if args.wants(Scenario::Merges) {
        merges(&args).await?;
    }
    let clustered = args.wants(Scenario::Cluster) && args.cluster_nodes >= 2
        || args.wants(Scenario::SmallInserts)
        || args.wants(Scenario::Clickhouse);
    if clustered && tandem_tests::etcd_binary().is_none() {
        println!("cluster scenarios skipped: no `etcd` binary on the PATH (Debian: etcd-server)");
    } else {
        if args.wants(Scenario::Cluster) && args.cluster_nodes >= 2 {
            cluster(&args).await?;
        }
        if args.wants(Scenario::SmallInserts) {
            small_inserts::run(&args).await?;
        }
        if args.wants(Scenario::Clickhouse) {
            versus::run(&args).await?;
        }
    }
    if args.wants(Scenario::ObjectStore) {
        object_store(&args).await?;
    }
    if args.wants(Scenario::Tiered) {
        tiered::run(&args).await?;
    }
    Ok(())
}

/// Bulk inserts per format, then queries, on one fresh node.
async fn single(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let node = Tandem::start(&dir.path().join("single"), &[]).await?;
    let client = Client::of(&node);
    println!("tandem bench: {} rows in {} inserts per format, one node, embedded coordinator", args.rows, args.batches);

    for (format, table, encode) in [
        ("TabSeparated", "bench_tsv", tsv_batch as fn(usize, usize) -> Vec<u8>),
        ("JSONEachRow", "bench_json", json_batch as fn(usize, usize) -> Vec<u8>),
    ] {
        client
            .query(
                &format!("CREATE TABLE {table} (ts DateTime64(3), id UInt64, v Float64) ORDER BY (id, ts) PARTITION BY toYYYYMM(ts)"),
                Vec::new(),
            )
            .await?;
        let per_batch = args.rows / args.batches;
        let bodies: Vec<Vec<u8>> = (0..args.batches)
            .map(|b| {
                let end = if b + 1 == args.batches { args.rows } else { (b + 1) * per_batch };
                encode(b * per_batch, end)
            })
            .collect();
        let bytes: usize = bodies.iter().map(Vec::len).sum();
        let mut latencies = Vec::with_capacity(args.batches);
        let started = Instant::now();
        for body in bodies {
            let t = Instant::now();
            client.query(&format!("INSERT INTO {table} FORMAT {format}"), body).await?;
            latencies.push(t.elapsed());
        }
        let total = started.elapsed();
        latencies.sort();
        println!(
            "insert {format:<13} {:>10.0} rows/s  {:>7.1} MB/s  p50 {:>7.1} ms  p99 {:>7.1} ms  total {:.2} s",
            args.rows as f64 / total.as_secs_f64(),
            bytes as f64 / 1e6 / total.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            total.as_secs_f64()
        );
        let count = client.query(&format!("SELECT count() FROM {table}"), Vec::new()).await?;
        if count.trim() != args.rows.to_string() {
            bail!("{table} holds {} rows, expected {}", count.trim(), args.rows);
        }
    }

    for (name, sql) in [
        ("count+avg", "SELECT count(), avg(v) FROM bench_tsv"),
        ("group by id", "SELECT id, count(), avg(v) FROM bench_tsv GROUP BY id ORDER BY id"),
        ("filter on key", "SELECT count(), avg(v) FROM bench_tsv WHERE id = 42"),
    ] {
        let mut runs = Vec::with_capacity(args.query_runs);
        for _ in 0..args.query_runs.max(1) {
            let t = Instant::now();
            client.query(sql, Vec::new()).await?;
            runs.push(t.elapsed());
        }
        runs.sort();
        println!(
            "query  {name:<13} median {:>7.1} ms  min {:>7.1} ms   ({sql})",
            percentile(&runs, 0.5).as_secs_f64() * 1e3,
            runs[0].as_secs_f64() * 1e3
        );
    }
    keep_log(&node, &args.log_dir, "single")?;
    Ok(())
}

/// Copies a node's log into the log directory as `<name>.log`.
fn keep_log(node: &Tandem, log_dir: &Path, name: &str) -> anyhow::Result<()> {
    let target = log_dir.join(format!("{name}.log"));
    std::fs::copy(&node.log, &target)
        .with_context(|| format!("cannot copy {} to {}", node.log.display(), target.display()))?;
    Ok(())
}

/// Object-store scenarios against a local moto server: what `insert_durability=object_store`
/// costs per insert, and how fast the background uploader drains. Moto is a Python server, so
/// these figures are a floor for what a real S3 or MinIO gives, not a measure of them.
async fn object_store(args: &BenchArgs) -> anyhow::Result<()> {
    if tandem_tests::moto_python().is_none() && std::env::var_os("TANDEM_TEST_S3_ENDPOINT").is_none() {
        println!("object-store scenarios skipped: no Python with moto (scripts/prereqs.sh --for-tests installs it)");
        return Ok(());
    }
    let s3 = S3::start().await?;
    let dir = tempfile::tempdir()?;
    let flags = s3.args(&s3.endpoint);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = Tandem::start_with(&dir.path().join("object-store"), &flags, &env, false).await?;
    let client = Client::of(&node);
    println!("object store: one node, moto S3 server at {}", s3.endpoint);

    client.query("CREATE TABLE durable (ts DateTime64(3), id UInt64, v Float64) ORDER BY (id, ts)", Vec::new()).await?;
    for (run, durability) in ["local", "object_store"].into_iter().enumerate() {
        let (p50, p99) =
            one_row_inserts(&client, "durable", ("insert_durability", durability), 20_000_000 + run * 1000).await?;
        println!(
            "one-row inserts, insert_durability={durability:<12}: p50 {p50:>6.1} ms  p99 {p99:>6.1} ms  (200 inserts)"
        );
    }
    let per_batch = args.rows / args.batches;
    let batches = args.batches.min(20);
    let started = Instant::now();
    for b in 0..batches {
        let body = tsv_batch(b * per_batch, (b + 1) * per_batch);
        client
            .query_with("INSERT INTO durable FORMAT TabSeparated", &[("insert_durability", "object_store")], body)
            .await?;
    }
    println!(
        "insert_durability=object_store bulk: {:>10.0} rows/s  ({batches} x {per_batch} rows)",
        (batches * per_batch) as f64 / started.elapsed().as_secs_f64()
    );

    // Background uploads: large parts acked locally, timed until the object store has them all.
    client.query("CREATE TABLE upload (id UInt64, payload String) ORDER BY id", Vec::new()).await?;
    let started = Instant::now();
    for trial in 0..3usize {
        let body = large_batch(trial * args.large_rows, (trial + 1) * args.large_rows);
        client.query("INSERT INTO upload FORMAT TabSeparated", body).await?;
    }
    let acked = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let uploaded = client
            .query("SELECT count() FROM system.parts WHERE \"table\" = 'upload' AND in_object_store", Vec::new())
            .await?;
        if uploaded.trim() == "3" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the uploads did not finish within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();
    let bytes: f64 = client
        .query("SELECT sum(bytes) FROM system.parts WHERE \"table\" = 'upload'", Vec::new())
        .await?
        .trim()
        .parse()
        .unwrap_or(0.0);
    println!(
        "background upload: 3 parts, {:.1} MB, inserts acked after {:.0} ms, all in the bucket after {:.0} ms \
         ({:.0} ms after the last ack; {:.0} MB/s from the first insert)",
        bytes / 1e6,
        acked.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        (total - acked).as_secs_f64() * 1e3,
        bytes / 1e6 / total.as_secs_f64()
    );
    keep_log(&node, &args.log_dir, "object-store")
}

async fn wait_for_count(client: &Client, table: &str, expected: usize, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let count = client.query(&format!("SELECT count() FROM {table}"), Vec::new()).await.unwrap_or_default();
        if count.trim() == expected.to_string() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{table} on {} still has {} rows after {timeout:?}, expected {expected}", client.base, count.trim());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The value of a counter or gauge in a node's `/metrics`.
async fn metric(client: &Client, name: &str) -> anyhow::Result<f64> {
    let text = client.http.get(format!("{}metrics", client.base)).send().await?.text().await?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Sustained small inserts with background merges on: insert rate, the active part count as
/// the inserts go on, and write amplification (bytes written by merges per byte inserted).
async fn merges(args: &BenchArgs) -> anyhow::Result<()> {
    if args.merge_inserts == 0 {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let node = Tandem::start(&dir.path().join("merges"), &[]).await?;
    let client = Arc::new(Client::of(&node));
    client.query("CREATE TABLE small (ts DateTime64(3), id UInt64, v Float64) ORDER BY (id, ts)", Vec::new()).await?;
    const WRITERS: usize = 4;
    const ROWS: usize = 100;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, done) = (client.clone(), done.clone());
            let inserts = args.merge_inserts;
            tokio::spawn(async move {
                let mut i = w;
                while i < inserts {
                    client.query("INSERT INTO small FORMAT TabSeparated", tsv_batch(i * ROWS, (i + 1) * ROWS)).await?;
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += WRITERS;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut most = 0u64;
    while done.load(std::sync::atomic::Ordering::Relaxed) < args.merge_inserts {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let parts: u64 =
            client.query("SELECT count() FROM system.parts WHERE active", Vec::new()).await?.trim().parse()?;
        most = most.max(parts);
        samples.push((started.elapsed(), done.load(std::sync::atomic::Ordering::Relaxed), parts));
    }
    for writer in writers {
        writer.await??;
    }
    let elapsed = started.elapsed();
    let rows = args.merge_inserts * ROWS;
    println!(
        "merges on: {} inserts of {ROWS} rows ({WRITERS} writers): {:>6.0} inserts/s  {:>9.0} rows/s  total {:.2} s",
        args.merge_inserts,
        args.merge_inserts as f64 / elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let step = (samples.len() / 8).max(1);
    let timeline: Vec<String> = samples
        .iter()
        .step_by(step)
        .map(|(at, inserts, parts)| format!("{:.1}s/{inserts}:{parts}", at.as_secs_f64()))
        .collect();
    println!("active parts over time (time/inserts done:parts): {}  max {most}", timeline.join("  "));
    // Settled: no merge for a second (or a minute has passed).
    let deadline = Instant::now() + Duration::from_secs(60);
    let settle_started = Instant::now();
    let mut last = (metric(&client, "tandem_merges_total").await?, Instant::now());
    let settled = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let merges = metric(&client, "tandem_merges_total").await?;
        if merges != last.0 {
            last = (merges, Instant::now());
        }
        if last.1.elapsed() >= Duration::from_secs(1) || Instant::now() > deadline {
            break client
                .query("SELECT count() FROM system.parts WHERE active", Vec::new())
                .await?
                .trim()
                .parse::<u64>()?;
        }
    };
    let settle_seconds = (last.1 - settle_started.min(last.1)).as_secs_f64();
    let inserted = metric(&client, "tandem_insert_bytes_total").await?;
    let merged = metric(&client, "tandem_merge_written_bytes_total").await?;
    println!(
        "after the inserts: {settled} active parts once merges settled ({settle_seconds:.1} s later); \
         write amplification {:.2} ({:.1} MB merged for {:.1} MB inserted, {} merges)",
        merged / inserted.max(1.0),
        merged / 1e6,
        inserted / 1e6,
        metric(&client, "tandem_merges_total").await?
    );
    let count = client.query("SELECT count() FROM small", Vec::new()).await?;
    if count.trim() != rows.to_string() {
        bail!("small holds {} rows, expected {rows}", count.trim());
    }
    keep_log(&node, &args.log_dir, "merges")
}

/// Cluster scenarios: replication lag (ack on node 1 to visible on node 2) and part fetch
/// throughput, with a real etcd and nodes talking over loopback gRPC.
async fn cluster(args: &BenchArgs) -> anyhow::Result<()> {
    let cluster = Cluster::start(args.cluster_nodes).await?;
    let clients: Vec<Client> = cluster.nodes.iter().map(Client::of).collect();
    println!("cluster: {} nodes, etcd at {}, fetches over loopback gRPC", clients.len(), cluster.etcd.endpoint);

    clients[0].query("CREATE TABLE lag (ts DateTime64(3), id UInt64, v Float64) ORDER BY (id, ts)", Vec::new()).await?;
    wait_for_table(&clients[1], "lag").await?;
    let mut lags = Vec::new();
    for trial in 0..args.lag_trials {
        let body = tsv_batch(trial * 10_000, (trial + 1) * 10_000);
        let summary: serde_json::Value =
            serde_json::from_str(&clients[0].query("INSERT INTO lag FORMAT TabSeparated", body).await?)?;
        let acked = Instant::now();
        // One read on node 2 that waits (server-side, no polling) until it holds the insert.
        let revision = summary["revision"].as_i64().unwrap_or_default().to_string();
        let count = clients[1]
            .query_with(
                "SELECT count() FROM lag",
                &[("after_revision", revision.as_str()), ("after_revision_timeout_ms", "30000")],
                Vec::new(),
            )
            .await?;
        let visible = Instant::now();
        if count.trim() != ((trial + 1) * 10_000).to_string() {
            bail!("node 2 answered {} rows after revision {revision}", count.trim());
        }
        lags.push(visible - acked);
    }
    lags.sort();
    println!(
        "replication lag (10,000-row inserts, ack on n1 -> SELECT count() on n2 shows it, {} trials): p50 {:.1} ms  p90 {:.1} ms  max {:.1} ms",
        lags.len(),
        percentile(&lags, 0.5).as_secs_f64() * 1e3,
        percentile(&lags, 0.9).as_secs_f64() * 1e3,
        lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );

    clients[0].query("CREATE TABLE large (id UInt64, payload String) ORDER BY id", Vec::new()).await?;
    wait_for_table(&clients[1], "large").await?;
    let mut rates = Vec::new();
    for trial in 0..3usize {
        let body = large_batch(trial * args.large_rows, (trial + 1) * args.large_rows);
        let summary = clients[0].query("INSERT INTO large FORMAT TabSeparated", body).await?;
        let acked = Instant::now();
        let visible =
            wait_for_count(&clients[1], "large", (trial + 1) * args.large_rows, Duration::from_secs(120)).await?;
        let summary: serde_json::Value = serde_json::from_str(&summary)?;
        let part = summary["parts"][0]["part"].as_str().unwrap_or_default().to_string();
        let bytes = clients[0]
            .query(&format!("SELECT bytes FROM system.parts WHERE name = '{part}'"), Vec::new())
            .await?
            .trim()
            .parse::<f64>()
            .unwrap_or(0.0);
        let seconds = (visible - acked).as_secs_f64();
        rates.push((bytes, seconds));
    }
    for (bytes, seconds) in &rates {
        println!(
            "part fetch: {:.1} MB part visible on n2 {:.0} ms after the ack on n1: {:.0} MB/s",
            bytes / 1e6,
            seconds * 1e3,
            bytes / 1e6 / seconds
        );
    }

    // Quorum inserts: the ack waits until a second node holds each part.
    clients[0]
        .query("CREATE TABLE quorum (ts DateTime64(3), id UInt64, v Float64) ORDER BY (id, ts)", Vec::new())
        .await?;
    wait_for_table(&clients[1], "quorum").await?;
    let per_batch = args.rows / args.batches;
    let mut latencies = Vec::new();
    let started = Instant::now();
    for b in 0..args.batches {
        let body = tsv_batch(b * per_batch, (b + 1) * per_batch);
        let t = Instant::now();
        clients[b % clients.len()]
            .query_with("INSERT INTO quorum FORMAT TabSeparated", &[("insert_quorum", "2")], body)
            .await?;
        latencies.push(t.elapsed());
    }
    let total = started.elapsed();
    latencies.sort();
    println!(
        "insert_quorum=2 on {} nodes: {:>10.0} rows/s  p50 {:>7.1} ms  p99 {:>7.1} ms  ({} x {} rows, round-robin over the nodes)",
        clients.len(),
        (per_batch * args.batches) as f64 / total.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        args.batches,
        per_batch
    );
    // Let every node finish fetching the parts above, so the next runs do not compete with it.
    let latest = clients[0].query("SELECT max(revision) FROM system.parts", Vec::new()).await?;
    for client in &clients {
        client
            .query_with(
                "SELECT 1",
                &[("after_revision", latest.trim()), ("after_revision_timeout_ms", "120000")],
                Vec::new(),
            )
            .await?;
    }
    for (run, quorum) in ["1", "2"].into_iter().enumerate() {
        let (p50, p99) =
            one_row_inserts(&clients[0], "quorum", ("insert_quorum", quorum), 10_000_000 + run * 1000).await?;
        println!("one-row inserts, insert_quorum={quorum}: p50 {p50:>6.1} ms  p99 {p99:>6.1} ms  (200 inserts)");
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        keep_log(node, &args.log_dir, &format!("cluster-n{}", i + 1))?;
    }
    Ok(())
}

async fn wait_for_table(client: &Client, table: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.query(&format!("SELECT count() FROM system.tables WHERE name = '{table}'"), Vec::new()).await?.trim()
        != "1"
    {
        if Instant::now() > deadline {
            bail!("table {table} did not reach {} within 30 s", client.base);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Rows with 200 characters of incompressible text each, to make parts of tens of MB.
fn large_batch(start: usize, end: usize) -> Vec<u8> {
    let mut out = String::with_capacity((end - start) * 220);
    for i in start..end {
        let seed = blake3::hash(&(i as u64).to_le_bytes());
        let hex = seed.to_hex();
        out.push_str(&format!("{i}\t"));
        for _ in 0..3 {
            out.push_str(hex.as_str());
        }
        out.push_str(&hex.as_str()[..8]);
        out.push('\n');
    }
    out.into_bytes()
}

fn tsv_batch(start: usize, end: usize) -> Vec<u8> {
    let mut out = String::with_capacity((end - start) * 48);
    for i in start..end {
        let (ts, id, v) = row(i);
        let time = chrono::DateTime::from_timestamp_millis(ts)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        out.push_str(&format!("{time}\t{id}\t{v}\n"));
    }
    out.into_bytes()
}
