//! Checks of a route's `aggregate`: the upstreams its calls name, what their templates refer
//! to, `for_each` references, dependency cycles, the merge picks and the response headers.

use std::collections::{BTreeMap, BTreeSet};

use super::{check_duration, is_tchar, suggest, Broken};
use crate::model::aggregate::{
    body_templates, is_name, route_params, AggregateCallConfig, Step, Template, ValueRef,
};
use crate::model::{AggregateConfig, MergeConfig, RouteConfig};
use crate::{Diagnostic, FieldPath};

/// The longest `max_parallel`: more element calls in flight than this is a flood, not a fan-out.
const MAX_PARALLEL: usize = 256;
/// The largest `max_fan_out`.
const MAX_FAN_OUT: usize = 10_000;
/// The largest `max_body` and `max_answer`: an aggregate holds its answers in memory.
const MAX_BODY: u64 = 256 * 1024 * 1024;

/// What the names in a call's templates may be.
struct Names<'a> {
    calls: &'a BTreeMap<String, AggregateCallConfig>,
    params: Vec<String>,
}

pub(super) fn check_aggregate<T>(
    agg: &AggregateConfig,
    r: &RouteConfig,
    at: &FieldPath,
    upstreams: &BTreeMap<String, T>,
    broken: &Broken,
    out: &mut Vec<Diagnostic>,
) {
    let names = Names {
        calls: &agg.calls,
        params: route_params(&r.matcher.paths),
    };
    if agg.calls.is_empty() {
        out.push(Diagnostic::error(
            at.key("calls").to_string(),
            "an aggregate needs at least one call",
        ));
    }
    check_duration(
        "routes[].aggregate.timeout",
        agg.timeout.get(),
        &at.key("timeout"),
        out,
    );
    if agg.meta_key.is_empty() {
        out.push(Diagnostic::error(
            at.key("meta_key").to_string(),
            "must not be empty",
        ));
    }
    for (field, v) in [
        ("max_body", agg.max_body.0),
        ("max_answer", agg.max_answer.0),
    ] {
        if v == 0 || v > MAX_BODY {
            out.push(Diagnostic::error(
                at.key(field).to_string(),
                "must be between 1 byte and 256MiB",
            ));
        }
    }
    if agg.max_fan_out == 0 || agg.max_fan_out > MAX_FAN_OUT {
        out.push(Diagnostic::error(
            at.key("max_fan_out").to_string(),
            format!("must be between 1 and {MAX_FAN_OUT}"),
        ));
    }
    check_header_names(&agg.forward_headers, &at.key("forward_headers"), out);

    let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, call) in &agg.calls {
        let ca = at.key("calls").key(name);
        if !is_name(name) || name == "request" {
            out.push(Diagnostic::error(
                ca.to_string(),
                "call names are letters, digits, `_` and `-`, start with a letter or `_`, and are not `request`",
            ));
        }
        if names.params.contains(name) {
            out.push(Diagnostic::error(
                ca.to_string(),
                format!("{name:?} is also a path parameter of this route: rename the call"),
            ));
        }
        let mine = deps.entry(name.as_str()).or_default();
        check_call(name, call, &ca, &names, upstreams, broken, mine, out);
    }
    check_cycles(&deps, at, out);

    match &agg.merge {
        None => {}
        Some(MergeConfig::Pick(picks)) => {
            for (key, pick) in picks {
                let pa = at.key("merge").key(key);
                if *pick == "$" {
                    continue;
                }
                let Some(rest) = pick.strip_prefix("$.") else {
                    out.push(Diagnostic::error(
                        pa.to_string(),
                        format!("{pick:?}: a pick is `$.call` or `$.call.key`, or write the whole merge as a jq expression"),
                    ));
                    continue;
                };
                match ValueRef::parse(rest) {
                    Err(e) => out.push(Diagnostic::error(pa.to_string(), e)),
                    Ok(v) if !agg.calls.contains_key(&v.root) => out.push(Diagnostic::error(
                        pa.to_string(),
                        format!(
                            "{pick:?} names no call{}",
                            suggest(&v.root, agg.calls.keys())
                        ),
                    )),
                    Ok(v) if v.each_at().is_some() => out.push(Diagnostic::error(
                        pa.to_string(),
                        "`[*]` belongs in `for_each`; a pick takes one value",
                    )),
                    Ok(_) => {}
                }
            }
        }
        Some(MergeConfig::Jq(e)) if e.trim().is_empty() => {
            out.push(Diagnostic::error(
                at.key("merge").to_string(),
                "an empty jq expression",
            ));
        }
        Some(MergeConfig::Jq(_)) => {}
    }

    if let Some(h) = &agg.headers {
        let ha = at.key("headers");
        for (j, from) in h.from.iter().enumerate() {
            match agg.calls.get(from) {
                None => out.push(Diagnostic::error(
                    ha.key("from").index(j).to_string(),
                    format!("unknown call {from:?}{}", suggest(from, agg.calls.keys())),
                )),
                Some(c) if c.for_each.is_some() => out.push(Diagnostic::error(
                    ha.key("from").index(j).to_string(),
                    "a `for_each` call has one answer per element: take headers from another call",
                )),
                Some(_) => {}
            }
        }
        check_header_names(&h.allow, &ha.key("allow"), out);
        if !h.from.is_empty() && h.allow.is_empty() {
            out.push(Diagnostic::warning(
                ha.key("allow").to_string(),
                "no header is allowed, so nothing is taken from the calls in `from`",
            ));
        }
    }
}

/// One call: its upstream, method, templates (recording the calls they name in `deps`),
/// `for_each`, limits.
#[allow(clippy::too_many_arguments)]
fn check_call<'a, T>(
    name: &str,
    call: &'a AggregateCallConfig,
    at: &FieldPath,
    names: &Names<'a>,
    upstreams: &BTreeMap<String, T>,
    broken: &Broken,
    deps: &mut BTreeSet<&'a str>,
    out: &mut Vec<Diagnostic>,
) {
    if !broken.upstream(&call.upstream) && !upstreams.contains_key(&call.upstream) {
        out.push(Diagnostic::error(
            at.key("upstream").to_string(),
            format!(
                "unknown upstream {:?}{}",
                call.upstream,
                suggest(&call.upstream, upstreams.keys())
            ),
        ));
    }
    if call.method.is_empty() || !call.method.bytes().all(is_tchar) {
        out.push(Diagnostic::error(
            at.key("method").to_string(),
            format!("invalid method {:?}", call.method),
        ));
    }
    if let Some(t) = call.timeout {
        check_duration(
            "routes[].aggregate.calls.*.timeout",
            t.get(),
            &at.key("timeout"),
            out,
        );
    }
    if call.max_parallel == 0 || call.max_parallel > MAX_PARALLEL {
        out.push(Diagnostic::error(
            at.key("max_parallel").to_string(),
            format!("must be between 1 and {MAX_PARALLEL}"),
        ));
    }
    for (j, d) in call.depends_on.iter().enumerate() {
        match names.calls.get_key_value(d) {
            Some((k, _)) => {
                deps.insert(k);
            }
            None => out.push(Diagnostic::error(
                at.key("depends_on").index(j).to_string(),
                format!("unknown call {d:?}{}", suggest(d, names.calls.keys())),
            )),
        }
    }
    check_header_names(&call.forward_headers, &at.key("forward_headers"), out);

    // The element's name, when the call fans out.
    let mut element = None;
    if let Some(fe) = &call.for_each {
        let fa = at.key("for_each");
        match check_for_each(fe, name, names) {
            Ok(v) => {
                if let Some((k, _)) = names.calls.get_key_value(&v.root) {
                    deps.insert(k);
                }
                let default = v.steps.iter().rev().find_map(|s| match s {
                    Step::Key(k) => Some(k.clone()),
                    _ => None,
                });
                let chosen = call.each_as.clone().or(default);
                match chosen {
                    Some(e) if names.calls.contains_key(&e) || names.params.contains(&e) => {
                        out.push(Diagnostic::error(
                            at.key("as").to_string(),
                            format!("the element's name {e:?} is also a call or a path parameter: set another with `as`"),
                        ));
                    }
                    Some(e) if !is_name(&e) || e == "request" => out.push(Diagnostic::error(
                        at.key("as").to_string(),
                        format!("{e:?} cannot name the element: letters, digits, `_` and `-`, not `request`"),
                    )),
                    Some(e) => element = Some(e),
                    None => out.push(Diagnostic::error(
                        fa.to_string(),
                        "name the element with `as` (the reference ends in no key to name it after)",
                    )),
                }
            }
            Err(e) => out.push(Diagnostic::error(fa.to_string(), e)),
        }
    } else if call.each_as.is_some() {
        out.push(Diagnostic::error(
            at.key("as").to_string(),
            "`as` names a `for_each` element, and this call has no `for_each`",
        ));
    }

    let element = element.as_deref();
    let mut refs = |text: &str, at: FieldPath, out: &mut Vec<Diagnostic>| {
        template_refs(text, &at, name, element, names, deps, out)
    };
    if let Some(t) = refs(&call.path, at.key("path"), out) {
        let text: String = t
            .pieces
            .iter()
            .filter_map(|p| match p {
                crate::model::aggregate::TemplatePiece::Text(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        if !call.path.starts_with('/') {
            out.push(Diagnostic::error(
                at.key("path").to_string(),
                "a call's path starts with `/`",
            ));
        } else if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic() || *c == '#') {
            out.push(Diagnostic::error(
                at.key("path").to_string(),
                format!("{c:?} is not allowed in a path as written (placeholders are encoded)"),
            ));
        }
    }
    for (h, v) in &call.headers {
        let ha = at.key("headers").key(h);
        if h.is_empty() || !h.bytes().all(is_tchar) {
            out.push(Diagnostic::error(ha.to_string(), "invalid header name"));
        } else if h.eq_ignore_ascii_case("host") || h.eq_ignore_ascii_case("content-length") {
            out.push(Diagnostic::error(
                ha.to_string(),
                "the gateway sets this header itself",
            ));
        }
        if v.chars().any(|c| c.is_control() && c != '\t') {
            out.push(Diagnostic::error(
                ha.to_string(),
                "a header value has no control characters",
            ));
        }
        refs(v, ha, out);
    }
    if let Some(body) = &call.body {
        let mut texts = Vec::new();
        body_templates(body, &mut texts);
        for t in texts {
            refs(&t, at.key("body"), out);
        }
        if matches!(call.method.as_str(), "GET" | "HEAD") {
            out.push(Diagnostic::warning(
                at.key("body").to_string(),
                format!(
                    "a {} request with a body: many servers ignore or refuse it; set `method: POST`",
                    call.method
                ),
            ));
        }
    }
}

/// Parses a template of call `own`, checks what each placeholder names and records the calls
/// among them in `deps`.
#[allow(clippy::too_many_arguments)]
fn template_refs<'a>(
    text: &str,
    at: &FieldPath,
    own: &str,
    element: Option<&str>,
    names: &Names<'a>,
    deps: &mut BTreeSet<&'a str>,
    out: &mut Vec<Diagnostic>,
) -> Option<Template> {
    match Template::parse(text) {
        Err(e) => {
            out.push(Diagnostic::error(at.to_string(), e));
            None
        }
        Ok(t) => {
            for v in t.refs() {
                match check_ref(v, own, element, names) {
                    Ok(Some(call)) => {
                        deps.insert(call);
                    }
                    Ok(None) => {}
                    Err(e) => out.push(Diagnostic::error(at.to_string(), e)),
                }
            }
            Some(t)
        }
    }
}

/// A `for_each` reference: `<call>.body...[*]...` or `request.body...[*]...`, with one `[*]`.
fn check_for_each(fe: &str, own: &str, names: &Names<'_>) -> Result<ValueRef, String> {
    let v = ValueRef::parse(fe)?;
    let stars = v.steps.iter().filter(|s| **s == Step::Each).count();
    if stars != 1 {
        return Err(format!(
            "{fe:?}: `for_each` names one array with one `[*]`, such as `orders.body.items[*].id`"
        ));
    }
    if v.root != "request" && !names.calls.contains_key(&v.root) {
        return Err(format!(
            "{fe:?} names no call{} (`for_each` reads a call's answer or `request.body`)",
            suggest(&v.root, names.calls.keys())
        ));
    }
    if v.root == own {
        return Err(format!("{fe:?}: a call cannot fan out over its own answer"));
    }
    if v.steps.first() != Some(&Step::Key("body".into())) {
        return Err(format!(
            "{fe:?}: `for_each` reads a body: `{}.body.<array>[*]`",
            v.root
        ));
    }
    Ok(v)
}

/// What a placeholder of call `own` refers to: `Ok(Some(call))` for another call's answer.
fn check_ref<'a>(
    v: &ValueRef,
    own: &str,
    element: Option<&str>,
    names: &Names<'a>,
) -> Result<Option<&'a str>, String> {
    let text = &v.text;
    if v.each_at().is_some() {
        return Err(format!(
            "{{{text}}}: `[*]` belongs in `for_each`; a placeholder takes one value"
        ));
    }
    if let Some((call, _)) = names.calls.get_key_value(&v.root) {
        if call == own {
            return Err(format!(
                "{{{text}}}: a call cannot use its own answer (dependencies would form a cycle)"
            ));
        }
        let ok = match v.steps.as_slice() {
            [Step::Key(b), ..] if b == "body" => true,
            [Step::Key(s)] if s == "status" => true,
            [Step::Key(h), Step::Key(_)] if h == "headers" => true,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "{{{text}}}: take `{call}.body`, `{call}.body.<key>`, `{call}.status` or `{call}.headers.<name>`"
            ));
        }
        return Ok(Some(call));
    }
    if v.root == "request" {
        let ok = match v.steps.as_slice() {
            [Step::Key(b), ..] if b == "body" => true,
            [Step::Key(m)] if m == "method" || m == "path" => true,
            [Step::Key(q), Step::Key(_)] if q == "query" || q == "headers" => true,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "{{{text}}}: take `request.body`, `request.body.<key>`, `request.query.<name>`, `request.headers.<name>`, `request.method` or `request.path`"
            ));
        }
        return Ok(None);
    }
    if element == Some(v.root.as_str()) {
        return Ok(None);
    }
    if names.params.contains(&v.root) {
        if !v.steps.is_empty() {
            return Err(format!(
                "{{{text}}}: `{}` is a path parameter, a string: it has no keys",
                v.root
            ));
        }
        return Ok(None);
    }
    let known = names
        .calls
        .keys()
        .cloned()
        .chain(names.params.iter().cloned())
        .collect::<Vec<_>>();
    Err(format!(
        "{{{text}}} names no call, no path parameter of every path rule of this route, no `for_each` element and not `request`{}",
        suggest(&v.root, known.iter())
    ))
}

/// Dependency cycles among the calls: each reported once, at the first call on it.
fn check_cycles(deps: &BTreeMap<&str, BTreeSet<&str>>, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    // 0: not seen, 1: on the current path, 2: done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut reported = false;
    fn visit<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match state.get(n).copied().unwrap_or(0) {
            2 => return None,
            1 => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n, 1);
        path.push(n);
        for d in deps.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, deps, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    for n in deps.keys() {
        if reported {
            break;
        }
        if let Some(cycle) = visit(n, deps, &mut state, &mut Vec::new()) {
            reported = true;
            out.push(Diagnostic::error(
                at.key("calls").key(cycle[0]).key("depends_on").to_string(),
                format!(
                    "the calls depend on each other in a cycle: {}",
                    cycle.join(" -> ")
                ),
            ));
        }
    }
}

fn check_header_names(names: &[String], at: &FieldPath, out: &mut Vec<Diagnostic>) {
    for (j, h) in names.iter().enumerate() {
        if h.is_empty() || !h.bytes().all(is_tchar) {
            out.push(Diagnostic::error(
                at.index(j).to_string(),
                format!("invalid header name {h:?}"),
            ));
        }
    }
}
