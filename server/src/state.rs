//! What every request handler shares: the replica, access control, the configuration, the
//! query runtime and log; and
//! the front door's settings (declared once below, with their defaults, flags, `TANDEM_*`
//! variables and config keys).

use std::sync::Arc;
use std::time::Duration;

use tandem_access::AccessControl;
use tandem_replica::schema::TableSettings;
use tandem_replica::{Quorum, Replica};

use crate::execution::QueryRuntime;
use crate::limits::Limits;
use crate::query::Sessions;
use crate::query_log::QueryLog;

tandem_settings::settings! {
    /// The front door's settings (the limits are their own group, the `[limits]` table).
    pub struct ServerSettings, flags ServerFlags, file ServerFile {
        /// Largest request body accepted, in bytes (a compressed body is also held to it once
        /// decompressed).
        max_body_bytes: usize = "268435456", env "TANDEM_MAX_BODY_BYTES";
        /// HTTP connections served at once; further clients wait in the listen backlog until one
        /// closes (as ClickHouse's `max_connections`).
        max_connections: usize = "4096", env "TANDEM_MAX_CONNECTIONS";
        /// Seconds a connection may take to send a request's head, counted from its opening or
        /// from the previous answer: an idle kept-alive connection is closed then, and so is a
        /// client that trickles its headers (as ClickHouse's `keep_alive_timeout`).
        keep_alive_timeout_seconds: u64 = "30", env "TANDEM_KEEP_ALIVE_TIMEOUT_SECONDS";
        /// Seconds a request's body may stall between two of its chunks before the request is
        /// answered 408 and nothing of it is kept (as ClickHouse's `http_receive_timeout`).
        http_receive_timeout_seconds: u64 = "30", env "TANDEM_HTTP_RECEIVE_TIMEOUT_SECONDS";
        /// `insert_quorum` of inserts that do not set it: 1, a number of nodes, or `auto`.
        insert_quorum: Quorum = "1", env "TANDEM_INSERT_QUORUM";
        /// `insert_quorum_timeout` (milliseconds) of inserts that do not set it: long enough for a
        /// transfer between healthy nodes, short enough that a client learns of a sick replica in
        /// seconds rather than ClickHouse's 10 minutes.
        insert_quorum_timeout_ms: u64 = "30000", env "TANDEM_INSERT_QUORUM_TIMEOUT_MS";
        /// `dedup_window_blocks` of tables created without it.
        dedup_window_blocks: u64 = "1000", env "TANDEM_DEDUP_WINDOW_BLOCKS";
        /// `dedup_window_seconds` of tables created without it (7 days).
        dedup_window_seconds: u64 = "604800", env "TANDEM_DEDUP_WINDOW_SECONDS";
        /// `local_replicas` of tables created without it: how many storage nodes keep each part
        /// on their disk besides the bucket. Unset (or 0): every node keeps every part.
        local_replicas: Option<u64> = "", env "TANDEM_LOCAL_REPLICAS";
        /// PEM certificate chain of the HTTP API: with --tls-key-file, the API is served over HTTPS
        /// only. Read again when the file changes (a renewed certificate needs no restart).
        tls_cert_file: Option<std::path::PathBuf> = "", env "TANDEM_TLS_CERT_FILE";
        /// PEM private key of --tls-cert-file.
        tls_key_file: Option<std::path::PathBuf> = "", env "TANDEM_TLS_KEY_FILE";
        /// Statements `system.query_log` keeps, newest last (0 turns it off).
        query_log_max_entries: usize = "10000", env "TANDEM_QUERY_LOG_MAX_ENTRIES";
        /// Seconds `system.query_log` keeps a statement (one day).
        query_log_retention_seconds: u64 = "86400", env "TANDEM_QUERY_LOG_RETENTION_SECONDS";
    }
}

impl ServerSettings {
    pub fn insert_quorum_timeout(&self) -> Duration {
        Duration::from_millis(self.insert_quorum_timeout_ms)
    }

    /// The settings of a table created without a `SETTINGS` clause: the dedup windows and
    /// `local_replicas` of this server, the built-in defaults for the rest.
    pub fn table_defaults(&self) -> TableSettings {
        TableSettings {
            dedup_window_blocks: self.dedup_window_blocks,
            dedup_window_seconds: self.dedup_window_seconds,
            local_replicas: self.local_replicas.filter(|n| *n > 0),
            ..TableSettings::default()
        }
    }
}

/// What the front door is configured with.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    pub settings: ServerSettings,
    /// The bounds of every request.
    pub limits: Limits,
}

/// What every request handler shares.
pub(crate) struct Server {
    pub(crate) replica: Arc<Replica>,
    /// Who may do what: every request is authenticated and authorized here.
    pub(crate) access: Arc<AccessControl>,
    pub(crate) query_log: Arc<QueryLog>,
    pub(crate) config: ServerConfig,
    pub(crate) queries: QueryRuntime,
    /// What every query's session starts from.
    pub(crate) sessions: Sessions,
}
