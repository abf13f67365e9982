//! Draining a node before it stops (Kubernetes' preStop hook): `/ready` turns 503 so load
//! balancers stop sending it work, and the drain waits until every part that only this node
//! holds has another copy, on a live peer or in the object store. With asynchronous acks a node
//! can hold acknowledged rows nobody else has yet; a drain keeps them available while the
//! node is down (they are never lost: the node's disk keeps them either way).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::replica::Replica;

/// How a drain ended.
#[derive(Debug, Serialize)]
pub struct DrainReport {
    /// Every part on this node also has a copy elsewhere.
    pub drained: bool,
    /// Active parts whose only copy is on this node.
    pub parts_only_here: usize,
    /// Why the drain ended without `drained`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Replica {
    /// Marks the node draining (not ready; merges stop being led here) and waits up to
    /// `timeout` until no part is only on this node.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        drain(self, timeout).await
    }

    /// Undoes a drain: the node is ready again and merges resume; a drain in progress answers
    /// that it was cancelled.
    pub fn cancel_drain(&self) {
        if self.draining.swap(false, Ordering::AcqRel) {
            tracing::info!("drain cancelled: /ready answers 200 again");
        }
    }
}

async fn drain(node: &Replica, timeout: Duration) -> DrainReport {
    if !node.draining.swap(true, Ordering::AcqRel) {
        tracing::info!(timeout_seconds = timeout.as_secs(), "draining: /ready answers 503 from now on");
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let only_here = parts_only_here(node);
        if !node.draining.load(Ordering::Acquire) {
            return DrainReport {
                drained: false,
                parts_only_here: only_here,
                reason: Some("cancelled by /drain?cancel=1".into()),
            };
        }
        if only_here == 0 {
            tracing::info!("drained: every part on this node has another copy");
            return DrainReport { drained: true, parts_only_here: 0, reason: None };
        }
        if !can_hand_over(node).await {
            return DrainReport {
                drained: false,
                parts_only_here: only_here,
                reason: Some(
                    "no other live node and no object store to copy them to; they stay on this node's disk".into(),
                ),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                parts_only_here = only_here,
                "drain timed out; these parts are unavailable until this node returns"
            );
            return DrainReport {
                drained: false,
                parts_only_here: only_here,
                reason: Some(format!(
                    "timed out after {} s waiting for peers or the object store to copy them",
                    timeout.as_secs()
                )),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Active parts held by no other node and not uploaded to the object store.
fn parts_only_here(node: &Replica) -> usize {
    let me = &node.config.node_id;
    node.catalog
        .snapshot()
        .values()
        .flat_map(|table| table.parts.keys())
        .filter(|id| !node.catalog.in_object_store(id) && node.catalog.holders(id).iter().all(|holder| holder == me))
        .count()
}

/// Whether anything can take a copy: another live node, or the object store.
async fn can_hand_over(node: &Replica) -> bool {
    if node.bucket.is_some() {
        return true;
    }
    if !node.config.is_cluster() {
        return false;
    }
    match node.live_nodes().await {
        Ok(live) => live.iter().any(|n| n.node_id != node.config.node_id && n.holds_parts()),
        // etcd unreachable: keep waiting until the deadline, it may come back.
        Err(_) => true,
    }
}
