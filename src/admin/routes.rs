//! The admin router and its handlers. Every path is declared once, in [`endpoints`], which
//! builds the router and which a test compares with `openapi.json`. Handlers are thin: they
//! extract, call the snapshot or the reload path, and return a DTO.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::{middleware, Json, Router};
use serde_json::json;

use super::dto::{self, Applied, EffectiveConfig, Finding, Problem, Validation};
use super::{auth, AdminState, Refused, Reloaded, OPENAPI};
use crate::route::{ExplainError, ExplainRequest};

/// One admin path and method.
pub(crate) struct Endpoint {
    /// `GET`, `PUT` or `POST`.
    pub(crate) method: &'static str,
    /// The path.
    pub(crate) path: &'static str,
    /// Served without the token.
    pub(crate) open: bool,
    handler: MethodRouter<AdminState>,
}

/// Why an admin request failed, when the answer is a problem document.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    /// The gateway is gone (the process is stopping).
    #[error("the gateway is shutting down")]
    Gone,
    /// `/explain` was given a request it cannot build.
    #[error(transparent)]
    Explain(#[from] ExplainError),
    /// A valid config could not be written to the config file.
    #[error("the config is valid but could not be saved: {0}")]
    Persist(std::io::Error),
    /// A request body that is not what the endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing to act on (no route caches).
    #[error("{0}")]
    NotFound(&'static str),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Gone => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Explain(_) => StatusCode::BAD_REQUEST,
            AdminError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        };
        Problem::new(status, self.to_string()).into_response()
    }
}

/// Every admin path.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    let open = |method, path, handler| Endpoint {
        method,
        path,
        open: true,
        handler,
    };
    let guarded = |method, path, handler| Endpoint {
        method,
        path,
        open: false,
        handler,
    };
    vec![
        open("GET", "/livez", get(livez)),
        open("GET", "/readyz", get(readyz)),
        open("GET", "/metrics", get(metrics)),
        guarded("GET", "/openapi.json", get(openapi)),
        guarded("GET", "/config", get(config)),
        guarded("PUT", "/config", put(put_config)),
        guarded("POST", "/config/validate", post(validate)),
        guarded("POST", "/reload", post(reload_file)),
        guarded("GET", "/routes", get(routes)),
        guarded("GET", "/upstreams", get(upstreams)),
        guarded("GET", "/explain", get(explain)),
        guarded("POST", "/cache/purge", post(purge_cache)),
    ]
}

/// The admin router: open paths, guarded paths behind the token, problem+json for the rest.
pub(crate) fn router(state: AdminState) -> Router {
    let mut open = Router::new();
    let mut guarded = Router::new();
    for e in endpoints() {
        tracing::trace!(
            method = e.method,
            path = e.path,
            open = e.open,
            "admin route"
        );
        if e.open {
            open = open.route(e.path, e.handler);
        } else {
            guarded = guarded.route(e.path, e.handler);
        }
    }
    let guarded = guarded.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    open.merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no such admin path")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this admin path does not take that method",
    )
}

async fn livez() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(s): State<AdminState>) -> Response {
    match s.gateway() {
        Some(gw) if gw.is_ready() => Json(json!({
            "status": "ready",
            "generation": gw.snapshot().generation,
        }))
        .into_response(),
        Some(gw) if gw.is_draining() => not_ready("draining"),
        Some(_) => not_ready("starting"),
        None => not_ready("draining"),
    }
}

fn not_ready(status: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": status })),
    )
        .into_response()
}

async fn metrics(State(s): State<AdminState>) -> Result<Response, AdminError> {
    let snap = s.gateway().ok_or(AdminError::Gone)?.snapshot();
    let body = snap.metrics.render(snap.clone());
    Ok((
        [(header::CONTENT_TYPE, crate::observe::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn config(State(s): State<AdminState>) -> Result<Json<EffectiveConfig>, AdminError> {
    let gw = s.gateway().ok_or(AdminError::Gone)?;
    Ok(Json(EffectiveConfig::of(&gw.snapshot(), gw.admin_addr())))
}

/// The body as text; a body that is not UTF-8 is refused like an invalid config.
fn text(body: &Bytes) -> Result<String, Validation> {
    String::from_utf8(body.to_vec()).map_err(|_| Validation {
        valid: false,
        errors: vec![Finding {
            path: String::new(),
            message: "the body is not UTF-8 text (send YAML or JSON)".into(),
            line: None,
            column: None,
        }],
        warnings: Vec::new(),
    })
}

/// Checks a submission as `PUT /config` would apply it: as an edit of the running config.
async fn validate(State(s): State<AdminState>, body: Bytes) -> Result<Response, AdminError> {
    let gw = s.gateway().ok_or(AdminError::Gone)?;
    let text = match text(&body) {
        Ok(t) => t,
        Err(v) => return Ok(v.into_response()),
    };
    let base = gw.applied_text().await;
    let shown = dto::shown_config(&gw.snapshot().config, gw.admin_addr());
    let result = frontdesk_config::edit_text(&base, &shown, &text, &env)
        .and_then(|edited| gw.check_text(&edited));
    Ok(Validation::of(&result).into_response())
}

/// The submission is the config wanted, compared with what `GET /config` shows: the file is
/// edited only where they differ, so a placeholder equal to the one shown keeps its secret, and
/// `${VAR}` references and comments stay where nothing changed (`frontdesk_config::edit_text`).
async fn put_config(State(s): State<AdminState>, body: Bytes) -> Result<Response, AdminError> {
    let gw = s.gateway().ok_or(AdminError::Gone)?;
    let text = match text(&body) {
        Ok(t) => t,
        Err(v) => return Ok(v.into_response()),
    };
    let admin = gw.admin_addr();
    let result = gw
        .apply_edit(Box::new(move |base, snap| {
            let shown = dto::shown_config(&snap.config, admin);
            frontdesk_config::edit_text(base, &shown, &text, &env)
        }))
        .await;
    applied(result)
}

async fn reload_file(State(s): State<AdminState>) -> Result<Response, AdminError> {
    let gw = s.gateway().ok_or(AdminError::Gone)?;
    applied(gw.reload().await)
}

/// The process environment, for `${VAR}`.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `200` with the generation, `422` with the errors, or a problem when saving failed.
fn applied(r: Result<Reloaded, Refused>) -> Result<Response, AdminError> {
    match r {
        Ok(o) => Ok(Json(Applied {
            generation: o.generation,
            warnings: o.warnings.iter().map(Finding::from).collect(),
        })
        .into_response()),
        Err(Refused::Invalid(diags)) => Ok(Validation::of(&Err(diags)).into_response()),
        Err(Refused::Persist(e)) => Err(AdminError::Persist(e)),
    }
}

async fn routes(State(s): State<AdminState>) -> Result<Json<Vec<dto::RouteView>>, AdminError> {
    let snap = s.gateway().ok_or(AdminError::Gone)?.snapshot();
    Ok(Json(dto::routes(&snap)))
}

async fn upstreams(
    State(s): State<AdminState>,
) -> Result<Json<Vec<dto::UpstreamView>>, AdminError> {
    let snap = s.gateway().ok_or(AdminError::Gone)?.snapshot();
    Ok(Json(dto::upstreams(&snap)))
}

/// `?method=GET&host=h&path=/p?q=1&header=name:value&listener=name` (header repeats).
async fn explain(
    State(s): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<crate::route::Explanation>, AdminError> {
    let snap = s.gateway().ok_or(AdminError::Gone)?.snapshot();
    let (mut method, mut host, mut path) = ("GET".to_string(), None, "/".to_string());
    let mut listener = None;
    let mut headers = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "method" => method = v.into_owned(),
            "host" => host = Some(v.into_owned()),
            "path" => path = v.into_owned(),
            "header" => headers.push(v.into_owned()),
            "listener" => listener = Some(v.into_owned()),
            _ => {}
        }
    }
    let mut req = ExplainRequest::new(&method, host.as_deref(), &path, &headers)?;
    req.listener = listener;
    Ok(Json(snap.explain(&req)))
}

/// `POST /cache/purge`: `{"key"|"url"|"prefix"|"tag": "...", "soft": false}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    key: Option<String>,
    url: Option<String>,
    prefix: Option<String>,
    tag: Option<String>,
    #[serde(default)]
    soft: bool,
}

async fn purge_cache(
    State(s): State<AdminState>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, AdminError> {
    use crate::cache::Purge;
    let snap = s.gateway().ok_or(AdminError::Gone)?.snapshot();
    let b: PurgeBody = serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("invalid purge request: {e}")))?;
    let what = match (b.key, b.url, b.prefix, b.tag) {
        (Some(k), None, None, None) => Purge::Key(k),
        (None, Some(u), None, None) => Purge::Url(u),
        (None, None, Some(p), None) => Purge::Prefix(p),
        (None, None, None, Some(t)) => Purge::Tag(t),
        _ => {
            return Err(AdminError::BadRequest(
                "name exactly one of key, url, prefix or tag".into(),
            ))
        }
    };
    let cache = snap
        .cache
        .as_ref()
        .ok_or(AdminError::NotFound("no route caches responses"))?;
    let purged = crate::plugins::cache::purge(cache, &what, b.soft).await;
    Ok(Json(json!({ "purged": purged, "soft": b.soft })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_path_is_in_the_openapi_document_and_back() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert!(doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")));
        let paths = doc["paths"].as_object().expect("paths");
        let served = endpoints();
        for e in &served {
            let op = &paths
                .get(e.path)
                .unwrap_or_else(|| panic!("{} missing from openapi.json", e.path))
                [e.method.to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{} {} missing from openapi.json",
                e.method,
                e.path
            );
            let open = op["security"].as_array().is_some_and(Vec::is_empty);
            assert_eq!(
                open, e.open,
                "{} {}: security does not match",
                e.method, e.path
            );
        }
        for (path, ops) in paths {
            for method in ops.as_object().expect("operations").keys() {
                assert!(
                    served
                        .iter()
                        .any(|e| e.path == path && e.method.eq_ignore_ascii_case(method)),
                    "openapi.json documents {method} {path}, which is not served"
                );
            }
        }
    }
}
