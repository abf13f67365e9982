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
        let (_, value) = self.pairs.iter().rev().find(|(n, _)| self.text.get(n.clone()) == Some(name))?;
        self.text.get(value.clone())
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Takes every parameter named `name` out; the value of the last.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let value = self.get(name).map(str::to_string);
        let UrlParams { text, pairs } = self;
        pairs.retain(|(n, _)| text.get(n.clone()) != Some(name));
        value
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

/// The parameters of `uri`'s query string, percent-decoded.
pub fn url_parameters(uri: &Uri) -> UrlParams {
    let query = uri.query().unwrap_or_default();
    let mut params = UrlParams {
        // Decoding never lengthens the text.
        text: String::with_capacity(query.len()),
        pairs: Vec::with_capacity(query.bytes().filter(|&b| b == b'&').count() + 1),
    };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        params.push(&name, &value);
    }
    params
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
