//! The one reload path (file watch, SIGHUP, and later the admin API all call [`apply`]): load and
//! validate off the hot path, build a snapshot that reuses unchanged pools, bind new listeners,
//! swap atomically, then retire listeners that went away. Any error leaves everything as it was.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use frontdesk_config::{load_str, Diagnostic, Loaded};

use super::Gateway;
use crate::listener::{self, RunningListener};
use crate::snapshot::Snapshot;

/// What a successful reload changed.
#[derive(Debug, Default)]
pub struct ReloadOutcome {
    /// The new snapshot generation.
    pub generation: u64,
    /// Warnings from validation.
    pub warnings: Vec<Diagnostic>,
    /// Listeners started.
    pub added: Vec<String>,
    /// Listeners stopped.
    pub removed: Vec<String>,
}

/// Reads and validates a config file, with the process environment for `${VAR}`.
pub async fn load_file(path: &Path) -> Result<(String, Loaded), Vec<Diagnostic>> {
    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
        vec![Diagnostic::error(
            "",
            format!("cannot read {}: {e}", path.display()),
        )]
    })?;
    let loaded = load_text(path, &text)?;
    Ok((text, loaded))
}

/// Parses and validates the text of the config file at `path`, with the process environment for
/// `${VAR}`; relative file paths in it become relative to the file's directory.
pub fn load_text(path: &Path, text: &str) -> Result<Loaded, Vec<Diagnostic>> {
    let mut loaded = load_str(text, &|k| std::env::var(k).ok())?;
    let base = path.parent().unwrap_or(Path::new("."));
    loaded.config.resolve_paths(base);
    Ok(loaded)
}

pub(crate) fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

pub(crate) async fn apply(gw: &Gateway) -> Result<ReloadOutcome, Vec<Diagnostic>> {
    // Reloads are serialized by the listener lock; requests never take it.
    let mut running = gw.listeners.lock().await;
    let (text, loaded) = load_file(&gw.config_path).await?;
    let current = gw.live.load_full();
    let threads_before = current.config.server.worker_threads;
    let (snap, mut warnings) = Snapshot::build(loaded.config, Some(&current))?;
    warnings.extend(loaded.warnings);
    if snap.config.server.worker_threads != threads_before {
        warnings.push(Diagnostic::warning(
            "server.worker_threads",
            "the worker count is fixed at start; this change takes effect at the next start",
        ));
    }

    // Plan listener changes and bind what is new before anything changes, so a failed bind
    // refuses the whole reload. A listener whose address another listener held (a rename, or an
    // address moved between listeners) takes over that socket instead of binding it again.
    enum Source {
        Bound(tokio::net::TcpListener),
        HandOver(Arc<str>),
    }
    let mut planned = Vec::new();
    for (i, spec) in snap.listeners.iter().enumerate() {
        let keep = running
            .get(&spec.name)
            .is_some_and(|l| l.configured == spec.address);
        if keep {
            continue;
        }
        let holder = (spec.address.port() != 0)
            .then(|| running.values().find(|l| l.configured == spec.address))
            .flatten()
            .map(|l| l.name.clone());
        let source = match holder {
            Some(name) => Source::HandOver(name),
            None => match listener::bind(spec) {
                Ok(sock) => Source::Bound(sock),
                Err(e) => {
                    return Err(vec![Diagnostic::error(
                        format!("listeners[{i}].address"),
                        e.to_string(),
                    )]);
                }
            },
        };
        planned.push((spec.clone(), source));
    }

    let generation = snap.generation;
    let drain = snap.drain_timeout;
    let names: Vec<Arc<str>> = snap.listeners.iter().map(|l| l.name.clone()).collect();
    let snap = Arc::new(snap);
    gw.live.store(snap.clone());
    current.stop_background();
    snap.start_background();

    let mut outcome = ReloadOutcome {
        generation,
        warnings,
        ..Default::default()
    };
    // Donors leave the table first, so a swap of addresses between listeners hands over the old
    // sockets, never a successor's.
    let mut donors = std::collections::HashMap::new();
    for (_, source) in &planned {
        if let Source::HandOver(from) = source {
            if let Some(l) = running.remove(from) {
                donors.insert(from.clone(), l);
            }
        }
    }
    for (spec, source) in planned {
        let (live, tunnels) = (gw.live.clone(), gw.tunnels.clone());
        let started = match source {
            Source::Bound(sock) => RunningListener::start(sock, spec.clone(), live, tunnels),
            Source::HandOver(from) => {
                let Some(old) = donors.remove(&from) else {
                    continue;
                };
                let Some(handed) = old.hand_over().await else {
                    continue;
                };
                if !names.contains(&from) {
                    outcome.removed.push(from.to_string());
                }
                RunningListener::adopt(handed, spec.clone(), live, tunnels)
            }
        };
        match started {
            Ok(l) => {
                tracing::info!(listener = %l.name, address = %l.local, "listening");
                outcome.added.push(l.name.to_string());
                if let Some(old) = running.insert(l.name.clone(), l) {
                    old.stop_detached(drain);
                }
            }
            Err(e) => {
                tracing::error!(listener = %spec.name, error = %e, "listener failed to start")
            }
        }
    }
    let gone: Vec<Arc<str>> = running
        .keys()
        .filter(|k| !names.contains(k))
        .cloned()
        .collect();
    for name in gone {
        if let Some(l) = running.remove(&name) {
            tracing::info!(listener = %name, "listener removed; draining its connections");
            outcome.removed.push(name.to_string());
            l.stop_detached(drain);
        }
    }
    *gw.last_text.lock().await = hash(&text);
    gw.certs.resync();
    tracing::info!(generation, added = ?outcome.added, removed = ?outcome.removed, "config reloaded");
    Ok(outcome)
}

/// Reloads only if the file's text changed since the last applied config.
pub(crate) async fn apply_if_changed(
    gw: &Gateway,
) -> Option<Result<ReloadOutcome, Vec<Diagnostic>>> {
    let text = tokio::fs::read_to_string(&gw.config_path).await.ok()?;
    if hash(&text) == *gw.last_text.lock().await {
        return None;
    }
    Some(apply(gw).await)
}
