//! A gateway binary with one plugin kind of its own, `envelope`, built on the plugin body API
//! (docs/plugins.md, "A complete example"). It uses all three kinds of body work:
//!
//! - a **buffered** response phase: a JSON answer is read whole (up to `max_body`) and wrapped
//!   as `{"data": <answer>, "request_id": "..."}`; `Content-Length` is set by the gateway;
//! - a **streaming** filter: every other answer streams through a filter that counts its bytes
//!   and adds them as a trailer (`x-body-bytes`), which HTTP/2 clients and HTTP/1.1 clients
//!   sending `TE: trailers` receive;
//! - the **logging** phase: one line per finished exchange, with the status and sizes.
//!
//! Run: `cargo run --example envelope_plugin -- CONFIG.yaml`, with a route such as
//! `plugins: { custom: { envelope: { max_body: 65536 } } }`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use frontdesk::body::BodyFrame;
use frontdesk::plugin::{
    BodyAction, BodyFilter, BufferCap, Buffered, BuildEnv, Ctx, FrameSink, OverCap, Phases, Plugin,
    PluginError, PluginFactory, ResponseHead, Summary,
};
use http::{header, HeaderMap, HeaderValue, StatusCode};

/// `plugins.custom.envelope`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeConfig {
    /// The largest JSON answer wrapped; larger ones pass untouched.
    max_body: u64,
}

/// The `envelope` plugin.
pub struct Envelope {
    max_body: u64,
}

impl PluginFactory for Envelope {
    const KIND: &'static str = "envelope";
    // With the transforms (500s): after access checks and limits on the request, and on the
    // response before `compression` (450) compresses what it made.
    const ORDER: u16 = 510;
    type Config = EnvelopeConfig;

    fn build(cfg: &EnvelopeConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        if cfg.max_body == 0 {
            return Err("max_body: must be at least 1".into());
        }
        Ok(Arc::new(Envelope {
            max_body: cfg.max_body,
        }))
    }
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[async_trait]
impl Plugin for Envelope {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases {
            response_body: true,
            log: true,
            ..Phases::REQUEST
        }
    }

    fn response_body(&self, resp: &mut ResponseHead, _cx: &mut Ctx) -> BodyAction {
        // An encoded body is not JSON to us; leave it alone.
        if resp.headers.contains_key(header::CONTENT_ENCODING) {
            return BodyAction::Pass;
        }
        if is_json(&resp.headers) {
            return BodyAction::Buffer(BufferCap {
                max: self.max_body,
                over: OverCap::Pass,
            });
        }
        // An HTTP/1.1 client gets only the trailers the head names (HTTP/2 ones get all).
        resp.headers
            .append(header::TRAILER, HeaderValue::from_static("x-body-bytes"));
        BodyAction::Stream(Box::new(ByteCount(0)))
    }

    async fn response_body_buffered(
        &self,
        _resp: &mut ResponseHead,
        body: &mut Buffered,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        let data: serde_json::Value = serde_json::from_slice(&body.data).map_err(|_| {
            PluginError::new(StatusCode::BAD_GATEWAY, "the upstream's JSON is not valid")
        })?;
        let wrapped = serde_json::json!({
            "data": data,
            "request_id": cx.request_id.to_str().unwrap_or(""),
        });
        body.data = Bytes::from(wrapped.to_string());
        Ok(())
    }

    fn log(&self, s: &Summary, cx: &Ctx) {
        tracing::info!(
            route = %cx.route,
            status = s.status.as_u16(),
            sent = s.bytes_sent,
            received = s.bytes_received,
            completed = s.completed,
            ms = s.duration.as_millis() as u64,
            "envelope: exchange over"
        );
    }
}

/// Counts a streamed body's bytes and adds them as a trailer at its end.
struct ByteCount(u64);

impl BodyFilter for ByteCount {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        if let Some(d) = frame.data_ref() {
            self.0 += d.len() as u64;
        }
        out.push(frame);
        Ok(())
    }

    fn end(&mut self, out: &mut FrameSink) -> Result<(), PluginError> {
        let mut t = HeaderMap::new();
        t.insert("x-body-bytes", HeaderValue::from(self.0));
        // Merged with the upstream's own trailers, if it sent any.
        out.push_trailers(t);
        Ok(())
    }
}

/// Makes `envelope` a kind configs may name under `plugins.custom`.
pub fn register() {
    frontdesk::plugin::register_custom::<Envelope>();
}

fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: envelope_plugin CONFIG.yaml");
        return std::process::ExitCode::FAILURE;
    };
    {
        use tracing_subscriber::util::SubscriberInitExt as _;
        let levels = tracing_subscriber::EnvFilter::try_from_env("FRONTDESK_LOG")
            .unwrap_or_else(|_| "info".into());
        frontdesk::observe::otlp::log_subscriber(levels).init();
    }
    // Before any config is loaded.
    register();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let run = rt.block_on(async {
        let signals = frontdesk::runtime::Signals::install()?;
        let gw = frontdesk::Gateway::start(std::path::Path::new(&path))
            .await
            .map_err(std::io::Error::other)?;
        gw.run_until_signal(signals).await
    });
    match run {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
