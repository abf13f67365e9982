//! The replication loop of one node: start from the local copy of the catalog (or a full
//! listing), then follow the coordinator's watch in revision order, resuming after a
//! disconnect from the last applied revision + 1. A compacted revision or the periodic
//! safety-net timer lead to a full listing, which reconciles whatever changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tandem_coordinator::{ClusterEvent, CoordError, Revision, Snapshot};
use tandem_parts::{PartId, VerifyOutcome};
use tokio_util::sync::CancellationToken;

use crate::replica::Replica;

/// Follows the coordinator until `shutdown` is cancelled.
pub async fn run(node: Arc<Replica>, shutdown: CancellationToken) {
    let corrupt = Arc::new(verify_local_files(&node).await);
    let mut next = resume_from_local_copy(&node, &corrupt).await;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            r = follow(&node, &mut next, &corrupt) => r,
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
/// resume the watch from. Queries are answered from it at once, and go on while the
/// coordinator is unreachable; but the copy can lack the last changes before a stop (it is
/// made durable every few seconds), so the node is caught up (and `/ready`) only once the
/// watch has delivered the sync marker it writes (see `follow`).
async fn resume_from_local_copy(node: &Arc<Replica>, corrupt: &HashMap<PartId, String>) -> Option<Revision> {
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
    let rejected = reject_corrupt(node, &snapshot, corrupt).await;
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
async fn follow(
    node: &Arc<Replica>,
    next: &mut Option<Revision>,
    corrupt: &HashMap<PartId, String>,
) -> Result<(), CoordError> {
    let from = match *next {
        Some(from) => from,
        None => {
            let snapshot = node.coordinator.snapshot().await?;
            let rejected = reject_corrupt(node, &snapshot, corrupt).await;
            // The block index first: a flush that waits for the catalog then sees the ids too.
            node.async_inserts.index().apply_snapshot(&snapshot);
            node.catalog.apply_snapshot(&snapshot, &rejected);
            node.catalog.mark_caught_up();
            node.live_nodes_listing.changed();
            let (revision, tables, parts) = (snapshot.revision, snapshot.tables.len(), snapshot.parts.len());
            save_locally(node, move |mirror, prefix| mirror.replace(prefix, &snapshot)).await;
            tracing::info!(revision, tables, parts, "applied cluster state listing");
            *next = Some(revision + 1);
            revision + 1
        }
    };
    let mut stream = node.coordinator.watch(from).await?;
    // Resumed from the local copy, the node cannot know how far behind it is from its watch
    // alone (etcd's revision is global, and may have moved on other keys): it writes a marker,
    // which the watch delivers after every change made before it.
    let mut sync_marker = if node.catalog.is_caught_up() {
        None
    } else {
        Some(node.coordinator.write_sync_marker(&node.config.node_id).await?)
    };
    let relist_at = tokio::time::Instant::now() + node.config.settings.relist_interval();
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
        if batch.events.iter().any(|e| matches!(e, ClusterEvent::NodeUp { .. } | ClusterEvent::NodeDown { .. })) {
            node.live_nodes_listing.changed();
        }
        node.async_inserts.index().apply_batch(&batch);
        node.catalog.apply_batch(&batch);
        let revision = batch.revision;
        save_locally(node, move |mirror, _| mirror.apply(&batch)).await;
        *next = Some(revision + 1);
        if sync_marker.is_some_and(|marker| revision >= marker) {
            node.catalog.mark_caught_up();
            sync_marker = None;
            tracing::info!(revision, "caught up with the cluster state");
        }
    }
}

/// Writes to the local copy of the catalog (a redb commit, with an fsync now and then) off the
/// async runtime, in order: the loop waits for each write before it applies the next change.
async fn save_locally(
    node: &Arc<Replica>,
    write: impl FnOnce(&crate::mirror::Mirror, &str) -> anyhow::Result<()> + Send + 'static,
) {
    let (mirror, prefix) = (node.mirror.clone(), node.config.cluster_prefix.clone());
    let saved = tokio::task::spawn_blocking(move || write(&mirror, &prefix)).await;
    if let Err(e) = saved.map_err(anyhow::Error::from).and_then(|written| written) {
        tracing::warn!(error = %e, "cannot save the local catalog");
    }
}

/// Hashes every part file on disk once, at start, before anything can be served: corrupt or
/// truncated files are moved aside and reported. Every file that appears later was written by
/// this process from bytes checked against their id (insert, fetch, merge), so a part that
/// arrives through the watch with its file already here is served without hashing it again.
async fn verify_local_files(node: &Arc<Replica>) -> HashMap<PartId, String> {
    let checking = node.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let store = checking.catalog.store();
        let mut corrupt = HashMap::new();
        let ids = match store.list() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the part files to verify them");
                return corrupt;
            }
        };
        for id in ids {
            match store.verify(&id) {
                Ok(VerifyOutcome::Valid) | Ok(VerifyOutcome::Missing) => {}
                Ok(VerifyOutcome::Corrupt { reason, moved_to }) => {
                    checking.metrics.corrupt_parts.inc();
                    tracing::error!(part = %id, %reason, quarantined = %moved_to.display(), "corrupt part file detected; it is not served");
                    corrupt.insert(id, format!("corrupt local file: {reason}; moved to {}", moved_to.display()));
                }
                Err(e) => {
                    tracing::error!(part = %id, error = %e, "cannot verify part file; it is not served");
                    let _ = store.quarantine(&id);
                    corrupt.insert(id, format!("cannot verify the local file: {e}"));
                }
            }
        }
        corrupt
    })
    .await;
    checked.unwrap_or_default()
}

/// The registered parts whose local file was found corrupt at start: they stay pending (and
/// are fetched again from a peer), with the reason; this node stops being listed as a holder.
async fn reject_corrupt(
    node: &Arc<Replica>,
    snapshot: &Snapshot,
    corrupt: &HashMap<PartId, String>,
) -> HashMap<PartId, String> {
    let mut out = HashMap::new();
    for part in &snapshot.parts {
        let Some(reason) = corrupt.get(&part.id) else { continue };
        if node.catalog.store().contains(&part.id) {
            continue; // a good copy arrived since
        }
        if let Err(e) = node.coordinator.remove_holder(&part.table, &part.id, &node.config.node_id).await {
            tracing::warn!(part = %part.id, error = %e, "cannot withdraw this node as a holder of a corrupt part");
        }
        out.insert(part.id, reason.clone());
    }
    out
}

/// Forgets insert block ids beyond each table's dedup window (the time window is also
/// checked when a block is admitted, so an old id never deduplicates even before this runs).
pub async fn prune_blocks(node: Arc<Replica>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(node.config.settings.dedup_prune_interval());
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.cancelled() => return,
        }
        for (name, table) in node.catalog.snapshot() {
            match node.coordinator.prune_blocks(&name, table.def.settings.dedup_window_blocks).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(table = %name, removed = n, "forgot insert block ids beyond the count window"),
                Err(e) => tracing::warn!(table = %name, error = %e, "cannot prune insert block ids"),
            }
        }
        crate::async_insert::prune(&node).await;
    }
}
