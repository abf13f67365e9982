//! Schema changes: creating and dropping tables, and `ALTER TABLE`, where each change is applied to the schema record as it is now and written with a
//! compare-and-swap on its version; a lost race is re-applied to the new schema inside the
//! server, so concurrent changes that do not conflict all survive without the client retrying,
//! and a real conflict answers 409 naming the column and both types.

use std::time::Duration;

use tandem_coordinator::{CoordError, Revision};

use crate::error::Error;
use crate::replica::Replica;
use crate::schema::{ColumnDef, IntervalUnit, TableDef};

/// One change of an `ALTER TABLE`.
#[derive(Clone, Debug, PartialEq)]
pub enum AlterAction {
    AddColumn {
        column: ColumnDef,
        if_not_exists: bool,
        position: Option<ColumnPosition>,
    },
    DropColumn {
        name: String,
        if_exists: bool,
    },
    RenameColumn {
        from: String,
        to: String,
        if_exists: bool,
    },
    CommentColumn {
        name: String,
        comment: String,
        if_exists: bool,
    },
    ModifySettings(Vec<(String, serde_json::Value)>),
    /// `MODIFY TTL <column> + INTERVAL n <unit>`, or `REMOVE TTL` (None).
    ModifyTtl(Option<TtlSpec>),
}

/// A TTL as a statement names it: `<column> + INTERVAL <count> <unit>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtlSpec {
    pub column: String,
    pub count: u32,
    pub unit: IntervalUnit,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ColumnPosition {
    First,
    After(String),
}

/// A lost compare-and-swap is retried this many times before the client hears of it.
const MAX_ATTEMPTS: usize = 100;

/// How long a schema change waits to be applied on this node.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `alter_sync=2` waits for every live node.
const SYNC_ALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies `actions` to `def`. Returns whether anything changed (`IF [NOT] EXISTS` can make an
/// ALTER a no-op).
pub fn apply(def: &mut TableDef, actions: &[AlterAction]) -> Result<bool, Error> {
    let mut changed = false;
    for action in actions {
        changed |= apply_one(def, action)?;
    }
    Ok(changed)
}

fn apply_one(def: &mut TableDef, action: &AlterAction) -> Result<bool, Error> {
    let table = def.name.clone();
    let missing = |name: &str| Error::bad_request(format!("table `{table}` has no column `{name}`"));
    match action {
        AlterAction::AddColumn { column, if_not_exists, position } => {
            if let Some(existing) = def.column(&column.name) {
                if existing.type_name() != column.type_name() {
                    return Err(Error::Conflict(format!(
                        "column `{}` of table `{table}` already exists as {}; it cannot be added as {}",
                        column.name,
                        existing.type_name(),
                        column.type_name()
                    )));
                }
                if *if_not_exists {
                    return Ok(false);
                }
                return Err(Error::Conflict(format!(
                    "column `{}` of table `{table}` already exists (use ADD COLUMN IF NOT EXISTS)",
                    column.name
                )));
            }
            let mut column: ColumnDef = column.clone();
            column.id = def.next_column_id;
            def.next_column_id += 1;
            let index = match position {
                None => def.columns.len(),
                Some(ColumnPosition::First) => 0,
                Some(ColumnPosition::After(after)) => {
                    def.columns.iter().position(|c| &c.name == after).ok_or_else(|| missing(after))? + 1
                }
            };
            def.columns.insert(index, column);
            Ok(true)
        }
        AlterAction::DropColumn { name, if_exists } => {
            let Some(index) = def.columns.iter().position(|c| &c.name == name) else {
                return if *if_exists { Ok(false) } else { Err(missing(name)) };
            };
            if def.order_by.contains(name) || def.partition_by.column() == Some(name) {
                return Err(Error::bad_request(format!(
                    "column `{name}` is in the sort or partition key of `{table}` and cannot be dropped"
                )));
            }
            if def.ttl.is_some_and(|ttl| def.columns.get(index).is_some_and(|c| c.id == ttl.column_id)) {
                return Err(Error::bad_request(format!(
                    "column `{name}` is the TTL column of `{table}` and cannot be dropped (REMOVE TTL first)"
                )));
            }
            if def.columns.len() == 1 {
                return Err(Error::bad_request(format!(
                    "`{name}` is the last column of `{table}`; drop the table instead"
                )));
            }
            def.columns.remove(index);
            Ok(true)
        }
        AlterAction::RenameColumn { from, to, if_exists } => {
            if from == to {
                return Ok(false);
            }
            if def.column(to).is_some() {
                return Err(Error::Conflict(format!("table `{table}` already has a column `{to}`")));
            }
            let Some(column) = def.columns.iter_mut().find(|c| &c.name == from) else {
                return if *if_exists { Ok(false) } else { Err(missing(from)) };
            };
            column.name = to.clone();
            for key in def.order_by.iter_mut().filter(|k| *k == from) {
                *key = to.clone();
            }
            def.partition_by.rename_column(from, to);
            Ok(true)
        }
        AlterAction::CommentColumn { name, comment, if_exists } => {
            let Some(column) = def.columns.iter_mut().find(|c| &c.name == name) else {
                return if *if_exists { Ok(false) } else { Err(missing(name)) };
            };
            let changed = column.comment.as_deref() != Some(comment.as_str());
            column.comment = Some(comment.clone());
            Ok(changed)
        }
        AlterAction::ModifySettings(settings) => {
            let before = def.settings.clone();
            for (key, value) in settings {
                def.settings.set(key, value)?;
            }
            Ok(def.settings != before)
        }
        AlterAction::ModifyTtl(ttl) => {
            let before = def.ttl;
            def.set_ttl(ttl.as_ref().map(|t| (t.column.as_str(), t.count, t.unit)))?;
            Ok(def.ttl != before)
        }
    }
}

impl Replica {
    /// `local_replicas` leaves parts on fewer nodes than all: the others read them from the
    /// bucket, so a node without one cannot set it.
    fn check_local_replicas(&self, def: &TableDef) -> Result<(), Error> {
        if def.settings.local_replicas.is_some() && self.bucket.is_none() {
            return Err(Error::bad_request(format!(
                "table `{}`: local_replicas needs an object store (the nodes that do not keep a part read it from \
                 the bucket); start the nodes with --s3-bucket, or leave local_replicas unset (every node keeps every part)",
                def.name
            )));
        }
        Ok(())
    }

    /// Creates a table. Returns the revision of its creation (with `if_not_exists` and the
    /// table already there: the revision this node has applied) once this node has applied it.
    pub async fn create_table(&self, def: &TableDef, if_not_exists: bool) -> Result<Revision, Error> {
        self.check_local_replicas(def)?;
        let revision = match self.coordinator.create_table(&def.name, def.to_json()).await {
            Ok(record) => record.version,
            Err(CoordError::TableExists(_)) if if_not_exists => self.catalog.applied_revision(),
            Err(e) => return Err(e.into()),
        };
        self.applied(revision).await
    }

    /// Drops a table and every part of it. Returns the revision of the drop once this node has
    /// applied it.
    pub async fn drop_table(&self, name: &str, if_exists: bool) -> Result<Revision, Error> {
        let revision = match self.coordinator.drop_table(name).await {
            Ok(revision) => revision,
            Err(CoordError::NoSuchTable(_)) if if_exists => self.catalog.applied_revision(),
            Err(e) => return Err(e.into()),
        };
        self.applied(revision).await
    }

    /// Runs an ALTER: compare-and-swap on the schema record, re-applied to the current schema
    /// after every lost race. Returns the new schema version (or the current one if nothing
    /// changed), once this node has applied it; with `sync_all`, once every live node has.
    pub async fn alter(&self, table: &str, actions: &[AlterAction], sync_all: bool) -> Result<Revision, Error> {
        let mut record =
            self.coordinator.get_table(table).await?.ok_or_else(|| Error::UnknownTable(table.to_string()))?;
        let mut version = None;
        for _ in 0..MAX_ATTEMPTS {
            let mut def = TableDef::from_json(&record.doc).map_err(Error::internal)?;
            if !apply(&mut def, actions)? {
                version = Some(record.version);
                break;
            }
            self.check_local_replicas(&def)?;
            let max_columns = self.config.max_columns;
            if def.columns.len() > max_columns {
                return Err(Error::bad_request(format!(
                    "table `{table}` would have {} columns, more than max_columns = {max_columns}; nothing was changed",
                    def.columns.len()
                )));
            }
            match self.coordinator.update_table(table, record.version, def.to_json()).await? {
                Ok(updated) => {
                    version = Some(updated.version);
                    break;
                }
                Err(Some(current)) => record = current,
                Err(None) => return Err(Error::UnknownTable(table.to_string())),
            }
        }
        let Some(version) = version else {
            return Err(Error::Unavailable(format!(
                "table `{table}` changed {MAX_ATTEMPTS} times while this ALTER was applied; retry it"
            )));
        };
        self.applied(version).await?;
        if sync_all && self.config.is_cluster() {
            wait_all_nodes(self, version).await?;
        }
        Ok(version)
    }

    /// `revision` once this node has applied it (a change is answered when it is visible here).
    async fn applied(&self, revision: Revision) -> Result<Revision, Error> {
        if !self.catalog.wait_applied(revision, APPLY_TIMEOUT).await {
            return Err(Error::Timeout(format!(
                "the change is committed at revision {revision} but not yet applied on this node"
            )));
        }
        Ok(revision)
    }
}

/// `alter_sync=2`: waits until every live node says (asked over the interserver service)
/// that it has applied `version`.
async fn wait_all_nodes(node: &Replica, version: Revision) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + SYNC_ALL_TIMEOUT;
    loop {
        let mut behind = Vec::new();
        for peer in node.live_nodes().await? {
            if peer.node_id == node.config.node_id {
                continue;
            }
            match crate::interserver::peer_status(node, &peer.grpc_addr).await {
                Ok(status) if status.applied_revision >= version => {}
                Ok(status) => behind.push(format!("{} (at {})", peer.node_id, status.applied_revision)),
                Err(e) => behind.push(format!("{} ({e})", peer.node_id)),
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "the ALTER is committed at revision {version}, but {} had not applied it after {}s (alter_sync=2)",
                behind.join(", "),
                SYNC_ALL_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
