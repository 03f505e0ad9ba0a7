//! `grpc_web`: gRPC-Web clients (browsers, <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md>)
//! to a gRPC upstream over HTTP/2.
//!
//! A request with `content-type: application/grpc-web[+sub]` (binary) or
//! `application/grpc-web-text[+sub]` (base64) goes upstream as `application/grpc[+sub]` with
//! `te: trailers`; a text body is base64-decoded as it streams (a quantum split between chunks is
//! carried over; padding may end any chunk). Every other request passes untouched, so one route
//! serves gRPC and gRPC-Web together.
//!
//! The answer comes back in the form the client used: `application/grpc-web[-text][+sub]`, its
//! data frames passed on as they arrive (base64-encoded piece by piece in text mode, each piece
//! padded), and the upstream's trailers as the final gRPC-Web trailer frame (flag `0x80`, then
//! `name: value\r\n` lines). A trailers-only answer (`grpc-status` in the head, no body) stays
//! headers-only. The gateway's own errors reach a gRPC-Web client the way they reach a gRPC one
//! (`grpc-status` in the head, see `crate::error::for_request`): this plugin gives them the
//! gRPC-Web content type.
//!
//! Order 90: before every other kind on the request (they see the gRPC request the upstream
//! gets), and so the outermost on the response: it sees the final head, with `cors`'s
//! `Access-Control-Allow-Origin` (to which it adds the gRPC status headers the page must read)
//! and every plugin's refusal.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use frontdesk_config::GrpcWebConfig;
use http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, CONTENT_LENGTH, CONTENT_TYPE, TE,
    TRAILER,
};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::body::BodyFrame;
use crate::plugin::{
    BodyAction, BodyFilter, BuildEnv, Ctx, Flow, FrameSink, Phases, Plugin, PluginError,
    PluginFactory, RequestHead, ResponseHead,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The flag byte of the gRPC-Web trailer frame.
const TRAILER_FLAG: u8 = 0x80;

/// What a browser page must read to learn a call's outcome.
const EXPOSED: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// The `grpc_web` plugin.
#[derive(Debug)]
pub struct GrpcWeb {
    text: bool,
    expose_headers: bool,
}

/// A gRPC-Web call, as the request phase saw it (kept in `Ctx::ext`).
#[derive(Clone, Debug)]
struct Call {
    /// The client sent `application/grpc-web-text`: base64 both ways.
    text: bool,
    /// The client's subtype with its `+` (`+proto`, `+json`), or empty.
    subtype: String,
}

/// A gRPC-Web content type: text or binary, and the subtype (`+proto`, with its `+`), or `None`
/// for any other content type. Parameters (`; charset=...`) are dropped; names are compared
/// without regard to case.
fn parse_content_type(v: &HeaderValue) -> Option<(bool, String)> {
    let media = crate::plugin::media_type(v)?;
    let rest = media.strip_prefix("application/grpc-web")?;
    let (text, sub) = match rest.strip_prefix("-text") {
        Some(sub) => (true, sub),
        None => (false, rest),
    };
    if !(sub.is_empty() || (sub.len() > 1 && sub.starts_with('+'))) {
        return None;
    }
    Some((text, sub.to_string()))
}

/// The gRPC-Web content type of an upstream answer: its gRPC subtype (`application/grpc+json`
/// gives `+json`) or else the client's, in the client's mode. `None` when the answer is not gRPC.
fn web_content_type(upstream: &HeaderValue, call: &Call) -> Option<HeaderValue> {
    let media = crate::plugin::media_type(upstream)?;
    let sub = media.strip_prefix("application/grpc")?;
    if !(sub.is_empty() || sub.starts_with('+')) {
        // `application/grpc-web` already, or something else.
        return None;
    }
    let sub = if sub.is_empty() { &call.subtype } else { sub };
    let mode = if call.text { "-text" } else { "" };
    HeaderValue::from_str(&format!("application/grpc-web{mode}{sub}")).ok()
}

/// Appends the gRPC status headers to `Access-Control-Expose-Headers` (those not listed yet).
fn expose_status_headers(h: &mut HeaderMap) {
    let current: Vec<String> = h
        .get_all(ACCESS_CONTROL_EXPOSE_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let mut list = current.clone();
    for name in EXPOSED {
        if !current.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }
    if list.len() == current.len() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
        h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

/// The gRPC-Web trailer frame for `trailers`: `0x80`, the block's length (4 bytes, big-endian),
/// then one `name: value\r\n` line per field (names are lower-case in `http`).
pub(crate) fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let block: usize = trailers
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum();
    let mut out = BytesMut::with_capacity(5 + block);
    out.put_u8(TRAILER_FLAG);
    out.put_u32(u32::try_from(block).unwrap_or(u32::MAX));
    for (name, value) in trailers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

fn bad_base64() -> PluginError {
    PluginError::new(
        StatusCode::BAD_REQUEST,
        "the gRPC-Web text body is not valid base64",
    )
}

/// Decodes a base64 body as it streams: chunks may split a 4-character quantum anywhere (the
/// rest is carried to the next chunk), and a padded quantum may end any chunk, with more data
/// after it (a client that encodes each message on its own).
#[derive(Debug, Default)]
pub(crate) struct Base64Decoder {
    /// The start of a quantum (at most 3 characters) from the previous chunk.
    carry: Vec<u8>,
}

impl Base64Decoder {
    /// Decodes what `chunk` completes; `Err` for anything that is not base64.
    pub(crate) fn decode(&mut self, chunk: &[u8]) -> Result<Bytes, PluginError> {
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(chunk);
        let whole = input.len() / 4 * 4;
        self.carry = input[whole..].to_vec();
        let complete = &input[..whole];
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // A padded quantum ends a run the engine decodes at once; decode run by run.
        let mut start = 0;
        for q in (0..whole).step_by(4) {
            if complete[q + 3] == b'=' {
                B64.decode_vec(&complete[start..q + 4], &mut out)
                    .map_err(|_| bad_base64())?;
                start = q + 4;
            }
        }
        if start < whole {
            B64.decode_vec(&complete[start..], &mut out)
                .map_err(|_| bad_base64())?;
        }
        Ok(Bytes::from(out))
    }

    /// The body ended: a quantum left incomplete is an error.
    pub(crate) fn finish(&self) -> Result<(), PluginError> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err(bad_base64())
        }
    }
}

/// The request body of a text call, decoded as it streams.
struct DecodeText(Base64Decoder);

impl BodyFilter for DecodeText {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        match frame.into_data() {
            Ok(d) => out.push_data(self.0.decode(&d)?),
            Err(f) => out.push(f),
        }
        Ok(())
    }

    fn end(&mut self, _out: &mut FrameSink) -> Result<(), PluginError> {
        self.0.finish()
    }
}

/// The response body of a gRPC-Web call: data as it arrives (base64, padded, per piece in text
/// mode), then the trailers as the trailer frame.
pub(crate) struct Encode {
    text: bool,
}

impl Encode {
    /// What goes to the client for one upstream frame: the data (base64 in text mode), or the
    /// trailer frame for the trailers.
    fn piece(&self, frame: BodyFrame) -> Option<Bytes> {
        let raw = match frame.into_data() {
            Ok(d) => d,
            Err(f) => trailer_frame(&f.into_trailers().ok()?),
        };
        Some(if self.text {
            Bytes::from(B64.encode(&raw))
        } else {
            raw
        })
    }
}

impl BodyFilter for Encode {
    fn frame(&mut self, frame: BodyFrame, out: &mut FrameSink) -> Result<(), PluginError> {
        if let Some(piece) = self.piece(frame) {
            out.push_data(piece);
        }
        Ok(())
    }
}

impl PluginFactory for GrpcWeb {
    const KIND: &'static str = "grpc_web";
    // Protocol translation, before every access check: the rest of the chain sees the gRPC
    // request, and on the response this plugin is the outermost (after `cors`, 110).
    const ORDER: u16 = 90;
    type Config = GrpcWebConfig;

    fn build(cfg: &GrpcWebConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(GrpcWeb {
            text: cfg.text,
            expose_headers: cfg.expose_headers,
        }))
    }
}

impl GrpcWeb {
    fn call_of(&self, req: &RequestHead) -> Option<Call> {
        let (text, subtype) = parse_content_type(req.headers.get(CONTENT_TYPE)?)?;
        (self.text || !text).then_some(Call { text, subtype })
    }
}

#[async_trait]
impl Plugin for GrpcWeb {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases {
            response: true,
            request_body: true,
            response_body: true,
            ..Phases::REQUEST
        }
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        let Some(call) = self.call_of(req) else {
            return Ok(Flow::Continue);
        };
        let grpc = HeaderValue::from_str(&format!("application/grpc{}", call.subtype))
            .map_err(|_| PluginError::new(StatusCode::BAD_REQUEST, "invalid content type"))?;
        req.headers.insert(CONTENT_TYPE, grpc);
        req.headers.insert(TE, HeaderValue::from_static("trailers"));
        if call.text {
            // The decoded body is shorter.
            req.headers.remove(CONTENT_LENGTH);
        }
        cx.ext.insert(call);
        Ok(Flow::Continue)
    }

    fn request_body(&self, _req: &mut RequestHead, cx: &mut Ctx) -> BodyAction {
        match cx.ext.get::<Call>() {
            Some(c) if c.text => BodyAction::Stream(Box::new(DecodeText(Base64Decoder::default()))),
            _ => BodyAction::Pass,
        }
    }

    async fn response_filter(
        &self,
        resp: &mut ResponseHead,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        let Some(call) = cx.ext.get::<Call>() else {
            return Ok(());
        };
        let h = &mut resp.headers;
        if let Some(ct) = h.get(CONTENT_TYPE).and_then(|v| web_content_type(v, call)) {
            h.insert(CONTENT_TYPE, ct);
            // The trailers travel in the body now.
            h.remove(TRAILER);
        }
        if self.expose_headers && h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
            expose_status_headers(h);
        }
        Ok(())
    }

    fn response_body(&self, resp: &mut ResponseHead, cx: &mut Ctx) -> BodyAction {
        let Some(call) = cx.ext.get::<Call>() else {
            return BodyAction::Pass;
        };
        let converted = resp
            .headers
            .get(CONTENT_TYPE)
            .and_then(parse_content_type)
            .is_some();
        // Not a gRPC answer (left as it was), or trailers-only: nothing to convert.
        if !converted || resp.headers.contains_key("grpc-status") {
            return BodyAction::Pass;
        }
        BodyAction::Stream(Box::new(Encode { text: call.text }))
    }

    fn explain(&self, req: &RequestHead, _route: &str) -> Option<String> {
        let call = self.call_of(req)?;
        Some(format!(
            "gRPC-Web ({}) call: sent upstream as application/grpc{} with te: trailers; the \
             answer's trailers come back in the body",
            if call.text { "text, base64" } else { "binary" },
            call.subtype
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("value")
    }

    fn load(protocol: &str, plugin: &str) -> frontdesk_config::Loaded {
        let text = format!(
            "version: 1\nupstreams:\n  g:\n    targets: [{{ url: \"http://127.0.0.1:9\" }}]\n    \
             protocol: {protocol}\nroutes:\n  - name: r\n    match: {{ paths: [\"/\"] }}\n    \
             upstream: g\n    plugins:\n      grpc_web: {plugin}\n"
        );
        frontdesk_config::load_str(&text, &|_| None).expect("valid")
    }

    #[test]
    fn config_defaults_fields_and_the_http1_upstream_warning() {
        let l = load("h2c", "{}");
        let cfg = l.config.routes[0]
            .plugins
            .grpc_web
            .clone()
            .expect("configured");
        assert_eq!(cfg, GrpcWebConfig::default());
        assert!(cfg.text && cfg.expose_headers);
        assert!(
            !l.warnings
                .iter()
                .any(|w| w.to_string().contains("grpc_web")),
            "{:?}",
            l.warnings
        );
        let l = load("h2c", "{ text: false, expose_headers: false }");
        let cfg = l.config.routes[0]
            .plugins
            .grpc_web
            .clone()
            .expect("configured");
        assert!(!cfg.text && !cfg.expose_headers);
        let l = load("http1", "{}");
        let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
        assert!(
            w.iter()
                .any(|w| w.contains("routes[0].plugins.grpc_web") && w.contains("HTTP/2")),
            "{w:?}"
        );
        let text = "version: 1\nplugins:\n  grpc_web: { nope: 1 }\n";
        assert!(
            frontdesk_config::load_str(text, &|_| None).is_err(),
            "unknown fields are errors"
        );
    }

    #[test]
    fn content_types_are_recognised_with_their_mode_and_subtype() {
        let p = |s: &str| parse_content_type(&hv(s));
        assert_eq!(p("application/grpc-web"), Some((false, String::new())));
        assert_eq!(
            p("application/grpc-web+proto"),
            Some((false, "+proto".into()))
        );
        assert_eq!(
            p("Application/GRPC-Web+JSON"),
            Some((false, "+json".into()))
        );
        assert_eq!(p("application/grpc-web-text"), Some((true, String::new())));
        assert_eq!(
            p("application/grpc-web-text+proto; charset=x"),
            Some((true, "+proto".into()))
        );
        assert_eq!(p("application/grpc"), None);
        assert_eq!(p("application/grpc+proto"), None);
        assert_eq!(p("application/grpc-webby"), None);
        assert_eq!(p("application/grpc-web+"), None);
        assert_eq!(p("application/json"), None);
    }

    #[test]
    fn answers_get_the_clients_form_and_keep_the_upstreams_subtype() {
        let text = Call {
            text: true,
            subtype: String::new(),
        };
        let bin = Call {
            text: false,
            subtype: "+proto".into(),
        };
        let w = |ct: &str, c: &Call| {
            web_content_type(&hv(ct), c).map(|v| v.to_str().map(String::from).expect("ascii"))
        };
        assert_eq!(
            w("application/grpc", &text).as_deref(),
            Some("application/grpc-web-text")
        );
        assert_eq!(
            w("application/grpc", &bin).as_deref(),
            Some("application/grpc-web+proto")
        );
        assert_eq!(
            w("application/grpc+json", &text).as_deref(),
            Some("application/grpc-web-text+json")
        );
        assert_eq!(w("text/html", &bin), None);
        assert_eq!(w("application/grpc-web", &bin), None);
    }

    #[test]
    fn the_decoder_carries_quanta_split_anywhere() {
        let body = b"\x00\x00\x00\x00\x05hello, and a bit more of a message";
        let encoded = B64.encode(body);
        for size in 1..=9 {
            let mut d = Base64Decoder::default();
            let mut got = Vec::new();
            for chunk in encoded.as_bytes().chunks(size) {
                got.extend_from_slice(&d.decode(chunk).expect("valid"));
            }
            d.finish().expect("complete");
            assert_eq!(got, body, "chunks of {size}");
        }
    }

    #[test]
    fn the_decoder_takes_padding_at_chunk_ends_and_data_after_it() {
        // Two messages, each encoded on its own: `AAE=` then more.
        let a = B64.encode([1u8, 2]);
        let b = B64.encode([3u8, 4, 5, 6]);
        assert!(a.ends_with('=') && b.ends_with('='));
        let mut d = Base64Decoder::default();
        let mut got = d.decode(a.as_bytes()).expect("a").to_vec();
        got.extend_from_slice(&d.decode(b.as_bytes()).expect("b"));
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
        // And both in one chunk, padding in the middle.
        let mut d = Base64Decoder::default();
        let both = format!("{a}{b}");
        assert_eq!(
            d.decode(both.as_bytes()).expect("both").as_ref(),
            [1, 2, 3, 4, 5, 6]
        );
        // Split inside the padding.
        let mut d = Base64Decoder::default();
        let mut got = d.decode(&both.as_bytes()[..3]).expect("head").to_vec();
        got.extend_from_slice(&d.decode(&both.as_bytes()[3..]).expect("tail"));
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
        d.finish().expect("complete");
    }

    #[test]
    fn the_decoder_refuses_what_is_not_base64() {
        for bad in ["AB!D", "A=BC", "A===", "AB=C"] {
            let mut d = Base64Decoder::default();
            assert!(d.decode(bad.as_bytes()).is_err(), "{bad}");
        }
        let mut d = Base64Decoder::default();
        d.decode(b"QUJD").expect("ABC");
        assert!(d.decode(b"QU").expect("carried").is_empty());
        let e = d.finish().expect_err("an incomplete quantum at the end");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_trailer_frame_is_flagged_sized_and_lower_case() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", hv("0"));
        t.insert("Grpc-Message", hv("all%20good"));
        let f = trailer_frame(&t);
        assert_eq!(f[0], 0x80);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(len, f.len() - 5);
        let block = std::str::from_utf8(&f[5..]).expect("ascii");
        assert!(block.contains("grpc-status: 0\r\n"), "{block}");
        assert!(block.contains("grpc-message: all%20good\r\n"), "{block}");
        assert_eq!(block.lines().count(), 2);
        assert_eq!(
            trailer_frame(&HeaderMap::new()).as_ref(),
            [0x80, 0, 0, 0, 0]
        );
    }

    #[test]
    fn the_encoder_passes_data_then_the_trailers_as_a_frame() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", hv("0"));
        for text in [false, true] {
            let e = Encode { text };
            let data = b"\x00\x00\x00\x00\x01x";
            let pieces = [
                e.piece(http_body::Frame::data(Bytes::from_static(data))),
                e.piece(http_body::Frame::trailers(t.clone())),
            ];
            let decoded: Vec<Vec<u8>> = pieces
                .iter()
                .map(|p| {
                    let p = p.as_ref().expect("a piece per frame");
                    if text {
                        assert_eq!(p.len() % 4, 0, "padded per piece");
                        B64.decode(p).expect("base64")
                    } else {
                        p.to_vec()
                    }
                })
                .collect();
            assert_eq!(decoded[0], data);
            assert_eq!(decoded[1], trailer_frame(&t).to_vec());
        }
    }

    #[test]
    fn the_status_headers_join_the_exposed_list_once() {
        let mut h = HeaderMap::new();
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            hv("x-total-count, Grpc-Status"),
        );
        expose_status_headers(&mut h);
        assert_eq!(
            h[ACCESS_CONTROL_EXPOSE_HEADERS],
            "x-total-count, grpc-status, grpc-message, grpc-status-details-bin"
        );
        let mut h = HeaderMap::new();
        expose_status_headers(&mut h);
        assert_eq!(
            h[ACCESS_CONTROL_EXPOSE_HEADERS],
            "grpc-status, grpc-message, grpc-status-details-bin"
        );
    }

    /// A `POST` head of `content_type`.
    fn post(content_type: &'static str) -> http::request::Parts {
        let mut parts = http::Request::new(()).into_parts().0;
        parts.method = http::Method::POST;
        parts
            .headers
            .insert("content-type", HeaderValue::from_static(content_type));
        parts
    }

    #[tokio::test]
    async fn requests_are_rewritten_and_others_pass() {
        let p = GrpcWeb::build(&GrpcWebConfig::default(), &BuildEnv::default()).expect("builds");
        let mut cx = Ctx::for_test();
        let mut req = post("application/grpc-web-text");
        req.headers
            .insert("content-length", HeaderValue::from_static("12"));
        p.request_filter(&mut req, &mut cx)
            .await
            .expect("continues");
        assert_eq!(req.headers["content-type"], "application/grpc");
        assert_eq!(req.headers["te"], "trailers");
        assert!(!req.headers.contains_key("content-length"));
        assert!(matches!(
            p.request_body(&mut req, &mut cx),
            BodyAction::Stream(_)
        ));

        let mut cx = Ctx::for_test();
        let mut plain = post("application/grpc+proto");
        let before = plain.headers.clone();
        p.request_filter(&mut plain, &mut cx)
            .await
            .expect("continues");
        assert_eq!(plain.headers, before, "gRPC passes untouched");
        assert!(matches!(
            p.request_body(&mut plain, &mut cx),
            BodyAction::Pass
        ));

        // With `text: false`, text calls pass untouched too.
        let cfg = GrpcWebConfig {
            text: false,
            ..GrpcWebConfig::default()
        };
        let p = GrpcWeb::build(&cfg, &BuildEnv::default()).expect("builds");
        let mut cx = Ctx::for_test();
        let mut text = post("application/grpc-web-text");
        p.request_filter(&mut text, &mut cx)
            .await
            .expect("continues");
        assert_eq!(text.headers["content-type"], "application/grpc-web-text");
        assert!(cx.ext.get::<Call>().is_none());
    }
}
