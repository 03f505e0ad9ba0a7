//! IP addresses and CIDR networks in config lists (`trusted_proxies`, `ip_filter`), read into
//! canonical [`ipnet::IpNet`]s.

use crate::{Diagnostic, FieldPath};

/// Parses addresses and CIDR networks (`10.0.0.0/8`, `::1`); errors go to `errs` at `at[i]`.
/// Shared by every setting that lists networks.
pub fn parse_nets(
    list: &[String],
    at: &FieldPath,
    errs: &mut Vec<Diagnostic>,
) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match parse_net(s) {
            Some(n) => out.push(n),
            None => errs.push(Diagnostic::error(
                at.index(i).to_string(),
                format!("{s:?} is not an IP address or CIDR network"),
            )),
        }
    }
    out
}

/// One address (a /32 or /128 network) or CIDR network; IPv4-mapped IPv6 becomes IPv4, networks
/// too (`::ffff:10.0.0.0/104` is `10.0.0.0/8`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(canonical_net(n.trunc()));
    }
    s.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ipnet::IpNet::from(ip.to_canonical()))
}

/// A network inside `::ffff:0:0/96` as its IPv4 network. Client addresses are canonical (mapped
/// ones are given as IPv4), so a mapped rule left as IPv6 would never match anything.
fn canonical_net(n: ipnet::IpNet) -> ipnet::IpNet {
    let ipnet::IpNet::V6(v6) = n else { return n };
    match (v6.prefix_len().checked_sub(96), v6.addr().to_ipv4_mapped()) {
        (Some(len), Some(v4)) => ipnet::Ipv4Net::new(v4, len).map_or(n, ipnet::IpNet::V4),
        _ => n,
    }
}
