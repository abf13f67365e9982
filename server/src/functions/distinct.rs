//! `count(DISTINCT x)` of integers, dates and times without `GROUP BY`, as a set that is a bitmap
//! while the values are dense enough.
//!
//! DataFusion's set of distinct values is a hash set: over 10 M rows with a million distinct
//! ids, the inserts were 60% of the query's CPU, nearly all of it waiting on memory (a table
//! of a million entries is larger than the core's caches, and every row lands somewhere new).
//! Ids, counters, dates and times are usually dense: a bitmap over their range takes one bit
//! per possible value and marks a value with a write into a few hundred KiB instead. The set
//! here starts as a bitmap and stays one while its range is at most 64 bits per distinct value
//! held (or 2^20 bits), so it never takes much more memory than the hash set would; past that
//! it turns into a hash set (foldhash) and stays one. The optimizer puts it in place of
//! `count(DISTINCT x)` in aggregations without groups (`crate::optimizer`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, ListArray, UInt64Array};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Field, FieldRef, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A bitmap may always span this many values (128 KiB).
const DENSE_FLOOR_BITS: u64 = 1 << 20;

/// Beyond the floor, a bitmap may span this many values per distinct value it holds.
const DENSE_BITS_PER_VALUE: u64 = 64;

/// Signed keys are shifted by this so that a range of them stays a range of `u64`.
const SIGN: u64 = 1 << 63;

/// Whether [`DistinctCount`] reads values of this type.
pub fn counts_distinct(data_type: &DataType) -> bool {
    data_type.is_integer() || matches!(data_type, DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _))
}

/// `count(DISTINCT x)` for the types [`counts_distinct`] accepts; NULLs are not counted.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DistinctCount {
    signature: Signature,
}

impl Default for DistinctCount {
    fn default() -> Self {
        DistinctCount { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl AggregateUDFImpl for DistinctCount {
    fn name(&self) -> &str {
        "count_distinct"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int64)
    }

    /// As `count`'s: an empty input counts 0.
    fn is_nullable(&self) -> bool {
        false
    }

    fn default_value(&self, _data_type: &DataType) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }

    /// The distinct keys of a partition, as a list.
    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(format!("{}[keys]", args.name), keys_type(), true))])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(DistinctKeys::default()))
    }
}

fn keys_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true)))
}

/// The distinct keys seen: a bitmap over their range while it is dense enough, else a hash set.
#[derive(Debug)]
enum Keys {
    Dense(Bitmap),
    Sparse(HashSet<u64>),
}

/// Bit `k - base` set for every key `k` held; `base` a multiple of 64.
#[derive(Debug, Default)]
struct Bitmap {
    base: u64,
    words: Vec<u64>,
    count: u64,
    /// The smallest and largest keys held (the words may reach beyond them).
    low: u64,
    high: u64,
}

impl Bitmap {
    /// One past the last key the bitmap can hold.
    fn end(&self) -> u128 {
        u128::from(self.base) + 64 * self.words.len() as u128
    }

    /// Makes room for `low..=high`, at least doubling the span when it grows, so that a range
    /// growing a little at a time is copied a logarithmic number of times.
    fn cover(&mut self, low: u64, high: u64) {
        let (start, end) = (u128::from(self.base), self.end());
        if self.words.is_empty() {
            self.base = low & !63;
            self.words = vec![0; ((u128::from(high) - u128::from(self.base)) / 64 + 1) as usize];
            return;
        }
        if u128::from(low) >= start && u128::from(high) < end {
            return;
        }
        let span = end - start;
        let mut new_start = start.min(u128::from(low) & !63);
        let mut new_end = end.max((u128::from(high) / 64 + 1) * 64);
        if new_end - new_start < 2 * span {
            if new_start < start {
                new_start = new_start.min(start.saturating_sub(span)) & !63;
            }
            if new_end > end {
                new_end = new_end.max(end + span).min(1 << 64);
            }
        }
        let mut words = vec![0; ((new_end - new_start) / 64) as usize];
        let offset = ((start - new_start) / 64) as usize;
        words[offset..offset + self.words.len()].copy_from_slice(&self.words);
        self.base = new_start as u64;
        self.words = words;
    }

    /// Marks `keys`, all within the range covered.
    fn insert(&mut self, keys: &[u64]) {
        for &key in keys {
            let bit = key - self.base;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            let old = self.words[word];
            self.count += u64::from(old & mask == 0);
            self.words[word] = old | mask;
        }
    }

    fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(move |(i, &word)| {
            let base = self.base + 64 * i as u64;
            BitIter(word).map(move |bit| base + u64::from(bit))
        })
    }
}

/// The set bits of a word, lowest first.
struct BitIter(u64);

impl Iterator for BitIter {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        (self.0 != 0).then(|| {
            let bit = self.0.trailing_zeros();
            self.0 &= self.0 - 1;
            bit
        })
    }
}

/// One partition's distinct keys.
#[derive(Debug)]
struct DistinctKeys {
    keys: Keys,
    /// This batch's keys, NULLs left out (kept to reuse the allocation).
    scratch: Vec<u64>,
}

impl Default for DistinctKeys {
    fn default() -> Self {
        DistinctKeys { keys: Keys::Dense(Bitmap::default()), scratch: Vec::new() }
    }
}

impl DistinctKeys {
    /// Adds the keys in `scratch`.
    fn add_scratch(&mut self) {
        let keys = &self.scratch;
        if keys.is_empty() {
            return;
        }
        if let Keys::Dense(bitmap) = &mut self.keys {
            let (mut low, mut high) = (u64::MAX, 0);
            for &key in keys {
                low = low.min(key);
                high = high.max(key);
            }
            let (low, high) =
                if bitmap.count == 0 { (low, high) } else { (low.min(bitmap.low), high.max(bitmap.high)) };
            let span = u128::from(high) - u128::from(low) + 1;
            let allowed = DENSE_FLOOR_BITS.max(DENSE_BITS_PER_VALUE.saturating_mul(bitmap.count + keys.len() as u64));
            if span <= u128::from(allowed) {
                bitmap.cover(low, high);
                bitmap.insert(keys);
                (bitmap.low, bitmap.high) = (low, high);
                return;
            }
            let mut set = HashSet::with_capacity_and_hasher(bitmap.count as usize, Default::default());
            set.extend(bitmap.keys());
            self.keys = Keys::Sparse(set);
        }
        if let Keys::Sparse(set) = &mut self.keys {
            set.extend(keys.iter().copied());
        }
    }

    fn count(&self) -> u64 {
        match &self.keys {
            Keys::Dense(bitmap) => bitmap.count,
            Keys::Sparse(set) => set.len() as u64,
        }
    }
}

/// Puts the non-NULL keys of `array` into `out`: integers, dates and times as `u64`, signed
/// ones shifted so that their order (and so their ranges) carry over.
fn keys_of(array: &ArrayRef, out: &mut Vec<u64>) -> DfResult<()> {
    /// The keys of `array` (of the type just matched), each made by `key`.
    fn extend<T: ArrowPrimitiveType>(array: &ArrayRef, out: &mut Vec<u64>, key: impl Fn(T::Native) -> u64) {
        let array = array.as_primitive::<T>();
        match array.nulls() {
            None => out.extend(array.values().iter().map(|&v| key(v))),
            Some(_) => out.extend(array.iter().flatten().map(key)),
        }
    }
    fn signed<T: ArrowPrimitiveType>(array: &ArrayRef, out: &mut Vec<u64>)
    where
        T::Native: Into<i64>,
    {
        extend::<T>(array, out, |v| (v.into() as u64) ^ SIGN);
    }
    fn unsigned<T: ArrowPrimitiveType>(array: &ArrayRef, out: &mut Vec<u64>)
    where
        T::Native: Into<u64>,
    {
        extend::<T>(array, out, Into::into);
    }
    match array.data_type() {
        DataType::Int8 => signed::<Int8Type>(array, out),
        DataType::Int16 => signed::<Int16Type>(array, out),
        DataType::Int32 => signed::<Int32Type>(array, out),
        DataType::Int64 => signed::<Int64Type>(array, out),
        DataType::Date32 => signed::<Date32Type>(array, out),
        DataType::Date64 => signed::<Date64Type>(array, out),
        DataType::Timestamp(TimeUnit::Second, _) => signed::<TimestampSecondType>(array, out),
        DataType::Timestamp(TimeUnit::Millisecond, _) => signed::<TimestampMillisecondType>(array, out),
        DataType::Timestamp(TimeUnit::Microsecond, _) => signed::<TimestampMicrosecondType>(array, out),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => signed::<TimestampNanosecondType>(array, out),
        DataType::UInt8 => unsigned::<UInt8Type>(array, out),
        DataType::UInt16 => unsigned::<UInt16Type>(array, out),
        DataType::UInt32 => unsigned::<UInt32Type>(array, out),
        DataType::UInt64 => unsigned::<UInt64Type>(array, out),
        other => return exec_err!("count_distinct does not count values of type {other}"),
    }
    Ok(())
}

impl Accumulator for DistinctKeys {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let Some(values) = values.first() else { return Ok(()) };
        self.scratch.clear();
        keys_of(values, &mut self.scratch)?;
        self.add_scratch();
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let Some(lists) = states.first() else { return Ok(()) };
        let Some(lists) = lists.as_list_opt::<i32>() else {
            return exec_err!("count_distinct's state is a list of keys, not {}", lists.data_type());
        };
        for keys in lists.iter().flatten() {
            let Some(keys) = keys.as_primitive_opt::<UInt64Type>() else {
                return exec_err!("count_distinct's keys are UInt64, not {}", keys.data_type());
            };
            self.scratch.clear();
            self.scratch.extend(keys.iter().flatten());
            self.add_scratch();
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let keys: UInt64Array = match &self.keys {
            Keys::Dense(bitmap) => bitmap.keys().collect(),
            Keys::Sparse(set) => set.iter().copied().collect(),
        };
        let offsets = OffsetBuffer::from_lengths([keys.len()]);
        let list =
            ListArray::new(Arc::new(Field::new_list_field(DataType::UInt64, true)), offsets, Arc::new(keys), None);
        Ok(vec![ScalarValue::List(Arc::new(list))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.count() as i64)))
    }

    fn size(&self) -> usize {
        let held = match &self.keys {
            Keys::Dense(bitmap) => bitmap.words.capacity() * 8,
            // A hashbrown table: the key and one control byte per bucket.
            Keys::Sparse(set) => set.capacity() * 9,
        };
        std::mem::size_of_val(self) + held + self.scratch.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distinct(batches: &[Vec<u64>]) -> (u64, bool) {
        let mut keys = DistinctKeys::default();
        for batch in batches {
            keys.scratch = batch.clone();
            keys.add_scratch();
        }
        (keys.count(), matches!(keys.keys, Keys::Dense(_)))
    }

    #[test]
    fn dense_keys_stay_a_bitmap_and_count_exactly() {
        // Ranges growing left and right, a batch at a time, with repeats.
        let batches: Vec<Vec<u64>> = (0..50i64)
            .map(|b| (0..1_000).map(|i| (5_000_000 + (b % 2 * 2 - 1) * (b * 997 + i * 31 % 2_000)) as u64).collect())
            .collect();
        let expected = batches.iter().flatten().collect::<std::collections::HashSet<_>>().len() as u64;
        assert_eq!(distinct(&batches), (expected, true));
    }

    #[test]
    fn keys_filling_the_floor_stay_a_bitmap() {
        // A million ids in random order: the first batches span less than the last, and the
        // room the bitmap makes as it grows must not count as keys held.
        let batches: Vec<Vec<u64>> = (0..100u64)
            .map(|b| {
                (0..10_000).map(|i| ((b * 10_000 + i).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1_000_000).collect()
            })
            .collect();
        let expected = batches.iter().flatten().collect::<std::collections::HashSet<_>>().len() as u64;
        assert_eq!(distinct(&batches), (expected, true));
    }

    #[test]
    fn sparse_keys_become_a_hash_set_and_count_exactly() {
        let batches: Vec<Vec<u64>> = (0..20u64)
            .map(|b| (0..500).map(|i| (b * 500 + i % 300).wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect())
            .collect();
        let expected = batches.iter().flatten().collect::<std::collections::HashSet<_>>().len() as u64;
        assert_eq!(distinct(&batches), (expected, false));
        // Few values far apart: a bitmap over their range would be huge.
        assert_eq!(distinct(&[vec![0, u64::MAX, 0, u64::MAX]]), (2, false));
        assert_eq!(distinct(&[vec![u64::MAX - 3, u64::MAX], vec![u64::MAX - 70]]), (3, true));
        // A bitmap first, then one value far away: every value held moves to the hash set.
        let far = vec![(0..1_000).collect(), (500..1_500).collect(), vec![1 << 40, 7]];
        assert_eq!(distinct(&far), (1_501, false));
    }

    #[test]
    fn signed_keys_keep_their_ranges() {
        let values: ArrayRef =
            Arc::new(datafusion::arrow::array::Int64Array::from(vec![Some(-2), None, Some(1), Some(-2)]));
        let mut out = Vec::new();
        keys_of(&values, &mut out).unwrap();
        assert_eq!(out, vec![SIGN - 2, SIGN + 1, SIGN - 2]);
    }
}
