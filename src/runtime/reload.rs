//! The one reload path: file watch, SIGHUP and the admin API's `POST /reload` call [`apply`],
//! `PUT /config` calls [`apply_edit`] (or [`apply_text`]); all of them end in `apply_locked`. It loads and validates
//! off the hot path, builds a snapshot that reuses unchanged pools, binds new listeners, writes
//! the text back to the config file when it came from the API, swaps atomically, then retires
//! listeners that went away. Any error leaves everything as it was. Every attempt is counted in
//! `frontdesk_config_reloads_total`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use frontdesk_config::{load_str_salvaged, Config, Diagnostic, FileUse, Loaded, MAX_CONFIG_SIZE};

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
    let text = read(path).await?;
    let loaded = load_text(path, &text)?;
    Ok((text, loaded))
}

/// Reads the config file at `path`: at most [`MAX_CONFIG_SIZE`] bytes are read, so an endless
/// file (`/dev/zero`) is refused in bounded memory.
pub fn read_config(path: &Path) -> Result<String, Diagnostic> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| {
        Diagnostic::error(
            "",
            format!("cannot read {}: {}", path.display(), io_text(&e)),
        )
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut buf = Vec::new();
    // One byte over the cap tells a file of exactly the cap from a larger one.
    file.take(MAX_CONFIG_SIZE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    if buf.len() > MAX_CONFIG_SIZE {
        return Err(Diagnostic::error(
            "",
            format!(
                "{} is larger than {} MiB, the most a config file may hold",
                path.display(),
                MAX_CONFIG_SIZE / (1024 * 1024)
            ),
        ));
    }
    String::from_utf8(buf).map_err(|_| {
        Diagnostic::error(
            "",
            format!("cannot read {}: the file is not UTF-8 text", path.display()),
        )
    })
}

/// Parses and validates the text of the config file at `path`, with the process environment for
/// `${VAR}`; relative file paths in it become relative to the file's directory. Every file the
/// config names is checked as the gateway will use it, in the same pass as the other checks.
///
/// A refused config is also compiled, without its parts that have errors, so that what only
/// compiling finds (a network in `trusted_proxies`, a plugin's settings, a certificate's
/// contents) is reported in the same pass, at the paths of the file.
pub fn load_text(path: &Path, text: &str) -> Result<Loaded, Vec<Diagnostic>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let files = |p: &str, how: FileUse| check_file(&base.join(p), how);
    match load_str_salvaged(text, &|k| std::env::var(k).ok(), &files) {
        Ok(mut loaded) => {
            loaded.config.resolve_paths(base);
            Ok(loaded)
        }
        Err((mut diags, Some(salvaged))) => {
            let mut config = salvaged.config.clone();
            config.resolve_paths(base);
            // On a thread of its own, outside any async runtime: a refused config starts
            // nothing (no access-log writer, no exporter), as under `frontdesk validate`.
            let found =
                std::thread::scope(|s| s.spawn(move || Snapshot::check(config, None)).join().ok());
            if let Some(Err(more)) = found {
                salvaged.merge(&mut diags, more);
            }
            Err(diags)
        }
        Err((diags, None)) => Err(diags),
    }
}

/// Whether the gateway will be able to use the file at `path` as `how` says; the error names it.
fn check_file(path: &Path, how: FileUse) -> Result<(), String> {
    let shown = path.display();
    let meta = std::fs::metadata(path);
    if let Ok(m) = &meta {
        if m.is_dir() {
            return Err(format!("{shown} is a directory, not a file"));
        }
    }
    match (how, meta) {
        (FileUse::Read, Err(e)) => Err(format!("cannot read {shown}: {}", io_text(&e))),
        (FileUse::Read, Ok(_)) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| format!("cannot read {shown}: {}", io_text(&e))),
        // An existing file is opened for appending (which changes nothing); a missing one will
        // be created, so its directory must exist.
        (FileUse::Append, Ok(_)) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("cannot write {shown}: {}", io_text(&e))),
        (FileUse::Append, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(format!(
                    "cannot create {shown}: {} is not a directory",
                    dir.display()
                )),
                Err(e) => Err(format!(
                    "cannot create {shown}: directory {}: {}",
                    dir.display(),
                    io_text(&e)
                )),
            }
        }
        (FileUse::Append, Err(e)) => Err(format!("cannot write {shown}: {}", io_text(&e))),
    }
}

/// An I/O error's text without the `(os error N)` suffix.
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

pub(crate) fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The config text the running snapshot came from, and what the file watcher last refused.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The text last applied (from the file or `PUT /config`); `PUT /config` edits it.
    text: Arc<str>,
    /// Its hash, so a watcher event without a change is a no-op.
    hash: u64,
    /// The hash of a file content the watcher refused, so it is reported once, not at every event.
    refused: Option<u64>,
}

impl Applied {
    pub(crate) fn new(text: String) -> Applied {
        Applied {
            hash: hash(&text),
            text: text.into(),
            refused: None,
        }
    }
}

/// Why [`apply_text`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config was refused: every error (and the warnings).
    #[error("invalid config")]
    Invalid(Vec<Diagnostic>),
    /// The config was valid but could not be written back to the config file.
    #[error("cannot write the config file: {0}")]
    Persist(std::io::Error),
}

impl From<Vec<Diagnostic>> for ApplyError {
    fn from(d: Vec<Diagnostic>) -> Self {
        ApplyError::Invalid(d)
    }
}

impl ApplyError {
    /// As diagnostics, for callers that report both kinds the same way.
    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        match self {
            ApplyError::Invalid(d) => d,
            ApplyError::Persist(e) => vec![Diagnostic::error("", e.to_string())],
        }
    }
}

type Running = HashMap<Arc<str>, RunningListener>;

/// Re-reads the config file and applies it.
pub(crate) async fn apply(gw: &Gateway) -> Result<ReloadOutcome, Vec<Diagnostic>> {
    // Reloads are serialized by the listener lock; requests never take it.
    let mut running = gw.listeners.lock().await;
    let result = match read(&gw.config_path).await {
        Ok(text) => apply_locked(gw, &mut running, text, false).await,
        Err(e) => Err(e.into()),
    };
    record(gw, result).map_err(ApplyError::into_diagnostics)
}

/// Applies `text` as the new config and, once it is known to be good, writes it to the config
/// file (atomically: a temporary file renamed over it) so that a restart keeps it. The file
/// watcher sees that write and does nothing, since the text is the one last applied.
pub async fn apply_text(gw: &Gateway, text: String) -> Result<ReloadOutcome, ApplyError> {
    let mut running = gw.listeners.lock().await;
    let result = apply_locked(gw, &mut running, text, true).await;
    record(gw, result)
}

/// Applies a `PUT /config` submission as an edit of the config text last applied: under the
/// reload lock, `edit` gets that text and the running snapshot and returns the file's new text
/// (see [`frontdesk_config::edit_text`]), which is then applied and saved like [`apply_text`].
pub async fn apply_edit<F>(gw: &Gateway, edit: F) -> Result<ReloadOutcome, ApplyError>
where
    F: FnOnce(&str, &Snapshot) -> Result<String, Vec<Diagnostic>>,
{
    let mut running = gw.listeners.lock().await;
    let base = gw.last_text.lock().await.text.clone();
    let current = gw.live.load_full();
    let result = match edit(&base, &current) {
        Ok(text) => apply_locked(gw, &mut running, text, true).await,
        Err(diags) => Err(ApplyError::Invalid(diags)),
    };
    record(gw, result)
}

/// The config text last applied (the file as loaded, or as `PUT /config` wrote it).
pub async fn applied_text(gw: &Gateway) -> Arc<str> {
    gw.last_text.lock().await.text.clone()
}

/// Checks `text` as `PUT /config` would apply it, without applying anything or connecting to
/// anything. Returns the warnings, or every error.
pub fn check_text(gw: &Gateway, text: &str) -> Result<Vec<Diagnostic>, Vec<Diagnostic>> {
    let loaded = load_text(&gw.config_path, text)?;
    let current = gw.live.load_full();
    let restart = restart_warnings(&current.config, &loaded.config);
    let mut warnings = loaded.warnings;
    warnings.extend(Snapshot::check(loaded.config, Some(&current))?);
    warnings.extend(restart);
    Ok(warnings)
}

/// Counts a reload attempt in the metrics.
fn record<T>(gw: &Gateway, r: Result<T, ApplyError>) -> Result<T, ApplyError> {
    gw.live.load().metrics.reload(r.is_ok());
    r
}

async fn read(path: &Path) -> Result<String, Vec<Diagnostic>> {
    let path = path.to_path_buf();
    match tokio::task::spawn_blocking(move || read_config(&path)).await {
        Ok(r) => r.map_err(|d| vec![d]),
        Err(e) => Err(vec![Diagnostic::error(
            "",
            format!("cannot read the config: {e}"),
        )]),
    }
}

/// Settings that are read once at start: a change to them waits for the next start.
fn restart_warnings(old: &Config, new: &Config) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if new.server.worker_threads != old.server.worker_threads {
        out.push(Diagnostic::warning(
            "server.worker_threads",
            "the worker count is fixed at start; this change takes effect at the next start",
        ));
    }
    let admin = |c: &Config| c.admin.as_ref().map(|a| a.address.clone());
    if admin(new) != admin(old) {
        out.push(Diagnostic::warning(
            "admin.address",
            "the admin listener is bound at start; this change takes effect at the next start",
        ));
    }
    out
}

/// Writes `text` to `path` by renaming a temporary file in the same directory over it, so a
/// reader never sees half a file. A symlinked config file keeps its link: the target is replaced.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target.file_name().map_or_else(
        || "frontdesk.yaml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        // The file may hold secrets: keep the original's permissions.
        if let Ok(meta) = std::fs::metadata(&target) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

async fn apply_locked(
    gw: &Gateway,
    running: &mut Running,
    text: String,
    persist: bool,
) -> Result<ReloadOutcome, ApplyError> {
    let loaded = load_text(&gw.config_path, &text)?;
    let current = gw.live.load_full();
    let fetched = crate::grpc::descriptors::prefetch(&loaded.config).await;
    let (snap, mut warnings) = Snapshot::build(loaded.config, Some(&current))?;
    warnings.extend(fetched);
    warnings.extend(loaded.warnings);
    warnings.extend(restart_warnings(&current.config, &snap.config));

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
                    return Err(ApplyError::Invalid(vec![Diagnostic::error(
                        format!("listeners[{i}].address"),
                        e.to_string(),
                    )]));
                }
            },
        };
        planned.push((spec.clone(), source));
    }

    // The last step that can fail, so a file that cannot be written changes nothing.
    if persist {
        let path = gw.config_path.clone();
        let body = text.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, &body))
            .await
            .map_err(|e| ApplyError::Persist(std::io::Error::other(e)))?
            .map_err(ApplyError::Persist)?;
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
    *gw.last_text.lock().await = Applied::new(text);
    gw.certs.resync();
    tracing::info!(generation, added = ?outcome.added, removed = ?outcome.removed, "config reloaded");
    Ok(outcome)
}

/// Reloads only if the file's text changed since the last applied config, and was not refused
/// already as it is: a refused content is reported once, not at every event. The comparison is
/// made under the reload lock, so a file written by [`apply_text`] is never applied a second time.
pub(crate) async fn apply_if_changed(
    gw: &Gateway,
) -> Option<Result<ReloadOutcome, Vec<Diagnostic>>> {
    let mut running = gw.listeners.lock().await;
    let text = read(&gw.config_path).await.ok()?;
    let h = hash(&text);
    {
        let mut last = gw.last_text.lock().await;
        if h == last.hash {
            if last.refused.take().is_some() {
                tracing::info!(
                    path = %gw.config_path.display(),
                    "the config file matches the running config again"
                );
            }
            return None;
        }
        if last.refused == Some(h) {
            return None;
        }
    }
    let result = apply_locked(gw, &mut running, text, false).await;
    if result.is_err() {
        gw.last_text.lock().await.refused = Some(h);
    }
    Some(record(gw, result).map_err(ApplyError::into_diagnostics))
}
