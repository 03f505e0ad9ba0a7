//! The `grpc_transcode` plugin: gRPC methods as JSON over HTTP (docs/grpc.md).
//!
//! A request whose method and path match a binding (a `google.api.http` annotation of the
//! descriptors, or a configured rule) becomes a gRPC call to the route's upstream: `POST
//! /package.Service/Method` with the request message built from the path variables, the query
//! and the JSON body. The answer becomes JSON: one object for a unary method, NDJSON, SSE or a
//! JSON array for a server-streaming one, each message written as it arrives; a non-OK status
//! becomes its HTTP status with a problem body. A native gRPC request (`application/grpc*`)
//! passes untouched, so one route can serve both.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::body::{Body, BodyFrame};
use crate::grpc::frame::Decoder;
use crate::grpc::status::GrpcStatus;
use crate::grpc::transcode::{self, Call, Lookup, StreamWriter, TranscodeError, Transcoder};
use crate::grpc::{descriptors, status};
use crate::plugin::{
    BodyAction, BodyFilter, BufferCap, Buffered, BuildEnv, Ctx, Flow, FrameSink, OverCap, Phases,
    Plugin, PluginError, PluginFactory, RequestHead, ResponseHead,
};
use frontdesk_config::{GrpcTranscodeConfig, StreamFormat};

/// The plugin: one compiled transcoder per configured scope.
pub struct GrpcTranscode {
    tc: Arc<Transcoder>,
    /// The route upstream's response timeout, sent as `grpc-timeout` when the client sent none.
    deadline: Option<Duration>,
    stream_format: StreamFormat,
    max_message: usize,
}

impl PluginFactory for GrpcTranscode {
    const KIND: &'static str = "grpc_transcode";
    // Last before the terminal answers (`respond`, 900): on the request after `cache` (800), so
    // a stored answer skips transcoding, and after `transform` (510), which sees the client's
    // JSON; on the response first, so the cache stores and `transform` reshapes JSON.
    const ORDER: u16 = 850;
    type Config = GrpcTranscodeConfig;

    fn build(cfg: &GrpcTranscodeConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        let upstream = env.route_target.as_ref().map(|t| t.upstream.as_str());
        let pool = match (&cfg.descriptors.file, cfg.descriptors.reflect) {
            (Some(f), _) => {
                descriptors::from_file(f).map_err(|e| format!("descriptors.file: {e}"))?
            }
            (None, true) => {
                let source = descriptors::source(cfg.descriptors.url.as_deref(), upstream)
                    .ok_or("descriptors: reflect without url needs a route with an upstream")?;
                match descriptors::reflected(&source) {
                    Ok(pool) => pool,
                    // A check fetches nothing: the bindings are checked when the config loads.
                    Err(_) if env.offline => return Ok(Arc::new(Offline)),
                    Err(e) => return Err(format!("descriptors: {e}")),
                }
            }
            (None, false) => return Err("descriptors: needs file or reflect: true".into()),
        };
        let max_message = usize::try_from(cfg.max_message_size.0).unwrap_or(usize::MAX);
        let tc = Transcoder::new(
            pool,
            &cfg.services,
            &cfg.rules,
            transcode::Options {
                ignore_unknown_fields: cfg.ignore_unknown_fields,
                emit_defaults: cfg.emit_defaults,
                proto_names: cfg.proto_names,
                max_message,
            },
        )?;
        if tc.bindings().is_empty() {
            return Err(
                "no method has an HTTP binding: annotate methods with google.api.http or add rules"
                    .into(),
            );
        }
        Ok(Arc::new(GrpcTranscode {
            tc: Arc::new(tc),
            deadline: upstream
                .and_then(|u| env.upstreams.get(u))
                .map(|u| u.timeout),
            stream_format: cfg.stream_format,
            max_message,
        }))
    }
}

/// What a config check builds for a transcoder whose descriptors come by reflection: never
/// serves (checks build snapshots that never go live).
struct Offline;

impl Plugin for Offline {
    fn kind(&self) -> &'static str {
        "grpc_transcode"
    }
}

/// One transcoded exchange, kept in the context from request to response.
#[derive(Clone)]
struct State {
    call: Call,
    query: Option<String>,
    /// The framed request message, when it came from the path and query alone.
    prepared: Option<Bytes>,
    format: StreamFormat,
    /// What the response phase decided.
    answer: Answer,
}

#[derive(Clone)]
enum Answer {
    /// Not decided yet (before the response head).
    Pending,
    /// Not a gRPC answer (a gateway error, another plugin's answer): left alone.
    Untouched,
    /// A status without messages (trailers-only): this problem document.
    Problem(Bytes),
    /// Messages follow: one JSON object.
    Unary,
    /// Messages follow: a stream in `State::format`.
    Stream,
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

/// The request's body may be JSON by its content type: anything but a type that names another
/// format (XML, multipart, binary). `curl -d` sends `application/x-www-form-urlencoded`, so
/// that one is read as JSON too.
fn json_body(h: &HeaderMap) -> bool {
    let Some(t) = h
        .get(header::CONTENT_TYPE)
        .and_then(crate::plugin::media_type)
    else {
        return true;
    };
    !(t.ends_with("/xml")
        || t.ends_with("+xml")
        || t.starts_with("multipart/")
        || t == "application/octet-stream"
        || t.contains("protobuf"))
}

fn refusal(e: TranscodeError) -> PluginError {
    match e {
        TranscodeError::Request(m) => {
            PluginError::new(StatusCode::BAD_REQUEST, m).with_reason("bad_request")
        }
        TranscodeError::Response(m) => {
            PluginError::new(StatusCode::BAD_GATEWAY, m).with_reason("bad_upstream")
        }
    }
}

/// `grpc-timeout` for a duration: the largest unit that keeps at most 8 digits.
fn grpc_timeout(d: Duration) -> HeaderValue {
    let ms = d.as_millis().max(1);
    let v = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("1S"))
}

#[async_trait]
impl Plugin for GrpcTranscode {
    fn kind(&self) -> &'static str {
        "grpc_transcode"
    }

    fn phases(&self) -> Phases {
        Phases {
            log: false,
            ..Phases::ALL
        }
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        if is_grpc(&req.headers) {
            return Ok(Flow::Continue);
        }
        let call = match self.tc.lookup(&req.method, req.uri.path()) {
            Lookup::Found(c) => c,
            Lookup::NotFound => {
                return Err(PluginError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no gRPC method is bound to {} {}",
                        req.method,
                        req.uri.path()
                    ),
                )
                .with_reason("not_found"))
            }
            Lookup::MethodNotAllowed(allowed) => {
                let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
                let mut e = PluginError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{} is bound to {} only", req.uri.path(), list.join(", ")),
                )
                .with_reason("method_not_allowed");
                if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
                    e = e.with_header(header::ALLOW, v);
                }
                return Err(e);
            }
        };
        let b = &call.binding;
        let takes_body = b.body != transcode::BodyField::None;
        if takes_body && !json_body(&req.headers) {
            return Err(PluginError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON (application/json)",
            )
            .with_reason("unsupported_media_type"));
        }
        let query = req.uri.query().map(str::to_string);
        // A call without a body is built now: a bad path or query is refused before anything
        // is sent.
        let prepared = if takes_body {
            None
        } else {
            Some(
                self.tc
                    .request(&call, query.as_deref(), b"")
                    .map_err(refusal)?,
            )
        };
        let format = if b.method.is_server_streaming() {
            transcode::stream_format(req.headers.get(header::ACCEPT), self.stream_format)
        } else {
            StreamFormat::Ndjson
        };
        let h = &mut req.headers;
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::ACCEPT_ENCODING);
        h.remove("grpc-encoding");
        h.remove("grpc-accept-encoding");
        if !h.contains_key("grpc-timeout") {
            if let Some(d) = self.deadline {
                h.insert("grpc-timeout", grpc_timeout(d));
            }
        }
        req.method = Method::POST;
        cx.ext.insert(State {
            call,
            query,
            prepared,
            format,
            answer: Answer::Pending,
        });
        Ok(Flow::Continue)
    }

    async fn upstream_request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        if let Some(st) = cx.ext.get::<State>() {
            req.uri = http::Uri::from(st.call.binding.grpc_path.clone());
            req.method = Method::POST;
        }
        Ok(())
    }

    fn request_body(&self, _req: &mut RequestHead, cx: &mut Ctx) -> BodyAction {
        let Some(st) = cx.ext.get_mut::<State>() else {
            return BodyAction::Pass;
        };
        if let Some(p) = st.prepared.take() {
            return BodyAction::Replace(Body::full(p));
        }
        if st.call.binding.method.is_client_streaming() {
            return BodyAction::Stream(Box::new(NdjsonIn {
                tc: self.tc.clone(),
                call: st.call.clone(),
                line: BytesMut::new(),
                max: self.max_message,
            }));
        }
        BodyAction::Buffer(BufferCap {
            max: self.max_message as u64,
            over: OverCap::Fail,
        })
    }

    async fn request_body_buffered(
        &self,
        _req: &mut RequestHead,
        body: &mut Buffered,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        let Some(st) = cx.ext.get::<State>() else {
            return Ok(());
        };
        let (call, query) = (st.call.clone(), st.query.clone());
        body.data = self
            .tc
            .request(&call, query.as_deref(), &body.data)
            .map_err(refusal)?;
        body.trailers = None;
        Ok(())
    }

    async fn response_filter(
        &self,
        resp: &mut ResponseHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        let request_id = cx.request_id.clone();
        let Some(st) = cx.ext.get_mut::<State>() else {
            return Ok(());
        };
        if !is_grpc(&resp.headers) {
            st.answer = Answer::Untouched;
            return Ok(());
        }
        let h = &mut resp.headers;
        let trailers_only = GrpcStatus::from_headers(h);
        let streaming = st.call.binding.method.is_server_streaming();
        st.answer = match trailers_only {
            Some(s) if s.code != 0 => {
                let doc = s.problem(self.tc.pool(), Some(&request_id));
                resp.status = status::http_status(s.code);
                Answer::Problem(Bytes::from(doc.to_string()))
            }
            Some(_) if !streaming => {
                let s = GrpcStatus {
                    code: 13,
                    message: "the upstream answered OK without a response message".into(),
                    details: None,
                };
                resp.status = StatusCode::BAD_GATEWAY;
                Answer::Problem(Bytes::from(
                    s.problem(self.tc.pool(), Some(&request_id)).to_string(),
                ))
            }
            _ if streaming => Answer::Stream,
            _ => Answer::Unary,
        };
        let ct = match &st.answer {
            Answer::Problem(_) => "application/problem+json",
            Answer::Stream => transcode::stream_content_type(st.format),
            _ => "application/json",
        };
        let h = &mut resp.headers;
        for name in [
            "grpc-status",
            "grpc-message",
            "grpc-status-details-bin",
            "grpc-encoding",
            "grpc-accept-encoding",
        ] {
            h.remove(name);
        }
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        h.remove(header::CONTENT_LENGTH);
        if matches!(st.answer, Answer::Stream) {
            // Each message as it arrives: no proxy buffering on the way (nginx honours this).
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        Ok(())
    }

    fn response_body(&self, _resp: &mut ResponseHead, cx: &mut Ctx) -> BodyAction {
        let Some(st) = cx.ext.get::<State>() else {
            return BodyAction::Pass;
        };
        match &st.answer {
            Answer::Pending | Answer::Untouched => BodyAction::Pass,
            Answer::Problem(doc) => BodyAction::Replace(Body::full(doc.clone())),
            Answer::Unary => BodyAction::Buffer(BufferCap {
                max: self.max_message as u64 + 5,
                over: OverCap::Fail,
            }),
            Answer::Stream => BodyAction::Stream(Box::new(StreamOut {
                tc: self.tc.clone(),
                call: st.call.clone(),
                frames: Decoder::new(self.max_message),
                out: StreamWriter::new(st.format),
                request_id: cx.request_id.clone(),
                done: false,
            })),
        }
    }

    async fn response_body_buffered(
        &self,
        resp: &mut ResponseHead,
        body: &mut Buffered,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        let Some(st) = cx.ext.get::<State>() else {
            return Ok(());
        };
        let call = st.call.clone();
        let mut frames = Decoder::new(self.max_message);
        frames.push(&body.data);
        let first = frames.next_message();
        let status = body.trailers.as_ref().and_then(GrpcStatus::from_headers);
        let problem = |s: GrpcStatus, resp: &mut ResponseHead, body: &mut Buffered| {
            resp.status = status::http_status(s.code);
            resp.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            body.data = Bytes::from(s.problem(self.tc.pool(), Some(&cx.request_id)).to_string());
            body.trailers = None;
        };
        let internal = |m: String| GrpcStatus {
            code: 13,
            message: m,
            details: None,
        };
        match status {
            Some(s) if s.code != 0 => {
                problem(s, resp, body);
                return Ok(());
            }
            None => {
                let s = internal("the upstream's answer ended without a gRPC status".into());
                problem(s, resp, body);
                resp.status = StatusCode::BAD_GATEWAY;
                return Ok(());
            }
            Some(_) => {}
        }
        let msg = match (first, frames.next_message()) {
            (Ok(Some(m)), Ok(None)) if frames.finish().is_ok() => m,
            (Err(e), _) | (_, Err(e)) => {
                problem(internal(e.to_string()), resp, body);
                resp.status = StatusCode::BAD_GATEWAY;
                return Ok(());
            }
            _ => {
                let s = internal("the upstream did not answer with exactly one message".into());
                problem(s, resp, body);
                resp.status = StatusCode::BAD_GATEWAY;
                return Ok(());
            }
        };
        match self.tc.response(&call, &msg.data) {
            Ok(json) => {
                body.data = Bytes::from(json);
                body.trailers = None;
            }
            Err(e) => {
                problem(internal(e.to_string()), resp, body);
                resp.status = StatusCode::BAD_GATEWAY;
            }
        }
        Ok(())
    }

    fn explain(&self, req: &RequestHead, _route: &str) -> Option<String> {
        if is_grpc(&req.headers) {
            return Some("gRPC request: passed through untouched".into());
        }
        Some(match self.tc.lookup(&req.method, req.uri.path()) {
            Lookup::Found(c) => format!(
                "transcoded to gRPC {} (binding {} {}{})",
                c.binding.grpc_path,
                c.binding.http_method,
                c.binding.pattern,
                if c.binding.method.is_server_streaming() {
                    ", server streaming"
                } else {
                    ""
                }
            ),
            Lookup::MethodNotAllowed(m) => format!(
                "405: the path is bound to {} only",
                m.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
            ),
            Lookup::NotFound => "404: no gRPC method is bound to this path".into(),
        })
    }
}

/// A client-streaming request: each line of newline-delimited JSON becomes one framed message
/// as it arrives.
struct NdjsonIn {
    tc: Arc<Transcoder>,
    call: Call,
    line: BytesMut,
    max: usize,
}

impl NdjsonIn {
    fn emit(&mut self, line: &[u8], out: &mut FrameSink) -> Result<(), PluginError> {
        if line.trim_ascii().is_empty() {
            return Ok(());
        }
        let framed = self.tc.stream_message(&self.call, line).map_err(refusal)?;
        out.push_data(framed);
        Ok(())
    }
}

impl BodyFilter for NdjsonIn {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        let Ok(data) = frame.into_data() else {
            return Ok(());
        };
        let mut rest = &data[..];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(nl);
            if self.line.is_empty() {
                self.emit(head, out)?;
            } else {
                self.line.extend_from_slice(head);
                let line = std::mem::take(&mut self.line);
                self.emit(&line, out)?;
            }
            rest = &tail[1..];
        }
        if self.line.len() + rest.len() > self.max {
            return Err(PluginError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a line of the body is over the message limit of {} bytes",
                    self.max
                ),
            ));
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    fn end(&mut self, out: &mut FrameSink) -> Result<(), PluginError> {
        let line = std::mem::take(&mut self.line);
        self.emit(&line, out)
    }
}

/// A server-streaming answer: each gRPC message becomes one entry in the chosen format as it
/// arrives; the status in the trailers ends it (an error entry when it is not OK).
struct StreamOut {
    tc: Arc<Transcoder>,
    call: Call,
    frames: Decoder,
    out: StreamWriter,
    request_id: HeaderValue,
    done: bool,
}

impl StreamOut {
    fn fail(&mut self, s: GrpcStatus, out: &mut FrameSink) {
        if !self.done {
            self.done = true;
            let doc = s.problem(self.tc.pool(), Some(&self.request_id));
            out.push_data(self.out.error(&doc));
        }
    }

    fn broken(e: impl ToString) -> GrpcStatus {
        GrpcStatus {
            code: 13,
            message: e.to_string(),
            details: None,
        }
    }
}

impl BodyFilter for StreamOut {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        if self.done {
            return Ok(());
        }
        match frame.into_data() {
            Ok(data) => {
                self.frames.push(&data);
                loop {
                    match self.frames.next_message() {
                        Ok(Some(m)) => match self.tc.response(&self.call, &m.data) {
                            Ok(json) => out.push_data(self.out.item(&json)),
                            Err(e) => {
                                self.fail(Self::broken(e), out);
                                return Ok(());
                            }
                        },
                        Ok(None) => break,
                        Err(e) => {
                            self.fail(Self::broken(e), out);
                            return Ok(());
                        }
                    }
                }
            }
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    match GrpcStatus::from_headers(&t) {
                        Some(s) if s.code != 0 => self.fail(s, out),
                        Some(_) => {
                            if let Err(e) = self.frames.finish() {
                                self.fail(Self::broken(e), out);
                            }
                        }
                        None => {
                            self.fail(Self::broken("the stream ended without a gRPC status"), out)
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn end(&mut self, out: &mut FrameSink) -> Result<(), PluginError> {
        if !self.done {
            self.done = true;
            out.push_data(self.out.end());
        }
        Ok(())
    }
}
