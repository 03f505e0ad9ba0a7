//! The `compression` plugin's config: defaults, and every error with its field path.

use frontdesk_config::{load_str, ByteSize, ContentCoding};

fn no_env(_: &str) -> Option<String> {
    None
}

const BASE: &str = r#"
version: 1
listeners: [{ name: public, address: "127.0.0.1:8080" }]
upstreams:
  app: { targets: [{ url: "http://127.0.0.1:9000" }] }
"#;

#[test]
fn an_empty_section_takes_the_documented_defaults() {
    let text = format!(
        "{BASE}plugins:\n  compression: {{}}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: app, plugins: {{ compression: {{ request: {{}} }} }} }}\n"
    );
    let cfg = load_str(&text, &no_env).expect("loads").config;
    let c = cfg.plugins.compression.expect("global compression");
    assert_eq!(
        c.encodings,
        [ContentCoding::Br, ContentCoding::Zstd, ContentCoding::Gzip]
    );
    assert_eq!(c.min_size, ByteSize(1024));
    for t in [
        "text/*",
        "application/json",
        "application/*+json",
        "application/javascript",
        "application/xml",
        "application/*+xml",
        "image/svg+xml",
    ] {
        assert!(c.content_types.iter().any(|c| c == t), "{t}");
    }
    assert!(!c.event_stream);
    assert_eq!((c.level.gzip, c.level.br, c.level.zstd), (5, 4, 3));
    assert!(c.request.is_none(), "uploads pass untouched by default");
    let route = cfg.routes[0].plugins.compression.as_ref().expect("route");
    let req = route.request.expect("request section");
    assert!(req.decompress);
    assert_eq!(req.max_size, ByteSize(10 * 1024 * 1024));
}

#[test]
fn the_suggested_config_loads() {
    let text = format!(
        r#"{BASE}plugins:
  compression:
    encodings: [gzip, br]
    min_size: 2KiB
    content_types: ["*/*"]
    event_stream: true
    level: {{ gzip: 9, br: 11, zstd: 19 }}
    request: {{ decompress: true, max_size: 1MiB }}
"#
    );
    let c = load_str(&text, &no_env)
        .expect("loads")
        .config
        .plugins
        .compression
        .expect("compression");
    assert_eq!(c.encodings, [ContentCoding::Gzip, ContentCoding::Br]);
    assert_eq!(c.min_size, ByteSize(2048));
    assert!(c.event_stream);
    assert_eq!(c.request.expect("request").max_size, ByteSize(1 << 20));
}

#[test]
fn bad_values_are_reported_with_their_field_paths() {
    let text = format!(
        r#"{BASE}routes:
  - name: r
    match: {{ paths: ["/"] }}
    upstream: app
    plugins:
      compression:
        encodings: [gzip, gzip]
        content_types: ["text", "*/json", "text/html; charset=utf-8", "application/*+", "application/*+json"]
        level: {{ gzip: 0, br: 12, zstd: 20 }}
        request: {{ max_size: 0 }}
"#
    );
    let errs = load_str(&text, &no_env).unwrap_err();
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    for needle in [
        "routes[0].plugins.compression.encodings[1]: `gzip` is listed twice",
        "routes[0].plugins.compression.content_types[0]: \"text\" is not a media type pattern",
        "routes[0].plugins.compression.content_types[1]: \"*/json\" is not a media type pattern",
        "routes[0].plugins.compression.content_types[2]: \"text/html; charset=utf-8\" is not a media type pattern (parameters are not matched)",
        "routes[0].plugins.compression.content_types[3]:",
        "routes[0].plugins.compression.level.gzip: must be between 1 and 9",
        "routes[0].plugins.compression.level.br: must be between 0 and 11",
        "routes[0].plugins.compression.level.zstd: must be between 1 and 19",
        "routes[0].plugins.compression.request.max_size: must be greater than 0",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{needle}: {lines:#?}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains("content_types[4]")),
        "{lines:#?}"
    );

    let unknown = format!("{BASE}plugins:\n  compression: {{ encodings: [br, deflate] }}\n");
    let errs = load_str(&unknown, &no_env).unwrap_err();
    assert!(
        errs.iter().any(|e| e
            .to_string()
            .contains("plugins.compression.encodings[1]: unknown value `deflate`")),
        "{errs:?}"
    );
    let empty = format!("{BASE}plugins:\n  compression: {{ encodings: [], content_types: [] }}\n");
    let lines: Vec<String> = load_str(&empty, &no_env)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("plugins.compression.encodings: list at least one encoding")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("plugins.compression.content_types: list at least one")),
        "{lines:#?}"
    );
    let field = format!("{BASE}plugins:\n  compression: {{ level: {{ deflate: 3 }} }}\n");
    let errs = load_str(&field, &no_env).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("plugins.compression.level.deflate")),
        "{errs:?}"
    );
}

#[test]
fn the_schema_describes_the_section() {
    let schema = frontdesk_config::json_schema().to_string();
    for needle in ["CompressionConfig", "event_stream", "\"zstd\"", "max_size"] {
        assert!(schema.contains(needle), "{needle}");
    }
}
