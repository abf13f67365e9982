//! Cluster membership: a node announces itself under an etcd lease (its addresses and how far
//! it has applied the cluster's changes); the entry disappears when the node dies.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem_coordinator::{CoordError, Revision};
use tokio_util::sync::CancellationToken;

use crate::live_nodes::NodeInfo;
use crate::replica::Replica;

/// Lease time-to-live: a node that stops renewing for this long is considered gone.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// The node record is rewritten at most this often (when what it reports has changed).
const RECORD_INTERVAL: Duration = Duration::from_secs(2);

fn info(node: &Replica) -> NodeInfo {
    NodeInfo {
        node_id: node.config.node_id.clone(),
        grpc_addr: node.grpc_addr(),
        http_addr: node.http_addr.to_string(),
        data_revision: node.catalog.data_revision(),
        complete_revision: node.catalog.complete_revision(),
        updated_at_ms: chrono::Utc::now().timestamp_millis(),
        role: node.config.settings.role,
    }
}

async fn announce(node: &Replica) -> Result<i64, CoordError> {
    let lease = node.coordinator.backend().grant_lease(LEASE_TTL).await?;
    let doc = serde_json::to_vec(&info(node)).expect("node info serializes");
    node.coordinator.announce_node(&node.config.node_id, doc, lease).await?;
    Ok(lease)
}

/// A node that has not renewed its lease for this long steps down (not ready) before the lease
/// can expire under it: its peers stop counting it once etcd expires the lease, and it must not
/// go on claiming to be a member meanwhile.
const STEP_DOWN_AFTER: Duration = Duration::from_secs(LEASE_TTL.as_secs() / 2);

/// Keeps the node's lease alive and its record current until shutdown, then revokes the lease
/// so peers stop fetching from this node at once. When renewals fail for [`STEP_DOWN_AFTER`],
/// the node stops being ready; it is ready again once a renewal (or, after the lease expired,
/// a new announcement) succeeds.
pub async fn run(node: Arc<Replica>, shutdown: CancellationToken) {
    let mut lease = None;
    let mut renewed = tokio::time::Instant::now();
    let mut reported = (Revision::MIN, Revision::MIN);
    let mut data_revision = node.catalog.subscribe_data_revision();
    let mut renew = tokio::time::interval(LEASE_TTL / 3);
    loop {
        tokio::select! {
            _ = renew.tick() => {},
            _ = data_revision.changed() => tokio::time::sleep(RECORD_INTERVAL).await,
            _ = shutdown.cancelled() => break,
        }
        let result = match lease {
            None => announce(&node).await.map(|id| {
                tracing::info!(node = %node.config.node_id, lease = id, "announced this node to the cluster");
                lease = Some(id);
                node.lease.store(id, Ordering::Release);
                node.announced.store(true, Ordering::Release);
            }),
            Some(id) => match node.coordinator.backend().keep_alive(id).await {
                Err(CoordError::LeaseExpired(_)) => {
                    tracing::warn!(lease = id, "this node's lease expired; announcing it again");
                    node.announced.store(false, Ordering::Release);
                    node.lease.store(0, Ordering::Release);
                    lease = None;
                    renew.reset_immediately();
                    continue;
                }
                other => other,
            },
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot renew this node's cluster membership");
            if renewed.elapsed() >= STEP_DOWN_AFTER && node.announced.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    seconds = renewed.elapsed().as_secs(),
                    "stepping down: not ready until the membership lease can be renewed"
                );
            }
            continue;
        }
        renewed = tokio::time::Instant::now();
        *node.member_until.lock().expect("membership lock") = Some(std::time::Instant::now() + STEP_DOWN_AFTER);
        if lease.is_some() && !node.announced.swap(true, Ordering::AcqRel) {
            tracing::info!("membership lease renewed: ready again");
        }
        let now = (node.catalog.data_revision(), node.catalog.complete_revision());
        if let Some(id) = lease
            && now != reported
        {
            let doc = serde_json::to_vec(&info(&node)).expect("node info serializes");
            match node.coordinator.announce_node(&node.config.node_id, doc, id).await {
                Ok(()) => reported = now,
                Err(e) => tracing::warn!(error = %e, "cannot update this node's record"),
            }
        }
    }
    if let Some(id) = lease
        && let Err(e) = node.coordinator.backend().revoke_lease(id).await
    {
        tracing::warn!(error = %e, "cannot revoke this node's lease on shutdown; it expires by itself");
    }
}

impl Replica {
    /// The live nodes, as they announced themselves (this one included once it is announced).
    /// A listing is reused until the watch delivers a change of membership (see `live_nodes::LiveNodes`).
    pub async fn live_nodes(&self) -> crate::error::Result<Vec<NodeInfo>> {
        let generation = self.live_nodes_listing.generation();
        if let Some(nodes) = self.live_nodes_listing.fresh(generation) {
            return Ok(nodes);
        }
        let mut out = Vec::new();
        for (id, doc) in self.coordinator.list_nodes().await? {
            match serde_json::from_slice::<NodeInfo>(&doc) {
                Ok(info) => out.push(info),
                Err(e) => tracing::warn!(node = %id, error = %e, "unreadable node record"),
            }
        }
        self.live_nodes_listing.keep(generation, &out);
        Ok(out)
    }
}
