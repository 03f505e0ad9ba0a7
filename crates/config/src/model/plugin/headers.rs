//! Config of the `headers` plugin.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::lenient;

/// Header edits on the request (before it is forwarded) and on the response (before the client sees it).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Edits applied to the request.
    #[serde(default)]
    pub request: Option<HeaderOps>,
    /// Edits applied to the response.
    #[serde(default)]
    pub response: Option<HeaderOps>,
}

/// Edits, applied in this order: remove, set, add.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Replace every value of the header with this one.
    #[serde(default, deserialize_with = "lenient::string_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub set: BTreeMap<String, String>,
    /// Append a value, keeping existing ones.
    #[serde(default, deserialize_with = "lenient::string_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub add: BTreeMap<String, String>,
    /// Delete the header.
    #[serde(default)]
    pub remove: Vec<String>,
}
