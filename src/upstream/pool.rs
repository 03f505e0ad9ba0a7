//! Connections to endpoints: opening them (TCP, then TLS for `https://` targets, then HTTP/1.1 or
//! HTTP/2) and keeping them per worker thread.
//!
//! Written here rather than taken from hyper-util's legacy client because that pool sits behind
//! one mutex shared by every request and spawns a task per request to return connections; the
//! hot path must take no lock shared across requests. Each worker thread keeps its own idle
//! HTTP/1 connections (as nginx workers do) and its own multiplexed HTTP/2 connection per
//! endpoint, so checkout and return are plain thread-local operations.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use frontdesk_config::UpstreamProtocol;
use http::{Request, Response};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::{self, H1};
use super::Endpoint;
use crate::body::{Body, BoxError, ClientBodyError};

/// Largest read buffer of an HTTP/1 upstream connection, and so the largest response head.
pub const READ_BUF: usize = 32 * 1024;
/// Receive window of one HTTP/2 upstream stream.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Bytes one HTTP/2 upstream stream buffers to send.
const SEND_BUF: usize = 64 * 1024;

/// An HTTP/1 connection that carries requests one at a time.
pub type Sender = http1::SendRequest<Body>;
/// An HTTP/2 connection that carries many requests at once.
pub type Sender2 = http2::SendRequest<Body>;

/// A connection to one endpoint.
#[derive(Debug)]
pub enum Conn {
    /// HTTP/1.1 through hyper, exclusively held by one request.
    H1(Sender),
    /// HTTP/2, shared by all requests of this thread to the endpoint.
    H2(Sender2),
    /// HTTP/1.1 through the native client, owned by one request (then by its response body).
    Native(Box<H1>),
}

/// A request that failed on a connection, with the request back when it was never written.
#[derive(Debug)]
pub struct ConnFailure {
    /// What the connection reported.
    pub error: BoxError,
    /// The request, when no byte of it was sent.
    pub unsent: Option<Box<Request<Body>>>,
    /// The client's body failed, as the connection knows without looking inside `error`.
    pub client: Option<ClientBodyError>,
    /// The response deadline the connection kept passed.
    pub timeout: bool,
}

/// A response as a connection hands it over.
pub struct Sent {
    /// Boxed: it moves through every layer of the call, and a pointer is cheaper to move.
    pub resp: Box<Response<Body>>,
    /// Where an HTTP/1 connection (hyper's) goes back when the response is done.
    pub pool: Option<PoolReturn>,
    /// The response's fields as lines, when asked for (native HTTP/1 connections only).
    pub raw: Option<crate::http1::RawFields>,
}

impl Conn {
    /// Waits until the connection can take a request; an error means it closed.
    pub async fn ready(&mut self) -> Result<(), BoxError> {
        match self {
            Conn::H1(s) => s.ready().await.map_err(Into::into),
            Conn::H2(s) => s.ready().await.map_err(Into::into),
            // Checked as it left the idle set (`checkout`), or new: nothing has run since.
            Conn::Native(_) => Ok(()),
        }
    }

    /// True when the connection keeps a response deadline itself (`send`'s `deadline`): a
    /// native one, whose timer stays armed between requests. Others ignore the deadline.
    pub fn keeps_time(&self) -> bool {
        matches!(self, Conn::Native(_))
    }

    /// Sends `req`; on failure the request comes back if it was never written. With the
    /// response comes where an HTTP/1 connection goes back when the response is done (a native
    /// connection's response body takes care of that itself).
    pub async fn send(
        self,
        mut req: Box<Request<Body>>,
        key: u64,
        max_idle: usize,
        raw: Option<h1::FieldRule>,
        added: &[super::AddedField],
        deadline: Option<std::time::Instant>,
    ) -> Result<Sent, ConnFailure> {
        if !matches!(self, Conn::Native(_)) {
            // Only the native client writes fields beside the map.
            for (n, v) in added {
                req.headers_mut().insert(*n, v.clone());
            }
        }
        let (r, conn) = match self {
            Conn::H1(mut s) => {
                chunk_unknown_length(&mut req);
                (s.try_send_request(*req).await, Conn::H1(s))
            }
            Conn::H2(mut s) => (s.try_send_request(*req).await, Conn::H2(s)),
            Conn::Native(conn) => {
                let back = h1::GiveBack { key, max_idle };
                // Boxed: inline, its state would enlarge every request's future, which is moved
                // (copied) several times on its way into the connection's task.
                let sending =
                    crate::inplace::pinned(|| h1::send(conn, req, back, raw, added, deadline));
                return match sending.await {
                    Ok((resp, raw)) => Ok(Sent {
                        resp,
                        pool: None,
                        raw,
                    }),
                    Err(h1::Failure::Reset(error, unsent)) => Err(ConnFailure {
                        error,
                        unsent,
                        client: None,
                        timeout: false,
                    }),
                    Err(h1::Failure::Client(e)) => Err(ConnFailure {
                        error: e.to_string().into(),
                        unsent: None,
                        client: Some(e),
                        timeout: false,
                    }),
                    Err(h1::Failure::Timeout) => Err(ConnFailure {
                        error: "no response head in time".into(),
                        unsent: None,
                        client: None,
                        timeout: true,
                    }),
                };
            }
        };
        match r {
            Ok(mut resp) => {
                // The upstream edge: hyper's body becomes the gateway's, once.
                crate::body::Upgrade::convert(resp.extensions_mut());
                let pool =
                    matches!(conn, Conn::H1(_)).then(|| PoolReturn::new(key, max_idle, conn));
                Ok(Sent {
                    resp: Box::new(resp.map(Body::from_upstream)),
                    pool,
                    raw: None,
                })
            }
            Err(mut e) => {
                let unsent = e.take_message().map(Box::new);
                let error = e.into_error();
                Err(ConnFailure {
                    client: ClientBodyError::within(&error),
                    error: error.into(),
                    unsent,
                    timeout: false,
                })
            }
        }
    }
}

/// Asks hyper's HTTP/1 client to send a body of unknown length chunked. Left to itself it does
/// so only for methods it expects a body with: a `GET` with a chunked body went out as
/// `Content-Length: 0`, its body lost.
fn chunk_unknown_length(req: &mut Request<Body>) {
    use http_body::Body as _;
    let body = req.body();
    if body.is_end_stream()
        || body.size_hint().exact().is_some()
        || req.headers().contains_key(http::header::CONTENT_LENGTH)
    {
        return;
    }
    req.headers_mut().insert(
        http::header::TRANSFER_ENCODING,
        http::HeaderValue::from_static("chunked"),
    );
}

/// Puts a native connection whose response ended cleanly into this thread's idle set.
pub(super) fn give_back_native(key: u64, max_idle: usize, conn: Box<H1>) {
    if max_idle == 0 {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() < max_idle {
            list.push(IdleConn {
                conn: Idle::Native(conn),
                since: crate::clock::tokio_now(),
            });
        }
    });
}

/// Where a connection goes back when its response is done.
#[derive(Debug)]
pub struct PoolReturn {
    key: u64,
    max_idle: usize,
    conn: Conn,
}

impl PoolReturn {
    pub(crate) fn new(key: u64, max_idle: usize, conn: Conn) -> Self {
        PoolReturn {
            key,
            max_idle,
            conn,
        }
    }

    /// Puts an HTTP/1 connection back into this thread's idle set (if there is room); HTTP/2
    /// connections stay shared and need no return.
    pub fn give_back(self) {
        let Conn::H1(sender) = self.conn else {
            return;
        };
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.key).or_default();
            if list.len() < self.max_idle {
                list.push(IdleConn {
                    conn: Idle::Hyper(sender),
                    since: crate::clock::tokio_now(),
                });
            }
        });
    }
}

#[derive(Debug)]
struct IdleConn {
    conn: Idle,
    since: Instant,
}

#[derive(Debug)]
enum Idle {
    Hyper(Sender),
    Native(Box<H1>),
}

/// Keys are already hashes; hashing them again would only cost time.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

thread_local! {
    static IDLE: RefCell<KeyMap<Vec<IdleConn>>> = RefCell::new(HashMap::default());
    static SHARED_H2: RefCell<KeyMap<Sender2>> = RefCell::new(HashMap::default());
}

/// Takes a live connection for `key`: the most recently used idle HTTP/1 connection, or this
/// thread's HTTP/2 connection. Stale ones (idle longer than `idle_timeout` at `now`) are dropped.
pub(crate) fn checkout(
    key: u64,
    h2: bool,
    idle_timeout: Duration,
    now: std::time::Instant,
) -> Option<Conn> {
    if h2 {
        return SHARED_H2.with(|m| {
            let mut m = m.borrow_mut();
            match m.get(&key) {
                Some(s) if !s.is_closed() => Some(Conn::H2(s.clone())),
                Some(_) => {
                    m.remove(&key);
                    None
                }
                None => None,
            }
        });
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(c) = list.pop() {
            if Instant::from_std(now).saturating_duration_since(c.since) > idle_timeout {
                continue;
            }
            match c.conn {
                Idle::Hyper(s) if !s.is_closed() => return Some(Conn::H1(s)),
                Idle::Native(n) if n.is_reusable() => return Some(Conn::Native(n)),
                _ => {}
            }
        }
        None
    })
}

/// Shares a new HTTP/2 connection with later requests of this thread.
pub(crate) fn share_h2(key: u64, conn: &Conn) {
    if let Conn::H2(s) = conn {
        SHARED_H2.with(|m| m.borrow_mut().insert(key, s.clone()));
    }
}

/// Why a new connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `timeouts.connect` passed (TCP and TLS handshakes together).
    #[error("connect timed out")]
    Timeout,
    /// Refused, unreachable, or name resolution failed.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed (untrusted certificate, wrong name, no common protocol).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The endpoint's host is not a valid TLS server name.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// The HTTP handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// How to open connections to an upstream's endpoints: protocol and TLS.
#[derive(Debug)]
pub struct Connector {
    protocol: UpstreamProtocol,
    tls: Option<Tls>,
    /// HTTP/1.1 connections through the native client rather than hyper's.
    native: bool,
}

struct Tls {
    connector: tokio_rustls::TlsConnector,
    /// SNI and verified name override.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `protocol`, with TLS when `tls` is given (built by `upstream::tls`).
    pub fn new(
        protocol: UpstreamProtocol,
        tls: Option<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>)>,
        native: bool,
    ) -> Self {
        Connector {
            protocol,
            native,
            tls: tls.map(|(cfg, server_name)| Tls {
                connector: tokio_rustls::TlsConnector::from(cfg),
                server_name,
            }),
        }
    }

    /// Whether connections speak HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(self.protocol, UpstreamProtocol::H2 | UpstreamProtocol::H2c)
    }

    /// Whether connections are the native HTTP/1.1 client's.
    pub fn is_native_h1(&self) -> bool {
        self.native && !self.is_h2()
    }

    /// Opens a connection to `ep` and starts its driver task; TCP connect and TLS handshake
    /// together get `timeout`.
    pub async fn connect(&self, ep: &Endpoint, timeout: Duration) -> Result<Conn, ConnectError> {
        match tokio::time::timeout(timeout, self.open(ep)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn open(&self, ep: &Endpoint) -> Result<Conn, ConnectError> {
        let stream = TcpStream::connect(&ep.connect_addr).await?;
        let _ = stream.set_nodelay(true);
        let native = self.native && !self.is_h2();
        let Some(tls) = &self.tls else {
            if native {
                return Ok(Conn::Native(H1::new(h1::Io::Tcp(stream))));
            }
            return self.handshake(TokioIo::new(stream)).await;
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => {
                let host = ep
                    .authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                ServerName::try_from(host.to_string())
                    .map_err(|_| ConnectError::ServerName(host.to_string()))?
            }
        };
        let stream = tls
            .connector
            .connect(name, stream)
            .await
            .map_err(ConnectError::Tls)?;
        if native {
            return Ok(Conn::Native(H1::new(h1::Io::Tls(Box::new(stream)))));
        }
        self.handshake(TokioIo::new(stream)).await
    }

    async fn handshake<T>(&self, io: TokioIo<T>) -> Result<Conn, ConnectError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if self.is_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                // What one stream buffers for a client that reads slowly (hyper's default: 2 MiB
                // received, 1 MiB to send), bounded; the connection's window stays at 5 MiB, as
                // it is shared by every stream of this worker thread to the endpoint.
                .initial_stream_window_size(STREAM_WINDOW)
                .max_send_buf_size(SEND_BUF)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            return Ok(Conn::H2(sender));
        }
        // The read buffer bounds what a response waiting on a slow client holds (hyper's default
        // lets it grow to 400 KiB per connection); it must still fit a response head.
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(READ_BUF)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Conn::H1(sender))
    }
}
