//! Serving one downstream connection: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on the same
//! port, or over TLS (HTTP/2 when ALPN chose `h2`); head limits and timers (see [`conn`]), and
//! one snapshot load per request; malformed HTTP/2 requests are reset here (see `proxy::fields`). Each request is handed to
//! [`proxy::handle`]; its response body carries the request's in-flight guard ([`GuardedBody`]).

mod conn;
pub mod h1;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::service::service_fn;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

pub use crate::proxy::{TunnelToken, Tunnels};
pub use crate::snapshot::{HeadLimits, Transfer};
pub use conn::{ConnShared, GuardedBody, GuardedIo, InflightGuard, Wake};

use crate::observe::metrics::ListenerSeries;
use crate::proxy::{self, ConnInfo};
use crate::snapshot::{ListenerSpec, Live, Snapshot};
use crate::tls::client_cert::ClientCert;
use crate::tls::server::{negotiated, ServerTls};
use frontdesk_config::model::Http1Codec;

/// A connection as its requests see it: what the proxy is told, and the in-flight state.
#[derive(Debug)]
struct Conn {
    info: ConnInfo,
    shared: Arc<ConnShared>,
}

impl Conn {
    fn new(
        peer: SocketAddr,
        listener: Arc<ListenerSpec>,
        shared: Arc<ConnShared>,
        tunnels: Arc<Tunnels>,
        client_cert: Option<Arc<ClientCert>>,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            info: ConnInfo::new(peer, listener, tunnels, client_cert),
            shared,
        })
    }
}

/// How long an HTTP/1 keep-alive connection waits idle before it is parked: hyper's per-connection
/// state (an 8 KiB write buffer and the read buffer) is dropped and only the socket is kept, so an
/// idle connection costs about a kilobyte. Busy connections never reach it.
pub const PARK_AFTER: Duration = Duration::from_millis(5);

/// Tells a listener's connections to finish and lets the listener wait for them.
#[derive(Clone, Debug)]
pub struct Drain {
    inner: Arc<DrainInner>,
}

#[derive(Debug)]
struct DrainInner {
    stop: watch::Sender<bool>,
    open: AtomicUsize,
    idle: Notify,
}

/// Held by each connection of a listener.
#[derive(Debug)]
pub struct DrainToken(Arc<DrainInner>);

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: Arc::new(DrainInner {
                stop: watch::channel(false).0,
                open: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }
}

impl Drain {
    /// Registers a connection until the token drops.
    pub fn token(&self) -> DrainToken {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        DrainToken(self.inner.clone())
    }

    /// Asks every connection to finish its current request and close.
    pub fn signal(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Waits until every registered connection has closed.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.inner.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for DrainToken {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Counts a connection in `frontdesk_listener_connections` while it is open.
struct OpenConnection(Arc<ListenerSeries>);

impl OpenConnection {
    fn new(series: &Arc<ListenerSeries>) -> Self {
        series.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(series.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted connection until it closes, times out idle, or `drain` asks it to stop.
///
/// A plain connection holds no HTTP state until it sends its first byte, and again whenever it
/// is parked (see [`PARK_AFTER`]): HTTP/1 connections are served by a fresh hyper connection per
/// busy period on the same socket. On a TLS listener the handshake comes first (bounded by
/// `head_timeout`), and connections are not parked: the TLS session state stays with them.
///
/// The task is the path's own future, boxed: a plain native connection's task holds nothing of
/// the other paths.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    spec: Arc<ListenerSpec>,
    live: Arc<Live>,
    tunnels: Arc<Tunnels>,
    drain: Drain,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    if let Some(tls) = spec.tls.clone() {
        let Some(admitted) = admit(&stream, &spec, &drain) else {
            return Box::pin(std::future::ready(()));
        };
        return Box::pin(serve_tls(stream, peer, tls, spec, live, tunnels, admitted));
    }
    if spec.http1 == Http1Codec::Native {
        // Admitted here, so the task holds no more than the path needs (a future that owns
        // `drain` as well as what `admit` made of it would carry both).
        let Some(admitted) = admit(&stream, &spec, &drain) else {
            // Zero-sized: no allocation.
            return Box::pin(std::future::ready(()));
        };
        return Box::pin(serve_native_plain(
            stream, peer, spec, live, tunnels, admitted,
        ));
    }
    Box::pin(serve_guarded(stream, peer, spec, live, tunnels, drain))
}

/// Registers a connection with its listener's drain and counters; `None` when the listener is
/// already draining.
fn admit(
    stream: &TcpStream,
    spec: &Arc<ListenerSpec>,
    drain: &Drain,
) -> Option<(DrainToken, OpenConnection, watch::Receiver<bool>)> {
    let token = drain.token();
    let open = OpenConnection::new(&spec.series);
    let mut stop = drain.inner.stop.subscribe();
    if *stop.borrow_and_update() {
        return None;
    }
    let _ = stream.set_nodelay(true);
    Some((token, open, stop))
}

/// [`serve`] for plain listeners with the hyper codec.
async fn serve_guarded(
    stream: TcpStream,
    peer: SocketAddr,
    spec: Arc<ListenerSpec>,
    live: Arc<Live>,
    tunnels: Arc<Tunnels>,
    drain: Drain,
) {
    let Some((_token, _open, mut stop)) = admit(&stream, &spec, &drain) else {
        return;
    };
    let shared = Arc::new(ConnShared::default());
    let mut io = GuardedIo::new(stream, spec.limits, shared.clone())
        .with_parking(PARK_AFTER)
        .with_send_timeout(spec.transfer.send_timeout)
        .counting(spec.series.clone());
    let info = Conn::new(peer, spec, shared, tunnels, None);
    let handler = move |req| {
        // One atomic load per request: every phase of this request sees this snapshot.
        let snap = live.load_full();
        respond(snap, req, info.clone())
    };

    // Every phase below is boxed, so the task of an idle connection stays small: only the
    // phase being awaited is allocated.
    let idle = io_idle(&io);
    if Box::pin(park(&mut io, &mut stop, idle)).await != Wake::Ready {
        return;
    }
    if Box::pin(io.is_http2_preface()).await {
        io.set_http2();
        Box::pin(serve_h2(io, boxed_service(handler), peer, stop)).await;
        return;
    }
    let svc = boxed_service(handler);
    loop {
        match Box::pin(serve_h1(io, svc.clone(), peer, &mut stop)).await {
            Some(parked) => io = parked,
            None => return,
        }
        let idle_left = io_idle(&io).saturating_sub(PARK_AFTER);
        if Box::pin(park(&mut io, &mut stop, idle_left)).await != Wake::Ready {
            return;
        }
    }
}

/// A plain connection with the native HTTP/1 codec: the first bytes say HTTP/2 (prior
/// knowledge, served by hyper under the guard) or HTTP/1 (served by [`h1::serve`], which parks
/// idle connections itself).
///
/// Not an `async fn`: rustc keeps an async fn's arguments twice in its future (as passed, and
/// moved into the body); an `async move` block uses what it captured in place. This future is
/// the whole task of an idle connection.
#[allow(clippy::manual_async_fn)] // see above: `async fn` would keep the arguments twice
fn serve_native_plain(
    stream: TcpStream,
    peer: SocketAddr,
    spec: Arc<ListenerSpec>,
    live: Arc<Live>,
    tunnels: Arc<Tunnels>,
    mut admitted: (DrainToken, OpenConnection, watch::Receiver<bool>),
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        // Used where it was captured, and whole: a block that named only the receiver would
        // capture only that field (edition 2021), dropping the drain token and the count as the
        // task starts.
        let (_token, _open, stop) = &mut admitted;
        // Nothing is allocated for the connection until its first byte.
        let first = tokio::select! {
            r = tokio::time::timeout(spec.limits.idle_timeout, stream.readable()) => matches!(r, Ok(Ok(()))),
            _ = stop.changed() => false,
        };
        if !first {
            return;
        }
        if conn::is_http2_preface(&stream).await {
            let shared = Arc::new(ConnShared::default());
            let mut io = GuardedIo::new(stream, spec.limits, shared.clone())
                .with_send_timeout(spec.transfer.send_timeout)
                .counting(spec.series.clone());
            io.set_http2();
            let info = Conn::new(peer, spec, shared, tunnels, None);
            let handler = move |req| {
                let snap = live.load_full();
                respond(snap, req, info.clone())
            };
            // Boxed (in its own statement): inline, hyper's HTTP/2 connection state would make
            // every HTTP/1 connection's task as large.
            let h2 = Box::pin(serve_h2(io, boxed_service(handler), peer, stop.clone()));
            h2.await;
            return;
        }
        let setup = native_setup(&spec, peer, live, tunnels, None, Some(PARK_AFTER));
        h1::serve(stream, setup, stop).await;
    }
}

fn native_setup(
    spec: &Arc<ListenerSpec>,
    peer: SocketAddr,
    live: Arc<Live>,
    tunnels: Arc<Tunnels>,
    client_cert: Option<Arc<ClientCert>>,
    park_after: Option<Duration>,
) -> h1::Setup {
    let mut info = ConnInfo::new(peer, spec.clone(), tunnels, client_cert);
    // The native codec writes an upstream's response lines as they are, and the request id.
    info.raw_heads = true;
    h1::Setup {
        info: Arc::new(info),
        live,
        park_after,
    }
}

/// What serves a connection next: `None` when the phase before ended it.
type Phase<'a> = Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>>;

/// The TLS half of [`serve`]: handshake, then HTTP/2 (ALPN `h2`) or HTTP/1.1 until the
/// connection ends. Never parked.
///
/// The handshake and the protocol each run in their own box, so the task holds neither's state
/// beyond its phase: the handshake's (the TLS acceptor, ~1.5 KiB) is freed when it ends, and an
/// HTTP/1.1 connection holds its codec (~2 KiB, the TLS stream in it) and not HTTP/2's. Before,
/// one future held the largest of all of them and the TLS stream twice (~9 KiB per connection).
#[allow(clippy::manual_async_fn)] // see above: `async fn` would keep the arguments twice
fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<ServerTls>,
    spec: Arc<ListenerSpec>,
    live: Arc<Live>,
    tunnels: Arc<Tunnels>,
    mut admitted: (DrainToken, OpenConnection, watch::Receiver<bool>),
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        // Used where it was captured, and whole: a block that named only the receiver would
        // capture only that field (edition 2021), dropping the drain token and the count as the
        // task starts.
        let (_token, _open, stop) = &mut admitted;
        let next = Box::pin(tls_handshake(stream, peer, tls, spec, live, tunnels, stop)).await;
        if let Some(serving) = next {
            serving.await;
        }
    }
}

/// [`serve_tls`]'s first phase: the handshake, then the protocol's future (not yet polled).
async fn tls_handshake(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<ServerTls>,
    spec: Arc<ListenerSpec>,
    live: Arc<Live>,
    tunnels: Arc<Tunnels>,
    stop: &mut watch::Receiver<bool>,
) -> Phase<'_> {
    // The acceptor is loaded now, so a certificate swap affects only later handshakes.
    let handshake = tls.acceptor().accept(stream);
    let stream = tokio::select! {
        r = tokio::time::timeout(spec.limits.head_timeout, handshake) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
        },
        _ = stop.changed() => return None,
    };
    let negotiated = match negotiated(stream.get_ref().1) {
        Ok(n) => n,
        Err(e) => {
            // Verified but unreadable: refuse rather than serve a client we cannot identify.
            tracing::warn!(%peer, error = %e, "closing a TLS connection");
            return None;
        }
    };
    if !negotiated.h2 && spec.http1 == Http1Codec::Native {
        let setup = native_setup(&spec, peer, live, tunnels, negotiated.client_cert, None);
        return Some(Box::pin(h1::serve(stream, setup, stop)));
    }
    let shared = Arc::new(ConnShared::default());
    let mut io = GuardedIo::new(stream, spec.limits, shared.clone())
        .with_send_timeout(spec.transfer.send_timeout)
        .counting(spec.series.clone());
    let info = Conn::new(peer, spec, shared, tunnels, negotiated.client_cert);
    let handler = move |req| {
        let snap = live.load_full();
        respond(snap, req, info.clone())
    };
    if negotiated.h2 {
        io.set_http2();
        return Some(Box::pin(serve_h2(
            io,
            boxed_service(handler),
            peer,
            stop.clone(),
        )));
    }
    // Without parking the guard never hands the stream back: this serves until the end. Its own
    // box, awaited through a pointer: a block that made the future would keep its arguments too.
    let mut h1 = Box::pin(serve_h1(io, boxed_service(handler), peer, stop));
    Some(Box::pin(async move {
        let _ = h1.as_mut().await;
    }))
}

/// The hyper service: each request's future boxed where it is built. hyper moves the service's
/// future into its own state (HTTP/1: the dispatcher's in-flight slot; HTTP/2: a task per stream,
/// where tokio moves it again); a future of several KiB copied each time cost more than the box.
fn boxed_service<F, Fut>(
    handler: F,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<GuardedBody>,
    Error = h2::Error,
    Future = std::pin::Pin<Box<Fut>>,
> + Clone
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<hyper::Response<GuardedBody>, h2::Error>>,
{
    service_fn(move |req| crate::inplace::pinned(|| handler(req)))
}

/// Serves one request. A malformed HTTP/2 request (RFC 9113 §8.1.1) is a stream error: the
/// service fails with `PROTOCOL_ERROR`, which hyper sends as RST_STREAM; nothing is forwarded and
/// the connection's other streams go on. Every other request gets a response (never an error:
/// on HTTP/1 an error would close the connection without an answer).
// Not an `async fn`, which would keep the request twice in every request's future.
#[allow(clippy::manual_async_fn)]
fn respond(
    snap: Arc<Snapshot>,
    req: hyper::Request<hyper::body::Incoming>,
    conn: Arc<Conn>,
) -> impl std::future::Future<Output = Result<hyper::Response<GuardedBody>, h2::Error>> + Send {
    async move {
        if req.version() == http::Version::HTTP_2 {
            if let Err(e) = proxy::fields::check_h2(req.uri(), req.headers()) {
                tracing::debug!(peer = %conn.info.peer, error = %e, "malformed HTTP/2 request; stream reset");
                return Err(h2::Error::from(h2::Reason::PROTOCOL_ERROR));
            }
        }
        let guard = conn.shared.start_request();
        // The edge: hyper's body becomes the gateway's, once (built in place in its box, not in a
        // local the future would keep).
        let req = Box::new({
            let mut req = req.map(crate::body::Body::from_client);
            crate::body::Upgrade::convert(req.extensions_mut());
            req
        });
        // hyper's codecs say nothing of the fields: every lookup is made.
        let resp = proxy::handle(snap, req, &conn.info, crate::http1::Seen::ALL).await;
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            conn.shared.mark_upgraded();
        }
        Ok(resp.map(|body| GuardedBody::new(body, guard)))
    }
}

fn io_idle(io: &GuardedIo<TcpStream>) -> Duration {
    io.limits().idle_timeout
}

/// Waits on a parked connection; a drain signal counts as the end of the connection.
async fn park(
    io: &mut GuardedIo<TcpStream>,
    stop: &mut watch::Receiver<bool>,
    idle: Duration,
) -> Wake {
    if *stop.borrow() {
        return Wake::IdleTimeout;
    }
    tokio::select! {
        wake = io.wait_parked(idle) => wake,
        _ = stop.changed() => Wake::IdleTimeout,
    }
}

/// Serves HTTP/1 on `io` until the connection closes (`None`) or goes idle and is parked
/// (`Some`, with the socket back).
#[allow(clippy::manual_async_fn)] // an `async fn` would keep `io` twice (1.5 KiB over TLS)
fn serve_h1<T, S>(
    io: GuardedIo<T>,
    svc: S,
    peer: SocketAddr,
    stop: &mut watch::Receiver<bool>,
) -> impl std::future::Future<Output = Option<GuardedIo<T>>> + Send + '_
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = GuardedBody>
        + Unpin
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async move {
        let limits = io.limits();
        let mut h1 = http1::Builder::new();
        // Head limits and timers are the guard's; hyper's buffer only needs to hold one head.
        h1.max_buf_size((limits.max_head + 4096).max(8192))
            .header_read_timeout(None);
        if limits.max_headers != 100 {
            h1.max_headers(limits.max_headers);
        }
        let mut conn = h1.serve_connection(TokioIo::new(io), svc).with_upgrades();
        let result = tokio::select! {
            r = &mut conn => r,
            _ = stop.changed() => {
                std::pin::Pin::new(&mut conn).graceful_shutdown();
                (&mut conn).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            return None;
        }
        // Upgraded connections have left hyper for a tunnel; closed ones are done.
        let parts = conn.into_parts()?;
        let mut guarded = parts.io.into_inner();
        if !guarded.is_parked() || *stop.borrow() {
            return None;
        }
        guarded.unpark(parts.read_buf);
        Some(guarded)
    }
}

/// Spawns hyper's task per HTTP/2 stream the way the listener spawns a connection's: each poll
/// is one turn of the clock ([`crate::clock`]).
#[derive(Clone, Copy, Debug)]
struct TurnExecutor;

impl<F> hyper::rt::Executor<F> for TurnExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(crate::clock::Turned::new(fut));
    }
}

#[allow(clippy::manual_async_fn)] // an `async fn` would keep `io` twice (1.5 KiB over TLS)
fn serve_h2<T, S>(
    io: GuardedIo<T>,
    svc: S,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = GuardedBody> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async move {
        let mut h2 = http2::Builder::new(TurnExecutor);
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(100)
            // Bounds what one connection buffers: a stream holds at most 64 KiB to send to a client
            // that reads slowly (hyper's default: 400 KiB), and a client may send 256 KiB per stream
            // and 1 MiB per connection ahead of an upstream that reads slowly.
            .max_send_buf_size(64 * 1024)
            .initial_stream_window_size(256 * 1024)
            .initial_connection_window_size(1024 * 1024)
            .max_header_list_size(u32::try_from(io.limits().max_head).unwrap_or(u32::MAX));
        let conn = h2.serve_connection(TokioIo::new(io), svc);
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
        }
    }
}
