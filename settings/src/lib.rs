//! Settings declared once. One [`settings!`] line gives a setting its type, its default, its
//! flag and `TANDEM_*` variable (through clap), and its key in the config file (through serde);
//! from it come the flags, the file table, the resolved values and the help text, so adding a
//! setting is that line plus the code that uses it. Flags (and their variables) win over the
//! file, the file over the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// A type a setting can have. `Flag` is what a flag or a file key holds (an `Option<T>` setting
/// is unset unless given, so its flag holds a `T`).
pub trait Setting: Sized {
    type Flag: Clone + FromStr;

    fn from_flag(flag: Self::Flag) -> Self;

    /// The default, from the text the declaration shows in the help. A declaration whose
    /// default does not parse is a bug that the crate's own tests catch (they build every
    /// default).
    fn from_default(text: &str) -> Self;
}

macro_rules! plain_settings {
    ($($ty:ty),*) => {$(
        impl Setting for $ty {
            type Flag = $ty;

            fn from_flag(flag: $ty) -> $ty {
                flag
            }

            fn from_default(text: &str) -> $ty {
                match text.parse() {
                    Ok(value) => value,
                    Err(_) => panic!("the declared default `{text}` is not a valid {}", stringify!($ty)),
                }
            }
        }
    )*};
}

plain_settings!(bool, u32, u64, usize, String, PathBuf, SocketAddr);

impl<T: Clone + FromStr> Setting for Option<T> {
    type Flag = T;

    fn from_flag(flag: T) -> Option<T> {
        Some(flag)
    }

    /// `""` declares a setting that is unset by default.
    fn from_default(text: &str) -> Option<T> {
        if text.is_empty() {
            return None;
        }
        match text.parse() {
            Ok(value) => Some(value),
            Err(_) => panic!("the declared default `{text}` does not parse"),
        }
    }
}

/// The help of a flag: its doc comment as one paragraph, then its default when it has one.
pub fn long_help(doc: &[&str], default: &str) -> String {
    let text: Vec<&str> = doc.iter().map(|line| line.trim()).collect();
    let text = text.join(" ");
    if default.is_empty() { text } else { format!("{text}\n[default: {default}]") }
}

/// Declares a group of settings:
///
/// ```ignore
/// tandem_settings::settings! {
///     /// What the group is.
///     pub struct Limits, flags LimitArgs, file LimitFile {
///         /// Rows one insert may decode to.
///         max_insert_rows: u64 = "10000000", env "TANDEM_MAX_INSERT_ROWS";
///         /// Unset unless given (an empty default).
///         advertise_addr: Option<String> = "", env "TANDEM_ADVERTISE_ADDR";
///         /// Extra clap attributes go in brackets.
///         verbose: bool = "false", env "TANDEM_VERBOSE", [num_args = 0..=1, default_missing_value = "true"];
///     }
/// }
/// ```
///
/// It defines the resolved `Limits` (with `Default`, and `resolve(&flags, &file)`), the clap
/// flags `LimitArgs` (each `--max-insert-rows`, read from its variable too) and the file table
/// `LimitFile` (each key optional, unknown keys refused). `LimitFile::KEYS` lists the keys and
/// `LimitFile::is_complete` says whether a file sets them all (the example config does).
#[macro_export]
macro_rules! settings {
    (
        $(#[doc = $group_doc:literal])*
        $vis:vis struct $name:ident, flags $flags:ident, file $file:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty = $default:literal, env $env:literal $(, [$($extra:tt)*])?;
            )*
        }
    ) => {
        $(#[doc = $group_doc])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: <$ty as $crate::Setting>::from_default($default), )* }
            }
        }

        impl $name {
            /// Flags (and their variables) win over the file, the file over the defaults.
            pub fn resolve(flags: &$flags, file: &$file) -> Self {
                $name {
                    $(
                        $field: match flags.$field.clone().or_else(|| file.$field.clone()) {
                            Some(value) => <$ty as $crate::Setting>::from_flag(value),
                            None => <$ty as $crate::Setting>::from_default($default),
                        },
                    )*
                }
            }
        }

        /// The flags (each also read from its `TANDEM_*` variable); unset ones come from the
        /// file or the defaults.
        #[derive(clap::Args, Debug, Default, Clone)]
        $vis struct $flags {
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env, long_help = $crate::long_help(&[$($doc),*], $default) $(, $($extra)*)?)]
                pub $field: Option<<$ty as $crate::Setting>::Flag>,
            )*
        }

        /// The keys of the config file this group reads (other groups read the other keys;
        /// the file's reader refuses keys no group knows, see `KEYS`).
        #[derive(serde::Deserialize, Debug, Default, Clone)]
        $vis struct $file {
            $( pub $field: Option<<$ty as $crate::Setting>::Flag>, )*
        }

        impl $file {
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Whether every key is set (the example config documents them all).
            pub fn is_complete(&self) -> bool {
                true $( && self.$field.is_some() )*
            }
        }
    };
}
