//! Every YAML block in `docs/` and the README validates, so the docs cannot drift from the code.
//!
//! A block is a whole config unless its first line says otherwise:
//! - `# fragment` merges the block into a small base config at its root (maps merge key by key;
//!   a list in the block replaces the base's list);
//! - `# fragment: PATH` merges it at PATH inside the base, for example `routes[0].plugins` for a
//!   plugin's settings or `upstreams.api` for an upstream's fields.
//!
//! Every block is then checked as `frontdesk validate` checks a file: loaded with the field paths,
//! then compiled. `${VAR}` references take a stand-in value, and certificate and key files named in
//! the block are generated in a scratch folder next to the config.

use std::path::{Path, PathBuf};

use frontdesk::snapshot::Snapshot;

// Its `main` is not used here.
#[allow(dead_code)]
#[path = "../examples/envelope_plugin.rs"]
mod envelope;
use serde_json::{json, Value};

/// The base a fragment is merged into: one listener, one upstream `api`, one route using it.
fn base() -> Value {
    json!({
        "version": 1,
        "listeners": [{ "name": "public", "address": "127.0.0.1:0" }],
        "upstreams": { "api": { "targets": [{ "url": "http://127.0.0.1:9" }] } },
        "routes": [{ "name": "base", "match": { "paths": ["/"] }, "upstream": "api" }]
    })
}

/// One fenced YAML block.
struct Block {
    file: String,
    line: usize,
    text: String,
}

fn blocks() -> Vec<Block> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.push(root.join("README.md"));
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read doc");
        let name = f
            .strip_prefix(root)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        let mut current: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            match &mut current {
                None if trimmed.starts_with("```yaml") || trimmed.starts_with("```yml") => {
                    current = Some((i + 2, String::new()));
                }
                Some(_) if trimmed.starts_with("```") => {
                    let (line, text) = current.take().expect("open block");
                    out.push(Block {
                        file: name.clone(),
                        line,
                        text,
                    });
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
        assert!(current.is_none(), "{name}: a ```yaml block is not closed");
    }
    out
}

/// Where a fragment goes: `None` for a whole config, `Some("")` for the root.
fn fragment_target(text: &str) -> Option<String> {
    let first = text.lines().find(|l| !l.trim().is_empty())?.trim();
    let rest = first.strip_prefix('#')?.trim().strip_prefix("fragment")?;
    Some(rest.trim().trim_start_matches(':').trim().to_string())
}

/// Merges `add` into `into`: maps key by key, anything else replaced.
fn merge(into: &mut Value, add: Value) {
    match (into, add) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The value at a path such as `routes[0].plugins` or `upstreams.api`, created as a map if missing.
fn at<'a>(mut v: &'a mut Value, path: &str) -> &'a mut Value {
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (
                k,
                Some(
                    i.trim_end_matches(']')
                        .parse::<usize>()
                        .expect("index in a fragment path"),
                ),
            ),
            None => (part, None),
        };
        if !key.is_empty() {
            if !v.is_object() {
                *v = json!({});
            }
            v = v
                .as_object_mut()
                .expect("object")
                .entry(key.to_string())
                .or_insert_with(|| json!({}));
        }
        if let Some(i) = index {
            v = v
                .get_mut(i)
                .unwrap_or_else(|| panic!("fragment path {path}: no element {i}"));
        }
    }
    v
}

/// Writes a real certificate or key for every `.pem`, `.crt` or `.key` file the config names,
/// and the test gRPC service's descriptor set for every `.pb` file.
fn write_pki(v: &Value, dir: &Path, key: &rcgen::KeyPair, cert: &rcgen::Certificate) {
    match v {
        Value::String(s) if s.ends_with(".pb") => {
            let p = dir.join(s.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, grpc_testsvc::DESCRIPTORS_ALL).expect("write descriptors");
        }
        Value::String(s) if [".pem", ".crt", ".key"].iter().any(|e| s.ends_with(e)) => {
            let p = dir.join(s.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            let file = s.rsplit('/').next().unwrap_or(s);
            let pem = if file.ends_with(".key") || file.contains("key") {
                key.serialize_pem()
            } else {
                cert.pem()
            };
            std::fs::write(p, pem).expect("write pem");
        }
        Value::Array(a) => a.iter().for_each(|x| write_pki(x, dir, key, cert)),
        Value::Object(m) => m.values().for_each(|x| write_pki(x, dir, key, cert)),
        _ => {}
    }
}

/// Makes absolute file paths relative to the scratch folder, so `/etc/frontdesk/api.pem` is
/// generated there too.
fn relocate(v: &mut Value) {
    match v {
        Value::String(s)
            if [".pem", ".crt", ".key", ".pb"]
                .iter()
                .any(|e| s.ends_with(e)) =>
        {
            *s = s.trim_start_matches('/').to_string();
        }
        Value::Array(a) => a.iter_mut().for_each(relocate),
        Value::Object(m) => m.values_mut().for_each(relocate),
        _ => {}
    }
}

/// Validates one block; the error lists what `frontdesk validate` would print.
fn check(block: &Block) -> Result<(), String> {
    let parsed: Value = serde_saphyr::from_str(&block.text).map_err(|e| format!("YAML: {e}"))?;
    let mut config = match fragment_target(&block.text) {
        None => parsed,
        Some(path) => {
            let mut b = base();
            merge(at(&mut b, &path), parsed);
            b
        }
    };
    relocate(&mut config);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = rcgen::CertificateParams::new(vec!["api.example.com".to_string()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| e.to_string())?;
    write_pki(&config, dir.path(), &key, &cert);
    // JSON is YAML: the loader reads the merged document with its field paths.
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    let show = |d: Vec<frontdesk::config::Diagnostic>| {
        d.iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Every `${VAR}` gets a stand-in long enough for any secret's minimum length.
    let mut loaded = frontdesk::config::load_str(&text, &|_| {
        Some("docs-example-value-0123456789abcdef0123456789".into())
    })
    .map_err(show)?;
    loaded.config.resolve_paths(dir.path());
    Snapshot::check(loaded.config, None).map_err(show)?;
    Ok(())
}

#[tokio::test]
async fn every_yaml_block_in_the_docs_validates() {
    // The custom plugin kind docs/plugins.md configures, as its example binary registers it.
    envelope::register();
    let blocks = blocks();
    assert!(blocks.len() > 20, "found only {} YAML blocks", blocks.len());
    let failures: Vec<String> = blocks
        .iter()
        .filter_map(|b| {
            check(b)
                .err()
                .map(|e| format!("{}:{}:\n{}\n{e}\n", b.file, b.line, b.text))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} YAML blocks in the docs do not validate:\n\n{}",
        failures.len(),
        blocks.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_broken_block_is_caught() {
    // The checker itself must be able to fail: an unknown upstream and a bad fragment path.
    let bad = Block {
        file: "t".into(),
        line: 1,
        text: "routes:\n  - name: x\n    match: { paths: [\"/\"] }\n    upstream: nowhere\n".into(),
    };
    assert!(check(&bad).is_err());
    let bad_plugin = Block {
        file: "t".into(),
        line: 1,
        text: "# fragment: routes[0].plugins\nkey_auth: { header: 7, nope: true }\n".into(),
    };
    assert!(check(&bad_plugin).is_err());
    let good_plugin = Block {
        file: "t".into(),
        line: 1,
        text: "# fragment: routes[0].plugins\nkey_auth: { header: x-api-key }\n".into(),
    };
    assert_eq!(check(&good_plugin), Ok(()));
}

#[test]
fn the_complete_example_in_plugins_md_is_the_example_file() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/plugins.md"))
            .unwrap();
    let file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envelope_plugin.rs"),
    )
    .unwrap();
    let section = doc
        .split("## A complete example")
        .nth(1)
        .expect("the section");
    let code = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n").next())
        .expect("its code block");
    assert_eq!(
        code, file,
        "docs/plugins.md shows an outdated copy of the example"
    );
}
