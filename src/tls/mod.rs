//! TLS building blocks shared by listeners (terminating TLS) and upstreams (originating it):
//! reading PEM files and root stores. rustls with the aws-lc-rs provider throughout.
//!
//! [`server`] terminates TLS on listeners (SNI certificate selection, ALPN, client certificates,
//! rotation); [`client_cert`] is the verified client identity a connection carries.

pub mod client_cert;
pub mod server;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &str, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Reads a whole file (PEM files are small), naming it in the error.
pub fn read_file(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_err(path, e))
}

/// Reads every certificate in a PEM file (a chain, leaf first, or a CA bundle).
pub fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(path, &read_file(path)?)
}

/// Every certificate in PEM text already read from `path` (named in errors only).
pub fn parse_certs(path: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(path, &read_file(path)?)
}

/// The first private key in PEM text already read from `path` (named in errors only).
pub fn parse_key(path: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| file_err(path, e))
}

/// A root store from CA certificates in PEM text already read from `path`.
pub fn parse_root_store(path: &str, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, pem)? {
        roots.add(cert).map_err(|e| file_err(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// A root store from a CA bundle, or the system's roots when `ca` is `None`.
pub fn root_store(ca: Option<&str>) -> Result<Arc<RootCertStore>, TlsError> {
    if let Some(path) = ca {
        return parse_root_store(path, &read_file(path)?);
    }
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading a system CA certificate failed");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system CA certificates found; https upstreams need `tls.ca`");
    }
    Ok(Arc::new(roots))
}
