//! The head of an INSERT, `INSERT INTO [TABLE] name [(columns)] FORMAT name` or `... VALUES`,
//! read left to right in one pass. Every small insert is parsed this way, and a regular
//! expression with captures here took about 2% of a 10-row insert's CPU.

/// What the head names, as slices of the statement's text.
#[derive(Debug, PartialEq, Eq)]
pub struct InsertHead<'a> {
    /// The table name as written, unquoted (`default.` not yet stripped).
    pub table: &'a str,
    /// The text between the parentheses of a column list.
    pub columns: Option<&'a str>,
    /// The format name of `FORMAT name`; None for `VALUES`.
    pub format: Option<&'a str>,
    /// Where the text after the format name or `VALUES` starts.
    pub rest: usize,
}

/// Reads the head at the start of `sql` (leading blanks allowed; keywords in any case). None
/// when the text does not start with one.
pub fn read(sql: &str) -> Option<InsertHead<'_>> {
    let mut cursor = Cursor { text: sql, at: 0 };
    cursor.blanks();
    if !(cursor.keyword("INSERT") && cursor.blanks() && cursor.keyword("INTO") && cursor.blanks()) {
        return None;
    }
    let before_table_keyword = cursor.at;
    if !(cursor.keyword("TABLE") && cursor.blanks()) {
        cursor.at = before_table_keyword;
    }
    cursor.quote();
    let table = cursor.name()?;
    cursor.quote();
    cursor.blanks();
    let columns = cursor.parenthesized();
    cursor.blanks();
    let format = if cursor.keyword("FORMAT") {
        if !cursor.blanks() {
            return None;
        }
        Some(cursor.take_while(|c| c.is_ascii_alphabetic()).filter(|f| !f.is_empty())?)
    } else if cursor.keyword("VALUES") {
        None
    } else {
        return None;
    };
    Some(InsertHead { table, columns, format, rest: cursor.at })
}

/// A position in the statement's text.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> &'a str {
        self.text.get(self.at..).unwrap_or_default()
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> Option<&'a str> {
        let remaining = self.remaining();
        let end = remaining.find(|c: char| !keep(c)).unwrap_or(remaining.len());
        self.at += end;
        remaining.get(..end)
    }

    /// Skips whitespace; whether there was any.
    fn blanks(&mut self) -> bool {
        self.take_while(char::is_whitespace).is_some_and(|skipped| !skipped.is_empty())
    }

    /// Takes `word` (upper case) in any case.
    fn keyword(&mut self, word: &str) -> bool {
        let found = self
            .remaining()
            .as_bytes()
            .get(..word.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(word.as_bytes()));
        if found {
            self.at += word.len();
        }
        found
    }

    /// Takes one backquote or double quote, if there is one.
    fn quote(&mut self) {
        if self.remaining().starts_with(['`', '"']) {
            self.at += 1;
        }
    }

    /// A name: a letter or underscore, then letters, digits, underscores and dots.
    fn name(&mut self) -> Option<&'a str> {
        if !self.remaining().starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return None;
        }
        self.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    }

    /// The text inside `( ... )` up to the first closing parenthesis, if a complete one is next.
    fn parenthesized(&mut self) -> Option<&'a str> {
        let inner = self.remaining().strip_prefix('(')?;
        let close = inner.find(')')?;
        self.at += 1 + close + 1;
        inner.get(..close)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_the_head() {
        let cases = [
            ("INSERT INTO t FORMAT TSV\n1\n", ("t", None, Some("TSV"), "\n1\n")),
            (
                "  insert\ninto  TABLE `default.t` (a, `b`)FORMAT  CSVWithNames x",
                ("default.t", Some("a, `b`"), Some("CSVWithNames"), " x"),
            ),
            ("INSERT INTO \"t\"(a) VALUES (1)", ("t", Some("a"), None, " (1)")),
            ("INSERT INTO table_x FORMAT JSONEachRow", ("table_x", None, Some("JSONEachRow"), "")),
            ("INSERT INTO t values(1)", ("t", None, None, "(1)")),
        ];
        for (sql, expected) in cases {
            let head = read(sql).unwrap_or_else(|| panic!("{sql}"));
            assert_eq!((head.table, head.columns, head.format, &sql[head.rest..]), expected, "{sql}");
        }
    }

    #[test]
    fn text_that_is_not_a_head_is_refused() {
        for sql in [
            "",
            "INSERT t FORMAT TSV",
            "INSERTINTO t FORMAT TSV",
            "INSERT INTO 1t FORMAT TSV",
            "INSERT INTO t FORMAT",
            "INSERT INTO t FORMAT 1",
            "INSERT INTO t FORMATTSV",
            "INSERT INTO t (a FORMAT TSV",
            "INSERT INTO t SELECT 1",
            "INSERT INTO é FORMAT TSV",
            "INSERT INTO t\u{1F600} FORMAT TSV",
        ] {
            assert_eq!(read(sql), None, "{sql}");
        }
    }
}
