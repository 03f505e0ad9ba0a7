//! W3C Trace Context: continue the caller's trace (`traceparent`, `tracestate`) or start one, and
//! name the span each upstream attempt is sent under.
//!
//! Parsing and formatting are written here: the header is 55 fixed characters, and the
//! OpenTelemetry propagator API would need its `Context` machinery on every request for the same
//! result. Export of the finished spans is in `otlp`.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A request's place in a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The caller's span, when the request carried a valid `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// The gateway's span for this request.
    pub span_id: [u8; 8],
    /// Whether this request's spans are recorded and exported.
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// Continues the trace of a valid `traceparent` in `headers` (keeping its sampling decision),
    /// or starts a new one sampled with probability `ratio`.
    pub fn from_headers(headers: &HeaderMap, ratio: f64) -> TraceContext {
        match headers.get(&TRACEPARENT).and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_span_id: Some(parent),
                span_id: new_span_id(),
                sampled: flags & 1 == 1,
                tracestate: headers.get(&TRACESTATE).cloned(),
            },
            None => TraceContext {
                trace_id: new_trace_id(),
                parent_span_id: None,
                span_id: new_span_id(),
                sampled: ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio),
                tracestate: None,
            },
        }
    }

    /// The trace id in lowercase hex (the access log's `trace_id`).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` for a request sent under span `span_id` of this trace.
    pub fn traceparent(&self, span_id: &[u8; 8]) -> HeaderValue {
        let flags = if self.sampled { "01" } else { "00" };
        let s = format!("00-{}-{}-{flags}", hex(&self.trace_id), hex(span_id));
        // Only hex digits and dashes.
        HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Sets `traceparent` (and `tracestate`) on an upstream request sent under `span_id`.
    pub fn inject(&self, headers: &mut HeaderMap, span_id: &[u8; 8]) {
        headers.insert(TRACEPARENT.clone(), self.traceparent(span_id));
        match &self.tracestate {
            Some(ts) => {
                headers.insert(TRACESTATE.clone(), ts.clone());
            }
            None => {
                headers.remove(&TRACESTATE);
            }
        }
    }
}

/// A random span id (never all zero).
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// `version-traceid-parentid-flags`. Version `ff` and all-zero ids are invalid; a future version
/// may carry more fields after the four (W3C §3.2.4), which are ignored.
fn parse_traceparent(v: &HeaderValue) -> Option<([u8; 16], [u8; 8], u8)> {
    let s = v.to_str().ok()?.trim();
    let mut parts = s.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id: [u8; 16] = unhex(trace)?.try_into().ok()?;
    let parent: [u8; 8] = unhex(parent)?.try_into().ok()?;
    let flags: [u8; 1] = unhex(flags)?.try_into().ok()?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags[0]))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !is_lower_hex(s) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(tp: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT.clone(),
            HeaderValue::from_str(tp).expect("ascii"),
        );
        h.insert(TRACESTATE.clone(), HeaderValue::from_static("vendor=1"));
        h
    }

    #[test]
    fn continues_a_valid_parent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = TraceContext::from_headers(&headers(tp), 0.0);
        assert_eq!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            cx.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(cx.sampled, "the caller's sampled flag wins over the ratio");
        let child = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut out = HeaderMap::new();
        cx.inject(&mut out, &child);
        assert_eq!(
            out[&TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(out[&TRACESTATE], "vendor=1");
    }

    #[test]
    fn an_unsampled_parent_stays_unsampled() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceContext::from_headers(&headers(tp), 1.0).sampled);
    }

    #[test]
    fn invalid_parents_start_a_new_trace() {
        for tp in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let cx = TraceContext::from_headers(&headers(tp), 1.0);
            assert_eq!(cx.parent_span_id, None, "{tp}");
            assert_ne!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(cx.sampled);
            assert_eq!(
                cx.tracestate, None,
                "tracestate without a valid parent is dropped"
            );
        }
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(TraceContext::from_headers(&headers(future), 0.0)
            .parent_span_id
            .is_some());
        assert!(!TraceContext::from_headers(&HeaderMap::new(), 0.0).sampled);
    }
}
