//! Runs one phase across a route's plugins.

use std::sync::Arc;

use http::{header, HeaderName, HeaderValue, StatusCode};

use super::{Ctx, Flow, Plugin, PluginError, RequestHead, ResponseHead};

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
    /// Index after the last authentication plugin, where the caller's identity is settled.
    auth_end: Option<usize>,
}

impl std::fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| p.kind()))
            .finish()
    }
}

impl PluginChain {
    pub(crate) fn new(plugins: Vec<Arc<dyn Plugin>>, auth_end: Option<usize>) -> Self {
        PluginChain {
            plugins: plugins.into(),
            auth_end,
        }
    }

    /// The plugins' kinds, in run order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.iter().map(|p| p.kind())
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
        for (i, p) in self.plugins.iter().enumerate() {
            if self.auth_end == Some(i) {
                settle_auth(req, cx)?;
            }
            if let Flow::Respond(r) = p.request_filter(req, cx).await? {
                return Ok(Flow::Respond(r));
            }
        }
        if self.auth_end == Some(self.plugins.len()) {
            settle_auth(req, cx)?;
        }
        Ok(Flow::Continue)
    }

    /// Runs `upstream_request_filter` in order.
    pub async fn upstream_request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        for p in self.plugins.iter() {
            p.upstream_request_filter(req, cx).await?;
        }
        Ok(())
    }

    /// Runs `response_filter` in reverse order, so the outermost plugin sees the final response.
    pub async fn response_filter(
        &self,
        resp: &mut ResponseHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        for p in self.plugins.iter().rev() {
            p.response_filter(resp, cx).await?;
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
                );
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
        req.headers
            .insert(X_CONSUMER_GROUPS.clone(), c.groups_header.clone());
    }
    Ok(())
}
