//! Endpoint health: the state every request reads to skip unhealthy endpoints, passive ejection
//! driven by live traffic, and the active checker task that probes endpoints in the background.
//!
//! State lives in [`EndpointState`], shared (by `Arc`) between generations, so an endpoint that did
//! not change keeps its health across a config reload. Every field is an atomic: selection reads
//! it on the hot path without a lock. Whether a failure may eject (the upstream's ejection cap) is
//! the upstream's call; this module counts and keeps the verdict.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use frontdesk_config::{ActiveHealthConfig, PassiveHealthConfig};
use http::{header, Request, StatusCode};
use tokio::time::Instant;

use super::pool::Connector;
use super::Endpoint;
use crate::body::Body;

/// Milliseconds since the first call, plus one (so 0 can mean "never").
pub(crate) fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `now`, a time read a moment ago: a caller that has one saves a clock read.
pub(crate) fn ms_at(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// Health and load of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    /// The upstream's name and the target's URL, for log lines: they are the state's identity
    /// across reloads, so they never change.
    upstream: Arc<str>,
    target: Arc<str>,
    /// False once active checks failed `unhealthy_threshold` times in a row.
    active_ok: AtomicBool,
    /// Consecutive active successes and failures (written by the checker only).
    active_successes: AtomicU32,
    active_failures: AtomicU32,
    /// Consecutive failures of live traffic.
    passive_failures: AtomicU32,
    /// `now_ms` until which the endpoint is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// Requests in flight (read by least_request and the admin API).
    pub(crate) inflight: AtomicUsize,
    /// Time from sending to the response head, per attempt that got one.
    pub latency: crate::observe::metrics::Histogram,
}

impl EndpointState {
    /// The state of a target that has seen no traffic yet: in rotation.
    pub(crate) fn new(upstream: Arc<str>, target: Arc<str>) -> Self {
        EndpointState {
            upstream,
            target,
            active_ok: AtomicBool::new(true),
            active_successes: AtomicU32::new(0),
            active_failures: AtomicU32::new(0),
            passive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            latency: Default::default(),
        }
    }
}

impl EndpointState {
    /// Whether the endpoint is in rotation: active checks pass and it is not ejected. The first
    /// call that finds an ejection run out ends it (and logs that the target is back).
    #[inline]
    pub fn is_healthy(&self) -> bool {
        if !self.active_ok.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        self.readmit(until);
        true
    }

    /// Ends an ejection that ran out; one caller wins and logs it.
    #[cold]
    fn readmit(&self, until: u64) {
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(
                upstream = %self.upstream,
                target = %self.target,
                "target back in rotation: its ejection ran out"
            );
        }
    }

    /// Whether passive checks have ejected the endpoint (live traffic failed it) and the
    /// ejection has not run out yet. Active check verdicts are not part of it.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Requests in flight to the endpoint now.
    pub fn in_flight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Records a live try's outcome for passive health (a success is any try that did not fail
    /// in a way `cfg` counts). Returns the count of consecutive failures when it reached
    /// `unhealthy_after` (and starts counting again): the caller then decides whether the
    /// upstream can spare the target, and calls [`EndpointState::eject`] if so.
    pub(crate) fn record(&self, success: bool, cfg: &PassiveHealthConfig) -> Option<u32> {
        if cfg.unhealthy_after == 0 {
            return None;
        }
        if success {
            if self.passive_failures.load(Ordering::Relaxed) != 0 {
                self.passive_failures.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let n = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < cfg.unhealthy_after {
            return None;
        }
        self.passive_failures.store(0, Ordering::Relaxed);
        Some(n)
    }

    /// Takes the target out of rotation for `cfg.eject_for` after `failures` consecutive failures.
    pub(crate) fn eject(&self, failures: u32, cfg: &PassiveHealthConfig) {
        let until = now_ms() + u64::try_from(cfg.eject_for.get().as_millis()).unwrap_or(0);
        self.ejected_until.store(until, Ordering::Relaxed);
        tracing::warn!(
            upstream = %self.upstream,
            target = %self.target,
            failures,
            eject_for = %cfg.eject_for,
            "target ejected after consecutive failures"
        );
    }

    /// Puts the endpoint back in rotation as far as active checks are concerned (used when an
    /// upstream no longer has active checks).
    pub(crate) fn clear_active(&self) {
        self.active_ok.store(true, Ordering::Relaxed);
        self.active_failures.store(0, Ordering::Relaxed);
        self.active_successes.store(0, Ordering::Relaxed);
    }

    /// Records an active probe's result; returns the new state when it flipped.
    fn record_probe(&self, success: bool, cfg: &ActiveHealthConfig) -> Option<bool> {
        if success {
            self.active_failures.store(0, Ordering::Relaxed);
            let n = self.active_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.active_ok.load(Ordering::Relaxed) && n >= cfg.healthy_threshold {
                self.active_ok.store(true, Ordering::Relaxed);
                // A target that recovered also leaves any passive ejection.
                self.ejected_until.store(0, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.active_successes.store(0, Ordering::Relaxed);
            let n = self.active_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.active_ok.load(Ordering::Relaxed) && n >= cfg.unhealthy_threshold {
                self.active_ok.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// Probes `ep` every `cfg.interval` until the task is aborted.
pub(crate) async fn run_checker(
    upstream: Arc<str>,
    ep: Endpoint,
    connector: Arc<Connector>,
    cfg: ActiveHealthConfig,
) {
    let mut tick = tokio::time::interval(cfg.interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = tokio::time::timeout(cfg.timeout.get(), probe(&ep, &connector, &cfg.path))
            .await
            .unwrap_or(false);
        if let Some(healthy) = ep.state.record_probe(ok, &cfg) {
            if healthy {
                tracing::info!(%upstream, target = %ep.url, "target back in rotation: its health checks pass");
            } else {
                tracing::warn!(%upstream, target = %ep.url, "target out of rotation: it failed its health checks");
            }
        }
    }
}

/// One `GET path` on a fresh connection: true for a 2xx or 3xx answer.
async fn probe(ep: &Endpoint, connector: &Connector, path: &str) -> bool {
    let Ok(conn) = connector.connect(ep, Duration::from_secs(3600)).await else {
        return false;
    };
    let req = Request::get(ep.request_uri(path, connector.is_h2()))
        .header(header::HOST, ep.authority.as_str())
        .header(header::USER_AGENT, "frontdesk-health-check")
        .body(Body::empty());
    let Ok(mut req) = req else {
        return false;
    };
    if connector.is_h2() {
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = http::Version::HTTP_2;
    }
    // Probe connections are not pooled (`max_idle` 0).
    match conn.send(Box::new(req), 0, 0, None, &[], None).await {
        Ok(sent) => {
            let s = sent.resp.status();
            s.is_success() || s.is_redirection() || s == StatusCode::NOT_MODIFIED
        }
        Err(_) => false,
    }
}
