//! The running gateway: owns the live snapshot and the listeners, and is the only place that
//! changes them (start, reload, shutdown).

mod certs;
pub mod reload;
mod signals;
mod watched;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use frontdesk_config::Diagnostic;
use tokio::sync::Mutex;

pub use reload::{load_file, ApplyError, ReloadOutcome};
pub use signals::Signals;

use crate::listener::RunningListener;
use crate::server::Tunnels;
use crate::snapshot::{Live, Snapshot};

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    live: Arc<Live>,
    config_path: PathBuf,
    listeners: Mutex<HashMap<Arc<str>, RunningListener>>,
    tunnels: Arc<Tunnels>,
    /// The file text last applied: a watcher event without a change is a no-op, and
    /// `PUT /config` edits this text.
    last_text: Mutex<reload::Applied>,
    /// Re-reads TLS listeners' certificate files when they change on disk.
    certs: certs::CertWatcher,
    /// Set once every listener of the first config is serving (`/readyz`).
    ready: AtomicBool,
    /// Set when shutdown begins (`/readyz` answers 503 from then on).
    draining: AtomicBool,
    /// The admin listener, when `admin:` was configured at start; stopped last.
    admin: std::sync::Mutex<Option<crate::admin::AdminServer>>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config was refused.
    #[error("invalid config:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<Diagnostic>),
    /// A listener could not bind. The OS error is part of the message, not a separate cause, so
    /// a report of the whole chain names it once.
    #[error("{path}: {error}")]
    Listener {
        /// The field path of the address, `listeners[1].address`.
        path: String,
        /// Why.
        error: crate::listener::ListenerError,
    },
    /// The admin listener could not bind.
    #[error("admin.address: admin listener {addr}: {error}")]
    Admin {
        /// The configured address.
        addr: String,
        /// Why.
        error: std::io::Error,
    },
    /// Other I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Gateway {
    /// Loads `path`, binds every listener and starts serving. Must run inside a tokio runtime.
    pub async fn start(path: &Path) -> Result<Arc<Gateway>, StartError> {
        let (text, loaded) = load_file(path).await.map_err(StartError::Config)?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        // Descriptors by gRPC server reflection are fetched before the (synchronous) build.
        for w in crate::grpc::descriptors::prefetch(&loaded.config).await {
            tracing::warn!("{w}");
        }
        let (snap, warnings) = Snapshot::build(loaded.config, None).map_err(StartError::Config)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        // Every proxy socket is bound before anything serves, so a busy port refuses the start
        // before the admin listener exists (and is reported once, with its field path).
        let mut bound = Vec::with_capacity(snap.listeners.len());
        for (i, spec) in snap.listeners.iter().enumerate() {
            let sock = crate::listener::bind(spec).map_err(|error| StartError::Listener {
                path: format!("listeners[{i}].address"),
                error,
            })?;
            bound.push((spec.clone(), sock));
        }
        snap.start_background();
        // The first load counts as a successful one for the reload-age gauge, as in Prometheus.
        snap.metrics.loaded();
        let live = Arc::new(ArcSwap::from_pointee(snap));
        let gw = Arc::new(Gateway {
            certs: certs::CertWatcher::spawn(live.clone()),
            live,
            config_path: path.to_path_buf(),
            listeners: Mutex::new(HashMap::new()),
            tunnels: Arc::new(Tunnels::default()),
            last_text: Mutex::new(reload::Applied::new(text)),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            admin: std::sync::Mutex::new(None),
        });
        // The admin listener before the proxies serve: it answers `/readyz` with 503 until then.
        let admin = gw.live.load().config.admin.clone();
        if let Some(a) = admin {
            let err = |error| StartError::Admin {
                addr: a.address.clone(),
                error,
            };
            let addr: SocketAddr = a
                .address
                .parse()
                .map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
            let handle: std::sync::Weak<dyn crate::admin::GatewayHandle> = Arc::downgrade(&gw) as _;
            let server = crate::admin::start(addr, handle, a.token.clone())
                .await
                .map_err(err)?;
            tracing::info!(listener = "admin", address = %server.local_addr(), "admin API listening");
            *gw.admin_slot() = Some(server);
        }
        let mut running = gw.listeners.lock().await;
        for (spec, sock) in bound {
            let l = RunningListener::start(sock, spec, gw.live.clone(), gw.tunnels.clone())?;
            tracing::info!(listener = %l.name, address = %l.local, "listening");
            running.insert(l.name.clone(), l);
        }
        drop(running);
        gw.ready.store(true, Ordering::Release);
        Ok(gw)
    }

    fn admin_slot(&self) -> std::sync::MutexGuard<'_, Option<crate::admin::AdminServer>> {
        self.admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The admin listener's bound address, when one runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_slot()
            .as_ref()
            .map(crate::admin::AdminServer::local_addr)
    }

    /// True once the first config is live and every listener serves, until shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The config file this gateway runs (and `PUT /config` writes).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// The bound address of a listener, by name.
    pub async fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.lock().await.get(name).map(|l| l.local)
    }

    /// Re-reads the config file and applies it; on any error the running config keeps serving.
    pub async fn reload(&self) -> Result<ReloadOutcome, Vec<Diagnostic>> {
        reload::apply(self).await
    }

    /// Open tunnels (upgraded connections).
    pub fn open_tunnels(&self) -> usize {
        self.tunnels.count()
    }

    /// Stops every listener and waits up to the drain timeout for requests and tunnels to finish.
    /// The admin listener keeps answering meanwhile (`/readyz` says 503) and stops last.
    pub async fn shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        let drain = self.snapshot().drain_timeout;
        // Saturating: validation bounds the drain timeout, but a deadline must never panic.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(drain)
            .unwrap_or_else(|| now + std::time::Duration::from_secs(365 * 24 * 3600));
        let listeners: Vec<RunningListener> = self
            .listeners
            .lock()
            .await
            .drain()
            .map(|(_, l)| l)
            .collect();
        let stops = listeners.into_iter().map(|l| l.stop(drain));
        futures_join_all(stops).await;
        let _ = tokio::time::timeout_at(deadline, self.tunnels.wait_idle()).await;
        let admin = self.admin_slot().take();
        if let Some(admin) = admin {
            admin.stop().await;
        }
        // The access log's last lines: its writer runs on a thread the process exit would cut.
        let observer = self.snapshot().observer.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            observer.flush_logs(std::time::Duration::from_secs(2));
        });
        let _ = flushed.await;
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP and on changes to the config file.
    pub async fn run_until_signal(self: Arc<Self>, signals: Signals) -> std::io::Result<()> {
        signals::run(self, signals).await
    }
}

/// Awaits all futures concurrently (spawned, so they make progress in parallel).
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}

/// The admin API's narrow handle on the gateway.
#[async_trait::async_trait]
impl crate::admin::GatewayHandle for Gateway {
    fn snapshot(&self) -> Arc<Snapshot> {
        Gateway::snapshot(self)
    }

    fn is_ready(&self) -> bool {
        Gateway::is_ready(self)
    }

    fn is_draining(&self) -> bool {
        Gateway::is_draining(self)
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        Gateway::admin_addr(self)
    }

    async fn applied_text(&self) -> Arc<str> {
        reload::applied_text(self).await
    }

    fn check_text(&self, text: &str) -> Result<Vec<Diagnostic>, Vec<Diagnostic>> {
        reload::check_text(self, text)
    }

    async fn apply_edit(
        &self,
        edit: Box<crate::admin::Edit>,
    ) -> Result<crate::admin::Reloaded, crate::admin::Refused> {
        reload::apply_edit(self, edit)
            .await
            .map(reloaded)
            .map_err(|e| match e {
                reload::ApplyError::Invalid(d) => crate::admin::Refused::Invalid(d),
                reload::ApplyError::Persist(e) => crate::admin::Refused::Persist(e),
            })
    }

    async fn reload(&self) -> Result<crate::admin::Reloaded, crate::admin::Refused> {
        Gateway::reload(self)
            .await
            .map(reloaded)
            .map_err(crate::admin::Refused::Invalid)
    }
}

fn reloaded(o: ReloadOutcome) -> crate::admin::Reloaded {
    crate::admin::Reloaded {
        generation: o.generation,
        warnings: o.warnings,
    }
}
