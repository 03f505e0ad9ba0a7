//! Certificate rotation without a reload: watches the directories of every TLS listener's
//! certificate, key and CA files, and when something there changes, re-reads them into the
//! live snapshot's listeners ([`ServerTls::refresh`](crate::tls::server::ServerTls::refresh)).
//! New handshakes use the new files; open connections keep theirs. A file that fails to load is
//! logged and the previous certificates keep serving.
//!
//! Directories, not files, are watched: cert-manager, Kubernetes secrets and most deploy tools
//! replace files by rename (or swap a symlinked directory), which a watch on the old file misses.
//! Only writes, renames and removals of the files themselves count, not reads nor other files
//! in those directories.
//! Where the OS watcher is unavailable, the files are polled every [`POLL_EVERY`] instead.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::watched::WatchedFile;
use crate::snapshot::Live;
use crate::tls::server::Refresh;

/// Events arriving within this window are handled once (writers touch files in several steps).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// How often files are re-read when directories cannot be watched.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// The running watcher; stops when dropped.
#[derive(Debug)]
pub(crate) struct CertWatcher {
    resync: watch::Sender<()>,
    task: JoinHandle<()>,
}

// === impl CertWatcher ===

impl CertWatcher {
    /// Starts watching the files of the TLS listeners in `live`. Needs a tokio runtime.
    pub(crate) fn spawn(live: Arc<Live>) -> CertWatcher {
        let (resync, rx) = watch::channel(());
        let task = tokio::spawn(run(live, rx));
        CertWatcher { resync, task }
    }

    /// Re-reads which files to watch from the live snapshot; call after each reload.
    pub(crate) fn resync(&self) {
        self.resync.send_replace(());
    }
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(live: Arc<Live>, mut resync: watch::Receiver<()>) {
    let (tx, mut events) = mpsc::unbounded_channel();
    // The files that count: only their writes, renames and removals wake the refresh, not reads
    // (our own included) nor other files in the same directories.
    let files: Arc<std::sync::RwLock<Vec<WatchedFile>>> = Arc::default();
    let concern = files.clone();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        let files = concern
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if files.iter().any(|f| f.concerns(&ev)) {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch certificate files; polling them instead");
            None
        }
    };
    let mut dirs = HashSet::new();
    let mut poll = sync_dirs(&mut watcher, &mut dirs, &files, &live);
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(()) = events.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while events.try_recv().is_ok() {}
                refresh(&live).await;
            }
            changed = resync.changed() => {
                if changed.is_err() {
                    return;
                }
                poll = sync_dirs(&mut watcher, &mut dirs, &files, &live);
            }
            _ = tick.tick(), if poll => refresh(&live).await,
        }
    }
}

/// Watches exactly the directories the live snapshot's TLS files are in. Returns true when
/// some cannot be watched, so the caller polls.
fn sync_dirs(
    watcher: &mut Option<RecommendedWatcher>,
    dirs: &mut HashSet<PathBuf>,
    files: &std::sync::RwLock<Vec<WatchedFile>>,
    live: &Live,
) -> bool {
    let snap = live.load();
    let watched: Vec<WatchedFile> = snap
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| t.files())
        .map(|f| WatchedFile::of(Path::new(f)))
        .collect();
    let wanted: HashSet<PathBuf> = watched.iter().map(|f| f.dir.clone()).collect();
    *files
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = watched;
    let Some(w) = watcher else {
        return !wanted.is_empty();
    };
    for gone in dirs.difference(&wanted) {
        let _ = w.unwatch(gone);
    }
    dirs.retain(|d| wanted.contains(d));
    let mut poll = false;
    for dir in wanted {
        if dirs.contains(&dir) {
            continue;
        }
        match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                dirs.insert(dir);
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch a certificate directory; polling it");
                poll = true;
            }
        }
    }
    poll
}

/// Re-reads every TLS listener's files (off the async threads: it is file I/O and parsing).
async fn refresh(live: &Arc<Live>) {
    let snap = live.load_full();
    let done = tokio::task::spawn_blocking(move || {
        for l in &snap.listeners {
            let Some(tls) = &l.tls else { continue };
            match tls.refresh() {
                Ok(Refresh::Unchanged) => {}
                Ok(Refresh::Reloaded(warnings)) => {
                    tracing::info!(listener = %l.name, "certificates reloaded from disk");
                    for w in warnings {
                        tracing::warn!(listener = %l.name, "tls.{}: {}", w.field, w.message);
                    }
                }
                Err(errs) => {
                    tracing::error!(listener = %l.name, "certificate files changed but cannot be loaded; the previous certificates keep serving");
                    for e in errs {
                        tracing::error!(listener = %l.name, "tls.{e}");
                    }
                }
            }
        }
    });
    if let Err(e) = done.await {
        tracing::error!(error = %e, "certificate refresh failed");
    }
}
