//! tandem-server is tandem's front door: the HTTP API in ClickHouse's conventions over a
//! [`tandem_replica::Replica`], which it reaches only through that type's methods, with every
//! request authenticated and authorized by [`tandem_access::AccessControl`].
//!
//! - [`http`]: `/?query=` with settings as URL parameters, `/health`, `/ready`, `/drain`,
//!   `/metrics`; `connections`: the port's connections and their bounds; [`clickhouse_http`]:
//!   the `X-ClickHouse-*` headers, errors and response compression ClickHouse's clients expect;
//!   [`body`]: reading and decompressing bodies; [`credentials`]: who a request says it is;
//!   [`parameters`]: `{name:Type}` query parameters.
//! - [`statement`]: which statement a request holds; DDL, user and grant, and INSERT parsing.
//! - [`formats`]: input decoding and output encoding (the JSON family, CSV, TSV, Native,
//!   RowBinary, Pretty, Parquet, Arrow).
//! - [`insert`]: decoding an insert under the table's schema and handing it to the replica.
//! - [`query`]: DataFusion over a snapshot of the replica's tables, with part pruning and the
//!   [`system_tables`]; [`functions`]: the SQL functions sessions get; [`execution`]: each
//!   query's memory pool, deadline, result limits and slot; [`query_log`]: the statements
//!   answered, for `system.query_log`.
//! - [`state`]: what the handlers share; [`limits`]: every bound a request is held to; [`error`]: one error type and its one
//!   mapping to an HTTP status.

pub mod body;
mod bucket_store;
pub mod clickhouse_http;
mod column_default;
mod connections;
pub mod credentials;
pub mod error;
pub mod execution;
pub mod formats;
pub mod functions;
#[cfg(test)]
mod fuzz;
pub mod header_names;
pub mod http;
pub mod insert;
pub mod limits;
mod optimizer;
pub mod parameters;
mod part_reader;
pub mod query;
pub mod query_log;
mod run_aggregate;
mod scan_pruning;
pub mod state;
pub mod statement;
pub mod system_tables;
pub mod tls;
mod top_k;
pub mod url_params;

use std::path::Path;
use std::sync::Arc;

use tandem_access::AccessControl;
use tandem_replica::Replica;

use crate::connections::ConnectionLimits;
use crate::execution::QueryRuntime;
use crate::query_log::QueryLog;
use crate::state::Server;
pub use crate::state::{ServerConfig, ServerFile, ServerFlags, ServerSettings};

/// The front door, checked and ready to serve: its query runtime (spill files under
/// `spill_dir`, emptied first), its certificate when it serves HTTPS, and the bounds on its
/// connections. Everything that can be wrong with the configuration is found here, before the
/// node starts serving.
pub struct FrontDoor {
    server: Server,
    https: Option<tls::Https>,
    connections: ConnectionLimits,
}

impl FrontDoor {
    pub fn prepare(
        replica: Arc<Replica>,
        access: Arc<AccessControl>,
        config: ServerConfig,
        spill_dir: &Path,
    ) -> anyhow::Result<FrontDoor> {
        let settings = &config.settings;
        let connections = ConnectionLimits::of(settings)?;
        let https = tls::Https::load(settings.tls_cert_file.as_deref(), settings.tls_key_file.as_deref())?;
        let bucket = Arc::new(bucket_store::BucketStore::new(replica.clone()));
        let queries = QueryRuntime::new(&config.limits, spill_dir, bucket)?;
        let query_log = QueryLog::new(
            settings.query_log_max_entries,
            std::time::Duration::from_secs(settings.query_log_retention_seconds),
        );
        let sessions = query::Sessions::new(queries.base());
        Ok(FrontDoor { server: Server { replica, access, config, queries, sessions, query_log }, https, connections })
    }

    /// Whether the API is served over HTTPS.
    pub fn is_https(&self) -> bool {
        self.https.is_some()
    }

    /// Serves the HTTP API on `listener` until `shutdown` completes, then lets requests in
    /// flight finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let api = http::Api::new(Arc::new(self.server));
        match self.https {
            Some(https) => {
                connections::serve(tls::TlsListener::bind(listener, https)?, api, self.connections, shutdown).await
            }
            None => connections::serve(listener, api, self.connections, shutdown).await,
        }
        Ok(())
    }
}
