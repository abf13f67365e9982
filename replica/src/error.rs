//! What the replica's operations can fail with, by kind. The front end maps each kind to its
//! answer (an HTTP status, a retry hint) in one place; nothing here or there decides on an
//! error's text.

use tandem_coordinator::CoordError;
use tandem_parts::PartError;

/// An operation of the replica failed; the message tells the caller what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong (a bad setting, a schema change that cannot apply): fix it, do not retry.
    #[error("{0}")]
    BadRequest(String),
    #[error("table `{0}` does not exist; SHOW TABLES lists the tables")]
    UnknownTable(String),
    /// The change conflicts with the current state (the table exists, the column exists).
    #[error("{0}")]
    Conflict(String),
    /// The table's schema changed while an insert was being registered: decode the rows again
    /// under the new schema (the catalog has caught up with it) and retry.
    #[error("table `{table}` kept changing while inserting; retry the insert")]
    SchemaChanged { table: String },
    /// The metadata store, a quorum of nodes or the object store is unavailable: retrying
    /// later can help.
    #[error("{0}")]
    Unavailable(String),
    /// The change is committed (or may be) but not yet seen where the caller asked.
    #[error("{0}")]
    Timeout(String),
    /// A partition has more active parts than its table allows: merges are behind inserts.
    #[error("{0}")]
    TooManyParts(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Error::BadRequest(msg.into())
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<CoordError> for Error {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::NoSuchTable(name) => Error::UnknownTable(name),
            CoordError::TableExists(name) => Error::Conflict(format!("table `{name}` already exists")),
            CoordError::TableChanged { .. } => Error::Conflict(e.to_string()),
            CoordError::Unavailable(_) => Error::Unavailable(e.to_string()),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<PartError> for Error {
    fn from(e: PartError) -> Self {
        match e {
            PartError::MissingColumn { .. }
            | PartError::NullPartitionValue { .. }
            | PartError::UnsupportedPartitionType { .. } => Error::BadRequest(e.to_string()),
            other => Error::Internal(other.to_string()),
        }
    }
}
