//! TLS to upstreams: server verification against a configured CA, SNI override, HTTP/2 by ALPN,
//! and client certificates for mutual TLS, against a real rustls upstream with certificates
//! generated at test time.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::pki::Ca;
use common::{client, config, full, gateway};
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS upstream (ALPN h2 and http/1.1) that answers with the HTTP version it saw and whether
/// the client presented a certificate. With `client_ca`, a client certificate is required.
async fn tls_upstream(cert: &(String, String), client_ca: Option<&str>) -> SocketAddr {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.0)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&cert.1).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let has_cert = tls.get_ref().1.peer_certificates().is_some();
                let svc = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = serde_json::json!({
                            "version": format!("{:?}", req.version()),
                            "client_cert": has_cert,
                            "host": req.uri().authority().map(|a| a.to_string())
                                .or_else(|| req.headers().get("host").map(|h| h.to_str().unwrap().to_string())),
                        });
                        Ok::<_, std::convert::Infallible>(Response::new(full(body.to_string())))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn upstream_yaml(addr: SocketAddr, protocol: &str, tls: &str) -> String {
    config(&format!(
        r#"
upstreams:
  secure:
    targets: [{{ url: "https://{addr}" }}]
    protocol: {protocol}
    tls: {tls}
    health_check: {{ passive: {{ unhealthy_after: 0 }} }}
routes:
  - {{ name: r, match: {{ paths: ["/"] }}, upstream: secure }}
"#
    ))
}

#[tokio::test]
async fn https_upstreams_are_verified_and_speak_http2_or_http1_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream CA");
    let ca_path = ca.write(dir.path(), "ca");
    let leaf = ca.leaf(dir.path(), "users", &["users.internal"]);
    let addr = tls_upstream(&leaf, None).await;
    let c = client();

    for (protocol, version) in [("h2", "HTTP/2.0"), ("http1", "HTTP/1.1")] {
        let tls = format!("{{ ca: \"{ca_path}\", server_name: users.internal }}");
        let gw = gateway(&upstream_yaml(addr, protocol, &tls)).await;
        let resp = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{protocol}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["version"], version);
        assert_eq!(v["client_cert"], false);
    }

    // The certificate does not name the address we connect to: without the SNI override the
    // name check fails, and so does a CA that did not sign it.
    let gw = gateway(&upstream_yaml(
        addr,
        "h2",
        &format!("{{ ca: \"{ca_path}\" }}"),
    ))
    .await;
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 502);
    let other_ca = Ca::new("someone else").write(dir.path(), "other-ca");
    let gw = gateway(&upstream_yaml(
        addr,
        "h2",
        &format!("{{ ca: \"{other_ca}\", server_name: users.internal }}"),
    ))
    .await;
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 502);
}

#[tokio::test]
async fn mutual_tls_to_upstreams_presents_the_configured_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("upstream CA");
    let ca_path = server_ca.write(dir.path(), "ca");
    let leaf = server_ca.leaf(dir.path(), "users", &["users.internal"]);
    let client_ca = Ca::new("gateway clients CA");
    let client_ca_path = client_ca.write(dir.path(), "client-ca");
    let (gw_cert, gw_key) = client_ca.leaf(dir.path(), "gateway", &["frontdesk"]);
    let addr = tls_upstream(&leaf, Some(&client_ca_path)).await;
    let c = client();

    let with_cert = format!(
        "{{ ca: \"{ca_path}\", server_name: users.internal, client_cert: \"{gw_cert}\", client_key: \"{gw_key}\" }}"
    );
    let gw = gateway(&upstream_yaml(addr, "h2", &with_cert)).await;
    let resp = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["client_cert"], true);

    // Without the client certificate the upstream refuses the handshake.
    let without = format!("{{ ca: \"{ca_path}\", server_name: users.internal }}");
    let gw = gateway(&upstream_yaml(addr, "http1", &without)).await;
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 502);
}

#[tokio::test]
async fn unreadable_upstream_tls_files_are_config_errors_with_their_path() {
    let yaml = upstream_yaml(
        "127.0.0.1:1".parse().unwrap(),
        "h2",
        "{ ca: /nonexistent/ca.pem }",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frontdesk.yaml");
    std::fs::write(&path, yaml).unwrap();
    let err = match frontdesk::Gateway::start(&path).await {
        Ok(_) => panic!("a missing CA file must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("upstreams.secure.tls"), "{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}
