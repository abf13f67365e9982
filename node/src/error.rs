//! One error type for everything a request can hit, and its one mapping to an HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tandem_coordinator::CoordError;
use tandem_parts::PartError;

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
    #[error(
        "request body is larger than the limit of {limit} bytes; split the insert into smaller batches or raise max_body_bytes"
    )]
    BodyTooLarge { limit: usize },
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
        NodeError::UnknownTable(format!("table `{name}` does not exist; SHOW TABLES lists the tables"))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            NodeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NodeError::UnknownTable(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) => StatusCode::CONFLICT,
            NodeError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            NodeError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            NodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            NodeError::TooManyParts(_) => StatusCode::TOO_MANY_REQUESTS,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable name for the kind of error, sent as `X-Tandem-Error-Code`.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::BadRequest(_) => "BAD_REQUEST",
            NodeError::UnknownTable(_) => "UNKNOWN_TABLE",
            NodeError::Conflict(_) => "CONFLICT",
            NodeError::BodyTooLarge { .. } => "BODY_TOO_LARGE",
            NodeError::NotImplemented(_) => "NOT_IMPLEMENTED",
            NodeError::Unavailable(_) => "UNAVAILABLE",
            NodeError::Timeout(_) => "TIMEOUT",
            NodeError::TooManyParts(_) => "TOO_MANY_PARTS",
            NodeError::Internal(_) => "INTERNAL",
        }
    }

    /// Whether sending the same request again can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, NodeError::Unavailable(_) | NodeError::Timeout(_) | NodeError::TooManyParts(_))
    }
}

impl From<CoordError> for NodeError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::NoSuchTable(name) => NodeError::unknown_table(&name),
            CoordError::TableExists(name) => NodeError::Conflict(format!("table `{name}` already exists")),
            CoordError::TableChanged { .. } => NodeError::Conflict(e.to_string()),
            CoordError::Unavailable(_) => NodeError::Unavailable(e.to_string()),
            other => NodeError::Internal(other.to_string()),
        }
    }
}

impl From<PartError> for NodeError {
    fn from(e: PartError) -> Self {
        match e {
            PartError::MissingColumn { .. }
            | PartError::NullPartitionValue { .. }
            | PartError::UnsupportedPartitionType { .. } => NodeError::BadRequest(e.to_string()),
            other => NodeError::Internal(other.to_string()),
        }
    }
}

impl From<datafusion::error::DataFusionError> for NodeError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        static UNKNOWN_TABLE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r"table '(?:datafusion\.public\.|datafusion\.)?([^']+)' not found").expect("valid regex")
        });
        if let Some(c) = UNKNOWN_TABLE.captures(&e.to_string()) {
            return NodeError::unknown_table(&c[1]);
        }
        match e.find_root() {
            D::SQL(..) | D::Plan(_) | D::SchemaError(..) | D::NotImplemented(_) => NodeError::BadRequest(e.to_string()),
            D::ArrowError(inner, _) if matches!(**inner, datafusion::arrow::error::ArrowError::DivideByZero) => {
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
        let body = format!("{self}\n");
        let retryable = if self.is_retryable() { "true" } else { "false" };
        let headers = [
            ("x-tandem-error-code", self.code()),
            ("x-tandem-retryable", retryable),
            ("content-type", "text/plain; charset=utf-8"),
        ];
        (status, headers, body).into_response()
    }
}
