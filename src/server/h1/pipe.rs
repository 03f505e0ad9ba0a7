//! The request body between the connection task (which reads and decodes it) and whoever reads
//! the body (the proxy, an upstream connection's task, a plugin): one frame at a time, read from
//! the socket only when the reader asks for more.
//!
//! Waiting for the reader's demand is what makes `Expect: 100-continue` right: the client is told
//! to send its body only once something wants to read it, never for a request refused on its
//! head. (A tokio channel buffers without being asked; this slot does not.)

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use http_body::{Frame, SizeHint};

use crate::body::{BodyError, BodyFrame};

#[derive(Default)]
struct State {
    frame: Option<Result<BodyFrame, BodyError>>,
    /// The reader asked for a frame and has not got one yet.
    wanted: bool,
    tx_gone: bool,
    rx_gone: bool,
}

#[derive(Default)]
struct Shared {
    // Held for a few instructions by exactly two parties of one request.
    state: Mutex<State>,
    rx: AtomicWaker,
    tx: AtomicWaker,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The connection's end.
pub struct PipeTx {
    shared: Arc<Shared>,
}

/// The reader's end: a request body.
pub struct PipeRx {
    shared: Arc<Shared>,
    /// Data bytes still to come, when the length was declared.
    left: Option<u64>,
    done: bool,
}

/// A pipe for a body of `len` bytes (`None`: chunked).
pub fn pipe(len: Option<u64>) -> (PipeTx, PipeRx) {
    let shared = Arc::new(Shared::default());
    (
        PipeTx {
            shared: shared.clone(),
        },
        PipeRx {
            shared,
            left: len,
            done: false,
        },
    )
}

/// The reader is gone.
#[derive(Debug)]
pub struct Gone;

impl PipeTx {
    /// Ready when the reader wants a frame and none is waiting; `Err` when the reader is gone.
    pub fn poll_want(&self, cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        let st = self.shared.lock();
        if st.rx_gone {
            return Poll::Ready(Err(Gone));
        }
        if st.wanted && st.frame.is_none() {
            return Poll::Ready(Ok(()));
        }
        self.shared.tx.register(cx.waker());
        Poll::Pending
    }

    /// Hands the reader a frame (after [`PipeTx::poll_want`] said it wants one).
    pub fn send(&self, frame: Result<BodyFrame, BodyError>) {
        let mut st = self.shared.lock();
        st.frame = Some(frame);
        st.wanted = false;
        drop(st);
        self.shared.rx.wake();
    }
}

impl Drop for PipeTx {
    fn drop(&mut self) {
        self.shared.lock().tx_gone = true;
        self.shared.rx.wake();
    }
}

impl Drop for PipeRx {
    fn drop(&mut self) {
        self.shared.lock().rx_gone = true;
        self.shared.tx.wake();
    }
}

impl http_body::Body for PipeRx {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut st = self.shared.lock();
        if let Some(frame) = st.frame.take() {
            drop(st);
            if let (Ok(f), Some(left)) = (&frame, &mut self.left) {
                if let Some(d) = f.data_ref() {
                    *left = left.saturating_sub(d.len() as u64);
                }
            }
            if frame.is_err() {
                self.done = true;
            }
            return Poll::Ready(Some(frame));
        }
        if st.tx_gone {
            drop(st);
            self.done = true;
            return Poll::Ready(None);
        }
        let first = !st.wanted;
        st.wanted = true;
        self.shared.rx.register(cx.waker());
        drop(st);
        if first {
            self.shared.tx.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
