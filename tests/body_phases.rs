//! The plugin body API end to end: test plugins registered as custom kinds
//! (`plugin::register_custom`) run inside the real gateway (in process, real sockets) and
//! rewrite bodies as they stream (1 GiB each way in flat memory), buffer and replace JSON with
//! the right `Content-Length` over HTTP/1.1 and HTTP/2, hit their caps, add trailers (merged with
//! an upstream's gRPC trailers), answer with a streamed body, log finished, refused and abandoned
//! exchanges, refuse a request body mid-stream without harming the upstream, break a response off
//! mid-stream, and keep HTTP/1.1 chunked framing (even for an HTTP/1.0 origin).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use frontdesk::body::{Body, BodyFrame};
use frontdesk::plugin::{
    register_custom, BodyAction, BodyFilter, BufferCap, Buffered, BuildEnv, Ctx, Flow, FrameSink,
    OverCap, Phases, Plugin, PluginError, PluginFactory, PluginResponse, RequestHead, ResponseHead,
    Summary,
};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const GIB: u64 = 1024 * 1024 * 1024;
/// Chunks of the alphabet pattern: a whole number of alphabets, about 64 KiB.
const ALPHABET_CHUNK: usize = 26 * 2521;
/// How much the process's resident memory may grow while 1 GiB moves through a filter.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Shared state between the tests and the plugins they configure (by key).

#[derive(Default)]
struct Shared {
    /// Fired by the test to let a streamed answer go on.
    release: Notify,
    /// Set by the streamed answer just before it sends its last chunk.
    sent_last: AtomicBool,
    /// What the logging phase saw.
    logs: Mutex<Vec<Summary>>,
}

static SHARED: Mutex<BTreeMap<String, Arc<Shared>>> = Mutex::new(BTreeMap::new());

fn shared(key: &str) -> Arc<Shared> {
    SHARED
        .lock()
        .unwrap()
        .entry(key.to_string())
        .or_default()
        .clone()
}

impl Shared {
    /// Waits until `n` exchanges were logged, and returns them.
    async fn logged(&self, n: usize) -> Vec<Summary> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let logs = self.logs.lock().unwrap();
                if logs.len() >= n {
                    return logs.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "the logging phase ran {} times, not {n}",
                self.logs.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    key: String,
}

// ---------------------------------------------------------------------------------------------
// `upper`: ASCII upper-cases every data frame of the request and/or response body as it streams.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpperConfig {
    #[serde(default)]
    request: bool,
    #[serde(default)]
    response: bool,
}

struct Upper {
    request: bool,
    response: bool,
}

struct UpperFilter;

impl BodyFilter for UpperFilter {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        match frame.into_data() {
            Ok(d) => {
                let mut v = d.to_vec();
                v.make_ascii_uppercase();
                out.push_data(v.into());
            }
            Err(f) => out.push(f),
        }
        Ok(())
    }
}

impl PluginFactory for Upper {
    const KIND: &'static str = "upper";
    const ORDER: u16 = 600;
    type Config = UpperConfig;
    fn build(cfg: &UpperConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(Upper {
            request: cfg.request,
            response: cfg.response,
        }))
    }
}

#[async_trait]
impl Plugin for Upper {
    fn kind(&self) -> &'static str {
        "upper"
    }
    fn phases(&self) -> Phases {
        Phases {
            request_body: self.request,
            response_body: self.response,
            ..Phases::REQUEST
        }
    }
    fn request_body(&self, _req: &mut RequestHead, _cx: &mut Ctx) -> BodyAction {
        if self.request {
            BodyAction::Stream(Box::new(UpperFilter))
        } else {
            BodyAction::Pass
        }
    }
    fn response_body(&self, _resp: &mut ResponseHead, _cx: &mut Ctx) -> BodyAction {
        if self.response {
            BodyAction::Stream(Box::new(UpperFilter))
        } else {
            BodyAction::Pass
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `json_stamp`: buffers a JSON body, adds a `stamp` field, and puts it back re-serialized.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StampConfig {
    max: u64,
    #[serde(default)]
    fail_over_cap: bool,
    #[serde(default)]
    request: bool,
    #[serde(default)]
    response: bool,
}

struct Stamp {
    cap: BufferCap,
    request: bool,
    response: bool,
}

impl PluginFactory for Stamp {
    const KIND: &'static str = "json_stamp";
    const ORDER: u16 = 610;
    type Config = StampConfig;
    fn build(cfg: &StampConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(Stamp {
            cap: BufferCap {
                max: cfg.max,
                over: if cfg.fail_over_cap {
                    OverCap::Fail
                } else {
                    OverCap::Pass
                },
            },
            request: cfg.request,
            response: cfg.response,
        }))
    }
}

/// Adds `"stamp": what` to a JSON object.
fn stamp(body: &mut Buffered, what: &str, bad: StatusCode) -> Result<(), PluginError> {
    let mut v: serde_json::Value = serde_json::from_slice(&body.data)
        .map_err(|e| PluginError::new(bad, format!("not JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| PluginError::new(bad, "not a JSON object"))?;
    obj.insert("stamp".into(), what.into());
    body.data = serde_json::to_vec(&v).unwrap().into();
    Ok(())
}

#[async_trait]
impl Plugin for Stamp {
    fn kind(&self) -> &'static str {
        "json_stamp"
    }
    fn phases(&self) -> Phases {
        Phases {
            request_body: self.request,
            response_body: self.response,
            ..Phases::REQUEST
        }
    }
    fn request_body(&self, _req: &mut RequestHead, _cx: &mut Ctx) -> BodyAction {
        if self.request {
            BodyAction::Buffer(self.cap)
        } else {
            BodyAction::Pass
        }
    }
    async fn request_body_buffered(
        &self,
        _req: &mut RequestHead,
        body: &mut Buffered,
        _cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        stamp(body, "request", StatusCode::BAD_REQUEST)
    }
    fn response_body(&self, _resp: &mut ResponseHead, _cx: &mut Ctx) -> BodyAction {
        if self.response {
            BodyAction::Buffer(self.cap)
        } else {
            BodyAction::Pass
        }
    }
    async fn response_body_buffered(
        &self,
        _resp: &mut ResponseHead,
        body: &mut Buffered,
        _cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        stamp(body, "response", StatusCode::BAD_GATEWAY)
    }
}

// ---------------------------------------------------------------------------------------------
// `trailer`: counts the response body's data bytes as it streams and adds them as a trailer.

static X_BODY_BYTES: HeaderName = HeaderName::from_static("x-body-bytes");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyConfig {}

struct Trailer;

struct TrailerFilter {
    bytes: u64,
}

impl BodyFilter for TrailerFilter {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        if let Some(d) = frame.data_ref() {
            self.bytes += d.len() as u64;
        }
        out.push(frame);
        Ok(())
    }
    fn end(&mut self, out: &mut FrameSink) -> Result<(), PluginError> {
        let mut t = HeaderMap::new();
        t.insert(X_BODY_BYTES.clone(), HeaderValue::from(self.bytes));
        out.push_trailers(t);
        Ok(())
    }
}

impl PluginFactory for Trailer {
    const KIND: &'static str = "trailer";
    const ORDER: u16 = 620;
    type Config = EmptyConfig;
    fn build(_cfg: &EmptyConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(Trailer))
    }
}

#[async_trait]
impl Plugin for Trailer {
    fn kind(&self) -> &'static str {
        "trailer"
    }
    fn phases(&self) -> Phases {
        Phases {
            response_body: true,
            ..Phases::REQUEST
        }
    }
    fn response_body(&self, resp: &mut ResponseHead, _cx: &mut Ctx) -> BodyAction {
        // HTTP/1.1 sends only the trailer fields the head announces.
        resp.headers.append(
            http::header::TRAILER,
            HeaderValue::from_static("x-body-bytes"),
        );
        BodyAction::Stream(Box::new(TrailerFilter { bytes: 0 }))
    }
}

// ---------------------------------------------------------------------------------------------
// `stream_answer`: answers every request itself with a body it streams from a task: the first
// chunk, then (once the test releases it) the last.

struct StreamAnswer {
    shared: Arc<Shared>,
}

impl PluginFactory for StreamAnswer {
    const KIND: &'static str = "stream_answer";
    const ORDER: u16 = 630;
    type Config = KeyConfig;
    fn build(cfg: &KeyConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(StreamAnswer {
            shared: shared(&cfg.key),
        }))
    }
}

#[async_trait]
impl Plugin for StreamAnswer {
    fn kind(&self) -> &'static str {
        "stream_answer"
    }
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }
    async fn request_filter(
        &self,
        _req: &mut RequestHead,
        _cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let (tx, body) = Body::channel(1);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if tx.send_data("first chunk\n").await.is_err() {
                return;
            }
            shared.release.notified().await;
            shared.sent_last.store(true, Ordering::SeqCst);
            let _ = tx.send_data("last chunk\n").await;
        });
        let resp: PluginResponse = http::Response::builder()
            .header("content-type", "text/plain")
            .body(body)
            .unwrap();
        Ok(Flow::Respond(resp))
    }
}

// ---------------------------------------------------------------------------------------------
// `recorder`: the logging phase, writing each Summary where the test reads it.

struct Recorder {
    shared: Arc<Shared>,
}

impl PluginFactory for Recorder {
    const KIND: &'static str = "recorder";
    const ORDER: u16 = 640;
    type Config = KeyConfig;
    fn build(cfg: &KeyConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(Recorder {
            shared: shared(&cfg.key),
        }))
    }
}

#[async_trait]
impl Plugin for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }
    fn phases(&self) -> Phases {
        Phases {
            log: true,
            ..Phases::REQUEST
        }
    }
    fn log(&self, summary: &Summary, _cx: &Ctx) {
        self.shared.logs.lock().unwrap().push(summary.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// `refuse`: a request body filter that refuses the body (400) once it sees a marker byte.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefuseConfig {
    marker: char,
    /// Filter the response body instead of the request body.
    #[serde(default)]
    response: bool,
}

struct Refuse {
    marker: u8,
    response: bool,
}

struct RefuseFilter {
    marker: u8,
}

impl BodyFilter for RefuseFilter {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        if frame.data_ref().is_some_and(|d| d.contains(&self.marker)) {
            return Err(PluginError::new(
                StatusCode::BAD_REQUEST,
                "the body holds a forbidden byte",
            ));
        }
        out.push(frame);
        Ok(())
    }
}

impl PluginFactory for Refuse {
    const KIND: &'static str = "refuse";
    const ORDER: u16 = 650;
    type Config = RefuseConfig;
    fn build(cfg: &RefuseConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        let marker = u8::try_from(cfg.marker).map_err(|_| "marker: one ASCII character")?;
        Ok(Arc::new(Refuse {
            marker,
            response: cfg.response,
        }))
    }
}

#[async_trait]
impl Plugin for Refuse {
    fn kind(&self) -> &'static str {
        "refuse"
    }
    fn phases(&self) -> Phases {
        Phases {
            request_body: !self.response,
            response_body: self.response,
            ..Phases::REQUEST
        }
    }
    fn request_body(&self, _req: &mut RequestHead, _cx: &mut Ctx) -> BodyAction {
        if self.response {
            return BodyAction::Pass;
        }
        BodyAction::Stream(Box::new(RefuseFilter {
            marker: self.marker,
        }))
    }
    fn response_body(&self, _resp: &mut ResponseHead, _cx: &mut Ctx) -> BodyAction {
        if !self.response {
            return BodyAction::Pass;
        }
        BodyAction::Stream(Box::new(RefuseFilter {
            marker: self.marker,
        }))
    }
}

fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        register_custom::<Upper>();
        register_custom::<Stamp>();
        register_custom::<Trailer>();
        register_custom::<StreamAnswer>();
        register_custom::<Recorder>();
        register_custom::<Refuse>();
    });
}

/// Starts a gateway with `upstreams` and `routes` (YAML bodies of those keys), the test kinds
/// registered.
async fn gateway(upstreams: &str, routes: &str) -> common::TestGateway {
    register();
    let upstreams = if upstreams.is_empty() {
        String::new()
    } else {
        format!("upstreams:\n{upstreams}")
    };
    common::gateway(&common::config(&format!("{upstreams}routes:\n{routes}"))).await
}

fn clients() -> [(reqwest::Client, reqwest::Version); 2] {
    [
        (common::client(), reqwest::Version::HTTP_11),
        (common::h2c_client(), reqwest::Version::HTTP_2),
    ]
}

// ---------------------------------------------------------------------------------------------
// Memory.

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Samples this process's resident memory from a thread until stopped; reports the peak.
struct RssWatch {
    base: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start() -> RssWatch {
        let base = status_kib("VmRSS:");
        let peak = Arc::new(AtomicU64::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(status_kib("VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssWatch {
            base,
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the growth over the start in KiB.
    fn growth(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let peak = self.peak.load(Ordering::Relaxed);
        (self.base, peak.saturating_sub(self.base))
    }
}

/// The two 1 GiB tests run one at a time: each measures the whole process's memory, and the
/// machine has few cores.
static BIG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `n` bytes of the lower-case alphabet, repeated.
fn alphabet(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Checks that `c`, found at `offset` of a stream of the upper-case alphabet, is that: its first
/// and last byte, and every byte when `full`.
fn check_upper(c: &[u8], offset: u64, full: bool) -> bool {
    let at = |i: usize| b'A' + ((offset + i as u64) % 26) as u8;
    if c.is_empty() {
        return true;
    }
    if c[0] != at(0) || c[c.len() - 1] != at(c.len() - 1) {
        return false;
    }
    !full || c.iter().enumerate().all(|(i, &b)| b == at(i))
}

/// The lower-case alphabet, `total` bytes, streamed in chunks with a `Content-Length`.
fn alphabet_stream(total: u64) -> common::UpBody {
    let chunk = Bytes::from(alphabet(ALPHABET_CHUNK));
    let full = (total / ALPHABET_CHUNK as u64) as usize;
    let rest = (total % ALPHABET_CHUNK as u64) as usize;
    let tail = (rest > 0).then(|| chunk.slice(..rest));
    let frames = futures_util::stream::iter(
        std::iter::repeat_n(chunk, full)
            .chain(tail)
            .map(|b| Ok::<_, BoxError>(Frame::data(b))),
    );
    BodyExt::boxed(StreamBody::new(frames))
}

/// An upstream answering `GET /alphabet/N` with N bytes of the alphabet (`Content-Length: N`),
/// and any other request by reading its body as the upper-case alphabet: it answers with the
/// byte count, or `422` where the pattern broke.
async fn alphabet_upstream() -> common::Upstream {
    common::upstream(|req: Request<Incoming>| async move {
        if let Some(n) = req.uri().path().strip_prefix("/alphabet/") {
            let n: u64 = n.parse().unwrap();
            return Response::builder()
                .header("content-length", n.to_string())
                .header("content-type", "text/plain")
                .body(alphabet_stream(n))
                .unwrap();
        }
        let length = req.headers().get("content-length").cloned();
        let chunked = req.headers().get("transfer-encoding").cloned();
        let mut body = req.into_body();
        let (mut n, mut i) = (0u64, 0u64);
        while let Some(f) = body.frame().await {
            let Ok(f) = f else {
                return Response::builder()
                    .status(400)
                    .body(common::full("body error"))
                    .unwrap();
            };
            if let Some(d) = f.data_ref() {
                if !check_upper(d, n, i % 64 == 0) {
                    return Response::builder()
                        .status(422)
                        .body(common::full(format!("not the upper-case alphabet at {n}")))
                        .unwrap();
                }
                n += d.len() as u64;
                i += 1;
            }
        }
        let json = serde_json::json!({
            "received": n,
            "content_length": length.map(|v| v.to_str().unwrap().to_string()),
            "transfer_encoding": chunked.map(|v| v.to_str().unwrap().to_string()),
        });
        Response::new(common::full(json.to_string()))
    })
    .await
}

fn route(name: &str, path: &str, upstream: Option<&str>, plugins: &str) -> String {
    let up = upstream.map_or(String::new(), |u| format!("\n    upstream: {u}"));
    format!(
        "  - name: {name}\n    match: {{ paths: [\"{path}\"] }}{up}\n    plugins:\n      custom:\n{plugins}"
    )
}

fn upstream_yaml(name: &str, url: &str, extra: &str) -> String {
    format!("  {name}:\n    targets: [{{ url: \"{url}\" }}]\n{extra}")
}

// ---------------------------------------------------------------------------------------------
// 1. Streaming rewrite: 1 GiB each way in flat memory.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_filter_upper_cases_a_1_gib_response_in_flat_memory() {
    let _one = BIG.lock().await;
    let up = alphabet_upstream().await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &route(
            "upper",
            "/",
            Some("up"),
            "        upper: { response: true }\n",
        ),
    )
    .await;
    let client = common::client();
    // Warm up: the first exchange allocates the connection pools and buffers.
    let resp = client.get(gw.url("/alphabet/100000")).send().await.unwrap();
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 100_000);
    assert!(check_upper(&body, 0, true), "the warm-up is upper-cased");

    let watch = RssWatch::start();
    let started = Instant::now();
    let total = tokio::time::timeout(Duration::from_secs(300), async {
        let resp = client
            .get(gw.url(&format!("/alphabet/{GIB}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers().get("content-length"),
            None,
            "a streaming filter leaves the length unknown"
        );
        let mut stream = resp.bytes_stream();
        let (mut n, mut i) = (0u64, 0u64);
        while let Some(c) = stream.next().await {
            let c = c.unwrap();
            assert!(
                check_upper(&c, n, i % 256 == 0),
                "chunk {i} at byte {n} is not the upper-cased alphabet"
            );
            n += c.len() as u64;
            i += 1;
        }
        n
    })
    .await
    .expect("1 GiB through the filter within 300 s");
    let secs = started.elapsed().as_secs_f64();
    let (base, growth) = watch.growth();
    eprintln!(
        "1 GiB response through `upper`: {secs:.1} s ({:.0} MiB/s), RSS {base} KiB + {growth} KiB",
        1024.0 / secs
    );
    assert_eq!(total, GIB, "every byte arrived");
    assert!(
        growth < MAX_GROWTH_KIB,
        "resident memory grew by {growth} KiB (from {base} KiB) while 1 GiB streamed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_filter_upper_cases_a_1_gib_request_in_flat_memory() {
    let _one = BIG.lock().await;
    let up = alphabet_upstream().await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), "    timeout: 300s\n"),
        &route(
            "upper",
            "/",
            Some("up"),
            "        upper: { request: true }\n",
        ),
    )
    .await;
    let client = common::client();
    let resp = client
        .post(gw.url("/upload"))
        .body(alphabet(100_000))
        .send()
        .await
        .unwrap();
    let warm: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(warm["received"], 100_000, "{warm}");

    let watch = RssWatch::start();
    let started = Instant::now();
    let chunk = Bytes::from(alphabet(ALPHABET_CHUNK));
    let chunks = (GIB / ALPHABET_CHUNK as u64) as usize;
    let tail = chunk.slice(..(GIB % ALPHABET_CHUNK as u64) as usize);
    let stream = futures_util::stream::iter(
        std::iter::repeat_n(chunk, chunks)
            .chain(std::iter::once(tail))
            .map(Ok::<_, Infallible>),
    );
    let resp = tokio::time::timeout(
        Duration::from_secs(300),
        client
            .post(gw.url("/upload"))
            .header("content-length", GIB.to_string())
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    )
    .await
    .expect("1 GiB through the filter within 300 s")
    .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let (base, growth) = watch.growth();
    eprintln!(
        "1 GiB request through `upper`: {secs:.1} s ({:.0} MiB/s), RSS {base} KiB + {growth} KiB",
        1024.0 / secs
    );
    assert_eq!(status, StatusCode::OK, "{text}");
    let got: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        got["received"], GIB,
        "the upstream got every byte, upper-cased"
    );
    assert_eq!(
        got["content_length"],
        serde_json::Value::Null,
        "a streaming request filter removes Content-Length"
    );
    assert_eq!(got["transfer_encoding"], "chunked", "{got}");
    assert!(
        growth < MAX_GROWTH_KIB,
        "resident memory grew by {growth} KiB (from {base} KiB) while 1 GiB streamed"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Buffered JSON rewrite, with the right Content-Length, over HTTP/1.1 and HTTP/2.

/// An upstream with a JSON document at `/doc` (and a large one at `/big`), and an echo of any
/// POST: the `Content-Length` it got, the bytes it got, and the body as JSON.
async fn json_upstream() -> common::Upstream {
    common::upstream(|req: Request<Incoming>| async move {
        match req.uri().path() {
            "/doc" => Response::builder()
                .header("content-type", "application/json")
                .body(common::full(r#"{"id":7,"name":"widget"}"#))
                .unwrap(),
            "/big" => Response::builder()
                .header("content-type", "application/json")
                .body(common::full(big_json()))
                .unwrap(),
            "/not-json" => Response::new(common::full("plain words")),
            _ => {
                let length = req
                    .headers()
                    .get("content-length")
                    .map(|v| v.to_str().unwrap().to_string());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let json = serde_json::json!({
                    "content_length": length,
                    "received": body.len(),
                    "body": serde_json::from_slice::<serde_json::Value>(&body).ok(),
                });
                Response::new(common::full(json.to_string()))
            }
        }
    })
    .await
}

/// About 100 KB of JSON.
fn big_json() -> String {
    let items: Vec<String> = (0..4000).map(|i| format!("\"item-{i:05}\"")).collect();
    format!("{{\"items\":[{}]}}", items.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_phase_replaces_a_json_response_with_the_right_length() {
    let up = json_upstream().await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &route(
            "stamp",
            "/",
            Some("up"),
            "        json_stamp: { max: 65536, response: true }\n",
        ),
    )
    .await;
    for (client, version) in clients() {
        let resp = client.get(gw.url("/doc")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), version);
        let length: usize = resp.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            length,
            body.len(),
            "{version:?}: Content-Length is the new length"
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 7, "name": "widget", "stamp": "response"}),
            "{version:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_phase_replaces_a_json_request_with_the_right_length() {
    let up = json_upstream().await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &route(
            "stamp",
            "/",
            Some("up"),
            "        json_stamp: { max: 65536, request: true }\n",
        ),
    )
    .await;
    for (client, version) in clients() {
        // With a length, and streamed without one (chunked over HTTP/1.1).
        for streamed in [false, true] {
            let doc = br#"{"order":42,"lines":["a","b"]}"#;
            let req = client.post(gw.url("/echo"));
            let req = if streamed {
                let parts = [&doc[..10], &doc[10..]].map(|p| Ok::<_, Infallible>(p.to_vec()));
                req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    parts,
                )))
            } else {
                req.body(doc.to_vec())
            };
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.version(), version);
            let got: serde_json::Value = resp.json().await.unwrap();
            let what = format!("{version:?}, streamed: {streamed}: {got}");
            assert_eq!(
                got["body"],
                serde_json::json!({"order": 42, "lines": ["a", "b"], "stamp": "request"}),
                "{what}"
            );
            assert_eq!(
                got["content_length"],
                got["received"].to_string(),
                "the upstream's Content-Length is the length it got: {what}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Buffered caps.

async fn assert_problem(resp: reqwest::Response, status: StatusCode) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "a problem body"
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["status"], status.as_u16(), "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_a_buffered_cap_gets_413_and_never_reaches_the_upstream() {
    let up = json_upstream().await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &route(
            "stamp",
            "/",
            Some("up"),
            "        json_stamp: { max: 64, request: true }\n",
        ),
    )
    .await;
    for (client, version) in clients() {
        let resp = client
            .post(gw.url("/echo"))
            .body(big_json())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), version);
        assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
    }
    assert_eq!(up.requests(), 0, "nothing reached the upstream");
    // Within the cap it goes through.
    let resp = common::client()
        .post(gw.url("/echo"))
        .body(r#"{"small":true}"#)
        .send()
        .await
        .unwrap();
    let got: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(got["body"]["stamp"], "request", "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_a_buffered_cap_passes_untouched_or_fails_as_configured() {
    let up = json_upstream().await;
    let routes = [
        route(
            "pass",
            "/pass",
            Some("up"),
            "        json_stamp: { max: 1024, response: true }\n",
        ),
        route(
            "fail",
            "/fail",
            Some("up"),
            "        json_stamp: { max: 1024, response: true, fail_over_cap: true }\n",
        ),
    ]
    .concat();
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &routes.replace("upstream: up", "upstream: up\n    strip_prefix: true"),
    )
    .await;
    let big = big_json();
    for (client, version) in clients() {
        let resp = client.get(gw.url("/pass/big")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), version);
        let body = resp.bytes().await.unwrap();
        assert!(
            body == big.as_bytes(),
            "{version:?}: the body over the cap passes byte for byte ({} bytes, not {})",
            body.len(),
            big.len()
        );
        // Under the cap, the same route stamps.
        let small: serde_json::Value = client
            .get(gw.url("/pass/doc"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(small["stamp"], "response");

        let resp = client.get(gw.url("/fail/big")).send().await.unwrap();
        assert_problem(resp, StatusCode::BAD_GATEWAY).await;
        // A body the plugin cannot read fails the same way, with the plugin's status.
        let resp = client.get(gw.url("/fail/not-json")).send().await.unwrap();
        let v = assert_problem(resp, StatusCode::BAD_GATEWAY).await;
        assert!(v.to_string().contains("not JSON"), "{v}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Trailers.

/// A GET over HTTP/2 with hyper's client, which reads trailers: status, data, trailers.
async fn h2_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        match f.unwrap().into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    (parts.status, parts.headers, data.into(), trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_adds_a_trailer_over_http2_and_over_http1_chunked() {
    let up = common::upstream(|_req: Request<Incoming>| async move {
        Response::new(common::full("hello, trailers"))
    })
    .await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &route("t", "/", Some("up"), "        trailer: {}\n"),
    )
    .await;

    let (status, _, data, trailers) = h2_get(gw.addr, "/t", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&data[..], b"hello, trailers");
    let trailers = trailers.expect("trailers over HTTP/2");
    assert_eq!(trailers[&X_BODY_BYTES], "15");

    let head = "GET /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n";
    let text = common::raw(
        gw.addr,
        format!("{head}TE: trailers\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    let lower = text.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{text}");
    assert!(lower.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        lower.ends_with("\r\n0\r\nx-body-bytes: 15\r\n\r\n"),
        "the trailer ends the chunked body: {text:?}"
    );
    // Without `TE: trailers` the client said it cannot take them: none are sent.
    let text = common::raw(
        gw.addr,
        format!("{head}\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(text.ends_with("\r\n0\r\n\r\n"), "{text:?}");
}

/// An HTTP/2 cleartext upstream answering gRPC-style: a data frame, then `grpc-status` and
/// `grpc-message` trailers.
async fn grpc_style_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async move {
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", HeaderValue::from_static("0"));
                    t.insert("grpc-message", HeaderValue::from_static("all-good"));
                    let frames = futures_util::stream::iter([
                        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"\0\0\0\0\x03abc"))),
                        Ok(Frame::trailers(t)),
                    ]);
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(BodyExt::boxed(StreamBody::new(frames)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_grpc_trailers_pass_a_streaming_filter_merged_with_its_own() {
    let up = grpc_style_upstream().await;
    let gw = gateway(
        &upstream_yaml("grpc", &format!("http://{up}"), "    protocol: h2c\n"),
        &route("g", "/", Some("grpc"), "        trailer: {}\n"),
    )
    .await;
    let (status, headers, data, trailers) = h2_get(
        gw.addr,
        "/pkg.Service/Call",
        &[("content-type", "application/grpc"), ("te", "trailers")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(&data[..], b"\0\0\0\0\x03abc");
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    assert_eq!(trailers["grpc-message"], "all-good", "{trailers:?}");
    assert_eq!(trailers[&X_BODY_BYTES], "8", "{trailers:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. A plugin's answer that streams.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_answer_streams_its_body() {
    for (i, (client, version)) in clients().into_iter().enumerate() {
        let key = format!("stream-answer-{i}");
        let gw = gateway(
            "",
            &route(
                "s",
                "/",
                None,
                &format!("        stream_answer: {{ key: {key} }}\n"),
            ),
        )
        .await;
        let sh = shared(&key);
        let mut resp =
            tokio::time::timeout(Duration::from_secs(10), client.get(gw.url("/s")).send())
                .await
                .expect("the head arrives before the body is complete")
                .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), version);
        let mut got = Vec::new();
        while got.len() < b"first chunk\n".len() {
            let c = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
                .await
                .expect("the first chunk arrives while the plugin holds the last")
                .unwrap()
                .expect("the body ended early");
            got.extend_from_slice(&c);
        }
        assert_eq!(got, b"first chunk\n");
        assert!(
            !sh.sent_last.load(Ordering::SeqCst),
            "the last chunk was not sent yet"
        );
        sh.release.notify_one();
        let mut rest = Vec::new();
        while let Some(c) = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the rest in time")
            .unwrap()
        {
            rest.extend_from_slice(&c);
        }
        assert_eq!(rest, b"last chunk\n", "{version:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. The logging phase.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logging_phase_sees_a_complete_exchange() {
    let up = common::upstream(|req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        Response::new(common::full(vec![b'r'; 5000]))
    })
    .await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &route(
            "r",
            "/",
            Some("up"),
            "        recorder: { key: log-complete }\n",
        ),
    )
    .await;
    let resp = common::client()
        .post(gw.url("/x"))
        .body(vec![b'q'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), 5000);
    let logs = shared("log-complete").logged(1).await;
    let s = &logs[0];
    assert_eq!(s.status, StatusCode::OK, "{s:?}");
    assert_eq!(s.bytes_received, 1000, "{s:?}");
    assert_eq!(s.bytes_sent, 5000, "{s:?}");
    assert!(s.completed, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logging_phase_sees_a_request_another_plugin_refused() {
    let up = common::counting().await;
    register();
    let gw = common::gateway(&common::config(&format!(
        r#"consumers:
  - name: alice
    api_keys: ["alice-key-0001"]
upstreams:
{}routes:
{}      key_auth: {{}}
"#,
        upstream_yaml("up", &up.url(), ""),
        route(
            "r",
            "/",
            Some("up"),
            "        recorder: { key: log-refused }\n"
        ),
    )))
    .await;
    let resp = common::client()
        .post(gw.url("/x"))
        .body("ignored")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let problem = resp.bytes().await.unwrap();
    let logs = shared("log-refused").logged(1).await;
    let s = &logs[0];
    assert_eq!(s.status, StatusCode::UNAUTHORIZED, "{s:?}");
    assert_eq!(s.bytes_sent, problem.len() as u64, "{s:?}");
    assert!(s.completed, "{s:?}");
    assert_eq!(up.requests(), 0);

    // And with the key, the exchange logs as a success.
    let resp = common::client()
        .post(gw.url("/x"))
        .header("x-api-key", "alice-key-0001")
        .body("counted")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "7");
    let logs = shared("log-refused").logged(2).await;
    assert_eq!(logs[1].status, StatusCode::OK, "{:?}", logs[1]);
    assert_eq!(logs[1].bytes_received, 7, "{:?}", logs[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logging_phase_sees_a_client_that_left_mid_body() {
    // The upstream sends one chunk, then holds the body open until the gateway lets go of it.
    let gone = Arc::new(Notify::new());
    let g = gone.clone();
    let up = common::upstream(move |_req: Request<Incoming>| {
        let gone = g.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from(vec![b'c'; 1000])).await;
                tx.closed().await;
                gone.notify_one();
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
    })
    .await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &route(
            "r",
            "/",
            Some("up"),
            "        recorder: { key: log-left }\n",
        ),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(1000).any(|w| w.iter().all(|&b| b == b'c')) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the first chunk in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        shared("log-left").logs.lock().unwrap().is_empty(),
        "not logged while the body is still going"
    );
    drop(s);
    let logs = shared("log-left").logged(1).await;
    let sum = &logs[0];
    assert_eq!(sum.status, StatusCode::OK, "{sum:?}");
    assert!(!sum.completed, "{sum:?}");
    assert_eq!(sum.bytes_sent, 1000, "{sum:?}");
    tokio::time::timeout(Duration::from_secs(10), gone.notified())
        .await
        .expect("the upstream's body was let go");
}

// ---------------------------------------------------------------------------------------------
// 7. A request body filter refusing mid-stream.

/// An HTTP/2 cleartext upstream that reads each request body and answers with its length.
async fn h2c_counting() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let r = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let n = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        Ok::<_, Infallible>(Response::new(common::full(n.to_string())))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, requests)
}

/// Six uploads to `path` refused mid-body (after the first chunk reached the upstream), each
/// answered `400` with the plugin's problem.
async fn refused_mid_stream(gw: SocketAddr, path: &str, requests: impl Fn() -> u64) {
    for i in 0..6 {
        let before = requests();
        let mut s = TcpStream::connect(gw).await.unwrap();
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        // Let the first chunk go upstream before the bad one comes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while requests() == before {
            assert!(
                Instant::now() < deadline,
                "{path}: request {i} never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        s.write_all(b"4\r\nbad!\r\n0\r\n\r\n").await.unwrap();
        let text = common::read_until_close(&mut s, Duration::from_secs(10)).await;
        assert!(
            text.starts_with("HTTP/1.1 400 "),
            "{path}: request {i}: {text}"
        );
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(text.contains("the body holds a forbidden byte"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_filter_refusing_mid_stream_gets_400_and_spares_the_upstream() {
    let up = common::counting().await;
    let (h2c, h2c_requests) = h2c_counting().await;
    // Passive health at its defaults (5 failures eject) and a breaker that opens after 4
    // requests at half failures: refusals counted against the upstream would trip both.
    let breaker =
        "    circuit_breaker: { failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 10s }\n";
    let gw = gateway(
        &[
            upstream_yaml("h1", &up.url(), breaker),
            upstream_yaml(
                "h2",
                &format!("http://{h2c}"),
                &format!("{breaker}    protocol: h2c\n"),
            ),
        ]
        .concat(),
        &[
            route(
                "h1",
                "/h1",
                Some("h1"),
                "        refuse: { marker: \"!\" }\n",
            ),
            route(
                "h2",
                "/h2",
                Some("h2"),
                "        refuse: { marker: \"!\" }\n",
            ),
        ]
        .concat(),
    )
    .await;
    refused_mid_stream(gw.addr, "/h1", || up.requests() as u64).await;
    refused_mid_stream(gw.addr, "/h2", || h2c_requests.load(Ordering::SeqCst)).await;
    for path in ["/h1", "/h2"] {
        for (client, _) in clients() {
            let resp = client
                .post(gw.url(path))
                .body("all fine")
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert_eq!(
                status,
                StatusCode::OK,
                "{path}: the upstream is still served: {text}"
            );
            assert_eq!(text, "8");
            let resp = client.post(gw.url(path)).body("no!").send().await.unwrap();
            assert_problem(resp, StatusCode::BAD_REQUEST).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_filter_failing_mid_stream_breaks_the_body_off() {
    // The upstream sends its first chunk, and the rest once the test has read that one: the
    // filter sees them as separate frames, and fails on the second.
    let next = Arc::new(Notify::new());
    let n = next.clone();
    let up = common::upstream(move |_req: Request<Incoming>| {
        let next = n.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"hello ")).await;
                next.notified().await;
                let _ = tx.send(Bytes::from_static(b"bad!")).await;
                let _ = tx.send(Bytes::from_static(b" more")).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
            });
            Response::builder()
                .header("content-length", "15")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
    })
    .await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &route(
            "r",
            "/",
            Some("up"),
            "        refuse: { marker: \"!\", response: true }\n        recorder: { key: log-broken }\n",
        ),
    )
    .await;
    // HTTP/1.1: the head and the first chunk, then the connection closes without the last chunk,
    // so the client can tell the body is incomplete.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|w| w == b"hello ") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the first chunk in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    next.notify_one();
    let rest = common::read_until_close(&mut s, Duration::from_secs(10)).await;
    let text = format!("{}{rest}", String::from_utf8_lossy(&got));
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert!(!text.contains("bad!") && !text.contains("more"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the chunked body must not end cleanly: {text:?}"
    );
    // HTTP/2: the stream is reset, and the client sees an error rather than an end.
    let mut resp = common::h2c_client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the first chunk in time")
        .unwrap();
    assert_eq!(first.as_deref(), Some(&b"hello "[..]));
    next.notify_one();
    let read = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the rest in time");
    assert!(read.is_err(), "the body ended as if complete: {read:?}");

    let logs = shared("log-broken").logged(2).await;
    for s in &logs {
        assert!(!s.completed, "{s:?}");
        assert_eq!(s.bytes_sent, 6, "{s:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Framing under a streaming filter.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_filter_sends_http1_chunked_without_content_length() {
    let up = alphabet_upstream().await;
    let gw = gateway(
        &upstream_yaml("up", &up.url(), ""),
        &[
            route(
                "upper",
                "/upper",
                Some("up"),
                "        upper: { response: true }\n",
            ),
            route("plain", "/plain", Some("up"), "        upper: {}\n"),
        ]
        .concat()
        .replace("upstream: up", "upstream: up\n    strip_prefix: true"),
    )
    .await;
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let text = common::raw(gw.addr, &get("/plain/alphabet/52"), Duration::from_secs(10)).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-length: 52"), "{head}");
    assert_eq!(body, "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz");

    let text = common::raw(gw.addr, &get("/upper/alphabet/52"), Duration::from_secs(10)).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(
        body.contains("ABCDEFGHIJKLMNOPQRSTUVWXYZ") && body.ends_with("\r\n0\r\n\r\n"),
        "{body:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_upstreams_answer_is_still_http11_chunked_under_a_streaming_filter() {
    // The gateway speaks its own HTTP version to the client (RFC 9110 §6.2): an HTTP/1.0 origin
    // must not turn the client's HTTP/1.1 exchange into a close-delimited HTTP/1.0 one, which
    // could carry no trailers and end the client's connection.
    // An HTTP/1.0 origin answering with `Content-Length`.
    let up = common::raw_upstream(
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz",
    )
    .await;
    let gw = gateway(
        &upstream_yaml("up", &format!("http://{up}"), ""),
        &route(
            "old",
            "/",
            Some("up"),
            "        upper: { response: true }\n        trailer: {}\n",
        ),
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    for i in 0..2 {
        s.write_all(b"GET /old HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n0\r\nx-body-bytes: 26\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("request {i}: {}", String::from_utf8_lossy(&got)))
                .unwrap();
            assert!(
                n > 0,
                "request {i}: closed after {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(text.contains("ABCDEFGHIJKLMNOPQRSTUVWXYZ".to_ascii_lowercase().as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logging_phase_sees_a_gateway_error_and_the_bytes_as_the_client_sent_them() {
    let down = common::closed_port().await;
    let up = json_upstream().await;
    let gw = gateway(
        &[
            upstream_yaml("down", &format!("http://{down}"), ""),
            upstream_yaml("up", &up.url(), ""),
        ]
        .concat(),
        &[
            route("down", "/down", Some("down"), "        recorder: { key: log-502 }\n"),
            route(
                "stamp",
                "/stamp",
                Some("up"),
                "        json_stamp: { max: 1024, request: true }\n        recorder: { key: log-stamped }\n",
            ),
        ]
        .concat(),
    )
    .await;
    let resp = common::client().get(gw.url("/down")).send().await.unwrap();
    assert_problem(resp, StatusCode::BAD_GATEWAY).await;
    let logs = shared("log-502").logged(1).await;
    assert_eq!(logs[0].status, StatusCode::BAD_GATEWAY, "{:?}", logs[0]);
    assert!(logs[0].completed, "{:?}", logs[0]);

    // The buffered phase makes the body longer; the summary counts what the client sent.
    let doc = r#"{"n":1}"#;
    let resp = common::client()
        .post(gw.url("/stamp"))
        .body(doc)
        .send()
        .await
        .unwrap();
    let got: serde_json::Value = resp.json().await.unwrap();
    assert!(
        got["received"].as_u64().unwrap() > doc.len() as u64,
        "{got}"
    );
    let logs = shared("log-stamped").logged(1).await;
    assert_eq!(logs[0].bytes_received, doc.len() as u64, "{:?}", logs[0]);
}

// ---------------------------------------------------------------------------------------------
// Route targets: a route without an upstream whose plugins do not answer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_target_is_its_plugins_answer_gets_500_when_none_answers() {
    // `recorder` only logs: nothing answers, and there is no upstream to go to.
    let gw = gateway(
        "",
        &route(
            "lonely",
            "/",
            None,
            "        recorder: { key: log-no-answer }\n",
        ),
    )
    .await;
    let resp = common::client().get(gw.url("/x")).send().await.unwrap();
    let v = assert_problem(resp, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("no plugin answered"),
        "{v}"
    );
    // The exchange is still logged, with the status the client got.
    let logs = shared("log-no-answer").logged(1).await;
    assert_eq!(
        logs[0].status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{:?}",
        logs[0]
    );
}
