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
