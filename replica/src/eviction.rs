//! The local storage budget (`local_storage_bytes`): while the part files active on this
//! node's disk exceed it, the least recently read part that is safely in the bucket is evicted.
//! Its holder record goes first (from then on no peer fetches it from here and no quorum counts
//! this node), then the catalog keeps the part active but reads it from the bucket, and the file
//! is deleted once no running query reads it. Never evicted: a part without the object-store
//! record (this node may hold its only durable copy), one an `insert_quorum` may still be
//! waiting on (`quorum_until_ms` in its manifest, with a margin for clocks), and one a merge is
//! reading.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::replica::Replica;

/// How often the budget is checked (also after every change of the parts).
const INTERVAL: Duration = Duration::from_secs(1);

/// Clocks of the writer and this node may disagree by this much.
const CLOCK_MARGIN_MS: i64 = 5_000;

pub async fn run(node: Arc<Replica>, shutdown: CancellationToken) {
    let Some(budget) = node.config.settings.local_storage_bytes else { return };
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut data = node.catalog.subscribe_data_revision();
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = data.changed() => {},
            _ = shutdown.cancelled() => return,
        }
        if node.catalog.is_caught_up() {
            keep_budget(&node, budget).await;
        }
    }
}

/// One candidate for eviction.
struct Local {
    table: String,
    part: tandem_parts::PartId,
    size: u64,
    last_read: Option<std::time::Instant>,
}

async fn keep_budget(node: &Replica, budget: u64) {
    let tables = node.catalog.snapshot();
    let active: std::collections::HashSet<_> = tables.values().flat_map(|t| t.parts.keys().copied()).collect();
    node.catalog.forget_reads_except(&active);
    let mut local: u64 = 0;
    let mut candidates = Vec::new();
    let now_ms = chrono::Utc::now().timestamp_millis();
    {
        let busy = node.merges.busy.lock().expect("merges lock");
        for (name, state) in &tables {
            for part in state.parts.values() {
                let Some(file) = &part.file else { continue };
                local += file.size;
                let quorum_pending =
                    part.manifest.quorum_until_ms.is_some_and(|until| now_ms < until + CLOCK_MARGIN_MS);
                if node.catalog.in_object_store(&part.id) && !quorum_pending && !busy.contains(&part.id) {
                    candidates.push(Local {
                        table: name.clone(),
                        part: part.id,
                        size: file.size,
                        last_read: node.catalog.last_read(&part.id),
                    });
                }
            }
        }
    }
    node.metrics.local_part_bytes.set(local as i64);
    if local <= budget {
        return;
    }
    // Never read (here) first, then the least recently read.
    candidates.sort_by_key(|c| c.last_read);
    for candidate in candidates {
        if local <= budget {
            break;
        }
        if let Err(e) = node.coordinator.remove_holder(&candidate.table, &candidate.part, &node.config.node_id).await {
            tracing::warn!(part = %candidate.part, error = %e, "cannot withdraw this node's copy; not evicting now");
            break;
        }
        if let Some(freed) = node.catalog.evict(&candidate.table, &candidate.part) {
            local = local.saturating_sub(freed);
            node.metrics.evicted_parts.inc();
            node.metrics.evicted_bytes.inc_by(freed);
            tracing::debug!(table = %candidate.table, part = %candidate.part, bytes = candidate.size, "evicted a part to keep the local storage budget");
        }
    }
    node.metrics.local_part_bytes.set(local as i64);
}
