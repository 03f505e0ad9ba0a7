//! `ip_filter`: refuse clients by address with `403`.
//!
//! The address is [`Ctx::client_ip`]: the peer's, or the right-most untrusted `X-Forwarded-For`
//! entry when the peer is one of the listener's `trusted_proxies`. `deny` wins over `allow`; with an
//! `allow` list, every address outside it is refused. IPv4-mapped IPv6 addresses and networks are
//! IPv4 on both sides, so `::ffff:10.6.6.7` matches `10.6.6.0/24`.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::{parse_nets, Diagnostic, FieldPath, IpFilterConfig};
use http::StatusCode;

use crate::plugin::{BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead};

/// The `ip_filter` plugin.
#[derive(Debug)]
pub struct IpFilter {
    /// `None`: no allow list, every address not denied passes.
    allow: Option<NetSet>,
    deny: NetSet,
}

impl IpFilter {
    /// True when `ip` may pass.
    fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|a| a.contains(ip))
    }
}

/// Networks as sorted, disjoint address ranges: a lookup is a binary search, so long lists cost
/// no more than a few comparisons per request.
#[derive(Debug, Default)]
struct NetSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl NetSet {
    fn new(nets: &[ipnet::IpNet]) -> NetSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in nets {
            match n {
                ipnet::IpNet::V4(n) => v4.push((n.network().into(), n.broadcast().into())),
                ipnet::IpNet::V6(n) => v6.push((n.network().into(), n.broadcast().into())),
            }
        }
        NetSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// `ip` must be canonical (IPv4-mapped given as IPv4), as [`Ctx::client_ip`] is.
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => in_ranges(&self.v4, a.into()),
            IpAddr::V6(a) => in_ranges(&self.v6, a.into()),
        }
    }
}

/// Sorts ranges by start and joins overlapping ones (CIDR ranges either nest or are disjoint).
fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// True when `x` is in one of `ranges` (sorted, disjoint).
fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before `x` is the only one that can hold it.
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|&(_, end)| x <= end)
}

/// Parses one list; errors name the entry (`allow[2]: ...`).
fn nets(list: &[String], field: &str, errs: &mut Vec<Diagnostic>) -> NetSet {
    NetSet::new(&parse_nets(list, &FieldPath::root().key(field), errs))
}

impl PluginFactory for IpFilter {
    const KIND: &'static str = "ip_filter";
    const ORDER: u16 = 100;
    type Config = IpFilterConfig;

    fn build(cfg: &IpFilterConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        if cfg.allow.is_empty() && cfg.deny.is_empty() {
            return Err("set `allow`, `deny` or both".into());
        }
        let mut errs = Vec::new();
        let allow = (!cfg.allow.is_empty()).then(|| nets(&cfg.allow, "allow", &mut errs));
        let deny = nets(&cfg.deny, "deny", &mut errs);
        if !errs.is_empty() {
            return Err(errs
                .iter()
                .map(|d| format!("{}: {}", d.path, d.message))
                .collect::<Vec<_>>()
                .join("; "));
        }
        Ok(Arc::new(IpFilter { allow, deny }))
    }
}

#[async_trait]
impl Plugin for IpFilter {
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
        if self.permits(cx.client_ip) {
            return Ok(Flow::Continue);
        }
        // The same answer for "denied" and "not allowed": the rules are not the client's business.
        Err(PluginError::new(
            StatusCode::FORBIDDEN,
            "the client address is not allowed on this route",
        )
        .with_reason("ip_denied"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> Result<Arc<dyn Plugin>, String> {
        let cfg = IpFilterConfig {
            allow: allow.iter().map(ToString::to_string).collect(),
            deny: deny.iter().map(ToString::to_string).collect(),
        };
        IpFilter::build(&cfg, &BuildEnv::default())
    }

    fn build_error(allow: &[&str], deny: &[&str]) -> String {
        match filter(allow, deny) {
            Ok(_) => panic!("{allow:?} {deny:?} should not build"),
            Err(e) => e,
        }
    }

    async fn status(p: &Arc<dyn Plugin>, ip: &str) -> Option<StatusCode> {
        let (mut head, ()) = http::Request::new(()).into_parts();
        let mut cx = Ctx::for_test();
        cx.client_ip = ip.parse::<IpAddr>().expect("ip").to_canonical();
        match p.request_filter(&mut head, &mut cx).await {
            Ok(Flow::Continue) => None,
            Ok(Flow::Respond(_)) => panic!("ip_filter never answers"),
            Err(e) => Some(e.status),
        }
    }

    #[tokio::test]
    async fn deny_wins_over_allow_and_the_allow_list_is_exclusive() {
        let p = filter(&["127.0.0.0/8", "10.0.0.0/8"], &["10.6.6.0/24"]).expect("builds");
        assert_eq!(status(&p, "127.0.0.1").await, None);
        assert_eq!(status(&p, "10.1.2.3").await, None);
        assert_eq!(status(&p, "10.6.6.7").await, Some(StatusCode::FORBIDDEN));
        assert_eq!(status(&p, "192.168.1.1").await, Some(StatusCode::FORBIDDEN));
        assert_eq!(status(&p, "::1").await, Some(StatusCode::FORBIDDEN));
    }

    #[tokio::test]
    async fn deny_only_lets_everything_else_through() {
        let p = filter(&[], &["203.0.113.7", "2001:db8::/32"]).expect("builds");
        assert_eq!(status(&p, "203.0.113.7").await, Some(StatusCode::FORBIDDEN));
        assert_eq!(status(&p, "203.0.113.8").await, None);
        assert_eq!(status(&p, "2001:db8::1").await, Some(StatusCode::FORBIDDEN));
        assert_eq!(status(&p, "2001:db9::1").await, None);
    }

    #[tokio::test]
    async fn ipv4_mapped_addresses_and_rules_are_ipv4() {
        // Mapped client against an IPv4 rule, and a mapped rule against an IPv4 client.
        let p = filter(
            &[],
            &["10.6.6.0/24", "::ffff:192.0.2.0/120", "::ffff:198.51.100.9"],
        )
        .expect("builds");
        assert_eq!(
            status(&p, "::ffff:10.6.6.7").await,
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(status(&p, "192.0.2.200").await, Some(StatusCode::FORBIDDEN));
        assert_eq!(
            status(&p, "198.51.100.9").await,
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(status(&p, "198.51.100.10").await, None);
    }

    #[test]
    fn ranges_are_merged_and_searched() {
        let set = NetSet::new(
            &[
                "10.0.0.0/8",
                "10.1.0.0/16",
                "192.168.0.0/24",
                "192.168.1.0/24",
                "1.2.3.4",
            ]
            .map(|s| frontdesk_config::parse_net(s).expect("net")),
        );
        // The nested /16 disappears into the /8; adjacent /24s stay two ranges.
        assert_eq!(set.v4.len(), 4, "{set:?}");
        for (ip, inside) in [
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("9.255.255.255", false),
            ("192.168.1.255", true),
            ("192.168.2.0", false),
            ("1.2.3.4", true),
            ("1.2.3.5", false),
            ("0.0.0.0", false),
        ] {
            assert_eq!(set.contains(ip.parse().expect("ip")), inside, "{ip}");
        }
        assert!(!NetSet::default().contains("1.1.1.1".parse().expect("ip")));
    }

    #[test]
    fn bad_entries_and_empty_config_are_build_errors() {
        let e = build_error(&["10.0.0.0/8", "nope"], &["10.0.0.0/33"]);
        assert!(e.contains("allow[1]: \"nope\" is not"), "{e}");
        assert!(e.contains("deny[0]: \"10.0.0.0/33\" is not"), "{e}");
        let e = build_error(&[], &[]);
        assert!(e.contains("set `allow`, `deny` or both"), "{e}");
    }
}
