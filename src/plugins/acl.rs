//! `acl`: lets consumers through by group. It runs after authentication has settled who the
//! caller is; a caller that is no consumer (an unnamed JWT caller, or a route without
//! authentication) passes only when no `allow_groups` are set.

use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::AclConfig;
use http::StatusCode;

use crate::plugin::{BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead};

/// The `acl` plugin.
#[derive(Debug)]
pub struct Acl {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl PluginFactory for Acl {
    const KIND: &'static str = "acl";
    const ORDER: u16 = 150;
    type Config = AclConfig;

    fn build(cfg: &AclConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        if cfg.allow_groups.is_empty() && cfg.deny_groups.is_empty() {
            return Err("set allow_groups, deny_groups or both".into());
        }
        Ok(Arc::new(Acl {
            allow: cfg.allow_groups.clone(),
            deny: cfg.deny_groups.clone(),
        }))
    }
}

#[async_trait]
impl Plugin for Acl {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request_filter(
        &self,
        _req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let consumer = cx.consumer.as_deref();
        let in_any =
            |groups: &[String]| consumer.is_some_and(|c| groups.iter().any(|g| c.in_group(g)));
        if in_any(&self.deny) {
            return Err(PluginError::new(
                StatusCode::FORBIDDEN,
                "the consumer's group is denied on this route",
            )
            .with_reason("group_denied"));
        }
        if !self.allow.is_empty() && !in_any(&self.allow) {
            return Err(PluginError::new(
                StatusCode::FORBIDDEN,
                "the consumer is in no group allowed on this route",
            )
            .with_reason("group_not_allowed"));
        }
        Ok(Flow::Continue)
    }
}
