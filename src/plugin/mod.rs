//! The plugin pipeline: the [`Plugin`] trait that every plugin implements, the chain that runs one
//! phase across a route's plugins, and the registry that builds chains from config.
//!
//! Plugins see requests and responses (`http` types) and a per-request [`Ctx`], never engine types.
//! Phases, in order: `request_filter` (may answer), `upstream_request_filter`, `request_body`,
//! then on the response `response_filter` and `response_body`, and `log` when the exchange is
//! over. On the request, plugins run by kind order, global before route; on the response, in
//! reverse. Bodies are [`crate::body::Body`]; body phases stream ([`BodyFilter`]) or buffer
//! ([`Buffered`]) as each plugin decides per exchange ([`BodyAction`]).

mod api;
mod body;
mod chain;
mod registry;
mod upstream_handle;

pub use api::{
    media_type, Ctx, Flow, Phases, Plugin, PluginError, PluginResponse, RequestHead, ResponseHead,
    Summary, VerifiedClaims,
};
pub use body::{BodyAction, BodyFilter, BufferCap, Buffered, FrameSink, OverCap};
pub use chain::{
    PhaseError, PluginChain, X_ANONYMOUS_CONSUMER, X_CONSUMER_GROUPS, X_CONSUMER_NAME,
};
pub use registry::{register_custom, BuildEnv, ChainBuilder, PluginFactory, RouteTarget, Scope};
pub use upstream_handle::UpstreamHandle;
