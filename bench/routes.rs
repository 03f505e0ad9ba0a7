//! Route table scale benchmark (`bench/routes.sh` runs it once per table size): compiles a
//! config of N routes (a mix of prefix, exact and template rules, a third of each) and reports
//! how long loading and compiling took, the process's peak RSS, and what matching one request
//! costs for the first and last route of each kind and for a path no route takes.
//!
//! Usage: `cargo run --release --example routes -- N [ITERATIONS]`. One line of `key=value`
//! pairs is printed, for the script to tabulate.

use std::hint::black_box;
use std::time::{Duration, Instant};

use frontdesk::config::load_str;
use frontdesk::route::RequestKey;
use frontdesk::snapshot::Snapshot;
use http::{HeaderMap, Method};

// The binary's allocator, so that RSS is what `frontdesk run` would show.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: frontdesk_alloc::MiMalloc = frontdesk_alloc::MiMalloc;

/// The path rule of route `i`: prefix, exact and template in turn.
fn rule(i: usize) -> String {
    match i % 3 {
        0 => format!("\"/svc{i}/api\""),
        1 => format!("{{ exact: /svc{i}/item }}"),
        _ => format!("{{ template: \"/svc{i}/orders/{{id}}\" }}"),
    }
}

/// A request path that route `i` takes.
fn path_for(i: usize) -> String {
    match i % 3 {
        0 => format!("/svc{i}/api/users/42"),
        1 => format!("/svc{i}/item"),
        _ => format!("/svc{i}/orders/42"),
    }
}

fn config(n: usize) -> String {
    let mut s = String::from(
        "version: 1\nupstreams: { u: { targets: [{ url: \"http://127.0.0.1:1\" }] } }\nroutes:\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "  - {{ name: r{i}, match: {{ paths: [{}] }}, upstream: u }}\n",
            rule(i)
        ));
    }
    s
}

/// Peak and current resident set size in KiB, from /proc (0 where unavailable).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Median nanoseconds per `find` for `path`, over 15 rounds of `iters` lookups each.
fn match_cost(snap: &Snapshot, path: &str, iters: u32, expect: Option<&str>) -> f64 {
    let headers = HeaderMap::new();
    let key = RequestKey {
        host: Some("bench.example"),
        path,
        query: None,
        method: &Method::GET,
        headers: &headers,
    };
    let found = snap.routes.find(&key).map(|m| m.route.name.to_string());
    assert_eq!(found.as_deref(), expect, "{path}");
    let mut rounds: Vec<Duration> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(snap.routes.find(black_box(&key)));
            }
            t.elapsed()
        })
        .collect();
    rounds.sort();
    rounds[rounds.len() / 2].as_nanos() as f64 / f64::from(iters)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let iters: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    assert!(n >= 6, "at least 6 routes, two of each kind");
    let text = config(n);
    let (_, rss_before) = rss_kib();

    let t = Instant::now();
    let loaded = match load_str(&text, &|_| None) {
        Ok(l) => l,
        Err(e) => panic!("config refused: {:?}", e.first()),
    };
    let load = t.elapsed();
    let (_, rss_loaded) = rss_kib();
    let t2 = Instant::now();
    let (snap, _warnings) = match Snapshot::build(loaded.config, None) {
        Ok(s) => s,
        Err(e) => panic!("snapshot refused: {:?}", e.first()),
    };
    let build = t2.elapsed();
    let compile = t.elapsed();
    drop(text);
    let (peak, rss) = rss_kib();

    let last = |kind: usize| (0..n).rev().find(|i| i % 3 == kind).unwrap_or(kind);
    let name = |i: usize| format!("r{i}");
    let mut out = format!(
        "routes={n} load_ms={:.1} build_ms={:.1} compile_ms={:.1} peak_rss_mib={:.1} rss_mib={:.1} rss_before_mib={:.1} rss_loaded_mib={:.1}",
        load.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e3,
        compile.as_secs_f64() * 1e3,
        peak as f64 / 1024.0,
        rss as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        rss_loaded as f64 / 1024.0,
    );
    for (label, i) in [
        ("prefix_first", 0),
        ("prefix_last", last(0)),
        ("exact_first", 1),
        ("exact_last", last(1)),
        ("template_first", 2),
        ("template_last", last(2)),
    ] {
        let ns = match_cost(&snap, &path_for(i), iters, Some(&name(i)));
        out.push_str(&format!(" {label}_ns={ns:.0}"));
    }
    let ns = match_cost(&snap, "/nothing/here", iters, None);
    out.push_str(&format!(" miss_ns={ns:.0}"));
    println!("{out}");
}
