use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the part file layout and of this manifest. Readers accept every version up to
/// their own; new manifest fields carry serde defaults so older manifests still parse.
pub const PART_FORMAT_VERSION: u32 = 1;

/// Minimum, maximum and null count of one column of a part, used to skip parts in queries.
/// Values are JSON scalars: integers and timestamps (in the column's unit) as numbers,
/// strings as strings, booleans as booleans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Value>,
    pub null_count: u64,
}

/// The small description of a part that the coordinator stores next to its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartManifest {
    pub format_version: u32,
    pub table: String,
    /// Partition id ("202401" for month partitioning, "20240131" for day, "all" for none).
    pub partition: String,
    pub rows: u64,
    pub bytes: u64,
    /// Version of the table schema the part was written under (the coordinator's revision of
    /// the schema record).
    pub schema_version: i64,
    /// The insert block this part came from; `None` when deduplication was off.
    #[serde(default)]
    pub block_id: Option<String>,
    /// Merge level: 0 for a part written by an insert.
    #[serde(default)]
    pub level: u32,
    #[serde(default)]
    pub sort_key: Vec<String>,
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnStats>,
    /// Which table column (by its stable id) each Parquet column of the part holds. Empty for
    /// parts written before column ids existed: their columns match the table's by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub column_ids: BTreeMap<String, u32>,
    /// The node that wrote the part: the first place replicas fetch it from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Wall-clock time of creation, milliseconds since the epoch (informational only: the
    /// coordinator's revision orders parts).
    #[serde(default)]
    pub created_at_ms: i64,
    /// For a merged part: the parts it replaces (ids, sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<crate::PartId>,
    /// For a merged part: the lowest and highest registration revision of the rows it holds
    /// (a part written by an insert covers only its own revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_range: Option<(i64, i64)>,
    /// For a merged part: the rows its merge left out because the table's TTL had passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_filter: Option<crate::TtlFilter>,
    /// How the part's columns are compressed: what a replica rebuilding a merge writes with.
    /// Manifests from before codecs were chosen mean zstd level 1.
    #[serde(default = "codec_before_codecs")]
    pub codec: crate::Codec,
    /// Until when (milliseconds since the epoch) an `insert_quorum` may be waiting for nodes
    /// to hold this part: no node evicts its copy before then. For a merged part, the latest
    /// of its sources'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_until_ms: Option<i64>,
}

fn codec_before_codecs() -> crate::Codec {
    crate::Codec::BEFORE_CODECS
}

impl PartManifest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest of plain fields always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;

    #[test]
    fn a_manifest_from_before_codecs_means_zstd_and_new_ones_keep_theirs() {
        let old = br#"{"format_version":1,"table":"t","partition":"all","rows":1,"bytes":10,"schema_version":3}"#;
        let mut manifest = PartManifest::from_json(old).unwrap();
        assert_eq!(manifest.codec, Codec::Zstd(1));
        manifest.codec = Codec::Lz4;
        assert_eq!(PartManifest::from_json(&manifest.to_json()).unwrap().codec, Codec::Lz4);
    }
}
