//! Human-friendly scalar units used across the schema: byte sizes (`32KiB`) and durations (`30s`).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written as a plain integer or with a unit: `512`, `8KiB`, `1MiB`, `2GB`.
///
/// Binary units (`KiB`, `MiB`, `GiB`) are powers of 1024; decimal ones (`KB`, `MB`, `GB`) powers of 1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A duration, written as a number of seconds or with a unit: `250ms`, `10s`, `5m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dur(pub Duration);

// === impl ByteSize ===

impl ByteSize {
    /// Parses `12`, `12B`, `8KiB`, `1.5MiB`, `2GB` (case-insensitive units).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, unit) = split_unit(s, "size", "32KiB")?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1024,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1024 * 1024,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
                ))
            }
        };
        let bytes = num * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("invalid size {s:?}: out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }

    /// The size in bytes, saturated to `usize`.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1024 * 1024 && b.is_multiple_of(1024 * 1024) {
            write!(f, "{}MiB", b / (1024 * 1024))
        } else if b >= 1024 && b.is_multiple_of(1024) {
            write!(f, "{}KiB", b / 1024)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(
            d,
            "expected a size: a whole number of bytes, or a number with a unit such as 32KiB",
            ByteSize,
            ByteSize::parse,
        )
    }
}

impl Serialize for ByteSize {
    /// In its human form (`32KiB`), which reads back as the same size.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size in bytes: an integer, or a number with a unit (B, KiB, MiB, GiB, KB, MB, GB), e.g. 32KiB.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([bB]|[kKmMgG][iI]?[bB]?)?\\s*$" }
            ]
        })
    }
}

// === impl Dur ===

impl Dur {
    /// Parses `10` (seconds), `250ms`, `10s`, `5m`, `1h`, `1.5s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, unit) = split_unit(s, "duration", "10s or 250ms")?;
        let secs = match unit {
            "" | "s" => num,
            "ms" => num / 1000.0,
            "us" => num / 1_000_000.0,
            "m" => num * 60.0,
            "h" => num * 3600.0,
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h)"
                ))
            }
        };
        Duration::try_from_secs_f64(secs)
            .map(Dur)
            .map_err(|_| format!("invalid duration {s:?}: out of range"))
    }

    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(
            d,
            "expected a duration: a whole number of seconds, or a number with a unit such as 10s or 250ms",
            |n| Dur(Duration::from_secs(n)),
            Dur::parse,
        )
    }
}

impl Serialize for Dur {
    /// In its human form (`20ms`, `30s`); sub-millisecond durations in `us`, so that it reads
    /// back as the same duration.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.subsec_nanos().is_multiple_of(1_000_000) {
            s.collect_str(self)
        } else {
            s.collect_str(&format_args!("{}us", self.0.as_micros()))
        }
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: a number of seconds, or a number with a unit (ms, s, m, h), e.g. 10s.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*(us|ms|s|m|h)?\\s*$" }
            ]
        })
    }
}

/// Deserializes a unit type from an integer (`from_int`) or a string with a unit (`parse`);
/// anything else (a negative number, a list) is refused with `expected`.
fn scalar<'de, D, T>(
    d: D,
    expected: &'static str,
    from_int: impl FnOnce(u64) -> T,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    match Scalar::deserialize(d).map_err(|_| de::Error::custom(expected))? {
        Scalar::Int(n) => Ok(from_int(n)),
        Scalar::Str(s) => parse(&s).map_err(de::Error::custom),
    }
}

/// Splits `12.5KiB` into the number and the unit, or explains what was expected.
fn split_unit<'a>(s: &'a str, what: &str, example: &str) -> Result<(f64, &'a str), String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num = num.parse().map_err(|_| {
        format!("invalid {what} {s:?}: expected a number with a unit such as {example}")
    })?;
    Ok((num, unit.trim()))
}

/// An integer or a string, for the unit types above.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(u64),
    Str(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("32KiB"), Ok(ByteSize(32 * 1024)));
        assert_eq!(ByteSize::parse("1MB"), Ok(ByteSize(1_000_000)));
        assert_eq!(ByteSize::parse("100"), Ok(ByteSize(100)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("KiB").is_err());
    }

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(Dur::parse("250ms"), Ok(Dur(Duration::from_millis(250))));
        assert_eq!(Dur::parse("30s"), Ok(Dur(Duration::from_secs(30))));
        assert_eq!(Dur::parse("2m"), Ok(Dur(Duration::from_secs(120))));
        assert!(Dur::parse("3 fortnights").is_err());
    }
}
