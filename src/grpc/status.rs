//! gRPC status codes as HTTP: the `google.rpc.Code` table, `grpc-message` decoding, and
//! `grpc-status-details-bin` (a `google.rpc.Status`) decoded into JSON for problem bodies.

use base64::Engine as _;
use http::StatusCode;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

/// The HTTP status for a gRPC status code (google/rpc/code.proto's mapping, as grpc-gateway
/// and Envoy's transcoder use it).
pub fn http_status(code: u32) -> StatusCode {
    let s = match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500, // 2 UNKNOWN, 13 INTERNAL, 15 DATA_LOSS, and codes gRPC does not define
    };
    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The code's name (`NOT_FOUND`).
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// The base64 of `-bin` metadata: senders may pad or not (the gRPC over HTTP/2 spec).
pub const BIN_HEADER: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A status read off a response's headers or trailers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GrpcStatus {
    /// `grpc-status` (2, UNKNOWN, when it is missing or not a number).
    pub code: u32,
    /// `grpc-message`, percent-decoded.
    pub message: String,
    /// `grpc-status-details-bin`, base64-decoded.
    pub details: Option<Vec<u8>>,
}

impl GrpcStatus {
    /// The status in `h`, if `h` carries `grpc-status`.
    pub fn from_headers(h: &http::HeaderMap) -> Option<GrpcStatus> {
        let code = h.get("grpc-status")?;
        let code = code
            .to_str()
            .ok()
            .and_then(|c| c.trim().parse::<u32>().ok())
            .unwrap_or(2);
        let message = h
            .get("grpc-message")
            .map(|m| {
                percent_encoding::percent_decode(m.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let details = h
            .get("grpc-status-details-bin")
            .and_then(|d| BIN_HEADER.decode(d.as_bytes().trim_ascii()).ok());
        Some(GrpcStatus {
            code,
            message,
            details,
        })
    }

    /// The problem+json document for this status: RFC 9457's members, then `grpc_status`,
    /// `grpc_code` and the decoded `details` (each with its `@type`; a detail whose type the
    /// descriptors do not know keeps its bytes, base64).
    pub fn problem(
        &self,
        pool: &DescriptorPool,
        request_id: Option<&http::HeaderValue>,
    ) -> serde_json::Value {
        let status = http_status(self.code);
        let mut doc = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.message,
            "grpc_status": self.code,
            "grpc_code": code_name(self.code),
        });
        if let Some(d) = &self.details {
            doc["details"] = serde_json::Value::Array(details_json(pool, d));
        }
        if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
            doc["request_id"] = id.into();
        }
        doc
    }
}

/// `google.rpc.Status`, enough of it to read the details.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// The details of an encoded `google.rpc.Status`, as JSON (proto3 mapping of `Any`).
pub fn details_json(pool: &DescriptorPool, bin: &[u8]) -> Vec<serde_json::Value> {
    let Ok(status) = <RpcStatus as prost::Message>::decode(bin) else {
        return Vec::new();
    };
    status
        .details
        .iter()
        .map(|any| {
            let name = any.type_url.rsplit('/').next().unwrap_or_default();
            let known = pool
                .get_message_by_name(name)
                .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
                .and_then(|msg| {
                    msg.serialize_with_options(
                        serde_json::value::Serializer,
                        &SerializeOptions::new(),
                    )
                    .ok()
                });
            match known {
                Some(serde_json::Value::Object(mut m)) => {
                    m.insert("@type".into(), any.type_url.clone().into());
                    serde_json::Value::Object(m)
                }
                // A well-known type printed as a JSON value of its own.
                Some(v) => serde_json::json!({ "@type": any.type_url, "value": v }),
                None => serde_json::json!({
                    "@type": any.type_url,
                    "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_table() {
        let table = [
            (0, 200),
            (1, 499),
            (2, 500),
            (3, 400),
            (4, 504),
            (5, 404),
            (6, 409),
            (7, 403),
            (8, 429),
            (9, 400),
            (10, 409),
            (11, 400),
            (12, 501),
            (13, 500),
            (14, 503),
            (15, 500),
            (16, 401),
            (99, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "code {code}");
        }
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(99), "UNKNOWN");
    }

    #[test]
    fn status_from_headers_decodes_message_and_details() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", "5".parse().unwrap());
        h.insert("grpc-message", "no%20item%20%E2%9C%93".parse().unwrap());
        let st = RpcStatus {
            code: 5,
            message: "x".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/unknown.T".into(),
                value: vec![1, 2, 3],
            }],
        };
        let bin = prost::Message::encode_to_vec(&st);
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&bin);
        h.insert("grpc-status-details-bin", b64.parse().unwrap());
        let s = GrpcStatus::from_headers(&h).unwrap();
        assert_eq!(s.code, 5);
        assert_eq!(s.message, "no item ✓");
        let doc = s.problem(&DescriptorPool::new(), None);
        assert_eq!(doc["status"], 404);
        assert_eq!(doc["grpc_code"], "NOT_FOUND");
        assert_eq!(doc["details"][0]["@type"], "type.googleapis.com/unknown.T");
        assert_eq!(doc["details"][0]["value"], "AQID");
        h.insert("grpc-status", "junk".parse().unwrap());
        assert_eq!(GrpcStatus::from_headers(&h).unwrap().code, 2);
    }
}
