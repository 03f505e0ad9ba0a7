//! Request fields hyper and h2 accept but a gateway must not forward: `Host` and the target's
//! authority (RFC 9112 §3.2, RFC 9113 §8.3.1), and the HTTP/2 field rules that make a request
//! malformed (RFC 9113 §8.1.1, §8.2.1).
//!
//! Checked on the parsed request, so every request is covered, pipelined ones included.

use http::header::{HeaderMap, HeaderValue, HOST};
use http::{Request, StatusCode, Uri, Version};

use crate::error::GatewayError;

/// A request refused for its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// More than one `Host` field.
    #[error("the request has more than one Host header")]
    DuplicateHost,
    /// An HTTP/1.1 request without `Host`.
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    /// A `Host` value that is not `host[:port]`.
    #[error("the Host header is not a valid host")]
    InvalidHost,
    /// A target authority (absolute form, `:authority`) that is not `host[:port]`.
    #[error("the request target's authority is not a valid host")]
    InvalidAuthority,
    /// HTTP/2: `:authority` with the deprecated userinfo (RFC 9113 §8.3.1).
    #[error(":authority must not carry userinfo")]
    AuthorityUserinfo,
    /// HTTP/2: a field value beginning or ending with SP or HTAB (RFC 9113 §8.2.1).
    #[error("a field value starts or ends with whitespace")]
    ValueWhitespace,
}

impl From<FieldError> for GatewayError {
    #[cold]
    fn from(e: FieldError) -> Self {
        GatewayError::downstream(StatusCode::BAD_REQUEST, e.to_string())
    }
}

/// Checks `Host` and the target's authority (the caller answers `400` on an error), and makes
/// them agree.
///
/// At most one `Host`, and one on every HTTP/1.1 request; every `Host` and authority a valid
/// `host[:port]`. When the target carries an authority (HTTP/1 absolute form, HTTP/2
/// `:authority`), it wins: a `Host` naming anything else is replaced by it (RFC 9112 §3.2.2;
/// RFC 9113 §8.3.1 lets the authority win), so routing, plugins and the upstream all see the one
/// host the target names. An empty `Host` (RFC 9112 §3.2 allows it when the target has no
/// authority) passes and routes like no `Host`. Returns the `Host` field the request then has,
/// so that routing need not look it up again.
pub fn check_host<B>(req: &mut Request<B>) -> Result<Option<HeaderValue>, FieldError> {
    let mut all = req.headers().get_all(HOST).iter();
    let host = all.next();
    if all.next().is_some() {
        return Err(FieldError::DuplicateHost);
    }
    match host {
        None if req.version() == Version::HTTP_11 => return Err(FieldError::MissingHost),
        Some(h) if !h.is_empty() && !valid_host(h.as_bytes()) => {
            return Err(FieldError::InvalidHost)
        }
        _ => {}
    }
    let Some(authority) = req.uri().authority() else {
        return Ok(host.cloned());
    };
    if !valid_host(authority.as_str().as_bytes()) {
        return Err(FieldError::InvalidAuthority);
    }
    let differs = host.is_some_and(|h| {
        !h.as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    });
    if differs {
        // Valid host characters only (checked above): always a valid header value.
        let value =
            HeaderValue::from_str(authority.as_str()).map_err(|_| FieldError::InvalidAuthority)?;
        req.headers_mut().insert(HOST, value.clone());
        return Ok(Some(value));
    }
    Ok(host.cloned())
}

/// True when `headers` carry no `Content-Length`, or ones that all say the same valid length
/// (RFC 9110 §8.6; a list such as `5, 5` counts as one).
pub fn one_content_length(headers: &HeaderMap) -> bool {
    let mut seen = None;
    headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .all(|v| match crate::http1::content_length(v) {
            Some(n) => *seen.get_or_insert(n) == n,
            None => false,
        })
}

/// The HTTP/2 request rules h2 leaves to us: an error makes the request malformed, a stream
/// error (RST_STREAM `PROTOCOL_ERROR`) that must not reach an upstream.
pub fn check_h2(uri: &Uri, headers: &HeaderMap) -> Result<(), FieldError> {
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(FieldError::AuthorityUserinfo);
    }
    let padded = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    if headers.values().any(|v| {
        let b = v.as_bytes();
        padded(b.first()) || padded(b.last())
    }) {
        return Err(FieldError::ValueWhitespace);
    }
    Ok(())
}

/// `host[:port]`: a DNS-style name or IPv4 address (letters, digits, `-`, `_`, `.`, no empty
/// label) or a bracketed IPv6 address, and an optional port of up to 5 digits.
///
/// Stricter than RFC 3986's `reg-name`, which also allows sub-delimiters (`,`, `;`, `=`, ...) and
/// percent-encoding no real host name uses: names a upstream or a log reader could split or
/// decode differently are refused instead.
fn valid_host(b: &[u8]) -> bool {
    const BAD: u8 = 0;
    const NAME: u8 = 1;
    const DOT: u8 = 2;
    const COLON: u8 = 3;
    // What each byte is in a host name: one load per byte instead of a chain of compares.
    const HOST_CLASS: [u8; 256] = {
        let mut t = [BAD; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = match b {
                b'.' => DOT,
                b':' => COLON,
                b'-' | b'_' => NAME,
                _ if b.is_ascii_alphanumeric() => NAME,
                _ => BAD,
            };
            c += 1;
        }
        t
    };
    let (host, port) = if b.first() == Some(&b'[') {
        let Some(end) = b.iter().position(|&c| c == b']') else {
            return false;
        };
        let inner = &b[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return false;
        }
        (&b[..=end], &b[end + 1..])
    } else {
        // One pass (this runs for every request): the name ends at the first `:`; labels are
        // never empty, and one trailing dot (a fully qualified name) is fine.
        let mut split = b.len();
        let mut after_dot = true;
        for (i, &c) in b.iter().enumerate() {
            match HOST_CLASS[usize::from(c)] {
                NAME => after_dot = false,
                DOT if after_dot => return false,
                DOT => after_dot = true,
                COLON => {
                    split = i;
                    break;
                }
                _ => return false,
            }
        }
        let name = &b[..split];
        if name.is_empty() {
            return false;
        }
        (name, &b[split..])
    };
    debug_assert!(!host.is_empty());
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn accepts_host_names_addresses_and_ports() {
        for ok in [
            "v.test",
            "V.Test:8080",
            "localhost",
            "127.0.0.1",
            "[::1]",
            "[::1]:443",
            "[2001:db8::ffff:1.2.3.4]",
            "my_host.test.",
            "x:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "v.test evil",
            "a.test, b.test",
            "a.test,b.test",
            "v.test/../x",
            "user@evil.test",
            "v..test",
            ".v.test",
            "v.test..",
            ".",
            "v.test:80x",
            "v.test:123456",
            "v.test:80:80",
            "[::1",
            "[]",
            "[::1]x",
            "[v1.x]",
            "a%2eb",
            "é.test",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    /// `check_host` on a request for `uri` with these `Host` fields; the `Host` it leaves.
    fn check(
        version: Version,
        uri: &str,
        hosts: &[&'static str],
    ) -> Result<Option<HeaderValue>, FieldError> {
        let mut req = Request::builder()
            .version(version)
            .uri(uri)
            .body(())
            .expect("request");
        for v in hosts {
            req.headers_mut().append(HOST, HeaderValue::from_static(v));
        }
        check_host(&mut req)?;
        Ok(req.headers().get(HOST).cloned())
    }

    #[test]
    fn one_valid_host_and_the_authority_wins() {
        let (v10, v11, v2) = (Version::HTTP_10, Version::HTTP_11, Version::HTTP_2);
        let host = |v: &'static str| Ok(Some(HeaderValue::from_static(v)));
        assert_eq!(check(v11, "/x", &["v.test"]), host("v.test"));
        assert_eq!(check(v11, "/x", &[""]), host(""));
        assert_eq!(check(v10, "/x", &[]), Ok(None));
        assert_eq!(check(v2, "http://v.test/", &[]), Ok(None));
        assert_eq!(check(v11, "http://v.test/", &["V.TEST"]), host("V.TEST"));
        assert_eq!(check(v11, "http://v.test/", &["evil.test"]), host("v.test"));
        assert_eq!(check(v2, "http://v.test/", &["evil.test"]), host("v.test"));
        assert_eq!(check(v11, "/x", &[]), Err(FieldError::MissingHost));
        assert_eq!(
            check(v11, "http://v.test/", &[]),
            Err(FieldError::MissingHost)
        );
        assert_eq!(
            check(v10, "/x", &["v.test", "v.test"]),
            Err(FieldError::DuplicateHost)
        );
        assert_eq!(check(v11, "/x", &["a b"]), Err(FieldError::InvalidHost));
        assert_eq!(
            check(v2, "http://u@v.test/", &[]),
            Err(FieldError::InvalidAuthority)
        );
    }

    #[test]
    fn h2_values_without_surrounding_whitespace() {
        let uri: Uri = "http://v.test/".parse().expect("uri");
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("a b"));
        h.insert("x-empty", HeaderValue::from_static(""));
        assert_eq!(check_h2(&uri, &h), Ok(()));
        for bad in [" a", "a ", "\ta", "a\t"] {
            let mut h = h.clone();
            h.insert("x-b", HeaderValue::from_static(bad));
            assert_eq!(
                check_h2(&uri, &h),
                Err(FieldError::ValueWhitespace),
                "{bad:?}"
            );
        }
        let userinfo: Uri = "http://u:p@v.test/".parse().expect("uri");
        assert_eq!(
            check_h2(&userinfo, &HeaderMap::new()),
            Err(FieldError::AuthorityUserinfo)
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let alphabet: &[u8] = b"[]:.-_@/ ,%a0\xff";
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let len = rng.usize(0..12);
            let b: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let _ = valid_host(&b);
        }
    }
}
