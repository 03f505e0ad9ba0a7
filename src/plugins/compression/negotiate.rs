//! Negotiation for the `compression` plugin: which coding a client accepts (`Accept-Encoding` with
//! q-values, RFC 9110 §12.5.3), and which media types are compressed (patterns with wildcards,
//! matched without parameters).

use http::HeaderValue;

use frontdesk_config::ContentCoding;

/// What a client's `Accept-Encoding` allows, for the codings a route offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The coding to use: the offered coding with the highest q-value (ties go to the route's
    /// order), unless the client prefers `identity` to it. `None`: send the body as it is.
    pub coding: Option<ContentCoding>,
    /// The client refuses an uncoded body (`identity;q=0`, or `*;q=0` without an `identity`
    /// entry).
    pub identity_refused: bool,
}

/// A q-value in thousandths (RFC 9110 §12.4.2: at most three decimals, 0 to 1).
type Q = u16;

/// Picks a coding from the `Accept-Encoding` field lines (all of them, in order), among `offered`
/// in the route's order of preference.
///
/// Codings not listed are not acceptable unless `*` is; `identity` is acceptable unless refused,
/// and it wins only when the client gives it a strictly higher q-value than every offered coding.
/// Malformed elements (a bad q-value, an empty name) are skipped; no field at all, or an empty
/// one, means no coding. `x-gzip` counts as `gzip` (RFC 9110 §8.4.1.3).
pub fn negotiate<'a>(
    fields: impl IntoIterator<Item = &'a HeaderValue>,
    offered: &[ContentCoding],
) -> Negotiated {
    // Each coding's q, first mention wins; index 0..3 follow `coding_index`.
    let mut listed: [Option<Q>; 3] = [None; 3];
    let mut star: Option<Q> = None;
    let mut identity: Option<Q> = None;
    for field in fields {
        // Non-ASCII bytes make no valid token; such a line is ignored whole.
        let Ok(text) = field.to_str() else { continue };
        for element in text.split(',') {
            let Some((name, q)) = parse_element(element) else {
                continue;
            };
            let slot = if name == "*" {
                &mut star
            } else if name.eq_ignore_ascii_case("identity") {
                &mut identity
            } else if let Some(c) = coding_named(name) {
                &mut listed[coding_index(c)]
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(q);
            }
        }
    }
    let identity_q = identity.or(star);
    let mut best: Option<(ContentCoding, Q)> = None;
    for &c in offered {
        let q = listed[coding_index(c)].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((c, q));
        }
    }
    let coding = match best {
        Some((_, q)) if identity_q.is_some_and(|iq| iq > q) => None,
        b => b.map(|(c, _)| c),
    };
    Negotiated {
        coding,
        identity_refused: identity_q == Some(0),
    }
}

fn coding_index(c: ContentCoding) -> usize {
    match c {
        ContentCoding::Br => 0,
        ContentCoding::Zstd => 1,
        ContentCoding::Gzip => 2,
    }
}

fn coding_named(name: &str) -> Option<ContentCoding> {
    [
        ("br", ContentCoding::Br),
        ("zstd", ContentCoding::Zstd),
        ("gzip", ContentCoding::Gzip),
        ("x-gzip", ContentCoding::Gzip),
    ]
    .into_iter()
    .find(|(n, _)| name.eq_ignore_ascii_case(n))
    .map(|(_, c)| c)
}

/// `coding *( OWS ";" OWS param )`, with `q` the only parameter that counts; `None` when the
/// element is empty or malformed.
fn parse_element(element: &str) -> Option<(&str, Q)> {
    let mut parts = element.split(';');
    let name = parts.next()?.trim();
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let (k, v) = param.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("q") {
            q = parse_q(v.trim())?;
        }
    }
    Some((name, q))
}

/// RFC 9110 `qvalue`: `0[.ddd]` or `1[.000]`.
fn parse_q(v: &str) -> Option<Q> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: Q = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += Q::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A list of media-type patterns: `type/subtype`, `type/*`, `type/*+suffix`, `*/*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaTypes {
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Any,
    /// `type/*`.
    Type(String),
    /// `type/*+suffix`: any subtype ending in `+suffix`.
    Suffix(String, String),
    /// `type/subtype`.
    Exact(String, String),
}

impl MediaTypes {
    /// Parses the patterns (lower-cased); an invalid one is an error naming it.
    pub fn parse(list: &[String]) -> Result<MediaTypes, String> {
        let patterns = list
            .iter()
            .map(|p| parse_pattern(p).ok_or_else(|| format!("{p:?} is not a media type pattern")))
            .collect::<Result<_, _>>()?;
        Ok(MediaTypes { patterns })
    }

    /// True when a `Content-Type` value matches a pattern (parameters and case ignored). A value
    /// that is not `type/subtype` matches nothing.
    pub fn matches(&self, content_type: &HeaderValue) -> bool {
        let Some((ty, sub)) = media_type(content_type) else {
            return false;
        };
        self.patterns.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::Type(t) => ty.eq_ignore_ascii_case(t),
            Pattern::Suffix(t, suffix) => {
                ty.eq_ignore_ascii_case(t)
                    && sub.len() > suffix.len() + 1
                    && sub.as_bytes()[sub.len() - suffix.len() - 1] == b'+'
                    && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            Pattern::Exact(t, s) => ty.eq_ignore_ascii_case(t) && sub.eq_ignore_ascii_case(s),
        })
    }
}

fn parse_pattern(p: &str) -> Option<Pattern> {
    let token = |s: &str| !s.is_empty() && s.bytes().all(is_tchar) && !s.contains('*');
    let (ty, sub) = p.split_once('/')?;
    if ty == "*" {
        return (sub == "*").then_some(Pattern::Any);
    }
    if !token(ty) {
        return None;
    }
    let ty = ty.to_ascii_lowercase();
    if sub == "*" {
        return Some(Pattern::Type(ty));
    }
    if let Some(suffix) = sub.strip_prefix("*+") {
        return token(suffix).then(|| Pattern::Suffix(ty, suffix.to_ascii_lowercase()));
    }
    token(sub).then(|| Pattern::Exact(ty, sub.to_ascii_lowercase()))
}

/// The `type` and `subtype` of a `Content-Type` value, without parameters.
fn media_type(v: &HeaderValue) -> Option<(&str, &str)> {
    let s = v.to_str().ok()?;
    let essence = s.split(';').next()?.trim();
    let (ty, sub) = essence.split_once('/')?;
    let (ty, sub) = (ty.trim(), sub.trim());
    let ok = |s: &str| !s.is_empty() && s.bytes().all(is_tchar);
    (ok(ty) && ok(sub)).then_some((ty, sub))
}

/// True for `text/event-stream` (parameters and case ignored).
pub fn is_event_stream(content_type: &HeaderValue) -> bool {
    media_type(content_type).is_some_and(|(ty, sub)| {
        ty.eq_ignore_ascii_case("text") && sub.eq_ignore_ascii_case("event-stream")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContentCoding::{Br, Gzip, Zstd};

    const ALL: [ContentCoding; 3] = [Br, Zstd, Gzip];

    fn pick(fields: &[&str], offered: &[ContentCoding]) -> Negotiated {
        let values: Vec<HeaderValue> = fields
            .iter()
            .map(|f| HeaderValue::from_str(f).expect("header value"))
            .collect();
        negotiate(&values, offered)
    }

    fn coding(fields: &[&str], offered: &[ContentCoding]) -> Option<ContentCoding> {
        pick(fields, offered).coding
    }

    #[test]
    fn the_route_order_breaks_ties_and_higher_q_wins() {
        assert_eq!(coding(&["gzip, deflate, br, zstd"], &ALL), Some(Br));
        assert_eq!(
            coding(&["gzip, deflate, br, zstd"], &[Gzip, Br]),
            Some(Gzip)
        );
        assert_eq!(coding(&["gzip;q=1.0, br;q=0.8"], &ALL), Some(Gzip));
        assert_eq!(
            coding(&["br;q=0.5, zstd;q=0.501, gzip;q=0.5"], &ALL),
            Some(Zstd)
        );
        // Offered only: a coding the route does not offer never wins.
        assert_eq!(coding(&["br"], &[Gzip, Zstd]), None);
        assert_eq!(coding(&["deflate, compress"], &ALL), None);
    }

    #[test]
    fn q_zero_refuses_and_star_covers_the_unlisted() {
        assert_eq!(coding(&["br;q=0, gzip"], &ALL), Some(Gzip));
        assert_eq!(coding(&["*"], &[Zstd, Gzip]), Some(Zstd));
        assert_eq!(coding(&["*;q=0.5, br;q=0"], &ALL), Some(Zstd));
        assert_eq!(coding(&["gzip;q=0.2, *;q=0.5"], &[Gzip, Br]), Some(Br));
        assert_eq!(coding(&["*;q=0"], &ALL), None);
        assert_eq!(coding(&["br;q=0, zstd;q=0, gzip;q=0"], &ALL), None);
    }

    #[test]
    fn identity_wins_only_when_the_client_prefers_it() {
        // identity;q=0: the client refuses an uncoded body.
        let n = pick(&["identity;q=0, gzip;q=0.1, br;q=0"], &ALL);
        assert_eq!(n.coding, Some(Gzip));
        assert!(n.identity_refused);
        let n = pick(&["*;q=0, zstd"], &ALL);
        assert_eq!(n.coding, Some(Zstd));
        assert!(n.identity_refused, "*;q=0 covers identity too");
        let n = pick(&["*;q=0, identity, zstd"], &ALL);
        assert!(!n.identity_refused, "an identity entry overrides *");
        // Preferring identity outright.
        assert_eq!(coding(&["identity, gzip;q=0.5"], &ALL), None);
        assert_eq!(coding(&["identity;q=0.5, gzip;q=0.5"], &ALL), Some(Gzip));
        assert_eq!(
            coding(&["gzip;q=0.5"], &ALL),
            Some(Gzip),
            "identity unlisted"
        );
        assert!(!pick(&["gzip"], &ALL).identity_refused);
    }

    #[test]
    fn lines_are_combined_and_names_and_q_are_case_insensitive() {
        assert_eq!(
            coding(&["deflate", "GZIP; Q=0.9", "Br;q=0.8"], &ALL),
            Some(Gzip)
        );
        assert_eq!(coding(&["x-gzip"], &ALL), Some(Gzip));
        assert_eq!(coding(&[" gzip ; q=1 ,  br ; q=0.999 "], &ALL), Some(Gzip));
        // The first mention of a coding counts.
        assert_eq!(coding(&["br;q=0.1, gzip;q=0.5, br;q=1"], &ALL), Some(Gzip));
    }

    #[test]
    fn absent_empty_and_malformed_fields_mean_no_coding() {
        assert_eq!(negotiate(&[], &ALL).coding, None);
        assert_eq!(coding(&[""], &ALL), None);
        assert_eq!(coding(&[",,, ,"], &ALL), None);
        // Bad q-values skip the element, not the field.
        for bad in ["2", "1.5", "0.1234", "-1", "abc", "1.001", "", "0..1", ".5"] {
            assert_eq!(
                coding(&[&format!("br;q={bad}, gzip;q=0.1")], &ALL),
                Some(Gzip),
                "q={bad}"
            );
        }
        assert_eq!(
            coding(&["br;q, gzip"], &ALL),
            Some(Gzip),
            "a parameter without ="
        );
        assert_eq!(coding(&["b r, gzip"], &ALL), Some(Gzip), "not a token");
        let opaque = HeaderValue::from_bytes(b"br\xff").expect("obs-text");
        assert_eq!(negotiate([&opaque], &ALL).coding, None);
        // Other parameters are ignored.
        assert_eq!(coding(&["br;level=3"], &ALL), Some(Br));
    }

    #[test]
    fn q_values_parse_to_thousandths() {
        for (v, q) in [
            ("0", 0),
            ("0.", 0),
            ("0.5", 500),
            ("0.05", 50),
            ("0.001", 1),
        ] {
            assert_eq!(parse_q(v), Some(q), "{v}");
        }
        for (v, q) in [("1", 1000), ("1.", 1000), ("1.0", 1000), ("1.000", 1000)] {
            assert_eq!(parse_q(v), Some(q), "{v}");
        }
    }

    fn types(list: &[&str]) -> MediaTypes {
        MediaTypes::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("patterns")
    }

    fn ct(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).expect("content type")
    }

    #[test]
    fn media_types_match_with_wildcards_suffixes_and_parameters() {
        let t = types(
            &frontdesk_config::default_content_types()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        for yes in [
            "text/html",
            "text/plain; charset=utf-8",
            "TEXT/CSS",
            "application/json",
            "Application/JSON ; charset=UTF-8",
            "application/problem+json",
            "application/vnd.api+json",
            "application/javascript",
            "application/xml",
            "application/atom+xml",
            "image/svg+xml",
            "text/event-stream",
        ] {
            assert!(t.matches(&ct(yes)), "{yes}");
        }
        for no in [
            "image/png",
            "application/octet-stream",
            "application/jsonx",
            "application/+json",
            "application/x-json-ish",
            "video/mp4",
            "text",
            "",
            "/json",
            "image/svg",
        ] {
            assert!(!t.matches(&ct(no)), "{no}");
        }
        assert!(types(&["*/*"]).matches(&ct("image/png")));
        assert!(!types(&["*/*"]).matches(&ct("garbage")));
        assert!(types(&["Application/X-Custom"]).matches(&ct("application/x-custom;a=b")));
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in [
            "text",
            "*/json",
            "text/html; charset=utf-8",
            "application/*+",
            "a b/c",
            "*",
            "text/**",
        ] {
            assert!(MediaTypes::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_streams_are_recognised() {
        assert!(is_event_stream(&ct("text/event-stream")));
        assert!(is_event_stream(&ct("Text/Event-Stream; charset=utf-8")));
        assert!(!is_event_stream(&ct("text/plain")));
        assert!(!is_event_stream(&ct("text/event-streams")));
    }
}
