//! ClickHouse's data types as the binary formats (Native, RowBinary) and the type names of
//! result metadata carry them: parsed from the names clients send, chosen for the Arrow types
//! results have, and the Arrow arrays that hold each one's values.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, ListArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};

use crate::error::NodeError;
use tandem_replica::schema::{ColumnDef, ColumnType};

/// How deep `Nullable(Array(...))` may nest in a type name a client sends.
const MAX_TYPE_DEPTH: usize = 8;

/// A ClickHouse data type, as far as tandem reads or writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClickHouseType {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    Bool,
    String,
    /// `FixedString(n)`: n bytes per value (read as a String, trailing zero bytes kept).
    FixedString(usize),
    /// Days since 1970-01-01 as UInt16.
    Date,
    /// Days since 1970-01-01 as Int32.
    Date32,
    /// Seconds since 1970 as UInt32; the time zone only changes how it is displayed.
    DateTime(Option<String>),
    /// Ticks of 10^-precision seconds since 1970 as Int64.
    DateTime64(u8, Option<String>),
    Nullable(Box<ClickHouseType>),
    Array(Box<ClickHouseType>),
}

impl ClickHouseType {
    /// Parses a type name as clients send it (`Nullable(DateTime64(3, 'UTC'))`).
    pub fn parse(name: &str) -> Result<ClickHouseType, NodeError> {
        parse_at(name.trim(), 0)
    }

    /// The type a table column travels as.
    pub fn of_column(column: &ColumnDef) -> ClickHouseType {
        let base = match column.column_type {
            ColumnType::Int8 => ClickHouseType::Int8,
            ColumnType::Int16 => ClickHouseType::Int16,
            ColumnType::Int32 => ClickHouseType::Int32,
            ColumnType::Int64 => ClickHouseType::Int64,
            ColumnType::UInt8 => ClickHouseType::UInt8,
            ColumnType::UInt16 => ClickHouseType::UInt16,
            ColumnType::UInt32 => ClickHouseType::UInt32,
            ColumnType::UInt64 => ClickHouseType::UInt64,
            ColumnType::Float32 => ClickHouseType::Float32,
            ColumnType::Float64 => ClickHouseType::Float64,
            ColumnType::Bool => ClickHouseType::Bool,
            ColumnType::String => ClickHouseType::String,
            ColumnType::Date => ClickHouseType::Date,
            ColumnType::DateTime => ClickHouseType::DateTime(None),
            ColumnType::DateTime64(p) => ClickHouseType::DateTime64(p, None),
        };
        if column.nullable { ClickHouseType::Nullable(Box::new(base)) } else { base }
    }

    /// The type a result column of `field` is sent as. Types ClickHouse has no binary form
    /// for in tandem (decimals, intervals, structs) go out as Float64 or as their text.
    pub fn of_field(field: &Field) -> ClickHouseType {
        let base = Self::of_arrow(field.data_type());
        // ClickHouse has no Nullable(Array(...)): a NULL array goes out empty.
        if matches!(base, ClickHouseType::Array(_)) {
            return base;
        }
        if field.is_nullable() || field.data_type() == &DataType::Null {
            ClickHouseType::Nullable(Box::new(base))
        } else {
            base
        }
    }

    fn of_arrow(data_type: &DataType) -> ClickHouseType {
        match data_type {
            DataType::Int8 => ClickHouseType::Int8,
            DataType::Int16 => ClickHouseType::Int16,
            DataType::Int32 => ClickHouseType::Int32,
            DataType::Int64 => ClickHouseType::Int64,
            DataType::UInt8 => ClickHouseType::UInt8,
            DataType::UInt16 => ClickHouseType::UInt16,
            DataType::UInt32 => ClickHouseType::UInt32,
            DataType::UInt64 => ClickHouseType::UInt64,
            DataType::Float16 | DataType::Float32 => ClickHouseType::Float32,
            DataType::Float64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => ClickHouseType::Float64,
            DataType::Boolean => ClickHouseType::Bool,
            // As DESCRIBE names tandem's Date: ClickHouse's Date (days as UInt16), so a client
            // that encodes by the table's types and one that reads results agree. A date
            // before 1970 cannot travel so and is refused by name (`values.rs`).
            DataType::Date32 | DataType::Date64 => ClickHouseType::Date,
            DataType::Timestamp(TimeUnit::Second, tz) => ClickHouseType::DateTime(tz.as_ref().map(|t| t.to_string())),
            DataType::Timestamp(unit, tz) => {
                let precision = match unit {
                    TimeUnit::Millisecond => 3,
                    TimeUnit::Microsecond => 6,
                    _ => 9,
                };
                ClickHouseType::DateTime64(precision, tz.as_ref().map(|t| t.to_string()))
            }
            DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
                ClickHouseType::Array(Box::new(Self::of_field(item)))
            }
            _ => ClickHouseType::String,
        }
    }

    /// The Arrow type that holds this type's values (what the decoders build).
    pub fn arrow(&self) -> DataType {
        match self {
            ClickHouseType::Int8 => DataType::Int8,
            ClickHouseType::Int16 => DataType::Int16,
            ClickHouseType::Int32 => DataType::Int32,
            ClickHouseType::Int64 => DataType::Int64,
            ClickHouseType::UInt8 => DataType::UInt8,
            ClickHouseType::UInt16 => DataType::UInt16,
            ClickHouseType::UInt32 => DataType::UInt32,
            ClickHouseType::UInt64 => DataType::UInt64,
            ClickHouseType::Float32 => DataType::Float32,
            ClickHouseType::Float64 => DataType::Float64,
            ClickHouseType::Bool => DataType::Boolean,
            ClickHouseType::String | ClickHouseType::FixedString(_) => DataType::Utf8,
            ClickHouseType::Date | ClickHouseType::Date32 => DataType::Date32,
            ClickHouseType::DateTime(_) => DataType::Timestamp(TimeUnit::Second, None),
            ClickHouseType::DateTime64(p, _) => DataType::Timestamp(Self::unit_of_precision(*p), None),
            ClickHouseType::Nullable(inner) => inner.arrow(),
            ClickHouseType::Array(inner) => {
                DataType::List(Arc::new(Field::new("item", inner.arrow(), inner.is_nullable())))
            }
        }
    }

    /// The Arrow unit that holds ticks of 10^-precision seconds without loss.
    pub fn unit_of_precision(precision: u8) -> TimeUnit {
        match precision {
            0 => TimeUnit::Second,
            1..=3 => TimeUnit::Millisecond,
            4..=6 => TimeUnit::Microsecond,
            _ => TimeUnit::Nanosecond,
        }
    }

    pub fn is_nullable(&self) -> bool {
        matches!(self, ClickHouseType::Nullable(_))
    }

    /// `array` converted into the representation this type's writers read: strings as Utf8,
    /// decimals as Float64, dates as Date32, anything without a binary form as its text.
    pub fn conform(&self, array: &ArrayRef) -> Result<ArrayRef, NodeError> {
        let inner = match self {
            ClickHouseType::Nullable(inner) => inner.as_ref(),
            other => other,
        };
        if let ClickHouseType::Array(item) = inner {
            let list = match array.data_type() {
                DataType::List(_) => array.clone(),
                _ => cast(array, &inner.arrow())?,
            };
            let Some(list) = list.as_any().downcast_ref::<ListArray>() else {
                return Err(NodeError::internal("an Array column is not a list"));
            };
            let values = item.conform(list.values())?;
            let field = Arc::new(Field::new("item", values.data_type().clone(), true));
            let rebuilt = ListArray::try_new(field, list.offsets().clone(), values, list.nulls().cloned())
                .map_err(NodeError::internal)?;
            return Ok(Arc::new(rebuilt));
        }
        let target = inner.arrow();
        if array.data_type() == &DataType::Null {
            return Ok(new_null_array(&target, array.len()));
        }
        if array.data_type() == &target {
            return Ok(array.clone());
        }
        cast(array, &target)
    }
}

fn cast(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, NodeError> {
    cast_with_options(array, target, &CastOptions::default())
        .map_err(|e| NodeError::internal(format!("cannot send {} values as {target}: {e}", array.data_type())))
}

fn parse_at(name: &str, depth: usize) -> Result<ClickHouseType, NodeError> {
    let unsupported = || {
        NodeError::bad_request(format!(
            "type `{}` is not supported by tandem's binary formats; supported: (U)Int8-64, Float32/64, Bool, String, \
             FixedString(n), Date, Date32, DateTime, DateTime64(p), Nullable(T), Array(T)",
            crate::formats::truncate(name, 80)
        ))
    };
    if depth > MAX_TYPE_DEPTH {
        return Err(NodeError::bad_request(format!("type nested deeper than {MAX_TYPE_DEPTH} levels")));
    }
    let (head, args) = match name.split_once('(') {
        Some((head, rest)) => {
            let args = rest.strip_suffix(')').ok_or_else(unsupported)?;
            (head.trim(), Some(args.trim()))
        }
        None => (name, None),
    };
    let ty = match (head, args) {
        ("Int8", None) => ClickHouseType::Int8,
        ("Int16", None) => ClickHouseType::Int16,
        ("Int32", None) => ClickHouseType::Int32,
        ("Int64", None) => ClickHouseType::Int64,
        ("UInt8", None) => ClickHouseType::UInt8,
        ("UInt16", None) => ClickHouseType::UInt16,
        ("UInt32", None) => ClickHouseType::UInt32,
        ("UInt64", None) => ClickHouseType::UInt64,
        ("Float32", None) => ClickHouseType::Float32,
        ("Float64", None) => ClickHouseType::Float64,
        ("Bool" | "Boolean", None) => ClickHouseType::Bool,
        ("String", None) => ClickHouseType::String,
        ("FixedString", Some(n)) => ClickHouseType::FixedString(n.parse().map_err(|_| unsupported())?),
        ("Date", None) => ClickHouseType::Date,
        ("Date32", None) => ClickHouseType::Date32,
        ("DateTime", None) => ClickHouseType::DateTime(None),
        ("DateTime", Some(tz)) => ClickHouseType::DateTime(Some(unquote(tz))),
        ("DateTime64", Some(args)) => {
            let (precision, tz) = match args.split_once(',') {
                Some((p, tz)) => (p.trim(), Some(unquote(tz))),
                None => (args, None),
            };
            let precision: u8 = precision.parse().map_err(|_| unsupported())?;
            if precision > 9 {
                return Err(NodeError::bad_request(format!("DateTime64 precision {precision} is above 9")));
            }
            ClickHouseType::DateTime64(precision, tz)
        }
        ("Nullable", Some(inner)) => ClickHouseType::Nullable(Box::new(parse_at(inner, depth + 1)?)),
        ("Array", Some(inner)) => ClickHouseType::Array(Box::new(parse_at(inner, depth + 1)?)),
        _ => return Err(unsupported()),
    };
    Ok(ty)
}

fn unquote(text: &str) -> String {
    text.trim().trim_matches('\'').to_string()
}

impl fmt::Display for ClickHouseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClickHouseType::FixedString(n) => write!(f, "FixedString({n})"),
            ClickHouseType::DateTime(None) => f.write_str("DateTime"),
            ClickHouseType::DateTime(Some(tz)) => write!(f, "DateTime('{tz}')"),
            ClickHouseType::DateTime64(p, None) => write!(f, "DateTime64({p})"),
            ClickHouseType::DateTime64(p, Some(tz)) => write!(f, "DateTime64({p}, '{tz}')"),
            ClickHouseType::Nullable(inner) => write!(f, "Nullable({inner})"),
            ClickHouseType::Array(inner) => write!(f, "Array({inner})"),
            other => write!(f, "{other:?}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip() {
        for name in [
            "Int8",
            "UInt64",
            "Float32",
            "Bool",
            "String",
            "FixedString(16)",
            "Date",
            "Date32",
            "DateTime",
            "DateTime('UTC')",
            "DateTime64(3)",
            "DateTime64(6, 'Europe/Berlin')",
            "Nullable(Int64)",
            "Array(Nullable(String))",
        ] {
            assert_eq!(ClickHouseType::parse(name).unwrap().to_string(), name);
        }
    }

    #[test]
    fn unsupported_and_hostile_names_are_refused() {
        for name in ["Decimal(10, 2)", "LowCardinality(String)", "Nullable(", "DateTime64(12)", "Map(String, Int8)", ""]
        {
            assert!(ClickHouseType::parse(name).is_err(), "{name}");
        }
        let deep = format!("{}Int8{}", "Array(".repeat(100), ")".repeat(100));
        assert!(ClickHouseType::parse(&deep).is_err());
    }
}
