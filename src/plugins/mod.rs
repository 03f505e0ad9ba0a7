//! The plugins that ship with Frontdesk, one file per kind, and the one explicit list of them.
//!
//! Kind order on the request (lower first): authentication 100s, limits 200s, transforms 500s,
//! terminal answers 900s. See docs/plugins.md.

pub mod headers;
pub mod jwt;
pub mod respond;

use frontdesk_config::{FieldPath, PluginsConfig};

use crate::plugin::{ChainBuilder, Scope};

/// Builds every configured plugin of one scope into `b`. Adding a kind means one line here.
pub fn register_all(b: &mut ChainBuilder, cfg: &PluginsConfig, scope: Scope, at: &FieldPath) {
    b.add::<jwt::Jwt>(cfg.jwt.as_ref(), scope, at);
    b.add::<headers::Headers>(cfg.headers.as_ref(), scope, at);
    b.add::<respond::Respond>(cfg.respond.as_ref(), scope, at);
}
