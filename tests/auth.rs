//! Who is calling: consumers identified by API key, basic auth and client certificate; several
//! auth plugins on one route; anonymous consumers; `acl`; headers the client cannot spoof.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::pki::Ca;
use common::{client, config, echo, echo_json, gateway};

/// Consumers, with a bcrypt hash made now (low cost, to keep tests quick).
fn consumers() -> String {
    let hash = bcrypt::hash("open sesame", 4).unwrap();
    format!(
        r#"
consumers:
  - name: alice
    groups: [partners]
    api_keys: ["alice-key-0001"]
    basic_auth: {{ username: alice, password_hash: "{hash}" }}
  - name: bob
    groups: [internal, beta]
    api_keys: [{{ sha256: "{bob_sha}" }}]
  - name: guest
    groups: [public]
  - name: ci-bot
    groups: [internal]
    client_cert: {{ subject_cn: ci-bot }}
"#,
        bob_sha = sha256_hex(b"bob-key-00000002"),
    )
}

fn sha256_hex(b: &[u8]) -> String {
    frontdesk::consumer::key_digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

async fn problem(resp: reqwest::Response) -> (u16, Vec<String>, serde_json::Value) {
    let status = resp.status().as_u16();
    let challenges = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    (status, challenges, resp.json().await.unwrap())
}

#[tokio::test]
async fn api_keys_identify_consumers_by_header_or_query_and_are_not_forwarded() {
    let up = echo("svc").await;
    let gw = gateway(&config(&format!(
        r#"{consumers}
upstreams:
  svc: {{ targets: [{{ url: "{url}" }}] }}
routes:
  - name: keyed
    match: {{ paths: ["/k"] }}
    upstream: svc
    plugins:
      key_auth: {{ query: api_key }}
  - name: forwarding
    match: {{ paths: ["/f"] }}
    upstream: svc
    plugins:
      key_auth: {{ header: x-token, forward_credentials: true }}
"#,
        consumers = consumers(),
        url = up.url()
    )))
    .await;
    let c = client();
    let v = echo_json(
        c.get(gw.url("/k"))
            .header("x-api-key", "alice-key-0001")
            .header("x-consumer-name", "root")
            .header("x-consumer-groups", "admins")
            .header("x-consumer-id", "forged")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["headers"]["x-consumer-name"], "alice");
    assert_eq!(v["headers"]["x-consumer-groups"], "partners");
    assert!(
        v["headers"].get("x-consumer-id").is_none(),
        "spoofed header removed"
    );
    assert!(
        v["headers"].get("x-api-key").is_none(),
        "the key is not forwarded"
    );

    // A hashed key in the config, presented by query, removed from the forwarded URI.
    let v = echo_json(
        c.get(gw.url("/k?a=1&api_key=bob-key-00000002&b=2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["headers"]["x-consumer-name"], "bob");
    assert_eq!(v["headers"]["x-consumer-groups"], "internal,beta");
    assert_eq!(v["uri"], "/k?a=1&b=2");

    // Missing and wrong keys.
    let (status, challenges, body) = problem(c.get(gw.url("/k")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(challenges, vec!["Key realm=\"frontdesk\""]);
    assert_eq!(body["status"], 401);
    let (status, challenges, body) = problem(
        c.get(gw.url("/k"))
            .header("x-api-key", "alice-key-0002")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(challenges[0].contains("invalid_key"));
    assert!(
        !body.to_string().contains("alice-key"),
        "no key in the answer"
    );
    assert_eq!(
        up.requests(),
        2,
        "refused requests never reach the upstream"
    );

    // forward_credentials keeps the key.
    let v = echo_json(
        c.get(gw.url("/f"))
            .header("x-token", "alice-key-0001")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["headers"]["x-token"], "alice-key-0001");
    assert_eq!(v["headers"]["x-consumer-name"], "alice");
}

#[tokio::test]
async fn basic_auth_checks_bcrypt_once_then_remembers_and_refuses_wrong_passwords() {
    let up = echo("svc").await;
    let gw = gateway(&config(&format!(
        r#"{consumers}
upstreams:
  svc: {{ targets: [{{ url: "{url}" }}] }}
routes:
  - name: basic
    match: {{ paths: ["/"] }}
    upstream: svc
    plugins:
      basic_auth: {{ realm: partners }}
"#,
        consumers = consumers(),
        url = up.url()
    )))
    .await;
    let c = client();
    let v = echo_json(
        c.get(gw.url("/"))
            .basic_auth("alice", Some("open sesame"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["headers"]["x-consumer-name"], "alice");
    assert!(v["headers"].get("authorization").is_none());
    // Remembered: many more requests cost no hash each (100 bcrypt checks would take seconds
    // at a real cost; here they must all pass quickly and identically).
    let start = Instant::now();
    for _ in 0..50 {
        let resp = c
            .get(gw.url("/"))
            .basic_auth("alice", Some("open sesame"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert!(start.elapsed() < Duration::from_secs(5));

    for (user, pass) in [("alice", "open sesame!"), ("mallory", "open sesame")] {
        let (status, challenges, _) = problem(
            c.get(gw.url("/"))
                .basic_auth(user, Some(pass))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401, "{user}");
        assert_eq!(
            challenges,
            vec!["Basic realm=\"partners\", charset=\"UTF-8\""]
        );
    }
    let (status, _, _) = problem(
        c.get(gw.url("/"))
            .header("authorization", "Basic !!notbase64")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn several_auth_plugins_any_one_may_identify_and_anonymous_covers_only_missing_credentials() {
    let up = echo("svc").await;
    let gw = gateway(&config(&format!(
        r#"{consumers}
upstreams:
  svc: {{ targets: [{{ url: "{url}" }}] }}
routes:
  - name: either
    match: {{ paths: ["/either"] }}
    upstream: svc
    plugins:
      key_auth: {{}}
      basic_auth: {{}}
  - name: open
    match: {{ paths: ["/open"] }}
    upstream: svc
    plugins:
      key_auth: {{ anonymous: guest }}
      basic_auth: {{}}
"#,
        consumers = consumers(),
        url = up.url()
    )))
    .await;
    let c = client();
    let by_key = echo_json(
        c.get(gw.url("/either"))
            .header("x-api-key", "bob-key-00000002")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(by_key["headers"]["x-consumer-name"], "bob");
    let by_basic = echo_json(
        c.get(gw.url("/either"))
            .basic_auth("alice", Some("open sesame"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(by_basic["headers"]["x-consumer-name"], "alice");
    // Neither: 401 with both challenges.
    let (status, challenges, _) = problem(c.get(gw.url("/either")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(challenges.len(), 2, "{challenges:?}");
    assert!(challenges[0].starts_with("Key") && challenges[1].starts_with("Basic"));

    // Anonymous: no credentials go on as guest, marked so.
    let v = echo_json(
        c.get(gw.url("/open"))
            .header("x-anonymous-consumer", "false")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["headers"]["x-consumer-name"], "guest");
    assert_eq!(v["headers"]["x-anonymous-consumer"], "true");
    // ... but wrong credentials are still refused.
    let resp = c
        .get(gw.url("/open"))
        .header("x-api-key", "not-a-real-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c
        .get(gw.url("/open"))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn acl_allows_and_denies_by_group_with_403() {
    let up = echo("svc").await;
    let gw = gateway(&config(&format!(
        r#"{consumers}
upstreams:
  svc: {{ targets: [{{ url: "{url}" }}] }}
routes:
  - name: partners
    match: {{ paths: ["/partners"] }}
    upstream: svc
    plugins:
      key_auth: {{ anonymous: guest }}
      acl: {{ allow_groups: [partners, internal], deny_groups: [beta] }}
"#,
        consumers = consumers(),
        url = up.url()
    )))
    .await;
    let c = client();
    let get = |key: Option<&'static str>| {
        let mut rb = c.get(gw.url("/partners"));
        if let Some(k) = key {
            rb = rb.header("x-api-key", k);
        }
        rb.send()
    };
    assert_eq!(get(Some("alice-key-0001")).await.unwrap().status(), 200);
    // bob is internal but also beta: deny wins.
    let (status, _, body) = problem(get(Some("bob-key-00000002")).await.unwrap()).await;
    assert_eq!(status, 403);
    assert!(body["detail"].as_str().unwrap().contains("denied"));
    // The anonymous guest is in no allowed group.
    let (status, _, _) = problem(get(None).await.unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn verified_client_certificates_identify_consumers_by_subject_cn() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let server_ca_path = server_ca.write(dir.path(), "server-ca");
    let (cert, key) = server_ca.leaf(dir.path(), "api", &["api.test"]);
    let clients = Ca::new("clients CA");
    let clients_path = clients.write(dir.path(), "clients-ca");
    let identity = |name: &str| {
        let (c, k) = clients.leaf(dir.path(), name, &[name]);
        let pem = [std::fs::read(c).unwrap(), std::fs::read(k).unwrap()].concat();
        reqwest::Identity::from_pem(&pem).unwrap()
    };
    let up = echo("svc").await;
    let yaml = format!(
        r#"version: 1
listeners:
  - name: public
    address: 127.0.0.1:0
    tls:
      certificates: [{{ cert: "{cert}", key: "{key}" }}]
      client_auth: {{ ca: "{clients_path}", mode: optional }}
{consumers}
upstreams:
  svc: {{ targets: [{{ url: "{url}" }}] }}
routes:
  - name: mtls
    match: {{ paths: ["/"] }}
    upstream: svc
    plugins:
      client_cert: {{}}
"#,
        consumers = consumers(),
        url = up.url()
    );
    let gw = gateway(&yaml).await;
    let tls_client = |id: Option<reqwest::Identity>| {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&server_ca_path).unwrap()).unwrap();
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(ca)
            .resolve("api.test", gw.addr);
        if let Some(id) = id {
            b = b.identity(id);
        }
        b.build().unwrap()
    };
    let url = format!("https://api.test:{}/", gw.addr.port());
    let v = echo_json(
        tls_client(Some(identity("ci-bot")))
            .get(&url)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["headers"]["x-consumer-name"], "ci-bot");
    assert_eq!(v["headers"]["x-consumer-groups"], "internal");
    // A verified certificate naming no consumer, and no certificate at all: 401.
    let (status, _, body) = problem(
        tls_client(Some(identity("stranger")))
            .get(&url)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("names no consumer"));
    let (status, challenges, _) = problem(tls_client(None).get(&url).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(challenges.len(), 1);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn bad_consumer_and_plugin_settings_are_refused_with_their_paths() {
    let yaml = config(
        r#"
consumers:
  - { name: a, api_keys: ["short"], basic_auth: { username: a, password_hash: "plain" } }
  - { name: a, api_keys: [{ sha256: "xyz" }] }
routes:
  - name: r
    match: { paths: ["/"] }
    plugins:
      key_auth: { anonymous: nobody }
      acl: {}
      respond: { status: 200 }
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(&path, yaml).unwrap();
    let err = match frontdesk::Gateway::start(&path).await {
        Ok(_) => panic!("must be refused"),
        Err(e) => e.to_string(),
    };
    for want in [
        "consumers[0].api_keys[0]: an API key needs at least 8 characters",
        "consumers[0].basic_auth.password_hash: expected a bcrypt hash",
        "consumers[1].name: duplicate consumer name",
        "consumers[1].api_keys[0].sha256: expected 64 hex digits",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }

    // Valid consumers, but plugins that cannot be built: errors at the plugin's path.
    let yaml = config(
        r#"
consumers:
  - { name: a, api_keys: ["long-enough-key"] }
routes:
  - name: r
    match: { paths: ["/"] }
    plugins:
      key_auth: { anonymous: nobody }
      acl: {}
      respond: { status: 200 }
"#,
    );
    std::fs::write(&path, yaml).unwrap();
    let err = match frontdesk::Gateway::start(&path).await {
        Ok(_) => panic!("must be refused"),
        Err(e) => e.to_string(),
    };
    for want in [
        "routes[0].plugins.key_auth: anonymous: no consumer is named \"nobody\"",
        "routes[0].plugins.acl: set allow_groups, deny_groups or both",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
}
