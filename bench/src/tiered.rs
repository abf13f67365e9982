//! Beyond one disk, measured on one node and the same table: the dashboard query set with every
//! part on the node's disk, then with every part evicted to the bucket, cold (the node restarted
//! before each query, so no verified range, outboard or footer is cached) and warm (the same
//! query again), with the bytes each cold query read from the bucket against the table's size.
//! The bucket is moto, a Python server on this machine: cold times are a floor of what a real
//! S3 gives (which adds its own latency per request); bytes read do not depend on it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_tests::{S3, Tandem};

use crate::versus::{LOAD_ROWS, QUERIES, query_rows};
use crate::{BenchArgs, Client, keep_log, percentile};

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if tandem_tests::moto_python().is_none() && std::env::var_os("TANDEM_TEST_S3_ENDPOINT").is_none() {
        println!("tiered scenario skipped: no Python with moto (scripts/prereqs.sh --for-tests installs it)");
        return Ok(());
    }
    let s3 = S3::start().await?;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("tiered");
    let flags = s3.args(&s3.endpoint);
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let start = |extra: &'static [&'static str]| {
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        let (data_dir, env) = (data_dir.clone(), env.clone());
        async move { Tandem::start_with(&data_dir, &all, &env, false).await }
    };

    let mut node = start(&[]).await?;
    let client = Client::of(&node);
    client
        .query("CREATE TABLE q (ts DateTime, host String, id UInt64, v Float64) ORDER BY (host, ts)", Vec::new())
        .await?;
    let rows = args.tiered_rows;
    let mut from = 0;
    while from < rows {
        let to = (from + LOAD_ROWS).min(rows);
        client.query("INSERT INTO q FORMAT TabSeparated", query_rows(from, to)).await?;
        from = to;
    }
    let (parts, table_bytes) = settle(&client).await?;
    println!(
        "tiered: {rows} rows in {parts} parts, {:.1} MiB, one node, moto S3 at {} (--query-runs {})",
        table_bytes as f64 / 1048576.0,
        s3.endpoint,
        args.query_runs
    );

    let mut local = Vec::new();
    for (_, sql, _) in QUERIES {
        client.query(sql, Vec::new()).await?;
        local.push(median_ms(&client, sql, args.query_runs).await?);
    }

    // The same node with a budget of one byte: every part is evicted (all are in the bucket).
    node.kill();
    node = start(&["--local-storage-bytes", "1"]).await?;
    wait_evicted(&node).await?;
    let mut measured = Vec::new();
    for (_, sql, _) in QUERIES {
        node.restart().await?;
        let client = Client::of(&node);
        let before = node.metric("tandem_bucket_read_bytes_total").await;
        let started = Instant::now();
        client.query(sql, Vec::new()).await?;
        let cold = started.elapsed().as_secs_f64() * 1e3;
        let read = node.metric("tandem_bucket_read_bytes_total").await - before;
        let warm = median_ms(&client, sql, args.query_runs).await?;
        measured.push((cold, warm, read));
    }
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>12} {:>9}",
        "query", "local ms", "cold ms", "warm ms", "bucket MiB", "of table"
    );
    for (((name, _, _), local), (cold, warm, read)) in QUERIES.iter().zip(&local).zip(&measured) {
        println!(
            "{name:<16} {local:>9.1} {cold:>9.1} {warm:>9.1} {:>12.2} {:>8.1}%",
            read / 1048576.0,
            read / table_bytes as f64 * 100.0
        );
    }
    keep_log(&node, &args.log_dir, "tiered")?;
    Ok(())
}

/// Waits until merges are done and every active part is in the bucket: the part count and
/// the table's bytes.
async fn settle(client: &Client) -> anyhow::Result<(u64, u64)> {
    let sql = "SELECT count(), sum(bytes), sum(CASE WHEN in_object_store THEN 1 ELSE 0 END) FROM system.parts \
               WHERE \"table\" = 'q' AND active";
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = String::new();
    loop {
        let now = client.query(sql, Vec::new()).await?;
        let fields: Vec<u64> = now.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if let [parts, bytes, uploaded] = fields[..]
            && parts == uploaded
            && now == last
        {
            return Ok((parts, bytes));
        }
        if Instant::now() > deadline {
            bail!("the table did not settle (merged and uploaded) within 600 s: {now}");
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn wait_evicted(node: &Tandem) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while node.metric("tandem_local_part_bytes").await > 0.0 || node.metric("tandem_evicted_parts_total").await == 0.0 {
        if Instant::now() > deadline {
            bail!("the node did not evict its parts within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn median_ms(client: &Client, sql: &str, runs: usize) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        client.query(sql, Vec::new()).await.with_context(|| format!("`{sql}`"))?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(percentile(&times, 0.5).as_secs_f64() * 1e3)
}
