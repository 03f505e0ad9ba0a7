//! Upstream hardening (issue 11, items 10, 12 and 13): passive health counts only what says a
//! target is broken and never empties an upstream; ejection, re-admission and circuit breaker log
//! lines name the upstream and the target; an unreachable OTLP collector is logged once, then
//! summarised. Real gateways, real upstreams on port 0, and the real binary where logs matter.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{client, closed_port, config, echo, full, gateway, spawn_bin, switchable, upstream};
use hyper::Response;

async fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

// ---- Item 10: what passive health counts, and how much of an upstream it may eject ----

/// The issue's case: one endpoint of a one-target upstream answers 500s; the others keep working.
#[tokio::test]
async fn an_application_500_does_not_eject_the_only_target() {
    let up = upstream(|req: hyper::Request<hyper::body::Incoming>| async move {
        let status = if req.uri().path() == "/broken" {
            500
        } else {
            200
        };
        Response::builder()
            .status(status)
            .body(full("app"))
            .unwrap()
    })
    .await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  app:
    targets: [{{ url: "{}" }}]
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: app }}
"#,
        up.url()
    )))
    .await;
    for _ in 0..10 {
        let (status, body) = get(&gw.url("/broken")).await;
        assert_eq!((status, body.as_str()), (500, "app"), "the app's 500 as is");
    }
    let (status, body) = get(&gw.url("/fine")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "app"),
        "a broken endpoint must not take the whole upstream out"
    );
}

/// Without `statuses`, 5xx answers do not count, even with two targets (where ejecting one would
/// be allowed): the target keeps its traffic.
#[tokio::test]
async fn unlisted_statuses_never_eject() {
    let (a, fail_a) = switchable("a", 500).await;
    let b = echo("b").await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  two:
    targets: [{{ url: "{}" }}, {{ url: "{}" }}]
    health_check: {{ passive: {{ unhealthy_after: 2, eject_for: 60s }} }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: two }}
"#,
        a.url(),
        b.url()
    )))
    .await;
    fail_a.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        get(&gw.url("/")).await;
    }
    assert_eq!(
        a.requests(),
        5,
        "round robin keeps sending to the 500ing target"
    );
}

/// Listed statuses count: a target answering 503 is ejected after `unhealthy_after` of them.
#[tokio::test]
async fn listed_statuses_eject_a_target() {
    let (a, fail_a) = switchable("a", 503).await;
    let b = echo("b").await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  two:
    targets: [{{ url: "{}" }}, {{ url: "{}" }}]
    health_check:
      passive: {{ unhealthy_after: 2, eject_for: 60s, statuses: [502, 503, 504] }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: two }}
"#,
        a.url(),
        b.url()
    )))
    .await;
    fail_a.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        get(&gw.url("/")).await;
    }
    assert_eq!(a.requests(), 2, "two 503s in a row eject it");
    assert_eq!(b.requests(), 8);
}

/// Connect failures count by default (no `statuses` needed).
#[tokio::test]
async fn connect_failures_eject_by_default() {
    let dead = closed_port().await;
    let live = echo("live").await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  two:
    targets: [{{ url: "http://{dead}" }}, {{ url: "{}" }}]
    health_check: {{ passive: {{ unhealthy_after: 1, eject_for: 60s }} }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: two }}
"#,
        live.url()
    )))
    .await;
    for _ in 0..6 {
        assert_eq!(get(&gw.url("/")).await.0, 200, "retried on the live target");
    }
    // One first try reached the dead target, was retried and ejected it; the rest went live.
    assert_eq!(live.requests(), 6);
    let (_, v) = admin_upstreams(&gw).await;
    assert_eq!(v["targets"][0]["ejected"], true, "{v}");
}

async fn admin_upstreams(gw: &common::TestGateway) -> (u16, serde_json::Value) {
    let snap = gw.gw.snapshot();
    let up = snap.upstreams.get("two").expect("upstream two");
    let targets: Vec<serde_json::Value> = up
        .targets()
        .iter()
        .map(|t| serde_json::json!({ "url": &*t.url, "ejected": t.state.is_ejected() }))
        .collect();
    (200, serde_json::json!({ "targets": targets }))
}

/// Two targets that both fail: the default share (50%) ejects one, and the other stays in
/// rotation, so the client gets the upstream's own answer instead of a 503 from the gateway,
/// and recovery is seen at once.
#[tokio::test]
async fn passive_checks_never_eject_the_last_target_in_rotation() {
    let (a, fail_a) = switchable("a", 502).await;
    let (b, fail_b) = switchable("b", 502).await;
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  two:
    targets: [{{ url: "{}" }}, {{ url: "{}" }}]
    health_check: {{ passive: {{ unhealthy_after: 1, eject_for: 60s, statuses: [502] }} }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: two }}
"#,
        a.url(),
        b.url()
    )))
    .await;
    fail_a.store(true, Ordering::SeqCst);
    fail_b.store(true, Ordering::SeqCst);
    for _ in 0..6 {
        assert_eq!(get(&gw.url("/")).await.0, 502, "the upstream's own 502");
    }
    assert_eq!(a.requests() + b.requests(), 6);
    assert!(
        a.requests() == 1 || b.requests() == 1,
        "one target ejected after its first failure: a={} b={}",
        a.requests(),
        b.requests()
    );
    fail_a.store(false, Ordering::SeqCst);
    fail_b.store(false, Ordering::SeqCst);
    assert_eq!(get(&gw.url("/")).await.0, 200, "the kept target recovered");
}

/// Four failing targets: at most `max_ejected_ratio` of them are ejected at once.
#[tokio::test]
async fn ejection_stops_at_max_ejected_ratio() {
    for (ratio, left) in [(None, 2), (Some("0.75"), 1), (Some("0.25"), 3)] {
        let mut ups = Vec::new();
        let mut urls = Vec::new();
        for name in ["t1", "t2", "t3", "t4"] {
            let (u, f) = switchable(name, 504).await;
            f.store(true, Ordering::SeqCst);
            urls.push(format!("{{ url: \"{}\" }}", u.url()));
            ups.push((u, f));
        }
        let extra = ratio.map_or(String::new(), |r| format!(", max_ejected_ratio: {r}"));
        let gw = gateway(&config(&format!(
            r#"
upstreams:
  four:
    targets: [{}]
    health_check: {{ passive: {{ unhealthy_after: 1, eject_for: 60s, statuses: [504]{extra} }} }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: four }}
"#,
            urls.join(", ")
        )))
        .await;
        for _ in 0..12 {
            get(&gw.url("/")).await;
        }
        let before: Vec<usize> = ups.iter().map(|(u, _)| u.requests()).collect();
        for _ in 0..12 {
            get(&gw.url("/")).await;
        }
        let still = ups
            .iter()
            .zip(&before)
            .filter(|((u, _), b)| u.requests() > **b)
            .count();
        assert_eq!(still, left, "ratio {ratio:?}: targets still in rotation");
    }
}

/// The new fields are validated.
#[test]
fn passive_fields_are_validated() {
    for (bad, key) in [
        ("statuses: [200]", "statuses"),
        ("statuses: [600]", "statuses"),
        ("max_ejected_ratio: 1.5", "max_ejected_ratio"),
        ("max_ejected_ratio: -0.1", "max_ejected_ratio"),
    ] {
        let yaml = config(&format!(
            r#"
upstreams:
  u:
    targets: [{{ url: "http://127.0.0.1:9" }}]
    health_check: {{ passive: {{ {bad} }} }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: u }}
"#
        ));
        let err = frontdesk::config::load_str(&yaml, &|_| None)
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        let text = format!("{err:?}");
        assert!(text.contains(key), "{bad}: {text}");
    }
}

// ---- Item 12: log lines name the upstream and the target ----

/// Lines from the binary's stderr until `done` holds for the lines so far or `wait` passes.
async fn collect(
    log: &std::sync::mpsc::Receiver<String>,
    wait: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let start = Instant::now();
    let mut lines = Vec::new();
    while start.elapsed() < wait {
        while let Ok(l) = log.try_recv() {
            lines.push(l);
        }
        if done(&lines) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lines
}

#[tokio::test]
async fn ejection_readmission_and_breaker_lines_name_upstream_and_target() {
    let (live_a, live_b) = (echo("a").await, echo("b").await);
    let (dead_a, dead_b, dead_c) = (
        closed_port().await,
        closed_port().await,
        closed_port().await,
    );
    let gw = spawn_bin(&config(&format!(
        r#"
upstreams:
  up-a:
    targets: [{{ url: "http://{dead_a}" }}, {{ url: "{}" }}]
    health_check: {{ passive: {{ unhealthy_after: 1, eject_for: 500ms }} }}
  up-b:
    targets: [{{ url: "http://{dead_b}" }}, {{ url: "{}" }}]
    health_check: {{ passive: {{ unhealthy_after: 1, eject_for: 500ms }} }}
  up-c:
    targets: [{{ url: "http://{dead_c}" }}]
    health_check: {{ passive: {{ unhealthy_after: 0 }} }}
    circuit_breaker: {{ min_requests: 2, failure_ratio: 0.5, open_for: 300ms }}
routes:
  - {{ name: a, match: {{ paths: ["/a"] }}, upstream: up-a }}
  - {{ name: b, match: {{ paths: ["/b"] }}, upstream: up-b }}
  - {{ name: c, match: {{ paths: ["/c"] }}, upstream: up-c }}
"#,
        live_a.url(),
        live_b.url()
    )));
    let base = format!("http://{}", gw.addr);
    for p in ["/a", "/a", "/b", "/b"] {
        assert_eq!(get(&format!("{base}{p}")).await.0, 200);
    }
    assert_eq!(get(&format!("{base}/c")).await.0, 502);
    assert_eq!(get(&format!("{base}/c")).await.0, 502);
    assert_eq!(get(&format!("{base}/c")).await.0, 503, "breaker open");
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Past eject_for and open_for: the dead targets come back, the breaker probes and reopens.
    for p in ["/a", "/a", "/b", "/b", "/c"] {
        get(&format!("{base}{p}")).await;
    }
    let lines = collect(&gw.log, Duration::from_secs(3), |l| {
        l.iter().filter(|l| l.contains("circuit breaker")).count() >= 3
            && l.iter().filter(|l| l.contains("back in rotation")).count() >= 2
    })
    .await;
    let named = |upstream: &str, target: &std::net::SocketAddr, what: &str| {
        lines.iter().any(|l| {
            l.contains(what)
                && l.contains(&format!("upstream={upstream}"))
                && l.contains(&format!("target=http://{target}"))
        })
    };
    assert!(named("up-a", &dead_a, "ejected"), "{lines:#?}");
    assert!(named("up-b", &dead_b, "ejected"), "{lines:#?}");
    assert!(named("up-a", &dead_a, "back in rotation"), "{lines:#?}");
    assert!(named("up-b", &dead_b, "back in rotation"), "{lines:#?}");
    let breaker: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("circuit breaker"))
        .collect();
    assert!(
        breaker.len() >= 3,
        "open, half-open, open again: {lines:#?}"
    );
    for l in breaker {
        assert!(
            l.contains("upstream=up-c") && l.contains(&format!("target=http://{dead_c}")),
            "{l}"
        );
    }
}

// ---- Item 13: an unreachable OTLP collector is logged once, then summarised ----

#[tokio::test]
async fn an_unreachable_collector_is_logged_once_not_every_second() {
    let up = echo("svc").await;
    let collector = closed_port().await;
    let gw = spawn_bin(&config(&format!(
        r#"
observability:
  tracing: {{ otlp_endpoint: "http://{collector}", sample_ratio: 1.0 }}
upstreams:
  svc:
    targets: [{{ url: "{}" }}]
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: svc }}
"#,
        up.url()
    )));
    // Batches go out every second: under steady traffic, more than four exports fail.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(5500) {
        assert_eq!(get(&format!("http://{}/", gw.addr)).await.0, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = collect(&gw.log, Duration::from_millis(1500), |_| false).await;
    let failures: Vec<&String> = lines
        .iter()
        .filter(|l| {
            (l.contains("WARN") || l.contains("ERROR")) && l.to_lowercase().contains("export")
        })
        .collect();
    assert_eq!(
        failures.len(),
        1,
        "one line for the first failure: {lines:#?}"
    );
    assert!(
        failures[0].contains(&collector.to_string()),
        "names the collector: {}",
        failures[0]
    );
}
