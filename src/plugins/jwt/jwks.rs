//! An issuer's published keys (JWKS): fetched on first use, cached for the `Cache-Control:
//! max-age` the issuer sends (clamped to 5 min–24 h), refreshed in the background when stale, and
//! refetched at most once per 30 s when a token names a key the cache does not hold.
//!
//! The request path reads the current key set lock-free from an `ArcSwap`. Every fetch happens
//! under one async mutex, so concurrent misses wait for the fetch in flight instead of starting
//! their own (single flight). A failed fetch never replaces keys that worked: the last good set
//! keeps verifying tokens while the endpoint is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{ACCEPT, CACHE_CONTROL};
use http::HeaderValue;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Shortest time a fetched key set is trusted without asking again (and the default).
const MIN_TTL: Duration = Duration::from_secs(5 * 60);
/// Longest time a fetched key set is trusted without asking again.
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// At most one refetch per this interval for tokens naming unknown keys: random `kid`s must not
/// turn the gateway into a load generator against the issuer.
const MISS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch with no keys at all, requests fail fast for this long before one of them
/// tries again; without it every request would wait for the endpoint's timeout.
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);
/// After a failed background refresh, the stale (still served) set is refreshed again this late.
const STALE_RETRY: Duration = Duration::from_secs(30);
/// Whole-request timeout of a fetch, so a request that waits for keys never hangs long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS document bigger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One verification key from the set.
pub(super) struct Key {
    /// The key's own `alg`, when it declares one: tokens must then use exactly it.
    alg: Option<Algorithm>,
    /// What the key is (RSA, EC, OKP); tokens of another family never reach it.
    kind: KeyKind,
    /// Built once per fetch.
    pub(super) key: DecodingKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    Ec,
    Ed,
}

/// Why no key was found for a token.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum KeyError {
    /// The set (as fetched now or recently) holds no key with this `kid` for this algorithm.
    Unknown,
    /// No key set was ever fetched and the endpoint does not answer.
    Unavailable,
}

/// The keys of one issuer, fetched from its JWKS URL.
pub(super) struct Jwks {
    url: String,
    client: reqwest::Client,
    /// The current set; readers never lock.
    state: ArcSwap<KeySet>,
    /// Held for the whole of every fetch (single flight).
    fetch: Mutex<FetchLog>,
    /// True while a background refresh task exists.
    refreshing: AtomicBool,
}

/// One generation of fetched keys.
struct KeySet {
    /// `None` until the first successful fetch.
    keys: Option<Arc<Keys>>,
    /// Bumped on each successful fetch: a request that waited for the fetch mutex learns from it
    /// that the set it missed in has been replaced meanwhile.
    generation: u64,
    /// When the set goes stale and a background refresh is due.
    refresh_at: Instant,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    /// Every usable key, for tokens without a `kid`.
    all: Vec<Arc<Key>>,
}

#[derive(Default)]
struct FetchLog {
    /// Last refetch caused by a token naming an unknown key.
    last_miss_refetch: Option<Instant>,
    /// Last fetch that failed.
    last_failure: Option<Instant>,
}

// === impl Jwks ===

impl Jwks {
    /// A cache for `url`; nothing is fetched until a token needs a key.
    pub(super) fn new(url: &str) -> Result<Jwks, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            // The issuer is named by URL in the config: go there directly, not through whatever
            // proxy the environment of the gateway process happens to name.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        Ok(Jwks {
            url: url.to_owned(),
            client,
            state: ArcSwap::from_pointee(KeySet {
                keys: None,
                generation: 0,
                refresh_at: Instant::now(),
            }),
            fetch: Mutex::new(FetchLog::default()),
            refreshing: AtomicBool::new(false),
        })
    }

    /// The keys that may verify a token signed with `alg` naming `kid` (every fitting key when
    /// the token names none). Fetches on first use, refetches once (single flight, at most every
    /// 30 s) on a miss, and starts a background refresh when the set is stale.
    pub(super) async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<Key>>, KeyError> {
        let set = self.state.load_full();
        let Some(keys) = &set.keys else {
            return self.first_fetch(set.generation, kid, alg).await;
        };
        if Instant::now() >= set.refresh_at {
            self.refresh_in_background();
        }
        let found = keys.select(kid, alg);
        if !found.is_empty() {
            return Ok(found);
        }
        self.refetch_for_miss(set.generation, kid, alg).await
    }

    /// No keys yet: one request fetches, the others wait for its result.
    async fn first_fetch(
        &self,
        seen: u64,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<Key>>, KeyError> {
        let mut log = self.fetch.lock().await;
        let set = self.state.load_full();
        if set.generation == seen {
            if log
                .last_failure
                .is_some_and(|t| t.elapsed() < FAILURE_BACKOFF)
            {
                return Err(KeyError::Unavailable);
            }
            if self.fetch_locked(&mut log).await.is_err() {
                return Err(KeyError::Unavailable);
            }
        }
        drop(log);
        self.select_now(kid, alg)
    }

    /// The token names a key the set lacks: maybe the issuer rotated its keys.
    async fn refetch_for_miss(
        &self,
        seen: u64,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<Key>>, KeyError> {
        let mut log = self.fetch.lock().await;
        if self.state.load().generation == seen
            && log
                .last_miss_refetch
                .is_none_or(|t| t.elapsed() >= MISS_REFETCH_INTERVAL)
        {
            log.last_miss_refetch = Some(Instant::now());
            // A failure keeps the last good set, which lacks the key: the token stays unknown.
            let _ = self.fetch_locked(&mut log).await;
        }
        drop(log);
        self.select_now(kid, alg)
    }

    fn select_now(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<Arc<Key>>, KeyError> {
        match &self.state.load().keys {
            None => Err(KeyError::Unavailable),
            Some(keys) => {
                let found = keys.select(kid, alg);
                if found.is_empty() {
                    Err(KeyError::Unknown)
                } else {
                    Ok(found)
                }
            }
        }
    }

    /// Refreshes a stale set off the request path; the stale set is served meanwhile.
    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        rt.spawn(async move {
            let mut log = this.fetch.lock().await;
            let set = this.state.load_full();
            // A fetch for a miss may have refreshed the set while this task waited.
            if Instant::now() >= set.refresh_at && this.fetch_locked(&mut log).await.is_err() {
                this.state.store(Arc::new(KeySet {
                    keys: set.keys.clone(),
                    generation: set.generation,
                    refresh_at: Instant::now() + STALE_RETRY,
                }));
            }
            drop(log);
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches the set and installs it. Callers hold the fetch mutex (`log` is its guard's content).
    async fn fetch_locked(&self, log: &mut FetchLog) -> Result<(), String> {
        match self.fetch_keys().await {
            Ok((keys, ttl)) => {
                let generation = self.state.load().generation + 1;
                self.state.store(Arc::new(KeySet {
                    keys: Some(Arc::new(keys)),
                    generation,
                    refresh_at: Instant::now() + ttl,
                }));
                log.last_failure = None;
                tracing::debug!(url = %self.url, ?ttl, "JWKS fetched");
                Ok(())
            }
            Err(e) => {
                log.last_failure = Some(Instant::now());
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<(Keys, Duration), String> {
        let mut resp = self
            .client
            .get(&self.url)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let ttl = ttl_from_cache_control(resp.headers().get_all(CACHE_CONTROL).iter());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((parse_jwks(&body)?, ttl))
    }
}

// === impl Keys ===

impl Keys {
    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<Key>> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .filter(|k| k.fits(alg))
                .cloned()
                .into_iter()
                .collect(),
            None => self.all.iter().filter(|k| k.fits(alg)).cloned().collect(),
        }
    }
}

// === impl Key ===

impl Key {
    /// Whether a token signed with `alg` may be verified with this key.
    fn fits(&self, alg: Algorithm) -> bool {
        let kind = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyKind::Rsa,
            Algorithm::ES256 | Algorithm::ES384 => KeyKind::Ec,
            Algorithm::EdDSA => KeyKind::Ed,
            // Shared secrets never come from a JWKS; algorithms added later are unknown here.
            _ => return false,
        };
        kind == self.kind && self.alg.is_none_or(|a| a == alg)
    }
}

/// Parses a JWKS document into verification keys. Keys that cannot verify signatures (`oct`
/// secrets, `use: enc`, unsupported curves or algorithms) are skipped one by one rather than
/// failing the set; a set left with no usable key is an error, so it never replaces a good one.
fn parse_jwks(body: &[u8]) -> Result<Keys, String> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let Some(serde_json::Value::Array(list)) = doc.get_mut("keys").map(serde_json::Value::take)
    else {
        return Err("not a JWKS: no `keys` list".into());
    };
    let mut out = Keys::default();
    for v in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(_) => KeyKind::Ec,
            AlgorithmParameters::OctetKeyPair(_) => KeyKind::Ed,
            // Shared secrets (`oct`) never verify here; kinds added later are unknown.
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => match Algorithm::try_from(ka) {
                Ok(a) => Some(a),
                // An encryption algorithm (RSA-OAEP, say): not a signing key.
                Err(_) => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let key = Arc::new(Key { alg, kind, key });
        if let Some(kid) = &jwk.common.key_id {
            out.by_kid.insert(kid.clone(), Arc::clone(&key));
        }
        out.all.push(key);
    }
    if out.all.is_empty() {
        return Err("the JWKS holds no usable signing key".into());
    }
    Ok(out)
}

/// How long a fetched set is trusted: `max-age` (or `s-maxage`) clamped to
/// [`MIN_TTL`, `MAX_TTL`]; [`MIN_TTL`] without one, or with `no-cache`/`no-store` (refetching on
/// every request would put the issuer on our hot path).
fn ttl_from_cache_control<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Duration {
    let mut max_age: Option<u64> = None;
    for v in values {
        let Ok(v) = v.to_str() else { continue };
        for directive in v.split(',') {
            let directive = directive.trim();
            let Some((name, value)) = directive.split_once('=') else {
                if directive.eq_ignore_ascii_case("no-cache")
                    || directive.eq_ignore_ascii_case("no-store")
                {
                    return MIN_TTL;
                }
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("max-age") || name.eq_ignore_ascii_case("s-maxage") {
                if let Ok(secs) = value.trim().trim_matches('"').parse::<u64>() {
                    max_age = Some(max_age.map_or(secs, |m| m.min(secs)));
                }
            }
        }
    }
    max_age.map_or(MIN_TTL, |s| Duration::from_secs(s).clamp(MIN_TTL, MAX_TTL))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::EncodingKey;

    use super::*;

    fn cc(v: &'static str) -> HeaderValue {
        HeaderValue::from_static(v)
    }

    #[test]
    fn cache_lifetime_follows_max_age_within_bounds() {
        let ttl = |vs: &[HeaderValue]| ttl_from_cache_control(vs.iter());
        assert_eq!(ttl(&[]), MIN_TTL, "default without the header");
        assert_eq!(
            ttl(&[cc("public, max-age=3600")]),
            Duration::from_secs(3600)
        );
        assert_eq!(ttl(&[cc("max-age=10")]), MIN_TTL, "clamped up");
        assert_eq!(ttl(&[cc("max-age=9999999")]), MAX_TTL, "clamped down");
        assert_eq!(ttl(&[cc("Max-Age=\"600\"")]), Duration::from_secs(600));
        assert_eq!(
            ttl(&[cc("max-age=7200"), cc("s-maxage=900")]),
            Duration::from_secs(900)
        );
        assert_eq!(ttl(&[cc("no-store, max-age=7200")]), MIN_TTL);
        assert_eq!(ttl(&[cc("max-age=soon")]), MIN_TTL);
    }

    fn ec_jwk(kid: &str) -> serde_json::Value {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("pem");
        let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(JwkSet { keys: vec![jwk] }).expect("json")["keys"][0].clone()
    }

    /// A raw HTTP/1.1 JWKS endpoint answering `doc` (or 500 while `fail`), counting requests.
    async fn endpoint(
        doc: String,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>, Arc<AtomicBool>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let (h, f) = (hits.clone(), fail.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let (status, body) = if f.load(Ordering::SeqCst) {
                    ("500 Internal Server Error", String::new())
                } else {
                    ("200 OK", doc.clone())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncache-control: max-age=60\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (url, hits, fail)
    }

    /// Marks the cached set stale, as if its max-age had passed.
    fn expire(jwks: &Jwks) {
        let set = jwks.state.load_full();
        jwks.state.store(Arc::new(KeySet {
            keys: set.keys.clone(),
            generation: set.generation,
            refresh_at: Instant::now(),
        }));
    }

    async fn wait_for(hits: &std::sync::atomic::AtomicUsize, n: usize) {
        for _ in 0..200 {
            if hits.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "endpoint saw {} requests, expected {n}",
            hits.load(Ordering::SeqCst)
        );
    }

    #[tokio::test]
    async fn a_stale_set_is_served_while_it_refreshes_in_the_background() {
        let doc = serde_json::json!({ "keys": [ec_jwk("a")] }).to_string();
        let (url, hits, fail) = endpoint(doc).await;
        let jwks = Arc::new(Jwks::new(&url).expect("client"));
        assert!(jwks.keys_for(Some("a"), Algorithm::ES256).await.is_ok());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let ttl = jwks.state.load().refresh_at - Instant::now();
        assert!(
            ttl > Duration::from_secs(290),
            "max-age=60 clamped to 5 min: {ttl:?}"
        );

        expire(&jwks);
        assert!(
            jwks.keys_for(Some("a"), Algorithm::ES256).await.is_ok(),
            "served stale"
        );
        wait_for(&hits, 2).await;
        for _ in 0..100 {
            if jwks.state.load().generation == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(jwks.state.load().generation, 2, "refreshed set installed");

        // The endpoint fails: the stale keys keep working, and the refresh is retried later,
        // not on every request.
        fail.store(true, Ordering::SeqCst);
        expire(&jwks);
        assert!(jwks.keys_for(Some("a"), Algorithm::ES256).await.is_ok());
        wait_for(&hits, 3).await;
        while jwks.refreshing.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..5 {
            assert!(jwks.keys_for(Some("a"), Algorithm::ES256).await.is_ok());
        }
        assert_eq!(hits.load(Ordering::SeqCst), 3, "retry waits STALE_RETRY");
        let set = jwks.state.load();
        assert_eq!(set.generation, 2, "the last good keys stay");
        assert!(set.refresh_at > Instant::now() + STALE_RETRY - Duration::from_secs(5));
    }

    #[test]
    fn parses_signing_keys_and_skips_the_rest() {
        let mut enc_key = ec_jwk("enc");
        enc_key["use"] = "enc".into();
        let doc = serde_json::json!({ "keys": [
            ec_jwk("a"),
            { "kty": "oct", "k": "c2VjcmV0", "kid": "secret" },
            { "kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB" },
            { "kty": "weird" },
            enc_key,
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).expect("one usable key");
        assert_eq!(keys.by_kid.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(keys.select(Some("a"), Algorithm::ES256).len(), 1);
        assert!(
            keys.select(Some("a"), Algorithm::ES384).is_empty(),
            "key's own alg wins"
        );
        assert!(
            keys.select(Some("a"), Algorithm::RS256).is_empty(),
            "wrong family"
        );
        assert!(
            keys.select(Some("a"), Algorithm::HS256).is_empty(),
            "never HMAC"
        );
        assert_eq!(keys.select(None, Algorithm::ES256).len(), 1);
        assert!(
            parse_jwks(br#"{"keys":[]}"#).is_err(),
            "empty set never replaces a good one"
        );
        assert!(parse_jwks(b"<html>").is_err());
    }
}
