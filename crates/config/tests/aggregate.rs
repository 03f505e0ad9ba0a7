//! The `aggregate` route target: the issue's YAML loads as written, and every check reports at
//! its field path.

use frontdesk_config::{load_str, MergeConfig};

fn no_env(_: &str) -> Option<String> {
    None
}

const UPSTREAMS: &str = r#"
version: 1
upstreams:
  users: { targets: [{ url: "http://127.0.0.1:1" }] }
  orders: { targets: [{ url: "http://127.0.0.1:2" }] }
  recs: { targets: [{ url: "http://127.0.0.1:3" }] }
  catalog: { targets: [{ url: "http://127.0.0.1:4" }] }
"#;

/// The example of issue 15, exactly as written there.
const HOME_SCREEN: &str = r#"
routes:
  - name: home-screen
    match: { paths: [{ template: "/screens/home/{user}" }], methods: [GET] }
    aggregate:
      calls:
        profile: { upstream: users,  path: "/users/{user}", required: true, timeout: 300ms }
        orders:  { upstream: orders, path: "/orders?user={user}&limit=5", required: false }
        recs:    { upstream: recs,   path: "/for/{profile.body.segment}", depends_on: [profile], required: false }
        items:   { upstream: catalog, path: "/items/{id}", for_each: "orders.body.items[*].id", max_parallel: 8 }
      merge: { profile: "$.profile", orders: "$.orders", recommendations: "$.recs", items: "$.items" }   # or a jq expression
      headers: { from: [profile], allow: [cache-control, etag] }
"#;

/// Loads the upstreams plus `routes`, and returns the error lines (empty when it loads).
fn errors(routes: &str) -> Vec<String> {
    match load_str(&format!("{UPSTREAMS}{routes}"), &no_env) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect(),
    }
}

/// A route whose aggregate has these calls (YAML lines indented for `calls:`).
fn with_calls(calls: &str) -> String {
    format!(
        "routes:\n  - name: r\n    match: {{ paths: [{{ template: \"/s/{{user}}\" }}] }}\n    aggregate:\n      calls:\n{calls}"
    )
}

#[test]
fn the_issue_example_loads_as_written() {
    let loaded = load_str(&format!("{UPSTREAMS}{HOME_SCREEN}"), &no_env).expect("loads");
    let agg = loaded.config.routes[0]
        .aggregate
        .as_ref()
        .expect("an aggregate");
    assert_eq!(agg.calls.len(), 4);
    assert!(agg.calls["profile"].required);
    assert_eq!(
        agg.calls["profile"].timeout.map(|t| t.get().as_millis()),
        Some(300)
    );
    assert!(!agg.calls["items"].required, "optional by default");
    assert_eq!(agg.calls["items"].max_parallel, 8);
    assert_eq!(agg.calls["recs"].depends_on, vec!["profile".to_string()]);
    assert!(matches!(&agg.merge, Some(MergeConfig::Pick(m)) if m["recommendations"] == "$.recs"));
    assert_eq!(agg.meta_key, "_meta");
    let about_routes: Vec<_> = loaded
        .warnings
        .iter()
        .filter(|w| w.path.starts_with("routes"))
        .collect();
    assert!(about_routes.is_empty(), "{about_routes:?}");
}

#[test]
fn a_jq_merge_is_a_string() {
    let e = errors(&format!(
        "{}      merge: '{{name: .a.name}}'\n",
        with_calls("        a: { upstream: users, path: \"/u/{user}\" }\n")
    ));
    assert!(e.is_empty(), "{e:#?}");
}

#[test]
fn unknown_upstreams_and_calls_are_errors_at_their_field() {
    let e = errors(&with_calls(
        "        a: { upstream: userz, path: \"/u\", depends_on: [b] }\n",
    ));
    let has = |n: &str| e.iter().any(|l| l.contains(n));
    assert!(
        has("routes[0].aggregate.calls.a.upstream: unknown upstream \"userz\" (did you mean \"users\"?)"),
        "{e:#?}"
    );
    assert!(
        has("routes[0].aggregate.calls.a.depends_on[0]: unknown call \"b\""),
        "{e:#?}"
    );
}

#[test]
fn a_template_naming_an_unknown_call_is_an_error() {
    let e = errors(&with_calls(
        "        a: { upstream: users, path: \"/u/{profil.body.id}\" }\n        profile: { upstream: users, path: \"/p\" }\n",
    ));
    assert!(
        e.iter().any(|l| l
            .contains("routes[0].aggregate.calls.a.path: {profil.body.id} names no call")
            && l.contains("did you mean \"profile\"")),
        "{e:#?}"
    );
    // A path parameter the route does not have.
    let e = errors(&with_calls(
        "        a: { upstream: users, path: \"/u/{id}\" }\n",
    ));
    assert!(
        e.iter()
            .any(|l| l.contains("calls.a.path: {id} names no call")),
        "{e:#?}"
    );
    // A call's answer taken without saying which part.
    let e = errors(&with_calls(
        "        a: { upstream: users, path: \"/u/{b}\" }\n        b: { upstream: users, path: \"/p\" }\n",
    ));
    assert!(
        e.iter()
            .any(|l| l.contains("calls.a.path: {b}: take `b.body`")),
        "{e:#?}"
    );
    // Headers and bodies are templates too.
    let e = errors(&with_calls(
        "        a: { upstream: users, path: \"/u\", method: POST, headers: { x-seg: \"{nope.body.s}\" }, body: { q: \"{gone.body}\" } }\n",
    ));
    assert!(
        e.iter()
            .any(|l| l.contains("calls.a.headers.x-seg: {nope.body.s} names no call")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains("calls.a.body: {gone.body} names no call")),
        "{e:#?}"
    );
}

#[test]
fn dependency_cycles_are_errors() {
    let e = errors(&with_calls(
        "        a: { upstream: users, path: \"/a/{b.body.x}\" }\n        b: { upstream: users, path: \"/b\", depends_on: [c] }\n        c: { upstream: users, path: \"/c\", for_each: \"a.body.list[*]\", as: el }\n",
    ));
    assert!(
        e.iter().any(|l| l.contains("routes[0].aggregate.calls.a.depends_on: the calls depend on each other in a cycle: a -> b -> c -> a")),
        "{e:#?}"
    );
    let e = errors(&with_calls(
        "        a: { upstream: users, path: \"/a\", depends_on: [a] }\n",
    ));
    assert!(e.iter().any(|l| l.contains("cycle: a -> a")), "{e:#?}");
}

#[test]
fn for_each_syntax_is_checked() {
    for (fe, needle) in [
        ("orders.body.items", "one `[*]`"),
        ("orders.body.a[*].b[*]", "one `[*]`"),
        ("orders.status[*]", "`for_each` reads a body"),
        ("ordrs.body.items[*]", "names no call"),
        ("orders.body.items[*", "invalid reference"),
        ("orders.body.items[*]", ""),
    ] {
        let e = errors(&with_calls(&format!(
            "        orders: {{ upstream: orders, path: \"/o\" }}\n        each: {{ upstream: catalog, path: \"/i/{{items}}\", for_each: \"{fe}\" }}\n"
        )));
        if needle.is_empty() {
            assert!(e.is_empty(), "{fe}: {e:#?}");
        } else {
            assert!(
                e.iter()
                    .any(|l| l.contains("calls.each.for_each") && l.contains(needle)),
                "{fe}: {e:#?}"
            );
        }
    }
    // `[*]` anywhere else is refused.
    let e = errors(&with_calls(
        "        o: { upstream: orders, path: \"/o\" }\n        i: { upstream: catalog, path: \"/i/{o.body.items[*]}\" }\n",
    ));
    assert!(
        e.iter()
            .any(|l| l.contains("calls.i.path") && l.contains("belongs in `for_each`")),
        "{e:#?}"
    );
}

#[test]
fn a_route_with_both_upstream_and_aggregate_is_an_error() {
    let e = errors(
        "routes:\n  - name: r\n    match: {}\n    upstream: users\n    aggregate:\n      calls:\n        a: { upstream: users, path: \"/a\" }\n",
    );
    assert!(
        e.iter().any(|l| l.contains("routes[0].aggregate: a route either forwards to an `upstream` or answers with an `aggregate`, not both")),
        "{e:#?}"
    );
}

#[test]
fn merge_picks_and_response_headers_name_calls() {
    let e = errors(&format!(
        "{}      merge: {{ x: \"$.b\", y: \"profile\" }}\n      headers: {{ from: [c], allow: [\"bad header\"] }}\n",
        with_calls("        a: { upstream: users, path: \"/a\" }\n")
    ));
    let has = |n: &str| e.iter().any(|l| l.contains(n));
    assert!(
        has("routes[0].aggregate.merge.x: \"$.b\" names no call"),
        "{e:#?}"
    );
    assert!(
        has("routes[0].aggregate.merge.y: \"profile\": a pick is `$.call`"),
        "{e:#?}"
    );
    assert!(
        has("routes[0].aggregate.headers.from[0]: unknown call \"c\""),
        "{e:#?}"
    );
    assert!(
        has("routes[0].aggregate.headers.allow[0]: invalid header name"),
        "{e:#?}"
    );
}

#[test]
fn limits_are_bounded() {
    let e = errors(&format!(
        "{}      timeout: 0s\n      max_fan_out: 0\n      max_body: 0\n      meta_key: \"\"\n",
        with_calls("        a: { upstream: users, path: \"a\", max_parallel: 0, timeout: 2h, method: \"G T\" }\n")
    ));
    let has = |n: &str| e.iter().any(|l| l.contains(n));
    assert!(
        has("aggregate.timeout: must be greater than zero"),
        "{e:#?}"
    );
    assert!(has("aggregate.max_fan_out: must be between 1"), "{e:#?}");
    assert!(has("aggregate.max_body: must be between"), "{e:#?}");
    assert!(has("aggregate.meta_key: must not be empty"), "{e:#?}");
    assert!(has("calls.a.max_parallel: must be between 1"), "{e:#?}");
    assert!(has("calls.a.timeout: must be at most 1h"), "{e:#?}");
    assert!(has("calls.a.method: invalid method"), "{e:#?}");
    assert!(has("calls.a.path: a call's path starts with `/`"), "{e:#?}");
}

#[test]
fn unknown_fields_in_a_call_are_errors_at_their_path() {
    let e = errors(&with_calls(
        "        a: { upstream: users, path: \"/a\", requried: true }\n",
    ));
    assert!(
        e.iter()
            .any(|l| l.contains("routes[0].aggregate.calls.a.requried: unknown field")),
        "{e:#?}"
    );
}

#[test]
fn the_element_name_must_not_shadow_a_call_or_parameter() {
    let e = errors(&with_calls(
        "        o: { upstream: orders, path: \"/o\" }\n        i: { upstream: catalog, path: \"/i/{user}\", for_each: \"o.body.list[*]\", as: user }\n",
    ));
    assert!(
        e.iter()
            .any(|l| l.contains("calls.i.as: the element's name \"user\"")),
        "{e:#?}"
    );
}
