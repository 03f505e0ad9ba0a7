//! Process signals and the config file watcher.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::watched::WatchedFile;
use super::{reload, Gateway};

/// The process signals the gateway handles. Install them before binding listeners, so that a
/// SIGHUP sent as soon as the port answers reloads instead of killing the process.
#[derive(Debug)]
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs handlers for SIGHUP, SIGTERM, SIGINT and SIGUSR1. Needs a running tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Runs until SIGTERM/SIGINT: SIGHUP and file changes reload, SIGUSR1 reopens the access-log
/// file (after log rotation, as nginx does); then drains and returns.
pub(crate) async fn run(gw: Arc<Gateway>, signals: Signals) -> std::io::Result<()> {
    let Signals {
        mut hup,
        mut term,
        mut int,
        mut usr1,
    } = signals;

    // Watch the directory, not the file: editors and Kubernetes replace files by rename. Only
    // writes, renames and removals of the config file itself count (see `watched`); when it is a
    // symlink to a file elsewhere, that file's directory is watched too.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut files = vec![WatchedFile::of(&gw.config_path)];
    if let Ok(target) = std::fs::canonicalize(&gw.config_path) {
        let target = WatchedFile::of(&target);
        if std::fs::canonicalize(&files[0].dir).ok().as_ref() != Some(&target.dir) {
            files.push(target);
        }
    }
    let dirs: Vec<std::path::PathBuf> = files.iter().map(|f| f.dir.clone()).collect();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| files.iter().any(|f| f.concerns(&e))) {
            let _ = tx.send(());
        }
    })
    .map_err(std::io::Error::other)?;
    for dir in dirs {
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP");
        }
    }

    loop {
        tokio::select! {
            _ = hup.recv() => report(gw.reload().await),
            Some(()) = rx.recv() => {
                // Debounce: editors write in several steps.
                tokio::time::sleep(Duration::from_millis(150)).await;
                while rx.try_recv().is_ok() {}
                if let Some(r) = reload::apply_if_changed(&gw).await {
                    report(r);
                }
            }
            _ = usr1.recv() => {
                gw.snapshot().observer.reopen_logs();
                tracing::info!("SIGUSR1: reopening the access log");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(watcher);
    tracing::info!("shutting down: draining in-flight requests");
    gw.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn report(r: Result<reload::ReloadOutcome, Vec<frontdesk_config::Diagnostic>>) {
    match r {
        Ok(o) => {
            for w in &o.warnings {
                tracing::warn!("{w}");
            }
        }
        Err(errs) => {
            tracing::error!("reload refused; the running config keeps serving");
            for e in &errs {
                tracing::error!("{e}");
            }
        }
    }
}
