//! The real `frontdesk` binary: `validate`, `schema`, `run` (signals, reload, drain) and `demo`.
//!
//! Every process is started from `env!("CARGO_BIN_EXE_frontdesk")`, every socket is real and bound
//! to port 0 (or to a port just handed out by the OS), and every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, client, config, full, spawn_bin, upstream, write_atomic, BinGateway};
use hyper::Response;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long a one-shot CLI command (`validate`, `schema`) may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The result of a one-shot command.
struct CliRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl CliRun {
    fn both(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs the binary with `args` and extra environment, killing it if it takes longer than
/// [`CLI_TIMEOUT`].
fn run_cli(args: &[&str], set: &[(&str, &str)], unset: &[&str]) -> CliRun {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env("FRONTDESK_LOG", "info");
    for (k, v) in set {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let child = cmd.spawn().expect("spawn frontdesk");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(out) => out.expect("wait for frontdesk"),
        Err(_) => {
            // Our own child, by its pid.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!(
                "`frontdesk {}` did not finish within {CLI_TIMEOUT:?}",
                args.join(" ")
            );
        }
    };
    CliRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `yaml` to `frontdesk.yaml` in a fresh temp dir.
fn temp_config(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (dir, path)
}

/// `frontdesk validate -c <yaml in a temp file>`.
fn validate_text(yaml: &str, set: &[(&str, &str)], unset: &[&str]) -> CliRun {
    let (_dir, path) = temp_config(yaml);
    let p = path.to_str().expect("utf-8 path");
    run_cli(&["validate", "-c", p], set, unset)
}

/// Polls `cond` every 20 ms until it holds or `wait` passes.
fn wait_until(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until process `pid` has installed handlers for SIGHUP, SIGINT and SIGTERM.
///
/// `spawn_bin` returns once the listener logged `listening`, which happens *before* the runtime
/// registers its signal handlers; a SIGHUP in that window would kill the process (default action).
/// `SigCgt` in `/proc/<pid>/status` is the mask of caught signals: bit `n-1` for signal `n`.
fn wait_signal_handlers(pid: u32) {
    const HUP: u64 = 1 << 0;
    const INT: u64 = 1 << 1;
    const TERM: u64 = 1 << 14;
    let caught = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("SigCgt:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(0)
    };
    let ok = wait_until(Duration::from_secs(20), || {
        caught() & (HUP | INT | TERM) == HUP | INT | TERM
    });
    assert!(
        ok,
        "frontdesk (pid {pid}) did not install its signal handlers in time"
    );
    // The config watcher is created right after the handlers, without an await in between; give it
    // a moment to be registered with inotify.
    std::thread::sleep(Duration::from_millis(300));
}

/// Blocking call inside a multi-threaded tokio test.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// GET `url` and return (status, body); errors become `None`.
async fn get_text(c: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let resp = tokio::time::timeout(Duration::from_secs(5), c.get(url).send())
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.text())
        .await
        .ok()?
        .ok()?;
    Some((status, body))
}

/// Polls `url` until its body equals `want`, up to `wait`. Returns the last body seen.
async fn poll_body(
    c: &reqwest::Client,
    url: &str,
    want: &str,
    wait: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = String::from("<no response>");
    while tokio::time::Instant::now() < deadline {
        if let Some((status, body)) = get_text(c, url).await {
            if status == 200 && body == want {
                return Ok(());
            }
            last = format!("{status} {body:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// A config with one `respond` route at `/hello` answering `body`.
fn hello_config(body: &str) -> String {
    config(&format!(
        "routes:\n  - name: hello\n    match: {{ paths: [\"/hello\"] }}\n    plugins: {{ respond: {{ body: \"{body}\" }} }}\n"
    ))
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

// ---------------------------------------------------------------------------------------------
// validate
// ---------------------------------------------------------------------------------------------

#[test]
fn validate_accepts_every_example() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected at least contract.yaml and demo.yaml, found {files:?}"
    );
    // examples/grpc.yaml fetches its descriptors by reflection, as a load would: a real service.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let svc = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        grpc_testsvc::serve(l).await
    });
    let shop = svc.url();
    let env = [
        ("USERS_1", "http://127.0.0.1:1"),
        ("USERS_2", "http://127.0.0.1:1"),
        ("ORDERS", "http://127.0.0.1:1"),
        ("SHOP_GRPC", shop.as_str()),
    ];
    for file in &files {
        let p = file.to_str().expect("utf-8 path");
        let out = run_cli(&["validate", "-c", p], &env, &["LISTEN"]);
        assert_eq!(out.code, Some(0), "validate {p} failed:\n{}", out.both());
        assert!(
            out.stdout.contains(&format!("{p}: ok (")),
            "no ok line for {p}:\n{}",
            out.both()
        );
        assert!(
            !out.stderr.contains("error:"),
            "errors printed for {p}:\n{}",
            out.both()
        );
    }
}

#[test]
fn validate_reports_every_error_with_its_field_path() {
    let yaml = r#"
version: 1
listenerz: []
listeners:
  - { name: public, address: "127.0.0.1:0" }
upstreams:
  users: { targets: [{ url: "http://127.0.0.1:1" }] }
routes:
  - { name: r0, match: { paths: ["/a"] }, upstream: users }
  - { name: r0, match: { paths: ["/b"] }, upstream: users }
  - { name: r2, match: { paths: [{ regex: "(" }] }, upstream: userz }
  - { name: r3, match: { paths: ["/d"] }, upstream: users, bogus: 1 }
"#;
    let out = validate_text(yaml, &[], &[]);
    assert_eq!(out.code, Some(1), "{}", out.both());
    for needle in [
        "listenerz: unknown field",
        "routes[1].name: duplicate route name \"r0\"",
        "routes[2].upstream: unknown upstream \"userz\"",
        "routes[2].match.paths[0]: invalid regex",
        "routes[3].bogus: unknown field `bogus`",
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with("error: ") && l.contains(needle)),
            "missing {needle:?}:\n{}",
            out.both()
        );
    }
    assert!(
        out.stderr.contains("(did you mean \"users\"?)"),
        "{}",
        out.both()
    );
    assert!(
        !out.stdout.contains(": ok ("),
        "a refused config must not print ok:\n{}",
        out.both()
    );
}

/// An unknown field inside an early list element must not shift the indices reported for the
/// elements after it: every error names the element it is really in.
#[test]
fn validate_error_paths_are_not_shifted_by_an_earlier_bad_route() {
    let yaml = r#"
version: 1
listeners:
  - { name: public, address: "127.0.0.1:0" }
upstreams:
  users: { targets: [{ url: "http://127.0.0.1:1" }] }
routes:
  - { name: r0, match: { paths: ["/a"] }, upstream: users, bogus: 1 }
  - { name: r1, match: { paths: ["/b"] }, upstream: users }
  - { name: r1, match: { paths: [{ regex: "(" }] }, upstream: userz }
"#;
    let out = validate_text(yaml, &[], &[]);
    assert_eq!(out.code, Some(1), "{}", out.both());
    for needle in [
        "routes[0].bogus: unknown field `bogus`",
        "routes[2].name: duplicate route name \"r1\"",
        "routes[2].upstream: unknown upstream \"userz\"",
        "routes[2].match.paths[0]: invalid regex",
    ] {
        assert!(
            out.stderr.contains(needle),
            "missing {needle:?}:\n{}",
            out.both()
        );
    }
}

#[test]
fn validate_yaml_syntax_error_has_line_and_column() {
    // Line 5 is indented by three spaces, which is neither the mapping's level nor a new one.
    let yaml =
        "version: 1\nlisteners:\n  - name: public\n    address: \"127.0.0.1:0\"\n   bad: indent\n";
    let out = validate_text(yaml, &[], &[]);
    assert_eq!(out.code, Some(1), "{}", out.both());
    let re = regex::Regex::new(r"line (\d+), column (\d+)").expect("regex");
    let caps = re
        .captures(&out.stderr)
        .unwrap_or_else(|| panic!("no `line N, column M`:\n{}", out.both()));
    let line: u64 = caps[1].parse().expect("line number");
    let col: u64 = caps[2].parse().expect("column number");
    assert_eq!(line, 5, "{}", out.both());
    assert!(col >= 1, "{}", out.both());
    assert!(
        out.stderr.lines().any(|l| l.starts_with("error: line ")),
        "{}",
        out.both()
    );
}

#[test]
fn validate_with_only_warnings_exits_zero_and_prints_them() {
    let yaml = r#"
version: 1
listeners:
  - { name: public, address: "127.0.0.1:0" }
upstreams:
  users: { targets: [{ url: "http://127.0.0.1:1" }] }
routes:
  - { name: api, match: { paths: ["/api"] }, upstream: users }
  - { name: api-shadowed, match: { paths: ["/api"] }, upstream: users }
  - { name: status, match: { paths: [{ exact: /status }] }, upstream: users, plugins: { respond: { body: ok } } }
"#;
    let out = validate_text(yaml, &[], &[]);
    assert_eq!(out.code, Some(0), "{}", out.both());
    let shadow = out
        .stderr
        .lines()
        .find(|l| l.starts_with("warning: routes[1]:"))
        .unwrap_or_else(|| panic!("no shadowing warning:\n{}", out.both()));
    assert!(
        shadow.contains("api-shadowed") && shadow.contains("can never match"),
        "{shadow}"
    );
    assert!(
        out.stderr.contains(
            "warning: routes[2].upstream: the route's `respond` plugin answers every request"
        ),
        "{}",
        out.both()
    );
    assert!(!out.stderr.contains("error:"), "{}", out.both());
    assert!(
        out.stdout.contains(": ok (") && out.stdout.contains("2 warnings"),
        "{}",
        out.both()
    );
}

#[test]
fn validate_unset_variable_without_default_is_an_error() {
    const VAR: &str = "FRONTDESK_CLI_TEST_VIA";
    let yaml = format!(
        "version: 1\nserver: {{ via: \"${{{VAR}}}\" }}\nlisteners:\n  - {{ name: public, address: \"${{FRONTDESK_CLI_TEST_ADDR:-127.0.0.1:0}}\" }}\n"
    );
    let out = validate_text(&yaml, &[], &[VAR, "FRONTDESK_CLI_TEST_ADDR"]);
    assert_eq!(out.code, Some(1), "{}", out.both());
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("error: server.via: ")
                && l.contains(&format!("{VAR:?}"))
                && l.contains("not set")),
        "{}",
        out.both()
    );
    // Set, and the default for the address: the same file is accepted.
    let out = validate_text(&yaml, &[(VAR, "edge")], &["FRONTDESK_CLI_TEST_ADDR"]);
    assert_eq!(out.code, Some(0), "{}", out.both());
    assert!(out.stdout.contains(": ok (1 listeners"), "{}", out.both());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_uses_variable_defaults() {
    // The test process does not set this variable, and `spawn_bin` inherits its environment.
    assert!(std::env::var_os("FRONTDESK_CLI_TEST_BODY").is_none());
    let gw = blocking(|| spawn_bin(&hello_config("${FRONTDESK_CLI_TEST_BODY:-from-default}")));
    let (status, body) = get_text(&client(), &format!("http://{}/hello", gw.addr))
        .await
        .expect("response");
    assert_eq!((status, body.as_str()), (200, "from-default"));
}

#[test]
fn run_refuses_an_invalid_config_with_exit_1() {
    let (_dir, path) = temp_config(&config(
        "routes:\n  - { name: r, match: { paths: [\"/\"] }, upstream: nowhere }\n",
    ));
    let out = run_cli(&["run", "-c", path.to_str().expect("utf-8 path")], &[], &[]);
    assert_eq!(out.code, Some(1), "{}", out.both());
    assert!(
        out.stderr
            .contains("routes[0].upstream: unknown upstream \"nowhere\""),
        "{}",
        out.both()
    );
}

// ---------------------------------------------------------------------------------------------
// schema
// ---------------------------------------------------------------------------------------------

/// Keywords the small validator below implements; any other validation keyword in the schema
/// makes the test fail rather than silently pass.
const UNSUPPORTED: [&str; 18] = [
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "dependencies",
    "minItems",
    "maxItems",
    "uniqueItems",
    "contains",
    "minLength",
    "maxLength",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minProperties",
    "maxProperties",
];

/// A draft-07 validator for the subset of keywords the gateway's schema uses.
fn check(root: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let s = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return errs.push(format!("{at}: not allowed")),
        Value::Object(s) => s,
        other => panic!("{at}: schema is not an object: {other}"),
    };
    for k in UNSUPPORTED {
        assert!(
            !s.contains_key(k),
            "schema uses `{k}`, which this test's validator does not implement"
        );
    }
    if let Some(r) = s.get("$ref") {
        let name = r
            .as_str()
            .and_then(|r| r.strip_prefix("#/definitions/"))
            .unwrap_or_else(|| panic!("unsupported $ref {r}"));
        let target = root["definitions"]
            .get(name)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
        return check(root, target, v, at, errs);
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            check(root, sub, v, at, errs);
        }
    }
    for (kw, exactly_one) in [("anyOf", false), ("oneOf", true)] {
        if let Some(alts) = s.get(kw).and_then(Value::as_array) {
            let passing = alts
                .iter()
                .filter(|sub| {
                    let mut e = Vec::new();
                    check(root, sub, v, at, &mut e);
                    e.is_empty()
                })
                .count();
            if passing == 0 || (exactly_one && passing != 1) {
                errs.push(format!("{at}: {passing} alternatives of {kw} match {v}"));
            }
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(x) => vec![x.as_str()],
            Value::Array(xs) => xs.iter().filter_map(Value::as_str).collect(),
            other => panic!("bad type {other}"),
        };
        let is = |t: &str| match t {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64(),
            other => panic!("unknown type {other}"),
        };
        if !types.iter().any(|t| is(t)) {
            errs.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            errs.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            errs.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(n) = v.as_f64() {
        if s.get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            errs.push(format!("{at}: {n} is below the minimum"));
        }
        if s.get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            errs.push(format!("{at}: {n} is above the maximum"));
        }
    }
    if let (Some(text), Some(p)) = (v.as_str(), s.get("pattern").and_then(Value::as_str)) {
        if !regex::Regex::new(p).expect("schema pattern").is_match(text) {
            errs.push(format!("{at}: {text:?} does not match {p}"));
        }
    }
    if let Some(obj) = v.as_object() {
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let req = req.as_str().expect("required name");
            if !obj.contains_key(req) {
                errs.push(format!("{at}: missing required `{req}`"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, item) in obj {
            let here = format!("{at}.{k}");
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(sub), _) => check(root, sub, item, &here, errs),
                (None, Some(extra)) => check(root, extra, item, &here, errs),
                (None, None) => {}
            }
        }
    }
    if let (Some(items), Some(schema)) = (v.as_array(), s.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(root, schema, item, &format!("{at}[{i}]"), errs);
        }
    }
}

/// `examples/contract.yaml` as JSON (the test crate has no YAML parser; the drift guard in the
/// test keeps this in step with the file).
fn contract_as_json() -> Value {
    json!({
        "version": 1,
        "server": { "worker_threads": 0, "drain_timeout": "30s", "http1": "native" },
        "listeners": [{
            "name": "public",
            "address": "127.0.0.1:8080",
            "limits": {
                "max_request_head": "32KiB",
                "max_headers": 100,
                "max_uri": "8KiB",
                "head_timeout": "10s",
                "idle_timeout": "60s",
                "send_timeout": "60s"
            }
        }],
        "upstreams": {
            "users": { "targets": [
                { "url": "http://127.0.0.1:9001" },
                { "url": "http://127.0.0.1:9002", "weight": 3 }
            ] },
            "orders": { "targets": [{ "url": "http://127.0.0.1:9003" }] }
        },
        "routes": [
            {
                "name": "users",
                "match": {
                    "hosts": ["api.example.com", "*.example.org"],
                    "paths": ["/users"],
                    "methods": ["GET", "POST"],
                    "headers": { "x-api-version": "2" }
                },
                "upstream": "users",
                "strip_prefix": true,
                "preserve_host": true
            },
            {
                "name": "orders",
                "match": { "paths": [
                    { "exact": "/orders/latest" },
                    { "template": "/orders/{id}" },
                    { "regex": "^/v[0-9]+/orders" }
                ] },
                "upstream": "orders",
                "plugins": { "headers": {
                    "request": {
                        "set": { "x-gateway": "frontdesk" },
                        "add": { "x-trace-hop": "gw" },
                        "remove": ["x-internal-token"]
                    },
                    "response": { "set": { "x-served-by": "frontdesk" }, "remove": ["server"] }
                } }
            },
            {
                "name": "status",
                "match": { "paths": [{ "exact": "/status" }] },
                "plugins": { "respond": {
                    "status": 200,
                    "body": "{\"ok\":true}",
                    "headers": { "content-type": "application/json" }
                } }
            }
        ],
        "plugins": {}
    })
}

/// A named change that makes a config invalid.
type Mutation = (&'static str, fn(&mut Value));

/// Every key and scalar of `v`, as text.
fn tokens(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                tokens(x, out);
            }
        }
        Value::Array(xs) => xs.iter().for_each(|x| tokens(x, out)),
        Value::String(s) => out.push(s.clone()),
        Value::Null => {}
        other => out.push(other.to_string()),
    }
}

#[test]
fn schema_is_draft07_strict_and_accepts_the_contract() {
    let out = run_cli(&["schema"], &[], &[]);
    assert_eq!(out.code, Some(0), "{}", out.both());
    let schema: Value = serde_json::from_str(&out.stdout).expect("schema is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["type"], "object");
    for field in [
        "version",
        "server",
        "listeners",
        "upstreams",
        "routes",
        "plugins",
    ] {
        assert!(
            schema["properties"].get(field).is_some(),
            "top-level property {field} missing"
        );
    }
    assert!(
        schema["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("version"))),
        "version is required"
    );
    let root_strict = schema["additionalProperties"] == json!(false)
        || schema["definitions"]["Config"]["additionalProperties"] == json!(false);
    assert!(
        root_strict,
        "the root must refuse unknown fields (additionalProperties: false)"
    );
    // Every object definition (one per config section) refuses unknown fields too, like the loader.
    let defs = schema["definitions"].as_object().expect("definitions");
    for name in [
        "ServerConfig",
        "ListenerConfig",
        "LimitsConfig",
        "UpstreamConfig",
        "TargetConfig",
        "RouteConfig",
        "MatchConfig",
        "PluginsConfig",
    ] {
        let d = defs
            .get(name)
            .unwrap_or_else(|| panic!("definition {name} missing"));
        assert_eq!(
            d["additionalProperties"],
            json!(false),
            "{name} accepts unknown fields"
        );
    }

    // Drift guard: the JSON transcription says nothing the YAML file does not.
    let contract_text =
        std::fs::read_to_string(examples_dir().join("contract.yaml")).expect("contract.yaml");
    let contract = contract_as_json();
    let mut toks = Vec::new();
    tokens(&contract, &mut toks);
    for t in &toks {
        assert!(
            contract_text.contains(t.as_str()),
            "{t:?} is not in contract.yaml; update contract_as_json()"
        );
    }
    let mut top_yaml: Vec<&str> = contract_text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))
        .filter_map(|l| l.split(':').next())
        .collect();
    top_yaml.sort_unstable();
    let mut top_json: Vec<&str> = contract
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    top_json.sort_unstable();
    assert_eq!(
        top_yaml, top_json,
        "top-level sections of contract.yaml changed"
    );
    let counts = format!(
        "ok ({} listeners, {} upstreams, {} routes",
        contract["listeners"].as_array().map_or(0, Vec::len),
        contract["upstreams"]
            .as_object()
            .map_or(0, serde_json::Map::len),
        contract["routes"].as_array().map_or(0, Vec::len)
    );
    let path = examples_dir().join("contract.yaml");
    let v = run_cli(
        &["validate", "-c", path.to_str().expect("utf-8 path")],
        &[],
        &[],
    );
    assert!(
        v.stdout.contains(&counts),
        "expected {counts:?}:\n{}",
        v.both()
    );

    let mut errs = Vec::new();
    check(&schema, &schema, &contract, "$", &mut errs);
    assert!(
        errs.is_empty(),
        "the schema refuses contract.yaml: {errs:#?}"
    );

    // And it is strict where the loader is: unknown fields and malformed values are refused.
    let mutations: [Mutation; 5] = [
        ("unknown top-level field", |c| c["listenerz"] = json!([])),
        ("unknown route field", |c| {
            c["routes"][0]["bogus"] = json!(1)
        }),
        ("unknown path rule kind", |c| {
            c["routes"][1]["match"]["paths"][0] = json!({ "exakt": "/x" })
        }),
        ("listener without address", |c| {
            c["listeners"][0]
                .as_object_mut()
                .expect("listener")
                .remove("address");
        }),
        ("bad duration", |c| {
            c["server"]["drain_timeout"] = json!("30 parsecs")
        }),
    ];
    for (what, mutate) in mutations {
        let mut bad = contract_as_json();
        mutate(&mut bad);
        let mut errs = Vec::new();
        check(&schema, &schema, &bad, "$", &mut errs);
        assert!(
            !errs.is_empty(),
            "the schema accepts a config with a {what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// run: signals, reload, drain
// ---------------------------------------------------------------------------------------------

/// Waits for the child to exit, up to `wait`.
fn wait_exit(gw: &mut BinGateway, wait: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = gw.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a fresh connection to a stopped listener sees.
#[derive(Debug)]
enum NewConn {
    /// `connect` failed.
    Refused,
    /// Connected (into the backlog) but closed without an answer.
    ClosedUnanswered,
    /// Got an HTTP answer: the listener is still serving.
    Served(String),
}

async fn try_new_connection(addr: SocketAddr) -> NewConn {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
    else {
        return NewConn::Refused;
    };
    if s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .is_err()
    {
        return NewConn::ClosedUnanswered;
    }
    let got = common::read_until_close(&mut s, Duration::from_millis(500)).await;
    if got.starts_with("HTTP/") {
        NewConn::Served(got)
    } else {
        NewConn::ClosedUnanswered
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_request_then_exits_zero() {
    const DELAY: Duration = Duration::from_secs(2);
    let up = upstream(|_req| async {
        tokio::time::sleep(DELAY).await;
        Response::new(full("slow done"))
    })
    .await;
    // drain_timeout is 5s (common::config).
    let yaml = config(&format!(
        "upstreams:\n  slow:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - name: slow\n    match: {{ paths: [\"/slow\"] }}\n    upstream: slow\n",
        up.url()
    ));
    let mut gw = blocking(|| spawn_bin(&yaml));
    let pid = gw.child.id();
    blocking(|| wait_signal_handlers(pid));
    let addr = gw.addr;

    let url = format!("http://{addr}/slow");
    let inflight = tokio::spawn(async move {
        let resp = client()
            .get(url)
            .send()
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| format!("body: {e}"))?;
        Ok::<_, String>((status, body))
    });
    let arrived = blocking(|| wait_until(Duration::from_secs(10), || up.requests() >= 1));
    assert!(arrived, "the request never reached the upstream");

    let t0 = Instant::now();
    gw.signal("TERM");
    let line = blocking(|| gw.wait_log("shutting down", Duration::from_secs(5)));
    assert!(line.is_some(), "no `shutting down` log line after SIGTERM");

    // New connections are refused while the old request is still being drained.
    let refuse_deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    loop {
        let r = try_new_connection(addr).await;
        if let NewConn::Served(text) = &r {
            panic!("a connection opened after SIGTERM was served: {text:?}");
        }
        let refused = matches!(r, NewConn::Refused);
        seen.push(r);
        if refused {
            break;
        }
        assert!(
            tokio::time::Instant::now() < refuse_deadline,
            "connections still accepted 3s after SIGTERM: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !inflight.is_finished(),
        "the in-flight request finished before new connections were refused ({:?} after SIGTERM)",
        t0.elapsed()
    );

    let (status, body) = tokio::time::timeout(Duration::from_secs(10), inflight)
        .await
        .expect("in-flight request finished in time")
        .expect("join")
        .expect("in-flight request completed");
    assert_eq!((status, body.as_str()), (200, "slow done"));

    // drain_timeout (5s) plus a margin for process teardown.
    let exit = blocking(|| wait_exit(&mut gw, Duration::from_secs(7)))
        .unwrap_or_else(|| panic!("frontdesk still running {:?} after SIGTERM", t0.elapsed()));
    assert!(
        exit.success(),
        "frontdesk exited with {exit:?} after a graceful drain"
    );
    assert!(
        t0.elapsed() >= DELAY / 2,
        "exited before the in-flight request could have finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_refuses_an_invalid_config() {
    let gw = blocking(|| spawn_bin(&hello_config("one")));
    blocking(|| wait_signal_handlers(gw.child.id()));
    let c = client();
    let url = format!("http://{}/hello", gw.addr);
    poll_body(&c, &url, "one", Duration::from_secs(5))
        .await
        .expect("serves the first config");

    // Isolate SIGHUP from the file watcher: the watched directory gets a symlink to a file in
    // another directory, so edits to that file make no event in the watched one.
    let other = tempfile::tempdir().expect("tempdir");
    let real = other.path().join("real.yaml");
    std::fs::write(&real, hello_config("one")).expect("write real config");
    let link_tmp = gw.dir.path().join("link.tmp");
    std::os::unix::fs::symlink(&real, &link_tmp).expect("symlink");
    std::fs::rename(&link_tmp, gw.path()).expect("replace config with symlink");
    // The watcher sees the rename, but the text is unchanged, so nothing is reloaded.
    tokio::time::sleep(Duration::from_millis(500)).await;

    write_atomic(&real, &hello_config("two"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, body) = get_text(&c, &url).await.expect("response");
    assert_eq!(
        body, "one",
        "changed without SIGHUP: the test's isolation from the watcher failed"
    );

    gw.signal("HUP");
    poll_body(&c, &url, "two", Duration::from_secs(10))
        .await
        .unwrap_or_else(|last| panic!("SIGHUP did not apply the new config; last response {last}"));

    write_atomic(&real, "version: 1\nroutes: [\n");
    gw.signal("HUP");
    let refused = blocking(|| gw.wait_log("reload refused", Duration::from_secs(10)));
    assert!(
        refused.is_some(),
        "no `reload refused` log line for an invalid config"
    );
    for _ in 0..5 {
        let (status, body) = get_text(&c, &url).await.expect("still serving");
        assert_eq!(
            (status, body.as_str()),
            (200, "two"),
            "the old config must keep serving"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watch_reloads_on_rename_without_a_signal() {
    let gw = blocking(|| spawn_bin(&hello_config("one")));
    blocking(|| wait_signal_handlers(gw.child.id()));
    let c = client();
    let url = format!("http://{}/hello", gw.addr);
    poll_body(&c, &url, "one", Duration::from_secs(5))
        .await
        .expect("serves the first config");

    write_atomic(&gw.path(), &hello_config("two"));
    poll_body(&c, &url, "two", Duration::from_secs(10))
        .await
        .unwrap_or_else(|last| {
            panic!("the watcher did not apply the renamed config; last response {last}")
        });
    assert!(
        blocking(|| gw.wait_log("config reloaded", Duration::from_secs(5))).is_some(),
        "no `config reloaded` log line"
    );
}

// ---------------------------------------------------------------------------------------------
// demo
// ---------------------------------------------------------------------------------------------

/// The demo process; stopped (SIGTERM, then SIGKILL) and its temp config removed on drop.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = self.0.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("frontdesk-demo-{pid}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_status_users_and_a_problem_404() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(bin())
        .args(["demo", "--listen", &listen])
        .env("FRONTDESK_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn frontdesk demo");
    let stdout = child.stdout.take().expect("stdout");
    let demo = Demo(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut stdout, mut text) = (stdout, String::new());
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        let _ = tx.send(text);
    });

    let c = client();
    let base = format!("http://{listen}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(r) = get_text(&c, &format!("{base}/status")).await {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the demo did not answer on {listen} in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.0, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&status.1).expect("status JSON"),
        json!({ "ok": true })
    );

    let users = c
        .get(format!("{base}/users/1"))
        .send()
        .await
        .expect("/users/1");
    assert_eq!(users.status().as_u16(), 200);
    let users: Value = users.json().await.expect("users JSON");
    let service = users["service"].as_str().unwrap_or_default();
    assert!(
        service == "users-1" || service == "users-2",
        "not a users upstream: {users}"
    );
    assert_eq!(users["path"], "/1", "strip_prefix: {users}");

    let nope = c.get(format!("{base}/nope")).send().await.expect("/nope");
    assert_eq!(nope.status().as_u16(), 404);
    let ct = nope
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type {ct:?}"
    );
    let problem: Value = nope.json().await.expect("problem JSON");
    assert_eq!(problem["status"], 404, "{problem}");

    drop(demo);
    let tour = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("demo stdout closed");
    assert!(tour.contains(&base), "the tour names the address: {tour}");
    assert!(
        tour.contains("/metrics"),
        "the tour shows the admin API: {tour}"
    );
    // The access log shares stdout with the tour: one JSON line per request made above.
    let logged: Vec<Value> = tour
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("access-log line is JSON"))
        .collect();
    for path in ["/status", "/users/1", "/nope"] {
        assert!(
            logged.iter().any(|l| l["path"] == path),
            "no access-log line for {path}: {tour}"
        );
    }
}

#[test]
fn validate_fetches_reflected_descriptors_as_a_load_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("grpc.yaml");
    let text = std::fs::read_to_string(examples_dir().join("grpc.yaml")).expect("example");
    std::fs::write(&path, text).expect("write");
    let p = path.to_str().expect("utf-8 path");
    // Nothing listens there: the config would not load, and validate says why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let out = run_cli(&["validate", "-c", p], &[("SHOP_GRPC", url.as_str())], &[]);
    assert_ne!(out.code, Some(0), "{}", out.both());
    assert!(
        out.stderr.contains("routes[0].plugins.grpc_transcode")
            && out.stderr.contains("reflection"),
        "{}",
        out.both()
    );
}
