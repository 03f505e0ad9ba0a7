//! WebSocket (HTTP/1.1 `Upgrade`) through the gateway, over real sockets: the handshake, echoed
//! text/binary/large messages, ping/pong and close; upgrades an upstream refuses; and tunnels
//! that outlive a reload, even one that moves their route to another upstream.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

/// A WebSocket echo server on a raw listener: text comes back prefixed with `name:`, binary
/// comes back unchanged. Pings are answered by tungstenite itself.
struct WsUpstream {
    addr: SocketAddr,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
}

impl WsUpstream {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn ws_echo(name: &'static str) -> WsUpstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ws upstream");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("{name}:{}", t.as_str())),
                        Message::Binary(b) => Message::Binary(b),
                        // Pong replies and the close handshake are tungstenite's job; reading on
                        // flushes them.
                        Message::Ping(_)
                        | Message::Pong(_)
                        | Message::Close(_)
                        | Message::Frame(_) => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    WsUpstream { addr, connections }
}

fn ws_config(upstream_url: &str) -> String {
    common::config(&format!(
        "upstreams:\n  ws:\n    targets:\n      - url: {upstream_url}\nroutes:\n  - name: ws\n    match: {{ paths: [/ws] }}\n    upstream: ws\n"
    ))
}

/// Opens a WebSocket through the gateway and checks the handshake answer is a 101.
async fn connect(addr: SocketAddr, path: &str) -> Ws {
    let (ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("handshake in time")
    .expect("handshake succeeds");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(
        resp.headers()
            .get("upgrade")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "101 carries Upgrade: websocket: {:?}",
        resp.headers()
    );
    ws
}

/// The next data or control message (not a close), within `WAIT`.
async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("message in time")
        .expect("stream still open")
        .expect("valid message")
}

async fn text_roundtrip(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send text");
    match next(ws).await {
        Message::Text(t) => t.as_str().to_owned(),
        other => panic!("expected a text echo, got {other:?}"),
    }
}

/// Polls until the gateway has no open tunnel, or panics after `WAIT`.
async fn wait_no_tunnels(gw: &common::TestGateway) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.gw.open_tunnels() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tunnel still open: {}",
            gw.gw.open_tunnels()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echoes_text_binary_large_ping_and_closes() {
    let up = ws_echo("one").await;
    let gw = common::gateway(&ws_config(&up.url())).await;
    assert_eq!(gw.gw.open_tunnels(), 0);

    let mut ws = connect(gw.addr, "/ws").await;
    assert_eq!(gw.gw.open_tunnels(), 1, "a 101 opens one tunnel");
    assert_eq!(up.connections(), 1);

    // Text.
    assert_eq!(text_roundtrip(&mut ws, "hello").await, "one:hello");
    assert_eq!(text_roundtrip(&mut ws, "grüße ✓").await, "one:grüße ✓");

    // Binary, including bytes that are not UTF-8.
    let bin = Bytes::from_static(&[0, 159, 146, 150, 255, 1, 2, 3]);
    ws.send(Message::Binary(bin.clone()))
        .await
        .expect("send binary");
    assert_eq!(next(&mut ws).await, Message::Binary(bin));

    // A 1 MiB message (several reads and writes on each side of the tunnel).
    let large: Bytes = (0..1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    ws.send(Message::Binary(large.clone()))
        .await
        .expect("send 1 MiB");
    match next(&mut ws).await {
        Message::Binary(b) => {
            assert_eq!(b.len(), large.len(), "1 MiB echo length");
            assert!(b == large, "1 MiB echo content differs");
        }
        other => panic!("expected the 1 MiB binary echo, got {other:?}"),
    }

    // Ping is answered with a pong carrying the same payload.
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("send ping");
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );

    // Still a working channel after the control frames.
    assert_eq!(
        text_roundtrip(&mut ws, "after ping").await,
        "one:after ping"
    );

    // Close handshake: the client's close is answered with a close, then the stream ends.
    ws.close(None).await.expect("send close");
    let mut saw_close = false;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close answered in time")
        {
            Some(Ok(Message::Close(_))) => saw_close = true,
            Some(Ok(other)) => panic!("unexpected message after close: {other:?}"),
            None | Some(Err(tungstenite::Error::ConnectionClosed)) => break,
            Some(Err(e)) => panic!("close ended with an error: {e}"),
        }
    }
    assert!(
        saw_close,
        "the upstream's close frame came back through the tunnel"
    );
    drop(ws);
    wait_no_tunnels(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_passes_status_and_opens_no_tunnel() {
    // Answers 426 on /ws/426 and a plain 200 elsewhere, never 101.
    let up = common::upstream(|req: Request<Incoming>| async move {
        let status = if req.uri().path().ends_with("/426") {
            StatusCode::UPGRADE_REQUIRED
        } else {
            StatusCode::OK
        };
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(common::full(format!("refused {}", status.as_u16())))
            .expect("response")
    })
    .await;
    let gw = common::gateway(&ws_config(&up.url())).await;

    for (path, want) in [
        ("/ws/426", StatusCode::UPGRADE_REQUIRED),
        ("/ws", StatusCode::OK),
    ] {
        let err = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{}{path}", gw.addr)),
        )
        .await
        .expect("answer in time")
        .expect_err("the handshake must fail");
        match err {
            tungstenite::Error::Http(resp) => {
                assert_eq!(
                    resp.status(),
                    want,
                    "{path}: the client sees the upstream's status"
                );
                let body = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                assert_eq!(
                    body,
                    format!("refused {}", want.as_u16()),
                    "{path}: body passes through"
                );
            }
            other => panic!("{path}: expected an HTTP error response, got {other}"),
        }
        assert_eq!(
            gw.gw.open_tunnels(),
            0,
            "{path}: no tunnel for a refused upgrade"
        );
    }
    assert_eq!(up.requests(), 2);

    // The same over a raw socket: the answer is the upstream's 200 (not a 101, no Upgrade header
    // leaked back), and the connection is still plain HTTP afterwards.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let first = common::read_response(&mut s).await;
    assert!(
        first.starts_with("HTTP/1.1 200"),
        "refused upgrade answer: {first}"
    );
    assert!(
        first.ends_with("refused 200"),
        "body of refused upgrade: {first}"
    );
    assert!(
        !first.to_ascii_lowercase().contains("\r\nupgrade:"),
        "no Upgrade header on a 200: {first}"
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /ws/426 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write second");
    let second = common::read_response(&mut s).await;
    assert!(
        second.starts_with("HTTP/1.1 426"),
        "second request on the same connection: {second}"
    );
    assert_eq!(gw.gw.open_tunnels(), 0);
    assert_eq!(up.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_survives_reload_that_keeps_its_route() {
    let up = ws_echo("one").await;
    let yaml = ws_config(&up.url());
    let gw = common::gateway(&yaml).await;
    let mut ws = connect(gw.addr, "/ws").await;
    assert_eq!(text_roundtrip(&mut ws, "before").await, "one:before");

    // An unrelated change: a new route.
    let changed = format!(
        "{yaml}  - name: status\n    match: {{ paths: [{{ exact: /status }}] }}\n    plugins:\n      respond: {{ status: 200, body: ok }}\n"
    );
    gw.rewrite(&changed).await;
    let outcome = gw.gw.reload().await.expect("reload accepted");
    assert!(outcome.generation > 0);
    let status = common::client()
        .get(gw.url("/status"))
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), StatusCode::OK, "the new config is live");

    assert_eq!(text_roundtrip(&mut ws, "after").await, "one:after");
    assert_eq!(gw.gw.open_tunnels(), 1);
    ws.close(None).await.expect("close");
    drop(ws);
    wait_no_tunnels(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_survives_reload_that_moves_its_route() {
    let one = ws_echo("one").await;
    let two = ws_echo("two").await;
    let gw = common::gateway(&ws_config(&one.url())).await;

    let mut old = connect(gw.addr, "/ws").await;
    assert_eq!(text_roundtrip(&mut old, "before").await, "one:before");

    // The route now points at `two`.
    gw.rewrite(&ws_config(&two.url())).await;
    gw.gw.reload().await.expect("reload accepted");

    // The open tunnel still reaches `one`.
    assert_eq!(
        text_roundtrip(&mut old, "after reload").await,
        "one:after reload"
    );
    assert_eq!(gw.gw.open_tunnels(), 1);

    // A new WebSocket follows the new route.
    let mut new = connect(gw.addr, "/ws").await;
    assert_eq!(text_roundtrip(&mut new, "fresh").await, "two:fresh");
    assert_eq!(gw.gw.open_tunnels(), 2);

    // Both keep working side by side, each on its own upstream.
    assert_eq!(text_roundtrip(&mut old, "old again").await, "one:old again");
    assert_eq!(text_roundtrip(&mut new, "new again").await, "two:new again");
    assert_eq!(one.connections(), 1, "the old tunnel was not reconnected");
    assert_eq!(two.connections(), 1);

    old.close(None).await.expect("close old");
    new.close(None).await.expect("close new");
    drop((old, new));
    wait_no_tunnels(&gw).await;
}

/// A raw upstream that accepts any upgrade with a 101 and then sends without end, counting the
/// bytes the socket took; it stops when its peer is gone.
async fn flooding_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let closed = Arc::new(AtomicUsize::new(0));
    let c = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: flood\r\n\r\n";
                if s.write_all(reply).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while s.write_all(&chunk).await.is_ok() {}
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_client_reads_nothing_is_closed_after_send_timeout_with_either_codec() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for codec in ["native", "hyper"] {
        let (up, closed) = flooding_upstream().await;
        let yaml = ws_config(&format!("http://{up}"))
            .replace(
                "server: { drain_timeout: 5s }",
                &format!("server: {{ drain_timeout: 5s, http1: {codec} }}"),
            )
            .replacen(
                "    address: 127.0.0.1:0\n",
                "    address: 127.0.0.1:0\n    limits: { send_timeout: 1s }\n",
                1,
            );
        assert!(yaml.contains(&format!("http1: {codec}")), "{yaml}");
        let gw = common::gateway(&yaml).await;
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: flood\r\n\r\n",
        )
        .await
        .expect("write");
        let mut first = [0u8; 12];
        s.read_exact(&mut first).await.expect("101");
        assert_eq!(&first, b"HTTP/1.1 101", "{codec}");
        // The client reads nothing more: once the socket buffers are full, the gateway's writes
        // to it make no progress, and after `send_timeout` the tunnel is closed.
        let deadline = tokio::time::Instant::now() + WAIT;
        while gw.gw.open_tunnels() != 0 || closed.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{codec}: the tunnel stayed open ({} open, upstream closed: {})",
                gw.gw.open_tunnels(),
                closed.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(s);
    }
}

#[tokio::test]
async fn websockets_through_a_caching_route_are_not_coalesced_or_stored() {
    let up = ws_echo("e").await;
    let yaml = ws_config(&up.url()).replace(
        "    upstream: ws\n",
        "    upstream: ws\n    plugins:\n      cache: { lock: { timeout: 60s } }\n",
    );
    let gw = common::gateway(&yaml).await;
    // Two handshakes at once on the same key: the second must not wait for the first's "answer".
    let (mut a, mut b) = tokio::join!(connect(gw.addr, "/ws"), connect(gw.addr, "/ws"));
    for (ws, text) in [(&mut a, "one"), (&mut b, "two")] {
        ws.send(Message::text(text)).await.expect("send");
        let reply = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("reply in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(
            reply.into_text().expect("text").as_str(),
            format!("e:{text}")
        );
    }
    assert_eq!(up.connections(), 2);
    // The cache says it leaves handshakes alone.
    let text = common::explain_cli(&gw.path(), &["GET", "/ws", "-H", "upgrade: websocket"]);
    assert!(
        text.contains("cache: bypassed: a protocol upgrade"),
        "{text}"
    );
}
