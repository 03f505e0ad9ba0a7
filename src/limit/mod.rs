//! Limits: the GCRA token bucket ([`gcra`]), where its state lives ([`local`], [`redis`]) and the
//! key a bucket is stored under ([`store_key`]). It knows nothing of requests or plugins: the
//! plugins `rate_limit`, `quota` and `concurrency` are built on it (`plugins::limiting` reads a
//! limit's key from a request and counts its decisions).

pub mod gcra;
pub mod local;
pub mod redis;

/// A store key: `frontdesk:<kind>:{<route>|<limit>|<value>}`. The braces are a Redis Cluster hash
/// tag, so each bucket lives whole on one node.
pub fn store_key(kind: &str, route: &str, limit: &str, fingerprint: &str, value: &str) -> String {
    format!("frontdesk:{kind}:{{{route}|{limit}|{fingerprint}|{value}}}")
}
