//! Configs that used to pass validation and then hurt the gateway, or that were reported badly:
//! durations out of range, cascading and staged errors, library internals in messages, fields
//! that have no effect, short HMAC secrets, and the YAML 1.1 `on` key.

use frontdesk_config::{load_str, Diagnostic, RetryOn, Severity};

fn no_env(_: &str) -> Option<String> {
    None
}

const BASE: &str = r#"
version: 1
listeners:
  - { name: public, address: "127.0.0.1:0" }
upstreams:
  api: { targets: [{ url: "http://127.0.0.1:1" }] }
routes:
  - { name: r, match: { paths: [/] }, upstream: api }
"#;

fn errors(text: &str) -> Vec<Diagnostic> {
    match load_str(text, &no_env) {
        Ok(l) => panic!("expected errors, got a valid config: {:?}", l.warnings),
        Err(d) => d.into_iter().filter(Diagnostic::is_error).collect(),
    }
}

fn lines(d: &[Diagnostic]) -> String {
    d.iter().map(|d| format!("{d}\n")).collect()
}

/// The largest bare integer a duration accepts as seconds.
const HUGE: &str = "18446744073709551615";

/// Every duration field of the model, as a YAML document setting it to `value`, with its path.
fn duration_fields(value: &str) -> Vec<(String, &'static str)> {
    let v = value;
    // The listener's and the upstream's fields go inside their flow mappings in `BASE`.
    let listener = |limits: String| {
        BASE.replace(
            r#"address: "127.0.0.1:0" }"#,
            &format!(r#"address: "127.0.0.1:0", limits: {{ {limits} }} }}"#),
        )
    };
    let upstream = |fields: String| {
        BASE.replace(
            r#"targets: [{ url: "http://127.0.0.1:1" }] }"#,
            &format!(r#"targets: [{{ url: "http://127.0.0.1:1" }}], {fields} }}"#),
        )
    };
    vec![
        (
            format!("{BASE}server: {{ drain_timeout: {v} }}\n"),
            "server.drain_timeout",
        ),
        (listener(format!("head_timeout: {v}")), "listeners[0].limits.head_timeout"),
        (listener(format!("idle_timeout: {v}")), "listeners[0].limits.idle_timeout"),
        (listener(format!("send_timeout: {v}")), "listeners[0].limits.send_timeout"),
        (listener(format!("body_timeout: {v}")), "listeners[0].limits.body_timeout"),
        (upstream(format!("retries: {{ backoff: {v} }}")), "upstreams.api.retries.backoff"),
        (upstream(format!("timeouts: {{ connect: {v} }}")), "upstreams.api.timeouts.connect"),
        (upstream(format!("timeouts: {{ response: {v} }}")), "upstreams.api.timeouts.response"),
        (upstream(format!("timeout: {v}")), "upstreams.api.timeouts.response"),
        (upstream(format!("timeouts: {{ idle: {v} }}")), "upstreams.api.timeouts.idle"),
        (upstream(format!("health_check: {{ active: {{ interval: {v} }} }}")), "upstreams.api.health_check.active.interval"),
        (upstream(format!("health_check: {{ active: {{ timeout: {v} }} }}")), "upstreams.api.health_check.active.timeout"),
        (upstream(format!("health_check: {{ passive: {{ eject_for: {v} }} }}")), "upstreams.api.health_check.passive.eject_for"),
        (upstream(format!("circuit_breaker: {{ window: {v} }}")), "upstreams.api.circuit_breaker.window"),
        (upstream(format!("circuit_breaker: {{ open_for: {v} }}")), "upstreams.api.circuit_breaker.open_for"),
        (
            format!("{BASE}redis: {{ url: \"redis://127.0.0.1:6379\", timeout: {v} }}\n"),
            "redis.timeout",
        ),
        (
            format!("{BASE}plugins: {{ cors: {{ allow_origins: [\"*\"], max_age: {v} }} }}\n"),
            "plugins.cors.max_age",
        ),
        (
            format!(
                "{BASE}plugins:\n  jwt:\n    leeway: {v}\n    issuers: [{{ issuer: i, secret: \"0123456789abcdef0123456789abcdef\", algorithms: [HS256] }}]\n"
            ),
            "plugins.jwt.leeway",
        ),
        (
            format!(
                "{BASE}plugins:\n  rate_limit:\n    limits: [{{ name: l, key: client_ip, rate: 10, per: {v} }}]\n"
            ),
            "plugins.rate_limit.limits[0].per",
        ),
    ]
}

#[test]
fn every_duration_field_refuses_a_huge_value_with_its_path() {
    for (text, path) in duration_fields(HUGE) {
        let errs = errors(&text);
        assert!(
            errs.iter()
                .any(|d| d.path == path && d.message.contains("at most")),
            "{path}: expected an `at most` error, got:\n{}",
            lines(&errs)
        );
    }
    // Written with a unit, too.
    for (text, path) in duration_fields("100000h") {
        let errs = errors(&text);
        assert!(
            errs.iter().any(|d| d.path == path),
            "{path}: {}",
            lines(&errs)
        );
    }
}

#[test]
fn durations_within_their_documented_range_still_load() {
    for (text, path) in duration_fields("1s") {
        if let Err(d) = load_str(&text, &no_env) {
            panic!("{path}: 1s refused:\n{}", lines(&d));
        }
    }
}

#[test]
fn a_type_error_inside_an_upstream_does_not_cascade_to_its_routes() {
    let text = BASE.replace(
        r#"{ url: "http://127.0.0.1:1" }"#,
        r#"{ url: "http://127.0.0.1:1", weight: lots }"#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{}", lines(&errs));
    assert_eq!(errs[0].path, "upstreams.api.targets[0].weight");
    assert!(
        !lines(&errs).contains("unknown upstream"),
        "{}",
        lines(&errs)
    );
}

#[test]
fn a_route_naming_a_missing_upstream_is_still_reported_next_to_a_broken_one() {
    let text = format!(
        "{}  - {{ name: r2, match: {{ paths: [/x] }}, upstream: nope }}\n",
        BASE.replace(
            r#"{ url: "http://127.0.0.1:1" }"#,
            r#"{ url: "http://127.0.0.1:1", weight: lots }"#,
        )
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", lines(&errs));
    assert!(
        errs.iter()
            .any(|d| d.path == "routes[1].upstream"
                && d.message.contains("unknown upstream \"nope\""))
    );
}

#[test]
fn messages_never_show_library_internals() {
    let cases = [
        // A type error in a number.
        BASE.replace(
            r#"{ url: "http://127.0.0.1:1" }"#,
            r#"{ url: "http://127.0.0.1:1", weight: lots }"#,
        ),
        // A negative number.
        BASE.replace(
            r#"{ url: "http://127.0.0.1:1" }"#,
            r#"{ url: "http://127.0.0.1:1", weight: -1 }"#,
        ),
        // A duplicate key.
        format!("{BASE}version: 1\n"),
        // A mapping where a list is meant, and a string where a mapping is meant.
        BASE.replace("targets: [{ url: \"http://127.0.0.1:1\" }]", "targets: 3"),
        BASE.replace("api: { targets", "api: x\n  other: { targets"),
        // A boolean that is not.
        BASE.replace(
            "upstream: api }",
            "upstream: api, strip_prefix: sometimes }",
        ),
        // An unknown enum value.
        BASE.replace(
            "targets: [{ url: \"http://127.0.0.1:1\" }]",
            "targets: [{ url: \"http://127.0.0.1:1\" }], load_balancing: fastest",
        ),
        // A worker count that is not a number.
        format!("{BASE}server: {{ worker_threads: many }}\n"),
        // A negative duration, a list where a size is meant, an API key that is a list.
        format!("{BASE}server: {{ drain_timeout: -5 }}\n"),
        BASE.replace(
            r#"address: "127.0.0.1:0" }"#,
            r#"address: "127.0.0.1:0", limits: { max_request_head: [1] } }"#,
        ),
        format!("{BASE}consumers: [{{ name: c, api_keys: [[1]] }}]\n"),
    ];
    let internals = [
        "DuplicateKeyPolicy",
        "Options",
        "u32",
        "u64",
        "usize",
        "i64",
        "u16",
        "struct ",
        "enum ",
        "untagged",
        "sequence",
    ];
    for text in cases {
        let errs = load_str(&text, &no_env).expect_err("refused");
        let all = lines(&errs);
        assert!(!all.is_empty());
        for word in internals {
            assert!(
                !all.contains(word),
                "message shows {word:?}:\n{all}\nfor:\n{text}"
            );
        }
    }
}

#[test]
fn an_unused_hash_key_is_a_warning_not_an_error() {
    let text = BASE.replace(
        "targets: [{ url: \"http://127.0.0.1:1\" }]",
        "targets: [{ url: \"http://127.0.0.1:1\" }], hash_key: client_ip",
    );
    let loaded = load_str(&text, &no_env).unwrap_or_else(|d| panic!("refused:\n{}", lines(&d)));
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.severity == Severity::Warning
                && w.path == "upstreams.api.hash_key"
                && w.message.contains("consistent_hash")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn upstream_tls_with_only_http_targets_is_a_warning_not_an_error() {
    let text = BASE.replace(
        "targets: [{ url: \"http://127.0.0.1:1\" }]",
        "targets: [{ url: \"http://127.0.0.1:1\" }], tls: { server_name: api.internal }",
    );
    let loaded = load_str(&text, &no_env).unwrap_or_else(|d| panic!("refused:\n{}", lines(&d)));
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.path == "upstreams.api.tls" && w.message.contains("https://")),
        "{:?}",
        loaded.warnings
    );
}

fn jwt(secret: &str, alg: &str) -> String {
    format!(
        "{BASE}plugins:\n  jwt:\n    issuers: [{{ issuer: internal, secret: \"{secret}\", algorithms: [{alg}] }}]\n"
    )
}

#[test]
fn a_short_hmac_secret_is_a_warning() {
    let loaded = load_str(&jwt("short-secret", "HS256"), &no_env)
        .unwrap_or_else(|d| panic!("refused:\n{}", lines(&d)));
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.path == "plugins.jwt.issuers[0].secret" && w.message.contains("32 bytes")),
        "{:?}",
        loaded.warnings
    );
    // 32 bytes is enough.
    let loaded = load_str(&jwt(&"k".repeat(32), "HS256"), &no_env).expect("loads");
    assert!(
        !loaded.warnings.iter().any(|w| w.path.contains("secret")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn retry_on_is_the_name_and_on_an_alias() {
    let with = |key: &str| {
        BASE.replace(
            "targets: [{ url: \"http://127.0.0.1:1\" }]",
            &format!(
                "targets: [{{ url: \"http://127.0.0.1:1\" }}], retries: {{ attempts: 2, {key}: [reset, 503] }}"
            ),
        )
    };
    for key in ["retry_on", "on"] {
        let loaded =
            load_str(&with(key), &no_env).unwrap_or_else(|d| panic!("{key}:\n{}", lines(&d)));
        assert_eq!(
            loaded.config.upstreams["api"].retries.on,
            vec![RetryOn::Reset, RetryOn::Status(503)],
            "{key}"
        );
    }
    // What YAML 1.1 tools make of `on:` (the key `true`) is refused with a hint, not ignored.
    let errs = errors(&with("true"));
    assert!(lines(&errs).contains("retry_on"), "{}", lines(&errs));
    // Bad values are reported under the name used.
    let errs = errors(&with("retry_on").replace("503", "404"));
    assert!(
        errs.iter()
            .any(|d| d.path == "upstreams.api.retries.retry_on[1]"),
        "{}",
        lines(&errs)
    );
    // The config is written back with the new name.
    let loaded = load_str(&with("on"), &no_env).expect("loads");
    let json = serde_json::to_value(&loaded.config).expect("serializes");
    assert!(json["upstreams"]["api"]["retries"]["retry_on"].is_array());
    assert!(json["upstreams"]["api"]["retries"].get("on").is_none());
}

/// Collects the paths of every `Duration` in the schema, in the notation of [`DURATIONS`]
/// (`[]` for list elements, `*` for map values).
fn duration_paths(
    node: &serde_json::Value,
    defs: &serde_json::Value,
    at: &str,
    depth: usize,
    out: &mut Vec<String>,
) {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    if depth > 12 {
        return;
    }
    if let Some(r) = node.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap_or(r);
        if name == "Duration" {
            out.push(at.to_string());
        } else if let Some(def) = defs.get(name) {
            duration_paths(def, defs, at, depth + 1, out);
        }
    }
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            duration_paths(v, defs, &join(k), depth + 1, out);
        }
    }
    if let Some(items) = node.get("items") {
        duration_paths(items, defs, &format!("{at}[]"), depth + 1, out);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        duration_paths(extra, defs, &join("*"), depth + 1, out);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for alt in node
            .get(key)
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            duration_paths(alt, defs, at, depth + 1, out);
        }
    }
}

#[test]
fn every_duration_field_has_a_range_and_every_range_is_documented() {
    use frontdesk_config::DURATIONS;
    let schema = frontdesk_config::json_schema();
    let defs = schema
        .get("definitions")
        .or_else(|| schema.get("$defs"))
        .cloned()
        .unwrap_or_default();
    let mut found = Vec::new();
    duration_paths(&schema, &defs, "", 0, &mut found);
    assert!(found.len() >= 16, "{found:?}");
    for path in &found {
        // Route plugins share the global plugins' ranges; older spellings and group overrides
        // share the ranges of the fields they stand for.
        // A profile's plugins and routes share the top-level ranges too.
        let unprofiled = match path.strip_prefix("profiles[].routes[].") {
            Some(rest) => format!("routes[].{rest}"),
            None => path.strip_prefix("profiles[].").unwrap_or(path).to_string(),
        };
        let path = unprofiled.as_str();
        let normal = match path
            .strip_prefix("routes[].")
            .filter(|p| p.starts_with("plugins."))
            .unwrap_or(path)
        {
            "upstreams.*.connect_timeout" => "upstreams.*.timeouts.connect",
            "upstreams.*.timeout" => "upstreams.*.timeouts.response",
            "upstreams.*.pool_idle_timeout" => "upstreams.*.timeouts.idle",
            "plugins.rate_limit.groups.*.*.per" => "plugins.rate_limit.limits[].per",
            other => other,
        };
        assert!(
            DURATIONS.iter().any(|(f, _, _)| *f == normal),
            "{path} (as {normal}) has no row in DURATIONS"
        );
    }
    let doc = include_str!("../../../docs/configuration.md");
    for (field, _, most) in DURATIONS {
        let shown = field
            .replace("upstreams.*.", "upstreams.<name>.")
            .replace("calls.*.", "calls.<name>.");
        let secs = most.as_secs();
        let most = if secs % 3600 == 0 {
            format!("{}h", secs / 3600)
        } else if secs % 60 == 0 {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        };
        assert!(
            doc.lines()
                .any(|l| l.starts_with(&format!("| `{shown}`")) && l.contains(&format!("`{most}`"))),
            "docs/configuration.md has no range row for {shown} up to {most}"
        );
    }
}
