//! Merges: which parts to combine (size-tiered selection within one partition), and the merged
//! part itself (the sources' rows, sorted again, written as one new part).
//!
//! Selection is a pure function of the active parts, so every node that runs it on the same
//! set chooses the same merge; the merged bytes are a pure function of the sources, so a replica
//! can merge locally and compare the hash instead of fetching.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, concat, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Int64Type};
use serde::{Deserialize, Serialize};

use crate::encode::{encode_sorted_part, key_rows};
use crate::{Codec, EncodedPart, PartError, PartId, PartMetadata, encode_part};

/// Rows a merge leaves out because a table's TTL has passed for them: those whose `column`
/// (a Date, DateTime or DateTime64 column of the part, by its Parquet name) holds a value
/// below `before`, in the column's own unit (days for Date, its time unit otherwise). NULL
/// never expires. Recorded in the merged part's manifest, so a replica rebuilding the merge
/// drops the same rows and gets the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlFilter {
    pub column: String,
    pub before: i64,
}

impl TtlFilter {
    /// The rows of `batch` the TTL keeps.
    fn keep(&self, batch: &RecordBatch) -> Result<RecordBatch, PartError> {
        let Some(values) = batch.column_by_name(&self.column) else {
            return Err(PartError::MissingColumn { column: self.column.clone() });
        };
        let values = cast(values, &DataType::Int64)?;
        let values = values.as_primitive::<Int64Type>();
        let keep: BooleanArray =
            (0..values.len()).map(|i| Some(values.is_null(i) || values.value(i) >= self.before)).collect();
        Ok(filter_record_batch(batch, &keep)?)
    }
}

/// What the selector needs to know of an active part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeCandidate {
    pub id: PartId,
    /// The merge group: only parts of one group are merged together. The partition, and
    /// whatever else must match (the node adds the column layout, so parts written under
    /// different schemas are not concatenated).
    pub partition: String,
    pub bytes: u64,
    pub level: u32,
}

/// Size-tiered merge policy, in the spirit of ClickHouse's merge selector: combine parts of
/// similar size so each row is rewritten about log(n) times while the part count stays bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergePolicy {
    /// Fewest parts a merge combines.
    pub min_parts: usize,
    /// Most parts a merge combines.
    pub max_parts: usize,
    /// Parts of one merge differ in size by at most this factor.
    pub size_ratio: u64,
    /// Parts at least this large are never merged again.
    pub max_part_bytes: u64,
}

impl Default for MergePolicy {
    fn default() -> Self {
        MergePolicy { min_parts: 4, max_parts: 16, size_ratio: 4, max_part_bytes: 4 << 30 }
    }
}

/// The merge to run next, if any: within one partition, the run of at least `min_parts` parts
/// of similar size (sorted by size) with the smallest total, preferring the partition with the
/// most parts. Deterministic: ties break on partition and part ids.
pub fn select_merge(parts: &[MergeCandidate], policy: &MergePolicy) -> Option<Vec<PartId>> {
    let mut partitions: Vec<&str> = parts.iter().map(|p| p.partition.as_str()).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let mut best: Option<(usize, u64, Vec<PartId>)> = None;
    for partition in partitions {
        let mut sizes: Vec<&MergeCandidate> =
            parts.iter().filter(|p| p.partition == partition && p.bytes < policy.max_part_bytes).collect();
        sizes.sort_by_key(|p| (p.bytes, p.id));
        let count = parts.iter().filter(|p| p.partition == partition).count();
        for start in 0..sizes.len() {
            let smallest = sizes[start].bytes.max(1);
            let run: Vec<&MergeCandidate> = sizes[start..]
                .iter()
                .take(policy.max_parts)
                .take_while(|p| p.bytes <= smallest.saturating_mul(policy.size_ratio))
                .copied()
                .collect();
            if run.len() < policy.min_parts {
                continue;
            }
            let total: u64 = run.iter().map(|p| p.bytes).sum();
            let better = match &best {
                None => true,
                Some((best_count, best_total, _)) => {
                    (count, std::cmp::Reverse(total)) > (*best_count, std::cmp::Reverse(*best_total))
                }
            };
            if better {
                let mut ids: Vec<PartId> = run.iter().map(|p| p.id).collect();
                ids.sort();
                best = Some((count, total, ids));
            }
            break;
        }
    }
    best.map(|(_, _, ids)| ids)
}

/// A part to merge: its id and its rows, in its sort-key order.
pub type MergeSource = (PartId, Vec<RecordBatch>);

/// The merged part of `sources` (each sorted by `sort_key`, as every part is; their rows
/// sorted together), without the rows `ttl` expires, written with `codec`. The origin names the
/// sources and the TTL filter, so the same merge with the same codec gives the same bytes
/// anywhere. None when the TTL expires every row.
///
/// When the sources do not overlap (time-ordered inserts
/// into a table ordered by time or by an increasing id: every merge of such a table), their
/// rows are concatenated in key order and not sorted again; the bytes are the same as the sort
/// gives, since no key is equal across sources.
pub fn merge_parts(
    sources: &[MergeSource],
    sort_key: &[String],
    table: &str,
    partition: &str,
    ttl: Option<&TtlFilter>,
    codec: Codec,
) -> Result<Option<EncodedPart>, PartError> {
    let mut ordered: Vec<&MergeSource> = sources.iter().collect();
    ordered.sort_by_key(|(id, _)| *id);
    let mut origin = ordered.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>().join("+");
    let in_key_order = in_key_order(&ordered, sort_key)?;
    let concatenated = in_key_order.as_ref().unwrap_or(&ordered);
    let batches: Vec<RecordBatch> = concatenated.iter().flat_map(|(_, batches)| batches.iter().cloned()).collect();
    let Some(first) = batches.first() else {
        return Err(PartError::MissingColumn { column: "<no rows to merge>".into() });
    };
    let mut merged = concat_batches(&first.schema(), &batches)?;
    if let Some(ttl) = ttl {
        merged = ttl.keep(&merged)?;
        origin.push_str(&format!(" ttl:{}<{}", ttl.column, ttl.before));
    }
    if merged.num_rows() == 0 {
        return Ok(None);
    }
    let metadata =
        PartMetadata { table: table.into(), partition: partition.into(), origin: format!("merge:{origin}"), codec };
    match in_key_order {
        Some(_) => encode_sorted_part(&merged, sort_key, &metadata),
        None => encode_part(&merged, sort_key, &metadata),
    }
    .map(Some)
}

/// The sources with rows, ordered by their first key, when each one's last key is strictly
/// below the next one's first: then their concatenation is sorted. Only the first and last row
/// of each source are compared. None when two sources overlap or share a key (the stable sort
/// orders equal keys by source, which a concatenation in key order would not), without a sort
/// key, or without rows.
fn in_key_order<'s>(
    sources: &[&'s MergeSource],
    sort_key: &[String],
) -> Result<Option<Vec<&'s MergeSource>>, PartError> {
    if sort_key.is_empty() {
        return Ok(None);
    }
    // Each source with rows, and its first and last non-empty batch.
    let bounded: Vec<_> = sources
        .iter()
        .filter_map(|source| {
            let first = source.1.iter().find(|b| b.num_rows() > 0)?;
            let last = source.1.iter().rev().find(|b| b.num_rows() > 0)?;
            Some((*source, first, last))
        })
        .collect();
    if bounded.is_empty() {
        return Ok(None);
    }
    // The key of each source's first and last row, in that order: rows 2i and 2i + 1.
    let mut key_columns = Vec::with_capacity(sort_key.len());
    for name in sort_key {
        let mut ends: Vec<ArrayRef> = Vec::with_capacity(bounded.len() * 2);
        for (_, first, last) in &bounded {
            let column = |batch: &RecordBatch| {
                batch.column_by_name(name).cloned().ok_or_else(|| PartError::MissingColumn { column: name.clone() })
            };
            ends.push(column(first)?.slice(0, 1));
            ends.push(column(last)?.slice(last.num_rows() - 1, 1));
        }
        let ends: Vec<&dyn Array> = ends.iter().map(|a| a.as_ref()).collect();
        key_columns.push(concat(&ends)?);
    }
    let rows = key_rows(&key_columns)?;
    let mut order: Vec<usize> = (0..bounded.len()).collect();
    order.sort_by(|&a, &b| rows.row(2 * a).cmp(&rows.row(2 * b)));
    let disjoint = order.windows(2).all(|pair| rows.row(2 * pair[0] + 1) < rows.row(2 * pair[1]));
    Ok(disjoint.then(|| order.into_iter().map(|i| bounded[i].0).collect()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array, TimestampSecondArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};

    use super::*;
    use crate::read_part_batches;

    fn candidate(n: u8, partition: &str, bytes: u64) -> MergeCandidate {
        MergeCandidate { id: PartId::of_bytes(&[n]), partition: partition.into(), bytes, level: 0 }
    }

    #[test]
    fn picks_similar_sizes_in_one_partition() {
        let parts = [
            candidate(1, "a", 100),
            candidate(2, "a", 110),
            candidate(3, "a", 120),
            candidate(4, "a", 10_000),
            candidate(5, "a", 130),
            candidate(6, "b", 100),
        ];
        let chosen = select_merge(&parts, &MergePolicy::default()).expect("four similar parts in a");
        let mut expected: Vec<_> = [1u8, 2, 3, 5].iter().map(|n| PartId::of_bytes(&[*n])).collect();
        expected.sort();
        assert_eq!(chosen, expected);
        assert_eq!(select_merge(&parts[3..], &MergePolicy::default()), None, "too few similar parts");
    }

    /// Inserts of equal size, with the selected merge run after every insert: the part count
    /// stays bounded and each byte is rewritten only a few times.
    #[test]
    fn the_part_count_stays_bounded_and_write_amplification_low() {
        let policy = MergePolicy::default();
        let mut parts: Vec<MergeCandidate> = Vec::new();
        let (mut inserted, mut merged_bytes, mut next, mut most) = (0u64, 0u64, 0u32, 0usize);
        for _ in 0..1000 {
            next += 1;
            parts.push(MergeCandidate {
                id: PartId::of_bytes(&next.to_le_bytes()),
                partition: "p".into(),
                bytes: 1000,
                level: 0,
            });
            inserted += 1000;
            while let Some(chosen) = select_merge(&parts, &policy) {
                let sources: Vec<_> = parts.iter().filter(|p| chosen.contains(&p.id)).cloned().collect();
                parts.retain(|p| !chosen.contains(&p.id));
                let bytes: u64 = sources.iter().map(|p| p.bytes).sum();
                merged_bytes += bytes;
                next += 1;
                let level = sources.iter().map(|p| p.level).max().unwrap_or(0) + 1;
                parts.push(MergeCandidate {
                    id: PartId::of_bytes(&next.to_le_bytes()),
                    partition: "p".into(),
                    bytes,
                    level,
                });
            }
            most = most.max(parts.len());
        }
        let amplification = merged_bytes as f64 / inserted as f64;
        assert!(most <= 16, "at most 16 active parts at any time, saw {most}");
        assert!(amplification <= 5.0, "each byte merged at most ~log4(1000) times: {amplification:.2}");
    }

    #[test]
    fn merged_parts_are_sorted_and_the_same_wherever_they_are_made() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch =
            |values: Vec<i64>| RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap();
        let a = (PartId::of_bytes(b"a"), vec![batch(vec![1, 5])]);
        let b = (PartId::of_bytes(b"b"), vec![batch(vec![2, 3]), batch(vec![4])]);
        let one =
            merge_parts(&[a.clone(), b.clone()], &["k".into()], "t", "all", None, Codec::default()).unwrap().unwrap();
        let other = merge_parts(&[b, a], &["k".into()], "t", "all", None, Codec::default()).unwrap().unwrap();
        assert_eq!(one.id, other.id, "the same sources give the same bytes, whatever their order");
        let rows = read_part_batches(one.bytes).unwrap();
        assert_eq!(rows[0].column(0).as_primitive::<Int64Type>().values().to_vec(), [1, 2, 3, 4, 5]);
    }

    /// Sources that do not overlap are concatenated in key order rather than sorted: the same
    /// bytes as sorting gives. Sources that share a key at their ends are sorted.
    #[test]
    fn sources_without_overlap_merge_to_the_bytes_sorting_gives() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), false),
        ]));
        let batch = |k: Vec<Option<i64>>, ts: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(k)), Arc::new(TimestampSecondArray::from(ts))],
            )
            .unwrap()
        };
        let key: Vec<String> = vec!["k".into(), "ts".into()];
        let sorted_merge = |sources: &[(PartId, Vec<RecordBatch>)]| {
            let mut ordered: Vec<_> = sources.iter().collect();
            ordered.sort_by_key(|(id, _)| *id);
            let batches: Vec<RecordBatch> = ordered.iter().flat_map(|(_, b)| b.iter().cloned()).collect();
            let origin = ordered.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>().join("+");
            let metadata = PartMetadata {
                table: "t".into(),
                partition: "all".into(),
                origin: format!("merge:{origin}"),
                codec: Codec::default(),
            };
            encode_part(&concat_batches(&schema, &batches).unwrap(), &key, &metadata).unwrap()
        };
        let disjoint = [
            (PartId::of_bytes(b"x"), vec![batch(vec![Some(7), Some(7)], vec![1, 2])]),
            (PartId::of_bytes(b"y"), vec![batch(vec![None, Some(1)], vec![5, 1]), batch(vec![], vec![])]),
            (PartId::of_bytes(b"z"), vec![batch(vec![Some(7)], vec![3]), batch(vec![Some(9)], vec![0])]),
            (PartId::of_bytes(b"empty"), vec![batch(vec![], vec![])]),
        ];
        let ordered = in_key_order(&disjoint.iter().collect::<Vec<_>>(), &key).unwrap().expect("no two overlap");
        let ids: Vec<PartId> = ordered.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [b"y", b"x", b"z"].map(|n| PartId::of_bytes(n)), "by first key, nulls first");
        let merged = merge_parts(&disjoint, &key, "t", "all", None, Codec::default()).unwrap().unwrap();
        assert_eq!(merged.id, sorted_merge(&disjoint).id);
        let rows = concat_batches(&schema, &read_part_batches(merged.bytes).unwrap()).unwrap();
        let k: Vec<Option<i64>> = rows.column(0).as_primitive::<Int64Type>().iter().collect();
        assert_eq!(k, [None, Some(1), Some(7), Some(7), Some(7), Some(9)]);

        // x ends where z starts: equal keys keep the sort's order (by source id).
        let touching = [
            (PartId::of_bytes(b"x"), vec![batch(vec![Some(1), Some(2)], vec![0, 0])]),
            (PartId::of_bytes(b"z"), vec![batch(vec![Some(2), Some(3)], vec![0, 0])]),
        ];
        assert!(in_key_order(&touching.iter().collect::<Vec<_>>(), &key).unwrap().is_none());
        let merged = merge_parts(&touching, &key, "t", "all", None, Codec::default()).unwrap().unwrap();
        assert_eq!(merged.id, sorted_merge(&touching).id);
    }

    #[test]
    fn a_ttl_merge_leaves_out_expired_rows_and_keeps_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), true),
            Field::new("k", DataType::Int64, false),
        ]));
        let batch = |ts: Vec<Option<i64>>, k: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(TimestampSecondArray::from(ts)), Arc::new(Int64Array::from(k))],
            )
            .unwrap()
        };
        let source = (PartId::of_bytes(b"a"), vec![batch(vec![Some(10), None, Some(30), Some(20)], vec![1, 2, 3, 4])]);
        let ttl = TtlFilter { column: "ts".into(), before: 20 };
        let kept = merge_parts(std::slice::from_ref(&source), &["k".into()], "t", "all", Some(&ttl), Codec::default())
            .unwrap()
            .unwrap();
        let rows = read_part_batches(kept.bytes).unwrap();
        assert_eq!(rows[0].column(1).as_primitive::<Int64Type>().values().to_vec(), [2, 3, 4], "ts 10 < 20 expired");
        let plain = merge_parts(std::slice::from_ref(&source), &["k".into()], "t", "all", None, Codec::default())
            .unwrap()
            .unwrap();
        assert_ne!(plain.id, kept.id);
        let everything = TtlFilter { column: "ts".into(), before: i64::MAX };
        let only_nulls =
            merge_parts(&[source], &["k".into()], "t", "all", Some(&everything), Codec::default()).unwrap().unwrap();
        assert_eq!(only_nulls.rows, 1, "a NULL time never expires");
        let expired = (PartId::of_bytes(b"b"), vec![batch(vec![Some(1)], vec![1])]);
        assert!(merge_parts(&[expired], &["k".into()], "t", "all", Some(&ttl), Codec::default()).unwrap().is_none());
    }
}
