//! `ALTER TABLE`: each change is applied to the schema record as it is now and written with a
//! compare-and-swap on its version; a lost race is re-applied to the new schema inside the
//! server, so concurrent changes that do not conflict all survive without the client retrying,
//! and a real conflict answers 409 naming the column and both types.

use std::time::Duration;

use tandem_coordinator::Revision;

use crate::error::NodeError;
use crate::node::Node;
use crate::schema::{ColumnDef, TableDef};
use crate::statement::{AlterAction, ColumnPosition};

/// A lost compare-and-swap is retried this many times before the client hears of it.
const MAX_ATTEMPTS: usize = 100;

/// How long `alter_sync=2` waits for every live node.
const SYNC_ALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies `actions` to `def`. Returns whether anything changed (`IF [NOT] EXISTS` can make an
/// ALTER a no-op).
pub fn apply(def: &mut TableDef, actions: &[AlterAction]) -> Result<bool, NodeError> {
    let mut changed = false;
    for action in actions {
        changed |= apply_one(def, action)?;
    }
    Ok(changed)
}

fn apply_one(def: &mut TableDef, action: &AlterAction) -> Result<bool, NodeError> {
    let table = def.name.clone();
    let missing = |name: &str| NodeError::bad_request(format!("table `{table}` has no column `{name}`"));
    match action {
        AlterAction::AddColumn { column, if_not_exists, position } => {
            if let Some(existing) = def.column(&column.name) {
                if existing.type_name() != column.type_name() {
                    return Err(NodeError::Conflict(format!(
                        "column `{}` of table `{table}` already exists as {}; it cannot be added as {}",
                        column.name,
                        existing.type_name(),
                        column.type_name()
                    )));
                }
                if *if_not_exists {
                    return Ok(false);
                }
                return Err(NodeError::Conflict(format!(
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
                return Err(NodeError::bad_request(format!(
                    "column `{name}` is in the sort or partition key of `{table}` and cannot be dropped"
                )));
            }
            if def.columns.len() == 1 {
                return Err(NodeError::bad_request(format!(
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
                return Err(NodeError::Conflict(format!("table `{table}` already has a column `{to}`")));
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
    }
}

/// Runs an ALTER: compare-and-swap on the schema record, re-applied to the current schema
/// after every lost race. Returns the new schema version (or the current one if nothing
/// changed), once this node has applied it; with `sync_all`, once every live node has.
pub async fn alter(node: &Node, table: &str, actions: &[AlterAction], sync_all: bool) -> Result<Revision, NodeError> {
    let mut record = node.coordinator.get_table(table).await?.ok_or_else(|| NodeError::unknown_table(table))?;
    let mut version = None;
    for _ in 0..MAX_ATTEMPTS {
        let mut def = TableDef::from_json(&record.doc).map_err(NodeError::internal)?;
        if !apply(&mut def, actions)? {
            version = Some(record.version);
            break;
        }
        let max_columns = node.config.limits.max_columns;
        if def.columns.len() > max_columns {
            return Err(NodeError::bad_request(format!(
                "table `{table}` would have {} columns, more than max_columns = {max_columns}; nothing was changed",
                def.columns.len()
            )));
        }
        match node.coordinator.update_table(table, record.version, def.to_json()).await? {
            Ok(updated) => {
                version = Some(updated.version);
                break;
            }
            Err(Some(current)) => record = current,
            Err(None) => return Err(NodeError::unknown_table(table)),
        }
    }
    let Some(version) = version else {
        return Err(NodeError::Unavailable(format!(
            "table `{table}` changed {MAX_ATTEMPTS} times while this ALTER was applied; retry it"
        )));
    };
    if !node.catalog.wait_applied(version, Duration::from_secs(30)).await {
        return Err(NodeError::Timeout(format!(
            "the ALTER is committed at revision {version} but not yet applied on this node"
        )));
    }
    if sync_all && node.config.is_cluster() {
        wait_all_nodes(node, version).await?;
    }
    Ok(version)
}

/// `alter_sync=2`: waits until every live node says (asked over the interserver service)
/// that it has applied `version`.
async fn wait_all_nodes(node: &Node, version: Revision) -> Result<(), NodeError> {
    let deadline = tokio::time::Instant::now() + SYNC_ALL_TIMEOUT;
    loop {
        let mut behind = Vec::new();
        for peer in crate::membership::live_nodes(node).await? {
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
            return Err(NodeError::Timeout(format!(
                "the ALTER is committed at revision {version}, but {} had not applied it after {}s (alter_sync=2)",
                behind.join(", "),
                SYNC_ALL_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::{Statement, parse};

    fn table() -> TableDef {
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
        apply(def, &actions)
    }

    #[test]
    fn columns_keep_their_ids_through_renames_and_drops() {
        let mut def = table();
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
        let mut def = table();
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
