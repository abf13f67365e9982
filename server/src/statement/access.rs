//! The statements that manage users and grants, in ClickHouse's syntax:
//! `CREATE USER`, `ALTER USER ... IDENTIFIED BY`, `DROP USER`, `GRANT`, `REVOKE`,
//! `SHOW USERS`, `SHOW GRANTS [FOR user]`.
//!
//! A password is in the text: no error message here ever repeats what follows `BY`.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use tandem_access::privilege::DATABASE;
use tandem_access::{AccessChange, Password, Privilege, Scope};

use super::{Statement, expect_end, parse_word, parser, split_format, syntax};
use crate::error::NodeError;

/// How ClickHouse names password authentication; tandem hashes every one with argon2id.
const PASSWORD_METHODS: [&str; 4] =
    ["plaintext_password", "sha256_password", "double_sha1_password", "bcrypt_password"];

pub(super) fn parse_create_user(sql: &str) -> Result<Statement, NodeError> {
    let mut parser = parser(sql)?;
    parser.expect_keywords(&[Keyword::CREATE, Keyword::USER]).map_err(syntax)?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = user_name(&mut parser)?;
    on_cluster(&mut parser)?;
    let password = identified_by(&mut parser, "CREATE USER")?;
    expect_end(&mut parser)?;
    Ok(Statement::Access(AccessChange::CreateUser { name, password, if_not_exists }))
}

pub(super) fn parse_alter_user(sql: &str) -> Result<Statement, NodeError> {
    let mut parser = parser(sql)?;
    parser.expect_keywords(&[Keyword::ALTER, Keyword::USER]).map_err(syntax)?;
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = user_name(&mut parser)?;
    on_cluster(&mut parser)?;
    let password = identified_by(&mut parser, "ALTER USER")?;
    expect_end(&mut parser)?;
    Ok(Statement::Access(AccessChange::SetPassword { name, password, if_exists }))
}

pub(super) fn parse_drop_user(sql: &str) -> Result<Statement, NodeError> {
    let mut parser = parser(sql)?;
    parser.expect_keywords(&[Keyword::DROP, Keyword::USER]).map_err(syntax)?;
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let names = user_names(&mut parser)?;
    on_cluster(&mut parser)?;
    expect_end(&mut parser)?;
    Ok(Statement::Access(AccessChange::DropUsers { names, if_exists }))
}

/// `GRANT privilege[, ...] ON target TO user[, ...]` and
/// `REVOKE privilege[, ...] ON target FROM user[, ...]`.
pub(super) fn parse_grant_or_revoke(sql: &str) -> Result<Statement, NodeError> {
    let mut parser = parser(sql)?;
    let grant = parser.parse_keyword(Keyword::GRANT);
    if !grant {
        parser.expect_keyword(Keyword::REVOKE).map_err(syntax)?;
    }
    on_cluster(&mut parser)?;
    let (mut privileges, all) = privileges(&mut parser)?;
    let scope = scope(&mut parser)?;
    // `ALL` on a database or table means every privilege a table can have, as in ClickHouse.
    if all && scope != Scope::Global {
        privileges.retain(|p| !p.is_global());
    }
    parser.expect_keyword(if grant { Keyword::TO } else { Keyword::FROM }).map_err(syntax)?;
    let users = user_names(&mut parser)?;
    if parser.parse_keyword(Keyword::WITH) {
        return Err(NodeError::NotImplemented(
            "WITH GRANT OPTION is not supported: a user with ACCESS MANAGEMENT ON *.* grants and revokes".into(),
        ));
    }
    expect_end(&mut parser)?;
    Ok(Statement::Access(if grant {
        AccessChange::Grant { privileges, scope, users }
    } else {
        AccessChange::Revoke { privileges, scope, users }
    }))
}

pub(super) fn parse_show_users(sql: &str) -> Result<Statement, NodeError> {
    let (body, format) = split_format(sql);
    let mut parser = parser(body)?;
    parser.expect_keyword(Keyword::SHOW).map_err(syntax)?;
    if !parse_word(&mut parser, "USERS") {
        return Err(NodeError::bad_request("syntax error: expected SHOW USERS"));
    }
    expect_end(&mut parser)?;
    Ok(Statement::ShowUsers { format })
}

pub(super) fn parse_show_grants(sql: &str) -> Result<Statement, NodeError> {
    let (body, format) = split_format(sql);
    let mut parser = parser(body)?;
    parser.expect_keywords(&[Keyword::SHOW, Keyword::GRANTS]).map_err(syntax)?;
    let user = if parser.parse_keyword(Keyword::FOR) { Some(user_name(&mut parser)?) } else { None };
    expect_end(&mut parser)?;
    Ok(Statement::ShowGrants { user, format })
}

fn user_name(parser: &mut Parser) -> Result<String, NodeError> {
    match parser.next_token().token {
        Token::Word(word) => Ok(word.value),
        Token::SingleQuotedString(name) => Ok(name),
        other => Err(NodeError::bad_request(format!("syntax error: expected a user name, found `{other}`"))),
    }
}

fn user_names(parser: &mut Parser) -> Result<Vec<String>, NodeError> {
    let mut names = vec![user_name(parser)?];
    while parser.consume_token(&Token::Comma) {
        names.push(user_name(parser)?);
    }
    Ok(names)
}

/// `ON CLUSTER name` is accepted and has no effect: users are cluster-wide already.
fn on_cluster(parser: &mut Parser) -> Result<(), NodeError> {
    if parser.parse_keywords(&[Keyword::ON, Keyword::CLUSTER]) {
        user_name(parser)?;
    }
    Ok(())
}

/// `IDENTIFIED [WITH <password method>] BY 'password'`.
fn identified_by(parser: &mut Parser, statement: &str) -> Result<Password, NodeError> {
    if parse_word(parser, "NOT") || !parse_word(parser, "IDENTIFIED") {
        return Err(NodeError::bad_request(format!(
            "{statement} needs IDENTIFIED BY 'password': tandem has no users without a password"
        )));
    }
    if parser.parse_keyword(Keyword::WITH) {
        let method = match parser.next_token().token {
            Token::Word(word) => word.value.to_ascii_lowercase(),
            _ => String::new(),
        };
        if !PASSWORD_METHODS.contains(&method.as_str()) {
            return Err(NodeError::NotImplemented(format!(
                "IDENTIFIED WITH {method} is not supported: use IDENTIFIED BY 'password' (or WITH one of {}); \
                 tandem keeps every password as an argon2id hash",
                PASSWORD_METHODS.join(", ")
            )));
        }
    }
    if !parser.parse_keyword(Keyword::BY) {
        return Err(NodeError::bad_request(format!("syntax error: {statement} ... IDENTIFIED needs BY 'password'")));
    }
    match parser.next_token().token {
        Token::SingleQuotedString(password) => Ok(Password::new(password)),
        _ => Err(NodeError::bad_request("syntax error: the password after IDENTIFIED BY must be a quoted string")),
    }
}

/// `SELECT, INSERT` / `ALL [PRIVILEGES]` / `ACCESS MANAGEMENT`, up to `ON`; and whether `ALL`
/// was among them.
fn privileges(parser: &mut Parser) -> Result<(Vec<Privilege>, bool), NodeError> {
    let mut privileges = Vec::new();
    let mut all = false;
    loop {
        let mut words = Vec::new();
        while let Token::Word(word) = parser.peek_token().token {
            if word.keyword == Keyword::ON {
                break;
            }
            parser.next_token();
            words.push(word.value);
        }
        let name = words.join(" ");
        all |= matches!(name.to_ascii_uppercase().as_str(), "ALL" | "ALL PRIVILEGES");
        match Privilege::parse(&name) {
            Some(named) => privileges.extend(named),
            None => {
                let known = Privilege::ALL.map(|p| p.name()).join(", ");
                return Err(NodeError::bad_request(format!(
                    "`{name}` is not a privilege tandem knows: use {known} or ALL"
                )));
            }
        }
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_keyword(Keyword::ON).map_err(syntax)?;
    Ok((privileges, all))
}

/// `*.*`, `*`, `default.*`, `default.table` or `table`.
fn scope(parser: &mut Parser) -> Result<Scope, NodeError> {
    let mut text = String::new();
    loop {
        let token = parser.peek_token().token;
        match token {
            Token::Word(ref word) if matches!(word.keyword, Keyword::TO | Keyword::FROM) => break,
            Token::Word(word) => text.push_str(&word.value),
            Token::Mul => text.push('*'),
            Token::Period => text.push('.'),
            Token::EOF => break,
            other => {
                return Err(NodeError::bad_request(format!(
                    "syntax error: unexpected `{other}` in the grant's target"
                )));
            }
        }
        parser.next_token();
    }
    let (database, table) = match text.split_once('.') {
        Some((database, table)) => (database, table),
        None => (DATABASE, text.as_str()),
    };
    match (database, table) {
        ("*", "*") => Ok(Scope::Global),
        (DATABASE, "*") => Ok(Scope::Database(DATABASE.to_string())),
        (DATABASE, table) if tandem_replica::schema::valid_name(table) => {
            Ok(Scope::Table { database: DATABASE.to_string(), table: table.to_string() })
        }
        _ => Err(NodeError::bad_request(format!(
            "`{text}` is not a grant target tandem has: use *.*, default.* or default.<table> (tandem has one database, `default`)"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::super::parse;
    use super::*;

    fn change(sql: &str) -> AccessChange {
        match parse(sql) {
            Ok(Statement::Access(change)) => change,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn user_statements_in_clickhouse_syntax() {
        let AccessChange::CreateUser { name, password, if_not_exists } =
            change("CREATE USER IF NOT EXISTS alice IDENTIFIED WITH sha256_password BY 's3cret'")
        else {
            panic!()
        };
        assert_eq!((name.as_str(), password, if_not_exists), ("alice", Password::new("s3cret"), true));
        assert!(matches!(
            change("ALTER USER bob ON CLUSTER c IDENTIFIED BY 'x'"),
            AccessChange::SetPassword { if_exists: false, .. }
        ));
        let AccessChange::DropUsers { names, if_exists } = change("DROP USER IF EXISTS a, b;") else { panic!() };
        assert_eq!((names, if_exists), (vec!["a".to_string(), "b".to_string()], true));
    }

    #[test]
    fn grants_name_privileges_and_targets() {
        let AccessChange::Grant { privileges, scope, users } =
            change("GRANT SELECT, INSERT ON default.events TO alice, bob")
        else {
            panic!()
        };
        assert_eq!(privileges, [Privilege::Select, Privilege::Insert]);
        assert_eq!(scope, Scope::Table { database: "default".into(), table: "events".into() });
        assert_eq!(users, ["alice", "bob"]);
        let AccessChange::Grant { privileges, scope, .. } = change("grant all on *.* to root") else { panic!() };
        assert_eq!((privileges.len(), scope), (Privilege::ALL.len(), Scope::Global));
        let AccessChange::Revoke { privileges, scope, .. } = change("REVOKE ACCESS MANAGEMENT ON default.* FROM a")
        else {
            panic!()
        };
        assert_eq!((privileges, scope), (vec![Privilege::AccessManagement], Scope::Database("default".into())));
        let AccessChange::Grant { scope, .. } = change("GRANT SELECT ON events TO a") else { panic!() };
        assert_eq!(scope, Scope::Table { database: "default".into(), table: "events".into() });
        let AccessChange::Grant { privileges, .. } = change("GRANT ALL ON default.events TO a") else { panic!() };
        assert_eq!(
            privileges,
            [Privilege::Select, Privilege::Insert, Privilege::Alter, Privilege::Create, Privilege::Drop],
            "ALL on a table is what a table can be granted"
        );
    }

    #[test]
    fn errors_name_the_problem_and_never_the_password() {
        let message = |sql: &str| parse(sql).unwrap_err().to_string();
        assert!(message("CREATE USER a").contains("IDENTIFIED BY"));
        assert!(message("CREATE USER a NOT IDENTIFIED").contains("IDENTIFIED BY"));
        let unquoted = message("CREATE USER a IDENTIFIED BY hunter2");
        assert!(unquoted.contains("quoted string") && !unquoted.contains("hunter2"), "{unquoted}");
        assert!(message("CREATE USER a IDENTIFIED WITH ldap SERVER 'x'").contains("not supported"));
        assert!(message("GRANT TRUNCATE ON *.* TO a").contains("TRUNCATE"));
        assert!(message("GRANT SELECT ON other.t TO a").contains("one database"));
        assert!(message("GRANT SELECT ON *.* TO a WITH GRANT OPTION").contains("GRANT OPTION"));
        assert!(matches!(parse("SHOW GRANTS FOR alice FORMAT JSON"), Ok(Statement::ShowGrants { user: Some(_), .. })));
        assert!(matches!(parse("SHOW USERS"), Ok(Statement::ShowUsers { format: None })));
    }
}
