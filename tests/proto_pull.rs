//! `frontdesk proto pull --reflect URL -o FILE`: the real binary against grpc-testsvc.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use prost_reflect::{DescriptorPool, Value};
use tokio::net::TcpListener;

async fn pull(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_frontdesk"))
            .arg("proto")
            .arg("pull")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(url: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--reflect".to_string(),
        url.to_string(),
        "-o".to_string(),
        out.display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_writes_the_descriptor_set_with_its_annotations() {
    let svc = grpc_testsvc::serve(TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shop.pb");
    let o = pull(args(&svc.url(), &out, &[])).await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    for s in [
        "shop.v1.Shop",
        "shop.v1.Legacy",
        "shop.v1.Extra",
        "3 services",
        "files",
        "v1",
    ] {
        assert!(stderr.contains(s), "{s:?} not in {stderr}");
    }

    let pool = DescriptorPool::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let shop = pool.get_service_by_name("shop.v1.Shop").unwrap();
    let get = shop.methods().find(|m| m.name() == "GetItem").unwrap();
    let ext = pool.get_extension_by_name("google.api.http").unwrap();
    let Value::Message(rule) = get.options().get_extension(&ext).into_owned() else {
        panic!("google.api.http is not a message");
    };
    assert_eq!(
        rule.get_field_by_name("get").unwrap().as_str(),
        Some("/v1/shelves/{shelf}/items/{id}")
    );
    assert!(pool
        .get_file_by_name("google/protobuf/timestamp.proto")
        .is_some());
    let files = stderr
        .split_whitespace()
        .zip(stderr.split_whitespace().skip(1))
        .find(|(_, w)| w.starts_with("files"))
        .map(|(n, _)| n.parse::<usize>().unwrap())
        .unwrap();
    assert_eq!(files, pool.files().len(), "{stderr}");
    // Nothing but the output is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_exits_non_zero_and_keeps_the_old_file() {
    let svc = grpc_testsvc::serve_with(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc_testsvc::Options {
            reflection: grpc_testsvc::Reflection::Off,
            ..grpc_testsvc::Options::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shop.pb");
    std::fs::write(&out, b"previous").unwrap();
    let o = pull(args(&svc.url(), &out, &[])).await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("does not offer gRPC reflection") && stderr.contains(&svc.url()),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");

    let o = pull(args(
        "https://localhost:1",
        &out,
        &["--ca", "/nonexistent/ca.pem"],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");

    let o = pull(args("localhost:50051", &out, &[])).await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("http://host:port"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
}
