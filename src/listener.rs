//! Listeners: bound sockets and their accept loops. Each can be started and stopped on its own,
//! which is how a reload adds or removes listeners without restarting the process.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::{self, Tunnels};
use crate::snapshot::{ListenerSpec, Live};

/// Errors binding a listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The address could not be bound.
    #[error("listener {name:?} cannot bind {address}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Configured address.
        address: SocketAddr,
        /// OS error.
        source: io::Error,
    },
}

/// A listener that is accepting connections.
#[derive(Debug)]
pub struct RunningListener {
    /// Config name.
    pub name: Arc<str>,
    /// Address as configured.
    pub configured: SocketAddr,
    /// Address actually bound (differs when the configured port is 0).
    pub local: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

/// Binds a listener's socket (SO_REUSEADDR, backlog 1024).
pub fn bind(spec: &ListenerSpec) -> Result<TcpListener, ListenerError> {
    let err = |source| ListenerError::Bind {
        name: spec.name.to_string(),
        address: spec.address,
        source,
    };
    let socket = if spec.address.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(spec.address).map_err(err)?;
    socket.listen(1024).map_err(err)
}

impl RunningListener {
    /// Starts accepting on `listener`. Each connection takes the listener's settings from the
    /// snapshot current at accept time.
    pub fn start(
        listener: TcpListener,
        spec: ListenerSpec,
        live: Arc<Live>,
        tunnels: Arc<Tunnels>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(None);
        let name = spec.name.clone();
        let configured = spec.address;
        let task_name = name.clone();
        let task = tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            let drain = loop {
                tokio::select! {
                    biased;
                    changed = stopped.changed() => {
                        break if changed.is_ok() { *stopped.borrow() } else { Some(Duration::ZERO) };
                    }
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let current = live.load().listener(&task_name).cloned().unwrap_or_else(|| spec.clone());
                            let watcher = graceful.watcher();
                            tokio::spawn(server::serve(stream, peer, current, live.clone(), tunnels.clone(), watcher));
                        }
                        Err(e) => {
                            // Out of file descriptors and similar: back off instead of spinning.
                            tracing::warn!(listener = %task_name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            };
            drop(listener);
            let budget = drain.unwrap_or(Duration::ZERO);
            if tokio::time::timeout(budget, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(listener = %task_name, "drain timeout reached with connections still open");
            }
        });
        Ok(RunningListener {
            name,
            configured,
            local,
            stop,
            task,
        })
    }

    /// Stops accepting, asks open connections to finish (HTTP/1 after the current response,
    /// HTTP/2 with GOAWAY), and waits up to `drain` for them.
    pub async fn stop(self, drain: Duration) {
        let _ = self.stop.send(Some(drain));
        let _ = self.task.await;
    }

    /// Stops in the background.
    pub fn stop_detached(self, drain: Duration) {
        tokio::spawn(self.stop(drain));
    }
}
