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
    let routes = cfg.routes.into_iter().map(|r| {
        let n = r.name.clone();
        (r, n)
    });
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
