//! `frontdesk transform`: runs a route's transform on a body offline, as the gateway would,
//! and prints the result (a dry run to put in CI).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use frontdesk_config::{Config, TransformConfig};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};

use super::{jq, request_info, response_info, transformed_head, Env, Transform};

/// What the offline run pretends the exchange was.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// Transform the request (else the response).
    pub request: bool,
    /// The request's method.
    pub method: String,
    /// The request's path, with its query if any.
    pub path: String,
    /// Headers, `name: value`: the request's with `request`, else the response's.
    pub headers: Vec<String>,
    /// Path parameters, `name=value`.
    pub params: Vec<String>,
    /// The response's status.
    pub status: u16,
}

/// The result: the body, and the head as the transform left it.
#[derive(Debug)]
pub struct Outcome {
    /// The transformed body.
    pub body: Bytes,
    /// The request's method (request side).
    pub method: Option<Method>,
    /// The request's target (request side).
    pub uri: Option<Uri>,
    /// The headers after the transform.
    pub headers: HeaderMap,
}

/// Finds route `route` in `cfg` (a loaded config) and runs its `transform` (the route's own,
/// else the global one) on `body`. Errors are one line each, ready to print.
pub fn run_route(cfg: &Config, route: &str, ex: &Exchange, body: Bytes) -> Result<Outcome, String> {
    run(route_transform(cfg, route)?, ex, body)
}

/// The transform that applies on route `name`.
pub fn route_transform<'c>(cfg: &'c Config, name: &str) -> Result<&'c TransformConfig, String> {
    let route = cfg
        .routes
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("no route is named {name:?}"))?;
    route
        .plugins
        .transform
        .as_ref()
        .or(cfg.plugins.transform.as_ref())
        .ok_or_else(|| format!("route {name:?} has no transform (nor is there a global one)"))
}

/// Runs `cfg` on `body` for the exchange `ex`.
pub fn run(cfg: &TransformConfig, ex: &Exchange, body: Bytes) -> Result<Outcome, String> {
    let t = Transform::new(cfg)?;
    let side = if ex.request { &t.request } else { &t.response };
    let side = side.as_ref().ok_or_else(|| {
        format!(
            "the transform has no {} side",
            if ex.request { "request" } else { "response" }
        )
    })?;
    let method = Method::from_bytes(ex.method.as_bytes())
        .map_err(|_| format!("invalid method {:?}", ex.method))?;
    let mut uri =
        Uri::try_from(ex.path.as_str()).map_err(|_| format!("invalid path {:?}", ex.path))?;
    let mut headers = HeaderMap::new();
    for h in &ex.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("a header is `name: value`, not {h:?}"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value =
            HeaderValue::from_str(v.trim()).map_err(|_| format!("invalid header value for {k}"))?;
        headers.append(name, value);
    }
    let params: Vec<(Arc<str>, String)> = ex
        .params
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (Arc::from(k), v.to_string()))
                .ok_or_else(|| format!("a parameter is `name=value`, not {p:?}"))
        })
        .collect::<Result<_, _>>()?;
    let status =
        StatusCode::from_u16(ex.status).map_err(|_| format!("invalid status {}", ex.status))?;
    let request_headers = if ex.request {
        headers.clone()
    } else {
        HeaderMap::new()
    };
    let mut vars = vec![request_info(&method, &uri, &request_headers, &params, None)];
    if !ex.request {
        vars.push(response_info(status, &headers));
    }
    let mut env = Env {
        headers: &mut headers,
        uri: ex.request.then_some(&mut uri),
        params: &params,
        vars,
        budget: jq::Budget::new(Instant::now() + t.jq_timeout),
    };
    let out = t.run(side, &body, &mut env).map_err(|f| match f {
        super::Failure::Bad(detail, _) => {
            format!("the body is not what the transform expects: {detail}")
        }
        super::Failure::Refused(e) => {
            format!("a fail step answered {}: {}", e.status.as_u16(), e.message)
        }
        super::Failure::Timeout => "the jq time bound passed".into(),
        super::Failure::TooLarge => "the result is larger than max_output".into(),
        super::Failure::OverCap => "the body is larger than max_body".into(),
    })?;
    transformed_head(&mut headers, &side.content_type);
    let method = if ex.request {
        Some(side.method.clone().unwrap_or(method))
    } else {
        None
    };
    Ok(Outcome {
        body: out,
        method,
        uri: ex.request.then_some(uri),
        headers,
    })
}

/// The command (the binary loads the config): reads the body from standard input, prints the result to standard output (with
/// `head`, the head first, as `name: value` lines and a blank line), or the error to standard
/// error with exit status 1.
pub fn main(cfg: &Config, route: &str, ex: &Exchange, head: bool) -> std::process::ExitCode {
    use std::io::{Read as _, Write as _};
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("error: reading the body from standard input: {e}");
        return std::process::ExitCode::FAILURE;
    }
    match run_route(cfg, route, ex, Bytes::from(body)) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if head {
                let mut text = String::new();
                match (&out.method, &out.uri) {
                    (Some(m), Some(u)) => text.push_str(&format!("{m} {u}\n")),
                    _ => text.push_str(&format!("{}\n", ex.status)),
                }
                for (k, v) in &out.headers {
                    text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
                }
                text.push('\n');
                let _ = stdout.write_all(text.as_bytes());
            }
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = stdout.write_all(&out.body);
            let _ = stdout.flush();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
