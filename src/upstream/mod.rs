//! Upstreams at runtime: their endpoints, the balancer that picks one per request, and the
//! keep-alive connection pool (one per upstream, one idle set per endpoint inside it).
//!
//! Pools survive reloads: [`Upstream::build`] reuses the previous snapshot's client when the
//! pool settings did not change, so connections to unchanged endpoints stay warm.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use frontdesk_config::UpstreamConfig;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::RequestBody;

/// The HTTP/1.1 client with its connection pool.
pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// One address of an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` for now.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
}

/// A named upstream, compiled.
#[derive(Debug)]
pub struct Upstream {
    /// Config name.
    pub name: String,
    endpoints: Vec<Endpoint>,
    /// Endpoint indices in smooth weighted round-robin order; walked with an atomic cursor so
    /// balancing takes no lock.
    schedule: Vec<u32>,
    cursor: AtomicUsize,
    /// Time to the response head.
    pub timeout: Duration,
    client: UpstreamClient,
    pool_settings: PoolSettings,
}

#[derive(Clone, Debug, PartialEq)]
struct PoolSettings {
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
}

/// Why an upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A target URL did not parse.
    #[error("invalid target url {0:?}")]
    BadTarget(String),
}

impl Upstream {
    /// Compiles `cfg`; reuses `prev`'s pool when its settings are unchanged.
    pub fn build(
        name: &str,
        cfg: &UpstreamConfig,
        prev: Option<&Upstream>,
    ) -> Result<Upstream, UpstreamError> {
        let mut endpoints = Vec::new();
        let mut weights = Vec::new();
        for t in &cfg.targets {
            let rest = t
                .url
                .strip_prefix("http://")
                .ok_or_else(|| UpstreamError::BadTarget(t.url.clone()))?;
            let authority: Authority = rest
                .trim_end_matches('/')
                .parse()
                .map_err(|_| UpstreamError::BadTarget(t.url.clone()))?;
            endpoints.push(Endpoint {
                scheme: Scheme::HTTP,
                authority,
            });
            weights.push(t.weight);
        }
        let pool_settings = PoolSettings {
            connect_timeout: cfg.connect_timeout.get(),
            max_idle: cfg.max_idle_per_target,
            idle_timeout: cfg.pool_idle_timeout.get(),
        };
        let client = match prev {
            Some(p) if p.pool_settings == pool_settings => p.client.clone(),
            _ => new_client(&pool_settings),
        };
        Ok(Upstream {
            name: name.to_string(),
            schedule: smooth_wrr(&weights),
            endpoints,
            cursor: AtomicUsize::new(0),
            timeout: cfg.timeout.get(),
            client,
            pool_settings,
        })
    }

    /// Picks the next endpoint (weighted round robin).
    pub fn select(&self) -> &Endpoint {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        let idx = self.schedule[n % self.schedule.len()] as usize;
        &self.endpoints[idx]
    }

    /// The pooled client.
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// The endpoints, in config order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

fn new_client(s: &PoolSettings) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(s.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(s.max_idle)
        .pool_idle_timeout(s.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // The gateway always sets `Host` itself (client's or target's, per `preserve_host`).
        .set_host(false)
        .build(connector)
}

/// nginx's smooth weighted round robin, unrolled into one cycle (at most 4096 slots).
fn smooth_wrr(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return (0..weights.len() as u32).collect();
    }
    let scale = total.div_ceil(4096).max(1);
    let weights: Vec<i64> = weights
        .iter()
        .map(|w| {
            if *w == 0 {
                0
            } else {
                (i64::from(*w) / scale as i64).max(1)
            }
        })
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_wrr_spreads_by_weight() {
        let s = smooth_wrr(&[1, 3]);
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 3);
        // Smooth: the heavy endpoint never gets all slots in a row at the start.
        assert_ne!(s, vec![1, 1, 1, 0]);
        assert_eq!(smooth_wrr(&[0, 2]), vec![1, 1]);
    }
}
