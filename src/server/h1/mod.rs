//! The native HTTP/1.1 server codec (`server.http1: native`): one connection task reads heads
//! with one `httparse` pass each, frames bodies itself, and writes each response head together
//! with the first body bytes. It replaces hyper's HTTP/1 server and the head guard under it: the
//! limits, `408` for slow heads, the idle timeout and parking live here.
//!
//! A connection's life: wait for a head (idle timer; after [`super::PARK_AFTER`] without bytes
//! the buffers are freed, so an idle connection holds only its socket and this task), parse it,
//! run the exchange (the proxy's future, the request body fed on demand through a [`pipe`],
//! the response written as its body frames arrive, the socket watched for the client leaving),
//! then the next head: pipelined bytes already read are parsed at once.
//!
//! Every refusal closes the connection with a problem+json answer, like the head guard's.

pub mod encode;
pub mod head;
pub mod pipe;
mod tunnel;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use self::encode::{ForRequest, Out};
use self::head::{Framing, HeaderSlots, Refusal};
use self::pipe::PipeTx;
use crate::body::{Body, BodyError, ClientBodyError, UpgradedIo};
use crate::clock;
use crate::http1::decode::{Decoded, Decoder};
use crate::http1::Outbox;
use crate::proxy::{self, error_response, ResponseBody};
use crate::snapshot::Live;

use crate::http1::READ_CHUNK;

/// Output buffered before it is written even though the body has more ready.
const WRITE_AT: usize = 64 * 1024;

/// Unread request body bytes drained after a response to keep the connection; beyond this it
/// is closed instead.
const DRAIN_MAX: u64 = 64 * 1024;

/// A stream the codec can serve: readable readiness lets a parked connection wait without a
/// buffer.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Reads once into `buf`'s spare capacity (reserving room when little is left). `Ok(0)`: EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_CHUNK);
        }
        // tokio's `read_buf` reads into the spare capacity without zeroing it first; dropping
        // it while pending loses nothing.
        let read = tokio::io::AsyncReadExt::read_buf(self, buf);
        std::pin::pin!(read).poll(cx)
    }

    /// Ready once the stream has bytes (or an error or EOF) to read. Streams that cannot tell
    /// (TLS) say ready at once and are never parked.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

impl Stream for tokio::net::TcpStream {
    fn poll_fill(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        crate::http1::poll_read_tcp(self, cx, buf)
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl Stream for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

/// What serving one connection needs from the server.
pub struct Setup {
    /// The connection as requests see it.
    pub info: Arc<proxy::ConnInfo>,
    /// Where each request takes its snapshot.
    pub live: Arc<Live>,
    /// Free the buffers of an idle connection after this long (plain TCP only).
    pub park_after: Option<Duration>,
}

/// One connection's codec state.
struct Conn<T> {
    io: T,
    setup: Setup,
    rbuf: BytesMut,
    /// What is owed to the client.
    out: Outbox,
    /// Header names and value ranges of the head being built (reused).
    fields: Vec<(HeaderName, usize, usize)>,
    /// The client sent EOF while bytes remained to serve.
    read_closed: bool,
    /// The connection's one timer: idle, head, or send timeout (never two at once).
    timer: crate::http1::LazyTimer,
    /// A write is waiting on the client since the send timeout was armed, until this deadline.
    send_stalled: bool,
    send_deadline: Instant,
}

/// Serves HTTP/1.1 on `io` until the connection closes, idles out, is upgraded, or `stop`
/// changes (then the request in flight finishes first).
pub fn serve<T: Stream>(
    io: T,
    setup: Setup,
    stop: &mut watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + '_ {
    let c = Conn {
        io,
        setup,
        rbuf: BytesMut::new(),
        out: Outbox::default(),
        fields: Vec::new(),
        read_closed: false,
        timer: crate::http1::LazyTimer::default(),
        send_stalled: false,
        send_deadline: Instant::now(),
    };
    c.run(stop)
}

impl<T: Stream> Conn<T> {
    // Not an `async fn`: rustc stores an async fn's arguments twice in its future (as passed,
    // and moved into the body), which doubled the connection state in every connection's task
    // (232 bytes). An `async move` block uses what it captured in place.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self, stop: &mut watch::Receiver<bool>) -> impl Future<Output = ()> + Send + '_ {
        async move {
            let c = &mut self;
            let stop: &watch::Receiver<bool> = stop;
            let mut stopped = StopWait {
                changed: std::pin::pin!(changed(stop.clone())),
                stop,
                waker: None,
            };
            loop {
                // Everything the exchange holds lives in one box (made as soon as the head is parsed):
                // an idle connection's task stays small.
                let (mut ex, upgrade) = match c.next_head(&mut stopped).await {
                    Next::Request(ex, upgrade) => (ex, upgrade),
                    Next::Close => return,
                    Next::Refuse(r) => {
                        c.boxed(|c| Box::pin(c.refuse(r))).await;
                        return;
                    }
                };
                let step = poll_fn(|cx| ex.as_mut().drive(c, cx, stop)).await;
                let feed = ex.as_mut().take_feed();
                drop(ex);
                let keep_alive = match step {
                    Step::Sent { keep_alive } => keep_alive,
                    Step::Upgraded => {
                        let Some(tx) = upgrade else { return };
                        let Conn {
                            io, rbuf, setup, ..
                        } = self;
                        let listener = &setup.info.listener;
                        let io = tunnel::Watched::new(
                            io,
                            listener.transfer.send_timeout,
                            listener.series.clone(),
                        );
                        let _ = tx.send(Box::new(crate::body::Rewind::new(rbuf.freeze(), io)));
                        return;
                    }
                    Step::Broken => return,
                };
                // The response is out: what is left of the request body decides whether the
                // connection can go on.
                let keep_alive = match feed {
                    Some(f) if f.broken => false,
                    Some(mut f) if keep_alive && !f.decoder.is_done() => {
                        f.tx = None;
                        c.boxed(|c| Box::pin(c.drain(&mut f))).await
                    }
                    _ => keep_alive,
                };
                if !keep_alive || stop.has_changed().unwrap_or(true) {
                    Box::pin(c.close()).await;
                    return;
                }
            }
        }
    }
}

/// Ready when `stop` changes (or its sender is gone).
async fn changed(mut stop: watch::Receiver<bool>) {
    let _ = stop.changed().await;
}

/// The stop signal as a connection's idle waits see it: one waiter for the connection's life (a
/// `changed()` per head would add itself to the watch's list and leave it each time), polled
/// only when the task's waker is not the one it holds. Polling it again with the same waker
/// would only lock the watch's list to store that waker again; `has_changed` (an atomic load)
/// tells instead.
struct StopWait<'s, F> {
    changed: Pin<&'s mut F>,
    /// The receiver `changed` was cloned from (its seen version is the same).
    stop: &'s watch::Receiver<bool>,
    /// The waker `changed` last registered.
    waker: Option<std::task::Waker>,
}

impl<F: Future<Output = ()>> StopWait<'_, F> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return match self.stop.has_changed() {
                Ok(false) => Poll::Pending,
                _ => Poll::Ready(()),
            };
        }
        let polled = self.changed.as_mut().poll(cx);
        if polled.is_pending() {
            self.waker = Some(cx.waker().clone());
        }
        polled
    }
}

pin_project_lite::pin_project! {
    /// One exchange's state: the proxy's future, the request body's feed, the response on its way.
    struct Exchange<F> {
        #[pin]
        handler: F,
        feed: Option<Feed>,
        sending: Option<Sending>,
        answer: ForRequest,
        keep_alive: bool,
    }
}

/// An exchange as the connection drives it (its future's type erased, so the connection task
/// holds only a pointer).
trait Drive<T>: Send {
    /// Polls the exchange on connection `c`.
    fn drive(
        self: Pin<&mut Self>,
        c: &mut Conn<T>,
        cx: &mut Context<'_>,
        stop: &watch::Receiver<bool>,
    ) -> Poll<Step>;

    /// Takes the request body's feed once the response is out.
    fn take_feed(self: Pin<&mut Self>) -> Option<Feed>;
}

impl<T: Stream, F: Future<Output = Response<ResponseBody>> + Send> Drive<T> for Exchange<F> {
    fn drive(
        self: Pin<&mut Self>,
        c: &mut Conn<T>,
        cx: &mut Context<'_>,
        stop: &watch::Receiver<bool>,
    ) -> Poll<Step> {
        c.poll_exchange(cx, self, stop)
    }

    fn take_feed(self: Pin<&mut Self>) -> Option<Feed> {
        self.project().feed.take()
    }
}

/// A parsed request with what the codec needs to serve it.
struct Incoming {
    req: Box<Request<Body>>,
    /// The kinds of fields its head named.
    seen: crate::http1::Seen,
    feed: Option<Feed>,
    upgrade: Option<oneshot::Sender<UpgradedIo>>,
    answer: ForRequest,
    keep_alive: bool,
}

/// What ended a wait for a head.
enum Woke {
    Read(io::Result<usize>),
    Park,
    Deadline,
    Stop,
}

enum Next<T> {
    Request(Pin<Box<dyn Drive<T>>>, Option<oneshot::Sender<UpgradedIo>>),
    Close,
    Refuse(Refusal),
}

/// The request body's side of an exchange: decoding from the socket into the pipe.
struct Feed {
    tx: Option<PipeTx>,
    decoder: Decoder,
    /// `100 Continue` is owed once the body is first asked for.
    expect: bool,
    /// The body's framing broke or the client left mid-body: the connection cannot go on.
    broken: bool,
}

impl<T: Stream> Conn<T> {
    /// Waits for the next request head: parses what is buffered first (pipelining), else reads
    /// with the idle timer until the first byte, then the head timer.
    async fn next_head(&mut self, stopped: &mut StopWait<'_, impl Future<Output = ()>>) -> Next<T> {
        let limits = self.setup.info.listener.limits;
        let mut head_deadline: Option<Instant> = None;
        let mut idle_deadline: Option<Instant> = None;
        let mut parked = false;
        loop {
            if !self.rbuf.is_empty() {
                match self.try_head() {
                    Ok(Some(mut req)) => {
                        let upgrade = req.upgrade.take();
                        return Next::Request(self.begin(req), upgrade);
                    }
                    Err(r) => return Next::Refuse(r),
                    Ok(None) => {
                        let only_blank = self.rbuf.iter().all(|&b| b == b'\r' || b == b'\n');
                        if !only_blank && head_deadline.is_none() {
                            head_deadline = Some(clock::tokio_now() + limits.head_timeout);
                        }
                    }
                }
            }
            if self.read_closed {
                return Next::Close;
            }
            let idle = head_deadline.is_none();
            let woke = poll_fn(|cx| {
                // The bytes first: a pipelining client's next head costs no timer.
                if !parked || self.io.poll_readable(cx).is_ready() {
                    if let Poll::Ready(r) = self.poll_fill(cx) {
                        return Poll::Ready(Woke::Read(r));
                    }
                }
                let deadline = match head_deadline {
                    Some(d) => d,
                    None => *idle_deadline
                        .get_or_insert_with(|| clock::tokio_now() + limits.idle_timeout),
                };
                // Idle with nothing buffered: park after a short while.
                let park_at = match (self.setup.park_after, parked) {
                    (Some(p), false) if idle && self.rbuf.is_empty() => Some(
                        deadline
                            .checked_sub(limits.idle_timeout)
                            .unwrap_or(deadline)
                            + p,
                    ),
                    _ => None,
                };
                let wake = park_at.map_or(deadline, |p| p.min(deadline));
                if self.poll_timer(cx, wake).is_ready() {
                    return Poll::Ready(match park_at {
                        Some(p) if p < deadline => Woke::Park,
                        _ => Woke::Deadline,
                    });
                }
                // Ready once at most: the connection closes then.
                if idle && stopped.poll(cx).is_ready() {
                    return Poll::Ready(Woke::Stop);
                }
                Poll::Pending
            })
            .await;
            match woke {
                // EOF, mid-head or not: nothing to answer.
                Woke::Read(Ok(0)) | Woke::Read(Err(_)) | Woke::Stop => return Next::Close,
                Woke::Read(Ok(_)) => parked = false,
                Woke::Park => {
                    self.park();
                    parked = true;
                }
                Woke::Deadline if head_deadline.is_some() => {
                    return Next::Refuse(Refusal {
                        status: StatusCode::REQUEST_TIMEOUT,
                        detail: "the request head did not arrive in time",
                    });
                }
                Woke::Deadline => return Next::Close,
            }
        }
    }

    /// Polls the connection's timer for `deadline` ([`crate::http1::LazyTimer`]).
    fn poll_timer(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        self.timer.poll_until(cx, deadline)
    }

    /// Frees the buffers of an idle connection.
    fn park(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        self.out.release();
        self.fields = Vec::new();
    }

    /// Reads once into the read buffer. `Ok(0)`: EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match self.io.poll_fill(cx, &mut self.rbuf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.setup
                        .info
                        .listener
                        .series
                        .received
                        .fetch_add(n as u64, Ordering::Relaxed);
                } else {
                    self.read_closed = true;
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    /// Parses a complete head at the start of the read buffer into a request.
    fn try_head(&mut self) -> Result<Option<Incoming>, Refusal> {
        let limits = self.setup.info.listener.limits;
        let mut slots = HeaderSlots::new();
        let base = self.rbuf.as_ptr() as usize;
        let Some(p) = head::parse(&self.rbuf, &limits, &mut slots)? else {
            return Ok(None);
        };
        let method =
            Method::from_bytes(p.method.as_bytes()).map_err(|_| bad("malformed request line"))?;
        let target = (p.target.as_ptr() as usize - base, p.target.len());
        self.fields.clear();
        for h in p.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| bad("malformed header name"))?;
            self.fields
                .push((name, h.value.as_ptr() as usize - base, h.value.len()));
        }
        let (len, traits) = (p.len, p.traits);
        let head = self.rbuf.split_to(len).freeze();
        let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
            .map_err(|_| bad("malformed request target"))?;
        // Room for what the proxy adds (`X-Forwarded-*`, `Via`, `X-Request-Id`, `Host`): a
        // full map would rehash on the first of them.
        let mut headers = HeaderMap::with_capacity(self.fields.len() + 8);
        for (name, at, n) in self.fields.drain(..) {
            let value = HeaderValue::from_maybe_shared(head.slice(at..at + n))
                .map_err(|_| bad("control characters in a header value"))?;
            headers.append(name, value);
        }
        let mut req = Box::new(Request::new(Body::empty()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = if traits.http10 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        };
        *req.headers_mut() = headers;
        let decoder = match traits.framing {
            Framing::Length(0) => None,
            Framing::Length(n) => Some((Decoder::Length(n), Some(n))),
            Framing::Chunked => Some((Decoder::chunked(), None)),
        };
        let feed = decoder.map(|(decoder, len)| {
            let (tx, rx) = pipe::pipe(len);
            *req.body_mut() = Body::new(rx);
            Feed {
                tx: Some(tx),
                decoder,
                expect: traits.expect_continue,
                broken: false,
            }
        });
        let upgrade = traits.upgrade.then(|| {
            let (tx, rx) = oneshot::channel();
            req.extensions_mut()
                .insert(crate::body::Upgrade::native(rx));
            tx
        });
        let answer = ForRequest {
            head: req.method() == Method::HEAD,
            http10: traits.http10,
            trailers: traits.trailers,
        };
        Ok(Some(Incoming {
            req,
            seen: traits.seen,
            feed,
            upgrade,
            answer,
            keep_alive: traits.keep_alive,
        }))
    }

    /// A rarely taken phase, boxed where it is made: built inline, its (large) future would
    /// count towards every connection task's size.
    #[inline(never)]
    fn boxed<'a, R>(
        &'a mut self,
        make: impl FnOnce(&'a mut Self) -> Pin<Box<dyn Future<Output = R> + Send + 'a>>,
    ) -> Pin<Box<dyn Future<Output = R> + Send + 'a>> {
        make(self)
    }

    /// Starts an exchange: the proxy's future on the request, with this snapshot.
    fn begin(&self, incoming: Incoming) -> Pin<Box<dyn Drive<T>>> {
        let Incoming {
            req,
            seen,
            feed,
            answer,
            keep_alive,
            ..
        } = incoming;
        // One atomic load per request: every phase of this request sees this snapshot.
        let snap = self.setup.live.load_full();
        let info = self.setup.info.clone();
        crate::inplace::pinned(|| Exchange {
            handler: async move { proxy::handle(snap, req, &info, seen).await },
            feed,
            sending: None,
            answer,
            keep_alive,
        })
    }

    /// Reads and discards the rest of an unread request body, up to [`DRAIN_MAX`] bytes and one
    /// head timeout: true when it ended (the connection can go on).
    async fn drain(&mut self, f: &mut Feed) -> bool {
        let mut budget = DRAIN_MAX;
        let max_trailers = self.setup.info.listener.limits.max_head;
        let deadline = Instant::now() + self.setup.info.listener.limits.head_timeout;
        loop {
            match f.decoder.decode(&mut self.rbuf, max_trailers) {
                Ok(Decoded::End) => return true,
                Ok(Decoded::Data(d)) => match budget.checked_sub(d.len() as u64) {
                    Some(left) => budget = left,
                    None => return false,
                },
                Ok(Decoded::Trailers(_)) => {}
                Ok(Decoded::NeedMore) => {
                    if f.expect {
                        // The client waits for `100 Continue` that never came: it sends nothing
                        // more, so the connection cannot be reused.
                        return false;
                    }
                    match tokio::time::timeout_at(deadline, poll_fn(|cx| self.poll_fill(cx))).await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return false,
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Drives an exchange: feeds the request body as it is asked for, watches for the client
    /// leaving, writes the response as it comes.
    fn poll_exchange<F: Future<Output = Response<ResponseBody>>>(
        &mut self,
        cx: &mut Context<'_>,
        ex: Pin<&mut Exchange<F>>,
        stop: &watch::Receiver<bool>,
    ) -> Poll<Step> {
        let ex = ex.project();
        let mut handler = ex.handler;
        let (feed, sending) = (ex.feed, ex.sending);
        let (answer, keep_alive) = (*ex.answer, *ex.keep_alive);
        // The client's socket returned `Pending` in this poll: its readiness is registered with
        // this waker, so asking again before returning would only ask the reactor once more.
        let mut watched = false;
        loop {
            // The request body, as far as the reader asks for it.
            let mut fed = false;
            if let Some(f) = feed.as_mut().filter(|f| f.tx.is_some()) {
                match self.poll_feed(cx, f, sending.is_none()) {
                    Poll::Ready(()) => {
                        f.tx = None;
                        fed = true;
                    }
                    Poll::Pending => {}
                }
            } else if !watched
                && !self.read_closed
                && self.rbuf.len() < self.setup.info.listener.limits.max_head + READ_CHUNK
                && !feed
                    .as_ref()
                    .is_some_and(|f| f.broken || !f.decoder.is_done())
            {
                // No body to read: watch for the client leaving (reading ahead a bounded
                // amount of a pipelined request).
                match self.poll_fill(cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        if self.rbuf.is_empty() || sending.is_none() {
                            // hyper's rule (no half-closed connections): the client that
                            // closes its side has left; its request is dropped.
                            return Poll::Ready(Step::Broken);
                        }
                    }
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => watched = true,
                }
            }
            let Some(s) = sending.as_mut() else {
                // Before the response, only a `100 Continue` can be owed.
                match self.poll_write_out(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Step::Broken),
                    Poll::Pending => return Poll::Pending,
                }
                match handler.as_mut().poll(cx) {
                    Poll::Ready(resp) => {
                        let draining = stop.has_changed().unwrap_or(true);
                        *sending = Some(self.start(resp, answer, keep_alive && !draining));
                        continue;
                    }
                    Poll::Pending if fed => continue,
                    Poll::Pending => return Poll::Pending,
                }
            };
            match self.poll_send(cx, s) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) if fed => continue,
                Poll::Ready(Ok(false)) => return Poll::Pending,
                Poll::Ready(Err(())) => return Poll::Ready(Step::Broken),
                Poll::Pending => return Poll::Pending,
            }
            // Everything is in the output: write it.
            match self.poll_write_out(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Step::Broken),
                Poll::Pending => return Poll::Pending,
            }
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Step::Broken),
                Poll::Pending => return Poll::Pending,
            }
            if s.upgraded {
                return Poll::Ready(Step::Upgraded);
            }
            return Poll::Ready(Step::Sent {
                keep_alive: s.keep_alive,
            });
        }
    }

    /// Feeds the request body: Ready when it is complete, broken, or its reader is gone.
    fn poll_feed(&mut self, cx: &mut Context<'_>, f: &mut Feed, before_response: bool) -> Poll<()> {
        let max_trailers = self.setup.info.listener.limits.max_head;
        loop {
            if f.decoder.is_done() {
                return Poll::Ready(());
            }
            let Some(tx) = f.tx.as_ref() else {
                return Poll::Ready(());
            };
            match tx.poll_want(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
            if f.expect {
                f.expect = false;
                if before_response && self.rbuf.is_empty() {
                    self.out
                        .buf
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
            }
            match f.decoder.decode(&mut self.rbuf, max_trailers) {
                Ok(Decoded::Data(d)) => tx.send(Ok(http_body::Frame::data(d))),
                Ok(Decoded::Trailers(t)) => tx.send(Ok(http_body::Frame::trailers(t))),
                Ok(Decoded::End) => return Poll::Ready(()),
                Ok(Decoded::NeedMore) => {
                    if self.out.pending() > 0 && before_response {
                        // Send the `100 Continue` before waiting for the body it asks for.
                        if let Poll::Ready(Err(_)) = self.poll_write_out(cx) {
                            return self.feed_failed(f, ClientBodyError::Aborted);
                        }
                    }
                    match self.poll_fill(cx) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                            return self.feed_failed(f, ClientBodyError::Aborted)
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %self.setup.info.peer, error = %e, "malformed request body");
                    return self.feed_failed(f, ClientBodyError::Malformed);
                }
            }
        }
    }

    #[cold]
    fn feed_failed(&mut self, f: &mut Feed, e: ClientBodyError) -> Poll<()> {
        f.broken = true;
        if let Some(tx) = f.tx.take() {
            tx.send(Err(BodyError::Client(e)));
        }
        Poll::Ready(())
    }

    /// Writes the response head into the output buffer.
    fn start(
        &mut self,
        resp: Response<ResponseBody>,
        answer: ForRequest,
        keep_alive: bool,
    ) -> Sending {
        let (parts, body) = resp.into_parts();
        let exact = body.size_hint().exact();
        let (out, keep_alive) = encode::head(
            &mut self.out.buf,
            parts.status,
            &parts.headers,
            encode::Beside {
                raw: body.raw_fields(),
                request_id: body.request_id(),
            },
            exact,
            answer,
            keep_alive,
        );
        let left = match out {
            Out::Length(n) => n,
            _ => 0,
        };
        Sending {
            body: (out != Out::None).then_some(body),
            out,
            left,
            trailers: None,
            done: out == Out::None,
            keep_alive,
            upgraded: parts.status == StatusCode::SWITCHING_PROTOCOLS,
        }
    }

    /// Moves response body frames into the output. `Ok(true)`: the body is complete and all of
    /// it is in the output; `Ok(false)`: nothing more for now; `Err`: the response is broken.
    fn poll_send(&mut self, cx: &mut Context<'_>, s: &mut Sending) -> Poll<Result<bool, ()>> {
        loop {
            if s.done {
                return Poll::Ready(Ok(true));
            }
            if self.out.pending() >= WRITE_AT || self.out.holds_piece() {
                match self.poll_write_out(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let Some(body) = s.body.as_mut() else {
                return Poll::Ready(Ok(true));
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => {
                        if d.is_empty() {
                            continue;
                        }
                        match s.out {
                            Out::Length(_) => {
                                if d.len() as u64 > s.left {
                                    tracing::debug!("response body longer than its Content-Length");
                                    return Poll::Ready(Err(()));
                                }
                                s.left -= d.len() as u64;
                                self.out.put(d, b"");
                            }
                            Out::Chunked { .. } => {
                                encode::chunk_size(&mut self.out.buf, d.len());
                                self.out.put(d, b"\r\n");
                            }
                            Out::Close => self.out.put(d, b""),
                            Out::None => {}
                        }
                    }
                    Err(frame) => {
                        if let (Out::Chunked { trailers: true }, Ok(t)) =
                            (s.out, frame.into_trailers())
                        {
                            s.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(None) => {
                    s.body = None;
                    match s.out {
                        Out::Chunked { .. } => {
                            self.out.settle();
                            encode::last_chunk(&mut self.out.buf, s.trailers.as_ref());
                        }
                        Out::Length(_) if s.left > 0 => {
                            tracing::debug!("response body shorter than its Content-Length");
                            return Poll::Ready(Err(()));
                        }
                        _ => {}
                    }
                    s.done = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "response body failed; closing the connection");
                    return Poll::Ready(Err(()));
                }
                Poll::Pending => {
                    // Send what is ready while the body waits.
                    return match self.poll_write_out(cx) {
                        Poll::Ready(Ok(())) => match Pin::new(&mut self.io).poll_flush(cx) {
                            Poll::Ready(Err(_)) => Poll::Ready(Err(())),
                            _ => Poll::Ready(Ok(false)),
                        },
                        Poll::Ready(Err(_)) => Poll::Ready(Err(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    /// Writes all queued output, under the send timeout.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let series = &self.setup.info.listener.series;
        let mut progressed = false;
        let r = self.out.poll_write(&mut self.io, cx, |n| {
            progressed = true;
            series.sent.fetch_add(n as u64, Ordering::Relaxed);
        });
        if progressed {
            self.send_stalled = false;
        }
        match r {
            Poll::Pending => self.poll_send_timeout(cx),
            other => other,
        }
    }

    /// A write waits on the client: fails once none made progress for the send timeout.
    fn poll_send_timeout(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.send_stalled {
            self.send_stalled = true;
            // The connection's one timer (idle between requests) does this while one is in
            // flight.
            self.send_deadline =
                super::conn::deadline_after(self.setup.info.listener.transfer.send_timeout);
        }
        match self.poll_timer(cx, self.send_deadline) {
            Poll::Ready(()) => Poll::Ready(Err(super::conn::send_timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Answers a refused head, then closes (reading what the client still sends for a moment,
    /// so the close does not reset the connection before the answer is read).
    async fn refuse(&mut self, r: Refusal) {
        self.out.release();
        self.out
            .buf
            .extend_from_slice(&error_response::raw_http1(r.status, r.detail));
        let _ = tokio::time::timeout(
            self.setup.info.listener.transfer.send_timeout,
            poll_fn(|cx| self.poll_write_out(cx)),
        )
        .await;
        self.close().await;
    }

    /// Closes after a response: flushes, shuts the write side, and reads what the client still
    /// sends for up to half a second.
    async fn close(&mut self) {
        let io = &mut self.io;
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = tokio::io::AsyncWriteExt::shutdown(io).await;
            let mut scratch = [0u8; 2048];
            loop {
                match tokio::io::AsyncReadExt::read(io, &mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// A response on its way out.
struct Sending {
    body: Option<ResponseBody>,
    out: Out,
    /// Bytes left of a `Content-Length` body.
    left: u64,
    trailers: Option<HeaderMap>,
    done: bool,
    keep_alive: bool,
    upgraded: bool,
}

enum Step {
    Sent { keep_alive: bool },
    Upgraded,
    Broken,
}

fn bad(detail: &'static str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        detail,
    }
}
