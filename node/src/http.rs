//! The HTTP API in ClickHouse's conventions: `/?query=...` with the statement in the URL or
//! the body, settings as URL parameters, results in the requested format; plus `/health`,
//! `/ready` and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use futures::{FutureExt, StreamExt};
use tandem_coordinator::CoordError;

use crate::error::NodeError;
use crate::execution::Admitted;
use crate::formats::{Budget, Encoder, Format, InputOptions, encode, text_batch};
use crate::insert::{InsertSettings, Quorum, insert};
use crate::limits::{MAX_DEDUP_TOKEN_BYTES, MAX_WAIT, RESULT_HEAD_BYTES};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::query;
use crate::schema::Durability;
use crate::statement::{self, InsertSource, ParseOptions, Statement};

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(handle).post(handle))
        .route("/health", get(health))
        .route("/ping", get(health))
        .route("/ready", get(ready))
        // POST only: draining changes state, and a GET must be safe to follow from any page.
        .route("/drain", post(drain))
        .route("/metrics", get(metrics))
        // The body limit is enforced (with a clear 413) while reading, in `body::read`.
        .layer(DefaultBodyLimit::disable())
        .with_state(node)
}

async fn health() -> &'static str {
    "Ok.\n"
}

/// Ready to serve inserts and queries. With `?durability=object_store`, also requires the
/// object store to be reachable (what inserts with `insert_durability=object_store` need).
async fn ready(State(node): State<Arc<Node>>, Query(params): Query<HashMap<String, String>>) -> Response {
    if node.draining.load(std::sync::atomic::Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: this node is shutting down\n").into_response();
    }
    if !node.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "catching up with the cluster's metadata, or not yet announced to the cluster\n",
        )
            .into_response();
    }
    let wants_object_store = params.get("durability").map(String::as_str) == Some("object_store");
    match (node.bucket.as_ref().map(|b| b.status()), wants_object_store) {
        (None, true) => {
            (StatusCode::SERVICE_UNAVAILABLE, "no object store is configured on this node\n").into_response()
        }
        (Some((false, error)), true) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready for object-store durability: {}\n", error.unwrap_or_default()),
        )
            .into_response(),
        (Some((false, error)), false) => (
            StatusCode::OK,
            format!(
                "Ok. (the object store is unreachable: {}; uploads are queued, inserts with \
                 insert_durability=object_store fail)\n",
                error.unwrap_or_default()
            ),
        )
            .into_response(),
        _ => (StatusCode::OK, "Ok.\n").into_response(),
    }
}

/// A drain never waits longer than a day, whatever it is asked.
const MAX_DRAIN_SECONDS: i64 = 24 * 3600;

/// `POST /drain?timeout_seconds=N` (default 60): stop being ready, then wait until no part is
/// only on this node. 200 when drained, 503 with the reason otherwise. `POST /drain?cancel=1`
/// undoes it: the node is ready again and merges resume (a restart does the same).
async fn drain(State(node): State<Arc<Node>>, Query(params): Query<HashMap<String, String>>) -> Response {
    match flag(&params, "cancel", false) {
        Ok(true) => {
            crate::drain::cancel(&node);
            return (StatusCode::OK, "drain cancelled: this node is ready again\n").into_response();
        }
        Ok(false) => {}
        Err(e) => return e.into_response(),
    }
    let timeout = match number(&params, "timeout_seconds") {
        Ok(seconds) => Duration::from_secs(seconds.unwrap_or(60).clamp(0, MAX_DRAIN_SECONDS) as u64),
        Err(e) => return e.into_response(),
    };
    let report = crate::drain::drain(&node, timeout).await;
    let status = if report.drained { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(report)).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let tables = node.catalog.snapshot();
    let (pending, lag_seconds) = query::replication_lag(&tables);
    let complete = node.catalog.complete_revision();
    node.metrics.active_parts.set(tables.values().map(|t| t.parts.len() as i64).sum());
    node.metrics.pending_parts.set(pending as i64);
    node.metrics.lost_parts.set(tables.values().flat_map(|t| t.pending.values()).filter(|p| p.lost).count() as i64);
    node.metrics.lag_seconds.set(lag_seconds);
    node.metrics.applied_revision.set(node.catalog.applied_revision());
    node.metrics.complete_revision.set(complete);
    if let Ok(Ok(latest)) = tokio::time::timeout(Duration::from_secs(1), node.coordinator.current_revision()).await {
        node.metrics.lag_revisions.set((latest - complete).max(0));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.metrics.render()).into_response()
}

async fn handle(
    State(node): State<Arc<Node>>,
    method: Method,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A panic is a bug, never the client's doing: it answers 500 and the node keeps serving.
    let answer = std::panic::AssertUnwindSafe(execute(&node, &method, params, headers, body)).catch_unwind().await;
    match answer {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => e.into_response(),
        Err(panic) => {
            let what = crate::error::panic_message(panic.as_ref());
            tracing::error!(panic = %what, "a request handler panicked");
            NodeError::internal(format!("the request hit a bug in tandem ({what}); please report it")).into_response()
        }
    }
}

fn flag(params: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, NodeError> {
    match params.get(name).map(String::as_str) {
        None => Ok(default),
        Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        Some(other) => Err(NodeError::bad_request(format!("setting `{name}` takes 0 or 1, got `{other}`"))),
    }
}

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, NodeError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| NodeError::bad_request(format!("setting `{name}` takes an integer, got `{v}`")))
        })
        .transpose()
}

fn parse_options(node: &Node) -> ParseOptions {
    ParseOptions { table_defaults: node.config.table_defaults.clone(), max_columns: node.config.limits.max_columns }
}

async fn execute(
    node: &Node,
    method: &Method,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, NodeError> {
    if !node.catalog.is_ready() {
        return Err(NodeError::Unavailable(
            "this node is still catching up with the cluster's metadata; retry shortly or use another node".into(),
        ));
    }
    let body = crate::body::read(body, &headers, node.config.max_body_bytes).await?;
    // As in ClickHouse: the statement is `?query=`, followed by the body for statements other
    // than INSERT; without `?query=`, the body starts with the statement.
    let (text, body_is_statement) = match params.get("query") {
        Some(q) => (std::borrow::Cow::Borrowed(q.as_str()), false),
        None => match std::str::from_utf8(&body) {
            Ok(text) => (std::borrow::Cow::Borrowed(text), true),
            // Binary rows (Parquet, Arrow) after the statement: the statement is in the head.
            Err(e) => (String::from_utf8_lossy(&body[..e.valid_up_to().min(64 * 1024)]), true),
        },
    };
    let options = parse_options(node);
    let statement = statement::parse_with(&text, &options)?;
    let started = Instant::now();
    let statement = match statement {
        Statement::Insert(_) => statement,
        // ClickHouse appends the body to the query for statements other than INSERT.
        _ if !body_is_statement && !body.is_empty() => {
            statement::parse_with(&format!("{text}\n{}", String::from_utf8_lossy(&body)), &options)?
        }
        other => other,
    };
    if method == Method::GET && statement.changes_state() {
        return Err(NodeError::MethodNotAllowed(format!(
            "{} changes state and was sent in a GET request, which is read-only (as in ClickHouse): send it in a POST",
            statement.kind()
        )));
    }
    let Statement::Insert(insert_statement) = statement else {
        return execute_statement(node, &params, statement, started).await;
    };
    let InsertSource::Format { format, data_offset } = &insert_statement.source else {
        let InsertSource::Values(rows) = insert_statement.source else {
            return Err(NodeError::internal("an INSERT with neither FORMAT nor VALUES"));
        };
        let data = values_as_json(node, &insert_statement.table, insert_statement.columns.as_deref(), rows)?;
        return run_insert(node, &params, &insert_statement.table, None, Format::JsonEachRow, data, started).await;
    };
    let format = Format::parse(format)?;
    let data = if body_is_statement {
        body.slice((*data_offset).min(body.len())..)
    } else if body.is_empty() {
        Bytes::copy_from_slice(text.get(*data_offset..).unwrap_or_default().as_bytes())
    } else {
        body
    };
    run_insert(node, &params, &insert_statement.table, insert_statement.columns.as_deref(), format, data, started).await
}

fn output_format(params: &HashMap<String, String>, clause: Option<&str>) -> Result<Format, NodeError> {
    match clause.or(params.get("default_format").map(String::as_str)) {
        Some(name) => Format::parse(name),
        None => Ok(Format::TabSeparated),
    }
}

async fn execute_statement(
    node: &Node,
    params: &HashMap<String, String>,
    statement: Statement,
    started: Instant,
) -> Result<Response, NodeError> {
    match statement {
        Statement::CreateTable { def, if_not_exists } => {
            let revision = match node.coordinator.create_table(&def.name, def.to_json()).await {
                Ok(record) => record.version,
                Err(CoordError::TableExists(_)) if if_not_exists => node.catalog.applied_revision(),
                Err(e) => return Err(e.into()),
            };
            ddl_done(node, revision).await
        }
        Statement::Alter { table, actions } => {
            let sync_all = match number(params, "alter_sync")? {
                None | Some(0 | 1) => false,
                Some(2) => true,
                Some(other) => return Err(NodeError::bad_request(format!("alter_sync takes 0, 1 or 2, got {other}"))),
            };
            let revision = crate::alter::alter(node, &table, &actions, sync_all).await?;
            ddl_done(node, revision).await
        }
        Statement::DropTable { name, if_exists } => {
            let revision = match node.coordinator.drop_table(&name).await {
                Ok(revision) => revision,
                Err(CoordError::NoSuchTable(_)) if if_exists => node.catalog.applied_revision(),
                Err(e) => return Err(e.into()),
            };
            ddl_done(node, revision).await
        }
        Statement::ShowTables { format } => {
            let names: Vec<String> = node.catalog.snapshot().keys().cloned().collect();
            let batch = text_batch(&[("name", names)])?;
            respond_rows(output_format(params, format.as_deref())?, &batch.schema(), &[batch], started, node)
        }
        Statement::Describe { name, format } => {
            let table = node.catalog.table(&name).ok_or_else(|| NodeError::unknown_table(&name))?;
            let columns = &table.def.columns;
            let names = columns.iter().map(|c| c.name.clone()).collect();
            let types = columns.iter().map(|c| c.type_name()).collect();
            let default_types =
                columns.iter().map(|c| if c.default.is_some() { "DEFAULT".into() } else { String::new() }).collect();
            let defaults =
                columns.iter().map(|c| c.default.as_ref().map(|d| d.to_string()).unwrap_or_default()).collect();
            let comments = columns.iter().map(|c| c.comment.clone().unwrap_or_default()).collect();
            let empty = vec![String::new(); columns.len()];
            let batch = text_batch(&[
                ("name", names),
                ("type", types),
                ("default_type", default_types),
                ("default_expression", defaults),
                ("comment", comments),
                ("codec_expression", empty.clone()),
                ("ttl_expression", empty),
            ])?;
            respond_rows(output_format(params, format.as_deref())?, &batch.schema(), &[batch], started, node)
        }
        Statement::Select { sql, format } => {
            let format = output_format(params, format.as_deref())?;
            let parsed = query::ParsedQuery::parse(&sql)?;
            wait_for_revision(node, params).await?;
            let admitted = node.queries.admit(params)?;
            let tables = node.catalog.snapshot();
            parsed.check_tables(&tables)?;
            let cluster = if parsed.reads_replicas() {
                Some(cluster_view(node).await)
            } else {
                parsed.reads_system_tables().then(query::ClusterView::default)
            };
            let ctx = query::session(node, &tables, cluster.as_ref(), admitted.runtime.clone())?;
            let planned =
                admitted.within_deadline(async { query::run(&ctx, parsed).await.map_err(|e| admitted.error(e)) }).await;
            let (schema, stream) = planned.inspect_err(|_| {
                node.metrics.query_errors.inc();
            })?;
            respond_stream(node, format, schema, stream, admitted, started).await
        }
        Statement::Insert(_) => Err(NodeError::internal("an INSERT reached the statement executor")),
    }
}

/// `after_revision` and `select_sequential_consistency`: waits (at most
/// `after_revision_timeout_ms`, capped) until this node holds every part up to the revision.
async fn wait_for_revision(node: &Node, params: &HashMap<String, String>) -> Result<(), NodeError> {
    let mut after = number(params, "after_revision")?;
    if flag(params, "select_sequential_consistency", false)? {
        let quorum_revision = node.coordinator.quorum_revision().await?;
        after = Some(after.unwrap_or(0).max(quorum_revision));
    }
    let Some(revision) = after else { return Ok(()) };
    if node.catalog.complete_revision() < revision {
        let current = node.coordinator.current_revision().await?;
        if revision > current {
            return Err(NodeError::bad_request(format!(
                "after_revision {revision} does not exist yet: the cluster is at revision {current}; pass the \
                 revision an insert answered (X-Tandem-Revision)"
            )));
        }
    }
    let timeout = capped_millis(number(params, "after_revision_timeout_ms")?.unwrap_or(10_000));
    if !node.catalog.wait_complete(revision, timeout).await {
        return Err(NodeError::Timeout(format!(
            "this node holds every part up to revision {} but the query asked for {revision}; not answering with stale data (waited {} ms)",
            node.catalog.complete_revision(),
            timeout.as_millis()
        )));
    }
    Ok(())
}

/// A wait a request asks for, in milliseconds, within `0..=MAX_WAIT`.
fn capped_millis(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64).min(MAX_WAIT)
}

/// The other nodes and the cluster's latest revision, best effort: a query of
/// `system.replicas` still answers (with what this node knows) when etcd does not.
async fn cluster_view(node: &Node) -> query::ClusterView {
    let nodes = if node.config.is_cluster() {
        crate::membership::live_nodes(node).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    query::ClusterView { nodes, cluster_revision: node.coordinator.current_revision().await.ok() }
}

/// A query's result, encoded as it is produced. The first [`RESULT_HEAD_BYTES`] are held back,
/// so a query that fails or crosses a limit early still answers with its own status and
/// message; past them the status is sent, and a later error ends the body with its message
/// and an aborted transfer (so no client takes a cut result for a whole one).
async fn respond_stream(
    node: &Node,
    format: Format,
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    admitted: Admitted,
    started: Instant,
) -> Result<Response, NodeError> {
    let mut encoder = Encoder::new(format, &schema)?;
    let mut head = encoder.head()?;
    let mut result = ResultStream {
        encoder,
        stream,
        admitted,
        rows: 0,
        bytes: head.len() as u64,
        started,
        done: false,
        metrics: node.metrics.clone(),
    };
    while head.len() < RESULT_HEAD_BYTES && !result.done {
        head.extend_from_slice(&result.next_chunk().await?);
    }
    let body = if result.done {
        Body::from(head)
    } else {
        let tail = futures::stream::unfold(Tail::Running(Box::new(result)), |tail| async move {
            match tail {
                Tail::Done => None,
                Tail::Failed(message) => Some((Err(std::io::Error::other(message)), Tail::Done)),
                Tail::Running(mut result) => match result.next_chunk().await {
                    Ok(chunk) => {
                        let next = if result.done { Tail::Done } else { Tail::Running(result) };
                        Some((Ok(Bytes::from(chunk)), next))
                    }
                    Err(e) => {
                        let text = format!("\n{}: {e}\n", e.code());
                        Some((Ok(Bytes::from(text)), Tail::Failed(e.to_string())))
                    }
                },
            }
        });
        Body::from_stream(futures::stream::once(async move { Ok(Bytes::from(head)) }).chain(tail))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    headers.insert("x-tandem-revision", HeaderValue::from(node.catalog.applied_revision()));
    Ok(response)
}

/// The rest of a streamed result.
enum Tail {
    Running(Box<ResultStream>),
    /// The error message has been sent; the transfer is aborted next.
    Failed(String),
    Done,
}

/// A running query's batches, encoded and counted against its limits.
struct ResultStream {
    encoder: Encoder,
    stream: SendableRecordBatchStream,
    admitted: Admitted,
    rows: u64,
    bytes: u64,
    started: Instant,
    done: bool,
    metrics: Arc<Metrics>,
}

impl ResultStream {
    /// The next encoded bytes: a batch, or (once the query ends, setting `done`) the tail.
    async fn next_chunk(&mut self) -> Result<Vec<u8>, NodeError> {
        let next = self.admitted.within_deadline(async { Ok(self.stream.next().await) }).await;
        let chunk = match next {
            Ok(None) => {
                self.done = true;
                self.metrics.query_seconds.observe(self.started.elapsed().as_secs_f64());
                self.encoder.finish(self.started.elapsed().as_secs_f64())
            }
            Ok(Some(Ok(batch))) => {
                self.rows += batch.num_rows() as u64;
                self.encoder.batch(&batch).and_then(|bytes| {
                    self.bytes += bytes.len() as u64;
                    self.admitted.check_result(self.rows, self.bytes).map(|()| bytes)
                })
            }
            Ok(Some(Err(e))) => Err(self.admitted.error(e)),
            Err(e) => Err(e),
        };
        chunk.inspect_err(|_| {
            self.done = true;
            self.metrics.query_errors.inc();
        })
    }
}

async fn ddl_done(node: &Node, revision: i64) -> Result<Response, NodeError> {
    if !node.catalog.wait_applied(revision, Duration::from_secs(30)).await {
        return Err(NodeError::Timeout(format!(
            "the change is committed at revision {revision} but not yet applied on this node"
        )));
    }
    let mut response = Response::new(Body::empty());
    response.headers_mut().insert("x-tandem-revision", HeaderValue::from(revision));
    Ok(response)
}

fn respond_rows(
    format: Format,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batches: &[datafusion::arrow::array::RecordBatch],
    started: Instant,
    node: &Node,
) -> Result<Response, NodeError> {
    let bytes = encode(format, schema, batches, started.elapsed().as_secs_f64())?;
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    headers.insert("x-tandem-revision", HeaderValue::from(node.catalog.applied_revision()));
    Ok(response)
}

/// `INSERT ... VALUES` rows become JSON objects for the JSONEachRow reader, so they get the
/// same conversions and error messages as any other insert.
fn values_as_json(
    node: &Node,
    table: &str,
    columns: Option<&[String]>,
    rows: Vec<Vec<serde_json::Value>>,
) -> Result<Bytes, NodeError> {
    let state = node.catalog.table(table).ok_or_else(|| NodeError::unknown_table(table))?;
    let names: Vec<String> = match columns {
        Some(c) => c.to_vec(),
        None => state.def.columns.iter().map(|c| c.name.clone()).collect(),
    };
    let mut out = Vec::new();
    for (index, row) in rows.into_iter().enumerate() {
        if row.len() != names.len() {
            return Err(NodeError::bad_request(format!(
                "VALUES row {} has {} values for {} columns ({})",
                index + 1,
                row.len(),
                names.len(),
                names.join(", ")
            )));
        }
        let object: serde_json::Map<String, serde_json::Value> = names.iter().cloned().zip(row).collect();
        serde_json::to_writer(&mut out, &object).map_err(NodeError::internal)?;
        out.push(b'\n');
    }
    Ok(Bytes::from(out))
}

async fn run_insert(
    node: &Node,
    params: &HashMap<String, String>,
    table: &str,
    columns: Option<&[String]>,
    format: Format,
    data: Bytes,
    started: Instant,
) -> Result<Response, NodeError> {
    let deduplication_token = params.get("insert_deduplication_token").filter(|t| !t.is_empty()).cloned();
    if let Some(token) = deduplication_token.as_ref().filter(|t| t.len() > MAX_DEDUP_TOKEN_BYTES) {
        return Err(NodeError::bad_request(format!(
            "insert_deduplication_token is {} bytes; the limit is {MAX_DEDUP_TOKEN_BYTES} (a hash or an id fits)",
            token.len()
        )));
    }
    let limits = &node.config.limits;
    let settings = InsertSettings {
        deduplicate: flag(params, "insert_deduplicate", true)?,
        deduplication_token,
        input: InputOptions {
            skip_unknown_fields: flag(params, "input_format_skip_unknown_fields", false)?,
            budget: Budget { max_rows: limits.max_insert_rows, max_bytes: limits.max_insert_bytes },
        },
        quorum: params.get("insert_quorum").map(|q| Quorum::parse(q)).transpose()?.unwrap_or(node.config.insert_quorum),
        quorum_timeout: match number(params, "insert_quorum_timeout")? {
            Some(ms) => capped_millis(ms),
            None => node.config.insert_quorum_timeout,
        },
        durability: params.get("insert_durability").map(|d| Durability::parse(d)).transpose()?,
    };
    let bytes_in = data.len();
    let result = insert(node, table, columns, format, data, &settings).await;
    node.metrics.insert_seconds.observe(started.elapsed().as_secs_f64());
    let summary = result.inspect_err(|_| {
        node.metrics.insert_errors.inc();
    })?;
    let clickhouse_summary = serde_json::json!({
        "read_rows": "0",
        "read_bytes": "0",
        "written_rows": summary.rows_written.to_string(),
        "written_bytes": if summary.rows_written > 0 { bytes_in.to_string() } else { "0".to_string() },
        "total_rows_to_read": "0",
        "result_rows": "0",
        "result_bytes": "0",
    });
    let body = serde_json::to_vec(&summary).map_err(NodeError::internal)?;
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-tandem-revision", HeaderValue::from(summary.revision));
    headers
        .insert("x-tandem-deduplicated", HeaderValue::from_static(if summary.deduplicated { "true" } else { "false" }));
    if let Ok(v) = HeaderValue::from_str(&clickhouse_summary.to_string()) {
        headers.insert("x-clickhouse-summary", v);
    }
    Ok(response)
}
