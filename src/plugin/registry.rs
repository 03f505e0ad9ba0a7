//! Builds plugin chains from typed config. The list of kinds lives in `plugins::register_all`;
//! kinds a binary embedding Frontdesk adds are registered with [`register_custom`] and configured
//! under `plugins.custom`.

use std::sync::{Arc, PoisonError, RwLock};

use frontdesk_config::{Diagnostic, FieldPath};
use serde::Deserialize as _;

use super::{Plugin, PluginChain};
use crate::consumer::Consumers;

/// What plugins may use while they are built: the snapshot's shared pieces.
#[derive(Clone, Debug)]
pub struct BuildEnv {
    /// Every consumer, by credential.
    pub consumers: Arc<Consumers>,
    /// The shared limiter store, when `redis:` is configured.
    pub redis: Option<Arc<crate::limit::redis::RedisStore>>,
    /// Where the plugin being built was configured.
    pub scope: Scope,
    /// The process's metrics, for plugins that count decisions.
    pub metrics: Arc<crate::observe::metrics::Metrics>,
    /// The route a route-scoped plugin belongs to (`None` for global plugins, which run on
    /// every route).
    pub route: Option<Arc<str>>,
    /// The snapshot's upstreams, by name: see [`BuildEnv::upstream`].
    pub upstreams: Arc<std::collections::HashMap<String, Arc<crate::upstream::Upstream>>>,
    /// The response cache's stores, when something caches.
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// Where a route-scoped plugin's route sends requests (`None` for global plugins and
    /// routes without an upstream).
    pub route_target: Option<RouteTarget>,
    /// True when the config is only being checked (`POST /config/validate`, the salvage check
    /// of a refused file): nothing was fetched for it, and nothing should be.
    pub offline: bool,
}

/// A route's upstream, as a plugin that calls it on the route's behalf needs it.
#[derive(Clone, Debug)]
pub struct RouteTarget {
    /// The upstream's name ([`BuildEnv::upstream`]).
    pub upstream: String,
    /// The route's `preserve_host`: send the client's `Host`.
    pub preserve_host: bool,
}

impl BuildEnv {
    /// A handle to call the upstream `name` from the plugin, or `None` when there is no such
    /// upstream (a plugin should then fail its build, which is a config error at its path).
    pub fn upstream(&self, name: &str) -> Option<super::UpstreamHandle> {
        self.upstreams
            .get(name)
            .map(|u| super::UpstreamHandle::new(u.clone()))
    }
}

impl Default for BuildEnv {
    fn default() -> Self {
        BuildEnv {
            consumers: Arc::default(),
            redis: None,
            scope: Scope::Route,
            metrics: Arc::default(),
            route: None,
            upstreams: Arc::default(),
            cache: None,
            route_target: None,
            offline: false,
        }
    }
}

/// Turns one kind's typed config into a plugin instance.
pub trait PluginFactory {
    /// The kind name: config key and file name.
    const KIND: &'static str;
    /// Position of the kind in the chain; lower runs first on the request. Documented in docs/plugins.md.
    const ORDER: u16;
    /// True for authentication plugins: who the caller is is settled after the last one
    /// (anonymous consumer, or `401` with every challenge; see `plugins::auth`).
    const AUTH: bool = false;
    /// The kind's config struct (from `frontdesk-config`).
    type Config;
    /// Builds an instance; an `Err` is a config error at the plugin's field path.
    fn build(cfg: &Self::Config, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String>;
}

/// Where a plugin was configured. Global plugins run before the route's own of the same kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Top-level `plugins:`.
    Global,
    /// A client profile's `plugins:` (`profiles[].plugins`): its routes' defaults.
    Profile,
    /// A route's `plugins:`.
    Route,
}

/// Collects built plugins of one scope (or both) and the errors met building them.
pub struct ChainBuilder {
    items: Vec<(u16, Scope, bool, Arc<dyn Plugin>)>,
    env: BuildEnv,
    /// Build failures, with field paths.
    pub errors: Vec<Diagnostic>,
}

impl Default for ChainBuilder {
    fn default() -> Self {
        ChainBuilder::new(BuildEnv::default())
    }
}

impl ChainBuilder {
    /// An empty builder whose plugins are built with `env`.
    pub fn new(env: BuildEnv) -> Self {
        ChainBuilder {
            items: Vec::new(),
            env,
            errors: Vec::new(),
        }
    }

    /// Builds the plugin for `cfg` if present.
    pub fn add<F: PluginFactory>(&mut self, cfg: Option<&F::Config>, scope: Scope, at: &FieldPath) {
        let Some(cfg) = cfg else { return };
        let env = self.env_for(scope);
        match F::build(cfg, &env) {
            Ok(p) => self.items.push((F::ORDER, scope, F::AUTH, p)),
            Err(msg) => self
                .errors
                .push(Diagnostic::error(at.key(F::KIND).to_string(), msg)),
        }
    }

    /// The environment a plugin of `scope` is built with: a global plugin belongs to no route.
    fn env_for(&self, scope: Scope) -> BuildEnv {
        BuildEnv {
            scope,
            route: (scope == Scope::Route)
                .then(|| self.env.route.clone())
                .flatten(),
            route_target: (scope == Scope::Route)
                .then(|| self.env.route_target.clone())
                .flatten(),
            ..self.env.clone()
        }
    }

    /// Adds already-built plugins (the global ones, shared by every route).
    pub fn extend_from(&mut self, other: &ChainBuilder) {
        self.items.extend(other.items.iter().cloned());
    }

    /// The plugins that must run before routing when profiles select callers by identity: the
    /// authentication plugins and those ordered before them (`ip_filter`, `cors`). Copies.
    pub fn identity_stage(&self) -> ChainBuilder {
        let last_auth = self
            .items
            .iter()
            .filter(|i| i.2)
            .map(|i| i.0)
            .max()
            .unwrap_or(0);
        ChainBuilder {
            items: self
                .items
                .iter()
                .filter(|i| i.0 <= last_auth)
                .cloned()
                .collect(),
            env: self.env.clone(),
            errors: Vec::new(),
        }
    }

    /// Removes the authentication plugins (they ran before routing: [`Self::identity_stage`]).
    pub fn remove_auth(&mut self) {
        self.items.retain(|i| !i.2);
    }

    /// The kinds of the authentication plugins added so far (the factories' `AUTH`), in
    /// chain order.
    pub fn auth_kinds(&self) -> Vec<&'static str> {
        let mut auth: Vec<_> = self.items.iter().filter(|i| i.2).collect();
        auth.sort_by_key(|(order, scope, _, _)| (*order, *scope));
        auth.iter().map(|i| i.3.kind()).collect()
    }

    /// Adds a plugin built outside a factory (one that completes the chain) at `order`.
    pub fn insert(&mut self, order: u16, plugin: Arc<dyn Plugin>) {
        self.items.push((order, Scope::Route, false, plugin));
    }

    /// The chain in run order: by kind order, then global before route.
    pub fn finish(mut self) -> PluginChain {
        self.items
            .sort_by_key(|(order, scope, _, _)| (*order, *scope));
        PluginChain::new(self.items.into_iter().map(|(_, _, _, p)| p).collect())
    }
}

/// Builds a custom plugin kind from its config as written under `plugins.custom.KIND`.
trait CustomFactory: Send + Sync {
    fn kind(&self) -> &'static str;
    fn order(&self) -> u16;
    fn auth(&self) -> bool;
    fn build(&self, cfg: &serde_json::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String>;
}

struct Custom<F>(std::marker::PhantomData<fn() -> F>);

impl<F> CustomFactory for Custom<F>
where
    F: PluginFactory,
    F::Config: serde::de::DeserializeOwned,
{
    fn kind(&self) -> &'static str {
        F::KIND
    }
    fn order(&self) -> u16 {
        F::ORDER
    }
    fn auth(&self) -> bool {
        F::AUTH
    }
    fn build(&self, cfg: &serde_json::Value, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        let typed = F::Config::deserialize(cfg).map_err(|e| e.to_string())?;
        F::build(&typed, env)
    }
}

/// The custom kinds registered in this process. Read only while a config is compiled (never
/// on the request path).
static CUSTOM: RwLock<Vec<Arc<dyn CustomFactory>>> = RwLock::new(Vec::new());

/// Registers a plugin kind of a binary that embeds Frontdesk: configs then accept it under
/// `plugins.custom.<F::KIND>`, with `F::Config` deserialized from what is written there, and
/// it runs at `F::ORDER` like a built-in kind. Call it before the gateway loads its config;
/// registering a kind again replaces it. Custom kinds have their own namespace (`custom:`), so a
/// built-in kind's name is no clash.
pub fn register_custom<F>()
where
    F: PluginFactory + 'static,
    F::Config: serde::de::DeserializeOwned,
{
    let mut all = CUSTOM.write().unwrap_or_else(PoisonError::into_inner);
    all.retain(|c| c.kind() != F::KIND);
    all.push(Arc::new(Custom::<F>(std::marker::PhantomData)));
}

impl ChainBuilder {
    /// Builds the custom plugins of `custom` (a scope's `plugins.custom`).
    pub fn add_custom(
        &mut self,
        custom: &std::collections::BTreeMap<String, serde_json::Value>,
        scope: Scope,
        at: &FieldPath,
    ) {
        if custom.is_empty() {
            return;
        }
        let registered = CUSTOM
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (kind, cfg) in custom {
            let at = at.key("custom").key(kind);
            let Some(f) = registered.iter().find(|f| f.kind() == kind) else {
                let known: Vec<&str> = registered.iter().map(|f| f.kind()).collect();
                let msg = if known.is_empty() {
                    "unknown custom plugin kind: this binary registers none".to_string()
                } else {
                    format!(
                        "unknown custom plugin kind (this binary registers {})",
                        known.join(", ")
                    )
                };
                self.errors.push(Diagnostic::error(at.to_string(), msg));
                continue;
            };
            let env = self.env_for(scope);
            match f.build(cfg, &env) {
                Ok(p) => self.items.push((f.order(), scope, f.auth(), p)),
                Err(msg) => self.errors.push(Diagnostic::error(at.to_string(), msg)),
            }
        }
    }
}
