//! Asynchronous inserts: an insert is checked and decoded by the front end, split by partition
//! with one block id per partition, appended to the node's insert log (group commit), and
//! buffered per table; the flusher turns each table's buffer into one part per partition and
//! registers them with the inserts' block ids in one coordinator transaction
//! ([`tandem_coordinator::Coordinator::register_flush`]).
//!
//! Exactly once: every node keeps the block ids of recent flushes in memory ([`BlockIndex`](crate::insert_buffer::BlockIndex),
//! fed by the watch and a listing at start). A flush leaves out the inserts already admitted
//! and registers only if the table's flush sequence is where this node last saw it, which
//! proves nothing was admitted since that this node has not seen. When two nodes flush the same
//! insert at the same moment, one registers; the other finds the sequence moved, catches up,
//! leaves the insert out and registers the rest. Replays after a crash go through the same
//! filter. Writes go on while the coordinator is away: the log keeps the inserts (up to
//! `async_insert_max_log_bytes`) and flushes are retried until they register.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tandem_coordinator::{AsyncBlockId, FlushOutcome, MAX_PARTS_PER_FLUSH, NewPart, Revision};
use tandem_parts::arrow::array::{Array, RecordBatch, UInt32Array};
use tandem_parts::arrow::compute::{concat_batches, take_record_batch};
use tandem_parts::{PART_FORMAT_VERSION, PartId, PartManifest, PartMetadata, encode_part, split_by_partition};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::insert::{
    Acknowledged, InsertOptions, InsertSummary, QuorumSummary, QuorumTarget, dedup_window_ms, discard_unregistered,
};
use crate::insert_buffer::{AsyncBacklog, AsyncInserts, Entry, FlushAck, MAX_RETRY, Piece};
use crate::insert_log::LogError;
use crate::logged_insert::{LoggedInsert, LoggedPiece, SchemaCodecs, decode_logged};
use crate::replica::Replica;
use crate::schema::{Durability, TableDef};

/// How an asynchronous insert is buffered and acknowledged (its request's settings, over the
/// table's, over the server's).
#[derive(Clone, Debug)]
pub struct AsyncInsertOptions {
    /// `wait_for_async_insert`: answer once the flush holding the insert is registered (true),
    /// or once the insert is in the fsynced log (false).
    pub wait: bool,
    /// `async_insert_busy_timeout_ms`; None: the table's, then the server's.
    pub busy_timeout: Option<Duration>,
    /// `async_insert_max_data_size`; None: the table's, then the server's.
    pub max_data_size: Option<u64>,
    /// `wait_for_async_insert_timeout`: how long `wait` waits for the flush.
    pub wait_timeout: Duration,
}

/// Inserts holding up to this many bytes of rows are split, hashed and encoded on the
/// request's own task.
const INLINE_BYTES: usize = 64 * 1024;

/// How long a flush waits for this node to apply its own registration.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

impl Replica {
    /// Whether an insert into `def` is asynchronous: the request's `async_insert`, else the
    /// table's, else the server's.
    pub fn async_insert_enabled(&self, def: &TableDef, requested: Option<bool>) -> bool {
        requested.or(def.settings.async_insert).unwrap_or(self.config.settings.async_insert)
    }

    /// The inserts buffered on this node and not yet registered, per table.
    pub fn async_backlog(&self) -> Vec<AsyncBacklog> {
        self.async_inserts.backlog()
    }

    /// Bytes of this node's insert log on disk.
    pub fn async_log_bytes(&self) -> u64 {
        self.async_inserts.log_bytes()
    }

    /// Inserts `rows` (decoded under `def` at `version`) through the buffer: logged here, then
    /// registered by a flush. Blocks admitted before (by an earlier flush, within the window)
    /// are answered as duplicates and not logged.
    pub async fn insert_async(
        &self,
        def: Arc<TableDef>,
        version: Revision,
        rows: RecordBatch,
        options: &InsertOptions,
        buffering: &AsyncInsertOptions,
        quorum: QuorumTarget,
    ) -> Result<InsertSummary, Error> {
        // Borrowed until the definition moves into the buffer: each copy of the name is an
        // allocation, on every insert.
        let table = def.name.as_str();
        let Some(created) = self.catalog.table_created(table) else {
            return Err(Error::UnknownTable(table.to_string()));
        };
        // A schema version older than the table means the rows were decoded for an earlier table
        // of that name (dropped and created again meanwhile): their column ids mean nothing here.
        if version < created {
            return Err(Error::Conflict(format!(
                "table `{table}` was dropped and created again while the insert was being decoded; nothing was \
                 logged, retry it"
            )));
        }
        if def.settings.insert_durability == Durability::ObjectStore
            || options.durability == Some(Durability::ObjectStore)
        {
            return Err(Error::bad_request(
                "insert_durability=object_store waits for the object store before the ack, which a buffered insert \
                 cannot: send it with async_insert=0",
            ));
        }
        crate::insert::quorum_fits_local_replicas(&def, quorum.required())?;
        if quorum.required() > 1 && !buffering.wait {
            return Err(Error::bad_request(format!(
                "insert_quorum={} waits for other nodes to hold the insert's parts, which exist only once its flush \
                 is registered: send it with wait_for_async_insert=1; nothing was logged",
                quorum.required()
            )));
        }
        let inserts = &self.async_inserts;
        let codecs = inserts.codecs(table, rows.schema_ref())?;
        let rows_bytes = rows.get_array_memory_size();
        let (token, deduplicate) = (options.deduplication_token.as_deref(), options.deduplicate);
        // Splitting and hashing touch every row: off the runtime, unless the insert is so small
        // that the hop to a blocking thread costs more than the work. (Inline, nothing shared is
        // cloned: on two cores, each shared reference count a request touches moves a cache
        // line between them.)
        let pieces = if rows_bytes <= INLINE_BYTES {
            split_into_pieces(inserts, &codecs, &def, rows, token, deduplicate)?
        } else {
            let (inserts, codecs, def, token) =
                (inserts.clone(), codecs.clone(), def.clone(), token.map(str::to_string));
            tokio::task::spawn_blocking(move || {
                split_into_pieces(&inserts, &codecs, &def, rows, token.as_deref(), deduplicate)
            })
            .await
            .map_err(Error::internal)??
        };

        let now_ms = chrono::Utc::now().timestamp_millis();
        let window_ms = dedup_window_ms(&def);
        let mut summary = InsertSummary {
            table: table.to_string(),
            rows_written: 0,
            rows_deduplicated: 0,
            deduplicated: false,
            parts: Vec::new(),
            revision: self.catalog.applied_revision(),
            quorum: None,
            acknowledged: Acknowledged::Logged,
        };
        let mut new = Vec::new();
        for piece in pieces {
            match inserts.index().admitted(table, &piece.id, now_ms, window_ms) {
                Some(revision) => {
                    summary.rows_deduplicated += piece.rows.num_rows() as u64;
                    summary.revision = summary.revision.max(revision);
                }
                None => new.push(piece),
            }
        }
        if new.len() > MAX_PARTS_PER_FLUSH {
            return Err(Error::bad_request(format!(
                "this insert touches {} partitions; a buffered insert may touch at most {MAX_PARTS_PER_FLUSH} (one flush \
                 registers them in one transaction): send it with async_insert=0, or split it; nothing was logged",
                new.len()
            )));
        }
        if new.is_empty() {
            summary.deduplicated = summary.rows_deduplicated > 0;
            summary.acknowledged = Acknowledged::Registered;
            self.metrics.insert_deduplicated_blocks.inc();
            return Ok(summary);
        }

        // Refused before encoding anything for the log.
        let max_log_bytes = self.config.settings.async_insert_max_log_bytes;
        let buffered = inserts.buffered_bytes();
        if buffered > max_log_bytes {
            return Err(Error::Unavailable(format!(
                "the asynchronous insert buffer holds {buffered} bytes of rows not yet registered, over \
                 async_insert_max_log_bytes = {max_log_bytes}: inserts are coming faster than they can be registered \
                 (is the metadata store reachable?); nothing was logged, retry later"
            )));
        }
        let header = LoggedInsert {
            table: table.to_string(),
            created,
            version,
            pieces: new.iter().map(|p| LoggedPiece { partition: p.partition.clone(), id: p.id.0 }).collect(),
        };
        // The definition's file is written once per schema version; after that, encoding a
        // small insert is cheaper than a hop to a blocking thread.
        let payload = if rows_bytes <= INLINE_BYTES && inserts.has_definition(&def.name, created, version) {
            let batches: Vec<&RecordBatch> = new.iter().map(|p| &p.rows).collect();
            log_payload(inserts, &codecs, &def, &header, &batches)?
        } else {
            let (inserts, blocking_def) = (inserts.clone(), def.clone());
            let batches: Vec<RecordBatch> = new.iter().map(|p| p.rows.clone()).collect();
            tokio::task::spawn_blocking(move || log_payload(&inserts, &codecs, &blocking_def, &header, &batches))
                .await
                .map_err(Error::internal)??
        };
        let sequence = inserts.log(payload).await.map_err(|e| match e {
            LogError::Full { .. } => Error::Unavailable(format!(
                "{e}: inserts are coming faster than they can be registered (is the metadata store reachable?); \
                 nothing was logged, retry later"
            )),
            LogError::Io(_) => Error::Unavailable(format!("{e}; nothing was logged, send the insert to another node")),
        })?;
        let rows: u64 = new.iter().map(|p| p.rows.num_rows() as u64).sum();
        let bytes: u64 = new.iter().map(|p| p.rows.get_array_memory_size() as u64).sum();
        let (waiter, answer) = if buffering.wait { Some(oneshot::channel()).unzip() } else { (None, None) };
        let settings = &self.config.settings;
        let busy_timeout = buffering.busy_timeout.unwrap_or_else(|| {
            Duration::from_millis(
                def.settings.async_insert_busy_timeout_ms.unwrap_or(settings.async_insert_busy_timeout_ms),
            )
        });
        let max_bytes = buffering
            .max_data_size
            .or(def.settings.async_insert_max_data_size)
            .unwrap_or(settings.async_insert_max_data_size)
            .max(1);
        inserts.buffer(
            Entry {
                sequence,
                // Moved, not cloned: the request's share of the definition becomes the entry's.
                def,
                version,
                created,
                pieces: new,
                bytes,
                logged_at: Instant::now(),
                waiter,
                // The quorum wait starts once the flush is registered, at most the wait
                // timeout from now.
                quorum_until_ms: (quorum.required() > 1).then(|| {
                    let wait = buffering.wait_timeout.saturating_add(options.quorum_timeout);
                    chrono::Utc::now().timestamp_millis().saturating_add(wait.as_millis() as i64)
                }),
            },
            busy_timeout,
            max_bytes,
        );

        let Some(answer) = answer else {
            summary.rows_written = rows;
            return Ok(summary);
        };
        let ack = match tokio::time::timeout(buffering.wait_timeout, answer).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => {
                return Err(Error::Unavailable(
                    "the node stopped before the insert's flush was registered; the insert is in its log and will be \
                     registered when it restarts, and retrying it is safe (it will be deduplicated)"
                        .into(),
                ));
            }
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "the insert is in the insert log but its flush was not registered within {} ms \
                     (wait_for_async_insert_timeout); it will be, and retrying it is safe (it will be deduplicated)",
                    buffering.wait_timeout.as_millis()
                )));
            }
        };
        summary.acknowledged = Acknowledged::Registered;
        summary.rows_written = ack.rows_written;
        summary.rows_deduplicated += ack.rows_deduplicated;
        summary.deduplicated = ack.rows_written == 0;
        summary.revision = summary.revision.max(ack.revision);
        if quorum.required() > 1 && !ack.parts.is_empty() {
            let (reached, holders) =
                self.catalog.wait_holders(&ack.parts, quorum.required(), options.quorum_timeout).await;
            if !reached {
                return Err(Error::Timeout(format!(
                    "insert_quorum={} not reached within {} ms: its flush is registered at revision {} on {} node(s) \
                     ({}) and will keep replicating; retrying it is safe (it will be deduplicated)",
                    quorum.required(),
                    options.quorum_timeout.as_millis(),
                    ack.revision,
                    holders.len(),
                    holders.iter().cloned().collect::<Vec<_>>().join(", "),
                )));
            }
            if let Err(e) = self.coordinator.raise_quorum_revision(ack.revision).await {
                tracing::warn!(error = %e, "cannot record the quorum-acknowledged revision");
            }
            summary.quorum =
                Some(QuorumSummary { required: quorum.required(), holders: holders.into_iter().collect() });
        }
        Ok(summary)
    }
}

/// Replays the inserts the log kept, then flushes buffers as they fall due, until shutdown.
pub(crate) async fn run(node: Arc<Replica>, shutdown: CancellationToken) {
    let inserts = node.async_inserts.clone();
    replay(&node);
    let mut backoff = Duration::from_millis(100);
    while !inserts.index().is_listed() {
        match node.coordinator.list_async_blocks().await {
            Ok((sets, sequences, _)) => inserts.index().apply_listing(&sets, &sequences),
            Err(e) => {
                tracing::debug!(error = %e, "cannot list asynchronous insert block ids yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_RETRY);
            }
        }
    }
    loop {
        if node.catalog.is_caught_up() {
            for (table, entries) in inserts.take_due(Instant::now()) {
                match flush(&node, &table, entries).await {
                    Ok(()) => inserts.flushed_ok(&table),
                    Err((entries, e)) => {
                        tracing::warn!(%table, error = %e, inserts = entries.len(), "asynchronous insert flush failed; retrying");
                        inserts.requeue(&table, entries, &e);
                    }
                }
            }
            let backlog = inserts.backlog();
            node.metrics.async_insert_backlog_bytes.set(backlog.iter().map(|b| b.bytes as i64).sum());
            node.metrics.async_insert_log_bytes.set(inserts.log_bytes() as i64);
        }
        let next = if node.catalog.is_caught_up() {
            inserts.next_deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
        } else {
            Instant::now() + Duration::from_millis(50)
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {},
            _ = inserts.woken() => {},
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Room a buffered batch may hold beyond twice what its rows fill before it is copied tight.
const SPARE_ROOM_BYTES: usize = 1024;

/// Whether `batch`'s buffers hold much more room than its rows fill (or what they fill is not
/// known: a copy is then the safe side).
fn holds_spare_room(batch: &RecordBatch) -> bool {
    // What the rows fill is dearer to find (a copy of each column's description) than the
    // room a small insert's buffers hold.
    let held = batch.get_array_memory_size();
    if held <= SPARE_ROOM_BYTES {
        return false;
    }
    match batch.columns().iter().map(|c| c.to_data().get_slice_memory_size()).sum::<Result<usize, _>>() {
        Ok(filled) => held > filled.saturating_mul(2).saturating_add(SPARE_ROOM_BYTES),
        Err(_) => true,
    }
}

/// Buffers the inserts found in the log at start, to be flushed at once.
fn replay(node: &Replica) {
    let inserts = &node.async_inserts;
    let Some(recovery) = inserts.take_recovery() else { return };
    if recovery.inserts.is_empty() {
        return;
    }
    tracing::info!(inserts = recovery.inserts.len(), "replaying asynchronous inserts from the insert log");
    let mut definitions: HashMap<(String, Revision, Revision), Arc<TableDef>> = HashMap::new();
    for replayed in recovery.inserts {
        let decoded = decode_logged(&replayed.payload).and_then(|(header, batches)| {
            let key = (header.table.clone(), header.created, header.version);
            let def = match definitions.get(&key) {
                Some(def) => def.clone(),
                None => {
                    let def = Arc::new(inserts.load_definition(&header.table, header.created, header.version)?);
                    definitions.insert(key, def.clone());
                    def
                }
            };
            Ok((header, batches, def))
        });
        let (header, batches, def) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::error!(sequence = replayed.sequence, error = %e, "cannot read a logged insert; it is dropped");
                inserts.mark_flushed(vec![replayed.sequence]);
                continue;
            }
        };
        let pieces: Vec<Piece> = header
            .pieces
            .into_iter()
            .zip(batches)
            .map(|(piece, rows)| Piece { partition: piece.partition, id: AsyncBlockId(piece.id), rows })
            .collect();
        let bytes = pieces.iter().map(|p| p.rows.get_array_memory_size() as u64).sum();
        let entry = Entry {
            sequence: replayed.sequence,
            def,
            version: header.version,
            created: header.created,
            pieces,
            bytes,
            logged_at: Instant::now(),
            waiter: None,
            quorum_until_ms: None,
        };
        inserts.buffer(entry, Duration::ZERO, node.config.settings.async_insert_max_data_size.max(1));
    }
}

/// A part of one flush, encoded and stored, not yet registered.
struct EncodedPart {
    id: PartId,
    new_part: NewPart,
    rows: u64,
    bytes: bytes::Bytes,
}

/// Registers one flush of `table`. On a failure that may pass (the coordinator is away), hands
/// the entries back to be retried.
async fn flush(node: &Arc<Replica>, table: &str, mut entries: Vec<Entry>) -> Result<(), (Vec<Entry>, Error)> {
    let inserts = &node.async_inserts;
    // One transaction takes the parts of at most MAX_PARTS_PER_FLUSH partitions: the inserts
    // past that go back to the front of the buffer, for the next flush.
    let fits = {
        let mut partitions = HashSet::new();
        entries
            .iter()
            .take_while(|e| {
                partitions.extend(e.pieces.iter().map(|p| (e.version, p.partition.as_str())));
                partitions.len() <= MAX_PARTS_PER_FLUSH
            })
            .count()
            .max(1)
    };
    if fits < entries.len() {
        inserts.put_back(table, entries.split_off(fits));
    }
    let mut expected_sequence = inserts.index().sequence(table);
    for _attempt in 0..100 {
        let Some(state) = node.catalog.table(table) else {
            finish_gone(inserts, table, entries);
            return Ok(());
        };
        // Inserts into a table since dropped (and perhaps re-created) have nowhere to go.
        let (current, gone): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| e.created == state.created);
        finish_gone(inserts, table, gone);
        entries = current;
        if entries.is_empty() {
            return Ok(());
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let window_ms = dedup_window_ms(&state.def);
        // Which pieces are new: not admitted by an earlier flush, not earlier in this one.
        let mut seen = HashSet::new();
        let mut fresh: Vec<Vec<bool>> = Vec::with_capacity(entries.len());
        let mut duplicate_revision: Vec<Revision> = vec![0; entries.len()];
        for (i, entry) in entries.iter().enumerate() {
            let mut flags = Vec::with_capacity(entry.pieces.len());
            for piece in &entry.pieces {
                let admitted = inserts.index().admitted(table, &piece.id, now_ms, window_ms);
                if let Some(revision) = admitted {
                    duplicate_revision[i] = duplicate_revision[i].max(revision);
                }
                flags.push(admitted.is_none() && seen.insert(piece.id));
            }
            fresh.push(flags);
        }
        let ids: Vec<AsyncBlockId> = entries
            .iter()
            .zip(&fresh)
            .flat_map(|(e, flags)| e.pieces.iter().zip(flags).filter(|(_, f)| **f).map(|(p, _)| p.id))
            .collect();
        if ids.is_empty() {
            answer(inserts, entries, &fresh, &duplicate_revision, None, &HashMap::new());
            return Ok(());
        }
        let encoded = match encode(node, &entries, &fresh, now_ms).await {
            Ok(encoded) => encoded,
            Err(e) => return Err((entries, e)),
        };
        let part_of: HashMap<(Revision, String), PartId> =
            encoded.iter().map(|(key, part)| (key.clone(), part.id)).collect();
        let parts: Vec<&EncodedPart> = encoded.values().collect();
        let new_parts: Vec<NewPart> = parts.iter().map(|p| p.new_part.clone()).collect();
        let part_ids: Vec<PartId> = parts.iter().map(|p| p.id).collect();
        let holders = [node.config.node_id.as_str()];
        let outcome = node
            .coordinator
            .register_flush(table, state.version, expected_sequence, &new_parts, &ids, &holders, now_ms, window_ms)
            .await;
        match outcome {
            Ok(FlushOutcome::Registered { revision }) => {
                node.metrics.async_insert_flushes.inc();
                node.metrics.insert_parts.inc_by(parts.len() as u64);
                node.metrics.insert_rows.inc_by(parts.iter().map(|p| p.rows).sum());
                node.metrics.insert_bytes.inc_by(parts.iter().map(|p| p.bytes.len() as u64).sum());
                if !node.catalog.wait_applied(revision, APPLY_TIMEOUT).await {
                    tracing::warn!(%table, revision, "a flush is registered but not yet applied here");
                }
                answer(inserts, entries, &fresh, &duplicate_revision, Some(revision), &part_of);
                return Ok(());
            }
            Ok(FlushOutcome::Stale { sequence, table_version }) => {
                discard_unregistered(node, &part_ids).await;
                node.metrics.async_insert_flush_conflicts.inc();
                let Some(table_version) = table_version else {
                    finish_gone(inserts, table, entries);
                    return Ok(());
                };
                // Catch up with the flush (or schema change) that came first, then filter again.
                node.catalog.wait_applied(sequence.max(table_version), APPLY_TIMEOUT).await;
                expected_sequence = sequence;
            }
            Err(e) => {
                // An error here may come after the transaction took effect (a timeout while
                // etcd was frozen, answered when it resumed): the files stay, the orphan sweep
                // removes them if no registration names them, and the retry's filter finds
                // the inserts admitted if it did.
                return Err((entries, e.into()));
            }
        }
    }
    Err((entries, Error::Unavailable(format!("the flush of `{table}` kept losing races with other nodes' flushes"))))
}

/// The new rows of one flush for one (schema version, partition): one part.
struct FlushGroup {
    def: Arc<TableDef>,
    rows: Vec<RecordBatch>,
    /// The latest quorum deadline of the inserts whose rows it holds.
    quorum_until_ms: Option<i64>,
}

/// Sorts, encodes and stores one part per (schema version, partition) of the new pieces.
async fn encode(
    node: &Arc<Replica>,
    entries: &[Entry],
    fresh: &[Vec<bool>],
    now_ms: i64,
) -> Result<BTreeMap<(Revision, String), EncodedPart>, Error> {
    // Keyed by the pieces' own partition names: a flush holds thousands of pieces and a
    // handful of groups, whose names are copied once each below.
    let mut by_partition: BTreeMap<(Revision, &str), FlushGroup> = BTreeMap::new();
    for (entry, flags) in entries.iter().zip(fresh) {
        for (piece, _) in entry.pieces.iter().zip(flags).filter(|(_, f)| **f) {
            let group = by_partition.entry((entry.version, piece.partition.as_str())).or_insert_with(|| FlushGroup {
                def: entry.def.clone(),
                rows: Vec::new(),
                quorum_until_ms: None,
            });
            group.rows.push(piece.rows.clone());
            group.quorum_until_ms = group.quorum_until_ms.max(entry.quorum_until_ms);
        }
    }
    let groups: BTreeMap<(Revision, String), FlushGroup> = by_partition
        .into_iter()
        .map(|((version, partition), group)| ((version, partition.to_string()), group))
        .collect();
    let store = node.catalog.store().clone();
    let node_id = node.config.node_id.clone();
    let unique = node.async_inserts.next_unique();
    tokio::task::spawn_blocking(move || {
        let mut out = BTreeMap::new();
        for (index, ((version, partition), FlushGroup { def, rows: batches, quorum_until_ms })) in
            groups.into_iter().enumerate()
        {
            let schema = batches.first().map(|b| b.schema()).ok_or_else(|| Error::internal("empty group"))?;
            let rows = concat_batches(&schema, &batches).map_err(Error::internal)?;
            let origin = format!("async/{node_id}/{now_ms}/{unique}/{index}");
            let codec = def.settings.default_compression_codec;
            let metadata = PartMetadata { table: def.name.clone(), partition: partition.clone(), origin, codec };
            let part = encode_part(&rows, &def.order_by, &metadata)?;
            store.write(&part.id, &part.bytes)?;
            let manifest = PartManifest {
                format_version: PART_FORMAT_VERSION,
                table: def.name.clone(),
                partition: partition.clone(),
                rows: part.rows,
                bytes: part.bytes.len() as u64,
                schema_version: version,
                block_id: None,
                level: 0,
                sort_key: def.order_by.clone(),
                columns: part.columns,
                column_ids: def.column_ids(),
                node: Some(node_id.clone()),
                created_at_ms: now_ms,
                merged_from: Vec::new(),
                revision_range: None,
                ttl_filter: None,
                codec,
                quorum_until_ms,
            };
            let new_part =
                NewPart { id: part.id, partition: partition.clone(), block_id: None, manifest: manifest.to_json() };
            out.insert((version, partition), EncodedPart { id: part.id, new_part, rows: part.rows, bytes: part.bytes });
        }
        Ok(out)
    })
    .await
    .map_err(Error::internal)?
}

/// An insert's rows as pieces, one per partition, each with its block id (the content hash,
/// or with `token` the token's; a unique id without deduplication).
fn split_into_pieces(
    inserts: &AsyncInserts,
    codecs: &SchemaCodecs,
    def: &TableDef,
    rows: RecordBatch,
    token: Option<&str>,
    deduplicate: bool,
) -> Result<Vec<Piece>, Error> {
    let mut pieces = Vec::new();
    if rows.num_rows() == 0 {
        return Ok(pieces);
    }
    for (partition, block) in split_by_partition(&rows, &def.partition_by)? {
        let id = if deduplicate { codecs.block_id(&def.name, &partition, &block, token)? } else { inserts.unique_id() };
        // A decoded batch may hold its builders' spare capacity (kilobytes for a few rows): the
        // buffer keeps a tight copy, so its memory follows the rows it holds.
        let rows = if holds_spare_room(&block) {
            let indices = UInt32Array::from_iter_values(0..block.num_rows() as u32);
            take_record_batch(&block, &indices).map_err(Error::internal)?
        } else {
            block
        };
        pieces.push(Piece { partition, id, rows });
    }
    Ok(pieces)
}

/// The insert log's record of an insert: its header and rows, once the definition they were
/// decoded under is on disk.
fn log_payload(
    inserts: &AsyncInserts,
    codecs: &SchemaCodecs,
    def: &TableDef,
    header: &LoggedInsert,
    batches: &[impl std::borrow::Borrow<RecordBatch>],
) -> Result<Vec<u8>, Error> {
    inserts
        .ensure_definition(def, header.created, header.version)
        .map_err(|e| Error::Unavailable(format!("cannot write to the insert log: {e}; nothing was logged")))?;
    if batches.is_empty() {
        return Err(Error::internal("a logged insert has no rows"));
    }
    codecs.encode(header, batches)
}

/// Tells each entry what became of it and marks it flushed in the log.
fn answer(
    inserts: &AsyncInserts,
    entries: Vec<Entry>,
    fresh: &[Vec<bool>],
    duplicate_revision: &[Revision],
    registered: Option<Revision>,
    part_of: &HashMap<(Revision, String), PartId>,
) {
    let mut sequences = Vec::with_capacity(entries.len());
    for ((entry, flags), duplicate) in entries.into_iter().zip(fresh).zip(duplicate_revision) {
        sequences.push(entry.sequence);
        let Some(waiter) = entry.waiter else { continue };
        let mut ack = FlushAck { revision: *duplicate, parts: Vec::new(), rows_written: 0, rows_deduplicated: 0 };
        for (piece, fresh) in entry.pieces.iter().zip(flags) {
            let rows = piece.rows.num_rows() as u64;
            match (fresh, registered) {
                (true, Some(revision)) => {
                    ack.rows_written += rows;
                    ack.revision = ack.revision.max(revision);
                    if let Some(part) = part_of.get(&(entry.version, piece.partition.clone())) {
                        ack.parts.push(*part);
                    }
                }
                _ => {
                    // Admitted before, or the same insert earlier in this very flush.
                    ack.rows_deduplicated += rows;
                    ack.revision = ack.revision.max(registered.unwrap_or(0));
                }
            }
        }
        let _ = waiter.send(Ok(ack));
    }
    inserts.mark_flushed(sequences);
}

/// Answers the inserts of a table that no longer exists (as it was when they were logged).
fn finish_gone(inserts: &AsyncInserts, table: &str, entries: Vec<Entry>) {
    if entries.is_empty() {
        return;
    }
    tracing::warn!(%table, inserts = entries.len(), "dropping buffered inserts into a table that was dropped");
    let sequences = entries.iter().map(|e| e.sequence).collect();
    for entry in entries {
        if let Some(waiter) = entry.waiter {
            let _ = waiter.send(Err(Error::UnknownTable(table.to_string())));
        }
    }
    inserts.mark_flushed(sequences);
}

/// Forgets, cluster-wide, the sets of asynchronous block ids beyond each table's count window.
pub(crate) async fn prune(node: &Replica) {
    for (name, table) in node.catalog.snapshot() {
        let beyond = node.async_inserts.index().sets_beyond(&name, table.def.settings.async_dedup_window_blocks);
        if beyond.is_empty() {
            continue;
        }
        match node.coordinator.forget_async_blocks(&name, &beyond).await {
            Ok(()) => {
                tracing::debug!(table = %name, sets = beyond.len(), "forgot asynchronous insert block ids beyond the count window")
            }
            Err(e) => tracing::warn!(table = %name, error = %e, "cannot prune asynchronous insert block ids"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tandem_parts::arrow::array::{Float64Builder, Int64Array};
    use tandem_parts::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn a_batch_with_a_builders_spare_room_is_copied_tight_and_a_tight_one_is_kept() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let mut roomy = Float64Builder::new();
        (0..10).for_each(|i| roomy.append_value(f64::from(i)));
        let ids = Arc::new(Int64Array::from_iter_values(0..10));
        let batch = RecordBatch::try_new(schema.clone(), vec![ids.clone(), Arc::new(roomy.finish())]).expect("batch");
        assert!(holds_spare_room(&batch), "a default builder holds room for 1,024 values");

        let tight = take_record_batch(&batch, &UInt32Array::from_iter_values(0..10)).expect("taken");
        assert!(!holds_spare_room(&tight));
        let mut sized = Float64Builder::with_capacity(10);
        (0..10).for_each(|i| sized.append_value(f64::from(i)));
        let sized = RecordBatch::try_new(schema, vec![ids, Arc::new(sized.finish())]).expect("batch");
        assert!(!holds_spare_room(&sized), "a builder sized for its rows");
    }
}
