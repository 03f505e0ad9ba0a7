//! The response cache's shared tier: opaque values (serialized cache entries) in Redis, by
//! string key, on the top-level `redis:` connection that the rate limiters use
//! ([`RedisStore`]).
//!
//! # Layout
//!
//! With `prefix` from [`TierSettings`] (say `frontdesk:cache:`):
//!
//! | what | Redis key | type |
//! |---|---|---|
//! | a value | `<prefix>v:<key>` | string, `PX` ttl |
//! | a tag's members | `<prefix>tag:<tag>` | sorted set: value key → its expiry (ms, server clock) |
//! | a lease | `<prefix>lease:<key>` | string: the holder's random token, `PX` ttl |
//! | purge messages | channel `<prefix>purge` | pub/sub |
//!
//! Values live under `v:`, not right after the prefix, so that no request-derived key can name
//! a tag set or a lease, and so that [`RedisTier::purge_prefix`] never matches either. In keys
//! and tags, `%`, `{` and `}` are written `%25`, `%7B`, `%7D`: a request-derived key cannot
//! carry a Redis Cluster hash tag and so cannot choose its slot (piling entries onto one node);
//! the configured `prefix` is used as is (an operator may put a hash tag there on purpose).
//!
//! A tag's set is a sorted set scored by each member's expiry, not a plain set: every `put`
//! drops the members that have expired (`ZREMRANGEBYSCORE`), so a tag that keeps being used
//! does not keep every key it was ever put on. The set's own TTL is extended to at least the
//! newest member's.
//!
//! # Bounds
//!
//! Every Redis round trip is bounded by [`TierSettings::timeout`]. [`RedisTier::get`],
//! [`RedisTier::put`], [`RedisTier::lease`], [`Lease::release`], [`RedisTier::is_leased`],
//! [`RedisTier::publish`] and [`RedisTier::delete`] of up to [`BATCH`] keys are bounded by it as
//! a whole; larger deletes and the purges take one round trip per batch and stop at the first
//! failure (each purge at most [`MAX_ROUNDS`] batches). The shared connection itself answers
//! within `max(redis.timeout, 200ms)` (see `limit::redis`), so a longer `timeout` here does
//! not wait longer than that for one reply. While Redis is down or not yet connected a call
//! fails at once ([`TierError::NotConnected`]) or within the timeout; nothing hangs or panics.
//! Every failure is counted ([`RedisTier::errors`]); the first of a streak is logged, and the
//! first success after it.
//!
//! Values read back are hostile input. [`RedisTier::get`] runs a script that compares
//! `STRLEN` with `max_object_size` on the server and returns only the length when it is over,
//! so no more than `max_object_size` bytes of a value ever cross the connection. Replies of an
//! unexpected shape are [`TierError::BadReply`], never a panic.
//!
//! # Redis Cluster
//!
//! get, put, delete, lease and release work on a cluster connection: each script touches one
//! key (one slot), and multi-key commands are split by slot: `UNLINK k1 k2 ...` is split per
//! slot by the cluster client and the counts summed. `put` on a single server is one atomic
//! script (value and tag sets together); on a cluster the tag sets (each in its own slot) are
//! written first, concurrently, then the value, so a failed `put` never leaves a value that
//! its tags do not reach. `purge_tag` reads its set in batches and unlinks the members (split
//! by slot); `purge_prefix` runs `SCAN` on every primary. A purge that meets a failover or a
//! resharding half way may miss keys (and fail or not); run it again.
//!
//! Pub/sub uses classic `PUBLISH`/`SUBSCRIBE`, which a Redis Cluster forwards to every node:
//! [`RedisTier::subscribe`] holds its own connection to the `url`, or to one of the `cluster`
//! seeds (the next one in turn after each failure).
//!
//! # Sharing the limiter's connection
//!
//! The tier sends its commands on the limiter store's multiplexed connection: one socket, with
//! replies in order. A large value being written or read delays the limiter's replies behind it
//! on that socket by its transfer time; keep `max_object_size` modest when `redis.timeout` is
//! tight.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{IntoConnectionInfo, PushKind, Value};

use crate::limit::redis::{Conn, RedisStore};

/// Keys per `UNLINK`, and members read from a tag set per purge round.
pub const BATCH: usize = 256;
/// `COUNT` of each `SCAN` in [`RedisTier::purge_prefix`] (work per round, not a hard limit on
/// the keys one round returns).
pub const SCAN_COUNT: usize = 1000;
/// Rounds one purge may take (per node, for `SCAN`) before it gives up with
/// [`TierError::Unfinished`]: a guard against a cursor that never ends, or a tag that is
/// refilled faster than it is purged.
pub const MAX_ROUNDS: u32 = 100_000;
/// Published messages over this are refused by [`RedisTier::publish`] and ignored by
/// [`RedisTier::subscribe`].
pub const MAX_MESSAGE: usize = 64 * 1024;
/// TTLs are clamped to at most this (ten years), and to at least 1 ms.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How often the subscriber PINGs its connection, so a server that stalls without closing the
/// socket is noticed.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Lua shared by the put and tag scripts: `now_ms()` on the server's clock, and `tag(set,
/// member, now, ttl)`, which drops expired members, adds `member` scored by its expiry, and
/// extends the set's TTL to at least `ttl`.
const TAG_FNS: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function tag(set, member, now, ttl)
  redis.call('ZREMRANGEBYSCORE', set, '-inf', string.format('%d', now))
  redis.call('ZADD', set, string.format('%d', now + ttl), member)
  if redis.call('PTTL', set) < ttl then
    redis.call('PEXPIRE', set, string.format('%d', ttl))
  end
end
"#;

/// Single server: KEYS[1] the value key, KEYS[2..] its tags' sets; ARGV value, ttl in ms.
const PUT: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if #KEYS > 1 then
  local now, ttl = now_ms(), tonumber(ARGV[2])
  for i = 2, #KEYS do tag(KEYS[i], KEYS[1], now, ttl) end
end
return 1
"#;

/// Cluster: KEYS[1] one tag's set; ARGV the value key, ttl in ms.
const TAG: &str = r#"
tag(KEYS[1], ARGV[1], now_ms(), tonumber(ARGV[2]))
return 1
"#;

/// KEYS[1] a value key; ARGV max_object_size. The value (nil when missing), or its length (an
/// integer) when it is over the limit, so an oversized value is never sent.
const GET: &str = r#"
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[1]) then return n end
return redis.call('GET', KEYS[1])
"#;

/// KEYS[1] a lease; ARGV the holder's token. Deletes the lease only if the token still matches.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// KEYS[1] a tag set; ARGV member, score pairs as read before. Removes each member still at the
/// score read (one put again since keeps its place, to be purged in the next round).
const UNTAG: &str = r#"
local n = 0
for i = 1, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[i + 1]) then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
"#;

/// Why the Redis tier could not answer.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// Not connected (yet, or Redis is down).
    #[error("redis is not connected")]
    NotConnected,
    /// No answer within the tier's timeout.
    #[error("redis did not answer within the timeout")]
    Timeout,
    /// A value (on `put` or read back on `get`) over `max_object_size`, or a message over
    /// [`MAX_MESSAGE`]. Not a Redis failure: not counted in [`RedisTier::errors`].
    #[error("the value is over the size limit")]
    TooLarge,
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered with a reply of an unexpected shape.
    #[error("redis sent an unexpected reply: {0}")]
    BadReply(&'static str),
    /// A purge gave up after [`MAX_ROUNDS`] rounds; it deleted some keys and may be run again.
    #[error("the purge did not finish within its round limit")]
    Unfinished,
}

/// How the tier uses Redis.
#[derive(Debug, Clone)]
pub struct TierSettings {
    /// The largest value `put` stores and `get` returns, in bytes.
    pub max_object_size: u64,
    /// Bound on each Redis round trip (see the module docs).
    pub timeout: Duration,
    /// Prepended to every Redis key and to the pub/sub channel, e.g. `frontdesk:cache:`.
    pub prefix: String,
}

/// The shared Redis tier. Cheap to clone: clones share the connection, the settings and the
/// counters.
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<RedisStore>,
    settings: TierSettings,
    put: redis::Script,
    tag: redis::Script,
    get: redis::Script,
    release: redis::Script,
    untag: redis::Script,
    /// Failures (of calls and of the subscriber's connections) since this tier was made.
    errors: AtomicU64,
    /// Published messages the subscriber ignored (over [`MAX_MESSAGE`], or malformed).
    ignored: AtomicU64,
    /// A failure streak of calls is in progress (only its first failure is logged).
    failing: AtomicBool,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("settings", &self.inner.settings)
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

/// A lease on a key (see [`RedisTier::lease`]): proof that this holder, and no other, may fill
/// the key until the lease's TTL ends. Dropping it without [`Lease::release`] leaves the lease
/// to expire.
#[derive(Debug)]
pub struct Lease {
    tier: RedisTier,
    /// The lease's Redis key.
    key: String,
    token: String,
}

impl Lease {
    /// Gives the lease up: deletes it only if it is still this holder's (a compare-and-delete
    /// script on the token). `Ok(true)` when it was and is now gone; `Ok(false)` when it had
    /// expired (and perhaps been taken by another holder, whose lease stays).
    pub async fn release(self) -> Result<bool, TierError> {
        let script = &self.tier.inner.release;
        let cmd = evalsha(script, &[self.key.as_bytes()], &[self.token.as_bytes()]);
        let n = self
            .tier
            .call(|mut c| async move { count(eval(&mut c, script, &cmd).await?) })
            .await?;
        Ok(n > 0)
    }
}

impl RedisTier {
    /// A tier on `store`'s connection. Makes no connection of its own (only
    /// [`RedisTier::subscribe`] does).
    pub fn new(store: Arc<RedisStore>, settings: TierSettings) -> Self {
        let with_fns = |body: &str| redis::Script::new(&format!("{TAG_FNS}{body}"));
        RedisTier {
            inner: Arc::new(Inner {
                store,
                settings,
                put: with_fns(PUT),
                tag: with_fns(TAG),
                get: redis::Script::new(GET),
                release: redis::Script::new(RELEASE),
                untag: redis::Script::new(UNTAG),
                errors: AtomicU64::new(0),
                ignored: AtomicU64::new(0),
                failing: AtomicBool::new(false),
            }),
        }
    }

    /// The settings this tier was made with.
    pub fn settings(&self) -> &TierSettings {
        &self.inner.settings
    }

    /// Failures since this tier was made: calls that failed (not connected, timed out, a Redis
    /// error, a bad reply; not [`TierError::TooLarge`]) and the subscriber's lost or failed
    /// connections. For metrics.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Published messages the subscribers of this tier ignored: over [`MAX_MESSAGE`], or not a
    /// byte string. For metrics.
    pub fn ignored_messages(&self) -> u64 {
        self.inner.ignored.load(Ordering::Relaxed)
    }

    /// The Redis key a value for `key` is stored under: `<prefix>v:<key>`, with `%`, `{`, `}`
    /// in `key` written `%25`, `%7B`, `%7D`. For operators and tests; callers pass plain keys.
    pub fn value_key(&self, key: &str) -> String {
        self.redis_key("v:", key)
    }

    /// The Redis key of `tag`'s set of members: `<prefix>tag:<tag>`, encoded as
    /// [`RedisTier::value_key`].
    pub fn tag_key(&self, tag: &str) -> String {
        self.redis_key("tag:", tag)
    }

    /// The Redis key of the lease on `key`: `<prefix>lease:<key>`, encoded as
    /// [`RedisTier::value_key`].
    pub fn lease_key(&self, key: &str) -> String {
        self.redis_key("lease:", key)
    }

    /// The pub/sub channel of [`RedisTier::publish`] and [`RedisTier::subscribe`]:
    /// `<prefix>purge`.
    pub fn channel(&self) -> String {
        format!("{}purge", self.inner.settings.prefix)
    }

    /// The value stored for `key`, or `None` when there is none (missing or expired). A value
    /// over `max_object_size` is [`TierError::TooLarge`], found on the server (no more than
    /// `max_object_size` bytes are ever read). A key that holds something other than a string
    /// is a [`TierError::Redis`] (`WRONGTYPE`).
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, TierError> {
        let vkey = self.value_key(key);
        let max = self.inner.settings.max_object_size;
        let reply = self
            .call(|mut c| {
                let script = &self.inner.get;
                let cmd = evalsha(script, &[vkey.as_bytes()], &[max.to_string().as_bytes()]);
                async move { Ok(eval(&mut c, script, &cmd).await?) }
            })
            .await?;
        match reply {
            Value::Nil => Ok(None),
            Value::BulkString(v) => {
                if u64::try_from(v.len()).unwrap_or(u64::MAX) > max {
                    return Err(TierError::TooLarge);
                }
                Ok(Some(Bytes::from(v)))
            }
            Value::Int(_) => Err(TierError::TooLarge),
            _ => Err(self.bad_reply("get: neither a value, nil nor a length")),
        }
    }

    /// Stores `value` under `key` for `ttl` (clamped to 1 ms..[`MAX_TTL`]), replacing any
    /// value there, and adds `key` to each tag's set, whose TTL is extended to at least `ttl`.
    /// A value over `max_object_size` is refused ([`TierError::TooLarge`]) without contacting
    /// Redis. One round trip (one atomic script) on a single server; on a cluster two (the tag
    /// sets concurrently, then the value). After an error (a timeout especially) the value may
    /// or may not be stored; the tag sets may have been written either way.
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        tags: &[String],
    ) -> Result<(), TierError> {
        if u64::try_from(value.len()).unwrap_or(u64::MAX) > self.inner.settings.max_object_size {
            return Err(TierError::TooLarge);
        }
        let ttl = ttl_ms(ttl).to_string();
        let vkey = self.value_key(key);
        let sets: Vec<String> = tags.iter().map(|t| self.tag_key(t)).collect();
        self.call(|c| async move {
            match &c {
                Conn::Single(_) => {
                    let mut c = c;
                    let mut keys = vec![vkey.as_bytes()];
                    keys.extend(sets.iter().map(String::as_bytes));
                    let cmd = evalsha(&self.inner.put, &keys, &[&value[..], ttl.as_bytes()]);
                    eval(&mut c, &self.inner.put, &cmd).await?;
                }
                Conn::Cluster(_) => {
                    let script = &self.inner.tag;
                    let calls: Vec<BoxFuture<'_, redis::RedisResult<Value>>> = sets
                        .iter()
                        .map(|set| {
                            let mut c = c.clone();
                            let cmd = evalsha(
                                script,
                                &[set.as_bytes()],
                                &[vkey.as_bytes(), ttl.as_bytes()],
                            );
                            Box::pin(async move { eval(&mut c, script, &cmd).await })
                                as BoxFuture<'_, _>
                        })
                        .collect();
                    for r in join_all(calls).await {
                        r?;
                    }
                    let mut c = c;
                    redis::cmd("SET")
                        .arg(vkey.as_bytes())
                        .arg(&value[..])
                        .arg("PX")
                        .arg(ttl.as_bytes())
                        .query_async::<Value>(&mut c)
                        .await?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Deletes the values of `keys` (`UNLINK`, so a large value is freed in the background).
    /// Returns how many existed. Their tag sets keep the members until they expire or are
    /// purged (harmless: a purge of a gone key finds nothing).
    pub async fn delete(&self, keys: &[String]) -> Result<u64, TierError> {
        let vkeys: Vec<String> = keys.iter().map(|k| self.value_key(k)).collect();
        let mut n = 0;
        for chunk in vkeys.chunks(BATCH) {
            n += self.unlink(chunk.iter().map(String::as_bytes)).await?;
        }
        Ok(n)
    }

    /// Deletes every value in `tag`'s set and empties the set (an empty set is gone). Returns
    /// how many values existed. Works in rounds of [`BATCH`] members: read them with their
    /// scores, unlink the values, and remove each member whose score did not change meanwhile
    /// (a key put again during the purge stays in the set and goes in the next round). Members
    /// that are not this tier's value keys are removed from the set, never deleted.
    pub async fn purge_tag(&self, tag: &str) -> Result<u64, TierError> {
        let set = self.tag_key(tag);
        let ours = self.redis_key("v:", "");
        let mut n = 0;
        for _ in 0..MAX_ROUNDS {
            let reply = self
                .call(|mut c| {
                    let mut cmd = redis::cmd("ZRANGE");
                    cmd.arg(set.as_bytes())
                        .arg(0)
                        .arg(BATCH - 1)
                        .arg("WITHSCORES");
                    async move { Ok(cmd.query_async::<Value>(&mut c).await?) }
                })
                .await?;
            let Some(members) = scored_members(reply) else {
                return Err(self.bad_reply("ZRANGE WITHSCORES: not member, score pairs"));
            };
            if members.is_empty() {
                return Ok(n);
            }
            let values = members
                .iter()
                .map(|(m, _)| m.as_slice())
                .filter(|m| m.starts_with(ours.as_bytes()));
            n += self.unlink(values).await?;
            self.call(|mut c| {
                let script = &self.inner.untag;
                let args: Vec<&[u8]> = members
                    .iter()
                    .flat_map(|(m, s)| [m.as_slice(), s.as_slice()])
                    .collect();
                let cmd = evalsha(script, &[set.as_bytes()], &args);
                async move { count(eval(&mut c, script, &cmd).await?) }
            })
            .await?;
        }
        Err(self.unfinished())
    }

    /// Deletes every value whose key starts with `key_prefix` (`SCAN MATCH` with the glob
    /// characters `* ? [ ] \` of the prefix escaped, on every primary of a cluster; each key
    /// found is checked to start with the literal prefix before it is unlinked). Tag sets and
    /// leases are never matched. Returns how many values it deleted.
    pub async fn purge_prefix(&self, key_prefix: &str) -> Result<u64, TierError> {
        let literal = self.value_key(key_prefix);
        let mut pattern = glob_escape(&literal);
        pattern.push('*');
        // The first step on every node: one server, or each primary of a cluster.
        let first: Vec<(Option<(String, u16)>, Value)> = self
            .call(|c| {
                let cmd = scan_cmd(b"0", &pattern);
                async move {
                    match c {
                        Conn::Single(mut c) => Ok(vec![(None, cmd.query_async(&mut c).await?)]),
                        Conn::Cluster(mut c) => {
                            let all =
                                RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                            let Value::Map(nodes) = c.route_command(cmd, all).await? else {
                                return Err(TierError::BadReply(
                                    "SCAN on every primary: not a map",
                                ));
                            };
                            nodes
                                .into_iter()
                                .map(|(addr, reply)| match (node_address(&addr), reply) {
                                    (_, Value::ServerError(e)) => Err(TierError::Redis(e.into())),
                                    (None, _) => Err(TierError::BadReply("SCAN: a node address")),
                                    (node, reply) => Ok((node, reply)),
                                })
                                .collect()
                        }
                    }
                }
            })
            .await?;
        let mut n = 0;
        for (node, mut reply) in first {
            let mut rounds = 0;
            loop {
                let Some((cursor, keys)) = scan_reply(reply) else {
                    return Err(self.bad_reply("SCAN: not a cursor and keys"));
                };
                let keys: Vec<&[u8]> = keys
                    .iter()
                    .map(Vec::as_slice)
                    .filter(|k| k.starts_with(literal.as_bytes()))
                    .collect();
                for chunk in keys.chunks(BATCH) {
                    n += self.unlink(chunk.iter().copied()).await?;
                }
                if cursor == b"0" {
                    break;
                }
                rounds += 1;
                if rounds >= MAX_ROUNDS {
                    return Err(self.unfinished());
                }
                reply = self.scan_node(node.as_ref(), &cursor, &pattern).await?;
            }
        }
        Ok(n)
    }

    /// Takes the lease on `key` for `ttl` (clamped as in [`RedisTier::put`]): `SET NX PX` with
    /// a random 128-bit token. `None` when another holder has it. A lease is advisory (for
    /// request collapsing across instances); its token is unique, not secret.
    pub async fn lease(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, TierError> {
        let lkey = self.lease_key(key);
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let reply = self
            .call(|mut c| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(lkey.as_bytes())
                    .arg(token.as_bytes())
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms(ttl));
                async move { Ok(cmd.query_async::<Value>(&mut c).await?) }
            })
            .await?;
        match reply {
            Value::Okay => Ok(Some(Lease {
                tier: self.clone(),
                key: lkey,
                token,
            })),
            Value::SimpleString(s) if s == "OK" => Ok(Some(Lease {
                tier: self.clone(),
                key: lkey,
                token,
            })),
            Value::Nil => Ok(None),
            _ => Err(self.bad_reply("SET NX: neither OK nor nil")),
        }
    }

    /// Whether someone holds the lease on `key`. A caller waiting for another instance to fill
    /// a key polls [`RedisTier::get`] with backoff and, when the lease is gone but the value is
    /// not there (the holder gave up), may take the lease itself. No blocking wait is provided.
    pub async fn is_leased(&self, key: &str) -> Result<bool, TierError> {
        let lkey = self.lease_key(key);
        let n = self
            .call(|mut c| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(lkey.as_bytes());
                async move { count(cmd.query_async::<Value>(&mut c).await?) }
            })
            .await?;
        Ok(n > 0)
    }

    /// Publishes `message` on [`RedisTier::channel`]. A message over [`MAX_MESSAGE`] is refused
    /// ([`TierError::TooLarge`]). Returns how many subscribers Redis handed it to: on a single
    /// server, all of them; on a cluster, only those connected to the node that took the
    /// `PUBLISH` (the cluster forwards it to the others), so it can be lower than the total.
    pub async fn publish(&self, message: &[u8]) -> Result<u64, TierError> {
        if message.len() > MAX_MESSAGE {
            return Err(TierError::TooLarge);
        }
        let channel = self.channel();
        self.call(|mut c| {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(channel.as_bytes()).arg(message);
            async move { count(cmd.query_async::<Value>(&mut c).await?) }
        })
        .await
    }

    /// Starts a task that holds a pub/sub connection subscribed to [`RedisTier::channel`] and
    /// calls `on_message` with each message's payload, in order, from that task (keep it
    /// short; a panic in it is caught and logged). Messages over [`MAX_MESSAGE`] are ignored
    /// and counted ([`RedisTier::ignored_messages`]); note that the client has read such a
    /// message whole before it can be ignored (Redis bounds it by `proto-max-bulk-len`).
    ///
    /// The connection is its own, made from `redis.url` (or the `cluster` seeds in turn) and
    /// speaking RESP3, which needs Redis 6 or later. It is PINGed every second; when it is
    /// lost, or cannot be made, the task reconnects with backoff (100 ms doubling to 1 s) and
    /// subscribes again. Messages published while it is disconnected are lost: a caller that
    /// needs them must resynchronize after a reconnect by other means. Failures are counted in
    /// [`RedisTier::errors`]; the first of a streak is logged, and the resubscription after
    /// it. Must run inside a runtime; abort the returned handle to stop.
    pub fn subscribe(
        &self,
        on_message: Arc<dyn Fn(Bytes) + Send + Sync>,
    ) -> tokio::task::AbortHandle {
        let cfg = self.inner.store.config();
        let urls = match &cfg.url {
            Some(url) => vec![url.clone()],
            None => cfg.cluster.clone(),
        };
        let sub = Subscriber {
            inner: self.inner.clone(),
            channel: self.channel(),
            on_message,
            wait: self.inner.settings.timeout.max(Duration::from_millis(500)),
        };
        tokio::spawn(sub.run(urls)).abort_handle()
    }

    // === internals ===

    fn redis_key(&self, kind: &str, name: &str) -> String {
        let prefix = &self.inner.settings.prefix;
        let mut k = String::with_capacity(prefix.len() + kind.len() + name.len() + 8);
        k.push_str(prefix);
        k.push_str(kind);
        for ch in name.chars() {
            match ch {
                '%' => k.push_str("%25"),
                '{' => k.push_str("%7B"),
                '}' => k.push_str("%7D"),
                c => k.push(c),
            }
        }
        k
    }

    /// `UNLINK` of up to [`BATCH`] keys in one bounded call (nothing to do for none).
    async fn unlink<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Result<u64, TierError> {
        let mut cmd = redis::cmd("UNLINK");
        let mut any = false;
        for k in keys {
            cmd.arg(k);
            any = true;
        }
        if !any {
            return Ok(0);
        }
        self.call(|mut c| async move { count(cmd.query_async::<Value>(&mut c).await?) })
            .await
    }

    /// One `SCAN` step on a single server (`node` None) or on one cluster node.
    async fn scan_node(
        &self,
        node: Option<&(String, u16)>,
        cursor: &[u8],
        pattern: &str,
    ) -> Result<Value, TierError> {
        self.call(|c| {
            let cmd = scan_cmd(cursor, pattern);
            async move {
                match (c, node) {
                    (Conn::Single(mut c), None) => Ok(cmd.query_async(&mut c).await?),
                    (Conn::Cluster(mut c), Some((host, port))) => {
                        let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        Ok(c.route_command(cmd, at).await?)
                    }
                    _ => Err(TierError::BadReply(
                        "the connection changed kind during a scan",
                    )),
                }
            }
        })
        .await
    }

    /// Runs one call on the current connection within the timeout, and counts and logs it.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, TierError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, TierError>>,
    {
        let result = match self.inner.store.connection() {
            None => Err(TierError::NotConnected),
            Some(c) => match tokio::time::timeout(self.inner.settings.timeout, f(c)).await {
                Ok(r) => r,
                Err(_) => Err(TierError::Timeout),
            },
        };
        match &result {
            Ok(_) => {
                if self.inner.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis answers again; the shared cache tier resumed");
                }
            }
            Err(e) => self.note_failure(e),
        }
        result
    }

    fn note_failure(&self, e: &TierError) {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        if !self.inner.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "redis cache tier failed; serving without it");
        }
    }

    /// A bad reply found after the call succeeded: counted and logged as a failure.
    fn bad_reply(&self, what: &'static str) -> TierError {
        self.count_err(TierError::BadReply(what))
    }

    fn unfinished(&self) -> TierError {
        self.count_err(TierError::Unfinished)
    }

    fn count_err(&self, e: TierError) -> TierError {
        self.note_failure(&e);
        e
    }
}

/// The pub/sub task of [`RedisTier::subscribe`].
struct Subscriber {
    inner: Arc<Inner>,
    channel: String,
    on_message: Arc<dyn Fn(Bytes) + Send + Sync>,
    /// Bound on connecting, subscribing and each PING.
    wait: Duration,
}

impl Subscriber {
    async fn run(self, urls: Vec<String>) {
        let clients: Vec<redis::Client> = urls
            .iter()
            .filter_map(|u| match resp3_client(u) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cache purge subscriber: a bad redis url");
                    None
                }
            })
            .collect();
        if clients.is_empty() {
            tracing::warn!("cache purge subscriber: no usable redis url; not subscribing");
            return;
        }
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        for client in clients.iter().cycle() {
            let reason = match self.connect(client).await {
                Ok((mut conn, mut rx)) => {
                    if failing {
                        tracing::info!("cache purge subscriber: subscribed again");
                    }
                    failing = false;
                    backoff = Duration::from_millis(100);
                    self.listen(&mut conn, &mut rx).await
                }
                Err(e) => e,
            };
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
            if !failing {
                tracing::warn!(error = %reason, "cache purge subscriber: no redis connection; reconnecting");
                failing = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn connect(
        &self,
        client: &redis::Client,
    ) -> Result<
        (
            redis::aio::MultiplexedConnection,
            tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
        ),
        String,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.wait))
            .set_response_timeout(Some(self.wait))
            .set_push_sender(tx);
        let made = tokio::time::timeout(self.wait * 2, async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            conn.subscribe(self.channel.as_str()).await?;
            Ok::<_, redis::RedisError>(conn)
        })
        .await;
        match made {
            Ok(Ok(conn)) => Ok((conn, rx)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within the timeout".into()),
        }
    }

    /// Delivers messages until the connection is lost; returns why.
    async fn listen(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    ) -> String {
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.reset();
        loop {
            tokio::select! {
                push = rx.recv() => match push {
                    None => return "the connection closed".into(),
                    Some(p) => match p.kind {
                        PushKind::Disconnection => return "the connection closed".into(),
                        PushKind::Message => self.deliver(p.data),
                        PushKind::Unsubscribe => return "unsubscribed by the server".into(),
                        _ => {}
                    },
                },
                _ = health.tick() => {
                    let ping = redis::cmd("PING");
                    match tokio::time::timeout(self.wait, ping.query_async::<Value>(conn)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return e.to_string(),
                        Err(_) => return "no answer to PING within the timeout".into(),
                    }
                }
            }
        }
    }

    /// One `message` push: `[channel, payload]`.
    fn deliver(&self, data: Vec<Value>) {
        let mut data = data.into_iter();
        let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
            self.inner.ignored.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !matches!(&channel, Value::BulkString(c) if c.as_slice() == self.channel.as_bytes()) {
            return;
        }
        let payload = match payload {
            Value::BulkString(p) if p.len() <= MAX_MESSAGE => p,
            _ => {
                self.inner.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "cache purge subscriber: ignored a message (too large or not bytes)"
                );
                return;
            }
        };
        let f = &self.on_message;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(Bytes::from(payload))))
            .is_err()
        {
            tracing::error!("cache purge subscriber: the message handler panicked");
        }
    }
}

/// A client for `url` that speaks RESP3 (push messages on a multiplexed connection).
fn resp3_client(url: &str) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls every future until all are done; their outputs in order.
async fn join_all<T>(mut futs: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(out.iter_mut().filter_map(Option::take).collect())
        }
    })
    .await
}

/// `EVALSHA` of `script` (the value is copied once, into the command).
fn evalsha(script: &redis::Script, keys: &[&[u8]], args: &[&[u8]]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// Runs `cmd` (an [`evalsha`] of `script`), loading the script first if Redis does not have it.
async fn eval(c: &mut Conn, script: &redis::Script, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
    match cmd.query_async::<Value>(c).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.prepare_invoke().load_async(c).await?;
            cmd.query_async(c).await
        }
        r => r,
    }
}

fn scan_cmd(cursor: &[u8], pattern: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT);
    cmd
}

/// A non-negative integer reply (a count).
fn count(v: Value) -> Result<u64, TierError> {
    match v {
        Value::Int(n) => u64::try_from(n).map_err(|_| TierError::BadReply("a negative count")),
        _ => Err(TierError::BadReply("not an integer")),
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.min(MAX_TTL).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// `s` with Redis glob's special characters escaped, to match literally in `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A cluster node's `host:port` as the cluster client names it; `None` when it is not one.
fn node_address(v: &Value) -> Option<(String, u16)> {
    let s = match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?,
        Value::SimpleString(s) => s.as_str(),
        _ => return None,
    };
    let (host, port) = s.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// A `SCAN` reply: the next cursor and the keys.
fn scan_reply(v: Value) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let Value::Array(parts) = v else {
        return None;
    };
    let mut parts = parts.into_iter();
    let (Some(Value::BulkString(cursor)), Some(Value::Array(keys)), None) =
        (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let keys = keys
        .into_iter()
        .map(|k| match k {
            Value::BulkString(k) => Some(k),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((cursor, keys))
}

/// A `ZRANGE .. WITHSCORES` reply: (member, score) pairs. RESP2 sends a flat array of bulk
/// strings; RESP3 (a `redis.url` with `protocol=resp3`) pairs of member and double.
fn scored_members(v: Value) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let Value::Array(items) = v else {
        return None;
    };
    if items.len() > 2 * BATCH {
        return None;
    }
    let score = |s: Value| match s {
        Value::BulkString(s) => Some(s),
        Value::Double(d) if d.is_finite() => Some(format!("{d}").into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter().peekable();
    while let Some(item) = items.next() {
        match item {
            Value::BulkString(m) => {
                let s = score(items.next()?)?;
                out.push((m, s));
            }
            Value::Array(pair) => {
                let mut pair = pair.into_iter();
                let (Some(Value::BulkString(m)), Some(s), None) =
                    (pair.next(), pair.next(), pair.next())
                else {
                    return None;
                };
                out.push((m, score(s)?));
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_escape_makes_every_special_character_literal() {
        assert_eq!(glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
        assert_eq!(glob_escape("plain:key/"), "plain:key/");
    }

    #[test]
    fn scan_reply_shapes() {
        let ok = Value::Array(vec![
            Value::BulkString(b"17".to_vec()),
            Value::Array(vec![Value::BulkString(b"k".to_vec())]),
        ]);
        assert_eq!(scan_reply(ok), Some((b"17".to_vec(), vec![b"k".to_vec()])));
        assert_eq!(scan_reply(Value::Int(3)), None);
        let bad_key = Value::Array(vec![
            Value::BulkString(b"0".to_vec()),
            Value::Array(vec![Value::Int(1)]),
        ]);
        assert_eq!(scan_reply(bad_key), None);
        let extra = Value::Array(vec![
            Value::BulkString(b"0".to_vec()),
            Value::Array(vec![]),
            Value::Nil,
        ]);
        assert_eq!(scan_reply(extra), None);
    }

    #[test]
    fn scored_members_in_both_protocols() {
        let resp2 = Value::Array(vec![
            Value::BulkString(b"a".to_vec()),
            Value::BulkString(b"10".to_vec()),
            Value::BulkString(b"b".to_vec()),
            Value::BulkString(b"20".to_vec()),
        ]);
        assert_eq!(
            scored_members(resp2),
            Some(vec![
                (b"a".to_vec(), b"10".to_vec()),
                (b"b".to_vec(), b"20".to_vec())
            ])
        );
        let resp3 = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"a".to_vec()),
            Value::Double(1_700_000_000_123.0),
        ])]);
        assert_eq!(
            scored_members(resp3),
            Some(vec![(b"a".to_vec(), b"1700000000123".to_vec())])
        );
        // A member without its score, a score that is not a number, an oversized reply.
        assert_eq!(
            scored_members(Value::Array(vec![Value::BulkString(b"a".to_vec())])),
            None
        );
        assert_eq!(
            scored_members(Value::Array(vec![
                Value::BulkString(b"a".to_vec()),
                Value::Nil
            ])),
            None
        );
        let many = vec![Value::BulkString(b"x".to_vec()); 2 * BATCH + 2];
        assert_eq!(scored_members(Value::Array(many)), None);
    }

    #[test]
    fn node_addresses() {
        assert_eq!(
            node_address(&Value::BulkString(b"127.0.0.1:7000".to_vec())),
            Some(("127.0.0.1".to_string(), 7000))
        );
        assert_eq!(
            node_address(&Value::BulkString(b"::1:7000".to_vec())),
            Some(("::1".to_string(), 7000))
        );
        assert_eq!(node_address(&Value::BulkString(b"nohost".to_vec())), None);
        assert_eq!(node_address(&Value::Int(1)), None);
    }

    #[test]
    fn count_refuses_negative_and_non_integers() {
        assert_eq!(count(Value::Int(3)).ok(), Some(3));
        assert!(count(Value::Int(-1)).is_err());
        assert!(count(Value::Nil).is_err());
    }

    #[test]
    fn ttls_are_clamped() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_micros(10)), 1);
        assert_eq!(ttl_ms(Duration::from_secs(2)), 2000);
        assert_eq!(ttl_ms(Duration::MAX), ttl_ms(MAX_TTL));
    }
}
