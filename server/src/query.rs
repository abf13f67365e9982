//! SQL over the active parts: a DataFusion table per tandem table, reading the part files of
//! a catalog snapshot taken when the query starts, skipping parts whose manifest statistics
//! rule them out; plus the `system` tables.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
    SchemaProvider, Session, TableProvider,
};
use datafusion::common::DataFusionError;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::TaskContext;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column as PhysicalColumn, Literal};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::DFParserBuilder;
use datafusion::sql::resolve::resolve_table_references;
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use futures::StreamExt;

use crate::bucket_store::{BUCKET_URL, BucketStore};
use crate::error::NodeError;
use crate::part_reader::{PartReaderFactory, Place};
use crate::scan_pruning::{PrunedScanExec, ScanPruning};
use tandem_replica::schema::{ColumnType, TableDef};
use tandem_replica::{ActivePart, Replica, TableState};

/// Parts whose metadata a query's planning reads at once (from the bucket, when not cached).
const METADATA_READS: usize = 8;

/// Parts a query's planning weighs against its filter on the runtime (more go to a blocking
/// thread).
const INLINE_PRUNING_PARTS: usize = 32;

/// One table's parts as of the query's start. Holding the parts keeps their files alive.
///
/// Parts written under older schemas are read under the current one through the stable
/// column ids their manifests record: a renamed column is read from its old Parquet name, a
/// dropped one is not read, and a column added after the part was written reads as its
/// DEFAULT (or NULL / the type's zero value).
pub struct PartsTable {
    def: Arc<TableDef>,
    schema: SchemaRef,
    parts: Vec<LaidOutPart>,
    /// Told which parts each scan reads (the least recently read are evicted first).
    replica: Arc<Replica>,
}

impl std::fmt::Debug for PartsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartsTable").field("table", &self.def.name).field("parts", &self.parts.len()).finish()
    }
}

/// The Arrow type a column is scanned as: its own, but strings as views. Parquet's dictionary
/// pages then decode to views into one buffer instead of a copy of every string, and grouping
/// or comparing short strings works on their inline bytes. Results leave as plain strings
/// (see [`run`]).
fn scan_type(column_type: ColumnType) -> DataType {
    match column_type.arrow() {
        DataType::Utf8 => DataType::Utf8View,
        other => other,
    }
}

/// A part and, per table column (in table order), the Parquet column that holds it.
#[derive(Debug)]
struct LaidOutPart {
    part: ActivePart,
    layout: Vec<Option<String>>,
}

fn layout_of(def: &TableDef, part: &ActivePart) -> Vec<Option<String>> {
    let ids = &part.manifest.column_ids;
    if ids.is_empty() {
        // Written before column ids existed: columns match by name.
        return def.columns.iter().map(|c| Some(c.name.clone())).collect();
    }
    let by_id: HashMap<u32, &String> = ids.iter().map(|(name, id)| (*id, name)).collect();
    def.columns.iter().map(|c| by_id.get(&c.id).map(|name| (*name).clone())).collect()
}

impl PartsTable {
    pub fn new(state: &TableState, replica: Arc<Replica>) -> Self {
        let parts = state
            .parts
            .values()
            .map(|part| LaidOutPart { layout: layout_of(&state.def, part), part: part.clone() })
            .collect();
        // Columns that are not Nullable are declared so: results say `String`, not
        // `Nullable(String)`, for them.
        let fields: Vec<Field> =
            state.def.columns.iter().map(|c| Field::new(&c.name, scan_type(c.column_type), c.nullable)).collect();
        PartsTable { def: state.def.clone(), schema: Arc::new(Schema::new(fields)), parts, replica }
    }

    /// The filters as one predicate over the table's columns, if they make one.
    fn predicate(&self, state: &dyn Session, filters: &[Expr]) -> Option<Arc<dyn PhysicalExpr>> {
        let predicate = conjunction(filters.iter().cloned())?;
        let df_schema = DFSchema::try_from(self.schema.as_ref().clone()).ok()?;
        state.create_physical_expr(predicate, &df_schema).ok()
    }

    /// Parts that `predicate` cannot rule out by their manifest's min/max statistics.
    fn prune(&self, predicate: Option<&Arc<dyn PhysicalExpr>>) -> Vec<&LaidOutPart> {
        let all = || self.parts.iter().collect();
        let Some(predicate) = predicate else {
            return all();
        };
        let Ok(pruning) =
            PruningPredicateBuilder::new().with_file_schema(self.schema.clone()).try_build(predicate.clone())
        else {
            return all();
        };
        match pruning.prune(&ManifestStatistics { table: self }) {
            Ok(keep) => self.parts.iter().zip(keep).filter(|(_, keep)| *keep).map(|(p, _)| p).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "part pruning skipped");
                all()
            }
        }
    }

    /// Each file with the row groups and pages `pruning` leaves it (files left with none are
    /// dropped), and how many row groups are read of how many; None if a part's metadata
    /// cannot be read or is not of the shape the pruning expects, when the scan is left to
    /// prune each file itself.
    async fn pruned_files(
        pruning: ScanPruning,
        files: &[PartitionedFile],
        reader: &PartReaderFactory,
    ) -> Option<(Vec<PartitionedFile>, usize, usize)> {
        // A part in the bucket whose metadata is not cached yet costs a request: a few at once.
        let metadata: Vec<_> = futures::stream::iter(files.iter().cloned())
            .map(|file| async move { reader.metadata(&file).await })
            .buffered(METADATA_READS)
            .collect()
            .await;
        let inline = files.len() <= INLINE_PRUNING_PARTS;
        let files = files.to_vec();
        let choose = move || {
            let (mut kept, mut read, mut total) = (Vec::with_capacity(files.len()), 0, 0);
            for (file, metadata) in files.into_iter().zip(metadata) {
                let metadata = metadata.ok()?;
                if !pruning.fits(&metadata) {
                    return None;
                }
                total += metadata.num_row_groups();
                if let Some(plan) = pruning.access_plan(&metadata) {
                    read += plan.row_group_index_iter().count();
                    kept.push(file.with_extension(plan));
                }
            }
            Some((kept, read, total))
        };
        // Each part's pages are weighed against the filter: a table of many parts is pruned off
        // the runtime that plans every query, a few parts (tens of µs each) where they are.
        if inline { choose() } else { tokio::task::spawn_blocking(choose).await.ok()? }
    }

    /// One scan of parts that share a layout and a place (this node's disk, or the bucket),
    /// producing the projected table columns. A scan without `predicate` hands large parts
    /// out a row group at a time; a filtered one reads few of their row groups and would pay
    /// for every range opened (a point query over 10 M rows: 2.8 -> 3.5 ms of CPU), and
    /// chooses them here, once for all its parts (see `scan_pruning`).
    async fn scan_group(
        &self,
        state: &dyn Session,
        layout: &[Option<String>],
        parts: &[&LaidOutPart],
        projection: &[usize],
        predicate: Option<&Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let identity = layout.iter().zip(&self.def.columns).all(|(file, column)| file.as_deref() == Some(&column.name));
        // The Parquet columns the parts hold, and which of them this query reads.
        let mut file_fields = Vec::new();
        let mut file_index = vec![None; layout.len()];
        for (i, file) in layout.iter().enumerate() {
            if let Some(name) = file {
                file_index[i] = Some(file_fields.len());
                file_fields.push(Field::new(
                    name,
                    scan_type(self.def.columns[i].column_type),
                    self.def.columns[i].nullable,
                ));
            }
        }
        let file_schema = Arc::new(Schema::new(file_fields));
        let mut read: Vec<usize> = projection.iter().filter_map(|&i| file_index[i]).collect();
        read.dedup();
        let (mut store, mut place) = (ObjectStoreUrl::local_filesystem(), Place::Local);
        let mut files = Vec::with_capacity(parts.len());
        for part in parts {
            let file = match &part.part.file {
                Some(file) => PartitionedFile::new(file.path.to_string_lossy().trim_start_matches('/'), file.size),
                None => {
                    (store, place) = (ObjectStoreUrl::parse(BUCKET_URL)?, Place::Bucket);
                    PartitionedFile::new(BucketStore::path(&self.def.name, &part.part.id), part.part.manifest.bytes)
                }
            };
            if predicate.is_none() {
                files.extend(row_group_ranges(file, part.part.manifest.rows));
            } else {
                files.push(file);
            }
        }
        let runtime = state.runtime_env();
        let reader = PartReaderFactory::new(
            place,
            runtime.object_store(&store)?,
            runtime.cache_manager.get_file_metadata_cache(),
        );
        // Chosen here only where the table's columns are the parts' own: a part read through
        // a layout (renamed or added columns) is pruned by the scan, under its file's names.
        let pruning = predicate.filter(|_| identity).and_then(|p| ScanPruning::new(p, file_schema.clone()));
        let mut pruned = None;
        if let Some(pruning) = pruning
            && let Some((kept, read, total)) = Self::pruned_files(pruning, &files, &reader).await
        {
            if kept.is_empty() {
                return Ok(Arc::new(EmptyExec::new(Arc::new(self.schema.project(projection)?))));
            }
            files = kept;
            pruned = Some((read, total));
        }
        let groups = largest_first_groups(files, state.config().target_partitions());
        // A part's footer is a few KiB: its first read takes the last verification group of a
        // part in the bucket, rather than the default 512 KiB (all of a small part, and bytes
        // no query asked for of a large one).
        let source = ParquetSource::new(file_schema.clone())
            .with_table_parquet_options(state.default_table_options().parquet)
            .with_parquet_file_reader_factory(Arc::new(reader))
            .with_metadata_size_hint(tandem_parts::VERIFIED_BLOCK_BYTES as usize);
        // A part's manifest says exactly how many rows it holds: a `count()` with no filter is
        // then answered from these statistics, without opening a file. (Any filter makes them
        // inexact: DataFusion then counts the rows that pass.)
        let rows = parts.iter().map(|part| part.part.manifest.rows as usize).sum();
        let bytes = parts.iter().map(|part| part.part.manifest.bytes as usize).sum();
        let statistics = Statistics {
            num_rows: Precision::Exact(rows),
            total_byte_size: Precision::Inexact(bytes),
            column_statistics: Statistics::unknown_column(&file_schema),
        };
        let config = FileScanConfigBuilder::new(store, Arc::new(source))
            .with_statistics(statistics)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(Some(if identity { projection.to_vec() } else { read.clone() }))?
            .build();
        let mut scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
        if let Some((read, total)) = pruned {
            scan = Arc::new(PrunedScanExec::new(scan, read, total));
        }
        if identity || projection.is_empty() {
            return Ok(scan);
        }
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(projection.len());
        for &i in projection {
            let column = &self.def.columns[i];
            let expr: Arc<dyn PhysicalExpr> = match (&layout[i], file_index[i]) {
                (Some(file_name), Some(index)) => {
                    let position = read.iter().position(|r| *r == index).expect("every read column is scanned");
                    Arc::new(PhysicalColumn::new(file_name, position))
                }
                _ => {
                    let value =
                        crate::column_default::fill_value(column).map_err(|e| DataFusionError::Plan(e.to_string()))?;
                    Arc::new(Literal::new(value.cast_to(&scan_type(column.column_type))?))
                }
            };
            exprs.push((expr, column.name.clone()));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
    }
}

/// A part of `rows` rows as byte ranges of about one row group each, so the scan can hand it out
/// a row group at a time (a scan reads the row groups whose first page starts in its range).
/// Row groups hold [`tandem_parts::ROW_GROUP_ROWS`] rows but the last, so they start about
/// evenly apart; the cuts are put halfway between where they should start, which leaves each
/// range one row group while their sizes vary by up to half of one. (DataFusion cuts a file
/// into as many ranges as the scan has partitions only: all six row groups of a part of 6.25
/// M rows started in the first of two, and one core scanned the part alone.)
fn row_group_ranges(file: PartitionedFile, rows: u64) -> Vec<PartitionedFile> {
    let size = file.effective_size();
    let groups = rows.div_ceil(tandem_parts::ROW_GROUP_ROWS as u64).min(size);
    if groups < 2 {
        return vec![file];
    }
    let cut = |k: u64| (u128::from(size) * u128::from(2 * k + 1) / u128::from(2 * groups)) as i64;
    let mut start = 0;
    let mut ranges = Vec::with_capacity(groups as usize);
    for k in 0..groups {
        let end = if k + 1 == groups { size as i64 } else { cut(k) };
        if end > start {
            ranges.push(file.clone().with_range(start, end));
            start = end;
        }
    }
    ranges
}

/// The files, largest first, cut into at most `wanted` groups of about equal bytes. The scan's
/// partitions take files from one queue in this order as each becomes idle (DataFusion's work
/// stealing, after it has cut large files into byte ranges), so the largest start first and
/// the small ones even out the end. In catalog order, a part holding 62% of a table's rows
/// came last and one core scanned it alone: minute buckets over 10 M rows took 55 ms on a
/// node where they took 39 ms with another order of the same parts.
fn largest_first_groups(mut files: Vec<PartitionedFile>, wanted: usize) -> Vec<Vec<PartitionedFile>> {
    files.sort_by_key(|file| std::cmp::Reverse(file.effective_size()));
    let wanted = wanted.clamp(1, files.len().max(1));
    let share = files.iter().map(PartitionedFile::effective_size).sum::<u64>().div_ceil(wanted as u64);
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new()];
    let mut filled = 0;
    for file in files {
        if filled >= share && groups.len() < wanted {
            groups.push(Vec::new());
            filled = 0;
        }
        filled += file.effective_size();
        if let Some(group) = groups.last_mut() {
            group.push(file);
        }
    }
    groups
}

#[async_trait]
impl TableProvider for PartsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters prune whole parts and row groups; DataFusion still applies them to rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let predicate = self.predicate(state, filters);
        let parts = self.prune(predicate.as_ref());
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        if parts.is_empty() {
            return Ok(Arc::new(EmptyExec::new(Arc::new(self.schema.project(&projection)?))));
        }
        self.replica.parts_read(parts.iter().map(|p| p.part.id));
        // One scan per layout and place: a scan reads files of one object store.
        let mut by_layout: BTreeMap<(&[Option<String>], bool), Vec<&LaidOutPart>> = BTreeMap::new();
        for part in parts {
            by_layout.entry((part.layout.as_slice(), part.part.file.is_some())).or_default().push(part);
        }
        let mut plans = Vec::with_capacity(by_layout.len());
        for ((layout, _), group) in by_layout {
            plans.push(self.scan_group(state, layout, &group, &projection, predicate.as_ref()).await?);
        }
        UnionExec::try_new(plans)
    }
}

/// The parts' manifest statistics, in the shape DataFusion's pruning wants (looked up through
/// each part's layout, so a renamed column finds its statistics under its old name).
struct ManifestStatistics<'a> {
    table: &'a PartsTable,
}

impl ManifestStatistics<'_> {
    fn stats<'p>(&self, part: &'p LaidOutPart, column: &Column) -> Option<&'p tandem_parts::ColumnStats> {
        let index = self.table.def.columns.iter().position(|c| c.name == column.name)?;
        let file_name = part.layout[index].as_ref()?;
        part.part.manifest.columns.get(file_name)
    }

    fn values(
        &self,
        column: &Column,
        pick: impl Fn(&tandem_parts::ColumnStats) -> Option<&serde_json::Value>,
    ) -> Option<ArrayRef> {
        let data_type = self.table.schema.field_with_name(&column.name).ok()?.data_type().clone();
        let scalars = self.table.parts.iter().map(|part| {
            self.stats(part, column)
                .and_then(&pick)
                .and_then(|v| json_scalar(v, &data_type))
                .unwrap_or_else(|| ScalarValue::try_from(&data_type).unwrap_or(ScalarValue::Null))
        });
        ScalarValue::iter_to_array(scalars).ok()
    }
}

fn json_scalar(value: &serde_json::Value, data_type: &DataType) -> Option<ScalarValue> {
    let scalar = match data_type {
        DataType::Utf8 => ScalarValue::Utf8(Some(value.as_str()?.to_string())),
        DataType::Utf8View => ScalarValue::Utf8View(Some(value.as_str()?.to_string())),
        DataType::Boolean => ScalarValue::Boolean(Some(value.as_bool()?)),
        DataType::UInt64 => ScalarValue::UInt64(Some(value.as_u64()?)),
        DataType::Float32 | DataType::Float64 => ScalarValue::Float64(Some(value.as_f64()?)).cast_to(data_type).ok()?,
        DataType::Date32 => ScalarValue::Date32(Some(i32::try_from(value.as_i64()?).ok()?)),
        _ => ScalarValue::Int64(Some(value.as_i64()?)).cast_to(data_type).ok()?,
    };
    Some(scalar)
}

impl PruningStatistics for ManifestStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.values(column, |s| s.min.as_ref())
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.values(column, |s| s.max.as_ref())
    }

    fn num_containers(&self) -> usize {
        self.table.parts.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let counts: Vec<Option<u64>> =
            self.table.parts.iter().map(|p| self.stats(p, column).map(|s| s.null_count)).collect();
        Some(Arc::new(UInt64Array::from(counts)))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from(self.table.parts.iter().map(|p| p.part.manifest.rows).collect::<Vec<_>>())))
    }

    fn contained(
        &self,
        _column: &Column,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<datafusion::arrow::array::BooleanArray> {
        None
    }
}

/// The table functions every session has (`generate_series`, `range`, ...), named once.
static TABLE_FUNCTIONS: std::sync::LazyLock<std::collections::HashSet<String>> = std::sync::LazyLock::new(|| {
    SessionStateBuilder::new().with_default_features().build().table_functions().keys().cloned().collect()
});

fn session_config() -> SessionConfig {
    // Tables are in ClickHouse's one database, `default` (`default.t` names `t`).
    let mut config =
        SessionConfig::new().with_information_schema(false).with_default_catalog_and_schema("datafusion", "default");
    // Table and column names are case-sensitive, as in ClickHouse.
    config.options_mut().sql_parser.enable_ident_normalization = false;
    // Parts have no bloom filters: looking for them costs a point query a few hundred µs.
    config.options_mut().execution.parquet.bloom_filter_on_read = false;
    // DataFusion's logical rules are ordered so that one pass reaches the plan; its default
    // second pass mostly confirms nothing changes. On the comparison benchmark's queries one
    // pass leaves only a redundant `Limit` over a `Sort` with the same fetch, the physical plans
    // the same, and a filter on one host takes 7% less CPU.
    config.options_mut().optimizer.max_passes = 1;
    config
}

/// A query, parsed, with the tables it names (CTEs and table functions aside): what decides
/// whether the `system` tables are built and which names do not exist, from the syntax tree
/// rather than from the text or an error message.
pub struct ParsedQuery {
    statement: datafusion::sql::parser::Statement,
    tables: Vec<datafusion::common::TableReference>,
}

impl ParsedQuery {
    pub fn parse(sql: &str) -> Result<Self, NodeError> {
        // DataFusion's parser with the sessions' parser options, as `SessionState::sql_to_statement`
        // calls it, without building a session state for it (about 2% of a point query's CPU).
        let config = session_config();
        let options = &config.options().sql_parser;
        let dialect = dialect_from_str(options.dialect).ok_or_else(|| {
            NodeError::internal(format!("the SQL dialect {} is not one DataFusion parses", options.dialect))
        })?;
        let mut statements = DFParserBuilder::new(sql)
            .with_dialect(dialect.as_ref())
            .with_recursion_limit(options.recursion_limit.get())
            .build()?
            .parse_statements()?;
        // The errors DataFusion's own call answers.
        if statements.len() > 1 {
            return Err(datafusion::common::not_impl_datafusion_err!(
                "The context currently only supports a single SQL statement"
            )
            .into());
        }
        let mut statement = statements.pop_front().ok_or_else(|| {
            datafusion::common::plan_datafusion_err!("No SQL statements were provided in the query string")
        })?;
        if let datafusion::sql::parser::Statement::Statement(inner) = &mut statement {
            crate::functions::rewrite_clickhouse_syntax(inner)?;
        }
        let (mut tables, _) = resolve_table_references(&statement, options.enable_ident_normalization)?;
        // `generate_series(...)` and the like are named like tables but are functions.
        tables.retain(|t| t.schema().is_some() || !TABLE_FUNCTIONS.contains(t.table()));
        Ok(ParsedQuery { statement, tables })
    }

    /// The tables the query names (CTEs and table functions aside).
    pub fn tables(&self) -> &[datafusion::common::TableReference] {
        &self.tables
    }

    /// Whether the query reads a table of the `system` schema.
    pub fn reads_system_tables(&self) -> bool {
        self.tables.iter().any(|t| t.schema() == Some("system"))
    }

    /// Whether the query reads `system.<table>` (the costly ones are gathered only then:
    /// `replicas` asks the coordinator about the others, `query_log` and `users` copy their
    /// whole contents).
    pub fn reads_system_table(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t.schema() == Some("system") && t.table() == table)
    }

    /// Refuses (404) a table that does not exist in the snapshot or the `system` schema.
    pub fn check_tables(&self, tables: &BTreeMap<String, Arc<TableState>>) -> Result<(), NodeError> {
        for reference in &self.tables {
            let known = match reference.schema() {
                None => tables.contains_key(reference.table()),
                Some("default") => tables.contains_key(reference.table()),
                Some("system") => crate::system_tables::SYSTEM_TABLES.contains(&reference.table()),
                // Other schemas are DataFusion's to resolve (and to refuse).
                Some(_) => true,
            };
            if !known {
                return Err(NodeError::unknown_table(&reference.to_string()));
            }
        }
        Ok(())
    }
}

/// The session every query starts from: DataFusion's functions and tandem's, the optimizer
/// rules, the configuration, and the node's shared runtime (object stores, metadata cache),
/// built once. Building them for every query, registering some 400 functions, and dropping
/// them again was a fifth of the CPU of `SELECT 1` and 4% of a filter on one host; with a clone
/// of the built state (its maps of functions copied) `SELECT 1` took 0.41 ms of CPU, not 0.58.
pub struct Sessions {
    template: SessionState,
}

impl Sessions {
    /// `runtime` serves planning (where the parts are, their cached metadata); each query
    /// executes in its own (see [`run`]).
    pub fn new(runtime: Arc<RuntimeEnv>) -> Self {
        let state = SessionStateBuilder::new()
            .with_config(session_config())
            .with_runtime_env(runtime)
            .with_default_features()
            .with_optimizer_rules(crate::optimizer::logical_rules())
            .with_physical_optimizer_rule(Arc::new(crate::run_aggregate::RunAggregateRule))
            .with_physical_optimizer_rule(Arc::new(crate::top_k::TopKPrefilterRule))
            .build();
        let ctx = SessionContext::new_with_state(state);
        crate::functions::register(&ctx);
        Sessions { template: ctx.state() }
    }

    /// A session over a catalog snapshot, with the `system` tables when `system` is given.
    pub fn session(
        &self,
        node: &Arc<Replica>,
        tables: &BTreeMap<String, Arc<TableState>>,
        system: Option<&crate::system_tables::SystemView>,
    ) -> Result<SessionState, NodeError> {
        let mut state = self.template.clone();
        // A catalog of its own: the template's is shared by every clone of it.
        let schema = Arc::new(MemorySchemaProvider::new());
        for (name, table) in tables {
            schema.register_table(name.clone(), Arc::new(PartsTable::new(table, node.clone())))?;
        }
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema("default", schema)?;
        // The system tables copy the whole catalog: built only for queries that name them.
        if let Some(system) = system {
            catalog.register_schema("system", crate::system_tables::schema(&state, node, tables, system)?)?;
        }
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog("datafusion".to_string(), catalog);
        state.register_catalog_list(catalogs);
        Ok(state)
    }
}

/// Plans a query over `state` and starts it in `runtime` (its memory pool and spill files): its
/// schema and the stream of its result batches, produced as the stream is read.
pub async fn run(
    state: &SessionState,
    query: ParsedQuery,
    runtime: Arc<RuntimeEnv>,
) -> Result<(SchemaRef, SendableRecordBatchStream), DataFusionError> {
    // Only queries: DDL and DML have their own paths and must not reach DataFusion's catalog.
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let plan = state.statement_to_plan(query.statement).await?;
    options.verify_plan(&plan)?;
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let physical = state.create_physical_plan(&plan).await?;
    let task = Arc::new(TaskContext::from(state).with_runtime(runtime));
    let stream = execute_stream(physical, task)?;
    Ok(without_views(schema, stream))
}

/// The result with string and binary views as plain strings and binaries: what the output
/// formats write (the views are how tables are scanned, see [`scan_type`]).
fn without_views(schema: SchemaRef, stream: SendableRecordBatchStream) -> (SchemaRef, SendableRecordBatchStream) {
    let plain = |data_type: &DataType| match data_type {
        DataType::Utf8View => Some(DataType::Utf8),
        DataType::BinaryView => Some(DataType::Binary),
        _ => None,
    };
    if !schema.fields().iter().any(|f| plain(f.data_type()).is_some()) {
        return (schema, stream);
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match plain(f.data_type()) {
            Some(data_type) => f.as_ref().clone().with_data_type(data_type),
            None => f.as_ref().clone(),
        })
        .collect();
    let converted = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let target = converted.clone();
    let batches = stream.map(move |batch| {
        let batch = batch?;
        let columns = batch
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(column, field)| match column.data_type() == field.data_type() {
                true => Ok(column.clone()),
                false => datafusion::arrow::compute::cast(column, field.data_type()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(target.clone(), columns)?)
    });
    (converted.clone(), Box::pin(RecordBatchStreamAdapter::new(converted, batches)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(groups: &[Vec<PartitionedFile>]) -> Vec<Vec<u64>> {
        groups.iter().map(|group| group.iter().map(PartitionedFile::effective_size).collect()).collect()
    }

    #[test]
    fn files_are_queued_largest_first_in_groups_of_about_equal_bytes() {
        let files = |sizes: &[u64]| -> Vec<PartitionedFile> {
            sizes.iter().enumerate().map(|(i, &size)| PartitionedFile::new(format!("p{i}"), size)).collect()
        };
        assert_eq!(sizes(&largest_first_groups(files(&[1, 30, 8, 8, 2]), 2)), [vec![30], vec![8, 8, 2, 1]]);
        assert_eq!(sizes(&largest_first_groups(files(&[5, 5, 5, 5]), 3)), [vec![5, 5], vec![5, 5]]);
        assert_eq!(sizes(&largest_first_groups(files(&[4, 9]), 8)), [vec![9], vec![4]]);
        assert_eq!(sizes(&largest_first_groups(files(&[7]), 0)), [vec![7]]);
    }

    #[test]
    fn a_part_of_several_row_groups_is_cut_between_where_they_start() {
        let rows = tandem_parts::ROW_GROUP_ROWS as u64;
        let ranges = |size: u64, rows: u64| -> Vec<(i64, i64)> {
            row_group_ranges(PartitionedFile::new("p", size), rows)
                .iter()
                .map(|file| file.range.as_ref().map_or((0, size as i64), |r| (r.start, r.end)))
                .collect()
        };
        assert_eq!(ranges(4_000, rows), [(0, 4_000)]);
        assert_eq!(ranges(4_000, 4 * rows), [(0, 500), (500, 1_500), (1_500, 2_500), (2_500, 4_000)]);
        assert_eq!(ranges(3_000, 2 * rows + 1), [(0, 500), (500, 1_500), (1_500, 3_000)]);
        assert_eq!(ranges(2, 9 * rows), [(0, 2)]);
    }
}
