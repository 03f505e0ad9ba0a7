//! An upstream's response head reaches an HTTP/1.1 client the same whether the route has plugins
//! or not. Without plugins, the native HTTP/1 codecs pass the upstream's fields through as lines
//! (no header map: `http1::RawFields`); with a plugin they go through a map, the proxy's
//! hop-by-hop rules and the plugin chain. A raw upstream sends hostile and unusual heads, a raw
//! client reads what each route made of them, and the two must match byte for byte (once the
//! request id and the gateway's own `Date` are set aside), besides what each case asserts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{config, gateway, h2c_client};

/// The canned answers, by the last path segment of the request.
fn answer(case: &str) -> Vec<u8> {
    let text: &[u8] = match case {
        // Mixed case, the connection's own fields, an Upgrade that is no upgrade.
        "hop" => b"HTTP/1.1 200 OK\r\nServer: Raw\r\nKEEP-ALIVE: timeout=5\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\nX-Mixed-Case: Yes\r\nContent-Length: 2\r\n\r\nok",
        // A Connection that names another field: that field goes too.
        "named" => b"HTTP/1.1 200 OK\r\nConnection: x-hop, close\r\nX-Hop: secret\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\nok",
        "chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        // Framed twice: Transfer-Encoding wins, Content-Length must not reach the client.
        "both" => b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        // Fields only the gateway may set.
        "consumer" => b"HTTP/1.1 200 OK\r\nX-Consumer-Name: mallory\r\nx-anonymous-consumer: true\r\nX-Other: 1\r\nContent-Length: 2\r\n\r\nok",
        "te" => b"HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 2\r\n\r\nok",
        "nocontent" => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
        "notmodified" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 40\r\n\r\n",
        "dated" => b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
        "cookies" => b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nVary: Accept\r\nContent-Length: 2\r\n\r\nok",
        // Tabs and obs-text in a value, no space after the colon, bare LF line ends.
        "odd" => b"HTTP/1.1 200 OK\nX-Tab:a\tb\nX-Obs: caf\xc3\xa9 \xff\nContent-Length: 2\n\nok",
        "unframed" => b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil close",
        "badlength" => b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nok",
        // The upstream's own request id: the gateway's replaces it.
        "ownid" => b"HTTP/1.1 200 OK\r\nX-Request-ID: from-upstream\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok",
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    };
    text.to_vec()
}

/// A raw upstream: reads each request head, answers it with [`answer`] for its last path
/// segment, and closes after an answer that has no framing.
async fn raw_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = find(&buf, b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let target = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let case = target.rsplit('/').next().unwrap_or("").to_string();
                    if s.write_all(&answer(&case)).await.is_err() {
                        return;
                    }
                    if case == "unframed" {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends one request on a fresh connection and reads the whole answer (until the connection
/// closes: the request says `Connection: close`).
async fn fetch(gw: SocketAddr, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(gw).await.unwrap();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the answer ends")
        .unwrap();
    String::from_utf8_lossy(&out).to_string()
}

/// The head's lines, without the request id and the gateway's own `Date` (which differ
/// between two answers).
fn comparable(answer: &str) -> String {
    // A problem body names the request id too.
    let answer = match answer.find("\"request_id\":\"") {
        Some(at) => {
            let end = answer[at + 14..]
                .find('"')
                .map_or(answer.len(), |e| at + 14 + e);
            format!("{}{}", &answer[..at], &answer[end..])
        }
        None => answer.to_string(),
    };
    answer
        .split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            let own_date = l.starts_with("date:") && !l.contains("2030");
            !l.starts_with("x-request-id:") && !own_date
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A gateway with two routes to the upstream at `up`: `/plain` without plugins and `/plugged` with
/// a `headers` plugin touching only the request (the answer goes through the plugin chain untouched).
async fn plain_and_plugged(up: SocketAddr) -> common::TestGateway {
    gateway(&config(&format!(
        "upstreams: {{ u: {{ targets: [{{ url: \"http://{up}\" }}] }} }}\nroutes:\n  - {{ name: plain, match: {{ paths: [\"/plain\"] }}, upstream: u }}\n  - {{ name: plugged, match: {{ paths: [\"/plugged\"] }}, upstream: u, plugins: {{ headers: {{ request: {{ set: {{ x-probe: \"1\" }} }} }} }} }}\n"
    )))
    .await
}

fn head_of(answer: &str) -> &str {
    answer.split("\r\n\r\n").next().unwrap_or("")
}

#[tokio::test]
async fn an_upstream_head_reaches_the_client_alike_with_and_without_plugins() {
    let up = raw_upstream().await;
    let gw = plain_and_plugged(up).await;
    let cases = [
        "hop",
        "named",
        "chunked",
        "both",
        "consumer",
        "te",
        "nocontent",
        "notmodified",
        "dated",
        "cookies",
        "odd",
        "unframed",
        "badlength",
        "ownid",
    ];
    for method in ["GET", "HEAD"] {
        for case in cases {
            let plain = fetch(gw.addr, method, &format!("/plain/{case}")).await;
            let plugged = fetch(gw.addr, method, &format!("/plugged/{case}")).await;
            assert_eq!(
                comparable(&plain),
                comparable(&plugged),
                "{method} {case}: the two routes answered differently"
            );
            let head = head_of(&plain).to_ascii_lowercase();
            let id_lines = head.matches("\r\nx-request-id: ").count();
            assert_eq!(id_lines, 1, "{method} {case}: one request id\n{plain}");
            let date_lines = head.matches("\r\ndate: ").count();
            assert_eq!(date_lines, 1, "{method} {case}: one Date\n{plain}");
            match case {
                "hop" => {
                    for gone in [
                        "keep-alive:",
                        "proxy-connection:",
                        "upgrade:",
                        "proxy-authenticate:",
                    ] {
                        assert!(!head.contains(gone), "{method} {case}: {gone}\n{plain}");
                    }
                    assert!(head.contains("\r\nserver: raw"), "{plain}");
                    assert!(head.contains("\r\nx-mixed-case: Yes".to_ascii_lowercase().as_str()));
                }
                "named" => {
                    assert!(!head.contains("x-hop"), "{plain}");
                    assert!(head.contains("\r\nx-kept: 1"), "{plain}");
                    assert!(head.contains("\r\nconnection: close"), "{plain}");
                }
                "chunked" if method == "GET" => {
                    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{plain}");
                    assert!(plain.ends_with("3\r\nabc\r\n0\r\n\r\n"), "{plain}");
                }
                "both" => {
                    assert!(!head.contains("content-length"), "{plain}");
                    assert!(head.starts_with("http/1.1 200"), "{plain}");
                }
                "consumer" => {
                    assert!(!head.contains("consumer"), "{plain}");
                    assert!(head.contains("\r\nx-other: 1"), "{plain}");
                }
                "te" => assert!(head.contains("\r\nte: trailers"), "{plain}"),
                "nocontent" => {
                    assert!(head.starts_with("http/1.1 204"), "{plain}");
                    // RFC 9110 §8.6: no `Content-Length` on a 204, whichever codec answers.
                    assert!(!head.contains("content-length"), "{plain}");
                    assert!(head.contains("\r\nx-a: 1"), "{plain}");
                }
                // No body (the native codec keeps the upstream's `Content-Length`, hyper's drops it).
                "notmodified" => assert!(plain.ends_with("\r\n\r\n"), "{plain}"),
                "dated" => assert!(head.contains("2030"), "{plain}"),
                "cookies" => {
                    assert!(
                        head.contains("\r\nset-cookie: a=1\r\nset-cookie: b=2"),
                        "{plain}"
                    )
                }
                "odd" => {
                    assert!(plain.contains("\r\nx-tab: a\tb\r\n"), "{plain}");
                    assert!(plain.contains("\r\nx-obs: café \u{fffd}"), "{plain}");
                }
                "badlength" => assert!(head.starts_with("http/1.1 502"), "{plain}"),
                "ownid" => {
                    assert!(!head.contains("from-upstream"), "{method} {case}\n{plain}");
                    assert!(head.contains("\r\nx-a: 1"), "{method} {case}\n{plain}");
                }
                _ => {}
            }
        }
    }
}

/// Over HTTP/2 too (hyper's server, the same session): a `204` reaches the client without the
/// upstream's `Content-Length`, with and without plugins.
#[tokio::test]
async fn a_204_has_no_content_length_over_http2() {
    let up = raw_upstream().await;
    let gw = plain_and_plugged(up).await;
    let h2 = h2c_client();
    for route in ["plain", "plugged"] {
        let resp = h2
            .get(format!("http://{}/{route}/nocontent", gw.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 204, "{route}");
        assert_eq!(resp.headers()["x-a"], "1", "{route}");
        assert!(
            resp.headers().get("content-length").is_none(),
            "{route}: {:?}",
            resp.headers()
        );
    }
}
