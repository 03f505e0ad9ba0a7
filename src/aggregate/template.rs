//! Filling in a call's templates: the path and query (every placed value percent-encoded),
//! header values, and the JSON body. Values come from upstream answers and the client: both are
//! hostile, so nothing placed can change a request's structure (a `/`, `?`, `&`, `#` or `..`
//! placed in a path or query is encoded or refused, a header value with a line break refused).

use frontdesk_config::model::aggregate::{Step, Template, TemplatePiece, ValueRef};
use serde_json::Value;

/// Where placeholders find their values.
pub(super) trait Lookup {
    /// The value a reference names; `None` when there is none.
    fn lookup(&self, r: &ValueRef) -> Option<Value>;
}

/// A compiled JSON body template.
#[derive(Debug)]
pub(super) enum BodyTemplate {
    /// A value as written.
    Literal(Value),
    /// A string with placeholders: text.
    Text(Template),
    /// A string that is one placeholder: the value with its JSON type.
    Alone(ValueRef),
    /// An array.
    Array(Vec<BodyTemplate>),
    /// An object.
    Object(Vec<(String, BodyTemplate)>),
}

impl BodyTemplate {
    /// Compiles a body template (checked at load: its strings parse).
    pub(super) fn compile(v: &Value) -> Result<BodyTemplate, String> {
        Ok(match v {
            Value::String(s) => {
                let t = Template::parse(s)?;
                match t.alone() {
                    Some(r) => BodyTemplate::Alone(r.clone()),
                    None if t.refs().next().is_none() => BodyTemplate::Literal(v.clone()),
                    None => BodyTemplate::Text(t),
                }
            }
            Value::Array(a) => {
                BodyTemplate::Array(a.iter().map(Self::compile).collect::<Result<_, _>>()?)
            }
            Value::Object(m) => BodyTemplate::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::compile(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => BodyTemplate::Literal(other.clone()),
        })
    }

    /// The body: a placeholder alone takes its value (`null` when there is none); text
    /// placeholders take the value's text and fail when there is none.
    pub(super) fn render(&self, values: &dyn Lookup) -> Result<Value, String> {
        Ok(match self {
            BodyTemplate::Literal(v) => v.clone(),
            BodyTemplate::Alone(r) => values.lookup(r).unwrap_or(Value::Null),
            BodyTemplate::Text(t) => {
                let mut s = String::new();
                for p in &t.pieces {
                    match p {
                        TemplatePiece::Text(text) => s.push_str(text),
                        TemplatePiece::Value(r) => s.push_str(&text_of(r, values, true)?),
                    }
                }
                Value::String(s)
            }
            BodyTemplate::Array(a) => Value::Array(
                a.iter()
                    .map(|t| t.render(values))
                    .collect::<Result<_, _>>()?,
            ),
            BodyTemplate::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, t)| Ok((k.clone(), t.render(values)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

/// The value of `r` as text: a string as it is, a number or boolean as JSON writes it; with
/// `json_ok`, arrays and objects as JSON text. Anything else fails, with the reason.
fn text_of(r: &ValueRef, values: &dyn Lookup, json_ok: bool) -> Result<String, String> {
    match values.lookup(r) {
        None | Some(Value::Null) => Err(format!("no value for {{{}}}", r.text)),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(v) if json_ok => Ok(v.to_string()),
        Some(_) => Err(format!(
            "{{{}}} is an array or an object, not a string or number",
            r.text
        )),
    }
}

/// Fills in a call's path template. Before the template's first `?`, a value is one path
/// segment's worth of text, percent-encoded (`/` included), and `.` or `..` alone are refused;
/// after it, a query component, percent-encoded (`&`, `=`, `+`, `#` included).
pub(super) fn render_path(t: &Template, values: &dyn Lookup) -> Result<String, String> {
    let mut out = String::new();
    let mut in_query = false;
    for p in &t.pieces {
        match p {
            TemplatePiece::Text(s) => {
                in_query |= s.contains('?');
                out.push_str(s);
            }
            TemplatePiece::Value(r) => {
                let v = text_of(r, values, false)?;
                if !in_query && (v == "." || v == "..") {
                    return Err(format!("{{{}}} is {v:?}, which a path cannot take", r.text));
                }
                encode_into(&v, &mut out);
            }
        }
    }
    Ok(out)
}

/// Fills in a header value template; a value with a control character is refused.
pub(super) fn render_header(t: &Template, values: &dyn Lookup) -> Result<String, String> {
    let mut out = String::new();
    for p in &t.pieces {
        match p {
            TemplatePiece::Text(s) => out.push_str(s),
            TemplatePiece::Value(r) => {
                let v = text_of(r, values, false)?;
                if v.chars().any(|c| c.is_control() && c != '\t') {
                    return Err(format!(
                        "{{{}}} has a control character, which a header cannot take",
                        r.text
                    ));
                }
                out.push_str(&v);
            }
        }
    }
    Ok(out)
}

/// Percent-encodes every byte but RFC 3986's unreserved characters.
fn encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// Percent-decodes a path parameter as the client sent it (`al%20ice`), so that placing it
/// encodes it once; invalid UTF-8 becomes U+FFFD.
pub(super) fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits: at most 255.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Follows `steps` into `v`: keys into objects, indexes into arrays. `None` when a step finds
/// nothing (or is `[*]`, which only `for_each` resolves).
pub(super) fn follow<'v>(mut v: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    for s in steps {
        v = match (s, v) {
            (Step::Key(k), Value::Object(m)) => m.get(k)?,
            (Step::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Map(Vec<(&'static str, Value)>);

    impl Lookup for Map {
        fn lookup(&self, r: &ValueRef) -> Option<Value> {
            let root = self.0.iter().find(|(k, _)| *k == r.root)?;
            follow(&root.1, &r.steps).cloned()
        }
    }

    fn path(t: &str, m: &Map) -> Result<String, String> {
        render_path(&Template::parse(t).expect("parses"), m)
    }

    #[test]
    fn values_in_paths_and_queries_are_encoded() {
        let m = Map(vec![
            ("user", Value::from("a/b?c#d")),
            ("q", Value::from("x&admin=1 +")),
            ("n", Value::from(7)),
            ("p", serde_json::json!({"body": {"seg": "é"}})),
        ]);
        assert_eq!(
            path("/users/{user}?q={q}&n={n}", &m).expect("renders"),
            "/users/a%2Fb%3Fc%23d?q=x%26admin%3D1%20%2B&n=7"
        );
        assert_eq!(
            path("/for/{p.body.seg}", &m).expect("renders"),
            "/for/%C3%A9"
        );
    }

    #[test]
    fn dot_segments_missing_values_and_objects_are_refused() {
        let m = Map(vec![
            ("up", Value::from("..")),
            ("obj", serde_json::json!({"a": 1})),
            ("nil", Value::Null),
        ]);
        assert!(path("/a/{up}/b", &m)
            .expect_err("dots")
            .contains("cannot take"));
        // In a query `..` is only text.
        assert_eq!(path("/a?x={up}", &m).expect("renders"), "/a?x=..");
        assert!(path("/a/{obj}", &m)
            .expect_err("object")
            .contains("not a string"));
        assert!(path("/a/{nil}", &m).expect_err("null").contains("no value"));
        assert!(path("/a/{none}", &m)
            .expect_err("missing")
            .contains("no value"));
    }

    #[test]
    fn header_values_refuse_line_breaks() {
        let m = Map(vec![("v", Value::from("a\r\nx-evil: 1"))]);
        let t = Template::parse("seg={v}").expect("parses");
        assert!(render_header(&t, &m).is_err());
    }

    #[test]
    fn body_templates_keep_json_types() {
        let m = Map(vec![
            ("items", serde_json::json!([1, 2])),
            ("name", Value::from("a\"b")),
        ]);
        let t = BodyTemplate::compile(&serde_json::json!({
            "items": "{items}",
            "greeting": "hi {name}",
            "missing": "{nothing}",
            "n": 3,
            "literal": "{\"x\": 1}"
        }))
        .expect("compiles");
        assert_eq!(
            t.render(&m).expect("renders"),
            serde_json::json!({
                "items": [1, 2],
                "greeting": "hi a\"b",
                "missing": null,
                "n": 3,
                "literal": "{\"x\": 1}"
            })
        );
    }

    #[test]
    fn parameters_are_decoded_once() {
        assert_eq!(decode("al%20ice%2Fx"), "al ice/x");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
