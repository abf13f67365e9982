//! Query results in the format asked for, batch by batch.

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::{FileWriter, StreamWriter};
use datafusion::parquet::arrow::ArrowWriter;

use super::Format;
use super::binary::{encode_native_block, encode_row_binary, row_binary_header};
use super::clickhouse_type::ClickHouseType;
use super::delimited::escape_tsv;
use super::pretty::{Style, table, vertical};
use super::values::{Column, JsonOptions, write_json_string};
use crate::error::NodeError;

/// The settings that change how results are written.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputOptions {
    pub json: JsonOptions,
}

/// Encodes query results. `elapsed` feeds the statistics of the JSON formats.
pub fn encode(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    elapsed_secs: f64,
    options: OutputOptions,
) -> Result<Bytes, NodeError> {
    let mut encoder = Encoder::new(format, schema, options)?;
    let mut out = encoder.head()?;
    for batch in batches {
        out.extend_from_slice(&encoder.batch(batch)?);
    }
    out.extend_from_slice(&encoder.finish(elapsed_secs)?);
    Ok(Bytes::from(out))
}

/// Encodes a result batch by batch, so a result is sent while it is produced and never held
/// whole: [`Encoder::head`] once, [`Encoder::batch`] per batch, [`Encoder::finish`] at the end.
pub struct Encoder {
    format: Format,
    schema: SchemaRef,
    options: OutputOptions,
    rows: usize,
    /// Native blocks written: an empty result still sends one, with the column names and types.
    blocks: usize,
    /// Parquet and Arrow writers keep state between batches; their bytes are taken from the
    /// buffer they write into as they come.
    parquet: Option<ArrowWriter<Vec<u8>>>,
    arrow_stream: Option<StreamWriter<Vec<u8>>>,
    arrow_file: Option<FileWriter<Vec<u8>>>,
}

impl Encoder {
    pub fn new(format: Format, schema: &SchemaRef, options: OutputOptions) -> Result<Encoder, NodeError> {
        let mut encoder = Encoder {
            format,
            schema: schema.clone(),
            options,
            rows: 0,
            blocks: 0,
            parquet: None,
            arrow_stream: None,
            arrow_file: None,
        };
        match format {
            Format::Parquet => {
                encoder.parquet =
                    Some(ArrowWriter::try_new(Vec::new(), schema.clone(), None).map_err(NodeError::internal)?)
            }
            Format::ArrowStream => {
                encoder.arrow_stream = Some(StreamWriter::try_new(Vec::new(), schema).map_err(NodeError::internal)?)
            }
            Format::Arrow => {
                encoder.arrow_file = Some(FileWriter::try_new(Vec::new(), schema).map_err(NodeError::internal)?)
            }
            _ => {}
        }
        Ok(encoder)
    }

    /// What comes before the first row: a header line, the JSON `meta`, the Arrow schema.
    pub fn head(&mut self) -> Result<Vec<u8>, NodeError> {
        let names = || self.schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>();
        Ok(match self.format {
            Format::Json | Format::JsonCompact => {
                let mut out = String::from("{\n\t\"meta\":\n\t[");
                for (i, field) in self.schema.fields().iter().enumerate() {
                    out.push_str(if i == 0 { "\n\t\t{\n\t\t\t\"name\": " } else { ",\n\t\t{\n\t\t\t\"name\": " });
                    write_json_string(field.name(), &mut out);
                    out.push_str(",\n\t\t\t\"type\": ");
                    write_json_string(&ClickHouseType::of_field(field).to_string(), &mut out);
                    out.push_str("\n\t\t}");
                }
                out.push_str("\n\t],\n\n\t\"data\":\n\t[");
                out.into_bytes()
            }
            Format::CsvWithNames => {
                let mut writer = csv::Writer::from_writer(Vec::new());
                writer.write_record(names()).map_err(NodeError::internal)?;
                writer.into_inner().map_err(NodeError::internal)?
            }
            Format::TabSeparatedWithNames => {
                let mut text = String::new();
                for (i, name) in names().into_iter().enumerate() {
                    if i > 0 {
                        text.push('\t');
                    }
                    escape_tsv(name, &mut text);
                }
                text.push('\n');
                text.into_bytes()
            }
            Format::RowBinaryWithNamesAndTypes => row_binary_header(&self.schema),
            Format::ArrowStream => self.arrow_stream.as_mut().map(|w| std::mem::take(w.get_mut())).unwrap_or_default(),
            Format::Arrow => self.arrow_file.as_mut().map(|w| std::mem::take(w.get_mut())).unwrap_or_default(),
            _ => Vec::new(),
        })
    }

    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, NodeError> {
        let first_row = self.rows;
        self.rows += batch.num_rows();
        let mut out: Vec<u8> = Vec::new();
        match self.format {
            Format::Json
            | Format::JsonCompact
            | Format::JsonEachRow
            | Format::JsonCompactEachRow
            | Format::JsonStringsEachRow => out = self.json_rows(batch, first_row)?.into_bytes(),
            Format::Csv | Format::CsvWithNames | Format::TabSeparated | Format::TabSeparatedWithNames => {
                out = self.text_rows(batch)?.into_bytes()
            }
            Format::Native => {
                if batch.num_rows() > 0 {
                    self.blocks += 1;
                    out = encode_native_block(&self.schema, batch)?
                }
            }
            Format::RowBinary | Format::RowBinaryWithNamesAndTypes => out = encode_row_binary(&self.schema, batch)?,
            Format::Pretty => out = table(Style::Pretty, &self.schema, batch)?,
            Format::PrettyCompact => out = table(Style::Compact, &self.schema, batch)?,
            Format::Vertical => out = vertical(&self.schema, batch, first_row)?,
            Format::Null => {}
            Format::Parquet => {
                if let Some(writer) = self.parquet.as_mut() {
                    writer.write(batch).map_err(NodeError::internal)?;
                    out = std::mem::take(writer.inner_mut());
                }
            }
            Format::ArrowStream => {
                if let Some(writer) = self.arrow_stream.as_mut() {
                    writer.write(batch).map_err(NodeError::internal)?;
                    out = std::mem::take(writer.get_mut());
                }
            }
            Format::Arrow => {
                if let Some(writer) = self.arrow_file.as_mut() {
                    writer.write(batch).map_err(NodeError::internal)?;
                    out = std::mem::take(writer.get_mut());
                }
            }
        }
        Ok(out)
    }

    /// The rows of a batch as TabSeparated or CSV, values printed as ClickHouse prints them
    /// (`100` for a whole Float64, `2024-01-02 03:04:05.600` for a DateTime64(3)), NULL as `\N`,
    /// CSV quoting every value that is not a number.
    fn text_rows(&self, batch: &RecordBatch) -> Result<String, NodeError> {
        let columns = self.columns(batch)?;
        let csv = matches!(self.format, Format::Csv | Format::CsvWithNames);
        let mut out = String::new();
        let mut value = String::new();
        for row in 0..batch.num_rows() {
            for (i, column) in columns.iter().enumerate() {
                if i > 0 {
                    out.push(if csv { ',' } else { '\t' });
                }
                if column.is_null(row) {
                    out.push_str("\\N");
                    continue;
                }
                value.clear();
                column.write_text_or(row, "", &mut value);
                if !csv {
                    escape_tsv(&value, &mut out);
                } else if !column.is_quoted_in_csv() {
                    out.push_str(&value);
                } else {
                    out.push('"');
                    out.push_str(&value.replace('"', "\"\""));
                    out.push('"');
                }
            }
            out.push('\n');
        }
        Ok(out)
    }

    fn columns(&self, batch: &RecordBatch) -> Result<Vec<Column>, NodeError> {
        self.schema.fields().iter().zip(batch.columns()).map(|(field, array)| Column::of_field(field, array)).collect()
    }

    /// The rows of a batch in one of the JSON formats.
    fn json_rows(&self, batch: &RecordBatch, first_row: usize) -> Result<String, NodeError> {
        let columns = self.columns(batch)?;
        let names: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                let mut name = String::new();
                write_json_string(f.name(), &mut name);
                name
            })
            .collect();
        let json = self.options.json;
        let mut out = String::new();
        for row in 0..batch.num_rows() {
            match self.format {
                Format::Json | Format::JsonCompact => {
                    out.push_str(if first_row + row == 0 { "\n\t\t" } else { ",\n\t\t" });
                }
                _ => {}
            }
            let (open, close, named) = match self.format {
                Format::JsonCompact | Format::JsonCompactEachRow => ('[', ']', false),
                _ => ('{', '}', true),
            };
            out.push(open);
            for (i, (column, name)) in columns.iter().zip(&names).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if named {
                    out.push_str(name);
                    out.push(':');
                }
                if self.format == Format::JsonStringsEachRow && !column.is_null(row) {
                    let mut text = String::new();
                    column.write_text_or(row, "", &mut text);
                    write_json_string(&text, &mut out);
                } else {
                    column.write_json(row, json, &mut out);
                }
            }
            out.push(close);
            if matches!(self.format, Format::JsonEachRow | Format::JsonCompactEachRow | Format::JsonStringsEachRow) {
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// What comes after the last row. `elapsed_secs` feeds the statistics of the JSON formats.
    pub fn finish(&mut self, elapsed_secs: f64) -> Result<Vec<u8>, NodeError> {
        Ok(match self.format {
            Format::Json | Format::JsonCompact => format!(
                "\n\t],\n\n\t\"rows\": {},\n\n\t\"statistics\":\n\t{{\n\t\t\"elapsed\": {elapsed_secs},\n\t\t\"rows_read\": {},\n\t\t\"bytes_read\": 0\n\t}}\n}}\n",
                self.rows, self.rows
            )
            .into_bytes(),
            Format::Native if self.blocks == 0 => {
                encode_native_block(&self.schema, &RecordBatch::new_empty(self.schema.clone()))?
            }
            Format::Parquet => match self.parquet.as_mut() {
                Some(writer) => {
                    writer.finish().map_err(NodeError::internal)?;
                    std::mem::take(writer.inner_mut())
                }
                None => Vec::new(),
            },
            Format::ArrowStream => match self.arrow_stream.as_mut() {
                Some(writer) => {
                    writer.finish().map_err(NodeError::internal)?;
                    std::mem::take(writer.get_mut())
                }
                None => Vec::new(),
            },
            Format::Arrow => match self.arrow_file.as_mut() {
                Some(writer) => {
                    writer.finish().map_err(NodeError::internal)?;
                    std::mem::take(writer.get_mut())
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![Some("a\"b"), None])), Arc::new(Int64Array::from(vec![3, 12]))],
        )
        .unwrap()
    }

    fn text(format: Format) -> String {
        let batch = batch();
        String::from_utf8(encode(format, &batch.schema(), &[batch], 0.5, OutputOptions::default()).unwrap().to_vec())
            .unwrap()
    }

    #[test]
    fn json_formats_write_what_clickhouse_writes() {
        assert_eq!(text(Format::JsonEachRow), "{\"host\":\"a\\\"b\",\"n\":\"3\"}\n{\"host\":null,\"n\":\"12\"}\n");
        assert_eq!(text(Format::JsonCompactEachRow), "[\"a\\\"b\",\"3\"]\n[null,\"12\"]\n");
        assert_eq!(
            text(Format::JsonStringsEachRow),
            "{\"host\":\"a\\\"b\",\"n\":\"3\"}\n{\"host\":null,\"n\":\"12\"}\n"
        );
        let json: serde_json::Value = serde_json::from_str(&text(Format::Json)).unwrap();
        assert_eq!(json["meta"][0], serde_json::json!({"name": "host", "type": "Nullable(String)"}));
        assert_eq!(json["data"][1], serde_json::json!({"host": null, "n": "12"}));
        assert_eq!(json["rows"], 2);
        let compact: serde_json::Value = serde_json::from_str(&text(Format::JsonCompact)).unwrap();
        assert_eq!(compact["data"], serde_json::json!([["a\"b", "3"], [null, "12"]]));
        assert_eq!(text(Format::Null), "");
    }
}
