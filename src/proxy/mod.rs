//! The proxy: the one orchestrator of a request's life. Route, run plugin phases, forward to the
//! chosen endpoint, stream the answer back ([`ResponseBody`]), and turn every failure into one
//! problem response. It owns what a request knows of its connection ([`ConnInfo`]), the request
//! field checks ([`fields`]) and the tunnels of upgraded connections ([`Tunnels`]); it knows
//! nothing of the server that hands it requests.

mod body;
pub mod error_response;
pub mod fields;
pub mod forward;
mod redirect;
mod upgrade;

pub use body::ResponseBody;
pub use upgrade::{TunnelToken, Tunnels};

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::body::{ClientBodyError, RequestBody};
use crate::error::{ErrorKind, GatewayError};
use crate::observe::Exchange;
use crate::plugin::{AuthState, Ctx, Flow, PluginError};
use crate::route::RequestKey;
use crate::snapshot::{ListenerSpec, Route, Snapshot};
use crate::tls::client_cert::ClientCert;
use crate::upstream::{BodySent, CallError, CallOptions};

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
        }
    }
}

/// Handles one downstream request against one snapshot. Never fails: errors become responses.
pub async fn handle(
    snap: Arc<Snapshot>,
    mut req: Request<Incoming>,
    conn: &ConnInfo,
) -> Response<ResponseBody> {
    let request_id = forward::request_id(req.headers());
    let grpc = error_response::is_grpc(req.headers());
    let mut ex = snap.observer.begin(
        &req,
        &conn.listener.name,
        conn.listener.tls.is_some(),
        &request_id,
        conn.peer.ip(),
    );
    let client_upgrade =
        if req.version() == Version::HTTP_11 && forward::wants_upgrade(req.headers()).is_some() {
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };
    let mut resp = match proxy(&snap, req, conn, &request_id, client_upgrade, &mut ex).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(ex) = &mut ex {
                ex.error = Some(e.kind);
            }
            error_response::for_request(&e, Some(&request_id), grpc)
        }
    };
    resp.headers_mut()
        .insert(forward::X_REQUEST_ID.clone(), request_id);
    match ex {
        Some(mut ex) => {
            ex.status = resp.status().as_u16();
            // The snapshot moves into the body: no shared reference count is touched.
            resp.map(|b| b.observed(snap, ex))
        }
        None => resp,
    }
}

async fn proxy(
    snap: &Snapshot,
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ex: &mut Option<Box<Exchange>>,
) -> Result<Response<ResponseBody>, GatewayError> {
    // Before anything reads the host (routing, the HTTPS redirect, plugins, forwarding): one
    // valid host, and the target's authority wins over a `Host` that differs.
    fields::check_host(&mut req)?;
    if conn.listener.redirect_https {
        return redirect::to_https(snap, &req);
    }
    let limits = &conn.listener.limits;
    if req.version() == Version::HTTP_2 {
        // HTTP/1 heads were checked below hyper; HTTP/2 heads are checked here.
        if req.headers().len() > limits.max_headers {
            return Err(GatewayError::downstream(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request has too many header fields",
            ));
        }
        if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > limits.max_uri {
            return Err(GatewayError::downstream(
                StatusCode::URI_TOO_LONG,
                "the request target is too long",
            ));
        }
    }
    let body_limit = conn.listener.max_body.unwrap_or(u64::MAX);
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        if len > body_limit {
            return Err(GatewayError::downstream(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {body_limit} bytes"),
            ));
        }
    }

    let host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let (route, strip_len) = {
        let key = RequestKey {
            host: host.as_ref().and_then(|h| h.to_str().ok()),
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
        };
        match snap.routes.find(&key) {
            Some(m) => (m.route, m.strip_len),
            None => {
                return Err(GatewayError::downstream(
                    StatusCode::NOT_FOUND,
                    "no route matches this request",
                ))
            }
        }
    };

    let mut cx = Ctx {
        request_id: request_id.clone(),
        route: route.name.clone(),
        client: conn.peer,
        client_ip: forward::client_ip(
            conn.peer.ip(),
            req.headers(),
            &conn.listener.trusted_proxies,
        ),
        client_cert: conn.client_cert.clone(),
        auth: AuthState::default(),
        max_body: None,
        held: Vec::new(),
        ext: http::Extensions::new(),
        response_headers: Vec::new(),
    };
    if let Some(ex) = ex {
        ex.route = Some(route.series.clone());
        ex.client_ip = Some(cx.client_ip);
        ex.upstream = route.upstream.as_ref().map(|u| u.name.clone());
    }
    let routed = Routed {
        snap,
        route,
        strip_len,
        host,
        conn,
        client_upgrade,
        body_limit,
    };
    let grpc = !route.plugins.is_empty() && error_response::is_grpc(req.headers());
    let result = forward_routed(routed, req, &mut cx, ex).await;
    if let Some(ex) = ex {
        ex.consumer = cx.auth.consumer.as_ref().map(|c| c.name.clone());
        ex.consumer_anonymous = cx.auth.is_anonymous;
    }
    match result {
        Ok(resp) => Ok(resp),
        Err(e) if !route.plugins.is_empty() => {
            if let Some(ex) = ex {
                ex.error = Some(e.kind);
            }
            // The response phase also sees gateway errors on a matched route (CORS, security
            // headers). A plugin failing here leaves the original error in place.
            let (mut parts, body) =
                error_response::for_request(&e, Some(request_id), grpc).into_parts();
            let _ = route.plugins.response_filter(&mut parts, &mut cx).await;
            Ok(Response::from_parts(parts, body))
        }
        Err(e) => Err(e),
    }
}

/// A request that matched a route, with what forwarding needs.
struct Routed<'a> {
    snap: &'a Snapshot,
    route: &'a Route,
    strip_len: usize,
    host: Option<HeaderValue>,
    conn: &'a ConnInfo,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    body_limit: u64,
}

/// Runs the plugin phases and forwards to the route's upstream.
async fn forward_routed(
    r: Routed<'_>,
    req: Request<Incoming>,
    cx: &mut Ctx,
    ex: &mut Option<Box<Exchange>>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Routed {
        snap,
        route,
        strip_len,
        host,
        conn,
        client_upgrade,
        body_limit,
    } = r;
    let request_id = cx.request_id.clone();
    let downstream_h1 = req.version() < Version::HTTP_2;
    let (mut head, body) = req.into_parts();
    let upgrade = client_upgrade
        .as_ref()
        .and_then(|_| forward::wants_upgrade(&head.headers));
    // Before the plugins: they see no hop-by-hop headers and no client-made consumer headers.
    forward::strip_hop_by_hop(&mut head.headers);
    let plugins = &route.plugins;
    if !plugins.is_empty() {
        match plugins
            .request_filter(&mut head, cx)
            .await
            .map_err(plugin_error)?
        {
            Flow::Continue => {}
            Flow::Respond(answer) => {
                let (mut parts, bytes) = answer.into_parts();
                plugins
                    .response_filter(&mut parts, cx)
                    .await
                    .map_err(plugin_error)?;
                return Ok(Response::from_parts(parts, ResponseBody::full(bytes)));
            }
        }
    }

    let upstream = route
        .upstream
        .as_ref()
        .ok_or_else(|| GatewayError::internal("the route has no upstream"))?;
    forward::add_forwarding(
        &mut head.headers,
        &conn.peer_value,
        host.as_ref(),
        &snap.via,
        conn.listener.tls.is_some(),
    );
    head.headers
        .insert(forward::X_REQUEST_ID.clone(), request_id.clone());
    if let Some(proto) = &upgrade {
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(header::UPGRADE, proto.clone());
    }
    if let Some(h) = host {
        head.headers.insert(header::HOST, h);
    }
    head.uri = upstream_uri(&head.uri, route, strip_len)?;
    head.version = Version::HTTP_11;
    if !plugins.is_empty() {
        plugins
            .upstream_request_filter(&mut head, cx)
            .await
            .map_err(plugin_error)?;
    }

    // The response timer starts once the request body is fully sent (or dropped), so a long
    // upload is not cut by `timeout`; it bounds the upstream's think time, like nginx's read timeout.
    // A request without a body (most of them) is sent at once: the timer simply starts now.
    let body_limit = cx.max_body.map_or(body_limit, |m| m.min(body_limit));
    let (body, body_sent) = if body.is_end_stream() {
        (RequestBody::new(body, body_limit), BodySent::default())
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut body = RequestBody::new(body, body_limit).on_end(tx);
        if let Some(after) = conn.listener.transfer.body_timeout {
            body = body.stalling_after(after);
        }
        if let Some(ex) = ex {
            let counter = std::sync::Arc::default();
            ex.bytes_in = Some(std::sync::Arc::clone(&counter));
            body = body.counting(counter);
        }
        (body, BodySent::new(rx))
    };
    let mut opts = CallOptions {
        hash: upstream.hash_of(&head.headers, head.uri.path(), conn.peer.ip()),
        preserve_host: route.preserve_host,
        body_sent,
        report: ex.as_mut().map(|ex| std::mem::take(&mut ex.call)),
    };
    let upstream_req = Request::from_parts(head, body);
    let called = upstream.call(upstream_req, &mut opts).await;
    if let (Some(ex), Some(report)) = (ex.as_mut(), opts.report) {
        ex.call = report;
    }
    let (mut resp, lease) = called.map_err(|e| classify(&e, downstream_h1))?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        match (client_upgrade, upgrade) {
            (Some(client), Some(_)) => {
                // The upstream connection becomes the tunnel's; it never returns to the pool.
                drop(lease);
                let upstream_io = hyper::upgrade::on(&mut resp);
                upgrade::spawn_tunnel(client, upstream_io, conn.tunnels.clone());
                // Keep `Connection`/`Upgrade` on a 101: they are the handshake.
                let (parts, _) = resp.into_parts();
                return Ok(Response::from_parts(parts, ResponseBody::empty()));
            }
            _ => {
                return Err(GatewayError::upstream(
                    StatusCode::BAD_GATEWAY,
                    "the upstream switched protocols without being asked",
                    false,
                ))
            }
        }
    }

    let (mut parts, body) = resp.into_parts();
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        // RFC 9112 §6.3: the transfer coding frames the body and `Content-Length` is wrong (a
        // smuggling vector). hyper decoded the chunks; the length must not reach the client.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    forward::strip_hop_by_hop(&mut parts.headers);
    if !plugins.is_empty() {
        plugins
            .response_filter(&mut parts, cx)
            .await
            .map_err(plugin_error)?;
    }
    let mut body = ResponseBody::upstream(body, lease);
    if !cx.held.is_empty() {
        body = body.holding(std::mem::take(&mut cx.held));
    }
    Ok(Response::from_parts(parts, body))
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

fn plugin_error(e: PluginError) -> GatewayError {
    let mut g = GatewayError::plugin(e.status, e.message);
    g.headers = e.headers;
    g
}

/// A request body that failed as the client's fault: a 4xx. A broken, abandoned or stalled body
/// also closes an HTTP/1 connection: where its next request would start cannot be known. (After
/// a body over the limit, hyper drains what is left of it when that is little, and the
/// connection goes on.)
fn client_body_error(e: ClientBodyError, downstream_h1: bool) -> GatewayError {
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
        CallError::ClientBody(e) => return client_body_error(*e, downstream_h1),
    };
    GatewayError::upstream(status, detail, retryable).with_kind(kind)
}
