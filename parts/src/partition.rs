use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use serde::{Deserialize, Serialize};

use crate::PartError;

/// How a table's rows are split into partitions. Partitions are computed in UTC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PartitionSpec {
    /// One partition, named `all` (as in ClickHouse).
    None,
    /// `toYYYYMM(column)`: partition ids like `202401`.
    Month { column: String },
    /// `toYYYYMMDD(column)` or `toDate(column)`: partition ids like `20240131`.
    Day { column: String },
}

impl PartitionSpec {
    pub fn column(&self) -> Option<&str> {
        match self {
            PartitionSpec::None => None,
            PartitionSpec::Month { column } | PartitionSpec::Day { column } => Some(column),
        }
    }

    /// Follows a renamed column.
    pub fn rename_column(&mut self, from: &str, to: &str) {
        match self {
            PartitionSpec::Month { column } | PartitionSpec::Day { column } if column == from => {
                *column = to.to_string()
            }
            _ => {}
        }
    }

    /// The expression as a user writes it in `PARTITION BY`.
    pub fn expression(&self) -> String {
        match self {
            PartitionSpec::None => "tuple()".to_string(),
            PartitionSpec::Month { column } => format!("toYYYYMM({column})"),
            PartitionSpec::Day { column } => format!("toYYYYMMDD({column})"),
        }
    }
}

/// Splits a block into one block per partition, keeping the input order of rows inside each.
/// Returned in ascending partition id order, so the result is deterministic.
pub fn split_by_partition(batch: &RecordBatch, spec: &PartitionSpec) -> Result<Vec<(String, RecordBatch)>, PartError> {
    let Some(column) = spec.column() else {
        return Ok(vec![("all".to_string(), batch.clone())]);
    };
    let monthly = matches!(spec, PartitionSpec::Month { .. });
    let array = batch.column_by_name(column).ok_or_else(|| PartError::MissingColumn { column: column.to_string() })?;
    let days = days_since_epoch(array.as_ref(), column)?;
    // Rows mostly come in runs of one day, and a whole small insert in one partition: a day's
    // key is computed once per run, and rows are grouped only when a second key turns up.
    let mut keys = Vec::with_capacity(days.len());
    let mut last: Option<(i64, u32)> = None;
    for (row, day) in days.into_iter().enumerate() {
        let day = day.ok_or_else(|| PartError::NullPartitionValue { column: column.to_string(), row: row + 1 })?;
        let key = match last {
            Some((last_day, key)) if last_day == day => key,
            _ => {
                let (y, m, d) = civil_from_days(day);
                let key = if monthly { (y * 100 + m) as u32 } else { (y * 10_000 + m * 100 + d) as u32 };
                last = Some((day, key));
                key
            }
        };
        keys.push(key);
    }
    match keys.first() {
        None => return Ok(Vec::new()),
        Some(&first) if keys.iter().all(|&key| key == first) => return Ok(vec![(first.to_string(), batch.clone())]),
        Some(_) => {}
    }
    let mut rows_by_partition: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (row, key) in keys.into_iter().enumerate() {
        rows_by_partition.entry(key).or_default().push(row as u32);
    }
    rows_by_partition
        .into_iter()
        .map(|(key, rows)| Ok((key.to_string(), take_record_batch(batch, &UInt32Array::from(rows))?)))
        .collect()
}

fn days_since_epoch(array: &dyn Array, column: &str) -> Result<Vec<Option<i64>>, PartError> {
    fn per_day<T: arrow::datatypes::ArrowPrimitiveType>(array: &dyn Array, per_day: i64) -> Vec<Option<i64>>
    where
        T::Native: Into<i64>,
    {
        array.as_primitive::<T>().iter().map(|v| v.map(|v| v.into().div_euclid(per_day))).collect()
    }
    Ok(match array.data_type() {
        DataType::Date32 => per_day::<Date32Type>(array, 1),
        DataType::Date64 => per_day::<Date64Type>(array, 86_400_000),
        DataType::Timestamp(TimeUnit::Second, _) => per_day::<TimestampSecondType>(array, 86_400),
        DataType::Timestamp(TimeUnit::Millisecond, _) => per_day::<TimestampMillisecondType>(array, 86_400_000),
        DataType::Timestamp(TimeUnit::Microsecond, _) => per_day::<TimestampMicrosecondType>(array, 86_400_000_000),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => per_day::<TimestampNanosecondType>(array, 86_400_000_000_000),
        other => {
            return Err(PartError::UnsupportedPartitionType {
                column: column.to_string(),
                data_type: other.to_string(),
            });
        }
    })
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn splits_rows_by_month_keeping_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("v", DataType::Int64, false),
        ]));
        let jan = 1_704_067_200_000i64; // 2024-01-01
        let feb = 1_706_745_600_000i64; // 2024-02-01
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![feb, jan, feb + 1, jan + 1])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let parts = split_by_partition(&batch, &PartitionSpec::Month { column: "ts".into() }).unwrap();
        let ids: Vec<_> = parts.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(ids, ["202401", "202402"]);
        let values = |b: &RecordBatch| b.column(1).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec();
        assert_eq!(values(&parts[0].1), [2, 4]);
        assert_eq!(values(&parts[1].1), [1, 3]);
    }
}
