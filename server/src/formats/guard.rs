//! Checks that run before a decoder sees a body, so that no body can make a decoder recurse
//! without bound or allocate what the body only claims to hold; and the budget of rows and
//! bytes an insert may decode to.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::{
    DateUnit, MessageHeader, Precision, Schema as IpcSchema, TimeUnit as IpcTimeUnit, Type as IpcType, root_as_message,
};

use crate::error::NodeError;
use crate::limits::MAX_JSON_DEPTH;

/// Refuses JSON nested deeper than [`MAX_JSON_DEPTH`], naming the line and column where the
/// limit is crossed. One linear pass over the bytes, strings skipped.
pub fn check_json_depth(data: &[u8]) -> Result<(), NodeError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut line, mut line_start) = (1usize, 0usize);
    for (i, &b) in data.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(NodeError::bad_request(format!(
                        "line {line}, column {}: JSON nested deeper than {MAX_JSON_DEPTH} levels; a row is an object of \
                         scalar values",
                        i - line_start + 1
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The messages of an Arrow IPC file (`ARROW1`, padding, the stream's messages, the footer, its
/// length, `ARROW1`), to be read as a stream: the footer only indexes them.
pub fn arrow_file_messages(data: &[u8]) -> Result<bytes::Bytes, NodeError> {
    const MAGIC: &[u8] = b"ARROW1";
    let bad = |what: &str| NodeError::bad_request(format!("the body is not an Arrow IPC file: {what}"));
    let len = data.len();
    if len < 18 || !data.starts_with(MAGIC) || !data.ends_with(MAGIC) {
        return Err(bad("it does not start and end with ARROW1"));
    }
    let footer_len: [u8; 4] =
        data.get(len - 10..len - 6).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("no footer"))?;
    let footer_len = usize::try_from(i32::from_le_bytes(footer_len)).map_err(|_| bad("a negative footer length"))?;
    let end = (len - 10)
        .checked_sub(footer_len)
        .filter(|end| *end >= 8)
        .ok_or_else(|| bad("the footer is longer than the file"))?;
    let messages = data.get(8..end).ok_or_else(|| bad("no messages"))?;
    // Writers may pad the magic to a wider alignment (arrow-rs: 64 bytes) with zeros; messages
    // start 8-byte aligned, so the padding is whole 8-byte words.
    let padding = messages.iter().take_while(|b| **b == 0).count() / 8 * 8;
    Ok(bytes::Bytes::copy_from_slice(messages.get(padding..).unwrap_or_default()))
}

/// Walks the messages of an Arrow IPC stream and checks every length they declare against the
/// bytes that are really there, before the reader allocates for them; a record batch's row
/// count and compressed buffers' decompressed sizes are held to the insert's budget.
pub fn check_ipc_stream(data: &[u8], budget: &Budget) -> Result<(), NodeError> {
    const CONTINUATION: u32 = 0xFFFF_FFFF;
    let bad = |what: String| NodeError::bad_request(format!("the body is not a valid Arrow IPC stream: {what}"));
    let mut pos = 0usize;
    let (mut rows, mut decompressed) = (0u64, 0u64);
    // Per column of the stream's schema: its dictionary id and its buffers.
    let mut layout: Vec<Column> = Vec::new();
    loop {
        let word = |at: usize| -> Option<u32> {
            let bytes: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(bytes))
        };
        if pos == data.len() {
            return Ok(());
        }
        let Some(first) = word(pos) else {
            return Err(bad(format!("{} stray bytes at offset {pos}", data.len() - pos)));
        };
        pos += 4;
        let meta_len = if first == CONTINUATION {
            let len = word(pos).ok_or_else(|| bad(format!("truncated message length at offset {pos}")))?;
            pos += 4;
            len
        } else {
            first
        };
        if meta_len == 0 {
            return Ok(());
        }
        let meta_len = meta_len as usize;
        let remaining = data.len() - pos;
        if meta_len > remaining {
            return Err(bad(format!(
                "a message header declares {meta_len} bytes at offset {pos} but only {remaining} bytes follow"
            )));
        }
        let meta = data.get(pos..pos + meta_len).unwrap_or_default();
        let message =
            root_as_message(meta).map_err(|e| bad(format!("malformed message header at offset {pos}: {e}")))?;
        pos += meta_len;
        let body_len = usize::try_from(message.bodyLength()).map_err(|_| bad("a negative body length".into()))?;
        let remaining = data.len() - pos;
        if body_len > remaining {
            return Err(bad(format!(
                "a message declares a {body_len}-byte body at offset {pos} but only {remaining} bytes follow"
            )));
        }
        let body = data.get(pos..pos + body_len).unwrap_or_default();
        if let Some(schema) = message.header_as_schema() {
            layout = check_ipc_schema(schema).map_err(&bad)?;
        }
        let batch = match message.header_type() {
            MessageHeader::RecordBatch => message.header_as_record_batch(),
            MessageHeader::DictionaryBatch => message.header_as_dictionary_batch().and_then(|d| d.data()),
            _ => None,
        };
        if let Some(batch) = batch {
            // A dictionary batch holds one column: the values of the dictionary it names.
            let columns: Vec<&Buffers> = match message.header_as_dictionary_batch() {
                Some(dictionary) => {
                    layout.iter().filter(|c| c.dictionary == Some(dictionary.id())).map(|c| &c.values).take(1).collect()
                }
                None => layout.iter().map(|c| c.batch_buffers()).collect(),
            };
            check_buffers(&batch, &columns).map_err(&bad)?;
            let length = u64::try_from(batch.length()).map_err(|_| bad("a negative row count".into()))?;
            if message.header_type() == MessageHeader::RecordBatch {
                rows = rows.saturating_add(length);
                budget.check_rows(rows)?;
            }
            for buffer in batch.buffers().into_iter().flat_map(|buffers| buffers.iter()) {
                let (offset, length) = (buffer.offset(), buffer.length());
                let end = offset.checked_add(length).and_then(|end| usize::try_from(end).ok());
                if offset < 0 || length < 0 || end.is_none_or(|end| end > body_len) {
                    return Err(bad(format!("a buffer at {offset}+{length} lies outside its {body_len}-byte body")));
                }
                // A compressed buffer starts with its decompressed length (-1: stored as is).
                if batch.compression().is_some() && length >= 8 {
                    let start = offset as usize;
                    let declared: [u8; 8] =
                        body.get(start..start + 8).and_then(|b| b.try_into().ok()).unwrap_or_default();
                    let declared = i64::from_le_bytes(declared);
                    let size = if declared < 0 { length as u64 } else { declared as u64 };
                    decompressed = decompressed.saturating_add(size);
                    budget.check_bytes(decompressed)?;
                }
            }
        }
        pos += body_len;
    }
}

/// The column types an insert may bring in an Arrow stream: flat columns of the types tandem
/// stores (and strings or binary it can convert from). Everything else is refused before the
/// IPC reader sees it, because its schema conversion panics on types or widths it does not
/// know.
/// The buffers of one column in a record batch: whether it has a validity bitmap, then the
/// element width of each further buffer (1 for bytes and bits).
#[derive(Clone, Debug, Default)]
struct Buffers {
    validity: bool,
    widths: Vec<usize>,
}

/// One column of an IPC stream's schema.
struct Column {
    dictionary: Option<i64>,
    /// A dictionary-encoded column's indices in record batches.
    indices: Buffers,
    /// The values: of the column, or of its dictionary in dictionary batches.
    values: Buffers,
}

impl Column {
    fn batch_buffers(&self) -> &Buffers {
        if self.dictionary.is_some() { &self.indices } else { &self.values }
    }
}

fn check_ipc_schema(schema: IpcSchema<'_>) -> Result<Vec<Column>, String> {
    let fields = schema.fields().ok_or_else(|| "a schema without fields".to_string())?;
    let mut layout = Vec::with_capacity(fields.len());
    for field in fields.iter() {
        let name = field.name().unwrap_or_default();
        if field.children().is_some_and(|children| !children.is_empty()) {
            return Err(format!("column `{name}` is nested; tandem columns hold scalar values"));
        }
        if let Some(dictionary) = field.dictionary() {
            let index_ok = dictionary.indexType().is_some_and(|index| matches!(index.bitWidth(), 8 | 16 | 32 | 64));
            if !index_ok {
                return Err(format!("column `{name}` has a dictionary without a valid integer index type"));
            }
        }
        let byte_width = |bits: i32| usize::try_from(bits / 8).unwrap_or(1).max(1);
        let widths = match field.type_type() {
            IpcType::Null => None,
            IpcType::Utf8 | IpcType::Binary => Some(vec![4, 1]),
            IpcType::LargeUtf8 | IpcType::LargeBinary => Some(vec![8, 1]),
            IpcType::Int => Some(vec![byte_width(field.type_as_int().map_or(8, |i| i.bitWidth()))]),
            IpcType::FloatingPoint => Some(vec![match field.type_as_floating_point().map(|f| f.precision()) {
                Some(Precision::HALF) => 2,
                Some(Precision::SINGLE) => 4,
                _ => 8,
            }]),
            IpcType::Date => {
                Some(vec![if field.type_as_date().is_some_and(|d| d.unit() == DateUnit::DAY) { 4 } else { 8 }])
            }
            IpcType::Timestamp => Some(vec![8]),
            _ => Some(vec![1]),
        };
        let values = widths.map(|widths| Buffers { validity: true, widths }).unwrap_or_default();
        let dictionary = field.dictionary();
        let index_width = dictionary.and_then(|d| d.indexType()).map_or(4, |index| byte_width(index.bitWidth()));
        layout.push(Column {
            dictionary: dictionary.map(|d| d.id()),
            indices: Buffers { validity: true, widths: vec![index_width] },
            values,
        });
        let supported = match field.type_type() {
            IpcType::Null
            | IpcType::Bool
            | IpcType::Utf8
            | IpcType::LargeUtf8
            | IpcType::Binary
            | IpcType::LargeBinary => true,
            IpcType::Int => field.type_as_int().is_some_and(|int| matches!(int.bitWidth(), 8 | 16 | 32 | 64)),
            IpcType::FloatingPoint => field.type_as_floating_point().is_some_and(|float| {
                matches!(float.precision(), Precision::HALF | Precision::SINGLE | Precision::DOUBLE)
            }),
            IpcType::Date => {
                field.type_as_date().is_some_and(|date| matches!(date.unit(), DateUnit::DAY | DateUnit::MILLISECOND))
            }
            IpcType::Timestamp => field.type_as_timestamp().is_some_and(|ts| {
                matches!(
                    ts.unit(),
                    IpcTimeUnit::SECOND | IpcTimeUnit::MILLISECOND | IpcTimeUnit::MICROSECOND | IpcTimeUnit::NANOSECOND
                )
            }),
            _ => false,
        };
        if !supported {
            return Err(format!(
                "column `{name}` has Arrow type {:?}, which an insert cannot hold (integers, floats, strings, booleans, \
                 dates and timestamps)",
                field.type_type()
            ));
        }
    }
    Ok(layout)
}

/// Checks each column's field node and buffers in a record batch against what the IPC reader
/// assumes without checking (it asserts, and so panics): a validity bitmap as long as the
/// column, and typed buffers (offsets, dictionary indices, values) whose length is a whole
/// number of elements. `columns` holds each column's buffers, in schema order.
fn check_buffers(batch: &datafusion::arrow::ipc::RecordBatch<'_>, columns: &[&Buffers]) -> Result<(), String> {
    let nodes = batch.nodes().ok_or_else(|| "a record batch without field nodes".to_string())?;
    let buffers = batch.buffers().ok_or_else(|| "a record batch without buffers".to_string())?;
    let mut next = 0usize;
    let mut buffer = |column: usize| {
        let found = (next < buffers.len()).then(|| buffers.get(next).length());
        next += 1;
        found.ok_or_else(|| format!("column {} has fewer buffers than its type needs", column + 1))
    };
    for (column, layout) in columns.iter().enumerate() {
        if column >= nodes.len() {
            return Err(format!("the record batch has {} field nodes for {} columns", nodes.len(), columns.len()));
        }
        let node = nodes.get(column);
        let (length, nulls) = (node.length(), node.null_count());
        if length < 0 || nulls < 0 || nulls > length {
            return Err(format!("column {} declares {nulls} nulls among {length} values", column + 1));
        }
        if layout.validity {
            let validity = buffer(column)?;
            if nulls > 0 && validity.saturating_mul(8) < length {
                return Err(format!("column {} has a {validity}-byte validity bitmap for {length} values", column + 1));
            }
        }
        for width in &layout.widths {
            let bytes = buffer(column)?;
            if *width > 1 && bytes % (*width as i64) != 0 {
                return Err(format!("column {} has a {bytes}-byte buffer of {width}-byte values", column + 1));
            }
        }
    }
    Ok(())
}

/// Checks the byte ranges a Parquet footer declares for its column chunks: the reader asserts
/// (panics) on a negative one, and one past the end of the file can only be a lie.
pub fn check_parquet_metadata(
    metadata: &datafusion::parquet::file::metadata::ParquetMetaData,
    file_len: usize,
) -> Result<(), NodeError> {
    let bad = |what: String| NodeError::bad_request(format!("the body is not a readable Parquet file: {what}"));
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for (c, chunk) in group.columns().iter().enumerate() {
            let start = chunk.dictionary_page_offset().unwrap_or(chunk.data_page_offset());
            let (data, length) = (chunk.data_page_offset(), chunk.compressed_size());
            let end = start.checked_add(length).and_then(|end| usize::try_from(end).ok());
            if start < 0 || data < 0 || length < 0 || end.is_none_or(|end| end > file_len) {
                return Err(bad(format!(
                    "row group {g}, column {c} declares bytes {start}..+{length}, outside the {file_len}-byte file"
                )));
            }
        }
    }
    Ok(())
}

/// Runs a third-party decoder over a body. The checks above cover every panic fuzzing found
/// in the Arrow IPC reader; the Parquet page decoders still assert on some malformed pages
/// (definition levels past their buffer, found by `fuzz::parquet_bodies`), which cannot be
/// checked without decoding the pages. A panic there is the body's fault: it answers 400 and
/// is logged, and the node goes on.
pub fn contain_panics<T>(what: &str, decode: impl FnOnce() -> Result<T, NodeError>) -> Result<T, NodeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let message = crate::error::panic_message(panic.as_ref());
        tracing::warn!(decoder = what, panic = %message, "a decoder panicked on a malformed body");
        Err(NodeError::bad_request(format!(
            "the body is not a readable {what} stream: the decoder failed on it ({message})"
        )))
    })
}

/// How many rows and bytes an insert may still decode to; checked as batches are decoded, so
/// a body is refused as soon as it crosses a limit rather than after it was all in memory.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_rows: u64,
    pub max_bytes: u64,
}

impl Default for Budget {
    fn default() -> Self {
        let limits = crate::limits::Limits::default();
        Budget { max_rows: limits.max_insert_rows, max_bytes: limits.max_insert_bytes }
    }
}

impl Budget {
    pub fn check_rows(&self, rows: u64) -> Result<(), NodeError> {
        if rows > self.max_rows {
            return Err(NodeError::InsertTooLarge(format!(
                "the insert holds more than max_insert_rows = {} rows; nothing was stored. Split it into smaller inserts",
                self.max_rows
            )));
        }
        Ok(())
    }

    pub fn check_bytes(&self, bytes: u64) -> Result<(), NodeError> {
        if bytes > self.max_bytes {
            return Err(NodeError::InsertTooLarge(format!(
                "the insert decodes to more than max_insert_bytes = {} bytes; nothing was stored. Split it into \
                 smaller inserts",
                self.max_bytes
            )));
        }
        Ok(())
    }

    /// Collects decoded batches, refusing once their rows or memory cross the budget.
    pub fn collect<E>(
        &self,
        batches: impl Iterator<Item = Result<RecordBatch, E>>,
        error: impl Fn(E) -> NodeError,
    ) -> Result<Vec<RecordBatch>, NodeError> {
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut out = Vec::new();
        for batch in batches {
            let batch = batch.map_err(&error)?;
            rows += batch.num_rows() as u64;
            bytes += batch.get_array_memory_size() as u64;
            self.check_rows(rows)?;
            self.check_bytes(bytes)?;
            out.push(batch);
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_is_bounded_and_strings_do_not_count() {
        assert!(check_json_depth(br#"{"a":[[1]],"s":"[[[[[[{{{{"}"#).is_ok());
        let deep = format!("{{\"a\":1}}\n{{\"a\":{}1{}}}\n", "[".repeat(100_000), "]".repeat(100_000));
        let err = check_json_depth(deep.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("nested deeper"), "{err}");
        let escaped = format!("{{\"s\":\"\\\"{}\"}}", "[".repeat(1000));
        assert!(check_json_depth(escaped.as_bytes()).is_ok(), "an escaped quote does not end the string");
    }

    #[test]
    fn ipc_lengths_are_checked_before_reading() {
        let budget = Budget::default();
        // A continuation marker and a header that claims 2 GB.
        let mut lie = vec![0xFF, 0xFF, 0xFF, 0xFF];
        lie.extend_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        lie.extend_from_slice(&[0u8; 64]);
        let err = check_ipc_stream(&lie, &budget).unwrap_err().to_string();
        assert!(err.contains("declares 2147483632 bytes"), "{err}");
        assert!(check_ipc_stream(&[1, 2], &budget).is_err());
        assert!(check_ipc_stream(&[], &budget).is_ok());
    }
}
