//! Loading whole documents: the contract file, every error with its path, syntax positions, env.

use frontdesk_config::{load_str, PathMatch, Severity};

const CONTRACT: &str = include_str!("../../../examples/contract.yaml");

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn accepts_the_contract_file_as_written() {
    let loaded = load_str(CONTRACT, &no_env).expect("contract must load");
    let cfg = loaded.config;
    assert_eq!(cfg.listeners[0].limits.max_request_head.0, 32 * 1024);
    assert_eq!(cfg.upstreams["users"].targets[1].weight, 3);
    assert_eq!(
        cfg.routes[1].matcher.paths[1],
        PathMatch::Template("/orders/{id}".into())
    );
    assert_eq!(cfg.routes[0].matcher.headers["x-api-version"], "2");
    assert!(cfg.routes[2].plugins.respond.is_some());
    assert_eq!(cfg.server.drain_timeout.0.as_secs(), 30);
}

#[test]
fn reports_every_error_with_its_field_path() {
    let text = r#"
version: 1
listeners:
  - { name: a, address: "not-an-address" }
upstreams:
  users: { targets: [{ url: "http://127.0.0.1:1" }] }
routes:
  - { name: r1, match: { paths: ["/a"] }, upstream: users }
  - { name: r1, match: { paths: ["/b"] }, upstream: users }
  - { name: r3, match: { paths: [{ regex: "(" }] }, upstream: userz }
  - { name: r4, match: { paths: ["/d"] }, upstream: users, bogus: 1 }
"#;
    let errs = load_str(text, &no_env).unwrap_err();
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has("listeners[0].address: invalid address"), "{lines:#?}");
    assert!(
        has("routes[1].name: duplicate route name \"r1\""),
        "{lines:#?}"
    );
    assert!(
        has("routes[2].upstream: unknown upstream \"userz\" (did you mean \"users\"?)"),
        "{lines:#?}"
    );
    assert!(has("routes[2].match.paths[0]: invalid regex"), "{lines:#?}");
    assert!(has("routes[3].bogus: unknown field `bogus`"), "{lines:#?}");
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let errs = load_str("version: 1\nroutes: [\n  - a: b\n", &no_env).unwrap_err();
    assert_eq!(errs.len(), 1);
    let (line, _col) = errs[0].position.expect("position");
    assert!(line >= 2, "{:?}", errs[0]);
    assert!(
        errs[0].to_string().starts_with("error: line "),
        "{}",
        errs[0]
    );
}

#[test]
fn substitutes_environment_variables_and_refuses_unset_ones() {
    let text = "version: 1\nserver: { worker_threads: \"${THREADS:-2}\", via: \"${VIA}\" }\n";
    let env = |k: &str| (k == "VIA").then(|| "edge".to_string());
    let cfg = load_str(text, &env).expect("loads").config;
    assert_eq!(cfg.server.worker_threads, 2);
    assert_eq!(cfg.server.via, "edge");
    let errs = load_str(text, &no_env).unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .contains("server.via: environment variable \"VIA\" is not set"),
        "{}",
        errs[0]
    );
}

#[test]
fn respond_route_with_upstream_is_only_a_warning() {
    let text = r#"
version: 1
listeners: [{ name: a, address: "127.0.0.1:0" }]
upstreams: { u: { targets: [{ url: "http://127.0.0.1:1" }] } }
routes:
  - { name: s, match: { paths: ["/"] }, upstream: u, plugins: { respond: { body: hi } } }
"#;
    let loaded = load_str(text, &no_env).expect("warnings do not refuse");
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].severity, Severity::Warning);
    assert_eq!(loaded.warnings[0].path, "routes[0].upstream");
}

#[test]
fn schema_is_draft_07_and_lists_top_level_fields() {
    let schema = frontdesk_config::json_schema();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    for field in [
        "version",
        "server",
        "listeners",
        "upstreams",
        "routes",
        "plugins",
    ] {
        assert!(schema["properties"].get(field).is_some(), "missing {field}");
    }
}

#[test]
fn a_global_respond_plugin_lets_routes_go_without_an_upstream() {
    let text = "version: 1\nplugins: { respond: { body: maintenance, status: 503 } }\nroutes:\n  - { name: r, match: { paths: [\"/\"] } }\n";
    assert!(load_str(text, &no_env).is_ok());
    let without = "version: 1\nroutes:\n  - { name: r, match: { paths: [\"/\"] } }\n";
    let errs = load_str(without, &no_env).unwrap_err();
    assert_eq!(errs[0].path, "routes[0].upstream");
}

#[test]
fn a_shared_limit_store_needs_the_redis_section() {
    let text = r#"
version: 1
routes:
  - name: r
    match: { paths: ["/"] }
    plugins:
      respond: { status: 200 }
      rate_limit: { store: redis, limits: [{ name: a, key: route, rate: 1, per: 1s }] }
      quota: { key: route, limit: 1, per: day, store: redis }
plugins:
  rate_limit: { store: redis, limits: [{ name: g, key: route, rate: 1, per: 1s }] }
"#;
    let errs = load_str(text, &no_env).unwrap_err();
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    for at in [
        "plugins.rate_limit.store",
        "routes[0].plugins.rate_limit.store",
        "routes[0].plugins.quota.store",
    ] {
        assert!(
            has(&format!(
                "{at}: `store: redis` needs a top-level `redis:` section"
            )),
            "{lines:#?}"
        );
    }
    let with_redis = format!("{text}redis: {{ url: \"redis://127.0.0.1:6379\" }}\n");
    assert!(load_str(&with_redis, &no_env).is_ok());
    let errs = load_str(&format!("{text}redis: {{ timeout: 1s }}\n"), &no_env).unwrap_err();
    assert!(errs
        .iter()
        .any(|e| e.to_string().contains("redis: set `url` (or `cluster`)")));
    let both = format!(
        "{text}redis: {{ url: \"redis://127.0.0.1:6379\", cluster: [\"redis://127.0.0.1:7000\"] }}\n"
    );
    let errs = load_str(&both, &no_env).unwrap_err();
    assert!(errs.iter().any(|e| e.to_string().contains("not both")));
}

#[test]
fn admin_and_observability_sections_are_checked_with_field_paths() {
    let text = r#"
version: 1
listeners: [{ name: public, address: "127.0.0.1:8080" }]
admin: { address: "0.0.0.0:9901" }
observability:
  access_log: { output: "" }
  tracing: { otlp_endpoint: "https://collector:4317", sample_ratio: 1.5, service_name: "" }
"#;
    let errs = load_str(text, &no_env).unwrap_err();
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    for needle in [
        "admin.token: an admin listener on a non-loopback address needs a token",
        "observability.access_log.output: must be stdout, stderr or a file path",
        "observability.tracing.otlp_endpoint: TLS to the collector is not supported yet",
        "observability.tracing.sample_ratio: must be between 0.0 and 1.0",
        "observability.tracing.service_name: must not be empty",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{needle}: {lines:#?}"
        );
    }

    let clash = r#"
version: 1
listeners: [{ name: public, address: "127.0.0.1:8080" }]
admin: { address: "127.0.0.1:8080", token: t }
"#;
    let errs = load_str(clash, &no_env).unwrap_err();
    assert!(
        errs.iter().any(|e| e
            .to_string()
            .contains("admin.address: listeners[0] already uses")),
        "{errs:?}"
    );

    let open = "version: 1\nadmin: {}\nobservability: { metrics: { consumer_label: true } }\n";
    let loaded = load_str(open, &no_env).expect("loopback without a token is allowed");
    assert_eq!(
        loaded.config.admin.map(|a| a.address).as_deref(),
        Some("127.0.0.1:9901")
    );
    assert!(loaded.config.observability.metrics.enabled);
    assert!(loaded
        .warnings
        .iter()
        .any(|w| w.to_string().contains("admin.token: no token")));
}

#[test]
fn worker_threads_is_read_without_loading_the_config() {
    use frontdesk_config::worker_threads;
    let none = |_: &str| None;
    assert_eq!(
        worker_threads("version: 1\nserver: { worker_threads: 3 }\n", &none),
        3
    );
    assert_eq!(
        worker_threads("version: 1\nserver: { worker_threads: \"${T}\" }\n", &|k| {
            (k == "T").then(|| "2".to_string())
        }),
        2
    );
    // Absent, invalid, or in a file that does not parse: one worker per core (0).
    assert_eq!(worker_threads("version: 1\n", &none), 0);
    assert_eq!(
        worker_threads("version: 1\nserver: { worker_threads: lots }\n", &none),
        0
    );
    assert_eq!(worker_threads("server: [\n", &none), 0);
    // The rest of the config is not checked here: an unknown upstream does not matter.
    assert_eq!(
        worker_threads(
            "version: 1\nserver: { worker_threads: 1 }\nroutes: [{ name: r, match: { paths: [\"/\"] }, upstream: nowhere }]\n",
            &none
        ),
        1
    );
}
