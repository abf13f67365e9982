//! Why a request was refused, or why a change to users failed: each kind its own variant, so
//! the front door picks its status by matching, never by reading a message.

use tandem_coordinator::CoordError;

use crate::privilege::{Object, Privilege};

/// A request could not be authenticated (HTTP 401). An unknown user and a wrong password give
/// the same answer, so the answer does not tell which users exist.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "authentication required: send a user name and password (HTTP basic auth, X-ClickHouse-User/X-ClickHouse-Key, or user/password parameters)"
    )]
    Required,
    #[error("authentication failed: the password is incorrect, or there is no user with that name")]
    Failed,
    #[error(
        "no users are defined and this node does not serve without authentication: start a node with --admin-password-file to create the first user"
    )]
    NoUsers,
    #[error(
        "no users are defined yet, so no credentials can be checked: send none (anyone on this node is the implicit `default` user), or create users first"
    )]
    CredentialsWithoutUsers,
}

/// A user lacks a privilege (HTTP 403): names it, and the statement that would grant it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "user `{user}` lacks the {privilege} privilege on {object}: an administrator can run `GRANT {privilege} ON {object} TO {user}`"
)]
pub struct AccessDenied {
    pub user: String,
    pub privilege: Privilege,
    pub object: Object,
}

/// A change to users or grants failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("user `{0}` already exists")]
    UserExists(String),
    #[error("there is no user `{0}`")]
    NoSuchUser(String),
    /// The statement asks for something tandem cannot do; the message says what.
    #[error("{0}")]
    Invalid(String),
    #[error("the users kept changing while this change was being made; run it again")]
    Contended,
    /// The coordinator could not be reached: the change may or may not have been made.
    #[error("cannot change users now: {0}; check with SHOW USERS / SHOW GRANTS and retry")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<CoordError> for AccessError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::Unavailable(_) => AccessError::Unavailable(e.to_string()),
            other => AccessError::Internal(other.to_string()),
        }
    }
}
