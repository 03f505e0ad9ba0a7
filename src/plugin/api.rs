//! The plugin contract.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};

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
}

impl PluginError {
    /// A refusal or failure with this status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PluginError {
            status,
            message: message.into(),
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
    /// The client certificate the downstream connection presented and the listener verified
    /// against `tls.client_auth.ca` (mutual TLS); `None` when there is none. The same for every
    /// request on the connection; safe to use as the caller's identity.
    pub client_cert: Option<Arc<ClientCert>>,
    /// Typed plugin-private state (one value per type), carried from request to response.
    pub ext: http::Extensions,
}

impl Ctx {
    /// A context for unit tests of plugins.
    pub fn for_test() -> Ctx {
        Ctx {
            request_id: HeaderValue::from_static("test"),
            route: Arc::from("test"),
            client: SocketAddr::from(([127, 0, 0, 1], 40000)),
            client_cert: None,
            ext: http::Extensions::new(),
        }
    }
}

/// A plugin: one instance per configured scope (global or route), shared by all requests.
///
/// Every method but `kind` has a no-op default. Implementations must not block: they run on the
/// request path.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The kind name, equal to its config key and file name.
    fn kind(&self) -> &'static str;

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
