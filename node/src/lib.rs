//! tandem-node is the `tandem` binary's library: layered configuration ([`config`]), starting
//! and stopping a node (a [`tandem_replica::Replica`], its users' [`tandem_access`] control and
//! the [`tandem_server`] HTTP API in front of them, with the first user created at start), and
//! the client side of `tandem drain` ([`drain`]).

pub mod config;
pub mod drain;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tandem_replica::{Replica, RunningReplica};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{NodeConfig, ServeArgs};

/// A started node. Dropping it does not stop it: call [`RunningNode::shutdown`].
pub struct RunningNode {
    replica: RunningReplica,
    http_addr: SocketAddr,
    /// Stops the HTTP API and the watch of users.
    stop_front_door: CancellationToken,
    http: JoinHandle<()>,
    users: JoinHandle<()>,
}

/// Binds the HTTP (and, in a cluster, gRPC) listeners, opens the replica and starts its loops
/// and the HTTP API. Returns at once; the node answers 503 until it has caught up (see
/// [`RunningNode::wait_ready`]).
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    let grpc_listener = if config.is_cluster() {
        let addr = config.replica.settings.grpc_addr;
        Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (gRPC)"))?)
    } else {
        None
    };
    let (node_id, cluster) = (config.replica.node_id.clone(), config.is_cluster());
    let first_user = users::FirstUserPolicy::of(&config);
    let replica = tandem_replica::start(config.replica, grpc_listener, http_addr).await?;
    let stop_front_door = CancellationToken::new();
    let (access, users) = match users::start(&first_user, replica.replica(), stop_front_door.clone()).await {
        Ok(started) => started,
        Err(e) => {
            replica.shutdown().await;
            return Err(e);
        }
    };
    let spill_dir = replica.replica().data_dir().join("spill");
    let front_door =
        match tandem_server::FrontDoor::prepare(replica.replica().clone(), access, config.server, &spill_dir) {
            Ok(front_door) => front_door,
            Err(e) => {
                stop_front_door.cancel();
                replica.shutdown().await;
                return Err(e);
            }
        };
    let https = front_door.is_https();
    let stop = stop_front_door.clone();
    let http = tokio::spawn(async move {
        if let Err(e) = front_door.serve(http_listener, stop.cancelled_owned()).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%http_addr, https, node = %node_id, cluster, data_dir = %replica.replica().data_dir().display(), "tandem is serving");
    Ok(RunningNode { replica, http_addr, stop_front_door, http, users })
}

impl RunningNode {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn replica(&self) -> &Arc<Replica> {
        self.replica.replica()
    }

    /// Waits until the node is ready (see [`Replica::is_ready`]). False on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.replica().is_ready() {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops accepting requests, lets in-flight ones finish, then stops the replica's loops
    /// (a cluster node withdraws its membership).
    pub async fn shutdown(self) {
        self.stop_front_door.cancel();
        let _ = self.http.await;
        let _ = self.users.await;
        self.replica.shutdown().await;
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
