//! The plugin contract.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::consumer::Consumer;
use crate::tls::client_cert::ClientCert;

/// The request as plugins see it: method, URI, version, headers, extensions. The body is not here:
/// it streams through untouched.
pub type RequestHead = http::request::Parts;

/// The response as plugins see it, without the body.
pub type ResponseHead = http::response::Parts;

/// A complete response a plugin answers with.
pub type PluginResponse = http::Response<Bytes>;

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

/// Who the caller is, as the authentication plugins found out. Auth plugins run one after the
/// other; the first that identifies the caller wins and the others step aside. After the last one
/// the chain settles it: an unidentified caller goes on as an `anonymous` consumer if one was
/// offered, or is refused with `401` and every plugin's challenge.
#[derive(Debug, Default)]
pub struct AuthState {
    /// True once a plugin identified the caller (as a consumer, or as an unnamed JWT caller).
    pub identified: bool,
    /// The consumer the caller is; `None` for an unnamed caller or before identification.
    pub consumer: Option<Arc<Consumer>>,
    /// `WWW-Authenticate` challenges of the auth plugins that found no credentials.
    pub challenges: Vec<HeaderValue>,
    /// The consumer to go on as when no plugin identifies the caller.
    pub anonymous: Option<Arc<Consumer>>,
    /// True when the request went on as the anonymous consumer.
    pub is_anonymous: bool,
}

impl AuthState {
    /// A plugin identified the caller (`None`: valid credentials that name no consumer).
    pub fn identify(&mut self, consumer: Option<Arc<Consumer>>) {
        self.identified = true;
        self.consumer = consumer;
    }

    /// A plugin found no credentials of its kind: it offers its challenge and anonymous consumer.
    pub fn missing(&mut self, challenge: HeaderValue, anonymous: Option<&Arc<Consumer>>) {
        self.challenges.push(challenge);
        if self.anonymous.is_none() {
            self.anonymous = anonymous.cloned();
        }
    }
}

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
    /// Authentication state (see [`AuthState`]).
    pub auth: AuthState,
    /// A plugin's cap on the request body, applied with the listener's (the smaller wins).
    pub max_body: Option<u64>,
    /// Values dropped when the response is over: its body fully sent, or the client gone
    /// (concurrency slots are released this way).
    pub held: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// The client certificate the downstream connection presented and the listener verified
    /// against `tls.client_auth.ca` (mutual TLS); `None` when there is none. The same for every
    /// request on the connection; safe to use as the caller's identity.
    pub client_cert: Option<Arc<ClientCert>>,
    /// Typed plugin-private state (one value per type), carried from request to response.
    pub ext: http::Extensions,
    /// Headers a request-phase plugin adds to the response, whatever it turns out to be (the
    /// upstream's, a plugin's answer or a gateway error): appended after the response phase.
    /// Cheaper than a `response_filter` that reads state back from `ext`.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Ctx {
    /// A context for unit tests of plugins.
    pub fn for_test() -> Ctx {
        Ctx {
            request_id: HeaderValue::from_static("test"),
            route: Arc::from("test"),
            client: SocketAddr::from(([127, 0, 0, 1], 40000)),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            auth: AuthState::default(),
            max_body: None,
            held: Vec::new(),
            client_cert: None,
            ext: http::Extensions::new(),
            response_headers: Vec::new(),
        }
    }
}

/// The phases a plugin takes part in. The chain calls a plugin only in its phases: each call of
/// an `async_trait` method allocates its future, so skipping no-op phases is measurable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    /// `upstream_request_filter`.
    pub upstream_request: bool,
    /// `response_filter`.
    pub response: bool,
}

impl Phases {
    /// Every phase (the default).
    pub const ALL: Phases = Phases {
        upstream_request: true,
        response: true,
    };
    /// `request_filter` only.
    pub const REQUEST: Phases = Phases {
        upstream_request: false,
        response: false,
    };
    /// `request_filter` and `response_filter`.
    pub const REQUEST_RESPONSE: Phases = Phases {
        upstream_request: false,
        response: true,
    };
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
}
