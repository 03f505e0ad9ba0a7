//! Bodies stream through the gateway: chunk by chunk (no buffering), 1 GiB each way through the
//! real binary with bounded memory, and request bodies over the listener limit are refused.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, Notify};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CHUNK: usize = 64 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;
/// Peak RSS the gateway process may reach while moving 1 GiB (it measures about 20 MiB).
const MAX_RSS_KIB: u64 = 64 * 1024;

/// Routes everything to one upstream; `settings` are extra lines of the upstream's YAML.
fn route_to(upstream_url: &str, settings: &str) -> String {
    format!(
        "upstreams:\n  up:\n{settings}    targets:\n      - url: {upstream_url}\nroutes:\n  - name: all\n    match: {{ paths: [/] }}\n    upstream: up\n"
    )
}

/// A body fed from a channel: whatever the sender sends, when it sends it.
fn channel_body(rx: mpsc::Receiver<Bytes>) -> common::UpBody {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// An upstream that sends `first`, waits for `release`, then sends `second` and ends.
async fn two_step_upstream(release: Arc<Notify>) -> common::Upstream {
    common::upstream(move |_req: Request<Incoming>| {
        let release = release.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                let _ = tx
                    .send(Bytes::from_static(b"event: tick\ndata: one\n\n"))
                    .await;
                release.notified().await;
                let _ = tx
                    .send(Bytes::from_static(b"event: tick\ndata: two\n\n"))
                    .await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(channel_body(rx))
                .expect("response")
        }
    })
    .await
}

async fn chunk_in_time(resp: &mut reqwest::Response, what: &str) -> Option<Bytes> {
    tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .unwrap_or_else(|_| {
            panic!("{what}: not received within 5 s (buffered instead of streamed?)")
        })
        .unwrap_or_else(|e| panic!("{what}: body error: {e}"))
}

async fn check_event_stream(client: reqwest::Client, version: reqwest::Version) {
    let release = Arc::new(Notify::new());
    let up = two_step_upstream(release.clone()).await;
    let gw = common::gateway(&common::config(&route_to(&up.url(), ""))).await;

    let mut resp =
        tokio::time::timeout(Duration::from_secs(5), client.get(gw.url("/events")).send())
            .await
            .expect("response head in time (before the body is complete)")
            .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), version);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );

    // Chunk 1 arrives while the upstream is still holding chunk 2 back.
    let mut got = Vec::new();
    while !got.ends_with(b"data: one\n\n") {
        let c = chunk_in_time(&mut resp, "chunk 1")
            .await
            .expect("body ended before chunk 1");
        got.extend_from_slice(&c);
    }
    assert_eq!(got, b"event: tick\ndata: one\n\n");

    // Now release chunk 2, then the end of the body.
    release.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = chunk_in_time(&mut resp, "chunk 2 / end").await {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"event: tick\ndata: two\n\n");
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_is_forwarded_chunk_by_chunk_http1() {
    check_event_stream(common::client(), reqwest::Version::HTTP_11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_is_forwarded_chunk_by_chunk_http2() {
    let h2 = common::h2c_client();
    check_event_stream(h2, reqwest::Version::HTTP_2).await;
}

/// An upstream that reads the request body frame by frame (never holding it) and answers with
/// the byte count.
async fn counting_upstream() -> common::Upstream {
    common::upstream(|req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => {
                    return Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(common::full(format!("body error after {n} bytes: {e}")))
                        .expect("response")
                }
            }
        }
        Response::new(common::full(n.to_string()))
    })
    .await
}

fn report_rss(gw: &common::BinGateway, what: &str, started: Instant, bytes: u64) -> u64 {
    let kib = common::peak_rss_kib(gw.child.id());
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{what}: {bytes} bytes in {secs:.1} s ({:.0} MiB/s), gateway peak RSS {kib} KiB",
        bytes as f64 / secs / 1048576.0
    );
    kib
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_through_the_binary_in_bounded_memory() {
    let up = counting_upstream().await;
    // The upstream answers only after the whole body, so its response timeout covers the upload.
    let gw = common::spawn_bin(&common::config(&route_to(&up.url(), "    timeout: 300s\n")));
    let before = common::peak_rss_kib(gw.child.id());

    let chunks = (GIB / CHUNK as u64) as usize;
    let data = Bytes::from(vec![0xa5u8; CHUNK]);
    let stream =
        futures_util::stream::iter(std::iter::repeat_n(data, chunks).map(Ok::<_, Infallible>));
    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(180),
        common::client()
            .post(format!("http://{}/upload", gw.addr))
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    )
    .await
    .expect("upload finished in time")
    .expect("upload request");
    let status = resp.status();
    let text = resp.text().await.expect("count body");
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, GIB.to_string(), "the upstream received every byte");
    assert_eq!(up.requests(), 1);

    let peak = report_rss(&gw, "upload", started, GIB);
    assert!(
        peak < MAX_RSS_KIB,
        "gateway peak RSS {peak} KiB (at start {before} KiB) over {MAX_RSS_KIB} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_through_the_binary_in_bounded_memory() {
    let up = common::upstream(|_req: Request<Incoming>| async move {
        let chunks = (GIB / CHUNK as u64) as usize;
        let data = Bytes::from(vec![0x5au8; CHUNK]);
        let frames = futures_util::stream::iter(
            std::iter::repeat_n(data, chunks).map(|b| Ok::<_, BoxError>(Frame::data(b))),
        );
        Response::builder()
            .header("content-length", GIB.to_string())
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .expect("response")
    })
    .await;
    let gw = common::spawn_bin(&common::config(&route_to(&up.url(), "")));
    let before = common::peak_rss_kib(gw.child.id());

    let started = Instant::now();
    let total = tokio::time::timeout(Duration::from_secs(180), async {
        let resp = common::client()
            .get(format!("http://{}/download", gw.addr))
            .send()
            .await
            .expect("download request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.content_length(),
            Some(GIB),
            "Content-Length passes through"
        );
        let mut stream = resp.bytes_stream();
        let mut n: u64 = 0;
        while let Some(c) = stream.next().await {
            let c = c.expect("download chunk");
            assert!(c.iter().all(|&b| b == 0x5a), "payload bytes intact");
            n += c.len() as u64;
        }
        n
    })
    .await
    .expect("download finished in time");
    assert_eq!(total, GIB, "the client received every byte");

    let peak = report_rss(&gw, "download", started, GIB);
    assert!(
        peak < MAX_RSS_KIB,
        "gateway peak RSS {peak} KiB (at start {before} KiB) over {MAX_RSS_KIB} KiB"
    );
}

fn limited_config(upstream_url: &str) -> String {
    common::config(&format!(
        "    limits:\n      max_request_body: 1KiB\n{}",
        route_to(upstream_url, "")
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_listener_limit_with_content_length_gets_413_and_never_reaches_upstream() {
    let up = counting_upstream().await;
    let gw = common::gateway(&limited_config(&up.url())).await;
    let client = common::client();

    let resp = client
        .post(gw.url("/upload"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.requests(), 0, "the upstream never saw the request");
    assert_eq!(
        up.connections(),
        0,
        "the gateway did not even connect upstream"
    );

    // One byte over the limit is refused too; exactly the limit passes.
    let resp = client
        .post(gw.url("/upload"))
        .body(vec![b'x'; 1025])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.requests(), 0);
    let resp = client
        .post(gw.url("/upload"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.expect("count"), "1024");
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_listener_limit_gets_413() {
    // Without Content-Length the gateway only learns the size while streaming.
    let up = counting_upstream().await;
    let gw = common::gateway(&limited_config(&up.url())).await;
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'y'; 512]))),
    );
    let resp = common::client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn an_upstreams_declared_trailers_reach_an_http1_client_that_accepts_them() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = common::upstream(|_req: Request<Incoming>| async move {
        let frames = futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                t
            })),
        ]);
        Response::builder()
            .header("trailer", "grpc-status")
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .unwrap()
    })
    .await;
    let gw = common::gateway(&common::config(&route_to(&up.url(), ""))).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let lower = raw.to_ascii_lowercase();
    // `Trailer` is end to end (RFC 9110 §6.6.2): it passes, and with it the trailer it names.
    assert!(lower.contains("trailer: grpc-status"), "{raw}");
    assert!(lower.ends_with("0\r\ngrpc-status: 0\r\n\r\n"), "{raw}");
}
