//! Integration tests: each module drives real `tandem` processes over HTTP.

mod alter;
mod async_insert;
mod bad_input;
mod chart;
mod clients;
mod cluster;
mod compatibility;
mod coordinator;
mod ddl;
mod dedup;
mod durability;
mod failover;
mod formats;
mod hostile;
mod malformed;
mod merges;
mod object_store;
mod operations;
mod quorum;
mod readme;
mod security;
mod tiered;
mod users;

/// The table most tests use: every column type family, a month partition, a sort key.
pub const EVENTS: &str = "CREATE TABLE events (id UInt64, ts DateTime64(3), host String, v Float64, \
    note Nullable(String), ok Bool, day Date) ORDER BY (host, ts) PARTITION BY toYYYYMM(ts)";

/// Rows with the strings that break naive encoders: separators, quotes, escapes, newlines,
/// non-ASCII, NULLs; and two months, so inserts span partitions.
pub fn event_rows() -> Vec<serde_json::Value> {
    let notes = [
        Some("plain"),
        Some("with,comma"),
        Some("with\ttab"),
        Some("with \"quotes\""),
        Some("line\nbreak"),
        Some("back\\slash"),
        Some("ünïcødé €"),
        None,
        Some(""),
    ];
    (0..20u64)
        .map(|id| {
            let month = if id % 3 == 0 { "02" } else { "01" };
            serde_json::json!({
                "id": id,
                "ts": format!("2024-{month}-{:02} {:02}:00:00.{:03}", 1 + id % 27, id % 24, id * 7 % 1000),
                "host": format!("host-{}", id % 4),
                "v": id as f64 * 1.25 - 3.0,
                "note": notes[id as usize % notes.len()],
                "ok": id % 2 == 0,
                "day": format!("2024-{month}-{:02}", 1 + id % 27),
            })
        })
        .collect()
}

pub fn json_each_row(rows: &[serde_json::Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

/// The table's rows as JSON values, ordered by id: the form tests compare.
pub async fn rows_of(node: &tandem_tests::Tandem, table: &str) -> Vec<serde_json::Value> {
    // 64-bit integers as numbers, as the rows tests insert have them.
    let sql = format!("SELECT * FROM {table} ORDER BY id FORMAT JSONEachRow");
    let text = node.request(&sql, &[("output_format_json_quote_64bit_integers", "0")], Vec::new()).await.ok().text();
    text.lines().map(|l| serde_json::from_str(l).expect("JSONEachRow output")).collect()
}
