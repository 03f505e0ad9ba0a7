//! `frontdesk run --pid-file` and `frontdesk reload`: one of two instances on one machine is reloaded
//! by name, a stale pid file signals nothing, and the file goes away at exit.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn hello(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("frontdesk.yaml");
    std::fs::write(
        &path,
        config(
            "routes:\n  - name: hello\n    match: { paths: [\"/hello\"] }\n    plugins: { respond: { body: hi } }\n",
        ),
    )
    .expect("write config");
    path
}

fn start(dir: &Path) -> (Spawned, std::path::PathBuf) {
    let pid_file = dir.join("frontdesk.pid");
    let g = spawn_at_with(
        &hello(dir),
        &[OsStr::new("--pid-file"), pid_file.as_os_str()],
    );
    (g, pid_file)
}

fn reload(pid_file: &Path) -> std::process::Output {
    Command::new(bin())
        .args(["reload", "--pid-file"])
        .arg(pid_file)
        .stdin(Stdio::null())
        .output()
        .expect("run frontdesk reload")
}

/// Waits for the pid file to appear (the listener logs `listening` a moment before it is written).
fn wait_pid_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no pid file at {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a log line containing `needle` on `log`.
fn wait_log(log: &std::sync::mpsc::Receiver<String>, needle: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn reload_signals_only_the_instance_named_by_its_pid_file() {
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (mut a, pid_a) = start(da.path());
    let (mut b, pid_b) = start(db.path());
    // The file holds the pid, written once the gateway has started (after its signal handlers).
    assert_eq!(wait_pid_file(&pid_a), a.child.id().to_string());
    assert_eq!(wait_pid_file(&pid_b), b.child.id().to_string());

    let out = reload(&pid_a);
    assert!(
        out.status.success(),
        "reload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_log(&a.log, "generation=2", Duration::from_secs(10)),
        "instance A did not reload"
    );
    assert!(
        !wait_log(&b.log, "generation=2", Duration::from_secs(1)),
        "instance B reloaded too"
    );
    assert!(a.child.try_wait().expect("try_wait").is_none(), "A exited");

    // A clean stop removes the pid file.
    let ok = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let status = a.child.wait().expect("wait A");
    assert!(status.success(), "A exited with {status}");
    assert!(!pid_a.exists(), "the pid file is still there after exit");
    let _ = b.child.kill();
    let _ = b.child.wait();
}

#[test]
fn a_stale_pid_file_signals_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    // A live process that is not frontdesk, as after pid reuse.
    let mut other = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid_file = dir.path().join("stale.pid");
    std::fs::write(&pid_file, format!("{}\n", other.id())).expect("write");
    let out = reload(&pid_file);
    assert!(
        !out.status.success(),
        "reload signalled a non-frontdesk process"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not frontdesk"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        other.try_wait().expect("try_wait").is_none(),
        "the other process was signalled"
    );
    let _ = other.kill();
    let _ = other.wait();

    // Garbage and a missing file are errors too, never a signal to pid 0 or -1.
    std::fs::write(&pid_file, "-1\n").expect("write");
    assert!(!reload(&pid_file).status.success());
    std::fs::write(&pid_file, "0\n").expect("write");
    assert!(!reload(&pid_file).status.success());
    assert!(!reload(&dir.path().join("missing.pid")).status.success());
}
