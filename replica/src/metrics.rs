//! Prometheus metrics of the node, named `tandem_<subsystem>_<name>_<unit>`, served on `/metrics`.

use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A stage of a synchronous insert, from the decoded rows to the ack: what
/// `tandem_insert_stage_seconds` times, to show where an insert's latency goes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum InsertStage {
    /// Reading the body into columns (the front end's formats).
    Decode,
    /// Counting the live nodes an `insert_quorum` needs (a coordinator read).
    LiveNodes,
    /// Splitting the rows per partition and hashing each block.
    Split,
    /// Sorting, encoding and writing (with fsync) the parts.
    Encode,
    /// The coordinator transaction registering the parts.
    Register,
    /// Until this node has applied the registration (read-your-writes).
    Apply,
    /// Until `insert_quorum` nodes hold the parts.
    Quorum,
}

impl InsertStage {
    /// Every stage, in declaration order: a stage's discriminant is its place here.
    const ALL: [InsertStage; 7] = [
        InsertStage::Decode,
        InsertStage::LiveNodes,
        InsertStage::Split,
        InsertStage::Encode,
        InsertStage::Register,
        InsertStage::Apply,
        InsertStage::Quorum,
    ];

    fn name(self) -> &'static str {
        match self {
            InsertStage::Decode => "decode",
            InsertStage::LiveNodes => "live_nodes",
            InsertStage::Split => "split",
            InsertStage::Encode => "encode",
            InsertStage::Register => "register",
            InsertStage::Apply => "apply",
            InsertStage::Quorum => "quorum",
        }
    }
}

impl EncodeLabelValue for InsertStage {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.name())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InsertStageLabels {
    stage: InsertStage,
}

pub struct Metrics {
    registry: Registry,
    pub insert_stage_seconds: Family<InsertStageLabels, Histogram>,
    /// Each stage's histogram of `insert_stage_seconds`, by the stage's discriminant, taken
    /// once: finding it in the family per insert (a lock and a hash) was a contended lock on
    /// every small insert.
    stage_histograms: [Histogram; InsertStage::ALL.len()],
    pub insert_rows: Counter,
    pub insert_parts: Counter,
    pub insert_deduplicated_blocks: Counter,
    pub insert_errors: Counter,
    pub insert_seconds: Histogram,
    pub query_seconds: Histogram,
    pub query_errors: Counter,
    pub corrupt_parts: Counter,
    pub applied_revision: Gauge,
    pub complete_revision: Gauge,
    pub active_parts: Gauge,
    pub pending_parts: Gauge,
    pub lag_revisions: Gauge,
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub fetch_parts: Counter,
    pub fetch_bytes: Counter,
    pub fetch_failures: Counter,
    pub fetch_corrupt: Counter,
    pub served_bytes: Counter,
    pub object_store_up: Gauge,
    pub object_store_uploaded_parts: Counter,
    pub object_store_uploaded_bytes: Counter,
    pub object_store_upload_failures: Counter,
    pub object_store_upload_backlog: Gauge,
    pub object_store_fetched_parts: Counter,
    pub object_store_fetched_bytes: Counter,
    pub object_store_corrupt_objects: Counter,
    pub object_store_gc_deleted_objects: Counter,
    pub lost_parts: Gauge,
    pub merges: Counter,
    pub merge_source_bytes: Counter,
    pub merge_written_bytes: Counter,
    pub local_merges: Counter,
    pub merged_parts_fetched: Counter,
    pub merge_mismatches: Counter,
    pub ttl_dropped_parts: Counter,
    pub ttl_deleted_rows: Counter,
    pub bucket_read_requests: Counter,
    pub bucket_read_bytes: Counter,
    pub bucket_cache_hits: Counter,
    pub bucket_cache_misses: Counter,
    pub evicted_parts: Counter,
    pub evicted_bytes: Counter,
    pub local_part_bytes: Gauge,
    pub insert_bytes: Counter,
    pub insert_delayed: Counter,
    pub async_insert_flushes: Counter,
    pub async_insert_flush_conflicts: Counter,
    pub async_insert_backlog_bytes: Gauge,
    pub async_insert_log_bytes: Gauge,
    pub insert_rejected_too_many_parts: Counter,
    pub interserver_auth_failures: Counter,
    pub http_auth_failures: Counter,
}

impl Metrics {
    /// Records that an insert spent the time since `started` in `stage`.
    pub fn insert_stage(&self, stage: InsertStage, started: Instant) {
        if let Some(histogram) = self.stage_histograms.get(stage as usize) {
            histogram.observe(started.elapsed().as_secs_f64());
        }
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tandem");
        let insert_stage_seconds: Family<InsertStageLabels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
        let stage_histograms =
            InsertStage::ALL.map(|stage| insert_stage_seconds.get_or_create(&InsertStageLabels { stage }).clone());
        let metrics = Metrics {
            insert_stage_seconds,
            stage_histograms,
            insert_rows: Counter::default(),
            insert_parts: Counter::default(),
            insert_deduplicated_blocks: Counter::default(),
            insert_errors: Counter::default(),
            insert_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            query_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            query_errors: Counter::default(),
            corrupt_parts: Counter::default(),
            applied_revision: Gauge::default(),
            complete_revision: Gauge::default(),
            active_parts: Gauge::default(),
            pending_parts: Gauge::default(),
            lag_revisions: Gauge::default(),
            lag_seconds: Gauge::default(),
            fetch_parts: Counter::default(),
            fetch_bytes: Counter::default(),
            fetch_failures: Counter::default(),
            fetch_corrupt: Counter::default(),
            served_bytes: Counter::default(),
            object_store_up: Gauge::default(),
            object_store_uploaded_parts: Counter::default(),
            object_store_uploaded_bytes: Counter::default(),
            object_store_upload_failures: Counter::default(),
            object_store_upload_backlog: Gauge::default(),
            object_store_fetched_parts: Counter::default(),
            object_store_fetched_bytes: Counter::default(),
            object_store_corrupt_objects: Counter::default(),
            object_store_gc_deleted_objects: Counter::default(),
            lost_parts: Gauge::default(),
            merges: Counter::default(),
            merge_source_bytes: Counter::default(),
            merge_written_bytes: Counter::default(),
            local_merges: Counter::default(),
            merged_parts_fetched: Counter::default(),
            merge_mismatches: Counter::default(),
            ttl_dropped_parts: Counter::default(),
            ttl_deleted_rows: Counter::default(),
            bucket_read_requests: Counter::default(),
            bucket_read_bytes: Counter::default(),
            bucket_cache_hits: Counter::default(),
            bucket_cache_misses: Counter::default(),
            evicted_parts: Counter::default(),
            evicted_bytes: Counter::default(),
            local_part_bytes: Gauge::default(),
            insert_bytes: Counter::default(),
            insert_delayed: Counter::default(),
            async_insert_flushes: Counter::default(),
            async_insert_flush_conflicts: Counter::default(),
            async_insert_backlog_bytes: Gauge::default(),
            async_insert_log_bytes: Gauge::default(),
            insert_rejected_too_many_parts: Counter::default(),
            interserver_auth_failures: Counter::default(),
            http_auth_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "insert_rows",
            "Rows written by inserts (deduplicated rows excluded)",
            metrics.insert_rows.clone(),
        );
        registry.register("insert_parts", "Parts written by inserts", metrics.insert_parts.clone());
        registry.register(
            "insert_deduplicated_blocks",
            "Insert blocks acknowledged as duplicates of an admitted block",
            metrics.insert_deduplicated_blocks.clone(),
        );
        registry.register("insert_errors", "Inserts that failed", metrics.insert_errors.clone());
        registry.register("insert_seconds", "Insert latency, from request to ack", metrics.insert_seconds.clone());
        registry.register(
            "insert_stage_seconds",
            "Time synchronous inserts spend in each stage between the decoded rows and the ack",
            metrics.insert_stage_seconds.clone(),
        );
        registry.register("query_seconds", "Query latency", metrics.query_seconds.clone());
        registry.register("query_errors", "Queries that failed", metrics.query_errors.clone());
        registry.register("parts_corrupt", "Part files that failed hash verification", metrics.corrupt_parts.clone());
        registry.register(
            "catalog_applied_revision",
            "Last coordinator revision applied by this node",
            metrics.applied_revision.clone(),
        );
        registry.register("catalog_active_parts", "Active parts served by this node", metrics.active_parts.clone());
        registry.register(
            "catalog_complete_revision",
            "Every part registered up to this revision is on this node",
            metrics.complete_revision.clone(),
        );
        registry.register(
            "replication_pending_parts",
            "Registered parts not yet on this node",
            metrics.pending_parts.clone(),
        );
        registry.register(
            "replication_lag_revisions",
            "Coordinator revisions between the cluster's latest and this node's complete revision",
            metrics.lag_revisions.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Age of the oldest registered part not yet on this node",
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "fetch_parts",
            "Parts fetched from peers (not the object store)",
            metrics.fetch_parts.clone(),
        );
        registry.register("fetch_bytes", "Bytes of parts fetched from peers", metrics.fetch_bytes.clone());
        registry.register("fetch_failures", "Part fetches that failed on every source", metrics.fetch_failures.clone());
        registry.register(
            "fetch_corrupt",
            "Part copies refused because their bytes did not match their hash",
            metrics.fetch_corrupt.clone(),
        );
        registry.register(
            "object_store_up",
            "1 when the last object-store request succeeded, 0 when it failed",
            metrics.object_store_up.clone(),
        );
        registry.register(
            "object_store_uploaded_parts",
            "Parts uploaded to the object store (or found already there)",
            metrics.object_store_uploaded_parts.clone(),
        );
        registry.register(
            "object_store_uploaded_bytes",
            "Bytes uploaded to the object store",
            metrics.object_store_uploaded_bytes.clone(),
        );
        registry.register(
            "object_store_upload_failures",
            "Part uploads that failed (retried with backoff)",
            metrics.object_store_upload_failures.clone(),
        );
        registry.register(
            "object_store_upload_backlog",
            "Parts this node must upload that the object store does not have yet",
            metrics.object_store_upload_backlog.clone(),
        );
        registry.register(
            "object_store_fetched_parts",
            "Parts fetched from the object store",
            metrics.object_store_fetched_parts.clone(),
        );
        registry.register(
            "object_store_fetched_bytes",
            "Bytes of parts fetched from the object store",
            metrics.object_store_fetched_bytes.clone(),
        );
        registry.register(
            "object_store_corrupt_objects",
            "Objects refused because their bytes did not match their name",
            metrics.object_store_corrupt_objects.clone(),
        );
        registry.register(
            "object_store_gc_deleted_objects",
            "Unreferenced objects deleted by the garbage collector",
            metrics.object_store_gc_deleted_objects.clone(),
        );
        registry.register(
            "replication_lost_parts",
            "Registered parts that no live node and not the object store can provide",
            metrics.lost_parts.clone(),
        );
        registry.register("merges", "Merges this node registered as the table's merge leader", metrics.merges.clone());
        registry.register(
            "merge_source_bytes",
            "Bytes of the parts merged away by this node's merges",
            metrics.merge_source_bytes.clone(),
        );
        registry.register(
            "merge_written_bytes",
            "Bytes of merged parts written by this node's merges",
            metrics.merge_written_bytes.clone(),
        );
        registry.register(
            "merge_local_rebuilds",
            "Merged parts this node rebuilt from its own copies of the sources instead of fetching",
            metrics.local_merges.clone(),
        );
        registry.register(
            "merge_fetched_parts",
            "Merged parts this node fetched from the node that merged them (or the bucket) instead of rebuilding",
            metrics.merged_parts_fetched.clone(),
        );
        registry.register(
            "merge_mismatches",
            "Local rebuilds of a merged part that did not match its hash (fetched instead)",
            metrics.merge_mismatches.clone(),
        );
        registry.register(
            "ttl_dropped_parts",
            "Parts this node dropped as merge leader because every row had passed the table's TTL",
            metrics.ttl_dropped_parts.clone(),
        );
        registry.register(
            "ttl_deleted_rows",
            "Rows past the table's TTL that this node's merges and part drops deleted",
            metrics.ttl_deleted_rows.clone(),
        );
        registry.register(
            "bucket_read_requests",
            "Requests to the object store that read parts (ranged reads, outboards, whole parts) for queries and merges",
            metrics.bucket_read_requests.clone(),
        );
        registry.register(
            "bucket_read_bytes",
            "Bytes of parts read from the object store for queries (rounded out to verification groups) and merges",
            metrics.bucket_read_bytes.clone(),
        );
        registry.register(
            "bucket_cache_hits",
            "Byte ranges of parts in the bucket a query found in this node's cache",
            metrics.bucket_cache_hits.clone(),
        );
        registry.register(
            "bucket_cache_misses",
            "Byte ranges of parts in the bucket a query had to read from the object store",
            metrics.bucket_cache_misses.clone(),
        );
        registry.register(
            "evicted_parts",
            "Part files this node deleted to keep its local storage budget (the parts stay readable from the bucket)",
            metrics.evicted_parts.clone(),
        );
        registry.register("evicted_bytes", "Bytes of the part files evicted", metrics.evicted_bytes.clone());
        registry.register(
            "local_part_bytes",
            "Bytes of the part files active on this node's disk",
            metrics.local_part_bytes.clone(),
        );
        registry.register("insert_bytes", "Bytes of parts written by inserts", metrics.insert_bytes.clone());
        registry.register(
            "async_insert_flushes",
            "Flushes of the asynchronous insert buffer registered (one part per partition each)",
            metrics.async_insert_flushes.clone(),
        );
        registry.register(
            "async_insert_flush_conflicts",
            "Flushes that lost the race to another node's flush of the same table and were retried",
            metrics.async_insert_flush_conflicts.clone(),
        );
        registry.register(
            "async_insert_backlog_bytes",
            "Bytes of asynchronous inserts logged here and not yet registered",
            metrics.async_insert_backlog_bytes.clone(),
        );
        registry.register(
            "async_insert_log_bytes",
            "Bytes of the insert log on disk",
            metrics.async_insert_log_bytes.clone(),
        );
        registry.register(
            "insert_delayed",
            "Inserts slowed down because a partition had many active parts",
            metrics.insert_delayed.clone(),
        );
        registry.register(
            "insert_rejected_too_many_parts",
            "Inserts refused because a partition had too many active parts",
            metrics.insert_rejected_too_many_parts.clone(),
        );
        registry.register("interserver_served_bytes", "Bytes of parts sent to peers", metrics.served_bytes.clone());
        registry.register(
            "interserver_auth_failures",
            "Interserver calls refused for want of a valid cluster secret",
            metrics.interserver_auth_failures.clone(),
        );
        registry.register(
            "http_auth_failures",
            "HTTP requests refused for want of valid credentials (401)",
            metrics.http_auth_failures.clone(),
        );
        Metrics { registry, ..metrics }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_is_timed_in_its_own_series() {
        assert!(InsertStage::ALL.iter().enumerate().all(|(place, &stage)| stage as usize == place));
        let metrics = Metrics::new();
        metrics.insert_stage(InsertStage::Encode, Instant::now());
        metrics.insert_stage(InsertStage::Encode, Instant::now());
        metrics.insert_stage(InsertStage::Quorum, Instant::now());
        let rendered = metrics.render();
        for (stage, count) in [("decode", 0), ("encode", 2), ("quorum", 1)] {
            let series = format!("tandem_insert_stage_seconds_count{{stage=\"{stage}\"}} {count}\n");
            assert!(rendered.contains(&series), "{series} in\n{rendered}");
        }
    }
}
