//! Limits end to end: exact admission counts for `rate_limit` with the local and the Redis store,
//! two gateway processes sharing one Redis, bursts, group overrides, the header shapes, several
//! limits, Redis killed or stalled under each `on_store_error`, concurrency slots, quota
//! refusals, limiter state across reloads, a three-node Redis Cluster; and a property test that
//! the Redis script and `gcra::take` agree.
//!
//! Tests that need Redis start their own `redis-server` (see `common/redis.rs`); without one they
//! are skipped, except with `CI=true`, where that fails them.
//!
//! Every in-process gateway of this binary shares one process-wide local store, so each test
//! uses its own route names: buckets are keyed by route, and no two tests may share one.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::redis::{RedisCluster, RedisServer};
use common::{
    client, config, echo, gateway, h2c_client, spawn_bin, upstream, BinGateway, Upstream,
};
use frontdesk::config::{Dur, RedisConfig};
use frontdesk::limit::gcra::{self, Params};
use frontdesk::limit::redis::RedisStore;
use http_body_util::BodyExt;
use hyper::body::Frame;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt as _;

// === config helpers ===

/// A route named `name` on `path` to upstream `u`, with one plugin per line of `plugins`.
fn route(name: &str, path: &str, plugins: &[&str]) -> String {
    let mut s = format!(
        "  - name: {name}\n    match: {{ paths: [\"{path}\"] }}\n    upstream: u\n    plugins:\n"
    );
    for p in plugins {
        s.push_str(&format!("      {p}\n"));
    }
    s
}

/// A route on `/probe` that answers 200 only while Redis decides (`on_store_error: deny`): a
/// gateway that passes it is connected to Redis.
fn probe_route() -> String {
    route(
        "probe",
        "/probe",
        &["rate_limit: { store: redis, on_store_error: deny, headers: none, limits: [{ name: probe, key: route, rate: 1000000, per: 1s }] }"],
    )
}

/// A whole config: optional `redis:` (with `timeout`), upstream `u`, and `routes`.
fn gw_config(up: &Upstream, redis: Option<(&RedisServer, &str)>, routes: &[String]) -> String {
    let redis = redis.map_or(String::new(), |(r, timeout)| {
        format!("redis: {{ url: \"{}\", timeout: {timeout} }}\n", r.url())
    });
    config(&format!(
        "{redis}upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n{}",
        up.url(),
        routes.concat()
    ))
}

// === request helpers ===

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// GET `url` with `headers`; the whole response is read.
async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = c.get(url).timeout(Duration::from_secs(10));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Sends `n` GETs to `path`, alternating between the `bases`, and returns the statuses in order.
async fn statuses(
    c: &reqwest::Client,
    bases: &[String],
    path: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        let base = &bases[i % bases.len()];
        out.push(get(c, &format!("{base}{path}"), headers).await.status);
    }
    out
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Polls `/probe` on `base` until Redis decides for that gateway.
async fn wait_shared(c: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .get(format!("{base}/probe"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway at {base} never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn base(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

/// Lines the binary logged so far (without waiting for more).
fn drain_log(gw: &BinGateway) -> Vec<String> {
    gw.log.try_iter().collect()
}

// === rate_limit: counts ===

#[tokio::test]
async fn a_fixed_rate_admits_exactly_its_limit_with_the_local_store() {
    let up = echo("u").await;
    let gw = gateway(&gw_config(
        &up,
        None,
        &[route(
            "fixed-local",
            "/",
            &["rate_limit: { limits: [{ name: per-ip, key: client_ip, rate: 10, per: 1m }] }"],
        )],
    ))
    .await;
    let got = statuses(&client(), &[base(gw.addr)], "/", 15, &[]).await;
    assert_eq!(got, [[200; 10].as_slice(), &[429; 5]].concat());
    assert_eq!(
        up.requests(),
        10,
        "refused requests never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_rate_admits_exactly_its_limit_with_the_redis_store() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let up = echo("u").await;
    let gw = gateway(&gw_config(
        &up,
        Some((&redis, "1s")),
        &[
            route(
                "fixed-redis",
                "/",
                // `deny`: a decision that did not come from Redis would show as a 503.
                &["rate_limit: { store: redis, on_store_error: deny, limits: [{ name: per-ip, key: client_ip, rate: 10, per: 1m }] }"],
            ),
            probe_route(),
        ],
    ))
    .await;
    let c = client();
    wait_shared(&c, &base(gw.addr)).await;
    let got = statuses(&c, &[base(gw.addr)], "/", 15, &[]).await;
    assert_eq!(got, [[200; 10].as_slice(), &[429; 5]].concat());
    // The bucket lives in Redis, under a hash-tagged key.
    let keys = blocking(|| redis.cmd(&["KEYS", "frontdesk:rl:*per-ip*"]));
    assert!(
        keys.contains("frontdesk:rl:{fixed-redis|per-ip|6000000:10|ip:127.0.0.1}"),
        "{keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_sharing_redis_admit_the_limit_once_and_local_ones_each_admit_it() {
    let Some(redis) = blocking(RedisServer::start) else {
        return;
    };
    let up = echo("u").await;
    let limit = |store: &str| {
        route(
            "shared",
            "/",
            &[&format!("rate_limit: {{ store: {store}, on_store_error: deny, limits: [{{ name: per-route, key: route, rate: 10, per: 1m }}] }}")],
        )
    };
    let shared = gw_config(&up, Some((&redis, "1s")), &[limit("redis"), probe_route()]);
    let a = blocking(|| spawn_bin(&shared));
    let b = blocking(|| spawn_bin(&shared));
    let c = client();
    let bases = [base(a.addr), base(b.addr)];
    for b in &bases {
        wait_shared(&c, b).await;
    }
    let got = statuses(&c, &bases, "/", 24, &[]).await;
    assert_eq!(count(&got, 200), 10, "one bucket for both: {got:?}");
    assert_eq!(count(&got, 429), 14, "{got:?}");
    assert_eq!(&got[..10], &[200; 10], "{got:?}");

    // The same limit with `store: local`: each process enforces the whole limit alone.
    let local = gw_config(&up, None, &[limit("local")]);
    let a = blocking(|| spawn_bin(&local));
    let b = blocking(|| spawn_bin(&local));
    let bases = [base(a.addr), base(b.addr)];
    let got = statuses(&c, &bases, "/", 24, &[]).await;
    let per_instance = |i: usize| got.iter().skip(i).step_by(2).copied().collect::<Vec<_>>();
    for i in 0..2 {
        let mine = per_instance(i);
        assert_eq!(count(&mine, 200), 10, "instance {i}: {mine:?}");
        assert_eq!(count(&mine, 429), 2, "instance {i}: {mine:?}");
    }
}

#[tokio::test]
async fn a_burst_smaller_than_the_rate_admits_only_the_burst_at_once() {
    let up = echo("u").await;
    let gw = gateway(&gw_config(
        &up,
        None,
        &[route(
            "burst",
            "/",
            &["rate_limit: { limits: [{ name: b, key: client_ip, rate: 100, per: 1m, burst: 3 }] }"],
        )],
    ))
    .await;
    let c = client();
    let got = statuses(&c, &[base(gw.addr)], "/", 5, &[]).await;
    assert_eq!(got, [200, 200, 200, 429, 429]);
    // A token comes back every 600ms; the next one is less than a second away.
    let r = get(&c, &gw.url("/"), &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"b\";q=100;w=60"));
}

#[tokio::test]
async fn keys_fall_back_to_the_client_address() {
    let up = echo("u").await;
    let gw = gateway(&gw_config(
        &up,
        None,
        &[
            route(
                "key-header",
                "/h",
                &["rate_limit: { limits: [{ name: per-user, key: \"header:x-user\", rate: 2, per: 1m }] }"],
            ),
            // No auth plugin: nobody is a consumer, so everyone is counted by address.
            route(
                "key-consumer",
                "/c",
                &["rate_limit: { limits: [{ name: per-consumer, key: consumer, rate: 2, per: 1m }] }"],
            ),
        ],
    ))
    .await;
    let c = client();
    let b = [base(gw.addr)];
    for user in ["ann", "ben"] {
        let got = statuses(&c, &b, "/h", 3, &[("x-user", user)]).await;
        assert_eq!(got, [200, 200, 429], "user {user}");
    }
    // Without the header, the client address is the key: a third bucket.
    assert_eq!(statuses(&c, &b, "/h", 3, &[]).await, [200, 200, 429]);
    assert_eq!(statuses(&c, &b, "/c", 3, &[]).await, [200, 200, 429]);
}

#[tokio::test]
async fn a_consumer_in_an_overriding_group_gets_the_override_and_the_most_generous_one_wins() {
    let up = echo("u").await;
    let consumers = r#"consumers:
  - { name: alice, groups: [partners], api_keys: ["alice-key-0001"] }
  - { name: bob, groups: [internal, beta], api_keys: ["bob-key-00000002"] }
  - { name: carol, api_keys: ["carol-key-000003"] }
"#;
    let yaml = gw_config(
        &up,
        None,
        &[route(
            "groups",
            "/",
            &[
                "key_auth: {}",
                "rate_limit: { limits: [{ name: per-consumer, key: consumer, rate: 2, per: 1m }], groups: { partners: { per-consumer: { rate: 5, per: 1m } }, internal: { per-consumer: { rate: 3, per: 1m } }, beta: { per-consumer: { rate: 4, per: 1m } } } }",
            ],
        )],
    );
    let gw = gateway(&format!("{yaml}{consumers}")).await;
    let c = client();
    let b = [base(gw.addr)];
    for (key, admitted) in [
        ("alice-key-0001", 5),
        ("bob-key-00000002", 4),
        ("carol-key-000003", 2),
    ] {
        let h = [("x-api-key", key)];
        let first = get(&c, &gw.url("/"), &h).await;
        assert_eq!(first.status, 200, "{key}");
        assert_eq!(
            first.header("ratelimit-policy"),
            Some(format!("\"per-consumer\";q={admitted};w=60").as_str()),
            "{key}"
        );
        let rest = statuses(&c, &b, "/", admitted, &h).await;
        let mut want = vec![200; admitted - 1];
        want.push(429);
        assert_eq!(rest, want, "{key} may make {admitted} requests");
    }
}

// === rate_limit: headers ===

#[tokio::test]
async fn headers_come_in_the_configured_shape_on_admitted_and_refused_responses() {
    let up = echo("u").await;
    let limit = |style: &str| {
        format!("rate_limit: {{ headers: {style}, limits: [{{ name: per-consumer, key: consumer, rate: 10, per: 1m }}] }}")
    };
    let gw = gateway(&gw_config(
        &up,
        None,
        &["ietf", "legacy", "both", "none"]
            .map(|s| route(&format!("hdr-{s}"), &format!("/{s}"), &[&limit(s)])),
    ))
    .await;
    let c = client();
    let all = [
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ];
    for style in ["ietf", "legacy", "both", "none"] {
        let url = gw.url(&format!("/{style}"));
        let mut seen = Vec::new();
        for _ in 0..11 {
            seen.push(get(&c, &url, &[]).await);
        }
        let (first, tenth, refused) = (&seen[0], &seen[9], &seen[10]);
        assert_eq!(
            (first.status, tenth.status, refused.status),
            (200, 200, 429)
        );
        // The first request leaves 9 tokens, and the bucket is full again 6s (one token)
        // later; after the tenth it is empty and full again in 60s.
        let ietf = [
            (first, "\"per-consumer\";r=9;t=6"),
            (tenth, "\"per-consumer\";r=0;t=60"),
            (refused, "\"per-consumer\";r=0;t=60"),
        ];
        let legacy = [(first, "9", "6"), (tenth, "0", "60"), (refused, "0", "60")];
        let has_ietf = matches!(style, "ietf" | "both");
        let has_legacy = matches!(style, "legacy" | "both");
        for (r, want) in ietf {
            if has_ietf {
                assert_eq!(
                    r.header("ratelimit-policy"),
                    Some("\"per-consumer\";q=10;w=60"),
                    "{style}"
                );
                assert_eq!(r.header("ratelimit"), Some(want), "{style}");
            }
        }
        for (r, remaining, reset) in legacy {
            if has_legacy {
                assert_eq!(r.header("x-ratelimit-limit"), Some("10"), "{style}");
                assert_eq!(
                    r.header("x-ratelimit-remaining"),
                    Some(remaining),
                    "{style}"
                );
                assert_eq!(r.header("x-ratelimit-reset"), Some(reset), "{style}");
            }
        }
        if style == "both" {
            // `t` and the legacy reset are the same number.
            for r in &seen {
                let t = r.header("ratelimit").unwrap().rsplit("t=").next().unwrap();
                assert_eq!(Some(t), r.header("x-ratelimit-reset"));
            }
        }
        for r in &seen {
            for h in all {
                let expected = match h {
                    "ratelimit-policy" | "ratelimit" => has_ietf,
                    _ => has_legacy,
                };
                assert_eq!(r.headers.contains_key(h), expected, "{style}: {h}");
            }
        }
        // The refusal: seconds until one token is back, and a problem body.
        assert_eq!(refused.header("retry-after"), Some("6"), "{style}");
        assert_eq!(
            refused.header("content-type"),
            Some("application/problem+json")
        );
        let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(body["status"], 429, "{}", refused.body);
    }
}

#[tokio::test]
async fn with_several_limits_the_one_with_the_fewest_tokens_left_is_reported() {
    let up = echo("u").await;
    let gw = gateway(&gw_config(
        &up,
        None,
        &[route(
            "several",
            "/",
            &["rate_limit: { headers: both, limits: [{ name: hourly, key: client_ip, rate: 100, per: 1h }, { name: minutely, key: client_ip, rate: 3, per: 1m }] }"],
        )],
    ))
    .await;
    let c = client();
    let url = gw.url("/");
    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        let r = get(&c, &url, &[]).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"minutely\";q=3;w=60"),
            "request {i}"
        );
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"minutely\";r={remaining};t={}", 20 * (i + 1)).as_str()),
            "request {i}"
        );
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    }
    let r = get(&c, &url, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("20"));
    assert_eq!(r.header("ratelimit"), Some("\"minutely\";r=0;t=60"));
}

// === rate_limit: Redis failures ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_applies_on_store_error_at_once_and_shared_limiting_resumes_when_it_returns()
{
    let Some(mut redis) = blocking(RedisServer::start) else {
        return;
    };
    let up = echo("u").await;
    let limit = |mode: &str| {
        route(
            &format!("down-{mode}"),
            &format!("/{mode}"),
            &[&format!("rate_limit: {{ store: redis, on_store_error: {mode}, limits: [{{ name: per-user, key: \"header:x-user\", rate: 3, per: 1m }}] }}")],
        )
    };
    let yaml = gw_config(
        &up,
        Some((&redis, "200ms")),
        &[limit("local"), limit("allow"), limit("deny"), probe_route()],
    );
    let a = blocking(|| spawn_bin(&yaml));
    let b = blocking(|| spawn_bin(&yaml));
    let c = client();
    let bases = [base(a.addr), base(b.addr)];
    for b in &bases {
        wait_shared(&c, b).await;
    }
    // Shared: 3 for both gateways together.
    let got = statuses(&c, &bases, "/local", 8, &[("x-user", "before")]).await;
    assert_eq!(count(&got, 200), 3, "{got:?}");

    blocking(|| redis.kill());
    // Each request is answered within the Redis timeout plus slack, in every mode.
    let bound = Duration::from_millis(200 + 1300);
    let timed = |path: &'static str, user: &'static str| {
        let c = c.clone();
        let bases = bases.clone();
        async move {
            let mut out = Vec::new();
            for i in 0..8 {
                let started = Instant::now();
                let r = get(&c, &format!("{}{path}", bases[i % 2]), &[("x-user", user)]).await;
                let took = started.elapsed();
                assert!(took < bound, "{path} took {took:?} with Redis down");
                out.push(r);
            }
            out
        }
    };
    // `local`: each gateway limits alone, so together they admit the limit twice.
    let got = timed("/local", "down").await;
    for i in 0..2 {
        let mine: Vec<u16> = got.iter().skip(i).step_by(2).map(|r| r.status).collect();
        assert_eq!(mine, [200, 200, 200, 429], "gateway {i} alone");
    }
    // `allow`: everything passes.
    let got = timed("/allow", "down").await;
    assert!(got.iter().all(|r| r.status == 200), "{got:?}");
    // `deny`: 503, come back in a second.
    let got = timed("/deny", "down").await;
    for r in &got {
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    // The first failure of the outage is logged, once per gateway.
    for gw in [&a, &b] {
        let failures = drain_log(gw)
            .iter()
            .filter(|l| l.contains("redis limiter store failed"))
            .count();
        assert_eq!(failures, 1, "one warning per outage");
    }

    // Redis is back (empty): both gateways share it again without a restart.
    blocking(|| redis.restart());
    let back = Instant::now();
    for b in &bases {
        wait_shared(&c, b).await;
    }
    // The reconnect backoff is capped at 1s (plus jitter), so this is quick.
    let took = back.elapsed();
    eprintln!("shared limiting resumed {took:?} after redis returned");
    assert!(took < Duration::from_secs(5), "resumed only after {took:?}");
    let got = statuses(&c, &bases, "/local", 8, &[("x-user", "after")]).await;
    assert_eq!(count(&got, 200), 3, "shared again: {got:?}");
    let got = statuses(&c, &bases, "/deny", 4, &[("x-user", "after")]).await;
    assert_eq!(
        got,
        [200, 200, 200, 429],
        "deny mode decides by Redis again"
    );
    for gw in [&a, &b] {
        assert!(
            gw.wait_log("shared limiting resumed", Duration::from_secs(5))
                .is_some(),
            "recovery is logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_gets_the_fallback_within_the_timeout() {
    let Some(mut redis) = blocking(RedisServer::start) else {
        return;
    };
    let up = echo("u").await;
    let gw = gateway(&gw_config(
        &up,
        Some((&redis, "50ms")),
        &[
            route(
                "stalled",
                "/",
                &["rate_limit: { store: redis, on_store_error: local, limits: [{ name: per-user, key: \"header:x-user\", rate: 3, per: 1m }] }"],
            ),
            probe_route(),
        ],
    ))
    .await;
    let c = client();
    wait_shared(&c, &base(gw.addr)).await;
    let store = gw.gw.snapshot().redis.clone().unwrap();
    let errors_before = store.errors.load(std::sync::atomic::Ordering::Relaxed);

    blocking(|| redis.stall());
    let mut got = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let r = get(&c, &gw.url("/"), &[("x-user", "stalled")]).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(50 + 450),
            "answered in {took:?} while Redis is stalled"
        );
        got.push(r.status);
    }
    // The local fallback still limits.
    assert_eq!(got, [200, 200, 200, 429, 429]);
    let errors = store.errors.load(std::sync::atomic::Ordering::Relaxed) - errors_before;
    assert!(errors >= 5, "every failure is counted: {errors}");

    blocking(|| redis.resume());
    wait_shared(&c, &base(gw.addr)).await;
    let got = statuses(&c, &[base(gw.addr)], "/", 4, &[("x-user", "resumed")]).await;
    assert_eq!(got, [200, 200, 200, 429]);
    let exists = blocking(|| {
        redis.cmd(&[
            "EXISTS",
            "frontdesk:rl:{stalled|per-user|20000000:3|h:resumed}",
        ])
    });
    assert_eq!(exists.trim(), ":1", "decided by Redis again");
}

// === concurrency ===

/// An upstream whose `/hold` responses send a first chunk and then stay open until the test
/// ends them (through the returned senders); other paths answer at once.
async fn holding_upstream() -> (Upstream, Arc<Mutex<Vec<tokio::sync::mpsc::Sender<Bytes>>>>) {
    let open = Arc::new(Mutex::new(Vec::new()));
    let keep = open.clone();
    let up = upstream(move |req: hyper::Request<hyper::body::Incoming>| {
        let keep = keep.clone();
        async move {
            if req.uri().path() != "/hold" {
                return hyper::Response::new(common::full("quick"));
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            tx.try_send(Bytes::from_static(b"first;")).unwrap();
            keep.lock().unwrap().push(tx);
            let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)));
            let body = http_body_util::StreamBody::new(frames).boxed();
            hyper::Response::new(body)
        }
    })
    .await;
    (up, open)
}

/// Polls `url` until it answers 200 (a slot was released).
async fn wait_admitted(c: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(c, url, &[]).await;
        if r.status == 200 {
            return;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens `GET /hold` on a raw HTTP/1.1 connection and reads until the first chunk arrived.
async fn hold(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("first;") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("first chunk in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    s
}

#[tokio::test]
async fn a_concurrency_slot_is_released_when_the_client_goes_away_or_the_body_ends() {
    let (up, open) = holding_upstream().await;
    let gw = gateway(&gw_config(
        &up,
        None,
        &[route("conc", "/", &["concurrency: { max: 1 }"])],
    ))
    .await;
    let c = client();
    let quick = gw.url("/quick");

    // HTTP/1.1: the client closes its connection mid-body.
    let held = hold(gw.addr).await;
    let r = get(&c, &quick, &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    drop(held);
    wait_admitted(&c, &quick).await;

    // HTTP/2: the client resets its stream; the connection stays.
    let h2 = h2c_client();
    let resp = h2.get(gw.url("/hold")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    assert_eq!(resp.chunk().await.unwrap().unwrap(), "first;");
    assert_eq!(get(&h2, &quick, &[]).await.status, 503);
    drop(resp);
    wait_admitted(&h2, &quick).await;

    // The body ends: the slot is free once the client has it all.
    let mut held = hold(gw.addr).await;
    assert_eq!(get(&c, &quick, &[]).await.status, 503);
    let tx = open.lock().unwrap().pop().unwrap();
    tx.send(Bytes::from_static(b"last")).await.unwrap();
    drop(tx);
    let rest = common::read_until_close(&mut held, Duration::from_millis(500)).await;
    assert!(
        rest.contains("last") && rest.ends_with("0\r\n\r\n"),
        "{rest:?}"
    );
    wait_admitted(&c, &quick).await;
    // The connection is still open (kept alive) and not holding a slot.
    held.write_all(b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let again = common::read_response(&mut held).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    assert_eq!(get(&c, &quick, &[]).await.status, 200);
}

// === quota ===

/// Days since 1970-01-01 of the first day of month `m` (1-12) of year `y`.
fn days_to_month_start(y: i64, m: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds from `now` to the next UTC midnight and to the next first of a month.
fn seconds_to_window_ends(now: u64) -> (u64, u64) {
    let now = i64::try_from(now).unwrap();
    let day_end = (now / 86_400 + 1) * 86_400;
    // Find the month containing today by walking from this year's January.
    let today = now / 86_400;
    let mut year = 1970 + today / 366;
    while days_to_month_start(year + 1, 1) <= today {
        year += 1;
    }
    let mut month = 1;
    while month < 12 && days_to_month_start(year, month + 1) <= today {
        month += 1;
    }
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let month_end = days_to_month_start(ny, nm) * 86_400;
    (
        u64::try_from(day_end - now).unwrap(),
        u64::try_from(month_end - now).unwrap(),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_quota_is_refused_until_the_window_resets() {
    let redis = blocking(RedisServer::start);
    let up = echo("u").await;
    let mut routes = vec![
        route(
            "quota-day",
            "/day",
            &["quota: { key: client_ip, limit: 2, per: day }"],
        ),
        route(
            "quota-month",
            "/month",
            &["quota: { key: client_ip, limit: 1, per: month }"],
        ),
    ];
    if redis.is_some() {
        routes.push(route(
            "quota-day-redis",
            "/shared-day",
            &["quota: { key: client_ip, limit: 2, per: day, store: redis, on_store_error: deny }"],
        ));
        routes.push(probe_route());
    }
    let gw = gateway(&gw_config(&up, redis.as_ref().map(|r| (r, "1s")), &routes)).await;
    let c = client();
    let b = [base(gw.addr)];
    let mut cases = vec![("/day", 2, 0), ("/month", 1, 1)];
    if redis.is_some() {
        wait_shared(&c, &b[0]).await;
        cases.push(("/shared-day", 2, 0));
    }
    for (path, limit, which) in cases {
        let got = statuses(&c, &b, path, limit, &[]).await;
        assert_eq!(got, vec![200; limit], "{path}");
        let before = unix_now();
        let r = get(&c, &gw.url(path), &[]).await;
        let after = unix_now();
        assert_eq!(r.status, 429, "{path}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        let ends = |t: u64| {
            let (day, month) = seconds_to_window_ends(t);
            if which == 0 {
                day
            } else {
                month
            }
        };
        // The seconds left in the window, measured on either side of the request.
        assert!(
            (ends(after).saturating_sub(1)..=ends(before)).contains(&retry),
            "{path}: Retry-After {retry}, window ends in {}..{}s",
            ends(after),
            ends(before)
        );
    }
}

// === reloads ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_state_survives_reloads_that_keep_the_limit_and_restarts_when_it_changes() {
    let redis = blocking(RedisServer::start);
    let up = echo("u").await;
    let make = |rate: u32, tag: &str| {
        let limit = |store: &str| {
            format!("rate_limit: {{ store: {store}, on_store_error: deny, limits: [{{ name: l, key: client_ip, rate: {rate}, per: 1m }}] }}")
        };
        let mut routes = vec![
            route("reload-local", "/local", &[&limit("local")]),
            // The unrelated edit.
            route(
                "reload-other",
                "/other",
                &[&format!("respond: {{ status: 200, body: \"{tag}\" }}")],
            ),
        ];
        if redis.is_some() {
            routes.push(route("reload-redis", "/redis", &[&limit("redis")]));
            routes.push(probe_route());
        }
        gw_config(&up, redis.as_ref().map(|r| (r, "1s")), &routes)
    };
    let gw = gateway(&make(3, "v1")).await;
    let c = client();
    let b = [base(gw.addr)];
    let mut paths = vec!["/local"];
    if redis.is_some() {
        wait_shared(&c, &b[0]).await;
        paths.push("/redis");
    }
    for p in &paths {
        assert_eq!(
            statuses(&c, &b, p, 4, &[]).await,
            [200, 200, 200, 429],
            "{p}"
        );
    }

    // An unrelated edit: the exhausted buckets stay exhausted.
    gw.rewrite(&make(3, "v2")).await;
    gw.gw.reload().await.expect("reload");
    assert_eq!(get(&c, &gw.url("/other"), &[]).await.body, "v2");
    for p in &paths {
        assert_eq!(
            statuses(&c, &b, p, 1, &[]).await,
            [429],
            "{p} after an unrelated edit"
        );
    }

    // New numbers: new, full buckets.
    gw.rewrite(&make(4, "v3")).await;
    gw.gw.reload().await.expect("reload");
    for p in &paths {
        assert_eq!(
            statuses(&c, &b, p, 5, &[]).await,
            [200, 200, 200, 200, 429],
            "{p} after the limit changed"
        );
    }
}

// === the Redis script agrees with gcra::take ===

#[test]
fn the_redis_script_and_gcra_take_agree_on_random_sequences() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async {
        let store = RedisStore::start(&RedisConfig {
            url: Some(redis.url()),
            cluster: Vec::new(),
            timeout: Dur(Duration::from_secs(2)),
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.is_connected() {
            assert!(Instant::now() < deadline, "RedisStore never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store
    });

    // Intervals of at least 100ms keep Redis's real-time key expiry (PX, the bucket's refill
    // time) far from the few milliseconds a case takes, so it never drops a live bucket.
    let case = (1u64..=20, 2_000u64..=600_000, 1u64..=30).prop_flat_map(|(rate, per_ms, burst)| {
        let interval = per_ms * 1000 / rate;
        let step = prop_oneof![
            2 => Just(0u64),
            3 => 0..=interval / 2,
            3 => 0..=interval * 2,
        ];
        (
            Just(rate),
            Just(per_ms),
            Just(burst),
            // Small times too: a process clock starts near zero.
            prop_oneof![
                0u64..100_000_000,
                1_700_000_000_000_000u64..1_700_001_000_000_000
            ],
            proptest::collection::vec(step, 20..=50),
        )
    });
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 30,
        failure_persistence: None,
        ..Default::default()
    });
    let n = std::cell::Cell::new(0u64);
    runner
        .run(&case, |(rate, per_ms, burst, start, steps)| {
            n.set(n.get() + 1);
            let key = format!("frontdesk:prop:{{case-{}}}", n.get());
            let p = Params::new(rate, Duration::from_millis(per_ms), burst);
            let mut now = start;
            let mut tat = None;
            for (i, step) in steps.iter().enumerate() {
                now += step;
                let (local, new_tat) = gcra::take(now, tat, p);
                if new_tat.is_some() {
                    tat = new_tat;
                }
                let remote = rt
                    .block_on(store.take_at(&key, p, Some(now)))
                    .map_err(|e| TestCaseError::fail(format!("redis: {e}")))?;
                prop_assert_eq!(local, remote, "request {} at {} with {:?}", i, now, p);
            }
            Ok(())
        })
        .unwrap();
    drop(store);
}

// === Redis Cluster ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_shared_through_a_redis_cluster_reach_every_node() {
    let Some(cluster) = blocking(RedisCluster::start) else {
        return;
    };
    let up = echo("u").await;
    let seeds = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = gw_config(
        &up,
        None,
        &[
            route(
                "clustered",
                "/",
                &[
                    "rate_limit: { store: redis, on_store_error: deny, limits: [{ name: per-user, key: \"header:x-user\", rate: 3, per: 1m }] }",
                    "quota: { key: \"header:x-user\", limit: 100, per: day, store: redis, on_store_error: deny }",
                ],
            ),
            probe_route(),
        ],
    );
    let gw = gateway(&format!(
        "{yaml}redis: {{ cluster: [{seeds}], timeout: 1s }}\n"
    ))
    .await;
    let c = client();
    wait_shared(&c, &base(gw.addr)).await;
    // Users whose buckets hash to slots all over the cluster: every one is decided by Redis
    // (`deny` would show a failure as 503).
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    for u in &users {
        let got = statuses(&c, &[base(gw.addr)], "/", 4, &[("x-user", u)]).await;
        assert_eq!(got, [200, 200, 200, 429], "{u}");
    }
    // Each bucket and quota count lives whole on one node, and the nodes share the work.
    let per_node: Vec<usize> = blocking(|| {
        cluster
            .nodes
            .iter()
            .map(|n| {
                let r = n.cmd(&["KEYS", "frontdesk:*{clustered|*"]);
                r.lines()
                    .next()
                    .unwrap()
                    .trim_start_matches('*')
                    .parse()
                    .unwrap()
            })
            .collect()
    });
    assert_eq!(
        per_node.iter().sum::<usize>(),
        2 * users.len(),
        "a bucket and a quota count per user: {per_node:?}"
    );
    assert!(
        per_node.iter().all(|n| *n > 0),
        "keys on every node: {per_node:?}"
    );
}
