//! Calls to an upstream by name from inside a plugin ([`UpstreamHandle`]): the same balancing,
//! retries, circuit breaker, health, upstream metrics and trace spans as a proxied call.

use std::sync::Arc;

use http::{Request, Response};

use super::Ctx;
use crate::body::Body;
use crate::observe::CallReport;
use crate::upstream::{BodySent, CallError, CallOptions, Upstream};

/// An upstream a plugin may call, from its build environment ([`super::BuildEnv::upstream`]).
/// Cheap to clone; it holds the snapshot's upstream, so calls go on through a reload with the
/// upstream the plugin was built with.
#[derive(Clone, Debug)]
pub struct UpstreamHandle {
    upstream: Arc<Upstream>,
}

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

impl UpstreamHandle {
    pub(crate) fn new(upstream: Arc<Upstream>) -> Self {
        UpstreamHandle { upstream }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.upstream.name
    }

    /// Sends `req` (an origin-form target such as `/users/7`; the method, headers and body as
    /// given) to one of the upstream's targets and returns the response head; the body streams
    /// after it. `Host` is the target's unless `req` sets one; the exchange's request id goes
    /// along as `x-request-id` unless `req` sets one. Retries follow the upstream's policy (a
    /// request with a body is only retried when it was never sent). The call is recorded in the
    /// exchange's trace as a client span under the gateway's own.
    pub async fn call(
        &self,
        mut req: Request<Body>,
        cx: &mut Ctx,
    ) -> Result<Response<Body>, CallError> {
        if !req.headers().contains_key(&X_REQUEST_ID) {
            req.headers_mut()
                .insert(X_REQUEST_ID.clone(), cx.request_id.clone());
        }
        let preserve_host = req.headers().contains_key(http::header::HOST);
        let body_sent = if req.body().is_empty() {
            BodySent::default()
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (parts, body) = req.into_parts();
            req = Request::from_parts(parts, body.on_end(tx));
            BodySent::new(rx)
        };
        let mut opts = CallOptions {
            hash: self
                .upstream
                .hash_of(req.headers(), req.uri().path(), cx.client_ip),
            preserve_host,
            body_sent,
            report: cx.trace.clone().map(|trace| CallReport {
                trace: Some(trace),
                method: Some(req.method().clone()),
                ..CallReport::default()
            }),
            raw_fields: None,
            added: Default::default(),
        };
        let called = self.upstream.call(Box::new(req), &mut opts).await;
        if let Some(report) = opts.report {
            cx.calls.push(report);
        }
        let (resp, lease) = called?;
        let resp = *resp;
        Ok(resp.map(|b| crate::upstream::leased(b, lease)))
    }
}
