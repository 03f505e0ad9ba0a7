//! The effective config goes back out (the admin API's `GET /config`): serialized, it loads
//! again as the same config, units in their human form, and redaction leaves no secret behind.

use frontdesk_config::{load_str, Config, REDACTED};

const CONTRACT: &str = include_str!("../../../examples/contract.yaml");

fn no_env(_: &str) -> Option<String> {
    None
}

fn contract() -> Config {
    load_str(CONTRACT, &no_env).expect("contract loads").config
}

#[test]
fn serialized_config_loads_back_as_the_same_config() {
    let cfg = contract();
    let json = serde_json::to_string(&cfg).expect("serializes");
    let again = load_str(&json, &no_env)
        .expect("its JSON is a valid config")
        .config;
    assert_eq!(again, cfg);
}

#[test]
fn units_serialize_in_their_human_form() {
    let text = r#"
version: 1
server: { drain_timeout: 1500ms }
listeners:
  - { name: a, address: "127.0.0.1:0", limits: { max_request_head: 1MiB, max_uri: 100 } }
upstreams:
  u:
    targets: [{ url: "http://127.0.0.1:1" }]
    timeouts: { connect: 20ms, response: 2m }
    retries: { attempts: 2, retry_on: [connect_failure, 503] }
routes:
  - { name: r, match: { paths: ["/a", { exact: /b }] }, upstream: u }
"#;
    let cfg = load_str(text, &no_env).expect("loads").config;
    let v = serde_json::to_value(&cfg).expect("serializes");
    assert_eq!(v["server"]["drain_timeout"], "1500ms");
    assert_eq!(v["listeners"][0]["limits"]["max_request_head"], "1MiB");
    assert_eq!(v["listeners"][0]["limits"]["max_uri"], "100B");
    assert_eq!(v["upstreams"]["u"]["timeouts"]["connect"], "20ms");
    assert_eq!(v["upstreams"]["u"]["timeouts"]["response"], "120s");
    assert_eq!(
        v["upstreams"]["u"]["retries"]["retry_on"],
        serde_json::json!(["connect_failure", 503])
    );
    assert_eq!(
        v["routes"][0]["match"]["paths"],
        serde_json::json!([{ "prefix": "/a" }, { "exact": "/b" }])
    );
}

#[test]
fn redaction_removes_every_secret() {
    let text = r#"
version: 1
listeners: [{ name: a, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0", token: admin-token-value }
redis: { url: "redis://:redis-pass-value@127.0.0.1:6379/0" }
consumers:
  - name: c
    api_keys: [plain-key-value, { sha256: "0000000000000000000000000000000000000000000000000000000000000000" }]
    basic_auth: { username: bob, password_hash: "$2b$04$bcrypthashvaluexxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }
plugins:
  jwt: { issuers: [{ issuer: i, secret: jwt-secret-value, algorithms: [HS256] }] }
routes:
  - name: r
    match: { paths: ["/"] }
    plugins:
      respond: { body: ok }
      jwt: { issuers: [{ issuer: j, secret: route-jwt-secret, algorithms: [HS256] }] }
"#;
    let cfg = load_str(text, &no_env).expect("loads").config;
    let out = serde_json::to_string(&cfg.redacted()).expect("serializes");
    for secret in [
        "admin-token-value",
        "redis-pass-value",
        "plain-key-value",
        "0000000000",
        "bcrypthashvalue",
        "jwt-secret-value",
        "route-jwt-secret",
    ] {
        assert!(!out.contains(secret), "{secret} leaked: {out}");
    }
    assert!(out.contains(REDACTED));
    assert!(out.contains("\"username\":\"bob\""), "{out}");
}

#[test]
fn a_custom_plugins_strings_are_redacted_and_a_placeholder_there_is_refused() {
    let text = r#"
version: 1
plugins:
  custom:
    signer: { key: custom-secret-value, rounds: 3, upstreams: [a-secret-too], nested: { token: deep-secret } }
routes:
  - { name: r, match: { paths: ["/"] }, plugins: { custom: { other: { password: route-secret } } } }
"#;
    let cfg = load_str(text, &no_env).expect("loads").config;
    let out = serde_json::to_value(cfg.redacted()).expect("serializes");
    let shown = out.to_string();
    for secret in [
        "custom-secret-value",
        "a-secret-too",
        "deep-secret",
        "route-secret",
    ] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    // The shape stays: numbers are shown, strings say they are set.
    assert_eq!(out["plugins"]["custom"]["signer"]["rounds"], 3);
    assert_eq!(out["plugins"]["custom"]["signer"]["key"], REDACTED);

    // Copying what the admin API showed back as a new config (JSON is YAML) does not turn the
    // placeholder into a value.
    let copied = out.to_string();
    let diags = load_str(&copied, &no_env).expect_err("a placeholder where a secret was");
    assert!(
        diags
            .iter()
            .any(|d| d.path.starts_with("plugins.custom.signer")),
        "{diags:?}"
    );
}
