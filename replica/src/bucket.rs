//! The object store as this node uses it: the bucket, whether it answers, uploads of single
//! parts, and the bootstrap flag. The loops that keep it filled and collected are in
//! [`crate::object_store_tasks`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tandem_parts::{LocalPartStore, MirrorError, ObjectMirror, PartId, S3Settings, UploadOutcome};
use tokio::sync::Notify;

use crate::metrics::Metrics;

pub struct Bucket {
    pub(crate) mirror: ObjectMirror,
    reachable: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Set while a node started with `bootstrap_from_object_store` has not caught up yet.
    pub(crate) bootstrapping: AtomicBool,
    /// Wakes the uploader (a part was activated here).
    pub(crate) wake: Notify,
}

impl Bucket {
    /// `bootstrap`: read parts from the bucket first until caught up (a node filling an empty disk).
    pub(crate) fn new(s3: &S3Settings, bootstrap: bool) -> anyhow::Result<Self> {
        let mirror = ObjectMirror::s3(s3)?;
        Ok(Bucket {
            mirror,
            bootstrapping: AtomicBool::new(bootstrap),
            // Unknown until the first request; assumed reachable so that a healthy start does
            // not report an outage.
            reachable: AtomicBool::new(true),
            last_error: Mutex::new(None),
            wake: Notify::new(),
        })
    }

    /// Whether the last request to the store succeeded, and the last error if not.
    pub fn status(&self) -> (bool, Option<String>) {
        let reachable = self.reachable.load(Ordering::Acquire);
        (reachable, if reachable { None } else { self.last_error.lock().expect("status lock").clone() })
    }

    pub fn is_bootstrapping(&self) -> bool {
        self.bootstrapping.load(Ordering::Acquire)
    }

    /// Records the outcome of a request: only transport and server errors mean unreachable.
    pub fn record<T>(&self, metrics: &Metrics, result: &Result<T, MirrorError>) {
        match result {
            Ok(_) | Err(MirrorError::NotFound { .. } | MirrorError::Corrupt { .. }) => {
                if !self.reachable.swap(true, Ordering::AcqRel) {
                    tracing::info!(store = %self.mirror.description(), "the object store is reachable again");
                }
                metrics.object_store_up.set(1);
            }
            Err(e) => {
                *self.last_error.lock().expect("status lock") = Some(e.to_string());
                if self.reachable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(store = %self.mirror.description(), error = %e, "the object store is unreachable");
                }
                metrics.object_store_up.set(0);
            }
        }
    }

    /// Asks the uploader to look for parts to upload now.
    pub fn wake_uploader(&self) {
        self.wake.notify_one();
    }

    /// Uploads one part (its file from `store`, unless the bytes are given) with a create-only
    /// put.
    pub async fn upload(
        &self,
        metrics: &Metrics,
        store: &LocalPartStore,
        table: &str,
        id: &PartId,
        bytes: Option<Bytes>,
    ) -> Result<UploadOutcome, UploadError> {
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => {
                let path = store.path(id);
                let read =
                    tokio::task::spawn_blocking(move || std::fs::read(&path)).await.map_err(std::io::Error::other);
                Bytes::from(read.and_then(|r| r).map_err(|e| UploadError::Read { part: *id, source: e })?)
            }
        };
        let size = bytes.len() as u64;
        let result = self.mirror.upload(table, id, bytes).await;
        self.record(metrics, &result);
        match result {
            Ok(outcome) => {
                metrics.object_store_uploaded_parts.inc();
                if outcome == UploadOutcome::Created {
                    metrics.object_store_uploaded_bytes.inc_by(size);
                }
                Ok(outcome)
            }
            Err(e) => {
                metrics.object_store_upload_failures.inc();
                Err(UploadError::Store(e))
            }
        }
    }
}

/// Why a part did not get its object.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read the file of part {part}: {source}")]
    Read { part: PartId, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] MirrorError),
    #[error("uploaded, but cannot record the object-store copy: {0}")]
    Record(#[from] tandem_coordinator::CoordError),
}
