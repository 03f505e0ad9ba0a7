//! Config of the `transform` plugin: request and response bodies reshaped by declarative steps
//! (JSON Pointer paths) or jq, read from JSON, XML or forms and written as JSON, XML or a
//! template. See docs/transforms.md.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Dur};

/// Reshape request and response bodies (and move values between bodies, headers, the query and
/// the path).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The largest body transformed, in bytes (after decoding a compressed one; default `1MiB`).
    /// A larger request body is refused with `413`; a larger response body follows `over_cap`.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// What happens to a response body over `max_body`: `pass` (sent untouched, the default) or
    /// `fail` (`502`).
    #[serde(default)]
    pub over_cap: OverCapPolicy,
    /// The largest body a transform may produce (default `1MiB`); a larger result fails like a
    /// body the transform cannot read (`400` on the request, `502` on the response).
    #[serde(default = "default_max_body")]
    pub max_output: ByteSize,
    /// How long the jq expressions of one body may run together (default `100ms`, at most
    /// `10s`); past it the transform fails.
    #[serde(default = "default_jq_timeout")]
    pub jq_timeout: Dur,
    /// The transform of the request body, on its way to the upstream.
    #[serde(default)]
    pub request: Option<TransformSide>,
    /// The transform of the response body, on its way to the client.
    #[serde(default)]
    pub response: Option<TransformSide>,
}

/// What happens to a response body larger than `max_body`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverCapPolicy {
    /// The body goes to the client untouched.
    #[default]
    Pass,
    /// The client gets `502`.
    Fail,
}

/// One direction's transform: read the body in `input`, run `steps` (or `jq`), write `output`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformSide {
    /// How the body is read: `json` (the default; an empty body is `null`), `xml` or `form`
    /// (`application/x-www-form-urlencoded`).
    #[serde(default)]
    pub input: InputFormat,
    /// XML input: drop namespace prefixes (`soap:Body` becomes `Body`) and `xmlns`
    /// attributes.
    #[serde(default)]
    pub strip_namespaces: bool,
    /// How the result is written: `json` (the default), `xml` or `template`.
    #[serde(default)]
    pub output: OutputFormat,
    /// The body written with `output: template`: text with `{{ expression }}` placeholders (a
    /// JSON Pointer such as `/user/id`, or a jq expression), each value XML-escaped.
    #[serde(default)]
    pub template: Option<String>,
    /// The `Content-Type` of the result; by default `application/json` (json),
    /// `application/xml` (xml), `text/xml; charset=utf-8` (template).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Request only: the method the upstream gets (a `GET` turned into the `POST` a SOAP service
    /// expects).
    #[serde(default)]
    pub method: Option<String>,
    /// Response only: the statuses transformed (default: every status); other responses pass
    /// untouched.
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// One jq expression for the whole transform: the same as `steps: [{ jq: ... }]`.
    #[serde(default)]
    pub jq: Option<String>,
    /// The steps, run in order on the body.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// The format a body is read in.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// JSON.
    #[default]
    Json,
    /// XML: elements become objects, attributes `@name`, text `#text`, repeated elements arrays.
    Xml,
    /// `application/x-www-form-urlencoded`: an object of strings (arrays for repeated names).
    Form,
}

/// The format a result is written in.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// JSON.
    #[default]
    Json,
    /// XML, the reverse of the XML input mapping: an object with one key, the root element.
    Xml,
    /// The `template` text with its placeholders filled.
    Template,
}

/// One step of a transform. Paths are JSON Pointers (`/items/0/sku`); `*` stands for every
/// element of an array (or member of an object). Where a step takes a value from somewhere, an
/// *expression* is a JSON Pointer (starting with `/`) or a jq expression (anything else).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Set fields, path → value (any YAML value); missing objects on the way are created, `-` as
    /// the last token appends to an array.
    Set(BTreeMap<String, serde_json::Value>),
    /// Remove fields (absent ones are ignored).
    Remove(Vec<String>),
    /// Move fields, old path → new path.
    Rename(BTreeMap<String, String>),
    /// Copy fields, from path → to path.
    Copy(BTreeMap<String, String>),
    /// Keep only these fields (and what leads to them).
    Allow(Vec<String>),
    /// Remove these fields: the deny-list form of `remove`.
    Deny(Vec<String>),
    /// Put the body under this path: `/data` makes `{"data": <body>}`.
    Wrap(String),
    /// Replace the body with what is at this path (it must be there).
    Unwrap(String),
    /// Headers from the body: expression → header name.
    ToHeader(BTreeMap<String, String>),
    /// Request only: query parameters from the body: expression → parameter name.
    ToQuery(BTreeMap<String, String>),
    /// Request only: the upstream path, a template such as `/users/{{ /user/id }}` (each value
    /// percent-encoded as one path segment; the query is kept).
    ToPath(String),
    /// Body fields from headers: header name → path.
    FromHeader(BTreeMap<String, String>),
    /// Request only: body fields from query parameters: parameter name → path.
    FromQuery(BTreeMap<String, String>),
    /// Request only: body fields from the route template's path parameters: name → path.
    FromParam(BTreeMap<String, String>),
    /// A jq expression whose (first) output replaces the body.
    Jq(String),
    /// Answer with an error instead when `when` holds.
    Fail(FailStep),
}

/// A `fail` step: answer with a problem body when a condition holds.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailStep {
    /// The condition: an expression; it holds unless it is `null`, `false` or absent.
    pub when: String,
    /// The status: a number, or an expression giving one (400-599); default `400` on the
    /// request, `502` on the response.
    #[serde(default)]
    pub status: Option<StatusSource>,
    /// The problem body's `detail`: an expression, whose value's text it is (a fixed text is a
    /// jq string: `'"no such user"'`); default "the body was refused by a transform".
    #[serde(default)]
    pub detail: Option<String>,
}

/// A status given as a number or computed by an expression.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum StatusSource {
    /// A fixed status.
    Code(u16),
    /// An expression giving the status.
    Expr(String),
}

impl TransformConfig {
    /// `jq_timeout` as a duration.
    pub fn jq_timeout(&self) -> Duration {
        self.jq_timeout.0
    }
}

fn default_max_body() -> ByteSize {
    ByteSize(1024 * 1024)
}

fn default_jq_timeout() -> Dur {
    Dur(Duration::from_millis(100))
}

/// Definitions loaded after jq's standard library for every transform expression: the
/// built-in loops call `_fd_tick` on every turn, which is where the gateway checks the
/// expression's time bound (`jq_timeout`). A loop written as a recursive `def` of one's own is
/// not checked; these, `range` and the output count are.
pub const JQ_PRELUDE: &str = r#"
def repeat(f): def rec: f, (_fd_tick | rec); rec;
def recurse(f): def rec: ., (_fd_tick | f | rec); rec;
def recurse: recurse(.[]?);
def recurse(f; cond): recurse(f | select(cond));
def while(cond; update): def rec: if cond then ., (_fd_tick | update | rec) else empty end; rec;
def until(cond; update): def rec: if cond then . else (_fd_tick | update | rec) end; rec;
"#;

/// The native filter [`JQ_PRELUDE`] calls on every turn of a loop: it passes its input on.
pub const JQ_TICK: &str = "_fd_tick";

/// Parses and compiles a jq expression with jaq's standard library (core, std, json), the
/// [`JQ_PRELUDE`], the native filters `funs` (listed first, so they win over the standard ones
/// of the same name and arity) and the global variables `vars` (`$request`, `$response`).
/// The error is one line naming what is wrong and where (`column N`).
pub fn compile_jq<D>(
    code: &str,
    vars: &[&'static str],
    funs: impl Iterator<Item = jaq_core::native::Fun<D>>,
) -> Result<jaq_core::Filter<D>, String>
where
    D: for<'a> jaq_core::DataT<V<'a> = jaq_json::Val>,
{
    use jaq_core::load::{Arena, File, Loader};
    if let Some(name) = recursive_definition(code) {
        return Err(format!(
            "invalid jq: `{name}` calls itself (at column {}): recursive definitions are refused, \
             as no time bound can stop them; use `recurse`, `repeat`, `while`, `until` or `range`",
            column(code, name)
        ));
    }
    let prelude = jaq_core::load::parse(JQ_PRELUDE, |p| p.defs())
        .ok_or_else(|| "the jq prelude does not parse".to_string())?;
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .chain(prelude);
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code, path: () })
        .map_err(|errs| load_error(code, errs))?;
    let funs = funs
        .chain(jaq_core::funs())
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    jaq_core::Compiler::default()
        .with_funs(funs)
        .with_global_vars(vars.iter().copied())
        .compile(modules)
        .map_err(|errs| {
            let mut out = Vec::new();
            for (_file, undefined) in errs {
                for (name, what) in undefined {
                    out.push(format!(
                        "undefined {} `{name}` at column {}",
                        what.as_str(),
                        column(code, name)
                    ));
                }
            }
            format!("invalid jq: {}", out.join("; "))
        })
}

/// The first definition of `code` that calls itself, directly or through other definitions of
/// `code`: jaq cannot interrupt an expression, and the time bound is checked only inside the
/// built-in loops, so such a definition could run forever or overflow the stack. `None` when
/// there is none (or `code` does not parse: the compiler reports that).
pub fn recursive_definition(code: &str) -> Option<&str> {
    use jaq_core::load::lex::StrPart;
    use jaq_core::load::parse::{BinaryOp, Pattern, Term};
    use jaq_core::path::Part;

    type Defs<'s> = Vec<(&'s str, Vec<&'s str>)>;
    fn pattern<'s>(p: &Pattern<&'s str>, calls: &mut Vec<&'s str>, defs: &mut Defs<'s>) {
        match p {
            Pattern::Var(_) => {}
            Pattern::Arr(ps) => ps.iter().for_each(|p| pattern(p, calls, defs)),
            Pattern::Obj(kvs) => {
                for (k, v) in kvs {
                    term(k, calls, defs);
                    pattern(v, calls, defs);
                }
            }
        }
    }
    fn term<'s>(t: &Term<&'s str>, calls: &mut Vec<&'s str>, defs: &mut Defs<'s>) {
        match t {
            Term::Id | Term::Recurse | Term::Num(_) | Term::Var(_) | Term::Break(_) => {}
            Term::Str(_, parts) => {
                for part in parts {
                    if let StrPart::Term(t) = part {
                        term(t, calls, defs);
                    }
                }
            }
            Term::Arr(a) => a.iter().for_each(|t| term(t, calls, defs)),
            Term::Obj(kvs) => {
                for (k, v) in kvs {
                    term(k, calls, defs);
                    v.iter().for_each(|t| term(t, calls, defs));
                }
            }
            Term::Neg(t) | Term::Label(_, t) => term(t, calls, defs),
            Term::BinOp(l, op, r) => {
                term(l, calls, defs);
                if let BinaryOp::Pipe(Some(p)) = op {
                    pattern(p, calls, defs);
                }
                term(r, calls, defs);
            }
            Term::Fold(_, xs, p, args) => {
                term(xs, calls, defs);
                pattern(p, calls, defs);
                args.iter().for_each(|t| term(t, calls, defs));
            }
            Term::TryCatch(t, c) => {
                term(t, calls, defs);
                c.iter().for_each(|t| term(t, calls, defs));
            }
            Term::IfThenElse(branches, otherwise) => {
                for (c, t) in branches {
                    term(c, calls, defs);
                    term(t, calls, defs);
                }
                otherwise.iter().for_each(|t| term(t, calls, defs));
            }
            Term::Def(ds, rest) => {
                for d in ds {
                    let mut own = Vec::new();
                    term(&d.body, &mut own, defs);
                    defs.push((d.name, own));
                }
                term(rest, calls, defs);
            }
            Term::Call(name, args) => {
                calls.push(name);
                args.iter().for_each(|t| term(t, calls, defs));
            }
            Term::Path(t, path) => {
                term(t, calls, defs);
                for (part, _) in &path.0 {
                    match part {
                        Part::Index(i) => term(i, calls, defs),
                        Part::Range(a, b) => {
                            a.iter().chain(b.iter()).for_each(|t| term(t, calls, defs));
                        }
                    }
                }
            }
        }
    }
    let t = jaq_core::load::parse(code, |p| p.term())?;
    let mut defs = Defs::new();
    term(&t, &mut Vec::new(), &mut defs);
    // A definition reaches itself through the calls of the definitions (names compared
    // conservatively: a call to any user definition of that name counts).
    for (name, _) in &defs {
        let mut seen: Vec<&str> = Vec::new();
        let mut todo: Vec<&str> = defs
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        while let Some(c) = todo.pop() {
            if c == *name {
                return Some(name);
            }
            if seen.contains(&c) {
                continue;
            }
            seen.push(c);
            todo.extend(
                defs.iter()
                    .filter(|(n, _)| *n == c)
                    .flat_map(|(_, cs)| cs.iter().copied()),
            );
        }
    }
    None
}

/// The 1-based column of `part`, a slice of `code`, in `code` (its line's column for
/// multi-line expressions).
fn column(code: &str, part: &str) -> usize {
    let start = (part.as_ptr() as usize).saturating_sub(code.as_ptr() as usize);
    let start = start.min(code.len());
    let line_start = code[..start].rfind('\n').map_or(0, |i| i + 1);
    code[line_start..start].chars().count() + 1
}

fn load_error(code: &str, errs: jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut out = Vec::new();
    for (_file, e) in errs {
        match e {
            Error::Io(v) => out.extend(v.into_iter().map(|(path, msg)| format!("{path}: {msg}"))),
            Error::Lex(v) => out.extend(
                v.into_iter()
                    .map(|(expect, found)| found_text(code, expect.as_str(), found)),
            ),
            Error::Parse(v) => out.extend(
                v.into_iter()
                    .map(|(expect, found)| found_text(code, expect.as_str(), found)),
            ),
        }
    }
    format!("invalid jq: {}", out.join("; "))
}

fn found_text(code: &str, expected: &str, found: &str) -> String {
    let shown: String = found.chars().take(20).collect();
    if shown.is_empty() {
        format!("expected {expected} at the end")
    } else {
        format!(
            "expected {expected}, found `{shown}` at column {}",
            column(code, found)
        )
    }
}

/// A piece of a template: text as written, or the expression of a `{{ ... }}` placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplatePart<'a> {
    /// Text copied as it is.
    Text(&'a str),
    /// A placeholder's expression, trimmed.
    Expr(&'a str),
}

/// Splits a template into text and `{{ expression }}` placeholders. An unclosed `{{` or an
/// empty placeholder is an error.
pub fn template_parts(t: &str) -> Result<Vec<TemplatePart<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(TemplatePart::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err("a `{{` is not closed by `}}`".into());
        };
        let expr = after[..close].trim();
        if expr.is_empty() {
            return Err("an empty `{{ }}` placeholder".into());
        }
        parts.push(TemplatePart::Expr(expr));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest));
    }
    Ok(parts)
}

/// The tokens of a JSON Pointer (RFC 6901), unescaped (`~1` is `/`, `~0` is `~`). `""` is the
/// whole document. A token `*` is the wildcard (every element or member).
pub fn pointer_tokens(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = p.strip_prefix('/') else {
        return Err(format!(
            "{p:?} is not a JSON Pointer: it must start with `/`"
        ));
    };
    body.split('/')
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "{p:?}: `~` must be followed by 0 (for `~`) or 1 (for `/`)"
                            ))
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

/// True when `e` is a JSON Pointer rather than a jq expression: it starts with `/`.
pub fn is_pointer(e: &str) -> bool {
    e.starts_with('/')
}

#[cfg(test)]
mod recursion_tests {
    use super::recursive_definition;

    #[test]
    fn recursive_definitions_are_found_and_others_pass() {
        for code in [
            "def f: f; f",
            "def f: [f]; f",
            "def f: g; def g: f; f",
            "def f(x): if . > 0 then . - 1 | f(x) else x end; f(0)",
            "def outer: def inner: outer; inner; outer",
            "map(def f: 1 + f; f)",
        ] {
            assert!(recursive_definition(code).is_some(), "{code}");
        }
        for code in [
            ".a",
            "def f: . + 1; f | f",
            "def g: 1; def f: g + g; [f, f]",
            "[recurse(.[]?)] | length",
            "def f(x): x; f(f(.))",
            "not valid jq (",
        ] {
            assert_eq!(recursive_definition(code), None, "{code}");
        }
    }
}
