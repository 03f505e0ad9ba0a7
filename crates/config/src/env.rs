//! `${VAR}` and `${VAR:-default}` substitution in every scalar of the parsed document.
//!
//! Substitution runs on the parsed tree, not the raw text, so comments and keys are never touched
//! and a value can never inject YAML structure. `$$` is a literal `$`.

use serde_json::Value;

use crate::{Diagnostic, FieldPath};

/// Replaces variables in every string scalar of `value`, in place.
///
/// A scalar that is exactly one `${...}` expression is re-typed after substitution (so
/// `worker_threads: ${THREADS:-0}` yields the number 0); other scalars stay strings.
pub(crate) fn substitute(
    value: &mut Value,
    at: &FieldPath,
    lookup: &dyn Fn(&str) -> Option<String>,
    errs: &mut Vec<Diagnostic>,
) {
    match value {
        Value::String(s) => {
            if !s.contains('$') {
                return;
            }
            let whole = s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
            match expand(s, lookup) {
                Ok(out) => {
                    *value = if whole {
                        retype(out)
                    } else {
                        Value::String(out)
                    };
                }
                Err(msg) => errs.push(Diagnostic::error(at.to_string(), msg)),
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, &at.index(i), lookup, errs);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                substitute(v, &at.key(k), lookup, errs);
            }
        }
        _ => {}
    }
}

/// Expands one string.
pub(crate) fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated variable reference in {s:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.find(":-") {
                Some(i) => (&expr[..i], Some(&expr[i + 2..])),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in {s:?}"));
            }
            match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name:?} is not set and has no default (write ${{{name}:-default}})"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Types a substituted scalar the way a plain YAML scalar would be typed.
fn retype(s: String) -> Value {
    match s.as_str() {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "null" | "~" => return Value::Null,
        _ => {}
    }
    if let Ok(n) = s.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(n) = s.parse::<u64>() {
        return Value::from(n);
    }
    if s.contains('.') {
        if let Ok(f) = s.parse::<f64>() {
            if let Some(n) = serde_json::Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    Value::String(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_defaults_and_escapes() {
        assert_eq!(
            expand("http://${HOST}:80", &env).as_deref(),
            Ok("http://db.internal:80")
        );
        assert_eq!(expand("${MISSING:-x}", &env).as_deref(), Ok("x"));
        assert_eq!(
            expand("${EMPTY:-fallback}", &env).as_deref(),
            Ok("fallback")
        );
        assert_eq!(expand("cost $$5", &env).as_deref(), Ok("cost $5"));
    }

    #[test]
    fn unset_variable_without_default_is_an_error() {
        let err = expand("${MISSING}", &env).unwrap_err();
        assert!(err.contains("MISSING"), "{err}");
    }

    #[test]
    fn whole_scalar_reference_is_retyped() {
        let mut v = serde_json::json!({"n": "${N:-4}", "s": "x${N:-4}"});
        let mut errs = vec![];
        substitute(&mut v, &FieldPath::root(), &env, &mut errs);
        assert!(errs.is_empty());
        assert_eq!(v["n"], serde_json::json!(4));
        assert_eq!(v["s"], serde_json::json!("x4"));
    }
}
