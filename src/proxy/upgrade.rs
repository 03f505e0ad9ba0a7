//! Upgraded connections (WebSocket and other `Upgrade` protocols): once the upstream answered 101,
//! the two sides are joined byte for byte. A tunnel belongs to no snapshot, so reloads never touch it.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::server::Tunnels;

/// Joins the client and upstream connections once both upgrades complete.
pub(crate) fn spawn_tunnel(client: OnUpgrade, upstream: OnUpgrade, tunnels: Arc<Tunnels>) {
    let token = tunnels.open();
    tokio::spawn(async move {
        let _token = token;
        let (c, u) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut c = TokioIo::new(c);
        let mut u = TokioIo::new(u);
        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
            tracing::debug!(error = %e, "tunnel closed with an error");
        }
    });
}
