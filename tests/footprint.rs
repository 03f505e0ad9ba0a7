//! Guards the memory an idle keep-alive connection costs: a parked connection holds only its
//! socket and the state of the `serve` task, so that task must stay small. (Sizes are of debug
//! builds, where futures are larger than in release.)

use std::sync::Arc;
use std::time::Duration;

use frontdesk::server::{serve, HeadLimits};
use frontdesk::snapshot::{ListenerSpec, Snapshot};

#[tokio::test]
async fn the_task_of_an_idle_connection_stays_small() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
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
        tls: None,
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
    let live = Arc::new(arc_swap::ArcSwap::from_pointee(snap));
    let spec = Arc::new(spec);
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
    assert!(native_size <= 1024, "native task is {native_size} bytes");
    drop(native);
    // The task a plain native connection holds (first byte, HTTP/2 detection, then the codec),
    // and the hyper codec's, whose connection state is boxed per busy period: if either grows
    // (a path inlined again), every idle connection pays for it (tens of KiB before this guard).
    let task = serve(
        stream,
        addr,
        spec.clone(),
        live.clone(),
        Default::default(),
        Default::default(),
    );
    let size = std::mem::size_of_val(&*task);
    eprintln!("native serve task: {size} bytes");
    assert!(size <= 1344, "native serve task is {size} bytes");
    drop(task);
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
