//! tandem against ClickHouse 18.16, side by side on this machine: tandem as 2 nodes on etcd,
//! ClickHouse as 2 replicas on ZooKeeper, driven by the same client, workloads interleaved, and
//! every figure given as a ratio (tandem ÷ ClickHouse) per round with its min/median/max: the
//! machine is shared and noisy, so only figures from one run compare.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_tests::{Cluster, rss_bytes};

use crate::clickhouse::ClickHouse;
use crate::{BenchArgs, Client, percentile};

/// Rows per insert of the ingest workloads (as in the issue that set the targets).
const BATCH_ROWS: usize = 10_000;
/// One-row inserts per mode and round.
const ONE_ROW_INSERTS: usize = 100;
/// Distinct values of the query table's String key.
pub(crate) const HOSTS: usize = 200;
/// Rows per insert when loading the query table.
pub(crate) const LOAD_ROWS: usize = 250_000;

/// Which of the two systems a [`System`] is: they differ only in DDL.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    ClickHouse,
    Tandem,
}

/// One system of the comparison: inserts go to `writer`, `reader` is the other replica.
struct System {
    engine: Engine,
    writer: Client,
    reader: Client,
    /// Process ids of the writer and the reader.
    pids: [u32; 2],
}

impl System {
    fn name(&self) -> &'static str {
        match self.engine {
            Engine::ClickHouse => "ClickHouse",
            Engine::Tandem => "tandem",
        }
    }

    /// Creates a replicated table: `columns` and the `ORDER BY` key, partitioned by month.
    async fn create(&self, table: &str, columns: &str, order_by: &str) -> anyhow::Result<()> {
        match self.engine {
            Engine::ClickHouse => {
                let sql = format!(
                    "CREATE TABLE {table} ({columns}) ENGINE = ReplicatedMergeTree('/clickhouse/tables/01/{table}', \
                     '{{replica}}') PARTITION BY toYYYYMM(ts) ORDER BY ({order_by})"
                );
                for client in [&self.writer, &self.reader] {
                    client.statement(&format!("DROP TABLE IF EXISTS {table}")).await?;
                    client.statement(&sql).await?;
                }
            }
            Engine::Tandem => {
                let sql = format!("CREATE TABLE {table} ({columns}) ORDER BY ({order_by}) PARTITION BY toYYYYMM(ts)");
                self.writer.statement(&sql).await?;
                let deadline = Instant::now() + Duration::from_secs(30);
                let exists = format!("SELECT count() FROM system.tables WHERE name = '{table}'");
                while self.reader.statement(&exists).await?.trim() != "1" {
                    if Instant::now() > deadline {
                        bail!("table {table} did not reach the second node within 30 s");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        Ok(())
    }

    async fn drop_table(&self, table: &str) -> anyhow::Result<()> {
        let clients: &[&Client] = match self.engine {
            Engine::ClickHouse => &[&self.writer, &self.reader],
            Engine::Tandem => &[&self.writer],
        };
        for client in clients {
            client.statement(&format!("DROP TABLE IF EXISTS {table}")).await?;
        }
        Ok(())
    }

    async fn insert(&self, table: &str, settings: &[(&str, &str)], body: Vec<u8>) -> anyhow::Result<()> {
        self.writer.query_with(&format!("INSERT INTO {table} FORMAT TabSeparated"), settings, body).await?;
        Ok(())
    }

    /// Sends `bodies` one after the other; their latencies, sorted.
    async fn timed_inserts(
        &self,
        table: &str,
        settings: &[(&str, &str)],
        bodies: Vec<Vec<u8>>,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut latencies = Vec::with_capacity(bodies.len());
        for body in bodies {
            let t = Instant::now();
            self.insert(table, settings, body).await?;
            latencies.push(t.elapsed());
        }
        latencies.sort();
        Ok(latencies)
    }

    /// Waits until `client` sees `expected` rows in `table` (a query at a time, no pause).
    async fn wait_for_rows(&self, client: &Client, table: &str, expected: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let sql = format!("SELECT count() FROM {table}");
        loop {
            let count = client.statement(&sql).await?;
            if count.trim() == expected.to_string() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {table} at {} holds {} rows after 300 s, expected {expected}",
                    self.name(),
                    client.base,
                    count.trim()
                );
            }
        }
    }

    /// Waits until the writer's active part count of `table` has not changed for 5 s and
    /// neither replica is merging or fetching (merges settled: a long merge still running
    /// would take CPU from the queries), at most two minutes; answers the count.
    async fn settle(&self, table: &str) -> anyhow::Result<String> {
        let sql = format!("SELECT count() FROM system.parts WHERE table = '{table}' AND active");
        let busy = match self.engine {
            Engine::ClickHouse => {
                "SELECT (SELECT count() FROM system.merges) + (SELECT count() FROM system.replication_queue)"
            }
            Engine::Tandem => "SELECT count() FROM system.replication_queue",
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = (String::new(), Instant::now());
        loop {
            let parts = self.writer.statement(&sql).await?.trim().to_string();
            if parts != last.0 {
                last = (parts, Instant::now());
            } else if Instant::now() > deadline {
                return Ok(last.0);
            } else if last.1.elapsed() > Duration::from_secs(5) {
                let mut idle = true;
                for client in [&self.writer, &self.reader] {
                    idle &= client.statement(busy).await?.trim() == "0";
                }
                if idle {
                    return Ok(last.0);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The median of sorted latencies, in ms.
fn p50_ms(sorted: &[Duration]) -> f64 {
    percentile(sorted, 0.5).as_secs_f64() * 1e3
}

/// `(ts DateTime, id UInt64, v Float64)` rows `start..end` as TSV, one second apart.
fn ingest_rows(start: usize, end: usize) -> Vec<u8> {
    use std::fmt::Write;
    let base = chrono::DateTime::from_timestamp(1_704_067_200, 0).unwrap_or_default(); // 2024-01-01
    let mut out = String::with_capacity((end - start) * 40);
    for i in start..end {
        let ts = base + chrono::Duration::seconds(i as i64);
        let v = ((i as u64).wrapping_mul(2_654_435_761) % 10_000) as f64 / 100.0;
        let _ = writeln!(out, "{}\t{i}\t{v}", ts.format("%Y-%m-%d %H:%M:%S"));
    }
    out.into_bytes()
}

/// `(ts DateTime, host String, id UInt64, v Float64)` rows `start..end` as TSV: `HOSTS` hosts
/// reporting every 10 s from 2024-01-01.
pub(crate) fn query_rows(start: usize, end: usize) -> Vec<u8> {
    use std::fmt::Write;
    let base = chrono::DateTime::from_timestamp(1_704_067_200, 0).unwrap_or_default();
    let mut out = String::with_capacity((end - start) * 48);
    for i in start..end {
        let ts = base + chrono::Duration::seconds((i / HOSTS) as i64 * 10);
        let spread = (i as u64).wrapping_mul(2_654_435_761);
        let _ = writeln!(
            out,
            "{}\thost-{:03}\t{}\t{}",
            ts.format("%Y-%m-%d %H:%M:%S"),
            i % HOSTS,
            spread % 1_000_000,
            (spread % 100_000) as f64 / 100.0
        );
    }
    out.into_bytes()
}

/// Highest resident memory of some processes while a workload runs, sampled every 50 ms.
struct RssPeak {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl RssPeak {
    fn start(pids: &[u32]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, pids) = (stop.clone(), pids.to_vec());
        let task = tokio::spawn(async move {
            let mut peaks = vec![0u64; pids.len()];
            while !flag.load(Ordering::Relaxed) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(rss_bytes(*pid).unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peaks
        });
        RssPeak { stop, task }
    }

    /// Peak RSS of each process, in MiB.
    async fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default().into_iter().map(|b| b as f64 / (1 << 20) as f64).collect()
    }
}

/// How a figure compares: what "better" is, and the target for tandem ÷ ClickHouse.
#[derive(Clone, Copy)]
enum Goal {
    /// Higher is better; tandem should reach at least this multiple.
    AtLeast(f64),
    /// Lower is better; tandem should stay at or under this multiple.
    AtMost(f64),
}

/// One figure measured on both systems, once per round.
struct Figure {
    name: String,
    unit: &'static str,
    goal: Goal,
    clickhouse: Vec<f64>,
    tandem: Vec<f64>,
}

impl Figure {
    fn ratios(&self) -> Vec<f64> {
        let mut ratios: Vec<f64> =
            self.tandem.iter().zip(&self.clickhouse).filter(|(_, c)| **c > 0.0).map(|(t, c)| t / c).collect();
        ratios.sort_by(f64::total_cmp);
        ratios
    }
}

/// The figures, in the order they were first recorded.
#[derive(Default)]
struct Table {
    figures: Vec<Figure>,
}

impl Table {
    fn record(&mut self, name: &str, unit: &'static str, goal: Goal, engine: Engine, value: f64) {
        let index = match self.figures.iter().position(|f| f.name == name) {
            Some(index) => index,
            None => {
                self.figures.push(Figure {
                    name: name.to_string(),
                    unit,
                    goal,
                    clickhouse: Vec::new(),
                    tandem: Vec::new(),
                });
                self.figures.len() - 1
            }
        };
        let figure = &mut self.figures[index];
        match engine {
            Engine::ClickHouse => figure.clickhouse.push(value),
            Engine::Tandem => figure.tandem.push(value),
        }
    }

    fn print(&self, title: &str) {
        println!("\n{title}: medians over the rounds; ratio = tandem / ClickHouse per round, min / median / max");
        println!(
            "{:<42} {:>14} {:>14}   {:>20}   {:<8} met",
            "figure", "ClickHouse", "tandem", "ratio min/med/max", "target"
        );
        for figure in &self.figures {
            let ratios = figure.ratios();
            if ratios.is_empty() {
                continue;
            }
            let median = |v: &[f64]| {
                let mut v = v.to_vec();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let ratio = median(&ratios);
            let (target, met) = match figure.goal {
                Goal::AtLeast(x) => (format!(">= {x}"), ratio >= x),
                Goal::AtMost(x) => (format!("<= {x}"), ratio <= x),
            };
            println!(
                "{:<42} {:>9.1} {:<4} {:>9.1} {:<4}   {:>6.2} {:>6.2} {:>6.2}   {:<8} {}",
                figure.name,
                median(&figure.clickhouse),
                figure.unit,
                median(&figure.tandem),
                figure.unit,
                ratios[0],
                ratio,
                ratios[ratios.len() - 1],
                target,
                if met { "yes" } else { "no" }
            );
        }
    }

    /// Geometric mean of the median ratios of the figures whose name starts with `prefix`.
    fn geometric_mean(&self, prefix: &str) -> Option<f64> {
        let logs: Vec<f64> = self
            .figures
            .iter()
            .filter(|f| f.name.starts_with(prefix))
            .filter_map(|f| {
                let ratios = f.ratios();
                (!ratios.is_empty()).then(|| ratios[ratios.len() / 2].ln())
            })
            .collect();
        (!logs.is_empty()).then(|| (logs.iter().sum::<f64>() / logs.len() as f64).exp())
    }
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let clickhouse = match ClickHouse::start().await? {
        Ok(clickhouse) => clickhouse,
        Err(reason) => {
            println!("ClickHouse comparison skipped: {}", reason.0);
            return Ok(());
        }
    };
    let cluster = Cluster::start(2).await?;
    let pid = |i: usize| cluster.nodes[i].pid().unwrap_or_default();
    let clickhouse_pids = clickhouse.pids();
    let systems = [
        System {
            engine: Engine::ClickHouse,
            writer: Client { http: reqwest::Client::new(), base: clickhouse.urls[0].clone() },
            reader: Client { http: reqwest::Client::new(), base: clickhouse.urls[1].clone() },
            pids: [clickhouse_pids[0], clickhouse_pids[1]],
        },
        System {
            engine: Engine::Tandem,
            writer: Client::of(&cluster.nodes[0]),
            reader: Client::of(&cluster.nodes[1]),
            pids: [pid(0), pid(1)],
        },
    ];
    println!(
        "versus ClickHouse {}: 2 replicas on ZooKeeper, against tandem as 2 nodes on etcd; {} rounds, the systems \
         alternating within each",
        clickhouse.version, args.versus_rounds
    );
    let mut table = Table::default();
    let mut rss_peaks = [0.0f64; 2];
    for round in 0..args.versus_rounds.max(1) {
        // Alternate which system goes first, so neither always runs on a warmer machine.
        let order: [&System; 2] = if round % 2 == 0 { [&systems[0], &systems[1]] } else { [&systems[1], &systems[0]] };
        for system in order {
            let peak = &mut rss_peaks[usize::from(system.engine == Engine::Tandem)];
            ingest_round(args, system, round, &mut table, peak)
                .await
                .with_context(|| format!("{} ingest, round {}", system.name(), round + 1))?;
        }
    }
    table.print("ingest and replication");
    println!("{}", insert_stages(&systems[1].writer).await?);
    println!(
        "writer RSS peak during the bulk inserts: ClickHouse {:.0} MiB, tandem {:.0} MiB (target for tandem <= 512)",
        rss_peaks[0], rss_peaks[1]
    );

    let mut queries = Table::default();
    for system in &systems {
        load_query_table(args, system).await.with_context(|| format!("{}: loading the query table", system.name()))?;
    }
    run_queries(args, &systems, &mut queries).await?;
    queries.print(&format!(
        "dashboard queries over {} rows (one node each, median of {})",
        args.versus_rows, args.query_runs
    ));
    if let Some(mean) = queries.geometric_mean("query ") {
        println!("geometric mean of the query ratios: {mean:.2} (target <= 0.5)");
    }
    for system in &systems {
        system.drop_table("q").await?;
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        crate::keep_log(node, &args.log_dir, &format!("versus-n{}", i + 1))?;
    }
    println!("ClickHouse's logs were in {} (removed with it)", clickhouse.log_dir().display());
    Ok(())
}

/// One round of the ingest workloads on one system: bulk inserts with asynchronous replication
/// and with `insert_quorum=2`, replication lag, and one-row inserts.
async fn ingest_round(
    args: &BenchArgs,
    system: &System,
    round: usize,
    table: &mut Table,
    rss_peak: &mut f64,
) -> anyhow::Result<()> {
    let engine = system.engine;
    let batches = args.batches.max(1);
    let first = round * 100_000_000;
    for (mode, settings) in [("async", &[][..]), ("insert_quorum=2", &[("insert_quorum", "2")][..])] {
        let name = format!("ingest_{}", if settings.is_empty() { "async" } else { "quorum" });
        system.create(&name, "ts DateTime, id UInt64, v Float64", "id, ts").await?;
        let bodies: Vec<Vec<u8>> =
            (0..batches).map(|b| ingest_rows(first + b * BATCH_ROWS, first + (b + 1) * BATCH_ROWS)).collect();
        let memory = RssPeak::start(&system.pids[..1]);
        let started = Instant::now();
        let latencies = system.timed_inserts(&name, settings, bodies).await?;
        let elapsed = started.elapsed();
        let peak = memory.finish().await;
        let rows = (batches * BATCH_ROWS) as f64;
        table.record(
            &format!("ingest rows/s, {mode}"),
            "k/s",
            Goal::AtLeast(2.0),
            engine,
            rows / elapsed.as_secs_f64() / 1e3,
        );
        table.record(&format!("10k-row insert p50, {mode}"), "ms", Goal::AtMost(0.5), engine, p50_ms(&latencies));
        *rss_peak = rss_peak.max(peak[0]);
        system.wait_for_rows(&system.reader, &name, batches * BATCH_ROWS).await?;

        // One-row inserts into the same table, after the bulk ones have replicated.
        let one_row =
            (0..ONE_ROW_INSERTS).map(|i| ingest_rows(first + 50_000_000 + i, first + 50_000_001 + i)).collect();
        let latencies = system.timed_inserts(&name, settings, one_row).await?;
        table.record(&format!("1-row insert p50, {mode}"), "ms", Goal::AtMost(0.5), engine, p50_ms(&latencies));
        system.drop_table(&name).await?;
    }

    // Replication lag: acknowledged by the writer, then counted on the reader until it shows.
    system.create("lag", "ts DateTime, id UInt64, v Float64", "id, ts").await?;
    let mut lags = Vec::with_capacity(args.lag_trials);
    for trial in 0..args.lag_trials.max(1) {
        let body = ingest_rows(first + trial * BATCH_ROWS, first + (trial + 1) * BATCH_ROWS);
        system.insert("lag", &[], body).await?;
        let acked = Instant::now();
        system.wait_for_rows(&system.reader, "lag", (trial + 1) * BATCH_ROWS).await?;
        lags.push(acked.elapsed());
    }
    lags.sort();
    table.record("replication lag p50 (10k rows)", "ms", Goal::AtMost(0.25), engine, p50_ms(&lags));
    system.drop_table("lag").await
}

async fn load_query_table(args: &BenchArgs, system: &System) -> anyhow::Result<()> {
    system.create("q", "ts DateTime, host String, id UInt64, v Float64", "host, ts").await?;
    let rows = args.versus_rows;
    let memory = RssPeak::start(&system.pids[..1]);
    let started = Instant::now();
    let mut start = 0;
    while start < rows {
        let end = (start + LOAD_ROWS).min(rows);
        system.insert("q", &[], query_rows(start, end)).await?;
        start = end;
    }
    let loaded = started.elapsed();
    system.wait_for_rows(&system.reader, "q", rows).await?;
    let peak = memory.finish().await;
    let parts = system.settle("q").await?;
    // Both systems name the columns so: the layout the queries read (left out if not).
    let sizes = system
        .writer
        .statement("SELECT rows, bytes FROM system.parts WHERE table = 'q' AND active ORDER BY rows DESC")
        .await
        .unwrap_or_default();
    let sizes: Vec<String> = sizes
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(rows, bytes)| format!("{rows} rows/{:.1} MB", bytes.parse::<f64>().unwrap_or(0.0) / 1e6))
        .collect();
    println!(
        "{:<10} loaded {rows} rows in {:.1} s ({:.0} k rows/s, {LOAD_ROWS}-row inserts), writer RSS peak {:.0} MiB, \
         {parts} active parts after merges settled ({})",
        system.name(),
        loaded.as_secs_f64(),
        rows as f64 / loaded.as_secs_f64() / 1e3,
        peak[0],
        sizes.join(", ")
    );
    Ok(())
}

/// Where tandem's synchronous inserts spent their time on the writer, from its
/// `tandem_insert_stage_seconds` histograms: the mean per insert of each stage.
async fn insert_stages(writer: &Client) -> anyhow::Result<String> {
    let text = writer.http.get(format!("{}metrics", writer.base)).send().await?.text().await?;
    let mut stages: Vec<(String, f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tandem_insert_stage_seconds_") else { continue };
        let Some((kind, rest)) = rest.split_once("{stage=\"") else { continue };
        let Some((stage, value)) = rest.split_once("\"} ") else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let index = match stages.iter().position(|(s, _, _)| s == stage) {
            Some(index) => index,
            None => {
                stages.push((stage.to_string(), 0.0, 0.0));
                stages.len() - 1
            }
        };
        match kind {
            "sum" => stages[index].1 = value,
            "count" => stages[index].2 = value,
            _ => {}
        }
    }
    // In the order an insert goes through them.
    const ORDER: [&str; 7] = ["decode", "live_nodes", "split", "encode", "register", "apply", "quorum"];
    stages.sort_by_key(|(stage, _, _)| ORDER.iter().position(|s| s == stage).unwrap_or(ORDER.len()));
    let means: Vec<String> = stages
        .iter()
        .filter(|(_, _, count)| *count > 0.0)
        .map(|(stage, sum, count)| format!("{stage} {:.2} ms", sum / count * 1e3))
        .collect();
    Ok(format!("tandem insert stages on the writer (mean per insert, all ingest workloads): {}", means.join(", ")))
}

/// The dashboard query set: standard SQL and the ClickHouse functions both systems know.
/// `compare` is false where ClickHouse's function is approximate (its `quantile` samples).
pub(crate) const QUERIES: [(&str, &str, bool); 9] = [
    ("count", "SELECT count() FROM q", true),
    ("avg by host", "SELECT host, avg(v) FROM q GROUP BY host ORDER BY host", true),
    ("minute buckets", "SELECT toStartOfMinute(ts) AS m, count(), avg(v) FROM q GROUP BY m ORDER BY m", true),
    ("one host", "SELECT count(), avg(v), max(v) FROM q WHERE host = 'host-042'", true),
    (
        "6 hours by host",
        "SELECT host, count(), avg(v) FROM q WHERE ts >= '2024-01-01 02:00:00' AND ts < '2024-01-01 08:00:00' \
         GROUP BY host ORDER BY host",
        true,
    ),
    ("top 10 by value", "SELECT host, ts, v FROM q ORDER BY v DESC, host, ts LIMIT 10", true),
    ("count distinct", "SELECT count(DISTINCT id) FROM q", true),
    (
        "3 hosts by hour",
        "SELECT host, toStartOfHour(ts) AS h, avg(v) FROM q WHERE host IN ('host-001', 'host-002', 'host-003') \
         GROUP BY host, h ORDER BY host, h",
        true,
    ),
    ("p90 by host", "SELECT host, quantile(0.9)(v) FROM q GROUP BY host ORDER BY host", false),
];

async fn run_queries(args: &BenchArgs, systems: &[System; 2], table: &mut Table) -> anyhow::Result<()> {
    let pids: Vec<u32> = systems.iter().map(|s| s.pids[0]).collect();
    let memory = RssPeak::start(&pids);
    for (name, sql, compare) in QUERIES {
        let mut answers = HashMap::new();
        // One untimed run each (caches), then the timed runs alternate between the systems.
        for system in systems {
            answers.insert(system.name(), system.writer.statement(sql).await?);
        }
        for _ in 0..args.query_runs.max(1) {
            for system in systems {
                let t = Instant::now();
                system.writer.statement(sql).await?;
                table.record(
                    &format!("query {name}"),
                    "ms",
                    Goal::AtMost(1.0),
                    system.engine,
                    t.elapsed().as_secs_f64() * 1e3,
                );
            }
        }
        if compare && let Some(difference) = first_difference(&answers["ClickHouse"], &answers["tandem"]) {
            println!("query {name}: the answers differ: {difference}");
        }
    }
    let peaks = memory.finish().await;
    println!("RSS peak during the queries: ClickHouse {:.0} MiB, tandem {:.0} MiB", peaks[0], peaks[1]);
    Ok(())
}

/// Where two TSV answers differ, numbers compared to 9 significant digits (the systems sum
/// floats in different orders); None when they agree.
fn first_difference(clickhouse: &str, tandem: &str) -> Option<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (clickhouse.lines().collect(), tandem.lines().collect());
    if a.len() != b.len() {
        return Some(format!("ClickHouse answered {} lines, tandem {}", a.len(), b.len()));
    }
    for (line_a, line_b) in a.iter().zip(&b) {
        let (fields_a, fields_b): (Vec<&str>, Vec<&str>) = (line_a.split('\t').collect(), line_b.split('\t').collect());
        let same = fields_a.len() == fields_b.len()
            && fields_a.iter().zip(&fields_b).all(|(x, y)| match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                _ => x == y,
            });
        if !same {
            return Some(format!("ClickHouse `{line_a}`, tandem `{line_b}`"));
        }
    }
    None
}
