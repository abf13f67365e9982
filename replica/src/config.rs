//! What a replica is started with. The layering of defaults, file, environment and flags that
//! produces it lives in the `tandem` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_coordinator::EtcdTls;
use tandem_parts::S3Settings;

/// The object-store mirror of parts.
#[derive(Clone, Debug)]
pub struct ObjectStoreConfig {
    pub s3: S3Settings,
    pub upload_concurrency: usize,
    /// An object unreferenced for this long is deleted.
    pub gc_grace: Duration,
    pub gc_interval: Duration,
    /// Read parts from the bucket first until caught up (a node filling an empty disk).
    pub bootstrap: bool,
}

/// Where the metadata lives.
#[derive(Clone, Debug)]
pub enum CoordinatorConfig {
    /// One node, metadata in `<data_dir>/metadata.redb`.
    Embedded,
    /// A cluster, metadata in etcd (over TLS when `tls` is set).
    Etcd { endpoints: Vec<String>, tls: Option<EtcdTls> },
}

/// The resolved configuration of a replica.
#[derive(Clone)]
pub struct ReplicaConfig {
    pub data_dir: PathBuf,
    pub node_id: String,
    pub coordinator: CoordinatorConfig,
    /// Key prefix of this cluster in the metadata store: `/tandem/<cluster>/`.
    pub cluster_prefix: String,
    pub grpc_addr: SocketAddr,
    /// The address announced to peers; None announces the bound gRPC address.
    pub advertise_grpc_addr: Option<String>,
    pub cluster_secret: Option<String>,
    pub fetch_concurrency: usize,
    /// How often the node re-lists everything as a safety net under the watch.
    pub relist_interval: Duration,
    /// How often block ids beyond each table's count window are forgotten.
    pub dedup_prune_interval: Duration,
    pub object_store: Option<ObjectStoreConfig>,
    pub merge_concurrency: usize,
    pub merge_interval: Duration,
    /// Unreferenced part files older than this are deleted.
    pub orphan_grace: Duration,
    /// The most columns a table may have (schema changes past it are refused).
    pub max_columns: usize,
}

impl std::fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("data_dir", &self.data_dir)
            .field("node_id", &self.node_id)
            .field("coordinator", &self.coordinator)
            .field("cluster_prefix", &self.cluster_prefix)
            .field("grpc_addr", &self.grpc_addr)
            .field("advertise_grpc_addr", &self.advertise_grpc_addr)
            .field("cluster_secret", &self.cluster_secret.as_ref().map(|_| "<set>"))
            .field("object_store", &self.object_store)
            .finish_non_exhaustive()
    }
}

impl ReplicaConfig {
    pub fn is_cluster(&self) -> bool {
        !matches!(self.coordinator, CoordinatorConfig::Embedded)
    }
}
