//! Why a request takes the route it takes: [`RouteTable::explain`] walks the table in the order
//! [`RouteTable::find`] does and records, for every route it passes over, the first condition
//! that failed ("path /users/42 does not match prefix /orders"). The admin API's `GET /explain`
//! and the `frontdesk explain` command both use it. It is never on the request path: it walks
//! every entry of each host group in priority order, where `find` asks the group's index for
//! candidates; tests check that both always pick the same route.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

use super::{normalize_host, query_has, RequestKey, RouteTable};

/// A request to explain, owned (the admin API and the CLI build it from text).
#[derive(Clone, Debug)]
pub struct ExplainRequest {
    /// The method.
    pub method: Method,
    /// The host (from a `Host` header when one is given, as the proxy does).
    pub host: Option<String>,
    /// The path, without query.
    pub path: String,
    /// The query, without `?`.
    pub query: Option<String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// The listener it arrives on (profiles may select by listener); `None`: not known.
    pub listener: Option<String>,
}

/// Why a request to explain could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    /// Not an HTTP method token.
    #[error("invalid method {0:?}")]
    Method(String),
    /// Not `name: value` (or `name:value`), or not a valid header.
    #[error("invalid header {0:?}: expected `name: value`")]
    Header(String),
    /// Not `http(s)://host/path` or `/path`.
    #[error("invalid URL {0:?}: expected http://host/path or /path")]
    Url(String),
}

/// A route the request did not take, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The route's name.
    pub route: String,
    /// The path rule that was tried (`prefix /orders`); absent when the host ruled it out.
    pub rule: Option<String>,
    /// The first condition that failed.
    pub reason: String,
}

/// What [`RouteTable::explain`] found.
#[derive(Debug)]
pub struct TableExplanation<'a, R> {
    /// The route taken: its payload, name, path rule and the byte length `strip_prefix` removes.
    pub matched: Option<Hit<'a, R>>,
    /// Routes passed over, in the order they were considered.
    pub rejected: Vec<Rejection>,
}

/// The route a request takes.
#[derive(Debug)]
pub struct Hit<'a, R> {
    /// The route's payload.
    pub route: &'a R,
    /// The route's name.
    pub name: &'a str,
    /// The path rule that matched, as written.
    pub rule: &'a str,
    /// Byte length of the path prefix that `strip_prefix` removes.
    pub strip_len: usize,
}

/// A whole explanation, as the admin API returns it and `frontdesk explain --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The request as the router saw it.
    pub request: RequestSummary,
    /// The client profile whose routes were searched, and why; absent without profiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileChoice>,
    /// The route taken; `null` when none matches (the proxy answers 404).
    pub matched: Option<MatchedRoute>,
    /// Routes passed over before the match (or all of them), in the order considered.
    pub considered: Vec<Rejection>,
}

/// The request part of an [`Explanation`].
#[derive(Clone, Debug, Serialize)]
pub struct RequestSummary {
    /// The method.
    pub method: String,
    /// The host routed on, lowercased and without port.
    pub host: Option<String>,
    /// The path.
    pub path: String,
    /// The query, without `?`.
    pub query: Option<String>,
}

/// The route a request takes, and where it goes from there.
#[derive(Clone, Debug, Serialize)]
pub struct MatchedRoute {
    /// The route's name.
    pub route: String,
    /// The path rule that matched, as written (`prefix /users`).
    pub rule: String,
    /// Plugin kinds in the order they run (global ones included).
    pub plugins: Vec<String>,
    /// The upstream the request is forwarded to; `null` when a plugin answers.
    pub upstream: Option<String>,
    /// The path and query the upstream receives (after `strip_prefix`).
    pub upstream_path: Option<String>,
    /// What plugins would do with the request, where they can say (the cache: whether it is
    /// cacheable, its key, whether a response is stored).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<PluginNote>,
    /// The calls of an aggregate route (which has no `upstream`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aggregate: Vec<AggregateCall>,
}

/// One call of an aggregate route, as `explain` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct AggregateCall {
    /// The call's name.
    pub name: String,
    /// The upstream it calls.
    pub upstream: String,
    /// Its method.
    pub method: String,
    /// Its path and query, with the request's path parameters filled in when it names no
    /// other value (otherwise as written).
    pub path: String,
    /// Whether its failure fails the answer.
    pub required: bool,
    /// The calls it waits for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// What it fans out over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// Element calls in flight at once, for a fan-out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<usize>,
}

/// Which client profile a request takes.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileChoice {
    /// The profile; `null` for the top-level routes.
    pub name: Option<String>,
    /// Why (the condition that selected it, or why none did).
    pub reason: String,
}

/// One plugin's word on an explained request.
#[derive(Clone, Debug, Serialize)]
pub struct PluginNote {
    /// The plugin's kind.
    pub plugin: String,
    /// What it would do.
    pub note: String,
}

impl std::fmt::Display for Explanation {
    /// The human form `frontdesk explain` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.request;
        let query = r
            .query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        // The host apart from the path: glued together, "(no host)/orders" read as a path.
        let host = match r.host.as_deref() {
            Some(h) => format!("host {h}"),
            None => "no host".to_string(),
        };
        writeln!(f, "request: {} {}{query} ({host})", r.method, r.path)?;
        if let Some(p) = &self.profile {
            match &p.name {
                Some(n) => writeln!(f, "profile: {n} ({})", p.reason)?,
                None => writeln!(f, "profile: none, the top-level routes ({})", p.reason)?,
            }
        }
        match &self.matched {
            Some(m) => {
                writeln!(f, "matched: route {:?} ({})", m.route, m.rule)?;
                let plugins = if m.plugins.is_empty() {
                    "(none)".to_string()
                } else {
                    m.plugins.join(" -> ")
                };
                writeln!(f, "plugins: {plugins}")?;
                match (&m.upstream, &m.upstream_path) {
                    (Some(u), Some(p)) => writeln!(f, "upstream: {u} {p}")?,
                    _ if !m.aggregate.is_empty() => writeln!(
                        f,
                        "upstream: (none; an aggregate of {} calls)",
                        m.aggregate.len()
                    )?,
                    _ => writeln!(f, "upstream: (none; a plugin answers)")?,
                }
                for c in &m.aggregate {
                    write!(
                        f,
                        "  call {}: {} {} {}",
                        c.name, c.method, c.upstream, c.path
                    )?;
                    if let Some(fe) = &c.for_each {
                        write!(
                            f,
                            " for each {fe} (at most {} at once)",
                            c.max_parallel.unwrap_or(1)
                        )?;
                    }
                    if !c.after.is_empty() {
                        write!(f, " after {}", c.after.join(", "))?;
                    }
                    writeln!(f, " ({})", if c.required { "required" } else { "optional" })?;
                }
                for n in &m.notes {
                    writeln!(f, "{}: {}", n.plugin, n.note)?;
                }
            }
            None => writeln!(f, "matched: no route (the gateway answers 404)")?,
        }
        if !self.considered.is_empty() {
            writeln!(f, "passed over:")?;
        }
        for c in &self.considered {
            match &c.rule {
                Some(rule) => writeln!(f, "  - {:?} ({rule}): {}", c.route, c.reason)?,
                None => writeln!(f, "  - {:?}: {}", c.route, c.reason)?,
            }
        }
        Ok(())
    }
}

impl ExplainRequest {
    /// The request as plugins would see it (for their `explain`); `None` if its parts do not
    /// make a request.
    pub fn head(&self) -> Option<http::request::Parts> {
        let target = match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        };
        let mut req = http::Request::builder()
            .method(self.method.clone())
            .uri(target)
            .body(())
            .ok()?;
        *req.headers_mut() = self.headers.clone();
        if let Some(h) = &self.host {
            if let Ok(v) = http::HeaderValue::from_str(h) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        Some(req.into_parts().0)
    }

    /// A request from its parts; `path` may carry `?query`, each header is `name: value`.
    pub fn new(
        method: &str,
        host: Option<&str>,
        path: &str,
        headers: &[String],
    ) -> Result<Self, ExplainError> {
        let method = Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| ExplainError::Method(method.to_string()))?;
        let mut map = HeaderMap::new();
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| ExplainError::Header(h.clone()))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| ExplainError::Header(h.clone()))?;
            let value =
                HeaderValue::from_str(value.trim()).map_err(|_| ExplainError::Header(h.clone()))?;
            map.append(name, value);
        }
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        if !path.starts_with('/') {
            return Err(ExplainError::Url(path.to_string()));
        }
        // The proxy routes on the `Host` header when there is one, else on the URI's authority.
        let host = map
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or(host)
            .filter(|h| !h.is_empty())
            .map(str::to_string);
        Ok(ExplainRequest {
            listener: None,
            method,
            host,
            path: path.to_string(),
            query,
            headers: map,
        })
    }

    /// A request for `url`: `http://host[:port]/path?query` or just `/path?query`.
    pub fn from_url(method: &str, url: &str, headers: &[String]) -> Result<Self, ExplainError> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let (host, path) = match rest {
            Some(rest) => {
                let at = rest.find(['/', '?']).unwrap_or(rest.len());
                let (host, path) = rest.split_at(at);
                if host.is_empty() {
                    return Err(ExplainError::Url(url.to_string()));
                }
                let path = if path.starts_with('?') {
                    format!("/{path}")
                } else {
                    path.to_string()
                };
                (Some(host), path)
            }
            None if url.starts_with('/') => (None, url.to_string()),
            None => return Err(ExplainError::Url(url.to_string())),
        };
        Self::new(method, host, &path, headers)
    }

    /// The router's view of this request.
    pub fn key(&self) -> RequestKey<'_> {
        RequestKey {
            host: self.host.as_deref(),
            path: &self.path,
            query: self.query.as_deref(),
            method: &self.method,
            headers: &self.headers,
        }
    }
}

impl<R> RouteTable<R> {
    /// Explains which route `req` takes and why every route considered before it did not. Picks
    /// the same route as [`RouteTable::find`], by walking the entries `find`'s index chooses
    /// among, in the same order.
    pub fn explain(&self, req: &RequestKey<'_>) -> TableExplanation<'_, R> {
        let host = req.host.map(normalize_host);
        let mut rejected = Vec::new();
        // Routes with hosts that do not include this one are left out by the host index.
        for meta in &self.meta {
            if meta.hosts.is_empty() || host.as_deref().is_some_and(|h| host_in(h, &meta.hosts)) {
                continue;
            }
            let reason = match host.as_deref() {
                Some(h) => format!("host {h} does not match {}", meta.hosts.join(", ")),
                None => format!(
                    "the request has no host; the route needs {}",
                    meta.hosts.join(", ")
                ),
            };
            rejected.push(Rejection {
                route: meta.name.clone(),
                rule: None,
                reason,
            });
        }
        let mut lists = super::index::Lists::new();
        if let Some(h) = host.as_deref() {
            if let Some(group) = self.exact_hosts.get(h) {
                lists.push(&group.list);
            }
            for (suffix, group) in &self.wildcard_hosts {
                if h.len() > suffix.len() && h.ends_with(suffix.as_str()) {
                    lists.push(&group.list);
                }
            }
        }
        lists.push(&self.any_host.list);
        for list in lists {
            for &e in list {
                let entry = &self.entries[e];
                let name = &self.meta[entry.route].name;
                let rule = &self.entry_rules[e];
                match self.check(e, req) {
                    Ok(strip_len) => {
                        return TableExplanation {
                            matched: Some(Hit {
                                route: &self.routes[entry.route].payload,
                                name,
                                rule,
                                strip_len,
                            }),
                            rejected,
                        }
                    }
                    Err(reason) => rejected.push(Rejection {
                        route: name.clone(),
                        rule: Some(rule.clone()),
                        reason,
                    }),
                }
            }
        }
        TableExplanation {
            matched: None,
            rejected,
        }
    }

    /// Every route once, in match order: by host group (exact hosts in name order, wildcards
    /// longest suffix first, then routes without hosts) and path priority inside each; the
    /// route's declaration index comes with it.
    pub fn ranked(&self) -> Vec<(usize, &R)> {
        let mut exact: Vec<(&String, &Vec<usize>)> =
            self.exact_hosts.iter().map(|(h, g)| (h, &g.list)).collect();
        exact.sort_by(|a, b| a.0.cmp(b.0));
        let lists = exact
            .into_iter()
            .map(|(_, l)| l)
            .chain(self.wildcard_hosts.iter().map(|(_, g)| &g.list))
            .chain(std::iter::once(&self.any_host.list));
        let mut seen = vec![false; self.routes.len()];
        let mut out = Vec::new();
        for &e in lists.flatten() {
            let r = self.entries[e].route;
            if !std::mem::replace(&mut seen[r], true) {
                out.push((r, &self.routes[r].payload));
            }
        }
        out
    }

    /// `try_entry`'s checks for one entry, in its order, saying which one failed.
    fn check(&self, e: usize, req: &RequestKey<'_>) -> Result<usize, String> {
        let entry = &self.entries[e];
        let Some(strip_len) = entry.rule.matches(req.path) else {
            return Err(format!(
                "path {} does not match {}",
                req.path, self.entry_rules[e]
            ));
        };
        let cond = &self.routes[entry.route];
        if !cond.methods.is_empty() && !cond.methods.contains(req.method) {
            let allowed: Vec<&str> = cond.methods.iter().map(Method::as_str).collect();
            return Err(format!(
                "method {} is not one of {}",
                req.method,
                allowed.join(", ")
            ));
        }
        for (n, v) in &cond.headers {
            if req.headers.get_all(n).iter().any(|x| x == v) {
                continue;
            }
            let want = String::from_utf8_lossy(v.as_bytes());
            let seen: Vec<String> = req
                .headers
                .get_all(n)
                .iter()
                .map(|x| format!("{:?}", String::from_utf8_lossy(x.as_bytes())))
                .collect();
            return Err(if seen.is_empty() {
                format!("header {n} is missing; the route needs {want:?}")
            } else {
                format!("header {n} is {}, not {want:?}", seen.join(", "))
            });
        }
        for (k, v) in &cond.query {
            if query_has(req.query, k, v) {
                continue;
            }
            let seen: Vec<String> = req
                .query
                .unwrap_or("")
                .split('&')
                .filter_map(|pair| {
                    let (pk, pv) = pair.split_once('=').unwrap_or((pair, ""));
                    (pk == k).then(|| format!("{pv:?}"))
                })
                .collect();
            return Err(if seen.is_empty() {
                format!("query parameter {k} is missing; the route needs {v:?}")
            } else {
                format!("query parameter {k} is {}, not {v:?}", seen.join(", "))
            });
        }
        Ok(strip_len)
    }
}

/// Whether the normalized host `h` is one of `hosts` (exact, or `*.suffix` wildcards).
fn host_in(h: &str, hosts: &[String]) -> bool {
    hosts.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('*') {
            Some(suffix) => h.len() > suffix.len() && h.ends_with(suffix),
            None => h == pattern,
        }
    })
}

/// The path the upstream sees once `strip_prefix` removed `strip_len` bytes (always starting
/// with `/`), with the query kept.
pub fn stripped_path(path: &str, strip_len: usize, query: Option<&str>) -> String {
    let rest = path.get(strip_len..).unwrap_or("");
    let slash = if rest.starts_with('/') { "" } else { "/" };
    match query {
        Some(q) => format!("{slash}{rest}?{q}"),
        None => format!("{slash}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use frontdesk_config::load_str;

    use super::*;

    fn table(yaml_routes: &str) -> RouteTable<String> {
        let text = format!(
            "version: 1\nupstreams: {{ u: {{ targets: [{{ url: \"http://127.0.0.1:1\" }}] }} }}\nroutes:\n{yaml_routes}"
        );
        let cfg = load_str(&text, &|_| None).expect("valid").config;
        let routes = cfg.routes.iter().map(|r| (r, r.name.clone()));
        RouteTable::build(routes, &mut Vec::new()).expect("builds")
    }

    const ROUTES: &str = r#"
  - { name: orders, match: { paths: ["/orders"] }, upstream: u }
  - { name: admin, match: { hosts: [admin.example.com], paths: ["/"] }, upstream: u }
  - { name: v2, match: { paths: ["/users"], headers: { x-api-version: "2" } }, upstream: u }
  - { name: posts, match: { paths: ["/users"], methods: [POST] }, upstream: u }
  - { name: beta, match: { paths: ["/users"], query: { beta: "1" } }, upstream: u }
  - { name: wild, match: { hosts: ["*.example.org"], paths: [{ exact: /users/42 }] }, upstream: u }
  - { name: users, match: { paths: ["/users"] }, upstream: u }
"#;

    fn req(method: &str, url: &str, headers: &[&str]) -> ExplainRequest {
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        ExplainRequest::from_url(method, url, &headers).expect("request")
    }

    #[test]
    fn says_why_each_earlier_route_did_not_match() {
        let t = table(ROUTES);
        let r = req("GET", "http://api.example.com/users/42?beta=0", &[]);
        let ex = t.explain(&r.key());
        let hit = ex.matched.expect("users matches");
        assert_eq!(
            (hit.name, hit.rule, hit.strip_len),
            ("users", "prefix /users", 6)
        );
        let reasons: Vec<(&str, &str)> = ex
            .rejected
            .iter()
            .map(|r| (r.route.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "admin",
                    "host api.example.com does not match admin.example.com"
                ),
                ("wild", "host api.example.com does not match *.example.org"),
                ("orders", "path /users/42 does not match prefix /orders"),
                (
                    "v2",
                    "header x-api-version is missing; the route needs \"2\""
                ),
                ("posts", "method GET is not one of POST"),
                ("beta", "query parameter beta is \"0\", not \"1\""),
            ]
        );
    }

    #[test]
    fn explain_and_find_always_pick_the_same_route() {
        let t = table(ROUTES);
        let cases = [
            ("GET", "http://api.example.com/users/42", vec![]),
            ("POST", "/users", vec![]),
            ("GET", "/users?beta=1", vec![]),
            ("GET", "/users", vec!["x-api-version: 2"]),
            ("GET", "http://admin.example.com/anything", vec![]),
            ("GET", "http://a.example.org/users/42", vec![]),
            ("GET", "http://A.Example.ORG:8080/users/42", vec![]),
            ("GET", "/orders/1", vec![]),
            ("GET", "/nothing", vec![]),
            ("GET", "/", vec!["host: admin.example.com"]),
        ];
        for (m, url, headers) in cases {
            let r = req(m, url, &headers);
            let found = t.find(&r.key()).map(|m| (m.route.clone(), m.strip_len));
            let ex = t.explain(&r.key());
            let explained = ex.matched.map(|h| (h.route.clone(), h.strip_len));
            assert_eq!(found, explained, "{m} {url} {headers:?}");
        }
    }

    #[test]
    fn no_match_lists_every_route_considered() {
        let t = table(ROUTES);
        let ex = t.explain(&req("GET", "/nothing", &[]).key());
        assert!(ex.matched.is_none());
        assert!(ex.rejected.iter().any(
            |r| r.route == "users" && r.reason == "path /nothing does not match prefix /users"
        ));
        assert!(ex.rejected.iter().any(|r| r.route == "admin"
            && r.reason == "the request has no host; the route needs admin.example.com"));
    }

    #[test]
    fn parses_urls_and_headers() {
        let r = req("get", "https://h.example:8443?x=1", &["X-A: 1", "x-a:2"]);
        assert_eq!(r.method, Method::GET);
        assert_eq!(r.host.as_deref(), Some("h.example:8443"));
        assert_eq!((r.path.as_str(), r.query.as_deref()), ("/", Some("x=1")));
        assert_eq!(r.headers.get_all("x-a").iter().count(), 2);
        assert!(matches!(
            ExplainRequest::from_url("GET", "users", &[]),
            Err(ExplainError::Url(_))
        ));
        assert!(matches!(
            ExplainRequest::from_url("GET", "/", &["nocolon".into()]),
            Err(ExplainError::Header(_))
        ));
        assert!(matches!(
            ExplainRequest::from_url("G E T", "/", &[]),
            Err(ExplainError::Method(_))
        ));
    }

    #[test]
    fn stripped_paths_keep_a_leading_slash_and_the_query() {
        assert_eq!(stripped_path("/users/42", 6, None), "/42");
        assert_eq!(stripped_path("/users", 6, Some("a=1")), "/?a=1");
    }
}
