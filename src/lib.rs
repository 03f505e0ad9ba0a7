//! Frontdesk: an API gateway. The modules are layers in a request's order, each importing only
//! the ones below it (docs/architecture.md): [`runtime`] (and [`admin`], through a narrow handle)
//! → [`listener`] → [`server`] → [`proxy`] → [`snapshot`] (one compiled config generation) →
//! [`plugins`] → [`plugin`] chain, [`route`], [`upstream`], [`limit`] → [`body`], [`tls`],
//! [`consumer`] → [`observe`] → [`error`] → the config crate.

pub mod admin;
pub mod aggregate;
pub mod body;
pub mod cache;
pub mod clock;
pub mod consumer;
pub mod demo;
pub mod error;
pub mod grpc;
pub mod http1;
pub mod inplace;
pub mod limit;
pub mod listener;
pub mod observe;
pub mod plugin;
pub mod plugins;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;

pub use frontdesk_config as config;
pub use runtime::Gateway;
