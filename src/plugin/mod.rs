//! The plugin pipeline: the [`Plugin`] trait that every plugin implements, the chain that runs one
//! phase across a route's plugins, and the registry that builds chains from config.
//!
//! Plugins see requests and responses (`http` types) and a per-request [`Ctx`], never engine types.
//! Phases, in order: `request_filter` (may answer), `upstream_request_filter`, `response_filter`.
//! On the request, plugins run by kind order, global before route; on the response, in reverse.

mod api;
mod chain;
mod registry;

pub use api::{
    AuthState, Ctx, Flow, Phases, Plugin, PluginError, PluginResponse, RequestHead, ResponseHead,
};
pub use chain::{PluginChain, X_ANONYMOUS_CONSUMER, X_CONSUMER_GROUPS, X_CONSUMER_NAME};
pub use registry::{BuildEnv, ChainBuilder, PluginFactory, Scope};
