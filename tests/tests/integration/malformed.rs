//! A malformed body in any input format answers 400 with ClickHouse's error shape, names where
//! it went wrong (the line or row, and the column), and stores nothing; and every type tandem
//! has survives every format that carries it.

use tandem_tests::single_node;

const TABLE: &str = "CREATE TABLE t (id UInt64, name String) ORDER BY id";

/// Text bodies, each wrong at its second row, and what the error must name.
const TEXT_BODIES: [(&str, &str, &str); 9] = [
    ("JSONEachRow", "{\"id\": 1, \"name\": \"a\"}\n{\"id\": \"x\", \"name\": \"b\"}\n", "line 2: column `id`"),
    (
        "JSONStringsEachRow",
        "{\"id\": \"1\", \"name\": \"a\"}\n{\"id\": \"two\", \"name\": \"b\"}\n",
        "line 2: column `id`",
    ),
    ("JSONCompactEachRow", "[1, \"a\"]\n[2]\n", "row 2: 1 values for 2 columns"),
    ("JSON", "{\"data\": [{\"id\": 1, \"name\": \"a\"}, {\"id\": -5, \"name\": \"b\"}]}", "line 2: column `id`"),
    ("JSONCompact", "{\"data\": [[1, \"a\"], [\"x\", \"b\"]]}", "line 2: column `id`"),
    ("CSV", "1,a\nx,b\n", "line 2"),
    ("CSVWithNames", "id,name\n1,a\n-1,b\n", "line 3"),
    ("TabSeparated", "1\ta\nx\tb\n", "line 2"),
    ("TabSeparatedWithNames", "id\tname\n1\ta\n2\tb\textra\n", "line 3"),
];

#[tokio::test]
async fn malformed_bodies_are_refused_by_row_and_column_and_store_nothing() {
    let (node, _dir) = single_node(&[]).await;
    node.sql(TABLE).await;
    for (format, body, names) in TEXT_BODIES {
        let answer = node.request(&format!("INSERT INTO t FORMAT {format}"), &[], body).await;
        assert_eq!(answer.status, 400, "{format}: {}", answer.text());
        assert!(answer.text().starts_with("Code: 36. DB::Exception: "), "{format}: {}", answer.text());
        assert!(answer.text().contains(names), "{format} names {names:?}: {}", answer.text());
        assert_eq!(answer.header("x-clickhouse-exception-code").as_deref(), Some("36"), "{format}");
    }

    // Binary bodies: two good rows exported by tandem itself, then cut inside the last value.
    node.sql("CREATE TABLE source (id UInt64, name String) ORDER BY id").await;
    node.insert("source", "JSONEachRow", "{\"id\": 1, \"name\": \"first\"}\n{\"id\": 2, \"name\": \"second\"}\n").await;
    for (format, names) in [
        ("Native", "column `name`"),
        ("RowBinary", "row 2, column `name`"),
        ("RowBinaryWithNamesAndTypes", "row 2, column `name`"),
        ("Parquet", "Parquet"),
        ("Arrow", "Arrow"),
        ("ArrowStream", "Arrow"),
    ] {
        let exported =
            node.request(&format!("SELECT * FROM source ORDER BY id FORMAT {format}"), &[], Vec::new()).await.ok();
        let cut = exported.body[..exported.body.len() - 3].to_vec();
        let answer = node.request(&format!("INSERT INTO t FORMAT {format}"), &[], cut).await;
        assert_eq!(answer.status, 400, "{format}: {}", answer.text());
        assert!(answer.text().contains(names), "{format} names {names:?}: {}", answer.text());
    }
    assert_eq!(node.count("t").await, 0, "a refused insert stores nothing");
}

/// Every column type, NULLs and the extremes of each, out and back in through every format that
/// carries types exactly.
#[tokio::test]
async fn every_type_round_trips_every_binary_and_json_format() {
    let (node, _dir) = single_node(&[]).await;
    let columns = "(id UInt64, i8 Int8, i16 Int16, i32 Int32, i64 Int64, u8 UInt8, u16 UInt16, u32 UInt32, \
                   f32 Float32, f64 Float64, b Bool, s String, d Date, dt DateTime, dt3 DateTime64(3), \
                   dt6 DateTime64(6), dt9 DateTime64(9), n Nullable(Int32), ns Nullable(String)) ORDER BY id";
    node.sql(&format!("CREATE TABLE types {columns}")).await;
    let rows = [
        "{\"id\":1,\"i8\":-128,\"i16\":-32768,\"i32\":-2147483648,\"i64\":-9223372036854775808,\"u8\":255,\
         \"u16\":65535,\"u32\":4294967295,\"f32\":1.5,\"f64\":-0.1,\"b\":true,\"s\":\"tab\\there \\\"q\\\" ü\",\
         \"d\":\"2024-02-29\",\"dt\":\"2024-02-29 23:59:59\",\"dt3\":\"2024-02-29 23:59:59.123\",\
         \"dt6\":\"2024-02-29 23:59:59.123456\",\"dt9\":\"2024-02-29 23:59:59.123456789\",\"n\":null,\"ns\":null}",
        "{\"id\":2,\"i8\":127,\"i16\":32767,\"i32\":2147483647,\"i64\":9223372036854775807,\"u8\":0,\"u16\":0,\
         \"u32\":0,\"f32\":-2.25,\"f64\":1e300,\"b\":false,\"s\":\"\",\"d\":\"1970-01-01\",\
         \"dt\":\"1970-01-01 00:00:00\",\"dt3\":\"2100-01-01 00:00:00.001\",\"dt6\":\"1999-12-31 23:59:59.000001\",\
         \"dt9\":\"2000-01-01 00:00:00.000000001\",\"n\":-7,\"ns\":\"x\"}",
    ]
    .join("\n");
    node.insert("types", "JSONEachRow", rows).await;
    let reference = crate::rows_of(&node, "types").await;
    assert_eq!(reference.len(), 2);
    assert_eq!(reference[0]["dt9"], "2024-02-29 23:59:59.123456789", "nanoseconds kept: {}", reference[0]);
    for format in [
        "Native",
        "RowBinary",
        "RowBinaryWithNamesAndTypes",
        "JSONEachRow",
        "JSONCompactEachRow",
        "JSON",
        "Arrow",
        "Parquet",
    ] {
        let exported =
            node.request(&format!("SELECT * FROM types ORDER BY id FORMAT {format}"), &[], Vec::new()).await.ok();
        let copy = format!("copy_{}", format.to_lowercase());
        node.sql(&format!("CREATE TABLE {copy} {columns}")).await;
        node.insert(&copy, format, exported.body).await;
        assert_eq!(crate::rows_of(&node, &copy).await, reference, "{format} changed the data");
    }
}
