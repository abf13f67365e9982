//! Background merges. Per table, one node at a time (the holder of the `merge/<table>`
//! leadership, on its membership lease) chooses merges with the size-tiered selector, writes
//! the merged part, and registers it in one transaction that removes the sources, checks they
//! are all still registered, and checks the leadership still holds (a leader that paused past
//! its lease registers nothing). Replicas rebuild a merged part from their own copies of the
//! sources when they have them and keep it if its hash matches (else they fetch it).
//!
//! Merges run on blocking threads, at most `merge_concurrency` at once per node, so they never
//! starve inserts or replication.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tandem_coordinator::{NewPart, Revision};
use tandem_parts::{
    Codec, ColumnStats, LocalPartStore, MergeCandidate, MergePlan, MergePolicy, MergeSource, PART_FORMAT_VERSION,
    PartId, PartManifest, TtlFilter, VerifyOutcome, merge_parts, select_merge,
};
use tokio_util::sync::CancellationToken;

use crate::catalog::ActivePart;
use crate::receive::{StreamFailure, receive};
use crate::replica::Replica;
use crate::running_merges::RunningMerge;
use crate::schema::TtlCutoff;

/// How long a part waits to be on every live node before it is merged anyway.
const REPLICATION_WAIT: Duration = Duration::from_secs(60);

/// The leadership role of `table`'s merges.
fn role(table: &str) -> String {
    format!("merge/{table}")
}

/// Parts are merged only with parts of the same partition and the same column layout (parts
/// written under different schemas are not concatenated).
fn merge_group(manifest: &PartManifest) -> String {
    let layout = serde_json::to_string(&manifest.column_ids).unwrap_or_default();
    let layout = if manifest.column_ids.is_empty() { format!("v{}", manifest.schema_version) } else { layout };
    format!("{}\u{0}{layout}", manifest.partition)
}

/// Etcd allows 128 operations per transaction; dropping a part takes a compare and two deletes.
const MAX_DROPS_PER_TRANSACTION: usize = 40;

/// How a part stands against its table's TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// No row has expired (or the part does not hold the TTL column).
    None,
    /// Some rows have: a merge leaves them out.
    Some,
    /// Every row has: the part is dropped without rewriting anything.
    All,
}

/// The TTL filter of a part: the cutoff on the Parquet column holding the TTL column (by its
/// id; by name for parts written before column ids). None when the part predates the column.
fn ttl_filter(manifest: &PartManifest, cutoff: &TtlCutoff) -> Option<TtlFilter> {
    let column = match manifest.column_ids.iter().find(|(_, id)| **id == cutoff.column.id) {
        Some((name, _)) => name.clone(),
        None if manifest.column_ids.is_empty() && manifest.columns.contains_key(&cutoff.column.name) => {
            cutoff.column.name.clone()
        }
        None => return None,
    };
    Some(TtlFilter { column, before: cutoff.before })
}

/// Where a part stands against a TTL filter, from its manifest's statistics.
fn expiry(manifest: &PartManifest, filter: &TtlFilter) -> Expiry {
    let Some(stats) = manifest.columns.get(&filter.column) else { return Expiry::None };
    let bound = |value: &Option<serde_json::Value>| value.as_ref().and_then(serde_json::Value::as_i64);
    match (bound(&stats.min), bound(&stats.max)) {
        (_, Some(max)) if max < filter.before && stats.null_count == 0 => Expiry::All,
        (Some(min), _) if min < filter.before => Expiry::Some,
        _ => Expiry::None,
    }
}

/// The TTL filter a merge of `sources` applies: the table's cutoff, when some source holds
/// expired rows and every source holds the column (a merge group shares one column layout).
fn merge_ttl(sources: &[ActivePart], cutoff: Option<&TtlCutoff>) -> Option<TtlFilter> {
    let cutoff = cutoff?;
    let filters: Option<Vec<TtlFilter>> = sources.iter().map(|p| ttl_filter(&p.manifest, cutoff)).collect();
    let filters = filters?;
    let first = filters.first()?.clone();
    let consistent = filters.iter().all(|f| *f == first);
    let expiring = sources.iter().zip(&filters).any(|(p, f)| expiry(&p.manifest, f) != Expiry::None);
    (consistent && expiring).then_some(first)
}

/// This node's standing as the merge leader of a table.
#[derive(Clone, Copy, Debug)]
enum Leadership {
    /// Another node leads, or this one cannot tell.
    Follower,
    /// This node leads; its registrations carry the fence (none on one node, where there is
    /// nobody to fence off).
    Leader { fence: Option<Revision> },
}

/// What this node last learned of its standing in each table's merge leadership. Asking is a
/// coordinator transaction, and every node used to ask on every pass that found a merge to
/// do, that is on nearly every part that arrived: under 10,000-row inserts on 2 nodes, a
/// quarter of etcd's requests. An answer is reused for one `merge_interval` while this node's
/// lease is the same. A stale answer costs nothing but time: a leader's fence is checked again
/// by the transaction that registers its merge, and a dead leader's key stays for its lease's
/// TTL (10 s) anyway, so a follower takes over at most one interval later than it could.
struct Leaderships {
    reuse: Duration,
    known: HashMap<String, (i64, Leadership, Instant)>,
}

impl Leaderships {
    fn new(reuse: Duration) -> Self {
        Leaderships { reuse, known: HashMap::new() }
    }

    async fn of(&mut self, node: &Replica, table: &str) -> Leadership {
        if !node.config.is_cluster() {
            return Leadership::Leader { fence: None };
        }
        let lease = node.lease.load(Ordering::Acquire);
        if lease == 0 {
            return Leadership::Follower;
        }
        if let Some((asked_with, standing, at)) = self.known.get(table)
            && *asked_with == lease
            && at.elapsed() < self.reuse
        {
            return *standing;
        }
        let standing = match node.coordinator.acquire_leadership(&role(table), &node.config.node_id, lease).await {
            Ok(Some(revision)) => Leadership::Leader { fence: Some(revision) },
            Ok(None) => Leadership::Follower,
            Err(e) => {
                tracing::warn!(%table, error = %e, "cannot campaign for merge leadership");
                return Leadership::Follower;
            }
        };
        self.known.insert(table.to_string(), (lease, standing, Instant::now()));
        standing
    }
}

/// Drops parts whose every row has passed the TTL, in fenced transactions; returns the
/// revision of the last one, or None when nothing was dropped.
async fn drop_expired(node: &Replica, table: &str, parts: &[&ActivePart], fence: Option<Revision>) -> Option<Revision> {
    let role = role(table);
    let mut last = None;
    for chunk in parts.chunks(MAX_DROPS_PER_TRANSACTION) {
        let registered: Vec<(PartId, Revision)> = chunk.iter().map(|p| (p.id, p.revision)).collect();
        match node.coordinator.drop_expired_parts(table, &registered, fence.map(|f| (role.as_str(), f))).await {
            Ok(Some(revision)) => {
                let rows: u64 = chunk.iter().map(|p| p.manifest.rows).sum();
                node.metrics.ttl_dropped_parts.inc_by(chunk.len() as u64);
                node.metrics.ttl_deleted_rows.inc_by(rows);
                tracing::info!(%table, parts = chunk.len(), rows, revision, "dropped parts whose rows have all passed the TTL");
                last = Some(revision);
            }
            Ok(None) => {
                tracing::info!(%table, "expired parts not dropped: one changed, or this node no longer leads the table's merges");
                break;
            }
            Err(e) => {
                tracing::warn!(%table, error = %e, "cannot drop expired parts; trying again on the next pass");
                break;
            }
        }
    }
    last
}

/// The leader loop: for each table this node leads, drops the parts its TTL has wholly
/// expired, then starts the merges the selector picks among the parts no running merge is
/// reading (leaving out expired rows), and rewrites parts holding expired rows at most once per
/// `merge_with_ttl_timeout` per partition, while merge permits are free. It runs every
/// `merge_interval`, when new parts arrive, and as soon as a merge finishes.
pub async fn run(node: Arc<Replica>, shutdown: CancellationToken) {
    // A query node holds no parts: it never leads merges.
    if node.config.settings.role == crate::config::NodeRole::Query {
        return;
    }
    let mut tick = tokio::time::interval(node.config.settings.merge_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut data = node.catalog.subscribe_data_revision();
    let policy = MergePolicy::default();
    let mut leaderships = Leaderships::new(node.config.settings.merge_interval());
    // Merges in flight stop with the node: a merged part written but not registered is an
    // orphan file, swept later.
    let mut tasks = tokio::task::JoinSet::new();
    // When this leader last rewrote a (table, merge group) for its TTL alone.
    let mut ttl_merged: HashMap<(String, String), Instant> = Default::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = node.merges.wake.notified() => {},
            _ = data.changed() => {},
            _ = shutdown.cancelled() => {
                tasks.shutdown().await;
                return;
            }
        }
        while tasks.try_join_next().is_some() {}
        // A draining node starts no merges as a leader: each would make one more part that only
        // it holds until the replicas rebuild it. Its leaderships pass on when it stops.
        if node.draining.load(Ordering::Acquire) {
            continue;
        }
        if node.merges.permits.available_permits() == 0 {
            continue;
        }
        // In a cluster, a part is merged once every live node holds it: then every replica can
        // rebuild the merged part from its own copies, and the merge never leaves rows that only
        // the leader has. A part still not everywhere after a while is merged anyway (a replica
        // that cannot keep up must not stop merges); replicas then fetch the merged part.
        let live: Option<Vec<String>> = if node.config.is_cluster() {
            match node.live_nodes().await {
                Ok(nodes) => Some(nodes.into_iter().filter(|n| n.holds_parts()).map(|n| n.node_id).collect()),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list live nodes; no merges this pass");
                    continue;
                }
            }
        } else {
            None
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let everywhere = |p: &ActivePart| {
            let Some(live) = &live else { return true };
            let holders = node.catalog.holders(&p.id);
            live.iter().all(|n| holders.contains(n))
                || now_ms - p.manifest.created_at_ms >= REPLICATION_WAIT.as_millis() as i64
        };
        let tables = node.catalog.snapshot();
        leaderships.known.retain(|table, _| tables.contains_key(table));
        for (name, state) in tables {
            if !state.def.settings.background_merges {
                continue;
            }
            let cutoff = state.def.ttl_cutoff(chrono::Utc::now());
            // With `local_replicas`, no part is on every node: one in the bucket can be merged
            // (the leader reads the sources it does not hold from there).
            let spread = state.def.settings.local_replicas.is_some();
            let ready = |p: &ActivePart| everywhere(p) || (spread && node.catalog.in_object_store(&p.id));
            // Merges read their sources here, or from the bucket.
            let readable =
                |p: &&ActivePart| p.file.is_some() || (node.bucket.is_some() && node.catalog.in_object_store(&p.id));
            // Asked once per table and pass, when there is something to do.
            let mut leader: Option<Leadership> = None;
            let idle = |p: &&ActivePart| {
                p.replaced_by.is_none() && !node.merges.busy.lock().expect("merges lock").contains(&p.id) && ready(p)
            };
            if let Some(cutoff) = &cutoff {
                let expired: Vec<&ActivePart> = state
                    .parts
                    .values()
                    .filter(idle)
                    .filter(|p| ttl_filter(&p.manifest, cutoff).is_some_and(|f| expiry(&p.manifest, &f) == Expiry::All))
                    .collect();
                if !expired.is_empty() {
                    let Leadership::Leader { fence } = leaderships.of(&node, &name).await else { continue };
                    if let Some(revision) = drop_expired(&node, &name, &expired, fence).await
                        && !node.catalog.wait_applied(revision, Duration::from_secs(30)).await
                    {
                        tracing::warn!(table = %name, revision, "dropped expired parts are not applied here after 30 s");
                    }
                    // The next pass selects merges among what is left.
                    continue;
                }
            }
            loop {
                let mut ttl_only = false;
                let candidates: Vec<MergeCandidate> = state
                    .parts
                    .values()
                    .filter(idle)
                    .filter(readable)
                    .map(|p| MergeCandidate {
                        id: p.id,
                        partition: merge_group(&p.manifest),
                        bytes: p.manifest.bytes,
                        level: p.manifest.level,
                    })
                    .collect();
                let chosen = match select_merge(&candidates, &policy) {
                    Some(chosen) => chosen,
                    None => {
                        // No size-tiered merge: rewrite the parts of one group that hold
                        // expired rows, if that group's last TTL merge is old enough.
                        let Some(cutoff) = &cutoff else { break };
                        let timeout = Duration::from_secs(state.def.settings.merge_with_ttl_timeout);
                        let mut by_group: std::collections::BTreeMap<String, Vec<PartId>> = Default::default();
                        for part in state.parts.values().filter(idle).filter(readable) {
                            let group = merge_group(&part.manifest);
                            let due = ttl_merged
                                .get(&(name.clone(), group.clone()))
                                .is_none_or(|at: &Instant| at.elapsed() >= timeout);
                            if due
                                && ttl_filter(&part.manifest, cutoff)
                                    .is_some_and(|f| expiry(&part.manifest, &f) == Expiry::Some)
                            {
                                by_group.entry(group).or_default().push(part.id);
                            }
                        }
                        let Some((group, mut ids)) = by_group.into_iter().next() else { break };
                        ids.truncate(policy.max_parts);
                        ttl_merged.insert((name.clone(), group), Instant::now());
                        ttl_only = true;
                        ids
                    }
                };
                if leader.is_none() {
                    leader = Some(leaderships.of(&node, &name).await);
                }
                let Some(Leadership::Leader { fence }) = leader else { break };
                let Ok(permit) = node.merges.permits.clone().try_acquire_owned() else { break };
                let sources: Vec<ActivePart> = chosen.iter().filter_map(|id| state.parts.get(id).cloned()).collect();
                let ttl = merge_ttl(&sources, cutoff.as_ref());
                if ttl_only && ttl.is_none() {
                    break;
                }
                node.merges.busy.lock().expect("merges lock").extend(chosen.iter().copied());
                let (node, name, sort_key) = (node.clone(), name.clone(), state.def.order_by.clone());
                let codec = state.def.settings.default_compression_codec;
                tasks.spawn(async move {
                    let key = node.merges.start(RunningMerge {
                        table: name.clone(),
                        partition: sources[0].manifest.partition.clone(),
                        merged: None,
                        sources: sources.len(),
                        bytes: sources.iter().map(|p| p.manifest.bytes).sum(),
                        started: Instant::now(),
                        role: if ttl_only { "ttl" } else { "leader" },
                    });
                    if let Err(e) = merge_and_register(&node, &name, &sort_key, &sources, ttl, codec, fence).await {
                        tracing::warn!(table = %name, error = %e, "merge failed; the sources stay as they are");
                    }
                    node.merges.finish(key);
                    {
                        let mut busy = node.merges.busy.lock().expect("merges lock");
                        for source in &sources {
                            busy.remove(&source.id);
                        }
                    }
                    drop(permit);
                    node.merges.wake.notify_one();
                });
            }
        }
    }
}

/// What the merge leader's merge came to.
enum LeaderMerge {
    Written(MergedFile),
    /// Every row has expired.
    NoRows,
    /// A source's file here does not hash to its id (it has been moved aside).
    CorruptSource {
        id: PartId,
        reason: String,
    },
}

/// A merged part written into the local store.
struct MergedFile {
    id: PartId,
    bytes: u64,
    rows: u64,
    columns: BTreeMap<String, ColumnStats>,
}

/// Copies part `id` of `table` from the bucket into a scratch file, checked against its id as it
/// arrives: a merge reads it from there page by page, as it reads the parts on disk, rather than
/// holding it in memory. The file is gone once closed.
async fn scratch_copy(
    node: &Replica,
    bucket: &crate::bucket::Bucket,
    table: &str,
    id: &PartId,
) -> anyhow::Result<std::fs::File> {
    let opened = bucket.mirror.open(table, id).await;
    bucket.record(&node.metrics, &opened);
    let chunks = opened?;
    // A stalled stream fails the merge as a stalled fetch fails: after the same wait per chunk.
    let chunk_timeout = Duration::from_secs(node.config.settings.fetch_chunk_timeout_seconds.max(1));
    let store = node.catalog.store().clone();
    let (failure, written) = receive(store, *id, chunks, chunk_timeout, |writer| {
        let bytes = writer.bytes_written();
        Ok((bytes, writer.finish_scratch()?))
    })
    .await?;
    node.metrics.bucket_read_requests.inc();
    let context = || format!("copying part {id} of {table} from the bucket");
    match failure {
        Some(StreamFailure::Stalled(wait)) => return Err(anyhow::anyhow!("no data for {wait:?}").context(context())),
        Some(StreamFailure::Source(e)) => return Err(anyhow::Error::from(e).context(context())),
        None => {}
    }
    if let Err(tandem_parts::PartError::Corrupt { .. }) = &written {
        node.metrics.object_store_corrupt_objects.inc();
    }
    let (bytes, file) = written?;
    node.metrics.bucket_read_bytes.inc_by(bytes);
    Ok(file)
}

/// Merges the sources (their files here, or scratch copies of them from the bucket) into a new
/// file of the store, named by its hash once `keep` accepts it (blocking). None when no row is
/// left; Err(the id) when `keep` refuses it, and nothing is kept.
fn merge_files(
    store: &LocalPartStore,
    sources: Vec<(PartId, Option<std::fs::File>)>,
    plan: &MergePlan<'_>,
    keep: impl FnOnce(&PartId) -> bool,
) -> anyhow::Result<Option<Result<MergedFile, PartId>>> {
    let mut inputs = Vec::with_capacity(sources.len());
    for (id, copy) in sources {
        inputs.push(match copy {
            Some(file) => MergeSource::opened(id, file),
            None => MergeSource::file(id, &store.path(&id))?,
        });
    }
    let output = store.begin_new_part()?;
    let Some(merged) = merge_parts(&inputs, plan, output)? else {
        return Ok(None);
    };
    let (id, bytes) = (merged.output.id_so_far(), merged.output.bytes_written());
    if !keep(&id) {
        return Ok(Some(Err(id)));
    }
    merged.output.finish()?;
    Ok(Some(Ok(MergedFile { id, bytes, rows: merged.rows, columns: merged.columns })))
}

/// The manifest of the merged part of `sources`.
fn merged_manifest(
    node_id: &str,
    merged: &MergedFile,
    sources: &[(PartId, Arc<PartManifest>, Revision)],
    sort_key: &[String],
    ttl_filter: Option<TtlFilter>,
    codec: Codec,
) -> PartManifest {
    let first = &sources[0].1;
    let mut merged_from: Vec<PartId> = sources.iter().map(|(id, _, _)| *id).collect();
    merged_from.sort();
    let low = sources.iter().map(|(_, m, r)| m.revision_range.map_or(*r, |(low, _)| low)).min().unwrap_or(0);
    let high = sources.iter().map(|(_, m, r)| m.revision_range.map_or(*r, |(_, high)| high)).max().unwrap_or(0);
    PartManifest {
        format_version: PART_FORMAT_VERSION,
        table: first.table.clone(),
        partition: first.partition.clone(),
        rows: merged.rows,
        bytes: merged.bytes,
        schema_version: sources.iter().map(|(_, m, _)| m.schema_version).max().unwrap_or(0),
        block_id: None,
        level: sources.iter().map(|(_, m, _)| m.level).max().unwrap_or(0) + 1,
        sort_key: sort_key.to_vec(),
        columns: merged.columns.clone(),
        column_ids: first.column_ids.clone(),
        node: Some(node_id.to_string()),
        created_at_ms: chrono::Utc::now().timestamp_millis(),
        merged_from,
        revision_range: Some((low, high)),
        ttl_filter,
        codec,
        quorum_until_ms: sources.iter().filter_map(|(_, m, _)| m.quorum_until_ms).max(),
    }
}

async fn merge_and_register(
    node: &Arc<Replica>,
    table: &str,
    sort_key: &[String],
    sources: &[ActivePart],
    ttl: Option<TtlFilter>,
    codec: Codec,
    fence: Option<Revision>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = node.catalog.store().clone();
    // Sources this node does not hold are copied from the bucket into scratch files, checked
    // against their ids.
    let mut ids: Vec<(PartId, Option<std::fs::File>)> = Vec::with_capacity(sources.len());
    for source in sources {
        let copy = match (&source.file, &node.bucket) {
            (Some(_), _) => None,
            (None, Some(bucket)) => Some(scratch_copy(node, bucket, table, &source.id).await?),
            (None, None) => anyhow::bail!("part {} is not on this node and there is no object store", source.id),
        };
        ids.push((source.id, copy));
    }
    let (key, name, partition) = (sort_key.to_vec(), table.to_string(), sources[0].manifest.partition.clone());
    let filter = ttl.clone();
    // `sources` hold the files open against deletion while they are read.
    let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<LeaderMerge> {
        // A source that rotted on this disk must not go into a merged part: the new part's
        // hash would vouch for the damage, and a replica whose own rebuild differs fetches the
        // leader's part. So the files here are hashed whole first (tens of milliseconds per
        // 100 MB, which take over a second to merge; the merge then reads them from the page
        // cache); bucket copies were checked as they arrived.
        for (id, copy) in &ids {
            if copy.is_some() {
                continue;
            }
            match store.verify(id)? {
                VerifyOutcome::Valid => {}
                VerifyOutcome::Missing => anyhow::bail!("the file of part {id} is gone from this node"),
                VerifyOutcome::Corrupt { reason, moved_to } => {
                    let reason = format!("{reason}; moved to {}", moved_to.display());
                    return Ok(LeaderMerge::CorruptSource { id: *id, reason });
                }
            }
        }
        let plan = MergePlan { sort_key: &key, table: &name, partition: &partition, ttl: filter.as_ref(), codec };
        Ok(match merge_files(&store, ids, &plan, |_| true)?.and_then(Result::ok) {
            Some(written) => LeaderMerge::Written(written),
            None => LeaderMerge::NoRows,
        })
    })
    .await??;
    let written = match outcome {
        LeaderMerge::Written(written) => written,
        LeaderMerge::NoRows => {
            // Every row has expired since the sources were chosen: drop them instead.
            let sources: Vec<&ActivePart> = sources.iter().collect();
            if let Some(revision) = drop_expired(node, table, &sources, fence).await {
                node.catalog.wait_applied(revision, Duration::from_secs(30)).await;
            }
            return Ok(());
        }
        LeaderMerge::CorruptSource { id, reason } => {
            tracing::error!(%table, part = %id, %reason, "a merge source on this node is corrupt; it is not merged, and a good copy is fetched");
            let why = format!("the local file was found corrupt before a merge ({reason}); fetching a good copy");
            node.withdraw_corrupt_copy(table, &id, why).await;
            return Ok(());
        }
    };
    let described: Vec<_> = sources.iter().map(|p| (p.id, p.manifest.clone(), p.revision)).collect();
    let manifest = merged_manifest(&node.config.node_id, &written, &described, sort_key, ttl, codec);
    let merged =
        NewPart { id: written.id, partition: manifest.partition.clone(), block_id: None, manifest: manifest.to_json() };
    let source_revisions: Vec<(PartId, Revision)> = sources.iter().map(|p| (p.id, p.revision)).collect();
    let role = role(table);
    let fence = fence.map(|f| (role.as_str(), f));
    match node.coordinator.replace_parts(table, &source_revisions, &merged, &node.config.node_id, fence).await {
        Ok(Some(revision)) => {
            // The next selection must see this merge applied, or it would choose these sources again.
            if !node.catalog.wait_applied(revision, Duration::from_secs(30)).await {
                tracing::warn!(%table, revision, "a registered merge is not applied here after 30 s");
            }
            let source_bytes: u64 = sources.iter().map(|p| p.manifest.bytes).sum();
            let source_rows: u64 = sources.iter().map(|p| p.manifest.rows).sum();
            node.metrics.ttl_deleted_rows.inc_by(source_rows.saturating_sub(manifest.rows));
            node.metrics.merges.inc();
            node.metrics.merge_source_bytes.inc_by(source_bytes);
            node.metrics.merge_written_bytes.inc_by(manifest.bytes);
            tracing::info!(%table, partition = %manifest.partition, part = %merged.id, sources = sources.len(),
                level = manifest.level, rows = manifest.rows, bytes = manifest.bytes, revision,
                ms = started.elapsed().as_millis() as u64, "merged parts");
            if let Some(bucket) = &node.bucket {
                bucket.wake_uploader();
            }
            Ok(())
        }
        Ok(None) => {
            tracing::info!(%table, part = %merged.id, "merge not registered: a source changed or this node no longer leads the table's merges");
            discard(node, &merged.id).await;
            Ok(())
        }
        // The outcome is unknown (a timeout may still have committed): the file stays, and
        // the orphan sweep removes it if no registration ever names it.
        Err(e) => Err(e.into()),
    }
}

/// Deletes the file of a merged part that did not get registered, unless a registered part
/// has the same bytes (the same merge registered by another leader): that is decided on the
/// catalog caught up with the coordinator, and left to the orphan sweep when it cannot catch up.
async fn discard(node: &Replica, id: &PartId) {
    let caught_up = match node.coordinator.current_revision().await {
        Ok(revision) => node.catalog.wait_applied(revision, Duration::from_secs(10)).await,
        Err(_) => false,
    };
    let in_use = node.catalog.snapshot().values().any(|t| t.parts.contains_key(id) || t.pending.contains_key(id))
        || node.catalog.file_in_use(id);
    if caught_up
        && !in_use
        && let Err(e) = node.catalog.store().remove(id)
    {
        tracing::warn!(part = %id, error = %e, "cannot delete the file of an unregistered merged part");
    }
}

/// A replica's way to obtain a registered merged part without the network: merge its own
/// copies of the sources and keep the result if it hashes to the registered id. Returns false
/// (after logging) when the sources are not all here or the result differs.
pub async fn rebuild_locally(node: &Replica, table: &str, id: &PartId, manifest: &PartManifest) -> bool {
    if manifest.merged_from.is_empty() {
        return false;
    }
    let store = node.catalog.store().clone();
    let sources = &manifest.merged_from;
    // Source files are on disk while they are still visible here (or not yet swept).
    let held: Option<Vec<_>> = {
        let state = node.catalog.table(table);
        sources
            .iter()
            .map(|source| {
                let file = state.as_ref().and_then(|s| s.parts.get(source)).map(|p| p.file.clone());
                store.contains(source).then_some((*source, file))
            })
            .collect()
    };
    let Some(held) = held else { return false };
    let Ok(permit) = node.merges.permits.clone().acquire_owned().await else { return false };
    let key = node.merges.start(RunningMerge {
        table: table.to_string(),
        partition: manifest.partition.clone(),
        merged: Some(*id),
        sources: sources.len(),
        bytes: manifest.bytes,
        started: Instant::now(),
        role: "replica",
    });
    let (sort_key, name, partition, expected, ttl, codec) = (
        manifest.sort_key.clone(),
        table.to_string(),
        manifest.partition.clone(),
        *id,
        manifest.ttl_filter.clone(),
        manifest.codec,
    );
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<PartId>> {
        // `held` keeps the files of sources still visible here open while they are read.
        let ids: Vec<(PartId, Option<std::fs::File>)> = held.iter().map(|(source, _)| (*source, None)).collect();
        let plan = MergePlan { sort_key: &sort_key, table: &name, partition: &partition, ttl: ttl.as_ref(), codec };
        let merged = merge_files(&store, ids, &plan, |id| *id == expected)?
            .ok_or_else(|| anyhow::anyhow!("the registered merge's TTL filter leaves no rows of these sources"))?;
        drop(held);
        Ok(merged.err())
    })
    .await;
    node.merges.finish(key);
    drop(permit);
    match result {
        Ok(Ok(None)) => {
            node.metrics.local_merges.inc();
            true
        }
        Ok(Ok(Some(other))) => {
            node.metrics.merge_mismatches.inc();
            tracing::warn!(%table, part = %id, rebuilt = %other, "a local merge gave different bytes than the registered merged part; fetching it instead");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(%table, part = %id, error = %e, "cannot merge locally; fetching the merged part instead");
            false
        }
        Err(e) => {
            tracing::warn!(%table, part = %id, error = %e, "local merge panicked; fetching the merged part instead");
            false
        }
    }
}

/// Deletes part files that nothing references (a crash between writing a part and
/// registering it, a merge that was not registered) once they are older than `grace`.
pub async fn run_orphan_sweep(node: Arc<Replica>, shutdown: CancellationToken) {
    let grace = node.config.settings.orphan_grace();
    let mut tick = tokio::time::interval(grace.min(Duration::from_secs(600)).max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.cancelled() => return,
        }
        if !node.catalog.is_caught_up() {
            continue;
        }
        let node = node.clone();
        let swept = tokio::task::spawn_blocking(move || sweep_orphans(&node, grace)).await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "removed part files that no registered part uses"),
            Ok(Err(e)) => tracing::warn!(error = %e, "orphan sweep failed"),
            Err(e) => tracing::warn!(error = %e, "orphan sweep panicked"),
        }
    }
}

fn sweep_orphans(node: &Replica, grace: Duration) -> anyhow::Result<usize> {
    let store = node.catalog.store();
    let mut removed = 0;
    for id in store.list()? {
        // Checked per file against the current catalog, after the age: a file written just now
        // for an insert or merge is younger than the grace period.
        let age = std::fs::metadata(store.path(&id)).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if age.is_none_or(|age| age < grace) {
            continue;
        }
        let tables = node.catalog.snapshot();
        let used = tables.values().any(|t| t.parts.contains_key(&id) || t.pending.contains_key(&id))
            || node.catalog.file_in_use(&id);
        if !used {
            store.remove(&id)?;
            removed += 1;
        }
    }
    Ok(removed)
}
