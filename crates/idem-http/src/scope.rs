//! Whose key is it: deriving the [`Scope`] of a request from what identifies its caller, so
//! that two callers sending the same key never see each other's records.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, header};
use idem_core::Scope;

/// A function from a request head to its principal (`None`: it carries none).
pub type PrincipalFn = Arc<dyn Fn(&Parts) -> Option<Scope> + Send + Sync>;

/// How the layer finds the principal of a request: the caller its records belong to.
#[derive(Clone)]
pub enum ScopeSource {
    /// A SHA-256 of the `Authorization` header (the default).
    Authorization,
    /// A SHA-256 of another header that identifies the caller (an API key header, a tenant
    /// id set by an authenticating proxy).
    Header(HeaderName),
    /// A SHA-256 of one cookie's value (a session cookie), for browser-facing APIs without an
    /// `Authorization` header. Only the named cookie counts: a retry carrying other cookies,
    /// or the same cookies in another order, is the same caller.
    Cookie(String),
    /// Every request shares one scope: only for services whose callers are all trusted.
    Global,
    /// Any function of the request head (a user id an earlier layer put in the extensions);
    /// `None` when the request has no principal.
    Custom(PrincipalFn),
}

impl ScopeSource {
    /// The principal of a request with this head, `None` when it carries none (no such
    /// header or cookie, or an empty one). Always `Some` for [`Global`](Self::Global).
    #[must_use]
    pub fn principal(&self, parts: &Parts) -> Option<Scope> {
        let from_header = |name: &HeaderName| {
            parts
                .headers
                .get(name)
                .map(|value| value.as_bytes().trim_ascii())
                .filter(|value| !value.is_empty())
                .map(Scope::from_secret)
        };
        match self {
            Self::Authorization => from_header(&header::AUTHORIZATION),
            Self::Header(name) => from_header(name),
            Self::Cookie(name) => cookie(parts, name)
                .filter(|value| !value.is_empty())
                .map(Scope::from_secret),
            Self::Global => Some(Scope::anonymous()),
            Self::Custom(derive) => derive(parts),
        }
    }

    /// Why the principal of a request is ambiguous, if it is: the header or cookie it is read
    /// from sent more than once. Servers disagree on which one counts (the first, the last),
    /// so idem must not pick one: a cookie tossed from a sibling domain would otherwise put a
    /// victim's records in the attacker's scope.
    #[must_use]
    pub fn ambiguity(&self, parts: &Parts) -> Option<String> {
        let repeated = match self {
            Self::Authorization => parts.headers.get_all(header::AUTHORIZATION).iter().count() > 1,
            Self::Header(name) => parts.headers.get_all(name).iter().count() > 1,
            Self::Cookie(name) => cookies(parts, name).count() > 1,
            Self::Global | Self::Custom(_) => false,
        };
        repeated.then(|| format!("the {} was sent more than once", self.describe()))
    }

    /// The scope of a request with this head: its principal's, or the anonymous scope that
    /// every request without one shares.
    #[must_use]
    pub fn scope(&self, parts: &Parts) -> Scope {
        self.principal(parts).unwrap_or_else(Scope::anonymous)
    }

    /// What the principal is read from, for error messages: "Authorization header".
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Authorization => "Authorization header".to_owned(),
            Self::Header(name) => format!("{name} header"),
            Self::Cookie(name) => format!("{name} cookie"),
            Self::Global | Self::Custom(_) => "principal".to_owned(),
        }
    }
}

/// The value of the cookie `name`, from every `Cookie` field (HTTP/2 splits them). The first
/// occurrence wins, as browsers send the most specific cookie first (RFC 6265 §5.4).
fn cookie<'a>(parts: &'a Parts, name: &'a str) -> Option<&'a [u8]> {
    cookies(parts, name).next()
}

/// Every value of the cookie `name`, in order.
fn cookies<'a>(parts: &'a Parts, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|field| field.as_bytes().split(|&byte| byte == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let equals = pair.iter().position(|&byte| byte == b'=')?;
            let (found, value) = (&pair[..equals], &pair[equals + 1..]);
            (found.trim_ascii() == name.as_bytes()).then(|| value.trim_ascii())
        })
}

impl fmt::Debug for ScopeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Authorization => f.write_str("Authorization"),
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Cookie(name) => f.debug_tuple("Cookie").field(name).finish(),
            Self::Global => f.write_str("Global"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(cookies: &[&str]) -> Parts {
        let mut request = http::Request::builder();
        for value in cookies {
            request = request.header(header::COOKIE, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_named_cookie_alone_is_the_principal() {
        let source = ScopeSource::Cookie("session".into());
        let alone = source.principal(&head(&["session=abc"])).unwrap();
        let among_others = source
            .principal(&head(&["theme=dark; session=abc; lang=en"]))
            .unwrap();
        let split = source
            .principal(&head(&["theme=dark", " session = abc "]))
            .unwrap();
        assert_eq!(alone, among_others);
        assert_eq!(alone, split);
        assert_ne!(alone, source.principal(&head(&["session=abd"])).unwrap());
        for without in [
            &[][..],
            &["theme=dark"],
            &["sessionx=abc"],
            &["session"],
            &["session="],
        ] {
            assert_eq!(source.principal(&head(without)), None, "{without:?}");
        }
        assert_eq!(source.ambiguity(&head(&["session=abc"])), None);
        assert_eq!(
            source
                .ambiguity(&head(&["session=evil; session=abc"]))
                .as_deref(),
            Some("the session cookie was sent more than once")
        );
        assert_eq!(source.scope(&head(&[])), Scope::anonymous());
    }
}
