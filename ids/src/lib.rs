//! The identities that cross tandem's boundaries (the coordinator's records, the interserver
//! protocol, the replica's API) as types, parsed once where they enter.

use std::fmt;
use std::str::FromStr;

/// Text that is not a part id (64 lowercase hex characters); holds at most its first 80 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a part id: a part id is 64 lowercase hex characters (a blake3 hash)")]
pub struct InvalidPartId(pub String);

/// The identity of a part: the blake3 hash of its file bytes.
///
/// Parsing accepts only 64 lowercase hex characters, so a part id taken from a request or a
/// peer can never name a path outside the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartId([u8; 32]);

impl PartId {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        PartId(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_hash(hash: blake3::Hash) -> Self {
        PartId(*hash.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartId({self})")
    }
}

impl FromStr for PartId {
    type Err = InvalidPartId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(InvalidPartId(s.chars().take(80).collect()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| InvalidPartId(s.to_string()))?;
        Ok(PartId(out))
    }
}

/// As its hex string, in manifests, coordinator records and API answers.
impl serde::Serialize for PartId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PartId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_lowercase_hex_hashes() {
        let id = PartId::of_bytes(b"abc");
        assert_eq!(id.to_string().parse::<PartId>().unwrap(), id);
        for bad in ["", "../etc/passwd", &id.to_string().to_uppercase(), &format!("{id}0")] {
            assert!(bad.parse::<PartId>().is_err(), "{bad} must be rejected");
        }
    }
}
