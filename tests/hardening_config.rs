//! The real binary and gateway against hostile or careless configs: durations that overflow,
//! endless files, files `run` needs that `validate` did not check, errors reported in stages,
//! warnings, short HMAC secrets and the YAML 1.1-safe `retry_on`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, client, config, full, gateway, upstream};
use hyper::Response;

/// How long a one-shot command may take before it is killed and the test fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

struct CliRun {
    /// `None` when killed by a signal (or by us, on timeout).
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

impl CliRun {
    fn both(&self) -> String {
        format!(
            "code {:?}{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `sh -c "<prefix> exec frontdesk <args>"`, killed after [`CLI_TIMEOUT`]. The prefix sets
/// resource limits (`ulimit -v`) so a runaway allocation fails instead of eating the machine.
fn run_limited(prefix: &str, args: &[&str]) -> CliRun {
    let mut script = format!("{prefix} exec \"$0\"");
    for i in 0..args.len() {
        script.push_str(&format!(" \"${}\"", i + 1));
    }
    let child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(bin())
        .args(args)
        .env("FRONTDESK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn frontdesk");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(out) => {
            let out = out.expect("wait for frontdesk");
            CliRun {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                timed_out: false,
            }
        }
        Err(_) => {
            // Our own child, by its pid (`exec` kept the pid).
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            CliRun {
                code: None,
                stdout: String::new(),
                stderr: String::new(),
                timed_out: true,
            }
        }
    }
}

fn run_cli(args: &[&str]) -> CliRun {
    run_limited("", args)
}

fn write(dir: &Path, yaml: &str) -> String {
    let path = dir.join("frontdesk.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path.to_string_lossy().into_owned()
}

const HUGE: &str = "18446744073709551615";

fn upstream_body(extra: &str) -> String {
    format!(
        "upstreams:\n  api:\n    targets: [{{ url: \"http://127.0.0.1:1\" }}]\n{extra}routes:\n  - {{ name: r, match: {{ paths: [/] }}, upstream: api }}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Item 4: durations
// ---------------------------------------------------------------------------------------------

#[test]
fn huge_durations_are_refused_by_validate_and_run_with_their_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            format!(
                "version: 1\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    limits: {{ head_timeout: {HUGE} }}\n{}",
                upstream_body("")
            ),
            "listeners[0].limits.head_timeout",
        ),
        (
            format!(
                "version: 1\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    limits: {{ idle_timeout: {HUGE} }}\n{}",
                upstream_body("")
            ),
            "listeners[0].limits.idle_timeout",
        ),
        (
            format!(
                "version: 1\nserver: {{ drain_timeout: {HUGE} }}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n{}",
                upstream_body("")
            ),
            "server.drain_timeout",
        ),
        (
            config(&upstream_body(&format!(
                "    retries: {{ attempts: 2, backoff: {HUGE} }}\n"
            ))),
            "upstreams.api.retries.backoff",
        ),
    ];
    for (yaml, path) in cases {
        let file = write(dir.path(), &yaml);
        let v = run_cli(&["validate", "-c", &file]);
        assert_eq!(v.code, Some(1), "validate, {path}: {}", v.both());
        assert!(
            v.stderr.contains(&format!("{path}: must be at most")),
            "validate, {path}: {}",
            v.both()
        );
        let r = run_cli(&["run", "-c", &file]);
        assert_eq!(r.code, Some(1), "run, {path}: {}", r.both());
        assert!(r.stderr.contains(path), "run, {path}: {}", r.both());
        assert!(!r.stderr.contains("panicked"), "run, {path}: {}", r.both());
    }
}

/// The largest accepted values run: connections are served and SIGTERM exits cleanly.
#[test]
fn the_largest_accepted_durations_serve_and_drain() {
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let yaml = format!(
        "version: 1\nserver: {{ drain_timeout: 1h }}\nlisteners:\n  - name: public\n    address: 127.0.0.1:0\n    limits: {{ head_timeout: 1h, idle_timeout: 24h }}\nroutes:\n  - {{ name: r, match: {{ paths: [/] }}, plugins: {{ respond: {{ status: 200, body: ok }} }} }}\n# {}\n",
        up.local_addr().expect("addr")
    );
    let gw = common::spawn_bin(&yaml);
    let mut s = std::net::TcpStream::connect(gw.addr).expect("connect");
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out:?}");
    gw.signal("TERM");
    let mut gw = gw;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = gw.child.try_wait().expect("wait") {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Item 8: endless files
// ---------------------------------------------------------------------------------------------

#[test]
fn an_endless_config_file_is_refused_at_the_size_cap_in_bounded_memory() {
    // 2 GiB of address space: far more than the gateway needs, far less than reading
    // /dev/zero to its end.
    for cmd in ["validate", "run"] {
        let r = run_limited("ulimit -v 2097152;", &[cmd, "-c", "/dev/zero"]);
        assert_eq!(r.code, Some(1), "{cmd}: {}", r.both());
        assert!(
            r.stderr.contains("larger than") && r.stderr.contains("MiB"),
            "{cmd}: {}",
            r.both()
        );
    }
}

#[test]
fn a_config_just_over_the_cap_is_refused_and_one_under_it_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = config(
        "routes:\n  - { name: r, match: { paths: [/] }, plugins: { respond: { status: 200 } } }\n",
    );
    let cap = frontdesk::config::MAX_CONFIG_SIZE;
    // Comments pad the file to exactly the cap: accepted.
    let mut text = head.clone();
    while text.len() < cap {
        let left = cap - text.len();
        let line = "#".repeat(left.min(1000) - 1) + "\n";
        text.push_str(&line[..left.min(line.len())]);
    }
    assert_eq!(text.len(), cap);
    let file = write(dir.path(), &text);
    let v = run_cli(&["validate", "-c", &file]);
    assert_eq!(v.code, Some(0), "{}", v.both());
    text.push('\n');
    let file = write(dir.path(), &text);
    let v = run_cli(&["validate", "-c", &file]);
    assert_eq!(v.code, Some(1), "{}", v.both());
    assert!(v.stderr.contains("larger than"), "{}", v.both());
}

// ---------------------------------------------------------------------------------------------
// Item 14: what run needs, validate checks
// ---------------------------------------------------------------------------------------------

#[test]
fn an_access_log_in_a_missing_directory_is_refused_by_validate_and_run_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("no-such-dir").join("access.log");
    let yaml = config(&format!(
        "routes:\n  - {{ name: r, match: {{ paths: [/] }}, plugins: {{ respond: {{ status: 200 }} }} }}\nobservability:\n  access_log: {{ output: \"{}\" }}\n",
        log.display()
    ));
    let file = write(dir.path(), &yaml);
    for cmd in ["validate", "run"] {
        let r = run_cli(&[cmd, "-c", &file]);
        assert_eq!(r.code, Some(1), "{cmd}: {}", r.both());
        assert!(
            r.stderr
                .contains("error: observability.access_log.output: "),
            "{cmd}: {}",
            r.both()
        );
        assert!(
            r.stderr.contains(&log.display().to_string()),
            "{cmd} names no path: {}",
            r.both()
        );
        assert!(
            !r.stderr.contains("observability: access_log"),
            "{cmd}: {}",
            r.both()
        );
    }
}

#[tokio::test]
async fn a_relative_access_log_path_in_an_existing_directory_is_accepted_and_written() {
    let up = upstream(|_req| async { Response::new(full("hi")) }).await;
    let yaml = config(&format!(
        "upstreams:\n  api: {{ targets: [{{ url: \"http://{}\" }}] }}\nroutes:\n  - {{ name: r, match: {{ paths: [/] }}, upstream: api }}\nobservability:\n  access_log: {{ output: access.log }}\n",
        up.addr
    ));
    let gw = gateway(&yaml).await;
    let resp = client().get(gw.url("/x")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    gw.gw.shutdown().await;
    let log = std::fs::read_to_string(gw.dir.path().join("access.log")).expect("log written");
    assert!(log.contains("\"/x\""), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Item 15: one pass, each once
// ---------------------------------------------------------------------------------------------

#[test]
fn unrelated_errors_and_missing_tls_files_are_reported_in_one_pass_each_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "version: 1
listeners:
  - name: public
    address: 127.0.0.1:0
    tls:
      certificates:
        - { cert: missing-cert.pem, key: missing-key.pem }
upstreams:
  api:
    targets: [{ url: \"http://127.0.0.1:1\", weight: lots }]
routes:
  - { name: r, match: { paths: [/] }, upstream: api }
  - { name: r, match: { paths: [/x] }, upstream: api }
";
    let file = write(dir.path(), yaml);
    let r = run_cli(&["validate", "-c", &file]);
    assert_eq!(r.code, Some(1), "{}", r.both());
    let errs: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    for needle in [
        "upstreams.api.targets[0].weight",
        "routes[1].name: duplicate route name",
        "listeners[0].tls.certificates[0].cert",
        "missing-cert.pem",
        "listeners[0].tls.certificates[0].key",
    ] {
        assert!(
            errs.iter().any(|l| l.contains(needle)),
            "{needle} missing:\n{}",
            r.both()
        );
    }
    assert!(!r.stderr.contains("unknown upstream"), "{}", r.both());
    let mut unique = errs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), errs.len(), "repeated errors:\n{}", r.both());
    for internal in ["u32", "DuplicateKeyPolicy", "Options"] {
        assert!(!r.stderr.contains(internal), "{}", r.both());
    }
}

// ---------------------------------------------------------------------------------------------
// Items 17 and 18: warnings
// ---------------------------------------------------------------------------------------------

#[test]
fn fields_without_effect_and_short_secrets_are_warnings_that_validate_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = config(
        "upstreams:
  api:
    targets: [{ url: \"http://127.0.0.1:1\" }]
    hash_key: header:x-user
    tls: { server_name: api.internal }
routes:
  - name: r
    match: { paths: [/] }
    upstream: api
    plugins:
      jwt:
        issuers: [{ issuer: internal, secret: too-short, algorithms: [HS256] }]
",
    );
    let file = write(dir.path(), &yaml);
    let r = run_cli(&["validate", "-c", &file]);
    assert_eq!(r.code, Some(0), "{}", r.both());
    for needle in [
        "warning: upstreams.api.hash_key: ",
        "warning: upstreams.api.tls: ",
        "warning: routes[0].plugins.jwt.issuers[0].secret: ",
    ] {
        assert!(r.stderr.contains(needle), "{needle}:\n{}", r.both());
    }
    assert!(!r.stderr.contains("error"), "{}", r.both());
    // `run` starts, and logs the same warnings before it listens.
    let log = run_until_listening(&file);
    for needle in [
        "warning: upstreams.api.hash_key: ",
        "warning: upstreams.api.tls: ",
        "warning: routes[0].plugins.jwt.issuers[0].secret: ",
    ] {
        assert!(log.contains(needle), "{needle}:\n{log}");
    }
}

/// Starts `frontdesk run -c file`, returns its stderr up to the `listening` line, and kills it.
fn run_until_listening(file: &str) -> String {
    use std::io::BufRead;
    let mut child = Command::new(bin())
        .args(["run", "-c", file])
        .env("FRONTDESK_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn frontdesk");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("listening") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("listening"), "did not start:\n{log}");
    log
}

#[tokio::test]
async fn an_upstream_with_an_unused_hash_key_and_tls_serves() {
    let up = upstream(|_req| async { Response::new(full("hi")) }).await;
    let yaml = config(&format!(
        "upstreams:\n  api: {{ targets: [{{ url: \"http://{}\" }}], hash_key: client_ip, tls: {{ server_name: x }} }}\nroutes:\n  - {{ name: r, match: {{ paths: [/] }}, upstream: api }}\n",
        up.addr
    ));
    let gw = gateway(&yaml).await;
    let resp = client().get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "hi");
}

// ---------------------------------------------------------------------------------------------
// Item 22: retry_on
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_on_retries_like_on_did() {
    for key in ["retry_on", "on"] {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let up = upstream(move |_req| {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let mut r = Response::new(full(if n == 0 { "busy" } else { "ok" }));
                if n == 0 {
                    *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                }
                r
            }
        })
        .await;
        let yaml = config(&format!(
            "upstreams:\n  api:\n    targets: [{{ url: \"http://{}\" }}]\n    retries: {{ attempts: 1, {key}: [503], backoff: 0s }}\nroutes:\n  - {{ name: r, match: {{ paths: [/] }}, upstream: api }}\n",
            up.addr
        ));
        let gw = gateway(&yaml).await;
        let resp = client().get(gw.url("/")).send().await.expect("send");
        assert_eq!(resp.status(), 200, "{key}");
        assert_eq!(resp.text().await.expect("body"), "ok", "{key}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2, "{key}");
    }
}

#[test]
fn urls_that_run_cannot_use_are_refused_by_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let respond =
        "routes:\n  - { name: r, match: { paths: [/] }, plugins: { respond: { status: 200 } } }\n";
    let cases = [
        (
            config(&format!("{respond}redis: {{ url: \"http//nope\" }}\n")),
            "error: redis.url: ",
        ),
        (
            config(&format!(
                "{respond}redis: {{ cluster: [\"redis://127.0.0.1:7000\", \"127.0.0.1:7001\"] }}\n"
            )),
            "error: redis.cluster[1]: ",
        ),
        (
            config(&format!(
                "{respond}observability:\n  tracing: {{ otlp_endpoint: \"http://exa mple:4317\" }}\n"
            )),
            "error: observability.tracing.otlp_endpoint: ",
        ),
        (
            config(&format!(
                "{respond}observability:\n  tracing: {{ otlp_endpoint: \"http://\" }}\n"
            )),
            "error: observability.tracing.otlp_endpoint: ",
        ),
    ];
    for (yaml, want) in cases {
        let file = write(dir.path(), &yaml);
        let v = run_cli(&["validate", "-c", &file]);
        assert_eq!(v.code, Some(1), "{want}: {}", v.both());
        assert!(v.stderr.contains(want), "{want}: {}", v.both());
    }
}

/// Checks that only compiling the config finds (networks, plugin settings) are reported in the
/// same pass as the errors validation finds, at paths of the file as written.
#[test]
fn errors_found_by_compiling_come_in_the_same_pass_as_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "version: 1
listeners:
  - { name: broken, address: 127.0.0.1:0, limits: { max_headers: lots } }
  - name: public
    address: 127.0.0.1:0
    trusted_proxies: [\"10.0.0.0/33\"]
routes:
  - { name: r, match: { paths: [/] }, plugins: { respond: { status: 200 } } }
  - { name: r, match: { paths: [/a] }, plugins: { respond: { status: 200 } } }
  - { name: gone, match: 7 }
  - name: limited
    match: { paths: [/b] }
    plugins:
      respond: { status: 200 }
      rate_limit: { limits: [{ name: l, key: client_ip, rate: 0, per: 1s }] }
";
    let file = write(dir.path(), yaml);
    let r = run_cli(&["validate", "-c", &file]);
    assert_eq!(r.code, Some(1), "{}", r.both());
    let errs: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    for needle in [
        "error: listeners[0].limits.max_headers: ",
        "error: routes[1].name: duplicate route name",
        "error: routes[2].match: ",
        // Found by compiling, at the positions in the file (listener 1, route 3), not in the
        // list of what parsed.
        "error: listeners[1].trusted_proxies[0]: ",
        "error: routes[3].plugins.rate_limit",
    ] {
        assert!(
            errs.iter().any(|l| l.starts_with(needle)),
            "{needle} missing:\n{}",
            r.both()
        );
    }
    let mut unique = errs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), errs.len(), "repeated:\n{}", r.both());
    assert_eq!(errs.len(), 5, "{}", r.both());
}
