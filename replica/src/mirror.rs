//! The node's local copy of the cluster's tables and parts at the revision it last applied,
//! so a restarted node resumes its watch from there instead of listing everything again.
//!
//! Writes are not fsynced one by one (redb's eventual durability, made durable every few
//! seconds): losing the newest writes in a crash only means resuming from an older revision,
//! and applying a revision twice changes nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use tandem_coordinator::{ClusterEvent, EventBatch, Holder, RegisteredPart, Revision, Snapshot, TableRecord};
use tandem_parts::PartId;

const TABLES: TableDefinition<&str, &[u8]> = TableDefinition::new("tables");
const PARTS: TableDefinition<&str, &[u8]> = TableDefinition::new("parts");
const HOLDERS: TableDefinition<&str, ()> = TableDefinition::new("holders");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Eventual-durability writes are made durable at least this often.
const SYNC_INTERVAL: Duration = Duration::from_secs(5);

pub struct Mirror {
    db: Database,
    last_sync: std::sync::Mutex<Instant>,
}

impl Mirror {
    pub fn open(path: &Path) -> anyhow::Result<Arc<Self>> {
        let db = Database::create(path)
            .map_err(|e| anyhow::anyhow!("cannot open the local catalog {}: {e}", path.display()))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(TABLES)?;
            txn.open_table(PARTS)?;
            txn.open_table(HOLDERS)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        Ok(Arc::new(Mirror { db, last_sync: std::sync::Mutex::new(Instant::now()) }))
    }

    /// The persisted state, if it was written for this cluster prefix.
    pub fn load(&self, prefix: &str) -> anyhow::Result<Option<Snapshot>> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let saved_prefix = meta.get("prefix")?.map(|v| v.value().to_vec());
        let Some(revision) = meta.get("revision")?.map(|v| i64_at(v.value(), 0)) else { return Ok(None) };
        if saved_prefix.as_deref() != Some(prefix.as_bytes()) {
            return Ok(None);
        }
        let mut snapshot = Snapshot { revision, ..Default::default() };
        for entry in txn.open_table(TABLES)?.iter()? {
            let (name, value) = entry?;
            let value = value.value();
            snapshot.tables.push(TableRecord {
                name: name.value().to_string(),
                version: i64_at(value, 0),
                created: i64_at(value, 8),
                doc: value[16..].to_vec(),
            });
        }
        for entry in txn.open_table(PARTS)?.iter()? {
            let (key, value) = entry?;
            let Some((table, id)) = key.value().split_once('/') else { continue };
            // Written by this node from parsed ids: a key that does not parse is damage, and the
            // listing that follows a failed resume replaces it.
            let id: PartId = id.parse()?;
            let value = value.value();
            snapshot.parts.push(RegisteredPart {
                table: table.to_string(),
                id,
                revision: i64_at(value, 0),
                manifest: value[8..].to_vec(),
            });
        }
        for entry in txn.open_table(HOLDERS)?.iter()? {
            let (key, _) = entry?;
            let mut fields = key.value().splitn(3, '/');
            if let (Some(table), Some(id), Some(node)) = (fields.next(), fields.next(), fields.next()) {
                snapshot.holders.push(Holder { table: table.to_string(), part: id.parse()?, node: node.to_string() });
            }
        }
        Ok(Some(snapshot))
    }

    /// Replaces everything with a fresh listing (made durable at once).
    pub fn replace(&self, prefix: &str, snapshot: &Snapshot) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut tables = txn.open_table(TABLES)?;
            tables.retain(|_, _| false)?;
            for table in &snapshot.tables {
                tables.insert(table.name.as_str(), table_value(table).as_slice())?;
            }
            let mut parts = txn.open_table(PARTS)?;
            parts.retain(|_, _| false)?;
            for part in &snapshot.parts {
                parts.insert(part_key(&part.table, &part.id).as_str(), part_value(part).as_slice())?;
            }
            let mut holders = txn.open_table(HOLDERS)?;
            holders.retain(|_, _| false)?;
            for holder in &snapshot.holders {
                holders.insert(holder_key(holder).as_str(), ())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert("prefix", prefix.as_bytes())?;
            meta.insert("revision", snapshot.revision.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        *self.last_sync.lock().expect("mirror sync lock") = Instant::now();
        Ok(())
    }

    /// Applies one revision's changes.
    pub fn apply(&self, batch: &EventBatch) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        let durable = {
            let mut last = self.last_sync.lock().expect("mirror sync lock");
            let due = last.elapsed() >= SYNC_INTERVAL;
            if due {
                *last = Instant::now();
            }
            due
        };
        if !durable {
            txn.set_durability(Durability::Eventual);
        }
        {
            let mut tables = txn.open_table(TABLES)?;
            let mut parts = txn.open_table(PARTS)?;
            let mut holders = txn.open_table(HOLDERS)?;
            for event in &batch.events {
                match event {
                    ClusterEvent::TablePut(table) => {
                        tables.insert(table.name.as_str(), table_value(table).as_slice())?;
                    }
                    ClusterEvent::TableDropped { name } => {
                        tables.remove(name.as_str())?;
                        let prefix = format!("{name}/");
                        parts.retain(|key, _| !key.starts_with(&prefix))?;
                        holders.retain(|key, _| !key.starts_with(&prefix))?;
                    }
                    ClusterEvent::PartAdded(part) => {
                        parts.insert(part_key(&part.table, &part.id).as_str(), part_value(part).as_slice())?;
                    }
                    ClusterEvent::PartRemoved { table, id } => {
                        parts.remove(part_key(table, id).as_str())?;
                    }
                    ClusterEvent::HolderAdded(holder) => {
                        holders.insert(holder_key(holder).as_str(), ())?;
                    }
                    ClusterEvent::HolderRemoved(holder) => {
                        holders.remove(holder_key(holder).as_str())?;
                    }
                    _ => {}
                }
            }
            txn.open_table(META)?.insert("revision", batch.revision.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}

fn part_key(table: &str, id: &PartId) -> String {
    format!("{table}/{id}")
}

fn holder_key(holder: &Holder) -> String {
    format!("{}/{}/{}", holder.table, holder.part, holder.node)
}

fn table_value(table: &TableRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + table.doc.len());
    out.extend_from_slice(&table.version.to_le_bytes());
    out.extend_from_slice(&table.created.to_le_bytes());
    out.extend_from_slice(&table.doc);
    out
}

fn part_value(part: &RegisteredPart) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + part.manifest.len());
    out.extend_from_slice(&part.revision.to_le_bytes());
    out.extend_from_slice(&part.manifest);
    out
}

fn i64_at(bytes: &[u8], at: usize) -> Revision {
    bytes.get(at..at + 8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_to_the_same_state_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        let table = TableRecord { name: "t".into(), doc: b"def".to_vec(), version: 3, created: 2 };
        let id = |label: &str| PartId::of_bytes(label.as_bytes());
        let part = |label: &str, revision| RegisteredPart {
            table: "t".into(),
            id: id(label),
            manifest: b"m".to_vec(),
            revision,
        };
        {
            let mirror = Mirror::open(&path).unwrap();
            let snapshot =
                Snapshot { revision: 5, tables: vec![table.clone()], parts: vec![part("a", 4)], ..Default::default() };
            mirror.replace("/tandem/x/", &snapshot).unwrap();
            let holder = ClusterEvent::HolderAdded(Holder { table: "t".into(), part: id("b"), node: "n2".into() });
            mirror
                .apply(&EventBatch { revision: 6, events: vec![ClusterEvent::PartAdded(part("b", 6)), holder] })
                .unwrap();
            mirror
                .apply(&EventBatch {
                    revision: 7,
                    events: vec![ClusterEvent::PartRemoved { table: "t".into(), id: id("a") }],
                })
                .unwrap();
        }
        let mirror = Mirror::open(&path).unwrap();
        assert!(mirror.load("/tandem/other/").unwrap().is_none(), "another cluster's state is not reused");
        let loaded = mirror.load("/tandem/x/").unwrap().unwrap();
        assert_eq!(loaded.revision, 7);
        assert_eq!(loaded.tables, vec![table]);
        assert_eq!(loaded.parts, vec![part("b", 6)]);
        assert_eq!(loaded.holders, vec![Holder { table: "t".into(), part: id("b"), node: "n2".into() }]);
    }
}
