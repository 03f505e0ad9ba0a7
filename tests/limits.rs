//! Malformed and oversized requests get the right 4xx and never reach an upstream; upstream
//! failures get 502/504 problem bodies that do not leak addresses; head and idle timers.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{closed_port, config, echo, full, gateway, raw, read_response, upstream, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn limited_gateway(up: &Upstream, limits: &str) -> common::TestGateway {
    let yaml = config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n",
        up.url()
    ))
    .replacen("    address: 127.0.0.1:0\n", &format!("    address: 127.0.0.1:0\n    limits: {limits}\n"), 1);
    gateway(&yaml).await
}

fn status_of(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_the_right_4xx_and_never_reach_upstream() {
    let up = echo("u").await;
    let gw = limited_gateway(
        &up,
        "{ max_request_head: 2KiB, max_headers: 10, max_uri: 256, max_request_body: 1KiB }",
    )
    .await;
    let wait = Duration::from_secs(5);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(300));
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..11).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(2100)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("TE+CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), "400"),
        ("CL+TE order", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".into(), "400"),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n".into(), "400"),
        ("bad TE", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".into(), "400"),
        ("differing CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into(), "400"),
        ("garbage", "\x01\x02 nonsense\r\n\r\n".into(), "400"),
        ("long uri", long_uri, "414"),
        ("many headers", many_headers, "431"),
        ("big head", big_head, "431"),
        ("body over limit", format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n{}", "z".repeat(2000)), "413"),
    ];
    for (name, req, want) in cases {
        let resp = raw(gw.addr, req.as_bytes(), wait).await;
        assert_eq!(status_of(&resp), want, "{name}: {resp}");
        if want != "413" {
            assert!(
                resp.to_ascii_lowercase().contains("connection: close"),
                "{name} closes: {resp}"
            );
        }
        assert!(resp.contains("application/problem+json"), "{name}: {resp}");
        // Exactly one response: nothing smuggled after it.
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{name}: {resp}");
    }
    assert_eq!(
        up.requests(),
        0,
        "no malformed request reached the upstream"
    );
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_cut_with_413() {
    let up = common::counting().await;
    let gw = limited_gateway(&up, "{ max_request_body: 1KiB }").await;
    let chunk = format!("{:x}\r\n{}\r\n", 700, "c".repeat(700));
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let resp = raw(gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&resp), "413", "{resp}");
    let ok = raw(gw.addr, format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}0\r\n\r\n").as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&ok), "200", "{ok}");
    assert!(ok.ends_with("700"), "{ok}");
}

#[tokio::test]
async fn slow_head_gets_408_and_close() {
    let up = echo("u").await;
    let gw = limited_gateway(&up, "{ head_timeout: 300ms }").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let resp = common::read_until_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_of(&resp), "408", "{resp}");
    assert!(resp.contains("connection: close"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn idle_keep_alive_is_closed_after_idle_timeout_but_head_timeout_does_not_apply_to_idle() {
    let up = echo("u").await;
    // head_timeout shorter than idle_timeout: an idle connection must outlive head_timeout.
    let gw = limited_gateway(&up, "{ head_timeout: 200ms, idle_timeout: 1s }").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_response(&mut s).await.starts_with("HTTP/1.1 200"),
        "idle 500ms < idle_timeout keeps the connection"
    );
    let started = Instant::now();
    let rest = common::read_until_close(&mut s, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(rest.is_empty(), "an idle close sends nothing: {rest}");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_an_idle_keep_alive_connection_that_served_requests() {
    // Each idle wait after the first on a connection sees the stop signal through the waiter
    // the first one registered: the third wait here must still notice the shutdown at once,
    // not after the drain timeout (5s) or the idle timeout (30s).
    let up = echo("u").await;
    let gw = limited_gateway(&up, "{ idle_timeout: 30s }").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for path in ["/1", "/2"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    }
    let g = gw.gw.clone();
    let shutdown = tokio::spawn(async move { g.shutdown().await });
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the idle connection was not closed on shutdown: {read:?}"
    );
    tokio::time::timeout(Duration::from_secs(3), shutdown)
        .await
        .expect("shutdown waited for the idle connection (drain timeout)")
        .unwrap();
}

#[tokio::test]
async fn head_timeout_runs_from_the_first_byte_of_each_request() {
    let up = echo("u").await;
    let gw = limited_gateway(&up, "{ head_timeout: 1s, idle_timeout: 10s }").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Idle longer than head_timeout first, then send a head slowly but within the budget.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"Host: x\r\n\r\n").await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn refused_upstream_is_502_without_leaking_its_address() {
    let dead = closed_port().await;
    let yaml = config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"http://{dead}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n"
    ));
    let gw = gateway(&yaml).await;
    let resp = common::client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body = resp.text().await.unwrap();
    assert!(
        !body.contains(&dead.port().to_string()) && !body.contains("127.0.0.1"),
        "{body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], 502);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let up = upstream(|_req| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        hyper::Response::new(full("late"))
    })
    .await;
    let yaml = config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}], timeout: 300ms }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n",
        up.url()
    ));
    let gw = gateway(&yaml).await;
    let started = Instant::now();
    let resp = common::client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["status"], 504);
}

#[tokio::test]
async fn upstream_reset_mid_response_is_502() {
    // An upstream that accepts, reads the request and closes without answering.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                drop(s);
            });
        }
    });
    let yaml = config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"http://{addr}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n"
    ));
    let gw = gateway(&yaml).await;
    let resp = common::client()
        .post(gw.url("/"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
}

#[tokio::test]
async fn pipelined_requests_and_leading_empty_lines_are_served() {
    let up = echo("u").await;
    let gw = limited_gateway(&up, "{ max_headers: 10 }").await;
    let resp = raw(
        gw.addr,
        b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 2, "{resp}");
    assert!(
        resp.contains("\"uri\":\"/a\"") && resp.contains("\"uri\":\"/b\""),
        "{resp}"
    );
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn upstream_timeout_starts_after_the_request_body_is_sent() {
    let up = common::counting().await;
    let yaml = config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}], timeout: 400ms }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n",
        up.url()
    ));
    let gw = gateway(&yaml).await;
    // The upload takes ~900 ms, longer than the 400 ms timeout, and must still succeed.
    let chunks = futures_util::stream::unfold(0u8, |i| async move {
        if i == 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1000])),
            i + 1,
        ))
    });
    let resp = common::client()
        .post(gw.url("/"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "3000");
}

/// Sends `req`, shuts the write side at once, and reads until the gateway closes.
async fn half_closed(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    s.shutdown().await.unwrap();
    common::read_until_close(&mut s, Duration::from_secs(5)).await
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_is_treated_alike_by_both_codecs() {
    // hyper's rule, kept by the native codec: a client that closes its side has left, and its
    // request in flight is dropped; requests already answered, and a refusal, still reach it.
    // An upstream slower than the client's FIN, so the FIN is always seen first.
    let up = common::upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        hyper::Response::new(common::full("late"))
    })
    .await;
    let mut seen = Vec::new();
    for codec in ["native", "hyper"] {
        let yaml = config(&format!(
            "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n",
            up.url()
        ))
        .replace(
            "server: { drain_timeout: 5s }",
            &format!("server: {{ drain_timeout: 5s, http1: {codec} }}"),
        );
        let gw = gateway(&yaml).await;
        let one = half_closed(gw.addr, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let bad = half_closed(gw.addr, b"GET /a HTTP/1.1\r\nHost: x\r\nA : b\r\n\r\n").await;
        assert_eq!(status_of(&bad), "400", "{codec}: {bad}");
        seen.push((
            codec,
            status_of(&one).to_string(),
            one.matches("HTTP/1.1 ").count(),
        ));
    }
    // Neither answers the request the client left behind, and neither hangs.
    assert_eq!(
        seen,
        vec![("native", String::new(), 0), ("hyper", String::new(), 0)]
    );
}
