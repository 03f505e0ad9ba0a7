//! TLS to upstreams: the rustls client configuration for `https://` targets. The server is always
//! verified, against the configured CA or the system's roots; a client certificate is presented
//! for mutual TLS when configured.

use std::sync::Arc;

use frontdesk_config::{UpstreamProtocol, UpstreamTlsConfig};
use rustls::pki_types::ServerName;

use crate::tls::{load_certs, load_key, root_store, TlsError};

/// Builds the client config (with ALPN for `protocol`) and the SNI override.
pub fn client_config(
    cfg: Option<&UpstreamTlsConfig>,
    protocol: UpstreamProtocol,
) -> Result<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>), TlsError> {
    let default = UpstreamTlsConfig::default();
    let cfg = cfg.unwrap_or(&default);
    let roots = root_store(cfg.ca.as_deref())?;
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::H2 => vec![b"h2".to_vec()],
        _ => vec![b"http/1.1".to_vec()],
    };
    let server_name = match &cfg.server_name {
        Some(n) => Some(ServerName::try_from(n.clone()).map_err(|_| TlsError::File {
            path: "server_name".into(),
            reason: format!("{n:?} is not a valid DNS name or IP address"),
        })?),
        None => None,
    };
    Ok((Arc::new(config), server_name))
}
