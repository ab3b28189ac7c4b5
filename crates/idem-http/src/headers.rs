//! The headers the layer reads and writes: the key header, which headers belong to one
//! connection rather than to a response, and `Retry-After`. The gateway and the coordination
//! service use the same functions, so that each rule exists once.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use idem_core::{IdempotencyKey, KeyError, KeyPolicy};

/// The header that carries the key (IETF draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The header that tells a client whether a response was replayed.
pub const X_IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("x-idempotent-replayed");

/// Headers that describe one connection or one hop, not the message (RFC 9110 §7.6.1, plus
/// the obsolete `Proxy-Connection`): a proxy never forwards them and a replay never stores
/// them. Any header the `Connection` header names is hop-by-hop too.
pub const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes every hop-by-hop header from `headers`: the fixed list and those the `Connection`
/// header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    for name in named_by_connection(headers) {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Response headers that belong to the caller who got them, not to the result: a replay to
/// another caller (or to the same caller later) must not carry them, so they are not stored
/// by default. `Set-Cookie` would hand one caller's session to whoever retries with the same
/// key; `Authentication-Info` and `Proxy-Authentication-Info` carry per-exchange credentials
/// (RFC 9110 §11.6.3, §11.7.3).
pub const NOT_REPLAYED_BY_DEFAULT: [HeaderName; 4] = [
    header::SET_COOKIE,
    HeaderName::from_static("set-cookie2"),
    HeaderName::from_static("authentication-info"),
    HeaderName::from_static("proxy-authentication-info"),
];

/// Headers that describe the stored body itself: kept in every mode, since a replayed body
/// cannot be read without them.
const REPRESENTATION: [HeaderName; 2] = [header::CONTENT_TYPE, header::CONTENT_ENCODING];

/// Which response headers are stored with a result and replayed. Hop-by-hop headers and
/// `Content-Length` (recomputed for the replayed body) are never stored; `Content-Type` and
/// `Content-Encoding` always are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayedHeaders {
    /// Every end-to-end header except these ([`NOT_REPLAYED_BY_DEFAULT`] by default).
    AllExcept(Vec<HeaderName>),
    /// Only these (and the body's `Content-Type` and `Content-Encoding`). `Set-Cookie` is
    /// replayed only if it is listed here.
    Only(Vec<HeaderName>),
}

impl Default for ReplayedHeaders {
    fn default() -> Self {
        Self::AllExcept(NOT_REPLAYED_BY_DEFAULT.to_vec())
    }
}

impl ReplayedHeaders {
    /// Whether a header of this name is stored.
    #[must_use]
    pub fn stores(&self, name: &HeaderName) -> bool {
        match self {
            Self::AllExcept(denied) => !denied.contains(name),
            Self::Only(allowed) => allowed.contains(name) || REPRESENTATION.contains(name),
        }
    }
}

/// The headers of a response that a replay returns, in order, repeated names kept: the
/// end-to-end ones `replayed` stores, less `Content-Length` (recomputed for the replayed
/// body).
#[must_use]
pub fn stored_headers(headers: &HeaderMap, replayed: &ReplayedHeaders) -> Vec<(String, Bytes)> {
    let mut kept = headers.clone();
    remove_hop_by_hop(&mut kept);
    kept.remove(header::CONTENT_LENGTH);
    let mut stored = Vec::with_capacity(kept.len());
    let mut last_name = None;
    // `HeaderMap::into_iter` names only the first of repeated values.
    for (name, value) in kept {
        if let Some(name) = name {
            last_name = Some(name);
        }
        if let Some(name) = last_name.as_ref().filter(|name| replayed.stores(name)) {
            stored.push((
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            ));
        }
    }
    stored
}

/// Why the key header could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyHeaderError {
    /// The header was sent more than once.
    #[error("send exactly one {0} header")]
    Repeated(HeaderName),
    /// Its value is not a key (or not one the policy accepts).
    #[error(transparent)]
    Invalid(#[from] KeyError),
}

/// The idempotency key a request carries in `name`, `None` without one.
///
/// # Errors
/// The header is repeated, or its value is not a key `policy` accepts.
pub fn idempotency_key(
    headers: &HeaderMap,
    name: &HeaderName,
    policy: KeyPolicy,
) -> Result<Option<IdempotencyKey>, KeyHeaderError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(KeyHeaderError::Repeated(name.clone())),
        (Some(value), None) => Ok(Some(IdempotencyKey::parse(value.as_bytes(), policy)?)),
    }
}

/// `Retry-After` for a wait of `wait`: whole seconds rounded up (a client told 0 would spin),
/// at least 1, at most `cap` (owners usually finish well before their lease lapses, so clients
/// are told to look again soon).
#[must_use]
pub fn retry_after(wait: Duration, cap: Duration) -> HeaderValue {
    let seconds = wait.min(cap).as_secs_f64().ceil().max(1.0);
    // Saturating: `cap` bounds it long before u64 does.
    HeaderValue::from(seconds as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_not_stored() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-trace-hop"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-trace-hop", HeaderValue::from_static("1"));
        headers.append("x-request-cost", HeaderValue::from_static("1"));
        headers.append("x-request-cost", HeaderValue::from_static("2"));
        let stored = stored_headers(&headers, &ReplayedHeaders::default());
        let names: Vec<&str> = stored.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["content-type", "x-request-cost", "x-request-cost"]);
        let values: Vec<&[u8]> = stored.iter().map(|(_, value)| value.as_ref()).collect();
        assert_eq!(values, [b"application/json".as_ref(), b"1", b"2"]);
    }

    #[test]
    fn cookies_and_per_exchange_credentials_are_stored_only_when_listed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("session=a"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("theme=b"));
        headers.insert(
            "authentication-info",
            HeaderValue::from_static("nextnonce=x"),
        );
        headers.insert(header::LOCATION, HeaderValue::from_static("/charges/1"));
        let names = |replayed: &ReplayedHeaders| -> Vec<String> {
            stored_headers(&headers, replayed)
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        };
        assert_eq!(
            names(&ReplayedHeaders::default()),
            ["content-type", "content-encoding", "location"]
        );
        assert_eq!(
            names(&ReplayedHeaders::Only(vec![header::SET_COOKIE])),
            [
                "content-type",
                "content-encoding",
                "set-cookie",
                "set-cookie"
            ]
        );
        assert_eq!(
            names(&ReplayedHeaders::AllExcept(vec![header::LOCATION])),
            [
                "content-type",
                "content-encoding",
                "set-cookie",
                "set-cookie",
                "authentication-info"
            ]
        );
    }

    #[test]
    fn a_proxy_removes_the_same_headers_but_keeps_content_length() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        remove_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length"]);
    }

    #[test]
    fn the_key_header_is_read_once_or_refused_with_a_reason() {
        let mut headers = HeaderMap::new();
        assert!(matches!(
            idempotency_key(&headers, &IDEMPOTENCY_KEY, KeyPolicy::Any),
            Ok(None)
        ));
        headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("\"k-1\""));
        let key = idempotency_key(&headers, &IDEMPOTENCY_KEY, KeyPolicy::Any).unwrap();
        assert_eq!(key.unwrap().as_str(), "k-1");
        assert!(matches!(
            idempotency_key(&headers, &IDEMPOTENCY_KEY, KeyPolicy::UuidV4),
            Err(KeyHeaderError::Invalid(_))
        ));
        headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("k-2"));
        let repeated = idempotency_key(&headers, &IDEMPOTENCY_KEY, KeyPolicy::Any).unwrap_err();
        assert_eq!(
            repeated.to_string(),
            "send exactly one idempotency-key header"
        );
    }

    #[test]
    fn retry_after_rounds_up_and_is_capped() {
        let cap = Duration::from_secs(5);
        assert_eq!(retry_after(Duration::ZERO, cap), "1");
        assert_eq!(retry_after(Duration::from_millis(1200), cap), "2");
        assert_eq!(retry_after(Duration::from_secs(60), cap), "5");
    }
}
