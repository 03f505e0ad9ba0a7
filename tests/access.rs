//! The access plugins through the real server: `ip_filter` (direct peers, trusted proxies,
//! IPv4-mapped addresses), `cors` (preflights answered here, headers on actual responses) and
//! `request_size` (declared and streamed bodies).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    client, config, echo, echo_json, gateway, h2c_client, raw, read_response, read_until_close,
    Upstream,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// `config()` with `listener` (YAML lines, indented 4) added to the `public` listener.
fn config_with_listener(listener: &str, body: &str) -> String {
    config(body).replacen(
        "    address: 127.0.0.1:0\n",
        &format!("    address: 127.0.0.1:0\n{listener}"),
        1,
    )
}

fn status_of(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

/// The problem document of a refusal.
async fn problem(resp: reqwest::Response) -> serde_json::Value {
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "{resp:?}"
    );
    resp.json().await.unwrap()
}

// === ip_filter ===

/// The issue's rules on one route; a second route with no filter.
fn ip_routes(up: &Upstream) -> String {
    format!(
        r#"
upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: partners
    match: {{ paths: ["/partners"] }}
    upstream: u
    plugins:
      ip_filter: {{ allow: ["127.0.0.0/8", "10.0.0.0/8"], deny: ["10.6.6.0/24"] }}
  - name: open
    match: {{ paths: ["/open"] }}
    upstream: u
"#,
        up.url()
    )
}

#[tokio::test]
async fn ip_filter_allows_and_denies_the_peer_address() {
    let up = echo("u").await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: allowed
    match: {{ paths: ["/allowed"] }}
    upstream: u
    plugins: {{ ip_filter: {{ allow: ["127.0.0.0/8"] }} }}
  - name: outside-allow
    match: {{ paths: ["/outside"] }}
    upstream: u
    plugins: {{ ip_filter: {{ allow: ["10.0.0.0/8", "::1"] }} }}
  - name: deny-wins
    match: {{ paths: ["/denied"] }}
    upstream: u
    plugins: {{ ip_filter: {{ allow: ["127.0.0.0/8"], deny: ["127.0.0.1"] }} }}
"#,
        up.url()
    )))
    .await;
    let c = client();
    let r = c.get(gw.url("/allowed")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests(), 1);
    for path in ["/outside", "/denied"] {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert!(r.headers().contains_key("x-request-id"), "{path}");
        let p = problem(r).await;
        assert_eq!(p["status"], 403, "{path}");
        assert_eq!(p["title"], "Forbidden", "{path}");
        assert_eq!(
            p["detail"], "the client address is not allowed on this route",
            "{path}"
        );
    }
    assert_eq!(
        up.requests(),
        1,
        "refused requests never reach the upstream"
    );
}

#[tokio::test]
async fn ip_filter_uses_the_right_most_untrusted_forwarded_address_behind_a_trusted_proxy() {
    let up = echo("u").await;
    // The peer (127.0.0.1) and 192.168.0.0/16 are proxies; 10.x clients are not.
    let gw = gateway(&config_with_listener(
        "    trusted_proxies: [\"127.0.0.1\", \"192.168.0.0/16\"]\n",
        &ip_routes(&up),
    ))
    .await;
    let c = client();
    let get = |xff: Option<&'static str>| {
        let mut rb = c.get(gw.url("/partners"));
        if let Some(v) = xff {
            rb = rb.header("x-forwarded-for", v);
        }
        rb.send()
    };
    let cases: [(Option<&str>, u16); 9] = [
        // No header: the peer itself.
        (None, 200),
        (Some("10.1.2.3"), 200),
        (Some("10.6.6.7"), 403),
        // Outside the allow list.
        (Some("203.0.113.9"), 403),
        // A forged left-most entry does not help; the right-most untrusted one decides.
        (Some("10.1.2.3, 10.6.6.7"), 403),
        (Some("10.6.6.7, 10.1.2.3"), 200),
        // Trusted hops on the right are skipped.
        (Some("10.6.6.7, 192.168.1.1, 192.168.7.7"), 403),
        // IPv4-mapped IPv6 matches the IPv4 deny rule.
        (Some("::ffff:10.6.6.7"), 403),
        (Some("[::ffff:10.1.2.3]:4711"), 200),
    ];
    for (xff, want) in cases {
        let r = get(xff).await.unwrap();
        assert_eq!(r.status(), want, "{xff:?}");
    }
    assert_eq!(up.requests(), 4, "only the allowed requests were forwarded");

    // Several header lines are one list, in order: the last line's entry is the right-most.
    let r = c
        .get(gw.url("/partners"))
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-for", "10.6.6.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The upstream still gets the whole chain, with the peer appended.
    let v = echo_json(get(Some("10.1.2.3")).await.unwrap()).await;
    assert_eq!(v["headers"]["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
}

#[tokio::test]
async fn ip_filter_ignores_forwarded_addresses_from_an_untrusted_peer() {
    let up = echo("u").await;
    // 127.0.0.1 is not in the list, so its `X-Forwarded-For` is the client's word and ignored.
    let gw = gateway(&config_with_listener(
        "    trusted_proxies: [\"192.168.0.0/16\"]\n",
        &ip_routes(&up),
    ))
    .await;
    let c = client();
    for xff in ["10.6.6.7", "203.0.113.9", "::ffff:10.6.6.7"] {
        let r = c
            .get(gw.url("/partners"))
            .header("x-forwarded-for", xff)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{xff}: the peer 127.0.0.1 decides");
    }
    // The same with no trusted proxies at all.
    let gw = gateway(&config(&ip_routes(&up))).await;
    let r = c
        .get(gw.url("/partners"))
        .header("x-forwarded-for", "10.6.6.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn ip_filter_rule_errors_are_config_errors_at_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(
        &path,
        config(
            "routes:\n  - name: r\n    match: { paths: [\"/\"] }\n    plugins:\n      ip_filter: { deny: [\"10.0.0.0/8\", \"bogus\"] }\n      respond: { body: hi }\n",
        ),
    )
    .unwrap();
    let Err(err) = frontdesk::Gateway::start(&path).await else {
        panic!("a bad ip_filter entry must refuse the config");
    };
    let err = err.to_string();
    assert!(
        err.contains("routes[0].plugins.ip_filter") && err.contains("deny[1]"),
        "{err}"
    );
}

// === cors ===

async fn cors_gateway(up: &Upstream) -> common::TestGateway {
    gateway(&config(&format!(
        r#"
upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: api
    match: {{ paths: ["/api"] }}
    upstream: u
    plugins:
      cors:
        allow_origins: ["https://app.example.com"]
        allow_methods: [GET, POST]
        allow_headers: [authorization, content-type, x-api-key]
        expose_headers: [x-total-count]
        allow_credentials: true
        max_age: 600s
      request_size: {{ max_body: 1KiB }}
"#,
        up.url()
    )))
    .await
}

fn cors_headers(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn cors_preflight_from_an_allowed_origin_is_answered_by_the_gateway() {
    let up = echo("u").await;
    let gw = cors_gateway(&up).await;
    let r = client()
        .request(reqwest::Method::OPTIONS, gw.url("/api/orders"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type, x-api-key"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(
        h["vary"],
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    );
    assert!(h.contains_key("x-request-id"));
    assert_eq!(up.requests(), 0, "a preflight is never forwarded");
}

#[tokio::test]
async fn cors_preflight_from_a_refused_origin_or_for_a_refused_header_has_no_cors_headers() {
    let up = echo("u").await;
    let gw = cors_gateway(&up).await;
    let c = client();
    for (origin, method, headers) in [
        ("https://evil.example", "GET", None),
        ("https://app.example.com", "DELETE", None),
        (
            "https://app.example.com",
            "POST",
            Some("x-api-key, x-secret"),
        ),
    ] {
        let mut rb = c
            .request(reqwest::Method::OPTIONS, gw.url("/api"))
            .header("origin", origin)
            .header("access-control-request-method", method);
        if let Some(v) = headers {
            rb = rb.header("access-control-request-headers", v);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 204, "{origin} {method}");
        assert!(cors_headers(&r).is_empty(), "{origin} {method}: {r:?}");
    }
    assert_eq!(
        up.requests(),
        0,
        "refused preflights are not forwarded either"
    );
}

#[tokio::test]
async fn cors_actual_requests_get_headers_only_from_an_allowed_origin() {
    let up = echo("u").await;
    let gw = cors_gateway(&up).await;
    let c = client();
    let r = c
        .get(gw.url("/api/x"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-total-count");
    assert_eq!(h["vary"], "Origin");
    // The request went upstream with its `Origin`.
    let v = echo_json(r).await;
    assert_eq!(v["headers"]["origin"], "https://app.example.com");

    let r = c
        .get(gw.url("/api/x"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "CORS is the browser's to enforce");
    assert!(cors_headers(&r).is_empty(), "{r:?}");
    assert_eq!(r.headers()["vary"], "Origin");
    // A non-preflight OPTIONS is forwarded like any request.
    let r = c
        .request(reqwest::Method::OPTIONS, gw.url("/api/x"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(echo_json(r).await["method"], "OPTIONS");
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn cors_headers_are_on_refusals_of_later_plugins() {
    let up = echo("u").await;
    let gw = cors_gateway(&up).await;
    // `request_size` (order 300) refuses after `cors` (110) saw the origin: the browser can
    // read the 413.
    let r = client()
        .post(gw.url("/api"))
        .header("origin", "https://app.example.com")
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(up.requests(), 0);
}

// === request_size ===

async fn size_gateway(up: &Upstream, listener: &str) -> common::TestGateway {
    gateway(&config_with_listener(
        listener,
        &format!(
            r#"
upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: small
    match: {{ paths: ["/small"] }}
    upstream: u
    plugins: {{ request_size: {{ max_body: 1KiB }} }}
  - name: big
    match: {{ paths: ["/big"] }}
    upstream: u
"#,
            up.url()
        ),
    ))
    .await
}

#[tokio::test]
async fn request_size_refuses_a_declared_length_before_the_upstream() {
    let up = common::counting().await;
    let gw = size_gateway(&up, "").await;
    // The whole body sent along: 413, and the body is skipped, never read as a next request.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let over = format!(
        "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n{}",
        "z".repeat(1025)
    );
    s.write_all(over.as_bytes()).await.unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(status_of(&resp), "413", "{resp}");
    assert!(resp.contains("application/problem+json"), "{resp}");
    assert!(
        resp.contains("the request body is larger than 1024 bytes"),
        "{resp}"
    );
    s.write_all(
        b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab",
    )
    .await
    .unwrap();
    let next = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_of(&next), "200", "{next}");
    assert_eq!(next.matches("HTTP/1.1 ").count(), 1, "{next}");
    assert!(next.ends_with("\r\n\r\n2"), "{next}");
    assert_eq!(up.requests(), 1, "only the second request went upstream");

    // `Expect: 100-continue`: refused on the head alone, the client is never asked for the body.
    let resp = raw(
        gw.addr,
        b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413 "), "{resp}");
    assert!(!resp.contains("100 Continue"), "{resp}");
    assert_eq!(up.requests(), 1);

    // At the limit it passes; other routes are not capped.
    let c = client();
    let r = c
        .post(gw.url("/small"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "1024");
    let r = c
        .post(gw.url("/big"))
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "5000");
}

#[tokio::test]
async fn request_size_cuts_a_chunked_body_at_the_limit() {
    let up = common::counting().await;
    let gw = size_gateway(&up, "").await;
    let chunk = format!("{:x}\r\n{}\r\n", 700, "c".repeat(700));
    let chunked = |n: usize, close: &str| {
        format!(
            "POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{close}\r\n{}0\r\n\r\n",
            chunk.repeat(n)
        )
    };
    // 1400 bytes, the whole request already sent: the body fails at the 1 KiB cap and the client
    // gets 413. The upstream may have seen the head and the first chunk start; it never gets a
    // complete request.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(chunked(2, "").as_bytes()).await.unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(status_of(&resp), "413", "{resp}");
    assert!(resp.contains("application/problem+json"), "{resp}");
    assert!(resp.contains("the request body is too large"), "{resp}");
    assert!(up.requests() <= 1);
    // The few bytes left of that body were drained, so the connection goes on.
    s.write_all(chunked(1, "").as_bytes()).await.unwrap();
    let ok = read_response(&mut s).await;
    assert_eq!(status_of(&ok), "200", "{ok}");
    assert!(ok.ends_with("700"), "{ok}");

    // 70 KB: the client still gets its 413, then the connection is closed, since the rest of the
    // body was never read.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(chunked(100, "").as_bytes()).await.unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(status_of(&resp), "413", "{resp}");
    let rest = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(rest, "", "closed, nothing after the 413");
    let _ = s.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_until_close(&mut s, Duration::from_secs(2)).await, "");
}

#[tokio::test]
async fn request_size_cuts_a_streamed_http2_body_and_the_listener_limit_still_applies() {
    let up = common::counting().await;
    // The listener's 600 bytes are below the plugin's 1 KiB: the smaller wins.
    let gw = size_gateway(&up, "    limits: { max_request_body: 600B }\n").await;
    let h2 = h2c_client();
    let stream = |n: usize| {
        let chunks = (0..n).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 300])));
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };
    let r = h2
        .post(gw.url("/small"))
        .body(stream(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "600");
    let r = h2
        .post(gw.url("/small"))
        .body(stream(3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}
