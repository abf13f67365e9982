//! Node configuration, layered: built-in defaults, then the TOML file (`--config`), then
//! `TANDEM_*` environment variables, then command-line flags (the last one wins).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

/// Flags of `tandem serve`. Each also reads a `TANDEM_*` environment variable.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/tandem.example.toml).
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:8123].
    #[arg(long, env = "TANDEM_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Directory for parts and local metadata [default: ./tandem-data].
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes [default: 268435456 (256 MiB)].
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// This node's name in the cluster [default: the host name, or `local`].
    #[arg(long, env = "TANDEM_NODE_ID")]
    pub node_id: Option<String>,
}

/// The `[server]`-less flat TOML file. Unknown keys are an error, so a typo is not ignored.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub max_body_bytes: Option<usize>,
    pub node_id: Option<String>,
}

/// The resolved configuration of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub node_id: String,
    /// Key prefix of this cluster in the metadata store.
    pub cluster_prefix: String,
}

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8123";
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

impl NodeConfig {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        Ok(NodeConfig {
            http_addr: args
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| DEFAULT_HTTP_ADDR.parse().expect("valid default")),
            data_dir: args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from("tandem-data")),
            max_body_bytes: args.max_body_bytes.or(file.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES),
            node_id: args.node_id.clone().or(file.node_id).unwrap_or_else(|| "local".to_string()),
            cluster_prefix: "/tandem/default/".to_string(),
        })
    }

    /// A configuration for tests and benchmarks: everything under `data_dir`, any free port.
    pub fn for_dir(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            http_addr: "127.0.0.1:0".parse().expect("valid address"),
            data_dir: data_dir.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            node_id: "local".to_string(),
            cluster_prefix: "/tandem/default/".to_string(),
        }
    }
}

pub fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
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
        assert!(
            file.http_addr.is_some()
                && file.data_dir.is_some()
                && file.max_body_bytes.is_some()
                && file.node_id.is_some()
        );
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, "http_addr = \"127.0.0.1:9000\"\ndata_dir = \"/from/file\"\n").unwrap();
        let args = ServeArgs { config: Some(path), data_dir: Some("/from/flag".into()), ..Default::default() };
        let config = NodeConfig::resolve(&args).unwrap();
        assert_eq!(config.http_addr.port(), 9000);
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
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
