//! The native HTTP/1.1 upstream client (`server.http1: native`): a connection is a socket and
//! two buffers, owned by the request that uses it. No connection task, no channel between the
//! request and the connection: the request's own task writes the head and the body and reads the
//! response head; the response body owns the connection while it is read and puts it back in
//! this worker thread's idle set when the response ended cleanly.
//!
//! An idle connection has no task watching it, so before reuse its socket's readiness is asked
//! (no system call): a connection the upstream closed, or that has stray bytes, is dropped.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{Body, BodyError, BoxError, ClientBodyError, UpgradedIo};
use crate::http1::decode::{Decoded, Decoder};
use crate::http1::{self, FieldKind, Outbox, RawFields};

/// Most header fields in a response head.
const MAX_HEADERS: usize = 100;

/// The largest trailer section of a chunked response.
const MAX_TRAILERS: usize = 16 * 1024;

/// An upstream connection's stream.
pub enum Io {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Tcp(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A native HTTP/1.1 connection to an endpoint.
pub struct H1 {
    io: Io,
    rbuf: BytesMut,
    out: Outbox,
    /// Field names and value ranges of the response head being parsed (reused).
    fields: Vec<(HeaderName, usize, usize)>,
    /// The response timer of the requests it carries (kept armed between them: see
    /// [`crate::http1::LazyTimer`]).
    timer: crate::http1::LazyTimer,
}

impl std::fmt::Debug for H1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1").finish_non_exhaustive()
    }
}

/// Where a connection goes when its response ended cleanly: this worker thread's idle set for
/// the endpoint `key`, which keeps at most `max_idle`.
#[derive(Clone, Copy, Debug)]
pub struct GiveBack {
    /// The endpoint's pool key.
    pub key: u64,
    /// Most idle connections kept for it.
    pub max_idle: usize,
}

impl GiveBack {
    fn give(self, conn: Box<H1>) {
        super::pool::give_back_native(self.key, self.max_idle, conn);
    }
}

/// Why a request failed on a native connection.
#[derive(Debug)]
pub enum Failure {
    /// The connection broke or the upstream's answer was not HTTP; `unsent` holds the request
    /// when none of it was written.
    Reset(BoxError, Option<Box<Request<Body>>>),
    /// The client's body failed while it was being sent.
    Client(ClientBodyError),
    /// No response head by the deadline `send` was given.
    Timeout,
}

impl H1 {
    /// A connection over `io`.
    pub fn new(io: Io) -> Box<H1> {
        Box::new(H1 {
            io,
            rbuf: BytesMut::new(),
            out: Outbox::default(),
            fields: Vec::new(),
            timer: crate::http1::LazyTimer::default(),
        })
    }

    /// True when an idle connection can carry a request: its socket has nothing to read (a
    /// close or stray bytes would be readable). Asks the reactor's readiness, no system call.
    pub fn is_reusable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.rbuf.is_empty() && self.io.tcp().poll_read_ready(&mut cx).is_pending()
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if let Io::Tcp(s) = &self.io {
            return http1::poll_read_tcp(s, cx, &mut self.rbuf);
        }
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(http1::READ_CHUNK);
        }
        // tokio's `read_buf` reads into the spare capacity without zeroing it first; dropping
        // it while pending loses nothing.
        let read = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.rbuf);
        std::future::Future::poll(std::pin::pin!(read), cx)
    }

    /// Writes what is owed, then takes request body frames while they are ready. Ready(Ok)
    /// once the whole request is written.
    fn poll_send_body(&mut self, cx: &mut Context<'_>, tx: &mut Tx) -> Poll<Result<(), TxError>> {
        loop {
            match self
                .out
                .poll_write(&mut self.io, cx, |n| tx.written += n as u64)
            {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(TxError::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
            let Some(body) = tx.body.as_mut() else {
                return match std::pin::Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(TxError::Io(e))),
                    other => other.map(|_| Ok(())),
                };
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => match tx.framing {
                        Framing::Length(_) => {
                            if d.len() as u64 > tx.left {
                                return Poll::Ready(Err(TxError::Client(
                                    ClientBodyError::Malformed,
                                )));
                            }
                            tx.left -= d.len() as u64;
                            self.out.put(d, b"");
                        }
                        Framing::Chunked => {
                            http1::chunk_size(&mut self.out.buf, d.len());
                            self.out.put(d, b"\r\n");
                        }
                        Framing::None => {}
                    },
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            tx.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(None) => {
                    tx.body = None;
                    match tx.framing {
                        Framing::Chunked => {
                            self.out.settle();
                            http1::last_chunk(&mut self.out.buf, tx.trailers.as_ref());
                        }
                        Framing::Length(_) if tx.left > 0 => {
                            return Poll::Ready(Err(TxError::Client(ClientBodyError::Aborted)));
                        }
                        _ => {}
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(match e {
                        BodyError::Client(c) => TxError::Client(c),
                        other => TxError::Io(io::Error::other(other.to_string())),
                    }))
                }
                Poll::Pending => {
                    return match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Ready(Err(e)) => Poll::Ready(Err(TxError::Io(e))),
                        _ => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// The request on its way up.
struct Tx {
    body: Option<Body>,
    framing: Framing,
    left: u64,
    trailers: Option<HeaderMap>,
    written: u64,
}

enum TxError {
    Io(io::Error),
    Client(ClientBodyError),
}

/// Sends `req` on `conn` and reads the response head. The response body reads from the
/// connection (and sends what is left of a request body the upstream answered early); at its
/// clean end the connection goes to `back`. With `raw`, the response's fields may come back as
/// [`RawFields`] instead of in its header map (see [`FieldRule`]).
///
/// With a `deadline`, a response head that has not arrived by then fails the request
/// ([`Failure::Timeout`], the connection closed); without, the caller keeps the time.
pub async fn send(
    mut conn: Box<H1>,
    req: Box<Request<Body>>,
    back: GiveBack,
    raw: Option<FieldRule>,
    added: &[super::AddedField],
    deadline: Option<std::time::Instant>,
) -> Result<(Box<Response<Body>>, Option<RawFields>), Failure> {
    // The head stays in its box (kept to hand back unsent): moved out, it would be copied into
    // this future and back.
    let mut req = req;
    let body = std::mem::take(req.body_mut());
    let head_request = req.method() == Method::HEAD;
    conn.out.buf.clear();
    let framing = encode_head(&mut conn.out.buf, &req, added, &body);
    let mut tx = Tx {
        body: (framing != Framing::None).then_some(body),
        framing,
        left: match framing {
            Framing::Length(n) => n,
            _ => 0,
        },
        trailers: None,
        written: 0,
    };
    let replayable = framing == Framing::None && req.method().is_idempotent();
    let mut kept = Some(req);
    let mut sent = false;
    let head = poll_fn(|cx| loop {
        if !sent {
            match conn.poll_send_body(cx, &mut tx) {
                Poll::Ready(Ok(())) => sent = true,
                Poll::Ready(Err(TxError::Client(e))) => {
                    return Poll::Ready(Err(Failure::Client(e)))
                }
                Poll::Ready(Err(TxError::Io(e))) => {
                    // Nothing written: the request goes back whole, to be sent elsewhere.
                    let unsent = (tx.written == 0)
                        .then(|| kept.take())
                        .flatten()
                        .map(|mut r| {
                            *r.body_mut() = tx.body.take().unwrap_or_default();
                            r
                        });
                    return Poll::Ready(Err(Failure::Reset(Box::new(e), unsent)));
                }
                Poll::Pending => {}
            }
        }
        // Kept while the request could still be sent again (see `closed_unanswered`).
        if tx.written > 0 && !replayable {
            kept = None;
        }
        match parse_head(&mut conn.rbuf, &mut conn.fields, head_request, raw) {
            Ok(Some(Parsed::Informational)) => continue,
            Ok(Some(Parsed::Head(h))) => return Poll::Ready(Ok(h)),
            Ok(None) => {}
            Err(e) => return Poll::Ready(Err(Failure::Reset(e, None))),
        }
        if conn.rbuf.len() > super::pool::READ_BUF {
            return Poll::Ready(Err(Failure::Reset(
                "the upstream's response head is too large".into(),
                None,
            )));
        }
        let closed: BoxError = match conn.poll_fill(cx) {
            Poll::Ready(Ok(0)) => "the upstream closed the connection before answering".into(),
            Poll::Ready(Ok(_)) => continue,
            Poll::Ready(Err(e)) => Box::new(e),
            Poll::Pending => {
                return match deadline {
                    Some(d) if conn.timer.poll_until(cx, d.into()).is_ready() => {
                        Poll::Ready(Err(Failure::Timeout))
                    }
                    _ => Poll::Pending,
                }
            }
        };
        // Closed or reset with not a byte of an answer: an idle connection the upstream closed
        // as it was reused. A request without a body and of a method that may be repeated
        // (RFC 9110 §9.2.2) comes back to be sent on another connection.
        let unsent = (replayable && conn.rbuf.is_empty())
            .then(|| kept.take())
            .flatten();
        return Poll::Ready(Err(Failure::Reset(closed, unsent)));
    })
    .await?;
    let Head {
        mut resp,
        decoder,
        keep_alive,
        raw,
    } = head;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The connection is the tunnel's now, with any bytes read past the head.
        let (up_tx, rx) = tokio::sync::oneshot::channel::<UpgradedIo>();
        let H1 { io, rbuf, .. } = *conn;
        let _ = up_tx.send(Box::new(crate::body::Rewind::new(rbuf.freeze(), io)));
        resp.extensions_mut()
            .insert(crate::body::Upgrade::native(rx));
        return Ok((Box::new(resp), raw));
    }
    let reusable = keep_alive && sent;
    if decoder.is_done() && tx.body.is_none() {
        if reusable && conn.rbuf.is_empty() {
            back.give(conn);
        }
        return Ok((Box::new(resp), raw));
    }
    let body = RespBody {
        conn: Some(conn),
        decoder,
        tx,
        sending: !sent,
        keep_alive: reusable || (keep_alive && !sent),
        back: Some(back),
        failed: false,
    };
    Ok((Box::new(resp.map(|_| Body::new(body))), raw))
}

/// Writes the request line and fields, then `added` (fields the map does not hold); returns the
/// body's framing.
fn encode_head(
    out: &mut Vec<u8>,
    req: &Request<Body>,
    added: &[super::AddedField],
    body: &Body,
) -> Framing {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    for (name, value) in req
        .headers()
        .iter()
        .chain(added.iter().map(|(n, v)| (*n, v)))
    {
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && declared.is_none())
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if let Some(n) = declared {
        Framing::Length(n)
    } else if body.is_end_stream() {
        if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    if framing == Framing::Length(0) {
        return Framing::None;
    }
    framing
}

struct Head {
    resp: Response<Body>,
    decoder: Decoder,
    keep_alive: bool,
    /// The fields as lines, when asked for and the head needed no map.
    raw: Option<RawFields>,
}

// The informational variant is empty: a returned value, moved once, not worth a box.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A 1xx other than 101: skipped.
    Informational,
    Head(Head),
}

/// What a caller of [`RawFields`] does with a response field other than the connection's own,
/// by its name as it came (any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawRule {
    /// Passed on as it is.
    Keep,
    /// Left out: the caller writes its own (the request id).
    Drop,
    /// Only a header map will do: the head is parsed into one although lines were asked for.
    Map,
}

/// A malformed response's error, made out of line: the parse's hot path stays dense.
#[cold]
fn fail(msg: &'static str) -> BoxError {
    msg.into()
}

/// A response head `httparse` refused, out of line like [`fail`].
#[cold]
fn bad_head(e: httparse::Error) -> BoxError {
    format!("invalid response head: {e}").into()
}

/// The caller's [`RawRule`] for each response field name.
pub type FieldRule = fn(&[u8]) -> RawRule;

/// Parses a response head at the start of `buf`, consuming it when complete. With `raw`, a
/// head whose fields need nothing but the connection's own removed comes back as
/// [`RawFields`] (no header map is built; see [`raw_fields`]).
fn parse_head(
    buf: &mut BytesMut,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    head_request: bool,
    raw: Option<FieldRule>,
) -> Result<Option<Parsed>, BoxError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let base = buf.as_ptr() as usize;
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad_head(e)),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| fail("invalid response status"))?;
    let http10 = parsed.version == Some(0);
    if (100..200).contains(&code) && code != 101 {
        let _ = buf.split_to(len);
        return Ok(Some(Parsed::Informational));
    }
    let mut f = Framed::default();
    let raw = match raw.filter(|_| code != 101) {
        Some(rule) => raw_fields(parsed.headers, len, rule, &mut f)?,
        None => None,
    };
    let mut headers = HeaderMap::new();
    if raw.is_none() {
        f = Framed::default();
        fields.clear();
        // `Connection` naming other fields: it stays in the map, so the proxy removes what it
        // names.
        let mut names_fields = false;
        for h in parsed.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| fail("invalid response field name"))?;
            if name == header::CONTENT_LENGTH {
                f.content_length(h.value)?;
            } else if name == header::TRANSFER_ENCODING {
                f.transfer_encoding(h.value);
            } else if name == header::CONNECTION {
                names_fields |= f.connection(h.value);
            }
            fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
        }
        let head = buf.split_to(len).freeze();
        // Room for what the proxy adds to a response (`X-Request-Id`, `Via`, a plugin's fields).
        headers.reserve(fields.len() + 4);
        for (name, at, n) in fields.drain(..) {
            // The connection's own fields never reach the map: the proxy would remove them from
            // it (`proxy::forward::strip_hop_by_hop`, which still runs and removes whatever is
            // left), and inserting then removing is most of a small head's cost. A `101` keeps
            // them all (the handshake); a `Connection` that names other fields stays for the
            // proxy to read; with `Transfer-Encoding`, `Content-Length` goes too (RFC 9112 §6.3:
            // it is wrong).
            let connection_field =
                (name == header::CONNECTION && !names_fields) || http1::is_hop_by_hop(&name);
            if (code != 101 && connection_field) || (f.te && name == header::CONTENT_LENGTH) {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head.slice(at..at + n))
                .map_err(|_| fail("invalid response field value"))?;
            headers.append(name, value);
        }
    } else {
        let _ = buf.split_to(len);
    }
    let Framed {
        content_length,
        chunked,
        te,
        close,
        keep,
    } = f;
    let bodyless = head_request || code == 204 || code == 304 || code == 101;
    let decoder = if bodyless {
        Decoder::Length(0)
    } else if te {
        // RFC 9112 §6.3: Transfer-Encoding wins over Content-Length; a coding other than chunked
        // last means the body runs until the connection closes.
        if chunked {
            Decoder::chunked()
        } else {
            Decoder::UntilClose
        }
    } else if let Some(n) = content_length {
        Decoder::Length(n)
    } else {
        Decoder::UntilClose
    };
    // HTTP/1.0 keeps the connection only when asked; a body until close or framed twice ends it.
    let persistent = if http10 { keep } else { !close };
    let unframed = matches!(decoder, Decoder::UntilClose) || (te && content_length.is_some());
    let framed = !unframed;
    let keep_alive = persistent && !close && framed;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    *resp.version_mut() = if http10 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    };
    *resp.headers_mut() = headers;
    Ok(Some(Parsed::Head(Head {
        resp,
        decoder,
        keep_alive,
        raw,
    })))
}

/// What a response head's fields say about its framing and its connection.
#[derive(Default)]
struct Framed {
    content_length: Option<u64>,
    chunked: bool,
    te: bool,
    close: bool,
    keep: bool,
}

impl Framed {
    fn content_length(&mut self, value: &[u8]) -> Result<(), BoxError> {
        let n = http1::content_length(value)
            .ok_or_else(|| fail("invalid Content-Length in the response"))?;
        if self.content_length.is_some_and(|c| c != n) {
            return Err(fail("conflicting Content-Length in the response"));
        }
        self.content_length = Some(n);
        Ok(())
    }

    fn transfer_encoding(&mut self, value: &[u8]) {
        self.te = true;
        self.chunked = value
            .rsplit(|&c| c == b',')
            .next()
            .is_some_and(|t| http1::trim_ows(t).eq_ignore_ascii_case(b"chunked"));
    }

    /// True when the value names more than `close` and `keep-alive`.
    fn connection(&mut self, value: &[u8]) -> bool {
        let (close, keep, other) = http1::connection_options(value);
        self.close |= close;
        self.keep |= keep;
        other
    }
}

/// The fields of a head of `len` bytes as [`RawFields`] (without those `rule` drops), or `None`
/// when the head needs a map:
/// a field `rule` sends to a map, a `TE`, a `Connection` naming more than `close`/`keep-alive`,
/// `Transfer-Encoding` beside `Content-Length`. Names are lower-cased as a header map would
/// write them; values are written as they came (`httparse` allowed only what a `HeaderValue`
/// allows: visible ASCII, SP, HTAB, obs-text).
fn raw_fields(
    headers: &[httparse::Header<'_>],
    len: usize,
    rule: FieldRule,
    f: &mut Framed,
) -> Result<Option<RawFields>, BoxError> {
    // Each line grows by two bytes at most (`name:value\n` becomes `name: value\r\n`).
    let mut lines = BytesMut::with_capacity(len + 2 * headers.len());
    let mut has_date = false;
    for h in headers {
        let name = h.name.as_bytes();
        match http1::field_kind(name) {
            FieldKind::Te => return Ok(None),
            FieldKind::HopByHop => continue,
            FieldKind::Connection => {
                if f.connection(h.value) {
                    return Ok(None);
                }
                continue;
            }
            FieldKind::TransferEncoding => {
                f.transfer_encoding(h.value);
                continue;
            }
            FieldKind::ContentLength => f.content_length(h.value)?,
            FieldKind::Date => has_date = true,
            FieldKind::Other => match rule(name) {
                RawRule::Keep => {}
                RawRule::Drop => continue,
                RawRule::Map => return Ok(None),
            },
        }
        let at = lines.len();
        lines.extend_from_slice(name);
        lines[at..].make_ascii_lowercase();
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(h.value);
        lines.extend_from_slice(b"\r\n");
    }
    if f.te && f.content_length.is_some() {
        return Ok(None);
    }
    Ok(Some(RawFields {
        lines: lines.freeze(),
        content_length: f.content_length,
        has_date,
    }))
}

/// A response body read from its connection.
struct RespBody {
    conn: Option<Box<H1>>,
    decoder: Decoder,
    /// What is left of the request body, sent while the response is read (the upstream answered
    /// before it had all of it).
    tx: Tx,
    sending: bool,
    keep_alive: bool,
    back: Option<GiveBack>,
    failed: bool,
}

impl RespBody {
    /// The response ended cleanly: the connection goes back if nothing is left over.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && !self.sending && conn.rbuf.is_empty() {
            if let Some(back) = self.back.take() {
                back.give(conn);
            }
        }
    }

    fn fail(
        &mut self,
        e: impl Into<BoxError>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BodyError>>> {
        self.failed = true;
        self.conn = None;
        Poll::Ready(Some(Err(BodyError::Upstream(e.into()))))
    }
}

impl http_body::Body for RespBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if this.sending {
                match conn.poll_send_body(cx, &mut this.tx) {
                    Poll::Ready(Ok(())) => this.sending = false,
                    Poll::Ready(Err(_)) => {
                        // The upstream has answered; what it did not take of the body is lost
                        // with the connection, which is not reused.
                        this.sending = false;
                        this.keep_alive = false;
                        this.tx.body = None;
                    }
                    Poll::Pending => {}
                }
            }
            match this.decoder.decode(&mut conn.rbuf, MAX_TRAILERS) {
                Ok(Decoded::Data(d)) => {
                    if this.decoder.is_done() && !this.sending {
                        // The last bytes: the connection can serve another request now, before
                        // the reader (which may stop at `is_end_stream`) asks again.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => {
                    if this.sending {
                        // The response is complete before the request: the connection cannot
                        // carry another one.
                        this.keep_alive = false;
                    }
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => match conn.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        if matches!(this.decoder, Decoder::UntilClose) {
                            this.conn = None;
                            return Poll::Ready(None);
                        }
                        return this.fail("the upstream closed the connection mid-body");
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return this.fail(e),
                    Poll::Pending => return Poll::Pending,
                },
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
