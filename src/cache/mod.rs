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

use frontdesk_config::CacheStoresConfig;

pub use entry::{Entry, Freshness, Meta};

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
    /// A cache with `cfg`'s memory budget.
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

    /// Stored responses in memory (approximate: moka counts lazily).
    pub fn entries(&self) -> u64 {
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

/// `http://host/p` → `host/p`.
pub fn strip_scheme(u: &str) -> &str {
    u.strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .unwrap_or(u)
}
