//! Many clients sending small inserts to one node of a 2-node etcd cluster: synchronous, and
//! asynchronous with each acknowledgement (`wait_for_async_insert=1` and `=0`); optionally the
//! same workload, from the same client, against ClickHouse (`--clickhouse-url`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_tests::Cluster;
use tokio::sync::Mutex;

use crate::cpu::{CpuClock, CpuUse};
use crate::lean_http::{Connection, Target};
use crate::{BenchArgs, Client, metric, percentile, wait_for_count};

/// Rows per insert (one digit of seconds each).
const ROWS: u64 = 10;
const _: () = assert!(ROWS <= 10);

/// URL parameters of every insert of a mode.
type Settings = &'static [(&'static str, &'static str)];

/// How the small inserts are sent, as `--small-insert-modes` names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The request rate of `GET /ping`: the ceiling of every insert mode.
    Ping,
    /// `async_insert=0`: one part per insert.
    Sync,
    /// `async_insert=1, wait_for_async_insert=1`: answered once the flush is registered.
    Wait,
    /// `async_insert=1, wait_for_async_insert=0`: answered once the insert is in the log.
    Logged,
}

/// One mode's rates over the rounds: requests answered a second, the same round's ceiling
/// (`GET /ping`) when it ran, and the machine's CPU a request.
#[derive(Default)]
struct Rounds {
    rates: Vec<f64>,
    of_ceiling: Vec<f64>,
    cpu_us: Vec<f64>,
}

impl Rounds {
    fn add(&mut self, run: &Run, ceiling: Option<f64>) {
        let rate = run.rate();
        self.rates.push(rate);
        if let Some(ceiling) = ceiling.filter(|c| *c > 0.0) {
            self.of_ceiling.push(rate / ceiling);
        }
        if let Some(cpu) = &run.cpu {
            self.cpu_us.push(cpu.per_request_us());
        }
    }

    /// `min / median / max` of `values`, each written by `show`.
    fn spread(values: &[f64], show: impl Fn(f64) -> String) -> String {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        match (sorted.first(), sorted.get(sorted.len() / 2), sorted.last()) {
            (Some(&min), Some(&median), Some(&max)) => format!("{} / {} / {}", show(min), show(median), show(max)),
            _ => "-".into(),
        }
    }

    fn report(&self, mode: &str, what: &str) {
        println!(
            "small inserts tandem     {mode:<22} over {} rounds, min / median / max: {} {what}/s",
            self.rates.len(),
            Self::spread(&self.rates, |r| format!("{r:.0}")),
        );
        if !self.of_ceiling.is_empty() {
            println!("    of the round's GET /ping ceiling: {}", Self::spread(&self.of_ceiling, |r| format!("{r:.2}")));
        }
        if !self.cpu_us.is_empty() {
            println!("    machine's CPU a request: {} µs", Self::spread(&self.cpu_us, |us| format!("{us:.0}")));
        }
    }
}

/// What the clients saw over one run, and the CPU it took.
struct Run {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    cpu: Option<CpuUse>,
}

impl Run {
    /// Requests answered a second.
    fn rate(&self) -> f64 {
        if self.elapsed.is_zero() { 0.0 } else { self.latencies.len() as f64 / self.elapsed.as_secs_f64() }
    }
}

/// `connections` clients each send 10-row TSV inserts into `table` at `url`, one after the
/// other, for `duration`. Every insert's rows are distinct (ids by client and sequence).
///
/// Each client owns one keep-alive HTTP/1.1 connection (`lean_http`, the request target built
/// once): the client shares the machine's two cores with the server, and a general-purpose
/// client's per-request work is CPU the server then does not have.
async fn drive(
    url: &str,
    table: &str,
    settings: &[(&str, &str)],
    connections: usize,
    duration: Duration,
    watched: &[(&'static str, u32)],
) -> Run {
    drive_target(request_target(url, table, settings), connections, duration, watched).await
}

/// `connections` clients each send `GET /ping` on the same kind of connection, for `duration`:
/// the request rate the machine allows when the server does nothing (the client, hyper and
/// the kernel's TCP path), the ceiling of every insert mode.
async fn drive_ping(url: &str, connections: usize, duration: Duration, watched: &[(&'static str, u32)]) -> Run {
    let target = reqwest::Url::parse(url).with_context(|| format!("bad URL {url}")).and_then(|url| {
        let host = url.host_str().context("the URL has no host")?;
        let port = url.port_or_known_default().context("the URL has no port")?;
        Ok(Arc::new(Target { address: format!("{host}:{port}"), path_and_query: "/ping".into(), method: "GET" }))
    });
    drive_target(target, connections, duration, watched).await
}

/// Runs the clients; the CPU of the machine and of the `watched` processes (a name and a pid
/// each; the client is added) is counted over the run.
async fn drive_target(
    target: anyhow::Result<Arc<Target>>,
    connections: usize,
    duration: Duration,
    watched: &[(&'static str, u32)],
) -> Run {
    let target = match target {
        Ok(target) => target,
        Err(e) => {
            return Run {
                latencies: Vec::new(),
                errors: 1,
                first_error: Some(format!("{e:#}")),
                elapsed: Duration::ZERO,
                cpu: None,
            };
        }
    };
    let watched: Vec<_> = watched.iter().copied().chain([("client", std::process::id())]).collect();
    let clock = CpuClock::start(&watched);
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = Arc::new(Mutex::new((Vec::new(), 0u64, None::<String>)));
    let started = Instant::now();
    let clients: Vec<_> = (0..connections as u64)
        .map(|c| {
            let (stop, outcome, target) = (stop.clone(), outcome.clone(), target.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut errors, mut first_error) = (0u64, None);
                let mut connection = Connection::default();
                let mut sequence = 0u64;
                let mut body = Vec::new();
                let mut digits = itoa::Buffer::new();
                while !stop.load(Ordering::Relaxed) {
                    sequence += 1;
                    body.clear();
                    if target.method == "POST" {
                        // `2024-01-01 00:00:0<i>\t<id>\t<i>` for i in 0..10, without the
                        // formatting machinery: the client's CPU is the server's loss.
                        for i in 0..ROWS as u8 {
                            body.extend_from_slice(b"2024-01-01 00:00:0");
                            body.extend_from_slice(&[b'0' + i, b'\t']);
                            body.extend_from_slice(
                                digits.format((c * 1_000_000 + sequence) * ROWS + u64::from(i)).as_bytes(),
                            );
                            body.extend_from_slice(&[b'\t', b'0' + i, b'\n']);
                        }
                    }
                    let t = Instant::now();
                    match post(&mut connection, &target, &body).await {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{e:#}"));
                        }
                    }
                }
                let mut outcome = outcome.lock().await;
                outcome.0.extend(latencies);
                outcome.1 += errors;
                if outcome.2.is_none() {
                    outcome.2 = first_error;
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let elapsed = started.elapsed();
    let (mut latencies, errors, first_error) = std::mem::take(&mut *outcome.lock().await);
    // Refused requests cost CPU too: the cost is per request sent, answered or not.
    let cpu = clock.and_then(|clock| clock.stop(latencies.len() + errors as usize));
    latencies.sort();
    Run { latencies, errors, first_error, elapsed, cpu }
}

fn request_target(url: &str, table: &str, settings: &[(&str, &str)]) -> anyhow::Result<Arc<Target>> {
    let mut url = reqwest::Url::parse(url).with_context(|| format!("bad URL {url}"))?;
    url.query_pairs_mut()
        .append_pair("query", &format!("INSERT INTO {table} FORMAT TabSeparated"))
        .extend_pairs(settings);
    let host = url.host_str().context("the URL has no host")?;
    let port = url.port_or_known_default().context("the URL has no port")?;
    Ok(Arc::new(Target {
        address: format!("{host}:{port}"),
        path_and_query: format!("{}?{}", url.path(), url.query().unwrap_or_default()),
        method: "POST",
    }))
}

/// Sends one request on the client's connection and reads the whole answer; anything but a
/// success is an error naming the status and the server's message.
async fn post(connection: &mut Connection, target: &Target, body: &[u8]) -> anyhow::Result<()> {
    let answer = connection.send(target, body).await?;
    if (200..300).contains(&answer.status) {
        Ok(())
    } else {
        bail!("{}: {}", answer.status, String::from_utf8_lossy(answer.body))
    }
}

/// One line of the report: `what` names the unit of `run`'s requests (`inserts`, `requests`).
fn report(system: &str, mode: &str, what: &str, run: &Run, extra: &str) {
    let answered = run.latencies.len();
    let (p50, p99) = if answered == 0 {
        (0.0, 0.0)
    } else {
        (percentile(&run.latencies, 0.5).as_secs_f64() * 1e3, percentile(&run.latencies, 0.99).as_secs_f64() * 1e3)
    };
    println!(
        "small inserts {system:<10} {mode:<22} {:>8.0} {what}/s  p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  errors {}{extra}",
        run.rate(),
        run.errors,
    );
    if let Some(cpu) = &run.cpu {
        println!("    CPU: {cpu}");
    }
    if let Some(error) = &run.first_error {
        println!("    first error: {}", error.chars().take(300).collect::<String>());
    }
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.small_insert_seconds.max(1));
    let connections = args.small_insert_connections.max(1);
    let cluster = Cluster::start(2).await?;
    let node = Client::of(&cluster.nodes[0]);
    let watched: Vec<(&'static str, u32)> = [("node 1", &cluster.nodes[0]), ("node 2", &cluster.nodes[1])]
        .into_iter()
        .filter_map(|(name, node)| Some((name, node.pid()?)))
        .collect();
    println!(
        "small inserts: {connections} connections sending {ROWS}-row TSV inserts for {}s to node 1 of 2 (etcd)",
        duration.as_secs()
    );
    let wanted = |mode| args.small_insert_modes.is_empty() || args.small_insert_modes.contains(&mode);
    let modes: [(Mode, &str, &str, Settings); 3] = [
        (Mode::Sync, "async_insert=0", "small_sync", &[("async_insert", "0")]),
        (Mode::Wait, "async, wait=1", "small_wait", &[("async_insert", "1"), ("wait_for_async_insert", "1")]),
        (Mode::Logged, "async, wait=0", "small_logged", &[("async_insert", "1"), ("wait_for_async_insert", "0")]),
    ];
    let rounds = args.small_insert_rounds.max(1);
    let mut ceiling_rounds = Rounds::default();
    let mut mode_rounds: Vec<Rounds> = modes.iter().map(|_| Rounds::default()).collect();
    for round in 1..=rounds {
        if rounds > 1 {
            println!("small inserts: round {round} of {rounds}");
        }
        let mut ceiling = None;
        if wanted(Mode::Ping) {
            let ping = drive_ping(&node.base, connections, duration, &watched).await;
            report("tandem", "GET /ping (ceiling)", "requests", &ping, "");
            ceiling_rounds.add(&ping, None);
            ceiling = Some(ping.rate());
        }
        for ((_, mode, table, settings), collected) in
            modes.iter().zip(&mut mode_rounds).filter(|((mode, ..), _)| wanted(*mode))
        {
            let run = insert_round(&node, mode, table, settings, connections, duration, &watched).await?;
            collected.add(&run, ceiling);
        }
    }
    if rounds > 1 {
        if wanted(Mode::Ping) {
            ceiling_rounds.report("GET /ping (ceiling)", "requests");
        }
        for ((_, mode, ..), collected) in modes.iter().zip(&mode_rounds).filter(|((mode, ..), _)| wanted(*mode)) {
            collected.report(mode, "inserts");
        }
    }
    drop(cluster);
    if !args.clickhouse_url.is_empty() {
        clickhouse(&args.clickhouse_url, connections, duration).await?;
    }
    Ok(())
}

/// One run of a mode on a fresh table, reported: every acknowledged insert must be registered.
async fn insert_round(
    node: &Client,
    mode: &str,
    table: &str,
    settings: Settings,
    connections: usize,
    duration: Duration,
    watched: &[(&'static str, u32)],
) -> anyhow::Result<Run> {
    node.query(
        &format!(
            "CREATE TABLE {table} (ts DateTime, id UInt64, v Float64) ORDER BY (id, ts) PARTITION BY toYYYYMM(ts)"
        ),
        Vec::new(),
    )
    .await?;
    let parts_before = metric(node, "tandem_insert_parts_total").await?;
    let revision_before = metric(node, "tandem_catalog_applied_revision").await?;
    let run = drive(&node.base, table, settings, connections, duration, watched).await;
    let acked = run.latencies.len() * ROWS as usize;
    // Every acknowledged insert is registered (at once, or by the flushes that follow).
    let registered = wait_for_count(node, table, acked, Duration::from_secs(120))
        .await
        .with_context(|| format!("{mode}: acknowledged rows are missing"))?;
    let settled = registered.elapsed();
    let parts = metric(node, "tandem_insert_parts_total").await? - parts_before;
    let revisions = metric(node, "tandem_catalog_applied_revision").await? - revision_before;
    let seconds = run.elapsed.as_secs_f64();
    // The next run should not share the machine with this table's merges.
    node.query(&format!("DROP TABLE {table}"), Vec::new()).await?;
    report(
        "tandem",
        mode,
        "inserts",
        &run,
        &format!(
            "  parts {parts:.0}  etcd txns/s {:.0}{}",
            revisions / seconds,
            if mode.ends_with("wait=0") {
                format!("  (all registered {:.2}s later)", settled.as_secs_f64())
            } else {
                String::new()
            }
        ),
    );
    Ok(run)
}

/// The same workload against ClickHouse's HTTP interface: a `ReplicatedMergeTree` created on
/// every replica in `urls`, inserts sent to the first (ClickHouse 18.16 has no async_insert).
async fn clickhouse(urls: &[String], connections: usize, duration: Duration) -> anyhow::Result<()> {
    let clients: Vec<Client> = urls
        .iter()
        .map(|url| Client {
            http: reqwest::Client::new(),
            base: if url.ends_with('/') { url.clone() } else { format!("{url}/") },
        })
        .collect();
    let create = "CREATE TABLE small_bench (ts DateTime, id UInt64, v Float64) \
                  ENGINE = ReplicatedMergeTree('/clickhouse/tables/01/small_bench', '{replica}') \
                  PARTITION BY toYYYYMM(ts) ORDER BY (id, ts)";
    for client in &clients {
        client.statement("DROP TABLE IF EXISTS small_bench").await?;
    }
    for client in &clients {
        if let Err(e) = client.statement(create).await {
            bail!("cannot create the ClickHouse table at {} (is the anchor running?): {e}", client.base);
        }
    }
    let first = &clients[0];
    let run = drive(&first.base, "small_bench", &[], connections, duration, &[]).await;
    let parts = first.statement("SELECT count() FROM system.parts WHERE table = 'small_bench' AND active").await?;
    report("clickhouse", "sync (18.16)", "inserts", &run, &format!("  active parts after {}", parts.trim()));
    for client in &clients {
        client.statement("DROP TABLE IF EXISTS small_bench").await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Rounds;

    #[test]
    fn a_spread_is_min_median_max_whatever_the_order() {
        let show = |v: f64| format!("{v:.0}");
        assert_eq!(Rounds::spread(&[52.0, 41.0, 57.0, 49.0, 55.0], show), "41 / 52 / 57");
        assert_eq!(Rounds::spread(&[7.0], show), "7 / 7 / 7");
        assert_eq!(Rounds::spread(&[], show), "-");
    }
}
