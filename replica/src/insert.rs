//! The insert path inside the replica: split the rows per partition, compute block ids, write
//! the parts durably, register them with their block ids in one coordinator transaction, and
//! answer once this node has applied the registration (and, with `insert_quorum`, once enough
//! nodes hold the parts).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tandem_coordinator::{CoordError, NewPart, OBJECT_STORE_HOLDER, PartOutcome, Revision};
use tandem_parts::arrow::array::RecordBatch;
use tandem_parts::{
    PART_FORMAT_VERSION, PartId, PartManifest, PartMetadata, block_id, encode_part, split_by_partition,
};

use crate::bucket::Bucket;
use crate::config::NodeRole;
use crate::error::Error;
use crate::live_nodes::NodeInfo;
use crate::metrics::InsertStage;
use crate::replica::Replica;
use crate::schema::{Durability, TableDef};

/// How one insert is admitted and acknowledged (its request's settings).
#[derive(Clone, Debug)]
pub struct InsertOptions {
    /// `insert_deduplicate`: a block admitted before (same rows, or same token) is not stored again.
    pub deduplicate: bool,
    pub deduplication_token: Option<String>,
    /// How long to wait for `insert_quorum` holders.
    pub quorum_timeout: Duration,
    /// `insert_durability`; None takes the table's setting.
    pub durability: Option<Durability>,
}

/// How many nodes must hold an insert's parts before it is acknowledged, checked against the
/// live nodes by [`Replica::quorum_target`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumTarget {
    required: usize,
}

impl QuorumTarget {
    /// How many nodes must hold the insert's parts.
    pub fn required(&self) -> usize {
        self.required
    }
}

/// `insert_quorum`: how many nodes must hold the verified part before the ack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quorum {
    /// Local fsync + registration (0 and 1).
    #[default]
    One,
    Nodes(usize),
    /// A majority of the live nodes.
    Auto,
}

impl std::str::FromStr for Quorum {
    type Err = Error;

    fn from_str(value: &str) -> Result<Quorum, Error> {
        match value {
            "0" | "1" => Ok(Quorum::One),
            "auto" => Ok(Quorum::Auto),
            n => match n.parse::<usize>() {
                Ok(n) => Ok(Quorum::Nodes(n)),
                Err(_) => Err(Error::bad_request(format!(
                    "insert_quorum takes 1, a number of nodes, or `auto`, got `{value}`"
                ))),
            },
        }
    }
}

/// In the config file, as on the command line: `"1"`, a number of nodes, or `"auto"`.
impl<'de> serde::Deserialize<'de> for Quorum {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl tandem_settings::Setting for Quorum {
    type Flag = Quorum;

    fn from_flag(flag: Quorum) -> Quorum {
        flag
    }

    fn from_default(text: &str) -> Quorum {
        text.parse().unwrap_or_default()
    }
}

#[derive(Debug, Serialize)]
pub struct QuorumSummary {
    pub required: usize,
    /// The nodes holding every part of the insert when it was acknowledged.
    pub holders: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PartSummary {
    pub part: PartId,
    pub partition: String,
    pub rows: u64,
    pub deduplicated: bool,
    pub revision: Revision,
}

/// What an acknowledged insert is known to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Acknowledged {
    /// Registered in the coordinator (and, with `insert_quorum`, held by enough nodes).
    Registered,
    /// In this node's fsynced insert log; it is registered by a later flush.
    Logged,
}

/// What an insert answers, as JSON body and as headers.
#[derive(Debug, Serialize)]
pub struct InsertSummary {
    pub table: String,
    pub rows_written: u64,
    pub rows_deduplicated: u64,
    /// True when every block of the insert had been admitted before: nothing was stored.
    pub deduplicated: bool,
    pub parts: Vec<PartSummary>,
    /// Pass this as `after_revision` to a later read to see this insert on any node.
    pub revision: Revision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumSummary>,
    /// What the insert was when it was acknowledged.
    pub acknowledged: Acknowledged,
}

/// Makes every insert attempt's parts distinct, so identical rows inserted twice (without dedup,
/// or after the dedup window) make two parts.
static INSERT_SEQUENCE: AtomicU64 = AtomicU64::new(0);

const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

impl Replica {
    /// Refuses an insert on a query node (`--role query`), before anything is read or written.
    pub fn accepts_inserts(&self) -> Result<(), Error> {
        match self.config.settings.role {
            NodeRole::Storage => Ok(()),
            NodeRole::Query => Err(Error::Unavailable(format!(
                "node {} is a query node (--role query): it takes no inserts; send them to a storage node",
                self.config.node_id
            ))),
        }
    }

    /// How many holders an insert with `quorum` needs; refuses at once (before anything is
    /// written) when fewer nodes are live than the quorum asks for.
    pub async fn quorum_target(&self, quorum: Quorum) -> Result<QuorumTarget, Error> {
        if quorum == Quorum::One {
            return Ok(QuorumTarget { required: 1 });
        }
        let live: Vec<String> = if self.config.is_cluster() {
            let started = Instant::now();
            let live = self.live_nodes().await;
            self.metrics.insert_stage(InsertStage::LiveNodes, started);
            live.map_err(|e| {
                Error::Unavailable(format!("cannot count live nodes for insert_quorum: {e}; nothing was written"))
            })?
            .into_iter()
            .filter(NodeInfo::holds_parts)
            .map(|n| n.node_id)
            .collect()
        } else {
            vec![self.config.node_id.clone()]
        };
        let required = match quorum {
            Quorum::One => 1,
            Quorum::Auto => live.len() / 2 + 1,
            Quorum::Nodes(n) => n,
        };
        if required > live.len() {
            return Err(Error::Unavailable(format!(
                "insert_quorum={required} needs {required} live nodes but {} {} live ({}); nothing was written",
                live.len(),
                if live.len() == 1 { "is" } else { "are" },
                live.join(", ")
            )));
        }
        Ok(QuorumTarget { required })
    }

    /// Inserts `rows`, decoded under the table definition `def` at schema version
    /// `schema_version` (as this node had applied it). Answers once this node has applied the
    /// registration and `quorum` nodes hold the parts.
    ///
    /// [`Error::SchemaChanged`]: the schema changed before the parts were registered; nothing
    /// was registered, this node has caught up with the new schema, and the caller decodes
    /// its rows again under it and retries.
    pub async fn insert(
        &self,
        def: &Arc<TableDef>,
        schema_version: Revision,
        rows: RecordBatch,
        options: &InsertOptions,
        quorum: QuorumTarget,
    ) -> Result<InsertSummary, Error> {
        let required = quorum.required;
        quorum_fits_local_replicas(def, required)?;
        let quorum_until_ms = (required > 1)
            .then(|| chrono::Utc::now().timestamp_millis().saturating_add(options.quorum_timeout.as_millis() as i64));
        let mut summary = insert_once(self, def, schema_version, rows, options, quorum_until_ms).await?;
        if required > 1 && !summary.parts.is_empty() {
            let parts: Vec<PartId> = summary.parts.iter().map(|p| p.part).collect();
            let started = Instant::now();
            let (reached, holders) = self.catalog.wait_holders(&parts, required, options.quorum_timeout).await;
            self.metrics.insert_stage(InsertStage::Quorum, started);
            if !reached {
                return Err(Error::Timeout(format!(
                    "insert_quorum={required} not reached within {} ms: committed on {} of {required} nodes ({}); the \
                     insert is registered at revision {} and will keep replicating; retrying it is safe (it will be \
                     deduplicated)",
                    options.quorum_timeout.as_millis(),
                    holders.len(),
                    holders.iter().cloned().collect::<Vec<_>>().join(", "),
                    summary.revision,
                )));
            }
            if let Err(e) = self.coordinator.raise_quorum_revision(summary.revision).await {
                tracing::warn!(error = %e, "cannot record the quorum-acknowledged revision");
            }
            summary.quorum = Some(QuorumSummary { required, holders: holders.into_iter().collect() });
        }
        Ok(summary)
    }
}

/// `insert_quorum` counts nodes that keep the part on their disk: a table's `local_replicas`
/// is the most it can reach. Refused before anything is written.
pub(crate) fn quorum_fits_local_replicas(def: &TableDef, required: usize) -> Result<(), Error> {
    match def.settings.local_replicas {
        Some(keep) if required as u64 > keep => Err(Error::bad_request(format!(
            "insert_quorum={required} can never be reached: table `{}` keeps each part on local_replicas = {keep} \
             node(s) (the others read it from the bucket); nothing was written",
            def.name
        ))),
        _ => Ok(()),
    }
}

async fn insert_once(
    node: &Replica,
    def: &Arc<TableDef>,
    version: Revision,
    rows: RecordBatch,
    options: &InsertOptions,
    quorum_until_ms: Option<i64>,
) -> Result<InsertSummary, Error> {
    let table = def.name.as_str();
    // The partition split and the block hashes touch every row: off the runtime.
    let (split_def, token, deduplicate) = (def.clone(), options.deduplication_token.clone(), options.deduplicate);
    let started = Instant::now();
    let blocks = tokio::task::spawn_blocking(move || -> Result<Vec<_>, Error> {
        if rows.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let mut blocks = Vec::new();
        for (partition, block) in split_by_partition(&rows, &split_def.partition_by)? {
            let id =
                deduplicate.then(|| block_id(&split_def.name, &partition, &block, token.as_deref())).transpose()?;
            blocks.push((partition, block, id));
        }
        Ok(blocks)
    })
    .await
    .map_err(Error::internal)??;
    node.metrics.insert_stage(InsertStage::Split, started);
    let mut summary = InsertSummary {
        table: table.to_string(),
        rows_written: 0,
        rows_deduplicated: 0,
        deduplicated: false,
        parts: Vec::new(),
        revision: node.catalog.applied_revision(),
        quorum: None,
        acknowledged: Acknowledged::Registered,
    };
    if blocks.is_empty() {
        return Ok(summary);
    }

    apply_back_pressure(node, table, def, blocks.iter().map(|(partition, _, _)| partition.as_str())).await?;
    let durability = options.durability.unwrap_or(def.settings.insert_durability);
    if durability == Durability::ObjectStore && node.bucket.is_none() {
        return Err(Error::bad_request(
            "insert_durability=object_store needs an object store, and this node has none configured \
             (start it with --s3-bucket); nothing was written",
        ));
    }
    // With `insert_durability=object_store`, whether a block was admitted already is asked
    // while the blocks are encoded, so a retried block is not uploaded for nothing. Otherwise
    // the registration's compare on each block id is the only check: a new block (the common
    // case) costs no extra read, and a retried one an encode whose file is deleted.
    let check_first = durability == Durability::ObjectStore;
    let window_ms = dedup_window_ms(def);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let ids: Vec<Option<String>> = blocks.iter().map(|(_, _, id)| id.clone().filter(|_| check_first)).collect();
    let admitted = async {
        let mut admitted = Vec::with_capacity(ids.len());
        for id in &ids {
            admitted.push(match id {
                Some(id) => node
                    .coordinator
                    .get_block(table, id)
                    .await?
                    .filter(|(record, _)| now_ms - record.created_at_ms <= window_ms),
                None => None,
            });
        }
        Ok::<_, Error>(admitted)
    };
    let (admitted, encoded) = tokio::join!(admitted, encode_blocks(node, def, version, blocks, quorum_until_ms));
    let encoded = encoded?;
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            discard_unregistered(node, &encoded.iter().map(|block| block.id).collect::<Vec<_>>()).await;
            return Err(e);
        }
    };
    let mut pending = Vec::with_capacity(encoded.len());
    let mut retried = Vec::new();
    for (block, admitted) in encoded.into_iter().zip(admitted) {
        match admitted {
            Some((record, revision)) => {
                summary.rows_deduplicated += block.rows;
                summary.revision = summary.revision.max(revision);
                summary.parts.push(PartSummary {
                    part: record.part,
                    partition: block.part.partition,
                    rows: block.rows,
                    deduplicated: true,
                    revision,
                });
                retried.push(block.id);
            }
            None => pending.push(block),
        }
    }
    discard_unregistered(node, &retried).await;

    if let (Durability::ObjectStore, Some(bucket)) = (durability, &node.bucket) {
        // A deduplicated block's part may not be uploaded yet: make sure it is before the ack.
        for part in summary.parts.iter().filter(|p| p.deduplicated) {
            ensure_uploaded(node, bucket, table, &part.part).await?;
        }
    }
    if !pending.is_empty() {
        register(node, def, version, pending, durability, &mut summary).await?;
    }
    summary.deduplicated = summary.parts.iter().all(|p| p.deduplicated);
    node.metrics.insert_rows.inc_by(summary.rows_written);
    node.metrics.insert_deduplicated_blocks.inc_by(summary.parts.iter().filter(|p| p.deduplicated).count() as u64);

    let started = Instant::now();
    let applied = node.catalog.wait_applied(summary.revision, APPLY_TIMEOUT).await;
    node.metrics.insert_stage(InsertStage::Apply, started);
    if !applied {
        return Err(Error::Timeout(format!(
            "the insert is registered at revision {} but this node has not applied it within {}s; it will appear shortly, and retrying the insert is safe",
            summary.revision,
            APPLY_TIMEOUT.as_secs()
        )));
    }
    Ok(summary)
}

/// A block encoded and written to the local store, not yet registered.
struct EncodedBlock {
    id: PartId,
    part: NewPart,
    rows: u64,
    bytes: Bytes,
}

/// Sorts, encodes and writes (with fsync) each block as a part, on a blocking thread.
async fn encode_blocks(
    node: &Replica,
    def: &TableDef,
    version: Revision,
    blocks: Vec<(String, RecordBatch, Option<String>)>,
    quorum_until_ms: Option<i64>,
) -> Result<Vec<EncodedBlock>, Error> {
    let table = def.name.clone();
    let sort_key = def.order_by.clone();
    let store = node.catalog.store().clone();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let sequence = INSERT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let node_id = node.config.node_id.clone();
    let column_ids = def.column_ids();
    let codec = def.settings.default_compression_codec;
    // Encoding and fsync block: off the async runtime.
    let started = Instant::now();
    let encoded = tokio::task::spawn_blocking(move || -> Result<Vec<EncodedBlock>, Error> {
        let mut out = Vec::new();
        for (index, (partition, block, block_id)) in blocks.into_iter().enumerate() {
            // Unique per insert attempt: a block admitted again after its dedup window expired
            // must become a new part, not the old part's id registered a second time.
            let unique = format!("{node_id}/{now_ms}/{sequence}/{index}");
            let origin = match &block_id {
                Some(block) => format!("{block}/{unique}"),
                None => unique,
            };
            let metadata = PartMetadata { table: table.clone(), partition: partition.clone(), origin, codec };
            let part = encode_part(&block, &sort_key, &metadata)?;
            store.write(&part.id, &part.bytes)?;
            let manifest = PartManifest {
                format_version: PART_FORMAT_VERSION,
                table: table.clone(),
                partition: partition.clone(),
                rows: part.rows,
                bytes: part.bytes.len() as u64,
                schema_version: version,
                block_id: block_id.clone(),
                level: 0,
                sort_key: sort_key.clone(),
                columns: part.columns,
                column_ids: column_ids.clone(),
                node: Some(node_id.clone()),
                created_at_ms: now_ms,
                merged_from: Vec::new(),
                revision_range: None,
                ttl_filter: None,
                codec,
                quorum_until_ms,
            };
            out.push(EncodedBlock {
                id: part.id,
                part: NewPart { id: part.id, partition, block_id, manifest: manifest.to_json() },
                rows: part.rows,
                bytes: part.bytes,
            });
        }
        Ok(out)
    })
    .await
    .map_err(Error::internal)??;
    node.metrics.insert_stage(InsertStage::Encode, started);
    Ok(encoded)
}

/// Registers encoded blocks in one coordinator transaction and records the outcome of each in
/// `summary` (a block admitted meanwhile by another insert: its file is deleted).
async fn register(
    node: &Replica,
    def: &TableDef,
    version: Revision,
    encoded: Vec<EncodedBlock>,
    durability: Durability,
    summary: &mut InsertSummary,
) -> Result<(), Error> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut holders = vec![node.config.node_id.as_str()];
    if let (Durability::ObjectStore, Some(bucket)) = (durability, &node.bucket) {
        // Uploaded before registering: once the part is visible anywhere, its object exists.
        let uploads = encoded.iter().map(|EncodedBlock { id, bytes, .. }| async move {
            let store = node.catalog.store();
            bucket.upload(&node.metrics, store, &def.name, id, Some(bytes.clone())).await.map_err(|e| {
                Error::Unavailable(format!(
                    "insert_durability=object_store: the object store ({}) did not take part {id}: {e}; \
                     nothing was registered, retry when it is reachable",
                    bucket.mirror.description()
                ))
            })
        });
        let results = futures::future::join_all(uploads).await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            let parts: Vec<PartId> = encoded.iter().map(|block| block.id).collect();
            discard_unregistered(node, &parts).await;
            return Err(e);
        }
        holders.push(OBJECT_STORE_HOLDER);
    }
    let sizes: HashMap<PartId, u64> = encoded.iter().map(|block| (block.id, block.bytes.len() as u64)).collect();
    let ids: Vec<PartId> = encoded.iter().map(|block| block.id).collect();
    let (new_parts, rows): (Vec<NewPart>, Vec<u64>) = encoded.into_iter().map(|block| (block.part, block.rows)).unzip();
    let started = Instant::now();
    let registration = node
        .coordinator
        .register_parts(&def.name, version, new_parts.clone(), &holders, now_ms, dedup_window_ms(def))
        .await;
    node.metrics.insert_stage(InsertStage::Register, started);
    let registration = match registration {
        Ok(r) => r,
        Err(e) => {
            // Only a definite refusal allows deleting the files: after a timeout the parts may
            // be registered after all, and the orphan sweep removes them if they are not.
            if matches!(e, CoordError::TableChanged { .. } | CoordError::NoSuchTable(_)) {
                discard_unregistered(node, &ids).await;
            }
            // The retry reads the schema from this node's catalog: let it catch up with the
            // version that beat us first, or the retry would fail the same way.
            if let CoordError::TableChanged { current, .. } = &e {
                node.catalog.wait_applied(*current, APPLY_TIMEOUT).await;
            }
            return Err(match e {
                CoordError::TableChanged { .. } => Error::SchemaChanged { table: def.name.clone() },
                other => other.into(),
            });
        }
    };
    let mut orphans = Vec::new();
    // The blocks found deduplicated before this registration were checked by the caller.
    let registered_from = summary.parts.len();
    for (((id, part), rows), outcome) in ids.into_iter().zip(new_parts).zip(rows).zip(registration.outcomes) {
        match outcome {
            PartOutcome::Registered { revision } => {
                let bytes = sizes.get(&id).copied().unwrap_or(0);
                node.metrics.insert_parts.inc();
                node.metrics.insert_bytes.inc_by(bytes);
                summary.rows_written += rows;
                summary.parts.push(PartSummary {
                    part: id,
                    partition: part.partition,
                    rows,
                    deduplicated: false,
                    revision,
                });
            }
            PartOutcome::Duplicate { existing_part, revision } => {
                summary.rows_deduplicated += rows;
                if existing_part != id {
                    orphans.push(id);
                }
                summary.parts.push(PartSummary {
                    part: existing_part,
                    partition: part.partition,
                    rows,
                    deduplicated: true,
                    revision,
                });
            }
        }
    }
    summary.revision = summary.revision.max(registration.revision);
    discard_unregistered(node, &orphans).await;
    if let Some(bucket) = &node.bucket {
        if durability == Durability::ObjectStore {
            for part in summary.parts[registered_from..].iter().filter(|p| p.deduplicated) {
                ensure_uploaded(node, bucket, &def.name, &part.part).await?;
            }
        } else {
            bucket.wake_uploader();
        }
    }
    Ok(())
}

/// For an insert that asks for object-store durability but was deduplicated: makes sure the
/// existing part's object exists, uploading this node's copy if it has one.
async fn ensure_uploaded(node: &Replica, bucket: &Bucket, table: &str, id: &PartId) -> Result<(), Error> {
    if node.catalog.in_object_store(id) {
        return Ok(());
    }
    let unavailable = |e: String| {
        Error::Unavailable(format!(
            "insert_durability=object_store: the block was already inserted as part {id}, which is not confirmed \
             in the object store ({}): {e}; retry when it is reachable (the retry is deduplicated)",
            bucket.mirror.description()
        ))
    };
    let exists = bucket.mirror.exists(table, id).await;
    bucket.record(&node.metrics, &exists);
    if !exists.map_err(|e| unavailable(e.to_string()))? {
        if !node.catalog.store().contains(id) {
            return Err(unavailable("this node does not have its file yet".to_string()));
        }
        bucket
            .upload(&node.metrics, node.catalog.store(), table, id, None)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
    }
    if let Err(e) = node.coordinator.add_holder(table, id, OBJECT_STORE_HOLDER).await {
        tracing::warn!(part = %id, error = %e, "cannot record the object-store copy of a part");
    }
    Ok(())
}

/// Slows an insert down, or refuses it, when a partition it writes to has many active parts
/// (merges are behind inserts): a delay growing linearly from nothing at
/// `parts_to_delay_insert` to 1 s just below `parts_to_throw_insert`, then a 429 that names
/// the table, the partition and the count.
async fn apply_back_pressure<'a>(
    node: &Replica,
    table: &str,
    def: &TableDef,
    partitions: impl Iterator<Item = &'a str>,
) -> Result<(), Error> {
    let Some(state) = node.catalog.table(table) else { return Ok(()) };
    let (delay_at, throw_at) = (def.settings.parts_to_delay_insert, def.settings.parts_to_throw_insert);
    let mut worst: Option<(&str, u64)> = None;
    for partition in partitions {
        let count = state.parts.values().filter(|p| p.manifest.partition == partition).count() as u64;
        if worst.is_none_or(|(_, c)| count > c) {
            worst = Some((partition, count));
        }
    }
    let Some((partition, count)) = worst else { return Ok(()) };
    if count >= throw_at {
        node.metrics.insert_rejected_too_many_parts.inc();
        return Err(Error::TooManyParts(format!(
            "table `{table}` partition `{partition}` has {count} active parts (parts_to_throw_insert = {throw_at}): \
             merges are behind inserts; nothing was written. Retry later, send fewer and larger inserts, or raise \
             the limit with ALTER TABLE {table} MODIFY SETTING parts_to_throw_insert = N"
        )));
    }
    if count >= delay_at {
        let span = throw_at.saturating_sub(delay_at).max(1) as f64;
        let delay = Duration::from_secs_f64(((count - delay_at + 1) as f64 / span).min(1.0));
        node.metrics.insert_delayed.inc();
        tracing::debug!(%table, %partition, count, delay_ms = delay.as_millis() as u64, "slowing an insert down: many active parts");
        tokio::time::sleep(delay).await;
    }
    Ok(())
}

/// A table's dedup window in milliseconds (block ids older than this are forgotten).
pub(crate) fn dedup_window_ms(def: &TableDef) -> i64 {
    i64::try_from(def.settings.dedup_window_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Deletes files written for parts that did not get registered (a lost dedup race, or a
/// failed registration). A file that some active part uses is kept.
pub(crate) async fn discard_unregistered(node: &Replica, parts: &[PartId]) {
    for id in parts {
        let in_use = node.catalog.snapshot().values().any(|t| t.parts.contains_key(id));
        if !in_use && let Err(e) = node.catalog.store().remove(id) {
            tracing::warn!(part = %id, error = %e, "cannot delete the file of an unregistered part");
        }
    }
}
