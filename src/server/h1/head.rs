//! Request heads: one zero-copy parse with `httparse`, the RFC 9112 refusals, and the framing
//! the head declares. Shared by the native codec (which builds the request from it) and the
//! head guard under hyper (which only needs the verdict).

use std::mem::MaybeUninit;

use http::StatusCode;

use crate::http1::trim_ows;
use crate::snapshot::HeadLimits;

/// Header lines parsed on the stack; a listener allowing more uses a heap array.
const STACK_HEADERS: usize = 128;

/// Why a head is refused: the status and a detail for the problem body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The 4xx to answer.
    pub status: StatusCode,
    /// The problem body's detail.
    pub detail: &'static str,
}

const fn bad(detail: &'static str) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        detail,
    }
}

const HEAD_TOO_LARGE: Refusal = Refusal {
    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    detail: "the request head is too large",
};

const URI_TOO_LONG: Refusal = Refusal {
    status: StatusCode::URI_TOO_LONG,
    detail: "the request target is too long",
};

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` (0 when absent: a request without either header has no body).
    Length(u64),
    /// `Transfer-Encoding: …, chunked`.
    Chunked,
}

/// What the head says beyond its fields, found in the same pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traits {
    /// Body framing.
    pub framing: Framing,
    /// HTTP/1.0 rather than HTTP/1.1.
    pub http10: bool,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` (HTTP/1.1 only).
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` field (HTTP/1.1 only).
    pub upgrade: bool,
    /// `TE: trailers`: the client accepts trailers in a chunked response.
    pub trailers: bool,
    /// The kinds of fields the head names, for the proxy's lookups.
    pub seen: crate::http1::Seen,
}

/// A complete head, parsed in place.
#[derive(Debug)]
pub struct Parsed<'b, 'h> {
    /// Bytes of the head in the buffer, its final blank line included.
    pub len: usize,
    /// The method token.
    pub method: &'b str,
    /// The request target, as sent.
    pub target: &'b str,
    /// The header fields, in order.
    pub headers: &'h [httparse::Header<'b>],
    /// Framing and connection traits.
    pub traits: Traits,
}

/// Room for the header lines of one parse.
pub struct HeaderSlots<'b> {
    stack: [MaybeUninit<httparse::Header<'b>>; STACK_HEADERS],
    heap: Vec<MaybeUninit<httparse::Header<'b>>>,
}

impl<'b> HeaderSlots<'b> {
    /// Empty slots (nothing is initialised until a parse writes them).
    pub fn new() -> Self {
        HeaderSlots {
            stack: [const { MaybeUninit::uninit() }; STACK_HEADERS],
            heap: Vec::new(),
        }
    }

    fn get(&mut self, n: usize) -> &mut [MaybeUninit<httparse::Header<'b>>] {
        if n <= STACK_HEADERS {
            return &mut self.stack[..n];
        }
        self.heap.resize_with(n, MaybeUninit::uninit);
        &mut self.heap[..]
    }
}

impl Default for HeaderSlots<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses the head at the start of `buf`.
///
/// `Ok(None)`: incomplete so far (and within the limits: keep reading). `Err`: refuse the
/// request and close the connection. Empty lines before the request line are skipped
/// (RFC 9112 §2.2); they count towards the head size.
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    limits: &HeadLimits,
    slots: &'h mut HeaderSlots<'b>,
) -> Result<Option<Parsed<'b, 'h>>, Refusal> {
    let mut req = httparse::Request::new(&mut []);
    let slots = slots.get(limits.max_headers.max(1));
    let status = req.parse_with_uninit_headers(buf, slots);
    let len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            let skip = leading_empty_lines(buf);
            if partial_too_large(buf.len(), skip, limits.max_head) {
                return Err(HEAD_TOO_LARGE);
            }
            // The request line alone is longer than any allowed target.
            if !buf[skip..].contains(&b'\n') && buf.len() - skip > limits.max_uri + 64 {
                return Err(URI_TOO_LONG);
            }
            return Ok(None);
        }
        Err(e) => return Err(refusal(e, buf, limits)),
    };
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let http10 = req.version == Some(0);
    let headers: &'h [httparse::Header<'b>] = req.headers;
    // The final blank line is framing, not content.
    let final_break = if buf[..len].ends_with(b"\r\n\r\n") {
        2
    } else {
        1
    };
    let content = len
        .saturating_sub(leading_empty_lines(buf))
        .saturating_sub(final_break);
    if content > limits.max_head {
        return Err(HEAD_TOO_LARGE);
    }
    if target.len() > limits.max_uri {
        return Err(URI_TOO_LONG);
    }
    let traits = traits(headers, http10)?;
    Ok(Some(Parsed {
        len,
        method,
        target,
        headers,
        traits,
    }))
}

/// True when a head still incomplete after `len` bytes (`leading` of them empty lines before the
/// request line) cannot fit `max_head` once complete: its content (without the leading lines and
/// the final line break, as the complete check counts it) is already larger. Never refuses a head
/// that would fit, wherever the reads split it.
pub fn partial_too_large(len: usize, leading: usize, max_head: usize) -> bool {
    leading > max_head || len - leading > max_head.saturating_add(2)
}

/// Bytes of empty lines (CR, LF) before the request line.
pub fn leading_empty_lines(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len())
}

/// The refusal for a parse error: which part of the head was wrong.
fn refusal(e: httparse::Error, buf: &[u8], limits: &HeadLimits) -> Refusal {
    use httparse::Error as E;
    match e {
        E::TooManyHeaders => Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            detail: "the request has too many header fields",
        },
        E::HeaderName if is_folded(buf) => bad("obsolete line folding is not allowed"),
        E::HeaderName => bad("malformed header name"),
        E::HeaderValue => bad("control characters in a header value"),
        E::Version => bad("unsupported HTTP version"),
        E::Token | E::NewLine | E::Status => {
            let skip = leading_empty_lines(buf);
            let line = buf[skip..]
                .split(|&b| b == b'\n')
                .next()
                .unwrap_or_default();
            // A target too long is the more useful answer even when the line is also malformed.
            if line.len() > limits.max_uri + 64 {
                URI_TOO_LONG
            } else {
                bad("malformed request line")
            }
        }
    }
}

/// True when a header line starts with whitespace (obs-fold, RFC 9112 §5.2).
fn is_folded(buf: &[u8]) -> bool {
    buf.windows(2)
        .any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t'))
}

/// Framing and connection traits from the header fields; refuses what RFC 9112 §6 says a server
/// must not guess at (the smuggling vectors).
fn traits(headers: &[httparse::Header<'_>], http10: bool) -> Result<Traits, Refusal> {
    let mut content_length: Option<&[u8]> = None;
    let mut te: Option<&[u8]> = None;
    let (mut close, mut keep, mut upgrade_token, mut upgrade_field) = (false, false, false, false);
    let (mut expect_continue, mut trailers) = (false, false);
    let mut seen = crate::http1::Seen::NONE;
    for h in headers {
        let value = trim_ows(h.value);
        let name = h.name.as_bytes();
        seen.note(name);
        // Dispatch on length first: most fields are none of these.
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if value.is_empty()
                    || value.len() > 19
                    || !value.iter().all(u8::is_ascii_digit)
                    || content_length.is_some_and(|v| v != value)
                {
                    return Err(bad("invalid or conflicting Content-Length"));
                }
                content_length = Some(value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => te = Some(value),
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for t in value.split(|&c| c == b',').map(trim_ows) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        upgrade_token = true;
                    }
                }
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade_field = !value.is_empty(),
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            2 if name.eq_ignore_ascii_case(b"te") => {
                trailers = value
                    .split(|&c| c == b',')
                    .any(|t| trim_ows(t).eq_ignore_ascii_case(b"trailers"));
            }
            _ => {}
        }
    }
    let framing = match (te, content_length) {
        (Some(_), Some(_)) => {
            // RFC 9112 §6.1: a smuggling vector; refuse like nginx rather than let one win.
            return Err(bad(
                "Content-Length and Transfer-Encoding together are not allowed",
            ));
        }
        (Some(te), None) => {
            let last = te
                .rsplit(|&c| c == b',')
                .next()
                .map(trim_ows)
                .unwrap_or_default();
            if http10 || !last.eq_ignore_ascii_case(b"chunked") {
                return Err(bad("Transfer-Encoding must end with chunked"));
            }
            Framing::Chunked
        }
        (None, Some(v)) => {
            // At most 19 digits: always fits.
            let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            Framing::Length(n)
        }
        (None, None) => Framing::Length(0),
    };
    Ok(Traits {
        framing,
        http10,
        keep_alive: !close && (!http10 || keep),
        expect_continue: expect_continue && !http10,
        upgrade: upgrade_token && upgrade_field && !http10,
        trailers,
        seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> HeadLimits {
        HeadLimits {
            max_head: 128,
            max_headers: 2,
            max_uri: 16,
            head_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    fn verdict(h: &[u8]) -> Result<Option<Traits>, StatusCode> {
        let mut slots = HeaderSlots::new();
        parse(h, &limits(), &mut slots)
            .map(|p| p.map(|p| p.traits))
            .map_err(|r| r.status)
    }

    #[test]
    fn parses_a_head_and_its_framing() {
        let mut slots = HeaderSlots::new();
        let p = parse(
            b"\r\nPOST /a?b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            &limits(),
            &mut slots,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!((p.method, p.target, p.len), ("POST", "/a?b", 43));
        assert_eq!(p.traits.framing, Framing::Length(5));
        assert!(p.traits.keep_alive);
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nA: b\r\n"), Ok(None));
        let t = verdict(b"GET / HTTP/1.0\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert!(!t.keep_alive && t.http10);
        let t = verdict(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert!(t.upgrade);
    }

    #[test]
    fn refuses_limits_and_smuggling_vectors() {
        let e = |h: &[u8]| verdict(h).expect_err("refused");
        assert_eq!(
            e(b"GET /aaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n"),
            StatusCode::URI_TOO_LONG
        );
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        for h in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: 1\r\n  folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA : 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                e(h),
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(h)
            );
        }
    }
}
