//! Consumers: identified callers, the credentials that identify them, and their groups.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An identified caller. Credentials map requests to consumers; groups drive `acl` and limits.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique name, sent upstream as `x-consumer-name`.
    pub name: String,
    /// Groups, sent upstream as `x-consumer-groups` (comma-separated) and used by `acl`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// API keys for `key_auth`: the key itself (use `${VAR}`), or `{ sha256: "<hex>" }` so the file
    /// need not hold the key.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Credentials for `basic_auth`.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthCredential>,
    /// Identification by a verified client certificate, for `client_cert`.
    #[serde(default)]
    pub client_cert: Option<ClientCertIdentity>,
}

/// An API key, in clear or as the hex SHA-256 of the key.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum ApiKeyConfig {
    /// The key itself.
    Plain(String),
    /// The key's SHA-256.
    Hashed {
        /// 64 hex digits.
        sha256: String,
    },
}

/// A username and a bcrypt hash of the password.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthCredential {
    /// The username, unique across consumers.
    pub username: String,
    /// bcrypt hash (`$2a$`, `$2b$` or `$2y$`).
    pub password_hash: String,
}

/// How a client certificate names this consumer.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertIdentity {
    /// The certificate's subject common name.
    pub subject_cn: String,
}
