//! The replication loop of one node: start from the local copy of the catalog (or a full
//! listing), then follow the coordinator's watch in revision order, resuming after a
//! disconnect from the last applied revision + 1. A compacted revision or the periodic
//! safety-net timer lead to a full listing, which reconciles whatever changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tandem_coordinator::{CoordError, Revision, Snapshot};
use tandem_parts::{PartId, VerifyOutcome};
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Follows the coordinator until `shutdown` is cancelled.
pub async fn run(node: Arc<Node>, shutdown: CancellationToken) {
    let mut next = resume_from_mirror(&node).await;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            r = follow(&node, &mut next) => r,
            _ = shutdown.cancelled() => return,
        };
        match result {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                continue;
            }
            Err(CoordError::Compacted { requested, compacted }) => {
                tracing::info!(requested, compacted, "resume revision is compacted; re-listing the cluster state");
                next = None;
                backoff = Duration::from_millis(100);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, resume_from = ?next, retry_in_ms = backoff.as_millis() as u64, "metadata watch failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Applies the local copy of the catalog, if it is usable, and returns the revision to
/// resume the watch from.
async fn resume_from_mirror(node: &Arc<Node>) -> Option<Revision> {
    let snapshot = match node.mirror.load(&node.config.cluster_prefix) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the local catalog; listing the cluster state instead");
            return None;
        }
    };
    // A store whose history is shorter than ours was replaced or wiped: our copy is not its past.
    match node.coordinator.current_revision().await {
        Ok(current) if current < snapshot.revision => {
            tracing::warn!(
                local = snapshot.revision,
                current,
                "the metadata store is behind the local catalog; listing it again"
            );
            return None;
        }
        _ => {}
    }
    let rejected = verify_new_parts(node, &snapshot).await;
    node.catalog.apply_snapshot(&snapshot, &rejected);
    tracing::info!(
        revision = snapshot.revision,
        tables = snapshot.tables.len(),
        parts = snapshot.parts.len(),
        "resumed from the local catalog"
    );
    Some(snapshot.revision + 1)
}

/// Lists (when `next` is None) and then watches. Returns Ok when it is time to list again.
async fn follow(node: &Arc<Node>, next: &mut Option<Revision>) -> Result<(), CoordError> {
    let from = match *next {
        Some(from) => from,
        None => {
            let snapshot = node.coordinator.snapshot().await?;
            let rejected = verify_new_parts(node, &snapshot).await;
            node.catalog.apply_snapshot(&snapshot, &rejected);
            if let Err(e) = node.mirror.replace(&node.config.cluster_prefix, &snapshot) {
                tracing::warn!(error = %e, "cannot save the local catalog");
            }
            tracing::info!(
                revision = snapshot.revision,
                tables = snapshot.tables.len(),
                parts = snapshot.parts.len(),
                "applied cluster state listing"
            );
            *next = Some(snapshot.revision + 1);
            snapshot.revision + 1
        }
    };
    let mut stream = node.coordinator.watch(from).await?;
    let relist_at = tokio::time::Instant::now() + node.config.relist_interval;
    loop {
        let batch = tokio::select! {
            b = stream.next() => b,
            _ = tokio::time::sleep_until(relist_at) => {
                *next = None;
                return Ok(());
            }
        };
        let Some(batch) = batch else { return Err(CoordError::Unavailable("the watch ended".into())) };
        let batch = batch?;
        node.catalog.apply_batch(&batch);
        if let Err(e) = node.mirror.apply(&batch) {
            tracing::warn!(error = %e, "cannot save the local catalog");
        }
        *next = Some(batch.revision + 1);
    }
}

/// Hashes the files of listed parts that are not active yet. Corrupt files are quarantined
/// and reported; they are never served (the part stays pending until a good copy arrives).
async fn verify_new_parts(node: &Arc<Node>, snapshot: &Snapshot) -> HashMap<String, String> {
    let mut to_check = Vec::new();
    for part in &snapshot.parts {
        let Ok(id) = part.id.parse::<PartId>() else { continue };
        if !node.catalog.is_active(&part.table, &id) {
            to_check.push((part.table.clone(), id));
        }
    }
    let checking = node.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let mut rejected = Vec::new();
        for (table, id) in to_check {
            match checking.catalog.store().verify(&id) {
                Ok(VerifyOutcome::Valid) | Ok(VerifyOutcome::Missing) => {}
                Ok(VerifyOutcome::Corrupt { reason, moved_to }) => {
                    checking.metrics.corrupt_parts.inc();
                    tracing::error!(%table, part = %id, %reason, quarantined = %moved_to.display(), "corrupt part file detected; it is not served");
                    rejected.push((table, id, format!("corrupt local file: {reason}; moved to {}", moved_to.display())));
                }
                Err(e) => {
                    tracing::error!(%table, part = %id, error = %e, "cannot verify part file");
                    rejected.push((table, id, format!("cannot verify the local file: {e}")));
                }
            }
        }
        rejected
    })
    .await
    .unwrap_or_default();
    let mut out = HashMap::new();
    for (table, id, reason) in checked {
        if let Err(e) = node.coordinator.remove_holder(&table, &id.to_string(), &node.config.node_id).await {
            tracing::warn!(part = %id, error = %e, "cannot withdraw this node as a holder of a corrupt part");
        }
        out.insert(id.to_string(), reason);
    }
    out
}
