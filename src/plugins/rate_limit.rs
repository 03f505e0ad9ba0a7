//! `rate_limit`: token buckets (GCRA) per key, local or shared through Redis.
//!
//! Each limit is a bucket of `burst` tokens (default `rate`) refilled evenly at `rate` per `per`;
//! a request takes one token from every limit's bucket and passes only if all had one. With
//! `store: redis`, every instance takes from the same buckets on the Redis server's clock, so N
//! instances together admit exactly what one bucket would. With `store: local` (or the `local`
//! fallback while Redis fails) each instance enforces the full limit alone.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use frontdesk_config::{LimitHeaders, LimitStore, OnStoreError, RateLimitConfig};
use http::{header, HeaderName, HeaderValue, StatusCode};

use crate::limit::gcra::{Decision, Params};
use crate::limit::local::LocalStore;
use crate::limit::redis::RedisStore;
use crate::limit::{store_key, DecisionCounter, LimitKey};
use crate::plugin::{
    BuildEnv, Ctx, Flow, Plugin, PluginError, PluginFactory, RequestHead, ResponseHead, Scope,
};

/// The `rate_limit` plugin.
#[derive(Debug)]
pub struct RateLimit {
    limits: Vec<Limit>,
    /// Per group, overrides by limit index.
    groups: Vec<(String, Vec<(usize, Numbers)>)>,
    headers: LimitHeaders,
    on_error: OnStoreError,
    redis: Option<Arc<RedisStore>>,
    local: Arc<LocalStore>,
    /// Global plugins share buckets across routes.
    global: bool,
}

#[derive(Debug)]
struct Limit {
    name: Arc<str>,
    key: LimitKey,
    numbers: Numbers,
    /// The store key of a `key: route` limit without group overrides: the same for every
    /// request of this plugin instance (one route, or all routes for a global one), so it is
    /// built once.
    fixed_key: std::sync::OnceLock<String>,
    decisions: DecisionCounter,
}

/// A limit's numbers and what identifies them in store keys (a changed limit gets new buckets).
#[derive(Clone, Debug)]
struct Numbers {
    rate: u64,
    per_secs: u64,
    params: Params,
    fingerprint: String,
}

impl Numbers {
    fn new(rate: u64, per: Duration, burst: Option<u64>) -> Result<Numbers, String> {
        if rate == 0 {
            return Err("rate must be at least 1".into());
        }
        if per < Duration::from_millis(1) {
            return Err("per must be at least 1ms".into());
        }
        if burst == Some(0) {
            return Err("burst must be at least 1".into());
        }
        let params = Params::new(rate, per, burst.unwrap_or(rate));
        Ok(Numbers {
            rate,
            per_secs: per.as_secs().max(1),
            fingerprint: format!("{}:{}", params.interval_us, params.burst),
            params,
        })
    }
}

/// The decisions of one request, kept for the response headers.
#[derive(Clone, Debug)]
struct Report {
    name: Arc<str>,
    rate: u64,
    per_secs: u64,
    decision: Decision,
}

impl PluginFactory for RateLimit {
    const KIND: &'static str = "rate_limit";
    const ORDER: u16 = 200;
    type Config = RateLimitConfig;

    fn build(cfg: &RateLimitConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        if cfg.limits.is_empty() {
            return Err("limits: at least one limit".into());
        }
        let mut limits = Vec::new();
        for (i, l) in cfg.limits.iter().enumerate() {
            if l.name.is_empty() || l.name.contains(['"', '\\', '|', '{', '}']) {
                return Err(format!(
                    "limits[{i}].name: non-empty, without quotes, `|` or braces"
                ));
            }
            if limits.iter().any(|o: &Limit| *o.name == *l.name) {
                return Err(format!(
                    "limits[{i}].name: duplicate limit name {:?}",
                    l.name
                ));
            }
            limits.push(Limit {
                fixed_key: std::sync::OnceLock::new(),
                decisions: DecisionCounter::new(env, &l.name),
                name: Arc::from(l.name.as_str()),
                key: LimitKey::parse(&l.key).map_err(|e| format!("limits[{i}].key: {e}"))?,
                numbers: Numbers::new(l.rate, l.per.get(), l.burst)
                    .map_err(|e| format!("limits[{i}]: {e}"))?,
            });
        }
        let mut groups = Vec::new();
        for (group, overrides) in &cfg.groups {
            let mut list = Vec::new();
            for (name, o) in overrides {
                let idx = limits
                    .iter()
                    .position(|l| &*l.name == name.as_str())
                    .ok_or_else(|| format!("groups.{group}.{name}: no limit is named {name:?}"))?;
                list.push((
                    idx,
                    Numbers::new(o.rate, o.per.get(), o.burst)
                        .map_err(|e| format!("groups.{group}.{name}: {e}"))?,
                ));
            }
            groups.push((group.clone(), list));
        }
        Ok(Arc::new(RateLimit {
            limits,
            groups,
            headers: cfg.headers,
            on_error: cfg.on_store_error,
            redis: match cfg.store {
                LimitStore::Redis => env.redis.clone(),
                LimitStore::Local => None,
            },
            local: LocalStore::global().clone(),
            global: env.scope == Scope::Global,
        }))
    }
}

impl RateLimit {
    /// The numbers of limit `i` for this caller: a group override when the consumer is in an
    /// overriding group (the most generous one when several are).
    fn numbers(&self, i: usize, cx: &Ctx) -> &Numbers {
        let base = &self.limits[i].numbers;
        let Some(consumer) = &cx.auth.consumer else {
            return base;
        };
        self.groups
            .iter()
            .filter(|(g, _)| consumer.in_group(g))
            .flat_map(|(_, list)| list.iter().filter(|(idx, _)| *idx == i).map(|(_, n)| n))
            // The highest sustained rate is the shortest interval between tokens.
            .min_by_key(|n| n.params.interval_us)
            .unwrap_or(base)
    }

    async fn decide(&self, key: &str, p: Params) -> Result<Decision, PluginError> {
        let Some(redis) = &self.redis else {
            return Ok(self.local.take(key, p));
        };
        match redis.take(key, p).await {
            Ok(d) => Ok(d),
            Err(_) => match self.on_error {
                OnStoreError::Local => Ok(self.local.take(key, p)),
                OnStoreError::Allow => Ok(Decision {
                    allowed: true,
                    remaining: p.burst,
                    retry_after_us: 0,
                    reset_us: 0,
                }),
                OnStoreError::Deny => Err(PluginError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the rate limiter is unavailable",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))),
            },
        }
    }
}

fn secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// Adds the configured rate-limit headers for `r`.
fn add_headers(h: &mut http::HeaderMap, style: LimitHeaders, r: &Report) {
    let reset = secs_ceil(r.decision.reset_us);
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    if matches!(style, LimitHeaders::Ietf | LimitHeaders::Both) {
        put(
            "ratelimit-policy",
            format!("\"{}\";q={};w={}", r.name, r.rate, r.per_secs),
        );
        put(
            "ratelimit",
            format!("\"{}\";r={};t={}", r.name, r.decision.remaining, reset),
        );
    }
    if matches!(style, LimitHeaders::Legacy | LimitHeaders::Both) {
        put("x-ratelimit-limit", r.rate.to_string());
        put("x-ratelimit-remaining", r.decision.remaining.to_string());
        put("x-ratelimit-reset", reset.to_string());
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let route = crate::limit::bucket_scope(self.global, cx);
        let mut report: Option<Report> = None;
        let mut refused: Option<Report> = None;
        for (i, limit) in self.limits.iter().enumerate() {
            let n = self.numbers(i, cx);
            let d = if limit.key == LimitKey::Route && std::ptr::eq(n, &limit.numbers) {
                let key = limit
                    .fixed_key
                    .get_or_init(|| store_key("rl", route, &limit.name, &n.fingerprint, "route"));
                self.decide(key, n.params).await?
            } else {
                let value = limit.key.value(req, cx);
                let key = store_key("rl", route, &limit.name, &n.fingerprint, &value);
                self.decide(&key, n.params).await?
            };
            limit.decisions.count(cx, d.allowed);
            let r = Report {
                name: limit.name.clone(),
                rate: n.rate,
                per_secs: n.per_secs,
                decision: d,
            };
            if !d.allowed {
                // The longest wait among refusing limits is the honest Retry-After.
                if refused
                    .as_ref()
                    .is_none_or(|o| o.decision.retry_after_us < d.retry_after_us)
                {
                    refused = Some(r);
                }
                continue;
            }
            if report
                .as_ref()
                .is_none_or(|o| d.remaining < o.decision.remaining)
            {
                report = Some(r);
            }
        }
        if let Some(r) = refused {
            let mut err = PluginError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("rate limit {:?} exceeded", r.name),
            )
            .with_header(
                header::RETRY_AFTER,
                HeaderValue::from(secs_ceil(r.decision.retry_after_us).max(1)),
            );
            let mut h = http::HeaderMap::new();
            add_headers(&mut h, self.headers, &r);
            for (k, v) in h.iter() {
                err = err.with_header(k.clone(), v.clone());
            }
            return Err(err);
        }
        if let Some(r) = report {
            cx.ext.insert(r);
        }
        Ok(Flow::Continue)
    }

    async fn response_filter(
        &self,
        resp: &mut ResponseHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        if let Some(r) = cx.ext.get::<Report>() {
            add_headers(&mut resp.headers, self.headers, r);
        }
        Ok(())
    }
}
