//! Per-route rules for `idem proxy`: which requests require a key, which skip idempotency,
//! which have their own TTL, and which may be re-run after their instance crashed. The first rule that matches a request applies.
//!
//! Rules and requests are matched in the normal form of their paths
//! ([`idem_http::path::normalize`]), so that no spelling of a path (`/%70ayments`,
//! `/x/../payments`, `//payments`) escapes a rule written for `/payments`. Matching is also
//! as loose as the servers behind a gateway are, since an upstream that reads two spellings
//! as one resource must see one rule for both: literal segments and methods compare without
//! regard to ASCII case (ASP.NET's routing, Django's `post`), a segment's `;` parameters are
//! ignored (`/payments;jsessionid=1/x` is `/payments/x` to Tomcat and Spring), and so is a
//! trailing slash (Express, older Spring). A looser match only ever applies a rule to more
//! spellings of its own path.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::Method;
use http::request::Parts;
use idem_core::OnLapse;
use idem_http::path::normalize;
use serde::{Deserialize, Serialize};

use crate::settings::parse_duration;

/// One `[[proxy.routes]]` entry, as written in the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// `POST`, `PUT`… or `*` (the default) for any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    /// A path pattern: literal segments, `*` for exactly one segment, and a final `**` for
    /// any rest (including nothing).
    path: String,
    /// Whether a mutation on this route must carry a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    require_key: Option<bool>,
    /// Forward untouched, without idempotency.
    #[serde(default)]
    skip: bool,
    /// Replay TTL for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    /// What a retry does when the instance executing the first request died mid-way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_lapse: Option<LapsePolicy>,
}

/// `on_lapse` as written in a route rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LapsePolicy {
    /// StatusBody 409 `outcome_unknown` and execute nothing (the default).
    ReportUnknown,
    /// Execute again: only for routes that are safe to re-run.
    TakeOver,
}

impl From<LapsePolicy> for OnLapse {
    fn from(policy: LapsePolicy) -> Self {
        match policy {
            LapsePolicy::ReportUnknown => Self::ReportUnknown,
            LapsePolicy::TakeOver => Self::TakeOver,
        }
    }
}

/// A rule, checked and ready to match.
#[derive(Debug, Clone)]
pub struct Route {
    /// The rule as written, `METHOD /path` (`*` for any method): the request's route in the
    /// access log.
    pattern: Arc<str>,
    method: Option<Method>,
    segments: Vec<Segment>,
    require_key: Option<bool>,
    skip: bool,
    ttl: Option<Duration>,
    on_lapse: Option<OnLapse>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Rest,
}

impl RouteRule {
    /// Checks the rule: a bad method, pattern or duration is an error at start-up, not a
    /// rule that silently never matches.
    pub fn compile(&self) -> anyhow::Result<Route> {
        let method = match self.method.as_deref() {
            None | Some("*") => None,
            Some(name) => Some(
                Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                    .with_context(|| format!("route {}: invalid method {name:?}", self.path))?,
            ),
        };
        anyhow::ensure!(
            self.path.starts_with('/'),
            "route {:?}: the path must start with '/'",
            self.path
        );
        let path = normalize(&self.path)
            .map_err(|error| anyhow::anyhow!("route {:?}: {error}", self.path))?;
        // A trailing slash is ignored as in requests (`/a/` is `/a`), or the rule would
        // never match: the root alone stays one empty segment.
        let path = path.trim_start_matches('/');
        let parts: Vec<&str> = path.strip_suffix('/').unwrap_or(path).split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "**" if index + 1 == parts.len() => Segment::Rest,
                "**" => anyhow::bail!("route {:?}: `**` may only end a pattern", self.path),
                "*" => Segment::Any,
                literal if literal.contains(';') => {
                    anyhow::bail!(
                        "route {:?}: a segment cannot hold ';' (its parameters are ignored when matching)",
                        self.path
                    )
                }
                literal => Segment::Literal(literal.to_owned()),
            });
        }
        let ttl = self
            .ttl
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|error| anyhow::anyhow!("route {:?}: ttl: {error}", self.path))?;
        anyhow::ensure!(
            ttl.is_none_or(|ttl| !ttl.is_zero()),
            "route {:?}: ttl must be longer than 0s",
            self.path
        );
        let pattern = format!(
            "{} {}",
            method.as_ref().map_or("*", Method::as_str),
            self.path
        );
        Ok(Route {
            pattern: pattern.into(),
            method,
            segments,
            require_key: self.require_key,
            skip: self.skip,
            ttl,
            on_lapse: self.on_lapse.map(OnLapse::from),
        })
    }
}

impl Route {
    /// Whether the rule applies to a request for `path` (in its normal form) with `method`.
    fn matches(&self, method: &Method, path: &str) -> bool {
        if self
            .method
            .as_ref()
            .is_some_and(|own| !own.as_str().eq_ignore_ascii_case(method.as_str()))
        {
            return false;
        }
        let path = path.trim_start_matches('/');
        // A trailing slash names the same resource as the path without it (`/a/` is `/a`;
        // `/` alone stays one empty segment, which only `**` matches).
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut path = path
            .split('/')
            .map(|segment| segment.split_once(';').map_or(segment, |(name, _)| name));
        for segment in &self.segments {
            match (segment, path.next()) {
                (Segment::Rest, _) => return true,
                (Segment::Any, Some(_)) => {}
                (Segment::Literal(literal), Some(actual))
                    if literal.eq_ignore_ascii_case(actual) => {}
                _ => return false,
            }
        }
        path.next().is_none()
    }
}

/// The compiled rules of one proxy, first match wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Compiles every rule.
    pub fn new(rules: &[RouteRule]) -> anyhow::Result<Self> {
        Ok(Self {
            routes: rules
                .iter()
                .map(RouteRule::compile)
                .collect::<anyhow::Result<_>>()?,
        })
    }

    fn matching(&self, parts: &Parts) -> Option<&Route> {
        // Asked up to four times a request (skip, key, TTL, on-lapse): with no rules, the
        // path is not even looked at.
        if self.routes.is_empty() {
            return None;
        }
        // A path with no normal form (an encoded `/`) is matched as sent: it is the HTTP
        // layer's to refuse, and its fingerprint takes it as sent too.
        let path = normalize(parts.uri.path()).unwrap_or(Cow::Borrowed(parts.uri.path()));
        self.routes
            .iter()
            .find(|route| route.matches(&parts.method, &path))
    }

    /// The rule the request matches, as written (`POST /payments/**`), for the access log.
    pub fn pattern(&self, parts: &Parts) -> Option<Arc<str>> {
        self.matching(parts).map(|route| Arc::clone(&route.pattern))
    }

    /// Whether the request must carry a key; `default` when no rule says.
    pub fn requires_key(&self, parts: &Parts, default: bool) -> bool {
        self.matching(parts)
            .and_then(|route| route.require_key)
            .unwrap_or(default)
    }

    /// Whether the request bypasses idempotency.
    pub fn skips(&self, parts: &Parts) -> bool {
        self.matching(parts).is_some_and(|route| route.skip)
    }

    /// The request's own TTL, if its rule sets one.
    pub fn ttl(&self, parts: &Parts) -> Option<Duration> {
        self.matching(parts).and_then(|route| route.ttl)
    }

    /// What the request does after a crashed execution, if its rule says.
    pub fn on_lapse(&self, parts: &Parts) -> Option<OnLapse> {
        self.matching(parts).and_then(|route| route.on_lapse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, path: &str) -> Parts {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn table(toml_rules: &str) -> RouteTable {
        #[derive(Deserialize)]
        struct Rules {
            routes: Vec<RouteRule>,
        }
        let rules: Rules = toml::from_str(toml_rules).unwrap();
        RouteTable::new(&rules.routes).unwrap()
    }

    #[test]
    fn patterns_match_segments_and_rests() {
        let table = table(
            r#"
            [[routes]]
            method = "POST"
            path = "/payments/*/capture"
            require_key = true
            ttl = "1h"
            on_lapse = "take_over"
            [[routes]]
            path = "/webhooks/**"
            skip = true
            "#,
        );
        assert!(table.requires_key(&parts("POST", "/payments/p1/capture"), false));
        assert_eq!(
            table.ttl(&parts("POST", "/payments/p1/capture")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            table.on_lapse(&parts("POST", "/payments/p1/capture")),
            Some(OnLapse::TakeOver)
        );
        assert_eq!(table.on_lapse(&parts("POST", "/webhooks/x")), None);
        assert!(
            !table.requires_key(&parts("PUT", "/payments/p1/capture"), false),
            "method must match"
        );
        assert!(
            !table.requires_key(&parts("POST", "/payments/p1/capture/x"), false),
            "no extra segments"
        );
        assert!(
            !table.requires_key(&parts("POST", "/payments/capture"), false),
            "`*` needs a segment"
        );
        assert!(table.skips(&parts("POST", "/webhooks")));
        assert!(table.skips(&parts("DELETE", "/webhooks/stripe/evt")));
        assert!(!table.skips(&parts("POST", "/webhooksx")));
        assert!(
            table.requires_key(&parts("POST", "/other"), true),
            "default when no rule matches"
        );
    }

    /// Found by fuzzing: rules matched the path as sent, so `/%70ayments` or `/x/../payments`
    /// skipped a rule written for `/payments`.
    #[test]
    fn every_spelling_of_a_path_matches_the_rule_for_its_normal_form() {
        let rules = table(
            r#"
            [[routes]]
            path = "/payments/*"
            require_key = true
            [[routes]]
            path = "/"
            skip = true
            "#,
        );
        for spelling in [
            "/payments/p1",
            "/%70ayments/p1",
            "/x/../payments/p1",
            "//payments//p1",
            "/payments/./p1?x=1",
        ] {
            assert!(
                rules.requires_key(&parts("POST", spelling), false),
                "{spelling}"
            );
        }
        assert!(rules.skips(&parts("POST", "/.")));
        // Spellings that servers behind a gateway read as the same resource: a trailing
        // slash, a segment's `;` parameters, another ASCII case of the path or the method.
        for (method, spelling) in [
            ("POST", "/payments/p1/"),
            ("POST", "/payments;jsessionid=1/p1"),
            ("POST", "/payments/p1;v=2"),
            ("POST", "/PAYMENTS/p1"),
            ("POST", "/Pay%6Dents/p1"),
        ] {
            assert!(
                rules.requires_key(&parts(method, spelling), false),
                "{spelling}"
            );
        }
        let methods = table(
            r#"
            [[routes]]
            method = "POST"
            path = "/payments/**"
            require_key = true
            "#,
        );
        assert!(
            methods.requires_key(&parts("post", "/payments/x"), false),
            "an extension method `post` is POST to many servers"
        );
        assert!(!methods.requires_key(&parts("PUT", "/payments/x"), false));
        let slashed = table(
            r#"
            [[routes]]
            path = "/api/payments/"
            require_key = true
            "#,
        );
        for spelling in ["/api/payments/", "/api/payments"] {
            assert!(
                slashed.requires_key(&parts("POST", spelling), false),
                "a rule written with a trailing slash: {spelling}"
            );
        }
        let spelt = table(
            r#"
            [[routes]]
            path = "//%70ayments/./*"
            require_key = true
            "#,
        );
        assert!(
            spelt.requires_key(&parts("POST", "/payments/p1"), false),
            "rules are normalised too"
        );
    }

    #[test]
    fn bad_rules_are_refused_at_start_up() {
        for (rule, reason) in [
            (r#"path = "no-slash""#, "must start with '/'"),
            (r#"path = "/a/**/b""#, "`**` may only end a pattern"),
            ("path = \"/a\"\nttl = \"soon\"", "ttl"),
            ("path = \"/a\"\nmethod = \"PO ST\"", "invalid method"),
            ("path = \"/a\"\nttl = \"0s\"", "ttl must be longer than 0s"),
            (r#"path = "/a%2fb""#, "encoded '/'"),
            (r#"path = "/a;v=1/b""#, "cannot hold ';'"),
        ] {
            let parsed: RouteRule = toml::from_str(rule).unwrap();
            let error = parsed.compile().unwrap_err().to_string();
            assert!(error.contains(reason), "{rule:?}: {error}");
        }
        let error = toml::from_str::<RouteRule>("path = \"/a\"\non_lapse = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("take_over"), "{error}");
    }
}
