//! `tandem bench`: starts a fresh node in a temporary directory and measures what users feel:
//! insert throughput and latency over HTTP per format, and query latency.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::config::NodeConfig;

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
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn query(&self, sql: &str, body: Vec<u8>) -> anyhow::Result<String> {
        let response = self.http.post(&self.base).query(&[("query", sql)]).body(body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("`{sql}` failed with {status}: {text}");
        }
        Ok(text)
    }
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
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let node = crate::start(NodeConfig::for_dir(dir.path())).await?;
    let client = Client { http: reqwest::Client::new(), base: format!("http://{}/", node.http_addr) };
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
    node.shutdown().await;
    Ok(())
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
