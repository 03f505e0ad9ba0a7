//! A stored response ([`Entry`]): its head, body and lifetime, and its encoding for the Redis
//! tier (read back as hostile input).

use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::policy::{unix_ms, Lifetime};

/// How a stored response was requested and what it is bound to, besides its head and body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The primary key it is stored under.
    pub key: String,
    /// `host/path?query` of the request, for purges by URL and prefix.
    pub url: String,
    /// When it was stored, in ms since the epoch.
    pub stored_at: u64,
    /// Its age when stored (ms).
    pub initial_age: u64,
    /// When it stops being fresh (ms since the epoch); a soft purge moves it to the purge time.
    pub fresh_until: u64,
    /// Served stale while refreshed, this long past `fresh_until` (ms).
    pub stale_while_revalidate: u64,
    /// Served stale when the upstream fails, this long past `fresh_until` (ms).
    pub stale_if_error: u64,
    /// Never served stale; revalidated once stale.
    pub must_revalidate: bool,
    /// Revalidated before every use.
    pub no_cache: bool,
    /// The lower-cased names the response varies on.
    pub vary: Vec<String>,
    /// The request's values of those names when it was stored.
    pub vary_values: Vec<Option<Vec<u8>>>,
    /// Purge tags (from the route's `tag_header`).
    pub tags: Vec<String>,
    /// The request target the upstream was sent (for background refreshes).
    pub upstream_uri: String,
}

impl Meta {
    /// The meta of a response about to be stored ([`Entry::new`] fills in the times).
    pub fn new(
        key: String,
        url: String,
        vary: Vec<String>,
        vary_values: Vec<Option<Vec<u8>>>,
        tags: Vec<String>,
        upstream_uri: String,
    ) -> Meta {
        Meta {
            key,
            url,
            stored_at: 0,
            initial_age: 0,
            fresh_until: 0,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            must_revalidate: false,
            no_cache: false,
            vary,
            vary_values,
            tags,
            upstream_uri,
        }
    }
}

/// A stored response.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Everything but the head and the body.
    pub meta: Meta,
    /// The stored status.
    pub status: StatusCode,
    /// The stored headers (hop-by-hop ones and the tag header removed).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// What a stored response is for a request at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Fresh for this long.
    Fresh(Duration),
    /// Stale since this long.
    Stale(Duration),
}

impl Entry {
    /// A new entry stored at `now` with `life`.
    pub fn new(
        mut meta: Meta,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        life: &Lifetime,
        now: SystemTime,
    ) -> Entry {
        let stored_at = unix_ms(now);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        meta.stored_at = stored_at;
        meta.initial_age = ms(life.initial_age);
        meta.fresh_until = stored_at
            .saturating_add(ms(life.fresh))
            .saturating_sub(ms(life.initial_age));
        meta.stale_while_revalidate = ms(life.stale_while_revalidate);
        meta.stale_if_error = ms(life.stale_if_error);
        meta.must_revalidate = life.must_revalidate;
        meta.no_cache = life.no_cache;
        Entry {
            meta,
            status,
            headers,
            body,
        }
    }

    /// Fresh or stale at `now` (ms since the epoch).
    pub fn freshness(&self, now: u64) -> Freshness {
        if now < self.meta.fresh_until {
            Freshness::Fresh(Duration::from_millis(self.meta.fresh_until - now))
        } else {
            Freshness::Stale(Duration::from_millis(now - self.meta.fresh_until))
        }
    }

    /// Its `Age` at `now`, in seconds (§4.2.3: initial age plus resident time).
    pub fn age(&self, now: u64) -> u64 {
        (self.meta.initial_age + now.saturating_sub(self.meta.stored_at)) / 1000
    }

    /// Seconds of freshness left at `now` (negative when stale), for `Cache-Status` `ttl=`.
    pub fn ttl(&self, now: u64) -> i64 {
        let until = i64::try_from(self.meta.fresh_until / 1000).unwrap_or(i64::MAX);
        let now = i64::try_from(now / 1000).unwrap_or(i64::MAX);
        until - now
    }

    /// True when `stale` is within the window for serving while refreshing.
    pub fn may_serve_while_revalidating(&self, stale: Duration) -> bool {
        !self.meta.must_revalidate
            && !self.meta.no_cache
            && stale.as_millis() < u128::from(self.meta.stale_while_revalidate)
    }

    /// True when `stale` is within the window for serving when the upstream fails.
    pub fn may_serve_on_error(&self, stale: Duration) -> bool {
        !self.meta.must_revalidate
            && !self.meta.no_cache
            && stale.as_millis() < u128::from(self.meta.stale_if_error)
    }

    /// How long the entry is worth keeping at all after `now`: its freshness and the longer of
    /// its stale windows, at least a minute for revalidation when it has a validator.
    pub fn keep_for(&self, now: u64) -> Duration {
        let stale = self
            .meta
            .stale_while_revalidate
            .max(self.meta.stale_if_error);
        let mut until = self.meta.fresh_until.saturating_add(stale);
        if self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED)
        {
            until = until.max(self.meta.fresh_until.saturating_add(60_000));
        }
        Duration::from_millis(until.saturating_sub(now).max(1000))
    }

    /// Bytes this entry takes in memory, roughly: the memory tier's weight.
    pub fn weight(&self) -> u32 {
        let head: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let meta = self.meta.key.len() + self.meta.url.len() + self.meta.upstream_uri.len() + 256;
        u32::try_from(self.body.len() + head + meta).unwrap_or(u32::MAX)
    }

    /// The encoding the Redis tier stores: `FDC1\n`, the meta as one JSON line, the head as
    /// `status\r\nname: value\r\n…\r\n`, then the body.
    pub fn encode(&self) -> Bytes {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        let mut out = BytesMut::with_capacity(self.body.len() + meta.len() + 512);
        out.put_slice(MAGIC);
        out.put_slice(&meta);
        out.put_u8(b'\n');
        out.put_slice(self.status.as_str().as_bytes());
        out.put_slice(b"\r\n");
        for (n, v) in &self.headers {
            out.put_slice(n.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(v.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Reads back what [`Entry::encode`] wrote; `None` for anything else (a value from Redis is
    /// not trusted: wrong magic, bad JSON, a malformed head, a key that is not the one asked
    /// for).
    pub fn decode(raw: Bytes, key: &str) -> Option<Entry> {
        let rest = raw.strip_prefix(MAGIC)?;
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let meta: Meta = serde_json::from_slice(&rest[..nl]).ok()?;
        if meta.key != key || meta.vary.len() != meta.vary_values.len() {
            return None;
        }
        let head_start = MAGIC.len() + nl + 1;
        let head = &raw[head_start..];
        let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
        let mut lines = head[..end].split(|&b| b == b'\n');
        let status_line = lines.next()?.strip_suffix(b"\r")?;
        let status = StatusCode::from_bytes(status_line).ok()?;
        let mut headers = HeaderMap::new();
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            let name = HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
            headers.append(name, value);
        }
        let body = raw.slice(head_start + end + 4..);
        Some(Entry {
            meta,
            status,
            headers,
            body,
        })
    }
}

const MAGIC: &[u8] = b"FDC1\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let life = Lifetime {
            fresh: Duration::from_secs(60),
            initial_age: Duration::from_secs(5),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            no_cache: false,
        };
        let meta = Meta::new(
            "r|GET|h|/p|".into(),
            "h/p".into(),
            vec!["accept".into()],
            vec![Some(b"text/html".to_vec())],
            vec!["t1".into()],
            "/p".into(),
        );
        Entry::new(
            meta,
            StatusCode::OK,
            headers,
            Bytes::from_static(b"body\r\n\r\nbytes"),
            &life,
            SystemTime::now(),
        )
    }

    #[test]
    fn encode_decode_round_trip() {
        let e = entry();
        let back = Entry::decode(e.encode(), "r|GET|h|/p|").expect("decodes");
        assert_eq!(back.meta, e.meta);
        assert_eq!(back.status, e.status);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.body, e.body);
        assert!(
            Entry::decode(e.encode(), "other").is_none(),
            "a value under another key"
        );
    }

    #[test]
    fn lifetime_arithmetic() {
        let e = entry();
        let now = e.meta.stored_at;
        assert_eq!(e.freshness(now), Freshness::Fresh(Duration::from_secs(55)));
        assert_eq!(e.age(now + 3000), 8);
        assert!(matches!(e.freshness(now + 56_000), Freshness::Stale(_)));
        assert!(e.may_serve_while_revalidating(Duration::from_secs(9)));
        assert!(!e.may_serve_while_revalidating(Duration::from_secs(11)));
        assert!(!e.may_serve_on_error(Duration::from_secs(1)));
    }

    #[test]
    fn hostile_values_decode_to_none_without_panicking() {
        let good = entry().encode();
        for cut in 0..good.len() {
            let _ = Entry::decode(good.slice(..cut), "r|GET|h|/p|");
        }
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut v = good.to_vec();
            for _ in 0..4 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (seed >> 33) as usize % v.len();
                v[i] = (seed >> 13) as u8;
            }
            let _ = Entry::decode(Bytes::from(v), "r|GET|h|/p|");
        }
        assert!(Entry::decode(Bytes::from_static(b"garbage"), "k").is_none());
    }
}
