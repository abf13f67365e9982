//! ClickHouse 18.16 (Debian's `clickhouse-server`) as two replicas of a `ReplicatedMergeTree` on
//! one ZooKeeper, on loopback: the system the comparison scenario measures tandem against.
//! Installed with apt when it is missing and the benchmark may install packages; every process
//! is a child of the benchmark, on free ports, with its data in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_tests::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVER: &str = "/usr/sbin/clickhouse-server";
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const JAVA: &str = "/usr/bin/java";
const PACKAGES: [&str; 3] = ["clickhouse-server", "clickhouse-client", "zookeeper"];

const REPLICA_XML: &str = include_str!("../clickhouse/replica.xml");
const USERS_XML: &str = include_str!("../clickhouse/users.xml");
const ZOO_CFG: &str = include_str!("../clickhouse/zoo.cfg");

/// A running ZooKeeper and two ClickHouse replicas; stopped (killed) when dropped.
pub struct ClickHouse {
    /// HTTP URLs of the replicas, each ending in `/`.
    pub urls: [String; 2],
    /// Server version, as `SELECT version()` answers.
    pub version: String,
    replicas: Vec<Child>,
    zookeeper: Child,
    dir: tempfile::TempDir,
}

/// Why the comparison cannot run on this machine.
pub struct Unavailable(pub String);

impl ClickHouse {
    /// Installs ClickHouse and ZooKeeper if they are missing, then starts them.
    pub async fn start() -> anyhow::Result<Result<Self, Unavailable>> {
        if let Err(reason) = install() {
            return Ok(Err(reason));
        }
        let dir = tempfile::Builder::new().prefix("tandem-bench-clickhouse").tempdir()?;
        let zk_port = free_port();
        let zk_dir = dir.path().join("zk");
        std::fs::create_dir_all(zk_dir.join("data"))?;
        let zoo_cfg = zk_dir.join("zoo.cfg");
        std::fs::write(&zoo_cfg, fill(ZOO_CFG, &[("@DIR@", &path(&zk_dir)), ("@ZK_PORT@", &zk_port.to_string())]))?;
        let zookeeper = Command::new(JAVA)
            .args(["-Xmx256m", "-cp", ZOOKEEPER_JAR, "org.apache.zookeeper.server.quorum.QuorumPeerMain"])
            .arg(&zoo_cfg)
            .stdin(Stdio::null())
            .stdout(log_file(&zk_dir.join("zk.out"))?)
            .stderr(log_file(&zk_dir.join("zk.err"))?)
            .spawn()
            .context("cannot start ZooKeeper")?;
        let users = dir.path().join("users.xml");
        std::fs::write(&users, USERS_XML)?;
        let mut clickhouse = ClickHouse {
            urls: [String::new(), String::new()],
            version: String::new(),
            replicas: Vec::new(),
            zookeeper,
            dir,
        };
        wait_for_zookeeper(zk_port).await?;
        for (i, name) in ["r1", "r2"].into_iter().enumerate() {
            let replica_dir = clickhouse.dir.path().join(name);
            std::fs::create_dir_all(replica_dir.join("log"))?;
            let http_port = free_port();
            let config = replica_dir.join("config.xml");
            std::fs::write(
                &config,
                fill(
                    REPLICA_XML,
                    &[
                        ("@DIR@", &path(&replica_dir)),
                        ("@NAME@", name),
                        ("@HTTP_PORT@", &http_port.to_string()),
                        ("@TCP_PORT@", &free_port().to_string()),
                        ("@INTERSERVER_PORT@", &free_port().to_string()),
                        ("@ZK_PORT@", &zk_port.to_string()),
                        ("@USERS@", &path(&users)),
                    ],
                ),
            )?;
            let child = Command::new(SERVER)
                .arg(format!("--config-file={}", config.display()))
                .stdin(Stdio::null())
                .stdout(log_file(&replica_dir.join("log/stdout.log"))?)
                .stderr(log_file(&replica_dir.join("log/stderr.log"))?)
                .spawn()
                .with_context(|| format!("cannot start {SERVER}"))?;
            clickhouse.replicas.push(child);
            clickhouse.urls[i] = format!("http://127.0.0.1:{http_port}/");
        }
        let http = reqwest::Client::new();
        for url in &clickhouse.urls {
            wait_for_ping(&http, url).await?;
        }
        clickhouse.version = http.post(&clickhouse.urls[0]).body("SELECT version()").send().await?.text().await?;
        clickhouse.version = clickhouse.version.trim().to_string();
        Ok(Ok(clickhouse))
    }

    /// Process ids of the replicas, in `urls` order.
    pub fn pids(&self) -> Vec<u32> {
        self.replicas.iter().map(Child::id).collect()
    }

    /// Where the replicas' logs are.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        for child in self.replicas.iter_mut().chain(std::iter::once(&mut self.zookeeper)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes sure the server, ZooKeeper and a Java runtime are installed: with apt-get, as root,
/// when they are not (about a minute).
fn install() -> Result<(), Unavailable> {
    let installed = || [SERVER, ZOOKEEPER_JAR, JAVA].iter().all(|p| Path::new(p).exists());
    if installed() {
        return Ok(());
    }
    let is_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    let command = format!("apt-get install -y --no-install-recommends {}", PACKAGES.join(" "));
    if !is_root {
        return Err(Unavailable(format!("ClickHouse is not installed and the benchmark is not root; run `{command}`")));
    }
    println!("clickhouse: installing {} with apt-get (about a minute)", PACKAGES.join(", "));
    let output = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output();
    match output {
        Ok(output) if output.status.success() && installed() => Ok(()),
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            Err(Unavailable(format!(
                "`{command}` failed ({}): {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )))
        }
        Err(e) => Err(Unavailable(format!("cannot run apt-get: {e}"))),
    }
}

fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_string(), |text, (key, value)| text.replace(key, value))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn log_file(path: &PathBuf) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// ZooKeeper answers `imok` to `ruok` once it serves.
async fn wait_for_zookeeper(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
            let mut answer = String::new();
            if stream.write_all(b"ruok").await.is_ok()
                && tokio::time::timeout(Duration::from_secs(1), stream.read_to_string(&mut answer)).await.is_ok()
                && answer == "imok"
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("ZooKeeper did not answer on port {port} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_ping(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http.get(format!("{url}ping")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ClickHouse did not answer at {url} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
