//! The request body forwarded upstream without copies, with its size limit and stall timer, and
//! why it can fail ([`ClientBodyError`]). The response body is `proxy::ResponseBody`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Boxed error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The downstream request body on its way upstream, with an optional size limit and stall timer.
///
/// Every way it can fail is the client's doing and comes out as a [`ClientBodyError`] (boxed, as
/// the body error hyper hands back, and through [`RequestBody::on_end`]), so the upstream call can
/// tell a client's fault from an upstream's.
#[derive(Debug)]
pub struct RequestBody {
    /// `None` for a request made by the gateway (a replayed retry or a health probe): no body.
    inner: Option<Incoming>,
    seen: u64,
    limit: u64,
    /// Told when the body has been sent completely (or failed), to start the response timer and
    /// to say whose fault a failed call was.
    on_end: Option<tokio::sync::oneshot::Sender<Result<(), ClientBodyError>>>,
    /// Where the bytes read are reported, when the request is observed.
    counted: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// `body_timeout`: how long the client may send nothing while the body is being read.
    stall: Option<Box<Stall>>,
    /// Set once the body failed: it yields nothing more.
    failed: bool,
}

/// The stall timer of a request body.
#[derive(Debug)]
struct Stall {
    after: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The body is waiting on the client since the timer was last armed.
    waiting: bool,
}

/// Why a request body failed on its way upstream: always the client's fault, never the
/// upstream's, so it never counts against an upstream's health, circuit breaker or retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// Over the listener's (or a plugin's) size limit: 413.
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    /// Broken framing (an invalid chunk, say): 400.
    #[error("the request body is malformed")]
    Malformed,
    /// The client stopped sending mid-body (closed the connection, reset the stream): 400.
    #[error("the client abandoned the request body")]
    Aborted,
    /// Nothing arrived for the listener's `body_timeout`: 408.
    #[error("the request body stalled")]
    Stalled,
}

impl ClientBodyError {
    /// The client fault behind a downstream body's read error.
    fn of(e: &hyper::Error) -> ClientBodyError {
        let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                // hyper's body decoder reports broken framing as invalid input or data, and a
                // connection that ended mid-body as an unexpected end of file.
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                ) {
                    return ClientBodyError::Malformed;
                }
            }
            src = s.source();
        }
        ClientBodyError::Aborted
    }

    /// The client fault inside an upstream call's error, if that is what failed it.
    pub fn within(e: &hyper::Error) -> Option<ClientBodyError> {
        let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = src {
            if let Some(t) = s.downcast_ref::<ClientBodyError>() {
                return Some(*t);
            }
            src = s.source();
        }
        None
    }
}

impl RequestBody {
    /// Wraps a downstream body; `limit` of `u64::MAX` means none.
    pub fn new(inner: Incoming, limit: u64) -> Self {
        RequestBody {
            inner: Some(inner),
            seen: 0,
            limit,
            on_end: None,
            counted: None,
            stall: None,
            failed: false,
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
            stall: None,
            failed: false,
        }
    }

    /// Adds the bytes read to `counter` (the access log's `bytes_in`).
    pub fn counting(mut self, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.counted = Some(counter);
        self
    }

    /// Tells `tx` when the last byte has been read (`Ok`), or the client's fault that ended the
    /// body (`Err`); dropped unsent when the body is dropped.
    pub fn on_end(mut self, tx: tokio::sync::oneshot::Sender<Result<(), ClientBodyError>>) -> Self {
        self.on_end = Some(tx);
        self
    }

    /// Fails the body with [`ClientBodyError::Stalled`] when the client sends nothing for `after`
    /// while the body is waiting for it. Time the upstream spends not reading does not count.
    pub fn stalling_after(mut self, after: std::time::Duration) -> Self {
        self.stall = Some(Box::new(Stall {
            after,
            timer: Box::pin(tokio::time::sleep(after)),
            waiting: false,
        }));
        self
    }

    fn fail(&mut self, e: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        if let Some(tx) = self.on_end.take() {
            let _ = tx.send(Err(e));
        }
        Poll::Ready(Some(Err(Box::new(e))))
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
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(st) = &mut this.stall {
                    st.waiting = false;
                }
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    crate::observe::count(&this.counted, d.len());
                    if this.seen > this.limit {
                        let limit = this.limit;
                        return this.fail(ClientBodyError::TooLarge(limit));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = ClientBodyError::of(&e);
                tracing::debug!(error = %e, %fault, "request body failed");
                this.fail(fault)
            }
            Poll::Ready(None) => {
                if let Some(tx) = this.on_end.take() {
                    let _ = tx.send(Ok(()));
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(st) = &mut this.stall else {
                    return Poll::Pending;
                };
                if !st.waiting {
                    // Waiting on the client starts now: the clock never counts time in which
                    // the upstream was not asking for more.
                    st.waiting = true;
                    let deadline = tokio::time::Instant::now() + st.after;
                    st.timer.as_mut().reset(deadline);
                }
                if st.timer.as_mut().poll(cx).is_ready() {
                    return this.fail(ClientBodyError::Stalled);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// A polled `Incoming` frame with its error boxed (the shape both bodies return).
pub(crate) fn boxed(
    p: Poll<Option<Result<Frame<Bytes>, hyper::Error>>>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    p.map(|frame| frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
}
