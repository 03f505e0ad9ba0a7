//! Path rules, compiled: exact, template, segment-aware prefix, regex.

use regex::Regex;

/// A compiled path rule.
#[derive(Debug)]
pub(crate) enum PathRule {
    /// The whole path.
    Exact(String),
    /// Segments with `{name}` placeholders and an optional trailing catch-all.
    Template(Template),
    /// A prefix that ends at a segment boundary; `/` matches everything.
    Prefix(String),
    /// A regex searched in the path.
    Regex(Regex),
}

/// `/orders/{id}` or `/files/{*rest}`.
#[derive(Debug)]
pub(crate) struct Template {
    segments: Vec<Segment>,
    catch_all: bool,
    /// The catch-all's name (`rest` in `{*rest}`).
    catch_all_name: String,
}

/// One `/`-separated piece of a template.
#[derive(Debug)]
pub(crate) enum Segment {
    /// Text the path segment must equal.
    Literal(String),
    /// `{name}`: any non-empty segment.
    Param(String),
}

/// Where a matched path splits when `strip_prefix` is on: the upstream sees `path[split..]`.
pub(crate) type Split = usize;

impl PathRule {
    /// Rank of the rule's kind in route priority: exact, template, prefix, regex.
    pub(crate) fn kind_rank(&self) -> u8 {
        match self {
            PathRule::Exact(_) => 0,
            PathRule::Template(_) => 1,
            PathRule::Prefix(_) => 2,
            PathRule::Regex(_) => 3,
        }
    }

    /// Length used to order prefixes (longer first).
    pub(crate) fn prefix_len(&self) -> usize {
        match self {
            PathRule::Prefix(p) => p.len(),
            _ => 0,
        }
    }

    /// Matches `path`; on success returns how much of it `strip_prefix` removes.
    pub(crate) fn matches(&self, path: &str) -> Option<Split> {
        match self {
            PathRule::Exact(p) => (path == p).then_some(path.len()),
            PathRule::Prefix(p) => prefix_match(p, path).then_some(p.trim_end_matches('/').len()),
            PathRule::Template(t) => t.matches(path),
            PathRule::Regex(r) => r
                .find(path)
                .map(|m| if m.start() == 0 { m.end() } else { 0 }),
        }
    }

    /// True if every path this rule matches is also matched by `self` (used for shadowing warnings).
    pub(crate) fn covers(&self, other: &PathRule) -> bool {
        match (self, other) {
            (PathRule::Prefix(a), PathRule::Prefix(b)) => prefix_match(a, b),
            (PathRule::Prefix(a), PathRule::Exact(b)) => prefix_match(a, b),
            (PathRule::Prefix(a), PathRule::Template(t)) => prefix_match(a, &t.literal_prefix()),
            (PathRule::Prefix(a), PathRule::Regex(_)) => a == "/",
            (PathRule::Exact(a), PathRule::Exact(b)) => a == b,
            (PathRule::Template(a), PathRule::Exact(b)) => a.matches(b).is_some(),
            (PathRule::Template(a), PathRule::Template(b)) => a.source() == b.source(),
            (PathRule::Regex(a), PathRule::Regex(b)) => a.as_str() == b.as_str(),
            (PathRule::Regex(a), PathRule::Exact(b)) => a.is_match(b),
            _ => false,
        }
    }
}

/// Segment-aware prefix: `/users` matches `/users` and `/users/42`, not `/usersX`.
fn prefix_match(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true;
    }
    match path.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Template {
    /// Compiles a template already checked by the config validator.
    pub(crate) fn parse(s: &str) -> Template {
        let mut segments = Vec::new();
        let mut catch_all = false;
        let mut catch_all_name = String::new();
        for seg in s.split('/').skip(1) {
            if seg.starts_with("{*") && seg.ends_with('}') {
                catch_all = true;
                catch_all_name = seg[2..seg.len() - 1].to_string();
            } else if seg.starts_with('{') && seg.ends_with('}') {
                segments.push(Segment::Param(seg[1..seg.len() - 1].to_string()));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        Template {
            segments,
            catch_all,
            catch_all_name,
        }
    }

    /// The values of the placeholders in `path` (which the template matched), by name: each
    /// `{name}`'s segment, and the catch-all's rest of the path (without its leading `/`).
    pub(crate) fn params(&self, path: &str) -> Vec<(std::sync::Arc<str>, String)> {
        let mut out = Vec::new();
        let mut rest = path.strip_prefix('/').unwrap_or(path);
        for seg in &self.segments {
            let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if let Segment::Param(name) = seg {
                out.push((std::sync::Arc::from(name.as_str()), head.to_string()));
            }
            rest = tail;
        }
        if self.catch_all {
            out.push((
                std::sync::Arc::from(self.catch_all_name.as_str()),
                rest.to_string(),
            ));
        }
        out
    }

    /// The segments before any catch-all.
    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True if the template ends in `{*rest}`.
    pub(crate) fn catch_all(&self) -> bool {
        self.catch_all
    }

    fn matches(&self, path: &str) -> Option<Split> {
        let mut rest = path.strip_prefix('/')?;
        let mut consumed = 1;
        for (i, seg) in self.segments.iter().enumerate() {
            let (head, tail, more) = match rest.find('/') {
                Some(n) => (&rest[..n], &rest[n + 1..], true),
                None => (rest, "", false),
            };
            match seg {
                Segment::Literal(l) if l == head => {}
                Segment::Param(_) if !head.is_empty() => {}
                _ => return None,
            }
            let last = i + 1 == self.segments.len();
            if last {
                if self.catch_all {
                    return Some(consumed + head.len());
                }
                return (!more).then_some(path.len());
            }
            if !more {
                return None;
            }
            consumed += head.len() + 1;
            rest = tail;
        }
        // Only a catch-all template can have no fixed segments: `/{*rest}`.
        self.catch_all.then_some(0)
    }

    pub(crate) fn literal_prefix(&self) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => {
                    out.push('/');
                    out.push_str(l);
                }
                Segment::Param(_) => break,
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    pub(crate) fn source(&self) -> String {
        let mut s: String = self
            .segments
            .iter()
            .map(|seg| match seg {
                Segment::Literal(l) => format!("/{l}"),
                Segment::Param(_) => "/{}".to_string(),
            })
            .collect();
        if self.catch_all {
            s.push_str("/{*}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_params_by_name() {
        let t = Template::parse("/screens/{screen}/{user}/{*rest}");
        let got: Vec<(String, String)> = t
            .params("/screens/home/42/a/b")
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(
            got,
            [("screen", "home"), ("user", "42"), ("rest", "a/b")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn prefix_is_segment_aware() {
        let r = PathRule::Prefix("/users".into());
        assert_eq!(r.matches("/users"), Some(6));
        assert_eq!(r.matches("/users/42"), Some(6));
        assert_eq!(r.matches("/usersX"), None);
        assert_eq!(PathRule::Prefix("/".into()).matches("/anything"), Some(0));
    }

    #[test]
    fn template_matches_one_segment_per_placeholder() {
        let r = PathRule::Template(Template::parse("/orders/{id}"));
        assert!(r.matches("/orders/7").is_some());
        assert!(r.matches("/orders/7/items").is_none());
        assert!(r.matches("/orders/").is_none());
        let c = PathRule::Template(Template::parse("/files/{*rest}"));
        assert_eq!(c.matches("/files/a/b"), Some(6));
    }

    #[test]
    fn regex_searches_and_strips_only_an_anchored_match() {
        let r = PathRule::Regex(Regex::new("^/v[0-9]+/orders").expect("regex"));
        assert_eq!(r.matches("/v2/orders/1"), Some(10));
        assert_eq!(r.matches("/x/v2/orders"), None);
    }

    #[test]
    fn coverage_detects_shadowed_rules() {
        let all = PathRule::Prefix("/".into());
        assert!(all.covers(&PathRule::Exact("/x".into())));
        assert!(PathRule::Prefix("/a".into()).covers(&PathRule::Prefix("/a/b".into())));
        assert!(!PathRule::Prefix("/a".into()).covers(&PathRule::Prefix("/ab".into())));
    }
}
