//! Config of the `grpc_transcode` plugin (REST/JSON to gRPC, docs/grpc.md).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Dur};

/// Exposes the gRPC methods of the route's upstream as JSON over HTTP, by their
/// `google.api.http` annotations or by `rules` given here.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrpcTranscodeConfig {
    /// Where the service descriptions come from: a `FileDescriptorSet` file, or the upstream's
    /// gRPC server reflection.
    pub descriptors: DescriptorSource,
    /// Only these services (full names, `shop.v1.Shop`); empty: every service in the
    /// descriptors.
    #[serde(default)]
    pub services: Vec<String>,
    /// HTTP bindings for methods without `google.api.http` annotations (or in addition to them),
    /// in the shape of a service config's `http.rules`.
    #[serde(default)]
    pub rules: Vec<HttpRuleConfig>,
    /// Accept JSON fields and query parameters that name no field of the request message
    /// (ignored); by default such a request is refused with `400`.
    #[serde(default)]
    pub ignore_unknown_fields: bool,
    /// Print fields that have their default value (`0`, `""`, `false`, empty lists).
    #[serde(default)]
    pub emit_defaults: bool,
    /// Print the proto field names (`created_at`) instead of their lowerCamelCase JSON names.
    #[serde(default)]
    pub proto_names: bool,
    /// How a server-streaming method answers when the client's `Accept` does not choose.
    #[serde(default)]
    pub stream_format: StreamFormat,
    /// The largest message, either way (a JSON body, a gRPC message).
    #[serde(default = "default_max_message")]
    pub max_message_size: ByteSize,
}

fn default_max_message() -> ByteSize {
    ByteSize(4 << 20)
}

/// Where a transcoder's descriptors come from: exactly one of `file` and `reflect`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DescriptorSource {
    /// A binary `FileDescriptorSet` (`protoc --include_imports --descriptor_set_out`,
    /// `buf build -o`, `frontdesk proto pull`); relative to the config file. Read again at
    /// every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Fetch the descriptors through gRPC server reflection (`grpc.reflection.v1`, else
    /// `v1alpha`) at every load and reload. A failed fetch keeps the last set fetched and is
    /// reported as a warning; a first load without any set is refused.
    #[serde(default)]
    pub reflect: bool,
    /// The reflection server (`http://host:port` for h2c, `https://...`); by default the route
    /// upstream's first target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The bound on one reflection fetch.
    #[serde(default = "default_reflect_timeout")]
    pub timeout: Dur,
}

fn default_reflect_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

/// One HTTP binding of a gRPC method (`google.api.HttpRule`): exactly one of the method keys.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpRuleConfig {
    /// The method: `package.Service.Method` (or `package.Service/Method`).
    pub selector: String,
    /// A `GET` path template (`/v1/items/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<String>,
    /// A `PUT` path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put: Option<String>,
    /// A `POST` path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<String>,
    /// A `DELETE` path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
    /// A `PATCH` path template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Which request field the JSON body fills: `"*"` for the whole message, a field name, or
    /// absent for no body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Which response field is the answer's body; absent: the whole response message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

impl HttpRuleConfig {
    /// The HTTP method and path template the rule binds, when exactly one is given.
    pub fn binding(&self) -> Result<(&'static str, &str), String> {
        let set: Vec<(&'static str, &str)> = [
            ("GET", &self.get),
            ("PUT", &self.put),
            ("POST", &self.post),
            ("DELETE", &self.delete),
            ("PATCH", &self.patch),
        ]
        .into_iter()
        .filter_map(|(m, p)| p.as_deref().map(|p| (m, p)))
        .collect();
        match set.as_slice() {
            [one] => Ok(*one),
            [] => Err("needs one of get, put, post, delete, patch".into()),
            _ => Err("has more than one of get, put, post, delete, patch".into()),
        }
    }
}

/// The answer's shape for a server-streaming method.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// Newline-delimited JSON (`application/x-ndjson`), one message per line.
    #[default]
    Ndjson,
    /// Server-sent events (`text/event-stream`), one message per `data:` event.
    Sse,
    /// One JSON array (`application/json`), written element by element.
    JsonArray,
}
