//! The upstream section of issue 3: the documented example loads with its values, defaults apply
//! when fields are absent, and every inconsistent combination is refused with its field path.

use std::time::Duration;

use frontdesk_config::{load_str, LoadBalancing, RetryOn, UpstreamProtocol};

fn no_env(_: &str) -> Option<String> {
    None
}

fn with_upstream(up: &str) -> String {
    format!(
        "version: 1\nupstreams:\n  users:\n{up}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: users }}\n"
    )
}

fn errors(up: &str) -> Vec<String> {
    match load_str(&with_upstream(up), &no_env) {
        Ok(_) => Vec::new(),
        Err(diags) => diags.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_issue_example_loads_with_its_values() {
    let text = with_upstream(
        r#"    targets:
      - url: http://127.0.0.1:9001
      - url: http://127.0.0.1:9002
        weight: 2
    load_balancing: consistent_hash
    hash_key: header:x-user-id
    health_check:
      active:  { path: /healthz, interval: 1s, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }
      passive: { unhealthy_after: 3, eject_for: 10s }
    timeouts: { connect: 1s, response: 30s, idle: 60s }
    retries:  { attempts: 2, retry_on: [connect_failure, reset, 502, 503, 504], backoff: 25ms }
    circuit_breaker: { failure_ratio: 0.5, min_requests: 20, window: 10s, open_for: 5s, max_concurrent: 1000 }
    protocol: h2c"#,
    );
    let cfg = load_str(&text, &no_env).expect("loads").config;
    let up = &cfg.upstreams["users"];
    assert_eq!(up.load_balancing, LoadBalancing::ConsistentHash);
    assert_eq!(up.protocol, UpstreamProtocol::H2c);
    assert_eq!(up.connect_timeout(), Duration::from_secs(1));
    assert_eq!(up.response_timeout(), Duration::from_secs(30));
    assert_eq!(up.idle_timeout(), Duration::from_secs(60));
    assert_eq!(
        up.retries.on,
        vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::Status(502),
            RetryOn::Status(503),
            RetryOn::Status(504)
        ]
    );
    let active = up.health_check.active.as_ref().expect("active checks");
    assert_eq!(active.timeout.get(), Duration::from_millis(500));
    assert_eq!(up.health_check.passive.unhealthy_after, 3);
    assert_eq!(
        up.circuit_breaker.as_ref().unwrap().max_concurrent,
        Some(1000)
    );
}

#[test]
fn absent_fields_take_the_documented_defaults() {
    let cfg = load_str(
        &with_upstream("    targets: [{ url: http://127.0.0.1:9001 }]"),
        &no_env,
    )
    .expect("loads")
    .config;
    let up = &cfg.upstreams["users"];
    assert_eq!(up.retries.attempts, 1);
    assert_eq!(up.retries.on, vec![RetryOn::ConnectFailure]);
    assert_eq!(up.health_check.passive.unhealthy_after, 5);
    assert_eq!(
        up.health_check.passive.eject_for.get(),
        Duration::from_secs(10)
    );
    assert!(up.health_check.active.is_none());
    assert!(up.circuit_breaker.is_none());
    assert_eq!(up.load_balancing, LoadBalancing::RoundRobin);
    assert_eq!(up.protocol, UpstreamProtocol::Http1);
    // The core's spelling of the timeouts still works.
    let cfg = load_str(
        &with_upstream("    targets: [{ url: http://127.0.0.1:9001 }]\n    connect_timeout: 2s\n    timeout: 7s"),
        &no_env,
    )
    .expect("loads")
    .config;
    assert_eq!(
        cfg.upstreams["users"].connect_timeout(),
        Duration::from_secs(2)
    );
    assert_eq!(
        cfg.upstreams["users"].response_timeout(),
        Duration::from_secs(7)
    );
}

#[test]
fn inconsistent_upstreams_are_refused_with_their_field_paths() {
    let cases: &[(&str, &str)] = &[
        (
            "    targets: [{ url: http://a:1 }]\n    load_balancing: consistent_hash",
            "upstreams.users.hash_key: consistent_hash needs a hash_key",
        ),
        (
            "    targets: [{ url: http://a:1 }]\n    load_balancing: consistent_hash\n    hash_key: body",
            "upstreams.users.hash_key: \"body\": expected",
        ),
        (
            "    targets: [{ url: http://a:1 }]\n    protocol: h2",
            "upstreams.users.protocol: h2 runs over TLS",
        ),
        (
            "    targets: [{ url: https://a:1 }]\n    protocol: h2c",
            "upstreams.users.protocol: h2c is cleartext",
        ),
        (
            "    targets: [{ url: https://a:1 }, { url: http://b:1 }]",
            "upstreams.users.targets: all targets of an upstream use the same scheme",
        ),
        (
            "    targets: [{ url: https://a:1 }]\n    tls: { client_cert: c.pem }",
            "upstreams.users.tls: client_cert and client_key go together",
        ),
        (
            "    targets: [{ url: http://a:1 }]\n    retries: { retry_on: [timeout, 404] }",
            "upstreams.users.retries.retry_on[1]",
        ),
        (
            "    targets: [{ url: http://a:1 }]\n    timeouts: { connect: 1s }\n    connect_timeout: 2s",
            "upstreams.users.timeouts.connect: set either this or the older top-level field",
        ),
        (
            "    targets: [{ url: http://a:1 }]\n    circuit_breaker: { failure_ratio: 1.5 }",
            "upstreams.users.circuit_breaker.failure_ratio: must be above 0 and at most 1",
        ),
        (
            "    targets: [{ url: http://a:1 }]\n    health_check: { active: { path: healthz, unhealthy_threshold: 0 } }",
            "upstreams.users.health_check.active.path: must start with `/`",
        ),
        (
            "    targets: [{ url: http://a:1 }]\n    health_check: { active: { unhealthy_threshold: 0 } }",
            "upstreams.users.health_check.active.unhealthy_threshold: must be at least 1",
        ),
    ];
    for (up, want) in cases {
        let errs = errors(up);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "for\n{up}\nwanted {want:?}, got {errs:?}"
        );
    }
}

#[test]
fn ipv6_targets_need_no_port() {
    for url in [
        "http://[::1]",
        "http://[::1]:8080",
        "https://[2001:db8::1]/",
    ] {
        let errs = errors(&format!("    targets: [{{ url: \"{url}\" }}]"));
        assert!(errs.is_empty(), "{url}: {errs:?}");
    }
    for url in ["http://[::1]x", "http://[nope]:80", "http://[::1]:99999"] {
        let errs = errors(&format!("    targets: [{{ url: \"{url}\" }}]"));
        assert!(!errs.is_empty(), "{url} must be refused");
    }
}
