//! The JSON input formats: JSONEachRow (a strict syntax pass, Arrow's decoder, then strict
//! conversion of integers, dates and times, with errors that name the line and the column);
//! JSONStringsEachRow (every value as text); JSONCompactEachRow, JSON and JSONCompact turned
//! into JSONEachRow rows first.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::timestamp_text::parse_common_timestamps;
use super::{Format, InputOptions, guard, truncate};
use crate::error::NodeError;
use tandem_replica::schema::ColumnType;

/// How a JSON row's values are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// As JSON numbers, strings, booleans (JSONEachRow).
    Typed,
    /// Every value a JSON string (JSONStringsEachRow).
    Text,
}

/// JSONCompactEachRow (`[v1, v2]` per line, in column order), or a JSON / JSONCompact
/// document (`{"data": [...]}`), as JSONEachRow rows.
pub fn as_json_each_row(format: Format, data: &[u8], schema: &SchemaRef) -> Result<Bytes, NodeError> {
    guard::check_json_depth(data)?;
    let names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    let mut out = Vec::with_capacity(data.len() * 2);
    let mut write_row = |index: usize, row: serde_json::Value| -> Result<(), NodeError> {
        let object = match row {
            serde_json::Value::Object(object) => object,
            serde_json::Value::Array(values) => {
                if values.len() != names.len() {
                    return Err(NodeError::bad_request(format!(
                        "row {}: {} values for {} columns ({})",
                        index + 1,
                        values.len(),
                        names.len(),
                        names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                }
                names.iter().map(|n| (*n).clone()).zip(values).collect()
            }
            _ => {
                return Err(NodeError::bad_request(format!("row {}: a row must be a JSON array or object", index + 1)));
            }
        };
        serde_json::to_writer(&mut out, &object).map_err(NodeError::internal)?;
        out.push(b'\n');
        Ok(())
    };
    let malformed = |e: serde_json::Error| {
        NodeError::bad_request(format!("malformed {} at line {}, column {}: {e}", format.name(), e.line(), e.column()))
    };
    if format == Format::JsonCompactEachRow {
        for (index, row) in serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Value>().enumerate() {
            write_row(index, row.map_err(malformed)?)?;
        }
    } else {
        let document: serde_json::Value = serde_json::from_slice(data).map_err(malformed)?;
        let rows = match document {
            serde_json::Value::Object(mut fields) => fields.remove("data"),
            _ => None,
        };
        let Some(serde_json::Value::Array(rows)) = rows else {
            return Err(NodeError::bad_request(format!(
                "a {} body is an object whose `data` holds the rows",
                format.name()
            )));
        };
        for (index, row) in rows.into_iter().enumerate() {
            write_row(index, row)?;
        }
    }
    Ok(Bytes::from(out))
}

pub fn decode_json(
    data: &Bytes,
    schema: &SchemaRef,
    options: InputOptions,
    values: Values,
) -> Result<RecordBatch, NodeError> {
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
                if values == Values::Text || f.data_type().is_integer() || f.data_type().is_temporal() {
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
pub fn convert_text(text: &ArrayRef, field: &Field, line_of_row: impl Fn(usize) -> u64) -> Result<ArrayRef, NodeError> {
    if let (DataType::Timestamp(unit, None), Some(strings)) =
        (field.data_type(), text.as_any().downcast_ref::<StringArray>())
        && let Some(timestamps) = parse_common_timestamps(strings, *unit)
    {
        return Ok(timestamps);
    }
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
