//! gRPC-Web and transcoded calls from a real browser: Debian's headless Chromium, driven by
//! playwright-core (tests/browser/run.js), opens a page served from one origin that calls the
//! gateway on another, so Chromium itself sends the CORS preflights and enforces the answers.
//! Behind the gateway: the real gRPC test service (grpc-testsvc, h2c); on its one route
//! `grpc_web`, `grpc_transcode` (descriptors from a file) and `cors` allowing the page's origin.
//!
//! The page (tests/browser/index.html, page.js) runs the official `grpc-web` client in text
//! mode (unary, server streaming) and binary mode, gRPC-Web binary with `fetch` (reading the
//! trailer frame itself), transcoded REST with `fetch` and a transcoded stream with
//! `EventSource`, and error statuses; then the same calls from a second origin the config does not
//! allow, which the browser must refuse.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{config, full, gateway_in, upstream, Upstream};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

/// The folder of the page and of its Node modules.
fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium, `node` and the npm modules of tests/browser/, or why not: with `CI=true` their
/// absence fails the test, otherwise it is skipped loudly.
fn browser_available() -> bool {
    let node = std::process::Command::new("node").arg("--version").output();
    let why = match node {
        Err(e) => format!("`node` cannot run ({e})"),
        Ok(_) if !Path::new(CHROMIUM).exists() => {
            format!("{CHROMIUM} is missing (Debian package `chromium`)")
        }
        Ok(_) if !dir().join("node_modules/playwright-core").is_dir() => {
            "tests/browser/node_modules is missing (run `npm ci` there)".to_string()
        }
        Ok(_) => return true,
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the browser test needs Chromium and its Node modules with CI=true: {why}");
    }
    eprintln!("SKIPPED: the browser test: {why}");
    false
}

/// Serves the page, its script and the two npm files it loads; nothing else.
async fn page_server() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let (file, ct) = match req.uri().path() {
            "/" | "/index.html" => ("index.html", "text/html; charset=utf-8"),
            "/page.js" => ("page.js", "text/javascript"),
            // No icon, and no 404 for it in the console.
            "/favicon.ico" => return Response::builder().status(204).body(full("")).unwrap(),
            "/node_modules/grpc-web/index.js" => {
                ("node_modules/grpc-web/index.js", "text/javascript")
            }
            "/node_modules/google-protobuf/google-protobuf.js" => (
                "node_modules/google-protobuf/google-protobuf.js",
                "text/javascript",
            ),
            _ => {
                return Response::builder()
                    .status(404)
                    .body(full("not here"))
                    .unwrap()
            }
        };
        let body = std::fs::read(dir().join(file)).unwrap();
        Response::builder()
            .header("content-type", ct)
            .header("cache-control", "no-store")
            .body(full(body))
            .unwrap()
    })
    .await
}

/// One route for everything: gRPC-Web, transcoded JSON and CORS for `origin` only.
fn gateway_config(svc: &grpc_testsvc::Handle, origin: &str) -> String {
    config(&format!(
        r#"
upstreams:
  shop:
    targets: [{{ url: "{url}" }}]
    protocol: h2c
routes:
  - name: shop
    match: {{ paths: ["/"] }}
    upstream: shop
    plugins:
      grpc_web: {{}}
      grpc_transcode:
        descriptors: {{ file: shop.pb }}
      cors:
        allow_origins: ["{origin}"]
        allow_methods: [GET, POST]
        allow_headers: [content-type, x-grpc-web, x-user-agent, grpc-timeout]
        max_age: 600s
"#,
        url = svc.url()
    ))
}

/// Runs tests/browser/run.js on `urls`; its JSON report.
async fn run_browser(urls: &[String]) -> Value {
    let mut child = std::process::Command::new("node")
        .arg(dir().join("run.js"))
        .arg(CHROMIUM)
        .args(urls)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let out = tokio::time::timeout(Duration::from_secs(120), rx).await;
    if out.is_err() {
        // Chromium runs on a pipe from Node: it exits with it.
        let _ = child.kill();
    }
    let status = child.wait();
    let out = out
        .expect("the browser run ends within 120 s")
        .expect("run.js's output");
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "run.js failed: {status:?}\n{out}"
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A header of a CDP request or response record, by name in any case.
fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// The value of the page's step `name`, which must have succeeded.
fn ok<'a>(results: &'a Value, name: &str) -> &'a Value {
    let r = &results[name];
    assert_eq!(r["ok"], true, "{name}: {r}");
    &r["value"]
}

/// An `Item` as the page decoded it from protobuf (ids and int64s as strings, the enum a number).
fn assert_item(v: &Value, id: u32, shelf: &str) {
    assert_eq!(
        v,
        &json!({
            "id": id.to_string(),
            "name": format!("item-{id}"),
            "price": { "currency": "EUR", "units": (id * 100).to_string(), "nanos": 5 },
            "tags": ["a", "b"],
            "kind": 1,
            "created": { "seconds": grpc_testsvc::EPOCH.to_string() },
            "shelf": shelf,
        })
    );
}

/// An `Item` as transcoded JSON.
fn assert_json_item(v: &Value, id: u32, shelf: &str) {
    let mut expected = json!({
        "id": id.to_string(),
        "name": format!("item-{id}"),
        "price": { "currency": "EUR", "units": (id * 100).to_string(), "nanos": 5 },
        "tags": ["a", "b"],
        "kind": "KIND_BOOK",
        "created": "2023-11-14T22:13:20Z",
        "stock": { "x": 1 },
        "size": { "width": 1.5, "height": 2 },
    });
    if !shelf.is_empty() {
        expected["shelf"] = json!(shelf);
    }
    assert_eq!(v, &expected);
}

/// The one page of a run's report, with what Chromium printed.
fn the_page(report: &Value) -> &Value {
    let pages = report["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 1, "{report}");
    let page = &pages[0];
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&page["results"]).unwrap()
    );
    eprintln!("console: {}", page["console"]);
    assert!(page["results"]["fatal"].is_null(), "{}", page["results"]);
    page
}

/// The preflights Chromium sent for `path` (CDP records of `OPTIONS` requests).
fn preflights<'a>(page: &'a Value, path: &str) -> Vec<&'a Value> {
    page["preflights"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["method"] == "OPTIONS" && p["url"].as_str().unwrap().ends_with(path))
        .collect()
}

#[tokio::test]
async fn a_browser_calls_grpc_web_and_transcoded_apis_across_origins() {
    if !browser_available() {
        return;
    }
    let svc =
        grpc_testsvc::serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    // Two page servers: two origins (ports), one allowed by the gateway's `cors`, one not; the
    // gateway's listener is a third.
    let allowed = page_server().await;
    let denied = page_server().await;
    let origin = format!("http://{}", allowed.addr);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.pb"), grpc_testsvc::DESCRIPTORS_ALL).unwrap();
    let gw = gateway_in(dir, &gateway_config(&svc, &origin)).await;
    let api = format!("http://{}", gw.addr);

    // === From the allowed origin: everything works, and the page reads every status. ===
    let report = run_browser(&[format!("{origin}/?role=allowed&api={api}")]).await;
    let page = the_page(&report);
    let r = &page["results"];
    assert_eq!(r["origin"], origin.as_str());

    // 1. gRPC-Web text, unary, by the official client: the message and the OK status.
    let v = ok(r, "textUnary");
    assert!(v["error"].is_null(), "{v}");
    assert_item(&v["message"], 7, "north");
    assert_eq!(v["status"]["code"], 0, "{v}");

    // 2. Text server streaming: every message, in order, then OK and the end.
    let v = ok(r, "textStream");
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{v}");
    for (i, m) in (1..).zip(msgs) {
        assert_item(m, i, "south");
    }
    assert_eq!(v["status"]["code"], 0, "{v}");
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["ended"], true);
    // A stream that fails after its messages: the messages, then the status of the trailer frame.
    let v = ok(r, "textStreamFails");
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{v}");
    assert_item(&msgs[1], 2, "south");
    assert_eq!(v["error"], json!({ "code": 9, "message": "watch failed" }));

    // 3. gRPC-Web binary: the official client's unary call ...
    let v = ok(r, "binaryUnary");
    assert!(v["error"].is_null(), "{v}");
    assert_item(&v["message"], 8, "north");
    assert_eq!(v["status"]["code"], 0, "{v}");
    // ... and fetch, with the frames read by the page: the message, then the trailer frame.
    let v = ok(r, "binaryFetch");
    assert_eq!(v["http"], 200);
    assert_eq!(v["contentType"], "application/grpc-web+proto");
    assert_eq!(v["frames"], json!([0, 0x80]), "{v}");
    assert_item(&v["messages"][0], 9, "east");
    assert_eq!(v["trailers"]["grpc-status"], "0", "{v}");
    assert_eq!(v["leftover"], 0);
    let v = ok(r, "binaryFetchStream");
    assert_eq!(v["frames"], json!([0, 0, 0, 0x80]), "{v}");
    for (i, m) in (1..).zip(v["messages"].as_array().unwrap()) {
        assert_item(m, i, "west");
    }
    assert_eq!(v["trailers"]["grpc-status"], "0", "{v}");

    // 4. Transcoded REST, cross-origin: a simple GET and a POST of JSON (preflighted) ...
    let v = ok(r, "restGet");
    assert_eq!(v["http"], 200);
    assert_eq!(v["contentType"], "application/json");
    assert_json_item(&v["body"], 7, "");
    let v = ok(r, "restPost");
    assert_eq!(v["http"], 200, "{v}");
    assert_eq!(v["body"], json!({ "name": "pen", "shelf": "north" }));
    // ... and a transcoded stream read with EventSource: three events in order, then the end
    // (the server closed: EventSource is about to reconnect, readyState CONNECTING).
    let v = ok(r, "sse");
    assert_eq!(v["opened"], true);
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{v}");
    for (i, m) in (1..).zip(msgs) {
        assert_json_item(m, i, "a");
    }
    assert_eq!(v["errorEvents"], json!([]));
    assert_eq!(v["readyStateAtEnd"], 0, "{v}");
    // A stream that fails: its message, then `event: error` with the problem, as docs/grpc.md's
    // EventSource example reads it.
    let v = ok(r, "sseFails");
    assert_eq!(v["messages"].as_array().unwrap().len(), 1, "{v}");
    let problem = &v["errorEvents"][0];
    assert_eq!(problem["grpc_status"], 9, "{v}");
    assert_eq!(problem["grpc_code"], "FAILED_PRECONDITION");
    assert_eq!(problem["detail"], "watch failed");

    // 5. Error statuses the page can read: NOT_FOUND from a trailers-only answer, whose status is
    // in the head, which the page sees only because `grpc_web` exposed it through CORS.
    let v = ok(r, "textNotFound");
    assert_eq!(v["error"], json!({ "code": 5, "message": "no item 404" }));
    assert!(v["message"].is_null());
    let v = ok(r, "binaryFetchNotFound");
    assert_eq!(v["http"], 200);
    assert_eq!(v["headerStatus"], "5", "{v}");
    assert_eq!(
        v["headerMessage"], "no%20item%20404",
        "percent-encoded, as gRPC sends it"
    );
    assert_eq!(v["frames"], json!([]), "headers only");
    let v = ok(r, "restNotFound");
    assert_eq!(v["http"], 404);
    assert_eq!(v["contentType"], "application/problem+json");
    assert_eq!(v["body"]["grpc_code"], "NOT_FOUND", "{v}");
    assert_eq!(v["body"]["detail"], "no item 404");

    // What Chromium sent: a preflight before the first gRPC-Web call, asking for the headers the
    // client adds (and the metadata the page passed), answered by `cors` for this origin.
    let pre = preflights(page, "/shop.v1.Shop/GetItem");
    assert!(!pre.is_empty(), "{}", page["preflights"]);
    let p = pre[0];
    assert_eq!(header(&p["headers"], "origin"), Some(origin.as_str()));
    assert_eq!(
        header(&p["headers"], "access-control-request-method"),
        Some("POST")
    );
    let asked = header(&p["headers"], "access-control-request-headers").unwrap();
    for h in ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"] {
        assert!(asked.split(',').any(|a| a.trim() == h), "{h} in {asked}");
    }
    assert_eq!(p["response"]["status"], 204, "{p}");
    assert_eq!(
        header(&p["response"]["headers"], "access-control-allow-origin"),
        Some(origin.as_str())
    );
    // The streaming call and the JSON POST were preflighted too (other URLs); the simple GETs
    // (fetch, EventSource) were not.
    assert!(!preflights(page, "/shop.v1.Shop/WatchItems").is_empty());
    assert!(!preflights(page, "/v1/shelves/north/items").is_empty());
    assert!(preflights(page, "/v1/items/7").is_empty());
    // The gRPC-Web answers carried the status headers in Access-Control-Expose-Headers.
    let calls: Vec<&Value> = page["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["url"].as_str().unwrap().contains("/shop.v1.Shop/"))
        .collect();
    assert!(calls.len() >= 7, "{}", page["requests"]);
    for q in &calls {
        let exposed = header(&q["response"]["headers"], "access-control-expose-headers")
            .unwrap_or_else(|| panic!("{q}"));
        assert!(exposed.contains("grpc-status") && exposed.contains("grpc-message"));
    }

    // === From an origin `cors` does not allow: the browser refuses every call. ===
    let (get_before, watch_before) = (svc.calls("GetItem"), svc.calls("WatchItems"));
    let report = run_browser(&[format!("http://{}/?role=denied&api={api}", denied.addr)]).await;
    let page = the_page(&report);
    let r = &page["results"];
    assert_eq!(r["role"], "denied");
    // The official client reports a failed call (no HTTP status: the browser hid everything).
    let v = ok(r, "textUnary");
    assert!(v["message"].is_null(), "{v}");
    assert_eq!(v["error"]["code"], 2, "UNKNOWN: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("http status code: 0"),
        "{v}"
    );
    // fetch rejects with a TypeError, for gRPC-Web and for REST.
    for step in ["binaryFetch", "restGet"] {
        assert_eq!(r[step]["ok"], false, "{step}: {}", r[step]);
        assert_eq!(r[step]["error"]["name"], "TypeError", "{step}: {}", r[step]);
    }
    // EventSource never opens and gives up (CLOSED, no reconnection).
    let v = ok(r, "sse");
    assert_eq!(v["opened"], false, "{v}");
    assert_eq!(v["messages"], json!([]));
    assert_eq!(v["readyStateAtEnd"], 2, "{v}");
    // The preflight was answered 204 without any Access-Control-Allow-Origin ...
    let pre = preflights(page, "/shop.v1.Shop/GetItem");
    assert!(!pre.is_empty(), "{}", page["preflights"]);
    for p in pre {
        assert_eq!(p["response"]["status"], 204, "{p}");
        assert_eq!(
            header(&p["response"]["headers"], "access-control-allow-origin"),
            None
        );
    }
    // ... so Chromium never sent the gRPC-Web calls: the service saw none of them. The simple
    // GETs went out (no preflight), the gateway forwarded them, and the browser hid the answers:
    // one GetItem (REST) and one WatchItems (EventSource) reached the service.
    for q in page["requests"].as_array().unwrap() {
        let url = q["url"].as_str().unwrap();
        if url.starts_with(&format!("{api}/")) {
            assert!(!q["failed"].is_null(), "refused by the browser: {q}");
            let cors = q["failed"]["cors"].as_str().unwrap_or("");
            if url.contains("/shop.v1.Shop/") {
                assert_eq!(cors, "PreflightMissingAllowOriginHeader", "{q}");
            } else {
                assert_eq!(cors, "MissingAllowOriginHeader", "{q}");
            }
        }
    }
    assert_eq!(svc.calls("GetItem") - get_before, 1, "only the REST GET");
    assert_eq!(
        svc.calls("WatchItems") - watch_before,
        1,
        "only EventSource's"
    );
}
