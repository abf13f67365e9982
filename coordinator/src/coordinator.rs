use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tandem_ids::PartId;

use crate::CoordError;
use crate::async_block_ids::AsyncBlockSet;
use crate::kv::{Compare, KeyValue, KvBackend, LeaseId, Revision, TxnOp, WatchEventKind, WatchResponse};

/// At most this many parts go into one transaction: each needs a compare and four puts, and
/// etcd refuses transactions of more than 128 operations.
const PARTS_PER_TXN: usize = 25;

/// A table's schema record. `doc` is the node's serialized table definition.
#[derive(Clone, Debug, PartialEq)]
pub struct TableRecord {
    pub name: String,
    pub doc: Vec<u8>,
    /// The schema version: the revision that last wrote the record. Compare-and-swap on it.
    pub version: Revision,
    /// The revision that created the table; a dropped and re-created table gets a new one.
    pub created: Revision,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredPart {
    pub table: String,
    pub id: PartId,
    pub manifest: Vec<u8>,
    /// The revision at which the part was registered: its place in the global order.
    pub revision: Revision,
}

/// A consistent view of every table and part at one revision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub revision: Revision,
    pub tables: Vec<TableRecord>,
    pub parts: Vec<RegisteredPart>,
    /// Every recorded holder of a part.
    pub holders: Vec<Holder>,
    /// The asynchronous insert block ids still remembered.
    pub async_blocks: Vec<AsyncBlockSet>,
    /// Each table's asynchronous flush sequence (the revision of its last flush).
    pub async_sequences: Vec<(String, Revision)>,
}

/// A node (or [`OBJECT_STORE_HOLDER`]) recorded as holding a verified copy of a part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub table: String,
    pub part: PartId,
    pub node: String,
}

#[derive(Clone, Debug)]
pub struct NewPart {
    pub id: PartId,
    pub partition: String,
    /// `None` registers the part without deduplication.
    pub block_id: Option<String>,
    pub manifest: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartOutcome {
    Registered {
        revision: Revision,
    },
    /// The block id was already admitted: nothing was registered. Names the part that holds
    /// the block and the revision at which it was admitted.
    Duplicate {
        existing_part: PartId,
        revision: Revision,
    },
}

#[derive(Clone, Debug)]
pub struct Registration {
    /// One outcome per part, in the order given.
    pub outcomes: Vec<PartOutcome>,
    /// The highest revision the caller must see applied to observe every outcome.
    pub revision: Revision,
}

/// What is stored under a block id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BlockRecord {
    pub part: PartId,
    pub partition: String,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug)]
pub enum ClusterEvent {
    TablePut(TableRecord),
    TableDropped {
        name: String,
    },
    PartAdded(RegisteredPart),
    PartRemoved {
        table: String,
        id: PartId,
    },
    /// A node announced itself or updated its record.
    NodeUp {
        node: String,
        doc: Vec<u8>,
    },
    /// A node's lease ended.
    NodeDown {
        node: String,
    },
    HolderAdded(Holder),
    HolderRemoved(Holder),
    /// The insert block ids an asynchronous flush admitted (see [`AsyncBlockSet`]).
    AsyncBlocksAdded(AsyncBlockSet),
    /// A set of asynchronous insert block ids was forgotten (its window passed).
    AsyncBlocksRemoved {
        table: String,
        key: String,
    },
    /// An asynchronous flush of `table` was registered at `revision`: the table's flush
    /// sequence moved, which the next flush compares.
    AsyncSequence {
        table: String,
        revision: Revision,
    },
}

impl ClusterEvent {
    /// Whether the event changes tables or parts (as opposed to liveness and holdings).
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            ClusterEvent::TablePut(_)
                | ClusterEvent::TableDropped { .. }
                | ClusterEvent::PartAdded(_)
                | ClusterEvent::PartRemoved { .. }
        )
    }
}

/// Every change of one revision.
#[derive(Clone, Debug)]
pub struct EventBatch {
    pub revision: Revision,
    pub events: Vec<ClusterEvent>,
}

/// Table names double as key segments and SQL identifiers: ASCII letters, digits and `_`,
/// not starting with a digit, at most 128 characters.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// The holder name recorded for a part once its object is in the object store. Node ids cannot
/// start with `@`, so it never names a node.
pub const OBJECT_STORE_HOLDER: &str = "@object-store";

/// Node ids double as key segments and appear in logs: ASCII letters, digits, `_`, `-` and
/// `.`, at most 128 characters (Kubernetes pod names fit).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// tandem's metadata operations over any [`KvBackend`].
///
/// Key layout under the prefix (default `/tandem/default/`):
/// - `tables/<table>`: the schema record; its mod revision is the schema version.
/// - `parts/<table>/<part id>`: a part's manifest; its create revision orders the part.
/// - `blocks/<table>/<block id>`: the admitted block ids, each naming its part.
/// - `asyncblocks/<table>/<created ms>-<part id>`: the insert block ids one asynchronous flush
///   admitted; `asyncseq/<table>`: touched by every flush, compared by the next one.
/// - `holders/<table>/<part id>/<node id>`: the nodes that hold a verified copy of a part.
/// - `nodes/<node id>`: live nodes, attached to their lease.
/// - `leaders/<role>`: the node performing a one-at-a-time role, attached to its lease.
#[derive(Clone)]
pub struct Coordinator {
    kv: Arc<dyn KvBackend>,
    prefix: String,
    /// Lease of each (table, time bucket) that block ids are attached to, so the store itself
    /// forgets them once the dedup window has passed.
    dedup_leases: Arc<Mutex<HashMap<(String, i64), LeaseId>>>,
}

/// Windows at least this long are kept without leases (practically forever).
const UNLEASED_WINDOW_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

impl Coordinator {
    pub fn new(kv: Arc<dyn KvBackend>, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Coordinator { kv, prefix, dedup_leases: Arc::new(Mutex::new(HashMap::new())) }
    }

    pub fn backend(&self) -> &Arc<dyn KvBackend> {
        &self.kv
    }

    /// The key prefix of this cluster's records (ends with `/`).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn table_key(&self, table: &str) -> String {
        format!("{}tables/{table}", self.prefix)
    }

    pub(crate) fn part_key(&self, table: &str, id: &PartId) -> String {
        format!("{}parts/{table}/{id}", self.prefix)
    }

    pub(crate) fn holder_key(&self, table: &str, id: &PartId, node: &str) -> String {
        format!("{}holders/{table}/{id}/{node}", self.prefix)
    }

    /// Admission order of block ids: `blockorder/<table>/<created ms, 13 digits>-<block id>`.
    fn block_order_key(&self, table: &str, created_ms: i64, block_id: &str) -> String {
        format!("{}blockorder/{table}/{created_ms:013}-{block_id}", self.prefix)
    }

    /// The lease that block ids admitted at `now_ms` attach to: one per table and time bucket
    /// (a quarter of the window, between 1 s and 1 h), living the window plus one bucket, so
    /// every id outlives its window and etcd deletes it without anyone listing block ids.
    pub(crate) async fn dedup_lease(
        &self,
        table: &str,
        now_ms: i64,
        window_ms: i64,
    ) -> Result<Option<LeaseId>, CoordError> {
        if window_ms >= UNLEASED_WINDOW_MS {
            return Ok(None);
        }
        let bucket_ms = (window_ms / 4).clamp(1000, 3_600_000);
        let bucket = now_ms.div_euclid(bucket_ms);
        let cache_key = (table.to_string(), bucket);
        if let Some(id) = self.dedup_leases.lock().expect("lease cache lock").get(&cache_key) {
            return Ok(Some(*id));
        }
        let registry = format!("{}dedupleases/{table}/{bucket}", self.prefix);
        let parse_id = |kv: &KeyValue| std::str::from_utf8(&kv.value).ok().and_then(|v| v.parse::<LeaseId>().ok());
        let id =
            match self.kv.get(&registry).await?.as_ref().and_then(parse_id) {
                Some(id) => id,
                None => {
                    let ttl = std::time::Duration::from_millis((window_ms + bucket_ms) as u64);
                    let ours = self.kv.grant_lease(ttl).await?;
                    let created = self
                        .kv
                        .txn(
                            vec![Compare::Absent(registry.clone())],
                            vec![TxnOp::Put {
                                key: registry.clone(),
                                value: ours.to_string().into_bytes(),
                                lease: Some(ours),
                            }],
                            vec![TxnOp::Get { key: registry.clone() }],
                        )
                        .await?;
                    if created.succeeded {
                        ours
                    } else {
                        // Another node created this bucket's lease first: use it.
                        self.kv.revoke_lease(ours).await?;
                        created.gets.into_iter().flatten().next().as_ref().and_then(parse_id).ok_or_else(|| {
                            CoordError::Corrupt { key: registry.clone(), reason: "not a lease id".into() }
                        })?
                    }
                }
            };
        let mut cache = self.dedup_leases.lock().expect("lease cache lock");
        cache.retain(|(t, b), _| t != table || *b >= bucket - 1);
        cache.insert(cache_key, id);
        Ok(Some(id))
    }

    pub(crate) fn forget_dedup_lease(&self, table: &str, lease: LeaseId) {
        self.dedup_leases.lock().expect("lease cache lock").retain(|(t, _), id| t != table || *id != lease);
    }

    fn block_key(&self, table: &str, block_id: &str) -> String {
        format!("{}blocks/{table}/{block_id}", self.prefix)
    }

    /// Creates a table. Fails with `TableExists` if the name is taken.
    pub async fn create_table(&self, name: &str, doc: Vec<u8>) -> Result<TableRecord, CoordError> {
        let key = self.table_key(name);
        let result = self
            .kv
            .txn(vec![Compare::Absent(key.clone())], vec![TxnOp::Put { key, value: doc.clone(), lease: None }], vec![])
            .await?;
        if !result.succeeded {
            return Err(CoordError::TableExists(name.to_string()));
        }
        Ok(TableRecord { name: name.to_string(), doc, version: result.revision, created: result.revision })
    }

    pub async fn get_table(&self, name: &str) -> Result<Option<TableRecord>, CoordError> {
        Ok(self.kv.get(&self.table_key(name)).await?.map(|kv| self.table_record(kv)))
    }

    pub async fn list_tables(&self) -> Result<Vec<TableRecord>, CoordError> {
        let (kvs, _) = self.kv.range(&format!("{}tables/", self.prefix)).await?;
        Ok(kvs.into_iter().map(|kv| self.table_record(kv)).collect())
    }

    /// Replaces the schema record if it is still at `expected_version`. On a lost race returns
    /// `Ok(Err(current))` with the record as it is now (`None` if the table was dropped), so the
    /// caller can re-apply its change to the new schema and try again.
    pub async fn update_table(
        &self,
        name: &str,
        expected_version: Revision,
        doc: Vec<u8>,
    ) -> Result<Result<TableRecord, Option<TableRecord>>, CoordError> {
        let key = self.table_key(name);
        let result = self
            .kv
            .txn(
                vec![Compare::ModRevision(key.clone(), expected_version)],
                vec![TxnOp::Put { key: key.clone(), value: doc, lease: None }, TxnOp::Get { key: key.clone() }],
                vec![TxnOp::Get { key }],
            )
            .await?;
        let current = result.gets.into_iter().next().flatten().map(|kv| self.table_record(kv));
        if result.succeeded {
            current.map(Ok).ok_or_else(|| CoordError::Backend("updated table record vanished".into()))
        } else {
            Ok(Err(current))
        }
    }

    /// Drops a table with all its parts and block ids, in one transaction.
    pub async fn drop_table(&self, name: &str) -> Result<Revision, CoordError> {
        let key = self.table_key(name);
        let Some(existing) = self.kv.get(&key).await? else {
            return Err(CoordError::NoSuchTable(name.to_string()));
        };
        let result = self
            .kv
            .txn(
                vec![Compare::ModRevision(key.clone(), existing.mod_revision)],
                vec![
                    TxnOp::Delete { key },
                    TxnOp::DeletePrefix { prefix: format!("{}parts/{name}/", self.prefix) },
                    TxnOp::DeletePrefix { prefix: format!("{}blocks/{name}/", self.prefix) },
                    TxnOp::DeletePrefix { prefix: format!("{}blockorder/{name}/", self.prefix) },
                    TxnOp::DeletePrefix { prefix: format!("{}holders/{name}/", self.prefix) },
                    TxnOp::DeletePrefix { prefix: format!("{}asyncblocks/{name}/", self.prefix) },
                    TxnOp::Delete { key: format!("{}asyncseq/{name}", self.prefix) },
                ],
                vec![],
            )
            .await?;
        if !result.succeeded {
            // The table changed between the read and the drop: drop what is there now.
            return Box::pin(self.drop_table(name)).await;
        }
        Ok(result.revision)
    }

    /// Registers parts of `table`, each together with its block id, atomically per transaction:
    /// a part is registered only if its block id was never admitted, and only while the table
    /// is still at `table_version` (so no part lands under a schema that no longer exists).
    /// Parts whose block id exists come back as `Duplicate`; the others are registered.
    ///
    /// `holders` name where verified copies already are (the node that wrote the parts, and
    /// [`OBJECT_STORE_HOLDER`] when they were uploaded first): recorded in the same transaction. A block id admitted more than `dedup_window_ms` before `now_ms`
    /// has expired: it is admitted again (replacing the old record in the same transaction).
    pub async fn register_parts(
        &self,
        table: &str,
        table_version: Revision,
        parts: Vec<NewPart>,
        holders: &[&str],
        now_ms: i64,
        dedup_window_ms: i64,
    ) -> Result<Registration, CoordError> {
        let mut outcomes: Vec<Option<PartOutcome>> = vec![None; parts.len()];
        // Parts whose block id exists but has expired: the revision of the record they replace.
        let mut expired: HashMap<usize, Revision> = HashMap::new();
        let mut revision = 0;
        let indices: Vec<usize> = (0..parts.len()).collect();
        let mut lease = if parts.iter().any(|p| p.block_id.is_some()) {
            self.dedup_lease(table, now_ms, dedup_window_ms).await?
        } else {
            None
        };
        for chunk in indices.chunks(PARTS_PER_TXN) {
            let mut pending: Vec<usize> = chunk.to_vec();
            while !pending.is_empty() {
                let table_key = self.table_key(table);
                let mut compares = vec![Compare::ModRevision(table_key.clone(), table_version)];
                let mut success = Vec::new();
                let mut failure = vec![TxnOp::Get { key: table_key }];
                for &i in &pending {
                    let part = &parts[i];
                    success.push(TxnOp::Put {
                        key: self.part_key(table, &part.id),
                        value: part.manifest.clone(),
                        lease: None,
                    });
                    for holder in holders {
                        success.push(TxnOp::Put {
                            key: self.holder_key(table, &part.id, holder),
                            value: Vec::new(),
                            lease: None,
                        });
                    }
                    if let Some(block_id) = &part.block_id {
                        let key = self.block_key(table, block_id);
                        let record =
                            BlockRecord { part: part.id, partition: part.partition.clone(), created_at_ms: now_ms };
                        compares.push(match expired.get(&i) {
                            Some(&old) => Compare::ModRevision(key.clone(), old),
                            None => Compare::Absent(key.clone()),
                        });
                        success.push(TxnOp::Put { key: key.clone(), value: json(&record), lease });
                        success.push(TxnOp::Put {
                            key: self.block_order_key(table, now_ms, block_id),
                            value: block_id.as_bytes().to_vec(),
                            lease,
                        });
                        failure.push(TxnOp::Get { key });
                    }
                }
                let result = match self.kv.txn(compares, success, failure).await {
                    // The bucket's lease ended under us (a store restart, a clock jump): take a new one.
                    Err(CoordError::LeaseExpired(_)) if lease.is_some() => {
                        self.forget_dedup_lease(table, lease.expect("checked"));
                        lease = self.dedup_lease(table, now_ms, dedup_window_ms).await?;
                        continue;
                    }
                    other => other?,
                };
                if result.succeeded {
                    for &i in &pending {
                        outcomes[i] = Some(PartOutcome::Registered { revision: result.revision });
                    }
                    revision = revision.max(result.revision);
                    break;
                }
                let mut gets = result.gets.into_iter();
                match gets.next().flatten() {
                    None => return Err(CoordError::NoSuchTable(table.to_string())),
                    Some(kv) if kv.mod_revision != table_version => {
                        return Err(CoordError::TableChanged {
                            table: table.to_string(),
                            expected: table_version,
                            current: kv.mod_revision,
                        });
                    }
                    Some(_) => {}
                }
                let mut still_new = Vec::new();
                let mut progress = false;
                for &i in &pending {
                    if parts[i].block_id.is_none() {
                        still_new.push(i);
                        continue;
                    }
                    match gets.next().flatten() {
                        Some(kv) => {
                            let record: BlockRecord = parse(&kv)?;
                            if now_ms - record.created_at_ms > dedup_window_ms {
                                progress |= expired.insert(i, kv.mod_revision) != Some(kv.mod_revision);
                                still_new.push(i);
                                continue;
                            }
                            progress = true;
                            revision = revision.max(kv.create_revision);
                            outcomes[i] = Some(PartOutcome::Duplicate {
                                existing_part: record.part,
                                revision: kv.create_revision,
                            });
                        }
                        None => {
                            progress |= expired.remove(&i).is_some();
                            still_new.push(i);
                        }
                    }
                }
                if !progress {
                    return Err(CoordError::Backend(
                        "registration failed but no block id exists; the store is inconsistent".into(),
                    ));
                }
                pending = still_new;
            }
        }
        let outcomes = outcomes.into_iter().map(|o| o.expect("every part has an outcome")).collect();
        Ok(Registration { outcomes, revision })
    }

    /// The block record of an admitted block id, if any.
    pub async fn get_block(&self, table: &str, block_id: &str) -> Result<Option<(BlockRecord, Revision)>, CoordError> {
        match self.kv.get(&self.block_key(table, block_id)).await? {
            Some(kv) => Ok(Some((parse(&kv)?, kv.create_revision))),
            None => Ok(None),
        }
    }

    /// Forgets the block ids of `table` beyond the newest `keep`. Reads only what it deletes:
    /// the count comes from the store, and the oldest ids are the first keys of the
    /// admission-order index. (The time window needs no pass: ids hang on leases that end with
    /// the window, and admission checks the age anyway.) Returns how many were forgotten.
    pub async fn prune_blocks(&self, table: &str, keep: u64) -> Result<usize, CoordError> {
        let order_prefix = format!("{}blockorder/{table}/", self.prefix);
        let count = self.kv.count(&order_prefix).await?;
        if count <= keep {
            return Ok(0);
        }
        let oldest = self.kv.range_first(&order_prefix, (count - keep) as usize).await?;
        for chunk in oldest.chunks(50) {
            for entry in chunk {
                let block_id = String::from_utf8_lossy(&entry.value).to_string();
                let block_key = self.block_key(table, &block_id);
                // The block record goes only if it is still the admission this entry indexes
                // (written in the same transaction, so at the entry's create revision).
                self.kv
                    .txn(
                        vec![Compare::ModRevision(block_key.clone(), entry.create_revision)],
                        vec![TxnOp::Delete { key: block_key }, TxnOp::Delete { key: entry.key.clone() }],
                        vec![TxnOp::Delete { key: entry.key.clone() }],
                    )
                    .await?;
            }
        }
        Ok(oldest.len())
    }

    /// Every table and part at one revision.
    pub async fn snapshot(&self) -> Result<Snapshot, CoordError> {
        let (kvs, revision) = self.kv.range(&self.prefix).await?;
        let mut snapshot = Snapshot { revision, ..Default::default() };
        for kv in kvs {
            match self.decode(kv) {
                Some(ClusterEvent::TablePut(table)) => snapshot.tables.push(table),
                Some(ClusterEvent::PartAdded(part)) => snapshot.parts.push(part),
                Some(ClusterEvent::HolderAdded(holder)) => snapshot.holders.push(holder),
                Some(ClusterEvent::AsyncBlocksAdded(set)) => snapshot.async_blocks.push(set),
                Some(ClusterEvent::AsyncSequence { table, revision }) => {
                    snapshot.async_sequences.push((table, revision))
                }
                _ => {}
            }
        }
        Ok(snapshot)
    }

    /// Every change from revision `from` on, one batch per revision, in order. When `from`
    /// has been compacted the stream yields `CoordError::Compacted` and ends: take a new
    /// [`snapshot`](Self::snapshot) and watch from its revision + 1.
    pub async fn watch(
        &self,
        from: Revision,
    ) -> Result<BoxStream<'static, Result<EventBatch, CoordError>>, CoordError> {
        let stream = self.kv.watch(&self.prefix, from).await?;
        let this = self.clone();
        Ok(stream
            .map(move |item| match item? {
                WatchResponse::Events { revision, events } => {
                    let events = events
                        .into_iter()
                        .filter_map(|e| match e.kind {
                            WatchEventKind::Put => this.decode(e.kv),
                            WatchEventKind::Delete => this.decode_delete(&e.kv.key),
                        })
                        .collect();
                    Ok(EventBatch { revision, events })
                }
                WatchResponse::Compacted { compact_revision } => {
                    Err(CoordError::Compacted { requested: from, compacted: compact_revision })
                }
            })
            .boxed())
    }

    /// Replaces `sources` (each with the revision it was registered at) by one merged part, in
    /// one transaction that checks every source is still registered unchanged and, with
    /// `fence`, that the leadership `(role, revision)` still holds. The sources' holder records
    /// go with them; `holder` is recorded for the merged part. Returns the revision of the
    /// replacement, or None when a check failed (nothing changed).
    pub async fn replace_parts(
        &self,
        table: &str,
        sources: &[(PartId, Revision)],
        merged: &NewPart,
        holder: &str,
        fence: Option<(&str, Revision)>,
    ) -> Result<Option<Revision>, CoordError> {
        let (compares, mut success) = self.removal(table, sources, fence);
        success.push(TxnOp::Put { key: self.part_key(table, &merged.id), value: merged.manifest.clone(), lease: None });
        success.push(TxnOp::Put { key: self.holder_key(table, &merged.id, holder), value: Vec::new(), lease: None });
        let result = self.kv.txn(compares, success, vec![]).await?;
        Ok(result.succeeded.then_some(result.revision))
    }

    /// Removes parts whose rows have all passed the table's TTL, with their holder records, in
    /// one transaction under the same compares as [`Coordinator::replace_parts`]: each part is
    /// still registered as it was read, and the leader's key still holds `fence`. Returns the
    /// revision, or None when a compare failed (nothing changed). Their block ids stay until
    /// their own window ends, so a late retry of an expired insert is still a duplicate.
    pub async fn drop_expired_parts(
        &self,
        table: &str,
        parts: &[(PartId, Revision)],
        fence: Option<(&str, Revision)>,
    ) -> Result<Option<Revision>, CoordError> {
        let (compares, success) = self.removal(table, parts, fence);
        let result = self.kv.txn(compares, success, vec![]).await?;
        Ok(result.succeeded.then_some(result.revision))
    }

    /// The compares and deletes that take `parts` (as registered at their revisions) out of
    /// the table, fenced by a leadership.
    fn removal(
        &self,
        table: &str,
        parts: &[(PartId, Revision)],
        fence: Option<(&str, Revision)>,
    ) -> (Vec<Compare>, Vec<TxnOp>) {
        let mut compares = Vec::new();
        if let Some((role, revision)) = fence {
            compares.push(Compare::ModRevision(self.leader_key(role), revision));
        }
        let mut deletes = Vec::new();
        for (id, revision) in parts {
            compares.push(Compare::ModRevision(self.part_key(table, id), *revision));
            deletes.push(TxnOp::Delete { key: self.part_key(table, id) });
            deletes.push(TxnOp::DeletePrefix { prefix: format!("{}holders/{table}/{id}/", self.prefix) });
        }
        (compares, deletes)
    }

    /// Records that `node` holds a verified copy of a part. Idempotent. Refused (Ok(false))
    /// when the part is no longer registered, so no holder outlives its part.
    pub async fn add_holder(&self, table: &str, id: &PartId, node: &str) -> Result<bool, CoordError> {
        let Some(part) = self.kv.get(&self.part_key(table, id)).await? else { return Ok(false) };
        self.add_holder_at(table, id, part.mod_revision, node).await
    }

    /// [`Coordinator::add_holder`] for a caller that knows the revision the part was
    /// registered at (from the watch): one transaction, no read first. False when the part is
    /// no longer registered at that revision (merged away, dropped, registered again).
    pub async fn add_holder_at(
        &self,
        table: &str,
        id: &PartId,
        registered_at: Revision,
        node: &str,
    ) -> Result<bool, CoordError> {
        let result = self
            .kv
            .txn(
                vec![Compare::ModRevision(self.part_key(table, id), registered_at)],
                vec![TxnOp::Put { key: self.holder_key(table, id, node), value: Vec::new(), lease: None }],
                vec![],
            )
            .await?;
        Ok(result.succeeded)
    }

    /// Forgets that `node` holds a part (its copy was found corrupt or deleted). Ok if absent.
    pub async fn remove_holder(&self, table: &str, id: &PartId, node: &str) -> Result<(), CoordError> {
        self.kv.txn(vec![], vec![TxnOp::Delete { key: self.holder_key(table, id, node) }], vec![]).await?;
        Ok(())
    }

    /// The nodes recorded as holding a part, live or not.
    pub async fn part_holders(&self, table: &str, id: &PartId) -> Result<Vec<String>, CoordError> {
        let prefix = format!("{}holders/{table}/{id}/", self.prefix);
        let (kvs, _) = self.kv.range(&prefix).await?;
        Ok(kvs.into_iter().map(|kv| kv.key[prefix.len()..].to_string()).collect())
    }

    /// Raises the cluster's latest quorum-acknowledged revision to at least `revision`.
    pub async fn raise_quorum_revision(&self, revision: Revision) -> Result<(), CoordError> {
        let key = format!("{}quorum_revision", self.prefix);
        loop {
            let current = self.kv.get(&key).await?;
            let (value, compare) = match &current {
                Some(kv) => (parse_revision(kv)?, Compare::ModRevision(key.clone(), kv.mod_revision)),
                None => (0, Compare::Absent(key.clone())),
            };
            if value >= revision {
                return Ok(());
            }
            let put = TxnOp::Put { key: key.clone(), value: revision.to_string().into_bytes(), lease: None };
            if self.kv.txn(vec![compare], vec![put], vec![]).await?.succeeded {
                return Ok(());
            }
        }
    }

    /// The latest revision acknowledged with `insert_quorum` > 1 anywhere in the cluster.
    pub async fn quorum_revision(&self) -> Result<Revision, CoordError> {
        match self.kv.get(&format!("{}quorum_revision", self.prefix)).await? {
            Some(kv) => parse_revision(&kv),
            None => Ok(0),
        }
    }

    /// The store's current revision.
    pub async fn current_revision(&self) -> Result<Revision, CoordError> {
        self.kv.current_revision().await
    }

    /// Writes `node_id`'s sync marker (`sync/<node>`, read by nobody) and returns its revision.
    /// A watch of the prefix delivers every change made before it first, so a node whose
    /// watch has delivered that revision has seen everything written before the call.
    pub async fn write_sync_marker(&self, node_id: &str) -> Result<Revision, CoordError> {
        let key = format!("{}sync/{node_id}", self.prefix);
        Ok(self.kv.txn(vec![], vec![TxnOp::Put { key, value: Vec::new(), lease: None }], vec![]).await?.revision)
    }

    /// Announces a live node under a lease; the entry disappears when the lease ends.
    pub async fn announce_node(&self, node_id: &str, doc: Vec<u8>, lease: LeaseId) -> Result<(), CoordError> {
        let key = format!("{}nodes/{node_id}", self.prefix);
        self.kv.txn(vec![], vec![TxnOp::Put { key, value: doc, lease: Some(lease) }], vec![]).await?;
        Ok(())
    }

    pub async fn list_nodes(&self) -> Result<Vec<(String, Vec<u8>)>, CoordError> {
        let prefix = format!("{}nodes/", self.prefix);
        let (kvs, _) = self.kv.range(&prefix).await?;
        Ok(kvs.into_iter().map(|kv| (kv.key[prefix.len()..].to_string(), kv.value)).collect())
    }

    fn leader_key(&self, role: &str) -> String {
        format!("{}leaders/{role}", self.prefix)
    }

    /// Tries to become the one node that performs `role` (for example the object-store
    /// garbage collector): the key `leaders/<role>` is created attached to `lease`, so it
    /// disappears when the leader stops renewing. Returns the leadership's fencing revision
    /// when this node leads (newly or already), None when another node does.
    pub async fn acquire_leadership(
        &self,
        role: &str,
        node: &str,
        lease: LeaseId,
    ) -> Result<Option<Revision>, CoordError> {
        let key = self.leader_key(role);
        let result = self
            .kv
            .txn(
                vec![Compare::Absent(key.clone())],
                vec![TxnOp::Put { key: key.clone(), value: node.as_bytes().to_vec(), lease: Some(lease) }],
                vec![TxnOp::Get { key }],
            )
            .await?;
        if result.succeeded {
            return Ok(Some(result.revision));
        }
        Ok(result
            .gets
            .into_iter()
            .flatten()
            .next()
            .filter(|kv| kv.value == node.as_bytes() && kv.lease == lease)
            .map(|kv| kv.mod_revision))
    }

    /// Whether the leadership acquired at `fence` still holds: a leader checks this right
    /// before each action outside etcd, since it may have paused past its lease.
    pub async fn still_leader(&self, role: &str, fence: Revision) -> Result<bool, CoordError> {
        let key = self.leader_key(role);
        let result = self.kv.txn(vec![Compare::ModRevision(key, fence)], vec![], vec![]).await?;
        Ok(result.succeeded)
    }

    /// The node leading `role`, if any.
    pub async fn leader(&self, role: &str) -> Result<Option<String>, CoordError> {
        Ok(self.kv.get(&self.leader_key(role)).await?.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    fn table_record(&self, kv: KeyValue) -> TableRecord {
        let name = kv.key.rsplit('/').next().unwrap_or_default().to_string();
        TableRecord { name, doc: kv.value, version: kv.mod_revision, created: kv.create_revision }
    }

    fn decode(&self, kv: KeyValue) -> Option<ClusterEvent> {
        let rest = kv.key.strip_prefix(&self.prefix)?;
        let (kind, rest) = rest.split_once('/')?;
        match kind {
            "tables" => Some(ClusterEvent::TablePut(self.table_record(kv))),
            "parts" => {
                let (table, id) = rest.split_once('/')?;
                let id = part_id(&kv.key, id)?;
                Some(ClusterEvent::PartAdded(RegisteredPart {
                    table: table.to_string(),
                    id,
                    revision: kv.create_revision,
                    manifest: kv.value,
                }))
            }
            "nodes" => Some(ClusterEvent::NodeUp { node: rest.to_string(), doc: kv.value }),
            "holders" => Some(ClusterEvent::HolderAdded(holder(&kv.key, rest)?)),
            "asyncblocks" => {
                let rest = rest.to_string();
                Some(ClusterEvent::AsyncBlocksAdded(crate::async_block_ids::decode_set(kv, &rest)?))
            }
            "asyncseq" => Some(ClusterEvent::AsyncSequence { table: rest.to_string(), revision: kv.mod_revision }),
            _ => None,
        }
    }

    fn decode_delete(&self, key: &str) -> Option<ClusterEvent> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (kind, rest) = rest.split_once('/')?;
        match kind {
            "tables" => Some(ClusterEvent::TableDropped { name: rest.to_string() }),
            "parts" => {
                let (table, id) = rest.split_once('/')?;
                Some(ClusterEvent::PartRemoved { table: table.to_string(), id: part_id(key, id)? })
            }
            "nodes" => Some(ClusterEvent::NodeDown { node: rest.to_string() }),
            "holders" => Some(ClusterEvent::HolderRemoved(holder(key, rest)?)),
            "asyncblocks" => {
                let (table, key) = rest.split_once('/')?;
                Some(ClusterEvent::AsyncBlocksRemoved { table: table.to_string(), key: key.to_string() })
            }
            _ => None,
        }
    }
}

/// The part id of a key. Only tandem writes these keys, always with a valid id; a key written
/// by hand with anything else names no part, and is skipped (and reported) wherever it is read.
fn part_id(key: &str, text: &str) -> Option<PartId> {
    text.parse().inspect_err(|e| tracing::warn!(%key, error = %e, "ignoring a key that does not name a part")).ok()
}

/// `<table>/<part id>/<node>` of a holder key.
fn holder(key: &str, rest: &str) -> Option<Holder> {
    let (table, rest) = rest.split_once('/')?;
    let (id, node) = rest.split_once('/')?;
    Some(Holder { table: table.to_string(), part: part_id(key, id)?, node: node.to_string() })
}

fn parse_revision(kv: &KeyValue) -> Result<Revision, CoordError> {
    std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CoordError::Corrupt { key: kv.key.clone(), reason: "not a revision number".into() })
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("plain records always serialize")
}

fn parse<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T, CoordError> {
    serde_json::from_slice(&kv.value).map_err(|e| CoordError::Corrupt { key: kv.key.clone(), reason: e.to_string() })
}
