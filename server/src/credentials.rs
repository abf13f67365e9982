//! Who a request says it is, in the three ways ClickHouse clients say it: HTTP basic auth,
//! the `X-ClickHouse-User` / `X-ClickHouse-Key` headers, or the `user` / `password` URL
//! parameters (discouraged: URLs end up in proxies' and browsers' logs). One request uses one
//! of them, as ClickHouse requires.

use axum::http::{HeaderMap, HeaderName, header};
use base64::Engine;
use tandem_access::{Credentials, DEFAULT_USER, Password};

use crate::error::NodeError;
use crate::header_names::{X_CLICKHOUSE_KEY, X_CLICKHOUSE_USER};
use crate::url_params::UrlParams;

/// The credentials of a request, if it carries any. Takes `user` and `password` out of
/// `params`, so they are never read as settings.
pub fn take(headers: &HeaderMap, params: &mut UrlParams) -> Result<Option<Credentials>, NodeError> {
    let basic = headers.get(header::AUTHORIZATION).map(basic_auth).transpose()?;
    let header_user = header_text(headers, &X_CLICKHOUSE_USER)?;
    let header_key = header_text(headers, &X_CLICKHOUSE_KEY)?;
    let from_headers = (header_user.is_some() || header_key.is_some()).then(|| Credentials {
        user: header_user.unwrap_or_else(|| DEFAULT_USER.to_string()),
        password: Password::new(header_key.unwrap_or_default()),
    });
    let (param_user, param_password) = (params.remove("user"), params.remove("password"));
    let from_params = (param_user.is_some() || param_password.is_some()).then(|| Credentials {
        user: param_user.unwrap_or_else(|| DEFAULT_USER.to_string()),
        password: Password::new(param_password.unwrap_or_default()),
    });
    let mut given = [basic, from_headers, from_params].into_iter().flatten();
    let credentials = given.next();
    if given.next().is_some() {
        return Err(NodeError::bad_request(
            "the request carries credentials in more than one way (Authorization, X-ClickHouse-User/Key, \
             user/password parameters): send them one way only",
        ));
    }
    Ok(credentials)
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Result<Option<String>, NodeError> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map(str::to_string)
                .map_err(|_| NodeError::bad_request(format!("header {name} must be visible ASCII")))
        })
        .transpose()
}

fn basic_auth(value: &axum::http::HeaderValue) -> Result<Credentials, NodeError> {
    let malformed = || NodeError::bad_request("the Authorization header must be `Basic <base64 of user:password>`");
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, encoded) = text.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (user, password) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok(Credentials { user: user.to_string(), password: Password::new(password) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn each_way_clients_send_credentials() {
        let mut none = UrlParams::default();
        // "alice:pa:ss" in base64: a password may hold a colon.
        let basic = take(&headers(&[("authorization", "Basic YWxpY2U6cGE6c3M=")]), &mut none).unwrap().unwrap();
        assert_eq!((basic.user.as_str(), basic.password), ("alice", Password::new("pa:ss")));
        let key =
            take(&headers(&[("x-clickhouse-user", "bob"), ("x-clickhouse-key", "k")]), &mut none).unwrap().unwrap();
        assert_eq!((key.user.as_str(), key.password), ("bob", Password::new("k")));
        let mut params: UrlParams = [("user", "carol"), ("password", "p"), ("max_threads", "2")].into_iter().collect();
        let from_params = take(&HeaderMap::new(), &mut params).unwrap().unwrap();
        assert_eq!((from_params.user.as_str(), from_params.password), ("carol", Password::new("p")));
        assert!(!params.contains_key("user") && !params.contains_key("password"), "credentials are not settings");
        assert_eq!(params.get("max_threads"), Some("2"));
        assert!(take(&HeaderMap::new(), &mut UrlParams::default()).unwrap().is_none());
    }

    #[test]
    fn mixed_or_malformed_credentials_are_refused() {
        let mut params: UrlParams = [("user", "a")].into_iter().collect();
        assert!(take(&headers(&[("x-clickhouse-user", "b")]), &mut params).is_err());
        for bad in ["Bearer abc", "Basic !!!", "Basic YWxpY2U="] {
            assert!(take(&headers(&[("authorization", bad)]), &mut UrlParams::default()).is_err(), "{bad}");
        }
    }
}
