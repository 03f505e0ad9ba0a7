//! Where a transcoder's descriptors come from: a `FileDescriptorSet` file (read at every load),
//! or the upstream's gRPC server reflection, fetched before a config is built (the build itself
//! is synchronous) and kept per source, so a failed fetch keeps the last good set.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use prost_reflect::DescriptorPool;

/// Decodes an encoded `FileDescriptorSet`.
pub fn decode(bytes: &[u8]) -> Result<DescriptorPool, String> {
    DescriptorPool::decode(bytes).map_err(|e| format!("not a usable FileDescriptorSet: {e}"))
}

/// Reads and decodes a `FileDescriptorSet` file.
pub fn from_file(path: &str) -> Result<DescriptorPool, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    decode(&bytes).map_err(|e| format!("{path}: {e}"))
}

/// What reflection last gave for one source.
#[derive(Clone, Debug, Default)]
struct Reflected {
    /// The last set fetched.
    pool: Option<DescriptorPool>,
    /// The last fetch's error, when it failed.
    error: Option<String>,
}

/// Descriptors fetched by reflection, by source (`url`, or `upstream:NAME`). Read when a
/// config is built, written by the fetch before it; never on the request path.
static REFLECTED: Mutex<Option<HashMap<String, Reflected>>> = Mutex::new(None);

/// Records a fetch's outcome for `source`: a new set replaces the old; an error keeps it.
pub fn record(source: &str, outcome: Result<DescriptorPool, String>) {
    let mut g = REFLECTED.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = g
        .get_or_insert_with(HashMap::new)
        .entry(source.to_string())
        .or_default();
    match outcome {
        Ok(pool) => {
            entry.pool = Some(pool);
            entry.error = None;
        }
        Err(e) => entry.error = Some(e),
    }
}

/// The set last fetched from `source`, or why there is none.
pub fn reflected(source: &str) -> Result<DescriptorPool, String> {
    let g = REFLECTED.lock().unwrap_or_else(PoisonError::into_inner);
    match g.as_ref().and_then(|m| m.get(source)) {
        Some(Reflected { pool: Some(p), .. }) => Ok(p.clone()),
        Some(Reflected { error: Some(e), .. }) => Err(format!(
            "no descriptors by reflection from {source} yet: {e}"
        )),
        _ => Err(format!("no descriptors by reflection from {source} yet")),
    }
}

/// The reflection source of a transcoder: its `url`, or its route's upstream.
pub fn source(url: Option<&str>, upstream: Option<&str>) -> Option<String> {
    match (url, upstream) {
        (Some(u), _) => Some(u.to_string()),
        (None, Some(up)) => Some(format!("upstream:{up}")),
        (None, None) => None,
    }
}

/// Fetches, by server reflection, the descriptors of every `grpc_transcode` in `cfg` that says
/// `reflect: true`, once per source, and records them for the build that follows. Returns
/// warnings: a failed fetch keeps the last set from that source (a source that never answered
/// leaves the build to refuse the plugin, with the fetch's error).
pub async fn prefetch(cfg: &frontdesk_config::Config) -> Vec<frontdesk_config::Diagnostic> {
    use frontdesk_config::{Diagnostic, FieldPath, PluginsConfig};

    // (where, source, url, CA file, timeout)
    type Wanted = (String, String, String, Option<String>, std::time::Duration);
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut consider = |p: &PluginsConfig, at: FieldPath, upstream: Option<&str>| {
        let Some(g) = p.grpc_transcode.as_ref().filter(|g| g.descriptors.reflect) else {
            return;
        };
        let Some(source) = source(g.descriptors.url.as_deref(), upstream) else {
            return;
        };
        if wanted.iter().any(|w| w.1 == source) {
            return;
        }
        let up = upstream.and_then(|u| cfg.upstreams.get(u));
        let url = match (&g.descriptors.url, up) {
            (Some(u), _) => u.clone(),
            (None, Some(up)) => match up.targets.first() {
                Some(t) => t.url.clone(),
                None => return,
            },
            (None, None) => return,
        };
        let ca = up.and_then(|u| u.tls.as_ref()).and_then(|t| t.ca.clone());
        wanted.push((
            at.key("grpc_transcode").key("descriptors").to_string(),
            source,
            url,
            ca,
            g.descriptors.timeout.get(),
        ));
    };
    let root = FieldPath::root();
    consider(&cfg.plugins, root.key("plugins"), None);
    for (i, r) in cfg.routes.iter().enumerate() {
        consider(
            &r.plugins,
            root.key("routes").index(i).key("plugins"),
            r.upstream.as_deref(),
        );
    }
    for (i, pr) in cfg.profiles.iter().enumerate() {
        let at = root.key("profiles").index(i);
        consider(&pr.plugins, at.key("plugins"), None);
        for (j, r) in pr.routes.iter().enumerate() {
            consider(
                &r.plugins,
                at.key("routes").index(j).key("plugins"),
                r.upstream.as_deref(),
            );
        }
    }
    let mut warnings = Vec::new();
    for (at, source, url, ca, timeout) in wanted {
        let mut opts = super::reflect::FetchOptions {
            timeout,
            ..Default::default()
        };
        if let Some(ca) = ca {
            match std::fs::read(&ca) {
                Ok(pem) => opts.ca_pem = Some(pem),
                Err(e) => {
                    warnings.push(Diagnostic::warning(at, format!("reading the CA {ca}: {e}")));
                    continue;
                }
            }
        }
        let outcome = match super::reflect::fetch(&url, &opts).await {
            Ok(f) => decode(&f.encoded).inspect(|_| {
                tracing::info!(source = %source, url = %url, services = ?f.services, version = f.version, "descriptors fetched by reflection");
            }),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &outcome {
            let had = reflected(&source).is_ok();
            if had {
                warnings.push(Diagnostic::warning(
                    at,
                    format!("reflection from {url} failed ({e}); keeping the descriptors fetched before"),
                ));
            }
        }
        record(&source, outcome);
    }
    warnings
}
