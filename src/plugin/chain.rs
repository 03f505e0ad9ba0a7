//! Runs one phase across a route's plugins: the head phases, the body phases (filters chained
//! over the body, buffered phases run in turn) and the logging phase.

use std::sync::Arc;

use http::{header, HeaderName, HeaderValue};

use super::body::{BodyAction, Buffered, Direction, Filtered, OverCap};
use super::{Ctx, Flow, Plugin, PluginError, RequestHead, ResponseHead, Summary};
use crate::body::{Body, BodyError, ClientBodyError, CollectError, Collected};
use crate::observe::metrics::{Family, Metrics};

/// `x-consumer-name`: the identified consumer, for the upstream.
pub static X_CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
/// `x-consumer-groups`: the consumer's groups, comma-separated.
pub static X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");
/// `x-anonymous-consumer: true` when the request went on as the anonymous consumer.
pub static X_ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");

/// The plugins of one route, global ones included, in run order. Built once per snapshot.
#[derive(Clone, Default)]
pub struct PluginChain {
    plugins: Arc<[Arc<dyn Plugin>]>,
    /// The plugins with an upstream-request phase, in run order.
    upstream: Arc<[Arc<dyn Plugin>]>,
    /// The plugins with a response or response-body phase, in reverse run order (the order
    /// they run in).
    responders: Arc<[Arc<dyn Plugin>]>,
    /// The plugins with a request-body phase, in run order.
    request_bodies: Arc<[Arc<dyn Plugin>]>,
    /// The plugins with a logging phase, in run order.
    loggers: Arc<[Arc<dyn Plugin>]>,
    /// Where refusals are counted (`frontdesk_auth_failures_total`), once the route is known.
    refusals: Option<Refusals>,
}

/// Counts a route's authentication and access refusals.
#[derive(Clone)]
struct Refusals {
    route: Arc<str>,
    metrics: Arc<Metrics>,
}

/// Why a body phase failed.
#[derive(Debug)]
pub enum PhaseError {
    /// A plugin refused or failed: its status goes to the client.
    Plugin(PluginError),
    /// The body failed while a buffered phase read it.
    Body(BodyError),
}

impl From<PluginError> for PhaseError {
    fn from(e: PluginError) -> Self {
        PhaseError::Plugin(e)
    }
}

impl std::fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| p.kind()))
            .finish()
    }
}

impl PluginChain {
    /// The chain of `plugins`, in run order.
    pub(crate) fn new(plugins: Vec<Arc<dyn Plugin>>) -> Self {
        let having = |phase: fn(&super::Phases) -> bool| -> Arc<[Arc<dyn Plugin>]> {
            plugins
                .iter()
                .filter(|p| phase(&p.phases()))
                .cloned()
                .collect()
        };
        let upstream = having(|p| p.upstream_request);
        let request_bodies = having(|p| p.request_body);
        let loggers = having(|p| p.log);
        let responders = plugins
            .iter()
            .rev()
            .filter(|p| p.phases().response || p.phases().response_body || p.phases().recover)
            .cloned()
            .collect();
        PluginChain {
            plugins: plugins.into(),
            upstream,
            responders,
            request_bodies,
            loggers,
            refusals: None,
        }
    }

    /// The plugins' kinds, in run order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.iter().map(|p| p.kind())
    }

    /// Counts this chain's 401 and 403 refusals under `route` in `metrics`.
    pub fn count_refusals(&mut self, route: &Arc<str>, metrics: &Arc<Metrics>) {
        self.refusals = Some(Refusals {
            route: route.clone(),
            metrics: metrics.clone(),
        });
    }

    fn refused(&self, plugin: &str, e: PluginError) -> PluginError {
        if let (Some(r), 401 | 403) = (&self.refusals, e.status.as_u16()) {
            let label = e.plugin.clone().unwrap_or_else(|| Arc::from(plugin));
            r.metrics.inc(
                Family::AuthFailures,
                [r.route.clone(), label, Arc::from(e.reason)],
            );
        }
        e
    }

    /// True when the route has no plugins (the proxy then skips every phase).
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// True when a plugin has a request-body phase.
    pub fn has_request_body(&self) -> bool {
        !self.request_bodies.is_empty()
    }

    /// True when a plugin has a response-body phase.
    pub fn has_response_body(&self) -> bool {
        self.responders.iter().any(|p| p.phases().response_body)
    }

    /// True when a plugin has a logging phase: the exchange's context must live to its end.
    pub fn logs(&self) -> bool {
        !self.loggers.is_empty()
    }

    /// Runs `request_filter` in order; stops at the first answer or error.
    pub async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        for p in self.plugins.iter() {
            match p.request_filter(req, cx).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Respond(r)) => return Ok(Flow::Respond(r)),
                Err(e) => return Err(self.refused(p.kind(), e)),
            }
        }
        Ok(Flow::Continue)
    }

    /// Runs `upstream_request_filter` in order.
    pub async fn upstream_request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        for p in self.upstream.iter() {
            p.upstream_request_filter(req, cx).await?;
        }
        Ok(())
    }

    /// Runs the request-body phase in order: each plugin's filter wraps the body so far, each
    /// buffered phase reads it whole. `Content-Length` follows: removed under a streaming
    /// filter, set after a buffered phase.
    pub async fn request_body(
        &self,
        req: &mut RequestHead,
        mut body: Body,
        cx: &mut Ctx,
    ) -> Result<Body, PhaseError> {
        for p in self.request_bodies.iter() {
            match p.request_body(req, cx) {
                BodyAction::Pass => {}
                BodyAction::Replace(b) => {
                    body = b;
                    set_exact_length(&mut req.headers, &body);
                }
                BodyAction::Stream(f) => {
                    req.headers.remove(header::CONTENT_LENGTH);
                    body = Body::new(Filtered::new(body, f, Direction::Request));
                }
                BodyAction::Buffer(cap) => {
                    let Collected { data, trailers } = match body.collect_capped(cap.max).await {
                        Ok(c) => c,
                        Err(CollectError::Failed(e)) => return Err(PhaseError::Body(e)),
                        Err(CollectError::Overflow(_)) => {
                            return Err(PhaseError::Body(BodyError::Client(
                                ClientBodyError::TooLarge(cap.max),
                            )))
                        }
                    };
                    let mut b = Buffered { data, trailers };
                    p.request_body_buffered(req, &mut b, cx).await?;
                    set_length(&mut req.headers, b.data.len());
                    body = Collected {
                        data: b.data,
                        trailers: b.trailers,
                    }
                    .into_body();
                }
            }
        }
        Ok(body)
    }

    /// Runs `response_filter` in reverse order, so the outermost plugin sees the final response,
    /// then adds the request phase's [`Ctx::response_headers`]. Heads only: for gateway errors.
    pub async fn response_filter(
        &self,
        resp: &mut ResponseHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        for p in self.responders.iter() {
            if p.phases().response {
                p.response_filter(resp, cx).await?;
            }
        }
        for (name, value) in cx.response_headers.drain(..) {
            resp.headers.insert(name, value);
        }
        Ok(())
    }

    /// The response phases in reverse order: each plugin's `response_filter`, then its body
    /// phase, so the body passes the plugins in the order the head does. Then the request phase's
    /// [`Ctx::response_headers`] are added. A bodiless response (to a `HEAD` request, a `204`,
    /// a `304`, as the head stands when a plugin's body phase would run) skips the body phases.
    pub async fn response(
        &self,
        resp: &mut ResponseHead,
        mut body: Body,
        head_request: bool,
        cx: &mut Ctx,
    ) -> Result<Body, PhaseError> {
        for p in self.responders.iter() {
            let phases = p.phases();
            if phases.response {
                p.response_filter(resp, cx).await?;
            }
            let bodiless = head_request
                || resp.status == http::StatusCode::NO_CONTENT
                || resp.status == http::StatusCode::NOT_MODIFIED;
            if !phases.response_body || bodiless {
                continue;
            }
            match p.response_body(resp, cx) {
                BodyAction::Pass => {}
                BodyAction::Replace(b) => {
                    body = b;
                    set_exact_length(&mut resp.headers, &body);
                }
                BodyAction::Stream(f) => {
                    resp.headers.remove(header::CONTENT_LENGTH);
                    body = Body::new(Filtered::new(body, f, Direction::Response));
                }
                BodyAction::Buffer(cap) => match body.collect_capped(cap.max).await {
                    Ok(Collected { data, trailers }) => {
                        let mut b = Buffered { data, trailers };
                        p.response_body_buffered(resp, &mut b, cx).await?;
                        set_length(&mut resp.headers, b.data.len());
                        body = Collected {
                            data: b.data,
                            trailers: b.trailers,
                        }
                        .into_body();
                    }
                    Err(CollectError::Failed(e)) => return Err(PhaseError::Body(e)),
                    Err(CollectError::Overflow(o)) => match cap.over {
                        OverCap::Pass => body = o.into_body(),
                        OverCap::Fail => {
                            return Err(PhaseError::Plugin(super::body::over_cap_response()))
                        }
                    },
                },
            }
        }
        for (name, value) in cx.response_headers.drain(..) {
            resp.headers.insert(name, value);
        }
        Ok(body)
    }

    /// The recovery phase on a gateway error (the upstream failed, timed out, had no healthy
    /// target or an open breaker; `status` is the error's): in reverse run order, the first
    /// plugin that answers wins. `None`: the error stands.
    pub async fn recover(
        &self,
        status: http::StatusCode,
        cx: &mut Ctx,
    ) -> Option<super::PluginResponse> {
        for p in self.responders.iter() {
            if p.phases().recover {
                if let Some(r) = p.recover(status, cx).await {
                    return Some(r);
                }
            }
        }
        None
    }

    /// True when a plugin has a recovery phase.
    pub fn recovers(&self) -> bool {
        self.responders.iter().any(|p| p.phases().recover)
    }

    /// What each plugin would do with `req` on `route` ([`Plugin::explain`]), in run order.
    pub fn explain(&self, req: &RequestHead, route: &str) -> Vec<(&'static str, String)> {
        self.plugins
            .iter()
            .filter_map(|p| p.explain(req, route).map(|note| (p.kind(), note)))
            .collect()
    }

    /// The logging phase, in run order.
    pub fn log(&self, summary: &Summary, cx: &Ctx) {
        for p in self.loggers.iter() {
            p.log(summary, cx);
        }
    }
}

/// Sets `Content-Length` to a replaced body's exact size, or removes it when the size is unknown.
fn set_exact_length(h: &mut http::HeaderMap, body: &Body) {
    match http_body::Body::size_hint(body).exact() {
        Some(n) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.remove(header::CONTENT_LENGTH);
        }
    }
}

/// Sets `Content-Length` to a body's new length.
fn set_length(h: &mut http::HeaderMap, len: usize) {
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}
