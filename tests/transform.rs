//! The `transform` plugin through the real gateway and real upstreams: every declarative step
//! (nested arrays included), jq with its context, the formats, errors on each side, caps, a
//! compressed upstream answer, config errors at their paths, and `frontdesk transform`.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

/// An upstream answering every request with `body` and these headers.
async fn fixed(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: Bytes,
) -> Upstream {
    upstream(move |_req: Request<Incoming>| {
        let body = body.clone();
        async move {
            let mut b = Response::builder().status(status);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(full(body)).expect("response")
        }
    })
    .await
}

/// An upstream answering with what it got: method, target, headers and the body as text.
async fn mirror() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let mut headers = serde_json::Map::new();
        for (k, v) in req.headers() {
            headers.insert(k.to_string(), v.to_str().unwrap_or("").into());
        }
        let body = req.into_body().collect().await.expect("body").to_bytes();
        let out = json!({
            "method": method,
            "uri": uri,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(full(out.to_string()))
            .expect("response")
    })
    .await
}

fn route_config(up: &Upstream, route: &str) -> String {
    config(&format!(
        "upstreams:\n  up: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n{route}",
        up.url()
    ))
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| panic!("JSON: {text}"))
}

const ORDERS: &str = r#"{"data":{"id":7,"secret":"s3","user_name":"ada","orders":[
  {"ref":"a","lines":[{"sku":"x1","cost":3,"note":"n"},{"sku":"x2","cost":4,"note":"n"}]},
  {"ref":"b","lines":[{"sku":"y1","cost":5,"note":"n"}]}]}}"#;

#[tokio::test]
async fn every_declarative_step_works_through_nested_arrays() {
    let up = fixed(
        200,
        &[("content-type", "application/json")],
        Bytes::from(ORDERS),
    )
    .await;
    let gw = gateway(&route_config(
        &up,
        r#"
  - name: steps
    match: { paths: ["/steps"] }
    upstream: up
    plugins:
      transform:
        response:
          steps:
            - unwrap: /data
            - set: { /orders/*/currency: EUR, /orders/*/lines/*/taxed: true, /tags/-: new, /meta/source: gw }
            - remove: [/secret, /orders/*/lines/*/note]
            - rename: { /orders/*/lines/*/sku: /orders/*/lines/*/code, /user_name: /user/name }
            - copy: { /orders/0/ref: /first_ref }
            - deny: [/meta]
            - wrap: /result
  - name: allow
    match: { paths: ["/allow"] }
    upstream: up
    plugins:
      transform:
        response:
          steps:
            - allow: [/data/id, /data/orders/*/lines/*/sku]
"#,
    ))
    .await;
    let (status, headers, text) = send(client().get(gw.url("/steps"))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["content-length"], text.len().to_string().as_str());
    // The object keeps its members in order; new ones go last.
    assert_eq!(
        text,
        r#"{"result":{"id":7,"orders":[{"ref":"a","lines":[{"cost":3,"taxed":true,"code":"x1"},{"cost":4,"taxed":true,"code":"x2"}],"currency":"EUR"},{"ref":"b","lines":[{"cost":5,"taxed":true,"code":"y1"}],"currency":"EUR"}],"tags":["new"],"user":{"name":"ada"},"first_ref":"a"}}"#
    );
    let (status, _, text) = send(client().get(gw.url("/allow"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        parse(&text),
        json!({"data": {"id": 7, "orders": [{"lines": [{"sku": "x1"}, {"sku": "x2"}]}, {"lines": [{"sku": "y1"}]}]}})
    );
}

#[tokio::test]
async fn request_steps_move_values_between_the_body_the_headers_the_query_and_the_path() {
    let up = mirror().await;
    let gw = gateway(&route_config(
        &up,
        r#"
  - name: orders
    match: { paths: [{ template: "/accounts/{account}/orders" }] }
    upstream: up
    plugins:
      transform:
        request:
          steps:
            - from_header: { x-tenant: /tenant }
            - from_query: { page: /paging/page }
            - from_param: { account: /account }
            - to_header: { /customer/id: x-customer-id, /absent: x-forged }
            - to_query: { /paging/size: size, '.customer.name | ascii_downcase': who }
            - to_path: "/v2/customers/{{ /customer/id }}/orders"
            - remove: [/paging]
"#,
    ))
    .await;
    let body = json!({"customer": {"id": "c/1 2", "name": "Ada"}, "paging": {"size": 5}});
    let (status, _, text) = send(
        client()
            .post(gw.url("/accounts/acme/orders?page=3&keep=a%20b&size=99"))
            .header("x-tenant", "t1")
            .header("x-forged", "client-said-so")
            .json(&body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = parse(&text);
    // The path from the body (one encoded segment); the other query parameters as sent.
    assert_eq!(
        seen["uri"],
        "/v2/customers/c%2F1%202/orders?page=3&keep=a%20b&who=ada&size=5"
    );
    assert_eq!(seen["headers"]["x-customer-id"], "c/1 2");
    assert!(
        seen["headers"].get("x-forged").is_none(),
        "a header the body does not set is removed: {seen}"
    );
    assert_eq!(seen["headers"]["content-type"], "application/json");
    assert_eq!(
        parse(seen["body"].as_str().expect("body")),
        json!({"customer": {"id": "c/1 2", "name": "Ada"}, "tenant": "t1", "account": "acme"})
    );
}

#[tokio::test]
async fn jq_sees_the_body_and_the_request_and_response_context() {
    let up = upstream(|_req: Request<Incoming>| async move {
        Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("x-upstream-version", "v9")
            .body(full(r#"{"items":[{"p":2},{"p":3}]}"#))
            .expect("response")
    })
    .await;
    let gw = gateway(&config(&format!(
        r#"upstreams:
  up: {{ targets: [{{ url: "{}" }}] }}
consumers:
  - {{ name: alice, groups: [partners, beta], api_keys: ["alice-key-0001"] }}
routes:
  - name: ctx
    match: {{ paths: [{{ template: "/shops/{{shop}}/cart" }}] }}
    upstream: up
    plugins:
      key_auth: {{}}
      transform:
        response:
          jq: |
            {{
              total: (.items | map(.p) | add),
              method: $request.method,
              path: $request.path,
              shop: $request.params.shop,
              page: ($request.query.page | tonumber),
              agent: $request.headers["x-client"],
              consumer: $request.consumer,
              groups: $request.groups,
              status: $response.status,
              version: $response.headers["x-upstream-version"]
            }}
"#,
        up.url()
    )))
    .await;
    let (status, _, text) = send(
        client()
            .get(gw.url("/shops/s-1/cart?page=2&page=9"))
            .header("x-api-key", "alice-key-0001")
            .header("x-client", "app/1.0"),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(
        parse(&text),
        json!({
            "total": 5, "method": "GET", "path": "/shops/s-1/cart", "shop": "s-1", "page": 2,
            "agent": "app/1.0", "consumer": "alice", "groups": ["partners", "beta"],
            "status": 201, "version": "v9"
        })
    );
}

#[tokio::test]
async fn xml_and_form_bodies_are_read_into_the_same_model() {
    let xml = Bytes::from_static(
        br#"<?xml version="1.0"?><cat:catalog xmlns:cat="urn:c" version="2"><cat:item sku="a">Tea &amp; co</cat:item><cat:item sku="b"><cat:price>3</cat:price></cat:item></cat:catalog>"#,
    );
    let up_xml = fixed(200, &[("content-type", "application/xml")], xml).await;
    let up = mirror().await;
    let gw = gateway(&config(&format!(
        r#"upstreams:
  xml: {{ targets: [{{ url: "{}" }}] }}
  mirror: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: xml
    match: {{ paths: ["/catalog"] }}
    upstream: xml
    plugins:
      transform:
        response: {{ input: xml, strip_namespaces: true }}
  - name: form
    match: {{ paths: ["/signup"] }}
    upstream: mirror
    plugins:
      transform:
        request:
          input: form
          steps:
            - rename: {{ /tag: /tags }}
"#,
        up_xml.url(),
        up.url()
    )))
    .await;
    let (status, headers, text) = send(client().get(gw.url("/catalog"))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        parse(&text),
        json!({"catalog": {"@version": "2", "item": [
            {"@sku": "a", "#text": "Tea & co"},
            {"@sku": "b", "price": "3"}
        ]}})
    );

    let (status, _, text) = send(
        client()
            .post(gw.url("/signup"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("name=Ada+L&tag=a&tag=b%26c"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seen = parse(&text);
    assert_eq!(seen["headers"]["content-type"], "application/json");
    assert_eq!(
        parse(seen["body"].as_str().expect("body")),
        json!({"name": "Ada L", "tags": ["a", "b&c"]})
    );
}

#[tokio::test]
async fn xml_and_template_outputs_are_written_with_their_content_type() {
    let up = mirror().await;
    let gw = gateway(&route_config(
        &up,
        r##"
  - name: xml
    match: { paths: ["/xml"] }
    upstream: up
    plugins:
      transform:
        request:
          output: xml
          jq: '{order: {"@id": .id, line: [.lines[] | {"@sku": .sku, "#text": .qty}], note: .note}}'
  - name: template
    match: { paths: ["/template"] }
    upstream: up
    plugins:
      transform:
        request:
          output: template
          content_type: application/soap+xml
          template: '<order id="{{ /id }}"><note>{{ .note }}</note><n>{{ .lines | length }}</n><none>{{ /missing }}</none></order>'
"##,
    ))
    .await;
    let body = json!({"id": 7, "lines": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}], "note": "<b>&\"'"});
    let (status, _, text) = send(client().post(gw.url("/xml")).json(&body)).await;
    assert_eq!(status, 200, "{text}");
    let seen = parse(&text);
    assert_eq!(seen["headers"]["content-type"], "application/xml");
    assert_eq!(
        seen["body"],
        r#"<?xml version="1.0" encoding="UTF-8"?><order id="7"><line sku="a">2</line><line sku="b">1</line><note>&lt;b&gt;&amp;&quot;&apos;</note></order>"#
    );
    let (status, _, text) = send(client().post(gw.url("/template")).json(&body)).await;
    assert_eq!(status, 200, "{text}");
    let seen = parse(&text);
    assert_eq!(seen["headers"]["content-type"], "application/soap+xml");
    assert_eq!(
        seen["body"],
        r#"<order id="7"><note>&lt;b&gt;&amp;&quot;&apos;</note><n>2</n><none></none></order>"#
    );
}

#[tokio::test]
async fn a_malformed_body_gets_400_on_the_request_and_502_on_the_response() {
    let up = mirror().await;
    let broken = fixed(
        200,
        &[("content-type", "application/json")],
        Bytes::from_static(b"{\"a\":"),
    )
    .await;
    let gw = gateway(&config(&format!(
        r#"upstreams:
  mirror: {{ targets: [{{ url: "{}" }}] }}
  broken: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: in
    match: {{ paths: ["/in"] }}
    upstream: mirror
    plugins:
      transform:
        request: {{ steps: [{{ unwrap: /data }}] }}
  - name: out
    match: {{ paths: ["/out"] }}
    upstream: broken
    plugins:
      transform:
        response: {{ steps: [{{ remove: [/a] }}] }}
  - name: xml
    match: {{ paths: ["/xml"] }}
    upstream: mirror
    plugins:
      transform:
        response: {{ input: xml }}
"#,
        up.url(),
        broken.url()
    )))
    .await;
    // Not JSON: 400 with the reason; the upstream never hears of it.
    let (status, headers, text) = send(client().post(gw.url("/in")).body("{nope")).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(headers["content-type"], "application/problem+json");
    let detail = parse(&text)["detail"].as_str().expect("detail").to_string();
    assert!(
        detail.starts_with("the request body is not what this route expects: invalid JSON"),
        "{detail}"
    );
    // JSON, but not the shape the steps expect.
    let (status, _, text) = send(client().post(gw.url("/in")).json(&json!({"other": 1}))).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("nothing at /data"), "{text}");
    assert_eq!(up.requests(), 0);
    // The shape it expects passes.
    let (status, _, text) = send(
        client()
            .post(gw.url("/in"))
            .json(&json!({"data": {"x": 1}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        parse(parse(&text)["body"].as_str().expect("body")),
        json!({"x": 1})
    );

    // The upstream's broken JSON, and a JSON answer where XML was expected: 502.
    for path in ["/out", "/xml"] {
        let (status, headers, text) = send(client().get(gw.url(path))).await;
        assert_eq!(status, 502, "{path}: {text}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(
            parse(&text)["detail"],
            "the upstream's response is not what this route's transform expects"
        );
    }
}

#[tokio::test]
async fn a_gzip_compressed_upstream_answer_is_decoded_then_transformed() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(ORDERS.as_bytes()).expect("gzip");
    let gz = Bytes::from(gz.finish().expect("gzip"));
    let up = fixed(
        200,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("etag", "\"v1\""),
        ],
        gz,
    )
    .await;
    let gw = gateway(&route_config(
        &up,
        r#"
  - name: gz
    match: { paths: ["/"] }
    upstream: up
    plugins:
      transform:
        response: { jq: '{id: .data.id, refs: [.data.orders[].ref]}' }
"#,
    ))
    .await;
    // A client that decodes nothing itself: what it gets is the plain transformed body.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .expect("client");
    let (status, headers, text) = send(plain.get(gw.url("/"))).await;
    assert_eq!(status, 200, "{text}");
    assert!(headers.get("content-encoding").is_none(), "{headers:?}");
    assert_eq!(
        headers["etag"], "W/\"v1\"",
        "the bytes changed: a weak validator"
    );
    assert_eq!(text, r#"{"id":7,"refs":["a","b"]}"#);
}

#[tokio::test]
async fn fail_steps_statuses_and_the_caps() {
    let up = upstream(|req: Request<Incoming>| async move {
        let (status, body) = match req.uri().path() {
            "/missing" => (
                404,
                r#"{"error":{"code":"not_found","message":"no such order"}}"#.to_string(),
            ),
            "/big" | "/fail-big" => (200, format!(r#"{{"pad":"{}"}}"#, "x".repeat(4000))),
            _ => (
                200,
                r#"{"error":{"code":"boom","message":"it broke"}}"#.to_string(),
            ),
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(full(body))
            .expect("response")
    })
    .await;
    let gw = gateway(&route_config(
        &up,
        r#"
  - name: fail
    match: { paths: ["/boom", "/missing"] }
    upstream: up
    plugins:
      transform:
        response:
          steps:
            - fail:
                when: .error
                status: 'if .error.code == "not_found" then 404 else 503 end'
                detail: /error/message
  - name: only-200
    match: { paths: ["/only"] }
    upstream: up
    plugins:
      transform:
        response:
          statuses: [200]
          jq: '{wrapped: .}'
  - name: cap-pass
    match: { paths: ["/big"] }
    upstream: up
    plugins:
      transform:
        max_body: 1KiB
        response: { jq: '{wrapped: .}' }
        request: { jq: '{wrapped: .}' }
  - name: cap-fail
    match: { paths: ["/fail-big"] }
    upstream: up
    plugins:
      transform:
        max_body: 1KiB
        over_cap: fail
        response: { jq: '{wrapped: .}' }
  - name: out-cap
    match: { paths: ["/out-cap"] }
    upstream: up
    plugins:
      transform:
        max_output: 10
        response: { jq: '{wrapped: .}' }
  - name: validate
    match: { paths: ["/validate"] }
    upstream: up
    plugins:
      transform:
        request:
          steps:
            - fail: { when: '.qty < 1', detail: '"qty must be at least 1"' }
"#,
    ))
    .await;
    let (status, headers, text) = send(client().get(gw.url("/missing"))).await;
    assert_eq!(status, 404, "{text}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(parse(&text)["detail"], "no such order");
    let (status, _, text) = send(client().get(gw.url("/boom"))).await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(parse(&text)["detail"], "it broke");

    // Request validation: refused before the upstream.
    let before = up.requests();
    let (status, _, text) = send(client().post(gw.url("/validate")).json(&json!({"qty": 0}))).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(parse(&text)["detail"], "qty must be at least 1");
    assert_eq!(up.requests(), before);
    let (status, _, _) = send(client().post(gw.url("/validate")).json(&json!({"qty": 2}))).await;
    assert_eq!(status, 200);

    // Over max_body: a response passes untouched (or fails), a request is refused.
    let (status, _, text) = send(client().get(gw.url("/big"))).await;
    assert_eq!(status, 200);
    assert!(
        text.starts_with(r#"{"pad":"xxx"#),
        "untouched: {}",
        &text[..20]
    );
    let (status, _, text) = send(client().post(gw.url("/big")).body("y".repeat(2000))).await;
    assert_eq!(status, 413, "{text}");
    let (status, _, _) = send(client().get(gw.url("/fail-big"))).await;
    assert_eq!(status, 502);
    // A result over max_output.
    let (status, _, _) = send(client().get(gw.url("/out-cap"))).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn statuses_limit_which_responses_are_transformed() {
    let up = upstream(|req: Request<Incoming>| async move {
        let status = if req.uri().path() == "/a" { 200 } else { 404 };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(full(r#"{"v":1}"#))
            .expect("response")
    })
    .await;
    let gw = gateway(&route_config(
        &up,
        r#"
  - name: only-200
    match: { paths: ["/"] }
    upstream: up
    plugins:
      transform:
        response: { statuses: [200], jq: '{wrapped: .}' }
"#,
    ))
    .await;
    assert_eq!(
        send(client().get(gw.url("/a"))).await.2,
        r#"{"wrapped":{"v":1}}"#
    );
    let (status, _, text) = send(client().get(gw.url("/b"))).await;
    assert_eq!((status, text.as_str()), (404, r#"{"v":1}"#));
}

#[tokio::test]
async fn an_endless_jq_loop_stops_at_the_time_bound() {
    let up = fixed(
        200,
        &[("content-type", "application/json")],
        Bytes::from_static(b"{}"),
    )
    .await;
    let gw = gateway(&route_config(
        &up,
        r#"
  - name: slow
    match: { paths: ["/"] }
    upstream: up
    plugins:
      transform:
        jq_timeout: 50ms
        response: { jq: '[repeat(1)] | length' }
"#,
    ))
    .await;
    let (status, _, text) = send(client().get(gw.url("/"))).await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(
        parse(&text)["detail"],
        "the response transform took too long"
    );
    // The gateway goes on serving.
    assert_eq!(send(client().get(gw.url("/"))).await.0, 502);
}

#[test]
fn config_errors_are_reported_at_their_field_paths() {
    let base = "version: 1\nlisteners: [{ name: public, address: \"127.0.0.1:0\" }]\nupstreams:\n  up: { targets: [{ url: \"http://127.0.0.1:9\" }] }\nroutes:\n  - name: r\n    match: { paths: [\"/\"] }\n    upstream: up\n    plugins:\n      transform:\n";
    let errors = |t: &str| -> Vec<String> {
        let text = format!("{base}{t}");
        match frontdesk::config::load_str(&text, &|_| None) {
            Ok(_) => Vec::new(),
            Err(d) => d
                .iter()
                .filter(|d| d.is_error())
                .map(ToString::to_string)
                .collect(),
        }
    };
    let has = |errs: &[String], path: &str, what: &str| {
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("{path}: ")) && e.contains(what)),
            "{path} / {what}: {errs:?}"
        );
    };
    let at = "routes[0].plugins.transform";
    let e = errors("        response:\n          steps:\n            - remove: [/a]\n            - jq: '.a | '\n");
    has(&e, &format!("{at}.response.steps[1].jq"), "invalid jq");
    let e = errors("        response: { jq: 'nosuch(1)' }\n");
    has(
        &e,
        &format!("{at}.response.jq"),
        "undefined filter `nosuch`",
    );
    let e = errors("        request: { jq: '$response' }\n");
    has(&e, &format!("{at}.request.jq"), "undefined variable");
    let e = errors("        response: { steps: [{ to_query: { /a: q } }] }\n");
    has(
        &e,
        &format!("{at}.response.steps[0].to_query"),
        "a request step",
    );
    let e = errors("        request: { output: template }\n");
    has(&e, &format!("{at}.request.template"), "needs a `template`");
    let e = errors("        request: { output: template, template: 'x {{ .a | }}' }\n");
    has(&e, &format!("{at}.request.template"), "invalid jq");
    let e = errors("        request: { steps: [{ rename: { /a/*: /b } }] }\n");
    has(
        &e,
        &format!("{at}.request.steps[0].rename./a/*"),
        "same number of `*`",
    );
    let e = errors("        request: { steps: [{ set: { a: 1 } }] }\n");
    has(
        &e,
        &format!("{at}.request.steps[0].set.a"),
        "must start with `/`",
    );
    let e = errors("        response: { steps: [{ fail: { when: /x, status: 200 } }] }\n");
    has(
        &e,
        &format!("{at}.response.steps[0].fail.status"),
        "between 400 and 599",
    );
    let e = errors(
        "        jq_timeout: 1m\n        response: { jq: '.', steps: [{ remove: [/a] }] }\n",
    );
    has(&e, &format!("{at}.jq_timeout"), "");
    has(&e, &format!("{at}.response.jq"), "not both");
    let e = errors("        response: { steps: [{ frobnicate: 1 }] }\n");
    has(&e, &format!("{at}.response.steps[0]"), "frobnicate");
    let e = errors(
        "        response: { statuses: [200], jq: '.' }\n        request: { statuses: [200] }\n",
    );
    has(
        &e,
        &format!("{at}.request.statuses"),
        "a request has no status",
    );
    assert!(
        errors("        response: { jq: '{a: $request.path, s: $response.status}' }\n").is_empty()
    );
}

fn frontdesk() -> Command {
    Command::new(env!("CARGO_BIN_EXE_frontdesk"))
}

/// Runs `frontdesk transform ARGS` with `stdin`; (exit ok, stdout, stderr).
fn offline(config: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(&path, config).expect("config");
    let mut child = frontdesk()
        .arg("transform")
        .arg("-c")
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("frontdesk transform");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("exit");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_transform_command_runs_a_route_transform_offline() {
    let cfg = r#"version: 1
listeners: [{ name: public, address: "127.0.0.1:0" }]
upstreams:
  up: { targets: [{ url: "http://127.0.0.1:9" }] }
routes:
  - name: users
    match: { paths: [{ template: "/users/{id}" }] }
    upstream: up
    plugins:
      transform:
        request:
          method: PUT
          steps:
            - from_param: { id: /id }
            - from_header: { x-tenant: /tenant }
            - to_path: "/v2/users/{{ /id }}"
        response:
          input: xml
          steps:
            - fail: { when: '$response.status >= 500', detail: '"upstream down"' }
            - jq: '{name: .user.name, status: $response.status, path: $request.path}'
"#;
    let (ok, out, err) = offline(
        cfg,
        &[
            "--route",
            "users",
            "--response",
            "--status",
            "201",
            "--path",
            "/users/7",
        ],
        "<user><name>Ada</name></user>",
    );
    assert!(ok, "{err}");
    assert_eq!(out, r#"{"name":"Ada","status":201,"path":"/users/7"}"#);

    let (ok, out, err) = offline(
        cfg,
        &[
            "--route",
            "users",
            "--request",
            "--param",
            "id=7",
            "-H",
            "x-tenant: acme",
            "--head",
        ],
        r#"{"name":"Ada"}"#,
    );
    assert!(ok, "{err}");
    let (head, body) = out.split_once("\n\n").expect("head, then body");
    assert!(head.starts_with("PUT /v2/users/7\n"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body, r#"{"name":"Ada","id":"7","tenant":"acme"}"#);

    // A body that does not fit: exit 1, the reason on stderr.
    let (ok, out, err) = offline(cfg, &["--route", "users", "--response"], "<user>");
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.contains("invalid XML"), "{err}");
    let (ok, _, err) = offline(
        cfg,
        &["--route", "users", "--response", "--status", "503"],
        "<u/>",
    );
    assert!(!ok);
    assert!(
        err.contains("a fail step answered 502: upstream down"),
        "{err}"
    );
    let (ok, _, err) = offline(cfg, &["--route", "nope", "--response"], "");
    assert!(!ok);
    assert!(err.contains("no route is named \"nope\""), "{err}");
}

#[test]
fn a_recursive_jq_definition_is_refused_at_load_with_its_field_path() {
    let yaml = r#"version: 1
listeners: [{ name: public, address: "127.0.0.1:0" }]
upstreams: { api: { targets: [{ url: "http://127.0.0.1:9" }] } }
routes:
  - name: r
    match: { paths: ["/"] }
    upstream: api
    plugins:
      transform:
        response: { jq: 'def spin: [spin]; spin' }
"#;
    let errs = frontdesk_config::load_str(yaml, &|_| None).expect_err("refused");
    assert!(
        errs.iter().any(
            |d| d.path.starts_with("routes[0].plugins.transform.response")
                && d.message.contains("`spin` calls itself")
        ),
        "{errs:?}"
    );
}
