//! The front half of an insert: decode the body under the table's schema and hand the rows to
//! the replica; when the schema changes before the parts are registered, decode again under
//! the new one. With the table's `auto_add_columns`, new fields of the body become columns first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tandem_replica::metrics::InsertStage;
use tandem_replica::schema::TableDef;
use tandem_replica::{
    AlterAction, AsyncInsertOptions, Error as ReplicaError, InsertOptions, InsertSummary, Quorum, Replica,
};

use crate::error::NodeError;
use crate::formats::{Format, InputOptions, decode_insert, new_columns};

/// Per-request insert settings (URL parameters).
#[derive(Clone, Debug)]
pub struct InsertSettings {
    pub input: InputOptions,
    pub quorum: Quorum,
    pub options: InsertOptions,
    /// `async_insert` as the request set it (None: the table's, then the server's).
    pub async_insert: Option<bool>,
    pub buffering: AsyncInsertOptions,
}

/// Bodies up to this size are decoded on the request's own task.
const INLINE_DECODE_BYTES: usize = 16 * 1024;

/// How long an insert keeps re-decoding itself under newer schemas before giving up (409).
const SCHEMA_RACE_BUDGET: Duration = Duration::from_secs(30);

pub async fn insert(
    replica: &Replica,
    table: &str,
    columns: Option<&[String]>,
    format: Format,
    data: Bytes,
    settings: &InsertSettings,
) -> Result<InsertSummary, NodeError> {
    replica.accepts_inserts()?;
    let quorum = replica.quorum_target(settings.quorum).await?;
    let mut columns_added = false;
    // A schema change between reading the schema and registering the parts makes the
    // registration fail; the insert is then decoded again under the new schema. Every retry
    // sees a newer schema, so it goes on while schema changes keep coming, within a time budget
    // from the first attempt's start.
    let mut first_attempt = None;
    loop {
        // Only the definition is taken, not the table's state: a request holding the state would
        // make the catalog copy it to apply this very insert.
        let Some((def, schema, version)) = replica.table_definition(table) else {
            return Err(NodeError::unknown_table(table));
        };
        if def.settings.auto_add_columns && columns.is_none() && !columns_added {
            add_new_columns(replica, table, def, format, &data).await?;
            columns_added = true;
            continue;
        }
        // Decoding touches every row: off the runtime, unless the body is so small that the hop
        // to a blocking thread would cost more than decoding it (many small inserts).
        let decoding = Instant::now();
        let started = *first_attempt.get_or_insert(decoding);
        let rows = if data.len() <= INLINE_DECODE_BYTES {
            decode_insert(format, &data, &def, &schema, columns, settings.input)?
        } else {
            let (decode_def, data, names, input) =
                (def.clone(), data.clone(), columns.map(<[String]>::to_vec), settings.input);
            tokio::task::spawn_blocking(move || {
                decode_insert(format, &data, &decode_def, &schema, names.as_deref(), input)
            })
            .await
            .map_err(NodeError::internal)??
        };
        replica.metrics().insert_stage(InsertStage::Decode, decoding);
        if replica.async_insert_enabled(&def, settings.async_insert) {
            // A buffered insert keeps the schema it was decoded under: its flush registers
            // parts that say so, which readers map by column id like any older part.
            return Ok(replica
                .insert_async(def, version, rows, &settings.options, &settings.buffering, quorum)
                .await?);
        }
        // Boxed, as is the schema change below (2 and 3.3 KB futures): inline, they would make
        // every buffered insert's future as large, and a future is copied on each step down.
        match Box::pin(replica.insert(&def, version, rows, &settings.options, quorum)).await {
            Err(ReplicaError::SchemaChanged { .. }) if started.elapsed() < SCHEMA_RACE_BUDGET => {
                tracing::info!(%table, "schema changed during insert; retrying under the new schema");
            }
            other => return Ok(other?),
        }
    }
}

/// For a table with `auto_add_columns` (an insert that names no columns), adds the fields the
/// body brings that the table lacks, through the same compare-and-swap as `ALTER TABLE ... ADD
/// COLUMN IF NOT EXISTS` (so two inserts that infer different types for one new field: one
/// wins, the other gets a 409).
async fn add_new_columns(
    replica: &Replica,
    table: &str,
    def: Arc<TableDef>,
    format: Format,
    data: &Bytes,
) -> Result<(), NodeError> {
    let data = data.clone();
    let new =
        tokio::task::spawn_blocking(move || new_columns(format, &data, &def)).await.map_err(NodeError::internal)??;
    if new.is_empty() {
        return Ok(());
    }
    let actions: Vec<AlterAction> =
        new.into_iter().map(|column| AlterAction::AddColumn { column, if_not_exists: true, position: None }).collect();
    Box::pin(replica.alter(table, &actions, false)).await?;
    Ok(())
}

/// An insert's answer body: its summary exactly as serde writes it (the tests compare them),
/// with the keys written as they are, not escaped one by one, and the numbers by itoa. Serde's
/// pass was 3% of a small insert's instructions. The parts and the quorum, when there are any,
/// and the strings are written by serde.
pub fn answer_body(summary: &InsertSummary) -> Result<Vec<u8>, serde_json::Error> {
    let mut body = Vec::with_capacity(160);
    let mut number = itoa::Buffer::new();
    body.extend_from_slice(b"{\"table\":");
    serde_json::to_writer(&mut body, &summary.table)?;
    body.extend_from_slice(b",\"rows_written\":");
    body.extend_from_slice(number.format(summary.rows_written).as_bytes());
    body.extend_from_slice(b",\"rows_deduplicated\":");
    body.extend_from_slice(number.format(summary.rows_deduplicated).as_bytes());
    body.extend_from_slice(if summary.deduplicated { b",\"deduplicated\":true" } else { b",\"deduplicated\":false" });
    body.extend_from_slice(b",\"parts\":");
    if summary.parts.is_empty() {
        body.extend_from_slice(b"[]");
    } else {
        serde_json::to_writer(&mut body, &summary.parts)?;
    }
    body.extend_from_slice(b",\"revision\":");
    body.extend_from_slice(number.format(summary.revision).as_bytes());
    if let Some(quorum) = &summary.quorum {
        body.extend_from_slice(b",\"quorum\":");
        serde_json::to_writer(&mut body, quorum)?;
    }
    body.extend_from_slice(b",\"acknowledged\":");
    serde_json::to_writer(&mut body, &summary.acknowledged)?;
    body.push(b'}');
    Ok(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tandem_replica::{Acknowledged, PartId, PartSummary, QuorumSummary};

    use super::*;

    #[test]
    fn the_answer_body_is_what_serde_writes() {
        let logged = InsertSummary {
            table: "events".into(),
            rows_written: 10,
            rows_deduplicated: 0,
            deduplicated: false,
            parts: Vec::new(),
            revision: 42,
            quorum: None,
            acknowledged: Acknowledged::Logged,
        };
        let part = |n: u8| PartSummary {
            part: format!("{n:02x}").repeat(32).parse::<PartId>().unwrap(),
            partition: format!("2024{n:02}"),
            rows: u64::MAX,
            deduplicated: n.is_multiple_of(2),
            revision: i64::MAX,
        };
        let registered = InsertSummary {
            table: "a \"quoted\" \\ tablé\n".into(),
            rows_written: 0,
            rows_deduplicated: 7,
            deduplicated: true,
            parts: vec![part(1), part(2)],
            revision: 0,
            quorum: Some(QuorumSummary { required: 2, holders: vec!["n1".into(), "n2".into()] }),
            acknowledged: Acknowledged::Registered,
        };
        for summary in [logged, registered] {
            assert_eq!(
                String::from_utf8(answer_body(&summary).unwrap()).unwrap(),
                serde_json::to_string(&summary).unwrap()
            );
        }
    }
}
