//! The common spelling of a date and time, `YYYY-MM-DD hh:mm:ss[.fraction]`, read without
//! Arrow's general parser. That parser accepts every ISO 8601 variant and time zone, and costs
//! about a quarter of decoding a TabSeparated insert of timestamped rows; almost every value a
//! client sends is in this one layout.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, PrimitiveArray, StringArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};

/// Years read here; anything else goes to the general parser. Inside this range every unit,
/// nanoseconds included, holds the value in 64 bits.
const YEARS: std::ops::RangeInclusive<i64> = 1900..=2199;

/// The values of `strings` as timestamps in `unit` (UTC, no time zone), or `None` when one of
/// them is spelled any other way: the caller then parses the whole column the general way, so
/// what is accepted and how it is read never depends on this shortcut.
pub fn parse_common_timestamps(strings: &StringArray, unit: TimeUnit) -> Option<ArrayRef> {
    let mut parser = CommonTimestamps::new(unit);
    let mut values = Vec::with_capacity(strings.len());
    for i in 0..strings.len() {
        values.push(if strings.is_valid(i) { parser.parse(strings.value(i))? } else { 0 });
    }
    Some(timestamp_array(values, strings.nulls().cloned(), unit))
}

/// Reads values in the common spelling as timestamps in one unit. The rows of an insert mostly
/// share their date: the last date read and its day number are kept, and a value of the same
/// date reads only its time.
pub struct CommonTimestamps {
    /// Fraction digits the unit holds.
    digits: u32,
    last_date: Option<([u8; 10], i64)>,
}

impl CommonTimestamps {
    pub fn new(unit: TimeUnit) -> Self {
        let digits = match unit {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 3,
            TimeUnit::Microsecond => 6,
            TimeUnit::Nanosecond => 9,
        };
        CommonTimestamps { digits, last_date: None }
    }

    /// `YYYY-MM-DD hh:mm:ss` (or with `T` between date and time), then optionally `.` and at
    /// most as many fraction digits as the unit holds, as a count of the unit since 1970; or
    /// `None` when `text` is spelled any other way.
    pub fn parse(&mut self, text: &str) -> Option<i64> {
        let digits = self.digits;
        let (head, fraction) = match text.as_bytes().split_at_checked(19) {
            Some((head, [])) => (head, &[][..]),
            Some((head, [b'.', fraction @ ..])) if !fraction.is_empty() && fraction.len() <= digits as usize => {
                (head, fraction)
            }
            _ => return None,
        };
        let (date, time) = head.split_first_chunk::<10>()?;
        let [b' ' | b'T', h0, h1, b':', mi0, mi1, b':', s0, s1] = *time else {
            return None;
        };
        let days = match self.last_date {
            Some((last, days)) if last == *date => days,
            _ => {
                let days = days_of(date)?;
                self.last_date = Some((*date, days));
                days
            }
        };
        let (hour, minute, second) = (number(&[h0, h1])?, number(&[mi0, mi1])?, number(&[s0, s1])?);
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
        let fraction_value = if fraction.is_empty() { 0 } else { number(fraction)? };
        let missing_digits = digits - fraction.len() as u32;
        Some(seconds * 10_i64.pow(digits) + fraction_value * 10_i64.pow(missing_digits))
    }
}

/// Days since 1970 of `YYYY-MM-DD`, a valid date of [`YEARS`].
fn days_of(date: &[u8; 10]) -> Option<i64> {
    let [y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1] = *date else {
        return None;
    };
    let year = number(&[y0, y1, y2, y3])?;
    let (month, day) = (number(&[mo0, mo1])?, number(&[d0, d1])?);
    if !YEARS.contains(&year) || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// Timestamps in `unit` (no time zone) from their values and validity.
pub fn timestamp_array(values: Vec<i64>, nulls: Option<NullBuffer>, unit: TimeUnit) -> ArrayRef {
    match unit {
        TimeUnit::Second => Arc::new(PrimitiveArray::<TimestampSecondType>::new(values.into(), nulls)) as ArrayRef,
        TimeUnit::Millisecond => Arc::new(PrimitiveArray::<TimestampMillisecondType>::new(values.into(), nulls)),
        TimeUnit::Microsecond => Arc::new(PrimitiveArray::<TimestampMicrosecondType>::new(values.into(), nulls)),
        TimeUnit::Nanosecond => Arc::new(PrimitiveArray::<TimestampNanosecondType>::new(values.into(), nulls)),
    }
}

/// The value of a run of ASCII digits (at most 9 of them).
fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0_i64, |value, &b| b.is_ascii_digit().then(|| value * 10 + i64::from(b - b'0')))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use datafusion::arrow::compute::{CastOptions, cast_with_options};
    use datafusion::arrow::datatypes::DataType;

    use super::*;

    /// The general parser, as the caller would use it without the shortcut.
    fn general(strings: &StringArray, unit: TimeUnit) -> ArrayRef {
        cast_with_options(strings, &DataType::Timestamp(unit, None), &CastOptions::default()).unwrap()
    }

    const UNITS: [TimeUnit; 4] = [TimeUnit::Second, TimeUnit::Millisecond, TimeUnit::Microsecond, TimeUnit::Nanosecond];

    #[test]
    fn reads_what_the_general_parser_reads() {
        let mut texts = vec![
            "1970-01-01 00:00:00".to_string(),
            "1900-01-01 00:00:00".to_string(),
            "2199-12-31 23:59:59".to_string(),
            "2024-02-29 12:34:56".to_string(),
            "2000-02-29T01:02:03".to_string(),
            "2024-01-01 00:00:00.5".to_string(),
            "2024-01-01 00:00:00.123".to_string(),
            "2024-01-01 00:00:00.123456".to_string(),
            "2024-01-01 00:00:00.123456789".to_string(),
        ];
        // Every day of a few years either side of leap years and centuries, at odd times.
        for (year, step) in [(1900, 1), (1999, 1), (2000, 1), (2023, 1), (2024, 1), (2100, 1), (2150, 7)] {
            for month in 1..=12 {
                for day in (1..=days_in_month(year, month)).step_by(step) {
                    let (h, m, s) = ((day * 7) % 24, (day * 13) % 60, (day * 31 + month) % 60);
                    texts.push(format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}"));
                }
            }
        }
        // Many times of one date, as an insert's rows mostly are.
        for hour in 0..24 {
            texts.push(format!("2024-03-10 {hour:02}:{:02}:{:02}", hour * 2, 59 - hour));
        }
        let strings = StringArray::from_iter(texts.iter().map(Some).chain([None]));
        for unit in UNITS {
            let digits = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                TimeUnit::Microsecond => 6,
                TimeUnit::Nanosecond => 9,
            };
            let fitting: StringArray = strings
                .iter()
                .filter(|t| t.and_then(|t| t.split_once('.')).is_none_or(|(_, f)| f.len() <= digits))
                .collect();
            let fast = parse_common_timestamps(&fitting, unit).expect("all in the common layout");
            assert_eq!(&fast, &general(&fitting, unit), "{unit:?}");
        }
    }

    #[test]
    fn a_kept_date_reads_as_it_did_and_a_bad_one_is_not_kept() {
        let mut parser = CommonTimestamps::new(TimeUnit::Second);
        let first = parser.parse("2024-02-29 10:00:00").unwrap();
        assert_eq!(parser.parse("2024-02-29 25:00:00"), None, "a bad time of the kept date");
        assert_eq!(parser.parse("2024-02-29T11:00:00"), Some(first + 3_600));
        assert_eq!(parser.parse("2023-02-29 11:00:00"), None, "a bad date");
        assert_eq!(parser.parse("2024-02-29 11:00:01"), Some(first + 3_601), "the last good date still read");
        assert_eq!(parser.parse("2024-03-01 00:00:00"), Some(first - 10 * 3_600 + 86_400));
    }

    #[test]
    fn leaves_every_other_spelling_to_the_general_parser() {
        for text in [
            "2024-01-01",
            "2024-01-01 00:00",
            "2024-01-01 00:00:00Z",
            "2024-01-01 00:00:00+01:00",
            "2024-01-01 00:00:00.",
            "2024-01-01 00:00:00.1234567890",
            "2024-02-30 00:00:00",
            "2023-02-29 00:00:00",
            "2024-13-01 00:00:00",
            "2024-00-01 00:00:00",
            "2024-01-00 00:00:00",
            "2024-01-01 24:00:00",
            "2024-01-01 00:60:00",
            "2024-01-01 00:00:60",
            "1899-12-31 23:59:59",
            "2200-01-01 00:00:00",
            "+024-01-01 00:00:00",
            "2024/01/01 00:00:00",
            " 2024-01-01 00:00:00",
            "2024-01-01 00:00:00 ",
            "1704067200",
            "",
            "２０２４-01-01 00:00:00",
        ] {
            let strings = StringArray::from(vec![text]);
            assert!(parse_common_timestamps(&strings, TimeUnit::Second).is_none(), "{text:?}");
        }
        let fraction = StringArray::from(vec!["2024-01-01 00:00:00.5"]);
        assert!(parse_common_timestamps(&fraction, TimeUnit::Second).is_none(), "a fraction finer than the unit");
    }
}
