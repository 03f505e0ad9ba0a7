//! JSON in and out of [`Val`].
//!
//! Read with serde_json (its nesting limit of 128 keeps a hostile body from exhausting the
//! stack) into jaq's `Val`. Written by hand rather than with jaq's printer: that one prints
//! values JSON has no form for (`nan`, byte strings) as they are, which would send invalid JSON;
//! here non-finite numbers become `null` and byte strings text, and the output stops at a cap.

use std::io::Write as _;

use jaq_json::{Num, Val};
use serde::Deserialize as _;

/// The deepest nesting written (reading stops at 128 already; a jq result may go deeper).
const MAX_DEPTH: usize = 512;

/// Parses a JSON document; the error says where it broke, never what it read.
pub(crate) fn read(data: &[u8]) -> Result<Val, String> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let v = Val::deserialize(&mut de).map_err(|e| format!("invalid JSON: {e}"))?;
    de.end().map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(v)
}

/// Why a value could not be written.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// The output passed the cap.
    TooLarge,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// Writes `v` as compact JSON to `out`, failing once `out` holds more than `max` bytes.
pub(crate) fn write(v: &Val, out: &mut Vec<u8>, max: usize) -> Result<(), WriteError> {
    write_at(v, out, max, 0)
}

fn write_at(v: &Val, out: &mut Vec<u8>, max: usize, depth: usize) -> Result<(), WriteError> {
    if depth > MAX_DEPTH {
        return Err(WriteError::TooDeep);
    }
    match v {
        Val::Null => out.extend_from_slice(b"null"),
        Val::Bool(true) => out.extend_from_slice(b"true"),
        Val::Bool(false) => out.extend_from_slice(b"false"),
        Val::Num(n) => write_num(n, out),
        Val::TStr(b) | Val::BStr(b) => write_str(&String::from_utf8_lossy(b), out),
        Val::Arr(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_at(x, out, max, depth + 1)?;
                if out.len() > max {
                    return Err(WriteError::TooLarge);
                }
            }
            out.push(b']');
        }
        Val::Obj(m) => {
            out.push(b'{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match k {
                    Val::TStr(b) | Val::BStr(b) => write_str(&String::from_utf8_lossy(b), out),
                    // JSON keys are strings: a jq object keyed otherwise gets its key's text.
                    other => write_str(&super::value::text(other), out),
                }
                out.push(b':');
                write_at(x, out, max, depth + 1)?;
                if out.len() > max {
                    return Err(WriteError::TooLarge);
                }
            }
            out.push(b'}');
        }
    }
    if out.len() > max {
        return Err(WriteError::TooLarge);
    }
    Ok(())
}

fn write_num(n: &Num, out: &mut Vec<u8>) {
    match n {
        Num::Float(f) if !f.is_finite() => out.extend_from_slice(b"null"),
        Num::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // serde_json's escaping: the same as every other JSON the gateway writes.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(s: &str) -> String {
        let v = read(s.as_bytes()).expect("json");
        let mut out = Vec::new();
        write(&v, &mut out, usize::MAX).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn round_trips_in_order() {
        assert_eq!(
            round(r#"{"z":1,"a":[true,null,"x\"y\n",1.5,-3],"m":{}}"#),
            r#"{"z":1,"a":[true,null,"x\"y\n",1.5,-3],"m":{}}"#
        );
    }

    #[test]
    fn refuses_bad_json_and_caps_output() {
        assert!(read(b"{\"a\":").expect_err("eof").contains("invalid JSON"));
        assert!(read(b"{} x").is_err(), "trailing data");
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(read(deep.as_bytes()).is_err(), "nesting limit");
        let v = read(br#"["aaaaaaaaaa","bbbbbbbbbb"]"#).expect("json");
        let mut out = Vec::new();
        assert_eq!(write(&v, &mut out, 10), Err(WriteError::TooLarge));
        let mut out = Vec::new();
        write(&Val::from(f64::NAN), &mut out, 100).expect("nan");
        assert_eq!(out, b"null");
    }
}
