//! `system.query_log`: every statement this node answered, who sent it, how it ended, how many
//! rows and bytes it moved and how long it took; kept in memory for a bounded time and count
//! (an audit trail of the node's recent past, not an archive). Passwords never enter it: the
//! literals of `IDENTIFIED ... BY` are masked before a statement is kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// At most this much of a statement's text is kept.
pub const MAX_LOGGED_QUERY_BYTES: usize = 2048;

/// One finished statement.
#[derive(Clone, Debug)]
pub struct QueryLogEntry {
    /// When it started, in milliseconds since the Unix epoch.
    pub event_time_ms: i64,
    pub user: String,
    /// `SELECT`, `INSERT`, `CREATE TABLE`, ... (empty when the statement did not parse).
    pub kind: &'static str,
    /// The statement's text, secrets masked, at most [`MAX_LOGGED_QUERY_BYTES`].
    pub query: String,
    /// The HTTP status answered (499: the client went away before the end).
    pub status: u16,
    /// The error's code and message, when it failed.
    pub error: Option<(&'static str, String)>,
    /// Rows written (an insert) or sent (a query).
    pub rows: u64,
    /// Bytes received (an insert) or sent (a query).
    pub bytes: u64,
    pub duration: Duration,
}

/// The node's recent statements.
pub struct QueryLog {
    entries: Mutex<VecDeque<QueryLogEntry>>,
    max_entries: usize,
    retention: Duration,
}

impl QueryLog {
    pub fn new(max_entries: usize, retention: Duration) -> Arc<QueryLog> {
        Arc::new(QueryLog { entries: Mutex::new(VecDeque::new()), max_entries, retention })
    }

    /// Starts logging a request; it is kept once finished (or dropped unfinished).
    pub fn begin(self: &Arc<Self>) -> PendingQuery {
        PendingQuery {
            log: self.clone(),
            user: String::new(),
            kind: "",
            query: String::new(),
            started_at: SystemTime::now(),
            started: Instant::now(),
            finished: false,
        }
    }

    /// The entries kept, oldest first.
    pub fn entries(&self) -> Vec<QueryLogEntry> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.evict(&mut entries, now_ms());
        entries.iter().cloned().collect()
    }

    fn record(&self, entry: QueryLogEntry) {
        if self.max_entries == 0 {
            return;
        }
        // The newest entry's start stands for the present: the retention is minutes or more, and
        // a clock read per statement is not free.
        let now_ms = entry.event_time_ms;
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.push_back(entry);
        self.evict(&mut entries, now_ms);
    }

    fn evict(&self, entries: &mut VecDeque<QueryLogEntry>, now_ms: i64) {
        while entries.len() > self.max_entries {
            entries.pop_front();
        }
        let oldest_kept = now_ms - self.retention.as_millis().min(i64::MAX as u128) as i64;
        while entries.front().is_some_and(|e| e.event_time_ms < oldest_kept) {
            entries.pop_front();
        }
    }
}

/// Rows and bytes a response moved, attached to it for the query log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Moved {
    pub rows: u64,
    pub bytes: u64,
}

/// A request on its way: filled in as it is understood, kept when it ends.
pub struct PendingQuery {
    log: Arc<QueryLog>,
    user: String,
    kind: &'static str,
    query: String,
    started_at: SystemTime,
    started: Instant,
    finished: bool,
}

impl PendingQuery {
    pub fn set_user(&mut self, user: &str) {
        self.user = user.to_string();
    }

    /// The statement's text (masked and cut here).
    pub fn set_query(&mut self, text: &str) {
        self.query = masked(text);
    }

    pub fn set_kind(&mut self, kind: &'static str) {
        self.kind = kind;
    }

    /// Keeps the entry: the status answered, the error if any, rows and bytes moved.
    pub fn finish(mut self, status: u16, error: Option<(&'static str, String)>, rows: u64, bytes: u64) {
        self.finished = true;
        let entry = QueryLogEntry {
            event_time_ms: self.started_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            user: std::mem::take(&mut self.user),
            kind: self.kind,
            query: std::mem::take(&mut self.query),
            status,
            error,
            rows,
            bytes,
            duration: self.started.elapsed(),
        };
        self.log.record(entry);
    }
}

impl Drop for PendingQuery {
    /// A request dropped before it finished: the client went away mid-answer.
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            let pending = PendingQuery {
                log: self.log.clone(),
                user: std::mem::take(&mut self.user),
                kind: self.kind,
                query: std::mem::take(&mut self.query),
                started_at: self.started_at,
                started: self.started,
                finished: false,
            };
            pending.finish(499, Some(("CLIENT_CLOSED", "the client went away before the answer ended".into())), 0, 0);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `text` cut to [`MAX_LOGGED_QUERY_BYTES`] (on a character boundary), then every quoted literal
/// after `IDENTIFIED` replaced by `'[HIDDEN]'`, as ClickHouse masks its logs (a literal the cut
/// left open stays hidden to the end).
pub fn masked(text: &str) -> String {
    let mut end = text.len().min(MAX_LOGGED_QUERY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    // Found without an upper-cased copy of the text, and compared only where an `I` is: this
    // runs on every request.
    let bytes = text.as_bytes();
    let Some(start) = memchr::memchr2_iter(b'I', b'i', bytes).find(|&at| {
        bytes.get(at..at + b"IDENTIFIED".len()).is_some_and(|word| word.eq_ignore_ascii_case(b"IDENTIFIED"))
    }) else {
        return text.to_string();
    };
    let (head, rest) = text.split_at(start);
    let mut out = head.to_string();
    let mut in_literal = false;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_literal, c) {
            (false, '\'') => {
                in_literal = true;
                out.push_str("'[HIDDEN]");
            }
            (false, c) => out.push(c),
            // A doubled quote is a quote inside the literal.
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
            }
            (true, '\\') => {
                chars.next();
            }
            (true, '\'') => {
                in_literal = false;
                out.push('\'');
            }
            (true, _) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_wherever_they_are_quoted() {
        assert_eq!(masked("CREATE USER a IDENTIFIED BY 'hunter2'"), "CREATE USER a IDENTIFIED BY '[HIDDEN]'");
        assert_eq!(
            masked("alter user a identified with sha256_password by 'it''s \\' secret' -- x"),
            "alter user a identified with sha256_password by '[HIDDEN]' -- x"
        );
        assert_eq!(masked("CREATE USER a IDENTIFIED BY 'never closed"), "CREATE USER a IDENTIFIED BY '[HIDDEN]");
        assert_eq!(masked("SELECT 'x' FROM t"), "SELECT 'x' FROM t", "other literals stay");
        assert_eq!(masked(&"é".repeat(5000)).len(), MAX_LOGGED_QUERY_BYTES);
    }

    #[test]
    fn entries_are_bounded_in_count_and_kept_when_dropped_unfinished() {
        let log = QueryLog::new(2, Duration::from_secs(3600));
        for i in 0..3 {
            let mut pending = log.begin();
            pending.set_query(&format!("SELECT {i}"));
            pending.finish(200, None, 1, 2);
        }
        let kept: Vec<String> = log.entries().into_iter().map(|e| e.query).collect();
        assert_eq!(kept, ["SELECT 1", "SELECT 2"]);
        let mut gone = log.begin();
        gone.set_user("alice");
        drop(gone);
        assert_eq!(log.entries().last().map(|e| (e.user.as_str(), e.status)), Some(("alice", 499)));
        let expired = QueryLog::new(10, Duration::ZERO);
        expired.begin().finish(200, None, 0, 0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(expired.entries().is_empty(), "entries older than the retention go");
    }
}
