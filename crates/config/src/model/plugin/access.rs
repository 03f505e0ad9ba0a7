//! Config of the access plugins that need no identity: `ip_filter`, `cors`, `request_size`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Dur};

/// Allow and deny lists of client addresses (CIDR or single addresses).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    /// When set, only these networks pass.
    #[serde(default)]
    pub allow: Vec<String>,
    /// These networks get 403, even when also allowed.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Cross-origin resource sharing.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins (`https://app.example.com`), or `*`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods allowed in preflights.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers allowed in preflights.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow credentials (cookies, `Authorization`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default)]
    pub max_age: Option<Dur>,
}

/// A cap on the request body.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestSizeConfig {
    /// Largest body accepted; over it: 413.
    pub max_body: ByteSize,
}
