//! `client_cert`: identifies consumers by the client certificate the listener verified
//! (`tls.client_auth`): the consumer whose `client_cert.subject_cn` equals the certificate's
//! subject common name. A verified certificate that names no consumer is refused (`401`); on a
//! route whose only auth plugin is this one, a request without a certificate is refused too.

use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::ClientCertConfig;
use http::{HeaderValue, StatusCode};

use crate::consumer::Consumer;
use crate::plugin::{BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead};

/// The `client_cert` plugin.
#[derive(Debug)]
pub struct ClientCertAuth {
    anonymous: Option<Arc<Consumer>>,
    env: BuildEnv,
}

/// There is no HTTP authentication scheme for TLS client certificates; this names what is missing.
static CHALLENGE: HeaderValue = HeaderValue::from_static("ClientCertificate realm=\"frontdesk\"");

impl PluginFactory for ClientCertAuth {
    const KIND: &'static str = "client_cert";
    const ORDER: u16 = 123;
    const AUTH: bool = true;
    type Config = ClientCertConfig;

    fn build(cfg: &ClientCertConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        Ok(Arc::new(ClientCertAuth {
            anonymous: super::key_auth::anonymous(cfg.anonymous.as_deref(), env)?,
            env: env.clone(),
        }))
    }
}

#[async_trait]
impl Plugin for ClientCertAuth {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request_filter(
        &self,
        _req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        if super::auth::identified(cx) {
            return Ok(Flow::Continue);
        }
        let Some(cert) = &cx.client_cert else {
            super::auth::missing(cx, CHALLENGE.clone(), self.anonymous.as_ref());
            return Ok(Flow::Continue);
        };
        let consumer = cert
            .common_name
            .as_deref()
            .and_then(|cn| self.env.consumers.by_subject_cn(cn))
            .cloned();
        match consumer {
            Some(c) => {
                super::auth::identify(cx, Some(c));
                Ok(Flow::Continue)
            }
            None => Err(PluginError::new(
                StatusCode::UNAUTHORIZED,
                "the client certificate names no consumer",
            )
            .with_reason("unknown_certificate")
            .with_header(http::header::WWW_AUTHENTICATE, CHALLENGE.clone())),
        }
    }
}
