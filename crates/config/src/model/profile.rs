//! Client profiles (backend for frontend): route sets and default plugins per client type.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PluginsConfig, RouteConfig};

/// A client type with its own routes and default plugins (`profiles[]`). A request takes the
/// first profile whose `select` holds; a request no profile selects takes the top-level `routes`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// Unique name: the `profile` label in metrics and the access log.
    pub name: String,
    /// Which requests take this profile: any one condition that holds selects it.
    pub select: ProfileSelect,
    /// The profile's default plugins: they run on its routes after the global plugins and before
    /// each route's own of the same kind.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// The profile's routes, matched like the top-level `routes` (names unique across all).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// What selects a profile. Identity conditions (`consumer_groups`, `jwt_claims`) need the caller
/// identified first: with any of them in the config, the global authentication plugins run
/// before routing.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileSelect {
    /// Listener names the request arrived on.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Hosts (exact, or `*.example.com`), as routes match them.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Groups of the identified consumer (any one).
    #[serde(default)]
    pub consumer_groups: Vec<String>,
    /// Claims of the verified JWT with these values (all of them): a string claim equal to the
    /// text, a number claim equal to it read as a number, a boolean claim to `true`/`false`.
    #[serde(default)]
    pub jwt_claims: BTreeMap<String, String>,
}

impl ProfileSelect {
    /// True when a condition needs the caller identified.
    pub fn needs_identity(&self) -> bool {
        !self.consumer_groups.is_empty() || !self.jwt_claims.is_empty()
    }

    /// True when no condition is set.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.hosts.is_empty() && !self.needs_identity()
    }
}
