//! Serving one downstream connection: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) on the same
//! port, head limits and timers (see [`conn`]), and one snapshot load per request.

mod conn;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub use conn::{ConnShared, GuardedIo, HeadLimits, InflightGuard};

use crate::proxy;
use crate::snapshot::{ListenerSpec, Live};

/// What a request knows about its connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's settings when the connection was accepted.
    pub listener: ListenerSpec,
    /// In-flight and upgrade state shared with the stream guard.
    pub shared: Arc<ConnShared>,
    /// Where tunnels register, so shutdown can wait for them.
    pub tunnels: Arc<Tunnels>,
}

/// Counts open tunnels (upgraded connections), which outlive their HTTP connection.
#[derive(Debug, Default)]
pub struct Tunnels {
    open: AtomicUsize,
    closed: Notify,
}

/// Held by a running tunnel.
#[derive(Debug)]
pub struct TunnelToken(Arc<Tunnels>);

impl Tunnels {
    /// Registers a tunnel until the token drops.
    pub fn open(self: &Arc<Self>) -> TunnelToken {
        self.open.fetch_add(1, Ordering::AcqRel);
        TunnelToken(self.clone())
    }

    /// Open tunnels now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no tunnel is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TunnelToken {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// The hyper connection builder for a listener's settings.
pub fn builder(spec: &ListenerSpec) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    {
        let mut h1 = b.http1();
        // Heads are validated by the guard first; hyper's buffer only needs to hold one.
        h1.max_buf_size((spec.limits.max_head + 4096).max(8192))
            .timer(TokioTimer::new());
        if spec.limits.max_headers != 100 {
            h1.max_headers(spec.limits.max_headers);
        }
    }
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(u32::try_from(spec.limits.max_head).unwrap_or(u32::MAX));
    b
}

/// Serves one accepted connection until it closes (or drains, when `watcher`'s listener stops).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    spec: ListenerSpec,
    live: Arc<Live>,
    tunnels: Arc<Tunnels>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let shared = Arc::new(ConnShared::default());
    let builder = builder(&spec);
    let io = TokioIo::new(GuardedIo::new(stream, spec.limits, shared.clone()));
    let info = Arc::new(ConnInfo {
        peer,
        listener: spec,
        shared,
        tunnels,
    });
    let svc = service_fn(move |req| {
        // One atomic load per request: every phase of this request sees this snapshot.
        let snap = live.load_full();
        let info = info.clone();
        async move { Ok::<_, Infallible>(proxy::handle(snap, req, &info).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
