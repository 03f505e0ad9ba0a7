//! The one body type of the gateway ([`Body`]), for requests and responses alike, and why a body
//! can fail ([`BodyError`], [`ClientBodyError`]).
//!
//! hyper's `Incoming` is converted once, at the edges: the server wraps each downstream request
//! body with [`Body::from_client`], the upstream client each response body with
//! [`Body::from_upstream`]. Everything above the edges (the proxy, plugins, later the cache and
//! aggregation) produces and consumes [`Body`] only. The common cases stay unboxed (an edge body,
//! one chunk, nothing); any other `http_body::Body` (a plugin's stream or filter) is boxed.
//!
//! A body can carry a [`Meter`]-like set of watchers (size limit, byte counter, stall timer, end
//! signal) installed by the proxy; they cost nothing when absent.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

/// Boxed error type, for errors of foreign bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body frame: data or trailers.
pub type BodyFrame = Frame<Bytes>;

/// The gateway's body, for requests and responses.
pub struct Body {
    inner: Inner,
    /// Watchers installed by the proxy; `None` on most bodies.
    watch: Option<Box<Watch>>,
}

enum Inner {
    /// Nothing (left) to send.
    Empty,
    /// One chunk, not yet sent.
    Full(Bytes),
    /// A downstream request body, as the server edge hands it over: read errors are the
    /// client's.
    Client(Incoming),
    /// An upstream response body, as the upstream client hands it over.
    Upstream(Incoming),
    /// Anything else: a plugin's stream or filter over another body.
    Boxed(Pin<Box<dyn http_body::Body<Data = Bytes, Error = BodyError> + Send + 'static>>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Empty => "empty",
            Inner::Full(_) => "full",
            Inner::Client(_) => "client",
            Inner::Upstream(_) => "upstream",
            Inner::Boxed(_) => "boxed",
        };
        f.debug_struct("Body").field("kind", &kind).finish()
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

/// Why a body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client's doing (or a plugin's refusal of what the client sent): never counts against
    /// an upstream.
    #[error("{0}")]
    Client(ClientBodyError),
    /// The upstream's body broke off or was malformed.
    #[error("the upstream's body failed: {0}")]
    Upstream(BoxError),
    /// A plugin failed on a response body.
    #[error("{message}")]
    Plugin {
        /// The status a client would get had the head not been sent yet.
        status: StatusCode,
        /// Safe to show the client.
        message: String,
    },
}

/// Why a request body failed on its way upstream: always the client's fault, never the
/// upstream's, so it never counts against an upstream's health, circuit breaker or retries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
    /// A plugin refused the body (undecodable, over its cap): its status and message.
    #[error("{1}")]
    Refused(StatusCode, Arc<str>),
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
    pub fn within(e: &(dyn std::error::Error + 'static)) -> Option<ClientBodyError> {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = src {
            if let Some(t) = s.downcast_ref::<ClientBodyError>() {
                return Some(t.clone());
            }
            if let Some(BodyError::Client(t)) = s.downcast_ref::<BodyError>() {
                return Some(t.clone());
            }
            src = s.source();
        }
        None
    }
}

/// What the proxy watches on a body. Boxed: most bodies have none.
struct Watch {
    seen: u64,
    limit: u64,
    /// Told when the body has ended (`Ok`), or the client's fault that ended it (`Err`).
    on_end: Option<tokio::sync::oneshot::Sender<Result<(), ClientBodyError>>>,
    /// Where the data bytes read are added.
    counted: Option<Arc<AtomicU64>>,
    /// `body_timeout`: how long the body may yield nothing while it is being read.
    stall: Option<Stall>,
    /// Set once the body failed: it yields nothing more.
    failed: bool,
}

/// The stall timer of a body.
struct Stall {
    after: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The body is waiting on its source since the timer was last armed.
    waiting: bool,
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Body {
            inner: Inner::Empty,
            watch: None,
        }
    }

    /// A complete body of one chunk.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Body {
            inner: if b.is_empty() {
                Inner::Empty
            } else {
                Inner::Full(b)
            },
            watch: None,
        }
    }

    /// Any body: a plugin's stream, a filter over another body. Boxed.
    pub fn new<B>(b: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error = BodyError> + Send + 'static,
    {
        Body {
            inner: Inner::Boxed(Box::pin(b)),
            watch: None,
        }
    }

    /// A body fed through a channel: frames sent on the [`BodySender`] arrive in order; the body
    /// ends when the sender is dropped (or fails with what [`BodySender::abort`] says). At most
    /// `capacity` frames wait: a sender faster than the reader waits for it.
    pub fn channel(capacity: usize) -> (BodySender, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (BodySender { tx }, Body::new(ChannelBody { rx }))
    }

    /// A downstream request body, from the server edge: its read errors are the client's.
    pub(crate) fn from_client(b: Incoming) -> Self {
        Body {
            inner: Inner::Client(b),
            watch: None,
        }
    }

    /// An upstream response body, from the upstream client's edge.
    pub(crate) fn from_upstream(b: Incoming) -> Self {
        Body {
            inner: Inner::Upstream(b),
            watch: None,
        }
    }

    /// True when this body is known to have nothing (more) to send.
    pub fn is_empty(&self) -> bool {
        http_body::Body::is_end_stream(self)
    }

    fn watch(&mut self) -> &mut Watch {
        self.watch.get_or_insert_with(|| {
            Box::new(Watch {
                seen: 0,
                limit: u64::MAX,
                on_end: None,
                counted: None,
                stall: None,
                failed: false,
            })
        })
    }

    /// Fails the body with [`ClientBodyError::TooLarge`] once more than `limit` data bytes came
    /// through.
    pub fn limited(mut self, limit: u64) -> Self {
        if limit != u64::MAX {
            self.watch().limit = limit;
        }
        self
    }

    /// Adds the data bytes read to `counter` (the access log's `bytes_in`).
    pub fn counting(mut self, counter: Arc<AtomicU64>) -> Self {
        self.watch().counted = Some(counter);
        self
    }

    /// Tells `tx` when the last frame has been read (`Ok`), or the client's fault that ended the
    /// body (`Err`); dropped unsent when the body is dropped.
    pub fn on_end(mut self, tx: tokio::sync::oneshot::Sender<Result<(), ClientBodyError>>) -> Self {
        self.watch().on_end = Some(tx);
        self
    }

    /// Fails the body with [`ClientBodyError::Stalled`] when its source yields nothing for
    /// `after` while the body is being read. Time in which nobody reads does not count.
    pub fn stalling_after(mut self, after: std::time::Duration) -> Self {
        self.watch().stall = Some(Stall {
            after,
            timer: Box::pin(tokio::time::sleep(after)),
            waiting: false,
        });
        self
    }

    /// Reads the whole body, up to `max` data bytes. Over the cap, what was read so far comes
    /// back with the rest still unread ([`Overflow`]), so the body can still be passed on whole.
    pub async fn collect_capped(self, max: u64) -> Result<Collected, CollectError> {
        let mut body = self;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0u64;
        let mut trailers: Option<HeaderMap> = None;
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame_inner(cx)).await;
            match frame {
                None => break,
                Some(Err(e)) => return Err(CollectError::Failed(e)),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => {
                        len += d.len() as u64;
                        chunks.push(d);
                        if len > max {
                            return Err(CollectError::Overflow(Overflow {
                                read: chunks,
                                rest: body,
                            }));
                        }
                    }
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            match &mut trailers {
                                Some(all) => all.extend(t),
                                None => trailers = Some(t),
                            }
                        }
                    }
                },
            }
        }
        let data = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = bytes::BytesMut::with_capacity(len as usize);
                for c in chunks {
                    all.extend_from_slice(&c);
                }
                all.freeze()
            }
        };
        Ok(Collected { data, trailers })
    }

    fn poll_frame_inner(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame, BodyError>>> {
        http_body::Body::poll_frame(self, cx)
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<BodyFrame, BodyError>>> {
        if let Some(w) = &mut self.watch {
            w.failed = true;
            if let (Some(tx), BodyError::Client(c)) = (w.on_end.take(), &e) {
                let _ = tx.send(Err(c.clone()));
            }
        }
        Poll::Ready(Some(Err(e)))
    }

    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<BodyFrame, BodyError>>> {
        match &mut self.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(_) => {
                let Inner::Full(b) = std::mem::replace(&mut self.inner, Inner::Empty) else {
                    return Poll::Ready(None);
                };
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Inner::Client(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    let fault = ClientBodyError::of(&e);
                    tracing::debug!(error = %e, %fault, "request body failed");
                    Poll::Ready(Some(Err(BodyError::Client(fault))))
                }
            },
            Inner::Upstream(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    Poll::Ready(Some(Err(BodyError::Upstream(Box::new(e)))))
                }
            },
            Inner::Boxed(b) => b.as_mut().poll_frame(cx),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame, BodyError>>> {
        let this = &mut *self;
        if this.watch.is_none() {
            return this.poll_source(cx);
        }
        if this.watch.as_ref().is_some_and(|w| w.failed) {
            return Poll::Ready(None);
        }
        let polled = this.poll_source(cx);
        let Some(w) = this.watch.as_deref_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(st) = &mut w.stall {
                    st.waiting = false;
                }
                if let Some(d) = frame.data_ref() {
                    w.seen += d.len() as u64;
                    crate::observe::count(&w.counted, d.len());
                    if w.seen > w.limit {
                        let limit = w.limit;
                        return this.fail(BodyError::Client(ClientBodyError::TooLarge(limit)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(e),
            Poll::Ready(None) => {
                if let Some(tx) = w.on_end.take() {
                    let _ = tx.send(Ok(()));
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(st) = &mut w.stall else {
                    return Poll::Pending;
                };
                if !st.waiting {
                    // Waiting on the source starts now: the clock never counts time in which
                    // nobody was asking for more.
                    st.waiting = true;
                    let deadline = tokio::time::Instant::now() + st.after;
                    st.timer.as_mut().reset(deadline);
                }
                if st.timer.as_mut().poll(cx).is_ready() {
                    return this.fail(BodyError::Client(ClientBodyError::Stalled));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.watch.as_ref().is_some_and(|w| w.failed) {
            return true;
        }
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(_) => false,
            Inner::Client(b) | Inner::Upstream(b) => b.is_end_stream(),
            Inner::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(b) => SizeHint::with_exact(b.len() as u64),
            Inner::Client(b) | Inner::Upstream(b) => b.size_hint(),
            Inner::Boxed(b) => b.size_hint(),
        }
    }
}

/// A whole body read into memory.
#[derive(Debug, Default)]
pub struct Collected {
    /// The data, in one piece.
    pub data: Bytes,
    /// The trailers, if the body had any.
    pub trailers: Option<HeaderMap>,
}

impl Collected {
    /// The collected body as a body again: the data, then the trailers.
    pub fn into_body(self) -> Body {
        match self.trailers {
            None => Body::full(self.data),
            Some(t) => {
                let mut frames = Vec::with_capacity(2);
                if !self.data.is_empty() {
                    frames.push(Frame::data(self.data));
                }
                frames.push(Frame::trailers(t));
                Body::new(Frames {
                    frames: frames.into(),
                })
            }
        }
    }
}

/// Why [`Body::collect_capped`] did not return the whole body.
#[derive(Debug)]
pub enum CollectError {
    /// The body failed while being read.
    Failed(BodyError),
    /// The body is larger than the cap.
    Overflow(Overflow),
}

/// A body over a collection cap: what was read, and the rest.
#[derive(Debug)]
pub struct Overflow {
    /// The chunks read so far, in order.
    pub read: Vec<Bytes>,
    /// The rest of the body, unread.
    pub rest: Body,
}

impl Overflow {
    /// The whole body again, as it was: the chunks read, then the rest.
    pub fn into_body(self) -> Body {
        Body::new(Prefixed {
            read: self.read.into(),
            rest: self.rest,
        })
    }
}

/// Frames given in advance.
struct Frames {
    frames: std::collections::VecDeque<BodyFrame>,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame, BodyError>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}

/// Chunks already read, then the rest of their body.
struct Prefixed {
    read: std::collections::VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame, BodyError>>> {
        if let Some(c) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_empty()
    }
}

/// The sending side of [`Body::channel`].
#[derive(Debug, Clone)]
pub struct BodySender {
    tx: tokio::sync::mpsc::Sender<Result<BodyFrame, BodyError>>,
}

impl BodySender {
    /// Sends a data chunk; `Err` when the body's reader is gone (the client left).
    pub async fn send_data(&self, data: impl Into<Bytes>) -> Result<(), BodyClosed> {
        self.tx
            .send(Ok(Frame::data(data.into())))
            .await
            .map_err(|_| BodyClosed)
    }

    /// Sends the trailers; the last frame of a body.
    pub async fn send_trailers(&self, trailers: HeaderMap) -> Result<(), BodyClosed> {
        self.tx
            .send(Ok(Frame::trailers(trailers)))
            .await
            .map_err(|_| BodyClosed)
    }

    /// Ends the body with an error: the client sees the stream broken off, not completed.
    pub async fn abort(self, e: BodyError) {
        let _ = self.tx.send(Err(e)).await;
    }
}

/// The body's reader is gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the body's reader is gone")]
pub struct BodyClosed;

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<BodyFrame, BodyError>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame, BodyError>>> {
        self.rx.poll_recv(cx)
    }
}

/// A connection taken over after `101 Switching Protocols` (WebSocket and other upgrades): the
/// client's or the upstream's, as the edges hand it over in a request's or response's extensions
/// (converted from hyper's handle once, like the bodies; the native HTTP/1 codec makes its own).
#[derive(Clone)]
pub struct Upgrade(UpgradeFrom);

#[derive(Clone)]
enum UpgradeFrom {
    Hyper(hyper::upgrade::OnUpgrade),
    /// Taken by the one who completes the upgrade (extensions must be `Clone`).
    Native(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<UpgradedIo>>>>),
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            UpgradeFrom::Hyper(_) => "Upgrade(hyper)",
            UpgradeFrom::Native(_) => "Upgrade(native)",
        })
    }
}

/// An upgraded connection's byte stream.
pub trait TunnelIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> TunnelIo for T {}

/// An upgraded connection, boxed: the edges' stream types differ.
pub type UpgradedIo = Box<dyn TunnelIo>;

impl Upgrade {
    /// Moves hyper's upgrade handle, if the message has one, into an [`Upgrade`] extension.
    pub(crate) fn convert(ext: &mut http::Extensions) {
        if let Some(on) = ext.remove::<hyper::upgrade::OnUpgrade>() {
            ext.insert(Upgrade(UpgradeFrom::Hyper(on)));
        }
    }

    /// An upgrade the native HTTP/1 server completes by sending the connection once its `101`
    /// is written.
    pub(crate) fn native(rx: tokio::sync::oneshot::Receiver<UpgradedIo>) -> Self {
        Upgrade(UpgradeFrom::Native(Arc::new(std::sync::Mutex::new(Some(
            rx,
        )))))
    }

    /// The connection, once the `101` has been sent (by us to the client) or received (from the
    /// upstream).
    pub async fn into_io(self) -> Result<UpgradedIo, BoxError> {
        match self.0 {
            UpgradeFrom::Hyper(on) => {
                let io = on.await.map_err(|e| Box::new(e) as BoxError)?;
                Ok(Box::new(hyper_util::rt::TokioIo::new(io)))
            }
            UpgradeFrom::Native(slot) => {
                let rx = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                match rx {
                    Some(rx) => rx.await.map_err(|e| Box::new(e) as BoxError),
                    None => Err("the upgrade was already taken".into()),
                }
            }
        }
    }
}

/// An upgraded connection with the bytes already read past its `101` (or its request), served
/// first.
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    io: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, io: T) -> Self {
        Rewind { prefix, io }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
