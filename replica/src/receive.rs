//! Receiving a part's bytes as a stream of chunks (from a peer or the bucket) into the local
//! store: the file writes block, so they run on a blocking thread fed by a small channel, and
//! a stream that stalls longer than a chunk's wait is given up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tandem_parts::{LocalPartStore, PartError, PartId, PartWriter};

/// Why a stream of chunks ended before its last one.
pub(crate) enum StreamFailure<E> {
    /// No chunk came within the wait.
    Stalled(Duration),
    /// The source failed.
    Source(E),
}

/// Writes `chunks` into a writer of `store` for part `id` (which hashes them as they come),
/// waiting at most `chunk_timeout` for each, and ends the writer with `finish` once the stream
/// ends. Answers why the stream ended early, if it did, and what `finish` made of the bytes
/// (a mismatch with the id among them); Err if the writing thread panicked.
pub(crate) async fn receive<T, E>(
    store: Arc<LocalPartStore>,
    id: PartId,
    mut chunks: impl Stream<Item = Result<Bytes, E>> + Unpin,
    chunk_timeout: Duration,
    finish: impl FnOnce(PartWriter<'_>) -> Result<T, PartError> + Send + 'static,
) -> Result<(Option<StreamFailure<E>>, Result<T, PartError>), tokio::task::JoinError>
where
    T: Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let writer = tokio::task::spawn_blocking(move || -> Result<T, PartError> {
        let mut writer = store.begin_write(&id)?;
        while let Some(chunk) = rx.blocking_recv() {
            writer.append(&chunk)?;
        }
        finish(writer)
    });
    let mut failure = None;
    loop {
        match tokio::time::timeout(chunk_timeout, chunks.next()).await {
            Err(_) => {
                failure = Some(StreamFailure::Stalled(chunk_timeout));
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(chunk))) => {
                // The writer stopped (a failed write): its error says why.
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(Some(Err(e))) => {
                failure = Some(StreamFailure::Source(e));
                break;
            }
        }
    }
    drop(tx);
    Ok((failure, writer.await?))
}
