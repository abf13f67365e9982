//! The row groups and pages a filtered scan reads, chosen once per query while it is planned.
//!
//! DataFusion's Parquet scan prunes each file as it opens it: it rewrites and simplifies the
//! predicate for that file, builds its pruning predicates again, and, to learn which row
//! groups match whole, builds and simplifies the predicate's inverse too. On a filter on one
//! host over 10 M rows in four parts that was about 1 ms of the query's 3.7 ms of CPU, paid
//! once per file range opened. A table's parts share one schema, so here the predicates are
//! built once per query and each part's row groups and pages are chosen from its cached footer
//! and page index ([`ScanPruning`]); the plan goes with the part's file, and the scan is
//! wrapped in a [`PrunedScanExec`], which keeps DataFusion from pushing the filters into it a
//! second time. The filter above still applies to every row read.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, ScalarValue, Statistics};
use datafusion::datasource::physical_plan::ParquetFileMetrics;
use datafusion::datasource::physical_plan::parquet::{PagePruningAccessPlanFilter, ParquetAccessPlan};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use datafusion::parquet::arrow::parquet_to_arrow_schema;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, StatisticsArgs,
};

/// A query's filter as the predicates that rule out row groups (by their statistics) and pages
/// (by the page index) of parts of one schema.
pub struct ScanPruning {
    schema: SchemaRef,
    row_groups: PruningPredicate,
    pages: PagePruningAccessPlanFilter,
    /// Where the page pruning counts what it pruned, one set for all parts (nobody reads it:
    /// the scan's own metrics say what it read).
    metrics: ParquetFileMetrics,
}

impl ScanPruning {
    /// The pruning of `predicate` over parts whose columns are `schema`; None when the predicate
    /// cannot rule anything out (DataFusion's own pruning then has nothing to do either).
    pub fn new(predicate: &Arc<dyn PhysicalExpr>, schema: SchemaRef) -> Option<ScanPruning> {
        let row_groups =
            PruningPredicateBuilder::new().with_file_schema(schema.clone()).try_build(predicate.clone()).ok()?;
        if row_groups.always_true() {
            return None;
        }
        let pages = PagePruningAccessPlanFilter::new(predicate, schema.clone());
        let metrics = ParquetFileMetrics::new(0, "pruned at planning", &ExecutionPlanMetricsSet::new());
        Some(ScanPruning { schema, row_groups, pages, metrics })
    }

    /// Whether a part's columns are read as this pruning's schema says: the same names and
    /// types, strings and binaries in any of Arrow's layouts (DataFusion reads them as views).
    /// (Parts store every column as nullable; a column the table declares non-null has no
    /// nulls to count.) A part that is not (a layout this code did not foresee) is left to
    /// DataFusion.
    pub fn fits(&self, metadata: &ParquetMetaData) -> bool {
        let file = metadata.file_metadata();
        let Ok(stored) = parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata()) else {
            return false;
        };
        self.schema.fields().iter().all(|field| {
            stored.field_with_name(field.name()).is_ok_and(|stored| same_values(stored.data_type(), field.data_type()))
        })
    }

    /// The row groups, and the rows within them, that a part (of a schema [`Self::fits`]
    /// accepts) must read; None when it need not be read at all.
    pub fn access_plan(&self, metadata: &ParquetMetaData) -> Option<ParquetAccessPlan> {
        let row_groups = metadata.num_row_groups();
        let statistics = RowGroupStatistics { metadata, schema: &self.schema };
        let mut plan = match self.row_groups.prune(&statistics) {
            Ok(keep) if keep.len() == row_groups => {
                let mut plan = ParquetAccessPlan::new_none(row_groups);
                for (index, _) in keep.iter().enumerate().filter(|(_, keep)| **keep) {
                    plan.scan(index);
                }
                plan
            }
            // Statistics that cannot be read rule nothing out.
            _ => ParquetAccessPlan::new_all(row_groups),
        };
        if !reads_any(&plan) {
            return None;
        }
        plan = self.pages.prune_plan_with_page_index(
            plan,
            &self.schema,
            metadata.file_metadata().schema_descr(),
            metadata,
            &self.metrics,
        );
        reads_any(&plan).then_some(plan)
    }
}

/// Whether `plan` reads any row group.
fn reads_any(plan: &ParquetAccessPlan) -> bool {
    plan.row_group_index_iter().next().is_some()
}

/// Whether values stored as `stored` are read as `read`: the same type, or strings (binaries)
/// in another of Arrow's layouts.
fn same_values(stored: &DataType, read: &DataType) -> bool {
    use DataType::{Binary, BinaryView, LargeBinary, LargeUtf8, Utf8, Utf8View};
    match (stored, read) {
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        _ => stored == read,
    }
}

/// One part's row-group statistics, in the shape DataFusion's pruning reads.
struct RowGroupStatistics<'a> {
    metadata: &'a ParquetMetaData,
    schema: &'a Schema,
}

impl RowGroupStatistics<'_> {
    fn converter(&self, column: &Column) -> Option<StatisticsConverter<'_>> {
        StatisticsConverter::try_new(&column.name, self.schema, self.metadata.file_metadata().schema_descr())
            .ok()
            .map(|converter| converter.with_missing_null_counts_as_zero(true))
    }
}

impl PruningStatistics for RowGroupStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.converter(column)?.row_group_mins(self.metadata.row_groups()).ok()
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.converter(column)?.row_group_maxes(self.metadata.row_groups()).ok()
    }

    fn num_containers(&self) -> usize {
        self.metadata.num_row_groups()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let counts = self.converter(column)?.row_group_null_counts(self.metadata.row_groups()).ok()?;
        Some(Arc::new(counts))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        let counts: UInt64Array =
            self.metadata.row_groups().iter().map(|group| Some(group.num_rows() as u64)).collect();
        Some(Arc::new(counts))
    }

    fn contained(&self, _column: &Column, _values: &std::collections::HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// A scan whose parts' row groups and pages were chosen at planning: it passes its input's
/// batches on unchanged and, unlike the scan itself, takes no filters pushed down to it.
#[derive(Debug)]
pub struct PrunedScanExec {
    input: Arc<dyn ExecutionPlan>,
    /// Row groups the parts hold, and how many of them are read.
    row_groups: (usize, usize),
}

impl PrunedScanExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, row_groups_read: usize, row_groups: usize) -> PrunedScanExec {
        PrunedScanExec { input, row_groups: (row_groups, row_groups_read) }
    }
}

impl DisplayAs for PrunedScanExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PrunedScanExec: row groups read {} of {}", self.row_groups.1, self.row_groups.0)
    }
}

impl ExecutionPlan for PrunedScanExec {
    fn name(&self) -> &'static str {
        "PrunedScanExec"
    }

    /// The input's: batches pass unchanged.
    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    /// The scan's partitions are cut by bytes at planning; repartitioning its batches would
    /// only add a hop.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|children| {
            datafusion::error::DataFusionError::Internal(format!(
                "PrunedScanExec has one input, given {}",
                children.len()
            ))
        })?;
        Ok(Arc::new(PrunedScanExec { input, row_groups: self.row_groups }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    /// The scan's, inexact: they count every row of the parts, and only some are read.
    fn statistics_from_inputs(&self, inputs: &[Arc<Statistics>], _args: &StatisticsArgs) -> DfResult<Arc<Statistics>> {
        let [input] = inputs else {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "PrunedScanExec has one input, given statistics of {}",
                inputs.len()
            )));
        };
        Ok(Arc::new(input.as_ref().clone().to_inexact()))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Field;
    use datafusion::datasource::physical_plan::parquet::RowGroupAccess;
    use datafusion::logical_expr::Operator;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
    use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
    use datafusion::physical_expr::expressions::{BinaryExpr, col, lit};

    use super::*;

    /// Ten hosts of 1,000 rows each, sorted by host, in row groups of 1,000 rows and pages of
    /// 100, with `v` counting up from 0 over the whole file: as parts are written, with page
    /// statistics and a page index.
    fn part() -> ParquetMetaData {
        let hosts: Vec<String> = (0..10_000).map(|i| format!("h{}", i / 1000)).collect();
        let batch = RecordBatch::try_from_iter([
            ("host", Arc::new(StringArray::from(hosts)) as ArrayRef),
            ("v", Arc::new(Float64Array::from_iter_values((0..10_000).map(f64::from))) as ArrayRef),
        ])
        .unwrap();
        let properties = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(1_000))
            .set_data_page_row_count_limit(100)
            .set_write_batch_size(100)
            .build();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Required)
            .parse_and_finish(&bytes::Bytes::from(bytes))
            .unwrap()
    }

    /// The schema a scan reads the part as: strings as views, columns declared non-null.
    fn read_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8View, false),
            Field::new("v", DataType::Float64, false),
        ]))
    }

    fn compare(column: &str, op: Operator, value: ScalarValue) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(col(column, &read_schema()).unwrap(), op, lit(value)))
    }

    fn and(left: Arc<dyn PhysicalExpr>, right: Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(left, Operator::And, right))
    }

    #[test]
    fn a_filter_on_the_sort_key_reads_its_row_group_only() {
        let metadata = part();
        assert_eq!(metadata.num_row_groups(), 10);
        let host = compare("host", Operator::Eq, ScalarValue::Utf8View(Some("h3".into())));
        let pruning = ScanPruning::new(&host, read_schema()).unwrap();
        assert!(pruning.fits(&metadata));
        let plan = pruning.access_plan(&metadata).unwrap();
        assert_eq!(plan.row_group_indexes(), [3]);
    }

    #[test]
    fn a_range_within_a_row_group_reads_its_pages_only() {
        let metadata = part();
        let range = and(
            compare("v", Operator::GtEq, ScalarValue::Float64(Some(3_500.0))),
            compare("v", Operator::Lt, ScalarValue::Float64(Some(3_600.0))),
        );
        let plan = ScanPruning::new(&range, read_schema()).unwrap().access_plan(&metadata).unwrap();
        assert_eq!(plan.row_group_indexes(), [3]);
        let RowGroupAccess::Selection(selection) = &plan.inner()[3] else {
            panic!("the row group is read in part: {plan:?}")
        };
        assert_eq!(selection.row_count(), 100, "one page of 100 rows: {selection:?}");
    }

    #[test]
    fn a_filter_nothing_passes_reads_nothing() {
        let metadata = part();
        let below = compare("v", Operator::Lt, ScalarValue::Float64(Some(-1.0)));
        assert!(ScanPruning::new(&below, read_schema()).unwrap().access_plan(&metadata).is_none());
        let nobody = compare("host", Operator::Eq, ScalarValue::Utf8View(Some("h99".into())));
        assert!(ScanPruning::new(&nobody, read_schema()).unwrap().access_plan(&metadata).is_none());
    }

    #[test]
    fn a_part_of_other_types_is_left_to_the_scan() {
        let metadata = part();
        let numbers = Arc::new(Schema::new(vec![Field::new("host", DataType::Int64, false)]));
        let host =
            Arc::new(BinaryExpr::new(col("host", &numbers).unwrap(), Operator::Eq, lit(ScalarValue::Int64(Some(3)))))
                as Arc<dyn PhysicalExpr>;
        assert!(!ScanPruning::new(&host, numbers).unwrap().fits(&metadata));
        let missing = Arc::new(Schema::new(vec![Field::new("elsewhere", DataType::Float64, false)]));
        let elsewhere = Arc::new(BinaryExpr::new(
            col("elsewhere", &missing).unwrap(),
            Operator::Gt,
            lit(ScalarValue::Float64(Some(1.0))),
        )) as Arc<dyn PhysicalExpr>;
        assert!(!ScanPruning::new(&elsewhere, missing).unwrap().fits(&metadata));
    }
}
