//! HTTP/1.1 framing shared by the native server codec (`server::h1`) and the native upstream
//! client (`upstream::h1`): body decoding (content length, chunked with trailers, until close)
//! and the small encoders both sides write with.

pub mod decode;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

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

static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");

/// The hop-by-hop fields of RFC 9110 §7.6.1 and their legacy relatives, besides `Connection`
/// and `TE` (whose value decides: `TE: trailers` is kept). `Trailer` is not one (RFC 9110
/// §6.6.2): it names the trailers of the message end to end.
pub fn is_hop_by_hop(k: &http::HeaderName) -> bool {
    use http::header;
    *k == header::TRANSFER_ENCODING
        || *k == header::UPGRADE
        || *k == header::PROXY_AUTHORIZATION
        || *k == header::PROXY_AUTHENTICATE
        || *k == KEEP_ALIVE
        || *k == PROXY_CONNECTION
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
    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = Vec::new();
        super::chunk_size(&mut out, 0x1a2f);
        super::chunk_size(&mut out, 0);
        assert_eq!(out, b"1a2f\r\n0\r\n");
    }
}
