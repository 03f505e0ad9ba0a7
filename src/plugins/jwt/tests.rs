//! Unit tests of the `jwt` plugin: build errors, and the request phase with HS256 tokens (JWKS
//! issuers are covered end to end in tests/jwt.rs).

use std::time::{SystemTime, UNIX_EPOCH};

use frontdesk_config::ConsumerConfig;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &str = "unit-test-secret-of-32-bytes-len";

fn cfg(v: Value) -> JwtConfig {
    serde_json::from_value(v).expect("jwt config parses")
}

fn hs_cfg(extra: Value) -> JwtConfig {
    let mut v = json!({
        "issuers": [{ "issuer": "internal", "secret": SECRET, "algorithms": ["HS256"] }],
        "forward_claims": { "x-user-id": "sub", "x-tenant": "tenant" },
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut v, extra) {
        base.extend(extra);
    }
    cfg(v)
}

fn env() -> BuildEnv {
    let consumers = Consumers::build(&[ConsumerConfig {
        name: "alice".into(),
        groups: vec!["partners".into()],
        api_keys: vec![],
        basic_auth: None,
        client_cert: None,
    }])
    .expect("consumers");
    BuildEnv {
        consumers: Arc::new(consumers),
        ..BuildEnv::default()
    }
}

fn build_err(v: Value) -> String {
    match Jwt::build(&cfg(v), &env()) {
        Ok(_) => panic!("expected a build error"),
        Err(e) => e,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn hs_token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn request(auth: Option<&str>) -> RequestHead {
    let mut b = http::Request::builder()
        .header("x-user-id", "spoofed")
        .header("x-tenant", "spoofed");
    if let Some(a) = auth {
        b = b.header(AUTHORIZATION, a);
    }
    b.body(()).expect("request").into_parts().0
}

async fn run(
    plugin: &Arc<dyn Plugin>,
    auth: Option<&str>,
) -> (RequestHead, Ctx, Result<(), PluginError>) {
    let mut req = request(auth);
    let mut cx = Ctx::for_test();
    let r = plugin.request_filter(&mut req, &mut cx).await.map(|_| ());
    (req, cx, r)
}

#[test]
fn refuses_bad_configs_at_build() {
    let cases = [
        (json!({ "issuers": [] }), "list at least one issuer"),
        (
            json!({ "issuers": [{ "issuer": "a", "secret": "s", "algorithms": ["HS999"] }] }),
            "unknown algorithm \"HS999\"",
        ),
        (
            json!({ "issuers": [{ "issuer": "a", "algorithms": ["HS256"] }] }),
            "give the issuer's keys",
        ),
        (
            json!({ "issuers": [{ "issuer": "a", "secret": "s", "jwks_url": "http://127.0.0.1:1/", "algorithms": ["RS256"] }] }),
            "not both",
        ),
        (
            json!({ "issuers": [{ "issuer": "a", "jwks_url": "http://127.0.0.1:1/", "algorithms": ["RS256", "HS256"] }] }),
            "HS256 needs the issuer's `secret`",
        ),
        (
            json!({ "issuers": [{ "issuer": "a", "secret": "s", "algorithms": ["RS256"] }] }),
            "RS256 needs the issuer's `jwks_url`",
        ),
        (
            json!({ "issuers": [{ "issuer": "a", "jwks_url": "ftp://x/", "algorithms": ["ES256"] }] }),
            "not an http(s) URL",
        ),
        (
            json!({ "issuers": [{ "issuer": "a", "secret": "s", "algorithms": ["HS256"] }], "anonymous": "nobody" }),
            "anonymous: no consumer is named \"nobody\"",
        ),
        (
            json!({ "issuers": [{ "issuer": "a", "secret": "s", "algorithms": ["HS256"] }], "forward_claims": { "bad name": "sub" } }),
            "invalid header name \"bad name\"",
        ),
        (
            json!({ "issuers": [{ "issuer": "a", "secret": "s", "algorithms": ["HS256"] }], "forward_claims": { "x-consumer-name": "sub" } }),
            "set by the gateway",
        ),
        (
            json!({ "issuers": [
                { "issuer": "a", "secret": "s", "algorithms": ["HS256"] },
                { "issuer": "a", "secret": "t", "algorithms": ["HS384"] }] }),
            "issuers[1]: duplicate issuer",
        ),
    ];
    for (v, needle) in cases {
        let err = build_err(v.clone());
        assert!(err.contains(needle), "{v}: {err:?} lacks {needle:?}");
    }
    assert!(Jwt::build(&hs_cfg(json!({ "anonymous": "alice" })), &env()).is_ok());
}

#[tokio::test]
async fn a_valid_token_identifies_and_forwards_claims_without_the_credential() {
    let plugin = Jwt::build(&hs_cfg(json!({})), &env()).expect("builds");
    let token =
        hs_token(json!({ "iss": "internal", "sub": "alice", "tenant": 7, "exp": now() + 60 }));
    let (req, cx, r) = run(&plugin, Some(&format!("Bearer {token}"))).await;
    r.expect("accepted");
    assert!(crate::plugins::auth::identified(&cx));
    assert_eq!(cx.consumer.as_ref().map(|c| &*c.name), Some("alice"));
    assert_eq!(req.headers["x-user-id"], "alice");
    assert_eq!(req.headers["x-tenant"], "7", "numbers go as their text");
    assert!(req.headers.get(AUTHORIZATION).is_none());

    // Unknown subject: an unnamed caller; a claim that is absent gives no header.
    let token = hs_token(json!({ "iss": "internal", "sub": "zed", "exp": now() + 60 }));
    let (req, cx, r) = run(&plugin, Some(&format!("bearer  {token}"))).await;
    r.expect("accepted");
    assert!(crate::plugins::auth::identified(&cx) && cx.consumer.is_none());
    assert_eq!(req.headers["x-user-id"], "zed");
    assert!(
        req.headers.get("x-tenant").is_none(),
        "spoofed value removed"
    );
}

#[tokio::test]
async fn no_bearer_token_offers_the_challenge_and_strips_claim_headers() {
    let plugin = Jwt::build(&hs_cfg(json!({ "anonymous": "alice" })), &env()).expect("builds");
    for auth in [None, Some("Basic YTpi"), Some("Bearerish x")] {
        let (req, mut cx, r) = run(&plugin, auth).await;
        r.expect("steps aside");
        assert!(!crate::plugins::auth::identified(&cx));
        assert_eq!(crate::plugins::auth::state(&mut cx).challenges, [CHALLENGE]);
        assert_eq!(
            crate::plugins::auth::state(&mut cx)
                .anonymous
                .as_ref()
                .map(|c| &*c.name),
            Some("alice")
        );
        assert!(req.headers.get("x-user-id").is_none() && req.headers.get("x-tenant").is_none());
        assert_eq!(req.headers.get(AUTHORIZATION).is_some(), auth.is_some());
    }
}

#[tokio::test]
async fn refuses_bad_tokens_with_the_reason() {
    let plugin = Jwt::build(&hs_cfg(json!({ "leeway": "10s" })), &env()).expect("builds");
    let t = now();
    let none_token = {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(json!({ "iss": "internal", "exp": t + 60 }).to_string())
        )
    };
    let other_secret = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "iss": "internal", "exp": t + 60 }),
        &EncodingKey::from_secret(b"another-secret"),
    )
    .expect("sign");
    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &json!({ "iss": "internal", "exp": t + 60 }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let cases = [
        (
            hs_token(json!({ "iss": "internal", "exp": t - 20 })),
            "expired",
        ),
        (
            hs_token(json!({ "iss": "internal", "exp": t + 60, "nbf": t + 20 })),
            "not yet valid",
        ),
        (hs_token(json!({ "iss": "internal" })), "missing exp claim"),
        (hs_token(json!({ "exp": t + 60 })), "missing iss claim"),
        (
            hs_token(json!({ "iss": "elsewhere", "exp": t + 60 })),
            "unknown issuer",
        ),
        (none_token, "algorithm not allowed"),
        (hs512, "algorithm not allowed"),
        (other_secret, "bad signature"),
        ("not.a-jwt".into(), "malformed"),
        (String::new(), "malformed"),
    ];
    for (token, why) in cases {
        let (_, mut cx, r) = run(&plugin, Some(&format!("Bearer {token}"))).await;
        let err = r.expect_err(why);
        assert_eq!(err.status, StatusCode::UNAUTHORIZED, "{why}");
        assert!(
            err.message.starts_with("invalid token: "),
            "{}",
            err.message
        );
        assert!(err.message.contains(why), "{why}: {}", err.message);
        assert!(!err.message.contains(&token) || token.is_empty());
        assert_eq!(
            err.headers,
            [(WWW_AUTHENTICATE, HeaderValue::from_static(INVALID_TOKEN))]
        );
        assert!(
            !crate::plugins::auth::identified(&cx)
                && crate::plugins::auth::state(&mut cx).challenges.is_empty(),
            "not a missing credential"
        );
    }
    // Within the leeway, exp and nbf still pass.
    let token = hs_token(json!({ "iss": "internal", "exp": t - 5, "nbf": t + 5 }));
    run(&plugin, Some(&format!("Bearer {token}")))
        .await
        .2
        .expect("within leeway");
}

#[tokio::test]
async fn require_consumer_refuses_unnamed_callers() {
    let plugin = Jwt::build(&hs_cfg(json!({ "require_consumer": true })), &env()).expect("builds");
    let token = hs_token(json!({ "iss": "internal", "sub": "zed", "exp": now() + 60 }));
    let err = run(&plugin, Some(&format!("Bearer {token}")))
        .await
        .2
        .expect_err("refused");
    assert_eq!(err.status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("no known consumer"), "{}", err.message);
}

#[tokio::test]
async fn steps_aside_when_another_plugin_identified_the_caller() {
    let plugin = Jwt::build(&hs_cfg(json!({})), &env()).expect("builds");
    let mut req = request(Some("Bearer garbage"));
    let mut cx = Ctx::for_test();
    crate::plugins::auth::identify(&mut cx, None);
    plugin
        .request_filter(&mut req, &mut cx)
        .await
        .expect("skipped");
    assert!(
        req.headers.get("x-user-id").is_none(),
        "claim headers still stripped"
    );
    assert!(
        req.headers.get(AUTHORIZATION).is_some(),
        "not ours to remove"
    );
}

#[test]
fn claims_become_header_text() {
    assert_eq!(claim_text(Some(&json!("a b"))).as_deref(), Some("a b"));
    assert_eq!(claim_text(Some(&json!(1.5))).as_deref(), Some("1.5"));
    assert_eq!(claim_text(Some(&json!(true))).as_deref(), Some("true"));
    assert_eq!(claim_text(Some(&json!(["x"]))), None);
    assert_eq!(claim_text(Some(&Value::Null)), None);
    assert_eq!(claim_text(None), None);
}

#[tokio::test]
async fn a_remembered_token_is_still_refused_once_it_expires() {
    let plugin = Jwt::build(&hs_cfg(json!({ "leeway": "0s" })), &env()).expect("builds");
    let exp = now() + 1;
    let token = hs_token(json!({ "iss": "internal", "sub": "alice", "exp": exp }));
    let bearer = format!("Bearer {token}");
    // Verified once, then served from the verified-token cache.
    for _ in 0..3 {
        let (_, cx, r) = run(&plugin, Some(&bearer)).await;
        assert!(r.is_ok(), "{r:?}");
        assert!(crate::plugins::auth::identified(&cx));
    }
    while now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, _, r) = run(&plugin, Some(&bearer)).await;
    let err = r.expect_err("expired, even though it was remembered");
    assert_eq!(err.status, StatusCode::UNAUTHORIZED);
    assert!(err.message.contains("expired"), "{}", err.message);
}
