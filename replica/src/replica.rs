//! The replica: this node's copy of the cluster's tables and parts, and what the front end may
//! ask of it. Its state is private to this crate; the background loops that keep it current
//! are started and joined by [`crate::start()`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_coordinator::{Coordinator, Revision};
use tandem_parts::PartId;
use tandem_parts::arrow::datatypes::SchemaRef;
use tokio::sync::mpsc;

use crate::bucket::Bucket;
use crate::bucket_reads::{BucketReadError, BucketReads};
use crate::catalog::{BrokenPart, Catalog, FetchRequest, TableState};
use crate::config::ReplicaConfig;
use crate::error::Result;
use crate::insert_buffer::AsyncInserts;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::peer_tls::InterserverTls;
use crate::running_merges::{Merges, RunningMerge};
use crate::schema::TableDef;

/// One node's replica. Shared as `Arc<Replica>` by the front end and the background loops.
pub struct Replica {
    pub(crate) config: ReplicaConfig,
    pub(crate) coordinator: Coordinator,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) mirror: Arc<Mirror>,
    /// The HTTP address this node announces to its peers (what `system.replicas` shows).
    pub(crate) http_addr: SocketAddr,
    /// The bound interserver address.
    pub(crate) grpc_addr: SocketAddr,
    /// In a cluster: this node holds a lease and is listed among the live nodes.
    pub(crate) announced: AtomicBool,
    /// In a cluster: until when this node counts as a member without renewing its lease again
    /// (set by each renewal: the lease cannot expire before then).
    pub(crate) member_until: Mutex<Option<Instant>>,
    /// In a cluster: this node's membership lease (0 while it has none).
    pub(crate) lease: AtomicI64,
    /// The object-store mirror of parts, when configured.
    pub(crate) bucket: Option<Arc<Bucket>>,
    pub(crate) merges: Merges,
    /// Set by a drain: the node is not ready, so that no new work is routed here.
    pub(crate) draining: AtomicBool,
    pub(crate) fetch_requests: mpsc::UnboundedSender<FetchRequest>,
    /// The asynchronous insert buffer and its log.
    pub(crate) async_inserts: Arc<AsyncInserts>,
    /// Mutual TLS of the interserver gRPC, when configured.
    pub(crate) interserver_tls: Option<InterserverTls>,
    /// Reads of parts served from the bucket, and their caches.
    pub(crate) bucket_reads: BucketReads,
    /// The last listing of the live nodes, reused until membership changes.
    pub(crate) live_nodes_listing: crate::live_nodes::LiveNodes,
}

/// Whether the object store answers, and the last error when it does not.
#[derive(Clone, Debug)]
pub struct ObjectStoreStatus {
    pub reachable: bool,
    pub last_error: Option<String>,
}

impl Replica {
    /// The cluster's metadata store, for services that keep records of their own in it
    /// (users and grants): the replica's own records are changed only through its methods.
    pub fn coordinator(&self) -> &tandem_coordinator::Coordinator {
        &self.coordinator
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The data directory, resolved to an absolute path.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// Whether this node is one of a cluster (metadata in etcd) rather than alone.
    pub fn is_cluster(&self) -> bool {
        self.config.is_cluster()
    }

    /// The interserver address peers reach this node at.
    pub fn grpc_addr(&self) -> String {
        self.config.settings.advertise_grpc_addr.clone().unwrap_or_else(|| self.grpc_addr.to_string())
    }

    /// Ready to serve: caught up with the metadata, not draining, and (in a cluster) announced,
    /// so that peers count it for quorums and can fetch from it.
    pub fn is_ready(&self) -> bool {
        self.is_caught_up()
            && !self.is_draining()
            && (!self.config.is_cluster() || (self.announced.load(Ordering::Acquire) && self.lease_is_fresh()))
    }

    /// Whether the membership lease was renewed recently enough that it cannot expire before
    /// this node notices. Read at every readiness check rather than set when a renewal fails:
    /// a renewal against a frozen etcd hangs for its whole timeout, and a node waiting on it
    /// would stay ready past its lease.
    fn lease_is_fresh(&self) -> bool {
        self.member_until.lock().expect("membership lock").is_some_and(|until| Instant::now() < until)
    }

    /// Caught up with the coordinator at least once since start: a listing of it has been
    /// applied, so every write acknowledged before this node started is in its view.
    pub fn is_caught_up(&self) -> bool {
        self.catalog.is_caught_up()
    }

    /// Has a view of the tables to serve requests from: the local copy of the catalog (which
    /// can lack the last writes before a restart, as any replica can lag) or a listing. Reads
    /// go on from the local copy while the coordinator is unreachable.
    pub fn can_serve(&self) -> bool {
        self.catalog.has_view()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A table as this node has applied it: its definition, active and pending parts.
    pub fn table(&self, name: &str) -> Option<Arc<TableState>> {
        self.catalog.table(name)
    }

    /// Table `name`'s definition, Arrow schema and schema version (what an insert decodes by).
    pub fn table_definition(&self, name: &str) -> Option<(Arc<TableDef>, SchemaRef, Revision)> {
        self.catalog.table_definition(name)
    }

    /// Every table as this node has applied it, by name.
    pub fn tables(&self) -> BTreeMap<String, Arc<TableState>> {
        self.catalog.snapshot()
    }

    /// Registered parts that cannot even be described (unreadable manifest or id).
    pub fn broken_parts(&self) -> Vec<BrokenPart> {
        self.catalog.broken_parts()
    }

    /// Bytes `range` of part `id` of `table` from the bucket, verified against the part id
    /// (for queries over parts that are not on this node's disk).
    pub async fn read_from_bucket(
        &self,
        table: &str,
        id: &PartId,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, BucketReadError> {
        let bucket = self.bucket.as_ref().ok_or(BucketReadError::NoBucket(*id))?;
        self.bucket_reads.read(bucket, &self.metrics, table, id, range).await
    }

    /// What the bucket reads' caches hold, and the share of reads they answered.
    pub fn bucket_cache(&self) -> (u64, Option<f64>) {
        let (hits, misses) = (self.metrics.bucket_cache_hits.get(), self.metrics.bucket_cache_misses.get());
        let rate = (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
        (self.bucket_reads.cached_bytes(), rate)
    }

    /// Records that a query read these parts (the least recently read are evicted first).
    pub fn parts_read(&self, parts: impl IntoIterator<Item = PartId>) {
        self.catalog.touch(parts);
    }

    /// Whether this node stores parts or only answers queries.
    pub fn role(&self) -> crate::config::NodeRole {
        self.config.settings.role
    }

    /// This node's local storage budget for part files, if it has one.
    pub fn local_storage_budget(&self) -> Option<u64> {
        self.config.settings.local_storage_bytes
    }

    /// Whether `part` is recorded as uploaded to the object store.
    pub fn in_object_store(&self, part: &PartId) -> bool {
        self.catalog.in_object_store(part)
    }

    /// Every change up to this revision has been applied here.
    pub fn applied_revision(&self) -> Revision {
        self.catalog.applied_revision()
    }

    /// Every part registered up to this revision is on this node.
    pub fn complete_revision(&self) -> Revision {
        self.catalog.complete_revision()
    }

    /// Withdraws this node's copy of part `id` of `table`, whose file was found corrupt (and
    /// moved aside): this node stops being recorded as a holder, so no peer asks it, and the part
    /// goes back to pending here, so the fetcher brings a good copy.
    pub(crate) async fn withdraw_corrupt_copy(&self, table: &str, id: &PartId, reason: String) {
        self.metrics.corrupt_parts.inc();
        if let Err(e) = self.coordinator.remove_holder(table, id, &self.config.node_id).await {
            tracing::warn!(part = %id, error = %e, "cannot withdraw this node as a holder of a corrupt part");
        }
        self.catalog.demote(table, id, reason);
    }

    /// Waits until this node has applied `revision`. False on timeout.
    pub async fn wait_applied(&self, revision: Revision, timeout: Duration) -> bool {
        self.catalog.wait_applied(revision, timeout).await
    }

    /// Waits until this node holds every part registered up to `revision`. False on timeout.
    pub async fn wait_complete(&self, revision: Revision, timeout: Duration) -> bool {
        self.catalog.wait_complete(revision, timeout).await
    }

    /// The cluster's latest revision, from the coordinator.
    pub async fn current_revision(&self) -> Result<Revision> {
        Ok(self.coordinator.current_revision().await?)
    }

    /// The latest revision whose inserts were acknowledged with a quorum.
    pub async fn quorum_revision(&self) -> Result<Revision> {
        Ok(self.coordinator.quorum_revision().await?)
    }

    /// The merges running on this node.
    pub fn running_merges(&self) -> Vec<RunningMerge> {
        self.merges.running()
    }

    /// The object store's reachability, when one is configured.
    pub fn object_store_status(&self) -> Option<ObjectStoreStatus> {
        self.bucket.as_ref().map(|bucket| {
            let (reachable, last_error) = bucket.status();
            ObjectStoreStatus { reachable, last_error }
        })
    }

    /// The node's metrics, which the front end adds its request counters to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The metrics in Prometheus' text format, with the replication gauges measured now.
    pub async fn render_metrics(&self) -> String {
        let tables = self.catalog.snapshot();
        let (pending, lag_seconds) = replication_lag(&tables);
        let complete = self.catalog.complete_revision();
        let metrics = &self.metrics;
        metrics.active_parts.set(tables.values().map(|t| t.parts.len() as i64).sum());
        metrics.pending_parts.set(pending as i64);
        metrics.lost_parts.set(tables.values().flat_map(|t| t.pending.values()).filter(|p| p.lost).count() as i64);
        metrics.lag_seconds.set(lag_seconds);
        metrics.applied_revision.set(self.catalog.applied_revision());
        metrics.complete_revision.set(complete);
        if let Ok(Ok(latest)) = tokio::time::timeout(Duration::from_secs(1), self.coordinator.current_revision()).await
        {
            metrics.lag_revisions.set((latest - complete).max(0));
        }
        metrics.render()
    }
}

/// How far this node is behind: parts it lacks, and the age in seconds of the oldest of them.
pub fn replication_lag(tables: &BTreeMap<String, Arc<TableState>>) -> (u64, f64) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let pending = tables.values().map(|t| t.pending.len() as u64).sum();
    let oldest = tables.values().flat_map(|t| t.pending.values().map(|p| p.manifest.created_at_ms)).min();
    let lag_seconds = oldest.map(|created| ((now_ms - created).max(0) as f64) / 1000.0).unwrap_or(0.0);
    (pending, lag_seconds)
}
