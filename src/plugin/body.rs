//! The body phases of the plugin API: what a plugin does with a request or response body
//! ([`BodyAction`]), the streaming filter contract ([`BodyFilter`], fed frame by frame through a
//! [`FrameSink`]), the buffered mode ([`Buffered`], with its cap), and the body a filter runs in.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::Frame;

use super::PluginError;
use crate::body::{Body, BodyError, BodyFrame, ClientBodyError};

/// What a plugin does with one body, decided per exchange once its head is known.
pub enum BodyAction {
    /// Leave the body alone (the default): it streams through without this plugin.
    Pass,
    /// Filter the body frame by frame as it streams ([`BodyFilter`]). The body's length becomes
    /// unknown: `Content-Length` is removed (HTTP/1 then sends it chunked).
    Stream(Box<dyn BodyFilter>),
    /// Read the whole body first, up to a cap, then hand it to the plugin's buffered phase
    /// (`request_body_buffered` or `response_body_buffered`), which may change the head too.
    /// `Content-Length` is set to the new length.
    Buffer(BufferCap),
}

impl std::fmt::Debug for BodyAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyAction::Pass => f.write_str("Pass"),
            BodyAction::Stream(_) => f.write_str("Stream"),
            BodyAction::Buffer(c) => f.debug_tuple("Buffer").field(c).finish(),
        }
    }
}

/// The cap of a buffered body phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferCap {
    /// The most data bytes read into memory.
    pub max: u64,
    /// What happens to a response body over `max` (a request body over it always gets `413`).
    pub over: OverCap,
}

/// What happens to a response body larger than a buffered phase's cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OverCap {
    /// The body goes on untouched, as if the plugin had passed.
    #[default]
    Pass,
    /// The client gets `502`.
    Fail,
}

/// A whole body, for a buffered phase: change `data` (and `trailers`) in place.
#[derive(Debug, Default)]
pub struct Buffered {
    /// The body's data.
    pub data: Bytes,
    /// The body's trailers, if it had any.
    pub trailers: Option<HeaderMap>,
}

/// A streaming body filter: one instance per body, fed every frame in order.
///
/// A filter may pass a frame on, change it, drop it, or add frames, by pushing to the
/// [`FrameSink`]. It runs inside the body's poll: it must not block, and work per frame should
/// be proportional to the frame.
pub trait BodyFilter: Send + 'static {
    /// One frame of the body (data, or the trailers at the end). The default passes it on.
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        out.push(frame);
        Ok(())
    }

    /// The body ended (after its last frame): a last chance to add data or trailers.
    fn end(&mut self, _out: &mut FrameSink) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Where a [`BodyFilter`] puts the frames it lets through. Trailers pushed more than once are
/// merged, and always go out last.
#[derive(Debug, Default)]
pub struct FrameSink {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl FrameSink {
    /// Passes a frame on.
    pub fn push(&mut self, frame: BodyFrame) {
        match frame.into_data() {
            Ok(d) => self.push_data(d),
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    self.push_trailers(t);
                }
            }
        }
    }

    /// Passes data on (empty chunks are dropped).
    pub fn push_data(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.data.push_back(data);
        }
    }

    /// Adds trailers, merged with any pushed before.
    pub fn push_trailers(&mut self, trailers: HeaderMap) {
        match &mut self.trailers {
            Some(t) => t.extend(trailers),
            None => self.trailers = Some(trailers),
        }
    }

    fn pop_data(&mut self) -> Option<BodyFrame> {
        self.data.pop_front().map(Frame::data)
    }
}

/// Which way a filtered body goes: it says what a filter's error means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// A request body: a refusal is the client's fault (its status goes to the client).
    Request,
    /// A response body: a failure breaks the stream off.
    Response,
}

/// A body run through a [`BodyFilter`].
pub(crate) struct Filtered {
    inner: Body,
    filter: Box<dyn BodyFilter>,
    sink: FrameSink,
    direction: Direction,
    /// The inner body ended and the filter's `end` ran.
    ended: bool,
    failed: bool,
}

impl Filtered {
    pub(crate) fn new(inner: Body, filter: Box<dyn BodyFilter>, direction: Direction) -> Self {
        Filtered {
            inner,
            filter,
            sink: FrameSink::default(),
            direction,
            ended: false,
            failed: false,
        }
    }

    fn error(&mut self, e: PluginError) -> BodyError {
        self.failed = true;
        tracing::debug!(status = %e.status, error = %e.message, "body filter failed");
        match self.direction {
            Direction::Request => {
                BodyError::Client(ClientBodyError::Refused(e.status, e.message.into()))
            }
            Direction::Response => BodyError::Plugin {
                status: e.status,
                message: e.message,
            },
        }
    }
}

impl http_body::Body for Filtered {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame, BodyError>>> {
        let this = &mut *self;
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            if let Some(f) = this.sink.pop_data() {
                return Poll::Ready(Some(Ok(f)));
            }
            if this.ended {
                return Poll::Ready(this.sink.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Err(e) = this.filter.frame(frame, &mut this.sink) {
                        return Poll::Ready(Some(Err(this.error(e))));
                    }
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    if let Err(e) = this.filter.end(&mut this.sink) {
                        return Poll::Ready(Some(Err(this.error(e))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.ended && self.sink.data.is_empty() && self.sink.trailers.is_none())
    }
}

/// A plugin failure in a buffered phase, as the status the client gets.
pub(crate) fn over_cap_response() -> PluginError {
    PluginError::new(
        StatusCode::BAD_GATEWAY,
        "the upstream's response body is larger than a plugin can read",
    )
}
