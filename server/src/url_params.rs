//! A request's URL parameters: settings, the statement, credentials and query parameters, by
//! name (the last of a repeated name wins, as in ClickHouse).

use std::collections::HashMap;

use axum::http::Uri;

/// The parameters by name. Hashed with aHash (keyed per process, as the standard library's
/// SipHash is): a small insert looks up some twenty settings, and SipHash was a percent of its
/// CPU.
pub type UrlParams = HashMap<String, String, ahash::RandomState>;

/// The parameters of `uri`'s query string, percent-decoded.
pub fn url_parameters(uri: &Uri) -> UrlParams {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}
