//! Traces through the real gateway: W3C trace context continued or started and sent upstream per
//! attempt, and the spans exported over OTLP/gRPC to a real receiver in this test (the
//! collector's `TraceService` served by tonic) that records every export it gets.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, closed_port, config, echo, echo_json, gateway};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Everything the receiver was sent.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Recorded {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Recorded {
    /// Every span received in `trace` (lowercase hex), with its resource's attributes.
    fn spans(&self, trace: &str) -> Vec<(Vec<KeyValue>, Span)> {
        let mut out = Vec::new();
        for req in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let resource = rs.resource.clone().unwrap_or_default().attributes;
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        if hex(&s.trace_id) == trace {
                            out.push((resource.clone(), s.clone()));
                        }
                    }
                }
            }
        }
        out
    }

    /// Waits (up to 5 s: the exporter sends in batches, once a second) until `n` spans of
    /// `trace` have arrived; returns them server span first, then attempts in start order.
    async fn wait(&self, trace: &str, n: usize) -> (Vec<KeyValue>, Span, Vec<Span>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let spans = self.spans(trace);
            if spans.len() >= n {
                assert_eq!(spans.len(), n, "spans of {trace}: {spans:#?}");
                let server = spans
                    .iter()
                    .find(|(_, s)| s.kind == SpanKind::Server as i32)
                    .expect("a server span")
                    .clone();
                let mut attempts: Vec<Span> = spans
                    .into_iter()
                    .map(|(_, s)| s)
                    .filter(|s| s.kind == SpanKind::Client as i32)
                    .collect();
                attempts.sort_by_key(|s| s.start_time_unix_nano);
                assert_eq!(attempts.len(), n - 1, "one server span, the rest attempts");
                return (server.0, server.1, attempts);
            }
            assert!(
                Instant::now() < deadline,
                "{n} spans of {trace} not received in 5 s (got {})",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts the receiver on port 0.
async fn receiver() -> (String, Recorded) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Recorded::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(recorded.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), recorded)
}

/// A sampled `traceparent` continuing `trace` from the caller's span `PARENT`.
fn sampled(trace: &str) -> String {
    format!("00-{trace}-{PARENT}-01")
}

/// Sends `req` as part of sampled trace `trace`.
async fn send_sampled(req: reqwest::RequestBuilder, trace: &str) -> reqwest::Response {
    req.header("traceparent", sampled(trace))
        .send()
        .await
        .unwrap()
}

/// A span's status code; unset when it has none.
fn status(span: &Span) -> i32 {
    span.status.clone().unwrap_or_default().code
}

/// A span's attribute.
fn span_attr(span: &Span, key: &str) -> Option<String> {
    attr(&span.attributes, key)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A span attribute's value, as a string or an integer.
fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .clone()?
        .value?;
    Some(match v {
        Value::StringValue(s) => s,
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

/// The `traceparent` the upstream received, split into its four fields.
fn traceparent(echo: &serde_json::Value) -> [String; 4] {
    let tp = echo["headers"]["traceparent"]
        .as_str()
        .expect("upstream got a traceparent");
    let parts: Vec<String> = tp.split('-').map(str::to_string).collect();
    parts.try_into().expect("four fields")
}

/// The `observability` block that exports to `endpoint` and samples every new trace.
fn tracing_to(endpoint: &str) -> String {
    format!(
        "observability:\n  tracing: {{ otlp_endpoint: \"{endpoint}\", service_name: edge-test, sample_ratio: 1.0 }}\n"
    )
}

/// A traced gateway exporting to `endpoint`, with route `users` to `targets` (upstream
/// `users-up`, `extra` added to it) and no health checks, so a dead target stays in rotation.
async fn traced(endpoint: &str, targets: &[String], extra: &str) -> common::TestGateway {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ url: \"{t}\" }}"))
        .collect();
    gateway(&config(&format!(
        r#"{tracing}
upstreams:
  users-up:
    targets: [{targets}]
    health_check: {{ passive: {{ unhealthy_after: 0 }} }}
{extra}
routes:
  - {{ name: users, match: {{ paths: ["/users"] }}, upstream: users-up }}
"#,
        tracing = tracing_to(endpoint),
        targets = targets.join(", ")
    )))
    .await
}

#[tokio::test]
async fn a_sampled_parent_is_continued_and_the_attempt_span_is_the_upstreams_parent() {
    let (endpoint, rec) = receiver().await;
    let up = echo("users").await;
    let gw = traced(&endpoint, &[up.url()], "").await;
    let resp = send_sampled(
        client()
            .get(gw.url("/users/42"))
            .header("tracestate", "vendor=1,other=2"),
        TRACE,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = echo_json(resp).await;
    let [version, trace, parent, flags] = traceparent(&body);
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", TRACE, "01")
    );
    assert_ne!(
        parent, PARENT,
        "the upstream's parent is the gateway's attempt span"
    );
    assert_eq!(body["headers"]["tracestate"], "vendor=1,other=2");

    let (resource, server, attempts) = rec.wait(TRACE, 2).await;
    assert_eq!(
        attr(&resource, "service.name").as_deref(),
        Some("edge-test")
    );
    assert_eq!(hex(&server.parent_span_id), PARENT, "the caller's span");
    assert_eq!(server.trace_state, "vendor=1,other=2");
    let attempt = &attempts[0];
    assert_eq!(hex(&attempt.trace_id), TRACE);
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(
        hex(&attempt.span_id),
        parent,
        "the traceparent sent upstream"
    );
    assert!(server.start_time_unix_nano <= attempt.start_time_unix_nano);
    assert!(attempt.end_time_unix_nano <= server.end_time_unix_nano);
}

#[tokio::test]
async fn a_request_without_traceparent_starts_a_sampled_trace_and_exports_it() {
    let (endpoint, rec) = receiver().await;
    let up = echo("users").await;
    let gw = traced(&endpoint, &[up.url()], "").await;
    let body = echo_json(client().get(gw.url("/users")).send().await.unwrap()).await;
    let [_, trace, parent, flags] = traceparent(&body);
    assert_eq!(flags, "01");
    assert_ne!(trace, "0".repeat(32));

    let (_, server, attempts) = rec.wait(&trace, 2).await;
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(attempts[0].parent_span_id, server.span_id);
    assert_eq!(hex(&attempts[0].span_id), parent);
}

#[tokio::test]
async fn a_retry_gives_two_attempt_spans_under_one_server_span() {
    let (endpoint, rec) = receiver().await;
    let up = echo("users").await;
    let dead = format!("http://{}", closed_port().await);
    // Round robin starts at the first target: the dead one, then the retry on the live one.
    let gw = traced(
        &endpoint,
        &[dead.clone(), up.url()],
        "    retries: { attempts: 1, on: [connect_failure], backoff: 0s }",
    )
    .await;
    let resp = send_sampled(client().get(gw.url("/users")), TRACE).await;
    assert_eq!(resp.status(), 200);
    let [_, _, parent, _] = traceparent(&echo_json(resp).await);

    let (_, server, attempts) = rec.wait(TRACE, 3).await;
    assert_eq!(
        span_attr(&server, "http.response.status_code").as_deref(),
        Some("200")
    );
    let (first, second) = (&attempts[0], &attempts[1]);
    assert!(attempts.iter().all(|a| a.parent_span_id == server.span_id));
    assert_ne!(first.span_id, second.span_id);
    assert_eq!(span_attr(first, "url.full"), Some(dead));
    assert_eq!(
        span_attr(first, "error.type").as_deref(),
        Some("upstream_connect")
    );
    assert_eq!(span_attr(first, "http.response.status_code"), None);
    assert_eq!(status(first), StatusCode::Error as i32);
    assert_eq!(span_attr(second, "url.full"), Some(up.url()));
    assert_eq!(
        span_attr(second, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        span_attr(second, "http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(span_attr(second, "error.type"), None);
    assert_eq!(
        hex(&second.span_id),
        parent,
        "the answering attempt's span went upstream"
    );
}

#[tokio::test]
async fn an_unsampled_parent_is_propagated_but_nothing_is_exported() {
    let (endpoint, rec) = receiver().await;
    let up = echo("users").await;
    let gw = traced(&endpoint, &[up.url()], "").await;
    let c = client();
    let body = echo_json(
        c.get(gw.url("/users"))
            .header("traceparent", format!("00-{TRACE}-{PARENT}-00"))
            .header("tracestate", "vendor=1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let [_, trace, parent, flags] = traceparent(&body);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_ne!(parent, PARENT);
    assert_eq!(body["headers"]["tracestate"], "vendor=1");

    // A sampled request after it: once its spans are in, the earlier ones would be too.
    let marker = "0af7651916cd43dd8448eb211c80319c";
    send_sampled(c.get(gw.url("/users")), marker).await;
    rec.wait(marker, 2).await;
    assert!(rec.spans(TRACE).is_empty(), "{:#?}", rec.spans(TRACE));
}

#[tokio::test]
async fn spans_carry_the_http_semantic_convention_attributes() {
    let (endpoint, rec) = receiver().await;
    let up = echo("users").await;
    let dead = closed_port().await;
    let gw = gateway(&config(&format!(
        r#"{tracing}
consumers:
  - {{ name: alice, api_keys: ["alice-key-0001"] }}
upstreams:
  users-up: {{ targets: [{{ url: "{up}" }}] }}
  down:
    targets: [{{ url: "http://{dead}" }}]
    retries: {{ attempts: 1, on: [connect_failure], backoff: 0s }}
routes:
  - name: keyed
    match: {{ paths: ["/keyed"] }}
    upstream: users-up
    plugins: {{ key_auth: {{ header: x-api-key }} }}
  - {{ name: broken, match: {{ paths: ["/broken"] }}, upstream: down }}
"#,
        tracing = tracing_to(&endpoint),
        up = up.url()
    )))
    .await;
    let c = client();
    let port = gw.addr.port().to_string();

    // A matched route, a consumer, a query string that must not appear.
    let trace_ok = "11111111111111111111111111111111";
    let resp = send_sampled(
        c.get(gw.url("/keyed/7?secret=1"))
            .header("x-api-key", "alice-key-0001"),
        trace_ok,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let (_, server, attempts) = rec.wait(trace_ok, 2).await;
    assert_eq!(server.name, "GET keyed");
    let a = |k| span_attr(&server, k);
    assert_eq!(a("http.request.method").as_deref(), Some("GET"));
    assert_eq!(a("url.path").as_deref(), Some("/keyed/7"));
    assert_eq!(a("url.scheme").as_deref(), Some("http"));
    assert_eq!(a("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(a("server.port"), Some(port));
    assert_eq!(a("network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(a("http.route").as_deref(), Some("keyed"));
    assert_eq!(a("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(a("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(a("error.type"), None);
    assert_eq!(a("frontdesk.request_id"), Some(request_id));
    assert_eq!(a("frontdesk.consumer").as_deref(), Some("alice"));
    assert_eq!(a("frontdesk.upstream").as_deref(), Some("users-up"));
    assert!(
        server
            .attributes
            .iter()
            .all(|kv| !format!("{kv:?}").contains("secret")
                && !format!("{kv:?}").contains("alice-key")),
        "no query string or credential in a span"
    );
    assert_eq!(status(&server), StatusCode::Unset as i32);
    let attempt = &attempts[0];
    assert_eq!(attempt.name, "GET");
    let b = |k| span_attr(attempt, k);
    assert_eq!(b("http.request.method").as_deref(), Some("GET"));
    assert_eq!(b("url.full"), Some(up.url()));
    assert_eq!(b("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(b("server.port"), Some(up.addr.port().to_string()));
    assert_eq!(b("http.response.status_code").as_deref(), Some("200"));

    // The gateway answering 502 for a dead upstream, tried twice (a refused connection sent
    // nothing, so even a POST goes again): a server-span error over two failed attempts.
    let trace_bad = "22222222222222222222222222222222";
    let resp = send_sampled(c.post(gw.url("/broken")), trace_bad).await;
    assert_eq!(resp.status(), 502);
    let (_, server, attempts) = rec.wait(trace_bad, 3).await;
    assert_eq!(server.name, "POST broken");
    assert_eq!(
        span_attr(&server, "http.response.status_code").as_deref(),
        Some("502")
    );
    assert_eq!(
        span_attr(&server, "error.type").as_deref(),
        Some("upstream_connect")
    );
    assert_eq!(status(&server), StatusCode::Error as i32);
    for a in &attempts {
        assert_eq!(
            span_attr(a, "error.type").as_deref(),
            Some("upstream_connect")
        );
        assert_eq!(status(a), StatusCode::Error as i32);
    }

    // No route: named by the method alone, a 404 is not a span error.
    let trace_none = "33333333333333333333333333333333";
    let resp = send_sampled(c.get(gw.url("/nowhere")), trace_none).await;
    assert_eq!(resp.status(), 404);
    let (_, server, _) = rec.wait(trace_none, 1).await;
    assert_eq!(server.name, "GET");
    assert_eq!(span_attr(&server, "http.route"), None);
    assert_eq!(
        span_attr(&server, "http.response.status_code").as_deref(),
        Some("404")
    );
    assert_eq!(span_attr(&server, "error.type"), None);
    assert_eq!(
        span_attr(&server, "frontdesk.error").as_deref(),
        Some("no_route")
    );
    assert_eq!(status(&server), StatusCode::Unset as i32);
}

#[tokio::test]
async fn without_tracing_the_callers_trace_headers_reach_the_upstream_unchanged() {
    let up = echo("users").await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  users-up: {{ targets: [{{ url: "{}" }}] }}
routes:
  - {{ name: users, match: {{ paths: ["/users"] }}, upstream: users-up }}
"#,
        up.url()
    )))
    .await;
    let tp = sampled(TRACE);
    let body = echo_json(
        client()
            .get(gw.url("/users"))
            .header("traceparent", &tp)
            .header("tracestate", "vendor=1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["headers"]["traceparent"], tp.as_str());
    assert_eq!(body["headers"]["tracestate"], "vendor=1");
}

/// A plugin that answers with what upstream `upstream` says at `path` (a call through its
/// upstream handle).
mod fetch {
    use std::sync::Arc;

    use frontdesk::body::Body;
    use frontdesk::plugin::{
        BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead,
        UpstreamHandle,
    };

    #[derive(serde::Deserialize)]
    pub struct FetchConfig {
        upstream: String,
        path: String,
    }

    pub struct Fetch {
        up: UpstreamHandle,
        path: String,
    }

    impl PluginFactory for Fetch {
        const KIND: &'static str = "fetch";
        const ORDER: u16 = 800;
        type Config = FetchConfig;

        fn build(cfg: &FetchConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
            let up = env
                .upstream(&cfg.upstream)
                .ok_or_else(|| format!("no upstream {:?}", cfg.upstream))?;
            Ok(Arc::new(Fetch {
                up,
                path: cfg.path.clone(),
            }))
        }
    }

    #[async_trait::async_trait]
    impl Plugin for Fetch {
        fn kind(&self) -> &'static str {
            Self::KIND
        }

        fn phases(&self) -> Phases {
            Phases::REQUEST
        }

        async fn request_filter(
            &self,
            _req: &mut RequestHead,
            cx: &mut Ctx,
        ) -> Result<Flow, PluginError> {
            let req = http::Request::get(self.path.as_str())
                .body(Body::empty())
                .map_err(|e| {
                    PluginError::new(http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                })?;
            let mut resp = self
                .up
                .call(req, cx)
                .await
                .map_err(|e| PluginError::new(http::StatusCode::BAD_GATEWAY, e.to_string()))?;
            resp.headers_mut().insert(
                "x-fetched-from",
                self.up.name().parse().expect("a header value"),
            );
            Ok(Flow::Respond(resp))
        }
    }
}

#[tokio::test]
async fn a_plugins_upstream_call_is_balanced_retried_and_traced_like_a_proxied_one() {
    frontdesk::plugin::register_custom::<fetch::Fetch>();
    let (endpoint, rec) = receiver().await;
    let up = echo("profiles").await;
    let dead = format!("http://{}", closed_port().await);
    let gw = gateway(&config(&format!(
        r#"{tracing}
upstreams:
  profiles:
    targets: [{{ url: "{dead}" }}, {{ url: "{live}" }}]
    health_check: {{ passive: {{ unhealthy_after: 0 }} }}
    retries: {{ attempts: 1, on: [connect_failure], backoff: 0s }}
routes:
  - name: home
    match: {{ paths: ["/home"] }}
    plugins: {{ custom: {{ fetch: {{ upstream: profiles, path: "/profile/7" }} }} }}
"#,
        tracing = tracing_to(&endpoint),
        live = up.url(),
    )))
    .await;
    let resp = send_sampled(
        client()
            .get(gw.url("/home"))
            .header("x-request-id", "home-1"),
        TRACE,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-fetched-from"], "profiles");
    let body = echo_json(resp).await;
    assert_eq!(body["uri"], "/profile/7");
    assert_eq!(
        body["headers"]["x-request-id"], "home-1",
        "the exchange's id goes along"
    );
    let [_, trace, parent, _] = traceparent(&body);
    assert_eq!(trace, TRACE);

    // The dead target first (round robin), then the retry: two client spans under the server span.
    let (_, server, attempts) = rec.wait(TRACE, 3).await;
    assert!(attempts.iter().all(|a| a.parent_span_id == server.span_id));
    assert_eq!(span_attr(&attempts[0], "url.full"), Some(dead));
    assert_eq!(
        span_attr(&attempts[0], "error.type").as_deref(),
        Some("upstream_connect")
    );
    assert_eq!(span_attr(&attempts[1], "url.full"), Some(up.url()));
    assert_eq!(
        span_attr(&attempts[1], "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        hex(&attempts[1].span_id),
        parent,
        "the answering attempt's span went upstream"
    );

    // A custom kind this process does not register is a config error at its path.
    let loaded = frontdesk::config::load_str(
        &config("routes:\n  - { name: r, match: { paths: [\"/\"] }, plugins: { custom: { nope: {} } } }\n"),
        &|_| None,
    )
    .expect("parses");
    let errs = frontdesk::snapshot::Snapshot::check(loaded.config, None).expect_err("unknown kind");
    assert!(
        errs.iter()
            .any(|d| d.path == "routes[0].plugins.custom.nope"
                && d.message.contains("unknown custom plugin kind")),
        "{errs:?}"
    );
}
