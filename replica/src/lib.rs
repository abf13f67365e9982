//! tandem-replica is one node's replica of the cluster: the tables and parts it has applied
//! from the coordinator, and everything that keeps them current and safe. The front end
//! reaches it only through [`Replica`]'s methods.
//!
//! - [`Replica`] (`replica`): the state, and what may be read of it; [`start()`]: opening it
//!   and running its loops.
//! - `insert`, `alter`, `drain`: the changes a request can make (inserting rows, creating,
//!   altering and dropping tables, draining before a stop).
//! - `catalog` and `sync`: the applied view of tables and parts, fed only by the coordinator's
//!   listing and watch, in revision order; `mirror`: its local copy, so a restart resumes
//!   from the last applied revision.
//! - `fetch`, `interserver`, `membership`, `peer_tls`: cluster mode: fetching parts from peers
//!   by hash, serving them (over mutual TLS when configured), and announcing this node under
//!   an etcd lease.
//! - `bucket` and `object_store_tasks`: the object-store mirror (uploads, bootstrap, the fenced
//!   garbage collector); `bucket_reads` and `eviction`: a local storage budget, parts evicted
//!   beyond it and read from the bucket with verified ranged reads.
//! - `merges` and `running_merges`: background merges (one leader per table, fenced
//!   registration, local rebuilds on replicas) and the sweep of orphaned part files.
//! - [`schema`]: table definitions; [`metrics`]: the node's Prometheus metrics.

mod alter;
mod async_insert;
mod bucket;
mod bucket_reads;
mod catalog;
pub mod config;
mod drain;
mod error;
mod eviction;
mod fetch;
mod insert;
mod insert_buffer;
mod insert_log;
mod interserver;
mod live_nodes;
mod logged_insert;
mod membership;
mod merges;
pub mod metrics;
mod mirror;
mod object_store_tasks;
mod peer_tls;
mod receive;
mod replica;
mod running_merges;
pub mod schema;
mod start;
mod sync;

pub use alter::{AlterAction, ColumnPosition, TtlSpec, apply as apply_alter};
pub use async_insert::AsyncInsertOptions;
pub use bucket_reads::BucketReadError;
pub use catalog::{ActivePart, BrokenPart, PartFile, PendingPart, TableState};
pub use config::{
    ClusterSecret, CoordinatorConfig, NodeRole, ReplicaConfig, ReplicaFile, ReplicaFlags, ReplicaSettings,
};
pub use drain::DrainReport;
pub use error::{Error, Result};
pub use insert::{Acknowledged, InsertOptions, InsertSummary, PartSummary, Quorum, QuorumSummary, QuorumTarget};
pub use insert_buffer::AsyncBacklog;
pub use live_nodes::NodeInfo;
pub use membership::LEASE_TTL;
pub use replica::{ObjectStoreStatus, Replica, replication_lag};
pub use running_merges::RunningMerge;
pub use start::{RunningReplica, start};
pub use tandem_coordinator::Revision;
pub use tandem_parts::PartId;
pub use tandem_parts::arrow;
