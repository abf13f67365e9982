//! ClickHouse's binary formats over HTTP: `Native` (column blocks, the default of
//! clickhouse-connect and of the Go client) and `RowBinary` / `RowBinaryWithNamesAndTypes`
//! (rows of little-endian values), in and out.
//!
//! Decoding never trusts a length: every count is checked against the bytes that are really
//! left before anything is allocated for it, so a body cannot make the decoder allocate more
//! than a small multiple of its own size.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringBuilder, UInt64Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef, TimeUnit};

use super::Budget;
use super::clickhouse_type::ClickHouseType;
use super::values::{Column, write_varint};
use crate::error::NodeError;

/// Most columns a Native block or a RowBinaryWithNamesAndTypes header may declare.
const MAX_COLUMNS: u64 = 10_000;

/// Most blocks one Native body may hold: each becomes a batch until they are joined, and a
/// body of millions of two-byte empty blocks must not become millions of batches. Clients send
/// blocks of tens of thousands of rows.
const MAX_BLOCKS: u64 = 100_000;

/// A cursor over a body that refuses to read past its end.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.data.len());
        match end.and_then(|end| self.data.get(self.pos..end).map(|bytes| (end, bytes))) {
            Some((end, bytes)) => {
                self.pos = end;
                Ok(bytes)
            }
            None => {
                Err(format!("the body ends {} bytes too early (at byte {})", n - self.remaining(), self.data.len()))
            }
        }
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| "short read".to_string())
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.fixed::<1>()?[0])
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("a variable-length integer at byte {} runs over 10 bytes", self.pos))
    }

    fn string(&mut self) -> Result<&'a str, String> {
        let len = self.varint()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= self.remaining())
            .ok_or_else(|| format!("a string claims {len} bytes but only {} are left in the body", self.remaining()))?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| "a string is not valid UTF-8 (tandem's String holds text)".to_string())
    }
}

/// Values of one input column as they are read, in a shape per kind of type.
struct ColumnBuilder {
    ty: ClickHouseType,
    /// `Some` for Nullable: true where the value is present.
    valid: Option<Vec<bool>>,
    data: Data,
}

enum Data {
    Signed(Vec<i64>),
    Unsigned(Vec<u64>),
    Float(Vec<f64>),
    Bool(Vec<bool>),
    Text(StringBuilder),
}

impl ColumnBuilder {
    fn new(ty: ClickHouseType, capacity: usize) -> Result<Self, String> {
        let (valid, base) = match &ty {
            ClickHouseType::Nullable(inner) => (Some(Vec::with_capacity(capacity)), inner.as_ref()),
            other => (None, other),
        };
        let data = match base {
            ClickHouseType::UInt8 | ClickHouseType::UInt16 | ClickHouseType::UInt32 | ClickHouseType::UInt64 => {
                Data::Unsigned(Vec::with_capacity(capacity))
            }
            ClickHouseType::Float32 | ClickHouseType::Float64 => Data::Float(Vec::with_capacity(capacity)),
            ClickHouseType::Bool => Data::Bool(Vec::with_capacity(capacity)),
            ClickHouseType::String | ClickHouseType::FixedString(_) => {
                Data::Text(StringBuilder::with_capacity(capacity, 0))
            }
            ClickHouseType::Array(_) => {
                return Err(format!("{ty} values cannot be inserted: tandem tables have no Array columns"));
            }
            ClickHouseType::Nullable(_) => return Err(format!("{ty} is not a valid type")),
            _ => Data::Signed(Vec::with_capacity(capacity)),
        };
        Ok(ColumnBuilder { ty, valid, data })
    }

    fn base(&self) -> &ClickHouseType {
        match &self.ty {
            ClickHouseType::Nullable(inner) => inner,
            other => other,
        }
    }

    /// Reads one non-null value (or a Nullable's placeholder) of the base type.
    fn read_value(&mut self, reader: &mut Reader<'_>) -> Result<(), String> {
        let base = match &self.ty {
            ClickHouseType::Nullable(inner) => inner.as_ref(),
            other => other,
        };
        match (&mut self.data, base) {
            (Data::Signed(values), ty) => values.push(match ty {
                ClickHouseType::Int8 => i64::from(i8::from_le_bytes(reader.fixed()?)),
                ClickHouseType::Int16 => i64::from(i16::from_le_bytes(reader.fixed()?)),
                ClickHouseType::Int32 | ClickHouseType::Date32 => i64::from(i32::from_le_bytes(reader.fixed()?)),
                ClickHouseType::Date => i64::from(u16::from_le_bytes(reader.fixed()?)),
                ClickHouseType::DateTime(_) => i64::from(u32::from_le_bytes(reader.fixed()?)),
                ClickHouseType::DateTime64(precision, _) => {
                    let ticks = i64::from_le_bytes(reader.fixed()?);
                    // Arrow has units of 10^-0/3/6/9 s: DateTime64(1) ticks become milliseconds.
                    let digits: u8 = match ClickHouseType::unit_of_precision(*precision) {
                        TimeUnit::Second => 0,
                        TimeUnit::Millisecond => 3,
                        TimeUnit::Microsecond => 6,
                        TimeUnit::Nanosecond => 9,
                    };
                    let scale = 10i64.pow(u32::from(digits.saturating_sub(*precision)));
                    ticks.checked_mul(scale).ok_or_else(|| format!("the DateTime64 value {ticks} overflows"))?
                }
                _ => i64::from_le_bytes(reader.fixed()?),
            }),
            (Data::Unsigned(values), ty) => values.push(match ty {
                ClickHouseType::UInt8 => u64::from(reader.u8()?),
                ClickHouseType::UInt16 => u64::from(u16::from_le_bytes(reader.fixed()?)),
                ClickHouseType::UInt32 => u64::from(u32::from_le_bytes(reader.fixed()?)),
                _ => u64::from_le_bytes(reader.fixed()?),
            }),
            (Data::Float(values), ClickHouseType::Float32) => {
                values.push(f64::from(f32::from_le_bytes(reader.fixed()?)))
            }
            (Data::Float(values), _) => values.push(f64::from_le_bytes(reader.fixed()?)),
            (Data::Bool(values), _) => values.push(reader.u8()? != 0),
            (Data::Text(values), ClickHouseType::FixedString(n)) => {
                let bytes = reader.take(*n)?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| "a FixedString is not valid UTF-8 (tandem's String holds text)".to_string())?;
                values.append_value(text);
            }
            (Data::Text(values), _) => values.append_value(reader.string()?),
        }
        Ok(())
    }

    /// The smallest number of bytes one value takes, to check a row count against the body
    /// before reading.
    fn min_value_bytes(&self) -> usize {
        match self.base() {
            ClickHouseType::Int8 | ClickHouseType::UInt8 | ClickHouseType::Bool | ClickHouseType::String => 1,
            ClickHouseType::Int16 | ClickHouseType::UInt16 | ClickHouseType::Date => 2,
            ClickHouseType::Int32
            | ClickHouseType::UInt32
            | ClickHouseType::Float32
            | ClickHouseType::Date32
            | ClickHouseType::DateTime(_) => 4,
            ClickHouseType::FixedString(n) => (*n).max(1),
            _ => 8,
        }
    }

    fn finish(self) -> Result<ArrayRef, NodeError> {
        let nulls = self.valid.map(NullBuffer::from);
        let base = match &self.ty {
            ClickHouseType::Nullable(inner) => inner.as_ref().clone(),
            other => other.clone(),
        };
        let array: ArrayRef = match self.data {
            Data::Signed(values) => match base {
                ClickHouseType::Date | ClickHouseType::Date32 => {
                    let days = values.into_iter().map(|d| i32::try_from(d).unwrap_or(i32::MAX)).collect::<Vec<_>>();
                    Arc::new(Date32Array::new(days.into(), nulls))
                }
                _ => Arc::new(Int64Array::new(values.into(), nulls)),
            },
            Data::Unsigned(values) => Arc::new(UInt64Array::new(values.into(), nulls)),
            Data::Float(values) => Arc::new(Float64Array::new(values.into(), nulls)),
            Data::Bool(values) => Arc::new(BooleanArray::new(values.into(), nulls)),
            Data::Text(mut values) => {
                let array = values.finish();
                let (offsets, bytes, _) = array.into_parts();
                Arc::new(
                    datafusion::arrow::array::StringArray::try_new(offsets, bytes, nulls)
                        .map_err(NodeError::internal)?,
                )
            }
        };
        // Same values, the type's own Arrow type (Int64 -> Int8, ticks -> timestamps).
        let target = base.arrow();
        if array.data_type() == &target {
            return Ok(array);
        }
        cast_with_options(&array, &target, &CastOptions { safe: false, ..Default::default() })
            .map_err(NodeError::internal)
    }
}

/// Decodes a `Native` body: blocks of `columns, rows, (name, type, values)*`, to one batch
/// whose columns are named as the blocks name them.
pub fn decode_native(data: &[u8], budget: &Budget) -> Result<RecordBatch, NodeError> {
    let mut reader = Reader::new(data);
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut block = 0u64;
    let mut rows_total = 0u64;
    let mut bytes_total = 0u64;
    while !reader.is_empty() {
        block += 1;
        if block > MAX_BLOCKS {
            return Err(NodeError::InsertTooLarge(format!(
                "the Native body holds more than {MAX_BLOCKS} blocks; send fewer, larger blocks"
            )));
        }
        let bad = |what: String| NodeError::bad_request(format!("malformed Native body, block {block}: {what}"));
        let columns = reader.varint().map_err(bad)?;
        let rows = reader.varint().map_err(bad)?;
        if columns > MAX_COLUMNS {
            return Err(bad(format!("it declares {columns} columns; at most {MAX_COLUMNS} are accepted")));
        }
        rows_total = rows_total.saturating_add(rows);
        budget.check_rows(rows_total)?;
        let rows = usize::try_from(rows).map_err(|_| bad(format!("{rows} rows")))?;
        let mut fields = Vec::new();
        let mut arrays = Vec::new();
        for _ in 0..columns {
            let name = reader.string().map_err(bad)?.to_string();
            let type_name = reader.string().map_err(bad)?;
            let ty = ClickHouseType::parse(type_name)
                .map_err(|e| bad(format!("column `{name}`: {}", e.to_string().trim_end())))?;
            let column_error = |what: String| bad(format!("column `{name}` ({ty}): {what}"));
            let mut builder = ColumnBuilder::new(ty.clone(), 0).map_err(column_error)?;
            let null_map_bytes = if builder.valid.is_some() { rows } else { 0 };
            let least = rows.saturating_mul(builder.min_value_bytes()).saturating_add(null_map_bytes);
            if least > reader.remaining() {
                return Err(column_error(format!(
                    "{rows} rows need at least {least} bytes but only {} are left",
                    reader.remaining()
                )));
            }
            builder = ColumnBuilder::new(ty.clone(), rows).map_err(column_error)?;
            if let Some(valid) = builder.valid.as_mut() {
                let map = reader.take(rows).map_err(column_error)?;
                valid.extend(map.iter().map(|null| *null == 0));
            }
            for row in 0..rows {
                builder.read_value(&mut reader).map_err(|e| column_error(format!("row {}: {e}", row + 1)))?;
            }
            fields.push(Field::new(name, ty.arrow(), ty.is_nullable()));
            arrays.push(builder.finish()?);
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new_with_options(
            schema,
            arrays,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| bad(e.to_string()))?;
        // The blocks decoded so far, not only this one, are held until they are joined.
        bytes_total = bytes_total.saturating_add(batch.get_array_memory_size() as u64);
        budget.check_bytes(bytes_total)?;
        if let Some(first) = batches.first()
            && first.schema().fields() != batch.schema().fields()
        {
            return Err(bad("its columns differ from the first block's".to_string()));
        }
        batches.push(batch);
    }
    let Some(first) = batches.first() else {
        return Ok(RecordBatch::new_empty(Arc::new(Schema::empty())));
    };
    concat_batches(&first.schema(), &batches).map_err(NodeError::internal)
}

/// Decodes `RowBinary` rows of the given columns and types, or, with `with_header`, the
/// `RowBinaryWithNamesAndTypes` header first (which then says the columns and their types).
pub fn decode_row_binary(
    data: &[u8],
    mut columns: Vec<(String, ClickHouseType)>,
    with_header: bool,
    budget: &Budget,
) -> Result<RecordBatch, NodeError> {
    let mut reader = Reader::new(data);
    let bad = |what: String| NodeError::bad_request(format!("malformed RowBinary body: {what}"));
    if with_header {
        let count = reader.varint().map_err(bad)?;
        if count > MAX_COLUMNS {
            return Err(bad(format!("the header declares {count} columns; at most {MAX_COLUMNS} are accepted")));
        }
        let mut names = Vec::new();
        for _ in 0..count {
            names.push(reader.string().map_err(bad)?.to_string());
        }
        columns = Vec::with_capacity(names.len());
        for name in names {
            let type_name = reader.string().map_err(bad)?;
            let ty = ClickHouseType::parse(type_name)
                .map_err(|e| bad(format!("column `{name}`: {}", e.to_string().trim_end())))?;
            columns.push((name, ty));
        }
    }
    let mut builders = Vec::with_capacity(columns.len());
    for (name, ty) in &columns {
        builders.push(ColumnBuilder::new(ty.clone(), 0).map_err(|e| bad(format!("column `{name}`: {e}")))?);
    }
    let mut rows = 0u64;
    while !reader.is_empty() {
        if builders.is_empty() {
            return Err(bad("rows for no columns".to_string()));
        }
        rows += 1;
        budget.check_rows(rows)?;
        for ((name, ty), builder) in columns.iter().zip(builders.iter_mut()) {
            let at = |e: String| bad(format!("row {rows}, column `{name}` ({ty}): {e}"));
            if let Some(valid) = builder.valid.as_mut() {
                let null = reader.u8().map_err(at)? != 0;
                valid.push(!null);
                if null {
                    builder.push_placeholder();
                    continue;
                }
            }
            builder.read_value(&mut reader).map_err(at)?;
        }
    }
    let fields: Vec<Field> = columns.iter().map(|(name, ty)| Field::new(name, ty.arrow(), ty.is_nullable())).collect();
    let arrays = builders.into_iter().map(ColumnBuilder::finish).collect::<Result<Vec<_>, _>>()?;
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new_with_options(
        schema,
        arrays,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows as usize)),
    )
    .map_err(|e| bad(e.to_string()))?;
    budget.check_bytes(batch.get_array_memory_size() as u64)?;
    Ok(batch)
}

impl ColumnBuilder {
    /// The value slot of a NULL in RowBinary (which sends nothing for it).
    fn push_placeholder(&mut self) {
        match &mut self.data {
            Data::Signed(values) => values.push(0),
            Data::Unsigned(values) => values.push(0),
            Data::Float(values) => values.push(0.0),
            Data::Bool(values) => values.push(false),
            Data::Text(values) => values.append_value(""),
        }
    }
}

/// The columns of a result batch, prepared for the binary writers.
fn prepare(schema: &SchemaRef, batch: &RecordBatch) -> Result<Vec<Column>, NodeError> {
    schema.fields().iter().zip(batch.columns()).map(|(field, array)| Column::of_field(field, array)).collect()
}

/// One result batch as one Native block.
pub fn encode_native_block(schema: &SchemaRef, batch: &RecordBatch) -> Result<Vec<u8>, NodeError> {
    let columns = prepare(schema, batch)?;
    let mut out = Vec::new();
    write_varint(columns.len() as u64, &mut out);
    write_varint(batch.num_rows() as u64, &mut out);
    for (field, column) in schema.fields().iter().zip(&columns) {
        write_string(field.name(), &mut out);
        write_string(&column.ty.to_string(), &mut out);
        column.write_native(&mut out)?;
    }
    Ok(out)
}

/// The header of RowBinaryWithNamesAndTypes: the column count, the names, the types.
pub fn row_binary_header(schema: &SchemaRef) -> Vec<u8> {
    let mut out = Vec::new();
    write_varint(schema.fields().len() as u64, &mut out);
    for field in schema.fields() {
        write_string(field.name(), &mut out);
    }
    for field in schema.fields() {
        write_string(&ClickHouseType::of_field(field).to_string(), &mut out);
    }
    out
}

/// One result batch as RowBinary rows.
pub fn encode_row_binary(schema: &SchemaRef, batch: &RecordBatch) -> Result<Vec<u8>, NodeError> {
    let columns = prepare(schema, batch)?;
    let mut out = Vec::new();
    for row in 0..batch.num_rows() {
        for column in &columns {
            column.write_row_binary(row, &mut out)?;
        }
    }
    Ok(out)
}

fn write_string(text: &str, out: &mut Vec<u8>) {
    write_varint(text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

/// The type each column of an insert travels as in RowBinary (which has no header).
pub fn row_binary_columns(
    def: &tandem_replica::schema::TableDef,
    names: Option<&[String]>,
) -> Result<Vec<(String, ClickHouseType)>, NodeError> {
    match names {
        None => Ok(def.columns.iter().map(|c| (c.name.clone(), ClickHouseType::of_column(c))).collect()),
        Some(names) => names
            .iter()
            .map(|name| {
                def.column(name)
                    .map(|c| (c.name.clone(), ClickHouseType::of_column(c)))
                    .ok_or_else(|| NodeError::bad_request(format!("table `{}` has no column `{name}`", def.name)))
            })
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use datafusion::arrow::array::{Array, StringArray};
    use datafusion::arrow::datatypes::DataType;
    use proptest::prelude::*;

    use super::*;

    fn budget() -> Budget {
        Budget { max_rows: 1_000_000, max_bytes: 1 << 30 }
    }

    fn sample() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), false),
            Field::new("day", DataType::Date32, false),
            Field::new("v", DataType::Float32, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from(vec![1, u64::MAX])),
                Arc::new(StringArray::from(vec![Some("a\tb"), None])),
                Arc::new(datafusion::arrow::array::TimestampSecondArray::from(vec![0, 1_700_000_000])),
                Arc::new(Date32Array::from(vec![0, 19_000])),
                Arc::new(datafusion::arrow::array::Float32Array::from(vec![None, Some(1.5)])),
            ],
        )
        .unwrap()
    }

    /// What the decoders give back, cast to the sample's types (Date32 and Float32 stay).
    fn same_values(decoded: &RecordBatch, original: &RecordBatch) {
        assert_eq!(decoded.num_rows(), original.num_rows());
        for (column, expected) in decoded.columns().iter().zip(original.columns()) {
            let column = cast_with_options(column, expected.data_type(), &CastOptions::default()).unwrap();
            assert_eq!(column.to_data(), expected.to_data());
        }
    }

    #[test]
    fn native_round_trips() {
        let batch = sample();
        let mut body = encode_native_block(&batch.schema(), &batch).unwrap();
        body.extend(encode_native_block(&batch.schema(), &batch).unwrap());
        let decoded = decode_native(&body, &budget()).unwrap();
        let doubled = concat_batches(&batch.schema(), &[batch.clone(), batch.clone()]).unwrap();
        same_values(&decoded, &doubled);
        assert!(decoded.column(1).is_null(1));
    }

    #[test]
    fn row_binary_round_trips_with_and_without_header() {
        let batch = sample();
        let mut body = row_binary_header(&batch.schema());
        body.extend(encode_row_binary(&batch.schema(), &batch).unwrap());
        same_values(&decode_row_binary(&body, Vec::new(), true, &budget()).unwrap(), &batch);
        let columns = batch.schema().fields().iter().map(|f| (f.name().clone(), ClickHouseType::of_field(f))).collect();
        let rows = encode_row_binary(&batch.schema(), &batch).unwrap();
        same_values(&decode_row_binary(&rows, columns, false, &budget()).unwrap(), &batch);
    }

    #[test]
    fn a_lying_row_count_is_refused_before_allocating() {
        let mut body = Vec::new();
        write_varint(1, &mut body);
        write_varint(1 << 40, &mut body);
        write_string("x", &mut body);
        write_string("UInt64", &mut body);
        let error = decode_native(&body, &Budget { max_rows: u64::MAX, max_bytes: u64::MAX }).unwrap_err();
        // Refused as malformed, before any column is allocated; the message says why.
        assert!(matches!(error, NodeError::BadRequest(_)), "{error}");
        assert!(error.to_string().contains("need at least"), "{error}");
        let error = decode_native(&body, &budget()).unwrap_err();
        assert!(matches!(error, NodeError::InsertTooLarge(_)), "{error}");
    }

    #[test]
    fn a_body_of_countless_empty_blocks_is_refused() {
        let body = [0u8, 0].repeat(MAX_BLOCKS as usize + 1);
        let error = decode_native(&body, &budget()).unwrap_err();
        assert!(matches!(error, NodeError::InsertTooLarge(_)), "{error}");
        assert!(decode_native(&[0u8, 0].repeat(10), &budget()).is_ok(), "a few empty blocks are an empty insert");
    }

    #[test]
    fn truncated_bodies_name_the_column_and_row() {
        let batch = sample();
        let body = encode_native_block(&batch.schema(), &batch).unwrap();
        let error = decode_native(&body[..body.len() - 3], &budget()).unwrap_err();
        // The message is what the user gets to find the bad value: it must name it.
        assert!(matches!(error, NodeError::BadRequest(_)) && error.to_string().contains("column `v`"), "{error}");
        let rows = encode_row_binary(&batch.schema(), &batch).unwrap();
        let columns = batch.schema().fields().iter().map(|f| (f.name().clone(), ClickHouseType::of_field(f))).collect();
        let error = decode_row_binary(&rows[..rows.len() - 1], columns, false, &budget()).unwrap_err();
        assert!(
            matches!(error, NodeError::BadRequest(_)) && error.to_string().contains("row 2, column `v`"),
            "{error}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_native(&body, &budget());
            let _ = decode_row_binary(&body, Vec::new(), true, &budget());
        }
    }
}
