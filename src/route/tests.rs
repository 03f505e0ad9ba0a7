//! Route table tests: priority by host and path kind, conditions, shadowing warnings.

use frontdesk_config::load_str;
use http::{HeaderMap, Method};

use super::*;

fn table(yaml_routes: &str) -> (RouteTable<String>, Vec<Diagnostic>) {
    let text = format!(
        "version: 1\nupstreams: {{ u: {{ targets: [{{ url: \"http://127.0.0.1:1\" }}] }} }}\nroutes:\n{yaml_routes}"
    );
    let cfg = load_str(&text, &|_| None).expect("valid").config;
    let mut warnings = Vec::new();
    let routes = cfg.routes.iter().map(|r| (r, r.name.clone()));
    let t = RouteTable::build(routes, &mut warnings).expect("builds");
    (t, warnings)
}

fn find<'a>(t: &'a RouteTable<String>, host: Option<&str>, path: &str) -> Option<&'a str> {
    let headers = HeaderMap::new();
    let (path, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let key = RequestKey {
        host,
        path,
        query,
        method: &Method::GET,
        headers: &headers,
    };
    t.find(&key).map(|m| m.route.as_str())
}

#[test]
fn exact_host_beats_wildcard_beats_any_host() {
    let (t, _) = table(
        r#"
  - { name: any, match: { paths: [{ exact: /x }] }, upstream: u }
  - { name: wild, match: { hosts: ["*.example.org"], paths: ["/"] }, upstream: u }
  - { name: exact, match: { hosts: ["a.example.org"], paths: ["/"] }, upstream: u }
"#,
    );
    assert_eq!(find(&t, Some("a.example.org:8080"), "/x"), Some("exact"));
    assert_eq!(
        find(&t, Some("A.Example.ORG."), "/x"),
        Some("exact"),
        "case and trailing dot"
    );
    assert_eq!(find(&t, Some("b.a.example.org"), "/x"), Some("wild"));
    assert_eq!(find(&t, Some("example.org"), "/x"), Some("any"));
    assert_eq!(find(&t, None, "/y"), None);
}

#[test]
fn path_kinds_rank_exact_template_prefix_regex() {
    let (t, _) = table(
        r#"
  - { name: re, match: { paths: [{ regex: "^/o" }] }, upstream: u }
  - { name: short, match: { paths: ["/orders"] }, upstream: u }
  - { name: long, match: { paths: ["/orders/special"] }, upstream: u }
  - { name: tpl, match: { paths: [{ template: "/orders/{id}" }] }, upstream: u }
  - { name: ex, match: { paths: [{ exact: /orders/latest }] }, upstream: u }
"#,
    );
    assert_eq!(find(&t, None, "/orders/latest"), Some("ex"));
    assert_eq!(find(&t, None, "/orders/7"), Some("tpl"));
    assert_eq!(find(&t, None, "/orders/special/1"), Some("long"));
    assert_eq!(find(&t, None, "/orders/7/items"), Some("short"));
    assert_eq!(find(&t, None, "/other"), Some("re"));
}

#[test]
fn query_conditions_must_hold() {
    let (t, _) = table(
        r#"
  - { name: beta, match: { paths: ["/"], query: { beta: "1" } }, upstream: u }
  - { name: main, match: { paths: ["/"] }, upstream: u }
"#,
    );
    assert_eq!(find(&t, None, "/a?x=2&beta=1"), Some("beta"));
    assert_eq!(find(&t, None, "/a?beta=2"), Some("main"));
}

#[test]
fn warns_about_a_route_that_can_never_match() {
    let (_, warnings) = table(
        r#"
  - { name: all, match: { paths: ["/api"] }, upstream: u }
  - { name: dead, match: { paths: ["/api"], methods: [GET] }, upstream: u }
  - { name: alive, match: { paths: ["/apix"] }, upstream: u }
"#,
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].path, "routes[1]");
    assert!(warnings[0].message.contains("\"all\""));
}

thread_local! {
    /// Entries whose path rule `find` tried on this thread (counted by the matcher in tests).
    pub(super) static EXAMINED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `find`, also returning how many entries it tried.
fn find_counting<'a>(
    t: &'a RouteTable<String>,
    host: Option<&str>,
    path: &str,
) -> (Option<&'a str>, usize) {
    EXAMINED.with(|c| c.set(0));
    let found = find(t, host, path);
    (found, EXAMINED.with(|c| c.get()))
}

/// 10,000 routes, a third each of prefix, exact and template rules, some of them on hosts.
fn large_table() -> RouteTable<String> {
    let mut yaml = String::new();
    for i in 0..10_000 {
        let path = match i % 3 {
            0 => format!("\"/svc{i}/api\""),
            1 => format!("{{ exact: /svc{i}/item }}"),
            _ => format!("{{ template: \"/svc{i}/orders/{{id}}\" }}"),
        };
        let hosts = match i % 5 {
            0 => "hosts: [\"*.example.org\"], ",
            1 => "hosts: [api.example.com], ",
            _ => "",
        };
        yaml.push_str(&format!(
            "  - {{ name: r{i}, match: {{ {hosts}paths: [{path}] }}, upstream: u }}\n"
        ));
    }
    table(&yaml).0
}

#[test]
fn matching_tries_a_handful_of_entries_whatever_the_table_size() {
    let t = large_table();
    let host_of = |i: usize| match i % 5 {
        0 => Some("a.example.org"),
        1 => Some("api.example.com"),
        _ => None,
    };
    let cases = [
        (0, "/svc0/api/x"),
        (9999, "/svc9999/api"),
        (1, "/svc1/item"),
        (9997, "/svc9997/item"),
        (2, "/svc2/orders/7"),
        (9998, "/svc9998/orders/7"),
        (5001, "/svc5001/api/deep/path"),
    ];
    for (i, path) in cases {
        let (found, tried) = find_counting(&t, host_of(i), path);
        assert_eq!(found, Some(format!("r{i}").as_str()), "{path}");
        assert!(tried <= 2, "{path}: tried {tried} entries");
    }
    for (host, path) in [
        (None, "/nothing"),
        (Some("a.example.org"), "/svc1/item/x"),
        (Some("api.example.com"), "/svc2/orders"),
    ] {
        let (found, tried) = find_counting(&t, host, path);
        assert_eq!(found, None, "{path}");
        assert!(tried <= 2, "{path}: tried {tried} entries");
    }
}

/// The matcher as a plain walk: every entry of each host group in priority order, no index.
/// The indexed `find` must always agree with it.
fn find_linear<'a>(t: &'a RouteTable<String>, req: &RequestKey<'_>) -> Option<(&'a str, usize)> {
    let host = req.host.map(normalize_host);
    let mut groups: Vec<&Group> = Vec::new();
    if let Some(h) = host.as_deref() {
        groups.extend(t.exact_hosts.get(h));
        groups.extend(
            t.wildcard_hosts
                .iter()
                .filter(|(s, _)| h.len() > s.len() && h.ends_with(s.as_str()))
                .map(|(_, g)| g),
        );
    }
    groups.push(&t.any_host);
    groups
        .iter()
        .flat_map(|g| g.list.iter())
        .find_map(|&e| t.try_entry(e, req))
        .map(|m| (m.route.as_str(), m.strip_len))
}

/// The shadowing check as it was first written: every entry against every earlier one.
fn shadowed_linear(t: &RouteTable<String>) -> Vec<Option<Option<usize>>> {
    let mut groups: Vec<&Group> = t.exact_hosts.values().collect();
    groups.extend(t.wildcard_hosts.iter().map(|(_, g)| g));
    groups.push(&t.any_host);
    let mut shadowed_by: Vec<Option<Option<usize>>> = vec![None; t.routes.len()];
    for g in groups {
        for (pos, &e) in g.list.iter().enumerate() {
            let b = &t.entries[e];
            let by = g.list[..pos].iter().map(|&x| &t.entries[x]).find(|a| {
                a.route != b.route && a.rule.covers(&b.rule) && t.weaker(a.route, b.route)
            });
            let slot = &mut shadowed_by[b.route];
            *slot = match (*slot, by) {
                (None, Some(a)) => Some(Some(a.route)),
                (Some(Some(x)), Some(_)) => Some(Some(x)),
                _ => Some(None),
            };
        }
    }
    shadowed_by
}

mod random_tables {
    use proptest::prelude::*;

    use super::*;

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "ab", "", "x"])
    }

    /// `/a//b/`-like paths, some with trailing slashes.
    fn path() -> impl Strategy<Value = String> {
        (prop::collection::vec(segment(), 0..4), 0..3usize)
            .prop_map(|(segs, slashes)| format!("/{}{}", segs.join("/"), "/".repeat(slashes)))
    }

    fn template() -> impl Strategy<Value = String> {
        let seg = prop::sample::select(vec!["a", "b", "{id}", "{x}", ""]);
        (prop::collection::vec(seg, 0..4), any::<bool>()).prop_map(|(segs, catch_all)| {
            let mut s: String = segs.iter().map(|s| format!("/{s}")).collect();
            if catch_all {
                s.push_str("/{*rest}");
            }
            if s.is_empty() {
                s.push('/');
            }
            s
        })
    }

    fn rule() -> impl Strategy<Value = String> {
        prop_oneof![
            path().prop_map(|p| format!("{{ prefix: \"{p}\" }}")),
            path().prop_map(|p| format!("{{ exact: \"{p}\" }}")),
            template().prop_map(|t| format!("{{ template: \"{t}\" }}")),
            prop::sample::select(vec!["^/a", "b$", "^/a/[^/]+$", "x"])
                .prop_map(|r| format!("{{ regex: \"{r}\" }}")),
        ]
    }

    fn route() -> impl Strategy<Value = String> {
        let hosts = prop::sample::select(vec![
            "",
            "hosts: [a.example.org], ",
            "hosts: [\"*.example.org\"], ",
            "hosts: [\"*.a.example.org\"], ",
            "hosts: [a.example.org, \"*.example.org\"], ",
            "hosts: [\"*.org\"], ",
        ]);
        let conditions = prop::sample::select(vec![
            "",
            "methods: [POST], ",
            "methods: [GET, POST], ",
            "query: { beta: \"1\" }, ",
        ]);
        (hosts, conditions, prop::collection::vec(rule(), 0..3)).prop_map(
            |(hosts, conditions, rules)| {
                let paths = if rules.is_empty() {
                    String::new()
                } else {
                    format!("paths: [{}]", rules.join(", "))
                };
                format!("{{ {hosts}{conditions}{paths} }}")
            },
        )
    }

    fn table_yaml() -> impl Strategy<Value = String> {
        prop::collection::vec(route(), 1..14).prop_map(|routes| {
            routes
                .iter()
                .enumerate()
                .map(|(i, m)| format!("  - {{ name: r{i}, match: {m}, upstream: u }}\n"))
                .collect()
        })
    }

    fn request() -> impl Strategy<Value = (Option<&'static str>, String, bool, bool)> {
        let host = prop::sample::select(vec![
            None,
            Some("a.example.org"),
            Some("b.a.example.org"),
            Some("x.example.org"),
            Some("example.org"),
            Some("A.Example.ORG:8080"),
            Some("other.test"),
        ]);
        (host, path(), any::<bool>(), any::<bool>())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn indexed_matching_agrees_with_a_plain_walk(
            yaml in table_yaml(),
            requests in prop::collection::vec(request(), 1..24),
        ) {
            let (t, _) = table(&yaml);
            let headers = HeaderMap::new();
            for (host, path, post, beta) in &requests {
                let method = if *post { Method::POST } else { Method::GET };
                let req = RequestKey {
                    host: *host,
                    path,
                    query: beta.then_some("beta=1"),
                    method: &method,
                    headers: &headers,
                };
                let found = t.find(&req).map(|m| (m.route.as_str(), m.strip_len));
                prop_assert_eq!(found, find_linear(&t, &req), "{:?} {} in\n{}", host, path, yaml);
                let explained = t.explain(&req).matched.map(|h| (h.route.as_str(), h.strip_len));
                prop_assert_eq!(found, explained, "explain: {:?} {} in\n{}", host, path, yaml);
            }
        }

        #[test]
        fn indexed_shadowing_agrees_with_comparing_every_pair(yaml in table_yaml()) {
            let (t, warnings) = table(&yaml);
            let expected: Vec<String> = shadowed_linear(&t)
                .iter()
                .enumerate()
                .filter_map(|(r, s)| s.flatten().map(|a| format!("routes[{r}] by routes[{a}]")))
                .collect();
            let got: Vec<String> = warnings
                .iter()
                .map(|w| {
                    let by = w.message.split("(routes[").nth(1).and_then(|s| s.split(']').next());
                    format!("{} by routes[{}]", w.path, by.unwrap_or("?"))
                })
                .collect();
            prop_assert_eq!(got, expected, "in\n{}", yaml);
        }
    }
}
