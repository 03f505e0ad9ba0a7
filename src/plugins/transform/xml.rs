//! XML in and out of [`Val`], and form bodies in.
//!
//! The mapping (the common "XML to JSON" convention, reversible for what it covers):
//!
//! - the document is an object with one member, the root element: `<a/>` is `{"a": null}`;
//! - an element with neither attributes nor child elements is its text (a string), or `null`
//!   when it has no text;
//! - otherwise it is an object: attributes as `@name` members (strings), child elements as
//!   members named after them, in document order, and its text, if any, as `#text`;
//! - an element repeated under one parent becomes an array of its values;
//! - text is trimmed, CDATA is text, comments and processing instructions are dropped, and
//!   every value is a string (XML has no numbers).
//!
//! Reading uses quick-xml's pull parser, writing its event writer (which escapes); the mapping
//! between the two is written here by hand, since quick-xml's serde support maps XML to typed
//! structs, not to a generic value with attributes, text and repeated elements. Only the five
//! predefined entities and character references are expanded (a DTD's own entities are
//! refused, so no entity expansion attack).

use std::borrow::Cow;

use jaq_json::{Map, Rc, Val};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use super::value::{self, string};

/// The deepest element nesting read.
const MAX_DEPTH: usize = 128;

struct Frame {
    name: String,
    members: Map,
    text: String,
}

/// Parses an XML document; `strip`: drop namespace prefixes and `xmlns` attributes. The error
/// names the problem and its byte position, not the content.
pub(crate) fn read(data: &[u8], strip: bool) -> Result<Val, String> {
    let mut reader = quick_xml::Reader::from_reader(data);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Val> = None;
    let bad = |reader: &quick_xml::Reader<&[u8]>, what: &str| {
        format!("invalid XML at byte {}: {what}", reader.buffer_position())
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| bad(&reader, short_error(&e)))?;
        match event {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(bad(&reader, "nested too deep"));
                }
                if root.is_some() {
                    return Err(bad(&reader, "more than one root element"));
                }
                stack.push(open(&e, strip).map_err(|w| bad(&reader, w))?);
            }
            Event::Empty(e) => {
                if root.is_some() && stack.is_empty() {
                    return Err(bad(&reader, "more than one root element"));
                }
                let frame = open(&e, strip).map_err(|w| bad(&reader, w))?;
                close(frame, &mut stack, &mut root);
            }
            Event::End(_) => {
                let frame = stack
                    .pop()
                    .ok_or_else(|| bad(&reader, "an end tag without a start"))?;
                close(frame, &mut stack, &mut root);
            }
            Event::Text(t) => {
                let s = t
                    .xml_content()
                    .map_err(|_| bad(&reader, "text is not UTF-8"))?;
                match stack.last_mut() {
                    Some(f) => f.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err(bad(&reader, "text outside the root element")),
                }
            }
            Event::CData(t) => {
                let s = t
                    .xml_content()
                    .map_err(|_| bad(&reader, "CDATA is not UTF-8"))?;
                if let Some(f) = stack.last_mut() {
                    f.text.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                let c = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .ok()
                        .flatten()
                        .ok_or_else(|| bad(&reader, "an invalid character reference"))?
                } else {
                    let name = r.decode().map_err(|_| bad(&reader, "an invalid entity"))?;
                    match &*name {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        _ => return Err(bad(&reader, "an entity other than the five of XML")),
                    }
                };
                if let Some(f) = stack.last_mut() {
                    f.text.push(c);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(format!(
            "invalid XML: the document ends inside <{}>",
            stack.len()
        ));
    }
    root.ok_or_else(|| "invalid XML: there is no root element".to_string())
}

fn short_error(e: &quick_xml::Error) -> &'static str {
    match e {
        quick_xml::Error::Syntax(_) => "a syntax error",
        quick_xml::Error::IllFormed(_) => "ill-formed (a tag is not closed or closed twice)",
        quick_xml::Error::Encoding(_) => "not UTF-8",
        quick_xml::Error::Escape(_) => "an invalid escape",
        _ => "unreadable",
    }
}

fn local(name: &str, strip: bool) -> &str {
    if strip {
        name.rsplit_once(':').map_or(name, |(_, l)| l)
    } else {
        name
    }
}

fn open(e: &BytesStart<'_>, strip: bool) -> Result<Frame, &'static str> {
    let raw = std::str::from_utf8(e.name().into_inner()).map_err(|_| "a name is not UTF-8")?;
    let mut members = Map::default();
    for a in e.attributes() {
        let a = a.map_err(|_| "a malformed attribute")?;
        let key = std::str::from_utf8(a.key.into_inner()).map_err(|_| "a name is not UTF-8")?;
        if strip && (key == "xmlns" || key.starts_with("xmlns:")) {
            continue;
        }
        let value = a
            .unescape_value()
            .map_err(|_| "an attribute value with an invalid escape")?;
        members.insert(
            string(format!("@{}", local(key, strip))),
            string(value.into_owned()),
        );
    }
    Ok(Frame {
        name: local(raw, strip).to_string(),
        members,
        text: String::new(),
    })
}

fn close(f: Frame, stack: &mut [Frame], root: &mut Option<Val>) {
    let text = f.text.trim();
    let value = if f.members.is_empty() {
        if text.is_empty() {
            Val::Null
        } else {
            string(text)
        }
    } else {
        let mut m = f.members;
        if !text.is_empty() {
            m.insert(string("#text"), string(text));
        }
        Val::obj(m)
    };
    match stack.last_mut() {
        Some(parent) => {
            let key = string(f.name);
            match parent.members.get_mut(&key) {
                // Only repetition makes arrays here: an array is an earlier sibling's group.
                Some(Val::Arr(a)) => Rc::make_mut(a).push(value),
                Some(existing) => {
                    let first = std::mem::take(existing);
                    *existing = Val::Arr(Rc::new(vec![first, value]));
                }
                None => {
                    parent.members.insert(key, value);
                }
            }
        }
        None => {
            let mut m = Map::default();
            m.insert(string(f.name), value);
            *root = Some(Val::obj(m));
        }
    }
}

/// Writes `v` as an XML document, the reverse of [`read`]: `v` must be an object with one
/// member, the root element. Fails once the output passes `max` bytes.
pub(crate) fn write(v: &Val, max: usize) -> Result<Vec<u8>, String> {
    let Val::Obj(m) = v else {
        return Err(format!(
            "XML output needs an object with one member, the root element, not {}",
            value::type_name(v)
        ));
    };
    let mut members = m.iter();
    let (Some((name, root)), None) = (members.next(), members.next()) else {
        return Err("XML output needs an object with exactly one member, the root element".into());
    };
    let mut w = quick_xml::Writer::new(Vec::new());
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .map_err(|_| "writing XML failed")?;
    if matches!(root, Val::Arr(_)) {
        return Err("the root element cannot be an array".into());
    }
    element(&mut w, &value::text(name), root, max, 0)?;
    Ok(w.into_inner())
}

type Writer = quick_xml::Writer<Vec<u8>>;

fn element(w: &mut Writer, name: &str, v: &Val, max: usize, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH * 4 {
        return Err("the value is nested too deep for XML".into());
    }
    if !is_name(name) {
        return Err(format!("{name:?} is not an XML element name"));
    }
    let failed = |_| "writing XML failed".to_string();
    match v {
        Val::Arr(items) => {
            for item in items.iter() {
                if matches!(item, Val::Arr(_)) {
                    return Err(format!(
                        "<{name}> holds an array of arrays, which XML cannot"
                    ));
                }
                element(w, name, item, max, depth + 1)?;
            }
            return Ok(());
        }
        Val::Null => {
            w.write_event(Event::Empty(BytesStart::new(name)))
                .map_err(failed)?;
        }
        Val::Obj(m) => {
            let mut start = BytesStart::new(name);
            let mut text: Option<Cow<'_, str>> = None;
            for (k, x) in m.iter() {
                let k = value::text(k);
                if let Some(attr) = k.strip_prefix('@') {
                    if !is_name(attr) {
                        return Err(format!("{attr:?} is not an XML attribute name"));
                    }
                    start.push_attribute((attr, &*value::text(x)));
                } else if k == "#text" {
                    text = Some(value::text(x));
                }
            }
            let children = m.iter().any(|(k, _)| {
                let k = value::text(k);
                !k.starts_with('@') && k != "#text"
            });
            if !children && text.is_none() {
                w.write_event(Event::Empty(start)).map_err(failed)?;
            } else {
                w.write_event(Event::Start(start)).map_err(failed)?;
                if let Some(t) = text {
                    w.write_event(Event::Text(BytesText::new(&t)))
                        .map_err(failed)?;
                }
                for (k, x) in m.iter() {
                    let k = value::text(k);
                    if !k.starts_with('@') && k != "#text" {
                        element(w, &k, x, max, depth + 1)?;
                    }
                }
                w.write_event(Event::End(BytesEnd::new(name)))
                    .map_err(failed)?;
            }
        }
        scalar => {
            w.write_event(Event::Start(BytesStart::new(name)))
                .map_err(failed)?;
            w.write_event(Event::Text(BytesText::new(&value::text(scalar))))
                .map_err(failed)?;
            w.write_event(Event::End(BytesEnd::new(name)))
                .map_err(failed)?;
        }
    }
    if w.get_ref().len() > max {
        return Err(super::TOO_LARGE.into());
    }
    Ok(())
}

/// An XML name (letters, digits, `_`, `-`, `.`, `:`; not starting with a digit, `-` or `.`).
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// Escapes text for XML content or attribute values (quick-xml's escaping).
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// An `application/x-www-form-urlencoded` body as an object of strings; a repeated name gets
/// an array of its values, in order.
pub(crate) fn read_form(data: &[u8]) -> Val {
    let mut m = Map::default();
    for (k, v) in form_urlencoded::parse(data) {
        let key = string(k.into_owned());
        let v = string(v.into_owned());
        match m.get_mut(&key) {
            Some(Val::Arr(a)) => Rc::make_mut(a).push(v),
            Some(existing) => {
                let first = std::mem::take(existing);
                *existing = Val::Arr(Rc::new(vec![first, v]));
            }
            None => {
                m.insert(key, v);
            }
        }
    }
    Val::obj(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(v: &Val) -> String {
        value::text(v).into_owned()
    }

    #[test]
    fn reads_attributes_text_and_repeated_elements() {
        let v = read(
            br#"<?xml version="1.0"?>
            <order id="7" xmlns:x="urn:x"><!-- c -->
              <x:line sku="a">2</x:line>
              <x:line sku="b"/>
              <note>fish &amp; chips &#x263A; <![CDATA[<raw>]]></note>
              <empty/>
            </order>"#,
            false,
        )
        .expect("xml");
        assert_eq!(
            show(&v),
            r##"{"order":{"@id":"7","@xmlns:x":"urn:x","x:line":[{"@sku":"a","#text":"2"},{"@sku":"b"}],"note":"fish & chips ☺ <raw>","empty":null}}"##
        );
        let v = read(br#"<s:E xmlns:s="urn:s"><s:B><r>1</r></s:B></s:E>"#, true).expect("xml");
        assert_eq!(show(&v), r#"{"E":{"B":{"r":"1"}}}"#);
    }

    #[test]
    fn refuses_malformed_documents() {
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"",
            b"<a/><b/>",
            b"text",
            b"<a>&custom;</a>",
            b"<a x='1' x='2'/>",
        ] {
            let e = read(bad, false).expect_err("refused");
            assert!(e.starts_with("invalid XML"), "{e}");
        }
    }

    #[test]
    fn writes_the_reverse_mapping() {
        let v = super::super::json::read(
            br##"{"order":{"@id":"7","line":[{"@sku":"a","#text":"2 < 3"},{"@sku":"b"}],"note":"x & y","n":null,"k":5}}"##,
        )
        .expect("json");
        let out = String::from_utf8(write(&v, usize::MAX).expect("xml")).expect("utf-8");
        assert_eq!(
            out,
            r#"<?xml version="1.0" encoding="UTF-8"?><order id="7"><line sku="a">2 &lt; 3</line><line sku="b"/><note>x &amp; y</note><n/><k>5</k></order>"#
        );
        // And back.
        let again = read(out.as_bytes(), false).expect("xml");
        assert_eq!(
            show(&again),
            r##"{"order":{"@id":"7","line":[{"@sku":"a","#text":"2 < 3"},{"@sku":"b"}],"note":"x & y","n":null,"k":"5"}}"##
        );
        for bad in [
            r#"[1]"#,
            r#"{"a":1,"b":2}"#,
            r#"{"1a":1}"#,
            r#"{"a":{"b c":1}}"#,
        ] {
            let v = super::super::json::read(bad.as_bytes()).expect("json");
            assert!(write(&v, usize::MAX).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_forms() {
        let v = read_form(b"name=Ada+L&tag=a&tag=b%26c&empty=");
        assert_eq!(show(&v), r#"{"name":"Ada L","tag":["a","b&c"],"empty":""}"#);
    }
}
