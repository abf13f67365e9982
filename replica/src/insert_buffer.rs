//! The asynchronous insert buffer of one node: inserts as they wait, per table, between the
//! insert log (which has them on disk) and the flush that registers them; and the block index,
//! the ids of the inserts recent flushes admitted, which every flush filters against. A
//! component: it knows nothing of the replica that holds it (`async_insert` drives it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_coordinator::{
    AsyncBlockId, AsyncBlockSet, ClusterEvent, EventBatch, MAX_ASYNC_BLOCKS_PER_FLUSH, Revision, Snapshot,
};
use tandem_parts::PartId;
use tandem_parts::arrow::array::RecordBatch;
use tandem_parts::arrow::datatypes::SchemaRef;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::error::Error;
use crate::insert_log::{InsertLog, LogError, Recovery};
use crate::logged_insert::SchemaCodecs;
use crate::schema::TableDef;

/// One table's buffered inserts, as `system.asynchronous_inserts` shows them.
#[derive(Clone, Debug)]
pub struct AsyncBacklog {
    pub table: String,
    pub inserts: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Milliseconds since the oldest buffered insert was logged.
    pub oldest_ms: u64,
    /// The last flush failure, while flushes fail (the coordinator is unreachable).
    pub last_error: Option<String>,
}

/// An insert's rows in one partition, with its block id.
pub(crate) struct Piece {
    pub(crate) partition: String,
    pub(crate) id: AsyncBlockId,
    pub(crate) rows: RecordBatch,
}

/// What a flush tells the inserts it held.
#[derive(Clone, Debug)]
pub(crate) struct FlushAck {
    pub(crate) revision: Revision,
    pub(crate) parts: Vec<PartId>,
    pub(crate) rows_written: u64,
    pub(crate) rows_deduplicated: u64,
}

/// One logged insert waiting for its flush.
pub(crate) struct Entry {
    pub(crate) sequence: u64,
    pub(crate) def: Arc<TableDef>,
    /// The schema version the rows were decoded under.
    pub(crate) version: Revision,
    /// The revision that created the table: a re-created table is another table.
    pub(crate) created: Revision,
    pub(crate) pieces: Vec<Piece>,
    pub(crate) bytes: u64,
    pub(crate) logged_at: Instant,
    pub(crate) waiter: Option<oneshot::Sender<Result<FlushAck, Error>>>,
    /// Until when the request may wait for an `insert_quorum` on its flush's parts (no node
    /// evicts them before then); None without a quorum, or after a replay (nobody waits).
    pub(crate) quorum_until_ms: Option<i64>,
}

pub(crate) struct TableBuffer {
    pub(crate) entries: Vec<Entry>,
    pub(crate) bytes: u64,
    /// Flushed once this passes (the earliest of its inserts' busy timeouts).
    pub(crate) deadline: Instant,
    pub(crate) max_bytes: u64,
    /// After a failed flush: not before this.
    pub(crate) retry_at: Option<Instant>,
    pub(crate) backoff: Duration,
    pub(crate) last_error: Option<String>,
}

impl TableBuffer {
    /// Adds an insert due by `deadline`; true when the flusher should look again (a new
    /// deadline, or the buffer is full).
    fn add(&mut self, entry: Entry, deadline: Instant, max_bytes: u64) -> bool {
        let mut wake = false;
        if self.entries.is_empty() {
            self.deadline = deadline;
            self.max_bytes = max_bytes;
            // A new deadline: the flusher may be asleep until a later one.
            wake = true;
        }
        self.deadline = self.deadline.min(deadline);
        self.max_bytes = self.max_bytes.min(max_bytes);
        self.bytes += entry.bytes;
        self.entries.push(entry);
        wake || self.bytes >= self.max_bytes
    }
}

/// A table's definition versions, as (created, version).
type DefinitionVersions = HashSet<(Revision, Revision), ahash::RandomState>;

/// The asynchronous insert buffer of one node.
pub(crate) struct AsyncInserts {
    log: InsertLog,
    /// Table definitions the logged inserts were decoded under, one file per version.
    definitions_dir: PathBuf,
    /// The versions (created, version) written, per table. Hashed by aHash, as the block index
    /// is: every insert looks its table up here and in `codecs`.
    definitions_written: Mutex<HashMap<String, DefinitionVersions, ahash::RandomState>>,
    /// How each table's inserts were last hashed and logged, for the schema they had.
    codecs: Mutex<HashMap<String, Arc<SchemaCodecs>, ahash::RandomState>>,
    buffers: Mutex<BTreeMap<String, TableBuffer>>,
    index: BlockIndex,
    wake: Notify,
    /// Unique-id source for inserts without deduplication: a replay reuses the logged id.
    nonce: [u8; 32],
    unique: AtomicU64,
    /// What opening the log found, replayed once the replica runs.
    recovered: Mutex<Option<Recovery>>,
}

/// Flushes retry at most this far apart while the coordinator is away.
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(2);

impl AsyncInserts {
    pub(crate) fn open(data_dir: &Path, node_id: &str, max_log_bytes: u64) -> anyhow::Result<AsyncInserts> {
        let dir = data_dir.join("insert_log");
        let (log, recovery) = InsertLog::open(&dir, max_log_bytes)
            .map_err(|e| anyhow::anyhow!("cannot open the insert log in {}: {e}", dir.display()))?;
        if recovery.cut_bytes > 0 {
            tracing::warn!(bytes = recovery.cut_bytes, "cut a torn tail off the insert log");
        }
        let definitions_dir = dir.join("tables");
        std::fs::create_dir_all(&definitions_dir)?;
        let mut nonce = blake3::Hasher::new();
        nonce.update(node_id.as_bytes());
        nonce.update(&chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default().to_le_bytes());
        nonce.update(&std::process::id().to_le_bytes());
        Ok(AsyncInserts {
            log,
            definitions_dir,
            definitions_written: Mutex::default(),
            codecs: Mutex::default(),
            buffers: Mutex::default(),
            index: BlockIndex::default(),
            wake: Notify::new(),
            nonce: *nonce.finalize().as_bytes(),
            unique: AtomicU64::new(0),
            recovered: Mutex::new(Some(recovery)),
        })
    }

    /// The block index this node's flushes filter against.
    pub(crate) fn index(&self) -> &BlockIndex {
        &self.index
    }

    /// Appends one insert to the log; its sequence number once it is fsynced.
    pub(crate) async fn log(&self, payload: Vec<u8>) -> Result<u64, LogError> {
        self.log.append(payload).await
    }

    /// Marks logged inserts as registered (or given up on): a restart does not replay them.
    pub(crate) fn mark_flushed(&self, sequences: Vec<u64>) {
        self.log.flushed(sequences);
    }

    /// What opening the log found, once.
    pub(crate) fn take_recovery(&self) -> Option<Recovery> {
        self.recovered.lock().ok().and_then(|mut recovered| recovered.take())
    }

    /// Resolves when an insert made a buffer due earlier than the flusher planned.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }

    /// A number no other call on this node returns, for part origins.
    pub(crate) fn next_unique(&self) -> u64 {
        self.unique.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn unique_id(&self) -> AsyncBlockId {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.nonce);
        hasher.update(&self.next_unique().to_le_bytes());
        AsyncBlockId::from_hash(hasher.finalize().as_bytes())
    }

    /// Writes the table definition the rows were decoded under, once per version, before any
    /// logged insert refers to it.
    pub(crate) fn ensure_definition(
        &self,
        def: &TableDef,
        created: Revision,
        version: Revision,
    ) -> std::io::Result<()> {
        // Held while writing: concurrent inserts of a new version write its file once.
        let mut written = self.definitions_written.lock().map_err(|e| std::io::Error::other(e.to_string()))?;
        if written.get(&def.name).is_some_and(|versions| versions.contains(&(created, version))) {
            return Ok(());
        }
        let path = self.definitions_dir.join(format!("{}.{created}.{version}.json", def.name));
        if !path.exists() {
            let temp = path.with_extension("tmp");
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&def.to_json())?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            std::fs::File::open(&self.definitions_dir)?.sync_all()?;
        }
        written.entry(def.name.clone()).or_default().insert((created, version));
        Ok(())
    }

    /// Whether the definition of this version is already written.
    pub(crate) fn has_definition(&self, table: &str, created: Revision, version: Revision) -> bool {
        self.definitions_written
            .lock()
            .is_ok_and(|written| written.get(table).is_some_and(|versions| versions.contains(&(created, version))))
    }

    /// How to hash and log `table`'s inserts decoded under `schema`: built once, and again only
    /// when the table's schema changed.
    pub(crate) fn codecs(&self, table: &str, schema: &SchemaRef) -> Result<Arc<SchemaCodecs>, Error> {
        let cached = self.codecs.lock().map_err(Error::internal)?.get(table).cloned();
        match cached {
            Some(codecs) if Arc::ptr_eq(codecs.schema(), schema) || **codecs.schema() == **schema => Ok(codecs),
            _ => {
                let codecs = Arc::new(SchemaCodecs::new(schema)?);
                self.codecs.lock().map_err(Error::internal)?.insert(table.to_string(), codecs.clone());
                Ok(codecs)
            }
        }
    }

    pub(crate) fn load_definition(
        &self,
        table: &str,
        created: Revision,
        version: Revision,
    ) -> anyhow::Result<TableDef> {
        let path = self.definitions_dir.join(format!("{table}.{created}.{version}.json"));
        Ok(TableDef::from_json(&std::fs::read(&path)?)?)
    }

    pub(crate) fn buffer(&self, entry: Entry, busy_timeout: Duration, max_bytes: u64) {
        let deadline = entry.logged_at + busy_timeout;
        let mut wake = false;
        if let Ok(mut buffers) = self.buffers.lock() {
            // Found by the borrowed name: the table's name is copied only for its first buffer.
            wake = match buffers.get_mut(entry.def.name.as_str()) {
                Some(buffer) => buffer.add(entry, deadline, max_bytes),
                None => {
                    let table = entry.def.name.clone();
                    let mut buffer = TableBuffer {
                        entries: Vec::new(),
                        bytes: 0,
                        deadline,
                        max_bytes,
                        retry_at: None,
                        backoff: Duration::from_millis(100),
                        last_error: None,
                    };
                    let wake = buffer.add(entry, deadline, max_bytes);
                    buffers.insert(table, buffer);
                    wake
                }
            };
        }
        if wake || busy_timeout.is_zero() {
            self.wake.notify_one();
        }
    }

    /// Takes the entries of every table whose buffer is due, each at most one flush's worth.
    pub(crate) fn take_due(&self, now: Instant) -> Vec<(String, Vec<Entry>)> {
        let Ok(mut buffers) = self.buffers.lock() else { return Vec::new() };
        let mut due = Vec::new();
        for (table, buffer) in buffers.iter_mut() {
            let ready = buffer.deadline <= now || buffer.bytes >= buffer.max_bytes;
            if buffer.entries.is_empty() || !ready || buffer.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            let (mut bytes, mut ids, mut take) = (0, 0, 0);
            for entry in &buffer.entries {
                if take > 0 && (bytes >= buffer.max_bytes || ids + entry.pieces.len() > MAX_ASYNC_BLOCKS_PER_FLUSH) {
                    break;
                }
                bytes += entry.bytes;
                ids += entry.pieces.len();
                take += 1;
            }
            let entries: Vec<Entry> = buffer.entries.drain(..take).collect();
            buffer.bytes -= bytes;
            due.push((table.clone(), entries));
        }
        due
    }

    /// Puts entries whose flush failed back in front of their buffer, to be retried later.
    pub(crate) fn requeue(&self, table: &str, mut entries: Vec<Entry>, error: &Error) {
        let Ok(mut buffers) = self.buffers.lock() else { return };
        let Some(buffer) = buffers.get_mut(table) else { return };
        buffer.bytes += entries.iter().map(|e| e.bytes).sum::<u64>();
        entries.append(&mut buffer.entries);
        buffer.entries = entries;
        buffer.retry_at = Some(Instant::now() + buffer.backoff);
        buffer.backoff = (buffer.backoff * 2).min(MAX_RETRY);
        buffer.last_error = Some(error.to_string());
    }

    /// Puts entries that did not fit in a flush back in front of their buffer, due at once.
    pub(crate) fn put_back(&self, table: &str, mut entries: Vec<Entry>) {
        if let Ok(mut buffers) = self.buffers.lock()
            && let Some(buffer) = buffers.get_mut(table)
        {
            buffer.bytes += entries.iter().map(|e| e.bytes).sum::<u64>();
            entries.append(&mut buffer.entries);
            buffer.entries = entries;
            buffer.deadline = Instant::now();
        }
        self.wake.notify_one();
    }

    pub(crate) fn flushed_ok(&self, table: &str) {
        if let Ok(mut buffers) = self.buffers.lock()
            && let Some(buffer) = buffers.get_mut(table)
        {
            buffer.retry_at = None;
            buffer.backoff = Duration::from_millis(100);
            buffer.last_error = None;
        }
    }

    /// When the next buffer falls due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let buffers = self.buffers.lock().ok()?;
        buffers
            .values()
            .filter(|b| !b.entries.is_empty())
            .map(|b| b.retry_at.map_or(b.deadline, |at| at.max(b.deadline)))
            .min()
    }

    pub(crate) fn backlog(&self) -> Vec<AsyncBacklog> {
        let Ok(buffers) = self.buffers.lock() else { return Vec::new() };
        let now = Instant::now();
        buffers
            .iter()
            .filter(|(_, b)| !b.entries.is_empty() || b.last_error.is_some())
            .map(|(table, b)| AsyncBacklog {
                table: table.clone(),
                inserts: b.entries.len() as u64,
                rows: b.entries.iter().flat_map(|e| &e.pieces).map(|p| p.rows.num_rows() as u64).sum(),
                bytes: b.bytes,
                oldest_ms: b.entries.first().map_or(0, |e| now.duration_since(e.logged_at).as_millis() as u64),
                last_error: b.last_error.clone(),
            })
            .collect()
    }

    /// Bytes of rows held in memory by every table's buffer.
    pub(crate) fn buffered_bytes(&self) -> u64 {
        self.buffers.lock().map_or(0, |buffers| buffers.values().map(|b| b.bytes).sum())
    }

    pub(crate) fn log_bytes(&self) -> u64 {
        self.log.bytes()
    }
}

/// The block ids of recent asynchronous flushes, per table, as this node has applied them.
#[derive(Default)]
pub(crate) struct BlockIndex {
    pub(crate) tables: Mutex<HashMap<String, TableIndex, ahash::RandomState>>,
    /// Set once the first listing is in: before it, a flush cannot know what was admitted.
    pub(crate) listed: AtomicBool,
}

#[derive(Default)]
pub(crate) struct TableIndex {
    /// The revision of the table's last flush seen here.
    pub(crate) sequence: Revision,
    /// Each id with the revision and time it was admitted. Hashed by aHash (keyed per process,
    /// as the standard library's SipHash is): every insert looks its ids up here, and SipHash
    /// was a percent of a small insert's CPU.
    pub(crate) ids: HashMap<AsyncBlockId, (Revision, i64), ahash::RandomState>,
    /// The sets by key (oldest first), for forgetting them.
    pub(crate) sets: BTreeMap<String, (Revision, Vec<AsyncBlockId>)>,
}

impl TableIndex {
    pub(crate) fn add(&mut self, set: &AsyncBlockSet) {
        if self.sets.contains_key(&set.key) {
            return;
        }
        for id in &set.ids {
            let admitted = self.ids.entry(*id).or_insert((set.revision, set.created_at_ms));
            if admitted.0 < set.revision {
                *admitted = (set.revision, set.created_at_ms);
            }
        }
        self.sets.insert(set.key.clone(), (set.revision, set.ids.clone()));
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if let Some((revision, ids)) = self.sets.remove(key) {
            for id in ids {
                if self.ids.get(&id).is_some_and(|(r, _)| *r == revision) {
                    self.ids.remove(&id);
                }
            }
        }
    }
}

impl BlockIndex {
    pub(crate) fn apply_batch(&self, batch: &EventBatch) {
        let Ok(mut tables) = self.tables.lock() else { return };
        for event in &batch.events {
            match event {
                ClusterEvent::AsyncBlocksAdded(set) => tables.entry(set.table.clone()).or_default().add(set),
                ClusterEvent::AsyncBlocksRemoved { table, key } => {
                    if let Some(index) = tables.get_mut(table) {
                        index.remove(key);
                    }
                }
                ClusterEvent::AsyncSequence { table, revision } => {
                    let index = tables.entry(table.clone()).or_default();
                    index.sequence = index.sequence.max(*revision);
                }
                ClusterEvent::TableDropped { name } => {
                    tables.remove(name);
                }
                _ => {}
            }
        }
    }

    /// Adds a listing's sets (a union: a set the watch has already removed again only lives
    /// until its window ends, which admission checks anyway).
    pub(crate) fn apply_listing(&self, sets: &[AsyncBlockSet], sequences: &[(String, Revision)]) {
        let Ok(mut tables) = self.tables.lock() else { return };
        for set in sets {
            tables.entry(set.table.clone()).or_default().add(set);
        }
        for (table, revision) in sequences {
            let index = tables.entry(table.clone()).or_default();
            index.sequence = index.sequence.max(*revision);
        }
        self.listed.store(true, Ordering::Release);
    }

    pub(crate) fn apply_snapshot(&self, snapshot: &Snapshot) {
        self.apply_listing(&snapshot.async_blocks, &snapshot.async_sequences);
    }

    pub(crate) fn is_listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    pub(crate) fn sequence(&self, table: &str) -> Revision {
        self.tables.lock().ok().and_then(|t| t.get(table).map(|i| i.sequence)).unwrap_or(0)
    }

    /// The revision at which `id` was admitted, if within the window.
    pub(crate) fn admitted(&self, table: &str, id: &AsyncBlockId, now_ms: i64, window_ms: i64) -> Option<Revision> {
        let tables = self.tables.lock().ok()?;
        let (revision, created) = tables.get(table)?.ids.get(id)?;
        (now_ms - created <= window_ms).then_some(*revision)
    }

    /// The keys of the oldest sets of `table` past the newest `keep` ids.
    pub(crate) fn sets_beyond(&self, table: &str, keep: u64) -> Vec<String> {
        let Ok(tables) = self.tables.lock() else { return Vec::new() };
        let Some(index) = tables.get(table) else { return Vec::new() };
        let mut kept = 0u64;
        let mut beyond = Vec::new();
        for (key, (_, ids)) in index.sets.iter().rev() {
            kept += ids.len() as u64;
            if kept > keep {
                beyond.push(key.clone());
            }
        }
        beyond
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, revision: Revision, created_at_ms: i64, ids: &[u8]) -> AsyncBlockSet {
        AsyncBlockSet {
            table: "t".into(),
            key: key.into(),
            created_at_ms,
            revision,
            ids: ids.iter().map(|&i| AsyncBlockId([i; 16])).collect(),
        }
    }

    #[test]
    fn the_index_answers_within_the_window_and_forgets_what_is_removed() {
        let index = BlockIndex::default();
        index.apply_listing(&[set("0000000001000-a", 5, 1_000, &[1, 2])], &[("t".into(), 5)]);
        let batch = EventBatch {
            revision: 7,
            events: vec![
                ClusterEvent::AsyncBlocksAdded(set("0000000002000-b", 7, 2_000, &[3])),
                ClusterEvent::AsyncSequence { table: "t".into(), revision: 7 },
            ],
        };
        index.apply_batch(&batch);
        assert_eq!(index.sequence("t"), 7);
        assert_eq!(index.admitted("t", &AsyncBlockId([1; 16]), 1_500, 1_000), Some(5));
        assert_eq!(index.admitted("t", &AsyncBlockId([1; 16]), 2_001, 1_000), None, "past the time window");
        assert_eq!(index.admitted("t", &AsyncBlockId([9; 16]), 1_500, 1_000), None);
        assert_eq!(index.sets_beyond("t", 1), ["0000000001000-a"], "the oldest set goes first");
        assert!(index.sets_beyond("t", 3).is_empty());

        let removed = EventBatch {
            revision: 8,
            events: vec![ClusterEvent::AsyncBlocksRemoved { table: "t".into(), key: "0000000001000-a".into() }],
        };
        index.apply_batch(&removed);
        assert_eq!(index.admitted("t", &AsyncBlockId([2; 16]), 1_500, i64::MAX), None);
        assert_eq!(index.admitted("t", &AsyncBlockId([3; 16]), 2_500, i64::MAX), Some(7));

        let dropped = EventBatch { revision: 9, events: vec![ClusterEvent::TableDropped { name: "t".into() }] };
        index.apply_batch(&dropped);
        assert_eq!(index.sequence("t"), 0, "a dropped table's flushes are forgotten");
        assert_eq!(index.admitted("t", &AsyncBlockId([3; 16]), 2_500, i64::MAX), None);
    }

    #[test]
    fn a_readmitted_id_outlives_the_removal_of_its_older_set() {
        let index = BlockIndex::default();
        index.apply_listing(&[set("0000000001000-a", 5, 1_000, &[1]), set("0000000009000-b", 9, 9_000, &[1])], &[]);
        let removed = EventBatch {
            revision: 10,
            events: vec![ClusterEvent::AsyncBlocksRemoved { table: "t".into(), key: "0000000001000-a".into() }],
        };
        index.apply_batch(&removed);
        assert_eq!(index.admitted("t", &AsyncBlockId([1; 16]), 9_500, 1_000), Some(9));
    }
}
