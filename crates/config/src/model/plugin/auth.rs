//! Config of the authentication plugins (`key_auth`, `jwt`, `basic_auth`, `client_cert`) and of
//! `acl`. Several auth plugins on one route mean any one of them may identify the caller.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Dur;

/// API keys from a header or a query parameter.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthConfig {
    /// Header carrying the key.
    #[serde(default = "default_key_header")]
    pub header: String,
    /// Query parameter carrying the key; off unless set.
    #[serde(default)]
    pub query: Option<String>,
    /// Consumer to go on as when no auth plugin found credentials.
    #[serde(default)]
    pub anonymous: Option<String>,
    /// Send the key upstream too.
    #[serde(default)]
    pub forward_credentials: bool,
}

fn default_key_header() -> String {
    "x-api-key".into()
}

/// JSON Web Tokens in `Authorization: Bearer`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted issuers; a token's `iss` selects one.
    pub issuers: Vec<JwtIssuerConfig>,
    /// Claim naming the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Refuse valid tokens whose `consumer_claim` names no consumer.
    #[serde(default)]
    pub require_consumer: bool,
    /// Upstream headers filled from claims (`header: claim`); client-sent values are removed.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Consumer to go on as when no auth plugin found credentials.
    #[serde(default)]
    pub anonymous: Option<String>,
    /// Send the `Authorization` header upstream too.
    #[serde(default)]
    pub forward_credentials: bool,
}

fn default_consumer_claim() -> String {
    "sub".into()
}

fn default_leeway() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

/// One accepted token issuer: keys from a JWKS URL or a shared secret.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Where the issuer publishes its public keys (JWKS).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// HMAC secret for HS256/384/512.
    #[serde(default)]
    pub secret: Option<String>,
    /// Accepted `aud` values; a token must name one. Absent: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted algorithms (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256,
    /// HS384, HS512); the token's own `alg` must be one of them.
    pub algorithms: Vec<String>,
}

/// `Authorization: Basic` against consumers' `basic_auth` credentials.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// Realm in the `WWW-Authenticate` challenge.
    #[serde(default)]
    pub realm: Option<String>,
    /// Consumer to go on as when no auth plugin found credentials.
    #[serde(default)]
    pub anonymous: Option<String>,
    /// Send the `Authorization` header upstream too.
    #[serde(default)]
    pub forward_credentials: bool,
}

/// Identification by the verified client certificate of the connection.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    /// Consumer to go on as when no auth plugin found credentials.
    #[serde(default)]
    pub anonymous: Option<String>,
    /// Accepted for symmetry with the other auth plugins; a certificate is never forwarded.
    #[serde(default)]
    pub forward_credentials: bool,
}

/// Access by consumer group.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// Consumers in one of these groups pass; others get 403.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// Consumers in one of these groups get 403.
    #[serde(default)]
    pub deny_groups: Vec<String>,
}
