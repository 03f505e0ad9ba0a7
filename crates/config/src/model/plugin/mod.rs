//! Plugin configuration: one typed struct per plugin kind, keyed by the kind's name.
//!
//! The same shape is used for global plugins (top-level `plugins:`) and per-route plugins.

mod headers;
mod respond;

use schemars::JsonSchema;
use serde::Deserialize;

pub use headers::{HeaderOps, HeadersConfig};
pub use respond::RespondConfig;

/// Plugins by kind. A kind appears at most once per scope; unknown kinds are errors.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Set, add and remove headers on the request and the response.
    #[serde(default)]
    pub headers: Option<HeadersConfig>,
    /// Answer with a static response; a route that has it needs no upstream.
    #[serde(default)]
    pub respond: Option<RespondConfig>,
}

impl PluginsConfig {
    /// True when no plugin is configured.
    pub fn is_empty(&self) -> bool {
        self.headers.is_none() && self.respond.is_none()
    }
}
