//! Config of the `compression` plugin: response compression negotiated from `Accept-Encoding`,
//! and optional decompression of uploads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::ByteSize;

/// A content coding the gateway can produce and decode (RFC 9110 §8.4.1).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ContentCoding {
    /// Brotli (RFC 7932).
    Br,
    /// Zstandard (RFC 8878, as a content coding RFC 9659).
    Zstd,
    /// gzip (RFC 1952).
    Gzip,
}

impl ContentCoding {
    /// The token used in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            ContentCoding::Br => "br",
            ContentCoding::Zstd => "zstd",
            ContentCoding::Gzip => "gzip",
        }
    }
}

/// Compress responses for clients that accept it; optionally decompress uploads.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    /// The codings offered, in the server's order of preference: among those the client accepts
    /// with the same q-value, the first listed wins.
    #[serde(default = "default_encodings")]
    pub encodings: Vec<ContentCoding>,
    /// Responses whose `Content-Length` is below this are sent as they are (a response of
    /// unknown length is compressed).
    #[serde(default = "default_min_size")]
    pub min_size: ByteSize,
    /// Media types compressed: `type/subtype`, `type/*`, `type/*+suffix` or `*/*`, matched without
    /// the parameters (`; charset=utf-8`) and case-insensitively.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// Compress `text/event-stream` too (flushed per event). Off by default: some clients and
    /// proxies hold back compressed event streams.
    #[serde(default)]
    pub event_stream: bool,
    /// Compression levels per coding.
    #[serde(default)]
    pub level: CompressionLevels,
    /// Decompress uploads (`Content-Encoding: gzip|br|zstd`); absent: request bodies pass as
    /// they are.
    #[serde(default)]
    pub request: Option<RequestDecompression>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            encodings: default_encodings(),
            min_size: default_min_size(),
            content_types: default_content_types(),
            event_stream: false,
            level: CompressionLevels::default(),
            request: None,
        }
    }
}

/// Compression level per coding; the defaults suit streaming (fast, small per-stream memory).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CompressionLevels {
    /// gzip level, 1 (fastest) to 9 (smallest).
    #[serde(default = "default_gzip_level")]
    pub gzip: u32,
    /// Brotli quality, 0 (fastest) to 11 (smallest).
    #[serde(default = "default_br_level")]
    pub br: u32,
    /// Zstandard level, 1 (fastest) to 19 (smallest).
    #[serde(default = "default_zstd_level")]
    pub zstd: i32,
}

impl Default for CompressionLevels {
    fn default() -> Self {
        CompressionLevels {
            gzip: default_gzip_level(),
            br: default_br_level(),
            zstd: default_zstd_level(),
        }
    }
}

/// Decompression of request bodies.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestDecompression {
    /// Decompress uploads whose `Content-Encoding` is `gzip`, `br` or `zstd`.
    #[serde(default = "default_true")]
    pub decompress: bool,
    /// Largest decompressed body; past it the request is refused with `413`.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
}

/// The accepted range of each level, `(coding, least, most)`.
pub const LEVELS: [(ContentCoding, i32, i32); 3] = [
    (ContentCoding::Gzip, 1, 9),
    (ContentCoding::Br, 0, 11),
    (ContentCoding::Zstd, 1, 19),
];

fn default_encodings() -> Vec<ContentCoding> {
    vec![ContentCoding::Br, ContentCoding::Zstd, ContentCoding::Gzip]
}

fn default_min_size() -> ByteSize {
    ByteSize(1024)
}

/// The media types compressed by default: text, JSON, JavaScript, XML, SVG.
pub fn default_content_types() -> Vec<String> {
    [
        "text/*",
        "application/json",
        "application/*+json",
        "application/javascript",
        "application/xml",
        "application/*+xml",
        "image/svg+xml",
    ]
    .map(String::from)
    .to_vec()
}

fn default_gzip_level() -> u32 {
    5
}

fn default_br_level() -> u32 {
    4
}

fn default_zstd_level() -> i32 {
    3
}

fn default_true() -> bool {
    true
}

fn default_max_size() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}
