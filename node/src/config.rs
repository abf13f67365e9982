//! Node configuration, layered: built-in defaults, then the TOML file (`--config`), then
//! `TANDEM_*` environment variables, then command-line flags (the last one wins). The cluster
//! secret is never a command-line value: it comes from the file, `TANDEM_CLUSTER_SECRET`, or a
//! secret file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use tandem_coordinator::EtcdTls;
use tandem_parts::S3Settings;
use tandem_replica::schema::TableSettings;
use tandem_replica::{CoordinatorConfig, DEFAULT_QUORUM_TIMEOUT, ObjectStoreConfig, Quorum, ReplicaConfig};
use tandem_server::limits::{LimitArgs, LimitFile, Limits};
use tandem_server::{DEFAULT_MAX_BODY_BYTES, ServerConfig};

/// Flags of `tandem serve`. Each also reads a `TANDEM_*` environment variable.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/tandem.example.toml).
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Resolve the configuration (flags, environment, file), print it with secrets redacted,
    /// and exit without starting: a check for deployment manifests.
    #[arg(long)]
    pub check_config: bool,
    /// Address of the HTTP API [default: 127.0.0.1:8123].
    #[arg(long, env = "TANDEM_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Directory for parts and local metadata [default: ./tandem-data].
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes [default: 268435456 (256 MiB)].
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// This node's name in the cluster; required with --etcd [default: `local`].
    #[arg(long, env = "TANDEM_NODE_ID")]
    pub node_id: Option<String>,
    /// etcd endpoints, comma-separated (`http://127.0.0.1:2379`): run as a cluster node.
    /// Without it the node runs alone with the embedded coordinator.
    #[arg(long, env = "TANDEM_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// PEM file of the CA that signed the etcd members' certificates: connect over TLS (the
    /// --etcd endpoints must then be https://).
    #[arg(long, env = "TANDEM_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd members that require one (with --etcd-key-file).
    #[arg(long, env = "TANDEM_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of --etcd-cert-file.
    #[arg(long, env = "TANDEM_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// Cluster name: all keys live under `/tandem/<cluster>/` in etcd [default: default].
    #[arg(long, env = "TANDEM_CLUSTER")]
    pub cluster: Option<String>,
    /// etcd key prefix of this cluster, for an etcd shared under a naming scheme of its own
    /// (`/teams/metrics/tandem/`) [default: /tandem/<cluster>/].
    #[arg(long, env = "TANDEM_ETCD_KEY_PREFIX")]
    pub etcd_key_prefix: Option<String>,
    /// Address of the interserver gRPC service, also announced to peers [default: 127.0.0.1:9100].
    #[arg(long, env = "TANDEM_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// `host:port` peers use to reach this node's gRPC service, when it differs from
    /// --grpc-addr (which may be 0.0.0.0: in Kubernetes, the pod's DNS name under the headless
    /// Service) [default: the bound --grpc-addr].
    #[arg(long, env = "TANDEM_ADVERTISE_GRPC_ADDR")]
    pub advertise_grpc_addr: Option<String>,
    /// File holding the cluster secret that peers must present (the secret itself can also
    /// come from TANDEM_CLUSTER_SECRET or the config file, never from a flag).
    #[arg(long, env = "TANDEM_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Parts fetched from peers at the same time [default: 4].
    #[arg(long, env = "TANDEM_FETCH_CONCURRENCY")]
    pub fetch_concurrency: Option<usize>,
    /// Milliseconds between passes that forget insert block ids beyond each table's
    /// dedup_window_blocks [default: 60000].
    #[arg(long, env = "TANDEM_DEDUP_PRUNE_INTERVAL_MS")]
    pub dedup_prune_interval_ms: Option<u64>,
    /// S3-compatible endpoint (`http://minio:9000`); omit for AWS S3 itself.
    #[arg(long, env = "TANDEM_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Bucket that mirrors every part: setting it turns the object store on.
    #[arg(long, env = "TANDEM_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix of this cluster's objects in the bucket [default: the cluster name].
    #[arg(long, env = "TANDEM_S3_PREFIX")]
    pub s3_prefix: Option<String>,
    /// Region of the bucket [default: us-east-1, or AWS_REGION].
    #[arg(long, env = "TANDEM_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by MinIO and most self-hosted
    /// servers [default: true when --s3-endpoint is set].
    #[arg(long, env = "TANDEM_S3_PATH_STYLE", num_args = 0..=1, default_missing_value = "true")]
    pub s3_path_style: Option<bool>,
    /// Allow plain-HTTP endpoints [default: false].
    #[arg(long, env = "TANDEM_S3_ALLOW_HTTP", num_args = 0..=1, default_missing_value = "true")]
    pub s3_allow_http: Option<bool>,
    /// TOML file with `access_key_id` and `secret_access_key` (the keys themselves can also come
    /// from TANDEM_S3_ACCESS_KEY_ID / TANDEM_S3_SECRET_ACCESS_KEY, the AWS_* variables or the
    /// config file, never from a flag).
    #[arg(long, env = "TANDEM_S3_CREDENTIALS_FILE")]
    pub s3_credentials_file: Option<PathBuf>,
    /// Parts uploaded to the object store at the same time [default: 4].
    #[arg(long, env = "TANDEM_UPLOAD_CONCURRENCY")]
    pub upload_concurrency: Option<usize>,
    /// Objects no part references are deleted once unreferenced for this long [default: 3600].
    #[arg(long, env = "TANDEM_OBJECT_STORE_GC_GRACE_SECONDS")]
    pub object_store_gc_grace_seconds: Option<u64>,
    /// Seconds between object-store garbage collection passes [default: 300].
    #[arg(long, env = "TANDEM_OBJECT_STORE_GC_INTERVAL_SECONDS")]
    pub object_store_gc_interval_seconds: Option<u64>,
    /// Fill this node's disk from the object store instead of its peers: until it has caught
    /// up, every part is read from the bucket first (peers only for parts not uploaded yet).
    #[arg(long, env = "TANDEM_BOOTSTRAP_FROM_OBJECT_STORE", num_args = 0..=1, default_missing_value = "true")]
    pub bootstrap_from_object_store: Option<bool>,
    /// Merges this node runs at the same time (as a leader or rebuilding replica) [default: 1].
    #[arg(long, env = "TANDEM_MERGE_CONCURRENCY")]
    pub merge_concurrency: Option<usize>,
    /// Milliseconds between merge selection passes [default: 1000].
    #[arg(long, env = "TANDEM_MERGE_INTERVAL_MS")]
    pub merge_interval_ms: Option<u64>,
    /// Part files that no registered part uses are deleted once this old [default: 3600].
    #[arg(long, env = "TANDEM_ORPHAN_GRACE_SECONDS")]
    pub orphan_grace_seconds: Option<u64>,
    /// `insert_quorum` of inserts that do not set it: 1, a number of nodes, or `auto`
    /// [default: 1].
    #[arg(long, env = "TANDEM_INSERT_QUORUM")]
    pub insert_quorum: Option<String>,
    /// `insert_quorum_timeout` (milliseconds) of inserts that do not set it [default: 30000].
    #[arg(long, env = "TANDEM_INSERT_QUORUM_TIMEOUT_MS")]
    pub insert_quorum_timeout_ms: Option<u64>,
    /// `dedup_window_blocks` of tables created without it [default: 1000].
    #[arg(long, env = "TANDEM_DEDUP_WINDOW_BLOCKS")]
    pub dedup_window_blocks: Option<u64>,
    /// `dedup_window_seconds` of tables created without it [default: 604800 (7 days)].
    #[arg(long, env = "TANDEM_DEDUP_WINDOW_SECONDS")]
    pub dedup_window_seconds: Option<u64>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The flat TOML file. Unknown keys are an error, so a typo is not ignored.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub max_body_bytes: Option<usize>,
    pub node_id: Option<String>,
    pub etcd: Option<Vec<String>>,
    pub etcd_ca_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    pub cluster: Option<String>,
    pub etcd_key_prefix: Option<String>,
    pub grpc_addr: Option<SocketAddr>,
    pub advertise_grpc_addr: Option<String>,
    pub cluster_secret: Option<String>,
    pub cluster_secret_file: Option<PathBuf>,
    pub fetch_concurrency: Option<usize>,
    pub relist_interval_seconds: Option<u64>,
    pub dedup_prune_interval_ms: Option<u64>,
    pub s3_endpoint: Option<String>,
    pub s3_bucket: Option<String>,
    pub s3_prefix: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_allow_http: Option<bool>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub s3_credentials_file: Option<PathBuf>,
    pub upload_concurrency: Option<usize>,
    pub object_store_gc_grace_seconds: Option<u64>,
    pub object_store_gc_interval_seconds: Option<u64>,
    pub bootstrap_from_object_store: Option<bool>,
    pub merge_concurrency: Option<usize>,
    pub merge_interval_ms: Option<u64>,
    pub orphan_grace_seconds: Option<u64>,
    pub insert_quorum: Option<String>,
    pub insert_quorum_timeout_ms: Option<u64>,
    pub dedup_window_blocks: Option<u64>,
    pub dedup_window_seconds: Option<u64>,
    /// The `[limits]` table.
    #[serde(default)]
    pub limits: LimitFile,
}

/// The S3 credentials file (`--s3-credentials-file`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
}

/// The resolved configuration of a node: where it serves HTTP, its replica and its front door.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub http_addr: SocketAddr,
    pub replica: ReplicaConfig,
    pub server: ServerConfig,
}

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8123";
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:9100";

impl NodeConfig {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let mut file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let env_secret = std::env::var("TANDEM_CLUSTER_SECRET").ok().filter(|s| !s.is_empty());
        let secret_file = args.cluster_secret_file.clone().or(file.cluster_secret_file.take());
        let cluster_secret = match (env_secret, secret_file, file.cluster_secret.take()) {
            (Some(secret), _, _) => Some(secret),
            (None, Some(path), _) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the cluster secret file {}", path.display()))?;
                Some(text.trim().to_string()).filter(|s| !s.is_empty())
            }
            (None, None, secret) => secret.filter(|s| !s.is_empty()),
        };
        let coordinator = match args.etcd.clone().or(file.etcd.take()).filter(|e| !e.is_empty()) {
            Some(endpoints) => {
                for endpoint in &endpoints {
                    refuse_credentials_in_url("--etcd", endpoint)?;
                }
                let tls = etcd_tls(args, &mut file, &endpoints)?;
                CoordinatorConfig::Etcd { endpoints, tls }
            }
            None => CoordinatorConfig::Embedded,
        };
        let node_id = args.node_id.clone().or(file.node_id.take());
        if node_id.is_none() && !matches!(coordinator, CoordinatorConfig::Embedded) {
            bail!("--node-id (or TANDEM_NODE_ID) is required with --etcd: each node of a cluster needs a stable name");
        }
        if let Some(id) = &node_id
            && !tandem_coordinator::valid_node_id(id)
        {
            bail!("node id `{id}` must be 1 to 128 letters, digits, `_`, `-` and `.`");
        }
        let cluster = args.cluster.clone().or(file.cluster.take()).unwrap_or_else(|| "default".to_string());
        if !tandem_coordinator::valid_name(&cluster.replace('-', "_")) {
            bail!("cluster name `{cluster}` must be letters, digits, `_` and `-`");
        }
        let object_store = object_store_config(args, &mut file, &cluster)?;
        let cluster_prefix = match args.etcd_key_prefix.clone().or(file.etcd_key_prefix.take()) {
            None => format!("/tandem/{cluster}/"),
            Some(prefix) if prefix.starts_with('/') && prefix.len() > 1 => format!("{}/", prefix.trim_end_matches('/')),
            Some(prefix) => {
                bail!("--etcd-key-prefix `{prefix}` must start with `/` and name something (`/tandem/blue/`)")
            }
        };
        let insert_quorum = match args.insert_quorum.clone().or(file.insert_quorum.take()) {
            Some(text) => Quorum::parse(&text)
                .map_err(|_| anyhow::anyhow!("--insert-quorum takes 1, a number of nodes, or `auto`, got `{text}`"))?,
            None => Quorum::One,
        };
        let mut table_defaults = TableSettings::default();
        if let Some(blocks) = args.dedup_window_blocks.or(file.dedup_window_blocks) {
            table_defaults.dedup_window_blocks = blocks;
        }
        if let Some(seconds) = args.dedup_window_seconds.or(file.dedup_window_seconds) {
            table_defaults.dedup_window_seconds = seconds;
        }
        let limits = Limits::resolve(&args.limits, &file.limits);
        Ok(NodeConfig {
            http_addr: args
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| DEFAULT_HTTP_ADDR.parse().expect("valid default")),
            replica: ReplicaConfig {
                data_dir: args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("tandem-data")),
                node_id: node_id.unwrap_or_else(|| "local".to_string()),
                coordinator,
                cluster_prefix,
                grpc_addr: args
                    .grpc_addr
                    .or(file.grpc_addr)
                    .unwrap_or_else(|| DEFAULT_GRPC_ADDR.parse().expect("valid default")),
                advertise_grpc_addr: args
                    .advertise_grpc_addr
                    .clone()
                    .or(file.advertise_grpc_addr)
                    .filter(|a| !a.is_empty()),
                cluster_secret,
                fetch_concurrency: args.fetch_concurrency.or(file.fetch_concurrency).unwrap_or(4).max(1),
                relist_interval: Duration::from_secs(file.relist_interval_seconds.unwrap_or(300).max(1)),
                dedup_prune_interval: Duration::from_millis(
                    args.dedup_prune_interval_ms.or(file.dedup_prune_interval_ms).unwrap_or(60_000).max(10),
                ),
                object_store,
                merge_concurrency: args.merge_concurrency.or(file.merge_concurrency).unwrap_or(1).max(1),
                merge_interval: Duration::from_millis(
                    args.merge_interval_ms.or(file.merge_interval_ms).unwrap_or(1000).max(10),
                ),
                orphan_grace: Duration::from_secs(
                    args.orphan_grace_seconds.or(file.orphan_grace_seconds).unwrap_or(3600),
                ),
                max_columns: limits.max_columns,
            },
            server: ServerConfig {
                max_body_bytes: args.max_body_bytes.or(file.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES),
                insert_quorum,
                insert_quorum_timeout: args
                    .insert_quorum_timeout_ms
                    .or(file.insert_quorum_timeout_ms)
                    .map_or(DEFAULT_QUORUM_TIMEOUT, Duration::from_millis),
                table_defaults,
                limits,
            },
        })
    }

    /// A single-node configuration for tests and benchmarks: everything under `data_dir`,
    /// any free port.
    pub fn for_dir(data_dir: impl Into<PathBuf>) -> Self {
        let server = ServerConfig::default();
        NodeConfig {
            http_addr: "127.0.0.1:0".parse().expect("valid address"),
            replica: ReplicaConfig {
                data_dir: data_dir.into(),
                node_id: "local".to_string(),
                coordinator: CoordinatorConfig::Embedded,
                cluster_prefix: "/tandem/default/".to_string(),
                grpc_addr: "127.0.0.1:0".parse().expect("valid address"),
                advertise_grpc_addr: None,
                cluster_secret: None,
                fetch_concurrency: 4,
                relist_interval: Duration::from_secs(300),
                dedup_prune_interval: Duration::from_secs(60),
                object_store: None,
                merge_concurrency: 1,
                merge_interval: Duration::from_secs(1),
                orphan_grace: Duration::from_secs(3600),
                max_columns: server.limits.max_columns,
            },
            server,
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.replica.is_cluster()
    }
}

/// TLS to etcd from `--etcd-ca-file`, `--etcd-cert-file` and `--etcd-key-file` (None without them).
fn etcd_tls(args: &ServeArgs, file: &mut FileConfig, endpoints: &[String]) -> anyhow::Result<Option<EtcdTls>> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read the etcd {what} {}", path.display()))
    };
    let ca = args.etcd_ca_file.clone().or(file.etcd_ca_file.take());
    let cert = args.etcd_cert_file.clone().or(file.etcd_cert_file.take());
    let key = args.etcd_key_file.clone().or(file.etcd_key_file.take());
    Ok(match (ca, cert, key) {
        (None, None, None) => None,
        (None, _, _) => bail!("--etcd-cert-file and --etcd-key-file need --etcd-ca-file (TLS to etcd)"),
        (Some(ca), cert, key) => {
            let client_identity = match (cert, key) {
                (Some(cert), Some(key)) => Some((read(&cert, "client certificate")?, read(&key, "client key")?)),
                (None, None) => None,
                _ => bail!("--etcd-cert-file and --etcd-key-file go together"),
            };
            if let Some(plain) = endpoints.iter().find(|e| !e.starts_with("https://")) {
                bail!("etcd endpoint {plain} is not https:// but --etcd-ca-file asks for TLS");
            }
            Some(EtcdTls { ca_pem: read(&ca, "CA certificate")?, client_identity })
        }
    })
}

/// The object store from the `--s3-*` settings (None without a bucket).
fn object_store_config(
    args: &ServeArgs,
    file: &mut FileConfig,
    cluster: &str,
) -> anyhow::Result<Option<ObjectStoreConfig>> {
    Ok(match args.s3_bucket.clone().or(file.s3_bucket.take()).filter(|b| !b.is_empty()) {
        None => {
            if args.bootstrap_from_object_store.or(file.bootstrap_from_object_store).unwrap_or(false) {
                bail!("--bootstrap-from-object-store needs an object store: set --s3-bucket (and --s3-endpoint)");
            }
            None
        }
        Some(bucket) => {
            let (mut access_key_id, mut secret_access_key) = (
                std::env::var("TANDEM_S3_ACCESS_KEY_ID").ok().filter(|s| !s.is_empty()),
                std::env::var("TANDEM_S3_SECRET_ACCESS_KEY").ok().filter(|s| !s.is_empty()),
            );
            if let Some(path) = args.s3_credentials_file.clone().or(file.s3_credentials_file.take()) {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the S3 credentials file {}", path.display()))?;
                // Only the parser's message: its full error quotes the offending line, a secret.
                let creds: CredentialsFile = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "S3 credentials file {}: {}; it holds `access_key_id = \"...\"` and `secret_access_key = \"...\"`",
                    path.display(),
                    e.message()
                )
            })?;
                access_key_id = access_key_id.or(Some(creds.access_key_id));
                secret_access_key = secret_access_key.or(Some(creds.secret_access_key));
            }
            let endpoint = args.s3_endpoint.clone().or(file.s3_endpoint.take()).filter(|e| !e.is_empty());
            if let Some(endpoint) = &endpoint {
                refuse_credentials_in_url("--s3-endpoint", endpoint)?;
            }
            let region = args
                .s3_region
                .clone()
                .or(file.s3_region.take())
                .or_else(|| std::env::var("AWS_REGION").ok())
                .unwrap_or_else(|| "us-east-1".to_string());
            Some(ObjectStoreConfig {
                s3: S3Settings {
                    path_style: args.s3_path_style.or(file.s3_path_style).unwrap_or(endpoint.is_some()),
                    allow_http: args.s3_allow_http.or(file.s3_allow_http).unwrap_or(false),
                    endpoint,
                    bucket,
                    prefix: args.s3_prefix.clone().or(file.s3_prefix.take()).unwrap_or_else(|| cluster.to_string()),
                    region,
                    access_key_id: access_key_id.or(file.s3_access_key_id.take()),
                    secret_access_key: secret_access_key.or(file.s3_secret_access_key.take()),
                    request_timeout: Duration::from_secs(300),
                },
                upload_concurrency: args.upload_concurrency.or(file.upload_concurrency).unwrap_or(4).max(1),
                gc_grace: Duration::from_secs(
                    args.object_store_gc_grace_seconds.or(file.object_store_gc_grace_seconds).unwrap_or(3600),
                ),
                gc_interval: Duration::from_secs(
                    args.object_store_gc_interval_seconds
                        .or(file.object_store_gc_interval_seconds)
                        .unwrap_or(300)
                        .max(1),
                ),
                bootstrap: args.bootstrap_from_object_store.or(file.bootstrap_from_object_store).unwrap_or(false),
            })
        }
    })
}

/// A URL with a user name or password in it (`http://user:pass@host`). tandem never sends
/// credentials from a URL (etcd and the object store take them from their own settings), and a
/// URL is printed in logs and by `--check-config`: refused, without quoting the credentials.
fn refuse_credentials_in_url(setting: &str, url: &str) -> anyhow::Result<()> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((_, host)) = authority.rsplit_once('@') {
        bail!(
            "{setting} `<credentials>@{host}` has credentials in the URL, which tandem does not use and will not \
             print; remove them (etcd TLS client certificates and the S3 keys have their own settings)"
        );
    }
    Ok(())
}

pub fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    // Only the parser's message and the position: its full error quotes the offending line,
    // which may hold a secret.
    toml::from_str(&text).map_err(|e| {
        let position = e.span().map(|span| {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            format!(" at line {line}, column {column}")
        });
        anyhow::anyhow!("config file {}{}: {}", path.display(), position.unwrap_or_default(), e.message())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_lists_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/tandem.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let file: FileConfig = toml::from_str(&uncommented).expect("every documented key is a real key");
        let documented = [
            file.http_addr.is_some(),
            file.data_dir.is_some(),
            file.max_body_bytes.is_some(),
            file.node_id.is_some(),
            file.etcd.is_some(),
            file.etcd_ca_file.is_some(),
            file.etcd_cert_file.is_some(),
            file.etcd_key_file.is_some(),
            file.cluster.is_some(),
            file.etcd_key_prefix.is_some(),
            file.grpc_addr.is_some(),
            file.advertise_grpc_addr.is_some(),
            file.cluster_secret.is_some(),
            file.cluster_secret_file.is_some(),
            file.fetch_concurrency.is_some(),
            file.relist_interval_seconds.is_some(),
            file.dedup_prune_interval_ms.is_some(),
            file.s3_endpoint.is_some(),
            file.s3_bucket.is_some(),
            file.s3_prefix.is_some(),
            file.s3_region.is_some(),
            file.s3_path_style.is_some(),
            file.s3_allow_http.is_some(),
            file.s3_access_key_id.is_some(),
            file.s3_secret_access_key.is_some(),
            file.s3_credentials_file.is_some(),
            file.upload_concurrency.is_some(),
            file.object_store_gc_grace_seconds.is_some(),
            file.object_store_gc_interval_seconds.is_some(),
            file.bootstrap_from_object_store.is_some(),
            file.merge_concurrency.is_some(),
            file.merge_interval_ms.is_some(),
            file.orphan_grace_seconds.is_some(),
            file.insert_quorum.is_some(),
            file.insert_quorum_timeout_ms.is_some(),
            file.dedup_window_blocks.is_some(),
            file.dedup_window_seconds.is_some(),
            file.limits.is_complete(),
        ];
        assert!(documented.iter().all(|d| *d), "every key is documented in the example: {documented:?}");
    }

    #[test]
    fn etcd_key_prefix_replaces_the_cluster_prefix() {
        let with = |prefix: &str| {
            NodeConfig::resolve(&ServeArgs { etcd_key_prefix: Some(prefix.into()), ..Default::default() })
                .map(|c| c.replica.cluster_prefix)
                .map_err(|e| e.to_string())
        };
        assert_eq!(with("/teams/metrics/tandem").unwrap(), "/teams/metrics/tandem/");
        assert_eq!(with("/teams/metrics/tandem/").unwrap(), "/teams/metrics/tandem/");
        assert!(with("tandem/").unwrap_err().contains("must start with `/`"));
        assert!(with("/").unwrap_err().contains("must start with `/`"));
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, "http_addr = \"127.0.0.1:9000\"\ndata_dir = \"/from/file\"\ncluster = \"blue\"\n")
            .unwrap();
        let args = ServeArgs { config: Some(path), data_dir: Some("/from/flag".into()), ..Default::default() };
        let config = NodeConfig::resolve(&args).unwrap();
        assert_eq!(config.http_addr.port(), 9000);
        assert_eq!(config.replica.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.server.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(config.replica.cluster_prefix, "/tandem/blue/");
        assert!(matches!(config.replica.coordinator, CoordinatorConfig::Embedded));
    }

    #[test]
    fn cluster_mode_needs_a_node_id_and_reads_the_secret_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        let args = ServeArgs { etcd: Some(vec!["http://127.0.0.1:2379".into()]), ..Default::default() };
        assert!(NodeConfig::resolve(&args).unwrap_err().to_string().contains("--node-id"));
        let args = ServeArgs { node_id: Some("n1".into()), cluster_secret_file: Some(secret), ..args };
        let config = NodeConfig::resolve(&args).unwrap();
        assert_eq!(config.replica.cluster_secret.as_deref(), Some("s3cr3t"));
        assert!(!format!("{config:?}").contains("s3cr3t"), "the secret is never printed");
    }

    #[test]
    fn object_store_settings_and_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("s3.toml");
        std::fs::write(&creds, "access_key_id = \"AKID\"\nsecret_access_key = \"sekrit\"\n").unwrap();
        let args = ServeArgs {
            s3_bucket: Some("parts".into()),
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_credentials_file: Some(creds),
            cluster: Some("blue".into()),
            ..Default::default()
        };
        let config = NodeConfig::resolve(&args).unwrap();
        let store = config.replica.object_store.as_ref().expect("a bucket turns the object store on");
        assert_eq!(store.s3.prefix, "blue", "the default prefix keeps clusters sharing a bucket apart");
        assert!(store.s3.path_style, "a custom endpoint defaults to path-style addressing");
        assert_eq!(store.s3.access_key_id.as_deref(), Some("AKID"));
        assert!(!format!("{config:?}").contains("sekrit"), "credentials are never printed");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "access_key = \"AKID\"\n").unwrap();
        let args = ServeArgs { s3_credentials_file: Some(bad), ..args };
        let err = NodeConfig::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("access_key_id") && !err.contains("AKID"), "{err}");

        let args = ServeArgs { bootstrap_from_object_store: Some(true), ..Default::default() };
        assert!(NodeConfig::resolve(&args).unwrap_err().to_string().contains("--s3-bucket"));
        let args = ServeArgs { node_id: Some("@object-store".into()), ..Default::default() };
        assert!(NodeConfig::resolve(&args).unwrap_err().to_string().contains("node id"));
    }

    #[test]
    fn config_errors_never_quote_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, "node_id = \"n1\"\ncluster_secret = hunter2-not-quoted\n").unwrap();
        let err = read_file_config(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && !err.contains("hunter2"), "{err}");
        for (etcd, s3) in
            [(Some("http://root:hunter2@127.0.0.1:2379"), None), (None, Some("http://ak:hunter2@minio:9000"))]
        {
            let args = ServeArgs {
                etcd: etcd.map(|e| vec![e.to_string()]),
                node_id: Some("n1".into()),
                s3_endpoint: s3.map(str::to_string),
                s3_bucket: s3.map(|_| "parts".to_string()),
                ..Default::default()
            };
            let err = NodeConfig::resolve(&args).unwrap_err().to_string();
            assert!(err.contains("credentials") && !err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn limits_come_from_flags_then_the_file_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, "[limits]\nmax_columns = 50\nmax_result_rows = 7\n").unwrap();
        let mut args = ServeArgs { config: Some(path), ..Default::default() };
        args.limits.max_result_rows = Some(9);
        let limits = NodeConfig::resolve(&args).unwrap().server.limits;
        assert_eq!((limits.max_columns, limits.max_result_rows), (50, 9));
        assert_eq!(limits.max_insert_rows, Limits::default().max_insert_rows);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, "htp_addr = \"127.0.0.1:9000\"\n").unwrap();
        let err = read_file_config(&path).unwrap_err().to_string();
        assert!(err.contains("htp_addr"), "{err}");
    }
}
