//! Builds plugin chains from typed config. The list of kinds lives in `plugins::register_all`.

use std::sync::Arc;

use frontdesk_config::{Diagnostic, FieldPath};

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
}

impl Default for BuildEnv {
    fn default() -> Self {
        BuildEnv {
            consumers: Arc::default(),
            redis: None,
            scope: Scope::Route,
            metrics: Arc::default(),
            route: None,
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
        let env = BuildEnv {
            scope,
            route: (scope == Scope::Route)
                .then(|| self.env.route.clone())
                .flatten(),
            ..self.env.clone()
        };
        match F::build(cfg, &env) {
            Ok(p) => self.items.push((F::ORDER, scope, F::AUTH, p)),
            Err(msg) => self
                .errors
                .push(Diagnostic::error(at.key(F::KIND).to_string(), msg)),
        }
    }

    /// Adds already-built plugins (the global ones, shared by every route).
    pub fn extend_from(&mut self, other: &ChainBuilder) {
        self.items.extend(other.items.iter().cloned());
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
