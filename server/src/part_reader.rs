//! How DataFusion reads a part's bytes and metadata.
//!
//! DataFusion's own reader (`CachedParquetFileReaderFactory`) caches a file's footer but not
//! its page index, so every query that prunes pages reads and parses the page index of every
//! part again (a tenth of a point query's CPU), and it reads a local file through
//! `object_store`'s `LocalFileSystem`, which hops to a blocking thread for every range (the
//! thread hand-offs were about as much CPU again). Parts are immutable and named by their hash,
//! so their metadata can be cached whole: this reader asks for the page index with the footer,
//! and the runtime's metadata cache then holds both.
//!
//! A part on this node's disk is read with `pread` on the calling thread: its bytes are
//! almost always in the page cache (the node wrote or fetched the part), and a cold read
//! blocks a worker no longer than decoding the same bytes will. A part in the bucket is read
//! through the node's verified bucket store, as before.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{ParquetFileMetrics, ParquetFileReaderFactory};
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;

/// Where a scan's parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On this node's disk: the location is the file's absolute path without its leading `/`.
    Local,
    /// In the bucket, through the store the scan names.
    Bucket,
}

/// Makes a [`PartReader`] for each part a scan opens.
#[derive(Debug)]
pub struct PartReaderFactory {
    place: Place,
    store: Arc<dyn ObjectStore>,
    metadata_cache: Arc<FileMetadataCache>,
}

impl PartReaderFactory {
    pub fn new(place: Place, store: Arc<dyn ObjectStore>, metadata_cache: Arc<FileMetadataCache>) -> Self {
        PartReaderFactory { place, store, metadata_cache }
    }

    /// A part's footer and page index, as its reader gets them (from the cache, or read and
    /// cached), for planning.
    pub async fn metadata(&self, file: &PartitionedFile) -> Result<Arc<ParquetMetaData>, ParquetError> {
        part_metadata(
            self.store.as_ref(),
            &self.metadata_cache,
            file,
            Some(tandem_parts::VERIFIED_BLOCK_BYTES as usize),
        )
        .await
    }
}

/// The footer and the page index of `file`, from `cache` (filled on a miss, through `store`).
/// The page index is asked for whatever the scan's options say: the scan loads it anyway when
/// a predicate could prune pages, and caching it with the footer is what spares the next
/// query the work.
async fn part_metadata(
    store: &dyn ObjectStore,
    cache: &Arc<FileMetadataCache>,
    file: &PartitionedFile,
    size_hint: Option<usize>,
) -> Result<Arc<ParquetMetaData>, ParquetError> {
    DFParquetMetadata::new(store, &file.object_meta)
        .with_file_metadata_cache(Some(cache.clone()))
        .with_metadata_size_hint(size_hint)
        .with_page_index_policy(Some(PageIndexPolicy::Optional))
        .fetch_metadata()
        .await
        .map_err(|e| ParquetError::General(format!("cannot read the metadata of {}: {e}", file.path())))
}

impl ParquetFileReaderFactory for PartReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::common::Result<Box<dyn AsyncFileReader + Send>> {
        let metrics = ParquetFileMetrics::new(partition_index, file.object_meta.location.as_ref(), metrics);
        Ok(Box::new(PartReader {
            place: self.place,
            store: self.store.clone(),
            metadata_cache: self.metadata_cache.clone(),
            metadata_size_hint,
            file,
            opened: None,
            metrics,
        }))
    }
}

/// Reads one part for one scan partition.
pub struct PartReader {
    place: Place,
    store: Arc<dyn ObjectStore>,
    metadata_cache: Arc<FileMetadataCache>,
    metadata_size_hint: Option<usize>,
    file: PartitionedFile,
    /// The local file, opened on the first read.
    opened: Option<File>,
    metrics: ParquetFileMetrics,
}

impl PartReader {
    /// Reads `range` of a local part on this thread. A range past the part's end is refused
    /// before anything is allocated for it.
    fn read_local(&mut self, range: Range<u64>) -> Result<Bytes, ParquetError> {
        let size = self.file.object_meta.size;
        if range.start > range.end || range.end > size {
            return Err(ParquetError::General(format!(
                "range {range:?} is outside part {} of {size} bytes",
                self.file.path()
            )));
        }
        let file = match &mut self.opened {
            Some(file) => file,
            None => {
                let path = format!("/{}", self.file.object_meta.location);
                let file = File::open(&path).map_err(|e| ParquetError::External(Box::new(e)))?;
                self.opened.insert(file)
            }
        };
        let length = usize::try_from(range.end - range.start)
            .map_err(|_| ParquetError::General(format!("range {range:?} does not fit in memory")))?;
        let mut bytes = vec![0; length];
        file.read_exact_at(&mut bytes, range.start).map_err(|e| ParquetError::External(Box::new(e)))?;
        self.metrics.bytes_scanned.add(length);
        Ok(Bytes::from(bytes))
    }
}

impl AsyncFileReader for PartReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
        match self.place {
            Place::Local => futures::future::ready(self.read_local(range)).boxed(),
            Place::Bucket => {
                self.metrics.bytes_scanned.add(range.end.saturating_sub(range.start) as usize);
                let location = self.file.object_meta.location.clone();
                let store = self.store.clone();
                async move { store.get_range(&location, range).await.map_err(|e| ParquetError::External(Box::new(e))) }
                    .boxed()
            }
        }
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, Result<Vec<Bytes>, ParquetError>> {
        match self.place {
            Place::Local => futures::future::ready(ranges.into_iter().map(|r| self.read_local(r)).collect()).boxed(),
            Place::Bucket => {
                let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
                self.metrics.bytes_scanned.add(total as usize);
                let location = self.file.object_meta.location.clone();
                let store = self.store.clone();
                async move {
                    store.get_ranges(&location, &ranges).await.map_err(|e| ParquetError::External(Box::new(e)))
                }
                .boxed()
            }
        }
    }

    /// The footer and the page index, through the runtime's metadata cache ([`part_metadata`]).
    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
        part_metadata(self.store.as_ref(), &self.metadata_cache, &self.file, self.metadata_size_hint).boxed()
    }
}

impl Drop for PartReader {
    fn drop(&mut self) {
        self.metrics.scan_efficiency_ratio.set_total(self.file.object_meta.size as usize);
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
    use datafusion::execution::object_store::ObjectStoreUrl;
    use datafusion::execution::runtime_env::RuntimeEnv;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};

    use super::*;

    /// A file of several pages with a page index, as parts are written.
    fn paged_file(dir: &std::path::Path) -> (PartitionedFile, u64) {
        let path = dir.join("part.parquet");
        let column: ArrayRef = Arc::new(Int64Array::from_iter_values(0..10_000));
        let batch = RecordBatch::try_from_iter([("x", column)]).unwrap();
        let properties = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_data_page_row_count_limit(1_000)
            .set_write_batch_size(1_000)
            .build();
        let mut writer = ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        (PartitionedFile::new(path.to_string_lossy().trim_start_matches('/'), size), size)
    }

    #[tokio::test]
    async fn metadata_comes_with_the_page_index_and_is_cached_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (file, size) = paged_file(dir.path());
        let runtime = RuntimeEnv::default();
        let cache = runtime.cache_manager.get_file_metadata_cache();
        let store = runtime.object_store(ObjectStoreUrl::local_filesystem()).unwrap();
        let factory = PartReaderFactory::new(Place::Local, store, cache.clone());
        let mut reader = factory.create_reader(0, file.clone(), None, &ExecutionPlanMetricsSet::new()).unwrap();

        // Asked without a page index, as DataFusion's scan first asks: it comes anyway.
        let footer_only = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Skip);
        let metadata = reader.get_metadata(Some(&footer_only)).await.unwrap();
        assert!(metadata.column_index().is_some() && metadata.offset_index().is_some());
        assert!(metadata.offset_index().unwrap()[0][0].page_locations().len() > 1, "the file has several pages");
        // The next query finds footer and page index in the cache.
        let cached = cache.get(&file.object_meta.location).expect("the metadata is cached");
        let cached = cached.file_metadata.as_any().downcast_ref::<CachedParquetMetaData>().unwrap();
        assert!(cached.parquet_metadata().column_index().is_some());
        assert!(cached.parquet_metadata().offset_index().is_some());

        // Byte ranges of a local part are read in place.
        assert_eq!(&reader.get_bytes(0..4).await.unwrap()[..], b"PAR1");
        let ends = reader.get_byte_ranges(vec![0..4, size - 4..size]).await.unwrap();
        assert_eq!(ends.iter().map(|b| &b[..]).collect::<Vec<_>>(), [b"PAR1", b"PAR1"]);
        assert!(reader.get_bytes(size - 4..size + 1).await.is_err(), "a range past the end is an error");
    }
}
