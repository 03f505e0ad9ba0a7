//! The response cache's stores, shared by every route's `cache` plugin and kept across reloads:
//! the memory tier (`moka`, a byte budget), the optional Redis tier, request coalescing
//! ([`flight`]), background refreshes and purges. What may be stored and served is
//! [`policy`] (RFC 9111); the plugin that uses all this is `plugins::cache`.

pub mod entry;
pub mod flight;
pub mod policy;
pub mod redis;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use frontdesk_config::CacheStoresConfig;

pub use entry::{Entry, Freshness, Meta};

use crate::limit::redis::RedisStore;

use policy::unix_ms;

/// The variants stored under one key (one per `Vary` combination), newest first.
pub type Variants = Arc<Vec<Arc<Entry>>>;

/// The most variants kept per key; the oldest goes first.
pub const MAX_VARIANTS: usize = 16;

/// The process-wide cache.
pub struct Cache {
    cfg: CacheStoresConfig,
    memory: moka::sync::Cache<Arc<str>, Variants>,
    /// Keys by tag (`tag:` + purge tag, `url:` + request URL): what a purge by tag or URL
    /// removes. Taken when a response is stored or purged, never on a hit. It may name keys
    /// that are gone (a purge then finds nothing); evictions take theirs out.
    tags: Arc<Mutex<HashMap<String, HashSet<Arc<str>>>>>,
    /// Coalesced misses in progress.
    pub flights: Arc<flight::Flights>,
    /// Keys being refreshed in the background (one refresh per key).
    refreshing: Mutex<HashSet<Arc<str>>>,
    /// Entries the memory tier evicted to keep within its budget.
    pub evictions: Arc<AtomicU64>,
    /// The shared tier, when `cache.redis` and `redis:` are configured.
    redis: Option<redis::RedisTier>,
    /// The `redis:` settings the tier was made for (a reload with others makes a new cache).
    redis_config: Option<frontdesk_config::RedisConfig>,
    /// This process's id in purge messages (its own are not applied twice).
    instance: u64,
    /// The purge subscription (aborted when the cache goes).
    subscriber: Option<tokio::task::AbortHandle>,
}

impl Drop for Cache {
    fn drop(&mut self) {
        if let Some(s) = &self.subscriber {
            s.abort();
        }
    }
}

/// A purge as instances tell each other over Redis pub/sub.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PurgeMessage {
    origin: u64,
    purge: Purge,
    soft: bool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("cfg", &self.cfg)
            .field("entries", &self.memory.entry_count())
            .finish_non_exhaustive()
    }
}

/// What a purge removes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purge {
    /// One key, as `Cache-Status` shows it (`key=`).
    Key(String),
    /// Every stored response for a URL (`host/path?query`; a scheme is ignored).
    Url(String),
    /// Every stored response whose URL starts with this.
    Prefix(String),
    /// Every stored response tagged with this (the route's `tag_header`).
    Tag(String),
}

impl Cache {
    /// The process's cache: `cfg`'s memory budget, and the Redis tier on `store` when `cfg` has
    /// one (its purge subscription starts when a runtime runs).
    pub fn start(cfg: &CacheStoresConfig, store: Option<Arc<RedisStore>>) -> Arc<Cache> {
        Arc::new_cyclic(|me: &std::sync::Weak<Cache>| {
            let mut c = Cache::new(cfg);
            // The tier's own connection: cache values (up to `max_object_size`) must not queue
            // ahead of the limiters' small, 20 ms-bounded calls on theirs.
            let own = |shared: Arc<RedisStore>, t: &frontdesk_config::RedisTierConfig| {
                let mut rc = shared.config().clone();
                rc.timeout = t.timeout;
                match RedisStore::start(&rc) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "cache: the redis tier shares the limiters' connection");
                        shared
                    }
                }
            };
            if let (Some(t), Some(shared)) = (&cfg.redis, store) {
                c.redis_config = Some(shared.config().clone());
                let store = if tokio::runtime::Handle::try_current().is_ok() {
                    own(shared, t)
                } else {
                    shared
                };
                let tier = redis::RedisTier::new(
                    store,
                    redis::TierSettings {
                        max_object_size: t.max_object_size.0,
                        timeout: t.timeout.0,
                        prefix: "frontdesk:cache:".into(),
                    },
                );
                if tokio::runtime::Handle::try_current().is_ok() {
                    let me = me.clone();
                    c.subscriber = Some(tier.subscribe(Arc::new(move |msg: Bytes| {
                        if let Some(cache) = me.upgrade() {
                            cache.apply_message(&msg);
                        }
                    })));
                }
                c.redis = Some(tier);
            }
            c
        })
    }

    /// The Redis tier, if any.
    pub fn redis(&self) -> Option<&redis::RedisTier> {
        self.redis.as_ref()
    }

    /// The `redis:` settings the Redis tier was made for, if it has one.
    pub fn redis_config(&self) -> Option<&frontdesk_config::RedisConfig> {
        self.redis_config.as_ref()
    }

    fn apply_message(&self, msg: &[u8]) {
        match serde_json::from_slice::<PurgeMessage>(msg) {
            Ok(m) if m.origin != self.instance => {
                let n = self.purge(&m.purge, m.soft);
                tracing::debug!(purge = ?m.purge, removed = n, "purge from another instance");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "ignored a malformed purge message"),
        }
    }

    /// Reads `key` from the Redis tier: the stored response, if there is one that decodes.
    pub async fn redis_get(&self, key: &str) -> Option<Arc<Entry>> {
        let tier = self.redis.as_ref()?;
        let raw = tier.get(key).await.ok()??;
        Entry::decode(raw, key).map(Arc::new)
    }

    /// Writes `entry` to the Redis tier in the background (when it fits), with its URL, its
    /// path prefixes and its purge tags as tags; then gives up `lease` (the fill's), so that
    /// instances waiting on the lease find the entry once the lease is gone.
    pub fn redis_put(&self, entry: &Arc<Entry>, lease: Option<redis::Lease>) {
        let Some(tier) = self.redis.clone() else {
            return;
        };
        let value = entry.encode();
        let fits = value.len() as u64 <= tier.settings().max_object_size;
        let now = unix_ms(SystemTime::now());
        let ttl = entry.keep_for(now);
        let key = entry.meta.key.clone();
        let mut tags: Vec<String> = tag_names(entry).collect();
        tags.extend(prefix_tags(&entry.meta.url));
        tokio::spawn(async move {
            if fits {
                if let Err(e) = tier.put(&key, value, ttl, &tags).await {
                    tracing::debug!(error = %e, "cache: redis write dropped");
                }
            }
            if let Some(lease) = lease {
                let _ = lease.release().await;
            }
        });
    }

    /// Purges on this instance, in the Redis tier, and (through Redis) on every other instance.
    /// Returns how many stored responses this instance's memory tier had.
    pub async fn purge_everywhere(&self, p: &Purge, soft: bool) -> u64 {
        let n = self.purge(p, soft);
        let Some(tier) = &self.redis else { return n };
        // The Redis copies go even on a soft purge: the memory tiers keep theirs, stale.
        let removed = match p {
            Purge::Key(k) => tier.delete(std::slice::from_ref(k)).await,
            Purge::Url(u) => tier.purge_tag(&format!("url:{}", strip_scheme(u))).await,
            Purge::Tag(t) => tier.purge_tag(&format!("tag:{t}")).await,
            Purge::Prefix(pre) => {
                // The Redis tier indexes path prefixes on `/` boundaries: a prefix between
                // them purges from the last `/` (more, never less); one without any, everything.
                let pre = strip_scheme(pre);
                match pre.rfind('/') {
                    Some(i) => tier.purge_tag(&format!("pre:{}", &pre[..=i])).await,
                    None => tier.purge_prefix("").await,
                }
            }
        };
        if let Err(e) = removed {
            tracing::warn!(error = %e, "cache: the purge could not reach redis");
        }
        let msg = PurgeMessage {
            origin: self.instance,
            purge: p.clone(),
            soft,
        };
        if let Ok(body) = serde_json::to_vec(&msg) {
            if let Err(e) = tier.publish(&body).await {
                tracing::warn!(error = %e, "cache: the purge could not be sent to other instances");
            }
        }
        n
    }

    /// A cache with `cfg`'s memory budget and no Redis tier.
    pub fn new(cfg: &CacheStoresConfig) -> Cache {
        let tags: Arc<Mutex<HashMap<String, HashSet<Arc<str>>>>> = Arc::default();
        let evictions = Arc::new(AtomicU64::new(0));
        let (index, evicted) = (tags.clone(), evictions.clone());
        let memory = moka::sync::Cache::builder()
            .max_capacity(cfg.memory.max_size.0)
            .weigher(|_k: &Arc<str>, v: &Variants| {
                v.iter().fold(0u32, |w, e| w.saturating_add(e.weight()))
            })
            .eviction_listener(move |key: Arc<Arc<str>>, v: Variants, cause| {
                use moka::notification::RemovalCause;
                if matches!(cause, RemovalCause::Replaced) {
                    return;
                }
                if matches!(cause, RemovalCause::Size) {
                    evicted.fetch_add(1, Ordering::Relaxed);
                }
                let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
                for e in v.iter() {
                    for t in tag_names(e) {
                        if let Some(set) = index.get_mut(&t) {
                            set.remove(&*key);
                            if set.is_empty() {
                                index.remove(&t);
                            }
                        }
                    }
                }
            })
            .build();
        Cache {
            cfg: cfg.clone(),
            memory,
            tags,
            flights: Arc::default(),
            refreshing: Mutex::default(),
            evictions,
            redis: None,
            redis_config: None,
            instance: fastrand::u64(..),
            subscriber: None,
        }
    }

    /// The config this cache was made with (a reload with the same keeps it).
    pub fn config(&self) -> &CacheStoresConfig {
        &self.cfg
    }

    /// The variants stored under `key` in memory.
    pub fn get(&self, key: &str) -> Option<Variants> {
        self.memory.get(key)
    }

    /// Stores `entry` in memory beside the variants it does not replace (same `Vary` values).
    pub fn put(&self, entry: Arc<Entry>) {
        let key: Arc<str> = Arc::from(entry.meta.key.as_str());
        {
            let mut index = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
            for t in tag_names(&entry) {
                index.entry(t).or_default().insert(key.clone());
            }
        }
        let mut list: Vec<Arc<Entry>> = vec![entry.clone()];
        if let Some(old) = self.memory.get(&key) {
            list.extend(
                old.iter()
                    .filter(|o| {
                        o.meta.vary != entry.meta.vary
                            || o.meta.vary_values != entry.meta.vary_values
                    })
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
        }
        self.memory.insert(key, Arc::new(list));
    }

    /// Removes (or, `soft`, marks stale) what `p` names in memory; returns how many stored
    /// responses it touched.
    pub fn purge(&self, p: &Purge, soft: bool) -> u64 {
        let now = unix_ms(SystemTime::now());
        let keys: Vec<Arc<str>> = match p {
            Purge::Key(k) => vec![Arc::from(k.as_str())],
            Purge::Url(u) => self.tagged(&format!("url:{}", strip_scheme(u))),
            Purge::Tag(t) => self.tagged(&format!("tag:{t}")),
            Purge::Prefix(pre) => {
                let pre = strip_scheme(pre);
                self.memory
                    .iter()
                    .filter(|(_, v)| v.iter().any(|e| e.meta.url.starts_with(pre)))
                    .map(|(k, _)| (*k).clone())
                    .collect()
            }
        };
        let mut n = 0;
        for key in keys {
            let Some(vars) = self.memory.get(&key) else {
                continue;
            };
            let hit = |e: &Entry| match p {
                Purge::Tag(t) => e.meta.tags.iter().any(|x| x == t),
                Purge::Url(u) => e.meta.url == strip_scheme(u),
                Purge::Prefix(pre) => e.meta.url.starts_with(strip_scheme(pre)),
                Purge::Key(_) => true,
            };
            let (gone, kept): (Vec<_>, Vec<_>) = vars.iter().cloned().partition(|e| hit(e));
            if gone.is_empty() {
                continue;
            }
            n += gone.len() as u64;
            let mut list = kept;
            if soft {
                list.extend(gone.into_iter().map(|e| {
                    let mut e = (*e).clone();
                    e.meta.fresh_until = e.meta.fresh_until.min(now);
                    Arc::new(e)
                }));
            }
            if list.is_empty() {
                self.memory.invalidate(&key);
            } else {
                self.memory.insert(key, Arc::new(list));
            }
        }
        n
    }

    fn tagged(&self, tag: &str) -> Vec<Arc<str>> {
        let index = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
        index
            .get(tag)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Claims the background refresh of `key`; `None` when one is already running. The claim
    /// ends when the returned guard drops.
    pub fn refreshing(self: &Arc<Self>, key: &Arc<str>) -> Option<RefreshClaim> {
        let mut set = self
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set.insert(key.clone()).then(|| RefreshClaim {
            cache: self.clone(),
            key: key.clone(),
        })
    }

    /// Keys stored in memory (moka counts lazily: its pending work is done first).
    pub fn entries(&self) -> u64 {
        self.memory.run_pending_tasks();
        self.memory.entry_count()
    }

    /// Bytes weighed in memory (approximate).
    pub fn weighed_bytes(&self) -> u64 {
        self.memory.weighted_size()
    }
}

/// A claimed background refresh.
pub struct RefreshClaim {
    cache: Arc<Cache>,
    key: Arc<str>,
}

impl Drop for RefreshClaim {
    fn drop(&mut self) {
        self.cache
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// The index names of an entry: its URL and its purge tags.
fn tag_names(e: &Entry) -> impl Iterator<Item = String> + '_ {
    std::iter::once(format!("url:{}", e.meta.url))
        .chain(e.meta.tags.iter().map(|t| format!("tag:{t}")))
}

/// `pre:` tags of a URL's path prefixes on `/` boundaries (`h/`, `h/a/`, `h/a/b/`; at most 16).
fn prefix_tags(url: &str) -> impl Iterator<Item = String> + '_ {
    let path_end = url.find('?').unwrap_or(url.len());
    url[..path_end]
        .match_indices('/')
        .take(16)
        .map(move |(i, _)| format!("pre:{}", &url[..=i]))
}

/// `http://host/p` → `host/p`.
pub fn strip_scheme(u: &str) -> &str {
    u.strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .unwrap_or(u)
}
