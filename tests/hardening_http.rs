//! Hardening of request acceptance, over real sockets with raw clients (library clients refuse to
//! send the bad input): `Host` validation (RFC 9112 §3.2) and the target's authority winning over
//! `Host` (HTTP/1 absolute form, HTTP/2 `:authority`, RFC 9113 §8.3.1), and malformed HTTP/2 requests as stream errors that leave the other
//! streams of the connection alone (RFC 9113 §8.1.1).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{
    config, full, gateway, read_response, read_until_close, upstream, TestGateway, Upstream,
};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream answering `<name> <host> <path>`; `/slow` paths answer after 400 ms.
async fn named(name: &'static str) -> Upstream {
    upstream(move |req: Request<Incoming>| async move {
        if req.uri().path().starts_with("/slow") {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let host = req
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        Response::new(full(format!("{name} {host} {}", req.uri().path())))
    })
    .await
}

/// Three upstreams: `good.test` and `v.test` go to `good`, `evil.test` to `evil`, anything else
/// to `any`.
async fn setup() -> (TestGateway, Upstream, Upstream, Upstream) {
    let good = named("good").await;
    let evil = named("evil").await;
    let any = named("any").await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  good: {{ targets: [{{ url: "{}" }}] }}
  evil: {{ targets: [{{ url: "{}" }}] }}
  any: {{ targets: [{{ url: "{}" }}] }}
routes:
  - {{ name: good, match: {{ hosts: ["good.test", "v.test"], paths: ["/"] }}, upstream: good }}
  - {{ name: evil, match: {{ hosts: ["evil.test"], paths: ["/"] }}, upstream: evil }}
  - {{ name: any, match: {{ paths: ["/"] }}, upstream: any }}
"#,
        good.url(),
        evil.url(),
        any.url()
    )))
    .await;
    (gw, good, evil, any)
}

fn forwarded(ups: &[&Upstream]) -> usize {
    ups.iter().map(|u| u.requests()).sum()
}

/// One raw HTTP/1 request on a fresh connection; the response.
async fn h1(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

/// The status code of a raw HTTP/1 response.
fn status(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn http1_refuses_requests_without_exactly_one_valid_host() {
    let (gw, good, evil, any) = setup().await;
    let cases = [
        (
            "two Host lines",
            "GET / HTTP/1.1\r\nHost: v.test\r\nHost: evil.test\r\n\r\n",
        ),
        (
            "two identical Host lines",
            "GET / HTTP/1.1\r\nHost: v.test\r\nHost: v.test\r\n\r\n",
        ),
        (
            "two Host lines on 1.0",
            "GET / HTTP/1.0\r\nHost: v.test\r\nhost: v.test\r\n\r\n",
        ),
        ("no Host on 1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
        ("space", "GET / HTTP/1.1\r\nHost: v.test evil\r\n\r\n"),
        ("list", "GET / HTTP/1.1\r\nHost: a.test, b.test\r\n\r\n"),
        ("path", "GET / HTTP/1.1\r\nHost: v.test/../x\r\n\r\n"),
        ("userinfo", "GET / HTTP/1.1\r\nHost: user@evil.test\r\n\r\n"),
        ("bad port", "GET / HTTP/1.1\r\nHost: v.test:80x\r\n\r\n"),
        ("empty label", "GET / HTTP/1.1\r\nHost: v..test\r\n\r\n"),
        ("unclosed IPv6", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"),
        (
            "userinfo in the absolute-form target",
            "GET http://user@v.test/ HTTP/1.1\r\nHost: user@v.test\r\n\r\n",
        ),
    ];
    for (name, req) in cases {
        let resp = h1(gw.addr, req).await;
        assert_eq!(status(&resp), "400", "{name}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{name}: {resp}"
        );
    }
    assert_eq!(forwarded(&[&good, &evil, &any]), 0, "nothing forwarded");

    // Well-formed hosts still pass, and route by host.
    let ok = [
        ("GET /a HTTP/1.1\r\nHost: v.test\r\n\r\n", "good v.test /a"),
        (
            "GET /a HTTP/1.1\r\nHost: V.Test:8080\r\n\r\n",
            "good V.Test:8080 /a",
        ),
        (
            "GET /a HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
            "any 127.0.0.1:1 /a",
        ),
        (
            "GET /a HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            "any [::1]:80 /a",
        ),
        (
            "GET /a HTTP/1.1\r\nHost: my_host.test.\r\n\r\n",
            "any my_host.test. /a",
        ),
        ("GET /a HTTP/1.0\r\n\r\n", "any - /a"),
        (
            "GET http://v.test/a HTTP/1.1\r\nHost: v.test\r\n\r\n",
            "good v.test /a",
        ),
        // The target's authority wins over a Host that differs (RFC 9112 §3.2.2): routed and
        // forwarded as v.test.
        (
            "GET http://v.test/a HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            "good v.test /a",
        ),
    ];
    for (req, want) in ok {
        let resp = h1(gw.addr, req).await;
        assert_eq!(status(&resp), "200", "{req:?}: {resp}");
        assert!(resp.ends_with(want), "{req:?}: {resp}");
    }
}

#[tokio::test]
async fn http1_pipelined_request_with_two_hosts_is_refused_too() {
    let (gw, good, evil, any) = setup().await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Both heads in one write: the second arrives while the first is in flight.
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: v.test\r\n\r\nGET /two HTTP/1.1\r\nHost: v.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let all = read_until_close(&mut s, Duration::from_secs(10)).await;
    let (first, second) = all.split_at(all.rfind("HTTP/1.1 ").unwrap());
    assert!(first.starts_with("HTTP/1.1 200 "), "{all}");
    assert!(first.ends_with("good v.test /one"), "{all}");
    assert!(second.starts_with("HTTP/1.1 400 "), "{all}");
    assert!(second.contains("more than one Host header"), "{all}");
    assert_eq!(good.requests(), 1);
    assert_eq!(forwarded(&[&evil, &any]), 0);
}

// ---- A frame-level HTTP/2 client ----

const PROTOCOL_ERROR: u32 = 1;

#[derive(Clone, Debug, Default)]
struct StreamState {
    /// The response status, from the first HPACK byte of its HEADERS (h2 sends the statuses of
    /// the static table as one indexed byte); 0 for any other status.
    status: u16,
    body: Vec<u8>,
    ended: bool,
    reset: Option<u32>,
}

impl StreamState {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct RawH2 {
    s: TcpStream,
    buf: Vec<u8>,
    streams: HashMap<u32, StreamState>,
    goaway: Option<u32>,
    closed: bool,
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut n: usize) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// A header block of literal fields without indexing, new names, no Huffman: any bytes go.
fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// A GET's pseudo-headers plus `extra` fields.
fn get<'a>(authority: &'a [u8], path: &'a [u8], extra: &[(&'a [u8], &'a [u8])]) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", path),
    ];
    if !authority.is_empty() {
        fields.push((b":authority", authority));
    }
    fields.extend_from_slice(extra);
    block(&fields)
}

impl RawH2 {
    async fn connect(addr: SocketAddr) -> RawH2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut c = RawH2 {
            s,
            buf: Vec::new(),
            streams: HashMap::new(),
            goaway: None,
            closed: false,
        };
        c.frame(4, 0, 0, &[]).await;
        c
    }

    async fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(ty);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).await.unwrap();
    }

    /// HEADERS with END_HEADERS, and END_STREAM when `end`.
    async fn headers(&mut self, stream: u32, block: &[u8], end: bool) {
        self.frame(1, 0x4 | u8::from(end), stream, block).await;
    }

    /// HEADERS without END_HEADERS (END_STREAM set): the block goes on in `continuation`s.
    async fn headers_start(&mut self, stream: u32, fragment: &[u8]) {
        self.frame(1, 0x1, stream, fragment).await;
    }

    /// CONTINUATION, with END_HEADERS when `end`.
    async fn continuation(&mut self, stream: u32, fragment: &[u8], end: bool) {
        self.frame(9, if end { 0x4 } else { 0 }, stream, fragment)
            .await;
    }

    async fn data(&mut self, stream: u32, bytes: &[u8], end: bool) {
        self.frame(0, u8::from(end), stream, bytes).await;
    }

    /// Reads one frame into the stream table; false on close or 10 s of silence.
    async fn read_one(&mut self) -> bool {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let (ty, flags) = (self.buf[3], self.buf[4]);
                    let id =
                        u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                            & 0x7fff_ffff;
                    let payload: Vec<u8> = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    self.on_frame(ty, flags, id, &payload).await;
                    return true;
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => {
                    self.closed = true;
                    return false;
                }
            }
        }
    }

    async fn on_frame(&mut self, ty: u8, flags: u8, id: u32, payload: &[u8]) {
        match ty {
            // DATA: keep the windows open so bodies flow.
            0 => {
                let st = self.streams.entry(id).or_default();
                st.body.extend_from_slice(payload);
                st.ended |= flags & 1 != 0;
                if !payload.is_empty() {
                    let inc = (payload.len() as u32).to_be_bytes();
                    self.frame(8, 0, 0, &inc).await;
                }
            }
            1 => {
                let st = self.streams.entry(id).or_default();
                if st.status == 0 {
                    st.status = match payload.first() {
                        Some(0x88) => 200,
                        Some(0x89) => 204,
                        Some(0x8c) => 400,
                        Some(0x8d) => 404,
                        Some(0x8e) => 500,
                        _ => 0,
                    };
                }
                st.ended |= flags & 1 != 0;
            }
            3 => {
                let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                self.streams.entry(id).or_default().reset = Some(code);
            }
            // SETTINGS: acknowledge the server's.
            4 if flags & 1 == 0 => self.frame(4, 1, 0, &[]).await,
            6 if flags & 1 == 0 => self.frame(6, 1, 0, payload).await,
            7 => {
                self.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
            _ => {}
        }
    }

    /// Reads until `stream` ended or was reset, or the connection went away.
    async fn wait(&mut self, stream: u32) -> StreamState {
        loop {
            let st = self.streams.get(&stream).cloned().unwrap_or_default();
            if st.ended || st.reset.is_some() || self.goaway.is_some() || self.closed {
                return st;
            }
            self.read_one().await;
        }
    }
}

#[tokio::test]
async fn http2_authority_wins_over_host() {
    let (gw, good, evil, any) = setup().await;
    let mut c = RawH2::connect(gw.addr).await;
    // `host` names another entity than `:authority`: routed and forwarded by `:authority`.
    c.headers(
        1,
        &get(b"good.test", b"/a", &[(b"host", b"evil.test")]),
        true,
    )
    .await;
    let st = c.wait(1).await;
    assert_eq!(st.status, 200, "{st:?}");
    assert_eq!(st.text(), "good good.test /a");
    assert_eq!((good.requests(), evil.requests()), (1, 0));
    // Two `host` fields, or one that is not a host: refused.
    c.headers(
        3,
        &get(b"", b"/a", &[(b"host", b"v.test"), (b"host", b"evil.test")]),
        true,
    )
    .await;
    let st = c.wait(3).await;
    assert_eq!(st.status, 400, "{st:?}");
    assert!(st.text().contains("more than one Host"), "{}", st.text());
    c.headers(5, &get(b"", b"/a", &[(b"host", b"v.test/../x")]), true)
        .await;
    assert_eq!(c.wait(5).await.status, 400);
    c.headers(
        7,
        &get(b"good.test", b"/a", &[(b"host", b"v.test evil")]),
        true,
    )
    .await;
    assert_eq!(c.wait(7).await.status, 400);
    assert_eq!(
        forwarded(&[&good, &evil, &any]),
        1,
        "refusals not forwarded"
    );

    // Agreeing (case aside) is fine, and a `host` alone still routes.
    c.headers(
        9,
        &get(b"good.test", b"/b", &[(b"host", b"Good.Test")]),
        true,
    )
    .await;
    assert_eq!(c.wait(9).await.text(), "good Good.Test /b");
    c.headers(11, &get(b"", b"/c", &[(b"host", b"evil.test")]), true)
        .await;
    assert_eq!(c.wait(11).await.text(), "evil evil.test /c");
    assert_eq!(c.goaway, None);
}

#[tokio::test]
async fn http2_value_with_surrounding_whitespace_resets_only_its_stream() {
    let (gw, good, evil, any) = setup().await;
    let mut c = RawH2::connect(gw.addr).await;
    // An innocent stream in flight while the malformed ones arrive.
    c.headers(1, &get(b"good.test", b"/slow", &[]), true).await;
    c.headers(3, &get(b"good.test", b"/x", &[(b"x-pad", b" v")]), true)
        .await;
    c.headers(5, &get(b"good.test", b"/x", &[(b"x-pad", b"v\t")]), true)
        .await;
    let (s3, s5) = (c.wait(3).await, c.wait(5).await);
    assert_eq!(s3.reset, Some(PROTOCOL_ERROR), "{s3:?}");
    assert_eq!(s5.reset, Some(PROTOCOL_ERROR), "{s5:?}");
    let s1 = c.wait(1).await;
    assert_eq!(
        (s1.status, s1.text().as_str()),
        (200, "good good.test /slow")
    );
    // Inner whitespace is fine, and the connection still serves new streams.
    c.headers(7, &get(b"good.test", b"/y", &[(b"x-pad", b"a b")]), true)
        .await;
    assert_eq!(c.wait(7).await.text(), "good good.test /y");
    assert_eq!(c.goaway, None);
    assert_eq!(good.requests(), 2, "the reset streams were not forwarded");
    assert_eq!(forwarded(&[&evil, &any]), 0);
}

#[tokio::test]
async fn http2_authority_with_userinfo_resets_only_its_stream() {
    let (gw, good, evil, any) = setup().await;
    let mut c = RawH2::connect(gw.addr).await;
    c.headers(1, &get(b"good.test", b"/slow", &[]), true).await;
    c.headers(3, &get(b"user@good.test", b"/x", &[]), true)
        .await;
    c.headers(5, &get(b"user:pw@evil.test", b"/x", &[]), true)
        .await;
    assert_eq!(c.wait(3).await.reset, Some(PROTOCOL_ERROR));
    assert_eq!(c.wait(5).await.reset, Some(PROTOCOL_ERROR));
    assert_eq!(c.wait(1).await.text(), "good good.test /slow");
    c.headers(7, &get(b"good.test", b"/y", &[]), true).await;
    assert_eq!(c.wait(7).await.text(), "good good.test /y");
    assert_eq!(c.goaway, None);
    assert_eq!(good.requests(), 2);
    assert_eq!(forwarded(&[&evil, &any]), 0);
}

/// Shared by the cases the h2 crate itself used to turn into connection errors (our vendored
/// h2 carries a patch for them, vendor/h2/FRONTDESK-PATCH.md): the malformed stream is reset, the
/// stream in flight beside it and a later one complete, and no GOAWAY is sent.
async fn malformed_field_resets_only_its_stream(field: (&[u8], &[u8])) {
    let (gw, good, evil, any) = setup().await;
    let mut c = RawH2::connect(gw.addr).await;
    c.headers(1, &get(b"good.test", b"/slow", &[]), true).await;
    c.headers(3, &get(b"good.test", b"/x", &[field]), true)
        .await;
    let s3 = c.wait(3).await;
    assert_eq!((s3.reset, c.goaway), (Some(PROTOCOL_ERROR), None), "{s3:?}");
    assert_eq!(c.wait(1).await.text(), "good good.test /slow");
    c.headers(5, &get(b"good.test", b"/y", &[]), true).await;
    assert_eq!(c.wait(5).await.text(), "good good.test /y");
    assert_eq!(c.goaway, None);
    assert_eq!(good.requests(), 2, "the reset stream was not forwarded");
    assert_eq!(forwarded(&[&evil, &any]), 0);
}

#[tokio::test]
async fn http2_upper_case_field_name_resets_only_its_stream() {
    malformed_field_resets_only_its_stream((b"X-Upper", b"v")).await;
}

#[tokio::test]
async fn http2_control_bytes_in_a_value_reset_only_the_stream() {
    for value in [&b"a\rb"[..], b"a\nb", b"a\0b"] {
        malformed_field_resets_only_its_stream((b"x-bad", value)).await;
    }
}

/// HPACK: a literal field with incremental indexing and a new name (RFC 7541 §6.2.1).
fn literal_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x40);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// HPACK: an indexed field (RFC 7541 §6.1).
fn indexed(out: &mut Vec<u8>, index: usize) {
    hpack_int(out, 0x80, 7, index);
}

/// HPACK: a literal field without indexing whose name is the table entry `index` (§6.2.2).
fn literal_with_name_ref(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    hpack_int(out, 0, 4, index);
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// The malformed fields still enter the connection's dynamic table (HPACK state is shared by the
/// streams): a later stream that references one of them by index is malformed too, one that
/// borrows only a valid name with a valid value is not, and the connection goes on.
#[tokio::test]
async fn http2_malformed_field_in_the_dynamic_table_resets_the_streams_that_reference_it() {
    let (gw, good, evil, any) = setup().await;
    let mut c = RawH2::connect(gw.addr).await;
    c.headers(1, &get(b"good.test", b"/slow", &[]), true).await;

    // Dynamic table after these two: 62 = `X-Upper: v`, 63 = `x-bad: a\rb`.
    let mut b = get(b"good.test", b"/x", &[]);
    literal_indexed(&mut b, b"x-bad", b"a\rb");
    c.headers(3, &b, true).await;
    let mut b = get(b"good.test", b"/x", &[]);
    literal_indexed(&mut b, b"X-Upper", b"v");
    c.headers(5, &b, true).await;
    assert_eq!(c.wait(3).await.reset, Some(PROTOCOL_ERROR));
    assert_eq!(c.wait(5).await.reset, Some(PROTOCOL_ERROR));

    // Referenced whole, by index: malformed.
    let mut b = get(b"good.test", b"/x", &[]);
    indexed(&mut b, 63);
    c.headers(7, &b, true).await;
    let mut b = get(b"good.test", b"/x", &[]);
    indexed(&mut b, 62);
    c.headers(9, &b, true).await;
    // The upper-case name with a valid value: still malformed.
    let mut b = get(b"good.test", b"/x", &[]);
    literal_with_name_ref(&mut b, 62, b"w");
    c.headers(11, &b, true).await;
    for id in [7, 9, 11] {
        let st = c.wait(id).await;
        assert_eq!(
            (st.reset, c.goaway),
            (Some(PROTOCOL_ERROR), None),
            "{id}: {st:?}"
        );
    }

    // The valid name `x-bad` with a valid value: a good request.
    let mut b = get(b"good.test", b"/n", &[]);
    literal_with_name_ref(&mut b, 63, b"ok");
    c.headers(13, &b, true).await;
    let st = c.wait(13).await;
    assert_eq!((st.status, st.reset), (200, None), "{st:?}");
    assert_eq!(st.text(), "good good.test /n");
    // The stream in flight all along, and a clean one after.
    assert_eq!(c.wait(1).await.text(), "good good.test /slow");
    c.headers(15, &get(b"good.test", b"/y", &[]), true).await;
    assert_eq!(c.wait(15).await.text(), "good good.test /y");
    assert_eq!(c.goaway, None);
    assert_eq!(good.requests(), 3, "the reset streams were not forwarded");
    assert_eq!(forwarded(&[&evil, &any]), 0);
}

/// A malformed field in a header block that goes on in CONTINUATION frames: the whole block is
/// still decoded (the dynamic table stays in step with the client's) and only its stream is reset,
/// also when a fragment ends inside the next field.
#[tokio::test]
async fn http2_malformed_field_in_a_continued_header_block_resets_only_its_stream() {
    let (gw, good, evil, any) = setup().await;
    let mut c = RawH2::connect(gw.addr).await;
    c.headers(1, &get(b"good.test", b"/slow", &[]), true).await;

    // The first fragment ends three bytes into `x-after: 1`.
    let mut b = get(b"good.test", b"/x", &[]);
    literal_indexed(&mut b, b"X-Upper", b"v");
    let cut = b.len() + 3;
    literal_indexed(&mut b, b"x-after", b"1");
    c.headers_start(3, &b[..cut]).await;
    c.continuation(3, &b[cut..], true).await;
    // Split between two fields, over two CONTINUATIONs.
    let mut b = get(b"good.test", b"/x", &[]);
    literal_indexed(&mut b, b"x-bad", b"a\nb");
    c.headers_start(5, &b).await;
    c.continuation(5, &[], false).await;
    let mut b = Vec::new();
    literal_indexed(&mut b, b"x-late", b"2");
    c.continuation(5, &b, true).await;
    for id in [3, 5] {
        let st = c.wait(id).await;
        assert_eq!(
            (st.reset, c.goaway),
            (Some(PROTOCOL_ERROR), None),
            "{id}: {st:?}"
        );
    }

    // Dynamic table now: 62 = `x-late: 2`, 63 = `x-bad: a\nb`, 64 = `x-after: 1`,
    // 65 = `X-Upper: v`. Clean entries by index: a good request.
    let mut b = get(b"good.test", b"/n", &[]);
    indexed(&mut b, 62);
    indexed(&mut b, 64);
    c.headers(7, &b, true).await;
    let st = c.wait(7).await;
    assert_eq!((st.status, st.reset), (200, None), "{st:?}");
    assert_eq!(st.text(), "good good.test /n");
    assert_eq!(c.wait(1).await.text(), "good good.test /slow");
    assert_eq!(c.goaway, None);
    assert_eq!(good.requests(), 2, "the reset streams were not forwarded");
    assert_eq!(forwarded(&[&evil, &any]), 0);
}

#[tokio::test]
async fn http2_trailer_with_a_pseudo_header_resets_the_stream() {
    let (gw, good, evil, any) = setup().await;
    let mut c = RawH2::connect(gw.addr).await;
    let post = |path: &'static [u8]| {
        block(&[
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", b"good.test"),
        ])
    };
    c.headers(1, &get(b"good.test", b"/slow", &[]), true).await;
    // `/slow`: the upstream answers only after 400 ms, so the reset comes first.
    c.headers(3, &post(b"/slow/t"), false).await;
    c.data(3, b"body", false).await;
    c.headers(3, &block(&[(b":path", b"/admin")]), true).await;
    // The head was forwarded already (bodies stream); the reset must abort the request.
    let s3 = c.wait(3).await;
    assert_eq!((s3.reset, c.goaway), (Some(PROTOCOL_ERROR), None), "{s3:?}");
    assert_eq!(c.wait(1).await.text(), "good good.test /slow");

    // Trailers of regular fields are fine, and the connection still serves new streams.
    c.headers(5, &post(b"/t"), false).await;
    c.data(5, b"body", false).await;
    c.headers(5, &block(&[(b"x-trailer", b"1")]), true).await;
    let s5 = c.wait(5).await;
    assert_eq!((s5.status, s5.reset), (200, None), "{s5:?}");
    c.headers(7, &get(b"good.test", b"/y", &[]), true).await;
    assert_eq!(c.wait(7).await.text(), "good good.test /y");
    assert_eq!(c.goaway, None);
    assert_eq!(forwarded(&[&evil, &any]), 0);
    drop(good);
}
