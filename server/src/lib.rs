//! tandem-server is tandem's front door: the HTTP API in ClickHouse's conventions over a
//! [`tandem_replica::Replica`], which it reaches only through that type's methods.
//!
//! - [`http`]: `/?query=` with settings as URL parameters, `/health`, `/ready`, `/drain`,
//!   `/metrics`; [`body`]: reading and decompressing bodies.
//! - [`statement`]: which statement a request holds; DDL and INSERT parsing.
//! - [`formats`]: input decoding and output encoding (JSONEachRow, CSV, TSV, Parquet, Arrow).
//! - [`insert`]: decoding an insert under the table's schema and handing it to the replica.
//! - [`query`]: DataFusion over a snapshot of the replica's tables, with part pruning and the
//!   `system` tables; [`functions`]: the SQL functions sessions get; [`execution`]: each
//!   query's memory pool, deadline, result limits and slot.
//! - [`state`]: what the handlers share; [`limits`]: every bound a request is held to; [`error`]: one error type and its one
//!   mapping to an HTTP status.

pub mod body;
mod column_default;
pub mod error;
pub mod execution;
pub mod formats;
pub mod functions;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod insert;
pub mod limits;
pub mod query;
pub mod state;
pub mod statement;

use std::path::Path;
use std::sync::Arc;

use tandem_replica::Replica;

use crate::execution::QueryRuntime;
use crate::state::Server;
pub use crate::state::{ServerConfig, ServerFile, ServerFlags, ServerSettings};

/// Serves the HTTP API on `listener` until `shutdown` completes, then lets requests in flight
/// finish. Query spill files go under `spill_dir` (emptied first).
pub async fn serve(
    listener: tokio::net::TcpListener,
    replica: Arc<Replica>,
    config: ServerConfig,
    spill_dir: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let queries = QueryRuntime::new(&config.limits, spill_dir)?;
    let router = http::router(Arc::new(Server { replica, config, queries }));
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
