//! Whose key is it: deriving the [`Scope`] of a request, so that two callers sending the same
//! key never see each other's records.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, header};
use idem_core::Scope;

/// How the layer finds the principal of a request.
#[derive(Clone)]
pub enum ScopeSource {
    /// A SHA-256 of the `Authorization` header (the default). Requests without one share the
    /// anonymous scope.
    Authorization,
    /// A SHA-256 of another header that identifies the caller (an API key header, a tenant
    /// id set by an authenticating proxy). Requests without it share the anonymous scope.
    Header(HeaderName),
    /// Every request shares one scope: only for services whose callers are all trusted.
    Global,
    /// Any function of the request head (a user id an earlier layer put in the extensions).
    Custom(Arc<dyn Fn(&Parts) -> Scope + Send + Sync>),
}

impl ScopeSource {
    /// The scope of a request with this head.
    #[must_use]
    pub fn scope(&self, parts: &Parts) -> Scope {
        let from_header = |name: &HeaderName| {
            parts
                .headers
                .get(name)
                .map_or_else(Scope::anonymous, |value| {
                    Scope::from_secret(value.as_bytes())
                })
        };
        match self {
            Self::Authorization => from_header(&header::AUTHORIZATION),
            Self::Header(name) => from_header(name),
            Self::Global => Scope::anonymous(),
            Self::Custom(derive) => derive(parts),
        }
    }
}

impl fmt::Debug for ScopeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Authorization => f.write_str("Authorization"),
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Global => f.write_str("Global"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}
