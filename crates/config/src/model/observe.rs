//! Operator-facing settings: the admin listener and what the gateway records about its traffic
//! (metrics, access log, traces).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The admin API's own listener. Without this section no admin listener runs.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `IP:PORT` to bind; loopback by default. It never serves proxied routes.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Bearer token required for everything but `/livez`, `/readyz` and `/metrics`. Required
    /// when `address` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: default_admin_address(),
            token: None,
        }
    }
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".into()
}

/// Metrics, access log and tracing.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// One line per request; absent means no access log.
    pub access_log: Option<AccessLogConfig>,
    /// Prometheus metrics, served on the admin listener's `/metrics`.
    pub metrics: MetricsConfig,
    /// OpenTelemetry traces; absent means no trace export (trace headers still pass through).
    pub tracing: Option<TracingConfig>,
}

/// The access log: one line per request, written by a background thread so it never blocks a
/// request (lines are dropped and counted when the writer falls behind).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Line format.
    #[serde(default)]
    pub format: AccessLogFormat,
    /// `stdout`, `stderr`, or a file path (appended to; relative to the config file).
    #[serde(default = "default_output")]
    pub output: String,
}

fn default_output() -> String {
    "stdout".into()
}

/// Access log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
}

/// Prometheus metrics.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record request metrics at all (on by default; off only to measure their cost).
    pub enabled: bool,
    /// Add `frontdesk_consumer_requests_total{consumer,route,status_class}`: one series per
    /// consumer, so opt-in (cardinality).
    pub consumer_label: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            consumer_label: false,
        }
    }
}

/// OpenTelemetry trace export over OTLP/gRPC.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`; absent means no export.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces (without a sampled parent) that are recorded, 0.0 to 1.0. A request
    /// whose `traceparent` is sampled is always recorded; one marked not sampled never is.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
}

fn default_service_name() -> String {
    "frontdesk".into()
}

fn default_ratio() -> f64 {
    1.0
}
