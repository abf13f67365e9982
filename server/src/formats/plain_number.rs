//! Numbers in their plainest spelling, `[-]digits[.digits]`, read without Arrow's parser. That
//! parser takes signs, spaces, exponents, `inf` and `nan`, and checks for overflow at every
//! digit; it was about a tenth of decoding a small TabSeparated insert. A value read here is
//! exactly what it would read (the tests compare them): anything else is left to it.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use datafusion::arrow::compute::kernels::cast_utils::Parser;
use datafusion::arrow::datatypes::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

/// A number type whose plainest spelling is read here, and the rest by Arrow's parser.
pub trait PlainNumber: Parser {
    /// The value of `text`, as `Self::parse` reads it.
    fn parse_number(text: &str) -> Option<Self::Native> {
        Self::parse_plain(text).or_else(|| Self::parse(text))
    }

    /// The value of `text` when it is spelled plainly and fits, or `None` (then the general
    /// parser decides).
    fn parse_plain(text: &str) -> Option<Self::Native>;
}

/// At most this many digits are read here: their value fits in a `u64` without a check.
const MAX_DIGITS: usize = 19;

/// The value of a run of 1 to [`MAX_DIGITS`] ASCII digits.
fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > MAX_DIGITS {
        return None;
    }
    text.iter().try_fold(0_u64, |value, &b| b.is_ascii_digit().then(|| value * 10 + u64::from(b - b'0')))
}

/// `text` without a leading `-`, and whether it had one.
fn sign(text: &[u8]) -> (bool, &[u8]) {
    match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    }
}

macro_rules! unsigned {
    ($($arrow:ty),*) => {$(
        impl PlainNumber for $arrow {
            fn parse_plain(text: &str) -> Option<Self::Native> {
                digits(text.as_bytes()).and_then(|value| value.try_into().ok())
            }
        }
    )*};
}
unsigned!(UInt8Type, UInt16Type, UInt32Type, UInt64Type);

macro_rules! signed {
    ($($arrow:ty),*) => {$(
        impl PlainNumber for $arrow {
            fn parse_plain(text: &str) -> Option<Self::Native> {
                let (negative, text) = sign(text.as_bytes());
                let value = i64::try_from(digits(text)?).ok()?;
                (if negative { -value } else { value }).try_into().ok()
            }
        }
    )*};
}
signed!(Int8Type, Int16Type, Int32Type, Int64Type);

/// `[-]digits[.digits]` as its digits without the point (at most `max_digits` of them), the
/// number of digits after the point, and the sign.
fn decimal(text: &str, max_digits: usize) -> Option<(bool, u64, usize)> {
    let (negative, text) = sign(text.as_bytes());
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(point) => (text.get(..point)?, text.get(point + 1..).filter(|f| !f.is_empty())?),
        None => (text, &[][..]),
    };
    if whole.is_empty() || whole.len() + fraction.len() > max_digits {
        return None;
    }
    let mantissa = fraction
        .iter()
        .try_fold(digits(whole)?, |value, &b| b.is_ascii_digit().then(|| value * 10 + u64::from(b - b'0')))?;
    Some((negative, mantissa, fraction.len()))
}

/// Powers of ten a `f64` holds exactly.
const F64_POWERS: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
/// Powers of ten a `f32` holds exactly.
const F32_POWERS: [f32; 8] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7];

// Clinger's fast path: with at most 15 significant digits (7 for `f32`) the digits and the
// power of ten are both exact in the float type, and IEEE division rounds their quotient
// correctly, which is the value the correctly rounded general parser gives.

impl PlainNumber for Float64Type {
    fn parse_plain(text: &str) -> Option<f64> {
        let (negative, mantissa, scale) = decimal(text, 15)?;
        let value = mantissa as f64 / F64_POWERS.get(scale)?;
        Some(if negative { -value } else { value })
    }
}

impl PlainNumber for Float32Type {
    fn parse_plain(text: &str) -> Option<f32> {
        let (negative, mantissa, scale) = decimal(text, 7)?;
        let value = mantissa as f32 / F32_POWERS.get(scale)?;
        Some(if negative { -value } else { value })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Spellings a number column sees: plain ones of every length, and ones left to Arrow.
    fn spelling() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?[0-9]{1,22}",
            "-?[0-9]{1,10}\\.[0-9]{1,10}",
            "-?0*[0-9]{1,3}(\\.[0-9]{0,3}0*)?",
            "[-+ ]?[0-9.]{0,6}[eE]?[-+]?[0-9 ]{0,3}",
            "(nan|inf|-inf|NaN|\\.5|5\\.|-|\\.|--1|1-|٣)",
            any::<f64>().prop_map(|f| f.to_string()),
            any::<f32>().prop_map(|f| f.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<u64>().prop_map(|u| u.to_string()),
        ]
    }

    fn same<T: PlainNumber>(text: &str) -> Result<(), TestCaseError>
    where
        T::Native: std::fmt::Debug,
    {
        let (ours, arrow) = (T::parse_number(text), T::parse(text));
        // Floats by their bits: -0.0 and 0.0 differ there, and NaN equals itself.
        prop_assert_eq!(format!("{ours:?}"), format!("{arrow:?}"), "{:?}", text);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Every type reads every spelling as Arrow's parser does, to the bit.
        #[test]
        fn reads_what_arrow_reads(text in spelling()) {
            same::<Int8Type>(&text)?;
            same::<Int16Type>(&text)?;
            same::<Int32Type>(&text)?;
            same::<Int64Type>(&text)?;
            same::<UInt8Type>(&text)?;
            same::<UInt16Type>(&text)?;
            same::<UInt32Type>(&text)?;
            same::<UInt64Type>(&text)?;
            let (ours, arrow) = (Float64Type::parse_number(&text), Float64Type::parse(&text));
            prop_assert_eq!(ours.map(f64::to_bits), arrow.map(f64::to_bits), "{:?}", text);
            let (ours, arrow) = (Float32Type::parse_number(&text), Float32Type::parse(&text));
            prop_assert_eq!(ours.map(f32::to_bits), arrow.map(f32::to_bits), "{:?}", text);
        }
    }

    #[test]
    fn plain_spellings_are_read_here() {
        assert_eq!(UInt64Type::parse_plain("18446744073709551615"), None, "20 digits go to Arrow");
        assert_eq!(UInt64Type::parse_plain("1234567890123456789"), Some(1_234_567_890_123_456_789));
        assert_eq!(Int8Type::parse_plain("-128"), Some(-128));
        assert_eq!(Int8Type::parse_plain("128"), None);
        assert_eq!(UInt8Type::parse_plain("-0"), None, "a sign goes to Arrow for unsigned types");
        assert_eq!(Float64Type::parse_plain("-0.0").map(f64::to_bits), Some((-0.0_f64).to_bits()));
        assert_eq!(Float64Type::parse_plain("0.1"), Some(0.1));
        assert_eq!(Float64Type::parse_plain("1234567890.12345"), Some(1_234_567_890.123_45));
        assert_eq!(Float64Type::parse_plain("1234567890.123456"), None, "16 digits go to Arrow");
        assert_eq!(Float32Type::parse_plain("2.71"), Some(2.71));
        assert_eq!(Float64Type::parse_plain("1e3"), None);
    }
}
