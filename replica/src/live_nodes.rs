//! What a node says about itself in the coordinator, and the last listing of the live nodes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tandem_coordinator::Revision;

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

    /// A storage node known by its id alone: what tests of listings and fetch order need.
    #[cfg(test)]
    pub(crate) fn named(id: &str) -> Self {
        NodeInfo {
            node_id: id.into(),
            grpc_addr: String::new(),
            http_addr: String::new(),
            data_revision: 0,
            complete_revision: 0,
            updated_at_ms: 0,
            role: Default::default(),
        }
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
    /// Which membership the store has now, as far as the watch has told: pass it to
    /// [`fresh`](Self::fresh) and, with a new listing, to [`keep`](Self::keep).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets the listing: a node record changed, appeared or went away.
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The kept listing, if it was made in `generation` less than [`LIVE_NODES_REUSE`] ago.
    pub(crate) fn fresh(&self, generation: u64) -> Option<Vec<NodeInfo>> {
        let listed = self.listed.lock().expect("live nodes lock");
        let (at, listed_in, nodes) = listed.as_ref()?;
        (*listed_in == generation && at.elapsed() < LIVE_NODES_REUSE).then(|| nodes.clone())
    }

    /// Keeps a listing made while `generation` was current (a change during the listing
    /// makes it stale at once).
    pub(crate) fn keep(&self, generation: u64, nodes: &[NodeInfo]) {
        *self.listed.lock().expect("live nodes lock") = Some((Instant::now(), generation, nodes.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_reused_until_membership_changes() {
        let live = LiveNodes::default();
        assert!(live.fresh(live.generation()).is_none(), "nothing listed yet");
        let listed_in = live.generation();
        live.keep(listed_in, &[NodeInfo::named("n1")]);
        assert_eq!(live.fresh(live.generation()).map(|n| n.len()), Some(1));
        live.changed();
        assert!(live.fresh(live.generation()).is_none(), "a change the watch delivered forgets it");

        // A change while a listing was in flight makes that listing stale at once.
        let listed_in = live.generation();
        live.changed();
        live.keep(listed_in, &[NodeInfo::named("n1"), NodeInfo::named("n2")]);
        assert!(live.fresh(live.generation()).is_none());
    }
}
