/// Errors of the coordinator. `Unavailable` means the store could not be reached in time: for a
/// write the outcome is then uncertain, so re-read before concluding it failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("table `{0}` does not exist")]
    NoSuchTable(String),
    #[error("table `{0}` already exists")]
    TableExists(String),
    #[error(
        "table `{table}` changed (schema version {expected} is now {current}) while the request was running; retry it"
    )]
    TableChanged { table: String, expected: i64, current: i64 },
    #[error("revision {requested} has been compacted (oldest available: {compacted}); re-list and watch again")]
    Compacted { requested: i64, compacted: i64 },
    #[error("lease {0} does not exist or has expired")]
    LeaseExpired(i64),
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store error: {0}")]
    Backend(String),
    #[error("corrupt metadata under `{key}`: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<redb::Error> for CoordError {
    fn from(e: redb::Error) -> Self {
        CoordError::Backend(e.to_string())
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for CoordError {
            fn from(e: $t) -> Self { CoordError::Backend(e.to_string()) }
        }
    )*};
}
redb_errors!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);
