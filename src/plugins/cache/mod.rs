//! `cache`: answers from stored responses and stores the upstream's (RFC 9111, as a shared
//! cache), in the stores of `crate::cache`.
//!
//! On the request (`request_filter`) it looks the key up: a fresh stored response is the answer
//! (`304` to a client's own matching conditional request, `206` to a `Range`); a stale one is
//! served at once within `stale-while-revalidate` while one background request refreshes it,
//! else revalidated upstream with its validators. A miss joins the key's flight: the first
//! request goes upstream, the others wait for its head and stream its body. On the response it
//! decides whether to store; the body is copied as it streams to the client and stored only if it
//! ends whole within `max_object_size`. A `304` to a revalidation refreshes the stored headers
//! and the stored body is sent; an upstream failure within `stale-if-error` is answered with the
//! stale response (`recover`). Unsafe methods that succeed invalidate their URL. Every response
//! carries `Cache-Status` (RFC 9211).

mod key;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use frontdesk_config::{CacheConfig, CacheTier};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;

use crate::body::{Body, BodyFrame};
use crate::cache::flight::{Joined, Leader, Shared};
use crate::cache::policy::{self, Directives, NotStored, Rules};
use crate::cache::redis::Lease;
use crate::cache::{strip_scheme, Cache, Entry, Freshness, Meta, Purge};
use crate::observe::metrics::Family;
use crate::plugin::{
    BodyAction, BodyFilter, BuildEnv, Ctx, Flow, FrameSink, Phases, Plugin, PluginError,
    PluginFactory, PluginResponse, RequestHead, ResponseHead, UpstreamHandle,
};

pub use key::Part as KeyPart;

/// `Cache-Status` (RFC 9211).
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The cache's name in `Cache-Status`.
const NAME: &str = "frontdesk";

/// The built plugin.
pub struct CachePlugin {
    cache: Arc<Cache>,
    /// Tiers in look-up order (the Redis one only when the cache has it: `frontdesk validate`
    /// builds without connecting).
    tiers: Tiers,
    rules: Rules,
    key: Vec<KeyPart>,
    head: bool,
    max_object_size: u64,
    lock: Option<Duration>,
    tag_header: Option<HeaderName>,
    expose_key: bool,
    /// The route's upstream, for background refreshes (`None` for a global `cache`: it then
    /// revalidates instead of serving stale while refreshing).
    refresh: Option<Refresher>,
    counters: Counters,
}

/// Which tiers a route uses.
#[derive(Clone, Copy)]
struct Tiers {
    memory: bool,
    redis: bool,
    /// Redis is looked up first.
    redis_first: bool,
}

struct Refresher {
    upstream: UpstreamHandle,
    preserve_host: bool,
}

/// `frontdesk_cache_requests_total{route,tier,result}`, fetched once per route.
struct Counters {
    hit: Arc<AtomicU64>,
    hit_redis: Arc<AtomicU64>,
    stale: Arc<AtomicU64>,
    miss: Arc<AtomicU64>,
    bypass: Arc<AtomicU64>,
    revalidated: Arc<AtomicU64>,
    coalesced: Arc<AtomicU64>,
    stored: Arc<AtomicU64>,
    stored_bytes: Arc<AtomicU64>,
}

impl PluginFactory for CachePlugin {
    const KIND: &'static str = "cache";
    /// After authentication and limits (a stored answer is still the caller's to be refused),
    /// before the terminal answers; inside compression and header edits, so what is stored is the
    /// upstream's response.
    const ORDER: u16 = 800;
    type Config = CacheConfig;

    fn build(cfg: &CacheConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        let cache = env
            .cache
            .clone()
            .ok_or("no cache stores (internal: the snapshot makes them when a route caches)")?;
        let key = cfg
            .key
            .iter()
            .map(|p| KeyPart::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let route: Arc<str> = env.route.clone().unwrap_or_else(|| Arc::from("*"));
        let counter = |result: &str| {
            env.metrics.counter(
                Family::Cache,
                [route.clone(), Arc::from("memory"), Arc::from(result)],
            )
        };
        let counters = Counters {
            hit: counter("hit"),
            hit_redis: env.metrics.counter(
                Family::Cache,
                [route.clone(), Arc::from("redis"), Arc::from("hit")],
            ),
            stale: counter("stale"),
            miss: counter("miss"),
            bypass: counter("bypass"),
            revalidated: counter("revalidated"),
            coalesced: counter("coalesced"),
            stored: counter("stored"),
            stored_bytes: env.metrics.counter(
                Family::CacheStoredBytes,
                [route.clone(), Arc::from("memory"), Arc::from("stored")],
            ),
        };
        let refresh = env.route_target.as_ref().and_then(|t| {
            env.upstream(&t.upstream).map(|upstream| Refresher {
                upstream,
                preserve_host: t.preserve_host,
            })
        });
        let redis = cfg.tiers.contains(&CacheTier::Redis) && cache.redis().is_some();
        let tiers = Tiers {
            memory: cfg.tiers.contains(&CacheTier::Memory),
            redis,
            redis_first: redis && cfg.tiers.first() == Some(&CacheTier::Redis),
        };
        Ok(Arc::new(CachePlugin {
            tiers,
            cache,
            rules: Rules {
                default_ttl: cfg.default_ttl.0,
                max_ttl: cfg.max_ttl.0,
                statuses: cfg.statuses.clone(),
                store_set_cookie: cfg.store_set_cookie,
                key_has_consumer: key.contains(&KeyPart::Consumer),
                stale_while_revalidate: cfg.stale_while_revalidate.0,
                stale_if_error: cfg.stale_if_error.0,
            },
            key,
            head: cfg.methods.iter().any(|m| m == "HEAD"),
            max_object_size: cfg.max_object_size.0,
            lock: cfg.lock.enabled.then_some(cfg.lock.timeout.0),
            tag_header: cfg
                .tag_header
                .as_deref()
                .map(|h| HeaderName::from_bytes(h.as_bytes()))
                .transpose()
                .map_err(|_| "tag_header is not a header name")?,
            expose_key: cfg.expose_key,
            refresh,
            counters,
        }))
    }
}

/// The request's state, from `request_filter` to the response. In `Ctx::ext` (which wants
/// `Clone`), behind a shared cell taken by the phase that needs it.
#[derive(Clone)]
struct Cell(Arc<Mutex<Option<State>>>);

impl Cell {
    fn take(cx: &Ctx) -> Option<State> {
        cx.ext
            .get::<Cell>()
            .and_then(|c| c.0.lock().unwrap_or_else(PoisonError::into_inner).take())
    }

    fn put(cx: &mut Ctx, s: State) {
        cx.ext.insert(Cell(Arc::new(Mutex::new(Some(s)))));
    }
}

enum State {
    /// The cache answered; its answer carries its own `Cache-Status`.
    Served,
    /// Not a request the cache answers (`fwd=bypass`).
    Bypass(&'static str),
    /// An unsafe method: its success invalidates these URLs.
    Invalidate { host: String, url: String },
    /// Going upstream.
    Fill(Box<Fill>),
    /// The response is being stored as its body streams.
    Storing(Box<Storing>),
    /// A stored body replaces the upstream's (after a `304`, or stale on an error).
    Replace(Body),
}

/// A request on its way upstream, with what the response phase needs.
struct Fill {
    key: Arc<str>,
    url: String,
    head_request: bool,
    /// The request's headers as they left the cache (for `Vary` values and `Authorization`).
    req_headers: HeaderMap,
    /// The client's own conditional headers, taken off while the cache revalidates.
    client_conditional: Option<HeaderMap>,
    /// The stored response, stale (or refused by the request): revalidated, and served on error.
    stale: Option<Arc<Entry>>,
    revalidating: bool,
    /// Why it went upstream (`fwd=`).
    fwd: &'static str,
    leader: Option<Leader>,
    /// The fleet-wide fill lease (Redis tier).
    lease: Option<Lease>,
    sent_at: SystemTime,
    upstream_uri: String,
}

/// A response being stored as it streams.
struct Storing {
    meta: Meta,
    status: StatusCode,
    headers: HeaderMap,
    life: policy::Lifetime,
    leader: Option<Leader>,
    /// The fleet-wide fill lease (Redis tier), released once stored.
    lease: Option<Lease>,
}

impl CachePlugin {
    fn status_value(&self, parts: &[String], key: Option<&str>) -> HeaderValue {
        let mut s = String::from(NAME);
        for p in parts {
            s.push_str("; ");
            s.push_str(p);
        }
        if let (true, Some(k)) = (self.expose_key, key) {
            s.push_str("; key=\"");
            s.push_str(&k.replace(['"', '\\'], "_"));
            s.push('"');
        }
        HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("frontdesk"))
    }

    /// An answer the cache makes itself (not from a stored response), with its `Cache-Status`.
    fn own_answer(
        &self,
        status: StatusCode,
        mut headers: HeaderMap,
        body: Body,
        status_parts: &[String],
        key: &str,
    ) -> PluginResponse {
        headers.insert(
            CACHE_STATUS.clone(),
            self.status_value(status_parts, Some(key)),
        );
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// The stored response as the answer to `req`: `Age`, `Cache-Status`, a `304` to a matching
    /// conditional request, a `206` or `416` to a `Range`, no body to a `HEAD`.
    fn answer(
        &self,
        e: &Entry,
        req_headers: &HeaderMap,
        head_request: bool,
        status_parts: Vec<String>,
        now: u64,
    ) -> PluginResponse {
        let mut headers = e.headers.clone();
        headers.insert(header::AGE, HeaderValue::from(e.age(now)));
        headers.insert(
            CACHE_STATUS.clone(),
            self.status_value(&status_parts, Some(&e.meta.key)),
        );
        let mut status = e.status;
        let mut body = Body::full(e.body.clone());
        if policy::is_conditional(req_headers) && policy::not_modified(req_headers, &e.headers) {
            let mut h = HeaderMap::new();
            for name in policy::NOT_MODIFIED_HEADERS {
                for v in e.headers.get_all(&name) {
                    h.append(name.clone(), v.clone());
                }
            }
            for name in [header::AGE, CACHE_STATUS.clone()] {
                if let Some(v) = headers.get(&name) {
                    h.insert(name, v.clone());
                }
            }
            headers = h;
            status = StatusCode::NOT_MODIFIED;
            body = Body::empty();
        } else if let Some(range) = range_of(req_headers, e) {
            match range {
                Some((start, end)) => {
                    status = StatusCode::PARTIAL_CONTENT;
                    headers.insert(
                        header::CONTENT_RANGE,
                        header_value(&format!("bytes {start}-{end}/{}", e.body.len())),
                    );
                    body = Body::full(e.body.slice(start..=end));
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                }
                None => {
                    status = StatusCode::RANGE_NOT_SATISFIABLE;
                    headers.insert(
                        header::CONTENT_RANGE,
                        header_value(&format!("bytes */{}", e.body.len())),
                    );
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                    body = Body::empty();
                }
            }
        } else {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(e.body.len()));
        }
        if head_request {
            body = Body::empty();
        }
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// Looks `key` up in the route's tiers, in order, and picks the variant that `headers`
    /// select; a Redis hit is copied to memory. Also says whether any variant was found.
    async fn lookup(&self, key: &str, headers: &HeaderMap) -> (Option<Arc<Entry>>, bool) {
        let selects =
            |e: &Arc<Entry>| policy::vary_values(&e.meta.vary, headers) == e.meta.vary_values;
        let mut any = false;
        let memory = |any: &mut bool| {
            let vars = self.cache.get(key)?;
            *any = true;
            vars.iter().find(|e| selects(e)).cloned()
        };
        if self.tiers.memory && !self.tiers.redis_first {
            if let Some(e) = memory(&mut any) {
                return (Some(e), true);
            }
        }
        if self.tiers.redis {
            if let Some(e) = self.cache.redis_get(key).await {
                any = true;
                if selects(&e) {
                    self.counters.hit_redis.fetch_add(1, Ordering::Relaxed);
                    if self.tiers.memory {
                        self.cache.put(e.clone());
                    }
                    return (Some(e), true);
                }
            }
        }
        if self.tiers.memory && self.tiers.redis_first {
            if let Some(e) = memory(&mut any) {
                return (Some(e), true);
            }
        }
        (None, any)
    }

    /// Waits (up to `timeout`) for another instance's fill of `key` to appear in Redis; `None`
    /// when its lease ends without one (a response not stored) or the time is up.
    async fn wait_for_fleet(
        &self,
        key: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Option<Arc<Entry>> {
        let tier = self.cache.redis()?;
        let usable = |e: Arc<Entry>| {
            let now = policy::unix_ms(SystemTime::now());
            let selects = policy::vary_values(&e.meta.vary, headers) == e.meta.vary_values;
            let fresh = matches!(e.freshness(now), Freshness::Fresh(_));
            (selects && fresh).then_some(e)
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
            let leased = tier.is_leased(key).await.unwrap_or(false);
            // Looked at after the lease: the fill writes its entry before it lets the lease go.
            if let Some(e) = self.cache.redis_get(key).await.and_then(usable) {
                if self.tiers.memory {
                    self.cache.put(e.clone());
                }
                return Some(e);
            }
            if !leased {
                return None;
            }
        }
        None
    }

    /// The filter that stores a response as its body streams.
    fn tee(&self, storing: Box<Storing>) -> Tee {
        Tee {
            storing: Some(storing),
            tiers: self.tiers,
            chunks: Vec::new(),
            size: 0,
            max: self.max_object_size,
            cache: self.cache.clone(),
            stored: self.counters.stored.clone(),
            stored_bytes: self.counters.stored_bytes.clone(),
        }
    }

    /// Stores `e` in the route's tiers.
    fn save(&self, e: Arc<Entry>) {
        save(&self.cache, self.tiers, e);
    }

    /// Starts the one background refresh of a stale entry.
    fn refresh_in_background(&self, e: &Arc<Entry>, req: &RequestHead, cx: &Ctx) {
        let Some(r) = &self.refresh else { return };
        let key: Arc<str> = Arc::from(e.meta.key.as_str());
        let Some(claim) = self.cache.refreshing(&key) else {
            return;
        };
        let mut headers = req.headers.clone();
        for h in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            headers.remove(h);
        }
        if !r.preserve_host {
            headers.remove(header::HOST);
        }
        add_validators(&mut headers, e);
        let Ok(uri) = e.meta.upstream_uri.parse::<http::Uri>() else {
            return;
        };
        let mut request = http::Request::new(Body::empty());
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let upstream = r.upstream.clone();
        let mut detached = cx.detached();
        let (cache, rules, stale, tiers) = (
            self.cache.clone(),
            self.rules.clone(),
            e.clone(),
            self.tiers,
        );
        let (max, req_headers) = (self.max_object_size, req.headers.clone());
        let revalidated = self.counters.revalidated.clone();
        tokio::spawn(async move {
            let _claim = claim;
            let sent_at = SystemTime::now();
            let Ok(resp) = upstream.call(request, &mut detached).await else {
                return;
            };
            let now = SystemTime::now();
            let (parts, body) = resp.into_parts();
            if parts.status == StatusCode::NOT_MODIFIED {
                revalidated.fetch_add(1, Ordering::Relaxed);
                let mut headers = stale.headers.clone();
                policy::freshen(&mut headers, &parts.headers);
                if let Ok(life) = policy::storable(
                    &Method::GET,
                    &req_headers,
                    stale.status,
                    &headers,
                    &rules,
                    sent_at,
                    now,
                ) {
                    let e = Entry::new(
                        stale.meta.clone(),
                        stale.status,
                        headers,
                        stale.body.clone(),
                        &life,
                        now,
                    );
                    save(&cache, tiers, Arc::new(e));
                }
                return;
            }
            let Ok(life) = policy::storable(
                &Method::GET,
                &req_headers,
                parts.status,
                &parts.headers,
                &rules,
                sent_at,
                now,
            ) else {
                return;
            };
            let Ok(collected) =
                http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
                    .collect()
                    .await
            else {
                return;
            };
            let mut meta = stale.meta.clone();
            meta.vary = policy::vary_names(&parts.headers).unwrap_or_default();
            meta.vary_values = policy::vary_values(&meta.vary, &req_headers);
            let mut headers = parts.headers;
            policy::strip_connection_fields(&mut headers);
            let e = Entry::new(
                meta,
                parts.status,
                headers,
                collected.to_bytes(),
                &life,
                now,
            );
            save(&cache, tiers, Arc::new(e));
        });
    }
}

/// Stores `e` in `tiers`.
fn save(cache: &Cache, tiers: Tiers, e: Arc<Entry>) {
    save_leased(cache, tiers, e, None);
}

/// Stores `e` in `tiers`, then gives up the fill's `lease` (after the Redis write: an instance
/// waiting on the lease must find the entry when it sees the lease gone).
fn save_leased(cache: &Cache, tiers: Tiers, e: Arc<Entry>, lease: Option<Lease>) {
    if tiers.redis {
        cache.redis_put(&e, lease);
    } else if let Some(lease) = lease {
        tokio::spawn(async move {
            let _ = lease.release().await;
        });
    }
    if tiers.memory {
        cache.put(e);
    }
}

/// Makes `resp` the head of `answer` (a stored response answering in place of the upstream's);
/// its body follows in the body phase, unless the answer has none (`304`, `HEAD`).
fn replaced_by(
    resp: &mut ResponseHead,
    answer: PluginResponse,
    head_request: bool,
) -> Option<State> {
    let (parts, body) = answer.into_parts();
    resp.status = parts.status;
    resp.headers = parts.headers;
    (resp.status != StatusCode::NOT_MODIFIED && !head_request).then_some(State::Replace(body))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Sets the stored response's validators on a request that revalidates it.
fn add_validators(h: &mut HeaderMap, e: &Entry) {
    if let Some(etag) = e.headers.get(header::ETAG) {
        h.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = e.headers.get(header::LAST_MODIFIED) {
        h.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

fn has_validator(e: &Entry) -> bool {
    e.headers.contains_key(header::ETAG) || e.headers.contains_key(header::LAST_MODIFIED)
}

/// The single byte range a request asks of a stored `200` (`Some(None)`: not satisfiable);
/// `None` to answer with the whole response (no `Range`, several ranges, an `If-Range` that does
/// not match, a unit other than bytes).
#[allow(clippy::option_option)]
fn range_of(req: &HeaderMap, e: &Entry) -> Option<Option<(usize, usize)>> {
    if e.status != StatusCode::OK {
        return None;
    }
    let spec = req.get(header::RANGE)?.to_str().ok()?.trim();
    if let Some(cond) = req.get(header::IF_RANGE) {
        let cond = cond.as_bytes();
        let matches = e
            .headers
            .get(header::ETAG)
            .is_some_and(|t| !t.as_bytes().starts_with(b"W/") && t.as_bytes() == cond)
            || e.headers
                .get(header::LAST_MODIFIED)
                .is_some_and(|lm| lm.as_bytes() == cond);
        if !matches {
            return None;
        }
    }
    let set = spec.strip_prefix("bytes=")?;
    if set.contains(',') {
        return None;
    }
    let (first, last) = set.split_once('-')?;
    let len = e.body.len();
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let (first, last) = (first.trim(), last.trim());
    if !digits(first) || !digits(last) || (first.is_empty() && last.is_empty()) {
        return None;
    }
    if first.is_empty() {
        // A suffix: the last N bytes.
        let n: usize = last.parse().unwrap_or(usize::MAX);
        if n == 0 || len == 0 {
            return Some(None);
        }
        return Some(Some((len.saturating_sub(n), len - 1)));
    }
    let start: usize = first.parse().unwrap_or(usize::MAX);
    if start >= len {
        return Some(None);
    }
    let end = if last.is_empty() {
        len - 1
    } else {
        last.parse::<usize>().unwrap_or(usize::MAX).min(len - 1)
    };
    if end < start {
        return None;
    }
    Some(Some((start, end)))
}

/// The URL of a `Location` or `Content-Location` on the request's host, as purges name URLs.
fn same_host_url(value: &HeaderValue, host: &str) -> Option<String> {
    let s = value.to_str().ok()?;
    if s.starts_with('/') && !s.starts_with("//") {
        return Some(format!("{host}{s}"));
    }
    let uri: http::Uri = s.parse().ok()?;
    let authority = uri.authority()?.as_str().to_ascii_lowercase();
    (authority == host).then(|| {
        format!(
            "{authority}{}",
            uri.path_and_query().map_or("/", |p| p.as_str())
        )
    })
}

#[async_trait]
impl Plugin for CachePlugin {
    fn kind(&self) -> &'static str {
        "cache"
    }

    fn phases(&self) -> Phases {
        Phases {
            upstream_request: true,
            response: true,
            request_body: false,
            response_body: true,
            log: false,
            recover: true,
        }
    }

    fn explain(&self, req: &RequestHead, route: &str) -> Option<String> {
        if matches!(
            req.method,
            Method::POST | Method::PUT | Method::DELETE | Method::PATCH
        ) {
            return Some(format!(
                "not cacheable ({}); a 2xx or 3xx answer invalidates what is stored for {}",
                req.method,
                key::url(req)
            ));
        }
        if !(req.method == Method::GET || (req.method == Method::HEAD && self.head)) {
            return Some(format!("bypassed: {} is not cached", req.method));
        }
        if req.headers.contains_key(header::UPGRADE) {
            return Some("bypassed: a protocol upgrade is not cached".into());
        }
        let mut cx = Ctx::for_test();
        cx.route = Arc::from(route);
        let key = key::key(route, &self.key, req, &cx);
        let d = Directives::parse(&req.headers);
        let mut out = format!("cacheable: key {key:?}");
        if self.rules.key_has_consumer {
            out.push_str(" (the consumer part is the caller's, empty here)");
        }
        if d.no_store {
            out.push_str("; the request says no-store: its answer is not stored");
        }
        if d.request_no_cache(&req.headers) {
            out.push_str(
                "; the request says no-cache: not answered from the cache without revalidation",
            );
        }
        if req.headers.contains_key(header::AUTHORIZATION) && !self.rules.key_has_consumer {
            out.push_str(
                "; it has Authorization: stored only if the response says public, s-maxage or \
                 must-revalidate",
            );
        }
        let now = policy::unix_ms(SystemTime::now());
        match self.cache.get(&key) {
            None => out.push_str("; nothing stored in memory now"),
            Some(vars) => {
                let selected = vars.iter().find(|e| {
                    policy::vary_values(&e.meta.vary, &req.headers) == e.meta.vary_values
                });
                match selected {
                    None => out.push_str(&format!(
                        "; {} variant(s) stored, none for this request's Vary values",
                        vars.len()
                    )),
                    Some(e) => out.push_str(&match e.freshness(now) {
                        Freshness::Fresh(left) => {
                            format!("; stored, fresh for {}s", left.as_secs())
                        }
                        Freshness::Stale(by) => format!("; stored, stale by {}s", by.as_secs()),
                    }),
                }
            }
        }
        Some(out)
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let head_request = req.method == Method::HEAD;
        if matches!(
            req.method,
            Method::POST | Method::PUT | Method::DELETE | Method::PATCH
        ) {
            Cell::put(
                cx,
                State::Invalidate {
                    host: key::host(req),
                    url: key::url(req),
                },
            );
            return Ok(Flow::Continue);
        }
        if !(req.method == Method::GET || (head_request && self.head)) {
            self.counters.bypass.fetch_add(1, Ordering::Relaxed);
            Cell::put(cx, State::Bypass("method"));
            return Ok(Flow::Continue);
        }
        if req.headers.contains_key(header::UPGRADE) {
            // A WebSocket (or other) handshake is a GET, but its answer is a connection.
            self.counters.bypass.fetch_add(1, Ordering::Relaxed);
            Cell::put(cx, State::Bypass("upgrade"));
            return Ok(Flow::Continue);
        }
        let key: Arc<str> = Arc::from(key::key(&cx.route, &self.key, req, cx));
        let directives = Directives::parse(&req.headers);
        let refused = directives.request_no_cache(&req.headers);
        let now_time = SystemTime::now();
        let now = policy::unix_ms(now_time);
        let (found, any) = self.lookup(&key, &req.headers).await;
        let mut fwd = match (&found, any) {
            (Some(_), _) => "stale",
            (None, true) => "vary-miss",
            (None, false) => "uri-miss",
        };
        let mut stale = None;
        if let Some(e) = found {
            let freshness = e.freshness(now);
            let age = e.age(now);
            let fresh_enough = match freshness {
                Freshness::Fresh(left) => {
                    directives.max_age.is_none_or(|m| age <= m)
                        && directives.min_fresh.is_none_or(|m| left.as_secs() >= m)
                }
                Freshness::Stale(_) => false,
            };
            let stale_ok = match freshness {
                Freshness::Stale(by) => {
                    !e.meta.must_revalidate
                        && match directives.max_stale {
                            Some(None) => true,
                            Some(Some(n)) => by.as_secs() <= n,
                            None => false,
                        }
                }
                Freshness::Fresh(_) => false,
            };
            if !refused && !e.meta.no_cache && (fresh_enough || stale_ok) {
                self.counters.hit.fetch_add(1, Ordering::Relaxed);
                let parts = vec!["hit".to_string(), format!("ttl={}", e.ttl(now))];
                let answer = self.answer(&e, &req.headers, head_request, parts, now);
                Cell::put(cx, State::Served);
                return Ok(Flow::Respond(answer));
            }
            if let (Freshness::Stale(by), false, Some(_)) = (freshness, refused, &self.refresh) {
                if e.may_serve_while_revalidating(by) {
                    self.counters.stale.fetch_add(1, Ordering::Relaxed);
                    self.refresh_in_background(&e, req, cx);
                    let parts = vec![
                        "hit".to_string(),
                        format!("ttl={}", e.ttl(now)),
                        "detail=stale-while-revalidate".to_string(),
                    ];
                    let answer = self.answer(&e, &req.headers, head_request, parts, now);
                    Cell::put(cx, State::Served);
                    return Ok(Flow::Respond(answer));
                }
            }
            if refused {
                fwd = "request";
            }
            stale = Some(e);
        } else if refused {
            fwd = "request";
        }
        if directives.only_if_cached {
            let parts = [format!("fwd={fwd}"), "detail=only-if-cached".into()];
            let resp = self.own_answer(
                StatusCode::GATEWAY_TIMEOUT,
                HeaderMap::new(),
                Body::empty(),
                &parts,
                &key,
            );
            Cell::put(cx, State::Served);
            return Ok(Flow::Respond(resp));
        }
        // Coalesce: one request goes upstream, the others wait for its answer.
        let mut leader = None;
        if let (Some(timeout), false, false) = (self.lock, refused, head_request) {
            match self.cache.flights.join(&key, self.max_object_size) {
                Joined::Leader(l) => leader = Some(l),
                Joined::Waiter(flight) => {
                    if let Shared::Head(status, headers, vary_values) = flight.wait(timeout).await {
                        let names = policy::vary_names(&headers).unwrap_or_default();
                        if policy::vary_values(&names, &req.headers) == vary_values {
                            self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                            let parts = [format!("fwd={fwd}"), "collapsed".into()];
                            let body = Body::new(flight.body());
                            let resp = self.own_answer(status, headers, body, &parts, &key);
                            Cell::put(cx, State::Served);
                            return Ok(Flow::Respond(resp));
                        }
                    }
                }
            }
        }
        // Across instances (Redis tier): one fills, the others wait for its stored answer.
        let mut lease = None;
        if let (Some(l), Some(timeout), Some(tier)) = (
            &mut leader,
            self.lock,
            self.cache.redis().filter(|_| self.tiers.redis),
        ) {
            match tier.lease(&key, timeout).await {
                Ok(Some(got)) => lease = Some(got),
                Ok(None) => {
                    if let Some(e) = self.wait_for_fleet(&key, &req.headers, timeout).await {
                        l.head(e.status, e.headers.clone(), e.meta.vary_values.clone());
                        l.data(&e.body);
                        if let Some(l) = leader.take() {
                            l.done();
                        }
                        self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                        let parts = vec![
                            format!("fwd={fwd}"),
                            "collapsed".into(),
                            format!("ttl={}", e.ttl(now)),
                        ];
                        let answer = self.answer(
                            &e,
                            &req.headers,
                            head_request,
                            parts,
                            policy::unix_ms(SystemTime::now()),
                        );
                        Cell::put(cx, State::Served);
                        return Ok(Flow::Respond(answer));
                    }
                }
                Err(_) => {}
            }
        }
        self.counters.miss.fetch_add(1, Ordering::Relaxed);
        let mut client_conditional = None;
        let revalidating = stale.as_ref().is_some_and(|e| has_validator(e));
        if let (true, Some(e)) = (revalidating, &stale) {
            let mut taken = HeaderMap::new();
            for h in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
                if let Some(v) = req.headers.remove(&h) {
                    taken.insert(h, v);
                }
            }
            client_conditional = Some(taken);
            add_validators(&mut req.headers, e);
        }
        Cell::put(
            cx,
            State::Fill(Box::new(Fill {
                url: key::url(req),
                key,
                head_request,
                req_headers: req.headers.clone(),
                client_conditional,
                stale,
                revalidating,
                fwd,
                leader,
                lease,
                sent_at: now_time,
                upstream_uri: req
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
            })),
        );
        Ok(Flow::Continue)
    }

    async fn upstream_request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        // The target as the upstream gets it (after the route's rewrite): what a background
        // refresh sends.
        if let Some(cell) = cx.ext.get::<Cell>() {
            let mut g = cell.0.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(State::Fill(f)) = g.as_mut() {
                f.upstream_uri = req
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                f.sent_at = SystemTime::now();
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        resp: &mut ResponseHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        let Some(state) = Cell::take(cx) else {
            return Ok(());
        };
        let next = match state {
            State::Served | State::Storing(_) | State::Replace(_) => return Ok(()),
            State::Bypass(why) => {
                resp.headers.insert(
                    CACHE_STATUS.clone(),
                    self.status_value(&["fwd=bypass".into(), format!("detail={why}")], None),
                );
                return Ok(());
            }
            State::Invalidate { host, url } => {
                if resp.status.is_success() || resp.status.is_redirection() {
                    let mut urls = vec![url];
                    for h in [header::LOCATION, header::CONTENT_LOCATION] {
                        if let Some(u) = resp.headers.get(&h).and_then(|v| same_host_url(v, &host))
                        {
                            urls.push(u);
                        }
                    }
                    for u in urls {
                        self.cache.purge(&Purge::Url(u), false);
                    }
                }
                return Ok(());
            }
            State::Fill(f) => self.on_response(resp, *f),
        };
        if let Some(s) = next {
            Cell::put(cx, s);
        }
        Ok(())
    }

    fn response_body(&self, _resp: &mut ResponseHead, cx: &mut Ctx) -> BodyAction {
        match Cell::take(cx) {
            Some(State::Replace(b)) => BodyAction::Replace(b),
            Some(State::Storing(s)) => BodyAction::Stream(Box::new(self.tee(s))),
            _ => BodyAction::Pass,
        }
    }

    async fn recover(&self, status: StatusCode, cx: &mut Ctx) -> Option<PluginResponse> {
        let state = Cell::take(cx)?;
        let now = policy::unix_ms(SystemTime::now());
        let usable = |f: &Fill| {
            let e = f.stale.as_ref()?;
            match e.freshness(now) {
                Freshness::Stale(by) if e.may_serve_on_error(by) => Some(e.clone()),
                _ => None,
            }
        };
        let (f, e) = match state {
            State::Fill(f) => match usable(&f) {
                Some(e) => (f, e),
                None => {
                    // The error stands; its response phase still says what the cache did.
                    Cell::put(cx, State::Fill(f));
                    return None;
                }
            },
            other => {
                Cell::put(cx, other);
                return None;
            }
        };
        let e = &e;
        self.counters.stale.fetch_add(1, Ordering::Relaxed);
        let parts = vec![
            "hit".to_string(),
            format!("fwd=stale; fwd-status={}", status.as_u16()),
            format!("ttl={}", e.ttl(now)),
            "detail=stale-if-error".to_string(),
        ];
        let headers = f.client_conditional.clone().unwrap_or_default();
        let answer = self.answer(e, &headers, f.head_request, parts, now);
        Cell::put(cx, State::Served);
        Some(answer)
    }
}

impl CachePlugin {
    /// The response phase of a request that went upstream: what the client gets and whether it
    /// is stored.
    fn on_response(&self, resp: &mut ResponseHead, mut f: Fill) -> Option<State> {
        let now_time = SystemTime::now();
        let now = policy::unix_ms(now_time);
        let fwd = f.fwd;
        // A revalidation answered `304`: the stored response, refreshed, is the answer.
        if let (true, StatusCode::NOT_MODIFIED, Some(e)) = (f.revalidating, resp.status, &f.stale) {
            self.counters.revalidated.fetch_add(1, Ordering::Relaxed);
            let mut headers = e.headers.clone();
            policy::freshen(&mut headers, &resp.headers);
            let stored = policy::storable(
                &Method::GET,
                &f.req_headers,
                e.status,
                &headers,
                &self.rules,
                f.sent_at,
                now_time,
            );
            let refreshed = match stored {
                Ok(life) => {
                    let e = Arc::new(Entry::new(
                        e.meta.clone(),
                        e.status,
                        headers,
                        e.body.clone(),
                        &life,
                        now_time,
                    ));
                    self.save(e.clone());
                    e
                }
                Err(_) => {
                    let mut e = (**e).clone();
                    e.headers = headers;
                    Arc::new(e)
                }
            };
            if let Some(l) = f.leader.take() {
                l.head(
                    refreshed.status,
                    refreshed.headers.clone(),
                    refreshed.meta.vary_values.clone(),
                );
                let mut l = l;
                l.data(&refreshed.body);
                l.done();
            }
            let parts = vec![
                format!("fwd={fwd}; fwd-status=304"),
                format!("ttl={}", refreshed.ttl(now)),
            ];
            let conditional = f.client_conditional.unwrap_or_default();
            let answer = self.answer(&refreshed, &conditional, f.head_request, parts, now);
            return replaced_by(resp, answer, f.head_request);
        }
        // The upstream failed with a 5xx: a stale response within `stale-if-error` instead.
        if let (500 | 502 | 503 | 504, Some(e)) = (resp.status.as_u16(), &f.stale) {
            if let Freshness::Stale(by) = e.freshness(now) {
                if e.may_serve_on_error(by) {
                    self.counters.stale.fetch_add(1, Ordering::Relaxed);
                    let parts = vec![
                        "hit".to_string(),
                        format!("fwd=stale; fwd-status={}", resp.status.as_u16()),
                        format!("ttl={}", e.ttl(now)),
                        "detail=stale-if-error".to_string(),
                    ];
                    let conditional = f.client_conditional.clone().unwrap_or_default();
                    let answer = self.answer(e, &conditional, f.head_request, parts, now);
                    return replaced_by(resp, answer, f.head_request);
                }
            }
        }
        // The client's own conditional request went upstream as the cache's revalidation: its
        // answer was not a 304, so it is the full response, fine for the client too.
        let mut tags = Vec::new();
        if let Some(h) = &self.tag_header {
            for v in resp.headers.get_all(h) {
                if let Ok(s) = v.to_str() {
                    tags.extend(s.split_ascii_whitespace().take(64).map(str::to_string));
                }
            }
            resp.headers.remove(h);
        }
        let mut decision = policy::storable(
            &Method::GET,
            &f.req_headers,
            resp.status,
            &resp.headers,
            &self.rules,
            f.sent_at,
            now_time,
        );
        if f.head_request {
            decision = Err(NotStored::Method);
        }
        let too_large = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > self.max_object_size);
        if too_large && decision.is_ok() {
            decision = Err(NotStored::TooLarge);
        }
        let life = match decision {
            Ok(life) => life,
            Err(why) => {
                if let Some(l) = f.leader.take() {
                    l.not_shared();
                }
                if let Some(lease) = f.lease.take() {
                    // Other instances stop waiting for a fill that will not come.
                    tokio::spawn(async move {
                        let _ = lease.release().await;
                    });
                }
                resp.headers.insert(
                    CACHE_STATUS.clone(),
                    self.status_value(
                        &[format!("fwd={fwd}"), format!("detail={}", why.token())],
                        Some(&f.key),
                    ),
                );
                return None;
            }
        };
        let vary = policy::vary_names(&resp.headers).unwrap_or_default();
        let vary_values = policy::vary_values(&vary, &f.req_headers);
        let meta = Meta::new(
            f.key.to_string(),
            f.url.clone(),
            vary,
            vary_values.clone(),
            tags,
            f.upstream_uri.clone(),
        );
        // The proxy removed the connection's fields from the upstream's response already.
        let stored_headers = resp.headers.clone();
        if let Some(l) = &f.leader {
            l.head(resp.status, resp.headers.clone(), vary_values);
        }
        let ttl = life.fresh.as_secs() as i64 - life.initial_age.as_secs() as i64;
        let fwd_status = if f.revalidating {
            format!("; fwd-status={}", resp.status.as_u16())
        } else {
            String::new()
        };
        resp.headers.insert(
            CACHE_STATUS.clone(),
            self.status_value(
                &[
                    format!("fwd={fwd}{fwd_status}"),
                    "stored".into(),
                    format!("ttl={ttl}"),
                ],
                Some(&f.key),
            ),
        );
        let storing = Storing {
            meta,
            status: resp.status,
            headers: stored_headers,
            life,
            leader: f.leader.take(),
            lease: f.lease.take(),
        };
        if resp.status == StatusCode::NO_CONTENT {
            // No body phase runs on a 204: store it now.
            self.tee(Box::new(storing)).store();
            return None;
        }
        Some(State::Storing(Box::new(storing)))
    }
}

/// Copies a response body as it streams to the client (and to coalesced waiters), and stores
/// it when it ends whole within the cap. Dropped before its end, nothing is stored.
struct Tee {
    storing: Option<Box<Storing>>,
    tiers: Tiers,
    chunks: Vec<Bytes>,
    size: u64,
    max: u64,
    cache: Arc<Cache>,
    stored: Arc<AtomicU64>,
    stored_bytes: Arc<AtomicU64>,
}

impl Tee {
    fn store(&mut self) {
        let Some(s) = self.storing.take() else { return };
        let Storing {
            meta,
            status,
            headers,
            life,
            leader,
            lease,
        } = *s;
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks[0].clone(),
            _ => {
                let mut b = BytesMut::with_capacity(self.size as usize);
                for c in &self.chunks {
                    b.extend_from_slice(c);
                }
                b.freeze()
            }
        };
        self.chunks.clear();
        let len = body.len() as u64;
        let e = Entry::new(meta, status, headers, body, &life, SystemTime::now());
        save_leased(&self.cache, self.tiers, Arc::new(e), lease);
        self.stored.fetch_add(1, Ordering::Relaxed);
        self.stored_bytes.fetch_add(len, Ordering::Relaxed);
        if let Some(l) = leader {
            l.done();
        }
    }
}

impl BodyFilter for Tee {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        if let (Some(data), Some(s)) = (frame.data_ref(), self.storing.as_mut()) {
            self.size += data.len() as u64;
            let fed = s.leader.as_mut().is_none_or(|l| l.data(data));
            if self.size > self.max || !fed {
                // Too large to store: it streams on, and waiters (if any) were failed.
                self.storing = None;
                self.chunks.clear();
            } else {
                self.chunks.push(data.clone());
            }
        }
        out.push(frame);
        Ok(())
    }

    fn end(&mut self, _out: &mut FrameSink) -> Result<(), PluginError> {
        self.store();
        Ok(())
    }
}

/// Purges here, in the Redis tier and on every other instance (the admin API's
/// `POST /cache/purge`); how many stored responses this instance had.
pub async fn purge(cache: &Cache, what: &Purge, soft: bool) -> u64 {
    let what = match what {
        Purge::Url(u) => Purge::Url(strip_scheme(u).to_string()),
        Purge::Prefix(p) => Purge::Prefix(strip_scheme(p).to_string()),
        other => other.clone(),
    };
    cache.purge_everywhere(&what, soft).await
}
