//! What the limit plugins (`rate_limit`, `quota`, `concurrency`) share on top of [`crate::limit`]:
//! how a limit's key is read from a request ([`LimitKey`]), the route part of a bucket's store key
//! and the decision counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use http::HeaderName;

use crate::observe::metrics::{Family, Metrics};
use crate::plugin::{BuildEnv, Ctx, RequestHead};

/// The `decision` label values, made once.
static DECISIONS: LazyLock<[Arc<str>; 2]> =
    LazyLock::new(|| [Arc::from("allowed"), Arc::from("rejected")]);

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
            LimitKey::Consumer => match &cx.consumer {
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

/// The route part of a store key: `*` for a global plugin (its buckets are shared by every
/// route), the route's name otherwise.
pub fn bucket_scope(global: bool, cx: &Ctx) -> &str {
    if global {
        "*"
    } else {
        &cx.route
    }
}

/// Counts one limit's decisions in `frontdesk_ratelimit_decisions_total{route,limit,decision}`.
/// A route plugin's counters are found once, when it is built; a global plugin runs on every
/// route, so it finds the route's counter per decision.
#[derive(Debug)]
pub struct DecisionCounter {
    limit: Arc<str>,
    metrics: Arc<Metrics>,
    /// Allowed and rejected, for a route plugin.
    fixed: Option<[Arc<AtomicU64>; 2]>,
}

impl DecisionCounter {
    /// The counters of limit `limit` of a plugin built with `env`.
    pub fn new(env: &BuildEnv, limit: &str) -> DecisionCounter {
        let limit: Arc<str> = Arc::from(limit);
        let fixed = env.route.as_ref().map(|route| {
            DECISIONS.clone().map(|d| {
                env.metrics.counter(
                    Family::RatelimitDecisions,
                    [route.clone(), limit.clone(), d],
                )
            })
        });
        DecisionCounter {
            limit,
            metrics: env.metrics.clone(),
            fixed,
        }
    }

    /// Counts one decision on the request's route.
    pub fn count(&self, cx: &Ctx, allowed: bool) {
        match &self.fixed {
            Some(c) => {
                c[usize::from(!allowed)].fetch_add(1, Ordering::Relaxed);
            }
            None => self.metrics.inc(
                Family::RatelimitDecisions,
                [
                    cx.route.clone(),
                    self.limit.clone(),
                    DECISIONS[usize::from(!allowed)].clone(),
                ],
            ),
        }
    }
}
