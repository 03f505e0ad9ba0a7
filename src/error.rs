//! The gateway error: every failure on the request path folds into [`GatewayError`], which maps to
//! an HTTP status and a problem+json body in exactly one place (`proxy::error_response`).

use http::{HeaderName, HeaderValue, StatusCode};

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

impl GatewayError {
    /// A client error.
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
