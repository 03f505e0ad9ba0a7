//! A real `redis-server` for the shared-limit tests: started on a free port without persistence,
//! and killed, restarted on the same port, or stalled (SIGSTOP) on demand.
//!
//! When `redis-server` is not installed, [`RedisServer::start`] returns `None` and the test
//! should return early (it prints why); with `CI=true` a missing server fails the test instead,
//! so CI never passes by skipping.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or deliberately killed or stalled) `redis-server`.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    stalled: bool,
    /// Extra arguments (used on start; a restart uses them again).
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server --port <free port> --save "" --appendonly no` and waits until it
    /// answers PING. `None` (after printing a skip notice) when the binary is missing outside CI.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// As [`RedisServer::start`], with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
        if !available() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "redis-server is not installed, and CI=true requires the shared-limit tests \
                     to run: install it (apt-get install redis-server; .ci/run does)"
                );
            }
            eprintln!("skipping: redis-server is not installed (set CI=true to make this fail)");
            return None;
        }
        // A freed port can be taken by someone else before redis binds it; try a few.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                child: None,
                stalled: false,
                extra: extra.iter().map(ToString::to_string).collect(),
                dir: tempfile::tempdir().expect("tempdir for redis"),
            };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the server (SIGKILL) and waits for it to exit; its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.stalled {
                self.signal(&c, "CONT");
                self.stalled = false;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a fresh, empty server on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        // The port was just ours; it may take a moment to be bindable again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn stall(&mut self) {
        let c = self.child.as_ref().expect("redis is running");
        self.signal(c, "STOP");
        self.stalled = true;
    }

    /// Lets a stalled server go on (SIGCONT).
    pub fn resume(&mut self) {
        let c = self.child.as_ref().expect("redis is running");
        self.signal(c, "CONT");
        self.stalled = false;
    }

    /// Runs one command on a fresh connection and returns the raw RESP reply.
    pub fn cmd(&self, args: &[&str]) -> String {
        try_cmd(self.addr(), args, Duration::from_secs(5)).expect("redis command")
    }

    fn signal(&self, c: &Child, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), c.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} redis failed");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server exited: {status}"));
            }
            if try_cmd(self.addr(), &["PING"], Duration::from_millis(500))
                .is_ok_and(|r| r.starts_with("+PONG"))
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("redis-server did not answer PING within 10s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node Redis Cluster (primaries only) on free ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three `--cluster-enabled` servers, joins them with `redis-cli --cluster create`, and
    /// waits until every node reports `cluster_state:ok`. `None` as [`RedisServer::start`].
    pub fn start() -> Option<RedisCluster> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let n = RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ])?;
            nodes.push(n);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster never became ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(RedisCluster { nodes })
    }

    /// The seed URLs, for `redis.cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port that was free a moment ago: bind port 0, note it, release it.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Sends one command (RESP array) and reads one reply, or fails within `wait`.
fn try_cmd(addr: SocketAddr, args: &[&str], wait: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, wait)?;
    s.set_read_timeout(Some(wait))?;
    s.set_write_timeout(Some(wait))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Replies used here are short; one line (or a bulk string's two) is the whole of it.
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if complete(&out) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Whether `b` holds one whole simple reply: a line, or a bulk string's header and data.
fn complete(b: &[u8]) -> bool {
    let text = String::from_utf8_lossy(b);
    let Some((first, rest)) = text.split_once("\r\n") else {
        return false;
    };
    match first.strip_prefix('$') {
        Some(len) => match len.parse::<i64>() {
            Ok(n) if n >= 0 => rest.len() >= usize::try_from(n).unwrap_or(0) + 2,
            _ => true,
        },
        None => !first.starts_with('*') || first == "*0" || first == "*-1" || array_done(&text),
    }
}

/// A flat array of bulk strings (KEYS) is complete when every element arrived.
fn array_done(text: &str) -> bool {
    let mut lines = text.split("\r\n");
    let Some(n) = lines
        .next()
        .and_then(|l| l.strip_prefix('*'))
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return true;
    };
    // Header, then `$len` and data per element, then the trailing empty piece.
    text.split("\r\n").count() > 1 + 2 * n
}
