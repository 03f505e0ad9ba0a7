//! Gateway errors as responses with a [`ResponseBody`]: the rendering itself (problem+json, gRPC
//! trailers-only, raw HTTP/1 refusals) lives with the gateway error in [`crate::error`].

use http::{header, HeaderValue, Response, StatusCode};

use super::ResponseBody;
use crate::error::{self, GatewayError};

pub use crate::error::problem_json;

/// A problem+json response for `err`.
pub fn to_response(err: &GatewayError, request_id: Option<&HeaderValue>) -> Response<ResponseBody> {
    error::to_response(err, request_id).map(ResponseBody::full)
}

/// The response for `err` to a request: a gRPC trailers-only answer when the request is gRPC
/// (gRPC clients read `grpc-status`, never an HTTP body), problem+json otherwise.
pub fn for_request(
    err: &GatewayError,
    request_id: Option<&HeaderValue>,
    grpc: bool,
) -> Response<ResponseBody> {
    error::for_request(err, request_id, grpc).map(ResponseBody::full)
}

/// True for a gRPC request (`content-type: application/grpc` or `application/grpc+…`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A complete HTTP/1.1 response, as raw bytes, for refusals made below hyper (bad heads, timeouts),
/// with a fresh request id. It always closes the connection.
pub fn raw_http1(status: StatusCode, detail: &str) -> Vec<u8> {
    // The refused request never got an id; give the refusal one so it can be found in logs.
    error::raw_http1(status, detail, &super::forward::generate_id())
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
