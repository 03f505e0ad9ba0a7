//! The training load of the profile-guided build (`bench/pgo.sh`): the real binary in front of a
//! small real upstream, driven over real sockets on every row `bench/run.sh` measures.
//!
//! It needs nothing but Rust: the upstream is a hyper server in this process, the certificate is
//! made here (rcgen), and the clients are reqwest's, one connection per client as `wrk` and
//! `h2load -m1` hold one per connection. The rows: the plain proxy over HTTP/1.1, HTTP/1.1 over TLS,
//! h2c (prior knowledge) and h2 over TLS (ALPN), as `bench/run.sh` measures it; then, over HTTP/1.1,
//! a 10 KiB JSON answer gzip'd by the `compression` plugin, and the plugins most routes carry:
//! `key_auth` with a local `rate_limit`, `jwt` (HS256), and `cache` hits. Code the load never runs
//! is laid out as cold by the profile-guided build, so a route a user is likely to run must be
//! here. Metrics and the JSON access log are on, as `bench/run.sh` runs the gateway. Every answer
//! is checked (status, protocol, size, the gzip'd one decoded, the cached one a hit), so a load
//! that stopped exercising a path fails instead of training on errors. Shared by the `pgo-train`
//! example and `tests/pgo_train.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The host name the certificate is issued for; the clients resolve it to the TLS listener.
const HOST: &str = "frontdesk.test";
/// The upstream's plain answer: 100 bytes, as `bench/run.sh`'s.
const SMALL: usize = 100;
/// The consumer's API key and the JWT issuer's secret (both only for this run's gateway).
const API_KEY: &str = "training-key-5b0f3c1d2e";
const JWT_SECRET: &str = "training-secret-9a41c7e2b35d48f0a6e1c2d3b4f5a697";

/// One row of the load, as run.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    /// Answers received and checked.
    pub ok: u64,
}

/// What a training run did.
#[derive(Debug)]
pub struct Report {
    pub rows: Vec<Row>,
    /// The gateway's exit status after `SIGTERM` (the profile is written as it exits).
    pub exit: std::process::ExitStatus,
    /// Lines in the access log when the gateway had exited.
    pub logged: u64,
}

/// How long and how wide.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Each row's length.
    pub per_row: Duration,
    /// Connections per row.
    pub connections: usize,
}

/// Runs the gateway binary at `gateway` with the training config, drives every row through it
/// for `load.per_row`, stops it with `SIGTERM` and waits for it to exit. Any answer that is not
/// what the row expects is an error.
pub async fn train(gateway: &Path, load: Load) -> Result<Report, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let (ca, cert, key) = certificates(dir.path())?;
    let json = Bytes::from(json_body());
    let upstream = upstream(json.clone()).await?;
    let log = dir.path().join("access.log");
    let config = dir.path().join("frontdesk.yaml");
    std::fs::write(&config, config_text(upstream, &cert, &key, &log))
        .map_err(|e| format!("writing the config: {e}"))?;
    let mut gw = Gateway::start(gateway, &config)?;
    let (plain, tls) = (gw.plain, gw.tls);

    let token = jwt()?;
    let rows: [(&'static str, Proto, Kind, SocketAddr); 8] = [
        ("http", Proto::Http1, Kind::Plain, plain),
        ("https", Proto::Http1Tls, Kind::Plain, tls),
        ("h2c", Proto::H2c, Kind::Plain, plain),
        ("h2", Proto::H2Tls, Kind::Plain, tls),
        ("gzip", Proto::Http1, Kind::Gzip, plain),
        ("key", Proto::Http1, Kind::Key, plain),
        ("jwt", Proto::Http1, Kind::Jwt, plain),
        ("cache", Proto::Http1, Kind::Cache, plain),
    ];
    let mut report = Vec::new();
    for (name, proto, kind, addr) in rows {
        let target = Target {
            proto,
            kind,
            addr,
            token: token.clone(),
        };
        let ok = drive(target, &ca, &json, load)
            .await
            .map_err(|e| format!("row {name}: {e}"))?;
        report.push(Row { name, ok });
    }
    let exit = gw.stop()?;
    let logged = std::fs::read(&log)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0);
    Ok(Report {
        rows: report,
        exit,
        logged,
    })
}

/// How the client reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Proto {
    Http1,
    Http1Tls,
    H2c,
    H2Tls,
}

/// Which route, and what its answer must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `/`: the upstream's 100 bytes.
    Plain,
    /// `/bench.json` with `Accept-Encoding: gzip`: gzip'd, decoding to the upstream's JSON.
    Gzip,
    /// `/key` with the consumer's `x-api-key` (`key_auth`, `rate_limit`).
    Key,
    /// `/jwt` with a `Bearer` token (`jwt`).
    Jwt,
    /// `/cached`, which the upstream lets be cached: after the first, a hit.
    Cache,
}

/// One row's requests.
#[derive(Debug, Clone)]
struct Target {
    proto: Proto,
    kind: Kind,
    addr: SocketAddr,
    token: String,
}

/// `load.connections` clients, each on its own connection, asking one after another until the
/// row's time is up. Returns the number of checked answers.
async fn drive(target: Target, ca: &str, json: &Bytes, load: Load) -> Result<u64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..load.connections.max(1) {
        let client = client(target.proto, target.addr, ca)?;
        let (stop, json, target) = (stop.clone(), json.clone(), target.clone());
        tasks.spawn(async move {
            let (mut ok, mut hits) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                hits += u64::from(ask(&client, &target, &json).await?);
                ok += 1;
            }
            Ok::<_, String>((ok, hits))
        });
    }
    tokio::time::sleep(load.per_row).await;
    stop.store(true, Ordering::Relaxed);
    let (mut total, mut hits) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (ok, hit) = done.map_err(|e| format!("client task: {e}"))??;
        total += ok;
        hits += hit;
    }
    // Only the first answers (the clients start together) may have been misses.
    if target.kind == Kind::Cache && hits * 2 < total {
        return Err(format!("only {hits} of {total} answers were cache hits"));
    }
    Ok(total)
}

fn client(proto: Proto, addr: SocketAddr, ca: &str) -> Result<reqwest::Client, String> {
    let anchor = reqwest::Certificate::from_pem(ca.as_bytes())
        .map_err(|e| format!("CA certificate: {e}"))?;
    let b = reqwest::Client::builder()
        // One connection per client, kept alive, answers taken as sent.
        .pool_max_idle_per_host(1)
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .tls_certs_only([anchor])
        .resolve(HOST, addr);
    let b = match proto {
        Proto::Http1 | Proto::Http1Tls => b.http1_only(),
        Proto::H2c | Proto::H2Tls => b.http2_prior_knowledge(),
    };
    b.build().map_err(|e| format!("client: {e}"))
}

/// One request, its answer checked; true when the cache answered it.
async fn ask(client: &reqwest::Client, target: &Target, json: &[u8]) -> Result<bool, String> {
    let path = match target.kind {
        Kind::Plain => "/",
        Kind::Gzip => "/bench.json",
        Kind::Key => "/key",
        Kind::Jwt => "/jwt",
        Kind::Cache => "/cached",
    };
    let url = match target.proto {
        Proto::Http1 | Proto::H2c => format!("http://{}{path}", target.addr),
        Proto::Http1Tls | Proto::H2Tls => format!("https://{HOST}:{}{path}", target.addr.port()),
    };
    let req = client.get(&url);
    let req = match target.kind {
        Kind::Gzip => req.header("accept-encoding", "gzip"),
        Kind::Key => req.header("x-api-key", API_KEY),
        Kind::Jwt => req.bearer_auth(&target.token),
        Kind::Plain | Kind::Cache => req,
    };
    let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    let want = match target.proto {
        Proto::H2c | Proto::H2Tls => reqwest::Version::HTTP_2,
        Proto::Http1 | Proto::Http1Tls => reqwest::Version::HTTP_11,
    };
    if resp.status() != 200 || resp.version() != want {
        return Err(format!(
            "GET {url}: {} over {:?}, expected 200 over {want:?}",
            resp.status(),
            resp.version()
        ));
    }
    let gzipped = resp
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let cache_status = resp
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    let hit = cache_status.as_deref().is_some_and(|s| s.contains("; hit"));
    if target.kind == Kind::Cache
        && !hit
        && cache_status.as_deref().is_none_or(|s| !s.contains("fwd="))
    {
        return Err(format!("GET {url}: Cache-Status {cache_status:?}"));
    }
    if target.kind == Kind::Gzip {
        if !gzipped {
            return Err(format!("GET {url}: not gzip-encoded"));
        }
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .map_err(|e| format!("GET {url}: gzip: {e}"))?;
        if plain != json {
            return Err(format!(
                "GET {url}: the decoded body differs from the upstream's"
            ));
        }
    } else if gzipped || body.len() != SMALL {
        return Err(format!("GET {url}: {} bytes, expected {SMALL}", body.len()));
    }
    Ok(hit)
}

/// An HS256 token of the `training` issuer for the consumer `trainer`, valid for a day.
fn jwt() -> Result<String, String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("clock: {e}"))?
        .as_secs()
        + 86_400;
    let claims = serde_json::json!({ "iss": "training", "sub": "trainer", "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .map_err(|e| format!("token: {e}"))
}

/// A CA (its PEM returned) and a leaf for [`HOST`] signed by it, written to `dir`; returns the
/// CA's PEM and the leaf's certificate and key paths.
fn certificates(dir: &Path) -> Result<(String, PathBuf, PathBuf), String> {
    let err = |e: rcgen::Error| format!("certificate: {e}");
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "frontdesk training CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let issuer =
        CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(err)?).map_err(err)?;
    let mut leaf = CertificateParams::new(vec![HOST.to_string()]).map_err(err)?;
    leaf.distinguished_name.push(DnType::CommonName, HOST);
    let key = KeyPair::generate().map_err(err)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
    let (c, k) = (dir.join("leaf.pem"), dir.join("leaf.key"));
    std::fs::write(&c, cert.pem()).map_err(|e| format!("writing {}: {e}", c.display()))?;
    std::fs::write(&k, key.serialize_pem()).map_err(|e| format!("writing {}: {e}", k.display()))?;
    Ok((issuer.pem(), c, k))
}

/// The 10 KiB JSON array `bench/run.sh`'s gzip row serves (records of the same shape).
fn json_body() -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < 10 * 1024 - 120 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":{i},"name":"item {i}","score":{},"tags":["bench","json"]}}"#,
            (i * 37) % 100
        ));
        i += 1;
    }
    s.push(']');
    s.into_bytes()
}

/// The upstream: `/bench.json` is `json`, anything else 100 bytes of text (`/cached` for an
/// hour); HTTP/1.1 keep-alive.
async fn upstream(json: Bytes) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("upstream: {e}"))?;
    let small = Bytes::from(vec![b'x'; SMALL]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (small, json) = (small.clone(), json.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (body, kind) = if req.uri().path() == "/bench.json" {
                        (json.clone(), "application/json")
                    } else {
                        (small.clone(), "text/plain")
                    };
                    let cache = if req.uri().path() == "/cached" {
                        "max-age=3600"
                    } else {
                        "no-store"
                    };
                    async move {
                        Response::builder()
                            .header("content-type", kind)
                            .header("cache-control", cache)
                            .body(Full::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The gateway's config: a plain listener and a TLS one (ALPN h2 and http/1.1); a route to the
/// upstream and one that gzips, as `bench/run.sh`'s rows configure them, and one per plugin row.
fn config_text(upstream: SocketAddr, cert: &Path, key: &Path, log: &Path) -> String {
    format!(
        r#"version: 1
server:
  worker_threads: 1
listeners:
  - name: public
    address: 127.0.0.1:0
  - name: tls
    address: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert: "{cert}", key: "{key}" }}
upstreams:
  origin:
    targets:
      - url: http://{upstream}
consumers:
  - name: trainer
    api_keys: ["{API_KEY}"]
routes:
  - name: gzip
    match: {{ paths: ["/bench.json"] }}
    upstream: origin
    plugins:
      compression: {{ encodings: [gzip], level: {{ gzip: 5 }}, min_size: 1KiB }}
  - name: key
    match: {{ paths: ["/key"] }}
    upstream: origin
    plugins:
      key_auth: {{}}
      rate_limit: {{ store: local, limits: [{{ name: all, key: consumer, rate: 100000000, per: 1s }}] }}
  - name: jwt
    match: {{ paths: ["/jwt"] }}
    upstream: origin
    plugins:
      jwt:
        issuers:
          - {{ issuer: training, secret: "{JWT_SECRET}", algorithms: [HS256] }}
  - name: cached
    match: {{ paths: ["/cached"] }}
    upstream: origin
    plugins:
      cache: {{}}
  - name: all
    match: {{ paths: ["/"] }}
    upstream: origin
observability:
  metrics: {{ enabled: true }}
  access_log: {{ output: "{log}" }}
"#,
        cert = cert.display(),
        key = key.display(),
        log = log.display(),
    )
}

/// The gateway process and its two listeners.
struct Gateway {
    child: Child,
    plain: SocketAddr,
    tls: SocketAddr,
}

impl Gateway {
    /// Starts `bin run -c config` and waits for both listeners' "listening" lines.
    fn start(bin: &Path, config: &Path) -> Result<Gateway, String> {
        use std::io::BufRead;
        let mut child = Command::new(bin)
            .args(["run", "-c"])
            .arg(config)
            .env("FRONTDESK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                // Everything the gateway says goes on to this process's stderr.
                eprintln!("[frontdesk] {line}");
                let _ = tx.send(line);
            }
        });
        let (mut plain, mut tls) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (plain, tls) = loop {
            if let (Some(p), Some(t)) = (plain, tls) {
                break (p, t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                return Err(
                    "the gateway did not start listening in time (see its log above)".into(),
                );
            };
            if !line.contains("listening") {
                continue;
            }
            let addr = line
                .split("address=")
                .nth(1)
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if line.contains("listener=public") {
                plain = addr;
            } else if line.contains("listener=tls") {
                tls = addr;
            }
        };
        Ok(Gateway { child, plain, tls })
    }

    /// `SIGTERM`, then waits (at most 30 s) for the process to exit.
    fn stop(&mut self) -> Result<std::process::ExitStatus, String> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !sent.success() {
            return Err("kill -TERM failed".into());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| format!("wait: {e}"))? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err("the gateway did not exit within 30 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
