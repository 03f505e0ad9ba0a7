//! HTTP/1.1 framing shared by the native server codec (`server::h1`) and the native upstream
//! client (`upstream::h1`): body decoding (content length, chunked with trailers, until close)
//! and the small encoders both sides write with.

pub mod decode;

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

/// A connection's one timer, re-armed lazily. A deadline later than the one armed does not
/// re-arm it at once (that would be a timer-wheel update per keep-alive request, as each wait
/// ends later than the last): the timer fires at the earlier one and is re-armed for the real
/// deadline then. An earlier deadline re-arms it at once. It never fires late.
///
/// An armed timer whose wait is over still holds the waker of the task that polled it last,
/// which it wakes (once, for nothing) when its old deadline passes.
#[derive(Debug, Default)]
pub struct LazyTimer(Option<Pin<Box<tokio::time::Sleep>>>);

impl LazyTimer {
    /// Ready once `deadline` has passed.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: tokio::time::Instant) -> Poll<()> {
        let t = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if t.deadline() > deadline {
            t.as_mut().reset(deadline);
        }
        loop {
            std::task::ready!(t.as_mut().poll(cx));
            if t.deadline() >= deadline {
                return Poll::Ready(());
            }
            t.as_mut().reset(deadline);
        }
    }
}

/// Reads once from `stream` into the spare capacity of `buf` (reserving [`READ_CHUNK`] when
/// little is left). `Ok(0)`: EOF.
///
/// A read that returns less than the room it had means the socket is drained: its readiness is
/// cleared then, as nginx does, so the next read waits for the reactor instead of asking the
/// kernel once more for `EAGAIN` (tokio clears readiness only on `WouldBlock`: two system calls
/// per proxied request otherwise, one on each side). The clearing goes through `try_io`, which
/// clears only the readiness seen before the read: bytes that arrive after it wake the task.
pub fn poll_read_tcp(
    stream: &tokio::net::TcpStream,
    cx: &mut Context<'_>,
    buf: &mut bytes::BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    let room = buf.capacity() - buf.len();
    loop {
        match stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let mut got = None;
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            let n = stream.try_read_buf(buf)?;
            got = Some(n);
            if n > 0 && n < room {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match (got, r) {
            (Some(n), _) => return Poll::Ready(Ok(n)),
            // Not readable after all (the readiness was stale): wait for the reactor.
            (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
            (None, Err(e)) => return Poll::Ready(Err(e)),
            (None, Ok(n)) => return Poll::Ready(Ok(n)),
        }
    }
}

/// Bytes a read asks for at least.
pub const READ_CHUNK: usize = 16 * 1024;

/// Body bytes copied into the output buffer next to framing rather than written from their own
/// buffer: below this a copy is cheaper than another iovec (and one TLS record beats two).
const COPY_BELOW: usize = 4096;

/// What a connection owes its peer: framing and small body pieces in a reused buffer, then at
/// most one larger body piece (not copied) and its trailing framing. Written with one vectored
/// write where the stream supports it.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Framing and small pieces, written from `pos`.
    pub buf: Vec<u8>,
    pos: usize,
    data: Bytes,
    tail: &'static [u8],
}

impl Outbox {
    /// Bytes not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos + self.data.len() + self.tail.len()
    }

    /// True when a larger piece waits: write before queuing more.
    pub fn holds_piece(&self) -> bool {
        !self.data.is_empty()
    }

    /// Queues a body piece with its trailing framing; small ones are copied next to the framing.
    /// Call only when [`Outbox::holds_piece`] is false.
    pub fn put(&mut self, d: Bytes, tail: &'static [u8]) {
        if d.len() < COPY_BELOW {
            self.buf.extend_from_slice(&d);
            self.buf.extend_from_slice(tail);
        } else {
            self.data = d;
            self.tail = tail;
        }
    }

    /// Moves a queued larger piece into the buffer, so framing can be appended after it.
    pub fn settle(&mut self) {
        if !self.data.is_empty() {
            let d = std::mem::take(&mut self.data);
            self.buf.extend_from_slice(&d);
            self.buf.extend_from_slice(self.tail);
            self.tail = b"";
        }
    }

    /// Forgets everything queued and frees the buffer.
    pub fn release(&mut self) {
        *self = Outbox::default();
    }

    /// Writes until everything is out; `written` is told each write's size.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        mut written: impl FnMut(usize),
    ) -> Poll<io::Result<()>> {
        while self.pending() > 0 {
            let r = {
                let head = &self.buf[self.pos..];
                if self.data.is_empty() {
                    Pin::new(&mut *io).poll_write(cx, head)
                } else {
                    let bufs = [
                        io::IoSlice::new(head),
                        io::IoSlice::new(&self.data),
                        io::IoSlice::new(self.tail),
                    ];
                    Pin::new(&mut *io).poll_write_vectored(cx, &bufs)
                }
            };
            match r {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    written(n);
                    self.advance(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buf.clear();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        let step = n.min(self.buf.len() - self.pos);
        self.pos += step;
        n -= step;
        if n > 0 {
            let step = n.min(self.data.len());
            self.data.advance(step);
            n -= step;
        }
        if n > 0 {
            self.tail = &self.tail[n.min(self.tail.len())..];
        }
        if self.data.is_empty() && !self.tail.is_empty() && self.pos == self.buf.len() {
            // The piece is out; its trailing framing goes with the next write.
            self.buf.clear();
            self.pos = 0;
            self.buf.extend_from_slice(self.tail);
            self.tail = b"";
        }
    }
}

/// Appends a chunk-size line for `len` bytes of data.
pub fn chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk, with `trailers` when given.
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&http::HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n` for every field.
pub fn fields(out: &mut Vec<u8>, headers: &http::HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// True when the comma-separated `value` holds `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&c| c == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// What a field name means to an HTTP/1 connection (names compared without case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// `Connection`: its options, and the names of other fields that are hop-by-hop.
    Connection,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding` (hop-by-hop).
    TransferEncoding,
    /// `TE` (hop-by-hop, but `TE: trailers` is kept: gRPC needs it end to end).
    Te,
    /// `Date`.
    Date,
    /// The other hop-by-hop fields of RFC 9110 §7.6.1 and their legacy relatives: `Keep-Alive`,
    /// `Proxy-Connection`, `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`. `Trailer`
    /// is not one (RFC 9110 §6.6.2): it names the trailers of the message end to end.
    HopByHop,
    /// Any other field.
    Other,
}

/// Which kinds of fields a request head named, as its codec saw them: the proxy skips lookups
/// of fields the head cannot hold. Conservative: a kind marked may still be absent, one not
/// marked is absent. [`Seen::ALL`] when the codec did not look (every lookup is made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen(u8);

impl Seen {
    /// Nothing seen yet.
    pub const NONE: Seen = Seen(0);
    /// Unknown: anything may be there.
    pub const ALL: Seen = Seen(u8::MAX);
    const X: u8 = 1;
    const CONTENT_TYPE: u8 = 2;
    const HOP_BY_HOP: u8 = 4;
    const VIA: u8 = 8;

    /// Notes a field name, as it came (any case).
    pub fn note(&mut self, name: &[u8]) {
        self.0 |= match name.len() {
            // `x-` fields: the request id, `X-Forwarded-*`, the consumer fields only the
            // gateway may set (all looked up or stripped by name).
            n if n > 2 && name[1] == b'-' && matches!(name[0], b'x' | b'X') => Self::X,
            3 if name.eq_ignore_ascii_case(b"via") => Self::VIA,
            12 if name.eq_ignore_ascii_case(b"content-type") => Self::CONTENT_TYPE,
            _ => match field_kind(name) {
                FieldKind::Other | FieldKind::ContentLength | FieldKind::Date => 0,
                _ => Self::HOP_BY_HOP,
            },
        };
    }

    /// It may hold an `x-` field (`X-Request-Id`, `X-Forwarded-*`, `X-Consumer-*`).
    pub fn x_fields(self) -> bool {
        self.0 & Self::X != 0
    }

    /// It may hold a `Content-Type`.
    pub fn content_type(self) -> bool {
        self.0 & Self::CONTENT_TYPE != 0
    }

    /// It may hold a field the proxy strips from a request: hop-by-hop or consumer fields.
    pub fn strippable(self) -> bool {
        self.0 & (Self::HOP_BY_HOP | Self::X) != 0
    }

    /// It may hold a forwarding field (`X-Forwarded-*`, `Via`, `X-Request-Id`).
    pub fn forwarding(self) -> bool {
        self.0 & (Self::VIA | Self::X) != 0
    }
}

/// The kind of field `name`; one comparison at most (by length first).
pub fn field_kind(name: &[u8]) -> FieldKind {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    match name.len() {
        2 if is(b"te") => FieldKind::Te,
        4 if is(b"date") => FieldKind::Date,
        7 if is(b"upgrade") => FieldKind::HopByHop,
        10 if is(b"connection") => FieldKind::Connection,
        10 if is(b"keep-alive") => FieldKind::HopByHop,
        14 if is(b"content-length") => FieldKind::ContentLength,
        16 if is(b"proxy-connection") => FieldKind::HopByHop,
        17 if is(b"transfer-encoding") => FieldKind::TransferEncoding,
        18 if is(b"proxy-authenticate") => FieldKind::HopByHop,
        19 if is(b"proxy-authorization") => FieldKind::HopByHop,
        _ => FieldKind::Other,
    }
}

static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");

/// The hop-by-hop fields besides `Connection` and `TE` (whose value decides): see
/// [`FieldKind::HopByHop`]; `Transfer-Encoding` is one too. The same list as [`field_kind`]'s,
/// compared as header names (a test checks they agree): on a map, most of these are one
/// comparison of standard-header tags, not of bytes.
pub fn is_hop_by_hop(k: &http::HeaderName) -> bool {
    use http::header;
    *k == header::TRANSFER_ENCODING
        || *k == header::UPGRADE
        || *k == header::PROXY_AUTHORIZATION
        || *k == header::PROXY_AUTHENTICATE
        || *k == KEEP_ALIVE
        || *k == PROXY_CONNECTION
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6), no sign, no list.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let v = trim_ows(value);
    if v.is_empty() {
        return None;
    }
    // By hand, one pass: `str::parse` after a digit check and a UTF-8 check cost ~150
    // instructions per response for two digits (bench/callgrind.sh). Overflow is `None`.
    v.iter().try_fold(0u64, |n, &b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// The options of a `Connection` value: `close`, `keep-alive`, and whether it names anything
/// else (fields that are then hop-by-hop, or options such as `upgrade`).
pub fn connection_options(value: &[u8]) -> (bool, bool, bool) {
    // The values nearly every head carries, before the list is split.
    if value.eq_ignore_ascii_case(b"keep-alive") {
        return (false, true, false);
    }
    if value.eq_ignore_ascii_case(b"close") {
        return (true, false, false);
    }
    let (mut close, mut keep, mut other) = (false, false, false);
    for t in value.split(|&c| c == b',').map(trim_ows) {
        if t.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if t.eq_ignore_ascii_case(b"keep-alive") {
            keep = true;
        } else if !t.is_empty() {
            other = true;
        }
    }
    (close, keep, other)
}

/// A response head's fields as the downstream HTTP/1 codec writes them: `name: value` lines
/// (names lower-cased, each ending in CRLF), the connection's own fields left out. The native
/// upstream client makes it, when asked, instead of a header map for heads that need nothing
/// else; a response that carries one has only the gateway's own fields in its map.
#[derive(Debug)]
pub struct RawFields {
    /// The lines, ready to write.
    pub lines: Bytes,
    /// The `Content-Length` among them.
    pub content_length: Option<u64>,
    /// A `Date` is among them.
    pub has_date: bool,
}

/// Trims optional whitespace (SP, HTAB: RFC 9110 §5.6.3) on both sides.
pub fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    /// The two spellings of the hop-by-hop list agree, whatever the case of the name.
    #[test]
    fn hop_by_hop_names_agree() {
        use super::{field_kind, is_hop_by_hop, FieldKind};
        for name in [
            "te",
            "Date",
            "upgrade",
            "Connection",
            "keep-alive",
            "content-length",
            "Proxy-Connection",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-authorization",
            "trailer",
            "x-forwarded-for",
            "host",
            "via",
            "x-te",
        ] {
            let k = http::HeaderName::from_bytes(name.as_bytes()).expect("name");
            let by_bytes = field_kind(name.as_bytes());
            assert_eq!(
                is_hop_by_hop(&k),
                matches!(by_bytes, FieldKind::HopByHop | FieldKind::TransferEncoding),
                "{name}"
            );
            assert_eq!(
                field_kind(name.to_ascii_uppercase().as_bytes()),
                by_bytes,
                "{name}"
            );
        }
    }

    /// The one-pass `Content-Length` parse agrees with the rule it replaced (digits only after
    /// trimming, then `u64`'s parse), overflow and odd bytes included.
    #[test]
    fn content_lengths_parse_as_the_plain_rule_does() {
        fn plain(value: &[u8]) -> Option<u64> {
            let v = super::trim_ows(value);
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(v).ok()?.parse().ok()
        }
        let mut cases: Vec<Vec<u8>> = [
            "0",
            "19",
            " 42\t",
            "",
            " ",
            "+1",
            "-1",
            "1 2",
            "1,1",
            "0x10",
            "٣",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "007",
        ]
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
        let mut rng = fastrand::Rng::with_seed(13);
        for _ in 0..20_000 {
            let len = rng.usize(0..24);
            let alphabet = b"0123456789 \t+-,/:a\xff";
            cases.push(
                (0..len)
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect(),
            );
        }
        for c in &cases {
            assert_eq!(
                super::content_length(c),
                plain(c),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
    }

    /// The fast answers for a lone `keep-alive` or `close` are the list parse's.
    #[test]
    fn connection_options_fast_paths_agree() {
        for v in [
            "keep-alive",
            "Keep-Alive",
            "close",
            "CLOSE",
            "keep-alive, close",
            " close",
        ] {
            let fields = v
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>();
            let want = (
                fields.iter().any(|t| t == "close"),
                fields.iter().any(|t| t == "keep-alive"),
                false,
            );
            assert_eq!(super::connection_options(v.as_bytes()), want, "{v}");
        }
        assert_eq!(super::connection_options(b"upgrade"), (false, false, true));
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = Vec::new();
        super::chunk_size(&mut out, 0x1a2f);
        super::chunk_size(&mut out, 0);
        assert_eq!(out, b"1a2f\r\n0\r\n");
    }
}
