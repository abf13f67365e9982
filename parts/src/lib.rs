//! tandem-parts owns the part format and the local part store.
//!
//! A *part* is an immutable set of rows of one table and one partition, stored as a
//! compressed Parquet file sorted by the table's `ORDER BY` key. Its identity is
//! [`PartId`]: the blake3 hash of the file's bytes, so the same bytes have the same name on
//! every node and in every object store, and any reader can verify what it got.
//!
//! Main types:
//! - [`PartitionSpec`] and [`split_by_partition`]: an insert block becomes one block per partition.
//! - [`block_id`]: the canonical content hash of a block, the unit of insert deduplication.
//! - [`encode_part`]: sorted Parquet bytes, their [`PartId`] and column statistics.
//! - [`PartManifest`]: the small description of a part that the coordinator stores.
//! - [`LocalPartStore`]: the content-addressed directory of part files (atomic writes,
//!   verification on open, quarantine of corrupt files).
//! - [`ObjectMirror`]: the copy of parts in an S3-compatible bucket, one object per part named
//!   by its hash, written with create-only puts and verified on every read.
//! - [`PartOutboard`]: the blake3 tree of a part down to 16 KiB groups, which checks any byte
//!   range read from the bucket against the part id.
//! - [`select_merge`] and [`merge_parts`]: size-tiered merge selection and the merged part,
//!   without the rows a [`TtlFilter`] expires.
//!
//! This crate knows nothing of etcd, HTTP or gRPC: it turns Arrow batches into verified files
//! and keeps them, locally and in an object store.

mod block;
mod codec;
mod column_stats;
mod encode;
mod error;
mod manifest;
mod merge;
mod object_mirror;
mod outboard;
mod partition;
mod store;

pub use arrow;
pub use parquet;

pub use block::{BlockHasher, block_id};
pub use codec::{Codec, UnknownCodec};
pub use encode::{EncodedPart, PartMetadata, ROW_GROUP_ROWS, WrittenPart, encode_part};
pub use error::PartError;
pub use manifest::{ColumnStats, PART_FORMAT_VERSION, PartManifest};
pub use merge::{MergeCandidate, MergePlan, MergePolicy, MergeSource, TtlFilter, merge_parts, select_merge};
pub use object_mirror::{MirrorError, MirroredObject, ObjectMirror, S3Settings, UploadOutcome};
pub use outboard::{PartOutboard, VERIFIED_BLOCK_BYTES};
pub use partition::{PartitionSpec, split_by_partition};
pub use store::{LocalPartStore, PartWriter, UnsyncedPart, VerifyOutcome};
pub use tandem_ids::PartId;
