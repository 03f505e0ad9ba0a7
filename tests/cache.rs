//! The `cache` plugin end to end: a real gateway in front of a real origin that counts its
//! requests and answers with the cache headers each test asks for (in the query string), so every
//! RFC 9111 rule is shown with its opposite case.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{config, full, gateway, h2c_client, upstream, TestGateway, Upstream};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

/// An origin whose answers the request's query string scripts:
/// `h=name:value` (repeatable) response headers, `status=N`, `body=text` (default: `body-N` with
/// N this URL's request count, so a stored answer shows by its old N), `etag=X` (also answers
/// `304` to a matching `If-None-Match`), `big=N` a body of N bytes, `abort=1` a body that breaks
/// off, `wait=ms` before the head. `down` makes it answer `503` to everything.
#[derive(Clone)]
struct Origin {
    up: Upstream,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    down: Arc<AtomicBool>,
    last_headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    /// Lets a `hold=1` body finish.
    release: Arc<tokio::sync::Notify>,
}

impl Origin {
    fn count(&self, path_and_query: &str) -> usize {
        self.counts
            .lock()
            .expect("test value")
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }
    fn last(&self) -> http::HeaderMap {
        self.last_headers
            .lock()
            .expect("test value")
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

async fn origin() -> Origin {
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let down = Arc::new(AtomicBool::new(false));
    let last_headers: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let release = Arc::new(tokio::sync::Notify::new());
    let (c, d, l, rel) = (
        counts.clone(),
        down.clone(),
        last_headers.clone(),
        release.clone(),
    );
    let up = upstream(move |req: Request<Incoming>| {
        let (c, d, l, rel) = (c.clone(), d.clone(), l.clone(), rel.clone());
        async move {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let n = {
                let mut m = c.lock().expect("test value");
                let e = m.entry(pq).or_insert(0);
                *e += 1;
                *e
            };
            l.lock().expect("test value").push(req.headers().clone());
            if d.load(Ordering::SeqCst) {
                return Response::builder()
                    .status(503)
                    .body(full("down"))
                    .expect("test value");
            }
            let mut b = Response::builder();
            let mut body = format!("body-{n}");
            let mut status = 200;
            let mut etag = None;
            let mut big = None;
            let mut abort = false;
            let mut hold = false;
            let mut wait = 0;
            for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
                match &*k {
                    "h" => {
                        let (name, value) = v.split_once(':').expect("test value");
                        b = b.header(name, value.trim());
                    }
                    "status" => status = v.parse().expect("test value"),
                    "body" => body = v.into_owned(),
                    "etag" => etag = Some(format!("\"{v}\"")),
                    "big" => big = Some(v.parse::<usize>().expect("test value")),
                    "abort" => abort = true,
                    "hold" => hold = true,
                    "wait" => wait = v.parse().expect("test value"),
                    _ => {}
                }
            }
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            if let Some(t) = &etag {
                b = b.header("etag", t);
                if req
                    .headers()
                    .get("if-none-match")
                    .is_some_and(|v| v.as_bytes() == t.as_bytes())
                {
                    return b.status(304).body(full("")).expect("test value");
                }
            }
            if hold {
                // "first" now; "second" and the end once the test releases it.
                let (tx, rx) = tokio::sync::mpsc::channel::<
                    Result<hyper::body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
                >(4);
                tokio::spawn(async move {
                    let _ = tx
                        .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"first"))))
                        .await;
                    rel.notified().await;
                    let _ = tx
                        .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"second"))))
                        .await;
                });
                let stream = http_body_util::StreamBody::new(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                );
                return b.status(status).body(stream.boxed()).expect("test value");
            }
            if abort {
                let (tx, rx) = tokio::sync::mpsc::channel::<
                    Result<hyper::body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
                >(4);
                tokio::spawn(async move {
                    let _ = tx
                        .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"partial"))))
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = tx.send(Err("broken".into())).await;
                });
                let stream = http_body_util::StreamBody::new(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                );
                return b.status(status).body(stream.boxed()).expect("test value");
            }
            if let Some(size) = big {
                return b
                    .status(status)
                    .body(full(vec![b'x'; size]))
                    .expect("test value");
            }
            b.status(status).body(full(body)).expect("test value")
        }
    })
    .await;
    Origin {
        up,
        counts,
        down,
        last_headers,
        release,
    }
}

/// A config with `top` (top-level sections), upstream `origin` and route `c` (prefix `/`) caching
/// with `plugin` (a YAML flow mapping's body), and an admin listener when `admin`.
fn cached_config(o: &Origin, top: &str, plugin: &str, admin: bool) -> String {
    let admin = if admin {
        "admin: { address: \"127.0.0.1:0\", token: t0k3n-for-tests }\n"
    } else {
        ""
    };
    config(&format!(
        "{top}upstreams:\n  origin: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - name: c\n    match: {{ paths: [\"/\"] }}\n    upstream: origin\n    plugins:\n      cache: {{ {plugin} }}\n{admin}",
        o.up.url()
    ))
}

/// A gateway on [`cached_config`] without `top` and admin.
async fn cached(o: &Origin, plugin: &str) -> TestGateway {
    gateway(&cached_config(o, "", plugin, false)).await
}

struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Got {
    fn cache_status(&self) -> String {
        self.headers
            .get("cache-status")
            .map(|v| v.to_str().expect("test value").to_string())
            .unwrap_or_default()
    }
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Got {
    send(gw, "GET", path, headers).await
}

async fn send(gw: &TestGateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    let client = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .expect("test value");
    let mut rb = client.request(method.parse().expect("test value"), gw.url(path));
    for (n, v) in headers {
        rb = rb.header(*n, *v);
    }
    let r = rb.send().await.expect("response");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    Got {
        status,
        headers,
        body,
    }
}

/// GETs `path` until `done` holds for the answer (a Redis write or a purge message is on its way:
/// they happen in the background), at most 100 tries 20 ms apart; returns the last answer.
async fn get_until(gw: &TestGateway, path: &str, done: impl Fn(&Got) -> bool) -> Got {
    let mut r = get(gw, path, &[]).await;
    for _ in 0..100 {
        if done(&r) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = get(gw, path, &[]).await;
    }
    r
}

const FRESH: &str = "/f?h=cache-control:max-age%3D60";

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_age_and_cache_status() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let first = get(&gw, FRESH, &[]).await;
    assert_eq!(first.body, "body-1");
    assert!(
        first.cache_status().contains("fwd=uri-miss") && first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let second = get(&gw, FRESH, &[]).await;
    assert_eq!(second.body, "body-1", "answered from the cache");
    assert!(
        second.cache_status().starts_with("frontdesk; hit; ttl="),
        "{}",
        second.cache_status()
    );
    assert!(second.headers.contains_key("age"));
    assert_eq!(o.count(FRESH), 1);
    // A query in another order is the same key.
    let path = "/q?a=1&h=cache-control:max-age%3D60";
    get(&gw, path, &[]).await;
    let swapped = get(&gw, "/q?h=cache-control:max-age%3D60&a=1", &[]).await;
    assert_eq!(swapped.body, "body-1");
    // HEAD is answered from the stored GET, without a body but with its length.
    let head = send(&gw, "HEAD", FRESH, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], "6");
    assert!(head.cache_status().contains("hit"));
    assert_eq!(o.count(FRESH), 1);
}

/// (path, request headers, stored?)
type Case = (&'static str, &'static [(&'static str, &'static str)], bool);

#[tokio::test]
async fn what_must_not_be_stored_is_not_and_the_opposite_cases_are() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    // (path, request headers, stored?)
    let cases: &[Case] = &[
        ("/n1?h=cache-control:no-store,max-age%3D60", &[], false),
        ("/n2?h=cache-control:private,max-age%3D60", &[], false),
        (
            "/n3?h=cache-control:max-age%3D60&h=set-cookie:a%3Db",
            &[],
            false,
        ),
        ("/n4?h=cache-control:max-age%3D60&h=vary:*", &[], false),
        ("/n5", &[], false),
        (
            "/n6?h=cache-control:max-age%3D60",
            &[("authorization", "Bearer x")],
            false,
        ),
        (
            "/n7?h=cache-control:public,max-age%3D60",
            &[("authorization", "Bearer x")],
            true,
        ),
        (
            "/n8?h=cache-control:s-maxage%3D60",
            &[("authorization", "Bearer x")],
            true,
        ),
        ("/n9?h=cache-control:max-age%3D60&status=500", &[], false),
        ("/n10?h=cache-control:max-age%3D60&status=404", &[], true),
        (
            "/n11?h=cache-control:max-age%3D60",
            &[("cache-control", "no-store")],
            false,
        ),
        (
            "/n12?h=expires:Thu,%2001%20Jan%202099%2000:00:00%20GMT",
            &[],
            true,
        ),
        ("/n13?h=expires:0", &[], false),
    ];
    for (path, headers, stored) in cases {
        get(&gw, path, headers).await;
        let again = get(&gw, path, headers).await;
        let want = if *stored { 1 } else { 2 };
        assert_eq!(o.count(path), want, "{path}: {}", again.cache_status());
    }
}

#[tokio::test]
async fn vary_keeps_variants_side_by_side() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let p = "/v?h=cache-control:max-age%3D60&h=vary:accept";
    let a = get(&gw, p, &[("accept", "text/a")]).await;
    let b = get(&gw, p, &[("accept", "text/b")]).await;
    assert!(
        b.cache_status().contains("fwd=vary-miss"),
        "{}",
        b.cache_status()
    );
    assert_eq!((a.body.as_str(), b.body.as_str()), ("body-1", "body-2"));
    assert_eq!(get(&gw, p, &[("accept", "text/a")]).await.body, "body-1");
    assert_eq!(get(&gw, p, &[("accept", "text/b")]).await.body, "body-2");
    assert_eq!(o.count(p), 2);
}

#[tokio::test]
async fn a_stale_response_is_revalidated_and_a_304_refreshes_its_headers() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    // Stored already stale (Age beyond max-age), with a validator.
    let p = "/r?h=cache-control:max-age%3D5&h=age:10&etag=v1";
    assert_eq!(get(&gw, p, &[]).await.body, "body-1");
    let second = get(&gw, p, &[]).await;
    assert_eq!(
        o.last()["if-none-match"],
        "\"v1\"",
        "revalidated with the stored ETag"
    );
    assert_eq!(second.status, 200);
    assert_eq!(second.body, "body-1", "the 304 served the stored body");
    assert!(
        second.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        second.cache_status()
    );
    // The client's own conditional request is answered 304 from a fresh entry.
    let p2 = "/r2?h=cache-control:max-age%3D60&etag=v2";
    get(&gw, p2, &[]).await;
    let cond = get(&gw, p2, &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(cond.status, 304);
    assert_eq!(o.count(p2), 1);
    let other = get(&gw, p2, &[("if-none-match", "\"v0\"")]).await;
    assert_eq!((other.status, other.body.as_str()), (200, "body-1"));
    // A request's no-cache makes it go upstream (revalidating), not served as it is.
    let nc = get(&gw, p2, &[("cache-control", "no-cache")]).await;
    assert!(
        nc.cache_status().contains("fwd=request"),
        "{}",
        nc.cache_status()
    );
    assert_eq!(o.count(p2), 2);
}

#[tokio::test]
async fn stale_if_error_serves_the_stored_response_when_the_upstream_fails() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let p = "/e?h=cache-control:max-age%3D1,stale-if-error%3D600&h=age:5";
    assert_eq!(get(&gw, p, &[]).await.body, "body-1");
    o.down.store(true, Ordering::SeqCst);
    let during = get(&gw, p, &[]).await;
    assert_eq!((during.status, during.body.as_str()), (200, "body-1"));
    assert!(
        during.cache_status().contains("detail=stale-if-error"),
        "{}",
        during.cache_status()
    );
    // must-revalidate forbids it: the error goes through.
    o.down.store(false, Ordering::SeqCst);
    let strict = "/e2?h=cache-control:max-age%3D1,stale-if-error%3D600,must-revalidate&h=age:5";
    get(&gw, strict, &[]).await;
    o.down.store(true, Ordering::SeqCst);
    assert_eq!(get(&gw, strict, &[]).await.status, 503);
}

#[tokio::test]
async fn stale_if_error_covers_an_unreachable_upstream_and_reloads_keep_the_store() {
    let o = origin().await;
    let yaml = |url: &str| {
        config(&format!(
            "upstreams:\n  origin: {{ targets: [{{ url: \"{url}\" }}] }}\nroutes:\n  - name: c\n    match: {{ paths: [\"/\"] }}\n    upstream: origin\n    plugins:\n      cache: {{ key: [path, query] }}\n"
        ))
    };
    let gw = gateway(&yaml(&o.up.url())).await;
    let p = "/u?h=cache-control:max-age%3D1,stale-if-error%3D600&h=age:5";
    let fresh = "/u2?h=cache-control:max-age%3D600";
    assert_eq!(get(&gw, p, &[]).await.body, "body-1");
    assert_eq!(get(&gw, fresh, &[]).await.body, "body-1");
    // The upstream moves to a closed port; the reload keeps the stored responses.
    let dead = common::closed_port().await;
    gw.rewrite(&yaml(&format!("http://{dead}"))).await;
    gw.gw.reload().await.expect("reload");
    assert_eq!(
        get(&gw, fresh, &[]).await.body,
        "body-1",
        "kept across the reload"
    );
    let during = get(&gw, p, &[]).await;
    assert_eq!((during.status, during.body.as_str()), (200, "body-1"));
    assert!(
        during.cache_status().contains("fwd-status=502")
            && during.cache_status().contains("stale-if-error"),
        "{}",
        during.cache_status()
    );
    // Nothing stored: the gateway's own error, with Cache-Status.
    let none = get(&gw, "/u3?h=cache-control:max-age%3D600", &[]).await;
    assert_eq!(none.status, 502);
    assert!(
        none.cache_status().contains("fwd=uri-miss"),
        "{}",
        none.cache_status()
    );
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let p = "/s?h=cache-control:max-age%3D1,stale-while-revalidate%3D600&h=age:5&wait=200";
    assert_eq!(get(&gw, p, &[]).await.body, "body-1");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let url = gw.url(p);
        tasks.push(tokio::spawn(async move {
            let r = common::client().get(url).send().await.expect("test value");
            let cs = r.headers()["cache-status"]
                .to_str()
                .expect("test value")
                .to_string();
            (r.text().await.expect("test value"), cs)
        }));
    }
    for t in tasks {
        let (body, cs) = t.await.expect("test value");
        assert_eq!(body, "body-1");
        assert!(cs.contains("detail=stale-while-revalidate"), "{cs}");
    }
    // Exactly one background refresh.
    for _ in 0..100 {
        if o.count(p) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(o.count(p), 2, "one refresh for 100 stale serves");
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let p = "/c?h=cache-control:max-age%3D60&wait=300";
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let url = gw.url(p);
        tasks.push(tokio::spawn(async move {
            let r = common::client().get(url).send().await.expect("test value");
            r.text().await.expect("test value")
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("test value"), "body-1");
    }
    assert_eq!(o.count(p), 1);
}

#[tokio::test]
async fn large_and_aborted_bodies_are_passed_on_and_not_stored() {
    let o = origin().await;
    let gw = cached(&o, "max_object_size: 1KiB").await;
    let p = "/b?h=cache-control:max-age%3D60&big=5000";
    assert_eq!(get(&gw, p, &[]).await.body.len(), 5000);
    assert_eq!(get(&gw, p, &[]).await.body.len(), 5000);
    assert_eq!(o.count(p), 2);
    let a = "/a?h=cache-control:max-age%3D60&abort=1";
    let client = common::client();
    let r = client.get(gw.url(a)).send().await.expect("test value");
    assert!(r.bytes().await.is_err(), "the break reaches the client");
    get(&gw, a, &[]).await;
    assert_eq!(o.count(a), 2, "an aborted body is never stored");
}

#[tokio::test]
async fn ranges_are_answered_from_a_stored_whole() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let p = "/g?h=cache-control:max-age%3D60&body=0123456789";
    get(&gw, p, &[]).await;
    let r = get(&gw, p, &[("range", "bytes=2-4")]).await;
    assert_eq!((r.status, r.body.as_str()), (206, "234"));
    assert_eq!(r.headers["content-range"], "bytes 2-4/10");
    let suffix = get(&gw, p, &[("range", "bytes=-3")]).await;
    assert_eq!(suffix.body, "789");
    let bad = get(&gw, p, &[("range", "bytes=50-")]).await;
    assert_eq!(bad.status, 416);
    assert_eq!(o.count(p), 1);
}

#[tokio::test]
async fn unsafe_methods_invalidate_their_url() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let p = "/i?h=cache-control:max-age%3D60";
    get(&gw, p, &[]).await;
    assert_eq!(get(&gw, p, &[]).await.body, "body-1");
    // A failed POST invalidates nothing.
    send(
        &gw,
        "POST",
        "/i?h=cache-control:max-age%3D60&status=500",
        &[],
    )
    .await;
    assert_eq!(get(&gw, p, &[]).await.body, "body-1");
    let post = send(&gw, "POST", p, &[]).await;
    assert_eq!(post.status, 200);
    assert_eq!(
        get(&gw, p, &[]).await.body,
        "body-3",
        "re-fetched after the POST"
    );
}

#[tokio::test]
async fn only_if_cached_and_bypass() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let r = get(
        &gw,
        "/o?h=cache-control:max-age%3D60",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(o.count("/o?h=cache-control:max-age%3D60"), 0);
    let del = send(&gw, "OPTIONS", FRESH, &[]).await;
    assert!(
        del.cache_status().contains("fwd=bypass"),
        "{}",
        del.cache_status()
    );
}

#[tokio::test]
async fn purges_by_key_url_prefix_and_tag_and_soft() {
    let o = origin().await;
    let gw = gateway(&cached_config(
        &o,
        "",
        "tag_header: Surrogate-Key, expose_key: true, stale_while_revalidate: 10m",
        true,
    ))
    .await;
    let admin = gw.gw.admin_addr().expect("admin");
    let purge = |body: &'static str| {
        let url = format!("http://{admin}/cache/purge");
        async move {
            let r = common::client()
                .post(url)
                .bearer_auth("t0k3n-for-tests")
                .body(body)
                .send()
                .await
                .expect("test value");
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let cc = "h=cache-control:max-age%3D60";
    let paths = [
        format!("/p/a?{cc}&h=surrogate-key:red%20blue"),
        format!("/p/b?{cc}&h=surrogate-key:blue"),
        format!("/q/c?{cc}"),
    ];
    for p in &paths {
        let first = get(&gw, p, &[]).await;
        assert!(
            !first.headers.contains_key("surrogate-key"),
            "tags are not shown to clients"
        );
    }
    let (s, r) = purge(r#"{"tag":"red"}"#).await;
    assert_eq!((s, r["purged"].as_u64()), (200, Some(1)));
    assert_eq!(get(&gw, &paths[0], &[]).await.body, "body-2");
    assert_eq!(get(&gw, &paths[1], &[]).await.body, "body-1");
    let (_, r) = purge(r#"{"prefix":"http://127.0.0.2"}"#).await;
    assert_eq!(r["purged"].as_u64(), Some(0), "another host's prefix");
    let host = gw.addr.to_string();
    let prefix = format!(r#"{{"prefix":"{host}/p/"}}"#);
    let (_, r) = purge(Box::leak(prefix.into_boxed_str())).await;
    assert_eq!(r["purged"].as_u64(), Some(2));
    assert_eq!(get(&gw, &paths[1], &[]).await.body, "body-2");
    let url = format!(r#"{{"url":"http://{host}{}"}}"#, paths[2]);
    let (_, r) = purge(Box::leak(url.into_boxed_str())).await;
    assert_eq!(r["purged"].as_u64(), Some(1));
    assert_eq!(get(&gw, &paths[2], &[]).await.body, "body-2");
    // By key, as Cache-Status shows it; soft: served stale while refreshed.
    let hit = get(&gw, &paths[2], &[]).await;
    let cs = hit.cache_status();
    let key = cs
        .split("key=\"")
        .nth(1)
        .expect("test value")
        .trim_end_matches('"')
        .to_string();
    let body = serde_json::json!({ "key": key, "soft": true }).to_string();
    let (_, r) = purge(Box::leak(body.into_boxed_str())).await;
    assert_eq!(r["purged"].as_u64(), Some(1));
    let soft = get(&gw, &paths[2], &[]).await;
    assert_eq!(soft.body, "body-2");
    assert!(
        soft.cache_status().contains("stale-while-revalidate"),
        "{}",
        soft.cache_status()
    );
    // Bad requests.
    assert_eq!(purge(r#"{"tag":"a","url":"b"}"#).await.0, 400);
    assert_eq!(purge(r#"{"nope":1}"#).await.0, 400);
    let _ = AtomicUsize::new(0);
}

/// Two gateways sharing one Redis, both caching route `c` in `[memory, redis]`.
async fn fleet(o: &Origin, redis_url: &str, extra: &str) -> (TestGateway, TestGateway) {
    let yaml = config(&format!(
        "upstreams:\n  origin: {{ targets: [{{ url: \"{}\" }}] }}\nredis: {{ url: \"{redis_url}\", timeout: 500ms }}\ncache:\n  memory: {{ max_size: 64MiB }}\n  redis: {{ max_object_size: 1MiB }}\nroutes:\n  - name: c\n    match: {{ paths: [\"/\"] }}\n    upstream: origin\n    plugins:\n      cache: {{ tiers: [memory, redis], key: [path, query], tag_header: Surrogate-Key {extra} }}\nadmin: {{ address: \"127.0.0.1:0\", token: t0k3n-for-tests }}\n",
        o.up.url()
    ));
    let a = gateway(&yaml).await;
    let b = gateway(&yaml).await;
    // Both connected (the store connects in the background) before the test relies on it.
    for gw in [&a, &b] {
        for _ in 0..200 {
            let snap = gw.gw.snapshot();
            if snap.redis.as_ref().is_some_and(|r| r.is_connected()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (a, b)
}

async fn purge_on(gw: &TestGateway, body: String) -> serde_json::Value {
    let admin = gw.gw.admin_addr().expect("admin");
    common::client()
        .post(format!("http://{admin}/cache/purge"))
        .bearer_auth("t0k3n-for-tests")
        .body(body)
        .send()
        .await
        .expect("purge")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn the_redis_tier_is_shared_coalesces_across_instances_and_purges_everywhere() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let o = origin().await;
    let (a, b) = fleet(&o, &redis.url(), "").await;
    // Filled through A, served by B from Redis.
    let p = "/shared?h=cache-control:max-age%3D600&h=surrogate-key:grp";
    assert_eq!(get(&a, p, &[]).await.body, "body-1");
    let from_b = get_until(&b, p, |r| r.body == "body-1").await;
    let count_after_fill = o.count(p);
    // From Redis: a hit, or (when B came while A's fill lease was still held) the fill B waited for.
    let cs = from_b.cache_status();
    assert!(cs.contains("hit") || cs.contains("collapsed"), "{cs}");
    assert_eq!(count_after_fill, 1, "B did not go upstream");

    // 200 concurrent misses spread over both instances: one upstream request.
    let c = "/fleet?h=cache-control:max-age%3D600&wait=400";
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = if i % 2 == 0 { a.url(c) } else { b.url(c) };
        tasks.push(tokio::spawn(async move {
            common::client()
                .get(url)
                .send()
                .await
                .expect("response")
                .text()
                .await
                .expect("body")
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), "body-1");
    }
    assert_eq!(o.count(c), 1, "one upstream request across two instances");

    // A purge by tag on A removes the entry on B too (pub/sub) and in Redis.
    let r = purge_on(&a, r#"{"tag":"grp"}"#.into()).await;
    assert_eq!(r["purged"].as_u64(), Some(1));
    let after = get_until(&b, p, |r| r.body != "body-1").await;
    assert_ne!(after.body, "body-1", "purged on B as well");
    assert!(o.count(p) > count_after_fill);
}

#[tokio::test]
async fn with_redis_down_the_memory_tier_keeps_serving_and_misses_go_upstream() {
    let Some(mut redis) = common::redis::RedisServer::start() else {
        return;
    };
    let o = origin().await;
    let (a, _b) = fleet(&o, &redis.url(), "").await;
    let p = "/down?h=cache-control:max-age%3D600";
    assert_eq!(get(&a, p, &[]).await.body, "body-1");
    redis.kill();
    assert_eq!(get(&a, p, &[]).await.body, "body-1", "memory still serves");
    let miss = "/down2?h=cache-control:max-age%3D600";
    let r = get(&a, miss, &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "body-1"));
    assert_eq!(
        get(&a, miss, &[]).await.body,
        "body-1",
        "stored in memory without redis"
    );
    assert_eq!(o.count(miss), 1);
}

#[tokio::test]
async fn the_access_log_has_the_cache_status() {
    let o = origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let gw = common::gateway_in(
        dir,
        &config(&format!(
            "observability:\n  access_log: {{ output: access.log }}\nupstreams:\n  origin: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - name: c\n    match: {{ paths: [\"/\"] }}\n    upstream: origin\n    plugins:\n      cache: {{}}\n",
            o.up.url()
        )),
    )
    .await;
    get(&gw, FRESH, &[]).await;
    get(&gw, FRESH, &[]).await;
    let mut statuses = Vec::new();
    for _ in 0..200 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        statuses = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["cache_status"].as_str().map(str::to_string))
            .collect();
        if statuses.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(statuses[0].contains("fwd=uri-miss"), "{statuses:?}");
    assert!(statuses[1].contains("hit"), "{statuses:?}");
}

#[tokio::test]
async fn explain_says_whether_a_request_is_cacheable_and_what_is_stored() {
    let o = origin().await;
    let gw = gateway(&cached_config(&o, "", "", true)).await;
    let admin = gw.gw.admin_addr().expect("admin");
    let explain = |q: String| {
        let url = format!("http://{admin}/explain?{q}");
        async move {
            let v: serde_json::Value = common::client()
                .get(url)
                .bearer_auth("t0k3n-for-tests")
                .send()
                .await
                .expect("explain")
                .json()
                .await
                .expect("json");
            v["matched"]["notes"][0]["note"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let path = format!("/x%3Fh%3Dcache-control:max-age%253D60&host={}", gw.addr);
    let before = explain(format!("path={path}")).await;
    assert!(
        before.contains("cacheable: key") && before.contains("nothing stored"),
        "{before}"
    );
    get(&gw, "/x?h=cache-control:max-age%3D60", &[]).await;
    let after = explain(format!("path={path}")).await;
    assert!(after.contains("stored, fresh for"), "{after}");
    let post = explain(format!("method=POST&path={path}")).await;
    assert!(post.contains("not cacheable (POST)"), "{post}");
    let auth = explain(format!(
        "path={path}&header=authorization:Bearer%20x&header=cache-control:no-store"
    ))
    .await;
    assert!(
        auth.contains("no-store") && auth.contains("Authorization"),
        "{auth}"
    );
    // Offline, the CLI says the same of the config (nothing is stored there).
    let text = common::explain_cli(&gw.path(), &["GET", "/x"]);
    assert!(text.contains("cache: cacheable: key \"c|GET|"), "{text}");
}

#[tokio::test]
async fn coalesced_requests_get_the_body_as_it_arrives() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let p = "/hold?h=cache-control:max-age%3D600&hold=1";
    let client = common::client();
    let mut leader = client.get(gw.url(p)).send().await.expect("leader's head");
    assert_eq!(
        leader.chunk().await.expect("chunk").as_deref(),
        Some(&b"first"[..])
    );
    // The waiter joins while the upstream still holds the rest of the body back.
    let mut waiter = client.get(gw.url(p)).send().await.expect("waiter's head");
    assert!(waiter.headers()["cache-status"]
        .to_str()
        .expect("ascii")
        .contains("collapsed"));
    assert_eq!(
        waiter.chunk().await.expect("chunk").as_deref(),
        Some(&b"first"[..]),
        "before the end"
    );
    o.release.notify_waiters();
    assert_eq!(leader.text().await.expect("rest"), "second");
    assert_eq!(waiter.text().await.expect("rest"), "second");
    assert_eq!(o.count(p), 1);
    // Stored once complete.
    assert_eq!(get(&gw, p, &[]).await.body, "firstsecond");
    assert_eq!(o.count(p), 1);
}

#[tokio::test]
async fn stale_if_error_covers_an_open_circuit_breaker() {
    let o = origin().await;
    let gw = gateway(&config(&format!(
        "upstreams:\n  origin:\n    targets: [{{ url: \"{}\" }}]\n    retries: {{ attempts: 0 }}\n    circuit_breaker: {{ failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 60s }}\nroutes:\n  - name: c\n    match: {{ paths: [\"/\"] }}\n    upstream: origin\n    plugins:\n      cache: {{}}\n",
        o.up.url()
    )))
    .await;
    let p = "/br?h=cache-control:max-age%3D1,stale-if-error%3D600&h=age:5";
    assert_eq!(get(&gw, p, &[]).await.body, "body-1");
    o.down.store(true, Ordering::SeqCst);
    for i in 0..6 {
        get(&gw, &format!("/fail{i}"), &[]).await;
    }
    let before = o.count(p);
    let r = get(&gw, p, &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "body-1"));
    assert!(
        r.cache_status().contains("fwd-status=503") && r.cache_status().contains("stale-if-error"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        o.count(p),
        before,
        "the open breaker kept the request from the upstream"
    );
}

#[tokio::test]
async fn a_304_refreshes_the_stored_headers_and_freshness() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    // Stale at once; its revalidation answers 304 with a fresh max-age and a new header.
    let p = "/fr?h=cache-control:max-age%3D5&h=age:10&h=x-version:2&etag=v1";
    get(&gw, p, &[]).await;
    let revalidated = get(&gw, p, &[]).await;
    assert!(
        revalidated.cache_status().contains("fwd-status=304"),
        "{}",
        revalidated.cache_status()
    );
    // The 304 carried `Age: 10` again, so the refreshed response is stale again: still revalidated,
    // still served from the stored body.
    assert_eq!(revalidated.body, "body-1");
    assert_eq!(revalidated.headers["x-version"], "2");
    // A 304 with a longer max-age makes it fresh: the next request is a hit.
    let q = "/fr2?h=cache-control:max-age%3D600&etag=v1";
    get(&gw, q, &[]).await;
    let hit = get(&gw, q, &[]).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
}

#[tokio::test]
async fn an_authorized_request_is_stored_per_consumer_when_the_key_has_it() {
    let o = origin().await;
    let gw = gateway(&config(&format!(
        "consumers:\n  - {{ name: alice, api_keys: [\"alice-key-0123456789\"] }}\n  - {{ name: bob, api_keys: [\"bob-key-0123456789\"] }}\nupstreams:\n  origin: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - name: c\n    match: {{ paths: [\"/\"] }}\n    upstream: origin\n    plugins:\n      key_auth: {{ header: authorization }}\n      cache: {{ key: [consumer, path, query] }}\n",
        o.up.url()
    )))
    .await;
    let p = "/me?h=cache-control:max-age%3D600";
    let alice = [("authorization", "alice-key-0123456789")];
    let bob = [("authorization", "bob-key-0123456789")];
    assert_eq!(get(&gw, p, &alice).await.body, "body-1");
    assert_eq!(get(&gw, p, &bob).await.body, "body-2", "not alice's");
    assert_eq!(get(&gw, p, &alice).await.body, "body-1");
    assert_eq!(get(&gw, p, &bob).await.body, "body-2");
    assert_eq!(o.count(p), 2);
    // Without credentials, the auth plugin refuses before the cache is consulted.
    assert_eq!(get(&gw, p, &[]).await.status, 401);
}

#[tokio::test]
async fn the_memory_tier_keeps_to_its_budget_and_metrics_show_it() {
    let o = origin().await;
    let gw = gateway(&cached_config(
        &o,
        "cache: { memory: { max_size: 64KiB } }\n",
        "",
        true,
    ))
    .await;
    for i in 0..40 {
        let p = format!("/m{i}?h=cache-control:max-age%3D600&big=8000");
        assert_eq!(get(&gw, &p, &[]).await.body.len(), 8000);
    }
    let text = common::metrics_text(&gw).await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    assert!(value("frontdesk_cache_bytes{tier=\"memory\"}") <= 64.0 * 1024.0);
    assert!(value("frontdesk_cache_evictions_total{tier=\"memory\"}") > 0.0);
    let entries = value("frontdesk_cache_entries{tier=\"memory\"}");
    assert!((1.0..40.0).contains(&entries), "{entries}");
    assert!(
        value("frontdesk_cache_requests_total{route=\"c\",tier=\"memory\",result=\"stored\"}")
            >= 40.0
    );
}

#[tokio::test]
async fn request_directives_max_age_min_fresh_max_stale_and_location_invalidation() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    // Stored with Age 30 of max-age 100 (70 s left); stale by ~25 s; stale and must-revalidate.
    let p = "/d?h=cache-control:max-age%3D100&h=age:30";
    let s = "/ds?h=cache-control:max-age%3D5&h=age:30";
    let m = "/dm?h=cache-control:max-age%3D5,must-revalidate&h=age:30";
    for path in [p, s, m] {
        get(&gw, path, &[]).await;
    }
    // (path, the request's Cache-Control, what Cache-Status must contain)
    let cases = [
        (p, "max-age=20", "fwd="),
        (p, "max-age=60", "hit"),
        (p, "min-fresh=90", "fwd="),
        (p, "min-fresh=10", "hit"),
        (s, "max-stale=60", "hit"),
        (s, "max-stale=5", "fwd="),
        (m, "max-stale", "fwd="),
    ];
    for (path, cc, want) in cases {
        let got = get(&gw, path, &[("cache-control", cc)])
            .await
            .cache_status();
        assert!(got.contains(want), "{path} with {cc}: {got}");
    }
    // A POST whose answer names another URL of the same host in Location invalidates it too.
    let target = "/loc?h=cache-control:max-age%3D600";
    get(&gw, target, &[]).await;
    assert!(get(&gw, target, &[]).await.cache_status().contains("hit"));
    let loc = format!(
        "/other?h=location:http://{}/loc%3Fh%3Dcache-control:max-age%253D600",
        gw.addr
    );
    assert_eq!(send(&gw, "POST", &loc, &[]).await.status, 200);
    assert!(
        get(&gw, target, &[])
            .await
            .cache_status()
            .contains("fwd=uri-miss"),
        "invalidated through Location"
    );
}

#[tokio::test]
async fn a_reload_that_keeps_the_key_shape_keeps_the_entries() {
    let o = origin().await;
    let yaml = |plugin: &str| {
        config(&format!(
            "upstreams:\n  origin: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - name: c\n    match: {{ paths: [\"/\"] }}\n    upstream: origin\n    plugins:\n      cache: {{ {plugin} }}\n",
            o.up.url()
        ))
    };
    let gw = gateway(&yaml("max_ttl: 1h")).await;
    get(&gw, FRESH, &[]).await;
    gw.rewrite(&yaml("max_ttl: 2h, stale_if_error: 1m")).await;
    gw.gw.reload().await.expect("reload");
    assert!(
        get(&gw, FRESH, &[]).await.cache_status().contains("hit"),
        "kept"
    );
    gw.rewrite(&yaml("max_ttl: 2h, key: [path, query]")).await;
    gw.gw.reload().await.expect("reload");
    assert!(
        get(&gw, FRESH, &[])
            .await
            .cache_status()
            .contains("fwd=uri-miss"),
        "another key shape"
    );
    assert_eq!(o.count(FRESH), 2);
}

#[tokio::test]
async fn purges_by_key_and_prefix_on_one_instance_reach_the_other() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let o = origin().await;
    let (a, b) = fleet(&o, &redis.url(), ", expose_key: true").await;
    let k = "/pk?h=cache-control:max-age%3D600";
    let pre = "/pp/x?h=cache-control:max-age%3D600";
    for p in [k, pre] {
        assert_eq!(get(&a, p, &[]).await.body, "body-1");
        // B has it too (from Redis, into its memory), once A's background write landed.
        let r = get_until(&b, p, |r| r.cache_status().contains("hit")).await;
        assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    }
    let hit = get(&b, k, &[]).await;
    let key = hit
        .cache_status()
        .split("key=\"")
        .nth(1)
        .expect("key shown")
        .trim_end_matches('"')
        .to_string();
    let r = purge_on(&a, serde_json::json!({ "key": key }).to_string()).await;
    assert_eq!(r["purged"].as_u64(), Some(1));
    let r = purge_on(&a, r#"{"prefix":"127.0.0.1:"}"#.into()).await;
    assert!(r["purged"].as_u64() >= Some(1), "{r}");
    for p in [k, pre] {
        let after = get_until(&b, p, |r| r.body != "body-1").await;
        assert_eq!(after.body, "body-2", "{p} purged on B too");
    }
}

#[tokio::test]
async fn http2_clients_get_hits_and_coalesced_answers_too() {
    let o = origin().await;
    let gw = cached(&o, "").await;
    let h2 = h2c_client();
    let p = "/h2?h=cache-control:max-age%3D600&wait=200";
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, url) = (h2.clone(), gw.url(p));
        tasks.push(tokio::spawn(async move {
            let r = c.get(url).send().await.expect("response");
            assert_eq!(r.version(), http::Version::HTTP_2);
            r.text().await.expect("body")
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), "body-1");
    }
    let hit = h2.get(gw.url(p)).send().await.expect("response");
    let cs = hit.headers()["cache-status"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(cs.contains("hit"), "{cs}");
    assert_eq!(o.count(p), 1);
}
