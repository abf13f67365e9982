//! ClickHouse's aggregate functions. Most are another name for a DataFusion aggregate with a
//! filter, an order or DISTINCT (`countIf(c)` is `count(*) FILTER (WHERE c)`, `argMax(a, b)`
//! is `first_value(a ORDER BY b DESC)`): those are functions that DataFusion's optimizer
//! replaces by what they stand for, so they run as fast as the built-ins. `quantile` and
//! `quantiles` have their own accumulators (`quantile.rs`).

use std::sync::Arc;

use super::quantile::{QUANTILE_NAMES, Quantile};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{Result as DfResult, ScalarValue, internal_err, plan_err};
use datafusion::functions_aggregate::{
    approx_distinct::approx_distinct_udaf, array_agg::array_agg_udaf, average::avg_udaf, count::count_udaf,
    first_last::first_value_udaf, first_last::last_value_udaf, min_max::max_udaf, min_max::min_udaf, sum::sum_udaf,
};
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::function::{AccumulatorArgs, AggregateFunctionSimplification};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Expr, Signature, SortExpr, TypeSignature, Volatility,
};
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
    functions.push(AggregateUDF::new_from_impl(Quantile::new(QUANTILE_NAMES[0], false)));
    functions.push(AggregateUDF::new_from_impl(Quantile::new(QUANTILE_NAMES[1], true)));
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
