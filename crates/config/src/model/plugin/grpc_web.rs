//! Config of the `grpc_web` plugin: gRPC-Web clients (browsers) to gRPC upstreams.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// gRPC-Web to gRPC: `application/grpc-web` (binary) and `application/grpc-web-text` (base64)
/// requests go to the route's HTTP/2 upstream as `application/grpc`, and its answers (trailers
/// included) come back in the gRPC-Web form the client used. Other requests pass untouched.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpcWebConfig {
    /// Accept `application/grpc-web-text` (base64) requests as well as binary ones. Default
    /// `true`; with `false` text requests pass untouched (the upstream then refuses them).
    #[serde(default = "yes")]
    pub text: bool,
    /// On a response that carries `Access-Control-Allow-Origin` (the `cors` plugin allowed the
    /// page's origin), add `grpc-status`, `grpc-message` and `grpc-status-details-bin` to
    /// `Access-Control-Expose-Headers`, so the page can read the status. Default `true`.
    #[serde(default = "yes")]
    pub expose_headers: bool,
}

impl Default for GrpcWebConfig {
    fn default() -> Self {
        GrpcWebConfig {
            text: true,
            expose_headers: true,
        }
    }
}

fn yes() -> bool {
    true
}
