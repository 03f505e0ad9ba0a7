//! Guards the memory an idle keep-alive connection costs: a parked connection holds only its
//! socket and the state of the `serve` task, so that task must stay small. (Sizes are of debug
//! builds, where futures are larger than in release.)

use std::sync::Arc;
use std::time::Duration;

mod common;

use frontdesk::server::{serve, HeadLimits};
use frontdesk::snapshot::{ListenerSpec, Snapshot};
use futures_util::FutureExt;

#[tokio::test]
async fn the_task_of_an_idle_connection_stays_small() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (spec, live) = listener(addr, None);
    let setup = frontdesk::server::h1::Setup {
        info: Arc::new(frontdesk::proxy::ConnInfo::new(
            addr,
            spec.clone(),
            Default::default(),
            None,
        )),
        live: live.clone(),
        park_after: None,
    };
    let second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (_tx, mut stop) = tokio::sync::watch::channel(false);
    let native = frontdesk::server::h1::serve(second, setup, &mut stop);
    // The native codec's connection task is the whole state of an idle HTTP/1 connection (its
    // buffers are freed when it parks): the request in flight is boxed.
    let native_size = std::mem::size_of_val(&native);
    eprintln!("native HTTP/1 connection task: {native_size} bytes");
    // 968 bytes in release before its `async fn` (which keeps its arguments twice: the
    // connection state was in it as passed and as moved) became an `async move` block; 736 now.
    assert!(native_size <= 768, "native task is {native_size} bytes");
    drop(native);
    // The task a plain native connection holds (first byte, HTTP/2 detection, then the codec),
    // and the hyper codec's, whose connection state is boxed per busy period: if either grows
    // (a path inlined again), every idle connection pays for it (tens of KiB before this guard).
    let drain = frontdesk::server::Drain::default();
    let task = serve(
        stream,
        addr,
        spec.clone(),
        live.clone(),
        Default::default(),
        drain.clone(),
    );
    holds_its_drain_token(&drain, task.as_ref().get_ref());
    let size = std::mem::size_of_val(&*task);
    eprintln!("native serve task: {size} bytes");
    // 1,304 bytes in release before (1,536 with mimalloc's size classes), 856 now.
    assert!(size <= 896, "native serve task is {size} bytes");
    drop(task);
    assert!(
        drain.wait_idle().now_or_never().is_some(),
        "the token went with the task"
    );
    let mut hyper_spec = (*spec).clone();
    hyper_spec.http1 = frontdesk::config::model::Http1Codec::Hyper;
    let third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let task = serve(
        third,
        addr,
        Arc::new(hyper_spec),
        live,
        Default::default(),
        Default::default(),
    );
    let size = std::mem::size_of_val(&*task);
    eprintln!("hyper serve task: {size} bytes");
    assert!(size <= 1024, "hyper serve task is {size} bytes");
}

/// A TLS connection's task: the handshake and the protocol run in their own boxes, so the task
/// itself stays small (one future used to hold the acceptor, the TLS stream twice and HTTP/2's
/// state: ~9 KiB per connection, HTTP/1.1 ones included).
#[tokio::test]
async fn the_task_of_a_tls_connection_holds_no_phase_inline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = common::pki::Ca::new("footprint CA");
    let (cert, key) = ca.leaf(dir.path(), "leaf", &["footprint.test"]);
    let tls_cfg: frontdesk::config::model::ListenerTlsConfig = serde_json::from_value(
        serde_json::json!({ "certificates": [{ "cert": cert, "key": key }] }),
    )
    .expect("tls config");
    let (tls, _) = frontdesk::tls::server::ServerTls::build(&tls_cfg).expect("server tls");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (spec, live) = listener(addr, Some(Arc::new(tls)));
    let drain = frontdesk::server::Drain::default();
    let task = serve(stream, addr, spec, live, Default::default(), drain.clone());
    holds_its_drain_token(&drain, task.as_ref().get_ref());
    let size = std::mem::size_of_val(&*task);
    eprintln!("TLS serve task: {size} bytes");
    assert!(size <= 256, "TLS serve task is {size} bytes");
    drop(task);
    assert!(
        drain.wait_idle().now_or_never().is_some(),
        "the token went with the task"
    );
}

/// A connection counts for its listener's drain from the moment its task exists until the task
/// is gone: a future that captured only part of what admitted it would let a shutdown stop
/// waiting for a connection still serving.
fn holds_its_drain_token<T: ?Sized>(drain: &frontdesk::server::Drain, _task: &T) {
    assert!(
        drain.wait_idle().now_or_never().is_none(),
        "the drain does not count the connection"
    );
}

/// A listener at `addr` (TLS with `tls`) and a snapshot of an empty config.
fn listener(
    addr: std::net::SocketAddr,
    tls: Option<Arc<frontdesk::tls::server::ServerTls>>,
) -> (Arc<ListenerSpec>, Arc<arc_swap::ArcSwap<Snapshot>>) {
    let spec = ListenerSpec {
        name: "t".into(),
        address: addr,
        limits: HeadLimits {
            max_head: 32 * 1024,
            max_headers: 100,
            max_uri: 8 * 1024,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        },
        max_body: None,
        transfer: Default::default(),
        tls,
        redirect_https: false,
        trusted_proxies: Vec::new(),
        bound: Default::default(),
        series: Default::default(),
        http1: Default::default(),
    };
    let cfg = frontdesk::config::load_str("version: 1\n", &|_| None)
        .expect("config")
        .config;
    let snap = Snapshot::build(cfg, None).expect("snapshot").0;
    (
        Arc::new(spec),
        Arc::new(arc_swap::ArcSwap::from_pointee(snap)),
    )
}
