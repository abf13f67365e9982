//! Merges: which parts to combine (size-tiered selection within one partition), and the merged
//! part itself (the sources' sorted rows merged in key order, written as one new part).
//!
//! Selection is a pure function of the active parts, so every node that runs it on the same
//! set chooses the same merge; the merged bytes are a pure function of the sources, so a replica
//! can merge locally and compare the hash instead of fetching.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, concat_batches, filter_record_batch, interleave_record_batch};
use arrow::datatypes::{DataType, Fields, Int64Type, Schema};
use arrow::row::{Row, RowConverter, Rows};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::file::reader::ChunkReader;
use serde::{Deserialize, Serialize};

use crate::encode::{PartEncoder, key_converter};
use crate::{Codec, PartError, PartId, PartMetadata, WrittenPart};

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

/// A part to merge: its id and its file, or its bytes in memory.
#[derive(Debug)]
pub struct MergeSource {
    id: PartId,
    data: SourceData,
}

#[derive(Debug)]
enum SourceData {
    File(File),
    Bytes(Bytes),
}

impl MergeSource {
    /// The part `id` in the file at `path`, opened now: a merge reads it page by page, and a
    /// deletion of the file meanwhile does not disturb it.
    pub fn file(id: PartId, path: &Path) -> Result<Self, PartError> {
        let file = File::open(path).map_err(|e| PartError::io(path, e))?;
        Ok(MergeSource::opened(id, file))
    }

    /// The part `id` in a file already open.
    pub fn opened(id: PartId, file: File) -> Self {
        MergeSource { id, data: SourceData::File(file) }
    }

    /// The part `id`, whose bytes are in memory.
    pub fn bytes(id: PartId, bytes: Bytes) -> Self {
        MergeSource { id, data: SourceData::Bytes(bytes) }
    }

    /// The part's columns and a reader of its rows, `batch_rows` at a time.
    fn open(&self, batch_rows: usize) -> Result<(Fields, ParquetRecordBatchReader), PartError> {
        fn open(
            input: impl ChunkReader + 'static,
            batch_rows: usize,
        ) -> Result<(Fields, ParquetRecordBatchReader), PartError> {
            let builder = ParquetRecordBatchReaderBuilder::try_new(input)?;
            let columns = builder.schema().fields().clone();
            Ok((columns, builder.with_batch_size(batch_rows).build()?))
        }
        match &self.data {
            SourceData::File(file) => {
                let file = file.try_clone().map_err(|e| PartError::io(format!("the file of part {}", self.id), e))?;
                open(file, batch_rows)
            }
            SourceData::Bytes(bytes) => open(bytes.clone(), batch_rows),
        }
    }
}

/// What a merge writes: a part of `table` and `partition` sorted by `sort_key`, compressed with
/// `codec`, without the rows `ttl` expires.
#[derive(Clone, Copy, Debug)]
pub struct MergePlan<'a> {
    pub sort_key: &'a [String],
    pub table: &'a str,
    pub partition: &'a str,
    pub ttl: Option<&'a TtlFilter>,
    pub codec: Codec,
}

/// Rows a merge decodes from a source at a time.
const SOURCE_BATCH_ROWS: usize = 8 * 1024;

/// Rows a merge hands the Parquet writer at a time: a multiple of the rows per page, so the
/// bytes are those of the part written in one piece (see [`PartEncoder`]).
const MERGED_CHUNK_ROWS: usize = 64 * 1024;

/// Runs at least this long on average are copied run by run, shorter ones row by row.
const LONG_RUN_ROWS: usize = 256;

/// The merged part of `sources` as `plan` says, written to `output`: the sources' rows (each
/// sorted by the sort key, as every part is) sorted together, equal keys in the order of the
/// sources' ids. The origin names the sources and the TTL filter, so the same merge with the
/// same codec gives the same bytes anywhere. None when no row is left (what `output` holds then
/// is no part).
///
/// The sources are merged as sorted runs, never sorted again, and streamed: a merge holds a
/// batch of decoded rows per source and one chunk of merged rows, whatever the size of the
/// parts, and reads files page by page. When the sources barely overlap (time-ordered inserts
/// into a table ordered by time or by an increasing id) the runs are whole batches, copied a
/// run at a time.
pub fn merge_parts<W: Write + Send>(
    sources: &[MergeSource],
    plan: &MergePlan<'_>,
    output: W,
) -> Result<Option<WrittenPart<W>>, PartError> {
    let MergePlan { sort_key, table, partition, ttl, codec } = *plan;
    let mut ordered: Vec<&MergeSource> = sources.iter().collect();
    ordered.sort_by_key(|source| source.id);
    let mut origin = ordered.iter().map(|source| source.id.to_string()).collect::<Vec<_>>().join("+");
    if let Some(ttl) = ttl {
        origin.push_str(&format!(" ttl:{}<{}", ttl.column, ttl.before));
    }
    let mut readers = Vec::with_capacity(ordered.len());
    for source in &ordered {
        readers.push((source.id, source.open(SOURCE_BATCH_ROWS)?));
    }
    // The columns of the first source, without the schema metadata a reader derives from its
    // footer.
    let Some((_, (columns, _))) = readers.first() else { return Ok(None) };
    let schema = Arc::new(Schema::new(columns.clone()));
    let keys = SortKey::new(&schema, sort_key)?;
    let mut cursors = Vec::with_capacity(readers.len());
    let mut chunk = MergedChunk::default();
    for (id, (_, reader)) in readers {
        if let Some(cursor) = SourceCursor::open(id, reader, ttl, &keys, &mut chunk)? {
            cursors.push(cursor);
        }
    }
    let metadata =
        PartMetadata { table: table.into(), partition: partition.into(), origin: format!("merge:{origin}"), codec };
    let mut encoder = PartEncoder::new(schema, sort_key, &metadata, output)?;

    // Repeatedly: the source whose next row comes first (the least key; on equal keys, the
    // first source in id order) gives every row up to the next row of any other source.
    while !cursors.is_empty() {
        let (winner, bound) = next_run(&cursors);
        let cursor = &cursors[winner];
        let end = match bound {
            None => cursor.batch.num_rows(),
            Some(other) => {
                let bound = cursors[other].head();
                // Rows equal to the bound go first when the winner comes first in id order.
                if winner < other { cursor.run_end(|row| row <= bound) } else { cursor.run_end(|row| row < bound) }
            }
        };
        let mut start = cursor.next_row;
        while start < end {
            // The slot of the winner's batch, renumbered whenever a chunk is taken.
            start += chunk.push(cursors[winner].slot, start, end - start);
            if chunk.is_full() {
                encoder.write(&chunk.take(&mut cursors)?)?;
            }
        }
        let cursor = &mut cursors[winner];
        cursor.next_row = end;
        if end == cursor.batch.num_rows() && !cursor.advance(ttl, &keys, &mut chunk)? {
            cursors.remove(winner);
        }
    }
    if chunk.rows > 0 {
        encoder.write(&chunk.take(&mut cursors)?)?;
    }
    if encoder.rows() == 0 {
        return Ok(None);
    }
    encoder.finish().map(Some)
}

/// The cursor whose next row comes first, and the one whose next row comes after it (None
/// when only one is left). Cursors are in the order of their sources' ids, which breaks ties.
fn next_run(cursors: &[SourceCursor]) -> (usize, Option<usize>) {
    let mut winner = 0;
    let mut runner_up: Option<usize> = None;
    for index in 1..cursors.len() {
        let head = cursors[index].head();
        if head < cursors[winner].head() {
            runner_up = Some(winner);
            winner = index;
        } else if runner_up.is_none_or(|r| head < cursors[r].head()) {
            runner_up = Some(index);
        }
    }
    (winner, runner_up)
}

/// The sort key of the merged rows: its columns' positions and the converter of their values
/// to arrow's row format, whose bytes compare as the rows do (ascending, nulls first, as
/// parts are sorted). Without a sort key every row compares equal, and sources are
/// concatenated in id order.
struct SortKey {
    columns: Vec<usize>,
    converter: Option<RowConverter>,
}

impl SortKey {
    fn new(schema: &Schema, sort_key: &[String]) -> Result<Self, PartError> {
        let columns = sort_key
            .iter()
            .map(|name| schema.index_of(name).map_err(|_| PartError::MissingColumn { column: name.clone() }))
            .collect::<Result<Vec<_>, _>>()?;
        let types = || columns.iter().map(|&index| schema.field(index).data_type().clone());
        let converter = (!columns.is_empty()).then(|| key_converter(types())).transpose()?;
        Ok(SortKey { columns, converter })
    }

    fn rows(&self, batch: &RecordBatch) -> Result<Option<Rows>, PartError> {
        let Some(converter) = &self.converter else { return Ok(None) };
        let columns: Vec<ArrayRef> = self.columns.iter().map(|&index| batch.column(index).clone()).collect();
        Ok(Some(converter.convert_columns(&columns)?))
    }
}

/// Where a merge stands in one source: its current batch of rows (none of them expired), the
/// batch's keys, and the next row to merge.
struct SourceCursor {
    id: PartId,
    reader: ParquetRecordBatchReader,
    batch: RecordBatch,
    keys: Option<Rows>,
    /// The batch's place in the chunk being assembled.
    slot: usize,
    next_row: usize,
}

impl SourceCursor {
    /// A cursor on the first row of part `id` the TTL keeps; None when it keeps none.
    fn open(
        id: PartId,
        reader: ParquetRecordBatchReader,
        ttl: Option<&TtlFilter>,
        keys: &SortKey,
        chunk: &mut MergedChunk,
    ) -> Result<Option<Self>, PartError> {
        let empty = RecordBatch::new_empty(arrow::array::RecordBatchReader::schema(&reader));
        let mut cursor = SourceCursor { id, reader, batch: empty, keys: None, slot: 0, next_row: 0 };
        Ok(cursor.advance(ttl, keys, chunk)?.then_some(cursor))
    }

    /// Moves to the source's next batch with rows; false at the end of the source.
    fn advance(&mut self, ttl: Option<&TtlFilter>, keys: &SortKey, chunk: &mut MergedChunk) -> Result<bool, PartError> {
        for batch in self.reader.by_ref() {
            let batch = match ttl {
                Some(ttl) => ttl.keep(&batch?)?,
                None => batch?,
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let rows = keys.rows(&batch)?;
            if let Some(rows) = &rows {
                let follows = match &self.keys {
                    Some(previous) if previous.num_rows() > 0 => previous.row(previous.num_rows() - 1) <= rows.row(0),
                    _ => true,
                };
                if !follows || !rows.iter().is_sorted() {
                    return Err(PartError::Unsorted { part: self.id });
                }
            }
            self.keys = rows;
            self.slot = chunk.add_batch(batch.clone());
            self.batch = batch;
            self.next_row = 0;
            return Ok(true);
        }
        Ok(false)
    }

    /// The key of the next row (None without a sort key: every row compares equal).
    fn head(&self) -> Option<Row<'_>> {
        self.keys.as_ref().map(|keys| keys.row(self.next_row))
    }

    /// The end of the run of rows from the next one on that satisfy `before` (which holds for
    /// the next row and, the batch being sorted, for a prefix of it): found by galloping, so a
    /// short run costs a few comparisons and a whole batch a binary search.
    fn run_end(&self, before: impl Fn(Option<Row<'_>>) -> bool) -> usize {
        let key = |index: usize| self.keys.as_ref().map(|keys| keys.row(index));
        let rows = self.batch.num_rows();
        let (mut low, mut step) = (self.next_row + 1, 1);
        // Gallop: `low` rows satisfy `before`; find a bound that does not.
        let mut high = loop {
            let probe = self.next_row + step;
            if probe >= rows {
                break rows;
            }
            if !before(key(probe)) {
                break probe;
            }
            low = probe + 1;
            step *= 2;
        };
        while low < high {
            let middle = low + (high - low) / 2;
            if before(key(middle)) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        high
    }
}

/// The merged rows being assembled into the next chunk for the writer: runs of rows of the
/// sources' batches, by their batch's slot.
#[derive(Default)]
struct MergedChunk {
    batches: Vec<RecordBatch>,
    runs: Vec<(usize, usize, usize)>,
    rows: usize,
}

impl MergedChunk {
    /// Keeps `batch` until the chunk is taken; its slot.
    fn add_batch(&mut self, batch: RecordBatch) -> usize {
        self.batches.push(batch);
        self.batches.len() - 1
    }

    /// Adds up to `len` rows from `start` of the batch in `slot`, as many as the chunk has
    /// room for; how many.
    fn push(&mut self, slot: usize, start: usize, len: usize) -> usize {
        let taken = len.min(MERGED_CHUNK_ROWS - self.rows);
        self.runs.push((slot, start, taken));
        self.rows += taken;
        taken
    }

    fn is_full(&self) -> bool {
        self.rows == MERGED_CHUNK_ROWS
    }

    /// The chunk's rows as one batch, leaving the chunk empty but for the batches `cursors`
    /// still read from (whose slots are renumbered).
    fn take(&mut self, cursors: &mut [SourceCursor]) -> Result<RecordBatch, PartError> {
        let merged = match self.runs.as_slice() {
            [(slot, start, len)] => self.batches[*slot].slice(*start, *len),
            // Long runs (sources that barely overlap): copied a run at a time.
            runs if runs.len() <= MERGED_CHUNK_ROWS / LONG_RUN_ROWS => {
                let slices: Vec<RecordBatch> =
                    runs.iter().map(|&(slot, start, len)| self.batches[slot].slice(start, len)).collect();
                concat_batches(&self.batches[runs[0].0].schema(), &slices)?
            }
            runs => {
                let indices: Vec<(usize, usize)> = runs
                    .iter()
                    .flat_map(|&(slot, start, len)| (start..start + len).map(move |row| (slot, row)))
                    .collect();
                let batches: Vec<&RecordBatch> = self.batches.iter().collect();
                interleave_record_batch(&batches, &indices)?
            }
        };
        self.runs.clear();
        self.rows = 0;
        self.batches.clear();
        for cursor in cursors {
            cursor.slot = self.add_batch(cursor.batch.clone());
        }
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampSecondArray};
    use arrow::datatypes::{Field, TimeUnit};

    use super::*;
    use crate::encode::read_part_batches;
    use crate::{EncodedPart, encode_part};

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

    /// A part of `rows` (sorted by `key` first, as every part is).
    fn part(name: &str, rows: &RecordBatch, key: &[String]) -> EncodedPart {
        let metadata =
            PartMetadata { table: "t".into(), partition: "all".into(), origin: name.into(), codec: Codec::default() };
        encode_part(rows, key, &metadata).unwrap()
    }

    fn plan<'a>(sort_key: &'a [String], ttl: Option<&'a TtlFilter>) -> MergePlan<'a> {
        MergePlan { sort_key, table: "t", partition: "all", ttl, codec: Codec::default() }
    }

    /// The merge of `parts` (from memory), as a part.
    fn merge(
        parts: &[&EncodedPart],
        key: &[String],
        ttl: Option<&TtlFilter>,
    ) -> Result<Option<EncodedPart>, PartError> {
        let sources: Vec<MergeSource> = parts.iter().map(|p| MergeSource::bytes(p.id, p.bytes.clone())).collect();
        let merged = merge_parts(&sources, &plan(key, ttl), Vec::new())?;
        Ok(merged.map(|merged| EncodedPart {
            id: PartId::of_bytes(&merged.output),
            bytes: Bytes::from(merged.output),
            rows: merged.rows,
            columns: merged.columns,
        }))
    }

    /// The merge as it was first written, and as its contract states it: every source's rows
    /// concatenated in the order of the sources' ids, expired rows left out, then sorted by
    /// the (stable) sort every new part takes.
    fn merged_by_sorting(parts: &[&EncodedPart], key: &[String], ttl: Option<&TtlFilter>) -> Option<EncodedPart> {
        let mut ordered = parts.to_vec();
        ordered.sort_by_key(|part| part.id);
        let batches: Vec<RecordBatch> =
            ordered.iter().flat_map(|part| read_part_batches(part.bytes.clone()).unwrap()).collect();
        let columns =
            ParquetRecordBatchReaderBuilder::try_new(parts[0].bytes.clone()).unwrap().schema().fields().clone();
        let mut rows = concat_batches(&Arc::new(Schema::new(columns)), &batches).unwrap();
        let mut origin = ordered.iter().map(|part| part.id.to_string()).collect::<Vec<_>>().join("+");
        if let Some(ttl) = ttl {
            rows = ttl.keep(&rows).unwrap();
            origin.push_str(&format!(" ttl:{}<{}", ttl.column, ttl.before));
        }
        let metadata = PartMetadata {
            table: "t".into(),
            partition: "all".into(),
            origin: format!("merge:{origin}"),
            codec: Codec::default(),
        };
        (rows.num_rows() > 0).then(|| encode_part(&rows, key, &metadata).unwrap())
    }

    fn all_rows(part: &EncodedPart) -> RecordBatch {
        let batches = read_part_batches(part.bytes.clone()).unwrap();
        concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    #[test]
    fn merged_parts_are_sorted_and_the_same_wherever_they_are_made() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch =
            |values: Vec<i64>| RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap();
        let key = ["k".to_string()];
        let a = part("a", &batch(vec![1, 5]), &key);
        let b = part("b", &batch(vec![2, 3, 4]), &key);
        let one = merge(&[&a, &b], &key, None).unwrap().unwrap();
        let other = merge(&[&b, &a], &key, None).unwrap().unwrap();
        assert_eq!(one.id, other.id, "the same sources give the same bytes, whatever their order");
        assert_eq!(all_rows(&one).column(0).as_primitive::<Int64Type>().values().to_vec(), [1, 2, 3, 4, 5]);
    }

    /// Sources of a nullable string and a time key, with many equal keys across and within
    /// sources, some sources disjoint and some empty after the TTL: the streamed merge writes
    /// the very bytes that sorting the concatenation writes, statistics included.
    #[test]
    fn the_streamed_merge_writes_the_bytes_sorting_gives() {
        use proptest::prelude::*;
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), false),
            Field::new("origin", DataType::Int64, false),
        ]));
        let key: Vec<String> = vec!["host".into(), "ts".into()];
        let row = (proptest::option::weighted(0.9, 0u8..4), 0i64..6);
        let sources = proptest::collection::vec(proptest::collection::vec(row, 0..40), 1..6);
        let ttl = proptest::option::of(0i64..4);
        proptest!(ProptestConfig::with_cases(256), |(sources in sources, ttl in ttl)| {
            let parts: Vec<EncodedPart> = sources
                .iter()
                .enumerate()
                .map(|(n, rows)| {
                    let hosts: Vec<Option<String>> = rows.iter().map(|(h, _)| h.map(|h| format!("host-{h}"))).collect();
                    let times: Vec<i64> = rows.iter().map(|(_, t)| *t).collect();
                    // Which source and row each row came from, so a wrong order of equal keys shows.
                    let origins: Vec<i64> = (0..rows.len() as i64).map(|i| n as i64 * 1000 + i).collect();
                    let batch = RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(StringArray::from(hosts)),
                            Arc::new(TimestampSecondArray::from(times)),
                            Arc::new(Int64Array::from(origins)),
                        ],
                    )
                    .unwrap();
                    part(&format!("source-{n}"), &batch, &key)
                })
                .collect();
            let parts: Vec<&EncodedPart> = parts.iter().collect();
            let ttl = ttl.map(|before| TtlFilter { column: "ts".into(), before });
            let streamed = merge(&parts, &key, ttl.as_ref()).unwrap();
            let sorted = merged_by_sorting(&parts, &key, ttl.as_ref());
            match (streamed, sorted) {
                (Some(streamed), Some(sorted)) => {
                    prop_assert_eq!(all_rows(&streamed), all_rows(&sorted));
                    prop_assert_eq!(streamed.id, sorted.id);
                    prop_assert_eq!(streamed.rows, sorted.rows);
                    prop_assert_eq!(streamed.columns, sorted.columns);
                }
                (None, None) => {}
                (streamed, sorted) => {
                    let rows = |part: Option<EncodedPart>| part.map(|p| p.rows);
                    prop_assert!(false, "streamed {:?} rows, sorted {:?}", rows(streamed), rows(sorted));
                }
            }
        });
    }

    /// Sources larger than a decoded batch and a merged chunk, interleaved row by row in one
    /// part of their key range and disjoint in the rest, read from files and from memory, and
    /// parts written without a sort key: the bytes sorting the concatenation gives, whatever the
    /// order of the sources.
    #[test]
    fn a_merge_larger_than_its_chunks_writes_the_bytes_sorting_gives() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Float64, false),
        ]));
        let numbered = |name: &str, ids: Vec<i64>, key: &[String]| {
            let values: Vec<f64> = ids.iter().map(|id| (*id as f64).sin()).collect();
            let columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(ids)), Arc::new(Float64Array::from(values))];
            part(name, &RecordBatch::try_new(schema.clone(), columns).unwrap(), key)
        };
        let key = vec!["id".to_string()];
        let evens = numbered("evens", (0..150_000).map(|i| i * 2).collect(), &key);
        let odds = numbered("odds", (0..100_000).map(|i| i * 2 + 1).collect(), &key);
        let later = numbered("later", (400_000..520_000).collect(), &key);
        let merged = merge(&[&evens, &odds, &later], &key, None).unwrap().unwrap();
        let sorted = merged_by_sorting(&[&evens, &odds, &later], &key, None).unwrap();
        assert_eq!(merged.rows, 370_000);
        assert_eq!(merged.id, sorted.id);
        assert_eq!(merged.columns, sorted.columns);
        assert_eq!(merge(&[&later, &evens, &odds], &key, None).unwrap().unwrap().id, merged.id);

        let dir = tempfile::tempdir().unwrap();
        let on_disk: Vec<MergeSource> = [&evens, &odds]
            .iter()
            .map(|part| {
                let path = dir.path().join(part.id.to_string());
                std::fs::write(&path, &part.bytes).unwrap();
                MergeSource::file(part.id, &path).unwrap()
            })
            .chain([MergeSource::bytes(later.id, later.bytes.clone())])
            .collect();
        let from_files = merge_parts(&on_disk, &plan(&key, None), Vec::new()).unwrap().unwrap();
        assert_eq!(PartId::of_bytes(&from_files.output), merged.id, "files and memory merge alike");

        let unsorted = [numbered("a", (0..70_000).rev().collect(), &[]), numbered("b", (0..70_000).collect(), &[])];
        let unsorted: Vec<&EncodedPart> = unsorted.iter().collect();
        let concatenated = merge(&unsorted, &[], None).unwrap().unwrap();
        assert_eq!(concatenated.id, merged_by_sorting(&unsorted, &[], None).unwrap().id, "in id order, unsorted");
    }

    /// A file out of its key's order (no part is, but a merge must not trust it blindly) is
    /// refused rather than merged into a part out of order.
    #[test]
    fn a_source_out_of_key_order_is_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![3, 1, 2]))]).unwrap();
        let unsorted = part("unsorted", &batch, &[]);
        let error = merge(&[&unsorted], &["k".into()], None).unwrap_err();
        assert!(matches!(error, PartError::Unsorted { part } if part == unsorted.id), "{error}");
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
        let key = ["k".to_string()];
        let source = part("a", &batch(vec![Some(10), None, Some(30), Some(20)], vec![1, 2, 3, 4]), &key);
        let ttl = TtlFilter { column: "ts".into(), before: 20 };
        let kept = merge(&[&source], &key, Some(&ttl)).unwrap().unwrap();
        let k = all_rows(&kept).column(1).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(k, [2, 3, 4], "ts 10 < 20 expired");
        let plain = merge(&[&source], &key, None).unwrap().unwrap();
        assert_ne!(plain.id, kept.id);
        let everything = TtlFilter { column: "ts".into(), before: i64::MAX };
        let only_nulls = merge(&[&source], &key, Some(&everything)).unwrap().unwrap();
        assert_eq!(only_nulls.rows, 1, "a NULL time never expires");
        let expired = part("b", &batch(vec![Some(1)], vec![1]), &key);
        assert!(merge(&[&expired], &key, Some(&ttl)).unwrap().is_none());
    }
}
