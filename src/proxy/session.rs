//! One request's session: what the proxy knows of an exchange (its connection, request id,
//! observation record, route, plugin context), and the steps of its life in order:
//! [`Session::begin`], then [`Session::run`] (check, route, request phases, target, response
//! phases, end callbacks), then [`Session::finish`].

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response, StatusCode, Version};

use super::body::ResponseBody;
use super::{
    classify, client_body_error, error_response, fields, forward, plugin_error, redirect, upgrade,
    upstream_uri, ConnInfo,
};
use crate::aggregate::{Aggregate, AggregateRequest};
use crate::body::{Body, BodyError};
use crate::error::{ErrorSource, GatewayError};
use crate::http1::Seen;

/// RFC 9211's response field, as the `cache` plugin sets it.
static CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");
use crate::observe::Exchange;
use crate::plugin::{Ctx, Flow, PhaseError, RequestHead, Summary};
use crate::route::RequestKey;
use crate::snapshot::{Route, Snapshot, Target};
use crate::upstream::h1::FieldRule;
use crate::upstream::{AddedFields, BodySent, CallOptions, Upstream};

/// One exchange, from the request head to the end of the response body.
pub(super) struct Session<'c> {
    conn: &'c ConnInfo,
    request_id: HeaderValue,
    /// The client speaks gRPC: errors are answered the gRPC way.
    grpc: bool,
    /// The client speaks HTTP/1 (a failed body closes its connection).
    downstream_h1: bool,
    /// The observation record, when anything observes requests.
    ex: Option<Box<Exchange>>,
    /// The request body's bytes read, when observed or logged by a plugin.
    bytes_in: Option<Arc<AtomicU64>>,
    /// When the head arrived, for a plugin's logging phase on an unobserved request.
    started: Option<Instant>,
    /// The kinds of fields the request's head named, while only the proxy has changed it.
    seen: Seen,
}

/// A request that matched a route.
struct Matched<'s> {
    route: &'s Route,
    strip_len: usize,
    /// The path rule that matched: its parameters are computed for routes with plugins.
    rule: crate::route::MatchedRule<'s>,
    /// The request's host, as forwarded (`Host`, or the target's authority).
    host: Option<HeaderValue>,
    /// `host` is the request's own `Host` field.
    host_in_headers: bool,
}

/// An HTTP/1.1 upgrade the client asked for: its connection, and the protocol.
struct Upgrade {
    client: crate::body::Upgrade,
    protocol: HeaderValue,
}

impl<'c> Session<'c> {
    /// Starts the session of `req`, received on `conn`; `seen` is what its codec saw of its
    /// fields.
    pub(super) fn begin(
        snap: &Snapshot,
        req: &Request<Body>,
        conn: &'c ConnInfo,
        seen: Seen,
    ) -> Self {
        let mut request_id = match seen.x_fields() {
            true => forward::request_id(req.headers()),
            false => forward::generate_id(),
        };
        // Unique per request: HPACK must not index it (HTTP/2 both ways). Indexed, every value
        // would be inserted into the connection's dynamic table and evict one that repeats.
        request_id.set_sensitive(true);
        let ex = snap.observer.begin(
            req,
            &conn.listener.name,
            conn.listener.tls.is_some(),
            &request_id,
            conn.peer.ip(),
        );
        Session {
            conn,
            request_id,
            grpc: seen.content_type() && error_response::is_grpc(req.headers()),
            downstream_h1: req.version() < Version::HTTP_2,
            ex,
            bytes_in: None,
            started: None,
            seen,
        }
    }

    /// Runs the exchange to its response. Never fails: errors become responses.
    pub(super) async fn run(
        &mut self,
        snap: &Snapshot,
        mut req: Box<Request<Body>>,
    ) -> Response<ResponseBody> {
        // Only a request the codec can hand over carries the extension: the fields are looked
        // up only then.
        let upgrade = if req.version() == Version::HTTP_11
            && req.extensions().get::<crate::body::Upgrade>().is_some()
        {
            forward::wants_upgrade(req.headers()).and_then(|protocol| {
                Some(Upgrade {
                    client: req.extensions_mut().remove::<crate::body::Upgrade>()?,
                    protocol,
                })
            })
        } else {
            None
        };
        let mut host = match self.check(&mut req) {
            Ok(host) => host,
            Err(e) => return self.error_response(&e),
        };
        if self.conn.listener.redirect_https {
            return match redirect::to_https(snap, &req) {
                Ok(r) => r,
                Err(e) => self.error_response(&e),
            };
        }
        // Profiles that select by identity: the caller is identified before routing. Boxed:
        // only such configs pay for its state.
        let mut identified = None;
        if let Some(stage) = &snap.identity_stage {
            match Box::pin(self.identify(stage, *req)).await {
                Ok((r, cx)) => {
                    req = Box::new(r);
                    // Its plugins may have changed any field, `Host` included.
                    self.seen = Seen::ALL;
                    host = req.headers().get(header::HOST).cloned();
                    identified = Some(cx);
                }
                Err(answer) => return answer,
            }
        }
        let table = match snap.profiles.is_empty() {
            true => &snap.routes,
            false => self.profile_table(snap, &req, identified.as_ref()),
        };
        let matched = match self.route(table, &req, host) {
            Ok(m) => m,
            Err(e) => return self.error_response(&e),
        };
        let route = matched.route;
        // A route without plugins needs no context: nothing would read it.
        // Only plugins read the path parameters: a plugin-free route does not pay for them.
        let mut cx = match identified {
            Some(mut cx) => {
                cx.route = route.name.clone();
                cx.path_params = matched.rule.path_params(req.uri().path());
                Some(cx)
            }
            None => (!route.plugins.is_empty()).then(|| {
                let params = matched.rule.path_params(req.uri().path());
                self.context(route, &req, params)
            }),
        };
        if self.ex.is_some() && cx.is_none() {
            self.note_client_ip(&req);
        }
        let head_request = req.method() == http::Method::HEAD;
        let result = self.routed(snap, matched, req, upgrade, &mut cx).await;
        let Some(mut cx) = cx else {
            return result.unwrap_or_else(|e| self.error_response(&e));
        };
        if let Some(ex) = &mut self.ex {
            ex.consumer = cx.consumer.as_ref().map(|c| c.name.clone());
            ex.consumer_anonymous = cx.anonymous;
            ex.side_calls = std::mem::take(&mut cx.calls);
        }
        let resp = match result {
            Ok(r) => r,
            // Boxed: its states would otherwise enlarge every request's future.
            Err(e) => Box::pin(self.failed(route, e, head_request, &mut cx)).await,
        };
        if let Some(ex) = &mut self.ex {
            // A caching route's answer says what the cache did: the access log keeps it.
            ex.cache_status = resp.headers().get(&CACHE_STATUS).cloned().map(Box::new);
        }
        self.on_end(route, cx, resp)
    }

    /// The answer to a request that failed on a matched route: a plugin's (`recover`) for a
    /// failed upstream, else the error, which the response phase also sees (CORS, security
    /// headers; a plugin failing there leaves the original error in place).
    async fn failed(
        &mut self,
        route: &Route,
        e: GatewayError,
        head_request: bool,
        cx: &mut Ctx,
    ) -> Response<ResponseBody> {
        if e.origin == ErrorSource::Upstream && route.plugins.recovers() {
            if let Some(answer) = route.plugins.recover(e.status, cx).await {
                return self
                    .respond(route, answer, None, head_request, Some(cx))
                    .await
                    .unwrap_or_else(|e| self.error_response(&e));
            }
        }
        let (mut parts, body) = self.error_response(&e).into_parts();
        let _ = route.plugins.response_filter(&mut parts, cx).await;
        Response::from_parts(parts, body)
    }

    /// Ends the session's head: the request id goes back to the client, and the record (if any)
    /// rides the body until it ends.
    pub(super) fn finish(self, snap: Arc<Snapshot>, resp: &mut Response<ResponseBody>) {
        if resp.status() == StatusCode::NO_CONTENT {
            // RFC 9110 §8.6: a 204 carries no `Content-Length`, whoever made it (an upstream, a
            // plugin). hyper's servers would pass it on; the native one drops it from the lines
            // it writes too (`server::h1::encode`).
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        // The native HTTP/1 server writes it after the map's fields: a response whose fields came
        // as lines then needs no map at all. One already in the map (an upstream's, a plugin's)
        // is replaced where it stands. Both set in place: moving the response costs more.
        if self.conn.raw_heads && !resp.headers().contains_key(&forward::X_REQUEST_ID) {
            resp.body_mut().set_request_id(self.request_id);
        } else {
            resp.headers_mut()
                .insert(forward::X_REQUEST_ID.clone(), self.request_id);
        }
        if let Some(mut ex) = self.ex {
            ex.status = resp.status().as_u16();
            // The snapshot moves into the body: no shared reference count is touched.
            resp.body_mut().observe(snap, ex);
        }
    }

    #[cold]
    fn error_response(&mut self, e: &GatewayError) -> Response<ResponseBody> {
        if let Some(ex) = &mut self.ex {
            ex.error = Some(e.kind);
        }
        error_response::for_request(e, Some(&self.request_id), self.grpc)
    }

    /// Checks what every request must be before anything reads it; returns its `Host` field.
    fn check(&self, req: &mut Request<Body>) -> Result<Option<HeaderValue>, GatewayError> {
        // Before anything reads the host (routing, the HTTPS redirect, plugins, forwarding): one
        // valid host, and the target's authority wins over a `Host` that differs.
        let host = fields::check_host(req)?;
        let limits = &self.conn.listener.limits;
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
        // Without a limit there is nothing to compare the declared length with.
        let Some(body_limit) = self.conn.listener.max_body else {
            return Ok(host);
        };
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
        Ok(host)
    }

    /// Finds the request's route.
    /// Runs the identity stage (the global authentication plugins, before routing): the request
    /// with what they set on it and the context that knows the caller, or the answer when they
    /// refused or answered it (their response phase applied).
    async fn identify(
        &mut self,
        stage: &crate::plugin::PluginChain,
        req: Request<Body>,
    ) -> Result<(Request<Body>, Ctx), Response<ResponseBody>> {
        let (mut head, body) = req.into_parts();
        forward::strip_hop_by_hop(&mut head.headers);
        let probe = Request::from_parts(head, ());
        let mut cx = self.context_named(Arc::from(""), stage.logs(), &probe, Vec::new());
        let (mut head, ()) = probe.into_parts();
        let answer = match stage.request_filter(&mut head, &mut cx).await {
            Ok(Flow::Continue) => return Ok((Request::from_parts(head, body), cx)),
            Ok(Flow::Respond(r)) => r.map(ResponseBody::new),
            Err(e) => self.error_response(&plugin_error(e)),
        };
        let (mut parts, body) = answer.into_parts();
        let _ = stage.response_filter(&mut parts, &mut cx).await;
        Err(Response::from_parts(parts, body))
    }

    /// The route table of the first profile that selects `req`, or the top-level one.
    fn profile_table<'s>(
        &mut self,
        snap: &'s Snapshot,
        req: &Request<Body>,
        identified: Option<&Ctx>,
    ) -> &'s crate::route::RouteTable<Route> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .map(crate::route::normalize_host);
        let consumer = identified.and_then(|cx| cx.consumer.as_deref());
        let claims = identified
            .and_then(|cx| cx.ext.get::<crate::plugin::VerifiedClaims>())
            .map(|c| &*c.0);
        snap.profiles
            .iter()
            .find(|p| {
                p.select
                    .selects(&self.conn.listener.name, host.as_deref(), consumer, claims)
                    .is_some()
            })
            .map_or(&snap.routes, |p| &p.routes)
    }

    fn route<'s>(
        &mut self,
        table: &'s crate::route::RouteTable<Route>,
        req: &Request<Body>,
        in_headers: Option<HeaderValue>,
    ) -> Result<Matched<'s>, GatewayError> {
        let host_in_headers = in_headers.is_some();
        let host = in_headers.or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let key = RequestKey {
            host: host.as_ref().and_then(|h| h.to_str().ok()),
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
        };
        let Some(m) = table.find(&key) else {
            return Err(GatewayError::downstream(
                StatusCode::NOT_FOUND,
                "no route matches this request",
            ));
        };
        if let Some(ex) = &mut self.ex {
            ex.route = Some(m.route.series.clone());
            ex.upstream = m.route.target.upstream().map(|u| u.name.clone());
        }
        Ok(Matched {
            route: m.route,
            strip_len: m.strip_len,
            rule: m.rule(),
            host,
            host_in_headers,
        })
    }

    /// The client's address, for the record of a request no plugin sees.
    fn note_client_ip(&mut self, req: &Request<Body>) {
        let conn = self.conn;
        let ip = forward::client_ip(
            conn.peer.ip(),
            req.headers(),
            &conn.listener.trusted_proxies,
        );
        if let Some(ex) = &mut self.ex {
            ex.client_ip = Some(ip);
        }
    }

    /// The plugins' context for a request that matched `route`.
    fn context(
        &mut self,
        route: &Route,
        req: &Request<Body>,
        path_params: Vec<(Arc<str>, String)>,
    ) -> Ctx {
        self.context_named(route.name.clone(), route.plugins.logs(), req, path_params)
    }

    /// A context for route `name` (empty before routing); `logs`: a plugin has a logging phase.
    fn context_named<B>(
        &mut self,
        name: Arc<str>,
        logs: bool,
        req: &Request<B>,
        path_params: Vec<(Arc<str>, String)>,
    ) -> Ctx {
        let conn = self.conn;
        let client_ip = forward::client_ip(
            conn.peer.ip(),
            req.headers(),
            &conn.listener.trusted_proxies,
        );
        if let Some(ex) = &mut self.ex {
            ex.client_ip = Some(client_ip);
        } else if logs {
            self.started = Some(crate::clock::now());
        }
        Ctx {
            request_id: self.request_id.clone(),
            route: name,
            client: conn.peer,
            client_ip,
            client_cert: conn.client_cert.clone(),
            consumer: None,
            anonymous: false,
            path_params,
            ext: http::Extensions::new(),
            response_headers: Vec::new(),
            trace: self.ex.as_ref().and_then(|ex| ex.call.trace.clone()),
            calls: Vec::new(),
        }
    }

    /// The request phases, the route's target, the response phases.
    async fn routed(
        &mut self,
        snap: &Snapshot,
        m: Matched<'_>,
        mut req: Box<Request<Body>>,
        upgrade: Option<Upgrade>,
        cx: &mut Option<Ctx>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let bodiless = req.method() == http::Method::HEAD;
        // Before the plugins: they see no hop-by-hop headers and no client-made consumer headers.
        if self.seen.strippable() {
            forward::strip_hop_by_hop(req.headers_mut());
        }
        let plugins = &m.route.plugins;
        if let Some(cx) = cx.as_mut() {
            let (mut head, body) = take_parts(&mut req);
            let flow = plugins.request_filter(&mut head, cx).await;
            *req = Request::from_parts(head, body);
            match flow.map_err(plugin_error)? {
                Flow::Continue => {}
                Flow::Respond(answer) => {
                    return self
                        .respond(m.route, answer, None, bodiless, Some(cx))
                        .await;
                }
            }
        }
        match &m.route.target {
            Target::Upstream(upstream) => {
                self.forward(snap, &m, upstream, req, upgrade, bodiless, cx)
                    .await
            }
            Target::Aggregate(agg) => {
                // Boxed: only aggregate routes pay for its state in their futures.
                Box::pin(self.aggregate(&m, agg, req, bodiless, cx)).await
            }
            Target::Respond => Err(GatewayError::internal(
                "the route has no upstream and no plugin answered",
            )),
        }
    }

    /// Answers with an aggregate's calls, then runs the response phases on its answer. Each
    /// call is reported like a plugin's side call (and traced under its own span).
    async fn aggregate(
        &mut self,
        m: &Matched<'_>,
        agg: &Arc<Aggregate>,
        mut req: Box<Request<Body>>,
        head_request: bool,
        cx: &mut Option<Ctx>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let body = std::mem::take(req.body_mut());
        let (body, _sent) = self
            .request_body(m.route, &mut req, body, cx.as_mut())
            .await?;
        let (head, _) = (*req).into_parts();
        let conn = self.conn;
        let (client_ip, params) = match cx.as_ref() {
            Some(cx) => (cx.client_ip, cx.path_params.clone()),
            None => (
                forward::client_ip(
                    conn.peer.ip(),
                    &head.headers,
                    &conn.listener.trusted_proxies,
                ),
                m.rule.path_params(head.uri.path()),
            ),
        };
        let answered = agg
            .answer(AggregateRequest {
                request_id: self.request_id.clone(),
                path: head.uri.path().to_string(),
                query: head.uri.query().map(str::to_string),
                method: head.method,
                headers: head.headers,
                params,
                client_ip,
                trace: self.ex.as_ref().and_then(|ex| ex.call.trace.clone()),
                observed: self.ex.is_some(),
                body,
            })
            .await?;
        if let Some(ex) = &mut self.ex {
            ex.call_spans = answered.spans;
            if answered.error.is_some() {
                ex.error = answered.error;
            }
            match cx.as_mut() {
                // The session moves the context's calls into the record once the route is done.
                Some(cx) => cx.calls.extend(answered.reports),
                None => ex.side_calls.extend(answered.reports),
            }
        }
        self.respond(m.route, answered.response, None, head_request, cx.as_mut())
            .await
    }

    /// Forwards the request to `upstream`, then runs the response phases on its answer.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &mut self,
        snap: &Snapshot,
        m: &Matched<'_>,
        upstream: &Upstream,
        mut req: Box<Request<Body>>,
        upgrade: Option<Upgrade>,
        head_request: bool,
        cx: &mut Option<Ctx>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let conn = self.conn;
        let plugins = &m.route.plugins;
        let https = conn.listener.tls.is_some();
        let mut added = AddedFields::new();
        if cx.is_none()
            && upstream.writes_added_fields()
            && !(self.seen.forwarding() && forward::names_forwarding(req.headers()))
        {
            // No plugin will read the forwarding fields and the client sent none to append to:
            // the connection writes them after the request's own, and the map is not touched.
            let host = m.host.as_ref();
            forward::forwarding_fields(&mut added, &conn.peer_value, host, &snap.via, https);
            added.push((&forward::X_REQUEST_ID, self.request_id.clone()));
        } else {
            forward::add_forwarding(
                req.headers_mut(),
                &conn.peer_value,
                m.host.as_ref(),
                &snap.via,
                https,
            );
            req.headers_mut()
                .insert(forward::X_REQUEST_ID.clone(), self.request_id.clone());
        }
        if let Some(u) = &upgrade {
            let headers = req.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u.protocol.clone());
        }
        match &m.host {
            // Unless a plugin ran, the request's own `Host` is the one to send.
            Some(_) if m.host_in_headers && cx.is_none() => {}
            Some(h) => {
                req.headers_mut().insert(header::HOST, h.clone());
            }
            None => {}
        }
        *req.uri_mut() = upstream_uri(req.uri(), m.route, m.strip_len)?;
        *req.version_mut() = Version::HTTP_11;
        if let Some(cx) = cx.as_mut() {
            let (mut head, body) = take_parts(&mut req);
            let done = plugins.upstream_request_filter(&mut head, cx).await;
            *req = Request::from_parts(head, body);
            done.map_err(plugin_error)?;
        }
        let body = std::mem::take(req.body_mut());
        let (body, body_sent) = self
            .request_body(m.route, &mut req, body, cx.as_mut())
            .await?;
        *req.body_mut() = body;

        // Without plugins nothing reads the response's fields before the client does: a native
        // HTTP/1 client connection can write them as the upstream sent them, without a map.
        let raw = conn.raw_heads && cx.is_none() && upgrade.is_none();
        let mut opts = CallOptions {
            hash: upstream.hash_of(req.headers(), req.uri().path(), conn.peer.ip()),
            preserve_host: m.route.preserve_host,
            body_sent,
            report: self.ex.as_mut().map(|ex| std::mem::take(&mut ex.call)),
            raw_fields: raw.then_some(forward::raw_rule as FieldRule),
            added,
        };
        let called = upstream.call(req, &mut opts).await;
        if let (Some(ex), Some(report)) = (self.ex.as_mut(), opts.report) {
            ex.call = report;
        }
        let (mut resp, lease) = called.map_err(|e| classify(&e, self.downstream_h1))?;

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(client), Some(upstream_io)) = (
                upgrade,
                resp.extensions_mut().remove::<crate::body::Upgrade>(),
            ) else {
                return Err(GatewayError::upstream(
                    StatusCode::BAD_GATEWAY,
                    "the upstream switched protocols without being asked",
                    false,
                ));
            };
            // The upstream connection becomes the tunnel's; it never returns to the pool.
            drop(lease);
            upgrade::spawn_tunnel(client.client, upstream_io, conn.tunnels.clone());
            // Keep `Connection`/`Upgrade` on a 101: they are the handshake.
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, ResponseBody::empty()));
        }
        // The gateway answers in its own HTTP version, not the upstream's (RFC 9110 §6.2): an
        // HTTP/1.0 origin would otherwise make hyper answer an HTTP/1.1 client in HTTP/1.0,
        // close-delimited when the length is unknown (a streaming filter), without trailers, and
        // closing the client's connection. hyper still answers HTTP/1.0 clients in HTTP/1.0.
        *resp.version_mut() = Version::HTTP_11;
        let headers = resp.headers_mut();
        // With the fields as lines, the connection's own were left out already and the map is
        // empty.
        if lease.raw_fields().is_none() {
            if headers.contains_key(header::TRANSFER_ENCODING) {
                // RFC 9112 §6.3: the transfer coding frames the body and `Content-Length` is
                // wrong (a smuggling vector). hyper decoded the chunks; the length must not reach
                // the client.
                headers.remove(header::CONTENT_LENGTH);
            } else if !fields::one_content_length(headers) {
                // hyper's client reads a list of differing lengths (`1, 2`) as no length and
                // passes the field on: a client or a cache behind us would frame the body by it.
                // The native client refuses such a head; so does the gateway, whichever read it.
                return Err(GatewayError::upstream(
                    StatusCode::BAD_GATEWAY,
                    "the upstream sent an invalid Content-Length",
                    false,
                ));
            }
            forward::strip_hop_by_hop(headers);
        }
        match cx.as_mut() {
            // No plugin to run: the response is wrapped where it is (an `await` on `respond`
            // would first copy it into that future).
            None => Ok(proxied(resp, Some(lease))),
            Some(cx) => {
                self.respond(m.route, *resp, Some(lease), head_request, Some(cx))
                    .await
            }
        }
    }

    /// The request body on its way upstream: the listener's limit and stall timer, the byte
    /// count, the plugins' body phases, and the signal that it has been sent (the response timer
    /// starts then, so a long upload is not cut by `timeout`).
    async fn request_body(
        &mut self,
        route: &Route,
        req: &mut Request<Body>,
        body: Body,
        cx: Option<&mut Ctx>,
    ) -> Result<(Body, BodySent), GatewayError> {
        let plugins = &route.plugins;
        let has_phase = plugins.has_request_body();
        if body.is_empty() && !has_phase {
            // Most requests: sent at once, the timer simply starts now.
            return Ok((body, BodySent::default()));
        }
        let listener = &self.conn.listener;
        let mut body = body.limited(listener.max_body.unwrap_or(u64::MAX));
        if let Some(after) = listener.transfer.body_timeout {
            body = body.stalling_after(after);
        }
        if self.ex.is_some() || plugins.logs() {
            let counter = Arc::<AtomicU64>::default();
            if let Some(ex) = &mut self.ex {
                ex.bytes_in = Some(counter.clone());
            }
            body = body.counting(counter.clone());
            self.bytes_in = Some(counter);
        }
        if let (true, Some(cx)) = (has_phase, cx) {
            // Boxed: inline, its state would enlarge every request's future (HTTP/2 moves each
            // request's future into a task), routes without body phases included.
            let (mut head, empty) = take_parts(req);
            let filtered = Box::pin(plugins.request_body(&mut head, body, cx)).await;
            *req = Request::from_parts(head, empty);
            body = filtered.map_err(|e| self.phase_error(e))?;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        Ok((body.on_end(tx), BodySent::new(rx)))
    }

    /// The response phases on a target's answer (an upstream's or a plugin's).
    async fn respond(
        &mut self,
        route: &Route,
        resp: Response<Body>,
        lease: Option<crate::upstream::Lease>,
        head_request: bool,
        cx: Option<&mut Ctx>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let (mut parts, mut body) = resp.into_parts();
        let plugins = &route.plugins;
        match cx {
            Some(cx) if plugins.has_response_body() => {
                // Boxed, like the request body phase: only routes with body phases pay for it.
                body = Box::pin(plugins.response(&mut parts, body, head_request, cx))
                    .await
                    .map_err(|e| self.phase_error(e))?;
            }
            Some(cx) => plugins
                .response_filter(&mut parts, cx)
                .await
                .map_err(plugin_error)?,
            None => {}
        }
        Ok(Response::from_parts(parts, response_body(body, lease)))
    }

    #[cold]
    fn phase_error(&self, e: PhaseError) -> GatewayError {
        match e {
            PhaseError::Plugin(p) => plugin_error(p),
            PhaseError::Body(BodyError::Client(c)) => client_body_error(c, self.downstream_h1),
            PhaseError::Body(e) => {
                tracing::debug!(error = %e, "a body failed while a plugin read it");
                GatewayError::upstream(
                    StatusCode::BAD_GATEWAY,
                    "the upstream's response body failed",
                    false,
                )
            }
        }
    }

    /// What happens when the response body ends: the plugins' logging phase, and the end of the
    /// context (values plugins keep in it, concurrency slots, are released then).
    fn on_end(
        &mut self,
        route: &Route,
        cx: Ctx,
        resp: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let plugins = &route.plugins;
        if plugins.logs() {
            let chain = plugins.clone();
            let status = resp.status();
            let started = self
                .ex
                .as_ref()
                .map(|ex| ex.started)
                .or(self.started)
                .unwrap_or_else(crate::clock::now);
            let bytes_in = self.bytes_in.clone();
            return resp.map(|b| {
                b.on_end(Box::new(move |end| {
                    let summary = Summary {
                        status,
                        bytes_received: bytes_in
                            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed)),
                        bytes_sent: end.sent,
                        duration: crate::clock::now().saturating_duration_since(started),
                        completed: end.complete,
                    };
                    chain.log(&summary, &cx);
                }))
            });
        }
        if !cx.ext.is_empty() {
            return resp.map(|b| b.on_end(Box::new(move |_| drop(cx))));
        }
        resp
    }
}

/// Takes a request apart for a plugin phase, which sees its head ([`RequestHead`]); the request
/// is left empty, to be put back together after the phase. Only routes with plugins pay for
/// this: the others keep the request whole (and boxed) from the codec to the upstream.
fn take_parts(req: &mut Request<Body>) -> (RequestHead, Body) {
    std::mem::replace(req, Request::new(Body::empty())).into_parts()
}

/// The client's response for an upstream's, with nothing run on it.
// Taken boxed as the upstream hands it over: the call passes a pointer, not the response.
#[allow(clippy::boxed_local)]
fn proxied(
    resp: Box<Response<Body>>,
    lease: Option<crate::upstream::Lease>,
) -> Response<ResponseBody> {
    let (parts, body) = (*resp).into_parts();
    Response::from_parts(parts, response_body(body, lease))
}

/// A response body that holds the upstream connection's `lease` until it ends.
fn response_body(body: Body, lease: Option<crate::upstream::Lease>) -> ResponseBody {
    let body = ResponseBody::new(body);
    match lease {
        Some(lease) => body.leasing(lease),
        None => body,
    }
}
