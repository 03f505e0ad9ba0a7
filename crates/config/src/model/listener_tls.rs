//! TLS on a listener: certificates chosen by SNI, optional client certificates.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// TLS termination settings of a listener.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Server certificates. The one whose names match the client's SNI is used; the first is the
    /// default when none matches or the client sends no SNI. Files are re-read on reload and
    /// when they change on disk.
    pub certificates: Vec<CertificateConfig>,
    /// Ask clients for a certificate, verified against `ca`.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
    /// Lowest TLS version accepted: `"1.2"` (the default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// A certificate chain and its private key, both PEM files (relative paths are relative to the
/// config file's directory).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// Client certificate verification.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM file with the CA certificates that client certificates must chain to.
    pub ca: String,
    /// `optional`: a client may send no certificate (one it sends must verify); `required`: the
    /// handshake fails without a valid certificate.
    #[serde(default)]
    pub mode: ClientAuthMode,
}

/// Whether a client certificate is required.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// Verified when sent; not required.
    #[default]
    Optional,
    /// The handshake fails without a valid certificate.
    Required,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Default, JsonSchema, Serialize, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `min_version: 1.2` (a YAML number) means the same as `"1.2"`.
        match crate::model::lenient::string(d)?.as_str() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            other => Err(serde::de::Error::custom(format!(
                "unsupported TLS version {other:?}; expected \"1.2\" or \"1.3\""
            ))),
        }
    }
}
