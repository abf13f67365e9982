use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, watch};

use crate::CoordError;
use crate::kv::{
    Compare, KeyValue, KvBackend, LeaseId, Revision, TxnOp, TxnResult, WatchEvent, WatchEventKind, WatchResponse,
    WatchStream, receiver_stream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Lease id -> (TTL in ms, deadline in ms since the epoch), so leases outlive a restart as
/// etcd's do.
const LEASES: TableDefinition<i64, (u64, i64)> = TableDefinition::new("leases");

type RevisionEvents = (Revision, Vec<WatchEvent>);

/// History kept for watches that resume from an older revision: at most this many revisions,
/// and at most this many bytes of change log (a table definition is rewritten whole by every
/// ALTER, so a count alone does not bound the file). Past the byte budget, the oldest half is
/// compacted away, as etcd's space quota asks its operators to.
const HISTORY_REVISIONS: i64 = 100_000;
const HISTORY_BYTES: i64 = 64 << 20;
const COMPACT_EVERY: i64 = 10_000;

/// The single-node metadata store: a redb file with etcd's semantics (revisions, atomic
/// multi-key transactions, a change log for watches, leases).
///
/// Every write transaction is committed durably (fsync) before it returns. Leases are
/// persisted with their wall-clock deadline: a lease outlives a restart (as in etcd) and its
/// keys are deleted when the deadline passes.
#[derive(Clone)]
pub struct EmbeddedKv {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    revision_tx: watch::Sender<Revision>,
    leases: Mutex<HashMap<LeaseId, LeaseState>>,
    next_lease: Mutex<LeaseId>,
    /// Bytes of change log kept ([`HISTORY_BYTES`]).
    history_bytes: i64,
}

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
}

impl EmbeddedKv {
    /// Opens or creates the store file at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, CoordError> {
        Self::open_with_history(path, HISTORY_BYTES).await
    }

    async fn open_with_history(path: impl AsRef<Path>, history_bytes: i64) -> Result<Self, CoordError> {
        let path = path.as_ref().to_path_buf();
        let db = tokio::task::spawn_blocking(move || {
            Database::create(&path)
                .map_err(|e| CoordError::Backend(format!("cannot open metadata file {}: {e}", path.display())))
        })
        .await
        .map_err(|e| CoordError::Backend(e.to_string()))??;
        let first_lease = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(1);
        let (revision_tx, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            db,
            revision_tx,
            leases: Mutex::new(HashMap::new()),
            next_lease: Mutex::new(first_lease),
            history_bytes,
        });
        let kv = EmbeddedKv { inner };
        kv.blocking(|inner| inner.init()).await?;
        tokio::spawn(expire_leases(Arc::downgrade(&kv.inner)));
        Ok(kv)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, CoordError> + Send + 'static,
    ) -> Result<T, CoordError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| CoordError::Backend(format!("metadata task failed: {e}")))?
    }
}

async fn expire_leases(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<LeaseId> = {
            let mut leases = inner.leases.lock().expect("lease map lock");
            let ids: Vec<_> = leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect();
            for id in &ids {
                leases.remove(id);
            }
            ids
        };
        if expired.is_empty() {
            continue;
        }
        let result = tokio::task::spawn_blocking(move || {
            inner.delete_leased_keys(|lease| expired.contains(&lease))?;
            inner.forget_leases(|lease| expired.contains(&lease))
        })
        .await;
        if let Ok(Err(e)) | Err(e) = result.map_err(|e| CoordError::Backend(e.to_string())) {
            tracing::error!(error = %e, "cannot delete the keys of expired leases");
        }
    }
}

impl Inner {
    fn init(&self) -> Result<(), CoordError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(KV)?;
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            txn.open_table(LEASES)?;
        }
        txn.commit()?;
        let now_ms = unix_ms();
        let mut live = HashMap::new();
        {
            let txn = self.db.begin_read()?;
            for entry in txn.open_table(LEASES)?.iter()? {
                let (id, value) = entry?;
                let (ttl_ms, deadline_ms) = value.value();
                if deadline_ms > now_ms {
                    let remaining = Duration::from_millis((deadline_ms - now_ms) as u64);
                    live.insert(
                        id.value(),
                        LeaseState { ttl: Duration::from_millis(ttl_ms), deadline: Instant::now() + remaining },
                    );
                }
            }
        }
        if let Some(max) = live.keys().max() {
            let mut next = self.next_lease.lock().expect("lease counter lock");
            *next = (*next).max(*max);
        }
        *self.leases.lock().expect("lease map lock") = live;
        // Keys of leases that expired while the store was closed go now.
        self.delete_leased_keys(|lease| !self.lease_exists(lease))?;
        self.forget_leases(|id| !self.lease_exists(id))?;
        let revision = self.read_revision()?;
        self.revision_tx.send_replace(revision);
        Ok(())
    }

    fn read_revision(&self) -> Result<Revision, CoordError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("revision")?.map(|v| v.value()).unwrap_or(0))
    }

    fn delete_leased_keys(&self, expired: impl Fn(LeaseId) -> bool) -> Result<(), CoordError> {
        let keys: Vec<String> = {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(KV)?;
            let mut keys = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                let record = decode_record(k.value(), v.value())?;
                if record.lease != 0 && expired(record.lease) {
                    keys.push(record.key);
                }
            }
            keys
        };
        if !keys.is_empty() {
            let ops = keys.into_iter().map(|key| TxnOp::Delete { key }).collect();
            self.txn(Vec::new(), ops, Vec::new())?;
        }
        Ok(())
    }

    fn persist_lease(&self, id: LeaseId, ttl: Duration, deadline_ms: i64) -> Result<(), CoordError> {
        let txn = self.db.begin_write()?;
        txn.open_table(LEASES)?.insert(id, (ttl.as_millis() as u64, deadline_ms))?;
        txn.commit()?;
        Ok(())
    }

    fn forget_leases(&self, gone: impl Fn(LeaseId) -> bool) -> Result<(), CoordError> {
        let txn = self.db.begin_write()?;
        txn.open_table(LEASES)?.retain(|id, _| !gone(id))?;
        txn.commit()?;
        Ok(())
    }

    fn lease_exists(&self, lease: LeaseId) -> bool {
        self.leases.lock().expect("lease map lock").contains_key(&lease)
    }

    fn txn(&self, compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Result<TxnResult, CoordError> {
        let txn = self.db.begin_write()?;
        let (result, wrote) = {
            let mut kv = txn.open_table(KV)?;
            let mut log = txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            let revision = meta.get("revision")?.map(|v| v.value()).unwrap_or(0);
            let new_revision = revision + 1;

            let mut succeeded = true;
            for compare in &compares {
                let holds = match compare {
                    Compare::Absent(key) => kv.get(key.as_str())?.is_none(),
                    Compare::ModRevision(key, expected) => match kv.get(key.as_str())? {
                        Some(v) => decode_record(key, v.value())?.mod_revision == *expected,
                        None => false,
                    },
                };
                if !holds {
                    succeeded = false;
                    break;
                }
            }

            let ops = if succeeded { success } else { failure };
            let mut events = Vec::new();
            let mut gets = Vec::new();
            for op in ops {
                match op {
                    TxnOp::Get { key } => {
                        let found = kv.get(key.as_str())?.map(|v| decode_record(&key, v.value())).transpose()?;
                        gets.push(found);
                    }
                    TxnOp::Put { key, value, lease } => {
                        let lease = lease.unwrap_or(0);
                        if lease != 0 && !self.lease_exists(lease) {
                            return Err(CoordError::LeaseExpired(lease));
                        }
                        let create_revision = match kv.get(key.as_str())? {
                            Some(v) => decode_record(&key, v.value())?.create_revision,
                            None => new_revision,
                        };
                        let record = KeyValue { key, value, create_revision, mod_revision: new_revision, lease };
                        kv.insert(record.key.as_str(), encode_record(&record).as_slice())?;
                        events.push(WatchEvent { kind: WatchEventKind::Put, kv: record });
                    }
                    TxnOp::Delete { key } => {
                        if kv.remove(key.as_str())?.is_some() {
                            events.push(deleted(key, new_revision));
                        }
                    }
                    TxnOp::DeletePrefix { prefix } => {
                        let keys: Vec<String> = kv
                            .range(prefix.as_str()..)?
                            .map(|e| e.map(|(k, _)| k.value().to_string()))
                            .take_while(|k| k.as_ref().map(|k| k.starts_with(&prefix)).unwrap_or(true))
                            .collect::<Result<_, _>>()?;
                        for key in keys {
                            kv.remove(key.as_str())?;
                            events.push(deleted(key, new_revision));
                        }
                    }
                }
            }

            let wrote = !events.is_empty();
            if wrote {
                let encoded = encode_events(&events);
                log.insert(new_revision, encoded.as_slice())?;
                meta.insert("revision", new_revision)?;
                let log_bytes = meta.get("log_bytes")?.map(|v| v.value()).unwrap_or(0) + encoded.len() as i64;
                meta.insert("log_bytes", log_bytes)?;
                if new_revision % COMPACT_EVERY == 0 && new_revision > HISTORY_REVISIONS {
                    compact_log(&mut log, &mut meta, new_revision - HISTORY_REVISIONS)?;
                } else if log_bytes > self.history_bytes {
                    // Keep the newest half of the budget (and always the revision just written).
                    let (mut freed, mut keep_from) = (0i64, None);
                    for entry in log.range(..new_revision)? {
                        let (revision, value) = entry?;
                        freed += value.value().len() as i64;
                        keep_from = Some(revision.value() + 1);
                        if log_bytes - freed <= self.history_bytes / 2 {
                            break;
                        }
                    }
                    if let Some(revision) = keep_from {
                        compact_log(&mut log, &mut meta, revision)?;
                    }
                }
            }
            let revision = if wrote { new_revision } else { revision };
            (TxnResult { succeeded, revision, gets }, wrote)
        };
        if wrote {
            txn.commit()?;
            // Commits are serialized by redb but their notifications may race: never go back.
            let revision = result.revision;
            self.revision_tx.send_if_modified(|current| {
                let newer = revision > *current;
                if newer {
                    *current = revision;
                }
                newer
            });
        } else {
            txn.abort()?;
        }
        Ok(result)
    }

    /// Events of revisions `from..=to` under `prefix`, grouped by revision; or, when `from`
    /// has been compacted, `Err` with the oldest revision still available.
    fn read_log(
        &self,
        prefix: &str,
        from: Revision,
        to: Revision,
    ) -> Result<Result<Vec<RevisionEvents>, Revision>, CoordError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let compacted = meta.get("compacted")?.map(|v| v.value()).unwrap_or(0);
        if from < compacted {
            return Ok(Err(compacted));
        }
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
        for entry in log.range(from..=to)? {
            let (revision, bytes) = entry?;
            let events: Vec<WatchEvent> =
                decode_events(bytes.value())?.into_iter().filter(|e| e.kv.key.starts_with(prefix)).collect();
            if !events.is_empty() {
                out.push((revision.value(), events));
            }
        }
        Ok(Ok(out))
    }
}

fn compact_log(
    log: &mut redb::Table<i64, &[u8]>,
    meta: &mut redb::Table<&str, i64>,
    revision: Revision,
) -> Result<(), CoordError> {
    let old: Vec<(i64, i64)> = log
        .range(..revision)?
        .map(|e| e.map(|(k, v)| (k.value(), v.value().len() as i64)))
        .collect::<Result<_, _>>()?;
    let freed: i64 = old.iter().map(|(_, bytes)| bytes).sum();
    for (r, _) in old {
        log.remove(r)?;
    }
    let current = meta.get("compacted")?.map(|v| v.value()).unwrap_or(0);
    meta.insert("compacted", revision.max(current))?;
    let log_bytes = meta.get("log_bytes")?.map(|v| v.value()).unwrap_or(0);
    meta.insert("log_bytes", (log_bytes - freed).max(0))?;
    Ok(())
}

fn deleted(key: String, revision: Revision) -> WatchEvent {
    WatchEvent {
        kind: WatchEventKind::Delete,
        kv: KeyValue { key, value: Vec::new(), create_revision: 0, mod_revision: revision, lease: 0 },
    }
}

#[async_trait]
impl KvBackend for EmbeddedKv {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, CoordError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read()?;
            let table = txn.open_table(KV)?;
            table.get(key.as_str())?.map(|v| decode_record(&key, v.value())).transpose()
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), CoordError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read()?;
            let meta = txn.open_table(META)?;
            let revision = meta.get("revision")?.map(|v| v.value()).unwrap_or(0);
            let table = txn.open_table(KV)?;
            let mut out = Vec::new();
            for entry in table.range(prefix.as_str()..)? {
                let (k, v) = entry?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                out.push(decode_record(k.value(), v.value())?);
            }
            Ok((out, revision))
        })
        .await
    }

    async fn count(&self, prefix: &str) -> Result<u64, CoordError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read()?;
            let table = txn.open_table(KV)?;
            let mut n = 0;
            for entry in table.range(prefix.as_str()..)? {
                if !entry?.0.value().starts_with(&prefix) {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn range_first(&self, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, CoordError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read()?;
            let table = txn.open_table(KV)?;
            let mut out = Vec::new();
            for entry in table.range(prefix.as_str()..)? {
                let (k, v) = entry?;
                if out.len() >= limit || !k.value().starts_with(&prefix) {
                    break;
                }
                out.push(decode_record(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> Result<TxnResult, CoordError> {
        self.blocking(move |inner| inner.txn(compares, success, failure)).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, CoordError> {
        let (tx, rx) = mpsc::channel(64);
        let weak = Arc::downgrade(&self.inner);
        let mut revisions = self.inner.revision_tx.subscribe();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut next = from.max(1);
            loop {
                let current = *revisions.borrow_and_update();
                if current >= next {
                    let Some(inner) = weak.upgrade() else { return };
                    let prefix = prefix.clone();
                    let read = tokio::task::spawn_blocking(move || inner.read_log(&prefix, next, current)).await;
                    let read = read.map_err(|e| CoordError::Backend(e.to_string())).and_then(|r| r);
                    match read {
                        Ok(Ok(batches)) => {
                            for (revision, events) in batches {
                                if tx.send(Ok(WatchResponse::Events { revision, events })).await.is_err() {
                                    return;
                                }
                            }
                            next = current + 1;
                        }
                        Ok(Err(compact_revision)) => {
                            let _ = tx.send(Ok(WatchResponse::Compacted { compact_revision })).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(receiver_stream(rx))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let id = {
            let mut next = self.inner.next_lease.lock().expect("lease counter lock");
            *next += 1;
            *next
        };
        let deadline_ms = unix_ms() + ttl.as_millis() as i64;
        self.blocking(move |inner| inner.persist_lease(id, ttl, deadline_ms)).await?;
        self.inner
            .leases
            .lock()
            .expect("lease map lock")
            .insert(id, LeaseState { ttl, deadline: Instant::now() + ttl });
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordError> {
        let ttl = {
            let mut leases = self.inner.leases.lock().expect("lease map lock");
            let state = leases.get_mut(&lease).ok_or(CoordError::LeaseExpired(lease))?;
            state.deadline = Instant::now() + state.ttl;
            state.ttl
        };
        let deadline_ms = unix_ms() + ttl.as_millis() as i64;
        self.blocking(move |inner| inner.persist_lease(lease, ttl, deadline_ms)).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CoordError> {
        self.inner.leases.lock().expect("lease map lock").remove(&lease);
        self.blocking(move |inner| {
            inner.delete_leased_keys(|l| l == lease)?;
            inner.forget_leases(|l| l == lease)
        })
        .await
    }

    async fn compact(&self, revision: Revision) -> Result<(), CoordError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_write()?;
            {
                let mut log = txn.open_table(LOG)?;
                let mut meta = txn.open_table(META)?;
                compact_log(&mut log, &mut meta, revision)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

// Records: create_revision, mod_revision, lease (i64 little-endian each), then the value.
fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.lease.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode_record(key: &str, bytes: &[u8]) -> Result<KeyValue, CoordError> {
    let mut reader = Reader { bytes, key };
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: reader.i64()?,
        mod_revision: reader.i64()?,
        lease: reader.i64()?,
        value: reader.bytes.to_vec(),
    })
}

// Log entries: per event a kind byte, the key and value (u32 length-prefixed), then the record's revisions and lease.
fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        out.push(match event.kind {
            WatchEventKind::Put => 1,
            WatchEventKind::Delete => 2,
        });
        for part in [event.kv.key.as_bytes(), event.kv.value.as_slice()] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        for n in [event.kv.create_revision, event.kv.mod_revision, event.kv.lease] {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out
}

fn decode_events(bytes: &[u8]) -> Result<Vec<WatchEvent>, CoordError> {
    let mut reader = Reader { bytes, key: "<change log>" };
    let mut events = Vec::new();
    while !reader.bytes.is_empty() {
        let kind = match reader.take(1)?[0] {
            1 => WatchEventKind::Put,
            2 => WatchEventKind::Delete,
            other => return Err(reader.corrupt(format!("unknown event kind {other}"))),
        };
        let key_len = reader.u32()? as usize;
        let key = String::from_utf8(reader.take(key_len)?.to_vec()).map_err(|e| reader.corrupt(e.to_string()))?;
        let value_len = reader.u32()? as usize;
        let value = reader.take(value_len)?.to_vec();
        let kv =
            KeyValue { key, value, create_revision: reader.i64()?, mod_revision: reader.i64()?, lease: reader.i64()? };
        events.push(WatchEvent { kind, kv });
    }
    Ok(events)
}

struct Reader<'a> {
    bytes: &'a [u8],
    key: &'a str,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, reason: String) -> CoordError {
        CoordError::Corrupt { key: self.key.to_string(), reason }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CoordError> {
        if self.bytes.len() < n {
            return Err(self.corrupt(format!("record truncated: needed {n} more bytes")));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn i64(&mut self) -> Result<i64, CoordError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn u32(&mut self) -> Result<u32, CoordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewriting one large value again and again (an ALTER of a wide table) keeps the change
    /// log within its byte budget; a watch from before the kept history says it was compacted.
    #[tokio::test]
    async fn the_change_log_stays_within_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.redb");
        let kv = EmbeddedKv::open_with_history(&path, 1 << 20).await.unwrap();
        let value = vec![b'x'; 100 << 10];
        for _ in 0..200 {
            kv.txn(
                Vec::new(),
                vec![TxnOp::Put { key: "/t/def".into(), value: value.clone(), lease: None }],
                Vec::new(),
            )
            .await
            .unwrap();
        }
        let log_bytes = kv
            .blocking(|inner| {
                let txn = inner.db.begin_read()?;
                let meta = txn.open_table(META)?;
                Ok(meta.get("log_bytes")?.map(|v| v.value()).unwrap_or(0))
            })
            .await
            .unwrap();
        assert!(log_bytes <= 1 << 20, "the log holds {log_bytes} bytes");
        assert!(log_bytes >= 100 << 10, "the newest revision is kept");
        let file = std::fs::metadata(&path).unwrap().len();
        assert!(file < 16 << 20, "the file holds {file} bytes for 20 MB written");
    }
}
