//! Prometheus metrics: every metric name lives here, in one place.
//!
//! Series are plain atomics, found in lock-free maps (papaya) or resolved once when a snapshot is
//! built, so recording takes no lock shared across requests. prometheus-client's own `Histogram`
//! takes a lock per observation, so histograms here are atomic buckets encoded through
//! prometheus-client's `Collector` at scrape time; the text format itself is the crate's.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// OpenTelemetry's advised boundaries for HTTP durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

const BUCKETS_US: [u64; 14] = [
    5_000, 10_000, 25_000, 50_000, 75_000, 100_000, 250_000, 500_000, 750_000, 1_000_000,
    2_500_000, 5_000_000, 7_500_000, 10_000_000,
];

/// A duration histogram with OpenTelemetry's HTTP buckets; lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    counts: [AtomicU64; 15],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(14);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Estimated `q` quantile (0..=1) in seconds, interpolated inside its bucket; `None` before
    /// the first observation. Beyond the last boundary it answers that boundary.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 && (seen + c) as f64 >= rank {
                let Some(&hi) = DURATION_BUCKETS.get(i) else {
                    return Some(DURATION_BUCKETS[13]);
                };
                let lo = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
                let within = (rank - seen as f64) / c as f64;
                return Some(lo + (hi - lo) * within.clamp(0.0, 1.0));
            }
            seen += c;
        }
        Some(DURATION_BUCKETS[13])
    }

    fn encode(&self, mut enc: MetricEncoder<'_>) -> std::fmt::Result {
        // Per-bucket counts: the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bound = DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
                (bound, c.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        enc.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// The label value for a request method: the standard ones by name, others as `_OTHER`
/// (OpenTelemetry's rule, so a client cannot grow the series count).
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// Counter families with labels chosen at run time. Names and help texts are here only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `frontdesk_auth_failures_total{route,plugin,reason}`
    AuthFailures,
    /// `frontdesk_ratelimit_decisions_total{route,limit,decision}`
    RatelimitDecisions,
    /// `frontdesk_consumer_requests_total{consumer,route,status_class}`
    ConsumerRequests,
    /// `frontdesk_anonymous_requests_total{consumer,route,status_class}`: requests that went on
    /// as an auth plugin's `anonymous` consumer (not counted as that consumer's own).
    AnonymousRequests,
    /// `frontdesk_cache_requests_total{route,tier,result}`: cache look-ups and stores by result
    /// (hit, stale, miss, bypass, revalidated, coalesced, stored).
    Cache,
    /// `frontdesk_cache_stored_bytes_total{route,tier,result}`: body bytes stored.
    CacheStoredBytes,
    /// `frontdesk_profile_requests_total{profile,route,status_class}`: requests on the routes
    /// of client profiles.
    ProfileRequests,
    /// `frontdesk_aggregate_calls_total{route,call,result}`: the calls of aggregate routes by
    /// result (ok, failed, timeout, skipped).
    AggregateCalls,
}

impl Family {
    const ALL: [Family; 8] = [
        Family::AuthFailures,
        Family::RatelimitDecisions,
        Family::ConsumerRequests,
        Family::AnonymousRequests,
        Family::Cache,
        Family::CacheStoredBytes,
        Family::ProfileRequests,
        Family::AggregateCalls,
    ];

    fn name(self) -> &'static str {
        match self {
            Family::AuthFailures => "frontdesk_auth_failures",
            Family::RatelimitDecisions => "frontdesk_ratelimit_decisions",
            Family::ConsumerRequests => "frontdesk_consumer_requests",
            Family::AnonymousRequests => "frontdesk_anonymous_requests",
            Family::Cache => "frontdesk_cache_requests",
            Family::CacheStoredBytes => "frontdesk_cache_stored_bytes",
            Family::ProfileRequests => "frontdesk_profile_requests",
            Family::AggregateCalls => "frontdesk_aggregate_calls",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Family::AuthFailures => "Requests refused by an authentication or access plugin.",
            Family::RatelimitDecisions => "Rate limit, quota and concurrency decisions per limit.",
            Family::ConsumerRequests => "Requests per identified consumer (opt-in).",
            Family::AnonymousRequests => {
                "Requests that went on as an anonymous consumer, unidentified (opt-in)."
            }
            Family::Cache => "Response cache look-ups and stores, by result.",
            Family::CacheStoredBytes => "Response body bytes stored by the cache.",
            Family::ProfileRequests => "Requests on the routes of client profiles.",
            Family::AggregateCalls => "Calls of aggregate routes, by result.",
        }
    }

    fn label_names(self) -> [&'static str; 3] {
        match self {
            Family::AuthFailures => ["route", "plugin", "reason"],
            Family::RatelimitDecisions => ["route", "limit", "decision"],
            Family::ConsumerRequests | Family::AnonymousRequests => {
                ["consumer", "route", "status_class"]
            }
            Family::Cache | Family::CacheStoredBytes => ["route", "tier", "result"],
            Family::ProfileRequests => ["profile", "route", "status_class"],
            Family::AggregateCalls => ["route", "call", "result"],
        }
    }
}

/// A counter family's key: three label values.
pub type Labels3 = [Arc<str>; 3];

/// One upstream's counters; kept across reloads by name.
#[derive(Debug, Default)]
pub struct UpstreamSeries {
    /// Failed attempts by kind: connect, timeout, reset.
    pub connect_errors: AtomicU64,
    /// Attempts that got no response head in time.
    pub timeouts: AtomicU64,
    /// Connections that broke mid-exchange.
    pub resets: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
}

/// One listener's counters; kept across reloads by name.
#[derive(Debug, Default)]
pub struct ListenerSeries {
    /// Connections open now.
    pub connections: AtomicI64,
    /// Bytes read from clients (TLS records included on TLS listeners).
    pub received: AtomicU64,
    /// Bytes written to clients.
    pub sent: AtomicU64,
}

/// Seeded and fast: the maps are keyed by config names and bounded label values.
type Hasher = foldhash::fast::RandomState;

/// One route's request durations by method and status; found once per snapshot, so a request
/// hashes only its method and status.
#[derive(Debug)]
pub struct RouteSeries {
    /// The route's name (empty for requests that matched no route).
    pub name: Arc<str>,
    /// The client profile the route belongs to (`profiles[]`), if any.
    pub profile: Option<Arc<str>>,
    by: papaya::HashMap<(&'static str, u16), Histogram, Hasher>,
}

impl RouteSeries {
    /// A series whose map reclaims memory through `collector`, shared by every route: a map
    /// with its own collector costs kilobytes up front, which with 10,000 routes is most of a
    /// snapshot's memory.
    fn new(name: Arc<str>, profile: Option<Arc<str>>, collector: &Arc<seize::Collector>) -> Self {
        RouteSeries {
            name,
            profile,
            by: papaya::HashMap::builder()
                .hasher(Hasher::default())
                .shared_collector(collector.clone())
                .build(),
        }
    }

    /// Records a finished request.
    pub fn observe(&self, method: &'static str, status: u16, d: Duration) {
        let map = self.by.pin();
        match map.get(&(method, status)) {
            Some(h) => h.observe(d),
            None => map
                .get_or_insert_with((method, status), Histogram::default)
                .observe(d),
        }
    }
}

/// Every metric of one gateway process. Shared by all snapshots (counts survive reloads).
#[derive(Debug)]
pub struct Metrics {
    /// Memory reclamation for every route series' map.
    collector: Arc<seize::Collector>,
    server: papaya::HashMap<Arc<str>, Arc<RouteSeries>, Hasher>,
    /// Requests that matched no route (`route=""`).
    unmatched: Arc<RouteSeries>,
    active: AtomicI64,
    counters: papaya::HashMap<(Family, Labels3), Arc<AtomicU64>, Hasher>,
    upstreams: papaya::HashMap<Arc<str>, Arc<UpstreamSeries>, Hasher>,
    listeners: papaya::HashMap<Arc<str>, Arc<ListenerSeries>, Hasher>,
    /// The durations of aggregate routes' calls, by route and call.
    aggregate_calls: papaya::HashMap<(Arc<str>, Arc<str>), Arc<Histogram>, Hasher>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_ok_unix: AtomicU64,
    access_log_dropped: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let collector = Arc::new(seize::Collector::new());
        Metrics {
            server: papaya::HashMap::default(),
            unmatched: Arc::new(RouteSeries::new(Arc::from(""), None, &collector)),
            collector,
            active: AtomicI64::default(),
            counters: papaya::HashMap::default(),
            upstreams: papaya::HashMap::default(),
            listeners: papaya::HashMap::default(),
            aggregate_calls: papaya::HashMap::default(),
            reloads_ok: AtomicU64::default(),
            reloads_failed: AtomicU64::default(),
            last_reload_ok_unix: AtomicU64::default(),
            access_log_dropped: AtomicU64::default(),
        }
    }
}

/// Marks one request active until dropped (`http_server_active_requests`).
#[derive(Debug)]
pub struct Active(Arc<Metrics>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts one request as active until the guard drops.
    pub fn active(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    /// The duration series of route `name` (created on first use, kept across reloads).
    pub fn route(&self, name: &Arc<str>) -> Arc<RouteSeries> {
        self.route_in(name, None)
    }

    /// The series of route `name` of client profile `profile` (created on first use, kept
    /// across reloads; a route that moved to another profile starts a new series).
    pub fn route_in(&self, name: &Arc<str>, profile: Option<&Arc<str>>) -> Arc<RouteSeries> {
        let map = self.server.pin();
        if let Some(s) = map.get(name) {
            if s.profile.as_deref() == profile.map(|p| &**p) {
                return s.clone();
            }
        }
        let fresh = Arc::new(RouteSeries::new(
            name.clone(),
            profile.cloned(),
            &self.collector,
        ));
        map.insert(name.clone(), fresh.clone());
        fresh
    }

    /// The series of requests that matched no route.
    pub fn unmatched(&self) -> &Arc<RouteSeries> {
        &self.unmatched
    }

    /// The counter of `family` with these label values, created at zero on first use. Keep the
    /// handle where the labels are fixed; look it up per request only where they are not.
    pub fn counter(&self, family: Family, labels: Labels3) -> Arc<AtomicU64> {
        let map = self.counters.pin();
        let key = (family, labels);
        match map.get(&key) {
            Some(c) => c.clone(),
            None => map.get_or_insert_with(key, Arc::default).clone(),
        }
    }

    /// Adds one to a counter of `family`.
    pub fn inc(&self, family: Family, labels: Labels3) {
        let map = self.counters.pin();
        let key = (family, labels);
        match map.get(&key) {
            Some(c) => c.fetch_add(1, Ordering::Relaxed),
            None => map
                .get_or_insert_with(key, Arc::default)
                .fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The counters of upstream `name` (created on first use, kept across reloads).
    pub fn upstream(&self, name: &Arc<str>) -> Arc<UpstreamSeries> {
        self.upstreams
            .pin()
            .get_or_insert_with(name.clone(), Arc::default)
            .clone()
    }

    /// The counters of listener `name` (created on first use, kept across reloads).
    pub fn listener(&self, name: &Arc<str>) -> Arc<ListenerSeries> {
        self.listeners
            .pin()
            .get_or_insert_with(name.clone(), Arc::default)
            .clone()
    }

    /// The duration histogram of call `call` of aggregate route `route` (created on first use,
    /// kept across reloads): from the call's start to its answer's end, for every element of a
    /// `for_each` call together.
    pub fn aggregate_call(&self, route: &Arc<str>, call: &Arc<str>) -> Arc<Histogram> {
        self.aggregate_calls
            .pin()
            .get_or_insert_with((route.clone(), call.clone()), Arc::default)
            .clone()
    }

    /// Records the first load at start: not a reload, but the time of the last successful one,
    /// so an alert on that age works from the start (Prometheus does the same).
    pub fn loaded(&self) {
        self.last_reload_ok_unix
            .store(unix_now(), Ordering::Relaxed);
    }

    /// Records a reload attempt (not the first load at start).
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
            self.last_reload_ok_unix
                .store(unix_now(), Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts access-log lines dropped because the writer fell behind.
    pub fn access_log_dropped(&self, lines: u64) {
        self.access_log_dropped.fetch_add(lines, Ordering::Relaxed);
    }

    /// Access-log lines dropped so far.
    pub fn access_log_dropped_total(&self) -> u64 {
        self.access_log_dropped.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (OpenMetrics 1.0) of every metric, with the gauges read
    /// from `gauges` (endpoint health, breakers, store errors: the running snapshot).
    pub fn render(self: &Arc<Self>, gauges: Arc<dyn Gauges>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            metrics: self.clone(),
            gauges,
        }));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads from the running generation (endpoint latency and health, breakers, the
/// shared limiter store's errors): a view the snapshot provides, so metrics never see the snapshot.
pub trait Gauges: Send + Sync + std::fmt::Debug + 'static {
    /// Every upstream, in name order.
    fn upstreams(&self) -> Vec<UpstreamGauges<'_>>;
    /// Limit decisions whose shared store failed or was slower than its timeout.
    fn store_errors(&self) -> u64;
    /// The response cache's stores, when a route caches.
    fn cache(&self) -> Option<CacheGauges> {
        None
    }
}

/// The response cache's gauges.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheGauges {
    /// Keys stored in the memory tier (each with its variants).
    pub entries: u64,
    /// Bytes the memory tier holds, as weighed for its budget.
    pub bytes: u64,
    /// Keys the memory tier evicted to stay within its budget, since start.
    pub evictions: u64,
    /// Redis tier failures (timeouts, errors), since start; `None` without the tier.
    pub redis_errors: Option<u64>,
}

/// One upstream's gauges.
#[derive(Debug)]
pub struct UpstreamGauges<'a> {
    /// The upstream's name.
    pub name: &'a str,
    /// Its targets, in config order.
    pub targets: Vec<TargetGauges<'a>>,
    /// Whether its circuit breaker is open or half-open; `None` without one.
    pub breaker_open: Option<bool>,
}

/// One upstream target's gauges.
#[derive(Debug)]
pub struct TargetGauges<'a> {
    /// The target's URL.
    pub url: &'a str,
    /// Its response-head latency.
    pub latency: &'a Histogram,
    /// In rotation (active checks pass and it is not ejected).
    pub healthy: bool,
}

/// One scrape: encodes the metrics and reads the running generation's gauges.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    gauges: Arc<dyn Gauges>,
}

fn counter_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        // No labels: `name_total 3`, not `name_total{} 3` (which some parsers refuse).
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
        } else {
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
        }
    }
    Ok(())
}

fn gauge_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        if labels.is_empty() {
            m.encode_gauge(&v)?;
        } else {
            m.encode_family(&labels)?.encode_gauge(&v)?;
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let m = &self.metrics;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauges = self.gauges.upstreams();

        {
            let mut d = enc.encode_descriptor(
                "http_server_request_duration",
                "Duration of HTTP server requests, until the response body ends.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            let server = m.server.pin();
            for series in std::iter::once(&m.unmatched).chain(server.values()) {
                for ((method, status), h) in series.by.pin().iter() {
                    let labels = [
                        ("route", series.name.to_string()),
                        ("method", (*method).to_string()),
                        ("status", status.to_string()),
                    ];
                    h.encode(d.encode_family(&labels)?)?;
                }
            }
        }
        gauge_family(
            &mut enc,
            "http_server_active_requests",
            "Requests being served now.",
            [(vec![], m.active.load(Ordering::Relaxed))],
        )?;

        {
            let mut d = enc.encode_descriptor(
                "http_client_request_duration",
                "Time from sending a request to an upstream target to its response head.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for up in &gauges {
                for t in &up.targets {
                    let labels = [
                        ("upstream", up.name.to_string()),
                        ("target", t.url.to_string()),
                    ];
                    t.latency.encode(d.encode_family(&labels)?)?;
                }
            }
        }
        {
            let calls = m.aggregate_calls.pin();
            let mut d = enc.encode_descriptor(
                "frontdesk_aggregate_call_duration",
                "Duration of the calls of aggregate routes, from the call's start to its answer's end.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((route, call), h) in calls.iter() {
                let labels = [("route", route.to_string()), ("call", call.to_string())];
                h.encode(d.encode_family(&labels)?)?;
            }
        }
        let ups = m.upstreams.pin();
        let mut errors = Vec::new();
        let mut retries = Vec::new();
        for (name, s) in ups.iter() {
            for (kind, c) in [
                ("connect", &s.connect_errors),
                ("timeout", &s.timeouts),
                ("reset", &s.resets),
            ] {
                errors.push((
                    vec![("upstream", name.to_string()), ("kind", kind.to_string())],
                    load(c),
                ));
            }
            retries.push((vec![("upstream", name.to_string())], load(&s.retries)));
        }
        counter_family(
            &mut enc,
            "frontdesk_upstream_errors",
            "Failed upstream attempts by kind (connect, timeout, reset).",
            errors,
        )?;
        counter_family(
            &mut enc,
            "frontdesk_upstream_retries",
            "Upstream attempts after the first.",
            retries,
        )?;

        let mut healthy = Vec::new();
        let mut breakers = Vec::new();
        for up in &gauges {
            for t in &up.targets {
                healthy.push((
                    vec![
                        ("upstream", up.name.to_string()),
                        ("target", t.url.to_string()),
                    ],
                    i64::from(t.healthy),
                ));
            }
            if let Some(open) = up.breaker_open {
                breakers.push((vec![("upstream", up.name.to_string())], i64::from(open)));
            }
        }
        gauge_family(
            &mut enc,
            "frontdesk_upstream_target_healthy",
            "1 when the target is in rotation (active checks pass and it is not ejected).",
            healthy,
        )?;
        gauge_family(
            &mut enc,
            "frontdesk_circuit_breaker_open",
            "1 when the upstream's circuit breaker is open or half-open.",
            breakers,
        )?;

        for family in Family::ALL {
            let names = family.label_names();
            let series: Vec<_> = m
                .counters
                .pin()
                .iter()
                .filter(|((f, _), _)| *f == family)
                .map(|((_, l), c)| {
                    (
                        names
                            .iter()
                            .zip(l.iter())
                            .map(|(n, v)| (*n, v.to_string()))
                            .collect(),
                        load(c),
                    )
                })
                .collect();
            counter_family(&mut enc, family.name(), family.help(), series)?;
        }
        if let Some(c) = self.gauges.cache() {
            let memory = || vec![("tier", "memory".to_string())];
            gauge_family(
                &mut enc,
                "frontdesk_cache_entries",
                "Keys stored in the response cache's tier.",
                [(memory(), i64::try_from(c.entries).unwrap_or(i64::MAX))],
            )?;
            gauge_family(
                &mut enc,
                "frontdesk_cache_bytes",
                "Bytes the response cache's tier holds.",
                [(memory(), i64::try_from(c.bytes).unwrap_or(i64::MAX))],
            )?;
            counter_family(
                &mut enc,
                "frontdesk_cache_evictions",
                "Keys the response cache's tier evicted to stay within its budget.",
                [(memory(), c.evictions)],
            )?;
            if let Some(e) = c.redis_errors {
                counter_family(
                    &mut enc,
                    "frontdesk_cache_store_errors",
                    "Response cache reads and writes the Redis tier failed or timed out.",
                    [(vec![("tier", "redis".to_string())], e)],
                )?;
            }
        }
        let store_errors = self.gauges.store_errors();
        counter_family(
            &mut enc,
            "frontdesk_ratelimit_store_errors",
            "Limit decisions whose shared store failed or was slower than its timeout.",
            [(vec![], store_errors)],
        )?;

        counter_family(
            &mut enc,
            "frontdesk_config_reloads",
            "Config reloads by result (the first load at start is not one).",
            [
                (vec![("result", "success".into())], load(&m.reloads_ok)),
                (vec![("result", "failure".into())], load(&m.reloads_failed)),
            ],
        )?;
        gauge_family(
            &mut enc,
            "frontdesk_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load: the start, or the last reload.",
            [(
                vec![],
                i64::try_from(load(&m.last_reload_ok_unix)).unwrap_or(i64::MAX),
            )],
        )?;
        let listeners = m.listeners.pin();
        gauge_family(
            &mut enc,
            "frontdesk_listener_connections",
            "Client connections open now.",
            listeners.iter().map(|(n, s)| {
                (
                    vec![("listener", n.to_string())],
                    s.connections.load(Ordering::Relaxed),
                )
            }),
        )?;
        counter_family(
            &mut enc,
            "frontdesk_received_bytes",
            "Bytes read from clients.",
            listeners
                .iter()
                .map(|(n, s)| (vec![("listener", n.to_string())], load(&s.received))),
        )?;
        counter_family(
            &mut enc,
            "frontdesk_sent_bytes",
            "Bytes written to clients.",
            listeners
                .iter()
                .map(|(n, s)| (vec![("listener", n.to_string())], load(&s.sent))),
        )?;
        counter_family(
            &mut enc,
            "frontdesk_access_log_dropped",
            "Access-log lines dropped because the writer fell behind.",
            [(vec![], load(&m.access_log_dropped))],
        )?;
        Ok(())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..50 {
            h.observe(Duration::from_millis(3));
        }
        for _ in 0..50 {
            h.observe(Duration::from_millis(40));
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile(0.5).expect("observed");
        assert!(p50 <= 0.005, "{p50}");
        let p90 = h.quantile(0.9).expect("observed");
        assert!((0.025..=0.05).contains(&p90), "{p90}");
        h.observe(Duration::from_secs(60));
        assert_eq!(h.quantile(1.0), Some(10.0));
    }

    #[test]
    fn request_counts_are_exact_per_series() {
        let m = Metrics::default();
        let r = m.route(&Arc::from("users"));
        for _ in 0..7 {
            r.observe("GET", 200, Duration::from_millis(1));
        }
        r.observe("POST", 201, Duration::from_millis(1));
        let again = m.route(&Arc::from("users"));
        let count = |method, status| {
            again
                .by
                .pin()
                .get(&(method, status))
                .map_or(0, Histogram::count)
        };
        assert_eq!(count("GET", 200), 7);
        assert_eq!(count("POST", 201), 1);
        assert_eq!(count("GET", 500), 0);
    }
}
