//! The external configuration model: what the YAML file says, typed and documented.
//!
//! These types are the public contract (versioned by `version: 1`). The gateway compiles them into
//! runtime types; nothing here does I/O.

pub mod aggregate;
mod consumer;
mod listener;
mod listener_tls;
mod observe;
pub mod plugin;
mod profile;
mod route;
mod upstream;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use aggregate::{AggregateCallConfig, AggregateConfig, AggregateHeadersConfig, MergeConfig};
pub use consumer::{ApiKeyConfig, BasicAuthCredential, ClientCertIdentity, ConsumerConfig};
pub use listener::{LimitsConfig, ListenerConfig};
pub use listener_tls::{
    CertificateConfig, ClientAuthConfig, ClientAuthMode, ListenerTlsConfig, TlsVersion,
};
pub use observe::{
    AccessLogConfig, AccessLogFormat, AdminConfig, MetricsConfig, ObservabilityConfig,
    TracingConfig,
};
pub use plugin::PluginsConfig;
pub use profile::{ProfileConfig, ProfileSelect};
pub use route::{MatchConfig, PathMatch, RouteConfig};
pub use upstream::{
    ActiveHealthConfig, CircuitBreakerConfig, HealthCheckConfig, LoadBalancing,
    PassiveHealthConfig, RetriesConfig, RetryOn, TargetConfig, TimeoutsConfig, UpstreamConfig,
    UpstreamProtocol, UpstreamTlsConfig,
};

use crate::units::Dur;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Schema version; must be 1.
    pub version: u32,
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Sockets the gateway accepts connections on.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Named groups of targets that routes send traffic to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Rules that map requests to upstreams, in declaration order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Client profiles: route sets and default plugins per client type, each selected by
    /// listener, host, consumer group or JWT claim; unselected requests take `routes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ProfileConfig>,
    /// Shared limiter state; without it every limit is local to the instance.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// The response cache's stores, shared by every route's `cache` plugin.
    #[serde(default)]
    pub cache: Option<plugin::CacheStoresConfig>,
    /// Identified callers and their credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Global plugins: run on every route, before the route's own plugins of the same kind.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// The admin API listener; absent means none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Metrics, access log and traces.
    #[serde(default)]
    pub observability: ObservabilityConfig,
}

/// The Redis server (or cluster) that shares limiter state between instances.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` of a single server (or `rediss://` for TLS).
    #[serde(default)]
    pub url: Option<String>,
    /// Seed node URLs of a Redis Cluster; instead of `url`.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// A limit decision never waits longer than this on Redis.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
}

fn default_redis_timeout() -> Dur {
    Dur(std::time::Duration::from_millis(20))
}

impl Config {
    /// Makes relative file paths (certificates, keys, CAs) relative to `base`, the directory of
    /// the config file, so the gateway reads the same files whatever its working directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let fix = |p: &mut String| {
            if !p.is_empty() && std::path::Path::new(p.as_str()).is_relative() {
                *p = base.join(p.as_str()).to_string_lossy().into_owned();
            }
        };
        for l in &mut self.listeners {
            if let Some(tls) = &mut l.tls {
                for c in &mut tls.certificates {
                    fix(&mut c.cert);
                    fix(&mut c.key);
                }
                if let Some(ca) = &mut tls.client_auth {
                    fix(&mut ca.ca);
                }
            }
        }
        if let Some(log) = &mut self.observability.access_log {
            if !matches!(log.output.as_str(), "stdout" | "stderr") {
                fix(&mut log.output);
            }
        }
        let plugin_files = |p: &mut PluginsConfig| {
            if let Some(f) = p
                .grpc_transcode
                .as_mut()
                .and_then(|g| g.descriptors.file.as_mut())
            {
                fix(f);
            }
        };
        plugin_files(&mut self.plugins);
        for r in &mut self.routes {
            plugin_files(&mut r.plugins);
        }
        for pr in &mut self.profiles {
            plugin_files(&mut pr.plugins);
            for r in &mut pr.routes {
                plugin_files(&mut r.plugins);
            }
        }
        for up in self.upstreams.values_mut() {
            if let Some(tls) = &mut up.tls {
                for p in [&mut tls.ca, &mut tls.client_cert, &mut tls.client_key]
                    .into_iter()
                    .flatten()
                {
                    fix(p);
                }
            }
        }
    }
}

/// Process-wide settings.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Worker threads; 0 means one per available core (respecting CPU affinity). Read at start only.
    pub worker_threads: usize,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub drain_timeout: Dur,
    /// The pseudonym in the `Via` header added to forwarded requests (`Via: 1.1 <via>`).
    pub via: String,
    /// The HTTP/1 implementation of the listeners; absent: the `FRONTDESK_HTTP1` environment
    /// variable's choice, else [`Http1Codec::default`]. Applies to connections accepted after a
    /// reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http1: Option<Http1Codec>,
}

/// Which HTTP/1 implementation serves downstream connections.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Http1Codec {
    /// The gateway's own HTTP/1 codec (httparse heads, its own framing).
    #[default]
    Native,
    /// hyper's HTTP/1 server under the gateway's head guard.
    Hyper,
}

impl Http1Codec {
    /// The codec named by `FRONTDESK_HTTP1` (`native` or `hyper`), if set to one of them.
    pub fn from_env() -> Option<Http1Codec> {
        match std::env::var("FRONTDESK_HTTP1").ok()?.trim() {
            "native" => Some(Http1Codec::Native),
            "hyper" => Some(Http1Codec::Hyper),
            _ => None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            worker_threads: 0,
            drain_timeout: Dur(std::time::Duration::from_secs(30)),
            via: "frontdesk".into(),
            http1: None,
        }
    }
}

/// Deserializers that accept any YAML scalar where a string is meant (`x-api-version: 2`).
pub(crate) mod lenient {
    use std::collections::BTreeMap;

    use serde::{de, Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Str(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }

    impl Scalar {
        fn into_string(self) -> String {
            match self {
                Scalar::Str(s) => s,
                Scalar::Int(n) => n.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            }
        }
    }

    /// A string, or a number or boolean taken as its text.
    pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Scalar::deserialize(d)
            .map(Scalar::into_string)
            .map_err(|_| de::Error::custom("expected a string"))
    }

    /// A map of strings to scalars, each taken as text.
    pub(crate) fn string_map<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
        Ok(raw.into_iter().map(|(k, v)| (k, v.into_string())).collect())
    }
}
