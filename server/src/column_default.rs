//! The value a column takes where a row has none, as a DataFusion scalar: for inserts that omit
//! the column, and for parts written before the column existed.

use datafusion::common::ScalarValue;
use tandem_replica::schema::{ColumnDef, ColumnType};

/// The value this column takes where a row has none: its DEFAULT, else NULL when
/// Nullable, else its type's zero value.
pub fn fill_value(column: &ColumnDef) -> Result<ScalarValue, String> {
    let target = column.column_type.arrow();
    let value = match &column.default {
        Some(serde_json::Value::String(s)) => ScalarValue::Utf8(Some(s.clone())),
        Some(serde_json::Value::Bool(b)) => ScalarValue::Boolean(Some(*b)),
        Some(serde_json::Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int64(Some(i)),
            (None, Some(u)) => ScalarValue::UInt64(Some(u)),
            _ => ScalarValue::Float64(n.as_f64()),
        },
        Some(serde_json::Value::Null) | None if column.nullable => {
            return ScalarValue::try_from(&target).map_err(|e| e.to_string());
        }
        Some(other) => return Err(format!("DEFAULT {other} is not a literal of type {}", column.type_name())),
        None => match column.column_type {
            ColumnType::String => ScalarValue::Utf8(Some(String::new())),
            ColumnType::Bool => ScalarValue::Boolean(Some(false)),
            _ => ScalarValue::Int64(Some(0)),
        },
    };
    value.cast_to(&target).map_err(|e| {
        format!(
            "DEFAULT {} does not convert to {}: {e}",
            column.default.as_ref().map(|d| d.to_string()).unwrap_or_default(),
            column.type_name()
        )
    })
}
