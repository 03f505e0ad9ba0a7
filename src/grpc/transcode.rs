//! REST/JSON ↔ gRPC: the HTTP bindings of a set of descriptors (from `google.api.http`
//! annotations and configured rules), and the conversions of one call: path variables, query
//! parameters and a JSON body into a request message; response messages into JSON (the proto3
//! JSON mapping, by prost-reflect).

use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::Method;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, SerializeOptions, Value,
};
use serde_json::{Map, Value as Json};

use super::frame;
use super::template::{self, Template};
use frontdesk_config::{HttpRuleConfig, StreamFormat};

/// How a transcoder reads and prints JSON.
#[derive(Clone, Debug)]
pub struct Options {
    /// Unknown JSON fields and query parameters are ignored instead of refused.
    pub ignore_unknown_fields: bool,
    /// Fields with default values are printed.
    pub emit_defaults: bool,
    /// Proto field names instead of lowerCamelCase JSON names.
    pub proto_names: bool,
    /// The largest message either way.
    pub max_message: usize,
}

/// A call's failure to convert: the client's (`400`) or the upstream's (`502`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranscodeError {
    /// The request cannot become the method's request message.
    #[error("{0}")]
    Request(String),
    /// The upstream's message cannot be read as the method's response message.
    #[error("the upstream's response message cannot be read: {0}")]
    Response(String),
}

/// Which part of the request message the JSON body fills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyField {
    /// No body.
    None,
    /// `body: "*"`: the whole message.
    All,
    /// `body: "field"`: one (top-level) field, by proto name.
    Field(String),
}

/// One HTTP binding of a method.
#[derive(Debug)]
pub struct Binding {
    /// The HTTP method it answers.
    pub http_method: Method,
    /// The path template as written.
    pub pattern: String,
    template: Template,
    /// The gRPC method.
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: PathAndQuery,
    /// What the body fills.
    pub body: BodyField,
    /// The JSON key of the response field that is the answer (`response_body`), if any.
    response_key: Option<String>,
}

/// A request matched to a binding, with its path variables.
#[derive(Clone, Debug)]
pub struct Call {
    /// The binding.
    pub binding: Arc<Binding>,
    vars: Vec<template::Binding>,
}

/// What a request's method and path found.
#[derive(Debug)]
pub enum Lookup {
    /// A binding matched.
    Found(Call),
    /// The path is bound, but not for this method: these methods are.
    MethodNotAllowed(Vec<Method>),
    /// Nothing is bound to the path.
    NotFound,
}

/// The compiled bindings of one descriptor set.
#[derive(Debug)]
pub struct Transcoder {
    pool: DescriptorPool,
    bindings: Vec<Arc<Binding>>,
    opts: Options,
    ser: SerializeOptions,
    de: DeserializeOptions,
}

impl Transcoder {
    /// Compiles the bindings of `services` (all in `pool` when empty) from their annotations,
    /// then `rules`. Every template, selector, body and response field is checked here.
    pub fn new(
        pool: DescriptorPool,
        services: &[String],
        rules: &[HttpRuleConfig],
        opts: Options,
    ) -> Result<Transcoder, String> {
        let mut bindings = Vec::new();
        for s in services {
            if pool.get_service_by_name(s).is_none() {
                return Err(format!("services: no service {s:?} in the descriptors"));
            }
        }
        let http_ext = pool.get_extension_by_name("google.api.http");
        for svc in pool.services() {
            if !services.is_empty() && !services.iter().any(|s| s == svc.full_name()) {
                continue;
            }
            let Some(ext) = &http_ext else { break };
            for m in svc.methods() {
                let options = m.options();
                if !options.has_extension(ext) {
                    continue;
                }
                let rule = options.get_extension(ext);
                let Some(rule) = rule.as_message() else {
                    continue;
                };
                let mut add = |rule: &DynamicMessage| -> Result<(), String> {
                    let r = rule_of(rule);
                    let (verb, path) = r
                        .binding()
                        .map_err(|e| format!("{}: google.api.http {e}", m.full_name()))?;
                    bindings.push(
                        binding(&m, verb, path, &r, &opts)
                            .map_err(|e| format!("{}: google.api.http: {e}", m.full_name()))?,
                    );
                    Ok(())
                };
                add(rule)?;
                if let Some(Value::List(more)) =
                    rule.get_field_by_name("additional_bindings").as_deref()
                {
                    for b in more {
                        if let Some(b) = b.as_message() {
                            add(b)?;
                        }
                    }
                }
            }
        }
        for (i, r) in rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            let sel = r.selector.trim();
            let (svc, name) = sel
                .rsplit_once('/')
                .or_else(|| sel.rsplit_once('.'))
                .ok_or_else(|| format!("{at}.selector: {sel:?} is not package.Service.Method"))?;
            let m = pool
                .get_service_by_name(svc)
                .and_then(|s| s.methods().find(|m| m.name() == name))
                .ok_or_else(|| format!("{at}.selector: no method {sel:?} in the descriptors"))?;
            let (verb, path) = r.binding().map_err(|e| format!("{at}: {e}"))?;
            bindings.push(binding(&m, verb, path, r, &opts).map_err(|e| format!("{at}: {e}"))?);
        }
        // The most specific template first, so `/v1/items:search` wins over `/v1/items/{id}`.
        bindings.sort_by_key(|b| std::cmp::Reverse(b.template.specificity()));
        let ser = SerializeOptions::new()
            .skip_default_fields(!opts.emit_defaults)
            .use_proto_field_name(opts.proto_names);
        let de = DeserializeOptions::new().deny_unknown_fields(!opts.ignore_unknown_fields);
        Ok(Transcoder {
            pool,
            bindings: bindings.into_iter().map(Arc::new).collect(),
            opts,
            ser,
            de,
        })
    }

    /// The descriptors.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Every binding, most specific first.
    pub fn bindings(&self) -> &[Arc<Binding>] {
        &self.bindings
    }

    /// The binding for a request.
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup {
        let mut allowed = Vec::new();
        for b in &self.bindings {
            let Some(vars) = b.template.matches(path) else {
                continue;
            };
            if b.http_method == *method {
                return Lookup::Found(Call {
                    binding: b.clone(),
                    vars,
                });
            }
            if !allowed.contains(&b.http_method) {
                allowed.push(b.http_method.clone());
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed)
        }
    }

    /// The framed request message of a unary or server-streaming call: the JSON `body` (per the
    /// binding's `body`), then the path variables, then the query parameters (when the body is
    /// not the whole message).
    pub fn request(
        &self,
        call: &Call,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Bytes, TranscodeError> {
        let b = &call.binding;
        let input = b.method.input();
        let body = body.trim_ascii();
        let query = query.filter(|q| !q.is_empty() && b.body != BodyField::All);
        let msg = if call.vars.is_empty() && query.is_none() && b.body == BodyField::All {
            // The common POST: straight from the bytes, no JSON tree in between.
            self.message_of_json(input, body)?
        } else {
            let mut tree = Map::new();
            match &b.body {
                BodyField::All if !body.is_empty() => match parse_json(body)? {
                    Json::Object(m) => tree = m,
                    _ => return Err(bad("the body must be a JSON object")),
                },
                BodyField::Field(f) if !body.is_empty() => {
                    tree.insert(f.clone(), parse_json(body)?);
                }
                _ => {}
            }
            for (path, value) in &call.vars {
                set_field(&mut tree, &input, path, value, false)
                    .map_err(|e| bad(&format!("path variable {}: {e}", path.join("."))))?;
            }
            if let Some(q) = query {
                for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                    let path: Vec<String> = k.split('.').map(str::to_string).collect();
                    if call.vars.iter().any(|(p, _)| *p == path)
                        || matches!(&b.body, BodyField::Field(f) if *f == path[0])
                    {
                        continue;
                    }
                    match set_field(&mut tree, &input, &path, &v, true) {
                        Ok(()) => {}
                        Err(FieldError::Unknown) if self.opts.ignore_unknown_fields => {}
                        Err(e) => return Err(bad(&format!("query parameter {k}: {e}"))),
                    }
                }
            }
            DynamicMessage::deserialize_with_options(input, Json::Object(tree), &self.de)
                .map_err(|e| bad(&e.to_string()))?
        };
        self.framed(&msg)
    }

    /// One message of a client-streaming call, from one line of newline-delimited JSON.
    pub fn stream_message(&self, call: &Call, line: &[u8]) -> Result<Bytes, TranscodeError> {
        let msg = self.message_of_json(call.binding.method.input(), line.trim_ascii())?;
        self.framed(&msg)
    }

    fn message_of_json(
        &self,
        desc: MessageDescriptor,
        body: &[u8],
    ) -> Result<DynamicMessage, TranscodeError> {
        if body.is_empty() {
            return Ok(DynamicMessage::new(desc));
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let msg = DynamicMessage::deserialize_with_options(desc, &mut de, &self.de)
            .map_err(|e| bad(&e.to_string()))?;
        de.end().map_err(|e| bad(&e.to_string()))?;
        Ok(msg)
    }

    fn framed(&self, msg: &DynamicMessage) -> Result<Bytes, TranscodeError> {
        let bytes = msg.encode_to_vec();
        if bytes.len() > self.opts.max_message {
            return Err(bad(&format!(
                "the request message is {} bytes, over the limit of {}",
                bytes.len(),
                self.opts.max_message
            )));
        }
        Ok(frame::encode(&bytes))
    }

    /// A response message as JSON (its `response_body` field when the binding names one).
    pub fn response(&self, call: &Call, msg: &[u8]) -> Result<Vec<u8>, TranscodeError> {
        let out = DynamicMessage::decode(call.binding.method.output(), msg)
            .map_err(|e| TranscodeError::Response(e.to_string()))?;
        let mut buf = Vec::with_capacity(msg.len() * 2 + 16);
        match &call.binding.response_key {
            None => {
                out.serialize_with_options(&mut serde_json::Serializer::new(&mut buf), &self.ser)
                    .map_err(|e| TranscodeError::Response(e.to_string()))?;
            }
            Some(key) => {
                // Printed whole with defaults, so the field is there even when empty.
                let whole = out
                    .serialize_with_options(
                        serde_json::value::Serializer,
                        &self.ser.clone().skip_default_fields(false),
                    )
                    .map_err(|e| TranscodeError::Response(e.to_string()))?;
                let part = whole.get(key).cloned().unwrap_or(Json::Null);
                serde_json::to_writer(&mut buf, &part)
                    .map_err(|e| TranscodeError::Response(e.to_string()))?;
            }
        }
        Ok(buf)
    }
}

/// The shape of a server-streaming answer, chosen by the request's `Accept`: `text/event-stream`
/// is SSE, `application/x-ndjson` (or `application/jsonl`) is NDJSON, `application/json` alone is
/// a JSON array; anything else (`*/*`, none) takes the configured default.
pub fn stream_format(accept: Option<&http::HeaderValue>, default: StreamFormat) -> StreamFormat {
    let Some(a) = accept.and_then(|a| a.to_str().ok()) else {
        return default;
    };
    let types: Vec<String> = a
        .split(',')
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    if types.iter().any(|t| t == "text/event-stream") {
        StreamFormat::Sse
    } else if types.iter().any(|t| {
        t == "application/x-ndjson" || t == "application/jsonl" || t == "application/json-seq"
    }) {
        StreamFormat::Ndjson
    } else if types.iter().any(|t| t == "application/json") {
        StreamFormat::JsonArray
    } else {
        default
    }
}

/// The content type of a streaming answer.
pub fn stream_content_type(f: StreamFormat) -> &'static str {
    match f {
        StreamFormat::Ndjson => "application/x-ndjson",
        StreamFormat::Sse => "text/event-stream",
        StreamFormat::JsonArray => "application/json",
    }
}

/// Writes a server-streaming answer piece by piece in its format.
#[derive(Debug)]
pub struct StreamWriter {
    format: StreamFormat,
    items: usize,
}

impl StreamWriter {
    /// A writer for `format`.
    pub fn new(format: StreamFormat) -> Self {
        StreamWriter { format, items: 0 }
    }

    /// One message (JSON bytes).
    pub fn item(&mut self, json: &[u8]) -> Bytes {
        self.items += 1;
        let mut out = Vec::with_capacity(json.len() + 8);
        match self.format {
            StreamFormat::Ndjson => {
                out.extend_from_slice(json);
                out.push(b'\n');
            }
            StreamFormat::Sse => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(json);
                out.extend_from_slice(b"\n\n");
            }
            StreamFormat::JsonArray => {
                out.push(if self.items == 1 { b'[' } else { b',' });
                out.extend_from_slice(json);
            }
        }
        Bytes::from(out)
    }

    /// The stream failed after it started (the status came in the trailers): an error entry
    /// (`{"error": problem}` in NDJSON and arrays, an `error` event in SSE), then the end.
    pub fn error(&mut self, problem: &Json) -> Bytes {
        let entry = serde_json::json!({ "error": problem });
        let mut out = match self.format {
            StreamFormat::Sse => format!("event: error\ndata: {problem}\n\n").into_bytes(),
            _ => self.item(entry.to_string().as_bytes()).to_vec(),
        };
        out.extend_from_slice(&self.end());
        Bytes::from(out)
    }

    /// The end of the answer.
    pub fn end(&mut self) -> Bytes {
        match self.format {
            StreamFormat::JsonArray if self.items == 0 => {
                self.items = usize::MAX;
                Bytes::from_static(b"[]")
            }
            StreamFormat::JsonArray if self.items != usize::MAX => {
                self.items = usize::MAX;
                Bytes::from_static(b"]")
            }
            _ => Bytes::new(),
        }
    }
}

/// Reads a `google.api.HttpRule` (a dynamic message) as the config's rule.
fn rule_of(rule: &DynamicMessage) -> HttpRuleConfig {
    let s = |name: &str| -> Option<String> {
        if !rule.has_field_by_name(name) {
            return None;
        }
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|v| !v.is_empty())
    };
    let mut r = HttpRuleConfig {
        selector: String::new(),
        get: s("get"),
        put: s("put"),
        post: s("post"),
        delete: s("delete"),
        patch: s("patch"),
        body: s("body"),
        response_body: s("response_body"),
    };
    // `custom: { kind: "HEAD", path: ... }`: only the methods the config can name.
    if let Some(c) = rule
        .get_field_by_name("custom")
        .and_then(|c| c.as_message().cloned())
    {
        let kind = c
            .get_field_by_name("kind")
            .and_then(|k| k.as_str().map(str::to_ascii_uppercase));
        let path = c
            .get_field_by_name("path")
            .and_then(|p| p.as_str().map(str::to_string));
        if let (Some(kind), Some(path)) = (kind, path) {
            match kind.as_str() {
                "GET" => r.get = Some(path),
                "PUT" => r.put = Some(path),
                "POST" => r.post = Some(path),
                "DELETE" => r.delete = Some(path),
                "PATCH" => r.patch = Some(path),
                _ => {}
            }
        }
    }
    r
}

fn binding(
    m: &MethodDescriptor,
    verb: &str,
    path: &str,
    r: &HttpRuleConfig,
    opts: &Options,
) -> Result<Binding, String> {
    let template = Template::parse(path)?;
    let input = m.input();
    for f in template.fields() {
        resolve(&input, f).map_err(|e| format!("path variable {}: {e}", f.join(".")))?;
    }
    let body = match r.body.as_deref().map(str::trim) {
        None | Some("") => BodyField::None,
        Some("*") => BodyField::All,
        Some(f) => {
            let field = input
                .get_field_by_name(f)
                .ok_or_else(|| format!("body: {} has no field {f:?}", input.full_name()))?;
            BodyField::Field(field.name().to_string())
        }
    };
    if m.is_client_streaming() && body != BodyField::All {
        return Err("a client-streaming method needs body: \"*\"".into());
    }
    let response_key = match r.response_body.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(f) => {
            let out = m.output();
            let field = out
                .get_field_by_name(f)
                .ok_or_else(|| format!("response_body: {} has no field {f:?}", out.full_name()))?;
            Some(if opts.proto_names {
                field.name().to_string()
            } else {
                field.json_name().to_string()
            })
        }
    };
    let grpc_path =
        PathAndQuery::try_from(format!("/{}/{}", m.parent_service().full_name(), m.name()))
            .map_err(|e| e.to_string())?;
    Ok(Binding {
        http_method: Method::from_bytes(verb.as_bytes()).map_err(|e| e.to_string())?,
        pattern: path.to_string(),
        template,
        method: m.clone(),
        grpc_path,
        body,
        response_key,
    })
}

fn bad(msg: &str) -> TranscodeError {
    TranscodeError::Request(msg.to_string())
}

fn parse_json(body: &[u8]) -> Result<Json, TranscodeError> {
    serde_json::from_slice(body).map_err(|e| bad(&format!("the body is not JSON: {e}")))
}

/// Why a path variable or query parameter cannot fill a field.
#[derive(Debug, thiserror::Error)]
enum FieldError {
    #[error("names no field of the request message")]
    Unknown,
    #[error("{0}")]
    Bad(String),
}

fn field_named(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

/// The field at a dotted path, every step before the last a singular message.
fn resolve(desc: &MessageDescriptor, path: &[String]) -> Result<FieldDescriptor, FieldError> {
    let mut desc = desc.clone();
    for (i, name) in path.iter().enumerate() {
        let f = field_named(&desc, name).ok_or(FieldError::Unknown)?;
        if i + 1 == path.len() {
            return Ok(f);
        }
        match f.kind() {
            Kind::Message(m) if !f.is_list() && !f.is_map() => desc = m,
            _ => return Err(FieldError::Bad(format!("{name} is not a message"))),
        }
    }
    Err(FieldError::Unknown)
}

/// Sets the field at `path` in a JSON tree (proto field names) from a string, converted for
/// the field's type; a repeated field gets the value appended when `append`.
fn set_field(
    tree: &mut Map<String, Json>,
    desc: &MessageDescriptor,
    path: &[String],
    raw: &str,
    append: bool,
) -> Result<(), FieldError> {
    let mut obj = tree;
    let mut desc = desc.clone();
    for (i, name) in path.iter().enumerate() {
        let f = field_named(&desc, name).ok_or(FieldError::Unknown)?;
        // The body may have used the other spelling of the name: one key, the proto name.
        let existing = obj.remove(f.json_name()).or_else(|| obj.remove(f.name()));
        if i + 1 == path.len() {
            let v = scalar(&f, raw)?;
            let v = if f.is_list() {
                let mut list = match existing {
                    Some(Json::Array(a)) if append => a,
                    _ => Vec::new(),
                };
                list.push(v);
                Json::Array(list)
            } else {
                v
            };
            obj.insert(f.name().to_string(), v);
            return Ok(());
        }
        let Kind::Message(m) = f.kind() else {
            return Err(FieldError::Bad(format!("{name} is not a message")));
        };
        if f.is_list() || f.is_map() {
            return Err(FieldError::Bad(format!("{name} is a list or a map")));
        }
        desc = m;
        let entry = obj
            .entry(f.name().to_string())
            .or_insert(existing.unwrap_or(Json::Object(Map::new())));
        if !entry.is_object() {
            *entry = Json::Object(Map::new());
        }
        let Json::Object(next) = entry else {
            return Err(FieldError::Unknown);
        };
        obj = next;
    }
    Err(FieldError::Unknown)
}

/// A path or query string as the JSON value the proto3 mapping expects for the field.
fn scalar(f: &FieldDescriptor, raw: &str) -> Result<Json, FieldError> {
    if f.is_map() {
        return Err(FieldError::Bad(format!(
            "{} is a map: set it in the body",
            f.name()
        )));
    }
    scalar_of_kind(&f.kind(), raw).map_err(|e| FieldError::Bad(format!("{}: {e}", f.name())))
}

fn scalar_of_kind(kind: &Kind, raw: &str) -> Result<Json, String> {
    match kind {
        Kind::Bool => match raw {
            "true" | "1" => Ok(Json::Bool(true)),
            "false" | "0" => Ok(Json::Bool(false)),
            _ => Err(format!("{raw:?} is not a boolean")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => raw
            .parse::<i32>()
            .map(Json::from)
            .map_err(|_| format!("{raw:?} is not a 32-bit integer")),
        Kind::Uint32 | Kind::Fixed32 => raw
            .parse::<u32>()
            .map(Json::from)
            .map_err(|_| format!("{raw:?} is not an unsigned 32-bit integer")),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => raw
            .parse::<i64>()
            .map(|_| Json::String(raw.to_string()))
            .map_err(|_| format!("{raw:?} is not a 64-bit integer")),
        Kind::Uint64 | Kind::Fixed64 => raw
            .parse::<u64>()
            .map(|_| Json::String(raw.to_string()))
            .map_err(|_| format!("{raw:?} is not an unsigned 64-bit integer")),
        Kind::Float | Kind::Double => match raw {
            "NaN" | "Infinity" | "-Infinity" => Ok(Json::String(raw.to_string())),
            _ => raw
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Json::Number)
                .ok_or_else(|| format!("{raw:?} is not a number")),
        },
        Kind::String | Kind::Bytes => Ok(Json::String(raw.to_string())),
        Kind::Enum(e) => match raw.parse::<i32>() {
            Ok(n) => Ok(Json::from(n)),
            Err(_) if e.get_value_by_name(raw).is_some() => Ok(Json::String(raw.to_string())),
            Err(_) => Err(format!("{raw:?} is not a value of {}", e.full_name())),
        },
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask" => Ok(Json::String(raw.to_string())),
            n if n.starts_with("google.protobuf.")
                && n.ends_with("Value")
                && m.get_field_by_name("value").is_some() =>
            {
                let inner = m.get_field_by_name("value").map(|f| f.kind());
                match inner {
                    Some(k) => scalar_of_kind(&k, raw),
                    None => Err("not settable from a string".into()),
                }
            }
            _ => Err(format!(
                "is a message ({}): set it in the body",
                m.full_name()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn transcoder() -> Transcoder {
        let pool = DescriptorPool::decode(grpc_testsvc::DESCRIPTORS_ALL).expect("descriptors");
        Transcoder::new(
            pool,
            &[],
            &[],
            Options {
                ignore_unknown_fields: false,
                emit_defaults: false,
                proto_names: false,
                max_message: 1 << 16,
            },
        )
        .expect("bindings")
    }

    #[test]
    fn the_most_specific_binding_wins_and_methods_are_told_apart() {
        let tc = transcoder();
        let Lookup::Found(c) = tc.lookup(&Method::POST, "/v1/items:upload") else {
            panic!("upload is bound");
        };
        assert_eq!(c.binding.grpc_path, "/shop.v1.Shop/UploadItems");
        let Lookup::MethodNotAllowed(m) = tc.lookup(&Method::PUT, "/v1/items/3") else {
            panic!("405");
        };
        assert_eq!(m, [Method::GET, Method::PATCH]);
        assert!(matches!(tc.lookup(&Method::GET, "/nope"), Lookup::NotFound));
    }

    #[test]
    fn the_stream_writer_frames_each_format() {
        let mut w = StreamWriter::new(StreamFormat::JsonArray);
        let mut out = Vec::new();
        out.extend_from_slice(&w.item(b"{\"a\":1}"));
        out.extend_from_slice(&w.item(b"{\"a\":2}"));
        out.extend_from_slice(&w.error(&serde_json::json!({"status": 500})));
        out.extend_from_slice(&w.end());
        let v: serde_json::Value = serde_json::from_slice(&out).expect("one array");
        assert_eq!(v[2]["error"]["status"], 500);
        let mut w = StreamWriter::new(StreamFormat::Sse);
        assert_eq!(&w.item(b"{}")[..], b"data: {}\n\n");
        assert_eq!(
            stream_format(
                Some(&http::HeaderValue::from_static("text/html, */*")),
                StreamFormat::Sse
            ),
            StreamFormat::Sse
        );
        assert_eq!(
            stream_format(
                Some(&http::HeaderValue::from_static("application/json;q=0.9")),
                StreamFormat::Ndjson
            ),
            StreamFormat::JsonArray
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Hostile requests and upstream bytes: a refusal or a message, never a panic.
        #[test]
        fn arbitrary_requests_and_responses_never_panic(
            path in "/v1/(items|shelves|search|files|echo|fail|slow|hello)(/[a-z0-9%:.]{0,6}){0,4}",
            query in "([a-z_.A-Z]{1,12}=[a-zA-Z0-9%_-]{0,8}&?){0,5}",
            body in proptest::collection::vec(any::<u8>(), 0..64),
            json in "\\{(\"[a-zA-Z_]{1,8}\":(\"[a-z0-9]*\"|-?[0-9]{1,20}|true|null|\\[\\]|\\{\\}),?){0,4}\\}",
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let tc = transcoder();
            for m in [Method::GET, Method::POST, Method::PATCH] {
                if let Lookup::Found(call) = tc.lookup(&m, &path) {
                    let _ = tc.request(&call, Some(&query), &body);
                    let _ = tc.request(&call, Some(&query), json.as_bytes());
                    let _ = tc.stream_message(&call, json.as_bytes());
                    let _ = tc.response(&call, &bytes);
                }
            }
        }
    }
}
