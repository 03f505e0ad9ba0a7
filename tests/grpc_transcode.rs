//! REST/JSON ↔ gRPC transcoding (`grpc_transcode`) through the real server stack, against a
//! real gRPC service (`grpc-testsvc`: tonic-generated, h2c, with server reflection): every HTTP
//! mapping rule, the proto3 JSON mapping, the error table with decoded details, deadlines,
//! streaming both ways, explicit rules, descriptor reloads, and native gRPC on the same route.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{client, config, gateway_in, h2c_client, TestGateway};
use serde_json::{json, Value};

/// A running test service and a gateway whose route `/` transcodes to it with `plugin` (YAML
/// of the plugin's config, indented under `grpc_transcode:`), descriptors in `shop.pb`.
struct Setup {
    svc: grpc_testsvc::Handle,
    gw: TestGateway,
}

async fn service() -> grpc_testsvc::Handle {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    grpc_testsvc::serve(l).await
}

fn yaml(svc: &grpc_testsvc::Handle, upstream_extra: &str, plugin: &str) -> String {
    config(&format!(
        r#"
upstreams:
  shop:
    targets: [{{ url: "{url}" }}]
    protocol: h2c
{upstream_extra}
routes:
  - name: shop
    match: {{ paths: ["/"] }}
    upstream: shop
    plugins:
      grpc_transcode:
{plugin}
"#,
        url = svc.url()
    ))
}

/// A service and a gateway transcoding to it with `DESCRIPTORS_SHOP` in `shop.pb`; `upstream_extra`
/// is added to the upstream, `plugin_extra` (indented lines) to the plugin after `descriptors`.
async fn setup_with(upstream_extra: &str, plugin_extra: &str) -> Setup {
    let svc = service().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.pb"), grpc_testsvc::DESCRIPTORS_SHOP).unwrap();
    let plugin = format!("        descriptors: {{ file: shop.pb }}\n{plugin_extra}");
    let gw = gateway_in(dir, &yaml(&svc, upstream_extra, &plugin)).await;
    Setup { svc, gw }
}

async fn setup() -> Setup {
    setup_with("", "").await
}

async fn get(s: &Setup, path: &str) -> (u16, String, Value) {
    send(s, reqwest::Method::GET, path, None).await
}

async fn send(
    s: &Setup,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut rb = client().request(method, s.gw.url(path));
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, ct, v)
}

#[tokio::test]
async fn path_variables_bindings_bodies_queries_and_response_fields_map_to_messages() {
    let s = setup().await;

    // Path variables; int64 printed as a string, enums by name, Timestamp in RFC 3339,
    // nested messages and maps in JSON names.
    let (st, ct, v) = get(&s, "/v1/shelves/s%201/items/7").await;
    assert_eq!((st, ct.as_str()), (200, "application/json"), "{v}");
    assert_eq!(v["id"], "7");
    assert_eq!(v["shelf"], "s 1");
    assert_eq!(v["name"], "item-7");
    assert_eq!(
        v["price"],
        json!({"currency": "EUR", "units": "700", "nanos": 5})
    );
    assert_eq!(v["kind"], "KIND_BOOK");
    assert_eq!(v["created"], "2023-11-14T22:13:20Z");
    assert_eq!(v["stock"], json!({"x": 1}));
    assert_eq!(v["size"], json!({"width": 1.5, "height": 2.0}));
    assert_eq!(s.svc.last_method().as_deref(), Some("GetItem"));

    // The additional binding reaches the same method.
    let (st, _, v) = get(&s, "/v1/items/8").await;
    assert_eq!((st, v["id"].clone()), (200, json!("8")));

    // `body: "item"` plus a query parameter for another field plus a path variable.
    let (st, _, v) = send(
        &s,
        reqwest::Method::POST,
        "/v1/shelves/north/items?request_id=r1",
        Some(json!({"name": "pen", "price": {"currency": "EUR", "units": "3"}})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["name"], "pen#r1");
    assert_eq!(v["shelf"], "north");
    assert_eq!(v["price"]["units"], "3");

    // `body: "*"` with a nested path variable (`{item.id}`) and a FieldMask in JSON form.
    let (st, _, v) = send(
        &s,
        reqwest::Method::PATCH,
        "/v1/items/9",
        Some(json!({"item": {"name": "x", "id": "1"}, "mask": "name,price.units"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], "9", "the path variable wins over the body");
    assert_eq!(v["name"], "name,price.units");

    // Query parameters: nested (`filter.min_units`), repeated (`filter.tags`), enums by name;
    // `response_body: "items"` answers with the list alone.
    let (st, _, v) = get(
        &s,
        "/v1/search?query=q&limit=5&filter.min_units=300&filter.tags=a&filter.tags=b&filter.kind=KIND_BOOK",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["3", "4", "5"]);
    assert_eq!(v[0]["name"], "q-3");
    // A JSON name works as a query key too.
    let (st, _, v) = get(&s, "/v1/search?query=z&filter.minUnits=500").await;
    assert_eq!(
        (st, v),
        (200, json!([])),
        "an empty list is still the answer"
    );

    // A `**` variable with a custom verb; bytes come back base64.
    let (st, _, v) = get(&s, "/v1/files/docs/a%20b/c.txt:read").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["path"], "docs/a b/c.txt");
    assert_eq!(v["content"], "ZG9jcy9hIGIvYy50eHQ=");
}

#[tokio::test]
async fn bad_requests_get_4xx_problems_and_unknown_fields_are_refused_unless_ignored() {
    let s = setup().await;
    let cases: Vec<(reqwest::Method, &str, Option<Value>, u16)> = vec![
        (reqwest::Method::GET, "/v1/search?nope=1", None, 400),
        (reqwest::Method::GET, "/v1/search?limit=many", None, 400),
        (
            reqwest::Method::GET,
            "/v1/search?filter.kind=KIND_CAR",
            None,
            400,
        ),
        (reqwest::Method::GET, "/v1/shelves/s/items/seven", None, 400),
        (
            reqwest::Method::POST,
            "/v1/echo",
            Some(json!({"nope": 1})),
            400,
        ),
        (
            reqwest::Method::POST,
            "/v1/echo",
            Some(json!(["not", "an", "object"])),
            400,
        ),
        (reqwest::Method::GET, "/v1/nothing/here", None, 404),
        (reqwest::Method::DELETE, "/v1/items/3", None, 405),
    ];
    let calls_before = s.svc.calls("Echo") + s.svc.calls("SearchItems") + s.svc.calls("GetItem");
    for (m, path, body, want) in cases {
        let (st, ct, v) = send(&s, m.clone(), path, body).await;
        assert_eq!(st, want, "{m} {path}: {v}");
        assert_eq!(ct, "application/problem+json", "{m} {path}");
        assert_eq!(v["status"], want);
    }
    assert_eq!(
        s.svc.calls("Echo") + s.svc.calls("SearchItems") + s.svc.calls("GetItem"),
        calls_before,
        "refused requests never reach the service"
    );
    let resp = client()
        .delete(s.gw.url("/v1/items/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "GET, PATCH");
    // A body that is not JSON by its type.
    let resp = client()
        .post(s.gw.url("/v1/echo"))
        .header("content-type", "application/xml")
        .body("<a/>")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);

    // The same requests with `ignore_unknown_fields`.
    let s = setup_with("", "        ignore_unknown_fields: true").await;
    let (st, _, v) = get(&s, "/v1/search?nope=1&limit=1").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (st, _, _) = send(
        &s,
        reqwest::Method::POST,
        "/v1/echo",
        Some(json!({"nope": 1, "ratio": 0.5})),
    )
    .await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn grpc_statuses_become_their_http_statuses_with_the_message_and_decoded_details() {
    let s = setup().await;
    let table = [
        (1, 499, "CANCELLED"),
        (2, 500, "UNKNOWN"),
        (3, 400, "INVALID_ARGUMENT"),
        (4, 504, "DEADLINE_EXCEEDED"),
        (5, 404, "NOT_FOUND"),
        (6, 409, "ALREADY_EXISTS"),
        (7, 403, "PERMISSION_DENIED"),
        (8, 429, "RESOURCE_EXHAUSTED"),
        (9, 400, "FAILED_PRECONDITION"),
        (10, 409, "ABORTED"),
        (11, 400, "OUT_OF_RANGE"),
        (12, 501, "UNIMPLEMENTED"),
        (13, 500, "INTERNAL"),
        (14, 503, "UNAVAILABLE"),
        (15, 500, "DATA_LOSS"),
        (16, 401, "UNAUTHENTICATED"),
    ];
    for (code, http, name) in table {
        let (st, ct, v) = send(
            &s,
            reqwest::Method::POST,
            "/v1/fail",
            Some(json!({"code": code, "message": format!("failed ü {code}")})),
        )
        .await;
        assert_eq!(st, http, "code {code}: {v}");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(v["grpc_status"], code);
        assert_eq!(v["grpc_code"], name);
        assert_eq!(v["detail"], format!("failed ü {code}"));
    }
    // OK answers with the (empty) message.
    let (st, _, v) = send(
        &s,
        reqwest::Method::POST,
        "/v1/fail",
        Some(json!({"code": 0})),
    )
    .await;
    assert_eq!((st, v), (200, json!({})));

    // `grpc-status-details-bin`: each detail decoded by its type, with `@type`.
    let (st, _, v) = send(
        &s,
        reqwest::Method::POST,
        "/v1/fail",
        Some(json!({"code": 9, "message": "nope", "withDetails": true})),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        v["details"],
        json!([{"@type": "type.googleapis.com/shop.v1.FailureDetail", "reason": "because", "field": "code"}])
    );
    assert!(v["request_id"].is_string());

    // A status from the service's own logic.
    let (st, _, v) = get(&s, "/v1/items/404").await;
    assert_eq!((st, v["detail"].clone()), (404, json!("no item 404")));
}

#[tokio::test]
async fn well_known_types_64_bit_integers_bytes_enums_and_any_round_trip() {
    let s = setup().await;
    let msg = json!({
        "at": "2024-02-29T12:30:45.123Z",
        "took": "1.500s",
        "attrs": {"a": 1.0, "b": [true, null, "x"], "c": {"d": "e"}},
        "value": "just a string",
        "list": [1.0, "two", false],
        "mask": "name,price.units",
        "note": "wrapped",
        "count": "42",
        "flag": false,
        "extra": {"@type": "type.googleapis.com/shop.v1.Money", "currency": "EUR", "units": "12"},
        "nothing": {},
        "big": "9007199254740993",
        "huge": "18446744073709551615",
        "blob": "AAEC/w==",
        "kind": "KIND_TOOL",
        "ratio": 0.25,
        "prices": [{"currency": "USD", "units": "-3", "nanos": -5}]
    });
    let (st, _, v) = send(&s, reqwest::Method::POST, "/v1/echo", Some(msg.clone())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, msg);
    // Numbers for int64 are accepted on the way in; enums by number too.
    let (st, _, v) = send(
        &s,
        reqwest::Method::POST,
        "/v1/echo",
        Some(json!({"big": 5, "kind": 2})),
    )
    .await;
    assert_eq!((st, v), (200, json!({"big": "5", "kind": "KIND_TOOL"})));
    // An Any of a type the descriptors do not have is refused.
    let (st, _, _) = send(
        &s,
        reqwest::Method::POST,
        "/v1/echo",
        Some(json!({"extra": {"@type": "type.googleapis.com/no.Such", "x": 1}})),
    )
    .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn printing_options_emit_defaults_and_proto_names() {
    let s = setup_with("", "        emit_defaults: true\n        proto_names: true").await;
    let (st, _, v) = send(
        &s,
        reqwest::Method::POST,
        "/v1/echo",
        Some(json!({"ratio": 0.5})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["big"], "0");
    assert_eq!(v["blob"], "");
    assert_eq!(v["kind"], "KIND_UNSPECIFIED");
    let (_, _, v) = send(
        &s,
        reqwest::Method::POST,
        "/v1/shelves/s/items?request_id=z",
        Some(json!({"name": "n"})),
    )
    .await;
    assert!(v.get("tags").is_some(), "{v}");
    assert_eq!(v["name"], "n#z");
}

#[tokio::test]
async fn deadlines_come_from_grpc_timeout_or_the_upstream_timeout() {
    let s = setup_with("    timeout: 2s", "").await;
    // No grpc-timeout from the client: the upstream's response timeout is sent.
    let (st, _, v) = get(&s, "/v1/slow/1").await;
    assert_eq!((st, v["sleptMs"].clone()), (200, json!(1)));
    let md = s.svc.last_metadata().unwrap();
    assert_eq!(md.get("grpc-timeout").unwrap().to_str().unwrap(), "2000m");
    assert_eq!(
        md.get("content-type").unwrap().to_str().unwrap(),
        "application/grpc"
    );
    assert_eq!(md.get("te").unwrap().to_str().unwrap(), "trailers");

    // The client's own grpc-timeout: the service gives up at it.
    let resp = client()
        .get(s.gw.url("/v1/slow/1500"))
        .header("grpc-timeout", "100m")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["grpc_code"], "DEADLINE_EXCEEDED");
}

/// Reads a streaming body until `n` more complete lines (or `until` is seen) have arrived.
async fn read_until(resp: &mut reqwest::Response, buf: &mut String, needle: &str) {
    while !buf.contains(needle) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the next piece arrives")
            .unwrap()
            .expect("the body goes on");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn server_streaming_arrives_message_by_message_as_ndjson_sse_or_an_array() {
    let s = setup().await;

    // NDJSON (the default): the first message arrives while the service holds the second.
    let mut resp = client()
        .get(s.gw.url("/v1/shelves/a/watch?count=3&hold=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut buf = String::new();
    read_until(&mut resp, &mut buf, "\n").await;
    assert_eq!(
        buf.lines().count(),
        1,
        "only the first message so far: {buf}"
    );
    let first: Value = serde_json::from_str(buf.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["id"].clone(), first["shelf"].clone()),
        (json!("1"), json!("a"))
    );
    s.svc.release(1);
    read_until(&mut resp, &mut buf, "\"id\":\"2\"").await;
    assert!(
        !buf.contains("\"id\":\"3\""),
        "the third is still held: {buf}"
    );
    s.svc.release(1);
    let rest = resp.text().await.unwrap();
    buf.push_str(&rest);
    let ids: Vec<String> = buf
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);

    // Server-sent events when the client asks for them, also message by message.
    let mut resp = client()
        .get(s.gw.url("/v1/shelves/b/watch?count=2&hold=true"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    read_until(&mut resp, &mut buf, "\n\n").await;
    assert!(buf.starts_with("data: {"), "{buf}");
    assert_eq!(buf.matches("data: ").count(), 1);
    s.svc.release(1);
    buf.push_str(&resp.text().await.unwrap());
    assert_eq!(buf.matches("data: ").count(), 2, "{buf}");

    // A JSON array for `Accept: application/json`: one valid document at the end.
    let resp = client()
        .get(s.gw.url("/v1/shelves/c/watch?count=3"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    let resp = client()
        .get(s.gw.url("/v1/shelves/c/watch?count=0"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!([]));

    // A stream that fails after its messages ends with an error entry carrying the status.
    let text = client()
        .get(s.gw.url("/v1/shelves/d/watch?count=2&fail_code=5"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[2]["error"]["grpc_code"], "NOT_FOUND");
    assert_eq!(lines[2]["error"]["status"], 404);
    assert_eq!(lines[2]["error"]["detail"], "watch failed");
    let text = client()
        .get(s.gw.url("/v1/shelves/d/watch?count=1&fail_code=14"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("event: error\ndata: {"), "{text}");
    assert!(text.contains("\"grpc_code\":\"UNAVAILABLE\""), "{text}");
}

#[tokio::test]
async fn client_streaming_takes_newline_delimited_json_as_it_arrives() {
    let s = setup().await;
    // Lines split across chunks anywhere, blank lines skipped.
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
        Ok(bytes::Bytes::from_static(
            b"{\"name\":\"a\",\"price\":{\"units\":\"1\"}}\n{\"na",
        )),
        Ok(bytes::Bytes::from_static(
            b"me\":\"b\",\"price\":{\"units\":\"2\"}}\n\n",
        )),
        Ok(bytes::Bytes::from_static(
            b"{\"name\":\"c\",\"price\":{\"units\":\"4\"}}",
        )),
    ];
    let resp = client()
        .post(s.gw.url("/v1/items:upload"))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({"count": 3, "totalUnits": "7", "names": ["a", "b", "c"]})
    );

    // A bad line is the client's error.
    let resp = client()
        .post(s.gw.url("/v1/items:upload"))
        .body("{\"name\":\"a\"}\nnot json\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn configured_rules_bind_methods_without_annotations() {
    let s = setup_with(
        "",
        r#"        services: [shop.v1.Legacy]
        rules:
          - { selector: shop.v1.Legacy.Ping, post: /legacy/ping, body: "*" }
          - { selector: shop.v1.Legacy/Ping, get: "/legacy/ping/{msg}", response_body: msg }"#,
    )
    .await;
    let (st, _, v) = send(
        &s,
        reqwest::Method::POST,
        "/legacy/ping",
        Some(json!({"msg": "hi", "times": 2})),
    )
    .await;
    assert_eq!(
        (st, v),
        (200, json!({"msg": "hihi", "atUnix": "1700000000"}))
    );
    let (st, _, v) = get(&s, "/legacy/ping/yo?times=3").await;
    assert_eq!((st, v), (200, json!("yoyoyo")));
    // `services:` leaves the annotated Shop out.
    let (st, _, _) = get(&s, "/v1/items/1").await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn bad_plugin_configs_are_refused_at_their_path() {
    let svc = service().await;
    for (plugin, needle) in [
        ("        descriptors: { file: missing.pb }", "descriptors.file"),
        (
            "        descriptors: { file: shop.pb }\n        rules: [{ selector: shop.v1.Nope.Ping, get: /x }]",
            "no method",
        ),
        (
            "        descriptors: { file: shop.pb }\n        rules: [{ selector: shop.v1.Legacy.Ping, get: \"/x/{nope}\" }]",
            "path variable nope",
        ),
        (
            "        descriptors: { file: shop.pb }\n        rules: [{ selector: shop.v1.Legacy.Ping, get: \"/x/{msg\" }]",
            "unclosed",
        ),
        ("        descriptors: { file: shop.pb, reflect: true }", "not both"),
        ("        descriptors: { file: shop.pb }\n        services: [no.Such]", "no service"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shop.pb"), grpc_testsvc::DESCRIPTORS_SHOP).unwrap();
        let path = dir.path().join("frontdesk.yaml");
        std::fs::write(&path, yaml(&svc, "", plugin)).unwrap();
        let err = match frontdesk::Gateway::start(&path).await {
            Ok(_) => panic!("{plugin} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("grpc_transcode"), "{err}");
        assert!(err.contains(needle), "{plugin}: {err}");
    }
}

#[tokio::test]
async fn a_changed_descriptor_file_is_picked_up_by_a_reload() {
    let s = setup().await;
    let (st, _, _) = get(&s, "/v1/hello/bob").await;
    assert_eq!(st, 404, "Extra is not in the first set");
    std::fs::write(
        s.gw.dir.path().join("shop.pb"),
        grpc_testsvc::DESCRIPTORS_ALL,
    )
    .unwrap();
    s.gw.gw.reload().await.unwrap();
    let (st, _, v) = get(&s, "/v1/hello/bob").await;
    assert_eq!((st, v), (200, json!({"greeting": "hello bob"})));
    // A broken file is refused by the reload and the running set stays.
    std::fs::write(
        s.gw.dir.path().join("shop.pb"),
        b"\xff\xffnot a descriptor set",
    )
    .unwrap();
    assert!(s.gw.gw.reload().await.is_err());
    let (st, _, _) = get(&s, "/v1/hello/ann").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn native_grpc_on_the_same_route_passes_untouched_and_http2_clients_transcode_too() {
    let s = setup().await;
    let channel = tonic::transport::Channel::from_shared(s.gw.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = grpc_testsvc::pb::shop::v1::shop_client::ShopClient::new(channel);
    let item = c
        .get_item(grpc_testsvc::pb::shop::v1::GetItemRequest {
            shelf: "n".into(),
            id: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((item.id, item.name.as_str()), (5, "item-5"));

    // JSON over HTTP/2 (prior knowledge, h2c).
    let h2 = h2c_client();
    let resp = h2.get(s.gw.url("/v1/items/6")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["name"], "item-6");
}

async fn service_with(opts: grpc_testsvc::Options) -> grpc_testsvc::Handle {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    grpc_testsvc::serve_with(l, opts).await
}

#[tokio::test]
async fn reflection_at_load_and_reload_keeps_the_last_good_set_when_a_fetch_fails() {
    // The first service reflects Shop only (no Extra).
    let first = service_with(grpc_testsvc::Options {
        extra: false,
        ..Default::default()
    })
    .await;
    let plugin = "        descriptors: { reflect: true, timeout: 5s }";
    let gw = gateway_in(tempfile::tempdir().unwrap(), &yaml(&first, "", plugin)).await;
    let s = Setup { svc: first, gw };
    let (st, _, v) = get(&s, "/v1/items/3").await;
    assert_eq!((st, v["name"].clone()), (200, json!("item-3")));
    assert_eq!(
        (get(&s, "/v1/hello/x").await).0,
        404,
        "Extra was not reflected"
    );
    assert!(s.svc.calls("ServerReflectionInfo") >= 1);

    // A new service with Extra: the reload fetches again and picks the change up.
    let second = service().await;
    s.gw.rewrite(&yaml(&second, "", plugin)).await;
    let out = s.gw.gw.reload().await.unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let (st, _, v) = get(&s, "/v1/hello/x").await;
    assert_eq!((st, v), (200, json!({"greeting": "hello x"})));

    // A service without reflection: the reload goes through with a warning, and the set fetched
    // before stays (the calls now go to the third service).
    let third = service_with(grpc_testsvc::Options {
        reflection: grpc_testsvc::Reflection::Off,
        ..Default::default()
    })
    .await;
    s.gw.rewrite(&yaml(&third, "", plugin)).await;
    let out = s.gw.gw.reload().await.unwrap();
    let warned: Vec<String> = out.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warned.iter().any(
            |w| w.contains("routes[0].plugins.grpc_transcode.descriptors")
                && w.contains(&third.url())
                && w.contains("keeping the descriptors fetched before")
        ),
        "{warned:?}"
    );
    let (st, _, v) = get(&s, "/v1/hello/y").await;
    assert_eq!((st, v), (200, json!({"greeting": "hello y"})));
    assert_eq!(third.calls("Hello"), 1);
    drop(second);
}

#[tokio::test]
async fn a_first_load_without_reflection_is_refused_with_the_reason() {
    let svc = service_with(grpc_testsvc::Options {
        reflection: grpc_testsvc::Reflection::Off,
        ..Default::default()
    })
    .await;
    // An explicit url: its own source, never fetched before in this process.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    let plugin = format!(
        "        descriptors: {{ reflect: true, url: \"{}\", timeout: 5s }}",
        svc.url()
    );
    std::fs::write(&path, yaml(&svc, "", &plugin)).unwrap();
    let err = match frontdesk::Gateway::start(&path).await {
        Ok(_) => panic!("started without descriptors"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("routes[0].plugins.grpc_transcode"), "{err}");
    assert!(err.contains("reflection"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_pull_pins_reflected_descriptors_that_work_with_reflection_off() {
    let reflecting = service().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pulled.pb");
    let url = reflecting.url();
    let out2 = out.clone();
    let o = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_frontdesk"))
            .args(["proto", "pull", "--reflect", &url, "-o"])
            .arg(&out2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The pinned file, against a service that has no reflection at all.
    let quiet = service_with(grpc_testsvc::Options {
        reflection: grpc_testsvc::Reflection::Off,
        ..Default::default()
    })
    .await;
    let gw = gateway_in(
        dir,
        &yaml(&quiet, "", "        descriptors: { file: pulled.pb }"),
    )
    .await;
    let s = Setup { svc: quiet, gw };
    let (st, _, v) = get(&s, "/v1/shelves/s/items/2").await;
    assert_eq!((st, v["price"]["units"].clone()), (200, json!("200")));
    let (st, _, v) = get(&s, "/v1/hello/pin").await;
    assert_eq!((st, v["greeting"].clone()), (200, json!("hello pin")));
    assert_eq!(s.svc.calls("ServerReflectionInfo"), 0);
}

#[tokio::test]
async fn explain_names_the_grpc_method_a_request_becomes() {
    let s = setup().await;
    let text = common::explain_cli(&s.gw.path(), &["GET", "/v1/shelves/a/watch"]);
    assert!(
        text.contains("transcoded to gRPC /shop.v1.Shop/WatchItems (binding GET /v1/shelves/{shelf}/watch, server streaming)"),
        "{text}"
    );
    let text = common::explain_cli(&s.gw.path(), &["DELETE", "/v1/items/1"]);
    assert!(
        text.contains("405: the path is bound to GET, PATCH only"),
        "{text}"
    );
    let text = common::explain_cli(
        &s.gw.path(),
        &[
            "POST",
            "/shop.v1.Shop/GetItem",
            "-H",
            "content-type: application/grpc",
        ],
    );
    assert!(
        text.contains("gRPC request: passed through untouched"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_service_is_a_problem_for_json_clients() {
    let s = setup().await;
    let Setup { svc, gw } = s;
    svc.shutdown().await;
    let resp = client().get(gw.url("/v1/items/1")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], 502);
    assert!(v["detail"].as_str().unwrap().contains("upstream"), "{v}");
}

#[tokio::test]
async fn max_message_size_caps_bodies_both_ways() {
    let s = setup_with("", "        max_message_size: 64B").await;
    // A small call whose answer fits.
    let (st, _, v) = send(
        &s,
        reqwest::Method::POST,
        "/v1/echo",
        Some(json!({"ratio": 0.5})),
    )
    .await;
    assert_eq!((st, v), (200, json!({"ratio": 0.5})));
    // A JSON body over the cap: 413, and the service never sees it.
    let before = s.svc.calls("Echo");
    let (st, ct, _) = send(
        &s,
        reqwest::Method::POST,
        "/v1/echo",
        Some(json!({"note": "x".repeat(100)})),
    )
    .await;
    assert_eq!((st, ct.as_str()), (413, "application/problem+json"));
    assert_eq!(s.svc.calls("Echo"), before);
    // An answer over the cap (GetItem's Item is over 64 bytes): 502.
    let (st, _, _) = get(&s, "/v1/items/7").await;
    assert_eq!(st, 502);
}
