//! Listeners: bound sockets and their accept loops. Each can be started, stopped or handed over on
//! its own, which is how a reload adds, removes or renames listeners without restarting.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::server::{self, Drain, Tunnels};
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
    stop: oneshot::Sender<Stop>,
    task: JoinHandle<()>,
}

/// How an accept loop ends.
#[derive(Debug)]
struct Stop {
    /// Time open connections get to finish.
    drain: Duration,
    /// Receives the listening socket and the open connections' shutdown handle instead of
    /// closing them (a hand-over to a successor listener).
    hand_back: Option<oneshot::Sender<Handed>>,
}

/// What a listener hands to its successor: the socket (with its backlog) and its connections.
#[derive(Debug)]
pub struct Handed {
    socket: TcpListener,
    connections: Drain,
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
        spec: Arc<ListenerSpec>,
        live: Arc<Live>,
        tunnels: Arc<Tunnels>,
    ) -> io::Result<Self> {
        Self::start_with(listener, Drain::default(), spec, live, tunnels)
    }

    /// Starts a successor on a handed-over socket; it adopts the predecessor's open connections.
    pub fn adopt(
        handed: Handed,
        spec: Arc<ListenerSpec>,
        live: Arc<Live>,
        tunnels: Arc<Tunnels>,
    ) -> io::Result<Self> {
        Self::start_with(handed.socket, handed.connections, spec, live, tunnels)
    }

    fn start_with(
        listener: TcpListener,
        drain: Drain,
        spec: Arc<ListenerSpec>,
        live: Arc<Live>,
        tunnels: Arc<Tunnels>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        // Already set when the spec inherited it (same socket); either way it is `local`.
        let _ = spec.bound.set(local);
        let (stop, mut stopped) = oneshot::channel::<Stop>();
        let name = spec.name.clone();
        let configured = spec.address;
        let task_name = name.clone();
        let task = tokio::spawn(async move {
            let stop = loop {
                tokio::select! {
                    biased;
                    stop = &mut stopped => {
                        break stop.unwrap_or(Stop { drain: Duration::ZERO, hand_back: None });
                    }
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let current = live
                                .load()
                                .listener(&task_name)
                                .cloned()
                                .unwrap_or_else(|| spec.clone());
                            let (live, tunnels) = (live.clone(), tunnels.clone());
                            // Every poll of the connection is one turn of the clock (`clock`): its
                            // requests read the time once per poll, not once per use.
                            tokio::spawn(crate::clock::Turned::new(server::serve(
                                stream, peer, current, live, tunnels, drain.clone(),
                            )));
                        }
                        Err(e) => {
                            // Out of file descriptors and similar: back off instead of spinning.
                            tracing::warn!(listener = %task_name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            };
            // Pass the socket (connections queued in its backlog are kept) and the open
            // connections on, or close the socket and drain.
            if let Some(tx) = stop.hand_back {
                let _ = tx.send(Handed {
                    socket: listener,
                    connections: drain,
                });
                return;
            }
            drop(listener);
            drain.signal();
            if tokio::time::timeout(stop.drain, drain.wait_idle())
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
        let _ = self.stop.send(Stop {
            drain,
            hand_back: None,
        });
        let _ = self.task.await;
    }

    /// Stops in the background.
    pub fn stop_detached(self, drain: Duration) {
        tokio::spawn(self.stop(drain));
    }

    /// Stops accepting and returns the socket and open connections for a successor
    /// ([`RunningListener::adopt`]); nothing is closed.
    pub async fn hand_over(self) -> Option<Handed> {
        let (tx, rx) = oneshot::channel();
        let _ = self.stop.send(Stop {
            drain: Duration::ZERO,
            hand_back: Some(tx),
        });
        rx.await.ok()
    }
}
