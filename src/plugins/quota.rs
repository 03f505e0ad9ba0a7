//! `quota`: requests per calendar day or month (UTC) per key, local or shared through Redis.
//! A refusal is `429` whose `Retry-After` counts the seconds until the window resets.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use frontdesk_config::{LimitStore, OnStoreError, QuotaConfig, QuotaWindow};
use http::{header, HeaderValue, StatusCode};

use super::limiting::{DecisionCounter, LimitKey};
use crate::limit::local::LocalStore;
use crate::limit::redis::RedisStore;
use crate::limit::store_key;
use crate::plugin::{
    BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead, Scope,
};

/// The `quota` plugin.
#[derive(Debug)]
pub struct Quota {
    key: LimitKey,
    limit: u64,
    window: QuotaWindow,
    on_error: OnStoreError,
    redis: Option<Arc<RedisStore>>,
    local: Arc<LocalStore>,
    global: bool,
    decisions: DecisionCounter,
}

impl PluginFactory for Quota {
    const KIND: &'static str = "quota";
    const ORDER: u16 = 210;
    type Config = QuotaConfig;

    fn build(cfg: &QuotaConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        if cfg.limit == 0 {
            return Err("limit: must be at least 1".into());
        }
        Ok(Arc::new(Quota {
            key: LimitKey::parse(&cfg.key).map_err(|e| format!("key: {e}"))?,
            limit: cfg.limit,
            window: cfg.per,
            on_error: cfg.on_store_error,
            redis: match cfg.store {
                LimitStore::Redis => env.redis.clone(),
                LimitStore::Local => None,
            },
            local: LocalStore::global().clone(),
            global: env.scope == Scope::Global,
            decisions: DecisionCounter::new(env, "quota"),
        }))
    }
}

/// The window containing `now`: its name (`2026-11-23` or `2026-11`) and the time left in it.
pub fn window(now: SystemTime, w: QuotaWindow) -> (String, Duration) {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days);
    let (name, end_days) = match w {
        QuotaWindow::Day => (format!("{y:04}-{m:02}-{d:02}"), days + 1),
        QuotaWindow::Month => {
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (format!("{y:04}-{m:02}"), days_from_civil(ny, nm, 1))
        }
    };
    (name, Duration::from_secs(end_days * 86_400 - secs))
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: u64) -> (u64, u64, u64) {
    let z = z + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Quota {
    /// Counts one request locally: admitted while the window's count is under the limit.
    fn count_local(&self, key: &str, ttl: Duration) -> bool {
        let c = self.local.counter(key, Some(ttl));
        c.value
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Decides at `now` (a parameter so tests can cross window boundaries).
    pub async fn admit_at(
        &self,
        now: SystemTime,
        req: &RequestHead,
        cx: &Ctx,
    ) -> Result<(), PluginError> {
        let (name, left) = window(now, self.window);
        let route = super::limiting::bucket_scope(self.global, cx);
        let key = store_key(
            "quota",
            route,
            &name,
            &self.limit.to_string(),
            &self.key.value(req, cx),
        );
        let admitted = match &self.redis {
            None => self.count_local(&key, left),
            Some(r) => match r.count(&key, self.limit, left).await {
                Ok((ok, _)) => ok,
                Err(_) => match self.on_error {
                    OnStoreError::Local => self.count_local(&key, left),
                    OnStoreError::Allow => true,
                    OnStoreError::Deny => {
                        return Err(PluginError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the quota store is unavailable",
                        )
                        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")))
                    }
                },
            },
        };
        self.decisions.count(cx, admitted);
        if admitted {
            return Ok(());
        }
        Err(PluginError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the quota of {} requests for {name} is used up", self.limit),
        )
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from(left.as_secs().max(1)),
        ))
    }
}

#[async_trait]
impl Plugin for Quota {
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
        self.admit_at(SystemTime::now(), req, cx).await?;
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn windows_are_utc_calendar_days_and_months() {
        // 2026-11-23T20:00:00Z
        let t = 1_795_464_000;
        assert_eq!(
            window(at(t), QuotaWindow::Day),
            ("2026-11-23".into(), Duration::from_secs(4 * 3600))
        );
        let (m, left) = window(at(t), QuotaWindow::Month);
        assert_eq!(m, "2026-11");
        assert_eq!(left, Duration::from_secs(7 * 86_400 + 4 * 3600));
        // December rolls into the next year; leap day exists in 2028.
        assert_eq!(window(at(1_798_761_599), QuotaWindow::Month).0, "2026-12");
        assert_eq!(window(at(1_798_761_600), QuotaWindow::Month).0, "2027-01");
        assert_eq!(window(at(1_835_395_200), QuotaWindow::Day).0, "2028-02-29");
    }

    #[tokio::test]
    async fn the_quota_resets_when_the_window_rolls_over() {
        let quota = Quota {
            key: LimitKey::Route,
            limit: 2,
            window: QuotaWindow::Day,
            on_error: OnStoreError::Local,
            redis: None,
            local: Arc::new(LocalStore::default()),
            global: false,
            decisions: DecisionCounter::new(&BuildEnv::default(), "quota"),
        };
        let (req, _) = http::Request::new(()).into_parts();
        let mut cx = Ctx::for_test();
        cx.route = Arc::from("quota-rollover");
        let late = at(1_795_478_399); // 2026-11-23T23:59:59Z
        assert!(quota.admit_at(late, &req, &cx).await.is_ok());
        assert!(quota.admit_at(late, &req, &cx).await.is_ok());
        let refused = quota
            .admit_at(late, &req, &cx)
            .await
            .expect_err("over quota");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused
            .headers
            .iter()
            .any(|(k, v)| k == header::RETRY_AFTER && v == "1"));
        // One second later it is a new day.
        let next = at(1_795_478_400);
        assert!(quota.admit_at(next, &req, &cx).await.is_ok());
    }
}
