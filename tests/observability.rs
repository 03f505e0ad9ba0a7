//! Metrics and the access log, through the real gateway: known traffic in, exact counts out.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use prometheus_parse::{Scrape, Value};

/// The gateway's metrics, scraped from the admin listener's `/metrics` and parsed by a Prometheus
/// text parser.
async fn scrape(gw: &TestGateway) -> Scrape {
    let admin = gw.gw.admin_addr().expect("the admin listener runs");
    let resp = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        frontdesk::observe::metrics::CONTENT_TYPE
    );
    let text = resp.text().await.expect("metrics text");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Scrape::parse(lines).expect("the exposition parses")
}

/// The value of the sample `name` whose labels include all of `labels` (0 when there is none).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().copied().unwrap_or(0.0)
}

/// Scrapes until `check` holds (a finished response is recorded just after its last byte is
/// sent, so the client may see it a moment before the counters do).
async fn settled(gw: &TestGateway, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let s = scrape(gw).await;
        if check(&s) || std::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn counters_are_exact_after_known_traffic() {
    let up = echo("svc").await;
    let dead = closed_port().await;
    let gw = gateway(&config(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
consumers:
  - {{ name: alice, api_keys: ["alice-key-0001"] }}
observability:
  metrics: {{ consumer_label: true }}
upstreams:
  svc: {{ targets: [{{ url: "{url}" }}] }}
  dead:
    targets: [{{ url: "http://{dead}" }}]
    retries: {{ attempts: 0 }}
routes:
  - {{ name: open, match: {{ paths: ["/open"] }}, upstream: svc }}
  - name: keyed
    match: {{ paths: ["/keyed"] }}
    upstream: svc
    plugins: {{ key_auth: {{}} }}
  - name: limited
    match: {{ paths: ["/limited"] }}
    upstream: svc
    plugins:
      rate_limit: {{ limits: [{{ name: per-route, key: route, rate: 3, per: 1m }}] }}
  - {{ name: broken, match: {{ paths: ["/broken"] }}, upstream: dead }}
"#,
        url = up.url()
    )))
    .await;
    let c = client();
    let base = format!("http://{}", gw.addr);
    let status = |path: &'static str, key: Option<&'static str>| {
        let c = c.clone();
        let url = format!("{base}{path}");
        async move {
            let mut r = c.get(&url);
            if let Some(k) = key {
                r = r.header("x-api-key", k);
            }
            let resp = r.send().await.expect("response");
            let s = resp.status().as_u16();
            let _ = resp.bytes().await;
            s
        }
    };
    for _ in 0..17 {
        assert_eq!(status("/open", None).await, 200);
    }
    for _ in 0..3 {
        assert_eq!(status("/nowhere", None).await, 404);
    }
    for _ in 0..4 {
        assert_eq!(status("/keyed", None).await, 401);
    }
    for _ in 0..2 {
        assert_eq!(status("/keyed", Some("wrong-key")).await, 401);
    }
    for _ in 0..5 {
        assert_eq!(status("/keyed", Some("alice-key-0001")).await, 200);
    }
    let mut limited = HashMap::new();
    for _ in 0..5 {
        *limited.entry(status("/limited", None).await).or_insert(0) += 1;
    }
    assert_eq!(limited, HashMap::from([(200, 3), (429, 2)]));
    for _ in 0..2 {
        assert_eq!(status("/broken", None).await, 502);
    }

    let total = 17.0 + 3.0 + 6.0 + 5.0 + 5.0 + 2.0;
    let s = settled(&gw, |s| {
        let sum: f64 = s
            .samples
            .iter()
            .filter(|x| x.metric == "http_server_request_duration_seconds_count")
            .map(|x| match x.value {
                Value::Untyped(v) | Value::Counter(v) | Value::Gauge(v) => v,
                _ => 0.0,
            })
            .sum();
        sum >= total
    })
    .await;
    let dur = "http_server_request_duration_seconds_count";
    let get = [("method", "GET")];
    let series =
        |route: &str, st: &str| value(&s, dur, &[("route", route), ("status", st), get[0]]);
    assert_eq!(series("open", "200"), 17.0);
    assert_eq!(series("", "404"), 3.0);
    assert_eq!(series("keyed", "401"), 6.0);
    assert_eq!(series("keyed", "200"), 5.0);
    assert_eq!(series("limited", "200"), 3.0);
    assert_eq!(series("limited", "429"), 2.0);
    assert_eq!(series("broken", "502"), 2.0);
    // The histogram's buckets are cumulative and end with every observation.
    let open = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "http_server_request_duration_seconds"
                && x.labels.get("route") == Some("open")
        })
        .expect("histogram of route open");
    match &open.value {
        Value::Histogram(b) => {
            assert!(b.windows(2).all(|w| w[0].count <= w[1].count), "{b:?}");
            assert_eq!(b.last().map(|b| b.count), Some(17.0));
            assert_eq!(b.first().map(|b| b.less_than), Some(0.005));
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert_eq!(value(&s, "http_server_active_requests", &[]), 0.0);

    let auth = "frontdesk_auth_failures_total";
    let missing = [("route", "keyed"), ("plugin", "key_auth")];
    assert_eq!(
        value(
            &s,
            auth,
            &[missing[0], missing[1], ("reason", "missing_credentials")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &s,
            auth,
            &[missing[0], missing[1], ("reason", "invalid_key")]
        ),
        2.0
    );
    let rl = "frontdesk_ratelimit_decisions_total";
    let lim = [("route", "limited"), ("limit", "per-route")];
    assert_eq!(
        value(&s, rl, &[lim[0], lim[1], ("decision", "allowed")]),
        3.0
    );
    assert_eq!(
        value(&s, rl, &[lim[0], lim[1], ("decision", "rejected")]),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "frontdesk_consumer_requests_total",
            &[
                ("consumer", "alice"),
                ("route", "keyed"),
                ("status_class", "2xx")
            ]
        ),
        5.0
    );

    let errors = "frontdesk_upstream_errors_total";
    assert_eq!(
        value(&s, errors, &[("upstream", "dead"), ("kind", "connect")]),
        2.0
    );
    assert_eq!(
        value(&s, errors, &[("upstream", "svc"), ("kind", "connect")]),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "frontdesk_upstream_retries_total",
            &[("upstream", "dead")]
        ),
        0.0
    );
    let client_count = "http_client_request_duration_seconds_count";
    assert_eq!(
        value(&s, client_count, &[("upstream", "svc")]),
        17.0 + 5.0 + 3.0
    );
    assert_eq!(
        value(
            &s,
            "frontdesk_upstream_target_healthy",
            &[("upstream", "svc")]
        ),
        1.0
    );
    assert!(
        value(
            &s,
            "frontdesk_received_bytes_total",
            &[("listener", "public")]
        ) > 0.0
    );
    assert!(value(&s, "frontdesk_sent_bytes_total", &[("listener", "public")]) > 0.0);
    assert_eq!(
        value(
            &s,
            "frontdesk_config_reloads_total",
            &[("result", "success")]
        ),
        0.0,
        "the first load is not a reload"
    );
}

#[tokio::test]
async fn retries_and_ejections_are_counted() {
    let up = echo("svc").await;
    let dead = closed_port().await;
    let gw = gateway(&config(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  svc:
    load_balancing: round_robin
    targets: [{{ url: "http://{dead}" }}, {{ url: "{url}" }}]
    health_check: {{ passive: {{ unhealthy_after: 2, eject_for: 60s }} }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: svc }}
"#,
        url = up.url()
    )))
    .await;
    let c = client();
    for _ in 0..6 {
        let r = c
            .get(format!("http://{}/x", gw.addr))
            .send()
            .await
            .expect("response");
        assert_eq!(
            r.status(),
            200,
            "a connect failure is retried on the other target"
        );
    }
    let s = settled(&gw, |s| {
        value(
            s,
            "http_server_request_duration_seconds_count",
            &[("route", "r")],
        ) >= 6.0
    })
    .await;
    // Round robin sends every other first try to the dead target until it is ejected after two
    // failures; each failure is one connect error and one retry.
    assert_eq!(
        value(
            &s,
            "frontdesk_upstream_errors_total",
            &[("upstream", "svc"), ("kind", "connect")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "frontdesk_upstream_retries_total",
            &[("upstream", "svc")]
        ),
        2.0
    );
    let dead_url = format!("http://{dead}");
    assert_eq!(
        value(
            &s,
            "frontdesk_upstream_target_healthy",
            &[("target", &dead_url)]
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "frontdesk_upstream_target_healthy",
            &[("target", &up.url())]
        ),
        1.0
    );
}

#[tokio::test]
async fn access_log_lines_are_json_with_every_field_and_no_secrets() {
    let up = echo("svc").await;
    let dead = closed_port().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = gateway_in(
        dir,
        &config(&format!(
            r#"
consumers:
  - {{ name: alice, api_keys: ["alice-secret-key-42"] }}
observability:
  access_log: {{ output: access.log }}
  tracing: {{ sample_ratio: 1.0 }}
upstreams:
  svc: {{ targets: [{{ url: "{url}" }}] }}
  dead:
    targets: [{{ url: "http://{dead}" }}]
    retries: {{ attempts: 0 }}
routes:
  - name: keyed
    match: {{ paths: ["/keyed"] }}
    upstream: svc
    plugins: {{ key_auth: {{ query: apikey }} }}
  - {{ name: broken, match: {{ paths: ["/broken"] }}, upstream: dead }}
"#,
            url = up.url()
        )),
    )
    .await;
    let c = client();
    let base = format!("http://{}", gw.addr);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let ok = c
        .post(format!(
            "{base}/keyed/upload?apikey=alice-secret-key-42&x=1"
        ))
        .header("authorization", "Bearer very-secret-token")
        .header("cookie", "session=cookie-secret")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-request-id", "req-123")
        .body(vec![b'a'; 1000])
        .send()
        .await
        .expect("response");
    assert_eq!(ok.status(), 200);
    let ok_len = ok.bytes().await.expect("body").len();
    let get = |path: &str| c.get(format!("{base}{path}")).send();
    let refused = get("/keyed?apikey=wrong-secret").await.expect("response");
    assert_eq!(refused.status(), 401);
    let refused_len = refused.bytes().await.expect("body").len();
    for (path, want) in [("/nowhere", 404), ("/broken", 502)] {
        let r = get(path).await.expect("response");
        assert_eq!(r.status(), want);
        let _ = r.bytes().await;
    }

    let path = gw.dir.path().join("access.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 4 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for secret in [
        "alice-secret-key-42",
        "very-secret-token",
        "cookie-secret",
        "wrong-secret",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the access log:\n{text}"
        );
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let keys = [
        "ts",
        "request_id",
        "trace_id",
        "listener",
        "route",
        "method",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "client_ip",
        "consumer",
        "upstream",
        "upstream_target",
        "duration_ms",
        "upstream_duration_ms",
        "error",
    ];
    for l in &lines {
        for k in keys {
            assert!(l.get(k).is_some(), "{k} missing in {l}");
        }
        assert!(
            l["ts"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
            "{l}"
        );
        assert_eq!(l["listener"], "public");
        assert_eq!(l["client_ip"], "127.0.0.1");
    }
    let ok = &lines[0];
    assert_eq!(ok["request_id"], "req-123");
    assert_eq!(ok["trace_id"], trace);
    assert_eq!(ok["route"], "keyed");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/keyed/upload");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["bytes_in"], 1000);
    assert_eq!(ok["bytes_out"], ok_len);
    assert_eq!(ok["consumer"], "alice");
    assert_eq!(ok["upstream"], "svc");
    assert_eq!(ok["upstream_target"], up.url().trim_end_matches('/'));
    assert!(ok["upstream_duration_ms"]
        .as_f64()
        .is_some_and(|d| d >= 0.0));
    assert!(ok["duration_ms"].as_f64() >= ok["upstream_duration_ms"].as_f64());
    assert_eq!(ok["error"], serde_json::Value::Null);

    let refused = &lines[1];
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["error"], "auth_failed");
    assert_eq!(refused["bytes_out"], refused_len);
    assert_eq!(refused["consumer"], serde_json::Value::Null);
    assert_eq!(refused["upstream_target"], serde_json::Value::Null);
    assert_eq!(refused["bytes_in"], 0);
    assert_eq!(
        refused["trace_id"].as_str().map(str::len),
        Some(32),
        "a new trace is started"
    );

    assert_eq!(lines[2]["route"], serde_json::Value::Null);
    assert_eq!(lines[2]["error"], "no_route");
    assert_eq!(lines[3]["error"], "upstream_connect");
    assert_eq!(lines[3]["upstream_target"], format!("http://{dead}"));
}

#[tokio::test]
async fn gauges_follow_breakers_connections_and_store_errors() {
    // An upstream that always fails with 500, behind a circuit breaker.
    let failing = upstream(|_req: Request<Incoming>| async {
        let mut r = Response::new(full("no"));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
    .await;
    let dead_redis = closed_port().await;
    let healthy = echo("svc").await;
    let gw = gateway(&config(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
redis: {{ url: "redis://{dead_redis}", timeout: 50ms }}
upstreams:
  flaky:
    targets: [{{ url: "{url}" }}]
    health_check: {{ passive: {{ unhealthy_after: 0 }} }}
    circuit_breaker: {{ failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 60s }}
  svc: {{ targets: [{{ url: "{healthy}" }}] }}
routes:
  - {{ name: flaky, match: {{ paths: ["/flaky"] }}, upstream: flaky }}
  - name: shared
    match: {{ paths: ["/shared"] }}
    upstream: svc
    plugins:
      rate_limit:
        store: redis
        on_store_error: deny
        limits: [{{ name: all, key: route, rate: 100, per: 1s }}]
"#,
        url = failing.url(),
        healthy = healthy.url()
    )))
    .await;
    let c = client();
    let s = scrape(&gw).await;
    assert_eq!(
        value(
            &s,
            "frontdesk_circuit_breaker_open",
            &[("upstream", "flaky")]
        ),
        0.0
    );
    for _ in 0..4 {
        let r = c.get(gw.url("/flaky")).send().await.expect("response");
        assert_eq!(r.status(), 500);
    }
    let r = c.get(gw.url("/flaky")).send().await.expect("response");
    assert_eq!(r.status(), 503, "the breaker opened");
    // Redis is down: each decision fails and, with `deny`, answers 503.
    for _ in 0..3 {
        let r = c.get(gw.url("/shared")).send().await.expect("response");
        assert_eq!(r.status(), 503);
        let body = r.text().await.expect("body");
        assert!(body.contains("rate limiter is unavailable"), "{body}");
    }
    // Three idle keep-alive connections held open by raw sockets.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /flaky HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let head = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        held.push(s);
    }
    let s = settled(&gw, |s| {
        value(s, "frontdesk_ratelimit_store_errors_total", &[]) >= 3.0
    })
    .await;
    assert_eq!(
        value(
            &s,
            "frontdesk_circuit_breaker_open",
            &[("upstream", "flaky")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "frontdesk_ratelimit_store_errors_total", &[]),
        3.0
    );
    let rl = "frontdesk_ratelimit_decisions_total";
    assert_eq!(
        value(&s, rl, &[("route", "shared"), ("decision", "allowed")]),
        0.0
    );
    // reqwest's pooled connection plus the three raw ones.
    let open = value(
        &s,
        "frontdesk_listener_connections",
        &[("listener", "public")],
    );
    assert!((4.0..=5.0).contains(&open), "{open}");
    drop(held);
    let s = settled(&gw, |s| {
        value(
            s,
            "frontdesk_listener_connections",
            &[("listener", "public")],
        ) <= open - 3.0
    })
    .await;
    assert_eq!(
        value(
            &s,
            "frontdesk_listener_connections",
            &[("listener", "public")]
        ),
        open - 3.0,
        "closed connections are no longer counted"
    );
}

/// Lines of the file at `path` once it has at least `n` (or after 5 s).
async fn lines_of(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One route to `url`, its access log written to `access.log` beside the config.
fn logged_to_file(url: &str) -> String {
    config(&format!(
        r#"
observability:
  access_log: {{ output: access.log }}
upstreams:
  svc: {{ targets: [{{ url: "{url}" }}] }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: svc }}
"#
    ))
}

#[tokio::test]
async fn sigusr1_reopens_a_rotated_access_log() {
    let up = echo("svc").await;
    let gw = spawn_bin(&logged_to_file(&up.url()));
    let c = client();
    let get = |path: &'static str| c.get(format!("http://{}{path}", gw.addr)).send();
    for _ in 0..2 {
        assert_eq!(get("/before").await.expect("response").status(), 200);
    }
    let log = gw.dir.path().join("access.log");
    assert_eq!(lines_of(&log, 2).await.len(), 2);
    // logrotate's way: rename, then tell the process.
    let rotated = gw.dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    gw.signal("USR1");
    assert!(gw
        .wait_log("reopening the access log", Duration::from_secs(5))
        .is_some());
    for _ in 0..3 {
        assert_eq!(get("/after").await.expect("response").status(), 200);
    }
    let fresh = lines_of(&log, 3).await;
    assert_eq!(fresh.len(), 3, "the new file gets the new lines");
    assert!(fresh.iter().all(|l| l.contains("\"path\":\"/after\"")));
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert_eq!(old.lines().count(), 2);
    assert!(old.lines().all(|l| l.contains("\"path\":\"/before\"")));
}

#[tokio::test]
async fn reloads_are_counted_by_result_with_the_last_success_time() {
    let up = echo("svc").await;
    let yaml = |route: &str| {
        config(&format!(
            r#"
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  svc: {{ targets: [{{ url: "{url}" }}] }}
routes:
  - {{ name: {route}, match: {{ paths: ["/"] }}, upstream: svc }}
"#,
            url = up.url()
        ))
    };
    let gw = gateway(&yaml("first")).await;
    let reloads = "frontdesk_config_reloads_total";
    let last = "frontdesk_config_last_reload_success_timestamp_seconds";
    let s = scrape(&gw).await;
    assert_eq!(value(&s, reloads, &[("result", "success")]), 0.0);
    // Set by the first load already, so an alert on its age works from the start.
    assert!(value(&s, last, &[]) > 0.0, "not set at the first load");

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as f64;
    gw.rewrite(&yaml("second")).await;
    gw.gw.reload().await.expect("a valid config reloads");
    gw.rewrite("version: 1\nroutes: [{ name: broken }]\n").await;
    assert!(
        gw.gw.reload().await.is_err(),
        "an invalid config is refused"
    );
    let s = scrape(&gw).await;
    assert_eq!(value(&s, reloads, &[("result", "success")]), 1.0);
    assert_eq!(value(&s, reloads, &[("result", "failure")]), 1.0);
    let at = value(&s, last, &[]);
    assert!(
        (before..=before + 60.0).contains(&at),
        "last success at {at}, the reload was at {before}"
    );
}

/// Workers render access-log lines into batches of their own and hand them over when idle, when
/// a batch fills, or when the process stops: a burst over many connections and two workers,
/// followed at once by SIGTERM, loses no line and duplicates none.
#[tokio::test]
async fn every_line_of_a_burst_reaches_the_file_when_sigterm_follows_at_once() {
    let up = echo("svc").await;
    let yaml = logged_to_file(&up.url()).replacen("server: {", "server: { worker_threads: 2,", 1);
    let gw = spawn_bin(&yaml);
    let addr = gw.addr;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            tokio::spawn(async move {
                let c = client();
                for i in 0..60 {
                    let resp = c
                        .get(format!("http://{addr}/burst/{t}/{i}"))
                        .send()
                        .await
                        .expect("response");
                    assert_eq!(resp.status(), 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    gw.signal("TERM");
    let mut gw = gw;
    let (status, gw) = tokio::task::spawn_blocking(move || (gw.child.wait().expect("wait"), gw))
        .await
        .expect("join");
    assert!(status.success(), "clean exit: {status:?}");
    let text = std::fs::read_to_string(gw.dir.path().join("access.log")).expect("log");
    let mut paths: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            v["path"].as_str().expect("path").to_string()
        })
        .collect();
    assert_eq!(paths.len(), 480, "one line per request");
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 480, "no line twice");
}

/// A path with the characters JSON must escape (`"` and `\` pass the URI parser) is logged as
/// it arrived, without its query, on a valid JSON line.
#[tokio::test]
async fn a_path_with_quotes_and_backslashes_is_logged_escaped() {
    let up = echo("svc").await;
    let gw = gateway(&logged_to_file(&up.url())).await;
    let reply = raw(
        gw.addr,
        b"GET /a\"b\\c?key=hidden HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let lines = lines_of(&gw.dir.path().join("access.log"), 1).await;
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(v["path"], "/a\"b\\c");
    assert!(!lines[0].contains("hidden"), "no query: {}", lines[0]);
}
