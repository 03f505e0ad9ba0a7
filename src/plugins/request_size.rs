//! `request_size`: cap the request body of a route with `413`.
//!
//! A declared `Content-Length` over the cap is refused at once, before a byte of the body is read
//! and before the upstream is contacted. Any other body (chunked, HTTP/2 without a length) is
//! counted as it streams: the cap goes into [`Ctx::max_body`], which the proxy applies with the
//! listener's `max_request_body` (the smaller wins).

use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::RequestSizeConfig;
use http::{header, StatusCode};

use crate::plugin::{BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead};

/// The `request_size` plugin.
#[derive(Debug)]
pub struct RequestSize {
    max: u64,
}

impl PluginFactory for RequestSize {
    const KIND: &'static str = "request_size";
    const ORDER: u16 = 300;
    type Config = RequestSizeConfig;

    fn build(cfg: &RequestSizeConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(RequestSize {
            max: cfg.max_body.0,
        }))
    }
}

#[async_trait]
impl Plugin for RequestSize {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        // hyper has already refused malformed or conflicting lengths; what is left parses.
        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max) {
            return Err(PluginError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {} bytes", self.max),
            ));
        }
        // A global and a route cap both apply: keep the smaller.
        cx.max_body = Some(cx.max_body.map_or(self.max, |m| m.min(self.max)));
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(
        max: u64,
        content_length: Option<&str>,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let cfg = RequestSizeConfig {
            max_body: frontdesk_config::ByteSize(max),
        };
        let p = RequestSize::build(&cfg, &BuildEnv::default()).expect("builds");
        let mut b = http::Request::builder().method("POST");
        if let Some(len) = content_length {
            b = b.header("content-length", len);
        }
        let (mut head, ()) = b.body(()).expect("request").into_parts();
        p.request_filter(&mut head, cx).await
    }

    #[tokio::test]
    async fn declared_length_over_the_cap_is_413_and_at_the_cap_passes() {
        let mut cx = Ctx::for_test();
        let e = run(1024, Some("1025"), &mut cx)
            .await
            .expect_err("too large");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.message, "the request body is larger than 1024 bytes");
        assert!(matches!(
            run(1024, Some("1024"), &mut cx).await,
            Ok(Flow::Continue)
        ));
        assert_eq!(cx.max_body, Some(1024));
    }

    #[tokio::test]
    async fn streamed_bodies_get_the_cap_and_the_smaller_cap_wins() {
        let mut cx = Ctx::for_test();
        assert!(matches!(run(4096, None, &mut cx).await, Ok(Flow::Continue)));
        assert_eq!(cx.max_body, Some(4096));
        // A route cap after a global one, larger or smaller.
        assert!(matches!(run(8192, None, &mut cx).await, Ok(Flow::Continue)));
        assert_eq!(cx.max_body, Some(4096));
        assert!(matches!(run(100, None, &mut cx).await, Ok(Flow::Continue)));
        assert_eq!(cx.max_body, Some(100));
    }
}
