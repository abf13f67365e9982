//! The bounds every request is held to: how much an insert may decode, how much memory and time
//! a query may take, how many queries run at once. Each limit is declared once below, with its
//! default, its flag, its `TANDEM_*` variable and its key in the config file's `[limits]`
//! table; a request can tighten a query limit with the URL parameter of the same name, never
//! loosen it beyond the server's.
//!
//! Fixed bounds that are not settings (nesting depth, timeouts' caps, token lengths) are the
//! constants at the end.

use std::sync::LazyLock;
use std::time::Duration;

tandem_settings::settings! {
    /// The limits in force on a node.
    pub struct Limits, flags LimitArgs, file LimitFile {
        /// Rows one insert may decode; more answers 413 before anything is stored.
        max_insert_rows: u64 = "10000000", env "TANDEM_MAX_INSERT_ROWS";
        /// Bytes the rows of one insert may take once decoded (a small, highly compressed Parquet
        /// or Arrow body can decode to far more than it weighs); more answers 413.
        max_insert_bytes: u64 = "536870912", env "TANDEM_MAX_INSERT_BYTES";
        /// Columns a table may have (CREATE TABLE, ALTER TABLE ... ADD COLUMN, auto_add_columns).
        max_columns: usize = "1000", env "TANDEM_MAX_COLUMNS";
        /// Memory all queries of this node may hold at once, in bytes (sorts and aggregations
        /// spill to disk first where they can); 0 means half of the machine's memory.
        max_server_memory_usage: u64 = "0", env "TANDEM_MAX_SERVER_MEMORY_USAGE";
        /// Memory one query may hold, in bytes; 0 means half of the server's limit (one query
        /// leaves room for the others).
        max_memory_usage: u64 = "0", env "TANDEM_MAX_MEMORY_USAGE";
        /// Seconds a query may run, results included; 0 means no limit.
        max_execution_time: u64 = "300", env "TANDEM_MAX_EXECUTION_TIME";
        /// Rows a query may return; 0 means no limit.
        max_result_rows: u64 = "0", env "TANDEM_MAX_RESULT_ROWS";
        /// Bytes a query's encoded result may take; 0 means no limit.
        max_result_bytes: u64 = "0", env "TANDEM_MAX_RESULT_BYTES";
        /// Queries that may run at once on this node; one more answers 429 at once.
        max_concurrent_queries: usize = "64", env "TANDEM_MAX_CONCURRENT_QUERIES";
    }
}

impl Limits {
    /// The server-wide memory pool, in bytes.
    pub fn server_memory_bytes(&self) -> u64 {
        match self.max_server_memory_usage {
            0 => physical_memory_bytes() / 2,
            bytes => bytes,
        }
    }

    /// One query's memory limit, in bytes.
    pub fn query_memory_bytes(&self) -> u64 {
        match self.max_memory_usage {
            0 => self.server_memory_bytes() / 2,
            bytes => bytes.min(self.server_memory_bytes()),
        }
    }
}

/// The machine's memory (`/proc/meminfo`), or 4 GiB where it cannot be read; read once (every
/// query asks, and reading the file was 1% of a point query's CPU).
fn physical_memory_bytes() -> u64 {
    static BYTES: LazyLock<u64> = LazyLock::new(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            })
            .unwrap_or(4 << 30)
    });
    *BYTES
}

/// JSON nesting a row may have. Every tandem column holds a scalar, so a row is one object of
/// scalars; some nesting is allowed for fields that `input_format_skip_unknown_fields` skips.
pub const MAX_JSON_DEPTH: usize = 64;

/// Longest `insert_deduplication_token`, in bytes.
pub const MAX_DEDUP_TOKEN_BYTES: usize = 1024;

/// Longest value a string function may produce (`repeat`, `lpad`, ...), in bytes.
pub const MAX_STRING_VALUE_BYTES: usize = 16 << 20;

/// The longest any request waits for replication or a revision, whatever it asks for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// Result bytes held back before the status line is sent: a query that fails early (or
/// exceeds a limit early) still answers with a proper status and message.
pub const RESULT_HEAD_BYTES: usize = 1 << 20;
