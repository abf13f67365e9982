//! Query parameters as ClickHouse has them: `{name:Type}` in a query, its value in the
//! `param_name` URL parameter (in TabSeparated escaping, as clients send it). Each value is
//! checked against its type and put in the query as a literal of that type: a value can never
//! become SQL of its own.

// Input reaches every line here: no panicking shortcut may be taken on it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use crate::error::NodeError;
use crate::formats::clickhouse_type::ClickHouseType;
use crate::url_params::UrlParams;

/// Most parameters one query may use.
const MAX_SUBSTITUTIONS: usize = 10_000;

/// `sql` with every `{name:Type}` outside strings, quoted names and comments replaced by its
/// `param_name` value as a literal of `Type`. Braces that are not such a placeholder are left
/// alone.
pub fn substitute(sql: &str, params: &UrlParams) -> Result<String, NodeError> {
    if !sql.contains('{') {
        return Ok(sql.to_string());
    }
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    let mut count = 0usize;
    while let Some(c) = rest.chars().next() {
        let skipped = match c {
            '\'' | '"' | '`' => quoted_len(rest, c),
            '-' if rest.starts_with("--") => rest.find('\n').map_or(rest.len(), |n| n + 1),
            '/' if rest.starts_with("/*") => rest.find("*/").map_or(rest.len(), |n| n + 2),
            '{' => match placeholder(rest) {
                Some((len, name, type_name)) => {
                    count += 1;
                    if count > MAX_SUBSTITUTIONS {
                        return Err(NodeError::bad_request(format!(
                            "the query uses more than {MAX_SUBSTITUTIONS} parameters"
                        )));
                    }
                    let value = params.get(&format!("param_{name}")).ok_or_else(|| {
                        NodeError::bad_request(format!(
                            "query parameter `{name}` has no value: send it as the URL parameter param_{name}"
                        ))
                    })?;
                    out.push_str(&literal(name, type_name, value)?);
                    rest = rest.get(len..).unwrap_or_default();
                    continue;
                }
                None => 1,
            },
            other => other.len_utf8(),
        };
        let (head, tail) = rest.split_at(skipped.min(rest.len()));
        out.push_str(head);
        rest = tail;
    }
    Ok(out)
}

/// The length of a quoted string or name starting at `text`, its closing quote included
/// (doubled quotes and backslash escapes stay inside).
fn quoted_len(text: &str, quote: char) -> usize {
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next();
        } else if c == quote {
            return i + 1;
        }
    }
    text.len()
}

/// `{name:Type}` at the start of `text`: its length, the name and the type.
fn placeholder(text: &str) -> Option<(usize, &str, &str)> {
    let end = text.find('}')?;
    let inner = text.get(1..end)?;
    let (name, type_name) = inner.split_once(':')?;
    let (name, type_name) = (name.trim(), type_name.trim());
    let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (valid_name && !type_name.is_empty()).then_some((end + 1, name, type_name))
}

fn quote_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The SQL literal of `value` as `type_name`, or an error naming the parameter.
fn literal(name: &str, type_name: &str, value: &str) -> Result<String, NodeError> {
    if type_name == "Identifier" {
        return Ok(format!("\"{}\"", value.replace('"', "\"\"")));
    }
    let ty = ClickHouseType::parse(type_name)
        .map_err(|e| NodeError::bad_request(format!("query parameter `{name}`: {}", e.to_string().trim_end())))?;
    let invalid = |why: &str| {
        NodeError::bad_request(format!(
            "query parameter `{name}` is {ty} but its value {:?} {why}",
            crate::formats::truncate(value, 60)
        ))
    };
    // Values come in TabSeparated escaping, `\N` for NULL.
    let unescaped = crate::formats::unescape_tsv(value).map_err(|e| invalid(&e))?;
    let Some(text) = unescaped else {
        return if ty.is_nullable() { Ok("NULL".to_string()) } else { Err(invalid("is NULL; declare it Nullable")) };
    };
    let base = match &ty {
        ClickHouseType::Nullable(inner) => inner.as_ref(),
        other => other,
    };
    let raw: &str = &text;
    let text = raw.trim();
    Ok(match base {
        ClickHouseType::Int8 | ClickHouseType::Int16 | ClickHouseType::Int32 | ClickHouseType::Int64 => {
            let number: i64 = text.parse().map_err(|_| invalid("is not an integer"))?;
            let fits = match base {
                ClickHouseType::Int8 => i8::try_from(number).is_ok(),
                ClickHouseType::Int16 => i16::try_from(number).is_ok(),
                ClickHouseType::Int32 => i32::try_from(number).is_ok(),
                _ => true,
            };
            if !fits {
                return Err(invalid("is out of range"));
            }
            number.to_string()
        }
        ClickHouseType::UInt8 | ClickHouseType::UInt16 | ClickHouseType::UInt32 | ClickHouseType::UInt64 => {
            let number: u64 = text.parse().map_err(|_| invalid("is not an unsigned integer"))?;
            let fits = match base {
                ClickHouseType::UInt8 => u8::try_from(number).is_ok(),
                ClickHouseType::UInt16 => u16::try_from(number).is_ok(),
                ClickHouseType::UInt32 => u32::try_from(number).is_ok(),
                _ => true,
            };
            if !fits {
                return Err(invalid("is out of range"));
            }
            number.to_string()
        }
        ClickHouseType::Float32 | ClickHouseType::Float64 => {
            let number: f64 = text.parse().map_err(|_| invalid("is not a number"))?;
            if number.is_finite() {
                format!("CAST({number:?} AS DOUBLE)")
            } else {
                format!("CAST('{number}' AS DOUBLE)")
            }
        }
        ClickHouseType::Bool => match text.to_ascii_lowercase().as_str() {
            "1" | "true" => "TRUE".to_string(),
            "0" | "false" => "FALSE".to_string(),
            _ => return Err(invalid("is not true, false, 1 or 0")),
        },
        ClickHouseType::String | ClickHouseType::FixedString(_) => quote_string(raw),
        ClickHouseType::Date | ClickHouseType::Date32 => {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| invalid("is not a date (YYYY-MM-DD)"))?;
            format!("CAST({} AS DATE)", quote_string(text))
        }
        ClickHouseType::DateTime(_) | ClickHouseType::DateTime64(..) => {
            let unit = match base {
                ClickHouseType::DateTime64(p, _) => ClickHouseType::unit_of_precision(*p),
                _ => datafusion::arrow::datatypes::TimeUnit::Second,
            };
            let function = match unit {
                datafusion::arrow::datatypes::TimeUnit::Second => "to_timestamp_seconds",
                datafusion::arrow::datatypes::TimeUnit::Millisecond => "to_timestamp_millis",
                datafusion::arrow::datatypes::TimeUnit::Microsecond => "to_timestamp_micros",
                datafusion::arrow::datatypes::TimeUnit::Nanosecond => "to_timestamp_nanos",
            };
            // A Unix time, or a date and time in UTC.
            if let Ok(seconds) = text.parse::<i64>() {
                format!("to_timestamp_seconds({seconds})")
            } else {
                let parsed = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"]
                    .iter()
                    .any(|f| chrono::NaiveDateTime::parse_from_str(text, f).is_ok())
                    || chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok();
                if !parsed {
                    return Err(invalid("is not a date and time (YYYY-MM-DD hh:mm:ss[.fff])"));
                }
                format!("{function}({})", quote_string(text))
            }
        }
        ClickHouseType::Array(_) | ClickHouseType::Nullable(_) => {
            return Err(invalid("cannot be passed: Array parameters are not supported"));
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> UrlParams {
        pairs.iter().map(|(k, v)| (format!("param_{k}"), v.to_string())).collect()
    }

    #[test]
    fn placeholders_become_typed_literals() {
        let p = params(&[("host", "o'brien\\tx"), ("n", "42"), ("day", "2024-01-02"), ("t", "2024-01-02 03:04:05")]);
        let sql = "SELECT * FROM e WHERE host = {host:String} AND n > {n:UInt32} AND d = {day: Date} AND ts < {t:DateTime} AND s = '{host:String}'";
        assert_eq!(
            substitute(sql, &p).unwrap(),
            "SELECT * FROM e WHERE host = 'o''brien\tx' AND n > 42 AND d = CAST('2024-01-02' AS DATE) AND ts < \
             to_timestamp_seconds('2024-01-02 03:04:05') AND s = '{host:String}'"
        );
        assert_eq!(substitute("SELECT {x:Nullable(Int8)}", &params(&[("x", "\\N")])).unwrap(), "SELECT NULL");
        assert_eq!(
            substitute("SELECT * FROM {t:Identifier}", &params(&[("t", "a\"b")])).unwrap(),
            "SELECT * FROM \"a\"\"b\""
        );
        assert_eq!(substitute("SELECT map {1}", &UrlParams::default()).unwrap(), "SELECT map {1}");
    }

    #[test]
    fn values_that_do_not_fit_their_type_are_refused() {
        for (ty, value) in [("UInt8", "256"), ("Int64", "1; DROP TABLE e"), ("Date", "yesterday"), ("String", "\\N")] {
            let error = substitute(&format!("SELECT {{v:{ty}}}"), &params(&[("v", value)])).unwrap_err();
            assert!(
                matches!(error, NodeError::BadRequest(_)) && error.to_string().contains("query parameter `v`"),
                "{error}"
            );
        }
        assert!(
            substitute("SELECT {missing:String}", &UrlParams::default())
                .unwrap_err()
                .to_string()
                .contains("param_missing")
        );
    }
}
