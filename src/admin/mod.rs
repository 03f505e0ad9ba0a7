//! The admin API: JSON over HTTP on its own listener (loopback by default), never on a proxy
//! listener, and never serving proxied routes. It reads the live snapshot and changes the
//! config only through the one reload path (`runtime::reload`), reached through the narrow
//! [`GatewayHandle`] that `runtime::Gateway` implements: the admin API knows no more of the runtime. Its paths are described by
//! `openapi.json`, served at `/openapi.json`.
//!
//! An axum `Router` (the house style's choice for the admin API): routing by method and path,
//! JSON bodies and a token layer on the guarded routes come with it, and none of this is on the
//! request path of proxied traffic. [`routes`] holds the router and the thin handlers, [`auth`]
//! the token check, [`dto`] the answers.
//!
//! The `Gateway` starts the listener when `admin:` is configured and stops it last, after the
//! proxy listeners drained, so `/readyz` can say `503` while the gateway drains.

mod auth;
pub mod dto;
mod routes;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use frontdesk_config::Diagnostic;
use tokio::sync::oneshot;

use crate::snapshot::Snapshot;

/// What the admin API may ask of the running gateway (implemented by `runtime::Gateway`).
#[async_trait::async_trait]
pub trait GatewayHandle: Send + Sync + 'static {
    /// The live snapshot.
    fn snapshot(&self) -> Arc<Snapshot>;
    /// True once the first config is live and every listener serves, until shutdown begins.
    fn is_ready(&self) -> bool;
    /// True once shutdown has begun.
    fn is_draining(&self) -> bool;
    /// The admin listener's bound address, when one runs.
    fn admin_addr(&self) -> Option<SocketAddr>;
    /// The config file text last applied.
    async fn applied_text(&self) -> Arc<str>;
    /// Checks `text` as an edit would apply it, applying nothing: the warnings, or every error.
    fn check_text(&self, text: &str) -> Result<Vec<Diagnostic>, Vec<Diagnostic>>;
    /// Applies the text `edit` makes of the applied text and the live snapshot, and saves it.
    async fn apply_edit(&self, edit: Box<Edit>) -> Result<Reloaded, Refused>;
    /// Re-reads the config file and applies it.
    async fn reload(&self) -> Result<Reloaded, Refused>;
}

/// An edit of the applied config text, given it and the live snapshot.
pub type Edit = dyn FnOnce(&str, &Snapshot) -> Result<String, Vec<Diagnostic>> + Send;

/// A config the gateway applied.
#[derive(Debug)]
pub struct Reloaded {
    /// The new snapshot generation.
    pub generation: u64,
    /// Warnings from validation.
    pub warnings: Vec<Diagnostic>,
}

/// Why a config was not applied.
#[derive(Debug)]
pub enum Refused {
    /// The config was refused: every error (and the warnings).
    Invalid(Vec<Diagnostic>),
    /// The config was valid but could not be written back to the config file.
    Persist(std::io::Error),
}

/// The OpenAPI 3.1 description of every admin path.
pub const OPENAPI: &str = include_str!("openapi.json");

/// A running admin listener.
#[derive(Debug)]
pub struct AdminServer {
    local: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// What every admin handler can reach.
#[derive(Clone, Debug)]
pub(crate) struct AdminState {
    gw: Weak<dyn GatewayHandle>,
    /// The token at start: still required when a reload removed the `admin:` section (the
    /// listener runs until the next start either way).
    start_token: Option<String>,
    /// Whether the listener is on a loopback address (no token is allowed only there).
    loopback: bool,
}

impl AdminState {
    /// The token required now: the live config's, or the start one without an `admin:` section.
    fn token(&self) -> Option<String> {
        let live = self
            .gw
            .upgrade()
            .and_then(|gw| gw.snapshot().config.admin.as_ref().map(|a| a.token.clone()));
        live.unwrap_or_else(|| self.start_token.clone())
            .filter(|t| !t.is_empty())
    }

    fn gateway(&self) -> Option<Arc<dyn GatewayHandle>> {
        self.gw.upgrade()
    }
}

/// Binds `addr` and serves the admin API for `gw` until [`AdminServer::stop`].
pub async fn start(
    addr: SocketAddr,
    gw: Weak<dyn GatewayHandle>,
    token: Option<String>,
) -> std::io::Result<AdminServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let state = AdminState {
        gw,
        start_token: token,
        loopback: local.ip().is_loopback(),
    };
    let app = routes::router(state);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok(AdminServer {
        local,
        stop: Some(tx),
        task,
    })
}

impl AdminServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting, lets requests in progress finish (up to two seconds), then closes.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}
