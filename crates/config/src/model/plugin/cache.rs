//! Config of response caching: the process-wide stores (top-level `cache:`) and the `cache`
//! plugin that puts a route's responses in them (RFC 9111).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Dur};

/// The process-wide cache stores (top-level `cache:`), shared by every route's `cache` plugin and
/// kept across reloads.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheStoresConfig {
    /// The in-process tier.
    #[serde(default)]
    pub memory: MemoryTierConfig,
    /// The shared tier in the top-level `redis:` server; absent: memory only.
    #[serde(default)]
    pub redis: Option<RedisTierConfig>,
}

/// The in-process tier: a byte budget, with admission and eviction by `moka` (TinyLFU).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemoryTierConfig {
    /// The most bytes of stored responses (heads and bodies) kept in memory.
    #[serde(default = "default_memory_size")]
    pub max_size: ByteSize,
}

impl Default for MemoryTierConfig {
    fn default() -> Self {
        MemoryTierConfig {
            max_size: default_memory_size(),
        }
    }
}

fn default_memory_size() -> ByteSize {
    ByteSize(256 * 1024 * 1024)
}

/// The shared tier: stored responses in Redis, seen by every instance.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisTierConfig {
    /// Larger responses are kept in memory only.
    #[serde(default = "default_redis_object_size")]
    pub max_object_size: ByteSize,
    /// A cache read or write never waits longer than this on Redis (then it is a miss, or the
    /// write is dropped).
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
}

fn default_redis_object_size() -> ByteSize {
    ByteSize(1024 * 1024)
}

fn default_redis_timeout() -> Dur {
    Dur(std::time::Duration::from_millis(250))
}

/// A cache tier, in a route's look-up order.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CacheTier {
    /// The in-process tier (`cache.memory`).
    Memory,
    /// The shared tier (`cache.redis`, through the top-level `redis:`).
    Redis,
}

/// Cache a route's responses (RFC 9111, as a shared cache).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Tiers in look-up order; a response is stored in all of them.
    #[serde(default = "default_tiers")]
    pub tiers: Vec<CacheTier>,
    /// Freshness of a response that states none (no `max-age`, `s-maxage` or `Expires`);
    /// `0s`: such responses are not stored.
    #[serde(default = "zero")]
    pub default_ttl: Dur,
    /// The longest a response stays fresh, whatever it says.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Dur,
    /// What identifies a stored response: `method`, `host`, `path`, `query` (parameters
    /// sorted), `consumer`, `header:NAME`, `cookie:NAME`.
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// Methods answered from the cache: `GET` and `HEAD` (a `HEAD` is answered from a stored `GET`).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Statuses stored.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// How long a stale response may be served while it is refreshed in the background, when
    /// the response does not say (`stale-while-revalidate=`).
    #[serde(default = "zero")]
    pub stale_while_revalidate: Dur,
    /// How long a stale response may be served when the upstream fails, when the response does
    /// not say (`stale-if-error=`).
    #[serde(default = "zero")]
    pub stale_if_error: Dur,
    /// Larger responses are passed through and not stored.
    #[serde(default = "default_object_size")]
    pub max_object_size: ByteSize,
    /// Request coalescing: concurrent misses on one key make one upstream request.
    #[serde(default)]
    pub lock: CacheLockConfig,
    /// The response header whose space-separated values tag the stored response for purging;
    /// removed before the client sees the response.
    #[serde(default)]
    pub tag_header: Option<String>,
    /// Store responses that set cookies (`Set-Cookie`); off by default, as they are usually
    /// meant for one client.
    #[serde(default)]
    pub store_set_cookie: bool,
    /// Show the cache key in `Cache-Status` (`key=`).
    #[serde(default)]
    pub expose_key: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            tiers: default_tiers(),
            default_ttl: zero(),
            max_ttl: default_max_ttl(),
            key: default_key(),
            methods: default_methods(),
            statuses: default_statuses(),
            stale_while_revalidate: zero(),
            stale_if_error: zero(),
            max_object_size: default_object_size(),
            lock: CacheLockConfig::default(),
            tag_header: None,
            store_set_cookie: false,
            expose_key: false,
        }
    }
}

/// Request coalescing.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheLockConfig {
    /// Coalesce concurrent misses.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a request waits for another's upstream answer before it goes upstream itself.
    #[serde(default = "default_lock_timeout")]
    pub timeout: Dur,
}

impl Default for CacheLockConfig {
    fn default() -> Self {
        CacheLockConfig {
            enabled: true,
            timeout: default_lock_timeout(),
        }
    }
}

fn yes() -> bool {
    true
}

fn zero() -> Dur {
    Dur(std::time::Duration::ZERO)
}

fn default_tiers() -> Vec<CacheTier> {
    vec![CacheTier::Memory]
}

fn default_max_ttl() -> Dur {
    Dur(std::time::Duration::from_secs(24 * 3600))
}

fn default_key() -> Vec<String> {
    ["method", "host", "path", "query"]
        .map(String::from)
        .to_vec()
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

/// The statuses RFC 9110 §15.1 calls heuristically cacheable, except `206` (a part of a
/// response is answered from a stored whole instead).
fn default_statuses() -> Vec<u16> {
    vec![200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]
}

fn default_object_size() -> ByteSize {
    ByteSize(8 * 1024 * 1024)
}

fn default_lock_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
