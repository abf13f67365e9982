//! A running node: its parts, its coordinator, its applied catalog, its background loops and
//! its HTTP (and, in a cluster, gRPC) servers, started and stopped together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tandem_coordinator::{Coordinator, EmbeddedKv, EtcdKv, KvBackend};
use tandem_parts::LocalPartStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bucket::Bucket;
use crate::catalog::{Catalog, FetchRequest};
use crate::config::{CoordinatorConfig, NodeConfig};
use crate::metrics::Metrics;
use crate::mirror::Mirror;

pub struct Node {
    pub config: NodeConfig,
    pub coordinator: Coordinator,
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<Metrics>,
    pub mirror: Arc<Mirror>,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// In a cluster: this node holds a lease and is listed among the live nodes.
    pub announced: std::sync::atomic::AtomicBool,
    /// In a cluster: this node's membership lease (0 while it has none).
    pub lease: std::sync::atomic::AtomicI64,
    /// The object-store mirror of parts, when configured.
    pub bucket: Option<Arc<Bucket>>,
    pub merges: crate::merges::Merges,
    /// Set by `/drain`: `/ready` answers 503 so that no new work is routed here.
    pub draining: std::sync::atomic::AtomicBool,
    /// What queries may use: the memory pool, the spill directory, the slots.
    pub queries: crate::execution::QueryRuntime,
    fetch_requests: mpsc::UnboundedSender<FetchRequest>,
}

impl Node {
    /// Ready to serve: caught up with the metadata, and (in a cluster) announced, so that peers
    /// count it for quorums and can fetch from it.
    pub fn is_ready(&self) -> bool {
        self.catalog.is_ready()
            && (!self.config.is_cluster() || self.announced.load(std::sync::atomic::Ordering::Acquire))
    }
}

impl Node {
    /// Sends requests back to the fetcher (retries).
    pub fn catalog_fetch_sender(&self) -> mpsc::UnboundedSender<FetchRequest> {
        self.fetch_requests.clone()
    }
}

/// A started node. Dropping it does not stop it: call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub node: Arc<Node>,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens the data directory and the coordinator, binds the servers and starts every loop.
/// Returns at once; the node answers 503 until it has caught up (see [`RunningNode::wait_ready`]).
pub async fn start(mut config: NodeConfig) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // Part files are read through an object-store URL, which needs an absolute path.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("cannot resolve data directory {}", config.data_dir.display()))?;
    let store = Arc::new(LocalPartStore::open(&config.data_dir)?);
    let kv: Arc<dyn KvBackend> = match &config.coordinator {
        CoordinatorConfig::Embedded => Arc::new(
            EmbeddedKv::open(config.data_dir.join("metadata.redb"))
                .await
                .context("cannot open the embedded metadata store (is another tandem using this data directory?)")?,
        ),
        CoordinatorConfig::Etcd { endpoints, tls } => Arc::new(EtcdKv::connect_with(endpoints, tls.as_ref()).await?),
    };
    let mirror = Mirror::open(&config.data_dir.join("catalog.redb"))
        .context("cannot open the local catalog (is another tandem using this data directory?)")?;

    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    let grpc_listener = if config.is_cluster() {
        let listener = tokio::net::TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {} (gRPC)", config.grpc_addr))?;
        Some(listener)
    } else {
        None
    };
    let grpc_addr = grpc_listener.as_ref().map(|l| l.local_addr()).transpose()?.unwrap_or(config.grpc_addr);
    if config.is_cluster() && config.cluster_secret.is_none() {
        tracing::warn!(
            "no cluster secret is configured: any process that reaches {grpc_addr} can read this node's parts; \
             set TANDEM_CLUSTER_SECRET, cluster_secret_file or cluster_secret"
        );
    }

    let bucket = match &config.object_store {
        Some(settings) => {
            let bucket = Bucket::new(settings.clone()).context("invalid object store configuration")?;
            tracing::info!(store = %bucket.mirror.description(), "parts are mirrored to the object store");
            Some(Arc::new(bucket))
        }
        None => None,
    };
    let (fetch_requests, fetch_queue) = mpsc::unbounded_channel();
    let catalog = Arc::new(Catalog::new(store));
    if config.is_cluster() {
        catalog.set_fetcher(fetch_requests.clone());
    }
    let coordinator = Coordinator::new(kv, config.cluster_prefix.clone());
    let node = Arc::new(Node {
        config: config.clone(),
        coordinator,
        catalog,
        metrics: Arc::new(Metrics::new()),
        mirror,
        http_addr,
        grpc_addr,
        announced: std::sync::atomic::AtomicBool::new(false),
        lease: std::sync::atomic::AtomicI64::new(0),
        bucket: bucket.clone(),
        merges: crate::merges::Merges::new(config.merge_concurrency),
        draining: std::sync::atomic::AtomicBool::new(false),
        queries: crate::execution::QueryRuntime::new(&config.limits, &config.data_dir.join("spill"))?,
        fetch_requests,
    });
    let shutdown = CancellationToken::new();
    let mut tasks = vec![
        tokio::spawn(crate::sync::run(node.clone(), shutdown.clone())),
        tokio::spawn(prune_blocks(node.clone(), shutdown.clone())),
        tokio::spawn(crate::merges::run(node.clone(), shutdown.clone())),
        tokio::spawn(crate::merges::run_orphan_sweep(node.clone(), shutdown.clone())),
    ];
    if let Some(bucket) = bucket {
        tasks.push(tokio::spawn(crate::bucket::run_uploader(node.clone(), bucket.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(crate::bucket::run_gc(node.clone(), bucket.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(crate::bucket::run_bootstrap(node.clone(), bucket, shutdown.clone())));
    }
    if let Some(listener) = grpc_listener {
        tasks.push(tokio::spawn(crate::fetch::run(node.clone(), fetch_queue, shutdown.clone())));
        tasks.push(tokio::spawn(crate::membership::run(node.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(crate::interserver::serve(node.clone(), listener, shutdown.clone())));
    }
    let router = crate::http::router(node.clone());
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(http_listener, router).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));
    tracing::info!(%http_addr, node = %config.node_id, cluster = config.is_cluster(), data_dir = %config.data_dir.display(), "tandem is serving");
    Ok(RunningNode { node, http_addr, shutdown, tasks })
}

impl RunningNode {
    /// Waits until the node is ready (see [`Node::is_ready`]). False on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.node.is_ready() {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops accepting requests, lets in-flight ones finish, and stops the background loops
    /// (a cluster node withdraws its membership).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Runs until Ctrl-C or SIGTERM, then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Forgets insert block ids beyond each table's dedup window (the time window is also
/// checked when a block is admitted, so an old id never deduplicates even before this runs).
async fn prune_blocks(node: Arc<Node>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(node.config.dedup_prune_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.cancelled() => return,
        }
        for (name, table) in node.catalog.snapshot() {
            match node.coordinator.prune_blocks(&name, table.def.settings.dedup_window_blocks).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(table = %name, removed = n, "forgot insert block ids beyond the count window"),
                Err(e) => tracing::warn!(table = %name, error = %e, "cannot prune insert block ids"),
            }
        }
    }
}
