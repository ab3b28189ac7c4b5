//! `--upstream`: the API `idem proxy` forwards to, parsed once at start.

use std::fmt;

use anyhow::Context;
use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// A path prefix from the upstream URL (`http://api/v2` → `/v2`), without trailing `/`.
    prefix: String,
}

impl Upstream {
    /// Reads `--upstream`: an `http://` or `https://` URL, maybe with a path prefix.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--upstream {url:?} is not a URL"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .with_context(|| format!("--upstream {url:?}: missing http://"))?;
        anyhow::ensure!(
            scheme == Scheme::HTTP || scheme == Scheme::HTTPS,
            "--upstream {url:?}: use an http:// or https:// URL"
        );
        let authority = uri
            .authority()
            .cloned()
            .with_context(|| format!("--upstream {url:?}: missing host"))?;
        Ok(Self {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Whether requests go over TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The `Host` the upstream expects.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Where a request for `original` goes.
    pub fn target(&self, original: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = original.path_and_query().map_or("/", PathAndQuery::as_str);
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.prefix))
            .build()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_path_query_and_prefix() {
        let upstream = Upstream::parse("http://127.0.0.1:3000/v2/").unwrap();
        let target = upstream.target(&"/charges?x=1".parse().unwrap()).unwrap();
        assert_eq!(target.to_string(), "http://127.0.0.1:3000/v2/charges?x=1");
        let https = Upstream::parse("https://api.example/v1").unwrap();
        assert!(https.is_tls());
        let target = https.target(&"/x".parse().unwrap()).unwrap();
        assert_eq!(target.to_string(), "https://api.example/v1/x");
        let ftp = Upstream::parse("ftp://files").unwrap_err().to_string();
        assert!(ftp.contains("http:// or https://"), "{ftp}");
        let bare = Upstream::parse("127.0.0.1:3000").unwrap_err().to_string();
        assert!(bare.contains("missing"), "{bare}");
    }
}
