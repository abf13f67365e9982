//! Input and output formats in ClickHouse's naming: rows in (the JSON family, CSV, TSV, Native,
//! RowBinary, Parquet, Arrow) become Arrow batches in the table's schema, with errors that name
//! the line or row, the column and the types; query results go out in the format asked for.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches, is_not_null};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

use crate::error::NodeError;
use tandem_replica::schema::{ColumnType, TableDef};

mod binary;
pub mod clickhouse_type;
mod delimited;
mod encode;
mod guard;
mod infer;
mod json;
mod plain_number;
mod pretty;
mod timestamp_text;
pub mod values;

pub use delimited::unescape_tsv;
pub use encode::{Encoder, OutputOptions, encode};
pub use guard::Budget;
pub use infer::new_columns;

/// A format of ClickHouse's that tandem reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonEachRow,
    Json,
    JsonCompact,
    JsonCompactEachRow,
    JsonStringsEachRow,
    Csv,
    CsvWithNames,
    TabSeparated,
    TabSeparatedWithNames,
    Native,
    RowBinary,
    RowBinaryWithNamesAndTypes,
    Pretty,
    PrettyCompact,
    Vertical,
    Null,
    Parquet,
    Arrow,
    ArrowStream,
}

pub const FORMAT_NAMES: &str = "JSONEachRow, JSON, JSONCompact, JSONCompactEachRow, JSONStringsEachRow, CSV, \
     CSVWithNames, TabSeparated (TSV), TabSeparatedWithNames (TSVWithNames), Native, RowBinary, \
     RowBinaryWithNamesAndTypes, Parquet, Arrow, ArrowStream, and for output only Pretty, PrettyCompact, Vertical, Null";

impl Format {
    /// Format names are matched without regard to case, with ClickHouse's aliases.
    pub fn parse(name: &str) -> Result<Format, NodeError> {
        // Compared in place rather than on a lower-cased copy: every insert names its format.
        const NAMES: &[(&str, Format)] = &[
            ("TabSeparated", Format::TabSeparated),
            ("TSV", Format::TabSeparated),
            ("JSONEachRow", Format::JsonEachRow),
            ("JSONLines", Format::JsonEachRow),
            ("NDJSON", Format::JsonEachRow),
            ("JSON", Format::Json),
            ("JSONCompact", Format::JsonCompact),
            ("JSONCompactEachRow", Format::JsonCompactEachRow),
            ("JSONStringsEachRow", Format::JsonStringsEachRow),
            ("CSV", Format::Csv),
            ("CSVWithNames", Format::CsvWithNames),
            ("TabSeparatedWithNames", Format::TabSeparatedWithNames),
            ("TSVWithNames", Format::TabSeparatedWithNames),
            ("Native", Format::Native),
            ("RowBinary", Format::RowBinary),
            ("RowBinaryWithNamesAndTypes", Format::RowBinaryWithNamesAndTypes),
            ("Pretty", Format::Pretty),
            ("PrettyCompact", Format::PrettyCompact),
            ("Vertical", Format::Vertical),
            ("Null", Format::Null),
            ("Parquet", Format::Parquet),
            ("Arrow", Format::Arrow),
            ("ArrowStream", Format::ArrowStream),
        ];
        match NAMES.iter().find(|(known, _)| known.eq_ignore_ascii_case(name)) {
            Some(&(_, format)) => Ok(format),
            None => Err(NodeError::bad_request(format!(
                "unknown format `{}`; supported: {FORMAT_NAMES}",
                truncate(name, 60)
            ))),
        }
    }

    /// The format's name as ClickHouse spells it (sent as `X-ClickHouse-Format`).
    pub fn name(self) -> &'static str {
        match self {
            Format::JsonEachRow => "JSONEachRow",
            Format::Json => "JSON",
            Format::JsonCompact => "JSONCompact",
            Format::JsonCompactEachRow => "JSONCompactEachRow",
            Format::JsonStringsEachRow => "JSONStringsEachRow",
            Format::Csv => "CSV",
            Format::CsvWithNames => "CSVWithNames",
            Format::TabSeparated => "TabSeparated",
            Format::TabSeparatedWithNames => "TabSeparatedWithNames",
            Format::Native => "Native",
            Format::RowBinary => "RowBinary",
            Format::RowBinaryWithNamesAndTypes => "RowBinaryWithNamesAndTypes",
            Format::Pretty => "Pretty",
            Format::PrettyCompact => "PrettyCompact",
            Format::Vertical => "Vertical",
            Format::Null => "Null",
            Format::Parquet => "Parquet",
            Format::Arrow => "Arrow",
            Format::ArrowStream => "ArrowStream",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::JsonEachRow | Format::JsonCompactEachRow | Format::JsonStringsEachRow => {
                "application/x-ndjson; charset=utf-8"
            }
            Format::Json | Format::JsonCompact => "application/json; charset=utf-8",
            Format::Csv | Format::CsvWithNames => "text/csv; charset=utf-8",
            Format::TabSeparated | Format::TabSeparatedWithNames => "text/tab-separated-values; charset=utf-8",
            Format::Pretty | Format::PrettyCompact | Format::Vertical | Format::Null => "text/plain; charset=utf-8",
            Format::Native | Format::RowBinary | Format::RowBinaryWithNamesAndTypes => "application/octet-stream",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Arrow => "application/vnd.apache.arrow.file",
            Format::ArrowStream => "application/vnd.apache.arrow.stream",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct InputOptions {
    /// Ignore fields or columns the table does not have instead of refusing the insert.
    pub skip_unknown_fields: bool,
    /// The rows and bytes the body may decode to.
    pub budget: Budget,
}

/// Decodes an insert body into one batch in the table's schema.
///
/// `columns` restricts the input to those table columns (`INSERT INTO t (a, b) ...`); the
/// others get NULL, or their type's default when not Nullable. `table_schema` is
/// `def.arrow_schema()`, built once per definition by the caller. Nothing is stored by this
/// function, so a rejected body changes nothing.
pub fn decode_insert(
    format: Format,
    data: &Bytes,
    def: &TableDef,
    table_schema: &SchemaRef,
    columns: Option<&[String]>,
    options: InputOptions,
) -> Result<RecordBatch, NodeError> {
    let input_schema = match columns {
        Some(names) => {
            let mut fields = Vec::with_capacity(names.len());
            for name in names {
                let field = table_schema.field_with_name(name).map_err(|_| unknown_column(def, name))?;
                fields.push(field.clone());
            }
            Arc::new(Schema::new(fields))
        }
        None => table_schema.clone(),
    };
    let batch = match format {
        Format::JsonEachRow => json::decode_json(data, &input_schema, options, json::Values::Typed)?,
        Format::JsonStringsEachRow => json::decode_json(data, &input_schema, options, json::Values::Text)?,
        Format::JsonCompactEachRow | Format::Json | Format::JsonCompact => {
            let rows = json::as_json_each_row(format, data, &input_schema)?;
            json::decode_json(&rows, &input_schema, options, json::Values::Typed)?
        }
        Format::Csv | Format::CsvWithNames | Format::TabSeparated | Format::TabSeparatedWithNames => {
            delimited::decode_delimited(format, data, &input_schema, def, options)?
        }
        Format::Native => binary::decode_native(data, &options.budget)?,
        Format::RowBinary => {
            binary::decode_row_binary(data, binary::row_binary_columns(def, columns)?, false, &options.budget)?
        }
        Format::RowBinaryWithNamesAndTypes => binary::decode_row_binary(data, Vec::new(), true, &options.budget)?,
        Format::Parquet => {
            let unreadable = |e: datafusion::parquet::errors::ParquetError| {
                NodeError::bad_request(format!("the body is not a readable Parquet file: {e}"))
            };
            // The Arrow schema a Parquet writer may embed is not read: its decoder panics on
            // malformed input, and the Parquet schema says all the table's conversion needs.
            let reader_options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
            let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(data.clone(), reader_options)
                .map_err(unreadable)?;
            // The row count the file declares is checked before any page is decoded; the
            // decoded batches are counted again as they come, in case the footer lies.
            guard::check_parquet_metadata(builder.metadata(), data.len())?;
            let declared = builder.metadata().file_metadata().num_rows();
            options.budget.check_rows(u64::try_from(declared).unwrap_or(u64::MAX))?;
            let reader = builder.with_batch_size(PARQUET_BATCH_ROWS).build().map_err(unreadable)?;
            let batches = guard::contain_panics("Parquet", || {
                options.budget.collect(reader, |e| NodeError::bad_request(format!("cannot read the Parquet body: {e}")))
            })?;
            concat_input(batches)?
        }
        Format::ArrowStream | Format::Arrow => {
            // The Arrow file format is the stream's messages between a magic header and a
            // footer that indexes them: the messages are read as a stream.
            let data = if format == Format::Arrow { guard::arrow_file_messages(data)? } else { data.clone() };
            let data = &data;
            guard::check_ipc_stream(data, &options.budget)?;
            let batches = guard::contain_panics("Arrow IPC", || {
                let reader = StreamReader::try_new(Cursor::new(data.as_ref()), None)
                    .map_err(|e| NodeError::bad_request(format!("the body is not an Arrow IPC stream: {e}")))?;
                options
                    .budget
                    .collect(reader, |e| NodeError::bad_request(format!("cannot read the Arrow IPC stream: {e}")))
            })?;
            concat_input(batches)?
        }
        Format::Pretty | Format::PrettyCompact | Format::Vertical | Format::Null => {
            return Err(NodeError::bad_request(format!(
                "format {} is for output only; insert with JSONEachRow, CSV, Native or another input format",
                format.name()
            )));
        }
    };
    options.budget.check_rows(batch.num_rows() as u64)?;
    options.budget.check_bytes(batch.get_array_memory_size() as u64)?;
    let batch = conform(def, table_schema, batch, options)?;
    check_ranges(&batch)?;
    Ok(batch)
}

/// Rows per batch when decoding Parquet: small, so that a page of repeated long values
/// cannot expand into one huge batch before the budget sees it.
const PARQUET_BATCH_ROWS: usize = 1024;

/// The dates and times a column can hold: 1900-01-01 to 2299-12-31 (ClickHouse's DateTime64
/// range), which every output format can render. A value outside is refused, never clamped.
fn check_ranges(batch: &RecordBatch) -> Result<(), NodeError> {
    use datafusion::arrow::datatypes::{
        Date32Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    const FIRST_SECOND: i64 = -2_208_988_800; // 1900-01-01 00:00:00
    const LAST_SECOND: i64 = 10_413_791_999; // 2299-12-31 23:59:59
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let (per_second, unit) = match field.data_type() {
            DataType::Date32 => (0, "days since 1970-01-01"),
            DataType::Timestamp(TimeUnit::Second, _) => (1, "seconds since 1970"),
            DataType::Timestamp(TimeUnit::Millisecond, _) => (1_000, "milliseconds since 1970"),
            DataType::Timestamp(TimeUnit::Microsecond, _) => (1_000_000, "microseconds since 1970"),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => (1_000_000_000, "nanoseconds since 1970"),
            _ => continue,
        };
        let range = match per_second {
            0 => (FIRST_SECOND / 86_400)..=(LAST_SECOND / 86_400),
            n => FIRST_SECOND.saturating_mul(n)..=LAST_SECOND.saturating_mul(n).saturating_add(n - 1),
        };
        let outside = match field.data_type() {
            DataType::Date32 => first_outside::<Date32Type>(array, &range),
            DataType::Timestamp(TimeUnit::Second, _) => first_outside::<TimestampSecondType>(array, &range),
            DataType::Timestamp(TimeUnit::Millisecond, _) => first_outside::<TimestampMillisecondType>(array, &range),
            DataType::Timestamp(TimeUnit::Microsecond, _) => first_outside::<TimestampMicrosecondType>(array, &range),
            _ => first_outside::<TimestampNanosecondType>(array, &range),
        };
        if let Some((row, value)) = outside {
            return Err(NodeError::bad_request(format!(
                "row {}: column `{}` is {} but the value {value} ({unit}) is outside 1900-01-01 .. 2299-12-31",
                row + 1,
                field.name(),
                ColumnType::name_of_arrow(field.data_type()),
            )));
        }
    }
    Ok(())
}

/// The first row of a date or time column whose value is outside `range`, and the value. The
/// values are read in place (no cast to a new array: this runs on every insert).
fn first_outside<T>(array: &ArrayRef, range: &std::ops::RangeInclusive<i64>) -> Option<(usize, i64)>
where
    T: datafusion::arrow::datatypes::ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::{max, min};
    let values = array.as_primitive_opt::<T>()?;
    let within = |v: Option<T::Native>| v.is_none_or(|v| range.contains(&v.into()));
    if within(min(values)) && within(max(values)) {
        return None;
    }
    values.iter().enumerate().find_map(|(row, v)| v.map(Into::into).filter(|v| !range.contains(v)).map(|v| (row, v)))
}

fn unknown_column(def: &TableDef, name: &str) -> NodeError {
    let known: Vec<_> = def.columns.iter().map(|c| c.name.as_str()).collect();
    NodeError::bad_request(format!(
        "table `{}` has no column `{name}`; its columns are: {}",
        def.name,
        known.join(", ")
    ))
}

fn concat_input(batches: Vec<RecordBatch>) -> Result<RecordBatch, NodeError> {
    let Some(first) = batches.first() else {
        return Ok(RecordBatch::new_empty(Arc::new(Schema::empty())));
    };
    concat_batches(&first.schema(), &batches)
        .map_err(|e| NodeError::bad_request(format!("inconsistent batches in the body: {e}")))
}

/// Casts and completes a decoded batch into the table's schema.
fn conform(
    def: &TableDef,
    table_schema: &SchemaRef,
    batch: RecordBatch,
    options: InputOptions,
) -> Result<RecordBatch, NodeError> {
    let rows = batch.num_rows();
    let input = batch.schema();
    for field in input.fields() {
        if def.column(field.name()).is_none() && !options.skip_unknown_fields {
            return Err(unknown_column(def, field.name()));
        }
    }
    let strict = CastOptions { safe: false, ..Default::default() };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(def.columns.len());
    for column in &def.columns {
        let target = column.column_type.arrow();
        let array = match input.index_of(&column.name) {
            Ok(index) => {
                let array = batch.column(index);
                if array.data_type() == &target {
                    array.clone()
                } else {
                    cast_with_options(array, &target, &strict).map_err(|e| {
                        NodeError::bad_request(format!(
                            "column `{}` is {} but the insert has {} values that do not convert: {e}",
                            column.name,
                            column.type_name(),
                            ColumnType::name_of_arrow(array.data_type())
                        ))
                    })?
                }
            }
            // An omitted column takes its DEFAULT (NULL or the type's zero value without one).
            Err(_) => match &column.default {
                Some(_) => {
                    let invalid =
                        |e: &dyn std::fmt::Display| NodeError::bad_request(format!("column `{}`: {e}", column.name));
                    let value = crate::column_default::fill_value(column).map_err(|e| invalid(&e))?;
                    value.to_array_of_size(rows).map_err(|e| invalid(&e))?
                }
                None => new_null_array(&target, rows),
            },
        };
        let array = if !column.nullable && array.null_count() > 0 { fill_default(&array, column)? } else { array };
        columns.push(array);
    }
    RecordBatch::try_new(table_schema.clone(), columns).map_err(NodeError::internal)
}

/// Replaces NULLs with the type's default, as ClickHouse does for columns that are not Nullable.
fn fill_default(array: &ArrayRef, column: &tandem_replica::schema::ColumnDef) -> Result<ArrayRef, NodeError> {
    let default = crate::column_default::fill_value(column)
        .map_err(|e| NodeError::bad_request(format!("column `{}`: {e}", column.name)))?;
    let mask = is_not_null(array).map_err(NodeError::internal)?;
    let default = default.to_scalar().map_err(NodeError::internal)?;
    zip(&mask, array, &default).map_err(NodeError::internal)
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_string() } else { format!("{}…", s.chars().take(max).collect::<String>()) }
}

/// A one-row UInt8 column of 1 or 0 (ClickHouse's boolean answers, as `EXISTS` gives).
pub fn flag_batch(name: &str, value: bool) -> Result<RecordBatch, NodeError> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::UInt8, false)]));
    let column: ArrayRef = Arc::new(datafusion::arrow::array::UInt8Array::from(vec![u8::from(value)]));
    RecordBatch::try_new(schema, vec![column]).map_err(NodeError::internal)
}

/// A one-column text batch, for SHOW TABLES and similar answers.
pub fn text_batch(columns: &[(&str, Vec<String>)]) -> Result<RecordBatch, NodeError> {
    let schema = Arc::new(Schema::new(
        columns.iter().map(|(name, _)| Field::new(*name, DataType::Utf8, false)).collect::<Vec<_>>(),
    ));
    let arrays = columns.iter().map(|(_, values)| Arc::new(StringArray::from(values.clone())) as ArrayRef).collect();
    RecordBatch::try_new(schema, arrays).map_err(NodeError::internal)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    /// Every name and alias ClickHouse knows, in any case, and nothing else.
    #[test]
    fn format_names_match_without_regard_to_case() {
        let names = [
            ("jsoneachrow", Format::JsonEachRow),
            ("jsonlines", Format::JsonEachRow),
            ("ndjson", Format::JsonEachRow),
            ("json", Format::Json),
            ("jsoncompact", Format::JsonCompact),
            ("jsoncompacteachrow", Format::JsonCompactEachRow),
            ("jsonstringseachrow", Format::JsonStringsEachRow),
            ("csv", Format::Csv),
            ("csvwithnames", Format::CsvWithNames),
            ("tabseparated", Format::TabSeparated),
            ("tsv", Format::TabSeparated),
            ("tabseparatedwithnames", Format::TabSeparatedWithNames),
            ("tsvwithnames", Format::TabSeparatedWithNames),
            ("native", Format::Native),
            ("rowbinary", Format::RowBinary),
            ("rowbinarywithnamesandtypes", Format::RowBinaryWithNamesAndTypes),
            ("pretty", Format::Pretty),
            ("prettycompact", Format::PrettyCompact),
            ("vertical", Format::Vertical),
            ("null", Format::Null),
            ("parquet", Format::Parquet),
            ("arrow", Format::Arrow),
            ("arrowstream", Format::ArrowStream),
        ];
        for (name, format) in names {
            assert_eq!(Format::parse(name).unwrap(), format, "{name}");
            assert_eq!(Format::parse(&name.to_ascii_uppercase()).unwrap(), format, "{name}");
            assert_eq!(Format::parse(format.name()).unwrap(), format, "{}", format.name());
        }
        for unknown in ["", "tab", "TabSeparatedX", "tsv ", "jsoneachrows", "ТSV"] {
            assert!(Format::parse(unknown).is_err(), "{unknown:?}");
        }
    }
}
