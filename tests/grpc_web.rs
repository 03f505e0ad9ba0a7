//! gRPC-Web through the `grpc_web` plugin: real gRPC-Web clients (tonic-web's client layer over
//! HTTP/1.1, and the official `grpc-web` npm client run by Node in text mode) in front of the
//! gateway, a real tonic health service behind it over h2c; CORS with the `cors` plugin; text
//! bodies split anywhere, invalid base64, other requests untouched, an upstream that is down.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::{config, gateway};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The route of the docs' CORS recipe: `grpc_web` and `cors` in front of an h2c upstream.
fn grpc_config(upstream: SocketAddr) -> String {
    config(&format!(
        r#"
upstreams:
  grpc:
    targets: [{{ url: "http://{upstream}" }}]
    protocol: h2c
routes:
  - name: grpc
    match: {{ paths: ["/grpc.health.v1.Health", "/echo"] }}
    upstream: grpc
    plugins:
      grpc_web: {{}}
      cors:
        allow_origins: ["http://app.example"]
        allow_methods: [POST]
        allow_headers: [content-type, x-grpc-web, x-user-agent, grpc-timeout]
"#
    ))
}

type WebClient = HealthClient<
    tonic_web::GrpcWebClientService<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            tonic_web::GrpcWebCall<tonic::body::Body>,
        >,
    >,
>;

/// tonic's gRPC-Web client: its layer over hyper-util's HTTP/1.1 client.
fn web_client(gw: SocketAddr) -> WebClient {
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    // What `GrpcWebClientLayer::new().layer(http)` makes, without a tower import.
    let svc = tonic_web::GrpcWebClientService::new(http);
    HealthClient::with_origin(svc, format!("http://{gw}").parse().unwrap())
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn tonic_web_client_unary_and_streaming_over_http1_and_grpc_on_the_same_route() {
    let (mut reporter, upstream) = common::health_upstream().await;
    let gw = gateway(&grpc_config(upstream)).await;
    let mut client = web_client(gw.addr);

    // Unary: the status comes in the trailer frame; tonic-web reads it from the body.
    let resp = client.check(check("orders")).await.unwrap();
    assert_eq!(resp.get_ref().status, ServingStatus::Serving as i32);

    // A trailers-only answer (grpc-status in the head) keeps its code and message.
    let err = client.check(check("nope")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // Server streaming: the first update arrives while the stream stays open, the next one
    // only once the reporter sends it, and the end of the stream with its (OK) status.
    let mut stream = client.watch(check("orders")).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the first update is streamed at once")
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the second update is streamed at once")
        .unwrap()
        .unwrap();
    assert_eq!(second.status, ServingStatus::NotServing as i32);
    // Dropping the service's sender ends the stream with grpc-status 0 in the trailers.
    reporter.clear_service_status("orders").await;
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "{end:?}");

    // Plain gRPC on the same route still works (the plugin leaves it alone).
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = HealthClient::new(channel);
    let resp = grpc.check(check("orders")).await.unwrap();
    assert_eq!(resp.get_ref().status, ServingStatus::Serving as i32);
    let err = grpc.check(check("nope")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn an_upstream_that_is_down_is_unavailable_to_grpc_web_clients() {
    let dead = common::closed_port().await;
    let gw = gateway(&grpc_config(dead)).await;
    let err = web_client(gw.addr)
        .check(check("orders"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "the upstream could not be reached");

    // The head says it the gRPC-Web way, in the client's form.
    let resp = common::client()
        .post(gw.url("/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc-web-text")
        .body(B64.encode(grpc_frame(&health_request("orders"))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc-web-text");
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert!(resp.bytes().await.unwrap().is_empty(), "headers only");
}

/// `HealthCheckRequest { service }` in protobuf.
fn health_request(service: &str) -> Vec<u8> {
    let mut m = vec![0x0a, u8::try_from(service.len()).unwrap()];
    m.extend_from_slice(service.as_bytes());
    m
}

/// One length-prefixed gRPC message.
fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// Splits a gRPC-Web body into its frames: (flag, payload).
fn web_frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a frame header: {body:?}");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

/// Decodes a text response as the JS client does: the concatenation, 4 characters at a time
/// (each piece is padded, so padding may appear inside).
fn decode_text(text: &[u8]) -> Vec<u8> {
    assert_eq!(text.len() % 4, 0, "whole quanta");
    let mut out = Vec::new();
    let mut start = 0;
    for q in (0..text.len()).step_by(4) {
        if text[q + 3] == b'=' {
            out.extend(B64.decode(&text[start..q + 4]).unwrap());
            start = q + 4;
        }
    }
    out.extend(B64.decode(&text[start..]).unwrap());
    out
}

#[tokio::test]
async fn cors_preflights_pass_and_browsers_may_read_the_status() {
    let (_reporter, upstream) = common::health_upstream().await;
    let gw = gateway(&grpc_config(upstream)).await;
    let http = common::client();

    // What a browser asks before a gRPC-Web call.
    let pre = http
        .request(
            reqwest::Method::OPTIONS,
            gw.url("/grpc.health.v1.Health/Check"),
        )
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,grpc-timeout,x-grpc-web,x-user-agent",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let allowed = pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    for h in ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }

    // The call itself, as the JS client sends it (text), from the page's origin.
    for (service, status, trailers_only) in [("orders", "0", false), ("nope", "5", true)] {
        let resp = http
            .post(gw.url("/grpc.health.v1.Health/Check"))
            .header("origin", "http://app.example")
            .header("content-type", "application/grpc-web-text")
            .header("accept", "application/grpc-web-text")
            .header("x-grpc-web", "1")
            .header("x-user-agent", "grpc-web-javascript/0.1")
            .body(B64.encode(grpc_frame(&health_request(service))))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers().clone();
        assert_eq!(h["access-control-allow-origin"], "http://app.example");
        assert_eq!(h["content-type"], "application/grpc-web-text");
        let exposed = h["access-control-expose-headers"].to_str().unwrap();
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            assert!(exposed.contains(name), "{name} in {exposed}");
        }
        let body = resp.bytes().await.unwrap();
        if trailers_only {
            assert_eq!(h["grpc-status"], status);
            assert!(body.is_empty());
            continue;
        }
        assert!(!h.contains_key("grpc-status"));
        let frames = web_frames(&decode_text(&body));
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].0, 0, "a message");
        assert_eq!(frames[0].1, [0x08, ServingStatus::Serving as u8]);
        assert_eq!(frames[1].0, 0x80, "the trailer frame");
        let block = String::from_utf8(frames[1].1.clone()).unwrap();
        assert!(
            block.contains(&format!("grpc-status: {status}\r\n")),
            "{block}"
        );
    }

    // Another origin gets no CORS headers, so nothing to expose either.
    let resp = http
        .post(gw.url("/grpc.health.v1.Health/Check"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/grpc-web")
        .body(grpc_frame(&health_request("orders")))
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-expose-headers"));
    assert_eq!(resp.headers()["content-type"], "application/grpc-web");
}

/// An h2c upstream that answers like a gRPC server (`application/grpc`, the request body back,
/// trailers) to gRPC requests, and with JSON to others; it tells what it saw in headers.
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((io, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    let ct = req.headers().get("content-type").cloned();
                    let te = req.headers().get("te").cloned();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let grpc = ct
                        .as_ref()
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
                        vec![Ok(Frame::data(body))];
                    if grpc {
                        let mut t = http::HeaderMap::new();
                        t.insert("grpc-status", "0".parse().unwrap());
                        t.insert("grpc-message", "echoed".parse().unwrap());
                        frames.push(Ok(Frame::trailers(t)));
                    }
                    let mut resp =
                        hyper::Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    let h = resp.headers_mut();
                    let out = if grpc {
                        "application/grpc"
                    } else {
                        "application/json"
                    };
                    h.insert("content-type", out.parse().unwrap());
                    if let Some(ct) = ct {
                        h.insert("x-seen-content-type", ct);
                    }
                    if let Some(te) = te {
                        h.insert("x-seen-te", te);
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    addr
}

/// A request body sent in the given pieces, each in its own write.
fn pieces(parts: Vec<Bytes>) -> reqwest::Body {
    let stream = futures_util::stream::iter(parts).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, Infallible>(p)
    });
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn text_bodies_split_anywhere_are_decoded_and_other_requests_pass_untouched() {
    let upstream = echo_upstream().await;
    let gw = gateway(&grpc_config(upstream)).await;
    let http = common::client();

    // Two messages, each base64-encoded on its own (padding in the middle), sent in odd pieces
    // that split quanta and padding.
    let msg1 = grpc_frame(b"first message!");
    let msg2 = grpc_frame(b"second, a little longer");
    let text = format!("{}{}", B64.encode(&msg1), B64.encode(&msg2));
    assert!(B64.encode(&msg1).ends_with('='));
    for size in [1, 3, 5, 7] {
        let parts: Vec<Bytes> = text
            .as_bytes()
            .chunks(size)
            .map(Bytes::copy_from_slice)
            .collect();
        let resp = http
            .post(gw.url("/echo"))
            .header("content-type", "application/grpc-web-text+proto")
            .body(pieces(parts))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers().clone();
        assert_eq!(h["x-seen-content-type"], "application/grpc+proto");
        assert_eq!(h["x-seen-te"], "trailers");
        assert_eq!(h["content-type"], "application/grpc-web-text+proto");
        let body = decode_text(&resp.bytes().await.unwrap());
        let frames = web_frames(&body);
        let mut expected = msg1.clone();
        expected.extend_from_slice(&msg2);
        // The echoed body is the decoded request (two messages), then the trailer frame.
        assert_eq!(&body[..expected.len()], &expected[..], "chunks of {size}");
        let (flag, block) = frames.last().unwrap();
        assert_eq!(*flag, 0x80);
        assert_eq!(
            std::str::from_utf8(block).unwrap(),
            "grpc-status: 0\r\ngrpc-message: echoed\r\n"
        );
    }

    // Binary: passed as is; the subtype goes through both ways.
    let resp = http
        .post(gw.url("/echo"))
        .header("content-type", "application/grpc-web+json")
        .body(msg1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-seen-content-type"],
        "application/grpc+json"
    );
    assert_eq!(resp.headers()["content-type"], "application/grpc-web+json");
    let body = resp.bytes().await.unwrap();
    assert_eq!(&body[..msg1.len()], &msg1[..]);
    assert_eq!(web_frames(&body[msg1.len()..])[0].0, 0x80);

    // Not gRPC-Web: untouched both ways (no te, no trailer frame, the same content type).
    let resp = http
        .post(gw.url("/echo"))
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-content-type"], "application/json");
    assert!(!resp.headers().contains_key("x-seen-te"));
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), r#"{"a":1}"#);

    // Invalid base64: refused (the client is a gRPC-Web one, so the refusal is a gRPC status).
    let resp = http
        .post(gw.url("/echo"))
        .header("content-type", "application/grpc-web-text")
        .body(pieces(vec![
            Bytes::from_static(b"AAAA"),
            Bytes::from_static(b"AA!A"),
        ]))
        .send()
        .await
        .unwrap();
    let h = resp.headers().clone();
    let status = resp.status();
    let body = resp.bytes().await.unwrap();
    assert_eq!(status, 200, "{h:?} {body:?}");
    assert_eq!(h["content-type"], "application/grpc-web-text");
    assert_eq!(h["grpc-status"], "13", "INTERNAL, as gRPC maps an HTTP 400");
    assert_eq!(
        h["grpc-message"],
        "the gRPC-Web text body is not valid base64"
    );
    assert!(body.is_empty());
}

/// `node` and the npm modules of tests/grpc_web/, or why not: with `CI=true` their absence
/// fails the test, otherwise it is skipped loudly.
fn node_client() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc_web");
    let node = std::process::Command::new("node").arg("--version").output();
    let why = match node {
        Err(e) => format!("`node` cannot run ({e})"),
        Ok(_) if !dir.join("node_modules/grpc-web").is_dir() => {
            "tests/grpc_web/node_modules is missing (run `npm ci` there)".to_string()
        }
        Ok(_) => return Some(dir.join("client.js")),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the official gRPC-Web client is needed with CI=true: {why}");
    }
    eprintln!("SKIPPED: the official gRPC-Web JS client test: {why}");
    None
}

/// Runs the JS client; its JSON lines arrive as they are printed.
struct Node {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Node {
    fn run(script: &std::path::Path, args: &[&str]) -> Node {
        let mut child = std::process::Command::new("node")
            .arg(script)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "event": "raw", "line": line }));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Node { child, lines }
    }

    async fn next(&mut self) -> serde_json::Value {
        let e = tokio::time::timeout(Duration::from_secs(20), self.lines.recv())
            .await
            .expect("the JS client says something")
            .expect("the JS client is still running");
        eprintln!("js: {e}");
        e
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_official_js_client_in_text_mode_unary_and_streaming() {
    let Some(script) = node_client() else {
        return;
    };
    let (mut reporter, upstream) = common::health_upstream().await;
    let gw = gateway(&grpc_config(upstream)).await;
    let base = format!("http://{}", gw.addr);

    // Unary.
    let mut node = Node::run(&script, &[&base, "check", "orders"]);
    let mut events = Vec::new();
    loop {
        let e = node.next().await;
        let end = e["event"] == "end" || e["event"] == "error";
        events.push(e);
        if end {
            break;
        }
    }
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "data" && e["status"] == ServingStatus::Serving as i32),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "status" && e["code"] == 0),
        "{events:?}"
    );

    // Unary error, trailers-only.
    let mut node = Node::run(&script, &[&base, "check", "nope"]);
    let e = node.next().await;
    assert_eq!(e["event"], "error", "{e}");
    assert_eq!(e["code"], 5, "NOT_FOUND: {e}");

    // Server streaming: the first message arrives before the second is sent.
    let mut node = Node::run(&script, &[&base, "watch", "orders"]);
    let first = node.next().await;
    assert_eq!(first["event"], "data", "{first}");
    assert_eq!(first["status"], ServingStatus::Serving as i32);
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::NotServing)
        .await;
    let second = node.next().await;
    assert_eq!(second["event"], "data", "{second}");
    assert_eq!(second["status"], ServingStatus::NotServing as i32);
    // The stream ends: the final status comes from the trailer frame.
    reporter.clear_service_status("orders").await;
    let mut rest = Vec::new();
    loop {
        let e = node.next().await;
        let end = e["event"] == "end" || e["event"] == "error";
        rest.push(e);
        if end {
            break;
        }
    }
    assert!(
        rest.iter()
            .any(|e| e["event"] == "status" && e["code"] == 0),
        "{rest:?}"
    );
    assert_eq!(rest.last().unwrap()["event"], "end", "{rest:?}");
}
