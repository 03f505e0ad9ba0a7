//! Runs one phase across a route's plugins.

use std::sync::Arc;

use http::{header, HeaderName, HeaderValue, StatusCode};

use super::{Ctx, Flow, Plugin, PluginError, RequestHead, ResponseHead};
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
    /// The plugins with a response phase, in reverse run order (the order they run in).
    responders: Arc<[Arc<dyn Plugin>]>,
    /// Index after the last authentication plugin, where the caller's identity is settled.
    auth_end: Option<usize>,
    /// The authentication plugins' kinds joined by `+`: the plugin label of "no credentials
    /// accepted" refusals.
    auth_kinds: Arc<str>,
    /// Where refusals are counted (`frontdesk_auth_failures_total`), once the route is known.
    refusals: Option<Refusals>,
}

/// Counts a route's authentication and access refusals.
#[derive(Clone)]
struct Refusals {
    route: Arc<str>,
    /// The auth plugins' kinds joined by `+`: the plugin label of "no credentials accepted".
    auth_kinds: Arc<str>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| p.kind()))
            .finish()
    }
}

impl PluginChain {
    /// `auth` marks the authentication plugins among `plugins` (same order).
    pub(crate) fn new(plugins: Vec<Arc<dyn Plugin>>, auth: &[bool]) -> Self {
        // Authentication is settled right after the last auth plugin.
        let auth_end = auth.iter().rposition(|a| *a).map(|i| i + 1);
        let auth_kinds = plugins
            .iter()
            .zip(auth)
            .filter(|(_, a)| **a)
            .map(|(p, _)| p.kind())
            .collect::<Vec<_>>()
            .join("+");
        let upstream = plugins
            .iter()
            .filter(|p| p.phases().upstream_request)
            .cloned()
            .collect();
        let responders = plugins
            .iter()
            .rev()
            .filter(|p| p.phases().response)
            .cloned()
            .collect();
        PluginChain {
            plugins: plugins.into(),
            upstream,
            responders,
            auth_end,
            auth_kinds: Arc::from(auth_kinds),
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
            auth_kinds: self.auth_kinds.clone(),
            metrics: metrics.clone(),
        });
    }

    fn refused(&self, plugin: &str, e: PluginError) -> PluginError {
        if let (Some(r), 401 | 403) = (&self.refusals, e.status.as_u16()) {
            r.metrics.inc(
                Family::AuthFailures,
                [r.route.clone(), Arc::from(plugin), Arc::from(e.reason)],
            );
        }
        e
    }

    /// True when the route has no plugins (the proxy then skips every phase).
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Runs `request_filter` in order; stops at the first answer or error. After the last
    /// authentication plugin it settles the caller's identity ([`super::AuthState`]).
    pub async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let settle = |req: &mut RequestHead, cx: &mut Ctx| {
            settle_auth(req, cx).map_err(|e| {
                let kinds = self.refusals.as_ref().map(|r| r.auth_kinds.clone());
                self.refused(kinds.as_deref().unwrap_or("auth"), e)
            })
        };
        for (i, p) in self.plugins.iter().enumerate() {
            if self.auth_end == Some(i) {
                settle(req, cx)?;
            }
            match p.request_filter(req, cx).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Respond(r)) => return Ok(Flow::Respond(r)),
                Err(e) => return Err(self.refused(p.kind(), e)),
            }
        }
        if self.auth_end == Some(self.plugins.len()) {
            settle(req, cx)?;
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

    /// Runs `response_filter` in reverse order, so the outermost plugin sees the final response,
    /// then adds the request phase's [`Ctx::response_headers`].
    pub async fn response_filter(
        &self,
        resp: &mut ResponseHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        for p in self.responders.iter() {
            p.response_filter(resp, cx).await?;
        }
        for (name, value) in cx.response_headers.drain(..) {
            resp.headers.insert(name, value);
        }
        Ok(())
    }
}

/// After the auth plugins: an identified caller's consumer goes upstream in headers; an
/// unidentified one goes on as the anonymous consumer or is refused with every challenge.
fn settle_auth(req: &mut RequestHead, cx: &mut Ctx) -> Result<(), PluginError> {
    let auth = &mut cx.auth;
    if !auth.identified {
        match auth.anonymous.take() {
            Some(anon) => {
                auth.identify(Some(anon));
                auth.is_anonymous = true;
                req.headers.insert(
                    X_ANONYMOUS_CONSUMER.clone(),
                    HeaderValue::from_static("true"),
                );
            }
            None => {
                let mut err = PluginError::new(
                    StatusCode::UNAUTHORIZED,
                    "the request carries no credentials this route accepts",
                )
                .with_reason("missing_credentials");
                for c in auth.challenges.drain(..) {
                    err = err.with_header(header::WWW_AUTHENTICATE, c);
                }
                return Err(err);
            }
        }
    }
    if let Some(c) = &auth.consumer {
        req.headers
            .insert(X_CONSUMER_NAME.clone(), c.name_header.clone());
        match &c.groups_header {
            Some(groups) => {
                req.headers
                    .insert(X_CONSUMER_GROUPS.clone(), groups.clone());
            }
            // No groups: no header at all, rather than an empty one.
            None => {
                req.headers.remove(&X_CONSUMER_GROUPS);
            }
        }
    }
    Ok(())
}
