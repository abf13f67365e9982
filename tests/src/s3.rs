//! An S3-compatible server for the tests, and a TCP proxy that can cut it off.
//!
//! By default each test starts its own moto server (`python3 -m moto.server`, PyPI `moto[s3]`;
//! `TANDEM_TEST_PYTHON` names the interpreter, which `scripts/test.sh` points at its virtualenv)
//! on a free loopback port: moto is the S3 implementation installable here whose create-only
//! puts (`If-None-Match: *`) are atomic, which is what tandem's uploads rely on. To run the same
//! tests against MinIO or any S3 endpoint instead, set `TANDEM_TEST_S3_ENDPOINT`,
//! `TANDEM_TEST_S3_BUCKET` (must exist), `TANDEM_TEST_S3_ACCESS_KEY_ID`,
//! `TANDEM_TEST_S3_SECRET_ACCESS_KEY` and optionally `TANDEM_TEST_S3_REGION`; each test then
//! works under its own key prefix of that bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::free_port;

/// A Python that can run moto's S3 server: `TANDEM_TEST_PYTHON`, else the tests' virtualenv
/// (`scripts/prereqs.sh --for-tests` makes it), else `python3`; None when none of them has moto.
/// Probed once per process.
pub fn moto_python() -> Option<String> {
    static FOUND: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let venv = std::env::var("HOME").ok().map(|home| format!("{home}/.cache/tandem-test-venv/bin/python"));
            let named = std::env::var("TANDEM_TEST_PYTHON").ok();
            named.into_iter().chain(venv).chain(Some("python3".into())).find(|python| {
                Command::new(python)
                    .args(["-c", "import moto.server, flask_cors"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        })
        .clone()
}

/// Where the tests' objects live.
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    /// Unique to this test.
    pub prefix: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    server: Option<Child>,
}

impl S3 {
    /// The endpoint named by `TANDEM_TEST_S3_*`, or a fresh moto server.
    pub async fn start() -> anyhow::Result<Self> {
        let prefix = format!("test-{}-{}", std::process::id(), free_port());
        if let Ok(endpoint) = std::env::var("TANDEM_TEST_S3_ENDPOINT") {
            let var = |name: &str| {
                std::env::var(name).with_context(|| format!("{name} is required with TANDEM_TEST_S3_ENDPOINT"))
            };
            return Ok(S3 {
                endpoint,
                bucket: var("TANDEM_TEST_S3_BUCKET")?,
                prefix,
                region: std::env::var("TANDEM_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".to_string()),
                access_key_id: var("TANDEM_TEST_S3_ACCESS_KEY_ID")?,
                secret_access_key: var("TANDEM_TEST_S3_SECRET_ACCESS_KEY")?,
                server: None,
            });
        }
        let port = free_port();
        let python = moto_python().unwrap_or_else(|| "python3".to_string());
        let server = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("cannot start moto with {python} (pip install 'moto[s3]' flask flask-cors; scripts/prereqs.sh --for-tests does)")
            })?;
        let mut s3 = S3 {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "tandem-test".to_string(),
            prefix,
            region: "us-east-1".to_string(),
            access_key_id: "test-key".to_string(),
            secret_access_key: "test-secret".to_string(),
            server: Some(server),
        };
        // moto accepts unsigned requests: the bucket is created with a plain PUT.
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = s3.server.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("moto exited with {status}");
            }
            if let Ok(r) = http.put(format!("{}/{}", s3.endpoint, s3.bucket)).send().await
                && r.status().is_success()
            {
                return Ok(s3);
            }
            if Instant::now() > deadline {
                bail!("moto did not answer on {} within 30 s", s3.endpoint);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `tandem serve` flags for this store, reached through `endpoint` (the server or a proxy).
    pub fn args(&self, endpoint: &str) -> Vec<String> {
        [
            "--s3-endpoint",
            endpoint,
            "--s3-bucket",
            &self.bucket,
            "--s3-prefix",
            &self.prefix,
            "--s3-region",
            &self.region,
            "--s3-allow-http",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The credentials, as the environment variables a node reads them from.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TANDEM_S3_ACCESS_KEY_ID".to_string(), self.access_key_id.clone()),
            ("TANDEM_S3_SECRET_ACCESS_KEY".to_string(), self.secret_access_key.clone()),
        ]
    }
}

impl S3 {
    /// A client of the store (for the tests' own reads and writes, directly, not via a proxy).
    pub fn client(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()?;
        Ok(Arc::new(store))
    }

    /// The key of part `id` of `table`.
    pub fn key(&self, table: &str, id: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{table}/{id}.parquet", self.prefix))
    }

    /// Every object of `table`: part id (the object's name) to its bytes.
    pub async fn objects(&self, table: &str) -> anyhow::Result<BTreeMap<String, Bytes>> {
        let client = self.client()?;
        let prefix = ObjectPath::from(format!("{}/{table}", self.prefix));
        let metas: Vec<_> = client.list(Some(&prefix)).try_collect().await?;
        let mut out = BTreeMap::new();
        for meta in metas {
            let name = meta.location.filename().unwrap_or_default();
            if name.ends_with(".obao") {
                continue;
            }
            let id = name.strip_suffix(".parquet").with_context(|| format!("unexpected object {}", meta.location))?;
            // Deleted since the listing (the collector runs concurrently): not there any more.
            match client.get(&meta.location).await {
                Ok(object) => out.insert(id.to_string(), object.bytes().await?),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
        }
        Ok(out)
    }

    /// The part ids of `table` whose outboard (`<id>.obao`, for verified ranged reads) is in the bucket.
    pub async fn outboards(&self, table: &str) -> anyhow::Result<BTreeSet<String>> {
        let client = self.client()?;
        let prefix = ObjectPath::from(format!("{}/{table}", self.prefix));
        let metas: Vec<_> = client.list(Some(&prefix)).try_collect().await?;
        Ok(metas
            .iter()
            .filter_map(|meta| meta.location.filename()?.strip_suffix(".obao").map(str::to_string))
            .collect())
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// A TCP proxy on a free loopback port that forwards to `target` until it is cut: then it
/// closes every open connection and refuses new ones, as an unreachable store would look.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let target = target.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let target = Arc::new(target);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                let (target, mut cut_rx) = (target.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target.as_str()).await else { return };
                    // The cut is looked at first on every wake: once it is set, not one more byte
                    // is forwarded (an upload in flight must not slip through a cut connection).
                    tokio::select! {
                        biased;
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, cut, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts (true) or restores (false) the connection to the target.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
