//! New columns from an insert's fields, for tables with `auto_add_columns`.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use super::Format;
use crate::error::NodeError;
use tandem_replica::schema::{ColumnType, TableDef};

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
