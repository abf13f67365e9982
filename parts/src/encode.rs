use std::collections::BTreeMap;
use std::io::Write;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{SortOptions, take_record_batch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::column_stats::ColumnStatsBuilder;
use crate::{Codec, ColumnStats, PartError, PartId};

/// What makes a part unique beyond its rows: written into the Parquet footer, so two inserts
/// of identical rows that are both meant to be kept (deduplication off, or different tokens)
/// still produce two different files and two different part ids.
#[derive(Clone, Debug)]
pub struct PartMetadata {
    pub table: String,
    pub partition: String,
    /// The block id, or for an insert without deduplication a unique insert id.
    pub origin: String,
    /// How the columns are compressed (not written into the footer: Parquet records each
    /// column's codec itself).
    pub codec: Codec,
}

/// Rows per data page at most.
const PAGE_ROWS: usize = 8192;

/// Rows per row group at most (Parquet's default, set here so readers can rely on it): every
/// row group of a part holds this many rows but the last. A query's scan hands out a large
/// part one row group at a time.
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// A part ready to be stored: its Parquet bytes, their hash, and statistics for the manifest.
#[derive(Debug)]
pub struct EncodedPart {
    pub id: PartId,
    pub bytes: Bytes,
    pub rows: u64,
    pub columns: BTreeMap<String, ColumnStats>,
}

/// Sorts the block by `sort_key` and writes it as one Parquet file, compressed with the
/// metadata's codec but for the leading sort-key column.
/// Deterministic: the same rows, key and metadata always give the same bytes.
pub fn encode_part(
    batch: &RecordBatch,
    sort_key: &[String],
    metadata: &PartMetadata,
) -> Result<EncodedPart, PartError> {
    let sort_columns: Vec<ArrayRef> =
        sort_key_indices(batch, sort_key)?.into_iter().map(|index| batch.column(index).clone()).collect();
    let permutation = if batch.num_rows() < 2 { None } else { sort_permutation(&sort_columns)? };
    match permutation {
        Some(permutation) => encode_sorted_part(&take_record_batch(batch, &permutation)?, sort_key, metadata),
        None => encode_sorted_part(batch, sort_key, metadata),
    }
}

/// Writes a block already in `sort_key` order as one Parquet file (see [`encode_part`]).
fn encode_sorted_part(
    sorted: &RecordBatch,
    sort_key: &[String],
    metadata: &PartMetadata,
) -> Result<EncodedPart, PartError> {
    let output = Vec::with_capacity(sorted.get_array_memory_size() / 4 + 1024);
    let mut encoder = PartEncoder::new(sorted.schema(), sort_key, metadata, output)?;
    encoder.write(sorted)?;
    let encoded = encoder.finish()?;
    Ok(EncodedPart {
        id: PartId::of_bytes(&encoded.output),
        bytes: Bytes::from(encoded.output),
        rows: encoded.rows,
        columns: encoded.columns,
    })
}

/// Writes a part into `W` from rows already in `sort_key` order, handed over in chunks, so a
/// part of any size can be written (by a merge) while holding one chunk of decoded rows at a
/// time. The bytes do not depend on where the chunks are cut as long as every chunk but the
/// last is a multiple of [`PAGE_ROWS`]: the Parquet writer decides page and row-group
/// boundaries at those multiples only.
pub(crate) struct PartEncoder<W: Write + Send> {
    writer: ArrowWriter<W>,
    columns: Vec<(String, ColumnStatsBuilder)>,
    rows: u64,
}

/// A part written into `W` (by a merge, see [`crate::merge_parts`]): the output holding the
/// part's bytes, and what the manifest says of them.
pub struct WrittenPart<W> {
    pub output: W,
    pub rows: u64,
    pub columns: BTreeMap<String, ColumnStats>,
}

impl<W: Write + Send> PartEncoder<W> {
    /// An encoder of rows of `schema` into a part ordered by `sort_key`, written to `output`.
    pub(crate) fn new(
        schema: SchemaRef,
        sort_key: &[String],
        metadata: &PartMetadata,
        output: W,
    ) -> Result<Self, PartError> {
        let properties = writer_properties(&schema, sort_key, metadata)?;
        let columns =
            schema.fields().iter().map(|field| (field.name().clone(), ColumnStatsBuilder::default())).collect();
        let writer = ArrowWriter::try_new(output, schema, Some(properties))?;
        Ok(PartEncoder { writer, columns, rows: 0 })
    }

    /// Appends `sorted`, whose rows follow those written before in key order.
    pub(crate) fn write(&mut self, sorted: &RecordBatch) -> Result<(), PartError> {
        self.writer.write(sorted)?;
        for ((_, stats), array) in self.columns.iter_mut().zip(sorted.columns()) {
            stats.add(array);
        }
        self.rows += sorted.num_rows() as u64;
        Ok(())
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the footer.
    pub(crate) fn finish(self) -> Result<WrittenPart<W>, PartError> {
        let output = self.writer.into_inner()?;
        let columns = self.columns.into_iter().map(|(name, stats)| (name, stats.finish())).collect();
        Ok(WrittenPart { output, rows: self.rows, columns })
    }
}

/// How a part of `schema` sorted by `sort_key` is written.
fn writer_properties(
    schema: &Schema,
    sort_key: &[String],
    metadata: &PartMetadata,
) -> Result<WriterProperties, PartError> {
    let sorting = sort_key
        .iter()
        .map(|name| {
            let index = schema.index_of(name).map_err(|_| PartError::MissingColumn { column: name.clone() })?;
            Ok(SortingColumn { column_idx: index as i32, descending: false, nulls_first: true })
        })
        .collect::<Result<_, PartError>>()?;
    let footer = serde_json::json!({
        "table": metadata.table,
        "partition": metadata.partition,
        "origin": metadata.origin,
    });
    let properties = WriterProperties::builder()
        .set_created_by("tandem-parts 1".to_string())
        .set_compression(metadata.codec.compression())
        .set_statistics_enabled(EnabledStatistics::Page)
        // Pages are what a filter on the sort key prunes to (through the page index): rows in
        // ClickHouse's granules of 8,192 rather than parquet's default 20,000.
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_sorting_columns(Some(sorting))
        .set_key_value_metadata(Some(vec![KeyValue::new("tandem.part".to_string(), footer.to_string())]));
    let properties = schema.fields().iter().fold(properties, |properties, field| {
        let column = ColumnPath::from(field.name().as_str());
        // The leading sort-key column is a few long runs per page, dictionary or delta encoded:
        // compressing it saves next to nothing, and reading it compressed costs every query that
        // filters or groups on it a decompression context per row group (Parquet's reader makes
        // one per column chunk). Uncompressed, a filter on one host of 10 M rows took 8-13% less
        // CPU, a 6-hour range by host 8% less (with zstd); the other columns keep the codec.
        let properties = if sort_key.first() == Some(field.name()) {
            properties.set_column_compression(column.clone(), Compression::UNCOMPRESSED)
        } else {
            properties
        };
        match column_encoding(field.data_type(), sort_key.contains(field.name())) {
            Some(encoding) => {
                properties.set_column_dictionary_enabled(column.clone(), false).set_column_encoding(column, encoding)
            }
            None => properties,
        }
    });
    Ok(properties.build())
}

/// The positions of the sort key's columns in `batch`.
fn sort_key_indices(batch: &RecordBatch, sort_key: &[String]) -> Result<Vec<usize>, PartError> {
    let schema = batch.schema_ref();
    sort_key
        .iter()
        .map(|name| schema.index_of(name).map_err(|_| PartError::MissingColumn { column: name.clone() }))
        .collect()
}

/// The permutation that sorts the rows by `columns` (ascending, nulls first), equal keys in
/// their original order; None when they are in that order already (time-ordered rows into a
/// table ordered by time or by an increasing id), which spares copying every column. The key
/// columns are converted once to arrow's row format, whose bytes compare as the rows do: one
/// `memcmp` per comparison instead of a comparison dispatched per key column. The sort is the
/// standard library's stable one, which finds runs already in order. (`lexsort` was about 40%
/// of the CPU of 10,000-row inserts and their merges, ordered by a string and a time.)
fn sort_permutation(columns: &[ArrayRef]) -> Result<Option<UInt32Array>, arrow::error::ArrowError> {
    if columns.is_empty() {
        return Ok(None);
    }
    let rows = key_rows(columns)?;
    if rows.iter().is_sorted() {
        return Ok(None);
    }
    // Each row's first 16 bytes ride along as an integer, which decides almost every
    // comparison without following the row to its bytes; rows whose prefixes tie are compared
    // in full, so the order is the rows' order.
    let mut keyed: Vec<(u128, u32)> = rows.iter().zip(0..).map(|(row, index)| (prefix(row.as_ref()), index)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| rows.row(a.1 as usize).cmp(&rows.row(b.1 as usize))));
    Ok(Some(keyed.into_iter().map(|(_, index)| index).collect()))
}

/// The first 16 bytes of `bytes` (zeros past its end) as a big-endian integer: prefixes that
/// differ order as the byte strings do.
fn prefix(bytes: &[u8]) -> u128 {
    let mut first = [0u8; 16];
    let len = bytes.len().min(16);
    first[..len].copy_from_slice(&bytes[..len]);
    u128::from_be_bytes(first)
}

/// The key columns in arrow's row format, ordered as parts are sorted.
fn key_rows(columns: &[ArrayRef]) -> Result<Rows, arrow::error::ArrowError> {
    key_converter(columns.iter().map(|c| c.data_type().clone()))?.convert_columns(columns)
}

/// The converter of key columns of these types to arrow's row format, whose bytes compare as
/// parts are sorted (ascending, nulls first).
pub(crate) fn key_converter(
    types: impl IntoIterator<Item = DataType>,
) -> Result<RowConverter, arrow::error::ArrowError> {
    let options = SortOptions { descending: false, nulls_first: true };
    RowConverter::new(types.into_iter().map(|t| SortField::new_with_options(t, options)).collect())
}

/// How a column is encoded when not with a dictionary (None: a dictionary, parquet's default).
///
/// Strings keep their dictionary: low-cardinality keys (hosts, services, levels) are the
/// common case, and a query decodes one small dictionary per row group. Numbers and times do
/// not: measurements and ids have about as many values as rows, so a dictionary grows to its
/// 1 MiB limit in every row group, and a query that reads a few pages of a row group (one
/// host's rows) still decompresses and decodes all of it first; plain values decode as a copy.
/// Times, and integers of the sort key, are delta encoded: sorted, they cost a few bits a row.
/// (Measured on the comparison benchmark's table: a filter on one host 0.8x, a full scan of a
/// float 0.7-0.8x the time with dictionaries; byte-stream-split floats scanned 1.2x slower.)
fn column_encoding(data_type: &DataType, in_sort_key: bool) -> Option<Encoding> {
    match data_type {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => Some(Encoding::DELTA_BINARY_PACKED),
        _ if data_type.is_integer() && in_sort_key => Some(Encoding::DELTA_BINARY_PACKED),
        _ if data_type.is_integer() || data_type.is_floating() => Some(Encoding::PLAIN),
        _ => None,
    }
}

/// Reads every row of a part file back as Arrow batches.
#[cfg(test)]
pub(crate) fn read_part_batches(bytes: Bytes) -> Result<Vec<RecordBatch>, PartError> {
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::ZstdLevel;

    use super::*;

    #[test]
    fn the_sort_orders_as_lexsort_does_with_ties_in_input_order() {
        use arrow::array::Float64Array;
        use arrow::compute::{SortColumn, lexsort_to_indices, take};
        let host: ArrayRef = Arc::new(StringArray::from(vec![
            Some("b"),
            None,
            Some("a"),
            Some("b"),
            Some(""),
            None,
            Some("a"),
            Some("ab"),
        ]));
        let v: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(1.0),
            Some(-0.0),
            None,
            Some(1.0),
            Some(f64::NAN),
            Some(0.0),
            Some(-2.5),
            Some(1.0),
        ]));
        let ours = sort_permutation(&[host.clone(), v.clone()]).unwrap().expect("not in order");
        let theirs = lexsort_to_indices(
            &[SortColumn { values: host.clone(), options: None }, SortColumn { values: v.clone(), options: None }],
            None,
        )
        .unwrap();
        for column in [&host, &v] {
            let (ours, theirs) = (take(column, &ours, None).unwrap(), take(column, &theirs, None).unwrap());
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "the same key order");
        }
        let ties: Vec<u32> = ours.values().iter().copied().filter(|&i| i == 0 || i == 3).collect();
        assert_eq!(ties, [0, 3], "equal keys keep their input order");
        let in_order = [&host, &v].map(|column| take(column, &ours, None).unwrap());
        assert!(sort_permutation(&in_order).unwrap().is_none(), "rows in order are not permuted");
    }

    /// Keys longer than the 16 bytes compared as an integer, sharing them or not, with ties:
    /// the prefix only ever decides what the whole rows would.
    #[test]
    fn the_prefix_sort_orders_as_the_rows_do() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        let hosts: Vec<Option<String>> = (0..2000)
            .map(|_| match next() % 5 {
                0 => None,
                1 => Some(String::new()),
                n => Some(format!("{}{}", "host-with-a-long-shared-name-".repeat(n as usize - 1), next() % 40)),
            })
            .collect();
        let ids: Vec<u64> = (0..2000).map(|_| next() % 300).collect();
        let host: ArrayRef = Arc::new(StringArray::from(hosts));
        let id: ArrayRef = Arc::new(arrow::array::UInt64Array::from(ids));
        let ours = sort_permutation(&[host.clone(), id.clone()]).unwrap().expect("not in order");
        let rows = key_rows(&[host, id]).unwrap();
        let mut expected: Vec<u32> = (0..rows.num_rows() as u32).collect();
        expected.sort_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
        assert_eq!(ours.values().to_vec(), expected);
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec!["b", "a", "c", "a"])), Arc::new(Int64Array::from(vec![1, 2, 3, 4]))],
        )
        .unwrap()
    }

    fn meta(origin: &str) -> PartMetadata {
        PartMetadata { table: "t".into(), partition: "all".into(), origin: origin.into(), codec: Codec::default() }
    }

    #[test]
    fn parts_are_sorted_deterministic_and_named_by_their_bytes() {
        let a = encode_part(&batch(), &["host".into(), "v".into()], &meta("x")).unwrap();
        let b = encode_part(&batch(), &["host".into(), "v".into()], &meta("x")).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.id, PartId::of_bytes(&a.bytes));
        let rows = read_part_batches(a.bytes.clone()).unwrap();
        let hosts: Vec<_> = rows[0].column(0).as_string::<i32>().iter().flatten().map(str::to_string).collect();
        assert_eq!(hosts, ["a", "a", "b", "c"]);
        assert_eq!(a.columns["v"].min, Some(1.into()));
        assert_eq!(a.columns["host"].max, Some("c".into()));
    }

    #[test]
    fn the_columns_take_the_codec_but_the_leading_sort_key_column_is_stored_uncompressed() {
        let codecs = |sort_key: &[&str], codec: Codec| {
            let sort_key: Vec<String> = sort_key.iter().map(|c| c.to_string()).collect();
            let part = encode_part(&batch(), &sort_key, &PartMetadata { codec, ..meta("x") }).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(part.bytes).unwrap();
            let row_group = reader.metadata().row_group(0);
            (0..row_group.num_columns()).map(|i| row_group.column(i).compression()).collect::<Vec<_>>()
        };
        let lz4 = Compression::LZ4_RAW;
        assert_eq!(codecs(&["host", "v"], Codec::default()), [Compression::UNCOMPRESSED, lz4]);
        assert_eq!(codecs(&["v"], Codec::default()), [lz4, Compression::UNCOMPRESSED]);
        assert_eq!(codecs(&[], Codec::default()), [lz4, lz4]);
        // The footer names the codec, not the zstd level it was written at.
        let zstd = Compression::ZSTD(ZstdLevel::default());
        assert_eq!(codecs(&["host"], Codec::Zstd(5)), [Compression::UNCOMPRESSED, zstd]);
        assert_eq!(codecs(&[], Codec::None), [Compression::UNCOMPRESSED, Compression::UNCOMPRESSED]);
    }

    #[test]
    fn the_codec_changes_the_bytes_but_not_the_rows() {
        let lz4 = encode_part(&batch(), &["host".into()], &meta("x")).unwrap();
        let zstd =
            encode_part(&batch(), &["host".into()], &PartMetadata { codec: Codec::Zstd(1), ..meta("x") }).unwrap();
        assert_ne!(lz4.id, zstd.id);
        assert_eq!(read_part_batches(lz4.bytes).unwrap(), read_part_batches(zstd.bytes).unwrap());
    }

    #[test]
    fn origin_makes_identical_rows_distinct_parts() {
        let a = encode_part(&batch(), &["host".into()], &meta("insert-1")).unwrap();
        let b = encode_part(&batch(), &["host".into()], &meta("insert-2")).unwrap();
        assert_ne!(a.id, b.id);
    }
}
