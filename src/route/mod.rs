//! The route table: picks the route for a request by host, path, method, headers and query.
//!
//! Priority is fixed and documented (docs/configuration.md#route-priority): first by host (exact,
//! then wildcard with longer suffixes first, then routes without hosts), then by path kind (exact,
//! template, prefix with longer prefixes first, regex), then declaration order. The first route
//! whose every condition holds wins. Built once per snapshot; matching takes no locks.

mod explain;
mod path;

use std::collections::HashMap;

use frontdesk_config::{Diagnostic, FieldPath, PathMatch, RouteConfig};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

pub use explain::{
    stripped_path, ExplainError, ExplainRequest, Explanation, Hit, MatchedRoute, Rejection,
    RequestSummary, TableExplanation,
};
use path::{PathRule, Template};

/// A compiled route table whose routes carry a payload `R` (the snapshot's runtime route).
#[derive(Debug)]
pub struct RouteTable<R> {
    routes: Vec<Conditions<R>>,
    entries: Vec<Entry>,
    exact_hosts: HashMap<String, Vec<usize>>,
    /// `(".example.org", entries)`, longest suffix first.
    wildcard_hosts: Vec<(String, Vec<usize>)>,
    any_host: Vec<usize>,
    /// Per route, what only introspection reads ([`RouteTable::explain`]); `find` never does.
    meta: Vec<RouteMeta>,
    /// Per entry, its path rule as written (`prefix /users`), for introspection only.
    entry_rules: Vec<String>,
}

/// A route's name and hosts as configured.
#[derive(Debug)]
struct RouteMeta {
    name: String,
    hosts: Vec<String>,
}

/// A successful match.
#[derive(Debug)]
pub struct RouteMatch<'a, R> {
    /// The route's payload.
    pub route: &'a R,
    /// Byte length of the path prefix that `strip_prefix` removes.
    pub strip_len: usize,
}

#[derive(Debug)]
struct Conditions<R> {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    query: Vec<(String, String)>,
    payload: R,
}

#[derive(Debug)]
struct Entry {
    route: usize,
    rule: PathRule,
}

/// A request as the router sees it.
#[derive(Clone, Copy, Debug)]
pub struct RequestKey<'a> {
    /// Host without port, any case.
    pub host: Option<&'a str>,
    /// The path, without query.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// The method.
    pub method: &'a Method,
    /// All request headers.
    pub headers: &'a http::HeaderMap,
}

impl<R> RouteTable<R> {
    /// Compiles routes (already validated by `frontdesk-config`), pairing each with its payload.
    ///
    /// Returns warnings for routes that can never match because earlier-ranked routes shadow them.
    pub fn build(
        routes: impl IntoIterator<Item = (RouteConfig, R)>,
        warnings: &mut Vec<Diagnostic>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let mut errs = Vec::new();
        let mut table = RouteTable {
            routes: Vec::new(),
            entries: Vec::new(),
            exact_hosts: HashMap::new(),
            wildcard_hosts: Vec::new(),
            any_host: Vec::new(),
            meta: Vec::new(),
            entry_rules: Vec::new(),
        };
        let mut names = Vec::new();
        // (host key, entry index); the host key decides the group an entry sorts into.
        let mut placed: Vec<(HostKey, usize)> = Vec::new();
        for (idx, (cfg, payload)) in routes.into_iter().enumerate() {
            let at = FieldPath::root().key("routes").index(idx);
            let m = &cfg.matcher;
            let mut methods = Vec::new();
            for meth in &m.methods {
                match Method::from_bytes(meth.to_ascii_uppercase().as_bytes()) {
                    Ok(x) => methods.push(x),
                    Err(_) => errs.push(Diagnostic::error(
                        at.key("match.methods").to_string(),
                        format!("invalid method {meth:?}"),
                    )),
                }
            }
            let mut headers = Vec::new();
            for (k, v) in &m.headers {
                match (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    (Ok(n), Ok(val)) => headers.push((n, val)),
                    _ => errs.push(Diagnostic::error(
                        at.key("match.headers").key(k).to_string(),
                        "invalid header",
                    )),
                }
            }
            let query = m
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let rules: Vec<PathRule> = if m.paths.is_empty() {
                vec![PathRule::Prefix("/".into())]
            } else {
                m.paths
                    .iter()
                    .enumerate()
                    .filter_map(|(j, p)| match p {
                        PathMatch::Exact(s) => Some(PathRule::Exact(s.clone())),
                        PathMatch::Prefix(s) => Some(PathRule::Prefix(s.clone())),
                        PathMatch::Template(s) => Some(PathRule::Template(Template::parse(s))),
                        PathMatch::Regex(s) => match Regex::new(s) {
                            Ok(r) => Some(PathRule::Regex(r)),
                            Err(e) => {
                                errs.push(Diagnostic::error(
                                    at.key("match").key("paths").index(j).to_string(),
                                    format!("invalid regex: {e}"),
                                ));
                                None
                            }
                        },
                    })
                    .collect()
            };
            let hosts: Vec<HostKey> = if m.hosts.is_empty() {
                vec![HostKey::Any]
            } else {
                m.hosts.iter().map(|h| HostKey::parse(h)).collect()
            };
            table.routes.push(Conditions {
                methods,
                headers,
                query,
                payload,
            });
            names.push(cfg.name.clone());
            table.meta.push(RouteMeta {
                name: cfg.name.clone(),
                hosts: m.hosts.clone(),
            });
            let first_rule = table.entries.len();
            let written: Vec<String> = if m.paths.is_empty() {
                vec!["prefix /".into()]
            } else {
                m.paths
                    .iter()
                    .map(|p| format!("{} {}", p.kind(), p.pattern()))
                    .collect()
            };
            // With an invalid regex the lists differ in length, but then the build fails below.
            for (rule, written) in rules.into_iter().zip(written) {
                table.entries.push(Entry { route: idx, rule });
                table.entry_rules.push(written);
            }
            let last_rule = table.entries.len();
            for h in hosts {
                for e in first_rule..last_rule {
                    placed.push((h.clone(), e));
                }
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        // Sort by path priority; the group (host) comes from where the entry index is stored.
        let entries = &table.entries;
        placed.sort_by(|(_, a), (_, b)| {
            let (ea, eb) = (&entries[*a], &entries[*b]);
            ea.rule
                .kind_rank()
                .cmp(&eb.rule.kind_rank())
                .then(eb.rule.prefix_len().cmp(&ea.rule.prefix_len()))
                .then(ea.route.cmp(&eb.route))
                .then(a.cmp(b))
        });
        for (host, e) in &placed {
            match host {
                HostKey::Exact(h) => table.exact_hosts.entry(h.clone()).or_default().push(*e),
                HostKey::Wildcard(suffix) => {
                    match table.wildcard_hosts.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, list)) => list.push(*e),
                        None => table.wildcard_hosts.push((suffix.clone(), vec![*e])),
                    }
                }
                HostKey::Any => table.any_host.push(*e),
            }
        }
        table
            .wildcard_hosts
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        table.shadow_warnings(&names, warnings);
        Ok(table)
    }

    /// Finds the route for a request.
    pub fn find(&self, req: &RequestKey<'_>) -> Option<RouteMatch<'_, R>> {
        // Only routes with hosts need the host; most tables have none, so skip the work.
        let any_hosts = !self.exact_hosts.is_empty() || !self.wildcard_hosts.is_empty();
        let host = req.host.filter(|_| any_hosts).map(normalize_host);
        if let Some(h) = host.as_deref() {
            if let Some(list) = self.exact_hosts.get(h) {
                if let Some(m) = self.first_in(list, req) {
                    return Some(m);
                }
            }
            for (suffix, list) in &self.wildcard_hosts {
                if h.len() > suffix.len() && h.ends_with(suffix.as_str()) {
                    if let Some(m) = self.first_in(list, req) {
                        return Some(m);
                    }
                }
            }
        }
        self.first_in(&self.any_host, req)
    }

    fn first_in(&self, list: &[usize], req: &RequestKey<'_>) -> Option<RouteMatch<'_, R>> {
        for &e in list {
            let entry = &self.entries[e];
            let Some(strip_len) = entry.rule.matches(req.path) else {
                continue;
            };
            let cond = &self.routes[entry.route];
            if !cond.methods.is_empty() && !cond.methods.contains(req.method) {
                continue;
            }
            if !cond
                .headers
                .iter()
                .all(|(n, v)| req.headers.get_all(n).iter().any(|x| x == v))
            {
                continue;
            }
            if !cond.query.iter().all(|(k, v)| query_has(req.query, k, v)) {
                continue;
            }
            return Some(RouteMatch {
                route: &cond.payload,
                strip_len,
            });
        }
        None
    }

    /// Warns about routes every one of whose entries is covered by a higher-ranked entry of another route.
    fn shadow_warnings(&self, names: &[String], warnings: &mut Vec<Diagnostic>) {
        let mut groups: Vec<&Vec<usize>> = self.exact_hosts.values().collect();
        groups.extend(self.wildcard_hosts.iter().map(|(_, l)| l));
        groups.push(&self.any_host);
        let mut shadowed_by: Vec<Option<Option<usize>>> = vec![None; self.routes.len()];
        // shadowed_by[r]: None = no entry seen yet, Some(Some(a)) = all entries so far shadowed by a, Some(None) = reachable.
        for list in groups {
            for (pos, &e) in list.iter().enumerate() {
                let b = &self.entries[e];
                let by = list[..pos].iter().map(|&x| &self.entries[x]).find(|a| {
                    a.route != b.route && a.rule.covers(&b.rule) && self.weaker(a.route, b.route)
                });
                let slot = &mut shadowed_by[b.route];
                *slot = match (*slot, by) {
                    (None, Some(a)) => Some(Some(a.route)),
                    (Some(Some(x)), Some(_)) => Some(Some(x)),
                    _ => Some(None),
                };
            }
        }
        for (r, s) in shadowed_by.iter().enumerate() {
            if let Some(Some(a)) = s {
                warnings.push(Diagnostic::warning(
                    FieldPath::root().key("routes").index(r).to_string(),
                    format!("route {:?} can never match: route {:?} (routes[{a}]) ranks higher and takes every request it would match", names[r], names[*a]),
                ));
            }
        }
    }

    /// True if route `a`'s method, header and query conditions accept everything route `b`'s do.
    fn weaker(&self, a: usize, b: usize) -> bool {
        let (a, b) = (&self.routes[a], &self.routes[b]);
        let methods = a.methods.is_empty()
            || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
        methods
            && a.headers.iter().all(|h| b.headers.contains(h))
            && a.query.iter().all(|q| b.query.contains(q))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HostKey {
    Exact(String),
    /// The suffix including the leading dot: `*.example.org` is `.example.org`.
    Wildcard(String),
    Any,
}

impl HostKey {
    fn parse(h: &str) -> HostKey {
        let h = h.to_ascii_lowercase();
        match h.strip_prefix('*') {
            Some(suffix) => HostKey::Wildcard(suffix.to_string()),
            None => HostKey::Exact(h),
        }
    }
}

/// Lowercases and drops the port (and IPv6 brackets' port) from a `Host` value.
pub fn normalize_host(h: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if h.starts_with('[') {
        match h.find(']') {
            Some(end) => &h[..=end],
            None => h,
        }
    } else {
        match h.rfind(':') {
            Some(i) => &h[..i],
            None => h,
        }
    };
    let bare = without_port.trim_end_matches('.');
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(bare.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(bare)
    }
}

fn query_has(query: Option<&str>, key: &str, value: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            k == key && v == value
        })
    })
}

#[cfg(test)]
mod tests;
