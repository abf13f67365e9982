//! The HTTP API in ClickHouse's conventions: `/?query=...` with the statement in the URL or
//! the body, settings as URL parameters, results in the requested format; plus `/health`,
//! `/ready` and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tower_service::Service as _;

use crate::error::NodeError;
use crate::execution::Admitted;
use crate::formats::values::JsonOptions;
use crate::formats::{Budget, Encoder, Format, InputOptions, OutputOptions, encode, text_batch};
use crate::header_names::{
    X_CLICKHOUSE_FORMAT, X_CLICKHOUSE_SUMMARY, X_TANDEM_ACKNOWLEDGED, X_TANDEM_DEDUPLICATED, X_TANDEM_REVISION,
};
use crate::insert::{InsertSettings, insert};
use crate::limits::{MAX_DEDUP_TOKEN_BYTES, MAX_WAIT, RESULT_HEAD_BYTES};
use crate::query;
use crate::query_log::{Moved, PendingQuery};
use crate::state::Server;
use crate::statement::{self, InsertSource, InsertStatement, ParseOptions, Statement};
use crate::url_params::{UrlParams, url_parameters};
use tandem_access::{Object, Principal, Privilege};
use tandem_replica::metrics::Metrics;
use tandem_replica::schema::Durability;
use tandem_replica::{Acknowledged, AsyncInsertOptions, InsertOptions, Quorum, Replica};

fn router(server: Arc<Server>) -> Router {
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
        .with_state(server)
}

/// The API as one hyper service (served by [`crate::connections`]): `GET` and `POST /`, where
/// every statement arrives, go straight to [`handle`]; everything else (and `HEAD /`, and other
/// methods' 405) through the router. The router's dispatch, its extractors (a copy of the
/// headers among them) and boxed layers took about 2 µs of CPU a request, a twentieth of a
/// small insert's. The router is always ready, so it is called without `poll_ready`.
#[derive(Clone)]
pub(crate) struct Api {
    server: Arc<Server>,
    router: Router,
}

impl Api {
    pub(crate) fn new(server: Arc<Server>) -> Api {
        Api { server: server.clone(), router: router(server) }
    }
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let request = request.map(Body::new);
        if request.uri().path() == "/" && matches!(*request.method(), Method::GET | Method::POST) {
            handle(State(self.server.clone()), request).map(Ok).boxed()
        } else {
            self.router.clone().call(request).boxed()
        }
    }
}

async fn health() -> &'static str {
    "Ok.\n"
}

/// The request's URL parameters, decoded as axum's `Query<HashMap<..>>` would (the last of a
/// repeated name wins) without its serde pass, a percent of a small insert's CPU.
struct UrlParameters(UrlParams);

impl<S: Send + Sync> FromRequestParts<S> for UrlParameters {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(UrlParameters(url_parameters(&parts.uri)))
    }
}

/// Ready to serve inserts and queries. With `?durability=object_store`, also requires the
/// object store to be reachable (what inserts with `insert_durability=object_store` need).
async fn ready(State(server): State<Arc<Server>>, UrlParameters(params): UrlParameters) -> Response {
    let replica = &server.replica;
    if replica.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: this node is shutting down\n").into_response();
    }
    if !replica.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "catching up with the cluster's metadata, or not announced to the cluster (is the metadata store \
                 reachable?){}\n",
                backlog_note(replica)
            ),
        )
            .into_response();
    }
    let wants_object_store = params.get("durability") == Some("object_store");
    match (replica.object_store_status().map(|s| (s.reachable, s.last_error)), wants_object_store) {
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
        _ => (StatusCode::OK, format!("Ok.{}\n", backlog_note(replica))).into_response(),
    }
}

/// While asynchronous flushes fail: how many inserts wait in this node's log, and why.
fn backlog_note(replica: &Replica) -> String {
    let backlog = replica.async_backlog();
    let inserts: u64 = backlog.iter().map(|b| b.inserts).sum();
    match backlog.iter().find_map(|b| b.last_error.as_ref()) {
        Some(error) => format!(
            " ({inserts} asynchronous inserts are logged here and not yet registered: {error}; they register once \
             it passes, system.asynchronous_inserts shows them)"
        ),
        None => String::new(),
    }
}

/// A drain never waits longer than a day, whatever it is asked.
const MAX_DRAIN_SECONDS: i64 = 24 * 3600;

/// `POST /drain?timeout_seconds=N` (default 60): stop being ready, then wait until no part is
/// only on this node. 200 when drained, 503 with the reason otherwise. `POST /drain?cancel=1`
/// undoes it: the node is ready again and merges resume (a restart does the same).
async fn drain(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    UrlParameters(mut params): UrlParameters,
) -> Response {
    if let Err(e) = authenticate(&server, &headers, &mut params, None)
        .await
        .and_then(|principal| Ok(server.access.authorize(&principal, Privilege::System, &Object::Global)?))
    {
        return e.into_response();
    }
    match flag(&params, "cancel", false) {
        Ok(true) => {
            server.replica.cancel_drain();
            return (StatusCode::OK, "drain cancelled: this node is ready again\n").into_response();
        }
        Ok(false) => {}
        Err(e) => return e.into_response(),
    }
    let timeout = match number(&params, "timeout_seconds") {
        Ok(seconds) => Duration::from_secs(seconds.unwrap_or(60).clamp(0, MAX_DRAIN_SECONDS) as u64),
        Err(e) => return e.into_response(),
    };
    let report = server.replica.drain(timeout).await;
    let status = if report.drained { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(report)).into_response()
}

async fn metrics(State(server): State<Arc<Server>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], server.replica.render_metrics().await).into_response()
}

async fn handle(State(server): State<Arc<Server>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (method, headers, mut params) = (parts.method, parts.headers, url_parameters(&parts.uri));
    let mut logged = Some(server.query_log.begin());
    // What every answer carries whatever happens: the query id, the time zone, the encoding.
    let exchange = crate::clickhouse_http::Exchange::of(&params, &headers);
    // A panic is a bug, never the client's doing: it answers 500 and the node keeps serving.
    let answer = std::panic::AssertUnwindSafe(async {
        if let (Some(pending), Some(text)) = (logged.as_mut(), params.get("query")) {
            pending.set_query(text);
        }
        let principal = authenticate(&server, &headers, &mut params, logged.as_mut()).await?;
        execute(&server, &principal, &method, params, headers, body, &mut logged).await
    })
    .catch_unwind()
    .await;
    let failed = |e: NodeError| {
        let error = (e.code(), e.to_string());
        (e.into_response(), Some(error))
    };
    let (response, error) = match answer {
        Ok(Ok(response)) => (response, None),
        Ok(Err(e)) => failed(e),
        Err(panic) => {
            let what = crate::error::panic_message(panic.as_ref());
            tracing::error!(panic = %what, "a request handler panicked");
            failed(NodeError::internal(format!("the request hit a bug in tandem ({what}); please report it")))
        }
    };
    // A streamed result is logged when its stream ends; everything else here.
    if let Some(pending) = logged {
        let moved = response.extensions().get::<Moved>().copied().unwrap_or_default();
        pending.finish(response.status().as_u16(), error, moved.rows, moved.bytes);
    }
    crate::clickhouse_http::finish_response(response, &exchange)
}

/// Who the request runs as (401 without valid credentials where users are defined).
/// The query log, when given, names the user claimed, then the one signed in.
async fn authenticate(
    server: &Server,
    headers: &HeaderMap,
    params: &mut UrlParams,
    mut logged: Option<&mut PendingQuery>,
) -> Result<Principal, NodeError> {
    let credentials = crate::credentials::take(headers, params)?;
    if let (Some(pending), Some(credentials)) = (logged.as_deref_mut(), &credentials) {
        pending.set_user(&credentials.user);
    }
    let principal = server.access.authenticate(credentials.as_ref()).await.inspect_err(|_| {
        server.replica.metrics().http_auth_failures.inc();
    })?;
    if let Some(pending) = logged {
        pending.set_user(principal.name());
    }
    Ok(principal)
}

/// Refuses (403) a statement whose user lacks a privilege for it, before anything runs: a
/// refused request changes nothing. A SELECT is checked on the tables it names once parsed
/// ([`authorize_query`]).
fn authorize(server: &Server, principal: &Principal, statement: &Statement) -> Result<(), NodeError> {
    let need = |privilege, object: Object| Ok(server.access.authorize(principal, privilege, &object)?);
    match statement {
        Statement::CreateTable { def, .. } => need(Privilege::Create, Object::table(&def.name)),
        Statement::Alter { table, .. } => need(Privilege::Alter, Object::table(table)),
        Statement::DropTable { name, .. } => need(Privilege::Drop, Object::table(name)),
        Statement::Describe { name, .. } => need(Privilege::Select, Object::table(name)),
        Statement::Insert(insert) => need(Privilege::Insert, Object::table(&insert.table)),
        Statement::Access(_) | Statement::ShowUsers { .. } => need(Privilege::AccessManagement, Object::Global),
        Statement::ShowGrants { user: Some(user), .. } if user != principal.name() => {
            need(Privilege::AccessManagement, Object::Global)
        }
        Statement::ShowGrants { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowDatabases { .. }
        | Statement::Exists { .. }
        | Statement::Select { .. } => Ok(()),
    }
}

/// SELECT on every table a query names; the `system` tables that show users, grants and
/// queries need ACCESS MANAGEMENT.
fn authorize_query(server: &Server, principal: &Principal, parsed: &query::ParsedQuery) -> Result<(), NodeError> {
    for reference in parsed.tables() {
        let (privilege, object) = match reference.schema() {
            None => (Privilege::Select, Object::table(reference.table())),
            Some("default") => (Privilege::Select, Object::table(reference.table())),
            Some("system") if crate::system_tables::ACCESS_TABLES.contains(&reference.table()) => {
                (Privilege::AccessManagement, Object::Global)
            }
            Some("system") => continue,
            Some(database) => (
                Privilege::Select,
                Object::Table { database: database.to_string(), table: reference.table().to_string() },
            ),
        };
        server.access.authorize(principal, privilege, &object)?;
    }
    Ok(())
}

fn flag(params: &UrlParams, name: &str, default: bool) -> Result<bool, NodeError> {
    match params.get(name) {
        None => Ok(default),
        Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        Some(other) => Err(NodeError::bad_request(format!("setting `{name}` takes 0 or 1, got `{other}`"))),
    }
}

fn number(params: &UrlParams, name: &str) -> Result<Option<i64>, NodeError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| NodeError::bad_request(format!("setting `{name}` takes an integer, got `{v}`")))
        })
        .transpose()
}

fn parse_options(server: &Server) -> ParseOptions {
    ParseOptions {
        table_defaults: server.config.settings.table_defaults(),
        max_columns: server.config.limits.max_columns,
    }
}

async fn execute(
    server: &Server,
    principal: &Principal,
    method: &Method,
    params: UrlParams,
    headers: HeaderMap,
    body: Body,
    logged: &mut Option<PendingQuery>,
) -> Result<Response, NodeError> {
    let node = server.replica.as_ref();
    if !node.can_serve() {
        return Err(NodeError::Unavailable(
            "this node is still catching up with the cluster's metadata; retry shortly or use another node".into(),
        ));
    }
    // One database: `default` (a client may name it, as clickhouse-connect does).
    if let Some(database) = params.get("database").filter(|d| !d.is_empty() && *d != "default") {
        return Err(NodeError::bad_request(format!(
            "database `{}` does not exist: tandem has one database, `default`",
            crate::formats::truncate(database, 60)
        )));
    }
    let settings = &server.config.settings;
    let receive_timeout = Duration::from_secs(settings.http_receive_timeout_seconds);
    let body = crate::body::read(body, &headers, settings.max_body_bytes, receive_timeout).await?;
    // As in ClickHouse: the statement is `?query=`, followed by the body for statements other
    // than INSERT; without `?query=`, the body starts with the statement.
    let (text, body_is_statement) = match params.get("query") {
        Some(q) => (std::borrow::Cow::Borrowed(q), false),
        None => match std::str::from_utf8(&body) {
            Ok(text) => (std::borrow::Cow::Borrowed(text), true),
            // Binary rows (Parquet, Arrow) after the statement: the statement is in the head.
            Err(e) => (String::from_utf8_lossy(&body[..e.valid_up_to().min(64 * 1024)]), true),
        },
    };
    if let Some(pending) = logged.as_mut().filter(|_| body_is_statement) {
        pending.set_query(&text);
    }
    let options = parse_options(server);
    let statement = statement::parse_with(&text, &options)?;
    if let Some(pending) = logged.as_mut() {
        pending.set_kind(statement.kind());
        // Only the statement of an insert, not the rows after it (when the text has rows).
        if let Statement::Insert(InsertStatement { source: InsertSource::Format { data_offset, .. }, .. }) = &statement
            && *data_offset < text.len()
        {
            pending.set_query(text.get(..*data_offset).unwrap_or_default());
        }
    }
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
    authorize(server, principal, &statement)?;
    let Statement::Insert(insert_statement) = statement else {
        // Boxed: a statement's future is about 6 KB. Inline, every request's future would be as
        // large, and a request's future is copied as it starts (an insert's is about 3.9 KB).
        return Box::pin(execute_statement(server, principal, &params, statement, started, logged)).await;
    };
    let InsertSource::Format { format, data_offset } = &insert_statement.source else {
        let InsertSource::Values(rows) = insert_statement.source else {
            return Err(NodeError::internal("an INSERT with neither FORMAT nor VALUES"));
        };
        let data = values_as_json(node, &insert_statement.table, insert_statement.columns.as_deref(), rows)?;
        return run_insert(server, &params, &insert_statement.table, None, Format::JsonEachRow, data, started).await;
    };
    let format = Format::parse(format)?;
    let data = if body_is_statement {
        body.slice((*data_offset).min(body.len())..)
    } else if body.is_empty() {
        Bytes::copy_from_slice(text.get(*data_offset..).unwrap_or_default().as_bytes())
    } else {
        body
    };
    run_insert(server, &params, &insert_statement.table, insert_statement.columns.as_deref(), format, data, started)
        .await
}

/// The settings that change how a result is written.
fn output_options(params: &UrlParams) -> Result<OutputOptions, NodeError> {
    Ok(OutputOptions {
        json: JsonOptions { quote_64bit_integers: flag(params, "output_format_json_quote_64bit_integers", true)? },
    })
}

fn output_format(params: &UrlParams, clause: Option<&str>) -> Result<Format, NodeError> {
    match clause.or(params.get("default_format")) {
        Some(name) => Format::parse(name),
        None => Ok(Format::TabSeparated),
    }
}

async fn execute_statement(
    server: &Server,
    principal: &Principal,
    params: &UrlParams,
    statement: Statement,
    started: Instant,
    logged: &mut Option<PendingQuery>,
) -> Result<Response, NodeError> {
    let node = server.replica.as_ref();
    match statement {
        Statement::CreateTable { def, if_not_exists } => ddl_done(node.create_table(&def, if_not_exists).await?),
        Statement::Alter { table, actions } => {
            let sync_all = match number(params, "alter_sync")? {
                None | Some(0 | 1) => false,
                Some(2) => true,
                Some(other) => return Err(NodeError::bad_request(format!("alter_sync takes 0, 1 or 2, got {other}"))),
            };
            ddl_done(node.alter(&table, &actions, sync_all).await?)
        }
        Statement::DropTable { name, if_exists } => ddl_done(node.drop_table(&name, if_exists).await?),
        Statement::ShowTables { format } => {
            let names: Vec<String> = node.tables().into_keys().collect();
            let batch = text_batch(&[("name", names)])?;
            respond_batch(params, format.as_deref(), batch, started, node)
        }
        Statement::ShowDatabases { format } => {
            let batch = text_batch(&[("name", vec!["default".to_string(), "system".to_string()])])?;
            respond_batch(params, format.as_deref(), batch, started, node)
        }
        Statement::Exists { name, format } => {
            let batch = crate::formats::flag_batch("result", node.table(&name).is_some())?;
            respond_batch(params, format.as_deref(), batch, started, node)
        }
        Statement::Describe { name, format } => {
            let table = node.table(&name).ok_or_else(|| NodeError::unknown_table(&name))?;
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
            respond_batch(params, format.as_deref(), batch, started, node)
        }
        Statement::Select { sql, format } => {
            let format = output_format(params, format.as_deref())?;
            let sql = crate::parameters::substitute(&sql, params)?;
            let parsed = query::ParsedQuery::parse(&sql)?;
            authorize_query(server, principal, &parsed)?;
            wait_for_revision(node, params).await?;
            let admitted = server.queries.admit(params)?;
            let tables = node.tables();
            parsed.check_tables(&tables)?;
            let cluster = if parsed.reads_system_table("replicas") {
                Some(cluster_view(node).await)
            } else {
                parsed.reads_system_tables().then(crate::system_tables::ClusterView::default)
            };
            let reads_users = parsed.reads_system_table("users") || parsed.reads_system_table("grants");
            let system = cluster.map(|cluster| crate::system_tables::SystemView {
                cluster,
                users: if reads_users { server.access.users() } else { Vec::new() },
                queries: if parsed.reads_system_table("query_log") { server.query_log.entries() } else { Vec::new() },
            });
            let session = server.sessions.session(&server.replica, &tables, system.as_ref())?;
            let runtime = admitted.runtime.clone();
            let planned = admitted
                .within_deadline(async { query::run(&session, parsed, runtime).await.map_err(|e| admitted.error(e)) })
                .await;
            let (schema, stream) = planned.inspect_err(|_| {
                node.metrics().query_errors.inc();
            })?;
            respond_stream(node, format, output_options(params)?, schema, stream, admitted, started, logged).await
        }
        Statement::Access(change) => match server.access.change(&change).await? {
            Some(revision) => ddl_done(revision),
            None => Ok(Response::new(Body::empty())),
        },
        Statement::ShowUsers { format } => {
            let names = server.access.users().into_iter().map(|u| u.name).collect();
            let batch = text_batch(&[("name", names)])?;
            respond_batch(params, format.as_deref(), batch, started, node)
        }
        Statement::ShowGrants { user, format } => {
            let user = user.as_deref().unwrap_or(principal.name());
            let grants = server
                .access
                .grant_statements(user)
                .or_else(|| {
                    // Without users, the implicit `default` user holds everything.
                    let implicit = !server.access.has_users() && user == tandem_access::DEFAULT_USER;
                    implicit.then(|| vec![format!("GRANT ALL ON *.* TO {user}")])
                })
                .ok_or_else(|| NodeError::bad_request(format!("there is no user `{user}`")))?;
            let column = format!("GRANTS FOR {user}");
            let batch = text_batch(&[(column.as_str(), grants)])?;
            respond_batch(params, format.as_deref(), batch, started, node)
        }
        Statement::Insert(_) => Err(NodeError::internal("an INSERT reached the statement executor")),
    }
}

/// `after_revision` and `select_sequential_consistency`: waits (at most
/// `after_revision_timeout_ms`, capped) until this node holds every part up to the revision.
async fn wait_for_revision(node: &Replica, params: &UrlParams) -> Result<(), NodeError> {
    let mut after = number(params, "after_revision")?;
    if flag(params, "select_sequential_consistency", false)? {
        let quorum_revision = node.quorum_revision().await?;
        after = Some(after.unwrap_or(0).max(quorum_revision));
    }
    let Some(revision) = after else { return Ok(()) };
    if node.complete_revision() < revision {
        let current = node.current_revision().await?;
        if revision > current {
            return Err(NodeError::bad_request(format!(
                "after_revision {revision} does not exist yet: the cluster is at revision {current}; pass the \
                 revision an insert answered (X-Tandem-Revision)"
            )));
        }
    }
    let timeout = capped_millis(number(params, "after_revision_timeout_ms")?.unwrap_or(10_000));
    if !node.wait_complete(revision, timeout).await {
        return Err(NodeError::Timeout(format!(
            "this node holds every part up to revision {} but the query asked for {revision}; not answering with stale data (waited {} ms)",
            node.complete_revision(),
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
async fn cluster_view(node: &Replica) -> crate::system_tables::ClusterView {
    let nodes = if node.is_cluster() { node.live_nodes().await.unwrap_or_default() } else { Vec::new() };
    crate::system_tables::ClusterView { nodes, cluster_revision: node.current_revision().await.ok() }
}

/// A query's result, encoded as it is produced. The first [`RESULT_HEAD_BYTES`] are held back,
/// so a query that fails or crosses a limit early still answers with its own status and
/// message; past them the status is sent, and a later error ends the body with its message
/// and an aborted transfer (so no client takes a cut result for a whole one).
#[allow(clippy::too_many_arguments)]
async fn respond_stream(
    node: &Replica,
    format: Format,
    options: OutputOptions,
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    admitted: Admitted,
    started: Instant,
    logged: &mut Option<PendingQuery>,
) -> Result<Response, NodeError> {
    let mut encoder = Encoder::new(format, &schema, options)?;
    let mut head = encoder.head()?;
    let mut result = ResultStream {
        encoder,
        stream,
        admitted,
        rows: 0,
        bytes: head.len() as u64,
        started,
        done: false,
        metrics: node.metrics().clone(),
        logged: None,
    };
    while head.len() < RESULT_HEAD_BYTES && !result.done {
        head.extend_from_slice(&result.next_chunk().await?);
    }
    let moved = Moved { rows: result.rows, bytes: result.bytes };
    let whole = result.done.then_some(moved);
    let body = if result.done {
        Body::from(head)
    } else {
        // From here the answer's status is sent: the stream logs how it ends.
        result.logged = logged.take();
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
                        // ClickHouse's shape, after the rows already sent.
                        let (number, name) = e.clickhouse_code();
                        let text = format!("\nCode: {number}. DB::Exception: {e} ({name}) ({})\n", e.code());
                        Some((Ok(Bytes::from(text)), Tail::Failed(e.to_string())))
                    }
                },
            }
        });
        Body::from_stream(futures::stream::once(async move { Ok(Bytes::from(head)) }).chain(tail))
    };
    let mut response = Response::new(body);
    response.extensions_mut().insert(moved);
    result_headers(&mut response, format, node, whole);
    Ok(response)
}

/// The headers of a query's result: its format, the revision it read, and, when the whole
/// result is known before the headers go, its size in ClickHouse's summary.
fn result_headers(response: &mut Response, format: Format, node: &Replica, whole: Option<Moved>) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    headers.insert(X_CLICKHOUSE_FORMAT, HeaderValue::from_static(format.name()));
    headers.insert(X_TANDEM_REVISION, HeaderValue::from(node.applied_revision()));
    if let Some(moved) = whole
        && let Ok(summary) = crate::clickhouse_http::summary(0, 0, moved.rows, moved.bytes)
    {
        headers.insert(X_CLICKHOUSE_SUMMARY, summary);
    }
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
    /// The query's log entry, once the status is sent: kept when the stream ends.
    logged: Option<PendingQuery>,
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
        if let Err(e) = &chunk {
            self.done = true;
            self.metrics.query_errors.inc();
            if let Some(pending) = self.logged.take() {
                pending.finish(200, Some((e.code(), e.to_string())), self.rows, self.bytes);
            }
        } else if self.done
            && let Some(pending) = self.logged.take()
        {
            pending.finish(200, None, self.rows, self.bytes);
        }
        chunk
    }
}

/// A schema change's answer: its revision (the replica answers once it is applied here).
fn ddl_done(revision: tandem_replica::Revision) -> Result<Response, NodeError> {
    let mut response = Response::new(Body::empty());
    response.headers_mut().insert(X_TANDEM_REVISION, HeaderValue::from(revision));
    Ok(response)
}

/// A small answer made whole before it is sent (SHOW, DESCRIBE, EXISTS), in the format the
/// statement's `FORMAT` clause or `default_format` asks for.
fn respond_batch(
    params: &UrlParams,
    format_clause: Option<&str>,
    batch: datafusion::arrow::array::RecordBatch,
    started: Instant,
    node: &Replica,
) -> Result<Response, NodeError> {
    let format = output_format(params, format_clause)?;
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = encode(format, &batch.schema(), std::slice::from_ref(&batch), elapsed, output_options(params)?)?;
    let moved = Moved { rows: batch.num_rows() as u64, bytes: bytes.len() as u64 };
    let mut response = Response::new(Body::from(bytes));
    response.extensions_mut().insert(moved);
    result_headers(&mut response, format, node, Some(moved));
    Ok(response)
}

/// `INSERT ... VALUES` rows become JSON objects for the JSONEachRow reader, so they get the
/// same conversions and error messages as any other insert.
fn values_as_json(
    node: &Replica,
    table: &str,
    columns: Option<&[String]>,
    rows: Vec<Vec<serde_json::Value>>,
) -> Result<Bytes, NodeError> {
    let state = node.table(table).ok_or_else(|| NodeError::unknown_table(table))?;
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

/// The headers of an insert's answer: its own five and `finish_response`'s two.
const INSERT_ANSWER_HEADERS: usize = 7;

async fn run_insert(
    server: &Server,
    params: &UrlParams,
    table: &str,
    columns: Option<&[String]>,
    format: Format,
    data: Bytes,
    started: Instant,
) -> Result<Response, NodeError> {
    let deduplication_token = params.get("insert_deduplication_token").filter(|t| !t.is_empty()).map(str::to_string);
    if let Some(token) = deduplication_token.as_ref().filter(|t| t.len() > MAX_DEDUP_TOKEN_BYTES) {
        return Err(NodeError::bad_request(format!(
            "insert_deduplication_token is {} bytes; the limit is {MAX_DEDUP_TOKEN_BYTES} (a hash or an id fits)",
            token.len()
        )));
    }
    let (config, node) = (&server.config, server.replica.as_ref());
    let limits = &config.limits;
    let settings = InsertSettings {
        input: InputOptions {
            skip_unknown_fields: flag(params, "input_format_skip_unknown_fields", false)?,
            budget: Budget { max_rows: limits.max_insert_rows, max_bytes: limits.max_insert_bytes },
        },
        quorum: params
            .get("insert_quorum")
            .map(|q| q.parse::<Quorum>())
            .transpose()?
            .unwrap_or(config.settings.insert_quorum),
        options: InsertOptions {
            deduplicate: flag(params, "insert_deduplicate", true)?,
            deduplication_token,
            quorum_timeout: match number(params, "insert_quorum_timeout")? {
                Some(ms) => capped_millis(ms),
                None => config.settings.insert_quorum_timeout(),
            },
            durability: params.get("insert_durability").map(Durability::parse).transpose()?,
        },
        async_insert: params.contains_key("async_insert").then(|| flag(params, "async_insert", false)).transpose()?,
        buffering: AsyncInsertOptions {
            wait: flag(params, "wait_for_async_insert", true)?,
            busy_timeout: number(params, "async_insert_busy_timeout_ms")?.map(capped_millis),
            max_data_size: match number(params, "async_insert_max_data_size")? {
                Some(size) if size <= 0 => {
                    return Err(NodeError::bad_request(format!(
                        "async_insert_max_data_size takes a positive number of bytes, got {size}"
                    )));
                }
                size => size.map(|s| s as u64),
            },
            wait_timeout: match number(params, "wait_for_async_insert_timeout")? {
                // In seconds, as ClickHouse's.
                Some(seconds) => capped_millis(seconds.saturating_mul(1000)),
                None => Duration::from_secs(120).min(MAX_WAIT),
            },
        },
    };
    let bytes_in = data.len();
    let result = insert(node, table, columns, format, data, &settings).await;
    node.metrics().insert_seconds.observe(started.elapsed().as_secs_f64());
    let summary = result.inspect_err(|_| {
        node.metrics().insert_errors.inc();
    })?;
    let written_bytes = if summary.rows_written > 0 { bytes_in as u64 } else { 0 };
    let body = crate::insert::answer_body(&summary).map_err(NodeError::internal)?;
    let mut response = Response::new(Body::from(body));
    response.extensions_mut().insert(Moved { rows: summary.rows_written, bytes: bytes_in as u64 });
    let headers = response.headers_mut();
    // These five and the two every answer gets: room for all at once, rather than a table for
    // six that is grown and rehashed at the seventh.
    headers.reserve(INSERT_ANSWER_HEADERS);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_TANDEM_REVISION, HeaderValue::from(summary.revision));
    headers
        .insert(X_TANDEM_DEDUPLICATED, HeaderValue::from_static(if summary.deduplicated { "true" } else { "false" }));
    headers.insert(
        X_TANDEM_ACKNOWLEDGED,
        HeaderValue::from_static(match summary.acknowledged {
            Acknowledged::Registered => "registered",
            Acknowledged::Logged => "logged",
        }),
    );
    if let Ok(clickhouse_summary) = crate::clickhouse_http::summary(summary.rows_written, written_bytes, 0, 0) {
        headers.insert(X_CLICKHOUSE_SUMMARY, clickhouse_summary);
    }
    Ok(response)
}
