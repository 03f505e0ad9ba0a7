//! What the admin API answers, as serializable types built from the live snapshot, plus the
//! problem+json error. The shapes are documented in `openapi.json`; handlers only assemble them.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use frontdesk_config::{Config, Diagnostic, Dur, MatchConfig};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::snapshot::Snapshot;

/// One finding about a config.
#[derive(Debug, Serialize)]
pub struct Finding {
    /// Field path such as `routes[2].upstream`; empty for the document itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// 1-based line in the submitted text, for YAML syntax errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// 1-based column in the submitted text, for YAML syntax errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
}

impl From<&Diagnostic> for Finding {
    fn from(d: &Diagnostic) -> Self {
        Finding {
            path: d.path.clone(),
            message: d.message.clone(),
            line: d.position.map(|p| p.0),
            column: d.position.map(|p| p.1),
        }
    }
}

/// The answer of `POST /config/validate`, and of `PUT /config` and `POST /reload` when refused.
#[derive(Debug, Serialize)]
pub struct Validation {
    /// Whether the config would be accepted.
    pub valid: bool,
    /// Errors; empty when valid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Finding>,
    /// Warnings.
    pub warnings: Vec<Finding>,
}

impl Validation {
    /// From a check's result; the diagnostics of a refusal hold errors and warnings together.
    pub fn of(result: &Result<Vec<Diagnostic>, Vec<Diagnostic>>) -> Validation {
        match result {
            Ok(warnings) => Validation {
                valid: true,
                errors: Vec::new(),
                warnings: warnings.iter().map(Finding::from).collect(),
            },
            Err(diags) => Validation {
                valid: false,
                errors: diags
                    .iter()
                    .filter(|d| d.is_error())
                    .map(Finding::from)
                    .collect(),
                warnings: diags
                    .iter()
                    .filter(|d| !d.is_error())
                    .map(Finding::from)
                    .collect(),
            },
        }
    }
}

impl IntoResponse for Validation {
    fn into_response(self) -> Response {
        let status = if self.valid {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        (status, axum::Json(self)).into_response()
    }
}

/// The answer of a successful `PUT /config` or `POST /reload`.
#[derive(Debug, Serialize)]
pub struct Applied {
    /// The new snapshot generation.
    pub generation: u64,
    /// Warnings about the applied config.
    pub warnings: Vec<Finding>,
}

/// `GET /config`: the effective config, secrets redacted.
#[derive(Debug, Serialize)]
pub struct EffectiveConfig {
    /// SHA-256 (hex) of the effective config: equal configs have equal versions.
    pub version: String,
    /// When it was applied, RFC 3339 in UTC.
    pub loaded_at: String,
    /// The snapshot generation.
    pub generation: u64,
    /// The config, as loaded (variables substituted, defaults filled in), secrets redacted:
    /// see [`shown_config`].
    pub config: serde_json::Value,
}

impl EffectiveConfig {
    /// From the live snapshot; `admin` is the admin listener's bound address, when one runs.
    pub fn of(snap: &Snapshot, admin: Option<SocketAddr>) -> EffectiveConfig {
        // The version covers the real config, secrets included, so changing a secret changes it.
        let full = serde_json::to_vec(&*snap.config).unwrap_or_default();
        let version = Sha256::digest(&full)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        EffectiveConfig {
            version,
            loaded_at: rfc3339(snap.loaded_at),
            generation: snap.generation,
            config: shown_config(&snap.config, admin),
        }
    }
}

/// The config as `GET /config` shows it, and as `PUT /config` compares a submitted config with:
/// secrets redacted, the values in force where the file leaves them to defaults (upstream
/// timeouts), the admin listener's bound address, and no `null` (an unset option is left out).
pub fn shown_config(cfg: &Config, admin: Option<SocketAddr>) -> serde_json::Value {
    let mut shown = cfg.redacted();
    for up in shown.upstreams.values_mut() {
        // The aliases are folded into `timeouts`, which then shows what is in force.
        let (connect, response, idle) = (
            up.connect_timeout(),
            up.response_timeout(),
            up.idle_timeout(),
        );
        up.timeouts.connect = Some(Dur(connect));
        up.timeouts.response = Some(Dur(response));
        up.timeouts.idle = Some(Dur(idle));
        up.connect_timeout = None;
        up.timeout = None;
        up.pool_idle_timeout = None;
    }
    if let (Some(a), Some(bound)) = (&mut shown.admin, admin) {
        a.address = bound.to_string();
    }
    let mut v = serde_json::to_value(shown).unwrap_or_default();
    drop_nulls(&mut v);
    v
}

/// Removes every `null` member of every object (unset options), recursively.
fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// One route of `GET /routes`.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// The route's name.
    pub name: String,
    /// Its match rules as configured.
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// The upstream it forwards to; `null` when a plugin or an aggregate answers.
    pub upstream: Option<String>,
    /// An aggregate route's calls (each with its upstream), as `GET /explain` shows them
    /// without a request: paths as written. Absent on other routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Vec<crate::route::AggregateCall>>,
    /// Whether the matched prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// Plugin kinds in run order, global ones included.
    pub plugins: Vec<String>,
    /// The client profile the route belongs to; absent for top-level routes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// Every route, in match order: the top-level ones, then each profile's.
pub fn routes(snap: &Snapshot) -> Vec<RouteView> {
    let view = |table: &crate::route::RouteTable<crate::snapshot::Route>,
                cfgs: &[frontdesk_config::RouteConfig],
                profile: Option<&str>| {
        table
            .ranked()
            .into_iter()
            .filter_map(|(i, route)| {
                let cfg = cfgs.get(i)?;
                Some(RouteView {
                    name: route.name.to_string(),
                    matcher: cfg.matcher.clone(),
                    upstream: route.target.upstream().map(|u| u.name.to_string()),
                    aggregate: match &route.target {
                        crate::snapshot::Target::Aggregate(agg) => Some(agg.explain(&[])),
                        _ => None,
                    },
                    strip_prefix: route.strip_prefix,
                    plugins: route.plugins.kinds().map(str::to_string).collect(),
                    profile: profile.map(str::to_string),
                })
            })
            .collect::<Vec<_>>()
    };
    let mut all = view(&snap.routes, &snap.config.routes, None);
    for p in &snap.profiles {
        if let Some(cfg) = snap.config.profiles.iter().find(|c| *c.name == *p.name) {
            all.extend(view(&p.routes, &cfg.routes, Some(&p.name)));
        }
    }
    all
}

/// One upstream of `GET /upstreams`.
#[derive(Debug, Serialize)]
pub struct UpstreamView {
    /// The upstream's name.
    pub name: String,
    /// Its targets, in config order.
    pub targets: Vec<TargetView>,
}

/// One target of an upstream, as it is now.
#[derive(Debug, Serialize)]
pub struct TargetView {
    /// The target URL as configured.
    pub url: String,
    /// In rotation: active checks pass and passive checks have not ejected it.
    pub healthy: bool,
    /// Ejected by passive checks (live traffic failed it), whatever the active checks say.
    pub ejected: bool,
    /// The upstream's circuit breaker: `closed`, `open`, `half_open` or `disabled`.
    pub breaker: &'static str,
    /// Requests in flight to it now.
    pub in_flight: usize,
    /// Median time to the response head, in milliseconds; `null` before the first response.
    pub latency_ms_p50: Option<f64>,
}

/// Every upstream by name, with each target's health and load.
pub fn upstreams(snap: &Snapshot) -> Vec<UpstreamView> {
    let mut names: Vec<&String> = snap.upstreams.keys().collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let up = snap.upstreams.get(name)?;
            let breaker = up.breaker().map_or("disabled", |b| b.state().as_str());
            let targets = up
                .targets()
                .iter()
                .map(|t| TargetView {
                    url: t.url.to_string(),
                    healthy: t.state.is_healthy(),
                    ejected: t.state.is_ejected(),
                    breaker,
                    in_flight: t.state.in_flight(),
                    latency_ms_p50: t.state.latency.quantile(0.5).map(|s| s * 1000.0),
                })
                .collect();
            Some(UpstreamView {
                name: name.clone(),
                targets,
            })
        })
        .collect()
}

/// An RFC 9457 problem+json response.
#[derive(Debug)]
pub struct Problem {
    /// The status.
    pub status: StatusCode,
    /// What went wrong, safe to show.
    pub detail: String,
}

impl Problem {
    /// A problem with `status` and `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = crate::error::problem_json(self.status, &self.detail, None);
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

/// `2024-05-01T12:34:56.789Z`: RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Year, month, day of the day `z` days after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }
}
