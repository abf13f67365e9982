use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};

use crate::PartError;

/// How many bytes of encoded rows are gathered before they are hashed.
const HASH_BUFFER_BYTES: usize = 64 * 1024;

/// The block id of one partition of an insert: a blake3 hash over the table, the partition,
/// the column names and types, and the rows in insert order.
///
/// Rows are encoded with Arrow's row format, which depends only on the values and not on how
/// the arrays happen to be laid out in memory, so the same rows parsed from JSON, CSV or
/// Parquet get the same id. With a client token (`insert_deduplication_token`) the id is the
/// hash of the token and the partition instead.
pub fn block_id(table: &str, partition: &str, batch: &RecordBatch, token: Option<&str>) -> Result<String, PartError> {
    Ok(BlockHasher::new(batch.schema_ref())?.hash(table, partition, batch, token)?.to_hex().to_string())
}

/// Hashes the blocks of one schema into their ids ([`block_id`]'s bytes exactly). What depends
/// only on the schema, the column names and types and the row encoder, is prepared once: for
/// an insert of a few rows it cost more than hashing the rows.
pub struct BlockHasher {
    schema: SchemaRef,
    /// Each column's name and type, as `hash_str` feeds them to the hasher.
    columns: Vec<u8>,
    /// `None` for a schema without columns.
    converter: Option<RowConverter>,
}

impl BlockHasher {
    pub fn new(schema: &SchemaRef) -> Result<BlockHasher, PartError> {
        let mut columns = Vec::new();
        for field in schema.fields() {
            push_str(&mut columns, field.name());
            push_str(&mut columns, &field.data_type().to_string());
        }
        let converter = if schema.fields().is_empty() {
            None
        } else {
            Some(RowConverter::new(schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?)
        };
        Ok(BlockHasher { schema: schema.clone(), columns, converter })
    }

    /// The id of `batch`, which must be of this hasher's schema.
    pub fn hash(
        &self,
        table: &str,
        partition: &str,
        batch: &RecordBatch,
        token: Option<&str>,
    ) -> Result<blake3::Hash, PartError> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"tandem-block-v1\0");
        hash_str(&mut hasher, table);
        hash_str(&mut hasher, partition);
        if let Some(token) = token {
            hasher.update(b"token\0");
            hash_str(&mut hasher, token);
            return Ok(hasher.finalize());
        }
        if !Arc::ptr_eq(batch.schema_ref(), &self.schema) && **batch.schema_ref() != *self.schema {
            return Err(PartError::Arrow(ArrowError::SchemaError(format!(
                "a block of schema {} hashed as one of {}",
                batch.schema_ref(),
                self.schema
            ))));
        }
        hasher.update(b"rows\0");
        hasher.update(&self.columns);
        hasher.update(&(batch.num_rows() as u64).to_le_bytes());
        if let Some(converter) = &self.converter {
            let rows = converter.convert_columns(batch.columns())?;
            // Each row is hashed as its length and its bytes. They are gathered into one buffer
            // first: blake3 hashes a large input several chunks at a time (SIMD), but a row of a
            // few dozen bytes one compression at a time, several times slower.
            // Sized for the rows when they are fewer: a small insert would otherwise pay for
            // zeroing fresh pages of a 64 KiB buffer it barely uses.
            let row_bytes = rows.size() + rows.num_rows() * size_of::<u64>();
            let mut buffer = Vec::with_capacity(row_bytes.min(HASH_BUFFER_BYTES));
            for row in rows.iter() {
                let bytes = row.as_ref();
                buffer.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                buffer.extend_from_slice(bytes);
                if buffer.len() >= HASH_BUFFER_BYTES {
                    hasher.update(&buffer);
                    buffer.clear();
                }
            }
            hasher.update(&buffer);
        }
        Ok(hasher.finalize())
    }
}

fn hash_str(hasher: &mut blake3::Hasher, s: &str) {
    hasher.update(&(s.len() as u64).to_le_bytes());
    hasher.update(s.as_bytes());
}

/// `hash_str`'s bytes, gathered to be hashed later.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(hosts: Vec<Option<&str>>, values: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(hosts)), Arc::new(Int64Array::from(values))])
            .unwrap()
    }

    #[test]
    fn same_rows_same_id_regardless_of_layout() {
        let a = batch(vec![Some("a"), None, Some("c")], vec![1, 2, 3]);
        let wide = batch(vec![Some("x"), Some("a"), None, Some("c")], vec![0, 1, 2, 3]).slice(1, 3);
        assert_eq!(block_id("t", "all", &a, None).unwrap(), block_id("t", "all", &wide, None).unwrap());
    }

    #[test]
    fn any_difference_changes_the_id() {
        let a = block_id("t", "all", &batch(vec![Some("a"), Some("b")], vec![1, 2]), None).unwrap();
        let reordered = block_id("t", "all", &batch(vec![Some("b"), Some("a")], vec![2, 1]), None).unwrap();
        let other_table = block_id("u", "all", &batch(vec![Some("a"), Some("b")], vec![1, 2]), None).unwrap();
        let null = block_id("t", "all", &batch(vec![Some("a"), None], vec![1, 2]), None).unwrap();
        assert_ne!(a, reordered);
        assert_ne!(a, other_table);
        assert_ne!(a, null);
    }

    /// Block ids are compared across nodes and versions (a retry after an upgrade must still
    /// be recognised), so the bytes hashed must never change.
    #[test]
    fn ids_are_stable_across_versions() {
        let rows = batch(vec![Some("a"), None, Some("c")], vec![1, 2, 3]);
        assert_eq!(
            block_id("t", "all", &rows, None).unwrap(),
            "696603a3534e2e8df52c00aef978ab347c953ff2489a8672d6386edf9ecfa7bc"
        );
        let many =
            batch((0..10_000).map(|i| Some(if i % 2 == 0 { "even" } else { "odd" })).collect(), (0..10_000).collect());
        assert_eq!(
            block_id("t", "202401", &many, None).unwrap(),
            "a12826c67bda9baf043460f879854f32cb083c63a1ed43d3cb564472155b06f5"
        );
    }

    #[test]
    fn a_hasher_refuses_a_block_of_another_schema() {
        let hasher = BlockHasher::new(batch(vec![Some("a")], vec![1]).schema_ref()).unwrap();
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        assert!(hasher.hash("t", "all", &other, None).is_err());
    }

    #[test]
    fn token_ids_depend_on_token_and_partition_only() {
        let one = batch(vec![Some("a")], vec![1]);
        let two = batch(vec![Some("b")], vec![2]);
        assert_eq!(block_id("t", "p", &one, Some("k")).unwrap(), block_id("t", "p", &two, Some("k")).unwrap());
        assert_ne!(block_id("t", "p", &one, Some("k")).unwrap(), block_id("t", "q", &one, Some("k")).unwrap());
    }
}
