//! The harness of tandem's integration tests and of its benchmark (`tandem-bench`): real
//! `tandem` processes on free loopback ports and temporary data directories, driven over HTTP,
//! with a real etcd ([`Etcd`], [`Cluster`]) and an S3-compatible server ([`S3`]).
//!
//! The `tandem` binary is the path in `TANDEM_BIN` (`scripts/run.sh bench` sets it to the
//! profile-guided `dist` build), or else the one built next to the test or benchmark executable,
//! in the same profile (`scripts/test.sh` builds it with `--release`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod etcd_process;
pub mod s3;

pub use etcd_process::etcd_binary;
pub use s3::{Proxy, S3, moto_python};

/// Path of the `tandem` binary under test.
pub fn tandem_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TANDEM_BIN") {
        return Ok(PathBuf::from(path));
    }
    // A test executable lives in <target>/<profile>/deps/, the benchmark's in <target>/<profile>/;
    // the binary in <target>/<profile>/.
    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().context("unexpected executable location")?;
    let binary = [exe_dir, exe_dir.parent().unwrap_or(exe_dir)]
        .iter()
        .map(|dir| dir.join("tandem"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| exe_dir.join("tandem"));
    if !binary.exists() {
        bail!(
            "{} does not exist: build it in the same profile first (`cargo build --release --bin tandem`, \
             as scripts/test.sh does), or set TANDEM_BIN to a build of it (scripts/run.sh bench sets the \
             one scripts/pgo.sh builds)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A free TCP port on loopback (released before returning, so a start can race with another
/// process; [`Tandem::start`] retries on a bind failure).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// Resident memory of a process in bytes (Linux), None when it is not running.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One `tandem serve` process.
pub struct Tandem {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub url: String,
    pub log: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    /// Cluster nodes get a fresh `--grpc-addr` port at every start.
    grpc: bool,
    pub grpc_addr: String,
    http: reqwest::Client,
    /// User and password every request of the helpers signs in with (none: anonymous).
    credentials: Option<(String, String)>,
}

/// An HTTP answer: status, headers and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Self {
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.bytes().await.expect("a body").to_vec(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }

    /// Panics with the body unless the status is 200.
    pub fn ok(self) -> Self {
        assert_eq!(self.status, 200, "expected 200, got {}: {}", self.status, self.text());
        self
    }
}

impl Tandem {
    /// Starts a node on `data_dir` and waits until it is ready.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(data_dir, extra_args, &[], false).await
    }

    /// Starts a node with extra environment variables; `grpc` gives it an interserver port.
    pub async fn start_with(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
        grpc: bool,
    ) -> anyhow::Result<Self> {
        let mut node = Tandem::new(data_dir, extra_args, env, grpc)?;
        node.restart().await?;
        Ok(node)
    }

    fn new(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)], grpc: bool) -> anyhow::Result<Self> {
        Ok(Tandem {
            child: None,
            data_dir: data_dir.to_path_buf(),
            url: String::new(),
            log: data_dir.with_extension("log"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            grpc,
            grpc_addr: String::new(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            credentials: None,
        })
    }

    /// Starts the process again on the same data directory (a new port).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port();
            let mut grpc_args = Vec::new();
            if self.grpc {
                self.grpc_addr = format!("127.0.0.1:{}", free_port());
                grpc_args = vec!["--grpc-addr".to_string(), self.grpc_addr.clone()];
            }
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
            // The data directory is given relative to the working directory, as with the
            // default `./tandem-data`.
            let (parent, name) = match (self.data_dir.parent(), self.data_dir.file_name()) {
                (Some(parent), Some(name)) => (parent, name),
                _ => bail!("data directory {} needs a parent", self.data_dir.display()),
            };
            let child = Command::new(tandem_binary()?)
                .current_dir(parent)
                .arg("serve")
                .arg("--http-addr")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(name)
                .args(&self.extra_args)
                .args(&grpc_args)
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("TANDEM_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("cannot start tandem")?;
            self.child = Some(child);
            self.url = format!("http://127.0.0.1:{port}/");
            match self.wait_ready(Duration::from_secs(60)).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last_error = Some(e);
                    self.kill();
                }
            }
        }
        Err(last_error.expect("three attempts"))
            .with_context(|| format!("tandem did not start; log: {}", self.log_text()))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("tandem exited with {status}");
            }
            if let Ok(r) = self.http.get(format!("{}ready", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets an environment variable of the next start (a rollout of new settings, say).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.remove_env(key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Removes an environment variable from the next start.
    pub fn remove_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Starts the process again unless it is running.
    pub async fn ensure_running(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() { self.restart().await } else { Ok(()) }
    }

    /// Waits until `sql` answers `expected` (trimmed), polling; panics with the last answer.
    pub async fn wait_for(&self, sql: &str, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.request(sql, &[], Vec::new()).await;
            if answer.status == 200 && answer.text().trim() == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql} on {} still answers {:?} ({}) after {timeout:?}",
                self.url,
                answer.text(),
                answer.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP: the process freezes (no requests answered, no lease renewed) until `resume`.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("kill runs");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// SIGKILL: no shutdown path runs, as in a crash or power loss.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id of the running node.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the running node in bytes (Linux), None when it is not running.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid()?)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Makes every later request of the helpers sign in as `user` (HTTP basic auth).
    pub fn sign_in(&mut self, user: &str, password: &str) {
        self.credentials = Some((user.to_string(), password.to_string()));
    }

    fn signed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    /// Sends `sql` in `?query=` with extra URL parameters and a body.
    pub async fn request(&self, sql: &str, params: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Answer {
        let mut query: Vec<(&str, &str)> = vec![("query", sql)];
        query.extend_from_slice(params);
        let response =
            self.signed(self.http.post(&self.url)).query(&query).body(body).send().await.expect("tandem answers");
        Answer::read(response).await
    }

    /// Sends `sql` signed in as `user` with `password` (HTTP basic auth).
    pub async fn request_as(&self, user: &str, password: &str, sql: &str) -> Answer {
        let response = self
            .http
            .post(&self.url)
            .basic_auth(user, Some(password))
            .query(&[("query", sql)])
            .send()
            .await
            .expect("tandem answers");
        Answer::read(response).await
    }

    /// Sends `sql` with whatever `build` adds to the request (headers, parameters), and no
    /// credentials of the helpers.
    pub async fn request_with(
        &self,
        sql: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Answer {
        let response = build(self.http.post(&self.url).query(&[("query", sql)])).send().await.expect("tandem answers");
        Answer::read(response).await
    }

    /// Runs a statement that must succeed; returns the body as text.
    pub async fn sql(&self, sql: &str) -> String {
        self.request(sql, &[], Vec::new()).await.ok().text()
    }

    /// Inserts `body` in `format`, expecting success; returns the insert summary.
    pub async fn insert(&self, table: &str, format: &str, body: impl Into<reqwest::Body>) -> serde_json::Value {
        self.request(&format!("INSERT INTO {table} FORMAT {format}"), &[], body).await.ok().json()
    }

    pub async fn count(&self, table: &str) -> u64 {
        let text = self.sql(&format!("SELECT count() FROM {table}")).await;
        text.trim().parse().unwrap_or_else(|_| panic!("count() answered {text:?}"))
    }

    /// Sends a raw request body with no `?query=` (the statement leads the body).
    pub async fn post_body(&self, body: impl Into<reqwest::Body>) -> Answer {
        let response = self.signed(self.http.post(&self.url)).body(body).send().await.expect("tandem answers");
        Answer::read(response).await
    }

    /// The value of a Prometheus metric on `/metrics` (0 when it is not there).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("metrics").await.ok().text();
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map(|value| value.trim().parse().unwrap_or_else(|_| panic!("{name} is not a number: {value}")))
            .unwrap_or(0.0)
    }

    /// `POST` to `path` with an empty body.
    pub async fn post(&self, path: &str) -> Answer {
        let response = self.signed(self.http.post(format!("{}{path}", self.url))).send().await.expect("tandem answers");
        Answer::read(response).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.expect("tandem answers");
        Answer::read(response).await
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real etcd member (Debian's `etcd-server`) on free loopback ports and a temporary data
/// directory; killed when dropped.
pub struct Etcd {
    process: crate::etcd_process::EtcdProcess,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let process = crate::etcd_process::EtcdProcess::start(dir.path())
            .await
            .context("cannot start etcd (install Debian's etcd-server; scripts/test.sh does)")?;
        let endpoint = process.endpoint.clone();
        Ok(Etcd { process, endpoint, _dir: dir })
    }

    /// A member that serves clients over TLS only and requires client certificates, with the
    /// certificates made by `openssl` under a temporary directory.
    pub async fn start_tls() -> anyhow::Result<(Self, TlsFiles)> {
        let dir = tempfile::tempdir()?;
        let files = TlsFiles::create(dir.path())?;
        let member = crate::etcd_process::MemberTls {
            ca: files.ca.clone(),
            cert: files.server_cert.clone(),
            key: files.server_key.clone(),
            client: tandem_coordinator::EtcdTls {
                ca_pem: std::fs::read(&files.ca)?,
                client_identity: Some((std::fs::read(&files.client_cert)?, std::fs::read(&files.client_key)?)),
            },
        };
        let process = crate::etcd_process::EtcdProcess::start_with(dir.path(), Some(&member))
            .await
            .context("cannot start etcd with TLS")?;
        let endpoint = process.endpoint.clone();
        Ok((Etcd { process, endpoint, _dir: dir }, files))
    }

    /// Kills the member (SIGKILL).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Freezes the member (SIGSTOP), as a coordinator that stops answering.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Lets a paused member go on (SIGCONT).
    pub fn resume(&self) {
        self.process.resume();
    }
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A new CA and its certificates, under `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let output = Command::new("openssl").args(args).current_dir(dir).output().context("cannot run openssl")?;
            if !output.status.success() {
                bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=tandem test CA"],
            ]
            .concat(),
        )?;
        for (name, usage) in [("server", "serverAuth,clientAuth"), ("client", "clientAuth")] {
            let (key, csr, crt, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            std::fs::write(
                dir.join(&ext),
                format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"),
            )?;
            openssl(
                &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN=tandem test {name}")]]
                    .concat(),
            )?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ])?;
        }
        Ok(TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        })
    }
}

/// A cluster: one etcd and `n` tandem nodes (`n1`, `n2`, ...) sharing a cluster name and secret.
pub struct Cluster {
    pub etcd: Etcd,
    pub nodes: Vec<Tandem>,
    pub name: String,
    pub secret: String,
    /// Flags and environment every node of this cluster gets.
    common_args: Vec<String>,
    common_env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_with(n, Vec::new(), Vec::new()).await
    }

    /// A cluster whose nodes all get `args` and `env` besides the cluster's own.
    pub async fn start_with(n: usize, args: Vec<String>, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let etcd = Etcd::start().await?;
        let dir = tempfile::tempdir()?;
        let name = format!("test-{}", free_port());
        let secret = format!("secret-{}", free_port());
        let mut cluster =
            Cluster { etcd, nodes: Vec::new(), name, secret, common_args: args, common_env: env, _dir: dir };
        for i in 1..=n {
            let node = cluster.extra_node_with(i, true, &[])?;
            cluster.nodes.push(node);
        }
        for node in &mut cluster.nodes {
            node.restart().await?;
        }
        Ok(cluster)
    }

    /// A node of this cluster that is not started yet (`n<i>`), with or without the secret.
    pub fn extra_node(&self, i: usize, with_secret: bool) -> anyhow::Result<Tandem> {
        self.extra_node_with(i, with_secret, &[])
    }

    /// Like [`Cluster::extra_node`], with flags of its own.
    pub fn extra_node_with(&self, i: usize, with_secret: bool, extra_args: &[&str]) -> anyhow::Result<Tandem> {
        self.node_via(i, &self.etcd.endpoint, with_secret, extra_args)
    }

    /// A node of this cluster (not started yet) that reaches etcd at `etcd_endpoint` (a proxy
    /// that can cut it off, say).
    pub fn node_via(
        &self,
        i: usize,
        etcd_endpoint: &str,
        with_secret: bool,
        extra_args: &[&str],
    ) -> anyhow::Result<Tandem> {
        let mut args: Vec<&str> = self.common_args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra_args);
        self.node_with_flags(i, etcd_endpoint, with_secret, &args)
    }

    /// A node of this cluster (not started yet) with `args` instead of the flags every node of
    /// the cluster gets (a node configured unlike its peers, say).
    pub fn node_with_own_flags(&self, i: usize, with_secret: bool, args: &[&str]) -> anyhow::Result<Tandem> {
        self.node_with_flags(i, &self.etcd.endpoint, with_secret, args)
    }

    fn node_with_flags(
        &self,
        i: usize,
        etcd_endpoint: &str,
        with_secret: bool,
        flags: &[&str],
    ) -> anyhow::Result<Tandem> {
        let secret = if with_secret { self.secret.as_str() } else { "" };
        let node_id = format!("n{i}");
        let mut args = vec!["--etcd", etcd_endpoint, "--node-id", node_id.as_str(), "--cluster", &self.name];
        args.extend_from_slice(flags);
        let mut env = vec![("TANDEM_CLUSTER_SECRET", secret)];
        env.extend(self.common_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Tandem::new(&self._dir.path().join(&node_id), &args, &env, true)
    }

    /// The node `n<i>` (1-based).
    pub fn n(&mut self, i: usize) -> &mut Tandem {
        &mut self.nodes[i - 1]
    }

    /// The key prefix of this cluster in etcd.
    pub fn prefix(&self) -> String {
        format!("/tandem/{}/", self.name)
    }
}

/// A node on a fresh temporary directory; the directory lives as long as the returned guard.
pub async fn single_node(extra_args: &[&str]) -> (Tandem, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = Tandem::start(&dir.path().join("data"), extra_args).await.expect("tandem starts");
    (node, dir)
}
