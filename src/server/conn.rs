//! The downstream connection's byte stream, guarded: HTTP/1 head checks and timers that hyper
//! does not offer in the form we need.
//!
//! hyper cannot answer 408 for a slow head, lets `Transfer-Encoding` silently win over
//! `Content-Length`, and has no keep-alive idle timeout separate from its head timeout. So this
//! wrapper sits under hyper and watches each HTTP/1 request head as it arrives (without holding
//! bytes back): from the first byte of a head it runs `head_timeout`; once the head is complete it
//! checks size, header count, target length and framing headers; while no request is in flight it
//! runs `idle_timeout`. A refused head is answered here (problem+json, `Connection: close`) before
//! hyper sees a byte of it, then the connection is closed. HTTP/2 connections (prior-knowledge
//! preface) and upgraded tunnels pass through with only the idle timer (HTTP/2) or nothing (tunnels).
//!
//! On every connection, writes that make no progress for `send_timeout` fail, so hyper closes a
//! connection whose client reads nothing (hyper has no send timeout). Over HTTP/2 the client can
//! also stall the responses by opening no flow-control window while its socket stays readable:
//! response bodies ([`GuardedBody`]) report through [`InflightGuard`] when they wait to be asked
//! for more, and the HTTP/2 timer closes a connection whose waiting responses were not asked for a
//! whole period.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http1::LazyTimer;
use crate::observe::metrics::ListenerSeries;
use crate::proxy::{error_response, ResponseBody};
use crate::snapshot::HeadLimits;

/// A deadline this far away stands for "never" (about 30 years), for durations the clock cannot add.
const FAR_FUTURE_SECS: u64 = 30 * 365 * 24 * 3600;

/// `after` from now; a duration too long for the clock means no deadline, never a panic.
pub(crate) fn deadline_after(after: Duration) -> Instant {
    let now = crate::clock::tokio_now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(FAR_FUTURE_SECS))
}

/// What a write gets once the client read nothing for the send timeout.
pub(crate) fn send_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client read nothing for the send timeout",
    )
}

/// The send timeout of a stream: started by the first write that waits on the client, kept by
/// the ones after it, reset by any progress. Its timer is made at the first such wait, so streams
/// whose client keeps up never allocate it.
#[derive(Debug)]
pub(crate) struct SendClock {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// A write or flush is waiting on the client since the timer was last armed.
    stalled: bool,
}

impl SendClock {
    pub(crate) fn new(timeout: Duration) -> Self {
        SendClock {
            timeout,
            timer: None,
            stalled: false,
        }
    }

    /// A write or flush made progress.
    pub(crate) fn progress(&mut self) {
        self.stalled = false;
    }

    /// A write or flush could not go on: the error once none has made progress for the whole
    /// timeout. The timer is polled, so the task wakes at the deadline even if the socket never
    /// becomes writable.
    pub(crate) fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.stalled {
            self.stalled = true;
            let deadline = deadline_after(self.timeout);
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match self.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(send_timed_out()),
            _ => Poll::Pending,
        }
    }
}

/// State shared between a connection's stream and its requests (one per connection, never
/// shared across connections).
#[derive(Debug, Default)]
pub struct ConnShared {
    heads: AtomicU64,
    started: AtomicU64,
    done: AtomicU64,
    upgraded: AtomicBool,
    waker: AtomicWaker,
    /// Response bodies that handed hyper data and wait to be asked for more: over HTTP/2, a
    /// client that opens no flow-control window leaves them waiting while its socket is idle.
    bodies_waiting: AtomicUsize,
    /// Bumped whenever hyper asks a response body for more: the responses' progress.
    body_polls: AtomicU64,
}

impl ConnShared {
    /// Marks a request as in flight until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.started.fetch_add(1, Ordering::AcqRel);
        InflightGuard {
            shared: self.clone(),
            waiting: false,
        }
    }

    /// Marks the connection as upgraded (a tunnel): no more HTTP checks or timers on it.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn in_flight(&self) -> bool {
        let done = self.done.load(Ordering::Acquire);
        let started = self.started.load(Ordering::Acquire);
        let heads = self.heads.load(Ordering::Acquire);
        started > done || heads > started
    }
}

/// Held by a response body while it is being sent.
#[derive(Debug)]
pub struct InflightGuard {
    shared: Arc<ConnShared>,
    /// Counted in `bodies_waiting`.
    waiting: bool,
}

impl InflightGuard {
    /// hyper asked the response body for more: the response makes progress.
    pub fn asked(&mut self) {
        self.shared.body_polls.fetch_add(1, Ordering::Relaxed);
        if self.waiting {
            self.waiting = false;
            self.shared.bodies_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The response body handed hyper data and has more to come.
    pub fn handed(&mut self) {
        if !self.waiting {
            self.waiting = true;
            self.shared.bodies_waiting.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.waiting {
            self.shared.bodies_waiting.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.done.fetch_add(1, Ordering::AcqRel);
        // The stream may be parked in a read; let it arm the idle timer now.
        self.shared.waker.wake();
    }
}

/// A response body with its request's in-flight guard: the guard is told when the body waits to
/// be asked for more (the send timeout watches that) and is released once the body has ended or
/// is dropped, so the connection knows when its idle timer may start.
#[derive(Debug)]
pub struct GuardedBody {
    body: ResponseBody,
    guard: Option<InflightGuard>,
}

impl GuardedBody {
    /// `body`, holding `guard` until it is done.
    pub fn new(body: ResponseBody, guard: InflightGuard) -> Self {
        GuardedBody {
            body,
            guard: Some(guard),
        }
    }
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Some(g) = &mut this.guard {
            g.asked();
        }
        let out = Pin::new(&mut this.body).poll_frame(cx);
        match &out {
            Poll::Ready(Some(Ok(_))) => {
                // Until hyper asks again, this response waits on the client (or on its HTTP/2
                // flow-control window): the connection's send timeout watches for that.
                if let (Some(g), false) = (&mut this.guard, this.body.is_end_stream()) {
                    g.handed();
                }
            }
            // Release the connection's in-flight mark as soon as the last frame is out.
            Poll::Ready(None) => this.guard = None,
            _ => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// Nothing read yet: HTTP/1 or HTTP/2 prior knowledge?
    Detect,
    Http1,
    Http2,
}

#[derive(Debug)]
enum Scan {
    /// Between requests.
    Idle,
    /// Inside a head; `carry` holds its bytes so far when it spans reads.
    Head { carry: Vec<u8>, len: usize },
    /// A request is in flight; bytes are body or the next pipelined request.
    Busy,
    /// Writing a refusal, then draining briefly so the client reads it before we close.
    Refusing {
        reply: Vec<u8>,
        written: usize,
        drain_until: Option<Instant>,
    },
}

/// A downstream stream under the guard.
#[derive(Debug)]
pub struct GuardedIo<T> {
    inner: T,
    limits: HeadLimits,
    shared: Arc<ConnShared>,
    mode: Mode,
    scan: Scan,
    /// The one timer (idle, head, park, HTTP/2 send watch), re-armed lazily: an HTTP/2
    /// connection switches between its idle and send deadlines twice per request, and each
    /// switch would otherwise be a timer-wheel update.
    timer: LazyTimer,
    /// The armed deadline, `None` when disarmed.
    deadline: Option<Instant>,
    /// Idle HTTP/1 connections are parked after this long: hyper's connection state (its read
    /// and write buffers) is dropped and only the socket is kept until the next request.
    park_after: Option<Duration>,
    /// Whether the armed idle timer parks (true) or closes (false) when it fires.
    timer_parks: bool,
    parked: bool,
    /// hyper wrote since it last flushed, so it may still hold response bytes: not parkable.
    unflushed: bool,
    /// Request body bytes still expected after the last scanned head; `None` when unknown
    /// (chunked) or when bytes beyond the body (a pipelined request) reached hyper. Parking is
    /// only safe when this is `Some(0)`: then hyper holds no unread bytes.
    body_left: Option<u64>,
    /// Bytes hyper had read but not used when the connection was parked; served first.
    prefix: Option<bytes::Bytes>,
    /// The listener's byte counters.
    series: Option<Arc<ListenerSeries>>,
    /// Writes may make no progress for its timeout (a client that reads nothing): then they
    /// fail and hyper closes the connection.
    send: Option<SendClock>,
    /// HTTP/2: whether the armed timer watches sends (streams in flight) rather than idleness,
    /// and the response bodies' progress when it was armed.
    h2_busy: bool,
    polls_seen: u64,
}

/// What a parked connection's wait ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Bytes arrived (or the peer closed): serve the connection again.
    Ready,
    /// `idle_timeout` passed with nothing to read.
    IdleTimeout,
}

impl<T> GuardedIo<T> {
    /// Wraps a freshly accepted stream.
    pub fn new(inner: T, limits: HeadLimits, shared: Arc<ConnShared>) -> Self {
        GuardedIo {
            inner,
            limits,
            shared,
            mode: Mode::Detect,
            scan: Scan::Idle,
            timer: LazyTimer::default(),
            deadline: None,
            park_after: None,
            timer_parks: false,
            parked: false,
            unflushed: false,
            body_left: Some(0),
            prefix: None,
            series: None,
            send: None,
            h2_busy: false,
            polls_seen: 0,
        }
    }

    /// Fails writes that make no progress for `after` (the client stopped reading).
    pub fn with_send_timeout(mut self, after: Duration) -> Self {
        self.send = Some(SendClock::new(after));
        self
    }

    /// Arms the HTTP/2 timer: the idle timeout with no stream in flight, else the send timeout,
    /// which checks once per period that response bodies waiting on the client were asked for
    /// more (without a clock read per frame).
    fn arm_h2(&mut self) {
        if !self.h2_busy {
            let idle = self.limits.idle_timeout;
            self.arm(idle);
            return;
        }
        match self.send.as_ref().map(|c| c.timeout) {
            Some(t) => {
                self.polls_seen = self.shared.body_polls.load(Ordering::Relaxed);
                self.arm(t);
            }
            None => self.deadline = None,
        }
    }

    /// True when, over a whole send timeout, some response body waited on the client and no
    /// response body was asked for more: the client opens no flow-control window (or reads
    /// nothing), so nothing can be sent.
    fn h2_send_stalled(&self) -> bool {
        self.shared.bodies_waiting.load(Ordering::Relaxed) > 0
            && self.shared.body_polls.load(Ordering::Relaxed) == self.polls_seen
    }

    /// Tracks write progress: `pending` when a write or flush could not go on. Returns the error
    /// to give hyper once no progress has been made for the whole send timeout.
    fn send_progress(&mut self, cx: &mut Context<'_>, pending: bool) -> Option<io::Error> {
        let clock = self.send.as_mut()?;
        if !pending {
            clock.progress();
            return None;
        }
        match clock.poll_waiting(cx) {
            Poll::Ready(e) => Some(e),
            Poll::Pending => None,
        }
    }

    /// Counts the bytes read and written in the listener's `series`.
    pub fn counting(mut self, series: Arc<ListenerSeries>) -> Self {
        self.series = Some(series);
        self
    }

    /// Parks idle HTTP/1 connections after `after` without a request.
    pub fn with_parking(mut self, after: Duration) -> Self {
        self.park_after = Some(after);
        self
    }

    /// The limits this stream enforces.
    pub fn limits(&self) -> HeadLimits {
        self.limits
    }

    /// Marks the stream as HTTP/2 (detected by the caller): no head scanning, no parking.
    pub fn set_http2(&mut self) {
        self.mode = Mode::Http2;
    }

    /// True once the guard told hyper the connection ended because it went idle.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// Takes the stream back from a parked hyper connection, with the bytes hyper had not used.
    pub fn unpark(&mut self, leftover: bytes::Bytes) {
        self.parked = false;
        self.deadline = None;
        self.prefix = (!leftover.is_empty()).then_some(leftover);
    }

    /// Arms the idle timer: first the park delay (HTTP/1), then the rest of `idle_timeout`.
    fn enter_idle(&mut self) {
        match self.park_after {
            Some(p)
                if self.mode != Mode::Http2
                    && p < self.limits.idle_timeout
                    && self.body_left == Some(0) =>
            {
                self.timer_parks = true;
                self.arm(p);
            }
            _ => {
                self.timer_parks = false;
                let idle = self.limits.idle_timeout;
                self.arm(idle);
            }
        }
    }

    fn arm(&mut self, after: Duration) {
        self.deadline = Some(deadline_after(after));
    }

    fn timer_armed(&self) -> bool {
        self.deadline.is_some()
    }

    fn timer_fired(&mut self, cx: &mut Context<'_>) -> bool {
        match self.deadline {
            Some(d) => self.timer.poll_until(cx, d).is_ready(),
            None => false,
        }
    }

    fn refuse(&mut self, status: StatusCode, detail: &str) {
        self.scan = Scan::Refusing {
            reply: error_response::raw_http1(status, detail),
            written: 0,
            drain_until: None,
        };
    }
}

use std::future::Future;

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = self.as_mut().read_guarded(cx, buf);
        if let Some(s) = &self.series {
            let n = buf.filled().len().saturating_sub(before);
            if n > 0 {
                s.received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> GuardedIo<T> {
    /// Applies the send timeout to a write's or flush's result.
    fn watch_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match self.send_progress(cx, r.is_pending()) {
            Some(e) => Poll::Ready(Err(e)),
            None => r,
        }
    }

    fn count_sent(&self, r: &Poll<io::Result<usize>>) {
        if let (Some(s), Poll::Ready(Ok(n))) = (&self.series, r) {
            s.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }

    fn read_guarded(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.shared.upgraded.load(Ordering::Acquire) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if let Some(prefix) = this.prefix.as_mut() {
            // Already scanned when first read; hand them to the new hyper connection as they are.
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix.split_to(n));
            if prefix.is_empty() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        this.shared.waker.register(cx.waker());
        loop {
            match &mut this.scan {
                Scan::Refusing {
                    reply,
                    written,
                    drain_until,
                } => {
                    while *written < reply.len() {
                        match Pin::new(&mut this.inner).poll_write(cx, &reply[*written..]) {
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                                return Poll::Ready(Err(refused()))
                            }
                            Poll::Ready(Ok(n)) => *written += n,
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    if drain_until.is_none() {
                        let _ = Pin::new(&mut this.inner).poll_flush(cx);
                        let _ = Pin::new(&mut this.inner).poll_shutdown(cx);
                        *drain_until = Some(Instant::now() + Duration::from_millis(500));
                        this.arm(Duration::from_millis(500));
                    }
                    // Read and discard what the client still sends, so closing does not reset the
                    // connection before it has read our answer.
                    let mut scratch = [0u8; 2048];
                    loop {
                        let mut rb = ReadBuf::new(&mut scratch);
                        match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                            Poll::Ready(Ok(())) if !rb.filled().is_empty() => continue,
                            Poll::Ready(_) => return Poll::Ready(Err(refused())),
                            Poll::Pending => break,
                        }
                    }
                    if this.timer_fired(cx) {
                        return Poll::Ready(Err(refused()));
                    }
                    return Poll::Pending;
                }
                Scan::Busy => {
                    if this.shared.in_flight() {
                        this.deadline = None;
                        let before = buf.filled().len();
                        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                        let n = (buf.filled().len() - before) as u64;
                        this.body_left = this.body_left.and_then(|left| left.checked_sub(n));
                        return r;
                    }
                    this.scan = Scan::Idle;
                    this.enter_idle();
                }
                Scan::Idle if this.mode == Mode::Http2 => {
                    let busy = this.shared.in_flight();
                    if busy != this.h2_busy || !this.timer_armed() {
                        this.h2_busy = busy;
                        this.arm_h2();
                    }
                    return match Pin::new(&mut this.inner).poll_read(cx, buf) {
                        Poll::Pending if this.timer_fired(cx) => {
                            if this.h2_busy && !this.h2_send_stalled() {
                                // Responses moved (or none waits on the client): watch again.
                                this.arm_h2();
                                let _ = this.timer_fired(cx);
                                return Poll::Pending;
                            }
                            Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
                        }
                        other => {
                            if matches!(other, Poll::Ready(Ok(()))) && !this.h2_busy {
                                // Activity: restart the idle clock. Bytes from the client say
                                // nothing about whether it takes what is sent to it.
                                this.deadline = None;
                            }
                            other
                        }
                    };
                }
                Scan::Idle | Scan::Head { .. } => {
                    if matches!(this.scan, Scan::Idle) && !this.timer_armed() {
                        this.enter_idle();
                    }
                    let before = buf.filled().len();
                    match Pin::new(&mut this.inner).poll_read(cx, buf) {
                        Poll::Pending => {
                            if this.timer_fired(cx) {
                                if matches!(this.scan, Scan::Head { .. }) {
                                    this.refuse(
                                        StatusCode::REQUEST_TIMEOUT,
                                        "the request head did not arrive in time",
                                    );
                                    continue;
                                }
                                if this.timer_parks && this.unflushed {
                                    // hyper still holds response bytes it has not written (a slow
                                    // reader): parking now would end the response early. Look again
                                    // after another park delay.
                                    this.enter_idle();
                                    continue;
                                }
                                if this.timer_parks {
                                    // Tell hyper the peer is done: it ends the connection without
                                    // a byte written, and the caller takes the socket back.
                                    this.parked = true;
                                    return Poll::Ready(Ok(()));
                                }
                                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {
                            let new = &buf.filled()[before..];
                            if new.is_empty() {
                                return Poll::Ready(Ok(()));
                            }
                            match this.observe(new) {
                                Ok(()) => return Poll::Ready(Ok(())),
                                Err((status, detail)) => {
                                    // hyper must not see any byte of a refused head.
                                    buf.set_filled(before);
                                    this.refuse(status, detail);
                                    continue;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

impl<T> GuardedIo<T> {
    /// Feeds newly read bytes to the head scanner.
    fn observe(&mut self, new: &[u8]) -> Result<(), (StatusCode, &'static str)> {
        if self.mode == Mode::Detect {
            self.mode = if new.starts_with(b"PRI ") {
                Mode::Http2
            } else {
                Mode::Http1
            };
            if self.mode == Mode::Http2 {
                self.deadline = None;
                return Ok(());
            }
        }
        let prev_len = match &self.scan {
            Scan::Idle => {
                // Tolerate the empty lines RFC 9112 §2.2 allows before a request line.
                if new.iter().all(|&b| b == b'\r' || b == b'\n') {
                    return Ok(());
                }
                let timeout = self.limits.head_timeout;
                self.arm(timeout);
                self.scan = Scan::Head {
                    carry: Vec::new(),
                    len: 0,
                };
                0
            }
            Scan::Head { len, .. } => *len,
            _ => return Ok(()),
        };
        let Scan::Head { carry, .. } = &mut self.scan else {
            return Ok(());
        };
        // Join with earlier partial bytes only when a head spans reads (rare): the common case is
        // scanned in place without a copy.
        let joined: std::borrow::Cow<'_, [u8]> = if prev_len == 0 {
            std::borrow::Cow::Borrowed(new)
        } else {
            carry.extend_from_slice(new);
            std::borrow::Cow::Owned(std::mem::take(carry))
        };
        let limits = self.limits;
        match find_head_end(&joined) {
            Some(end) => {
                let body = check_head(&joined[..end], &limits)?;
                // Account for the bytes after the head in this read: body, or a pipelined request.
                let extra = (joined.len() - end) as u64;
                self.body_left = match body {
                    Some(len) if extra <= len => Some(len - extra),
                    _ => None,
                };
                self.shared.heads.fetch_add(1, Ordering::AcqRel);
                self.scan = Scan::Busy;
                self.deadline = None;
                Ok(())
            }
            None => {
                let leading = super::h1::head::leading_empty_lines(&joined);
                if super::h1::head::partial_too_large(joined.len(), leading, limits.max_head) {
                    return Err((
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "the request head is too large",
                    ));
                }
                if !joined.contains(&b'\n') && joined.len() > limits.max_uri + 64 {
                    return Err((StatusCode::URI_TOO_LONG, "the request target is too long"));
                }
                let total = joined.len();
                let kept = joined.into_owned();
                self.scan = Scan::Head {
                    carry: kept,
                    len: total,
                };
                Ok(())
            }
        }
    }
}

fn refused() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "request refused by the gateway",
    )
}

/// Index just past the blank line that ends a head (`\r\n\r\n` or bare `\n\n`); empty lines
/// before the request line (RFC 9112 §2.2) are not its end.
fn find_head_end(b: &[u8]) -> Option<usize> {
    let mut i = super::h1::head::leading_empty_lines(b);
    if i == b.len() {
        return None;
    }
    while let Some(off) = b[i..].iter().position(|&c| c == b'\n') {
        let nl = i + off;
        let rest = &b[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        i = nl + 1;
    }
    None
}

/// Checks one complete head (request line, header lines, blank line) by the native codec's
/// rules (`server::h1::head`): the body's length when it has one (`None`: chunked).
///
/// Stricter than hyper where hyper would let something through or answer without a body: every
/// refusal here gets a problem+json body.
fn check_head(head: &[u8], limits: &HeadLimits) -> Result<Option<u64>, (StatusCode, &'static str)> {
    use super::h1::head::{self as native, Framing, HeaderSlots};
    let mut slots = HeaderSlots::new();
    match native::parse(head, limits, &mut slots) {
        Ok(Some(p)) => Ok(match p.traits.framing {
            Framing::Length(n) => Some(n),
            Framing::Chunked => None,
        }),
        // The blank line was found, yet the head does not parse as complete.
        Ok(None) => Err((StatusCode::BAD_REQUEST, "malformed request head")),
        Err(r) => Err((r.status, r.detail)),
    }
}

impl GuardedIo<tokio::net::TcpStream> {
    /// Waits, holding no HTTP state, until the parked connection has bytes to read or its idle
    /// time runs out.
    pub async fn wait_parked(&mut self, idle_left: Duration) -> Wake {
        if self.prefix.is_some() {
            return Wake::Ready;
        }
        // The stream's own (already allocated) timer, not a new one: a parked connection
        // should cost as little memory as possible.
        self.arm(idle_left);
        let wake = std::future::poll_fn(|cx| {
            if self.inner.poll_read_ready(cx).is_ready() {
                return Poll::Ready(Wake::Ready);
            }
            if self.timer_fired(cx) {
                return Poll::Ready(Wake::IdleTimeout);
            }
            Poll::Pending
        })
        .await;
        self.deadline = None;
        wake
    }

    /// Peeks at the first bytes: true if they are the HTTP/2 prior-knowledge preface.
    pub async fn is_http2_preface(&mut self) -> bool {
        is_http2_preface(&self.inner).await
    }
}

/// Peeks at a stream's first bytes: true if they are the HTTP/2 prior-knowledge preface.
pub async fn is_http2_preface(stream: &tokio::net::TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; 14];
    for _ in 0..200 {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || !PREFACE.starts_with(&buf[..n]) {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // A partial preface (rare): wait briefly for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.unflushed = true;
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_sent(&r);
        self.watch_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.unflushed = true;
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_sent(&r);
        self.watch_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes the stream only once its own write buffer is empty.
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_ready() {
            self.unflushed = false;
        }
        self.watch_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            // hyper closes what it thinks is a finished connection; the socket stays open.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            max_head: 128,
            max_headers: 2,
            max_uri: 16,
            head_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"),
            Some(24)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nA: b\n\nbody"), Some(21));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn checks_limits_and_framing() {
        let l = limits();
        assert!(check_head(b"GET / HTTP/1.1\r\nA: b\r\n\r\n", &l).is_ok());
        let e = |h: &[u8]| check_head(h, &l).unwrap_err().0;
        assert_eq!(
            e(b"GET /aaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n"),
            StatusCode::URI_TOO_LONG
        );
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(
            e(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nA: 1\r\n  folded\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn a_timeout_the_clock_cannot_add_arms_without_panicking() {
        // `Instant::now() + Duration::MAX` overflows; a deadline must saturate instead.
        let mut io = GuardedIo::new(tokio::io::empty(), limits(), Arc::default());
        io.arm(Duration::MAX);
        io.arm(Duration::from_secs(u64::MAX));
        assert!(io.timer_armed());
    }

    #[test]
    fn head_checks_never_panic_on_arbitrary_bytes() {
        // Random heads built from the bytes that matter to the parser, plus noise.
        let alphabet: &[u8] = b"GET POST / HTTP/1.1\r\n:Content-Length Transfer-Encoding chunked 0123456789 \t\x00\xff";
        let mut rng = fastrand::Rng::with_seed(7);
        let l = HeadLimits {
            max_head: 256,
            max_headers: 4,
            max_uri: 32,
            head_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        for _ in 0..20_000 {
            let len = rng.usize(0..300);
            let head: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let _ = find_head_end(&head);
            let _ = check_head(&head, &l);
        }
    }
}
