//! Frontdesk: an API gateway. The modules follow a request's path:
//! [`listener`] → [`server`] → [`route`] → [`plugin`] chain → [`upstream`] → [`proxy`];
//! [`snapshot`] holds one compiled config generation and [`runtime`] runs and reloads it.

pub mod admin;
pub mod body;
pub mod consumer;
pub mod demo;
pub mod error;
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
