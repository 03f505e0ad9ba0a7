//! Upstreams at runtime: their endpoints and how one is chosen ([`balance`]), endpoint health
//! ([`health`]), the circuit breaker and retry budget ([`breaker`]), connections ([`pool`]) and
//! TLS to targets ([`tls`]). [`Upstream::call`] is the one entry point: it picks an endpoint,
//! sends, and retries where that is safe.
//!
//! Reloads keep what is still valid: endpoints that did not change keep their health state, and
//! the pool identity survives when the connection settings did not change, so idle connections
//! to unchanged endpoints stay warm.

pub mod balance;
pub mod breaker;
pub mod h1;
pub mod health;
pub mod pool;
pub mod tls;

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use frontdesk_config::{
    ActiveHealthConfig, PassiveHealthConfig, RetryOn, UpstreamConfig, UpstreamProtocol,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use tokio::sync::oneshot;

use crate::body::{Body, BoxError, ClientBodyError};
use crate::clock;
use crate::error::ErrorKind;
use crate::observe::metrics::UpstreamSeries;
use crate::observe::{trace, Attempt, CallReport};
use balance::{Balancer, Tried};
use breaker::{CircuitBreaker, InflightToken, Refusal, RetryBudget};
use health::EndpointState;
use pool::{ConnFailure, ConnectError, Connector, PoolReturn};

/// One address of an upstream.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port` as written in the target URL.
    pub authority: Authority,
    /// The target URL as configured: the endpoint's identity across reloads.
    pub url: Arc<str>,
    /// `Host` value when the route does not preserve the client's.
    host_value: HeaderValue,
    /// `host:port` to connect to (the scheme's port filled in when absent).
    connect_addr: String,
    /// Identifies this endpoint's pooled connections: pool identity plus address.
    pool_key: u64,
    /// Health and load, shared across reloads while the endpoint is unchanged.
    pub state: Arc<EndpointState>,
    /// Relative share of requests; a target with weight 0 gets none, so it never counts as
    /// being in rotation.
    weight: u32,
}

impl Endpoint {
    /// The request target for this endpoint: absolute form for HTTP/2 (which carries scheme and
    /// authority as pseudo-headers), origin form otherwise.
    fn request_uri(&self, path_and_query: &str, absolute: bool) -> Uri {
        let pq = PathAndQuery::try_from(path_and_query).unwrap_or(PathAndQuery::from_static("/"));
        if !absolute {
            return Uri::from(pq);
        }
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).unwrap_or_default()
    }
}

/// Distinguishes pools: a reload with new connection settings starts a new pool.
static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

/// Why an upstream call failed. Every variant maps to one status in `proxy`.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be opened (refused, unreachable, connect timeout, TLS failure): 502.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection broke before a response head arrived: 502.
    #[error("upstream connection failed: {0}")]
    Reset(BoxError),
    /// No response head within the response timeout: 504.
    #[error("upstream response timed out")]
    Timeout,
    /// The circuit breaker is open: 503.
    #[error("circuit breaker open")]
    CircuitOpen,
    /// `max_concurrent` requests are in flight: 503.
    #[error("too many requests in flight to the upstream")]
    Saturated,
    /// Every endpoint is unhealthy: 503.
    #[error("no healthy endpoint")]
    NoHealthyEndpoint,
    /// The client's body failed while it was being sent (over the size limit, malformed,
    /// abandoned, stalled): the client's fault, so it never counts against the upstream's
    /// health, circuit breaker or retries. 413, 400 or 408.
    #[error(transparent)]
    ClientBody(ClientBodyError),
}

/// Why an upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A target URL did not parse.
    #[error("invalid target url {0:?}")]
    BadTarget(String),
    /// TLS material could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// What `consistent_hash` hashes.
#[derive(Debug)]
enum HashKey {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
    Path,
}

/// Retry policy, compiled.
#[derive(Debug)]
struct Retries {
    attempts: u32,
    connect_failure: bool,
    reset: bool,
    timeout: bool,
    statuses: Vec<u16>,
    backoff: Duration,
}

impl Retries {
    /// Whether any condition retries a request that was already sent.
    fn retries_sent(&self) -> bool {
        self.attempts > 0 && (self.reset || self.timeout || !self.statuses.is_empty())
    }
}

/// A named upstream, compiled.
#[derive(Debug)]
pub struct Upstream {
    /// Config name.
    pub name: Arc<str>,
    endpoints: Vec<Endpoint>,
    balancer: Balancer,
    hash_key: Option<HashKey>,
    connector: Arc<Connector>,
    /// Time to the response head.
    pub timeout: Duration,
    retries: Retries,
    passive: PassiveHealthConfig,
    /// Held while deciding on and making a passive ejection (rare: once per `unhealthy_after`
    /// failures), so two targets failing at once cannot both take the last place out.
    eject_lock: Mutex<()>,
    active: Option<ActiveHealthConfig>,
    budget: RetryBudget,
    breaker: Option<CircuitBreaker>,
    pool_id: u64,
    pool_settings: PoolSettings,
    /// Error and retry counters, kept across reloads by name.
    series: Arc<UpstreamSeries>,
}

#[derive(Clone, Debug, PartialEq)]
struct PoolSettings {
    native_http1: bool,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    protocol: UpstreamProtocol,
    tls: Option<frontdesk_config::UpstreamTlsConfig>,
}

/// Per-call settings from the route and the request.
#[derive(Debug)]
pub struct CallOptions {
    /// The request's consistent-hash key, from [`Upstream::hash_of`].
    pub hash: Option<u64>,
    /// Keep the client's `Host`; otherwise the endpoint's authority is sent.
    pub preserve_host: bool,
    /// Fires when the request body has been sent: the response timer starts then.
    pub body_sent: BodySent,
    /// Filled in with what the call did, when the request is observed. Its trace context (if
    /// any) names each attempt's span in the `traceparent` sent upstream.
    pub report: Option<CallReport>,
    /// The caller can take the response's fields as lines ([`Lease::raw_fields`]) instead of a
    /// header map, with the fields this rule drops left out, unless it sends one to a map.
    /// Native HTTP/1 connections only; others always fill the map.
    pub raw_fields: Option<h1::FieldRule>,
    /// Fields to send after the request's own, which its map does not hold: the native HTTP/1
    /// client writes them as they are, any other connection puts them in the map first (see
    /// [`Upstream::writes_added_fields`]).
    pub added: AddedFields,
}

/// Fields a caller adds to a request beside its map ([`CallOptions::added`]); room for the
/// proxy's own (`X-Forwarded-For`, `-Proto`, `-Host`, `Via`, `X-Request-Id`) without an
/// allocation. Names are statics: a name by reference keeps the options small, and they are
/// moved into every call.
pub type AddedFields = smallvec::SmallVec<[AddedField; 5]>;

/// One of [`AddedFields`].
pub type AddedField = (&'static http::HeaderName, http::HeaderValue);

/// Waits for the request body to be sent, and keeps the client's fault if it failed. Survives
/// attempts: a request that comes back unsent (a failed connect, a pooled connection that had
/// closed) keeps its signal for the next one.
#[derive(Debug, Default)]
pub struct BodySent {
    rx: Option<oneshot::Receiver<Result<(), ClientBodyError>>>,
    fault: Option<ClientBodyError>,
}

impl BodySent {
    /// Waits on `rx` (told or dropped by the body once it has been read to the end or failed).
    pub fn new(rx: oneshot::Receiver<Result<(), ClientBodyError>>) -> Self {
        BodySent {
            rx: Some(rx),
            fault: None,
        }
    }

    async fn wait(&mut self) {
        if let Some(rx) = &mut self.rx {
            if let Ok(Err(e)) = rx.await {
                self.fault = Some(e);
            }
            // Cleared in the same poll that saw it fire: a finished receiver is never polled again.
            self.rx = None;
        }
    }

    /// The client's fault that ended the body, if it has failed. An HTTP/2 upstream connection
    /// reports a failed request body as a reset of its own, so the body's word is taken here.
    fn fault(&mut self) -> Option<ClientBodyError> {
        if let Some(rx) = &mut self.rx {
            match rx.try_recv() {
                Ok(r) => {
                    self.fault = r.err();
                    self.rx = None;
                }
                Err(oneshot::error::TryRecvError::Closed) => self.rx = None,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        self.fault.clone()
    }
}

/// What a successful call holds until its response body is done: the connection to give back
/// and the in-flight counts to release. Boxed: the response and its body move from the call to
/// the server several times, and each move copies what they hold inline.
#[derive(Debug)]
pub struct Lease(Box<LeaseParts>);

#[derive(Debug)]
struct LeaseParts {
    pool: Option<PoolReturn>,
    _endpoint: Option<EndpointInflight>,
    _upstream: Option<InflightToken>,
    raw: Option<crate::http1::RawFields>,
}

impl Lease {
    /// The response's fields as lines, when [`CallOptions::raw_fields`] asked for them and the
    /// connection gave them: the response's header map then holds none of the upstream's.
    pub fn raw_fields(&self) -> Option<&crate::http1::RawFields> {
        self.0.raw.as_ref()
    }

    /// The response completed: the connection may carry another request.
    pub fn finish(mut self) {
        if let Some(p) = self.0.pool.take() {
            p.give_back();
        }
    }
}

/// Holds one request in an endpoint's in-flight count.
#[derive(Debug)]
struct EndpointInflight(Arc<EndpointState>);

impl EndpointInflight {
    fn new(state: &Arc<EndpointState>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        EndpointInflight(state.clone())
    }
}

impl Drop for EndpointInflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one attempt ended, when it did not produce a response to return.
enum Failed {
    /// The request was never sent and comes back.
    Connect(ConnectError, Box<Request<Body>>),
    Reset(BoxError, Option<Box<Request<Body>>>),
    Timeout,
    /// The client's body failed: nothing to hold against the endpoint.
    Client(ClientBodyError),
}

impl Failed {
    fn kind(&self) -> ErrorKind {
        match self {
            Failed::Connect(..) => ErrorKind::UpstreamConnect,
            Failed::Reset(..) => ErrorKind::UpstreamReset,
            Failed::Timeout => ErrorKind::UpstreamTimeout,
            Failed::Client(_) => ErrorKind::BadRequest,
        }
    }
}

impl Upstream {
    /// Compiles `cfg`. From `prev` (the same upstream in the running config) it keeps the health
    /// state of unchanged endpoints and the pool when the connection settings are unchanged.
    pub fn build(
        name: &str,
        cfg: &UpstreamConfig,
        prev: Option<&Upstream>,
        series: Arc<UpstreamSeries>,
        native_http1: bool,
    ) -> Result<Upstream, UpstreamError> {
        let pool_settings = PoolSettings {
            native_http1,
            connect_timeout: cfg.connect_timeout(),
            max_idle: cfg.max_idle_per_target,
            idle_timeout: cfg.idle_timeout(),
            protocol: cfg.protocol,
            tls: cfg.tls.clone(),
        };
        let name: Arc<str> = Arc::from(name);
        let pool_id = match prev {
            Some(p) if p.pool_settings == pool_settings => p.pool_id,
            _ => NEXT_POOL.fetch_add(1, Ordering::Relaxed),
        };
        let mut endpoints = Vec::new();
        let mut weights = Vec::new();
        let mut https = false;
        for t in &cfg.targets {
            let (scheme, rest, port) = if let Some(r) = t.url.strip_prefix("http://") {
                (Scheme::HTTP, r, 80)
            } else if let Some(r) = t.url.strip_prefix("https://") {
                https = true;
                (Scheme::HTTPS, r, 443)
            } else {
                return Err(UpstreamError::BadTarget(t.url.clone()));
            };
            let authority: Authority = rest
                .trim_end_matches('/')
                .parse()
                .map_err(|_| UpstreamError::BadTarget(t.url.clone()))?;
            let connect_addr = match authority.port_u16() {
                Some(_) => authority.as_str().to_string(),
                None => format!("{}:{port}", authority.host()),
            };
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (pool_id, &connect_addr).hash(&mut h);
            let url: Arc<str> = Arc::from(t.url.trim_end_matches('/'));
            let state = prev
                .and_then(|p| p.endpoints.iter().find(|e| e.url == url))
                .map(|e| e.state.clone())
                .unwrap_or_else(|| Arc::new(EndpointState::new(name.clone(), url.clone())));
            endpoints.push(Endpoint {
                host_value: HeaderValue::from_str(authority.as_str())
                    .map_err(|_| UpstreamError::BadTarget(t.url.clone()))?,
                scheme,
                authority,
                url,
                connect_addr,
                pool_key: h.finish(),
                state,
                weight: t.weight,
            });
            weights.push(t.weight);
        }
        let tls = if https {
            Some(tls::client_config(cfg.tls.as_ref(), cfg.protocol)?)
        } else {
            None
        };
        let ids: Vec<&str> = endpoints.iter().map(|e| &*e.url).collect();
        let balancer = Balancer::new(cfg.load_balancing, &weights, &ids);
        let hash_key = cfg
            .hash_key
            .as_deref()
            .and_then(|k| match k.split_once(':') {
                Some(("header", n)) => HeaderName::from_bytes(n.as_bytes())
                    .ok()
                    .map(HashKey::Header),
                Some(("cookie", n)) => Some(HashKey::Cookie(n.to_string())),
                None if k == "client_ip" => Some(HashKey::ClientIp),
                None if k == "path" => Some(HashKey::Path),
                _ => None,
            });
        let r = &cfg.retries;
        let retries = Retries {
            attempts: r.attempts,
            connect_failure: r.on.contains(&RetryOn::ConnectFailure),
            reset: r.on.contains(&RetryOn::Reset),
            timeout: r.on.contains(&RetryOn::Timeout),
            statuses: r
                .on
                .iter()
                .filter_map(|o| match o {
                    RetryOn::Status(s) => Some(*s),
                    _ => None,
                })
                .collect(),
            backoff: r.backoff.get(),
        };
        Ok(Upstream {
            breaker: cfg
                .circuit_breaker
                .as_ref()
                .map(|c| CircuitBreaker::new(name.clone(), c)),
            name,
            endpoints,
            balancer,
            hash_key,
            connector: Arc::new(Connector::new(cfg.protocol, tls, native_http1)),
            timeout: cfg.response_timeout(),
            retries,
            passive: cfg.health_check.passive.clone(),
            eject_lock: Mutex::new(()),
            active: cfg.health_check.active.clone(),
            budget: RetryBudget::default(),
            pool_id,
            pool_settings,
            series,
        })
    }

    /// Whether requests are sent over HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.connector.is_h2()
    }

    /// Whether [`CallOptions::added`] is written without touching the request's map (the native
    /// HTTP/1 client) and nothing here reads those fields from the map first (no hashing by a
    /// header).
    pub fn writes_added_fields(&self) -> bool {
        self.connector.is_native_h1() && !matches!(self.hash_key, Some(HashKey::Header(_)))
    }

    /// Whether the circuit breaker is open now.
    pub fn breaker_open(&self) -> bool {
        self.breaker.as_ref().is_some_and(CircuitBreaker::is_open)
    }

    /// The endpoints, in config order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Starts the active health checkers (one task per endpoint); the caller aborts them when
    /// this upstream leaves the live config. Without active checks, endpoints that had them in a
    /// previous config are put back in rotation.
    pub fn start_health_checks(&self) -> Vec<tokio::task::AbortHandle> {
        let Some(active) = &self.active else {
            self.endpoints.iter().for_each(|e| e.state.clear_active());
            return Vec::new();
        };
        self.endpoints
            .iter()
            .map(|ep| {
                tokio::spawn(health::run_checker(
                    self.name.clone(),
                    ep.clone(),
                    self.connector.clone(),
                    active.clone(),
                ))
                .abort_handle()
            })
            .collect()
    }

    /// The consistent-hash key of a request, when this upstream hashes and the request has one.
    pub fn hash_of(&self, headers: &HeaderMap, path: &str, client: IpAddr) -> Option<u64> {
        let key = self.hash_key.as_ref()?;
        let h = match key {
            HashKey::Header(n) => balance::hash_bytes(headers.get(n)?.as_bytes()),
            HashKey::Path => balance::hash_bytes(path.as_bytes()),
            HashKey::ClientIp => match client {
                IpAddr::V4(v4) => balance::hash_bytes(&v4.octets()),
                IpAddr::V6(v6) => balance::hash_bytes(&v6.octets()),
            },
            HashKey::Cookie(name) => headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name).then(|| balance::hash_bytes(v.as_bytes()))
                })?,
        };
        Some(h)
    }

    /// The configured targets, in order, with their shared health and latency state.
    pub fn targets(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The circuit breaker, when configured.
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }

    /// Sends `req` (origin-form URI, `Host` set to the client's) to an endpoint and returns the
    /// response head, retrying where that is safe:
    ///
    /// - connect failures for any method (the request was never sent);
    /// - with `reset`, connections that broke before any byte was written, for any method (a
    ///   pooled connection found closed is always replaced, and that is not a retry);
    /// - resets, timeouts and the listed statuses after sending only for idempotent methods
    ///   without a body (which can be sent again as they were);
    ///
    /// each retry goes to another healthy endpoint where one exists, waits the backoff, and
    /// takes one retry from the budget. A retried status is returned as is when no retry is left.
    pub async fn call(
        &self,
        req: Box<Request<Body>>,
        opts: &mut CallOptions,
    ) -> Result<(Box<Response<Body>>, Lease), CallError> {
        let mut admission = match &self.breaker {
            Some(b) => Some(b.admit().map_err(|r| match r {
                Refusal::Open => CallError::CircuitOpen,
                Refusal::Saturated => CallError::Saturated,
            })?),
            None => None,
        };
        let mut last = None;
        let mut span = TriesSpan::default();
        let probe = self.breaker.as_ref().zip(admission.as_ref());
        let result = self.attempts(req, opts, probe, &mut last, &mut span).await;
        if let Some(r) = &mut opts.report {
            r.duration = Some(span.duration());
        }
        if let (Some(b), Some(a)) = (&self.breaker, &mut admission) {
            let ok = match &result {
                Ok((resp, _)) => Some(!resp.status().is_server_error()),
                // Says nothing about the upstream's own health: not counted.
                Err(CallError::ClientBody(_) | CallError::NoHealthyEndpoint) => None,
                Err(_) => Some(false),
            };
            if let Some(ok) = ok {
                let target = last.map(|i: usize| &*self.endpoints[i].url);
                b.finish(a, ok, target);
            }
        }
        result.map(|(resp, mut lease)| {
            lease.0._upstream = admission.as_mut().and_then(|a| a.token.take());
            (resp, lease)
        })
    }

    /// The tries of one request. `probe` is the breaker and this request's admission (which
    /// may be its half-open probe); `last` is set to the index of each target tried, `span` to
    /// when the first try started and the last one ended.
    async fn attempts(
        &self,
        req: Box<Request<Body>>,
        opts: &mut CallOptions,
        probe: Option<(&CircuitBreaker, &breaker::Admission<'_>)>,
        last: &mut Option<usize>,
        span: &mut TriesSpan,
    ) -> Result<(Box<Response<Body>>, Lease), CallError> {
        let mut recorded = false;
        // A copy to send again after a failure that consumed the request; only made when a
        // policy could use it, so the default path copies nothing.
        let replay = (self.retries.retries_sent()
            && is_idempotent(req.method())
            && http_body::Body::is_end_stream(req.body()))
        .then(|| Replay::of(&req));
        let mut next = Some(req);
        let mut tried = Tried::default();
        let mut retries_left = self.retries.attempts;
        let mut retry_no = 0;
        loop {
            let Some(req) = next.take() else {
                return Err(CallError::NoHealthyEndpoint);
            };
            let Some(idx) = self.balancer.pick(&self.endpoints, opts.hash, tried) else {
                return Err(CallError::NoHealthyEndpoint);
            };
            tried.add(idx);
            let ep = &self.endpoints[idx];
            if last.is_none() {
                if let Some((b, a)) = probe {
                    b.probing(a, &ep.url);
                }
            }
            *last = Some(idx);
            // Always counted (one atomic add): least_request reads it, and so does the admin API.
            let inflight = Some(EndpointInflight::new(&ep.state));
            let mut req = req;
            let trace_span = opts.report.as_mut().and_then(|r| {
                r.target = Some(ep.url.clone());
                let trace = r.trace.as_ref()?;
                let span_id = trace::new_span_id();
                trace.inject(req.headers_mut(), &span_id);
                Some((span_id, trace.sampled))
            });
            let (t0, wall) = (clock::now(), trace_span.map(|_| clock::wall()));
            span.first.get_or_insert(t0);
            if !recorded {
                // The first try's start times the request for the budget: no clock read of its
                // own.
                recorded = true;
                self.budget
                    .record_request_at(health::ms_at(tokio::time::Instant::from_std(t0)));
            }
            let result = self.attempt(ep, req, opts, t0).await;
            let end = clock::now();
            span.last = Some(end);
            let took = end.saturating_duration_since(t0);
            if let (Some((span_id, true)), Some(start), Some(r)) =
                (trace_span, wall, &mut opts.report)
            {
                let (status, error) = match &result {
                    Ok(sent) => (Some(sent.resp.status().as_u16()), None),
                    Err(f) => (None, Some(f.kind())),
                };
                r.attempts.push(Attempt {
                    span_id,
                    target: ep.url.clone(),
                    start,
                    duration: took,
                    status,
                    error,
                });
            }
            let failed = match result {
                Ok(pool::Sent { resp, pool, raw }) => {
                    ep.state.latency.observe(took);
                    let status = resp.status();
                    // Only listed statuses say the target is broken: any other answer, an
                    // application's own 500 included, shows it is up.
                    let failed = self.passive.statuses.contains(&status.as_u16());
                    self.passive_outcome(idx, !failed);
                    let retry = self.retries.statuses.contains(&status.as_u16())
                        && retries_left > 0
                        && replay.is_some()
                        && self.budget.try_retry();
                    if !retry {
                        return Ok((
                            resp,
                            Lease(Box::new(LeaseParts {
                                pool,
                                _endpoint: inflight,
                                _upstream: None,
                                raw,
                            })),
                        ));
                    }
                    tracing::debug!(upstream = %self.name, endpoint = %ep.authority, %status, "retrying");
                    self.series.retries.fetch_add(1, Ordering::Relaxed);
                    next = replay.as_ref().map(Replay::request);
                    retries_left -= 1;
                    retry_no += 1;
                    self.backoff(retry_no).await;
                    continue;
                }
                Err(f) => f,
            };
            drop(inflight);
            let (err, again, allowed) = match failed {
                // The client's fault: no health record, no error counter, no retry.
                Failed::Client(e) => return Err(CallError::ClientBody(e)),
                Failed::Connect(e, r) => {
                    self.series.connect_errors.fetch_add(1, Ordering::Relaxed);
                    self.passive_outcome(idx, false);
                    (CallError::Connect(e), Some(r), self.retries.connect_failure)
                }
                Failed::Reset(e, unsent) => {
                    self.series.resets.fetch_add(1, Ordering::Relaxed);
                    self.passive_outcome(idx, false);
                    (CallError::Reset(e), unsent, self.retries.reset)
                }
                Failed::Timeout => {
                    self.series.timeouts.fetch_add(1, Ordering::Relaxed);
                    self.passive_outcome(idx, false);
                    (CallError::Timeout, None, self.retries.timeout)
                }
            };
            // An unsent request goes again as it is; a sent one only as its replay copy.
            let again = again.or_else(|| replay.as_ref().map(Replay::request));
            if !allowed || retries_left == 0 || again.is_none() || !self.budget.try_retry() {
                return Err(err);
            }
            tracing::debug!(upstream = %self.name, endpoint = %ep.authority, error = %err, "retrying");
            self.series.retries.fetch_add(1, Ordering::Relaxed);
            next = again;
            retries_left -= 1;
            retry_no += 1;
            self.backoff(retry_no).await;
        }
    }

    /// Records a try's outcome for passive health, and ejects the target when it has failed
    /// `unhealthy_after` times in a row and the upstream can spare it: at most
    /// `max_ejected_ratio` of the targets are ejected at once, and at least one other target
    /// stays in rotation.
    fn passive_outcome(&self, idx: usize, success: bool) {
        let ep = &self.endpoints[idx];
        let Some(failures) = ep.state.record(success, &self.passive) else {
            return;
        };
        // Rare (once per `unhealthy_after` failures), so a lock is fine here; a poisoned one
        // guarded nothing but this decision.
        let _held = self
            .eject_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let others = || {
            self.endpoints
                .iter()
                .enumerate()
                .filter(move |(i, _)| *i != idx)
        };
        let ejected = others().filter(|(_, e)| e.state.is_ejected()).count();
        let in_rotation = others()
            .filter(|(_, e)| e.weight > 0 && e.state.is_healthy())
            .count();
        // Floored: "at most the share", so one of three targets at 50%.
        let cap = (self.endpoints.len() as f64 * self.passive.max_ejected_ratio).floor() as usize;
        if ejected < cap && in_rotation > 0 {
            ep.state.eject(failures, &self.passive);
        } else {
            tracing::debug!(
                upstream = %self.name,
                target = %ep.url,
                failures,
                ejected,
                in_rotation,
                "target kept in rotation: ejecting it would exceed max_ejected_ratio or leave no target"
            );
        }
    }

    /// One try on `ep`, started at `t0`; failures before sending hand the request back.
    async fn attempt(
        &self,
        ep: &Endpoint,
        mut req: Box<Request<Body>>,
        opts: &mut CallOptions,
        t0: Instant,
    ) -> Result<pool::Sent, Failed> {
        let h2 = self.connector.is_h2();
        self.prepare(ep, &mut req, opts.preserve_host, h2);
        let s = &self.pool_settings;
        // `t0` stands for "now" while nothing has waited since: a clock read is not free.
        let mut pooled = pool::checkout(ep.pool_key, h2, s.idle_timeout, t0);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(c) => c,
                // Boxed: connecting (TCP, TLS, HTTP/2 handshake) is rare with pooled
                // connections, and inline its state would enlarge every request's future.
                None => match Box::pin(self.connector.connect(ep, s.connect_timeout)).await {
                    Ok(c) => {
                        pool::share_h2(ep.pool_key, &c);
                        c
                    }
                    Err(e) => return Err(Failed::Connect(e, req)),
                },
            };
            if conn.ready().await.is_err() {
                if reused {
                    pooled = pool::checkout(ep.pool_key, h2, s.idle_timeout, clock::now());
                    continue;
                }
                let e = ConnectError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection closed before use",
                ));
                return Err(Failed::Connect(e, req));
            }
            let timeout = self.timeout;
            let body_sent = &mut opts.body_sent;
            // A pooled connection and no body to wait for: the timer runs from the try's start
            // `t0` (on the first pass only checkouts ran since; a pooled connection found closed
            // and replaced spent its time within the try).
            let deadline = (reused && body_sent.rx.is_none()).then(|| t0 + timeout);
            // A native connection keeps that timer itself, armed between its requests (a timer
            // per request costs a timer-wheel insert and removal).
            let kept = deadline.filter(|_| conn.keeps_time());
            let timer = async move {
                match (kept, deadline) {
                    (Some(_), _) => std::future::pending().await,
                    (None, Some(d)) => tokio::time::sleep_until(d.into()).await,
                    (None, None) => {
                        body_sent.wait().await;
                        tokio::time::sleep(timeout).await;
                    }
                }
            };
            let sent = tokio::select! {
                // The answer first when both are ready (and no random pick, which costs a
                // thread-local lookup per request).
                biased;
                r = conn.send(req, ep.pool_key, s.max_idle, opts.raw_fields, &opts.added, kept) => r,
                () = timer => {
                    // A body that failed (stalled, say) leaves the upstream waiting for it.
                    return Err(opts.body_sent.fault().map_or(Failed::Timeout, Failed::Client));
                }
            };
            match sent {
                Ok(sent) => return Ok(sent),
                Err(ConnFailure { timeout: true, .. }) => return Err(Failed::Timeout),
                Err(ConnFailure {
                    error,
                    unsent,
                    client,
                    timeout: false,
                }) => {
                    // A connection that failed because the client's body did is no fault of
                    // the endpoint's: HTTP/1 connections carry the body's error, HTTP/2 ones
                    // only a reset, so the body's own report is asked too.
                    if let Some(e) = client.or_else(|| opts.body_sent.fault()) {
                        return Err(Failed::Client(e));
                    }
                    match unsent {
                        // A pooled connection that closed while idle: never written (or, on a
                        // native connection, a bodiless idempotent request the upstream closed
                        // on without a byte of answer), so sending it again is safe.
                        Some(r) if reused => {
                            req = r;
                            pooled = pool::checkout(ep.pool_key, h2, s.idle_timeout, clock::now());
                        }
                        unsent => return Err(Failed::Reset(error, unsent)),
                    }
                }
            }
        }
    }

    /// Sets the URI and `Host` for `ep`: HTTP/2 carries the host as `:authority`.
    fn prepare(&self, ep: &Endpoint, req: &mut Request<Body>, preserve_host: bool, h2: bool) {
        if !preserve_host {
            req.headers_mut()
                .insert(header::HOST, ep.host_value.clone());
        }
        if !h2 {
            *req.version_mut() = Version::HTTP_11;
            if req.uri().scheme().is_some() {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map_or("/", PathAndQuery::as_str)
                    .to_string();
                *req.uri_mut() = ep.request_uri(&pq, false);
            }
            return;
        }
        *req.version_mut() = Version::HTTP_2;
        let authority = req
            .headers_mut()
            .remove(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| ep.authority.clone());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(ep.scheme.clone());
        parts.authority = Some(authority);
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }

    async fn backoff(&self, retry_no: u32) {
        let base = self.retries.backoff;
        if base.is_zero() {
            return;
        }
        // Never longer than MAX_BACKOFF, however large the configured base (validation bounds
        // it too): a retry that waits for ever is a request that hangs.
        let exp = base
            .saturating_mul(1 << retry_no.saturating_sub(1).min(6))
            .min(MAX_BACKOFF);
        // Full jitter between half and all of the delay spreads retries of many clients.
        let jittered = exp.mul_f64(0.5 + fastrand::f64() * 0.5);
        tokio::time::sleep(jittered).await;
    }
}

/// When a call's first try started and its last one ended.
#[derive(Default)]
struct TriesSpan {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl TriesSpan {
    fn duration(&self) -> Duration {
        match (self.first, self.last) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        }
    }
}

/// The longest wait before one retry (the base `retries.backoff` doubled, before jitter).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The request head kept for sending a bodyless request again.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn of(req: &Request<Body>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn request(&self) -> Box<Request<Body>> {
        let mut r = Box::new(Request::new(Body::empty()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// RFC 9110 §9.2.2.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A response body from [`Upstream::call`] that gives its connection back (finishes `lease`)
/// once read to its end; dropped midway, the connection is not reused.
pub fn leased(body: Body, lease: Lease) -> Body {
    Body::new(Leased {
        body,
        lease: Some(lease),
    })
}

struct Leased {
    body: Body,
    lease: Option<Lease>,
}

impl http_body::Body for Leased {
    type Data = bytes::Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let out = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = out {
            if let Some(l) = self.lease.take() {
                l.finish();
            }
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        if let (Some(l), true) = (self.lease.take(), self.body.is_empty()) {
            l.finish();
        }
    }
}
