//! User records: one key per user under `<prefix>users/<name>`, its value opaque here (the
//! access-control crate's document: password hash and grants). Every change is a
//! compare-and-swap on the records it touches, in one transaction, so a `GRANT` to several
//! users or a `DROP USER a, b` happens all at once or not at all.

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::CoordError;
use crate::coordinator::Coordinator;
use crate::kv::{Compare, KeyValue, Revision, TxnOp, WatchEventKind, WatchResponse};

/// One user's record.
#[derive(Clone, Debug, PartialEq)]
pub struct UserRecord {
    pub name: String,
    pub doc: Vec<u8>,
    /// The revision that last wrote the record: compare-and-swap on it.
    pub version: Revision,
}

/// A change to one user's record, made only if the record is still as the caller read it.
#[derive(Clone, Debug)]
pub struct UserWrite {
    pub name: String,
    /// The version read (`None`: the user must not exist).
    pub expected: Option<Revision>,
    /// The new document (`None`: delete the user).
    pub doc: Option<Vec<u8>>,
}

/// A change seen by [`Coordinator::watch_users`].
#[derive(Clone, Debug)]
pub enum UserEvent {
    Put(UserRecord),
    Dropped { name: String },
}

impl Coordinator {
    fn user_prefix(&self) -> String {
        format!("{}users/", self.prefix())
    }

    fn user_record(&self, kv: KeyValue) -> UserRecord {
        let name = kv.key.rsplit('/').next().unwrap_or_default().to_string();
        UserRecord { name, doc: kv.value, version: kv.mod_revision }
    }

    /// Every user, and the revision of the listing (watch from the next one).
    pub async fn list_users(&self) -> Result<(Vec<UserRecord>, Revision), CoordError> {
        let (kvs, revision) = self.backend().range(&self.user_prefix()).await?;
        Ok((kvs.into_iter().map(|kv| self.user_record(kv)).collect(), revision))
    }

    pub async fn get_user(&self, name: &str) -> Result<Option<UserRecord>, CoordError> {
        Ok(self.backend().get(&format!("{}{name}", self.user_prefix())).await?.map(|kv| self.user_record(kv)))
    }

    /// Applies every write in one transaction if every record is still at its expected version.
    /// Returns the transaction's revision, or `None` when a record had changed (nothing was
    /// written: read again and retry).
    pub async fn write_users(&self, writes: Vec<UserWrite>) -> Result<Option<Revision>, CoordError> {
        let prefix = self.user_prefix();
        let mut compares = Vec::with_capacity(writes.len());
        let mut ops = Vec::with_capacity(writes.len());
        for write in writes {
            let key = format!("{prefix}{}", write.name);
            compares.push(match write.expected {
                None => Compare::Absent(key.clone()),
                Some(version) => Compare::ModRevision(key.clone(), version),
            });
            ops.push(match write.doc {
                Some(value) => TxnOp::Put { key, value, lease: None },
                None => TxnOp::Delete { key },
            });
        }
        let result = self.backend().txn(compares, ops, vec![]).await?;
        Ok(result.succeeded.then_some(result.revision))
    }

    /// Every change to users from revision `from` on, one batch per revision. When `from` has
    /// been compacted the stream yields `CoordError::Compacted` and ends: list again and watch
    /// from the listing's revision + 1.
    pub async fn watch_users(
        &self,
        from: Revision,
    ) -> Result<BoxStream<'static, Result<(Revision, Vec<UserEvent>), CoordError>>, CoordError> {
        let stream = self.backend().watch(&self.user_prefix(), from).await?;
        let this = self.clone();
        Ok(stream
            .map(move |item| match item? {
                WatchResponse::Events { revision, events } => Ok((
                    revision,
                    events
                        .into_iter()
                        .map(|e| match e.kind {
                            WatchEventKind::Put => UserEvent::Put(this.user_record(e.kv)),
                            WatchEventKind::Delete => UserEvent::Dropped { name: this.user_record(e.kv).name },
                        })
                        .collect(),
                )),
                WatchResponse::Compacted { compact_revision } => {
                    Err(CoordError::Compacted { requested: from, compacted: compact_revision })
                }
            })
            .boxed())
    }
}
