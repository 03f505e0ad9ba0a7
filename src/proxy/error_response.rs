//! The one place where errors become HTTP: RFC 9457 problem+json bodies.
//!
//! Details never include upstream addresses or internal error text.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::error::GatewayError;

/// The problem document for a status and detail.
pub fn problem_json(status: StatusCode, detail: &str, request_id: Option<&HeaderValue>) -> Bytes {
    let mut doc = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        doc["request_id"] = id.into();
    }
    Bytes::from(doc.to_string())
}

/// A problem+json response for `err`.
pub fn to_response(err: &GatewayError, request_id: Option<&HeaderValue>) -> Response<ResponseBody> {
    let body = problem_json(err.status, &err.detail, request_id);
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = err.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    for (name, value) in &err.headers {
        h.append(name.clone(), value.clone());
    }
    resp
}

/// The response for `err` to a request: a gRPC trailers-only answer when the request is gRPC
/// (gRPC clients read `grpc-status`, never an HTTP body), problem+json otherwise.
pub fn for_request(
    err: &GatewayError,
    request_id: Option<&HeaderValue>,
    grpc: bool,
) -> Response<ResponseBody> {
    if !grpc {
        return to_response(err, request_id);
    }
    let mut resp = Response::new(ResponseBody::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(grpc_status(err.status)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&err.detail)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// True for a gRPC request (`content-type: application/grpc` or `application/grpc+…`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC code for an HTTP status, as gRPC's HTTP-to-gRPC status mapping defines it.
fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// `grpc-message` is percent-encoded: printable ASCII except `%` passes as is.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A complete HTTP/1.1 response, as raw bytes, for refusals made below hyper (bad heads, timeouts).
/// It always closes the connection.
pub fn raw_http1(status: StatusCode, detail: &str) -> Vec<u8> {
    // The refused request never got an id; give the refusal one so it can be found in logs.
    let id = super::forward::generate_id();
    let body = problem_json(status, detail, Some(&id));
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        id.to_str().unwrap_or("")
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_body_has_rfc_9457_members() {
        let b = problem_json(
            StatusCode::BAD_GATEWAY,
            "upstream refused",
            Some(&HeaderValue::from_static("abc")),
        );
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["status"], 502);
        assert_eq!(v["title"], "Bad Gateway");
        assert_eq!(v["detail"], "upstream refused");
        assert_eq!(v["request_id"], "abc");
    }

    #[test]
    fn raw_response_closes_and_frames_its_body() {
        let raw = String::from_utf8(raw_http1(StatusCode::REQUEST_TIMEOUT, "slow")).expect("utf8");
        assert!(raw.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert!(raw.contains("connection: close\r\n"));
        assert!(raw.contains("x-request-id: "), "{raw}");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head");
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
