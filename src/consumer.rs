//! Consumers at runtime: identified callers and the indexes that map credentials to them.
//! Built once per snapshot from `consumers:`; plugins look credentials up here.

use std::collections::HashMap;
use std::sync::Arc;

use frontdesk_config::{ApiKeyConfig, ConsumerConfig};
use http::HeaderValue;
use sha2::{Digest, Sha256};

/// An identified caller.
#[derive(Debug)]
pub struct Consumer {
    /// Config name.
    pub name: Arc<str>,
    /// Group names.
    pub groups: Vec<Arc<str>>,
    /// `x-consumer-name` value.
    pub name_header: HeaderValue,
    /// `x-consumer-groups` value (comma-separated); `None` without groups, so no empty header
    /// goes upstream.
    pub groups_header: Option<HeaderValue>,
}

impl Consumer {
    /// Whether the consumer is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| &**g == group)
    }
}

/// A consumer's basic-auth credential.
#[derive(Debug)]
pub struct BasicCredential {
    /// Who it identifies.
    pub consumer: Arc<Consumer>,
    /// The bcrypt hash.
    pub password_hash: String,
}

/// Every consumer, indexed by each kind of credential.
#[derive(Debug, Default)]
pub struct Consumers {
    by_name: HashMap<String, Arc<Consumer>>,
    /// SHA-256 of each API key: lookups hash the presented key first, so comparing keys never
    /// depends on how much of a secret matched.
    by_key_digest: HashMap<[u8; 32], Arc<Consumer>>,
    by_username: HashMap<String, BasicCredential>,
    by_subject_cn: HashMap<String, Arc<Consumer>>,
}

/// Why the consumers could not be indexed (validation catches these first).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConsumerError(String);

impl Consumers {
    /// Indexes `cfg`.
    pub fn build(cfg: &[ConsumerConfig]) -> Result<Consumers, ConsumerError> {
        let mut out = Consumers::default();
        for c in cfg {
            let groups_joined = c.groups.join(",");
            let consumer = Arc::new(Consumer {
                name: Arc::from(c.name.as_str()),
                groups: c.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                name_header: HeaderValue::from_str(&c.name).map_err(|_| {
                    ConsumerError(format!("consumer name {:?} is not a header value", c.name))
                })?,
                groups_header: (!c.groups.is_empty())
                    .then(|| HeaderValue::from_str(&groups_joined))
                    .transpose()
                    .map_err(|_| {
                        ConsumerError(format!("groups of {:?} are not a header value", c.name))
                    })?,
            });
            for key in &c.api_keys {
                let digest = match key {
                    ApiKeyConfig::Plain(k) => key_digest(k.as_bytes()),
                    ApiKeyConfig::Hashed { sha256 } => parse_hex32(sha256)
                        .ok_or_else(|| ConsumerError(format!("bad sha256 for {:?}", c.name)))?,
                };
                out.by_key_digest.insert(digest, consumer.clone());
            }
            if let Some(b) = &c.basic_auth {
                out.by_username.insert(
                    b.username.clone(),
                    BasicCredential {
                        consumer: consumer.clone(),
                        password_hash: b.password_hash.clone(),
                    },
                );
            }
            if let Some(cc) = &c.client_cert {
                out.by_subject_cn
                    .insert(cc.subject_cn.clone(), consumer.clone());
            }
            out.by_name.insert(c.name.clone(), consumer);
        }
        Ok(out)
    }

    /// The consumer called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }

    /// The consumer holding API key `key`.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        self.by_key_digest.get(&key_digest(key))
    }

    /// The basic-auth credential of `username`.
    pub fn by_username(&self, username: &str) -> Option<&BasicCredential> {
        self.by_username.get(username)
    }

    /// The consumer a client certificate with subject CN `cn` identifies.
    pub fn by_subject_cn(&self, cn: &str) -> Option<&Arc<Consumer>> {
        self.by_subject_cn.get(cn)
    }
}

/// SHA-256 of an API key.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_keys_find_their_consumer() {
        let hashed: String = key_digest(b"bob-secret-key")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let cfg = vec![
            ConsumerConfig {
                name: "alice".into(),
                groups: vec!["partners".into(), "beta".into()],
                api_keys: vec![ApiKeyConfig::Plain("alice-secret-key".into())],
                basic_auth: None,
                client_cert: None,
            },
            ConsumerConfig {
                name: "bob".into(),
                groups: vec![],
                api_keys: vec![ApiKeyConfig::Hashed { sha256: hashed }],
                basic_auth: None,
                client_cert: None,
            },
        ];
        let c = Consumers::build(&cfg).expect("builds");
        assert_eq!(
            &*c.by_api_key(b"alice-secret-key").expect("alice").name,
            "alice"
        );
        assert_eq!(&*c.by_api_key(b"bob-secret-key").expect("bob").name, "bob");
        assert!(c.by_api_key(b"alice-secret-keY").is_none());
        let alice = c.by_name("alice").expect("by name");
        assert_eq!(
            alice.groups_header,
            Some(HeaderValue::from_static("partners,beta"))
        );
        assert_eq!(c.by_name("bob").expect("bob").groups_header, None);
        assert!(alice.in_group("beta") && !alice.in_group("internal"));
    }
}
