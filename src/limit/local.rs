//! The local store: limiter state in this process, shared by every config generation so buckets
//! survive reloads (keys carry the limit's numbers, so a changed limit starts fresh).
//!
//! Lock-free: a concurrent map (papaya) of atomics; taking a token is a compare-and-swap loop on
//! the key's TAT. A background sweep drops buckets that are full again (their TAT has passed),
//! which is the same as forgetting them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::gcra::{self, Decision, Params};

/// TATs (microseconds, process clock) by bucket key.
#[derive(Debug, Default)]
pub struct LocalStore {
    buckets: papaya::HashMap<Box<str>, AtomicU64, Hasher>,
    /// Quota and concurrency counters by key.
    counters: papaya::HashMap<Box<str>, Arc<Counter>, Hasher>,
}

/// Randomly seeded per process, fast on short keys.
type Hasher = foldhash::fast::RandomState;

/// A shared count, forgotten after `expires_us` (0: when idle at zero).
#[derive(Debug, Default)]
pub struct Counter {
    /// The count.
    pub value: AtomicU64,
    expires_us: AtomicU64,
}

/// Microseconds on a monotonic process clock.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    // Offset so that a TAT of 0 never means "now".
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX / 2) + 1_000_000
}

impl LocalStore {
    /// The process-wide store; its sweeper starts with the first call inside a runtime.
    pub fn global() -> &'static Arc<LocalStore> {
        static STORE: OnceLock<Arc<LocalStore>> = OnceLock::new();
        STORE.get_or_init(|| {
            let store = Arc::new(LocalStore::default());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let weak = Arc::downgrade(&store);
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(10));
                    loop {
                        tick.tick().await;
                        let Some(s) = weak.upgrade() else { return };
                        s.sweep();
                    }
                });
            }
            store
        })
    }

    /// Takes one token from bucket `key`.
    pub fn take(&self, key: &str, p: Params) -> Decision {
        let buckets = self.buckets.pin();
        // Borrowed under the pin guard: no reference count is touched per request.
        let cell = match buckets.get(key) {
            Some(c) => c,
            None => buckets.get_or_insert_with(key.into(), || AtomicU64::new(0)),
        };
        let now = now_us();
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            let tat = (cur != 0).then_some(cur);
            let (d, new) = gcra::take(now, tat, p);
            let Some(new) = new else { return d };
            match cell.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return d,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The counter for `key` (quotas, concurrency), created at 0; it may be forgotten once
    /// `ttl` has passed (a quota window's end), or, without one, when idle at zero.
    pub fn counter(&self, key: &str, ttl: Option<Duration>) -> Arc<Counter> {
        let counters = self.counters.pin();
        if let Some(c) = counters.get(key) {
            return c.clone();
        }
        counters
            .get_or_insert_with(key.into(), || {
                let expires = ttl.map_or(0, |t| {
                    now_us().saturating_add(u64::try_from(t.as_micros()).unwrap_or(u64::MAX / 2))
                });
                Arc::new(Counter {
                    value: AtomicU64::new(0),
                    expires_us: AtomicU64::new(expires),
                })
            })
            .clone()
    }

    /// Drops full buckets, expired counters and idle zero counters.
    pub fn sweep(&self) {
        let now = now_us();
        self.buckets
            .pin()
            .retain(|_, tat| tat.load(Ordering::Acquire) > now);
        self.counters.pin().retain(|_, c| {
            let expires = c.expires_us.load(Ordering::Acquire);
            if expires != 0 {
                return expires > now;
            }
            Arc::strong_count(c) > 1 || c.value.load(Ordering::Acquire) != 0
        });
    }
}
