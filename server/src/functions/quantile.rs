//! `quantile(level)(x)` and `quantiles(l1, l2, ...)(x)`: a uniform sample of at most 8192
//! values per group, exact (with linear interpolation) below that size, as ClickHouse's
//! `quantile`.
//!
//! The sample is a reservoir: once it is full, each value replaces a kept one with probability
//! size / values seen (Algorithm R, one random number per value, drawn below `seen` with a
//! multiply and a shift where a division per value was most of a `quantile` by host over 10 M
//! rows); once few values are taken, the number to pass over before the next one is drawn at
//! once (Li's Algorithm L). A group's sample depends only on its values and their order, so a
//! group fed row by row, or a run of rows at a time, keeps the same sample.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray, UInt64Array};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, UInt64Type};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, internal_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility};
use datafusion::physical_expr::expressions::Literal;

/// The most values a `quantile` keeps per group.
const SAMPLE_SIZE: usize = 8192;

/// Values seen from which a full sample draws how many to pass over (Algorithm L) rather than
/// a random number per value (Algorithm R): a skip costs two logarithms and an exponential, so
/// it pays once fewer than one value in about thirty is taken.
const SKIPS_FROM: u64 = 32 * SAMPLE_SIZE as u64;

/// The names the two functions are registered under; their partial states are the same.
pub const QUANTILE_NAMES: [&str; 2] = ["quantile", "quantiles"];

/// `quantile(level)(x)` (one Float64) and `quantiles(l1, l2, ...)(x)` (an array of them); the
/// statement's syntax moves the levels after `x`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Quantile {
    name: &'static str,
    many: bool,
    signature: Signature,
}

impl Quantile {
    pub fn new(name: &'static str, many: bool) -> Self {
        Quantile { name, many, signature: Signature::variadic_any(Volatility::Immutable) }
    }

    /// The levels asked for: the constants after the value (0.5 when there are none).
    fn levels(&self, args: &AccumulatorArgs) -> DfResult<Vec<f64>> {
        let mut levels = Vec::new();
        for expr in args.exprs.iter().skip(1) {
            let Some(literal) = expr.downcast_ref::<Literal>() else {
                return plan_err!("{}: the levels must be constants", self.name);
            };
            let level = match literal.value().cast_to(&DataType::Float64)? {
                ScalarValue::Float64(Some(level)) if (0.0..=1.0).contains(&level) => level,
                other => return plan_err!("{}: a level is between 0 and 1, got {other}", self.name),
            };
            levels.push(level);
        }
        if levels.is_empty() {
            levels.push(0.5);
        }
        Ok(levels)
    }
}

impl AggregateUDFImpl for Quantile {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types.first() {
            Some(t) if t.is_numeric() || t == &DataType::Null => {}
            Some(t) => return plan_err!("{} takes numbers, not {t}", self.name),
            None => return plan_err!("{} takes a value: {}(level)(x)", self.name, self.name),
        }
        if self.many && arg_types.len() < 2 {
            return plan_err!("quantiles takes its levels: quantiles(0.5, 0.9)(x)");
        }
        if !self.many && arg_types.len() > 2 {
            return plan_err!("quantile takes one level: quantile(0.9)(x); use quantiles for several");
        }
        Ok(if self.many { list_type() } else { DataType::Float64 })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(format!("{}[sample]", args.name), list_type(), true)),
            Arc::new(Field::new(format!("{}[seen]", args.name), DataType::UInt64, true)),
        ])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(QuantileAccumulator { levels: self.levels(&args)?, many: self.many, sample: Reservoir::new() }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(QuantileGroups { levels: self.levels(&args)?, many: self.many, samples: Vec::new() }))
    }
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

/// A uniform sample of at most `SAMPLE_SIZE` (8,192) of the values seen (NaN is not a value here).
#[derive(Debug, Clone)]
pub struct Reservoir {
    sample: Vec<f64>,
    /// Values seen, of which `sample` holds a uniform sample.
    seen: u64,
    /// Once full: the count of values seen at which the next value seen replaces a kept one.
    next_taken: u64,
    /// Algorithm L's `W`: the largest of the sample's random keys, so to speak.
    w: f64,
    /// xorshift state: the sample is the same for the same values in the same order.
    random: u64,
}

impl Default for Reservoir {
    fn default() -> Self {
        Self::new()
    }
}

impl Reservoir {
    pub fn new() -> Self {
        Reservoir { sample: Vec::new(), seen: 0, next_taken: 0, w: 1.0, random: 0x9E37_79B9_7F4A_7C15 }
    }

    /// The memory the sample takes.
    pub fn bytes(&self) -> usize {
        self.sample.capacity() * std::mem::size_of::<f64>()
    }

    fn next_random(&mut self) -> u64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random
    }

    /// A uniform number in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_random() >> 11) as f64 + 0.5) / (1_u64 << 53) as f64
    }

    /// After a value was taken: the sample's new `W`, then the next skip (Algorithm L).
    fn draw_next(&mut self) {
        self.w *= (self.uniform().ln() / SAMPLE_SIZE as f64).exp();
        self.draw_skip();
    }

    /// How many values pass before the next one is taken, under the current `W`.
    fn draw_skip(&mut self) {
        let skip = (self.uniform().ln() / (1.0 - self.w).ln()).floor();
        // A float beyond u64 saturates; NaN (w at 1.0 exactly) is 0: the next value is taken.
        self.next_taken = self.seen.saturating_add((skip as u64).saturating_add(1));
    }

    /// Switches a full sample of `seen` values to Algorithm L: `W` is the largest of the
    /// sample's keys, the `SAMPLE_SIZE`-th smallest of `seen` uniform ones, taken at its mean.
    fn restart(&mut self) {
        if self.sample.len() == SAMPLE_SIZE && self.seen >= SKIPS_FROM {
            self.w = SAMPLE_SIZE as f64 / (self.seen + 1) as f64;
            self.draw_skip();
        }
    }

    /// Adds `values` in order; NaNs are left out.
    pub fn extend(&mut self, values: &[f64]) {
        if values.iter().any(|v| v.is_nan()) {
            let numbers: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
            return self.extend_numbers(&numbers);
        }
        self.extend_numbers(values);
    }

    fn extend_numbers(&mut self, mut values: &[f64]) {
        while !values.is_empty() {
            if self.sample.len() < SAMPLE_SIZE {
                let room = (SAMPLE_SIZE - self.sample.len()).min(values.len());
                let (kept, rest) = values.split_at(room);
                self.sample.extend_from_slice(kept);
                self.seen += room as u64;
                values = rest;
                continue;
            }
            if self.seen < SKIPS_FROM {
                // Algorithm R: the n-th value replaces a kept one with probability size / n.
                let (each, rest) = values.split_at(values.len().min((SKIPS_FROM - self.seen) as usize));
                for value in each {
                    self.seen += 1;
                    // A uniform number below `seen` (multiply and shift, no division).
                    let slot = ((u128::from(self.next_random()) * u128::from(self.seen)) >> 64) as usize;
                    if let Some(kept) = self.sample.get_mut(slot) {
                        *kept = *value;
                    }
                }
                values = rest;
                self.restart();
                continue;
            }
            // The `wanted`-th value from here is the next one taken.
            let wanted = self.next_taken.saturating_sub(self.seen).max(1);
            let Some(taken) = usize::try_from(wanted - 1).ok().and_then(|i| values.get(i)) else {
                self.seen += values.len() as u64;
                return;
            };
            let slot = (self.next_random() % SAMPLE_SIZE as u64) as usize;
            if let Some(kept) = self.sample.get_mut(slot) {
                *kept = *taken;
            }
            self.seen += wanted;
            values = values.get(wanted as usize..).unwrap_or_default();
            self.draw_next();
        }
    }

    /// Adds another sample, of `seen` other values. A sample that is all its values is added
    /// value by value; two samples of more values than they hold are mixed slot by slot, each
    /// slot taking the other's value with the share of the values the other saw (as
    /// ClickHouse's `ReservoirSampler::merge` does), and sampling then goes on afresh.
    fn merge(&mut self, sample: &Float64Array, seen: u64) {
        let values: Vec<f64> = sample.iter().flatten().collect();
        if seen <= values.len() as u64 {
            return self.extend(&values);
        }
        if self.seen <= self.sample.len() as u64 {
            let mine = std::mem::replace(&mut self.sample, values);
            self.seen = seen;
            self.restart();
            return self.extend(&mine);
        }
        let share = seen as f64 / (self.seen + seen) as f64;
        for (slot, other) in values.into_iter().enumerate() {
            if self.random_below(share)
                && let Some(kept) = self.sample.get_mut(slot)
            {
                *kept = other;
            }
        }
        self.seen += seen;
        self.restart();
    }

    /// Whether a uniform draw falls below `p`.
    fn random_below(&mut self, p: f64) -> bool {
        let draw = self.uniform();
        draw < p
    }

    /// The level's quantile of the sorted sample, interpolated between neighbours.
    fn quantile(sorted: &[f64], level: f64) -> Option<f64> {
        let last = sorted.len().checked_sub(1)?;
        let position = level * last as f64;
        let below = position.floor() as usize;
        let above = (below + 1).min(last);
        let (low, high) = (*sorted.get(below)?, *sorted.get(above)?);
        Some(low + (high - low) * (position - below as f64))
    }

    fn quantiles(&self, levels: &[f64]) -> Vec<Option<f64>> {
        let mut values = self.sample.clone();
        if let [level] = levels {
            return vec![Self::one_quantile(&mut values, *level)];
        }
        values.sort_by(f64::total_cmp);
        levels.iter().map(|level| Self::quantile(&values, *level)).collect()
    }

    /// One level's quantile without sorting all of `values`: the value at its position and the
    /// smallest above it are selected.
    fn one_quantile(values: &mut [f64], level: f64) -> Option<f64> {
        let last = values.len().checked_sub(1)?;
        let position = level * last as f64;
        let below = (position.floor() as usize).min(last);
        let (_, &mut low, above) = values.select_nth_unstable_by(below, f64::total_cmp);
        let high = above.iter().copied().min_by(f64::total_cmp).unwrap_or(low);
        Some(low + (high - low) * (position - below as f64))
    }

    /// The partial states of `samples`, one row each: the sample and the count seen.
    pub fn states(samples: impl IntoIterator<Item = Reservoir>) -> Vec<ArrayRef> {
        let (mut values, mut offsets, mut seen) = (Vec::new(), vec![0_i32], Vec::new());
        for reservoir in samples {
            values.extend_from_slice(&reservoir.sample);
            offsets.push(values.len() as i32);
            seen.push(reservoir.seen);
        }
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(Float64Array::from(values)),
            None,
        );
        vec![Arc::new(list), Arc::new(UInt64Array::from(seen))]
    }

    /// Merges partial states (as [`Reservoir::states`] makes them) into `samples`, row by row
    /// into the sample of `groups[row]`.
    fn merge_states(
        states: &[ArrayRef],
        mut sample_of: impl FnMut(usize) -> Option<usize>,
        samples: &mut [Reservoir],
    ) -> DfResult<()> {
        let (Some(lists), Some(seen)) = (states.first(), states.get(1)) else {
            return internal_err!("a quantile state has a sample and a count");
        };
        let lists = lists.as_list::<i32>();
        let seen = seen.as_primitive::<UInt64Type>();
        for (row, list) in lists.iter().enumerate() {
            let (Some(list), Some(target)) = (list, sample_of(row)) else { continue };
            let other_seen = if seen.is_null(row) { 0 } else { seen.value(row) };
            if let Some(reservoir) = samples.get_mut(target) {
                reservoir.merge(list.as_primitive::<Float64Type>(), other_seen);
            }
        }
        Ok(())
    }
}

/// The values of `array` as Float64s, without NULLs.
fn numbers(array: &ArrayRef) -> DfResult<Float64Array> {
    let values = cast_with_options(array, &DataType::Float64, &CastOptions::default())?;
    Ok(values.as_primitive::<Float64Type>().clone())
}

/// One group's answer: the level's quantile, or the list of them for `quantiles`.
fn answer(levels: &[Option<f64>], many: bool) -> DfResult<ScalarValue> {
    let values: Vec<ScalarValue> = levels.iter().map(|v| ScalarValue::Float64(*v)).collect();
    if many {
        return Ok(ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Float64)));
    }
    match values.into_iter().next() {
        Some(value) => Ok(value),
        None => exec_err!("quantile without a level"),
    }
}

/// One group's sample (where the query has no `GROUP BY`).
#[derive(Debug)]
struct QuantileAccumulator {
    levels: Vec<f64>,
    many: bool,
    sample: Reservoir,
}

impl Accumulator for QuantileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let Some(values) = values.first() else { return Ok(()) };
        let values = numbers(values)?;
        if values.null_count() == 0 {
            self.sample.extend(values.values());
        } else {
            self.sample.extend(&values.iter().flatten().collect::<Vec<_>>());
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        Reservoir::merge_states(states, |_| Some(0), std::slice::from_mut(&mut self.sample))
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let states = Reservoir::states([self.sample.clone()]);
        states.iter().map(|state| ScalarValue::try_from_array(state, 0)).collect()
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        answer(&self.sample.quantiles(&self.levels), self.many)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sample.bytes() + self.levels.capacity() * 8
    }
}

/// A sample per group.
#[derive(Debug)]
struct QuantileGroups {
    levels: Vec<f64>,
    many: bool,
    samples: Vec<Reservoir>,
}

impl QuantileGroups {
    fn take(&mut self, emit_to: EmitTo) -> Vec<Reservoir> {
        emit_to.take_needed(&mut self.samples)
    }
}

impl GroupsAccumulator for QuantileGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.samples.resize_with(total_num_groups, Reservoir::new);
        let Some(values) = values.first() else { return Ok(()) };
        let values = numbers(values)?;
        for (row, &group) in group_indices.iter().enumerate() {
            if values.is_null(row) || opt_filter.is_some_and(|f| !f.is_valid(row) || !f.value(row)) {
                continue;
            }
            if let Some(sample) = self.samples.get_mut(group) {
                sample.extend(&[values.value(row)]);
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> DfResult<()> {
        self.samples.resize_with(total_num_groups, Reservoir::new);
        Reservoir::merge_states(values, |row| group_indices.get(row).copied(), &mut self.samples)
    }

    /// Each row as a state of its own: a sample of its value (none if it is NULL, NaN or
    /// filtered out), for when the partial aggregation passes rows through.
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> DfResult<Vec<ArrayRef>> {
        let Some(values) = values.first() else { return internal_err!("quantile takes a value") };
        let values = numbers(values)?;
        let (mut kept, mut offsets, mut seen) = (Vec::new(), vec![0_i32], Vec::with_capacity(values.len()));
        for row in 0..values.len() {
            let counted = !values.is_null(row)
                && !values.value(row).is_nan()
                && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
            if counted {
                kept.push(values.value(row));
            }
            offsets.push(kept.len() as i32);
            seen.push(u64::from(counted));
        }
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(Float64Array::from(kept)),
            None,
        );
        Ok(vec![Arc::new(list), Arc::new(UInt64Array::from(seen))])
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let answers: Vec<ScalarValue> = self
            .take(emit_to)
            .iter()
            .map(|sample| answer(&sample.quantiles(&self.levels), self.many))
            .collect::<DfResult<_>>()?;
        if answers.is_empty() {
            let data_type = if self.many { list_type() } else { DataType::Float64 };
            return Ok(datafusion::arrow::array::new_empty_array(&data_type));
        }
        ScalarValue::iter_to_array(answers)
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        Ok(Reservoir::states(self.take(emit_to)))
    }

    fn size(&self) -> usize {
        self.samples.iter().map(Reservoir::bytes).sum::<usize>()
            + self.samples.capacity() * std::mem::size_of::<Reservoir>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_the_same_fed_row_by_row_or_in_runs() {
        let values: Vec<f64> = (0..100_000).map(|i| ((i * 7_919) % 100_003) as f64).collect();
        let mut by_row = Reservoir::new();
        for value in &values {
            by_row.extend(&[*value]);
        }
        let mut in_runs = Reservoir::new();
        for run in values.chunks(37) {
            in_runs.extend(run);
        }
        assert_eq!(by_row.seen, 100_000);
        assert_eq!(by_row.sample, in_runs.sample);
        assert_eq!(by_row.seen, in_runs.seen);
    }

    #[test]
    fn the_sample_is_exact_below_its_size_and_uniform_above() {
        let mut small = Reservoir::new();
        small.extend(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!(small.quantiles(&[0.0, 0.5, 1.0]), [Some(1.0), Some(50.5), Some(100.0)]);
        assert!((small.quantiles(&[0.9])[0].unwrap() - 90.1).abs() < 1e-9);
        // A million values 0..1e6 in order: a uniform sample has its deciles near the values'.
        let mut large = Reservoir::new();
        for run in (0..1_000_000).map(f64::from).collect::<Vec<_>>().chunks(1_000) {
            large.extend(run);
        }
        assert_eq!(large.sample.len(), SAMPLE_SIZE);
        assert_eq!(large.seen, 1_000_000);
        for (level, quantile) in [0.1, 0.5, 0.9].into_iter().zip(large.quantiles(&[0.1, 0.5, 0.9])) {
            let quantile = quantile.unwrap();
            assert!((quantile - level * 1e6).abs() < 0.02 * 1e6, "{level}: {quantile}");
        }
        // Not biased to the first or the last values seen.
        let late = large.sample.iter().filter(|v| **v >= 900_000.0).count();
        assert!((600..1_050).contains(&late), "{late} of {SAMPLE_SIZE} from the last tenth");
    }

    #[test]
    fn one_level_selects_what_sorting_finds() {
        let mut sample = Reservoir::new();
        sample.extend(&(0..5_000).map(|i| ((i * 7_919) % 5_003) as f64 / 3.0).collect::<Vec<_>>());
        let levels = [0.0, 0.1, 0.25, 0.5, 0.9, 0.999, 1.0];
        let sorted = sample.quantiles(&levels);
        for (level, expected) in levels.into_iter().zip(sorted) {
            assert_eq!(sample.quantiles(&[level]), [expected], "{level}");
        }
        assert_eq!(Reservoir::new().quantiles(&[0.5]), [None]);
    }

    #[test]
    fn merged_samples_keep_each_side_in_proportion() {
        // Three quarters of the values below a million, a quarter above.
        let (mut low, mut high) = (Reservoir::new(), Reservoir::new());
        low.extend(&(0..300_000).map(f64::from).collect::<Vec<_>>());
        high.extend(&(1_000_000..1_100_000).map(f64::from).collect::<Vec<_>>());
        let states = Reservoir::states([high]);
        Reservoir::merge_states(&states, |_| Some(0), std::slice::from_mut(&mut low)).unwrap();
        assert_eq!(low.seen, 400_000);
        let above = low.sample.iter().filter(|v| **v >= 1e6).count();
        assert!((1_800..2_300).contains(&above), "{above} of {SAMPLE_SIZE} from the quarter above");
        // A small sample merges value by value, exactly.
        let mut exact = Reservoir::new();
        exact.extend(&[1.0, 2.0]);
        let states = Reservoir::states([exact.clone()]);
        Reservoir::merge_states(&states, |_| Some(0), std::slice::from_mut(&mut exact)).unwrap();
        assert_eq!(exact.quantiles(&[0.0, 0.5, 1.0]), [Some(1.0), Some(1.5), Some(2.0)]);
    }

    #[test]
    fn nan_is_not_a_value() {
        let mut sample = Reservoir::new();
        sample.extend(&[f64::NAN, 1.0, f64::NAN, 3.0]);
        assert_eq!(sample.seen, 2);
        assert_eq!(sample.quantiles(&[0.5]), [Some(2.0)]);
    }
}
