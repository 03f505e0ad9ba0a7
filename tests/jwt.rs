//! The `jwt` plugin end to end: real tokens signed at test time (RS256, ES256, HS256), a real JWKS
//! server that can rotate keys, count fetches and fail, and the echo upstream showing what went
//! upstream.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{client, config, echo, echo_json, full, gateway, upstream, TestGateway, Upstream};
use hyper::{Request, Response};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const IDP: &str = "https://idp.example.com/";
const SECRET: &str = "internal-secret-at-least-32-bytes!";

/// A signing key and its public JWK.
struct Signer {
    alg: Algorithm,
    kid: String,
    enc: EncodingKey,
    jwk: Jwk,
    /// The public key as PEM (what an attacker can always get).
    public_pem: String,
}

impl Signer {
    fn new(alg: Algorithm, kid: &str) -> Signer {
        let (kp, enc) = match alg {
            Algorithm::RS256 => {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
                let enc = EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap();
                (kp, enc)
            }
            Algorithm::ES256 => {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
                (kp, enc)
            }
            other => panic!("no test signer for {other:?}"),
        };
        let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        Signer {
            alg,
            kid: kid.into(),
            enc,
            jwk,
            public_pem: kp.public_key_pem(),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        encode(&h, claims, &self.enc).unwrap()
    }

    /// Signs with this key but names another key id.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        encode(&h, claims, &self.enc).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a token from the IdP for `sub`, valid for a minute.
fn idp_claims(sub: &str) -> Value {
    json!({ "iss": IDP, "aud": "partners-api", "sub": sub, "tenant": "acme", "exp": now() + 60 })
}

fn hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A JWKS endpoint whose document can be swapped and which can be made to fail.
struct JwksServer {
    up: Upstream,
    doc: Arc<Mutex<String>>,
    failing: Arc<AtomicBool>,
}

impl JwksServer {
    async fn start(keys: &[&Signer]) -> JwksServer {
        let doc = Arc::new(Mutex::new(String::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let (d, f) = (doc.clone(), failing.clone());
        let up = upstream(move |_req: Request<hyper::body::Incoming>| {
            let (d, f) = (d.clone(), f.clone());
            async move {
                if f.load(Ordering::SeqCst) {
                    return Response::builder().status(500).body(full("down")).unwrap();
                }
                let body = d.lock().unwrap().clone();
                Response::builder()
                    .header("content-type", "application/json")
                    .header("cache-control", "public, max-age=3600")
                    .body(full(body))
                    .unwrap()
            }
        })
        .await;
        let s = JwksServer { up, doc, failing };
        s.publish(keys);
        s
    }

    fn publish(&self, keys: &[&Signer]) {
        let set = JwkSet {
            keys: keys.iter().map(|s| s.jwk.clone()).collect(),
        };
        *self.doc.lock().unwrap() = serde_json::to_string(&set).unwrap();
    }

    fn url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.up.url())
    }

    fn fetches(&self) -> usize {
        self.up.requests()
    }

    fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
}

/// A gateway with one route to an echo upstream, guarded by `jwt` with the IdP (JWKS at
/// `jwks_url`) and the internal HS256 issuer; `extra` adds `jwt` fields.
async fn jwt_gateway(jwks_url: &str, extra: &str) -> (TestGateway, Upstream) {
    let up = echo("api").await;
    let gw = gateway(&config(&format!(
        r#"
consumers:
  - {{ name: alice, groups: [partners, beta] }}
  - {{ name: guest }}
upstreams:
  api: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: api
    match: {{ paths: ["/"] }}
    upstream: api
    plugins:
      jwt:
        issuers:
          - issuer: "{IDP}"
            jwks_url: "{jwks_url}"
            audiences: [partners-api]
            algorithms: [RS256, ES256]
          - issuer: internal
            secret: "{SECRET}"
            algorithms: [HS256]
        forward_claims: {{ x-user-id: sub, x-tenant: tenant }}
{extra}
"#,
        up.url()
    )))
    .await;
    (gw, up)
}

async fn get(gw: &TestGateway, token: Option<&str>) -> reqwest::Response {
    let mut rb = client()
        .get(gw.url("/things"))
        .header("x-user-id", "spoofed")
        .header("x-consumer-name", "spoofed");
    if let Some(t) = token {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    rb.send().await.unwrap()
}

/// Asserts a refusal: status, `WWW-Authenticate`, and a problem body whose detail has `why` and
/// never the token.
async fn assert_refused(resp: reqwest::Response, status: u16, why: &str, token: &str) {
    assert_eq!(resp.status().as_u16(), status, "{why}");
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "{why}"
    );
    let body: Value = resp.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(why), "{why}: {body}");
    assert!(
        token.is_empty() || !body.to_string().contains(token),
        "{why}: token leaked"
    );
    if status == 401 {
        let challenge = challenge.expect("a challenge");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{why}: {challenge}"
        );
    }
}

#[tokio::test]
async fn verifies_rs256_es256_and_hs256_and_maps_consumers() {
    let rsa = Signer::new(Algorithm::RS256, "rsa-1");
    let ec = Signer::new(Algorithm::ES256, "ec-1");
    let jwks = JwksServer::start(&[&rsa, &ec]).await;
    let (gw, _up) = jwt_gateway(&jwks.url(), "").await;
    assert_eq!(
        jwks.fetches(),
        0,
        "keys are fetched on first use, not at build"
    );

    // RS256, subject names a consumer: that consumer goes upstream with its groups.
    let resp = get(&gw, Some(&rsa.sign(&idp_claims("alice")))).await;
    assert_eq!(resp.status(), 200);
    let v = echo_json(resp).await;
    let h = &v["headers"];
    assert_eq!(h["x-consumer-name"], "alice");
    assert_eq!(h["x-consumer-groups"], "partners,beta");
    assert_eq!(
        h["x-user-id"], "alice",
        "client's value replaced by the claim"
    );
    assert_eq!(h["x-tenant"], "acme");
    assert!(h.get("authorization").is_none(), "credential removed");
    assert!(h.get("x-anonymous-consumer").is_none());

    // ES256, subject names no consumer: an unnamed caller, claims still forwarded.
    let resp = get(&gw, Some(&ec.sign(&idp_claims("bob")))).await;
    assert_eq!(resp.status(), 200);
    let v = echo_json(resp).await;
    let h = &v["headers"];
    assert!(
        h.get("x-consumer-name").is_none(),
        "spoofed name removed: {h}"
    );
    assert!(h.get("x-consumer-groups").is_none());
    assert_eq!(h["x-user-id"], "bob");

    // HS256 from the internal issuer; `aud` is not checked there; a numeric claim is text.
    let token =
        hs256(&json!({ "iss": "internal", "sub": "alice", "tenant": 42, "exp": now() + 60 }));
    let v = echo_json(get(&gw, Some(&token)).await).await;
    assert_eq!(v["headers"]["x-consumer-name"], "alice");
    assert_eq!(v["headers"]["x-tenant"], "42");

    assert_eq!(jwks.fetches(), 1, "one fetch served every request");
}

#[tokio::test]
async fn refuses_each_bad_token_with_its_reason() {
    let rsa = Signer::new(Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(&[&rsa]).await;
    let (gw, up) = jwt_gateway(&jwks.url(), "").await;
    let t = now();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    // Missing: the plugin steps aside and the chain refuses with the challenge.
    let resp = get(&gw, None).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"frontdesk\""
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 401);

    let impostor = Signer::new(Algorithm::RS256, "rsa-1");
    let alg_none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(idp_claims("alice").to_string())
    );
    // HS/RS confusion: HS256 keyed with the issuer's public key, which anyone can download.
    let confused = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        encode(
            &h,
            &idp_claims("alice"),
            &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
        )
        .unwrap()
    };
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = idp_claims("alice");
        f(&mut c);
        rsa.sign(&c)
    };
    let cases: Vec<(String, &str)> = vec![
        (impostor.sign(&idp_claims("alice")), "bad signature"),
        (claims(&|c| c["exp"] = json!(t - 120)), "expired"),
        (claims(&|c| c["nbf"] = json!(t + 120)), "not yet valid"),
        (claims(&|c| c["aud"] = json!("other-api")), "wrong audience"),
        (
            claims(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "missing aud claim",
        ),
        (
            claims(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "missing exp claim",
        ),
        (
            claims(&|c| c["iss"] = json!("https://evil.example/")),
            "unknown issuer",
        ),
        (alg_none, "algorithm not allowed"),
        (confused, "algorithm not allowed"),
        (rsa.sign_as("rsa-9", &idp_claims("alice")), "unknown key"),
        ("a.b".into(), "malformed"),
    ];
    for (token, why) in &cases {
        assert_refused(get(&gw, Some(token)).await, 401, why, token).await;
    }
    // Leeway (30 s by default) forgives a little skew.
    let ok = claims(&|c| c["exp"] = json!(t - 10));
    assert_eq!(get(&gw, Some(&ok)).await.status(), 200);
    assert_eq!(up.requests(), 1, "no refused request reached the upstream");
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_under_concurrency_and_not_again_within_30s() {
    let rsa = Signer::new(Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(&[&rsa]).await;
    let (gw, _up) = jwt_gateway(&jwks.url(), "").await;
    assert_eq!(
        get(&gw, Some(&rsa.sign(&idp_claims("alice"))))
            .await
            .status(),
        200
    );
    assert_eq!(jwks.fetches(), 1);

    let token = rsa.sign_as("rsa-unknown", &idp_claims("alice"));
    let gw = Arc::new(gw);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (gw, token) = (gw.clone(), token.clone());
            tokio::spawn(async move { get(&gw, Some(&token)).await })
        })
        .collect();
    for t in tasks {
        assert_refused(t.await.unwrap(), 401, "unknown key", &token).await;
    }
    assert_eq!(jwks.fetches(), 2, "20 concurrent misses, one refetch");

    let other = rsa.sign_as("rsa-other", &idp_claims("alice"));
    assert_refused(get(&gw, Some(&other)).await, 401, "unknown key", &other).await;
    assert_eq!(jwks.fetches(), 2, "no second refetch within 30 s");
    assert_eq!(
        get(&gw, Some(&rsa.sign(&idp_claims("alice"))))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_the_refetch() {
    let old = Signer::new(Algorithm::RS256, "2024");
    let new = Signer::new(Algorithm::ES256, "2025");
    let jwks = JwksServer::start(&[&old]).await;
    let (gw, _up) = jwt_gateway(&jwks.url(), "").await;
    assert_eq!(
        get(&gw, Some(&old.sign(&idp_claims("alice"))))
            .await
            .status(),
        200
    );

    jwks.publish(&[&old, &new]);
    let resp = get(&gw, Some(&new.sign(&idp_claims("alice")))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(echo_json(resp).await["headers"]["x-consumer-name"], "alice");
    assert_eq!(jwks.fetches(), 2);
    assert_eq!(
        get(&gw, Some(&old.sign(&idp_claims("alice"))))
            .await
            .status(),
        200
    );
    assert_eq!(jwks.fetches(), 2, "both keys now cached");
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_jwks_endpoint_is_down() {
    let rsa = Signer::new(Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(&[&rsa]).await;
    let (gw, _up) = jwt_gateway(&jwks.url(), "").await;
    assert_eq!(
        get(&gw, Some(&rsa.sign(&idp_claims("alice"))))
            .await
            .status(),
        200
    );

    jwks.fail(true);
    // A miss tries the endpoint (which fails) and must not lose the good keys.
    let unknown = rsa.sign_as("rsa-2", &idp_claims("alice"));
    assert_refused(get(&gw, Some(&unknown)).await, 401, "unknown key", &unknown).await;
    assert_eq!(jwks.fetches(), 2);
    for _ in 0..3 {
        assert_eq!(
            get(&gw, Some(&rsa.sign(&idp_claims("alice"))))
                .await
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn no_keys_and_the_endpoint_down_is_503_and_fails_fast() {
    let rsa = Signer::new(Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(&[&rsa]).await;
    jwks.fail(true);
    let (gw, _up) = jwt_gateway(&jwks.url(), "").await;
    let token = rsa.sign(&idp_claims("alice"));
    let resp = get(&gw, Some(&token)).await;
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_refused(resp, 503, "keys are unavailable", &token).await;
    assert_eq!(jwks.fetches(), 1);
    // Within the back-off no request waits for the endpoint again.
    for _ in 0..5 {
        assert_eq!(get(&gw, Some(&token)).await.status(), 503);
    }
    assert_eq!(jwks.fetches(), 1);
    // The secret issuer does not depend on the endpoint.
    let hs = hs256(&json!({ "iss": "internal", "sub": "alice", "exp": now() + 60 }));
    assert_eq!(get(&gw, Some(&hs)).await.status(), 200);

    // Once the endpoint is back (and the back-off has passed), keys arrive.
    jwks.fail(false);
    tokio::time::sleep(Duration::from_millis(5100)).await;
    assert_eq!(get(&gw, Some(&token)).await.status(), 200);
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test]
async fn require_consumer_refuses_tokens_naming_nobody() {
    let rsa = Signer::new(Algorithm::RS256, "rsa-1");
    let jwks = JwksServer::start(&[&rsa]).await;
    let (gw, _up) = jwt_gateway(&jwks.url(), "        require_consumer: true").await;
    assert_eq!(
        get(&gw, Some(&rsa.sign(&idp_claims("alice"))))
            .await
            .status(),
        200
    );
    let nobody = rsa.sign(&idp_claims("mallory"));
    assert_refused(
        get(&gw, Some(&nobody)).await,
        401,
        "no known consumer",
        &nobody,
    )
    .await;
}

#[tokio::test]
async fn forward_credentials_keeps_the_authorization_header() {
    let hs = hs256(&json!({ "iss": "internal", "sub": "alice", "exp": now() + 60 }));
    let (gw, _up) = jwt_gateway(
        "http://127.0.0.1:9/jwks",
        "        forward_credentials: true",
    )
    .await;
    let v = echo_json(get(&gw, Some(&hs)).await).await;
    assert_eq!(v["headers"]["authorization"], format!("Bearer {hs}"));
}

#[tokio::test]
async fn anonymous_covers_a_missing_token_but_not_a_bad_one() {
    let (gw, _up) = jwt_gateway("http://127.0.0.1:9/jwks", "        anonymous: guest").await;
    let resp = get(&gw, None).await;
    assert_eq!(resp.status(), 200);
    let v = echo_json(resp).await;
    let h = &v["headers"];
    assert_eq!(h["x-consumer-name"], "guest");
    assert_eq!(h["x-anonymous-consumer"], "true");
    assert!(
        h.get("x-user-id").is_none(),
        "client's claim header removed: {h}"
    );

    let bad = hs256(&json!({ "iss": "internal", "sub": "alice", "exp": now() - 600 }));
    assert_refused(get(&gw, Some(&bad)).await, 401, "expired", &bad).await;
}

#[tokio::test]
async fn build_errors_refuse_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(
        &path,
        config(
            r#"
consumers: [{ name: alice }]
upstreams: { api: { targets: [{ url: "http://127.0.0.1:9" }] } }
routes:
  - name: api
    match: { paths: ["/"] }
    upstream: api
    plugins:
      jwt:
        issuers: [{ issuer: internal, secret: s3cret, algorithms: [HS256] }]
        anonymous: nobody
"#,
        ),
    )
    .unwrap();
    let Err(err) = frontdesk::Gateway::start(&path).await else {
        panic!("a jwt build error must refuse the config");
    };
    let text = format!("{err:#}");
    assert!(text.contains("routes[0].plugins.jwt"), "{text}");
    assert!(text.contains("no consumer is named \"nobody\""), "{text}");
}
