//! Protecting an upstream from the gateway: the circuit breaker (stop sending to an upstream that
//! mostly fails, probe it, resume) and the retry budget (retries can never multiply an outage).
//! Both count outcomes in sliding windows of atomic per-slot counters: no lock on the hot path.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use frontdesk_config::CircuitBreakerConfig;

use super::health::now_ms;

const SLOTS: usize = 10;

/// Two counters over a sliding window of ten slots.
#[derive(Debug)]
struct Window {
    slot_ms: u64,
    /// Which slot period each slot currently holds.
    epoch: [AtomicU64; SLOTS],
    a: [AtomicU64; SLOTS],
    b: [AtomicU64; SLOTS],
}

impl Window {
    fn new(window: Duration) -> Window {
        Window {
            slot_ms: (u64::try_from(window.as_millis()).unwrap_or(u64::MAX) / SLOTS as u64).max(1),
            epoch: Default::default(),
            a: Default::default(),
            b: Default::default(),
        }
    }

    /// The slot for now, cleared first if it still holds an old period.
    fn slot(&self) -> (usize, u64) {
        self.slot_at(now_ms())
    }

    /// The slot for `now` ([`now_ms`]), cleared first if it still holds an old period.
    fn slot_at(&self, now: u64) -> (usize, u64) {
        let period = now / self.slot_ms;
        let i = (period % SLOTS as u64) as usize;
        let seen = self.epoch[i].load(Ordering::Acquire);
        if seen != period
            && self.epoch[i]
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Racing increments into the old period may be lost or kept: a window is an
            // estimate at slot granularity either way.
            self.a[i].store(0, Ordering::Release);
            self.b[i].store(0, Ordering::Release);
        }
        (i, period)
    }

    fn add(&self, a: u64, b: u64) {
        self.add_at(now_ms(), a, b);
    }

    fn add_at(&self, now: u64, a: u64, b: u64) {
        let (i, _) = self.slot_at(now);
        if a != 0 {
            self.a[i].fetch_add(a, Ordering::AcqRel);
        }
        if b != 0 {
            self.b[i].fetch_add(b, Ordering::AcqRel);
        }
    }

    /// Sums over the slots of the last window; also returns the current slot's counts.
    fn sums(&self) -> ((u64, u64), (u64, u64)) {
        let (cur, period) = self.slot();
        let mut total = (0, 0);
        for i in 0..SLOTS {
            let e = self.epoch[i].load(Ordering::Acquire);
            if period.saturating_sub(e) < SLOTS as u64 {
                total.0 += self.a[i].load(Ordering::Acquire);
                total.1 += self.b[i].load(Ordering::Acquire);
            }
        }
        let now = (
            self.a[cur].load(Ordering::Acquire),
            self.b[cur].load(Ordering::Acquire),
        );
        (total, now)
    }

    fn clear(&self) {
        for i in 0..SLOTS {
            self.a[i].store(0, Ordering::Release);
            self.b[i].store(0, Ordering::Release);
        }
    }
}

/// Retries allowed: 20% of the upstream's requests (first tries only) over the last 10 s, and
/// at least 10 per second whatever the traffic.
#[derive(Debug)]
pub struct RetryBudget {
    /// a = requests, b = retries; 10 slots of one second.
    window: Window,
}

/// Share of requests that may be retried.
const RETRY_RATIO: f64 = 0.2;
/// Retries always allowed per second.
const RETRY_FLOOR_PER_SECOND: u64 = 10;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            window: Window::new(Duration::from_secs(10)),
        }
    }
}

impl RetryBudget {
    /// Counts a request's first try, made at `now` ([`super::health::ms_at`]).
    pub fn record_request_at(&self, now: u64) {
        self.window.add_at(now, 1, 0);
    }

    /// Takes one retry from the budget; false when the budget is spent.
    pub fn try_retry(&self) -> bool {
        let ((requests, retries), (_, retries_this_second)) = self.window.sums();
        let allowed = retries_this_second < RETRY_FLOOR_PER_SECOND
            || (retries as f64) < RETRY_RATIO * requests as f64;
        if allowed {
            self.window.add(0, 1);
        }
        allowed
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A per-upstream circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// The upstream's name, for log lines.
    upstream: Arc<str>,
    cfg: CircuitBreakerConfig,
    /// a = requests, b = failures.
    window: Window,
    state: AtomicU8,
    /// `now_ms` when an open breaker may let a probe through.
    open_until: AtomicU64,
    inflight: Arc<AtomicUsize>,
}

/// What a circuit breaker is doing now, as the admin API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until `open_for` has passed.
    Open,
    /// One probe request decides whether it closes again.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Why the breaker refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The breaker is open (or half-open with its probe in flight).
    Open,
    /// `max_concurrent` requests are already in flight.
    Saturated,
}

/// A request admitted by the breaker; report its outcome with [`CircuitBreaker::finish`]. A
/// probe dropped without an outcome (the client went away, or the result says nothing about the
/// upstream) lets the next request probe instead, so the breaker never stays half-open.
#[derive(Debug)]
pub struct Admission<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    finished: bool,
    /// Counts the request as in flight until its response is done (for `max_concurrent`).
    pub token: Option<InflightToken>,
}

/// Holds one request in an upstream's in-flight count.
#[derive(Debug)]
pub struct InflightToken(Arc<AtomicUsize>);

impl Drop for InflightToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CircuitBreaker {
    /// A closed breaker for upstream `upstream`.
    pub fn new(upstream: Arc<str>, cfg: &CircuitBreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            upstream,
            window: Window::new(cfg.window.get()),
            cfg: cfg.clone(),
            state: AtomicU8::new(CLOSED),
            open_until: AtomicU64::new(0),
            inflight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether the breaker is open now (for metrics and tests).
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }

    /// The breaker's state now. An open breaker whose wait is over reads as open until a request
    /// takes the probe.
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Admits a request, or refuses it at once.
    pub fn admit(&self) -> Result<Admission<'_>, Refusal> {
        let token = match self.cfg.max_concurrent {
            Some(max) => {
                if self.inflight.fetch_add(1, Ordering::AcqRel) >= max as usize {
                    self.inflight.fetch_sub(1, Ordering::AcqRel);
                    return Err(Refusal::Saturated);
                }
                Some(InflightToken(self.inflight.clone()))
            }
            None => None,
        };
        let probe = match self.state.load(Ordering::Acquire) {
            CLOSED => false,
            OPEN => {
                if now_ms() < self.open_until.load(Ordering::Acquire) {
                    return Err(Refusal::Open);
                }
                // One request wins the probe; the others stay refused until it answers.
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return Err(Refusal::Open);
                }
                // Logged by the caller once the probe's target is picked.
                true
            }
            _ => return Err(Refusal::Open),
        };
        Ok(Admission {
            breaker: self,
            probe,
            finished: false,
            token,
        })
    }

    fn open(&self) {
        let until = now_ms() + u64::try_from(self.cfg.open_for.get().as_millis()).unwrap_or(0);
        self.open_until.store(until, Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
        self.window.clear();
    }
}

impl CircuitBreaker {
    /// Logs that `admission`, a probe, goes to `target` (nothing for other requests).
    pub fn probing(&self, admission: &Admission<'_>, target: &str) {
        if admission.probe {
            tracing::info!(
                upstream = %self.upstream,
                target = %target,
                "circuit breaker half-open: probing the upstream"
            );
        }
    }

    /// Records an admitted request's outcome: a failure is a connect failure, reset, timeout or
    /// 5xx answer. `target` is the target its last try went to, named in the log lines of a
    /// state change.
    pub fn finish(&self, admission: &mut Admission<'_>, success: bool, target: Option<&str>) {
        admission.finished = true;
        let target = target.unwrap_or("none");
        if admission.probe {
            if success {
                self.window.clear();
                self.state.store(CLOSED, Ordering::Release);
                tracing::info!(upstream = %self.upstream, target = %target, "circuit breaker closed: the probe succeeded");
            } else {
                self.open();
                tracing::warn!(upstream = %self.upstream, target = %target, "circuit breaker open again: the probe failed");
            }
            return;
        }
        self.window.add(1, u64::from(!success));
        if success || self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        let ((requests, failures), _) = self.window.sums();
        if requests >= u64::from(self.cfg.min_requests)
            && failures as f64 >= self.cfg.failure_ratio * requests as f64
            && self
                .state
                .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.open();
            tracing::warn!(
                upstream = %self.upstream,
                target = %target,
                requests,
                failures,
                "circuit breaker open"
            );
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.probe && !self.finished {
            // Open, with the wait already over: the next request becomes the probe.
            self.breaker.open_until.store(now_ms(), Ordering::Release);
            self.breaker.state.store(OPEN, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_the_floor_then_twenty_percent() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request_at(now_ms());
        }
        // 10 per second always, then 20% of 100 requests in the window.
        let allowed = (0..100).filter(|_| b.try_retry()).count();
        assert!((10..=21).contains(&allowed), "allowed {allowed}");
    }

    #[test]
    fn breaker_opens_at_the_ratio_and_probes_after_open_for() {
        let cfg = CircuitBreakerConfig {
            failure_ratio: 0.5,
            min_requests: 4,
            open_for: frontdesk_config::Dur(Duration::from_millis(50)),
            ..Default::default()
        };
        let cb = CircuitBreaker::new(Arc::from("u"), &cfg);
        for ok in [true, false, true, false] {
            let mut a = cb.admit().expect("closed");
            cb.finish(&mut a, ok, Some("http://t"));
        }
        assert!(cb.is_open());
        assert_eq!(cb.admit().err(), Some(Refusal::Open));
        std::thread::sleep(Duration::from_millis(60));
        let probe = cb.admit().expect("a probe after open_for");
        assert_eq!(cb.admit().err(), Some(Refusal::Open), "one probe at a time");
        // A probe abandoned without an outcome hands the probe to the next request.
        drop(probe);
        let mut probe = cb.admit().expect("the next request probes");
        assert_eq!(cb.admit().err(), Some(Refusal::Open), "one probe at a time");
        cb.finish(&mut probe, true, None);
        drop(probe);
        assert!(!cb.is_open());
        let mut a = cb.admit().expect("closed again");
        cb.finish(&mut a, true, None);
    }
}
