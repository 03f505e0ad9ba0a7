//! The plugin contract.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue, StatusCode};

use super::body::{BodyAction, Buffered};
use crate::body::Body;
use crate::consumer::Consumer;
use crate::tls::client_cert::ClientCert;

/// The request as plugins see it: method, URI, version, headers, extensions. The body is not
/// here: it streams through untouched unless a plugin's body phase takes it ([`BodyAction`]).
pub type RequestHead = http::request::Parts;

/// The response as plugins see it, without the body.
pub type ResponseHead = http::response::Parts;

/// A response a plugin answers with; its body may stream ([`Body::channel`], [`Body::new`]).
pub type PluginResponse = http::Response<Body>;

/// What the chain does after a plugin's `request_filter`.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next plugin, then the upstream.
    Continue,
    /// Stop and answer with this response; later plugins' request phase and the upstream are skipped,
    /// but the response phase still runs on it.
    Respond(PluginResponse),
}

/// A plugin refusing or failing a request; the client gets `status` with a problem+json body.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct PluginError {
    /// Status for the client (4xx for refusals, 5xx for failures).
    pub status: StatusCode,
    /// Safe to show the client.
    pub message: String,
    /// Headers for the refusal (`WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A short, bounded reason for metrics (`frontdesk_auth_failures_total{reason}`); by default
    /// named after the status.
    pub reason: &'static str,
    /// The `plugin` label of a counted refusal when it is not the refusing plugin's kind (the
    /// auth plugins' joint "no credentials" refusal is labelled with all their kinds).
    pub plugin: Option<Arc<str>>,
}

impl PluginError {
    /// A refusal or failure with this status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PluginError {
            status,
            message: message.into(),
            headers: Vec::new(),
            reason: match status.as_u16() {
                401 => "invalid_credentials",
                403 => "forbidden",
                429 => "rate_limited",
                _ => "refused",
            },
            plugin: None,
        }
    }

    /// Sets the metrics reason (a fixed identifier, never request data).
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = reason;
        self
    }

    /// Adds a header to the refusal.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// The claims of the token that identified the caller, kept in [`Ctx::ext`] by the plugin that
/// verified it (`jwt`): what selects on claims after authentication (client profiles) reads.
#[derive(Clone, Debug)]
pub struct VerifiedClaims(pub Arc<serde_json::Map<String, serde_json::Value>>);

/// Per-request state shared by every phase of every plugin.
#[derive(Debug)]
pub struct Ctx {
    /// The request id (`x-request-id`), as forwarded upstream and echoed to the client.
    pub request_id: HeaderValue,
    /// The matched route's name.
    pub route: Arc<str>,
    /// The peer address of the downstream connection.
    pub client: SocketAddr,
    /// The client's address: the peer's, or from `X-Forwarded-For` when the peer is one of the
    /// listener's `trusted_proxies` (IPv4-mapped IPv6 addresses are given as IPv4).
    pub client_ip: IpAddr,
    /// Who the caller is, once an authentication plugin identified them; `None` for an
    /// anonymous or unnamed caller (see `plugins::auth` for how the auth plugins settle it).
    pub consumer: Option<Arc<Consumer>>,
    /// True when the caller went on as an auth plugin's `anonymous` consumer.
    pub anonymous: bool,
    /// The route template's path parameters (`{user}` in `/screens/home/{user}`), by name, as
    /// the client sent them (not percent-decoded); empty for other path rules.
    pub path_params: Vec<(Arc<str>, String)>,
    /// The client certificate the downstream connection presented and the listener verified
    /// against `tls.client_auth.ca` (mutual TLS); `None` when there is none. The same for every
    /// request on the connection; safe to use as the caller's identity.
    pub client_cert: Option<Arc<ClientCert>>,
    /// Typed plugin-private state (one value per type), carried from request to response and
    /// dropped when the exchange is over (its response body sent, or the client gone): a value
    /// kept here (a concurrency slot) is held exactly that long.
    pub ext: http::Extensions,
    /// Headers a request-phase plugin adds to the response, whatever it turns out to be (the
    /// upstream's, a plugin's answer or a gateway error): appended after the response phase.
    /// Cheaper than a `response_filter` that reads state back from `ext`.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The exchange's trace, for the calls plugins make through an [`super::UpstreamHandle`].
    pub(crate) trace: Option<crate::observe::trace::TraceContext>,
    /// What those calls did, for the exchange's record and trace.
    pub(crate) calls: Vec<crate::observe::CallReport>,
}

impl Ctx {
    /// A context for work a plugin does on its own after the exchange (a background refresh):
    /// this exchange's request id, route and caller, nothing of its plugin state, no trace.
    pub fn detached(&self) -> Ctx {
        Ctx {
            request_id: self.request_id.clone(),
            route: self.route.clone(),
            client: self.client,
            client_ip: self.client_ip,
            consumer: self.consumer.clone(),
            anonymous: self.anonymous,
            path_params: self.path_params.clone(),
            client_cert: self.client_cert.clone(),
            ext: http::Extensions::new(),
            response_headers: Vec::new(),
            trace: None,
            calls: Vec::new(),
        }
    }

    /// A context for unit tests of plugins.
    pub fn for_test() -> Ctx {
        Ctx {
            request_id: HeaderValue::from_static("test"),
            route: Arc::from("test"),
            client: SocketAddr::from(([127, 0, 0, 1], 40000)),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            consumer: None,
            anonymous: false,
            path_params: Vec::new(),
            client_cert: None,
            ext: http::Extensions::new(),
            response_headers: Vec::new(),
            trace: None,
            calls: Vec::new(),
        }
    }
}

/// The phases a plugin takes part in. The chain calls a plugin only in its phases: each call of
/// an `async_trait` method allocates its future, so skipping no-op phases is measurable, and a
/// route none of whose plugins has a body phase pays nothing for body phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    /// `upstream_request_filter`.
    pub upstream_request: bool,
    /// `response_filter`.
    pub response: bool,
    /// `request_body` (and `request_body_buffered`).
    pub request_body: bool,
    /// `response_body` (and `response_body_buffered`).
    pub response_body: bool,
    /// `log`.
    pub log: bool,
    /// `recover`.
    pub recover: bool,
}

impl Phases {
    /// Every phase (the default).
    pub const ALL: Phases = Phases {
        upstream_request: true,
        response: true,
        request_body: true,
        response_body: true,
        log: true,
        recover: false,
    };
    /// `request_filter` only.
    pub const REQUEST: Phases = Phases {
        upstream_request: false,
        response: false,
        request_body: false,
        response_body: false,
        log: false,
        recover: false,
    };
    /// `request_filter` and `response_filter`.
    pub const REQUEST_RESPONSE: Phases = Phases {
        response: true,
        ..Phases::REQUEST
    };
}

/// What the logging phase learns of a finished exchange.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The status the client got.
    pub status: StatusCode,
    /// Request body bytes read from the client (as sent, before any plugin changed them).
    pub bytes_received: u64,
    /// Response body bytes handed to the client's connection.
    pub bytes_sent: u64,
    /// From the request head's arrival to the end of the exchange.
    pub duration: Duration,
    /// True when the response body was sent to its end; false when the client left first or the
    /// body broke off.
    pub completed: bool,
}

/// A plugin: one instance per configured scope (global or route), shared by all requests.
///
/// Every method but `kind` has a no-op default. Implementations must not block: they run on the
/// request path.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The kind name, equal to its config key and file name.
    fn kind(&self) -> &'static str;

    /// The phases besides `request_filter` this plugin implements; the others are skipped.
    /// Must cover every phase method the plugin overrides.
    fn phases(&self) -> Phases {
        Phases::ALL
    }

    /// Runs when the request head has arrived and a route matched. Can change the request, refuse it
    /// (`Err`), or answer it (`Flow::Respond`).
    async fn request_filter(
        &self,
        _req: &mut RequestHead,
        _cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        Ok(Flow::Continue)
    }

    /// Runs just before the request goes upstream, after the gateway set forwarding headers.
    async fn upstream_request_filter(
        &self,
        _req: &mut RequestHead,
        _cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Runs on the response head before the client sees it, in reverse plugin order: on upstream
    /// responses, plugin answers, and gateway errors once a route has matched (not on 404s for
    /// unmatched requests, nor on heads refused before routing). Not run on `101` upgrades.
    async fn response_filter(
        &self,
        _resp: &mut ResponseHead,
        _cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Decides what to do with the request body on its way upstream, once every head phase ran
    /// (in plugin order). May change the head (a filter that changes the body's encoding sets
    /// `Content-Encoding`). Not run for requests a plugin answered, nor for upgrades.
    fn request_body(&self, _req: &mut RequestHead, _cx: &mut Ctx) -> BodyAction {
        BodyAction::Pass
    }

    /// The buffered request phase, after `request_body` said [`BodyAction::Buffer`]: the whole
    /// body (within the cap), to change in place along with the head. An `Err` is the client's
    /// answer (`400` for a body that is not what the plugin expects).
    async fn request_body_buffered(
        &self,
        _req: &mut RequestHead,
        _body: &mut Buffered,
        _cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Decides what to do with the response body, right after this plugin's `response_filter`
    /// (in reverse plugin order, so the body passes the plugins the way the head does). Runs on
    /// upstream responses and plugin answers; not on gateway errors or `101` upgrades. The
    /// response to a `HEAD` request, a `204` or a `304` has no body: a plugin should pass on
    /// them (the [`Ctx`] does not say the method: keep it in `ext` from `request_filter`).
    fn response_body(&self, _resp: &mut ResponseHead, _cx: &mut Ctx) -> BodyAction {
        BodyAction::Pass
    }

    /// The buffered response phase, after `response_body` said [`BodyAction::Buffer`]. An `Err`
    /// gives the client its status (`502` for a body the plugin cannot read) with a problem body.
    async fn response_body_buffered(
        &self,
        _resp: &mut ResponseHead,
        _body: &mut Buffered,
        _cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// The recovery phase: runs when the request failed upstream (an error, a timeout, no
    /// healthy target, an open circuit breaker; `status` is the gateway error's `502`, `503` or
    /// `504`), in reverse plugin order. A plugin may answer instead (a stored response); the
    /// answer then goes through the response phases like any plugin answer. Only for plugins
    /// whose [`Phases`] say `recover` (not in [`Phases::ALL`]).
    async fn recover(&self, _status: StatusCode, _cx: &mut Ctx) -> Option<PluginResponse> {
        None
    }

    /// What this plugin would do with a request, for `explain` (`frontdesk explain`, the admin
    /// API's `/explain`): a short sentence, or `None` when it has nothing to say. Runs on a
    /// request built from the explain query on route `route`; no caller is identified, nothing is
    /// sent anywhere. Must not block.
    fn explain(&self, _req: &RequestHead, _route: &str) -> Option<String> {
        None
    }

    /// The logging phase: runs once when the exchange is over (the response body sent, the
    /// client gone, or an error answered), in plugin order, with what happened. Runs inside the
    /// body's completion: it must not block; spawn a task for any I/O.
    fn log(&self, _summary: &Summary, _cx: &Ctx) {}
}

/// A `Content-Type` value's media type without its parameters, lower-cased
/// (`Application/JSON; charset=utf-8` gives `application/json`); `None` when it is not text.
pub fn media_type(v: &http::HeaderValue) -> Option<String> {
    let v = v.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}
