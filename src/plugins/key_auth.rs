//! `key_auth`: identifies consumers by an API key in a header (default `x-api-key`) or, when
//! configured, a query parameter.
//!
//! Keys are looked up by their SHA-256 ([`crate::consumer::Consumers::by_api_key`]): the
//! comparison runs on digests, so its timing says nothing about how much of a real key an
//! attacker guessed.

use std::sync::Arc;

use async_trait::async_trait;
use frontdesk_config::KeyAuthConfig;
use http::{header, HeaderName, HeaderValue, StatusCode, Uri};

use crate::consumer::Consumer;
use crate::plugin::{BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead};

/// The `key_auth` plugin.
#[derive(Debug)]
pub struct KeyAuth {
    header: HeaderName,
    query: Option<String>,
    anonymous: Option<Arc<Consumer>>,
    forward_credentials: bool,
    env: BuildEnv,
}

impl PluginFactory for KeyAuth {
    const KIND: &'static str = "key_auth";
    const ORDER: u16 = 120;
    const AUTH: bool = true;
    type Config = KeyAuthConfig;

    fn build(cfg: &KeyAuthConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        let header = HeaderName::from_bytes(cfg.header.as_bytes())
            .map_err(|_| format!("header: invalid header name {:?}", cfg.header))?;
        if cfg.query.as_deref() == Some("") {
            return Err("query: must not be empty".into());
        }
        Ok(Arc::new(KeyAuth {
            header,
            query: cfg.query.clone(),
            anonymous: anonymous(cfg.anonymous.as_deref(), env)?,
            forward_credentials: cfg.forward_credentials,
            env: env.clone(),
        }))
    }
}

/// Resolves an auth plugin's `anonymous` consumer name; unknown names are config errors.
pub(crate) fn anonymous(
    name: Option<&str>,
    env: &BuildEnv,
) -> Result<Option<Arc<Consumer>>, String> {
    match name {
        None => Ok(None),
        Some(n) => env
            .consumers
            .by_name(n)
            .cloned()
            .map(Some)
            .ok_or_else(|| format!("anonymous: no consumer is named {n:?}")),
    }
}

static CHALLENGE: HeaderValue = HeaderValue::from_static("Key realm=\"frontdesk\"");

#[async_trait]
impl Plugin for KeyAuth {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request_filter(
        &self,
        req: &mut RequestHead,
        cx: &mut Ctx,
    ) -> Result<Flow, PluginError> {
        if super::auth::identified(cx) {
            return Ok(Flow::Continue);
        }
        let (key, from_query) = match req.headers.get(&self.header) {
            Some(v) => (v.as_bytes().to_vec(), false),
            None => match self.query.as_deref().and_then(|q| query_param(&req.uri, q)) {
                Some(v) => (v.into_bytes(), true),
                None => {
                    super::auth::missing(cx, CHALLENGE.clone(), self.anonymous.as_ref());
                    return Ok(Flow::Continue);
                }
            },
        };
        let Some(consumer) = self.env.consumers.by_api_key(&key) else {
            return Err(
                PluginError::new(StatusCode::UNAUTHORIZED, "the API key is not valid")
                    .with_reason("invalid_key")
                    .with_header(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Key realm=\"frontdesk\", error=\"invalid_key\""),
                    ),
            );
        };
        super::auth::identify(cx, Some(consumer.clone()));
        if !self.forward_credentials {
            if from_query {
                if let Some(q) = &self.query {
                    req.uri = without_query_param(&req.uri, q);
                }
            } else {
                req.headers.remove(&self.header);
            }
        }
        Ok(Flow::Continue)
    }
}

/// The percent-decoded value of query parameter `name`, if present and non-empty.
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name && !v.is_empty()).then(|| percent_decode(v))
    })
}

/// `uri` without every `name=...` query parameter.
fn without_query_param(uri: &Uri, name: &str) -> Uri {
    let Some(q) = uri.query() else {
        return uri.clone();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| percent_decode(pair.split_once('=').map_or(*pair, |(k, _)| k)) != name)
        .collect();
    let pq = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space); invalid escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_are_decoded_and_removed() {
        let uri: Uri = "/p?a=1&api%5Fkey=k%2B1+2&b=2".parse().expect("uri");
        assert_eq!(query_param(&uri, "api_key").as_deref(), Some("k+1 2"));
        assert_eq!(without_query_param(&uri, "api_key"), "/p?a=1&b=2");
        let only: Uri = "/p?api_key=x".parse().expect("uri");
        assert_eq!(without_query_param(&only, "api_key"), "/p");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
