//! `respond`: answer with a static response; the route needs no upstream.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use frontdesk_config::RespondConfig;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::plugin::{
    BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, PluginResponse, RequestHead,
};

/// The `respond` plugin.
#[derive(Debug)]
pub struct Respond {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl PluginFactory for Respond {
    const KIND: &'static str = "respond";
    const ORDER: u16 = 900;
    type Config = RespondConfig;

    fn build(cfg: &RespondConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        let status = StatusCode::from_u16(cfg.status)
            .map_err(|_| format!("invalid status {}", cfg.status))?;
        let headers = cfg
            .headers
            .iter()
            .map(|(n, v)| {
                Ok((
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("invalid header name {n:?}"))?,
                    HeaderValue::from_str(v)
                        .map_err(|_| format!("invalid value for header {n:?}"))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(Arc::new(Respond {
            status,
            headers,
            body: Bytes::from(cfg.body.clone()),
        }))
    }
}

#[async_trait]
impl Plugin for Respond {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request_filter(
        &self,
        _req: &mut RequestHead,
        _cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let mut resp = PluginResponse::new(crate::body::Body::full(self.body.clone()));
        *resp.status_mut() = self.status;
        for (n, v) in &self.headers {
            resp.headers_mut().append(n.clone(), v.clone());
        }
        Ok(Flow::Respond(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_with_the_configured_response() {
        let cfg = RespondConfig {
            status: 418,
            body: "short and stout".into(),
            headers: [("content-type".to_string(), "text/plain".to_string())].into(),
        };
        let plugin = Respond::build(&cfg, &BuildEnv::default()).expect("builds");
        let (mut head, ()) = http::Request::new(()).into_parts();
        let Flow::Respond(resp) = plugin
            .request_filter(&mut head, &mut Ctx::for_test())
            .await
            .expect("ok")
        else {
            panic!("respond must answer");
        };
        assert_eq!(resp.status(), 418);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        let body = resp
            .into_body()
            .collect_capped(1024)
            .await
            .expect("whole body");
        assert_eq!(body.data.as_ref(), b"short and stout");
    }
}
