//! `frontdesk demo`: small built-in upstreams on loopback and the gateway in front of them, with an
//! embedded config, so a first run needs nothing but the binary.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The embedded demo config; `${USERS_1}`, `${USERS_2}` and `${ORDERS}` are the demo upstreams.
pub const DEMO_CONFIG: &str = include_str!("../examples/demo.yaml");

/// Starts one demo upstream that answers every request with JSON naming itself and echoing what it
/// received (method, path, the headers the gateway added).
pub async fn start_upstream(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let headers: serde_json::Map<String, serde_json::Value> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").into()))
                    .collect();
                let body = serde_json::json!({
                    "service": name,
                    "method": req.method().as_str(),
                    "path": req.uri().to_string(),
                    "headers": headers,
                });
                let mut resp = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
                resp.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                resp.headers_mut()
                    .insert("server", http::HeaderValue::from_static("demo-upstream"));
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Writes the demo config, with the upstreams' ports filled in, to a temporary directory.
pub async fn write_config(listen: &str) -> std::io::Result<PathBuf> {
    let users1 = start_upstream("users-1").await?;
    let users2 = start_upstream("users-2").await?;
    let orders = start_upstream("orders").await?;
    let text = DEMO_CONFIG
        .replace("${LISTEN:-127.0.0.1:8080}", listen)
        .replace("${USERS_1}", &format!("http://{users1}"))
        .replace("${USERS_2}", &format!("http://{users2}"))
        .replace("${ORDERS}", &format!("http://{orders}"));
    let dir = std::env::temp_dir().join(format!("frontdesk-demo-{}", std::process::id()));
    tokio::fs::create_dir_all(&dir).await?;
    let path = dir.join("frontdesk.yaml");
    tokio::fs::write(&path, text).await?;
    Ok(path)
}

/// The curl commands printed after the demo starts; `admin` is the admin listener's address.
pub fn tour(addr: SocketAddr, admin: Option<SocketAddr>) -> String {
    let admin = admin.map_or_else(String::new, |a| {
        format!(
            r#"
  # the admin API: Prometheus metrics, the effective config, and why a request goes where it goes:
  curl -s http://{a}/metrics
  curl -s -H 'authorization: Bearer demo-token' http://{a}/config
  curl -s -H 'authorization: Bearer demo-token' 'http://{a}/explain?method=GET&path=/orders/7'
"#
        )
    });
    format!(
        r#"Frontdesk demo is running on http://{addr}  (Ctrl-C to stop)

  # routing by path prefix, weighted round robin over two upstreams, /users stripped:
  curl -s http://{addr}/users/42
  # routing by exact path, template and regex; header transforms on request and response:
  curl -si http://{addr}/orders/7
  curl -si http://{addr}/v2/orders
  # a static response from the `respond` plugin, no upstream involved:
  curl -s http://{addr}/status
  # no route: a 404 problem+json body
  curl -si http://{addr}/nope
  # HTTP/2 cleartext on the same port:
  curl -s --http2-prior-knowledge http://{addr}/users/1
{admin}
Access-log lines follow, one JSON object per request:
"#
    )
}
