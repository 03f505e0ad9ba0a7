//! Upstreams: named groups of targets that routes forward to.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::units::Dur;

/// A named group of targets, balanced by weighted round robin.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The endpoints of this upstream; at least one.
    pub targets: Vec<TargetConfig>,
    /// Time allowed to open a TCP connection to a target; over it: 504.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time allowed from sending the request to receiving the response head; over it: 504.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Idle keep-alive connections kept per target.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_target: usize,
    /// How long an idle upstream connection is kept before it is closed.
    #[serde(default = "default_pool_idle")]
    pub pool_idle_timeout: Dur,
}

/// One endpoint of an upstream.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// `http://host:port`; a path is not allowed.
    pub url: String,
    /// Relative share of requests (weighted round robin); default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_connect_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
fn default_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn default_max_idle() -> usize {
    64
}
fn default_pool_idle() -> Dur {
    Dur(std::time::Duration::from_secs(90))
}
fn default_weight() -> u32 {
    1
}
