//! The legacy adaptation recipe of docs/transforms.md, end to end: a JSON REST route in front of
//! a real SOAP 1.1 service built with spyne (`tests/soap/users_service.py`), with the config
//! taken from the docs as written (only the addresses changed).
//!
//! The service needs Python 3 with `spyne` and `lxml` (`.ci/run` installs them). Without them the
//! tests print why and pass, unless `CI=true`, where a missing toolkit fails them.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The spyne service, killed when dropped.
struct SoapService {
    child: Child,
    port: u16,
}

impl Drop for SoapService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python with spyne and lxml: `FRONTDESK_SOAP_PYTHON`, `python3`, or Debian's own.
fn python() -> Option<String> {
    let candidates = std::env::var("FRONTDESK_SOAP_PYTHON")
        .ok()
        .into_iter()
        .chain(["python3".to_string(), "/usr/bin/python3".to_string()]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import spyne, lxml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    None
}

/// Starts the service on a free port; `None` (after saying why) without spyne outside CI.
fn start() -> Option<SoapService> {
    let Some(py) = python() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "python3 with spyne and lxml is missing, and CI=true requires the SOAP tests to \
                 run: pip install spyne lxml (.ci/run does)"
            );
        }
        eprintln!("skipping: python3 with spyne and lxml is not installed (set CI=true to fail)");
        return None;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/soap/users_service.py");
    let mut child = Command::new(py)
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the SOAP service");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the SOAP service says it is ready");
    let port = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the SOAP service: {line:?}"));
    Some(SoapService { child, port })
}

/// The recipe's config block from docs/transforms.md, pointed at `soap` and a free port.
fn recipe(soap: &SoapService) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/transforms.md"))
            .expect("docs/transforms.md");
    let start = doc
        .find("```yaml\n# The SOAP recipe")
        .expect("the recipe block")
        + "```yaml\n".len();
    let len = doc[start..].find("```").expect("the block's end");
    let block = &doc[start..start + len];
    assert!(block.contains("http://127.0.0.1:8081") && block.contains("127.0.0.1:8080"));
    block
        .replace(
            "http://127.0.0.1:8081",
            &format!("http://127.0.0.1:{}", soap.port),
        )
        .replace("127.0.0.1:8080", "127.0.0.1:0")
}

async fn get(gw: &TestGateway, path: &str) -> (u16, String, serde_json::Value) {
    let resp = client().get(gw.url(path)).send().await.expect("request");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ascii").to_string())
        .unwrap_or_default();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}"));
    (status, ct, body)
}

#[tokio::test]
async fn a_rest_get_becomes_a_soap_call_and_its_answer_json() {
    let Some(soap) = start() else { return };
    let gw = gateway(&recipe(&soap)).await;

    let (status, ct, body) = get(&gw, "/users/7").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "application/json");
    assert_eq!(
        body,
        serde_json::json!({"id": 7, "name": "Ada Lovelace", "email": "ada@example.com"})
    );
    // Entities in the service's XML come out as text.
    let (status, _, body) = get(&gw, "/users/8").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "Grace Hopper & co");
}

#[tokio::test]
async fn soap_faults_become_problem_bodies_with_a_status_from_the_fault_code() {
    let Some(soap) = start() else { return };
    let gw = gateway(&recipe(&soap)).await;

    // Client.NotFound: the client's fault, and a missing resource.
    let (status, ct, body) = get(&gw, "/users/99").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["detail"], "no user 99");
    // Server: the service failed, so the gateway answers 502.
    let (status, _, body) = get(&gw, "/users/13").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["detail"], "the user store is down");
    // Markup from the client is escaped into the envelope as text: the service's schema
    // refuses it as a Client fault (400), and no element was injected.
    let (status, _, body) = get(&gw, "/users/7%3C%2Fu:user_id%3E%3Cx%3E").await;
    assert_eq!(status, 400, "{body}");
    // The service is still fine.
    assert_eq!(get(&gw, "/users/7").await.0, 200);
}
