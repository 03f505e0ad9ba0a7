//! The proxy: the one orchestrator of a request's life, as a short list of steps on a
//! [`session::Session`]: check the request, route it, run the plugins' request phases, reach the
//! route's target (an upstream, or the plugins' own answer), run the response phases, and stream
//! the answer back ([`ResponseBody`]) with what must happen when it ends; every failure becomes
//! one problem response. It owns what a request knows of its connection ([`ConnInfo`]), the
//! request field checks ([`fields`]) and the tunnels of upgraded connections ([`Tunnels`]); it
//! knows nothing of the server that hands it requests.

mod body;
pub mod error_response;
pub mod fields;
pub mod forward;
mod redirect;
mod session;
mod upgrade;

pub use body::{EndCallback, Ended, ResponseBody};
pub use upgrade::{TunnelToken, Tunnels};

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};

use crate::body::{Body, ClientBodyError};
use crate::error::{ErrorKind, GatewayError};
use crate::plugin::PluginError;
use crate::snapshot::{ListenerSpec, Route, Snapshot};
use crate::tls::client_cert::ClientCert;
use crate::upstream::CallError;

/// What a request knows about its connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as a header value, for `X-Forwarded-For`.
    pub peer_value: http::HeaderValue,
    /// The listener's settings when the connection was accepted.
    pub listener: Arc<ListenerSpec>,
    /// Where tunnels register, so shutdown can wait for them.
    pub tunnels: Arc<Tunnels>,
    /// The client certificate verified during the TLS handshake; `None` on plain listeners,
    /// without `client_auth`, or when the client sent none (`mode: optional`). See
    /// [`ClientCert`] for what it guarantees.
    pub client_cert: Option<Arc<ClientCert>>,
    /// The downstream codec writes an upstream response's fields as lines
    /// ([`crate::upstream::Lease::raw_fields`]) and the request id from the response body
    /// ([`body::ResponseBody::request_id`]): the native HTTP/1 server.
    pub raw_heads: bool,
}

impl ConnInfo {
    /// What requests on a connection from `peer`, accepted by `listener`, know of it.
    pub fn new(
        peer: SocketAddr,
        listener: Arc<ListenerSpec>,
        tunnels: Arc<Tunnels>,
        client_cert: Option<Arc<ClientCert>>,
    ) -> ConnInfo {
        ConnInfo {
            peer,
            peer_value: forward::peer_value(peer.ip()),
            listener,
            tunnels,
            client_cert,
            raw_heads: false,
        }
    }
}

/// Handles one downstream request against one snapshot. Never fails: errors become responses.
/// The request comes boxed: it moves through several layers of futures, and each move of an
/// inline request copies its whole head. `seen` is what its codec saw of its fields
/// ([`crate::http1::Seen::ALL`] when it did not look).
pub async fn handle(
    snap: Arc<Snapshot>,
    req: Box<Request<Body>>,
    conn: &ConnInfo,
    seen: crate::http1::Seen,
) -> Response<ResponseBody> {
    let mut s = session::Session::begin(&snap, &req, conn, seen);
    let mut resp = s.run(&snap, req).await;
    s.finish(snap, &mut resp);
    resp
}

/// The upstream's request target in origin form: the (maybe stripped) path and the query.
fn upstream_uri(uri: &Uri, route: &Route, strip_len: usize) -> Result<Uri, GatewayError> {
    if !route.strip_prefix {
        // Unchanged: reuse the parsed target without copying it.
        let pq = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        return Ok(Uri::from(pq));
    }
    let pq = crate::route::stripped_path(uri.path(), strip_len, uri.query());
    Uri::try_from(pq).map_err(|_| {
        GatewayError::downstream(
            StatusCode::BAD_REQUEST,
            "the request target cannot be forwarded",
        )
    })
}

#[cold]
fn plugin_error(e: PluginError) -> GatewayError {
    let mut g = GatewayError::plugin(e.status, e.message);
    g.headers = e.headers;
    g
}

/// A request body that failed as the client's fault: a 4xx. A broken, abandoned or stalled body
/// also closes an HTTP/1 connection: where its next request would start cannot be known. (After
/// a body over the limit, hyper drains what is left of it when that is little, and the
/// connection goes on.)
#[cold]
fn client_body_error(e: ClientBodyError, downstream_h1: bool) -> GatewayError {
    if let ClientBodyError::Refused(status, message) = &e {
        // A plugin refused the body: its status and message, as for a refused head.
        let mut g = GatewayError::plugin(*status, message.to_string());
        if downstream_h1 && *status != StatusCode::PAYLOAD_TOO_LARGE {
            g.headers
                .push((header::CONNECTION, HeaderValue::from_static("close")));
        }
        return g;
    }
    let (status, detail) = match e {
        ClientBodyError::TooLarge(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        ),
        ClientBodyError::Malformed => (StatusCode::BAD_REQUEST, "the request body is malformed"),
        ClientBodyError::Aborted => (
            StatusCode::BAD_REQUEST,
            "the request body ended before it was complete",
        ),
        ClientBodyError::Stalled => (
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        ),
        ClientBodyError::Refused(..) => (StatusCode::BAD_REQUEST, "the request body was refused"),
    };
    let mut g = GatewayError::downstream(status, detail);
    if downstream_h1 && !matches!(e, ClientBodyError::TooLarge(_)) {
        // HTTP/2 has no `Connection` field: its stream simply ends.
        g.headers
            .push((header::CONNECTION, HeaderValue::from_static("close")));
    }
    g
}

/// Maps a call error to its status without revealing upstream details; `downstream_h1` when the
/// client speaks HTTP/1.
fn classify(e: &CallError, downstream_h1: bool) -> GatewayError {
    let (status, detail, retryable, kind) = match e {
        CallError::Connect(_) => (
            StatusCode::BAD_GATEWAY,
            "the upstream could not be reached",
            true,
            ErrorKind::UpstreamConnect,
        ),
        CallError::Reset(_) => (
            StatusCode::BAD_GATEWAY,
            "the upstream closed the connection or sent an invalid response",
            false,
            ErrorKind::UpstreamReset,
        ),
        CallError::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "the upstream did not answer in time",
            true,
            ErrorKind::UpstreamTimeout,
        ),
        CallError::CircuitOpen => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the upstream is failing; its circuit breaker is open",
            true,
            ErrorKind::CircuitOpen,
        ),
        CallError::Saturated => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests are in flight to the upstream",
            true,
            ErrorKind::CircuitOpen,
        ),
        CallError::NoHealthyEndpoint => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream endpoint is available",
            true,
            ErrorKind::NoHealthyTarget,
        ),
        CallError::ClientBody(e) => return client_body_error(e.clone(), downstream_h1),
    };
    GatewayError::upstream(status, detail, retryable).with_kind(kind)
}
