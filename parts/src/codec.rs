//! How a part's columns are compressed: a table's `default_compression_codec`, in ClickHouse's
//! spelling (`'LZ4'`, `'ZSTD(3)'`, `'NONE'`).

use std::fmt;

use parquet::basic::{Compression, ZstdLevel};
use serde::{Deserialize, Serialize};

/// The codec of a part's columns (but the leading sort-key column, which is stored
/// uncompressed: see `encode`).
///
/// LZ4 by default, as in ClickHouse: it decodes several times faster than zstd, and a scan
/// spends its time decoding. On the comparison benchmark's 10 M rows, parts written with LZ4
/// were 1.7x the bytes of zstd's but `count(DISTINCT id)` took 41% less time, a 6-hour range
/// by host 20-34% less and a filter on one host about 10% less (full scans of a float 2-7%).
/// ZSTD is for tables where storage costs more than query time.
///
/// Stored (in manifests and table settings) as ClickHouse spells it: `"LZ4"`, `"ZSTD(3)"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Codec {
    #[default]
    Lz4,
    /// zstd at a level from 1 to 22.
    Zstd(u8),
    None,
}

impl Codec {
    /// What parts written before codecs were chosen used, and what their manifests without a
    /// codec mean.
    pub const BEFORE_CODECS: Codec = Codec::Zstd(1);

    /// Reads ClickHouse's spelling of a codec, case-insensitive: `LZ4`, `ZSTD` (level 1),
    /// `ZSTD(n)` with n from 1 to 22, `NONE`.
    pub fn parse(text: &str) -> Result<Codec, UnknownCodec> {
        let spelled = text.trim().to_ascii_uppercase();
        let refused = || UnknownCodec { text: text.to_string() };
        match spelled.as_str() {
            "LZ4" => Ok(Codec::Lz4),
            "NONE" => Ok(Codec::None),
            "ZSTD" => Ok(Codec::Zstd(1)),
            other => {
                let level = other
                    .strip_prefix("ZSTD(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .and_then(|level| level.trim().parse::<u8>().ok())
                    .ok_or_else(refused)?;
                match level {
                    1..=22 => Ok(Codec::Zstd(level)),
                    _ => Err(refused()),
                }
            }
        }
    }

    /// Parquet's compression for the codec.
    pub(crate) fn compression(self) -> Compression {
        match self {
            Codec::Lz4 => Compression::LZ4_RAW,
            Codec::Zstd(level) => match ZstdLevel::try_new(i32::from(level)) {
                Ok(level) => Compression::ZSTD(level),
                // Levels are checked where codecs are made; a level out of range is level 1.
                Err(_) => Compression::ZSTD(ZstdLevel::default()),
            },
            Codec::None => Compression::UNCOMPRESSED,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::Lz4 => f.write_str("LZ4"),
            Codec::Zstd(level) => write!(f, "ZSTD({level})"),
            Codec::None => f.write_str("NONE"),
        }
    }
}

/// A codec that is not one of [`Codec`]'s spellings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression codec `{text}`: use 'LZ4', 'ZSTD', 'ZSTD(level)' with a level from 1 to 22, or 'NONE'")]
pub struct UnknownCodec {
    pub text: String,
}

impl From<Codec> for String {
    fn from(codec: Codec) -> String {
        codec.to_string()
    }
}

impl TryFrom<String> for Codec {
    type Error = UnknownCodec;

    fn try_from(text: String) -> Result<Codec, UnknownCodec> {
        Codec::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_read_as_clickhouse_spells_them_and_print_back() {
        for (text, codec) in [
            ("LZ4", Codec::Lz4),
            ("lz4", Codec::Lz4),
            ("ZSTD", Codec::Zstd(1)),
            ("ZSTD(3)", Codec::Zstd(3)),
            (" zstd( 22 ) ", Codec::Zstd(22)),
            ("None", Codec::None),
        ] {
            assert_eq!(Codec::parse(text), Ok(codec), "{text}");
            assert_eq!(Codec::parse(&codec.to_string()), Ok(codec));
        }
        for refused in ["", "LZ4HC", "ZSTD(0)", "ZSTD(23)", "ZSTD(-1)", "ZSTD(1", "zstd(1)x", "ZSTD(999999999999)"] {
            assert_eq!(Codec::parse(refused), Err(UnknownCodec { text: refused.to_string() }));
        }
    }

    #[test]
    fn manifests_keep_the_codec_they_were_written_with() {
        for (codec, json) in [(Codec::Lz4, "\"LZ4\""), (Codec::Zstd(7), "\"ZSTD(7)\""), (Codec::None, "\"NONE\"")] {
            assert_eq!(serde_json::to_string(&codec).unwrap(), json);
            assert_eq!(serde_json::from_str::<Codec>(json).unwrap(), codec);
        }
        assert!(serde_json::from_str::<Codec>("\"ZSTD(0)\"").is_err());
    }
}
