//! Starting a throwaway single-member etcd (Debian's `etcd-server` binary) on free loopback
//! ports, for the integration tests and the benchmark.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_coordinator::{CoordError, EtcdKv, EtcdTls, KvBackend};

/// A running etcd member; killed (SIGKILL, the fastest clean stop for a test member) on drop.
pub struct EtcdProcess {
    child: Child,
    pub endpoint: String,
    pub log: PathBuf,
    /// How a client reaches it, when it serves TLS.
    tls: Option<EtcdTls>,
}

/// PEM files of a member serving TLS and requiring client certificates signed by `ca`.
pub struct MemberTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client identity signed by `ca`, used to check the member is ready.
    pub client: EtcdTls,
}

fn free_port() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")?.local_addr().map(|a| a.port())
}

/// The etcd binary: `$ETCD_BIN`, or `etcd` on the PATH.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join("etcd")).find(|p| p.is_file())
}

impl EtcdProcess {
    /// Starts a member with its data under `dir` and waits until it answers (up to 20 s).
    pub async fn start(dir: &Path) -> Result<Self, CoordError> {
        Self::start_with(dir, None).await
    }

    /// Like [`EtcdProcess::start`]; with `tls`, the member serves clients over TLS only.
    pub async fn start_with(dir: &Path, tls: Option<&MemberTls>) -> Result<Self, CoordError> {
        let binary = etcd_binary().ok_or_else(|| {
            CoordError::Unavailable("no `etcd` binary on the PATH (Debian: apt-get install etcd-server)".into())
        })?;
        let mut last_error = None;
        for attempt in 0..3 {
            let io = |e: std::io::Error| CoordError::Backend(format!("cannot start etcd: {e}"));
            let (client, peer) = (free_port().map_err(io)?, free_port().map_err(io)?);
            let log = dir.join(format!("etcd-{attempt}.log"));
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut command = Command::new(&binary);
            if let Some(tls) = tls {
                command
                    .arg("--cert-file")
                    .arg(&tls.cert)
                    .arg("--key-file")
                    .arg(&tls.key)
                    .arg("--trusted-ca-file")
                    .arg(&tls.ca)
                    .arg("--client-cert-auth");
            }
            let child = command
                .args(["--name", "n1", "--data-dir"])
                .arg(dir.join(format!("etcd-data-{attempt}")))
                .arg(format!("--listen-client-urls={scheme}://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls={scheme}://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!("--initial-cluster=n1=http://127.0.0.1:{peer}"))
                .args(["--logger=zap", "--log-outputs=stderr"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).map_err(io)?)
                .spawn()
                .map_err(io)?;
            let mut process = EtcdProcess {
                child,
                endpoint: format!("{scheme}://127.0.0.1:{client}"),
                log,
                tls: tls.map(|t| t.client.clone()),
            };
            match process.wait_ready(Duration::from_secs(20)).await {
                Ok(()) => return Ok(process),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("three attempts"))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), CoordError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(CoordError::Unavailable(format!("etcd exited with {status}; see {}", self.log.display())));
            }
            if let Ok(kv) = EtcdKv::connect_with(std::slice::from_ref(&self.endpoint), self.tls.as_ref()).await
                && kv.get("/").await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CoordError::Unavailable(format!(
                    "etcd not ready after {timeout:?}; see {}",
                    self.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl EtcdProcess {
    /// SIGSTOP: the member freezes (answers nothing, keeps its connections) until `resume`.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(signal).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} etcd failed");
    }

    /// SIGKILL: the member is gone at once, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
