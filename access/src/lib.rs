//! tandem-access decides who gets in and what they may do: the cluster's users and their
//! grants, kept in the coordinator so every node agrees and a change applies cluster-wide at
//! once (as ClickHouse keeps its access entities in Keeper).
//!
//! - [`AccessControl`] (`control`): one node's copy of the users, kept current by a watch;
//!   [`AccessControl::authenticate`] (credentials to a [`Principal`]),
//!   [`AccessControl::authorize`] (a privilege on an object, or [`AccessDenied`]), and
//!   [`AccessControl::change`] (`CREATE/ALTER/DROP USER`, `GRANT`, `REVOKE` as one
//!   compare-and-swap transaction).
//! - [`privilege`]: privileges, the scopes they are granted on, the objects requests touch.
//! - [`password`]: passwords, kept only as argon2id hashes.
//!
//! This crate knows nothing of HTTP or SQL text: the front door parses statements and
//! credentials into these types.

mod control;
mod error;
pub mod password;
pub mod privilege;

pub use control::{AccessChange, AccessControl, Credentials, DEFAULT_USER, Principal, UserView};
pub use error::{AccessDenied, AccessError, AuthError};
pub use password::Password;
pub use privilege::{Grant, Object, Privilege, Scope};
