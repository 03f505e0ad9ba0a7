//! Export of finished request spans over OTLP/gRPC.
//!
//! A request's spans are known only once it has finished, with ids the gateway already chose
//! (the server span's id is in no header, but each attempt's id went upstream in its
//! `traceparent`). The SDK's `Tracer` always draws span ids from its id generator, so the spans
//! are built here as `SpanData` and handed straight to a `BatchSpanProcessor`: one `try_send` into
//! a bounded queue per span (dropped when full), batched and exported by the processor's own
//! thread. Nothing on the request path waits for the collector.
//!
//! A collector that cannot be reached would fail every batch (about once a second under
//! traffic), and the SDK logs each failure. The exporter is wrapped in [`Reporting`], which logs
//! the first failure, then a summary at most once a minute, then the recovery; the SDK's own
//! per-batch lines are dropped by [`sdk_export_failures`], a filter for the log subscriber.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use frontdesk_config::TracingConfig;
use http::uri::Authority;
use http::{Method, Version};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks,
    SpanProcessor, OTEL_BSP_SCHEDULE_DELAY,
};
use opentelemetry_sdk::Resource;

use super::{Attempt, CallReport, CallSpan, Exchange};

/// How long a batch waits for more spans before it is sent, unless `OTEL_BSP_SCHEDULE_DELAY`
/// says otherwise. Shorter than the SDK's 5 s so traces show up while someone is looking; an
/// idle gateway sends nothing, and a busy one sends full batches (512 spans) sooner anyway.
const SCHEDULE_DELAY: Duration = Duration::from_secs(1);

/// How long dropping the exporter waits for its last batch to be sent.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// While exports keep failing, the shortest time between two log lines about it.
const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The span exporter: a batch processor feeding an OTLP/gRPC exporter.
pub struct Exporter {
    cfg: TracingConfig,
    // Shared only so that `Drop` can hand it to another thread when it must not block.
    processor: Arc<BatchSpanProcessor>,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("cfg", &self.cfg).finish()
    }
}

impl Exporter {
    /// Starts exporting to `cfg.otlp_endpoint`. Must run inside the Tokio runtime: the gRPC
    /// channel's connection task lives there (it connects lazily, so a collector that is down at
    /// start is not an error).
    pub fn start(cfg: &TracingConfig) -> Result<Exporter, String> {
        let endpoint = cfg
            .otlp_endpoint
            .as_deref()
            .ok_or("otlp_endpoint is not set")?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("otlp_endpoint {endpoint:?}: {e}"))?;
        // The OTEL_BSP_* variables (queue size 2048, batch size 512, export timeout) keep their
        // meaning; only the delay's default is ours.
        let mut batch = BatchConfigBuilder::default();
        if std::env::var_os(OTEL_BSP_SCHEDULE_DELAY).is_none() {
            batch = batch.with_scheduled_delay(SCHEDULE_DELAY);
        }
        let exporter = Reporting {
            inner: exporter,
            endpoint: endpoint.to_string(),
            log: Mutex::new(FailureLog::default()),
        };
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        );
        Ok(Exporter {
            cfg: cfg.clone(),
            processor: Arc::new(processor),
            scope: InstrumentationScope::builder("frontdesk")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &TracingConfig {
        &self.cfg
    }

    /// Hands the spans of a finished, sampled exchange to the exporter: one server span that
    /// lasted `duration`, and a client span under it for each upstream attempt.
    pub fn export(&self, ex: &Exchange, duration: Duration) {
        let Some(trace) = ex.trace() else { return };
        let trace_id = TraceId::from_bytes(trace.trace_id);
        // The caller's tracestate stays with the trace; one that does not parse is left out of
        // the spans (it was still passed upstream as it came).
        let state = trace
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok()?.parse::<TraceState>().ok())
            .unwrap_or_default();
        let server_id = SpanId::from_bytes(trace.span_id);
        let method = Semconv::method(&ex.method);
        // The proxied call's attempts, then those of the calls plugins made, each named by its
        // own method.
        let side: Vec<(Semconv, &CallReport)> = ex
            .side_calls
            .iter()
            .map(|c| (Semconv::method(c.method.as_ref().unwrap_or(&ex.method)), c))
            .collect();
        let calls = std::iter::once((&method, &ex.call)).chain(side.iter().map(|(m, c)| (m, *c)));
        let attempts = calls.flat_map(|(m, c)| {
            let parent = c.parent.map_or(server_id, SpanId::from_bytes);
            c.attempts
                .iter()
                .enumerate()
                .map(move |(i, a)| (m, parent, i, a))
        });
        for (method, parent, i, a) in attempts {
            self.processor.on_end(SpanData {
                span_context: SpanContext::new(
                    trace_id,
                    SpanId::from_bytes(a.span_id),
                    TraceFlags::SAMPLED,
                    false,
                    state.clone(),
                ),
                parent_span_id: parent,
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: method.span_name(None),
                start_time: a.start,
                end_time: a.start + a.duration,
                attributes: attempt_attributes(method, a, i),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: attempt_status(a),
                instrumentation_scope: self.scope.clone(),
            });
        }
        // An aggregate route's calls: one internal span each, its attempts under it.
        for c in &ex.call_spans {
            self.processor.on_end(SpanData {
                span_context: SpanContext::new(
                    trace_id,
                    SpanId::from_bytes(c.span_id),
                    TraceFlags::SAMPLED,
                    false,
                    state.clone(),
                ),
                parent_span_id: server_id,
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: Cow::Owned(format!("aggregate {}", c.call)),
                start_time: c.start,
                end_time: c.start + c.duration,
                attributes: call_attributes(c, ex),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: if c.result == "ok" {
                    Status::Unset
                } else {
                    Status::error(c.reason.clone().unwrap_or_default())
                },
                instrumentation_scope: self.scope.clone(),
            });
        }
        let failed = ex.status >= 500;
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(trace_id, server_id, TraceFlags::SAMPLED, false, state),
            parent_span_id: trace
                .parent_span_id
                .map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: trace.parent_span_id.is_some(),
            span_kind: SpanKind::Server,
            name: method.span_name(ex.route_name().map(|r| &**r)),
            start_time: ex.ts,
            end_time: ex.ts + duration,
            attributes: server_attributes(&method, ex),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            // A server span is an error only for 5xx: a 4xx is the client's mistake.
            status: if failed {
                Status::error(ex.error.map_or("", |e| e.as_str()))
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        });
    }
}

impl Drop for Exporter {
    /// Sends what is still queued, waiting at most `SHUTDOWN_WAIT`. The export itself runs on the
    /// processor's thread but needs the runtime's gRPC connection task, so a runtime thread must
    /// not sit waiting for it unless others can run that task.
    fn drop(&mut self) {
        let processor = self.processor.clone();
        let shutdown = move || {
            let _ = processor.shutdown_with_timeout(SHUTDOWN_WAIT);
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(shutdown),
            Ok(_) => {
                // One runtime thread: waiting here would starve the export it waits for.
                let _ = std::thread::Builder::new()
                    .name("otlp-shutdown".into())
                    .spawn(shutdown);
            }
            Err(_) => shutdown(),
        }
    }
}

/// Whether `meta` is one of the SDK's own lines about a failed export (one per batch, from
/// `opentelemetry_sdk` and `opentelemetry-otlp`), which [`Reporting`] replaces.
fn is_sdk_export_failure(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_event()
        && matches!(meta.target(), "opentelemetry_sdk" | "opentelemetry-otlp")
        && (meta.name() == "BatchSpanProcessor.ExportError"
            || meta.name().starts_with("Export.Failed."))
}

/// A log filter that drops the SDK's per-batch export failure lines; the exporter logs the
/// first failure and then a summary at most once a minute instead. Add it to the subscriber
/// that prints the gateway's logs, with the most verbose level that subscriber prints
/// (`EnvFilter::max_level_hint`).
///
/// The hint matters: a filter without one lets every `trace!` span and event of every crate
/// (h2 makes several per frame) be built and offered to the subscriber, which tripled the
/// instructions of an HTTP/2 request.
pub fn sdk_export_failures<S>(
    max_level: Option<tracing_subscriber::filter::LevelFilter>,
) -> impl tracing_subscriber::layer::Filter<S> {
    let filter = tracing_subscriber::filter::filter_fn(|meta| !is_sdk_export_failure(meta));
    match max_level {
        Some(level) => filter.with_max_level_hint(level),
        None => filter,
    }
}

/// The gateway's log subscriber: lines at `levels` on stderr, without the SDK's per-batch export
/// failures (see [`sdk_export_failures`]). Its max level hint is that of `levels`, so callsites
/// above it (h2's per-frame `trace!` spans, say) cost nothing.
pub fn log_subscriber(
    levels: tracing_subscriber::EnvFilter,
) -> impl tracing::Subscriber + Send + Sync + 'static {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::Layer as _;
    let max_level = levels.max_level_hint();
    tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(levels)
            // The OTLP exporter reports its failures itself, at a bounded rate.
            .with_filter(sdk_export_failures(max_level)),
    )
}

/// The OTLP exporter, with its failures logged at a bounded rate.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    /// The collector, named in the log lines.
    endpoint: String,
    log: Mutex<FailureLog>,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        let line = {
            // Exports never run concurrently; the lock only satisfies `Sync`.
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            match &result {
                Ok(()) => log.success(Instant::now()),
                Err(e) => log.failure(Instant::now(), n, e.to_string()),
            }
        };
        if let Some(line) = line {
            line.emit(&self.endpoint);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// What has been logged about failing exports: the first failure is logged at once, later ones
/// are counted and summarised at most once per [`FAILURE_SUMMARY_EVERY`], and the first success
/// after failures is logged with the failures not yet reported.
#[derive(Debug, Default)]
struct FailureLog {
    /// When the last line about failures was logged; `None` while exports succeed.
    last_line: Option<Instant>,
    /// Failed exports (and their spans) since that line.
    failed: u64,
    spans: u64,
    last_error: String,
}

/// A line [`FailureLog`] decided to log.
#[derive(Debug, PartialEq)]
enum FailureLine {
    /// The first failure after exports worked (or since start).
    First { error: String, spans: u64 },
    /// Exports kept failing: `failed` more, losing `spans` spans, since the last line.
    Summary {
        failed: u64,
        spans: u64,
        over: Duration,
        last_error: String,
    },
    /// Exports work again, after `failed` failures not reported yet.
    Recovered { failed: u64, spans: u64 },
}

impl FailureLog {
    fn failure(&mut self, now: Instant, spans: usize, error: String) -> Option<FailureLine> {
        let spans = u64::try_from(spans).unwrap_or(u64::MAX);
        let Some(last) = self.last_line else {
            self.last_line = Some(now);
            return Some(FailureLine::First { error, spans });
        };
        self.failed += 1;
        self.spans = self.spans.saturating_add(spans);
        self.last_error = error;
        let over = now.saturating_duration_since(last);
        if over < FAILURE_SUMMARY_EVERY {
            return None;
        }
        self.last_line = Some(now);
        Some(FailureLine::Summary {
            failed: std::mem::take(&mut self.failed),
            spans: std::mem::take(&mut self.spans),
            over,
            last_error: std::mem::take(&mut self.last_error),
        })
    }

    fn success(&mut self, _now: Instant) -> Option<FailureLine> {
        self.last_line.take()?;
        self.last_error.clear();
        Some(FailureLine::Recovered {
            failed: std::mem::take(&mut self.failed),
            spans: std::mem::take(&mut self.spans),
        })
    }
}

impl FailureLine {
    fn emit(&self, endpoint: &str) {
        match self {
            FailureLine::First { error, spans } => tracing::warn!(
                endpoint,
                %error,
                spans,
                "span export to the OTLP collector failed; further failures are summarised at most once a minute"
            ),
            FailureLine::Summary {
                failed,
                spans,
                over,
                last_error,
            } => tracing::warn!(
                endpoint,
                failed,
                spans,
                over = ?over,
                %last_error,
                "span exports to the OTLP collector are still failing"
            ),
            FailureLine::Recovered { failed, spans } => tracing::info!(
                endpoint,
                failed,
                spans,
                "span export to the OTLP collector works again"
            ),
        }
    }
}

/// The request method as the HTTP semantic conventions name it: one of the nine standard
/// methods, or `_OTHER` with the original kept apart (an unbounded value must not become a span
/// name).
struct Semconv {
    method: &'static str,
    original: Option<String>,
}

impl Semconv {
    fn method(m: &Method) -> Semconv {
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        match KNOWN.into_iter().find(|k| *k == m.as_str()) {
            Some(k) => Semconv {
                method: k,
                original: None,
            },
            None => Semconv {
                method: "_OTHER",
                original: Some(m.as_str().to_string()),
            },
        }
    }

    /// `{method} {route}`, `{method}` without a route, and `HTTP` for an unknown method.
    fn span_name(&self, route: Option<&str>) -> Cow<'static, str> {
        let method = if self.original.is_some() {
            "HTTP"
        } else {
            self.method
        };
        match route {
            Some(r) => Cow::Owned(format!("{method} {r}")),
            None => Cow::Borrowed(method),
        }
    }

    fn push(&self, attrs: &mut Vec<KeyValue>) {
        attrs.push(KeyValue::new("http.request.method", self.method));
        if let Some(o) = &self.original {
            attrs.push(KeyValue::new("http.request.method_original", o.clone()));
        }
    }
}

/// `server.address` (IPv6 without brackets) and `server.port` from a host and optional port.
fn push_server(attrs: &mut Vec<KeyValue>, authority: &str) {
    let Ok(a) = authority.parse::<Authority>() else {
        return;
    };
    let host = a.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    attrs.push(KeyValue::new("server.address", host.to_string()));
    if let Some(port) = a.port_u16() {
        attrs.push(KeyValue::new("server.port", i64::from(port)));
    }
}

fn server_attributes(method: &Semconv, ex: &Exchange) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(16);
    method.push(&mut attrs);
    if let Some(p) = ex.path() {
        attrs.push(KeyValue::new("url.path", p.to_string()));
    }
    attrs.push(KeyValue::new(
        "url.scheme",
        if ex.tls { "https" } else { "http" },
    ));
    if let Some(h) = ex.host.as_ref().and_then(|h| h.to_str().ok()) {
        push_server(&mut attrs, h);
    }
    attrs.push(KeyValue::new("network.protocol.name", "http"));
    attrs.push(KeyValue::new(
        "network.protocol.version",
        protocol_version(ex.version),
    ));
    if let Some(r) = ex.route_name() {
        attrs.push(KeyValue::new("http.route", r.clone()));
    }
    attrs.push(KeyValue::new(
        "http.response.status_code",
        i64::from(ex.status),
    ));
    if let Some(ip) = ex.client_ip {
        attrs.push(KeyValue::new("client.address", ip.to_string()));
    }
    if ex.status >= 500 {
        // The gateway's own reason when it answered for the upstream, else the status code.
        attrs.push(KeyValue::new(
            "error.type",
            ex.error
                .map_or_else(|| ex.status.to_string(), |e| e.as_str().to_string()),
        ));
    }
    if let Some(e) = ex.error {
        // Also for 4xx refusals (auth, rate limits, no route), which are not span errors.
        attrs.push(KeyValue::new("frontdesk.error", e.as_str()));
    }
    if let Ok(id) = ex.request_id.to_str() {
        attrs.push(KeyValue::new("frontdesk.request_id", id.to_string()));
    }
    attrs.push(KeyValue::new("frontdesk.listener", ex.listener.clone()));
    if let Some(c) = &ex.consumer {
        attrs.push(KeyValue::new("frontdesk.consumer", c.clone()));
        if ex.consumer_anonymous {
            attrs.push(KeyValue::new("frontdesk.consumer_anonymous", true));
        }
    }
    if let Some(u) = &ex.upstream {
        attrs.push(KeyValue::new("frontdesk.upstream", u.clone()));
    }
    attrs
}

/// An aggregate call's span attributes.
fn call_attributes(c: &CallSpan, ex: &Exchange) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(8);
    attrs.push(KeyValue::new("frontdesk.aggregate.call", c.call.clone()));
    attrs.push(KeyValue::new("frontdesk.upstream", c.upstream.clone()));
    attrs.push(KeyValue::new("frontdesk.aggregate.result", c.result));
    if let Some(r) = ex.route_name() {
        attrs.push(KeyValue::new("http.route", r.clone()));
    }
    if let Some(s) = c.status {
        attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    if let Some(n) = c.elements {
        attrs.push(KeyValue::new(
            "frontdesk.aggregate.elements",
            i64::try_from(n).unwrap_or(i64::MAX),
        ));
    }
    if c.result != "ok" {
        attrs.push(KeyValue::new("error.type", c.result));
    }
    attrs
}

/// A client span's attributes; `index` counts earlier attempts of the same request.
fn attempt_attributes(method: &Semconv, a: &Attempt, index: usize) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(8);
    method.push(&mut attrs);
    attrs.push(KeyValue::new("url.full", a.target.clone()));
    if let Ok(uri) = a.target.parse::<http::Uri>() {
        if let Some(auth) = uri.authority() {
            push_server(&mut attrs, auth.as_str());
        }
    }
    if index > 0 {
        attrs.push(KeyValue::new(
            "http.request.resend_count",
            i64::try_from(index).unwrap_or(i64::MAX),
        ));
    }
    if let Some(s) = a.status {
        attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    match (a.error, a.status) {
        (Some(e), _) => attrs.push(KeyValue::new("error.type", e.as_str())),
        (None, Some(s)) if s >= 400 => attrs.push(KeyValue::new("error.type", s.to_string())),
        _ => {}
    }
    attrs
}

/// A client span is an error for a failure or any 4xx/5xx answer.
fn attempt_status(a: &Attempt) -> Status {
    match (a.error, a.status) {
        (Some(e), _) => Status::error(e.as_str()),
        (None, Some(s)) if s >= 400 => Status::error(""),
        _ => Status::Unset,
    }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(attrs: &[KeyValue], key: &str) -> Option<String> {
        attrs
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn the_log_subscriber_keeps_the_level_hint_so_trace_callsites_cost_nothing() {
        use tracing::level_filters::LevelFilter;
        use tracing::Subscriber as _;
        for (levels, hint) in [
            ("info", LevelFilter::INFO),
            ("warn", LevelFilter::WARN),
            ("debug", LevelFilter::DEBUG),
        ] {
            let sub = log_subscriber(tracing_subscriber::EnvFilter::new(levels));
            assert_eq!(sub.max_level_hint(), Some(hint), "{levels}");
        }
    }

    #[test]
    fn unknown_methods_are_other_and_never_a_span_name() {
        let m = Semconv::method(&Method::from_bytes(b"PURGE").expect("token"));
        assert_eq!(m.span_name(Some("cache")), "HTTP cache");
        let mut attrs = Vec::new();
        m.push(&mut attrs);
        assert_eq!(
            get(&attrs, "http.request.method").as_deref(),
            Some("_OTHER")
        );
        assert_eq!(
            get(&attrs, "http.request.method_original").as_deref(),
            Some("PURGE")
        );
        let get_ = Semconv::method(&Method::GET);
        assert_eq!(get_.span_name(None), "GET");
        assert_eq!(get_.span_name(Some("users")), "GET users");
    }

    #[test]
    fn failures_are_logged_once_then_summarised_once_a_minute_then_recovery() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            log.failure(at(0), 3, "refused".into()),
            Some(FailureLine::First {
                error: "refused".into(),
                spans: 3
            })
        );
        // One failure a second for just under a minute: nothing.
        for s in 1..60 {
            assert_eq!(log.failure(at(s), 2, format!("e{s}")), None, "at {s}s");
        }
        assert_eq!(
            log.failure(at(60), 2, "e60".into()),
            Some(FailureLine::Summary {
                failed: 60,
                spans: 120,
                over: Duration::from_secs(60),
                last_error: "e60".into()
            })
        );
        assert_eq!(log.failure(at(61), 1, "e61".into()), None);
        assert_eq!(
            log.success(at(62)),
            Some(FailureLine::Recovered {
                failed: 1,
                spans: 1
            })
        );
        assert_eq!(log.success(at(63)), None, "nothing to say while it works");
        assert!(
            matches!(
                log.failure(at(64), 1, "again".into()),
                Some(FailureLine::First { .. })
            ),
            "a new outage is logged at once"
        );
    }

    #[test]
    fn server_address_drops_ipv6_brackets_and_splits_the_port() {
        let mut attrs = Vec::new();
        push_server(&mut attrs, "[::1]:8443");
        assert_eq!(get(&attrs, "server.address").as_deref(), Some("::1"));
        assert_eq!(get(&attrs, "server.port").as_deref(), Some("8443"));
        let mut attrs = Vec::new();
        push_server(&mut attrs, "api.example.com");
        assert_eq!(
            get(&attrs, "server.address").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(get(&attrs, "server.port"), None);
    }
}
