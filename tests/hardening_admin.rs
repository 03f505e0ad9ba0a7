//! Hardening of the admin surface and the runtime around it (issue 11, items 2, 9, 16, 19, 20,
//! 21): the `GET /config` → `PUT /config` round trip keeps secrets, `${VAR}` references and
//! comments, and no placeholder ever works as a credential; the file watcher reacts only to the
//! config file; a busy port is reported once with its field path before the admin listener
//! binds; `GET /config` shows effective values; the last-reload timestamp is set at start;
//! `explain` exits 1 without a match; consumer headers and the anonymous consumer.
//!
//! The real binary (or an in-process gateway), real sockets, port 0 everywhere.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use common::{bin, client, echo, echo_json};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "adm-0123456789-real";
const API_KEY: &str = "key-abcdef-real";
const JWT_SECRET: &str = "jwt-hmac-secret-real-0123456789abcdef";
const UP_TOKEN: &str = "upstream-bearer-real";

/// The binary started on a config file, with extra environment variables.
struct Proc {
    child: std::process::Child,
    proxy: SocketAddr,
    admin: Option<SocketAddr>,
    log: Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Log lines that arrive within `wait`.
    fn lines_for(&self, wait: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(_) => {
                    std::thread::sleep(left);
                    break;
                }
            }
        }
        out
    }
}

fn spawn(path: &Path, env: &[(&str, &str)]) -> Proc {
    let s = common::spawn_configured(path, |c| {
        c.envs(env.iter().copied());
    });
    Proc {
        child: s.child,
        proxy: s.addr,
        admin: s.admin,
        log: s.log,
    }
}

async fn spawn_async(path: PathBuf, env: Vec<(&'static str, &'static str)>) -> Proc {
    tokio::task::spawn_blocking(move || spawn(&path, &env))
        .await
        .unwrap()
}

async fn admin_req(
    admin: SocketAddr,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> (u16, Value) {
    let mut r = client()
        .request(method, format!("http://{admin}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.body(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn hs256(secret: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({ "iss": "me", "sub": "alice", "exp": exp }),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn status_of(r: reqwest::RequestBuilder) -> u16 {
    r.send().await.unwrap().status().as_u16()
}

/// A config with a secret of every kind, most from `${VAR}`, and comments.
fn secrets_config(up: &str) -> String {
    format!(
        r#"# Frontdesk: the comment at the top stays.
version: 1
server: {{ drain_timeout: 1s }}
listeners:
  - name: public
    address: 127.0.0.1:0
upstreams:
  echo:
    targets:
      - url: "{up}"  # the echo upstream
routes:
  - name: keyed
    match: {{ paths: ["/keyed"] }}
    upstream: echo
    plugins:
      key_auth: {{}}
      headers:
        request:
          set: {{ authorization: "Bearer ${{FD_UP_TOKEN}}", x-tenant: acme }}
  - name: tokens
    match: {{ paths: ["/tokens"] }}
    upstream: echo
    plugins:
      jwt:
        issuers:
          - issuer: me
            secret: ${{FD_JWT_SECRET}}
            algorithms: [HS256]
  - name: open
    match: {{ paths: ["/open"] }}
    plugins:
      respond: {{ body: "before" }}
consumers:
  # alice's key comes from the environment
  - name: alice
    api_keys: ["${{FD_API_KEY}}"]
  - name: bob
    groups: [partners]
    api_keys: ["bob-key-literal-real"]
admin:
  address: 127.0.0.1:0
  token: ${{FD_ADMIN_TOKEN}}
"#
    )
}

const SECRETS_ENV: [(&str, &str); 4] = [
    ("FD_API_KEY", API_KEY),
    ("FD_JWT_SECRET", JWT_SECRET),
    ("FD_ADMIN_TOKEN", ADMIN_TOKEN),
    ("FD_UP_TOKEN", UP_TOKEN),
];

// ---------------------------------------------------------------------------------------------
// Item 2: the admin config round trip
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_edit_put_keeps_secrets_var_references_and_comments() {
    let up = echo("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    let original = secrets_config(&up.url());
    std::fs::write(&path, &original).unwrap();
    let p = spawn_async(path.clone(), SECRETS_ENV.to_vec()).await;
    let admin = p.admin.unwrap();
    let proxy = p.proxy;
    let c = client();

    let (status, got) = admin_req(admin, reqwest::Method::GET, "/config", ADMIN_TOKEN, None).await;
    assert_eq!(status, 200, "{got}");
    let shown = got["config"].to_string();
    for secret in [
        ADMIN_TOKEN,
        API_KEY,
        JWT_SECRET,
        UP_TOKEN,
        "bob-key-literal-real",
    ] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    // The edit: one route answers something else.
    let mut edited = got["config"].clone();
    assert_eq!(edited["routes"][2]["plugins"]["respond"]["body"], "before");
    edited["routes"][2]["plugins"]["respond"]["body"] = json!("after");
    let (status, v) = admin_req(
        admin,
        reqwest::Method::PUT,
        "/config",
        ADMIN_TOKEN,
        Some(edited.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        c.get(format!("http://{proxy}/open"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "after"
    );

    // The real secrets still work.
    let keyed = format!("http://{proxy}/keyed");
    assert_eq!(
        status_of(c.get(&keyed).header("x-api-key", API_KEY)).await,
        200
    );
    assert_eq!(
        status_of(c.get(&keyed).header("x-api-key", "bob-key-literal-real")).await,
        200
    );
    let echoed = echo_json(
        c.get(&keyed)
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        echoed["headers"]["authorization"],
        format!("Bearer {UP_TOKEN}")
    );
    let tokens = format!("http://{proxy}/tokens");
    assert_eq!(
        status_of(c.get(&tokens).bearer_auth(hs256(JWT_SECRET))).await,
        200
    );
    let (status, _) = admin_req(admin, reqwest::Method::GET, "/routes", ADMIN_TOKEN, None).await;
    assert_eq!(status, 200, "the real admin token still works");

    // And no placeholder works as one.
    assert_eq!(
        status_of(c.get(&keyed).header("x-api-key", "<redacted>")).await,
        401
    );
    assert_eq!(
        status_of(c.get(&tokens).bearer_auth(hs256("<redacted>"))).await,
        401
    );
    let (status, _) = admin_req(admin, reqwest::Method::GET, "/routes", "<redacted>", None).await;
    assert_eq!(status, 401);

    // The file changed only where the edit was.
    let on_disk = std::fs::read_to_string(&path).unwrap();
    for kept in [
        "# Frontdesk: the comment at the top stays.",
        "# the echo upstream",
        "# alice's key comes from the environment",
        "${FD_API_KEY}",
        "${FD_JWT_SECRET}",
        "${FD_ADMIN_TOKEN}",
        "Bearer ${FD_UP_TOKEN}",
        "bob-key-literal-real",
    ] {
        assert!(
            on_disk.contains(kept),
            "{kept:?} lost from the file:\n{on_disk}"
        );
    }
    assert!(!on_disk.contains("<redacted>"), "{on_disk}");
    assert_eq!(
        on_disk,
        original.replace("\"before\"", "\"after\""),
        "only the edited value changed"
    );

    // A restart on the written file keeps the real secrets.
    drop(p);
    let p = spawn_async(path.clone(), SECRETS_ENV.to_vec()).await;
    let keyed = format!("http://{}/keyed", p.proxy);
    assert_eq!(
        status_of(c.get(&keyed).header("x-api-key", API_KEY)).await,
        200
    );
    assert_eq!(
        status_of(c.get(&keyed).header("x-api-key", "<redacted>")).await,
        401
    );
    let open = format!("http://{}/open", p.proxy);
    assert_eq!(
        c.get(open).send().await.unwrap().text().await.unwrap(),
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_where_no_secret_is_kept_is_refused_with_its_path() {
    let up = echo("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(&path, secrets_config(&up.url())).unwrap();
    let p = spawn_async(path.clone(), SECRETS_ENV.to_vec()).await;
    let admin = p.admin.unwrap();
    let before = std::fs::read_to_string(&path).unwrap();

    let (_, got) = admin_req(admin, reqwest::Method::GET, "/config", ADMIN_TOKEN, None).await;
    let mut edited = got["config"].clone();
    // A new consumer that copies a placeholder, and a placeholder moved to a non-secret field.
    edited["consumers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "mallory", "api_keys": ["<redacted>"] }));
    edited["routes"][2]["plugins"]["respond"]["body"] = json!("<redacted>");
    let (status, v) = admin_req(
        admin,
        reqwest::Method::PUT,
        "/config",
        ADMIN_TOKEN,
        Some(edited.to_string()),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    let paths: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"consumers[2].api_keys[0]"), "{v}");
    assert!(paths.contains(&"routes[2].plugins.respond.body"), "{v}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        before,
        "file untouched"
    );

    // Swapping two consumers does not swap their keys: each placeholder belongs to a name.
    let mut swapped = got["config"].clone();
    swapped["consumers"].as_array_mut().unwrap().swap(0, 1);
    let (status, v) = admin_req(
        admin,
        reqwest::Method::PUT,
        "/config",
        ADMIN_TOKEN,
        Some(swapped.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let c = client();
    let keyed = format!("http://{}/keyed", p.proxy);
    let who = echo_json(
        c.get(&keyed)
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(who["headers"]["x-consumer-name"], "alice");
    let who = echo_json(
        c.get(&keyed)
            .header("x-api-key", "bob-key-literal-real")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(who["headers"]["x-consumer-name"], "bob");
}

#[test]
fn a_placeholder_secret_in_a_config_file_is_refused() {
    let cases = [
        ("consumers:\n  - name: a\n    api_keys: [\"<redacted>\"]\n", "consumers[0].api_keys[0]"),
        ("admin: { address: \"127.0.0.1:0\", token: \"<redacted>\" }\n", "admin.token"),
        (
            "routes:\n  - name: r\n    match: { paths: [\"/\"] }\n    plugins:\n      respond: { body: x }\n      jwt: { issuers: [{ issuer: me, secret: \"<redacted>\", algorithms: [HS256] }] }\n",
            "routes[0].plugins.jwt.issuers[0].secret",
        ),
        (
            "plugins:\n  headers: { request: { set: { x-api-key: \"<redacted>\" } } }\n",
            "plugins.headers.request.set.x-api-key",
        ),
    ];
    for (body, at) in cases {
        let yaml = format!("version: 1\n{body}");
        let errs = frontdesk::config::load_str(&yaml, &|_| None)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{yaml}"));
        assert!(
            errs.iter()
                .any(|d| d.is_error() && d.path == at && d.message.contains("placeholder")),
            "{at}: {errs:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Item 9: the file watcher
// ---------------------------------------------------------------------------------------------

fn simple_config(body: &str) -> String {
    format!(
        "version: 1\nserver: {{ drain_timeout: 1s }}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\nroutes:\n  - name: hi\n    match: {{ paths: [\"/\"] }}\n    plugins:\n      respond: {{ body: \"{body}\" }}\nadmin: {{ address: \"127.0.0.1:0\" }}\nobservability:\n  access_log: {{ output: access.log }}\n"
    )
}

fn reload_metric(metrics: &str, result: &str) -> u64 {
    let needle = format!("frontdesk_config_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn metrics(admin: SocketAddr) -> String {
    client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Counts the opens of `path` (by anyone) while it lives.
fn watch_opens(path: &Path) -> (notify::RecommendedWatcher, Arc<AtomicUsize>) {
    use notify::Watcher as _;
    let opens = Arc::new(AtomicUsize::new(0));
    let o = opens.clone();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if matches!(
                ev.kind,
                notify::EventKind::Access(notify::event::AccessKind::Open(_))
            ) {
                o.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    w.watch(path, notify::RecursiveMode::NonRecursive).unwrap();
    (w, opens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_changes_to_the_config_file_itself_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    let good = simple_config("one");
    std::fs::write(&path, &good).unwrap();
    let p = spawn_async(path.clone(), vec![]).await;
    let admin = p.admin.unwrap();
    let url = format!("http://{}/", p.proxy);
    let c = client();

    // Requests write the access log next to the config: the config file is not even opened.
    let (watch, opens) = watch_opens(&path);
    for _ in 0..20 {
        assert_eq!(
            c.get(&url).send().await.unwrap().text().await.unwrap(),
            "one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dir.path().join("access.log").exists());
    assert_eq!(
        opens.load(Ordering::SeqCst),
        0,
        "the config file was re-read"
    );
    drop(watch);

    // A broken write: refused once, not again while requests and another log write next to it.
    std::fs::write(&path, "version: 1\nroutes: nope\n").unwrap();
    let log = dir.path().join("frontdesk.log");
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for i in 0..25 {
            writeln!(f, "log line {i}").unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    for _ in 0..10 {
        assert_eq!(
            c.get(&url).send().await.unwrap().text().await.unwrap(),
            "one"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = tokio::task::block_in_place(|| p.lines_for(Duration::from_secs(3)));
    writer.join().unwrap();
    let refusals = seen.iter().filter(|l| l.contains("reload refused")).count();
    assert_eq!(refusals, 1, "one refusal per distinct content: {seen:#?}");
    let m = metrics(admin).await;
    assert_eq!(reload_metric(&m, "failure"), 1, "{m}");
    assert_eq!(reload_metric(&m, "success"), 0, "{m}");

    // Back to the running config: said so, and nothing is reloaded.
    std::fs::write(&path, &good).unwrap();
    let seen = tokio::task::block_in_place(|| p.lines_for(Duration::from_secs(2)));
    assert!(
        seen.iter()
            .any(|l| l.contains("matches the running config")),
        "{seen:#?}"
    );
    assert_eq!(reload_metric(&metrics(admin).await, "success"), 0);

    // A real change still reloads, by rename as editors write.
    common::write_atomic(&path, &simple_config("two"));
    let mut body = String::new();
    for _ in 0..50 {
        body = c.get(&url).send().await.unwrap().text().await.unwrap();
        if body == "two" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body, "two");
    // And an in-place write too.
    std::fs::write(&path, simple_config("three")).unwrap();
    for _ in 0..50 {
        body = c.get(&url).send().await.unwrap().text().await.unwrap();
        if body == "three" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body, "three");
}

// ---------------------------------------------------------------------------------------------
// Item 16: a busy port
// ---------------------------------------------------------------------------------------------

#[test]
fn a_busy_port_is_reported_once_with_its_field_path_before_the_admin_listener_binds() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\nlisteners:\n  - name: spare\n    address: 127.0.0.1:0\n  - name: public\n    address: 127.0.0.1:{port}\nroutes:\n  - name: hi\n    match: {{ paths: [\"/\"] }}\n    plugins:\n      respond: {{ body: hi }}\nadmin: {{ address: \"127.0.0.1:0\" }}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "-c"])
        .arg(&path)
        .env("FRONTDESK_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains("listeners[1].address"), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert_eq!(
        line.to_ascii_lowercase()
            .matches("address already in use")
            .count(),
        1,
        "{line}"
    );
    assert!(
        !stderr.contains("admin API listening"),
        "the admin listener bound before the proxies: {stderr}"
    );
    drop(busy);
}

// ---------------------------------------------------------------------------------------------
// Items 19 and 20: GET /config shows effective values; the reload timestamp is set at start
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_config_shows_defaults_the_bound_admin_address_and_no_null_plugins() {
    let up = echo("echo").await;
    let yaml = common::config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}], timeouts: {{ connect: 2s }} }}\nroutes:\n  - name: r\n    match: {{ paths: [\"/\"] }}\n    upstream: u\nadmin: {{ address: \"127.0.0.1:0\" }}\n",
        up.url()
    ));
    let gw = common::gateway(&yaml).await;
    let admin = gw.gw.admin_addr().unwrap();
    let v: Value = client()
        .get(format!("http://{admin}/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cfg = &v["config"];
    let t = &cfg["upstreams"]["u"]["timeouts"];
    assert_eq!(t["connect"], "2s", "{t}");
    assert_eq!(t["response"], "60s", "{t}");
    assert_eq!(t["idle"], "90s", "{t}");
    assert_eq!(cfg["admin"]["address"], admin.to_string());
    fn nulls(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Null => out.push(at.to_string()),
            Value::Object(m) => m
                .iter()
                .for_each(|(k, v)| nulls(v, &format!("{at}.{k}"), out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, v)| nulls(v, &format!("{at}[{i}]"), out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    nulls(cfg, "", &mut found);
    assert!(found.is_empty(), "null values shown: {found:?}");

    // Item 20: the age of the last successful load is known from the start.
    let m = metrics(admin).await;
    let ts: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("frontdesk_config_last_reload_success_timestamp_seconds "))
        .unwrap_or_else(|| panic!("{m}"))
        .trim()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts + 120 > now && ts <= now + 1, "timestamp {ts}, now {now}");
    assert_eq!(
        reload_metric(&m, "success"),
        0,
        "the first load is not a reload"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 21: explain without a match, consumer headers, the anonymous consumer
// ---------------------------------------------------------------------------------------------

#[test]
fn explain_exits_1_when_no_route_matches_and_prints_a_readable_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(
        &path,
        "version: 1\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\nroutes:\n  - name: users\n    match: { paths: [\"/users\"] }\n    plugins:\n      respond: { body: hi }\n",
    )
    .unwrap();
    let run = |url: &str| {
        std::process::Command::new(bin())
            .args(["explain", "-c"])
            .arg(&path)
            .args(["GET", url])
            .output()
            .unwrap()
    };
    let miss = run("/orders/7");
    let text = String::from_utf8_lossy(&miss.stdout);
    assert_eq!(miss.status.code(), Some(1), "{text}");
    assert!(text.contains("no route"), "{text}");
    assert!(text.contains("request: GET /orders/7"), "{text}");
    assert!(!text.contains("(no host)/"), "{text}");
    let hit = run("http://api.example.com/users/1");
    let text = String::from_utf8_lossy(&hit.stdout);
    assert_eq!(hit.status.code(), Some(0), "{text}");
    assert!(text.contains("request: GET /users/1"), "{text}");
    assert!(text.contains("api.example.com"), "{text}");
}

#[tokio::test]
async fn no_empty_groups_header_and_the_anonymous_consumer_is_marked() {
    let up = echo("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = common::config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - name: r\n    match: {{ paths: [\"/\"] }}\n    upstream: u\n    plugins:\n      key_auth: {{ anonymous: guest }}\nconsumers:\n  - name: loner\n    api_keys: [loner-key]\n  - name: team\n    groups: [a, b]\n    api_keys: [team-key]\n  - name: guest\nadmin: {{ address: \"127.0.0.1:0\" }}\nobservability:\n  metrics: {{ consumer_label: true }}\n  access_log: {{ output: \"{}\" }}\n",
        up.url(),
        log.display()
    ));
    let gw = common::gateway(&yaml).await;
    let c = client();
    let url = gw.url("/x");
    let loner = echo_json(
        c.get(&url)
            .header("x-api-key", "loner-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(loner["headers"]["x-consumer-name"], "loner");
    assert!(
        loner["headers"].get("x-consumer-groups").is_none(),
        "empty groups header sent: {loner}"
    );
    let team = echo_json(
        c.get(&url)
            .header("x-api-key", "team-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(team["headers"]["x-consumer-groups"], "a,b");
    let anon = echo_json(c.get(&url).send().await.unwrap()).await;
    assert_eq!(anon["headers"]["x-consumer-name"], "guest");
    assert_eq!(anon["headers"]["x-anonymous-consumer"], "true");

    // The access log and the metrics say which request went on anonymously.
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["consumer"], "loner");
    assert_eq!(lines[0]["consumer_anonymous"], false, "{}", lines[0]);
    assert_eq!(lines[2]["consumer"], "guest");
    assert_eq!(lines[2]["consumer_anonymous"], true, "{}", lines[2]);
    let m = metrics(gw.gw.admin_addr().unwrap()).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("frontdesk_consumer_requests_total{")
                && l.contains("consumer=\"loner\"")),
        "{m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("frontdesk_consumer_requests_total{")
                && l.contains("consumer=\"guest\"")),
        "the anonymous consumer counted as a named one: {m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("frontdesk_anonymous_requests_total{")
                && l.contains("consumer=\"guest\"")),
        "{m}"
    );
}

/// Every example config survives GET → PUT unchanged, and an edit of it changes the config as
/// edited while the file keeps its comments and `${VAR}` references.
#[test]
fn every_example_round_trips_and_edits_in_place() {
    use frontdesk::admin::dto::shown_config;
    use frontdesk::config::{edit_text, load_str};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let env = |k: &str| match k {
        "USERS_1" | "USERS_2" | "ORDERS" => Some("http://127.0.0.1:1".to_string()),
        _ => None,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let cfg = load_str(&text, &env).unwrap().config;
        let shown = shown_config(&cfg, None);
        assert_eq!(
            edit_text(&text, &shown, &shown.to_string(), &env).as_deref(),
            Ok(text.as_str()),
            "{}: an unchanged submission changed the file",
            file.display()
        );

        let mut wanted = shown.clone();
        wanted["server"]["via"] = json!("edge-x");
        let removed = wanted["routes"]
            .as_array_mut()
            .filter(|r| r.len() > 1)
            .map(|r| r.remove(0));
        wanted["consumers"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "name": "newcomer", "api_keys": ["newcomer-key-123"] }));
        let edited = edit_text(&text, &shown, &wanted.to_string(), &env)
            .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
        let reloaded = load_str(&edited, &env)
            .unwrap_or_else(|e| panic!("{}: {e:?}\n{edited}", file.display()))
            .config;
        // The config wanted, real secrets included: the running one with the same edits.
        let mut expected = cfg.clone();
        expected.server.via = "edge-x".into();
        if removed.is_some() {
            expected.routes.remove(0);
        }
        expected.consumers.push(frontdesk::config::ConsumerConfig {
            name: "newcomer".into(),
            groups: vec![],
            api_keys: vec![frontdesk::config::ApiKeyConfig::Plain(
                "newcomer-key-123".into(),
            )],
            basic_auth: None,
            client_cert: None,
        });
        assert!(
            reloaded == expected,
            "{}: the edited file is not the config wanted:\n{edited}",
            file.display()
        );
        let removed_text = removed.map(|r| r.to_string()).unwrap_or_default();
        for line in text.lines() {
            let comment = line.trim_start().starts_with('#');
            let reference = line.contains("${");
            if (comment || reference) && !removed_text.contains(line.trim()) {
                assert!(
                    edited.contains(line),
                    "{}: {line:?} lost:\n{edited}",
                    file.display()
                );
            }
        }
    }
}

/// A config file that is a symlink to a file in another directory reloads when that file is
/// written (its directory is watched too), and writes next to the link still do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_config_reloads_when_its_target_changes() {
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("real");
    let link_dir = dir.path().join("link");
    std::fs::create_dir_all(&real_dir).unwrap();
    std::fs::create_dir_all(&link_dir).unwrap();
    let real = real_dir.join("gateway.yaml");
    std::fs::write(&real, simple_config("one")).unwrap();
    let path = link_dir.join("frontdesk.yaml");
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let p = spawn_async(path.clone(), vec![]).await;
    let url = format!("http://{}/", p.proxy);
    let c = client();
    assert_eq!(
        c.get(&url).send().await.unwrap().text().await.unwrap(),
        "one"
    );
    std::fs::write(&real, simple_config("two")).unwrap();
    let mut body = String::new();
    for _ in 0..50 {
        body = c.get(&url).send().await.unwrap().text().await.unwrap();
        if body == "two" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body, "two");
}
