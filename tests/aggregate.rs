//! Aggregate routes through the real gateway against real upstreams: the issue's YAML as
//! written, parallel calls, dependency chains, `for_each` and its cap, the failure policy
//! (optional, required, deadline), retries and the breaker per call, which headers calls get,
//! hostile values, metrics, spans and `explain`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, closed_port, config, full, gateway, upstream, UpBody};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

/// The example of issue 15, exactly as written there (docs/aggregation.md shows the same).
const HOME_SCREEN: &str = r#"routes:
  - name: home-screen
    match: { paths: [{ template: "/screens/home/{user}" }], methods: [GET] }
    aggregate:
      calls:
        profile: { upstream: users,  path: "/users/{user}", required: true, timeout: 300ms }
        orders:  { upstream: orders, path: "/orders?user={user}&limit=5", required: false }
        recs:    { upstream: recs,   path: "/for/{profile.body.segment}", depends_on: [profile], required: false }
        items:   { upstream: catalog, path: "/items/{id}", for_each: "orders.body.items[*].id", max_parallel: 8 }
      merge: { profile: "$.profile", orders: "$.orders", recommendations: "$.recs", items: "$.items" }   # or a jq expression
      headers: { from: [profile], allow: [cache-control, etag] }
"#;

/// One request an upstream received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

/// What an upstream answers: status, headers, JSON body, and how long it waits first.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn json(v: Value) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: v.to_string(),
            delay: Duration::ZERO,
        }
    }
    fn status(mut self, s: u16) -> Reply {
        self.status = s;
        self
    }
    fn after(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    fn header(mut self, k: &'static str, v: &str) -> Reply {
        self.headers.push((k, v.to_string()));
        self
    }
}

/// A test upstream that records every request and answers with `reply`.
struct Recorder {
    up: common::Upstream,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests in flight now, and the most at once.
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Recorder {
    fn url(&self) -> String {
        self.up.url()
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn recorder<F>(reply: F) -> Recorder
where
    F: Fn(&Seen) -> Reply + Clone + Send + Sync + 'static,
{
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let in_flight: Arc<AtomicUsize> = Arc::default();
    let most: Arc<AtomicUsize> = Arc::default();
    let (s, f, m) = (seen.clone(), in_flight.clone(), most.clone());
    let up = upstream(move |req: Request<Incoming>| {
        let (s, f, m, reply) = (s.clone(), f.clone(), m.clone(), reply.clone());
        async move {
            let now = f.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let seen = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect(),
                body: String::from_utf8_lossy(&body).into_owned(),
                at: Instant::now(),
            };
            s.lock().unwrap().push(seen.clone());
            let r = reply(&seen);
            tokio::time::sleep(r.delay).await;
            f.fetch_sub(1, Ordering::SeqCst);
            let mut b = Response::builder()
                .status(r.status)
                .header("content-type", "application/json");
            for (k, v) in &r.headers {
                b = b.header(*k, v.as_str());
            }
            b.body(full(r.body)).unwrap()
        }
    })
    .await;
    Recorder {
        up,
        seen,
        in_flight,
        most,
    }
}

/// A config with these upstreams (`name: url`) and `routes` (YAML from `routes:` on).
fn with(upstreams: &[(&str, String)], rest: &str) -> String {
    let ups: String = upstreams
        .iter()
        .map(|(n, u)| format!("  {n}: {{ targets: [{{ url: \"{u}\" }}] }}\n"))
        .collect();
    config(&format!("upstreams:\n{ups}{rest}"))
}

async fn get(url: String) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = client().get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

/// The home screen's four services.
async fn home_services(orders_status: u16) -> [Recorder; 4] {
    let users = recorder(|s: &Seen| {
        let user = s.uri.rsplit('/').next().unwrap_or("").to_string();
        Reply::json(json!({ "id": user, "segment": "gold" }))
            .header("cache-control", "max-age=60")
            .header("etag", "\"p1\"")
            .header("x-internal", "secret")
    })
    .await;
    let orders = recorder(move |_: &Seen| {
        Reply::json(json!({ "items": [{ "id": "a1" }, { "id": "b/2" }] })).status(orders_status)
    })
    .await;
    let recs = recorder(|s: &Seen| Reply::json(json!([format!("for {}", s.uri)]))).await;
    let catalog = recorder(|s: &Seen| {
        let id = s.uri.rsplit('/').next().unwrap_or("").to_string();
        Reply::json(json!({ "sku": id }))
    })
    .await;
    [users, orders, recs, catalog]
}

#[tokio::test]
async fn the_issue_example_works_as_written() {
    let [users, orders, recs, catalog] = home_services(200).await;
    let gw = gateway(&with(
        &[
            ("users", users.url()),
            ("orders", orders.url()),
            ("recs", recs.url()),
            ("catalog", catalog.url()),
        ],
        HOME_SCREEN,
    ))
    .await;
    let (status, headers, v) = get(gw.url("/screens/home/u42")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        v,
        json!({
            "profile": { "id": "u42", "segment": "gold" },
            "orders": { "items": [{ "id": "a1" }, { "id": "b/2" }] },
            "recommendations": ["for /for/gold"],
            "items": [{ "sku": "a1" }, { "sku": "b%2F2" }]
        })
    );
    // Headers from `profile`, only the allowed ones; not partial.
    assert_eq!(headers["cache-control"], "max-age=60");
    assert_eq!(headers["etag"], "\"p1\"");
    assert!(headers.get("x-internal").is_none());
    assert!(headers.get("x-frontdesk-partial").is_none());
    assert_eq!(users.seen()[0].uri, "/users/u42");
    assert_eq!(orders.seen()[0].uri, "/orders?user=u42&limit=5");
    // The element `b/2` is one path segment: its slash is encoded.
    let mut uris: Vec<String> = catalog.seen().iter().map(|s| s.uri.clone()).collect();
    uris.sort();
    assert_eq!(uris, ["/items/a1", "/items/b%2F2"]);
    // `recs` waited for `profile`; `items` for `orders`, though it does not list it.
    assert!(recs.seen()[0].at >= users.seen()[0].at);
    assert!(catalog.seen().iter().all(|s| s.at >= orders.seen()[0].at));
}

#[test]
fn the_docs_show_the_issue_example() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/aggregation.md"),
    )
    .unwrap();
    assert!(
        doc.contains(HOME_SCREEN),
        "docs/aggregation.md does not show the issue's example as tests/aggregate.rs runs it"
    );
}

#[tokio::test]
async fn independent_calls_run_in_parallel() {
    let slow =
        || recorder(|_: &Seen| Reply::json(json!({"ok": true})).after(Duration::from_millis(300)));
    let (a, b, c) = (slow().await, slow().await, slow().await);
    let gw = gateway(&with(
        &[("a", a.url()), ("b", b.url()), ("c", c.url())],
        r#"routes:
  - name: three
    match: { paths: ["/three"] }
    aggregate:
      calls:
        a: { upstream: a, path: "/x", required: true }
        b: { upstream: b, path: "/x", required: true }
        c: { upstream: c, path: "/x", required: true }
"#,
    ))
    .await;
    // A first request opens the connections; the second is measured.
    let _ = get(gw.url("/three")).await;
    let t0 = Instant::now();
    let (status, _, v) = get(gw.url("/three")).await;
    let took = t0.elapsed();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!({"a": {"ok": true}, "b": {"ok": true}, "c": {"ok": true}})
    );
    // The slowest call (300 ms), not the sum (900 ms); a wide margin for a loaded machine.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_millis(800),
        "three 300 ms calls took {took:?}"
    );
}

#[tokio::test]
async fn a_dependency_chain_takes_values_from_earlier_answers() {
    let login = recorder(|_: &Seen| {
        Reply::json(json!({ "account": { "id": 7, "region": "eu west" } }))
            .header("x-session", "s-123")
    })
    .await;
    let account =
        recorder(|_: &Seen| Reply::json(json!({ "plan": "pro", "tags": ["x", "y"] }))).await;
    let search = recorder(|s: &Seen| {
        Reply::json(
            json!({ "echo": serde_json::from_str::<Value>(&s.body).unwrap_or(Value::Null) }),
        )
    })
    .await;
    let gw = gateway(&with(
        &[("login", login.url()), ("account", account.url()), ("search", search.url())],
        r#"routes:
  - name: chain
    match: { paths: [{ template: "/chain/{user}" }] }
    aggregate:
      calls:
        login: { upstream: login, path: "/who/{user}", required: true }
        account:
          upstream: account
          path: "/accounts/{login.body.account.id}?region={login.body.account.region}&q={request.query.q}"
          headers: { x-session: "{login.headers.x-session}", x-user: "{user}" }
          required: true
        search:
          upstream: search
          method: POST
          path: "/search"
          body: { plan: "{account.body.plan}", tags: "{account.body.tags}", query: "{request.body.q}", note: "user {user}, status {account.status}" }
          required: true
"#,
    ))
    .await;
    let resp = client()
        .post(gw.url("/chain/al%20ice?q=a%26b"))
        .header("content-type", "application/json")
        .body(r#"{"q": "shoes"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let a = &account.seen()[0];
    // Values from `login` in the path and query, encoded once (the parameter was decoded first).
    assert_eq!(a.uri, "/accounts/7?region=eu%20west&q=a%26b");
    assert_eq!(a.headers["x-session"], "s-123");
    assert_eq!(a.headers["x-user"], "al ice");
    assert!(a.at >= login.seen()[0].at);
    let s = &search.seen()[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.headers["content-type"], "application/json");
    let sent: Value = serde_json::from_str(&s.body).unwrap();
    assert_eq!(
        sent,
        json!({ "plan": "pro", "tags": ["x", "y"], "query": "shoes", "note": "user al ice, status 200" })
    );
    assert_eq!(v["search"]["echo"], sent);
    assert_eq!(v["login"]["account"]["id"], 7);
}

#[tokio::test]
async fn for_each_fans_out_within_its_cap() {
    let list = recorder(|_: &Seen| {
        Reply::json(json!({ "ids": (0..10).map(|i| json!({ "id": i })).collect::<Vec<_>>() }))
    })
    .await;
    let item = recorder(|s: &Seen| {
        let id = s.uri.rsplit('/').next().unwrap_or("").to_string();
        Reply::json(json!({ "n": id })).after(Duration::from_millis(100))
    })
    .await;
    let gw = gateway(&with(
        &[("list", list.url()), ("item", item.url())],
        r#"routes:
  - name: fan
    match: { paths: ["/fan"] }
    aggregate:
      calls:
        list: { upstream: list, path: "/list", required: true }
        items: { upstream: item, path: "/item/{id}", for_each: "list.body.ids[*].id", max_parallel: 3, required: true }
      merge: { items: "$.items" }
  - name: capped
    match: { paths: ["/capped"] }
    aggregate:
      max_fan_out: 5
      calls:
        list: { upstream: list, path: "/list", required: true }
        items: { upstream: item, path: "/item/{id}", for_each: "list.body.ids[*].id", required: true }
"#,
    ))
    .await;
    let (status, _, v) = get(gw.url("/fan")).await;
    assert_eq!(status, 200, "{v}");
    let want: Vec<Value> = (0..10).map(|i| json!({ "n": i.to_string() })).collect();
    assert_eq!(v, json!({ "items": want }), "every element, in order");
    assert_eq!(item.seen().len(), 10);
    let most = item.most.load(Ordering::SeqCst);
    assert!(
        most <= 3,
        "{most} element calls were in flight at once, the cap is 3"
    );
    assert!(most >= 2, "the elements ran one by one");
    assert_eq!(item.in_flight.load(Ordering::SeqCst), 0);

    // Over `max_fan_out`: the call fails without sending anything.
    let (status, _, v) = get(gw.url("/capped")).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["call"], "items");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("more than max_fan_out (5)"),
        "{v}"
    );
    assert_eq!(item.seen().len(), 10);
}

#[tokio::test]
async fn an_optional_call_failing_gives_a_partial_answer() {
    let [users, orders, recs, catalog] = home_services(500).await;
    let gw = gateway(&with(
        &[
            ("users", users.url()),
            ("orders", orders.url()),
            ("recs", recs.url()),
            ("catalog", catalog.url()),
        ],
        &HOME_SCREEN.replace(
            "      headers:",
            "      meta_key: __partial\n      headers:",
        ),
    ))
    .await;
    let (status, headers, v) = get(gw.url("/screens/home/u1")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["x-frontdesk-partial"], "true");
    // Not stored as if it were whole.
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.get("etag").is_none());
    assert_eq!(v["orders"], Value::Null);
    assert_eq!(v["items"], Value::Null, "items depends on orders: skipped");
    assert_eq!(v["profile"]["segment"], "gold");
    assert_eq!(v["recommendations"], json!(["for /for/gold"]));
    let meta = &v["__partial"];
    assert_eq!(meta["partial"], true);
    assert_eq!(meta["failed"]["orders"]["status"], 500);
    assert_eq!(
        meta["failed"]["orders"]["reason"],
        "the upstream answered 500"
    );
    assert_eq!(meta["failed"]["items"]["status"], Value::Null);
    assert_eq!(
        meta["failed"]["items"]["reason"],
        "not made: call \"orders\" failed"
    );
    assert!(v.get("_meta").is_none());
    assert!(catalog.seen().is_empty());
}

#[tokio::test]
async fn a_required_call_failing_fails_the_answer_with_a_problem_naming_it() {
    let down = recorder(|_: &Seen| Reply::json(json!({"error": "x"})).status(503)).await;
    let slow = recorder(|_: &Seen| Reply::json(json!({})).after(Duration::from_secs(2))).await;
    let fine = recorder(|_: &Seen| Reply::json(json!({"ok": 1}))).await;
    let dead = closed_port().await;
    let gw = gateway(&with(
        &[
            ("down", down.url()),
            ("slow", slow.url()),
            ("fine", fine.url()),
            ("dead", format!("http://{dead}")),
        ],
        r#"routes:
  - name: failing
    match: { paths: ["/failing"] }
    aggregate:
      calls:
        profile: { upstream: down, path: "/p", required: true }
        other: { upstream: fine, path: "/o" }
  - name: timing-out
    match: { paths: ["/timing-out"] }
    aggregate:
      calls:
        profile: { upstream: slow, path: "/p", required: true, timeout: 200ms }
  - name: unreachable
    match: { paths: ["/unreachable"] }
    aggregate:
      calls:
        profile: { upstream: dead, path: "/p", required: true }
"#,
    ))
    .await;
    let (status, headers, v) = get(gw.url("/failing")).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(v["call"], "profile");
    assert_eq!(v["call_status"], 503);
    assert_eq!(
        v["detail"],
        "the required call \"profile\" failed: the upstream answered 503"
    );
    assert!(v["request_id"].is_string());
    assert_eq!(
        v["request_id"].as_str(),
        headers["x-request-id"].to_str().ok()
    );

    let t0 = Instant::now();
    let (status, _, v) = get(gw.url("/timing-out")).await;
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["call"], "profile");
    assert_eq!(v["call_status"], 504);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("longer than its timeout (200ms)"),
        "{v}"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );

    let (status, _, v) = get(gw.url("/unreachable")).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["call_status"], 502);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{v}"
    );
}

#[tokio::test]
async fn the_total_deadline_bounds_the_answer() {
    let slow = recorder(|_: &Seen| Reply::json(json!({})).after(Duration::from_secs(3))).await;
    let fast = recorder(|_: &Seen| Reply::json(json!({"fast": true}))).await;
    let gw = gateway(&with(
        &[("slow", slow.url()), ("fast", fast.url())],
        r#"routes:
  - name: optional-slow
    match: { paths: ["/optional"] }
    aggregate:
      timeout: 300ms
      calls:
        fast: { upstream: fast, path: "/f", required: true }
        slow: { upstream: slow, path: "/s" }
  - name: required-slow
    match: { paths: ["/required"] }
    aggregate:
      timeout: 300ms
      calls:
        fast: { upstream: fast, path: "/f" }
        slow: { upstream: slow, path: "/s", required: true }
"#,
    ))
    .await;
    let t0 = Instant::now();
    let (status, headers, v) = get(gw.url("/optional")).await;
    let took = t0.elapsed();
    assert_eq!(status, 200, "{v}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(headers["x-frontdesk-partial"], "true");
    assert_eq!(v["fast"]["fast"], true);
    assert_eq!(v["slow"], Value::Null);
    assert_eq!(v["_meta"]["failed"]["slow"]["status"], 504);
    assert!(v["_meta"]["failed"]["slow"]["reason"]
        .as_str()
        .unwrap()
        .contains("deadline (300ms)"));

    let t0 = Instant::now();
    let (status, _, v) = get(gw.url("/required")).await;
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["call"], "slow");
    assert!(t0.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn each_call_has_the_upstreams_retries_and_breaker() {
    // Every other request fails with 503: a retry on 503 makes each call succeed.
    let flaky_count = Arc::new(AtomicUsize::new(0));
    let fc = flaky_count.clone();
    let flaky = recorder(move |_: &Seen| {
        if fc.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            Reply::json(json!({"try": "again"})).status(503)
        } else {
            Reply::json(json!({"ok": true}))
        }
    })
    .await;
    let broken = recorder(|_: &Seen| Reply::json(json!({})).status(500)).await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  flaky:
    targets: [{{ url: "{flaky}" }}]
    retries: {{ attempts: 1, retry_on: [503], backoff: 0s }}
  broken:
    targets: [{{ url: "{broken}" }}]
    health_check: {{ passive: {{ unhealthy_after: 0 }} }}
    retries: {{ attempts: 0 }}
    circuit_breaker: {{ failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 30s }}
routes:
  - name: retried
    match: {{ paths: ["/retried"] }}
    aggregate:
      calls:
        a: {{ upstream: flaky, path: "/a", required: true }}
  - name: breaker
    match: {{ paths: ["/breaker"] }}
    aggregate:
      calls:
        b: {{ upstream: broken, path: "/b" }}
"#,
        flaky = flaky.url(),
        broken = broken.url()
    )))
    .await;
    for _ in 0..3 {
        let (status, _, v) = get(gw.url("/retried")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["a"]["ok"], true);
    }
    assert_eq!(flaky.seen().len(), 6, "each call was tried twice");

    // Four failures open the breaker; then the call fails at once, without a request.
    for _ in 0..4 {
        let (_, _, v) = get(gw.url("/breaker")).await;
        assert_eq!(v["_meta"]["failed"]["b"]["status"], 500, "{v}");
    }
    assert_eq!(broken.seen().len(), 4);
    let (status, _, v) = get(gw.url("/breaker")).await;
    assert_eq!(status, 200);
    assert_eq!(v["_meta"]["failed"]["b"]["status"], 503, "{v}");
    assert!(v["_meta"]["failed"]["b"]["reason"]
        .as_str()
        .unwrap()
        .contains("circuit breaker"));
    assert_eq!(broken.seen().len(), 4, "the open breaker sent nothing");
}

#[tokio::test]
async fn calls_get_the_request_id_trace_and_consumer_headers_but_not_the_clients_credentials() {
    let a = recorder(|_: &Seen| Reply::json(json!({}))).await;
    let b = recorder(|_: &Seen| Reply::json(json!({}))).await;
    let gw = gateway(&config(&format!(
        r#"
consumers:
  - {{ name: alice, groups: [staff], api_keys: ["alice-key-0001"] }}
upstreams:
  a: {{ targets: [{{ url: "{a}" }}] }}
  b: {{ targets: [{{ url: "{b}" }}] }}
routes:
  - name: headers
    match: {{ paths: ["/h"] }}
    plugins: {{ key_auth: {{}} }}
    aggregate:
      forward_headers: [accept-language]
      calls:
        plain: {{ upstream: a, path: "/a" }}
        trusted: {{ upstream: b, path: "/b", forward_headers: [authorization] }}
"#,
        a = a.url(),
        b = b.url()
    )))
    .await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = client()
        .get(gw.url("/h"))
        .header("x-api-key", "alice-key-0001")
        .header("authorization", "Bearer client-token")
        .header("cookie", "session=1")
        .header("x-custom", "1")
        .header("accept-language", "fr")
        .header("traceparent", tp)
        .header("x-consumer-name", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let plain = &a.seen()[0].headers;
    assert_eq!(plain["x-request-id"], id);
    // No tracing configured: the caller's trace context passes through.
    assert_eq!(plain["traceparent"], tp);
    // The consumer the gateway identified, not the one the client claimed.
    assert_eq!(plain["x-consumer-name"], "alice");
    assert_eq!(plain["accept-language"], "fr");
    assert_eq!(plain["accept"], "application/json");
    for absent in ["authorization", "cookie", "x-custom", "x-api-key"] {
        assert!(
            !plain.contains_key(absent),
            "{absent} reached the call: {plain:?}"
        );
    }
    let trusted = &b.seen()[0].headers;
    assert_eq!(trusted["authorization"], "Bearer client-token");
    assert_eq!(trusted["x-consumer-name"], "alice");
    // The route's plugins ran on the client request: without a key, no call is made.
    let resp = client().get(gw.url("/h")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(a.seen().len(), 1);
}

#[tokio::test]
async fn hostile_answers_are_encoded_bounded_and_never_change_a_request() {
    let evil = recorder(|s: &Seen| {
        if s.uri == "/big" {
            return Reply::json(json!({ "blob": "x".repeat(64 * 1024) }));
        }
        Reply::json(json!({
            "seg": "../../admin?x=1#frag",
            "dots": "..",
            "header": "a\r\nx-injected: 1",
        }))
    })
    .await;
    let victim = recorder(|_: &Seen| Reply::json(json!({"ok": true}))).await;
    let not_json = upstream(|_req: Request<Incoming>| async {
        Response::builder().body(full("<html>")).unwrap() as Response<UpBody>
    })
    .await;
    let gw = gateway(&with(
        &[
            ("evil", evil.url()),
            ("victim", victim.url()),
            ("html", not_json.url()),
        ],
        r#"routes:
  - name: encoded
    match: { paths: ["/encoded"] }
    aggregate:
      calls:
        evil: { upstream: evil, path: "/e", required: true }
        seg: { upstream: victim, path: "/v/{evil.body.seg}?q={evil.body.seg}", required: true }
        dots: { upstream: victim, path: "/v/{evil.body.dots}/x" }
        header: { upstream: victim, path: "/h", headers: { x-v: "{evil.body.header}" } }
  - name: big
    match: { paths: ["/big"] }
    aggregate:
      max_body: 16KiB
      calls:
        big: { upstream: evil, path: "/big" }
  - name: html
    match: { paths: ["/html"] }
    aggregate:
      calls:
        page: { upstream: html, path: "/" }
"#,
    ))
    .await;
    let (status, _, v) = get(gw.url("/encoded")).await;
    assert_eq!(status, 200, "{v}");
    let uris: Vec<String> = victim.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        uris,
        ["/v/..%2F..%2Fadmin%3Fx%3D1%23frag?q=..%2F..%2Fadmin%3Fx%3D1%23frag"],
        "one request, the value encoded; `..` as a segment and a header with a line break were refused"
    );
    let failed = &v["_meta"]["failed"];
    assert!(
        failed["dots"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot take"),
        "{v}"
    );
    assert!(
        failed["header"]["reason"]
            .as_str()
            .unwrap()
            .contains("control character"),
        "{v}"
    );

    let (status, _, v) = get(gw.url("/big")).await;
    assert_eq!(status, 200);
    assert!(v["_meta"]["failed"]["big"]["reason"]
        .as_str()
        .unwrap()
        .contains("larger than max_body"));
    let (_, _, v) = get(gw.url("/html")).await;
    assert_eq!(
        v["_meta"]["failed"]["page"]["reason"],
        "the answer is not JSON"
    );
}

#[tokio::test]
async fn a_jq_merge_shapes_the_answer() {
    let users = recorder(|_: &Seen| Reply::json(json!({ "name": "Ann", "secret": "s" }))).await;
    let orders = recorder(|_: &Seen| Reply::json(json!({ "items": [1, 2, 3] }))).await;
    let gw = gateway(&with(
        &[("users", users.url()), ("orders", orders.url())],
        r#"routes:
  - name: jq
    match: { paths: [{ template: "/jq/{user}" }] }
    aggregate:
      calls:
        person: { upstream: users, path: "/u/{user}", required: true }
        orders: { upstream: orders, path: "/o" }
      merge: '{ id: $request.params.user, name: .person.name, count: (.orders.items | length) }'
"#,
    ))
    .await;
    let (status, _, v) = get(gw.url("/jq/u7")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({ "id": "u7", "name": "Ann", "count": 3 }));
}

#[tokio::test]
async fn a_jq_merge_that_does_not_compile_is_refused_with_its_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(
        &path,
        with(
            &[("users", "http://127.0.0.1:9".into())],
            r#"routes:
  - name: jq
    match: { paths: ["/jq"] }
    aggregate:
      calls:
        user: { upstream: users, path: "/u" }
      merge: '{ name: .user.name'
"#,
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("routes[0].aggregate.merge: invalid jq expression"),
        "{text}"
    );
}

#[tokio::test]
async fn calls_are_counted_per_route_and_call() {
    let ok = recorder(|_: &Seen| Reply::json(json!({}))).await;
    let bad = recorder(|_: &Seen| Reply::json(json!({})).status(500)).await;
    let gw = gateway(&config(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  ok: {{ targets: [{{ url: "{ok}" }}] }}
  bad: {{ targets: [{{ url: "{bad}" }}], retries: {{ attempts: 0 }} }}
routes:
  - name: counted
    match: {{ paths: ["/c"] }}
    aggregate:
      calls:
        good: {{ upstream: ok, path: "/g" }}
        failing: {{ upstream: bad, path: "/f" }}
        after: {{ upstream: ok, path: "/a", depends_on: [failing] }}
"#,
        ok = ok.url(),
        bad = bad.url()
    )))
    .await;
    for _ in 0..2 {
        let (status, _, _) = get(gw.url("/c")).await;
        assert_eq!(status, 200);
    }
    let admin = gw.gw.admin_addr().unwrap();
    let text = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"frontdesk_aggregate_calls_total{route="counted",call="good",result="ok"} 2"#,
        r#"frontdesk_aggregate_calls_total{route="counted",call="failing",result="failed"} 2"#,
        r#"frontdesk_aggregate_calls_total{route="counted",call="after",result="skipped"} 2"#,
        r#"frontdesk_aggregate_call_duration_seconds_count{route="counted",call="good"} 2"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    }
}

#[tokio::test]
async fn explain_lists_the_calls() {
    let gw = gateway(&with(
        &[
            ("users", "http://127.0.0.1:9".into()),
            ("orders", "http://127.0.0.1:9".into()),
            ("recs", "http://127.0.0.1:9".into()),
            ("catalog", "http://127.0.0.1:9".into()),
        ],
        &format!("admin: {{ address: \"127.0.0.1:0\" }}\n{HOME_SCREEN}"),
    ))
    .await;
    let admin = gw.gw.admin_addr().unwrap();
    let v: Value = client()
        .get(format!(
            "http://{admin}/explain?method=GET&path=/screens/home/u42"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = &v["matched"];
    assert_eq!(m["route"], "home-screen");
    assert_eq!(m["upstream"], Value::Null);
    let calls = m["aggregate"].as_array().unwrap();
    let call = |n: &str| calls.iter().find(|c| c["name"] == n).unwrap().clone();
    assert_eq!(call("profile")["path"], "/users/u42");
    assert_eq!(call("profile")["required"], true);
    assert_eq!(call("orders")["path"], "/orders?user=u42&limit=5");
    assert_eq!(call("recs")["path"], "/for/{profile.body.segment}");
    assert_eq!(call("recs")["after"], json!(["profile"]));
    assert_eq!(call("items")["for_each"], "orders.body.items[*].id");
    assert_eq!(call("items")["after"], json!(["orders"]));
    assert_eq!(call("items")["max_parallel"], 8);

    // `GET /routes` names the calls' upstreams too (its `upstream` is null), paths as written.
    let (status, _, routes) = get(format!("http://{admin}/routes")).await;
    assert_eq!(status, 200);
    let route = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "home-screen")
        .unwrap();
    assert_eq!(route["upstream"], Value::Null);
    let listed: Vec<(&str, &str, &str)> = route["aggregate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["upstream"].as_str().unwrap(),
                c["path"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("items", "catalog", "/items/{id}"),
            ("orders", "orders", "/orders?user={user}&limit=5"),
            ("profile", "users", "/users/{user}"),
            ("recs", "recs", "/for/{profile.body.segment}"),
        ]
    );

    // The CLI prints the same, offline.
    let out = std::process::Command::new(common::bin())
        .args(["explain", "-c"])
        .arg(gw.path())
        .args(["GET", "/screens/home/u42"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("upstream: (none; an aggregate of 4 calls)"),
        "{text}"
    );
    assert!(
        text.contains("call profile: GET users /users/u42 (required)"),
        "{text}"
    );
    assert!(
        text.contains("call items: GET catalog /items/{id} for each orders.body.items[*].id (at most 8 at once) after orders (optional)"),
        "{text}"
    );
}

#[tokio::test]
async fn the_route_cache_stores_the_aggregated_answer() {
    let users = recorder(|_: &Seen| {
        Reply::json(json!({"name": "Ann"})).header("cache-control", "max-age=60")
    })
    .await;
    let gw = gateway(&with(
        &[("users", users.url())],
        r#"routes:
  - name: cached
    match: { paths: ["/cached"] }
    plugins: { cache: {} }
    aggregate:
      calls:
        user: { upstream: users, path: "/u", required: true }
      headers: { from: [user], allow: [cache-control] }
"#,
    ))
    .await;
    let (_, h1, v1) = get(gw.url("/cached")).await;
    let (_, h2, v2) = get(gw.url("/cached")).await;
    assert_eq!(v1, v2);
    assert_eq!(v1["user"]["name"], "Ann");
    assert!(
        h1["cache-status"].to_str().unwrap().contains("stored"),
        "{h1:?}"
    );
    assert!(
        h2["cache-status"].to_str().unwrap().contains("hit"),
        "{h2:?}"
    );
    assert_eq!(
        users.seen().len(),
        1,
        "the second answer came from the cache"
    );
}

#[tokio::test]
async fn get_calls_use_the_route_cache_when_the_answer_itself_is_not_stored() {
    // `profile` may be stored (max-age); `live` may not (no-store). The aggregated answer takes no
    // cache headers, so it is not stored itself: every client request is aggregated again, and only
    // the storable call comes from the cache.
    let profile = recorder(|_: &Seen| {
        Reply::json(json!({"name": "Ann"})).header("cache-control", "max-age=60")
    })
    .await;
    let live = recorder(|s: &Seen| {
        Reply::json(json!({"n": s.uri.len()})).header("cache-control", "no-store")
    })
    .await;
    let gw = gateway(&with(
        &[("users", profile.url()), ("live", live.url())],
        r#"routes:
  - name: per-call
    match: { paths: [{ template: "/screen/{user}" }] }
    plugins: { cache: {} }
    aggregate:
      calls:
        profile: { upstream: users, path: "/users/{user}", required: true }
        live: { upstream: live, path: "/live/{user}", required: true }
"#,
    ))
    .await;
    for _ in 0..3 {
        let (status, headers, v) = get(gw.url("/screen/7")).await;
        assert_eq!(status, 200);
        assert_eq!(v["profile"]["name"], "Ann");
        assert!(
            !headers["cache-status"].to_str().unwrap().contains("hit"),
            "the aggregated answer is not stored: {headers:?}"
        );
    }
    assert_eq!(
        profile.seen().len(),
        1,
        "the storable call was answered from the cache"
    );
    assert_eq!(
        live.seen().len(),
        3,
        "the no-store call went upstream every time"
    );
    // Another user is another key.
    get(gw.url("/screen/8")).await;
    assert_eq!(profile.seen().len(), 2);
}

/// A minimal OTLP/gRPC trace receiver (the collector's `TraceService`, served by tonic) that
/// keeps every span it is sent.
mod otlp {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::Span;

    #[derive(Clone, Default)]
    pub struct Spans(pub Arc<Mutex<Vec<Span>>>);

    #[tonic::async_trait]
    impl TraceService for Spans {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut all = self.0.lock().unwrap();
            for rs in req.into_inner().resource_spans {
                for ss in rs.scope_spans {
                    all.extend(ss.spans);
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Starts the receiver on port 0: its endpoint and what it keeps.
    pub async fn receiver() -> (String, Spans) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Spans::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(spans.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (format!("http://{addr}"), spans)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn each_call_is_one_span_with_its_attempts_under_it() {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let (endpoint, spans) = otlp::receiver().await;
    let list = recorder(|_: &Seen| Reply::json(json!({ "ids": [1, 2] }))).await;
    let item = recorder(|_: &Seen| Reply::json(json!({}))).await;
    let gw = gateway(&with(
        &[("list", list.url()), ("item", item.url())],
        &format!(
            r#"observability:
  tracing: {{ otlp_endpoint: "{endpoint}", sample_ratio: 1.0 }}
routes:
  - name: traced
    match: {{ paths: ["/t"] }}
    aggregate:
      calls:
        list: {{ upstream: list, path: "/l", required: true }}
        items: {{ upstream: item, path: "/i/{{id}}", for_each: "list.body.ids[*]", as: id }}
"#
        ),
    ))
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client()
        .get(gw.url("/t"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await;
    // One server span, two call spans, three attempts.
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        let got: Vec<_> = spans
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .cloned()
            .collect();
        if got.len() >= 6 || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.len(), 6, "{got:#?}");
    let server = got
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    let call = |name: &str| {
        got.iter()
            .find(|s| s.kind == SpanKind::Internal as i32 && s.name == name)
            .unwrap_or_else(|| panic!("no span {name}: {got:#?}"))
    };
    let (list_span, items_span) = (call("aggregate list"), call("aggregate items"));
    for c in [list_span, items_span] {
        assert_eq!(c.parent_span_id, server.span_id);
    }
    let attempts: Vec<_> = got
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!(attempts.len(), 3);
    let under = |parent: &[u8]| {
        attempts
            .iter()
            .filter(|a| a.parent_span_id == parent)
            .count()
    };
    assert_eq!(under(&list_span.span_id), 1);
    assert_eq!(under(&items_span.span_id), 2);
    // Each upstream request was sent under its attempt's span.
    let sent = &list.seen()[0].headers["traceparent"];
    let attempt = attempts
        .iter()
        .find(|a| a.parent_span_id == list_span.span_id)
        .unwrap();
    assert_eq!(sent, &format!("00-{trace}-{}-01", hex(&attempt.span_id)));
}
