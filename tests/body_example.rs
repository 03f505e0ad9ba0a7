//! The documented example plugin (examples/envelope_plugin.rs, shown whole in docs/plugins.md)
//! through the real server stack: its buffered phase wraps JSON with the right `Content-Length`
//! over HTTP/1.1 and HTTP/2, its streaming filter adds a trailer, and an answer over its cap
//! passes untouched.
#![allow(clippy::unwrap_used)]

mod common;

// Its `main` is not used here.
#[allow(dead_code)]
#[path = "../examples/envelope_plugin.rs"]
mod envelope;

use bytes::Bytes;
use common::{client, config, full, gateway, upstream};
use http_body_util::BodyExt as _;
use hyper::{Request, Response};

/// JSON at `/json`, 100 KB of JSON at `/big`, plain text elsewhere.
async fn origin() -> common::Upstream {
    upstream(|req: Request<hyper::body::Incoming>| async move {
        let (ct, body) = match req.uri().path() {
            "/json" => ("application/json", r#"{"user":"ada","id":7}"#.to_string()),
            "/big" => ("application/json", format!("[{}0]", "1,".repeat(50_000))),
            _ => ("text/plain", "plain text, streamed".to_string()),
        };
        Response::builder()
            .header("content-type", ct)
            .body(full(body))
            .unwrap()
    })
    .await
}

async fn envelope_gateway(up: &common::Upstream) -> common::TestGateway {
    envelope::register();
    gateway(&config(&format!(
        r#"
upstreams:
  origin: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: api
    match: {{ paths: ["/"] }}
    upstream: origin
    plugins: {{ custom: {{ envelope: {{ max_body: 65536 }} }} }}
"#,
        up.url()
    )))
    .await
}

#[tokio::test]
async fn json_is_wrapped_with_its_new_length_over_http1_and_http2() {
    let up = origin().await;
    let gw = envelope_gateway(&up).await;
    for h2 in [false, true] {
        let c = if h2 {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        } else {
            client()
        };
        let resp = c
            .get(gw.url("/json"))
            .header("x-request-id", "req-42")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let declared: usize = resp.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = resp.bytes().await.unwrap();
        assert_eq!(declared, body.len(), "h2: {h2}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"]["user"], "ada");
        assert_eq!(v["request_id"], "req-42");
    }
}

#[tokio::test]
async fn json_over_the_cap_passes_untouched() {
    let up = origin().await;
    let gw = envelope_gateway(&up).await;
    let resp = client().get(gw.url("/big")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 100_003);
    assert!(body.starts_with(b"[1,1,"), "not wrapped");
}

#[tokio::test]
async fn a_streamed_answer_gets_its_byte_count_as_a_trailer_over_http2() {
    let up = origin().await;
    let gw = envelope_gateway(&up).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/text", gw.addr))
        .header("te", "trailers")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("content-length").is_none(),
        "a filtered body has no length"
    );
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-body-bytes"], "20");
    assert_eq!(collected.to_bytes(), "plain text, streamed");
}

#[tokio::test]
async fn the_trailer_reaches_an_http1_client_that_accepts_trailers() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = origin().await;
    let gw = envelope_gateway(&up).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /text HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let lower = raw.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{raw}");
    assert!(lower.contains("trailer: x-body-bytes"), "{raw}");
    assert!(lower.ends_with("0\r\nx-body-bytes: 20\r\n\r\n"), "{raw}");
}
