//! The value a column takes where a row has none, as a DataFusion scalar: for inserts that omit
//! the column, and for parts written before the column existed.

use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use tandem_replica::schema::{ColumnDef, ColumnType};

/// A column's DEFAULT that cannot stand for its values.
#[derive(Debug, thiserror::Error)]
pub enum InvalidDefault {
    #[error("DEFAULT {value} is not a literal of type {column_type}")]
    NotALiteral { value: String, column_type: String },
    #[error("DEFAULT {value} does not convert to {column_type}: {source}")]
    DoesNotConvert { value: String, column_type: String, source: DataFusionError },
}

/// The value this column takes where a row has none: its DEFAULT, else NULL when
/// Nullable, else its type's zero value.
pub fn fill_value(column: &ColumnDef) -> Result<ScalarValue, InvalidDefault> {
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
            return ScalarValue::try_from(&target).map_err(|source| InvalidDefault::DoesNotConvert {
                value: "NULL".to_string(),
                column_type: column.type_name(),
                source,
            });
        }
        Some(other) => {
            return Err(InvalidDefault::NotALiteral { value: other.to_string(), column_type: column.type_name() });
        }
        None => match column.column_type {
            ColumnType::String => ScalarValue::Utf8(Some(String::new())),
            ColumnType::Bool => ScalarValue::Boolean(Some(false)),
            _ => ScalarValue::Int64(Some(0)),
        },
    };
    value.cast_to(&target).map_err(|source| InvalidDefault::DoesNotConvert {
        value: column.default.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        column_type: column.type_name(),
        source,
    })
}
