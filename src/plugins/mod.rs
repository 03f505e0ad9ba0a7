//! The plugins that ship with Frontdesk, one file per kind, and the one explicit list of them
//! ([`limiting`] holds what the limit kinds share).
//!
//! Kind order on the request (lower first): gRPC-Web translation 90, access and authentication
//! 100s, limits 200s-300s, transforms 500s, the cache 800, REST-to-gRPC transcoding 850, terminal
//! answers 900s. See docs/plugins.md.

pub mod acl;
pub mod auth;
pub mod basic_auth;
pub mod cache;
pub mod client_cert;
pub mod compression;
pub mod concurrency;
pub mod cors;
pub mod grpc_transcode;
pub mod grpc_web;
pub mod headers;
pub mod ip_filter;
pub mod jwt;
pub mod key_auth;
pub mod limiting;
pub mod quota;
pub mod rate_limit;
pub mod request_size;
pub mod respond;
pub mod transform;

use std::sync::Arc;

use frontdesk_config::{FieldPath, PluginsConfig};

use crate::plugin::{ChainBuilder, PluginChain, Scope};

/// Builds every configured plugin of one scope into `b`. Adding a kind means one line here.
pub fn register_all(b: &mut ChainBuilder, cfg: &PluginsConfig, scope: Scope, at: &FieldPath) {
    b.add::<grpc_web::GrpcWeb>(cfg.grpc_web.as_ref(), scope, at);
    b.add::<ip_filter::IpFilter>(cfg.ip_filter.as_ref(), scope, at);
    b.add::<cors::Cors>(cfg.cors.as_ref(), scope, at);
    b.add::<key_auth::KeyAuth>(cfg.key_auth.as_ref(), scope, at);
    b.add::<jwt::Jwt>(cfg.jwt.as_ref(), scope, at);
    b.add::<basic_auth::BasicAuth>(cfg.basic_auth.as_ref(), scope, at);
    b.add::<client_cert::ClientCertAuth>(cfg.client_cert.as_ref(), scope, at);
    b.add::<acl::Acl>(cfg.acl.as_ref(), scope, at);
    b.add::<rate_limit::RateLimit>(cfg.rate_limit.as_ref(), scope, at);
    b.add::<quota::Quota>(cfg.quota.as_ref(), scope, at);
    b.add::<concurrency::Concurrency>(cfg.concurrency.as_ref(), scope, at);
    b.add::<request_size::RequestSize>(cfg.request_size.as_ref(), scope, at);
    b.add::<compression::Compression>(cfg.compression.as_ref(), scope, at);
    b.add::<headers::Headers>(cfg.headers.as_ref(), scope, at);
    b.add::<transform::Transform>(cfg.transform.as_ref(), scope, at);
    b.add::<cache::CachePlugin>(cfg.cache.as_ref(), scope, at);
    b.add::<grpc_transcode::GrpcTranscode>(cfg.grpc_transcode.as_ref(), scope, at);
    b.add::<respond::Respond>(cfg.respond.as_ref(), scope, at);
    // Kinds registered by a binary embedding Frontdesk (`plugin::register_custom`).
    b.add_custom(&cfg.custom, scope, at);
}

/// Completes a route's chain (global and route plugins added): a chain with authentication
/// plugins settles the caller after the last of them ([`auth::Settle`]).
pub fn finish(mut b: ChainBuilder) -> PluginChain {
    let auth = b.auth_kinds();
    if !auth.is_empty() {
        b.insert(auth::Settle::ORDER, Arc::new(auth::Settle::new(&auth)));
    }
    b.finish()
}
