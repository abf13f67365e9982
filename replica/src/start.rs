//! Opening a replica and running its background loops, started and stopped together.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tandem_coordinator::{Coordinator, EmbeddedKv, EtcdKv, KvBackend};
use tandem_parts::LocalPartStore;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bucket::Bucket;
use crate::bucket_reads::BucketReads;
use crate::catalog::Catalog;
use crate::config::{CoordinatorConfig, ReplicaConfig};
use crate::insert_buffer::AsyncInserts;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::replica::Replica;
use crate::running_merges::Merges;

/// A started replica. Dropping it does not stop it: call [`RunningReplica::shutdown`].
pub struct RunningReplica {
    replica: Arc<Replica>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens the data directory and the coordinator and starts every loop: the sync loop, the
/// dedup pruner, merges, the orphan sweep, the object-store tasks, and in a cluster the
/// fetcher, the membership lease and the interserver service on `grpc_listener`.
/// `http_addr` is what this node announces as its HTTP address. Returns at once; the replica
/// is ready once it has caught up (see [`Replica::is_ready`]).
pub async fn start(
    mut config: ReplicaConfig,
    grpc_listener: Option<TcpListener>,
    http_addr: SocketAddr,
) -> anyhow::Result<RunningReplica> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // Part files are read through an object-store URL, which needs an absolute path.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("cannot resolve data directory {}", config.data_dir.display()))?;
    anyhow::ensure!(
        config.is_cluster() == grpc_listener.is_some(),
        "a cluster node needs its interserver listener, and a single node has none"
    );
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
    let grpc_addr = grpc_listener.as_ref().map(|l| l.local_addr()).transpose()?.unwrap_or(config.settings.grpc_addr);
    let interserver_tls = crate::peer_tls::InterserverTls::load(&config.settings)?;
    if config.is_cluster() && config.cluster_secret.is_none() && interserver_tls.is_none() {
        tracing::warn!(
            "no cluster secret is configured (--insecure): any process that reaches {grpc_addr} can read this \
             node's parts; set TANDEM_CLUSTER_SECRET, cluster_secret_file or cluster_secret, or interserver TLS"
        );
    }
    let bucket = match &config.object_store {
        Some(s3) => {
            let bootstrap = config.settings.bootstrap_from_object_store;
            let bucket = Bucket::new(s3, bootstrap).context("invalid object store configuration")?;
            tracing::info!(store = %bucket.mirror.description(), "parts are mirrored to the object store");
            Some(Arc::new(bucket))
        }
        None => None,
    };
    anyhow::ensure!(
        config.settings.local_storage_bytes.is_none() || bucket.is_some(),
        "--local-storage-bytes needs an object store (--s3-bucket): parts are evicted only once they are in the bucket"
    );
    let (fetch_requests, fetch_queue) = mpsc::unbounded_channel();
    let catalog = Arc::new(Catalog::new(store));
    if config.settings.role == crate::config::NodeRole::Query {
        anyhow::ensure!(
            config.is_cluster() && bucket.is_some(),
            "--role query needs a cluster (--etcd) and an object store (--s3-bucket): a query node reads every part \
             from the bucket"
        );
        catalog.serve_only_from_bucket();
    } else if config.settings.local_storage_bytes.is_some() {
        catalog.serve_from_bucket();
    }
    if config.is_cluster() {
        catalog.set_fetcher(fetch_requests.clone());
    }
    let async_inserts =
        Arc::new(AsyncInserts::open(&config.data_dir, &config.node_id, config.settings.async_insert_max_log_bytes)?);
    let replica = Arc::new(Replica {
        async_inserts,
        coordinator: Coordinator::new(kv, config.cluster_prefix.clone()),
        catalog,
        metrics: Arc::new(Metrics::new()),
        mirror,
        http_addr,
        grpc_addr,
        announced: Default::default(),
        member_until: Default::default(),
        lease: Default::default(),
        bucket: bucket.clone(),
        merges: Merges::new(config.settings.merge_concurrency),
        draining: Default::default(),
        fetch_requests,
        interserver_tls,
        bucket_reads: BucketReads::new(config.settings.bucket_cache_bytes),
        live_nodes_listing: Default::default(),
        config,
    });
    let shutdown = CancellationToken::new();
    let mut tasks = vec![
        tokio::spawn(crate::sync::run(replica.clone(), shutdown.clone())),
        tokio::spawn(crate::sync::prune_blocks(replica.clone(), shutdown.clone())),
        tokio::spawn(crate::async_insert::run(replica.clone(), shutdown.clone())),
        tokio::spawn(crate::merges::run(replica.clone(), shutdown.clone())),
        tokio::spawn(crate::merges::run_orphan_sweep(replica.clone(), shutdown.clone())),
    ];
    if let Some(bucket) = bucket {
        tasks.push(tokio::spawn(crate::object_store_tasks::run_uploader(
            replica.clone(),
            bucket.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(crate::object_store_tasks::run_gc(replica.clone(), bucket.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(crate::object_store_tasks::run_bootstrap(replica.clone(), bucket, shutdown.clone())));
        tasks.push(tokio::spawn(crate::eviction::run(replica.clone(), shutdown.clone())));
    }
    if let Some(listener) = grpc_listener {
        tasks.push(tokio::spawn(crate::fetch::run(replica.clone(), fetch_queue, shutdown.clone())));
        tasks.push(tokio::spawn(crate::membership::run(replica.clone(), shutdown.clone())));
        tasks.push(tokio::spawn(crate::interserver::serve(replica.clone(), listener, shutdown.clone())));
    }
    Ok(RunningReplica { replica, shutdown, tasks })
}

impl RunningReplica {
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// Stops every loop and waits for them (a cluster node withdraws its membership).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
