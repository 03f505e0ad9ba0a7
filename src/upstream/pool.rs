//! Keep-alive connections to endpoints, pooled per worker thread.
//!
//! Written here rather than taken from hyper-util's legacy client because that pool sits behind
//! one mutex shared by every request and spawns a task per request to return connections; the
//! hot path must take no lock shared across requests. Each worker thread keeps its own idle
//! connections (as nginx workers do), so checkout and return are plain thread-local operations.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;

/// A connection to one endpoint that can carry requests one at a time.
pub type Sender = SendRequest<RequestBody>;

/// Where a connection goes back when its response is done.
#[derive(Debug)]
pub struct PoolReturn {
    key: u64,
    max_idle: usize,
    sender: Sender,
}

impl PoolReturn {
    pub(crate) fn new(key: u64, max_idle: usize, sender: Sender) -> Self {
        PoolReturn {
            key,
            max_idle,
            sender,
        }
    }

    /// Puts the connection back into this thread's idle set (if there is room).
    pub fn give_back(self) {
        if self.sender.is_closed() || self.max_idle == 0 {
            return;
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry(self.key).or_default();
            if list.len() < self.max_idle {
                list.push(IdleConn {
                    sender: self.sender,
                    since: Instant::now(),
                });
            }
        });
    }
}

#[derive(Debug)]
struct IdleConn {
    sender: Sender,
    since: Instant,
}

/// Keys are already hashes; hashing them again would only cost time.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

thread_local! {
    static IDLE: RefCell<HashMap<u64, Vec<IdleConn>, BuildHasherDefault<KeyHasher>>> =
        RefCell::new(HashMap::default());
}

/// Takes the most recently used live idle connection for `key`, dropping stale ones.
pub(crate) fn checkout(key: u64, idle_timeout: Duration) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(c) = list.pop() {
            if c.sender.is_closed() || c.since.elapsed() > idle_timeout {
                continue;
            }
            return Some(c.sender);
        }
        None
    })
}

/// Why a new connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `connect_timeout` passed.
    #[error("connect timed out")]
    Timeout,
    /// Refused, unreachable, or name resolution failed.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/1 handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Opens a new connection to `addr` (`host:port`) and starts its driver task.
pub(crate) async fn connect(addr: &str, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
