//! Bodies under attack: malformed, abandoned and stalled request bodies are the client's fault
//! (400/408, never counted against an upstream), slow readers are bounded in memory and cut after
//! `send_timeout`, and an upstream's conflicting framing headers never truncate a response.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{client, config, counting, full, gateway, h2c_client, upstream, Upstream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// An upstream with passive health at its defaults (5 failures eject for 10 s) and a breaker that
/// opens after 4 requests at half failures: a client alone must trip neither.
fn guarded_config(up: &str, limits: &str) -> String {
    format!(
        r#"    limits: {{ {limits} }}
upstreams:
  app:
    targets: [{{ url: "{up}" }}]
    circuit_breaker: {{ failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 10s }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: app }}
"#
    )
}

/// Reads until the peer closes (true) or `wait` passes (false).
async fn read_to_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// Five requests that healthy traffic must still be served after.
async fn assert_still_served(gw_url: String, what: &str) {
    let resp = client().get(gw_url).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "after {what}, a well-behaved client got {}: {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
}

#[tokio::test]
async fn malformed_chunked_bodies_get_400_and_never_eject_the_upstream() {
    let up = counting().await;
    let gw = gateway(&config(&guarded_config(&up.url(), ""))).await;
    for i in 0..6 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let (text, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
        assert!(
            text.starts_with("HTTP/1.1 400 "),
            "request {i}: expected 400, got {text:?}"
        );
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(text.contains("the request body is malformed"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
        assert!(closed, "request {i}: the connection stayed open: {text}");
    }
    assert_still_served(gw.url("/after"), "six malformed chunked bodies").await;
}

#[tokio::test]
async fn uploads_abandoned_mid_body_never_eject_the_upstream() {
    let up = counting().await;
    let gw = gateway(&config(&guarded_config(&up.url(), ""))).await;
    for i in 0..6 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[b'x'; 1000]).await.unwrap();
        // Wait until the upstream is reading this body, then walk away mid-body.
        let deadline = Instant::now() + Duration::from_secs(10);
        while up.requests() <= i {
            assert!(
                Instant::now() < deadline,
                "upload {i} never reached the upstream (ejected by the earlier aborts?)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(s);
        // Let the gateway notice before the next one.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_still_served(gw.url("/after"), "six abandoned uploads").await;
}

/// A minimal HTTP/2 cleartext upstream (prior knowledge) that reads each request body to the end.
async fn h2c_counting() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let n = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        Ok::<_, Infallible>(Response::new(full(n.to_string())))
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn malformed_bodies_to_an_h2_upstream_never_eject_it() {
    let up = h2c_counting().await;
    let gw = gateway(&config(&format!(
        r#"upstreams:
  app:
    protocol: h2c
    targets: [{{ url: "http://{up}" }}]
    circuit_breaker: {{ failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 10s }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: app }}
"#
    )))
    .await;
    for i in 0..6 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        // The first chunk travels upstream before the broken one arrives.
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"zz\r\nhello\r\n0\r\n\r\n").await.unwrap();
        let (text, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
        assert!(
            text.starts_with("HTTP/1.1 400 "),
            "request {i}: expected 400, got {text:?}"
        );
        assert!(text.contains("the request body is malformed"), "{text}");
        assert!(closed, "request {i}: the connection stayed open");
    }
    assert_still_served(gw.url("/after"), "six malformed bodies over h2").await;
}

#[tokio::test]
async fn a_stalled_upload_gets_408_after_body_timeout_and_never_ejects_the_upstream() {
    let up = counting().await;
    let gw = gateway(&config(&guarded_config(&up.url(), "body_timeout: 300ms"))).await;
    for i in 0..6 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        let t0 = Instant::now();
        let (text, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
        assert!(
            text.starts_with("HTTP/1.1 408 "),
            "request {i}: expected 408, got {text:?}"
        );
        assert!(closed, "request {i}: the connection stayed open");
        assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    }
    assert_still_served(gw.url("/after"), "six stalled uploads").await;
}

#[tokio::test]
async fn a_slow_upload_that_keeps_moving_is_not_cut_by_body_timeout() {
    let up = counting().await;
    let gw = gateway(&config(&guarded_config(&up.url(), "body_timeout: 400ms"))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    // Ten bytes over about two seconds: each gap is under the timeout, the total far over it.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"x").await.unwrap();
    }
    let text = common::read_response(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.ends_with("\r\n\r\n10"), "{text}");
}

#[tokio::test]
async fn a_response_with_content_length_and_chunked_is_forwarded_whole() {
    // Both `Content-Length: 5` and a chunked 10-byte body (RFC 9112 §6.3: the chunked framing wins).
    let up = common::raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
    )
    .await;
    let gw = gateway(&config(&format!(
        r#"upstreams:
  app:
    targets: [{{ url: "http://{up}" }}]
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: app }}
"#
    )))
    .await;
    let c = client();
    for _ in 0..2 {
        let resp = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get("content-length"), None);
        assert_eq!(resp.text().await.unwrap(), "0123456789");
    }
    // Pipelined on one connection: both answers arrive whole and the connection stays usable.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_to_close(&mut s, Duration::from_secs(2)).await;
    assert!(!closed, "the connection was closed: {text}");
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    assert_eq!(text.matches("0123456789").count(), 2, "{text}");
}

/// A body of `total` bytes made lazily in 64 KiB chunks; `dropped` is set when the upstream's
/// server drops it (its connection to the gateway is gone).
fn endless(total: usize, dropped: Arc<AtomicBool>) -> common::UpBody {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = Flag(dropped);
    let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
    let stream = futures_util::stream::unfold((0usize, flag), move |(sent, flag)| {
        let chunk = chunk.clone();
        async move {
            (sent < total).then(|| {
                (
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.clone())),
                    (sent + chunk.len(), flag),
                )
            })
        }
    });
    StreamBody::new(stream).boxed()
}

/// A client socket with a small receive buffer, so the kernel absorbs little of a response.
async fn small_window_connect(addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_cut_after_send_timeout_and_the_upstream_released() {
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let up = upstream(move |_req| {
        let d = d.clone();
        async move { Response::new(endless(256 << 20, d)) }
    })
    .await;
    let gw = gateway(&config(&guarded_config(&up.url(), "send_timeout: 1s"))).await;
    let mut s = small_window_connect(gw.addr).await;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Read nothing for a while: the gateway must give up on us.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => total += n,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "the non-reading client was never cut ({total} bytes read)"
    );
    assert!(total < 256 << 20, "the whole body was sent");
    // The upstream connection is released too: its body is dropped by the upstream's server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dropped.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream connection was kept after the client was cut"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_slow_reader_that_keeps_reading_gets_everything() {
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let up = upstream(move |_req| {
        let d = d.clone();
        async move { Response::new(endless(48 << 20, d)) }
    })
    .await;
    let gw = gateway(&config(&guarded_config(&up.url(), "send_timeout: 1s"))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Bursts of 8 MiB with pauses of 600 ms (under the timeout) between them, for longer than
    // the timeout in all: the writes make progress after each pause, so the client is never cut.
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let t0 = Instant::now();
    let mut pauses = 0;
    'read: loop {
        let burst_end = total + (8 << 20);
        while total < burst_end || pauses >= 4 {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0)) => break 'read,
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) => panic!("cut after {total} bytes: {e}"),
                Err(_) => panic!("stuck after {total} bytes"),
            }
        }
        pauses += 1;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert!(t0.elapsed() > Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(total > 48 << 20, "cut short after {total} bytes");
}

/// VmRSS (resident now) of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_cost_a_bounded_amount_of_memory_each() {
    const CONNS: usize = 150;
    let body = Bytes::from(vec![b'm'; 1 << 20]);
    let served = Arc::new(AtomicUsize::new(0));
    let sv = served.clone();
    let up: Upstream = upstream(move |_req| {
        let body = body.clone();
        sv.fetch_add(1, Ordering::SeqCst);
        async move { Response::new(full(body)) }
    })
    .await;
    let gw = common::spawn_bin(&config(&guarded_config(&up.url(), "")));
    let pid = gw.child.id();
    // Warm up: a few complete responses, so allocator pools and thread stacks are in place.
    let c = client();
    for _ in 0..4 {
        let b = c
            .get(format!("http://{}/warm", gw.addr))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(b.len(), 1 << 20);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..CONNS {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        // A slow reader: a sip every 100 ms, far slower than the upstream sends.
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }));
    }
    // The peak over a few seconds of slow reading.
    let mut after = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = after.max(rss_kib(pid));
    }
    stop.store(true, Ordering::SeqCst);
    let per_conn = after.saturating_sub(before) / CONNS as u64;
    eprintln!("RSS {before} KiB -> {after} KiB: {per_conn} KiB per slow reader");
    assert_eq!(served.load(Ordering::SeqCst), CONNS + 4);
    assert!(
        per_conn <= 256,
        "each slow reader costs {per_conn} KiB ({before} -> {after} KiB)"
    );
    for r in readers {
        r.abort();
    }
}

#[test]
fn the_body_timers_are_validated_and_default_to_60s_and_none() {
    let load = |limits: &str| {
        frontdesk::config::load_str(
            &format!(
                "version: 1\nlisteners:\n  - {{ name: a, address: \"127.0.0.1:0\", limits: {{ {limits} }} }}\n"
            ),
            &|_| None,
        )
    };
    let cfg = load("").unwrap().config;
    let limits = &cfg.listeners[0].limits;
    assert_eq!(limits.send_timeout.get(), Duration::from_secs(60));
    assert_eq!(limits.body_timeout, None);
    let cfg = load("send_timeout: 5s, body_timeout: 2s").unwrap().config;
    let limits = &cfg.listeners[0].limits;
    assert_eq!(limits.send_timeout.get(), Duration::from_secs(5));
    assert_eq!(
        limits.body_timeout.map(|d| d.get()),
        Some(Duration::from_secs(2))
    );
    let errs: Vec<String> = load("send_timeout: 0s, body_timeout: 0s")
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    for field in ["send_timeout", "body_timeout"] {
        assert!(
            errs.iter().any(|e| e.contains(&format!(
                "listeners[0].limits.{field}: must be greater than zero"
            ))),
            "{errs:#?}"
        );
    }
}

/// The other direction: clients that send fast to an upstream that reads slowly. hyper's read
/// buffer (bounded by the listener's head limit) and the upstream connection's write buffer
/// (bounded with its read buffer; hyper's default lets it reach 400 KiB) are all a connection
/// holds. A debug build's request futures account for much of what is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_to_a_slow_upstream_cost_a_bounded_amount_of_memory_each() {
    const CONNS: usize = 100;
    // The upstream takes a sip of each body every 100 ms: far slower than the clients send.
    let up: Upstream = upstream(
        move |req: hyper::Request<hyper::body::Incoming>| async move {
            let mut body = req.into_body();
            while let Some(Ok(_)) = body.frame().await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Response::new(full("done"))
        },
    )
    .await;
    let gw = common::spawn_bin(&config(&guarded_config(&up.url(), "")));
    let pid = gw.child.id();
    let c = client();
    for _ in 0..4 {
        let resp = c
            .post(format!("http://{}/warm", gw.addr))
            .body(vec![b'w'; 64 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut writers = Vec::new();
    for _ in 0..CONNS {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        writers.push(tokio::spawn(async move {
            let _ = s
                .write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 8388608\r\n\r\n")
                .await;
            let chunk = vec![b'u'; 64 * 1024];
            for _ in 0..128 {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }));
    }
    let mut after = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = after.max(rss_kib(pid));
    }
    let per_conn = after.saturating_sub(before) / CONNS as u64;
    eprintln!("RSS {before} KiB -> {after} KiB: {per_conn} KiB per upload");
    assert!(
        per_conn <= 512,
        "each upload to a slow upstream costs {per_conn} KiB ({before} -> {after} KiB)"
    );
    for w in writers {
        w.abort();
    }
}

#[tokio::test]
async fn an_http2_client_that_opens_no_window_is_cut_after_send_timeout() {
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let up = upstream(move |_req| {
        let d = d.clone();
        async move { Response::new(endless(256 << 20, d)) }
    })
    .await;
    let gw = gateway(&config(&guarded_config(&up.url(), "send_timeout: 1s"))).await;
    // A frame-level HTTP/2 client whose stream window is the protocol's minimum, and which never
    // reads the body, so it never opens the window again: the gateway can send nothing more,
    // while the socket itself stays readable.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .handshake::<_, http_body_util::Empty<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{}/big", gw.addr))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Hold the body unread. The connection must end: the gateway gives up on it.
    let ended = tokio::time::timeout(Duration::from_secs(15), conn).await;
    assert!(ended.is_ok(), "the HTTP/2 connection was kept open");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dropped.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream connection was kept after the client was cut"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(resp);
}

#[tokio::test]
async fn an_http2_stream_waiting_on_a_slow_upstream_is_not_cut_by_send_timeout() {
    // The upstream pauses 2.5 s mid-body: no progress, but nothing waits on the client either.
    let up = upstream(|_req| async {
        let stream = futures_util::stream::unfold(0u8, |n| async move {
            match n {
                0 => Some((
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(
                        Bytes::from_static(b"first,"),
                    )),
                    1,
                )),
                1 => {
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
                }
                _ => None,
            }
        });
        Response::new(StreamBody::new(stream).boxed())
    })
    .await;
    let gw = gateway(&config(&guarded_config(&up.url(), "send_timeout: 1s"))).await;
    let c = h2c_client();
    let resp = c.get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "first,second");
}
