//! Limits: the GCRA token bucket ([`gcra`]), where its state lives ([`local`], [`redis`]) and how
//! a limit's key is read from a request ([`LimitKey`]). The plugins `rate_limit`, `quota` and
//! `concurrency` are built on these.

pub mod gcra;
pub mod local;
pub mod redis;

use http::HeaderName;

use crate::plugin::{Ctx, RequestHead};

/// What a limit counts per.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The identified consumer (falls back to the client address for callers that are none).
    Consumer,
    /// The client address (see `trusted_proxies`).
    ClientIp,
    /// The route: one bucket for everyone.
    Route,
    /// A request header's value (falls back to the client address when absent).
    Header(HeaderName),
}

impl LimitKey {
    /// Parses `consumer`, `client_ip`, `route` or `header:NAME`.
    pub fn parse(s: &str) -> Result<LimitKey, String> {
        match s {
            "consumer" => Ok(LimitKey::Consumer),
            "client_ip" => Ok(LimitKey::ClientIp),
            "route" => Ok(LimitKey::Route),
            _ => match s.strip_prefix("header:") {
                Some(n) => HeaderName::from_bytes(n.as_bytes())
                    .map(LimitKey::Header)
                    .map_err(|_| format!("invalid header name {n:?}")),
                None => Err(format!(
                    "unknown key {s:?}; expected consumer, client_ip, route or header:NAME"
                )),
            },
        }
    }

    /// This request's value of the key, tagged with its kind so values of different kinds never
    /// share a bucket.
    pub fn value(&self, req: &RequestHead, cx: &Ctx) -> String {
        match self {
            LimitKey::Consumer => match &cx.auth.consumer {
                Some(c) => format!("c:{}", c.name),
                None => format!("ip:{}", cx.client_ip),
            },
            LimitKey::ClientIp => format!("ip:{}", cx.client_ip),
            LimitKey::Route => "route".to_string(),
            LimitKey::Header(n) => match req.headers.get(n) {
                Some(v) => format!("h:{}", String::from_utf8_lossy(v.as_bytes())),
                None => format!("ip:{}", cx.client_ip),
            },
        }
    }
}

/// A store key: `frontdesk:<kind>:{<route>|<limit>|<value>}`. The braces are a Redis Cluster hash
/// tag, so each bucket lives whole on one node.
pub fn store_key(kind: &str, route: &str, limit: &str, fingerprint: &str, value: &str) -> String {
    format!("frontdesk:{kind}:{{{route}|{limit}|{fingerprint}|{value}}}")
}

/// The route part of a store key: `*` for a global plugin (its buckets are shared by every
/// route), the route's name otherwise.
pub fn bucket_scope(global: bool, cx: &Ctx) -> &str {
    if global {
        "*"
    } else {
        &cx.route
    }
}
