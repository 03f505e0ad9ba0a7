//! The admin API on its own listener: health and metrics, the token, the effective config with
//! secrets redacted, validate / PUT / reload through the one reload path, routes, upstream
//! health, explain (API and CLI), and the separation of admin and proxy listeners.
//!
//! In-process gateways and the real binary, real sockets, port 0 everywhere.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, closed_port, config, echo, full, gateway, upstream, TestGateway};
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-admin-token";

/// A config with one listener, `body`, and an admin listener on port 0 with `token`.
fn with_admin(body: &str, token: Option<&str>) -> String {
    let token = token.map_or(String::new(), |t| format!(", token: \"{t}\""));
    config(&format!(
        "{body}admin: {{ address: \"127.0.0.1:0\"{token} }}\n"
    ))
}

/// Routes `/users` (stripped) and `/orders` to `echo`, and answers `/hello` with `body`.
fn routes_config(echo_url: &str, body: &str) -> String {
    format!(
        r#"upstreams:
  users: {{ targets: [{{ url: "{echo_url}" }}] }}
routes:
  - name: orders
    match: {{ paths: ["/orders"] }}
    upstream: users
  - name: users-v2
    match: {{ paths: ["/users"], headers: {{ x-api-version: "2" }} }}
    upstream: users
    strip_prefix: true
    plugins:
      headers: {{ response: {{ set: {{ x-v: "2" }} }} }}
  - name: users
    match: {{ paths: ["/users"], methods: [GET] }}
    upstream: users
    strip_prefix: true
  - name: hello
    match: {{ paths: [{{ exact: /hello }}] }}
    plugins:
      respond: {{ body: "{body}" }}
"#
    )
}

/// Requests to an admin listener.
struct Admin {
    base: String,
    token: Option<String>,
    c: reqwest::Client,
}

impl Admin {
    fn of(addr: SocketAddr, token: Option<&str>) -> Admin {
        Admin {
            base: format!("http://{addr}"),
            token: token.map(str::to_string),
            c: client(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.c.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        json_of(self.req(reqwest::Method::GET, path).send().await.unwrap()).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        let r = self.req(method, path).body(body.to_string());
        json_of(r.send().await.unwrap()).await
    }
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

async fn admin_gateway(yaml: &str, token: Option<&str>) -> (TestGateway, Admin) {
    let gw = gateway(yaml).await;
    let addr = gw.gw.admin_addr().expect("admin listener runs");
    (gw, Admin::of(addr, token))
}

/// A gateway on [`routes_config`] (answering `/hello` with `hello`) and its admin API, token
/// [`TOKEN`].
async fn routed(hello: &str) -> (common::Upstream, TestGateway, Admin) {
    let up = echo("users").await;
    let yaml = with_admin(&routes_config(&up.url(), hello), Some(TOKEN));
    let (gw, admin) = admin_gateway(&yaml, Some(TOKEN)).await;
    (up, gw, admin)
}

/// The body of a plain `GET url`.
async fn body(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn messages(v: &Value, key: &str) -> Vec<(String, String)> {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["path"].as_str().unwrap_or("").to_string(),
                        f["message"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Health, metrics, token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn livez_readyz_and_metrics_are_open_and_everything_else_needs_the_token() {
    let (up, gw, admin) = routed("hi").await;
    let anon = Admin::of(gw.gw.admin_addr().unwrap(), None);
    let wrong = Admin::of(gw.gw.admin_addr().unwrap(), Some("not-the-token"));

    assert_eq!(anon.get("/livez").await, (200, json!({ "status": "ok" })));
    let (status, ready) = anon.get("/readyz").await;
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));
    let m = anon
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    assert_eq!(
        m.headers()["content-type"],
        frontdesk::observe::metrics::CONTENT_TYPE
    );
    let text = m.text().await.unwrap();
    assert!(text.contains("frontdesk_config_reloads_total"), "{text}");

    for (who, detail) in [(&anon, "required"), (&wrong, "wrong")] {
        for path in [
            "/config",
            "/routes",
            "/upstreams",
            "/openapi.json",
            "/explain",
        ] {
            let r = who.req(reqwest::Method::GET, path).send().await.unwrap();
            assert_eq!(r.status(), 401, "{path}");
            assert!(r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["status"], 401);
            assert!(body["detail"].as_str().unwrap().contains(detail), "{body}");
        }
        let (status, _) = who
            .send(reqwest::Method::PUT, "/config", "version: 1")
            .await;
        assert_eq!(status, 401);
        let (status, _) = who.send(reqwest::Method::POST, "/reload", "").await;
        assert_eq!(status, 401);
    }
    assert_eq!(admin.get("/config").await.0, 200);
    let (status, doc) = admin.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/explain"]["get"].is_object());

    let (status, nf) = admin.get("/no/such/path").await;
    assert_eq!((status, &nf["status"]), (404, &json!(404)));

    // A new token takes effect with the reload that brings it.
    gw.rewrite(&with_admin(
        &routes_config(&up.url(), "hi"),
        Some("rotated"),
    ))
    .await;
    gw.gw.reload().await.expect("reload");
    assert_eq!(admin.get("/config").await.0, 401);
    let rotated = Admin::of(gw.gw.admin_addr().unwrap(), Some("rotated"));
    assert_eq!(rotated.get("/config").await.0, 200);
}

#[tokio::test]
async fn without_a_token_the_loopback_admin_listener_is_open() {
    let up = echo("users").await;
    let (_gw, admin) =
        admin_gateway(&with_admin(&routes_config(&up.url(), "hi"), None), None).await;
    assert_eq!(admin.get("/routes").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_draining_and_the_admin_listener_stops_last() {
    let slow = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        hyper::Response::new(full("slow done"))
    })
    .await;
    let yaml = with_admin(
        &format!(
            "upstreams:\n  slow: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: slow, match: {{ paths: [\"/\"] }}, upstream: slow }}\n",
            slow.url()
        ),
        None,
    );
    let (gw, admin) = admin_gateway(&yaml, None).await;
    let url = gw.url("/slow");
    let pending = tokio::spawn(async move { client().get(url).send().await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.requests() == 0 {
        assert!(Instant::now() < deadline, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let g = gw.gw.clone();
    let shutdown = tokio::spawn(async move { g.shutdown().await });
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, body) = admin.get("/readyz").await;
        if status == 503 {
            assert_eq!(body["status"], "draining");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz still {status} while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        admin.get("/livez").await.0,
        200,
        "the admin listener serves while draining"
    );
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.text().await.unwrap(), "slow done");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    let gone = client()
        .get(format!("{}/livez", admin.base))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(gone.is_err(), "the admin listener stopped with the gateway");
}

// ---------------------------------------------------------------------------------------------
// Config: read, validate, apply, reload
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_config_shows_the_effective_config_with_every_secret_redacted() {
    let yaml = with_admin(
        r#"redis: { url: "redis://:redis-password-1@127.0.0.1:1/0" }
consumers:
  - name: alice
    api_keys: [api-key-secret-1]
  - name: bob
    basic_auth: { username: bob, password_hash: "$2b$04$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" }
plugins:
  jwt: { issuers: [{ issuer: me, secret: jwt-hmac-secret-1, algorithms: [HS256] }] }
routes:
  - name: hello
    match: { paths: ["/"] }
    plugins:
      respond: { body: hi }
"#,
        Some(TOKEN),
    );
    let (_gw, admin) = admin_gateway(&yaml, Some(TOKEN)).await;
    let r = admin
        .req(reqwest::Method::GET, "/config")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for secret in [
        "redis-password-1",
        "api-key-secret-1",
        "abcdefghijklmnopqrstuuvwxyz",
        "jwt-hmac-secret-1",
        TOKEN,
    ] {
        assert!(!text.contains(secret), "{secret} appears in {text}");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    let version = v["version"].as_str().unwrap();
    assert_eq!(version.len(), 64);
    assert!(version.bytes().all(|b| b.is_ascii_hexdigit()));
    let loaded_at = v["loaded_at"].as_str().unwrap();
    assert!(
        loaded_at.len() == 24 && loaded_at.ends_with('Z') && loaded_at.as_bytes()[10] == b'T',
        "{loaded_at}"
    );
    assert_eq!(v["generation"], 1);
    let cfg = &v["config"];
    assert_eq!(cfg["routes"][0]["name"], "hello");
    assert_eq!(cfg["server"]["drain_timeout"], "5s");
    assert_eq!(cfg["consumers"][0]["api_keys"][0], "<redacted>");
    assert_eq!(cfg["consumers"][1]["basic_auth"]["username"], "bob");
    assert_eq!(cfg["admin"]["token"], "<redacted>");
    assert_eq!(cfg["redis"]["url"], "redis://:<redacted>@127.0.0.1:1/0");
}

#[tokio::test]
async fn validate_answers_warnings_or_every_error_with_its_path() {
    let (up, gw, admin) = routed("hi").await;
    let valid = routes_config(&up.url(), "changed");
    let (status, v) = admin
        .send(reqwest::Method::POST, "/config/validate", &config(&valid))
        .await;
    assert_eq!((status, &v["valid"]), (200, &json!(true)), "{v}");
    assert!(v["warnings"].is_array());

    // JSON is accepted too, and warnings come back with their paths.
    let as_json = json!({
        "version": 1,
        "listeners": [{ "name": "public", "address": "127.0.0.1:0" }],
        "upstreams": { "u": { "targets": [{ "url": up.url() }] } },
        "routes": [
            { "name": "all", "match": { "paths": ["/"] }, "upstream": "u" },
            { "name": "never", "match": { "paths": ["/"] }, "upstream": "u" },
        ],
    });
    let (status, v) = admin
        .send(
            reqwest::Method::POST,
            "/config/validate",
            &as_json.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        messages(&v, "warnings")
            .iter()
            .any(|(p, _)| p == "routes[1]"),
        "{v}"
    );

    let bad = config(
        "upstreams:\n  u: { targets: [{ url: \"http://127.0.0.1:1\" }] }\nroutes:\n  - { name: a, match: { paths: [\"/\"] }, upstream: nope }\n  - { name: b, match: { paths: [\"/b\"] }, upstream: u, bogus: 1 }\n",
    );
    let (status, v) = admin
        .send(reqwest::Method::POST, "/config/validate", &bad)
        .await;
    assert_eq!((status, &v["valid"]), (422, &json!(false)), "{v}");
    let errs = messages(&v, "errors");
    assert!(
        errs.iter()
            .any(|(p, m)| p == "routes[0].upstream" && m.contains("nope")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|(p, _)| p.starts_with("routes[1]")),
        "{errs:?}"
    );

    let (status, v) = admin
        .send(reqwest::Method::POST, "/config/validate", "version: [1")
        .await;
    assert_eq!(status, 422);
    assert!(v["errors"][0]["line"].is_number(), "{v}");
    assert_eq!(gw.gw.snapshot().generation, 1, "validating applies nothing");
}

#[tokio::test]
async fn put_config_that_is_invalid_changes_nothing() {
    let up = echo("users").await;
    let yaml = with_admin(&routes_config(&up.url(), "before"), Some(TOKEN));
    let (gw, admin) = admin_gateway(&yaml, Some(TOKEN)).await;
    let on_disk = std::fs::read(gw.path()).unwrap();
    let bad = with_admin(
        &routes_config(&up.url(), "after")
            .replace("upstream: users\n    strip", "upstream: userz\n    strip"),
        Some(TOKEN),
    );
    let (status, v) = admin.send(reqwest::Method::PUT, "/config", &bad).await;
    assert_eq!((status, &v["valid"]), (422, &json!(false)), "{v}");
    assert!(
        messages(&v, "errors")
            .iter()
            .any(|(p, _)| p == "routes[1].upstream"),
        "{v}"
    );
    assert_eq!(std::fs::read(gw.path()).unwrap(), on_disk, "file untouched");
    assert_eq!(gw.gw.snapshot().generation, 1);
    assert_eq!(body(&gw.url("/hello")).await, "before");
    let m = body(&format!("{}/metrics", admin.base)).await;
    assert!(
        m.contains("frontdesk_config_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn post_reload_rereads_the_file() {
    let (up, gw, admin) = routed("one").await;
    gw.rewrite(&with_admin(&routes_config(&up.url(), "two"), Some(TOKEN)))
        .await;
    let (status, v) = admin.send(reqwest::Method::POST, "/reload", "").await;
    assert_eq!((status, &v["generation"]), (200, &json!(2)), "{v}");
    assert_eq!(body(&gw.url("/hello")).await, "two");

    gw.rewrite("version: 1\nroutes: nope\n").await;
    let (status, v) = admin.send(reqwest::Method::POST, "/reload", "").await;
    assert_eq!((status, &v["valid"]), (422, &json!(false)), "{v}");
    assert!(!messages(&v, "errors").is_empty());
    assert_eq!(gw.gw.snapshot().generation, 2);
    let m = body(&format!("{}/metrics", admin.base)).await;
    assert!(
        m.contains("frontdesk_config_reloads_total{result=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("frontdesk_config_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
}

/// The binary on the config file at `path`: its proxy and admin addresses.
struct Bin {
    child: std::process::Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_on(path: &Path) -> Bin {
    let s = common::spawn_at(path);
    let log = s.log;
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || while log.recv().is_ok() {});
    Bin {
        child: s.child,
        proxy: s.addr,
        admin: s.admin.expect("the admin listener started"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_config_applies_saves_and_survives_a_restart() {
    let up = echo("users").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(
        &path,
        with_admin(&routes_config(&up.url(), "before"), Some(TOKEN)),
    )
    .unwrap();
    let bin = tokio::task::spawn_blocking({
        let path = path.clone();
        move || spawn_on(&path)
    })
    .await
    .unwrap();
    let admin = Admin::of(bin.admin, Some(TOKEN));
    let hello = format!("http://{}/hello", bin.proxy);
    assert_eq!(body(&hello).await, "before");

    let new = with_admin(&routes_config(&up.url(), "after"), Some(TOKEN));
    let (status, v) = admin.send(reqwest::Method::PUT, "/config", &new).await;
    assert_eq!((status, &v["generation"]), (200, &json!(2)), "{v}");
    assert_eq!(body(&hello).await, "after");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        new,
        "saved to the file"
    );
    // The watcher sees the write (debounced 150 ms) but the text is the one applied: no reload.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, cfg) = admin.get("/config").await;
    assert_eq!(
        cfg["generation"], 2,
        "the written file was not applied twice"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");

    drop(bin);
    let bin = tokio::task::spawn_blocking({
        let path = path.clone();
        move || spawn_on(&path)
    })
    .await
    .unwrap();
    let hello = format!("http://{}/hello", bin.proxy);
    assert_eq!(
        body(&hello).await,
        "after",
        "a restart keeps the config that was PUT"
    );
}

// ---------------------------------------------------------------------------------------------
// Routes, upstreams, explain
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn routes_are_listed_in_match_order_with_their_plugins() {
    let (_up, _gw, admin) = routed("hi").await;
    let (status, v) = admin.get("/routes").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    // Exact before prefixes, longer prefixes first, then declaration order.
    assert_eq!(names, ["hello", "orders", "users-v2", "users"]);
    let v2 = &v[2];
    assert_eq!(v2["upstream"], "users");
    assert_eq!(v2["strip_prefix"], true);
    assert_eq!(v2["plugins"], json!(["headers"]));
    assert_eq!(v2["match"]["headers"]["x-api-version"], "2");
    assert_eq!(v2["match"]["paths"], json!([{ "prefix": "/users" }]));
    assert_eq!(v[0]["upstream"], Value::Null);
    assert_eq!(v[0]["plugins"], json!(["respond"]));
    // Only aggregate routes list calls (tests/aggregate.rs).
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.get("aggregate").is_none()));
}

#[tokio::test]
async fn upstreams_show_a_dead_target_ejected_by_passive_checks() {
    let live = echo("live").await;
    let dead = closed_port().await;
    let yaml = with_admin(
        &format!(
            r#"upstreams:
  pool:
    targets: [{{ url: "{}" }}, {{ url: "http://{dead}" }}]
    health_check: {{ passive: {{ unhealthy_after: 1, eject_for: 60s }} }}
  guarded:
    targets: [{{ url: "{}" }}]
    circuit_breaker: {{ min_requests: 100 }}
routes:
  - {{ name: all, match: {{ paths: ["/"] }}, upstream: pool }}
"#,
            live.url(),
            live.url()
        ),
        Some(TOKEN),
    );
    let (gw, admin) = admin_gateway(&yaml, Some(TOKEN)).await;
    let (_, before) = admin.get("/upstreams").await;
    assert_eq!(before[1]["name"], "pool");
    assert_eq!(before[1]["targets"][1]["healthy"], true);
    // Round robin reaches the dead target within two requests; its connect failure is retried
    // on the live one, so every request succeeds.
    for _ in 0..4 {
        let r = client().get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let (status, v) = admin.get("/upstreams").await;
    assert_eq!(status, 200);
    assert_eq!(v[0]["name"], "guarded");
    assert_eq!(v[0]["targets"][0]["breaker"], "closed");
    let pool = &v[1];
    let live_t = &pool["targets"][0];
    let dead_t = &pool["targets"][1];
    assert_eq!(live_t["url"], live.url());
    assert_eq!(
        (&live_t["healthy"], &live_t["ejected"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(dead_t["url"], format!("http://{dead}"));
    assert_eq!(
        (&dead_t["healthy"], &dead_t["ejected"]),
        (&json!(false), &json!(true)),
        "{v}"
    );
    assert_eq!(dead_t["breaker"], "disabled");
    assert_eq!(live_t["in_flight"], 0);
    assert!(
        live_t["latency_ms_p50"].is_null() || live_t["latency_ms_p50"].is_number(),
        "{v}"
    );
}

#[tokio::test]
async fn explain_names_the_route_plugins_upstream_and_why_others_did_not_match() {
    let (_up, _gw, admin) = routed("hi").await;
    let (status, v) = admin
        .get("/explain?method=GET&host=api.example.com&path=%2Fusers%2F42%3Fa%3D1&header=x-api-version:2")
        .await;
    assert_eq!(status, 200, "{v}");
    let m = &v["matched"];
    assert_eq!(m["route"], "users-v2");
    assert_eq!(m["rule"], "prefix /users");
    assert_eq!(m["plugins"], json!(["headers"]));
    assert_eq!(m["upstream"], "users");
    assert_eq!(m["upstream_path"], "/42?a=1");
    assert_eq!(v["request"]["host"], "api.example.com");
    let considered = v["considered"].as_array().unwrap();
    assert!(considered
        .iter()
        .any(|c| c["route"] == "orders"
            && c["reason"] == "path /users/42 does not match prefix /orders"));

    // Without the header and with POST: every /users route says why.
    let (status, v) = admin.get("/explain?method=POST&path=/users/42").await;
    assert_eq!(status, 200);
    assert_eq!(v["matched"], Value::Null);
    let reasons: Vec<(String, String)> = v["considered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["route"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("hello", "path /users/42 does not match exact /hello"),
        ("orders", "path /users/42 does not match prefix /orders"),
        (
            "users-v2",
            "header x-api-version is missing; the route needs \"2\"",
        ),
        ("users", "method POST is not one of GET"),
    ] {
        assert!(
            reasons.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} not in {reasons:?}"
        );
    }

    let (status, v) = admin.get("/explain?method=G%20T&path=/").await;
    assert_eq!((status, &v["status"]), (400, &json!(400)), "{v}");
}

#[test]
fn explain_cli_prints_the_same_explanation_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(&path, config(&routes_config("http://127.0.0.1:1", "hi"))).unwrap();
    let run_code = |args: &[&str], code: i32| {
        let out = Command::new(common::bin())
            .arg("explain")
            .arg("-c")
            .arg(&path)
            .args(args)
            .env("FRONTDESK_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let run = |args: &[&str]| run_code(args, 0);
    let text = run(&[
        "GET",
        "http://api.example.com/users/42",
        "-H",
        "x-api-version: 2",
    ]);
    assert!(
        text.contains("matched: route \"users-v2\" (prefix /users)"),
        "{text}"
    );
    assert!(text.contains("plugins: headers"), "{text}");
    assert!(text.contains("upstream: users /42"), "{text}");
    assert!(
        text.contains("\"orders\" (prefix /orders): path /users/42 does not match prefix /orders"),
        "{text}"
    );

    // No route matches: exit 1, the explanation printed all the same.
    let json: Value = serde_json::from_str(&run_code(&["POST", "/users/42", "--json"], 1)).unwrap();
    assert_eq!(json["matched"], Value::Null);
    assert!(json["considered"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["route"] == "users" && c["reason"] == "method POST is not one of GET"));

    let bad = Command::new(common::bin())
        .args(["explain", "-c"])
        .arg(&path)
        .args(["GET", "users"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid URL"));
}

// ---------------------------------------------------------------------------------------------
// Separation of the listeners
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_paths_are_not_on_the_proxy_and_proxied_routes_are_not_on_the_admin_listener() {
    let up = echo("users").await;
    let (gw, admin) = admin_gateway(&with_admin(&routes_config(&up.url(), "hi"), None), None).await;
    for path in [
        "/livez",
        "/readyz",
        "/metrics",
        "/config",
        "/routes",
        "/openapi.json",
    ] {
        let r = client().get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the proxy listener");
    }
    for path in ["/hello", "/users/1", "/orders"] {
        let (status, v) = admin.get(path).await;
        assert_eq!(status, 404, "{path} on the admin listener: {v}");
        assert_eq!(v["detail"], "no such admin path");
    }
    assert_eq!(up.requests(), 0, "nothing reached the upstream");
}
