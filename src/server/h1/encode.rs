//! Response heads and body framing, written into the connection's reused output buffer.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, StatusCode};

use crate::http1::RawFields;

/// How the response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    /// No body is sent (HEAD, 1xx, 204, 304): whatever the body holds is dropped.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked; `trailers` when the client accepts them (`TE: trailers`).
    Chunked { trailers: bool },
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    Close,
}

/// Fields written beside the response's map, which holds none of them: an upstream's fields as
/// lines before the map's, the request id after them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Beside<'a> {
    pub raw: Option<&'a RawFields>,
    pub request_id: Option<&'a [u8]>,
}

/// What the request said that shapes the response head.
#[derive(Clone, Copy, Debug)]
pub struct ForRequest {
    /// A `HEAD` request.
    pub head: bool,
    /// HTTP/1.0.
    pub http10: bool,
    /// The client accepts chunked trailers.
    pub trailers: bool,
}

/// Writes the status line and header fields; returns the body framing and whether the
/// connection stays open after this response. `keep_alive` is what the request and the
/// connection allow; a `Connection: close` from the response turns it off. `exact` is the
/// body's exact length when known. With `beside.raw` the map holds only the gateway's own
/// fields.
pub fn head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    beside: Beside<'_>,
    exact: Option<u64>,
    req: ForRequest,
    mut keep_alive: bool,
) -> (Out, bool) {
    let raw = beside.raw;
    let code = status.as_u16();
    let bodyless = (100..200).contains(&code) || code == 204 || code == 304;
    let declared = match raw {
        Some(r) => r.content_length,
        None => headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.trim().parse::<u64>().ok()),
    };
    if headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"close"))
    {
        keep_alive = false;
    }
    let framing = if bodyless || req.head {
        Out::None
    } else if let Some(n) = declared.or(exact) {
        Out::Length(n)
    } else if !req.http10 {
        Out::Chunked {
            trailers: req.trailers,
        }
    } else {
        keep_alive = false;
        Out::Close
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    let mut has_connection = false;
    if let Some(r) = raw {
        if r.content_length.is_none() || !(code == 204 || (100..200).contains(&code)) {
            out.extend_from_slice(&r.lines);
        } else {
            // A 204 frames no body: its `Content-Length` line goes (the map path's rule).
            for line in r.lines.split_inclusive(|&b| b == b'\n') {
                if !line
                    .get(..15)
                    .is_some_and(|n| n.eq_ignore_ascii_case(b"content-length:"))
                {
                    out.extend_from_slice(line);
                }
            }
        }
        has_date = r.has_date;
    }
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && (code == 204 || (100..200).contains(&code)))
        {
            // The framing is the connection's; a 1xx or 204 has no body to frame.
            continue;
        }
        if name == header::CONTENT_LENGTH && declared.is_none() {
            // Unparseable: replaced by the real framing below.
            continue;
        }
        if name == header::DATE {
            has_date = true;
        } else if name == header::CONNECTION {
            has_connection = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(id) = beside.request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Out::Length(n) if declared.is_none() => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Out::None if req.head && declared.is_none() && !bodyless => {
            if let Some(n) = exact.filter(|n| *n > 0) {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        Out::Chunked { .. } => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        DATE.with(|d| out.extend_from_slice(d.borrow_mut().now()));
        out.extend_from_slice(b"\r\n");
    }
    if code == 101 {
        // The upgrade's own `Connection: upgrade` stays; the connection is no longer HTTP.
        keep_alive = false;
    } else if !keep_alive {
        if !has_connection {
            out.extend_from_slice(b"connection: close\r\n");
        }
    } else if req.http10 && !has_connection {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

pub use crate::http1::{chunk_size, has_token, last_chunk};

thread_local! {
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { secs: 0, text: [0; 29] }) };
}

/// The `Date` value, formatted once a second per thread.
struct CachedDate {
    secs: u64,
    text: [u8; 29],
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        if secs != self.secs {
            self.secs = secs;
            let s = httpdate::fmt_http_date(now);
            let n = s.len().min(29);
            self.text[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(
        status: u16,
        headers: &[(&str, &str)],
        exact: Option<u64>,
        req: ForRequest,
    ) -> (String, Out, bool) {
        let map = map_of(headers);
        let mut out = Vec::new();
        let status = StatusCode::from_u16(status).expect("status");
        let (f, keep) = head(&mut out, status, &map, Beside::default(), exact, req, true);
        (String::from_utf8(out).expect("utf8"), f, keep)
    }

    fn map_of(fields: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in fields {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    /// The same head written from lines (an upstream's fields, as the native client gives
    /// them), with the request id `id` beside them.
    fn text_raw(
        status: u16,
        headers: &[(&str, &str)],
        id: &str,
        exact: Option<u64>,
        req: ForRequest,
    ) -> (String, Out, bool) {
        let mut lines = Vec::new();
        for (k, v) in headers {
            lines.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        let raw = RawFields {
            lines: lines.into(),
            content_length: headers
                .iter()
                .find(|(k, _)| *k == "content-length")
                .and_then(|(_, v)| v.parse().ok()),
            has_date: headers.iter().any(|(k, _)| *k == "date"),
        };
        let beside = Beside {
            raw: Some(&raw),
            request_id: Some(id.as_bytes()),
        };
        let mut out = Vec::new();
        let status = StatusCode::from_u16(status).expect("status");
        let (f, keep) = head(
            &mut out,
            status,
            &HeaderMap::new(),
            beside,
            exact,
            req,
            true,
        );
        (String::from_utf8(out).expect("utf8"), f, keep)
    }

    /// An upstream's fields written as lines give the very head the map would.
    #[test]
    fn lines_write_what_the_map_writes() {
        let dated = "Sun, 06 Dec 2026 18:00:00 GMT";
        let head = ForRequest { head: true, ..GET };
        type Case<'a> = (u16, &'a [(&'a str, &'a str)], Option<u64>, ForRequest);
        let cases: &[Case<'_>] = &[
            (
                200,
                &[("server", "x"), ("content-length", "5")],
                Some(5),
                GET,
            ),
            (200, &[("server", "x"), ("date", dated)], None, GET),
            (204, &[("content-length", "9"), ("x-a", "1")], None, GET),
            (
                304,
                &[("content-length", "9"), ("etag", "\"1\"")],
                None,
                GET,
            ),
            (
                200,
                &[("set-cookie", "a=1"), ("set-cookie", "b=2")],
                Some(0),
                GET,
            ),
            (200, &[("content-type", "text/plain")], Some(7), head),
            (
                200,
                &[("x-a", "1")],
                None,
                ForRequest {
                    http10: true,
                    ..GET
                },
            ),
        ];
        for (status, fields, exact, req) in cases {
            let mut all = fields.to_vec();
            all.push(("x-request-id", "abc"));
            let by_map = text(*status, &all, *exact, *req);
            let by_lines = text_raw(*status, fields, "abc", *exact, *req);
            // Both heads made their own `Date` (if any) within the same second, or not.
            let strip = |t: &str| {
                t.lines()
                    .filter(|l| !l.starts_with("date: ") || l.ends_with(dated))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(strip(&by_map.0), strip(&by_lines.0), "{status} {fields:?}");
            assert_eq!((by_map.1, by_map.2), (by_lines.1, by_lines.2));
        }
    }

    const GET: ForRequest = ForRequest {
        head: false,
        http10: false,
        trailers: false,
    };

    #[test]
    fn frames_by_length_chunks_or_close() {
        let (t, f, keep) = text(200, &[("x-a", "1")], Some(5), GET);
        assert!(
            t.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "),
            "{t}"
        );
        assert!(t.ends_with("GMT\r\n\r\n"), "{t}");
        assert_eq!((f, keep), (Out::Length(5), true));
        let (t, f, _) = text(200, &[("transfer-encoding", "chunked")], None, GET);
        assert_eq!(t.matches("transfer-encoding").count(), 1, "{t}");
        assert_eq!(f, Out::Chunked { trailers: false });
        let old = ForRequest {
            http10: true,
            ..GET
        };
        let (t, f, keep) = text(200, &[], None, old);
        assert_eq!((f, keep), (Out::Close, false));
        assert!(t.contains("connection: close\r\n"));
        let (t, _, keep) = text(200, &[], Some(0), old);
        assert!(keep && t.contains("connection: keep-alive\r\n"), "{t}");
        let (_, f, _) = text(304, &[("content-length", "9")], None, GET);
        assert_eq!(f, Out::None);
        let (t, f, _) = text(204, &[("content-length", "9")], None, GET);
        assert!(!t.contains("content-length") && f == Out::None, "{t}");
        let (t, f, _) = text(200, &[], Some(7), ForRequest { head: true, ..GET });
        assert!(t.contains("content-length: 7\r\n") && f == Out::None, "{t}");
        let (_, _, keep) = text(200, &[("connection", "close")], Some(1), GET);
        assert!(!keep);
    }
}
