//! Parts that are not on this node's disk, as DataFusion reads files: an `ObjectStore` at
//! [`BUCKET_URL`] whose objects are `<table>/<part id>.parquet`, each read through the
//! replica's verified ranged reads of the bucket (`Replica::read_from_bucket`), so the Parquet
//! reader fetches only the footer, the columns and the row groups and pages it needs, and no
//! byte reaches a query before it has been checked against the part id. Read-only: every
//! write answers `NotSupported`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use futures::stream::{self, BoxStream, StreamExt};
use tandem_replica::{PartId, Replica};

/// Where DataFusion finds parts read from the bucket.
pub const BUCKET_URL: &str = "tandem-bucket://parts";

const STORE: &str = "tandem-bucket";

pub struct BucketStore {
    replica: Arc<Replica>,
}

impl BucketStore {
    pub fn new(replica: Arc<Replica>) -> Self {
        BucketStore { replica }
    }

    /// The object path of a part, as the query plans name it.
    pub fn path(table: &str, id: &PartId) -> String {
        format!("{table}/{id}.parquet")
    }

    /// The table, the part and its size, for a path this store handed out.
    fn part(&self, location: &Path) -> Result<(String, PartId, u64)> {
        let not_found = || datafusion::object_store::Error::NotFound {
            path: location.to_string(),
            source: "not a part of a table on this node".into(),
        };
        let parts: Vec<_> = location.parts().collect();
        let [table, name] = parts.as_slice() else { return Err(not_found()) };
        let id: PartId = name.as_ref().strip_suffix(".parquet").and_then(|id| id.parse().ok()).ok_or_else(not_found)?;
        let state = self.replica.table(table.as_ref()).ok_or_else(not_found)?;
        let size = state.parts.get(&id).map(|p| p.manifest.bytes).ok_or_else(not_found)?;
        Ok((table.as_ref().to_string(), id, size))
    }
}

impl fmt::Display for BucketStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(BUCKET_URL)
    }
}

impl fmt::Debug for BucketStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BucketStore")
    }
}

fn read_only(what: &str) -> datafusion::object_store::Error {
    datafusion::object_store::Error::NotSupported { source: format!("{BUCKET_URL} is read-only: {what}").into() }
}

#[async_trait]
impl ObjectStore for BucketStore {
    async fn put_opts(&self, _location: &Path, _payload: PutPayload, _opts: PutOptions) -> Result<PutResult> {
        Err(read_only("put"))
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Err(read_only("multipart put"))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let (table, id, size) = self.part(location)?;
        let range: Range<u64> = match &options.range {
            None => 0..size,
            Some(GetRange::Bounded(range)) => range.start..range.end.min(size),
            Some(GetRange::Offset(start)) => *start..size,
            Some(GetRange::Suffix(n)) => size.saturating_sub(*n)..size,
        };
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            size,
            e_tag: Some(id.to_string()),
            version: None,
        };
        let bytes = if options.head || range.is_empty() {
            Bytes::new()
        } else {
            self.replica
                .read_from_bucket(&table, &id, range.clone())
                .await
                .map_err(|e| datafusion::object_store::Error::Generic { store: STORE, source: Box::new(e) })?
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        locations.map(|_| Err(read_only("delete"))).boxed()
    }

    fn list(&self, _prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        stream::once(async { Err(read_only("list")) }).boxed()
    }

    async fn list_with_delimiter(&self, _prefix: Option<&Path>) -> Result<ListResult> {
        Err(read_only("list"))
    }

    async fn copy_opts(&self, _from: &Path, _to: &Path, _options: CopyOptions) -> Result<()> {
        Err(read_only("copy"))
    }
}
