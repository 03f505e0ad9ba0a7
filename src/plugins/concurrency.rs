//! `concurrency`: a cap on requests in flight per key (per instance). The excess gets `503` with
//! `Retry-After: 1` at once. A slot is held until the response body is fully sent or the client
//! goes away (the slot is dropped with the response body).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::ConcurrencyConfig;
use http::{header, HeaderValue, StatusCode};

use super::limiting::{DecisionCounter, LimitKey};
use crate::limit::local::{Counter, LocalStore};
use crate::limit::store_key;
use crate::plugin::{
    BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead, Scope,
};

/// The `concurrency` plugin.
#[derive(Debug)]
pub struct Concurrency {
    key: LimitKey,
    max: u64,
    local: Arc<LocalStore>,
    global: bool,
    decisions: DecisionCounter,
}

/// One request's slot; released on drop.
struct Slot(Arc<Counter>);

/// The slots a request holds (one per `concurrency` plugin on its route).
#[derive(Clone, Default)]
struct Slots(Vec<Arc<Slot>>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.value.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PluginFactory for Concurrency {
    const KIND: &'static str = "concurrency";
    const ORDER: u16 = 220;
    type Config = ConcurrencyConfig;

    fn build(cfg: &ConcurrencyConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        if cfg.max == 0 {
            return Err("max: must be at least 1".into());
        }
        Ok(Arc::new(Concurrency {
            key: LimitKey::parse(&cfg.key).map_err(|e| format!("key: {e}"))?,
            max: cfg.max,
            local: LocalStore::global().clone(),
            global: env.scope == Scope::Global,
            decisions: DecisionCounter::new(env, "concurrency"),
        }))
    }
}

#[async_trait]
impl Plugin for Concurrency {
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
        let route = super::limiting::bucket_scope(self.global, cx);
        let key = store_key(
            "cc",
            route,
            "max",
            &self.max.to_string(),
            &self.key.value(req, cx),
        );
        let counter = self.local.counter(&key, None);
        let admitted = counter
            .value
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        self.decisions.count(cx, admitted);
        if !admitted {
            return Err(PluginError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("more than {} requests in flight", self.max),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        // Held in the request's context, dropped when the exchange is over (body sent or client
        // gone): a global and a route cap each keep their own slot.
        cx.ext
            .get_or_insert_default::<Slots>()
            .0
            .push(Arc::new(Slot(counter)));
        Ok(Flow::Continue)
    }
}
