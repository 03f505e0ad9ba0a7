//! Secrets out of a config before it is shown (the admin API's `GET /config`): API keys,
//! basic-auth password hashes, JWT HMAC secrets, the admin token, passwords inside URLs, and the
//! values of credential headers set by the `headers` plugin.
//! File paths (certificates, keys) stay: they name secrets without being them.
//!
//! The placeholder is never a credential: [`Config::placeholder_secrets`] finds one where a secret
//! belongs, and loading refuses such a config (a file, or a `PUT /config` that copied one).

use serde_json::Value;

use crate::model::plugin::PluginsConfig;
use crate::model::{ApiKeyConfig, Config};
use crate::{Diagnostic, FieldPath};

/// What a redacted value reads as.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// A copy with every secret replaced by [`REDACTED`]; the shape is unchanged, so the result
    /// still shows which secrets are set.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for consumer in &mut c.consumers {
            for key in &mut consumer.api_keys {
                *key = match key {
                    ApiKeyConfig::Plain(_) => ApiKeyConfig::Plain(REDACTED.into()),
                    ApiKeyConfig::Hashed { .. } => ApiKeyConfig::Hashed {
                        sha256: REDACTED.into(),
                    },
                };
            }
            if let Some(b) = &mut consumer.basic_auth {
                b.password_hash = REDACTED.into();
            }
        }
        redact_plugins(&mut c.plugins);
        for r in &mut c.routes {
            redact_plugins(&mut r.plugins);
        }
        if let Some(a) = &mut c.admin {
            if a.token.is_some() {
                a.token = Some(REDACTED.into());
            }
        }
        if let Some(r) = &mut c.redis {
            r.url = r.url.as_deref().map(redact_url);
            r.cluster = r.cluster.iter().map(|u| redact_url(u)).collect();
        }
        for up in c.upstreams.values_mut() {
            for t in &mut up.targets {
                t.url = redact_url(&t.url);
            }
        }
        if let Some(t) = &mut c.observability.tracing {
            t.otlp_endpoint = t.otlp_endpoint.as_deref().map(redact_url);
        }
        c
    }
}

impl Config {
    /// An error for every secret whose value holds [`REDACTED`]: the placeholder `GET /config`
    /// shows is never a credential (an API key, a token, an HMAC secret anyone could sign with).
    /// The secrets are exactly the values [`Config::redacted`] hides; the placeholder elsewhere
    /// (a response body, a non-credential header) is just text.
    pub fn placeholder_secrets(&self) -> Vec<Diagnostic> {
        // Each placeholder becomes a marker; the secrets are where `redacted` then hides it.
        let Ok(mut probe) = serde_json::to_value(self) else {
            return Vec::new();
        };
        if !mark(&mut probe) {
            return Vec::new();
        }
        let Ok(marked) = serde_json::from_value::<Config>(probe.clone()) else {
            return Vec::new();
        };
        let Ok(hidden) = serde_json::to_value(marked.redacted()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        placeholders(&probe, &hidden, &FieldPath::root(), &mut out);
        out
    }
}

/// Whether any string in `v` holds [`REDACTED`], without allocating.
pub(crate) fn contains_placeholder(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains(REDACTED),
        Value::Array(items) => items.iter().any(contains_placeholder),
        Value::Object(m) => m.values().any(contains_placeholder),
        _ => false,
    }
}

/// Stands for a placeholder while [`Config::placeholder_secrets`] looks for the secrets.
const MARKER: &str = "\u{1}frontdesk-placeholder\u{1}";

/// Replaces [`REDACTED`] with [`MARKER`] in every string; true if there was one.
fn mark(v: &mut Value) -> bool {
    match v {
        Value::String(s) if s.contains(REDACTED) => {
            *s = s.replace(REDACTED, MARKER);
            true
        }
        // Every element is marked: no short cut after the first.
        Value::Array(items) => items.iter_mut().map(mark).filter(|m| *m).count() > 0,
        Value::Object(m) => m.values_mut().map(mark).filter(|m| *m).count() > 0,
        _ => false,
    }
}

fn placeholders(marked: &Value, hidden: &Value, at: &FieldPath, out: &mut Vec<Diagnostic>) {
    match (marked, hidden) {
        (Value::String(m), Value::String(h)) if m.contains(MARKER) && !h.contains(MARKER) => {
            out.push(Diagnostic::error(
                at.to_string(),
                format!(
                    "{REDACTED} is the placeholder the admin API shows for a secret, not a \
                     secret; write the real value (or a ${{VAR}})"
                ),
            ));
        }
        (Value::Array(m), Value::Array(h)) => {
            for (i, (m, h)) in m.iter().zip(h).enumerate() {
                placeholders(m, h, &at.index(i), out);
            }
        }
        (Value::Object(m), Value::Object(h)) => {
            for (k, m) in m {
                if let Some(h) = h.get(k) {
                    placeholders(m, h, &at.key(k), out);
                }
            }
        }
        _ => {}
    }
}

fn redact_plugins(p: &mut PluginsConfig) {
    // A custom plugin's fields are unknown here: every string could be a secret.
    for v in p.custom.values_mut() {
        redact_strings(v);
    }
    if let Some(h) = &mut p.headers {
        for ops in [&mut h.request, &mut h.response].into_iter().flatten() {
            for (name, value) in ops.set.iter_mut().chain(ops.add.iter_mut()) {
                if is_credential_header(name) {
                    *value = REDACTED.into();
                }
            }
        }
    }
    if let Some(jwt) = &mut p.jwt {
        for issuer in &mut jwt.issuers {
            if issuer.secret.is_some() {
                issuer.secret = Some(REDACTED.into());
            }
            issuer.jwks_url = issuer.jwks_url.as_deref().map(redact_url);
        }
    }
}

/// Replaces every string in `v` with [`REDACTED`].
fn redact_strings(v: &mut Value) {
    match v {
        Value::String(s) => *s = REDACTED.into(),
        Value::Array(items) => items.iter_mut().for_each(redact_strings),
        Value::Object(m) => m.values_mut().for_each(redact_strings),
        _ => {}
    }
}

/// Header names whose values are credentials: the standard ones, and any whose name says so
/// (`x-api-key`, `x-auth-token`, `x-client-secret`, ...).
fn is_credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || ["key", "token", "secret", "password", "auth", "session"]
        .iter()
        .any(|w| n.contains(w))
}

/// `scheme://user:secret@host/...` → `scheme://user:<redacted>@host/...`; a user part without a
/// `:` is redacted whole (Redis reads some such forms as a password).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let userinfo = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => REDACTED.to_string(),
    };
    format!("{scheme}://{userinfo}@{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_set_by_the_headers_plugin_are_redacted() {
        let text = r#"
version: 1
plugins:
  headers:
    request:
      set: { authorization: "Bearer upstream-secret", x-tenant: acme }
      add: { X-Api-Key: k-123 }
    response:
      set: { set-cookie: "s=1", cache-control: no-store }
"#;
        let cfg = crate::load_str(text, &|_| None).expect("valid").config;
        let shown = serde_json::to_string(&cfg.redacted()).expect("serializes");
        for secret in ["upstream-secret", "k-123", "s=1"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for kept in ["acme", "no-store"] {
            assert!(shown.contains(kept), "{kept} missing from {shown}");
        }
    }

    #[test]
    fn a_placeholder_is_refused_as_a_secret_and_allowed_as_text() {
        let text = r#"
version: 1
redis: { url: "redis://:<redacted>@cache:6379/0" }
plugins:
  headers:
    request:
      set: { authorization: "Bearer <redacted>", x-note: "<redacted>" }
routes:
  - name: r
    match: { paths: ["/"] }
    plugins:
      respond: { body: "<redacted>" }
"#;
        let errs = crate::load_str(text, &|_| None).expect_err("refused");
        let paths: Vec<&str> = errs
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.path.as_str())
            .collect();
        assert_eq!(
            paths,
            ["plugins.headers.request.set.authorization", "redis.url"],
            "{errs:?}"
        );
    }

    #[test]
    fn passwords_in_urls_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://:<redacted>@cache:6379/0"
        );
        assert_eq!(
            redact_url("rediss://app:s3cret@cache/1"),
            "rediss://app:<redacted>@cache/1"
        );
        assert_eq!(redact_url("redis://tok@cache"), "redis://<redacted>@cache");
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
    }
}
