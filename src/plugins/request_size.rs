//! `request_size`: cap the request body of a route with `413`.
//!
//! A declared `Content-Length` over the cap is refused at once, before a byte of the body is read
//! and before the upstream is contacted. Any other body (chunked, HTTP/2 without a length) is
//! counted as it streams by a body filter, which fails it with `413` once it passes the cap (the
//! listener's `max_request_body` applies too: the smaller wins).

use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::RequestSizeConfig;
use http::{header, StatusCode};

use crate::body::BodyFrame;
use crate::plugin::{
    BodyAction, BodyFilter, BuildEnv, Ctx, Flow, FrameSink, Phases, Plugin, PluginError,
    PluginFactory, RequestHead,
};

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
        Phases {
            request_body: true,
            ..Phases::REQUEST
        }
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        _cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        // hyper has already refused malformed or conflicting lengths; what is left parses.
        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max) {
            return Err(too_large(self.max));
        }
        Ok(Flow::Continue)
    }

    fn request_body(&self, _req: &mut RequestHead, _cx: &mut Ctx) -> BodyAction {
        BodyAction::Stream(Box::new(Counter {
            max: self.max,
            seen: 0,
        }))
    }
}

/// Counts a request body's bytes as they stream; fails it past the cap.
struct Counter {
    max: u64,
    seen: u64,
}

impl BodyFilter for Counter {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        if let Some(d) = frame.data_ref() {
            self.seen += d.len() as u64;
            if self.seen > self.max {
                // As the listener's own limit words it.
                return Err(PluginError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is too large",
                ));
            }
        }
        out.push(frame);
        Ok(())
    }
}

fn too_large(max: u64) -> PluginError {
    PluginError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {max} bytes"),
    )
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
    }

    #[test]
    fn a_streamed_body_fails_once_past_the_cap() {
        let mut c = Counter { max: 10, seen: 0 };
        let mut out = FrameSink::default();
        let chunk = || http_body::Frame::data(bytes::Bytes::from_static(b"12345"));
        assert!(c.frame(chunk(), &mut out).is_ok());
        assert!(c.frame(chunk(), &mut out).is_ok());
        let e = c.frame(chunk(), &mut out).expect_err("past the cap");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
