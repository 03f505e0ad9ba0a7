//! `compression`: compress responses (`br`, `zstd`, `gzip`) for clients that accept it, and
//! optionally decompress uploads with a cap on their decompressed size.
//!
//! [`codec`] holds the streaming encoders and decoders, [`negotiate`] the `Accept-Encoding` and
//! media-type matching; this file decides per response ([`Settings::decide`]), rewrites the head
//! ([`compress_head`]) and runs the codecs as body filters.
//!
//! A route's own `compression` replaces the global one: every instance records its settings in
//! the request's `ext` in `request_filter` (the global first, then the route's over it), and in
//! the body phases only the instance whose settings are recorded acts.

pub mod codec;
pub mod negotiate;

use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::{CompressionConfig, CompressionLevels, ContentCoding};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::body::BodyFrame;
use crate::plugin::{
    BodyAction, BodyFilter, BuildEnv, Ctx, Flow, FrameSink, Phases, Plugin, PluginError,
    PluginFactory, RequestHead, ResponseHead,
};
use codec::{CodecError, Decoder, Encoder};
use negotiate::{is_event_stream, MediaTypes, Negotiated};

/// The `compression` plugin: one scope's [`Settings`].
#[derive(Debug)]
pub struct Compression {
    settings: Arc<Settings>,
}

impl PluginFactory for Compression {
    const KIND: &'static str = "compression";
    // After the limits (a refused request costs no codec), before the transforms (500s): uploads
    // are decoded before they see the body, responses encoded after they changed it.
    const ORDER: u16 = 450;
    type Config = CompressionConfig;

    fn build(cfg: &CompressionConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(Compression {
            settings: Arc::new(Settings::new(cfg)?),
        }))
    }
}

impl Compression {
    /// What the request phase recorded, when these settings are the ones that apply.
    fn mine<'a>(&self, cx: &'a Ctx) -> Option<&'a Remembered> {
        cx.ext
            .get::<Remembered>()
            .filter(|r| Arc::ptr_eq(&r.owner, &self.settings))
    }
}

#[async_trait]
impl Plugin for Compression {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases {
            request_body: self.settings.request_max.is_some(),
            response_body: true,
            ..Phases::REQUEST
        }
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let negotiated = negotiate::negotiate(
            req.headers.get_all(header::ACCEPT_ENCODING),
            &self.settings.encodings,
        );
        cx.ext.insert(Remembered {
            owner: self.settings.clone(),
            negotiated,
            head: is_head(&req.method),
        });
        Ok(Flow::Continue)
    }

    fn request_body(&self, req: &mut RequestHead, cx: &mut Ctx) -> BodyAction {
        let Some(max) = self.settings.request_max else {
            return BodyAction::Pass;
        };
        if self.mine(cx).is_none() {
            return BodyAction::Pass;
        }
        let Some(coding) = upload_coding(&req.headers) else {
            return BodyAction::Pass;
        };
        match Decoder::new(coding, max) {
            Ok(decoder) => {
                // The upstream gets the plain body (the chain removes `Content-Length`).
                req.headers.remove(header::CONTENT_ENCODING);
                BodyAction::Stream(Box::new(Decompress { decoder }))
            }
            Err(e) => {
                // Only the zstd library's context allocation can fail here: leave the body as
                // it came rather than refuse a request the upstream may accept.
                tracing::warn!(error = %e, "could not start an upload decoder");
                BodyAction::Pass
            }
        }
    }

    fn response_body(&self, resp: &mut ResponseHead, cx: &mut Ctx) -> BodyAction {
        let Some(r) = self.mine(cx) else {
            return BodyAction::Pass;
        };
        let decision = self
            .settings
            .decide(&r.negotiated, r.head, resp.status, &resp.headers);
        let coding = match decision {
            Decision::Skip => return BodyAction::Pass,
            Decision::VaryOnly => {
                add_vary(&mut resp.headers);
                return BodyAction::Pass;
            }
            Decision::Compress(c) => c,
        };
        let size = content_length(&resp.headers);
        match Encoder::new(coding, &self.settings.levels, size) {
            Ok(encoder) => {
                compress_head(&mut resp.headers, coding);
                BodyAction::Stream(Box::new(Compress { encoder }))
            }
            Err(e) => {
                // The body goes out uncoded, which every client accepts but one that refused
                // identity; still correct for caches.
                tracing::warn!(error = %e, "could not start a response encoder");
                add_vary(&mut resp.headers);
                BodyAction::Pass
            }
        }
    }
}

/// Compresses a response body frame by frame, flushing each (see [`Encoder::compress`]).
struct Compress {
    encoder: Encoder,
}

impl BodyFilter for Compress {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        match frame.into_data() {
            Ok(data) => out.push_data(self.encoder.compress(&data).map_err(encode_failed)?),
            // Trailers pass as they are; the sink sends them after the coding's end.
            Err(frame) => out.push(frame),
        }
        Ok(())
    }

    fn end(&mut self, out: &mut FrameSink) -> Result<(), PluginError> {
        out.push_data(self.encoder.finish().map_err(encode_failed)?);
        Ok(())
    }
}

fn encode_failed(e: CodecError) -> PluginError {
    tracing::warn!(error = %e, "response compression failed");
    PluginError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "compressing the response failed",
    )
}

/// Decompresses a request body within the cap, one bounded step at a time: a frame is held and
/// its output goes out step by step as the upstream reads ([`BodyFilter::pending`]), so a
/// small frame that expands a thousandfold never sits in memory whole.
struct Decompress {
    decoder: Decoder,
}

impl BodyFilter for Decompress {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        match frame.into_data() {
            Ok(data) => {
                if let Some(step) = self.decoder.decompress(data).map_err(refused)? {
                    out.push_data(step);
                }
            }
            Err(frame) => out.push(frame),
        }
        Ok(())
    }

    fn pending(&mut self, out: &mut FrameSink) -> Result<bool, PluginError> {
        match self.decoder.more().map_err(refused)? {
            Some(step) => {
                out.push_data(step);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn end(&mut self, _out: &mut FrameSink) -> Result<(), PluginError> {
        // Every step was taken before the body's end reached the filter.
        self.decoder.finish().map_err(refused)
    }
}

/// The client's answer for an upload that does not decode: `413` past the cap, else `400`.
fn refused(e: CodecError) -> PluginError {
    match e {
        CodecError::TooLarge { max } => PluginError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the decompressed request body is larger than {max} bytes"),
        )
        .with_reason("decompressed_too_large"),
        CodecError::Corrupt { coding, .. } => PluginError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid {coding} data"),
        )
        .with_reason("undecodable_body"),
        CodecError::Encode { .. } => PluginError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "decompressing the request body failed",
        ),
    }
}

/// One scope's settings, built once per config generation.
#[derive(Debug)]
pub struct Settings {
    encodings: Vec<ContentCoding>,
    min_size: u64,
    types: MediaTypes,
    event_stream: bool,
    levels: CompressionLevels,
    /// The cap on decompressed uploads; `None`: uploads pass as they are.
    request_max: Option<u64>,
}

/// What the request phase remembers for the body phases.
#[derive(Clone, Debug)]
struct Remembered {
    /// The settings of the scope that applies: the route's when it has `compression`, else the
    /// global ones (the route's `request_filter` runs after the global one and replaces this).
    owner: Arc<Settings>,
    negotiated: Negotiated,
    head: bool,
}

/// What to do with one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave it alone: it has no body, is already encoded, may not be transformed, or is not of
    /// a type (or size) that is compressed.
    Skip,
    /// It would be compressed for another client: add `Vary: Accept-Encoding` only.
    VaryOnly,
    /// Compress it with this coding.
    Compress(ContentCoding),
}

impl Settings {
    /// Builds the settings; repeats the checks the plugin depends on (the config's validation
    /// reports them with field paths first).
    pub fn new(cfg: &CompressionConfig) -> Result<Settings, String> {
        if cfg.encodings.is_empty() {
            return Err("list at least one encoding".into());
        }
        for (coding, least, most) in frontdesk_config::COMPRESSION_LEVELS {
            let level = match coding {
                ContentCoding::Gzip => i64::from(cfg.level.gzip),
                ContentCoding::Br => i64::from(cfg.level.br),
                ContentCoding::Zstd => i64::from(cfg.level.zstd),
            };
            if !(i64::from(least)..=i64::from(most)).contains(&level) {
                return Err(format!(
                    "level.{}: must be between {least} and {most}",
                    coding.token()
                ));
            }
        }
        let request_max = match cfg.request {
            Some(r) if r.decompress => {
                if r.max_size.0 == 0 {
                    return Err("request.max_size: must be greater than 0".into());
                }
                Some(r.max_size.0)
            }
            _ => None,
        };
        Ok(Settings {
            encodings: cfg.encodings.clone(),
            min_size: cfg.min_size.0,
            types: MediaTypes::parse(&cfg.content_types)?,
            event_stream: cfg.event_stream,
            levels: cfg.level,
            request_max,
        })
    }

    /// Decides for a response to a request that negotiated `n` (`head`: it was a `HEAD`).
    ///
    /// Never compressed: responses without a body (`HEAD`, 1xx, `204`, `304`, `Content-Length:
    /// 0`), `206` (its range is of the uncoded representation), responses with a
    /// `Content-Encoding` already, `Cache-Control: no-transform`, `text/event-stream` unless
    /// `event_stream` is on, types outside the list, and a known length under `min_size` (unless
    /// the client refuses `identity`).
    pub fn decide(
        &self,
        n: &Negotiated,
        head: bool,
        status: StatusCode,
        h: &HeaderMap,
    ) -> Decision {
        if head
            || status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
            )
            || h.contains_key(header::CONTENT_RANGE)
        {
            return Decision::Skip;
        }
        let encoded = h.get_all(header::CONTENT_ENCODING).iter().any(|v| {
            v.to_str().map_or(true, |s| {
                s.split(',')
                    .any(|c| !c.trim().eq_ignore_ascii_case("identity"))
            })
        });
        if encoded || has_directive(h, header::CACHE_CONTROL, "no-transform") {
            return Decision::Skip;
        }
        let Some(ct) = h.get(header::CONTENT_TYPE) else {
            return Decision::Skip;
        };
        let typed = if is_event_stream(ct) {
            self.event_stream
        } else {
            self.types.matches(ct)
        };
        if !typed {
            return Decision::Skip;
        }
        if let Some(len) = content_length(h) {
            if len == 0 || (len < self.min_size && !n.identity_refused) {
                return Decision::Skip;
            }
        }
        n.coding.map_or(Decision::VaryOnly, Decision::Compress)
    }
}

/// `Content-Length` as a number, when there is exactly one valid value.
fn content_length(h: &HeaderMap) -> Option<u64> {
    let mut values = h.get_all(header::CONTENT_LENGTH).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    v.to_str().ok()?.trim().parse().ok()
}

/// True when a comma-separated list field has `token` as an element (before any `=`).
fn has_directive(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|d| {
                d.split('=')
                    .next()
                    .is_some_and(|k| k.trim().eq_ignore_ascii_case(token))
            })
        })
    })
}

/// Adds `Vary: Accept-Encoding` unless `Vary` already names it or is `*`.
pub fn add_vary(h: &mut HeaderMap) {
    let covered = h.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|f| {
                let f = f.trim();
                f == "*" || f.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !covered {
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// Rewrites a response head for a body compressed with `coding`: `Content-Encoding`, `Vary`, a
/// weak `ETag` (the bytes differ from the uncoded representation's), no `Content-Length` (the new
/// length is not known yet) and no `Accept-Ranges` (ranges would be of the uncoded
/// representation, which this client no longer sees).
pub fn compress_head(h: &mut HeaderMap, coding: ContentCoding) {
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    add_vary(h);
    if let Some(etag) = h.get(header::ETAG) {
        if etag.as_bytes().starts_with(b"\"") {
            let mut weak = Vec::with_capacity(etag.len() + 2);
            weak.extend_from_slice(b"W/");
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                h.insert(header::ETAG, v);
            }
        }
    }
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
}

/// The coding of an upload the settings decode: a single `gzip`, `x-gzip`, `br` or `zstd`.
/// Anything else (no field, `identity`, an unknown or stacked coding) is left to the upstream.
fn upload_coding(h: &HeaderMap) -> Option<ContentCoding> {
    let mut values = h.get_all(header::CONTENT_ENCODING).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let s = v.to_str().ok()?.trim();
    [
        ("gzip", ContentCoding::Gzip),
        ("x-gzip", ContentCoding::Gzip),
        ("br", ContentCoding::Br),
        ("zstd", ContentCoding::Zstd),
    ]
    .into_iter()
    .find(|(n, _)| s.eq_ignore_ascii_case(n))
    .map(|(_, c)| c)
}

fn is_head(m: &Method) -> bool {
    m == Method::HEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use frontdesk_config::ByteSize;

    fn settings(f: impl FnOnce(&mut CompressionConfig)) -> Settings {
        let mut cfg = CompressionConfig::default();
        f(&mut cfg);
        Settings::new(&cfg).expect("settings")
    }

    fn accepts(c: Option<ContentCoding>) -> Negotiated {
        Negotiated {
            coding: c,
            identity_refused: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    const JSON: (&str, &str) = ("content-type", "application/json");
    const GZIP: Option<ContentCoding> = Some(ContentCoding::Gzip);

    #[test]
    fn a_json_response_is_compressed_and_others_vary_only() {
        let s = settings(|_| {});
        let h = headers(&[JSON, ("content-length", "5000")]);
        assert_eq!(
            s.decide(&accepts(GZIP), false, StatusCode::OK, &h),
            Decision::Compress(ContentCoding::Gzip)
        );
        assert_eq!(
            s.decide(&accepts(None), false, StatusCode::OK, &h),
            Decision::VaryOnly
        );
        // Unknown length: compressed. Error statuses with bodies too.
        let h = headers(&[JSON]);
        assert_eq!(
            s.decide(&accepts(GZIP), false, StatusCode::NOT_FOUND, &h),
            Decision::Compress(ContentCoding::Gzip)
        );
    }

    #[test]
    fn the_never_cases_are_skipped() {
        let s = settings(|_| {});
        let n = accepts(GZIP);
        let ok = |pairs: &[(&str, &str)]| s.decide(&n, false, StatusCode::OK, &headers(pairs));
        assert_eq!(
            s.decide(&n, true, StatusCode::OK, &headers(&[JSON])),
            Decision::Skip
        );
        for status in [
            StatusCode::PARTIAL_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::NO_CONTENT,
            StatusCode::CONTINUE,
        ] {
            assert_eq!(
                s.decide(&n, false, status, &headers(&[JSON])),
                Decision::Skip
            );
        }
        assert_eq!(ok(&[JSON, ("content-encoding", "gzip")]), Decision::Skip);
        assert_eq!(ok(&[JSON, ("content-encoding", "custom")]), Decision::Skip);
        assert_eq!(
            ok(&[JSON, ("content-encoding", "identity")]),
            Decision::Compress(ContentCoding::Gzip),
            "identity is no encoding"
        );
        assert_eq!(
            ok(&[JSON, ("cache-control", "public, No-Transform")]),
            Decision::Skip
        );
        assert_eq!(
            ok(&[JSON, ("cache-control", "no-transformation, max-age=5")]),
            Decision::Compress(ContentCoding::Gzip)
        );
        assert_eq!(ok(&[("content-type", "text/event-stream")]), Decision::Skip);
        assert_eq!(ok(&[("content-type", "image/png")]), Decision::Skip);
        assert_eq!(ok(&[]), Decision::Skip, "no content type");
        assert_eq!(ok(&[JSON, ("content-length", "1023")]), Decision::Skip);
        assert_eq!(ok(&[JSON, ("content-length", "0")]), Decision::Skip);
        assert_eq!(
            ok(&[JSON, ("content-length", "1024")]),
            Decision::Compress(ContentCoding::Gzip)
        );
        assert_eq!(
            ok(&[JSON, ("content-range", "bytes 0-9/100")]),
            Decision::Skip
        );
    }

    #[test]
    fn event_streams_and_refused_identity_are_opt_ins() {
        let s = settings(|c| {
            c.event_stream = true;
            c.content_types = vec!["application/json".into()];
        });
        let n = accepts(GZIP);
        let h = headers(&[("content-type", "text/event-stream; charset=utf-8")]);
        assert_eq!(
            s.decide(&n, false, StatusCode::OK, &h),
            Decision::Compress(ContentCoding::Gzip)
        );
        let small = headers(&[JSON, ("content-length", "10")]);
        let refused = Negotiated {
            coding: GZIP,
            identity_refused: true,
        };
        assert_eq!(
            s.decide(&refused, false, StatusCode::OK, &small),
            Decision::Compress(ContentCoding::Gzip)
        );
        let s = settings(|c| c.min_size = ByteSize(0));
        assert_eq!(
            s.decide(
                &n,
                false,
                StatusCode::OK,
                &headers(&[JSON, ("content-length", "1")])
            ),
            Decision::Compress(ContentCoding::Gzip)
        );
    }

    #[test]
    fn the_head_gets_encoding_vary_a_weak_etag_and_no_length() {
        let mut h = headers(&[
            JSON,
            ("content-length", "5000"),
            ("etag", "\"abc\""),
            ("accept-ranges", "bytes"),
            ("vary", "Origin"),
        ]);
        compress_head(&mut h, ContentCoding::Br);
        assert_eq!(h[header::CONTENT_ENCODING], "br");
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert!(!h.contains_key(header::ACCEPT_RANGES));
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Origin", "accept-encoding"]);

        let mut h = headers(&[("etag", "W/\"weak\""), ("vary", "origin, Accept-Encoding")]);
        compress_head(&mut h, ContentCoding::Gzip);
        assert_eq!(h[header::ETAG], "W/\"weak\"");
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        let mut h = headers(&[("vary", "*")]);
        add_vary(&mut h);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
    }

    #[test]
    fn uploads_are_decoded_for_one_known_coding_only() {
        let coding = |pairs: &[(&str, &str)]| upload_coding(&headers(pairs));
        assert_eq!(coding(&[("content-encoding", "gzip")]), GZIP);
        assert_eq!(coding(&[("content-encoding", " X-GZIP ")]), GZIP);
        assert_eq!(
            coding(&[("content-encoding", "br")]),
            Some(ContentCoding::Br)
        );
        assert_eq!(
            coding(&[("content-encoding", "zstd")]),
            Some(ContentCoding::Zstd)
        );
        assert_eq!(coding(&[]), None);
        assert_eq!(coding(&[("content-encoding", "identity")]), None);
        assert_eq!(coding(&[("content-encoding", "deflate")]), None);
        assert_eq!(coding(&[("content-encoding", "gzip, br")]), None);
        assert_eq!(
            coding(&[("content-encoding", "gzip"), ("content-encoding", "gzip")]),
            None
        );
    }

    #[test]
    fn bad_settings_are_refused_at_build() {
        let bad = |f: fn(&mut CompressionConfig)| {
            let mut cfg = CompressionConfig::default();
            f(&mut cfg);
            Settings::new(&cfg).expect_err("refused")
        };
        assert!(bad(|c| c.encodings.clear()).contains("encoding"));
        assert!(bad(|c| c.level.br = 12).contains("level.br"));
        assert!(bad(|c| c.content_types = vec!["nope".into()]).contains("nope"));
        assert!(bad(|c| {
            c.request = Some(frontdesk_config::RequestDecompression {
                decompress: true,
                max_size: ByteSize(0),
            })
        })
        .contains("max_size"));
    }
}
