//! The plugins that ship with Frontdesk, one file per kind, and the one explicit list of them.
//!
//! Kind order on the request (lower first): access and authentication 100s, limits 200s-300s,
//! transforms 500s, terminal answers 900s. See docs/plugins.md.

pub mod cors;
pub mod headers;
pub mod ip_filter;
pub mod request_size;
pub mod respond;

use frontdesk_config::{FieldPath, PluginsConfig};

use crate::plugin::{ChainBuilder, Scope};

/// Builds every configured plugin of one scope into `b`. Adding a kind means one line here.
pub fn register_all(b: &mut ChainBuilder, cfg: &PluginsConfig, scope: Scope, at: &FieldPath) {
    b.add::<ip_filter::IpFilter>(cfg.ip_filter.as_ref(), scope, at);
    b.add::<cors::Cors>(cfg.cors.as_ref(), scope, at);
    b.add::<request_size::RequestSize>(cfg.request_size.as_ref(), scope, at);
    b.add::<headers::Headers>(cfg.headers.as_ref(), scope, at);
    b.add::<respond::Respond>(cfg.respond.as_ref(), scope, at);
}
