use std::sync::Arc;

use arrow::array::{Array, ArrowPrimitiveType, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};

use crate::PartError;

/// How many bytes of encoded rows are gathered before they are hashed.
const HASH_BUFFER_BYTES: usize = 64 * 1024;
/// The header's bytes besides the table, partition and column names: the magic, the `rows` tag
/// and three lengths.
const HEADER_BYTES: usize = 16 + 5 + 3 * size_of::<u64>();

/// The block id of one partition of an insert: a blake3 hash over the table, the partition,
/// the column names and types, and the rows in insert order.
///
/// Rows are encoded with Arrow's row format, which depends only on the values and not on how
/// the arrays happen to be laid out in memory, so the same rows parsed from JSON, CSV or
/// Parquet get the same id. With a client token (`insert_deduplication_token`) the id is the
/// hash of the token and the partition instead.
pub fn block_id(table: &str, partition: &str, batch: &RecordBatch, token: Option<&str>) -> Result<String, PartError> {
    Ok(BlockHasher::new(batch.schema_ref())?.hash(table, partition, batch, token)?.to_hex().to_string())
}

/// Hashes the blocks of one schema into their ids ([`block_id`]'s bytes exactly). What depends
/// only on the schema, the column names and types and the row encoder, is prepared once: for
/// an insert of a few rows it cost more than hashing the rows.
pub struct BlockHasher {
    schema: SchemaRef,
    /// Each column's name and type, as `push_str` writes them.
    columns: Vec<u8>,
    /// `None` for a schema without columns.
    converter: Option<RowConverter>,
    /// The rows' writers and layout, when every column has values of a fixed width (numbers,
    /// dates and times): their rows are then written here, not by the converter.
    fixed_width: Option<FixedWidthRows>,
}

impl BlockHasher {
    pub fn new(schema: &SchemaRef) -> Result<BlockHasher, PartError> {
        let mut columns = Vec::new();
        for field in schema.fields() {
            push_str(&mut columns, field.name());
            push_str(&mut columns, &field.data_type().to_string());
        }
        let converter = if schema.fields().is_empty() {
            None
        } else {
            Some(RowConverter::new(schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?)
        };
        let fixed_width = schema
            .fields()
            .iter()
            .map(|f| fixed_width_writer(f.data_type()))
            .collect::<Option<Vec<_>>>()
            .map(FixedWidthRows::of);
        Ok(BlockHasher { schema: schema.clone(), columns, converter, fixed_width })
    }

    /// The id of `batch`, which must be of this hasher's schema.
    ///
    /// The hashed bytes (a header, then the rows) are gathered into one buffer and given to
    /// blake3 at once: each `update` has a fixed cost, and the header's nine of them were about
    /// a sixth of a 10-row block's id.
    pub fn hash(
        &self,
        table: &str,
        partition: &str,
        batch: &RecordBatch,
        token: Option<&str>,
    ) -> Result<blake3::Hash, PartError> {
        let header_bytes = HEADER_BYTES + table.len() + partition.len() + self.columns.len();
        let first_rows_bytes = match (&self.fixed_width, token) {
            (Some(rows), None) => rows.rows_per_buffer.min(batch.num_rows()) * rows.stride,
            _ => token.map_or(0, |t| t.len() + 16),
        };
        let mut input = Vec::with_capacity(header_bytes + first_rows_bytes);
        input.extend_from_slice(b"tandem-block-v1\0");
        push_str(&mut input, table);
        push_str(&mut input, partition);
        if let Some(token) = token {
            input.extend_from_slice(b"token\0");
            push_str(&mut input, token);
            return Ok(blake3::hash(&input));
        }
        if !Arc::ptr_eq(batch.schema_ref(), &self.schema) && **batch.schema_ref() != *self.schema {
            return Err(PartError::Arrow(ArrowError::SchemaError(format!(
                "a block of schema {} hashed as one of {}",
                batch.schema_ref(),
                self.schema
            ))));
        }
        input.extend_from_slice(b"rows\0");
        input.extend_from_slice(&self.columns);
        input.extend_from_slice(&(batch.num_rows() as u64).to_le_bytes());
        let mut hasher = blake3::Hasher::new();
        match (&self.fixed_width, &self.converter) {
            (Some(rows), Some(_)) => hash_fixed_width_rows(&mut hasher, input, batch, rows),
            (None, Some(converter)) => hash_converted_rows(&mut hasher, input, converter, batch)?,
            (_, None) => {
                hasher.update(&input);
            }
        }
        Ok(hasher.finalize())
    }
}

/// Hashes `input` (the header), then the rows of `batch` in Arrow's row format, each as its
/// length and its bytes.
fn hash_converted_rows(
    hasher: &mut blake3::Hasher,
    mut input: Vec<u8>,
    converter: &RowConverter,
    batch: &RecordBatch,
) -> Result<(), PartError> {
    let rows = converter.convert_columns(batch.columns())?;
    // The rows are gathered into one buffer after the header: blake3 hashes a large input
    // several chunks at a time (SIMD), but a row of a few dozen bytes one compression at a time,
    // several times slower. Sized for the rows when they are fewer: a small insert would
    // otherwise pay for zeroing fresh pages of a 64 KiB buffer it barely uses.
    let row_bytes = rows.size() + rows.num_rows() * size_of::<u64>();
    input.reserve(row_bytes.min(HASH_BUFFER_BYTES));
    for row in rows.iter() {
        let bytes = row.as_ref();
        input.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        input.extend_from_slice(bytes);
        if input.len() >= HASH_BUFFER_BYTES {
            hasher.update(&input);
            input.clear();
        }
    }
    hasher.update(&input);
    Ok(())
}

/// Hashes `input` (the header), then the rows of `batch`, whose columns have values of fixed
/// widths, exactly as the row converter's rows would be hashed: each row as its length and its
/// bytes. In the row format a fixed-width value is a byte 1 and its bits in an
/// order-preserving big-endian form, and a null is a byte 0 and zeros. Written straight from
/// the arrays, a column at a time, a 10-row insert's block id took 6k instructions rather than
/// 9k, most of what is left being blake3 itself. The tests compare the two on every type
/// written here.
fn hash_fixed_width_rows(
    hasher: &mut blake3::Hasher,
    mut input: Vec<u8>,
    batch: &RecordBatch,
    layout: &FixedWidthRows,
) {
    let &FixedWidthRows { ref columns, row_len, stride, rows_per_buffer } = layout;
    let mut first = 0;
    while first < batch.num_rows() {
        let rows = rows_per_buffer.min(batch.num_rows() - first);
        // After the header in the first buffer, at the start of the others.
        let start = input.len();
        input.resize(start + rows * stride, 0);
        let buffer = &mut input[start..];
        for row in buffer.chunks_exact_mut(stride) {
            row[..size_of::<u64>()].copy_from_slice(&(row_len as u64).to_le_bytes());
        }
        let mut offset = size_of::<u64>();
        for (column, (width, write)) in batch.columns().iter().zip(columns) {
            write(buffer, stride, offset, column, first);
            offset += 1 + width;
        }
        hasher.update(&input);
        input.clear();
        first += rows;
    }
    if !input.is_empty() {
        hasher.update(&input);
    }
}

/// How rows of fixed-width values are written and laid out in the hashed bytes: the schema's,
/// prepared with the hasher.
struct FixedWidthRows {
    /// Each column's width in the row format and its writer.
    columns: Vec<(usize, WriteColumn)>,
    /// A row's bytes in the row format.
    row_len: usize,
    /// A row's bytes as hashed: its length, then the row.
    stride: usize,
    /// Rows gathered before they are hashed.
    rows_per_buffer: usize,
}

impl FixedWidthRows {
    fn of(columns: Vec<(usize, WriteColumn)>) -> FixedWidthRows {
        let row_len: usize = columns.iter().map(|(width, _)| 1 + width).sum();
        let stride = size_of::<u64>() + row_len;
        FixedWidthRows { columns, row_len, stride, rows_per_buffer: (HASH_BUFFER_BYTES / stride).max(1) }
    }
}

/// Writes a column's values from row `first` on, one at `offset` of each `stride` bytes of
/// `rows`.
type WriteColumn = fn(rows: &mut [u8], stride: usize, offset: usize, column: &dyn Array, first: usize);

/// A value's bytes in the row format, after its validity byte: as many as the value has.
trait RowBytes: Copy {
    fn put(self, out: &mut [u8]);
}

/// Signed integers: big-endian with the sign bit flipped.
macro_rules! signed_row_bytes {
    ($($native:ty),*) => {$(
        impl RowBytes for $native {
            fn put(self, out: &mut [u8]) {
                let mut bytes = self.to_be_bytes();
                bytes[0] ^= 0x80;
                out.copy_from_slice(&bytes);
            }
        }
    )*};
}
signed_row_bytes!(i8, i16, i32, i64);

/// Unsigned integers: big-endian.
macro_rules! unsigned_row_bytes {
    ($($native:ty),*) => {$(
        impl RowBytes for $native {
            fn put(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_be_bytes());
            }
        }
    )*};
}
unsigned_row_bytes!(u8, u16, u32, u64);

/// Floats: their bits, all flipped when negative and the sign bit flipped otherwise (the total
/// order), then as a signed integer of their width.
macro_rules! float_row_bytes {
    ($($native:ty => $signed:ty, $unsigned:ty);*) => {$(
        impl RowBytes for $native {
            fn put(self, out: &mut [u8]) {
                let bits = self.to_bits() as $signed;
                let ordered = bits ^ (((bits >> (<$signed>::BITS - 1)) as $unsigned) >> 1) as $signed;
                ordered.put(out);
            }
        }
    )*};
}
float_row_bytes!(f32 => i32, u32; f64 => i64, u64);

/// The width of a value of `data_type` in the row format and how a column of it is written,
/// for the types with values of a fixed width (numbers, dates and times).
fn fixed_width_writer(data_type: &DataType) -> Option<(usize, WriteColumn)> {
    fn of<T: ArrowPrimitiveType>() -> Option<(usize, WriteColumn)>
    where
        T::Native: RowBytes,
    {
        Some((size_of::<T::Native>(), write::<T>))
    }
    match data_type {
        DataType::Int8 => of::<Int8Type>(),
        DataType::Int16 => of::<Int16Type>(),
        DataType::Int32 => of::<Int32Type>(),
        DataType::Int64 => of::<Int64Type>(),
        DataType::UInt8 => of::<UInt8Type>(),
        DataType::UInt16 => of::<UInt16Type>(),
        DataType::UInt32 => of::<UInt32Type>(),
        DataType::UInt64 => of::<UInt64Type>(),
        DataType::Float32 => of::<Float32Type>(),
        DataType::Float64 => of::<Float64Type>(),
        DataType::Date32 => of::<Date32Type>(),
        DataType::Date64 => of::<Date64Type>(),
        DataType::Timestamp(TimeUnit::Second, _) => of::<TimestampSecondType>(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => of::<TimestampMillisecondType>(),
        DataType::Timestamp(TimeUnit::Microsecond, _) => of::<TimestampMicrosecondType>(),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => of::<TimestampNanosecondType>(),
        _ => None,
    }
}

/// Writes each value of `column` from row `first` on after a byte 1; a null leaves its row's
/// bytes at zero.
fn write<T: ArrowPrimitiveType>(rows: &mut [u8], stride: usize, offset: usize, column: &dyn Array, first: usize)
where
    T::Native: RowBytes,
{
    let width = size_of::<T::Native>();
    let column = column.as_primitive::<T>();
    for (row, (i, value)) in rows.chunks_exact_mut(stride).zip(column.values().iter().enumerate().skip(first)) {
        if column.is_valid(i) {
            row[offset] = 1;
            value.put(&mut row[offset + 1..offset + 1 + width]);
        }
    }
}

/// A string as the id hashes it: its length, then its bytes.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Date32Array, Date64Array, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array, Int64Array,
        StringArray, TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
        TimestampSecondArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
    };
    use arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;

    use super::*;

    fn batch(hosts: Vec<Option<&str>>, values: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(hosts)), Arc::new(Int64Array::from(values))])
            .unwrap()
    }

    #[test]
    fn same_rows_same_id_regardless_of_layout() {
        let a = batch(vec![Some("a"), None, Some("c")], vec![1, 2, 3]);
        let wide = batch(vec![Some("x"), Some("a"), None, Some("c")], vec![0, 1, 2, 3]).slice(1, 3);
        assert_eq!(block_id("t", "all", &a, None).unwrap(), block_id("t", "all", &wide, None).unwrap());
    }

    #[test]
    fn any_difference_changes_the_id() {
        let a = block_id("t", "all", &batch(vec![Some("a"), Some("b")], vec![1, 2]), None).unwrap();
        let reordered = block_id("t", "all", &batch(vec![Some("b"), Some("a")], vec![2, 1]), None).unwrap();
        let other_table = block_id("u", "all", &batch(vec![Some("a"), Some("b")], vec![1, 2]), None).unwrap();
        let null = block_id("t", "all", &batch(vec![Some("a"), None], vec![1, 2]), None).unwrap();
        assert_ne!(a, reordered);
        assert_ne!(a, other_table);
        assert_ne!(a, null);
    }

    /// Block ids are compared across nodes and versions (a retry after an upgrade must still
    /// be recognised), so the bytes hashed must never change.
    #[test]
    fn ids_are_stable_across_versions() {
        let rows = batch(vec![Some("a"), None, Some("c")], vec![1, 2, 3]);
        assert_eq!(
            block_id("t", "all", &rows, None).unwrap(),
            "696603a3534e2e8df52c00aef978ab347c953ff2489a8672d6386edf9ecfa7bc"
        );
        let many =
            batch((0..10_000).map(|i| Some(if i % 2 == 0 { "even" } else { "odd" })).collect(), (0..10_000).collect());
        assert_eq!(
            block_id("t", "202401", &many, None).unwrap(),
            "a12826c67bda9baf043460f879854f32cb083c63a1ed43d3cb564472155b06f5"
        );
    }

    /// A column of the `kind`-th type `hash_fixed_width_rows` writes, from raw values (null
    /// where the flag is false).
    fn fixed_width_column(kind: usize, values: &[(bool, u64)]) -> ArrayRef {
        macro_rules! column {
            ($array:ty, $native:ty) => {
                Arc::new(<$array>::from_iter(values.iter().map(|&(valid, raw)| valid.then_some(raw as $native))))
            };
        }
        match kind % FIXED_WIDTH_KINDS {
            0 => column!(Int8Array, i8),
            1 => column!(Int16Array, i16),
            2 => column!(Int32Array, i32),
            3 => column!(Int64Array, i64),
            4 => column!(UInt8Array, u8),
            5 => column!(UInt16Array, u16),
            6 => column!(UInt32Array, u32),
            7 => column!(UInt64Array, u64),
            8 => Arc::new(Float32Array::from_iter(
                values.iter().map(|&(valid, raw)| valid.then_some(f32::from_bits(raw as u32))),
            )),
            9 => Arc::new(Float64Array::from_iter(
                values.iter().map(|&(valid, raw)| valid.then_some(f64::from_bits(raw))),
            )),
            10 => column!(Date32Array, i32),
            11 => column!(Date64Array, i64),
            12 => column!(TimestampSecondArray, i64),
            13 => column!(TimestampMillisecondArray, i64),
            14 => column!(TimestampMicrosecondArray, i64),
            _ => Arc::new(
                TimestampNanosecondArray::from_iter(values.iter().map(|&(valid, raw)| valid.then_some(raw as i64)))
                    .with_timezone("UTC"),
            ),
        }
    }

    const FIXED_WIDTH_KINDS: usize = 16;

    /// Floats' raw values: their edge cases as often as any other bits.
    fn raw_value() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            proptest::sample::select(vec![
                0,
                (-0.0_f64).to_bits(),
                f64::NAN.to_bits(),
                (-f64::NAN).to_bits(),
                f64::INFINITY.to_bits(),
                f64::NEG_INFINITY.to_bits(),
                u64::from((-0.0_f32).to_bits()),
                u64::from(f32::NAN.to_bits()),
                u64::from((-f32::NAN).to_bits()),
                u64::MAX,
                1 << 63,
            ]),
        ]
    }

    /// The id through Arrow's row converter, as every block was hashed before the fixed-width
    /// rows were written directly.
    fn converted_id(batch: &RecordBatch) -> blake3::Hash {
        let converter =
            RowConverter::new(batch.schema().fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())
                .unwrap();
        let mut hasher = blake3::Hasher::new();
        hash_converted_rows(&mut hasher, b"header".to_vec(), &converter, batch).unwrap();
        hasher.finalize()
    }

    fn fixed_width_id(batch: &RecordBatch) -> blake3::Hash {
        let columns: Vec<(usize, WriteColumn)> =
            batch.schema().fields().iter().map(|f| fixed_width_writer(f.data_type()).unwrap()).collect();
        let mut hasher = blake3::Hasher::new();
        hash_fixed_width_rows(&mut hasher, b"header".to_vec(), batch, &FixedWidthRows::of(columns));
        hasher.finalize()
    }

    fn fixed_width_batch(kinds: &[usize], rows: &[(bool, u64)]) -> RecordBatch {
        let columns: Vec<ArrayRef> = kinds.iter().map(|&kind| fixed_width_column(kind, rows)).collect();
        let fields: Vec<Field> =
            columns.iter().enumerate().map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true)).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Rows written straight from the arrays hash as the row converter's rows do, for every
        /// type written that way, nulls and floats' edge cases included, from any offset.
        #[test]
        fn fixed_width_rows_hash_as_converted_rows(
            kinds in proptest::collection::vec(0..FIXED_WIDTH_KINDS, 1..6),
            rows in proptest::collection::vec((any::<bool>(), raw_value()), 0..40),
            offset in 0_usize..3,
        ) {
            let batch = fixed_width_batch(&kinds, &rows);
            let batch = batch.slice(offset.min(batch.num_rows()), batch.num_rows().saturating_sub(offset));
            prop_assert_eq!(fixed_width_id(&batch), converted_id(&batch));
        }
    }

    #[test]
    fn fixed_width_rows_hash_as_converted_rows_across_buffers() {
        let rows: Vec<(bool, u64)> =
            (0..20_000_u64).map(|i| (i % 7 != 0, i.wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect();
        let batch = fixed_width_batch(&(0..FIXED_WIDTH_KINDS).collect::<Vec<_>>(), &rows);
        assert!(batch.num_rows() * 100 > 2 * HASH_BUFFER_BYTES, "several buffers' worth");
        assert_eq!(fixed_width_id(&batch), converted_id(&batch));
        let hasher = BlockHasher::new(batch.schema_ref()).unwrap();
        assert!(hasher.fixed_width.is_some(), "every kind is written directly");
    }

    /// The ids of blocks of numbers and times, which are hashed without the row converter, are
    /// the ids they had through it.
    #[test]
    fn fixed_width_ids_are_stable_across_versions() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(arrow::datatypes::TimeUnit::Second, None), false),
            Field::new("id", DataType::UInt64, false),
            Field::new("v", DataType::Float64, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampSecondArray::from(vec![1_705_312_801, 1_705_312_802, 1_705_312_803])),
                Arc::new(UInt64Array::from(vec![1, 2, u64::MAX])),
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-0.0)])),
            ],
        )
        .unwrap();
        assert_eq!(
            block_id("t", "202401", &rows, None).unwrap(),
            "adf4481c5a1b434d0fd9c48d6603ad6a62eb36c321f297e0a45947a463b8c573"
        );
    }

    #[test]
    fn a_hasher_refuses_a_block_of_another_schema() {
        let hasher = BlockHasher::new(batch(vec![Some("a")], vec![1]).schema_ref()).unwrap();
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        assert!(hasher.hash("t", "all", &other, None).is_err());
    }

    #[test]
    fn token_ids_depend_on_token_and_partition_only() {
        let one = batch(vec![Some("a")], vec![1]);
        let two = batch(vec![Some("b")], vec![2]);
        assert_eq!(block_id("t", "p", &one, Some("k")).unwrap(), block_id("t", "p", &two, Some("k")).unwrap());
        assert_ne!(block_id("t", "p", &one, Some("k")).unwrap(), block_id("t", "q", &one, Some("k")).unwrap());
        // Fixed, as the ids of rows above: computed before the header was gathered into one
        // buffer.
        assert_eq!(
            block_id("t", "202401", &one, Some("retry-7")).unwrap(),
            "8efa6117eb366ebe2704879e5ab994dc492bc903da7038441d0c9c12a15c174b"
        );
    }
}
