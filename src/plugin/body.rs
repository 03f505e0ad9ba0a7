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
    /// Drop the body and send this one instead (a stored response in place of a `304` or an
    /// error). `Content-Length` follows the new body's exact size, or is removed when it has none.
    Replace(Body),
}

impl std::fmt::Debug for BodyAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyAction::Pass => f.write_str("Pass"),
            BodyAction::Stream(_) => f.write_str("Stream"),
            BodyAction::Buffer(c) => f.debug_tuple("Buffer").field(c).finish(),
            BodyAction::Replace(_) => f.write_str("Replace"),
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
///
/// A filter whose output for one frame has no useful bound (a decompressor: a few KiB can
/// expand to GiB) holds the frame instead of pushing all its output at once, pushes a bounded
/// part from `frame` (or `end`), and the rest from [`pending`](Self::pending), a step at a time,
/// as the body is read.
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

    /// More output from what the filter already holds: push the next step of it and return
    /// `true`, or return `false` when there is nothing more until the next frame (or, after
    /// `end`, at all).
    ///
    /// The body calls it once everything pushed before has been read, after each `frame` and
    /// after `end`, again and again until it returns `false`: only then is the next frame read
    /// (or `end` called). A filter that returns `true` must have pushed something or consumed
    /// some of what it holds, so the calls come to an end. The default holds nothing.
    fn pending(&mut self, _out: &mut FrameSink) -> Result<bool, PluginError> {
        Ok(false)
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
    /// The filter got a frame (or `end`) since its `pending` last returned `false`.
    pending: bool,
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
            pending: false,
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
            // What the filter still holds goes before the next frame is read: the body moves
            // one step at a time, as fast as it is read.
            if this.pending {
                match this.filter.pending(&mut this.sink) {
                    Ok(true) => continue,
                    Ok(false) => this.pending = false,
                    Err(e) => return Poll::Ready(Some(Err(this.error(e)))),
                }
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
                    this.pending = true;
                    if let Err(e) = this.filter.frame(frame, &mut this.sink) {
                        return Poll::Ready(Some(Err(this.error(e))));
                    }
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    this.pending = true;
                    if let Err(e) = this.filter.end(&mut this.sink) {
                        return Poll::Ready(Some(Err(this.error(e))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed
            || (self.ended
                && !self.pending
                && self.sink.data.is_empty()
                && self.sink.trailers.is_none())
    }
}

/// A plugin failure in a buffered phase, as the status the client gets.
pub(crate) fn over_cap_response() -> PluginError {
    PluginError::new(
        StatusCode::BAD_GATEWAY,
        "the upstream's response body is larger than a plugin can read",
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    /// An inner body that logs every frame it hands out.
    struct Frames {
        frames: VecDeque<&'static str>,
        log: Log,
    }

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<BodyFrame, BodyError>>> {
            let next = self.frames.pop_front();
            let entry = format!("read {}", next.unwrap_or("end"));
            self.log.lock().expect("log").push(entry);
            Poll::Ready(next.map(|s| Ok(Frame::data(Bytes::from_static(s.as_bytes())))))
        }
    }

    /// Holds each frame and lets it out one byte per `pending` step; `end` adds a byte it also
    /// holds back.
    struct Trickle {
        held: Bytes,
        log: Log,
    }

    impl BodyFilter for Trickle {
        fn frame(&mut self, frame: BodyFrame, _out: &mut FrameSink) -> Result<(), PluginError> {
            if let Ok(d) = frame.into_data() {
                self.held = d;
            }
            Ok(())
        }

        fn end(&mut self, _out: &mut FrameSink) -> Result<(), PluginError> {
            self.log.lock().expect("log").push("end".into());
            self.held = Bytes::from_static(b"!");
            Ok(())
        }

        fn pending(&mut self, out: &mut FrameSink) -> Result<bool, PluginError> {
            if self.held.is_empty() {
                return Ok(false);
            }
            let step = self.held.split_to(1);
            if step.as_ref() == b"x" {
                return Err(PluginError::new(StatusCode::BAD_REQUEST, "an x"));
            }
            out.push_data(step);
            Ok(true)
        }
    }

    fn trickled(frames: &[&'static str]) -> (Filtered, Log) {
        let log = Log::default();
        let inner = Frames {
            frames: frames.iter().copied().collect(),
            log: log.clone(),
        };
        let filter = Trickle {
            held: Bytes::new(),
            log: log.clone(),
        };
        let body = Filtered::new(Body::new(inner), Box::new(filter), Direction::Request);
        (body, log)
    }

    #[tokio::test]
    async fn pending_output_goes_out_step_by_step_before_the_next_frame_and_the_end() {
        let (mut body, log) = trickled(&["ab", "c"]);
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.expect("frame").into_data().expect("data");
            assert_eq!(data.len(), 1, "one step at a time");
            let s = String::from_utf8(data.to_vec()).expect("utf-8");
            log.lock().expect("log").push(format!("out {s}"));
            got.push(s);
        }
        assert_eq!(got.concat(), "abc!");
        assert!(body.is_end_stream());
        let log = log.lock().expect("log").clone();
        assert_eq!(
            log,
            ["read ab", "out a", "out b", "read c", "out c", "read end", "end", "out !"]
        );
    }

    #[tokio::test]
    async fn a_failing_step_fails_the_body() {
        let (mut body, _log) = trickled(&["axb"]);
        let first = body.frame().await.expect("a").expect("data");
        assert_eq!(first.into_data().expect("data"), "a");
        let e = body.frame().await.expect("error").expect_err("refused");
        assert!(
            matches!(
                e,
                BodyError::Client(ClientBodyError::Refused(StatusCode::BAD_REQUEST, _))
            ),
            "{e:?}"
        );
        assert!(body.frame().await.is_none());
    }
}
