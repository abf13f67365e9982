//! Hostile and careless requests, replayed against a node built as it ships (the release
//! build the test command makes): each is refused with a status and a message that names the
//! problem, within seconds; the node's memory stays bounded throughout; other clients are
//! served while it happens; and nothing a refused request carried is stored.
//!
//! Each input is one a review of the server found to crash it, exhaust it or corrupt it.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem_parts::arrow::array::{RecordBatch, UInt64Array};
use tandem_parts::arrow::datatypes::{DataType, Field, Schema};
use tandem_parts::parquet::arrow::ArrowWriter;
use tandem_parts::parquet::basic::{Compression, ZstdLevel};
use tandem_parts::parquet::file::properties::WriterProperties;
use tandem_tests::{Tandem, single_node};

/// Resident memory the node may reach while the inputs are replayed.
const RSS_LIMIT: u64 = 1 << 30;
/// A refusal that takes longer than this is a hang, not an answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// One request as a client sends it.
struct Request {
    what: &'static str,
    get: bool,
    params: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
}

impl Request {
    fn post(what: &'static str, query: &str, body: impl Into<Vec<u8>>) -> Self {
        Request { what, get: false, params: vec![("query", query.to_string())], headers: Vec::new(), body: body.into() }
    }

    /// The statement in the body, as clients send long statements.
    fn statement(what: &'static str, sql: impl Into<Vec<u8>>) -> Self {
        Request { what, get: false, params: Vec::new(), headers: Vec::new(), body: sql.into() }
    }

    fn get(what: &'static str, query: &str) -> Self {
        Request { what, get: true, params: vec![("query", query.to_string())], headers: Vec::new(), body: Vec::new() }
    }

    fn param(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.params.push((name, value.into()));
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// How a request ended: its status and body, or the transfer breaking off after the status.
struct Outcome {
    status: u16,
    body: String,
    aborted: bool,
}

async fn send(client: &reqwest::Client, url: &str, request: &Request) -> Outcome {
    let mut builder = if request.get { client.get(url) } else { client.post(url).body(request.body.clone()) };
    builder = builder.query(&request.params);
    for (name, value) in &request.headers {
        builder = builder.header(*name, *value);
    }
    let response = builder.send().await.unwrap_or_else(|e| {
        let error: String = e.to_string().chars().take(300).collect();
        panic!("{}: no answer: {error}", request.what)
    });
    let status = response.status().as_u16();
    match response.bytes().await {
        Ok(body) => Outcome { status, body: String::from_utf8_lossy(&body).into_owned(), aborted: false },
        Err(_) => Outcome { status, body: String::new(), aborted: true },
    }
}

/// Samples the node's resident memory until stopped; the highest sample is the answer.
fn watch_memory(node: &Tandem) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let pid = node.pid().expect("the node runs");
    let (stop_task, peak_task) = (stop.clone(), peak.clone());
    let task = tokio::spawn(async move {
        while !stop_task.load(Ordering::Relaxed) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let kib: u64 = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0);
            peak_task.fetch_max(kib * 1024, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (stop, peak, task)
}

/// A Parquet file of `rows` identical values in column `id`: kilobytes on the wire.
fn parquet_of_identical_rows(rows: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::UInt64, false)]));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(19).unwrap()))
        .set_max_row_group_row_count(Some(rows))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).unwrap();
    let chunk = 1_000_000;
    let batch = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![7u64; chunk]))]).unwrap();
    for _ in 0..rows / chunk {
        writer.write(&batch).unwrap();
    }
    writer.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn hostile_inputs_are_refused_with_bounded_memory_and_nothing_stored() {
    // The query memory pool is set for a small machine; every other limit is the default.
    let (node, _dir) = single_node(&["--max-server-memory-usage", "268435456"]).await;
    node.sql("CREATE TABLE t (id UInt64, ts DateTime, v Float64) ORDER BY id").await;
    node.sql("CREATE TABLE g (id UInt64) ORDER BY id").await;
    node.insert("t", "CSV", "1,2024-01-01 00:00:00,1.5\n").await;
    let tables_before = node.sql("SHOW TABLES").await;
    let parts_before = node.sql("SELECT name FROM system.parts ORDER BY name").await;

    let deep = format!("{{\"id\":1,\"v\":{}1{}}}\n", "[".repeat(60_000), "]".repeat(60_000));
    let mut arrow_lie = vec![0xFF, 0xFF, 0xFF, 0xFF];
    arrow_lie.extend_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
    arrow_lie.resize(72, 0);
    let parquet_bomb = parquet_of_identical_rows(50_000_000);
    assert!(parquet_bomb.len() < 1 << 20, "the Parquet body is small: {} bytes", parquet_bomb.len());
    let wide =
        format!("CREATE TABLE wide ({})", (0..100_000).map(|i| format!("c{i} Int8")).collect::<Vec<_>>().join(", "));
    let gzip_bomb = gzip(&vec![b'1'; 300 << 20]);
    assert!(gzip_bomb.len() < 1 << 20, "the gzip body is small: {} bytes", gzip_bomb.len());

    // (request, status, words the answer must contain)
    let cases: Vec<(Request, u16, Vec<&str>)> = vec![
        (Request::post("deep JSON", "INSERT INTO t FORMAT JSONEachRow", deep), 400, vec!["nested deeper than 64"]),
        (Request::post("repeat", "SELECT repeat('x', 2147483647)", ""), 400, vec!["repeat", "largest value"]),
        (Request::post("lpad", "SELECT lpad('x', 2000000000)", ""), 400, vec!["lpad", "largest value"]),
        (Request::post("Arrow header lie", "INSERT INTO t FORMAT ArrowStream", arrow_lie), 400, vec!["declares 2147483632 bytes"]),
        (Request::post("Parquet bomb", "INSERT INTO t FORMAT Parquet", parquet_bomb), 413, vec!["max_insert_rows"]),
        (Request::post("gzip bomb", "INSERT INTO t FORMAT CSV", gzip_bomb).header("content-encoding", "gzip"), 413, vec!["decompresses to more than"]),
        (Request::post("unknown encoding", "INSERT INTO t FORMAT CSV", "2,2024-01-01 00:00:00,1\n").header("content-encoding", "br"), 400, vec!["Content-Encoding `br`"]),
        (
            Request::post("cross join", "SELECT * FROM generate_series(1, 10000000) a CROSS JOIN generate_series(1, 5) b", "")
                .param("max_result_rows", "100000"),
            400,
            vec!["max_result_rows = 100000"],
        ),
        (
            Request::post("a query past its time", "SELECT sum(a.value * b.value) FROM generate_series(1, 200000) a CROSS JOIN generate_series(1, 200000) b", "")
                .param("max_execution_time", "1"),
            504,
            vec!["max_execution_time = 1 s"],
        ),
        (Request::post("memory of one query", "SELECT array_agg(value) FROM generate_series(1, 100000000)", ""), 400, vec!["max_memory_usage"]),
        (Request::statement("100,000 columns", wide), 400, vec!["max_columns = 1000"]),
        (Request::post("tuple in ORDER BY", "CREATE TABLE o (a Int64) ORDER BY (tuple(), a)", ""), 400, vec!["ORDER BY takes column names"]),
        (Request::post("nested tuple in ORDER BY", "CREATE TABLE o (a Int64) ORDER BY tuple(tuple())", ""), 400, vec!["ORDER BY takes column names"]),
        (
            Request::post("DateTime beyond 64 bits", "INSERT INTO t FORMAT JSONEachRow", "{\"id\":2,\"ts\":99999999999999999999,\"v\":1}\n"),
            400,
            vec!["`ts`", "99999999999999999999"],
        ),
        (
            Request::post("DateTime beyond year 2299", "INSERT INTO t FORMAT JSONEachRow", "{\"id\":2,\"ts\":9223372036854775807,\"v\":1}\n"),
            400,
            vec!["row 1", "`ts`", "9223372036854775807", "2299-12-31"],
        ),
        (Request::get("GET DROP TABLE", "DROP TABLE g"), 405, vec!["DROP TABLE", "POST"]),
        (Request::get("GET INSERT", "INSERT INTO g VALUES (1)"), 405, vec!["INSERT", "POST"]),
        (Request::get("GET CREATE TABLE", "CREATE TABLE h (a Int64)"), 405, vec!["CREATE TABLE"]),
        (
            Request::post("a revision from the future", "SELECT count() FROM t", "")
                .param("after_revision", "999999999")
                .param("after_revision_timeout_ms", "9223372036854775807"),
            400,
            vec!["999999999", "does not exist yet"],
        ),
        (Request::post("LIMIT beyond i64", "SELECT * FROM t LIMIT 18446744073709551615", ""), 400, vec!["18446744073709551615"]),
        (
            Request::post("a 60 KB dedup token", "INSERT INTO t FORMAT CSV", "3,2024-01-01 00:00:00,1\n")
                .param("insert_deduplication_token", "x".repeat(60_000)),
            400,
            vec!["insert_deduplication_token", "1024"],
        ),
        (Request::post("parts_to_throw_insert = 0", "ALTER TABLE t MODIFY SETTING parts_to_throw_insert = 0", ""), 400, vec!["parts_to_throw_insert"]),
        (Request::post("CREATE TABLE system", "CREATE TABLE system (a Int64)", ""), 400, vec!["reserved"]),
    ];

    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let (stop, peak, watcher) = watch_memory(&node);
    for (request, status, needles) in &cases {
        let started = Instant::now();
        // Another client is served while the hostile request runs.
        let (outcome, bystander) = tokio::join!(send(&client, &node.url, request), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            node.request("SELECT count() FROM t", &[], Vec::new()).await
        });
        let elapsed = started.elapsed();
        assert!(elapsed < ANSWER_WITHIN, "{}: answered after {elapsed:?}", request.what);
        assert_eq!(bystander.status, 200, "{}: another client was not served: {}", request.what, bystander.text());
        assert_eq!(bystander.text().trim(), "1", "{}", request.what);
        assert!(!outcome.aborted, "{}: the answer was cut off", request.what);
        assert_eq!(outcome.status, *status, "{}: {}", request.what, outcome.body);
        for needle in needles {
            assert!(outcome.body.contains(needle), "{}: expected {needle:?} in {:?}", request.what, outcome.body);
        }
        let rss = node.rss_bytes().unwrap_or(0);
        assert!(rss < RSS_LIMIT, "{}: the node holds {rss} bytes afterwards", request.what);
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak < RSS_LIMIT, "the node's memory peaked at {peak} bytes");
    assert!(peak > 0, "memory was sampled");

    // Nothing any refused request carried was stored or changed.
    assert_eq!(node.sql("SHOW TABLES").await, tables_before);
    assert_eq!(node.sql("SELECT name FROM system.parts ORDER BY name").await, parts_before);
    assert_eq!(node.count("t").await, 1);
    assert_eq!(node.count("g").await, 0);
    assert!(
        node.sql("SELECT settings FROM system.tables WHERE name = 't'").await.contains("\"parts_to_throw_insert\":")
    );
    assert_eq!(node.get("health").await.status, 200);
}

#[tokio::test]
async fn results_stream_within_bounded_memory_and_a_late_failure_is_not_a_whole_answer() {
    let (node, _dir) = single_node(&["--max-server-memory-usage", "268435456"]).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
    let (stop, peak, watcher) = watch_memory(&node);

    // Ten million rows (about 100 MB of text) reach the client while the node holds a little.
    let query = "SELECT a.value, b.value FROM generate_series(1, 2000000) a CROSS JOIN generate_series(1, 5) b";
    let response = client.post(&node.url).query(&[("query", query)]).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (mut lines, mut stream) = (0u64, response.bytes_stream());
    use futures::StreamExt;
    while let Some(chunk) = stream.next().await {
        lines += chunk.unwrap().iter().filter(|&&b| b == b'\n').count() as u64;
    }
    assert_eq!(lines, 10_000_000);

    // A limit crossed after the status was sent: the body ends with the reason, and the
    // transfer is cut so that no client takes the rows so far for the whole result.
    let request = Request::post("late limit", query, "").param("max_result_rows", "3000000");
    let outcome = send(&client, &node.url, &request).await;
    assert_eq!(outcome.status, 200);
    assert!(outcome.aborted, "the transfer is cut off");

    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak < RSS_LIMIT, "the node's memory peaked at {peak} bytes");
    assert_eq!(node.get("health").await.status, 200);
}

#[tokio::test]
async fn compressed_bodies_are_inserted() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, v Float64) ORDER BY id").await;
    let rows: String = (0..1000).map(|i| format!("{i},{}.5\n", i)).collect();
    let client = reqwest::Client::new();
    for (encoding, body) in [("gzip", gzip(rows.as_bytes())), ("zstd", zstd::encode_all(rows.as_bytes(), 3).unwrap())] {
        let answer = client
            .post(&node.url)
            .query(&[("query", "INSERT INTO t FORMAT CSV"), ("insert_deduplicate", "0")])
            .header("content-encoding", encoding)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{encoding}: {}", answer.text().await.unwrap());
    }
    assert_eq!(node.count("t").await, 2000);
    assert_eq!(node.sql("SELECT sum(id) FROM t").await.trim(), (2 * 999 * 1000 / 2).to_string());
}

#[tokio::test]
async fn credentials_and_secrets_are_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tandem.toml");
    std::fs::write(&config, "node_id = \"n1\"\ncluster_secret = hunter2-unquoted\n").unwrap();
    let check = |args: &[&str]| {
        let output = std::process::Command::new(tandem_tests::tandem_binary().unwrap())
            .args(["serve", "--check-config"])
            .args(args)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };
    let (ok, text) = check(&["--config", config.to_str().unwrap()]);
    assert!(!ok && text.contains("line 2") && !text.contains("hunter2"), "{text}");
    let (ok, text) = check(&["--etcd", "http://root:hunter2@127.0.0.1:2379", "--node-id", "n1"]);
    assert!(!ok && text.contains("credentials") && !text.contains("hunter2"), "{text}");
}

/// The bodies the fuzz targets found crashing a decoder (kept by proptest in
/// `server/proptest-regressions/fuzz.txt`, replayed there against the decoders), sent to a running
/// node in every input format: each is accepted (a mutation that still decodes) or refused with
/// a request error, never a server error; the node stays up; and the table holds exactly the
/// rows that were acknowledged.
#[tokio::test]
async fn fuzz_findings_are_answered_by_a_running_node() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/proptest-regressions/fuzz.txt");
    let findings: Vec<Vec<u8>> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once("data = [").map(|(_, rest)| rest.trim_end().trim_end_matches(']')))
        .map(|bytes| bytes.split(", ").map(|b| b.trim().parse::<u8>().unwrap()).collect())
        .collect();
    assert!(findings.len() >= 6, "the findings are read: {}", findings.len());
    let (node, _dir) = single_node(&[]).await;
    node.sql(
        "CREATE TABLE f (id UInt64, ts DateTime64(3), d Date, host String, v Float64, n Nullable(Int32), ok Bool, \
         small Int8) ORDER BY (host, ts) PARTITION BY toYYYYMM(ts)",
    )
    .await;
    let client = reqwest::Client::builder().timeout(ANSWER_WITHIN).build().unwrap();
    let mut acknowledged = 0;
    for (i, data) in findings.iter().enumerate() {
        for format in ["Parquet", "ArrowStream", "JSONEachRow", "CSVWithNames", "TSVWithNames"] {
            let request = Request::post("fuzz finding", &format!("INSERT INTO f FORMAT {format}"), data.clone())
                .param("insert_deduplicate", "0");
            let outcome = send(&client, &node.url, &request).await;
            match outcome.status {
                200 => {
                    let summary: serde_json::Value = serde_json::from_str(&outcome.body).unwrap();
                    acknowledged += summary["rows_written"].as_u64().unwrap();
                }
                400 | 413 => {}
                other => panic!("finding {i} as {format}: {other} {}", outcome.body),
            }
        }
    }
    assert_eq!(node.get("health").await.status, 200);
    assert_eq!(node.count("f").await, acknowledged, "the table holds what was acknowledged, nothing else");
}

/// The SQL surface cannot read or write the host's files: each path DataFusion offers for it
/// (external tables, `COPY ... TO`, querying a file by its path, file-reading table functions)
/// is refused with a status naming the problem, and leaves nothing behind. One request per path,
/// so a DataFusion upgrade that opens one fails here.
#[tokio::test]
async fn the_sql_surface_cannot_reach_the_hosts_files() {
    let (node, dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    node.insert("t", "CSV", "1\n2\n").await;
    const CONTENT: &str = "only-the-host-may-read-this";
    let secret_file = dir.path().join("host-file.csv");
    std::fs::write(&secret_file, format!("a,b\n{CONTENT},1\n")).unwrap();
    let written = dir.path().join("written.csv");
    let (read, write) = (secret_file.display().to_string(), written.display().to_string());
    let attempts = [
        format!("CREATE EXTERNAL TABLE e (host VARCHAR, secret VARCHAR) STORED AS CSV LOCATION '{read}'"),
        format!("CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '{}'", dir.path().display()),
        format!("COPY t TO '{write}' STORED AS CSV"),
        format!("COPY (SELECT * FROM t) TO '{write}' STORED AS CSV"),
        format!("SELECT * FROM '{read}'"),
        format!("SELECT * FROM read_csv('{read}')"),
        format!("SELECT * FROM read_parquet('{read}')"),
        format!("SELECT * FROM parquet_metadata('{read}')"),
        format!("INSERT INTO t SELECT * FROM '{read}'"),
        format!("CREATE VIEW v AS SELECT * FROM '{read}'"),
    ];
    for sql in &attempts {
        // The statement in the body, as clients send it.
        let answer = node.post_body(sql.clone()).await;
        assert!(
            matches!(answer.status, 400 | 404 | 501),
            "`{sql}` is refused (bad request, no such table, or not supported), got {}: {}",
            answer.status,
            answer.text()
        );
        assert!(!answer.text().contains(CONTENT), "`{sql}` shows nothing of the file: {}", answer.text());
        assert!(!written.exists(), "`{sql}` wrote nothing");
    }
    assert_eq!(node.sql("SHOW TABLES").await.trim(), "t", "no table or view was created");
    assert_eq!(node.count("t").await, 2, "the table is as it was");
}

/// The node's `host:port`, for clients that speak HTTP by hand.
fn address(node: &Tandem) -> String {
    node.url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// Reads from `stream` until what was read holds `needle`; None when `within` passes first.
async fn read_until(stream: &mut tokio::net::TcpStream, needle: &str, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    let reading = async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&read).contains(needle) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(within, reading).await.ok()?;
    let text = String::from_utf8_lossy(&read).into_owned();
    text.contains(needle).then_some(text)
}

/// Whether the node closes `stream` (a read ends, or fails) within `within`; anything it sends
/// first is read past.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let closing = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, closing).await.is_ok()
}

/// A ping on a raw connection, answered within `within`.
async fn ping(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    stream.write_all(b"GET /ping HTTP/1.1\r\nHost: tandem\r\n\r\n").await.ok()?;
    read_until(stream, "Ok.\n", within).await
}

/// A client that sends its request head a byte at a time (slowloris), one that keeps a
/// connection open and idle, and one that stops sending in the middle of a body: each is
/// closed or answered once its bound passes, the others are served meanwhile, and nothing of
/// the stalled insert is stored. Without the bounds each would hold its connection (and its
/// memory and file descriptor) for as long as it liked.
#[tokio::test]
async fn slow_and_idle_connections_are_closed_and_a_stalled_body_is_refused() {
    use tokio::io::AsyncWriteExt;
    let (node, _dir) = single_node(&["--keep-alive-timeout-seconds", "2", "--http-receive-timeout-seconds", "2"]).await;
    node.sql("CREATE TABLE t (id UInt64, v UInt64) ORDER BY id").await;
    let bound = Duration::from_secs(20);

    let mut idle = tokio::net::TcpStream::connect(address(&node)).await.unwrap();
    assert!(ping(&mut idle, bound).await.is_some(), "a kept-alive connection is answered");

    let mut trickling = tokio::net::TcpStream::connect(address(&node)).await.unwrap();
    let head = b"POST /?query=SELECT%201 HTTP/1.1\r\nHost: tandem\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        for byte in head {
            if trickling.write_all(&[*byte]).await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        None
    });

    let mut stalled = tokio::net::TcpStream::connect(address(&node)).await.unwrap();
    stalled
        .write_all(
            b"POST /?query=INSERT%20INTO%20t%20FORMAT%20TabSeparated HTTP/1.1\r\nHost: tandem\r\n\
              Content-Length: 100\r\n\r\n1\t1\n2\t2\n",
        )
        .await
        .unwrap();

    // Others are served while the three hold their connections.
    assert_eq!(node.sql("SELECT 1").await.trim(), "1");

    let answer = read_until(&mut stalled, "http_receive_timeout_seconds", bound).await;
    let answer = answer.expect("the stalled body is answered, naming the setting");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(closed_within(&mut idle, bound).await, "the idle connection is closed");
    let cut = tokio::time::timeout(bound, trickle).await.expect("the trickling client is cut off").unwrap();
    assert!(cut.is_some(), "the trickling client's head was refused before it was whole");
    assert_eq!(node.sql("SELECT count() FROM t").await.trim(), "0", "nothing of the stalled insert was stored");
}

/// With `max_connections` open, a further client waits (in the listen backlog) until one of
/// them closes, and is then served; the node never holds more.
#[tokio::test]
async fn connections_past_the_limit_wait_for_a_free_one() {
    let (node, _dir) = single_node(&["--max-connections", "2", "--keep-alive-timeout-seconds", "3"]).await;
    // The helper's pooled connections, idle since start-up, are closed by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let bound = Duration::from_secs(20);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(address(&node)).await.unwrap();
        assert!(ping(&mut stream, bound).await.is_some(), "a connection within the limit is served");
        held.push(stream);
    }
    let mut waiting = tokio::net::TcpStream::connect(address(&node)).await.unwrap();
    assert!(
        ping(&mut waiting, Duration::from_secs(1)).await.is_none(),
        "a third connection is not served while two are open"
    );
    // The held connections' keep-alive ends 3 s after their answers; a slot is then free.
    assert!(read_until(&mut waiting, "Ok.\n", bound).await.is_some(), "the third is served once one closes");
    let mut closed = 0;
    for stream in &mut held {
        closed += usize::from(closed_within(stream, Duration::from_secs(1)).await);
    }
    assert!(closed >= 1, "the third was served only after a held connection was closed");
}

/// A client that shuts its sending side once its request is out (as `nc` does) still gets its
/// answer: the node allows half closes. The insert waits for its flush (200 ms), long enough
/// that a node treating the early end of the client's side as the client leaving would drop the
/// request instead; and the insert is stored either way once acknowledged.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_is_answered() {
    use tokio::io::AsyncWriteExt;
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, v UInt64) ORDER BY id").await;
    let mut stream = tokio::net::TcpStream::connect(address(&node)).await.unwrap();
    let body = "1\t1\n2\t2\n";
    let request = format!(
        "POST /?query=INSERT%20INTO%20t%20FORMAT%20TabSeparated&async_insert=1&wait_for_async_insert=1 HTTP/1.1\r\n\
         Host: tandem\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let answer = read_until(&mut stream, "\r\n\r\n", Duration::from_secs(30)).await;
    let answer = answer.expect("the half-closed client gets an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(node.count("t").await, 2);
}
