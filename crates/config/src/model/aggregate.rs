//! The `aggregate` target of a route: one client request answered with several upstream calls,
//! merged into one JSON answer.
//!
//! Besides the config types, this module owns the small template language calls are written in
//! ([`Template`], [`ValueRef`]): the gateway compiles calls with the same parser that validation
//! uses to find the names a template refers to, so both always read a template alike.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::lenient;
use crate::units::{ByteSize, Dur};

/// Several upstream calls, one answer (`routes[].aggregate`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The upstream calls, by name. Calls that do not depend on each other run in parallel.
    pub calls: BTreeMap<String, AggregateCallConfig>,
    /// How the calls' bodies make the answer: a map from answer keys to `$.call` picks, or a jq
    /// expression over `{call: body, ...}`. Absent: every call's body under its name.
    #[serde(default)]
    pub merge: Option<MergeConfig>,
    /// Response headers taken from some calls' answers.
    #[serde(default)]
    pub headers: Option<AggregateHeadersConfig>,
    /// The deadline of the whole answer, every call included.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// The key of the block listing the optional calls that failed.
    #[serde(default = "default_meta_key")]
    pub meta_key: String,
    /// The largest body read from one call's answer.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// The most bytes read from all calls of one request together, and the largest answer.
    #[serde(default = "default_max_answer")]
    pub max_answer: ByteSize,
    /// The most elements one `for_each` call fans out over.
    #[serde(default = "default_max_fan_out")]
    pub max_fan_out: usize,
    /// Client request headers every call receives, besides the defaults (request id, trace
    /// context, consumer headers). `authorization` is forwarded only when listed.
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

/// One upstream call of an aggregate.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregateCallConfig {
    /// The upstream to call.
    pub upstream: String,
    /// The path and query, a template: `/users/{user}`, `/orders?user={user}&limit=5`.
    pub path: String,
    /// The request method.
    #[serde(default = "default_method")]
    pub method: String,
    /// A failed required call fails the whole answer; a failed optional call leaves its key
    /// `null` and is listed in the meta block.
    #[serde(default)]
    pub required: bool,
    /// The longest this call may take (retries and its body included); absent: only the
    /// upstream's own timeouts and the aggregate's deadline.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Calls this one waits for, besides those its templates name.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Call once per element of an array: `orders.body.items[*].id`.
    #[serde(default)]
    pub for_each: Option<String>,
    /// The element's name in templates; absent: the last key of `for_each` (`id`).
    #[serde(default, rename = "as")]
    pub each_as: Option<String>,
    /// Element calls in flight at once.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: usize,
    /// Request headers to set, templates.
    #[serde(default, deserialize_with = "lenient::string_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub headers: BTreeMap<String, String>,
    /// Client request headers this call receives, besides the aggregate's `forward_headers`.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// A JSON body template: strings in it are templates, and a string that is one placeholder
    /// alone (`"{request.body.items}"`) takes the value with its JSON type.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

/// How an aggregate's answer is made from its calls' bodies.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum MergeConfig {
    /// Answer keys to picks: `$.profile` (a call's body), `$.profile.a.b` (inside it).
    Pick(BTreeMap<String, String>),
    /// A jq expression whose input is `{call: body, ...}`.
    Jq(String),
}

/// Response headers of an aggregate's answer taken from its calls' answers.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregateHeadersConfig {
    /// The calls whose headers are taken, first one first.
    #[serde(default)]
    pub from: Vec<String>,
    /// Header names taken; any other is not.
    #[serde(default)]
    pub allow: Vec<String>,
}

fn default_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

fn default_meta_key() -> String {
    "_meta".to_string()
}

fn default_max_body() -> ByteSize {
    ByteSize(1024 * 1024)
}

fn default_max_answer() -> ByteSize {
    ByteSize(8 * 1024 * 1024)
}

fn default_max_fan_out() -> usize {
    100
}

fn default_max_parallel() -> usize {
    8
}

fn default_method() -> String {
    "GET".to_string()
}

// === templates ===

/// A string with placeholders: `/users/{user}`, `/for/{profile.body.segment}`. `{{` and `}}`
/// stand for a literal brace; a `{` not followed by a name is literal too (so JSON text stays
/// as it is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The pieces, in order.
    pub pieces: Vec<TemplatePiece>,
}

/// A piece of a [`Template`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplatePiece {
    /// Text as written.
    Text(String),
    /// A placeholder.
    Value(ValueRef),
}

/// What a placeholder names: a root (a call, `request`, a path parameter, a `for_each`
/// element) and steps into it: `orders.body.items[0].id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueRef {
    /// The first name.
    pub root: String,
    /// Keys and indexes after it.
    pub steps: Vec<Step>,
    /// The reference as written.
    pub text: String,
}

/// One step of a [`ValueRef`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `.name`: an object's member.
    Key(String),
    /// `[3]`: an array's element.
    Index(usize),
    /// `[*]`: every element (only in `for_each`).
    Each,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Whether `s` is a valid call, element or key name: a letter or `_`, then letters, digits,
/// `_` and `-`.
pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

impl Template {
    /// Parses a template; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{{") {
                text.push('{');
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix("}}") {
                text.push('}');
                rest = after;
                continue;
            }
            if c == '{' && rest[1..].chars().next().is_some_and(is_name_start) {
                let Some(end) = rest.find('}') else {
                    return Err(format!("unclosed placeholder in {s:?}"));
                };
                let r = ValueRef::parse(&rest[1..end])?;
                if !text.is_empty() {
                    pieces.push(TemplatePiece::Text(std::mem::take(&mut text)));
                }
                pieces.push(TemplatePiece::Value(r));
                rest = &rest[end + 1..];
                continue;
            }
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !text.is_empty() {
            pieces.push(TemplatePiece::Text(text));
        }
        Ok(Template { pieces })
    }

    /// The placeholders, in order.
    pub fn refs(&self) -> impl Iterator<Item = &ValueRef> {
        self.pieces.iter().filter_map(|p| match p {
            TemplatePiece::Value(r) => Some(r),
            TemplatePiece::Text(_) => None,
        })
    }

    /// The one placeholder the template is made of, when it is nothing else.
    pub fn alone(&self) -> Option<&ValueRef> {
        match self.pieces.as_slice() {
            [TemplatePiece::Value(r)] => Some(r),
            _ => None,
        }
    }
}

impl ValueRef {
    /// Parses `name(.key|[n]|[*])*`.
    pub fn parse(s: &str) -> Result<ValueRef, String> {
        let bad = |why: &str| Err(format!("invalid reference {s:?}: {why}"));
        let root_len = s.find(['.', '[']).unwrap_or(s.len());
        let root = &s[..root_len];
        if !is_name(root) {
            return bad("it starts with a name (letters, digits, `_`, `-`)");
        }
        let mut steps = Vec::new();
        let mut rest = &s[root_len..];
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let len = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..len];
                if key.is_empty() || !key.chars().all(is_name_char) {
                    return bad("a key after `.` is letters, digits, `_` or `-`");
                }
                steps.push(Step::Key(key.to_string()));
                rest = &after[len..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let Some(close) = after.find(']') else {
                    return bad("`[` without `]`");
                };
                let inner = &after[..close];
                if inner == "*" {
                    steps.push(Step::Each);
                } else {
                    match inner.parse::<usize>() {
                        Ok(i) if inner.bytes().all(|b| b.is_ascii_digit()) => {
                            steps.push(Step::Index(i))
                        }
                        _ => return bad("an index is a number or `*`"),
                    }
                }
                rest = &after[close + 1..];
            } else {
                return bad("expected `.` or `[`");
            }
        }
        Ok(ValueRef {
            root: root.to_string(),
            steps,
            text: s.to_string(),
        })
    }

    /// Where `[*]` is, for a `for_each` reference.
    pub fn each_at(&self) -> Option<usize> {
        self.steps.iter().position(|s| *s == Step::Each)
    }
}

/// The string templates of a JSON body template, in document order.
pub fn body_templates(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| body_templates(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| body_templates(x, out)),
        _ => {}
    }
}

/// The names of the path parameters every one of a route's path rules defines (`user` in
/// `/screens/home/{user}`); none when some rule is not a template.
pub fn route_params(paths: &[crate::model::PathMatch]) -> Vec<String> {
    let names = |t: &str| -> Vec<String> {
        t.split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|n| n.trim_start_matches('*').to_string())
            .collect()
    };
    let mut rules = paths.iter();
    let Some(crate::model::PathMatch::Template(first)) = rules.next() else {
        return Vec::new();
    };
    let mut common = names(first);
    for r in rules {
        match r {
            crate::model::PathMatch::Template(t) => {
                let these = names(t);
                common.retain(|n| these.contains(n));
            }
            _ => return Vec::new(),
        }
    }
    common
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_text_and_placeholders() {
        let t = Template::parse("/orders?user={user}&limit=5").expect("parses");
        assert_eq!(t.pieces.len(), 3);
        assert_eq!(t.refs().next().map(|r| r.root.as_str()), Some("user"));
        let t = Template::parse("/for/{profile.body.items[2].x}").expect("parses");
        let r = t.refs().next().expect("one");
        assert_eq!(r.root, "profile");
        assert_eq!(
            r.steps,
            vec![
                Step::Key("body".into()),
                Step::Key("items".into()),
                Step::Index(2),
                Step::Key("x".into())
            ]
        );
        // JSON text and doubled braces are literal.
        let t = Template::parse(r#"{"a": 1} {{x}}"#).expect("parses");
        assert_eq!(t.refs().count(), 0);
        assert_eq!(
            t.pieces,
            vec![TemplatePiece::Text(r#"{"a": 1} {x}"#.into())]
        );
        assert!(Template::parse("/a/{user").is_err());
        assert!(Template::parse("/a/{user.}").is_err());
        assert!(Template::parse("/a/{user[x]}").is_err());
        assert_eq!(
            Template::parse("{id}")
                .expect("parses")
                .alone()
                .map(|r| r.text.as_str()),
            Some("id")
        );
    }

    #[test]
    fn for_each_references_mark_their_star() {
        let r = ValueRef::parse("orders.body.items[*].id").expect("parses");
        assert_eq!(r.each_at(), Some(2));
        assert!(ValueRef::parse("orders.body.items[*").is_err());
        assert!(ValueRef::parse("9lives").is_err());
    }

    #[test]
    fn params_are_those_every_template_defines() {
        use crate::model::PathMatch;
        let p = route_params(&[
            PathMatch::Template("/a/{user}/{id}".into()),
            PathMatch::Template("/b/{user}".into()),
        ]);
        assert_eq!(p, vec!["user".to_string()]);
        assert!(route_params(&[PathMatch::Prefix("/a".into())]).is_empty());
        assert_eq!(
            route_params(&[PathMatch::Template("/f/{*rest}".into())]),
            vec!["rest".to_string()]
        );
    }
}
