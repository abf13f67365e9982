//! A request's URL parameters: settings, the statement, credentials and query parameters, by
//! name (the last of a repeated name wins, as in ClickHouse).

use std::ops::Range;

use axum::http::Uri;

/// The parameters as given, decoded into one string. A small insert carries three or four and
/// looks up some twenty settings: a scan of a few names costs less than hashing each lookup,
/// and the whole set is two allocations rather than a map, its table and a string per name and
/// value (which were about 3% of such an insert's CPU). A lookup scans every parameter, so its
/// cost follows the URL's length, which the HTTP server bounds (hyper's ~400 KB read buffer).
#[derive(Clone, Debug, Default)]
pub struct UrlParams {
    /// Every name and value, percent-decoded, one after another.
    text: String,
    /// Each parameter's name and value in `text`, in the URL's order.
    pairs: Vec<(Range<usize>, Range<usize>)>,
}

impl UrlParams {
    /// The value of the last parameter named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let (_, value) = self.pairs.iter().rev().find(|(n, _)| self.name_is(n, name))?;
        self.text.get(value.clone())
    }

    /// Compared as bytes: names are ranges this type made, on char boundaries by construction,
    /// and most differ from `name` in length, which is compared first.
    fn name_is(&self, range: &Range<usize>, name: &str) -> bool {
        range.len() == name.len() && self.text.as_bytes().get(range.clone()) == Some(name.as_bytes())
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Takes every parameter named `name` out; the value of the last.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        // Most requests carry no `user` or `password`: nothing to take out then.
        let value = self.get(name)?.to_string();
        let mut pairs = std::mem::take(&mut self.pairs);
        pairs.retain(|(n, _)| !self.name_is(n, name));
        self.pairs = pairs;
        Some(value)
    }

    fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        let middle = self.text.len();
        self.text.push_str(value);
        self.pairs.push((start..middle, middle..self.text.len()));
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for UrlParams {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        let mut params = UrlParams::default();
        for (name, value) in pairs {
            params.push(name.as_ref(), value.as_ref());
        }
        params
    }
}

/// The parameters of `uri`'s query string, decoded as `application/x-www-form-urlencoded`:
/// `+` is a space, `%XY` a byte, and a name or value that is not UTF-8 has its bad bytes
/// replaced (U+FFFD). The tests check it against `form_urlencoded::parse`, which did the same
/// with two copies and a check per name and value, and an iterator step per byte: a tenth of a
/// small insert's instructions, for a query of a hundred bytes. This is one pass, into one
/// buffer, copying the runs between special bytes whole.
pub fn url_parameters(uri: &Uri) -> UrlParams {
    let query = uri.query().unwrap_or_default().as_bytes();
    // Decoding never lengthens the text.
    let mut text = Vec::with_capacity(query.len());
    let mut pairs = Vec::with_capacity(memchr::memchr_iter(b'&', query).count() + 1);
    // Where the current pair's name starts in `text`, and its value (once its `=` is read).
    let (mut start, mut middle) = (0, None);
    let mut rest = query;
    loop {
        let run = rest.iter().position(|&b| matches!(b, b'&' | b'=' | b'+' | b'%')).unwrap_or(rest.len());
        let (plain, special) = rest.split_at(run);
        text.extend_from_slice(plain);
        rest = match special {
            [] | [b'&', ..] => {
                // A pair with no bytes at all (`&&`, or a trailing `&`) is no parameter.
                if text.len() > start || middle.is_some() {
                    let middle = middle.unwrap_or(text.len());
                    pairs.push((start..middle, middle..text.len()));
                }
                let [_, after @ ..] = special else { break };
                (start, middle) = (text.len(), None);
                after
            }
            [b'=', after @ ..] => {
                match middle {
                    None => middle = Some(text.len()),
                    // A second `=` is part of the value.
                    Some(_) => text.push(b'='),
                }
                after
            }
            [b'+', after @ ..] => {
                text.push(b' ');
                after
            }
            [b'%', high, low, after @ ..] if hex(*high).is_some() && hex(*low).is_some() => {
                text.push(hex(*high).unwrap_or_default() << 4 | hex(*low).unwrap_or_default());
                after
            }
            // Not an escape: the `%` stands for itself.
            [percent, after @ ..] => {
                text.push(*percent);
                after
            }
        };
    }
    let every_part_is_text = text.is_ascii()
        || pairs.iter().all(|(name, value)| {
            [name, value]
                .into_iter()
                .all(|range| text.get(range.clone()).is_some_and(|b| std::str::from_utf8(b).is_ok()))
        });
    match String::from_utf8(text) {
        Ok(text) if every_part_is_text => UrlParams { text, pairs },
        // Some name or value is not UTF-8 (alone: its neighbours may complete its bytes).
        Ok(text) => lossy(text.as_bytes(), &pairs),
        Err(e) => lossy(e.as_bytes(), &pairs),
    }
}

/// The parameters with each name and value of `text` made UTF-8 on its own.
fn lossy(text: &[u8], pairs: &[(Range<usize>, Range<usize>)]) -> UrlParams {
    let part = |range: &Range<usize>| String::from_utf8_lossy(text.get(range.clone()).unwrap_or_default());
    pairs.iter().map(|(name, value)| (part(name), part(value))).collect()
}

/// The value of an ASCII hex digit.
fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Every query string, valid or not, decodes to the pairs `form_urlencoded` gives.
        #[test]
        fn decoded_as_form_urlencoded_decodes(query in "([a-z=&+%]|%[0-9A-Fa-f]{2}|%[0-9a-z]|é|%C3|%A9|%FF){0,24}") {
            let uri: Uri = format!("/?{}", query.replace('é', "%C3%A9")).parse().unwrap();
            let query = uri.query().unwrap_or_default();
            let params = url_parameters(&uri);
            let ours: Vec<(&str, &str)> = params
                .pairs
                .iter()
                .map(|(n, v)| (params.text.get(n.clone()).unwrap(), params.text.get(v.clone()).unwrap()))
                .collect();
            let theirs: Vec<(String, String)> =
                form_urlencoded::parse(query.as_bytes()).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
            let theirs: Vec<(&str, &str)> = theirs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn the_last_of_a_name_wins_and_removal_takes_every_one() {
        let uri: Uri = "/?query=SELECT%201&user=a&x=%C3%A9+b&user=b&empty=&flag".parse().unwrap();
        let mut params = url_parameters(&uri);
        assert_eq!(params.get("query"), Some("SELECT 1"));
        assert_eq!(params.get("x"), Some("é b"));
        assert_eq!(params.get("empty"), Some(""));
        assert_eq!(params.get("flag"), Some(""));
        assert_eq!(params.get("missing"), None);
        assert_eq!(params.remove("user").as_deref(), Some("b"));
        assert!(!params.contains_key("user"), "every `user` is taken out");
        assert_eq!(params.get("x"), Some("é b"), "the others stay");
        assert!(url_parameters(&"/".parse().unwrap()).get("").is_none());
    }
}
