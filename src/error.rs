//! The gateway error: every failure on the request path folds into [`GatewayError`], which maps to
//! an HTTP status and a problem+json body in exactly one place: here (RFC 9457 problem+json, or a
//! gRPC trailers-only answer; `proxy::error_response` puts them in response bodies).
//!
//! Details never include upstream addresses or internal error text.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

/// Which side of the proxy caused an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream failed or was unreachable.
    Upstream,
    /// A plugin refused or failed.
    Plugin,
    /// A bug or resource problem in the gateway.
    Internal,
}

/// What kind of failure ended a request, as the access log names it (`error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matched.
    NoRoute,
    /// Missing or invalid credentials (401).
    AuthFailed,
    /// Identified but not allowed, or refused by an address rule (403).
    Forbidden,
    /// A rate limit or quota refused the request (429).
    RateLimited,
    /// The upstream could not be reached.
    UpstreamConnect,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream broke the connection or answered garbage.
    UpstreamReset,
    /// The request was malformed or over a limit.
    BadRequest,
    /// The upstream's circuit breaker is open, or too many requests are in flight to it.
    CircuitOpen,
    /// Every target of the upstream is unhealthy.
    NoHealthyTarget,
    /// A plugin or the gateway could not serve the request (a concurrency limit, a failed store).
    Unavailable,
    /// A bug or resource problem in the gateway.
    Internal,
}

impl ErrorKind {
    /// The access log's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::AuthFailed => "auth_failed",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamReset => "upstream_reset",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::NoHealthyTarget => "no_healthy_target",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind of a client or plugin refusal, from its status.
    fn of_status(status: StatusCode) -> ErrorKind {
        match status.as_u16() {
            401 => ErrorKind::AuthFailed,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NoRoute,
            429 => ErrorKind::RateLimited,
            400..=499 => ErrorKind::BadRequest,
            503 => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

/// A request failure with its HTTP status. `detail` is safe to show clients: it never names
/// upstream addresses.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{status}: {detail}")]
pub struct GatewayError {
    /// Who caused it.
    pub origin: ErrorSource,
    /// The status the client gets.
    pub status: StatusCode,
    /// A human explanation for the problem body.
    pub detail: String,
    /// Whether another endpoint could serve the request.
    pub retryable: bool,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`); usually none.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What kind of failure it is, for logs.
    pub kind: ErrorKind,
}

// The constructors are `#[cold]`: every call is on a failure path, which the compiler then lays
// out away from the request's hot code (fewer instruction-cache misses per request; see
// bench/RESULTS.md, "fifth pass").
impl GatewayError {
    /// A client error.
    #[cold]
    pub fn downstream(status: StatusCode, detail: impl Into<String>) -> Self {
        GatewayError {
            origin: ErrorSource::Downstream,
            status,
            detail: detail.into(),
            retryable: false,
            headers: Vec::new(),
            kind: ErrorKind::of_status(status),
        }
    }

    /// An upstream error.
    #[cold]
    pub fn upstream(status: StatusCode, detail: impl Into<String>, retryable: bool) -> Self {
        GatewayError {
            origin: ErrorSource::Upstream,
            status,
            detail: detail.into(),
            retryable,
            headers: Vec::new(),
            kind: ErrorKind::UpstreamReset,
        }
    }

    /// A plugin error.
    #[cold]
    pub fn plugin(status: StatusCode, detail: impl Into<String>) -> Self {
        GatewayError {
            origin: ErrorSource::Plugin,
            status,
            detail: detail.into(),
            retryable: false,
            headers: Vec::new(),
            kind: ErrorKind::of_status(status),
        }
    }

    /// The same error with another kind.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// An internal error.
    #[cold]
    pub fn internal(detail: impl Into<String>) -> Self {
        GatewayError {
            origin: ErrorSource::Internal,
            status: StatusCode::INTERNAL_SERVER_ERROR,
            detail: detail.into(),
            retryable: false,
            headers: Vec::new(),
            kind: ErrorKind::Internal,
        }
    }
}

/// The problem document for a status and detail.
pub fn problem_json(status: StatusCode, detail: &str, request_id: Option<&HeaderValue>) -> Bytes {
    let mut doc = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        doc["request_id"] = id.into();
    }
    Bytes::from(doc.to_string())
}

/// A problem+json response for `err`.
pub fn to_response(err: &GatewayError, request_id: Option<&HeaderValue>) -> Response<Bytes> {
    let body = problem_json(err.status, &err.detail, request_id);
    let mut resp = Response::new(body);
    *resp.status_mut() = err.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    for (name, value) in &err.headers {
        h.append(name.clone(), value.clone());
    }
    resp
}

/// The response for `err` to a request: a gRPC trailers-only answer when the request is gRPC
/// (gRPC clients read `grpc-status`, never an HTTP body), problem+json otherwise.
pub fn for_request(
    err: &GatewayError,
    request_id: Option<&HeaderValue>,
    grpc: bool,
) -> Response<Bytes> {
    if !grpc {
        return to_response(err, request_id);
    }
    let mut resp = Response::new(Bytes::new());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(grpc_status(err.status)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&err.detail)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// The gRPC code for an HTTP status, as gRPC's HTTP-to-gRPC status mapping defines it.
fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded: printable ASCII except `%` passes as is.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A complete HTTP/1.1 response, as raw bytes, for refusals made below hyper (bad heads, timeouts).
/// It always closes the connection.
/// `id` is the refusal's request id (the refused request never got one).
pub fn raw_http1(status: StatusCode, detail: &str, id: &HeaderValue) -> Vec<u8> {
    let body = problem_json(status, detail, Some(id));
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        id.to_str().unwrap_or("")
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}
