//! CSV and TabSeparated input, and the TabSeparated escaping output shares.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::json::convert_text;
use super::{Format, InputOptions, unknown_column};
use crate::error::NodeError;
use tandem_replica::schema::TableDef;

/// CSV and TabSeparated: fields are read as text, then converted column by column, so an error
/// names the line, the column, its type and the text that does not fit.
pub fn decode_delimited(
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

/// One field of line `line`; `escaped`: it holds a backslash.
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

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
