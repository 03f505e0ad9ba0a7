//! The gRPC reflection client (`frontdesk::grpc::reflect`) against real servers over sockets:
//! grpc-testsvc with reflection v1, v1alpha only (the fallback), off, and behind TLS; and scripted
//! hostile servers (malformed replies, import cycles, error responses, oversize frames, silence).
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use frontdesk::grpc::reflect::{fetch, FetchOptions, ReflectError};
use grpc_testsvc::{serve_with, Options, Reflection};
use prost::Message as _;
use prost_reflect::{DescriptorPool, Value};
use tokio::net::{TcpListener, TcpStream};

async fn testsvc(opts: Options) -> grpc_testsvc::Handle {
    serve_with(TcpListener::bind("127.0.0.1:0").await.unwrap(), opts).await
}

/// The `google.api.http` rule's `get` pattern of `service.method` in `pool`.
fn http_get(pool: &DescriptorPool, service: &str, method: &str) -> Option<String> {
    let ext = pool.get_extension_by_name("google.api.http")?;
    let svc = pool.get_service_by_name(service)?;
    let m = svc.methods().find(|m| m.name() == method)?;
    match m.options().get_extension(&ext).into_owned() {
        Value::Message(rule) => rule
            .get_field_by_name("get")
            .and_then(|v| v.as_str().map(str::to_string)),
        _ => None,
    }
}

fn assert_dependency_order(set: &prost_types::FileDescriptorSet) {
    let mut seen = std::collections::HashSet::new();
    for f in &set.file {
        for d in &f.dependency {
            assert!(
                seen.contains(d.as_str()),
                "{} before its import {d}",
                f.name()
            );
        }
        seen.insert(f.name().to_string());
    }
}

#[tokio::test]
async fn v1_fetches_every_service_with_its_annotations() {
    let svc = testsvc(Options::default()).await;
    let got = fetch(&svc.url(), &FetchOptions::default()).await.unwrap();
    assert_eq!(got.version, "v1");
    assert_eq!(
        got.services,
        ["shop.v1.Shop", "shop.v1.Legacy", "shop.v1.Extra"]
    );
    assert_dependency_order(&got.set);
    let names: Vec<&str> = got.set.file.iter().map(|f| f.name()).collect();
    for f in [
        "shop/v1/shop.proto",
        "shop/v1/extra.proto",
        "google/api/annotations.proto",
        "google/api/http.proto",
        "google/protobuf/descriptor.proto",
        "google/protobuf/timestamp.proto",
    ] {
        assert!(names.contains(&f), "{f} missing from {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("reflection")), "{names:?}");

    // The server's own bytes keep the extension options.
    let pool = DescriptorPool::decode(got.encoded.as_slice()).unwrap();
    assert_eq!(
        http_get(&pool, "shop.v1.Shop", "GetItem").as_deref(),
        Some("/v1/shelves/{shelf}/items/{id}")
    );
    assert_eq!(
        http_get(&pool, "shop.v1.Extra", "Hello").as_deref(),
        Some("/v1/hello/{name}")
    );
    assert!(pool
        .get_message_by_name("google.protobuf.Timestamp")
        .is_some());
    // One stream for the whole fetch.
    assert_eq!(svc.calls("ServerReflectionInfo"), 1);
}

#[tokio::test]
async fn falls_back_to_v1alpha_when_v1_is_unimplemented() {
    let svc = testsvc(Options {
        reflection: Reflection::V1Alpha,
        extra: false,
        ..Options::default()
    })
    .await;
    let got = fetch(&svc.url(), &FetchOptions::default()).await.unwrap();
    assert_eq!(got.version, "v1alpha");
    assert_eq!(got.services, ["shop.v1.Shop", "shop.v1.Legacy"]);
    assert_dependency_order(&got.set);
    assert!(!got
        .set
        .file
        .iter()
        .any(|f| f.name() == "shop/v1/extra.proto"));
    let pool = DescriptorPool::decode(got.encoded.as_slice()).unwrap();
    assert_eq!(
        http_get(&pool, "shop.v1.Shop", "GetItem").as_deref(),
        Some("/v1/shelves/{shelf}/items/{id}")
    );
    // v1 first (UNIMPLEMENTED), then v1alpha.
    assert_eq!(svc.calls("ServerReflectionInfo"), 2);
}

#[tokio::test]
async fn a_server_without_reflection_is_a_clear_error() {
    let svc = testsvc(Options {
        reflection: Reflection::Off,
        ..Options::default()
    })
    .await;
    let err = fetch(&svc.url(), &FetchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ReflectError::Unsupported), "{err:?}");
    assert!(err.to_string().contains("reflection"), "{err}");
}

#[tokio::test]
async fn connection_refused_names_the_address() {
    let addr = common::closed_port().await;
    let err = fetch(&format!("http://{addr}"), &FetchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ReflectError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// A TLS front (ALPN h2) for `backend`, with a leaf for localhost signed by a test CA; returns
/// its address and the CA's PEM.
async fn tls_front(backend: SocketAddr, dir: &std::path::Path) -> (SocketAddr, Vec<u8>) {
    let ca = common::pki::Ca::new("reflect test CA");
    let ca_path = ca.write(dir, "ca");
    let (cert, key) = ca.leaf(dir, "leaf", &["localhost"]);
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            frontdesk::tls::load_certs(&cert).unwrap(),
            frontdesk::tls::load_key(&key).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut up = TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, std::fs::read(ca_path).unwrap())
}

#[tokio::test]
async fn https_with_an_extra_ca() {
    let svc = testsvc(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (front, ca) = tls_front(svc.addr(), dir.path()).await;
    let url = format!("https://localhost:{}", front.port());

    let got = fetch(
        &url,
        &FetchOptions {
            ca_pem: Some(ca),
            ..FetchOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(got.version, "v1");
    assert!(got.services.contains(&"shop.v1.Shop".to_string()));

    // Without the CA the server is not trusted.
    let err = fetch(&url, &FetchOptions::default()).await.unwrap_err();
    assert!(matches!(err, ReflectError::Tls { .. }), "{err:?}");
}

// === scripted servers ===

/// Hand-written reflection replies (the same wire schema as v1 and v1alpha).
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Response {
        #[prost(message, optional, tag = "4")]
        pub files: Option<Files>,
        #[prost(message, optional, tag = "6")]
        pub services: Option<Services>,
        #[prost(message, optional, tag = "7")]
        pub error: Option<Error>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Files {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub file: Vec<Vec<u8>>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Services {
        #[prost(message, repeated, tag = "1")]
        pub service: Vec<Service>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Service {
        #[prost(string, tag = "1")]
        pub name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Error {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
    }
}

fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

fn services(names: &[&str]) -> Vec<u8> {
    wire::Response {
        services: Some(wire::Services {
            service: names
                .iter()
                .map(|n| wire::Service {
                    name: n.to_string(),
                })
                .collect(),
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn file(name: &str, package: &str, deps: &[&str], service: Option<&str>) -> Vec<u8> {
    let fd = prost_types::FileDescriptorProto {
        name: Some(name.into()),
        package: Some(package.into()),
        dependency: deps.iter().map(|d| d.to_string()).collect(),
        service: service
            .map(|s| prost_types::ServiceDescriptorProto {
                name: Some(s.into()),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    };
    wire::Response {
        files: Some(wire::Files {
            file: vec![fd.encode_to_vec()],
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// An h2c server that answers every reflection stream with `body` at once (replies in order,
/// whatever is asked), or never answers when `body` is `None`.
async fn scripted(body: Option<Bytes>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let Some(body) = body else {
                            std::future::pending::<()>().await;
                            unreachable!()
                        };
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(http_body_util::Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    addr
}

async fn fetch_scripted(parts: &[Vec<u8>]) -> ReflectError {
    let mut body = BytesMut::new();
    for p in parts {
        body.put_slice(p);
    }
    let addr = scripted(Some(body.freeze())).await;
    fetch(&format!("http://{addr}"), &FetchOptions::default())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn malformed_replies_are_errors_naming_the_request() {
    let err = fetch_scripted(&[frame(&[0xff, 0xff, 0xff, 0x01]).to_vec()]).await;
    assert!(
        matches!(&err, ReflectError::Malformed { request, .. } if request == "list_services"),
        "{err:?}"
    );
    // A reply of the wrong kind.
    let err = fetch_scripted(&[
        frame(&services(&["x.S"])).to_vec(),
        frame(&services(&["x.T"])).to_vec(),
    ])
    .await;
    assert!(
        matches!(&err, ReflectError::Malformed { request, .. } if request == "file_containing_symbol x.S"),
        "{err:?}"
    );
    // The stream ends before the reply.
    let err = fetch_scripted(&[frame(&services(&["x.S"])).to_vec()]).await;
    assert!(
        matches!(&err, ReflectError::Malformed { request, .. } if request == "file_containing_symbol x.S"),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_error_response_names_the_symbol() {
    let error = wire::Response {
        error: Some(wire::Error {
            code: 5,
            message: "no such symbol".into(),
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let err = fetch_scripted(&[frame(&services(&["x.S"])).to_vec(), frame(&error).to_vec()]).await;
    assert!(
        matches!(err, ReflectError::Server { code: 5, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("x.S") && text.contains("no such symbol"),
        "{text}"
    );
}

#[tokio::test]
async fn an_import_cycle_is_an_error() {
    let err = fetch_scripted(&[
        frame(&services(&["x.S"])).to_vec(),
        frame(&file("a.proto", "x", &["b.proto"], Some("S"))).to_vec(),
        frame(&file("b.proto", "x", &["a.proto"], None)).to_vec(),
    ])
    .await;
    assert!(matches!(err, ReflectError::Cycle(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "import cycle: a.proto -> b.proto -> a.proto"
    );
}

#[tokio::test]
async fn a_file_the_server_cannot_give_is_an_error() {
    // Asked for b.proto, the server sends c.proto.
    let err = fetch_scripted(&[
        frame(&services(&["x.S"])).to_vec(),
        frame(&file("a.proto", "x", &["b.proto"], Some("S"))).to_vec(),
        frame(&file("c.proto", "x", &[], None)).to_vec(),
    ])
    .await;
    assert!(
        matches!(&err, ReflectError::Malformed { request, .. } if request == "file_by_filename b.proto"),
        "{err:?}"
    );
}

#[tokio::test]
async fn oversize_frames_are_refused_before_reading_them() {
    let mut huge = BytesMut::new();
    huge.put_u8(0);
    huge.put_u32(u32::MAX);
    let err = fetch_scripted(&[huge.to_vec()]).await;
    assert!(matches!(err, ReflectError::TooLarge(_)), "{err:?}");
    // A smaller budget counts every reply.
    let addr = scripted(Some(frame(&services(&["x.S"])))).await;
    let err = fetch(
        &format!("http://{addr}"),
        &FetchOptions {
            max_bytes: 3,
            ..FetchOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ReflectError::TooLarge(3)), "{err:?}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let addr = scripted(None).await;
    let err = fetch(
        &format!("http://{addr}"),
        &FetchOptions {
            timeout: Duration::from_millis(300),
            ..FetchOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ReflectError::Timeout(_)), "{err:?}");
}
