//! The route table: picks the route for a request by host, path, method, headers and query.
//!
//! Priority is fixed and documented (docs/configuration.md#route-priority): first by host (exact,
//! then wildcard with longer suffixes first, then routes without hosts), then by path kind (exact,
//! template, prefix with longer prefixes first, regex), then declaration order. The first route
//! whose every condition holds wins. Built once per snapshot; matching takes no locks, and each host
//! group's index (`index.rs`) keeps its cost independent of the number of routes.

mod explain;
mod index;
mod path;

use std::collections::HashMap;

use frontdesk_config::{Diagnostic, FieldPath, PathMatch, RouteConfig};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

pub use explain::{
    stripped_path, AggregateCall, ExplainError, ExplainRequest, Explanation, Hit, MatchedRoute,
    PluginNote, ProfileChoice, Rejection, RequestSummary, TableExplanation,
};
use index::{GroupIndex, Merged};
use path::{PathRule, Template};

/// A compiled route table whose routes carry a payload `R` (the snapshot's runtime route).
#[derive(Debug)]
pub struct RouteTable<R> {
    routes: Vec<Conditions<R>>,
    entries: Vec<Entry>,
    exact_hosts: HashMap<String, Group>,
    /// `(".example.org", group)`, longest suffix first.
    wildcard_hosts: Vec<(String, Group)>,
    /// Where each suffix sits in `wildcard_hosts`, so a request looks up its host's suffixes
    /// instead of trying every wildcard.
    wildcard_index: HashMap<String, usize>,
    /// True if some wildcard suffix does not start with `.` (the validator refuses those): then
    /// the wildcards are scanned instead.
    wildcard_scan: bool,
    any_host: Group,
    /// Per route, what only introspection reads ([`RouteTable::explain`]); `find` never does.
    meta: Vec<RouteMeta>,
    /// Per entry, its path rule as written (`prefix /users`), for introspection only.
    entry_rules: Vec<String>,
}

/// The entries of one host group, in match order, and the index that finds candidates among
/// them without trying each.
#[derive(Debug, Default)]
struct Group {
    /// Entry indexes, in priority order.
    list: Vec<usize>,
    /// Positions in `list` by path.
    index: GroupIndex,
}

impl Group {
    fn new(list: Vec<usize>, entries: &[Entry]) -> Group {
        let index = GroupIndex::build(list.iter().map(|&e| &entries[e].rule));
        Group { list, index }
    }
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
    /// The path rule that matched.
    rule: &'a PathRule,
}

impl<'a, R> RouteMatch<'a, R> {
    /// The path rule that matched (for its path parameters, computed only when asked for).
    pub fn rule(&self) -> MatchedRule<'a> {
        MatchedRule(self.rule)
    }
}

/// The path rule a request matched.
#[derive(Clone, Copy, Debug)]
pub struct MatchedRule<'a>(&'a PathRule);

impl MatchedRule<'_> {
    /// The path parameters of `path` (the matched request's) by name, when the rule is a
    /// template (`/users/{id}`); empty otherwise.
    pub fn path_params(&self, path: &str) -> Vec<(std::sync::Arc<str>, String)> {
        match self.0 {
            PathRule::Template(t) => t.params(path),
            _ => Vec::new(),
        }
    }
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
    pub fn build<'c>(
        routes: impl IntoIterator<Item = (&'c RouteConfig, R)>,
        warnings: &mut Vec<Diagnostic>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let routes = routes.into_iter();
        let n = routes.size_hint().0;
        let mut errs = Vec::new();
        let mut table = RouteTable {
            routes: Vec::with_capacity(n),
            entries: Vec::with_capacity(n),
            exact_hosts: HashMap::new(),
            wildcard_hosts: Vec::new(),
            wildcard_index: HashMap::new(),
            wildcard_scan: false,
            any_host: Group::default(),
            meta: Vec::with_capacity(n),
            entry_rules: Vec::with_capacity(n),
        };
        let mut names = Vec::with_capacity(n);
        // (host key, entry index); the host key decides the group an entry sorts into.
        let mut placed: Vec<(HostKey, usize)> = Vec::new();
        for (idx, (cfg, payload)) in routes.enumerate() {
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
        let mut exact_hosts: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcards: Vec<(String, Vec<usize>)> = Vec::new();
        let mut wildcard_at: HashMap<String, usize> = HashMap::new();
        let mut any_host = Vec::new();
        for (host, e) in placed {
            match host {
                HostKey::Exact(h) => exact_hosts.entry(h).or_default().push(e),
                HostKey::Wildcard(suffix) => match wildcard_at.get(&suffix) {
                    Some(&w) => wildcards[w].1.push(e),
                    None => {
                        wildcard_at.insert(suffix.clone(), wildcards.len());
                        wildcards.push((suffix, vec![e]));
                    }
                },
                HostKey::Any => any_host.push(e),
            }
        }
        // Stable: suffixes of one length keep the order they first appeared in.
        wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        let entries = &table.entries;
        table.exact_hosts = exact_hosts
            .into_iter()
            .map(|(h, list)| (h, Group::new(list, entries)))
            .collect();
        table.wildcard_hosts = wildcards
            .into_iter()
            .map(|(suffix, list)| (suffix, Group::new(list, entries)))
            .collect();
        table.wildcard_index = table
            .wildcard_hosts
            .iter()
            .enumerate()
            .map(|(i, (suffix, _))| (suffix.clone(), i))
            .collect();
        table.wildcard_scan = table
            .wildcard_hosts
            .iter()
            .any(|(suffix, _)| !suffix.starts_with('.'));
        table.any_host = Group::new(any_host, entries);
        table.shadow_warnings(&names, warnings);
        Ok(table)
    }

    /// Finds the route for a request.
    ///
    /// The cost does not grow with the number of routes: each host group's index yields the few
    /// entries whose path rule can match (regex rules aside, which are tried in turn), and those
    /// are tried in the group's priority order, exactly as a walk over the whole group would.
    pub fn find(&self, req: &RequestKey<'_>) -> Option<RouteMatch<'_, R>> {
        // Only routes with hosts need the host; most tables have none, so skip the work.
        let any_hosts = !self.exact_hosts.is_empty() || !self.wildcard_hosts.is_empty();
        let host = req.host.filter(|_| any_hosts).map(normalize_host);
        if let Some(h) = host.as_deref() {
            if let Some(group) = self.exact_hosts.get(h) {
                if let Some(m) = self.first_in(group, req) {
                    return Some(m);
                }
            }
            if !self.wildcard_hosts.is_empty() {
                if let Some(m) = self.first_wildcard(h, req) {
                    return Some(m);
                }
            }
        }
        self.first_in(&self.any_host, req)
    }

    /// The wildcard groups matching host `h`, longest suffix first.
    fn first_wildcard(&self, h: &str, req: &RequestKey<'_>) -> Option<RouteMatch<'_, R>> {
        if self.wildcard_scan {
            return self
                .wildcard_hosts
                .iter()
                .filter(|(suffix, _)| h.len() > suffix.len() && h.ends_with(suffix.as_str()))
                .find_map(|(_, group)| self.first_in(group, req));
        }
        // Every suffix starts with a dot: the candidates are the host's own dotted suffixes,
        // longest first, short of the whole host (`*.example.org` does not match `example.org`).
        h.match_indices('.')
            .filter(|&(i, _)| i > 0)
            .filter_map(|(i, _)| self.wildcard_index.get(&h[i..]))
            .find_map(|&w| self.first_in(&self.wildcard_hosts[w].1, req))
    }

    /// The first entry of `group`, in priority order, whose rule and conditions accept `req`.
    fn first_in(&self, group: &Group, req: &RequestKey<'_>) -> Option<RouteMatch<'_, R>> {
        // Kinds rank exact, template, prefix, regex: each kind's positions follow the last's.
        let ix = &group.index;
        if let Some(m) = ix
            .exact(req.path)
            .iter()
            .find_map(|&pos| self.try_entry(group.list[pos], req))
        {
            return Some(m);
        }
        let mut lists = index::Lists::new();
        ix.templates_and_prefixes(req.path, &mut lists);
        if lists.len() <= 1 {
            // One list (a table with only `/` prefixes, say) is in order already: no merge.
            let only = lists.first().copied().unwrap_or_default();
            return only
                .iter()
                .chain(ix.regexes())
                .find_map(|&pos| self.try_entry(group.list[pos], req));
        }
        Merged::new(lists)
            .chain(ix.regexes().iter().copied())
            .find_map(|pos| self.try_entry(group.list[pos], req))
    }

    /// Entry `e` if its path rule and its route's conditions accept `req`.
    fn try_entry(&self, e: usize, req: &RequestKey<'_>) -> Option<RouteMatch<'_, R>> {
        #[cfg(test)]
        tests::EXAMINED.with(|c| c.set(c.get() + 1));
        let entry = &self.entries[e];
        let strip_len = entry.rule.matches(req.path)?;
        let cond = &self.routes[entry.route];
        if !cond.methods.is_empty() && !cond.methods.contains(req.method) {
            return None;
        }
        if !cond
            .headers
            .iter()
            .all(|(n, v)| req.headers.get_all(n).iter().any(|x| x == v))
        {
            return None;
        }
        if !cond.query.iter().all(|(k, v)| query_has(req.query, k, v)) {
            return None;
        }
        Some(RouteMatch {
            route: &cond.payload,
            strip_len,
            rule: &entry.rule,
        })
    }

    /// Warns about routes every one of whose entries is covered by a higher-ranked entry of another route.
    ///
    /// For each entry, the group's index yields the earlier entries that may cover it (a
    /// superset, checked with [`PathRule::covers`]), so the check does not compare every pair.
    fn shadow_warnings(&self, names: &[String], warnings: &mut Vec<Diagnostic>) {
        let mut groups: Vec<&Group> = self.exact_hosts.values().collect();
        groups.extend(self.wildcard_hosts.iter().map(|(_, g)| g));
        groups.push(&self.any_host);
        let mut shadowed_by: Vec<Option<Option<usize>>> = vec![None; self.routes.len()];
        // shadowed_by[r]: None = no entry seen yet, Some(Some(a)) = all entries so far shadowed by a, Some(None) = reachable.
        for group in groups {
            // Equal templates and equal regexes cover each other; the index does not key them.
            let mut same: HashMap<String, Vec<usize>> = HashMap::new();
            for (pos, &e) in group.list.iter().enumerate() {
                match &self.entries[e].rule {
                    PathRule::Template(t) => same.entry(t.source()).or_default().push(pos),
                    PathRule::Regex(r) => same.entry(r.as_str().to_string()).or_default().push(pos),
                    _ => {}
                }
            }
            let ix = &group.index;
            for (pos, &e) in group.list.iter().enumerate() {
                let b = &self.entries[e];
                let mut lists = index::Lists::new();
                match &b.rule {
                    PathRule::Exact(p) => {
                        lists.push(ix.exact(p));
                        ix.templates(p, &mut lists);
                        ix.prefixes(p, &mut lists);
                        lists.push(ix.regexes());
                    }
                    PathRule::Template(t) => {
                        ix.prefixes(&t.literal_prefix(), &mut lists);
                        lists.extend(same.get(&t.source()).map(Vec::as_slice));
                    }
                    PathRule::Prefix(p) => ix.prefixes(p, &mut lists),
                    PathRule::Regex(r) => {
                        ix.match_all_prefixes(&mut lists);
                        lists.extend(same.get(r.as_str()).map(Vec::as_slice));
                    }
                }
                let by = Merged::new(lists)
                    .take_while(|&c| c < pos)
                    .map(|c| &self.entries[group.list[c]])
                    .find(|a| {
                        a.route != b.route
                            && a.rule.covers(&b.rule)
                            && self.weaker(a.route, b.route)
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
