//! Upstreams at runtime: their endpoints, the balancer that picks one per request, and the
//! keep-alive connection pool (one per upstream, one idle set per endpoint inside it).
//!
//! Pools survive reloads: [`Upstream::build`] keeps the previous pool identity when the pool
//! settings did not change, so idle connections to unchanged endpoints stay warm.

pub mod pool;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicU64;

use frontdesk_config::UpstreamConfig;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::RequestBody;
use pool::{ConnectError, PoolReturn};

/// One address of an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` for now.
    pub scheme: Scheme,
    /// `host:port` as written in the target URL.
    pub authority: Authority,
    /// `host:port` to connect to (port 80 filled in when absent).
    connect_addr: String,
    /// Identifies this endpoint's idle connections: pool identity plus address.
    pool_key: u64,
}

/// Distinguishes pools: a reload with new pool settings starts a new pool.
static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

/// Why sending to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The request failed on an open connection.
    #[error("upstream request failed: {0}")]
    Request(#[from] hyper::Error),
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
    pool_id: u64,
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
            let connect_addr = match authority.port_u16() {
                Some(_) => authority.as_str().to_string(),
                None => format!("{}:80", authority.host()),
            };
            endpoints.push(Endpoint {
                connect_addr,
                pool_key: 0,
                scheme: Scheme::HTTP,
                authority,
            });
            weights.push(t.weight);
        }
        let pool_settings = PoolSettings {
            connect_timeout: cfg.connect_timeout(),
            max_idle: cfg.max_idle_per_target,
            idle_timeout: cfg.idle_timeout(),
        };
        let pool_id = match prev {
            Some(p) if p.pool_settings == pool_settings => p.pool_id,
            _ => NEXT_POOL.fetch_add(1, Ordering::Relaxed),
        };
        for ep in &mut endpoints {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (pool_id, &ep.connect_addr).hash(&mut h);
            ep.pool_key = h.finish();
        }
        Ok(Upstream {
            name: name.to_string(),
            schedule: smooth_wrr(&weights),
            endpoints,
            cursor: AtomicUsize::new(0),
            timeout: cfg.response_timeout(),
            pool_id,
            pool_settings,
        })
    }

    /// Picks the next endpoint (weighted round robin); `None` only for an upstream without targets,
    /// which validation never lets through.
    pub fn select(&self) -> Option<&Endpoint> {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        let idx = *self.schedule.get(n % self.schedule.len().max(1))? as usize;
        self.endpoints.get(idx)
    }

    /// Sends `req` (origin-form URI, `Host` set) to `ep` over a pooled or new connection.
    ///
    /// A request that a pooled connection could not take (it closed while idle) is sent again on
    /// a new connection; it was never written, so this is safe for any method. The returned
    /// [`PoolReturn`] puts the connection back once the response body is done.
    pub async fn send(
        &self,
        ep: &Endpoint,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, PoolReturn), SendError> {
        let s = &self.pool_settings;
        let mut pooled = pool::checkout(ep.pool_key, s.idle_timeout);
        loop {
            let reused = pooled.is_some();
            let mut sender = match pooled.take() {
                Some(sender) => sender,
                None => pool::connect(&ep.connect_addr, s.connect_timeout).await?,
            };
            if sender.ready().await.is_err() {
                if reused {
                    pooled = pool::checkout(ep.pool_key, s.idle_timeout);
                    continue;
                }
                return Err(SendError::Connect(ConnectError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection closed before use",
                ))));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, PoolReturn::new(ep.pool_key, s.max_idle, sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        req = unsent;
                        pooled = pool::checkout(ep.pool_key, s.idle_timeout);
                    }
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }
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
