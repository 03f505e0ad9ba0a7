//! Header rules for forwarding: hop-by-hop removal (RFC 9110 §7.6.1), `X-Forwarded-*`, `Via`,
//! `Host`, and the request id.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use crate::upstream::h1::RawRule;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `Via`, as a static (a constant's reference is not one: it has a destructor).
static VIA: HeaderName = header::VIA;

/// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy (entries left of it could be forged by the
/// client). IPv4-mapped IPv6 addresses are returned as IPv4.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut leftmost = peer;
    let entries = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("").rsplit(','));
    for entry in entries {
        let Some(ip) = parse_forwarded_ip(entry.trim()) else {
            // An entry we cannot read ends the chain of trust: stop at the last good address.
            return leftmost;
        };
        if !is_trusted(&ip) {
            return ip;
        }
        leftmost = ip;
    }
    leftmost
}

/// An `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// Removes hop-by-hop headers: every name listed in `Connection`, then the standard ones.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most heads have nothing to remove (the native HTTP/1 codecs leave the connection's own
    // fields out of the map): one cheap pass says so before anything is set up.
    if !h
        .keys()
        .any(|k| *k == header::CONNECTION || is_hop_by_hop(k) || is_consumer_header(k))
    {
        return;
    }
    // One pass over the (few) names finds what to remove; most messages carry at most
    // `Connection`, so this beats a hashed removal per hop-by-hop name.
    let mut found: [Option<HeaderName>; 9] = Default::default();
    // Names past the array (many `x-consumer-*` names, say) still go: every one must be removed.
    let mut more: Vec<HeaderName> = Vec::new();
    let mut n = 0;
    let mut has_connection = false;
    for k in h.keys() {
        if *k == header::CONNECTION {
            has_connection = true;
        } else if *k == header::TE && is_te_trailers(h) {
            // `TE: trailers` says the client accepts trailers: gRPC needs it end to end, and it
            // is the one TE value HTTP/2 allows (RFC 9113 §8.2.2).
        } else if is_hop_by_hop(k) || is_consumer_header(k) {
            if n < found.len() {
                found[n] = Some(k.clone());
                n += 1;
            } else {
                more.push(k.clone());
            }
        }
    }
    if has_connection {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `close` names no field and `keep-alive` goes below anyway: skipping them keeps
            // the usual `Connection` value from allocating anything.
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            h.remove(name);
        }
        h.remove(header::CONNECTION);
    }
    for name in found.into_iter().flatten().chain(more) {
        h.remove(name);
    }
}

fn is_te_trailers(h: &HeaderMap) -> bool {
    let mut all = h.get_all(header::TE).iter();
    matches!((all.next(), all.next()), (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// Headers only the gateway may set: a client sending them could pose as a consumer.
fn is_consumer_header(k: &HeaderName) -> bool {
    is_consumer_name(k.as_str().as_bytes())
}

/// [`is_consumer_header`] on a name as it came (any case).
fn is_consumer_name(name: &[u8]) -> bool {
    const PREFIX: &[u8] = b"x-consumer-";
    (name.len() > PREFIX.len() && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX))
        || name.eq_ignore_ascii_case(crate::plugin::X_ANONYMOUS_CONSUMER.as_str().as_bytes())
}

/// What the proxy does with an upstream response's field when the fields come as lines
/// ([`crate::upstream::CallOptions::raw_fields`]): consumer fields go through
/// [`strip_hop_by_hop`] on a map, the upstream's request id makes way for the gateway's (which
/// the server writes; on a map it replaces the upstream's), the rest pass.
pub fn raw_rule(name: &[u8]) -> RawRule {
    // Every name picked out starts with `x-`: most fields are decided by their first byte.
    if !matches!(name.first(), Some(b'x' | b'X')) {
        return RawRule::Keep;
    }
    if name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes()) {
        RawRule::Drop
    } else if is_consumer_name(name) {
        RawRule::Map
    } else {
        RawRule::Keep
    }
}

/// The hop-by-hop fields of RFC 9110 §7.6.1 (besides `Connection`) and their legacy relatives.
/// `Trailer` is not one (RFC 9110 §6.6.2): it names the trailers of the message end to end, and
/// an HTTP/1.1 client gets only the trailers it names.
fn is_hop_by_hop(k: &HeaderName) -> bool {
    *k == header::TE || crate::http1::is_hop_by_hop(k)
}

/// True for an HTTP/1.1 upgrade request (`Connection: upgrade` and an `Upgrade` header).
pub fn wants_upgrade(h: &HeaderMap) -> Option<HeaderValue> {
    let conn_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if conn_upgrade {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Adds the forwarding headers for a request from `peer` that arrived with `host`, over TLS
/// when `https` (`X-Forwarded-Proto`). `peer` is the client address as a header value
/// ([`peer_value`]), made once per connection.
pub fn add_forwarding(
    h: &mut HeaderMap,
    peer: &HeaderValue,
    host: Option<&HeaderValue>,
    via: &HeaderValue,
    https: bool,
) {
    // One lookup per field (entries, not a check then an insert): these run on every request.
    match h.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut prior) => {
            let mut xff =
                prior
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .fold(String::new(), |mut acc, v| {
                        if !acc.is_empty() {
                            acc.push_str(", ");
                        }
                        acc.push_str(v);
                        acc
                    });
            xff.push_str(", ");
            xff.push_str(peer.to_str().unwrap_or(""));
            if let Ok(v) = HeaderValue::from_str(&xff) {
                prior.insert(v);
            }
        }
        // The common case: no proxy before us; share the connection's value, no allocation.
        Entry::Vacant(e) => {
            e.insert(peer.clone());
        }
    }
    let proto = if https { "https" } else { "http" };
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            h.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None => {
            h.remove(&X_FORWARDED_HOST);
        }
    }
    match h.entry(header::VIA) {
        Entry::Occupied(mut prior) => match prior.get().to_str() {
            Ok(p) => {
                let ours = via.to_str().unwrap_or("1.1 frontdesk");
                if let Ok(v) = HeaderValue::from_str(&format!("{p}, {ours}")) {
                    prior.insert(v);
                }
            }
            // Not text: ours replaces it.
            Err(_) => {
                prior.insert(via.clone());
            }
        },
        Entry::Vacant(e) => {
            e.insert(via.clone());
        }
    }
}

/// True when `h` holds a field [`add_forwarding`] appends to or sets (`X-Forwarded-*`, `Via`,
/// `X-Request-Id`): one pass over the names, no lookups.
pub fn names_forwarding(h: &HeaderMap) -> bool {
    h.keys().any(|k| {
        *k == header::VIA
            || *k == X_FORWARDED_FOR
            || *k == X_FORWARDED_PROTO
            || *k == X_FORWARDED_HOST
            || *k == X_REQUEST_ID
    })
}

/// The fields [`add_forwarding`] sets on a request that has none of them
/// ([`names_forwarding`] is false), in the same order, pushed to `out` instead of a map.
pub fn forwarding_fields(
    out: &mut crate::upstream::AddedFields,
    peer: &HeaderValue,
    host: Option<&HeaderValue>,
    via: &HeaderValue,
    https: bool,
) {
    let proto = if https { "https" } else { "http" };
    out.push((&X_FORWARDED_FOR, peer.clone()));
    out.push((&X_FORWARDED_PROTO, HeaderValue::from_static(proto)));
    if let Some(host) = host {
        out.push((&X_FORWARDED_HOST, host.clone()));
    }
    out.push((&VIA, via.clone()));
}

/// The client address as a header value (IPv4-mapped IPv6 shown as IPv4), shared by every
/// request of a connection.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(peer.to_canonical().to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Keeps a well-formed inbound request id (1 to 128 of `A-Z a-z 0-9 . _ : -`), or makes a new one.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
        {
            return v.clone();
        }
    }
    generate_id()
}

/// A fresh request id: 32 random lowercase hex digits.
pub(crate) fn generate_id() -> HeaderValue {
    // Both digits of a byte at once: a table of 256 pairs.
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        t
    };
    let random = [
        fastrand::u64(..).to_le_bytes(),
        fastrand::u64(..).to_le_bytes(),
    ];
    let mut out = [0u8; 32];
    for i in 0..16 {
        let [hi, lo] = PAIRS[usize::from(random[i / 8][i % 8])];
        out[2 * i] = hi;
        out[2 * i + 1] = lo;
    }
    // 32 lowercase hex digits: always a valid header value. Owned by a `Bytes` from the start:
    // the id is cloned into the log record and the response, and a copied-in (`Vec`-backed)
    // value would allocate again at its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Beside the map or in it, a request without forwarding fields gets the same ones.
    #[test]
    fn forwarding_fields_are_what_add_forwarding_sets() {
        let peer = HeaderValue::from_static("192.0.2.1");
        let via = HeaderValue::from_static("1.1 gw");
        let host = HeaderValue::from_static("shop.example");
        for (host, https) in [(Some(&host), false), (None, true)] {
            let mut map = HeaderMap::new();
            map.insert(header::HOST, HeaderValue::from_static("shop.example"));
            assert!(!names_forwarding(&map));
            let mut beside = crate::upstream::AddedFields::new();
            forwarding_fields(&mut beside, &peer, host, &via, https);
            let mut by_map = map.clone();
            add_forwarding(&mut by_map, &peer, host, &via, https);
            for (n, v) in &beside {
                map.append(*n, v.clone());
            }
            let list = |m: &HeaderMap| {
                m.iter()
                    .map(|(n, v)| format!("{n}: {v:?}"))
                    .collect::<Vec<_>>()
            };
            assert_eq!(list(&map), list(&by_map));
            assert!(names_forwarding(&by_map));
        }
    }

    #[test]
    fn removes_headers_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn appends_to_forwarded_for_and_via() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert(header::VIA, HeaderValue::from_static("1.0 edge"));
        let via = HeaderValue::from_static("1.1 frontdesk");
        add_forwarding(
            &mut h,
            &peer_value("10.1.2.3".parse().expect("ip")),
            Some(&HeaderValue::from_static("a.example")),
            &via,
            false,
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(h[header::VIA], "1.0 edge, 1.1 frontdesk");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        add_forwarding(
            &mut h,
            &peer_value("10.1.2.3".parse().expect("ip")),
            None,
            &via,
            true,
        );
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn keeps_well_formed_request_ids_only() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123:x.y_z"));
        assert_eq!(request_id(&h), "abc-123:x.y_z");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("bad id!"));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, "bad id!");
    }

    /// A lookup the session skips when the codec saw no field of its kind (`http1::Seen`) would
    /// have found nothing: every name these rules act on is marked.
    #[test]
    fn what_the_codec_marks_covers_every_name_the_proxy_acts_on() {
        for name in [
            "te",
            "TE",
            "connection",
            "Keep-Alive",
            "upgrade",
            "proxy-connection",
            "transfer-encoding",
            "Proxy-Authenticate",
            "proxy-authorization",
            "x-consumer-name",
            "X-Consumer-Custom-Id",
            "x-anonymous-consumer",
            "x-forwarded-for",
            "X-Forwarded-Proto",
            "x-forwarded-host",
            "via",
            "VIA",
            "x-request-id",
            "X-Request-ID",
            "content-type",
            "Content-Type",
            "host",
            "accept",
            "x-other",
            "trailer",
            "date",
            "content-length",
        ] {
            let mut seen = crate::http1::Seen::NONE;
            seen.note(name.as_bytes());
            let mut map = HeaderMap::new();
            let value = if name.eq_ignore_ascii_case("connection") {
                "close, x-other"
            } else if name.eq_ignore_ascii_case("content-type") {
                "application/grpc"
            } else {
                "v1"
            };
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static(value),
            );
            let mut stripped = map.clone();
            strip_hop_by_hop(&mut stripped);
            if stripped.len() != map.len() {
                assert!(seen.strippable(), "{name}: stripped, not marked");
            }
            if names_forwarding(&map) {
                assert!(seen.forwarding(), "{name}: forwarding, not marked");
            }
            if request_id(&map) == "v1" {
                assert!(seen.x_fields(), "{name}: a request id, not marked");
            }
            if crate::proxy::error_response::is_grpc(&map) {
                assert!(seen.content_type(), "{name}: a content type, not marked");
            }
        }
        assert_eq!(crate::http1::Seen::NONE, {
            let mut s = crate::http1::Seen::NONE;
            for n in [
                "host",
                "accept",
                "user-agent",
                "content-length",
                "date",
                "trailer",
            ] {
                s.note(n.as_bytes());
            }
            s
        });
    }

    #[test]
    fn fresh_ids_are_32_hex_digits_and_differ() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate_id()).collect();
        assert_eq!(ids.len(), 1000);
        // Every digit value shows up somewhere, in every position: no digit is stuck.
        for at in 0..32 {
            let seen: std::collections::HashSet<u8> =
                ids.iter().map(|v| v.as_bytes()[at]).collect();
            assert_eq!(seen.len(), 16, "position {at}: {seen:?}");
        }
        assert!(
            ids.iter()
                .all(|v| v.len() == 32
                    && v.as_bytes().iter().all(|b| b"0123456789abcdef".contains(b)))
        );
    }
}
