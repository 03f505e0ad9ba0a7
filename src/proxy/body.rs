//! The response body sent downstream: a [`Body`] (an upstream's, a plugin's, or a gateway-made
//! one) with what is released when it ends: the upstream lease, and the end callbacks (the
//! request's record, the plugins' logging phase, their context, which holds concurrency slots).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Frame, SizeHint};

use crate::body::{Body, BodyError};
use crate::observe::Exchange;
use crate::snapshot::Snapshot;
use crate::upstream::Lease;

/// How a response body ended, for its end callbacks.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    /// Data bytes handed to the connection.
    pub sent: u64,
    /// True when the body was read to its end; false when it was dropped first (the client left)
    /// or failed.
    pub complete: bool,
}

/// Runs once when a response body ends or is dropped.
pub type EndCallback = Box<dyn FnOnce(Ended) + Send>;

/// The response body sent downstream.
///
/// The server wraps it with the connection's in-flight guard (`server::GuardedBody`), so the
/// connection knows when the response has been fully sent (or abandoned).
pub struct ResponseBody {
    body: Body,
    /// The upstream connection and in-flight counts, released once this body has been read to
    /// the end (the connection goes back to the pool only then).
    lease: Option<Lease>,
    sent: u64,
    /// Called once when the body ends or is dropped: the callbacks attached, chained in order.
    /// Only plugins attach any (the record has its own slot); one box, not a list, as every
    /// response moves this body several times and each move copies what it holds inline.
    on_end: Option<EndCallback>,
    /// The request's record, finished after the callbacks.
    record: Option<(std::sync::Arc<Snapshot>, Box<Exchange>)>,
    /// The request id, for the native HTTP/1 server to write after the map's fields (which then
    /// hold no `X-Request-Id`); other servers find it in the map.
    request_id: Option<HeaderValue>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("body", &self.body)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// A body sent as it is.
    pub fn new(body: Body) -> Self {
        ResponseBody {
            body,
            lease: None,
            sent: 0,
            on_end: None,
            record: None,
            request_id: None,
        }
    }

    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ResponseBody::new(Body::full(b))
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody::new(Body::empty())
    }

    /// Finishes `lease` (the upstream connection goes back to the pool) once the body has been
    /// read to its end; a body dropped midway drops it unfinished.
    pub fn leasing(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The upstream response's fields as lines, for the native HTTP/1 server to write after the
    /// map's (see [`crate::upstream::Lease::raw_fields`]).
    pub fn raw_fields(&self) -> Option<&crate::http1::RawFields> {
        self.lease.as_ref()?.raw_fields()
    }

    /// Carries the request id for the server to write ([`ResponseBody::request_id`]), instead
    /// of the response's map: no map is allocated for a response that has no other field in it.
    pub fn set_request_id(&mut self, id: HeaderValue) {
        self.request_id = Some(id);
    }

    /// The request id to write after the map's fields, if the session put it here (a valid
    /// field value).
    pub fn request_id(&self) -> Option<&[u8]> {
        self.request_id.as_ref().map(HeaderValue::as_bytes)
    }

    /// Runs `f` once the body ends or is dropped.
    pub fn on_end(mut self, f: EndCallback) -> Self {
        self.on_end = Some(match self.on_end.take() {
            None => f,
            Some(first) => Box::new(move |ended| {
                first(ended);
                f(ended);
            }),
        });
        self
    }

    /// Attaches the request's record, finished by the snapshot's observer when the body is done
    /// or dropped. The request's own snapshot moves here (not a clone).
    pub fn observe(&mut self, snap: std::sync::Arc<Snapshot>, exchange: Box<Exchange>) {
        // Its own slot rather than an end callback: no box and no indirect call per request.
        self.record = Some((snap, exchange));
    }

    fn end(&mut self, complete: bool) {
        if let Some(l) = self.lease.take() {
            if complete {
                // The upstream connection is reusable once its body ended.
                l.finish();
            }
        }
        let ended = Ended {
            sent: self.sent,
            complete,
        };
        if let Some(f) = self.on_end.take() {
            f(ended);
        }
        // Last, as when it was the last callback attached (the session attaches it last).
        if let Some((snap, exchange)) = self.record.take() {
            snap.observer.finish(exchange, ended.sent);
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let out = Pin::new(&mut this.body).poll_frame(cx);
        match &out {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.end(true),
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed");
                this.end(false);
            }
            Poll::Pending => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper may never poll a body that is known to be empty (HEAD, 204, 304); it is complete
        // all the same. A body dropped midway (the client left) is not: its upstream connection
        // is mid-response and is not reused.
        let complete = self.body.is_empty();
        self.end(complete);
    }
}
