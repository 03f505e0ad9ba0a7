//! `headers`: set, add and remove headers on the request and on the response.
//!
//! Edits run in the order remove, set, add, so `remove: [x]` plus `add: {x: v}` leaves exactly `v`.

use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::{HeaderOps, HeadersConfig};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::plugin::{
    BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead, ResponseHead,
};

/// The `headers` plugin.
#[derive(Debug)]
pub struct Headers {
    request: Ops,
    response: Ops,
}

#[derive(Debug, Default)]
struct Ops {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Ops {
    fn compile(cfg: Option<&HeaderOps>) -> Result<Ops, String> {
        let Some(cfg) = cfg else {
            return Ok(Ops::default());
        };
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("invalid header name {n:?}"))
        };
        let pair = |(n, v): (&String, &String)| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                name(n)?,
                HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {n:?}"))?,
            ))
        };
        Ok(Ops {
            remove: cfg
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: cfg.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: cfg.add.iter().map(pair).collect::<Result<_, _>>()?,
        })
    }

    fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

impl PluginFactory for Headers {
    const KIND: &'static str = "headers";
    const ORDER: u16 = 500;
    type Config = HeadersConfig;

    fn build(cfg: &HeadersConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(Headers {
            request: Ops::compile(cfg.request.as_ref())?,
            response: Ops::compile(cfg.response.as_ref())?,
        }))
    }
}

#[async_trait]
impl Plugin for Headers {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_RESPONSE
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        _cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        self.request.apply(&mut req.headers);
        Ok(Flow::Continue)
    }

    async fn response_filter(
        &self,
        resp: &mut ResponseHead,
        _cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        self.response.apply(&mut resp.headers);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> HeadersConfig {
        let text = format!("version: 1\nplugins:\n  headers: {yaml}\n");
        frontdesk_config::load_str(&text, &|_| None)
            .expect("valid")
            .config
            .plugins
            .headers
            .expect("headers configured")
    }

    #[tokio::test]
    async fn removes_then_sets_then_adds_on_the_request() {
        let cfg =
            config("{ request: { set: { x-a: one }, add: { x-b: two }, remove: [x-secret] } }");
        let plugin = Headers::build(&cfg, &BuildEnv::default()).expect("builds");
        let (mut head, ()) = http::Request::builder()
            .header("x-a", "old")
            .header("x-b", "first")
            .header("x-secret", "s")
            .body(())
            .expect("request")
            .into_parts();
        let flow = plugin
            .request_filter(&mut head, &mut Ctx::for_test())
            .await
            .expect("ok");
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(
            head.headers.get_all("x-a").iter().collect::<Vec<_>>(),
            ["one"]
        );
        assert_eq!(
            head.headers.get_all("x-b").iter().collect::<Vec<_>>(),
            ["first", "two"]
        );
        assert!(head.headers.get("x-secret").is_none());
    }

    #[tokio::test]
    async fn edits_the_response() {
        let cfg = config("{ response: { set: { x-served-by: fd }, remove: [server] } }");
        let plugin = Headers::build(&cfg, &BuildEnv::default()).expect("builds");
        let (mut head, ()) = http::Response::builder()
            .header("server", "nginx")
            .body(())
            .expect("resp")
            .into_parts();
        plugin
            .response_filter(&mut head, &mut Ctx::for_test())
            .await
            .expect("ok");
        assert_eq!(head.headers["x-served-by"], "fd");
        assert!(head.headers.get("server").is_none());
    }
}
