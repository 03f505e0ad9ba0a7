//! Plugin configuration: one typed struct per plugin kind, keyed by the kind's name.
//!
//! The same shape is used for global plugins (top-level `plugins:`) and per-route plugins.

mod access;
mod auth;
mod cache;
mod compression;
mod grpc;
mod grpc_web;
mod headers;
mod limits;
mod respond;
mod transform;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use access::{CorsConfig, IpFilterConfig, RequestSizeConfig};
pub use auth::{
    AclConfig, BasicAuthConfig, ClientCertConfig, JwtConfig, JwtIssuerConfig, KeyAuthConfig,
};
pub use cache::{
    CacheConfig, CacheLockConfig, CacheStoresConfig, CacheTier, MemoryTierConfig, RedisTierConfig,
};
pub use compression::{
    default_content_types, CompressionConfig, CompressionLevels, ContentCoding,
    RequestDecompression, LEVELS as COMPRESSION_LEVELS,
};
pub use grpc::{DescriptorSource, GrpcTranscodeConfig, HttpRuleConfig, StreamFormat};
pub use grpc_web::GrpcWebConfig;
pub use headers::{HeaderOps, HeadersConfig};
pub use limits::{
    ConcurrencyConfig, LimitConfig, LimitHeaders, LimitOverride, LimitStore, OnStoreError,
    QuotaConfig, QuotaWindow, RateLimitConfig,
};
pub use respond::RespondConfig;
pub use transform::{
    compile_jq, is_pointer, pointer_tokens, recursive_definition, template_parts, FailStep,
    InputFormat, OutputFormat, OverCapPolicy, StatusSource, Step as TransformStep, TemplatePart,
    TransformConfig, TransformSide, JQ_PRELUDE, JQ_TICK,
};

/// Plugins by kind. A kind appears at most once per scope; unknown kinds are errors.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Refuse clients by address (403).
    #[serde(default)]
    pub ip_filter: Option<IpFilterConfig>,
    /// Cross-origin resource sharing: preflights answered, response headers for allowed origins.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Identify consumers by API key.
    #[serde(default)]
    pub key_auth: Option<KeyAuthConfig>,
    /// Identify callers by JSON Web Token.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Identify consumers by `Authorization: Basic`.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// Identify consumers by their verified client certificate.
    #[serde(default)]
    pub client_cert: Option<ClientCertConfig>,
    /// Allow or deny consumers by group (403).
    #[serde(default)]
    pub acl: Option<AclConfig>,
    /// Token-bucket rate limits, local or shared through Redis (429).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Calendar quotas per day or month (429).
    #[serde(default)]
    pub quota: Option<QuotaConfig>,
    /// A cap on requests in flight (503).
    #[serde(default)]
    pub concurrency: Option<ConcurrencyConfig>,
    /// Cap the request body (413).
    #[serde(default)]
    pub request_size: Option<RequestSizeConfig>,
    /// Set, add and remove headers on the request and the response.
    #[serde(default)]
    pub headers: Option<HeadersConfig>,
    /// Answer with a static response; a route that has it needs no upstream.
    #[serde(default)]
    pub respond: Option<RespondConfig>,
    /// Compress responses (`br`, `zstd`, `gzip`); optionally decompress uploads.
    #[serde(default)]
    pub compression: Option<CompressionConfig>,
    /// Cache responses (RFC 9111) in the stores of the top-level `cache:`.
    #[serde(default)]
    pub cache: Option<CacheConfig>,
    /// Reshape request and response bodies: declarative steps or jq; JSON, XML, forms and
    /// templates (docs/transforms.md).
    #[serde(default)]
    pub transform: Option<TransformConfig>,
    /// Expose gRPC methods as JSON over HTTP (docs/grpc.md).
    #[serde(default)]
    pub grpc_transcode: Option<GrpcTranscodeConfig>,
    /// gRPC-Web clients (browsers) to a gRPC upstream: binary and base64 text requests become
    /// gRPC, answers and their trailers come back as gRPC-Web (docs/grpc.md).
    #[serde(default)]
    pub grpc_web: Option<GrpcWebConfig>,
    /// Plugins built into a binary that embeds Frontdesk as a library, by kind, each with its
    /// own config (docs/plugins.md, "Custom plugins"). The stock binary has none: a kind here is
    /// an error unless the binary registered it. Shown redacted by the admin API (every string).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub custom: std::collections::BTreeMap<String, serde_json::Value>,
}

impl PluginsConfig {
    /// True when no plugin is configured.
    pub fn is_empty(&self) -> bool {
        *self == PluginsConfig::default()
    }
}
