//! Semantic checks that types alone cannot express: references, uniqueness, value ranges (every
//! duration has one, see [`DURATIONS`]), and the files the config names.
//!
//! Every check pushes to one list and goes on, so a user sees all problems at once; a check that
//! would only repeat a section's parse error (a reference to an upstream that failed to parse)
//! is skipped.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::model::plugin::{
    CompressionConfig, CorsConfig, InputFormat, OutputFormat, StatusSource, TransformConfig,
    TransformSide, TransformStep, COMPRESSION_LEVELS,
};
use crate::model::{
    ApiKeyConfig, Config, LoadBalancing, PathMatch, PluginsConfig, RouteConfig, UpstreamConfig,
    UpstreamProtocol,
};
use crate::{Diagnostic, Dur, FieldPath, FileCheck, FileUse, LimitStore};

mod aggregate;
use aggregate::check_aggregate;

/// Original list positions of the parsed listeners and routes (elements that failed to parse are
/// absent from the config but must not shift the paths of those after them), and what failed.
pub(crate) struct Positions {
    pub(crate) listeners: Vec<usize>,
    pub(crate) routes: Vec<usize>,
    pub(crate) consumers: Vec<usize>,
    pub(crate) broken: Broken,
}

impl Positions {
    pub(crate) fn identity(cfg: &Config) -> Self {
        Positions {
            listeners: (0..cfg.listeners.len()).collect(),
            routes: (0..cfg.routes.len()).collect(),
            consumers: (0..cfg.consumers.len()).collect(),
            broken: Broken::default(),
        }
    }
}

/// Parts of the document that failed to parse (and are already reported): checks that refer to
/// them are skipped rather than report a consequence of the same error.
#[derive(Default)]
pub(crate) struct Broken {
    /// Upstreams, by name, that failed to parse.
    pub(crate) upstreams: HashSet<String>,
    /// The `upstreams` section itself is not a mapping.
    pub(crate) all_upstreams: bool,
    /// Some listener (or the section) failed to parse.
    pub(crate) listeners: bool,
    /// The `redis` section failed to parse.
    pub(crate) redis: bool,
}

impl Broken {
    /// The whole document failed (it is not a mapping).
    pub(crate) fn everything() -> Self {
        Broken {
            upstreams: HashSet::new(),
            all_upstreams: true,
            listeners: true,
            redis: true,
        }
    }

    fn upstream(&self, name: &str) -> bool {
        self.all_upstreams || self.upstreams.contains(name)
    }
}

/// The accepted range of each duration field, `(field, least, most)`, as documented in
/// docs/configuration.md. [`POSITIVE`] as the least means "greater than zero". The upper bounds
/// keep every deadline (`now + duration`) far inside what a clock can represent, and every wait
/// one an operator would choose.
pub const DURATIONS: &[(&str, Duration, Duration)] = &[
    ("server.drain_timeout", Duration::ZERO, HOUR),
    ("listeners[].limits.head_timeout", POSITIVE, HOUR),
    ("listeners[].limits.idle_timeout", POSITIVE, DAY),
    ("listeners[].limits.send_timeout", POSITIVE, HOUR),
    ("listeners[].limits.body_timeout", POSITIVE, HOUR),
    (
        "upstreams.*.timeouts.connect",
        POSITIVE,
        Duration::from_secs(300),
    ),
    ("upstreams.*.timeouts.response", POSITIVE, DAY),
    ("upstreams.*.timeouts.idle", POSITIVE, DAY),
    ("upstreams.*.health_check.active.interval", POSITIVE, HOUR),
    (
        "upstreams.*.health_check.active.timeout",
        POSITIVE,
        Duration::from_secs(300),
    ),
    (
        "upstreams.*.health_check.passive.eject_for",
        Duration::ZERO,
        DAY,
    ),
    (
        "upstreams.*.retries.backoff",
        Duration::ZERO,
        Duration::from_secs(10),
    ),
    (
        "upstreams.*.circuit_breaker.window",
        Duration::from_secs(1),
        HOUR,
    ),
    ("upstreams.*.circuit_breaker.open_for", POSITIVE, HOUR),
    ("routes[].aggregate.timeout", POSITIVE, HOUR),
    ("routes[].aggregate.calls.*.timeout", POSITIVE, HOUR),
    ("redis.timeout", Duration::ZERO, Duration::from_secs(10)),
    ("plugins.cors.max_age", Duration::ZERO, DAY),
    ("plugins.jwt.leeway", Duration::ZERO, HOUR),
    (
        "plugins.transform.jq_timeout",
        POSITIVE,
        Duration::from_secs(10),
    ),
    (
        "plugins.grpc_transcode.descriptors.timeout",
        POSITIVE,
        Duration::from_secs(300),
    ),
    ("plugins.cache.default_ttl", Duration::ZERO, YEAR),
    ("plugins.cache.max_ttl", POSITIVE, YEAR),
    ("plugins.cache.stale_while_revalidate", Duration::ZERO, YEAR),
    ("plugins.cache.stale_if_error", Duration::ZERO, YEAR),
    (
        "plugins.cache.lock.timeout",
        POSITIVE,
        Duration::from_secs(300),
    ),
    ("cache.redis.timeout", POSITIVE, Duration::from_secs(10)),
    (
        "plugins.rate_limit.limits[].per",
        Duration::from_millis(1),
        DAY,
    ),
];

/// "Greater than zero", as a least duration.
pub const POSITIVE: Duration = Duration::from_nanos(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Checks `d` against the range of `field` in [`DURATIONS`], reporting at `at`.
fn check_duration(field: &str, d: Duration, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    let Some(&(_, least, most)) = DURATIONS.iter().find(|(f, _, _)| *f == field) else {
        return;
    };
    if d < least {
        let msg = if least == POSITIVE {
            "must be greater than zero".to_string()
        } else {
            format!("must be at least {}", human(least))
        };
        out.push(Diagnostic::error(at.to_string(), msg));
    } else if d > most {
        out.push(Diagnostic::error(
            at.to_string(),
            format!("must be at most {}", human(most)),
        ));
    }
}

/// `1h`, `5m`, `10s`, `1ms`: the shortest exact form.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms >= 3_600_000 && ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms >= 60_000 && ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

pub(crate) fn validate(cfg: &Config, pos: &Positions, out: &mut Vec<Diagnostic>) {
    let root = FieldPath::root();
    if cfg.version != 1 {
        out.push(Diagnostic::error(
            "version",
            format!(
                "unsupported version {}, this gateway reads version 1",
                cfg.version
            ),
        ));
    }
    if cfg.server.via.is_empty() || !cfg.server.via.bytes().all(is_tchar) {
        out.push(Diagnostic::error(
            "server.via",
            "must be a non-empty token (letters, digits, `-._~!#$%&'*+^`|`)",
        ));
    }
    if cfg.server.worker_threads > 1024 {
        out.push(Diagnostic::error("server.worker_threads", "at most 1024"));
    }
    check_duration(
        "server.drain_timeout",
        cfg.server.drain_timeout.get(),
        &root.key("server").key("drain_timeout"),
        out,
    );

    check_observe(cfg, out);

    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let at = root
            .key("listeners")
            .index(pos.listeners.get(i).copied().unwrap_or(i));
        if l.name.is_empty() {
            out.push(Diagnostic::error(
                at.key("name").to_string(),
                "must not be empty",
            ));
        } else if !names.insert(l.name.as_str()) {
            out.push(Diagnostic::error(
                at.key("name").to_string(),
                format!("duplicate listener name {:?}", l.name),
            ));
        }
        match l.address.parse::<SocketAddr>() {
            Ok(a) => {
                if a.port() != 0 && !addrs.insert(a) {
                    out.push(Diagnostic::error(
                        at.key("address").to_string(),
                        format!("address {a} is used by another listener"),
                    ));
                }
            }
            Err(_) => out.push(Diagnostic::error(
                at.key("address").to_string(),
                format!(
                    "invalid address {:?}, expected IP:PORT such as 127.0.0.1:8080 or [::]:80",
                    l.address
                ),
            )),
        }
        let lim = &l.limits;
        let la = at.key("limits");
        if lim.max_request_head.0 < 1024 {
            out.push(Diagnostic::error(
                la.key("max_request_head").to_string(),
                "must be at least 1KiB",
            ));
        }
        if lim.max_request_head.0 > 1024 * 1024 {
            out.push(Diagnostic::error(
                la.key("max_request_head").to_string(),
                "must be at most 1MiB",
            ));
        }
        if lim.max_headers == 0 || lim.max_headers > 1000 {
            out.push(Diagnostic::error(
                la.key("max_headers").to_string(),
                "must be between 1 and 1000",
            ));
        }
        if lim.max_uri.0 < 16 {
            out.push(Diagnostic::error(
                la.key("max_uri").to_string(),
                "must be at least 16 bytes",
            ));
        }
        for (field, d) in [
            ("head_timeout", lim.head_timeout),
            ("idle_timeout", lim.idle_timeout),
            ("send_timeout", lim.send_timeout),
        ]
        .into_iter()
        .chain(lim.body_timeout.map(|d| ("body_timeout", d)))
        {
            check_duration(
                &format!("listeners[].limits.{field}"),
                d.get(),
                &la.key(field),
                out,
            );
        }
        if let Some(tls) = &l.tls {
            if tls.certificates.is_empty() {
                out.push(Diagnostic::error(
                    at.key("tls").key("certificates").to_string(),
                    "a TLS listener needs at least one certificate",
                ));
            }
            if l.redirect_https {
                out.push(Diagnostic::error(
                    at.key("redirect_https").to_string(),
                    "a TLS listener cannot redirect to HTTPS; set it on the plain HTTP listener",
                ));
            }
        } else if l.redirect_https
            && !pos.broken.listeners
            && !cfg.listeners.iter().any(|o| o.tls.is_some())
        {
            out.push(Diagnostic::error(
                at.key("redirect_https").to_string(),
                "needs a listener with `tls` to redirect to",
            ));
        }
    }
    if cfg.listeners.is_empty() && !pos.broken.listeners {
        out.push(Diagnostic::warning(
            "listeners",
            "no listener is configured, so the gateway accepts no traffic",
        ));
    }

    for (name, up) in &cfg.upstreams {
        let at = root.key("upstreams").key(name);
        if !valid_name(name) {
            out.push(Diagnostic::error(
                at.to_string(),
                "upstream names use letters, digits, `-`, `_` and `.`",
            ));
        }
        if up.targets.is_empty() {
            out.push(Diagnostic::error(
                at.key("targets").to_string(),
                "an upstream needs at least one target",
            ));
        }
        for (j, t) in up.targets.iter().enumerate() {
            let ta = at.key("targets").index(j);
            if let Err(msg) = check_target_url(&t.url) {
                out.push(Diagnostic::error(ta.key("url").to_string(), msg));
            }
            if t.weight > 1000 {
                out.push(Diagnostic::error(
                    ta.key("weight").to_string(),
                    "must be at most 1000",
                ));
            }
        }
        if !up.targets.is_empty() && up.targets.iter().all(|t| t.weight == 0) {
            out.push(Diagnostic::error(
                at.key("targets").to_string(),
                "at least one target needs a weight above 0",
            ));
        }
        check_upstream(up, &at, out);
    }

    check_consumers(cfg, pos, out);
    check_redis(cfg, out);
    check_plugins(&cfg.plugins, &root.key("plugins"), out);
    if !pos.broken.redis {
        check_limit_stores(cfg, &cfg.plugins, &root.key("plugins"), out);
    }
    check_cache_stores(cfg, &cfg.plugins, &root.key("plugins"), out);
    let mut route_names = HashSet::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let at = root
            .key("routes")
            .index(pos.routes.get(i).copied().unwrap_or(i));
        check_routed(cfg, pos, r, &at, &mut route_names, out);
    }
    check_profiles(cfg, pos, &mut route_names, out);
}

/// One route, top-level or a profile's: its name unique among all, then [`check_route`] and the
/// checks that depend on the rest of the config.
fn check_routed<'c>(
    cfg: &'c Config,
    pos: &Positions,
    r: &'c RouteConfig,
    at: &FieldPath,
    route_names: &mut HashSet<&'c str>,
    out: &mut Vec<Diagnostic>,
) {
    if r.name.is_empty() {
        out.push(Diagnostic::error(
            at.key("name").to_string(),
            "must not be empty",
        ));
    } else if !route_names.insert(r.name.as_str()) {
        out.push(Diagnostic::error(
            at.key("name").to_string(),
            format!("duplicate route name {:?}", r.name),
        ));
    }
    check_route(
        r,
        at,
        &cfg.upstreams,
        &pos.broken,
        cfg.plugins.respond.is_some(),
        !cfg.plugins.custom.is_empty(),
        out,
    );
    if cfg.plugins.cors.is_some() && r.plugins.cors.is_some() {
        // The global `cors` answers preflights first, so a route's own would only half apply.
        out.push(Diagnostic::error(
            at.key("plugins").key("cors").to_string(),
            "`cors` is already configured globally; set it on the routes or globally, not both",
        ));
    }
    check_grpc_web_upstream(cfg, r, at, out);
    if !pos.broken.redis {
        check_limit_stores(cfg, &r.plugins, &at.key("plugins"), out);
    }
    check_cache_stores(cfg, &r.plugins, &at.key("plugins"), out);
}

/// `profiles`: names unique, something to select on, listeners that exist, identity conditions
/// with the global authentication that identifies callers, and each profile's plugins and routes.
fn check_profiles<'c>(
    cfg: &'c Config,
    pos: &Positions,
    route_names: &mut HashSet<&'c str>,
    out: &mut Vec<Diagnostic>,
) {
    let mut names = HashSet::new();
    let global_auth = cfg.plugins.key_auth.is_some()
        || cfg.plugins.jwt.is_some()
        || cfg.plugins.basic_auth.is_some()
        || cfg.plugins.client_cert.is_some();
    for (i, p) in cfg.profiles.iter().enumerate() {
        let at = FieldPath::root().key("profiles").index(i);
        if !valid_name(&p.name) {
            out.push(Diagnostic::error(
                at.key("name").to_string(),
                "use letters, digits, `-`, `_` and `.`",
            ));
        } else if !names.insert(p.name.as_str()) {
            out.push(Diagnostic::error(
                at.key("name").to_string(),
                format!("duplicate profile name {:?}", p.name),
            ));
        }
        let sel = &p.select;
        let sat = at.key("select");
        if sel.is_empty() {
            out.push(Diagnostic::error(
                sat.to_string(),
                "select on at least one of listeners, hosts, consumer_groups, jwt_claims",
            ));
        }
        for (j, l) in sel.listeners.iter().enumerate() {
            if !pos.broken.listeners && !cfg.listeners.iter().any(|x| &x.name == l) {
                out.push(Diagnostic::error(
                    sat.key("listeners").index(j).to_string(),
                    format!("unknown listener {l:?}"),
                ));
            }
        }
        for (j, h) in sel.hosts.iter().enumerate() {
            if let Err(msg) = check_host(h) {
                out.push(Diagnostic::error(
                    sat.key("hosts").index(j).to_string(),
                    msg,
                ));
            }
        }
        if !sel.consumer_groups.is_empty() && !global_auth {
            out.push(Diagnostic::error(
                sat.key("consumer_groups").to_string(),
                "selecting by consumer group needs a global authentication plugin \
                 (key_auth, jwt, basic_auth or client_cert under the top-level `plugins`)",
            ));
        }
        if !sel.jwt_claims.is_empty() && cfg.plugins.jwt.is_none() {
            out.push(Diagnostic::error(
                sat.key("jwt_claims").to_string(),
                "selecting by JWT claim needs the global `jwt` plugin",
            ));
        }
        check_plugins(&p.plugins, &at.key("plugins"), out);
        if !pos.broken.redis {
            check_limit_stores(cfg, &p.plugins, &at.key("plugins"), out);
        }
        check_cache_stores(cfg, &p.plugins, &at.key("plugins"), out);
        for (j, r) in p.routes.iter().enumerate() {
            check_routed(cfg, pos, r, &at.key("routes").index(j), route_names, out);
        }
    }
}

fn check_route<T>(
    r: &RouteConfig,
    at: &FieldPath,
    upstreams: &BTreeMap<String, T>,
    broken: &Broken,
    global_answers: bool,
    global_custom: bool,
    out: &mut Vec<Diagnostic>,
) {
    let answers = r.plugins.respond.is_some() || global_answers;
    // A custom plugin (registered by an embedding binary) may answer too: the gateway cannot
    // tell, so a route with one needs no upstream (unanswered requests get `500`).
    let may_answer = answers || global_custom || !r.plugins.custom.is_empty();
    if let Some(agg) = &r.aggregate {
        if r.upstream.is_some() {
            out.push(Diagnostic::error(
                at.key("aggregate").to_string(),
                "a route either forwards to an `upstream` or answers with an `aggregate`, not both",
            ));
        }
        check_aggregate(agg, r, &at.key("aggregate"), upstreams, broken, out);
    }
    match &r.upstream {
        // Already reported where it failed to parse.
        Some(u) if broken.upstream(u) => {}
        Some(u) if !upstreams.contains_key(u) => out.push(Diagnostic::error(
            at.key("upstream").to_string(),
            format!("unknown upstream {u:?}{}", suggest(u, upstreams.keys())),
        )),
        Some(_) if answers => out.push(Diagnostic::warning(
            at.key("upstream").to_string(),
            "the route's `respond` plugin answers every request, so this upstream is never used",
        )),
        None if !may_answer && r.aggregate.is_none() => out.push(Diagnostic::error(
            at.key("upstream").to_string(),
            "a route needs an upstream, an aggregate, or a plugin that answers (such as `respond`)",
        )),
        _ => {}
    }
    let m = at.key("match");
    for (j, h) in r.matcher.hosts.iter().enumerate() {
        if let Err(msg) = check_host(h) {
            out.push(Diagnostic::error(m.key("hosts").index(j).to_string(), msg));
        }
    }
    for (j, p) in r.matcher.paths.iter().enumerate() {
        let pa = m.key("paths").index(j);
        let msg = match p {
            PathMatch::Prefix(s) | PathMatch::Exact(s) if !s.starts_with('/') => {
                Some("a path must start with `/`".to_string())
            }
            PathMatch::Template(s) => check_template(s).err(),
            PathMatch::Regex(s) => regex::Regex::new(s).err().map(|e| {
                format!(
                    "invalid regex: {}",
                    e.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }),
            _ => None,
        };
        if let Some(msg) = msg {
            out.push(Diagnostic::error(pa.to_string(), msg));
        }
    }
    for (j, meth) in r.matcher.methods.iter().enumerate() {
        if meth.is_empty() || !meth.bytes().all(is_tchar) {
            out.push(Diagnostic::error(
                m.key("methods").index(j).to_string(),
                format!("invalid method {meth:?}"),
            ));
        }
    }
    for (name, value) in &r.matcher.headers {
        check_header(name, value, &m.key("headers").key(name), out);
    }
    check_plugins(&r.plugins, &at.key("plugins"), out);
}

/// `redis:` names a server (or cluster seeds) to connect to.
fn check_redis(cfg: &Config, out: &mut Vec<Diagnostic>) {
    if let Some(r) = &cfg.redis {
        if r.url.is_none() && r.cluster.is_empty() {
            out.push(Diagnostic::error("redis", "set `url` (or `cluster`)"));
        }
        check_duration(
            "redis.timeout",
            r.timeout.get(),
            &FieldPath::root().key("redis").key("timeout"),
            out,
        );
        if let Some(t) = cfg.cache.as_ref().and_then(|c| c.redis.as_ref()) {
            check_duration(
                "cache.redis.timeout",
                t.timeout.get(),
                &FieldPath::root().key("cache").key("redis").key("timeout"),
                out,
            );
        }
        if let Some(url) = &r.url {
            if let Err(msg) = check_redis_url(url) {
                out.push(Diagnostic::error("redis.url", msg));
            }
        }
        for (i, url) in r.cluster.iter().enumerate() {
            if let Err(msg) = check_redis_url(url) {
                out.push(Diagnostic::error(format!("redis.cluster[{i}]"), msg));
            }
        }
        if r.url.is_some() && !r.cluster.is_empty() {
            out.push(Diagnostic::error(
                "redis",
                "set `url` for one server or `cluster` for a Redis Cluster, not both",
            ));
        }
    }
}

/// A route's own `grpc_web` sends gRPC, which needs an HTTP/2 upstream (`protocol: h2c` or
/// `h2`): over HTTP/1.1 the upstream never sees the trailers it answers with. A warning, since
/// the route may also serve plain HTTP (a global `grpc_web` is not checked: it applies to every
/// route, and acts only on gRPC-Web requests).
fn check_grpc_web_upstream(
    cfg: &Config,
    r: &RouteConfig,
    at: &FieldPath,
    out: &mut Vec<Diagnostic>,
) {
    if r.plugins.grpc_web.is_none() {
        return;
    }
    let Some(up) = r.upstream.as_ref().and_then(|u| cfg.upstreams.get(u)) else {
        return;
    };
    if up.protocol == UpstreamProtocol::Http1 {
        out.push(Diagnostic::warning(
            at.key("plugins").key("grpc_web").to_string(),
            "gRPC needs an HTTP/2 upstream: set `protocol: h2c` or `h2` on the route's upstream",
        ));
    }
}

/// `store: redis` needs the top-level `redis:` section: without it the limit would quietly be
/// enforced per instance.
fn check_limit_stores(cfg: &Config, p: &PluginsConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    if cfg.redis.is_some() {
        return;
    }
    let stores = [
        ("rate_limit", p.rate_limit.as_ref().map(|r| r.store)),
        ("quota", p.quota.as_ref().map(|q| q.store)),
    ];
    for (kind, store) in stores {
        if store == Some(LimitStore::Redis) {
            out.push(Diagnostic::error(
                at.key(kind).key("store").to_string(),
                "`store: redis` needs a top-level `redis:` section",
            ));
        }
    }
}

fn check_plugins(p: &PluginsConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    if let Some(h) = &p.headers {
        for (phase, ops) in [("request", &h.request), ("response", &h.response)] {
            let Some(ops) = ops else { continue };
            let pa = at.key("headers").key(phase);
            for (verb, map) in [("set", &ops.set), ("add", &ops.add)] {
                for (name, value) in map {
                    check_header(name, value, &pa.key(verb).key(name), out);
                }
            }
            for (k, name) in ops.remove.iter().enumerate() {
                check_header(name, "", &pa.key("remove").index(k), out);
            }
        }
    }
    if let Some(c) = &p.cors {
        check_cors(c, &at.key("cors"), out);
        if let Some(max_age) = c.max_age {
            let ma = at.key("cors").key("max_age");
            check_duration("plugins.cors.max_age", max_age.get(), &ma, out);
        }
    }
    if let Some(rl) = &p.rate_limit {
        let ra = at.key("rate_limit");
        for (i, l) in rl.limits.iter().enumerate() {
            let pa = ra.key("limits").index(i).key("per");
            check_duration("plugins.rate_limit.limits[].per", l.per.get(), &pa, out);
        }
        for (group, limits) in &rl.groups {
            for (name, o) in limits {
                let pa = ra.key("groups").key(group).key(name).key("per");
                check_duration("plugins.rate_limit.limits[].per", o.per.get(), &pa, out);
            }
        }
    }
    if let Some(r) = &p.respond {
        let ra = at.key("respond");
        if !(200..=599).contains(&r.status) {
            out.push(Diagnostic::error(
                ra.key("status").to_string(),
                "must be between 200 and 599",
            ));
        }
        for (name, value) in &r.headers {
            check_header(name, value, &ra.key("headers").key(name), out);
        }
    }
    if let Some(j) = &p.jwt {
        check_jwt(j, &at.key("jwt"), out);
    }
    if let Some(c) = &p.compression {
        check_compression(c, &at.key("compression"), out);
    }
    if let Some(c) = &p.cache {
        check_cache(c, &at.key("cache"), out);
    }
    if let Some(t) = &p.transform {
        check_transform(t, &at.key("transform"), out);
    }
    if let Some(g) = &p.grpc_transcode {
        check_grpc_transcode(g, &at.key("grpc_transcode"), out);
    }
}

/// `grpc_transcode`: one source of descriptors, one binding per rule, a usable message cap.
/// Path templates and selectors are checked against the descriptors when the plugin is built.
fn check_grpc_transcode(g: &crate::GrpcTranscodeConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    let d = &g.descriptors;
    let da = at.key("descriptors");
    match (&d.file, d.reflect) {
        (Some(_), true) => out.push(Diagnostic::error(
            da.to_string(),
            "set either file or reflect: true, not both",
        )),
        (None, false) => out.push(Diagnostic::error(
            da.to_string(),
            "needs file (a FileDescriptorSet) or reflect: true",
        )),
        (Some(f), false) if f.trim().is_empty() => out.push(Diagnostic::error(
            da.key("file").to_string(),
            "must not be empty",
        )),
        _ => {}
    }
    if let Some(u) = &d.url {
        if !d.reflect {
            out.push(Diagnostic::error(
                da.key("url").to_string(),
                "is the reflection server: only with reflect: true",
            ));
        } else if !(u.starts_with("http://") || u.starts_with("https://")) {
            out.push(Diagnostic::error(
                da.key("url").to_string(),
                "must be an http:// (h2c) or https:// URL",
            ));
        }
    }
    if d.timeout.get().is_zero() {
        out.push(Diagnostic::error(
            da.key("timeout").to_string(),
            "must be positive",
        ));
    }
    if g.max_message_size.0 == 0 {
        out.push(Diagnostic::error(
            at.key("max_message_size").to_string(),
            "must be positive",
        ));
    }
    for (i, r) in g.rules.iter().enumerate() {
        let ra = at.key("rules").index(i);
        if r.selector.trim().is_empty() {
            out.push(Diagnostic::error(
                ra.key("selector").to_string(),
                "must name a method",
            ));
        }
        if let Err(e) = r.binding() {
            out.push(Diagnostic::error(ra.to_string(), e));
        }
    }
}

/// `transform`: positive caps, a jq time bound in range, and for each side: `jq` or `steps`,
/// a template exactly with `output: template`, the request-only and response-only fields and
/// steps on their side, valid JSON Pointers, header names and media types, and every jq
/// expression compiled (a syntax error or an unknown filter is reported at its field).
fn check_transform(t: &TransformConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    for (field, size) in [("max_body", t.max_body), ("max_output", t.max_output)] {
        if size.0 == 0 {
            out.push(Diagnostic::error(
                at.key(field).to_string(),
                "must be greater than zero",
            ));
        }
    }
    check_duration(
        "plugins.transform.jq_timeout",
        t.jq_timeout.get(),
        &at.key("jq_timeout"),
        out,
    );
    if t.request.is_none() && t.response.is_none() {
        out.push(Diagnostic::error(
            at.to_string(),
            "set `request`, `response` or both",
        ));
    }
    if let Some(side) = &t.request {
        check_transform_side(side, true, &at.key("request"), out);
    }
    if let Some(side) = &t.response {
        check_transform_side(side, false, &at.key("response"), out);
    }
}

fn check_transform_side(
    s: &TransformSide,
    request: bool,
    at: &FieldPath,
    out: &mut Vec<Diagnostic>,
) {
    let vars: &[&'static str] = if request {
        &["$request"]
    } else {
        &["$request", "$response"]
    };
    let err = |out: &mut Vec<Diagnostic>, path: FieldPath, msg: String| {
        out.push(Diagnostic::error(path.to_string(), msg));
    };
    if let Some(jq) = &s.jq {
        if !s.steps.is_empty() {
            err(
                out,
                at.key("jq"),
                "use `jq` or `steps`, not both (a step may be `jq`)".into(),
            );
        }
        if let Err(msg) = check_jq(jq, vars) {
            err(out, at.key("jq"), msg);
        }
    }
    match (s.output, &s.template) {
        (OutputFormat::Template, None) => err(
            out,
            at.key("template"),
            "`output: template` needs a `template`".into(),
        ),
        (OutputFormat::Template, Some(t)) => check_template_text(t, vars, &at.key("template"), out),
        (_, Some(_)) => err(
            out,
            at.key("template"),
            "a template is used only with `output: template`".into(),
        ),
        (_, None) => {}
    }
    if let Some(ct) = &s.content_type {
        let essence = ct.split(';').next().unwrap_or("").trim();
        let ok = essence.split_once('/').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && a.bytes().all(is_tchar) && b.bytes().all(is_tchar)
        }) && !ct.bytes().any(|b| b < 0x20 || b == 0x7f);
        if !ok {
            err(
                out,
                at.key("content_type"),
                format!("{ct:?} is not a media type such as `application/json`"),
            );
        }
    }
    if s.strip_namespaces && s.input != InputFormat::Xml {
        out.push(Diagnostic::warning(
            at.key("strip_namespaces").to_string(),
            "only XML input has namespaces (`input: xml`)",
        ));
    }
    if let Some(m) = &s.method {
        if !request {
            err(
                out,
                at.key("method"),
                "a response has no method: set it on `request`".into(),
            );
        } else if m.is_empty() || !m.bytes().all(is_tchar) {
            err(out, at.key("method"), format!("invalid method {m:?}"));
        }
    }
    if request && !s.statuses.is_empty() {
        err(
            out,
            at.key("statuses"),
            "a request has no status: set it on `response`".into(),
        );
    }
    for (i, code) in s.statuses.iter().enumerate() {
        if !(100..=599).contains(code) {
            err(
                out,
                at.key("statuses").index(i),
                "must be between 100 and 599".into(),
            );
        }
    }
    for (i, step) in s.steps.iter().enumerate() {
        check_transform_step(step, request, vars, &at.key("steps").index(i), out);
    }
}

/// A JSON Pointer of a step; `wildcards`: `*` tokens are allowed.
fn check_pointer(p: &str, wildcards: bool, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    match crate::pointer_tokens(p) {
        Err(msg) => out.push(Diagnostic::error(at.to_string(), msg)),
        Ok(tokens) if !wildcards && tokens.iter().any(|t| t == "*") => out.push(Diagnostic::error(
            at.to_string(),
            format!("{p:?}: `*` cannot be used here"),
        )),
        Ok(_) => {}
    }
}

/// An expression: a JSON Pointer (without wildcards) or a jq expression.
fn check_expr(e: &str, vars: &[&'static str], at: &FieldPath, out: &mut Vec<Diagnostic>) {
    if crate::is_pointer(e) {
        check_pointer(e, false, at, out);
    } else if let Err(msg) = check_jq(e, vars) {
        out.push(Diagnostic::error(at.to_string(), msg));
    }
}

fn check_template_text(t: &str, vars: &[&'static str], at: &FieldPath, out: &mut Vec<Diagnostic>) {
    match crate::template_parts(t) {
        Err(msg) => out.push(Diagnostic::error(at.to_string(), msg)),
        Ok(parts) => {
            for p in parts {
                if let crate::TemplatePart::Expr(e) = p {
                    check_expr(e, vars, at, out);
                }
            }
        }
    }
}

fn check_transform_step(
    step: &TransformStep,
    request: bool,
    vars: &[&'static str],
    at: &FieldPath,
    out: &mut Vec<Diagnostic>,
) {
    let request_only = |name: &str, out: &mut Vec<Diagnostic>| {
        if !request {
            out.push(Diagnostic::error(
                at.key(name).to_string(),
                format!("`{name}` is a request step"),
            ));
        }
    };
    match step {
        TransformStep::Set(m) => {
            for k in m.keys() {
                check_pointer(k, true, &at.key("set").key(k), out);
                if k.is_empty() {
                    out.push(Diagnostic::error(
                        at.key("set").key(k).to_string(),
                        "set a field, not the whole body (use `jq` for that)",
                    ));
                }
            }
        }
        TransformStep::Remove(l) | TransformStep::Deny(l) | TransformStep::Allow(l) => {
            let name = match step {
                TransformStep::Remove(_) => "remove",
                TransformStep::Deny(_) => "deny",
                _ => "allow",
            };
            for (i, p) in l.iter().enumerate() {
                let pa = at.key(name).index(i);
                check_pointer(p, true, &pa, out);
                if p.is_empty() {
                    out.push(Diagnostic::error(
                        pa.to_string(),
                        "name a field, not the whole body",
                    ));
                }
            }
        }
        TransformStep::Rename(m) | TransformStep::Copy(m) => {
            let name = if matches!(step, TransformStep::Rename(_)) {
                "rename"
            } else {
                "copy"
            };
            for (from, to) in m {
                let pa = at.key(name).key(from);
                check_pointer(from, true, &pa, out);
                check_pointer(to, true, &pa, out);
                let stars = |p: &str| p.split('/').filter(|t| *t == "*").count();
                if stars(from) != stars(to) {
                    out.push(Diagnostic::error(
                        pa.to_string(),
                        "both paths need the same number of `*`",
                    ));
                }
                if from.is_empty() || to.is_empty() {
                    out.push(Diagnostic::error(
                        pa.to_string(),
                        "name a field, not the whole body",
                    ));
                }
            }
        }
        TransformStep::Wrap(p) | TransformStep::Unwrap(p) => {
            let name = if matches!(step, TransformStep::Wrap(_)) {
                "wrap"
            } else {
                "unwrap"
            };
            check_pointer(p, false, &at.key(name), out);
            if p.is_empty() {
                out.push(Diagnostic::error(
                    at.key(name).to_string(),
                    "name a field such as `/data`",
                ));
            }
        }
        TransformStep::ToHeader(m) => {
            for (expr, header) in m {
                let pa = at.key("to_header").key(expr);
                check_expr(expr, vars, &pa, out);
                check_header(header, "", &pa, out);
            }
        }
        TransformStep::ToQuery(m) => {
            request_only("to_query", out);
            for (expr, name) in m {
                let pa = at.key("to_query").key(expr);
                check_expr(expr, vars, &pa, out);
                if name.is_empty() {
                    out.push(Diagnostic::error(
                        pa.to_string(),
                        "name the query parameter",
                    ));
                }
            }
        }
        TransformStep::ToPath(t) => {
            request_only("to_path", out);
            if !t.starts_with('/') {
                out.push(Diagnostic::error(
                    at.key("to_path").to_string(),
                    "a path must start with `/`",
                ));
            }
            check_template_text(t, vars, &at.key("to_path"), out);
        }
        TransformStep::FromHeader(m) => {
            for (header, to) in m {
                let pa = at.key("from_header").key(header);
                check_header(header, "", &pa, out);
                check_pointer(to, false, &pa, out);
            }
        }
        TransformStep::FromQuery(m) | TransformStep::FromParam(m) => {
            let name = if matches!(step, TransformStep::FromQuery(_)) {
                "from_query"
            } else {
                "from_param"
            };
            request_only(name, out);
            for (from, to) in m {
                check_pointer(to, false, &at.key(name).key(from), out);
            }
        }
        TransformStep::Jq(code) => {
            if let Err(msg) = check_jq(code, vars) {
                out.push(Diagnostic::error(at.key("jq").to_string(), msg));
            }
        }
        TransformStep::Fail(f) => {
            let fa = at.key("fail");
            check_expr(&f.when, vars, &fa.key("when"), out);
            match &f.status {
                Some(StatusSource::Code(c)) if !(400..=599).contains(c) => out.push(
                    Diagnostic::error(fa.key("status").to_string(), "must be between 400 and 599"),
                ),
                Some(StatusSource::Expr(e)) => check_expr(e, vars, &fa.key("status"), out),
                _ => {}
            }
            if let Some(d) = &f.detail {
                check_expr(d, vars, &fa.key("detail"), out);
            }
        }
    }
}

/// Compiles a jq expression as the `transform` plugin does (its loop check is a no-op here).
fn check_jq(code: &str, vars: &[&'static str]) -> Result<(), String> {
    type D = jaq_core::data::JustLut<jaq_json::Val>;
    let tick: jaq_core::native::Fun<D> =
        jaq_core::native::run((crate::JQ_TICK, jaq_core::native::v(0), |cv| {
            jaq_core::box_iter::box_once(Ok(cv.1))
        }));
    crate::compile_jq::<D>(code, vars, std::iter::once(tick)).map(|_| ())
}

/// The parts a cache key may name (`header:NAME` and `cookie:NAME` besides).
pub const CACHE_KEY_PARTS: &[&str] = &["method", "host", "path", "query", "consumer"];

/// `cache`: a known key shape, `GET`/`HEAD` only, real statuses, tiers listed once, a valid tag
/// header. The stores it names are checked with the top-level sections ([`check_cache_stores`]).
fn check_cache(c: &crate::model::plugin::CacheConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    if c.tiers.is_empty() {
        out.push(Diagnostic::error(
            at.key("tiers").to_string(),
            "list at least one tier: memory or redis",
        ));
    }
    for (i, t) in c.tiers.iter().enumerate() {
        if c.tiers[..i].contains(t) {
            out.push(Diagnostic::error(
                at.key("tiers").index(i).to_string(),
                "a tier is listed twice",
            ));
        }
    }
    if c.key.is_empty() {
        out.push(Diagnostic::error(
            at.key("key").to_string(),
            "list what identifies a response, for example [method, host, path, query]",
        ));
    }
    for (i, part) in c.key.iter().enumerate() {
        let named = |prefix: &str| {
            part.strip_prefix(prefix)
                .map(|n| !n.is_empty() && n.bytes().all(is_tchar))
        };
        let ok = CACHE_KEY_PARTS.contains(&part.as_str())
            || named("header:") == Some(true)
            || named("cookie:") == Some(true);
        if !ok {
            out.push(Diagnostic::error(
                at.key("key").index(i).to_string(),
                format!(
                    "unknown key part {part:?}: use method, host, path, query, consumer, \
                     header:NAME or cookie:NAME"
                ),
            ));
        } else if c.key[..i].contains(part) {
            out.push(Diagnostic::error(
                at.key("key").index(i).to_string(),
                format!("{part:?} is listed twice"),
            ));
        }
    }
    if c.methods.is_empty() {
        out.push(Diagnostic::error(
            at.key("methods").to_string(),
            "list GET (and HEAD)",
        ));
    }
    for (i, m) in c.methods.iter().enumerate() {
        if m != "GET" && m != "HEAD" {
            out.push(Diagnostic::error(
                at.key("methods").index(i).to_string(),
                format!("{m:?} cannot be cached: only GET and HEAD (uppercase)"),
            ));
        }
    }
    for (i, s) in c.statuses.iter().enumerate() {
        if !(200..=599).contains(s) || *s == 206 || *s == 304 {
            out.push(Diagnostic::error(
                at.key("statuses").index(i).to_string(),
                format!(
                    "{s} cannot be stored: use final statuses 200-599 but 206 and 304 (a range \
                     is answered from a stored whole; a 304 refreshes a stored response)"
                ),
            ));
        }
    }
    if c.default_ttl.0 > c.max_ttl.0 {
        out.push(Diagnostic::error(
            at.key("default_ttl").to_string(),
            "is longer than max_ttl",
        ));
    }
    for (field, d) in [
        ("default_ttl", c.default_ttl.0),
        ("max_ttl", c.max_ttl.0),
        ("stale_while_revalidate", c.stale_while_revalidate.0),
        ("stale_if_error", c.stale_if_error.0),
        ("lock.timeout", c.lock.timeout.0),
    ] {
        let path = field.split('.').fold(at.clone(), |p, k| p.key(k));
        check_duration(&format!("plugins.cache.{field}"), d, &path, out);
    }
    if c.max_object_size.0 == 0 {
        out.push(Diagnostic::error(
            at.key("max_object_size").to_string(),
            "must be greater than zero",
        ));
    }
    if let Some(h) = &c.tag_header {
        if h.is_empty() || !h.bytes().all(is_tchar) {
            out.push(Diagnostic::error(
                at.key("tag_header").to_string(),
                format!("{h:?} is not a header name"),
            ));
        }
    }
}

/// A `cache` plugin's tiers need their stores: `redis` needs `cache.redis` and `redis:`.
fn check_cache_stores(cfg: &Config, p: &PluginsConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    let Some(c) = &p.cache else { return };
    if !c.tiers.contains(&crate::model::plugin::CacheTier::Redis) {
        return;
    }
    let missing = match (
        &cfg.redis,
        cfg.cache.as_ref().and_then(|s| s.redis.as_ref()),
    ) {
        (None, _) => "the redis tier needs a top-level `redis:` section",
        (_, None) => "the redis tier needs `cache.redis` at the top level",
        _ => return,
    };
    out.push(Diagnostic::error(
        at.key("cache").key("tiers").to_string(),
        missing,
    ));
}

/// `compression`: codings listed once, valid media-type patterns, levels in range, a positive
/// upload cap. The plugin's build repeats the pattern and level checks; these give field paths.
fn check_compression(c: &CompressionConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    if c.encodings.is_empty() {
        out.push(Diagnostic::error(
            at.key("encodings").to_string(),
            "list at least one encoding: br, zstd or gzip",
        ));
    }
    for (i, e) in c.encodings.iter().enumerate() {
        if c.encodings[..i].contains(e) {
            out.push(Diagnostic::error(
                at.key("encodings").index(i).to_string(),
                format!("`{}` is listed twice", e.token()),
            ));
        }
    }
    if c.content_types.is_empty() {
        out.push(Diagnostic::error(
            at.key("content_types").to_string(),
            "list at least one media type, or `*/*` for all",
        ));
    }
    for (i, t) in c.content_types.iter().enumerate() {
        if let Err(msg) = check_media_pattern(t) {
            out.push(Diagnostic::error(
                at.key("content_types").index(i).to_string(),
                msg,
            ));
        }
    }
    for (coding, least, most) in COMPRESSION_LEVELS {
        let level = match coding {
            crate::ContentCoding::Gzip => i64::from(c.level.gzip),
            crate::ContentCoding::Br => i64::from(c.level.br),
            crate::ContentCoding::Zstd => i64::from(c.level.zstd),
        };
        if !(i64::from(least)..=i64::from(most)).contains(&level) {
            out.push(Diagnostic::error(
                at.key("level").key(coding.token()).to_string(),
                format!("must be between {least} and {most}"),
            ));
        }
    }
    if let Some(r) = &c.request {
        if r.max_size.0 == 0 {
            out.push(Diagnostic::error(
                at.key("request").key("max_size").to_string(),
                "must be greater than 0",
            ));
        }
    }
}

/// A media-type pattern: `type/subtype`, `type/*`, `type/*+suffix` or `*/*`, without parameters.
fn check_media_pattern(p: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "{p:?} is not a media type pattern ({why}): write `type/subtype`, `type/*`, `type/*+suffix` or `*/*`"
        ))
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(is_tchar) && !s.contains('*');
    let Some((ty, sub)) = p.split_once('/') else {
        return bad("no `/`");
    };
    if p.contains(';') {
        return bad("parameters are not matched");
    }
    if ty == "*" {
        return if sub == "*" {
            Ok(())
        } else {
            bad("`*/` needs `*` after it")
        };
    }
    if !token(ty) {
        return bad("invalid type");
    }
    let sub_ok = sub == "*" || token(sub) || sub.strip_prefix("*+").is_some_and(token);
    if !sub_ok {
        return bad("invalid subtype");
    }
    Ok(())
}

/// Bytes below which an HMAC secret draws a warning (the HS256 hash size, RFC 7518 §3.2).
const MIN_HMAC_SECRET: usize = 32;

/// The JWS algorithms the `jwt` plugin knows (RFC 7518 names; `none` is never accepted).
const JWT_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// `jwt`: issuers with exactly one key source whose kind fits the algorithms, known algorithm
/// names, unique issuers, header names for `forward_claims`. The plugin's build repeats the
/// checks it depends on; these give field paths.
fn check_jwt(j: &crate::model::plugin::JwtConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    if j.issuers.is_empty() {
        out.push(Diagnostic::error(
            at.key("issuers").to_string(),
            "list at least one issuer",
        ));
    }
    check_duration("plugins.jwt.leeway", j.leeway.get(), &at.key("leeway"), out);
    let mut seen = HashSet::new();
    for (i, iss) in j.issuers.iter().enumerate() {
        let ia = at.key("issuers").index(i);
        if !seen.insert(iss.issuer.as_str()) {
            out.push(Diagnostic::error(
                ia.key("issuer").to_string(),
                format!("duplicate issuer {:?}", iss.issuer),
            ));
        }
        match (&iss.jwks_url, &iss.secret) {
            (None, None) => out.push(Diagnostic::error(
                ia.to_string(),
                "give the issuer's keys: `jwks_url` (RS/PS/ES/EdDSA) or `secret` (HS)",
            )),
            (Some(_), Some(_)) => out.push(Diagnostic::error(
                ia.to_string(),
                "give either `jwks_url` or `secret`, not both",
            )),
            (Some(url), None) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    out.push(Diagnostic::error(
                        ia.key("jwks_url").to_string(),
                        "must be an http:// or https:// URL",
                    ));
                } else if url.starts_with("http://") && !is_loopback_url(url) {
                    out.push(Diagnostic::warning(
                        ia.key("jwks_url").to_string(),
                        "keys fetched over plain http can be replaced by anyone on the path; use https",
                    ));
                }
            }
            (None, Some(secret)) => {
                if secret.is_empty() {
                    out.push(Diagnostic::error(
                        ia.key("secret").to_string(),
                        "must not be empty",
                    ));
                } else if secret.len() < MIN_HMAC_SECRET {
                    // RFC 7518 §3.2: a key at least as long as the hash output (32 bytes for
                    // HS256); a short one can be guessed offline from any token.
                    out.push(Diagnostic::warning(
                        ia.key("secret").to_string(),
                        format!(
                            "{} bytes; an HMAC secret should be at least {MIN_HMAC_SECRET} bytes of random data (for example `openssl rand -base64 32`)",
                            secret.len()
                        ),
                    ));
                }
            }
        }
        if iss.algorithms.is_empty() {
            out.push(Diagnostic::error(
                ia.key("algorithms").to_string(),
                "list at least one algorithm",
            ));
        }
        for (k, alg) in iss.algorithms.iter().enumerate() {
            let aa = ia.key("algorithms").index(k);
            if !JWT_ALGORITHMS.contains(&alg.as_str()) {
                out.push(Diagnostic::error(
                    aa.to_string(),
                    format!(
                        "unknown algorithm {alg:?} (one of {})",
                        JWT_ALGORITHMS.join(", ")
                    ),
                ));
                continue;
            }
            let hmac = alg.starts_with("HS");
            if hmac && iss.secret.is_none() {
                out.push(Diagnostic::error(
                    aa.to_string(),
                    format!("{alg} needs the issuer's `secret`"),
                ));
            } else if !hmac && iss.jwks_url.is_none() {
                out.push(Diagnostic::error(
                    aa.to_string(),
                    format!("{alg} needs the issuer's `jwks_url` (a secret only verifies HS*)"),
                ));
            }
        }
    }
    if j.consumer_claim.is_empty() {
        out.push(Diagnostic::error(
            at.key("consumer_claim").to_string(),
            "must not be empty",
        ));
    }
    for name in j.forward_claims.keys() {
        check_header(name, "", &at.key("forward_claims").key(name), out);
    }
}

/// True for `http://127.0.0.1…`, `http://[::1]…` and `http://localhost…`.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim_start_matches("http://");
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn check_cors(c: &CorsConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    if c.allow_origins.is_empty() {
        out.push(Diagnostic::error(
            at.key("allow_origins").to_string(),
            "list at least one origin, or `*`",
        ));
    }
    for (i, o) in c.allow_origins.iter().enumerate() {
        if o != "*" && !is_origin(o) {
            out.push(Diagnostic::error(
                at.key("allow_origins").index(i).to_string(),
                format!("{o:?} is not an origin: write `scheme://host` or `scheme://host:port`, without a path or wildcard, or `*` alone"),
            ));
        }
    }
    for (field, list) in [
        ("allow_methods", &c.allow_methods),
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        for (i, t) in list.iter().enumerate() {
            if t != "*" && (t.is_empty() || !t.bytes().all(is_tchar)) {
                let what = if field == "allow_methods" {
                    "method"
                } else {
                    "header name"
                };
                out.push(Diagnostic::error(
                    at.key(field).index(i).to_string(),
                    format!("invalid {what} {t:?}"),
                ));
            }
        }
    }
    if c.allow_credentials && c.expose_headers.iter().any(|h| h == "*") {
        out.push(Diagnostic::warning(
            at.key("expose_headers").to_string(),
            "with `allow_credentials`, browsers read `*` as a header name, not as every header",
        ));
    }
}

/// A serialized origin (RFC 6454 §6.1): `scheme://host[:port]`, nothing after.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal (`[::1]`) holds colons: only a colon after `]` starts a port.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (rest, None),
    };
    scheme_ok
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn check_header(name: &str, value: &str, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        out.push(Diagnostic::error(
            at.to_string(),
            format!("invalid header name {name:?}"),
        ));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        out.push(Diagnostic::error(
            at.to_string(),
            "header values may not contain control characters",
        ));
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn check_host(h: &str) -> Result<(), String> {
    let bare = h.strip_prefix("*.").unwrap_or(h);
    if bare.is_empty() || bare.contains('*') {
        return Err(format!(
            "invalid host {h:?}: a wildcard is only allowed as a leading `*.`"
        ));
    }
    if !bare
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(format!(
            "invalid host {h:?}: write the name without scheme, port or path"
        ));
    }
    Ok(())
}

/// Consumers: unique names, and credentials that identify exactly one consumer.
fn check_consumers(cfg: &Config, pos: &Positions, out: &mut Vec<Diagnostic>) {
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    let mut users = HashSet::new();
    let mut cns = HashSet::new();
    for (i, c) in cfg.consumers.iter().enumerate() {
        let at = FieldPath::root()
            .key("consumers")
            .index(pos.consumers.get(i).copied().unwrap_or(i));
        let mut err =
            |field: FieldPath, msg: String| out.push(Diagnostic::error(field.to_string(), msg));
        if c.name.is_empty() || !c.name.bytes().all(|b| b.is_ascii_graphic()) {
            err(
                at.key("name"),
                "must be non-empty printable ASCII without spaces".into(),
            );
        } else if !names.insert(c.name.as_str()) {
            err(
                at.key("name"),
                format!("duplicate consumer name {:?}", c.name),
            );
        }
        for (g, group) in c.groups.iter().enumerate() {
            if group.is_empty()
                || group.contains(',')
                || !group.bytes().all(|b| b.is_ascii_graphic())
            {
                err(
                    at.key("groups").index(g),
                    "a group is printable ASCII without spaces or commas".into(),
                );
            }
        }
        for (k, key) in c.api_keys.iter().enumerate() {
            let ka = at.key("api_keys").index(k);
            let id = match key {
                ApiKeyConfig::Plain(p) if p.len() < 8 => {
                    err(ka, "an API key needs at least 8 characters".into());
                    continue;
                }
                ApiKeyConfig::Plain(p) => format!("plain:{p}"),
                ApiKeyConfig::Hashed { sha256 } => {
                    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                        err(ka.key("sha256"), "expected 64 hex digits".into());
                        continue;
                    }
                    format!("sha256:{}", sha256.to_ascii_lowercase())
                }
            };
            if !keys.insert(id) {
                err(
                    ka,
                    "this API key is also given to another consumer (or twice)".into(),
                );
            }
        }
        if let Some(b) = &c.basic_auth {
            if b.username.is_empty() || b.username.contains(':') {
                err(
                    at.key("basic_auth").key("username"),
                    "non-empty, without `:`".into(),
                );
            } else if !users.insert(b.username.as_str()) {
                err(
                    at.key("basic_auth").key("username"),
                    format!("username {:?} is used by another consumer", b.username),
                );
            }
            let h = &b.password_hash;
            if !(h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$"))
                || h.len() != 60
            {
                err(
                    at.key("basic_auth").key("password_hash"),
                    "expected a bcrypt hash ($2b$..., 60 characters)".into(),
                );
            }
        }
        if let Some(cc) = &c.client_cert {
            if cc.subject_cn.is_empty() {
                err(
                    at.key("client_cert").key("subject_cn"),
                    "must not be empty".into(),
                );
            } else if !cns.insert(cc.subject_cn.as_str()) {
                err(
                    at.key("client_cert").key("subject_cn"),
                    format!("subject_cn {:?} is used by another consumer", cc.subject_cn),
                );
            }
        }
    }
}

/// Checks the balancing, health, timeout, retry, breaker, protocol and TLS settings of an upstream.
fn check_upstream(up: &UpstreamConfig, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    for (field, legacy, new) in [
        ("connect", &up.connect_timeout, &up.timeouts.connect),
        ("response", &up.timeout, &up.timeouts.response),
        ("idle", &up.pool_idle_timeout, &up.timeouts.idle),
    ] {
        if legacy.is_some() && new.is_some() {
            out.push(Diagnostic::error(
                at.key("timeouts").key(field).to_string(),
                "set either this or the older top-level field, not both",
            ));
        }
        if let Some(d) = legacy.or(*new) {
            check_duration(
                &format!("upstreams.*.timeouts.{field}"),
                d.get(),
                &at.key("timeouts").key(field),
                out,
            );
        }
    }
    let mut warnings = Vec::new();
    let mut durations: Vec<(String, Dur, FieldPath)> = Vec::new();
    let mut err =
        |field: FieldPath, msg: String| out.push(Diagnostic::error(field.to_string(), msg));
    match (up.load_balancing, &up.hash_key) {
        (LoadBalancing::ConsistentHash, None) => err(
            at.key("hash_key"),
            "consistent_hash needs a hash_key (header:NAME, cookie:NAME, client_ip or path)".into(),
        ),
        (LoadBalancing::ConsistentHash, Some(k)) => {
            let ok = match k.split_once(':') {
                Some(("header", n)) => !n.is_empty() && n.bytes().all(is_tchar),
                Some(("cookie", n)) => !n.is_empty() && n.bytes().all(is_tchar),
                None => k == "client_ip" || k == "path",
                _ => false,
            };
            if !ok {
                err(
                    at.key("hash_key"),
                    format!("{k:?}: expected header:NAME, cookie:NAME, client_ip or path"),
                );
            }
        }
        (_, Some(_)) => warnings.push(Diagnostic::warning(
            at.key("hash_key").to_string(),
            "has no effect: only used with load_balancing: consistent_hash",
        )),
        (_, None) => {}
    }
    if let Some(a) = &up.health_check.active {
        let aa = at.key("health_check").key("active");
        if !a.path.starts_with('/') {
            err(aa.key("path"), "must start with `/`".into());
        }
        for (f, d) in [("interval", a.interval), ("timeout", a.timeout)] {
            durations.push((format!("upstreams.*.health_check.active.{f}"), d, aa.key(f)));
        }
        for (f, v) in [
            ("healthy_threshold", a.healthy_threshold),
            ("unhealthy_threshold", a.unhealthy_threshold),
        ] {
            if v == 0 {
                err(aa.key(f), "must be at least 1".into());
            }
        }
    }
    let pa = at.key("health_check").key("passive");
    let passive = &up.health_check.passive;
    for s in &passive.statuses {
        if !(500..=599).contains(s) {
            err(
                pa.key("statuses"),
                format!("{s}: expected a status from 500 to 599"),
            );
        }
    }
    if !(0.0..=1.0).contains(&passive.max_ejected_ratio) {
        err(pa.key("max_ejected_ratio"), "must be from 0 to 1".into());
    }
    if up.retries.attempts > 10 {
        err(at.key("retries").key("attempts"), "at most 10".into());
    }
    durations.push((
        "upstreams.*.health_check.passive.eject_for".into(),
        up.health_check.passive.eject_for,
        at.key("health_check").key("passive").key("eject_for"),
    ));
    durations.push((
        "upstreams.*.retries.backoff".into(),
        up.retries.backoff,
        at.key("retries").key("backoff"),
    ));
    if let Some(cb) = &up.circuit_breaker {
        let ca = at.key("circuit_breaker");
        if !(cb.failure_ratio > 0.0 && cb.failure_ratio <= 1.0) {
            err(
                ca.key("failure_ratio"),
                "must be above 0 and at most 1".into(),
            );
        }
        if cb.min_requests == 0 {
            err(ca.key("min_requests"), "must be at least 1".into());
        }
        for (f, d) in [("window", cb.window), ("open_for", cb.open_for)] {
            durations.push((format!("upstreams.*.circuit_breaker.{f}"), d, ca.key(f)));
        }
        if cb.max_concurrent == Some(0) {
            err(ca.key("max_concurrent"), "must be at least 1".into());
        }
    }
    let any_https = up.targets.iter().any(|t| t.url.starts_with("https://"));
    let any_http = up.targets.iter().any(|t| t.url.starts_with("http://"));
    if any_https && any_http {
        err(
            at.key("targets"),
            "all targets of an upstream use the same scheme (http:// or https://)".into(),
        );
    }
    match up.protocol {
        UpstreamProtocol::H2 if any_http => err(
            at.key("protocol"),
            "h2 runs over TLS and needs https:// targets; use h2c for cleartext HTTP/2".into(),
        ),
        UpstreamProtocol::H2c if any_https => err(
            at.key("protocol"),
            "h2c is cleartext and needs http:// targets; use h2 over TLS".into(),
        ),
        _ => {}
    }
    if let Some(tls) = &up.tls {
        let ta = at.key("tls");
        if !any_https && !up.targets.is_empty() {
            warnings.push(Diagnostic::warning(
                ta.to_string(),
                "has no effect: only used with https:// targets",
            ));
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            err(ta, "client_cert and client_key go together".into());
        }
    }
    for (field, d, path) in durations {
        check_duration(&field, d.get(), &path, out);
    }
    out.append(&mut warnings);
}

/// Every file the config names: certificates, keys and CAs must be readable, the access log's
/// directory must exist. `files` does the looking.
pub(crate) fn check_files(
    cfg: &Config,
    pos: &Positions,
    files: FileCheck<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let mut check = |path: &str, how: FileUse, at: FieldPath| {
        if path.is_empty() {
            out.push(Diagnostic::error(at.to_string(), "must not be empty"));
        } else if let Err(msg) = files(path, how) {
            out.push(Diagnostic::error(at.to_string(), msg));
        }
    };
    for (i, l) in cfg.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let at = FieldPath::root()
            .key("listeners")
            .index(pos.listeners.get(i).copied().unwrap_or(i))
            .key("tls");
        for (j, c) in tls.certificates.iter().enumerate() {
            let ca = at.key("certificates").index(j);
            check(&c.cert, FileUse::Read, ca.key("cert"));
            check(&c.key, FileUse::Read, ca.key("key"));
        }
        if let Some(auth) = &tls.client_auth {
            check(&auth.ca, FileUse::Read, at.key("client_auth").key("ca"));
        }
    }
    for (name, up) in &cfg.upstreams {
        let Some(tls) = &up.tls else { continue };
        // Without https:// targets the settings are not used (a warning says so), nor read.
        if !up.targets.iter().any(|t| t.url.starts_with("https://")) {
            continue;
        }
        let at = FieldPath::root().key("upstreams").key(name).key("tls");
        for (field, path) in [
            ("ca", &tls.ca),
            ("client_cert", &tls.client_cert),
            ("client_key", &tls.client_key),
        ] {
            if let Some(p) = path {
                check(p, FileUse::Read, at.key(field));
            }
        }
    }
    if let Some(log) = &cfg.observability.access_log {
        let out_path = log.output.trim();
        if !out_path.is_empty() && !matches!(out_path, "stdout" | "stderr") {
            let at = FieldPath::root()
                .key("observability")
                .key("access_log")
                .key("output");
            check(&log.output, FileUse::Append, at);
        }
    }
}

/// `redis://[user:password@]host[:port][/db]`, `rediss://...` (TLS), or `unix:///path` (also
/// `redis+unix://`): what the Redis client accepts, checked before `run` would refuse it.
fn check_redis_url(url: &str) -> Result<(), String> {
    let expected = "expected redis://host:port[/db], rediss://host:port[/db] or unix:///path";
    if let Some(rest) = url
        .strip_prefix("unix://")
        .or_else(|| url.strip_prefix("redis+unix://"))
    {
        return if rest.starts_with('/') {
            Ok(())
        } else {
            Err(format!("{expected}, found {url:?}"))
        };
    }
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err(format!("{expected}, found {url:?}"));
    };
    // Credentials may hold any character; only what follows the last `@` is the host.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    check_url_rest(rest).map_err(|msg| format!("{msg} ({expected})"))
}

/// What follows `scheme://` in a URL: a non-empty `host[:port]`, then an optional path, all of
/// characters a URI may hold.
fn check_url_rest(rest: &str) -> Result<(), String> {
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((ip, tail)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {
                (ip, tail.strip_prefix(':'))
            }
            _ => return Err("invalid IPv6 address".into()),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
    {
        return Err(format!("invalid host {host:?}"));
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("invalid port".into());
    }
    let uri_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b);
    if !path.bytes().all(uri_char) {
        return Err("the path holds characters a URL may not".into());
    }
    Ok(())
}

/// Checks `http://host:port` or `https://host:port` (optionally with a trailing `/`).
fn check_target_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(format!(
            "{url:?}: expected http://host:port or https://host:port"
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{url:?}: a target is scheme, host and port only, without path or credentials"
        ));
    }
    // `[v6]` or `[v6]:port`, else `host` or `host:port`.
    let port = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, tail)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {
                match tail.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if tail.is_empty() => None,
                    None => Some(""),
                }
            }
            _ => Some(""),
        },
        None => match authority.rsplit_once(':') {
            Some((host, p)) if !host.is_empty() => Some(p),
            Some(_) => Some(""),
            None => None,
        },
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!("{url:?}: invalid port"));
    }
    Ok(())
}

fn check_template(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err("a template must start with `/`".into());
    }
    let segments: Vec<&str> = s.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let is_param = seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2;
        if (seg.contains('{') || seg.contains('}')) && !is_param {
            return Err(format!(
                "invalid template segment {seg:?}: a placeholder is a whole segment like {{id}}"
            ));
        }
        if is_param && seg.starts_with("{*") && i + 1 != segments.len() {
            return Err("a catch-all {*name} must be the last segment".into());
        }
    }
    Ok(())
}

/// ` (did you mean "x"?)` for the closest known name, if close enough.
fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    known
        .map(|k| (distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The admin listener and the observability section.
fn check_observe(cfg: &Config, out: &mut Vec<Diagnostic>) {
    if let Some(admin) = &cfg.admin {
        match admin.address.parse::<std::net::SocketAddr>() {
            Err(_) => out.push(Diagnostic::error(
                "admin.address",
                format!("{:?} is not an IP:PORT address", admin.address),
            )),
            Ok(addr) => {
                let open = admin.token.as_deref().is_none_or(str::is_empty);
                if open && !addr.ip().is_loopback() {
                    out.push(Diagnostic::error(
                        "admin.token",
                        "an admin listener on a non-loopback address needs a token",
                    ));
                } else if open {
                    out.push(Diagnostic::warning(
                        "admin.token",
                        "no token: any local process can change the config through the admin API",
                    ));
                }
                let clash = cfg.listeners.iter().position(|l| {
                    l.address.parse::<std::net::SocketAddr>().ok() == Some(addr) && addr.port() != 0
                });
                if let Some(i) = clash {
                    out.push(Diagnostic::error(
                        "admin.address",
                        format!("listeners[{i}] already uses {addr}"),
                    ));
                }
            }
        }
    }
    let o = &cfg.observability;
    if let Some(log) = &o.access_log {
        if log.output.trim().is_empty() {
            out.push(Diagnostic::error(
                "observability.access_log.output",
                "must be stdout, stderr or a file path",
            ));
        }
    }
    if let Some(t) = &o.tracing {
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            out.push(Diagnostic::error(
                "observability.tracing.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if let Some(ep) = &t.otlp_endpoint {
            if ep.starts_with("https://") {
                // The exporter is built without TLS support (see docs/observability.md).
                out.push(Diagnostic::error(
                    "observability.tracing.otlp_endpoint",
                    "TLS to the collector is not supported yet; use an http:// endpoint (a local collector or agent)",
                ));
            } else if !ep.starts_with("http://") {
                out.push(Diagnostic::error(
                    "observability.tracing.otlp_endpoint",
                    "must be an http:// URL",
                ));
            } else if let Err(msg) = check_url_rest(&ep["http://".len()..]) {
                out.push(Diagnostic::error(
                    "observability.tracing.otlp_endpoint",
                    format!("{ep:?}: {msg}"),
                ));
            }
        }
        if t.service_name.is_empty() {
            out.push(Diagnostic::error(
                "observability.tracing.service_name",
                "must not be empty",
            ));
        }
    }
}
