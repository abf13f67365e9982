//! What a user may do: privileges, the scopes they are granted on, and the objects a request
//! touches; all in ClickHouse's words (`GRANT SELECT ON default.events TO alice`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// tandem has one database; grants name it as ClickHouse does.
pub const DATABASE: &str = "default";

/// One privilege. `ALL` in SQL stands for every one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privilege {
    Select,
    Insert,
    Alter,
    Create,
    Drop,
    /// Operations on the node itself (`POST /drain`).
    System,
    /// Creating, changing and dropping users, and granting and revoking privileges.
    AccessManagement,
}

impl Privilege {
    pub const ALL: [Privilege; 7] = [
        Privilege::Select,
        Privilege::Insert,
        Privilege::Alter,
        Privilege::Create,
        Privilege::Drop,
        Privilege::System,
        Privilege::AccessManagement,
    ];

    /// The name SQL uses.
    pub fn name(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Alter => "ALTER",
            Privilege::Create => "CREATE",
            Privilege::Drop => "DROP",
            Privilege::System => "SYSTEM",
            Privilege::AccessManagement => "ACCESS MANAGEMENT",
        }
    }

    /// The privileges a name in a `GRANT` stands for (`ALL [PRIVILEGES]` is every one),
    /// matched without regard to case and spacing. `None` for a name tandem does not know.
    pub fn parse(words: &str) -> Option<Vec<Privilege>> {
        let words = words.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_uppercase();
        if words == "ALL" || words == "ALL PRIVILEGES" {
            return Some(Privilege::ALL.to_vec());
        }
        Privilege::ALL.into_iter().find(|p| p.name() == words).map(|p| vec![p])
    }

    /// Whether it concerns the whole node or cluster rather than tables, so it can be granted
    /// only `ON *.*`.
    pub fn is_global(self) -> bool {
        matches!(self, Privilege::System | Privilege::AccessManagement)
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a privilege is granted: `*.*`, `default.*` or `default.<table>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Global,
    Database(String),
    Table { database: String, table: String },
}

impl Scope {
    /// Whether a privilege held on this scope holds on `object`.
    pub fn covers(&self, object: &Object) -> bool {
        match (self, object) {
            (Scope::Global, _) => true,
            (Scope::Database(db), Object::Table { database, .. }) => db == database,
            (Scope::Table { database: d, table: t }, Object::Table { database, table }) => d == database && t == table,
            (_, Object::Global) => false,
        }
    }

    /// Whether this scope lies inside `outer` (revoking on `outer` takes it away too).
    pub fn is_within(&self, outer: &Scope) -> bool {
        match (outer, self) {
            (Scope::Global, _) => true,
            (Scope::Database(db), Scope::Database(inner)) => db == inner,
            (Scope::Database(db), Scope::Table { database, .. }) => db == database,
            (Scope::Table { .. }, inner) => inner == outer,
            (Scope::Database(_), Scope::Global) => false,
        }
    }

    /// The database and table columns of `system.grants` (`None` stands for every one).
    pub fn database_and_table(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Scope::Global => (None, None),
            Scope::Database(db) => (Some(db), None),
            Scope::Table { database, table } => (Some(database), Some(table)),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("*.*"),
            Scope::Database(db) => write!(f, "{db}.*"),
            Scope::Table { database, table } => write!(f, "{database}.{table}"),
        }
    }
}

/// A privilege on a scope.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub privilege: Privilege,
    pub scope: Scope,
}

impl Grant {
    /// The statement that gives it to `user`, as `SHOW GRANTS` prints it.
    pub fn statement(&self, user: &str) -> String {
        format!("GRANT {} ON {} TO {user}", self.privilege, self.scope)
    }
}

/// What a request touches: a table, or the node and cluster as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Global,
    Table { database: String, table: String },
}

impl Object {
    /// A table of the `default` database.
    pub fn table(table: &str) -> Object {
        Object::Table { database: DATABASE.to_string(), table: table.to_string() }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Global => f.write_str("*.*"),
            Object::Table { database, table } => write!(f, "{database}.{table}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(db: &str, t: &str) -> Scope {
        Scope::Table { database: db.into(), table: t.into() }
    }

    #[test]
    fn scopes_cover_what_lies_inside_them() {
        let events = Object::table("events");
        assert!(Scope::Global.covers(&events) && Scope::Global.covers(&Object::Global));
        assert!(Scope::Database("default".into()).covers(&events));
        assert!(!Scope::Database("other".into()).covers(&events));
        assert!(table("default", "events").covers(&events));
        assert!(!table("default", "logs").covers(&events));
        assert!(!Scope::Database("default".into()).covers(&Object::Global), "a database grant is not global");
        assert!(table("default", "t").is_within(&Scope::Database("default".into())));
        assert!(!Scope::Global.is_within(&Scope::Database("default".into())));
        assert!(table("default", "t").is_within(&table("default", "t")));
        assert!(!table("default", "t").is_within(&table("default", "u")));
    }

    #[test]
    fn privileges_are_named_as_in_sql() {
        assert_eq!(Privilege::parse("select"), Some(vec![Privilege::Select]));
        assert_eq!(Privilege::parse("access   management"), Some(vec![Privilege::AccessManagement]));
        assert_eq!(Privilege::parse("ALL PRIVILEGES").map(|p| p.len()), Some(Privilege::ALL.len()));
        assert_eq!(Privilege::parse("TRUNCATE"), None);
        let grant = Grant { privilege: Privilege::Insert, scope: table("default", "events") };
        assert_eq!(grant.statement("alice"), "GRANT INSERT ON default.events TO alice");
    }
}
