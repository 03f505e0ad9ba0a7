//! A binary that embeds Frontdesk and adds one plugin kind of its own, `shout`: a streaming
//! response filter that upper-cases the ASCII letters of `text/plain` responses frame by frame,
//! so a body of any size passes through in constant memory.
//!
//! Run it on a config that names the kind under `plugins.custom` (on a route, or globally):
//!
//! ```yaml
//! # fragment
//! routes:
//!   - name: loud
//!     match: { paths: [/] }
//!     upstream: app
//!     plugins:
//!       custom:
//!         shout: { content_type: text/plain }
//! ```
//!
//! `cargo run --example custom_plugin -- frontdesk.yaml` (stops on SIGINT or SIGTERM, reloads
//! on SIGHUP or when the file changes, like `frontdesk run`).

use std::sync::Arc;

use async_trait::async_trait;
use frontdesk::body::BodyFrame;
use frontdesk::plugin::{
    register_custom, BodyAction, BodyFilter, BuildEnv, Ctx, FrameSink, Phases, Plugin, PluginError,
    PluginFactory, ResponseHead,
};

/// The kind's config, as written under `plugins.custom.shout`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ShoutConfig {
    /// Only responses whose `Content-Type` starts with this are changed.
    #[serde(default = "text_plain")]
    content_type: String,
}

fn text_plain() -> String {
    "text/plain".into()
}

/// One instance per configured scope, shared by every request.
struct Shout {
    content_type: String,
}

impl PluginFactory for Shout {
    const KIND: &'static str = "shout";
    // After the built-in kinds that change bodies (compression is 450): it sees the body as the
    // upstream sent it, before it is compressed for the client.
    const ORDER: u16 = 800;
    type Config = ShoutConfig;

    fn build(cfg: &ShoutConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        if cfg.content_type.is_empty() {
            return Err("content_type: must not be empty".into());
        }
        Ok(Arc::new(Shout {
            content_type: cfg.content_type.clone(),
        }))
    }
}

#[async_trait]
impl Plugin for Shout {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        // Only the response body phase: the chain skips this plugin everywhere else.
        Phases {
            response_body: true,
            ..Phases::REQUEST
        }
    }

    fn response_body(&self, resp: &mut ResponseHead, _cx: &mut Ctx) -> BodyAction {
        let textual = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(&self.content_type));
        // A compressed body is not text to this filter.
        if !textual || resp.headers.contains_key(http::header::CONTENT_ENCODING) {
            return BodyAction::Pass;
        }
        BodyAction::Stream(Box::new(ShoutFilter))
    }
}

/// The filter of one response body.
struct ShoutFilter;

impl BodyFilter for ShoutFilter {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        match frame.into_data() {
            Ok(data) => {
                let mut loud = data.to_vec();
                loud.make_ascii_uppercase();
                out.push_data(loud.into());
            }
            // Trailers pass as they are.
            Err(other) => out.push(other),
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(config) = std::env::args_os().nth(1) else {
        return Err("usage: custom_plugin <config.yaml>".into());
    };
    {
        use tracing_subscriber::util::SubscriberInitExt as _;
        let levels = tracing_subscriber::EnvFilter::try_from_env("FRONTDESK_LOG")
            .unwrap_or_else(|_| "info".into());
        frontdesk::observe::otlp::log_subscriber(levels).init();
    }
    // Before the config is loaded: a config naming `shout` is valid from then on.
    register_custom::<Shout>();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let signals = frontdesk::runtime::Signals::install()?;
            let gw = frontdesk::Gateway::start(std::path::Path::new(&config)).await?;
            gw.run_until_signal(signals).await?;
            Ok(())
        })
}
