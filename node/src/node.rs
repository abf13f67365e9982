//! A running node: its parts, its coordinator, its applied catalog, its background loops and
//! its HTTP server, started and stopped together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tandem_coordinator::{Coordinator, EmbeddedKv};
use tandem_parts::LocalPartStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::NodeConfig;
use crate::metrics::Metrics;

pub struct Node {
    pub config: NodeConfig,
    pub coordinator: Coordinator,
    pub catalog: Arc<Catalog>,
    pub metrics: Arc<Metrics>,
}

/// A started node. Dropping it does not stop it: call [`RunningNode::shutdown`].
pub struct RunningNode {
    pub node: Arc<Node>,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// How often expired insert block ids are forgotten.
const BLOCK_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Opens the data directory, catches up with the coordinator (verifying every part file it
/// has not verified yet), and starts serving HTTP.
pub async fn start(mut config: NodeConfig) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // Part files are read through an object-store URL, which needs an absolute path.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("cannot resolve data directory {}", config.data_dir.display()))?;
    let store = Arc::new(LocalPartStore::open(&config.data_dir)?);
    let kv = EmbeddedKv::open(config.data_dir.join("metadata.redb"))
        .await
        .with_context(|| "cannot open the embedded metadata store (is another tandem using this data directory?)")?;
    let coordinator = Coordinator::new(Arc::new(kv), config.cluster_prefix.clone());
    let catalog = Arc::new(Catalog::new(store));
    let metrics = Arc::new(Metrics::new());
    let node = Arc::new(Node { config: config.clone(), coordinator, catalog, metrics });
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    tasks.push(tokio::spawn(crate::sync::run(
        node.coordinator.clone(),
        node.catalog.clone(),
        node.metrics.clone(),
        shutdown.clone(),
    )));
    while !node.catalog.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tasks.push(tokio::spawn(prune_blocks(node.clone(), shutdown.clone())));

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    let http_addr = listener.local_addr()?;
    let router = crate::http::router(node.clone());
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));
    tracing::info!(%http_addr, data_dir = %config.data_dir.display(), "tandem is serving");
    Ok(RunningNode { node, http_addr, shutdown, tasks })
}

impl RunningNode {
    /// Stops accepting requests, lets in-flight ones finish, and stops the background loops.
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

/// Forgets insert block ids outside each table's dedup window.
async fn prune_blocks(node: Arc<Node>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(BLOCK_PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.cancelled() => return,
        }
        for (name, table) in node.catalog.snapshot() {
            let settings = &table.def.settings;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let keep = usize::try_from(settings.dedup_window_blocks).unwrap_or(usize::MAX);
            let window = Duration::from_secs(settings.dedup_window_seconds);
            match node.coordinator.prune_blocks(&name, keep, window, now_ms).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(table = %name, removed = n, "forgot expired insert block ids")
                }
                Err(e) => {
                    tracing::warn!(table = %name, error = %e, "cannot prune insert block ids")
                }
            }
        }
    }
}
