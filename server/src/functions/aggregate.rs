//! ClickHouse's aggregate functions. Most are another name for a DataFusion aggregate with a
//! filter, an order or DISTINCT (`countIf(c)` is `count(*) FILTER (WHERE c)`, `argMax(a, b)`
//! is `first_value(a ORDER BY b DESC)`): those are functions that DataFusion's optimizer
//! replaces by what they stand for, so they run as fast as the built-ins. `quantile` and
//! `quantiles` have their own accumulator: a sample of at most 8192 values per group, exact
//! (with linear interpolation) below that size, as ClickHouse's `quantile`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, UInt64Type};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, internal_err, plan_err};
use datafusion::functions_aggregate::{
    approx_distinct::approx_distinct_udaf, array_agg::array_agg_udaf, average::avg_udaf, count::count_udaf,
    first_last::first_value_udaf, first_last::last_value_udaf, min_max::max_udaf, min_max::min_udaf, sum::sum_udaf,
};
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::function::{AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Expr, Signature, SortExpr, TypeSignature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::sql::sqlparser::ast::NullTreatment;

/// The functions of this module, to register in a session.
pub fn functions() -> Vec<AggregateUDF> {
    let mut functions: Vec<AggregateUDF> = [
        ("countIf", Alias::CountIf, 1),
        ("sumIf", Alias::SumIf, 2),
        ("avgIf", Alias::AvgIf, 2),
        ("minIf", Alias::MinIf, 2),
        ("maxIf", Alias::MaxIf, 2),
        ("uniq", Alias::Uniq, 1),
        ("uniqExact", Alias::UniqExact, 1),
        ("argMax", Alias::ArgMax, 2),
        ("argMin", Alias::ArgMin, 2),
        ("any", Alias::Any, 1),
        ("anyLast", Alias::AnyLast, 1),
        ("groupArray", Alias::GroupArray, 1),
    ]
    .into_iter()
    .map(|(name, alias, arity)| AggregateUDF::new_from_impl(Aliased::new(name, alias, arity)))
    .collect();
    functions.push(AggregateUDF::new_from_impl(Quantile::new("quantile", false)));
    functions.push(AggregateUDF::new_from_impl(Quantile::new("quantiles", true)));
    functions
}

/// What a ClickHouse aggregate stands for in DataFusion's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Alias {
    CountIf,
    SumIf,
    AvgIf,
    MinIf,
    MaxIf,
    Uniq,
    UniqExact,
    ArgMax,
    ArgMin,
    Any,
    AnyLast,
    GroupArray,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Aliased {
    name: &'static str,
    alias: Alias,
    signature: Signature,
}

impl Aliased {
    fn new(name: &'static str, alias: Alias, arity: usize) -> Self {
        let signature = match alias {
            Alias::CountIf | Alias::SumIf | Alias::AvgIf | Alias::MinIf | Alias::MaxIf => {
                Signature::user_defined(Volatility::Immutable)
            }
            _ => Signature::one_of(vec![TypeSignature::Any(arity)], Volatility::Immutable),
        };
        Aliased { name, alias, signature }
    }
}

/// The type `sum` adds a column of `t` in.
fn sum_type(t: &DataType) -> DataType {
    match t {
        t if t.is_unsigned_integer() => DataType::UInt64,
        t if t.is_integer() => DataType::Int64,
        DataType::Null => DataType::Int64,
        _ => DataType::Float64,
    }
}

impl AggregateUDFImpl for Aliased {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match (self.alias, arg_types) {
            (Alias::CountIf, [_]) => Ok(vec![DataType::Boolean]),
            (Alias::SumIf, [value, _]) => Ok(vec![sum_type(value), DataType::Boolean]),
            (Alias::AvgIf, [_, _]) => Ok(vec![DataType::Float64, DataType::Boolean]),
            (Alias::MinIf | Alias::MaxIf, [value, _]) => Ok(vec![value.clone(), DataType::Boolean]),
            (Alias::CountIf, _) => plan_err!("countIf takes one condition: countIf(cond)"),
            _ => plan_err!("{} takes a value and a condition: {}(value, cond)", self.name, self.name),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        let first = arg_types.first().cloned().unwrap_or(DataType::Null);
        Ok(match self.alias {
            Alias::CountIf | Alias::UniqExact => DataType::Int64,
            Alias::Uniq => DataType::UInt64,
            Alias::SumIf => sum_type(&first),
            Alias::AvgIf => DataType::Float64,
            Alias::MinIf | Alias::MaxIf | Alias::ArgMax | Alias::ArgMin | Alias::Any | Alias::AnyLast => first,
            Alias::GroupArray => DataType::List(Arc::new(Field::new_list_field(first, true))),
        })
    }

    fn is_nullable(&self) -> bool {
        !matches!(self.alias, Alias::CountIf | Alias::UniqExact | Alias::Uniq | Alias::GroupArray)
    }

    fn accumulator(&self, _acc_args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        internal_err!("{} runs as the aggregate it stands for; the optimizer did not replace it", self.name)
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        let alias = self.alias;
        Some(Box::new(move |function: AggregateFunction, _info| {
            let AggregateFunctionParams { args, distinct, filter, order_by, null_treatment } = function.params;
            let mut args = args.into_iter();
            let (first, second) = (args.next(), args.next());
            let with_condition = |filter: Option<Box<Expr>>, condition: Option<Expr>| match (filter, condition) {
                (Some(f), Some(c)) => Some(Box::new(f.and(c))),
                (f, c) => f.or(c.map(Box::new)),
            };
            let call = |udaf: Arc<AggregateUDF>, args: Vec<Expr>, distinct: bool, filter, order_by, nulls| {
                Expr::AggregateFunction(AggregateFunction::new_udf(udaf, args, distinct, filter, order_by, nulls))
            };
            let one = || Expr::Literal(ScalarValue::Int64(Some(1)), None);
            let Some(first) = first else { return plan_err!("an aggregate without arguments") };
            Ok(match alias {
                Alias::CountIf => {
                    call(count_udaf(), vec![one()], false, with_condition(filter, Some(first)), vec![], None)
                }
                Alias::SumIf | Alias::AvgIf | Alias::MinIf | Alias::MaxIf => {
                    let udaf = match alias {
                        Alias::SumIf => sum_udaf(),
                        Alias::AvgIf => avg_udaf(),
                        Alias::MinIf => min_udaf(),
                        _ => max_udaf(),
                    };
                    call(udaf, vec![first], distinct, with_condition(filter, second), vec![], None)
                }
                Alias::Uniq => call(approx_distinct_udaf(), vec![first], false, filter, vec![], None),
                Alias::UniqExact => call(count_udaf(), vec![first], true, filter, vec![], None),
                Alias::ArgMax | Alias::ArgMin => {
                    let Some(by) = second else { return plan_err!("argMax and argMin take a value and a key") };
                    let order = SortExpr::new(by, alias == Alias::ArgMin, false);
                    call(first_value_udaf(), vec![first], false, filter, vec![order], None)
                }
                Alias::Any | Alias::AnyLast => {
                    let udaf = if alias == Alias::Any { first_value_udaf() } else { last_value_udaf() };
                    call(udaf, vec![first], false, filter, order_by, Some(NullTreatment::IgnoreNulls.into()))
                }
                Alias::GroupArray => {
                    let present = first.clone().is_not_null();
                    call(
                        array_agg_udaf(),
                        vec![first],
                        distinct,
                        with_condition(filter, Some(present)),
                        order_by,
                        null_treatment,
                    )
                }
            })
        }))
    }
}

/// The most values a `quantile` keeps per group.
const SAMPLE_SIZE: usize = 8192;

/// `quantile(level)(x)` (one Float64) and `quantiles(l1, l2, ...)(x)` (an array of them); the
/// statement's syntax moves the levels after `x`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Quantile {
    name: &'static str,
    many: bool,
    signature: Signature,
}

impl Quantile {
    fn new(name: &'static str, many: bool) -> Self {
        Quantile { name, many, signature: Signature::variadic_any(Volatility::Immutable) }
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
        Ok(if self.many {
            DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
        } else {
            DataType::Float64
        })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[sample]", args.name),
                DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
                true,
            )),
            Arc::new(Field::new(format!("{}[seen]", args.name), DataType::UInt64, true)),
        ])
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let mut levels = Vec::new();
        for expr in acc_args.exprs.iter().skip(1) {
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
        Ok(Box::new(QuantileAccumulator {
            levels,
            many: self.many,
            sample: Vec::new(),
            seen: 0,
            random: 0x9E37_79B9_7F4A_7C15,
        }))
    }
}

#[derive(Debug)]
struct QuantileAccumulator {
    levels: Vec<f64>,
    many: bool,
    sample: Vec<f64>,
    /// Values seen, of which `sample` holds a uniform sample.
    seen: u64,
    /// xorshift state: the sample is the same for the same input order.
    random: u64,
}

impl QuantileAccumulator {
    fn next_random(&mut self) -> u64 {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random
    }

    /// Reservoir sampling: the n-th value replaces a kept one with probability SAMPLE_SIZE/n.
    fn insert(&mut self, value: f64) {
        self.seen += 1;
        if self.sample.len() < SAMPLE_SIZE {
            self.sample.push(value);
            return;
        }
        let slot = self.next_random() % self.seen;
        if let Some(kept) = usize::try_from(slot).ok().and_then(|slot| self.sample.get_mut(slot)) {
            *kept = value;
        }
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
}

impl Accumulator for QuantileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let Some(values) = values.first() else { return Ok(()) };
        let values = cast_with_options(values, &DataType::Float64, &CastOptions::default())?;
        for value in values.as_primitive::<Float64Type>().iter().flatten() {
            if !value.is_nan() {
                self.insert(value);
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let (Some(samples), Some(seen)) = (states.first(), states.get(1)) else {
            return internal_err!("a quantile state has a sample and a count");
        };
        let samples = samples.as_list::<i32>();
        let seen = seen.as_primitive::<UInt64Type>();
        for (row, sample) in samples.iter().enumerate() {
            let Some(sample) = sample else { continue };
            let other_seen = if seen.is_null(row) { 0 } else { seen.value(row) };
            let sample = sample.as_primitive::<Float64Type>();
            // Each kept value stands for other_seen / len values of the other group.
            let weight = other_seen / (sample.len().max(1) as u64);
            for value in sample.iter().flatten() {
                self.insert(value);
                self.seen += weight.saturating_sub(1);
            }
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let sample = ScalarValue::new_list_nullable(
            &self.sample.iter().map(|v| ScalarValue::Float64(Some(*v))).collect::<Vec<_>>(),
            &DataType::Float64,
        );
        Ok(vec![ScalarValue::List(sample), ScalarValue::UInt64(Some(self.seen))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let mut sorted = self.sample.clone();
        sorted.sort_by(f64::total_cmp);
        let values: Vec<ScalarValue> =
            self.levels.iter().map(|level| ScalarValue::Float64(Self::quantile(&sorted, *level))).collect();
        if self.many {
            return Ok(ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Float64)));
        }
        match values.into_iter().next() {
            Some(value) => Ok(value),
            None => exec_err!("quantile without a level"),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sample.capacity() * 8 + self.levels.capacity() * 8
    }
}
