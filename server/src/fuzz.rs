//! Property-based fuzzing on stable Rust: the statement parser, every input format and the
//! interserver messages are fed arbitrary and mutated input. The property is the same for all:
//! an answer (accepted, or refused with a request error), never a panic, never an internal
//! error, never a row that breaks the table's schema.
//!
//! `PROPTEST_CASES` sets the number of inputs per target (the test command runs the default
//! below; run with a larger number for a longer campaign). Failing inputs that proptest finds
//! are saved under `server/proptest-regressions/` and replayed first on every later run.

use bytes::Bytes;
use proptest::prelude::*;

use crate::error::NodeError;
use crate::formats::{Format, InputOptions, decode_insert, encode};
use crate::statement::{self, Statement};
use tandem_replica::schema::TableDef;

/// Inputs per target when `PROPTEST_CASES` is not set: a few seconds for all targets in a
/// release build (1,000,000 per target took about two minutes on 2 cores).
const DEFAULT_CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    ProptestConfig { cases, max_shrink_iters: 2000, ..ProptestConfig::default() }
}

fn table() -> TableDef {
    let Ok(Statement::CreateTable { def, .. }) = statement::parse(
        "CREATE TABLE f (id UInt64, ts DateTime64(3), d Date, host String, v Float64, n Nullable(Int32), ok Bool, \
         small Int8) ORDER BY (host, ts) PARTITION BY toYYYYMM(ts)",
    ) else {
        panic!("the fuzz table parses")
    };
    def
}

/// A request error is a fine answer to garbage; anything else is a bug.
fn is_request_error(e: &NodeError) -> bool {
    !matches!(e, NodeError::Internal(_))
}

/// Valid bodies of the fuzz table in `format`, to mutate.
fn seed(format: Format) -> Vec<u8> {
    let rows = "{\"id\":1,\"ts\":\"2024-01-01 00:00:00.250\",\"d\":\"2024-01-01\",\"host\":\"a,\\\"b\\\"\\tc\",\"v\":1.5,\"n\":null,\"ok\":true,\"small\":-3}\n\
                {\"id\":2,\"ts\":1700000000000,\"d\":19000,\"host\":\"\",\"v\":-0.0,\"n\":7,\"ok\":false,\"small\":127}\n";
    let def = table();
    let Ok(batch) = decode_insert(
        Format::JsonEachRow,
        &Bytes::from(rows),
        &def,
        &def.arrow_schema(),
        None,
        InputOptions::default(),
    ) else {
        panic!("the seed rows decode")
    };
    match format {
        Format::JsonEachRow => rows.as_bytes().to_vec(),
        other => {
            encode(other, &batch.schema(), &[batch], 0.0, Default::default()).map(|b| b.to_vec()).unwrap_or_default()
        }
    }
}

/// A body: arbitrary bytes, or a valid body with bytes flipped, cut out or repeated.
fn body(format: Format) -> impl Strategy<Value = Vec<u8>> {
    let seed = seed(format);
    let len = seed.len().max(1);
    let mutated = proptest::collection::vec((0..len, any::<u8>(), 0u8..4), 1..8).prop_map(move |edits| {
        let mut data = seed.clone();
        for (at, byte, kind) in edits {
            let at = at.min(data.len().saturating_sub(1));
            match kind {
                0 => {
                    if let Some(b) = data.get_mut(at) {
                        *b = byte;
                    }
                }
                1 => data.truncate(at),
                2 => data.insert(at, byte),
                _ => {
                    let tail = data.get(at..).unwrap_or_default().to_vec();
                    data.extend_from_slice(&tail);
                }
            }
        }
        data
    });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), mutated]
}

fn decodes_or_refuses(format: Format, data: Vec<u8>) -> Result<(), TestCaseError> {
    let def = table();
    match decode_insert(format, &Bytes::from(data), &def, &def.arrow_schema(), None, InputOptions::default()) {
        Ok(batch) => prop_assert_eq!(batch.schema(), def.arrow_schema()),
        Err(e) => prop_assert!(is_request_error(&e), "{:?}: internal error {}", format, e),
    }
    Ok(())
}

/// SQL made of the words and punctuation statements are made of, in any order.
fn sql_like() -> impl Strategy<Value = String> {
    let words = prop_oneof![
        Just("CREATE TABLE"),
        Just("ALTER TABLE"),
        Just("DROP TABLE"),
        Just("INSERT INTO"),
        Just("SELECT"),
        Just("DESCRIBE"),
        Just("SHOW TABLES"),
        Just("ORDER BY"),
        Just("PARTITION BY"),
        Just("SETTINGS"),
        Just("FORMAT"),
        Just("VALUES"),
        Just("ADD COLUMN"),
        Just("DROP COLUMN"),
        Just("RENAME COLUMN"),
        Just("MODIFY SETTING"),
        Just("IF NOT EXISTS"),
        Just("tuple()"),
        Just("toYYYYMM(ts)"),
        Just("Nullable(Int64)"),
        Just("DateTime64(3)"),
        Just("DEFAULT"),
        Just("t"),
        Just("ts"),
        Just("default."),
        Just("("),
        Just(")"),
        Just(","),
        Just("="),
        Just("'x'"),
        Just("-1"),
        Just("18446744073709551616"),
        Just(";"),
        Just("--"),
        Just("/*"),
        Just("\n"),
        Just("`"),
        Just("\""),
    ];
    proptest::collection::vec(words, 0..40).prop_map(|w| w.join(" "))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn statements_parse_or_are_refused(sql in prop_oneof![sql_like(), any::<String>()]) {
        if let Err(e) = statement::parse(&sql) {
            prop_assert!(is_request_error(&e), "internal error for {:?}: {}", sql, e);
        }
    }

    #[test]
    fn json_each_row_bodies(data in body(Format::JsonEachRow)) {
        decodes_or_refuses(Format::JsonEachRow, data)?;
    }

    #[test]
    fn csv_bodies(data in body(Format::CsvWithNames)) {
        decodes_or_refuses(Format::CsvWithNames, data.clone())?;
        decodes_or_refuses(Format::Csv, data)?;
    }

    #[test]
    fn tsv_bodies(data in body(Format::TabSeparatedWithNames)) {
        decodes_or_refuses(Format::TabSeparatedWithNames, data.clone())?;
        decodes_or_refuses(Format::TabSeparated, data)?;
    }

    #[test]
    fn parquet_bodies(data in body(Format::Parquet)) {
        decodes_or_refuses(Format::Parquet, data)?;
    }

    #[test]
    fn arrow_stream_bodies(data in body(Format::ArrowStream)) {
        decodes_or_refuses(Format::ArrowStream, data)?;
    }
}
