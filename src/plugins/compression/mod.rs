//! `compression`: compress responses (`br`, `zstd`, `gzip`) for clients that accept it, and
//! optionally decompress uploads with a cap on their decompressed size.
//!
//! [`codec`] holds the streaming encoders and decoders, [`negotiate`] the `Accept-Encoding` and
//! media-type matching.

pub mod codec;
pub mod negotiate;
