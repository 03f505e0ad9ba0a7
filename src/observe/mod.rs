//! Observability: what the gateway records about its traffic. [`metrics`] (Prometheus, names in
//! one place), the [`access_log`] and traces ([`trace`] for W3C context, [`otlp`] for export).
//!
//! Each request that is observed at all carries one [`Exchange`], filled in along its path and
//! finished when its response body ends or is dropped: then its metrics are recorded, its spans
//! handed to the exporter and its log line to the writer thread. Nothing here blocks a request.

pub mod access_log;
pub mod metrics;
pub mod otlp;
pub mod trace;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use frontdesk_config::ObservabilityConfig;
use http::{HeaderValue, Method, Version};

use crate::error::ErrorKind;
use access_log::AccessLog;
use metrics::{Family, Metrics, RouteSeries};
use trace::TraceContext;

/// The `status_class` label values, made once.
static STATUS_CLASSES: std::sync::LazyLock<[Arc<str>; 5]> =
    std::sync::LazyLock::new(|| ["1xx", "2xx", "3xx", "4xx", "5xx"].map(Arc::from));

/// One upstream attempt, kept for its trace span.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The span the attempt was sent under (its `traceparent` parent id upstream).
    pub span_id: [u8; 8],
    /// The target URL.
    pub target: Arc<str>,
    /// When it started.
    pub start: SystemTime,
    /// How long until the response head or the failure.
    pub duration: Duration,
    /// The response status, when a head came back.
    pub status: Option<u16>,
    /// The failure, when none did.
    pub error: Option<ErrorKind>,
}

/// What one upstream call did, filled in by `Upstream::call`.
#[derive(Debug, Default)]
pub struct CallReport {
    /// The last target tried: the one that answered, or the last that failed.
    pub target: Option<Arc<str>>,
    /// From the first attempt to the response head (or the final failure), backoffs included.
    pub duration: Option<Duration>,
    /// The trace to send attempts under; when set, each attempt gets its own span id, is sent
    /// with a `traceparent` naming it, and is listed in `attempts` when sampled.
    pub trace: Option<TraceContext>,
    /// The attempts, in order (only for sampled traces).
    pub attempts: Vec<Attempt>,
    /// The request method, for a plugin's call (`None`: the exchange's own method).
    pub method: Option<http::Method>,
    /// The span the attempts are children of: an aggregate call's ([`CallSpan`]); `None`: the
    /// exchange's server span.
    pub parent: Option<[u8; 8]>,
}

/// One call of an aggregate route, kept for its trace span (an internal span under the
/// exchange's, with the call's upstream attempts under it).
#[derive(Debug, Clone)]
pub struct CallSpan {
    /// The call's name in the config.
    pub call: Arc<str>,
    /// The upstream it calls.
    pub upstream: Arc<str>,
    /// Its span id (the parent of its attempts' spans).
    pub span_id: [u8; 8],
    /// When it started.
    pub start: SystemTime,
    /// How long until its answer was read (every element's, for a `for_each` call).
    pub duration: Duration,
    /// The answer's status (the first failed element's for a `for_each` call), when one came.
    pub status: Option<u16>,
    /// `ok`, `failed`, `timeout` or `skipped`.
    pub result: &'static str,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// The elements of a `for_each` call.
    pub elements: Option<usize>,
}

/// The record of one observed request.
#[derive(Debug)]
pub struct Exchange {
    /// When the request arrived.
    pub started: Instant,
    /// The same instant on the wall clock.
    pub ts: SystemTime,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The request method.
    pub method: Method,
    /// The request's target as it arrived (only kept when the access log or traces need its
    /// path): a clone shares the request's bytes, where a copy of the path would allocate.
    pub uri: Option<http::Uri>,
    /// `Host` (or the URI authority), for traces.
    pub host: Option<HeaderValue>,
    /// The HTTP version.
    pub version: Version,
    /// Whether the client spoke TLS.
    pub tls: bool,
    /// The request id sent upstream and back.
    pub request_id: HeaderValue,
    /// The matched route (its name and duration series); `None` when no route matched.
    pub route: Option<Arc<RouteSeries>>,
    /// The client: the peer, or once a route matched, the client trusted proxies name.
    pub client_ip: Option<IpAddr>,
    /// The identified consumer.
    pub consumer: Option<Arc<str>>,
    /// True when `consumer` is an auth plugin's `anonymous` consumer: the caller was not
    /// identified.
    pub consumer_anonymous: bool,
    /// The response's `Cache-Status` on a route that caches (for the access log). Boxed: the
    /// record moves with every request, routes without a cache included.
    pub cache_status: Option<Box<HeaderValue>>,
    /// The route's upstream.
    pub upstream: Option<Arc<str>>,
    /// What the upstream call did, trace context included.
    pub call: CallReport,
    /// The upstream calls plugins made for this exchange (through an upstream handle), each
    /// traced under the exchange's span like the proxied call.
    pub side_calls: Vec<CallReport>,
    /// The calls of an aggregate route (sampled traces only), each a span with its attempts
    /// (in `side_calls`) under it.
    pub call_spans: Vec<CallSpan>,
    /// The failure, when the gateway answered for the upstream.
    pub error: Option<ErrorKind>,
    /// The response status.
    pub status: u16,
    /// Request body bytes read, when the request had a body.
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// Keeps `http_server_active_requests` until the record finishes.
    _active: Option<metrics::Active>,
}

impl Exchange {
    /// The request path without the query, when it was kept.
    pub fn path(&self) -> Option<&str> {
        self.uri.as_ref().map(http::Uri::path)
    }

    /// The matched route's name.
    pub fn route_name(&self) -> Option<&Arc<str>> {
        self.route.as_ref().map(|r| &r.name)
    }

    /// The request's trace, if it has one.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.call.trace.as_ref()
    }
}

/// Turns finished exchanges into metrics, spans and log lines.
#[derive(Debug)]
pub struct Observer {
    /// The process's metrics (the same in every generation).
    pub metrics: Arc<Metrics>,
    metrics_on: bool,
    consumer_label: bool,
    access_log: Option<Arc<AccessLog>>,
    /// The share of new traces sampled; `None` when tracing is not configured (trace headers
    /// then pass through untouched).
    trace_ratio: Option<f64>,
    exporter: Option<Arc<otlp::Exporter>>,
}

impl Observer {
    /// Builds the observer of a new generation. The access-log writer and the trace exporter
    /// are kept from `prev` when their settings did not change. An error is the field path of
    /// the setting at fault and what went wrong.
    pub fn build(
        cfg: &ObservabilityConfig,
        metrics: Arc<Metrics>,
        prev: Option<&Observer>,
    ) -> Result<Observer, (&'static str, String)> {
        // `frontdesk validate` builds snapshots without a runtime: no writer or exporter then.
        let running = tokio::runtime::Handle::try_current().is_ok();
        let access_log = match cfg.access_log.as_ref().filter(|_| running) {
            None => None,
            Some(c) => match prev.and_then(|p| p.access_log.clone()) {
                Some(l) if l.config() == c => Some(l),
                _ => Some(Arc::new(AccessLog::start(c, metrics.clone()).map_err(
                    |e| {
                        (
                            "observability.access_log.output",
                            format!("cannot open {}: {e}", c.output),
                        )
                    },
                )?)),
            },
        };
        let exporter = match cfg.tracing.as_ref() {
            Some(t) if t.otlp_endpoint.is_some() && running => {
                match prev.and_then(|p| p.exporter.clone()) {
                    Some(e) if e.config() == t => Some(e),
                    _ => Some(Arc::new(
                        otlp::Exporter::start(t).map_err(|e| ("observability.tracing", e))?,
                    )),
                }
            }
            _ => None,
        };
        Ok(Observer {
            metrics,
            metrics_on: cfg.metrics.enabled,
            consumer_label: cfg.metrics.consumer_label,
            access_log,
            trace_ratio: cfg.tracing.as_ref().map(|t| t.sample_ratio),
            exporter,
        })
    }

    /// An observer that records nothing but metrics (tests, tools).
    pub fn metrics_only(metrics: Arc<Metrics>) -> Observer {
        Observer {
            metrics,
            metrics_on: true,
            consumer_label: false,
            access_log: None,
            trace_ratio: None,
            exporter: None,
        }
    }

    /// Starts the record of a request, or `None` when nothing observes requests.
    pub fn begin<B>(
        &self,
        req: &http::Request<B>,
        listener: &Arc<str>,
        tls: bool,
        request_id: &HeaderValue,
        peer: IpAddr,
    ) -> Option<Box<Exchange>> {
        if !self.metrics_on && self.access_log.is_none() && self.trace_ratio.is_none() {
            return None;
        }
        let trace = self
            .trace_ratio
            .map(|ratio| TraceContext::from_headers(req.headers(), ratio));
        let keep_path = self.access_log.is_some() || trace.as_ref().is_some_and(|t| t.sampled);
        Some(Box::new(Exchange {
            started: crate::clock::now(),
            // Only logs and spans show the wall clock; metrics need the monotonic one alone.
            ts: if keep_path {
                crate::clock::wall()
            } else {
                SystemTime::UNIX_EPOCH
            },
            listener: listener.clone(),
            method: req.method().clone(),
            uri: keep_path.then(|| req.uri().clone()),
            host: trace.as_ref().filter(|t| t.sampled).and_then(|_| {
                req.headers().get(http::header::HOST).cloned().or_else(|| {
                    req.uri()
                        .authority()
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                })
            }),
            version: req.version(),
            tls,
            request_id: request_id.clone(),
            route: None,
            client_ip: Some(peer.to_canonical()),
            consumer: None,
            consumer_anonymous: false,
            cache_status: None,
            upstream: None,
            call: CallReport {
                trace,
                ..CallReport::default()
            },
            side_calls: Vec::new(),
            call_spans: Vec::new(),
            error: None,
            status: 0,
            bytes_in: None,
            _active: self.metrics_on.then(|| self.metrics.active()),
        }))
    }

    /// Writes out every access-log line queued so far, waiting at most `wait` (shutdown).
    pub fn flush_logs(&self, wait: std::time::Duration) {
        if let Some(log) = &self.access_log {
            log.flush(wait);
        }
    }

    /// Reopens the access-log file (after rotation); no-op for stdout and stderr.
    pub fn reopen_logs(&self) {
        if let Some(log) = &self.access_log {
            log.reopen();
        }
    }

    /// Records a finished exchange: `bytes_out` body bytes were sent.
    pub fn finish(&self, ex: Box<Exchange>, bytes_out: u64) {
        let duration = crate::clock::now().saturating_duration_since(ex.started);
        if self.metrics_on {
            let series = ex.route.as_ref().unwrap_or(self.metrics.unmatched());
            series.observe(metrics::method_label(&ex.method), ex.status, duration);
            let class = || match ex.status {
                100..=199 => 0,
                200..=299 => 1,
                300..=399 => 2,
                400..=499 => 3,
                _ => 4,
            };
            if let Some(p) = &series.profile {
                self.metrics.inc(
                    Family::ProfileRequests,
                    [
                        p.clone(),
                        series.name.clone(),
                        STATUS_CLASSES[class()].clone(),
                    ],
                );
            }
            if self.consumer_label {
                if let Some(c) = &ex.consumer {
                    let class = class();
                    let family = if ex.consumer_anonymous {
                        Family::AnonymousRequests
                    } else {
                        Family::ConsumerRequests
                    };
                    self.metrics.inc(
                        family,
                        [
                            c.clone(),
                            series.name.clone(),
                            STATUS_CLASSES[class].clone(),
                        ],
                    );
                }
            }
        }
        if let Some(exp) = &self.exporter {
            if ex.trace().is_some_and(|t| t.sampled) {
                exp.export(&ex, duration);
            }
        }
        if let Some(log) = &self.access_log {
            log.write(ex, bytes_out, duration);
        }
    }
}

/// Counts bytes of a request body as it streams.
pub fn count(counter: &Option<Arc<AtomicU64>>, n: usize) {
    if let Some(c) = counter {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}
