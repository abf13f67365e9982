//! CSV and TabSeparated input, and the TabSeparated escaping output shares.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, NullBufferBuilder, PrimitiveArray, RecordBatch, StringBuilder};
use datafusion::arrow::buffer::ScalarBuffer;
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, FieldRef, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    Schema, SchemaRef, TimeUnit, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

use super::json::convert_text;
use super::plain_number::PlainNumber;
use super::timestamp_text::{CommonTimestamps, timestamp_array};
use super::{Format, InputOptions, unknown_column};
use crate::error::NodeError;
use tandem_replica::schema::TableDef;

/// CSV and TabSeparated: numbers and timestamps in their common spelling are parsed as they are
/// read; every other field is read as text and converted column by column once the body is
/// read, so an error names the line, the column, its type and the text that does not fit. A
/// number or timestamp the first reading does not take (a bad value, another spelling) makes
/// the body be read again all as text: what is accepted, and how, is the conversion's.
pub fn decode_delimited(
    format: Format,
    data: &Bytes,
    input_schema: &SchemaRef,
    def: &TableDef,
    options: InputOptions,
) -> Result<RecordBatch, NodeError> {
    // Builders sized for the body's lines: their default room for 1,024 values is kilobytes
    // per column to allocate for a 10-row insert, and to copy out of before it is buffered.
    let rows = count_newlines(data).saturating_add(1).min(MAX_ROWS_HINT);
    let read = |parse_as_read| {
        let with_names = matches!(format, Format::CsvWithNames | Format::TabSeparatedWithNames);
        let mut columns = TextColumns::new(input_schema, def, options, with_names, parse_as_read, rows);
        if matches!(format, Format::Csv | Format::CsvWithNames) {
            read_csv(data, &mut columns)?;
        } else {
            read_tsv(data, &mut columns)?;
        }
        columns.finish()
    };
    match read(true)? {
        Some(batch) => Ok(batch),
        None => read(false)?.ok_or_else(|| NodeError::internal("a body read as text was not converted")),
    }
}

/// Room reserved up front is for at most this many rows; a larger body's builders grow.
const MAX_ROWS_HINT: usize = 64 * 1024;

/// The `\n` bytes of `data`, counted 64 at a time in a `u8`, which the compiler turns into wide
/// vector compares; a count byte by byte into a `usize` was 5 instructions a byte.
fn count_newlines(data: &[u8]) -> usize {
    data.chunks(64).map(|chunk| usize::from(chunk.iter().map(|&b| u8::from(b == b'\n')).sum::<u8>())).sum()
}

/// One builder per target column, filled row by row straight from the input's bytes.
struct TextColumns<'a> {
    input_schema: &'a SchemaRef,
    def: &'a TableDef,
    options: InputOptions,
    /// Numbers and timestamps are parsed as they are read.
    parse_as_read: bool,
    /// A value parsed as read was not taken: the rest is skipped, the body is read again as text.
    reread: bool,
    /// Per field position: the column it fills (None: skipped unknown column). Unset until the
    /// header is read, with names.
    targets: Option<Vec<Option<TextColumn<'a>>>>,
    lines: Vec<u64>,
    /// The rows the body is expected to hold (its lines).
    rows_hint: usize,
}

struct TextColumn<'a> {
    /// The input schema's own field, borrowed: not even its reference count is touched (on two
    /// cores, that count's cache line moves between them with every insert).
    field: &'a FieldRef,
    is_string: bool,
    values: Values,
}

/// Where a column's values go as they are read.
enum Values {
    /// Text, converted to the column's type once the body is read.
    Text(StringBuilder),
    /// Parsed as read.
    Parsed(Parsed),
}

impl<'a> TextColumn<'a> {
    fn new(field: &'a FieldRef, parse_as_read: bool, rows: usize) -> Self {
        let parsed = if parse_as_read { parsed_values(field.data_type(), rows) } else { None };
        TextColumn {
            field,
            is_string: field.data_type() == &DataType::Utf8,
            values: match parsed {
                Some(values) => Values::Parsed(values),
                None => Values::Text(StringBuilder::with_capacity(rows, 0)),
            },
        }
    }

    /// One field's value (None: NULL); false when a value parsed as read was not taken.
    fn push(&mut self, value: Option<&str>) -> bool {
        match &mut self.values {
            // An empty field is NULL for every type but String, as in ClickHouse's CSV.
            Values::Text(text) => match value {
                Some(v) if self.is_string || !v.is_empty() => text.append_value(v),
                _ => text.append_null(),
            },
            Values::Parsed(values) => match value {
                Some(v) if !v.is_empty() => return values.push(v),
                _ => values.push_null(),
            },
        }
        true
    }
}

/// A column's values parsed as they are read, exactly as the conversion from text would.
trait ParsedValues {
    /// False when `text` is not read here.
    fn push(&mut self, text: &str) -> bool;
    fn push_null(&mut self);
    fn finish(&mut self) -> ArrayRef;
}

/// Numbers, as the parser Arrow's cast from text uses reads them. Gathered in a `Vec` and
/// handed to the array as they are: a `PrimitiveBuilder`'s aligned buffers and its `finish`
/// (through `ArrayData`) cost more than parsing a small insert's values.
struct Numbers<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    nulls: NullBufferBuilder,
}

impl<T: PlainNumber> ParsedValues for Numbers<T> {
    fn push(&mut self, text: &str) -> bool {
        let Some(value) = T::parse_number(text) else { return false };
        self.values.push(value);
        self.nulls.append_non_null();
        true
    }

    fn push_null(&mut self) {
        self.values.push(T::Native::default());
        self.nulls.append_null();
    }

    fn finish(&mut self) -> ArrayRef {
        let values = ScalarBuffer::from(std::mem::take(&mut self.values));
        Arc::new(PrimitiveArray::<T>::new(values, self.nulls.finish()))
    }
}

/// Timestamps without a time zone in the common spelling (others go to the general parser).
struct Timestamps {
    unit: TimeUnit,
    parser: CommonTimestamps,
    values: Vec<i64>,
    nulls: NullBufferBuilder,
}

impl ParsedValues for Timestamps {
    fn push(&mut self, text: &str) -> bool {
        let Some(value) = self.parser.parse(text) else { return false };
        self.values.push(value);
        self.nulls.append_non_null();
        true
    }

    fn push_null(&mut self) {
        self.values.push(0);
        self.nulls.append_null();
    }

    fn finish(&mut self) -> ArrayRef {
        timestamp_array(std::mem::take(&mut self.values), self.nulls.finish(), self.unit)
    }
}

/// A column's values parsed as read, for the types most rows hold: an enum rather than a boxed
/// trait object, so a small insert allocates nothing per column for it and calls nothing
/// dynamically per value.
enum Parsed {
    Int8(Numbers<Int8Type>),
    Int16(Numbers<Int16Type>),
    Int32(Numbers<Int32Type>),
    Int64(Numbers<Int64Type>),
    UInt8(Numbers<UInt8Type>),
    UInt16(Numbers<UInt16Type>),
    UInt32(Numbers<UInt32Type>),
    UInt64(Numbers<UInt64Type>),
    Float32(Numbers<Float32Type>),
    Float64(Numbers<Float64Type>),
    Timestamps(Timestamps),
}

/// `$body` with `$values` bound to the column's values, whatever their type.
macro_rules! with_parsed {
    ($parsed:expr, $values:ident => $body:expr) => {
        match $parsed {
            Parsed::Int8($values) => $body,
            Parsed::Int16($values) => $body,
            Parsed::Int32($values) => $body,
            Parsed::Int64($values) => $body,
            Parsed::UInt8($values) => $body,
            Parsed::UInt16($values) => $body,
            Parsed::UInt32($values) => $body,
            Parsed::UInt64($values) => $body,
            Parsed::Float32($values) => $body,
            Parsed::Float64($values) => $body,
            Parsed::Timestamps($values) => $body,
        }
    };
}

impl ParsedValues for Parsed {
    fn push(&mut self, text: &str) -> bool {
        with_parsed!(self, values => values.push(text))
    }

    fn push_null(&mut self) {
        with_parsed!(self, values => values.push_null())
    }

    fn finish(&mut self) -> ArrayRef {
        with_parsed!(self, values => values.finish())
    }
}

/// The values of a column of `data_type` parsed as read, for the types most rows hold.
fn parsed_values(data_type: &DataType, rows: usize) -> Option<Parsed> {
    fn numbers<T: ArrowPrimitiveType>(rows: usize) -> Numbers<T> {
        Numbers { values: Vec::with_capacity(rows), nulls: NullBufferBuilder::new(rows) }
    }
    Some(match data_type {
        DataType::Int8 => Parsed::Int8(numbers(rows)),
        DataType::Int16 => Parsed::Int16(numbers(rows)),
        DataType::Int32 => Parsed::Int32(numbers(rows)),
        DataType::Int64 => Parsed::Int64(numbers(rows)),
        DataType::UInt8 => Parsed::UInt8(numbers(rows)),
        DataType::UInt16 => Parsed::UInt16(numbers(rows)),
        DataType::UInt32 => Parsed::UInt32(numbers(rows)),
        DataType::UInt64 => Parsed::UInt64(numbers(rows)),
        DataType::Float32 => Parsed::Float32(numbers(rows)),
        DataType::Float64 => Parsed::Float64(numbers(rows)),
        DataType::Timestamp(unit, None) => Parsed::Timestamps(Timestamps {
            unit: *unit,
            parser: CommonTimestamps::new(*unit),
            values: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
        }),
        _ => return None,
    })
}

impl<'a> TextColumns<'a> {
    fn new(
        input_schema: &'a SchemaRef,
        def: &'a TableDef,
        options: InputOptions,
        with_names: bool,
        parse_as_read: bool,
        rows_hint: usize,
    ) -> Self {
        let targets = (!with_names).then(|| {
            input_schema.fields().iter().map(|f| Some(TextColumn::new(f, parse_as_read, rows_hint))).collect::<Vec<_>>()
        });
        let lines = Vec::with_capacity(rows_hint);
        TextColumns { input_schema, def, options, parse_as_read, reread: false, targets, lines, rows_hint }
    }

    fn row(&mut self, line: u64, fields: &[Option<Cow<'_, str>>]) -> Result<(), NodeError> {
        if self.reread {
            return Ok(());
        }
        let Some(targets) = &mut self.targets else {
            // With names, the header says which column each field is, in any order.
            let mut targets = Vec::with_capacity(fields.len());
            for name in fields {
                let name = name.as_deref().unwrap_or_default();
                match self.input_schema.fields().find(name) {
                    Some((_, field)) => targets.push(Some(TextColumn::new(field, self.parse_as_read, self.rows_hint))),
                    None if self.options.skip_unknown_fields => targets.push(None),
                    None => return Err(unknown_column(self.def, name)),
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
            if let Some(column) = target {
                self.reread |= !column.push(value.as_deref());
            }
        }
        self.lines.push(line);
        Ok(())
    }

    /// The rows read; None when a value parsed as read was not taken (read the body again, as
    /// text).
    fn finish(self) -> Result<Option<RecordBatch>, NodeError> {
        if self.reread {
            return Ok(None);
        }
        let Some(targets) = self.targets else { return Ok(Some(RecordBatch::new_empty(self.input_schema.clone()))) };
        let lines = self.lines;
        let mut fields = Vec::with_capacity(targets.len());
        let mut arrays = Vec::with_capacity(targets.len());
        for column in targets.into_iter().flatten() {
            let array = match column.values {
                Values::Parsed(mut values) => values.finish(),
                Values::Text(mut text) => {
                    let text: ArrayRef = Arc::new(text.finish());
                    if column.is_string {
                        text
                    } else {
                        convert_text(&text, column.field, |row| lines.get(row).copied().unwrap_or(0))?
                    }
                }
            };
            fields.push(column.field);
            arrays.push(array);
        }
        // Every field of the input, in its order (the common case): its schema, not a new one.
        let whole_input = fields.len() == self.input_schema.fields().len()
            && fields.iter().zip(self.input_schema.fields()).all(|(read, input)| Arc::ptr_eq(read, input));
        let schema = if whole_input {
            self.input_schema.clone()
        } else {
            Arc::new(Schema::new(fields.into_iter().cloned().collect::<Vec<_>>()))
        };
        let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(lines.len()));
        RecordBatch::try_new_with_options(schema, arrays, &options).map(Some).map_err(NodeError::internal)
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
    tsv_rows(text, |line, fields| columns.row(line, fields))
}

/// Calls `row` with each non-empty line of `text` and its fields, unescaped.
fn tsv_rows<'t>(
    text: &'t str,
    mut row: impl FnMut(u64, &[Option<Cow<'t, str>>]) -> Result<(), NodeError>,
) -> Result<(), NodeError> {
    // One pass over the body finds every separator and every backslash, rather than a search
    // per line, per field and per escape. All three are ASCII, so every position is a char
    // boundary of `text`.
    let mut fields: Vec<Option<Cow<'t, str>>> = Vec::new();
    let mut line: u64 = 1;
    let (mut field_start, mut escaped) = (0, false);
    let separators = memchr::memchr3_iter(b'\t', b'\n', b'\\', text.as_bytes()).chain([text.len()]);
    for end in separators {
        let separator = text.as_bytes().get(end).copied();
        if separator == Some(b'\\') {
            escaped = true;
            continue;
        }
        let mut field = text.get(field_start..end).unwrap_or_default();
        field_start = end + 1;
        if separator == Some(b'\t') {
            fields.push(tsv_field(field, escaped, line)?);
            escaped = false;
            continue;
        }
        // The end of a line (or of the body): its last field, without a Windows line ending.
        field = field.strip_suffix('\r').unwrap_or(field);
        if !fields.is_empty() || !field.is_empty() {
            fields.push(tsv_field(field, escaped, line)?);
            row(line, &fields)?;
            fields.clear();
        }
        escaped = false;
        line += 1;
    }
    Ok(())
}

/// One field of line `line`; `escaped`: it holds a backslash. Inlined: almost every field has
/// no escape, and a call per field was a tenth of reading it.
#[inline]
fn tsv_field(field: &str, escaped: bool, line: u64) -> Result<Option<Cow<'_, str>>, NodeError> {
    if !escaped {
        return Ok(Some(Cow::Borrowed(field)));
    }
    unescape_tsv(field).map_err(|e| NodeError::bad_request(format!("line {line}: {e}")))
}

/// ClickHouse's TabSeparated escaping: `\N` is NULL; `\t`, `\n`, `\\` and friends are escapes.
pub fn unescape_tsv(field: &str) -> Result<Option<Cow<'_, str>>, String> {
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

pub fn escape_tsv(value: &str, out: &mut String) {
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

#[cfg(test)]
#[allow(clippy::expect_used, clippy::panic)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Each row's line number and fields.
    type Rows = Vec<(u64, Vec<Option<String>>)>;

    /// The plain reading: line by line, then field by field.
    fn line_by_line(text: &str) -> Result<Rows, String> {
        let mut rows = Vec::new();
        for (index, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let fields: Result<Vec<_>, String> =
                line.split('\t').map(|f| unescape_tsv(f).map(|f| f.map(Cow::into_owned))).collect();
            rows.push((index as u64 + 1, fields.map_err(|e| format!("line {}: {e}", index + 1))?));
        }
        Ok(rows)
    }

    fn one_pass(text: &str) -> Result<Rows, String> {
        let mut rows = Vec::new();
        tsv_rows(text, |line, fields| {
            rows.push((line, fields.iter().map(|f| f.as_ref().map(|f| f.to_string())).collect()));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(rows)
    }

    /// The table the parsed-as-read property runs on: every type read that way, and others.
    fn typed_table() -> TableDef {
        let Ok(crate::statement::Statement::CreateTable { def, .. }) = crate::statement::parse(
            "CREATE TABLE t (ts DateTime, ms Nullable(DateTime64(3)), id UInt64, small Int8, n Nullable(Int32), \
             v Float64, d Date, s String) ORDER BY (id, ts)",
        ) else {
            panic!("the table parses")
        };
        def
    }

    /// A body's rows, numbers and timestamps parsed as read (falling back to text), or all read
    /// as text and converted: the batch or the error's message.
    fn decoded(format: Format, body: &str, parse_as_read: bool) -> Result<RecordBatch, String> {
        let def = typed_table();
        let schema = def.arrow_schema();
        let data = Bytes::from(body.to_string());
        if parse_as_read {
            return decode_delimited(format, &data, &schema, &def, InputOptions::default()).map_err(|e| e.to_string());
        }
        let mut columns = TextColumns::new(&schema, &def, InputOptions::default(), false, false, 1);
        let read = match format {
            Format::Csv => read_csv(&data, &mut columns),
            _ => read_tsv(&data, &mut columns),
        };
        read.and_then(|()| columns.finish()).map_err(|e| e.to_string()).map(|batch| batch.expect("text is converted"))
    }

    /// Spellings of each column's values: common and uncommon, valid and not.
    fn field(column: usize) -> impl Strategy<Value = String> {
        let times = [
            "2024-01-01 00:00:00",
            "2024-02-29 23:59:59",
            "2023-02-29 00:00:00",
            "2024-01-01T10:00:00",
            "1704067200",
            "2024-01-01 00:00:00.5",
            "2024-01-01",
            "x",
            "",
            "\\N",
            "2024-01-01 00:00:00Z",
        ];
        let numbers = [
            "0",
            "42",
            "-7",
            "+3",
            "255",
            "256",
            "-129",
            "1e3",
            "1.5",
            " 5",
            "18446744073709551615",
            "18446744073709551616",
            "nan",
            "inf",
            "-0.0",
            "",
            "\\N",
            "abc",
        ];
        let spellings: Vec<&'static str> = match column {
            0 | 1 => times.to_vec(),
            6 => vec!["2024-01-01", "19000", "2024-13-01", "", "\\N"],
            7 => vec!["host", "", "\\N", "a b"],
            _ => numbers.to_vec(),
        };
        proptest::sample::select(spellings).prop_map(str::to_string)
    }

    fn rows() -> impl Strategy<Value = Vec<Vec<String>>> {
        let row: Vec<_> = (0..8).map(field).collect();
        proptest::collection::vec(row, 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Parsing numbers and timestamps as they are read accepts, reads and refuses exactly
        /// what reading text and converting it does, messages included.
        #[test]
        fn values_parsed_as_read_are_what_the_conversion_reads(rows in rows(), csv in any::<bool>()) {
            let (format, separator) = if csv { (Format::Csv, ",") } else { (Format::TabSeparated, "\t") };
            let body: String = rows.iter().map(|row| row.join(separator) + "\n").collect();
            let (fast, text) = (decoded(format, &body, true), decoded(format, &body, false));
            prop_assert_eq!(format!("{fast:?}"), format!("{text:?}"));
        }

        #[test]
        fn newlines_are_counted(data in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..300)) {
            prop_assert_eq!(count_newlines(&data), data.iter().filter(|&&b| b == b'\n').count());
        }

        #[test]
        fn one_pass_reads_what_line_by_line_reads(text in "([a-c\\\\\t\r\nNt0é]){0,40}") {
            let (expected, actual) = (line_by_line(&text), one_pass(&text));
            match (&expected, &actual) {
                (Ok(expected), Ok(actual)) => prop_assert_eq!(expected, actual),
                (Err(expected), Err(actual)) => prop_assert!(actual.contains(expected.as_str()), "{actual} vs {expected}"),
                _ => prop_assert!(false, "{expected:?} vs {actual:?}"),
            }
        }
    }
}
