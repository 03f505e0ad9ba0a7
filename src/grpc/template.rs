//! `google.api.http` path templates: parsing and matching.
//!
//! The grammar (google/api/http.proto):
//! `Template = "/" Segments [ Verb ]`, `Segments = Segment { "/" Segment }`,
//! `Segment = "*" | "**" | LITERAL | Variable`, `Variable = "{" FieldPath [ "=" Segments ] "}"`,
//! `Verb = ":" LITERAL`. A `**` matches zero or more segments and may only come last. Written
//! here: no maintained crate parses these templates outside a code generator.

use percent_encoding::percent_decode_str;

/// One segment of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments (last only).
    Rest,
}

/// A variable: the field path it fills and the template segments it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Var {
    field: Vec<String>,
    start: usize,
    end: usize,
}

/// A compiled path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
    verb: Option<String>,
    vars: Vec<Var>,
}

/// A variable's value from a matched path: the field path (`["item", "id"]`) and the value,
/// percent-decoded (a multi-segment value keeps `%2F` as is, so its slashes stay readable).
pub type Binding = (Vec<String>, String);

impl Template {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(t: &str) -> Result<Template, String> {
        let Some(rest) = t.strip_prefix('/') else {
            return Err(format!("path template {t:?} must start with /"));
        };
        let mut segs = Vec::new();
        let mut vars = Vec::new();
        let mut verb = None;
        let bytes = rest.as_bytes();
        let mut i = 0;
        // Walks the template once; `{...}` may contain `/` (its own segments).
        let mut cur = String::new();
        let mut seg_start = true;
        while i <= bytes.len() {
            let c = bytes.get(i).copied();
            match c {
                Some(b'{') if seg_start && cur.is_empty() => {
                    let close = rest[i..]
                        .find('}')
                        .ok_or_else(|| format!("path template {t:?}: unclosed {{"))?;
                    let inner = &rest[i + 1..i + close];
                    let (field, pattern) = match inner.split_once('=') {
                        Some((f, p)) => (f, p),
                        None => (inner, "*"),
                    };
                    let field: Vec<String> = field.split('.').map(str::to_string).collect();
                    if field.iter().any(|f| !is_ident(f)) {
                        return Err(format!("path template {t:?}: bad field path {inner:?}"));
                    }
                    let start = segs.len();
                    for p in pattern.split('/') {
                        segs.push(segment(p, t)?);
                    }
                    vars.push(Var {
                        field,
                        start,
                        end: segs.len(),
                    });
                    i += close + 1;
                    match bytes.get(i) {
                        None => break,
                        Some(b'/') => {
                            i += 1;
                            seg_start = true;
                        }
                        Some(b':') => {
                            verb = Some(verb_of(&rest[i + 1..], t)?);
                            break;
                        }
                        Some(_) => {
                            return Err(format!(
                                "path template {t:?}: a variable must be a whole segment"
                            ))
                        }
                    }
                }
                None | Some(b'/') => {
                    if seg_start || !cur.is_empty() {
                        segs.push(segment(&cur, t)?);
                    }
                    cur.clear();
                    if c.is_none() {
                        break;
                    }
                    seg_start = true;
                    i += 1;
                }
                Some(b':') => {
                    // The verb follows the last segment.
                    segs.push(segment(&cur, t)?);
                    cur.clear();
                    verb = Some(verb_of(&rest[i + 1..], t)?);
                    break;
                }
                Some(_) => {
                    let ch = rest[i..].chars().next().unwrap_or('?');
                    cur.push(ch);
                    i += ch.len_utf8();
                    seg_start = false;
                }
            }
        }
        if let Some(pos) = segs.iter().position(|s| *s == Seg::Rest) {
            if pos + 1 != segs.len() {
                return Err(format!("path template {t:?}: ** must be the last segment"));
            }
        }
        Ok(Template { segs, verb, vars })
    }

    /// The variables' values when `path` (without the query) matches.
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(v) => {
                let (p, verb) = path.rsplit_once(':')?;
                if verb != v {
                    return None;
                }
                p
            }
            None => path,
        };
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let rest = self.segs.last() == Some(&Seg::Rest);
        let fixed = self.segs.len() - usize::from(rest);
        if parts.len() < fixed || (!rest && parts.len() != fixed) {
            return None;
        }
        for (seg, part) in self.segs.iter().zip(&parts) {
            match seg {
                Seg::Literal(l) => {
                    if l != part && percent_decode_str(part).decode_utf8().ok()?.as_ref() != l {
                        return None;
                    }
                }
                Seg::One => {
                    if part.is_empty() {
                        return None;
                    }
                }
                Seg::Rest => {}
            }
        }
        let mut out = Vec::with_capacity(self.vars.len());
        for v in &self.vars {
            let to_end = v.end == self.segs.len() && rest;
            let covered = if to_end {
                &parts[v.start..]
            } else {
                &parts[v.start..v.end]
            };
            let value = if covered.len() == 1 && !to_end {
                percent_decode_str(covered[0])
                    .decode_utf8()
                    .ok()?
                    .into_owned()
            } else {
                let mut s = String::new();
                for (k, p) in covered.iter().enumerate() {
                    if k > 0 {
                        s.push('/');
                    }
                    s.push_str(&decode_keep_slash(p)?);
                }
                s
            };
            out.push((v.field.clone(), value));
        }
        Some(out)
    }

    /// How specific the template is, for choosing among several that match one path: more
    /// literal segments first, then fewer wildcards.
    pub fn specificity(&self) -> (usize, usize, bool) {
        let lits = self
            .segs
            .iter()
            .filter(|s| matches!(s, Seg::Literal(_)))
            .count();
        let rest = self.segs.contains(&Seg::Rest);
        (
            lits + usize::from(self.verb.is_some()),
            self.segs.len(),
            !rest,
        )
    }

    /// The field paths its variables fill.
    pub fn fields(&self) -> impl Iterator<Item = &[String]> {
        self.vars.iter().map(|v| v.field.as_slice())
    }
}

fn segment(s: &str, t: &str) -> Result<Seg, String> {
    match s {
        "*" => Ok(Seg::One),
        "**" => Ok(Seg::Rest),
        "" => Err(format!("path template {t:?}: empty segment")),
        l if l.contains(['{', '}', '*', '?', '#']) => {
            Err(format!("path template {t:?}: bad segment {l:?}"))
        }
        l => Ok(Seg::Literal(l.to_string())),
    }
}

fn verb_of(v: &str, t: &str) -> Result<String, String> {
    if v.is_empty() || v.contains(['/', '{', '}', '*', ':']) {
        return Err(format!("path template {t:?}: bad verb {v:?}"));
    }
    Ok(v.to_string())
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Percent-decodes a segment but keeps `%2F` encoded (a reserved expansion of a multi-segment
/// variable).
fn decode_keep_slash(p: &str) -> Option<String> {
    let mut out = String::new();
    for (i, piece) in p.split("%2F").enumerate() {
        for (j, sub) in piece.split("%2f").enumerate() {
            if i > 0 && j == 0 {
                out.push_str("%2F");
            } else if j > 0 {
                out.push_str("%2f");
            }
            out.push_str(&percent_decode_str(sub).decode_utf8().ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, p: &str) -> Option<Vec<(String, String)>> {
        Template::parse(t)
            .unwrap()
            .matches(p)
            .map(|v| v.into_iter().map(|(f, v)| (f.join("."), v)).collect())
    }

    fn b(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn variables_literals_wildcards_and_verbs() {
        assert_eq!(
            m(
                "/v1/shelves/{shelf}/items/{id}",
                "/v1/shelves/s%201/items/7"
            ),
            b(&[("shelf", "s 1"), ("id", "7")])
        );
        assert_eq!(
            m("/v1/shelves/{shelf}/items/{id}", "/v1/shelves/s/items"),
            None
        );
        assert_eq!(
            m("/v1/shelves/{shelf}/items/{id}", "/v1/shelves//items/7"),
            None
        );
        assert_eq!(
            m("/v1/items/{item.id}", "/v1/items/9"),
            b(&[("item.id", "9")])
        );
        assert_eq!(
            m("/v1/files/{path=**}:read", "/v1/files/a/b%2Fc/d.txt:read"),
            b(&[("path", "a/b%2Fc/d.txt")])
        );
        assert_eq!(m("/v1/files/{path=**}:read", "/v1/files/a/b"), None);
        assert_eq!(m("/v1/items:upload", "/v1/items:upload"), b(&[]));
        assert_eq!(m("/v1/items:upload", "/v1/items"), None);
        assert_eq!(
            m("/v1/{name=shelves/*}/books", "/v1/shelves/x/books"),
            b(&[("name", "shelves/x")])
        );
        assert_eq!(m("/v1/{name=shelves/*}/books", "/v1/rooms/x/books"), None);
        assert_eq!(m("/v1/*/x", "/v1/anything/x"), b(&[]));
        assert_eq!(m("/v1/**", "/v1"), b(&[]));
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for t in [
            "v1/x",
            "/v1/{id",
            "/v1/**/x",
            "/v1/{a-b}",
            "/v1//x",
            "/v1/x{id}",
            "/v1/x:",
        ] {
            assert!(Template::parse(t).is_err(), "{t}");
        }
    }
}

#[cfg(test)]
mod never_panics {
    use super::Template;
    use proptest::prelude::*;

    proptest! {
        /// Hostile templates (config) and paths (requests): an error or a match, never a panic.
        #[test]
        fn parsing_and_matching_arbitrary_input(
            t in "(/|\\{|\\}|\\*|=|:|\\.|%|[a-zé_0-9]){0,24}",
            p in "(/|:|%|%2F|%zz|\\*|[a-zé0-9]){0,24}",
        ) {
            if let Ok(tpl) = Template::parse(&t) {
                let _ = tpl.matches(&p);
                let _ = tpl.specificity();
            }
            for fixed in ["/v1/{a}/x/{b.c=**}:go", "/v1/{name=s/*}/b", "/**", "/{x}"] {
                let _ = Template::parse(fixed).map(|tpl| tpl.matches(&p));
            }
        }
    }
}
