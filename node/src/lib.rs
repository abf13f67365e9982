//! tandem-node is the tandem server: everything between a client's HTTP request and the part
//! files and coordinator records that hold its data.
//!
//! - [`http`]: ClickHouse-style HTTP API (`/?query=`, settings as URL parameters, `/health`,
//!   `/ready`, `/drain`, `/metrics`).
//! - [`statement`]: which statement a request holds; DDL and INSERT parsing.
//! - [`formats`]: input decoding and output encoding (JSONEachRow, CSV, TSV, Parquet, Arrow).
//! - [`insert`]: the insert path (partition split, block ids, durable parts, registration).
//! - [`catalog`] and [`sync`]: the node's applied view of tables and parts, fed only by the
//!   coordinator's listing and watch, in revision order; [`mirror`]: its local copy, so a
//!   restart resumes from the last applied revision.
//! - [`fetch`], [`interserver`], [`membership`]: cluster mode: fetching parts from peers by
//!   hash, serving them, and announcing this node under an etcd lease.
//! - [`bucket`]: the object-store mirror in use: background and synchronous uploads, bootstrap
//!   from the bucket, and the fenced garbage collector of unreferenced objects.
//! - [`merges`]: background merges (one leader per table, fenced registration, local
//!   rebuilds on replicas) and the sweep of orphaned part files.
//! - [`drain`]: what `/drain` (a Kubernetes preStop hook) waits for before the node stops.
//! - [`query`]: DataFusion over a catalog snapshot, with part pruning and `system` tables;
//!   [`functions`]: the SQL functions sessions get; [`execution`]: each query's memory pool,
//!   deadline, result limits and slot.
//! - [`limits`]: every bound a request is held to; [`body`]: reading and decompressing bodies.
//! - [`node`]: starting and stopping all of it; [`config`]: layered configuration.

pub mod alter;
pub mod body;
pub mod bucket;
pub mod catalog;
pub mod config;
pub mod drain;
pub mod error;
pub mod execution;
pub mod fetch;
pub mod formats;
pub mod functions;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod insert;
pub mod interserver;
pub mod limits;
pub mod membership;
pub mod merges;
pub mod metrics;
pub mod mirror;
pub mod node;
pub mod query;
pub mod schema;
pub mod statement;
pub mod sync;

pub use config::{NodeConfig, ServeArgs};
pub use node::{RunningNode, start};
