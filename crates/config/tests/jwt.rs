//! `validate` on the `jwt` plugin's fields: every error with its field path.

use frontdesk_config::{load_str, Severity};

fn no_env(_: &str) -> Option<String> {
    None
}

fn doc(jwt: &str) -> String {
    format!(
        "version: 1\nlisteners: [{{ name: a, address: \"127.0.0.1:0\" }}]\nupstreams: {{ u: {{ targets: [{{ url: \"http://127.0.0.1:1\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u, plugins: {{ jwt: {jwt} }} }}\n"
    )
}

#[test]
fn reports_jwt_errors_with_field_paths() {
    let text = doc(r#"{ issuers: [
            { issuer: a, algorithms: [RS256] },
            { issuer: b, jwks_url: "https://idp/jwks", secret: s, algorithms: [ES256] },
            { issuer: c, jwks_url: "https://idp/jwks", algorithms: [none, HS256] },
            { issuer: c, secret: "", algorithms: [RS256] } ],
          forward_claims: { "bad name": sub } }"#);
    let errs = load_str(&text, &no_env).unwrap_err();
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    let at = "routes[0].plugins.jwt";
    assert!(
        has(&format!("{at}.issuers[0]: give the issuer's keys")),
        "{lines:#?}"
    );
    assert!(
        has(&format!(
            "{at}.issuers[1]: give either `jwks_url` or `secret`"
        )),
        "{lines:#?}"
    );
    assert!(
        has(&format!(
            "{at}.issuers[2].algorithms[0]: unknown algorithm \"none\""
        )),
        "{lines:#?}"
    );
    assert!(
        has(&format!(
            "{at}.issuers[2].algorithms[1]: HS256 needs the issuer's `secret`"
        )),
        "{lines:#?}"
    );
    assert!(
        has(&format!("{at}.issuers[3].issuer: duplicate issuer \"c\"")),
        "{lines:#?}"
    );
    assert!(
        has(&format!("{at}.issuers[3].secret: must not be empty")),
        "{lines:#?}"
    );
    assert!(
        has(&format!(
            "{at}.issuers[3].algorithms[0]: RS256 needs the issuer's `jwks_url`"
        )),
        "{lines:#?}"
    );
    assert!(
        has(&format!(
            "{at}.forward_claims.bad name: invalid header name"
        )),
        "{lines:#?}"
    );

    let errs = load_str(&doc("{ issuers: [] }"), &no_env).unwrap_err();
    assert_eq!(errs[0].path, format!("{at}.issuers"));
}

#[test]
fn plain_http_jwks_is_a_warning_except_on_loopback() {
    let remote = doc(
        r#"{ issuers: [{ issuer: a, jwks_url: "http://idp.example.com/jwks", algorithms: [RS256] }] }"#,
    );
    let loaded = load_str(&remote, &no_env).expect("a warning does not refuse");
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].severity, Severity::Warning);
    assert_eq!(
        loaded.warnings[0].path,
        "routes[0].plugins.jwt.issuers[0].jwks_url"
    );
    for url in [
        "http://127.0.0.1:9100/jwks",
        "http://localhost/jwks",
        "http://[::1]:8/jwks",
        "https://idp/jwks",
    ] {
        let text = doc(&format!(
            r#"{{ issuers: [{{ issuer: a, jwks_url: "{url}", algorithms: [RS256, ES256] }}], leeway: 30s }}"#
        ));
        let loaded = load_str(&text, &no_env).expect(url);
        assert!(loaded.warnings.is_empty(), "{url}: {:?}", loaded.warnings);
    }
}
