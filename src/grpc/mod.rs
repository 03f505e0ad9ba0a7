//! gRPC translation: what the `grpc_transcode` plugin (and `frontdesk proto`) stand on.
//! Descriptors (a `FileDescriptorSet` file, or the upstream's server reflection), the HTTP
//! bindings of `google.api.http` path templates, the gRPC message framing, JSON ↔ protobuf by
//! the proto3 JSON mapping (prost-reflect), and gRPC statuses as HTTP problems.
//!
//! Below the plugins and above `error`: it knows nothing of exchanges or connections.

pub mod descriptors;
pub mod frame;
pub mod reflect;
pub mod status;
pub mod template;
pub mod transcode;
