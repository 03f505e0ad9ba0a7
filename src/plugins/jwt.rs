//! `jwt`: identifies callers by a JSON Web Token in `Authorization: Bearer`. Authentication,
//! order 121, in the request phase.
//!
//! The token's `iss` (read before anything is verified) picks one configured issuer; the token is
//! then verified with only that issuer's keys and algorithms, so its own `alg` header is never
//! trusted: `none` is never accepted, and an HS256 token signed with an RSA public key as the
//! secret cannot meet an issuer that allows HS* (such an issuer has a secret, never public keys).
//! Keys come from a shared secret (HS*) or the issuer's JWKS URL (`jwks.rs`). `exp` is required,
//! `nbf`, `iss` and `aud` are checked, with `leeway` on the times.
//!
//! A valid token whose `consumer_claim` names a consumer identifies that consumer; one naming none
//! identifies an unnamed caller (unless `require_consumer`). No bearer token: the plugin offers
//! its challenge and `anonymous` consumer and steps aside for the other auth plugins. A bad token:
//! `401` with `WWW-Authenticate: Bearer error="invalid_token"` and a detail saying why. No keys
//! ever fetched and the JWKS endpoint down: `503`, since the gateway, not the caller, is at fault.

mod jwks;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use frontdesk_config::{JwtConfig, JwtIssuerConfig};
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::Digest as _;

use self::jwks::{Jwks, KeyError};
use crate::consumer::{Consumer, Consumers};
use crate::plugin::{BuildEnv, Ctx, Flow, Phases, Plugin, PluginError, PluginFactory, RequestHead};

/// Challenge offered when a request carries no bearer token.
const CHALLENGE: &str = "Bearer realm=\"frontdesk\"";
/// Challenge sent with the refusal of a bad token (RFC 6750 §3.1).
const INVALID_TOKEN: &str = "Bearer realm=\"frontdesk\", error=\"invalid_token\"";

/// The `jwt` plugin.
pub struct Jwt {
    /// By expected `iss`.
    issuers: HashMap<String, Issuer>,
    consumer_claim: String,
    require_consumer: bool,
    /// Upstream header ← claim name.
    forward_claims: Vec<(HeaderName, String)>,
    anonymous: Option<Arc<Consumer>>,
    forward_credentials: bool,
    consumers: Arc<Consumers>,
    /// Clock skew allowed on `exp`, in seconds.
    leeway: u64,
    /// Recently verified tokens by SHA-256: an RS256 check costs tens of microseconds, so a
    /// token seen again within [`VERIFIED_TTL`] (and before its `exp`) is not verified again.
    verified: moka::sync::Cache<[u8; 32], Arc<Verified>>,
}

/// A token that passed every check, and when it stops being valid.
struct Verified {
    claims: Arc<Map<String, Value>>,
    /// `exp`, in seconds since the epoch.
    exp: u64,
}

/// How long a verified token is remembered. A key removed from the issuer's JWKS stops
/// accepting already-seen tokens after at most this long.
const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// One accepted issuer: its checks and where its keys come from.
struct Issuer {
    /// One validation (`iss`, `aud`, required claims, leeway) per allowed algorithm, built once:
    /// jsonwebtoken wants every algorithm of a validation to fit the key's family, so a token is
    /// checked against exactly its own (allowed) algorithm.
    validations: Vec<(Algorithm, Validation)>,
    keys: IssuerKeys,
}

enum IssuerKeys {
    /// HS* shared secret.
    Secret(DecodingKey),
    /// Public keys from the issuer's JWKS URL.
    Jwks(Arc<Jwks>),
}

/// Why a bearer token was refused. The details name the reason, never the token.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Malformed,
    MissingClaim(&'static str),
    BadClaim(String),
    UnknownIssuer,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    NoConsumer,
    /// Not the caller's fault: no keys were ever fetched and the JWKS endpoint does not answer.
    KeysUnavailable,
}

// === impl Jwt ===

impl PluginFactory for Jwt {
    const KIND: &'static str = "jwt";
    const ORDER: u16 = 121;
    const AUTH: bool = true;
    type Config = JwtConfig;

    fn build(cfg: &JwtConfig, env: &BuildEnv) -> Result<Arc<dyn Plugin>, String> {
        if cfg.issuers.is_empty() {
            return Err("issuers: list at least one issuer".into());
        }
        let leeway = cfg.leeway.0.as_secs();
        let mut issuers = HashMap::new();
        for (i, ic) in cfg.issuers.iter().enumerate() {
            let issuer = Issuer::build(ic, leeway).map_err(|e| format!("issuers[{i}]: {e}"))?;
            if issuers.insert(ic.issuer.clone(), issuer).is_some() {
                return Err(format!("issuers[{i}]: duplicate issuer {:?}", ic.issuer));
            }
        }
        if cfg.consumer_claim.is_empty() {
            return Err("consumer_claim: must not be empty".into());
        }
        let anonymous = match &cfg.anonymous {
            None => None,
            Some(name) => Some(
                env.consumers
                    .by_name(name)
                    .cloned()
                    .ok_or_else(|| format!("anonymous: no consumer is named {name:?}"))?,
            ),
        };
        let mut forward_claims = Vec::with_capacity(cfg.forward_claims.len());
        for (header, claim) in &cfg.forward_claims {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("forward_claims: invalid header name {header:?}"))?;
            // These belong to the gateway (consumer identity) or to the credential itself: a claim
            // must not be able to pose as them.
            if name == AUTHORIZATION
                || name.as_str().starts_with("x-consumer-")
                || name == crate::plugin::X_ANONYMOUS_CONSUMER
            {
                return Err(format!(
                    "forward_claims: {header:?} is set by the gateway and cannot carry a claim"
                ));
            }
            forward_claims.push((name, claim.clone()));
        }
        Ok(Arc::new(Jwt {
            issuers,
            consumer_claim: cfg.consumer_claim.clone(),
            require_consumer: cfg.require_consumer,
            forward_claims,
            anonymous,
            forward_credentials: cfg.forward_credentials,
            consumers: Arc::clone(&env.consumers),
            leeway: cfg.leeway.get().as_secs(),
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
        }))
    }
}

#[async_trait]
impl Plugin for Jwt {
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
        // Whatever happens next, a client never chooses the values of claim headers.
        for (name, _) in &self.forward_claims {
            req.headers.remove(name);
        }
        if super::auth::identified(cx) {
            return Ok(Flow::Continue);
        }
        let Some(token) = bearer_token(&req.headers) else {
            super::auth::missing(
                cx,
                HeaderValue::from_static(CHALLENGE),
                self.anonymous.as_ref(),
            );
            return Ok(Flow::Continue);
        };
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let verified = match self.verified.get(&digest) {
            Some(v) if now <= v.exp.saturating_add(self.leeway) => v,
            _ => {
                let claims = self.verify(token).await.map_err(Refusal::into_error)?;
                // `exp` is required, so a verified token has one.
                let exp = claims
                    .get("exp")
                    .and_then(Value::as_f64)
                    .map_or(0, |e| e as u64);
                let v = Arc::new(Verified {
                    claims: Arc::new(claims),
                    exp,
                });
                self.verified.insert(digest, v.clone());
                v
            }
        };
        let claims = &verified.claims;

        let consumer = claim_text(claims.get(&self.consumer_claim))
            .and_then(|name| self.consumers.by_name(&name).cloned());
        if consumer.is_none() && self.require_consumer {
            return Err(Refusal::NoConsumer.into_error());
        }
        for (name, claim) in &self.forward_claims {
            // A claim that cannot be a header value (control characters) is left out, like an
            // absent one, rather than refusing a valid token.
            if let Some(v) = claim_text(claims.get(claim))
                .and_then(|t| HeaderValue::from_bytes(t.as_bytes()).ok())
            {
                req.headers.insert(name.clone(), v);
            }
        }
        if !self.forward_credentials {
            req.headers.remove(AUTHORIZATION);
        }
        super::auth::identify(cx, consumer);
        // For what selects on claims after authentication (client profiles).
        cx.ext
            .insert(super::auth::VerifiedClaims(verified.claims.clone()));
        Ok(Flow::Continue)
    }
}

impl Jwt {
    /// Verifies `token` against the issuer its `iss` names and returns its claims.
    async fn verify(&self, token: &str) -> Result<Map<String, Value>, Refusal> {
        let (header, payload) = split_token(token)?;
        let iss = match payload.get("iss") {
            None => return Err(Refusal::MissingClaim("iss")),
            Some(Value::String(s)) => s,
            Some(_) => return Err(Refusal::BadClaim("iss".into())),
        };
        let issuer = self.issuers.get(iss).ok_or(Refusal::UnknownIssuer)?;
        // Names jsonwebtoken does not know (`none` among them) are never allowed.
        let alg = Algorithm::from_str(&header.alg).map_err(|_| Refusal::AlgorithmNotAllowed)?;
        let validation = issuer
            .validations
            .iter()
            .find_map(|(a, v)| (*a == alg).then_some(v))
            .ok_or(Refusal::AlgorithmNotAllowed)?;
        match &issuer.keys {
            IssuerKeys::Secret(key) => decode(token, [key], validation),
            IssuerKeys::Jwks(jwks) => {
                let keys =
                    jwks.keys_for(header.kid.as_deref(), alg)
                        .await
                        .map_err(|e| match e {
                            KeyError::Unknown => Refusal::UnknownKey,
                            KeyError::Unavailable => Refusal::KeysUnavailable,
                        })?;
                decode(token, keys.iter().map(|k| &k.key), validation)
            }
        }
    }
}

// === impl Issuer ===

impl Issuer {
    fn build(cfg: &JwtIssuerConfig, leeway: u64) -> Result<Issuer, String> {
        let mut algorithms = Vec::with_capacity(cfg.algorithms.len());
        for name in &cfg.algorithms {
            let alg = Algorithm::from_str(name)
                .map_err(|_| format!("algorithms: unknown algorithm {name:?}"))?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        if algorithms.is_empty() {
            return Err("algorithms: list at least one algorithm".into());
        }
        let is_hmac =
            |a: &Algorithm| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let keys = match (&cfg.jwks_url, &cfg.secret) {
            (Some(_), Some(_)) => return Err("give either `jwks_url` or `secret`, not both".into()),
            (None, None) => {
                return Err(
                    "give the issuer's keys: `jwks_url` (RS/PS/ES/EdDSA) or `secret` (HS)".into(),
                )
            }
            (Some(url), None) => {
                if let Some(a) = algorithms.iter().find(|a| is_hmac(a)) {
                    return Err(format!("algorithms: {a:?} needs the issuer's `secret`"));
                }
                match reqwest::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => return Err(format!("jwks_url: {url:?} is not an http(s) URL")),
                }
                IssuerKeys::Jwks(Arc::new(Jwks::new(url)?))
            }
            (None, Some(secret)) => {
                if let Some(a) = algorithms.iter().find(|a| !is_hmac(a)) {
                    return Err(format!(
                        "algorithms: {a:?} needs the issuer's `jwks_url` (a secret only verifies HS*)"
                    ));
                }
                if secret.is_empty() {
                    return Err("secret: must not be empty".into());
                }
                IssuerKeys::Secret(DecodingKey::from_secret(secret.as_bytes()))
            }
        };
        let mut required = vec!["exp", "iss"];
        if !cfg.audiences.is_empty() {
            required.push("aud");
        }
        let validations = algorithms
            .into_iter()
            .map(|alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_issuer(&[cfg.issuer.as_str()]);
                if cfg.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&cfg.audiences);
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        Ok(Issuer { validations, keys })
    }
}

// === impl Refusal ===

impl Refusal {
    fn into_error(self) -> PluginError {
        let reason = match &self {
            Refusal::Expired => "token_expired",
            Refusal::BadSignature => "bad_signature",
            _ => "invalid_token",
        };
        let why: Cow<'static, str> = match self {
            Refusal::KeysUnavailable => {
                return PluginError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the token issuer's keys are unavailable",
                )
                .with_header(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Refusal::Malformed => "malformed (not a signed JWT)".into(),
            Refusal::MissingClaim(c) => format!("missing {c} claim").into(),
            Refusal::BadClaim(c) => format!("invalid {c} claim").into(),
            Refusal::UnknownIssuer => "unknown issuer".into(),
            Refusal::AlgorithmNotAllowed => "algorithm not allowed".into(),
            Refusal::UnknownKey => "unknown key (kid)".into(),
            Refusal::BadSignature => "bad signature".into(),
            Refusal::Expired => "expired".into(),
            Refusal::NotYetValid => "not yet valid (nbf)".into(),
            Refusal::WrongAudience => "wrong audience".into(),
            Refusal::NoConsumer => "it names no known consumer".into(),
        };
        PluginError::new(StatusCode::UNAUTHORIZED, format!("invalid token: {why}"))
            .with_reason(reason)
            .with_header(WWW_AUTHENTICATE, HeaderValue::from_static(INVALID_TOKEN))
    }

    fn from_jwt_error(e: &jsonwebtoken::errors::Error) -> Refusal {
        match e.kind() {
            ErrorKind::InvalidSignature => Refusal::BadSignature,
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::ImmatureSignature => Refusal::NotYetValid,
            ErrorKind::InvalidAudience => Refusal::WrongAudience,
            ErrorKind::InvalidIssuer => Refusal::UnknownIssuer,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                Refusal::AlgorithmNotAllowed
            }
            ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
                "exp" => Refusal::MissingClaim("exp"),
                "aud" => Refusal::MissingClaim("aud"),
                "iss" => Refusal::MissingClaim("iss"),
                other => Refusal::BadClaim(other.to_owned()),
            },
            ErrorKind::InvalidClaimFormat(c) => Refusal::BadClaim(c.clone()),
            // A key of the wrong kind for the algorithm (filtered out before, but never trusted).
            ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey => Refusal::BadSignature,
            _ => Refusal::Malformed,
        }
    }
}

/// The token's header fields we route on, read before verification.
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

/// Reads a compact JWS's header and claims without verifying anything: only to pick the issuer,
/// the algorithm check and the key. Everything is verified again by `decode`.
fn split_token(token: &str) -> Result<(RawHeader, Map<String, Value>), Refusal> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    let json = |part: &str| -> Result<Map<String, Value>, Refusal> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| Refusal::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| Refusal::Malformed)
    };
    let mut header = json(h)?;
    let header = match (header.remove("alg"), header.remove("kid")) {
        (Some(Value::String(alg)), None) => RawHeader { alg, kid: None },
        (Some(Value::String(alg)), Some(Value::String(kid))) => RawHeader {
            alg,
            kid: Some(kid),
        },
        _ => return Err(Refusal::Malformed),
    };
    Ok((header, json(p)?))
}

/// Verifies signature and claims with each candidate key in turn; the first key whose signature
/// matches decides.
fn decode<'k>(
    token: &str,
    keys: impl IntoIterator<Item = &'k DecodingKey>,
    validation: &Validation,
) -> Result<Map<String, Value>, Refusal> {
    let mut outcome = Err(Refusal::UnknownKey);
    for key in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                let refusal = Refusal::from_jwt_error(&e);
                if refusal != Refusal::BadSignature {
                    return Err(refusal);
                }
                outcome = Err(refusal);
            }
        }
    }
    outcome
}

/// The token of the first `Authorization: Bearer` header (scheme case-insensitive); `None` when
/// there is none, so other schemes (Basic) are left to their plugins. A bearer header without a
/// usable token yields `Some("")`, which is refused as malformed.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(AUTHORIZATION).iter().find_map(|v| {
        let b = v.as_bytes();
        let scheme = b.get(..6)?;
        if !scheme.eq_ignore_ascii_case(b"bearer") || !matches!(b.get(6), None | Some(b' ')) {
            return None;
        }
        let rest = b
            .get(6..)
            .and_then(|r| std::str::from_utf8(r).ok())
            .unwrap_or("");
        Some(rest.trim_matches(' '))
    })
}

/// A claim as header text: strings as they are, numbers and booleans as their text; arrays,
/// objects and `null` give nothing.
fn claim_text(v: Option<&Value>) -> Option<Cow<'_, str>> {
    match v? {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}
