//! The `system` schema: what tandem knows about its tables, parts, replicas, users, queries,
//! settings and functions, as tables a query can read (with the columns ClickHouse's clients
//! and Grafana's data source ask for). Built only for a query that names one of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::MemTable;
use datafusion::execution::session_state::SessionState;

use crate::error::NodeError;
use crate::query_log::QueryLogEntry;
use tandem_access::UserView;
use tandem_replica::{NodeInfo, Replica, TableState};

/// What the `system.replicas` table shows about the other nodes (read from the coordinator
/// only when a query asks for it).
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub nodes: Vec<NodeInfo>,
    pub cluster_revision: Option<i64>,
}

/// The tables of the `system` schema.
pub const SYSTEM_TABLES: [&str; 12] = [
    "parts",
    "asynchronous_inserts",
    "tables",
    "columns",
    "databases",
    "replicas",
    "replication_queue",
    "users",
    "grants",
    "query_log",
    "settings",
    "functions",
];

/// The settings a request may send as URL parameters: name, default, ClickHouse type, what
/// it does. `system.settings` lists them (clients read it to learn what they may send).
pub const REQUEST_SETTINGS: [(&str, &str, &str, &str); 24] = [
    (
        "insert_quorum",
        "1",
        "UInt64Auto",
        "Nodes that must hold an insert's parts before it is acknowledged (a number or auto)",
    ),
    ("insert_quorum_timeout", "30000", "Milliseconds", "How long an insert waits for its quorum"),
    ("insert_deduplicate", "1", "Bool", "Whether a repeated insert block is stored once"),
    ("insert_deduplication_token", "", "String", "Names an insert for deduplication instead of its contents"),
    ("async_insert", "0", "Bool", "Buffer the insert: log it here, register it with others in one flush"),
    (
        "wait_for_async_insert",
        "1",
        "Bool",
        "An async insert answers once its flush is registered (1) or once it is in the fsynced log (0)",
    ),
    (
        "wait_for_async_insert_timeout",
        "120",
        "Seconds",
        "How long an async insert with wait_for_async_insert=1 waits for its flush",
    ),
    ("async_insert_busy_timeout_ms", "200", "Milliseconds", "How long an async insert waits for others to flush with"),
    ("async_insert_max_data_size", "10485760", "UInt64", "A table's buffer is flushed once it holds this many bytes"),
    ("insert_durability", "local", "String", "Where an insert's parts are before the ack: local or object_store"),
    ("input_format_skip_unknown_fields", "0", "Bool", "Ignore fields the table does not have"),
    ("select_sequential_consistency", "0", "UInt64", "Read every part an insert_quorum insert acknowledged"),
    ("after_revision", "0", "Int64", "Wait until this node holds every part up to this revision"),
    ("after_revision_timeout_ms", "10000", "Milliseconds", "How long after_revision waits"),
    ("alter_sync", "1", "UInt64", "2: an ALTER waits for every live node"),
    ("max_execution_time", "300", "Seconds", "Seconds a query may run"),
    ("max_memory_usage", "0", "UInt64", "Bytes one query may hold (0: the server's default)"),
    ("max_result_rows", "0", "UInt64", "Rows a query may return (0: no limit)"),
    ("max_result_bytes", "0", "UInt64", "Bytes a query's result may take (0: no limit)"),
    ("default_format", "TabSeparated", "String", "The output format of queries without FORMAT"),
    ("enable_http_compression", "0", "Bool", "Compress responses as the Accept-Encoding header asks"),
    ("output_format_json_quote_64bit_integers", "1", "Bool", "Write (U)Int64 as JSON strings"),
    ("query_id", "", "String", "The id the query is logged and answered under"),
    ("session_id", "", "String", "Accepted; tandem keeps no state between requests"),
];

/// The `system` tables that show users, grants and everyone's statements: readable only with
/// ACCESS MANAGEMENT.
pub const ACCESS_TABLES: [&str; 3] = ["users", "grants", "query_log"];

/// What the `system` tables show besides the catalog snapshot, gathered only for queries that
/// read them.
pub struct SystemView {
    /// What `system.replicas` shows of the other nodes.
    pub cluster: ClusterView,
    pub users: Vec<UserView>,
    pub queries: Vec<QueryLogEntry>,
}

/// The `system` schema's tables, as of now; `functions` lists the session's functions.
pub fn schema(
    functions: &SessionState,
    node: &Replica,
    tables: &BTreeMap<String, Arc<TableState>>,
    system: &SystemView,
) -> Result<Arc<MemorySchemaProvider>, NodeError> {
    let schema = Arc::new(MemorySchemaProvider::new());
    let register = |name: &str, table: MemTable| -> Result<(), NodeError> {
        schema.register_table(name.to_string(), Arc::new(table))?;
        Ok(())
    };
    register("parts", system_parts(node, tables)?)?;
    register("tables", system_tables(tables)?)?;
    register("replicas", system_replicas(node, tables, &system.cluster)?)?;
    register("replication_queue", system_replication_queue(node, tables)?)?;
    register("asynchronous_inserts", system_asynchronous_inserts(node)?)?;
    register("users", system_users(&system.users)?)?;
    register("grants", system_grants(&system.users)?)?;
    register("query_log", system_query_log(&system.queries)?)?;
    register("databases", system_databases()?)?;
    register("columns", system_columns(tables)?)?;
    register("settings", system_settings()?)?;
    register("functions", system_functions(functions)?)?;
    Ok(schema)
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
    let mut codec = Vec::new();
    let mut revision = Vec::new();
    let mut block_id = Vec::new();
    let mut written_by = Vec::new();
    let mut in_object_store = Vec::new();
    let mut location: Vec<Option<&str>> = Vec::new();
    let mut min_revision = Vec::new();
    let mut max_revision = Vec::new();
    let mut replaced_by: Vec<Option<String>> = Vec::new();
    let mut problem: Vec<Option<String>> = Vec::new();
    for (t, state) in tables {
        // Where a query on this node reads the part: its disk, or the bucket.
        let active_parts = state.parts.values().map(|p| {
            let place = if p.file.is_some() { "local" } else { "bucket" };
            (p.id, &p.manifest, p.revision, true, None, p.replaced_by, Some(place))
        });
        let pending_parts = state.pending.values().map(|p| {
            let reason = p.last_error.clone().unwrap_or_else(|| "not on this node yet; fetching".to_string());
            (p.id, &p.manifest, p.revision, false, Some(reason), None, None)
        });
        for (id, manifest, rev, is_active, reason, replacement, place) in active_parts.chain(pending_parts) {
            location.push(place);
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
            codec.push(Some(manifest.codec.to_string()));
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
        codec.push(None);
        revision.push(None);
        block_id.push(None);
        written_by.push(None);
        in_object_store.push(None);
        location.push(None);
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
        // ClickHouse's name for the codec a part's columns are compressed with.
        ("default_compression_codec", Arc::new(StringArray::from(codec))),
        ("revision", Arc::new(Int64Array::from(revision))),
        ("block_id", Arc::new(StringArray::from(block_id))),
        ("written_by", Arc::new(StringArray::from(written_by))),
        ("in_object_store", Arc::new(BooleanArray::from(in_object_store))),
        ("location", Arc::new(StringArray::from(location))),
        ("min_revision", Arc::new(Int64Array::from(min_revision))),
        ("max_revision", Arc::new(Int64Array::from(max_revision))),
        ("replaced_by", Arc::new(StringArray::from(replaced_by))),
        ("problem", Arc::new(StringArray::from(problem))),
    ])
}

fn system_tables(tables: &BTreeMap<String, Arc<TableState>>) -> Result<MemTable, NodeError> {
    let states: Vec<_> = tables.values().collect();
    let each = |value: &str| Arc::new(StringArray::from(vec![value; states.len()])) as ArrayRef;
    mem_table(vec![
        ("database", each("default")),
        ("name", Arc::new(StringArray::from(states.iter().map(|s| s.def.name.clone()).collect::<Vec<_>>()))),
        ("engine", each("ReplicatedMergeTree")),
        ("is_temporary", Arc::new(BooleanArray::from(vec![false; states.len()]))),
        (
            "primary_key",
            Arc::new(StringArray::from(states.iter().map(|s| s.def.order_by.join(", ")).collect::<Vec<_>>())),
        ),
        (
            "sorting_key",
            Arc::new(StringArray::from(states.iter().map(|s| s.def.order_by.join(", ")).collect::<Vec<_>>())),
        ),
        (
            "partition_key",
            Arc::new(StringArray::from(states.iter().map(|s| s.def.partition_by.expression()).collect::<Vec<_>>())),
        ),
        ("ttl", Arc::new(StringArray::from(states.iter().map(|s| s.def.ttl_expression()).collect::<Vec<_>>()))),
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
            "total_bytes",
            Arc::new(UInt64Array::from(
                states.iter().map(|s| s.parts.values().map(|p| p.manifest.bytes).sum()).collect::<Vec<u64>>(),
            )),
        ),
        ("comment", each("")),
        (
            "settings",
            Arc::new(StringArray::from(
                states.iter().map(|s| serde_json::to_string(&s.def.settings).unwrap_or_default()).collect::<Vec<_>>(),
            )),
        ),
    ])
}

/// The one database, `default`, and `system`.
fn system_databases() -> Result<MemTable, NodeError> {
    let names = ["default", "system"];
    mem_table(vec![
        ("name", Arc::new(StringArray::from(names.to_vec()))),
        ("engine", Arc::new(StringArray::from(vec!["Replicated", "System"]))),
        ("data_path", Arc::new(StringArray::from(vec![""; 2]))),
        ("metadata_path", Arc::new(StringArray::from(vec![""; 2]))),
        ("comment", Arc::new(StringArray::from(vec![""; 2]))),
    ])
}

/// Every column of every table, with its ClickHouse type.
fn system_columns(tables: &BTreeMap<String, Arc<TableState>>) -> Result<MemTable, NodeError> {
    let columns: Vec<_> =
        tables.values().flat_map(|s| s.def.columns.iter().enumerate().map(move |(i, c)| (s, i, c))).collect();
    let strings = |values: Vec<String>| Arc::new(StringArray::from(values)) as ArrayRef;
    mem_table(vec![
        ("database", strings(vec!["default".to_string(); columns.len()])),
        ("table", strings(columns.iter().map(|(s, _, _)| s.def.name.clone()).collect())),
        ("name", strings(columns.iter().map(|(_, _, c)| c.name.clone()).collect())),
        ("type", strings(columns.iter().map(|(_, _, c)| c.type_name()).collect())),
        ("position", Arc::new(UInt64Array::from(columns.iter().map(|(_, i, _)| *i as u64 + 1).collect::<Vec<_>>()))),
        (
            "default_kind",
            strings(
                columns
                    .iter()
                    .map(|(_, _, c)| if c.default.is_some() { "DEFAULT".into() } else { String::new() })
                    .collect(),
            ),
        ),
        (
            "default_expression",
            strings(
                columns.iter().map(|(_, _, c)| c.default.as_ref().map(|d| d.to_string()).unwrap_or_default()).collect(),
            ),
        ),
        ("comment", strings(columns.iter().map(|(_, _, c)| c.comment.clone().unwrap_or_default()).collect())),
        (
            "is_in_sorting_key",
            Arc::new(BooleanArray::from(
                columns.iter().map(|(s, _, c)| s.def.order_by.contains(&c.name)).collect::<Vec<_>>(),
            )),
        ),
        (
            "is_in_primary_key",
            Arc::new(BooleanArray::from(
                columns.iter().map(|(s, _, c)| s.def.order_by.contains(&c.name)).collect::<Vec<_>>(),
            )),
        ),
    ])
}

/// The settings a request may send, with their defaults.
fn system_settings() -> Result<MemTable, NodeError> {
    let column = |pick: fn(&(&'static str, &'static str, &'static str, &'static str)) -> &'static str| {
        Arc::new(StringArray::from(REQUEST_SETTINGS.iter().map(pick).collect::<Vec<_>>())) as ArrayRef
    };
    let n = REQUEST_SETTINGS.len();
    mem_table(vec![
        ("name", column(|s| s.0)),
        ("value", column(|s| s.1)),
        ("changed", Arc::new(BooleanArray::from(vec![false; n]))),
        ("description", column(|s| s.3)),
        ("readonly", Arc::new(UInt64Array::from(vec![0u64; n]))),
        ("type", column(|s| s.2)),
        ("default", column(|s| s.1)),
    ])
}

/// The functions a query may call.
fn system_functions(state: &SessionState) -> Result<MemTable, NodeError> {
    // By name, not by every alias a function is registered under.
    let mut functions: Vec<(String, bool)> =
        state.scalar_functions().values().map(|f| (f.name().to_string(), false)).collect();
    functions.extend(state.aggregate_functions().values().map(|f| (f.name().to_string(), true)));
    functions.sort();
    functions.dedup();
    mem_table(vec![
        ("name", Arc::new(StringArray::from(functions.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()))),
        ("is_aggregate", Arc::new(BooleanArray::from(functions.iter().map(|(_, a)| *a).collect::<Vec<_>>()))),
        ("case_insensitive", Arc::new(BooleanArray::from(vec![false; functions.len()]))),
        ("alias_to", Arc::new(StringArray::from(vec![""; functions.len()]))),
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
    let mut role = vec![Some(node.role().to_string())];
    let mut grpc_addr = vec![Some(node.grpc_addr())];
    let mut applied = vec![Some(node.applied_revision())];
    let mut complete_revision = vec![Some(complete)];
    let mut pending_parts = vec![Some(pending)];
    let mut lag_revisions = vec![cluster.cluster_revision.map(|r| (r - complete).max(0))];
    let mut lag_secs = vec![Some(lag_seconds)];
    // Storage, measured on this node only.
    let local: u64 =
        tables.values().flat_map(|t| t.parts.values()).filter_map(|p| p.file.as_ref()).map(|f| f.size).sum();
    let (cached, hit_rate) = node.bucket_cache();
    let local_bytes = vec![Some(local)];
    let budget = vec![node.local_storage_budget()];
    let cache_bytes = vec![Some(cached)];
    let cache_hit_rate = vec![hit_rate];
    let others = cluster.nodes.iter().filter(|n| n.node_id != me).count();
    let unknown = |v: Vec<Option<u64>>| v.into_iter().chain(std::iter::repeat_n(None, others)).collect::<Vec<_>>();
    for other in cluster.nodes.iter().filter(|n| n.node_id != me) {
        node_id.push(Some(other.node_id.clone()));
        is_local.push(Some(false));
        role.push(Some(other.role.to_string()));
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
        ("role", Arc::new(StringArray::from(role))),
        ("grpc_addr", Arc::new(StringArray::from(grpc_addr))),
        ("applied_revision", Arc::new(Int64Array::from(applied))),
        ("complete_revision", Arc::new(Int64Array::from(complete_revision))),
        ("pending_parts", Arc::new(UInt64Array::from(pending_parts))),
        ("lag_revisions", Arc::new(Int64Array::from(lag_revisions))),
        ("lag_seconds", Arc::new(Float64Array::from(lag_secs))),
        ("local_part_bytes", Arc::new(UInt64Array::from(unknown(local_bytes)))),
        ("local_storage_budget", Arc::new(UInt64Array::from(unknown(budget)))),
        ("bucket_cache_bytes", Arc::new(UInt64Array::from(unknown(cache_bytes)))),
        (
            "bucket_cache_hit_rate",
            Arc::new(Float64Array::from(
                cache_hit_rate.into_iter().chain(std::iter::repeat_n(None, others)).collect::<Vec<_>>(),
            )),
        ),
    ])
}

/// The asynchronous inserts logged on this node and not yet registered, per table, with the
/// last flush error while flushes fail (the metadata store is away).
fn system_asynchronous_inserts(node: &Replica) -> Result<MemTable, NodeError> {
    let backlog = node.async_backlog();
    mem_table(vec![
        ("table", Arc::new(StringArray::from_iter_values(backlog.iter().map(|b| b.table.clone())))),
        ("inserts", Arc::new(UInt64Array::from_iter_values(backlog.iter().map(|b| b.inserts)))),
        ("rows", Arc::new(UInt64Array::from_iter_values(backlog.iter().map(|b| b.rows)))),
        ("total_bytes", Arc::new(UInt64Array::from_iter_values(backlog.iter().map(|b| b.bytes)))),
        ("oldest_ms", Arc::new(UInt64Array::from_iter_values(backlog.iter().map(|b| b.oldest_ms)))),
        ("last_error", Arc::new(StringArray::from(backlog.iter().map(|b| b.last_error.clone()).collect::<Vec<_>>()))),
        ("log_bytes", Arc::new(UInt64Array::from_iter_values(backlog.iter().map(|_| node.async_log_bytes())))),
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
