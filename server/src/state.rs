//! What every request handler shares: the replica, the configuration, the query runtime.

use std::sync::Arc;
use std::time::Duration;

use tandem_replica::schema::TableSettings;
use tandem_replica::{Quorum, Replica};

use crate::execution::QueryRuntime;
use crate::limits::Limits;

/// What the front door is configured with.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The largest request body accepted, in bytes (compressed bodies are also held to it
    /// once decompressed).
    pub max_body_bytes: usize,
    /// `insert_quorum` of inserts that do not set it.
    pub insert_quorum: Quorum,
    /// `insert_quorum_timeout` of inserts that do not set it.
    pub insert_quorum_timeout: Duration,
    /// The settings of a table created without a `SETTINGS` clause.
    pub table_defaults: TableSettings,
    /// The bounds of every request.
    pub limits: Limits,
}

/// The largest request body accepted by default: 256 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            insert_quorum: Quorum::One,
            insert_quorum_timeout: tandem_replica::DEFAULT_QUORUM_TIMEOUT,
            table_defaults: TableSettings::default(),
            limits: Limits::default(),
        }
    }
}

/// What every request handler shares.
pub(crate) struct Server {
    pub(crate) replica: Arc<Replica>,
    pub(crate) config: ServerConfig,
    pub(crate) queries: QueryRuntime,
}
