//! Every input format goes in and every output format comes out, and the data survives.

use tandem_tests::single_node;

use crate::{EVENTS, event_rows, json_each_row, rows_of};

const ROUND_TRIP_FORMATS: [&str; 15] = [
    "JSONEachRow",
    "JSONCompactEachRow",
    "JSONStringsEachRow",
    "JSON",
    "JSONCompact",
    "CSV",
    "CSVWithNames",
    "TabSeparated",
    "TabSeparatedWithNames",
    "Native",
    "RowBinary",
    "RowBinaryWithNamesAndTypes",
    "Parquet",
    "Arrow",
    "ArrowStream",
];

#[tokio::test]
async fn every_format_round_trips() {
    let (node, _dir) = single_node(&[]).await;
    node.sql(EVENTS).await;
    let rows = event_rows();
    node.insert("events", "JSONEachRow", json_each_row(&rows)).await;
    let reference = rows_of(&node, "events").await;
    assert_eq!(reference.len(), rows.len());
    assert_eq!(reference[4]["note"], "line\nbreak");
    assert_eq!(reference[7]["note"], serde_json::Value::Null);

    for format in ROUND_TRIP_FORMATS {
        // Out of tandem in this format, back into a fresh table in the same format.
        let exported =
            node.request(&format!("SELECT * FROM events ORDER BY id FORMAT {format}"), &[], Vec::new()).await.ok();
        let table = format!("copy_{}", format.to_lowercase());
        node.sql(&EVENTS.replace("events", &table)).await;
        let summary = node.insert(&table, format, exported.body).await;
        assert_eq!(summary["rows_written"], rows.len(), "{format}: {summary}");
        assert_eq!(rows_of(&node, &table).await, reference, "{format} changed the data");
    }
}

#[tokio::test]
async fn json_output_has_meta_data_and_row_count() {
    let (node, _dir) = single_node(&[]).await;
    node.sql(EVENTS).await;
    node.insert("events", "JSONEachRow", json_each_row(&event_rows())).await;
    let answer = node
        .request(
            "SELECT host, count() AS n FROM events GROUP BY host ORDER BY host",
            &[("default_format", "JSON")],
            Vec::new(),
        )
        .await;
    let json = answer.ok().json();
    assert_eq!(json["meta"][0], serde_json::json!({"name": "host", "type": "String"}));
    assert_eq!(json["rows"], 4);
    // 64-bit integers are quoted, as ClickHouse does (JavaScript numbers stop at 2^53)...
    assert_eq!(json["data"][0], serde_json::json!({"host": "host-0", "n": "5"}));
    // ...unless the request says otherwise.
    let plain = node
        .request(
            "SELECT host, count() AS n FROM events GROUP BY host ORDER BY host FORMAT JSON",
            &[("output_format_json_quote_64bit_integers", "0")],
            Vec::new(),
        )
        .await;
    assert_eq!(plain.ok().json()["data"][0], serde_json::json!({"host": "host-0", "n": 5}));
}

#[tokio::test]
async fn text_formats_accept_what_clickhouse_clients_send() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, ts DateTime, name String, score Nullable(Float64)) ORDER BY id").await;
    // Header in another order than the table, NULL as \N, a quoted field with a comma.
    node.insert(
        "t",
        "CSVWithNames",
        "name,id,ts,score\n\"a,b\",1,2024-01-01 10:00:00,\\N\nc,2,2024-01-01 11:00:00,2.5\n",
    )
    .await;
    node.insert("t", "TabSeparatedWithNames", "id\tname\tts\tscore\n3\ttab\\there\t2024-01-02 00:00:00\t\\N\n").await;
    // A column list in the statement; the other columns take NULL or their default.
    node.request("INSERT INTO t (id, name) FORMAT TSV", &[], "4\tonly name\n").await.ok();
    let rows = node.sql("SELECT id, name, score FROM t ORDER BY id FORMAT CSV").await;
    // As ClickHouse writes CSV: strings quoted, numbers bare, NULL as \N.
    assert_eq!(rows, "1,\"a,b\",\\N\n2,\"c\",2.5\n3,\"tab\there\",\\N\n4,\"only name\",\\N\n");
    let ts = node.sql("SELECT ts FROM t WHERE id = 4").await;
    assert_eq!(ts.trim(), "1970-01-01 00:00:00", "an omitted non-Nullable column takes its default");
}

#[tokio::test]
async fn parquet_from_another_tool_is_converted_by_column_name() {
    use std::sync::Arc;

    use tandem_parts::arrow::array::{Int32Array, RecordBatch, StringArray};
    use tandem_parts::arrow::datatypes::{DataType, Field, Schema};
    use tandem_parts::parquet::arrow::ArrowWriter;

    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, name String) ORDER BY id").await;
    // Columns in another order and a narrower integer type than the table's.
    let schema =
        Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, true), Field::new("id", DataType::Int32, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec!["x", "y"])), Arc::new(Int32Array::from(vec![2, 1]))],
    )
    .unwrap();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    node.insert("t", "Parquet", bytes).await;
    assert_eq!(node.sql("SELECT id, name FROM t ORDER BY id FORMAT CSV").await, "1,\"y\"\n2,\"x\"\n");
}

#[tokio::test]
async fn insert_values_and_statement_in_body() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, name Nullable(String), v Float64) ORDER BY id").await;
    node.post_body("INSERT INTO t VALUES (1, 'one', 1.5), (2, NULL, -2)").await.ok();
    node.post_body("INSERT INTO t FORMAT JSONEachRow\n{\"id\":3,\"name\":\"three\",\"v\":3}\n").await.ok();
    node.post_body("INSERT INTO t (id, v) FORMAT CSV\n4,4.5\n").await.ok();
    assert_eq!(
        node.sql("SELECT id, name, v FROM t ORDER BY id FORMAT CSV").await,
        "1,\"one\",1.5\n2,\\N,-2\n3,\"three\",3\n4,\\N,4.5\n"
    );
    let answer = node.post_body("SELECT sum(v) FROM t").await.ok();
    assert_eq!(answer.text().trim(), "7", "a whole Float64 prints as ClickHouse prints it");

    // The query log keeps an insert's statement, never its rows, wherever the rows came.
    node.insert("t", "TSV", "5\tfive\t5\n").await;
    node.sql("INSERT INTO t FORMAT TSV 6\tsix\t6").await;
    let logged = node
        .sql("SELECT query FROM system.query_log WHERE query_kind = 'INSERT' AND status = 200 FORMAT JSONEachRow")
        .await;
    let queries: Vec<String> = logged
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["query"].to_string())
        .collect();
    assert_eq!(
        queries,
        [
            r#""INSERT INTO t VALUES (1, 'one', 1.5), (2, NULL, -2)""#,
            r#""INSERT INTO t FORMAT JSONEachRow\n""#,
            r#""INSERT INTO t (id, v) FORMAT CSV\n""#,
            r#""INSERT INTO t FORMAT TSV""#,
            r#""INSERT INTO t FORMAT TSV ""#,
        ],
        "{logged}"
    );
}
