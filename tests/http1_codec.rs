//! The native HTTP/1.1 codec (`server.http1: native`) under hostile and random input, and against
//! hyper's server under the head guard (`server.http1: hyper`):
//!
//! - the head parser and the chunked decoder never panic on tens of thousands of random and
//!   mutated inputs, whatever the split points, and never take back an early refusal;
//! - random valid heads and chunked bodies parse to exactly what was generated, at any split;
//! - both codecs, in front of one recording upstream, agree on a few hundred generated requests
//!   (valid, the smuggling vectors, random mutations): the status class of the first answer and
//!   what the upstream received;
//! - the smuggling vectors, one by one, on both codecs; pipelining, `HEAD` and
//!   `Expect: 100-continue` on both.
//!
//! Everything is seeded (`fastrand::Rng::with_seed`): a failure names its case and replays.
//!
//! What these tests found is kept here: each bug as an ignored `bug_*` test naming its bytes (run
//! them with `--ignored`), and each difference between the codecs, legitimate or a bug, named in
//! [`known_difference`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use frontdesk::http1::decode::{Decoded, Decoder, Malformed};
use frontdesk::server::h1::head::{self, Framing, HeaderSlots};
use frontdesk::snapshot::HeadLimits;
use futures_util::StreamExt;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use common::{config, full, gateway, upstream, TestGateway, Upstream};

// ---- Generators ----

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE", "M-SEARCH",
];

/// RFC 9110 `tchar`.
const TCHAR: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// RFC 3986 `pchar` without `%` (percent-encodings are made separately).
const PCHAR: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@";

/// Field names the head parser gives a meaning to: generated fields avoid them.
const SPECIAL: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "expect",
    "te",
    "host",
    "keep-alive",
    "proxy-connection",
    "trailer",
];

/// Bytes a mutation inserts: the ones every HTTP/1 parser has an opinion about.
const INSERTS: &[u8] = b"\r\n \t\0\xff:,;0";

fn pick<'a, T>(rng: &mut fastrand::Rng, from: &'a [T]) -> &'a T {
    &from[rng.usize(..from.len())]
}

fn token(rng: &mut fastrand::Rng, len: std::ops::Range<usize>) -> String {
    let n = rng.usize(len);
    (0..n).map(|_| char::from(*pick(rng, TCHAR))).collect()
}

/// A random origin-form target: segments of `pchar` and percent-encodings, maybe a query. No
/// segment is `.` or `..` (a gateway may normalise those).
fn origin_target(rng: &mut fastrand::Rng) -> String {
    let mut t = String::new();
    for _ in 0..rng.usize(1..5) {
        t.push('/');
        // Starting with a letter keeps dot segments out.
        t.push(char::from(rng.u8(b'a'..=b'z')));
        for _ in 0..rng.usize(0..10) {
            if rng.u8(..) < 20 {
                t.push_str(&format!("%{:02X}", rng.u8(0x20..0x7f)));
            } else {
                t.push(char::from(*pick(rng, PCHAR)));
            }
        }
    }
    if rng.bool() {
        t.push('?');
        for _ in 0..rng.usize(0..16) {
            t.push(char::from(*pick(rng, b"abcXYZ019-._~!$&'()*+,;=:@/?")));
        }
    }
    t
}

/// A field value: visible ASCII (and, when `obs_text`, bytes over 0x7f) with SP and HTAB only
/// inside.
fn field_value(rng: &mut fastrand::Rng, obs_text: bool) -> Vec<u8> {
    let n = rng.usize(0..24);
    let mut v: Vec<u8> = (0..n)
        .map(|_| match rng.u8(..) {
            0..=14 => b' ',
            15..=19 => b'\t',
            20..=24 if obs_text => rng.u8(0x80..=0xff),
            _ => rng.u8(0x21..0x7f),
        })
        .collect();
    // No whitespace at either end: that is optional whitespace, not value.
    while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        v.remove(0);
    }
    while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
        v.pop();
    }
    v
}

fn field_name(rng: &mut fastrand::Rng, x_prefix: bool) -> String {
    loop {
        let name = if x_prefix {
            format!("X-{}", token(rng, 1..12))
        } else {
            token(rng, 1..16)
        };
        if !SPECIAL.contains(&name.to_ascii_lowercase().as_str()) {
            return name;
        }
    }
}

/// How a generated request frames its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framed {
    None,
    Length,
    Chunked,
}

/// A generated valid request head and what a parser must find in it.
#[derive(Clone, Debug)]
struct GenHead {
    wire: Vec<u8>,
    method: String,
    target: String,
    fields: Vec<(String, Vec<u8>)>,
    framing: Framing,
}

/// A random valid request head. `e2e`: fields a gateway forwards unchanged (`X-` names, a Host).
fn valid_head(rng: &mut fastrand::Rng, framed: Framed, body_len: usize, e2e: bool) -> GenHead {
    let method = if e2e {
        (*pick(rng, &METHODS[..6])).to_owned()
    } else {
        (*pick(rng, METHODS)).to_owned()
    };
    let target = origin_target(rng);
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    if e2e || rng.bool() {
        fields.push(("Host".into(), b"example.test".to_vec()));
    }
    for _ in 0..rng.usize(0..8) {
        let obs_text = rng.u8(..) < 40;
        fields.push((field_name(rng, e2e), field_value(rng, obs_text)));
    }
    let framing = match framed {
        Framed::None => Framing::Length(0),
        Framed::Length => {
            let name = *pick(rng, &["Content-Length", "content-length", "CONTENT-LENGTH"]);
            fields.insert(
                rng.usize(..=fields.len()),
                (name.into(), body_len.to_string().into_bytes()),
            );
            Framing::Length(body_len as u64)
        }
        Framed::Chunked => {
            let value = *pick(rng, &["chunked", "Chunked", "gzip, chunked", "chunked"]);
            fields.insert(
                rng.usize(..=fields.len()),
                ("Transfer-Encoding".into(), value.as_bytes().to_vec()),
            );
            Framing::Chunked
        }
    };
    let mut wire = Vec::new();
    if !e2e && rng.u8(..) < 30 {
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(format!("{method} {target} HTTP/1.1\r\n").as_bytes());
    for (name, value) in &fields {
        wire.extend_from_slice(name.as_bytes());
        wire.push(b':');
        // Optional whitespace around the value.
        wire.extend_from_slice(pick::<&[u8]>(rng, &[b"", b" ", b"  ", b"\t", b" \t"]));
        wire.extend_from_slice(value);
        wire.extend_from_slice(pick::<&[u8]>(rng, &[b"", b"", b" ", b"\t"]));
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    GenHead {
        wire,
        method,
        target,
        fields,
        framing,
    }
}

/// A generated valid chunked body: the wire bytes, the data and the trailer fields.
#[derive(Clone, Debug)]
struct GenChunked {
    wire: Vec<u8>,
    data: Vec<u8>,
    trailers: Vec<(String, String)>,
}

fn chunk_ext(rng: &mut fastrand::Rng) -> String {
    let mut ext = String::new();
    for _ in 0..rng.usize(0..3) {
        ext.push_str(pick::<&str>(rng, &["", " ", "\t"]));
        ext.push(';');
        ext.push_str(&token(rng, 1..8));
        match rng.u8(..3) {
            0 => {}
            1 => {
                ext.push('=');
                ext.push_str(&token(rng, 1..8));
            }
            _ => {
                ext.push_str("=\"");
                ext.push_str(&token(rng, 0..8).replace(['"', '\\'], "q"));
                ext.push_str(" x\"");
            }
        }
    }
    ext
}

/// A chunk size in hex, random case, maybe with leading zeros (16 digits at most).
fn hex_size(rng: &mut fastrand::Rng, n: usize) -> String {
    let digits = if rng.bool() {
        format!("{n:x}")
    } else {
        format!("{n:X}")
    };
    let zeros = rng.usize(0..=(16 - digits.len()).min(3));
    format!("{}{digits}", "0".repeat(zeros))
}

fn chunked_body(rng: &mut fastrand::Rng, max_chunks: usize, trailers: bool) -> GenChunked {
    let (mut wire, mut data, mut fields) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rng.usize(0..=max_chunks) {
        let n = if rng.u8(..) < 20 {
            rng.usize(200..3000)
        } else {
            rng.usize(1..64)
        };
        let mut piece = vec![0u8; n];
        rng.fill(&mut piece);
        wire.extend_from_slice(format!("{}{}\r\n", hex_size(rng, n), chunk_ext(rng)).as_bytes());
        wire.extend_from_slice(&piece);
        wire.extend_from_slice(b"\r\n");
        data.extend_from_slice(&piece);
    }
    wire.extend_from_slice(format!("{}{}\r\n", hex_size(rng, 0), chunk_ext(rng)).as_bytes());
    if trailers {
        for i in 0..rng.usize(0..3) {
            let name = format!("x-t{i}-{}", token(rng, 1..6).to_ascii_lowercase());
            let value: String = (0..rng.usize(1..12))
                .map(|_| char::from(rng.u8(0x21..0x7f)))
                .collect();
            wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            fields.push((name, value));
        }
    }
    wire.extend_from_slice(b"\r\n");
    GenChunked {
        wire,
        data,
        trailers: fields,
    }
}

/// One random mutation: a byte flipped, a parser-relevant byte inserted, a truncation, a line
/// duplicated or dropped, or two bytes swapped.
fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>) {
    if input.is_empty() {
        input.push(*pick(rng, INSERTS));
        return;
    }
    let at = rng.usize(..input.len());
    match rng.u8(..7) {
        0 => input[at] ^= 1 << rng.u8(..8),
        1 | 2 => input.insert(at, *pick(rng, INSERTS)),
        3 => input.truncate(at),
        4 | 5 => {
            // Duplicate (or drop) the line around `at`.
            let start = input[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            let end = input[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(input.len(), |p| at + p + 1);
            let line = input[start..end].to_vec();
            if rng.bool() {
                input.splice(end..end, line);
            } else {
                input.drain(start..end);
            }
        }
        _ => {
            let other = rng.usize(..input.len());
            input.swap(at, other);
        }
    }
}

fn random_bytes(rng: &mut fastrand::Rng, max: usize) -> Vec<u8> {
    // Half from an alphabet that keeps the parsers past their first byte.
    let alphabet: &[u8] = b"GET POST / HTTP/1.1\r\n:Content-Length Transfer-Encoding chunked 0123456789abcdef;= \t\0\xff";
    let n = rng.usize(0..max);
    if rng.bool() {
        (0..n).map(|_| *pick(rng, alphabet)).collect()
    } else {
        let mut v = vec![0u8; n];
        rng.fill(&mut v);
        v
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

// ---- The head parser and the chunked decoder ----

fn limits(max_head: usize, max_headers: usize, max_uri: usize) -> HeadLimits {
    HeadLimits {
        max_head,
        max_headers,
        max_uri,
        head_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    }
}

/// A parse's verdict, owned: `Ok(None)` partial, `Ok(Some(len))` complete, `Err(status)`.
fn verdict(buf: &[u8], l: &HeadLimits) -> Result<Option<usize>, u16> {
    let mut slots = HeaderSlots::new();
    match head::parse(buf, l, &mut slots) {
        Ok(Some(p)) => {
            assert!(p.len <= buf.len(), "a head longer than its buffer");
            Ok(Some(p.len))
        }
        Ok(None) => Ok(None),
        Err(r) => {
            assert!(
                r.status.is_client_error(),
                "a refusal must be a 4xx: {r:?} for {}",
                lossy(buf)
            );
            Err(r.status.as_u16())
        }
    }
}

#[test]
fn the_head_parser_never_panics_and_never_takes_back_a_refusal() {
    let mut rng = fastrand::Rng::with_seed(0x4845_4144);
    let mut complete = 0;
    for case in 0..30_000 {
        // Tight limits (stack slots), loose ones, and more header slots than the stack holds.
        let l = match case % 3 {
            0 => limits(256, 8, 64),
            1 => limits(32 * 1024, 100, 8 * 1024),
            _ => limits(4096, 300, 512),
        };
        let input = if case % 4 == 0 {
            random_bytes(&mut rng, 400)
        } else {
            let framed = *pick(&mut rng, &[Framed::None, Framed::Length, Framed::Chunked]);
            let len = rng.usize(0..100);
            let mut h = valid_head(&mut rng, framed, len, false).wire;
            if rng.bool() {
                h.extend_from_slice(b"body bytes or a pipelined GET / HTTP/1.1\r\n\r\n");
            }
            for _ in 0..rng.usize(1..4) {
                mutate(&mut rng, &mut h);
            }
            h
        };
        let whole = verdict(&input, &l);
        complete += usize::from(matches!(whole, Ok(Some(_))));
        // The same bytes arriving in pieces: each prefix is parsed as the connection would.
        let mut cuts: Vec<usize> = (0..rng.usize(1..4))
            .map(|_| rng.usize(0..=input.len()))
            .collect();
        cuts.sort_unstable();
        for cut in cuts {
            let prefix = verdict(&input[..cut], &l);
            match (&prefix, &whole) {
                // More bytes never turn a refusal into an acceptance.
                (Err(_), Ok(_)) => panic!(
                    "case {case}: the prefix of {cut} bytes is refused ({prefix:?}) but the \
                     whole is not ({whole:?}): {}",
                    lossy(&input)
                ),
                // A head complete in a prefix is the same head in the whole.
                (Ok(Some(a)), _) => assert_eq!(
                    Ok(Some(*a)),
                    whole,
                    "case {case}, cut {cut}: {}",
                    lossy(&input)
                ),
                _ => {}
            }
        }
    }
    // The mutations left enough heads intact for the comparison above to mean something.
    assert!(complete > 3_000, "only {complete} complete heads");
}

#[test]
fn a_valid_head_parses_to_what_was_sent_at_any_split() {
    let mut rng = fastrand::Rng::with_seed(0x5641_4c49);
    let l = limits(32 * 1024, 100, 8 * 1024);
    for case in 0..5_000 {
        let framed = *pick(&mut rng, &[Framed::None, Framed::Length, Framed::Chunked]);
        let len = rng.usize(0..1_000_000);
        let g = valid_head(&mut rng, framed, len, false);
        // What follows the head (a body, a pipelined request) is not part of it.
        let mut buf = g.wire.clone();
        buf.extend_from_slice(b"POST /next HTTP/1.1\r\n\r\n");
        let mut slots = HeaderSlots::new();
        let p = head::parse(&buf, &l, &mut slots)
            .unwrap_or_else(|r| panic!("case {case}: {r:?} for {}", lossy(&g.wire)))
            .unwrap_or_else(|| panic!("case {case}: partial: {}", lossy(&g.wire)));
        assert_eq!(p.len, g.wire.len(), "case {case}: {}", lossy(&g.wire));
        assert_eq!((p.method, p.target), (g.method.as_str(), g.target.as_str()));
        let got: Vec<(&str, &[u8])> = p.headers.iter().map(|h| (h.name, h.value)).collect();
        let want: Vec<(&str, &[u8])> = g
            .fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        assert_eq!(got, want, "case {case}: {}", lossy(&g.wire));
        assert_eq!(p.traits.framing, g.framing, "case {case}");
        assert!(p.traits.keep_alive && !p.traits.http10, "case {case}");
        // Every shorter prefix is partial: keep reading. (All of them for one head in ten.)
        let cuts: Vec<usize> = if case % 10 == 0 {
            (0..g.wire.len()).collect()
        } else {
            vec![0, 1, rng.usize(..g.wire.len()), g.wire.len() - 1]
        };
        for cut in cuts {
            assert_eq!(
                verdict(&g.wire[..cut], &l),
                Ok(None),
                "case {case}, cut {cut}: {}",
                lossy(&g.wire)
            );
        }
    }
}

#[test]
fn framing_and_connection_traits_match_a_reference_model() {
    // Random sets of the fields the parser gives a meaning to, with the values smuggling tries.
    const CL: &[&str] = &[
        "0",
        "5",
        "05",
        "+5",
        "-1",
        "0x5",
        "5 5",
        "5,5",
        "",
        "1234567890123456789",
        "12345678901234567890",
        "00000000000000000005",
        " 5\t",
    ];
    const TE: &[&str] = &[
        "chunked",
        "CHUNKED",
        "gzip, chunked",
        "chunked, identity",
        "xchunked",
        "identity",
        "",
        ",chunked",
        "chunked,",
        "gzip,chunked",
        "chunked ",
        "chunked;q=1",
    ];
    let mut rng = fastrand::Rng::with_seed(0x4d4f_4445);
    let l = limits(32 * 1024, 100, 8 * 1024);
    let trim = |v: &str| v.trim_matches([' ', '\t']).to_owned();
    let tokens =
        |v: &str| -> Vec<String> { v.split(',').map(|t| trim(t).to_ascii_lowercase()).collect() };
    for case in 0..5_000 {
        let http10 = rng.u8(..) < 50;
        let mut fields: Vec<(&str, String)> = Vec::new();
        for _ in 0..rng.usize(0..5) {
            let (name, value) = match rng.u8(..7) {
                0 | 1 => (
                    *pick(&mut rng, &["Content-Length", "content-length"]),
                    *pick(&mut rng, CL),
                ),
                2 | 3 => (
                    *pick(&mut rng, &["Transfer-Encoding", "transfer-encoding"]),
                    *pick(&mut rng, TE),
                ),
                4 => (
                    "Connection",
                    *pick(
                        &mut rng,
                        &[
                            "close",
                            "keep-alive",
                            "Upgrade",
                            "close, upgrade",
                            "Keep-Alive, x",
                        ],
                    ),
                ),
                5 => (
                    *pick(&mut rng, &["Upgrade", "Expect"]),
                    *pick(&mut rng, &["websocket", "100-continue", "100-Continue", ""]),
                ),
                _ => (
                    "TE",
                    *pick(&mut rng, &["trailers", "gzip, trailers", "gzip"]),
                ),
            };
            fields.push((name, value.to_owned()));
        }
        let mut wire = format!("POST / HTTP/1.{}\r\n", if http10 { 0 } else { 1 });
        for (n, v) in &fields {
            wire.push_str(&format!("{n}: {v}\r\n"));
        }
        wire.push_str("\r\n");
        // The model (RFC 9112 §6): all Content-Length values identical digits (at most 19);
        // the last Transfer-Encoding line ends with chunked, never on HTTP/1.0, never with a
        // Content-Length.
        let all = |name: &str| -> Vec<String> {
            fields
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| trim(v))
                .collect()
        };
        let last = |name: &str| all(name).pop();
        let cls = all("content-length");
        let cl_ok = cls
            .iter()
            .all(|v| !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()))
            && cls.windows(2).all(|w| w[0] == w[1]);
        let te = last("transfer-encoding");
        let want = match (&te, cls.first()) {
            _ if !cl_ok => None,
            (Some(_), Some(_)) => None,
            (Some(te), None) => (!http10 && tokens(te).last().is_some_and(|t| t == "chunked"))
                .then_some(Framing::Chunked),
            (None, Some(v)) => Some(Framing::Length(v.parse().unwrap())),
            (None, None) => Some(Framing::Length(0)),
        };
        let conn: Vec<String> = all("connection").iter().flat_map(|v| tokens(v)).collect();
        let has = |t: &str| conn.iter().any(|c| c == t);
        let mut slots = HeaderSlots::new();
        let got = head::parse(wire.as_bytes(), &l, &mut slots);
        match (want, got) {
            (None, Err(r)) => assert_eq!(r.status, 400, "case {case}: {wire:?}"),
            (Some(framing), Ok(Some(p))) => {
                let t = p.traits;
                assert_eq!(t.framing, framing, "case {case}: {wire:?}");
                assert_eq!(t.http10, http10, "case {case}");
                assert_eq!(
                    t.keep_alive,
                    !has("close") && (!http10 || has("keep-alive")),
                    "case {case}: {wire:?}"
                );
                let upgrade = has("upgrade") && last("upgrade").is_some_and(|u| !u.is_empty());
                assert_eq!(t.upgrade, upgrade && !http10, "case {case}: {wire:?}");
                let expect = last("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
                assert_eq!(
                    t.expect_continue,
                    expect && !http10,
                    "case {case}: {wire:?}"
                );
                let trailers =
                    last("te").is_some_and(|v| tokens(&v).iter().any(|t| t == "trailers"));
                assert_eq!(t.trailers, trailers, "case {case}: {wire:?}");
            }
            (want, got) => panic!(
                "case {case}: model {want:?}, parser {:?}: {wire:?}",
                got.map(|p| p.map(|p| p.traits))
            ),
        }
    }
}

/// Decodes `input` arriving in the pieces `cuts` makes: the verdict, and the bytes after the body
/// (left in the buffer or not read yet). Fails the test if the decoder stops making progress.
#[allow(clippy::type_complexity)]
fn decode_pieces(
    mut d: Decoder,
    input: &[u8],
    cuts: &[usize],
    max_trailers: usize,
) -> (Result<Option<(Vec<u8>, HeaderMap)>, Malformed>, Vec<u8>) {
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    bounds.push(input.len());
    bounds.sort_unstable();
    let mut next = bounds.into_iter();
    let mut fed = 0;
    let mut buf = BytesMut::new();
    let (mut body, mut trailers) = (Vec::new(), HeaderMap::new());
    // Each call consumes bytes, ends, or asks for more: never more calls than this.
    let mut budget = 4 * input.len() + 64;
    loop {
        budget = budget
            .checked_sub(1)
            .expect("the decoder makes no progress");
        let before = buf.len();
        match d.decode(&mut buf, max_trailers) {
            Ok(Decoded::Data(b)) => {
                assert!(!b.is_empty(), "an empty data frame");
                assert!(before - buf.len() >= b.len(), "data not from the buffer");
                body.extend_from_slice(&b);
            }
            Ok(Decoded::Trailers(t)) => trailers = t,
            Ok(Decoded::End) => {
                assert!(d.is_done());
                // End is sticky.
                assert_eq!(d.decode(&mut buf, max_trailers), Ok(Decoded::End));
                let mut rest = buf.to_vec();
                rest.extend_from_slice(&input[fed..]);
                return (Ok(Some((body, trailers))), rest);
            }
            Ok(Decoded::NeedMore) => match next.next() {
                Some(to) => {
                    buf.extend_from_slice(&input[fed..to]);
                    fed = to;
                }
                None => return (Ok(None), buf.to_vec()),
            },
            Err(e) => return (Err(e), buf.to_vec()),
        }
    }
}

fn random_cuts(rng: &mut fastrand::Rng, len: usize) -> Vec<usize> {
    match rng.u8(..4) {
        // Byte by byte.
        0 => (0..=len).collect(),
        // All at once.
        1 => vec![len],
        _ => (0..rng.usize(1..8)).map(|_| rng.usize(0..=len)).collect(),
    }
}

#[test]
fn the_chunked_decoder_never_panics_and_any_split_gives_the_same_verdict() {
    let mut rng = fastrand::Rng::with_seed(0x4348_554e);
    let mut splits_differ = Vec::new();
    let mut bare_lf_trailers = 0;
    for case in 0..30_000 {
        let input = if case % 4 == 0 {
            random_bytes(&mut rng, 200)
        } else {
            let mut b = chunked_body(&mut rng, 3, true).wire;
            if rng.bool() {
                b.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            }
            for _ in 0..rng.usize(1..4) {
                mutate(&mut rng, &mut b);
            }
            b
        };
        let max_trailers = *pick(&mut rng, &[8, 64, 8192]);
        let whole = decode_pieces(Decoder::chunked(), &input, &[], max_trailers);
        let cuts = random_cuts(&mut rng, input.len());
        let split = decode_pieces(Decoder::chunked(), &input, &cuts, max_trailers);
        // Which error is reported may depend on the split, and a split may reveal an error
        // before the whole is decided (incomplete); a body accepted one way is accepted the
        // other, with the same data and the same bytes after it.
        let agree = match (&whole.0, &split.0) {
            (Ok(Some(a)), Ok(Some(b))) => a == b && whole.1 == split.1,
            (Ok(Some(_)), _) | (_, Ok(Some(_))) => false,
            _ => true,
        };
        // Known bug (see `bug_a_bare_lf_after_the_last_chunk_*`): a last chunk followed by a
        // bare LF is accepted when the trailer section arrives whole and refused when its first
        // byte arrives alone. Counted apart so the property keeps guarding everything else.
        if !agree && find(&input, b"\r\n\n").is_some() && whole.0.is_ok() && split.0.is_err() {
            bare_lf_trailers += 1;
        } else if !agree {
            splits_differ.push(format!(
                "case {case}: whole {:?} / split {:?}: {}",
                whole.0.as_ref().map(|v| v.as_ref().map(|v| lossy(&v.0))),
                split.0.as_ref().map(|v| v.as_ref().map(|v| lossy(&v.0))),
                lossy(&input)
            ));
        }
        // A length-delimited body never fails and ends exactly at its length.
        let n = rng.usize(0..=input.len());
        let (r, rest) = decode_pieces(Decoder::Length(n as u64), &input, &cuts, 0);
        let (body, _) = r
            .expect("a length body cannot be malformed")
            .expect("complete");
        assert_eq!((&body[..], &rest[..]), (&input[..n], &input[n..]));
    }
    eprintln!("{bare_lf_trailers} inputs hit the known bare-LF trailer bug");
    assert!(
        splits_differ.is_empty(),
        "{} inputs decode differently depending on the split, e.g.:\n{}",
        splits_differ.len(),
        splits_differ[..splits_differ.len().min(8)].join("\n")
    );
}

#[test]
fn a_valid_chunked_body_decodes_to_its_data_and_trailers_at_any_split() {
    let mut rng = fastrand::Rng::with_seed(0x424f_4459);
    for case in 0..3_000 {
        let g = chunked_body(&mut rng, 6, true);
        let mut input = g.wire.clone();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let cuts = random_cuts(&mut rng, input.len());
        let (r, rest) = decode_pieces(Decoder::chunked(), &input, &cuts, 8192);
        let (data, trailers) = r
            .unwrap_or_else(|e| panic!("case {case}: {e} in {}", lossy(&g.wire)))
            .unwrap_or_else(|| panic!("case {case}: incomplete: {}", lossy(&g.wire)));
        assert!(data == g.data, "case {case}: data differs");
        let got: Vec<(String, String)> = trailers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(got, g.trailers, "case {case}");
        assert_eq!(rest, b"GET /next HTTP/1.1\r\n\r\n", "case {case}");
    }
}

// ---- Known bugs at the parser level (ignored until fixed; each names its bytes) ----

#[test]
fn bug_a_bare_lf_after_the_last_chunk_hides_what_follows() {
    // Arriving whole, the trailer section is cut at the first CRLFCRLF and handed to
    // `httparse::parse_headers`, which takes the bare LF as the empty line that ends the fields
    // (consumed: 1 byte) — and the decoder drops the other bytes of the section: here a whole
    // request that a proxy in front, seeing a bare LF as the end of the body, forwards as the
    // next request. Arriving byte by byte, the same body is refused ("malformed trailer
    // section"). Expected: refused both ways (a chunk line ends with CRLF, so does the body).
    // hyper 1.12 does the same as the whole-buffer case (`decode_trailers` ignores httparse's
    // consumed count too), so the two codecs agree on it end to end: both swallow the request.
    let input = b"0\r\n\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n";
    let (split, _) = decode_pieces(Decoder::chunked(), input, &[1, 2, 3, 4], 8192);
    assert!(split.is_err(), "{split:?}");
    let (whole, rest) = decode_pieces(Decoder::chunked(), input, &[], 8192);
    assert!(whole.is_err(), "accepted: {whole:?}, left {}", lossy(&rest));
}

#[test]
fn bug_a_chunk_size_line_accepts_cr_and_ff_before_its_crlf() {
    // `size_line` trims with `trim_ascii_start`, which also skips CR, LF and FF: `5\r\r\n` and
    // `5\x0c\r\n` are taken as `5\r\n`. hyper refuses both ("Invalid chunk size LF" / "Invalid
    // Size"), so the two codecs disagree on these bodies (see the differential test).
    for input in [
        &b"5\r\r\nhello\r\n0\r\n\r\n"[..],
        b"5\x0c\r\nhello\r\n0\r\n\r\n",
        b"5 \r\r\nhello\r\n0\r\n\r\n",
    ] {
        let (r, _) = decode_pieces(Decoder::chunked(), input, &[], 8192);
        assert!(r.is_err(), "{}: {r:?}", lossy(input));
    }
}

#[test]
fn bug_a_head_at_the_size_limit_is_refused_when_split_in_its_final_crlf() {
    // The complete-head check measures the content without the final CRLF (and without leading
    // empty lines); the partial check measures the whole buffer. A head whose content is exactly
    // `max_head` is accepted in one read and refused when the final LF comes in the next read.
    // The head guard under hyper has the same two checks (`observe`, `check_head`).
    let l = limits(64, 10, 32);
    let h = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "a".repeat(43));
    assert_eq!(h.len(), 66);
    assert_eq!(verdict(h.as_bytes(), &l), Ok(Some(66)));
    assert_eq!(verdict(&h.as_bytes()[..65], &l), Ok(None));
    // Leading empty lines do not count towards the limit either, but do in the partial check.
    let h = format!(
        "\r\n\r\n\r\nGET / HTTP/1.1\r\nA: {}\r\n\r\n",
        "a".repeat(40)
    );
    assert_eq!(verdict(h.as_bytes(), &l), Ok(Some(h.len())));
    assert_eq!(verdict(&h.as_bytes()[..h.len() - 3], &l), Ok(None));
}

// ---- End to end: both codecs in front of one recording upstream ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    Native,
    Hyper,
}

const CODECS: [Codec; 2] = [Codec::Native, Codec::Hyper];

/// One request as the upstream got it.
#[derive(Clone, Debug)]
struct Seen {
    /// The test connection it came from: the last `X-Forwarded-For` entry (each connection
    /// binds its own loopback address).
    client: Ipv4Addr,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    /// The body, once it arrived whole; `None` while it did not (failed, cut, still coming).
    body: Option<Vec<u8>>,
}

/// Two gateways, one per codec, in front of one recording upstream. Routes: `/small` caps
/// bodies at 16 bytes (refused on a declared length, before the body is read); everything else
/// goes to the upstream.
struct Rig {
    native: TestGateway,
    hyper: TestGateway,
    up: Upstream,
    seen: Arc<Mutex<Vec<Seen>>>,
    next_ip: AtomicU32,
}

/// The listener limits of a [`Rig`]: a head timeout longer than any test waits for an answer.
const RIG_LIMITS: &str = "{ head_timeout: 10s, max_request_body: 1MiB }";

fn rig_yaml(codec: &str, up: &Upstream, limits: &str) -> String {
    let yaml = config(&format!(
        r#"    limits: {limits}
upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: small
    match: {{ paths: ["/small"] }}
    upstream: u
    plugins: {{ request_size: {{ max_body: 16 }} }}
  - {{ name: all, match: {{ paths: ["/"] }}, upstream: u }}
"#,
        up.url()
    ));
    let server = "server: { drain_timeout: 5s }";
    assert!(yaml.contains(server), "common::config changed: {yaml}");
    yaml.replacen(
        server,
        &format!("server: {{ drain_timeout: 5s, http1: {codec} }}"),
        1,
    )
}

impl Rig {
    async fn start() -> Rig {
        Rig::start_with(RIG_LIMITS).await
    }

    async fn start_with(limits: &str) -> Rig {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let up = upstream(move |req: Request<Incoming>| {
            let log = log.clone();
            async move {
                let client = req
                    .headers()
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit(',').next())
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                let method = req.method().to_string();
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect();
                let at = {
                    let mut log = log.lock().unwrap();
                    log.push(Seen {
                        client,
                        method: method.clone(),
                        path: path.clone(),
                        headers,
                        body: None,
                    });
                    log.len() - 1
                };
                match req.into_body().collect().await {
                    Ok(b) => {
                        let b = b.to_bytes();
                        log.lock().unwrap()[at].body = Some(b.to_vec());
                        Response::new(full(format!("seen {method} {path} {}", b.len())))
                    }
                    Err(_) => Response::builder()
                        .status(400)
                        .body(full("the body failed"))
                        .unwrap(),
                }
            }
        })
        .await;
        let native = gateway(&rig_yaml("native", &up, limits)).await;
        let hyper = gateway(&rig_yaml("hyper", &up, limits)).await;
        Rig {
            native,
            hyper,
            up,
            seen,
            next_ip: AtomicU32::new(0),
        }
    }

    fn addr(&self, c: Codec) -> SocketAddr {
        match c {
            Codec::Native => self.native.addr,
            Codec::Hyper => self.hyper.addr,
        }
    }

    /// A connection to codec `c` from a loopback address no other connection of this rig uses.
    async fn connect(&self, c: Codec) -> Client {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(
            127,
            10 + (n / 62_500) as u8,
            (n / 250 % 250) as u8,
            (n % 250 + 1) as u8,
        );
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((ip, 0))).unwrap();
        let s = sock.connect(self.addr(c)).await.unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            s,
            buf: Vec::new(),
            ip,
            eof: false,
        }
    }

    /// What the upstream got from the connection at `ip`, in order.
    fn seen_from(&self, ip: Ipv4Addr) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.client == ip)
            .cloned()
            .collect()
    }

    /// Waits until the upstream has been sent nothing new for a moment.
    async fn settle(&self) {
        let mut last = self.up.requests();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = self.up.requests();
            if now == last {
                return;
            }
            last = now;
        }
    }
}

/// A test connection: its socket, the bytes read and not consumed yet.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    ip: Ipv4Addr,
    eof: bool,
}

/// One response as read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }

    fn text(&self) -> String {
        format!("{}{}", self.head, String::from_utf8_lossy(&self.body))
    }
}

/// A chunked response body at the start of `b`: its data and its length on the wire, once
/// complete.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (mut at, mut data) = (0, Vec::new());
    loop {
        let nl = find(&b[at..], b"\r\n")?;
        let line = std::str::from_utf8(&b[at..at + nl]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at += nl + 2;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let nl = find(&b[at..], b"\r\n")?;
                at += nl + 2;
                if nl == 0 {
                    return Some((data, at));
                }
            }
        }
        if b.len() < at + size + 2 {
            return None;
        }
        data.extend_from_slice(&b[at..at + size]);
        at += size + 2;
    }
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        // The gateway may have answered and closed already: what it read is what counts.
        let _ = self.s.write_all(bytes).await;
    }

    /// Reads more bytes; false on EOF, error, or `wait` without a byte.
    async fn fill(&mut self, wait: Duration) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(wait, self.s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(_) => {
                self.eof = true;
                false
            }
            Err(_) => false,
        }
    }

    /// The next response (a `1xx` is one too); `None` when the connection closes or stays
    /// silent for 10 s first. `head_request`: the response has no body whatever it declares.
    async fn response(&mut self, head_request: bool) -> Option<Resp> {
        loop {
            if let Some((r, used)) = self.parse(head_request) {
                self.buf.drain(..used);
                return Some(r);
            }
            if !self.fill(Duration::from_secs(10)).await {
                // A body delimited by the close.
                let end = find(&self.buf, b"\r\n\r\n")?;
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
                let status = head.get(9..12)?.parse().ok()?;
                let body = self.buf.split_off(end + 4);
                self.buf.clear();
                return Some(Resp { status, head, body });
            }
        }
    }

    fn parse(&self, head_request: bool) -> Option<(Resp, usize)> {
        let end = find(&self.buf, b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1."), "not a response: {head:?}");
        let status: u16 = head.get(9..12)?.parse().ok()?;
        let mut r = Resp {
            status,
            head,
            body: Vec::new(),
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return Some((r, end));
        }
        if let Some(n) = r.header("content-length") {
            let n: usize = n.parse().expect("content-length");
            if self.buf.len() < end + n {
                return None;
            }
            r.body = self.buf[end..end + n].to_vec();
            return Some((r, end + n));
        }
        if r.header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            let (data, used) = dechunk(&self.buf[end..])?;
            r.body = data;
            return Some((r, end + used));
        }
        // Delimited by the close.
        None
    }

    /// True when the gateway closes the connection within 5 s; whatever it sends before that
    /// stays in the buffer.
    async fn closes(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if !self.fill(left).await {
                return self.eof;
            }
        }
    }
}

// ---- The smuggling vectors, one by one, on both codecs ----

/// The request hidden in each vector: the upstream must never get it.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

/// What a vector must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Refused on its head with this status and `connection: close`; nothing reaches the
    /// upstream.
    Head(u16),
    /// A broken chunked body: `400` with `connection: close`, or the connection closed; the
    /// upstream may have seen the head, never a complete request.
    Body,
    /// Accepted: answered 2xx, the upstream got the first request with everything after its
    /// head as its body.
    Whole,
}

fn vectors() -> Vec<(&'static str, String, Want)> {
    let post = |fields: &str, body: &str| {
        format!("POST /v HTTP/1.1\r\nHost: x\r\n{fields}\r\n{body}{SMUGGLED}")
    };
    let chunked = |body: &str| post("Transfer-Encoding: chunked\r\n", body);
    vec![
        (
            "CL then TE",
            post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
            Want::Head(400),
        ),
        (
            "TE then CL",
            post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"),
            Want::Head(400),
        ),
        (
            "TE chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
            Want::Head(400),
        ),
        (
            "TE xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            Want::Head(400),
        ),
        (
            "TE with a space before the colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            Want::Head(400),
        ),
        (
            "TE with a space before the colon, and CL",
            post(
                "Content-Length: 5\r\nTransfer-Encoding : chunked\r\n",
                "0\r\n\r\n",
            ),
            Want::Head(400),
        ),
        (
            "duplicate differing CL",
            post(
                &format!("Content-Length: 0\r\nContent-Length: {}\r\n", SMUGGLED.len()),
                "",
            ),
            Want::Head(400),
        ),
        ("CL +5", post("Content-Length: +5\r\n", "hello"), Want::Head(400)),
        ("CL -1", post("Content-Length: -1\r\n", ""), Want::Head(400)),
        ("CL 0x5", post("Content-Length: 0x5\r\n", "hello"), Want::Head(400)),
        ("CL 5 5", post("Content-Length: 5 5\r\n", "hello"), Want::Head(400)),
        ("chunk size 0x5", chunked("0x5\r\nhello\r\n0\r\n\r\n"), Want::Body),
        ("chunk size -5", chunked("-5\r\nhello\r\n0\r\n\r\n"), Want::Body),
        (
            "bare LF after the chunk size",
            chunked("5\nhello\r\n0\r\n\r\n"),
            Want::Body,
        ),
        (
            "bare LF after the last chunk size",
            chunked("5\r\nhello\r\n0\n\r\n"),
            Want::Body,
        ),
        (
            "chunk data not followed by CRLF",
            chunked("5\r\nhelloXX0\r\n\r\n"),
            Want::Body,
        ),
        (
            "chunk data longer than its size",
            chunked("3\r\nhello\r\n0\r\n\r\n"),
            Want::Body,
        ),
        (
            "chunk size over 16 hex digits",
            chunked("10000000000000005\r\nhello\r\n0\r\n\r\n"),
            Want::Body,
        ),
        (
            "obs-fold",
            format!("GET /v HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Want::Head(400),
        ),
        (
            "NUL in a header value",
            format!("GET /v HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n{SMUGGLED}"),
            Want::Head(400),
        ),
        (
            "a request hidden in a GET's Content-Length body",
            format!(
                "GET /v HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            Want::Whole,
        ),
        (
            "HTTP/1.0 with TE chunked",
            format!("POST /v HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Want::Head(400),
        ),
    ]
}

/// What one connection got for its bytes.
struct Outcome {
    ip: Ipv4Addr,
    first: Option<Resp>,
    closed: bool,
    rest: Vec<u8>,
}

/// Sends `bytes` on a fresh connection: the first response, and whether the connection then
/// closes (only waited for when `wait_close`).
async fn one_shot(rig: &Rig, codec: Codec, bytes: &[u8], wait_close: bool) -> Outcome {
    let mut c = rig.connect(codec).await;
    c.send(bytes).await;
    let first = c.response(false).await;
    let closed = if wait_close { c.closes().await } else { c.eof };
    Outcome {
        ip: c.ip,
        first,
        closed,
        rest: c.buf,
    }
}

#[tokio::test]
async fn smuggling_vectors_are_refused_by_both_codecs() {
    let rig = Rig::start().await;
    let runs = CODECS
        .into_iter()
        .flat_map(|codec| vectors().into_iter().map(move |v| (codec, v)));
    let outcomes = futures_util::future::join_all(runs.map(|(codec, (name, bytes, want))| {
        let rig = &rig;
        async move {
            let o = one_shot(rig, codec, bytes.as_bytes(), want != Want::Whole).await;
            (codec, name, want, o)
        }
    }))
    .await;
    rig.settle().await;
    let mut failures = Vec::new();
    for (codec, name, want, o) in outcomes {
        let seen = rig.seen_from(o.ip);
        let shown = o.first.as_ref().map_or("(none)".into(), Resp::text);
        let mut fail = |why: &str| failures.push(format!("{codec:?} / {name}: {why}: {shown}"));
        if seen.iter().any(|s| s.path.contains("smuggled")) {
            fail("the upstream got the smuggled request");
        }
        match want {
            Want::Head(status) => {
                match &o.first {
                    Some(r) if r.status == status && r.closes() => {}
                    _ => fail(&format!("expected {status} with connection: close")),
                }
                if !seen.is_empty() {
                    fail("the upstream got a request");
                }
            }
            Want::Body => {
                match &o.first {
                    None => {}
                    Some(r) if r.status == 400 && r.closes() => {}
                    _ => fail("expected 400 with connection: close, or no answer"),
                }
                if seen.iter().any(|s| s.body.is_some()) {
                    fail("the upstream got a complete request");
                }
            }
            Want::Whole => {
                if o.first.as_ref().is_none_or(|r| r.status != 200) {
                    fail("expected 200");
                }
                let got: Vec<_> = seen
                    .iter()
                    .map(|s| (s.method.as_str(), s.path.as_str(), s.body.as_deref()))
                    .collect();
                if got != [("GET", "/v", Some(SMUGGLED.as_bytes()))] {
                    fail(&format!("the upstream got {got:?}"));
                }
            }
        }
        if want != Want::Whole && !o.closed {
            fail("the connection stayed open");
        }
        if !o.rest.is_empty() {
            fail(&format!("more after the answer: {}", lossy(&o.rest)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- Pipelining, HEAD and 100-continue on both codecs ----

/// Three requests with bodies (Content-Length, chunked with trailers, none), the last closing.
fn three_requests() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"POST /p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    b.extend_from_slice(
        b"PUT /p2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nwor\r\n2\r\nld\r\n0\r\nX-Sum: 9\r\n\r\n",
    );
    b.extend_from_slice(b"GET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    b
}

/// Reads the answers to [`three_requests`] (or its first `n`) and checks them and what the
/// upstream got.
async fn expect_three(rig: &Rig, c: &mut Client, n: usize, codec: Codec) {
    let want = [
        ("POST", "/p1", &b"hello"[..]),
        ("PUT", "/p2", b"world"),
        ("GET", "/p3", b""),
    ];
    for (method, path, body) in &want[..n] {
        let r = c
            .response(false)
            .await
            .unwrap_or_else(|| panic!("{codec:?}: no answer for {path}"));
        assert_eq!(r.status, 200, "{codec:?}: {}", r.text());
        assert_eq!(
            r.body,
            format!("seen {method} {path} {}", body.len()).as_bytes(),
            "{codec:?}: answers out of order"
        );
    }
    if n == 3 {
        assert!(c.closes().await, "{codec:?}: Connection: close is honoured");
        assert!(c.buf.is_empty(), "{codec:?}: {}", lossy(&c.buf));
    }
    rig.settle().await;
    let got: Vec<_> = rig
        .seen_from(c.ip)
        .into_iter()
        .map(|s| (s.method, s.path, s.body))
        .collect();
    let want: Vec<_> = want[..n]
        .iter()
        .map(|(m, p, b)| (m.to_string(), p.to_string(), Some(b.to_vec())))
        .collect();
    assert_eq!(got, want, "{codec:?}");
}

#[tokio::test]
async fn pipelined_requests_with_bodies_are_answered_in_order_by_both_codecs() {
    let rig = Rig::start().await;
    let all = three_requests();
    let second_end = find(&all, b"GET /p3").unwrap();
    for codec in CODECS {
        // Two, then three requests in one write.
        let mut c = rig.connect(codec).await;
        c.send(&all[..second_end]).await;
        expect_three(&rig, &mut c, 2, codec).await;
        let mut c = rig.connect(codec).await;
        c.send(&all).await;
        expect_three(&rig, &mut c, 3, codec).await;
        // Written in pieces cut at random points, without waiting for any answer, and sleeping
        // between pieces now and then so that they arrive in separate reads.
        let mut rng = fastrand::Rng::with_seed(0x5049_5045);
        let heads: Vec<std::ops::Range<usize>> = [&b"PUT /p2"[..], b"GET /p3"]
            .iter()
            .map(|start| {
                let at = find(&all, start).unwrap();
                at + 1..at + find(&all[at..], b"\r\n\r\n").unwrap() + 4
            })
            .collect();
        for _ in 0..6 {
            let mut c = rig.connect(codec).await;
            let mut cuts: Vec<usize> = (0..3).map(|_| rng.usize(1..all.len())).collect();
            if codec == Codec::Hyper {
                // Known bug (`bug_hyper_reads_a_pipelined_head_split_across_an_answer`): a
                // pipelined head cut in two, its second part read after the previous answer,
                // gets 400. Cut hyper's pipelined heads only before their first byte.
                for cut in &mut cuts {
                    if let Some(h) = heads.iter().find(|h| h.contains(cut)) {
                        *cut = h.start - 1;
                    }
                }
            }
            cuts.sort_unstable();
            let mut from = 0;
            for cut in cuts.into_iter().chain([all.len()]) {
                c.send(&all[from..cut]).await;
                from = cut;
                if rng.bool() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            expect_three(&rig, &mut c, 3, codec).await;
        }
    }
}

/// Sends the first request and part of the second's head, waits for the first answer, then
/// sends the rest: the second head is read across two reads with a response in between.
async fn head_split_across_an_answer(rig: &Rig, codec: Codec) {
    let all = three_requests();
    for cut in [b"PUT /p".len(), b"PUT /p2 HTTP/1.1\r\nHo".len()] {
        let at = find(&all, b"PUT /p2").unwrap() + cut;
        let mut c = rig.connect(codec).await;
        c.send(&all[..at]).await;
        let r = c.response(false).await.expect("the first answer");
        assert_eq!(r.body, b"seen POST /p1 5", "{codec:?}");
        c.send(&all[at..]).await;
        let r = c.response(false).await.expect("the second answer");
        assert_eq!(r.status, 200, "{codec:?}, cut {cut}: {}", r.text());
        assert_eq!(r.body, b"seen PUT /p2 5", "{codec:?}");
    }
}

#[tokio::test]
async fn native_reads_a_pipelined_head_split_across_an_answer() {
    let rig = Rig::start().await;
    head_split_across_an_answer(&rig, Codec::Native).await;
}

#[tokio::test]
#[ignore = "BUG (hyper codec): the head guard restarts its scan mid-head after a pipelined answer"]
async fn bug_hyper_reads_a_pipelined_head_split_across_an_answer() {
    // The guard sees request 1's head and the start of request 2's in one read, marks the
    // connection busy and passes the rest to hyper unscanned. Once answer 1 is out it goes idle
    // and scans the next read ("2 HTTP/1.1\r\nHost: x..." or "st: x\r\n...") as a new head:
    // "malformed request line", 400 and close, for a valid pipelined request.
    let rig = Rig::start().await;
    head_split_across_an_answer(&rig, Codec::Hyper).await;
}

#[tokio::test]
#[ignore = "BUG (hyper codec): a pipelined head read with the previous request skips the head guard"]
async fn bug_hyper_checks_pipelined_heads_like_the_first() {
    // Heads after the first in one read reach hyper unchecked: CL+TE (hyper lets chunked win and
    // forwards the request), a target over max_uri, ... The native codec refuses them all.
    let rig = Rig::start_with("{ head_timeout: 10s, max_uri: 64 }").await;
    let first = "GET /v HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        (
            "CL+TE",
            format!("{first}POST /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            400,
        ),
        (
            "target over max_uri",
            format!("{first}GET /v2{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100)),
            414,
        ),
    ];
    let mut failures = Vec::new();
    for codec in CODECS {
        for (name, bytes, status) in &cases {
            let mut c = rig.connect(codec).await;
            c.send(bytes.as_bytes()).await;
            let r = c.response(false).await.expect("the first answer");
            assert_eq!(r.body, b"seen GET /v 0", "{codec:?} / {name}");
            let r = c.response(false).await;
            if r.as_ref().map(|r| r.status) != Some(*status) {
                failures.push(format!(
                    "{codec:?} / {name}: expected {status}, got {:?}",
                    r.map(|r| r.text())
                ));
            }
            rig.settle().await;
            let paths: Vec<String> = rig.seen_from(c.ip).into_iter().map(|s| s.path).collect();
            if paths != ["/v"] {
                failures.push(format!("{codec:?} / {name}: the upstream got {paths:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_head_answer_has_no_body_on_both_codecs() {
    let rig = Rig::start().await;
    for codec in CODECS {
        let mut c = rig.connect(codec).await;
        c.send(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let head = c.response(true).await.expect("the HEAD answer");
        assert_eq!(head.status, 200, "{codec:?}");
        // The length of the GET it stands for, and not a byte of body: the next answer follows
        // the blank line at once.
        assert_eq!(
            head.header("content-length").as_deref(),
            Some("seen HEAD /h 0".len().to_string().as_str()),
            "{codec:?}: {}",
            head.text()
        );
        assert!(
            c.buf.is_empty() || c.buf.starts_with(b"HTTP/1.1 "),
            "{codec:?}: a body after the HEAD answer: {}",
            lossy(&c.buf)
        );
        let get = c.response(false).await.expect("the GET answer");
        assert_eq!(get.body, b"seen GET /g 0", "{codec:?}");
        assert!(c.closes().await && c.buf.is_empty(), "{codec:?}");
    }
}

#[tokio::test]
async fn continue_is_sent_only_when_the_body_is_read_on_both_codecs() {
    let rig = Rig::start().await;
    for codec in CODECS {
        // Routed to the upstream, which reads the body: `100 Continue` first, then the body is
        // sent and forwarded.
        for (framing, body) in [
            ("Content-Length: 5", &b"hello"[..]),
            ("Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n"),
        ] {
            let mut c = rig.connect(codec).await;
            c.send(
                format!("POST /e HTTP/1.1\r\nHost: x\r\n{framing}\r\nExpect: 100-continue\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let interim = c.response(false).await.expect("100 Continue");
            assert_eq!(interim.status, 100, "{codec:?}: {}", interim.text());
            c.send(body).await;
            let r = c.response(false).await.expect("the answer");
            assert_eq!(r.body, b"seen POST /e 5", "{codec:?}");
            rig.settle().await;
            let seen = rig.seen_from(c.ip);
            assert_eq!(seen.len(), 1, "{codec:?}");
            assert_eq!(seen[0].body.as_deref(), Some(&b"hello"[..]), "{codec:?}");
        }
        // Refused on its head (a declared length over the route's cap): no `100 Continue`, the
        // refusal is the first answer, and the body is never asked for.
        let mut c = rig.connect(codec).await;
        c.send(b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
            .await;
        let r = c.response(false).await.expect("the refusal");
        assert_eq!(r.status, 413, "{codec:?}: {}", r.text());
        rig.settle().await;
        assert!(rig.seen_from(c.ip).is_empty(), "{codec:?}");
    }
}

// ---- The differential: the same bytes to both codecs ----

/// How a connection answered its bytes, as far as the two codecs must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    /// The first final response's status class (`2` for 2xx, ...).
    Class(u16),
    /// Closed without a response.
    Closed,
    /// Neither a response nor a close within the wait (the gateway waits for more bytes).
    Silent,
}

/// Sends `bytes` and watches the connection: until it closes, or a moment passes without a
/// byte after the first final response, or `silent_after` passes without one.
async fn watch(
    rig: &Rig,
    codec: Codec,
    bytes: &[u8],
    silent_after: Duration,
) -> (Answer, Ipv4Addr, Vec<u8>) {
    let mut c = rig.connect(codec).await;
    c.send(bytes).await;
    let start = Instant::now();
    loop {
        let wait = match first_final(&c.buf) {
            // Pipelined answers may follow.
            Some(_) => Duration::from_millis(250),
            None => silent_after.saturating_sub(start.elapsed()),
        };
        if wait.is_zero() || !c.fill(wait).await {
            break;
        }
    }
    let answer = match first_final(&c.buf) {
        Some(status) => Answer::Class(status / 100),
        None if c.eof => Answer::Closed,
        None => Answer::Silent,
    };
    (answer, c.ip, c.buf)
}

/// The status of the first final (non-1xx) response head in `raw`.
fn first_final(raw: &[u8]) -> Option<u16> {
    let mut at = 0;
    loop {
        let end = at + find(&raw[at..], b"\r\n\r\n")? + 4;
        let status: u16 = std::str::from_utf8(raw.get(at + 9..at + 12)?)
            .ok()?
            .parse()
            .ok()?;
        if status >= 200 {
            return Some(status);
        }
        at = end;
    }
}

/// A generated valid request: its bytes, and what the upstream must get.
struct ValidRequest {
    wire: Vec<u8>,
    method: String,
    target: String,
    body: Vec<u8>,
    fields: Vec<(String, Vec<u8>)>,
}

fn valid_request(rng: &mut fastrand::Rng) -> ValidRequest {
    let framed = *pick(rng, &[Framed::None, Framed::Length, Framed::Chunked]);
    let (body_wire, body) = match framed {
        Framed::None => (Vec::new(), Vec::new()),
        Framed::Length => {
            let mut b = vec![0u8; rng.usize(0..3000)];
            rng.fill(&mut b);
            (b.clone(), b)
        }
        Framed::Chunked => {
            let trailers = rng.bool();
            let c = chunked_body(rng, 4, trailers);
            (c.wire, c.data)
        }
    };
    let g = valid_head(rng, framed, body.len(), true);
    let mut wire = g.wire;
    if rng.u8(..) < 64 {
        wire.truncate(wire.len() - 2);
        wire.extend_from_slice(b"Connection: close\r\n\r\n");
    }
    wire.extend_from_slice(&body_wire);
    ValidRequest {
        wire,
        method: g.method,
        target: g.target,
        body,
        fields: g.fields,
    }
}

/// Requests at the edges of the grammar, where parsers tend to differ.
fn edge_cases() -> Vec<(&'static str, Vec<u8>)> {
    let e = |s: &str| s.as_bytes().to_vec();
    vec![
        ("absolute form", e("GET http://x/abs?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("asterisk form", e("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("authority form", e("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n")),
        ("HTTP/1.0 keep-alive", e("GET /ten HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")),
        ("HTTP/1.0 with a body", e("POST /ten HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")),
        ("leading empty lines", e("\r\n\r\nGET /lead HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("bare LF head", e("GET /lf HTTP/1.1\nHost: x\n\n")),
        ("bare LF at the end of the head", e("GET /lf HTTP/1.1\r\nHost: x\r\n\n")),
        ("lower-case method", e("get /lower HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("HTTP/1.2", e("GET / HTTP/1.2\r\nHost: x\r\n\r\n")),
        ("HTTP/2.0 head", e("GET / HTTP/2.0\r\nHost: x\r\n\r\n")),
        ("no Host", e("GET /nohost HTTP/1.1\r\n\r\n")),
        ("two spaces", e("GET  /two HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("chunked twice", e("POST /cc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")),
        ("TE over two lines", e("POST /te2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")),
        ("TE empty element", e("POST /te3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")),
        ("CL 20 digits", e("POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 00000000000000000003\r\n\r\nabc")),
        ("CL 05 and 5", e("POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\nabc")),
        ("CL twice the same", e("POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")),
        ("CL list", e("POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc")),
        ("CL empty", e("POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n")),
        ("chunk size 17 digits, leading zeros", e("POST /z HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000003\r\nabc\r\n0\r\n\r\n")),
        ("chunk size CR CR LF", e("POST /crcr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\r\nabc\r\n0\r\n\r\n")),
        ("chunk size FF", e("POST /ff HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\x0c\r\nabc\r\n0\r\n\r\n")),
        ("chunk size BWS", e("POST /bws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3 \t;a=b\r\nabc\r\n0\r\n\r\n")),
        ("chunk ext obs-text", e("POST /ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"\u{e9}\"\r\nabc\r\n0\r\n\r\n")),
        ("chunk ext bare LF", e("POST /ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nabc\r\n0\r\n\r\n")),
        ("trailers", e("POST /tr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n")),
        ("trailer with a bare LF", e("POST /tr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-A: 1\nX-B: 2\r\n\r\n")),
        ("trailer section after a bare LF", e("POST /tr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("trailer obs-fold", e("POST /tr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-A: 1\r\n folded\r\n\r\n")),
        ("trailer without a colon", e("POST /tr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nnonsense\r\n\r\n")),
        ("obs-text in a value", e("GET /obs HTTP/1.1\r\nHost: x\r\nX-A: caf\u{e9}\r\n\r\n")),
        ("DEL in a value", e("GET /del HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n")),
        ("bare CR in a value", e("GET /cr HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n")),
        ("empty header name", e("GET /e HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n")),
        ("fragment in the target", e("GET /frag#x HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("pipelined after a CL body", e("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("pipelined after a chunked body", e("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")),
        ("Expect with the body sent at once", e("POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc")),
    ]
}

/// Why the two codecs answer `bytes` differently, when that is known: a legitimate difference
/// (the native codec is stricter where hyper is lenient and nothing is at stake) or a known bug
/// (reported, with an ignored `bug_*` test naming the bytes). Worked out from the bytes with the
/// native parser, so random mutations are classified too.
fn known_difference(bytes: &[u8], native: &Answer, hyper: &Answer) -> Option<&'static str> {
    let refused_by_native = *native == Answer::Class(4) && *hyper == Answer::Class(2);
    let refused_by_hyper = *native == Answer::Class(2) && *hyper == Answer::Class(4);
    let head_end = find(bytes, b"\r\n\r\n").map_or(bytes.len(), |e| e + 4);
    let long_length = bytes[..head_end].split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line).to_ascii_lowercase();
        line.strip_prefix("content-length:")
            .is_some_and(|v| v.trim().len() > 19 && v.trim().bytes().all(|b| b.is_ascii_digit()))
    });
    if refused_by_native && long_length {
        // A value longer than 19 digits fits in 64 bits only with leading zeros: refusing it
        // costs nothing and keeps the length check a fixed-size one.
        return Some("native refuses a Content-Length over 19 digits (leading zeros)");
    }
    let l = limits(32 * 1024, 100, 8 * 1024);
    let mut slots = HeaderSlots::new();
    let p = head::parse(bytes, &l, &mut slots).ok()??;
    if p.traits.framing != Framing::Chunked {
        return None;
    }
    let len = p.len;
    let (decoded, _) = decode_pieces(Decoder::chunked(), &bytes[len..], &[], 8192);
    if refused_by_native && find(&bytes[len..], b"0\r\n\n").is_some() {
        // hyper 1.x (`decode_trailers`) takes a bare LF after the last chunk for the end of the
        // trailer section and drops the bytes after it; the native decoder refuses the body.
        // A limitation of the hyper codec, documented with `server.http1`.
        return Some("hyper ends a trailer section at a bare LF and drops what follows");
    }
    match decoded {
        // Legitimate: hyper skips chunk extensions unread; the native decoder refuses control
        // characters in them (as in field values).
        Err(Malformed("control characters in a chunk extension")) if refused_by_native => {
            Some("native refuses control characters in a chunk extension")
        }
        // Legitimate: hyper counts the value, the native decoder the digits (at most 16, so
        // leading zeros past that are refused).
        Err(Malformed("chunk size too large")) if refused_by_native => {
            Some("native refuses a chunk size over 16 hex digits (leading zeros)")
        }
        // hyper judges a chunk-size line or a trailer section byte by byte; the native decoder
        // once its end (LF, CRLFCRLF) has arrived, and waits for it (within MAX_SIZE_LINE and
        // the head limit). The bytes sent stop before that end: nothing is accepted either way.
        Ok(None) if *native == Answer::Silent && *hyper == Answer::Class(4) => {
            Some("native waits for the end of a chunk-size line or trailer section to judge it")
        }
        Ok(Some(_)) if refused_by_hyper => {
            let body = &bytes[len..];
            if body.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') {
                // RFC 9112 §2.2 lets a recipient take a bare LF as a line end; hyper does not
                // in a trailer section, the native decoder (httparse) does.
                Some("native takes a bare LF as a line end in the trailer section")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// What the upstream got completely from one connection: method, path, body.
fn complete(rig: &Rig, ip: Ipv4Addr) -> Vec<(String, String, Vec<u8>)> {
    rig.seen_from(ip)
        .into_iter()
        .filter_map(|s| Some((s.method, s.path, s.body?)))
        .collect()
}

#[tokio::test]
async fn both_codecs_agree_on_generated_and_hostile_requests() {
    let rig = Rig::start().await;
    let mut rng = fastrand::Rng::with_seed(0x4449_4646);
    // (name, bytes, what the upstream must get when the request is valid)
    let mut cases: Vec<(String, Vec<u8>, Option<ValidRequest>)> = Vec::new();
    for i in 0..100 {
        let v = valid_request(&mut rng);
        cases.push((format!("valid {i}"), v.wire.clone(), Some(v)));
    }
    for (name, bytes, _) in vectors() {
        cases.push((format!("vector {name}"), bytes.into_bytes(), None));
    }
    for (name, bytes) in edge_cases() {
        cases.push((format!("edge {name}"), bytes, None));
    }
    for i in 0..160 {
        let mut b = valid_request(&mut rng).wire;
        for _ in 0..rng.usize(1..4) {
            mutate(&mut rng, &mut b);
        }
        cases.push((format!("mutation {i}"), b, None));
    }
    let runs = futures_util::stream::iter(cases.iter().enumerate())
        .map(|(i, (_, bytes, _))| {
            let rig = &rig;
            async move {
                let mut wait = Duration::from_millis(1500);
                loop {
                    let (n, h) = tokio::join!(
                        watch(rig, Codec::Native, bytes, wait),
                        watch(rig, Codec::Hyper, bytes, wait)
                    );
                    // Silence is judged by a timer: on a busy machine an answer may just be
                    // late. Look again, longer, before calling it a difference.
                    let silent = n.0 == Answer::Silent || h.0 == Answer::Silent;
                    if n.0 == h.0 || !silent || wait > Duration::from_secs(2) {
                        return (i, n, h);
                    }
                    wait = Duration::from_secs(6);
                }
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    rig.settle().await;
    let mut differences = Vec::new();
    let mut valid_failures = Vec::new();
    let mut known: HashMap<&str, usize> = HashMap::new();
    let mut answers: HashMap<String, usize> = HashMap::new();
    for (i, (n_answer, n_ip, n_raw), (h_answer, h_ip, h_raw)) in runs {
        let (name, bytes, valid) = &cases[i];
        *answers.entry(format!("{n_answer:?}")).or_default() += 1;
        let (n_seen, h_seen) = (complete(&rig, n_ip), complete(&rig, h_ip));
        let shown = |raw: &[u8]| lossy(&raw[..raw.len().min(200)]);
        if n_answer != h_answer {
            if let Some(why) = known_difference(bytes, &n_answer, &h_answer) {
                *known.entry(why).or_default() += 1;
                continue;
            }
            differences.push(format!(
                "{name}: native {n_answer:?} / hyper {h_answer:?}\n  sent {}\n  native: {}\n  hyper: {}",
                lossy(bytes),
                shown(&n_raw),
                shown(&h_raw)
            ));
        } else if n_seen != h_seen {
            differences.push(format!(
                "{name}: the upstream got\n  native {:?}\n  hyper  {:?}\n  sent {}",
                n_seen
                    .iter()
                    .map(|s| (&s.0, &s.1, lossy(&s.2)))
                    .collect::<Vec<_>>(),
                h_seen
                    .iter()
                    .map(|s| (&s.0, &s.1, lossy(&s.2)))
                    .collect::<Vec<_>>(),
                lossy(bytes)
            ));
        }
        if let Some(v) = valid {
            let want = vec![(v.method.clone(), v.target.clone(), v.body.clone())];
            if n_answer != Answer::Class(2) || n_seen != want {
                valid_failures.push(format!(
                    "{name}: sent {}\n  answered {n_answer:?}: {}\n  forwarded {:?}",
                    lossy(&bytes[..bytes.len().min(300)]),
                    shown(&n_raw),
                    n_seen
                        .iter()
                        .map(|s| (&s.0, &s.1, s.2.len()))
                        .collect::<Vec<_>>()
                ));
                continue;
            }
            // The generated fields arrive as sent.
            let seen = rig.seen_from(n_ip);
            for (k, val) in v.fields.iter().filter(|f| f.0.starts_with("X-")) {
                let got: Vec<&Vec<u8>> = seen[0]
                    .headers
                    .iter()
                    .filter(|h| h.0.eq_ignore_ascii_case(k))
                    .map(|h| &h.1)
                    .collect();
                assert!(got.contains(&val), "{name}: {k} arrived as {got:?}");
            }
        }
    }
    eprintln!("answers: {answers:?}");
    eprintln!("known differences: {known:#?}");
    assert!(
        valid_failures.is_empty(),
        "{} valid requests not forwarded as sent:\n{}",
        valid_failures.len(),
        valid_failures.join("\n")
    );
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[tokio::test]
async fn bug_a_get_with_a_chunked_body_loses_it_upstream() {
    // The gateway strips `Transfer-Encoding` (hop-by-hop) and hands hyper's client a body of
    // unknown length; for GET, HEAD and CONNECT hyper's client then sends `Content-Length: 0`
    // and never polls the body (`Client::set_length`). The same GET with a Content-Length body
    // is forwarded whole, and DELETE or OPTIONS with a chunked body too. Expected: the body
    // forwarded (chunked), or the request refused, never silently emptied.
    let rig = Rig::start().await;
    for codec in CODECS {
        let o = one_shot(
            &rig,
            codec,
            b"GET /g HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            true,
        )
        .await;
        rig.settle().await;
        let seen = complete(&rig, o.ip);
        assert_eq!(
            seen,
            [("GET".to_owned(), "/g".to_owned(), b"hello".to_vec())],
            "{codec:?}: {:?}",
            o.first.map(|r| r.text())
        );
    }
}

#[tokio::test]
async fn bug_hyper_ignores_empty_lines_before_a_request_line() {
    // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
    // The head guard skips a read made only of CR/LF, but `find_head_end` takes the first
    // CRLFCRLF (or LFLF) of a read as the end of the head: `\r\n\r\nGET ...` is checked as an
    // empty head ("malformed request line"). `\r\nGET ...` passes only because a single CRLF
    // does not make a blank line. The native codec serves both.
    let rig = Rig::start().await;
    for codec in CODECS {
        for lead in ["\r\n", "\r\n\r\n", "\n\n", "\r\n\r\n\r\n"] {
            let o = one_shot(
                &rig,
                codec,
                format!("{lead}GET /lead HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
                false,
            )
            .await;
            let r = o.first.expect("an answer");
            assert_eq!(r.status, 200, "{codec:?}, {lead:?}: {}", r.text());
        }
    }
}
