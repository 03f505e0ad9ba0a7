//! The access log: one JSON line per request, formatted and written by a dedicated thread.
//!
//! Requests hand their finished record to a bounded channel and never wait: when the writer
//! falls behind (a slow disk, a blocked stdout) lines are dropped and counted in
//! `frontdesk_access_log_dropped_total`. Secrets never reach it: no headers are logged, and the
//! path is logged without its query (where API keys may travel).

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use frontdesk_config::AccessLogConfig;
use serde_json::{json, Value};

use super::metrics::Metrics;
use super::Exchange;

/// Lines waiting for the writer at most; beyond this they are dropped.
const QUEUE: usize = 16 * 1024;

/// A finished exchange on its way to the writer.
struct Line {
    ex: Box<Exchange>,
    bytes_out: u64,
    duration: Duration,
}

/// A running access log (its writer thread ends when the last handle is dropped).
pub struct AccessLog {
    cfg: AccessLogConfig,
    tx: SyncSender<Line>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("cfg", &self.cfg).finish()
    }
}

impl AccessLog {
    /// Opens the output (a file is created or appended to) and starts the writer thread.
    pub fn start(cfg: &AccessLogConfig, metrics: Arc<Metrics>) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match cfg.output.as_str() {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(&rx, out))?;
        Ok(AccessLog {
            cfg: cfg.clone(),
            tx,
            metrics,
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &AccessLogConfig {
        &self.cfg
    }

    /// Queues the line of a finished exchange; never blocks.
    pub fn write(&self, ex: Box<Exchange>, bytes_out: u64, duration: Duration) {
        let line = Line {
            ex,
            bytes_out,
            duration,
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped();
            }
        }
    }
}

fn write_loop(rx: &Receiver<Line>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write what is queued, then flush once: one write call per burst, not per line.
        while let Some(line) = next {
            let mut text = serde_json::to_vec(&render(&line)).unwrap_or_default();
            text.push(b'\n');
            if let Err(e) = out.write_all(&text) {
                if !failed {
                    tracing::error!(error = %e, "cannot write the access log");
                    failed = true;
                }
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_ok() {
            failed = false;
        }
    }
    let _ = out.flush();
}

/// The JSON object of one line. Keys are documented in docs/observability.md.
fn render(line: &Line) -> Value {
    let ex = &line.ex;
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    json!({
        "ts": rfc3339(ex.ts),
        "request_id": ex.request_id.to_str().unwrap_or(""),
        "trace_id": ex.trace().map(super::trace::TraceContext::trace_id_hex),
        "listener": &*ex.listener,
        "route": ex.route.as_deref(),
        "method": ex.method.as_str(),
        "path": ex.path.as_deref(),
        "status": ex.status,
        "bytes_in": ex.bytes_in.as_ref().map_or(0, |b| b.load(std::sync::atomic::Ordering::Relaxed)),
        "bytes_out": line.bytes_out,
        "client_ip": ex.client_ip.map(|ip| ip.to_string()),
        "consumer": ex.consumer.as_deref(),
        "upstream": ex.upstream.as_deref(),
        "upstream_target": ex.call.target.as_deref(),
        "duration_ms": ms(line.duration),
        "upstream_duration_ms": ex.call.duration.map(ms),
        "error": ex.error.map(crate::error::ErrorKind::as_str),
    })
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

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_996_800_123);
        assert_eq!(super::rfc3339(t), "2026-11-30T00:00:00.123Z");
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
