//! `basic_auth`: identifies consumers by `Authorization: Basic` against their bcrypt hashes.
//!
//! bcrypt costs tens to hundreds of milliseconds by design, so a verified `(username, password)`
//! pair is remembered for a minute (by its SHA-256, never in clear): basic auth does not cost a
//! hash per request. Failed attempts are never cached, so guessing still pays full price. Hashing
//! runs on tokio's blocking pool, never on a worker thread.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use frontdesk_config::BasicAuthConfig;
use http::{header, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use crate::consumer::Consumer;
use crate::plugin::{BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead};

/// How long a verified password is remembered.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// Verified pairs remembered at most.
const VERIFIED_MAX: u64 = 10_000;

/// The `basic_auth` plugin.
pub struct BasicAuth {
    challenge: HeaderValue,
    anonymous: Option<Arc<Consumer>>,
    forward_credentials: bool,
    env: BuildEnv,
    /// SHA-256 of `username \0 password \0 hash` of recently verified credentials.
    verified: moka::sync::Cache<[u8; 32], ()>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

impl PluginFactory for BasicAuth {
    const KIND: &'static str = "basic_auth";
    const ORDER: u16 = 122;
    const AUTH: bool = true;
    type Config = BasicAuthConfig;

    fn build(cfg: &BasicAuthConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        let realm = cfg.realm.as_deref().unwrap_or("frontdesk");
        if realm.contains(['"', '\\']) {
            return Err("realm: must not contain quotes or backslashes".into());
        }
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                .map_err(|_| "realm: not a valid header value".to_string())?;
        Ok(Arc::new(BasicAuth {
            challenge,
            anonymous: super::key_auth::anonymous(cfg.anonymous.as_deref(), env)?,
            forward_credentials: cfg.forward_credentials,
            env: env.clone(),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_MAX)
                .time_to_live(VERIFIED_TTL)
                .build(),
        }))
    }
}

/// `Basic <base64(user:pass)>` from an `Authorization` value: `None` when the scheme is another
/// one, `Some(Err)` when it is Basic but malformed.
fn parse_basic(v: &HeaderValue) -> Option<Result<(String, String), &'static str>> {
    let s = v.to_str().ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
        return Some(Err("the Basic credentials are not valid base64"));
    };
    let Ok(text) = String::from_utf8(raw) else {
        return Some(Err("the Basic credentials are not UTF-8"));
    };
    Some(match text.split_once(':') {
        Some((u, p)) => Ok((u.to_string(), p.to_string())),
        None => Err("the Basic credentials have no `:`"),
    })
}

impl BasicAuth {
    fn refuse(&self, why: &str) -> PluginError {
        PluginError::new(StatusCode::UNAUTHORIZED, why)
            .with_reason("invalid_password")
            .with_header(header::WWW_AUTHENTICATE, self.challenge.clone())
    }
}

#[async_trait]
impl Plugin for BasicAuth {
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
        let parsed = req.headers.get(header::AUTHORIZATION).and_then(parse_basic);
        let (username, password) = match parsed {
            None => {
                super::auth::missing(cx, self.challenge.clone(), self.anonymous.as_ref());
                return Ok(Flow::Continue);
            }
            Some(Err(why)) => return Err(self.refuse(why)),
            Some(Ok(pair)) => pair,
        };
        let Some(cred) = self.env.consumers.by_username(&username) else {
            return Err(self.refuse("the username or password is wrong"));
        };
        let mut h = Sha256::new();
        h.update(username.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.update([0]);
        h.update(cred.password_hash.as_bytes());
        let fingerprint: [u8; 32] = h.finalize().into();
        if !self.verified.contains_key(&fingerprint) {
            let hash = cred.password_hash.clone();
            let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
                .await
                .map_err(|_| {
                    PluginError::new(StatusCode::INTERNAL_SERVER_ERROR, "password check failed")
                })?
                .unwrap_or(false);
            if !ok {
                return Err(self.refuse("the username or password is wrong"));
            }
            self.verified.insert(fingerprint, ());
        }
        super::auth::identify(cx, Some(cred.consumer.clone()));
        if !self.forward_credentials {
            req.headers.remove(header::AUTHORIZATION);
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse_or_say_why_not() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            parse_basic(&v("Basic YWxpY2U6czNjcjN0OndpdGg6Y29sb25z")),
            Some(Ok(("alice".into(), "s3cr3t:with:colons".into())))
        );
        assert_eq!(parse_basic(&v("Bearer abc")), None);
        assert!(matches!(parse_basic(&v("basic !!!")), Some(Err(_))));
        assert!(matches!(parse_basic(&v("Basic YWxpY2U=")), Some(Err(_))));
    }
}
