//! Passwords: kept only as argon2id hashes (a PHC string with its own salt and parameters),
//! checked in constant time by the argon2 crate. Hashing is slow on purpose (about 19 MiB
//! and two passes each), so it runs on the blocking pool, a few at a time.

use std::fmt;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Longest password accepted: argon2 takes any length, but a request must not make the node
/// hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A password as a client sent it. Never printed: `Debug` shows only its length class.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(text: impl Into<String>) -> Password {
        Password(text.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// A new random password: 24 bytes from the operating system, as 48 hex digits.
    pub fn generate() -> Result<Password, getrandom::Error> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)?;
        Ok(Password(hex::encode(bytes)))
    }

    /// The password itself, for the one place that must show it: the file a generated
    /// password is written to.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A password's argon2id hash as a PHC string (`$argon2id$v=19$m=...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordHash(pub(crate) String);

impl PasswordHash {
    /// Hashes `password` with a new random salt (blocking: call on the blocking pool).
    pub fn create(password: &Password) -> Result<PasswordHash, String> {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| PasswordHash(hash.to_string()))
            .map_err(|e| format!("cannot hash the password: {e}"))
    }

    /// Whether `password` is the one hashed (blocking; constant time in the comparison).
    pub fn verify(&self, password: &Password) -> bool {
        Argon2::default().verify_password(password.as_bytes(), self.0.as_str()).is_ok()
    }

    /// The scheme, as `system.users` shows it.
    pub fn scheme(&self) -> &str {
        self.0.split('$').nth(1).unwrap_or("unknown")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_accepts_its_password_only() {
        let password = Password::new("correct horse");
        let hash = PasswordHash::create(&password).unwrap();
        assert!(hash.0.starts_with("$argon2id$"), "{}", hash.0);
        assert!(!hash.0.contains("correct horse"));
        assert!(hash.verify(&password));
        assert!(!hash.verify(&Password::new("correct horsE")));
        assert!(!hash.verify(&Password::new("")));
        let again = PasswordHash::create(&password).unwrap();
        assert_ne!(hash, again, "every hash has its own salt");
        assert_eq!(hash.scheme(), "argon2id");
    }

    #[test]
    fn passwords_never_print() {
        let password = Password::new("hunter2");
        assert!(!format!("{password:?}").contains("hunter2"));
        let generated = Password::generate().unwrap();
        assert_eq!(generated.reveal().len(), 48);
        assert_ne!(generated, Password::generate().unwrap());
    }
}
