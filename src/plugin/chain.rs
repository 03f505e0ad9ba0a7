//! Runs one phase across a route's plugins.

use std::sync::Arc;

use super::{Ctx, Flow, Plugin, PluginError, RequestHead, ResponseHead};

/// The plugins of one route, global ones included, in run order. Built once per snapshot.
#[derive(Clone, Default)]
pub struct PluginChain {
    plugins: Arc<[Arc<dyn Plugin>]>,
}

impl std::fmt::Debug for PluginChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| p.kind()))
            .finish()
    }
}

impl PluginChain {
    pub(crate) fn new(plugins: Vec<Arc<dyn Plugin>>) -> Self {
        PluginChain {
            plugins: plugins.into(),
        }
    }

    /// True when the route has no plugins (the proxy then skips every phase).
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Runs `request_filter` in order; stops at the first answer or error.
    pub async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        for p in self.plugins.iter() {
            if let Flow::Respond(r) = p.request_filter(req, cx).await? {
                return Ok(Flow::Respond(r));
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
