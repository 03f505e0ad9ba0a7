//! RFC 9111 as a shared cache applies it: `Cache-Control` directives, whether a response may be
//! stored and for how long, its age, and whether a stored response may answer a request.
//!
//! Written here rather than taken from `http-cache-semantics`: that crate answers "fresh or
//! stale" but not why (the cache must say why in `Cache-Status` and `explain`), knows neither
//! `stale-while-revalidate` nor `stale-if-error`, has no configured default or maximum lifetime,
//! and its policy object is not what the Redis tier stores. The rules are short; each cites its
//! section.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

/// RFC 9111 §1.2.2: delta-seconds beyond this are taken as this.
const MAX_DELTA: u64 = 1 << 31;

/// The `Cache-Control` directives the cache acts on, from every `Cache-Control` field of a
/// request or a response. Unknown directives are ignored (§5.2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (the response's field-name form counts as the bare directive: stricter).
    pub no_cache: bool,
    /// `private` (with or without field names: a shared cache stores neither).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `max-age`; a malformed value is 0 (§4.2.1: treat as stale).
    pub max_age: Option<u64>,
    /// `s-maxage`.
    pub s_maxage: Option<u64>,
    /// `min-fresh` (request).
    pub min_fresh: Option<u64>,
    /// `max-stale` (request): `Some(None)` accepts any staleness.
    pub max_stale: Option<Option<u64>>,
    /// `only-if-cached` (request).
    pub only_if_cached: bool,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// The directives of every `Cache-Control` field in `h`. A directive given twice with
    /// different values counts as malformed (its smaller value is kept, 0 for `max-age`).
    pub fn parse(h: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for v in h.get_all(header::CACHE_CONTROL) {
            let Ok(s) = v.to_str() else { continue };
            for item in split_list(s) {
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
                    None => (item.trim(), None),
                };
                let secs = || value.as_deref().map(delta_seconds);
                let set = |slot: &mut Option<u64>, v: Option<Option<u64>>| {
                    let v = v.flatten().unwrap_or(0);
                    *slot = Some(slot.map_or(v, |old| old.min(v)));
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "only-if-cached" => d.only_if_cached = true,
                    "max-age" => set(&mut d.max_age, secs()),
                    "s-maxage" => set(&mut d.s_maxage, secs()),
                    "min-fresh" => set(&mut d.min_fresh, secs()),
                    "stale-while-revalidate" => set(&mut d.stale_while_revalidate, secs()),
                    "stale-if-error" => set(&mut d.stale_if_error, secs()),
                    "max-stale" => d.max_stale = Some(secs().flatten()),
                    _ => {}
                }
            }
        }
        d
    }

    /// True when the request asks that nothing be served without a check upstream: `no-cache`,
    /// `max-age=0`, or `Pragma: no-cache` without `Cache-Control` (§5.4).
    pub fn request_no_cache(&self, h: &HeaderMap) -> bool {
        self.no_cache
            || self.max_age == Some(0)
            || (!h.contains_key(header::CACHE_CONTROL)
                && h.get_all(header::PRAGMA).iter().any(|v| {
                    v.to_str()
                        .is_ok_and(|s| s.to_ascii_lowercase().contains("no-cache"))
                }))
    }
}

/// Splits a list field at commas outside quoted strings.
fn split_list(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace('\\', ""),
        None => v.to_string(),
    }
}

/// delta-seconds (§1.2.2): digits only; too large saturates; anything else is `None`.
fn delta_seconds(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA)))
}

/// The configured side of the rules.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Freshness of a response that states none; zero: not stored.
    pub default_ttl: Duration,
    /// The longest freshness.
    pub max_ttl: Duration,
    /// Statuses stored.
    pub statuses: Vec<u16>,
    /// Store `Set-Cookie` responses.
    pub store_set_cookie: bool,
    /// The key has the consumer in it: a response to an authorized request is kept per caller.
    pub key_has_consumer: bool,
    /// `stale-while-revalidate` when the response does not say.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error` when the response does not say.
    pub stale_if_error: Duration,
}

/// Why a response is not stored (or a request not answered from the cache): shown in
/// `Cache-Status` (`detail=`) and by `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// The method is not cached (`methods`).
    Method,
    /// The status is not in `statuses`.
    Status,
    /// `no-store` on the request or the response.
    NoStore,
    /// `private` on the response.
    Private,
    /// The request had `Authorization` and the response did not allow sharing.
    Authorization,
    /// The response sets a cookie.
    SetCookie,
    /// `Vary: *`.
    VaryStar,
    /// The response states no freshness and `default_ttl` is 0.
    NoFreshness,
    /// The body is larger than `max_object_size`.
    TooLarge,
    /// The body broke off.
    Incomplete,
}

impl NotStored {
    /// A short token for `Cache-Status` `detail=` and logs.
    pub fn token(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::NoFreshness => "no-freshness",
            NotStored::TooLarge => "too-large",
            NotStored::Incomplete => "incomplete",
        }
    }
}

/// How long a stored response lives, worked out when it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Freshness lifetime (§4.2.1), capped by `max_ttl`.
    pub fresh: Duration,
    /// The response's age when it was received (`corrected_initial_age`, §4.2.3).
    pub initial_age: Duration,
    /// How long past freshness it may be served while it is refreshed.
    pub stale_while_revalidate: Duration,
    /// How long past freshness it may be served when the upstream fails.
    pub stale_if_error: Duration,
    /// Never served stale, and revalidated once stale (`must-revalidate`, `proxy-revalidate`,
    /// `s-maxage` §5.2.2.10).
    pub must_revalidate: bool,
    /// Revalidated before every use (`no-cache`).
    pub no_cache: bool,
}

/// Whether the response to `req_headers` (method `method`) may be stored, and for how long
/// (§3, §4.2.1, §4.2.3). `request_time` is when the request was sent upstream, `response_time`
/// when its head arrived.
pub fn storable(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    rules: &Rules,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Result<Lifetime, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    if !rules.statuses.contains(&status.as_u16()) {
        return Err(NotStored::Status);
    }
    let req = Directives::parse(req_headers);
    let resp = Directives::parse(resp_headers);
    if req.no_store || resp.no_store {
        return Err(NotStored::NoStore);
    }
    if resp.private {
        return Err(NotStored::Private);
    }
    // §3.5: a shared cache stores the answer to an authorized request only when the response
    // says it may be shared; a key with the consumer in it makes the entry the caller's own.
    if req_headers.contains_key(header::AUTHORIZATION)
        && !(resp.public || resp.s_maxage.is_some() || resp.must_revalidate)
        && !rules.key_has_consumer
    {
        return Err(NotStored::Authorization);
    }
    if resp_headers.contains_key(header::SET_COOKIE) && !rules.store_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if vary_names(resp_headers).is_none() {
        return Err(NotStored::VaryStar);
    }
    let date = http_date(resp_headers, header::DATE);
    let explicit = resp
        .s_maxage
        .or(resp.max_age)
        .map(Duration::from_secs)
        .or_else(|| {
            // §5.3: an invalid `Expires` means already expired.
            resp_headers.get(header::EXPIRES).map(|v| {
                let expires = v
                    .to_str()
                    .ok()
                    .and_then(|s| httpdate::parse_http_date(s).ok());
                match expires {
                    Some(e) => e
                        .duration_since(date.unwrap_or(response_time))
                        .unwrap_or(Duration::ZERO),
                    None => Duration::ZERO,
                }
            })
        });
    let fresh = match explicit {
        Some(d) => d,
        None if !rules.default_ttl.is_zero() => rules.default_ttl,
        None => return Err(NotStored::NoFreshness),
    }
    .min(rules.max_ttl);
    // §4.2.3.
    let apparent_age = date
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    let age_value = resp_headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(delta_seconds)
        .map_or(Duration::ZERO, Duration::from_secs);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    let initial_age = apparent_age.max(age_value + response_delay);
    let must_revalidate = resp.must_revalidate || resp.proxy_revalidate || resp.s_maxage.is_some();
    let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
    Ok(Lifetime {
        fresh,
        initial_age,
        stale_while_revalidate: secs(resp.stale_while_revalidate, rules.stale_while_revalidate),
        stale_if_error: secs(resp.stale_if_error, rules.stale_if_error),
        must_revalidate,
        no_cache: resp.no_cache,
    })
}

/// The lower-cased names a response varies on; `None` for `Vary: *`.
pub fn vary_names(h: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for v in h.get_all(header::VARY) {
        let Ok(s) = v.to_str() else { return None };
        for n in s.split(',') {
            let n = n.trim().to_ascii_lowercase();
            if n == "*" {
                return None;
            }
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names.sort();
    Some(names)
}

/// The request's values of the `names` a response varies on, normalized (§4.1: fields combined,
/// whitespace around commas removed), in the order of `names`.
pub fn vary_values(names: &[String], req: &HeaderMap) -> Vec<Option<Vec<u8>>> {
    names
        .iter()
        .map(|n| {
            let mut all = req.get_all(n.as_str()).iter().peekable();
            all.peek()?;
            let mut out = Vec::new();
            for v in all {
                for part in v.as_bytes().split(|&b| b == b',') {
                    let part = part.trim_ascii();
                    if !out.is_empty() {
                        out.push(b',');
                    }
                    out.extend_from_slice(part);
                }
            }
            Some(out)
        })
        .collect()
}

/// A date field, if present and valid.
pub fn http_date(h: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
}

/// Milliseconds since the epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether a conditional request (`If-None-Match`, else `If-Modified-Since`; §13.2.2) is
/// answered `304` by a stored response with these headers: true when its condition is false.
pub fn not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).and_then(|e| e.to_str().ok()) else {
            return false;
        };
        let Ok(list) = inm.to_str() else { return false };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        return list.trim() == "*" || list.split(',').any(|t| weak(t) == weak(etag));
    }
    match (
        http_date(req, header::IF_MODIFIED_SINCE),
        http_date(stored, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// True when the request carries a precondition the cache evaluates itself.
pub fn is_conditional(req: &HeaderMap) -> bool {
    req.contains_key(header::IF_NONE_MATCH) || req.contains_key(header::IF_MODIFIED_SINCE)
}

/// The headers of a stored response that a `304` answering it carries (§15.4.5 of RFC 9110).
pub const NOT_MODIFIED_HEADERS: [header::HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// Updates stored headers with those of a `304` (§4.3.4): every field of the `304` replaces the
/// stored one, but the framing ones, which describe the stored body.
pub fn freshen(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    for name in not_modified.keys() {
        if matches!(
            *name,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONTENT_ENCODING
        ) {
            continue;
        }
        let values: Vec<HeaderValue> = not_modified.get_all(name).iter().cloned().collect();
        stored.remove(name);
        for v in values {
            stored.append(name.clone(), v);
        }
    }
}

/// Removes what a cache must not store (§3.1): the fields `Connection` names and the
/// connection-specific ones. (The proxy strips these from every upstream response already; this
/// is for responses fetched outside it, by background refreshes.)
pub fn strip_connection_fields(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn rules() -> Rules {
        Rules {
            default_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(3600),
            statuses: vec![200, 404],
            store_set_cookie: false,
            key_has_consumer: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        }
    }

    fn store(req: &[(&str, &str)], resp: &[(&str, &str)]) -> Result<Lifetime, NotStored> {
        let now = SystemTime::now();
        storable(
            &Method::GET,
            &headers(req),
            StatusCode::OK,
            &headers(resp),
            &rules(),
            now,
            now,
        )
    }

    #[test]
    fn directives_parse_quoted_repeated_and_malformed() {
        let d = Directives::parse(&headers(&[
            (
                "cache-control",
                "public, max-age=\"60\", no-cache=\"set-cookie, x\"",
            ),
            (
                "cache-control",
                "S-MaxAge=30, stale-while-revalidate=5, max-stale",
            ),
        ]));
        assert!(d.public && d.no_cache);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(30));
        assert_eq!(d.stale_while_revalidate, Some(5));
        assert_eq!(d.max_stale, Some(None));
        let bad = Directives::parse(&headers(&[("cache-control", "max-age=abc")]));
        assert_eq!(bad.max_age, Some(0), "malformed max-age means stale");
        let twice = Directives::parse(&headers(&[("cache-control", "max-age=60, max-age=10")]));
        assert_eq!(twice.max_age, Some(10));
        let huge = Directives::parse(&headers(&[(
            "cache-control",
            "max-age=99999999999999999999",
        )]));
        assert_eq!(huge.max_age, Some(MAX_DELTA));
    }

    #[test]
    fn freshness_order_s_maxage_max_age_expires() {
        let l = store(&[], &[("cache-control", "max-age=100, s-maxage=10")]).expect("stored");
        assert_eq!(l.fresh, Duration::from_secs(10));
        assert!(l.must_revalidate, "s-maxage implies proxy-revalidate");
        let l = store(&[], &[("cache-control", "max-age=100")]).expect("stored");
        assert_eq!(l.fresh, Duration::from_secs(100));
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(50));
        let l = store(&[], &[("date", &date), ("expires", &later)]).expect("stored");
        assert!(l.fresh >= Duration::from_secs(49) && l.fresh <= Duration::from_secs(51));
        let l = store(&[], &[("expires", "0")]).expect("stored, already stale");
        assert_eq!(l.fresh, Duration::ZERO);
        let l = store(&[], &[("cache-control", "max-age=999999")]).expect("stored");
        assert_eq!(l.fresh, Duration::from_secs(3600), "capped by max_ttl");
    }

    #[test]
    fn what_is_not_stored_and_its_opposite() {
        assert_eq!(store(&[], &[]), Err(NotStored::NoFreshness));
        assert_eq!(
            store(&[], &[("cache-control", "max-age=5, no-store")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            store(
                &[("cache-control", "no-store")],
                &[("cache-control", "max-age=5")]
            ),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            store(&[], &[("cache-control", "max-age=5, private")]),
            Err(NotStored::Private)
        );
        assert_eq!(
            store(
                &[("authorization", "Bearer x")],
                &[("cache-control", "max-age=5")]
            ),
            Err(NotStored::Authorization)
        );
        for allowed in [
            "public, max-age=5",
            "s-maxage=5",
            "max-age=5, must-revalidate",
        ] {
            assert!(
                store(
                    &[("authorization", "Bearer x")],
                    &[("cache-control", allowed)]
                )
                .is_ok(),
                "{allowed}"
            );
        }
        assert_eq!(
            store(
                &[],
                &[("cache-control", "max-age=5"), ("set-cookie", "a=b")]
            ),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            store(
                &[],
                &[("cache-control", "max-age=5"), ("vary", "accept, *")]
            ),
            Err(NotStored::VaryStar)
        );
        assert!(store(&[], &[("cache-control", "max-age=5"), ("vary", "Accept")]).is_ok());
        let l = store(&[], &[("cache-control", "max-age=5, no-cache")]).expect("stored");
        assert!(l.no_cache);
    }

    #[test]
    fn age_is_corrected_for_date_age_and_delay() {
        let now = SystemTime::now();
        let sent = now - Duration::from_secs(2);
        let date = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let h = headers(&[
            ("cache-control", "max-age=60"),
            ("date", &date),
            ("age", "10"),
        ]);
        let l = storable(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &h,
            &rules(),
            sent,
            now,
        )
        .expect("stored");
        // apparent age 30 beats age 10 + delay 2.
        assert!(
            l.initial_age >= Duration::from_secs(29) && l.initial_age <= Duration::from_secs(31)
        );
    }

    #[test]
    fn vary_values_normalize_and_conditionals() {
        let names = vary_names(&headers(&[("vary", "Accept-Encoding, accept")])).expect("names");
        assert_eq!(names, ["accept", "accept-encoding"]);
        let a = vary_values(
            &names,
            &headers(&[("accept", "a,  b"), ("accept-encoding", "gzip")]),
        );
        let b = vary_values(
            &names,
            &headers(&[
                ("accept", "a"),
                ("accept", "b"),
                ("accept-encoding", "gzip"),
            ]),
        );
        assert_eq!(a, b);
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ]);
        assert!(not_modified(
            &headers(&[("if-none-match", "W/\"v1\", \"v0\"")]),
            &stored
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        assert!(not_modified(
            &headers(&[("if-modified-since", "Wed, 02 Dec 2026 10:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT")]),
            &stored
        ));
    }

    #[test]
    fn a_304_freshens_all_but_framing() {
        let mut stored = headers(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=1"),
            ("content-length", "5"),
            ("x-a", "1"),
        ]);
        freshen(
            &mut stored,
            &headers(&[
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("x-b", "2"),
            ]),
        );
        assert_eq!(stored["cache-control"], "max-age=60");
        assert_eq!(stored["content-length"], "5");
        assert_eq!(stored["x-a"], "1");
        assert_eq!(stored["x-b"], "2");
    }
}
