//! The merges running on this node (what `system.replication_queue` lists) and the permits
//! that bound how many run at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tandem_parts::PartId;
use tokio::sync::{Notify, Semaphore};

/// A merge running on this node, for `system.replication_queue`.
#[derive(Clone, Debug)]
pub struct RunningMerge {
    pub table: String,
    pub partition: String,
    /// Known up front for a replica rebuilding a registered merge; after the merge for a leader.
    pub merged: Option<PartId>,
    pub sources: usize,
    pub bytes: u64,
    pub started: Instant,
    /// `leader`: choosing and registering the merge; `replica`: rebuilding a registered one.
    pub role: &'static str,
}

/// The merges running on this node and the permits that bound them.
pub struct Merges {
    pub(crate) permits: Arc<Semaphore>,
    running: Mutex<HashMap<u64, RunningMerge>>,
    next: AtomicU64,
    /// Parts that a merge led by this node is reading now: not chosen for another merge.
    pub(crate) busy: Mutex<HashSet<PartId>>,
    /// Wakes the leader loop (a merge finished, so the next one can start at once).
    pub(crate) wake: Notify,
}

impl Merges {
    pub(crate) fn new(concurrency: usize) -> Self {
        Merges {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            running: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            busy: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        }
    }

    pub(crate) fn running(&self) -> Vec<RunningMerge> {
        self.running.lock().expect("merges lock").values().cloned().collect()
    }

    pub(crate) fn start(&self, merge: RunningMerge) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.running.lock().expect("merges lock").insert(key, merge);
        key
    }

    pub(crate) fn finish(&self, key: u64) {
        self.running.lock().expect("merges lock").remove(&key);
    }
}
