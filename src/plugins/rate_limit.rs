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

use super::limiting::{DecisionCounter, LimitKey};
use crate::limit::gcra::{Decision, Params};
use crate::limit::local::LocalStore;
use crate::limit::redis::RedisStore;
use crate::limit::store_key;
use crate::plugin::{
    BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead, Scope,
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
    params: Params,
    fingerprint: String,
    /// `RateLimit-Policy` and `X-RateLimit-Limit`: the same for every request, so made once.
    policy: HeaderValue,
    limit_value: HeaderValue,
}

impl Numbers {
    fn new(name: &str, rate: u64, per: Duration, burst: Option<u64>) -> Result<Numbers, String> {
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
        let per_secs = per.as_secs().max(1);
        // Limit names are checked (no quotes or control characters) before this.
        let policy = HeaderValue::from_str(&format!("\"{name}\";q={rate};w={per_secs}"))
            .map_err(|_| "the limit name cannot appear in a header".to_string())?;
        Ok(Numbers {
            fingerprint: format!("{}:{}", params.interval_us, params.burst),
            params,
            policy,
            limit_value: HeaderValue::from(rate),
        })
    }
}

/// The decision of one limit, for the response headers.
struct Report<'a> {
    name: &'a str,
    numbers: &'a Numbers,
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
                numbers: Numbers::new(&l.name, l.rate, l.per.get(), l.burst)
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
                    Numbers::new(name, o.rate, o.per.get(), o.burst)
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
        let Some(consumer) = &cx.consumer else {
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

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The configured rate-limit headers for `r`, handed to `put`.
fn headers_for(style: LimitHeaders, r: &Report<'_>, mut put: impl FnMut(HeaderName, HeaderValue)) {
    let reset = secs_ceil(r.decision.reset_us);
    if matches!(style, LimitHeaders::Ietf | LimitHeaders::Both) {
        put(RATELIMIT_POLICY.clone(), r.numbers.policy.clone());
        // Built by hand: `format!` costs more than the rest of the decision (measured with
        // bench/callgrind.sh).
        let mut n = itoa::Buffer::new();
        let mut state = String::with_capacity(r.name.len() + 32);
        state.push('"');
        state.push_str(r.name);
        state.push_str("\";r=");
        state.push_str(n.format(r.decision.remaining));
        state.push_str(";t=");
        state.push_str(n.format(reset));
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(state)) {
            put(RATELIMIT.clone(), v);
        }
    }
    if matches!(style, LimitHeaders::Legacy | LimitHeaders::Both) {
        put(X_RATELIMIT_LIMIT.clone(), r.numbers.limit_value.clone());
        put(
            X_RATELIMIT_REMAINING.clone(),
            HeaderValue::from(r.decision.remaining),
        );
        put(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset));
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let route = super::limiting::bucket_scope(self.global, cx);
        let mut report: Option<Report<'_>> = None;
        let mut refused: Option<Report<'_>> = None;
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
                name: &limit.name,
                numbers: n,
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
            headers_for(self.headers, &r, |k, v| err.headers.push((k, v)));
            return Err(err);
        }
        if let Some(r) = report {
            headers_for(self.headers, &r, |k, v| cx.response_headers.push((k, v)));
        }
        Ok(Flow::Continue)
    }
}
