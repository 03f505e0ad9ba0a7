//! `frontdesk-config`: the configuration contract of the Frontdesk gateway.
//!
//! It owns the YAML model ([`Config`]), loading with `${VAR}` substitution ([`load_str`]), validation
//! that reports **every** error with its field path ([`Diagnostic`]), each once and in one pass,
//! and the JSON Schema ([`json_schema`]). It does no I/O: callers pass the text, the environment
//! and (with [`load_str_checked`]) a check of the files the config names.

mod edit;
mod env;
mod messages;
pub mod model;
pub mod net;
mod redact;
mod units;
mod validate;

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use edit::edit_text;
pub use model::plugin::{
    compile_jq, is_pointer, pointer_tokens, recursive_definition, template_parts, FailStep,
    InputFormat, OutputFormat, OverCapPolicy, StatusSource, TemplatePart, TransformConfig,
    TransformSide, TransformStep, JQ_PRELUDE, JQ_TICK,
};
pub use model::plugin::{
    default_content_types, CompressionConfig, CompressionLevels, ContentCoding,
    RequestDecompression, COMPRESSION_LEVELS,
};
pub use model::plugin::{
    AclConfig, BasicAuthConfig, ClientCertConfig, CorsConfig, GrpcWebConfig, HeaderOps,
    HeadersConfig, IpFilterConfig, JwtConfig, JwtIssuerConfig, KeyAuthConfig, RequestSizeConfig,
    RespondConfig,
};
pub use model::plugin::{
    CacheConfig, CacheLockConfig, CacheStoresConfig, CacheTier, MemoryTierConfig, RedisTierConfig,
};
pub use model::plugin::{
    ConcurrencyConfig, LimitConfig, LimitHeaders, LimitOverride, LimitStore, OnStoreError,
    QuotaConfig, QuotaWindow, RateLimitConfig,
};
pub use model::plugin::{DescriptorSource, GrpcTranscodeConfig, HttpRuleConfig, StreamFormat};
pub use model::RedisConfig;
pub use model::{
    AccessLogConfig, AccessLogFormat, AdminConfig, MetricsConfig, ObservabilityConfig,
    TracingConfig,
};
pub use model::{
    ActiveHealthConfig, ApiKeyConfig, BasicAuthCredential, CertificateConfig, CircuitBreakerConfig,
    ClientAuthConfig, ClientAuthMode, ClientCertIdentity, Config, ConsumerConfig,
    HealthCheckConfig, LimitsConfig, ListenerConfig, ListenerTlsConfig, LoadBalancing, MatchConfig,
    PassiveHealthConfig, PathMatch, PluginsConfig, RetriesConfig, RetryOn, RouteConfig,
    ServerConfig, TargetConfig, TimeoutsConfig, TlsVersion, UpstreamConfig, UpstreamProtocol,
    UpstreamTlsConfig,
};
pub use model::{AggregateCallConfig, AggregateConfig, AggregateHeadersConfig, MergeConfig};
pub use model::{ProfileConfig, ProfileSelect};
pub use net::{parse_net, parse_nets};
pub use redact::{redact_url, REDACTED};
pub use units::{ByteSize, Dur};
pub use validate::{DURATIONS, POSITIVE};

/// The largest config file the gateway reads, in bytes (4 MiB): a config file is read no further,
/// so an endless one (`/dev/zero`) cannot exhaust memory. Far above any real config (10,000
/// routes take about 1.5 MiB).
pub const MAX_CONFIG_SIZE: usize = 4 * 1024 * 1024;

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The config is refused.
    Error,
    /// The config is accepted, but probably not what was meant.
    Warning,
}

/// One finding about a config, located by field path (and by line and column for YAML syntax).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Field path such as `routes[2].upstream`; empty for the document itself.
    pub path: String,
    /// What is wrong, and where it helps, what to write instead.
    pub message: String,
    /// 1-based line and column in the file, when known.
    pub position: Option<(u64, u64)>,
}

impl Diagnostic {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
            position: None,
        }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
            position: None,
        }
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{label}: ")?;
        if let Some((line, col)) = self.position {
            write!(f, "line {line}, column {col}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// A dotted field path under construction, e.g. `routes[2].match.paths[0]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// The document root.
    pub fn root() -> Self {
        FieldPath(String::new())
    }

    /// The path of a map key below this one.
    pub fn key(&self, k: &str) -> Self {
        if self.0.is_empty() {
            FieldPath(k.to_string())
        } else {
            FieldPath(format!("{}.{k}", self.0))
        }
    }

    /// The path of a list element below this one.
    pub fn index(&self, i: usize) -> Self {
        FieldPath(format!("{}[{i}]", self.0))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A config that passed validation, with the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The typed config.
    pub config: Config,
    /// Findings that do not refuse the config.
    pub warnings: Vec<Diagnostic>,
}

/// How the gateway uses a file named in the config, for the check passed to [`load_str_checked`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileUse {
    /// Read (certificates, keys, CA bundles).
    Read,
    /// Opened for appending, and created when missing (the access log).
    Append,
}

/// Checks one file named in the config (the path as written, relative paths being relative to the
/// config file's directory); the error says what is wrong and names the file.
pub type FileCheck<'a> = &'a dyn Fn(&str, FileUse) -> Result<(), String>;

/// Parses, substitutes variables, and validates a YAML config.
///
/// Never panics on any input. On failure, returns every error found (and the warnings), errors first.
/// `lookup` resolves environment variables (pass `|k| std::env::var(k).ok()` in the binary).
/// Files named in the config are not looked at; see [`load_str_checked`].
pub fn load_str(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Vec<Diagnostic>> {
    load_str_checked(text, lookup, &|_, _| Ok(()))
}

/// [`load_str`], and `files` checks every file the config names (certificates, keys, CAs, the
/// access log), in the same pass as every other check: what the gateway will need to start is
/// reported together with everything else, each problem once.
pub fn load_str_checked(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    files: FileCheck<'_>,
) -> Result<Loaded, Vec<Diagnostic>> {
    load_str_salvaged(text, lookup, files).map_err(|(diags, _)| diags)
}

/// [`load_str_checked`], and a refused config comes with what is left of it once every part with
/// an error is taken out ([`Salvaged`]), when the document was readable at all: the caller can
/// run the checks only compiling finds on it, and report them with the rest in one pass.
#[allow(clippy::type_complexity)]
pub fn load_str_salvaged(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    files: FileCheck<'_>,
) -> Result<Loaded, (Vec<Diagnostic>, Option<Box<Salvaged>>)> {
    if text.len() > MAX_CONFIG_SIZE {
        return Err((vec![too_large()], None));
    }
    let mut diags = Vec::new();
    let mut doc: Value = match parse_yaml(text) {
        Ok(v) => v,
        Err(d) => return Err((vec![d], None)),
    };
    env::substitute(&mut doc, &FieldPath::root(), lookup, &mut diags);
    // A value whose variable is not set is reported once, by the substitution: what the
    // checks below would say about the unexpanded text at that path would only repeat it.
    let unset: Vec<String> = diags.iter().map(|d| d.path.clone()).collect();
    let env_errors = diags.len();
    // Looked for in the document first: finding the secrets among the placeholders means
    // serializing the whole config twice, which a config without any placeholder never needs.
    let has_placeholder = redact::contains_placeholder(&doc);
    let (config, pos, parsed) = typed(doc, &mut diags);
    validate::validate(&config, &pos, &mut diags);
    validate::check_files(&config, &pos, files, &mut diags);
    // A placeholder is never a credential, whether it came from a file or the admin API.
    if has_placeholder {
        diags.extend(config.placeholder_secrets());
    }
    let mut i = 0;
    diags.retain(|d| {
        i += 1;
        i <= env_errors || !unset.iter().any(|u| within(&d.path, u))
    });
    diags.sort_by_key(|d| !d.is_error());
    if parsed && !diags.iter().any(Diagnostic::is_error) {
        Ok(Loaded {
            config,
            warnings: diags,
        })
    } else {
        let salvaged = Salvaged::new(config, &pos, &diags).map(Box::new);
        Err((diags, salvaged))
    }
}

/// What is left of a refused config once every part with an error is taken out: each listener,
/// upstream, route or consumer with an error, each global plugin with one, and the `server`,
/// `redis`, `admin` and `observability` sections when they have one. Checks run on it find only
/// problems independent of the errors already reported.
#[derive(Clone, Debug)]
pub struct Salvaged {
    /// The remaining config.
    pub config: Config,
    /// For each list, the position in the file of each remaining element.
    listeners: Vec<usize>,
    routes: Vec<usize>,
    consumers: Vec<usize>,
}

impl Salvaged {
    fn new(mut cfg: Config, pos: &validate::Positions, diags: &[Diagnostic]) -> Option<Salvaged> {
        let errors: Vec<&str> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.path.as_str())
            .collect();
        if errors.iter().any(|p| p.is_empty()) {
            // The document itself is at fault: nothing to salvage.
            return None;
        }
        let bad = |at: &str| errors.iter().any(|p| within(p, at));
        fn keep<T>(
            items: Vec<T>,
            orig: &[usize],
            list: &str,
            bad: &dyn Fn(&str) -> bool,
        ) -> (Vec<T>, Vec<usize>) {
            items
                .into_iter()
                .enumerate()
                .map(|(i, t)| (orig.get(i).copied().unwrap_or(i), t))
                .filter(|(o, _)| !bad(&format!("{list}[{o}]")))
                .map(|(o, t)| (t, o))
                .unzip()
        }
        let (listeners, listener_pos) = keep(
            std::mem::take(&mut cfg.listeners),
            &pos.listeners,
            "listeners",
            &bad,
        );
        let (routes, route_pos) =
            keep(std::mem::take(&mut cfg.routes), &pos.routes, "routes", &bad);
        let (consumers, consumer_pos) = keep(
            std::mem::take(&mut cfg.consumers),
            &pos.consumers,
            "consumers",
            &bad,
        );
        cfg.listeners = listeners;
        cfg.routes = routes;
        cfg.consumers = consumers;
        cfg.upstreams
            .retain(|name, _| !bad(&FieldPath::root().key("upstreams").key(name).to_string()));
        if bad("server") {
            cfg.server = ServerConfig::default();
        }
        if bad("redis") {
            cfg.redis = None;
        }
        if bad("admin") {
            cfg.admin = None;
        }
        if bad("observability") {
            cfg.observability = ObservabilityConfig::default();
        }
        if bad("plugins") {
            // Drop the plugin kinds with errors, keep the others.
            let kept = serde_json::to_value(&cfg.plugins)
                .ok()
                .and_then(|v| match v {
                    Value::Object(mut m) => {
                        m.retain(|kind, _| !bad(&format!("plugins.{kind}")));
                        serde_json::from_value(Value::Object(m)).ok()
                    }
                    _ => None,
                });
            cfg.plugins = kept.unwrap_or_default();
        }
        Some(Salvaged {
            config: cfg,
            listeners: listener_pos,
            routes: route_pos,
            consumers: consumer_pos,
        })
    }

    /// The path in the file of `path`, a path in [`Salvaged::config`] (whose lists lack the
    /// elements taken out): `routes[1]...` may be `routes[3]...` in the file.
    pub fn original_path(&self, path: &str) -> String {
        for (list, orig) in [
            ("listeners", &self.listeners),
            ("routes", &self.routes),
            ("consumers", &self.consumers),
        ] {
            let Some(rest) = path.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else {
                continue;
            };
            if let Some((n, tail)) = rest.split_once(']') {
                if let Some(o) = n.parse::<usize>().ok().and_then(|i| orig.get(i)) {
                    return format!("{list}[{o}]{tail}");
                }
            }
        }
        path.to_string()
    }

    /// Adds to `diags` the errors of `found` (from checks run on [`Salvaged::config`]), at their
    /// paths in the file, except those at or around a path `diags` already has an error for:
    /// each problem is reported once.
    pub fn merge(&self, diags: &mut Vec<Diagnostic>, found: Vec<Diagnostic>) {
        for d in found.into_iter().filter(Diagnostic::is_error) {
            let path = self.original_path(&d.path);
            let repeats = diags
                .iter()
                .filter(|e| e.is_error())
                .any(|e| within(&path, &e.path) || within(&e.path, &path));
            if !repeats {
                diags.push(Diagnostic { path, ..d });
            }
        }
        diags.sort_by_key(|d| !d.is_error());
    }
}

/// The error for a config over [`MAX_CONFIG_SIZE`].
pub fn too_large() -> Diagnostic {
    Diagnostic::error(
        "",
        format!(
            "the config is larger than {} MiB, the most a config file may hold",
            MAX_CONFIG_SIZE / (1024 * 1024)
        ),
    )
}

/// True when `path` is `at` or a field below it.
fn within(path: &str, at: &str) -> bool {
    match path.strip_prefix(at) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || rest.starts_with('['),
        None => false,
    }
}

/// The parser's budget for a document of `len` bytes. The crate's defaults (250,000 nodes,
/// 1,000,000 events) stop a config at about 25,000 routes; written-out nodes cost at least a byte
/// or two each, so a budget that grows with the text refuses no real file, while a small file
/// that expands into a huge tree through aliases is still refused, and the tree stays
/// proportional to the file.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = budget.max_nodes.max(len);
    budget.max_events = budget.max_events.max(len.saturating_mul(2));
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses YAML into a generic tree, reporting syntax errors with line and column.
/// `server.worker_threads` of a config text, for the one setting needed before anything else
/// (the async runtime is built from it). 0, one worker per core, when it is absent or not valid:
/// [`load_str`] reports a bad value when the config is loaded for real. Only the YAML is parsed:
/// no typing, no checks, so a large config is not loaded twice at start.
pub fn worker_threads(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> usize {
    if text.len() > MAX_CONFIG_SIZE {
        return 0;
    }
    let Ok(mut doc) = parse_yaml(text) else {
        return 0;
    };
    let Some(v) = doc
        .get_mut("server")
        .and_then(|s| s.get_mut("worker_threads"))
    else {
        return 0;
    };
    let mut ignored = Vec::new();
    env::substitute(v, &FieldPath::root(), lookup, &mut ignored);
    serde_json::from_value::<usize>(v.take()).unwrap_or(0)
}

fn parse_yaml(text: &str) -> Result<Value, Diagnostic> {
    if text.trim().is_empty() {
        return Err(Diagnostic::error(
            "",
            "the config is empty; it needs at least `version: 1`",
        ));
    }
    match serde_saphyr::from_str_with_options::<Value>(text, yaml_options(text.len())) {
        Ok(v) => Ok(v),
        Err(e) => {
            let position = e.location().map(|l| (l.line(), l.column()));
            let full = e.to_string();
            // The crate renders a source snippet after the first line; keep the message itself.
            let mut message = full.lines().next().unwrap_or("invalid YAML").trim();
            message = message
                .strip_prefix("error:")
                .unwrap_or(message)
                .trim_start();
            // Drop the crate's own `line N column M:` prefix: the position is printed once, by us.
            if let Some(rest) = message.strip_prefix("line ") {
                if let Some((_, after)) = rest.split_once(": ") {
                    message = after;
                }
            }
            let message = messages::yaml_message(message);
            Err(Diagnostic {
                severity: Severity::Error,
                path: String::new(),
                message,
                position,
            })
        }
    }
}

/// Deserializes the tree section by section, so that one bad route does not hide errors in others.
///
/// Returns what did parse (elements that failed are left out), where it was in the file and what
/// failed, and whether everything parsed.
fn typed(doc: Value, diags: &mut Vec<Diagnostic>) -> (Config, validate::Positions, bool) {
    let Value::Object(mut top) = doc else {
        diags.push(Diagnostic::error(
            "",
            "the config must be a mapping with `version`, `listeners`, `upstreams`, `routes`",
        ));
        let cfg = Config {
            version: 1,
            server: Default::default(),
            listeners: Vec::new(),
            upstreams: Default::default(),
            routes: Vec::new(),
            profiles: Vec::new(),
            consumers: Vec::new(),
            redis: None,
            cache: None,
            plugins: Default::default(),
            admin: None,
            observability: Default::default(),
        };
        let pos = validate::Positions {
            broken: validate::Broken::everything(),
            ..validate::Positions::identity(&cfg)
        };
        return (cfg, pos, false);
    };
    const KNOWN: [&str; 12] = [
        "version",
        "server",
        "listeners",
        "upstreams",
        "routes",
        "profiles",
        "consumers",
        "redis",
        "cache",
        "plugins",
        "admin",
        "observability",
    ];
    for key in top.keys() {
        if !KNOWN.contains(&key.as_str()) {
            diags.push(Diagnostic::error(
                key.clone(),
                format!("unknown field, expected one of {}", KNOWN.join(", ")),
            ));
        }
    }
    let root = FieldPath::root();
    let before = diags.len();
    let version = match top.remove("version") {
        None => {
            diags.push(Diagnostic::error(
                "version",
                "missing field; write `version: 1`",
            ));
            None
        }
        Some(v) => part::<u32>(v, &root.key("version"), diags),
    };
    let server = take(&mut top, "server").map_or(Some(Default::default()), |v| {
        part(v, &root.key("server"), diags)
    });
    let mut broken = validate::Broken::default();
    let listeners_value = take(&mut top, "listeners");
    let listeners_given = match &listeners_value {
        Some(Value::Array(items)) => items.len(),
        Some(_) => usize::MAX,
        None => 0,
    };
    let (listener_pos, listeners) = list(listeners_value, &root.key("listeners"), diags);
    broken.listeners = listener_pos.len() != listeners_given;
    let upstreams_value = take(&mut top, "upstreams");
    match &upstreams_value {
        Some(Value::Object(m)) => broken.upstreams.extend(m.keys().cloned()),
        Some(_) => broken.all_upstreams = true,
        None => {}
    }
    let upstreams: Vec<(String, UpstreamConfig)> = upstreams_value
        .map(|v| map(v, &root.key("upstreams"), diags))
        .unwrap_or_default();
    for (name, _) in &upstreams {
        broken.upstreams.remove(name);
    }
    let (route_pos, routes) = list(take(&mut top, "routes"), &root.key("routes"), diags);
    let (consumer_pos, consumers) =
        list(take(&mut top, "consumers"), &root.key("consumers"), diags);
    let (_, profiles) = list(take(&mut top, "profiles"), &root.key("profiles"), diags);
    let redis_value = take(&mut top, "redis");
    let redis_given = redis_value.is_some();
    let redis = redis_value.and_then(|v| part(v, &root.key("redis"), diags));
    broken.redis = redis_given && redis.is_none();
    let cache = take(&mut top, "cache").and_then(|v| part(v, &root.key("cache"), diags));
    let plugins = take(&mut top, "plugins").map_or(Some(Default::default()), |v| {
        part(v, &root.key("plugins"), diags)
    });
    let admin = take(&mut top, "admin").and_then(|v| part(v, &root.key("admin"), diags));
    let observability = take(&mut top, "observability").map_or(Some(Default::default()), |v| {
        part(v, &root.key("observability"), diags)
    });
    let ok = diags.len() == before;
    // Checks of the sections that did parse run either way (every error in one go), but skip what
    // would only follow from a section that failed (`unknown upstream "api"` after a type error
    // inside `api`).
    let pos = validate::Positions {
        listeners: listener_pos,
        routes: route_pos,
        consumers: consumer_pos,
        broken,
    };
    let cfg = Config {
        version: version.unwrap_or(1),
        server: server.unwrap_or_default(),
        listeners,
        upstreams: upstreams.into_iter().collect(),
        routes,
        profiles,
        consumers,
        redis,
        cache,
        plugins: plugins.unwrap_or_default(),
        admin,
        observability: observability.unwrap_or_default(),
    };
    (cfg, pos, ok)
}

fn take(top: &mut Map<String, Value>, key: &str) -> Option<Value> {
    top.remove(key).filter(|v| !v.is_null())
}

fn part<T: DeserializeOwned>(v: Value, at: &FieldPath, diags: &mut Vec<Diagnostic>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." {
                at.to_string()
            } else if inner.starts_with('[') {
                format!("{at}{inner}")
            } else {
                at.key(&inner).to_string()
            };
            let message = messages::serde_message(&e.into_inner().to_string());
            diags.push(Diagnostic::error(path, message));
            None
        }
    }
}

/// The elements of a list that parse, with their positions in the file's list. Each element's
/// tree is dropped as soon as it is typed, so a long list is not held twice.
fn list<T: DeserializeOwned>(
    v: Option<Value>,
    at: &FieldPath,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<usize>, Vec<T>) {
    match v {
        None => (Vec::new(), Vec::new()),
        Some(Value::Array(items)) => {
            let mut positions = Vec::with_capacity(items.len());
            let mut typed = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                if let Some(t) = part(item, &at.index(i), diags) {
                    positions.push(i);
                    typed.push(t);
                }
            }
            (positions, typed)
        }
        Some(_) => {
            diags.push(Diagnostic::error(at.to_string(), "expected a list"));
            (Vec::new(), Vec::new())
        }
    }
}

fn map<T: DeserializeOwned>(
    v: Value,
    at: &FieldPath,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(String, T)> {
    match v {
        Value::Object(m) => m
            .into_iter()
            .filter_map(|(k, item)| {
                let t = part(item, &at.key(&k), diags)?;
                Some((k, t))
            })
            .collect(),
        _ => {
            diags.push(Diagnostic::error(
                at.to_string(),
                "expected a mapping of names to values",
            ));
            Vec::new()
        }
    }
}

/// The config's JSON Schema (draft-07, which YAML language servers understand).
pub fn json_schema() -> Value {
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Config>();
    schema.to_value()
}
