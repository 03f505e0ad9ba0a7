//! The data model of transforms and the declarative operations on it.
//!
//! Bodies are read into [`Val`], jaq's value type, whatever their format: jq runs on it without
//! a conversion, and its objects keep their members in order (which XML output needs: a SOAP
//! body's elements are ordered). Paths are JSON Pointers (RFC 6901) whose `*` token stands for
//! every element of an array or member of an object.

use std::borrow::Cow;

use jaq_json::{Map, Rc, Val};

/// One token of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    /// A member name or an array index (or `-`, the end of an array).
    Key(String),
    /// Every element or member.
    Star,
}

/// A parsed path.
pub(crate) type Path = Vec<Tok>;

/// Parses a JSON Pointer into a [`Path`].
pub(crate) fn path(p: &str) -> Result<Path, String> {
    Ok(frontdesk_config::pointer_tokens(p)?
        .into_iter()
        .map(|t| if t == "*" { Tok::Star } else { Tok::Key(t) })
        .collect())
}

/// What went wrong applying an operation to a body: safe to show the client who sent the body,
/// never logged (it may quote the body's own names).
pub(crate) type OpError = String;

/// A string value.
pub(crate) fn string(s: impl Into<String>) -> Val {
    Val::from(s.into())
}

/// The text of a string value.
pub(crate) fn as_str(v: &Val) -> Option<Cow<'_, str>> {
    match v {
        Val::TStr(b) | Val::BStr(b) => Some(String::from_utf8_lossy(b)),
        _ => None,
    }
}

/// A value as text: a string as it is, `null` as nothing, anything else as JSON.
pub(crate) fn text(v: &Val) -> Cow<'_, str> {
    match v {
        Val::Null => Cow::Borrowed(""),
        Val::TStr(_) | Val::BStr(_) => as_str(v).unwrap_or_default(),
        other => {
            let mut out = Vec::new();
            // Unbounded: the value is already in memory, and its text is about its size.
            let _ = super::json::write(other, &mut out, usize::MAX);
            Cow::Owned(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

/// An array index token: decimal digits.
fn index(t: &str) -> Option<usize> {
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// The value at a path without wildcards.
pub(crate) fn get<'v>(mut v: &'v Val, p: &[Tok]) -> Option<&'v Val> {
    for t in p {
        let Tok::Key(k) = t else { return None };
        v = match v {
            Val::Obj(m) => m.get(&string(k.as_str()))?,
            Val::Arr(a) => a.get(index(k)?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Sets the value at `p`, creating objects on the way; `*` sets it in every element, `-` as
/// the last token appends to an array.
pub(crate) fn set(v: &mut Val, p: &[Tok], value: &Val) -> Result<(), OpError> {
    let Some((first, rest)) = p.split_first() else {
        *v = value.clone();
        return Ok(());
    };
    if matches!(v, Val::Null) {
        match first {
            // Nothing to set in.
            Tok::Star => return Ok(()),
            // `-`: the end of an array, so a new one.
            Tok::Key(k) if k == "-" => *v = Val::Arr(Rc::new(Vec::new())),
            Tok::Key(_) => *v = Val::obj(Map::default()),
        }
    }
    match (v, first) {
        (Val::Obj(m), Tok::Star) => {
            for child in Rc::make_mut(m).values_mut() {
                set(child, rest, value)?;
            }
            Ok(())
        }
        (Val::Obj(m), Tok::Key(k)) => {
            let child = Rc::make_mut(m)
                .entry(string(k.as_str()))
                .or_insert(Val::Null);
            set(child, rest, value)
        }
        (Val::Arr(a), Tok::Star) => {
            for child in Rc::make_mut(a).iter_mut() {
                set(child, rest, value)?;
            }
            Ok(())
        }
        (Val::Arr(a), Tok::Key(k)) => {
            let a = Rc::make_mut(a);
            let i = if k == "-" {
                a.len()
            } else {
                index(k).ok_or_else(|| format!("{k:?} is not an array index"))?
            };
            if i == a.len() {
                a.push(Val::Null);
            }
            let child = a
                .get_mut(i)
                .ok_or_else(|| format!("index {i} is past the end of an array"))?;
            set(child, rest, value)
        }
        (other, _) => Err(format!("a field cannot be set inside {}", type_name(other))),
    }
}

/// Removes what is at `p` (nothing when it is absent).
pub(crate) fn remove(v: &mut Val, p: &[Tok]) {
    let Some((first, rest)) = p.split_first() else {
        return;
    };
    match (v, first, rest.is_empty()) {
        (Val::Obj(m), Tok::Star, true) => Rc::make_mut(m).clear(),
        (Val::Obj(m), Tok::Star, false) => {
            for child in Rc::make_mut(m).values_mut() {
                remove(child, rest);
            }
        }
        (Val::Obj(m), Tok::Key(k), true) => {
            let key = string(k.as_str());
            if m.contains_key(&key) {
                Rc::make_mut(m).shift_remove(&key);
            }
        }
        (Val::Obj(m), Tok::Key(k), false) => {
            let key = string(k.as_str());
            if m.contains_key(&key) {
                if let Some(child) = Rc::make_mut(m).get_mut(&key) {
                    remove(child, rest);
                }
            }
        }
        (Val::Arr(a), Tok::Star, true) => Rc::make_mut(a).clear(),
        (Val::Arr(a), Tok::Star, false) => {
            for child in Rc::make_mut(a).iter_mut() {
                remove(child, rest);
            }
        }
        (Val::Arr(a), Tok::Key(k), last) => {
            let Some(i) = index(k).filter(|i| *i < a.len()) else {
                return;
            };
            let a = Rc::make_mut(a);
            if last {
                a.remove(i);
            } else {
                remove(&mut a[i], rest);
            }
        }
        _ => {}
    }
}

/// Every value matching `p`, with the concrete path of each (its `*` resolved).
pub(crate) fn matches(v: &Val, p: &[Tok]) -> Vec<(Vec<String>, Val)> {
    let mut out = Vec::new();
    collect(v, p, &mut Vec::new(), &mut out);
    out
}

fn collect(v: &Val, p: &[Tok], at: &mut Vec<String>, out: &mut Vec<(Vec<String>, Val)>) {
    let Some((first, rest)) = p.split_first() else {
        out.push((at.clone(), v.clone()));
        return;
    };
    let mut visit = |key: String, child: &Val, at: &mut Vec<String>| {
        at.push(key);
        collect(child, rest, at, out);
        at.pop();
    };
    match (v, first) {
        (Val::Obj(m), Tok::Star) => {
            for (k, child) in m.iter() {
                visit(text(k).into_owned(), child, at);
            }
        }
        (Val::Obj(m), Tok::Key(k)) => {
            if let Some(child) = m.get(&string(k.as_str())) {
                visit(k.clone(), child, at);
            }
        }
        (Val::Arr(a), Tok::Star) => {
            for (i, child) in a.iter().enumerate() {
                visit(i.to_string(), child, at);
            }
        }
        (Val::Arr(a), Tok::Key(k)) => {
            if let Some(child) = index(k).and_then(|i| a.get(i)) {
                visit(k.clone(), child, at);
            }
        }
        _ => {}
    }
}

/// `to` with its `*` tokens replaced, in order, by the tokens the `*` of `from` matched.
fn bind(from: &[Tok], concrete: &[String], to: &[Tok]) -> Path {
    let mut stars = from
        .iter()
        .zip(concrete)
        .filter(|(t, _)| **t == Tok::Star)
        .map(|(_, c)| c.clone());
    to.iter()
        .map(|t| match t {
            Tok::Star => Tok::Key(stars.next().unwrap_or_default()),
            k => k.clone(),
        })
        .collect()
}

/// Copies (or, `move_`, moves) every value matching `from` to `to`, `*` for `*`.
pub(crate) fn copy(v: &mut Val, from: &[Tok], to: &[Tok], move_: bool) -> Result<(), OpError> {
    let found = matches(v, from);
    if move_ {
        // Removed first, so a move into the old place (`/a` to `/a/b`) keeps the value.
        for (concrete, _) in found.iter().rev() {
            let p: Path = concrete.iter().cloned().map(Tok::Key).collect();
            remove(v, &p);
        }
    }
    for (concrete, value) in &found {
        set(v, &bind(from, concrete, to), value)?;
    }
    Ok(())
}

/// Keeps only what the paths lead to. An object keeps the members named (in their order), an
/// array the elements named; a body that none of the paths match becomes empty (`{}` or `[]`).
pub(crate) fn allow(v: &Val, paths: &[Path]) -> Val {
    let tails: Vec<&[Tok]> = paths.iter().map(Vec::as_slice).collect();
    project(v, &tails).unwrap_or_else(|| match v {
        Val::Arr(_) => Val::Arr(Rc::new(Vec::new())),
        _ => Val::obj(Map::default()),
    })
}

/// `v` restricted to `paths` (relative to it); `None` when none of them matches.
fn project(v: &Val, paths: &[&[Tok]]) -> Option<Val> {
    if paths.iter().any(|p| p.is_empty()) {
        return Some(v.clone());
    }
    let wanted = |key: &str| -> Vec<&[Tok]> {
        paths
            .iter()
            .filter(|p| match &p[0] {
                Tok::Star => true,
                Tok::Key(k) => k == key,
            })
            .map(|p| &p[1..])
            .collect()
    };
    match v {
        Val::Obj(m) => {
            let mut out = Map::default();
            for (k, child) in m.iter() {
                let name = text(k);
                let sub = wanted(&name);
                if sub.is_empty() {
                    continue;
                }
                if let Some(kept) = project(child, &sub) {
                    out.insert(k.clone(), kept);
                }
            }
            (!out.is_empty()).then(|| Val::obj(out))
        }
        Val::Arr(a) => {
            let mut out = Vec::new();
            for (i, child) in a.iter().enumerate() {
                let sub = wanted(&i.to_string());
                if sub.is_empty() {
                    continue;
                }
                if let Some(kept) = project(child, &sub) {
                    out.push(kept);
                }
            }
            (!out.is_empty()).then(|| Val::Arr(Rc::new(out)))
        }
        _ => None,
    }
}

/// `v` put under `p`: `/data` makes `{"data": v}`.
pub(crate) fn wrap(v: Val, p: &[Tok]) -> Result<Val, OpError> {
    let mut out = Val::Null;
    set(&mut out, p, &v)?;
    Ok(out)
}

/// The value at `p`, which must be there.
pub(crate) fn unwrap(v: &Val, p: &[Tok], shown: &str) -> Result<Val, OpError> {
    get(v, p)
        .cloned()
        .ok_or_else(|| format!("the body has nothing at {shown}"))
}

/// A value's type, for messages.
pub(crate) fn type_name(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "a boolean",
        Val::Num(_) => "a number",
        Val::TStr(_) | Val::BStr(_) => "a string",
        Val::Arr(_) => "an array",
        Val::Obj(_) => "an object",
    }
}

/// True unless the value is `null` or `false`.
pub(crate) fn truthy(v: &Val) -> bool {
    !matches!(v, Val::Null | Val::Bool(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Val {
        super::super::json::read(s.as_bytes()).expect("json")
    }

    fn show(v: &Val) -> String {
        text(v).into_owned()
    }

    fn p(s: &str) -> Path {
        path(s).expect("pointer")
    }

    #[test]
    fn set_creates_objects_appends_and_fills_every_element() {
        let mut v = parse(r#"{"items":[{"sku":"a"},{"sku":"b"}]}"#);
        set(&mut v, &p("/meta/source"), &string("gw")).expect("set");
        set(&mut v, &p("/items/*/currency"), &string("EUR")).expect("set");
        set(&mut v, &p("/items/-"), &parse(r#"{"sku":"c"}"#)).expect("append");
        assert_eq!(
            show(&v),
            r#"{"items":[{"sku":"a","currency":"EUR"},{"sku":"b","currency":"EUR"},{"sku":"c"}],"meta":{"source":"gw"}}"#
        );
        assert!(set(&mut v, &p("/items/9/x"), &Val::Null)
            .expect_err("past the end")
            .contains("past the end"));
        assert!(set(&mut v, &p("/items/0/sku/x"), &Val::Null)
            .expect_err("in a string")
            .contains("a string"));
    }

    #[test]
    fn remove_rename_copy_work_through_nested_arrays() {
        let mut v = parse(
            r#"{"orders":[{"lines":[{"sku":"a","cost":1},{"sku":"b","cost":2}]},{"lines":[{"sku":"c","cost":3}]}]}"#,
        );
        remove(&mut v, &p("/orders/*/lines/*/cost"));
        copy(
            &mut v,
            &p("/orders/*/lines/*/sku"),
            &p("/orders/*/lines/*/code"),
            true,
        )
        .expect("rename");
        copy(&mut v, &p("/orders/0"), &p("/first"), false).expect("copy");
        remove(&mut v, &p("/absent/x"));
        assert_eq!(
            show(&v),
            r#"{"orders":[{"lines":[{"code":"a"},{"code":"b"}]},{"lines":[{"code":"c"}]}],"first":{"lines":[{"code":"a"},{"code":"b"}]}}"#
        );
        // A move into its own old place keeps the value.
        let mut v = parse(r#"{"a":1}"#);
        copy(&mut v, &p("/a"), &p("/a/b"), true).expect("move");
        assert_eq!(show(&v), r#"{"a":{"b":1}}"#);
    }

    #[test]
    fn allow_keeps_only_the_named_paths() {
        let v = parse(
            r#"{"id":1,"secret":"s","items":[{"sku":"a","cost":1},{"sku":"b","cost":2}],"x":{"y":1,"z":2}}"#,
        );
        let kept = allow(&v, &[p("/id"), p("/items/*/sku"), p("/x/z"), p("/missing")]);
        assert_eq!(
            show(&kept),
            r#"{"id":1,"items":[{"sku":"a"},{"sku":"b"}],"x":{"z":2}}"#
        );
        assert_eq!(show(&allow(&v, &[p("/nothing")])), "{}");
    }

    #[test]
    fn wrap_and_unwrap() {
        let v = parse(r#"{"a":1}"#);
        let w = wrap(v, &p("/data/inner")).expect("wrap");
        assert_eq!(show(&w), r#"{"data":{"inner":{"a":1}}}"#);
        assert_eq!(
            show(&unwrap(&w, &p("/data/inner"), "/data/inner").expect("unwrap")),
            r#"{"a":1}"#
        );
        assert!(unwrap(&w, &p("/nope"), "/nope").is_err());
    }
}
