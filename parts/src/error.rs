use std::path::PathBuf;

/// Errors of the part layer. Each says which part or file and what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error(transparent)]
    InvalidId(#[from] tandem_ids::InvalidPartId),
    #[error("column `{column}` named in the sort key or partition key is not in the block")]
    MissingColumn { column: String },
    #[error("partition column `{column}` has type {data_type}; partitioning needs a Date or DateTime column")]
    UnsupportedPartitionType { column: String, data_type: String },
    #[error("partition column `{column}` is NULL in row {row}; partition columns cannot be NULL")]
    NullPartitionValue { column: String, row: usize },
    #[error("part {id} at {path} is corrupt: {reason}; it was moved aside and is not served")]
    Corrupt { id: String, path: PathBuf, reason: String },
    #[error("part {part} is not sorted by its table's sort key, which every part is: it cannot be merged")]
    Unsorted { part: crate::PartId },
    #[error("part {id} is not in the local store")]
    NotFound { id: String },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet error: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("the outboard of part {part} is unusable: {reason}")]
    BadOutboard { part: crate::PartId, reason: String },
    #[error("bytes {range:?} of part {part} do not verify against its id ({reason}); they are not used")]
    Unverified { part: crate::PartId, range: std::ops::Range<u64>, reason: String },
}

impl PartError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PartError::Io { path: path.into(), source }
    }
}
