//! One error type for everything a request can hit, and its one mapping to an HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tandem_access::{AccessDenied, AccessError, AuthError};
use tandem_replica::Error as ReplicaError;

use crate::header_names::{X_CLICKHOUSE_EXCEPTION_CODE, X_TANDEM_ERROR_CODE, X_TANDEM_RETRYABLE};

/// A request error: what went wrong, in words that tell the caller what to do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request itself is wrong (syntax, malformed rows, wrong types): fix it, do not retry.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnknownTable(String),
    #[error("{0}")]
    Conflict(String),
    /// The table's schema changed while an insert was being registered (an insert retries
    /// under the new schema by itself; a client sees this only when changes keep coming).
    #[error("table `{table}` kept changing while inserting; retry the insert")]
    SchemaChanged { table: String },
    #[error(
        "request body is larger than the limit of {limit} bytes; split the insert into smaller batches or raise max_body_bytes"
    )]
    BodyTooLarge { limit: usize },
    #[error(
        "the body decompresses to more than the limit of {limit} bytes ({compressed} bytes compressed); split the insert \
         into smaller batches or raise max_body_bytes"
    )]
    DecompressedTooLarge { limit: usize, compressed: usize },
    /// The body stopped arriving: nothing of the request was kept.
    #[error(
        "the request body stalled: no bytes of it arrived for {seconds} s (http_receive_timeout_seconds); nothing of \
         this request was kept, send it again"
    )]
    BodyStalled { seconds: u64 },
    /// An insert decodes to more rows or bytes than allowed (the message names the limit).
    #[error("{0}")]
    InsertTooLarge(String),
    /// A query ran into one of its limits (memory, result size); the message names it.
    #[error("{0}")]
    QueryLimit(String),
    /// A query ran longer than `max_execution_time`.
    #[error("{0}")]
    QueryTimeout(String),
    /// The node is at capacity (concurrent queries, server memory): retrying later can help.
    #[error("{0}")]
    Overloaded(String),
    /// The statement changes state but came in a GET (which must be safe to repeat, prefetch
    /// or follow from any web page).
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    NotImplemented(String),
    /// The metadata store or a dependency is unavailable: retrying later can help.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
    /// A partition has more active parts than its table allows: merges are behind inserts.
    #[error("{0}")]
    TooManyParts(String),
    /// No valid credentials: the same answer for an unknown user and a wrong password.
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    /// The user lacks a privilege; the message names it and the `GRANT` that gives it.
    #[error("{0}")]
    Forbidden(#[from] AccessDenied),
    #[error("internal error: {0}")]
    Internal(String),
}

impl NodeError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        NodeError::BadRequest(msg.into())
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        NodeError::Internal(e.to_string())
    }

    pub fn unknown_table(name: &str) -> Self {
        ReplicaError::UnknownTable(name.to_string()).into()
    }

    pub fn status(&self) -> StatusCode {
        match self {
            NodeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NodeError::UnknownTable(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) | NodeError::SchemaChanged { .. } => StatusCode::CONFLICT,
            NodeError::BodyTooLarge { .. } | NodeError::DecompressedTooLarge { .. } | NodeError::InsertTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            NodeError::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            NodeError::QueryLimit(_) => StatusCode::BAD_REQUEST,
            NodeError::QueryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            NodeError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            NodeError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            NodeError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            NodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            NodeError::TooManyParts(_) => StatusCode::TOO_MANY_REQUESTS,
            NodeError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            NodeError::Forbidden(_) => StatusCode::FORBIDDEN,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable name for the kind of error, sent as `X-Tandem-Error-Code`.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::BadRequest(_) => "BAD_REQUEST",
            NodeError::UnknownTable(_) => "UNKNOWN_TABLE",
            NodeError::Conflict(_) => "CONFLICT",
            NodeError::SchemaChanged { .. } => "SCHEMA_CHANGED",
            NodeError::BodyTooLarge { .. } | NodeError::DecompressedTooLarge { .. } => "BODY_TOO_LARGE",
            NodeError::InsertTooLarge(_) => "INSERT_TOO_LARGE",
            NodeError::BodyStalled { .. } => "BODY_STALLED",
            NodeError::QueryLimit(_) => "QUERY_LIMIT",
            NodeError::QueryTimeout(_) => "QUERY_TIMEOUT",
            NodeError::Overloaded(_) => "OVERLOADED",
            NodeError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            NodeError::NotImplemented(_) => "NOT_IMPLEMENTED",
            NodeError::Unavailable(_) => "UNAVAILABLE",
            NodeError::Timeout(_) => "TIMEOUT",
            NodeError::TooManyParts(_) => "TOO_MANY_PARTS",
            NodeError::Unauthenticated(_) => "AUTHENTICATION_FAILED",
            NodeError::Forbidden(_) => "ACCESS_DENIED",
            NodeError::Internal(_) => "INTERNAL",
        }
    }

    /// ClickHouse's number and name for the kind of error, for the clients that read them
    /// (`X-ClickHouse-Exception-Code`, and `(NAME)` at the end of the message).
    pub fn clickhouse_code(&self) -> (u16, &'static str) {
        match self {
            NodeError::BadRequest(_) => (36, "BAD_ARGUMENTS"),
            NodeError::UnknownTable(_) => (60, "UNKNOWN_TABLE"),
            NodeError::Conflict(_) => (36, "BAD_ARGUMENTS"),
            NodeError::SchemaChanged { .. } => (517, "CANNOT_ASSIGN_ALTER"),
            NodeError::BodyTooLarge { .. } | NodeError::DecompressedTooLarge { .. } | NodeError::InsertTooLarge(_) => {
                (396, "TOO_MANY_ROWS_OR_BYTES")
            }
            NodeError::BodyStalled { .. } => (209, "SOCKET_TIMEOUT"),
            NodeError::QueryLimit(_) => (396, "TOO_MANY_ROWS_OR_BYTES"),
            NodeError::QueryTimeout(_) | NodeError::Timeout(_) => (159, "TIMEOUT_EXCEEDED"),
            NodeError::Overloaded(_) => (202, "TOO_MANY_SIMULTANEOUS_QUERIES"),
            NodeError::MethodNotAllowed(_) => (164, "READONLY"),
            NodeError::NotImplemented(_) => (48, "NOT_IMPLEMENTED"),
            NodeError::Unavailable(_) => (999, "KEEPER_EXCEPTION"),
            NodeError::TooManyParts(_) => (252, "TOO_MANY_PARTS"),
            NodeError::Unauthenticated(_) => (516, "AUTHENTICATION_FAILED"),
            NodeError::Forbidden(_) => (497, "ACCESS_DENIED"),
            NodeError::Internal(_) => (1001, "STD_EXCEPTION"),
        }
    }

    /// Whether sending the same request again can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            NodeError::Unavailable(_)
                | NodeError::Timeout(_)
                | NodeError::TooManyParts(_)
                | NodeError::Overloaded(_)
                | NodeError::SchemaChanged { .. }
                | NodeError::BodyStalled { .. }
        )
    }
}

/// The message a panic carried (`panic!("...")` payloads are `&str` or `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

impl From<ReplicaError> for NodeError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::BadRequest(message) => NodeError::BadRequest(message),
            ReplicaError::UnknownTable(_) => NodeError::UnknownTable(e.to_string()),
            ReplicaError::Conflict(message) => NodeError::Conflict(message),
            ReplicaError::SchemaChanged { table } => NodeError::SchemaChanged { table },
            ReplicaError::Unavailable(message) => NodeError::Unavailable(message),
            ReplicaError::Timeout(message) => NodeError::Timeout(message),
            ReplicaError::TooManyParts(message) => NodeError::TooManyParts(message),
            ReplicaError::Internal(message) => NodeError::Internal(message),
        }
    }
}

impl From<AccessError> for NodeError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::UserExists(_) | AccessError::Contended => NodeError::Conflict(e.to_string()),
            AccessError::NoSuchUser(_) | AccessError::Invalid(_) => NodeError::BadRequest(e.to_string()),
            AccessError::Unavailable(_) => NodeError::Unavailable(e.to_string()),
            AccessError::Internal(message) => NodeError::Internal(message),
        }
    }
}

impl From<datafusion::error::DataFusionError> for NodeError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::arrow::error::ArrowError;
        use datafusion::error::DataFusionError as D;
        match e.find_root() {
            D::SQL(..) | D::Plan(_) | D::SchemaError(..) | D::NotImplemented(_) => NodeError::BadRequest(e.to_string()),
            // What the query's own values cause: a literal that does not fit its type, a bad
            // argument, a division by zero, an overflow.
            D::ArrowError(inner, _)
                if matches!(
                    **inner,
                    ArrowError::DivideByZero
                        | ArrowError::CastError(_)
                        | ArrowError::ParseError(_)
                        | ArrowError::InvalidArgumentError(_)
                        | ArrowError::ArithmeticOverflow(_)
                ) =>
            {
                NodeError::BadRequest(e.to_string())
            }
            D::Execution(_) => NodeError::BadRequest(e.to_string()),
            _ => NodeError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        // ClickHouse's shape, which its clients parse: `Code: N. DB::Exception: ... (NAME)`.
        let (number, name) = self.clickhouse_code();
        let message = self.to_string();
        let message = message.trim_end().trim_end_matches('.');
        let body = format!(
            "Code: {number}. DB::Exception: {message}. ({name}) (version {})\n",
            crate::clickhouse_http::CLICKHOUSE_VERSION
        );
        let retryable = if self.is_retryable() { "true" } else { "false" };
        let headers = [
            (X_TANDEM_ERROR_CODE, self.code()),
            (X_TANDEM_RETRYABLE, retryable),
            (axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        ];
        let mut response = (status, headers, body).into_response();
        response.headers_mut().insert(X_CLICKHOUSE_EXCEPTION_CODE, axum::http::HeaderValue::from(number));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"tandem\", charset=\"UTF-8\""),
            );
        }
        response
    }
}
