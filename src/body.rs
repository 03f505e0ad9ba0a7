//! Body types that flow through the proxy without copies: the request body forwarded upstream and
//! the response body sent downstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::observe::Exchange;
use crate::server::InflightGuard;
use crate::snapshot::Snapshot;
use crate::upstream::Lease;

/// Boxed error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The downstream request body on its way upstream, with an optional size limit.
#[derive(Debug)]
pub struct RequestBody {
    /// `None` for a request made by the gateway (a replayed retry or a health probe): no body.
    inner: Option<Incoming>,
    seen: u64,
    limit: u64,
    /// Fired (or dropped) when the body has been sent completely, to start the response timer.
    on_end: Option<tokio::sync::oneshot::Sender<()>>,
    /// Where the bytes read are reported, when the request is observed.
    counted: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// A body that went over the listener's size limit mid-stream.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

impl RequestBody {
    /// Wraps a downstream body; `limit` of `u64::MAX` means none.
    pub fn new(inner: Incoming, limit: u64) -> Self {
        RequestBody {
            inner: Some(inner),
            seen: 0,
            limit,
            on_end: None,
            counted: None,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            seen: 0,
            limit: u64::MAX,
            on_end: None,
            counted: None,
        }
    }

    /// Adds the bytes read to `counter` (the access log's `bytes_in`).
    pub fn counting(mut self, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.counted = Some(counter);
        self
    }

    /// Signals `tx` when the last byte has been read (or the body is dropped).
    pub fn on_end(mut self, tx: tokio::sync::oneshot::Sender<()>) -> Self {
        self.on_end = Some(tx);
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let polled = boxed(Pin::new(inner).poll_frame(cx));
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    crate::observe::count(&this.counted, d.len());
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                }
            }
            Poll::Ready(None) => {
                this.on_end.take().map(|tx| tx.send(()));
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// The response body sent downstream: an upstream's streamed body or a small gateway-made one.
///
/// It carries the connection's in-flight guard, so the connection knows when the response has
/// been fully sent (or abandoned) and its idle timer may start.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    _guard: Option<InflightGuard>,
    /// The upstream connection and in-flight counts, released once this body has been read to
    /// the end (the connection goes back to the pool only then).
    lease: Option<Lease>,
    /// Plugin values released with the body (concurrency slots).
    held: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// The request's record, finished when the body ends or is dropped.
    record: Option<Record>,
}

/// An exchange waiting for its response body to end, and the body bytes sent so far.
#[derive(Debug)]
struct Record {
    /// The request's own snapshot (moved here, not cloned): its observer finishes the record.
    snap: std::sync::Arc<Snapshot>,
    exchange: Box<Exchange>,
    sent: u64,
}

#[derive(Debug)]
enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// Streams an upstream body through; `lease` is finished when it is complete.
    pub fn upstream(b: Incoming, lease: Lease) -> Self {
        ResponseBody {
            kind: Kind::Upstream(b),
            _guard: None,
            lease: Some(lease),
            held: Vec::new(),
            record: None,
        }
    }

    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ResponseBody {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
            _guard: None,
            lease: None,
            held: Vec::new(),
            record: None,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full(None),
            _guard: None,
            lease: None,
            held: Vec::new(),
            record: None,
        }
    }

    /// Keeps `held` until the body is done or dropped.
    pub fn holding(mut self, held: Vec<Box<dyn std::any::Any + Send + Sync>>) -> Self {
        self.held = held;
        self
    }

    /// Attaches the request's record, finished by the snapshot's observer when the body is done
    /// or dropped.
    pub fn observed(mut self, snap: std::sync::Arc<Snapshot>, exchange: Box<Exchange>) -> Self {
        self.record = Some(Record {
            snap,
            exchange,
            sent: 0,
        });
        self
    }

    fn finish_record(&mut self) {
        if let Some(r) = self.record.take() {
            r.snap.observer.finish(r.exchange, r.sent);
        }
    }

    /// Attaches the in-flight guard, released when the body is done or dropped.
    pub fn with_guard(mut self, guard: Option<InflightGuard>) -> Self {
        self._guard = guard;
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let out = match &mut this.kind {
            Kind::Upstream(b) => boxed(Pin::new(b).poll_frame(cx)),
            Kind::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        match &out {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(r), Some(d)) = (&mut this.record, frame.data_ref()) {
                    r.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                // The upstream connection is reusable once its body ended; release the
                // downstream connection's in-flight mark as soon as the last frame is out.
                if let Some(l) = this.lease.take() {
                    l.finish();
                }
                this.held.clear();
                this._guard = None;
                this.finish_record();
            }
            _ => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) => b.size_hint(),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper may never poll a body that is known to be empty; it is complete all the same.
        // A body dropped midway leaves its connection mid-response: that one is not reused.
        if let (Some(l), Kind::Upstream(b)) = (self.lease.take(), &self.kind) {
            if b.is_end_stream() {
                l.finish();
            }
        }
        // A body never polled (HEAD, 204, 304) or abandoned by the client still ends the record.
        self.finish_record();
    }
}

/// A polled `Incoming` frame with its error boxed (the shape both bodies return).
fn boxed(
    p: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    p.map(|frame| frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
}
