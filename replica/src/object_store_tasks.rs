//! The object store's background work: the uploader (every part this node is responsible
//! for gets an object), the end of bootstrap mode, and the garbage collector that deletes
//! objects no registered part references (one node at a time, fenced by etcd).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_coordinator::OBJECT_STORE_HOLDER;
use tandem_parts::PartId;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::bucket::{Bucket, UploadError};
use crate::replica::Replica;

/// The leadership role of the object-store garbage collector.
const GC_ROLE: &str = "object-store-gc";
const MAX_UPLOAD_BACKOFF: Duration = Duration::from_secs(30);
/// How often the store is probed when no upload is due that would tell whether it is
/// reachable: often while it is down, rarely while it is up.
const PROBE_WHILE_DOWN: Duration = Duration::from_secs(2);
const PROBE_WHILE_UP: Duration = Duration::from_secs(30);

/// Uploads, in the background, every active part this node is responsible for that the object
/// store does not have yet: parts this node wrote, and parts whose writer is no longer live
/// (so a part survives in the bucket even when its writer died before uploading). Failed
/// uploads are retried with backoff; the backlog survives restarts because it is derived from
/// the catalog (parts without an object-store holder), not kept in memory.
pub async fn run_uploader(node: Arc<Replica>, bucket: Arc<Bucket>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(node.config.settings.upload_concurrency.max(1)));
    let state: Arc<Mutex<UploadState>> = Arc::default();
    // None: probe at the first pass, so a node that starts with the store down says so.
    let mut last_probe: Option<Instant> = None;
    // Uploads in flight stop with the node (a create-only put cut short leaves nothing behind).
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = bucket.wake.notified() => {},
            _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            _ = shutdown.cancelled() => {
                tasks.shutdown().await;
                return;
            }
        }
        while tasks.try_join_next().is_some() {}
        let tables = node.catalog.snapshot();
        let me = node.config.node_id.as_str();
        let mut live: Option<HashSet<String>> = None;
        let mut backlog = 0i64;
        let mut due = Vec::new();
        for (name, table) in &tables {
            for part in table.parts.values() {
                if node.catalog.in_object_store(&part.id) {
                    continue;
                }
                let writer = part.manifest.node.as_deref();
                if writer != Some(me) {
                    if live.is_none() {
                        live = match node.live_nodes().await {
                            Ok(nodes) => Some(nodes.into_iter().map(|n| n.node_id).collect()),
                            Err(e) => {
                                tracing::debug!(error = %e, "cannot list live nodes; uploading only this node's parts");
                                Some(HashSet::new())
                            }
                        };
                    }
                    // The writer is alive: it uploads its own parts.
                    if writer.is_some_and(|w| live.as_ref().is_some_and(|l| l.contains(w))) {
                        continue;
                    }
                }
                backlog += 1;
                if state.lock().expect("upload state lock").is_due(&part.id) {
                    due.push((name.clone(), part.clone()));
                }
            }
        }
        node.metrics.object_store_upload_backlog.set(backlog);
        state.lock().expect("upload state lock").forget_gone(|id| tables.values().any(|t| t.parts.contains_key(id)));

        let probe_every = if bucket.status().0 { PROBE_WHILE_UP } else { PROBE_WHILE_DOWN };
        if due.is_empty() && last_probe.is_none_or(|at| at.elapsed() >= probe_every) {
            last_probe = Some(Instant::now());
            let result = bucket.mirror.probe().await;
            bucket.record(&node.metrics, &result);
        }
        for (table, part) in due {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.cancelled() => return,
            };
            state.lock().expect("upload state lock").uploading.insert(part.id);
            let (node, bucket, state) = (node.clone(), bucket.clone(), state.clone());
            tasks.spawn(async move {
                // The part (its file handle) is bound whole here: the file is not deleted while
                // it is read, even if the part is merged away meanwhile.
                let part = part;
                let mut result = bucket.upload(&node.metrics, node.catalog.store(), &table, &part.id, None).await;
                if result.is_ok()
                    && let Err(e) = node.coordinator.add_holder_at(&table, &part.id, part.revision, OBJECT_STORE_HOLDER).await
                {
                    result = Err(UploadError::Record(e));
                }
                drop(permit);
                let mut state = state.lock().expect("upload state lock");
                state.uploading.remove(&part.id);
                match result {
                    Ok(outcome) => {
                        state.failures.remove(&part.id);
                        state.recorded.insert(part.id, Instant::now());
                        tracing::debug!(%table, part = %part.id, ?outcome, "part uploaded to the object store");
                    }
                    Err(e) => {
                        let attempts = state.failures.get(&part.id).map_or(0, |(_, n)| *n) + 1;
                        let backoff =
                            (Duration::from_millis(500) * 2u32.saturating_pow(attempts.min(8))).min(MAX_UPLOAD_BACKOFF);
                        state.failures.insert(part.id, (Instant::now() + backoff, attempts));
                        tracing::warn!(%table, part = %part.id, attempts, retry_in_ms = backoff.as_millis() as u64, error = %e,
                            "part upload to the object store failed; it stays in the backlog");
                    }
                }
            });
        }
    }
}

/// What the uploader remembers between passes (all of it can be lost: the backlog itself is
/// derived from the catalog).
#[derive(Default)]
struct UploadState {
    /// Being uploaded now.
    uploading: HashSet<PartId>,
    /// Uploaded and recorded; the record may not have come back through the watch yet.
    recorded: HashMap<PartId, Instant>,
    /// Failed uploads: when to try again, and how many attempts so far.
    failures: HashMap<PartId, (Instant, u32)>,
}

/// How long an uploaded part waits for its object-store record to come back before it is
/// uploaded again (the record may have been removed: a corrupt object was deleted).
const RECORD_WAIT: Duration = Duration::from_secs(5);

impl UploadState {
    fn is_due(&self, id: &PartId) -> bool {
        let now = Instant::now();
        !self.uploading.contains(id)
            && self.recorded.get(id).is_none_or(|at| now.duration_since(*at) >= RECORD_WAIT)
            && self.failures.get(id).is_none_or(|(retry_at, _)| *retry_at <= now)
    }

    fn forget_gone(&mut self, exists: impl Fn(&PartId) -> bool) {
        let now = Instant::now();
        self.recorded.retain(|id, at| exists(id) && now.duration_since(*at) < RECORD_WAIT);
        self.failures.retain(|id, _| exists(id));
    }
}

/// Ends bootstrap mode once every part registered when the node started is on its disk.
pub async fn run_bootstrap(node: Arc<Replica>, bucket: Arc<Bucket>, shutdown: CancellationToken) {
    if !bucket.is_bootstrapping() {
        return;
    }
    while !node.catalog.is_caught_up() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {},
            _ = shutdown.cancelled() => return,
        }
    }
    let target = node.catalog.applied_revision();
    let started = Instant::now();
    tracing::info!(target_revision = target, "bootstrapping from the object store");
    loop {
        tokio::select! {
            done = node.catalog.wait_complete(target, Duration::from_secs(1)) => if done { break },
            _ = shutdown.cancelled() => return,
        }
    }
    bucket.bootstrapping.store(false, Ordering::Release);
    tracing::info!(
        target_revision = target,
        seconds = started.elapsed().as_secs_f64(),
        parts = node.metrics.object_store_fetched_parts.get(),
        "bootstrap from the object store complete; peers are the first source again"
    );
}

/// The object-store garbage collector. On the one node that holds the `object-store-gc`
/// leadership (in a cluster), every `gc_interval`: lists the bucket, compares with the parts
/// registered in the coordinator, and deletes objects that have been unreferenced for the
/// grace period, after checking again that it still leads and that they are still unreferenced.
pub async fn run_gc(node: Arc<Replica>, bucket: Arc<Bucket>, shutdown: CancellationToken) {
    // When each unreferenced object was first seen unreferenced by this leader. A new leader
    // starts with an empty map, so it waits a full grace period before deleting anything.
    let mut unreferenced_since: HashMap<(String, PartId), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(node.config.settings.object_store_gc_interval());
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.cancelled() => return,
        }
        let fence = if node.config.is_cluster() {
            let lease = node.lease.load(Ordering::Acquire);
            if lease == 0 {
                continue;
            }
            match node.coordinator.acquire_leadership(GC_ROLE, &node.config.node_id, lease).await {
                Ok(Some(fence)) => Some(fence),
                Ok(None) => {
                    unreferenced_since.clear();
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot campaign for object-store garbage collection");
                    continue;
                }
            }
        } else {
            None
        };
        if let Err(e) = gc_pass(&node, &bucket, fence, &mut unreferenced_since).await {
            tracing::warn!(error = %e, "object-store garbage collection pass failed; retrying next interval");
        }
    }
}

async fn referenced(node: &Replica) -> anyhow::Result<HashSet<(String, PartId)>> {
    let snapshot = node.coordinator.snapshot().await?;
    Ok(snapshot.parts.into_iter().map(|p| (p.table, p.id)).collect())
}

async fn gc_pass(
    node: &Replica,
    bucket: &Bucket,
    fence: Option<tandem_coordinator::Revision>,
    unreferenced_since: &mut HashMap<(String, PartId), Instant>,
) -> anyhow::Result<()> {
    let listed = bucket.mirror.list().await;
    bucket.record(&node.metrics, &listed);
    let objects = listed?;
    // Listed first, then the registrations: an object registered in between counts as referenced.
    let referenced = referenced(node).await?;
    let now = Instant::now();
    let mut listed_keys = HashSet::new();
    let mut expired = Vec::new();
    for object in objects {
        let key = (object.table, object.id);
        listed_keys.insert(key.clone());
        if referenced.contains(&key) {
            continue;
        }
        let since = *unreferenced_since.entry(key.clone()).or_insert(now);
        if now.duration_since(since) >= node.config.settings.object_store_gc_grace() {
            expired.push(key);
        }
    }
    unreferenced_since.retain(|key, _| listed_keys.contains(key) && !referenced.contains(key));
    if expired.is_empty() {
        return Ok(());
    }
    if let Some(fence) = fence
        && !node.coordinator.still_leader(GC_ROLE, fence).await?
    {
        tracing::warn!("lost the object-store garbage collection leadership before deleting; deleting nothing");
        unreferenced_since.clear();
        return Ok(());
    }
    // Checked again right before deleting: a part registered since the listing keeps its object.
    let referenced = self::referenced(node).await?;
    let mut deleted = 0;
    for key in expired.into_iter().filter(|k| !referenced.contains(k)) {
        let result = bucket.mirror.delete(&key.0, &key.1).await;
        bucket.record(&node.metrics, &result);
        result?;
        unreferenced_since.remove(&key);
        node.metrics.object_store_gc_deleted_objects.inc();
        deleted += 1;
    }
    tracing::info!(deleted, "object-store garbage collection deleted unreferenced objects");
    Ok(())
}
