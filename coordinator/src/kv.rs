use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::CoordError;

/// A position in the global order of changes. Every transaction that writes increments it by
/// one, and every key written by that transaction carries it as its `mod_revision`.
pub type Revision = i64;
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the transaction that last wrote the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to, 0 for none.
    pub lease: LeaseId,
}

/// A condition checked atomically at the start of a transaction.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key does not exist (etcd: `create_revision == 0`).
    Absent(String),
    /// The key exists and was last written at exactly this revision.
    ModRevision(String, Revision),
}

#[derive(Clone, Debug)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    Delete { key: String },
    DeletePrefix { prefix: String },
    Get { key: String },
}

#[derive(Clone, Debug)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store's revision after the transaction (the transaction's own revision if it wrote).
    pub revision: Revision,
    /// One entry per `Get` in the branch that ran, in order.
    pub gets: Vec<Option<KeyValue>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: WatchEventKind,
    /// For a delete: the key with an empty value and `mod_revision` set to the deletion's revision.
    pub kv: KeyValue,
}

#[derive(Clone, Debug)]
pub enum WatchResponse {
    /// All events of one revision under the watched prefix, in the order the transaction wrote them.
    Events { revision: Revision, events: Vec<WatchEvent> },
    /// The requested start revision has been compacted: re-list the current state and watch
    /// again from the listing's revision + 1. The stream ends after this.
    Compacted { compact_revision: Revision },
}

pub type WatchStream = BoxStream<'static, Result<WatchResponse, CoordError>>;

/// The revisioned key-value contract tandem needs from its metadata store (etcd's model).
///
/// Contract shared by every implementation (checked by [`crate::conformance`]):
/// - A transaction is atomic: all compares are evaluated, then exactly one branch is applied,
///   all under one new revision if it writes anything. Revisions never go backwards.
/// - `range` returns a consistent snapshot together with the revision it reflects.
/// - `watch(prefix, from)` delivers every change under `prefix` with revision `>= from`, in
///   revision order, each revision once, then keeps delivering new ones until the stream is
///   dropped. If `from` has been compacted it yields `Compacted` and ends.
/// - Keys put with a lease are deleted (with delete events) when the lease expires or is revoked.
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, CoordError>;

    /// Every key starting with `prefix`, sorted by key, and the revision of the snapshot.
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), CoordError>;

    /// How many keys start with `prefix`, counted by the store (no key is returned).
    async fn count(&self, prefix: &str) -> Result<u64, CoordError>;

    /// The first `limit` keys (in key order) that start with `prefix`.
    async fn range_first(&self, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, CoordError>;

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> Result<TxnResult, CoordError>;

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, CoordError>;

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError>;

    /// Renews a lease for its full TTL. Fails with `LeaseExpired` if it is gone.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordError>;

    /// Revokes a lease and deletes its keys. Ok if it has already expired.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CoordError>;

    /// Discards history before `revision`; watches from earlier revisions get `Compacted`.
    async fn compact(&self, revision: Revision) -> Result<(), CoordError>;

    async fn current_revision(&self) -> Result<Revision, CoordError> {
        Ok(self.range("\u{0}none\u{0}").await?.1)
    }
}

/// A watch stream fed by a task through a channel (both backends deliver this way).
pub(crate) fn receiver_stream(rx: tokio::sync::mpsc::Receiver<Result<WatchResponse, CoordError>>) -> WatchStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}
