//! The node's applied view of the cluster: tables, their active parts (visible to queries: on
//! this node's disk, verified, or on a node with a local storage budget, in the bucket) and
//! their pending parts (registered, not here yet). It changes
//! only by applying the coordinator's listings and watch events in revision order, and by the
//! fetcher activating a pending part once its file has arrived and been verified.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use tandem_coordinator::{
    ClusterEvent, EventBatch, OBJECT_STORE_HOLDER, RegisteredPart, Revision, Snapshot, TableRecord,
};
use tandem_parts::arrow::datatypes::SchemaRef;
use tandem_parts::{LocalPartStore, PartId, PartManifest};
use tokio::sync::{mpsc, watch};

use crate::schema::TableDef;

/// A part file in use. When the part leaves the active set it is *retired*; the file is
/// deleted when the last holder (the catalog or a running query) lets go of it.
#[derive(Debug)]
pub struct PartFile {
    pub id: PartId,
    pub path: PathBuf,
    pub size: u64,
    retired: AtomicBool,
    store: Arc<LocalPartStore>,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire) {
            if let Err(e) = self.store.remove(&self.id) {
                tracing::warn!(part = %self.id, error = %e, "cannot delete a retired part file");
            } else {
                tracing::debug!(part = %self.id, "deleted retired part file");
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct ActivePart {
    pub id: PartId,
    pub manifest: Arc<PartManifest>,
    pub revision: Revision,
    /// The local file; None when the part is read from the bucket (evicted, or never fetched,
    /// on a node with a local storage budget).
    pub file: Option<Arc<PartFile>>,
    /// Set when the part has been merged away in the coordinator but the merged part is not
    /// on this node yet: the part stays visible until the merged one replaces it, so a query
    /// sees either the sources or the merged part, never both and never neither.
    pub replaced_by: Option<PartId>,
}

/// A registered part whose file this node does not have (yet).
#[derive(Clone, Debug)]
pub struct PendingPart {
    pub id: PartId,
    pub manifest: Arc<PartManifest>,
    pub revision: Revision,
    pub since: Instant,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// No live node holds the part and the object store does not have it (as of the last
    /// attempt): it can come back only if a holder returns.
    pub lost: bool,
}

#[derive(Clone, Debug)]
pub struct TableState {
    pub def: Arc<TableDef>,
    /// `def`'s Arrow schema, built once per definition rather than once per insert.
    pub schema: SchemaRef,
    pub version: Revision,
    pub created: Revision,
    pub parts: BTreeMap<PartId, ActivePart>,
    pub pending: BTreeMap<PartId, PendingPart>,
}

/// A registered part that cannot even be described (unreadable manifest or id).
#[derive(Clone, Debug)]
pub struct BrokenPart {
    pub table: String,
    pub id: PartId,
    pub reason: String,
}

/// Why the last attempt to fetch a pending part failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    /// No live node holds the part and the object store does not have it: it can come back
    /// only if a holder returns.
    #[error("lost: {0}")]
    Lost(String),
    /// The sources could not be reached or asked (each one's answer is in the message).
    #[error("{0}")]
    Failed(String),
}

impl FetchFailure {
    pub fn is_lost(&self) -> bool {
        matches!(self, FetchFailure::Lost(_))
    }
}

impl From<tandem_coordinator::CoordError> for FetchFailure {
    fn from(e: tandem_coordinator::CoordError) -> Self {
        FetchFailure::Failed(e.to_string())
    }
}

impl From<crate::error::Error> for FetchFailure {
    fn from(e: crate::error::Error) -> Self {
        FetchFailure::Failed(e.to_string())
    }
}

/// Asks the fetcher for a part's file.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    pub table: String,
    pub id: PartId,
}

pub struct Catalog {
    tables: RwLock<BTreeMap<String, Arc<TableState>>>,
    broken: Mutex<BTreeMap<PartId, BrokenPart>>,
    files: Mutex<HashMap<PartId, Weak<PartFile>>>,
    store: Arc<LocalPartStore>,
    fetches: Mutex<Option<mpsc::UnboundedSender<FetchRequest>>>,
    /// Every event up to this revision has been applied to the metadata.
    applied: watch::Sender<Revision>,
    /// Every part registered up to this revision is active here.
    complete: watch::Sender<Revision>,
    /// The last applied revision that changed tables or parts.
    data_revision: watch::Sender<Revision>,
    /// Which nodes hold a verified copy of each part (from holder keys), for quorum waits.
    holders: Mutex<HashMap<PartId, BTreeSet<String>>>,
    /// Bumped whenever `holders` (or `merged_into`) changes.
    holders_changed: watch::Sender<u64>,
    /// Which merged part each recently merged-away part went into, so a quorum wait for a
    /// part that was merged before the quorum was reached waits for the merged part instead.
    merged_into: Mutex<HashMap<PartId, PartId>>,
    /// A view of the tables has been applied (the local copy or a listing): queries can be served.
    has_view: AtomicBool,
    /// The view has caught up with the coordinator since start (a listing was applied, or the
    /// watch delivered this node's sync marker): every change made before the node started is
    /// in it. The local copy alone can lack the changes it had not saved before a stop.
    caught_up: AtomicBool,
    /// Parts may be served from the bucket (the node has a local storage budget): a listed part
    /// whose file is not here but whose object is becomes active without a fetch.
    bucket_reads: AtomicBool,
    /// Parts are never fetched (a query node): a part is pending until its object is in the
    /// bucket, then active from there.
    bucket_only: AtomicBool,
    /// When each part was last read by a query (or became active here), for eviction.
    last_read: Mutex<HashMap<PartId, Instant>>,
    /// Pending parts this node reads from the bucket instead of fetching (`local_replicas`
    /// chose other nodes to keep them): active from the bucket once their object is there.
    from_bucket: Mutex<std::collections::HashSet<PartId>>,
}

/// Why a pending part cannot be fetched without peers.
const NO_FETCHER: &str = "the part file is not on this node and no peer can send it (single node)";
/// Why a query node does not show a part yet.
const WAITING_FOR_BUCKET: &str =
    "not in the object store yet (this node reads the part from there: a query node, or local_replicas chose others)";

impl Catalog {
    pub fn new(store: Arc<LocalPartStore>) -> Self {
        Catalog {
            tables: RwLock::new(BTreeMap::new()),
            broken: Mutex::new(BTreeMap::new()),
            files: Mutex::new(HashMap::new()),
            store,
            fetches: Mutex::new(None),
            applied: watch::channel(0).0,
            complete: watch::channel(0).0,
            data_revision: watch::channel(0).0,
            holders: Mutex::new(HashMap::new()),
            holders_changed: watch::channel(0).0,
            merged_into: Mutex::new(HashMap::new()),
            has_view: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            bucket_reads: AtomicBool::new(false),
            bucket_only: AtomicBool::new(false),
            last_read: Mutex::new(HashMap::new()),
            from_bucket: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Reads a pending part from the bucket rather than fetching it: active from there at
    /// once when its object is recorded, or as soon as it is. Returns whether it is active now.
    pub fn read_from_bucket(&self, table: &str, id: &PartId) -> bool {
        let activated = {
            let mut tables = self.tables.write().expect("catalog lock");
            let Some(state) = tables.get_mut(table) else { return false };
            let Some(pending) = state.pending.get(id) else { return false };
            if !self.in_object_store(id) {
                let state = Arc::make_mut(state);
                if let Some(pending) = state.pending.get_mut(id) {
                    pending.last_error = Some(WAITING_FOR_BUCKET.to_string());
                }
                let mut waiting = self.from_bucket.lock().expect("bucket parts lock");
                if waiting.len() >= 1 << 16 {
                    waiting.retain(|p| state.pending.contains_key(p));
                }
                waiting.insert(*id);
                return false;
            }
            let (id, manifest, revision) = (pending.id, pending.manifest.clone(), pending.revision);
            let state = Arc::make_mut(state);
            state.pending.remove(&id);
            state.parts.insert(id, ActivePart { id, manifest, revision, file: None, replaced_by: None });
            Self::drop_replaced(state);
            true
        };
        self.update_complete();
        activated
    }

    /// Lets listed parts be served from the bucket (see `bucket_reads`).
    pub fn serve_from_bucket(&self) {
        self.bucket_reads.store(true, Ordering::Release);
    }

    /// Serves every part from the bucket and fetches none (see `bucket_only`).
    pub fn serve_only_from_bucket(&self) {
        self.serve_from_bucket();
        self.bucket_only.store(true, Ordering::Release);
    }

    /// Records that a query read these parts (only where parts can be evicted: elsewhere
    /// nobody asks).
    pub fn touch(&self, parts: impl IntoIterator<Item = PartId>) {
        if !self.bucket_reads.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut last_read = self.last_read.lock().expect("last read lock");
        for part in parts {
            last_read.insert(part, now);
        }
    }

    /// Forgets when parts that are no longer active were read (the map would otherwise keep
    /// every part ever read).
    pub fn forget_reads_except(&self, active: &std::collections::HashSet<PartId>) {
        let mut last_read = self.last_read.lock().expect("last read lock");
        if last_read.len() > 2 * active.len() + 1024 {
            last_read.retain(|id, _| active.contains(id));
        }
    }

    /// When a part was last read here (or became active, if never read).
    pub fn last_read(&self, part: &PartId) -> Option<Instant> {
        self.last_read.lock().expect("last read lock").get(part).copied()
    }

    /// Takes the local file of an active part out of service: the part stays active and is
    /// read from the bucket from now on; the file is deleted once no query reads it. Returns
    /// the bytes freed, or None when the part is not active here with a local file.
    pub fn evict(&self, table: &str, id: &PartId) -> Option<u64> {
        let mut tables = self.tables.write().expect("catalog lock");
        let state = Arc::make_mut(tables.get_mut(table)?);
        let part = state.parts.get_mut(id)?;
        let file = part.file.take()?;
        file.retired.store(true, Ordering::Release);
        Some(file.size)
    }

    /// The nodes known to hold a verified copy of `part` (the object store is not a node).
    pub fn holders(&self, part: &PartId) -> BTreeSet<String> {
        let mut holders = self.holders.lock().expect("holders lock").get(part).cloned().unwrap_or_default();
        holders.remove(OBJECT_STORE_HOLDER);
        holders
    }

    /// Whether `part` is recorded as uploaded to the object store.
    pub fn in_object_store(&self, part: &PartId) -> bool {
        self.holders.lock().expect("holders lock").get(part).is_some_and(|h| h.contains(OBJECT_STORE_HOLDER))
    }

    /// The part that now holds `part`'s rows: itself, or the part it was merged into.
    fn current_part(&self, part: &PartId) -> PartId {
        let merged_into = self.merged_into.lock().expect("merge map lock");
        let mut current = *part;
        for _ in 0..64 {
            match merged_into.get(&current) {
                Some(next) => current = *next,
                None => break,
            }
        }
        current
    }

    fn record_merge(&self, manifest: &PartManifest, merged: &PartId) {
        if manifest.merged_from.is_empty() {
            return;
        }
        {
            let mut merged_into = self.merged_into.lock().expect("merge map lock");
            // Only in-flight quorum waits need it: a bounded memory, forgotten wholesale.
            if merged_into.len() >= 1 << 16 {
                merged_into.clear();
            }
            for source in &manifest.merged_from {
                merged_into.insert(*source, *merged);
            }
        }
        self.holders_changed.send_modify(|n| *n += 1);
    }

    /// Waits until every one of `parts` (or the parts they were merged into) has at least
    /// `quorum` holders. Returns the smallest holder set among them when the wait ends (met or
    /// timed out).
    pub async fn wait_holders(&self, parts: &[PartId], quorum: usize, timeout: Duration) -> (bool, BTreeSet<String>) {
        let mut changed = self.holders_changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let weakest =
                parts.iter().map(|p| self.holders(&self.current_part(p))).min_by_key(BTreeSet::len).unwrap_or_default();
            if weakest.len() >= quorum {
                return (true, weakest);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return (false, weakest),
            }
        }
    }

    fn set_holders(&self, update: impl FnOnce(&mut HashMap<PartId, BTreeSet<String>>)) {
        update(&mut self.holders.lock().expect("holders lock"));
        self.holders_changed.send_modify(|n| *n += 1);
    }

    /// Connects the fetcher: from now on every pending part is requested from it.
    pub fn set_fetcher(&self, fetches: mpsc::UnboundedSender<FetchRequest>) {
        *self.fetches.lock().expect("fetch queue lock") = Some(fetches);
    }

    pub fn store(&self) -> &Arc<LocalPartStore> {
        &self.store
    }

    /// True once a first full state (listing or local copy) has been applied.
    pub fn has_view(&self) -> bool {
        self.has_view.load(Ordering::Acquire)
    }

    /// True once the view has caught up with the coordinator since start (see `caught_up`).
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Records that the view has caught up with the coordinator (see `caught_up`).
    pub fn mark_caught_up(&self) {
        self.caught_up.store(true, Ordering::Release);
    }

    pub fn applied_revision(&self) -> Revision {
        *self.applied.borrow()
    }

    pub fn complete_revision(&self) -> Revision {
        *self.complete.borrow()
    }

    pub fn data_revision(&self) -> Revision {
        *self.data_revision.borrow()
    }

    pub fn subscribe_data_revision(&self) -> watch::Receiver<Revision> {
        self.data_revision.subscribe()
    }

    /// Waits until the metadata up to `revision` is applied here (the part files of other
    /// nodes may still be arriving). False on timeout.
    pub async fn wait_applied(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    /// Waits until every part registered up to `revision` is served here. False on timeout.
    pub async fn wait_complete(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.complete.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|complete| *complete >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    /// The tables as they are now; holding it keeps every listed part file alive.
    pub fn snapshot(&self) -> BTreeMap<String, Arc<TableState>> {
        self.tables.read().expect("catalog lock").clone()
    }

    pub fn table(&self, name: &str) -> Option<Arc<TableState>> {
        self.tables.read().expect("catalog lock").get(name).cloned()
    }

    /// Table `name`'s definition, its Arrow schema and the schema's version, without taking a
    /// share of the rest of its state (which on two cores moves its reference count between
    /// them on every insert).
    pub fn table_definition(&self, name: &str) -> Option<(Arc<TableDef>, SchemaRef, Revision)> {
        let tables = self.tables.read().expect("catalog lock");
        tables.get(name).map(|state| (state.def.clone(), state.schema.clone(), state.version))
    }

    /// The revision that created table `name` (None: no such table), without taking a share
    /// of its state: every buffered insert asks, and on two cores each share taken and given
    /// back moves the state's reference count between them.
    pub fn table_created(&self, name: &str) -> Option<Revision> {
        self.tables.read().expect("catalog lock").get(name).map(|state| state.created)
    }

    pub fn broken_parts(&self) -> Vec<BrokenPart> {
        self.broken.lock().expect("broken parts lock").values().cloned().collect()
    }

    /// The pending part, if it is still wanted.
    pub fn pending(&self, table: &str, id: &PartId) -> Option<PendingPart> {
        self.table(table).and_then(|t| t.pending.get(id).cloned())
    }

    /// Whether a running query or merge still holds the file of `id`.
    pub fn file_in_use(&self, id: &PartId) -> bool {
        self.files.lock().expect("file registry lock").get(id).is_some_and(|f| f.strong_count() > 0)
    }

    fn acquire_file(&self, id: PartId) -> Option<Arc<PartFile>> {
        let mut files = self.files.lock().expect("file registry lock");
        if let Some(file) = files.get(&id).and_then(Weak::upgrade) {
            file.retired.store(false, Ordering::Release);
            return Some(file);
        }
        let path = self.store.path(&id);
        let size = std::fs::metadata(&path).ok()?.len();
        let file = Arc::new(PartFile { id, path, size, retired: AtomicBool::new(false), store: self.store.clone() });
        if files.len() >= 1024 && files.len().is_power_of_two() {
            files.retain(|_, f| f.strong_count() > 0);
        }
        files.insert(id, Arc::downgrade(&file));
        Some(file)
    }

    fn retire(part: &ActivePart) {
        if let Some(file) = &part.file {
            file.retired.store(true, Ordering::Release);
        }
    }

    fn mark_broken(&self, part: &RegisteredPart, reason: String) {
        tracing::error!(table = %part.table, part = %part.id, reason = %reason, "registered part cannot be read");
        let entry = BrokenPart { table: part.table.clone(), id: part.id, reason };
        self.broken.lock().expect("broken parts lock").insert(part.id, entry);
    }

    /// Adds a registered part to a table: active if its file is here (and not `rejected`),
    /// pending (and requested from the fetcher) otherwise.
    fn add_part(
        &self,
        table: &mut TableState,
        part: &RegisteredPart,
        rejected: Option<&String>,
        requests: &mut Vec<FetchRequest>,
    ) {
        let manifest = match PartManifest::from_json(&part.manifest) {
            Ok(m) => Arc::new(m),
            Err(e) => return self.mark_broken(part, format!("unreadable manifest: {e}")),
        };
        let id = part.id;
        self.record_merge(&manifest, &id);
        let file = if rejected.is_some() { None } else { self.acquire_file(id) };
        let from_bucket = rejected.is_none() && self.bucket_reads.load(Ordering::Acquire) && self.in_object_store(&id);
        match file {
            Some(file) => {
                table.pending.remove(&id);
                self.touch([id]);
                let file = Some(file);
                table.parts.insert(id, ActivePart { id, manifest, revision: part.revision, file, replaced_by: None });
            }
            None if from_bucket => {
                table.pending.remove(&id);
                table
                    .parts
                    .insert(id, ActivePart { id, manifest, revision: part.revision, file: None, replaced_by: None });
            }
            None => {
                let has_fetcher = self.fetches.lock().expect("fetch queue lock").is_some();
                let last_error = if self.bucket_only.load(Ordering::Acquire) {
                    Some(WAITING_FOR_BUCKET.to_string())
                } else {
                    rejected.cloned().or_else(|| (!has_fetcher).then(|| NO_FETCHER.to_string()))
                };
                let pending = PendingPart {
                    id,
                    manifest,
                    revision: part.revision,
                    since: Instant::now(),
                    attempts: 0,
                    last_error,
                    lost: false,
                };
                table.pending.insert(id, pending);
                requests.push(FetchRequest { table: part.table.clone(), id });
            }
        }
    }

    fn table_state(record: &TableRecord) -> Option<TableState> {
        match TableDef::from_json(&record.doc) {
            Ok(def) => Some(TableState {
                schema: def.arrow_schema(),
                def: Arc::new(def),
                version: record.version,
                created: record.created,
                parts: BTreeMap::new(),
                pending: BTreeMap::new(),
            }),
            Err(e) => {
                tracing::error!(table = %record.name, error = %e, "unreadable table definition; the table is not served");
                None
            }
        }
    }

    fn send_requests(&self, requests: Vec<FetchRequest>) {
        if self.bucket_only.load(Ordering::Acquire) {
            return;
        }
        if let Some(fetches) = self.fetches.lock().expect("fetch queue lock").as_ref() {
            for request in requests {
                let _ = fetches.send(request);
            }
        }
    }

    /// Replaces the whole view with a full state. Parts already active are kept as they are;
    /// `rejected` names parts whose local file failed verification (they become pending).
    pub fn apply_snapshot(&self, snapshot: &Snapshot, rejected: &HashMap<PartId, String>) {
        let old = self.snapshot();
        let mut tables: BTreeMap<String, TableState> = BTreeMap::new();
        for record in &snapshot.tables {
            if let Some(state) = Self::table_state(record) {
                tables.insert(record.name.clone(), state);
            }
        }
        self.broken.lock().expect("broken parts lock").clear();
        // Holders first: whether a part is in the bucket decides how it is added.
        self.set_holders(|holders| {
            holders.clear();
            for holder in &snapshot.holders {
                holders.entry(holder.part).or_default().insert(holder.node.clone());
            }
        });
        let mut requests = Vec::new();
        for part in &snapshot.parts {
            let Some(table) = tables.get_mut(&part.table) else { continue };
            let kept = old
                .get(&part.table)
                .filter(|t| t.created == table.created)
                .and_then(|t| t.parts.get(&part.id).cloned());
            match kept {
                Some(active) if !rejected.contains_key(&part.id) => {
                    table.parts.insert(active.id, active);
                }
                _ => self.add_part(table, part, rejected.get(&part.id), &mut requests),
            }
        }
        // Sources of a merged part that is not here yet stay visible until it is.
        for (name, table) in tables.iter_mut() {
            let Some(previous) = old.get(name).filter(|t| t.created == table.created) else { continue };
            let merges: Vec<(PartId, Vec<PartId>)> = table
                .pending
                .values()
                .filter(|p| !p.manifest.merged_from.is_empty())
                .map(|p| (p.id, p.manifest.merged_from.clone()))
                .collect();
            for (merged, sources) in merges {
                for source in sources {
                    if let Some(active) = previous.parts.get(&source) {
                        table.parts.insert(source, ActivePart { replaced_by: Some(merged), ..active.clone() });
                    }
                }
            }
        }
        for (name, table) in &old {
            for (id, part) in &table.parts {
                if !tables.get(name).is_some_and(|t| t.parts.contains_key(id)) {
                    Self::retire(part);
                }
            }
        }
        *self.tables.write().expect("catalog lock") = tables.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        self.applied.send_replace(snapshot.revision);
        self.data_revision.send_replace(snapshot.revision);
        self.has_view.store(true, Ordering::Release);
        self.update_complete();
        self.send_requests(requests);
    }

    /// Applies the changes of one revision.
    pub fn apply_batch(&self, batch: &EventBatch) {
        let mut requests = Vec::new();
        // Parts merged away in this revision, and the part each went into.
        let mut merged_into: HashMap<(String, PartId), PartId> = HashMap::new();
        for event in &batch.events {
            if let ClusterEvent::PartAdded(part) = event
                && let Ok(manifest) = PartManifest::from_json(&part.manifest)
            {
                for source in manifest.merged_from {
                    merged_into.insert((part.table.clone(), source), part.id);
                }
            }
        }
        {
            let mut tables = self.tables.write().expect("catalog lock");
            for event in &batch.events {
                match event {
                    ClusterEvent::TablePut(record) => match tables.get_mut(&record.name) {
                        Some(existing) if existing.created == record.created => {
                            if let Some(state) = Self::table_state(record) {
                                let existing = Arc::make_mut(existing);
                                existing.def = state.def;
                                existing.schema = state.schema;
                                existing.version = state.version;
                            }
                        }
                        _ => {
                            if let Some(old) = tables.remove(&record.name) {
                                old.parts.values().for_each(Self::retire);
                            }
                            if let Some(state) = Self::table_state(record) {
                                tables.insert(record.name.clone(), Arc::new(state));
                            }
                        }
                    },
                    ClusterEvent::TableDropped { name } => {
                        if let Some(old) = tables.remove(name) {
                            old.parts.values().for_each(Self::retire);
                        }
                    }
                    ClusterEvent::PartAdded(part) => {
                        let Some(table) = tables.get_mut(&part.table) else { continue };
                        self.add_part(Arc::make_mut(table), part, None, &mut requests);
                    }
                    ClusterEvent::PartRemoved { table, id } => {
                        let id = *id;
                        self.broken.lock().expect("broken parts lock").remove(&id);
                        let Some(state) = tables.get_mut(table) else { continue };
                        let state = Arc::make_mut(state);
                        let successor = merged_into.get(&(table.clone(), id)).copied();
                        if state.pending.remove(&id).is_some() {
                            // Parts waiting for this one now wait for what it was merged into
                            // (or, if it went without a successor, are gone with it).
                            let waiting: Vec<PartId> =
                                state.parts.values().filter(|p| p.replaced_by == Some(id)).map(|p| p.id).collect();
                            for part in waiting {
                                match successor {
                                    Some(merged) => {
                                        state.parts.get_mut(&part).expect("listed").replaced_by = Some(merged)
                                    }
                                    None => Self::retire(&state.parts.remove(&part).expect("listed")),
                                }
                            }
                        }
                        match (state.parts.get_mut(&id), successor) {
                            (Some(part), Some(merged)) => part.replaced_by = Some(merged),
                            (Some(_), None) => Self::retire(&state.parts.remove(&id).expect("present")),
                            (None, _) => {}
                        }
                    }
                    ClusterEvent::HolderAdded(holder) => {
                        self.set_holders(|holders| {
                            holders.entry(holder.part).or_default().insert(holder.node.clone());
                        });
                        // A new copy may be the one a failing (or lost) fetch was waiting for; on a
                        // query node, the object is what the part was waiting for.
                        if let Some(state) = tables.get_mut(&holder.table)
                            && state.pending.contains_key(&holder.part)
                        {
                            let waiting = self.bucket_only.load(Ordering::Acquire)
                                || self.from_bucket.lock().expect("bucket parts lock").remove(&holder.part);
                            if holder.node == OBJECT_STORE_HOLDER && waiting {
                                let state = Arc::make_mut(state);
                                let part = state.pending.remove(&holder.part).expect("checked above");
                                let (id, manifest, revision) = (part.id, part.manifest, part.revision);
                                state
                                    .parts
                                    .insert(id, ActivePart { id, manifest, revision, file: None, replaced_by: None });
                                Self::drop_replaced(state);
                            } else {
                                requests.push(FetchRequest { table: holder.table.clone(), id: holder.part });
                            }
                        }
                    }
                    ClusterEvent::HolderRemoved(holder) => {
                        self.set_holders(|holders| {
                            if let Some(set) = holders.get_mut(&holder.part) {
                                set.remove(&holder.node);
                                if set.is_empty() {
                                    holders.remove(&holder.part);
                                }
                            }
                        });
                        // The object was found corrupt and deleted: a part read from it is
                        // fetched from a node that has it instead.
                        if holder.node == OBJECT_STORE_HOLDER
                            && let Some(state) = tables.get_mut(&holder.table)
                            && state.parts.get(&holder.part).is_some_and(|p| p.file.is_none())
                        {
                            let state = Arc::make_mut(state);
                            let part = state.parts.remove(&holder.part).expect("checked above");
                            state.pending.insert(
                                part.id,
                                PendingPart {
                                    id: part.id,
                                    manifest: part.manifest,
                                    revision: part.revision,
                                    since: Instant::now(),
                                    attempts: 0,
                                    last_error: Some("its object in the bucket is gone".into()),
                                    lost: false,
                                },
                            );
                            requests.push(FetchRequest { table: holder.table.clone(), id: part.id });
                        }
                    }
                    _ => {}
                }
            }
            for state in tables.values_mut() {
                if state.parts.values().any(|p| p.replaced_by.is_some()) {
                    Self::drop_replaced(Arc::make_mut(state));
                }
            }
        }
        self.applied.send_if_modified(|applied| advance(applied, batch.revision));
        if batch.events.iter().any(ClusterEvent::is_data) {
            self.data_revision.send_if_modified(|data| advance(data, batch.revision));
        }
        self.update_complete();
        self.send_requests(requests);
    }

    /// Retires the parts whose merged replacement is active (or no longer wanted anywhere).
    fn drop_replaced(state: &mut TableState) {
        let done: Vec<PartId> = state
            .parts
            .values()
            .filter_map(|p| {
                p.replaced_by.filter(|m| state.parts.contains_key(m) || !state.pending.contains_key(m)).map(|_| p.id)
            })
            .collect();
        for id in done {
            Self::retire(&state.parts.remove(&id).expect("listed above"));
        }
    }

    /// Makes a fetched part active, if it is still wanted. Returns whether it was.
    pub fn activate(&self, table: &str, id: &PartId) -> bool {
        let activated = {
            let mut tables = self.tables.write().expect("catalog lock");
            let Some(state) = tables.get_mut(table) else { return false };
            if !state.pending.contains_key(id) {
                return false;
            }
            let Some(file) = self.acquire_file(*id) else { return false };
            let state = Arc::make_mut(state);
            let pending = state.pending.remove(id).expect("checked above");
            self.touch([*id]);
            let file = Some(file);
            state.parts.insert(
                *id,
                ActivePart { id: *id, manifest: pending.manifest, revision: pending.revision, file, replaced_by: None },
            );
            Self::drop_replaced(state);
            true
        };
        self.update_complete();
        activated
    }

    /// Takes an active part out of service because its local file turned out corrupt (and was
    /// moved aside): it becomes pending and is fetched again from a peer.
    pub fn demote(&self, table: &str, id: &PartId, reason: String) {
        {
            let mut tables = self.tables.write().expect("catalog lock");
            let Some(state) = tables.get_mut(table) else { return };
            let state = Arc::make_mut(state);
            let Some(part) = state.parts.remove(id) else { return };
            let pending = PendingPart {
                id: *id,
                manifest: part.manifest.clone(),
                revision: part.revision,
                since: Instant::now(),
                attempts: 0,
                last_error: Some(reason),
                lost: false,
            };
            state.pending.insert(*id, pending);
        }
        self.update_complete();
        self.send_requests(vec![FetchRequest { table: table.to_string(), id: *id }]);
    }

    /// Records a failed fetch attempt of a pending part (`lost`: nobody had it). Returns the
    /// attempt count, or None when the part is no longer wanted.
    pub fn fetch_failed(&self, table: &str, id: &PartId, failure: &FetchFailure) -> Option<u32> {
        let mut tables = self.tables.write().expect("catalog lock");
        let state = Arc::make_mut(tables.get_mut(table)?);
        let pending = state.pending.get_mut(id)?;
        pending.attempts += 1;
        pending.last_error = Some(failure.to_string());
        pending.lost = failure.is_lost();
        Some(pending.attempts)
    }

    fn update_complete(&self) {
        let applied = self.applied_revision();
        let oldest_pending = self
            .tables
            .read()
            .expect("catalog lock")
            .values()
            .flat_map(|t| t.pending.values().map(|p| Self::missing_from(t, p)))
            .min();
        let complete = match oldest_pending {
            Some(revision) => (revision - 1).min(applied),
            None => applied,
        };
        self.complete.send_if_modified(|current| {
            let changed = *current != complete;
            *current = complete;
            changed
        });
    }

    /// The oldest revision whose rows this node lacks because `pending` is not here. For a
    /// merged part whose sources are all still visible here that is its own revision; for one
    /// that replaced sources this node never had, the oldest revision it covers.
    fn missing_from(table: &TableState, pending: &PendingPart) -> Revision {
        let manifest = &pending.manifest;
        let Some((low, _)) = manifest.revision_range else { return pending.revision };
        let covered = manifest
            .merged_from
            .iter()
            .all(|source| table.parts.get(source).is_some_and(|p| p.replaced_by == Some(pending.id)));
        if covered { pending.revision } else { low }
    }
}

fn advance(current: &mut Revision, to: Revision) -> bool {
    let newer = to > *current;
    if newer {
        *current = to;
    }
    newer
}

#[cfg(test)]
mod tests {
    use tandem_parts::PART_FORMAT_VERSION;

    use super::*;
    use crate::schema::{ColumnDef, ColumnType, TABLE_FORMAT_VERSION, TableDef, TableSettings};

    struct Fixture {
        catalog: Catalog,
        _dir: tempfile::TempDir,
    }

    fn manifest(merged_from: &[&PartId]) -> Vec<u8> {
        PartManifest {
            format_version: PART_FORMAT_VERSION,
            table: "t".into(),
            partition: "all".into(),
            rows: 1,
            bytes: 1,
            schema_version: 1,
            block_id: None,
            level: u32::from(!merged_from.is_empty()),
            sort_key: vec![],
            columns: BTreeMap::new(),
            column_ids: BTreeMap::new(),
            node: Some("n1".into()),
            created_at_ms: 0,
            merged_from: merged_from.iter().map(|id| **id).collect(),
            revision_range: None,
            ttl_filter: None,
            codec: tandem_parts::Codec::default(),
            quorum_until_ms: None,
        }
        .to_json()
    }

    fn registered(id: &PartId, revision: Revision, merged_from: &[&PartId]) -> RegisteredPart {
        RegisteredPart { table: "t".into(), id: *id, manifest: manifest(merged_from), revision }
    }

    /// A catalog holding table `t` with parts `s1` and `s2`, both on disk.
    fn fixture(s1: &PartId, s2: &PartId) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalPartStore::open(dir.path()).unwrap());
        let catalog = Catalog::new(store.clone());
        catalog.set_fetcher(mpsc::unbounded_channel().0);
        let def = TableDef {
            format_version: TABLE_FORMAT_VERSION,
            name: "t".into(),
            columns: vec![ColumnDef {
                id: 1,
                name: "id".into(),
                column_type: ColumnType::UInt64,
                nullable: false,
                default: None,
                comment: None,
            }],
            order_by: vec!["id".into()],
            partition_by: tandem_parts::PartitionSpec::None,
            settings: TableSettings::default(),
            next_column_id: 2,
            ttl: None,
        };
        let table = TableRecord { name: "t".into(), doc: def.to_json(), version: 1, created: 1 };
        for id in [s1, s2] {
            std::fs::write(store.path(id), b"x").unwrap();
        }
        let snapshot = Snapshot {
            revision: 3,
            tables: vec![table],
            parts: vec![registered(s1, 2, &[]), registered(s2, 3, &[])],
            ..Default::default()
        };
        catalog.apply_snapshot(&snapshot, &HashMap::new());
        Fixture { catalog, _dir: dir }
    }

    fn visible(catalog: &Catalog) -> BTreeSet<PartId> {
        catalog.table("t").unwrap().parts.keys().copied().collect()
    }

    fn merge_batch(revision: Revision, merged: &PartId, sources: [&PartId; 2], added_first: bool) -> EventBatch {
        let added = ClusterEvent::PartAdded(registered(merged, revision, &sources));
        let mut events: Vec<ClusterEvent> =
            sources.iter().map(|s| ClusterEvent::PartRemoved { table: "t".into(), id: **s }).collect();
        if added_first {
            events.insert(0, added);
        } else {
            events.push(added);
        }
        EventBatch { revision, events }
    }

    #[test]
    fn sources_stay_visible_until_their_merged_part_arrives_then_leave_at_once() {
        let (s1, s2, m) = (PartId::of_bytes(b"s1"), PartId::of_bytes(b"s2"), PartId::of_bytes(b"m"));
        for added_first in [true, false] {
            let f = fixture(&s1, &s2);
            f.catalog.apply_batch(&merge_batch(4, &m, [&s1, &s2], added_first));
            assert_eq!(visible(&f.catalog), BTreeSet::from([s1, s2]), "not neither: the sources until m is here");
            assert!(f.catalog.pending("t", &m).is_some());
            std::fs::write(f.catalog.store().path(&m), b"x").unwrap();
            assert!(f.catalog.activate("t", &m));
            assert_eq!(visible(&f.catalog), BTreeSet::from([m]), "not both: the sources leave as m arrives");
        }
    }

    #[test]
    fn a_merged_part_already_on_disk_replaces_its_sources_in_the_same_revision() {
        let (s1, s2, m) = (PartId::of_bytes(b"s1"), PartId::of_bytes(b"s2"), PartId::of_bytes(b"m"));
        let f = fixture(&s1, &s2);
        std::fs::write(f.catalog.store().path(&m), b"x").unwrap();
        f.catalog.apply_batch(&merge_batch(4, &m, [&s1, &s2], false));
        assert_eq!(visible(&f.catalog), BTreeSet::from([m]));
    }

    #[test]
    fn a_merge_of_a_merge_still_covers_the_first_sources() {
        let (s1, s2, m) = (PartId::of_bytes(b"s1"), PartId::of_bytes(b"s2"), PartId::of_bytes(b"m"));
        let (other, m2) = (PartId::of_bytes(b"other"), PartId::of_bytes(b"m2"));
        let f = fixture(&s1, &s2);
        f.catalog.apply_batch(&merge_batch(4, &m, [&s1, &s2], true));
        // m (not here yet) is merged again before it arrives: s1 and s2 now wait for m2.
        f.catalog.apply_batch(&EventBatch {
            revision: 5,
            events: vec![ClusterEvent::PartAdded(registered(&other, 5, &[]))],
        });
        f.catalog.apply_batch(&merge_batch(6, &m2, [&m, &other], false));
        assert_eq!(visible(&f.catalog), BTreeSet::from([s1, s2]));
        std::fs::write(f.catalog.store().path(&m2), b"x").unwrap();
        assert!(f.catalog.activate("t", &m2));
        assert_eq!(visible(&f.catalog), BTreeSet::from([m2]));
    }
}
