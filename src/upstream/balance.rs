//! Load balancing: which endpoint of an upstream gets a request. Every policy skips unhealthy
//! endpoints and, for a retry, the endpoints already tried (when another healthy one exists).
//! Picking takes no lock: round robin walks a precomputed schedule with an atomic cursor, the
//! others read atomics or an immutable hash ring.

use std::sync::atomic::{AtomicUsize, Ordering};

use frontdesk_config::LoadBalancing;

use super::Endpoint;

/// Endpoint indices already tried by this request (endpoints beyond 64 are never excluded).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tried(u64);

impl Tried {
    /// Adds endpoint `i`.
    pub fn add(&mut self, i: usize) {
        if i < 64 {
            self.0 |= 1 << i;
        }
    }

    fn has(self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }

    fn any(self) -> bool {
        self.0 != 0
    }
}

/// A compiled balancing policy.
#[derive(Debug)]
pub enum Balancer {
    /// Smooth weighted round robin over `schedule` (endpoint indices, one cycle).
    RoundRobin {
        /// One cycle of endpoint indices.
        schedule: Vec<u32>,
        /// Next slot.
        cursor: AtomicUsize,
    },
    /// Power of two choices by requests in flight, weighted.
    LeastRequest {
        /// Endpoint weights.
        weights: Vec<u32>,
    },
    /// A hash ring: points sorted by hash, each naming an endpoint.
    ConsistentHash {
        /// `(point, endpoint index)` sorted by point.
        ring: Vec<(u64, u32)>,
    },
    /// Weighted random over `schedule`.
    Random {
        /// One weighted cycle of endpoint indices.
        schedule: Vec<u32>,
    },
}

/// Ring points per unit of weight: enough that keys spread within a few percent of the weights.
const POINTS_PER_WEIGHT: u32 = 160;

impl Balancer {
    /// Compiles `policy` for endpoints with `weights` and identities `ids` (their URLs: ring
    /// points derive from them, so adding an endpoint leaves the others' points in place).
    pub fn new(policy: LoadBalancing, weights: &[u32], ids: &[&str]) -> Balancer {
        match policy {
            LoadBalancing::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_wrr(weights),
                cursor: AtomicUsize::new(0),
            },
            LoadBalancing::Random => Balancer::Random {
                schedule: smooth_wrr(weights),
            },
            LoadBalancing::LeastRequest => Balancer::LeastRequest {
                weights: weights.to_vec(),
            },
            LoadBalancing::ConsistentHash => {
                let mut ring = Vec::new();
                for (i, (w, id)) in weights.iter().zip(ids).enumerate() {
                    for p in 0..w.saturating_mul(POINTS_PER_WEIGHT) {
                        ring.push((hash_bytes(format!("{id}#{p}").as_bytes()), i as u32));
                    }
                }
                ring.sort_unstable();
                Balancer::ConsistentHash { ring }
            }
        }
    }

    /// Picks an endpoint index: healthy and not tried if possible, else healthy; `None` when no
    /// endpoint is healthy. `hash` is the request's key for consistent hashing (without one, the
    /// request is balanced at random).
    pub fn pick(&self, eps: &[Endpoint], hash: Option<u64>, tried: Tried) -> Option<usize> {
        let first = self.pick_where(eps, hash, |i| !tried.has(i) && eps[i].state.is_healthy());
        if first.is_some() || !tried.any() {
            return first;
        }
        self.pick_where(eps, hash, |i| eps[i].state.is_healthy())
    }

    fn pick_where(
        &self,
        eps: &[Endpoint],
        hash: Option<u64>,
        ok: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin { schedule, cursor } => {
                let n = cursor.fetch_add(1, Ordering::Relaxed);
                walk(schedule, n, &ok)
            }
            Balancer::Random { schedule } => {
                walk(schedule, fastrand::usize(..schedule.len().max(1)), &ok)
            }
            Balancer::LeastRequest { weights } => {
                let candidates = || (0..eps.len()).filter(|&i| weights[i] > 0 && ok(i));
                let count = candidates().count();
                if count == 0 {
                    return None;
                }
                let a = candidates().nth(fastrand::usize(..count))?;
                if count == 1 {
                    return Some(a);
                }
                let mut b = candidates().nth(fastrand::usize(..count - 1))?;
                if b == a {
                    b = candidates().nth(count - 1)?;
                }
                // Fewer in flight per unit of weight wins: a*wb < b*wa.
                let load = |i: usize| eps[i].state.inflight.load(Ordering::Relaxed) as u64;
                let (wa, wb) = (u64::from(weights[a]), u64::from(weights[b]));
                Some(if load(a) * wb <= load(b) * wa { a } else { b })
            }
            Balancer::ConsistentHash { ring } => {
                let Some(h) = hash else {
                    let n = fastrand::usize(..ring.len().max(1));
                    return ring_walk(ring, n, &ok);
                };
                let start = ring.partition_point(|&(p, _)| p < h);
                ring_walk(ring, start, &ok)
            }
        }
    }
}

/// The first acceptable endpoint in `schedule` from slot `start` on (wrapping).
fn walk(schedule: &[u32], start: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let len = schedule.len();
    (0..len)
        .map(|k| schedule[(start + k) % len] as usize)
        .find(|&i| ok(i))
}

/// The first acceptable endpoint on the ring from point `start` on (wrapping).
fn ring_walk(ring: &[(u64, u32)], start: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
    let len = ring.len();
    (0..len)
        .map(|k| ring[(start + k) % len].1 as usize)
        .find(|&i| ok(i))
}

/// FNV-1a followed by a 64-bit finalizer: stable across processes and Rust versions (unlike
/// `DefaultHasher`), so ring points do not move when the binary is upgraded.
pub fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
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

    fn ring_owner(b: &Balancer, key: u64) -> u32 {
        let Balancer::ConsistentHash { ring } = b else {
            unreachable!("not a ring")
        };
        let i = ring.partition_point(|&(p, _)| p < key) % ring.len();
        ring[i].1
    }

    #[test]
    fn ring_moves_about_one_nth_of_keys_when_an_endpoint_is_added() {
        let ids4 = ["http://a:1", "http://b:1", "http://c:1", "http://d:1"];
        let ids5 = [
            "http://a:1",
            "http://b:1",
            "http://c:1",
            "http://d:1",
            "http://e:1",
        ];
        let four = Balancer::new(LoadBalancing::ConsistentHash, &[1; 4], &ids4);
        let five = Balancer::new(LoadBalancing::ConsistentHash, &[1; 5], &ids5);
        let keys: Vec<u64> = (0..10_000u32)
            .map(|k| hash_bytes(&k.to_le_bytes()))
            .collect();
        let moved = keys
            .iter()
            .filter(|&&k| ring_owner(&four, k) != ring_owner(&five, k))
            .count();
        // Ideal: 1/5 of keys move, all of them to the new endpoint.
        assert!((1500..=2500).contains(&moved), "moved {moved} of 10000");
        for &k in &keys {
            let (a, b) = (ring_owner(&four, k), ring_owner(&five, k));
            assert!(a == b || b == 4, "a key moved between old endpoints");
        }
        // And the spread is even: each of 5 endpoints owns 20% ± 5%.
        for e in 0..5 {
            let n = keys.iter().filter(|&&k| ring_owner(&five, k) == e).count();
            assert!((1500..=2500).contains(&n), "endpoint {e} owns {n}");
        }
    }
}
