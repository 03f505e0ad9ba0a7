//! gRPC server reflection client: fetches the descriptors of every service a gRPC server offers
//! (`frontdesk proto pull --reflect URL`), so the gateway can transcode to it without `.proto`
//! files. One bidirectional `ServerReflectionInfo` stream: `list_services`, then
//! `file_containing_symbol` per service, then `file_by_filename` for every import not yet
//! received. `grpc.reflection.v1` is tried first, `v1alpha` when the server answers UNIMPLEMENTED
//! (or HTTP 404); the two share one wire schema.
//!
//! Transport: the `h2` crate directly, over TCP (h2c, prior knowledge) or rustls (ALPN `h2`),
//! rather than a tonic `Channel`. The gateway's tonic (through opentelemetry-otlp) is built
//! without TLS features, and its Channel would bring its own connector and TLS stack; `h2` and
//! rustls are what the gateway already speaks to upstreams, and one stream of length-prefixed
//! messages is all this needs.
//!
//! Messages: hand-written `prost::Message` structs (below) rather than tonic-reflection's
//! generated types: that crate would be a runtime dependency for five small messages, and only
//! the fields used here are declared (prost skips the others).
//!
//! Descriptors are kept as the server's own bytes ([`Fetched::encoded`]): a decoded
//! `prost_types::FileDescriptorProto` drops extension options such as `google.api.http`, which
//! transcoding needs.
//!
//! The server is not trusted: a total timeout, at most [`FetchOptions::max_files`] files and
//! [`FetchOptions::max_bytes`] bytes of replies; malformed replies, import cycles and missing
//! files are errors, never panics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How [`fetch`] connects and how much it accepts.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The whole fetch, connection included (default 10 s).
    pub timeout: Duration,
    /// CA certificates (PEM) trusted for `https://` in addition to the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// At most this many files (default 1000).
    pub max_files: usize,
    /// At most this many bytes of reflection replies in all (default 64 MiB).
    pub max_bytes: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            timeout: Duration::from_secs(10),
            ca_pem: None,
            max_files: 1000,
            max_bytes: 64 << 20,
        }
    }
}

/// What a server's reflection returned.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// Every file the services need, each after its imports. Decoded with `prost_types`, which
    /// drops custom options (`google.api.http`): use [`Fetched::encoded`] for those.
    pub set: FileDescriptorSet,
    /// The same set encoded from the server's own bytes, custom options included: what
    /// `proto pull` writes, and what a `prost_reflect::DescriptorPool` should decode.
    pub encoded: Vec<u8>,
    /// The services listed (reflection's own left out), in the server's order.
    pub services: Vec<String>,
    /// The reflection version that answered: "v1" or "v1alpha".
    pub version: &'static str,
}

/// Why reflection failed.
#[derive(Debug, thiserror::Error)]
pub enum ReflectError {
    /// Not `http://host[:port]` or `https://host[:port]`.
    #[error("{url:?}: {reason} (expected http://host:port or https://host:port)")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// host:port.
        addr: String,
        /// The socket error (in the message, not a `source`: printed once in error chains).
        error: std::io::Error,
    },
    /// TLS setup or handshake failed.
    #[error("TLS with {addr}: {reason}")]
    Tls {
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// An HTTP/2 protocol or connection error.
    #[error("HTTP/2: {0}")]
    H2(h2::Error),
    /// Neither reflection version is served.
    #[error(
        "the server does not offer gRPC reflection (grpc.reflection.v1 and v1alpha both UNIMPLEMENTED)"
    )]
    Unsupported,
    /// The server answered a reflection call with a non-200 HTTP status.
    #[error("the server answered HTTP {0} to the reflection call (not a gRPC server?)")]
    Http(u16),
    /// The reflection stream ended with a gRPC error status.
    #[error("{request}: grpc-status {code}: {message}")]
    Status {
        /// The request that was answered (e.g. `file_by_filename a.proto`).
        request: String,
        /// The gRPC status code.
        code: u32,
        /// `grpc-message`.
        message: String,
    },
    /// The server answered a request with an `error_response`.
    #[error("{request}: the server answered error {code}: {message}")]
    Server {
        /// The request, naming the symbol or file asked for.
        request: String,
        /// The error code (a gRPC status code).
        code: i32,
        /// Its message.
        message: String,
    },
    /// A reply that is not what the protocol allows.
    #[error("{request}: malformed reply: {reason}")]
    Malformed {
        /// The request that was answered.
        request: String,
        /// What was wrong.
        reason: String,
    },
    /// The files import each other in a circle.
    #[error("import cycle: {0}")]
    Cycle(String),
    /// More files than [`FetchOptions::max_files`].
    #[error("the server's descriptors exceed {0} files")]
    TooManyFiles(usize),
    /// More bytes than [`FetchOptions::max_bytes`].
    #[error("the server's reflection replies exceed {0} bytes")]
    TooLarge(usize),
    /// [`FetchOptions::timeout`] passed.
    #[error("reflection did not finish within {0:?}")]
    Timeout(Duration),
}

// In the message, not a `source`: `{:#}` chains would print it twice.
impl From<h2::Error> for ReflectError {
    fn from(e: h2::Error) -> Self {
        ReflectError::H2(e)
    }
}

/// Fetches the descriptors of every service `url` offers through gRPC server reflection.
pub async fn fetch(url: &str, opts: &FetchOptions) -> Result<Fetched, ReflectError> {
    tokio::time::timeout(opts.timeout, fetch_inner(url, opts))
        .await
        .map_err(|_| ReflectError::Timeout(opts.timeout))?
}

async fn fetch_inner(url: &str, opts: &FetchOptions) -> Result<Fetched, ReflectError> {
    let target = Target::parse(url)?;
    let (sender, _driver) = connect(&target, opts).await?;
    for version in ["v1", "v1alpha"] {
        let mut stream = Exchange::open(sender.clone(), &target, version, opts.max_bytes).await?;
        let services = match stream.list_services().await {
            Ok(s) => s,
            Err(Open::Unimplemented) => continue,
            Err(Open::Failed(e)) => return Err(e),
        };
        let result = collect(&mut stream, &services, opts).await;
        stream.finish();
        let (set, encoded) = result?;
        return Ok(Fetched {
            set,
            encoded,
            services,
            version,
        });
    }
    Err(ReflectError::Unsupported)
}

/// Fetches the files of `services` and their imports; returns them in dependency order.
async fn collect(
    ex: &mut Exchange,
    services: &[String],
    opts: &FetchOptions,
) -> Result<(FileDescriptorSet, Vec<u8>), ReflectError> {
    let mut files = Files::default();
    for svc in services {
        if files.services.contains(svc) {
            continue;
        }
        let request = format!("file_containing_symbol {svc}");
        let got = ex
            .files(Req::FileContainingSymbol(svc.clone()), &request)
            .await?;
        files.add(got, &request, opts.max_files)?;
    }
    // Imports not received yet; each answer may bring more.
    loop {
        let missing: Vec<String> = files.missing();
        if missing.is_empty() {
            break;
        }
        for name in missing {
            let request = format!("file_by_filename {name}");
            let got = ex
                .files(Req::FileByFilename(name.clone()), &request)
                .await?;
            files.add(got, &request, opts.max_files)?;
            if !files.by_name.contains_key(&name) {
                return Err(ReflectError::Malformed {
                    request,
                    reason: format!("the reply does not hold {name}"),
                });
            }
        }
    }
    files.ordered()
}

// === the descriptors received ===

#[derive(Default)]
struct Files {
    /// Name -> (raw bytes, decoded).
    by_name: HashMap<String, (Vec<u8>, FileDescriptorProto)>,
    /// Names in the order received, for a stable output order.
    order: Vec<String>,
    /// Fully qualified services declared by the files received.
    services: HashSet<String>,
}

impl Files {
    fn add(&mut self, raw: Vec<Vec<u8>>, request: &str, max: usize) -> Result<(), ReflectError> {
        if raw.is_empty() {
            return Err(ReflectError::Malformed {
                request: request.to_string(),
                reason: "no file in the reply".into(),
            });
        }
        for bytes in raw {
            let fd = FileDescriptorProto::decode(bytes.as_slice()).map_err(|e| {
                ReflectError::Malformed {
                    request: request.to_string(),
                    reason: format!("not a FileDescriptorProto: {e}"),
                }
            })?;
            let name = fd.name().to_string();
            if name.is_empty() {
                return Err(ReflectError::Malformed {
                    request: request.to_string(),
                    reason: "a file without a name".into(),
                });
            }
            if self.by_name.contains_key(&name) {
                continue;
            }
            if self.by_name.len() >= max {
                return Err(ReflectError::TooManyFiles(max));
            }
            for s in &fd.service {
                self.services.insert(match fd.package() {
                    "" => s.name().to_string(),
                    p => format!("{p}.{}", s.name()),
                });
            }
            self.order.push(name.clone());
            self.by_name.insert(name, (bytes, fd));
        }
        Ok(())
    }

    fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, fd) in self.order.iter().filter_map(|n| self.by_name.get(n)) {
            for dep in &fd.dependency {
                if !self.by_name.contains_key(dep) && !out.contains(dep) {
                    out.push(dep.clone());
                }
            }
        }
        out
    }

    /// Every file after its imports (depth first, in the order received); a cycle is an error.
    fn ordered(mut self) -> Result<(FileDescriptorSet, Vec<u8>), ReflectError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        let mut marks: HashMap<String, Mark> = HashMap::new();
        let mut out: Vec<String> = Vec::new();
        for root in &self.order {
            // An explicit stack: hostile import chains cannot overflow the thread's stack.
            let mut stack: Vec<(String, usize)> = vec![(root.clone(), 0)];
            while let Some((name, next)) = stack.pop() {
                if next == 0 {
                    match marks.get(&name) {
                        Some(Mark::Done) => continue,
                        Some(Mark::Visiting) => {
                            let mut path: Vec<&str> = stack
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .skip_while(|n| *n != name)
                                .collect();
                            path.push(&name);
                            return Err(ReflectError::Cycle(path.join(" -> ")));
                        }
                        None => {
                            marks.insert(name.clone(), Mark::Visiting);
                        }
                    }
                }
                let Some((_, fd)) = self.by_name.get(&name) else {
                    return Err(ReflectError::Malformed {
                        request: format!("file_by_filename {name}"),
                        reason: "the file was never received".into(),
                    });
                };
                if let Some(dep) = fd.dependency.get(next) {
                    let dep = dep.clone();
                    stack.push((name, next + 1));
                    if marks.get(&dep) != Some(&Mark::Done) {
                        stack.push((dep, 0));
                    }
                } else {
                    marks.insert(name.clone(), Mark::Done);
                    out.push(name);
                }
            }
        }
        let mut set = FileDescriptorSet::default();
        let mut raw = RawFileDescriptorSet::default();
        for name in out {
            if let Some((bytes, fd)) = self.by_name.remove(&name) {
                set.file.push(fd);
                raw.file.push(bytes);
            }
        }
        Ok((set, raw.encode_to_vec()))
    }
}

// === the connection ===

struct Target {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, ReflectError> {
        let bad = |reason| ReflectError::Url {
            url: url.to_string(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("reflection is served at the root: no path or query"));
        }
        let auth = uri.authority().ok_or_else(|| bad("no host"))?;
        if auth.as_str().contains('@') {
            return Err(bad("no user info"));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            tls,
            host: host.to_string(),
            port,
            authority: auth.as_str().to_string(),
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Aborts the HTTP/2 connection task when the fetch ends (or times out).
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect(
    target: &Target,
    opts: &FetchOptions,
) -> Result<(h2::client::SendRequest<Bytes>, Driver), ReflectError> {
    let addr = target.addr();
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|error| ReflectError::Connect {
            addr: addr.clone(),
            error,
        })?;
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return handshake(tcp).await;
    }
    let tls_err = |reason: String| ReflectError::Tls {
        addr: addr.clone(),
        reason,
    };
    let system = crate::tls::root_store(None).map_err(|e| tls_err(e.to_string()))?;
    let mut roots = (*system).clone();
    if let Some(pem) = &opts.ca_pem {
        for cert in crate::tls::parse_certs("the CA", pem).map_err(|e| tls_err(e.to_string()))? {
            roots.add(cert).map_err(|e| tls_err(e.to_string()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|_| tls_err(format!("{:?} is not a valid server name", target.host)))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))?;
    if let Some(alpn) = tls.get_ref().1.alpn_protocol() {
        if alpn != b"h2" {
            return Err(tls_err(format!(
                "the server chose ALPN {:?}, not h2",
                String::from_utf8_lossy(alpn)
            )));
        }
    }
    handshake(tls).await
}

async fn handshake<T>(io: T) -> Result<(h2::client::SendRequest<Bytes>, Driver), ReflectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = h2::client::Builder::new()
        // Reflection headers are small; a hostile server gets no more.
        .max_header_list_size(64 << 10)
        .handshake::<_, Bytes>(io)
        .await?;
    let driver = Driver(tokio::spawn(async move {
        let _ = conn.await;
    }));
    Ok((sender, driver))
}

// === one reflection stream ===

enum Req {
    FileByFilename(String),
    FileContainingSymbol(String),
    ListServices,
}

/// The first exchange either tells the version is served, or that it is not.
enum Open {
    Unimplemented,
    Failed(ReflectError),
}

struct Exchange {
    send: h2::SendStream<Bytes>,
    response: Option<h2::client::ResponseFuture>,
    recv: Option<h2::RecvStream>,
    buf: BytesMut,
    /// Reply bytes still allowed.
    budget: usize,
    max_bytes: usize,
}

impl Exchange {
    async fn open(
        sender: h2::client::SendRequest<Bytes>,
        target: &Target,
        version: &str,
        max_bytes: usize,
    ) -> Result<Exchange, ReflectError> {
        let mut sender = sender.ready().await?;
        let scheme = if target.tls { "https" } else { "http" };
        let uri = format!(
            "{scheme}://{}/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            target.authority
        );
        let req = http::Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header(
                "user-agent",
                concat!("frontdesk/", env!("CARGO_PKG_VERSION")),
            )
            .body(())
            .map_err(|e| ReflectError::Malformed {
                request: "ServerReflectionInfo".into(),
                reason: e.to_string(),
            })?;
        let (response, send) = sender.send_request(req, false)?;
        Ok(Exchange {
            send,
            response: Some(response),
            recv: None,
            buf: BytesMut::new(),
            budget: max_bytes,
            max_bytes,
        })
    }

    async fn list_services(&mut self) -> Result<Vec<String>, Open> {
        let request = "list_services";
        let reply = match self.call(Req::ListServices, request).await {
            Ok(r) => r,
            Err(ReflectError::Http(404)) => return Err(Open::Unimplemented),
            Err(ReflectError::Status { code: 12, .. }) => return Err(Open::Unimplemented),
            Err(e) => return Err(Open::Failed(e)),
        };
        match reply {
            msg::MessageResponse::ListServicesResponse(l) => {
                let mut out: Vec<String> = Vec::new();
                for s in l.service {
                    if !s.name.starts_with("grpc.reflection.") && !out.contains(&s.name) {
                        out.push(s.name);
                    }
                }
                Ok(out)
            }
            other => Err(Open::Failed(unexpected(request, &other))),
        }
    }

    async fn files(&mut self, req: Req, request: &str) -> Result<Vec<Vec<u8>>, ReflectError> {
        match self.call(req, request).await? {
            msg::MessageResponse::FileDescriptorResponse(f) => Ok(f.file_descriptor_proto),
            other => Err(unexpected(request, &other)),
        }
    }

    /// Sends one request and reads its one reply.
    async fn call(
        &mut self,
        req: Req,
        request: &str,
    ) -> Result<msg::MessageResponse, ReflectError> {
        let message_request = Some(match req {
            Req::FileByFilename(s) => msg::MessageRequest::FileByFilename(s),
            Req::FileContainingSymbol(s) => msg::MessageRequest::FileContainingSymbol(s),
            Req::ListServices => msg::MessageRequest::ListServices(String::new()),
        });
        let body = msg::ServerReflectionRequest {
            host: String::new(),
            message_request,
        }
        .encode_to_vec();
        let mut frame = BytesMut::with_capacity(5 + body.len());
        frame.put_u8(0);
        frame.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
        frame.put_slice(&body);
        // Requests are small: h2 buffers them until the peer's window allows. A failed send
        // means the server ended the stream (or the connection): the read below reports that
        // with what the server said (its grpc-status), so the send error itself is not kept.
        let _ = self.send.send_data(frame.freeze(), false);

        let raw = self.next_message(request).await?;
        let reply =
            msg::ServerReflectionResponse::decode(raw).map_err(|e| ReflectError::Malformed {
                request: request.to_string(),
                reason: format!("not a ServerReflectionResponse: {e}"),
            })?;
        match reply.message_response {
            Some(msg::MessageResponse::ErrorResponse(e)) => Err(ReflectError::Server {
                request: request.to_string(),
                code: e.error_code,
                message: e.error_message,
            }),
            Some(r) => Ok(r),
            None => Err(ReflectError::Malformed {
                request: request.to_string(),
                reason: "a reply without a message_response".into(),
            }),
        }
    }

    /// The next length-prefixed message of the reply stream; the stream's end is an error
    /// (its grpc-status, or a message saying it ended).
    async fn next_message(&mut self, request: &str) -> Result<Bytes, ReflectError> {
        if let Some(response) = self.response.take() {
            let resp = response.await?;
            if resp.status() != http::StatusCode::OK {
                return Err(ReflectError::Http(resp.status().as_u16()));
            }
            // Trailers-only: the status is in the headers (tonic's UNIMPLEMENTED for an
            // unknown service).
            if let Some(e) = status_error(resp.headers(), request) {
                return Err(e);
            }
            self.recv = Some(resp.into_body());
        }
        let Some(recv) = self.recv.as_mut() else {
            return Err(ReflectError::Malformed {
                request: request.to_string(),
                reason: "the reply stream already ended".into(),
            });
        };
        loop {
            if self.buf.len() >= 5 {
                let compressed = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if compressed != 0 {
                    return Err(ReflectError::Malformed {
                        request: request.to_string(),
                        reason: "a compressed message (none was accepted)".into(),
                    });
                }
                if len > self.budget {
                    return Err(ReflectError::TooLarge(self.max_bytes));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    self.budget -= len;
                    return Ok(self.buf.split_to(len).freeze());
                }
            }
            match recv.data().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    if self.buf.len() + chunk.len() > self.budget.saturating_add(5) {
                        return Err(ReflectError::TooLarge(self.max_bytes));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                None => {
                    let trailers = recv.trailers().await?;
                    self.recv = None;
                    if let Some(e) = trailers.as_ref().and_then(|t| status_error(t, request)) {
                        return Err(e);
                    }
                    return Err(ReflectError::Malformed {
                        request: request.to_string(),
                        reason: "the stream ended without a reply".into(),
                    });
                }
            }
        }
    }

    /// Ends the request stream (the server then ends its own).
    fn finish(mut self) {
        let _ = self.send.send_data(Bytes::new(), true);
    }
}

/// The error a `grpc-status` header or trailer carries, if it is not OK.
fn status_error(headers: &http::HeaderMap, request: &str) -> Option<ReflectError> {
    let s = super::status::GrpcStatus::from_headers(headers).filter(|s| s.code != 0)?;
    Some(ReflectError::Status {
        request: request.to_string(),
        code: s.code,
        message: s.message,
    })
}

fn unexpected(request: &str, got: &msg::MessageResponse) -> ReflectError {
    let kind = match got {
        msg::MessageResponse::FileDescriptorResponse(_) => "file_descriptor_response",
        msg::MessageResponse::ListServicesResponse(_) => "list_services_response",
        msg::MessageResponse::ErrorResponse(_) => "error_response",
    };
    ReflectError::Malformed {
        request: request.to_string(),
        reason: format!("an unexpected {kind}"),
    }
}

/// An encoded `FileDescriptorSet` whose files stay raw bytes (options kept).
#[derive(Clone, PartialEq, prost::Message)]
struct RawFileDescriptorSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

/// `grpc.reflection.v1` (and, on the wire, `v1alpha`): the fields this client uses.
mod msg {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ServerReflectionRequest {
        #[prost(string, tag = "1")]
        pub(super) host: String,
        #[prost(oneof = "MessageRequest", tags = "3, 4, 7")]
        pub(super) message_request: Option<MessageRequest>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum MessageRequest {
        #[prost(string, tag = "3")]
        FileByFilename(String),
        #[prost(string, tag = "4")]
        FileContainingSymbol(String),
        #[prost(string, tag = "7")]
        ListServices(String),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ServerReflectionResponse {
        #[prost(oneof = "MessageResponse", tags = "4, 6, 7")]
        pub(super) message_response: Option<MessageResponse>,
    }

    // The variants keep the schema's field names.
    #[allow(clippy::enum_variant_names)]
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum MessageResponse {
        #[prost(message, tag = "4")]
        FileDescriptorResponse(FileDescriptorResponse),
        #[prost(message, tag = "6")]
        ListServicesResponse(ListServiceResponse),
        #[prost(message, tag = "7")]
        ErrorResponse(ErrorResponse),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct FileDescriptorResponse {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub(super) file_descriptor_proto: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ListServiceResponse {
        #[prost(message, repeated, tag = "1")]
        pub(super) service: Vec<ServiceResponse>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ServiceResponse {
        #[prost(string, tag = "1")]
        pub(super) name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ErrorResponse {
        #[prost(int32, tag = "1")]
        pub(super) error_code: i32,
        #[prost(string, tag = "2")]
        pub(super) error_message: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, deps: &[&str]) -> Vec<u8> {
        FileDescriptorProto {
            name: Some(name.into()),
            dependency: deps.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn orders_every_file_after_its_imports() {
        let mut f = Files::default();
        f.add(
            vec![
                file("a.proto", &["b.proto", "c.proto"]),
                file("c.proto", &[]),
            ],
            "t",
            10,
        )
        .unwrap();
        assert_eq!(f.missing(), ["b.proto"]);
        f.add(vec![file("b.proto", &["c.proto"])], "t", 10).unwrap();
        assert!(f.missing().is_empty());
        let (set, raw) = f.ordered().unwrap();
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["c.proto", "b.proto", "a.proto"]);
        let back = FileDescriptorSet::decode(raw.as_slice()).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn import_cycles_are_errors() {
        let mut f = Files::default();
        f.add(
            vec![
                file("a.proto", &["b.proto"]),
                file("b.proto", &["c.proto"]),
                file("c.proto", &["a.proto"]),
            ],
            "t",
            10,
        )
        .unwrap();
        let err = f.ordered().unwrap_err().to_string();
        assert_eq!(
            err,
            "import cycle: a.proto -> b.proto -> c.proto -> a.proto"
        );
        let mut selfish = Files::default();
        selfish
            .add(vec![file("s.proto", &["s.proto"])], "t", 10)
            .unwrap();
        assert!(matches!(selfish.ordered(), Err(ReflectError::Cycle(_))));
    }

    #[test]
    fn hostile_files_are_errors() {
        let mut f = Files::default();
        let err = f.add(vec![vec![0xff, 0xff, 0xff]], "file_by_filename x", 10);
        assert!(
            matches!(err, Err(ReflectError::Malformed { ref request, .. }) if request == "file_by_filename x"),
            "{err:?}"
        );
        assert!(matches!(
            f.add(vec![file("", &[])], "t", 10),
            Err(ReflectError::Malformed { .. })
        ));
        assert!(matches!(
            f.add(vec![], "t", 10),
            Err(ReflectError::Malformed { .. })
        ));
        let many: Vec<Vec<u8>> = (0..3).map(|i| file(&format!("{i}.proto"), &[])).collect();
        assert!(matches!(
            f.add(many, "t", 2),
            Err(ReflectError::TooManyFiles(2))
        ));
    }

    #[test]
    fn urls_need_a_scheme_and_no_path() {
        assert!(Target::parse("localhost:50051").is_err());
        assert!(Target::parse("ftp://h:1").is_err());
        assert!(Target::parse("http://h:1/v1").is_err());
        assert!(Target::parse("http://u@h:1").is_err());
        let t = Target::parse("https://[::1]").unwrap();
        assert_eq!((t.tls, t.addr().as_str()), (true, "[::1]:443"));
        let t = Target::parse("http://127.0.0.1:9/").unwrap();
        assert_eq!((t.tls, t.addr().as_str()), (false, "127.0.0.1:9"));
    }
}
