//! TLS termination end to end, with certificates made at test time (rcgen) and real TLS clients:
//! reqwest for whole requests, tokio-rustls where the handshake itself is inspected (the
//! certificate served, ALPN, refusals). SNI selection, ALPN h2 and http/1.1, rotation on disk
//! and by reload, client certificates, minimum version, HTTPS redirects, drain.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{config, echo, gateway_in, TestGateway, Upstream};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

// ------------------------------------------------------------------ certificates --

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

struct Leaf {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

fn leaf(ca: &Ca, names: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn server_leaf(ca: &Ca, name: &str) -> Leaf {
    leaf(ca, &[name], name, ExtendedKeyUsagePurpose::ServerAuth)
}

/// A server CA with certificates for `api.test` and `admin.test`; a client CA with a client
/// certificate for `ci-bot`.
struct Pki {
    server_ca: Ca,
    api: Leaf,
    admin: Leaf,
    client_ca: Ca,
    bot: Leaf,
}

fn pki() -> Pki {
    let server_ca = ca("test server CA");
    let client_ca = ca("test clients CA");
    Pki {
        api: server_leaf(&server_ca, "api.test"),
        admin: server_leaf(&server_ca, "admin.test"),
        bot: leaf(
            &client_ca,
            &["ci-bot.clients.test"],
            "ci-bot",
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        server_ca,
        client_ca,
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join(name), text).unwrap();
}

fn install(dir: &Path, pki: &Pki) {
    write(dir, "api.pem", &pki.api.cert);
    write(dir, "api.key", &pki.api.key);
    write(dir, "admin.pem", &pki.admin.cert);
    write(dir, "admin.key", &pki.admin.key);
    write(dir, "clients-ca.pem", &pki.client_ca.pem);
}

// ------------------------------------------------------------------------ gateway --

/// Listener `public` with TLS (relative paths: they resolve against the config's directory);
/// `tls_extra` is more lines of its `tls` block. One route to `url`.
fn tls_config(url: &str, api_cert: &str, tls_extra: &str) -> String {
    config(&format!(
        r#"    tls:
      certificates:
        - {{ cert: certs/{api_cert}.pem, key: certs/{api_cert}.key }}
        - {{ cert: certs/admin.pem, key: certs/admin.key }}
{tls_extra}upstreams:
  app: {{ targets: [{{ url: "{url}" }}] }}
routes:
  - name: all
    match: {{ paths: ["/"] }}
    upstream: app
"#
    ))
}

async fn start(pki: &Pki, tls_extra: &str) -> (TestGateway, Upstream) {
    let up = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), pki);
    let gw = gateway_in(dir, &tls_config(&up.url(), "api", tls_extra)).await;
    (gw, up)
}

// ---------------------------------------------------------------------- clients --

/// A reqwest client that trusts only the test server CA and resolves the test names to `addr`.
fn https(pki: &Pki, identity: Option<&Leaf>, addr: SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.server_ca.pem.as_bytes()).unwrap()])
        .resolve("api.test", addr)
        .resolve("admin.test", addr);
    if let Some(l) = identity {
        let pem = format!("{}{}", l.cert, l.key);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// What the raw client offers.
#[derive(Default)]
struct Hello<'a> {
    /// `None`: connect by IP address, which sends no SNI.
    sni: Option<&'a str>,
    alpn: Vec<&'static [u8]>,
    tls12_only: bool,
    identity: Option<&'a Leaf>,
}

/// Accepts any server certificate (signatures are still checked), so the test can look at the
/// one served even when it does not match the name asked for.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn connect(addr: SocketAddr, hello: Hello<'_>) -> std::io::Result<TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if hello.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let b = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)));
    let mut cfg = match hello.identity {
        Some(l) => b
            .with_client_auth_cert(
                vec![l.der.clone()],
                PrivateKeyDer::from_pem_slice(l.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = hello.alpn.iter().map(|p| p.to_vec()).collect();
    let name = match hello.sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await?;
    timeout(
        Duration::from_secs(10),
        TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

fn sni(name: &str) -> Hello<'_> {
    Hello {
        sni: Some(name),
        ..Hello::default()
    }
}

fn served(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One HTTP/1.1 request on an open stream; the response with its (content-length) body.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
) -> std::io::Result<String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    common::try_read_response(s).await
}

/// Polls new handshakes until `api.test` is served `want`, or fails after a few seconds.
async fn wait_for_cert(addr: SocketAddr, want: &CertificateDer<'static>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = connect(addr, sni("api.test")).await.unwrap();
        if &served(&s) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------- tests --

#[tokio::test]
async fn sni_selects_the_certificate_and_the_first_is_the_default() {
    let pki = pki();
    let (gw, _up) = start(&pki, "").await;
    for (name, want) in [
        (Some("api.test"), &pki.api),
        (Some("admin.test"), &pki.admin),
        (Some("unknown.test"), &pki.api),
        (None, &pki.api),
    ] {
        let s = connect(
            gw.addr,
            Hello {
                sni: name,
                ..Hello::default()
            },
        )
        .await
        .unwrap();
        assert!(served(&s) == want.der, "SNI {name:?}");
    }
    // Verified end to end by a client that trusts only the test CA, on both names.
    let c = https(&pki, None, gw.addr);
    for host in ["api.test", "admin.test"] {
        let resp = c
            .get(format!("https://{host}:{}/x", gw.addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
    }
    // TLS 1.2 is accepted by default.
    let mut s = connect(
        gw.addr,
        Hello {
            sni: Some("api.test"),
            tls12_only: true,
            ..Hello::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert!(request(&mut s, "api.test", "/")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn alpn_h2_and_http1_both_proxy_to_the_upstream() {
    let pki = pki();
    let (gw, up) = start(&pki, "").await;
    let url = format!("https://api.test:{}/hello?q=1", gw.addr.port());

    let resp = https(&pki, None, gw.addr).get(&url).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let v = common::echo_json(resp).await;
    assert_eq!(v["uri"], "/hello?q=1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");

    let h1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.server_ca.pem.as_bytes()).unwrap()])
        .resolve("api.test", gw.addr)
        .build()
        .unwrap();
    let resp = h1.get(&url).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(
        common::echo_json(resp).await["headers"]["x-forwarded-proto"],
        "https"
    );

    // What the handshake negotiated, seen directly.
    for (offer, want) in [
        (vec![b"h2".as_slice(), b"http/1.1"], Some(b"h2".as_slice())),
        (vec![b"http/1.1".as_slice()], Some(b"http/1.1".as_slice())),
        (vec![], None),
    ] {
        let mut s = connect(
            gw.addr,
            Hello {
                sni: Some("api.test"),
                alpn: offer,
                ..Hello::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), want);
        if want != Some(b"h2") {
            // Without h2, HTTP/1.1 is spoken.
            let r = request(&mut s, "api.test", "/").await.unwrap();
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
    }
    assert!(up.requests() >= 4);
}

#[tokio::test]
async fn certificates_rotate_on_disk_without_a_restart() {
    let pki = pki();
    let (gw, _up) = start(&pki, "").await;
    let mut before = connect(gw.addr, sni("api.test")).await.unwrap();
    assert!(served(&before) == pki.api.der);
    assert!(request(&mut before, "api.test", "/1")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));

    // Overwritten in place, certificate first: for a moment it does not match its key, which
    // must not take the listener down.
    let new = server_leaf(&pki.server_ca, "api.test");
    write(gw.dir.path(), "api.pem", &new.cert);
    write(gw.dir.path(), "api.key", &new.key);
    wait_for_cert(gw.addr, &new.der).await;

    // The connection opened before keeps working; the other certificate is untouched.
    let r = request(&mut before, "api.test", "/2").await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let s = connect(gw.addr, sni("admin.test")).await.unwrap();
    assert!(served(&s) == pki.admin.der);
    let resp = https(&pki, None, gw.addr)
        .get(format!("https://api.test:{}/", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A broken file is logged and ignored: the current certificate keeps serving.
    write(gw.dir.path(), "api.key", "not a key");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = connect(gw.addr, sni("api.test")).await.unwrap();
    assert!(served(&s) == new.der);
}

#[tokio::test]
async fn certificates_change_on_reload_and_a_bad_path_is_refused_with_its_field() {
    let pki = pki();
    let (gw, up) = start(&pki, "").await;
    let mut before = connect(gw.addr, sni("api.test")).await.unwrap();
    assert!(request(&mut before, "api.test", "/1")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));

    let new = server_leaf(&pki.server_ca, "api.test");
    write(gw.dir.path(), "api2.pem", &new.cert);
    write(gw.dir.path(), "api2.key", &new.key);
    gw.rewrite(&tls_config(&up.url(), "api2", "")).await;
    gw.gw.reload().await.expect("reload applies");
    let s = connect(gw.addr, sni("api.test")).await.unwrap();
    assert!(
        served(&s) == new.der,
        "a reload reads the new files at once"
    );
    let r = request(&mut before, "api.test", "/2").await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // A key that does not exist: refused with the field's path, the running config serves on.
    let generation = gw.gw.snapshot().generation;
    let bad = tls_config(&up.url(), "api2", "").replace("certs/admin.key", "certs/missing.key");
    gw.rewrite(&bad).await;
    let errs = gw.gw.reload().await.expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.path == "listeners[0].tls.certificates[1].key"
                && e.message.contains("missing.key")),
        "{errs:?}"
    );
    // A key that belongs to another certificate: refused too.
    let mixed = tls_config(&up.url(), "api2", "").replace("certs/api2.key", "certs/api.key");
    gw.rewrite(&mixed).await;
    let errs = gw.gw.reload().await.expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.path == "listeners[0].tls.certificates[0].key"
                && e.message.contains("does not match")),
        "{errs:?}"
    );
    assert_eq!(gw.gw.snapshot().generation, generation);
    let mut s = connect(gw.addr, sni("api.test")).await.unwrap();
    assert!(served(&s) == new.der);
    assert!(request(&mut s, "api.test", "/3")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
}

const REQUIRED: &str = "      client_auth: { ca: certs/clients-ca.pem, mode: required }\n";
const OPTIONAL: &str = "      client_auth: { ca: certs/clients-ca.pem, mode: optional }\n";

/// Whether a raw client with `identity` gets a 200 for `GET /`.
async fn served_with(addr: SocketAddr, identity: Option<&Leaf>) -> bool {
    let Ok(mut s) = connect(
        addr,
        Hello {
            sni: Some("api.test"),
            identity,
            ..Hello::default()
        },
    )
    .await
    else {
        return false;
    };
    // TLS 1.3 clients learn of a refused certificate only at their first read.
    matches!(request(&mut s, "api.test", "/").await, Ok(r) if r.starts_with("HTTP/1.1 200"))
}

#[tokio::test]
async fn required_client_auth_refuses_clients_without_a_valid_certificate() {
    let pki = pki();
    let (gw, _up) = start(&pki, REQUIRED).await;
    assert!(!served_with(gw.addr, None).await, "no certificate");
    let stranger = leaf(
        &ca("unknown CA"),
        &[],
        "ci-bot",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    assert!(!served_with(gw.addr, Some(&stranger)).await, "unknown CA");
    assert!(
        served_with(gw.addr, Some(&pki.bot)).await,
        "valid certificate"
    );

    let resp = https(&pki, Some(&pki.bot), gw.addr)
        .get(format!("https://api.test:{}/", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(https(&pki, None, gw.addr)
        .get(format!("https://api.test:{}/", gw.addr.port()))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn optional_client_auth_accepts_both_but_never_an_unknown_ca() {
    let pki = pki();
    let (gw, _up) = start(&pki, OPTIONAL).await;
    assert!(served_with(gw.addr, None).await, "no certificate");
    assert!(
        served_with(gw.addr, Some(&pki.bot)).await,
        "valid certificate"
    );
    // A server certificate from the server CA is not a client certificate of the client CA.
    assert!(!served_with(gw.addr, Some(&pki.api)).await, "wrong CA");
    let stranger = leaf(
        &ca("unknown CA"),
        &[],
        "ci-bot",
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    assert!(!served_with(gw.addr, Some(&stranger)).await, "unknown CA");
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls12_only_client() {
    let pki = pki();
    let (gw, _up) = start(&pki, "      min_version: \"1.3\"\n").await;
    let refused = connect(
        gw.addr,
        Hello {
            sni: Some("api.test"),
            tls12_only: true,
            ..Hello::default()
        },
    )
    .await;
    assert!(refused.is_err(), "a TLS 1.2 handshake must fail");
    let s = connect(gw.addr, sni("api.test")).await.unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn redirect_https_answers_308_to_the_tls_listener_port() {
    let pki = pki();
    let up = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &pki);
    let yaml = config(&format!(
        r#"    redirect_https: true
  - name: secure
    address: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert: certs/api.pem, key: certs/api.key }}
upstreams:
  app: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: all
    match: {{ paths: ["/"] }}
    upstream: app
"#,
        up.url()
    ));
    let gw = gateway_in(dir, &yaml).await;
    let secure = gw.gw.local_addr("secure").await.unwrap();

    let no_follow = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let resp = no_follow
            .request(method.clone(), gw.url("/p/a?x=1"))
            .header("host", "api.test:8080")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 308, "{method}");
        assert_eq!(
            resp.headers()["location"],
            format!("https://api.test:{}/p/a?x=1", secure.port()).as_str()
        );
        assert!(resp.text().await.unwrap().contains("https://api.test"));
    }
    assert_eq!(up.requests(), 0, "redirects never reach the upstream");

    // A client that follows it ends up on the TLS listener.
    let follow = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.server_ca.pem.as_bytes()).unwrap()])
        .resolve("api.test", secure)
        .build()
        .unwrap();
    let resp = follow
        .get(gw.url("/p"))
        .header("host", "api.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.url().scheme(), "https");
    assert_eq!(common::echo_json(resp).await["uri"], "/p");

    // No Host to redirect to.
    let r = common::raw(gw.addr, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(
        r.starts_with("HTTP/1.0 400") || r.starts_with("HTTP/1.1 400"),
        "{r}"
    );
}

#[tokio::test]
async fn shutdown_drains_tls_connections_without_waiting_for_the_timeout() {
    let pki = pki();
    let (gw, _up) = start(&pki, "").await;
    let mut h1 = connect(gw.addr, sni("api.test")).await.unwrap();
    assert!(request(&mut h1, "api.test", "/")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    let h2 = https(&pki, None, gw.addr);
    let resp = h2
        .get(format!("https://api.test:{}/", gw.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);

    // Idle keep-alive connections close at once; the drain timeout (5 s) is not waited for.
    let started = Instant::now();
    timeout(Duration::from_secs(4), gw.gw.shutdown())
        .await
        .expect("shutdown in time");
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut buf = [0u8; 16];
    let closed = timeout(Duration::from_secs(2), h1.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
}

#[tokio::test]
async fn a_renamed_tls_listener_hands_over_its_socket_and_connections() {
    let pki = pki();
    let up = echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &pki);
    let port = common::closed_port().await;
    let yaml = |name: &str, cert: &str| {
        tls_config(&up.url(), cert, "").replace(
            "name: public\n    address: 127.0.0.1:0",
            &format!("name: {name}\n    address: {port}"),
        )
    };
    let gw = gateway_in(dir, &yaml("public", "api")).await;
    let mut before = connect(gw.addr, sni("api.test")).await.unwrap();
    assert!(request(&mut before, "api.test", "/1")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));

    let new = server_leaf(&pki.server_ca, "api.test");
    write(gw.dir.path(), "api2.pem", &new.cert);
    write(gw.dir.path(), "api2.key", &new.key);
    gw.rewrite(&yaml("front", "api2")).await;
    let outcome = gw.gw.reload().await.expect("rename applies");
    assert_eq!(
        (outcome.added, outcome.removed),
        (vec!["front".to_string()], vec!["public".to_string()])
    );
    assert_eq!(gw.gw.local_addr("front").await, Some(port));
    // The open TLS connection carries on under the new name; new handshakes get the new spec.
    let r = request(&mut before, "api.test", "/2").await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let s = connect(port, sni("api.test")).await.unwrap();
    assert!(served(&s) == new.der);
}
