//! GCRA, the generic cell rate algorithm: a token bucket kept as one number per key, the
//! "theoretical arrival time" (TAT). The same math runs here (local store) and in the Redis
//! script (`redis.rs`), so both modes admit exactly the same sequences; a property test checks it.
//!
//! Times are microseconds. A limit of `rate` per `per` with `burst` tokens has an emission
//! interval `T = per / rate` and a tolerance `tau = T * burst`.

/// A limit's numbers, in the units the algorithm uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Params {
    /// Microseconds between tokens (at least 1).
    pub interval_us: u64,
    /// Bucket size in tokens (at least 1).
    pub burst: u64,
}

impl Params {
    /// `rate` tokens per `per`, with a bucket of `burst` tokens.
    pub fn new(rate: u64, per: std::time::Duration, burst: u64) -> Params {
        let per_us = u64::try_from(per.as_micros()).unwrap_or(u64::MAX);
        Params {
            interval_us: (per_us / rate.max(1)).max(1),
            burst: burst.max(1),
        }
    }

    fn tau(self) -> u64 {
        self.interval_us.saturating_mul(self.burst)
    }
}

/// The outcome of taking one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The request may pass.
    pub allowed: bool,
    /// Tokens left after this request.
    pub remaining: u64,
    /// Microseconds until a token is back (0 when allowed).
    pub retry_after_us: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
}

/// Takes one token at `now` from a bucket whose TAT is `tat` (`None`: a full bucket). Returns the
/// decision and the TAT to store (unchanged when refused).
///
/// The textbook form compares `new_tat - tau` with `now`; that difference is negative while
/// `now < tau` (early on a process clock that starts near zero), so everything here is compared
/// against `now + tau`, the latest TAT a full bucket allows, and never subtracts below zero.
pub fn take(now: u64, tat: Option<u64>, p: Params) -> (Decision, Option<u64>) {
    let tat = tat.map_or(now, |t| t.max(now));
    let new_tat = tat.saturating_add(p.interval_us);
    let latest = now.saturating_add(p.tau());
    if new_tat > latest {
        return (
            Decision {
                allowed: false,
                remaining: 0,
                retry_after_us: new_tat - latest,
                reset_us: tat - now,
            },
            None,
        );
    }
    (
        Decision {
            allowed: true,
            remaining: (latest - new_tat) / p.interval_us,
            retry_after_us: 0,
            reset_us: new_tat - now,
        },
        Some(new_tat),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ten_per_minute_admits_ten_at_once_then_one_every_six_seconds() {
        let p = Params::new(10, Duration::from_secs(60), 10);
        let mut tat = None;
        let now = 1_000_000_000;
        for i in 0..10 {
            let (d, t) = take(now, tat, p);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = t;
        }
        let (d, t) = take(now, tat, p);
        assert!(!d.allowed);
        assert_eq!(t, None);
        assert_eq!(d.retry_after_us, 6_000_000);
        assert_eq!(d.reset_us, 60_000_000);
        // Six seconds later exactly one token is back.
        let (d, t) = take(now + 6_000_000, tat, p);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let (d, _) = take(now + 6_000_000, t, p);
        assert!(!d.allowed);
    }

    #[test]
    fn remaining_is_right_while_now_is_smaller_than_the_bucket() {
        // A process clock starts near zero; an hour-long bucket must still count down from 99.
        let p = Params::new(100, Duration::from_secs(3600), 100);
        let (d, tat) = take(1_000_000, None, p);
        assert!(d.allowed);
        assert_eq!(d.remaining, 99);
        assert_eq!(d.reset_us, 36_000_000);
        let (d, _) = take(1_000_000, tat, p);
        assert_eq!(d.remaining, 98);
    }

    #[test]
    fn burst_below_rate_spreads_requests() {
        let p = Params::new(100, Duration::from_secs(1), 2);
        let (a, t) = take(0, None, p);
        let (b, t) = take(0, t, p);
        let (c, _) = take(0, t, p);
        assert!(a.allowed && b.allowed && !c.allowed);
        assert_eq!(c.retry_after_us, 10_000);
    }
}
