//! A part's column statistics (least value, greatest value, NULL count), gathered chunk by
//! chunk as the part is written.

use std::cmp::{max_by, min_by};

use arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, make_array};
use arrow::buffer::NullBuffer;
use arrow::compute::{max_boolean, max_string, min_boolean, min_string};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};

use crate::ColumnStats;

/// One column's statistics so far.
#[derive(Default)]
pub(crate) struct ColumnStatsBuilder {
    extremes: Extremes,
    null_count: u64,
}

/// The least and the greatest value seen, kept as the manifest records them: integers, dates
/// and timestamps (in their unit) as i64 but UInt64; floats in Arrow's total order (NaN above
/// every number, a negative NaN below), which is the order its comparison kernels filter by.
#[derive(Default, Debug, PartialEq)]
enum Extremes {
    /// No value seen yet, or a type without statistics.
    #[default]
    None,
    Int(i64, i64),
    UInt(u64, u64),
    Float(f64, f64),
    Bool(bool, bool),
    Text(String, String),
}

impl ColumnStatsBuilder {
    /// Takes in the next chunk of the column. One pass over each chunk's values, without
    /// copying them: the two passes of Arrow's `min` and `max` kernels, and the cast of every
    /// date and timestamp to Int64 before them, were a tenth of a merge's CPU.
    pub(crate) fn add(&mut self, array: &ArrayRef) {
        self.null_count += array.null_count() as u64;
        let nulls = array.logical_nulls();
        let nulls = nulls.as_ref();
        let here = match array.data_type() {
            DataType::Utf8 => {
                let strings = array.as_string::<i32>();
                match (min_string(strings), max_string(strings)) {
                    (Some(least), Some(greatest)) => Extremes::Text(least.to_string(), greatest.to_string()),
                    _ => Extremes::None,
                }
            }
            DataType::Boolean => {
                let booleans = array.as_boolean();
                match (min_boolean(booleans), max_boolean(booleans)) {
                    (Some(least), Some(greatest)) => Extremes::Bool(least, greatest),
                    _ => Extremes::None,
                }
            }
            DataType::Float64 => floats(array.as_primitive::<Float64Type>().values(), nulls, |v| v),
            DataType::Float32 => floats(array.as_primitive::<Float32Type>().values(), nulls, f64::from),
            DataType::UInt64 => fold(array.as_primitive::<UInt64Type>().values(), nulls, |v| v)
                .map_or(Extremes::None, |(l, g)| Extremes::UInt(l, g)),
            DataType::Int8 => integers::<Int8Type>(array, nulls),
            DataType::Int16 => integers::<Int16Type>(array, nulls),
            DataType::Int32 => integers::<Int32Type>(array, nulls),
            DataType::Int64 => integers::<Int64Type>(array, nulls),
            DataType::UInt8 => integers::<UInt8Type>(array, nulls),
            DataType::UInt16 => integers::<UInt16Type>(array, nulls),
            DataType::UInt32 => integers::<UInt32Type>(array, nulls),
            // Dates, times, timestamps and durations are 32- or 64-bit integers in their unit.
            DataType::Date32 | DataType::Time32(_) => stored_integers::<Int32Type>(array, nulls),
            DataType::Date64 | DataType::Time64(_) | DataType::Timestamp(_, _) | DataType::Duration(_) => {
                stored_integers::<Int64Type>(array, nulls)
            }
            _ => Extremes::None,
        };
        self.extremes = std::mem::take(&mut self.extremes).widened(here);
    }

    pub(crate) fn finish(self) -> ColumnStats {
        let json_f64 = |v: f64| serde_json::Number::from_f64(v).map(serde_json::Value::Number);
        // Floats JSON cannot hold (NaN, the infinities) are no bound.
        let (min, max) = match self.extremes {
            Extremes::None => (None, None),
            Extremes::Int(least, greatest) => (Some(least.into()), Some(greatest.into())),
            Extremes::UInt(least, greatest) => (Some(least.into()), Some(greatest.into())),
            Extremes::Float(least, greatest) => (json_f64(least), json_f64(greatest)),
            Extremes::Bool(least, greatest) => (Some(least.into()), Some(greatest.into())),
            Extremes::Text(least, greatest) => (Some(least.into()), Some(greatest.into())),
        };
        ColumnStats { min, max, null_count: self.null_count }
    }
}

impl Extremes {
    /// The least of both least values and the greatest of both greatest.
    fn widened(self, other: Extremes) -> Extremes {
        use Extremes::*;
        match (self, other) {
            (Int(a, b), Int(c, d)) => Int(a.min(c), b.max(d)),
            (UInt(a, b), UInt(c, d)) => UInt(a.min(c), b.max(d)),
            (Float(a, b), Float(c, d)) => Float(min_by(a, c, f64::total_cmp), max_by(b, d, f64::total_cmp)),
            (Bool(a, b), Bool(c, d)) => Bool(a & c, b | d),
            (Text(a, b), Text(c, d)) => Text(a.min(c), b.max(d)),
            // A chunk without values leaves what was seen.
            (seen, None) => seen,
            (_, here) => here,
        }
    }
}

/// The least and the greatest key of the values NULLs do not mask.
fn fold<T: Copy, K: Ord + Copy>(values: &[T], nulls: Option<&NullBuffer>, key: impl Fn(T) -> K) -> Option<(K, K)> {
    let mut keys = values.iter().map(|&v| key(v));
    match nulls.filter(|nulls| nulls.null_count() > 0) {
        None => {
            let first = keys.next()?;
            Some(keys.fold((first, first), |(least, greatest), k| (least.min(k), greatest.max(k))))
        }
        Some(nulls) => {
            let mut valid = keys.zip(nulls.iter()).filter_map(|(k, valid)| valid.then_some(k));
            let first = valid.next()?;
            Some(valid.fold((first, first), |(least, greatest), k| (least.min(k), greatest.max(k))))
        }
    }
}

fn integers<T: ArrowPrimitiveType>(array: &ArrayRef, nulls: Option<&NullBuffer>) -> Extremes
where
    T::Native: Into<i64>,
{
    fold(array.as_primitive::<T>().values(), nulls, Into::into).map_or(Extremes::None, |(l, g)| Extremes::Int(l, g))
}

/// A date, time or timestamp array's values as the integers they are stored as (no copy: the
/// same buffers, read as another type).
fn stored_integers<T: ArrowPrimitiveType>(array: &ArrayRef, nulls: Option<&NullBuffer>) -> Extremes
where
    T::Native: Into<i64>,
{
    match array.to_data().into_builder().data_type(T::DATA_TYPE).build() {
        Ok(data) => integers::<T>(&make_array(data), nulls),
        Err(_) => Extremes::None,
    }
}

/// Floats by the integer key whose order is f64's total order (as `f64::total_cmp` computes
/// it), so the fold is over integers.
fn floats<T: Copy>(values: &[T], nulls: Option<&NullBuffer>, widen: impl Fn(T) -> f64) -> Extremes {
    // Negative floats (sign bit set) have their other bits flipped; applying it again undoes it.
    let key = |v: f64| {
        let bits = v.to_bits() as i64;
        bits ^ ((((bits >> 63) as u64) >> 1) as i64)
    };
    let value = |k: i64| f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64);
    fold(values, nulls, |v| key(widen(v))).map_or(Extremes::None, |(l, g)| Extremes::Float(value(l), value(g)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        BooleanArray, Float32Array, Float64Array, Int8Array, Int64Array, StringArray, TimestampSecondArray, UInt64Array,
    };
    use arrow::compute::{cast, max, min};
    use proptest::prelude::*;

    use super::*;

    /// The statistics as Arrow's own kernels give them, over the whole column at once.
    fn by_arrow_kernels(array: &ArrayRef) -> Extremes {
        fn option<T>((least, greatest): (Option<T>, Option<T>)) -> Option<(T, T)> {
            least.zip(greatest)
        }
        let pair = match array.data_type() {
            DataType::Utf8 => {
                let a = array.as_string::<i32>();
                option((min_string(a), max_string(a))).map(|(l, g)| Extremes::Text(l.into(), g.into()))
            }
            DataType::Boolean => {
                let a = array.as_boolean();
                option((min_boolean(a), max_boolean(a))).map(|(l, g)| Extremes::Bool(l, g))
            }
            DataType::Float64 => {
                let a = array.as_primitive::<Float64Type>();
                option((min(a), max(a))).map(|(l, g)| Extremes::Float(l, g))
            }
            DataType::Float32 => {
                let a = array.as_primitive::<Float32Type>();
                option((min(a), max(a))).map(|(l, g)| Extremes::Float(l.into(), g.into()))
            }
            DataType::UInt64 => {
                let a = array.as_primitive::<UInt64Type>();
                option((min(a), max(a))).map(|(l, g)| Extremes::UInt(l, g))
            }
            _ => {
                let as_i64 = cast(array, &DataType::Int64).expect("integers and timestamps cast to Int64");
                let a = as_i64.as_primitive::<Int64Type>();
                option((min(a), max(a))).map(|(l, g)| Extremes::Int(l, g))
            }
        };
        pair.unwrap_or(Extremes::None)
    }

    /// Bit-for-bit equality, so NaNs of either sign and both zeros are told apart.
    fn same(a: &Extremes, b: &Extremes) -> bool {
        match (a, b) {
            (Extremes::Float(a, b), Extremes::Float(c, d)) => a.to_bits() == c.to_bits() && b.to_bits() == d.to_bits(),
            _ => a == b,
        }
    }

    fn floats() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            Just(Some(f64::NAN)),
            Just(Some(-f64::NAN)),
            Just(Some(0.0)),
            Just(Some(-0.0)),
            Just(Some(f64::INFINITY)),
            Just(Some(f64::NEG_INFINITY)),
            any::<f64>().prop_map(Some),
        ]
    }

    /// Columns of every kind the builder folds, as Arrow arrays.
    fn column() -> impl Strategy<Value = ArrayRef> {
        let rows = 0..40usize;
        prop_oneof![
            proptest::collection::vec(proptest::option::of(any::<i64>()), rows.clone())
                .prop_map(|v| Arc::new(Int64Array::from(v)) as ArrayRef),
            proptest::collection::vec(proptest::option::of(any::<i8>()), rows.clone())
                .prop_map(|v| Arc::new(Int8Array::from(v)) as ArrayRef),
            proptest::collection::vec(proptest::option::of(any::<u64>()), rows.clone())
                .prop_map(|v| Arc::new(UInt64Array::from(v)) as ArrayRef),
            proptest::collection::vec(proptest::option::of(any::<i64>()), rows.clone())
                .prop_map(|v| Arc::new(TimestampSecondArray::from(v)) as ArrayRef),
            proptest::collection::vec(floats(), rows.clone()).prop_map(|v| Arc::new(Float64Array::from(v)) as ArrayRef),
            proptest::collection::vec(floats(), rows.clone()).prop_map(|v| {
                Arc::new(Float32Array::from(v.into_iter().map(|f| f.map(|f| f as f32)).collect::<Vec<_>>())) as ArrayRef
            }),
            proptest::collection::vec(proptest::option::of(any::<bool>()), rows.clone())
                .prop_map(|v| Arc::new(BooleanArray::from(v)) as ArrayRef),
            proptest::collection::vec(proptest::option::of("[a-c]{0,3}"), rows)
                .prop_map(|v| Arc::new(StringArray::from(v)) as ArrayRef),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Folded chunk by chunk, from any offset, the statistics are what Arrow's kernels say
        /// of the whole column: the same values, NaNs of either sign and zeros included.
        #[test]
        fn chunk_by_chunk_statistics_are_the_kernels_of_the_whole(
            column in column(),
            cuts in proptest::collection::vec(0..40usize, 0..4),
            skip in 0..3usize,
        ) {
            let column = column.slice(skip.min(column.len()), column.len() - skip.min(column.len()));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(column.len())).collect();
            cuts.push(0);
            cuts.push(column.len());
            cuts.sort_unstable();
            let mut builder = ColumnStatsBuilder::default();
            for pair in cuts.windows(2) {
                builder.add(&column.slice(pair[0], pair[1] - pair[0]));
            }
            let expected = by_arrow_kernels(&column);
            prop_assert!(same(&builder.extremes, &expected), "{:?} vs {expected:?}", builder.extremes);
            prop_assert_eq!(builder.null_count, column.null_count() as u64);
        }
    }

    #[test]
    fn the_manifest_holds_no_bound_that_json_cannot() {
        let mut builder = ColumnStatsBuilder::default();
        builder.add(&(Arc::new(Float64Array::from(vec![Some(1.5), None, Some(f64::NAN)])) as ArrayRef));
        let stats = builder.finish();
        assert_eq!((stats.min, stats.max, stats.null_count), (Some(1.5.into()), None, 1));
        let mut builder = ColumnStatsBuilder::default();
        builder.add(&(Arc::new(UInt64Array::from(vec![u64::MAX, 3])) as ArrayRef));
        assert_eq!(builder.finish().max, Some(u64::MAX.into()));
    }
}
