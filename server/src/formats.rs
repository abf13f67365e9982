//! Input and output formats in ClickHouse's naming: rows in (JSONEachRow, CSV, TSV, Parquet,
//! ArrowStream) become Arrow batches in the table's schema, with errors that name the line,
//! the column and the types; query results go out in the format asked for.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::borrow::Cow;
use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, StringBuilder, new_null_array};
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches, is_not_null};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::writer::{JsonArray, JsonFormat, LineDelimited};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

use crate::error::NodeError;
use tandem_replica::schema::{ColumnType, TableDef};

mod guard;

pub use guard::Budget;

const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonEachRow,
    Json,
    Csv,
    CsvWithNames,
    TabSeparated,
    TabSeparatedWithNames,
    Parquet,
    ArrowStream,
}

pub const FORMAT_NAMES: &str = "JSONEachRow, JSON (output only), CSV, CSVWithNames, TabSeparated (TSV), \
     TabSeparatedWithNames (TSVWithNames), Parquet, ArrowStream";

impl Format {
    /// Format names are matched without regard to case, with ClickHouse's aliases.
    pub fn parse(name: &str) -> Result<Format, NodeError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "jsoneachrow" | "jsonlines" | "ndjson" => Format::JsonEachRow,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "csvwithnames" => Format::CsvWithNames,
            "tabseparated" | "tsv" => Format::TabSeparated,
            "tabseparatedwithnames" | "tsvwithnames" => Format::TabSeparatedWithNames,
            "parquet" => Format::Parquet,
            "arrowstream" => Format::ArrowStream,
            _ => {
                return Err(NodeError::bad_request(format!("unknown format `{name}`; supported: {FORMAT_NAMES}")));
            }
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::JsonEachRow => "application/x-ndjson; charset=utf-8",
            Format::Json => "application/json; charset=utf-8",
            Format::Csv | Format::CsvWithNames => "text/csv; charset=utf-8",
            Format::TabSeparated | Format::TabSeparatedWithNames => "text/tab-separated-values; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
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
/// others get NULL, or their type's default when not Nullable. Nothing is stored by this
/// function, so a rejected body changes nothing.
pub fn decode_insert(
    format: Format,
    data: &Bytes,
    def: &TableDef,
    columns: Option<&[String]>,
    options: InputOptions,
) -> Result<RecordBatch, NodeError> {
    let table_schema = def.arrow_schema();
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
        Format::JsonEachRow => decode_json(data, &input_schema, options)?,
        Format::Csv | Format::CsvWithNames | Format::TabSeparated | Format::TabSeparatedWithNames => {
            decode_delimited(format, data, &input_schema, def, options)?
        }
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
        Format::ArrowStream => {
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
        Format::Json => {
            return Err(NodeError::bad_request("format JSON is output-only; insert with JSONEachRow"));
        }
    };
    options.budget.check_rows(batch.num_rows() as u64)?;
    options.budget.check_bytes(batch.get_array_memory_size() as u64)?;
    let batch = conform(def, batch, options)?;
    check_ranges(&batch)?;
    Ok(batch)
}

/// Rows per batch when decoding Parquet: small, so that a page of repeated long values
/// cannot expand into one huge batch before the budget sees it.
const PARQUET_BATCH_ROWS: usize = 1024;

/// The dates and times a column can hold: 1900-01-01 to 2299-12-31 (ClickHouse's DateTime64
/// range), which every output format can render. A value outside is refused, never clamped.
fn check_ranges(batch: &RecordBatch) -> Result<(), NodeError> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::{max, min};
    use datafusion::arrow::datatypes::{Int64Type, TimeUnit};
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
        let (first, last) = match per_second {
            0 => (FIRST_SECOND / 86_400, LAST_SECOND / 86_400),
            n => (FIRST_SECOND.saturating_mul(n), LAST_SECOND.saturating_mul(n).saturating_add(n - 1)),
        };
        let raw = cast_with_options(array, &DataType::Int64, &CastOptions::default()).map_err(NodeError::internal)?;
        let raw = raw.as_primitive::<Int64Type>();
        if min(raw).is_none_or(|v| v >= first) && max(raw).is_none_or(|v| v <= last) {
            continue;
        }
        let outside =
            raw.iter().enumerate().find_map(|(row, v)| v.filter(|v| *v < first || *v > last).map(|v| (row, v)));
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
fn conform(def: &TableDef, batch: RecordBatch, options: InputOptions) -> Result<RecordBatch, NodeError> {
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
    RecordBatch::try_new(def.arrow_schema(), columns).map_err(NodeError::internal)
}

/// Replaces NULLs with the type's default, as ClickHouse does for columns that are not Nullable.
fn fill_default(array: &ArrayRef, column: &tandem_replica::schema::ColumnDef) -> Result<ArrayRef, NodeError> {
    let default = crate::column_default::fill_value(column)
        .map_err(|e| NodeError::bad_request(format!("column `{}`: {e}", column.name)))?;
    let mask = is_not_null(array).map_err(NodeError::internal)?;
    let default = default.to_scalar().map_err(NodeError::internal)?;
    zip(&mask, array, &default).map_err(NodeError::internal)
}

fn decode_json(data: &Bytes, schema: &SchemaRef, options: InputOptions) -> Result<RecordBatch, NodeError> {
    use datafusion::arrow::json::ReaderBuilder;
    guard::check_json_depth(data)?;
    // Arrow's JSON tape decoder tolerates some malformed input (a missing comma between
    // fields); a strict syntax pass first makes malformed rows an error with line and column.
    // It also records where each row starts, to name the line of a later conversion error.
    let mut row_offsets = Vec::new();
    let mut rows = serde_json::Deserializer::from_slice(data).into_iter::<serde::de::IgnoredAny>();
    loop {
        let start = rows.byte_offset();
        match rows.next() {
            None => break,
            Some(Ok(_)) => row_offsets.push(start),
            Some(Err(e)) => {
                return Err(NodeError::bad_request(format!(
                    "malformed JSONEachRow at line {}, column {}: {e}",
                    e.line(),
                    e.column()
                )));
            }
        }
    }
    // Arrow's decoder truncates 2.5 into an integer column and clamps a timestamp beyond i64;
    // integers, dates and times are read as text and converted strictly instead.
    let read_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                if f.data_type().is_integer() || f.data_type().is_temporal() {
                    Field::new(f.name(), DataType::Utf8, true)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect::<Vec<_>>(),
    ));
    let mut decoder = ReaderBuilder::new(read_schema.clone())
        .with_strict_mode(!options.skip_unknown_fields)
        .with_coerce_primitive(true)
        .with_batch_size(16 * 1024)
        .build_decoder()
        .map_err(NodeError::internal)?;
    let mut batches = Vec::new();
    let mut rest: &[u8] = data;
    let result: Result<(), datafusion::arrow::error::ArrowError> = (|| {
        while !rest.is_empty() {
            let consumed = decoder.decode(rest)?;
            rest = rest.get(consumed..).unwrap_or_default();
            if let Some(batch) = decoder.flush()? {
                batches.push(batch);
            }
        }
        if let Some(batch) = decoder.flush()? {
            batches.push(batch);
        }
        Ok(())
    })();
    if let Err(e) = result {
        return Err(locate_json_error(data, schema, &e.to_string()));
    }
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let batch = concat_batches(&read_schema, &batches).map_err(NodeError::internal)?;
    // A row's offset is where the previous one ended: its own line starts after the blanks.
    let line_of_row = |row: usize| {
        let offset = row_offsets.get(row).copied().unwrap_or(0);
        let skipped = data.get(offset..).unwrap_or_default().iter().take_while(|b| b.is_ascii_whitespace()).count();
        data.get(..offset + skipped).unwrap_or_default().iter().filter(|&&b| b == b'\n').count() as u64 + 1
    };
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        if array.data_type() == field.data_type() {
            columns.push(array.clone());
        } else {
            columns.push(convert_text(array, field, line_of_row)?);
        }
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(NodeError::internal)
}

/// Converts a text column into `field`'s type; a value that does not convert is an error
/// naming its line, the column and its type.
fn convert_text(text: &ArrayRef, field: &Field, line_of_row: impl Fn(usize) -> u64) -> Result<ArrayRef, NodeError> {
    let mut converted =
        cast_with_options(text, field.data_type(), &CastOptions::default()).map_err(NodeError::internal)?;
    if field.data_type().is_temporal() && converted.null_count() != text.null_count() {
        converted = temporal_numbers(text, &converted, field)?;
    }
    if converted.null_count() != text.null_count() {
        let row = (0..text.len()).find(|&i| text.is_valid(i) && converted.is_null(i)).unwrap_or(0);
        let value = text.as_any().downcast_ref::<StringArray>().map(|s| s.value(row).to_string()).unwrap_or_default();
        return Err(NodeError::bad_request(format!(
            "line {}: column `{}` is {} but the value is {:?}",
            line_of_row(row),
            field.name(),
            ColumnType::name_of_arrow(field.data_type()),
            truncate(&value, 60)
        )));
    }
    Ok(converted)
}

/// Dates and times may also be given as integers in the column's own unit (seconds for
/// DateTime, milliseconds for DateTime64(3), days for Date), as JSON numbers always were: the
/// values that did not parse as text are read as such integers, strictly (an integer beyond
/// 64 bits stays an error).
fn temporal_numbers(text: &ArrayRef, parsed: &ArrayRef, field: &Field) -> Result<ArrayRef, NodeError> {
    let Some(strings) = text.as_any().downcast_ref::<StringArray>() else { return Ok(parsed.clone()) };
    let raw = cast_with_options(parsed, &DataType::Int64, &CastOptions::default()).map_err(NodeError::internal)?;
    let raw = raw
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .ok_or_else(|| NodeError::internal("not Int64"))?;
    let values: datafusion::arrow::array::Int64Array = (0..strings.len())
        .map(|i| match (strings.is_valid(i), raw.is_valid(i)) {
            (false, _) => None,
            (true, true) => Some(raw.value(i)),
            (true, false) => strings.value(i).trim().parse::<i64>().ok(),
        })
        .collect();
    let target = match field.data_type() {
        DataType::Date32 => DataType::Int32,
        other => other.clone(),
    };
    // Safe casts: a day count beyond 32 bits becomes NULL and is reported by the caller.
    let values = cast_with_options(&values, &target, &CastOptions::default()).map_err(NodeError::internal)?;
    cast_with_options(&values, field.data_type(), &CastOptions::default()).map_err(NodeError::internal)
}

/// Arrow's JSON decoder reports what failed but not where: find the first bad line and say
/// which line, which column, and what was wrong with it.
fn locate_json_error(data: &[u8], schema: &SchemaRef, arrow_message: &str) -> NodeError {
    let text = String::from_utf8_lossy(data);
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return NodeError::bad_request(format!(
                    "malformed JSONEachRow at line {line_no}, column {}: {e}",
                    e.column()
                ));
            }
        };
        let Some(object) = value.as_object() else {
            return NodeError::bad_request(format!(
                "malformed JSONEachRow at line {line_no}: each row must be a JSON object"
            ));
        };
        for (key, value) in object {
            let Ok(field) = schema.field_with_name(key) else {
                return NodeError::bad_request(format!(
                    "line {line_no}: the table has no column `{key}` (set input_format_skip_unknown_fields=1 to ignore it)"
                ));
            };
            if let Some(problem) = json_type_problem(field.data_type(), value) {
                return NodeError::bad_request(format!(
                    "line {line_no}: column `{key}` is {} but the value is {problem}",
                    ColumnType::name_of_arrow(field.data_type())
                ));
            }
        }
    }
    NodeError::bad_request(format!("cannot parse JSONEachRow: {arrow_message}"))
}

fn json_type_problem(data_type: &DataType, value: &serde_json::Value) -> Option<String> {
    use serde_json::Value as V;
    let describe = |kind: &str| Some(format!("{kind} {}", truncate(&value.to_string(), 60)));
    match (data_type, value) {
        (_, V::Null) => None,
        (DataType::Utf8, V::String(_)) => None,
        (DataType::Boolean, V::Bool(_)) => None,
        (t, V::Number(n)) if t.is_integer() => {
            if n.is_f64() {
                describe("the fractional number")
            } else {
                None
            }
        }
        (t, V::Number(_)) if t.is_floating() || t.is_temporal() => None,
        (t, V::String(s)) if t.is_numeric() => {
            if s.parse::<f64>().is_ok() {
                None
            } else {
                describe("the string")
            }
        }
        (t, V::String(_)) if t.is_temporal() => None,
        (_, V::String(_)) => describe("the string"),
        (_, V::Number(_)) => describe("the number"),
        (_, V::Bool(_)) => describe("the boolean"),
        (_, V::Array(_)) => describe("the array"),
        (_, V::Object(_)) => describe("the object"),
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_string() } else { format!("{}…", s.chars().take(max).collect::<String>()) }
}

/// CSV and TabSeparated: fields are read as text, then converted column by column, so an error
/// names the line, the column, its type and the text that does not fit.
fn decode_delimited(
    format: Format,
    data: &Bytes,
    input_schema: &SchemaRef,
    def: &TableDef,
    options: InputOptions,
) -> Result<RecordBatch, NodeError> {
    let with_names = matches!(format, Format::CsvWithNames | Format::TabSeparatedWithNames);
    let mut columns = TextColumns::new(input_schema, def, options, with_names);
    if matches!(format, Format::Csv | Format::CsvWithNames) {
        read_csv(data, &mut columns)?;
    } else {
        read_tsv(data, &mut columns)?;
    }
    columns.finish()
}

/// One text builder per target column, filled row by row straight from the input's bytes.
struct TextColumns<'a> {
    input_schema: &'a SchemaRef,
    def: &'a TableDef,
    options: InputOptions,
    /// Per field position: the column it fills (None: skipped unknown column). Unset until the
    /// header is read, with names.
    targets: Option<Vec<Option<TextColumn>>>,
    lines: Vec<u64>,
}

struct TextColumn {
    field: Field,
    is_string: bool,
    text: StringBuilder,
}

impl TextColumn {
    fn new(field: &Field) -> Self {
        TextColumn { field: field.clone(), is_string: field.data_type() == &DataType::Utf8, text: StringBuilder::new() }
    }
}

impl<'a> TextColumns<'a> {
    fn new(input_schema: &'a SchemaRef, def: &'a TableDef, options: InputOptions, with_names: bool) -> Self {
        let targets =
            (!with_names).then(|| input_schema.fields().iter().map(|f| Some(TextColumn::new(f))).collect::<Vec<_>>());
        TextColumns { input_schema, def, options, targets, lines: Vec::new() }
    }

    fn row(&mut self, line: u64, fields: &[Option<Cow<'_, str>>]) -> Result<(), NodeError> {
        let Some(targets) = &mut self.targets else {
            // With names, the header says which column each field is, in any order.
            let mut targets = Vec::with_capacity(fields.len());
            for name in fields {
                let name = name.as_deref().unwrap_or_default();
                match self.input_schema.field_with_name(name) {
                    Ok(field) => targets.push(Some(TextColumn::new(field))),
                    Err(_) if self.options.skip_unknown_fields => targets.push(None),
                    Err(_) => return Err(unknown_column(self.def, name)),
                }
            }
            self.targets = Some(targets);
            return Ok(());
        };
        if fields.len() != targets.len() {
            return Err(NodeError::bad_request(format!(
                "line {line}: expected {} fields, found {}",
                targets.len(),
                fields.len()
            )));
        }
        for (target, value) in targets.iter_mut().zip(fields) {
            let Some(column) = target else { continue };
            match value {
                // An empty field is NULL for every type but String, as in ClickHouse's CSV.
                Some(v) if column.is_string || !v.is_empty() => column.text.append_value(v),
                _ => column.text.append_null(),
            }
        }
        self.lines.push(line);
        Ok(())
    }

    fn finish(self) -> Result<RecordBatch, NodeError> {
        let Some(targets) = self.targets else { return Ok(RecordBatch::new_empty(self.input_schema.clone())) };
        let lines = self.lines;
        let mut fields = Vec::new();
        let mut arrays = Vec::new();
        for mut column in targets.into_iter().flatten() {
            let text: ArrayRef = Arc::new(column.text.finish());
            let array = if column.is_string {
                text
            } else {
                convert_text(&text, &column.field, |row| lines.get(row).copied().unwrap_or(0))?
            };
            fields.push(column.field);
            arrays.push(array);
        }
        let schema = Arc::new(Schema::new(fields));
        let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(lines.len()));
        RecordBatch::try_new_with_options(schema, arrays, &options).map_err(NodeError::internal)
    }
}

fn read_csv(data: &[u8], columns: &mut TextColumns<'_>) -> Result<(), NodeError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(data);
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = record.position().map(|p| p.line()).unwrap_or(0);
                let mut fields = Vec::with_capacity(record.len());
                for (column, field) in record.iter().enumerate() {
                    let text = std::str::from_utf8(field).map_err(|_| {
                        NodeError::bad_request(format!("line {line}, field {}: not valid UTF-8", column + 1))
                    })?;
                    fields.push(if text == "\\N" { None } else { Some(Cow::Borrowed(text)) });
                }
                columns.row(line, &fields)?;
            }
            Err(e) => return Err(NodeError::bad_request(format!("malformed CSV: {e}"))),
        }
    }
}

fn read_tsv(data: &[u8], columns: &mut TextColumns<'_>) -> Result<(), NodeError> {
    let text = std::str::from_utf8(data).map_err(|e| {
        let line = data.get(..e.valid_up_to()).unwrap_or_default().iter().filter(|&&b| b == b'\n').count() + 1;
        NodeError::bad_request(format!("line {line}: not valid UTF-8"))
    })?;
    let mut fields = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        fields.clear();
        for field in line.split('\t') {
            fields.push(unescape_tsv(field).map_err(|e| NodeError::bad_request(format!("line {}: {e}", index + 1)))?);
        }
        columns.row(index as u64 + 1, &fields)?;
    }
    Ok(())
}

/// ClickHouse's TabSeparated escaping: `\N` is NULL; `\t`, `\n`, `\\` and friends are escapes.
fn unescape_tsv(field: &str) -> Result<Option<Cow<'_, str>>, String> {
    if field == "\\N" {
        return Ok(None);
    }
    if !field.contains('\\') {
        return Ok(Some(Cow::Borrowed(field)));
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => return Err("a field ends with a lone backslash".to_string()),
        }
    }
    Ok(Some(Cow::Owned(out)))
}

fn escape_tsv(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
}

/// Encodes query results. `elapsed` feeds the statistics of the JSON format.
pub fn encode(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    elapsed_secs: f64,
) -> Result<Bytes, NodeError> {
    let mut encoder = Encoder::new(format, schema)?;
    let mut out = encoder.head()?;
    for batch in batches {
        out.extend_from_slice(&encoder.batch(batch)?);
    }
    out.extend_from_slice(&encoder.finish(elapsed_secs)?);
    Ok(Bytes::from(out))
}

/// Encodes a result batch by batch, so a result is sent while it is produced and never held
/// whole: [`Encoder::head`] once, [`Encoder::batch`] per batch, [`Encoder::finish`] at the end.
pub struct Encoder {
    format: Format,
    schema: SchemaRef,
    rows: usize,
    /// Parquet and Arrow stream writers keep state between batches; their bytes are taken
    /// from the buffer they write into as they come.
    parquet: Option<ArrowWriter<Vec<u8>>>,
    arrow: Option<StreamWriter<Vec<u8>>>,
}

impl Encoder {
    pub fn new(format: Format, schema: &SchemaRef) -> Result<Encoder, NodeError> {
        let parquet = match format {
            Format::Parquet => {
                Some(ArrowWriter::try_new(Vec::new(), schema.clone(), None).map_err(NodeError::internal)?)
            }
            _ => None,
        };
        let arrow = match format {
            Format::ArrowStream => Some(StreamWriter::try_new(Vec::new(), schema).map_err(NodeError::internal)?),
            _ => None,
        };
        Ok(Encoder { format, schema: schema.clone(), rows: 0, parquet, arrow })
    }

    /// What comes before the first row: a header line, the JSON `meta`, the Arrow schema.
    pub fn head(&mut self) -> Result<Vec<u8>, NodeError> {
        let names = || self.schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>();
        Ok(match self.format {
            Format::Json => {
                let meta: Vec<_> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| serde_json::json!({"name": f.name(), "type": ColumnType::name_of_arrow(f.data_type())}))
                    .collect();
                let mut out = b"{\"meta\":".to_vec();
                serde_json::to_writer(&mut out, &meta).map_err(NodeError::internal)?;
                out.extend_from_slice(b",\"data\":[");
                out
            }
            Format::CsvWithNames => {
                let mut writer = csv::Writer::from_writer(Vec::new());
                writer.write_record(names()).map_err(NodeError::internal)?;
                writer.into_inner().map_err(NodeError::internal)?
            }
            Format::TabSeparatedWithNames => {
                let mut text = String::new();
                for (i, name) in names().into_iter().enumerate() {
                    if i > 0 {
                        text.push('\t');
                    }
                    escape_tsv(name, &mut text);
                }
                text.push('\n');
                text.into_bytes()
            }
            Format::ArrowStream => self.arrow.as_mut().map(|w| std::mem::take(w.get_mut())).unwrap_or_default(),
            _ => Vec::new(),
        })
    }

    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, NodeError> {
        let first = self.rows == 0;
        self.rows += batch.num_rows();
        let mut out: Vec<u8> = Vec::new();
        match self.format {
            Format::JsonEachRow => out = json_objects::<LineDelimited>(batch)?,
            Format::Json => {
                let array = json_objects::<JsonArray>(batch)?;
                // `[{...},{...}]`: the objects join the array the head opened.
                let objects = array.strip_prefix(b"[").and_then(|a| a.strip_suffix(b"]")).unwrap_or_default();
                if !objects.is_empty() {
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(objects);
                }
            }
            Format::Csv | Format::CsvWithNames => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(false)
                    .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
                    .with_null("\\N".to_string())
                    .build(&mut out);
                writer.write(batch).map_err(NodeError::internal)?;
            }
            Format::TabSeparated | Format::TabSeparatedWithNames => {
                let mut text = String::new();
                let options = FormatOptions::new().with_null("\\N").with_timestamp_format(Some(TIMESTAMP_FORMAT));
                let formatters = batch
                    .columns()
                    .iter()
                    .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(NodeError::internal)?;
                for row in 0..batch.num_rows() {
                    for (i, formatter) in formatters.iter().enumerate() {
                        if i > 0 {
                            text.push('\t');
                        }
                        if batch.column(i).is_null(row) {
                            text.push_str("\\N");
                        } else {
                            escape_tsv(&formatter.value(row).to_string(), &mut text);
                        }
                    }
                    text.push('\n');
                }
                out = text.into_bytes();
            }
            Format::Parquet => {
                if let Some(writer) = self.parquet.as_mut() {
                    writer.write(batch).map_err(NodeError::internal)?;
                    out = std::mem::take(writer.inner_mut());
                }
            }
            Format::ArrowStream => {
                if let Some(writer) = self.arrow.as_mut() {
                    writer.write(batch).map_err(NodeError::internal)?;
                    out = std::mem::take(writer.get_mut());
                }
            }
        }
        Ok(out)
    }

    /// What comes after the last row. `elapsed_secs` feeds the statistics of the JSON format.
    pub fn finish(&mut self, elapsed_secs: f64) -> Result<Vec<u8>, NodeError> {
        Ok(match self.format {
            Format::Json => {
                format!("],\"rows\":{},\"statistics\":{{\"elapsed\":{elapsed_secs}}}}}\n", self.rows).into_bytes()
            }
            Format::Parquet => match self.parquet.as_mut() {
                Some(writer) => {
                    writer.finish().map_err(NodeError::internal)?;
                    std::mem::take(writer.inner_mut())
                }
                None => Vec::new(),
            },
            Format::ArrowStream => match self.arrow.as_mut() {
                Some(writer) => {
                    writer.finish().map_err(NodeError::internal)?;
                    std::mem::take(writer.get_mut())
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        })
    }
}

/// One batch as JSON objects in `F`'s framing (one per line, or an array).
fn json_objects<F: JsonFormat>(batch: &RecordBatch) -> Result<Vec<u8>, NodeError> {
    let mut out = Vec::new();
    let mut writer = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
        .build::<_, F>(&mut out);
    writer.write(batch).map_err(NodeError::internal)?;
    writer.finish().map_err(NodeError::internal)?;
    drop(writer);
    Ok(out)
}

/// A one-column text batch, for SHOW TABLES and similar answers.
pub fn text_batch(columns: &[(&str, Vec<String>)]) -> Result<RecordBatch, NodeError> {
    let schema = Arc::new(Schema::new(
        columns.iter().map(|(name, _)| Field::new(*name, DataType::Utf8, false)).collect::<Vec<_>>(),
    ));
    let arrays = columns.iter().map(|(_, values)| Arc::new(StringArray::from(values.clone())) as ArrayRef).collect();
    RecordBatch::try_new(schema, arrays).map_err(NodeError::internal)
}

/// The columns an insert body brings that the table does not have, with types inferred from
/// their values (integers Int64, or UInt64 beyond it; numbers with a fraction Float64; true
/// and false Bool; anything else String), all Nullable. Only for formats that name their fields;
/// JSON fields come in name order (a JSON object has no order), header fields in header order.
pub fn new_columns(
    format: Format,
    data: &[u8],
    def: &TableDef,
) -> Result<Vec<tandem_replica::schema::ColumnDef>, NodeError> {
    let mut seen: Vec<(String, Inferred)> = Vec::new();
    let mut note = |name: &str, value: Inferred| -> Result<(), NodeError> {
        if def.column(name).is_some() {
            return Ok(());
        }
        if !tandem_replica::schema::valid_name(name) {
            return Err(NodeError::bad_request(format!(
                "`{name}` cannot become a column: use letters, digits and `_`"
            )));
        }
        match seen.iter_mut().find(|(n, _)| n == name) {
            Some((_, kind)) => *kind = kind.merge(value),
            None => seen.push((name.to_string(), value)),
        }
        Ok(())
    };
    match format {
        Format::JsonEachRow => {
            for row in
                serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Map<String, serde_json::Value>>()
            {
                let row = row.map_err(|e| {
                    NodeError::bad_request(format!(
                        "malformed JSONEachRow at line {}, column {}: {e}",
                        e.line(),
                        e.column()
                    ))
                })?;
                for (name, value) in &row {
                    note(name, Inferred::of_json(value))?;
                }
            }
        }
        Format::CsvWithNames | Format::TabSeparatedWithNames => {
            let text = std::str::from_utf8(data).map_err(|_| NodeError::bad_request("the body is not valid UTF-8"))?;
            let delimiter = if format == Format::CsvWithNames { b',' } else { b'\t' };
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .delimiter(delimiter)
                .quoting(format == Format::CsvWithNames)
                .from_reader(text.as_bytes());
            let header: Vec<String> = reader
                .headers()
                .map_err(|e| NodeError::bad_request(format!("malformed header: {e}")))?
                .iter()
                .map(str::to_string)
                .collect();
            for name in &header {
                note(name, Inferred::Nothing)?;
            }
            for record in reader.records() {
                let record = record.map_err(|e| NodeError::bad_request(format!("malformed row: {e}")))?;
                for (name, value) in header.iter().zip(record.iter()) {
                    note(name, Inferred::of_text(value))?;
                }
            }
        }
        _ => {}
    }
    Ok(seen
        .into_iter()
        .map(|(name, kind)| tandem_replica::schema::ColumnDef {
            id: 0,
            name,
            column_type: kind.column_type(),
            nullable: true,
            default: None,
            comment: None,
        })
        .collect())
}

/// What the values of a new field look like so far.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Inferred {
    Nothing,
    Int,
    UInt,
    Float,
    Bool,
    Text,
}

impl Inferred {
    fn of_json(value: &serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Inferred::Nothing,
            serde_json::Value::Bool(_) => Inferred::Bool,
            serde_json::Value::Number(n) if n.is_i64() => Inferred::Int,
            serde_json::Value::Number(n) if n.is_u64() => Inferred::UInt,
            serde_json::Value::Number(_) => Inferred::Float,
            _ => Inferred::Text,
        }
    }

    fn of_text(value: &str) -> Self {
        if value.is_empty() || value == "\\N" {
            Inferred::Nothing
        } else if value.parse::<i64>().is_ok() {
            Inferred::Int
        } else if value.parse::<u64>().is_ok() {
            Inferred::UInt
        } else if value.parse::<f64>().is_ok() {
            Inferred::Float
        } else if value == "true" || value == "false" {
            Inferred::Bool
        } else {
            Inferred::Text
        }
    }

    fn merge(self, other: Inferred) -> Inferred {
        use Inferred::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Nothing, x) | (x, Nothing) => x,
            (Int | UInt | Float, Int | UInt | Float) => Float,
            _ => Text,
        }
    }

    fn column_type(self) -> ColumnType {
        match self {
            Inferred::Int => ColumnType::Int64,
            Inferred::UInt => ColumnType::UInt64,
            Inferred::Float => ColumnType::Float64,
            Inferred::Bool => ColumnType::Bool,
            Inferred::Nothing | Inferred::Text => ColumnType::String,
        }
    }
}
