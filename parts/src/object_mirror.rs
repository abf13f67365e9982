use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use crate::{PartError, PartId, PartOutboard};

/// Where the mirror lives in an S3-compatible store. Credentials left `None` come from the
/// standard AWS environment (`AWS_ACCESS_KEY_ID`, web identity tokens, instance metadata).
#[derive(Clone, Default)]
pub struct S3Settings {
    /// `http(s)://host:port`; `None` means AWS S3 itself.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix of every object (no leading or trailing `/` needed).
    pub prefix: String,
    pub region: String,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key` (MinIO and most
    /// self-hosted servers need it).
    pub path_style: bool,
    pub allow_http: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// How long one request may take before it counts as failed.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "<set>"))
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// Errors of the object-store mirror, each naming the object.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("object {path} is not in the object store")]
    NotFound { path: String },
    #[error("object {path} does not hash to its name (it hashes to {actual}); it is not used")]
    Corrupt { path: String, actual: PartId },
    #[error("object store request for {path} failed: {source}")]
    Store { path: String, source: object_store::Error },
    #[error("object store configuration: {0}")]
    Config(String),
    #[error("the work on object {path} was interrupted (the node is stopping)")]
    Interrupted { path: String },
    #[error("object {path}: {source}")]
    Unverified { path: String, source: PartError },
}

/// Whether an upload created the object or found it already there (same name, so same bytes).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum UploadOutcome {
    Created,
    AlreadyThere,
}

/// An object of the mirror, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredObject {
    pub table: String,
    pub id: PartId,
    pub size: u64,
    pub last_modified_ms: i64,
}

/// The object-store copy of parts: `<prefix>/<table>/<part id>.parquet`, written once with a
/// create-only put and checked against its name on every read; next to it
/// `<part id>.obao`, the part's outboard (its size, then the inner hashes of its blake3 tree:
/// see [`PartOutboard`]), uploaded first, so a ranged read of any part uploaded since can be
/// verified without reading the whole object.
///
/// Objects are never overwritten: the name is the hash of the bytes, so an object that exists
/// already holds exactly what an upload would write. Deleting is the garbage collector's job.
#[derive(Clone, Debug)]
pub struct ObjectMirror {
    store: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    description: String,
}

impl ObjectMirror {
    /// A mirror over any object store (tests use `object_store::memory::InMemory`).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, description: impl Into<String>) -> Self {
        let prefix = prefix.trim_matches('/');
        ObjectMirror {
            store,
            prefix: (!prefix.is_empty()).then(|| Path::from(prefix)),
            description: description.into(),
        }
    }

    /// A mirror in an S3-compatible bucket. Builds the client only: nothing is contacted, so a
    /// node starts while the store is unreachable.
    pub fn s3(settings: &S3Settings) -> Result<Self, MirrorError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_allow_http(settings.allow_http)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(settings.allow_http)
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(settings.request_timeout),
            )
            // Few quick retries: the callers retry with their own backoff and must learn of an
            // outage in seconds (an insert waiting for object-store durability is one of them).
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            });
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(key) = &settings.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().map_err(|e| MirrorError::Config(e.to_string()))?;
        let description = format!(
            "s3://{}/{} at {}",
            settings.bucket,
            settings.prefix.trim_matches('/'),
            settings.endpoint.as_deref().unwrap_or("AWS")
        );
        Ok(Self::new(Arc::new(store), &settings.prefix, description))
    }

    /// Where the mirror is, for logs and errors (never includes credentials).
    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn object_path(&self, table: &str, id: &PartId) -> Path {
        let name = format!("{id}.parquet");
        match &self.prefix {
            Some(prefix) => prefix.clone().join(table).join(name),
            None => Path::from(table).join(name),
        }
    }

    pub fn outboard_path(&self, table: &str, id: &PartId) -> Path {
        let name = format!("{id}.obao");
        match &self.prefix {
            Some(prefix) => prefix.clone().join(table).join(name),
            None => Path::from(table).join(name),
        }
    }

    fn store_error(path: &Path, source: object_store::Error) -> MirrorError {
        match source {
            object_store::Error::NotFound { .. } => MirrorError::NotFound { path: path.to_string() },
            source => MirrorError::Store { path: path.to_string(), source },
        }
    }

    /// Uploads a part's outboard, then its bytes, each with a create-only put. Refuses bytes
    /// that do not hash to `id`.
    pub async fn upload(&self, table: &str, id: &PartId, bytes: Bytes) -> Result<UploadOutcome, MirrorError> {
        let path = self.object_path(table, id);
        // Hashing a whole part takes tens of milliseconds: off the async runtime.
        let hashed = bytes.clone();
        let (actual, hashes) = tokio::task::spawn_blocking(move || PartOutboard::compute(&hashed))
            .await
            .map_err(|_| MirrorError::Interrupted { path: path.to_string() })?;
        if actual != *id {
            return Err(MirrorError::Corrupt { path: path.to_string(), actual });
        }
        let mut outboard = Vec::with_capacity(8 + hashes.len());
        outboard.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        outboard.extend_from_slice(&hashes);
        self.put_once(&self.outboard_path(table, id), Bytes::from(outboard)).await?;
        self.put_once(&path, bytes).await
    }

    async fn put_once(&self, path: &Path, bytes: Bytes) -> Result<UploadOutcome, MirrorError> {
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(path, PutPayload::from_bytes(bytes), options).await {
            Ok(_) => Ok(UploadOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(UploadOutcome::AlreadyThere)
            }
            Err(e) => Err(Self::store_error(path, e)),
        }
    }

    /// The outboard of a part's object, as stored next to it. `NotFound` for objects uploaded
    /// before outboards existed; a wrong length is refused here, wrong hashes by every read.
    pub async fn outboard(&self, table: &str, id: &PartId) -> Result<PartOutboard, MirrorError> {
        let path = self.outboard_path(table, id);
        let result = self.store.get(&path).await.map_err(|e| Self::store_error(&path, e))?;
        let bytes = result.bytes().await.map_err(|e| Self::store_error(&path, e))?;
        let unusable = |reason: String| MirrorError::Unverified {
            path: path.to_string(),
            source: PartError::BadOutboard { part: *id, reason },
        };
        let size: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| unusable(format!("{} bytes, too short to hold a size", bytes.len())))?;
        PartOutboard::new(id, u64::from_le_bytes(size), bytes.slice(8..))
            .map_err(|source| MirrorError::Unverified { path: path.to_string(), source })
    }

    /// Bytes `range` of a part's object, read with one ranged request rounded out to whole
    /// verification groups and checked against the part id through `outboard` before any of
    /// them is returned.
    pub async fn read_range(
        &self,
        table: &str,
        outboard: &PartOutboard,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, MirrorError> {
        let id = outboard.id();
        let path = self.object_path(table, &id);
        let aligned = outboard.aligned(range.clone());
        let unverified = |range: std::ops::Range<u64>, reason: String| MirrorError::Unverified {
            path: path.to_string(),
            source: PartError::Unverified { part: id, range, reason },
        };
        if range.start > range.end || range.end > aligned.end || aligned.start == aligned.end {
            return Err(unverified(range, format!("the part has {} bytes", outboard.size())));
        }
        let bytes = self.store.get_range(&path, aligned.clone()).await.map_err(|e| Self::store_error(&path, e))?;
        if bytes.len() as u64 != aligned.end - aligned.start {
            return Err(unverified(aligned, format!("the store returned {} bytes", bytes.len())));
        }
        let verify = bytes.clone();
        let checked = outboard.clone();
        tokio::task::spawn_blocking(move || checked.verify(aligned.start, &verify))
            .await
            .map_err(|_| MirrorError::Interrupted { path: path.to_string() })?
            .map_err(|source| MirrorError::Unverified { path: path.to_string(), source })?;
        let from = (range.start - aligned.start) as usize;
        Ok(bytes.slice(from..from + (range.end - range.start) as usize))
    }

    /// Whether the object exists.
    pub async fn exists(&self, table: &str, id: &PartId) -> Result<bool, MirrorError> {
        let path = self.object_path(table, id);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Self::store_error(&path, e)),
        }
    }

    /// The object's bytes as a stream of chunks, unverified: the caller hashes them (the
    /// local part store's writer does, and refuses a mismatch). `NotFound` when absent.
    pub async fn open(
        &self,
        table: &str,
        id: &PartId,
    ) -> Result<BoxStream<'static, Result<Bytes, MirrorError>>, MirrorError> {
        let path = self.object_path(table, id);
        let result = self.store.get(&path).await.map_err(|e| Self::store_error(&path, e))?;
        let shown = path.to_string();
        Ok(result.into_stream().map_err(move |e| MirrorError::Store { path: shown.clone(), source: e }).boxed())
    }

    /// The object's bytes, verified against its name.
    pub async fn download(&self, table: &str, id: &PartId) -> Result<Bytes, MirrorError> {
        let path = self.object_path(table, id);
        let result = self.store.get(&path).await.map_err(|e| Self::store_error(&path, e))?;
        let bytes = result.bytes().await.map_err(|e| Self::store_error(&path, e))?;
        let actual = PartId::of_bytes(&bytes);
        if actual != *id {
            return Err(MirrorError::Corrupt { path: path.to_string(), actual });
        }
        Ok(bytes)
    }

    /// Every part object under the prefix, one per part (its outboard alone counts too, so
    /// one left behind by an interrupted upload is collected). Keys that are not
    /// `<table>/<part id>.parquet` or `.obao` are not tandem's and are left out (so never deleted).
    pub async fn list(&self) -> Result<Vec<MirroredObject>, MirrorError> {
        let shown = self.prefix.as_ref().map(|p| p.to_string()).unwrap_or_default();
        let metas: Vec<_> = self
            .store
            .list(self.prefix.as_ref())
            .try_collect()
            .await
            .map_err(|e| MirrorError::Store { path: format!("{shown}/"), source: e })?;
        let depth = self.prefix.as_ref().map_or(0, |p| p.parts().count());
        let mut objects: std::collections::BTreeMap<(String, PartId), MirroredObject> = Default::default();
        for meta in metas {
            let parts: Vec<String> = meta.location.parts().skip(depth).map(|p| p.as_ref().to_string()).collect();
            let [table, name] = parts.as_slice() else { continue };
            let (id, is_part) = match (name.strip_suffix(".parquet"), name.strip_suffix(".obao")) {
                (Some(id), _) => (id, true),
                (None, Some(id)) => (id, false),
                (None, None) => continue,
            };
            let Ok(id) = id.parse::<PartId>() else { continue };
            let last_modified_ms = meta.last_modified.timestamp_millis();
            let object = objects.entry((table.clone(), id)).or_insert_with(|| MirroredObject {
                table: table.clone(),
                id,
                size: 0,
                last_modified_ms,
            });
            object.last_modified_ms = object.last_modified_ms.max(last_modified_ms);
            if is_part {
                object.size = meta.size;
            }
        }
        Ok(objects.into_values().collect())
    }

    /// Deletes a part's object, then its outboard. Deleting an absent object is not an error.
    pub async fn delete(&self, table: &str, id: &PartId) -> Result<(), MirrorError> {
        for path in [self.object_path(table, id), self.outboard_path(table, id)] {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Self::store_error(&path, e)),
            }
        }
        Ok(())
    }

    /// One cheap request that succeeds only when the store answers and the bucket exists.
    pub async fn probe(&self) -> Result<(), MirrorError> {
        let path = self.prefix.clone().unwrap_or_default().join("tandem-probe-absent");
        match self.store.head(&path).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::store_error(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn mirror() -> (ObjectMirror, Arc<InMemory>) {
        let store = Arc::new(InMemory::new());
        (ObjectMirror::new(store.clone(), "/tandem/blue/", "memory"), store)
    }

    #[tokio::test]
    async fn uploads_once_under_the_hash_and_reads_back_verified() {
        let (mirror, store) = mirror();
        let bytes = Bytes::from_static(b"part bytes");
        let id = PartId::of_bytes(&bytes);
        assert_eq!(mirror.upload("events", &id, bytes.clone()).await.unwrap(), UploadOutcome::Created);
        assert_eq!(mirror.upload("events", &id, bytes.clone()).await.unwrap(), UploadOutcome::AlreadyThere);
        assert_eq!(mirror.object_path("events", &id).to_string(), format!("tandem/blue/events/{id}.parquet"));
        assert!(store.head(&mirror.object_path("events", &id)).await.is_ok());
        assert_eq!(mirror.download("events", &id).await.unwrap(), bytes);
        assert!(mirror.exists("events", &id).await.unwrap());
        let outboard = mirror.outboard("events", &id).await.unwrap();
        assert_eq!((outboard.id(), outboard.size()), (id, bytes.len() as u64));
        assert_eq!(mirror.read_range("events", &outboard, 5..8).await.unwrap(), &bytes[5..8]);
        let listed = mirror.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].table.as_str(), listed[0].id, listed[0].size), ("events", id, bytes.len() as u64));
    }

    #[tokio::test]
    async fn refuses_bytes_that_do_not_match_their_name() {
        let (mirror, store) = mirror();
        let id = PartId::of_bytes(b"the real bytes");
        let err = mirror.upload("t", &id, Bytes::from_static(b"other bytes")).await.unwrap_err();
        assert!(matches!(err, MirrorError::Corrupt { .. }), "{err}");
        store.put(&mirror.object_path("t", &id), PutPayload::from_static(b"flipped bytes")).await.unwrap();
        let err = mirror.download("t", &id).await.unwrap_err();
        assert!(matches!(err, MirrorError::Corrupt { .. }), "{err}");
        let missing = PartId::of_bytes(b"never uploaded");
        assert!(matches!(mirror.download("t", &missing).await.unwrap_err(), MirrorError::NotFound { .. }));
        assert!(!mirror.exists("t", &missing).await.unwrap());
    }

    #[tokio::test]
    async fn lists_only_part_objects_and_deletes_idempotently() {
        let (mirror, store) = mirror();
        let bytes = Bytes::from_static(b"a part");
        let id = PartId::of_bytes(&bytes);
        mirror.upload("t", &id, bytes).await.unwrap();
        for foreign in
            ["tandem/blue/README", "tandem/blue/t/notes.txt", "tandem/blue/t/x/y.parquet", "other/t/a.parquet"]
        {
            store.put(&Path::from(foreign), PutPayload::from_static(b"x")).await.unwrap();
        }
        let listed: Vec<_> = mirror.list().await.unwrap().into_iter().map(|o| (o.table, o.id, o.size)).collect();
        assert_eq!(listed, vec![("t".to_string(), id, 6)], "a part and its outboard are one object");
        mirror.delete("t", &id).await.unwrap();
        mirror.delete("t", &id).await.unwrap();
        assert!(mirror.list().await.unwrap().is_empty());
        assert!(store.head(&mirror.outboard_path("t", &id)).await.is_err(), "the outboard went with the part");
    }

    #[tokio::test]
    async fn ranged_reads_return_only_verified_bytes() {
        let (mirror, store) = mirror();
        let bytes: Bytes = (0..200_000u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>().into();
        let id = PartId::of_bytes(&bytes);
        mirror.upload("t", &id, bytes.clone()).await.unwrap();
        let outboard = mirror.outboard("t", &id).await.unwrap();
        assert_eq!(mirror.read_range("t", &outboard, 70_000..90_000).await.unwrap(), &bytes[70_000..90_000]);
        assert_eq!(mirror.read_range("t", &outboard, 199_990..200_000).await.unwrap(), &bytes[199_990..]);
        assert!(mirror.read_range("t", &outboard, 199_990..200_001).await.is_err(), "past the end");

        let mut flipped = bytes.to_vec();
        flipped[80_000] ^= 0x20;
        store.put(&mirror.object_path("t", &id), PutPayload::from(flipped)).await.unwrap();
        let err = mirror.read_range("t", &outboard, 79_000..81_000).await.unwrap_err();
        assert!(matches!(err, MirrorError::Unverified { .. }), "{err}");
        assert!(err.to_string().contains(&id.to_string()), "{err}");
        assert_eq!(
            mirror.read_range("t", &outboard, 0..1000).await.unwrap(),
            &bytes[..1000],
            "groups the flip is not in still verify"
        );
        // A store that answers a short range (an object cut at a group boundary): every group it
        // returns verifies, and the read still fails rather than handing out fewer bytes.
        store.put(&mirror.object_path("t", &id), PutPayload::from(bytes.slice(..98_304))).await.unwrap();
        let err = mirror.read_range("t", &outboard, 90_000..100_000).await.unwrap_err();
        let MirrorError::Unverified { source: PartError::Unverified { range, .. }, .. } = &err else {
            panic!("a short answer is refused as unverified: {err}")
        };
        assert_eq!(*range, 81_920..114_688, "the groups asked for, of which the store returned one");
        let old = PartId::of_bytes(b"uploaded before outboards");
        store.put(&mirror.object_path("t", &old), PutPayload::from_static(b"uploaded before outboards")).await.unwrap();
        assert!(matches!(mirror.outboard("t", &old).await.unwrap_err(), MirrorError::NotFound { .. }));
    }
}
