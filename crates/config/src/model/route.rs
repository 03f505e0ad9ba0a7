//! Routes: which requests go where.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::aggregate::AggregateConfig;
use super::lenient;
use super::plugin::PluginsConfig;

/// A rule that matches requests and sends them to an upstream (or answers them with a plugin).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// What a request must look like to take this route.
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// The upstream to forward to; may be absent when a plugin (such as `respond`) answers, or
    /// when the route aggregates.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Answer with several upstream calls merged into one JSON answer, instead of forwarding
    /// to one upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateConfig>,
    /// Remove the matched prefix before forwarding (`/users/42` reaches the upstream as `/42`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Send the client's `Host` upstream (default); `false` sends the target's authority.
    #[serde(default = "yes")]
    pub preserve_host: bool,
    /// Plugins for this route; they run after the global plugins of the same kind.
    #[serde(default)]
    pub plugins: PluginsConfig,
}

fn yes() -> bool {
    true
}

/// Conditions on a request; all present conditions must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact hosts (`api.example.com`) or wildcards (`*.example.org`); absent means any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path rules; a request matches if any rule matches. Absent means every path.
    #[serde(default)]
    pub paths: Vec<PathMatch>,
    /// HTTP methods; absent means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values (names are case-insensitive).
    #[serde(default, deserialize_with = "lenient::string_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub headers: BTreeMap<String, String>,
    /// Query parameters that must be present with exactly these values.
    #[serde(default, deserialize_with = "lenient::string_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub query: BTreeMap<String, String>,
}

/// One path rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// A segment-aware prefix: `/users` matches `/users` and `/users/42`, not `/usersX`.
    /// Written as a plain string or `{ prefix: /users }`.
    Prefix(String),
    /// The whole path, exactly: `{ exact: /orders/latest }`.
    Exact(String),
    /// Segments with `{name}` placeholders (one segment each) and an optional trailing `{*rest}`.
    Template(String),
    /// A regular expression searched in the path: `{ regex: "^/v[0-9]+/orders" }`.
    Regex(String),
}

impl PathMatch {
    /// The rule's kind as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            PathMatch::Prefix(_) => "prefix",
            PathMatch::Exact(_) => "exact",
            PathMatch::Template(_) => "template",
            PathMatch::Regex(_) => "regex",
        }
    }

    /// The pattern text.
    pub fn pattern(&self) -> &str {
        match self {
            PathMatch::Prefix(s)
            | PathMatch::Exact(s)
            | PathMatch::Template(s)
            | PathMatch::Regex(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for PathMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Plain(String),
            Map(BTreeMap<String, String>),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            de::Error::custom(
                "expected a path string or a map with one of exact, prefix, template, regex",
            )
        })?;
        match raw {
            Raw::Plain(s) => Ok(PathMatch::Prefix(s)),
            Raw::Map(m) => {
                let mut it = m.into_iter();
                match (it.next(), it.next()) {
                    (Some((k, v)), None) => match k.as_str() {
                        "prefix" => Ok(PathMatch::Prefix(v)),
                        "exact" => Ok(PathMatch::Exact(v)),
                        "template" => Ok(PathMatch::Template(v)),
                        "regex" => Ok(PathMatch::Regex(v)),
                        other => Err(de::Error::custom(format!(
                            "unknown path rule {other:?}, expected one of exact, prefix, template, regex"
                        ))),
                    },
                    _ => Err(de::Error::custom(
                        "a path rule has exactly one key: exact, prefix, template or regex",
                    )),
                }
            }
        }
    }
}

impl Serialize for PathMatch {
    /// The map form (`{ prefix: /users }`), which reads back as the same rule.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.kind(), self.pattern())?;
        m.end()
    }
}

impl JsonSchema for PathMatch {
    fn schema_name() -> Cow<'static, str> {
        "PathMatch".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A path rule: a plain string is a segment-aware prefix; or one of {exact}, {prefix}, {template}, {regex}.",
            "anyOf": [
                { "type": "string" },
                { "type": "object", "properties": { "exact": { "type": "string" } }, "required": ["exact"], "additionalProperties": false },
                { "type": "object", "properties": { "prefix": { "type": "string" } }, "required": ["prefix"], "additionalProperties": false },
                { "type": "object", "properties": { "template": { "type": "string" } }, "required": ["template"], "additionalProperties": false },
                { "type": "object", "properties": { "regex": { "type": "string" } }, "required": ["regex"], "additionalProperties": false }
            ]
        })
    }
}
