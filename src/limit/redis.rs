//! The Redis store: limiter state shared by every gateway instance.
//!
//! One connection per config (a connection manager for `url`, a cluster connection for `cluster`;
//! both reconnect by themselves; no connection per request), made in the background so a gateway
//! starts while Redis is down. Every call is bounded by
//! `redis.timeout`; a failure or a timeout is a [`StoreError`] for the caller's
//! `on_store_error` policy. The first failure of a streak is logged; all are counted.
//!
//! The GCRA script runs on the Redis server's clock (`TIME`), so instances' clocks do not matter,
//! and it mirrors `gcra::take` exactly (microseconds, integer math).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use frontdesk_config::RedisConfig;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;

use super::gcra::{Decision, Params};

/// Why Redis could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not connected (yet, or Redis is down).
    #[error("redis is not connected")]
    NotConnected,
    /// No answer within `redis.timeout`.
    #[error("redis did not answer within the timeout")]
    Timeout,
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// GCRA on the server's clock. KEYS[1] bucket; ARGV interval_us, burst, and optionally `now`
/// in microseconds (only tests pass it, to compare this script with `gcra::take` on the same
/// times). Returns {allowed, remaining, retry_after_us, reset_us}, as `gcra::take`.
const GCRA: &str = r#"
local now
if ARGV[3] then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local latest = now + interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat > latest then
  return {0, 0, new_tat - latest, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((latest - new_tat) / interval), 0, new_tat - now}
"#;

/// Counts one request in a quota window. KEYS[1] counter; ARGV limit, ttl_ms.
/// Returns {allowed, count}. A refused request is not counted.
const QUOTA: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return {0, n} end
n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {1, n}
"#;

/// A connection to one server (`url`) or to a Redis Cluster (`cluster`). Cheap to clone: clones
/// share the connection. Crate-visible so the cache's Redis tier (`cache::redis`) can send its own
/// commands on the same connection (see [`RedisStore::connection`]).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    /// Routes each script to the node owning its key's hash slot and follows MOVED/ASK.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Makes a connection (one attempt, with the client's own retries).
type Connect = Box<
    dyn Fn()
            -> std::pin::Pin<Box<dyn std::future::Future<Output = redis::RedisResult<Conn>> + Send>>
        + Send,
>;

/// A shared limiter store.
pub struct RedisStore {
    cfg: RedisConfig,
    conn: Arc<ArcSwapOption<Conn>>,
    gcra: redis::Script,
    quota: redis::Script,
    /// Failures since start.
    pub errors: AtomicU64,
    /// A failure streak is in progress (only its first failure is logged).
    failing: AtomicBool,
    connector: tokio::task::AbortHandle,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password a URL may carry.
        let urls: Vec<String> = self
            .cfg
            .url
            .iter()
            .chain(&self.cfg.cluster)
            .map(|u| frontdesk_config::redact_url(u))
            .collect();
        f.debug_struct("RedisStore")
            .field("urls", &urls)
            .field("connected", &self.conn.load().is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.connector.abort();
    }
}

impl RedisStore {
    /// Whether a connection exists (it may still be failing).
    pub fn is_connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// Starts connecting to the configured server (or cluster) in the background. Must run
    /// inside a runtime.
    pub fn start(cfg: &RedisConfig) -> Result<RedisStore, String> {
        let conn = Arc::new(ArcSwapOption::empty());
        let slot = conn.clone();
        let timeout = cfg.timeout.get().max(Duration::from_millis(200));
        let connect: Connect = match (&cfg.url, cfg.cluster.is_empty()) {
            (Some(url), _) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| format!("url: {e}"))?;
                // The manager's backoff doubles from 100ms; capped at 1s, shared limiting resumes
                // within about a second of Redis coming back (uncapped, the 6th retry waited
                // 3.2s or more).
                let mcfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_max_delay(Duration::from_secs(1));
                Box::new(move || {
                    let (client, mcfg) = (client.clone(), mcfg.clone());
                    Box::pin(async move {
                        ConnectionManager::new_with_config(client, mcfg)
                            .await
                            .map(Conn::Single)
                    })
                })
            }
            (None, false) => {
                let client = redis::cluster::ClusterClient::builder(cfg.cluster.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .max_retry_wait(1000)
                    .build()
                    .map_err(|e| format!("cluster: {e}"))?;
                Box::new(move || {
                    let client = client.clone();
                    Box::pin(async move { client.get_async_connection().await.map(Conn::Cluster) })
                })
            }
            (None, true) => return Err("set `url` (or `cluster`)".into()),
        };
        let connector = tokio::spawn(async move {
            // Once made, the connection reconnects by itself; until then, keep trying.
            loop {
                match connect().await {
                    Ok(c) => {
                        slot.store(Some(Arc::new(c)));
                        tracing::info!("connected to redis");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "redis not reachable yet");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
        .abort_handle();
        Ok(RedisStore {
            cfg: cfg.clone(),
            conn,
            gcra: redis::Script::new(GCRA),
            quota: redis::Script::new(QUOTA),
            errors: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            connector,
        })
    }

    /// The config this store was made from (a reload with the same config keeps the store).
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// The current connection (a clone sharing it), or `None` until one is made: for the other
    /// users of the `redis:` connection (the cache's Redis tier), which bound, count and log
    /// their own calls. Nothing here changes the limiter's calls or its [`RedisStore::errors`].
    pub(crate) fn connection(&self) -> Option<Conn> {
        self.conn.load_full().map(|c| (*c).clone())
    }

    /// Takes one token from bucket `key` on the server.
    pub async fn take(&self, key: &str, p: Params) -> Result<Decision, StoreError> {
        self.take_at(key, p, None).await
    }

    /// As [`RedisStore::take`], at `now` (microseconds) instead of the server's clock: for
    /// tests that compare the script with [`super::gcra::take`].
    pub async fn take_at(
        &self,
        key: &str,
        p: Params,
        now: Option<u64>,
    ) -> Result<Decision, StoreError> {
        let r: Result<(u64, u64, u64, u64), StoreError> = self
            .call(|mut c| {
                let mut inv = self.gcra.key(key);
                inv.arg(p.interval_us).arg(p.burst);
                if let Some(now) = now {
                    inv.arg(now);
                }
                async move { inv.invoke_async(&mut c).await }
            })
            .await;
        r.map(|(allowed, remaining, retry_after_us, reset_us)| Decision {
            allowed: allowed == 1,
            remaining,
            retry_after_us,
            reset_us,
        })
    }

    /// Counts one request against `limit` in the window `key`, which expires after `ttl`.
    /// Returns whether it was admitted and the count.
    pub async fn count(
        &self,
        key: &str,
        limit: u64,
        ttl: Duration,
    ) -> Result<(bool, u64), StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let r: Result<(u64, u64), StoreError> = self
            .call(|mut c| {
                let mut inv = self.quota.key(key);
                inv.arg(limit).arg(ttl_ms);
                async move { inv.invoke_async(&mut c).await }
            })
            .await;
        r.map(|(ok, n)| (ok == 1, n))
    }

    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let result = match self.conn.load_full() {
            None => Err(StoreError::NotConnected),
            Some(c) => match tokio::time::timeout(self.cfg.timeout.get(), f((*c).clone())).await {
                Ok(r) => r.map_err(StoreError::from),
                Err(_) => Err(StoreError::Timeout),
            },
        };
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis answers again; shared limiting resumed");
                }
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis limiter store failed; applying on_store_error");
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_never_shows_the_password() {
        let cfg = RedisConfig {
            url: Some("redis://app:hunter2@127.0.0.1:1/0".into()),
            cluster: Vec::new(),
            timeout: frontdesk_config::Dur(Duration::from_millis(20)),
        };
        let store = RedisStore::start(&cfg).expect("store");
        let shown = format!("{store:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
    }
}
