//! Config of the limit plugins: `rate_limit`, `quota` and `concurrency`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Dur;

/// Where limiter state lives.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitStore {
    /// In this instance only: each instance enforces the full limit alone.
    #[default]
    Local,
    /// Shared through `redis:`: all instances together admit what one bucket would.
    Redis,
}

/// What to do when Redis fails or is slower than `redis.timeout`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Fall back to a per-instance limiter with the same limits.
    #[default]
    Local,
    /// Let the request through.
    Allow,
    /// Refuse with 503.
    Deny,
}

/// Which rate-limit headers responses carry.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitHeaders {
    /// `RateLimit-Policy` and `RateLimit` (IETF draft).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    /// Both sets.
    Both,
    /// None.
    None,
}

/// Token-bucket rate limits (GCRA).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Where the buckets live.
    #[serde(default)]
    pub store: LimitStore,
    /// What happens when the Redis store fails.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Which headers report the limits.
    #[serde(default)]
    pub headers: LimitHeaders,
    /// The limits; a request must pass all of them.
    pub limits: Vec<LimitConfig>,
    /// Per consumer-group overrides of named limits: `group: { limit-name: { rate, per, burst } }`.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeMap<String, LimitOverride>>,
}

/// One token bucket per key: `burst` tokens (default `rate`), refilled at `rate` per `per`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Name, reported in headers and used by group overrides.
    pub name: String,
    /// What a bucket is per: `consumer`, `client_ip`, `route`, or `header:NAME`.
    pub key: String,
    /// Tokens added per `per`.
    pub rate: u64,
    /// The refill period.
    pub per: Dur,
    /// Bucket size; default `rate`.
    #[serde(default)]
    pub burst: Option<u64>,
}

/// New numbers for a named limit, for one consumer group.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    /// Tokens added per `per`.
    pub rate: u64,
    /// The refill period.
    pub per: Dur,
    /// Bucket size; default `rate`.
    #[serde(default)]
    pub burst: Option<u64>,
}

/// A calendar quota.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// What a quota is per: `consumer`, `client_ip`, `route`, or `header:NAME`.
    pub key: String,
    /// Requests allowed per window.
    pub limit: u64,
    /// The calendar window, in UTC.
    pub per: QuotaWindow,
    /// Where the counts live.
    #[serde(default)]
    pub store: LimitStore,
    /// What happens when the Redis store fails.
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

/// A calendar window in UTC.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QuotaWindow {
    /// From 00:00 UTC to the next.
    Day,
    /// From the 1st 00:00 UTC to the next month's.
    Month,
}

/// A cap on requests in flight.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// What the cap is per: `route`, `consumer`, `client_ip`, or `header:NAME`.
    #[serde(default = "default_concurrency_key")]
    pub key: String,
    /// Requests in flight at most; the excess gets 503 at once.
    pub max: u64,
}

fn default_concurrency_key() -> String {
    "route".into()
}
