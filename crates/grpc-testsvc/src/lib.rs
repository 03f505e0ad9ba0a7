//! The gRPC test service of Frontdesk's gRPC translation tests: `shop.v1.Shop`, `shop.v1.Legacy`
//! and `shop.v1.Extra` (protos in `proto/`), with gRPC server reflection (`grpc.reflection.v1`
//! and `grpc.reflection.v1alpha`), served over h2c (plain HTTP/2, prior knowledge) on a listener
//! the test binds (port 0).
//!
//! Every answer is deterministic:
//! - `GetItem`: `Item { id, shelf, name: "item-{id}", price: Money { "EUR", units: id * 100,
//!   nanos: 5 }, tags: ["a", "b"], kind: KIND_BOOK, created: 1700000000 s, stock: {"x": 1},
//!   size: { width 1.5, height 2 } }`; id 404 answers NOT_FOUND "no item 404".
//! - `CreateItem`: the request's item, with `shelf` from the request, and `name` suffixed
//!   `"#{request_id}"` when `request_id` is not empty.
//! - `UpdateItem`: the request's item; with a mask, `name` is the mask's paths joined by ",".
//! - `SearchItems`: `limit` items (3 when 0), ids 1..=limit, named `"{query}-{id}"`, kept when
//!   `price.units >= filter.min_units`, `kind` matches (unless unspecified) and every filter tag
//!   is one of the item's (`["a", "b"]`); `total` is the number returned.
//! - `GetFile`: `File { path, content: path's bytes }`.
//! - `WatchItems`: `count` items (ids 1..=count, `shelf`); with `hold`, each item after the first
//!   waits for a permit from [`Handle::release`]. Then, when `fail_code` is not 0, the stream ends
//!   with that status and the message "watch failed".
//! - `UploadItems`: counts the streamed items, sums `price.units`, collects the names.
//! - `Fail`: answers status `code` (OK when 0) with `message`; with `with_details`, also
//!   `grpc-status-details-bin` = `google.rpc.Status { code, message, details: [Any of
//!   shop.v1.FailureDetail { reason: "because", field: "code" }] }`.
//! - `Echo`: the request unchanged.
//! - `Slow`: sleeps `ms` milliseconds, then `SlowReply { slept_ms: ms }`.
//! - `Legacy.Ping`: `msg` repeated `times` times (once when 0), `at_unix: 1700000000`.
//! - `Extra.Hello`: `greeting: "hello {name}"`.
//!
//! A call whose `grpc-timeout` passes before its answer (response headers) is ready ends with
//! DEADLINE_EXCEEDED "deadline exceeded". The service is served with hyper directly rather than
//! `tonic::transport::Server`: tonic's server always applies its own `grpc-timeout` layer, which
//! answers CANCELLED, while the gRPC spec (and the gateway's tests) expect DEADLINE_EXCEEDED.
//!
//! [`DESCRIPTORS_SHOP`] and [`DESCRIPTORS_ALL`] are the encoded `FileDescriptorSet`s, with the
//! `google.api.http` options kept, for the gateway's descriptor-file configs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::codegen::Service as _;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use pb::shop::v1 as shop;

/// The generated protobuf and tonic types (`shop.v1`, `google.rpc.Status`, `google.api.HttpRule`).
/// The well-known types are `prost_types`.
pub mod pb {
    /// `google.*` packages.
    pub mod google {
        /// `google.api` (the HTTP rule messages; the `http` extension itself is not generated).
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod api {
            include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
        }
        /// `google.rpc` (`Status`, the rich error model).
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
        }
    }
    /// `shop.*` packages.
    pub mod shop {
        /// `shop.v1`: the services and their messages.
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/shop.v1.rs"));
        }
    }
}

/// `shop/v1/shop.proto` and its imports, encoded, dependencies first; options kept.
pub const DESCRIPTORS_SHOP: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptors_shop.bin"));

/// `shop/v1/shop.proto`, `shop/v1/extra.proto` and their imports, encoded, dependencies first;
/// options kept.
pub const DESCRIPTORS_ALL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors_all.bin"));

/// The `created` time of every item, and `Legacy.Ping`'s `at_unix`.
pub const EPOCH: i64 = 1_700_000_000;

/// Which server reflection versions are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reflection {
    /// None: reflection calls answer UNIMPLEMENTED.
    Off,
    /// `grpc.reflection.v1` only.
    V1,
    /// `grpc.reflection.v1alpha` only (older servers).
    V1Alpha,
    /// Both (the default).
    Both,
}

/// What [`serve_with`] serves. The default: every service and both reflection versions.
#[derive(Clone, Debug)]
pub struct Options {
    /// Reflection versions.
    pub reflection: Reflection,
    /// Serve `shop.v1.Shop`.
    pub shop: bool,
    /// Serve `shop.v1.Legacy`.
    pub legacy: bool,
    /// Serve `shop.v1.Extra` (and reflect `extra.proto`).
    pub extra: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reflection: Reflection::Both,
            shop: true,
            legacy: true,
            extra: true,
        }
    }
}

/// A running test service. Dropping it (or [`Handle::shutdown`]) closes the listener and every
/// connection.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct State {
    /// Permits for held `WatchItems` messages.
    release: Semaphore,
    /// Calls received per method name (the last path segment).
    calls: Mutex<HashMap<String, u64>>,
    /// The request headers of the last call.
    last: Mutex<Option<(String, HeaderMap)>>,
}

/// Serves every service and both reflection versions on `listener`.
pub async fn serve(listener: TcpListener) -> Handle {
    serve_with(listener, Options::default()).await
}

/// Serves what `opts` selects on `listener`.
pub async fn serve_with(listener: TcpListener, opts: Options) -> Handle {
    // A listener the test bound always has an address; 0.0.0.0:0 only if the OS lost it.
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let state = Arc::new(State {
        release: Semaphore::new(0),
        calls: Mutex::default(),
        last: Mutex::default(),
    });
    let routes = routes(&opts, &state);
    let task = tokio::spawn(accept_loop(listener, routes, state.clone()));
    Handle {
        addr,
        state,
        task: Some(task),
    }
}

fn routes(opts: &Options, state: &Arc<State>) -> tonic::service::Routes {
    let svc = Svc {
        state: state.clone(),
    };
    let mut b = tonic::service::Routes::builder();
    let mut names = Vec::new();
    if opts.shop {
        b.add_service(shop::shop_server::ShopServer::new(svc.clone()));
        names.push("shop.v1.Shop");
    }
    if opts.legacy {
        b.add_service(shop::legacy_server::LegacyServer::new(svc.clone()));
        names.push("shop.v1.Legacy");
    }
    if opts.extra {
        b.add_service(shop::extra_server::ExtraServer::new(svc));
        names.push("shop.v1.Extra");
    }
    let (v1, v1alpha) = match opts.reflection {
        Reflection::Off => (false, false),
        Reflection::V1 => (true, false),
        Reflection::V1Alpha => (false, true),
        Reflection::Both => (true, true),
    };
    if v1 {
        names.push("grpc.reflection.v1.ServerReflection");
    }
    if v1alpha {
        names.push("grpc.reflection.v1alpha.ServerReflection");
    }
    let set = if opts.extra {
        DESCRIPTORS_ALL
    } else {
        DESCRIPTORS_SHOP
    };
    let builder = || {
        names.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(set),
            |b, n| b.with_service_name(*n),
        )
    };
    // The sets are built into the crate and checked by its tests: a failure is a build bug.
    if v1 {
        match builder().build_v1() {
            Ok(r) => b.add_service(r),
            Err(e) => panic!("reflection v1 over the built-in descriptors: {e}"),
        };
    }
    if v1alpha {
        match builder().build_v1alpha() {
            Ok(r) => b.add_service(r),
            Err(e) => panic!("reflection v1alpha over the built-in descriptors: {e}"),
        };
    }
    b.routes()
}

async fn accept_loop(listener: TcpListener, routes: tonic::service::Routes, state: Arc<State>) {
    // Dropped with this task (on shutdown), which aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and the like: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let routes = routes.clone();
        let state = state.clone();
        conns.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut routes = routes.clone();
                    let state = state.clone();
                    async move {
                        let method = req
                            .uri()
                            .path()
                            .rsplit('/')
                            .next()
                            .unwrap_or("")
                            .to_string();
                        let timeout = grpc_timeout(req.headers());
                        state.record(method, req.headers().clone());
                        let call = routes.call(req);
                        let resp = match timeout {
                            None => call.await,
                            Some(t) => match tokio::time::timeout(t, call).await {
                                Ok(r) => r,
                                Err(_) => {
                                    Ok(Status::deadline_exceeded("deadline exceeded").into_http())
                                }
                            },
                        };
                        Ok::<_, Infallible>(match resp {
                            Ok(r) => r,
                            Err(never) => match never {},
                        })
                    }
                });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The `grpc-timeout` header (gRPC over HTTP/2: up to 8 digits and a unit, H M S m u n).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// === impl Handle ===

impl Handle {
    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`, for tonic clients and the gateway's upstream config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets `n` held `WatchItems` messages go (permits accumulate across streams).
    pub fn release(&self, n: usize) {
        self.state.release.add_permits(n);
    }

    /// How many calls of `method` (the name only, e.g. "GetItem" or "ServerReflectionInfo") were
    /// received, whatever their outcome.
    pub fn calls(&self, method: &str) -> u64 {
        self.state
            .calls
            .lock()
            .map_or(0, |c| c.get(method).copied().unwrap_or(0))
    }

    /// The request headers of the last call received, as sent (`grpc-timeout`, `te`,
    /// `content-type` and the caller's metadata included).
    pub fn last_metadata(&self) -> Option<MetadataMap> {
        let last = self.state.last.lock().ok()?;
        last.as_ref()
            .map(|(_, h)| MetadataMap::from_headers(h.clone()))
    }

    /// The method name of the last call received.
    pub fn last_method(&self) -> Option<String> {
        let last = self.state.last.lock().ok()?;
        last.as_ref().map(|(m, _)| m.clone())
    }

    /// Stops the service and waits until its listener is closed.
    pub async fn shutdown(mut self) {
        self.state.release.close();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.state.release.close();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// === impl State ===

impl State {
    fn record(&self, method: String, headers: HeaderMap) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(method.clone()).or_default() += 1;
        }
        if let Ok(mut last) = self.last.lock() {
            *last = Some((method, headers));
        }
    }
}

// === the services ===

#[derive(Clone, Debug)]
struct Svc {
    state: Arc<State>,
}

/// The item every read returns for `id`.
pub fn item(id: i64, shelf: &str) -> shop::Item {
    shop::Item {
        id,
        name: format!("item-{id}"),
        price: Some(shop::Money {
            currency: "EUR".into(),
            units: id * 100,
            nanos: 5,
        }),
        tags: vec!["a".into(), "b".into()],
        kind: shop::Kind::Book as i32,
        created: Some(prost_types::Timestamp {
            seconds: EPOCH,
            nanos: 0,
        }),
        shelf: shelf.to_string(),
        stock: HashMap::from([("x".to_string(), 1)]),
        size: Some(shop::item::Dimensions {
            width: 1.5,
            height: 2.0,
        }),
    }
}

type ItemStream = Pin<Box<dyn Stream<Item = Result<shop::Item, Status>> + Send>>;

#[tonic::async_trait]
impl shop::shop_server::Shop for Svc {
    async fn get_item(
        &self,
        req: Request<shop::GetItemRequest>,
    ) -> Result<Response<shop::Item>, Status> {
        let r = req.into_inner();
        if r.id == 404 {
            return Err(Status::not_found("no item 404"));
        }
        Ok(Response::new(item(r.id, &r.shelf)))
    }

    async fn create_item(
        &self,
        req: Request<shop::CreateItemRequest>,
    ) -> Result<Response<shop::Item>, Status> {
        let r = req.into_inner();
        let mut it = r.item.unwrap_or_default();
        it.shelf = r.shelf;
        if !r.request_id.is_empty() {
            it.name = format!("{}#{}", it.name, r.request_id);
        }
        Ok(Response::new(it))
    }

    async fn update_item(
        &self,
        req: Request<shop::UpdateItemRequest>,
    ) -> Result<Response<shop::Item>, Status> {
        let r = req.into_inner();
        let mut it = r.item.unwrap_or_default();
        if let Some(mask) = r.mask {
            it.name = mask.paths.join(",");
        }
        Ok(Response::new(it))
    }

    async fn search_items(
        &self,
        req: Request<shop::SearchItemsRequest>,
    ) -> Result<Response<shop::SearchItemsResponse>, Status> {
        let r = req.into_inner();
        let limit = if r.limit <= 0 { 3 } else { r.limit.min(10_000) };
        let filter = r.filter.unwrap_or_default();
        let items: Vec<shop::Item> = (1..=i64::from(limit))
            .map(|id| shop::Item {
                name: format!("{}-{id}", r.query),
                ..item(id, "")
            })
            .filter(|it| it.price.as_ref().map_or(0, |p| p.units) >= filter.min_units)
            .filter(|it| filter.kind == 0 || it.kind == filter.kind)
            .filter(|it| filter.tags.iter().all(|t| it.tags.contains(t)))
            .collect();
        Ok(Response::new(shop::SearchItemsResponse {
            total: i32::try_from(items.len()).unwrap_or(i32::MAX),
            items,
        }))
    }

    async fn get_file(
        &self,
        req: Request<shop::GetFileRequest>,
    ) -> Result<Response<shop::File>, Status> {
        let r = req.into_inner();
        Ok(Response::new(shop::File {
            content: r.path.clone().into_bytes(),
            path: r.path,
        }))
    }

    type WatchItemsStream = ItemStream;

    async fn watch_items(
        &self,
        req: Request<shop::WatchItemsRequest>,
    ) -> Result<Response<Self::WatchItemsStream>, Status> {
        let r = req.into_inner();
        let (tx, rx) = mpsc::channel(1);
        let state = self.state.clone();
        tokio::spawn(async move {
            for id in 1..=i64::from(r.count.max(0)) {
                if id > 1 && r.hold {
                    // Stop waiting when the client goes away or the service shuts down.
                    tokio::select! {
                        permit = state.release.acquire() => match permit {
                            Ok(p) => p.forget(),
                            Err(_) => return,
                        },
                        () = tx.closed() => return,
                    }
                }
                if tx.send(Ok(item(id, &r.shelf))).await.is_err() {
                    return;
                }
            }
            if r.fail_code != 0 {
                let _ = tx
                    .send(Err(Status::new(Code::from(r.fail_code), "watch failed")))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn upload_items(
        &self,
        req: Request<Streaming<shop::Item>>,
    ) -> Result<Response<shop::UploadSummary>, Status> {
        let mut stream = req.into_inner();
        let mut sum = shop::UploadSummary::default();
        while let Some(it) = stream.message().await? {
            sum.count += 1;
            sum.total_units += it.price.map_or(0, |p| p.units);
            sum.names.push(it.name);
        }
        Ok(Response::new(sum))
    }

    async fn fail(&self, req: Request<shop::FailRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let code = Code::from(r.code);
        if code == Code::Ok {
            return Ok(Response::new(()));
        }
        if !r.with_details {
            return Err(Status::new(code, r.message));
        }
        let detail = shop::FailureDetail {
            reason: "because".into(),
            field: "code".into(),
        };
        let status = pb::google::rpc::Status {
            code: r.code,
            message: r.message.clone(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/shop.v1.FailureDetail".into(),
                value: detail.encode_to_vec(),
            }],
        };
        Err(Status::with_details(
            code,
            r.message,
            status.encode_to_vec().into(),
        ))
    }

    async fn echo(
        &self,
        req: Request<shop::WellKnown>,
    ) -> Result<Response<shop::WellKnown>, Status> {
        Ok(Response::new(req.into_inner()))
    }

    async fn slow(
        &self,
        req: Request<shop::SlowRequest>,
    ) -> Result<Response<shop::SlowReply>, Status> {
        let ms = req.into_inner().ms.max(0);
        tokio::time::sleep(Duration::from_millis(ms.unsigned_abs().into())).await;
        Ok(Response::new(shop::SlowReply { slept_ms: ms }))
    }
}

#[tonic::async_trait]
impl shop::legacy_server::Legacy for Svc {
    async fn ping(
        &self,
        req: Request<shop::PingRequest>,
    ) -> Result<Response<shop::PingReply>, Status> {
        let r = req.into_inner();
        let times = if r.times <= 0 { 1 } else { r.times.min(10_000) };
        Ok(Response::new(shop::PingReply {
            msg: r.msg.repeat(times.unsigned_abs() as usize),
            at_unix: EPOCH,
        }))
    }
}

#[tonic::async_trait]
impl shop::extra_server::Extra for Svc {
    async fn hello(
        &self,
        req: Request<shop::HelloRequest>,
    ) -> Result<Response<shop::HelloReply>, Status> {
        Ok(Response::new(shop::HelloReply {
            greeting: format!("hello {}", req.into_inner().name),
        }))
    }
}

#[cfg(test)]
mod tests;
