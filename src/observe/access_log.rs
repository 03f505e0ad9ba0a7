//! The access log: one JSON line per request, rendered on the thread that finished the request
//! and written by a dedicated thread.
//!
//! A runtime worker keeps the lines it renders in a batch of its own (a thread-local buffer) and
//! hands the batch over as one chunk when it holds [`CHUNK`] bytes, when its first line is
//! [`MAX_AGE`] old, or when the worker parks (goes idle): the runtime calls [`thread_parks`]. So
//! the record of a request never crosses threads (it is freed where it was allocated) and the
//! queue is touched once per chunk, not per line. A thread that never parks (any thread of a
//! runtime without the hook: tests, tools, blocking threads) hands each line over at once.
//!
//! Requests never wait on the writer: when it falls behind (a slow disk, a blocked stdout) chunks
//! are dropped and their lines counted in `frontdesk_access_log_dropped_total`. Secrets never
//! reach it: no headers are logged, and the path is logged without its query (where API keys
//! may travel).

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use frontdesk_config::AccessLogConfig;

use super::metrics::Metrics;
use super::Exchange;

/// Chunks waiting for the writer at most; beyond this they are dropped. Full chunks are
/// [`CHUNK`] bytes and partial ones exactly their lines, so a writer that stalls holds at most
/// ~9 MiB of lines.
const QUEUE: usize = 1024;

/// A batch is handed over once it holds this many bytes (about 30 lines).
pub const CHUNK: usize = 8 * 1024;

/// A batch is handed over, at its next line, once its first line is this old; a worker that
/// goes idle hands it over at once.
pub const MAX_AGE: Duration = Duration::from_millis(20);

/// What the writer receives: rendered lines, and flush requests (acknowledged once every chunk
/// queued before them is written).
enum Msg {
    Chunk(Vec<u8>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// One access log's queue, shared by its handle and the batches holding its lines.
struct Sink {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
    /// Threads holding a batch of this log's lines not yet handed over (a shutdown waits for
    /// none).
    holding: AtomicUsize,
}

impl Sink {
    /// Queues a chunk of `lines` lines; never blocks.
    fn send(&self, chunk: Vec<u8>, lines: u64) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Chunk(chunk))
        {
            self.metrics.access_log_dropped(lines);
        }
    }
}

/// A running access log (its writer thread ends when the last handle, and the last batch
/// holding its lines, are gone).
pub struct AccessLog {
    cfg: AccessLogConfig,
    sink: Arc<Sink>,
    /// Asks the writer to reopen its file before the next write (SIGUSR1).
    reopen: Arc<AtomicBool>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("cfg", &self.cfg).finish()
    }
}

impl AccessLog {
    /// Opens the output (a file is created or appended to) and starts the writer thread.
    pub fn start(cfg: &AccessLogConfig, metrics: Arc<Metrics>) -> std::io::Result<AccessLog> {
        let out = open(&cfg.output)?;
        let (tx, rx) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let output = cfg.output.clone();
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(&rx, out, &output, &flag))?;
        Ok(AccessLog {
            cfg: cfg.clone(),
            sink: Arc::new(Sink {
                tx,
                metrics,
                holding: AtomicUsize::new(0),
            }),
            reopen,
        })
    }

    /// Waits, at most `wait`, until every line rendered so far is written and flushed
    /// (shutdown: the process must not exit with lines still queued). Lines still in a worker's
    /// batch are waited for: the worker hands them over when it goes idle.
    pub fn flush(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while self.sink.holding.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let (ack, done) = std::sync::mpsc::channel();
        let left = deadline.saturating_duration_since(Instant::now());
        if send_within(&self.sink.tx, Msg::Flush(ack), left) {
            let _ = done.recv_timeout(left);
        }
    }

    /// Makes the writer reopen a file output before its next write, so a rotated file (renamed
    /// away) is replaced by a new one at the configured path.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// The settings it runs with.
    pub fn config(&self) -> &AccessLogConfig {
        &self.cfg
    }

    /// Renders the line of a finished exchange into this thread's batch (or, on a thread that
    /// does not batch, queues it at once); never blocks.
    pub fn write(&self, ex: Box<Exchange>, bytes_out: u64, duration: Duration) {
        LOCAL.with(|local| {
            let Ok(mut local) = local.try_borrow_mut() else {
                // Only reachable if rendering re-entered the log; never lose the line silently.
                self.sink.metrics.access_log_dropped(1);
                return;
            };
            let local = &mut *local;
            if !local.parks {
                let mut line = Vec::with_capacity(384);
                local.renderer.render(&ex, bytes_out, duration, &mut line);
                self.sink.send(line, 1);
                return;
            }
            if local
                .batch
                .as_ref()
                .is_some_and(|b| !Arc::ptr_eq(&b.sink, &self.sink))
            {
                // The log was replaced (a reload): the old one gets its lines first.
                local.hand_over();
            }
            let now = crate::clock::now();
            let batch = local.batch.get_or_insert_with(|| Batch {
                sink: self.sink.clone(),
                lines: 0,
                first: now,
            });
            if batch.lines == 0 {
                batch.first = now;
                batch.sink.holding.fetch_add(1, Ordering::AcqRel);
            }
            if local.buf.capacity() == 0 {
                local.buf.reserve_exact(CHUNK + 512);
            }
            local
                .renderer
                .render(&ex, bytes_out, duration, &mut local.buf);
            batch.lines += 1;
            if local.buf.len() >= CHUNK || now.saturating_duration_since(batch.first) >= MAX_AGE {
                local.send_batch();
            }
        });
    }
}

/// The lines a worker rendered and has not handed over yet (in its [`Local::buf`]).
struct Batch {
    sink: Arc<Sink>,
    lines: u64,
    /// When its first line was rendered.
    first: Instant,
}

/// This thread's part of the access log.
struct Local {
    /// The runtime parks this thread when it is idle ([`thread_parks`] was called): it may
    /// batch, as the park hands the batch over.
    parks: bool,
    batch: Option<Batch>,
    /// The batch's rendered lines; kept (with its capacity) from batch to batch.
    buf: Vec<u8>,
    renderer: Renderer,
}

impl Local {
    /// Hands the batch's lines over, keeping the batch for more: a full buffer as it is (a
    /// fresh one takes its place), a partial one as an exact-size copy (the buffer stays, and a
    /// queue of small batches holds no unused capacity).
    fn send_batch(&mut self) {
        let Some(b) = &mut self.batch else { return };
        if b.lines == 0 {
            return;
        }
        let chunk = if self.buf.len() >= CHUNK {
            std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 512))
        } else {
            let exact = self.buf.clone();
            self.buf.clear();
            exact
        };
        b.sink.send(chunk, b.lines);
        b.lines = 0;
        b.sink.holding.fetch_sub(1, Ordering::AcqRel);
    }

    /// Hands the batch's lines over and lets go of its log (so a replaced log's writer can end).
    fn hand_over(&mut self) {
        self.send_batch();
        self.batch = None;
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // The thread ends (a runtime shutting down): its lines still go out.
        self.hand_over();
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local {
            parks: false,
            batch: None,
            buf: Vec::new(),
            renderer: Renderer::new(),
        })
    };
}

/// The runtime's hook for a worker about to park (`on_thread_park`): hands over the lines this
/// thread has batched, and from now on lets it batch.
pub fn thread_parks() {
    // A destroyed thread-local (the thread is ending) has nothing left to hand over.
    let _ = LOCAL.try_with(|local| {
        if let Ok(mut local) = local.try_borrow_mut() {
            local.parks = true;
            local.hand_over();
        }
    });
}

/// How long the writer sleeps when the queue is empty. It never blocks on the queue: a blocked
/// receiver would make every send a wake-up (a futex call and a context switch), which
/// measured as more than half the cost of a request (bench/observe.sh). Lines reach the output
/// at most this late after they are handed over.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// The output named by `access_log.output`: stdout, stderr, or a file opened for appending.
fn open(output: &str) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match output {
        "stdout" => Box::new(std::io::stdout()),
        "stderr" => Box::new(std::io::stderr()),
        path => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    })
}

/// Enqueues `msg`, waiting at most `wait` for room (`SyncSender::send_timeout` is not stable).
fn send_within(tx: &SyncSender<Msg>, mut msg: Msg, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match tx.try_send(msg) {
            Ok(()) => return true,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TrySendError::Full(_)) => return false,
        }
    }
}

fn write_loop(rx: &Receiver<Msg>, out: Box<dyn Write + Send>, output: &str, reopen: &AtomicBool) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut failed = false;
    let reopen_if_asked = |out: &mut std::io::BufWriter<Box<dyn Write + Send>>| {
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = out.flush();
            match open(output) {
                Ok(new) => *out = std::io::BufWriter::with_capacity(64 * 1024, new),
                Err(e) => tracing::error!(error = %e, output, "cannot reopen the access log"),
            }
        }
    };
    loop {
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Flush(ack)) => {
                    if out.flush().is_ok() {
                        failed = false;
                    }
                    let _ = ack.send(());
                }
                Ok(Msg::Chunk(chunk)) => {
                    // Checked per chunk: lines handed over after the signal go to the new file.
                    reopen_if_asked(&mut out);
                    if let Err(e) = out.write_all(&chunk) {
                        if !failed {
                            tracing::error!(error = %e, "cannot write the access log");
                            failed = true;
                        }
                    }
                    wrote = true;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        // One flush per burst, not per line.
        if wrote && out.flush().is_ok() {
            failed = false;
        }
        reopen_if_asked(&mut out);
        std::thread::sleep(IDLE_WAIT);
    }
}

/// Writes lines by hand rather than through serde: the line's shape is fixed, and serde_json's
/// derived serializer cost about 5,000 instructions per line (bench/callgrind.sh with an access
/// log), more than half a proxied request. Strings that may carry client bytes are escaped.
struct Renderer {
    /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS` (timestamps change second rarely
    /// relative to lines).
    second: u64,
    second_text: String,
}

impl Renderer {
    const fn new() -> Self {
        Renderer {
            second: u64::MAX,
            second_text: String::new(),
        }
    }

    /// Appends the JSON line of `ex` (with its newline) to `buf`: `bytes_out` body bytes sent,
    /// `duration` from its start to its end. Keys are documented in docs/observability.md.
    fn render(&mut self, ex: &Exchange, bytes_out: u64, duration: Duration, buf: &mut Vec<u8>) {
        let since = ex.ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second {
            self.second = since.as_secs();
            let t = UNIX_EPOCH + Duration::from_secs(self.second);
            let mut text = rfc3339(t);
            text.truncate(19);
            self.second_text = text;
        }
        buf.extend_from_slice(b"{\"ts\":\"");
        buf.extend_from_slice(self.second_text.as_bytes());
        buf.push(b'.');
        push_padded3(buf, since.subsec_millis());
        buf.extend_from_slice(b"Z\",\"request_id\":");
        // UTF-8 checked a word at a time; `push_str` escapes what JSON needs.
        push_str(buf, std::str::from_utf8(ex.request_id.as_bytes()).ok());
        buf.extend_from_slice(b",\"trace_id\":");
        push_str(
            buf,
            ex.trace()
                .map(super::trace::TraceContext::trace_id_hex)
                .as_deref(),
        );
        buf.extend_from_slice(b",\"listener\":");
        push_str(buf, Some(&ex.listener));
        buf.extend_from_slice(b",\"route\":");
        push_str(buf, ex.route_name().map(|r| &**r));
        if let Some(p) = ex.route.as_ref().and_then(|r| r.profile.as_deref()) {
            buf.extend_from_slice(b",\"profile\":");
            push_str(buf, Some(p));
        }
        buf.extend_from_slice(b",\"method\":");
        push_str(buf, Some(ex.method.as_str()));
        buf.extend_from_slice(b",\"path\":");
        push_str(buf, ex.path());
        buf.extend_from_slice(b",\"status\":");
        push_u64(buf, u64::from(ex.status));
        buf.extend_from_slice(b",\"bytes_in\":");
        let bytes_in = ex
            .bytes_in
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed));
        push_u64(buf, bytes_in);
        buf.extend_from_slice(b",\"bytes_out\":");
        push_u64(buf, bytes_out);
        buf.extend_from_slice(b",\"client_ip\":");
        match ex.client_ip {
            Some(std::net::IpAddr::V4(v4)) => {
                // `Display` for addresses goes through the formatting machinery: ~1,000
                // instructions, for four numbers.
                buf.push(b'"');
                for (i, o) in v4.octets().iter().enumerate() {
                    if i > 0 {
                        buf.push(b'.');
                    }
                    push_u64(buf, u64::from(*o));
                }
                buf.push(b'"');
            }
            Some(ip) => {
                buf.push(b'"');
                let _ = write!(buf, "{ip}");
                buf.push(b'"');
            }
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"consumer\":");
        push_str(buf, ex.consumer.as_deref());
        buf.extend_from_slice(if ex.consumer_anonymous {
            b",\"consumer_anonymous\":true"
        } else {
            b",\"consumer_anonymous\":false"
        });
        if let Some(cs) = ex.cache_status.as_ref().and_then(|v| v.to_str().ok()) {
            buf.extend_from_slice(b",\"cache_status\":");
            push_str(buf, Some(cs));
        }
        buf.extend_from_slice(b",\"upstream\":");
        push_str(buf, ex.upstream.as_deref());
        buf.extend_from_slice(b",\"upstream_target\":");
        push_str(buf, ex.call.target.as_deref());
        buf.extend_from_slice(b",\"duration_ms\":");
        push_ms(buf, duration);
        buf.extend_from_slice(b",\"upstream_duration_ms\":");
        match ex.call.duration {
            Some(d) => push_ms(buf, d),
            None => buf.extend_from_slice(b"null"),
        }
        buf.extend_from_slice(b",\"error\":");
        push_str(buf, ex.error.map(crate::error::ErrorKind::as_str));
        buf.extend_from_slice(b"}\n");
    }
}

/// A JSON string (escaped when it holds a quote, a backslash or a control character), or `null`.
fn push_str(buf: &mut Vec<u8>, s: Option<&str>) {
    let Some(s) = s else {
        buf.extend_from_slice(b"null");
        return;
    };
    if needs_escape(s.as_bytes()) {
        // Rare (request ids and paths come from clients): the full escaper.
        let _ = serde_json::to_writer(&mut *buf, s);
    } else {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

/// Whether `s` holds a byte JSON must escape: a control character, `"` or `\`. Eight bytes per
/// step (the classic "has a zero byte" word tricks, exact as a yes/no): a line holds ~70 bytes
/// of strings, which the byte-by-byte check took ~5 instructions each to scan.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `x` below `n` (n <= 0x80) sets its high bit in the result; bytes >= 0x80 never do.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let zero = |x: u64| below(x, 1);
    let special = |x: u64| {
        below(x, 0x20) | zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')))
            != 0
    };
    let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        if special(word(w)) {
            return true;
        }
    }
    let rest = words.remainder();
    if rest.is_empty() {
        return false;
    }
    if s.len() >= 8 {
        // The last eight bytes, overlapping the words already checked: a yes/no needs no more.
        return special(word(&s[s.len() - 8..]));
    }
    // A short string (most here): its bytes shifted into a word of letters, with no copy call.
    let mut x = ONES * u64::from(b'a');
    for &b in rest {
        x = (x << 8) | u64::from(b);
    }
    special(x)
}

fn push_u64(buf: &mut Vec<u8>, n: u64) {
    // Most numbers of a line are below 1,000 (status, address octets, small byte counts and
    // milliseconds): their digits pushed one by one, without a formatter and a copy call.
    if n < 1000 {
        let n = n as u32; // below 1,000
        if n >= 100 {
            buf.push(b'0' + (n / 100) as u8);
        }
        if n >= 10 {
            buf.push(b'0' + (n / 10 % 10) as u8);
        }
        buf.push(b'0' + (n % 10) as u8);
        return;
    }
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_padded3(buf: &mut Vec<u8>, n: u32) {
    let n = n.min(999);
    buf.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// Milliseconds with microsecond precision, as a JSON number (`2.114`).
fn push_ms(buf: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(buf, us / 1000);
    buf.push(b'.');
    push_padded3(buf, (us % 1000) as u32);
}

/// `t` in RFC 3339, UTC, with milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use std::sync::atomic::Ordering;

    use super::super::metrics::Metrics;
    use super::super::{CallReport, Exchange};
    use super::{AccessLog, Renderer, CHUNK, MAX_AGE};

    fn exchange(path: &str, request_id: &'static str) -> Box<Exchange> {
        Box::new(Exchange {
            started: std::time::Instant::now(),
            ts: UNIX_EPOCH + Duration::from_millis(1_795_996_800_007),
            listener: std::sync::Arc::from("public"),
            method: http::Method::GET,
            uri: Some(path.parse().expect("a request target")),
            host: None,
            version: http::Version::HTTP_11,
            tls: false,
            request_id: http::HeaderValue::from_static(request_id),
            route: None,
            client_ip: Some([10, 0, 0, 1].into()),
            consumer: None,
            consumer_anonymous: false,
            cache_status: None,
            upstream: None,
            call: CallReport {
                duration: Some(Duration::from_micros(1_902)),
                ..CallReport::default()
            },
            side_calls: Vec::new(),
            call_spans: Vec::new(),
            error: Some(crate::error::ErrorKind::NoRoute),
            status: 404,
            bytes_in: None,
            _active: None,
        })
    }

    #[test]
    fn lines_are_json_and_escape_what_clients_send() {
        let mut r = Renderer::new();
        let mut buf = Vec::new();
        for (path, id) in [("/plain", "abc"), ("/a\"b\\c", "id\"x")] {
            buf.clear();
            r.render(
                &exchange(path, id),
                311,
                Duration::from_micros(2_114),
                &mut buf,
            );
            assert_eq!(buf.last(), Some(&b'\n'));
            let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
            assert_eq!(v["path"], path);
            assert_eq!(v["request_id"], id);
            assert_eq!(v["ts"], "2026-11-30T00:00:00.007Z");
            assert_eq!(v["duration_ms"], 2.114);
            assert_eq!(v["upstream_duration_ms"], 1.902);
            assert_eq!(v["status"], 404);
            assert_eq!(v["bytes_out"], 311);
            assert_eq!(v["client_ip"], "10.0.0.1");
            assert_eq!(v["route"], serde_json::Value::Null);
            assert_eq!(v["error"], "no_route");
        }
    }

    /// A log writing to a file in a fresh directory.
    fn file_log(dir: &std::path::Path, name: &str) -> (AccessLog, std::path::PathBuf) {
        let path = dir.join(name);
        let cfg: frontdesk_config::AccessLogConfig =
            serde_json::from_value(serde_json::json!({ "output": path.to_str().unwrap() }))
                .expect("config");
        let log = AccessLog::start(&cfg, std::sync::Arc::new(Metrics::default())).expect("start");
        (log, path)
    }

    fn lines(path: &std::path::Path) -> usize {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Waits (at most 5 s) until `path` holds `n` lines.
    fn wait_lines(path: &std::path::Path, n: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lines(path) < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        lines(path)
    }

    /// Runs `f` with a log to a fresh file, on a fresh thread (whose thread-local batch state
    /// starts clean), and returns the file's path and its directory.
    fn on_a_fresh_thread(
        f: impl FnOnce(&AccessLog, &std::path::Path) + Send,
    ) -> (std::path::PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = file_log(dir.path(), "a.log");
        std::thread::scope(|s| {
            s.spawn(|| f(&log, &path));
        });
        (path, dir)
    }

    #[test]
    fn a_thread_that_never_parks_hands_each_line_over_at_once() {
        on_a_fresh_thread(|log, path| {
            for i in 0..3 {
                log.write(exchange("/x", "id"), i, Duration::ZERO);
                assert_eq!(wait_lines(path, i as usize + 1), i as usize + 1);
            }
        });
    }

    #[test]
    fn a_parking_worker_batches_until_it_parks_fills_a_chunk_or_its_first_line_ages() {
        let (path, _dir) = on_a_fresh_thread(|log, path| {
            // The runtime's hook marks the thread as one that parks.
            super::thread_parks();
            for _ in 0..3 {
                log.write(exchange("/held", "id"), 1, Duration::ZERO);
            }
            // Three times the writer's idle wait: still held, and waited for by a flush.
            std::thread::sleep(super::IDLE_WAIT * 3);
            assert_eq!(
                lines(path),
                0,
                "lines stay in the batch until it is handed over"
            );
            assert_eq!(log.sink.holding.load(Ordering::Acquire), 1);
            super::thread_parks();
            assert_eq!(wait_lines(path, 3), 3, "parking hands the batch over");
            assert_eq!(log.sink.holding.load(Ordering::Acquire), 0);

            // A full chunk goes without a park.
            let mut n = 3;
            let before = std::fs::metadata(path).unwrap().len();
            while std::fs::metadata(path).unwrap().len() == before {
                log.write(exchange("/full", "id"), 1, Duration::ZERO);
                n += 1;
                assert!(
                    n < 3 + 2 * CHUNK / 100,
                    "a chunk's worth of lines was never sent"
                );
                if n % 16 == 0 {
                    std::thread::sleep(super::IDLE_WAIT * 2);
                }
            }
            let sent = lines(path);
            assert!(sent > 3 + 10, "the chunk held many lines ({sent})");
            super::thread_parks();
            assert_eq!(wait_lines(path, n), n);

            // An old first line: the next line hands both over.
            log.write(exchange("/old", "id"), 1, Duration::ZERO);
            std::thread::sleep(MAX_AGE + Duration::from_millis(5));
            log.write(exchange("/old", "id"), 1, Duration::ZERO);
            assert_eq!(wait_lines(path, n + 2), n + 2);
            super::thread_parks();
        });
        let text = std::fs::read_to_string(&path).unwrap();
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).expect("whole JSON lines");
        }
    }

    #[test]
    fn a_flush_waits_for_batches_and_a_replaced_log_gets_its_own_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (old, old_path) = file_log(dir.path(), "old.log");
        let (new, new_path) = file_log(dir.path(), "new.log");
        let parked = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                super::thread_parks();
                old.write(exchange("/old", "id"), 1, Duration::ZERO);
                // The log is replaced (a reload): the old one's batch goes to the old file.
                new.write(exchange("/new", "id"), 1, Duration::ZERO);
                assert_eq!(wait_lines(&old_path, 1), 1);
                assert_eq!(lines(&new_path), 0);
                std::thread::sleep(Duration::from_millis(100));
                parked.store(true, Ordering::SeqCst);
                super::thread_parks();
            });
            // A shutdown's flush, while the worker still holds a line: it returns only once
            // the worker parked and the line is written.
            std::thread::sleep(Duration::from_millis(20));
            new.flush(Duration::from_secs(5));
            assert!(parked.load(Ordering::SeqCst));
            assert_eq!(lines(&new_path), 1, "flushed");
        });
        let old_text = std::fs::read_to_string(&old_path).unwrap();
        assert!(old_text.contains("\"path\":\"/old\""));
        assert!(std::fs::read_to_string(&new_path)
            .unwrap()
            .contains("\"path\":\"/new\""));
    }

    #[test]
    fn a_batch_the_queue_cannot_take_counts_all_its_lines_as_dropped() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let metrics = std::sync::Arc::new(Metrics::default());
        let sink = super::Sink {
            tx,
            metrics: metrics.clone(),
            holding: std::sync::atomic::AtomicUsize::new(0),
        };
        sink.send(b"a\n".to_vec(), 1);
        assert_eq!(metrics.access_log_dropped_total(), 0, "room for one");
        sink.send(b"b\nc\nd\n".to_vec(), 3);
        assert_eq!(
            metrics.access_log_dropped_total(),
            3,
            "a full queue drops the batch"
        );
        drop(rx);
        sink.send(b"e\n".to_vec(), 1);
        assert_eq!(
            metrics.access_log_dropped_total(),
            4,
            "so does a writer that is gone"
        );
    }

    #[test]
    fn numbers_are_written_as_their_decimal_digits() {
        let mut buf = Vec::new();
        for n in (0..20_000u64).chain([u64::from(u32::MAX), u64::MAX - 1, u64::MAX]) {
            buf.clear();
            super::push_u64(&mut buf, n);
            assert_eq!(buf, n.to_string().as_bytes(), "{n}");
        }
    }

    #[test]
    fn the_escape_check_finds_every_byte_json_escapes_at_every_position() {
        let must = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        for len in [1usize, 2, 3, 5, 7, 8, 9, 12, 15, 16, 17, 23] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(
                        super::needs_escape(&s),
                        must(b),
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        // Multi-byte UTF-8 and DEL need no escape; neighbours of a special byte do not hide it.
        assert!(!super::needs_escape(
            "/caf\u{e9}/\u{1F600}\u{7f}-abcdefgh".as_bytes()
        ));
        assert!(super::needs_escape("\u{e9}\u{e9}\u{e9}\"x".as_bytes()));
        assert!(!super::needs_escape(b""));
        // Mixed words (several specials, bytes next to the thresholds), against the plain rule.
        let alphabet = [
            0x00, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0xa2, 0xdc,
            0xff,
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = (seed >> 58) as usize;
            let s: Vec<u8> = (0..len)
                .map(|i| {
                    let r = seed.rotate_left(7 * i as u32) ^ (i as u64).wrapping_mul(0x2545_f491);
                    // Mostly plain letters, so that a special byte is often alone in its word.
                    if r.is_multiple_of(5) {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    } else {
                        b'a' + (r >> 16) as u8 % 26
                    }
                })
                .collect();
            assert_eq!(super::needs_escape(&s), s.iter().any(|&b| must(b)), "{s:?}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_996_800_123);
        assert_eq!(super::rfc3339(t), "2026-11-30T00:00:00.123Z");
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
