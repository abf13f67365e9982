//! The ClickHouse functions, run through DataFusion's planner and optimizer as a query runs
//! them, against values worked out by hand.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;

use super::*;

/// The first row of `sql`'s answer, each value as text (NULL as `NULL`).
async fn row(sql: &str) -> Vec<String> {
    rows(sql).await.into_iter().next().unwrap_or_default()
}

async fn rows(sql: &str) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    register(&ctx);
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = state.sql_to_statement(sql, &dialect).unwrap();
    if let datafusion::sql::parser::Statement::Statement(inner) = &mut statement {
        rewrite_clickhouse_syntax(inner).unwrap();
    }
    let plan = state.statement_to_plan(statement).await.unwrap();
    let batches: Vec<RecordBatch> = ctx.execute_logical_plan(plan).await.unwrap().collect().await.unwrap();
    let options = FormatOptions::new().with_null("NULL");
    let mut out = Vec::new();
    for batch in &batches {
        let formatters: Vec<_> =
            batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
        for r in 0..batch.num_rows() {
            out.push(formatters.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    out
}

async fn error(sql: &str) -> String {
    let ctx = SessionContext::new();
    register(&ctx);
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = match state.sql_to_statement(sql, &dialect) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    if let datafusion::sql::parser::Statement::Statement(inner) = &mut statement
        && let Err(e) = rewrite_clickhouse_syntax(inner)
    {
        return e.to_string();
    }
    let plan = match state.statement_to_plan(statement).await {
        Ok(plan) => plan,
        Err(e) => return e.to_string(),
    };
    match ctx.execute_logical_plan(plan).await {
        Ok(frame) => match frame.collect().await {
            Ok(_) => panic!("{sql} succeeded"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn time_buckets_round_down_in_utc() {
    let t = "toDateTime('2024-03-17 13:47:29')";
    let got = row(&format!(
        "SELECT toStartOfMinute({t}), toStartOfFiveMinutes({t}), toStartOfFifteenMinutes({t}), toStartOfHour({t}), \
         toStartOfDay({t}), toStartOfWeek({t}), toMonday({t}), toStartOfMonth({t}), toStartOfQuarter({t}), \
         toStartOfYear({t}), toDate({t})"
    ))
    .await;
    // 2024-03-17 was a Sunday.
    assert_eq!(
        got,
        [
            "2024-03-17T13:47:00",
            "2024-03-17T13:45:00",
            "2024-03-17T13:45:00",
            "2024-03-17T13:00:00",
            "2024-03-17T00:00:00",
            "2024-03-17",
            "2024-03-11",
            "2024-03-01",
            "2024-01-01",
            "2024-01-01",
            "2024-03-17",
        ]
    );
    let got = row(&format!(
        "SELECT toStartOfInterval({t}, INTERVAL 10 MINUTE), toStartOfInterval({t}, INTERVAL 2 HOUR), \
         toStartOfInterval({t}, INTERVAL 1 WEEK), toStartOfInterval({t}, INTERVAL 2 MONTH), toStartOfWeek({t}, 1)"
    ))
    .await;
    assert_eq!(got, ["2024-03-17T13:40:00", "2024-03-17T12:00:00", "2024-03-11", "2024-03-01", "2024-03-11"]);
    // Before 1970, buckets still round down, not toward zero.
    let early = "toDateTime('1969-12-31 23:59:59')";
    assert_eq!(
        row(&format!("SELECT toStartOfHour({early}), toDate({early})")).await,
        ["1969-12-31T23:00:00", "1969-12-31"]
    );
}

#[tokio::test]
async fn conversions_and_parts_of_dates() {
    let got = row("SELECT toDateTime('2024-03-17 13:47:29'), toYYYYMM(toDateTime('2024-03-17 13:47:29')), \
         toYYYYMMDD(toDate('2024-03-17')), toUnixTimestamp(toDateTime('2024-03-17 13:47:29')), \
         formatDateTime(toDateTime('2024-03-17 13:47:09'), '%Y/%m/%d %H:%i:%S %M'), toDateTime(1710683249)")
    .await;
    assert_eq!(
        got,
        ["2024-03-17T13:47:29", "202403", "20240317", "1710683249", "2024/03/17 13:47:09 March", "2024-03-17T13:47:29"]
    );
    let got = row("SELECT toInt64('42'), toUInt64(7.9), toFloat64('1.5'), toInt8OrNull('x'), toInt32OrZero('x'), toString(toDateTime(0)), toString(1.5)").await;
    assert_eq!(got, ["42", "7", "1.5", "NULL", "0", "1970-01-01 00:00:00", "1.5"]);
    assert!(error("SELECT toInt64('12abc')").await.contains("toInt64"));
}

#[tokio::test]
async fn arithmetic_and_branches_follow_clickhouse() {
    let got = row("SELECT 7 / 2, intDiv(7, 2), intDiv(-7, 2), intDiv(7.9, 2), 1 / 0, if(1 > 2, 'a', 'b'), multiIf(false, 1, NULL, 2, 3.5)").await;
    assert_eq!(got, ["3.5", "3", "-3", "3", "inf", "b", "3.5"]);
    assert!(error("SELECT intDiv(1, 0)").await.contains("division by zero"));
    let got = row("SELECT version(), timezone(), currentDatabase()").await;
    assert_eq!(got, [crate::clickhouse_http::CLICKHOUSE_VERSION, "UTC", "default"]);
}

#[tokio::test]
async fn aggregates_answer_as_clickhouse() {
    // 1..=100, with the key k = v % 3 and the label 'l' || (v % 5).
    let data =
        "(SELECT v, v % 3 AS k, concat('l', CAST(v % 5 AS VARCHAR)) AS label FROM generate_series(1, 100) AS t(v))";
    let got = row(&format!(
        "SELECT countIf(v > 90), sumIf(v, k = 0), avgIf(v, v <= 10), minIf(v, v > 50), maxIf(v, v < 50), \
         uniqExact(label), uniq(k), argMax(label, v), argMin(v, label), round(quantile(0.9)(v), 6), quantile(v), median(v), \
         quantiles(0.25, 0.75)(v), any(v), groupArray(k) IS NOT NULL FROM {data}"
    ))
    .await;
    // sum of multiples of 3 up to 99: 3 * (33 * 34 / 2) = 1683. The 0.9 quantile of 1..=100,
    // interpolated: position 0.9 * 99 = 89.1, between 90 and 91.
    assert_eq!(
        got,
        ["10", "1683", "5.5", "51", "49", "5", "3", "l0", "5", "90.1", "50.5", "50.5", "[25.75, 75.25]", "1", "true"]
    );
    let groups =
        rows(&format!("SELECT k, countIf(v % 2 = 0), groupArray(v) FROM {data} WHERE v <= 6 GROUP BY k ORDER BY k"))
            .await;
    assert_eq!(groups[0][..2], ["0".to_string(), "1".to_string()]);
    assert_eq!(groups.len(), 3);
    assert!(error("SELECT sum(1)(v) FROM generate_series(1, 3) AS t(v)").await.contains("takes no parameters"));
    assert!(error("SELECT quantile(2)(v) FROM generate_series(1, 3) AS t(v)").await.contains("between 0 and 1"));
}

#[tokio::test]
async fn result_columns_are_named_as_written() {
    let ctx = SessionContext::new();
    register(&ctx);
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let sql = "SELECT v, avg(v), quantile(0.9)(v), 7 / 2, count() AS n FROM generate_series(1, 3) AS t(v) GROUP BY v";
    let mut statement = state.sql_to_statement(sql, &dialect).unwrap();
    if let datafusion::sql::parser::Statement::Statement(inner) = &mut statement {
        rewrite_clickhouse_syntax(inner).unwrap();
    }
    let plan = state.statement_to_plan(statement).await.unwrap();
    let names: Vec<String> = plan.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["v", "avg(v)", "quantile(0.9)(v)", "7 / 2", "n"]);
}
