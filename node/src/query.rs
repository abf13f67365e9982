//! SQL over the active parts: a DataFusion table per tandem table, reading the part files of
//! a catalog snapshot taken when the query starts, skipping parts whose manifest statistics
//! rule them out; plus the `system` tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::catalog::{ActivePart, Catalog, TableState};
use crate::error::NodeError;

/// One table's parts as of the query's start. Holding the parts keeps their files alive.
#[derive(Debug)]
pub struct PartsTable {
    schema: SchemaRef,
    parts: Vec<ActivePart>,
}

impl PartsTable {
    pub fn new(state: &TableState) -> Self {
        PartsTable { schema: state.def.arrow_schema(), parts: state.parts.values().cloned().collect() }
    }

    /// Parts that the filters cannot rule out by their manifest's min/max statistics.
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> Vec<&ActivePart> {
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
        match pruning.prune(&ManifestStatistics { schema: &self.schema, parts: &self.parts }) {
            Ok(keep) => self.parts.iter().zip(keep).filter(|(_, keep)| *keep).map(|(p, _)| p).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "part pruning skipped");
                all()
            }
        }
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
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let parts = self.prune(state, filters);
        if parts.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let groups_wanted = state.config().target_partitions().max(1).min(parts.len());
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); groups_wanted];
        for (i, part) in parts.iter().enumerate() {
            let path = part.file.path.to_string_lossy();
            groups[i % groups_wanted].push(PartitionedFile::new(path.trim_start_matches('/'), part.file.size));
        }
        let source = Arc::new(ParquetSource::new(self.schema.clone()));
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        ParquetFormat::default().create_physical_plan(state, config).await
    }
}

/// A part's manifest statistics, in the shape DataFusion's pruning wants.
struct ManifestStatistics<'a> {
    schema: &'a SchemaRef,
    parts: &'a [ActivePart],
}

impl ManifestStatistics<'_> {
    fn values(
        &self,
        column: &Column,
        pick: impl Fn(&tandem_parts::ColumnStats) -> Option<&serde_json::Value>,
    ) -> Option<ArrayRef> {
        let data_type = self.schema.field_with_name(&column.name).ok()?.data_type().clone();
        let scalars = self.parts.iter().map(|part| {
            part.manifest
                .columns
                .get(&column.name)
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
        self.parts.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let counts: Vec<Option<u64>> =
            self.parts.iter().map(|p| p.manifest.columns.get(&column.name).map(|s| s.null_count)).collect();
        Some(Arc::new(UInt64Array::from(counts)))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from(self.parts.iter().map(|p| p.manifest.rows).collect::<Vec<_>>())))
    }

    fn contained(
        &self,
        _column: &Column,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<datafusion::arrow::array::BooleanArray> {
        None
    }
}

/// A DataFusion session over a catalog snapshot, with the `system` tables.
pub fn session(catalog: &Catalog, tables: &BTreeMap<String, Arc<TableState>>) -> Result<SessionContext, NodeError> {
    let mut config = SessionConfig::new().with_information_schema(false);
    // Table and column names are case-sensitive, as in ClickHouse.
    config.options_mut().sql_parser.enable_ident_normalization = false;
    let ctx = SessionContext::new_with_config(config);
    for (name, state) in tables {
        ctx.register_table(name.as_str(), Arc::new(PartsTable::new(state)))?;
    }
    let system = Arc::new(MemorySchemaProvider::new());
    let default_catalog = ctx.catalog("datafusion").ok_or_else(|| NodeError::internal("no default catalog"))?;
    default_catalog.register_schema("system", system)?;
    ctx.register_table("system.parts", Arc::new(system_parts(catalog, tables)?))?;
    ctx.register_table("system.tables", Arc::new(system_tables(tables)?))?;
    Ok(ctx)
}

fn system_parts(catalog: &Catalog, tables: &BTreeMap<String, Arc<TableState>>) -> Result<MemTable, NodeError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("partition", DataType::Utf8, true),
        Field::new("active", DataType::Boolean, false),
        Field::new("rows", DataType::UInt64, true),
        Field::new("bytes", DataType::UInt64, true),
        Field::new("level", DataType::UInt64, true),
        Field::new("revision", DataType::Int64, true),
        Field::new("block_id", DataType::Utf8, true),
        Field::new("problem", DataType::Utf8, true),
    ]));
    let mut table = Vec::new();
    let mut name = Vec::new();
    let mut partition = Vec::new();
    let mut active = Vec::new();
    let mut rows = Vec::new();
    let mut bytes = Vec::new();
    let mut level = Vec::new();
    let mut revision = Vec::new();
    let mut block_id = Vec::new();
    let mut problem: Vec<Option<String>> = Vec::new();
    for (t, state) in tables {
        for part in state.parts.values() {
            table.push(t.clone());
            name.push(part.id.to_string());
            partition.push(Some(part.manifest.partition.clone()));
            active.push(true);
            rows.push(Some(part.manifest.rows));
            bytes.push(Some(part.manifest.bytes));
            level.push(Some(u64::from(part.manifest.level)));
            revision.push(Some(part.revision));
            block_id.push(part.manifest.block_id.clone());
            problem.push(None);
        }
    }
    for part in catalog.unavailable_parts() {
        table.push(part.table);
        name.push(part.id);
        partition.push(None);
        active.push(false);
        rows.push(None);
        bytes.push(None);
        level.push(None);
        revision.push(None);
        block_id.push(None);
        problem.push(Some(part.reason));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(table)),
        Arc::new(StringArray::from(name)),
        Arc::new(StringArray::from(partition)),
        Arc::new(BooleanArray::from(active)),
        Arc::new(UInt64Array::from(rows)),
        Arc::new(UInt64Array::from(bytes)),
        Arc::new(UInt64Array::from(level)),
        Arc::new(Int64Array::from(revision)),
        Arc::new(StringArray::from(block_id)),
        Arc::new(StringArray::from(problem)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(NodeError::internal)?;
    MemTable::try_new(schema, vec![vec![batch]]).map_err(NodeError::from)
}

fn system_tables(tables: &BTreeMap<String, Arc<TableState>>) -> Result<MemTable, NodeError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("sorting_key", DataType::Utf8, false),
        Field::new("partition_key", DataType::Utf8, false),
        Field::new("schema_version", DataType::Int64, false),
        Field::new("active_parts", DataType::UInt64, false),
        Field::new("total_rows", DataType::UInt64, false),
    ]));
    let states: Vec<_> = tables.values().collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(states.iter().map(|s| s.def.name.clone()).collect::<Vec<_>>())),
        Arc::new(StringArray::from(states.iter().map(|s| s.def.order_by.join(", ")).collect::<Vec<_>>())),
        Arc::new(StringArray::from(states.iter().map(|s| s.def.partition_by.expression()).collect::<Vec<_>>())),
        Arc::new(Int64Array::from(states.iter().map(|s| s.version).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(states.iter().map(|s| s.parts.len() as u64).collect::<Vec<_>>())),
        Arc::new(UInt64Array::from(
            states.iter().map(|s| s.parts.values().map(|p| p.manifest.rows).sum()).collect::<Vec<u64>>(),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(NodeError::internal)?;
    MemTable::try_new(schema, vec![vec![batch]]).map_err(NodeError::from)
}

/// Runs a query and collects its result.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), NodeError> {
    // Only queries: DDL and DML have their own paths and must not reach DataFusion's catalog.
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let frame = ctx.sql_with_options(sql, options).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await?;
    Ok((schema, batches))
}
