//! Node configuration, layered: built-in defaults, then the TOML file (`--config`), then
//! `TANDEM_*` environment variables, then command-line flags (the last one wins). Each setting
//! is declared once, with its group: the node's below, the replica's in
//! `tandem_replica::config`, the front door's in `tandem_server::state` and `limits`. The keys
//! no group declares are the etcd endpoints (a list) and the secrets, which are never a
//! command-line value: they come from the file, a `TANDEM_*` variable, or a secret file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use tandem_access::Password;
use tandem_coordinator::EtcdTls;
use tandem_parts::S3Settings;
use tandem_replica::{ClusterSecret, CoordinatorConfig, ReplicaConfig, ReplicaFile, ReplicaFlags, ReplicaSettings};
use tandem_server::limits::{LimitArgs, LimitFile, Limits};
use tandem_server::{ServerConfig, ServerFile, ServerFlags, ServerSettings};

tandem_settings::settings! {
    /// Where this node serves and keeps its data, and how it finds its cluster and its bucket.
    pub struct NodeSettings, flags NodeFlags, file NodeFile {
        /// Address of the HTTP API.
        http_addr: SocketAddr = "127.0.0.1:8123", env "TANDEM_HTTP_ADDR";
        /// Directory for parts and local metadata.
        data_dir: PathBuf = "tandem-data", env "TANDEM_DATA_DIR";
        /// This node's name in the cluster; required with --etcd (`local` without).
        node_id: Option<String> = "", env "TANDEM_NODE_ID";
        /// PEM file of the CA that signed the etcd members' certificates: connect over TLS (the
        /// --etcd endpoints must then be https://).
        etcd_ca_file: Option<PathBuf> = "", env "TANDEM_ETCD_CA_FILE";
        /// PEM client certificate for etcd members that require one (with --etcd-key-file).
        etcd_cert_file: Option<PathBuf> = "", env "TANDEM_ETCD_CERT_FILE";
        /// PEM private key of --etcd-cert-file.
        etcd_key_file: Option<PathBuf> = "", env "TANDEM_ETCD_KEY_FILE";
        /// Cluster name: all keys live under `/tandem/<cluster>/` in etcd.
        cluster: String = "default", env "TANDEM_CLUSTER";
        /// etcd key prefix of this cluster, for an etcd shared under a naming scheme of its own
        /// (`/teams/metrics/tandem/`); unset, `/tandem/<cluster>/`.
        etcd_key_prefix: Option<String> = "", env "TANDEM_ETCD_KEY_PREFIX";
        /// File holding the cluster secret that peers must present (the secret itself can also
        /// come from TANDEM_CLUSTER_SECRET or the config file, never from a flag).
        cluster_secret_file: Option<PathBuf> = "", env "TANDEM_CLUSTER_SECRET_FILE";
        /// File holding the previous cluster secret while a rotation rolls out: it is accepted from
        /// peers, and presented to a peer that refuses the current one (the secret itself can also
        /// come from TANDEM_CLUSTER_SECRET_PREVIOUS or the config file's cluster_secret_previous).
        cluster_secret_previous_file: Option<PathBuf> = "", env "TANDEM_CLUSTER_SECRET_PREVIOUS_FILE";
        /// Serve without the authentication otherwise required: a cluster node without a cluster
        /// secret (any process that reaches its gRPC port can then read its parts), and an HTTP
        /// API on a non-loopback address while no users are defined (anyone who reaches it can
        /// do anything). Only for a network where every peer and client is trusted.
        insecure: bool = "false", env "TANDEM_INSECURE", [num_args = 0..=1, default_missing_value = "true"];
        /// File holding the password of the first user, `default` (all privileges), created when
        /// the cluster has no users yet (the password itself can also come from
        /// TANDEM_ADMIN_PASSWORD, never from a flag). Ignored once users exist.
        admin_password_file: Option<PathBuf> = "", env "TANDEM_ADMIN_PASSWORD_FILE";
        /// S3-compatible endpoint (`http://minio:9000`); unset for AWS S3 itself.
        s3_endpoint: Option<String> = "", env "TANDEM_S3_ENDPOINT";
        /// Bucket that mirrors every part: setting it turns the object store on.
        s3_bucket: Option<String> = "", env "TANDEM_S3_BUCKET";
        /// Key prefix of this cluster's objects in the bucket; unset, the cluster name.
        s3_prefix: Option<String> = "", env "TANDEM_S3_PREFIX";
        /// Region of the bucket; unset, AWS_REGION or us-east-1.
        s3_region: Option<String> = "", env "TANDEM_S3_REGION";
        /// Path-style addressing (`endpoint/bucket/key`), needed by MinIO and most self-hosted
        /// servers; unset, true when --s3-endpoint is set.
        s3_path_style: Option<bool> = "", env "TANDEM_S3_PATH_STYLE", [num_args = 0..=1, default_missing_value = "true"];
        /// Allow plain-HTTP endpoints.
        s3_allow_http: bool = "false", env "TANDEM_S3_ALLOW_HTTP", [num_args = 0..=1, default_missing_value = "true"];
        /// TOML file with `access_key_id` and `secret_access_key` (the keys themselves can also come
        /// from TANDEM_S3_ACCESS_KEY_ID / TANDEM_S3_SECRET_ACCESS_KEY, the AWS_* variables or the
        /// config file, never from a flag).
        s3_credentials_file: Option<PathBuf> = "", env "TANDEM_S3_CREDENTIALS_FILE";
    }
}

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
    /// etcd endpoints, comma-separated (`http://127.0.0.1:2379`): run as a cluster node.
    /// Without it the node runs alone with the embedded coordinator.
    #[arg(long, env = "TANDEM_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    #[command(flatten)]
    pub node: NodeFlags,
    #[command(flatten)]
    pub replica: ReplicaFlags,
    #[command(flatten)]
    pub server: ServerFlags,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The keys of the config file that no settings group declares: a list, and secrets.
#[derive(Deserialize, Debug, Default)]
pub struct UngroupedFile {
    pub etcd: Option<Vec<String>>,
    pub cluster_secret: Option<String>,
    pub cluster_secret_previous: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
}

const UNGROUPED_KEYS: &[&str] =
    &["etcd", "cluster_secret", "cluster_secret_previous", "s3_access_key_id", "s3_secret_access_key", "limits"];

/// The `[limits]` table of the config file.
#[derive(Deserialize, Debug, Default)]
struct LimitsTable {
    #[serde(default)]
    limits: LimitFile,
}

/// The TOML file: each group's keys at the top level, the limits in `[limits]`. A key no group
/// knows is an error, so a typo is not ignored.
#[derive(Debug, Default)]
pub struct FileConfig {
    pub node: NodeFile,
    pub replica: ReplicaFile,
    pub server: ServerFile,
    pub limits: LimitFile,
    pub ungrouped: UngroupedFile,
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
    /// The password of the first user, when the cluster has none yet.
    pub admin_password: Option<Password>,
    /// Whether `--insecure` was given.
    pub insecure: bool,
}

impl NodeConfig {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let mut file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let node = NodeSettings::resolve(&args.node, &file.node);
        let limits = Limits::resolve(&args.limits, &file.limits);
        let replica_settings = ReplicaSettings::resolve(&args.replica, &file.replica);
        let current = secret(
            "cluster secret",
            "TANDEM_CLUSTER_SECRET",
            &node.cluster_secret_file,
            file.ungrouped.cluster_secret.take(),
        )?;
        let previous = secret(
            "previous cluster secret",
            "TANDEM_CLUSTER_SECRET_PREVIOUS",
            &node.cluster_secret_previous_file,
            file.ungrouped.cluster_secret_previous.take(),
        )?;
        let admin_password =
            secret("admin password", "TANDEM_ADMIN_PASSWORD", &node.admin_password_file, None)?.map(Password::new);
        let cluster_secret = match (current, previous) {
            (Some(current), previous) => {
                let previous = previous.filter(|p| *p != current);
                Some(ClusterSecret { current, previous })
            }
            (None, None) => None,
            (None, Some(_)) => bail!(
                "a previous cluster secret is set but no current one: set TANDEM_CLUSTER_SECRET (or \
                 --cluster-secret-file, or cluster_secret) to the secret the cluster moves to"
            ),
        };
        let coordinator = match args.etcd.clone().or(file.ungrouped.etcd.take()).filter(|e| !e.is_empty()) {
            Some(endpoints) => {
                for endpoint in &endpoints {
                    refuse_credentials_in_url("--etcd", endpoint)?;
                }
                let tls = etcd_tls(&node, &endpoints)?;
                CoordinatorConfig::Etcd { endpoints, tls }
            }
            None => CoordinatorConfig::Embedded,
        };
        let node_id = node.node_id.clone().filter(|id| !id.is_empty());
        if node_id.is_none() && !matches!(coordinator, CoordinatorConfig::Embedded) {
            bail!("--node-id (or TANDEM_NODE_ID) is required with --etcd: each node of a cluster needs a stable name");
        }
        if let Some(id) = &node_id
            && !tandem_coordinator::valid_node_id(id)
        {
            bail!("node id `{id}` must be 1 to 128 letters, digits, `_`, `-` and `.`");
        }
        let peers_authenticated = cluster_secret.is_some() || replica_settings.has_interserver_tls();
        if !peers_authenticated && !matches!(coordinator, CoordinatorConfig::Embedded) && !node.insecure {
            bail!(
                "a cluster node needs a cluster secret or interserver TLS, or any process that reaches its gRPC port \
                 can read its parts: set TANDEM_CLUSTER_SECRET, --cluster-secret-file or cluster_secret (the same on \
                 every node), or --interserver-ca-file/--interserver-cert-file/--interserver-key-file, or start with \
                 --insecure on a network where every peer is trusted"
            );
        }
        let cluster = &node.cluster;
        if !tandem_coordinator::valid_name(&cluster.replace('-', "_")) {
            bail!("cluster name `{cluster}` must be letters, digits, `_` and `-`");
        }
        let object_store = object_store_config(&node, &mut file.ungrouped)?;
        if object_store.is_none() && replica_settings.bootstrap_from_object_store {
            bail!("--bootstrap-from-object-store needs an object store: set --s3-bucket (and --s3-endpoint)");
        }
        let cluster_prefix = match &node.etcd_key_prefix {
            None => format!("/tandem/{cluster}/"),
            Some(prefix) if prefix.starts_with('/') && prefix.len() > 1 => format!("{}/", prefix.trim_end_matches('/')),
            Some(prefix) => {
                bail!("--etcd-key-prefix `{prefix}` must start with `/` and name something (`/tandem/blue/`)")
            }
        };
        Ok(NodeConfig {
            http_addr: node.http_addr,
            replica: ReplicaConfig {
                data_dir: node.data_dir.clone(),
                node_id: node_id.unwrap_or_else(|| "local".to_string()),
                coordinator,
                cluster_prefix,
                cluster_secret,
                object_store,
                max_columns: limits.max_columns,
                settings: replica_settings,
            },
            server: ServerConfig { settings: ServerSettings::resolve(&args.server, &file.server), limits },
            admin_password,
            insecure: node.insecure,
        })
    }

    /// A single-node configuration for tests and benchmarks: the defaults, everything under
    /// `data_dir`, any free ports.
    pub fn for_dir(data_dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let mut args = ServeArgs::default();
        args.node.data_dir = Some(data_dir.into());
        args.node.http_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        args.replica.grpc_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        NodeConfig::resolve(&args)
    }

    pub fn is_cluster(&self) -> bool {
        self.replica.is_cluster()
    }
}

/// A secret from its variable, else its file, else the config file (empty means unset).
fn secret(
    what: &str,
    variable: &str,
    file: &Option<PathBuf>,
    in_config: Option<String>,
) -> anyhow::Result<Option<String>> {
    if let Some(secret) = std::env::var(variable).ok().filter(|s| !s.is_empty()) {
        return Ok(Some(secret));
    }
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the {what} file {}", path.display()))?;
        return Ok(Some(text.trim().to_string()).filter(|s| !s.is_empty()));
    }
    Ok(in_config.filter(|s| !s.is_empty()))
}

/// TLS to etcd from `--etcd-ca-file`, `--etcd-cert-file` and `--etcd-key-file` (None without them).
fn etcd_tls(node: &NodeSettings, endpoints: &[String]) -> anyhow::Result<Option<EtcdTls>> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read the etcd {what} {}", path.display()))
    };
    Ok(match (node.etcd_ca_file.clone(), node.etcd_cert_file.clone(), node.etcd_key_file.clone()) {
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

/// The bucket from the `--s3-*` settings (None without a bucket).
fn object_store_config(node: &NodeSettings, file: &mut UngroupedFile) -> anyhow::Result<Option<S3Settings>> {
    let Some(bucket) = node.s3_bucket.clone().filter(|b| !b.is_empty()) else { return Ok(None) };
    let (mut access_key_id, mut secret_access_key) = (
        std::env::var("TANDEM_S3_ACCESS_KEY_ID").ok().filter(|s| !s.is_empty()),
        std::env::var("TANDEM_S3_SECRET_ACCESS_KEY").ok().filter(|s| !s.is_empty()),
    );
    if let Some(path) = &node.s3_credentials_file {
        let text = std::fs::read_to_string(path)
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
    let endpoint = node.s3_endpoint.clone().filter(|e| !e.is_empty());
    if let Some(endpoint) = &endpoint {
        refuse_credentials_in_url("--s3-endpoint", endpoint)?;
    }
    let region =
        node.s3_region.clone().or_else(|| std::env::var("AWS_REGION").ok()).unwrap_or_else(|| "us-east-1".to_string());
    Ok(Some(S3Settings {
        path_style: node.s3_path_style.unwrap_or(endpoint.is_some()),
        allow_http: node.s3_allow_http,
        endpoint,
        bucket,
        prefix: node.s3_prefix.clone().unwrap_or_else(|| node.cluster.clone()),
        region,
        access_key_id: access_key_id.or(file.s3_access_key_id.take()),
        secret_access_key: secret_access_key.or(file.s3_secret_access_key.take()),
        request_timeout: Duration::from_secs(300),
    }))
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
    let error = |e: toml::de::Error| {
        let position = e.span().map(|span| {
            let before = text.as_bytes().get(..span.start.min(text.len())).unwrap_or_default();
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            format!(" at line {line}, column {column}")
        });
        anyhow::anyhow!("config file {}{}: {}", path.display(), position.unwrap_or_default(), e.message())
    };
    let table: toml::Table = toml::from_str(&text).map_err(error)?;
    let known = |key: &str| {
        [NodeFile::KEYS, ReplicaFile::KEYS, ServerFile::KEYS, UNGROUPED_KEYS].iter().any(|keys| keys.contains(&key))
    };
    let unknown = |key: &str, table: &str| {
        anyhow::anyhow!(
            "config file {}: unknown key `{key}`{table}; docs/tandem.example.toml lists every key",
            path.display()
        )
    };
    if let Some(key) = table.keys().find(|key| !known(key)) {
        return Err(unknown(key, ""));
    }
    if let Some(key) = table
        .get("limits")
        .and_then(toml::Value::as_table)
        .and_then(|limits| limits.keys().find(|key| !LimitFile::KEYS.contains(&key.as_str())))
    {
        return Err(unknown(key, " in [limits]"));
    }
    Ok(FileConfig {
        node: toml::from_str(&text).map_err(error)?,
        replica: toml::from_str(&text).map_err(error)?,
        server: toml::from_str(&text).map_err(error)?,
        limits: toml::from_str::<LimitsTable>(&text).map_err(error)?.limits,
        ungrouped: toml::from_str(&text).map_err(error)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(set: impl FnOnce(&mut ServeArgs)) -> ServeArgs {
        let mut args = ServeArgs::default();
        set(&mut args);
        args
    }

    #[test]
    fn example_config_parses_and_lists_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/tandem.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("tandem.toml");
        std::fs::write(&copy, uncommented).unwrap();
        let file = read_file_config(&copy).expect("every documented key is a real key");
        let ungrouped = &file.ungrouped;
        let documented = [
            ("node", file.node.is_complete()),
            ("replica", file.replica.is_complete()),
            ("server", file.server.is_complete()),
            ("limits", file.limits.is_complete()),
            ("etcd", ungrouped.etcd.is_some()),
            ("cluster_secret", ungrouped.cluster_secret.is_some()),
            ("cluster_secret_previous", ungrouped.cluster_secret_previous.is_some()),
            ("s3_access_key_id", ungrouped.s3_access_key_id.is_some()),
            ("s3_secret_access_key", ungrouped.s3_secret_access_key.is_some()),
        ];
        let missing: Vec<_> = documented.iter().filter(|(_, d)| !d).map(|(group, _)| group).collect();
        assert!(missing.is_empty(), "every key is documented in the example; missing some of: {missing:?}");
    }

    #[test]
    fn every_declared_default_parses() {
        let defaults = NodeConfig::for_dir("/data").unwrap();
        assert_eq!(defaults.server.settings, ServerSettings::default());
        assert_eq!(defaults.replica.settings.grpc_addr.port(), 0);
        assert_eq!(NodeSettings::default().http_addr.port(), 8123);
        assert_eq!(ReplicaSettings::default().grpc_addr.port(), 9100);
        assert_eq!(defaults.replica.node_id, "local");
    }

    #[test]
    fn etcd_key_prefix_replaces_the_cluster_prefix() {
        let with = |prefix: &str| {
            NodeConfig::resolve(&serve(|a| a.node.etcd_key_prefix = Some(prefix.into())))
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
        let mut args = ServeArgs { config: Some(path), ..Default::default() };
        args.node.data_dir = Some("/from/flag".into());
        let config = NodeConfig::resolve(&args).unwrap();
        assert_eq!(config.http_addr.port(), 9000);
        assert_eq!(config.replica.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.server.settings.max_body_bytes, ServerSettings::default().max_body_bytes);
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
        let mut args = args;
        args.node.node_id = Some("n1".into());
        args.node.cluster_secret_file = Some(secret);
        let config = NodeConfig::resolve(&args).unwrap();
        assert_eq!(config.replica.cluster_secret.as_ref().map(|s| s.current.as_str()), Some("s3cr3t"));
        assert!(!format!("{config:?}").contains("s3cr3t"), "the secret is never printed");
    }

    #[test]
    fn a_cluster_node_without_a_secret_starts_only_when_told_it_is_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = |set: &dyn Fn(&mut ServeArgs)| {
            NodeConfig::resolve(&serve(|a| {
                a.etcd = Some(vec!["http://127.0.0.1:2379".into()]);
                a.node.node_id = Some("n1".into());
                set(a);
            }))
        };
        let refused = cluster(&|_| {}).unwrap_err().to_string();
        assert!(refused.contains("cluster secret") && refused.contains("--insecure"), "{refused}");
        assert!(cluster(&|a| a.node.insecure = Some(true)).unwrap().replica.cluster_secret.is_none());
        assert!(NodeConfig::resolve(&ServeArgs::default()).unwrap().replica.cluster_secret.is_none(), "one node");

        let (current, previous) = (dir.path().join("current"), dir.path().join("previous"));
        std::fs::write(&current, "new-secret\n").unwrap();
        std::fs::write(&previous, "old-secret\n").unwrap();
        let only_previous = cluster(&|a| a.node.cluster_secret_previous_file = Some(previous.clone()));
        assert!(only_previous.unwrap_err().to_string().contains("no current one"));
        let rotating = cluster(&|a| {
            a.node.cluster_secret_file = Some(current.clone());
            a.node.cluster_secret_previous_file = Some(previous.clone());
        })
        .unwrap();
        let secret = rotating.replica.cluster_secret.as_ref().unwrap();
        assert_eq!((secret.current.as_str(), secret.previous.as_deref()), ("new-secret", Some("old-secret")));
        let printed = format!("{rotating:?}");
        assert!(!printed.contains("new-secret") && !printed.contains("old-secret"), "{printed}");
    }

    #[test]
    fn object_store_settings_and_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("s3.toml");
        std::fs::write(&creds, "access_key_id = \"AKID\"\nsecret_access_key = \"sekrit\"\n").unwrap();
        let mut args = serve(|a| {
            a.node.s3_bucket = Some("parts".into());
            a.node.s3_endpoint = Some("http://127.0.0.1:9000".into());
            a.node.s3_credentials_file = Some(creds);
            a.node.cluster = Some("blue".into());
        });
        let config = NodeConfig::resolve(&args).unwrap();
        let store = config.replica.object_store.as_ref().expect("a bucket turns the object store on");
        assert_eq!(store.prefix, "blue", "the default prefix keeps clusters sharing a bucket apart");
        assert!(store.path_style, "a custom endpoint defaults to path-style addressing");
        assert_eq!(store.access_key_id.as_deref(), Some("AKID"));
        assert!(!format!("{config:?}").contains("sekrit"), "credentials are never printed");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "access_key = \"AKID\"\n").unwrap();
        args.node.s3_credentials_file = Some(bad);
        let err = NodeConfig::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("access_key_id") && !err.contains("AKID"), "{err}");

        let args = serve(|a| a.replica.bootstrap_from_object_store = Some(true));
        assert!(NodeConfig::resolve(&args).unwrap_err().to_string().contains("--s3-bucket"));
        let args = serve(|a| a.node.node_id = Some("@object-store".into()));
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
            let args = serve(|a| {
                a.etcd = etcd.map(|e| vec![e.to_string()]);
                a.node.node_id = Some("n1".into());
                a.node.s3_endpoint = s3.map(str::to_string);
                a.node.s3_bucket = s3.map(|_| "parts".to_string());
            });
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
        std::fs::write(&path, "[limits]\nmax_colums = 5\n").unwrap();
        let err = read_file_config(&path).unwrap_err().to_string();
        assert!(err.contains("max_colums") && err.contains("[limits]"), "{err}");
    }

    #[test]
    fn a_setting_comes_from_its_flag_its_variable_or_its_key() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, "merge_concurrency = 3\ninsert_quorum = \"auto\"\n").unwrap();
        let config = path.to_str().unwrap();
        let parsed = Cli::try_parse_from(["tandem", "--config", config, "--fetch-concurrency", "7"]).unwrap();
        let resolved = NodeConfig::resolve(&parsed.serve).unwrap();
        assert_eq!(resolved.replica.settings.fetch_concurrency, 7, "from the flag");
        assert_eq!(resolved.replica.settings.merge_concurrency, 3, "from the file");
        assert_eq!(resolved.server.settings.insert_quorum, tandem_replica::Quorum::Auto, "from the file");
        assert_eq!(resolved.replica.settings.orphan_grace_seconds, 3600, "the declared default");
        let wrong = Cli::try_parse_from(["tandem", "--insert-quorum", "most"]).err().unwrap().to_string();
        assert!(wrong.contains("insert_quorum takes 1, a number of nodes, or `auto`, got `most`"), "{wrong}");
    }
}
