//! Reading parts that are not on this node's disk: ranged reads from the bucket, each rounded
//! out to whole 16 KiB verification groups and checked against the part id through the part's
//! outboard before a byte of it is returned (see `tandem_parts::PartOutboard`). Verified groups
//! and outboards are kept in memory caches bounded by bytes, so overlapping reads (a Parquet
//! reader asks for the footer, then the page index, then column chunks next to them) fetch each
//! group once; parsed footers are cached above this, by the query engine. A part uploaded before outboards existed is downloaded
//! whole and checked against its id instead.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tandem_parts::{MirrorError, PartId, PartOutboard, VERIFIED_BLOCK_BYTES};

use crate::bucket::Bucket;
use crate::metrics::Metrics;

/// What a cached entry costs: its bytes.
#[derive(Clone)]
struct ByBytes;

impl Weighter<(PartId, u64), Bytes> for ByBytes {
    fn weight(&self, _key: &(PartId, u64), value: &Bytes) -> u64 {
        value.len() as u64 + 48
    }
}

impl Weighter<PartId, Arc<PartOutboard>> for ByBytes {
    fn weight(&self, _key: &PartId, value: &Arc<PartOutboard>) -> u64 {
        value.size() / VERIFIED_BLOCK_BYTES * 64 + 128
    }
}

/// Accounts for one read of part bytes from the bucket (for a query or a merge): whether the
/// store answered, a corrupt object, the request and its bytes.
pub(crate) fn account(
    bucket: &Bucket,
    metrics: &Metrics,
    result: Result<Bytes, MirrorError>,
) -> Result<Bytes, MirrorError> {
    bucket.record(metrics, &result);
    if let Err(MirrorError::Unverified { .. } | MirrorError::Corrupt { .. }) = &result {
        metrics.object_store_corrupt_objects.inc();
    }
    let bytes = result?;
    metrics.bucket_read_requests.inc();
    metrics.bucket_read_bytes.inc_by(bytes.len() as u64);
    Ok(bytes)
}

/// Why bytes of a part could not be read from the bucket.
#[derive(Debug, thiserror::Error)]
pub enum BucketReadError {
    #[error("no object store is configured, and part {0} is not on this node")]
    NoBucket(PartId),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
}

pub(crate) struct BucketReads {
    outboards: Cache<PartId, Arc<PartOutboard>, ByBytes>,
    /// Verified groups of `VERIFIED_BLOCK_BYTES`, by (part, group number).
    groups: Cache<(PartId, u64), Bytes, ByBytes>,
    /// Whole parts uploaded before outboards existed, verified as a whole (group `u64::MAX`).
    whole: Cache<(PartId, u64), Bytes, ByBytes>,
}

impl BucketReads {
    /// Caches of at most `cache_bytes` of ranges (and a sixteenth of that of outboards).
    pub(crate) fn new(cache_bytes: u64) -> Self {
        let items = (cache_bytes / (64 * 1024)).max(16) as usize;
        BucketReads {
            outboards: Cache::with_weighter(items, (cache_bytes / 16).max(1 << 20), ByBytes),
            groups: Cache::with_weighter(items, cache_bytes.max(1 << 20), ByBytes),
            whole: Cache::with_weighter(16, cache_bytes.max(1 << 20), ByBytes),
        }
    }

    /// Bytes held by the caches.
    pub(crate) fn cached_bytes(&self) -> u64 {
        self.groups.weight() + self.outboards.weight() + self.whole.weight()
    }

    /// Bytes `range` of part `id` of `table`: the verification groups it covers, from the cache,
    /// and those missing read from the bucket in one ranged request and verified.
    pub(crate) async fn read(
        &self,
        bucket: &Bucket,
        metrics: &Metrics,
        table: &str,
        id: &PartId,
        range: Range<u64>,
    ) -> Result<Bytes, BucketReadError> {
        let outboard = match self.outboard(bucket, metrics, table, id).await {
            Ok(outboard) => outboard,
            Err(MirrorError::NotFound { .. }) => return self.read_whole(bucket, metrics, table, id, range).await,
            Err(e) => return Err(e.into()),
        };
        let aligned = outboard.aligned(range.clone());
        let first = aligned.start / VERIFIED_BLOCK_BYTES;
        let mut groups: Vec<Option<Bytes>> =
            (first..aligned.end.div_ceil(VERIFIED_BLOCK_BYTES)).map(|n| self.groups.get(&(*id, n))).collect();
        let missing: Vec<u64> =
            groups.iter().enumerate().filter(|(_, g)| g.is_none()).map(|(i, _)| first + i as u64).collect();
        if let (Some(&low), Some(&high)) = (missing.first(), missing.last()) {
            metrics.bucket_cache_misses.inc();
            let span = low * VERIFIED_BLOCK_BYTES..((high + 1) * VERIFIED_BLOCK_BYTES).min(outboard.size());
            let bytes = account(bucket, metrics, bucket.mirror.read_range(table, &outboard, span).await)?;
            for n in low..=high {
                let start = ((n - low) * VERIFIED_BLOCK_BYTES) as usize;
                let group = bytes.slice(start..(start + VERIFIED_BLOCK_BYTES as usize).min(bytes.len()));
                self.groups.insert((*id, n), group.clone());
                groups[(n - first) as usize] = Some(group);
            }
        } else {
            metrics.bucket_cache_hits.inc();
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for (i, group) in groups.into_iter().enumerate() {
            let group = group.expect("every group is cached or was just read");
            let group_start = (first + i as u64) * VERIFIED_BLOCK_BYTES;
            let from = range.start.saturating_sub(group_start).min(group.len() as u64) as usize;
            let to = (range.end.saturating_sub(group_start)).min(group.len() as u64) as usize;
            out.extend_from_slice(&group[from..to]);
        }
        Ok(Bytes::from(out))
    }

    async fn outboard(
        &self,
        bucket: &Bucket,
        metrics: &Metrics,
        table: &str,
        id: &PartId,
    ) -> Result<Arc<PartOutboard>, MirrorError> {
        if let Some(outboard) = self.outboards.get(id) {
            return Ok(outboard);
        }
        let result = bucket.mirror.outboard(table, id).await;
        bucket.record(metrics, &result);
        let outboard = Arc::new(result?);
        metrics.bucket_read_requests.inc();
        self.outboards.insert(*id, outboard.clone());
        Ok(outboard)
    }

    async fn read_whole(
        &self,
        bucket: &Bucket,
        metrics: &Metrics,
        table: &str,
        id: &PartId,
        range: Range<u64>,
    ) -> Result<Bytes, BucketReadError> {
        let key = (*id, u64::MAX);
        let bytes = match self.whole.get(&key) {
            Some(bytes) => bytes,
            None => {
                let bytes = account(bucket, metrics, bucket.mirror.download(table, id).await)?;
                self.whole.insert(key, bytes.clone());
                bytes
            }
        };
        let end = range.end.min(bytes.len() as u64) as usize;
        let start = (range.start as usize).min(end);
        Ok(bytes.slice(start..end))
    }
}
