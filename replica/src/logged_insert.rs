//! A logged insert's payload in the insert log: which table and schema version it was decoded
//! under, its pieces (partition and block id) and their rows.
//!
//! Two layouts. Where every column is a fixed-width primitive, `Boolean`, `Utf8` or `Binary`
//! (what tables hold), the payload is written as bytes: the header, the schema (described once
//! per schema), then each piece's columns as their validity bits and buffers, as Arrow lays
//! them out in memory. Other schemas, and payloads written before December 2026, are a JSON
//! header followed by the rows as one Arrow IPC stream. Encoding a 10-row insert as IPC (a
//! flatbuffer message per batch) and its header as JSON took about 2.5 µs of CPU, a fifteenth
//! of what the node spent on the insert; the byte layout takes a fraction of that. The byte
//! layout is read back through `ArrayData`'s full validation: a payload that does not describe
//! valid arrays is an error, never a panic.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use tandem_coordinator::{AsyncBlockId, Revision};
use tandem_parts::BlockHasher;
use tandem_parts::arrow::array::{Array, ArrayData, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, make_array};
use tandem_parts::arrow::buffer::{BooleanBuffer, Buffer};
use tandem_parts::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tandem_parts::arrow::downcast_primitive_array;
use tandem_parts::arrow::ipc::reader::StreamReader;
use tandem_parts::arrow::ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions, StreamWriter, write_message,
};

use crate::error::Error;

/// The first four bytes of a payload in the byte layout. A JSON payload starts with its
/// header's length, which is never this.
const BYTE_LAYOUT: u32 = u32::MAX;
/// The byte layout's version, after `BYTE_LAYOUT`.
const BYTE_LAYOUT_VERSION: u8 = 1;

/// The header of a logged insert.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct LoggedInsert {
    pub(crate) table: String,
    pub(crate) created: Revision,
    pub(crate) version: Revision,
    pub(crate) pieces: Vec<LoggedPiece>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct LoggedPiece {
    pub(crate) partition: String,
    pub(crate) id: [u8; 16],
}

/// What hashing and logging inserts of one schema needs, built once per table and schema.
pub(crate) struct SchemaCodecs {
    framing: IpcFraming,
    hasher: BlockHasher,
    /// The schema as the byte layout writes it, when every column can be logged in it.
    byte_layout: Option<Vec<u8>>,
}

impl SchemaCodecs {
    pub(crate) fn new(schema: &SchemaRef) -> Result<SchemaCodecs, Error> {
        Ok(SchemaCodecs {
            framing: IpcFraming::new(schema)?,
            hasher: BlockHasher::new(schema).map_err(Error::internal)?,
            byte_layout: schema
                .fields()
                .iter()
                .all(|field| in_byte_layout(field.data_type()))
                .then(|| describe_schema(schema)),
        })
    }

    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.framing.schema
    }

    /// The block id of `rows` (of this schema), one partition of an insert into `table`: the
    /// content hash, or with `token` the hash of the token.
    pub(crate) fn block_id(
        &self,
        table: &str,
        partition: &str,
        rows: &RecordBatch,
        token: Option<&str>,
    ) -> Result<AsyncBlockId, Error> {
        Ok(AsyncBlockId::from_hash(self.hasher.hash(table, partition, rows, token)?.as_bytes()))
    }

    /// A logged insert's payload: `header`, then `batches` (one per piece, of this schema).
    pub(crate) fn encode(&self, header: &LoggedInsert, batches: &[impl Borrow<RecordBatch>]) -> Result<Vec<u8>, Error> {
        if header.pieces.len() != batches.len() {
            return Err(Error::internal(format!("{} pieces but {} batches", header.pieces.len(), batches.len())));
        }
        match &self.byte_layout {
            Some(schema) => encode_bytes(schema, header, batches),
            None => encode_ipc(header, batches, &self.framing),
        }
    }
}

/// The byte layout: `schema` (as `describe_schema` wrote it), the header, then each piece.
fn encode_bytes(schema: &[u8], header: &LoggedInsert, batches: &[impl Borrow<RecordBatch>]) -> Result<Vec<u8>, Error> {
    let rows_bytes: usize = batches.iter().map(|b| b.borrow().get_array_memory_size()).sum();
    let mut out = Vec::with_capacity(64 + header.table.len() + schema.len() + rows_bytes);
    out.extend_from_slice(&BYTE_LAYOUT.to_le_bytes());
    out.push(BYTE_LAYOUT_VERSION);
    put_bytes(&mut out, header.table.as_bytes());
    out.extend_from_slice(&header.created.to_le_bytes());
    out.extend_from_slice(&header.version.to_le_bytes());
    out.extend_from_slice(schema);
    put_len(&mut out, header.pieces.len());
    for (piece, batch) in header.pieces.iter().zip(batches) {
        let batch = batch.borrow();
        put_bytes(&mut out, piece.partition.as_bytes());
        out.extend_from_slice(&piece.id);
        put_len(&mut out, batch.num_rows());
        for column in batch.columns() {
            put_column(&mut out, column.as_ref())?;
        }
    }
    Ok(out)
}

/// A schema as the byte layout writes it: each field's name, nullability, type (as Arrow
/// spells it) and metadata, then the schema's metadata. Read back by `read_schema`; the IPC
/// schema message is not used for this because arrow-ipc panics on some damaged ones.
fn describe_schema(schema: &Schema) -> Vec<u8> {
    fn put_metadata(out: &mut Vec<u8>, metadata: &HashMap<String, String>) {
        let mut pairs: Vec<_> = metadata.iter().collect();
        pairs.sort();
        put_len(out, pairs.len());
        for (key, value) in pairs {
            put_bytes(out, key.as_bytes());
            put_bytes(out, value.as_bytes());
        }
    }
    let mut out = Vec::new();
    put_len(&mut out, schema.fields().len());
    for field in schema.fields() {
        put_bytes(&mut out, field.name().as_bytes());
        out.push(u8::from(field.is_nullable()));
        put_bytes(&mut out, field.data_type().to_string().as_bytes());
        put_metadata(&mut out, field.metadata());
    }
    put_metadata(&mut out, schema.metadata());
    out
}

fn read_schema(reader: &mut Reader<'_>) -> anyhow::Result<SchemaRef> {
    fn read_metadata(reader: &mut Reader<'_>) -> anyhow::Result<HashMap<String, String>> {
        (0..reader.u32()?).map(|_| Ok((reader.string()?, reader.string()?))).collect()
    }
    let fields = (0..reader.u32()?)
        .map(|_| {
            let name = reader.string()?;
            let nullable = reader.take(1)?.first() == Some(&1);
            let data_type: DataType = reader.string()?.parse()?;
            Ok(Field::new(name, data_type, nullable).with_metadata(read_metadata(reader)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new_with_metadata(fields, read_metadata(reader)?)))
}

/// The types whose arrays are their validity bits and buffers, with no children.
fn in_byte_layout(data_type: &DataType) -> bool {
    (data_type.is_primitive() && data_type.primitive_width().is_some())
        || matches!(data_type, DataType::Boolean | DataType::Utf8 | DataType::Binary)
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// A column's null count, its validity bits when it has nulls, then its buffers: the values
/// of a primitive, the value bits of a boolean, the offsets (from 0) and the bytes of a string
/// or binary column.
fn put_column(out: &mut Vec<u8>, array: &dyn Array) -> Result<(), Error> {
    let bits = |bits: &BooleanBuffer| -> Result<Buffer, Error> {
        let bytes = array.len().div_ceil(8);
        let sliced = bits.sliced();
        match sliced.len() >= bytes {
            true => Ok(sliced.slice_with_length(0, bytes)),
            false => Err(Error::internal(format!("{} bytes of bits for {} rows", sliced.len(), array.len()))),
        }
    };
    match array.nulls().filter(|nulls| nulls.null_count() > 0) {
        Some(nulls) => {
            put_len(out, nulls.null_count());
            put_bytes(out, bits(nulls.inner())?.as_slice());
        }
        None => put_len(out, 0),
    }
    fn offsets_and_values(out: &mut Vec<u8>, offsets: &[i32], values: &[u8]) {
        let (first, last) = (offsets.first().copied().unwrap_or(0), offsets.last().copied().unwrap_or(0));
        for offset in offsets {
            out.extend_from_slice(&(offset - first).to_le_bytes());
        }
        put_bytes(out, &values[first as usize..last as usize]);
    }
    downcast_primitive_array!(
        array => put_bytes(out, array.values().inner().as_slice()),
        DataType::Boolean => put_bytes(out, bits(array.as_boolean().values())?.as_slice()),
        DataType::Utf8 => {
            let strings = array.as_string::<i32>();
            offsets_and_values(out, strings.value_offsets(), strings.values().as_slice());
        }
        DataType::Binary => {
            let binary = array.as_binary::<i32>();
            offsets_and_values(out, binary.value_offsets(), binary.values().as_slice());
        }
        other => return Err(Error::internal(format!("a column of type {other} is not in the byte layout"))),
    );
    Ok(())
}

/// The Arrow IPC stream around one schema's batches: the schema message before them and the
/// end-of-stream marker after. Building the schema message (a flatbuffer) cost as much as
/// encoding a 10-row insert's rows, so it is built once per table and schema and copied.
struct IpcFraming {
    schema: SchemaRef,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl IpcFraming {
    fn new(schema: &SchemaRef) -> Result<IpcFraming, Error> {
        let mut stream = Vec::new();
        let mut writer = StreamWriter::try_new(&mut stream, schema).map_err(Error::internal)?;
        let head_len = writer.get_ref().len();
        writer.finish().map_err(Error::internal)?;
        drop(writer);
        let tail = stream.split_off(head_len);
        Ok(IpcFraming { schema: schema.clone(), head: stream, tail })
    }

    /// Appends `batches`, all of this framing's schema, to `out` as one IPC stream: the bytes
    /// a `StreamWriter` writes.
    fn write(&self, batches: &[impl Borrow<RecordBatch>], out: &mut Vec<u8>) -> Result<(), Error> {
        let options = IpcWriteOptions::default();
        let generator = IpcDataGenerator::default();
        let (mut dictionaries, mut context) = (DictionaryTracker::new(false), IpcWriteContext::default());
        out.extend_from_slice(&self.head);
        for batch in batches {
            let (dictionary_batches, rows) =
                generator.encode(batch.borrow(), &mut dictionaries, &options, &mut context).map_err(Error::internal)?;
            for message in dictionary_batches.into_iter().chain([rows]) {
                write_message(&mut *out, message, &options).map_err(Error::internal)?;
            }
        }
        out.extend_from_slice(&self.tail);
        Ok(())
    }
}

/// The JSON-and-IPC layout: the header's length and JSON, then the rows as one IPC stream.
fn encode_ipc(
    header: &LoggedInsert,
    batches: &[impl Borrow<RecordBatch>],
    framing: &IpcFraming,
) -> Result<Vec<u8>, Error> {
    let header = serde_json::to_vec(header).map_err(Error::internal)?;
    let mut payload = Vec::with_capacity(
        header.len()
            + 4
            + framing.head.len()
            + framing.tail.len()
            + batches.iter().map(|b| b.borrow().get_array_memory_size()).sum::<usize>(),
    );
    payload.extend_from_slice(&(header.len() as u32).to_le_bytes());
    payload.extend_from_slice(&header);
    if !batches.is_empty() {
        framing.write(batches, &mut payload)?;
    }
    Ok(payload)
}

/// A payload as `SchemaCodecs::encode` wrote it, in either layout: the header and one batch per
/// piece.
pub(crate) fn decode_logged(payload: &[u8]) -> anyhow::Result<(LoggedInsert, Vec<RecordBatch>)> {
    let mut reader = Reader(payload);
    let first = reader.u32()?;
    if first == BYTE_LAYOUT {
        return decode_bytes(reader);
    }
    let header: LoggedInsert = serde_json::from_slice(reader.take(first as usize)?)?;
    let batches = StreamReader::try_new(std::io::Cursor::new(reader.0), None)?.collect::<Result<Vec<_>, _>>()?;
    ensure!(batches.len() == header.pieces.len(), "{} pieces but {} batches", header.pieces.len(), batches.len());
    Ok((header, batches))
}

fn decode_bytes(mut reader: Reader<'_>) -> anyhow::Result<(LoggedInsert, Vec<RecordBatch>)> {
    let version = reader.take(1)?.first().copied().unwrap_or_default();
    ensure!(
        version == BYTE_LAYOUT_VERSION,
        "a logged insert of layout version {version}, which this tandem cannot read"
    );
    let table = reader.string()?;
    let (created, version) = (reader.i64()?, reader.i64()?);
    let schema = read_schema(&mut reader)?;
    let pieces = reader.u32()? as usize;
    let mut header = LoggedInsert { table, created, version, pieces: Vec::new() };
    let mut batches = Vec::new();
    for _ in 0..pieces {
        let partition = reader.string()?;
        let id: [u8; 16] = reader.take(16)?.try_into()?;
        let rows = reader.u32()? as usize;
        let columns = schema
            .fields()
            .iter()
            .map(|field| read_column(&mut reader, field.data_type(), rows))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        batches.push(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?);
        header.pieces.push(LoggedPiece { partition, id });
    }
    ensure!(reader.0.is_empty(), "{} bytes after the last piece", reader.0.len());
    Ok((header, batches))
}

fn read_column(reader: &mut Reader<'_>, data_type: &DataType, rows: usize) -> anyhow::Result<ArrayRef> {
    ensure!(in_byte_layout(data_type), "a column of type {data_type} in the byte layout");
    let nulls = match reader.u32()? {
        0 => None,
        _ => {
            let bits = reader.bytes()?;
            ensure!(bits.len() == rows.div_ceil(8), "{} bytes of validity for {rows} rows", bits.len());
            Some(Buffer::from_slice_ref(bits))
        }
    };
    let buffers = match data_type {
        DataType::Utf8 | DataType::Binary => {
            let offsets = reader.take((rows + 1) * size_of::<i32>())?;
            vec![Buffer::from_slice_ref(offsets), Buffer::from_slice_ref(reader.bytes()?)]
        }
        _ => vec![Buffer::from_slice_ref(reader.bytes()?)],
    };
    // Checked in full: lengths, offsets, UTF-8 and the validity bits' count.
    Ok(make_array(ArrayData::try_new(data_type.clone(), rows, nulls, 0, buffers, Vec::new())?))
}

/// Reads a payload front to back; running out of bytes is an error.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> anyhow::Result<&'a [u8]> {
        let Some((taken, rest)) = self.0.split_at_checked(len) else {
            bail!("the payload ends {} bytes short", len - self.0.len());
        };
        self.0 = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn i64(&mut self) -> anyhow::Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into()?))
    }

    fn bytes(&mut self) -> anyhow::Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> anyhow::Result<String> {
        String::from_utf8(self.bytes()?.to_vec()).context("a name that is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use tandem_parts::arrow::array::{
        BinaryArray, BooleanArray, Float64Array, Int64Array, LargeStringArray, StringArray, TimestampSecondArray,
        UInt8Array,
    };
    use tandem_parts::arrow::datatypes::TimeUnit;

    use super::*;

    fn header(pieces: usize) -> LoggedInsert {
        LoggedInsert {
            table: "t".into(),
            created: 3,
            version: 5,
            pieces: (0..pieces).map(|p| LoggedPiece { partition: format!("20240{p}"), id: [p as u8; 16] }).collect(),
        }
    }

    /// A row of `table_batches`: ts, id, host, v, raw, flag, ok.
    type TableRow<'a> = (i64, Option<i64>, Option<&'a str>, Option<f64>, Option<&'a [u8]>, u8, Option<bool>);

    fn table_batches() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, Some("UTC".into())), false),
            Field::new("id", DataType::Int64, true),
            Field::new("host", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
            Field::new("raw", DataType::Binary, true),
            Field::new("flag", DataType::UInt8, false),
            Field::new("ok", DataType::Boolean, true),
        ]));
        let batch = |rows: &[TableRow<'_>]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(
                        TimestampSecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>()).with_timezone("UTC"),
                    ),
                    Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                    Arc::new(StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
                    Arc::new(Float64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
                    Arc::new(BinaryArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
                    Arc::new(UInt8Array::from(rows.iter().map(|r| r.5).collect::<Vec<_>>())),
                    Arc::new(BooleanArray::from(rows.iter().map(|r| r.6).collect::<Vec<_>>())),
                ],
            )
            .expect("a valid batch")
        };
        let nine: Vec<_> = (0..9)
            .map(|i| (i, (i % 3 != 0).then_some(i * 10), Some("h"), None, None, 1, (i % 4 != 0).then_some(i % 2 == 0)))
            .collect();
        let batches = vec![
            batch(&[
                (1, Some(1), Some("a"), Some(0.5), Some(b"\x00\xff"), 0, Some(true)),
                (2, None, None, None, None, 1, None),
            ]),
            batch(&nine),
            // A slice: arrays that start past their buffers' first value and validity byte.
            batch(&nine).slice(3, 5),
            batch(&[]),
        ];
        (schema, batches)
    }

    #[test]
    fn a_table_schema_is_logged_in_the_byte_layout_and_read_back() {
        let (schema, batches) = table_batches();
        let codecs = SchemaCodecs::new(&schema).expect("codecs");
        let payload = codecs.encode(&header(batches.len()), &batches).expect("encoded");
        assert_eq!(payload[..4], BYTE_LAYOUT.to_le_bytes());
        let (read, read_batches) = decode_logged(&payload).expect("decoded");
        assert_eq!(read, header(batches.len()));
        assert_eq!(read_batches, batches);
        assert_eq!(read_batches[0].schema(), schema, "the schema, time zone included, comes back");
    }

    #[test]
    fn a_damaged_payload_is_an_error_not_a_panic() {
        let (schema, batches) = table_batches();
        let payload = SchemaCodecs::new(&schema).expect("codecs").encode(&header(batches.len()), &batches).expect("ok");
        for len in 0..payload.len() {
            assert!(decode_logged(&payload[..len]).is_err(), "a payload cut to {len} bytes");
        }
        let mut flipped = 0;
        for at in 0..payload.len() {
            let mut damaged = payload.clone();
            damaged[at] ^= 0x5a;
            // Some bytes (values, validity bits) may change and still read: never a panic.
            if decode_logged(&damaged).is_err() {
                flipped += 1;
            }
        }
        assert!(flipped > 0);
    }

    #[test]
    fn other_schemas_are_logged_as_an_ipc_stream_a_stream_writer_writes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("text", DataType::LargeUtf8, true),
        ]));
        let batch = |ids: &[i64], texts: &[Option<&str>]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(ids.to_vec())), Arc::new(LargeStringArray::from(texts.to_vec()))],
            )
            .expect("a valid batch")
        };
        let batches = [batch(&[1, 2, 3], &[Some("a"), None, Some("ccc")]), batch(&[4], &[Some("d")])];
        let payload = SchemaCodecs::new(&schema).expect("codecs").encode(&header(2), &batches).expect("encoded");

        let mut expected = Vec::new();
        let mut writer = StreamWriter::try_new(&mut expected, &schema).expect("writer");
        for batch in &batches {
            writer.write(batch).expect("written");
        }
        writer.finish().expect("finished");
        drop(writer);
        assert!(payload.ends_with(&expected), "the rows are the stream a StreamWriter writes");

        let (read, read_batches) = decode_logged(&payload).expect("decoded");
        assert_eq!(read, header(2));
        assert_eq!(read_batches, batches);
    }

    /// Payloads logged before the byte layout (JSON and IPC, for every schema) still replay.
    #[test]
    fn a_payload_in_the_ipc_layout_is_read_whatever_its_schema() {
        let (schema, batches) = table_batches();
        let framing = IpcFraming::new(&schema).expect("framing");
        let payload = encode_ipc(&header(batches.len()), &batches, &framing).expect("encoded");
        let (read, read_batches) = decode_logged(&payload).expect("decoded");
        assert_eq!(read, header(batches.len()));
        assert_eq!(read_batches, batches);
    }
}
