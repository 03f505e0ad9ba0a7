//! Config of the `respond` plugin.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::lenient;

/// A static response sent without contacting any upstream.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    /// HTTP status code, 200 to 599 (default 200).
    #[serde(default = "ok")]
    pub status: u16,
    /// Response body, sent as is.
    #[serde(default, deserialize_with = "lenient::string")]
    #[schemars(with = "String")]
    pub body: String,
    /// Response headers.
    #[serde(default, deserialize_with = "lenient::string_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub headers: BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}
