//! `routes`: the proxy's route rules, compiled from fuzzed rules and matched against fuzzed
//! requests.

use std::time::Duration;

use http::request::Parts;
use http::uri::PathAndQuery;
use idem::routes::{RouteRule, RouteTable};
use idem_core::OnLapse;
use idem_http::path::normalize;

use crate::input::Input;

/// At most this many rules per table: enough for first-match-wins to matter.
const MAX_RULES: usize = 4;
/// At most this many segments per generated path.
const MAX_SEGMENTS: usize = 5;

const METHODS: &[&str] = &["*", "POST", "post", "GET", "PUT", "DELETE", "PO ST", ""];
const SEGMENTS: &[&str] = &[
    "payments",
    "p1",
    "capture",
    "*",
    "**",
    "",
    ".",
    "..",
    "%70ayments",
    "%2e%2E",
    "%2F",
    "a%41",
    "%7e",
    "caf%c3%a9",
    "x;y",
];
const TTLS: &[&str] = &["1h", "250ms", "0s", "soon", "99999999999999999999h", ""];
const LAPSES: &[&str] = &["report_unknown", "take_over", "sometimes"];

/// What a table answers for one request.
type Answers = (bool, bool, bool, Option<Duration>, Option<OnLapse>);

/// Builds a route table from rules drawn from `data` (bad rules are refused, as at start-up)
/// and matches requests drawn from the rest against it. Never panics, and a request gets the
/// same answers whichever spelling of its path it uses: a rule cannot be escaped by writing
/// `/payments` as `/%70ayments` or `/x/../payments`.
pub fn routes(data: &[u8]) {
    let mut input = Input::new(data);
    let rules: Vec<RouteRule> = (0..input.below(MAX_RULES + 1))
        .filter_map(|_| rule(&mut input))
        .collect();
    let Ok(table) = RouteTable::new(&rules) else {
        return;
    };
    while !input.is_empty() {
        let Some(parts) = request(&mut input) else {
            continue;
        };
        let answers = answers(&table, &parts);
        let Ok(normal) = normalize(parts.uri.path()) else {
            continue;
        };
        let target = match parts.uri.query() {
            Some(query) => format!("{normal}?{query}"),
            None => normal.to_string(),
        };
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query =
            Some(PathAndQuery::try_from(target.as_str()).expect("a normal form is a valid path"));
        let mut normal_parts = parts.clone();
        normal_parts.uri = http::Uri::from_parts(uri).expect("the same URI with its normal path");
        assert_eq!(
            answers,
            self::answers(&table, &normal_parts),
            "{} and its normal form {} match different rules",
            parts.uri,
            normal_parts.uri
        );
        // Another spelling of the same resource, as the servers behind a gateway read it,
        // must find the same rule: checked against a spelling the fuzzer chose, not against
        // the normal form the table itself computes.
        let mut respelt_parts = normal_parts.clone();
        if let Some(respelt) = respell(&normal, &mut input)
            && let Ok(uri) = http::Uri::try_from(respelt.as_str())
        {
            respelt_parts.uri = uri;
            if input.flag() {
                respelt_parts.method = other_case(&parts.method);
            }
            assert_eq!(
                answers,
                self::answers(&table, &respelt_parts),
                "{} {} and {} {} match different rules",
                parts.method,
                normal,
                respelt_parts.method,
                respelt
            );
        }
    }
}

/// `normal` (a path in normal form) spelt another way that names the same resource: letters
/// in another case or percent-encoded, a `;` parameter on a segment, `./` and `//` inserted,
/// a trailing slash. `None` for the root, whose only spelling that matters is `/`.
fn respell(normal: &str, input: &mut Input<'_>) -> Option<String> {
    if normal == "/" {
        return None;
    }
    let mut spelt = String::with_capacity(normal.len() * 2);
    for (index, segment) in normal.trim_start_matches('/').split('/').enumerate() {
        spelt.push('/');
        match input.below(6) {
            0 => spelt.push_str("./"),
            // Not first: a target opening with `//` would read as an authority.
            1 if index > 0 => spelt.push('/'),
            _ => {}
        }
        // The two hex digits after a `%` are recased at most, never encoded themselves.
        let mut escape_left: u8 = 0;
        for character in segment.chars() {
            let in_escape = escape_left > 0;
            escape_left = if character == '%' {
                2
            } else {
                escape_left.saturating_sub(1)
            };
            match input.below(4) {
                0 if character.is_ascii_alphabetic() && !in_escape => {
                    spelt.push_str(&format!("%{:02X}", u32::from(character)));
                }
                1 => spelt.push(character.to_ascii_uppercase()),
                2 => spelt.push(character.to_ascii_lowercase()),
                _ => spelt.push(character),
            }
        }
        if !segment.is_empty() && !segment.contains(';') && input.below(4) == 0 {
            spelt.push_str(";v=1");
        }
    }
    if input.flag() {
        spelt.push('/');
    }
    Some(spelt)
}

/// A standard method in lower case, which many servers run as the method itself.
fn other_case(method: &http::Method) -> http::Method {
    http::Method::from_bytes(method.as_str().to_ascii_lowercase().as_bytes())
        .unwrap_or_else(|_| method.clone())
}

fn answers(table: &RouteTable, parts: &Parts) -> Answers {
    (
        table.requires_key(parts, false),
        table.requires_key(parts, true),
        table.skips(parts),
        table.ttl(parts),
        table.on_lapse(parts),
    )
}

/// A rule as the config file would hold it, or `None` where serde refuses it.
fn rule(input: &mut Input<'_>) -> Option<RouteRule> {
    let mut table = toml::Table::new();
    let path = if input.below(8) == 0 {
        input.text()
    } else {
        generated_path(input)
    };
    table.insert("path".into(), path.into());
    if input.flag() {
        let method = if input.below(4) == 0 {
            input.text()
        } else {
            input.pick(METHODS).to_owned()
        };
        table.insert("method".into(), method.into());
    }
    if input.flag() {
        table.insert("require_key".into(), input.flag().into());
    }
    if input.flag() {
        table.insert("skip".into(), input.flag().into());
    }
    if input.flag() {
        table.insert("ttl".into(), input.pick(TTLS).into());
    }
    if input.flag() {
        table.insert("on_lapse".into(), input.pick(LAPSES).into());
    }
    toml::Value::Table(table).try_into().ok()
}

/// `/` and segments from [`SEGMENTS`] or the input.
fn generated_path(input: &mut Input<'_>) -> String {
    let mut path = String::new();
    for _ in 0..input.below(MAX_SEGMENTS + 1) {
        path.push('/');
        if input.below(6) == 0 {
            path.push_str(&input.text());
        } else {
            path.push_str(input.pick(SEGMENTS));
        }
    }
    if path.is_empty() || input.below(4) == 0 {
        path.push('/');
    }
    path
}

/// A request, when its drawn method and target are valid HTTP.
fn request(input: &mut Input<'_>) -> Option<Parts> {
    let method = input.pick(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]);
    let mut target = match input.below(5) {
        0 => input.bytes().to_vec(),
        1 => format!("http://api.example{}", generated_path(input)).into_bytes(),
        _ => generated_path(input).into_bytes(),
    };
    if input.below(4) == 0 {
        target.extend(b"?q=%2e./");
    }
    http::Request::builder()
        .method(method)
        .uri(target)
        .body(())
        .ok()
        .map(|request| request.into_parts().0)
}
