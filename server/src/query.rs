//! SQL over the active parts: a DataFusion table per tandem table, reading the part files of
//! a catalog snapshot taken when the query starts, skipping parts whose manifest statistics
//! rule them out; plus the `system` tables.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, Session, TableProvider};
use datafusion::common::DataFusionError;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column as PhysicalColumn, Literal};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::NodeError;
use crate::query_log::QueryLogEntry;
use tandem_access::UserView;
use tandem_replica::schema::TableDef;
use tandem_replica::{ActivePart, NodeInfo, Replica, TableState};

/// One table's parts as of the query's start. Holding the parts keeps their files alive.
///
/// Parts written under older schemas are read under the current one through the stable
/// column ids their manifests record: a renamed column is read from its old Parquet name, a
/// dropped one is not read, and a column added after the part was written reads as its
/// DEFAULT (or NULL / the type's zero value).
#[derive(Debug)]
pub struct PartsTable {
    def: Arc<TableDef>,
    schema: SchemaRef,
    parts: Vec<LaidOutPart>,
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
    pub fn new(state: &TableState) -> Self {
        let parts = state
            .parts
            .values()
            .map(|part| LaidOutPart { layout: layout_of(&state.def, part), part: part.clone() })
            .collect();
        PartsTable { def: state.def.clone(), schema: state.def.arrow_schema(), parts }
    }

    /// Parts that the filters cannot rule out by their manifest's min/max statistics.
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> Vec<&LaidOutPart> {
        let all = || self.parts.iter().collect();
        let Some(predicate) = conjunction(filters.iter().cloned()) else {
            return all();
        };
        let Ok(df_schema) = DFSchema::try_from(self.schema.as_ref().clone()) else {
            return all();
        };
        let Ok(physical) = state.create_physical_expr(predicate, &df_schema) else {
            return all();
        };
        let Ok(pruning) = PruningPredicateBuilder::new().with_file_schema(self.schema.clone()).try_build(physical)
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

    /// One scan of parts that share a layout, producing the projected table columns.
    async fn scan_group(
        &self,
        state: &dyn Session,
        layout: &[Option<String>],
        parts: &[&LaidOutPart],
        projection: &[usize],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let identity = layout.iter().zip(&self.def.columns).all(|(file, column)| file.as_deref() == Some(&column.name));
        // The Parquet columns the parts hold, and which of them this query reads.
        let mut file_fields = Vec::new();
        let mut file_index = vec![None; layout.len()];
        for (i, file) in layout.iter().enumerate() {
            if let Some(name) = file {
                file_index[i] = Some(file_fields.len());
                file_fields.push(Field::new(name, self.def.columns[i].column_type.arrow(), true));
            }
        }
        let file_schema = Arc::new(Schema::new(file_fields));
        let mut read: Vec<usize> = projection.iter().filter_map(|&i| file_index[i]).collect();
        read.dedup();
        let groups_wanted = state.config().target_partitions().max(1).min(parts.len());
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); groups_wanted];
        for (i, part) in parts.iter().enumerate() {
            let path = part.part.file.path.to_string_lossy();
            groups[i % groups_wanted].push(PartitionedFile::new(path.trim_start_matches('/'), part.part.file.size));
        }
        let source = Arc::new(ParquetSource::new(file_schema.clone()));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(Some(if identity { projection.to_vec() } else { read.clone() }))?
            .build();
        let scan = ParquetFormat::default().create_physical_plan(state, config).await?;
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
                    Arc::new(Literal::new(value))
                }
            };
            exprs.push((expr, column.name.clone()));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
    }
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
        let parts = self.prune(state, filters);
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        if parts.is_empty() {
            return Ok(Arc::new(EmptyExec::new(Arc::new(self.schema.project(&projection)?))));
        }
        let mut by_layout: BTreeMap<&[Option<String>], Vec<&LaidOutPart>> = BTreeMap::new();
        for part in parts {
            by_layout.entry(part.layout.as_slice()).or_default().push(part);
        }
        let mut plans = Vec::with_capacity(by_layout.len());
        for (layout, group) in by_layout {
            plans.push(self.scan_group(state, layout, &group, &projection).await?);
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

/// What the `system.replicas` table shows about the other nodes (read from the coordinator
/// only when a query asks for it).
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub nodes: Vec<NodeInfo>,
    pub cluster_revision: Option<i64>,
}

/// The table functions every session has (`generate_series`, `range`, ...), named once.
static TABLE_FUNCTIONS: std::sync::LazyLock<std::collections::HashSet<String>> = std::sync::LazyLock::new(|| {
    SessionStateBuilder::new().with_default_features().build().table_functions().keys().cloned().collect()
});

/// The tables of the `system` schema.
const SYSTEM_TABLES: [&str; 7] = ["parts", "tables", "replicas", "replication_queue", "users", "grants", "query_log"];

/// The `system` tables that show users, grants and everyone's statements: readable only with
/// ACCESS MANAGEMENT.
pub const ACCESS_TABLES: [&str; 3] = ["users", "grants", "query_log"];

fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(false);
    // Table and column names are case-sensitive, as in ClickHouse.
    config.options_mut().sql_parser.enable_ident_normalization = false;
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
        let state = SessionStateBuilder::new().with_config(session_config()).build();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        let mut tables = state.resolve_table_references(&statement)?;
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
                Some("system") => SYSTEM_TABLES.contains(&reference.table()),
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

/// What the `system` tables show besides the catalog snapshot, gathered only for queries that
/// read them.
pub struct SystemView {
    /// What `system.replicas` shows of the other nodes.
    pub cluster: ClusterView,
    pub users: Vec<UserView>,
    pub queries: Vec<QueryLogEntry>,
}

/// A DataFusion session over a catalog snapshot, with the `system` tables when `system` is
/// given.
pub fn session(
    node: &Replica,
    tables: &BTreeMap<String, Arc<TableState>>,
    system: Option<&SystemView>,
    runtime: Arc<RuntimeEnv>,
) -> Result<SessionContext, NodeError> {
    let ctx = SessionContext::new_with_config_rt(session_config(), runtime);
    crate::functions::register_bounded(&ctx);
    for (name, state) in tables {
        ctx.register_table(name.as_str(), Arc::new(PartsTable::new(state)))?;
    }
    // The system tables copy the whole catalog: built only for queries that name them.
    if let Some(system) = system {
        let schema = Arc::new(MemorySchemaProvider::new());
        let default_catalog = ctx.catalog("datafusion").ok_or_else(|| NodeError::internal("no default catalog"))?;
        default_catalog.register_schema("system", schema)?;
        ctx.register_table("system.parts", Arc::new(system_parts(node, tables)?))?;
        ctx.register_table("system.tables", Arc::new(system_tables(tables)?))?;
        ctx.register_table("system.replicas", Arc::new(system_replicas(node, tables, &system.cluster)?))?;
        ctx.register_table("system.replication_queue", Arc::new(system_replication_queue(node, tables)?))?;
        ctx.register_table("system.users", Arc::new(system_users(&system.users)?))?;
        ctx.register_table("system.grants", Arc::new(system_grants(&system.users)?))?;
        ctx.register_table("system.query_log", Arc::new(system_query_log(&system.queries)?))?;
    }
    Ok(ctx)
}

fn mem_table(columns: Vec<(&str, ArrayRef)>) -> Result<MemTable, NodeError> {
    let schema = Arc::new(Schema::new(
        columns.iter().map(|(name, array)| Field::new(*name, array.data_type().clone(), true)).collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect())
        .map_err(NodeError::internal)?;
    MemTable::try_new(schema, vec![vec![batch]]).map_err(NodeError::from)
}

/// Every user (the password hash is never shown, only its scheme).
fn system_users(users: &[UserView]) -> Result<MemTable, NodeError> {
    let strings = |values: Vec<String>| Arc::new(StringArray::from(values)) as ArrayRef;
    mem_table(vec![
        ("name", strings(users.iter().map(|u| u.name.clone()).collect())),
        ("storage", strings(vec!["coordinator".to_string(); users.len()])),
        ("auth_type", strings(users.iter().map(|u| u.auth_type.clone()).collect())),
    ])
}

/// Every grant, one row per user, privilege and scope, with ClickHouse's columns (`NULL`
/// database or table: every one).
fn system_grants(users: &[UserView]) -> Result<MemTable, NodeError> {
    let grants: Vec<(&str, &tandem_access::Grant)> =
        users.iter().flat_map(|u| u.grants.iter().map(move |g| (u.name.as_str(), g))).collect();
    let scopes: Vec<_> = grants.iter().map(|(_, g)| g.scope.database_and_table()).collect();
    mem_table(vec![
        ("user_name", Arc::new(StringArray::from(grants.iter().map(|(u, _)| *u).collect::<Vec<_>>()))),
        (
            "access_type",
            Arc::new(StringArray::from(grants.iter().map(|(_, g)| g.privilege.name()).collect::<Vec<_>>())),
        ),
        ("database", Arc::new(StringArray::from(scopes.iter().map(|(d, _)| *d).collect::<Vec<_>>()))),
        ("table", Arc::new(StringArray::from(scopes.iter().map(|(_, t)| *t).collect::<Vec<_>>()))),
        ("grant_option", Arc::new(BooleanArray::from(vec![false; grants.len()]))),
    ])
}

/// The statements this node answered, oldest first.
fn system_query_log(queries: &[QueryLogEntry]) -> Result<MemTable, NodeError> {
    let errors: Vec<Option<&(&str, String)>> = queries.iter().map(|q| q.error.as_ref()).collect();
    mem_table(vec![
        (
            "event_time",
            Arc::new(TimestampMillisecondArray::from(queries.iter().map(|q| q.event_time_ms).collect::<Vec<_>>())),
        ),
        ("user", Arc::new(StringArray::from(queries.iter().map(|q| q.user.as_str()).collect::<Vec<_>>()))),
        ("query_kind", Arc::new(StringArray::from(queries.iter().map(|q| q.kind).collect::<Vec<_>>()))),
        ("query", Arc::new(StringArray::from(queries.iter().map(|q| q.query.as_str()).collect::<Vec<_>>()))),
        ("status", Arc::new(UInt64Array::from(queries.iter().map(|q| u64::from(q.status)).collect::<Vec<_>>()))),
        ("exception_code", Arc::new(StringArray::from(errors.iter().map(|e| e.map(|e| e.0)).collect::<Vec<_>>()))),
        ("exception", Arc::new(StringArray::from(errors.iter().map(|e| e.map(|e| e.1.as_str())).collect::<Vec<_>>()))),
        ("rows", Arc::new(UInt64Array::from(queries.iter().map(|q| q.rows).collect::<Vec<_>>()))),
        ("bytes", Arc::new(UInt64Array::from(queries.iter().map(|q| q.bytes).collect::<Vec<_>>()))),
        (
            "query_duration_ms",
            Arc::new(Float64Array::from(queries.iter().map(|q| q.duration.as_secs_f64() * 1000.0).collect::<Vec<_>>())),
        ),
    ])
}

fn system_parts(node: &Replica, tables: &BTreeMap<String, Arc<TableState>>) -> Result<MemTable, NodeError> {
    let mut table = Vec::new();
    let mut name = Vec::new();
    let mut partition = Vec::new();
    let mut active = Vec::new();
    let mut rows = Vec::new();
    let mut bytes = Vec::new();
    let mut level = Vec::new();
    let mut revision = Vec::new();
    let mut block_id = Vec::new();
    let mut written_by = Vec::new();
    let mut in_object_store = Vec::new();
    let mut min_revision = Vec::new();
    let mut max_revision = Vec::new();
    let mut replaced_by: Vec<Option<String>> = Vec::new();
    let mut problem: Vec<Option<String>> = Vec::new();
    for (t, state) in tables {
        let active_parts = state.parts.values().map(|p| (p.id, &p.manifest, p.revision, true, None, p.replaced_by));
        let pending_parts = state.pending.values().map(|p| {
            let reason = p.last_error.clone().unwrap_or_else(|| "not on this node yet; fetching".to_string());
            (p.id, &p.manifest, p.revision, false, Some(reason), None)
        });
        for (id, manifest, rev, is_active, reason, replacement) in active_parts.chain(pending_parts) {
            let (low, high) = manifest.revision_range.unwrap_or((rev, rev));
            min_revision.push(Some(low));
            max_revision.push(Some(high));
            replaced_by.push(replacement.map(|m| m.to_string()));
            table.push(Some(t.clone()));
            name.push(Some(id.to_string()));
            partition.push(Some(manifest.partition.clone()));
            active.push(Some(is_active));
            rows.push(Some(manifest.rows));
            bytes.push(Some(manifest.bytes));
            level.push(Some(u64::from(manifest.level)));
            revision.push(Some(rev));
            block_id.push(manifest.block_id.clone());
            written_by.push(manifest.node.clone());
            in_object_store.push(Some(node.in_object_store(&id)));
            problem.push(reason);
        }
    }
    for part in node.broken_parts() {
        table.push(Some(part.table));
        name.push(Some(part.id.to_string()));
        partition.push(None);
        active.push(Some(false));
        rows.push(None);
        bytes.push(None);
        level.push(None);
        revision.push(None);
        block_id.push(None);
        written_by.push(None);
        in_object_store.push(None);
        min_revision.push(None);
        max_revision.push(None);
        replaced_by.push(None);
        problem.push(Some(part.reason));
    }
    mem_table(vec![
        ("table", Arc::new(StringArray::from(table))),
        ("name", Arc::new(StringArray::from(name))),
        ("partition", Arc::new(StringArray::from(partition))),
        ("active", Arc::new(BooleanArray::from(active))),
        ("rows", Arc::new(UInt64Array::from(rows))),
        ("bytes", Arc::new(UInt64Array::from(bytes))),
        ("level", Arc::new(UInt64Array::from(level))),
        ("revision", Arc::new(Int64Array::from(revision))),
        ("block_id", Arc::new(StringArray::from(block_id))),
        ("written_by", Arc::new(StringArray::from(written_by))),
        ("in_object_store", Arc::new(BooleanArray::from(in_object_store))),
        ("min_revision", Arc::new(Int64Array::from(min_revision))),
        ("max_revision", Arc::new(Int64Array::from(max_revision))),
        ("replaced_by", Arc::new(StringArray::from(replaced_by))),
        ("problem", Arc::new(StringArray::from(problem))),
    ])
}

fn system_tables(tables: &BTreeMap<String, Arc<TableState>>) -> Result<MemTable, NodeError> {
    let states: Vec<_> = tables.values().collect();
    mem_table(vec![
        ("name", Arc::new(StringArray::from(states.iter().map(|s| s.def.name.clone()).collect::<Vec<_>>()))),
        (
            "sorting_key",
            Arc::new(StringArray::from(states.iter().map(|s| s.def.order_by.join(", ")).collect::<Vec<_>>())),
        ),
        (
            "partition_key",
            Arc::new(StringArray::from(states.iter().map(|s| s.def.partition_by.expression()).collect::<Vec<_>>())),
        ),
        ("schema_version", Arc::new(Int64Array::from(states.iter().map(|s| s.version).collect::<Vec<_>>()))),
        ("active_parts", Arc::new(UInt64Array::from(states.iter().map(|s| s.parts.len() as u64).collect::<Vec<_>>()))),
        (
            "pending_parts",
            Arc::new(UInt64Array::from(states.iter().map(|s| s.pending.len() as u64).collect::<Vec<_>>())),
        ),
        (
            "total_rows",
            Arc::new(UInt64Array::from(
                states.iter().map(|s| s.parts.values().map(|p| p.manifest.rows).sum()).collect::<Vec<u64>>(),
            )),
        ),
        (
            "settings",
            Arc::new(StringArray::from(
                states.iter().map(|s| serde_json::to_string(&s.def.settings).unwrap_or_default()).collect::<Vec<_>>(),
            )),
        ),
    ])
}

/// Replication state of the local node, measured, and of the other live nodes, as they last
/// reported it.
fn system_replicas(
    node: &Replica,
    tables: &BTreeMap<String, Arc<TableState>>,
    cluster: &ClusterView,
) -> Result<MemTable, NodeError> {
    let me = node.node_id();
    let (pending, lag_seconds) = tandem_replica::replication_lag(tables);
    let complete = node.complete_revision();
    let mut node_id = vec![Some(me.to_string())];
    let mut is_local = vec![Some(true)];
    let mut grpc_addr = vec![Some(node.grpc_addr())];
    let mut applied = vec![Some(node.applied_revision())];
    let mut complete_revision = vec![Some(complete)];
    let mut pending_parts = vec![Some(pending)];
    let mut lag_revisions = vec![cluster.cluster_revision.map(|r| (r - complete).max(0))];
    let mut lag_secs = vec![Some(lag_seconds)];
    for other in cluster.nodes.iter().filter(|n| n.node_id != me) {
        node_id.push(Some(other.node_id.clone()));
        is_local.push(Some(false));
        grpc_addr.push(Some(other.grpc_addr.clone()));
        applied.push(Some(other.data_revision));
        complete_revision.push(Some(other.complete_revision));
        pending_parts.push(None);
        lag_revisions.push(cluster.cluster_revision.map(|r| (r - other.complete_revision).max(0)));
        lag_secs.push(None);
    }
    mem_table(vec![
        ("node_id", Arc::new(StringArray::from(node_id))),
        ("is_local", Arc::new(BooleanArray::from(is_local))),
        ("grpc_addr", Arc::new(StringArray::from(grpc_addr))),
        ("applied_revision", Arc::new(Int64Array::from(applied))),
        ("complete_revision", Arc::new(Int64Array::from(complete_revision))),
        ("pending_parts", Arc::new(UInt64Array::from(pending_parts))),
        ("lag_revisions", Arc::new(Int64Array::from(lag_revisions))),
        ("lag_seconds", Arc::new(Float64Array::from(lag_secs))),
    ])
}

/// Parts being fetched (`kind = 'fetch'`) and merges running on this node (`kind` starts with
/// `merge`; `part` is the merged part when known).
fn system_replication_queue(node: &Replica, tables: &BTreeMap<String, Arc<TableState>>) -> Result<MemTable, NodeError> {
    let mut kind = Vec::new();
    let mut table = Vec::new();
    let mut partition = Vec::new();
    let mut part: Vec<Option<String>> = Vec::new();
    let mut revision: Vec<Option<i64>> = Vec::new();
    let mut bytes = Vec::new();
    let mut attempts = Vec::new();
    let mut waiting = Vec::new();
    let mut last_error: Vec<Option<String>> = Vec::new();
    let mut lost = Vec::new();
    for (name, state) in tables {
        for pending in state.pending.values() {
            lost.push(pending.lost);
            kind.push("fetch".to_string());
            table.push(name.clone());
            partition.push(pending.manifest.partition.clone());
            part.push(Some(pending.id.to_string()));
            revision.push(Some(pending.revision));
            bytes.push(pending.manifest.bytes);
            attempts.push(u64::from(pending.attempts));
            waiting.push(pending.since.elapsed().as_secs_f64());
            last_error.push(pending.last_error.clone());
        }
    }
    for merge in node.running_merges() {
        kind.push(format!("merge ({}, {} parts)", merge.role, merge.sources));
        table.push(merge.table);
        partition.push(merge.partition);
        part.push(merge.merged.map(|m| m.to_string()));
        revision.push(None);
        bytes.push(merge.bytes);
        attempts.push(0);
        waiting.push(merge.started.elapsed().as_secs_f64());
        lost.push(false);
        last_error.push(None);
    }
    mem_table(vec![
        ("kind", Arc::new(StringArray::from(kind))),
        ("table", Arc::new(StringArray::from(table))),
        ("partition", Arc::new(StringArray::from(partition))),
        ("part", Arc::new(StringArray::from(part))),
        ("revision", Arc::new(Int64Array::from(revision))),
        ("bytes", Arc::new(UInt64Array::from(bytes))),
        ("attempts", Arc::new(UInt64Array::from(attempts))),
        ("waiting_seconds", Arc::new(Float64Array::from(waiting))),
        ("lost", Arc::new(BooleanArray::from(lost))),
        ("last_error", Arc::new(StringArray::from(last_error))),
    ])
}

/// Plans a query and starts it: its schema and the stream of its result batches, produced as
/// the stream is read.
pub async fn run(
    ctx: &SessionContext,
    query: ParsedQuery,
) -> Result<(SchemaRef, SendableRecordBatchStream), DataFusionError> {
    // Only queries: DDL and DML have their own paths and must not reach DataFusion's catalog.
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let plan = ctx.state().statement_to_plan(query.statement).await?;
    options.verify_plan(&plan)?;
    let frame = ctx.execute_logical_plan(plan).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let stream = frame.execute_stream().await?;
    Ok((schema, stream))
}
