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
