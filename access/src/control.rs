//! The access-control service of one node: the cluster's users, as the coordinator has them,
//! kept current by a watch; authentication and authorization against that copy; changes made
//! as compare-and-swap transactions on the coordinator.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tandem_coordinator::{Coordinator, Revision, UserEvent, UserRecord, UserWrite};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{AccessDenied, AccessError, AuthError};
use crate::password::{MAX_PASSWORD_BYTES, Password, PasswordHash};
use crate::privilege::{Grant, Object, Privilege, Scope};

/// The name of the implicit user of a node without users, and of the first user created at
/// bootstrap: what ClickHouse clients send when told no user.
pub const DEFAULT_USER: &str = "default";

/// Longest user name accepted.
const MAX_USER_NAME: usize = 64;

/// A change that loses a compare-and-swap race is re-planned on what won, this many times.
const MAX_ATTEMPTS: usize = 20;

/// How long a change waits for this node's copy to show it, so the next request sees it.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// At most this many verified credentials are remembered (then the memory starts over).
const MAX_VERIFIED: usize = 10_000;

/// What a client sent to say who it is.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: String,
    pub password: Password,
}

/// Who a request runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    name: String,
    /// The implicit `default` user of a node without users: holds every privilege.
    implicit: bool,
}

impl Principal {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A user as `system.users` and `SHOW GRANTS` show it (the hash itself is never shown).
#[derive(Clone, Debug)]
pub struct UserView {
    pub name: String,
    /// The password's hashing scheme (`argon2id`).
    pub auth_type: String,
    pub grants: Vec<Grant>,
}

/// A change to users or grants, as the SQL statements ask for it.
#[derive(Clone, Debug)]
pub enum AccessChange {
    CreateUser {
        name: String,
        password: Password,
        if_not_exists: bool,
    },
    SetPassword {
        name: String,
        password: Password,
        if_exists: bool,
    },
    DropUsers {
        names: Vec<String>,
        if_exists: bool,
    },
    Grant {
        privileges: Vec<Privilege>,
        scope: Scope,
        users: Vec<String>,
    },
    /// Takes away the privileges on the scope and on everything inside it.
    Revoke {
        privileges: Vec<Privilege>,
        scope: Scope,
        users: Vec<String>,
    },
}

/// A user's record in the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserDoc {
    /// argon2id, as a PHC string.
    password: String,
    grants: BTreeSet<Grant>,
}

#[derive(Clone, Debug)]
struct User {
    doc: UserDoc,
    version: Revision,
}

/// The cluster's users, checked by every request of this node.
pub struct AccessControl {
    coordinator: Coordinator,
    users: RwLock<BTreeMap<String, User>>,
    /// The coordinator revision `users` reflects.
    applied: watch::Sender<Revision>,
    /// Whether a node without users serves everyone as the implicit `default` user (on
    /// loopback, or when started with `--insecure`).
    open_without_users: bool,
    /// Keyed hashes of credentials already verified against a user's current record, so a
    /// client that sends its password with every request pays for argon2 once, not per request.
    verified: Mutex<HashSet<[u8; 32]>>,
    verified_key: [u8; 32],
    /// At most one argon2 computation per core at a time: a flood of wrong passwords cannot
    /// take every thread.
    hashing: Arc<Semaphore>,
    /// Checked instead when the user does not exist, so an unknown user costs the same time
    /// as a wrong password.
    decoy: PasswordHash,
    /// Passwords checked with argon2 so far (credentials not remembered).
    password_checks: AtomicU64,
}

impl AccessControl {
    /// Lists the users (failing if the coordinator cannot be read) and starts following their
    /// changes until `shutdown`.
    pub async fn start(
        coordinator: Coordinator,
        open_without_users: bool,
        shutdown: CancellationToken,
    ) -> Result<(Arc<AccessControl>, JoinHandle<()>), AccessError> {
        let (records, revision) = coordinator.list_users().await?;
        let mut verified_key = [0u8; 32];
        getrandom::fill(&mut verified_key).map_err(|e| AccessError::Internal(format!("no random numbers: {e}")))?;
        let decoy = tokio::task::spawn_blocking(|| PasswordHash::create(&Password::new("no such user")))
            .await
            .map_err(|e| AccessError::Internal(e.to_string()))?
            .map_err(AccessError::Internal)?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let control = Arc::new(AccessControl {
            coordinator,
            users: RwLock::new(BTreeMap::new()),
            applied: watch::Sender::new(revision),
            open_without_users,
            verified: Mutex::new(HashSet::new()),
            verified_key,
            hashing: Arc::new(Semaphore::new(cores)),
            decoy,
            password_checks: AtomicU64::new(0),
        });
        control.replace_all(records, revision);
        let follower = tokio::spawn(control.clone().follow(revision, shutdown));
        Ok((control, follower))
    }

    /// How many passwords have been checked with argon2 (the credentials of a request that
    /// were not remembered from an earlier one).
    pub fn password_checks(&self) -> u64 {
        self.password_checks.load(Ordering::Relaxed)
    }

    /// Whether any user is defined.
    pub fn has_users(&self) -> bool {
        !self.read_users().is_empty()
    }

    /// Who the request runs as. Without users, everyone is the implicit `default` user where
    /// the node allows it; with users, a user name and its password are required.
    pub async fn authenticate(&self, credentials: Option<&Credentials>) -> Result<Principal, AuthError> {
        if !self.has_users() {
            let anonymous = credentials.is_none_or(|c| c.user == DEFAULT_USER && c.password.is_empty());
            return match (self.open_without_users, anonymous) {
                (true, true) => Ok(Principal { name: DEFAULT_USER.to_string(), implicit: true }),
                (true, false) => Err(AuthError::CredentialsWithoutUsers),
                (false, _) => Err(AuthError::NoUsers),
            };
        }
        let Some(credentials) = credentials else {
            return Err(AuthError::Required);
        };
        let found = self.read_users().get(&credentials.user).map(|u| (PasswordHash(u.doc.password.clone()), u.version));
        if credentials.password.as_bytes().len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::Failed);
        }
        let remembered = found.as_ref().map(|(_, version)| self.remembered(credentials, *version));
        if let Some(key) = remembered
            && self.verified.lock().expect("verified lock").contains(&key)
        {
            return Ok(Principal { name: credentials.user.clone(), implicit: false });
        }
        let hash = found.as_ref().map(|(hash, _)| hash.clone()).unwrap_or_else(|| self.decoy.clone());
        let password = credentials.password.clone();
        let permit = self.hashing.clone().acquire_owned().await.map_err(|_| AuthError::Failed)?;
        self.password_checks.fetch_add(1, Ordering::Relaxed);
        let matches = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(&password)
        })
        .await
        .unwrap_or(false);
        match (matches, remembered) {
            (true, Some(key)) => {
                let mut verified = self.verified.lock().expect("verified lock");
                if verified.len() >= MAX_VERIFIED {
                    verified.clear();
                }
                verified.insert(key);
                Ok(Principal { name: credentials.user.clone(), implicit: false })
            }
            _ => Err(AuthError::Failed),
        }
    }

    /// Refuses unless `principal` holds `privilege` on `object` now (a grant or revoke applies
    /// from the next check on).
    pub fn authorize(&self, principal: &Principal, privilege: Privilege, object: &Object) -> Result<(), AccessDenied> {
        if principal.implicit {
            return Ok(());
        }
        let users = self.read_users();
        let granted = users
            .get(&principal.name)
            .is_some_and(|user| user.doc.grants.iter().any(|g| g.privilege == privilege && g.scope.covers(object)));
        if granted {
            Ok(())
        } else {
            Err(AccessDenied { user: principal.name.clone(), privilege, object: object.clone() })
        }
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserView> {
        self.read_users()
            .iter()
            .map(|(name, user)| UserView {
                name: name.clone(),
                auth_type: PasswordHash(user.doc.password.clone()).scheme().to_string(),
                grants: user.doc.grants.iter().cloned().collect(),
            })
            .collect()
    }

    /// One user's grants as the statements that give them (`GRANT ALL ON ...` where a scope
    /// holds every privilege). `None` for an unknown user.
    pub fn grant_statements(&self, name: &str) -> Option<Vec<String>> {
        let users = self.read_users();
        let user = users.get(name)?;
        let mut by_scope: BTreeMap<&Scope, Vec<Privilege>> = BTreeMap::new();
        for grant in &user.doc.grants {
            by_scope.entry(&grant.scope).or_default().push(grant.privilege);
        }
        Some(
            by_scope
                .into_iter()
                .map(|(scope, privileges)| {
                    let names = if privileges.len() == Privilege::ALL.len() {
                        "ALL".to_string()
                    } else {
                        privileges.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                    };
                    format!("GRANT {names} ON {scope} TO {name}")
                })
                .collect(),
        )
    }

    /// Creates `name` with every privilege on `*.*` if the cluster has no user yet. Returns
    /// whether it did (another node may have created the first user at the same time).
    pub async fn create_first_user(&self, name: &str, password: &Password) -> Result<bool, AccessError> {
        validate_name(name)?;
        validate_password(password)?;
        let (existing, _) = self.coordinator.list_users().await?;
        if !existing.is_empty() {
            return Ok(false);
        }
        let doc = UserDoc {
            password: hash(password).await?.0,
            grants: Privilege::ALL.into_iter().map(|privilege| Grant { privilege, scope: Scope::Global }).collect(),
        };
        let write = UserWrite { name: name.to_string(), expected: None, doc: Some(encode(&doc)) };
        match self.coordinator.write_users(vec![write]).await? {
            Some(revision) => {
                self.wait_applied(revision).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Makes a change to users or grants cluster-wide, atomically, and waits (briefly) until
    /// this node's copy shows it. Returns the change's revision, or `None` when there was
    /// nothing to change (`IF NOT EXISTS`, `IF EXISTS`, a grant already held).
    pub async fn change(&self, change: &AccessChange) -> Result<Option<Revision>, AccessError> {
        validate(change)?;
        let new_hash = match change {
            AccessChange::CreateUser { password, .. } | AccessChange::SetPassword { password, .. } => {
                Some(hash(password).await?)
            }
            _ => None,
        };
        for _ in 0..MAX_ATTEMPTS {
            let (records, _) = self.coordinator.list_users().await?;
            let current: BTreeMap<String, User> = records.into_iter().filter_map(decode).collect();
            let planned = plan(change, &current, new_hash.as_ref())?;
            if planned.is_empty() {
                return Ok(None);
            }
            keeps_an_administrator(&current, &planned)?;
            let writes = planned
                .into_iter()
                .map(|(name, doc)| UserWrite {
                    expected: current.get(&name).map(|u| u.version),
                    doc: doc.as_ref().map(encode),
                    name,
                })
                .collect();
            if let Some(revision) = self.coordinator.write_users(writes).await? {
                self.wait_applied(revision).await;
                return Ok(Some(revision));
            }
        }
        Err(AccessError::Contended)
    }

    fn read_users(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, User>> {
        self.users.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remembered(&self, credentials: &Credentials, version: Revision) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.verified_key);
        hasher.update(&(credentials.user.len() as u64).to_le_bytes());
        hasher.update(credentials.user.as_bytes());
        hasher.update(&version.to_le_bytes());
        hasher.update(credentials.password.as_bytes());
        *hasher.finalize().as_bytes()
    }

    async fn wait_applied(&self, revision: Revision) {
        let mut applied = self.applied.subscribe();
        if tokio::time::timeout(APPLY_WAIT, applied.wait_for(|r| *r >= revision)).await.is_err() {
            tracing::warn!(revision, "a change to users is made but this node has not seen it yet");
        }
    }

    fn replace_all(&self, records: Vec<UserRecord>, revision: Revision) {
        let users = records.into_iter().filter_map(decode).collect();
        *self.users.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = users;
        self.applied.send_replace(revision);
    }

    fn apply(&self, revision: Revision, events: Vec<UserEvent>) {
        {
            let mut users = self.users.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            for event in events {
                match event {
                    UserEvent::Put(record) => {
                        let name = record.name.clone();
                        match decode(record) {
                            Some((name, user)) => users.insert(name, user),
                            None => users.remove(&name),
                        };
                    }
                    UserEvent::Dropped { name } => {
                        users.remove(&name);
                    }
                }
            }
        }
        self.applied.send_replace(revision);
    }

    /// Follows the coordinator's user records: applies each change in order; after any break
    /// (compaction, an unreachable coordinator) lists them again and resumes. While the
    /// coordinator is away, the last copy keeps serving.
    async fn follow(self: Arc<Self>, mut revision: Revision, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.coordinator.watch_users(revision + 1).await {
                Ok(mut stream) => loop {
                    let item = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok((at, events))) => {
                            self.apply(at, events);
                            revision = at;
                            backoff = Duration::from_millis(100);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "the watch of users ended; listing them again");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch users; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match self.coordinator.list_users().await {
                Ok((records, at)) => {
                    self.replace_all(records, at);
                    revision = at;
                }
                Err(e) => tracing::warn!(error = %e, "cannot list users; keeping the last copy"),
            }
        }
    }
}

async fn hash(password: &Password) -> Result<PasswordHash, AccessError> {
    let password = password.clone();
    tokio::task::spawn_blocking(move || PasswordHash::create(&password))
        .await
        .map_err(|e| AccessError::Internal(e.to_string()))?
        .map_err(AccessError::Internal)
}

fn encode(doc: &UserDoc) -> Vec<u8> {
    serde_json::to_vec(doc).expect("a user record always serializes")
}

/// A user record read from the coordinator; one that cannot be read is skipped (that user
/// cannot sign in) and reported.
fn decode(record: UserRecord) -> Option<(String, User)> {
    match serde_json::from_slice::<UserDoc>(&record.doc) {
        Ok(doc) => Some((record.name, User { doc, version: record.version })),
        Err(e) => {
            tracing::error!(user = %record.name, error = %e, "ignoring a user record that cannot be read");
            None
        }
    }
}

fn validate_name(name: &str) -> Result<(), AccessError> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && name.len() <= MAX_USER_NAME;
    if valid {
        Ok(())
    } else {
        Err(AccessError::Invalid(format!(
            "`{name}` is not a valid user name: use at most {MAX_USER_NAME} letters, digits, `_`, `-` and `.`, starting with a letter or `_`"
        )))
    }
}

fn validate_password(password: &Password) -> Result<(), AccessError> {
    if password.is_empty() {
        return Err(AccessError::Invalid(
            "a password must not be empty: tandem has no users without a password".into(),
        ));
    }
    if password.as_bytes().len() > MAX_PASSWORD_BYTES {
        return Err(AccessError::Invalid(format!("a password must be at most {MAX_PASSWORD_BYTES} bytes")));
    }
    Ok(())
}

fn validate(change: &AccessChange) -> Result<(), AccessError> {
    match change {
        AccessChange::CreateUser { name, password, .. } | AccessChange::SetPassword { name, password, .. } => {
            validate_name(name)?;
            validate_password(password)
        }
        AccessChange::DropUsers { names, .. } => names.iter().try_for_each(|n| validate_name(n)),
        AccessChange::Grant { privileges, scope, users } | AccessChange::Revoke { privileges, scope, users } => {
            users.iter().try_for_each(|n| validate_name(n))?;
            if let Some(global) = privileges.iter().find(|p| p.is_global())
                && *scope != Scope::Global
                && matches!(change, AccessChange::Grant { .. })
            {
                return Err(AccessError::Invalid(format!("{global} can only be granted ON *.*, not on {scope}")));
            }
            Ok(())
        }
    }
}

/// The new record of every user the change touches (`None`: drop it), planned on `current`.
fn plan(
    change: &AccessChange,
    current: &BTreeMap<String, User>,
    new_hash: Option<&PasswordHash>,
) -> Result<Vec<(String, Option<UserDoc>)>, AccessError> {
    let existing =
        |name: &String| current.get(name).map(|u| u.doc.clone()).ok_or_else(|| AccessError::NoSuchUser(name.clone()));
    let hashed = || new_hash.map(|h| h.0.clone()).ok_or_else(|| AccessError::Internal("no password hash".into()));
    let mut planned = Vec::new();
    match change {
        AccessChange::CreateUser { name, if_not_exists, .. } => match current.contains_key(name) {
            true if *if_not_exists => {}
            true => return Err(AccessError::UserExists(name.clone())),
            false => planned.push((name.clone(), Some(UserDoc { password: hashed()?, grants: BTreeSet::new() }))),
        },
        AccessChange::SetPassword { name, if_exists, .. } => match current.get(name) {
            Some(user) => planned.push((name.clone(), Some(UserDoc { password: hashed()?, ..user.doc.clone() }))),
            None if *if_exists => {}
            None => return Err(AccessError::NoSuchUser(name.clone())),
        },
        AccessChange::DropUsers { names, if_exists } => {
            for name in names.iter().collect::<BTreeSet<_>>() {
                match current.contains_key(name) {
                    true => planned.push((name.clone(), None)),
                    false if *if_exists => {}
                    false => return Err(AccessError::NoSuchUser(name.clone())),
                }
            }
        }
        AccessChange::Grant { privileges, scope, users } => {
            for name in users.iter().collect::<BTreeSet<_>>() {
                let mut doc = existing(name)?;
                let before = doc.grants.len();
                doc.grants.extend(privileges.iter().map(|&privilege| Grant { privilege, scope: scope.clone() }));
                if doc.grants.len() != before {
                    planned.push((name.clone(), Some(doc)));
                }
            }
        }
        AccessChange::Revoke { privileges, scope, users } => {
            for name in users.iter().collect::<BTreeSet<_>>() {
                let mut doc = existing(name)?;
                let before = doc.grants.len();
                doc.grants.retain(|g| !(privileges.contains(&g.privilege) && g.scope.is_within(scope)));
                if doc.grants.len() != before {
                    planned.push((name.clone(), Some(doc)));
                }
            }
        }
    }
    Ok(planned)
}

/// Refuses a change that would leave users but none who can manage them (nobody could then
/// grant anything again short of editing the coordinator by hand).
fn keeps_an_administrator(
    current: &BTreeMap<String, User>,
    planned: &[(String, Option<UserDoc>)],
) -> Result<(), AccessError> {
    let is_admin = |doc: &UserDoc| {
        doc.grants.iter().any(|g| g.privilege == Privilege::AccessManagement && g.scope == Scope::Global)
    };
    let mut after: BTreeMap<&String, Option<&UserDoc>> = current.iter().map(|(n, u)| (n, Some(&u.doc))).collect();
    for (name, doc) in planned {
        after.insert(name, doc.as_ref());
    }
    let had_admin = current.values().any(|u| is_admin(&u.doc));
    let keeps_admin = after.values().any(|doc| doc.is_some_and(is_admin));
    if had_admin && !keeps_admin {
        return Err(AccessError::Invalid(
            "this would leave no user who can manage users and grants: first GRANT ACCESS MANAGEMENT ON *.* to \
             another user"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tandem_coordinator::EmbeddedKv;

    use super::*;

    async fn control(dir: &std::path::Path, open: bool) -> (Arc<AccessControl>, CancellationToken) {
        let kv = EmbeddedKv::open(dir.join("meta.redb")).await.unwrap();
        let shutdown = CancellationToken::new();
        let (control, _) =
            AccessControl::start(Coordinator::new(Arc::new(kv), "/t/"), open, shutdown.clone()).await.unwrap();
        (control, shutdown)
    }

    fn credentials(user: &str, password: &str) -> Credentials {
        Credentials { user: user.into(), password: Password::new(password) }
    }

    fn on_table(t: &str) -> Scope {
        Scope::Table { database: "default".into(), table: t.into() }
    }

    #[tokio::test]
    async fn without_users_only_an_open_node_serves_and_only_anonymously() {
        let dir = tempfile::tempdir().unwrap();
        let (open, _stop) = control(dir.path(), true).await;
        let anyone = open.authenticate(None).await.unwrap();
        assert_eq!(anyone.name(), "default");
        assert!(open.authorize(&anyone, Privilege::Drop, &Object::table("t")).is_ok());
        assert!(open.authenticate(Some(&credentials("default", ""))).await.is_ok(), "what clients send by default");
        assert_eq!(open.authenticate(Some(&credentials("alice", "x"))).await, Err(AuthError::CredentialsWithoutUsers));
        let dir = tempfile::tempdir().unwrap();
        let (closed, _stop) = control(dir.path(), false).await;
        assert_eq!(closed.authenticate(None).await, Err(AuthError::NoUsers));
    }

    #[tokio::test]
    async fn users_sign_in_with_their_password_and_act_within_their_grants() {
        let dir = tempfile::tempdir().unwrap();
        let (access, _stop) = control(dir.path(), true).await;
        assert!(access.create_first_user("default", &Password::new("root pw")).await.unwrap());
        assert!(!access.create_first_user("other", &Password::new("pw")).await.unwrap(), "only the first user");
        let create =
            AccessChange::CreateUser { name: "alice".into(), password: Password::new("pw"), if_not_exists: false };
        assert!(access.change(&create).await.unwrap().is_some());
        assert!(matches!(access.change(&create).await, Err(AccessError::UserExists(_))));
        let grant = AccessChange::Grant {
            privileges: vec![Privilege::Select],
            scope: on_table("events"),
            users: vec!["alice".into()],
        };
        access.change(&grant).await.unwrap();
        assert_eq!(access.change(&grant).await.unwrap(), None, "granting again changes nothing");

        assert_eq!(access.authenticate(None).await, Err(AuthError::Required));
        let checks = access.password_checks();
        assert_eq!(access.authenticate(Some(&credentials("alice", "wrong"))).await, Err(AuthError::Failed));
        assert_eq!(access.authenticate(Some(&credentials("nobody", "pw"))).await, Err(AuthError::Failed));
        assert_eq!(access.password_checks(), checks + 2, "an unknown user costs a hash check, as a wrong password");
        let alice = access.authenticate(Some(&credentials("alice", "pw"))).await.unwrap();
        assert_eq!(access.authenticate(Some(&credentials("alice", "pw"))).await.unwrap(), alice, "remembered");
        assert_eq!(access.password_checks(), checks + 3, "a remembered password is not hashed again");
        assert_eq!(
            access.authenticate(Some(&credentials("alice", "wrong"))).await,
            Err(AuthError::Failed),
            "remembering a right password does not let a wrong one in"
        );
        assert!(access.authorize(&alice, Privilege::Select, &Object::table("events")).is_ok());
        let denied = access.authorize(&alice, Privilege::Insert, &Object::table("events")).unwrap_err();
        assert!(denied.to_string().contains("GRANT INSERT ON default.events TO alice"), "{denied}");
        assert!(access.authorize(&alice, Privilege::Select, &Object::table("logs")).is_err());

        let revoke = AccessChange::Revoke {
            privileges: vec![Privilege::Select],
            scope: Scope::Database("default".into()),
            users: vec!["alice".into()],
        };
        access.change(&revoke).await.unwrap();
        assert!(access.authorize(&alice, Privilege::Select, &Object::table("events")).is_err(), "revoked at once");

        let new_password =
            AccessChange::SetPassword { name: "alice".into(), password: Password::new("pw2"), if_exists: false };
        access.change(&new_password).await.unwrap();
        assert_eq!(
            access.authenticate(Some(&credentials("alice", "pw"))).await,
            Err(AuthError::Failed),
            "a remembered old password is forgotten with the change"
        );
        assert!(access.authenticate(Some(&credentials("alice", "pw2"))).await.is_ok());
        access.change(&AccessChange::DropUsers { names: vec!["alice".into()], if_exists: false }).await.unwrap();
        assert_eq!(access.authenticate(Some(&credentials("alice", "pw2"))).await, Err(AuthError::Failed));
    }

    #[tokio::test]
    async fn the_last_administrator_cannot_be_dropped_and_global_privileges_stay_global() {
        let dir = tempfile::tempdir().unwrap();
        let (access, _stop) = control(dir.path(), false).await;
        access.create_first_user("root", &Password::new("pw")).await.unwrap();
        let drop = AccessChange::DropUsers { names: vec!["root".into()], if_exists: false };
        assert!(matches!(access.change(&drop).await, Err(AccessError::Invalid(_))));
        let grant = AccessChange::Grant {
            privileges: vec![Privilege::AccessManagement],
            scope: on_table("t"),
            users: vec!["root".into()],
        };
        assert!(matches!(access.change(&grant).await, Err(AccessError::Invalid(_))));
        assert_eq!(access.grant_statements("root").unwrap(), ["GRANT ALL ON *.* TO root"]);
        let weak =
            AccessChange::CreateUser { name: "bad name".into(), password: Password::new("x"), if_not_exists: false };
        assert!(matches!(access.change(&weak).await, Err(AccessError::Invalid(_))));
        let empty = AccessChange::CreateUser { name: "u".into(), password: Password::new(""), if_not_exists: false };
        assert!(matches!(access.change(&empty).await, Err(AccessError::Invalid(_))));
    }

    #[tokio::test]
    async fn a_change_made_through_one_node_reaches_another() {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn tandem_coordinator::KvBackend> =
            Arc::new(EmbeddedKv::open(dir.path().join("m.redb")).await.unwrap());
        let stop = CancellationToken::new();
        let (one, _) = AccessControl::start(Coordinator::new(kv.clone(), "/c/"), false, stop.clone()).await.unwrap();
        let (two, _) = AccessControl::start(Coordinator::new(kv, "/c/"), false, stop.clone()).await.unwrap();
        one.create_first_user("root", &Password::new("pw")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !two.has_users() {
            assert!(tokio::time::Instant::now() < deadline, "the other node never saw the user");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(two.authenticate(Some(&credentials("root", "pw"))).await.is_ok());
        stop.cancel();
    }
}
