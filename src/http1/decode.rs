//! Body framing: `Content-Length`, chunked (RFC 9112 §7.1) and until-close, decoded in place from
//! a connection's read buffer. Data chunks are split off the buffer without a copy.
//!
//! Strict where leniency is a smuggling vector: chunk lines end with CRLF (a bare LF is
//! refused), sizes are hex digits only (at most 16), chunk data must be followed by CRLF, and
//! the trailer section is bounded like a head.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// The longest chunk-size line, extensions included.
const MAX_SIZE_LINE: usize = 4096;

/// Most trailer fields accepted.
const MAX_TRAILERS: usize = 64;

/// What the decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields of a chunked body; the body ends after them.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// The body's framing is broken: the connection cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct Malformed(pub &'static str);

/// A request body's decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Everything until the connection closes (a response without framing); the reader ends
    /// it at EOF.
    UntilClose,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside chunk data, with this many bytes left.
    Data(u64),
    /// After chunk data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields or the final CRLF.
    Trailers,
    /// Done.
    Done,
}

impl Decoder {
    /// A chunked body's decoder.
    pub fn chunked() -> Self {
        Decoder::Chunked(Chunk::Size)
    }

    /// True once the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Chunked(Chunk::Done))
    }

    /// Decodes the next piece from `buf`, consuming what it used. `max_trailers` bounds the
    /// trailer section's bytes.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Decoded, Malformed> {
        match self {
            Decoder::Length(0) => Ok(Decoded::End),
            Decoder::UntilClose => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                Ok(Decoded::Data(buf.split().freeze()))
            }
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                Ok(Decoded::Data(buf.split_to(n).freeze()))
            }
            Decoder::Chunked(state) => loop {
                match *state {
                    Chunk::Done => return Ok(Decoded::End),
                    Chunk::Size => {
                        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                            if buf.len() > MAX_SIZE_LINE {
                                return Err(Malformed("chunk-size line too long"));
                            }
                            return Ok(Decoded::NeedMore);
                        };
                        if nl > MAX_SIZE_LINE {
                            return Err(Malformed("chunk-size line too long"));
                        }
                        let size = size_line(&buf[..nl])?;
                        let _ = buf.split_to(nl + 1);
                        *state = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                        let rest = left - n as u64;
                        *state = if rest == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(rest)
                        };
                        return Ok(Decoded::Data(buf.split_to(n).freeze()));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            if buf.first().is_some_and(|&b| b != b'\r') {
                                return Err(Malformed("chunk data not followed by CRLF"));
                            }
                            return Ok(Decoded::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(Malformed("chunk data not followed by CRLF"));
                        }
                        let _ = buf.split_to(2);
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        if buf.len() < 2 {
                            if buf.first().is_some_and(|&b| b != b'\r' && !is_tchar(b)) {
                                return Err(Malformed("malformed trailer section"));
                            }
                            return Ok(Decoded::NeedMore);
                        }
                        if &buf[..2] == b"\r\n" {
                            let _ = buf.split_to(2);
                            *state = Chunk::Done;
                            return Ok(Decoded::End);
                        }
                        let Some(end) = find(buf, b"\r\n\r\n") else {
                            if buf.len() > max_trailers {
                                return Err(Malformed("trailer section too large"));
                            }
                            return Ok(Decoded::NeedMore);
                        };
                        if end + 4 > max_trailers {
                            return Err(Malformed("trailer section too large"));
                        }
                        let section = buf.split_to(end + 4).freeze();
                        *state = Chunk::Done;
                        return trailers(&section).map(Decoded::Trailers);
                    }
                }
            },
        }
    }
}

/// `1*HEXDIG [BWS] [; ext]` followed by CR (the LF is not in `line`).
fn size_line(line: &[u8]) -> Result<u64, Malformed> {
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(Malformed("chunk-size line not ended by CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Malformed("invalid chunk size"));
    }
    if digits > 16 {
        return Err(Malformed("chunk size too large"));
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        // Hex digits only (checked above); at most 16 of them always fit.
        let v = (d as char).to_digit(16).unwrap_or(0);
        size = (size << 4) | u64::from(v);
    }
    let rest = &line[digits..];
    // BWS is SP and HTAB only (RFC 9112 §7.1.1); a CR or FF here is a malformed line.
    let ext = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !ext.is_empty() && ext[0] != b';' {
        return Err(Malformed("invalid chunk size"));
    }
    if ext.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(Malformed("control characters in a chunk extension"));
    }
    Ok(size)
}

fn trailers(section: &Bytes) -> Result<HeaderMap, Malformed> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let parsed = match httparse::parse_headers(section, &mut fields) {
        // The whole section, to its CRLFCRLF: httparse also takes a bare LF for the end of the
        // fields, and bytes it left over would be lost (a request hidden after a bare LF).
        Ok(httparse::Status::Complete((used, parsed))) if used == section.len() => parsed,
        _ => return Err(Malformed("malformed trailer section")),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for f in parsed {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| Malformed("malformed trailer name"))?;
        let value = HeaderValue::from_maybe_shared(section.slice_ref(f.value))
            .map_err(|_| Malformed("malformed trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes all of `input` (fed in pieces of `step` bytes): the body and its trailers.
    pub(crate) fn decode_all(
        input: &[u8],
        step: usize,
    ) -> Result<Option<(Vec<u8>, HeaderMap)>, Malformed> {
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), HeaderMap::new());
        let mut fed = 0;
        loop {
            match d.decode(&mut buf, 8192)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = t,
                Decoded::End => return Ok(Some((body, trailers))),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        return Ok(None);
                    }
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers_in_any_split() {
        let input = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n";
        for step in 1..input.len() {
            let (body, trailers) = decode_all(input, step).expect("valid").expect("complete");
            assert_eq!(body, b"hello world");
            assert_eq!(trailers["x-sum"], "42");
        }
        let (body, t) = decode_all(b"0\r\n\r\n", 1)
            .expect("valid")
            .expect("complete");
        assert!(body.is_empty() && t.is_empty());
    }

    #[test]
    fn refuses_lenient_framing() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"x\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let mut d = Decoder::Length(5);
        let mut buf = BytesMut::from(&b"helloGET"[..]);
        assert_eq!(
            d.decode(&mut buf, 0),
            Ok(Decoded::Data(Bytes::from_static(b"hello")))
        );
        assert_eq!(d.decode(&mut buf, 0), Ok(Decoded::End));
        assert_eq!(&buf[..], b"GET");
    }
}
