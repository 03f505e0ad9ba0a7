//! Test harness: real gateways on port 0, small real upstreams, raw sockets.
#![allow(dead_code, unreachable_pub)]

pub mod pki;
pub mod redis;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use frontdesk::Gateway;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type UpBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Makes a full body.
pub fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A running test upstream.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests served.
    pub requests: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Starts an HTTP/1.1 upstream (with upgrades) running `handler` for every request.
pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let r = r.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        connections,
        requests,
    }
}

/// An upstream that answers with its name and echoes method, path and headers as JSON.
pub async fn echo(name: &'static str) -> Upstream {
    upstream(move |req: Request<Incoming>| async move {
        let mut headers = serde_json::Map::new();
        for k in req.headers().keys() {
            let joined: Vec<&str> = req
                .headers()
                .get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap_or(""))
                .collect();
            headers.insert(k.to_string(), joined.join(",").into());
        }
        let body = serde_json::json!({
            "name": name,
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "headers": headers,
        });
        Response::builder()
            .header("content-type", "application/json")
            .header("server", "test-upstream")
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "secret")
            .header("keep-alive", "timeout=5")
            .body(full(body.to_string()))
            .expect("response")
    })
    .await
}

/// A gateway running in this process on a config file in a temp dir.
pub struct TestGateway {
    pub gw: Arc<Gateway>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("frontdesk.yaml")
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    /// Replaces the config file (by rename, like editors do); call `gw.reload()` to apply it.
    pub async fn rewrite(&self, yaml: &str) {
        write_atomic(&self.path(), yaml);
    }
}

pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A minimal config with one listener named `public` on port 0.
pub fn config(body: &str) -> String {
    format!("version: 1\nserver: {{ drain_timeout: 5s }}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n{body}")
}

/// Starts a gateway on `yaml` (written to a temp dir).
pub async fn gateway(yaml: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let gw = Gateway::start(&path).await.expect("gateway starts");
    let addr = gw.local_addr("public").await.expect("listener public");
    TestGateway { gw, addr, dir }
}

/// A plain HTTP client without a proxy and without connection reuse surprises.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// An HTTP/2 cleartext client (prior knowledge: h2c on a plain listener), without a proxy.
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client")
}

/// Sends raw bytes and reads until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_until_close(&mut s, wait).await
}

pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP/1.1 response with a content-length body from a kept-alive socket.
pub async fn read_response(s: &mut TcpStream) -> String {
    match try_read_response(s).await {
        Ok(text) => text,
        Err(e) => panic!("no complete response: {e}"),
    }
}

/// Reads one HTTP/1.1 response with a content-length body from any stream (plain or TLS); an
/// early close or 10 s without a byte is an error.
pub async fn try_read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed early after: {}", String::from_utf8_lossy(&out)),
            ));
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Ok(text);
            }
        }
    }
}

/// A port that nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// Parses the upstream echo JSON.
pub async fn echo_json(resp: reqwest::Response) -> serde_json::Value {
    resp.json().await.expect("json body")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_frontdesk")
}

/// Reads VmHWM (peak RSS) of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The real binary running `frontdesk run -c <config>`.
pub struct BinGateway {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Lines of stderr seen so far (the rest keep streaming into the channel).
    pub log: std::sync::mpsc::Receiver<String>,
}

impl BinGateway {
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("frontdesk.yaml")
    }
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }
    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, wait: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for BinGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `yaml` and waits until listener `public` is bound.
pub fn spawn_bin(yaml: &str) -> BinGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let s = spawn_at(&path);
    BinGateway {
        child: s.child,
        addr: s.addr,
        dir,
        log: s.log,
    }
}

/// A binary started by [`spawn_at`].
pub struct Spawned {
    pub child: std::process::Child,
    /// Listener `public`.
    pub addr: SocketAddr,
    /// The admin listener, when the config has one (it is bound before the proxy listeners).
    pub admin: Option<SocketAddr>,
    /// Lines of stderr not read yet.
    pub log: std::sync::mpsc::Receiver<String>,
}

/// Starts `frontdesk run -c path` and waits until listener `public` is bound.
pub fn spawn_at(path: &std::path::Path) -> Spawned {
    spawn_at_with(path, &[])
}

/// [`spawn_at`] with more arguments for `run`.
pub fn spawn_at_with(path: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Spawned {
    spawn_configured(path, |c| {
        c.args(extra);
    })
}

/// [`spawn_at`] with the command adjusted first (more arguments, environment variables).
pub fn spawn_configured(
    path: &std::path::Path,
    configure: impl FnOnce(&mut std::process::Command),
) -> Spawned {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["run", "-c"]).arg(path).env(
        "FRONTDESK_LOG",
        std::env::var("TEST_FRONTDESK_LOG").unwrap_or_else(|_| "info".into()),
    );
    configure(&mut cmd);
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn frontdesk");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[frontdesk] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let address = |line: &str| -> SocketAddr {
        line.split("address=")
            .nth(1)
            .expect("address")
            .split_whitespace()
            .next()
            .expect("addr")
            .parse()
            .expect("socket addr")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut admin = None;
    let addr = loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .expect("gateway did not start in time");
        let line = rx
            .recv_timeout(left)
            .expect("gateway exited before listening");
        if line.contains("admin API listening") {
            admin = Some(address(&line));
        } else if line.contains("listening") && line.contains("listener=public") {
            break address(&line);
        }
    };
    // The admin listener binds after the proxy listeners, so its line may come later.
    let has_admin = std::fs::read_to_string(path).is_ok_and(|t| t.contains("\nadmin:"));
    while admin.is_none() && has_admin {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("admin listener line");
        if line.contains("admin API listening") {
            admin = Some(address(&line));
        }
    }
    Spawned {
        child,
        addr,
        admin,
        log: rx,
    }
}

/// An upstream answering `status` with its name as the body while the flag is set, 200 otherwise.
pub async fn switchable(
    name: &'static str,
    status: u16,
) -> (Upstream, Arc<std::sync::atomic::AtomicBool>) {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = fail.clone();
    let up = upstream(move |_req| {
        let failing = f.load(Ordering::SeqCst);
        async move {
            Response::builder()
                .status(if failing { status } else { 200 })
                .body(full(name))
                .expect("response")
        }
    })
    .await;
    (up, fail)
}

/// An upstream that reads the whole request body and answers with its length in bytes.
pub async fn counting() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let n = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        Response::new(full(n.to_string()))
    })
    .await
}

/// Starts a gateway on `yaml` written to `dir/frontdesk.yaml`; `dir` may already hold files the
/// config names by relative path (certificates, say).
pub async fn gateway_in(dir: tempfile::TempDir, yaml: &str) -> TestGateway {
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let gw = Gateway::start(&path).await.expect("gateway starts");
    let addr = gw.local_addr("public").await.expect("listener public");
    TestGateway { gw, addr, dir }
}

/// A raw upstream for answers hyper would not send: it answers every request head that arrives on
/// a connection with `reply`, as bytes, and ignores request bodies.
pub async fn raw_upstream(reply: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// Runs `frontdesk explain -c CONFIG ARGS…` and returns what it printed.
pub fn explain_cli(config: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin())
        .args(["explain", "-c"])
        .arg(config)
        .args(args)
        .env("FRONTDESK_LOG", "warn")
        .output()
        .expect("explain runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The admin listener's `/metrics` text of a gateway started with an `admin:` section.
pub async fn metrics_text(gw: &TestGateway) -> String {
    let admin = gw.gw.admin_addr().expect("admin listener");
    client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// A tonic health service on h2c; `orders` is serving.
pub async fn health_upstream() -> (tonic_health::server::HealthReporter, SocketAddr) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (reporter, addr)
}
