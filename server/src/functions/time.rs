//! ClickHouse's date and time functions: time buckets (`toStartOfHour`, `toStartOfInterval`,
//! ...), conversions (`toDate`, `toDateTime`, `toYYYYMM`, `toUnixTimestamp`), `now()`,
//! `today()` and `formatDateTime`. Every date and time is in UTC, the server's time zone.

use std::sync::Arc;

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Date32Array, Int64Array, StringBuilder, UInt32Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema, TimeUnit};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use strength_reduce::StrengthReducedU64;

const SECONDS_PER_DAY: i64 = 86_400;

/// The functions of this module, to register in a session.
pub fn functions() -> Vec<ScalarUDF> {
    let minute = 60;
    let bucket = |name: &'static str, bucket: Bucket| ScalarUDF::new_from_impl(StartOf::new(name, bucket));
    vec![
        bucket("toStartOfSecond", Bucket::Fixed { seconds: 1 }),
        bucket("toStartOfMinute", Bucket::Fixed { seconds: minute }),
        bucket("toStartOfFiveMinutes", Bucket::Fixed { seconds: 5 * minute }),
        bucket("toStartOfFiveMinute", Bucket::Fixed { seconds: 5 * minute }),
        bucket("toStartOfTenMinutes", Bucket::Fixed { seconds: 10 * minute }),
        bucket("toStartOfFifteenMinutes", Bucket::Fixed { seconds: 15 * minute }),
        bucket("toStartOfHour", Bucket::Fixed { seconds: 60 * minute }),
        bucket("toStartOfDay", Bucket::Fixed { seconds: SECONDS_PER_DAY }),
        bucket("toStartOfWeek", Bucket::Week { monday: false }),
        bucket("toMonday", Bucket::Week { monday: true }),
        bucket("toStartOfMonth", Bucket::Months(1)),
        bucket("toStartOfQuarter", Bucket::Months(3)),
        bucket("toStartOfYear", Bucket::Months(12)),
        bucket("toDate", Bucket::Date),
        bucket("toStartOfInterval", Bucket::Interval),
        ScalarUDF::new_from_impl(ToDateTime::new()),
        ScalarUDF::new_from_impl(DatePart::new("toYYYYMM", DatePartKind::YearMonth)),
        ScalarUDF::new_from_impl(DatePart::new("toYYYYMMDD", DatePartKind::YearMonthDay)),
        ScalarUDF::new_from_impl(DatePart::new("toUnixTimestamp", DatePartKind::UnixTimestamp)),
        ScalarUDF::new_from_impl(DatePart::new("toYear", DatePartKind::Year)),
        ScalarUDF::new_from_impl(DatePart::new("toMonth", DatePartKind::Month)),
        ScalarUDF::new_from_impl(DatePart::new("toHour", DatePartKind::Hour)),
        ScalarUDF::new_from_impl(Now::new("now", false)),
        ScalarUDF::new_from_impl(Now::new("today", true)),
        ScalarUDF::new_from_impl(FormatDateTime::new()),
    ]
}

/// A date or time argument as tick counts: `(ticks, ticks per second, its timestamp type)`.
/// Dates count as midnight, strings are parsed, integers are Unix seconds.
fn as_ticks(array: &ArrayRef) -> DfResult<(Int64Array, i64, DataType)> {
    let strict = CastOptions { safe: false, ..Default::default() };
    let (array, unit, tz) = match array.data_type() {
        DataType::Timestamp(unit, tz) => (array.clone(), *unit, tz.clone()),
        DataType::Date32 | DataType::Date64 => {
            let days = cast_with_options(array, &DataType::Date32, &strict)?;
            let days = cast_with_options(&days, &DataType::Int32, &strict)?;
            let seconds = cast_with_options(&days, &DataType::Int64, &strict)?;
            let seconds: Int64Array =
                seconds.as_primitive::<Int64Type>().unary(|d: i64| d.saturating_mul(SECONDS_PER_DAY));
            return Ok((seconds, 1, DataType::Timestamp(TimeUnit::Second, None)));
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            (cast_with_options(array, &DataType::Timestamp(TimeUnit::Second, None), &strict)?, TimeUnit::Second, None)
        }
        t if t.is_integer() => {
            (cast_with_options(array, &DataType::Timestamp(TimeUnit::Second, None), &strict)?, TimeUnit::Second, None)
        }
        DataType::Null => (
            datafusion::arrow::array::new_null_array(&DataType::Timestamp(TimeUnit::Second, None), array.len()),
            TimeUnit::Second,
            None,
        ),
        other => return exec_err!("expected a date or a date and time, got {other}"),
    };
    let per_second = ticks_per_second(unit);
    let ticks = cast_with_options(&array, &DataType::Int64, &strict)?;
    Ok((ticks.as_primitive::<Int64Type>().clone(), per_second, DataType::Timestamp(unit, tz)))
}

/// Ticks of a time unit in a second.
fn ticks_per_second(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

/// The timestamp type a time bucket of an argument of `input` type has.
fn timestamp_type_of(input: &DataType) -> DataType {
    match input {
        DataType::Timestamp(unit, tz) => DataType::Timestamp(*unit, tz.clone()),
        _ => DataType::Timestamp(TimeUnit::Second, None),
    }
}

fn days_to_date(days: i64) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(chrono::Duration::try_days(days)?)
}

fn date_to_days(date: NaiveDate) -> i64 {
    date.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days()
}

/// How a time is rounded down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Bucket {
    /// To a multiple of this many seconds since 1970 (keeps the argument's type).
    Fixed { seconds: i64 },
    /// To the week's first day, Sunday or Monday (a Date).
    Week { monday: bool },
    /// To the first day of a multiple of this many months since 1970 (a Date).
    Months(i64),
    /// To the day (a Date).
    Date,
    /// By the INTERVAL of the second argument.
    Interval,
}

/// What `toStartOfInterval`'s INTERVAL amounts to.
enum IntervalBucket {
    /// A number of ticks of the argument's unit.
    Ticks(i64),
    /// A number of weeks, counted from a Monday (a Date).
    Weeks(i64),
    Months(i64),
}

fn interval_of(value: Option<&ScalarValue>, per_second: i64) -> DfResult<IntervalBucket> {
    use datafusion::arrow::datatypes::IntervalMonthDayNano;
    let interval = match value {
        Some(ScalarValue::IntervalMonthDayNano(Some(interval))) => *interval,
        Some(ScalarValue::IntervalYearMonth(Some(months))) => IntervalMonthDayNano::new(*months, 0, 0),
        Some(ScalarValue::IntervalDayTime(Some(interval))) => {
            IntervalMonthDayNano::new(0, interval.days, i64::from(interval.milliseconds) * 1_000_000)
        }
        _ => {
            return plan_err!(
                "toStartOfInterval takes a constant INTERVAL, like toStartOfInterval(ts, INTERVAL 5 MINUTE)"
            );
        }
    };
    let (months, days, nanos) = (i64::from(interval.months), i64::from(interval.days), interval.nanoseconds);
    match (months, days, nanos) {
        (m, 0, 0) if m > 0 => Ok(IntervalBucket::Months(m)),
        (0, d, 0) if d > 0 && d % 7 == 0 => Ok(IntervalBucket::Weeks(d / 7)),
        (0, d, n) if d >= 0 && n >= 0 && (d > 0 || n > 0) => {
            let nanos = i128::from(d) * i128::from(SECONDS_PER_DAY) * 1_000_000_000 + i128::from(n);
            let ticks = nanos * i128::from(per_second) / 1_000_000_000;
            if ticks == 0 || ticks * 1_000_000_000 != nanos * i128::from(per_second) {
                return exec_err!("the INTERVAL is finer than the time's precision");
            }
            Ok(IntervalBucket::Ticks(i64::try_from(ticks).unwrap_or(i64::MAX)))
        }
        _ => plan_err!("toStartOfInterval takes a positive INTERVAL of one unit (SECOND .. YEAR)"),
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct StartOf {
    name: &'static str,
    /// The name in lower case, which DataFusion looks functions up by.
    aliases: [String; 1],
    bucket: Bucket,
    signature: Signature,
}

impl StartOf {
    fn new(name: &'static str, bucket: Bucket) -> Self {
        let arities = match bucket {
            Bucket::Week { monday: false } => vec![TypeSignature::Any(1), TypeSignature::Any(2)],
            Bucket::Interval => vec![TypeSignature::Any(2)],
            _ => vec![TypeSignature::Any(1)],
        };
        StartOf {
            name,
            aliases: [name.to_lowercase()],
            bucket,
            signature: Signature::one_of(arities, Volatility::Immutable),
        }
    }

    /// Whether the bucket is a day or longer, given as a Date.
    fn gives_date(&self, interval: Option<&ScalarValue>) -> bool {
        match self.bucket {
            Bucket::Fixed { .. } => false,
            Bucket::Interval => {
                matches!(interval_of(interval, 1), Ok(IntervalBucket::Months(_) | IntervalBucket::Weeks(_)))
            }
            _ => true,
        }
    }
}

impl ScalarUDFImpl for StartOf {
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match self.bucket {
            Bucket::Fixed { .. } => Ok(timestamp_type_of(arg_types.first().unwrap_or(&DataType::Null))),
            _ => Ok(DataType::Date32),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let input = args.arg_fields.first().map(|f| f.data_type().clone()).unwrap_or(DataType::Null);
        let interval = args.scalar_arguments.get(1).copied().flatten();
        if self.bucket == Bucket::Interval {
            interval_of(interval, 1_000_000_000)?;
        }
        let data_type = if self.gives_date(interval) { DataType::Date32 } else { timestamp_type_of(&input) };
        Ok(Arc::new(Field::new(self.name, data_type, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let Some(input) = args.args.first() else { return exec_err!("{} takes a time", self.name) };
        let (ticks, per_second, timestamp_type) = as_ticks(&input.to_array(rows)?)?;
        let interval = match (&self.bucket, args.args.get(1)) {
            (Bucket::Interval, Some(ColumnarValue::Scalar(value))) => Some(interval_of(Some(value), per_second)?),
            (Bucket::Interval, _) => return exec_err!("toStartOfInterval takes a constant INTERVAL"),
            _ => None,
        };
        let day_of = |t: i64| t.div_euclid(per_second).div_euclid(SECONDS_PER_DAY);
        let months_floor = |t: i64, n: i64| -> i64 {
            let Some(date) = days_to_date(day_of(t)) else { return 0 };
            let months = i64::from(date.year()) * 12 + i64::from(date.month0());
            let start = months - months.rem_euclid(n);
            NaiveDate::from_ymd_opt((start.div_euclid(12)) as i32, (start.rem_euclid(12) + 1) as u32, 1)
                .map(date_to_days)
                .unwrap_or(0)
        };
        // 1970-01-01 was a Thursday: day 4 is a Monday, day 3 a Sunday.
        let week_floor = |t: i64, weeks: i64, first: i64| {
            let days = day_of(t);
            days - (days - first).rem_euclid(7 * weeks)
        };
        let monday_mode = match (&self.bucket, args.args.get(1)) {
            (Bucket::Week { monday: false }, Some(ColumnarValue::Scalar(mode))) => {
                let mode = mode.cast_to(&DataType::Int64)?;
                matches!(mode, ScalarValue::Int64(Some(m)) if m % 2 == 1)
            }
            (Bucket::Week { monday }, _) => *monday,
            _ => false,
        };
        let array: ArrayRef = match (&self.bucket, &interval) {
            (Bucket::Fixed { seconds }, _) => {
                let out = floor_to_multiple(&ticks, seconds.saturating_mul(per_second));
                cast_with_options(&(Arc::new(out) as ArrayRef), &timestamp_type, &CastOptions::default())?
            }
            (_, Some(IntervalBucket::Ticks(size))) => {
                let out = floor_to_multiple(&ticks, *size);
                cast_with_options(&(Arc::new(out) as ArrayRef), &timestamp_type, &CastOptions::default())?
            }
            (_, Some(IntervalBucket::Weeks(n))) => dates(&ticks, |t| week_floor(t, *n, 4)),
            (_, Some(IntervalBucket::Months(n))) => dates(&ticks, |t| months_floor(t, *n)),
            (Bucket::Week { .. }, _) => dates(&ticks, |t| week_floor(t, 1, if monday_mode { 4 } else { 3 })),
            (Bucket::Months(n), _) => dates(&ticks, |t| months_floor(t, *n)),
            (Bucket::Date, _) => dates(&ticks, day_of),
            (Bucket::Interval, None) => return exec_err!("toStartOfInterval takes a constant INTERVAL"),
        };
        Ok(ColumnarValue::Array(array))
    }
}

/// Every tick rounded down to a multiple of `size` (at least 1); a floor below the smallest
/// tick is the smallest tick. Parts are sorted, so times mostly come in order (within each
/// host, say): a tick inside the previous tick's bucket takes that bucket without dividing
/// (the division per row was a fifth of a minute-bucket query's CPU over 10 M rows). Other
/// ticks are divided, strength-reduced to a multiply and a shift from 1970 on.
fn floor_to_multiple(ticks: &Int64Array, size: i64) -> Int64Array {
    let buckets = TickBuckets::new(size);
    // The bucket [start, end) of the previous tick; empty after a floor that had to be clamped.
    let (mut start, mut end) = (0_i64, 0_i64);
    let floors: Vec<i64> = ticks
        .values()
        .iter()
        .map(|&t| {
            if !(start..end).contains(&t) {
                (start, end) = buckets.bounds(t);
            }
            start
        })
        .collect();
    Int64Array::new(floors.into(), ticks.nulls().cloned())
}

/// Buckets of a fixed number of ticks, aligned on 1970: what `toStartOfMinute` and the other
/// fixed-size buckets round a time down to.
#[derive(Clone, Copy, Debug)]
pub struct TickBuckets {
    size: i64,
    divisor: StrengthReducedU64,
}

impl TickBuckets {
    /// Buckets of `size` ticks (at least 1).
    pub fn new(size: i64) -> Self {
        let size = size.max(1);
        TickBuckets { size, divisor: StrengthReducedU64::new(size as u64) }
    }

    /// The bucket `[start, end)` holding tick `t`: `start` is what the function answers for it.
    /// A floor below the smallest tick is the smallest tick, with an empty range.
    pub fn bounds(&self, t: i64) -> (i64, i64) {
        let floor =
            if t >= 0 { Some(t - (t as u64 % self.divisor) as i64) } else { t.checked_sub(t.rem_euclid(self.size)) };
        match floor {
            Some(floor) => (floor, floor.saturating_add(self.size)),
            None => (i64::MIN, i64::MIN),
        }
    }
}

/// The column and the buckets of a group key that is a fixed-size time bucket of a time
/// column (`toStartOfMinute(ts)`, `toStartOfInterval(ts, INTERVAL 5 MINUTE)`, ...), so that
/// grouping can find the runs of equal buckets straight from the times; None for any other
/// expression. The buckets are in the column's ticks, and the key's values are those ticks.
pub fn fixed_time_bucket(key: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<(usize, TickBuckets)> {
    let function = key.downcast_ref::<ScalarFunctionExpr>()?;
    let start_of = function.fun().inner().downcast_ref::<StartOf>()?;
    let column = function.args().first()?.downcast_ref::<Column>()?;
    let DataType::Timestamp(unit, _) = schema.fields().get(column.index())?.data_type() else { return None };
    let per_second = ticks_per_second(*unit);
    let size = match start_of.bucket {
        Bucket::Fixed { seconds } => seconds.saturating_mul(per_second),
        Bucket::Interval => {
            let interval = function.args().get(1)?.downcast_ref::<Literal>()?;
            match interval_of(Some(interval.value()), per_second).ok()? {
                IntervalBucket::Ticks(size) => size,
                IntervalBucket::Weeks(_) | IntervalBucket::Months(_) => return None,
            }
        }
        Bucket::Week { .. } | Bucket::Months(_) | Bucket::Date => return None,
    };
    Some((column.index(), TickBuckets::new(size)))
}

fn dates(ticks: &Int64Array, day: impl Fn(i64) -> i64) -> ArrayRef {
    let days: Date32Array = ticks.unary(|t| i32::try_from(day(t)).unwrap_or(i32::MIN));
    Arc::new(days)
}

/// `toDateTime(x)`: a date, a string or a number of seconds as a DateTime.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToDateTime {
    signature: Signature,
}

impl ToDateTime {
    fn new() -> Self {
        ToDateTime {
            signature: Signature::one_of(vec![TypeSignature::Any(1), TypeSignature::Any(2)], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ToDateTime {
    fn name(&self) -> &str {
        "toDateTime"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Second, None))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let Some(input) = args.args.first() else { return exec_err!("toDateTime takes a value") };
        let (ticks, per_second, _) = as_ticks(&input.to_array(rows)?)?;
        let seconds: Int64Array = ticks.unary(|t| t.div_euclid(per_second));
        let array = cast_with_options(
            &(Arc::new(seconds) as ArrayRef),
            &DataType::Timestamp(TimeUnit::Second, None),
            &CastOptions::default(),
        )?;
        Ok(ColumnarValue::Array(array))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum DatePartKind {
    YearMonth,
    YearMonthDay,
    UnixTimestamp,
    Year,
    Month,
    Hour,
}

/// A number taken from a date or time (`toYYYYMM`, `toUnixTimestamp`, ...), as UInt32 like
/// ClickHouse's (`toUnixTimestamp` of a time before 1970 is an error).
#[derive(Debug, PartialEq, Eq, Hash)]
struct DatePart {
    name: &'static str,
    kind: DatePartKind,
    signature: Signature,
}

impl DatePart {
    fn new(name: &'static str, kind: DatePartKind) -> Self {
        DatePart { name, kind, signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for DatePart {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            DatePartKind::Month | DatePartKind::Hour => DataType::UInt8,
            DatePartKind::Year => DataType::UInt16,
            _ => DataType::UInt32,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let Some(input) = args.args.first() else { return exec_err!("{} takes a time", self.name) };
        let (ticks, per_second, _) = as_ticks(&input.to_array(rows)?)?;
        let mut out = Vec::with_capacity(ticks.len());
        for (i, t) in ticks.values().iter().enumerate() {
            if ticks.is_null(i) {
                out.push(None);
                continue;
            }
            let seconds = t.div_euclid(per_second);
            let date = days_to_date(seconds.div_euclid(SECONDS_PER_DAY));
            let value = match (self.kind, date) {
                (DatePartKind::UnixTimestamp, _) => match u32::try_from(seconds) {
                    Ok(v) => v,
                    Err(_) => return exec_err!("toUnixTimestamp: {seconds} is outside 1970 .. 2106"),
                },
                (DatePartKind::Hour, _) => (seconds.rem_euclid(SECONDS_PER_DAY) / 3600) as u32,
                (_, None) => return exec_err!("{}: {seconds} is not a representable time", self.name),
                (DatePartKind::YearMonth, Some(d)) => d.year() as u32 * 100 + d.month(),
                (DatePartKind::YearMonthDay, Some(d)) => d.year() as u32 * 10_000 + d.month() * 100 + d.day(),
                (DatePartKind::Year, Some(d)) => d.year() as u32,
                (DatePartKind::Month, Some(d)) => d.month(),
            };
            out.push(Some(value));
        }
        let array: ArrayRef = Arc::new(UInt32Array::from(out));
        let target = self.return_type(&[])?;
        Ok(ColumnarValue::Array(cast_with_options(&array, &target, &CastOptions::default())?))
    }
}

/// `now()` (a DateTime) and `today()` (a Date): the query's start time, the same in every row.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Now {
    name: &'static str,
    date: bool,
    signature: Signature,
}

impl Now {
    fn new(name: &'static str, date: bool) -> Self {
        Now { name, date, signature: Signature::nullary(Volatility::Stable) }
    }

    fn value(&self, now: chrono::DateTime<chrono::Utc>) -> ScalarValue {
        let seconds = now.timestamp();
        if self.date {
            ScalarValue::Date32(i32::try_from(seconds.div_euclid(SECONDS_PER_DAY)).ok())
        } else {
            ScalarValue::TimestampSecond(Some(seconds), None)
        }
    }
}

impl ScalarUDFImpl for Now {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(if self.date { DataType::Date32 } else { DataType::Timestamp(TimeUnit::Second, None) })
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> DfResult<FieldRef> {
        Ok(Arc::new(Field::new(self.name, self.return_type(&[])?, false)))
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        match info.query_execution_start_time() {
            Some(now) => Ok(ExprSimplifyResult::Simplified(Expr::Literal(self.value(now), None))),
            None => Ok(ExprSimplifyResult::Original(args)),
        }
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value(chrono::Utc::now())))
    }
}

/// `formatDateTime(time, format)` with ClickHouse's format codes (`%i` is minutes, `%M` the
/// month's name).
#[derive(Debug, PartialEq, Eq, Hash)]
struct FormatDateTime {
    signature: Signature,
}

impl FormatDateTime {
    fn new() -> Self {
        FormatDateTime { signature: Signature::any(2, Volatility::Immutable) }
    }
}

/// A ClickHouse format string in chrono's codes.
fn chrono_format(format: &str) -> DfResult<String> {
    let mut out = String::with_capacity(format.len() + 8);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let code = match chars.next() {
            Some(code) => code,
            None => return exec_err!("formatDateTime: the format ends with a lone %"),
        };
        out.push_str(match code {
            'Y' => "%Y",
            'y' => "%y",
            'C' => "%C",
            'm' => "%m",
            'd' => "%d",
            'e' => "%e",
            'H' => "%H",
            'I' => "%I",
            'i' => "%M",
            'S' | 's' => "%S",
            'F' => "%Y-%m-%d",
            'T' => "%H:%M:%S",
            'D' => "%m/%d/%y",
            'R' => "%H:%M",
            'j' => "%j",
            'p' => "%p",
            'a' => "%a",
            'b' | 'h' => "%b",
            'M' => "%B",
            'u' => "%u",
            'w' => "%w",
            'V' => "%V",
            'G' => "%G",
            'n' => "\n",
            't' => "\t",
            '%' => "%%",
            'f' => "%6f",
            other => return exec_err!("formatDateTime: the format code %{other} is not supported"),
        });
    }
    Ok(out)
}

impl ScalarUDFImpl for FormatDateTime {
    fn name(&self) -> &str {
        "formatDateTime"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let format = match args.args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(f)) | ScalarValue::Utf8View(Some(f)))) => f.clone(),
            _ => return exec_err!("formatDateTime takes a constant format string"),
        };
        let format = chrono_format(&format)?;
        let Some(input) = args.args.first() else { return exec_err!("formatDateTime takes a time") };
        let (ticks, per_second, _) = as_ticks(&input.to_array(rows)?)?;
        let nanos_per_tick = 1_000_000_000 / per_second;
        let mut out = StringBuilder::with_capacity(ticks.len(), ticks.len() * format.len());
        for (i, t) in ticks.values().iter().enumerate() {
            if ticks.is_null(i) {
                out.append_null();
                continue;
            }
            let (seconds, rest) = (t.div_euclid(per_second), t.rem_euclid(per_second));
            match chrono::DateTime::from_timestamp(seconds, (rest * nanos_per_tick) as u32) {
                Some(time) => out.append_value(time.format(&format).to_string()),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_to_multiple_of_ticks_in_order_is_each_ticks_floor() {
        let ticks: Vec<i64> = (-200..200).map(|i| i * 7).chain((0..100).map(|i| 1_704_067_200 + i * 13)).collect();
        for size in [1, 7, 60, 3_600] {
            let floored = floor_to_multiple(&Int64Array::from(ticks.clone()), size);
            for (tick, floor) in ticks.iter().zip(floored.values()) {
                assert_eq!(*floor, tick - tick.rem_euclid(size), "{tick} to a multiple of {size}");
            }
        }
    }

    #[test]
    fn floor_to_multiple_is_the_euclidean_floor_on_both_sides_of_1970() {
        let ticks = [i64::MIN, -3_601, -3_600, -1, 0, 1, 59, 60, 3_599, 1_704_067_259, i64::MAX];
        for size in [1, 60, 3_600, 86_400, 60_000_000_000, i64::MAX] {
            let floored = floor_to_multiple(&Int64Array::from(ticks.to_vec()), size);
            for (tick, floor) in ticks.iter().zip(floored.values()) {
                assert_eq!(*floor, tick.saturating_sub(tick.rem_euclid(size)), "{tick} to a multiple of {size}");
            }
        }
    }
}
