//! `frontdesk-config`: the configuration contract of the Frontdesk gateway.
//!
//! It owns the YAML model ([`Config`]), loading with `${VAR}` substitution ([`load_str`]), validation
//! that reports **every** error with its field path ([`Diagnostic`]), and the JSON Schema
//! ([`json_schema`]). It does no I/O: callers pass the text and the environment.

mod env;
pub mod model;
mod redact;
mod units;
mod validate;

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use model::plugin::{
    AclConfig, BasicAuthConfig, ClientCertConfig, CorsConfig, HeaderOps, HeadersConfig,
    IpFilterConfig, JwtConfig, JwtIssuerConfig, KeyAuthConfig, RequestSizeConfig, RespondConfig,
};
pub use model::plugin::{
    ConcurrencyConfig, LimitConfig, LimitHeaders, LimitOverride, LimitStore, OnStoreError,
    QuotaConfig, QuotaWindow, RateLimitConfig,
};
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
pub use redact::REDACTED;
pub use units::{ByteSize, Dur};

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

/// Parses, substitutes variables, and validates a YAML config.
///
/// Never panics on any input. On failure, returns every error found (and the warnings), errors first.
/// `lookup` resolves environment variables (pass `|k| std::env::var(k).ok()` in the binary).
pub fn load_str(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut doc: Value = match parse_yaml(text) {
        Ok(v) => v,
        Err(d) => return Err(vec![d]),
    };
    env::substitute(&mut doc, &FieldPath::root(), lookup, &mut diags);
    if !diags.is_empty() {
        return Err(diags);
    }
    let config = typed(doc, &mut diags);
    if let Some(cfg) = &config {
        validate::validate(cfg, &validate::Positions::identity(cfg), &mut diags);
    }
    diags.sort_by_key(|d| !d.is_error());
    match config {
        Some(config) if !diags.iter().any(Diagnostic::is_error) => Ok(Loaded {
            config,
            warnings: diags,
        }),
        _ => Err(diags),
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
            let message = message.to_string();
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
fn typed(doc: Value, diags: &mut Vec<Diagnostic>) -> Option<Config> {
    let Value::Object(mut top) = doc else {
        diags.push(Diagnostic::error(
            "",
            "the config must be a mapping with `version`, `listeners`, `upstreams`, `routes`",
        ));
        return None;
    };
    const KNOWN: [&str; 10] = [
        "version",
        "server",
        "listeners",
        "upstreams",
        "routes",
        "consumers",
        "redis",
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
    let (listener_pos, listeners) =
        list(take(&mut top, "listeners"), &root.key("listeners"), diags);
    let upstreams = take(&mut top, "upstreams")
        .map(|v| map(v, &root.key("upstreams"), diags))
        .unwrap_or_default();
    let (route_pos, routes) = list(take(&mut top, "routes"), &root.key("routes"), diags);
    let (consumer_pos, consumers) =
        list(take(&mut top, "consumers"), &root.key("consumers"), diags);
    let redis = take(&mut top, "redis").and_then(|v| part(v, &root.key("redis"), diags));
    let plugins = take(&mut top, "plugins").map_or(Some(Default::default()), |v| {
        part(v, &root.key("plugins"), diags)
    });
    let admin = take(&mut top, "admin").and_then(|v| part(v, &root.key("admin"), diags));
    let observability = take(&mut top, "observability").map_or(Some(Default::default()), |v| {
        part(v, &root.key("observability"), diags)
    });
    let ok = diags.len() == before;
    let cfg = Config {
        version: version.unwrap_or(1),
        server: server.unwrap_or_default(),
        listeners,
        upstreams: upstreams.into_iter().collect(),
        routes,
        consumers,
        redis,
        plugins: plugins.unwrap_or_default(),
        admin,
        observability: observability.unwrap_or_default(),
    };
    if ok {
        Some(cfg)
    } else {
        // Still check what did parse, so every error is reported in one go; but never accept it.
        // Elements that failed to parse are missing, so paths use their original positions.
        let pos = validate::Positions {
            listeners: listener_pos,
            routes: route_pos,
            consumers: consumer_pos,
        };
        validate::validate(&cfg, &pos, diags);
        None
    }
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
            diags.push(Diagnostic::error(path, e.into_inner().to_string()));
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
