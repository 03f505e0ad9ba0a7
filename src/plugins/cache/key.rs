//! The cache key: the route's name and the parts its `key` names, each escaped so that no value
//! can pass for another part (`|` separates them).

use std::fmt::Write as _;

use http::{header, HeaderName};

use crate::plugin::{Ctx, RequestHead};

/// One part of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// The method (`HEAD` counts as `GET`: it is answered from a stored `GET`).
    Method,
    /// The host, lower-cased, from the URI's authority or `Host`.
    Host,
    /// The path as sent.
    Path,
    /// The query, its parameters sorted.
    Query,
    /// The identified consumer (empty for anonymous callers).
    Consumer,
    /// A request header's values.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
}

impl Part {
    /// Parses a `key` entry (the config check accepted it).
    pub fn parse(s: &str) -> Result<Part, String> {
        Ok(match s {
            "method" => Part::Method,
            "host" => Part::Host,
            "path" => Part::Path,
            "query" => Part::Query,
            "consumer" => Part::Consumer,
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    Part::Header(
                        HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| format!("{h:?} is not a header name"))?,
                    )
                } else if let Some(c) = s.strip_prefix("cookie:") {
                    Part::Cookie(c.to_string())
                } else {
                    return Err(format!("unknown key part {s:?}"));
                }
            }
        })
    }
}

/// The host of a request, lower-cased, without a default port.
pub fn host(req: &RequestHead) -> String {
    let raw = req
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    raw.to_ascii_lowercase()
}

/// `host/path?query`: what purges by URL and prefix match.
pub fn url(req: &RequestHead) -> String {
    let mut u = host(req);
    u.push_str(req.uri.path());
    if let Some(q) = req.uri.query() {
        u.push('?');
        u.push_str(q);
    }
    u
}

/// The key of `req` on route `route`.
pub fn key(route: &str, parts: &[Part], req: &RequestHead, cx: &Ctx) -> String {
    let mut k = String::with_capacity(64);
    escape(&mut k, route);
    for p in parts {
        k.push('|');
        match p {
            Part::Method => {
                let m = if req.method == http::Method::HEAD {
                    "GET"
                } else {
                    req.method.as_str()
                };
                escape(&mut k, m);
            }
            Part::Host => escape(&mut k, &host(req)),
            Part::Path => escape(&mut k, req.uri.path()),
            Part::Query => {
                let mut params: Vec<&str> = req
                    .uri
                    .query()
                    .map(|q| q.split('&').filter(|p| !p.is_empty()).collect())
                    .unwrap_or_default();
                params.sort_unstable();
                escape(&mut k, &params.join("&"));
            }
            Part::Consumer => {
                if let Some(c) = &cx.consumer {
                    escape(&mut k, &c.name);
                }
            }
            Part::Header(name) => {
                let values: Vec<String> = req
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                escape(&mut k, &values.join(","));
            }
            Part::Cookie(name) => {
                if let Some(v) = cookie(req, name) {
                    escape(&mut k, &v);
                }
            }
        }
    }
    k
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie(req: &RequestHead, name: &str) -> Option<String> {
    req.headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| v.trim().to_string())
        })
}

/// Appends `s` with `%` and `|` percent-encoded, so parts cannot run into each other.
fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' | '|' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut b = http::Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn query_sorted_host_lowered_head_as_get() {
        let parts: Vec<Part> = ["method", "host", "path", "query"]
            .iter()
            .map(|p| Part::parse(p).expect("part"))
            .collect();
        let cx = Ctx::for_test();
        let a = key(
            "r",
            &parts,
            &head("/p?b=2&a=1", &[("host", "API.example")]),
            &cx,
        );
        let mut h = head("/p?a=1&b=2", &[("host", "api.example")]);
        h.method = http::Method::HEAD;
        assert_eq!(a, key("r", &parts, &h, &cx));
        assert_eq!(a, "r|GET|api.example|/p|a=1&b=2");
    }

    #[test]
    fn values_cannot_forge_separators() {
        let parts = vec![
            Part::parse("header:x-a").expect("part"),
            Part::parse("cookie:s").expect("part"),
        ];
        let cx = Ctx::for_test();
        let one = key(
            "r",
            &parts,
            &head("/", &[("x-a", "1|2"), ("cookie", "s=3")]),
            &cx,
        );
        let two = key(
            "r",
            &parts,
            &head("/", &[("x-a", "1"), ("cookie", "s=2|3")]),
            &cx,
        );
        assert_ne!(one, two);
        assert!(Part::parse("nope").is_err());
    }
}
