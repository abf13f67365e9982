//! The failover harness, in the style of Jepsen's set workload. Writers insert blocks of rows
//! with unique ids; each block goes to one node and, after an error or a timeout, is resent
//! byte for byte to the next node until one acknowledges it. Every tenth block carries a
//! malformed row: the node must refuse it (400) and store none of its rows. A nemesis kills
//! nodes (SIGKILL) while inserts are in flight and restarts them, and proxies in front of the
//! nodes drop acknowledgements (the write landed and answered 200, the client never hears).
//!
//! Each block ends in one class: `ok` (acknowledged), `failed` (refused: the request itself
//! was wrong) or `unknown` (no answer the client could trust before the writer stopped). After
//! healing, every node is read and the checker counts what the set workload's checker counts:
//! acknowledged rows that are `lost`, rows that appear twice (`duplicated`), rows nobody wrote
//! (`unexpected`), rows of failed blocks that are there anyway (`failed_but_present`); plus
//! nodes that disagree and blocks present only in part.
//!
//! The control run sends the same workload under the same nemesis with deduplication off: it
//! must show duplicates, or the harness would prove nothing. The asynchronous variant runs the
//! same workload through the insert buffer: one writer waits for its flushes
//! (`wait_for_async_insert=1`), one is acknowledged from the log (`=0`), one waits for its
//! flushes with `insert_quorum=2`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tandem_tests::{Cluster, Tandem};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

const ROWS_PER_BLOCK: u64 = 20;
const CONVERGE: Duration = Duration::from_secs(60);

/// A TCP proxy in front of one node's HTTP port that can drop responses: it forwards the
/// request, waits for the node to start answering (so the write has landed), and then closes
/// the client's connection without passing the answer on.
struct Proxy {
    addr: String,
    /// None while the node is down: its old port may be bound by another test's node by
    /// the time it restarts, and a request forwarded there would land in another cluster.
    upstream: Arc<std::sync::Mutex<Option<String>>>,
    drops_pending: Arc<AtomicUsize>,
    drops_done: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = Arc::new(std::sync::Mutex::new(Some(hostport(upstream))));
        let (drops_pending, drops_done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let proxy = Proxy {
            addr,
            upstream: upstream.clone(),
            drops_pending: drops_pending.clone(),
            drops_done: drops_done.clone(),
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // No node: the client's connection is closed, as a refused one would be.
                let Some(target) = upstream.lock().unwrap().clone() else { continue };
                let drop_this =
                    drops_pending.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                let done = drops_done.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else { return };
                    if drop_this {
                        if forward_then_drop(client, server).await {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                    } else {
                        let (mut client, mut server) = (client, server);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        proxy
    }

    fn set_upstream(&self, url: &str) {
        *self.upstream.lock().unwrap() = Some(hostport(url));
    }

    /// Forwards nothing until `set_upstream` names the node again.
    fn cut(&self) {
        *self.upstream.lock().unwrap() = None;
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

fn hostport(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// Forwards the request, reads the node's status line (so the request was fully processed),
/// and closes the client's connection without passing the answer on. Returns true when the
/// dropped answer was an acknowledgement (200): only those count as dropped acks.
async fn forward_then_drop(client: TcpStream, server: TcpStream) -> bool {
    let (mut client_read, client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    // `HTTP/1.1 200 OK`: the status code is bytes 9..12.
    let mut status_line = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(30), server_read.read_exact(&mut status_line)).await;
    upload.abort();
    drop(client_write);
    matches!(read, Ok(Ok(_))) && status_line.get(9..12) == Some(b"200".as_slice())
}

/// How an attempted block ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// A node acknowledged it.
    Ok,
    /// A node refused it as malformed: resending cannot help, and nothing of it may be stored.
    Failed,
    /// No trustworthy answer before the writer stopped: it may or may not be stored, but
    /// never in part and never twice.
    Unknown,
}

struct Block {
    rows: BTreeSet<u64>,
    class: Class,
}

/// Every tenth block carries a malformed last line.
fn is_poisoned(block: u64) -> bool {
    block.is_multiple_of(10)
}

fn block_body(block: u64) -> String {
    let mut body: String = (0..ROWS_PER_BLOCK).map(|i| format!("{},{}\n", block * 1000 + i, block)).collect();
    if is_poisoned(block) {
        body.push_str("not-a-number,1\n");
    }
    body
}

/// How long a writer keeps resending its last block once the nemesis has stopped.
const FINISH_WITHIN: Duration = Duration::from_secs(60);

/// How the writers insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Synchronous,
    Asynchronous,
}

async fn writer(
    id: u64,
    proxies: Arc<Vec<Proxy>>,
    stop: Arc<AtomicBool>,
    deduplicate: bool,
    mode: Mode,
    blocks: Arc<Mutex<BTreeMap<u64, Block>>>,
) {
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(5)).build().unwrap();
    let mut block = id * 100_000;
    let mut target = id as usize;
    while !stop.load(Ordering::SeqCst) {
        block += 1;
        let body = block_body(block);
        let rows = (0..ROWS_PER_BLOCK).map(|i| block * 1000 + i).collect();
        blocks.lock().await.insert(block, Block { rows, class: Class::Unknown });
        // Resend the same bytes to the next node until one answers for certain.
        let mut finish_by = None;
        let class = loop {
            let proxy = &proxies[target % proxies.len()];
            let mut query = vec![("query", "INSERT INTO t FORMAT CSV".to_string())];
            if !deduplicate {
                query.push(("insert_deduplicate", "0".to_string()));
            }
            if id == 2 {
                query.push(("insert_quorum", "2".to_string()));
                query.push(("insert_quorum_timeout", "3000".to_string()));
            }
            if mode == Mode::Asynchronous {
                query.push(("async_insert", "1".to_string()));
                query.push(("wait_for_async_insert", if id == 1 { "0" } else { "1" }.to_string()));
            }
            match http.post(proxy.url()).query(&query).body(body.clone()).send().await {
                Ok(r) if r.status().is_success() => break Class::Ok,
                Ok(r) if r.status() == reqwest::StatusCode::BAD_REQUEST => break Class::Failed,
                _ => {}
            }
            if stop.load(Ordering::SeqCst) {
                let deadline = *finish_by.get_or_insert_with(|| tokio::time::Instant::now() + FINISH_WITHIN);
                if tokio::time::Instant::now() > deadline {
                    break Class::Unknown;
                }
            }
            target += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(entry) = blocks.lock().await.get_mut(&block) {
            entry.class = class;
        }
    }
}

struct Summary {
    ok: usize,
    failed: usize,
    unknown: usize,
    kills: usize,
    dropped_acks: usize,
    lost: usize,
    duplicated: usize,
    unexpected: usize,
    failed_but_present: usize,
    divergent: usize,
    partial: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} failed={} unknown={} kills={} dropped_acks={} lost={} duplicated={} unexpected={} \
             failed_but_present={} divergent={} partial_blocks={}",
            self.ok,
            self.failed,
            self.unknown,
            self.kills,
            self.dropped_acks,
            self.lost,
            self.duplicated,
            self.unexpected,
            self.failed_but_present,
            self.divergent,
            self.partial
        )
    }
}

async fn run(deduplicate: bool, mode: Mode, kills_wanted: usize, drops_wanted: usize) -> Summary {
    let mut cluster = Cluster::start(3).await.unwrap();
    cluster.nodes[0].sql("CREATE TABLE t (id UInt64, block UInt64) ORDER BY id").await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM system.tables WHERE name = 't'", "1", CONVERGE).await;
    }
    let mut proxies = Vec::new();
    for node in &cluster.nodes {
        let proxy = Proxy::start("127.0.0.1:1").await;
        proxy.set_upstream(&node.url);
        proxies.push(proxy);
    }
    let proxies = Arc::new(proxies);
    let stop = Arc::new(AtomicBool::new(false));
    let blocks = Arc::new(Mutex::new(BTreeMap::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| tokio::spawn(writer(w, proxies.clone(), stop.clone(), deduplicate, mode, blocks.clone())))
        .collect();

    // The nemesis: alternately drop responses and crash a node (one down at a time).
    let mut kills = 0;
    let mut round = 0usize;
    let drops_done = || proxies.iter().map(|p| p.drops_done.load(Ordering::SeqCst)).sum::<usize>();
    while kills < kills_wanted || drops_done() < drops_wanted {
        round += 1;
        for (i, proxy) in proxies.iter().enumerate() {
            if (round + i).is_multiple_of(2) {
                proxy.drops_pending.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if kills < kills_wanted {
            let victim = round % cluster.nodes.len();
            proxies[victim].cut();
            cluster.nodes[victim].kill();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(400)).await;
            cluster.nodes[victim].restart().await.unwrap();
            proxies[victim].set_upstream(&cluster.nodes[victim].url);
        }
        assert!(round < 500, "the nemesis could not drop {drops_wanted} acknowledgements");
    }
    stop.store(true, Ordering::SeqCst);
    for proxy in proxies.iter() {
        proxy.drops_pending.store(0, Ordering::SeqCst);
    }
    for w in writers {
        w.await.unwrap();
    }

    // Heal and read every node once it holds what etcd lists.
    for node in &mut cluster.nodes {
        node.ensure_running().await.unwrap();
    }
    // Inserts acknowledged from a node's log register with its next flushes.
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM system.asynchronous_inserts", "0", CONVERGE).await;
    }
    let revision = latest_revision(&cluster.nodes[0]).await;
    let mut per_node = Vec::new();
    for node in &cluster.nodes {
        let params = [("after_revision", revision.as_str()), ("after_revision_timeout_ms", "60000")];
        let ids = node.request("SELECT id FROM t ORDER BY id FORMAT TSV", &params, Vec::new()).await.ok().text();
        per_node.push(ids.lines().map(|l| l.parse::<u64>().unwrap()).collect::<Vec<_>>());
    }

    let blocks = blocks.lock().await;
    let reference = &per_node[0];
    let present: BTreeSet<u64> = reference.iter().copied().collect();
    let written: BTreeSet<u64> = blocks.values().flat_map(|b| b.rows.iter().copied()).collect();
    let rows_of = |class: Class| -> BTreeSet<u64> {
        blocks.values().filter(|b| b.class == class).flat_map(|b| b.rows.iter().copied()).collect()
    };
    let count = |class: Class| blocks.values().filter(|b| b.class == class).count();
    Summary {
        ok: count(Class::Ok),
        failed: count(Class::Failed),
        unknown: count(Class::Unknown),
        kills,
        dropped_acks: drops_done(),
        lost: rows_of(Class::Ok).difference(&present).count(),
        duplicated: reference.len() - present.len(),
        unexpected: present.difference(&written).count(),
        failed_but_present: rows_of(Class::Failed).intersection(&present).count(),
        divergent: per_node.iter().filter(|ids| *ids != reference).count(),
        partial: blocks
            .values()
            .filter(|block| {
                let n = block.rows.iter().filter(|r| present.contains(r)).count();
                n != 0 && n != block.rows.len()
            })
            .count(),
    }
}

async fn latest_revision(node: &Tandem) -> String {
    node.sql("SELECT coalesce(max(revision), 0) FROM system.parts").await.trim().to_string()
}

/// The checker's verdict on a run with deduplication on: nothing lost, duplicated, invented,
/// half-stored, or different between nodes, under the whole nemesis.
fn assert_exactly_once(summary: &Summary) {
    assert!(summary.kills >= 10 && summary.dropped_acks >= 20, "{summary}");
    assert!(summary.ok > 50, "the workload made progress: {summary}");
    assert!(summary.failed > 0, "malformed blocks were refused: {summary}");
    assert_eq!(
        (
            summary.lost,
            summary.duplicated,
            summary.unexpected,
            summary.failed_but_present,
            summary.divergent,
            summary.partial
        ),
        (0, 0, 0, 0, 0, 0),
        "{summary}"
    );
}

/// The checker's verdict on a control run (deduplication off): the same nemesis made
/// duplicates, and nothing else went wrong.
fn assert_control_duplicates(summary: &Summary) {
    assert!(summary.kills >= 10 && summary.dropped_acks >= 20, "the same nemesis: {summary}");
    assert!(summary.duplicated > 0, "dropped acknowledgements and resends must duplicate without dedup: {summary}");
    assert_eq!(
        (summary.lost, summary.unexpected, summary.failed_but_present, summary.divergent),
        (0, 0, 0, 0),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_loses_nothing_and_duplicates_nothing() {
    let summary = run(true, Mode::Synchronous, 10, 20).await;
    println!("failover: {summary}");
    assert_exactly_once(&summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_dedup_shows_duplicates() {
    let summary = run(false, Mode::Synchronous, 10, 20).await;
    println!("failover control (insert_deduplicate=0): {summary}");
    assert_control_duplicates(&summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_inserts_fail_over_losing_nothing_and_duplicating_nothing() {
    let summary = run(true, Mode::Asynchronous, 10, 20).await;
    println!("failover, asynchronous inserts: {summary}");
    assert_exactly_once(&summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_control_without_dedup_shows_duplicates() {
    let summary = run(false, Mode::Asynchronous, 10, 20).await;
    println!("failover control, asynchronous inserts (insert_deduplicate=0): {summary}");
    assert_control_duplicates(&summary);
}
