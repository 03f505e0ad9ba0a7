//! Client profiles (backend for frontend): route sets and default plugins per client type,
//! selected by listener, host, consumer group or JWT claim, through a real gateway.

mod common;

use std::time::Duration;

use common::{echo, gateway, TestGateway};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef-profiles";

/// A gateway with listeners `public` and `partners`, upstreams `web` and `mobile` (echoes that
/// name themselves), a top-level route and one profile per selector.
async fn gw(extra_global: &str, select: &str) -> TestGateway {
    let web = echo("web").await;
    let mobile = echo("mobile").await;
    let partner = echo("partner").await;
    let yaml = format!(
        r#"version: 1
listeners:
  - {{ name: public, address: "127.0.0.1:0" }}
  - {{ name: partners, address: "127.0.0.1:0" }}
upstreams:
  web: {{ targets: [{{ url: "{web}" }}] }}
  mobile: {{ targets: [{{ url: "{mobile}" }}] }}
  partner: {{ targets: [{{ url: "{partner}" }}] }}
consumers:
  - {{ name: alice, groups: [mobile-apps], api_keys: ["alice-key-0123456789"] }}
  - {{ name: bob, api_keys: ["bob-key-0123456789"] }}
{extra_global}
observability:
  access_log: {{ output: access.log }}
routes:
  - {{ name: home, match: {{ paths: ["/home"] }}, upstream: web }}
profiles:
  - name: partners
    select: {{ listeners: [partners] }}
    routes:
      - {{ name: partner-home, match: {{ paths: ["/home"] }}, upstream: partner }}
  - name: mobile
    select: {{ {select} }}
    plugins:
      headers: {{ response: {{ set: {{ x-profile: mobile }} }} }}
    routes:
      - {{ name: mobile-home, match: {{ paths: ["/home"] }}, upstream: mobile }}
"#,
        web = web.url(),
        mobile = mobile.url(),
        partner = partner.url()
    );
    gateway(&yaml).await
}

async fn name_of(
    gw: &TestGateway,
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let mut rb = common::client().get(format!("http://{addr}/home"));
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    let r = rb.send().await.expect("response");
    let status = r.status().as_u16();
    let profile = r
        .headers()
        .get("x-profile")
        .map(|v| v.to_str().expect("ascii").to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let _ = gw;
    (
        status,
        body["name"].as_str().unwrap_or("").to_string(),
        profile,
    )
}

#[tokio::test]
async fn profiles_are_selected_by_listener_and_host_with_their_own_routes_and_plugins() {
    let gw = gw(
        "admin: { address: \"127.0.0.1:0\" }\n",
        r#"hosts: ["m.example.com"]"#,
    )
    .await;
    let partners = gw
        .gw
        .local_addr("partners")
        .await
        .expect("partners listener");
    assert_eq!(name_of(&gw, gw.addr, &[]).await, (200, "web".into(), None));
    assert_eq!(name_of(&gw, partners, &[]).await.1, "partner");
    let (_, name, profile) = name_of(&gw, gw.addr, &[("host", "M.Example.com:8080")]).await;
    assert_eq!(
        (name.as_str(), profile.as_deref()),
        ("mobile", Some("mobile")),
        "the profile's default plugins ran"
    );
    // The access log names the profile; metrics count its requests.
    let log = gw.dir.path().join("access.log");
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let profiles: Vec<Option<&str>> = lines.iter().map(|l| l["profile"].as_str()).collect();
    assert!(
        profiles.contains(&Some("mobile"))
            && profiles.contains(&Some("partners"))
            && profiles.contains(&None),
        "{profiles:?}"
    );
    let metrics = common::metrics_text(&gw).await;
    assert!(
        metrics.contains(r#"frontdesk_profile_requests_total{profile="mobile",route="mobile-home",status_class="2xx"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"profile_requests_total{profile="",route="home""#));
}

#[tokio::test]
async fn profiles_are_selected_by_consumer_group_after_global_authentication() {
    let gw = gw(
        "plugins:\n  key_auth: { header: x-api-key }\n",
        r#"hosts: ["m.example.com"], consumer_groups: [mobile-apps]"#,
    )
    .await;
    let alice = [("x-api-key", "alice-key-0123456789")];
    let bob = [("x-api-key", "bob-key-0123456789")];
    assert_eq!(
        name_of(&gw, gw.addr, &alice).await.1,
        "mobile",
        "alice is in mobile-apps"
    );
    assert_eq!(name_of(&gw, gw.addr, &bob).await.1, "web");
    // No credentials: the global authentication refuses before any routing.
    assert_eq!(name_of(&gw, gw.addr, &[]).await.0, 401);
}

#[tokio::test]
async fn profiles_are_selected_by_a_verified_jwt_claim() {
    let extra = format!(
        "plugins:\n  jwt:\n    issuers:\n      - {{ issuer: internal, secret: \"{SECRET}\", algorithms: [HS256] }}\n"
    );
    let gw = gw(&extra, "jwt_claims: { client: mobile }").await;
    let token = |client: &str, key: &str| {
        let claims = json!({ "iss": "internal", "sub": "someone", "client": client, "exp": 4_000_000_000u64 });
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .expect("token")
    };
    let mobile = format!("Bearer {}", token("mobile", SECRET));
    let web = format!("Bearer {}", token("web", SECRET));
    let forged = format!(
        "Bearer {}",
        token("mobile", "not-the-secret-not-the-secret-xx")
    );
    assert_eq!(
        name_of(&gw, gw.addr, &[("authorization", &mobile)]).await.1,
        "mobile"
    );
    assert_eq!(
        name_of(&gw, gw.addr, &[("authorization", &web)]).await.1,
        "web"
    );
    assert_eq!(
        name_of(&gw, gw.addr, &[("authorization", &forged)]).await.0,
        401,
        "an unverified claim selects nothing"
    );
}

#[tokio::test]
async fn explain_names_the_profile_and_why() {
    let gw = gw(
        "plugins:\n  key_auth: { header: x-api-key }\n",
        r#"consumer_groups: [mobile-apps]"#,
    )
    .await;
    let explain = |args: &[&str]| common::explain_cli(&gw.path(), args);
    let partners = explain(&["GET", "/home", "--listener", "partners"]);
    assert!(
        partners.contains("profile: partners (listener partners)"),
        "{partners}"
    );
    assert!(partners.contains("upstream: partner"), "{partners}");
    let plain = explain(&["GET", "/home"]);
    assert!(
        plain.contains("profile: none, the top-level routes")
            && plain.contains("not evaluated, as they select by identity: mobile"),
        "{plain}"
    );
    assert!(plain.contains("upstream: web"), "{plain}");
}

#[test]
fn profile_configs_are_checked_with_field_paths() {
    let yaml = r#"version: 1
listeners: [{ name: public, address: "127.0.0.1:0" }]
upstreams: { web: { targets: [{ url: "http://127.0.0.1:9" }] } }
routes: [{ name: home, match: { paths: ["/"] }, upstream: web }]
profiles:
  - { name: a, select: {}, routes: [{ name: home, match: { paths: ["/"] }, upstream: web }] }
  - { name: a, select: { listeners: [nope] } }
  - { name: b, select: { consumer_groups: [g], jwt_claims: { c: d } } }
  - { name: c, select: { hosts: ["m.example.com"] }, routes: [{ name: x, match: { paths: ["/"] }, upstream: missing }] }
"#;
    let errs = frontdesk_config::load_str(yaml, &|_| None).expect_err("refused");
    let found: Vec<(String, String)> = errs
        .iter()
        .map(|d| (d.path.clone(), d.message.clone()))
        .collect();
    let has = |path: &str, words: &str| found.iter().any(|(p, m)| p == path && m.contains(words));
    assert!(has("profiles[0].select", "at least one"), "{found:?}");
    assert!(
        has("profiles[0].routes[0].name", "duplicate route name"),
        "{found:?}"
    );
    assert!(
        has("profiles[1].name", "duplicate profile name"),
        "{found:?}"
    );
    assert!(
        has("profiles[1].select.listeners[0]", "unknown listener"),
        "{found:?}"
    );
    assert!(
        has(
            "profiles[2].select.consumer_groups",
            "global authentication"
        ),
        "{found:?}"
    );
    assert!(
        has("profiles[2].select.jwt_claims", "global `jwt`"),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(p, _)| p.starts_with("profiles[3].routes[0].upstream")),
        "{found:?}"
    );
}
