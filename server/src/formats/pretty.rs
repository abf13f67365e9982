//! The formats for people at a terminal: `Pretty`, `PrettyCompact` (tables drawn with box
//! characters, one per result block, numbers aligned right, NULL as `ᴺᵁᴸᴸ`) and `Vertical`
//! (one `name: value` line per column, one block per row), as ClickHouse draws them.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::values::Column;
use crate::error::NodeError;

const NULL: &str = "ᴺᵁᴸᴸ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Pretty,
    Compact,
}

/// A result batch's cells as text, with each column's width and alignment.
struct Cells {
    names: Vec<String>,
    rows: Vec<Vec<String>>,
    widths: Vec<usize>,
    right: Vec<bool>,
}

fn width(text: &str) -> usize {
    text.chars().count()
}

fn cells(schema: &SchemaRef, batch: &RecordBatch) -> Result<Cells, NodeError> {
    let columns: Vec<Column> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| Column::of_field(field, array))
        .collect::<Result<_, _>>()?;
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut widths: Vec<usize> = names.iter().map(|n| width(n)).collect();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut cells = Vec::with_capacity(columns.len());
        for (i, column) in columns.iter().enumerate() {
            let mut text = String::new();
            column.write_text_or(row, NULL, &mut text);
            let text = text.replace('\n', "\\n").replace('\t', "\\t");
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(&text));
            }
            cells.push(text);
        }
        rows.push(cells);
    }
    let right = columns.iter().map(Column::is_numeric).collect();
    Ok(Cells { names, rows, widths, right })
}

fn pad(text: &str, width_wanted: usize, right: bool, out: &mut String) {
    let fill = " ".repeat(width_wanted.saturating_sub(width(text)));
    if right {
        out.push_str(&fill);
        out.push_str(text);
    } else {
        out.push_str(text);
        out.push_str(&fill);
    }
}

/// One result batch as a drawn table (nothing for an empty batch, as ClickHouse).
pub fn table(style: Style, schema: &SchemaRef, batch: &RecordBatch) -> Result<Vec<u8>, NodeError> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let cells = cells(schema, batch)?;
    let mut out = String::new();
    let rule = |left: &str, fill: &str, join: &str, right: &str, out: &mut String| {
        out.push_str(left);
        for (i, w) in cells.widths.iter().enumerate() {
            if i > 0 {
                out.push_str(join);
            }
            out.push_str(&fill.repeat(w + 2));
        }
        out.push_str(right);
        out.push('\n');
    };
    let row_line = |values: &[String], bar: &str, align: bool, out: &mut String| {
        out.push_str(bar);
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push_str(bar);
            }
            out.push(' ');
            let right = align && cells.right.get(i).copied().unwrap_or(false);
            pad(value, cells.widths.get(i).copied().unwrap_or(0), right, out);
            out.push(' ');
        }
        out.push_str(bar);
        out.push('\n');
    };
    match style {
        Style::Compact => {
            // ┌─name─┬─count()─┐: the names sit in the top rule.
            out.push('┌');
            for (i, (name, w)) in cells.names.iter().zip(&cells.widths).enumerate() {
                if i > 0 {
                    out.push('┬');
                }
                out.push('─');
                out.push_str(name);
                out.push_str(&"─".repeat(w + 1 - width(name)));
            }
            out.push_str("┐\n");
            for row in &cells.rows {
                row_line(row, "│", true, &mut out);
            }
            rule("└", "─", "┴", "┘", &mut out);
        }
        Style::Pretty => {
            rule("┏", "━", "┳", "┓", &mut out);
            row_line(&cells.names, "┃", false, &mut out);
            rule("┡", "━", "╇", "┩", &mut out);
            for (i, row) in cells.rows.iter().enumerate() {
                if i > 0 {
                    rule("├", "─", "┼", "┤", &mut out);
                }
                row_line(row, "│", true, &mut out);
            }
            rule("└", "─", "┴", "┘", &mut out);
        }
    }
    Ok(out.into_bytes())
}

/// One result batch in the Vertical format; `first_row` numbers the rows across batches.
pub fn vertical(schema: &SchemaRef, batch: &RecordBatch, first_row: usize) -> Result<Vec<u8>, NodeError> {
    let cells = cells(schema, batch)?;
    let name_width = cells.names.iter().map(|n| width(n)).max().unwrap_or(0);
    let mut out = String::new();
    for (i, row) in cells.rows.iter().enumerate() {
        let number = first_row + i + 1;
        if number > 1 {
            out.push('\n');
        }
        let title = format!("Row {number}:");
        out.push_str(&title);
        out.push('\n');
        out.push_str(&"─".repeat(width(&title)));
        out.push('\n');
        for (name, value) in cells.names.iter().zip(row) {
            out.push_str(name);
            out.push(':');
            out.push_str(&" ".repeat(name_width - width(name) + 1));
            out.push_str(value);
            out.push('\n');
        }
    }
    Ok(out.into_bytes())
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
            Field::new("count()", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![Some("a"), None])), Arc::new(Int64Array::from(vec![3, 12]))],
        )
        .unwrap()
    }

    #[test]
    fn compact_and_pretty_draw_as_clickhouse() {
        let batch = batch();
        let compact = String::from_utf8(table(Style::Compact, &batch.schema(), &batch).unwrap()).unwrap();
        assert_eq!(compact, "┌─host─┬─count()─┐\n│ a    │       3 │\n│ ᴺᵁᴸᴸ │      12 │\n└──────┴─────────┘\n");
        let pretty = String::from_utf8(table(Style::Pretty, &batch.schema(), &batch).unwrap()).unwrap();
        assert!(pretty.starts_with("┏━━━━━━┳━━━━━━━━━┓\n┃ host ┃ count() ┃\n┡━━━━━━╇━━━━━━━━━┩\n"), "{pretty}");
        let vertical = String::from_utf8(vertical(&batch.schema(), &batch, 0).unwrap()).unwrap();
        assert_eq!(vertical, "Row 1:\n──────\nhost:    a\ncount(): 3\n\nRow 2:\n──────\nhost:    ᴺᵁᴸᴸ\ncount(): 12\n");
    }
}
