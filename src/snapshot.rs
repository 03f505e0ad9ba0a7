//! The snapshot: one compiled, immutable config generation. Requests load it once (one atomic
//! load) and use it from start to end, so a reload never changes a request midway. Its listener
//! specs carry the limits the server enforces ([`HeadLimits`], [`Transfer`]); it implements the
//! metrics' [`Gauges`] view.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::aggregate::Aggregate;
use frontdesk_config::model::Http1Codec;
use frontdesk_config::{parse_nets, Config, Diagnostic, FieldPath};
use http::HeaderValue;

use crate::cache::Cache;
use crate::consumer::Consumers;
use crate::limit::redis::RedisStore;
use crate::observe::metrics::{Gauges, ListenerSeries, Metrics, TargetGauges, UpstreamGauges};
use crate::observe::Observer;
use crate::plugin::{BuildEnv, ChainBuilder, PluginChain, RouteTarget, Scope};
use crate::plugins;
use crate::route::{
    normalize_host, stripped_path, ExplainRequest, Explanation, MatchedRoute, PluginNote,
    ProfileChoice, RequestSummary, RouteTable,
};
use crate::tls::server::ServerTls;
use crate::upstream::Upstream;

/// The live snapshot, swapped atomically on reload.
pub type Live = ArcSwap<Snapshot>;

/// A route at runtime.
#[derive(Debug)]
pub struct Route {
    /// Config name.
    pub name: Arc<str>,
    /// Where requests go.
    pub target: Target,
    /// Remove the matched path prefix before forwarding.
    pub strip_prefix: bool,
    /// Forward the client's `Host`.
    pub preserve_host: bool,
    /// Global and route plugins in run order.
    pub plugins: PluginChain,
    /// Its request-duration series (kept across reloads by name).
    pub series: Arc<crate::observe::metrics::RouteSeries>,
}

/// A client profile: what selects it and its routes.
#[derive(Debug)]
pub struct Profile {
    /// Its name (the `profile` label).
    pub name: Arc<str>,
    /// What selects it.
    pub select: ProfileMatch,
    /// Its routes.
    pub routes: RouteTable<Route>,
}

/// A profile's `select`, compiled.
#[derive(Debug, Default)]
pub struct ProfileMatch {
    listeners: Vec<String>,
    /// Exact hosts, lower-cased; and `*.suffix` wildcards as `.suffix`.
    hosts: Vec<String>,
    consumer_groups: Vec<String>,
    jwt_claims: Vec<(String, String)>,
}

impl ProfileMatch {
    fn compile(cfg: &frontdesk_config::ProfileSelect) -> Self {
        ProfileMatch {
            listeners: cfg.listeners.clone(),
            hosts: cfg
                .hosts
                .iter()
                .map(|h| {
                    let h = h.to_ascii_lowercase();
                    h.strip_prefix('*').map_or(h.clone(), str::to_string)
                })
                .collect(),
            consumer_groups: cfg.consumer_groups.clone(),
            jwt_claims: cfg
                .jwt_claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// True when it selects on who the caller is (consumer group, JWT claim).
    pub fn by_identity(&self) -> bool {
        !self.consumer_groups.is_empty() || !self.jwt_claims.is_empty()
    }

    /// Why a request selects this profile, or `None`. `host` is normalized (lower-case, no
    /// port); `consumer` and `claims` are the caller as the identity stage found it.
    pub fn selects(
        &self,
        listener: &str,
        host: Option<&str>,
        consumer: Option<&crate::consumer::Consumer>,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Option<String> {
        if self.listeners.iter().any(|l| l == listener) {
            return Some(format!("listener {listener}"));
        }
        if let Some(h) = host {
            for want in &self.hosts {
                let hit = match want.strip_prefix('.') {
                    Some(suffix) => h.len() > suffix.len() + 1 && h.ends_with(want.as_str()),
                    None => h == want,
                };
                if hit {
                    return Some(format!("host {h}"));
                }
            }
        }
        if let Some(c) = consumer {
            if let Some(g) = self.consumer_groups.iter().find(|g| c.in_group(g)) {
                return Some(format!("consumer {} in group {g}", c.name));
            }
        }
        if let (Some(claims), false) = (claims, self.jwt_claims.is_empty()) {
            let all = self.jwt_claims.iter().all(|(k, v)| {
                claims.get(k).is_some_and(|c| match c {
                    serde_json::Value::String(s) => s == v,
                    serde_json::Value::Number(n) => v.parse::<f64>().ok() == n.as_f64(),
                    serde_json::Value::Bool(b) => v == if *b { "true" } else { "false" },
                    _ => false,
                })
            });
            if all {
                let names: Vec<&str> = self.jwt_claims.iter().map(|(k, _)| k.as_str()).collect();
                return Some(format!("JWT claims {}", names.join(", ")));
            }
        }
        None
    }
}

/// Where a route's requests go once its plugins let them through.
#[derive(Clone, Debug)]
pub enum Target {
    /// Proxied to an upstream.
    Upstream(Arc<Upstream>),
    /// Answered by the route's own plugins (`respond`, or a plugin's answer); there is no
    /// upstream. A request no plugin answers gets `500`.
    Respond,
    /// Several upstream calls, one answer (`aggregate`).
    Aggregate(Arc<Aggregate>),
}

impl Target {
    /// The upstream, for a proxied route.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        match self {
            Target::Upstream(u) => Some(u),
            Target::Respond | Target::Aggregate(_) => None,
        }
    }
}

/// A listener's runtime settings.
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    /// Config name; identifies the listener across reloads.
    pub name: Arc<str>,
    /// Address as configured (port 0 means any free port).
    pub address: SocketAddr,
    /// Head limits and timers.
    pub limits: HeadLimits,
    /// Largest request body, if limited.
    pub max_body: Option<u64>,
    /// Timers on the bodies in flight: response writes and request uploads.
    pub transfer: Transfer,
    /// TLS termination (HTTPS), when configured: the handshake config and certificates.
    pub tls: Option<Arc<ServerTls>>,
    /// Answer every request with a redirect to HTTPS (plain listeners only).
    pub redirect_https: bool,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connection and byte counters, kept across reloads by name.
    pub series: Arc<ListenerSeries>,
    /// The address the socket is bound to, once it is (differs from `address` with port 0).
    /// Shared with the next generation's spec while the listener keeps its socket.
    pub bound: Arc<OnceLock<SocketAddr>>,
    /// The HTTP/1 implementation its connections are served with.
    pub http1: Http1Codec,
}

impl ListenerSpec {
    /// The port clients reach this listener on: the bound one, else the configured one.
    pub fn port(&self) -> u16 {
        self.bound.get().map_or(self.address.port(), |a| a.port())
    }
}

/// One compiled config generation.
#[derive(Debug)]
pub struct Snapshot {
    /// Increments with every successful reload.
    pub generation: u64,
    /// The route table (of requests no profile selects).
    pub routes: RouteTable<Route>,
    /// Client profiles in config order, each with its own route table.
    pub profiles: Vec<Profile>,
    /// The plugins that run before routing when a profile selects callers by identity: the
    /// global authentication plugins and those ordered before them.
    pub identity_stage: Option<PluginChain>,
    /// Upstreams by name.
    pub upstreams: Arc<HashMap<String, Arc<Upstream>>>,
    /// Listeners by declaration order.
    pub listeners: Vec<Arc<ListenerSpec>>,
    /// `Via` value added to forwarded requests.
    pub via: HeaderValue,
    /// SIGTERM drain budget.
    pub drain_timeout: Duration,
    /// The config it was built from.
    pub config: Arc<Config>,
    /// The shared limiter store, when `redis:` is configured.
    pub redis: Option<Arc<RedisStore>>,
    /// The response cache's stores, when a route caches (or `cache:` is configured).
    pub cache: Option<Arc<Cache>>,
    /// The process's metrics; the same instance in every generation.
    pub metrics: Arc<Metrics>,
    /// When this generation was built (it goes live right after).
    pub loaded_at: std::time::SystemTime,
    /// Records finished requests (metrics, access log, traces).
    pub observer: Arc<Observer>,
    /// Background tasks of this generation (active health checks), aborted when it is retired.
    background: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Snapshot {
    /// Compiles a validated config. `prev` lets unchanged upstreams keep their connection pools.
    ///
    /// Returns the snapshot and extra warnings (such as shadowed routes), or errors with field paths.
    pub fn build(
        cfg: Config,
        prev: Option<&Snapshot>,
    ) -> Result<(Snapshot, Vec<Diagnostic>), Vec<Diagnostic>> {
        Self::compile(cfg, prev, true)
    }

    /// Runs every check [`Snapshot::build`] runs, without connecting to anything (a new Redis
    /// store is not started): what `POST /config/validate` answers. Returns the warnings.
    pub fn check(cfg: Config, prev: Option<&Snapshot>) -> Result<Vec<Diagnostic>, Vec<Diagnostic>> {
        Self::compile(cfg, prev, false).map(|(_, warnings)| warnings)
    }

    fn compile(
        cfg: Config,
        prev: Option<&Snapshot>,
        connect: bool,
    ) -> Result<(Snapshot, Vec<Diagnostic>), Vec<Diagnostic>> {
        let root = FieldPath::root();
        let metrics = prev.map_or_else(Arc::default, |p| p.metrics.clone());
        let mut errs = Vec::new();
        let mut warnings = Vec::new();

        let http1 = cfg
            .server
            .http1
            .or_else(Http1Codec::from_env)
            .unwrap_or_default();
        let mut upstreams = HashMap::new();
        for (name, up) in &cfg.upstreams {
            let prev_up = prev.and_then(|p| p.upstreams.get(name)).map(Arc::as_ref);
            match Upstream::build(
                name,
                up,
                prev_up,
                metrics.upstream(&Arc::from(name.as_str())),
                http1 == Http1Codec::Native,
            ) {
                Ok(u) => {
                    upstreams.insert(name.clone(), Arc::new(u));
                }
                Err(e) => {
                    let at = root.key("upstreams").key(name);
                    let at = match e {
                        crate::upstream::UpstreamError::Tls(_) => at.key("tls"),
                        crate::upstream::UpstreamError::BadTarget(_) => at.key("targets"),
                    };
                    errs.push(Diagnostic::error(at.to_string(), e.to_string()));
                }
            }
        }

        let consumers = match Consumers::build(&cfg.consumers) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                errs.push(Diagnostic::error("consumers", e.to_string()));
                Arc::default()
            }
        };
        // The Redis store (its connection) survives reloads that keep the same `redis:` settings.
        let redis = match &cfg.redis {
            None => None,
            Some(rc) => match prev
                .and_then(|p| p.redis.clone())
                .filter(|r| r.config() == rc)
            {
                Some(r) => Some(r),
                // `validate` builds snapshots without a runtime, and `check` must not connect:
                // nothing to start then.
                None => match tokio::runtime::Handle::try_current()
                    .ok()
                    .filter(|_| connect)
                {
                    None => None,
                    Some(_) => match RedisStore::start(rc) {
                        Ok(r) => Some(Arc::new(r)),
                        Err(e) => {
                            errs.push(Diagnostic::error("redis", e));
                            None
                        }
                    },
                },
            },
        };
        // The cache's stores survive reloads that keep the same `cache:` settings (and are made
        // only when something caches).
        let caching = cfg.cache.is_some()
            || cfg.plugins.cache.is_some()
            || cfg.routes.iter().any(|r| r.plugins.cache.is_some())
            || cfg.profiles.iter().any(|p| {
                p.plugins.cache.is_some() || p.routes.iter().any(|r| r.plugins.cache.is_some())
            });
        let cache = caching.then(|| {
            let stores = cfg.cache.clone().unwrap_or_else(default_stores);
            let same_store = |c: &Cache| match (c.redis_config(), &redis) {
                (None, _) => stores.redis.is_none() || redis.is_none(),
                (Some(had), Some(r)) => had == r.config(),
                (Some(_), None) => false,
            };
            match prev
                .and_then(|p| p.cache.clone())
                .filter(|c| *c.config() == stores && same_store(c))
            {
                Some(c) => c,
                None => Cache::start(&stores, redis.clone()),
            }
        });
        let upstreams = Arc::new(upstreams);
        let env = BuildEnv {
            upstreams: upstreams.clone(),
            consumers,
            cache: cache.clone(),
            route_target: None,
            redis: redis.clone(),
            scope: Scope::Global,
            metrics: metrics.clone(),
            route: None,
            offline: !connect,
        };
        let mut global = ChainBuilder::new(env.clone());
        plugins::register_all(
            &mut global,
            &cfg.plugins,
            Scope::Global,
            &root.key("plugins"),
        );
        errs.append(&mut global.errors);

        // Profiles that select callers by identity need them identified before routing: the
        // global authentication plugins (and those ordered before them) then run as a stage of
        // their own, and the routes' chains go without them.
        let identity = cfg.profiles.iter().any(|p| p.select.needs_identity());
        let identity_stage = identity.then(|| {
            let mut stage = plugins::finish(global.identity_stage());
            stage.count_refusals(&Arc::from(""), &metrics);
            stage
        });
        if identity {
            global.remove_auth();
        }

        // The table reads each route's config by reference: a route's config is a kilobyte, which
        // a copy per route would add to the peak of a large table's build.
        let mut compile_routes = |list: &'_ [frontdesk_config::RouteConfig],
                                  at: FieldPath,
                                  defaults: &ChainBuilder,
                                  profile: Option<&Arc<str>>,
                                  errs: &mut Vec<Diagnostic>|
         -> Option<RouteTable<Route>> {
            let mut routes = Vec::with_capacity(list.len());
            for (i, r) in list.iter().enumerate() {
                let name: Arc<str> = Arc::from(r.name.as_str());
                let mut chain = ChainBuilder::new(BuildEnv {
                    route: Some(name.clone()),
                    route_target: r.upstream.as_ref().map(|u| RouteTarget {
                        upstream: u.clone(),
                        preserve_host: r.preserve_host,
                    }),
                    ..env.clone()
                });
                chain.extend_from(defaults);
                plugins::register_all(
                    &mut chain,
                    &r.plugins,
                    Scope::Route,
                    &at.index(i).key("plugins"),
                );
                errs.append(&mut chain.errors);
                let mut plugins = plugins::finish(chain);
                plugins.count_refusals(&name, &metrics);
                let target = match (
                    &r.aggregate,
                    r.upstream.as_ref().and_then(|u| upstreams.get(u)),
                ) {
                    (Some(agg), _) => match Aggregate::build(&name, agg, &upstreams, &metrics) {
                        // Its `GET` calls use the route's cache, when the route caches.
                        Ok(a) => Target::Aggregate(Arc::new(
                            match (
                                &cache,
                                r.plugins.cache.as_ref().or(cfg.plugins.cache.as_ref()),
                            ) {
                                (Some(c), Some(cc)) => a.with_cache(c.clone(), cc),
                                _ => a,
                            },
                        )),
                        Err(e) => {
                            let at = at.index(i).key("aggregate");
                            // An upstream that failed to build was reported at its own field.
                            if !e.field.ends_with(".upstream") {
                                errs.push(Diagnostic::error(
                                    format!("{at}.{}", e.field),
                                    e.message,
                                ));
                            }
                            Target::Respond
                        }
                    },
                    (None, Some(u)) => Target::Upstream(u.clone()),
                    (None, None) => Target::Respond,
                };
                let route = Route {
                    series: metrics.route_in(&name, profile),
                    name,
                    target,
                    strip_prefix: r.strip_prefix,
                    preserve_host: r.preserve_host,
                    plugins,
                };
                routes.push((r, route));
            }
            match RouteTable::build(routes, &mut warnings) {
                Ok(t) => Some(t),
                Err(mut e) => {
                    errs.append(&mut e);
                    None
                }
            }
        };
        let table = compile_routes(&cfg.routes, root.key("routes"), &global, None, &mut errs);
        let mut profiles = Vec::with_capacity(cfg.profiles.len());
        for (i, p) in cfg.profiles.iter().enumerate() {
            let at = root.key("profiles").index(i);
            let name: Arc<str> = Arc::from(p.name.as_str());
            let mut defaults = ChainBuilder::new(env.clone());
            defaults.extend_from(&global);
            plugins::register_all(
                &mut defaults,
                &p.plugins,
                Scope::Profile,
                &at.key("plugins"),
            );
            errs.append(&mut defaults.errors);
            if identity {
                defaults.remove_auth();
            }
            if let Some(routes) = compile_routes(
                &p.routes,
                at.key("routes"),
                &defaults,
                Some(&name),
                &mut errs,
            ) {
                profiles.push(Profile {
                    name,
                    select: ProfileMatch::compile(&p.select),
                    routes,
                });
            }
        }

        let mut listeners = Vec::new();
        for (i, l) in cfg.listeners.iter().enumerate() {
            let Ok(address) = l.address.parse() else {
                errs.push(Diagnostic::error(
                    root.key("listeners").index(i).key("address").to_string(),
                    "invalid address",
                ));
                continue;
            };
            let at = root.key("listeners").index(i);
            let tls = match &l.tls {
                None => None,
                Some(t) => match ServerTls::build(t) {
                    Ok((tls, found)) => {
                        warnings.extend(found.into_iter().map(|w| {
                            Diagnostic::warning(format!("{}.{}", at.key("tls"), w.field), w.message)
                        }));
                        Some(Arc::new(tls))
                    }
                    Err(found) => {
                        errs.extend(found.into_iter().map(|e| {
                            Diagnostic::error(
                                format!("{}.{}", at.key("tls"), e.field),
                                e.source.to_string(),
                            )
                        }));
                        None
                    }
                },
            };
            // Same name and address: the running listener keeps its socket across the reload.
            let bound = prev
                .and_then(|p| p.listener(&l.name))
                .filter(|p| p.address == address)
                .map(|p| p.bound.clone())
                .unwrap_or_default();
            let name: Arc<str> = Arc::from(l.name.as_str());
            listeners.push(Arc::new(ListenerSpec {
                series: metrics.listener(&name),
                name,
                address,
                tls,
                redirect_https: l.redirect_https,
                trusted_proxies: parse_nets(
                    &l.trusted_proxies,
                    &at.key("trusted_proxies"),
                    &mut errs,
                ),
                bound,
                limits: HeadLimits {
                    max_head: l.limits.max_request_head.as_usize(),
                    max_headers: l.limits.max_headers,
                    max_uri: l.limits.max_uri.as_usize(),
                    head_timeout: l.limits.head_timeout.get(),
                    idle_timeout: l.limits.idle_timeout.get(),
                },
                max_body: l.limits.max_request_body.map(|b| b.0),
                transfer: Transfer {
                    send_timeout: l.limits.send_timeout.get(),
                    body_timeout: l.limits.body_timeout.map(|d| d.get()),
                },
                http1,
            }));
        }
        // Only once everything else is valid: starting an access-log writer or an exporter for a
        // config that is refused would be wasted.
        let observer = if errs.is_empty() {
            match Observer::build(
                &cfg.observability,
                metrics.clone(),
                prev.map(|p| p.observer.as_ref()),
            ) {
                Ok(o) => Some(Arc::new(o)),
                Err((at, e)) => {
                    errs.push(Diagnostic::error(at, e));
                    None
                }
            }
        } else {
            None
        };
        let via = HeaderValue::from_str(&format!("1.1 {}", cfg.server.via))
            .map_err(|_| vec![Diagnostic::error("server.via", "invalid header value")])?;
        match table {
            Some(routes) if errs.is_empty() => Ok((
                Snapshot {
                    generation: prev.map_or(1, |p| p.generation + 1),
                    routes,
                    profiles,
                    identity_stage,
                    upstreams,
                    listeners,
                    via,
                    drain_timeout: cfg.server.drain_timeout.get(),
                    config: Arc::new(cfg),
                    redis,
                    cache,
                    metrics,
                    loaded_at: std::time::SystemTime::now(),
                    observer: observer
                        .unwrap_or_else(|| Arc::new(Observer::metrics_only(Arc::default()))),
                    background: Default::default(),
                },
                warnings,
            )),
            _ => Err(errs),
        }
    }

    /// Starts this generation's background tasks (active health checks). Called once it is
    /// live; must run inside a tokio runtime.
    pub fn start_background(&self) {
        let mut tasks = self
            .background
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for up in self.upstreams.values() {
            tasks.extend(up.start_health_checks());
        }
    }

    /// Stops the background tasks: this generation was replaced.
    pub fn stop_background(&self) {
        let tasks = std::mem::take(
            &mut *self
                .background
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        tasks.iter().for_each(tokio::task::AbortHandle::abort);
    }

    /// Which route `req` takes, why the routes before it did not, which plugins run and where
    /// the request goes (`GET /explain`, `frontdesk explain`).
    pub fn explain(&self, req: &ExplainRequest) -> Explanation {
        let key = req.key();
        let (table, profile) = self.explain_profile(req);
        let found = table.explain(&key);
        let matched = found.matched.map(|hit| {
            let route = hit.route;
            let upstream_path = route.target.upstream().map(|_| {
                let strip = if route.strip_prefix { hit.strip_len } else { 0 };
                stripped_path(&req.path, strip, req.query.as_deref())
            });
            let notes = req
                .head()
                .map(|head| route.plugins.explain(&head, hit.name))
                .unwrap_or_default()
                .into_iter()
                .map(|(plugin, note)| PluginNote {
                    plugin: plugin.to_string(),
                    note,
                })
                .collect();
            let aggregate = match &route.target {
                // The path parameters come from the matching itself (`find` and `explain`
                // always pick the same route).
                Target::Aggregate(a) => {
                    let params = table
                        .find(&key)
                        .map(|m| m.rule().path_params(&req.path))
                        .unwrap_or_default();
                    a.explain(&params)
                }
                _ => Vec::new(),
            };
            MatchedRoute {
                route: hit.name.to_string(),
                rule: hit.rule.to_string(),
                plugins: route.plugins.kinds().map(str::to_string).collect(),
                upstream: route.target.upstream().map(|u| u.name.to_string()),
                upstream_path,
                notes,
                aggregate,
            }
        });
        Explanation {
            profile,
            request: RequestSummary {
                method: req.method.to_string(),
                host: req.host.as_deref().map(|h| normalize_host(h).into_owned()),
                path: req.path.clone(),
                query: req.query.clone(),
            },
            matched,
            considered: found.rejected,
        }
    }

    /// The profile `explain` searches, by listener and host (it verifies no credentials, so a
    /// profile that selects by identity is only named as not evaluated).
    fn explain_profile(&self, req: &ExplainRequest) -> (&RouteTable<Route>, Option<ProfileChoice>) {
        if self.profiles.is_empty() {
            return (&self.routes, None);
        }
        let host = req.host.as_deref().map(normalize_host);
        let listener = req.listener.as_deref().unwrap_or("");
        let mut unchecked = Vec::new();
        for p in &self.profiles {
            if let Some(why) = p.select.selects(listener, host.as_deref(), None, None) {
                let mut reason = why;
                if !unchecked.is_empty() {
                    reason.push_str(&format!(
                        "; not evaluated before it, as they select by identity: {}",
                        unchecked.join(", ")
                    ));
                }
                let choice = ProfileChoice {
                    name: Some(p.name.to_string()),
                    reason,
                };
                return (&p.routes, Some(choice));
            }
            if p.select.by_identity() {
                unchecked.push(p.name.to_string());
            }
        }
        let mut reason = "no profile selects it by listener or host".to_string();
        if !unchecked.is_empty() {
            reason.push_str(&format!(
                "; not evaluated, as they select by identity: {}",
                unchecked.join(", ")
            ));
        }
        (&self.routes, Some(ProfileChoice { name: None, reason }))
    }

    /// A listener's settings by name.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSpec>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

/// The gauges a metrics scrape reads from this generation.
impl Gauges for Snapshot {
    fn upstreams(&self) -> Vec<UpstreamGauges<'_>> {
        let mut v: Vec<_> = self
            .upstreams
            .iter()
            .map(|(name, up)| UpstreamGauges {
                name,
                targets: up
                    .targets()
                    .iter()
                    .map(|t| TargetGauges {
                        url: &t.url,
                        latency: &t.state.latency,
                        healthy: t.state.is_healthy(),
                    })
                    .collect(),
                breaker_open: up.breaker().map(|b| b.is_open()),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(b.name));
        v
    }

    fn store_errors(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |r| r.errors.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn cache(&self) -> Option<crate::observe::metrics::CacheGauges> {
        let c = self.cache.as_ref()?;
        Some(crate::observe::metrics::CacheGauges {
            entries: c.entries(),
            bytes: c.weighed_bytes(),
            evictions: c.evictions.load(std::sync::atomic::Ordering::Relaxed),
            redis_errors: c.redis().map(|r| r.errors()),
        })
    }
}

/// The head limits a connection enforces (from its listener's config).
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Request line plus header lines, in bytes.
    pub max_head: usize,
    /// Header fields.
    pub max_headers: usize,
    /// Request-target length.
    pub max_uri: usize,
    /// From a head's first byte to its end.
    pub head_timeout: Duration,
    /// With no request in flight.
    pub idle_timeout: Duration,
}

/// Timers on the bodies in flight on a connection (from its listener's limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Writing a response may make no progress for this long; then the connection is closed
    /// (and with it the response body and its upstream connection).
    pub send_timeout: Duration,
    /// A request body may deliver nothing for this long; then the request fails as the client's
    /// fault (408). `None`: no limit.
    pub body_timeout: Option<Duration>,
}

impl Default for Transfer {
    fn default() -> Self {
        Transfer {
            send_timeout: Duration::from_secs(60),
            body_timeout: None,
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.stop_background();
    }
}

/// The cache's stores when the config has no `cache:` section but a route caches.
fn default_stores() -> frontdesk_config::CacheStoresConfig {
    frontdesk_config::CacheStoresConfig {
        memory: Default::default(),
        redis: None,
    }
}
