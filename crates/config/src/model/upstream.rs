//! Upstreams: named groups of targets that routes forward to, and how the gateway protects them
//! (balancing, health checks, timeouts, retries, circuit breaking) and talks to them (protocol, TLS).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::Dur;

/// A named group of targets.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The endpoints of this upstream; at least one.
    pub targets: Vec<TargetConfig>,
    /// How a target is picked for each request.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// What `consistent_hash` hashes: `header:NAME`, `cookie:NAME`, `client_ip` or `path`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Active and passive health checking.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Connect, response and pool idle timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Which failures are retried, and how often.
    #[serde(default)]
    pub retries: RetriesConfig,
    /// Stop sending to an upstream that mostly fails; absent means no breaker.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Wire protocol to the targets.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS settings for `https://` targets.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// Same as `timeouts.connect` (the core's spelling); set one or the other.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// Same as `timeouts.response` (the core's spelling); set one or the other.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Same as `timeouts.idle` (the core's spelling); set one or the other.
    #[serde(default)]
    pub pool_idle_timeout: Option<Dur>,
    /// Idle keep-alive connections kept per target and worker thread (HTTP/1).
    #[serde(default = "default_max_idle")]
    pub max_idle_per_target: usize,
}

impl UpstreamConfig {
    /// Time allowed to open a connection (TCP and TLS); over it: 502.
    pub fn connect_timeout(&self) -> Duration {
        self.timeouts
            .connect
            .or(self.connect_timeout)
            .map_or(Duration::from_secs(5), Dur::get)
    }

    /// Time allowed from the request being sent to the response head; over it: 504.
    pub fn response_timeout(&self) -> Duration {
        self.timeouts
            .response
            .or(self.timeout)
            .map_or(Duration::from_secs(60), Dur::get)
    }

    /// How long an idle upstream connection is kept.
    pub fn idle_timeout(&self) -> Duration {
        self.timeouts
            .idle
            .or(self.pool_idle_timeout)
            .map_or(Duration::from_secs(90), Dur::get)
    }
}

/// One endpoint of an upstream.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `http://host:port` or `https://host:port`; a path is not allowed.
    pub url: String,
    /// Relative share of requests; default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// How a target is picked for each request.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Smooth weighted round robin (nginx's).
    #[default]
    RoundRobin,
    /// Power of two choices: of two random targets, the one with fewer requests in flight.
    LeastRequest,
    /// The same `hash_key` goes to the same target; adding or removing a target moves about 1/N
    /// of the keys.
    ConsistentHash,
    /// Weighted random.
    Random,
}

/// Health checking. Passive checks are on by default; active checks only when configured.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Periodic probes of every target in the background.
    #[serde(default)]
    pub active: Option<ActiveHealthConfig>,
    /// Ejection of targets that fail live traffic.
    #[serde(default)]
    pub passive: PassiveHealthConfig,
}

/// Periodic HTTP probes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthConfig {
    /// Path probed with `GET`; a 2xx or 3xx answer is a success.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between probes of one target.
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    /// Time a probe may take (connect plus response head).
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    /// Consecutive successes that bring an unhealthy target back.
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that take a target out of rotation.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
}

/// Passive health: consecutive failures of live traffic eject a target for a while. Connect
/// failures, resets and timeouts always count; a response counts only when its status is listed
/// in `statuses` (an application's own 500 says nothing about the target). Ejection never takes
/// more than `max_ejected_ratio` of an upstream's targets, and never the last one in rotation.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Consecutive failures that eject a target; 0 turns passive checks off.
    pub unhealthy_after: u32,
    /// How long an ejected target stays out of rotation.
    pub eject_for: Dur,
    /// Response statuses (500 to 599) that count as failures, such as `[502, 503, 504]`; empty
    /// by default: only connect failures, resets and timeouts count.
    pub statuses: Vec<u16>,
    /// The largest share of the upstream's targets (0 to 1) that may be ejected at once; 0.5 by
    /// default. Whatever the share, at least one target always stays in rotation.
    pub max_ejected_ratio: f64,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            unhealthy_after: 5,
            eject_for: Dur(Duration::from_secs(10)),
            statuses: Vec::new(),
            max_ejected_ratio: 0.5,
        }
    }
}

/// Upstream timeouts; the defaults are 5 s, 60 s and 90 s.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Opening a connection (TCP and TLS handshake); over it: 502.
    #[serde(default)]
    pub connect: Option<Dur>,
    /// From the request being sent to the response head; over it: 504.
    #[serde(default)]
    pub response: Option<Dur>,
    /// An idle pooled HTTP/1 connection older than this is not reused (it is closed when a request
    /// next looks for a connection to its target).
    #[serde(default)]
    pub idle: Option<Dur>,
}

/// Retries. A request that was never sent (a connect failure; with `reset`, a connection that broke
/// before a byte was written) is retried for any method. Once sent, `reset`, `timeout` and statuses
/// are retried only for idempotent methods without a body (bodies are streamed, not kept). Each
/// retry prefers another target and takes one from the retry budget.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetriesConfig {
    /// Retries after the first try; 0 turns retries off.
    pub attempts: u32,
    /// Conditions that trigger a retry. Written `retry_on`; `on` is accepted too, but YAML 1.1
    /// tools (PyYAML, Go yaml.v2, Helm) read that key as the boolean `true`.
    #[serde(rename = "retry_on", alias = "on")]
    pub on: Vec<RetryOn>,
    /// Base delay before a retry, doubled each time, with jitter.
    pub backoff: Dur,
}

impl Default for RetriesConfig {
    fn default() -> Self {
        RetriesConfig {
            attempts: 1,
            on: vec![RetryOn::ConnectFailure],
            backoff: Dur(Duration::from_millis(25)),
        }
    }
}

/// A condition that makes a request eligible for a retry.
#[derive(Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum RetryOn {
    /// `connect_failure`: no connection could be opened (any method).
    #[schemars(with = "String")]
    ConnectFailure,
    /// `reset`: the connection broke before a response head arrived.
    #[schemars(with = "String")]
    Reset,
    /// `timeout`: no response head within `timeouts.response`.
    #[schemars(with = "String")]
    Timeout,
    /// A response status from 500 to 599, such as 502, 503 or 504.
    Status(u16),
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = crate::model::lenient::string(d)?;
        match s.as_str() {
            "connect_failure" => Ok(RetryOn::ConnectFailure),
            "reset" => Ok(RetryOn::Reset),
            "timeout" => Ok(RetryOn::Timeout),
            _ => match s.parse::<u16>() {
                Ok(code) if (500..=599).contains(&code) => Ok(RetryOn::Status(code)),
                _ => Err(serde::de::Error::custom(format!(
                    "unknown retry condition {s:?}; expected connect_failure, reset, timeout or a status 500-599"
                ))),
            },
        }
    }
}

impl Serialize for RetryOn {
    /// As written in the file: a condition's name, or a status number.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::ConnectFailure => s.serialize_str("connect_failure"),
            RetryOn::Reset => s.serialize_str("reset"),
            RetryOn::Timeout => s.serialize_str("timeout"),
            RetryOn::Status(code) => s.serialize_u16(*code),
        }
    }
}

/// A per-upstream circuit breaker.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Share of failed requests (connect failures, resets, timeouts, 5xx) in `window` that opens
    /// the breaker.
    pub failure_ratio: f64,
    /// Requests needed in `window` before the ratio counts.
    pub min_requests: u32,
    /// The sliding window the ratio is measured over.
    pub window: Dur,
    /// How long the breaker stays open before one probe request is let through (half-open).
    pub open_for: Dur,
    /// Requests in flight to this upstream beyond which new ones get 503 at once; absent: no cap.
    pub max_concurrent: Option<u32>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Dur(Duration::from_secs(10)),
            open_for: Dur(Duration::from_secs(5)),
            max_concurrent: None,
        }
    }
}

/// Wire protocol to the targets.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS for `https://` targets, ALPN `http/1.1`).
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`); targets must be `https://`.
    H2,
    /// HTTP/2 cleartext with prior knowledge; targets must be `http://`.
    H2c,
}

/// TLS to `https://` targets. The server is always verified.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of CA certificates to verify targets with; absent: the system's roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// Name sent as SNI and verified in the certificate; absent: the target's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM certificate chain presented to targets (mTLS); needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<String>,
}

fn default_max_idle() -> usize {
    64
}
fn default_weight() -> u32 {
    1
}
fn default_health_path() -> String {
    "/".into()
}
fn default_health_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_health_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_threshold() -> u32 {
    2
}
