//! tandem-coordinator owns the cluster metadata contract: where each fact lives in the key
//! space and which facts change together atomically.
//!
//! Two layers:
//! - [`KvBackend`]: a small revisioned key-value contract modelled on etcd (ranges, multi-key
//!   transactions with compares, watches that resume from a revision, leases). Implemented by
//!   [`EmbeddedKv`] (redb, for a single node) and [`EtcdKv`] (etcd, for a cluster).
//! - [`Coordinator`]: tandem's domain operations written once on top of any backend: create
//!   and compare-and-swap table schemas, register parts together with their block ids in one
//!   transaction, list and watch parts from a revision, prune expired block ids; keep user
//!   records (compare-and-swap, several users in one transaction) and watch them.
//!
//! Table schemas, part manifests and user records are opaque bytes here: this crate knows nothing of
//! Parquet, Arrow or HTTP. [`conformance`] is the test suite every backend must pass.

mod async_block_ids;
mod async_blocks;
mod coordinator;
mod embedded;
mod error;
mod etcd;
mod kv;
mod users;

pub mod conformance;

pub use tandem_ids::PartId;

pub use async_block_ids::{AsyncBlockId, AsyncBlockSet};
pub use async_blocks::{FlushOutcome, MAX_ASYNC_BLOCKS_PER_FLUSH, MAX_PARTS_PER_FLUSH};
pub use coordinator::{
    BlockRecord, ClusterEvent, Coordinator, EventBatch, Holder, NewPart, OBJECT_STORE_HOLDER, PartOutcome,
    RegisteredPart, Registration, Snapshot, TableRecord, valid_name, valid_node_id,
};
pub use embedded::EmbeddedKv;
pub use error::CoordError;
pub use etcd::{EtcdKv, EtcdTls};
pub use kv::{
    Compare, KeyValue, KvBackend, LeaseId, Revision, TxnOp, TxnResult, WatchEvent, WatchEventKind, WatchResponse,
    WatchStream,
};
pub use users::{UserEvent, UserRecord, UserWrite};
