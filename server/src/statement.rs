//! Parsing what arrives in `?query=` (or the body): which statement it is, and for DDL and
//! `INSERT ... VALUES` the statement itself. SELECTs go to DataFusion whole, minus a
//! trailing `FORMAT` clause.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod access;
mod insert_head;

use std::sync::LazyLock;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DataType as SqlType, DateTimeField, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    Interval, UnaryOperator, Value,
};
use datafusion::sql::sqlparser::dialect::ClickHouseDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;
use regex::Regex;
use tandem_access::AccessChange;
use tandem_parts::PartitionSpec;
use tandem_replica::schema::{
    ColumnDef, ColumnType, IntervalUnit, TABLE_FORMAT_VERSION, TableDef, TableSettings, valid_name,
};
use tandem_replica::{AlterAction, ColumnPosition, TtlSpec};

use crate::error::NodeError;

/// A statement, as the front door runs it. `Access` is `CREATE USER`, `ALTER USER`, `DROP USER`,
/// `GRANT` or `REVOKE`; `ShowGrants` without a user shows the caller's own.
#[derive(Debug)]
pub enum Statement {
    CreateTable {
        def: TableDef,
        if_not_exists: bool,
    },
    Alter {
        table: String,
        actions: Vec<AlterAction>,
    },
    DropTable {
        name: String,
        if_exists: bool,
    },
    ShowTables {
        format: Option<String>,
    },
    ShowDatabases {
        format: Option<String>,
    },
    /// `EXISTS [TABLE] t`: 1 when the table exists, 0 otherwise.
    Exists {
        name: String,
        format: Option<String>,
    },
    Describe {
        name: String,
        format: Option<String>,
    },
    Insert(InsertStatement),
    Select {
        sql: String,
        format: Option<String>,
    },
    Access(AccessChange),
    ShowUsers {
        format: Option<String>,
    },
    ShowGrants {
        user: Option<String>,
        format: Option<String>,
    },
}

impl Statement {
    /// Whether running it changes anything (a GET may only run statements that do not).
    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            Statement::Select { .. }
                | Statement::ShowTables { .. }
                | Statement::ShowDatabases { .. }
                | Statement::Exists { .. }
                | Statement::Describe { .. }
                | Statement::ShowUsers { .. }
                | Statement::ShowGrants { .. }
        )
    }

    /// What kind of statement it is, as a user would name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Statement::CreateTable { .. } => "CREATE TABLE",
            Statement::Alter { .. } => "ALTER TABLE",
            Statement::DropTable { .. } => "DROP TABLE",
            Statement::ShowTables { .. } => "SHOW TABLES",
            Statement::ShowDatabases { .. } => "SHOW DATABASES",
            Statement::Exists { .. } => "EXISTS",
            Statement::Describe { .. } => "DESCRIBE",
            Statement::Insert(_) => "INSERT",
            Statement::Select { .. } => "SELECT",
            Statement::Access(AccessChange::CreateUser { .. }) => "CREATE USER",
            Statement::Access(AccessChange::SetPassword { .. }) => "ALTER USER",
            Statement::Access(AccessChange::DropUsers { .. }) => "DROP USER",
            Statement::Access(AccessChange::Grant { .. }) => "GRANT",
            Statement::Access(AccessChange::Revoke { .. }) => "REVOKE",
            Statement::ShowUsers { .. } => "SHOW USERS",
            Statement::ShowGrants { .. } => "SHOW GRANTS",
        }
    }
}

#[derive(Debug)]
pub struct InsertStatement {
    pub table: String,
    pub columns: Option<Vec<String>>,
    pub source: InsertSource,
}

#[derive(Debug)]
pub enum InsertSource {
    /// Rows in a named format. Data that follows the statement in the same text starts at
    /// byte `data_offset` of that text.
    Format { format: String, data_offset: usize },
    /// `VALUES (...), (...)`: rows as JSON objects keyed by column, ready for the JSON reader.
    Values(Vec<Vec<serde_json::Value>>),
}

// The patterns are constants, compiled by every test run: they cannot fail on input.
#[allow(clippy::expect_used)]
static FORMAT_SUFFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?is)\s+FORMAT\s+([A-Za-z]+)\s*;?\s*$").expect("valid regex"));
#[allow(clippy::expect_used)]
static LEADING_WORDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z]+(?:\s+[A-Za-z]+)?").expect("valid regex"));

/// Strips leading SQL comments and whitespace.
fn trim_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(rest) = sql.strip_prefix("/*") {
            sql = rest.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            return sql;
        }
    }
}

/// What parsing takes from the server: a new table's default settings and how many columns
/// a table may have.
#[derive(Clone, Debug)]
pub struct ParseOptions {
    pub table_defaults: TableSettings,
    pub max_columns: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            table_defaults: TableSettings::default(),
            max_columns: crate::limits::Limits::default().max_columns,
        }
    }
}

/// Table names a user cannot take: the schemas queries resolve `x.t` against.
const RESERVED_TABLE_NAMES: [&str; 3] = ["system", "information_schema", "default"];

/// Parses a statement with the built-in defaults.
pub fn parse(text: &str) -> Result<Statement, NodeError> {
    parse_with(text, &ParseOptions::default())
}

/// `sql`, an INSERT found `skipped` bytes into the request's text.
fn insert_statement(sql: &str, skipped: usize) -> Result<Statement, NodeError> {
    let mut insert = parse_insert(sql)?;
    if let InsertSource::Format { data_offset, .. } = &mut insert.source {
        *data_offset += skipped;
    }
    Ok(Statement::Insert(insert))
}

/// Parses a statement; a new table's settings start from the server's defaults, then take its
/// `SETTINGS` clause.
pub fn parse_with(text: &str, options: &ParseOptions) -> Result<Statement, NodeError> {
    let sql = trim_comments(text);
    let skipped = text.len() - sql.len();
    if sql.is_empty() {
        return Err(NodeError::bad_request("empty query: pass the statement in ?query= or in the request body"));
    }
    // An INSERT, what most requests carry, is told by its first word alone: the general
    // dispatch below (a regular expression, an upper-cased copy) cost more than reading the
    // INSERT's head.
    if sql.get(..6).is_some_and(|word| word.eq_ignore_ascii_case("INSERT"))
        && sql.as_bytes().get(6).is_some_and(u8::is_ascii_whitespace)
    {
        return insert_statement(sql, skipped);
    }
    let head = LEADING_WORDS.find(sql).map(|m| m.as_str().to_ascii_uppercase()).unwrap_or_default();
    let head: Vec<&str> = head.split_whitespace().collect();
    match head.as_slice() {
        ["INSERT", ..] => insert_statement(sql, skipped),
        ["CREATE", "TABLE"] => parse_create_table(sql, options),
        ["DROP", "TABLE"] => parse_drop_table(sql),
        ["SHOW", "TABLES"] => Ok(Statement::ShowTables { format: split_format(sql).1 }),
        ["SHOW", "DATABASES"] => Ok(Statement::ShowDatabases { format: split_format(sql).1 }),
        ["EXISTS", ..] => {
            let (body, format) = split_format(sql);
            let mut parser = parser(body)?;
            parser.next_token();
            let _optional = parser.parse_keyword(Keyword::TABLE);
            let name = table_name(&mut parser)?;
            expect_end(&mut parser)?;
            Ok(Statement::Exists { name, format })
        }
        ["DESCRIBE" | "DESC", ..] => {
            let (body, format) = split_format(sql);
            let mut parser = parser(body)?;
            parser.next_token();
            let _optional = parser.parse_keyword(Keyword::TABLE);
            let name = table_name(&mut parser)?;
            Ok(Statement::Describe { name, format })
        }
        ["ALTER", "TABLE"] => parse_alter_table(sql),
        ["CREATE", "USER"] => access::parse_create_user(sql),
        ["ALTER", "USER"] => access::parse_alter_user(sql),
        ["DROP", "USER"] => access::parse_drop_user(sql),
        ["GRANT" | "REVOKE", ..] => access::parse_grant_or_revoke(sql),
        ["SHOW", "USERS"] => access::parse_show_users(sql),
        ["SHOW", "GRANTS"] => access::parse_show_grants(sql),
        ["CREATE", ..] | ["DROP", ..] => Err(NodeError::NotImplemented(format!(
            "`{}` is not supported: tandem has CREATE TABLE, DROP TABLE, CREATE USER and DROP USER",
            head.join(" ")
        ))),
        _ => {
            let (body, format) = split_format(sql);
            Ok(Statement::Select { sql: body.to_string(), format })
        }
    }
}

/// Splits a trailing `FORMAT <name>` off a query.
pub fn split_format(sql: &str) -> (&str, Option<String>) {
    let suffix = FORMAT_SUFFIX.captures(sql).and_then(|c| Some((c.get(0)?.start(), c.get(1)?.as_str().to_string())));
    match suffix.and_then(|(start, name)| Some((sql.get(..start)?, name))) {
        Some((body, name)) => (body, Some(name)),
        None => (sql.trim_end().trim_end_matches(';'), None),
    }
}

fn parser(sql: &str) -> Result<Parser<'static>, NodeError> {
    static DIALECT: ClickHouseDialect = ClickHouseDialect {};
    Parser::new(&DIALECT).try_with_sql(sql).map_err(syntax)
}

fn syntax(e: ParserError) -> NodeError {
    NodeError::bad_request(format!("syntax error: {e}"))
}

fn table_name(parser: &mut Parser) -> Result<String, NodeError> {
    let name = parser.parse_object_name(false).map_err(syntax)?;
    let parts: Vec<String> =
        name.0.iter().map(|p| p.to_string().trim_matches(|c| c == '`' || c == '"').to_string()).collect();
    // `default.t` names table `t` of the only database.
    let table = match parts.as_slice() {
        [db, table] if db == "default" => table.clone(),
        [table] => table.clone(),
        _ => {
            return Err(NodeError::bad_request(format!(
                "`{name}` is not a table name: tandem has one database, `default`"
            )));
        }
    };
    if !valid_name(&table) {
        return Err(NodeError::bad_request(format!(
            "`{table}` is not a valid table name: use letters, digits and `_`, not starting with a digit"
        )));
    }
    Ok(table)
}

fn parse_drop_table(sql: &str) -> Result<Statement, NodeError> {
    let mut parser = parser(sql)?;
    parser.expect_keywords(&[Keyword::DROP, Keyword::TABLE]).map_err(syntax)?;
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = table_name(&mut parser)?;
    let _optional = parser.parse_keyword(Keyword::SYNC);
    expect_end(&mut parser)?;
    Ok(Statement::DropTable { name, if_exists })
}

fn expect_end(parser: &mut Parser) -> Result<(), NodeError> {
    let _optional = parser.consume_token(&Token::SemiColon);
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(NodeError::bad_request(format!("syntax error: unexpected `{other}` at the end of the statement"))),
    }
}

fn parse_create_table(sql: &str, options: &ParseOptions) -> Result<Statement, NodeError> {
    let mut parser = parser(sql)?;
    parser.expect_keywords(&[Keyword::CREATE, Keyword::TABLE]).map_err(syntax)?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = table_name(&mut parser)?;
    if RESERVED_TABLE_NAMES.iter().any(|reserved| name.eq_ignore_ascii_case(reserved)) {
        return Err(NodeError::bad_request(format!(
            "`{name}` cannot be a table name: it is reserved for the schema of the same name"
        )));
    }
    parser.expect_token(&Token::LParen).map_err(syntax)?;
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut names = std::collections::HashSet::new();
    loop {
        let column = parse_column_def(&mut parser)?;
        if !names.insert(column.name.clone()) {
            return Err(NodeError::bad_request(format!("column `{}` is declared twice", column.name)));
        }
        if columns.len() == options.max_columns {
            return Err(NodeError::bad_request(format!(
                "table `{name}` declares more than max_columns = {} columns",
                options.max_columns
            )));
        }
        columns.push(column);
        if parser.consume_token(&Token::RParen) {
            break;
        }
        parser.expect_token(&Token::Comma).map_err(syntax)?;
    }

    let mut order_by = Vec::new();
    let mut partition_by = PartitionSpec::None;
    let mut ttl = None;
    let mut settings = options.table_defaults.clone();
    loop {
        if parser.parse_keyword(Keyword::ENGINE) {
            let _optional = parser.consume_token(&Token::Eq);
            let engine = parser.parse_identifier().map_err(syntax)?.value;
            if parser.consume_token(&Token::LParen) {
                parser.expect_token(&Token::RParen).map_err(syntax)?;
            }
            if !engine.ends_with("MergeTree") {
                return Err(NodeError::bad_request(format!(
                    "ENGINE {engine} is not supported: every tandem table is a replicated MergeTree-like table; omit ENGINE"
                )));
            }
        } else if parser.parse_keywords(&[Keyword::ORDER, Keyword::BY])
            || parser.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY])
        {
            order_by = key_columns(parser.parse_expr().map_err(syntax)?)?;
        } else if parser.parse_keywords(&[Keyword::PARTITION, Keyword::BY]) {
            partition_by = partition_spec(parser.parse_expr().map_err(syntax)?, &columns)?;
        } else if parse_word(&mut parser, "TTL") {
            ttl = Some(ttl_spec(&mut parser)?);
        } else if parser.parse_keyword(Keyword::SETTINGS) {
            for (key, value) in parse_settings(&mut parser)? {
                settings.set(&key, &value)?;
            }
        } else {
            break;
        }
    }
    expect_end(&mut parser)?;

    for key in &order_by {
        if !columns.iter().any(|c| &c.name == key) {
            return Err(NodeError::bad_request(format!(
                "ORDER BY names column `{key}`, which the table does not have"
            )));
        }
    }
    let mut def = TableDef {
        format_version: TABLE_FORMAT_VERSION,
        name,
        columns,
        order_by,
        partition_by,
        settings,
        next_column_id: 0,
        ttl: None,
    };
    def.assign_column_ids();
    def.set_ttl(ttl.as_ref().map(|t| (t.column.as_str(), t.count, t.unit)))?;
    Ok(Statement::CreateTable { def, if_not_exists })
}

/// `name Type [NULL | NOT NULL] [DEFAULT literal] [COMMENT 'text']`; the id is assigned later.
fn parse_column_def(parser: &mut Parser) -> Result<ColumnDef, NodeError> {
    let name = parser.parse_identifier().map_err(syntax)?.value;
    if !valid_name(&name) {
        return Err(NodeError::bad_request(format!("`{name}` is not a valid column name")));
    }
    let sql_type = parser.parse_data_type().map_err(syntax)?;
    let (column_type, mut nullable) = column_type(&name, &sql_type)?;
    let mut default = None;
    let mut comment = None;
    // Column options tandem understands; anything else is a syntax error, not silently dropped.
    loop {
        if parser.parse_keywords(&[Keyword::NOT, Keyword::NULL]) {
            nullable = false;
        } else if parser.parse_keyword(Keyword::NULL) {
            nullable = true;
        } else if parser.parse_keyword(Keyword::DEFAULT) {
            let expr = parser.parse_expr().map_err(syntax)?;
            let value = literal(&expr).map_err(|_| {
                NodeError::bad_request(format!("column `{name}`: DEFAULT must be a literal value, got `{expr}`"))
            })?;
            default = Some(value);
        } else if parser.parse_keyword(Keyword::COMMENT) {
            comment = Some(parser.parse_literal_string().map_err(syntax)?);
        } else {
            break;
        }
    }
    let column = ColumnDef { id: 0, name, column_type, nullable, default, comment };
    crate::column_default::fill_value(&column)
        .map_err(|e| NodeError::bad_request(format!("column `{}`: {e}", column.name)))?;
    Ok(column)
}

fn parse_alter_table(sql: &str) -> Result<Statement, NodeError> {
    let mut parser = parser(sql)?;
    parser.expect_keywords(&[Keyword::ALTER, Keyword::TABLE]).map_err(syntax)?;
    let table = table_name(&mut parser)?;
    let mut actions = Vec::new();
    loop {
        let action = if parser.parse_keyword(Keyword::ADD) {
            let _optional = parser.parse_keyword(Keyword::COLUMN);
            let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let column = parse_column_def(&mut parser)?;
            let position = if parser.parse_keyword(Keyword::FIRST) {
                Some(ColumnPosition::First)
            } else if parser.parse_keyword(Keyword::AFTER) {
                Some(ColumnPosition::After(parser.parse_identifier().map_err(syntax)?.value))
            } else {
                None
            };
            AlterAction::AddColumn { column, if_not_exists, position }
        } else if parser.parse_keyword(Keyword::DROP) {
            parser.expect_keyword(Keyword::COLUMN).map_err(syntax)?;
            let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            AlterAction::DropColumn { name: parser.parse_identifier().map_err(syntax)?.value, if_exists }
        } else if parser.parse_keyword(Keyword::RENAME) {
            parser.expect_keyword(Keyword::COLUMN).map_err(syntax)?;
            let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let from = parser.parse_identifier().map_err(syntax)?.value;
            parser.expect_keyword(Keyword::TO).map_err(syntax)?;
            let to = parser.parse_identifier().map_err(syntax)?.value;
            if !valid_name(&to) {
                return Err(NodeError::bad_request(format!("`{to}` is not a valid column name")));
            }
            AlterAction::RenameColumn { from, to, if_exists }
        } else if parser.parse_keyword(Keyword::COMMENT) {
            parser.expect_keyword(Keyword::COLUMN).map_err(syntax)?;
            let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = parser.parse_identifier().map_err(syntax)?.value;
            AlterAction::CommentColumn { name, comment: parser.parse_literal_string().map_err(syntax)?, if_exists }
        } else if parser.parse_keyword(Keyword::MODIFY) {
            if parser.parse_keyword(Keyword::COLUMN) {
                let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
                let name = parser.parse_identifier().map_err(syntax)?.value;
                parser.expect_keyword(Keyword::COMMENT).map_err(|_| {
                    NodeError::NotImplemented(format!(
                        "MODIFY COLUMN `{name}` supports only COMMENT; changing a column's type is not supported"
                    ))
                })?;
                AlterAction::CommentColumn { name, comment: parser.parse_literal_string().map_err(syntax)?, if_exists }
            } else if parse_word(&mut parser, "SETTING") || parser.parse_keyword(Keyword::SETTINGS) {
                AlterAction::ModifySettings(parse_settings(&mut parser)?)
            } else if parse_word(&mut parser, "TTL") {
                AlterAction::ModifyTtl(Some(ttl_spec(&mut parser)?))
            } else {
                return Err(NodeError::bad_request(
                    "syntax error: expected MODIFY COLUMN, MODIFY SETTING or MODIFY TTL",
                ));
            }
        } else if parser.parse_keyword(Keyword::REMOVE) {
            if !parse_word(&mut parser, "TTL") {
                return Err(NodeError::bad_request("syntax error: expected REMOVE TTL"));
            }
            AlterAction::ModifyTtl(None)
        } else {
            return Err(NodeError::bad_request(
                "syntax error: ALTER TABLE takes ADD COLUMN, DROP COLUMN, RENAME COLUMN, COMMENT COLUMN, \
                 MODIFY COLUMN ... COMMENT, MODIFY SETTING, MODIFY TTL or REMOVE TTL",
            ));
        };
        actions.push(action);
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    expect_end(&mut parser)?;
    Ok(Statement::Alter { table, actions })
}

/// Consumes the next token if it is the word `word` (for words sqlparser has no keyword for).
fn parse_word(parser: &mut Parser, word: &str) -> bool {
    let matches = matches!(&parser.peek_token().token, Token::Word(w) if w.value.eq_ignore_ascii_case(word));
    if matches {
        parser.next_token();
    }
    matches
}

/// `k = v[, k = v]` of table settings, each a literal (checked by [`tandem_replica::schema::TableSettings::set`]).
fn parse_settings(parser: &mut Parser) -> Result<Vec<(String, serde_json::Value)>, NodeError> {
    let mut settings = Vec::new();
    loop {
        let key = parser.parse_identifier().map_err(syntax)?.value;
        parser.expect_token(&Token::Eq).map_err(syntax)?;
        let value = parser.parse_expr().map_err(syntax)?;
        let value = literal(&value)
            .map_err(|_| NodeError::bad_request(format!("setting `{key}` needs a literal value, got `{value}`")))?;
        settings.push((key, value));
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    Ok(settings)
}

const SUPPORTED_TYPES: &str = "Int8..Int64, UInt8..UInt64, Float32, Float64, Bool, String, Date, DateTime, DateTime64(p), \
     Nullable(T), and TINYINT, SMALLINT, INT, BIGINT, REAL, FLOAT, DOUBLE, BOOLEAN, VARCHAR, TEXT, DATE, TIMESTAMP";

fn column_type(column: &str, sql_type: &SqlType) -> Result<(ColumnType, bool), NodeError> {
    use ColumnType as C;
    let t = match sql_type {
        SqlType::Nullable(inner) => return Ok((column_type(column, inner)?.0, true)),
        SqlType::LowCardinality(inner) => return column_type(column, inner),
        SqlType::Int8(_) | SqlType::TinyInt(_) => C::Int8,
        SqlType::Int16 | SqlType::SmallInt(_) | SqlType::Int2(_) => C::Int16,
        SqlType::Int32 | SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => C::Int32,
        SqlType::Int64 | SqlType::BigInt(_) => C::Int64,
        SqlType::UInt8 | SqlType::TinyIntUnsigned(_) => C::UInt8,
        SqlType::UInt16 | SqlType::SmallIntUnsigned(_) => C::UInt16,
        SqlType::UInt32 | SqlType::IntUnsigned(_) | SqlType::IntegerUnsigned(_) => C::UInt32,
        SqlType::UInt64 | SqlType::BigIntUnsigned(_) => C::UInt64,
        SqlType::Float32 | SqlType::Real | SqlType::Float4 => C::Float32,
        SqlType::Float64 | SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 | SqlType::Float(_) => {
            C::Float64
        }
        SqlType::Bool | SqlType::Boolean => C::Bool,
        SqlType::String(_) | SqlType::Varchar(_) | SqlType::Text | SqlType::Char(_) | SqlType::CharacterVarying(_) => {
            C::String
        }
        SqlType::Date | SqlType::Date32 => C::Date,
        SqlType::Datetime(_) => C::DateTime,
        SqlType::Datetime64(p, None) if [0, 3, 6, 9].contains(p) => C::DateTime64(*p as u8),
        // SQL's TIMESTAMP has microseconds by default; TIMESTAMP(p) picks the precision.
        SqlType::Timestamp(p, _) => match p.unwrap_or(6) {
            0 => C::DateTime64(0),
            3 => C::DateTime64(3),
            6 => C::DateTime64(6),
            9 => C::DateTime64(9),
            other => {
                return Err(NodeError::bad_request(format!(
                    "column `{column}`: TIMESTAMP({other}) is not supported; precision is 0, 3, 6 or 9"
                )));
            }
        },
        other => {
            return Err(NodeError::bad_request(format!(
                "column `{column}` has type {other}, which tandem does not support; supported: {SUPPORTED_TYPES}"
            )));
        }
    };
    Ok((t, false))
}

/// `ORDER BY c`, `ORDER BY (a, b)`, `ORDER BY tuple(a, b)`, `ORDER BY tuple()`: column names.
fn key_columns(expr: Expr) -> Result<Vec<String>, NodeError> {
    let items = match expr {
        Expr::Nested(inner) => return key_columns(*inner),
        Expr::Tuple(items) => items,
        Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("tuple") => function_args(&f.args),
        single => vec![single],
    };
    items.into_iter().map(key_column).collect()
}

fn key_column(expr: Expr) -> Result<String, NodeError> {
    match expr {
        Expr::Identifier(ident) => Ok(ident.value),
        Expr::Nested(inner) => key_column(*inner),
        other => Err(NodeError::bad_request(format!("ORDER BY takes column names, got `{other}`"))),
    }
}

fn function_args(args: &FunctionArguments) -> Vec<Expr> {
    match args {
        FunctionArguments::List(list) => list
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn partition_spec(expr: Expr, columns: &[ColumnDef]) -> Result<PartitionSpec, NodeError> {
    let temporal_column = |name: &str| -> Result<String, NodeError> {
        match columns.iter().find(|c| c.name == name) {
            Some(c) if c.column_type.is_temporal() && !c.nullable => Ok(name.to_string()),
            Some(c) => Err(NodeError::bad_request(format!(
                "PARTITION BY needs a non-Nullable Date or DateTime column; `{name}` is {}",
                c.type_name()
            ))),
            None => Err(NodeError::bad_request(format!(
                "PARTITION BY names column `{name}`, which the table does not have"
            ))),
        }
    };
    let unsupported = |e: &Expr| {
        NodeError::bad_request(format!(
            "PARTITION BY `{e}` is not supported; use toYYYYMM(col), toYYYYMMDD(col), toDate(col) or tuple()"
        ))
    };
    match &expr {
        Expr::Function(f) => {
            let name = f.name.to_string();
            let args = function_args(&f.args);
            if name.eq_ignore_ascii_case("tuple") && args.is_empty() {
                return Ok(PartitionSpec::None);
            }
            let [Expr::Identifier(column)] = args.as_slice() else {
                return Err(unsupported(&expr));
            };
            let column = temporal_column(&column.value)?;
            match name.as_str() {
                "toYYYYMM" | "toStartOfMonth" => Ok(PartitionSpec::Month { column }),
                "toYYYYMMDD" | "toDate" | "toStartOfDay" => Ok(PartitionSpec::Day { column }),
                _ => Err(unsupported(&expr)),
            }
        }
        Expr::Identifier(ident) => {
            let column = temporal_column(&ident.value)?;
            match columns.iter().find(|c| c.name == column).map(|c| c.column_type) {
                Some(ColumnType::Date) => Ok(PartitionSpec::Day { column }),
                _ => Err(unsupported(&expr)),
            }
        }
        _ => Err(unsupported(&expr)),
    }
}

/// `<column> + INTERVAL <n> <unit> [DELETE]`, `<column> + toInterval<Unit>(<n>)` or `<column>`
/// (expire at the column's time). Moving rows to disks or volumes, `WHERE` and `GROUP BY` TTLs
/// are ClickHouse features tandem does not have: refused by name rather than ignored.
fn ttl_spec(parser: &mut Parser) -> Result<TtlSpec, NodeError> {
    // Looked for before parsing: `INTERVAL 1 DAY TO DISK` would otherwise read as an interval
    // range (`DAY TO SECOND`) and fail with a confusing message.
    let mut depth = 0usize;
    for ahead in 0.. {
        match &parser.peek_nth_token(ahead).token {
            Token::EOF | Token::SemiColon => break,
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            // The clauses that may follow a TTL in CREATE TABLE.
            Token::Word(w)
                if depth == 0
                    && [Keyword::SETTINGS, Keyword::ORDER, Keyword::PARTITION, Keyword::PRIMARY, Keyword::ENGINE]
                        .contains(&w.keyword) =>
            {
                break;
            }
            Token::Comma if depth == 0 => return Err(unsupported_ttl()),
            Token::Word(w)
                if depth == 0
                    && ["TO", "WHERE", "GROUP", "RECOMPRESS"].iter().any(|k| w.value.eq_ignore_ascii_case(k)) =>
            {
                return Err(unsupported_ttl());
            }
            _ => {}
        }
    }
    let expr = parser.parse_expr().map_err(syntax)?;
    // DELETE is the default action, and the only one.
    let _delete = parser.parse_keyword(Keyword::DELETE);
    let unsupported = || {
        NodeError::bad_request(format!(
            "TTL `{expr}` is not supported; write `<Date or DateTime column> + INTERVAL <n> <unit>` (SECOND, MINUTE, \
             HOUR, DAY, WEEK, MONTH, QUARTER or YEAR)"
        ))
    };
    let (column, interval) = match &expr {
        Expr::Identifier(column) => {
            return Ok(TtlSpec { column: column.value.clone(), count: 0, unit: IntervalUnit::Second });
        }
        Expr::BinaryOp { left, op: BinaryOperator::Plus, right } => match left.as_ref() {
            Expr::Identifier(column) => (column.value.clone(), right.as_ref()),
            _ => return Err(unsupported()),
        },
        _ => return Err(unsupported()),
    };
    let (count, unit) = match interval {
        Expr::Interval(Interval { value, leading_field: Some(field), last_field: None, .. }) => {
            let unit = match field {
                DateTimeField::Second | DateTimeField::Seconds => IntervalUnit::Second,
                DateTimeField::Minute | DateTimeField::Minutes => IntervalUnit::Minute,
                DateTimeField::Hour | DateTimeField::Hours => IntervalUnit::Hour,
                DateTimeField::Day | DateTimeField::Days => IntervalUnit::Day,
                DateTimeField::Week(None) | DateTimeField::Weeks => IntervalUnit::Week,
                DateTimeField::Month | DateTimeField::Months => IntervalUnit::Month,
                DateTimeField::Quarter => IntervalUnit::Quarter,
                DateTimeField::Year | DateTimeField::Years => IntervalUnit::Year,
                _ => return Err(unsupported()),
            };
            (value.as_ref(), unit)
        }
        Expr::Function(f) => {
            let unit = match f.name.to_string().to_ascii_lowercase().as_str() {
                "tointervalsecond" => IntervalUnit::Second,
                "tointervalminute" => IntervalUnit::Minute,
                "tointervalhour" => IntervalUnit::Hour,
                "tointervalday" => IntervalUnit::Day,
                "tointervalweek" => IntervalUnit::Week,
                "tointervalmonth" => IntervalUnit::Month,
                "tointervalquarter" => IntervalUnit::Quarter,
                "tointervalyear" => IntervalUnit::Year,
                _ => return Err(unsupported()),
            };
            let args = function_args(&f.args);
            let [count] = args.as_slice() else { return Err(unsupported()) };
            // `function_args` clones; the count is matched below by reference.
            return interval_count(count).map(|count| TtlSpec { column, count, unit }).ok_or_else(unsupported);
        }
        _ => return Err(unsupported()),
    };
    let count = interval_count(count).ok_or_else(unsupported)?;
    Ok(TtlSpec { column, count, unit })
}

fn unsupported_ttl() -> NodeError {
    NodeError::NotImplemented(
        "TTL supports one `<time column> + INTERVAL n <unit>` that deletes rows; several TTLs, TO DISK/VOLUME, \
         WHERE, GROUP BY and RECOMPRESS are not supported"
            .into(),
    )
}

/// The whole number of an interval: `30` or `'30'`.
fn interval_count(expr: &Expr) -> Option<u32> {
    match literal(expr).ok()? {
        serde_json::Value::Number(n) => u32::try_from(n.as_u64()?).ok(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn parse_insert(sql: &str) -> Result<InsertStatement, NodeError> {
    let head = insert_head::read(sql).ok_or_else(|| {
        NodeError::bad_request(
            "syntax error: expected `INSERT INTO <table> [(columns)] FORMAT <format>` or `... VALUES (...)`",
        )
    })?;
    let raw_table = head.table;
    let table = raw_table.strip_prefix("default.").unwrap_or(raw_table).to_string();
    if !valid_name(&table) {
        return Err(NodeError::bad_request(format!("`{raw_table}` is not a valid table name")));
    }
    let columns = head.columns.map(|list| {
        list.split(',')
            .map(|c| c.trim().trim_matches(|c| c == '`' || c == '"').to_string())
            .filter(|c| !c.is_empty())
            .collect()
    });
    let rest = sql.get(head.rest..).unwrap_or_default();
    let source = if let Some(format) = head.format {
        // The data starts after the format name: skip blanks and at most one line break.
        let trimmed = rest.trim_start_matches([' ', '\t']);
        let trimmed = trimmed.strip_prefix("\r\n").or_else(|| trimmed.strip_prefix('\n')).unwrap_or(trimmed);
        let data_offset = sql.len() - trimmed.len();
        InsertSource::Format { format: format.to_string(), data_offset }
    } else {
        InsertSource::Values(parse_values(rest)?)
    };
    Ok(InsertStatement { table, columns, source })
}

fn parse_values(text: &str) -> Result<Vec<Vec<serde_json::Value>>, NodeError> {
    let mut parser = parser(text)?;
    let mut rows = Vec::new();
    loop {
        if matches!(parser.peek_token().token, Token::EOF) {
            break;
        }
        parser.expect_token(&Token::LParen).map_err(syntax)?;
        let exprs = parser.parse_comma_separated(Parser::parse_expr).map_err(syntax)?;
        parser.expect_token(&Token::RParen).map_err(syntax)?;
        let row = exprs
            .iter()
            .map(|e| {
                literal(e).map_err(|_| {
                    NodeError::bad_request(format!("VALUES row {}: `{e}` is not a literal value", rows.len() + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(row);
        if !parser.consume_token(&Token::Comma) {
            let _optional = parser.consume_token(&Token::SemiColon);
            expect_end(&mut parser)?;
            break;
        }
    }
    Ok(rows)
}

fn literal(expr: &Expr) -> Result<serde_json::Value, ()> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => {
                let n: &str = n.as_ref();
                serde_json::from_str::<serde_json::Number>(n).map(serde_json::Value::Number).map_err(|_| ())
            }
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(serde_json::Value::String(s.clone())),
            Value::Boolean(b) => Ok(serde_json::Value::Bool(*b)),
            Value::Null => Ok(serde_json::Value::Null),
            _ => Err(()),
        },
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match literal(expr)? {
            serde_json::Value::Number(n) => serde_json::from_str(&format!("-{n}")).map_err(|_| ()),
            _ => Err(()),
        },
        Expr::Nested(inner) => literal(inner),
        _ => Err(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_create_table() {
        let Statement::CreateTable { def, .. } = parse(
            "CREATE TABLE t (ts DateTime64(3), host String, v Float64, n Nullable(Int64)) ORDER BY (host, ts) PARTITION BY toYYYYMM(ts)",
        )
        .unwrap() else {
            panic!("not a create")
        };
        assert_eq!(def.order_by, ["host", "ts"]);
        assert_eq!(def.partition_by, PartitionSpec::Month { column: "ts".into() });
        let types: Vec<_> = def.columns.iter().map(|c| c.type_name()).collect();
        assert_eq!(types, ["DateTime64(3)", "String", "Float64", "Nullable(Int64)"]);
    }

    #[test]
    fn sql_standard_types_and_any_clause_order() {
        let Statement::CreateTable { def, if_not_exists } = parse(
            "create table if not exists e (ts TIMESTAMP, name VARCHAR(20), x DOUBLE, n BIGINT, ok BOOLEAN, d DATE) \
             PARTITION BY toDate(ts) ORDER BY ts SETTINGS dedup_window_blocks = 10",
        )
        .unwrap() else {
            panic!("not a create")
        };
        assert!(if_not_exists);
        let types: Vec<_> = def.columns.iter().map(|c| c.type_name()).collect();
        assert_eq!(types, ["DateTime64(6)", "String", "Float64", "Int64", "Bool", "Date"]);
        assert_eq!(def.partition_by, PartitionSpec::Day { column: "ts".into() });
        assert_eq!(def.settings.dedup_window_blocks, 10);
    }

    #[test]
    fn create_table_errors_name_the_problem() {
        let err = |sql: &str| parse(sql).unwrap_err().to_string();
        assert!(err("CREATE TABLE t (a Int64) ORDER BY b").contains("`b`"));
        assert!(err("CREATE TABLE t (a Map(String, Int64))").contains("column `a`"));
        assert!(err("CREATE TABLE t (a Int64) PARTITION BY toYYYYMM(a)").contains("`a` is Int64"));
        assert!(err("CREATE TABLE t (a Int64, a String)").contains("twice"));
        assert!(err("CREATE TABLE t (a Int64) ORDER BY (tuple(), a)").contains("column names"));
        assert!(err("CREATE TABLE t (a Int64) ORDER BY tuple(tuple())").contains("column names"));
        assert!(err("CREATE TABLE system (a Int64)").contains("reserved"));
        let wide =
            format!("CREATE TABLE w ({})", (0..1001).map(|i| format!("c{i} Int8")).collect::<Vec<_>>().join(", "));
        assert!(err(&wide).contains("max_columns = 1000"));
    }

    #[test]
    fn ttl_in_clickhouse_syntax() {
        let ttl = |clause: &str| {
            let sql = format!("CREATE TABLE t (ts DateTime, d Date, n Int64) ORDER BY ts {clause}");
            let Statement::CreateTable { def, .. } = parse(&sql).unwrap() else { panic!("not a create") };
            def.ttl_expression()
        };
        assert_eq!(ttl("TTL ts + INTERVAL 30 DAY").as_deref(), Some("ts + INTERVAL 30 DAY"));
        assert_eq!(ttl("TTL ts + INTERVAL 1 MONTH DELETE").as_deref(), Some("ts + INTERVAL 1 MONTH"));
        assert_eq!(
            ttl("TTL d + toIntervalWeek(2) SETTINGS dedup_window_blocks = 1").as_deref(),
            Some("d + INTERVAL 2 WEEK")
        );
        assert_eq!(ttl("TTL ts").as_deref(), Some("ts + INTERVAL 0 SECOND"));
        assert_eq!(ttl("").as_deref(), None);
        let err = |clause: &str| {
            parse(&format!("CREATE TABLE t (ts DateTime, n Int64) ORDER BY ts {clause}")).unwrap_err().to_string()
        };
        assert!(err("TTL n + INTERVAL 1 DAY").contains("`n` is Int64"));
        assert!(err("TTL x + INTERVAL 1 DAY").contains("`x`"));
        let to_disk = err("TTL ts + INTERVAL 1 DAY TO DISK 'cold'");
        assert!(to_disk.contains("TO DISK"), "{to_disk}");
        assert!(err("TTL ts + INTERVAL 1 DAY, ts + INTERVAL 2 DAY").contains("several TTLs"));
        assert!(err("TTL ts + INTERVAL -1 DAY").contains("not supported"));
        assert!(err("TTL ts * 2").contains("not supported"));
    }

    #[test]
    fn ttl_follows_renames_and_pins_its_column() {
        let mut def = altered_table();
        assert!(alter(&mut def, "ALTER TABLE t ADD COLUMN seen DateTime, MODIFY TTL seen + INTERVAL 3 HOUR").unwrap());
        assert!(!alter(&mut def, "ALTER TABLE t MODIFY TTL seen + INTERVAL 3 HOUR").unwrap(), "unchanged");
        assert!(alter(&mut def, "ALTER TABLE t RENAME COLUMN seen TO last_seen").unwrap());
        assert_eq!(def.ttl_expression().as_deref(), Some("last_seen + INTERVAL 3 HOUR"));
        let refused = alter(&mut def, "ALTER TABLE t DROP COLUMN last_seen").unwrap_err().to_string();
        assert!(refused.contains("TTL column"), "{refused}");
        assert!(alter(&mut def, "ALTER TABLE t REMOVE TTL").unwrap());
        assert_eq!(def.ttl, None);
    }

    #[test]
    fn insert_forms() {
        let sql = "INSERT INTO default.t (a, b) FORMAT CSV\n1,2\n";
        let Statement::Insert(i) = parse(sql).unwrap() else { panic!() };
        assert_eq!(i.table, "t");
        assert_eq!(i.columns, Some(vec!["a".to_string(), "b".to_string()]));
        let InsertSource::Format { format, data_offset } = i.source else { panic!() };
        assert_eq!((format.as_str(), &sql[data_offset..]), ("CSV", "1,2\n"));
        let Statement::Insert(i) = parse("insert into t values (1, 'x', -2.5, NULL), (2, 'y', 3, true)").unwrap()
        else {
            panic!()
        };
        let InsertSource::Values(rows) = i.source else { panic!() };
        assert_eq!(
            rows[0],
            vec![serde_json::json!(1), serde_json::json!("x"), serde_json::json!(-2.5), serde_json::Value::Null]
        );
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn select_format_suffix() {
        let Statement::Select { sql, format } = parse("SELECT count() FROM t FORMAT JSONEachRow;").unwrap() else {
            panic!()
        };
        assert_eq!(sql, "SELECT count() FROM t");
        assert_eq!(format.as_deref(), Some("JSONEachRow"));
    }

    // Schema changes as ALTER statements apply them (the replica's `apply_alter`).
    fn altered_table() -> TableDef {
        let Statement::CreateTable { def, .. } =
            parse("CREATE TABLE t (ts DateTime, host String, v Float64) ORDER BY (host, ts) PARTITION BY toYYYYMM(ts)")
                .unwrap()
        else {
            panic!()
        };
        def
    }

    fn alter(def: &mut TableDef, sql: &str) -> Result<bool, NodeError> {
        let Statement::Alter { actions, .. } = parse(sql)? else { panic!("not an ALTER") };
        Ok(tandem_replica::apply_alter(def, &actions)?)
    }

    #[test]
    fn columns_keep_their_ids_through_renames_and_drops() {
        let mut def = altered_table();
        let ids: Vec<_> = def.columns.iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        alter(&mut def, "ALTER TABLE t ADD COLUMN a Int64 DEFAULT 7, RENAME COLUMN host TO server, DROP COLUMN v")
            .unwrap();
        let columns: Vec<_> = def.columns.iter().map(|c| (c.id, c.name.as_str())).collect();
        assert_eq!(columns, [(1, "ts"), (2, "server"), (4, "a")]);
        assert_eq!(def.order_by, ["server", "ts"], "the sort key follows the rename");
        alter(&mut def, "ALTER TABLE t ADD COLUMN v Float64 FIRST").unwrap();
        assert_eq!(def.columns[0].id, 5, "a re-added name is a new column, not the dropped one");
    }

    #[test]
    fn conflicts_name_the_column_and_both_types() {
        let mut def = altered_table();
        let err = alter(&mut def, "ALTER TABLE t ADD COLUMN IF NOT EXISTS v String").unwrap_err().to_string();
        assert!(err.contains("`v`") && err.contains("Float64") && err.contains("String"), "{err}");
        assert!(!alter(&mut def, "ALTER TABLE t ADD COLUMN IF NOT EXISTS v Float64").unwrap(), "same type: a no-op");
        assert!(
            alter(&mut def, "ALTER TABLE t DROP COLUMN host")
                .unwrap_err()
                .to_string()
                .contains("sort or partition key")
        );
        assert!(alter(&mut def, "ALTER TABLE t DROP COLUMN nope").is_err());
        assert!(!alter(&mut def, "ALTER TABLE t DROP COLUMN IF EXISTS nope").unwrap());
        assert!(alter(&mut def, "ALTER TABLE t MODIFY SETTING dedup_window_blocks = 5").unwrap());
        assert_eq!(def.settings.dedup_window_blocks, 5);
    }
}
