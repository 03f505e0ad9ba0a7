//! The response body sent downstream: an upstream's streamed body or a small gateway-made one,
//! with what it releases when it ends (the upstream lease, plugin values, the request's record).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::body::{boxed, BoxError};
use crate::observe::Exchange;
use crate::snapshot::Snapshot;
use crate::upstream::Lease;

/// The response body sent downstream: an upstream's streamed body or a small gateway-made one.
///
/// The server wraps it with the connection's in-flight guard (`server::GuardedBody`), so the
/// connection knows when the response has been fully sent (or abandoned).
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
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
            lease: None,
            held: Vec::new(),
            record: None,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full(None),
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
                // The upstream connection is reusable once its body ended.
                if let Some(l) = this.lease.take() {
                    l.finish();
                }
                this.held.clear();
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
