//! What a replica is started with: its settings (declared once below, with their defaults,
//! flags, `TANDEM_*` variables and config keys), and what the `tandem` binary resolves around
//! them (the data directory, the node id, the coordinator, the secret, the bucket).

use std::path::PathBuf;
use std::time::Duration;

use tandem_coordinator::EtcdTls;
use tandem_parts::S3Settings;

tandem_settings::settings! {
    /// The replica's tunable settings.
    pub struct ReplicaSettings, flags ReplicaFlags, file ReplicaFile {
        /// Address of the interserver gRPC service, also announced to peers.
        grpc_addr: std::net::SocketAddr = "127.0.0.1:9100", env "TANDEM_GRPC_ADDR";
        /// `host:port` peers use to reach this node's gRPC service, when it differs from
        /// --grpc-addr (which may be 0.0.0.0: in Kubernetes, the pod's DNS name under the headless
        /// Service); unset, the bound --grpc-addr is announced.
        advertise_grpc_addr: Option<String> = "", env "TANDEM_ADVERTISE_GRPC_ADDR";
        /// Parts fetched from peers at the same time.
        fetch_concurrency: usize = "4", env "TANDEM_FETCH_CONCURRENCY";
        /// Seconds without a chunk after which a fetch gives up on that source and tries the next
        /// (raise it for peers behind slow links).
        fetch_chunk_timeout_seconds: u64 = "30", env "TANDEM_FETCH_CHUNK_TIMEOUT_SECONDS";
        /// Seconds between full listings of the cluster state, a safety net under the watch.
        relist_interval_seconds: u64 = "300", env "TANDEM_RELIST_INTERVAL_SECONDS";
        /// Milliseconds between passes that forget insert block ids beyond each table's
        /// dedup_window_blocks.
        dedup_prune_interval_ms: u64 = "60000", env "TANDEM_DEDUP_PRUNE_INTERVAL_MS";
        /// Merges this node runs at the same time (as a leader or rebuilding replica).
        merge_concurrency: usize = "1", env "TANDEM_MERGE_CONCURRENCY";
        /// A replica obtains a part another node merged by fetching it from that node (`true`)
        /// or by merging its own copies of the sources again (`false`: no merged bytes cross the
        /// network, each replica spends the merge's CPU again). Either way the other path is the
        /// fallback, and the bytes are checked against the registered hash.
        always_fetch_merged_part: bool = "true", env "TANDEM_ALWAYS_FETCH_MERGED_PART",
            [num_args = 0..=1, default_missing_value = "true"];
        /// Milliseconds between merge selection passes.
        merge_interval_ms: u64 = "1000", env "TANDEM_MERGE_INTERVAL_MS";
        /// Part files that no registered part uses are deleted once this old (seconds).
        orphan_grace_seconds: u64 = "3600", env "TANDEM_ORPHAN_GRACE_SECONDS";
        /// Parts uploaded to the object store at the same time.
        upload_concurrency: usize = "4", env "TANDEM_UPLOAD_CONCURRENCY";
        /// Objects no part references are deleted once unreferenced for this long (seconds).
        object_store_gc_grace_seconds: u64 = "3600", env "TANDEM_OBJECT_STORE_GC_GRACE_SECONDS";
        /// Seconds between object-store garbage collection passes.
        object_store_gc_interval_seconds: u64 = "300", env "TANDEM_OBJECT_STORE_GC_INTERVAL_SECONDS";
        /// Fill this node's disk from the object store instead of its peers: until it has caught
        /// up, every part is read from the bucket first (peers only for parts not uploaded yet).
        bootstrap_from_object_store: bool = "false", env "TANDEM_BOOTSTRAP_FROM_OBJECT_STORE",
            [num_args = 0..=1, default_missing_value = "true"];
        /// `storage` (takes inserts, holds parts, runs merges) or `query`: a node that joins the
        /// cluster to answer queries only, reading every part from the object store (verified
        /// ranged reads, cached in memory), holding none on its disk, taking no inserts and no
        /// merge leadership. Add query nodes to scale reads. Needs a cluster and an object store.
        role: NodeRole = "storage", env "TANDEM_ROLE";
        /// Bytes of part files this node keeps on its disk. Beyond it, parts already in the
        /// object store are evicted, least recently queried first, and read from the bucket with
        /// verified ranged reads; parts listed at start that are not here but in the bucket are
        /// not fetched. Unset: every part is kept on every node. Needs an object store.
        local_storage_bytes: Option<u64> = "", env "TANDEM_LOCAL_STORAGE_BYTES";
        /// Memory for verified byte ranges (and part outboards) read from the bucket, so a
        /// repeated query over evicted parts does not read them again.
        bucket_cache_bytes: u64 = "268435456", env "TANDEM_BUCKET_CACHE_BYTES";
        /// Inserts that do not say otherwise (request, then table setting) are buffered: logged
        /// on this node, then registered with others in one part per partition per flush.
        async_insert: bool = "false", env "TANDEM_ASYNC_INSERT", [num_args = 0..=1, default_missing_value = "true"];
        /// Milliseconds an asynchronous insert waits in the buffer for others to join its flush.
        async_insert_busy_timeout_ms: u64 = "200", env "TANDEM_ASYNC_INSERT_BUSY_TIMEOUT_MS";
        /// A table's buffer is flushed once it holds this many bytes of rows.
        async_insert_max_data_size: u64 = "10485760", env "TANDEM_ASYNC_INSERT_MAX_DATA_SIZE";
        /// Bytes the insert log may hold before asynchronous inserts are refused (503): what
        /// accumulates while the metadata store is unreachable.
        async_insert_max_log_bytes: u64 = "536870912", env "TANDEM_ASYNC_INSERT_MAX_LOG_BYTES";
        /// PEM CA that signs every node's interserver certificate: with --interserver-cert-file and
        /// --interserver-key-file, the interserver gRPC runs over mutual TLS (a peer without a
        /// certificate from this CA is refused at the handshake).
        interserver_ca_file: Option<PathBuf> = "", env "TANDEM_INTERSERVER_CA_FILE";
        /// PEM certificate this node serves and presents to its peers (valid for the address it
        /// advertises).
        interserver_cert_file: Option<PathBuf> = "", env "TANDEM_INTERSERVER_CERT_FILE";
        /// PEM private key of --interserver-cert-file.
        interserver_key_file: Option<PathBuf> = "", env "TANDEM_INTERSERVER_KEY_FILE";
    }
}

/// What a node does in its cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Takes inserts, holds parts on its disk, may lead merges.
    #[default]
    Storage,
    /// Answers queries from the object store; holds no parts.
    Query,
}

impl std::str::FromStr for NodeRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "storage" => Ok(NodeRole::Storage),
            "query" => Ok(NodeRole::Query),
            other => Err(format!("a node's role is `storage` or `query`, not `{other}`")),
        }
    }
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeRole::Storage => "storage",
            NodeRole::Query => "query",
        })
    }
}

impl tandem_settings::Setting for NodeRole {
    type Flag = NodeRole;

    fn from_flag(flag: NodeRole) -> NodeRole {
        flag
    }

    fn from_default(text: &str) -> NodeRole {
        text.parse().unwrap_or_else(|e| panic!("the declared default: {e}"))
    }
}

impl ReplicaSettings {
    /// Whether the interserver gRPC is configured for mutual TLS.
    pub fn has_interserver_tls(&self) -> bool {
        self.interserver_ca_file.is_some()
            || self.interserver_cert_file.is_some()
            || self.interserver_key_file.is_some()
    }
}

impl ReplicaSettings {
    pub fn relist_interval(&self) -> Duration {
        Duration::from_secs(self.relist_interval_seconds.max(1))
    }

    pub fn dedup_prune_interval(&self) -> Duration {
        Duration::from_millis(self.dedup_prune_interval_ms.max(10))
    }

    pub fn merge_interval(&self) -> Duration {
        Duration::from_millis(self.merge_interval_ms.max(10))
    }

    pub fn orphan_grace(&self) -> Duration {
        Duration::from_secs(self.orphan_grace_seconds)
    }

    pub fn object_store_gc_grace(&self) -> Duration {
        Duration::from_secs(self.object_store_gc_grace_seconds)
    }

    pub fn object_store_gc_interval(&self) -> Duration {
        Duration::from_secs(self.object_store_gc_interval_seconds.max(1))
    }
}

/// What peers present to each other on every interserver call: the current secret and, while a
/// rollout replaces it, the previous one (accepted, and presented to a peer that refuses the
/// current one, so nodes on either side of the rollout keep fetching from each other).
#[derive(Clone)]
pub struct ClusterSecret {
    pub current: String,
    pub previous: Option<String>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSecret")
            .field("current", &"<set>")
            .field("previous", &self.previous.as_ref().map(|_| "<set>"))
            .finish()
    }
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
    /// None only on a single node, or on a cluster node started with `--insecure`.
    pub cluster_secret: Option<ClusterSecret>,
    /// The bucket that mirrors every part, when there is one.
    pub object_store: Option<S3Settings>,
    /// The most columns a table may have (schema changes past it are refused).
    pub max_columns: usize,
    pub settings: ReplicaSettings,
}

impl std::fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("data_dir", &self.data_dir)
            .field("node_id", &self.node_id)
            .field("coordinator", &self.coordinator)
            .field("cluster_prefix", &self.cluster_prefix)
            .field("cluster_secret", &self.cluster_secret)
            .field("object_store", &self.object_store)
            .field("max_columns", &self.max_columns)
            .field("settings", &self.settings)
            .finish()
    }
}

impl ReplicaConfig {
    pub fn is_cluster(&self) -> bool {
        !matches!(self.coordinator, CoordinatorConfig::Embedded)
    }
}
