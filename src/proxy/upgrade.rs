//! Upgraded connections (WebSocket and other `Upgrade` protocols): once the upstream answered 101,
//! the two sides are joined byte for byte. A tunnel belongs to no snapshot, so reloads never touch it.

use std::sync::Arc;

use crate::body::Upgrade;

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Joins the client and upstream connections once both upgrades complete.
pub(crate) fn spawn_tunnel(client: Upgrade, upstream: Upgrade, tunnels: Arc<Tunnels>) {
    let token = tunnels.open();
    tokio::spawn(async move {
        let _token = token;
        let (mut c, mut u) = match tokio::try_join!(client.into_io(), upstream.into_io()) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
            tracing::debug!(error = %e, "tunnel closed with an error");
        }
    });
}

/// Counts open tunnels (upgraded connections), which outlive their HTTP connection.
#[derive(Debug, Default)]
pub struct Tunnels {
    open: AtomicUsize,
    closed: Notify,
}

/// Held by a running tunnel.
#[derive(Debug)]
pub struct TunnelToken(Arc<Tunnels>);

impl Tunnels {
    /// Registers a tunnel until the token drops.
    pub fn open(self: &Arc<Self>) -> TunnelToken {
        self.open.fetch_add(1, Ordering::AcqRel);
        TunnelToken(self.clone())
    }

    /// Open tunnels now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no tunnel is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TunnelToken {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}
