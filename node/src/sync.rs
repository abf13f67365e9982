//! The replication loop of one node: list everything, verify what is new, then follow the
//! coordinator's watch in revision order. A compacted or broken watch leads back to a full
//! listing, which reconciles whatever was missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tandem_coordinator::{CoordError, Coordinator, Snapshot};
use tandem_parts::{PartId, VerifyOutcome};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::metrics::Metrics;

/// Follows the coordinator until `shutdown` is cancelled.
pub async fn run(coordinator: Coordinator, catalog: Arc<Catalog>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            r = follow(&coordinator, &catalog, &metrics) => r,
            _ = shutdown.cancelled() => return,
        };
        match result {
            Err(CoordError::Compacted { requested, compacted }) => {
                tracing::info!(requested, compacted, "watch revision compacted; re-listing");
                backoff = Duration::from_millis(100);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "metadata watch failed; re-listing")
            }
            Ok(()) => tracing::warn!("metadata watch ended; re-listing"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn follow(coordinator: &Coordinator, catalog: &Arc<Catalog>, metrics: &Arc<Metrics>) -> Result<(), CoordError> {
    let snapshot = coordinator.snapshot().await?;
    let rejected = verify_new_parts(&snapshot, catalog, metrics).await;
    catalog.apply_snapshot(&snapshot, &rejected);
    tracing::info!(
        revision = snapshot.revision,
        tables = snapshot.tables.len(),
        parts = snapshot.parts.len(),
        "applied metadata listing"
    );
    let mut stream = coordinator.watch(snapshot.revision + 1).await?;
    while let Some(batch) = stream.next().await {
        catalog.apply_batch(&batch?);
    }
    Ok(())
}

/// Hashes the files of listed parts that are not active yet. Corrupt files are quarantined
/// and reported; they are never served.
async fn verify_new_parts(
    snapshot: &Snapshot,
    catalog: &Arc<Catalog>,
    metrics: &Arc<Metrics>,
) -> HashMap<String, String> {
    let mut to_check = Vec::new();
    for part in &snapshot.parts {
        let Ok(id) = part.id.parse::<PartId>() else {
            continue;
        };
        if !catalog.is_active(&part.table, &id) {
            to_check.push((part.table.clone(), id));
        }
    }
    let store = catalog.store().clone();
    let metrics = metrics.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let mut rejected = HashMap::new();
        for (table, id) in to_check {
            match store.verify(&id) {
                Ok(VerifyOutcome::Valid) | Ok(VerifyOutcome::Missing) => {}
                Ok(VerifyOutcome::Corrupt { reason, moved_to }) => {
                    metrics.corrupt_parts.inc();
                    tracing::error!(%table, part = %id, %reason, quarantined = %moved_to.display(), "corrupt part file detected; it is not served");
                    rejected.insert(id.to_string(), format!("corrupt: {reason}; moved to {}", moved_to.display()));
                }
                Err(e) => {
                    tracing::error!(%table, part = %id, error = %e, "cannot verify part file");
                    rejected.insert(id.to_string(), format!("cannot verify: {e}"));
                }
            }
        }
        rejected
    })
    .await;
    checked.unwrap_or_default()
}
