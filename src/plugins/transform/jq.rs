//! jq through jaq: expressions compiled once per config generation, run with a time bound (the
//! `transform` plugin's, and aggregate merges').
//!
//! jaq has no interruption of its own, so the bound is cooperative: the built-in loops
//! (`repeat`, `recurse`, `while`, `until`, redefined in `frontdesk_config::JQ_PRELUDE`) call
//! the native `_fd_tick` on every turn, `range` is replaced by a native that ticks on every
//! element, and the runner checks between outputs. A tick past the deadline raises an error
//! (and marks the run as timed out, so a `try` in the expression cannot hide it). A loop
//! written as a recursive `def` of one's own is refused at load (`frontdesk_config::recursive_definition`).

use std::cell::Cell;
use std::time::Instant;

use jaq_core::box_iter::box_once;
use jaq_core::data::HasLut;
use jaq_core::native::{run, v, Fun};
use jaq_core::{Cv, DataT, Error, Exn, Lut, RunPtr, ValXs, Vars};
use jaq_json::Val;

/// The data kind of transform filters: jaq values, and the run's [`Budget`] next to the
/// program.
pub(crate) struct Jq;

impl DataT for Jq {
    type V<'a> = Val;
    type Data<'a> = RunData<'a>;
}

/// What a running filter can reach: its program and its budget.
#[derive(Clone)]
pub(crate) struct RunData<'a> {
    lut: &'a Lut<Jq>,
    budget: &'a Budget,
}

impl<'a> HasLut<'a, Jq> for RunData<'a> {
    fn lut(&self) -> &'a Lut<Jq> {
        self.lut
    }
}

/// A compiled expression.
pub(crate) type Filter = jaq_core::Filter<Jq>;

/// The time bound of the jq expressions of one body.
pub(crate) struct Budget {
    deadline: Instant,
    ticks: Cell<u32>,
    expired: Cell<bool>,
}

impl Budget {
    pub(crate) fn new(deadline: Instant) -> Budget {
        Budget {
            deadline,
            ticks: Cell::new(0),
            expired: Cell::new(false),
        }
    }

    /// Counts a step; false once the deadline has passed (the clock is read every 256 steps).
    fn tick(&self) -> bool {
        let n = self.ticks.get().wrapping_add(1);
        self.ticks.set(n);
        if n.is_multiple_of(256) {
            self.check();
        }
        !self.expired.get()
    }

    /// Reads the clock; false once the deadline has passed.
    pub(crate) fn check(&self) -> bool {
        if Instant::now() >= self.deadline {
            self.expired.set(true);
        }
        !self.expired.get()
    }
}

fn timed_out<'a>() -> Exn<'a, Val> {
    Exn::from(Error::str("the jq time bound passed"))
}

fn tick(cv: Cv<'_, Jq>) -> ValXs<'_, Val> {
    if cv.0.data().budget.tick() {
        box_once(Ok(cv.1))
    } else {
        box_once(Err(timed_out()))
    }
}

/// `range($from; $upto; $by)`, as jaq's own, with a tick per element.
fn range(mut cv: Cv<'_, Jq>) -> ValXs<'_, Val> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let by = cv.0.pop_var();
    let to = cv.0.pop_var();
    let from = cv.0.pop_var();
    let budget = cv.0.data().budget;
    let cmp = by.partial_cmp(&Val::from(0isize)).unwrap_or(Equal);
    let mut next = Some(from);
    Box::new(std::iter::from_fn(move || {
        let x = next.take()?;
        let go = match cmp {
            Greater => x < to,
            Less => x > to,
            Equal => x != to,
        };
        if !go {
            return None;
        }
        if !budget.tick() {
            return Some(Err(timed_out()));
        }
        match x.clone() + by.clone() {
            Ok(n) => next = Some(n),
            Err(e) => return Some(Err(Exn::from(e))),
        }
        Some(Ok(x))
    }))
}

/// The natives the time bound needs (the tick of the built-in loops, a ticking `range`): they go
/// first, before jaq's own.
pub(crate) fn natives() -> impl Iterator<Item = Fun<Jq>> {
    let tick: RunPtr<Jq> = tick;
    let range: RunPtr<Jq> = range;
    [
        run::<Jq>((frontdesk_config::JQ_TICK, v(0), tick)),
        run::<Jq>(("range", v(3), range)),
    ]
    .into_iter()
}

/// The global variables of a request transform's expressions.
pub(crate) const REQUEST_VARS: &[&str] = &["$request"];
/// The global variables of a response transform's expressions.
pub(crate) const RESPONSE_VARS: &[&str] = &["$request", "$response"];

/// Compiles `code` with the given global variables.
pub(crate) fn compile(code: &str, vars: &[&'static str]) -> Result<Filter, String> {
    frontdesk_config::compile_jq::<Jq>(code, vars, natives())
}

/// Why an expression gave no value.
#[derive(Debug)]
pub(crate) enum JqError {
    /// The time bound passed.
    Timeout,
    /// The expression raised an error (its text may quote the body: show it only to whom
    /// sent the body, never log it).
    Raised(String),
    /// It produced no output.
    Empty,
}

/// Runs `f` on `input` with the global variables `vars` (in the order they were compiled
/// with) and returns its first output.
pub(crate) fn first(f: &Filter, input: Val, vars: &[Val], budget: &Budget) -> Result<Val, JqError> {
    let mut out = outputs(f, input, vars, budget, 1)?;
    out.pop().ok_or(JqError::Empty)
}

/// Runs `f` as [`first`] does and returns up to `max` of its outputs (none is no error here).
pub(crate) fn outputs(
    f: &Filter,
    input: Val,
    vars: &[Val],
    budget: &Budget,
    max: usize,
) -> Result<Vec<Val>, JqError> {
    if !budget.check() {
        return Err(JqError::Timeout);
    }
    let data = RunData {
        lut: &f.lut,
        budget,
    };
    let ctx = jaq_core::Ctx::<Jq>::new(data, Vars::new(vars.iter().cloned()));
    let mut out = Vec::new();
    for o in f.id.run((ctx, input)).take(max) {
        match o {
            Ok(v) => out.push(v),
            Err(exn) => {
                if budget.expired.get() {
                    return Err(JqError::Timeout);
                }
                return Err(match exn.get_err() {
                    Ok(e) => JqError::Raised(e.to_string()),
                    // `halt` (or a stray control exception) ends the expression, never the process.
                    Err(_) => JqError::Raised("the expression halted".into()),
                });
            }
        }
    }
    if budget.expired.get() || !budget.check() {
        return Err(JqError::Timeout);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn eval(code: &str, input: &str) -> Result<String, JqError> {
        let f = compile(code, REQUEST_VARS).expect("compiles");
        let input = super::super::json::read(input.as_bytes()).expect("json");
        let budget = Budget::new(Instant::now() + Duration::from_secs(5));
        let req = super::super::json::read(br#"{"method":"GET"}"#).expect("json");
        first(&f, input, &[req], &budget).map(|v| super::super::value::text(&v).into_owned())
    }

    #[test]
    fn runs_with_the_std_library_and_the_context() {
        assert_eq!(
            eval(
                "{n: (.items | map(.p) | add), m: $request.method}",
                r#"{"items":[{"p":1},{"p":2}]}"#
            )
            .expect("runs"),
            r#"{"n":3,"m":"GET"}"#
        );
        assert_eq!(eval("[range(3)]", "null").expect("runs"), "[0,1,2]");
        assert_eq!(
            eval("[limit(3; repeat(1))]", "null").expect("runs"),
            "[1,1,1]"
        );
        assert!(matches!(eval("empty", "null"), Err(JqError::Empty)));
        assert!(matches!(eval(".a.b", "[1]"), Err(JqError::Raised(_))));
        assert!(matches!(eval("halt", "null"), Err(JqError::Raised(_))));
    }

    #[test]
    fn compile_errors_say_where() {
        let e = compile(".a | ", REQUEST_VARS).err().expect("refused");
        assert!(e.starts_with("invalid jq"), "{e}");
        let e = compile("nosuchfn(1)", REQUEST_VARS).err().expect("refused");
        assert!(e.contains("nosuchfn") && e.contains("column 1"), "{e}");
        assert!(compile("$response", REQUEST_VARS).is_err());
        assert!(compile("$response", RESPONSE_VARS).is_ok());
    }

    #[test]
    fn endless_loops_stop_at_the_time_bound() {
        for code in [
            "[repeat(1)] | length",
            "[range(1e12)] | length",
            "last(range(0; infinite))",
            "[recurse(. + 1)] | length",
            "until(false; .)",
            "try ([repeat(1)] | length) catch 0",
        ] {
            let f = compile(code, REQUEST_VARS).expect("compiles");
            let budget = Budget::new(Instant::now() + Duration::from_millis(50));
            let started = Instant::now();
            let r = first(&f, Val::from(0isize), &[Val::Null], &budget);
            assert!(matches!(r, Err(JqError::Timeout)), "{code}: {r:?}");
            assert!(started.elapsed() < Duration::from_secs(5), "{code}");
        }
    }
}
