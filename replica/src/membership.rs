//! Cluster membership: a node announces itself under an etcd lease (its addresses and how far
//! it has applied the cluster's changes); the entry disappears when the node dies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tandem_coordinator::{CoordError, Revision};
use tokio_util::sync::CancellationToken;

use crate::replica::Replica;

/// What a node says about itself under `nodes/<node id>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub node_id: String,
    pub grpc_addr: String,
    pub http_addr: String,
    /// Last revision that changed tables or parts and that this node applied.
    pub data_revision: Revision,
    /// Every part registered up to this revision is on this node.
    pub complete_revision: Revision,
    pub updated_at_ms: i64,
    /// Query nodes hold no parts: quorums, merges and drains do not count them.
    #[serde(default)]
    pub role: crate::config::NodeRole,
}

impl NodeInfo {
    /// Whether the node holds parts (and so counts for quorums and merges).
    pub fn holds_parts(&self) -> bool {
        self.role == crate::config::NodeRole::Storage
    }
}

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
    /// A listing is reused until the watch delivers a change of membership, for at most
    /// [`LIVE_NODES_REUSE`].
    pub async fn live_nodes(&self) -> crate::error::Result<Vec<NodeInfo>> {
        let generation = self.live_nodes_listing.generation.load(Ordering::Acquire);
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

/// How long a listing of the live nodes is reused at most: a safety net for a watch that has
/// stopped delivering (membership itself lags by up to a lease TTL, 10 s).
const LIVE_NODES_REUSE: Duration = Duration::from_secs(1);

/// The last listing of the live nodes. Inserts with a quorum and fetches ask for the live
/// nodes on every request, and a listing is a round trip to the store (about 0.5 ms of each
/// quorum insert); the watch says when membership changes.
#[derive(Default)]
pub(crate) struct LiveNodes {
    /// Bumped on every membership change the watch delivers.
    generation: AtomicU64,
    listed: Mutex<Option<(Instant, u64, Vec<NodeInfo>)>>,
}

impl LiveNodes {
    /// Forgets the listing: a node record changed, appeared or went away.
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn fresh(&self, generation: u64) -> Option<Vec<NodeInfo>> {
        let listed = self.listed.lock().expect("live nodes lock");
        let (at, listed_in, nodes) = listed.as_ref()?;
        (*listed_in == generation && at.elapsed() < LIVE_NODES_REUSE).then(|| nodes.clone())
    }

    /// Keeps a listing made while `generation` was current (a change during the listing
    /// makes it stale at once).
    fn keep(&self, generation: u64, nodes: &[NodeInfo]) {
        *self.listed.lock().expect("live nodes lock") = Some((Instant::now(), generation, nodes.to_vec()));
    }
}
