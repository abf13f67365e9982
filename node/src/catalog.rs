//! The node's applied view of the cluster: tables and their active parts, built only from the
//! coordinator's snapshot and watch events, in revision order. Queries take a snapshot of it;
//! inserts wait until their own registration has been applied here.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tandem_coordinator::{ClusterEvent, EventBatch, RegisteredPart, Revision, Snapshot, TableRecord};
use tandem_parts::{LocalPartStore, PartId, PartManifest};
use tokio::sync::watch;

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
    pub file: Arc<PartFile>,
}

#[derive(Clone, Debug)]
pub struct TableState {
    pub def: Arc<TableDef>,
    pub version: Revision,
    pub created: Revision,
    pub parts: BTreeMap<PartId, ActivePart>,
}

/// Why a registered part is not served by this node.
#[derive(Clone, Debug)]
pub struct UnavailablePart {
    pub table: String,
    pub id: String,
    pub reason: String,
}

pub struct Catalog {
    tables: RwLock<BTreeMap<String, Arc<TableState>>>,
    unavailable: Mutex<BTreeMap<String, UnavailablePart>>,
    files: Mutex<HashMap<PartId, Weak<PartFile>>>,
    store: Arc<LocalPartStore>,
    applied: watch::Sender<Revision>,
    ready: AtomicBool,
}

impl Catalog {
    pub fn new(store: Arc<LocalPartStore>) -> Self {
        Catalog {
            tables: RwLock::new(BTreeMap::new()),
            unavailable: Mutex::new(BTreeMap::new()),
            files: Mutex::new(HashMap::new()),
            store,
            applied: watch::channel(0).0,
            ready: AtomicBool::new(false),
        }
    }

    pub fn store(&self) -> &Arc<LocalPartStore> {
        &self.store
    }

    /// True once the first full listing has been applied.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn applied_revision(&self) -> Revision {
        *self.applied.borrow()
    }

    /// Waits until everything up to `revision` is applied. False on timeout.
    pub async fn wait_applied(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    /// The tables as they are now; holding it keeps every listed part file alive.
    pub fn snapshot(&self) -> BTreeMap<String, Arc<TableState>> {
        self.tables.read().expect("catalog lock").clone()
    }

    pub fn table(&self, name: &str) -> Option<Arc<TableState>> {
        self.tables.read().expect("catalog lock").get(name).cloned()
    }

    pub fn unavailable_parts(&self) -> Vec<UnavailablePart> {
        self.unavailable.lock().expect("unavailable lock").values().cloned().collect()
    }

    /// Whether the part is in the table's active set here.
    pub fn is_active(&self, table: &str, id: &PartId) -> bool {
        self.table(table).is_some_and(|t| t.parts.contains_key(id))
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
        part.file.retired.store(true, Ordering::Release);
    }

    fn mark_unavailable(&self, part: &RegisteredPart, reason: String) {
        tracing::warn!(table = %part.table, part = %part.id, reason = %reason, "registered part is not served by this node");
        let entry = UnavailablePart { table: part.table.clone(), id: part.id.clone(), reason };
        self.unavailable.lock().expect("unavailable lock").insert(part.id.clone(), entry);
    }

    fn make_part(&self, part: &RegisteredPart) -> Option<ActivePart> {
        let manifest = match PartManifest::from_json(&part.manifest) {
            Ok(m) => m,
            Err(e) => {
                self.mark_unavailable(part, format!("unreadable manifest: {e}"));
                return None;
            }
        };
        let id: PartId = match part.id.parse() {
            Ok(id) => id,
            Err(e) => {
                self.mark_unavailable(part, e.to_string());
                return None;
            }
        };
        let Some(file) = self.acquire_file(id) else {
            self.mark_unavailable(part, "the part file is not on this node".to_string());
            return None;
        };
        self.unavailable.lock().expect("unavailable lock").remove(&part.id);
        Some(ActivePart { id, manifest: Arc::new(manifest), revision: part.revision, file })
    }

    fn table_state(record: &TableRecord) -> Option<TableState> {
        match TableDef::from_json(&record.doc) {
            Ok(def) => Some(TableState {
                def: Arc::new(def),
                version: record.version,
                created: record.created,
                parts: BTreeMap::new(),
            }),
            Err(e) => {
                tracing::error!(table = %record.name, error = %e, "unreadable table definition; the table is not served");
                None
            }
        }
    }

    /// Replaces the whole view with a listing. Parts already active are kept as they are;
    /// `rejected` names new parts whose file failed verification, with the reason.
    pub fn apply_snapshot(&self, snapshot: &Snapshot, rejected: &HashMap<String, String>) {
        let old = self.snapshot();
        let mut tables: BTreeMap<String, Arc<TableState>> = BTreeMap::new();
        for record in &snapshot.tables {
            if let Some(state) = Self::table_state(record) {
                tables.insert(record.name.clone(), Arc::new(state));
            }
        }
        self.unavailable.lock().expect("unavailable lock").clear();
        for part in &snapshot.parts {
            let Some(table) = tables.get_mut(&part.table) else {
                continue;
            };
            if let Some(reason) = rejected.get(&part.id) {
                self.mark_unavailable(part, reason.clone());
                continue;
            }
            let existing = old
                .get(&part.table)
                .filter(|t| t.created == table.created)
                .and_then(|t| part.id.parse().ok().and_then(|id: PartId| t.parts.get(&id).cloned()));
            if let Some(active) = existing.or_else(|| self.make_part(part)) {
                Arc::make_mut(table).parts.insert(active.id, active);
            }
        }
        for (name, table) in &old {
            for (id, part) in &table.parts {
                let still = tables.get(name).is_some_and(|t| t.parts.contains_key(id));
                if !still {
                    Self::retire(part);
                }
            }
        }
        *self.tables.write().expect("catalog lock") = tables;
        self.applied.send_replace(snapshot.revision);
        self.ready.store(true, Ordering::Release);
    }

    /// Applies the changes of one revision.
    pub fn apply_batch(&self, batch: &EventBatch) {
        {
            let mut tables = self.tables.write().expect("catalog lock");
            for event in &batch.events {
                match event {
                    ClusterEvent::TablePut(record) => match tables.get_mut(&record.name) {
                        Some(existing) if existing.created == record.created => {
                            if let Some(state) = Self::table_state(record) {
                                let existing = Arc::make_mut(existing);
                                existing.def = state.def;
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
                        let Some(table) = tables.get_mut(&part.table) else {
                            continue;
                        };
                        if let Some(active) = self.make_part(part) {
                            Arc::make_mut(table).parts.insert(active.id, active);
                        }
                    }
                    ClusterEvent::PartRemoved { table, id } => {
                        self.unavailable.lock().expect("unavailable lock").remove(id);
                        let Some(state) = tables.get_mut(table) else {
                            continue;
                        };
                        let Ok(id) = id.parse::<PartId>() else {
                            continue;
                        };
                        if let Some(part) = Arc::make_mut(state).parts.remove(&id) {
                            Self::retire(&part);
                        }
                    }
                }
            }
        }
        self.applied.send_if_modified(|applied| {
            let newer = batch.revision > *applied;
            if newer {
                *applied = batch.revision;
            }
            newer
        });
    }
}
