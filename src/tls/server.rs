//! TLS termination for a listener: the rustls server config built from `listeners[].tls`, the
//! certificate chosen per handshake by SNI, and re-reading the files when they change.
//!
//! A listener's [`ServerTls`] lives in its [`crate::snapshot::ListenerSpec`], so a config reload
//! builds a new one from the files as they are then. Between reloads the runtime's certificate
//! watcher calls [`ServerTls::refresh`] when a file changes on disk: the new certificates are
//! swapped into the resolver (an [`ArcSwap`]) that every later handshake reads, while
//! connections already established keep the session they negotiated.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use frontdesk_config::{ClientAuthMode, ListenerTlsConfig, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::client_cert::{ClientCert, ClientCertError};
use super::{parse_certs, parse_key, parse_root_store, read_file, TlsError};

/// ALPN protocols offered to clients, in server preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A listener's TLS: what its handshakes use now, and where that came from.
#[derive(Debug)]
pub struct ServerTls {
    source: ListenerTlsConfig,
    resolver: Arc<CertResolver>,
    config: ArcSwap<ServerConfig>,
    /// Fingerprint of the file contents in use; a refresh with the same contents does nothing.
    loaded: Mutex<u64>,
}

/// A problem with one field of `tls` (the path is relative to the listener's `tls`, such as
/// `certificates[1].key`).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {source}")]
pub struct ServerTlsError {
    /// Field path below `tls`.
    pub field: String,
    /// What is wrong with the file it names.
    #[source]
    pub source: TlsError,
}

/// Something accepted but probably wrong (an expired certificate), located like [`ServerTlsError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsWarning {
    /// Field path below `tls`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// What [`ServerTls::refresh`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The files hold what is already in use.
    Unchanged,
    /// New material is in use for new handshakes.
    Reloaded(Vec<ServerTlsWarning>),
}

/// What a finished handshake negotiated.
#[derive(Debug)]
pub struct Negotiated {
    /// ALPN chose `h2`: the connection speaks HTTP/2; otherwise HTTP/1.1.
    pub h2: bool,
    /// The verified client certificate, when the client sent one.
    pub client_cert: Option<Arc<ClientCert>>,
}

/// Chooses a certificate per handshake from a set that can be swapped at any time.
#[derive(Debug)]
pub struct CertResolver {
    set: ArcSwap<CertSet>,
}

/// Loaded certificates with the names each one serves.
#[derive(Debug)]
struct CertSet {
    /// In config order; the first is the default.
    keys: Vec<Arc<CertifiedKey>>,
    /// Lowercase DNS name → index of the first certificate naming it.
    exact: HashMap<String, usize>,
    /// `*.example.com` is stored as `example.com` → index.
    wildcard: HashMap<String, usize>,
}

/// Everything read from the files at one moment.
struct Material {
    fingerprint: u64,
    certs: CertSet,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    warnings: Vec<ServerTlsWarning>,
}

// === impl ServerTls ===

impl ServerTls {
    /// Reads every file `cfg` names and builds the server config. Errors name the field whose
    /// file is unreadable, malformed, or (for a key) does not match its certificate.
    pub fn build(
        cfg: &ListenerTlsConfig,
    ) -> Result<(ServerTls, Vec<ServerTlsWarning>), Vec<ServerTlsError>> {
        let m = read_material(cfg)?;
        let resolver = Arc::new(CertResolver {
            set: ArcSwap::from_pointee(m.certs),
        });
        let config = server_config(cfg, resolver.clone(), m.verifier)?;
        Ok((
            ServerTls {
                source: cfg.clone(),
                resolver,
                config: ArcSwap::from_pointee(config),
                loaded: Mutex::new(m.fingerprint),
            },
            m.warnings,
        ))
    }

    /// The config for the next handshake (one atomic load).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// Every file this listener's TLS reads: certificates, keys and the client CA.
    pub fn files(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for c in &self.source.certificates {
            out.push(c.cert.as_str());
            out.push(c.key.as_str());
        }
        if let Some(ca) = &self.source.client_auth {
            out.push(ca.ca.as_str());
        }
        out
    }

    /// Re-reads the files; if their contents changed and load cleanly, new handshakes use them.
    /// On error nothing changes (the old certificates keep serving).
    pub fn refresh(&self) -> Result<Refresh, Vec<ServerTlsError>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let fingerprint = fingerprint_files(&self.source)?;
        if fingerprint == *loaded {
            return Ok(Refresh::Unchanged);
        }
        let m = read_material(&self.source)?;
        if m.verifier.is_some() {
            // The client CA lives in the verifier, which is part of the server config.
            let config = server_config(&self.source, self.resolver.clone(), m.verifier)?;
            self.config.store(Arc::new(config));
        }
        self.resolver.set.store(Arc::new(m.certs));
        *loaded = m.fingerprint;
        Ok(Refresh::Reloaded(m.warnings))
    }

    /// The leaf certificate new handshakes get for `sni` (`None`: no SNI sent).
    pub fn certificate_for(&self, sni: Option<&str>) -> Option<CertificateDer<'static>> {
        let set = self.resolver.set.load();
        set.select(sni)?.cert.first().cloned()
    }
}

/// What the handshake on `conn` negotiated: the protocol and the client's identity.
///
/// Fails only if a verified client certificate cannot be parsed, which the caller treats as a
/// failed handshake: a connection must not carry an identity it cannot report.
pub fn negotiated(conn: &rustls::ServerConnection) -> Result<Negotiated, ClientCertError> {
    let client_cert = match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => Some(Arc::new(ClientCert::from_der(leaf)?)),
        None => None,
    };
    Ok(Negotiated {
        h2: conn.alpn_protocol() == Some(b"h2".as_slice()),
        client_cert,
    })
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

fn server_config(
    cfg: &ListenerTlsConfig,
    resolver: Arc<CertResolver>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, Vec<ServerTlsError>> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| vec![field_err("min_version", TlsError::Rustls(e))])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn field_err(field: impl Into<String>, source: TlsError) -> ServerTlsError {
    ServerTlsError {
        field: field.into(),
        source,
    }
}

/// Reads the files named in `cfg` once and hashes their contents.
fn fingerprint_files(cfg: &ListenerTlsConfig) -> Result<u64, Vec<ServerTlsError>> {
    let mut h = DefaultHasher::new();
    let mut errs = Vec::new();
    for (field, path) in file_fields(cfg) {
        match read_file(path) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => errs.push(field_err(field, e)),
        }
    }
    if errs.is_empty() {
        Ok(h.finish())
    } else {
        Err(errs)
    }
}

fn file_fields(cfg: &ListenerTlsConfig) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    for (i, c) in cfg.certificates.iter().enumerate() {
        out.push((format!("certificates[{i}].cert"), c.cert.as_str()));
        out.push((format!("certificates[{i}].key"), c.key.as_str()));
    }
    if let Some(ca) = &cfg.client_auth {
        out.push(("client_auth.ca".to_string(), ca.ca.as_str()));
    }
    out
}

fn read_material(cfg: &ListenerTlsConfig) -> Result<Material, Vec<ServerTlsError>> {
    let provider = provider();
    let mut h = DefaultHasher::new();
    let mut errs = Vec::new();
    let mut warnings = Vec::new();
    let mut keys = Vec::new();
    let mut names = Vec::new();
    for (i, c) in cfg.certificates.iter().enumerate() {
        let at = |f: &str| format!("certificates[{i}].{f}");
        // Each file is read once, so the fingerprint matches exactly what was parsed.
        let cert_pem = read_file(&c.cert).map_err(|e| field_err(at("cert"), e));
        let key_pem = read_file(&c.key).map_err(|e| field_err(at("key"), e));
        let (cert_pem, key_pem) = match (cert_pem, key_pem) {
            (Ok(c), Ok(k)) => (c, k),
            (c, k) => {
                errs.extend(c.err());
                errs.extend(k.err());
                continue;
            }
        };
        cert_pem.hash(&mut h);
        key_pem.hash(&mut h);
        let chain = parse_certs(&c.cert, &cert_pem).map_err(|e| field_err(at("cert"), e));
        let key = parse_key(&c.key, &key_pem).map_err(|e| field_err(at("key"), e));
        let (chain, key) = match (chain, key) {
            (Ok(c), Ok(k)) => (c, k),
            (c, k) => {
                errs.extend(c.err());
                errs.extend(k.err());
                continue;
            }
        };
        let leaf = match LeafInfo::parse(&chain[0]) {
            Ok(l) => l,
            Err(reason) => {
                errs.push(field_err(at("cert"), file_reason(&c.cert, reason)));
                continue;
            }
        };
        match CertifiedKey::from_der(chain, key, &provider) {
            Ok(k) => keys.push(Arc::new(k)),
            Err(rustls::Error::InconsistentKeys(_)) => {
                errs.push(field_err(
                    at("key"),
                    file_reason(
                        &c.key,
                        format!("does not match the certificate in {}", c.cert),
                    ),
                ));
                continue;
            }
            Err(e) => {
                errs.push(field_err(at("key"), file_reason(&c.key, e)));
                continue;
            }
        }
        if leaf.expired {
            warnings.push(ServerTlsWarning {
                field: at("cert"),
                message: format!("{}: the certificate has expired", c.cert),
            });
        }
        if leaf.names.is_empty() {
            warnings.push(ServerTlsWarning {
                field: at("cert"),
                message: format!(
                    "{}: the certificate names no DNS host, so SNI never selects it",
                    c.cert
                ),
            });
        }
        names.push(leaf.names);
    }

    let verifier = match &cfg.client_auth {
        None => None,
        Some(ca) => {
            let built = read_file(&ca.ca)
                .and_then(|pem| {
                    pem.hash(&mut h);
                    parse_root_store(&ca.ca, &pem)
                })
                .and_then(|roots| {
                    let b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                    let b = match ca.mode {
                        ClientAuthMode::Optional => b.allow_unauthenticated(),
                        ClientAuthMode::Required => b,
                    };
                    b.build().map_err(|e| file_reason(&ca.ca, e))
                });
            match built {
                Ok(v) => Some(v),
                Err(e) => {
                    errs.push(field_err("client_auth.ca", e));
                    None
                }
            }
        }
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    if keys.is_empty() {
        // Validation refuses an empty list; this keeps the resolver's invariant regardless.
        return Err(vec![field_err(
            "certificates",
            file_reason("", "a TLS listener needs at least one certificate"),
        )]);
    }
    Ok(Material {
        fingerprint: h.finish(),
        certs: CertSet::new(keys, names),
        verifier,
        warnings,
    })
}

fn file_reason(path: &str, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// What SNI selection needs from a leaf certificate.
struct LeafInfo {
    /// Lowercase DNS names: the DNS SANs, or the subject CN when there are none.
    names: Vec<String>,
    expired: bool,
}

impl LeafInfo {
    fn parse(der: &CertificateDer<'_>) -> Result<LeafInfo, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("cannot read the certificate: {e}"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            // Old certificates name their host only in the CN.
            if let Some(cn) = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
            {
                names.push(cn.to_ascii_lowercase());
            }
        }
        let expired = !cert.validity().is_valid();
        Ok(LeafInfo { names, expired })
    }
}

// === impl CertSet ===

impl CertSet {
    fn new(keys: Vec<Arc<CertifiedKey>>, names: Vec<Vec<String>>) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, list) in names.into_iter().enumerate() {
            for name in list {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(rest) => (&mut wildcard, rest.to_string()),
                    None => (&mut exact, name),
                };
                // The first certificate that names a host wins, as in the config's order.
                if let Entry::Vacant(v) = map.entry(key) {
                    v.insert(i);
                }
            }
        }
        CertSet {
            keys,
            exact,
            wildcard,
        }
    }

    /// An exact name, then a wildcard one label deep, then the first certificate.
    fn select(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let index = sni.and_then(|sni| {
            let lower;
            let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = sni.to_ascii_lowercase();
                lower.as_str()
            } else {
                sni
            };
            let sni = sni.strip_suffix('.').unwrap_or(sni);
            self.exact.get(sni).copied().or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        index
            .and_then(|i| self.keys.get(i))
            .or_else(|| self.keys.first())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // `None` (never expected: an empty set is refused when loading) aborts the handshake.
        self.set.load().select(hello.server_name()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frontdesk_config::CertificateConfig;
    use rcgen::{CertificateParams, KeyPair};

    fn write_cert(dir: &std::path::Path, name: &str, sans: &[&str]) -> CertificateConfig {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        CertificateConfig {
            cert: cert_path.to_string_lossy().into_owned(),
            key: key_path.to_string_lossy().into_owned(),
        }
    }

    fn tls(certificates: Vec<CertificateConfig>) -> ListenerTlsConfig {
        ListenerTlsConfig {
            certificates,
            client_auth: None,
            min_version: TlsVersion::V1_2,
        }
    }

    fn leaf(pem_path: &str) -> Option<CertificateDer<'static>> {
        super::super::load_certs(pem_path)
            .unwrap()
            .into_iter()
            .next()
    }

    #[test]
    fn sni_selects_exact_then_wildcard_then_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let api = write_cert(dir.path(), "api", &["api.test"]);
        let wild = write_cert(dir.path(), "wild", &["*.apps.test"]);
        let admin = write_cert(dir.path(), "admin", &["admin.test", "x.apps.test"]);
        let (t, warnings) =
            ServerTls::build(&tls(vec![api.clone(), wild.clone(), admin.clone()])).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(t.certificate_for(Some("api.test")), leaf(&api.cert));
        assert_eq!(t.certificate_for(Some("ADMIN.test")), leaf(&admin.cert));
        assert_eq!(t.certificate_for(Some("a.apps.test")), leaf(&wild.cert));
        // An exact name beats a wildcard, whatever the order.
        assert_eq!(t.certificate_for(Some("x.apps.test")), leaf(&admin.cert));
        // A wildcard covers one label only.
        assert_eq!(t.certificate_for(Some("a.b.apps.test")), leaf(&api.cert));
        assert_eq!(t.certificate_for(Some("apps.test")), leaf(&api.cert));
        assert_eq!(t.certificate_for(Some("other.test")), leaf(&api.cert));
        assert_eq!(t.certificate_for(None), leaf(&api.cert));
    }

    #[test]
    fn a_key_of_another_certificate_is_an_error_on_that_field() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cert(dir.path(), "a", &["a.test"]);
        let b = write_cert(dir.path(), "b", &["b.test"]);
        let mixed = CertificateConfig {
            cert: b.cert.clone(),
            key: a.key.clone(),
        };
        let errs = ServerTls::build(&tls(vec![a, mixed])).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "certificates[1].key");
        assert!(
            errs[0].to_string().contains("does not match"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn missing_and_malformed_files_name_their_fields() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cert(dir.path(), "a", &["a.test"]);
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let mut cfg = tls(vec![
            a.clone(),
            CertificateConfig {
                cert: dir.path().join("nope.pem").to_string_lossy().into_owned(),
                key: a.key.clone(),
            },
            CertificateConfig {
                cert: a.cert.clone(),
                key: junk.to_string_lossy().into_owned(),
            },
        ]);
        cfg.client_auth = Some(frontdesk_config::ClientAuthConfig {
            ca: junk.to_string_lossy().into_owned(),
            mode: ClientAuthMode::Required,
        });
        let errs = ServerTls::build(&cfg).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "certificates[1].cert",
                "certificates[2].key",
                "client_auth.ca"
            ]
        );
    }

    #[test]
    fn refresh_swaps_changed_files_and_keeps_the_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cert(dir.path(), "a", &["a.test"]);
        let (t, _) = ServerTls::build(&tls(vec![a.clone()])).unwrap();
        let first = t.certificate_for(None);
        assert_eq!(t.refresh().unwrap(), Refresh::Unchanged);

        // A new certificate with the old key: refused, the old one stays.
        let other = write_cert(dir.path(), "other", &["a.test"]);
        std::fs::copy(&other.cert, &a.cert).unwrap();
        assert!(t.refresh().is_err());
        assert_eq!(t.certificate_for(None), first);

        // Its key follows: now it loads.
        std::fs::copy(&other.key, &a.key).unwrap();
        assert!(matches!(t.refresh().unwrap(), Refresh::Reloaded(_)));
        assert_eq!(t.certificate_for(None), leaf(&other.cert));
        assert_ne!(t.certificate_for(None), first);
    }
}
