//! Partial aggregation over runs of equal group keys.
//!
//! Parts are sorted by their table's `ORDER BY`, so a `GROUP BY` on a sort-key column, or on a
//! time bucket of the column that follows it, sees one key on runs of consecutive rows: 50,000
//! rows per host in a part of the benchmark's `ORDER BY (host, ts)` table, six per minute
//! bucket. DataFusion's hash aggregation looks every row's key up in its hash table; for minute
//! buckets over 10 M rows that lookup was 37% of the query's CPU. [`RunAggregateExec`] takes
//! the place of a partial `AggregateExec` whose aggregates it knows (`count`, and `sum`, `avg`
//! and `quantile` of a Float64): it finds the runs of each batch (by comparing neighbouring
//! keys), looks each run's key up once, and adds the run's values to its group (a time bucket's
//! runs are found from the times themselves, strings' from their views). It emits the partial
//! states DataFusion would (sums of long runs added in lanes, as Arrow's `sum` kernel adds), so
//! the final aggregation is DataFusion's, unchanged. Input without runs (a first batch whose
//! runs average fewer than [`MIN_RUN_ROWS`] rows) goes to DataFusion's own partial aggregation
//! instead.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringViewArray, UInt64Array,
};
use datafusion::arrow::compute::{cast, partition, take_arrays};
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};

use crate::functions::quantile::{QUANTILE_NAMES, Reservoir};
use crate::functions::{TickBuckets, fixed_time_bucket};

/// Group numbers by key, hashed with foldhash: SipHash's resistance to chosen keys is not needed
/// for a query's own groups, and it costs several times more per lookup.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Fewer rows than this per run, on average, in the first batch: DataFusion's hash aggregation
/// is left to do the work (a lookup per run costs more than its lookup per row then).
pub const MIN_RUN_ROWS: usize = 4;

/// Memory counted per group besides its key: the states and the index entry.
const GROUP_OVERHEAD_BYTES: usize = 64;

/// Puts a [`RunAggregateExec`] in place of every partial aggregation it can do.
#[derive(Debug, Default)]
pub struct RunAggregateRule;

impl PhysicalOptimizerRule for RunAggregateRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            Ok(match RunAggregateExec::replacing(aggregate, &node) {
                Some(run) => Transformed::yes(Arc::new(run) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "run_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// An aggregate function of the partial aggregation, and the argument it reads.
#[derive(Debug, Clone)]
enum RunFunction {
    /// `count(*)` (a non-null literal argument): the rows.
    CountRows,
    /// `count(x)`: the rows where `x` is not null.
    Count(Arc<dyn PhysicalExpr>),
    /// `sum(x)` of a Float64: state `sum` (null while no value was seen).
    Sum(Arc<dyn PhysicalExpr>),
    /// `avg(x)` of a Float64: states `count` and `sum` (both null while no value was seen).
    Avg(Arc<dyn PhysicalExpr>),
    /// `quantile(level)(x)` or `quantiles(...)(x)` of a Float64: states `sample` and `seen`
    /// (the levels only matter to the final aggregation).
    Quantile(Arc<dyn PhysicalExpr>),
}

impl RunFunction {
    /// The function of `name` over `args`, if it is one of these with the state types
    /// DataFusion gives it (`states`: the partial output's fields for it).
    fn of(name: &str, args: &[Arc<dyn PhysicalExpr>], input: &SchemaRef, states: &[DataType]) -> Option<Self> {
        if QUANTILE_NAMES.contains(&name) {
            let arg = args.first()?;
            return match states {
                [DataType::List(item), DataType::UInt64]
                    if item.data_type() == &DataType::Float64 && arg.data_type(input).ok()? == DataType::Float64 =>
                {
                    Some(RunFunction::Quantile(arg.clone()))
                }
                _ => None,
            };
        }
        let [arg] = args else { return None };
        let arg_type = arg.data_type(input).ok()?;
        match (name, states) {
            ("count", [DataType::Int64]) => {
                let literal = arg.downcast_ref::<Literal>();
                Some(match literal {
                    Some(literal) if !literal.value().is_null() => RunFunction::CountRows,
                    _ => RunFunction::Count(arg.clone()),
                })
            }
            ("sum", [DataType::Float64]) if arg_type == DataType::Float64 => Some(RunFunction::Sum(arg.clone())),
            ("avg", [DataType::UInt64, DataType::Float64]) if arg_type == DataType::Float64 => {
                Some(RunFunction::Avg(arg.clone()))
            }
            _ => None,
        }
    }

    fn argument(&self) -> Option<&Arc<dyn PhysicalExpr>> {
        match self {
            RunFunction::CountRows => None,
            RunFunction::Count(arg) | RunFunction::Sum(arg) | RunFunction::Avg(arg) | RunFunction::Quantile(arg) => {
                Some(arg)
            }
        }
    }
}

/// Whether runs of a key type are found by comparing neighbours (Arrow's `partition`) and the
/// key can be held in the row format: integers, dates, times and strings. Floats are left out
/// (their grouping of NaN and -0.0 is DataFusion's business), as are nested types.
fn is_run_key(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Boolean
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(_, _)
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
        )
}

/// A partial aggregation by runs of equal keys (see the module's documentation).
#[derive(Debug)]
pub struct RunAggregateExec {
    /// The aggregation replaced: its input, its output schema and properties, and the plan
    /// that runs instead when the input has no runs.
    aggregate: Arc<dyn ExecutionPlan>,
    input: Arc<dyn ExecutionPlan>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    functions: Vec<RunFunction>,
}

impl RunAggregateExec {
    /// The replacement of `aggregate` (which is `node`), if it is a partial aggregation with
    /// plain group keys of the types [`is_run_key`] accepts, and only aggregates
    /// [`RunFunction`] knows, without `DISTINCT`, `FILTER`, `ORDER BY` or a limit.
    fn replacing(aggregate: &AggregateExec, node: &Arc<dyn ExecutionPlan>) -> Option<Self> {
        let group_by = aggregate.group_expr();
        if *aggregate.mode() != AggregateMode::Partial
            || group_by.has_grouping_set()
            || group_by.expr().is_empty()
            || aggregate.limit_options().is_some()
            || !aggregate.dynamic_expressions_produced().is_empty()
            || *aggregate.input_order_mode() != InputOrderMode::Linear
            || aggregate.filter_expr().iter().any(Option::is_some)
        {
            return None;
        }
        let input = aggregate.input().clone();
        let input_schema = input.schema();
        let keys: Vec<Arc<dyn PhysicalExpr>> = group_by.expr().iter().map(|(expr, _)| expr.clone()).collect();
        if !keys.iter().all(|key| key.data_type(&input_schema).is_ok_and(|t| is_run_key(&t))) {
            return None;
        }
        let output = aggregate.schema();
        let mut state_column = keys.len();
        let mut functions = Vec::with_capacity(aggregate.aggr_expr().len());
        for function in aggregate.aggr_expr() {
            if function.is_distinct() || !function.order_bys().is_empty() || function.ignore_nulls() {
                return None;
            }
            let states = function.state_fields().ok()?.len();
            let state_types: Vec<DataType> = (state_column..state_column + states)
                .map(|i| output.fields().get(i).map(|f| f.data_type().clone()))
                .collect::<Option<_>>()?;
            state_column += states;
            functions.push(RunFunction::of(
                function.fun().name(),
                &function.expressions(),
                &input_schema,
                &state_types,
            )?);
        }
        if state_column != output.fields().len() {
            return None;
        }
        Some(RunAggregateExec { aggregate: node.clone(), input, keys, functions })
    }
}

impl DisplayAs for RunAggregateExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|k| k.to_string()).collect();
        write!(f, "RunAggregateExec: mode=Partial, gby=[{}], falls back to ", keys.join(", "))?;
        self.aggregate.fmt_as(DisplayFormatType::Default, f)
    }
}

impl ExecutionPlan for RunAggregateExec {
    fn name(&self) -> &'static str {
        "RunAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.aggregate.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        for expr in self.keys.iter().chain(self.functions.iter().filter_map(RunFunction::argument)) {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        // The aggregation is rebuilt on the new input and replaced again (or kept as it is).
        let aggregate = self.aggregate.clone().with_new_children(children)?;
        let replaced =
            aggregate.downcast_ref::<AggregateExec>().and_then(|a| RunAggregateExec::replacing(a, &aggregate));
        Ok(match replaced {
            Some(run) => Arc::new(run),
            None => aggregate,
        })
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let reservation = MemoryConsumer::new(format!("RunAggregateExec[{partition}]")).register(context.memory_pool());
        let input_schema = self.input.schema();
        let time_bucket = match self.keys.as_slice() {
            [key] => fixed_time_bucket(key, &input_schema),
            _ => None,
        };
        let plan = RunPlan {
            aggregate: self.aggregate.clone(),
            input_schema,
            output: self.schema(),
            keys: self.keys.clone(),
            time_bucket,
            functions: self.functions.clone(),
            batch_size: context.session_config().batch_size(),
        };
        let schema = self.schema();
        let stream = futures::stream::once(run(plan, input, reservation, context)).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// What one partition's run needs of the plan.
struct RunPlan {
    aggregate: Arc<dyn ExecutionPlan>,
    input_schema: SchemaRef,
    output: SchemaRef,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// When the one key is a fixed-size time bucket of a time column: that column and its
    /// buckets ([`bucket_runs`]).
    time_bucket: Option<(usize, TickBuckets)>,
    functions: Vec<RunFunction>,
    batch_size: usize,
}

/// The runs of equal keys of a batch, in row order, and each run's key (one array per key
/// column, one value per run).
struct Runs {
    ranges: Vec<Range<usize>>,
    heads: Vec<ArrayRef>,
}

impl RunPlan {
    fn evaluate(
        &self,
        exprs: impl Iterator<Item = Arc<dyn PhysicalExpr>>,
        batch: &RecordBatch,
    ) -> DfResult<Vec<ArrayRef>> {
        exprs.map(|expr| expr.evaluate(batch).and_then(|value| value.into_array(batch.num_rows()))).collect()
    }

    /// The runs of `batch`'s keys. A time bucket's runs come straight from the times, without
    /// the buckets of every row being written out and compared again.
    fn runs(&self, batch: &RecordBatch) -> DfResult<Runs> {
        if let Some((column, buckets)) = self.time_bucket
            && let Some(times) = batch.columns().get(column)
            && times.null_count() == 0
            && let Some(ticks) = int64_values(times)
            && let Some(key) = self.keys.first()
        {
            let (ranges, starts) = bucket_runs(ticks, buckets);
            let starts: ArrayRef = Arc::new(Int64Array::from(starts));
            return Ok(Runs { ranges, heads: vec![cast(&starts, &key.data_type(&self.input_schema)?)?] });
        }
        let keys = self.evaluate(self.keys.iter().cloned(), batch)?;
        let ranges = runs_of(&keys)?;
        let heads = Int64Array::from_iter_values(ranges.iter().map(|run| run.start as i64));
        Ok(Runs { heads: take_arrays(&keys, &heads, None)?, ranges })
    }

    fn arguments(&self, batch: &RecordBatch) -> DfResult<Vec<Option<ArrayRef>>> {
        self.functions
            .iter()
            .map(|function| match function.argument() {
                Some(arg) => Ok(Some(arg.evaluate(batch)?.into_array(batch.num_rows())?)),
                None => Ok(None),
            })
            .collect()
    }
}

/// One partition: decides from the first batch, then aggregates by runs (or hands over).
async fn run(
    plan: RunPlan,
    mut input: SendableRecordBatchStream,
    reservation: MemoryReservation,
    context: Arc<TaskContext>,
) -> DfResult<SendableRecordBatchStream> {
    let output = plan.output.clone();
    let mut first = None;
    while let Some(batch) = input.next().await {
        let batch = batch?;
        if batch.num_rows() > 0 {
            first = Some(batch);
            break;
        }
    }
    // No rows, no groups: a partial aggregation with keys emits nothing.
    let Some(first) = first else {
        return Ok(Box::pin(RecordBatchStreamAdapter::new(output, futures::stream::empty())));
    };
    let runs = plan.runs(&first)?;
    if runs.ranges.len() * MIN_RUN_ROWS > first.num_rows() {
        let replay = futures::stream::once(async move { Ok(first) }).chain(input);
        let replay = Box::pin(RecordBatchStreamAdapter::new(plan.input_schema.clone(), replay));
        #[allow(deprecated)]
        let aggregate = plan.aggregate.clone().with_new_children(vec![Arc::new(Replay::new(replay))])?;
        return aggregate.execute(0, context);
    }
    let mut groups = Groups::new(&plan, reservation)?;
    let mut ready = VecDeque::new();
    groups.add_or_emit(&plan, &first, &runs, &mut ready)?;
    let state = (plan, groups, Some(input), ready);
    let stream = futures::stream::try_unfold(state, |(plan, mut groups, mut input, mut ready)| async move {
        loop {
            if let Some(batch) = ready.pop_front() {
                return Ok(Some((batch, (plan, groups, input, ready))));
            }
            let Some(stream) = input.as_mut() else { return Ok(None) };
            match stream.next().await {
                Some(batch) => {
                    let batch = batch?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let runs = plan.runs(&batch)?;
                    groups.add_or_emit(&plan, &batch, &runs, &mut ready)?;
                }
                None => {
                    input = None;
                    ready.extend(groups.emit(&plan)?);
                }
            }
        }
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(output, stream)))
}

/// The runs of equal keys in a batch, in row order. One 64-bit key without nulls (a time bucket,
/// an id) is read straight from its values, one string key without nulls from its views;
/// other keys go through Arrow's `partition`, which compares neighbours into a bitmap and then
/// walks it: for minute buckets over 10 M rows that was 14% of the query's CPU.
fn runs_of(keys: &[ArrayRef]) -> DfResult<Vec<Range<usize>>> {
    if let [key] = keys
        && key.null_count() == 0
    {
        if let Some(values) = int64_values(key) {
            return Ok(runs_of_values(values));
        }
        if let Some(strings) = key.as_string_view_opt() {
            return Ok(runs_of_strings(strings));
        }
    }
    Ok(partition(keys)?.ranges())
}

/// The runs of equal strings. Two equal views are the same string (a short one is held in its
/// view, a longer one is pointed at), so strings are compared only where the views differ:
/// a host decoded from a part's dictionary repeats one view over its 50,000 rows, and Arrow's
/// `partition`, comparing the bytes of every pair of neighbours, took a fifth of the CPU of a
/// group by host over 10 M rows.
fn runs_of_strings(strings: &StringViewArray) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for (i, pair) in strings.views().windows(2).enumerate() {
        let next = i + 1;
        if pair[0] != pair[1] && strings.value(i) != strings.value(next) {
            runs.push(start..next);
            start = next;
        }
    }
    if !strings.is_empty() {
        runs.push(start..strings.len());
    }
    runs
}

/// The values of an array stored as `i64`s (Int64, and timestamps in any unit).
fn int64_values(array: &ArrayRef) -> Option<&[i64]> {
    Some(match array.data_type() {
        DataType::Int64 => array.as_primitive::<Int64Type>().values(),
        DataType::Timestamp(TimeUnit::Second, _) => array.as_primitive::<TimestampSecondType>().values(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => array.as_primitive::<TimestampMillisecondType>().values(),
        DataType::Timestamp(TimeUnit::Microsecond, _) => array.as_primitive::<TimestampMicrosecondType>().values(),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => array.as_primitive::<TimestampNanosecondType>().values(),
        _ => return None,
    })
}

/// The runs of equal values. Every row writes its index as the next run's start and moves on
/// only where the value changed, so a new run costs no branch the processor has to guess
/// (runs of six rows, as minute buckets of 10 s samples make, mispredicted every sixth row).
fn runs_of_values(values: &[i64]) -> Vec<Range<usize>> {
    let Some(first) = values.first() else { return Vec::new() };
    let mut starts = vec![0_usize; values.len() + 1];
    let mut found = 1;
    let mut previous = *first;
    for (i, &value) in values.iter().enumerate().skip(1) {
        starts[found] = i;
        found += usize::from(value != previous);
        previous = value;
    }
    starts[found] = values.len();
    starts[..=found].windows(2).map(|pair| pair[0]..pair[1]).collect()
}

/// The runs of equal buckets of sorted-ish times, and each run's bucket: a run lasts while the
/// times stay inside its first time's bucket, so a row costs a comparison and a bucket is
/// computed once per run. Over minute buckets of 10 M rows this took the place of writing
/// every row's bucket and finding the runs in them (a fifth of the query's CPU, with the
/// memory each pass filled).
fn bucket_runs(ticks: &[i64], buckets: TickBuckets) -> (Vec<Range<usize>>, Vec<i64>) {
    let (mut ranges, mut starts) = (Vec::new(), Vec::new());
    let mut first = 0;
    while let Some(&tick) = ticks.get(first) {
        let (start, end) = buckets.bounds(tick);
        let rest = ticks.get(first + 1..).unwrap_or_default();
        let length = 1 + rest.iter().position(|t| !(start..end).contains(t)).unwrap_or(rest.len());
        ranges.push(first..first + length);
        starts.push(start);
        first += length;
    }
    (ranges, starts)
}

/// What became of a batch offered to [`Groups::add`].
#[derive(Debug, PartialEq, Eq)]
enum Fit {
    /// Added, within the memory limit.
    Held,
    /// Added, and the states are now over the limit.
    OverLimit,
    /// Not added: its new groups do not fit beside the ones held.
    Refused,
}

/// The groups of one partition: their keys, an index from key to group, and the states.
struct Groups {
    index: KeyIndex,
    states: Vec<State>,
    reservation: MemoryReservation,
}

/// Group numbers by key: a single integer-like key as an `i64`, any other keys in Arrow's row
/// format.
enum KeyIndex {
    Integer { data_type: DataType, index: HashMap<Option<i64>, usize>, keys: Vec<Option<i64>> },
    Rows { converter: RowConverter, index: HashMap<Box<[u8]>, usize>, keys: Vec<OwnedRow> },
}

/// The group after `last` when `is_key` says it has the key sought. Parts are sorted, so the
/// runs of a key that is not the sort key's first column (a time bucket within each host) come
/// in the same order under each value of the columns before it: the group that followed last
/// time mostly follows again, and a comparison finds it without a hash lookup (whose table,
/// swept from end to end, is mostly out of the cache).
fn next_group(last: Option<usize>, is_key: impl Fn(usize) -> bool) -> Option<usize> {
    last.map(|g| g + 1).filter(|&g| is_key(g))
}

impl KeyIndex {
    fn new(types: &[DataType]) -> DfResult<Self> {
        Ok(match types {
            [data_type] if integer_like(data_type) => {
                KeyIndex::Integer { data_type: data_type.clone(), index: HashMap::default(), keys: Vec::new() }
            }
            _ => KeyIndex::Rows {
                converter: RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?,
                index: HashMap::default(),
                keys: Vec::new(),
            },
        })
    }

    fn len(&self) -> usize {
        match self {
            KeyIndex::Integer { keys, .. } => keys.len(),
            KeyIndex::Rows { keys, .. } => keys.len(),
        }
    }

    /// The group of the first row of each run (`heads`: those rows' keys), new groups added;
    /// and the bytes the new keys take.
    fn groups(&mut self, heads: &[ArrayRef]) -> DfResult<(Vec<usize>, usize)> {
        let mut added = 0;
        let groups = match self {
            KeyIndex::Integer { index, keys, .. } => {
                let values = cast(&heads[0], &DataType::Int64)?;
                let values = values.as_primitive::<Int64Type>();
                let mut groups = Vec::with_capacity(values.len());
                let mut last = None;
                for key in values.iter() {
                    let group = match next_group(last, |g| keys.get(g) == Some(&key)) {
                        Some(group) => group,
                        None => *index.entry(key).or_insert_with(|| {
                            keys.push(key);
                            added += 16;
                            keys.len() - 1
                        }),
                    };
                    groups.push(group);
                    last = Some(group);
                }
                groups
            }
            KeyIndex::Rows { converter, index, keys } => {
                let rows = converter.convert_columns(heads)?;
                let mut groups = Vec::with_capacity(rows.num_rows());
                let mut last = None;
                for row in rows.iter() {
                    let bytes = row.as_ref();
                    let found = next_group(last, |g| keys.get(g).is_some_and(|k| k.as_ref() == bytes))
                        .or_else(|| index.get(bytes).copied());
                    let group = match found {
                        Some(group) => group,
                        None => {
                            added += 2 * bytes.len();
                            keys.push(row.owned());
                            index.insert(bytes.into(), keys.len() - 1);
                            keys.len() - 1
                        }
                    };
                    groups.push(group);
                    last = Some(group);
                }
                groups
            }
        };
        Ok((groups, added))
    }

    /// The keys of every group, in group order, as the output's key columns; the index empties.
    fn take_keys(&mut self) -> DfResult<Vec<ArrayRef>> {
        match self {
            KeyIndex::Integer { data_type, index, keys } => {
                index.clear();
                let values: ArrayRef = Arc::new(Int64Array::from(std::mem::take(keys)));
                Ok(vec![cast(&values, data_type)?])
            }
            KeyIndex::Rows { converter, index, keys } => {
                index.clear();
                let columns = converter.convert_rows(keys.iter().map(OwnedRow::row))?;
                keys.clear();
                Ok(columns)
            }
        }
    }
}

/// Integer types whose values fit an `i64` both ways, and times (dates take the row format).
fn integer_like(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Timestamp(_, _)
    )
}

/// The partial state of one aggregate function, per group.
enum State {
    Count(Vec<i64>),
    Sum { sums: Vec<f64>, seen: Vec<bool> },
    Avg { counts: Vec<u64>, sums: Vec<f64> },
    Quantile(Vec<Reservoir>),
}

impl State {
    fn new(function: &RunFunction) -> Self {
        match function {
            RunFunction::CountRows | RunFunction::Count(_) => State::Count(Vec::new()),
            RunFunction::Sum(_) => State::Sum { sums: Vec::new(), seen: Vec::new() },
            RunFunction::Avg(_) => State::Avg { counts: Vec::new(), sums: Vec::new() },
            RunFunction::Quantile(_) => State::Quantile(Vec::new()),
        }
    }

    fn resize(&mut self, groups: usize) {
        match self {
            State::Count(counts) => counts.resize(groups, 0),
            State::Sum { sums, seen } => {
                sums.resize(groups, 0.0);
                seen.resize(groups, false);
            }
            State::Avg { counts, sums } => {
                counts.resize(groups, 0);
                sums.resize(groups, 0.0);
            }
            State::Quantile(samples) => samples.resize_with(groups, Reservoir::new),
        }
    }

    /// Adds each run of `argument` (none: `count(*)`) to its group, a run's values with
    /// [`add_values`]. Answers the bytes the states grew by beyond their fixed size per group
    /// (samples).
    fn add(&mut self, argument: Option<&ArrayRef>, runs: &[Range<usize>], groups: &[usize]) -> DfResult<usize> {
        let Some(argument) = argument else {
            if let State::Count(counts) = self {
                for (run, &group) in runs.iter().zip(groups) {
                    counts[group] += run.len() as i64;
                }
            }
            return Ok(0);
        };
        if let State::Count(counts) = self {
            let nulls = argument.logical_nulls();
            for (run, &group) in runs.iter().zip(groups) {
                let valid = match &nulls {
                    Some(nulls) => run.clone().filter(|&i| nulls.is_valid(i)).count(),
                    None => run.len(),
                };
                counts[group] += valid as i64;
            }
            return Ok(0);
        }
        let values: &Float64Array = argument
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| DataFusionError::Internal(format!("a Float64 argument, not {}", argument.data_type())))?;
        let numbers = values.values();
        if let State::Quantile(samples) = self {
            let mut grown = 0;
            for (run, &group) in runs.iter().zip(groups) {
                let sample = &mut samples[group];
                let before = sample.bytes();
                match values.nulls() {
                    None => sample.extend(&numbers[run.clone()]),
                    Some(nulls) => sample
                        .extend(&run.clone().filter(|&i| nulls.is_valid(i)).map(|i| numbers[i]).collect::<Vec<_>>()),
                }
                grown += sample.bytes() - before;
            }
            return Ok(grown);
        }
        for (run, &group) in runs.iter().zip(groups) {
            // A group's sum starts at 0.0, as DataFusion's does.
            let mut sum = match self {
                State::Sum { sums, .. } | State::Avg { sums, .. } => sums[group],
                State::Count(_) | State::Quantile(_) => 0.0,
            };
            let mut count = 0_u64;
            match values.nulls() {
                None => {
                    sum = add_values(sum, &numbers[run.clone()]);
                    count += run.len() as u64;
                }
                Some(nulls) => {
                    for i in run.clone() {
                        if nulls.is_valid(i) {
                            sum += numbers[i];
                            count += 1;
                        }
                    }
                }
            }
            if count == 0 {
                continue;
            }
            match self {
                State::Sum { sums, seen } => {
                    sums[group] = sum;
                    seen[group] = true;
                }
                State::Avg { counts, sums } => {
                    sums[group] = sum;
                    counts[group] += count;
                }
                State::Count(_) | State::Quantile(_) => {}
            }
        }
        Ok(0)
    }

    /// The state columns of every group; the states empty.
    fn take(&mut self) -> Vec<ArrayRef> {
        match self {
            State::Count(counts) => vec![Arc::new(Int64Array::from(std::mem::take(counts)))],
            State::Sum { sums, seen } => {
                let sums: Float64Array = std::mem::take(sums)
                    .into_iter()
                    .zip(std::mem::take(seen))
                    .map(|(s, seen)| seen.then_some(s))
                    .collect();
                vec![Arc::new(sums)]
            }
            State::Avg { counts, sums } => {
                let counts = std::mem::take(counts);
                let sums: Float64Array = std::mem::take(sums)
                    .into_iter()
                    .zip(&counts)
                    .map(|(sum, &count)| (count > 0).then_some(sum))
                    .collect();
                let counts: UInt64Array = counts.into_iter().map(|count| (count > 0).then_some(count)).collect();
                vec![Arc::new(counts), Arc::new(sums)]
            }
            State::Quantile(samples) => Reservoir::states(std::mem::take(samples)),
        }
    }
}

/// Lanes of [`add_values`].
const SUM_LANES: usize = 8;

/// `start` plus `values`. A long run is added in eight interleaved lanes, as Arrow's `sum`
/// kernel adds (each addition waits on the one before in its lane only; in one chain, adding
/// the 50,000 values of each host was a tenth of a group by host's CPU); a short one in row
/// order. The sum can differ in its last bits from one added row by row, as it does with the
/// parts split differently among partitions.
fn add_values(start: f64, values: &[f64]) -> f64 {
    if values.len() < 4 * SUM_LANES {
        return values.iter().fold(start, |sum, value| sum + value);
    }
    let mut lanes = [0.0; SUM_LANES];
    let chunks = values.chunks_exact(SUM_LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += value;
        }
    }
    start + lanes.iter().sum::<f64>() + rest.iter().sum::<f64>()
}

impl Groups {
    fn new(plan: &RunPlan, reservation: MemoryReservation) -> DfResult<Self> {
        let key_types: Vec<DataType> =
            plan.keys.iter().map(|key| key.data_type(&plan.input_schema)).collect::<DfResult<_>>()?;
        Ok(Groups {
            index: KeyIndex::new(&key_types)?,
            states: plan.functions.iter().map(State::new).collect(),
            reservation,
        })
    }

    /// Adds a batch (`keys`: its key columns, `runs`: their runs). Over the query's memory
    /// limit, what is held goes to `ready` as output (a partial aggregation may answer a group
    /// more than once; the final one merges them): before the batch when its new groups do not
    /// fit, after it when its values made the states outgrow the limit.
    fn add_or_emit(
        &mut self,
        plan: &RunPlan,
        batch: &RecordBatch,
        runs: &Runs,
        ready: &mut VecDeque<RecordBatch>,
    ) -> DfResult<()> {
        let mut fit = self.add(plan, batch, runs)?;
        if fit == Fit::Refused {
            ready.extend(self.emit(plan)?);
            // With no group held, a batch is always taken.
            fit = self.add(plan, batch, runs)?;
        }
        if fit != Fit::Held {
            ready.extend(self.emit(plan)?);
        }
        Ok(())
    }

    /// Adds a batch, unless its new groups do not fit in the memory the query may still take
    /// while older groups are held.
    fn add(&mut self, plan: &RunPlan, batch: &RecordBatch, runs: &Runs) -> DfResult<Fit> {
        let before = self.index.len();
        let (groups, key_bytes) = self.index.groups(&runs.heads)?;
        let added = self.index.len() - before;
        if self.reservation.try_grow(key_bytes + added * GROUP_OVERHEAD_BYTES).is_err() {
            if added > 0 && before > 0 {
                self.forget_groups_from(before);
                return Ok(Fit::Refused);
            }
            // A first batch's groups are always taken: DataFusion's own aggregation could not
            // do with less either.
            self.reservation.grow(key_bytes + added * GROUP_OVERHEAD_BYTES);
        }
        let groups_now = self.index.len();
        for state in &mut self.states {
            state.resize(groups_now);
        }
        let mut grown = 0;
        for (state, argument) in self.states.iter_mut().zip(plan.arguments(batch)?) {
            grown += state.add(argument.as_ref(), &runs.ranges, &groups)?;
        }
        if self.reservation.try_grow(grown).is_err() {
            self.reservation.grow(grown);
            return Ok(Fit::OverLimit);
        }
        Ok(Fit::Held)
    }

    /// Drops the groups numbered `from` and later (just added, nothing accumulated yet).
    fn forget_groups_from(&mut self, from: usize) {
        match &mut self.index {
            KeyIndex::Integer { index, keys, .. } => {
                for key in keys.drain(from..) {
                    index.remove(&key);
                }
            }
            KeyIndex::Rows { index, keys, .. } => {
                for key in keys.drain(from..) {
                    index.remove(key.as_ref());
                }
            }
        }
    }

    /// Every group held, as output batches of at most the session's batch size; the groups empty.
    fn emit(&mut self, plan: &RunPlan) -> DfResult<Vec<RecordBatch>> {
        if self.index.len() == 0 {
            return Ok(Vec::new());
        }
        let mut columns = self.index.take_keys()?;
        for state in &mut self.states {
            columns.extend(state.take());
        }
        self.reservation.free();
        let columns =
            columns
                .into_iter()
                .zip(plan.output.fields())
                .map(|(column, field)| {
                    if column.data_type() == field.data_type() { Ok(column) } else { cast(&column, field.data_type()) }
                })
                .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(plan.output.clone(), columns)?;
        let size = plan.batch_size.max(1);
        Ok((0..batch.num_rows())
            .step_by(size)
            .map(|start| batch.slice(start, size.min(batch.num_rows() - start)))
            .collect())
    }
}

/// A plan whose one partition is a stream already begun: DataFusion's aggregation reads the
/// input through it when this one hands over.
struct Replay {
    stream: Mutex<Option<SendableRecordBatchStream>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl Replay {
    fn new(stream: SendableRecordBatchStream) -> Self {
        let schema = stream.schema();
        let properties = Arc::new(PlanProperties::new(
            datafusion::physical_expr::EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Replay { stream: Mutex::new(Some(stream)), schema, properties }
    }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Replay")
    }
}

impl DisplayAs for Replay {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Replay")
    }
}

impl ExecutionPlan for Replay {
    fn name(&self) -> &'static str {
        "Replay"
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, _partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        self.stream
            .lock()
            .map_err(|_| DataFusionError::Internal("a replayed stream's lock is poisoned".to_string()))?
            .take()
            .ok_or_else(|| DataFusionError::Internal("a replayed stream is read once".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{
        BooleanArray, Date32Array, StringViewArray, StringViewBuilder, TimestampSecondArray, UInt32Array,
    };
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::datasource::MemTable;
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::logical_expr::AggregateUDF;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;
    use crate::functions::quantile::Quantile;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn runs_of_integer_and_string_keys_are_the_runs_arrow_finds(
            values in proptest::collection::vec(0_i64..4, 0..200),
        ) {
            let integers: ArrayRef = Arc::new(Int64Array::from(values.clone()));
            let times: ArrayRef = Arc::new(TimestampSecondArray::from(values.clone()));
            // Short strings live in their views, long ones in buffers: the same long string is
            // held once (the same view, as a dictionary decodes) or again (another view).
            let strings = [false, true].map(|shared| {
                let mut strings =
                    if shared { StringViewBuilder::new().with_deduplicate_strings() } else { StringViewBuilder::new() };
                for &value in &values {
                    strings.append_value(match value {
                        0 => "short",
                        1 => "a string longer than a view holds",
                        _ => "another string longer than a view holds",
                    });
                }
                Arc::new(strings.finish()) as ArrayRef
            });
            let [strings, shared_strings] = strings;
            for keys in [[integers], [times], [strings], [shared_strings]] {
                let expected = if values.is_empty() { Vec::new() } else { partition(&keys).unwrap().ranges() };
                prop_assert_eq!(runs_of(&keys).unwrap(), expected);
            }
        }
    }

    /// Each tick's bucket, as `toStartOf...` answers it.
    fn floors(ticks: &[i64], buckets: TickBuckets) -> Vec<i64> {
        ticks.iter().map(|&t| buckets.bounds(t).0).collect()
    }

    proptest! {
        #[test]
        fn bucket_runs_are_the_runs_of_the_buckets(
            steps in proptest::collection::vec((-3_i64..40, 0_u8..20), 0..300),
            start in -1_000_i64..1_000,
            size in prop_oneof![Just(1_i64), Just(7), Just(60), Just(3_600)],
        ) {
            // Times mostly in order with some jumps back, as a part's hosts make them.
            let ticks: Vec<i64> = steps
                .iter()
                .scan(start, |t, &(step, jump)| {
                    *t = if jump == 0 { *t - 500 } else { *t + step };
                    Some(*t)
                })
                .collect();
            let buckets = TickBuckets::new(size);
            let (ranges, starts) = bucket_runs(&ticks, buckets);
            let keys: ArrayRef = Arc::new(Int64Array::from(floors(&ticks, buckets)));
            prop_assert_eq!(&ranges, &runs_of(&[keys]).unwrap());
            let expanded: Vec<i64> =
                ranges.iter().zip(&starts).flat_map(|(run, &start)| std::iter::repeat_n(start, run.len())).collect();
            prop_assert_eq!(expanded, floors(&ticks, buckets));
        }
    }

    #[test]
    fn values_are_added_in_row_order_when_few_and_in_lanes_when_many() {
        let values: Vec<f64> = (0..1_000).map(|i| (f64::from(i) * 0.37).sin() * 1e3).collect();
        for length in [0, 1, 7, 31, 32, 33, 100, 1_000] {
            let run = &values[..length];
            let in_order = run.iter().fold(0.5, |sum, value| sum + value);
            let added = add_values(0.5, run);
            if length < 4 * SUM_LANES {
                assert_eq!(added.to_bits(), in_order.to_bits(), "{length} values");
            } else {
                assert!((added - in_order).abs() <= 1e-9 * in_order.abs().max(1.0), "{length}: {added} {in_order}");
            }
        }
    }

    #[test]
    fn bucket_runs_give_every_tick_its_bucket_at_the_ends_of_time() {
        let ticks = [i64::MIN, i64::MIN, i64::MIN + 1, -61, -60, -1, 0, 59, 60, i64::MAX - 1, i64::MAX, i64::MAX];
        for size in [1, 60, 86_400, i64::MAX] {
            let buckets = TickBuckets::new(size);
            let (ranges, starts) = bucket_runs(&ticks, buckets);
            let expanded: Vec<i64> =
                ranges.iter().zip(&starts).flat_map(|(run, &start)| std::iter::repeat_n(start, run.len())).collect();
            assert_eq!(expanded, floors(&ticks, buckets), "buckets of {size}");
            assert!(ranges.iter().all(|run| !run.is_empty()));
        }
    }

    #[tokio::test]
    async fn time_bucket_keys_are_recognized_and_others_are_not() {
        let ctx = context(table(10, 1, false), true, None);
        for (sql, size) in [
            ("SELECT toStartOfMinute(ts) AS m, count(*) FROM t GROUP BY m", Some(60)),
            ("SELECT toStartOfInterval(ts, INTERVAL 15 MINUTE) AS m, count(*) FROM t GROUP BY m", Some(900)),
            ("SELECT toStartOfInterval(ts, INTERVAL 1 MONTH) AS m, count(*) FROM t GROUP BY m", None),
            ("SELECT toStartOfMonth(ts) AS m, count(*) FROM t GROUP BY m", None),
            ("SELECT date_trunc('minute', ts) AS m, count(*) FROM t GROUP BY m", None),
        ] {
            let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
            let mut found = Vec::new();
            plan.apply(|node| {
                if let Some(run) = node.downcast_ref::<RunAggregateExec>()
                    && let [key] = run.keys.as_slice()
                {
                    // A bucket's size is where the bucket of time 0 ends.
                    found.push(fixed_time_bucket(key, &run.input.schema()).map(|(_, buckets)| buckets.bounds(0).1));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            assert_eq!(found, vec![size], "{sql}");
        }
    }

    /// `rows` rows in batches of 1,000 over two partitions: a host and a time that change
    /// every `run` rows (sorted, as a part is), and some NULLs among keys and values.
    fn table(rows: usize, run: usize, shuffled: bool) -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8View, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, Some("UTC".into())), false),
            Field::new("id", DataType::UInt32, true),
            Field::new("day", DataType::Date32, false),
            Field::new("flag", DataType::Boolean, false),
            Field::new("v", DataType::Float64, true),
        ]));
        let order: Vec<usize> =
            if shuffled { (0..rows).map(|i| (i * 7_919) % rows).collect() } else { (0..rows).collect() };
        let batches: Vec<RecordBatch> = order
            .chunks(1_000)
            .map(|rows| {
                let key = |i: usize| i / run;
                let host = StringViewArray::from_iter(
                    rows.iter().map(|&i| (key(i) % 13 != 5).then(|| format!("host-{:03}", key(i) % 37))),
                );
                let ts =
                    TimestampSecondArray::from_iter_values(rows.iter().map(|&i| 1_704_067_200 + key(i) as i64 * 10))
                        .with_timezone("UTC");
                let id =
                    UInt32Array::from_iter(rows.iter().map(|&i| (key(i) % 11 != 3).then_some((key(i) % 50) as u32)));
                let day = Date32Array::from_iter_values(rows.iter().map(|&i| 19_723 + (key(i) % 9) as i32));
                let flag = BooleanArray::from_iter(rows.iter().map(|&i| Some(key(i) % 2 == 0)));
                let v = Float64Array::from_iter(rows.iter().map(|&i| (i % 17 != 0).then_some((i as f64).sqrt() * 1.1)));
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(host), Arc::new(ts), Arc::new(id), Arc::new(day), Arc::new(flag), Arc::new(v)],
                )
                .unwrap()
            })
            .collect();
        let (even, odd): (Vec<_>, Vec<_>) = batches.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let partitions = [even, odd].map(|p| p.into_iter().map(|(_, b)| b).collect::<Vec<_>>()).to_vec();
        MemTable::try_new(schema, partitions).unwrap()
    }

    fn context(table: MemTable, with_rule: bool, memory: Option<usize>) -> SessionContext {
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(bytes) = memory {
            runtime = runtime.with_memory_pool(Arc::new(GreedyMemoryPool::new(bytes)));
        }
        let mut builder = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2).with_batch_size(512))
            .with_runtime_env(Arc::new(runtime.build().unwrap()))
            .with_default_features();
        if with_rule {
            builder = builder.with_physical_optimizer_rule(Arc::new(RunAggregateRule));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.register_table("t", Arc::new(table)).unwrap();
        crate::functions::register(&ctx);
        for (name, many) in [("quantile", false), ("quantiles", true)] {
            ctx.register_udaf(AggregateUDF::new_from_impl(Quantile::new(name, many)));
        }
        ctx
    }

    /// The answer as text cells, floats kept as numbers to compare within rounding.
    async fn answer(ctx: &SessionContext, sql: &str) -> Vec<Vec<String>> {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut rows = Vec::new();
        for batch in batches {
            let options = FormatOptions::default().with_null("NULL");
            let formatters: Vec<_> =
                batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
            for row in 0..batch.num_rows() {
                rows.push(formatters.iter().map(|f| f.value(row).to_string()).collect());
            }
        }
        rows
    }

    /// Whether the query's physical plan aggregates by runs.
    async fn runs_by_runs(ctx: &SessionContext, sql: &str) -> bool {
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        plan.exists(|node| Ok(node.downcast_ref::<RunAggregateExec>().is_some())).unwrap()
    }

    fn same(expected: &[Vec<String>], actual: &[Vec<String>]) -> bool {
        expected.len() == actual.len()
            && expected.iter().flatten().zip(actual.iter().flatten()).all(|(x, y)| {
                match (x.parse::<f64>(), y.parse::<f64>()) {
                    (Ok(x), Ok(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                    _ => x == y,
                }
            })
    }

    /// Every group holds fewer values than a quantile's sample, so its quantiles are exact,
    /// whatever order the partial samples merge in.
    const QUERIES: [&str; 12] = [
        "SELECT host, count(*), count(v), sum(v), avg(v) FROM t GROUP BY host ORDER BY host",
        "SELECT coalesce(host, 'none') AS h, count(*), avg(v) FROM t GROUP BY h ORDER BY h",
        "SELECT host, quantile(v, 0.9), quantiles(v, 0.1, 0.5), count(*) FROM t GROUP BY host ORDER BY host",
        "SELECT date_trunc('minute', ts) AS m, count(*), avg(v) FROM t GROUP BY m ORDER BY m",
        "SELECT toStartOfMinute(ts) AS m, count(*), count(v), avg(v) FROM t GROUP BY m ORDER BY m",
        "SELECT toStartOfInterval(ts, INTERVAL 30 SECOND) AS b, sum(v) FROM t GROUP BY b ORDER BY b",
        "SELECT host, id, avg(v), count(id) FROM t GROUP BY host, id ORDER BY host, id",
        "SELECT id, sum(v) FROM t GROUP BY id ORDER BY id",
        "SELECT day, flag, count(*), avg(v) FROM t GROUP BY day, flag ORDER BY day, flag",
        "SELECT day, count(v) FROM t GROUP BY day ORDER BY day",
        "SELECT ts, count(*) FROM t WHERE v > 10 GROUP BY ts ORDER BY ts",
        "SELECT host, sum(v) FROM t WHERE v IS NULL GROUP BY host ORDER BY host",
    ];

    #[tokio::test]
    async fn answers_as_datafusion_does_with_and_without_runs() {
        for (rows, run, shuffled) in [(20_000, 40, false), (20_000, 1, false), (20_000, 40, true), (3, 1, false)] {
            let (plain, runs) =
                (context(table(rows, run, shuffled), false, None), context(table(rows, run, shuffled), true, None));
            for sql in QUERIES {
                assert!(runs_by_runs(&runs, sql).await, "{sql}");
                let (expected, actual) = (answer(&plain, sql).await, answer(&runs, sql).await);
                assert!(!expected.is_empty() || rows < 100 || sql.contains("IS NULL"), "{sql}");
                assert!(
                    same(&expected, &actual),
                    "{rows} rows, runs of {run}, shuffled {shuffled}: {sql}\n{expected:?}\n{actual:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn leaves_what_it_does_not_know_to_datafusion() {
        let ctx = context(table(1_000, 10, false), true, None);
        for sql in [
            "SELECT host, min(v) FROM t GROUP BY host",
            "SELECT host, array_agg(v) FROM t GROUP BY host",
            "SELECT v, count(*) FROM t GROUP BY v",
            "SELECT host, sum(id) FROM t GROUP BY host",
            "SELECT count(*), avg(v) FROM t",
            "SELECT host, count(*) FILTER (WHERE v > 1) FROM t GROUP BY host",
        ] {
            assert!(!runs_by_runs(&ctx, sql).await, "{sql}");
        }
    }

    #[tokio::test]
    async fn over_the_memory_limit_emits_early_and_still_answers_right() {
        // 5,000 groups in runs of 4 under a pool that holds a few hundred of them; 37 samples
        // of about 540 values each, more than the pool holds.
        let rows = 20_000;
        for sql in [
            "SELECT ts, count(*), avg(v) FROM t GROUP BY ts ORDER BY ts",
            "SELECT host, quantile(v, 0.5) FROM t GROUP BY host ORDER BY host",
        ] {
            let expected = answer(&context(table(rows, 4, false), false, None), sql).await;
            let limited = context(table(rows, 4, false), true, Some(64 * 1024));
            let actual = limited.sql(sql).await.unwrap().collect().await;
            match actual {
                Ok(_) => assert!(same(&expected, &answer(&limited, sql).await), "{sql}"),
                Err(e) => assert!(matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)), "{sql}: {e}"),
            }
        }
    }
}
