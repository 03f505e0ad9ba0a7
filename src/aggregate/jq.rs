//! jq merges, through the jaq crates: compiled once when the snapshot is built (a syntax error
//! is a config error at `routes[i].aggregate.merge`), run on a blocking thread per answer under
//! the time bound of the `transform` plugin's jq (`plugins::transform::jq`: its built-in loops
//! tick, and the run stops at the aggregate's deadline).

use jaq_core::load::{Arena, File, Loader};
use jaq_core::Compiler;

use crate::plugins::transform::jq as bounded;

/// A compiled jq expression.
pub struct Jq {
    filter: bounded::Filter,
}

impl std::fmt::Debug for Jq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jq")
    }
}

/// The largest number of values an expression may give before it is stopped: a merge gives one.
const MAX_OUTPUTS: usize = 2;

impl Jq {
    /// Compiles `code`, which may use `$request`. The error says where and what is wrong.
    pub fn compile(code: &str) -> Result<Jq, String> {
        if let Some(name) = frontdesk_config::recursive_definition(code) {
            return Err(format!(
                "`{name}` calls itself: recursive definitions are refused, as no deadline can \
                 stop them"
            ));
        }
        let program = File { code, path: () };
        // The prelude redefines the built-in loops so that they tick (the time bound).
        let prelude = jaq_core::load::parse(frontdesk_config::JQ_PRELUDE, |p| p.defs())
            .ok_or_else(|| "the jq prelude does not parse".to_string())?;
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .chain(prelude);
        let funs = bounded::natives()
            .chain(jaq_core::funs())
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader.load(&arena, program).map_err(|errs| {
            let mut out = Vec::new();
            for (_, e) in errs {
                match e {
                    jaq_core::load::Error::Io(v) => {
                        out.extend(v.into_iter().map(|(_, m)| m));
                    }
                    jaq_core::load::Error::Lex(v) => {
                        out.extend(v.into_iter().map(|(expect, at)| {
                            let what = match expect {
                                jaq_core::load::lex::Expect::Digit => "a digit".to_string(),
                                jaq_core::load::lex::Expect::Ident => "an identifier".to_string(),
                                jaq_core::load::lex::Expect::Delim(d) => {
                                    format!("the closing of {d:?}")
                                }
                                jaq_core::load::lex::Expect::Escape => {
                                    "a string escape sequence".to_string()
                                }
                                jaq_core::load::lex::Expect::Unicode => {
                                    "a 4-digit hexadecimal code point".to_string()
                                }
                                _ => "a token".to_string(),
                            };
                            format!("expected {what} at offset {}", offset(code, at))
                        }));
                    }
                    jaq_core::load::Error::Parse(v) => {
                        out.extend(v.into_iter().map(|(expect, at)| {
                            format!(
                                "expected {} at offset {}",
                                expect.as_str(),
                                offset(code, at)
                            )
                        }));
                    }
                }
            }
            format!("invalid jq expression: {}", out.join("; "))
        })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .with_global_vars(["$request"])
            .compile(modules)
            .map_err(|errs| {
                let names: Vec<String> = errs
                    .into_iter()
                    .flat_map(|(_, v)| v)
                    .map(|(name, what)| match what {
                        jaq_core::compile::Undefined::Filter(arity) => {
                            format!("undefined filter {name}/{arity}")
                        }
                        other => format!("undefined {} {name}", other.as_str()),
                    })
                    .collect();
                format!("invalid jq expression: {}", names.join("; "))
            })?;
        Ok(Jq { filter })
    }

    /// Runs the expression on `input` (JSON text) with `$request` (JSON text) until `deadline`
    /// and returns its one output as JSON text. No output, several, an error or the deadline:
    /// the error says which.
    pub fn run(
        &self,
        input: &[u8],
        request: &[u8],
        deadline: std::time::Instant,
    ) -> Result<String, String> {
        let input = jaq_json::read::parse_single(input).map_err(|e| format!("bad input: {e}"))?;
        let request =
            jaq_json::read::parse_single(request).map_err(|e| format!("bad request: {e}"))?;
        let budget = bounded::Budget::new(deadline);
        let outputs = bounded::outputs(&self.filter, input, &[request], &budget, MAX_OUTPUTS)
            .map_err(|e| match e {
                bounded::JqError::Timeout => "the expression passed the deadline".to_string(),
                bounded::JqError::Raised(m) => format!("the expression failed: {m}"),
                bounded::JqError::Empty => "the expression gave no value".to_string(),
            })?;
        match outputs.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err("the expression gave no value".to_string()),
            _ => Err("the expression gave several values, not one".to_string()),
        }
    }
}

/// Where `at` (a slice of `code`) starts in `code`, in bytes; 0 when it is not a slice of it.
fn offset(code: &str, at: &str) -> usize {
    (at.as_ptr() as usize)
        .checked_sub(code.as_ptr() as usize)
        .filter(|o| *o <= code.len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later() -> std::time::Instant {
        std::time::Instant::now() + std::time::Duration::from_secs(5)
    }

    #[test]
    fn a_loop_stops_at_the_deadline() {
        let jq = Jq::compile("[range(1e12)] | length").expect("compiles");
        let e = jq
            .run(
                b"{}",
                b"{}",
                std::time::Instant::now() + std::time::Duration::from_millis(50),
            )
            .expect_err("stopped");
        assert!(e.contains("deadline"), "{e}");
    }

    #[test]
    fn a_merge_expression_runs_with_its_request() {
        let jq = Jq::compile("{name: .a.name, n: (.b | length), user: $request.params.user}")
            .expect("compiles");
        let out = jq
            .run(
                br#"{"a": {"name": "x"}, "b": [1, 2, 3]}"#,
                br#"{"params": {"user": "u1"}}"#,
                later(),
            )
            .expect("runs");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v, serde_json::json!({"name": "x", "n": 3, "user": "u1"}));
    }

    #[test]
    fn syntax_errors_and_unknown_filters_are_refused() {
        let e = Jq::compile("{a: .b").expect_err("unclosed");
        assert!(e.starts_with("invalid jq expression"), "{e}");
        let e = Jq::compile("nosuchfilter(1)").expect_err("unknown");
        assert!(e.contains("undefined filter nosuchfilter/1"), "{e}");
    }

    #[test]
    fn one_value_is_required() {
        let jq = Jq::compile(".a, .b").expect("compiles");
        assert!(jq.run(br#"{"a":1,"b":2}"#, b"{}", later()).is_err());
        let jq = Jq::compile("empty").expect("compiles");
        assert!(jq.run(b"{}", b"{}", later()).is_err());
        let jq = Jq::compile(".a + 1").expect("compiles");
        let e = jq
            .run(br#"{"a":"x"}"#, b"{}", later())
            .expect_err("type error");
        assert!(e.contains("failed"), "{e}");
    }
}
