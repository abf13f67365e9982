//! The names of the headers tandem reads and writes beyond HTTP's own, built once at compile
//! time: a name given as text is checked and lowercased again on every use, which was a
//! percent of a small insert's CPU.

use axum::http::HeaderName;

/// The id of the query this answer belongs to, the client's `query_id` or one generated.
pub const X_CLICKHOUSE_QUERY_ID: HeaderName = HeaderName::from_static("x-clickhouse-query-id");
/// The time zone dates and times are shown in.
pub const X_CLICKHOUSE_TIMEZONE: HeaderName = HeaderName::from_static("x-clickhouse-timezone");
/// The output format of the body.
pub const X_CLICKHOUSE_FORMAT: HeaderName = HeaderName::from_static("x-clickhouse-format");
/// What the statement read and wrote, as ClickHouse's JSON.
pub const X_CLICKHOUSE_SUMMARY: HeaderName = HeaderName::from_static("x-clickhouse-summary");
/// The ClickHouse error code of a failed request.
pub const X_CLICKHOUSE_EXCEPTION_CODE: HeaderName = HeaderName::from_static("x-clickhouse-exception-code");
/// The user a ClickHouse client authenticates as.
pub const X_CLICKHOUSE_USER: HeaderName = HeaderName::from_static("x-clickhouse-user");
/// The password a ClickHouse client authenticates with.
pub const X_CLICKHOUSE_KEY: HeaderName = HeaderName::from_static("x-clickhouse-key");
/// The metadata revision an answer reflects (a read) or created (a write).
pub const X_TANDEM_REVISION: HeaderName = HeaderName::from_static("x-tandem-revision");
/// Whether an insert was a retry of one already stored.
pub const X_TANDEM_DEDUPLICATED: HeaderName = HeaderName::from_static("x-tandem-deduplicated");
/// How far an insert had got when it was answered: `registered` or `logged`.
pub const X_TANDEM_ACKNOWLEDGED: HeaderName = HeaderName::from_static("x-tandem-acknowledged");
/// tandem's own code of a failed request.
pub const X_TANDEM_ERROR_CODE: HeaderName = HeaderName::from_static("x-tandem-error-code");
/// Whether a failed request may be retried as it is.
pub const X_TANDEM_RETRYABLE: HeaderName = HeaderName::from_static("x-tandem-retryable");
