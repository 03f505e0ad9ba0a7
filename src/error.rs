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
        }
    }

    /// An internal error.
    pub fn internal(detail: impl Into<String>) -> Self {
        GatewayError {
            origin: ErrorSource::Internal,
            status: StatusCode::INTERNAL_SERVER_ERROR,
            detail: detail.into(),
            retryable: false,
            headers: Vec::new(),
        }
    }
}
