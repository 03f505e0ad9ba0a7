//! The turn clock: at most one read of each clock per poll of a connection's task.
//!
//! A request reads the time for its start, its upstream try's start and end, the pool's idle
//! stamp, the connection's next idle deadline and its log line: seven or eight clock reads,
//! ~25 ns each on a VM's vDSO, 3–5% of the proxy's user-space time per request. nginx reads
//! the clock once per event-loop turn and hands that cached time to everything the turn runs;
//! this is the same for one task: [`Turned`] opens a turn around each poll of the future it
//! wraps (the connection's task, each HTTP/2 stream's task), and [`now`] / [`wall`] read their
//! clock on the turn's first call and return that reading for the rest of the poll.
//!
//! The resolution is therefore one poll: two readings in the same poll are equal, so a span
//! that starts and ends without the task yielding (an answer already buffered, a cache hit)
//! measures zero, where nginx would report `0.000` too. Spans that cross an `.await` that
//! actually waits are exact to the poll that resumed. Outside a turn (other tasks, threads,
//! tests) both functions read their clock every time.
//!
//! Only the per-request bookkeeping listed above uses it; anything that measures CPU work
//! within one poll (jq budgets, say) keeps reading the clock itself.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

/// This thread's turn: whether one is open, and the readings taken in it so far.
#[derive(Clone, Copy)]
struct Turn {
    open: bool,
    mono: Option<Instant>,
    wall: Option<SystemTime>,
}

const CLOSED: Turn = Turn {
    open: false,
    mono: None,
    wall: None,
};

thread_local! {
    // `const`: no lazy initialisation and no destructor, so an access is a plain TLS load.
    static TURN: Cell<Turn> = const { Cell::new(CLOSED) };
}

/// The monotonic time: the turn's reading if one is open (taken now if it is the turn's first).
pub fn now() -> Instant {
    cached(|t| &mut t.mono, Instant::now)
}

/// The monotonic time as tokio's `Instant` (for timer deadlines).
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::from_std(now())
}

/// The wall-clock time, cached per turn like [`now`] (read separately: the two clocks are not
/// derived from each other).
pub fn wall() -> SystemTime {
    cached(|t| &mut t.wall, SystemTime::now)
}

/// The reading in `slot` of the open turn, or `read()` (kept in `slot` when a turn is open).
fn cached<T: Copy>(slot: fn(&mut Turn) -> &mut Option<T>, read: fn() -> T) -> T {
    TURN.with(|t| {
        let mut turn = t.get();
        if !turn.open {
            return read();
        }
        if let Some(v) = *slot(&mut turn) {
            return v;
        }
        let v = read();
        *slot(&mut turn) = Some(v);
        t.set(turn);
        v
    })
}

pin_project_lite::pin_project! {
    /// A future whose every poll is one turn of the clock.
    #[derive(Debug)]
    pub struct Turned<F> {
        #[pin]
        fut: F,
    }
}

impl<F: Future> Turned<F> {
    /// Wraps `fut`.
    pub fn new(fut: F) -> Self {
        Turned { fut }
    }
}

/// Restores the turn that was open before (a nested `Turned`, or none), also on unwind.
struct Restore(Turn);

impl Drop for Restore {
    fn drop(&mut self) {
        TURN.with(|t| t.set(self.0));
    }
}

impl<F: Future> Future for Turned<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _restore = Restore(TURN.with(|t| {
            t.replace(Turn {
                open: true,
                mono: None,
                wall: None,
            })
        }));
        self.project().fut.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Polls `f` once with a no-op waker.
    fn poll_once<F: Future>(f: &mut Pin<Box<F>>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn outside_a_turn_every_read_is_fresh() {
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > a);
        let w = wall();
        std::thread::sleep(Duration::from_millis(2));
        assert!(wall() > w);
    }

    #[test]
    fn one_reading_per_poll_and_a_new_one_next_poll() {
        let seen = std::rc::Rc::new(Cell::new(Vec::<(Instant, Instant, SystemTime)>::new()));
        let s = seen.clone();
        let mut fut = Box::pin(Turned::new(async move {
            for _ in 0..2 {
                let a = now();
                let w = wall();
                std::thread::sleep(Duration::from_millis(2));
                let mut v = s.take();
                v.push((a, now(), w));
                s.set(v);
                assert_eq!(wall(), w, "the wall clock is cached within the poll too");
                // Yield once: the next iteration runs in the next poll.
                let mut yielded = false;
                std::future::poll_fn(|cx| {
                    if yielded {
                        Poll::Ready(())
                    } else {
                        yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                })
                .await;
            }
        }));
        assert!(poll_once(&mut fut).is_pending());
        // Between polls the turn is closed again.
        let outside = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > outside);
        assert!(poll_once(&mut fut).is_pending());
        assert!(poll_once(&mut fut).is_ready());
        let v = seen.take();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0, v[0].1, "two reads in one poll are one reading");
        assert!(v[1].0 > v[0].1, "the next poll reads the clock again");
        assert!(v[1].2 > v[0].2);
    }

    #[test]
    fn a_nested_turn_restores_the_outer_one_even_on_panic() {
        let mut outer = Box::pin(Turned::new(async {
            let before = now();
            let inner = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut f = Box::pin(Turned::new(async { panic!("inside") }));
                let _ = poll_once(&mut f);
            }));
            assert!(inner.is_err());
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(now(), before, "the outer turn's reading survives");
        }));
        assert!(poll_once(&mut outer).is_ready());
        let a = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > a, "no turn is left open after the outer poll");
    }
}
