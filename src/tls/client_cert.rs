//! The identity in a verified client certificate (mutual TLS), extracted once per connection
//! right after the handshake and shared by every request on it ([`crate::proxy::ConnInfo`],
//! plugin [`crate::plugin::Ctx`]).

use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The client certificate a connection presented and the listener verified.
///
/// Contract: a value exists only when the listener has `tls.client_auth` and the client's
/// certificate chain verified against its `ca` during the handshake; it describes the leaf
/// (end-entity) certificate. It never changes for the life of the connection, so it identifies
/// every request the connection carries. Strings are taken from the certificate as they are
/// (not normalised beyond UTF-8); a name that is not valid UTF-8 is left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    /// The full subject distinguished name, attributes in certificate order separated by `, `
    /// (for example `C=DE, O=Example, CN=ci-bot`).
    pub subject: String,
    /// The subject's first common name (`CN`), if any.
    pub common_name: Option<String>,
    /// The issuer's distinguished name, in the same form as `subject`.
    pub issuer: String,
    /// The serial number as lowercase hex bytes separated by `:`.
    pub serial: String,
    /// Subject alternative names of type DNS.
    pub dns_names: Vec<String>,
    /// Subject alternative names of type e-mail (rfc822Name).
    pub emails: Vec<String>,
    /// Subject alternative names of type URI (such as SPIFFE IDs).
    pub uris: Vec<String>,
    /// Subject alternative names of type IP address.
    pub ips: Vec<IpAddr>,
    /// The leaf certificate as sent (DER), for fingerprints or fields not extracted here.
    pub der: CertificateDer<'static>,
}

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientCertError {
    /// The DER is not an X.509 certificate x509-parser accepts.
    #[error("cannot parse the client certificate: {0}")]
    Parse(String),
}

// === impl ClientCert ===

impl ClientCert {
    /// Extracts the identity from a DER certificate (the verified leaf).
    pub fn from_der(der: &CertificateDer<'_>) -> Result<ClientCert, ClientCertError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| ClientCertError::Parse(e.to_string()))?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut out = ClientCert {
            subject: subject.to_string(),
            common_name,
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            dns_names: Vec::new(),
            emails: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
            der: der.clone().into_owned(),
        };
        // A malformed SAN extension leaves the names empty rather than failing: the chain has
        // already verified, and the subject still identifies the client.
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => out.dns_names.push((*n).to_string()),
                    GeneralName::RFC822Name(n) => out.emails.push((*n).to_string()),
                    GeneralName::URI(n) => out.uris.push((*n).to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Some(ip) = ip_from_bytes(b) {
                            out.ips.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(b).ok().map(IpAddr::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair, SanType};

    #[test]
    fn extracts_subject_cn_and_every_san_kind() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "clients CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["bot.example".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        params.distinguished_name.push(DnType::CommonName, "ci-bot");
        params.subject_alt_names.extend([
            SanType::Rfc822Name("bot@example.com".try_into().unwrap()),
            SanType::URI("spiffe://example/ci-bot".try_into().unwrap()),
            SanType::IpAddress("10.0.0.7".parse().unwrap()),
            SanType::IpAddress("::1".parse().unwrap()),
        ]);
        let cert = params.signed_by(&key, &issuer).unwrap();

        let cc = ClientCert::from_der(cert.der()).unwrap();
        assert_eq!(cc.common_name.as_deref(), Some("ci-bot"));
        assert_eq!(cc.subject, "O=Example, CN=ci-bot");
        assert_eq!(cc.issuer, "CN=clients CA");
        assert_eq!(cc.dns_names, ["bot.example"]);
        assert_eq!(cc.emails, ["bot@example.com"]);
        assert_eq!(cc.uris, ["spiffe://example/ci-bot"]);
        assert_eq!(
            cc.ips,
            [
                "10.0.0.7".parse::<IpAddr>().unwrap(),
                "::1".parse::<IpAddr>().unwrap()
            ]
        );
        assert!(!cc.serial.is_empty());
        assert_eq!(cc.der.as_ref(), cert.der().as_ref());
    }

    #[test]
    fn a_certificate_without_cn_or_sans_has_empty_names() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        let cert = params.self_signed(&key).unwrap();
        let cc = ClientCert::from_der(cert.der()).unwrap();
        assert_eq!(cc.common_name, None);
        assert_eq!(cc.subject, "O=Example");
        assert!(cc.dns_names.is_empty() && cc.emails.is_empty() && cc.uris.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0xff]);
        assert!(ClientCert::from_der(&der).is_err());
        assert!(ClientCert::from_der(&CertificateDer::from(Vec::new())).is_err());
    }
}
