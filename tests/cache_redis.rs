//! The response cache's Redis tier (`cache::redis`) against a real `redis-server`: round trips,
//! expiry, oversized values written behind its back, deletes, tag and prefix purges (glob
//! characters in the prefix), leases, purge messages between two instances, Redis killed,
//! stalled and restarted, and a three-node Redis Cluster.
//!
//! Each test starts its own `redis-server` (see `common/redis.rs`); without one they are
//! skipped, except with `CI=true`, where that fails them. A plain `redis` client stands in for
//! other writers (values planted behind the tier's back, raw checks).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::{RedisCluster, RedisServer};
use frontdesk::cache::redis::{RedisTier, TierError, TierSettings, MAX_MESSAGE};
use frontdesk::config::{Dur, RedisConfig};
use frontdesk::limit::redis::RedisStore;
use tokio::sync::mpsc;

const MAX: u64 = 1024;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A connected store on `url` (or the `cluster` seeds).
async fn store(url: Option<String>, cluster: Vec<String>, timeout: Duration) -> Arc<RedisStore> {
    let store = RedisStore::start(&RedisConfig {
        url,
        cluster,
        timeout: Dur(timeout),
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store.is_connected() {
        assert!(Instant::now() < deadline, "RedisStore never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Arc::new(store)
}

fn tier_on(store: Arc<RedisStore>, prefix: &str, timeout: Duration) -> RedisTier {
    RedisTier::new(
        store,
        TierSettings {
            max_object_size: MAX,
            timeout,
            prefix: prefix.to_string(),
        },
    )
}

/// A tier on a single server, with a generous timeout (a loaded machine must not fail calls).
async fn tier(redis: &RedisServer, prefix: &str) -> RedisTier {
    let t = Duration::from_secs(2);
    tier_on(store(Some(redis.url()), Vec::new(), t).await, prefix, t)
}

/// A plain client, for writes and checks behind the tier's back.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn exists(c: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<u64>(c)
        .await
        .unwrap()
        == 1
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(ToString::to_string).collect()
}

const HOUR: Duration = Duration::from_secs(3600);

/// Polls `check` until it holds, for at most 15s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Subscribes `t`; the receiver gets each message.
fn listen(t: &RedisTier) -> (mpsc::UnboundedReceiver<Bytes>, tokio::task::AbortHandle) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = t.subscribe(Arc::new(move |m: Bytes| {
        let _ = tx.send(m);
    }));
    (rx, handle)
}

/// Publishes `ready` until every receiver has had one (so every subscription is in place), then
/// drains them.
async fn until_subscribed(t: &RedisTier, rxs: &mut [&mut mpsc::UnboundedReceiver<Bytes>]) {
    let mut got = vec![false; rxs.len()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.iter().any(|g| !g) {
        assert!(Instant::now() < deadline, "subscribers never received");
        let _ = t.publish(b"ready").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (rx, g) in rxs.iter_mut().zip(got.iter_mut()) {
            while rx.try_recv().is_ok() {
                *g = true;
            }
        }
    }
}

/// The next message other than `ready`, within 15s.
async fn next_message(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Bytes {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, rx.recv())
            .await
            .expect("a message within 15s")
            .expect("the subscriber is alive");
        if m.as_ref() != b"ready" {
            return m;
        }
    }
}

// === values ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_round_trip_binary_values_under_arbitrary_keys() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let t = tier(&redis, "fd:rt:").await;
    let mut c = raw(&redis.url()).await;

    assert_eq!(t.get("missing").await.unwrap(), None);
    let value = Bytes::from_static(b"\0head\r\nbody\xff");
    t.put("GET|example.com|/a", value.clone(), HOUR, &[])
        .await
        .unwrap();
    assert_eq!(t.get("GET|example.com|/a").await.unwrap(), Some(value));
    assert!(exists(&mut c, "fd:rt:v:GET|example.com|/a").await);

    // Replaced by a later put; an empty value is a value, not a miss.
    t.put("GET|example.com|/a", b("second"), HOUR, &[])
        .await
        .unwrap();
    assert_eq!(
        t.get("GET|example.com|/a").await.unwrap(),
        Some(b("second"))
    );
    t.put("empty", Bytes::new(), HOUR, &[]).await.unwrap();
    assert_eq!(t.get("empty").await.unwrap(), Some(Bytes::new()));

    // Keys with glob characters, hash-tag braces, percent signs and non-ASCII are kept apart.
    let odd = [
        "/a{b}c",
        "/a%7Bb%7Dc",
        "/*?[x]\\",
        "/ü/é",
        "tag:x",
        "lease:x",
    ];
    for (i, k) in odd.iter().enumerate() {
        t.put(k, b(&format!("v{i}")), HOUR, &[]).await.unwrap();
    }
    for (i, k) in odd.iter().enumerate() {
        assert_eq!(t.get(k).await.unwrap(), Some(b(&format!("v{i}"))), "{k}");
    }
    // No key can carry a hash tag of its own.
    assert_eq!(t.value_key("/a{b}c"), "fd:rt:v:/a%7Bb%7Dc");
    assert_eq!(t.value_key("/a%7Bb%7Dc"), "fd:rt:v:/a%257Bb%257Dc");
    // Keys never collide with tag sets or leases.
    assert_ne!(t.value_key("tag:x"), t.tag_key("x"));
    assert_ne!(t.value_key("lease:x"), t.lease_key("x"));

    // Exactly max_object_size is stored; one byte more is refused without touching Redis.
    let at_max = Bytes::from(vec![b'm'; MAX as usize]);
    t.put("max", at_max.clone(), HOUR, &[]).await.unwrap();
    assert_eq!(t.get("max").await.unwrap(), Some(at_max));
    let over = Bytes::from(vec![b'o'; MAX as usize + 1]);
    assert!(matches!(
        t.put("over", over, HOUR, &[]).await,
        Err(TierError::TooLarge)
    ));
    assert!(!exists(&mut c, &t.value_key("over")).await);
    assert_eq!(t.errors(), 0, "nothing failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_and_tag_sets_expire_with_their_ttl() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let t = tier(&redis, "fd:ttl:").await;
    let mut c = raw(&redis.url()).await;
    t.put("long", b("stays"), HOUR, &tags(&["tl"]))
        .await
        .unwrap();
    t.put(
        "short",
        b("goes"),
        Duration::from_millis(50),
        &tags(&["ts"]),
    )
    .await
    .unwrap();

    let pc = c.clone();
    let pttl = |k: String| {
        let mut c = pc.clone();
        async move {
            redis::cmd("PTTL")
                .arg(k)
                .query_async::<i64>(&mut c)
                .await
                .unwrap()
        }
    };
    let long = pttl(t.value_key("long")).await;
    assert!(long > 0 && long <= 3_600_000, "PTTL {long}");
    let set = pttl(t.tag_key("tl")).await;
    assert!(set > 0 && set <= 3_600_000, "tag set PTTL {set}");

    eventually("the short value expires", || async {
        t.get("short").await.unwrap().is_none()
    })
    .await;
    eventually("the short value's tag set expires", || async {
        !exists(&mut c.clone(), &t.tag_key("ts")).await
    })
    .await;
    assert_eq!(t.get("long").await.unwrap(), Some(b("stays")));
    assert!(exists(&mut c, &t.tag_key("tl")).await);

    // A put with a longer TTL extends the tag set's; a shorter one never shortens it.
    t.put("a", b("1"), Duration::from_secs(5), &tags(&["grow"]))
        .await
        .unwrap();
    t.put("b", b("2"), HOUR, &tags(&["grow"])).await.unwrap();
    t.put("c", b("3"), Duration::from_secs(5), &tags(&["grow"]))
        .await
        .unwrap();
    let grown = pttl(t.tag_key("grow")).await;
    assert!(
        grown > 5_000,
        "tag set PTTL {grown} was not extended to the hour"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_written_behind_the_tiers_back_are_checked_before_they_are_read() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let t = tier(&redis, "fd:big:").await;
    let mut c = raw(&redis.url()).await;
    let key = t.value_key("planted");

    // One byte over the limit: refused, and counted as no Redis failure.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(vec![b'x'; MAX as usize + 1])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(t.get("planted").await, Err(TierError::TooLarge)));
    // Far over (8 MiB): refused the same way.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(vec![b'x'; 8 << 20])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(t.get("planted").await, Err(TierError::TooLarge)));
    assert_eq!(t.errors(), 0);

    // At the limit: served.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(vec![b'y'; MAX as usize])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(t.get("planted").await.unwrap().unwrap().len(), MAX as usize);

    // Not a string at all: an error, counted, not a panic.
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(&key)
        .arg("a")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(t.get("planted").await, Err(TierError::Redis(_))));
    assert_eq!(t.errors(), 1);
    // And the tier still works afterwards.
    t.put("fine", b("ok"), HOUR, &[]).await.unwrap();
    assert_eq!(t.get("fine").await.unwrap(), Some(b("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_counts_the_values_that_existed() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let t = tier(&redis, "fd:del:").await;
    t.put("a", b("1"), HOUR, &[]).await.unwrap();
    t.put("b", b("2"), HOUR, &[]).await.unwrap();
    t.put("keep", b("3"), HOUR, &[]).await.unwrap();
    assert_eq!(t.delete(&tags(&["a", "b", "never"])).await.unwrap(), 2);
    assert_eq!(t.delete(&tags(&["a", "b"])).await.unwrap(), 0);
    assert_eq!(t.delete(&[]).await.unwrap(), 0);
    assert_eq!(t.get("a").await.unwrap(), None);
    assert_eq!(t.get("keep").await.unwrap(), Some(b("3")));

    // More keys than one UNLINK takes.
    let many: Vec<String> = (0..600).map(|i| format!("many/{i}")).collect();
    for k in &many {
        t.put(k, b("x"), HOUR, &[]).await.unwrap();
    }
    let mut asked = many.clone();
    asked.push("missing".into());
    assert_eq!(t.delete(&asked).await.unwrap(), 600);
}

// === purges ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_tag_removes_exactly_the_tagged_values() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let t = tier(&redis, "fd:tag:").await;
    let mut c = raw(&redis.url()).await;
    t.put("k1", b("1"), HOUR, &tags(&["red"])).await.unwrap();
    t.put("k2", b("2"), HOUR, &tags(&["red", "blue"]))
        .await
        .unwrap();
    t.put("k3", b("3"), HOUR, &tags(&["blue"])).await.unwrap();
    t.put("k4", b("4"), HOUR, &[]).await.unwrap();
    // A tag that is also the name of a key, and a key tagged after being put untagged.
    t.put("red", b("5"), HOUR, &[]).await.unwrap();
    t.put("k4", b("4"), HOUR, &tags(&["green"])).await.unwrap();

    assert_eq!(t.purge_tag("red").await.unwrap(), 2);
    assert_eq!(t.get("k1").await.unwrap(), None);
    assert_eq!(t.get("k2").await.unwrap(), None);
    assert_eq!(t.get("k3").await.unwrap(), Some(b("3")));
    assert_eq!(t.get("k4").await.unwrap(), Some(b("4")));
    assert_eq!(t.get("red").await.unwrap(), Some(b("5")));
    assert!(
        !exists(&mut c, &t.tag_key("red")).await,
        "the tag set is gone"
    );
    assert_eq!(t.purge_tag("red").await.unwrap(), 0);

    // k2 is gone already: blue's purge finds only k3.
    assert_eq!(t.purge_tag("blue").await.unwrap(), 1);
    assert_eq!(t.get("k3").await.unwrap(), None);
    assert_eq!(t.purge_tag("nothing").await.unwrap(), 0);

    // More members than one round takes.
    for i in 0..700 {
        t.put(&format!("bulk/{i}"), b("x"), HOUR, &tags(&["bulk"]))
            .await
            .unwrap();
    }
    assert_eq!(t.purge_tag("bulk").await.unwrap(), 700);
    assert_eq!(t.get("bulk/0").await.unwrap(), None);
    assert_eq!(t.get("bulk/699").await.unwrap(), None);
    assert_eq!(t.get("k4").await.unwrap(), Some(b("4")));

    // A planted member that is not one of the tier's value keys is dropped from the set, and
    // the key it names is left alone.
    let _: () = redis::cmd("SET")
        .arg("elsewhere")
        .arg("precious")
        .query_async(&mut c)
        .await
        .unwrap();
    t.put("k5", b("5"), HOUR, &tags(&["planted"]))
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(t.tag_key("planted"))
        .arg(1)
        .arg("elsewhere")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(t.purge_tag("planted").await.unwrap(), 1);
    assert!(exists(&mut c, "elsewhere").await);
    assert!(!exists(&mut c, &t.tag_key("planted")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_sets_drop_members_that_have_expired() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let t = tier(&redis, "fd:prune:").await;
    let mut c = raw(&redis.url()).await;
    // A long-lived member keeps the set alive while short-lived ones come and go.
    t.put("anchor", b("a"), HOUR, &tags(&["hot"]))
        .await
        .unwrap();
    for i in 0..20 {
        t.put(
            &format!("old/{i}"),
            b("x"),
            Duration::from_millis(20),
            &tags(&["hot"]),
        )
        .await
        .unwrap();
    }
    let card = |c: redis::aio::MultiplexedConnection| {
        let set = t.tag_key("hot");
        async move {
            let mut c = c;
            redis::cmd("ZCARD")
                .arg(set)
                .query_async::<u64>(&mut c)
                .await
                .unwrap()
        }
    };
    eventually("the old values expire", || async {
        t.get("old/19").await.unwrap().is_none()
    })
    .await;
    // The next put under the tag drops the expired members.
    t.put("new", b("y"), HOUR, &tags(&["hot"])).await.unwrap();
    assert_eq!(card(c.clone()).await, 2);
    assert_eq!(t.purge_tag("hot").await.unwrap(), 2);
    assert!(!exists(&mut c, &t.tag_key("hot")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_prefix_takes_glob_characters_literally() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let t = tier(&redis, "fd:pfx:").await;
    let mut c = raw(&redis.url()).await;
    // Real matches of the prefix `/a*b?[c]`, and keys its unescaped glob would also match.
    let real = ["/a*b?[c]", "/a*b?[c]/1", "/a*b?[c]{x}%"];
    let decoys = ["/a-b-c/1", "/azzbzc", "/a*b?c/1", "/a*b?[d]/1", "/A*b?[c]"];
    for k in real.iter().chain(&decoys) {
        t.put(k, b(k), HOUR, &tags(&["t"])).await.unwrap();
    }
    assert_eq!(t.purge_prefix("/a*b?[c]").await.unwrap(), 3);
    for k in real {
        assert_eq!(t.get(k).await.unwrap(), None, "{k} should be purged");
    }
    for k in decoys {
        assert_eq!(t.get(k).await.unwrap(), Some(b(k)), "{k} should stay");
    }

    // A trailing backslash must not escape the pattern's own `*`.
    t.put("/q\\1", b("1"), HOUR, &[]).await.unwrap();
    t.put("/q*", b("2"), HOUR, &[]).await.unwrap();
    assert_eq!(t.purge_prefix("/q\\").await.unwrap(), 1);
    assert_eq!(t.get("/q\\1").await.unwrap(), None);
    assert_eq!(t.get("/q*").await.unwrap(), Some(b("2")));

    // Many keys: several SCAN rounds and UNLINK batches.
    for i in 0..1500 {
        t.put(&format!("/many/{i}"), b("x"), HOUR, &[])
            .await
            .unwrap();
    }
    assert_eq!(t.purge_prefix("/many/").await.unwrap(), 1500);

    // Everything: values only. Tag sets, leases and another tier's values stay.
    let other = tier(&redis, "fd:pfx2:").await;
    other.put("/a-b-c/1", b("other"), HOUR, &[]).await.unwrap();
    let lease = t.lease("/azzbzc", HOUR).await.unwrap().unwrap();
    assert_eq!(t.purge_prefix("").await.unwrap(), 6);
    assert_eq!(t.get("/azzbzc").await.unwrap(), None);
    assert!(exists(&mut c, &t.tag_key("t")).await);
    assert!(t.is_leased("/azzbzc").await.unwrap());
    assert_eq!(other.get("/a-b-c/1").await.unwrap(), Some(b("other")));
    assert!(lease.release().await.unwrap());
}

// === leases ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_has_one_holder_and_only_its_holder_releases_it() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    // Two instances, as two gateways would have.
    let a = tier(&redis, "fd:lease:").await;
    let b2 = tier(&redis, "fd:lease:").await;

    let first = a.lease("/k", HOUR).await.unwrap().expect("free lease");
    assert!(b2.lease("/k", HOUR).await.unwrap().is_none());
    assert!(a.lease("/k", HOUR).await.unwrap().is_none());
    assert!(b2.is_leased("/k").await.unwrap());
    // Another key's lease is separate, and a lease is not a value.
    assert!(b2.lease("/other", HOUR).await.unwrap().is_some());
    assert_eq!(a.get("/k").await.unwrap(), None);

    assert!(first.release().await.unwrap());
    assert!(!a.is_leased("/k").await.unwrap());
    let second = b2.lease("/k", HOUR).await.unwrap().expect("released lease");
    assert!(second.release().await.unwrap());

    // A stale holder: its lease expired and someone else took the key; its release must not
    // free the new holder's lease.
    let stale = a
        .lease("/s", Duration::from_millis(30))
        .await
        .unwrap()
        .unwrap();
    eventually("the short lease expires", || async {
        !a.is_leased("/s").await.unwrap()
    })
    .await;
    let fresh = b2.lease("/s", HOUR).await.unwrap().expect("expired lease");
    assert!(!stale.release().await.unwrap());
    assert!(a.is_leased("/s").await.unwrap());
    assert!(a.lease("/s", HOUR).await.unwrap().is_none());
    assert!(fresh.release().await.unwrap());

    // A dropped lease stays until it expires.
    drop(a.lease("/d", HOUR).await.unwrap().unwrap());
    assert!(b2.is_leased("/d").await.unwrap());
}

// === pub/sub ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_purges_reach_every_subscribed_instance() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let a = tier(&redis, "fd:ps:").await;
    let b2 = tier(&redis, "fd:ps:").await;
    let unrelated = tier(&redis, "fd:other:").await;
    let (mut ra, ha) = listen(&a);
    let (mut rb, hb) = listen(&b2);
    let (mut ru, hu) = listen(&unrelated);
    until_subscribed(&a, &mut [&mut ra, &mut rb]).await;

    assert!(b2.publish(b"purge tag:red").await.unwrap() >= 2);
    assert_eq!(next_message(&mut ra).await, b("purge tag:red"));
    assert_eq!(next_message(&mut rb).await, b("purge tag:red"));
    let binary = [0u8, 255, b'\r', b'\n'];
    a.publish(&binary).await.unwrap();
    assert_eq!(next_message(&mut ra).await.as_ref(), &binary);
    assert_eq!(next_message(&mut rb).await.as_ref(), &binary);

    // Too large: refused by publish, and ignored by subscribers when someone else sends it.
    assert!(matches!(
        a.publish(&vec![b'x'; MAX_MESSAGE + 1]).await,
        Err(TierError::TooLarge)
    ));
    let mut c = raw(&redis.url()).await;
    let _: u64 = redis::cmd("PUBLISH")
        .arg(a.channel())
        .arg(vec![b'x'; MAX_MESSAGE + 1])
        .query_async(&mut c)
        .await
        .unwrap();
    a.publish(b"after").await.unwrap();
    assert_eq!(next_message(&mut ra).await, b("after"));
    assert_eq!(next_message(&mut rb).await, b("after"));
    assert_eq!(a.ignored_messages(), 1);
    assert_eq!(b2.ignored_messages(), 1);
    // At the limit: delivered.
    let at_max = vec![b'm'; MAX_MESSAGE];
    a.publish(&at_max).await.unwrap();
    assert_eq!(next_message(&mut rb).await.as_ref(), at_max.as_slice());

    // Another prefix is another channel.
    assert!(ru.try_recv().is_err());

    // A stopped subscriber receives nothing more; the other still does.
    ha.abort();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while ra.recv().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "an aborted subscriber kept its handler");
    a.publish(b"last").await.unwrap();
    assert_eq!(next_message(&mut rb).await, b("last"));
    hb.abort();
    hu.abort();
}

// === Redis down ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_calls_promptly_and_they_work_again_after_a_restart() {
    let Some(mut redis) = blocking(RedisServer::start) else {
        return;
    };
    let timeout = Duration::from_millis(300);
    let t = tier_on(
        store(Some(redis.url()), Vec::new(), timeout).await,
        "fd:kill:",
        timeout,
    );
    t.put("k", b("v"), HOUR, &tags(&["x"])).await.unwrap();
    let lease = t.lease("l", HOUR).await.unwrap().unwrap();
    blocking(|| redis.kill());

    // Every call fails, each well within a bound far above the timeout (no hang).
    let bound = Duration::from_secs(5);
    macro_rules! fails {
        ($call:expr) => {
            match tokio::time::timeout(bound, $call).await {
                Ok(r) => assert!(
                    r.is_err(),
                    "{} succeeded with redis down",
                    stringify!($call)
                ),
                Err(_) => panic!("{} hung with redis down", stringify!($call)),
            }
        };
    }
    fails!(t.get("k"));
    fails!(t.put("k", b("v2"), HOUR, &tags(&["x"])));
    fails!(t.delete(&tags(&["k"])));
    fails!(t.purge_tag("x"));
    fails!(t.purge_prefix(""));
    fails!(t.lease("l2", HOUR));
    fails!(t.is_leased("l"));
    fails!(t.publish(b"m"));
    fails!(lease.release());
    assert!(t.errors() >= 9, "errors counted: {}", t.errors());

    // A fresh, empty server on the same port: the shared connection comes back by itself.
    blocking(|| redis.restart());
    eventually("the tier works again", || async {
        t.put("k", b("again"), HOUR, &[]).await.is_ok()
    })
    .await;
    assert_eq!(t.get("k").await.unwrap(), Some(b("again")));
    assert!(t.lease("l", HOUR).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_times_calls_out() {
    let Some(mut redis) = blocking(RedisServer::start) else {
        return;
    };
    let timeout = Duration::from_millis(300);
    let t = tier_on(
        store(Some(redis.url()), Vec::new(), timeout).await,
        "fd:stall:",
        timeout,
    );
    t.put("k", b("v"), HOUR, &[]).await.unwrap();
    blocking(|| redis.stall());
    let r = tokio::time::timeout(Duration::from_secs(5), t.get("k"))
        .await
        .expect("get hung on a stalled redis");
    assert!(
        matches!(r, Err(TierError::Timeout | TierError::Redis(_))),
        "{r:?}"
    );
    let r = tokio::time::timeout(Duration::from_secs(5), t.lease("k", HOUR))
        .await
        .expect("lease hung on a stalled redis");
    assert!(r.is_err());
    blocking(|| redis.resume());
    eventually("the tier answers again", || async {
        t.get("k").await.ok() == Some(Some(b("v")))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resubscribes_after_redis_restarts() {
    let Some(mut redis) = blocking(RedisServer::start) else {
        return;
    };
    let t = tier(&redis, "fd:resub:").await;
    let (mut rx, handle) = listen(&t);
    until_subscribed(&t, &mut [&mut rx]).await;
    let before = t.errors();

    blocking(|| redis.restart());
    // The restarted server starts with no subscribers; the task subscribes again by itself.
    let mut c = raw(&redis.url()).await;
    let channel = t.channel();
    eventually("the subscriber is back", || {
        let mut c = c.clone();
        let channel = channel.clone();
        async move {
            let r: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut c)
                .await
                .unwrap();
            r.first().is_some_and(|(_, n)| *n == 1)
        }
    })
    .await;
    let _: u64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("after restart")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(next_message(&mut rx).await, b("after restart"));
    assert!(t.errors() > before, "the lost connection was counted");
    handle.abort();
}

// === Redis Cluster ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_on_a_redis_cluster() {
    let Some(cluster) = blocking(RedisCluster::start) else {
        return;
    };
    let timeout = Duration::from_secs(2);
    let a = tier_on(
        store(None, cluster.urls(), timeout).await,
        "fd:cl:",
        timeout,
    );
    let b2 = tier_on(
        store(None, cluster.urls(), timeout).await,
        "fd:cl:",
        timeout,
    );

    // Values with tags: the keys and the tag sets spread over the nodes.
    for i in 0..60 {
        let t = if i % 2 == 0 { "even" } else { "odd" };
        a.put(
            &format!("/p/{i}"),
            b(&i.to_string()),
            HOUR,
            &tags(&[t, "all"]),
        )
        .await
        .unwrap();
    }
    for i in 0..60 {
        assert_eq!(
            b2.get(&format!("/p/{i}")).await.unwrap(),
            Some(b(&i.to_string()))
        );
    }
    let with_keys = blocking(|| {
        cluster
            .nodes
            .iter()
            .filter(|n| n.cmd(&["DBSIZE"]).trim() != ":0")
            .count()
    });
    assert!(with_keys >= 2, "keys on {with_keys} node(s) only");

    // A multi-key delete across slots.
    let some: Vec<String> = (0..10).map(|i| format!("/p/{i}")).collect();
    assert_eq!(a.delete(&some).await.unwrap(), 10);
    assert_eq!(a.delete(&some).await.unwrap(), 0);

    // Tag purge: /p/11, 13, ..., 59 remain of the odd ones.
    assert_eq!(a.purge_tag("odd").await.unwrap(), 25);
    assert_eq!(b2.get("/p/11").await.unwrap(), None);
    assert_eq!(b2.get("/p/12").await.unwrap(), Some(b("12")));

    // Prefix purge on every primary: under /p/1 are the even 10..18 and the planted `/p/1*`.
    a.put("/p/1*", b("glob"), HOUR, &[]).await.unwrap();
    assert_eq!(a.purge_prefix("/p/1").await.unwrap(), 6);
    assert_eq!(a.get("/p/12").await.unwrap(), None);
    assert_eq!(a.get("/p/20").await.unwrap(), Some(b("20")));
    // The rest (the even 20..58); the tag set `all` then names only gone values.
    assert_eq!(a.purge_prefix("").await.unwrap(), 20);
    assert_eq!(a.purge_tag("all").await.unwrap(), 0);

    // Leases.
    let l = a.lease("/p/x", HOUR).await.unwrap().unwrap();
    assert!(b2.lease("/p/x", HOUR).await.unwrap().is_none());
    assert!(l.release().await.unwrap());
    assert!(b2.lease("/p/x", HOUR).await.unwrap().is_some());

    // Pub/sub through the seeds: a message published through one instance's cluster
    // connection reaches both subscribers.
    let (mut ra, ha) = listen(&a);
    let (mut rb, hb) = listen(&b2);
    until_subscribed(&a, &mut [&mut ra, &mut rb]).await;
    b2.publish(b"cluster purge").await.unwrap();
    assert_eq!(next_message(&mut ra).await, b("cluster purge"));
    assert_eq!(next_message(&mut rb).await, b("cluster purge"));
    ha.abort();
    hb.abort();
    assert_eq!(a.errors(), 0);
}
