//! A config submitted through the admin API (`PUT /config`), as an edit of the config file.
//!
//! `GET /config` shows the effective config with every secret as [`REDACTED`]. A client edits
//! that and sends it back. [`edit_text`] takes the submission as the config wanted and writes it
//! into the file's text by changing only what differs from what was shown:
//!
//! - a value equal to the one shown keeps what the file says there: its `${VAR}` reference, its
//!   spelling, or its absence (a default stays a default);
//! - so a [`REDACTED`] placeholder equal to the one shown keeps the real secret at that path; list
//!   elements with a `name` (listeners, routes, consumers) are matched by name, so reordering
//!   them never moves a secret to another consumer;
//! - a new or changed value is taken as written, and a placeholder in it is refused with its path:
//!   there is no secret there to keep;
//! - the file's text is edited in place, node by node, so its comments and the formatting of
//!   everything not edited stay. An edit that cannot be written that way is refused rather than
//!   rewriting the whole file.

use std::collections::HashMap;

use serde_json::Value;
use serde_saphyr::granit_parser::{Event, Parser, StructureStyle};

use crate::redact::REDACTED;
use crate::{Diagnostic, FieldPath};

/// The config file's new text when `submitted` (YAML or JSON) replaces the config that `shown`
/// displays (the `GET /config` view of the config loaded from `current`, the file's text).
///
/// Returns `current` itself when nothing changes. Errors: the submission does not parse, it holds
/// a placeholder where there is no secret to keep (one error per path), or the change cannot be
/// written without rewriting the whole file (unless the config is invalid anyway: then its
/// errors, found with `lookup` for `${VAR}`).
pub fn edit_text(
    current: &str,
    shown: &Value,
    submitted: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<Diagnostic>> {
    let wanted = crate::parse_yaml(submitted).map_err(|d| vec![d])?;
    let raw = crate::parse_yaml(current).map_err(|d| vec![d])?;
    let mut errs = Vec::new();
    let edited = merge(
        Some(&raw),
        Some(shown),
        Some(&wanted),
        &FieldPath::root(),
        &mut errs,
    )
    .unwrap_or(Value::Null);
    if !errs.is_empty() {
        return Err(errs);
    }
    if edited == raw {
        return Ok(current.to_string());
    }
    match patch_text(current, &raw, &edited) {
        Some(text) if crate::parse_yaml(&text).is_ok_and(|v| v == edited) => Ok(text),
        _ => Err(crate::load_str(&edited.to_string(), lookup)
            .err()
            .unwrap_or_else(|| {
                vec![Diagnostic::error(
            "",
            "this change cannot be written into the config file without rewriting all of it \
             (its comments and ${VAR} references would be lost); edit the file and POST /reload",
        )]
            })),
    }
}

/// The file's new value at one path: `r` is what the file has (unsubstituted), `s` what was
/// shown, `n` what was submitted. `None` means absent (the default applies).
fn merge(
    r: Option<&Value>,
    s: Option<&Value>,
    n: Option<&Value>,
    at: &FieldPath,
    errs: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let s = s.filter(|v| !v.is_null());
    let n = n.filter(|v| !v.is_null());
    if s == n {
        // Unchanged: the file keeps what it had there, secrets and `${VAR}` included.
        return r.cloned();
    }
    let n = n?;
    match (s, n) {
        (Some(Value::Object(so)), Value::Object(no)) => {
            let r_map = match r {
                Some(Value::Object(m)) => Some(m),
                _ => None,
            };
            let mut out = r_map.cloned().unwrap_or_default();
            let mut keys: Vec<&String> = so.keys().collect();
            keys.extend(no.keys().filter(|k| !so.contains_key(*k)));
            for k in keys {
                let child = merge(
                    r_map.and_then(|m| m.get(k)),
                    so.get(k),
                    no.get(k),
                    &at.key(k),
                    errs,
                );
                match child {
                    Some(v) => {
                        out.insert(k.clone(), v);
                    }
                    None => {
                        out.remove(k);
                    }
                }
            }
            Some(Value::Object(out))
        }
        (Some(Value::Array(sa)), Value::Array(na)) => {
            let ra = match r {
                Some(Value::Array(a)) if a.len() == sa.len() => Some(a),
                _ => None,
            };
            // Named elements are matched by name (an index, so 10,000 routes stay cheap).
            let by_name = names(sa).zip(names(na)).map(|(sn, nn)| {
                let index: HashMap<&str, usize> =
                    sn.into_iter().enumerate().map(|(j, n)| (n, j)).collect();
                (index, nn)
            });
            let out = na
                .iter()
                .enumerate()
                .map(|(i, ne)| {
                    let j = match &by_name {
                        Some((index, nn)) => index.get(nn[i]).copied(),
                        None => (i < sa.len()).then_some(i),
                    };
                    let at = at.index(i);
                    let merged = match j {
                        Some(j) => merge(ra.map(|a| &a[j]), Some(&sa[j]), Some(ne), &at, errs),
                        None => None,
                    };
                    // An element cannot be absent: without one from the file, it is new.
                    merged.unwrap_or_else(|| fresh(ne, &at, errs))
                })
                .collect();
            Some(Value::Array(out))
        }
        _ => Some(fresh(n, at, errs)),
    }
}

/// A value taken as submitted; a placeholder in it has no secret to keep.
fn fresh(v: &Value, at: &FieldPath, errs: &mut Vec<Diagnostic>) -> Value {
    match v {
        Value::String(s) if s.contains(REDACTED) => errs.push(Diagnostic::error(
            at.to_string(),
            format!(
                "{REDACTED} is a placeholder for a secret kept from the running config, and \
                 there is no secret at this path to keep; write the value (or a ${{VAR}})"
            ),
        )),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                fresh(item, &at.index(i), errs);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                fresh(item, &at.key(k), errs);
            }
        }
        _ => {}
    }
    v.clone()
}

/// The `name` of every element, when every element is a mapping with a distinct string `name`.
fn names(items: &[Value]) -> Option<Vec<&str>> {
    let names: Vec<&str> = items
        .iter()
        .map(|v| v.get("name").and_then(Value::as_str))
        .collect::<Option<_>>()?;
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    (sorted.len() == names.len()).then_some(names)
}

// === the text ===

/// A node of the file's YAML, located by byte offsets.
#[derive(Debug)]
struct Node {
    start: usize,
    end: usize,
    flow: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Scalar,
    /// Entries: key, byte offset of the key, value.
    Map(Vec<(String, usize, Node)>),
    Seq(Vec<Node>),
}

/// One text edit: replace `start..end` with `text`.
type Edit = (usize, usize, String);

/// `text` changed from the value `old` (its parse) to `new`, by edits of the nodes that differ.
fn patch_text(text: &str, old: &Value, new: &Value) -> Option<String> {
    let root = tree(text)?;
    let mut edits = Vec::new();
    patch(text, &root, old, new, &mut edits)?;
    // From the end of the text, so offsets stay valid; at one offset, a removal before an
    // insertion there (the insertion must not land inside the removed range).
    edits.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
    let mut out = text.to_string();
    let mut limit = usize::MAX;
    for (start, end, with) in edits {
        if end > limit || start > end {
            return None;
        }
        out.replace_range(start..end, &with);
        limit = start;
    }
    Some(out)
}

/// Edits that turn `node` (whose value is `old`) into `new`; `None` when the node must be
/// replaced whole.
fn patch(text: &str, node: &Node, old: &Value, new: &Value, out: &mut Vec<Edit>) -> Option<()> {
    if old == new {
        return Some(());
    }
    let mut edits = Vec::new();
    match (&node.kind, old, new) {
        (Kind::Map(entries), Value::Object(o), Value::Object(n)) => {
            for (i, (key, key_at, child)) in entries.iter().enumerate() {
                match (o.get(key), n.get(key)) {
                    (Some(ov), Some(nv)) => {
                        if patch(text, child, ov, nv, &mut edits).is_none() {
                            edits.push(replace(child, nv));
                        }
                    }
                    (_, None) if node.flow => {
                        // `, key: value` after the previous entry, or `key: value, ` before the next.
                        let (start, end) = match (i.checked_sub(1), entries.get(i + 1)) {
                            (Some(prev), _) => (entries[prev].2.end, child.end),
                            (None, Some((_, next, _))) => (*key_at, *next),
                            (None, None) => (*key_at, child.end),
                        };
                        edits.push((start, end, String::new()));
                    }
                    (_, None) => {
                        if entries.len() == 1 {
                            return None;
                        }
                        let start = line_start(text, *key_at)?;
                        // The first key of a list item shares its line with the `- `.
                        if !text[start..*key_at].trim().is_empty() {
                            return None;
                        }
                        let end = match entries.get(i + 1) {
                            Some((_, next, _)) => line_start(text, *next)?,
                            None => line_end(text, child.end),
                        };
                        edits.push((start, end, String::new()));
                    }
                    (None, Some(_)) => return None,
                }
            }
            let added: Vec<(&String, &Value)> =
                n.iter().filter(|(k, _)| !o.contains_key(*k)).collect();
            if !added.is_empty() {
                edits.push(insert_entries(text, node, &added)?);
            }
        }
        (Kind::Seq(items), Value::Array(o), Value::Array(n))
            if items.len() == o.len() && !node.flow && removed_by_name(o, n).is_some() =>
        {
            // Named elements removed, the others kept in order: the removed ones' lines go.
            let kept: HashMap<usize, usize> = removed_by_name(o, n)?
                .into_iter()
                .enumerate()
                .map(|(j, i)| (i, j))
                .collect();
            for (i, item) in items.iter().enumerate() {
                match kept.get(&i).copied() {
                    Some(j) => {
                        if patch(text, item, &o[i], &n[j], &mut edits).is_none() {
                            edits.push(replace(item, &n[j]));
                        }
                    }
                    None => {
                        let start = dash_line(text, item)?;
                        let end = match items.get(i + 1) {
                            Some(next) => dash_line(text, next)?,
                            None => line_end(text, item.end),
                        };
                        edits.push((start, end, String::new()));
                    }
                }
            }
        }
        (Kind::Seq(items), Value::Array(o), Value::Array(n)) if items.len() == o.len() => {
            for ((item, ov), nv) in items.iter().zip(o).zip(n) {
                if patch(text, item, ov, nv, &mut edits).is_none() {
                    edits.push(replace(item, nv));
                }
            }
            if n.len() > o.len() {
                edits.push(append_items(text, node, &n[o.len()..])?);
            } else if n.len() < o.len() {
                let last = items.last()?;
                let start = match (node.flow, n.len().checked_sub(1)) {
                    (true, Some(prev)) => items[prev].end,
                    (true, None) => items[0].start,
                    (false, Some(_)) => dash_line(text, &items[n.len()])?,
                    (false, None) => return None,
                };
                let end = if node.flow {
                    last.end
                } else {
                    line_end(text, last.end)
                };
                edits.push((start, end, String::new()));
            }
        }
        _ => return None,
    }
    out.extend(edits);
    Some(())
}

/// When `n` is `o` less some elements, all named (listeners, routes, consumers), the indexes in
/// `o` of the elements kept, in order.
fn removed_by_name(o: &[Value], n: &[Value]) -> Option<Vec<usize>> {
    let (on, nn) = (names(o)?, names(n)?);
    if nn.len() >= on.len() {
        return None;
    }
    let mut kept = Vec::with_capacity(nn.len());
    let mut from = 0;
    for name in nn {
        let at = from + on[from..].iter().position(|x| *x == name)?;
        kept.push(at);
        from = at + 1;
    }
    Some(kept)
}

/// The start of the line of a block sequence item's `- `, when only blanks precede the dash.
fn dash_line(text: &str, item: &Node) -> Option<usize> {
    let dash = text.get(..item.start)?.rfind('-')?;
    let start = line_start(text, dash)?;
    text[start..dash].trim().is_empty().then_some(start)
}

/// Replaces a node by `v` in flow style (JSON is valid YAML flow).
fn replace(node: &Node, v: &Value) -> Edit {
    (node.start, node.end, flow(v))
}

fn flow(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// A key as written: plain when that reads back as the same string, quoted otherwise.
fn key_text(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && !matches!(
            k,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        k.to_string()
    } else {
        flow(&Value::String(k.to_string()))
    }
}

/// New entries for a mapping: before the closing brace of a flow mapping, or as lines after the
/// last entry of a block mapping, at its indentation.
fn insert_entries(text: &str, node: &Node, added: &[(&String, &Value)]) -> Option<Edit> {
    let Kind::Map(entries) = &node.kind else {
        return None;
    };
    let rendered: Vec<String> = added
        .iter()
        .map(|(k, v)| format!("{}: {}", key_text(k), flow(v)))
        .collect();
    if node.flow {
        let (at, sep) = match entries.last() {
            Some((_, _, last)) => (last.end, ", "),
            None => (node.end.checked_sub(1)?, ""),
        };
        return Some((at, at, format!("{sep}{}", rendered.join(", "))));
    }
    let (_, first_key, _) = entries.first()?;
    let indent = first_key - line_start(text, *first_key)?;
    let (_, _, last) = entries.last()?;
    let at = line_end(text, last.end);
    let mut s = String::new();
    if !text[..at].ends_with('\n') {
        s.push('\n');
    }
    for r in rendered {
        s.push_str(&" ".repeat(indent));
        s.push_str(&r);
        s.push('\n');
    }
    Some((at, at, s))
}

/// New elements at the end of a sequence.
fn append_items(text: &str, node: &Node, added: &[Value]) -> Option<Edit> {
    let Kind::Seq(items) = &node.kind else {
        return None;
    };
    if node.flow {
        let (at, sep) = match items.last() {
            Some(last) => (last.end, ", "),
            None => (node.end.checked_sub(1)?, ""),
        };
        let list: Vec<String> = added.iter().map(flow).collect();
        return Some((at, at, format!("{sep}{}", list.join(", "))));
    }
    let dash = node.start;
    if text.as_bytes().get(dash) != Some(&b'-') {
        return None;
    }
    let indent = dash - line_start(text, dash)?;
    let at = line_end(text, items.last()?.end);
    let mut s = String::new();
    if !text[..at].ends_with('\n') {
        s.push('\n');
    }
    for v in added {
        s.push_str(&" ".repeat(indent));
        s.push_str("- ");
        s.push_str(&flow(v));
        s.push('\n');
    }
    Some((at, at, s))
}

/// The offset of the start of the line holding `at`, when only blanks or `- ` precede it there.
fn line_start(text: &str, at: usize) -> Option<usize> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    text[start..at]
        .chars()
        .all(|c| c == ' ' || c == '-')
        .then_some(start)
}

/// The offset just past the end of the line holding `at` (its newline included).
fn line_end(text: &str, at: usize) -> usize {
    text.get(at..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |i| at + i + 1)
}

/// The document's node tree, or `None` for what this editor does not handle (several
/// documents, anchors and aliases, complex keys).
fn tree(text: &str) -> Option<Node> {
    let mut events = Parser::new_from_str(text)
        .filter(|e| !matches!(e, Ok((Event::Comment(..), _))))
        .skip_while(|e| matches!(e, Ok((Event::StreamStart | Event::DocumentStart(..), _))));
    let mut read = || -> Option<(Event<'_>, usize, usize)> {
        let (ev, span) = events.next()?.ok()?;
        Some((ev, span.start.byte_offset()?, span.end.byte_offset()?))
    };
    let first = read()?;
    let root = node(first, &mut read)?;
    // One document only.
    match read() {
        None | Some((Event::DocumentEnd, ..)) => {}
        Some(_) => return None,
    }
    match read() {
        None | Some((Event::StreamEnd, ..)) => Some(root),
        Some(_) => None,
    }
}

fn node<'a>(
    first: (Event<'a>, usize, usize),
    read: &mut dyn FnMut() -> Option<(Event<'a>, usize, usize)>,
) -> Option<Node> {
    match first {
        (Event::Scalar(_, _, 0, _), start, end) => Some(Node {
            start,
            end,
            flow: false,
            kind: Kind::Scalar,
        }),
        (Event::MappingStart(style, 0, _), start, _) => {
            let mut entries = Vec::new();
            let mut last_end = start;
            loop {
                match read()? {
                    (Event::MappingEnd, _, e) => {
                        // A block mapping ends with its last value (its end event sits at the
                        // next token, past comments); a flow one with its brace.
                        let flow = style == StructureStyle::Flow;
                        let end_at = if flow { e } else { last_end.max(start) };
                        return Some(Node {
                            start,
                            end: end_at,
                            flow,
                            kind: Kind::Map(entries),
                        });
                    }
                    (Event::Scalar(key, _, 0, _), key_at, _) => {
                        let key = key.into_owned();
                        let value = node(read()?, read)?;
                        last_end = value.end;
                        entries.push((key, key_at, value));
                    }
                    _ => return None,
                }
            }
        }
        (Event::SequenceStart(style, 0, _), start, _) => {
            let mut items = Vec::new();
            let mut last_end = start;
            loop {
                match read()? {
                    (Event::SequenceEnd, _, e) => {
                        let flow = style == StructureStyle::Flow;
                        let end_at = if flow { e } else { last_end.max(start) };
                        return Some(Node {
                            start,
                            end: end_at,
                            flow,
                            kind: Kind::Seq(items),
                        });
                    }
                    ev => {
                        let item = node(ev, read)?;
                        last_end = item.end;
                        items.push(item);
                    }
                }
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> Value {
        let cfg = crate::load_str(text, &|k| Some(format!("env-value-of-{k}")))
            .expect("valid")
            .config;
        let mut v = serde_json::to_value(cfg.redacted()).expect("serializes");
        fn drop_nulls(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    m.retain(|_, v| !v.is_null());
                    m.values_mut().for_each(drop_nulls);
                }
                Value::Array(a) => a.iter_mut().for_each(drop_nulls),
                _ => {}
            }
        }
        drop_nulls(&mut v);
        v
    }

    const FILE: &str = r#"# top
version: 1
server: { drain_timeout: 1s }   # trailing
listeners:
  - name: public    # c1
    address: "127.0.0.1:0"
routes:
  - name: x
    match: { paths: ["/a"] }
    plugins:
      respond: { body: "before" }
consumers:
  # alice
  - name: alice
    api_keys: ["${KEY}"]
  - name: bob
    api_keys: [bob-literal]
admin:
  token: ${TOK}
  address: 127.0.0.1:0
"#;

    #[test]
    fn an_unchanged_submission_changes_nothing() {
        let s = shown(FILE);
        assert_eq!(
            edit_text(FILE, &s, &s.to_string(), &|_| None),
            Ok(FILE.to_string())
        );
    }

    #[test]
    fn edits_change_only_their_nodes_and_placeholders_keep_secrets() {
        let s = shown(FILE);
        let mut n = s.clone();
        n["routes"][0]["plugins"]["respond"]["body"] = "after".into();
        n["server"]["via"] = "edge".into();
        n["routes"][0]["plugins"]["cors"] = serde_json::json!({ "allow_origins": ["*"] });
        n["consumers"]
            .as_array_mut()
            .expect("list")
            .push(serde_json::json!({ "name": "carol", "api_keys": ["carol-key"] }));
        n["admin"].as_object_mut().expect("map").remove("token");
        let out = edit_text(FILE, &s, &n.to_string(), &|_| None).expect("edits");
        let expected = FILE
            .replace("\"before\"", "\"after\"")
            .replace("drain_timeout: 1s }", "drain_timeout: 1s, via: \"edge\" }")
            .replace(
                "      respond: { body: \"after\" }\n",
                "      respond: { body: \"after\" }\n      cors: {\"allow_origins\":[\"*\"]}\n",
            )
            .replace(
                "    api_keys: [bob-literal]\n",
                "    api_keys: [bob-literal]\n  - {\"api_keys\":[\"carol-key\"],\"name\":\"carol\"}\n",
            )
            .replace("  token: ${TOK}\n", "");
        assert_eq!(out, expected);
    }

    #[test]
    fn a_placeholder_without_a_secret_to_keep_is_refused_with_its_path() {
        let s = shown(FILE);
        let mut n = s.clone();
        n["consumers"]
            .as_array_mut()
            .expect("list")
            .push(serde_json::json!({ "name": "mallory", "api_keys": [REDACTED] }));
        n["routes"][0]["plugins"]["respond"]["body"] = REDACTED.into();
        let errs = edit_text(FILE, &s, &n.to_string(), &|_| None).expect_err("refused");
        let mut paths: Vec<&str> = errs.iter().map(|d| d.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            ["consumers[2].api_keys[0]", "routes[0].plugins.respond.body"]
        );
    }

    #[test]
    fn removing_a_named_element_removes_its_lines_only() {
        let s = shown(FILE);
        let mut n = s.clone();
        n["consumers"].as_array_mut().expect("list").remove(0);
        let out = edit_text(FILE, &s, &n.to_string(), &|_| None).expect("edits");
        assert_eq!(
            out,
            FILE.replace("  - name: alice\n    api_keys: [\"${KEY}\"]\n", "")
        );
    }

    #[test]
    fn a_file_in_json_is_edited_in_place_too() {
        let file = "{\"version\": 1, \"server\": {\"drain_timeout\": \"1s\", \"via\": \"gw\"}, \"consumers\": [{\"name\": \"a\", \"api_keys\": [\"${KEY}\", \"k2-literal\"]}]}\n";
        let s = shown(file);
        let mut n = s.clone();
        n["server"].as_object_mut().expect("map").remove("via");
        n["consumers"][0]["api_keys"]
            .as_array_mut()
            .expect("list")
            .pop();
        let out = edit_text(file, &s, &n.to_string(), &|_| None).expect("edits");
        assert_eq!(
            out,
            "{\"version\": 1, \"server\": {\"drain_timeout\": \"1s\"}, \"consumers\": [{\"name\": \"a\", \"api_keys\": [\"${KEY}\"]}]}\n"
        );
    }

    /// Every scalar of every example can be changed, and every mapping entry removed, in place.
    #[test]
    fn every_node_of_the_examples_can_be_edited_in_place() {
        fn paths(v: &Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(at.clone());
            match v {
                Value::Object(m) => m.iter().for_each(|(k, v)| {
                    let mut p = at.clone();
                    p.push(k.clone());
                    paths(v, p, out);
                }),
                Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| {
                    let mut p = at.clone();
                    p.push(i.to_string());
                    paths(v, p, out);
                }),
                _ => {}
            }
        }
        fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
            path.iter().fold(v, |v, k| match v {
                Value::Array(a) => &mut a[k.parse::<usize>().expect("index")],
                _ => &mut v[k.as_str()],
            })
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("examples") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|x| x != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let raw = crate::parse_yaml(&text).expect("parses");
            let mut all = Vec::new();
            paths(&raw, Vec::new(), &mut all);
            for p in all.iter().filter(|p| !p.is_empty()) {
                let mut changed = raw.clone();
                *at(&mut changed, p) = Value::String("zz changed: #1".into());
                let out = patch_text(&text, &raw, &changed)
                    .unwrap_or_else(|| panic!("{}: cannot change {p:?}", path.display()));
                assert_eq!(crate::parse_yaml(&out).ok(), Some(changed), "{out}");
                seen += 1;
                let (parent, last) = p.split_at(p.len() - 1);
                let mut removed = raw.clone();
                if let Value::Object(m) = at(&mut removed, parent) {
                    m.remove(&last[0]);
                    if let Some(out) = patch_text(&text, &raw, &removed) {
                        assert_eq!(crate::parse_yaml(&out).ok(), Some(removed), "{out}");
                    }
                }
            }
        }
        assert!(seen > 100, "{seen}");
    }

    #[test]
    fn reordered_named_elements_keep_their_own_secrets() {
        let s = shown(FILE);
        let mut n = s.clone();
        n["consumers"].as_array_mut().expect("list").swap(0, 1);
        let out = edit_text(FILE, &s, &n.to_string(), &|_| None).expect("edits");
        let v = crate::parse_yaml(&out).expect("parses");
        assert_eq!(v["consumers"][0]["name"], "bob");
        assert_eq!(v["consumers"][0]["api_keys"][0], "bob-literal");
        assert_eq!(v["consumers"][1]["name"], "alice");
        assert_eq!(v["consumers"][1]["api_keys"][0], "${KEY}");
    }
}
