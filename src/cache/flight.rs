//! Request coalescing: concurrent misses on one key make one upstream request (the leader's); the
//! others wait for its response head and then stream its body as it arrives ([`Flight`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::Frame;

use crate::body::{BodyError, BodyFrame};

/// The flights in progress, by key. Its lock is taken on misses only, never on hits.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<Arc<str>, Arc<Flight>>>,
}

/// What joining a key's flight made of the caller.
pub enum Joined {
    /// No request was in flight: the caller goes upstream, and feeds the flight.
    Leader(Leader),
    /// Another request is in flight: wait for it.
    Waiter(Arc<Flight>),
}

impl Flights {
    /// Joins the flight of `key`, starting one if there is none.
    pub fn join(self: &Arc<Self>, key: &Arc<str>, max_size: u64) -> Joined {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = map.get(key) {
            return Joined::Waiter(f.clone());
        }
        let flight = Arc::new(Flight {
            state: Mutex::new(State::default()),
            max_size,
        });
        map.insert(key.clone(), flight.clone());
        Joined::Leader(Leader {
            flights: self.clone(),
            key: key.clone(),
            flight,
            finished: false,
        })
    }

    /// How many flights are in progress.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, key: &str, flight: &Arc<Flight>) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}

/// One upstream request that others wait on.
pub struct Flight {
    state: Mutex<State>,
    max_size: u64,
}

#[derive(Default)]
struct State {
    head: Option<(StatusCode, HeaderMap, VaryValues)>,
    chunks: Vec<Bytes>,
    size: u64,
    outcome: Outcome,
    wakers: Vec<Waker>,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Outcome {
    #[default]
    Running,
    /// The body ended: the waiters have all of it.
    Done,
    /// The response is not one to share (not storable): waiters go upstream themselves.
    NotShared,
    /// The body broke off (or outgrew the cap) after the head.
    Failed,
}

/// The leader's request's values of the names its response varies on.
pub type VaryValues = Vec<Option<Vec<u8>>>;

/// What a waiter gets.
pub enum Shared {
    /// The leader's response head and its request's `Vary` values (a waiter whose values differ
    /// must not take it); its body is [`Flight::body`].
    Head(StatusCode, HeaderMap, VaryValues),
    /// Go upstream yourself: the response was not shareable, the leader failed before its head,
    /// or the wait timed out.
    Alone,
}

impl Flight {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn wake(state: &mut State) {
        for w in state.wakers.drain(..) {
            w.wake();
        }
    }

    /// Waits up to `timeout` for the leader's head.
    pub async fn wait(self: &Arc<Self>, timeout: Duration) -> Shared {
        let head = std::future::poll_fn(|cx| {
            self.with(|s| match (&s.head, s.outcome) {
                (_, Outcome::NotShared) => Poll::Ready(None),
                (None, Outcome::Failed) => Poll::Ready(None),
                (Some((status, headers, vary)), _) => {
                    Poll::Ready(Some((*status, headers.clone(), vary.clone())))
                }
                (None, _) => {
                    s.wakers.push(cx.waker().clone());
                    Poll::Pending
                }
            })
        });
        match tokio::time::timeout(timeout, head).await {
            Ok(Some((status, headers, vary))) => Shared::Head(status, headers, vary),
            _ => Shared::Alone,
        }
    }

    /// The leader's body as it arrives, from its first byte.
    pub fn body(self: &Arc<Self>) -> WaiterBody {
        WaiterBody {
            flight: self.clone(),
            next: 0,
        }
    }
}

/// The leader's side: feeds the flight. Dropped before [`Leader::done`], it fails the flight
/// (waiters without a head go upstream; waiters mid-body see it break off).
pub struct Leader {
    flights: Arc<Flights>,
    key: Arc<str>,
    flight: Arc<Flight>,
    finished: bool,
}

impl Leader {
    /// The response head is shareable: waiters get it now.
    pub fn head(&self, status: StatusCode, headers: HeaderMap, vary: VaryValues) {
        self.flight.with(|s| {
            s.head = Some((status, headers, vary));
            Flight::wake(s);
        });
    }

    /// The response is not shareable: waiters go upstream themselves.
    pub fn not_shared(mut self) {
        self.finish(Outcome::NotShared);
    }

    /// A chunk of the body; false once the flight outgrew its cap (it then failed).
    pub fn data(&mut self, chunk: &Bytes) -> bool {
        let over = self.flight.with(|s| {
            s.size += chunk.len() as u64;
            if s.size > self.flight.max_size {
                return true;
            }
            s.chunks.push(chunk.clone());
            Flight::wake(s);
            false
        });
        if over {
            self.finish(Outcome::Failed);
        }
        !over
    }

    /// The body ended (the entry is stored by now, so later requests find it).
    pub fn done(mut self) {
        self.finish(Outcome::Done);
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.flights.remove(&self.key, &self.flight);
        self.flight.with(|s| {
            s.outcome = outcome;
            if outcome != Outcome::Done {
                s.chunks.clear();
            }
            Flight::wake(s);
        });
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.finish(Outcome::Failed);
    }
}

/// A waiter's copy of the leader's body.
pub struct WaiterBody {
    flight: Arc<Flight>,
    next: usize,
}

impl http_body::Body for WaiterBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame, BodyError>>> {
        let next = self.next;
        let got = self.flight.with(|s| {
            if let Some(c) = s.chunks.get(next) {
                return Poll::Ready(Some(Ok(c.clone())));
            }
            match s.outcome {
                Outcome::Done => Poll::Ready(None),
                Outcome::Failed | Outcome::NotShared => Poll::Ready(Some(Err(()))),
                Outcome::Running => {
                    s.wakers.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        match got {
            Poll::Ready(Some(Ok(c))) => {
                self.next += 1;
                Poll::Ready(Some(Ok(Frame::data(c))))
            }
            Poll::Ready(Some(Err(()))) => Poll::Ready(Some(Err(BodyError::Upstream(
                "the coalesced upstream response broke off".into(),
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn waiters_stream_what_the_leader_feeds() {
        let flights = Arc::new(Flights::default());
        let key: Arc<str> = Arc::from("k");
        let Joined::Leader(mut leader) = flights.join(&key, 100) else {
            panic!("first is the leader")
        };
        let Joined::Waiter(w) = flights.join(&key, 100) else {
            panic!("second waits")
        };
        leader.data(&Bytes::from_static(b"ab"));
        leader.head(StatusCode::OK, HeaderMap::new(), Vec::new());
        let Shared::Head(status, _, _) = w.wait(Duration::from_secs(5)).await else {
            panic!("head")
        };
        assert_eq!(status, StatusCode::OK);
        let mut body = w.body();
        let first = body.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), "ab");
        leader.data(&Bytes::from_static(b"cd"));
        leader.done();
        assert_eq!(flights.len(), 0);
        let rest = body.collect().await.expect("rest").to_bytes();
        assert_eq!(rest, "cd");
    }

    #[tokio::test]
    async fn a_dropped_leader_sends_waiters_upstream_and_a_cap_fails_them() {
        let flights = Arc::new(Flights::default());
        let key: Arc<str> = Arc::from("k");
        let Joined::Leader(leader) = flights.join(&key, 3) else {
            panic!()
        };
        let Joined::Waiter(w) = flights.join(&key, 3) else {
            panic!()
        };
        drop(leader);
        assert!(matches!(
            w.wait(Duration::from_secs(5)).await,
            Shared::Alone
        ));
        let Joined::Leader(mut leader) = flights.join(&key, 3) else {
            panic!("a new flight after the failed one")
        };
        let Joined::Waiter(w) = flights.join(&key, 3) else {
            panic!()
        };
        leader.head(StatusCode::OK, HeaderMap::new(), Vec::new());
        assert!(matches!(
            w.wait(Duration::from_secs(5)).await,
            Shared::Head(..)
        ));
        assert!(!leader.data(&Bytes::from_static(b"toolong")));
        assert!(w.body().collect().await.is_err());
        assert!(
            matches!(flights.join(&key, 3), Joined::Leader(_)),
            "the failed flight is gone"
        );
    }

    #[tokio::test]
    async fn a_wait_times_out_alone() {
        let flights = Arc::new(Flights::default());
        let key: Arc<str> = Arc::from("k");
        let _leader = flights.join(&key, 3);
        let Joined::Waiter(w) = flights.join(&key, 3) else {
            panic!()
        };
        assert!(matches!(
            w.wait(Duration::from_millis(10)).await,
            Shared::Alone
        ));
    }
}
