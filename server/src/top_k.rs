//! A cheap first cut for `ORDER BY x [DESC], ... LIMIT k` over many rows.
//!
//! DataFusion answers such a query with a `SortExec` that keeps the best `k` rows (its TopK)
//! and narrows each batch first with a filter it derives from the current `k`-th row: for
//! `ORDER BY v DESC, host, ts` that is `v > t OR (v = t AND (host < h OR ...))`, evaluated as
//! general expressions, each float comparison preceded by a scan for `-0.0`. Over the
//! benchmark's 10 M rows that filter was half of the query's CPU, though nearly every row
//! fails it on `v` alone.
//!
//! [`TopKPrefilterExec`] sits under such a sort and drops, in one tight loop over the leading
//! key, the rows that cannot make the top `k`: once `k` rows with a leading key at least as
//! good as `t` have gone by, a row whose leading key is strictly worse than `t` is behind all
//! of them whatever its other keys. Rows with an equal key, or a NULL one, are passed on (the
//! sort decides between them), so the sort sees a superset of its answer and answers exactly
//! as before. Keys compare in the total order Arrow sorts by (`-0.0 < 0.0`, NaN largest), the
//! order of the sort itself. The sort, its dynamic filter and that filter's use by the scan
//! (skipping files and row groups by their statistics) are untouched.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrowPrimitiveType, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer};
use datafusion::arrow::compute::{SortOptions, filter_record_batch};
use datafusion::arrow::datatypes::{
    ArrowNativeTypeOp, DataType, Date32Type, Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
};
use futures::StreamExt;

/// Sorts keeping more rows than this are left alone: the candidates held per partition grow
/// with `k`, and a large `k` leaves little to cut.
pub const MAX_FETCH: usize = 65_536;

/// Puts a [`TopKPrefilterExec`] under every sort with a limit whose leading key it can read.
/// Runs after DataFusion's rules, so the sort's dynamic filter has already reached the scan.
#[derive(Debug, Default)]
pub struct TopKPrefilterRule;

impl PhysicalOptimizerRule for TopKPrefilterRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(sort) = node.downcast_ref::<SortExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(prefilter) = TopKPrefilterExec::under(sort) else {
                return Ok(Transformed::no(node));
            };
            // The prefilter has its input's properties: the sort keeps them, and its dynamic filter.
            let keep = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
            Ok(Transformed::yes(node.clone().replace_children(vec![Arc::new(prefilter)], keep)?))
        })
        .data()
    }

    fn name(&self) -> &str {
        "top_k_prefilter"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Drops the rows of its input that cannot be among the best `fetch` by the leading sort key
/// (see the module's documentation). One threshold per partition, as the sort above keeps one
/// top `k` per partition.
#[derive(Debug)]
pub struct TopKPrefilterExec {
    input: Arc<dyn ExecutionPlan>,
    /// The leading sort key, a column of `input`.
    key: Column,
    options: SortOptions,
    fetch: usize,
}

impl TopKPrefilterExec {
    /// The prefilter for `sort`'s input, if the sort has a limit of at most [`MAX_FETCH`] and
    /// its first key is a column of a type [`is_prefilter_key`] accepts.
    fn under(sort: &SortExec) -> Option<Self> {
        let fetch = sort.fetch().filter(|&fetch| fetch > 0 && fetch <= MAX_FETCH)?;
        let input = sort.input();
        if input.downcast_ref::<TopKPrefilterExec>().is_some() {
            return None;
        }
        let leading = sort.expr().first();
        let key = leading.expr.downcast_ref::<Column>()?.clone();
        let data_type = input.schema().fields().get(key.index())?.data_type().clone();
        if !is_prefilter_key(&data_type) {
            return None;
        }
        Some(TopKPrefilterExec { input: input.clone(), key, options: leading.options, fetch })
    }
}

/// Integers, floats, dates and timestamps: one comparison per row decides.
fn is_prefilter_key(data_type: &DataType) -> bool {
    data_type.is_integer()
        || matches!(
            data_type,
            DataType::Float32 | DataType::Float64 | DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
        )
}

impl DisplayAs for TopKPrefilterExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TopKPrefilterExec: key={} {:?}, fetch={}", self.key, self.options, self.fetch)
    }
}

impl ExecutionPlan for TopKPrefilterExec {
    fn name(&self) -> &'static str {
        "TopKPrefilterExec"
    }

    /// The input's: rows are only dropped, never reordered or moved between partitions.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        f(&(Arc::new(self.key.clone()) as Arc<dyn PhysicalExpr>))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|children| {
            datafusion::error::DataFusionError::Internal(format!(
                "TopKPrefilterExec has one input, given {}",
                children.len()
            ))
        })?;
        Ok(Arc::new(TopKPrefilterExec { input, key: self.key.clone(), options: self.options, fetch: self.fetch }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (column, options, fetch) = (self.key.index(), self.options, self.fetch);
        let data_type = input.schema().field(column).data_type().clone();
        Ok(match data_type {
            DataType::Int8 => prefiltered::<Int8Type>(input, column, options, fetch),
            DataType::Int16 => prefiltered::<Int16Type>(input, column, options, fetch),
            DataType::Int32 => prefiltered::<Int32Type>(input, column, options, fetch),
            DataType::Int64 => prefiltered::<Int64Type>(input, column, options, fetch),
            DataType::UInt8 => prefiltered::<UInt8Type>(input, column, options, fetch),
            DataType::UInt16 => prefiltered::<UInt16Type>(input, column, options, fetch),
            DataType::UInt32 => prefiltered::<UInt32Type>(input, column, options, fetch),
            DataType::UInt64 => prefiltered::<UInt64Type>(input, column, options, fetch),
            DataType::Float32 => prefiltered::<Float32Type>(input, column, options, fetch),
            DataType::Float64 => prefiltered::<Float64Type>(input, column, options, fetch),
            DataType::Date32 => prefiltered::<Date32Type>(input, column, options, fetch),
            DataType::Date64 => prefiltered::<Date64Type>(input, column, options, fetch),
            DataType::Timestamp(TimeUnit::Second, _) => {
                prefiltered::<TimestampSecondType>(input, column, options, fetch)
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                prefiltered::<TimestampMillisecondType>(input, column, options, fetch)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                prefiltered::<TimestampMicrosecondType>(input, column, options, fetch)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                prefiltered::<TimestampNanosecondType>(input, column, options, fetch)
            }
            // The rule places the prefilter over the types above only; anything else passes.
            _ => input,
        })
    }
}

/// `input` without the rows whose key in `column` cannot be among the best `fetch`.
fn prefiltered<T: ArrowPrimitiveType>(
    input: SendableRecordBatchStream,
    column: usize,
    options: SortOptions,
    fetch: usize,
) -> SendableRecordBatchStream {
    let schema = input.schema();
    let mut best = Best::<T> { column, descending: options.descending, fetch, keys: Vec::new() };
    let stream = input.filter_map(move |batch| futures::future::ready(batch.and_then(|b| best.keep(b)).transpose()));
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}

/// The rows of `values` for which `keep` holds, 64 to a word.
fn mask_of<N: Copy>(values: &[N], keep: impl Fn(N) -> bool) -> BooleanBuffer {
    let words: Vec<u64> = values
        .chunks(64)
        .map(|chunk| chunk.iter().enumerate().fold(0u64, |word, (j, &v)| word | (u64::from(keep(v)) << j)))
        .collect();
    BooleanBuffer::new(Buffer::from_vec(words), 0, values.len())
}

/// The best leading keys one partition has seen: the first `fetch` of them, once that many
/// went by, are the best in order up to the `fetch`-th, the threshold; keys added since follow.
struct Best<T: ArrowPrimitiveType> {
    column: usize,
    descending: bool,
    fetch: usize,
    keys: Vec<T::Native>,
}

impl<T: ArrowPrimitiveType> Best<T> {
    /// `batch` without the rows that cannot be among the best; None when none can.
    fn keep(&mut self, batch: RecordBatch) -> DfResult<Option<RecordBatch>> {
        let column = batch.column(self.column);
        let Some(array) = column.as_primitive_opt::<T>() else {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "TopKPrefilterExec expected {} keys, got {}",
                T::DATA_TYPE,
                column.data_type()
            )));
        };
        let values = array.values();
        let threshold = self.keys.get(self.fetch - 1).copied();
        // Kept unless strictly behind the threshold. One loop per direction, each without a
        // branch per row (this loop sees every row of the scan).
        let mut mask = match threshold {
            Some(t) if self.descending => mask_of(values, |v| v.is_ge(t)),
            Some(t) => mask_of(values, |v| v.is_le(t)),
            None => BooleanBuffer::new_set(values.len()),
        };
        if let Some(nulls) = array.nulls() {
            // NULL keys are the sort's to place.
            mask = &mask | &!nulls.inner();
        }
        self.keys.extend(mask.set_indices().filter(|&i| array.is_valid(i)).map(|i| values[i]));
        // Past `2 * fetch` keys (or on reaching `fetch` the first time), only the best `fetch`
        // are kept, the `fetch`-th of them in its place: the new threshold.
        if self.keys.len() >= self.fetch && (threshold.is_none() || self.keys.len() >= 2 * self.fetch) {
            let descending = self.descending;
            self.keys.select_nth_unstable_by(self.fetch - 1, |a, b| {
                let order = a.compare(*b);
                if descending { order.reverse() } else { order }
            });
            self.keys.truncate(self.fetch);
        }
        let kept = mask.count_set_bits();
        Ok(match kept {
            0 => None,
            n if n == batch.num_rows() => Some(batch),
            _ => Some(filter_record_batch(&batch, &BooleanArray::new(mask, None))?),
        })
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float64Array, Int32Array, StringArray, TimestampSecondArray, UInt64Array};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// `rows` rows over two partitions in batches of 500: a float with ties, NULLs, `-0.0`,
    /// `0.0`, NaN and infinities; an integer with many ties; a timestamp; a string.
    fn table(rows: usize) -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Float64, true),
            Field::new("n", DataType::Int32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), false),
            Field::new("id", DataType::UInt64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let special = [Some(-0.0), Some(0.0), Some(f64::NAN), Some(f64::INFINITY), Some(f64::NEG_INFINITY), None];
        let batches: Vec<RecordBatch> = (0..rows)
            .collect::<Vec<_>>()
            .chunks(500)
            .map(|rows| {
                let spread = |i: usize| (i as u64).wrapping_mul(2_654_435_761) % 1_000;
                let v = Float64Array::from_iter(rows.iter().map(|&i| match i % 97 {
                    0..=5 => special[i % 97],
                    _ => Some((spread(i) % 400) as f64 / 4.0 - 50.0),
                }));
                let n = Int32Array::from_iter(rows.iter().map(|&i| (i % 13 != 0).then_some((spread(i) % 50) as i32)));
                let ts = TimestampSecondArray::from_iter_values(rows.iter().map(|&i| 1_704_067_200 + spread(i) as i64));
                let id = UInt64Array::from_iter_values(rows.iter().map(|&i| i as u64));
                let s = StringArray::from_iter_values(rows.iter().map(|&i| format!("s{}", spread(i) % 7)));
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(v), Arc::new(n), Arc::new(ts), Arc::new(id), Arc::new(s)],
                )
                .unwrap()
            })
            .collect();
        let (even, odd): (Vec<_>, Vec<_>) = batches.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let partitions = [even, odd].map(|p| p.into_iter().map(|(_, b)| b).collect::<Vec<_>>()).to_vec();
        MemTable::try_new(schema, partitions).unwrap()
    }

    fn context(rows: usize, with_rule: bool) -> SessionContext {
        let mut builder = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2).with_batch_size(256))
            .with_default_features();
        if with_rule {
            builder = builder.with_physical_optimizer_rule(Arc::new(TopKPrefilterRule));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.register_table("t", Arc::new(table(rows))).unwrap();
        ctx
    }

    async fn prefiltered(ctx: &SessionContext, sql: &str) -> bool {
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        plan.exists(|node| Ok(node.downcast_ref::<TopKPrefilterExec>().is_some())).unwrap()
    }

    async fn answer(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    /// Every query orders by a total order (`id` last breaks all ties), so the answers are
    /// fully determined and must be identical. Later rows have larger ids: with `id DESC` they
    /// win ties on the leading key, which a cut of equal keys would lose.
    #[tokio::test]
    async fn answers_as_datafusion_does() {
        let queries = [
            "SELECT v, id FROM t ORDER BY v DESC, id LIMIT 10",
            "SELECT v, id FROM t ORDER BY v DESC, id DESC LIMIT 10",
            "SELECT v, id FROM t ORDER BY v, id LIMIT 10",
            "SELECT v, id FROM t ORDER BY v DESC NULLS LAST, id LIMIT 7",
            "SELECT v, id FROM t ORDER BY v DESC NULLS LAST, id DESC LIMIT 70",
            "SELECT v, id FROM t ORDER BY v ASC NULLS LAST, id DESC LIMIT 25",
            "SELECT v, id FROM t ORDER BY v DESC NULLS FIRST, id LIMIT 3",
            "SELECT n, s, id FROM t ORDER BY n DESC, s, id LIMIT 40",
            "SELECT n, s, id FROM t ORDER BY n DESC NULLS LAST, s, id DESC LIMIT 40",
            "SELECT n, id FROM t ORDER BY n NULLS FIRST, id LIMIT 20",
            "SELECT ts, id FROM t ORDER BY ts DESC, id DESC LIMIT 15",
            "SELECT id, v FROM t WHERE v > 0 ORDER BY id DESC LIMIT 1",
            "SELECT v, n, id FROM t ORDER BY v DESC, n, id LIMIT 1000",
            "SELECT v, id FROM t ORDER BY v DESC, id LIMIT 10 OFFSET 20",
        ];
        for rows in [50_000, 3, 0] {
            let (plain, cut) = (context(rows, false), context(rows, true));
            for sql in queries {
                assert!(prefiltered(&cut, sql).await, "{sql}");
                let (expected, actual) = (answer(&plain, sql).await, answer(&cut, sql).await);
                assert_eq!(expected, actual, "{rows} rows: {sql}");
            }
        }
    }

    #[tokio::test]
    async fn leaves_other_sorts_alone() {
        let ctx = context(100, true);
        for sql in [
            "SELECT v FROM t ORDER BY v",
            "SELECT s FROM t ORDER BY s LIMIT 10",
            "SELECT v FROM t ORDER BY v * 2 LIMIT 10",
            "SELECT id FROM t ORDER BY id LIMIT 100000",
        ] {
            assert!(!prefiltered(&ctx, sql).await, "{sql}");
        }
    }

    /// The cut itself: past the first batches, only rows that can still make the top pass.
    #[test]
    fn passes_only_rows_that_can_still_make_the_top() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, true)]));
        let mut best = Best::<Float64Type> { column: 0, descending: true, fetch: 10, keys: Vec::new() };
        let mut passed = 0;
        for batch in 0..100 {
            let values = Float64Array::from_iter((0..1_000).map(|i| {
                let x = ((batch * 1_000 + i) as u64).wrapping_mul(2_654_435_761) % 1_000_003;
                (i % 100 != 7).then_some(x as f64)
            }));
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
            let kept = best.keep(batch).unwrap();
            let kept: &Float64Array = match &kept {
                Some(kept) => kept.column(0).as_primitive(),
                None => continue,
            };
            passed += kept.len();
            // Every NULL passes (10 per batch); every value passed is at least the threshold
            // the keys held before this batch set.
            assert_eq!(kept.null_count(), 10);
        }
        // The first batch passes whole; after that, a few values per batch at most.
        assert!(passed < 1_000 + 99 * 10 + 500, "{passed} rows passed");
        assert_eq!(best.keys.len().min(10), 10);
    }
}
