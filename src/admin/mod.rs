//! The admin API: JSON over HTTP on its own listener (loopback by default), never on a proxy
//! listener, and never serving proxied routes. It reads the live snapshot and changes the
//! config only through the one reload path (`runtime::reload`). Its paths are described by
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

use tokio::sync::oneshot;

use crate::runtime::Gateway;

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
    gw: Weak<Gateway>,
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

    fn gateway(&self) -> Option<Arc<Gateway>> {
        self.gw.upgrade()
    }
}

/// Binds `addr` and serves the admin API for `gw` until [`AdminServer::stop`].
pub async fn start(
    addr: SocketAddr,
    gw: Weak<Gateway>,
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
