//! Wording of the messages that come from libraries (serde, the YAML parser): rewritten in the
//! terms of the config file, so no message shows a Rust type (`u32`, `struct X`) or a library
//! option (`set DuplicateKeyPolicy in Options`).

/// A serde deserialization message in config terms.
pub(crate) fn serde_message(msg: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                let expected = expected_text(expected);
                let hint = if found.trim().starts_with("boolean ") && expected == "a string" {
                    // YAML 1.1 reads `y`, `n`, `yes`, `no`, `on`, `off` as booleans.
                    "; YAML reads y, n, yes, no, on and off as booleans: write it in quotes"
                } else {
                    ""
                };
                return format!("expected {expected}, found {}{hint}", found_text(found));
            }
        }
    }
    if let Some(name) = msg.strip_prefix("data did not match any variant of untagged enum ") {
        return match name.trim() {
            "ApiKeyConfig" => {
                "expected an API key (a string) or `{ sha256: <64 hex digits> }`".into()
            }
            _ => "this value does not have an accepted form; see docs/configuration.md".into(),
        };
    }
    if msg.starts_with("unknown field `true`") {
        // YAML 1.1 tools (PyYAML, Go yaml.v2, Helm) turn the key `on` into the boolean `true`.
        return format!(
            "{msg}; a YAML 1.1 tool read the key `on` as `true`: write `retry_on` instead"
        );
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        // "`fastest`, expected one of `a`, `b`": the same, called a value.
        return format!(
            "unknown value {}",
            rest.replacen(", expected", "; expected", 1)
        );
    }
    if let Some(rest) = msg.strip_prefix("invalid length ") {
        if let Some((n, expected)) = rest.split_once(", expected ") {
            return format!("expected {}, found {n} items", expected_text(expected));
        }
    }
    msg.to_string()
}

/// A YAML parser message without the parser's option names.
pub(crate) fn yaml_message(msg: &str) -> String {
    if msg.starts_with("budget breached") {
        return "the document expands to too much (aliases, nesting or size); write it out plainly"
            .into();
    }
    if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(", set ").next().unwrap_or(rest);
        return format!("duplicate key `{key}`: each key may appear once in a mapping");
    }
    if msg.starts_with("duplicate mapping key") {
        return "duplicate key: each key may appear once in a mapping".into();
    }
    if !msg.contains("Options") {
        return msg.to_string();
    }
    // Keep the sentences (and clauses) that do not name a parser option.
    let kept: Vec<&str> = msg
        .split(". ")
        .flat_map(|s| s.split(", set "))
        .filter(|s| !s.contains("Options"))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if kept.is_empty() {
        "invalid YAML".into()
    } else {
        kept.join(". ")
    }
}

/// What serde expected, in config terms.
fn expected_text(expected: &str) -> String {
    let e = expected.trim();
    let whole = |max: u128| format!("a whole number from 0 to {max}");
    match e {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" | "usize" | "u128" => whole(u64::MAX.into()),
        "i8" | "i16" | "i32" | "i64" | "isize" | "i128" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        "unit" => "nothing (null)".into(),
        _ if e.starts_with("struct ") || e.starts_with("map") => "a mapping".into(),
        _ if e.starts_with("enum ") => "one of the documented values".into(),
        _ if e.starts_with("tuple") || e.starts_with("a sequence") => "a list".into(),
        _ => e.to_string(),
    }
}

/// What serde found, in config terms.
fn found_text(found: &str) -> String {
    let f = found.trim();
    let ticked = |rest: &str| rest.trim().trim_matches('`').to_string();
    if let Some(s) = f.strip_prefix("string ") {
        return format!("the string {s}");
    }
    if let Some(n) = f.strip_prefix("integer ") {
        return ticked(n);
    }
    if let Some(n) = f.strip_prefix("floating point ") {
        return ticked(n);
    }
    if let Some(b) = f.strip_prefix("boolean ") {
        return ticked(b);
    }
    if let Some(c) = f.strip_prefix("character ") {
        return ticked(c);
    }
    match f {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" | "unit" | "null" => "nothing (null)".into(),
        "Option value" => "a value".into(),
        _ => f.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_yaml_reads_as_a_boolean_gets_a_hint_to_quote_it() {
        assert_eq!(
            serde_message("invalid type: boolean `false`, expected a string"),
            "expected a string, found false; YAML reads y, n, yes, no, on and off as booleans: \
             write it in quotes"
        );
        // Where a boolean is not what a string field got, no hint.
        assert_eq!(
            serde_message("invalid type: boolean `true`, expected u32"),
            "expected a whole number from 0 to 4294967295, found true"
        );
    }

    #[test]
    fn type_errors_speak_of_the_file() {
        assert_eq!(
            serde_message("invalid type: string \"lots\", expected u32"),
            "expected a whole number from 0 to 4294967295, found the string \"lots\""
        );
        assert_eq!(
            serde_message("invalid value: integer `-1`, expected u32"),
            "expected a whole number from 0 to 4294967295, found -1"
        );
        assert_eq!(
            serde_message("invalid type: sequence, expected struct UpstreamConfig"),
            "expected a mapping, found a list"
        );
    }

    #[test]
    fn parser_options_are_not_shown() {
        assert_eq!(
            yaml_message(
                "duplicate mapping key: version, set DuplicateKeyPolicy in Options if acceptable"
            ),
            "duplicate key `version`: each key may appear once in a mapping"
        );
        assert!(!yaml_message("binary tags are not strings. If you just use !!binary for documentation/annotation, set ignore_binary_tag_for_string in Options").contains("Options"));
    }
}
