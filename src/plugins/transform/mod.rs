//! `transform`: reshape request and response bodies with declarative steps (JSON Pointer paths
//! with `*`) or jq, read from JSON, XML or forms and written as JSON, XML or a template; move
//! values between the body and headers, the query and the path. docs/transforms.md.
//!
//! Both directions use a buffered body phase (within `max_body`). A compressed body (`gzip`,
//! `br`, `zstd`) is decoded first with the `compression` plugin's decoders; the result goes out
//! uncompressed (the `compression` plugin, which runs after on the response, may compress it
//! again). Everything is compiled once per config generation in `build`: paths, jq, templates.
//!
//! [`value`] holds the data model and the declarative operations, [`json`] and [`xml`] the
//! formats, [`jq`] the jq runner and its time bound, [`offline`] the `frontdesk transform`
//! command.

pub mod jq;
mod json;
pub mod offline;
mod value;
mod xml;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use frontdesk_config::{
    ContentCoding, InputFormat, OutputFormat, OverCapPolicy, StatusSource, TemplatePart,
    TransformConfig, TransformSide, TransformStep,
};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use jaq_json::{Map, Rc, Val};

use super::compression::codec::{CodecError, Decoder};
use crate::plugin::{
    BodyAction, BufferCap, Buffered, BuildEnv, Ctx, Flow, OverCap, Phases, Plugin, PluginError,
    PluginFactory, RequestHead, ResponseHead,
};
use value::{Path, Tok};

/// The message of a result over `max_output`.
const TOO_LARGE: &str = "the transformed body is larger than max_output";

/// The `transform` plugin: the compiled request and response sides.
pub struct Transform {
    max_body: u64,
    over_cap: OverCap,
    max_output: usize,
    jq_timeout: Duration,
    request: Option<Side>,
    response: Option<Side>,
    /// Some expression names `$request`: the request phase records it.
    needs_request: bool,
    /// Some expression names `$response`: the response phase builds it.
    needs_response: bool,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transform")
            .field("max_body", &self.max_body)
            .field("request", &self.request.is_some())
            .field("response", &self.response.is_some())
            .finish_non_exhaustive()
    }
}

/// One direction, compiled.
struct Side {
    input: InputFormat,
    strip_namespaces: bool,
    output: Output,
    content_type: HeaderValue,
    method: Option<Method>,
    statuses: Vec<u16>,
    ops: Vec<Op>,
    /// The default status of a `fail` step.
    fail_status: StatusCode,
}

enum Output {
    Json,
    Xml,
    Template(Vec<Piece>),
}

enum Piece {
    Text(String),
    Expr(Expr),
}

/// A value taken from the body: a JSON Pointer or a jq expression.
enum Expr {
    Pointer(Path),
    Jq(Box<jq::Filter>),
}

enum Op {
    Set(Vec<(Path, Val)>),
    Remove(Vec<Path>),
    Move(Vec<(Path, Path)>, bool),
    Allow(Vec<Path>),
    Wrap(Path),
    Unwrap(Path, String),
    ToHeader(Vec<(Expr, HeaderName)>),
    ToQuery(Vec<(Expr, String)>),
    ToPath(Vec<Piece>),
    FromHeader(Vec<(HeaderName, Path)>),
    FromQuery(Vec<(String, Path)>),
    FromParam(Vec<(String, Path)>),
    Jq(Box<jq::Filter>),
    Fail {
        when: Expr,
        status: Option<Result<StatusCode, Expr>>,
        detail: Option<Expr>,
    },
}

impl PluginFactory for Transform {
    const KIND: &'static str = "transform";
    // With the transforms (500s), after `headers` (500) on the request, so header edits are
    // visible to it; on the response it runs before `headers` and `compression` (450), which
    // compresses what it made, and after `cache` (800), which stores the upstream's own answer.
    const ORDER: u16 = 510;
    type Config = TransformConfig;

    fn build(cfg: &TransformConfig, _env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(Transform::new(cfg)?))
    }
}

impl Transform {
    /// Compiles a config; the error names the field (`response.steps[2].jq: ...`). The
    /// config's validation reports the same problems at their full paths first.
    pub fn new(cfg: &TransformConfig) -> Result<Transform, String> {
        if cfg.max_body.0 == 0 || cfg.max_output.0 == 0 {
            return Err("max_body and max_output must be greater than zero".into());
        }
        let mut vars = Uses::default();
        let request = cfg
            .request
            .as_ref()
            .map(|s| compile_side(s, true, &mut vars))
            .transpose()
            .map_err(|e| format!("request.{e}"))?;
        let response = cfg
            .response
            .as_ref()
            .map(|s| compile_side(s, false, &mut vars))
            .transpose()
            .map_err(|e| format!("response.{e}"))?;
        Ok(Transform {
            max_body: cfg.max_body.0,
            over_cap: match cfg.over_cap {
                OverCapPolicy::Pass => OverCap::Pass,
                OverCapPolicy::Fail => OverCap::Fail,
            },
            max_output: usize::try_from(cfg.max_output.0).unwrap_or(usize::MAX),
            jq_timeout: cfg.jq_timeout(),
            request,
            response,
            needs_request: vars.request,
            needs_response: vars.response,
        })
    }
}

/// Which context variables the expressions name: an expression that names neither costs no
/// context per request. (Found in the text: a string that merely contains `$request` only
/// makes the context be built for nothing.)
#[derive(Default)]
struct Uses {
    request: bool,
    response: bool,
}

fn compile_side(s: &TransformSide, request: bool, uses: &mut Uses) -> Result<Side, String> {
    let vars = if request {
        jq::REQUEST_VARS
    } else {
        jq::RESPONSE_VARS
    };
    let mut c = Compiler { vars, uses };
    let mut ops = Vec::new();
    if let Some(code) = &s.jq {
        ops.push(Op::Jq(Box::new(
            c.jq(code).map_err(|e| format!("jq: {e}"))?,
        )));
    }
    for (i, step) in s.steps.iter().enumerate() {
        ops.push(c.step(step).map_err(|e| format!("steps[{i}].{e}"))?);
    }
    let output = match s.output {
        OutputFormat::Json => Output::Json,
        OutputFormat::Xml => Output::Xml,
        OutputFormat::Template => {
            let t = s
                .template
                .as_deref()
                .ok_or("template: `output: template` needs a template")?;
            Output::Template(c.pieces(t).map_err(|e| format!("template: {e}"))?)
        }
    };
    let content_type = match (&s.content_type, s.output) {
        (Some(ct), _) => HeaderValue::from_str(ct).map_err(|_| "content_type: invalid")?,
        (None, OutputFormat::Json) => HeaderValue::from_static("application/json"),
        (None, OutputFormat::Xml) => HeaderValue::from_static("application/xml"),
        (None, OutputFormat::Template) => HeaderValue::from_static("text/xml; charset=utf-8"),
    };
    let method = s
        .method
        .as_deref()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("method: invalid {m:?}")))
        .transpose()?;
    Ok(Side {
        input: s.input,
        strip_namespaces: s.strip_namespaces,
        output,
        content_type,
        method,
        statuses: s.statuses.clone(),
        ops,
        fail_status: if request {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::BAD_GATEWAY
        },
    })
}

/// Compiles the parts of one side.
struct Compiler<'a> {
    vars: &'static [&'static str],
    uses: &'a mut Uses,
}

impl Compiler<'_> {
    fn jq(&mut self, code: &str) -> Result<jq::Filter, String> {
        let f = jq::compile(code, self.vars)?;
        self.uses.request |= code.contains("$request");
        self.uses.response |= code.contains("$response");
        Ok(f)
    }

    fn expr(&mut self, e: &str) -> Result<Expr, String> {
        if frontdesk_config::is_pointer(e) {
            let p = value::path(e)?;
            if p.contains(&Tok::Star) {
                return Err(format!("{e:?}: `*` cannot be used here"));
            }
            Ok(Expr::Pointer(p))
        } else {
            Ok(Expr::Jq(Box::new(self.jq(e)?)))
        }
    }

    fn pieces(&mut self, t: &str) -> Result<Vec<Piece>, String> {
        frontdesk_config::template_parts(t)?
            .into_iter()
            .map(|p| match p {
                TemplatePart::Text(s) => Ok(Piece::Text(s.to_string())),
                TemplatePart::Expr(e) => Ok(Piece::Expr(self.expr(e)?)),
            })
            .collect()
    }

    fn step(&mut self, step: &TransformStep) -> Result<Op, String> {
        let paths = |l: &[String], name: &str| -> Result<Vec<Path>, String> {
            l.iter()
                .map(|p| value::path(p).map_err(|e| format!("{name}: {e}")))
                .collect()
        };
        let header = |h: &str| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("invalid header name {h:?}"))
        };
        Ok(match step {
            TransformStep::Set(m) => Op::Set(
                m.iter()
                    .map(|(k, v)| {
                        let p = value::path(k).map_err(|e| format!("set: {e}"))?;
                        let v = Val::deserialize_from(v).map_err(|e| format!("set: {e}"))?;
                        Ok((p, v))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            TransformStep::Remove(l) => Op::Remove(paths(l, "remove")?),
            TransformStep::Deny(l) => Op::Remove(paths(l, "deny")?),
            TransformStep::Allow(l) => Op::Allow(paths(l, "allow")?),
            TransformStep::Rename(m) | TransformStep::Copy(m) => {
                let name = if matches!(step, TransformStep::Rename(_)) {
                    "rename"
                } else {
                    "copy"
                };
                let pairs = m
                    .iter()
                    .map(|(a, b)| {
                        Ok((
                            value::path(a).map_err(|e| format!("{name}: {e}"))?,
                            value::path(b).map_err(|e| format!("{name}: {e}"))?,
                        ))
                    })
                    .collect::<Result<_, String>>()?;
                Op::Move(pairs, name == "rename")
            }
            TransformStep::Wrap(p) => Op::Wrap(value::path(p).map_err(|e| format!("wrap: {e}"))?),
            TransformStep::Unwrap(p) => Op::Unwrap(
                value::path(p).map_err(|e| format!("unwrap: {e}"))?,
                p.clone(),
            ),
            TransformStep::ToHeader(m) => Op::ToHeader(
                m.iter()
                    .map(|(e, h)| Ok((self.expr(e)?, header(h)?)))
                    .collect::<Result<_, String>>()
                    .map_err(|e| format!("to_header: {e}"))?,
            ),
            TransformStep::ToQuery(m) => Op::ToQuery(
                m.iter()
                    .map(|(e, q)| Ok((self.expr(e)?, q.clone())))
                    .collect::<Result<_, String>>()
                    .map_err(|e| format!("to_query: {e}"))?,
            ),
            TransformStep::ToPath(t) => {
                Op::ToPath(self.pieces(t).map_err(|e| format!("to_path: {e}"))?)
            }
            TransformStep::FromHeader(m) => Op::FromHeader(
                m.iter()
                    .map(|(h, p)| Ok((header(h)?, value::path(p)?)))
                    .collect::<Result<_, String>>()
                    .map_err(|e| format!("from_header: {e}"))?,
            ),
            TransformStep::FromQuery(m) | TransformStep::FromParam(m) => {
                let pairs = m
                    .iter()
                    .map(|(n, p)| Ok((n.clone(), value::path(p)?)))
                    .collect::<Result<_, String>>();
                if matches!(step, TransformStep::FromQuery(_)) {
                    Op::FromQuery(pairs.map_err(|e| format!("from_query: {e}"))?)
                } else {
                    Op::FromParam(pairs.map_err(|e| format!("from_param: {e}"))?)
                }
            }
            TransformStep::Jq(code) => {
                Op::Jq(Box::new(self.jq(code).map_err(|e| format!("jq: {e}"))?))
            }
            TransformStep::Fail(f) => Op::Fail {
                when: self.expr(&f.when).map_err(|e| format!("fail.when: {e}"))?,
                status: match &f.status {
                    None => None,
                    Some(StatusSource::Code(c)) => Some(Ok(StatusCode::from_u16(*c)
                        .ok()
                        .filter(|s| s.is_client_error() || s.is_server_error())
                        .ok_or("fail.status: must be between 400 and 599")?)),
                    Some(StatusSource::Expr(e)) => Some(Err(self
                        .expr(e)
                        .map_err(|e| format!("fail.status: {e}"))?)),
                },
                detail: f
                    .detail
                    .as_deref()
                    .map(|d| self.expr(d))
                    .transpose()
                    .map_err(|e| format!("fail.detail: {e}"))?,
            },
        })
    }
}

/// `serde_json::Value` (a `set` value as written in the config) to `Val`.
trait FromJson: Sized {
    fn deserialize_from(v: &serde_json::Value) -> Result<Self, String>;
}

impl FromJson for Val {
    fn deserialize_from(v: &serde_json::Value) -> Result<Val, String> {
        use serde::Deserialize as _;
        Val::deserialize(v).map_err(|e| e.to_string())
    }
}

/// Why a transform did not produce a body.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The body is not what the transform expects: the detail (safe for whom sent the body;
    /// it may quote it) and a fixed reason for the log.
    Bad(String, &'static str),
    /// A `fail` step answered.
    Refused(PluginError),
    /// The jq time bound passed.
    Timeout,
    /// The result is over `max_output`.
    TooLarge,
    /// The decoded body is over `max_body`.
    OverCap,
}

/// What a transform works with besides the body: the head it may change and the context.
pub(crate) struct Env<'a> {
    pub(crate) headers: &'a mut HeaderMap,
    /// The request's URI (request side only).
    pub(crate) uri: Option<&'a mut Uri>,
    pub(crate) params: &'a [(Arc<str>, String)],
    /// `$request` (and `$response`), in the order the expressions were compiled with.
    pub(crate) vars: Vec<Val>,
    pub(crate) budget: jq::Budget,
}

impl Transform {
    /// Transforms `data` (encoded as `Content-Encoding` in `env.headers` says) with `side`:
    /// the new body, with the head changed in place (its `Content-Type` and `Content-Encoding`
    /// are the caller's).
    fn run(&self, side: &Side, data: &Bytes, env: &mut Env<'_>) -> Result<Bytes, Failure> {
        let decoded = self.decode(data, env.headers)?;
        let mut doc = match side.input {
            InputFormat::Json if decoded.iter().all(u8::is_ascii_whitespace) => Val::Null,
            InputFormat::Json => {
                json::read(&decoded).map_err(|e| Failure::Bad(e, "invalid JSON"))?
            }
            InputFormat::Xml => xml::read(&decoded, side.strip_namespaces)
                .map_err(|e| Failure::Bad(e, "invalid XML"))?,
            InputFormat::Form => xml::read_form(&decoded),
        };
        for op in &side.ops {
            doc = self.apply(side, op, doc, env)?;
        }
        let out = match &side.output {
            Output::Json => {
                let mut out = Vec::new();
                json::write(&doc, &mut out, self.max_output).map_err(|e| match e {
                    json::WriteError::TooLarge => Failure::TooLarge,
                    json::WriteError::TooDeep => {
                        Failure::Bad("the result is nested too deep".into(), "result too deep")
                    }
                })?;
                out
            }
            Output::Xml => xml::write(&doc, self.max_output).map_err(|e| {
                if e == TOO_LARGE {
                    Failure::TooLarge
                } else {
                    Failure::Bad(e, "the result has no XML form")
                }
            })?,
            Output::Template(pieces) => {
                let mut out = String::new();
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Expr(e) => {
                            if let Some(v) = self.eval(e, &doc, env)? {
                                out.push_str(&xml::escape(&value::text(&v)));
                            }
                        }
                    }
                    if out.len() > self.max_output {
                        return Err(Failure::TooLarge);
                    }
                }
                out.into_bytes()
            }
        };
        Ok(Bytes::from(out))
    }

    /// The body without its content coding, within `max_body`.
    fn decode(&self, data: &Bytes, h: &HeaderMap) -> Result<Bytes, Failure> {
        let mut codings = h.get_all(header::CONTENT_ENCODING).iter();
        let Some(v) = codings.next() else {
            return Ok(data.clone());
        };
        let token = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
        let coding = match token.as_str() {
            "identity" | "" if codings.next().is_none() => return Ok(data.clone()),
            "gzip" | "x-gzip" => ContentCoding::Gzip,
            "br" => ContentCoding::Br,
            "zstd" => ContentCoding::Zstd,
            _ => {
                return Err(Failure::Bad(
                    "the body's content coding cannot be decoded (gzip, br and zstd can)".into(),
                    "unknown content coding",
                ))
            }
        };
        if codings.next().is_some() {
            return Err(Failure::Bad(
                "the body has more than one content coding".into(),
                "stacked content codings",
            ));
        }
        let corrupt = |_| {
            Failure::Bad(
                format!("the body is not valid {} data", coding.token()),
                "corrupt compressed body",
            )
        };
        let failed = |e: CodecError| match e {
            CodecError::TooLarge { .. } => Failure::OverCap,
            e => corrupt(e),
        };
        let mut d = Decoder::new(coding, self.max_body).map_err(failed)?;
        let mut out = Vec::new();
        let mut step = d.decompress(data.clone()).map_err(failed)?;
        while let Some(s) = step {
            out.extend_from_slice(&s);
            step = d.more().map_err(failed)?;
        }
        d.finish().map_err(failed)?;
        Ok(Bytes::from(out))
    }

    /// The value of an expression on `doc`: `None` when a pointer finds nothing or jq gives no
    /// output.
    fn eval(&self, e: &Expr, doc: &Val, env: &Env<'_>) -> Result<Option<Val>, Failure> {
        match e {
            Expr::Pointer(p) => Ok(value::get(doc, p).cloned()),
            Expr::Jq(f) => match jq::first(f, doc.clone(), &env.vars, &env.budget) {
                Ok(v) => Ok(Some(v)),
                Err(jq::JqError::Empty) => Ok(None),
                Err(e) => Err(jq_failure(e)),
            },
        }
    }

    fn apply(&self, side: &Side, op: &Op, mut doc: Val, env: &mut Env<'_>) -> Result<Val, Failure> {
        let bad = |e: String| Failure::Bad(e, "the body does not fit a step");
        match op {
            Op::Set(pairs) => {
                for (p, v) in pairs {
                    value::set(&mut doc, p, v).map_err(bad)?;
                }
            }
            Op::Remove(paths) => {
                for p in paths {
                    value::remove(&mut doc, p);
                }
            }
            Op::Move(pairs, move_) => {
                for (from, to) in pairs {
                    value::copy(&mut doc, from, to, *move_).map_err(bad)?;
                }
            }
            Op::Allow(paths) => doc = value::allow(&doc, paths),
            Op::Wrap(p) => doc = value::wrap(doc, p).map_err(bad)?,
            Op::Unwrap(p, shown) => doc = value::unwrap(&doc, p, shown).map_err(bad)?,
            Op::ToHeader(pairs) => {
                for (e, name) in pairs {
                    match self.eval(e, &doc, env)? {
                        None | Some(Val::Null) => {
                            // Absent: no header, whatever the sender put there.
                            env.headers.remove(name);
                        }
                        Some(v) => {
                            let hv = HeaderValue::from_str(&value::text(&v)).map_err(|_| {
                                bad(format!(
                                    "the value for header {name} is not a valid header value"
                                ))
                            })?;
                            env.headers.insert(name.clone(), hv);
                        }
                    }
                }
            }
            Op::ToQuery(pairs) => {
                let mut set = Vec::new();
                for (e, name) in pairs {
                    let v = self.eval(e, &doc, env)?;
                    set.push((name.as_str(), v.filter(|v| !matches!(v, Val::Null))));
                }
                if let Some(uri) = env.uri.as_deref_mut() {
                    let query = edit_query(uri.query(), &set);
                    *uri = with_path_and_query(uri.path(), query.as_deref()).map_err(bad)?;
                }
            }
            Op::ToPath(pieces) => {
                let mut path = String::new();
                for p in pieces {
                    match p {
                        Piece::Text(t) => path.push_str(t),
                        Piece::Expr(e) => {
                            let v = self.eval(e, &doc, env)?.unwrap_or(Val::Null);
                            let text = value::text(&v);
                            if text.is_empty() {
                                return Err(bad("a value for the path is missing".into()));
                            }
                            path.extend(percent_encoding::utf8_percent_encode(&text, SEGMENT));
                        }
                    }
                }
                if let Some(uri) = env.uri.as_deref_mut() {
                    let query = uri.query().map(str::to_string);
                    *uri = with_path_and_query(&path, query.as_deref()).map_err(bad)?;
                }
            }
            Op::FromHeader(pairs) => {
                for (name, p) in pairs {
                    let values: Vec<String> = env
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    if !values.is_empty() {
                        value::set(&mut doc, p, &value::string(values.join(", "))).map_err(bad)?;
                    }
                }
            }
            Op::FromQuery(pairs) => {
                let query = env.uri.as_deref().and_then(Uri::query).unwrap_or("");
                for (name, p) in pairs {
                    let found = form_urlencoded::parse(query.as_bytes())
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned());
                    if let Some(v) = found {
                        value::set(&mut doc, p, &value::string(v)).map_err(bad)?;
                    }
                }
            }
            Op::FromParam(pairs) => {
                for (name, p) in pairs {
                    let found = env.params.iter().find(|(k, _)| &**k == name.as_str());
                    if let Some((_, v)) = found {
                        value::set(&mut doc, p, &value::string(v.clone())).map_err(bad)?;
                    }
                }
            }
            Op::Jq(f) => {
                doc = match jq::first(f, doc, &env.vars, &env.budget) {
                    Ok(v) => v,
                    Err(jq::JqError::Empty) => {
                        return Err(Failure::Bad(
                            "the jq expression produced no value".into(),
                            "a jq expression produced no value",
                        ))
                    }
                    Err(e) => return Err(jq_failure(e)),
                }
            }
            Op::Fail {
                when,
                status,
                detail,
            } => {
                if self
                    .eval(when, &doc, env)?
                    .is_some_and(|v| value::truthy(&v))
                {
                    let status = match status {
                        None => side.fail_status,
                        Some(Ok(s)) => *s,
                        Some(Err(e)) => self
                            .eval(e, &doc, env)?
                            .and_then(|v| value::text(&v).parse::<u16>().ok())
                            .and_then(|c| StatusCode::from_u16(c).ok())
                            .filter(|s| s.is_client_error() || s.is_server_error())
                            .unwrap_or(side.fail_status),
                    };
                    let detail = match detail {
                        Some(e) => self
                            .eval(e, &doc, env)?
                            .map(|v| value::text(&v).into_owned())
                            .filter(|t| !t.is_empty()),
                        None => None,
                    };
                    let message =
                        detail.unwrap_or_else(|| "the body was refused by a transform".into());
                    return Err(Failure::Refused(
                        PluginError::new(status, message).with_reason("transform_refused"),
                    ));
                }
            }
        }
        Ok(doc)
    }
}

fn jq_failure(e: jq::JqError) -> Failure {
    match e {
        jq::JqError::Timeout => Failure::Timeout,
        jq::JqError::Raised(m) => {
            Failure::Bad(format!("jq: {m}"), "a jq expression raised an error")
        }
        jq::JqError::Empty => Failure::Bad(
            "the jq expression produced no value".into(),
            "a jq expression produced no value",
        ),
    }
}

/// What a path segment may hold unescaped (RFC 3986 `pchar` less `:` and `@`, to be safe).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A query with the parameters of `set` replaced (a `None` value removes it); the other
/// parameters keep their text as sent.
fn edit_query(query: Option<&str>, set: &[(&str, Option<Val>)]) -> Option<String> {
    let mut parts: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| {
            let name = kv.split('=').next().unwrap_or("");
            let name: String = form_urlencoded::parse(format!("{name}=").as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            !set.iter().any(|(n, _)| *n == name)
        })
        .map(str::to_string)
        .collect();
    for (name, v) in set {
        if let Some(v) = v {
            parts.push(
                form_urlencoded::Serializer::new(String::new())
                    .append_pair(name, &value::text(v))
                    .finish(),
            );
        }
    }
    (!parts.is_empty()).then(|| parts.join("&"))
}

fn with_path_and_query(path: &str, query: Option<&str>) -> Result<Uri, String> {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    Uri::try_from(pq).map_err(|_| "the new request target is not a valid URI".to_string())
}

/// Keeps in `Accept-Encoding` only the codings a transform decodes (`gzip`, `br`, `zstd`,
/// `identity`, with their weights); without any left, the header goes and the upstream answers
/// uncoded. The client's own negotiation with `compression` happened before (kind order 450).
fn decodable_codings(h: &mut HeaderMap) {
    if !h.contains_key(header::ACCEPT_ENCODING) {
        return;
    }
    let kept: Vec<String> = h
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| {
            let token = c.split(';').next().unwrap_or("").trim();
            ["gzip", "x-gzip", "br", "zstd", "identity"]
                .iter()
                .any(|t| token.eq_ignore_ascii_case(t))
        })
        .map(str::to_string)
        .collect();
    h.remove(header::ACCEPT_ENCODING);
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            h.insert(header::ACCEPT_ENCODING, v);
        }
    }
}

/// `$request` as the request phase saw it, for the body phases.
#[derive(Clone)]
struct RequestInfo(Val);

/// `$request`: method, path, params, query, headers, consumer and groups.
pub(crate) fn request_info(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    params: &[(Arc<str>, String)],
    consumer: Option<(&str, &[Arc<str>])>,
) -> Val {
    let mut m = Map::default();
    m.insert(value::string("method"), value::string(method.as_str()));
    m.insert(value::string("path"), value::string(uri.path()));
    let mut p = Map::default();
    for (k, v) in params {
        p.insert(value::string(&**k), value::string(v.clone()));
    }
    m.insert(value::string("params"), Val::obj(p));
    let mut q = Map::default();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        // The first value of a repeated parameter.
        q.entry(value::string(k.into_owned()))
            .or_insert_with(|| value::string(v.into_owned()));
    }
    m.insert(value::string("query"), Val::obj(q));
    m.insert(value::string("headers"), headers_val(headers));
    let (name, groups) = match consumer {
        Some((n, g)) => (
            value::string(n),
            Val::Arr(Rc::new(g.iter().map(|g| value::string(&**g)).collect())),
        ),
        None => (Val::Null, Val::Arr(Rc::new(Vec::new()))),
    };
    m.insert(value::string("consumer"), name);
    m.insert(value::string("groups"), groups);
    Val::obj(m)
}

/// Headers as an object: lower-case names, repeated values joined with `, `.
fn headers_val(h: &HeaderMap) -> Val {
    let mut m = Map::default();
    for name in h.keys() {
        let joined: Vec<String> = h
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        m.insert(
            value::string(name.as_str()),
            value::string(joined.join(", ")),
        );
    }
    Val::obj(m)
}

/// `$response`: status and headers.
pub(crate) fn response_info(status: StatusCode, headers: &HeaderMap) -> Val {
    let mut m = Map::default();
    m.insert(value::string("status"), Val::from(status.as_u16() as isize));
    m.insert(value::string("headers"), headers_val(headers));
    Val::obj(m)
}

/// The head of a transformed body: its type, no coding, no length (the chain sets it), a weak
/// validator (the bytes differ from the upstream's), no ranges.
fn transformed_head(h: &mut HeaderMap, content_type: &HeaderValue) {
    h.insert(header::CONTENT_TYPE, content_type.clone());
    h.remove(header::CONTENT_ENCODING);
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    if let Some(etag) = h.get(header::ETAG) {
        if etag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                h.insert(header::ETAG, v);
            }
        }
    }
}

impl Failure {
    /// The client's answer, and the log line (a fixed reason, never body content).
    fn into_error(self, request: bool, route: &str, max_body: u64) -> PluginError {
        let side = if request { "request" } else { "response" };
        let (reason, error) = match self {
            Failure::Refused(e) => {
                tracing::info!(
                    route,
                    side,
                    status = e.status.as_u16(),
                    "transform: a fail step answered"
                );
                return e;
            }
            Failure::Bad(detail, reason) if request => (
                reason,
                PluginError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the request body is not what this route expects: {detail}"),
                )
                .with_reason("transform_bad_body"),
            ),
            Failure::Bad(_, reason) => (reason, bad_gateway()),
            Failure::OverCap if request => (
                "decoded body over max_body",
                PluginError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {max_body} bytes"),
                ),
            ),
            Failure::OverCap => ("decoded body over max_body", bad_gateway()),
            Failure::TooLarge if request => (
                "result over max_output",
                PluginError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the transformed request body is too large",
                ),
            ),
            Failure::TooLarge => ("result over max_output", bad_gateway()),
            Failure::Timeout => (
                "jq time bound passed",
                PluginError::new(
                    if request {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::BAD_GATEWAY
                    },
                    format!("the {side} transform took too long"),
                ),
            ),
        };
        tracing::warn!(route, side, reason, "transform failed");
        error
    }
}

fn bad_gateway() -> PluginError {
    PluginError::new(
        StatusCode::BAD_GATEWAY,
        "the upstream's response is not what this route's transform expects",
    )
    .with_reason("transform_bad_body")
}

#[async_trait]
impl Plugin for Transform {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases {
            request_body: self.request.is_some(),
            response_body: self.response.is_some(),
            ..Phases::REQUEST
        }
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        // The upstream may compress its answer only in a coding the response side can decode.
        if self.response.is_some() {
            decodable_codings(&mut req.headers);
        }
        // The client's request as sent (the body phases see the upstream's URI and headers).
        if self.needs_request && cx.ext.get::<RequestInfo>().is_none() {
            let consumer = cx
                .consumer
                .as_ref()
                .map(|c| (&*c.name, c.groups.as_slice()));
            let info = request_info(
                &req.method,
                &req.uri,
                &req.headers,
                &cx.path_params,
                consumer,
            );
            cx.ext.insert(RequestInfo(info));
        }
        Ok(Flow::Continue)
    }

    fn explain(&self, _req: &RequestHead, _route: &str) -> Option<String> {
        let describe = |s: &Side| {
            let input = match s.input {
                InputFormat::Json => "json",
                InputFormat::Xml => "xml",
                InputFormat::Form => "form",
            };
            let output = match s.output {
                Output::Json => "json",
                Output::Xml => "xml",
                Output::Template(_) => "template",
            };
            let steps = match s.ops.len() {
                1 => "1 step".to_string(),
                n => format!("{n} steps"),
            };
            format!("{input} → {output}, {steps}")
        };
        let mut parts = Vec::new();
        if let Some(s) = &self.request {
            let method = s
                .method
                .as_ref()
                .map(|m| format!(", sent as {m}"))
                .unwrap_or_default();
            parts.push(format!("the request body ({}{method})", describe(s)));
        }
        if let Some(s) = &self.response {
            parts.push(format!("the response body ({})", describe(s)));
        }
        Some(format!("transforms {}", parts.join(" and ")))
    }

    fn request_body(&self, _req: &mut RequestHead, _cx: &mut Ctx) -> BodyAction {
        if self.request.is_none() {
            return BodyAction::Pass;
        }
        BodyAction::Buffer(BufferCap {
            max: self.max_body,
            over: OverCap::Pass,
        })
    }

    async fn request_body_buffered(
        &self,
        req: &mut RequestHead,
        body: &mut Buffered,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        let Some(side) = &self.request else {
            return Ok(());
        };
        // A request without a body stays so, unless the transform makes one for a new method.
        if body.data.is_empty() && side.method.is_none() {
            return Ok(());
        }
        let request = cx
            .ext
            .get::<RequestInfo>()
            .map_or(Val::Null, |r| r.0.clone());
        let mut env = Env {
            headers: &mut req.headers,
            uri: Some(&mut req.uri),
            params: &cx.path_params,
            vars: vec![request],
            budget: jq::Budget::new(Instant::now() + self.jq_timeout),
        };
        match self.run(side, &body.data, &mut env) {
            Ok(out) => {
                body.data = out;
                transformed_head(&mut req.headers, &side.content_type);
                if let Some(m) = &side.method {
                    req.method = m.clone();
                }
                Ok(())
            }
            Err(f) => Err(f.into_error(true, &cx.route, self.max_body)),
        }
    }

    fn response_body(&self, resp: &mut ResponseHead, _cx: &mut Ctx) -> BodyAction {
        let Some(side) = &self.response else {
            return BodyAction::Pass;
        };
        let status = resp.status.as_u16();
        if (!side.statuses.is_empty() && !side.statuses.contains(&status))
            || resp.status == StatusCode::PARTIAL_CONTENT
            || resp
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0")
        {
            return BodyAction::Pass;
        }
        BodyAction::Buffer(BufferCap {
            max: self.max_body,
            over: self.over_cap,
        })
    }

    async fn response_body_buffered(
        &self,
        resp: &mut ResponseHead,
        body: &mut Buffered,
        cx: &mut Ctx,
    ) -> Result<(), PluginError> {
        let Some(side) = &self.response else {
            return Ok(());
        };
        if body.data.is_empty() {
            return Ok(());
        }
        let request = cx
            .ext
            .get::<RequestInfo>()
            .map_or(Val::Null, |r| r.0.clone());
        let response = if self.needs_response {
            response_info(resp.status, &resp.headers)
        } else {
            Val::Null
        };
        let mut env = Env {
            headers: &mut resp.headers,
            uri: None,
            params: &cx.path_params,
            vars: vec![request, response],
            budget: jq::Budget::new(Instant::now() + self.jq_timeout),
        };
        match self.run(side, &body.data, &mut env) {
            Ok(out) => {
                body.data = out;
                transformed_head(&mut resp.headers, &side.content_type);
                Ok(())
            }
            // Decoded, it is over the cap: as for a body over it as sent.
            Err(Failure::OverCap) if self.over_cap == OverCap::Pass => Ok(()),
            Err(f) => Err(f.into_error(false, &cx.route, self.max_body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(yaml: &str) -> Transform {
        let text = format!("version: 1\nplugins:\n  transform:\n{yaml}");
        let cfg = frontdesk_config::load_str(&text, &|_| None)
            .expect("valid")
            .config
            .plugins
            .transform
            .expect("transform");
        Transform::new(&cfg).expect("builds")
    }

    #[tokio::test]
    async fn the_request_phase_reshapes_the_body_and_the_head() {
        let t = plugin(
            "    request:\n      method: PUT\n      steps:\n        - to_header: { /id: x-id }\n        - to_path: '/items/{{ /id }}'\n        - jq: '{item: ., by: $request.method}'\n",
        );
        let (mut head, ()) = http::Request::builder()
            .method("POST")
            .uri("/x?keep=1")
            .header("content-encoding", "identity")
            .header("accept-encoding", "gzip, deflate;q=0.5, br")
            .body(())
            .expect("request")
            .into_parts();
        let mut cx = Ctx::for_test();
        assert!(matches!(
            t.request_filter(&mut head, &mut cx).await.expect("ok"),
            Flow::Continue
        ));
        // No response side: the upstream may answer in any coding.
        assert_eq!(head.headers["accept-encoding"], "gzip, deflate;q=0.5, br");
        assert!(matches!(
            t.request_body(&mut head, &mut cx),
            BodyAction::Buffer(BufferCap { max: 1048576, .. })
        ));
        let mut body = Buffered {
            data: Bytes::from_static(br#"{"id":"a b"}"#),
            trailers: None,
        };
        t.request_body_buffered(&mut head, &mut body, &mut cx)
            .await
            .expect("transformed");
        assert_eq!(body.data, r#"{"item":{"id":"a b"},"by":"POST"}"#);
        assert_eq!(head.method, Method::PUT);
        assert_eq!(head.uri, "/items/a%20b?keep=1");
        assert_eq!(head.headers["x-id"], "a b");
        assert_eq!(head.headers["content-type"], "application/json");
        assert!(!head.headers.contains_key("content-encoding"));

        let mut bad = Buffered {
            data: Bytes::from_static(b"not json"),
            trailers: None,
        };
        let e = t
            .request_body_buffered(&mut head, &mut bad, &mut cx)
            .await
            .expect_err("refused");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("invalid JSON"), "{}", e.message);
    }

    #[tokio::test]
    async fn the_response_phase_asks_only_for_codings_it_decodes() {
        let t = plugin("    response: { jq: '.' }\n");
        let (mut head, ()) = http::Request::builder()
            .header("accept-encoding", "deflate, gzip;q=0.8, compress")
            .body(())
            .expect("request")
            .into_parts();
        t.request_filter(&mut head, &mut Ctx::for_test())
            .await
            .expect("ok");
        assert_eq!(head.headers["accept-encoding"], "gzip;q=0.8");
        let (mut head, ()) = http::Request::builder()
            .header("accept-encoding", "deflate")
            .body(())
            .expect("request")
            .into_parts();
        t.request_filter(&mut head, &mut Ctx::for_test())
            .await
            .expect("ok");
        assert!(!head.headers.contains_key("accept-encoding"));
    }

    #[tokio::test]
    async fn a_response_is_passed_by_status_and_a_206_is_never_read() {
        let t = plugin("    response: { statuses: [200], jq: '.' }\n");
        let mut cx = Ctx::for_test();
        for (status, buffered) in [(200, true), (404, false), (206, false)] {
            let (mut head, ()) = http::Response::builder()
                .status(status)
                .body(())
                .expect("response")
                .into_parts();
            let action = t.response_body(&mut head, &mut cx);
            assert_eq!(
                matches!(action, BodyAction::Buffer(_)),
                buffered,
                "{status}"
            );
        }
    }
}
