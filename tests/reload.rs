//! Hot reload: atomic swaps under load, survival of in-flight requests and keep-alive connections,
//! refusal of bad configs, listeners added and removed live, pools kept for unchanged upstreams.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, config, echo, echo_json, full, gateway, h2c_client, read_response, upstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn two_routes(a: &str, b: &str, target: &str, tag: &str) -> String {
    config(&format!(
        r#"upstreams:
  a: {{ targets: [{{ url: "{a}" }}] }}
  b: {{ targets: [{{ url: "{b}" }}] }}
routes:
  - name: main
    match: {{ paths: ["/"] }}
    upstream: {target}
    plugins:
      headers: {{ response: {{ set: {{ x-config: "{tag}" }} }} }}
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_continuous_load_loses_no_request() {
    let a = echo("a").await;
    let b = echo("b").await;
    let gw = gateway(&two_routes(&a.url(), &b.url(), "a", "v0")).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = gw.url("/load");
        let c = if i % 2 == 0 { client() } else { h2c_client() };
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed.lock().await.push(format!("status {}", r.status())),
                    Err(e) => failed.lock().await.push(format!("error {e}")),
                }
            }
        }));
    }
    for i in 1..=10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let target = if i % 2 == 0 { "a" } else { "b" };
        gw.rewrite(&two_routes(&a.url(), &b.url(), target, &format!("v{i}")))
            .await;
        let outcome = gw.gw.reload().await.expect("reload applies");
        assert_eq!(outcome.generation, 1 + i);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failed = failed.lock().await;
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        a.requests() > 0 && b.requests() > 0,
        "both configs served traffic"
    );
    let last = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(last.headers()["x-config"], "v10");
}

use tokio::sync::Mutex;

#[tokio::test]
async fn in_flight_request_finishes_on_the_config_it_started_with() {
    let slow = upstream(|_req| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        hyper::Response::new(full("slow-a"))
    })
    .await;
    let b = echo("b").await;
    let gw = gateway(&two_routes(&slow.url(), &b.url(), "a", "old")).await;
    let url = gw.url("/x");
    let pending = tokio::spawn(async move { client().get(url).send().await });
    // Reload only once the request is in flight at the upstream (a fixed sleep is too short
    // on a loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slow.requests() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.rewrite(&two_routes(&slow.url(), &b.url(), "b", "new"))
        .await;
    gw.gw.reload().await.expect("reload");
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-config"],
        "old",
        "one config version from start to end"
    );
    assert_eq!(resp.text().await.unwrap(), "slow-a");
    let now = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(now.headers()["x-config"], "new");
}

#[tokio::test]
async fn keep_alive_connection_survives_a_reload_that_changes_its_route() {
    let a = echo("a").await;
    let b = echo("b").await;
    let gw = gateway(&two_routes(&a.url(), &b.url(), "a", "old")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut s).await;
    assert!(first.contains("\"name\":\"a\""), "{first}");
    gw.rewrite(&two_routes(&a.url(), &b.url(), "b", "new"))
        .await;
    gw.gw.reload().await.expect("reload");
    s.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second.contains("\"name\":\"b\""),
        "same connection, new route: {second}"
    );
}

#[tokio::test]
async fn bad_config_is_refused_and_the_running_one_keeps_serving() {
    let a = echo("a").await;
    let b = echo("b").await;
    let gw = gateway(&two_routes(&a.url(), &b.url(), "a", "good")).await;
    let before = gw.gw.snapshot().generation;
    gw.rewrite(&two_routes(&a.url(), &b.url(), "nope", "bad"))
        .await;
    let errs = gw.gw.reload().await.expect_err("refused");
    assert!(
        errs.iter().any(|e| e
            .to_string()
            .contains("routes[0].upstream: unknown upstream \"nope\"")),
        "{errs:?}"
    );
    gw.rewrite("version: 1\nroutes: [ {").await;
    let errs = gw.gw.reload().await.expect_err("syntax refused");
    assert!(errs[0].position.is_some(), "{errs:?}");
    assert_eq!(gw.gw.snapshot().generation, before);
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.headers()["x-config"], "good");
}

#[tokio::test]
async fn listeners_are_added_and_removed_without_a_restart() {
    let a = echo("a").await;
    let base = two_routes(&a.url(), &a.url(), "a", "one");
    let gw = gateway(&base).await;
    let with_second = base.replacen(
        "listeners:\n",
        "listeners:\n  - name: second\n    address: 127.0.0.1:0\n",
        1,
    );
    gw.rewrite(&with_second).await;
    let outcome = gw.gw.reload().await.expect("reload");
    assert_eq!(outcome.added, vec!["second".to_string()]);
    let second = gw.gw.local_addr("second").await.expect("second bound");
    let resp = client()
        .get(format!("http://{second}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Remove the original listener: its port stops accepting, the new one keeps serving.
    let only_second = with_second.replacen("  - name: public\n    address: 127.0.0.1:0\n", "", 1);
    gw.rewrite(&only_second).await;
    let outcome = gw.gw.reload().await.expect("reload");
    assert_eq!(outcome.removed, vec!["public".to_string()]);
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(gw.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "removed listener stops accepting");
    assert!(gw.gw.local_addr("public").await.is_none());
    let resp = client()
        .get(format!("http://{second}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn reload_that_cannot_bind_a_new_listener_changes_nothing() {
    let a = echo("a").await;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = two_routes(&a.url(), &a.url(), "a", "one");
    let gw = gateway(&base).await;
    let bad = base
        .replacen(
            "listeners:\n",
            &format!(
                "listeners:\n  - name: clash\n    address: {}\n",
                taken.local_addr().unwrap()
            ),
            1,
        )
        .replace("\"one\"", "\"two\"");
    gw.rewrite(&bad).await;
    let errs = gw.gw.reload().await.expect_err("bind fails");
    assert!(errs[0].to_string().contains("clash"), "{errs:?}");
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.headers()["x-config"], "one");
}

#[tokio::test]
async fn upstream_pools_survive_reloads_when_pool_settings_are_unchanged() {
    let a = echo("a").await;
    let gw = gateway(&two_routes(&a.url(), &a.url(), "a", "one")).await;
    let c = client();
    for _ in 0..3 {
        let _ = echo_json(c.get(gw.url("/")).send().await.unwrap()).await;
    }
    assert_eq!(
        a.connections(),
        1,
        "keep-alive pool reuses one upstream connection"
    );
    gw.rewrite(&two_routes(&a.url(), &a.url(), "a", "two"))
        .await;
    gw.gw.reload().await.expect("reload");
    for _ in 0..3 {
        let _ = echo_json(c.get(gw.url("/")).send().await.unwrap()).await;
    }
    assert_eq!(a.connections(), 1, "pool kept across the reload");
    // Changing pool settings builds a new pool.
    let changed = two_routes(&a.url(), &a.url(), "a", "three").replacen(
        &format!("a: {{ targets: [{{ url: \"{}\" }}] }}", a.url()),
        &format!(
            "a: {{ targets: [{{ url: \"{}\" }}], max_idle_per_target: 8 }}",
            a.url()
        ),
        1,
    );
    gw.rewrite(&changed).await;
    gw.gw.reload().await.expect("reload");
    let _ = echo_json(c.get(gw.url("/")).send().await.unwrap()).await;
    assert_eq!(
        a.connections(),
        2,
        "new pool settings open a new connection"
    );
}

#[tokio::test]
async fn renaming_or_swapping_listener_addresses_hands_sockets_over() {
    let a = echo("a").await;
    let (p1, p2) = (common::closed_port().await, common::closed_port().await);
    let routes = format!(
        "upstreams: {{ a: {{ targets: [{{ url: \"{}\" }}] }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [\"/\"] }}, upstream: a }}\n",
        a.url()
    );
    let with = |listeners: &str| format!("version: 1\nlisteners:\n{listeners}{routes}");
    let gw = gateway(&with(&format!(
        "  - {{ name: public, address: \"{p1}\" }}\n  - {{ name: other, address: \"{p2}\" }}\n"
    )))
    .await;
    // An open keep-alive connection on the renamed listener must survive the rename.
    let mut kept = TcpStream::connect(p1).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut kept).await.starts_with("HTTP/1.1 200"));

    gw.rewrite(&with(&format!(
        "  - {{ name: front, address: \"{p1}\" }}\n  - {{ name: other, address: \"{p2}\" }}\n"
    )))
    .await;
    let outcome = gw
        .gw
        .reload()
        .await
        .expect("rename is not an address clash");
    assert_eq!(
        (outcome.added, outcome.removed),
        (vec!["front".to_string()], vec!["public".to_string()])
    );
    assert_eq!(gw.gw.local_addr("front").await, Some(p1));
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_response(&mut kept).await.starts_with("HTTP/1.1 200"),
        "connection kept across rename"
    );

    // Swap the two addresses.
    gw.rewrite(&with(&format!(
        "  - {{ name: front, address: \"{p2}\" }}\n  - {{ name: other, address: \"{p1}\" }}\n"
    )))
    .await;
    gw.gw.reload().await.expect("swap");
    assert_eq!(gw.gw.local_addr("front").await, Some(p2));
    assert_eq!(gw.gw.local_addr("other").await, Some(p1));
    for p in [p1, p2] {
        let resp = client().get(format!("http://{p}/")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{p} serves after the swap");
    }
}
