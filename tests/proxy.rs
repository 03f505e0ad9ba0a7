//! End-to-end proxying through the real server stack: routing, forwarding headers, request ids,
//! balancing, HTTP/2 cleartext, plugins.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, config, echo, echo_json, gateway, h2c_client};

#[tokio::test]
async fn routes_by_host_path_method_and_header_and_strips_prefix() {
    let users = echo("users").await;
    let orders = echo("orders").await;
    let other = echo("other").await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  users: {{ targets: [{{ url: "{}" }}] }}
  orders: {{ targets: [{{ url: "{}" }}] }}
  other: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: users
    match:
      hosts: ["api.example.com", "*.example.org"]
      paths: ["/users"]
      methods: [GET, POST]
      headers: {{ x-api-version: "2" }}
    upstream: users
    strip_prefix: true
  - name: orders
    match:
      paths:
        - {{ exact: /orders/latest }}
        - {{ template: "/orders/{{id}}" }}
        - {{ regex: "^/v[0-9]+/orders" }}
    upstream: orders
  - name: fallback
    match: {{ paths: ["/users", "/usersX"] }}
    upstream: other
"#,
        users.url(),
        orders.url(),
        other.url()
    )))
    .await;
    let c = client();
    let get = |host: &'static str, path: &'static str, version: Option<&'static str>| {
        let mut rb = c.get(gw.url(path)).header("host", host);
        if let Some(v) = version {
            rb = rb.header("x-api-version", v);
        }
        rb.send()
    };
    let v = echo_json(
        get("api.example.com", "/users/42?x=1", Some("2"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["name"], "users");
    assert_eq!(v["uri"], "/42?x=1", "prefix stripped, query kept");
    let v = echo_json(
        get("a.b.example.org:8443", "/users", Some("2"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (v["name"].as_str(), v["uri"].as_str()),
        (Some("users"), Some("/"))
    );
    // Wrong header value, wrong host, segment-unaware prefix: all fall through to the fallback.
    for (host, path, ver) in [
        ("api.example.com", "/users/1", Some("3")),
        ("example.org", "/users/1", Some("2")),
        ("api.example.com", "/usersX", Some("2")),
    ] {
        let v = echo_json(get(host, path, ver).await.unwrap()).await;
        assert_eq!(v["name"], "other", "{host}{path}");
    }
    let del = c
        .delete(gw.url("/users/1"))
        .header("host", "api.example.com")
        .header("x-api-version", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        echo_json(del).await["name"],
        "other",
        "method not allowed by the route"
    );
    for path in ["/orders/latest", "/orders/9", "/v3/orders/x"] {
        let v = echo_json(c.get(gw.url(path)).send().await.unwrap()).await;
        assert_eq!(v["name"], "orders", "{path}");
        assert_eq!(v["uri"], path, "no strip without strip_prefix");
    }
}

#[tokio::test]
async fn unmatched_request_gets_a_404_problem() {
    let up = echo("u").await;
    let gw = gateway(&config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/only\"] }}, upstream: u }}\n",
        up.url()
    )))
    .await;
    let resp = client().get(gw.url("/elsewhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn forwards_with_proxy_headers_and_strips_hop_by_hop_both_ways() {
    let up = echo("u").await;
    let yaml = config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n",
        up.url()
    ))
    .replacen("server: { drain_timeout: 5s }", "server: { drain_timeout: 5s, via: edge-gw }", 1);
    let gw = gateway(&yaml).await;
    let resp = client()
        .get(gw.url("/p"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "drop me")
        .header("proxy-authorization", "Basic xyz")
        .header("x-request-id", "client-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-request-id"],
        "client-id-1",
        "well-formed id echoed"
    );
    assert!(
        resp.headers().get("x-upstream-hop").is_none(),
        "header named in upstream Connection removed"
    );
    assert!(resp.headers().get("keep-alive").is_none());
    let v = echo_json(resp).await;
    let h = &v["headers"];
    assert_eq!(h["host"], "shop.example.com", "Host preserved by default");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["via"], "1.1 edge-gw");
    assert_eq!(h["x-request-id"], "client-id-1");
    assert!(
        h.get("x-client-hop").is_none(),
        "header named in Connection removed"
    );
    assert!(h.get("proxy-authorization").is_none());
}

#[tokio::test]
async fn replaces_malformed_request_ids_and_generates_missing_ones() {
    let up = echo("u").await;
    let gw = gateway(&config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n",
        up.url()
    )))
    .await;
    let c = client();
    let long = "a".repeat(129);
    for bad in ["has space", "semi;colon", long.as_str()] {
        let resp = c
            .get(gw.url("/"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(echoed, bad);
        let v = echo_json(resp).await;
        assert_eq!(
            v["headers"]["x-request-id"],
            echoed.as_str(),
            "upstream and client see the same id"
        );
    }
    let a = c.get(gw.url("/")).send().await.unwrap().headers()["x-request-id"].clone();
    let b = c.get(gw.url("/")).send().await.unwrap().headers()["x-request-id"].clone();
    assert_ne!(a, b, "generated ids are unique");
}

#[tokio::test]
async fn preserve_host_false_sends_the_target_authority() {
    let up = echo("u").await;
    let gw = gateway(&config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u, preserve_host: false }}\n",
        up.url()
    )))
    .await;
    let v = echo_json(
        client()
            .get(gw.url("/"))
            .header("host", "public.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["headers"]["host"], up.addr.to_string());
    assert_eq!(v["headers"]["x-forwarded-host"], "public.example");
}

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let a = echo("a").await;
    let b = echo("b").await;
    let gw = gateway(&config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}, {{ url: \"{}\", weight: 3 }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n",
        a.url(),
        b.url()
    )))
    .await;
    let c = client();
    for _ in 0..40 {
        assert!(c
            .get(gw.url("/"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    assert_eq!((a.requests(), b.requests()), (10, 30));
}

#[tokio::test]
async fn serves_http2_cleartext_with_prior_knowledge_on_the_same_port() {
    let up = echo("u").await;
    let gw = gateway(&config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n",
        up.url()
    )))
    .await;
    let h2 = h2c_client();
    let resp = h2.get(gw.url("/h2?q=1")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let v = echo_json(resp).await;
    assert_eq!(v["uri"], "/h2?q=1");
    assert_eq!(
        v["headers"]["host"],
        gw.addr.to_string(),
        ":authority becomes Host upstream"
    );
    let h1 = client().get(gw.url("/h1")).send().await.unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn plugins_transform_headers_and_answer_statically() {
    let up = echo("u").await;
    let gw = gateway(&config(&format!(
        r#"upstreams: {{ u: {{ targets: [{{ url: "{}" }}] }} }}
routes:
  - name: orders
    match: {{ paths: ["/orders"] }}
    upstream: u
    plugins:
      headers:
        request:  {{ set: {{ x-gateway: frontdesk, x-order: route }}, add: {{ x-trace-hop: gw }}, remove: [x-internal-token] }}
        response: {{ set: {{ x-served-by: frontdesk, x-order: route }}, remove: [server] }}
  - name: status
    match: {{ paths: [{{ exact: /status }}] }}
    plugins:
      respond: {{ status: 200, body: '{{"ok":true}}', headers: {{ content-type: application/json }} }}
plugins:
  headers:
    request: {{ set: {{ x-order: global }}, add: {{ x-global: "1" }} }}
    response: {{ set: {{ x-order: global }} }}
"#,
        up.url()
    )))
    .await;
    let c = client();
    let resp = c
        .get(gw.url("/orders/1"))
        .header("x-internal-token", "secret")
        .header("x-trace-hop", "client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-served-by"], "frontdesk");
    assert!(
        resp.headers().get("server").is_none(),
        "response header removed"
    );
    // Response phase runs in reverse: the route's plugin first, the global one last (outermost).
    assert_eq!(resp.headers()["x-order"], "global");
    let v = echo_json(resp).await;
    let h = &v["headers"];
    assert_eq!(h["x-gateway"], "frontdesk");
    assert_eq!(h["x-trace-hop"], "client,gw", "add appends");
    assert!(h.get("x-internal-token").is_none());
    assert_eq!(
        h["x-order"], "route",
        "request phase: global runs before the route's own"
    );
    assert_eq!(h["x-global"], "1");

    let before = up.requests();
    let resp = c.get(gw.url("/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.headers()["x-order"],
        "global",
        "global response plugins also run on plugin answers"
    );
    assert_eq!(resp.text().await.unwrap(), r#"{"ok":true}"#);
    assert_eq!(up.requests(), before, "respond never reaches an upstream");
}

#[tokio::test]
async fn response_plugins_also_see_gateway_errors_on_a_matched_route() {
    let dead = common::closed_port().await;
    let gw = gateway(&config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"http://{dead}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u, plugins: {{ headers: {{ response: {{ set: {{ x-frame-options: DENY }} }} }} }} }}\n"
    )))
    .await;
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn a_slow_reader_gets_the_whole_response_before_the_connection_is_parked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 16 * 1024 * 1024;
    let up = common::upstream(|_req| async move {
        use http_body_util::BodyExt;
        let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let frames =
            futures_util::stream::iter(std::iter::repeat_n(chunk, SIZE / (64 * 1024)).map(|b| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(b))
            }));
        hyper::Response::builder()
            .header("content-length", SIZE.to_string())
            .body(http_body_util::StreamBody::new(frames).boxed())
            .unwrap()
    })
    .await;
    let gw = gateway(&config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"{}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: u }}\n",
        up.url()
    )))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    // Several rounds on one keep-alive connection: the stall below hits the race only sometimes.
    for round in 0..4 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Let the socket buffers fill before reading anything.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut got = Vec::with_capacity(SIZE + 1024);
        let body_start = loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "round {round}: closed before the head");
            got.extend_from_slice(&buf[..n]);
            if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let mut stalled = false;
        while got.len() - body_start < SIZE {
            // Stall again near the end, when the gateway has read the whole upstream body but
            // still holds bytes the socket could not take: a park then would cut the response.
            if !stalled && got.len() - body_start > SIZE - 3 * 1024 * 1024 {
                stalled = true;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("body in time")
                .unwrap();
            assert!(
                n > 0,
                "round {round}: connection closed after {} of {SIZE} body bytes",
                got.len() - body_start
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len() - body_start, SIZE, "round {round}");
    }
    // The connection is still usable for the next request afterwards.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "second response on the same connection"
    );
}
