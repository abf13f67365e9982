//! A result column prepared once per batch for the writers that follow ClickHouse's encodings
//! (Native, RowBinary, the JSON family, Pretty and Vertical): its ClickHouse type, its null
//! mask, and its values in one of a few plain Arrow shapes, so each value is written without
//! looking its type up again.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fmt::Write as _;

use chrono::{Datelike, Timelike};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, StringArray, UInt64Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, UInt64Type};

use super::clickhouse_type::ClickHouseType;
use crate::error::NodeError;

/// How a JSON format writes 64-bit integers: ClickHouse quotes them by default
/// (`output_format_json_quote_64bit_integers=1`), since JavaScript numbers lose precision
/// beyond 2^53.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonOptions {
    pub quote_64bit_integers: bool,
}

impl Default for JsonOptions {
    fn default() -> Self {
        JsonOptions { quote_64bit_integers: true }
    }
}

/// One column's values in the shape its writers read.
pub struct Column {
    pub ty: ClickHouseType,
    nulls: Option<NullBuffer>,
    values: Values,
}

enum Values {
    /// Signed integers, and dates and times as their raw day or tick counts.
    Signed(Int64Array),
    Unsigned(UInt64Array),
    Float(Float64Array),
    Bool(BooleanArray),
    Text(StringArray),
    Array {
        offsets: Vec<usize>,
        items: Box<Column>,
    },
}

impl Column {
    /// Prepares a result column for writing as the type its field maps to.
    pub fn of_field(field: &Field, array: &ArrayRef) -> Result<Column, NodeError> {
        Column::new(ClickHouseType::of_field(field), array)
    }

    pub fn new(ty: ClickHouseType, array: &ArrayRef) -> Result<Column, NodeError> {
        let array = ty.conform(array)?;
        let nulls = if ty.is_nullable() { array.logical_nulls() } else { None };
        let base = match &ty {
            ClickHouseType::Nullable(inner) => inner.as_ref().clone(),
            other => other.clone(),
        };
        let widen =
            |target: &DataType| cast_with_options(&array, target, &CastOptions::default()).map_err(NodeError::internal);
        let values = match &base {
            ClickHouseType::Int8
            | ClickHouseType::Int16
            | ClickHouseType::Int32
            | ClickHouseType::Int64
            | ClickHouseType::Date
            | ClickHouseType::Date32
            | ClickHouseType::DateTime(_)
            | ClickHouseType::DateTime64(..) => {
                Values::Signed(widen(&DataType::Int64)?.as_primitive::<Int64Type>().clone())
            }
            ClickHouseType::UInt8 | ClickHouseType::UInt16 | ClickHouseType::UInt32 | ClickHouseType::UInt64 => {
                Values::Unsigned(widen(&DataType::UInt64)?.as_primitive::<UInt64Type>().clone())
            }
            ClickHouseType::Float32 | ClickHouseType::Float64 => {
                Values::Float(widen(&DataType::Float64)?.as_primitive::<Float64Type>().clone())
            }
            ClickHouseType::Bool => Values::Bool(array.as_boolean().clone()),
            ClickHouseType::String | ClickHouseType::FixedString(_) => Values::Text(array.as_string::<i32>().clone()),
            ClickHouseType::Array(item) => {
                let Some(list) = array.as_any().downcast_ref::<ListArray>() else {
                    return Err(NodeError::internal("an Array column is not a list"));
                };
                let offsets: Vec<usize> = list.offsets().iter().map(|o| (*o).max(0) as usize).collect();
                let first = offsets.first().copied().unwrap_or(0);
                let last = offsets.last().copied().unwrap_or(0);
                let items = list.values().slice(first, last - first);
                let offsets = offsets.iter().map(|o| o - first).collect();
                Values::Array { offsets, items: Box::new(Column::new(item.as_ref().clone(), &items)?) }
            }
            ClickHouseType::Nullable(_) => return Err(NodeError::internal("Nullable(Nullable(...))")),
        };
        Ok(Column { ty, nulls, values })
    }

    /// The number of rows.
    pub fn rows(&self) -> usize {
        match &self.values {
            Values::Signed(a) => a.len(),
            Values::Unsigned(a) => a.len(),
            Values::Float(a) => a.len(),
            Values::Bool(a) => a.len(),
            Values::Text(a) => a.len(),
            Values::Array { offsets, .. } => offsets.len().saturating_sub(1),
        }
    }

    pub fn is_null(&self, row: usize) -> bool {
        self.nulls.as_ref().is_some_and(|n| n.is_null(row))
    }

    fn base(&self) -> &ClickHouseType {
        match &self.ty {
            ClickHouseType::Nullable(inner) => inner,
            other => other,
        }
    }

    /// The items of row `row` of an Array column.
    fn items(&self, row: usize) -> Option<(&Column, std::ops::Range<usize>)> {
        let Values::Array { offsets, items } = &self.values else { return None };
        Some((items, *offsets.get(row)?..*offsets.get(row + 1)?))
    }

    /// The whole column in Native's layout: a null map first for Nullable, offsets then
    /// items for Array, fixed-width little-endian numbers, length-prefixed strings.
    pub fn write_native(&self, out: &mut Vec<u8>) -> Result<(), NodeError> {
        if self.ty.is_nullable() {
            out.extend((0..self.rows()).map(|row| u8::from(self.is_null(row))));
        }
        if let Values::Array { offsets, items } = &self.values {
            for offset in offsets.iter().skip(1) {
                out.extend_from_slice(&(*offset as u64).to_le_bytes());
            }
            return items.write_native(out);
        }
        for row in 0..self.rows() {
            self.write_scalar(row, out)?;
        }
        Ok(())
    }

    /// One value in RowBinary's layout: a null flag before a Nullable value, a length before
    /// an array's items.
    pub fn write_row_binary(&self, row: usize, out: &mut Vec<u8>) -> Result<(), NodeError> {
        if self.ty.is_nullable() {
            let null = self.is_null(row);
            out.push(u8::from(null));
            if null {
                return Ok(());
            }
        }
        if let Some((items, range)) = self.items(row) {
            write_varint(range.len() as u64, out);
            for item in range {
                items.write_row_binary(item, out)?;
            }
            return Ok(());
        }
        self.write_scalar(row, out)
    }

    /// A non-array value, NULLs written as the type's zero (Native's placeholder).
    fn write_scalar(&self, row: usize, out: &mut Vec<u8>) -> Result<(), NodeError> {
        let base = self.base();
        match &self.values {
            Values::Signed(values) => {
                let value = values.values().get(row).copied().unwrap_or(0);
                let value = if self.is_null(row) { 0 } else { value };
                match base {
                    ClickHouseType::Int8 => out.push(value as i8 as u8),
                    ClickHouseType::Int16 => out.extend_from_slice(&(value as i16).to_le_bytes()),
                    ClickHouseType::Int32 | ClickHouseType::Date32 => {
                        out.extend_from_slice(&(value as i32).to_le_bytes())
                    }
                    ClickHouseType::Date => {
                        let days = u16::try_from(value).map_err(|_| out_of_range(base, value))?;
                        out.extend_from_slice(&days.to_le_bytes())
                    }
                    ClickHouseType::DateTime(_) => {
                        let seconds = u32::try_from(value).map_err(|_| out_of_range(base, value))?;
                        out.extend_from_slice(&seconds.to_le_bytes())
                    }
                    _ => out.extend_from_slice(&value.to_le_bytes()),
                }
            }
            Values::Unsigned(values) => {
                let value = if self.is_null(row) { 0 } else { values.values().get(row).copied().unwrap_or(0) };
                let width = match base {
                    ClickHouseType::UInt8 => 1,
                    ClickHouseType::UInt16 => 2,
                    ClickHouseType::UInt32 => 4,
                    _ => 8,
                };
                out.extend_from_slice(value.to_le_bytes().get(..width).unwrap_or_default());
            }
            Values::Float(values) => {
                let value = if self.is_null(row) { 0.0 } else { values.values().get(row).copied().unwrap_or(0.0) };
                match base {
                    ClickHouseType::Float32 => out.extend_from_slice(&(value as f32).to_le_bytes()),
                    _ => out.extend_from_slice(&value.to_le_bytes()),
                }
            }
            Values::Bool(values) => out.push(u8::from(!self.is_null(row) && values.value(row))),
            Values::Text(values) => {
                let text = if self.is_null(row) { "" } else { values.value(row) };
                match base {
                    ClickHouseType::FixedString(n) => {
                        let bytes = text.as_bytes();
                        let mut fixed = vec![0u8; *n];
                        let len = bytes.len().min(*n);
                        if let (Some(to), Some(from)) = (fixed.get_mut(..len), bytes.get(..len)) {
                            to.copy_from_slice(from);
                        }
                        out.extend_from_slice(&fixed);
                    }
                    _ => {
                        write_varint(text.len() as u64, out);
                        out.extend_from_slice(text.as_bytes());
                    }
                }
            }
            Values::Array { .. } => return Err(NodeError::internal("an array written as a scalar")),
        }
        Ok(())
    }

    /// One value as JSON: numbers (64-bit integers quoted when asked), strings, dates and
    /// times as ClickHouse prints them, arrays, `null`.
    pub fn write_json(&self, row: usize, options: JsonOptions, out: &mut String) {
        if self.is_null(row) {
            out.push_str("null");
            return;
        }
        if let Some((items, range)) = self.items(row) {
            out.push('[');
            for (i, item) in range.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                items.write_json(item, options, out);
            }
            out.push(']');
            return;
        }
        let quoted =
            options.quote_64bit_integers && matches!(self.base(), ClickHouseType::Int64 | ClickHouseType::UInt64);
        match &self.values {
            Values::Signed(_) | Values::Unsigned(_) if !quoted && !self.is_temporal() => self.write_text(row, out),
            Values::Float(values) => match values.values().get(row) {
                Some(v) if v.is_finite() => {
                    let _ = write!(out, "{v}");
                }
                _ => out.push_str("null"),
            },
            Values::Bool(values) => out.push_str(if values.value(row) { "true" } else { "false" }),
            _ => {
                let mut text = String::new();
                self.write_text(row, &mut text);
                write_json_string(&text, out);
            }
        }
    }

    fn is_temporal(&self) -> bool {
        matches!(
            self.base(),
            ClickHouseType::Date
                | ClickHouseType::Date32
                | ClickHouseType::DateTime(_)
                | ClickHouseType::DateTime64(..)
        )
    }

    /// One value as text, the way ClickHouse prints it (`2024-01-02 03:04:05.678` for a
    /// DateTime64(3), `[1,2]` for an array); NULL is written as `null_text`.
    pub fn write_text_or(&self, row: usize, null_text: &str, out: &mut String) {
        if self.is_null(row) {
            out.push_str(null_text);
        } else {
            self.write_text(row, out)
        }
    }

    fn write_text(&self, row: usize, out: &mut String) {
        if self.is_null(row) {
            out.push_str("NULL");
            return;
        }
        match &self.values {
            Values::Signed(values) => {
                let value = values.values().get(row).copied().unwrap_or(0);
                match self.base() {
                    ClickHouseType::Date | ClickHouseType::Date32 => write_date(value, out),
                    ClickHouseType::DateTime(_) => write_datetime(value, 0, out),
                    ClickHouseType::DateTime64(p, _) => write_datetime(value, *p, out),
                    _ => {
                        let _ = write!(out, "{value}");
                    }
                }
            }
            Values::Unsigned(values) => {
                let _ = write!(out, "{}", values.values().get(row).copied().unwrap_or(0));
            }
            Values::Float(values) => {
                let value = values.values().get(row).copied().unwrap_or(0.0);
                match () {
                    _ if value.is_nan() => out.push_str("nan"),
                    _ if value.is_infinite() => out.push_str(if value > 0.0 { "inf" } else { "-inf" }),
                    _ => {
                        let _ = write!(out, "{value}");
                    }
                }
            }
            Values::Bool(values) => out.push_str(if values.value(row) { "true" } else { "false" }),
            Values::Text(values) => out.push_str(values.value(row)),
            Values::Array { .. } => {
                let Some((items, range)) = self.items(row) else { return };
                out.push('[');
                for (i, item) in range.enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if items.is_null(item) {
                        out.push_str("NULL");
                    } else if matches!(items.values, Values::Text(_)) || items.is_temporal() {
                        out.push('\'');
                        let mut text = String::new();
                        items.write_text(item, &mut text);
                        out.push_str(&text.replace('\\', "\\\\").replace('\'', "\\'"));
                        out.push('\'');
                    } else {
                        items.write_text(item, out);
                    }
                }
                out.push(']');
            }
        }
    }

    /// Whether a value is a number (Pretty formats align numbers to the right).
    pub fn is_numeric(&self) -> bool {
        matches!(self.values, Values::Signed(_) | Values::Unsigned(_) | Values::Float(_)) && !self.is_temporal()
    }

    /// Whether CSV quotes the values (ClickHouse writes numbers and booleans bare).
    pub fn is_quoted_in_csv(&self) -> bool {
        !self.is_numeric() && !matches!(self.values, Values::Bool(_))
    }
}

fn out_of_range(ty: &ClickHouseType, value: i64) -> NodeError {
    NodeError::bad_request(format!(
        "the value {value} does not fit ClickHouse's {ty} (1970 .. 2106 for DateTime, .. 2149 for Date) that \
         this format carries; read it with toString(...) or in a text format"
    ))
}

/// ClickHouse's variable-length unsigned integer (LEB128).
pub fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub fn write_json_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_date(days: i64, out: &mut String) {
    match chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::try_days(days)?))
    {
        Some(date) => write_calendar_date(date, out),
        None => {
            let _ = write!(out, "{days}");
        }
    }
}

/// A tick count of 10^-precision seconds as `YYYY-MM-DD hh:mm:ss[.fff]`, in UTC.
fn write_datetime(ticks: i64, precision: u8, out: &mut String) {
    let per_second = 10i64.pow(u32::from(precision.min(9)));
    let (seconds, fraction) = (ticks.div_euclid(per_second), ticks.rem_euclid(per_second));
    match chrono::DateTime::from_timestamp(seconds, 0) {
        Some(time) => {
            write_calendar_date(time.date_naive(), out);
            out.push(' ');
            let seconds_of_day = time.num_seconds_from_midnight();
            for (i, part) in
                [seconds_of_day / 3600, seconds_of_day / 60 % 60, seconds_of_day % 60].into_iter().enumerate()
            {
                if i > 0 {
                    out.push(':');
                }
                write_two_digits(part, out);
            }
            if precision > 0 {
                let _ = write!(out, ".{fraction:0width$}", width = usize::from(precision));
            }
        }
        None => {
            let _ = write!(out, "{ticks}");
        }
    }
}

/// `YYYY-MM-DD`, digit by digit for the years of four digits: chrono's `format` interprets its
/// pattern again for every value, 3% of the CPU of a query answering 8,334 minute buckets.
fn write_calendar_date(date: chrono::NaiveDate, out: &mut String) {
    let year = match u32::try_from(date.year()) {
        Ok(year) if year <= 9999 => year,
        _ => {
            let _ = write!(out, "{}", date.format("%Y-%m-%d"));
            return;
        }
    };
    write_two_digits(year / 100, out);
    write_two_digits(year % 100, out);
    out.push('-');
    write_two_digits(date.month(), out);
    out.push('-');
    write_two_digits(date.day(), out);
}

/// A number below 100 as two digits.
fn write_two_digits(value: u32, out: &mut String) {
    out.push(char::from(b'0' + (value / 10 % 10) as u8));
    out.push(char::from(b'0' + (value % 10) as u8));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int32Array, TimestampMillisecondArray};

    use super::*;

    proptest::proptest! {
        #[test]
        fn times_print_as_chrono_formats_them(
            seconds in -9_000_000_000_000_i64..9_000_000_000_000,
            days in -1_000_000_i64..4_000_000,
        ) {
            let mut written = String::new();
            write_datetime(seconds, 0, &mut written);
            let expected = match chrono::DateTime::from_timestamp(seconds, 0) {
                Some(time) => time.format("%Y-%m-%d %H:%M:%S").to_string(),
                None => seconds.to_string(),
            };
            proptest::prop_assert_eq!(written, expected);
            let mut written = String::new();
            write_date(days, &mut written);
            let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(days);
            proptest::prop_assert_eq!(written, date.format("%Y-%m-%d").to_string());
        }
    }

    #[test]
    fn values_print_as_clickhouse_prints_them() {
        let field =
            Field::new("t", DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None), true);
        let array: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None]));
        let column = Column::of_field(&field, &array).unwrap();
        assert_eq!(column.ty.to_string(), "Nullable(DateTime64(3))");
        let mut text = String::new();
        column.write_json(0, JsonOptions::default(), &mut text);
        column.write_json(1, JsonOptions::default(), &mut text);
        assert_eq!(text, "\"2023-11-14 22:13:20.123\"null");
        let mut native = Vec::new();
        column.write_native(&mut native).unwrap();
        assert_eq!(native.len(), 2 + 16);
        assert_eq!(&native[..2], &[0, 1]);
        assert_eq!(&native[2..10], &1_700_000_000_123i64.to_le_bytes());
    }

    #[test]
    fn big_integers_are_quoted_in_json_unless_asked() {
        let field = Field::new("n", DataType::Int64, false);
        let array: ArrayRef = Arc::new(Int64Array::from(vec![9_007_199_254_740_993]));
        let column = Column::of_field(&field, &array).unwrap();
        let mut quoted = String::new();
        column.write_json(0, JsonOptions::default(), &mut quoted);
        assert_eq!(quoted, "\"9007199254740993\"");
        let mut plain = String::new();
        column.write_json(0, JsonOptions { quote_64bit_integers: false }, &mut plain);
        assert_eq!(plain, "9007199254740993");
        let small: ArrayRef = Arc::new(Int32Array::from(vec![-5]));
        let column = Column::of_field(&Field::new("i", DataType::Int32, false), &small).unwrap();
        let mut out = Vec::new();
        column.write_row_binary(0, &mut out).unwrap();
        assert_eq!(out, (-5i32).to_le_bytes());
    }
}
