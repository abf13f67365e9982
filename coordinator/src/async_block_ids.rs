//! The ids of asynchronous inserts as the coordinator stores them: 16 bytes each, one key per
//! flush (`asyncblocks/<table>/<created ms>-<first part id>`), and how such a key decodes.

use tandem_ids::PartId;

use crate::kv::{KeyValue, Revision};

/// The id of one buffered insert's rows in one partition: the first 16 bytes of its block id
/// (the content hash, or the hash of its `insert_deduplication_token`). 128 bits keep the
/// chance of two distinct inserts colliding negligible at any window size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AsyncBlockId(pub [u8; 16]);

impl AsyncBlockId {
    /// The id of a block whose full hash is `hash`.
    pub fn from_hash(hash: &[u8; 32]) -> AsyncBlockId {
        let mut id = [0; 16];
        id.copy_from_slice(&hash[..16]);
        AsyncBlockId(id)
    }
}

/// The block ids one flush admitted, as every node learns them from the watch.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncBlockSet {
    pub table: String,
    /// The key's last segment: `<created ms, 13 digits>-<first part id>`, so keys sort by age.
    pub key: String,
    pub created_at_ms: i64,
    /// The flush's revision: when its inserts became visible.
    pub revision: Revision,
    pub ids: Vec<AsyncBlockId>,
}

/// Decodes `<table>/<created ms>-<part id>` and its value of 16-byte ids. A key written by
/// anything else is skipped with a warning.
pub(crate) fn decode_set(kv: KeyValue, rest: &str) -> Option<AsyncBlockSet> {
    let parsed = (|| {
        let (table, key) = rest.split_once('/')?;
        let (created, part) = key.split_once('-')?;
        let created_at_ms = created.parse::<i64>().ok()?;
        part.parse::<PartId>().ok()?;
        if !kv.value.len().is_multiple_of(16) {
            return None;
        }
        let ids = kv
            .value
            .chunks_exact(16)
            .map(|chunk| {
                let mut id = [0; 16];
                id.copy_from_slice(chunk);
                AsyncBlockId(id)
            })
            .collect();
        Some(AsyncBlockSet {
            table: table.to_string(),
            key: key.to_string(),
            created_at_ms,
            revision: kv.create_revision,
            ids,
        })
    })();
    if parsed.is_none() {
        tracing::warn!(key = %kv.key, "ignoring a key that is not a set of asynchronous insert block ids");
    }
    parsed
}
