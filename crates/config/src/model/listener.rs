//! Listener settings: where the gateway accepts connections and the limits it enforces there.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Dur};

pub use super::listener_tls::ListenerTlsConfig;

/// A socket that accepts HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on one port.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs and to match listeners across reloads.
    pub name: String,
    /// `IP:PORT` to bind, e.g. `127.0.0.1:8080` or `[::]:80`.
    pub address: String,
    /// Request limits enforced before any route or plugin runs.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Terminate TLS here (HTTPS, with ALPN `h2` and `http/1.1`).
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// Answer every request with `308` to the same host and path over HTTPS, on the first TLS
    /// listener's port (omitted when it is 443). Only for listeners without `tls`.
    #[serde(default)]
    pub redirect_https: bool,
    /// Peers (CIDR or addresses) whose `X-Forwarded-For` is believed: for a request from one of
    /// them, the client address is the right-most `X-Forwarded-For` entry not in this list.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// Limits on what a client may send. Requests over a limit never reach an upstream.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Request line plus all header lines; over it the client gets 431.
    pub max_request_head: ByteSize,
    /// Number of header fields; over it the client gets 431.
    pub max_headers: usize,
    /// Length of the request target; over it the client gets 414.
    pub max_uri: ByteSize,
    /// Time from the first byte of a request to the end of its head; over it: 408 and close.
    pub head_timeout: Dur,
    /// How long a keep-alive connection may wait, with no request in flight, for its next request.
    pub idle_timeout: Dur,
    /// How long writing a response to the client may make no progress (the client reads nothing)
    /// before the connection is closed and its upstream connection released.
    pub send_timeout: Dur,
    /// How long a request body may send nothing (between two reads) before the request is
    /// answered 408 and the connection closed. Absent means no limit.
    #[serde(default)]
    pub body_timeout: Option<Dur>,
    /// Largest request body accepted; over it the client gets 413. Absent means no limit.
    #[serde(default)]
    pub max_request_body: Option<ByteSize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        use std::time::Duration;
        LimitsConfig {
            max_request_head: ByteSize(32 * 1024),
            max_headers: 100,
            max_uri: ByteSize(8 * 1024),
            head_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(60)),
            send_timeout: Dur(Duration::from_secs(60)),
            body_timeout: None,
            max_request_body: None,
        }
    }
}
