//! Registration of asynchronous insert flushes, and the block ids that make each buffered
//! insert count once.
//!
//! A flush holds many inserts. Giving each its own `blocks/` key (as a synchronous insert's
//! block has) would make the keys, and the compares of one transaction, grow with requests;
//! instead a flush writes one key holding the 16-byte block ids of all its inserts,
//! `asyncblocks/<table>/<created ms>-<first part id>`, on the table's dedup lease, and touches
//! `asyncseq/<table>`. Every node keeps the ids in memory from the watch; a flush filters its
//! inserts against them and registers only if `asyncseq/<table>` is still at the revision the
//! node had seen, which proves its view of the ids was complete. A flush that loses that race
//! catches up, drops the inserts the winner registered, and tries again.

use crate::CoordError;
use crate::async_block_ids::{AsyncBlockId, AsyncBlockSet, decode_set};
use crate::coordinator::{Coordinator, NewPart};
use crate::kv::{Compare, Revision, TxnOp};

/// One flush registers at most this many parts: each is a put and one per holder, next to the
/// table and sequence compares, within etcd's 128 operations per transaction.
pub const MAX_PARTS_PER_FLUSH: usize = 40;

/// One flush records at most this many block ids: 16 bytes each keeps its key well under
/// etcd's default request limit of 1.5 MiB.
pub const MAX_ASYNC_BLOCKS_PER_FLUSH: usize = 50_000;

/// What became of a flush's registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushOutcome {
    Registered {
        revision: Revision,
    },
    /// Another flush of the table was registered since `expected_sequence` (now at
    /// `sequence`), or the schema moved on (now `table_version`; `None`: the table is gone).
    /// Nothing was written: catch up to the larger revision, filter again, retry.
    Stale {
        sequence: Revision,
        table_version: Option<Revision>,
    },
}

impl Coordinator {
    fn async_sequence_key(&self, table: &str) -> String {
        format!("{}asyncseq/{table}", self.prefix())
    }

    fn async_blocks_key(&self, table: &str, key: &str) -> String {
        format!("{}asyncblocks/{table}/{key}", self.prefix())
    }

    /// Registers one flush of `table`: its parts (at most [`MAX_PARTS_PER_FLUSH`]) with
    /// `holders`, and the block ids of the inserts it holds (at most
    /// [`MAX_ASYNC_BLOCKS_PER_FLUSH`]), in one transaction that succeeds only while the table
    /// is at `table_version` and its flush sequence at `expected_sequence` (0: no flush yet).
    /// The parts may have been written under an older schema version of the same table (their
    /// manifests say which); the compare on the current version proves the table was neither
    /// dropped nor re-created since.
    #[allow(clippy::too_many_arguments)]
    pub async fn register_flush(
        &self,
        table: &str,
        table_version: Revision,
        expected_sequence: Revision,
        parts: &[NewPart],
        ids: &[AsyncBlockId],
        holders: &[&str],
        now_ms: i64,
        dedup_window_ms: i64,
    ) -> Result<FlushOutcome, CoordError> {
        if parts.is_empty() || parts.len() > MAX_PARTS_PER_FLUSH || ids.len() > MAX_ASYNC_BLOCKS_PER_FLUSH {
            return Err(CoordError::Backend(format!(
                "a flush registers 1 to {MAX_PARTS_PER_FLUSH} parts and at most {MAX_ASYNC_BLOCKS_PER_FLUSH} block ids, \
                 got {} and {}",
                parts.len(),
                ids.len()
            )));
        }
        let table_key = self.table_key(table);
        let sequence_key = self.async_sequence_key(table);
        let set_key = self.async_blocks_key(table, &format!("{now_ms:013}-{}", parts[0].id));
        let mut lease = self.dedup_lease(table, now_ms, dedup_window_ms).await?;
        loop {
            let compares = vec![
                Compare::ModRevision(table_key.clone(), table_version),
                if expected_sequence == 0 {
                    Compare::Absent(sequence_key.clone())
                } else {
                    Compare::ModRevision(sequence_key.clone(), expected_sequence)
                },
            ];
            let mut success = Vec::with_capacity(parts.len() * (1 + holders.len()) + 2);
            for part in parts {
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
            }
            let encoded: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
            success.push(TxnOp::Put { key: set_key.clone(), value: encoded, lease });
            success.push(TxnOp::Put { key: sequence_key.clone(), value: Vec::new(), lease: None });
            let failure = vec![TxnOp::Get { key: table_key.clone() }, TxnOp::Get { key: sequence_key.clone() }];
            let result = match self.backend().txn(compares, success, failure).await {
                // The bucket's lease ended under us (a store restart, a clock jump): take a new one.
                Err(CoordError::LeaseExpired(_)) if lease.is_some() => {
                    if let Some(expired) = lease {
                        self.forget_dedup_lease(table, expired);
                    }
                    lease = self.dedup_lease(table, now_ms, dedup_window_ms).await?;
                    continue;
                }
                other => other?,
            };
            if result.succeeded {
                return Ok(FlushOutcome::Registered { revision: result.revision });
            }
            let mut gets = result.gets.into_iter();
            let table_version = gets.next().flatten().map(|kv| kv.mod_revision);
            let sequence = gets.next().flatten().map_or(0, |kv| kv.mod_revision);
            return Ok(FlushOutcome::Stale { sequence, table_version });
        }
    }

    /// Forgets sets of asynchronous block ids of `table` (by their keys' last segment), beyond
    /// the table's count window. Sets already gone are skipped.
    pub async fn forget_async_blocks(&self, table: &str, keys: &[String]) -> Result<(), CoordError> {
        for chunk in keys.chunks(100) {
            let deletes = chunk.iter().map(|key| TxnOp::Delete { key: self.async_blocks_key(table, key) }).collect();
            self.backend().txn(Vec::new(), deletes, Vec::new()).await?;
        }
        Ok(())
    }

    /// Every remembered set of asynchronous block ids and every table's flush sequence, read
    /// at one revision (returned).
    pub async fn list_async_blocks(
        &self,
    ) -> Result<(Vec<AsyncBlockSet>, Vec<(String, Revision)>, Revision), CoordError> {
        let (blocks, revision) = self.backend().range(&format!("{}asyncblocks/", self.prefix())).await?;
        let (sequences, _) = self.backend().range(&format!("{}asyncseq/", self.prefix())).await?;
        let blocks_prefix = format!("{}asyncblocks/", self.prefix());
        let sets = blocks
            .into_iter()
            .filter_map(|kv| {
                let rest = kv.key.strip_prefix(&blocks_prefix)?.to_string();
                decode_set(kv, &rest)
            })
            .collect();
        let sequence_prefix = format!("{}asyncseq/", self.prefix());
        let sequences = sequences
            .into_iter()
            .filter_map(|kv| Some((kv.key.strip_prefix(&sequence_prefix)?.to_string(), kv.mod_revision)))
            .collect();
        Ok((sets, sequences, revision))
    }
}
