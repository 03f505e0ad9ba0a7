//! Large configs: the YAML budget grows with the file, so tens of thousands of routes load,
//! while a small file that expands into a huge tree (aliases) is still refused.

use frontdesk_config::load_str;

fn no_env(_: &str) -> Option<String> {
    None
}

fn routes(n: usize) -> String {
    let mut s = String::from(
        "version: 1\nupstreams: { u: { targets: [{ url: \"http://127.0.0.1:1\" }] } }\nroutes:\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "  - {{ name: r{i}, match: {{ paths: [\"/svc{i}/api\"], methods: [GET] }}, upstream: u }}\n"
        ));
    }
    s
}

#[test]
fn forty_thousand_routes_load() {
    let loaded = match load_str(&routes(40_000), &no_env) {
        Ok(l) => l,
        Err(e) => panic!("refused: {}", e[0]),
    };
    assert_eq!(loaded.config.routes.len(), 40_000);
    assert_eq!(loaded.config.routes[39_999].name, "r39999");
}

#[test]
fn a_small_file_that_expands_into_a_huge_tree_is_still_refused() {
    // Nine levels of ten aliases each: a billion leaves from a few hundred bytes.
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    text.push_str("version: 1\n");
    let errs = load_str(&text, &no_env).expect_err("an alias bomb must be refused");
    assert!(
        errs.iter()
            .any(|e| e.message.contains("expands to too much")),
        "{errs:?}"
    );
}
