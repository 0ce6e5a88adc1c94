//! Durations as operators write them: `30s`, `1m30s`, `250ms`, `24h`.
//!
//! One parser serves the CRDs, the dataplane config and every flag. The accepted syntax
//! is the subset of Go's `time.ParseDuration` that Kubernetes CEL's `duration()` also
//! accepts, so a rule such as `duration(self.a) >= duration(self.b)` in the CRD schema
//! agrees with what the controller and the dataplane compute.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression the CRD schema applies to every duration field.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A non-negative span of time written as a string such as `30s`, `1h30m` or `250ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("failed to parse duration: empty string (write e.g. \"30s\", \"5m\", \"24h\")")]
    Empty,
    /// A number was not followed by a unit.
    #[error("failed to parse duration {0:?}: every number needs a unit (ms, s, m or h)")]
    MissingUnit(String),
    /// A unit was not one of the accepted ones.
    #[error("failed to parse duration {0:?}: unknown unit {1:?} (use ms, s, m or h)")]
    UnknownUnit(String, String),
    /// A unit came without a number before it.
    #[error("failed to parse duration {0:?}: expected a number before {1:?}")]
    MissingNumber(String, String),
    /// The value does not fit in 64 bits of milliseconds.
    #[error("failed to parse duration {0:?}: too large")]
    Overflow(String),
}

impl Duration {
    /// Zero.
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    /// The standard library value.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whole milliseconds.
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let bytes = s.as_bytes();
        let mut total_ms: u64 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let number = &s[start..i];
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit = &s[unit_start..i];
            if number.is_empty() {
                // Name the whole character found instead (it may be several bytes long).
                let what = if unit.is_empty() {
                    s[i..].chars().next().map(String::from).unwrap_or_default()
                } else {
                    unit.to_owned()
                };
                return Err(DurationError::MissingNumber(s.to_owned(), what));
            }
            if unit.is_empty() {
                return Err(DurationError::MissingUnit(s.to_owned()));
            }
            let factor: u64 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                other => return Err(DurationError::UnknownUnit(s.to_owned(), other.to_owned())),
            };
            let n: u64 = number
                .parse()
                .map_err(|_| DurationError::Overflow(s.to_owned()))?;
            total_ms = n
                .checked_mul(factor)
                .and_then(|v| total_ms.checked_add(v))
                .ok_or_else(|| DurationError::Overflow(s.to_owned()))?;
        }
        Ok(Duration::from_millis(total_ms))
    }
}

impl fmt::Display for Duration {
    /// The shortest canonical form: `1h30m`, `45s`, `250ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Parse inside the visitor: format crates (serde_yaml) then attach the error to
        // the duration field itself (`spec.affinity.maxSessionTime`), not to its parent.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\" or \"24h\"")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
                s.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operator_forms() {
        assert_eq!("30s".parse::<Duration>().unwrap(), Duration::from_secs(30));
        assert_eq!(
            "1h30m".parse::<Duration>().unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            "250ms".parse::<Duration>().unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            "24h".parse::<Duration>().unwrap(),
            Duration::from_secs(86_400)
        );
        assert_eq!("0s".parse::<Duration>().unwrap(), Duration::ZERO);
    }

    #[test]
    fn refuses_ambiguous_or_unknown_forms() {
        assert_eq!("".parse::<Duration>(), Err(DurationError::Empty));
        assert!(matches!(
            "30".parse::<Duration>(),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            "7d".parse::<Duration>(),
            Err(DurationError::UnknownUnit(_, _))
        ));
        assert!(matches!(
            "s".parse::<Duration>(),
            Err(DurationError::MissingNumber(_, _))
        ));
        assert!(matches!(
            "-5s".parse::<Duration>(),
            Err(DurationError::MissingNumber(_, _))
        ));
        assert!("1.5s".parse::<Duration>().is_err());
        assert!(matches!(
            "99999999999999999999h".parse::<Duration>(),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn non_ascii_is_an_error_not_a_panic() {
        // Issue 17, finding 3: a multi-byte character where a digit is expected.
        for s in ["é", "1sé", "1é", "é1s", "1s\u{1F600}", "\u{0663}s"] {
            let err = s.parse::<Duration>().unwrap_err();
            assert!(
                err.to_string().contains("failed to parse duration"),
                "{s}: {err}"
            );
        }
    }

    #[test]
    fn a_bad_duration_in_a_manifest_names_the_field() {
        let yaml = "apiVersion: portcullis.io/v1alpha1\nkind: GatewayArray\nmetadata: {name: a}\nspec:\n  maxSessionTime: \"é\"\n";
        let err = serde_yaml::from_str::<crate::v1alpha1::GatewayArray>(yaml).unwrap_err();
        assert!(err.to_string().contains("maxSessionTime"), "{err}");
    }

    #[test]
    fn displays_canonically_and_round_trips() {
        for (input, shown) in [("90s", "1m30s"), ("3600000ms", "1h"), ("1h0m5s", "1h5s")] {
            let d: Duration = input.parse().unwrap();
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<Duration>().unwrap(), d);
        }
    }

    /// The CRD's own check of a duration string: its JSON schema, with a real regex engine.
    fn schema_accepts(s: &str) -> bool {
        let schema =
            serde_json::to_value(Duration::json_schema(&mut SchemaGenerator::default())).unwrap();
        jsonschema::is_valid(&schema, &serde_json::Value::String(s.to_owned()))
    }

    #[test]
    fn pattern_agrees_with_parser_on_samples() {
        // The schema pattern and the parser must accept and refuse the same strings, or the
        // API server would accept what the controller then rejects.
        let accepted = ["1s", "1h30m", "250ms", "0s", "1m1s", "5s5s"];
        let refused = [
            "", "30", "7d", "-5s", "1.5s", "s", "1 s", "1S", "1us", "ms5",
        ];
        for s in accepted {
            assert!(s.parse::<Duration>().is_ok(), "{s}");
            assert!(schema_accepts(s), "{s}");
        }
        for s in refused {
            assert!(s.parse::<Duration>().is_err(), "{s}");
            assert!(!schema_accepts(s), "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn display_then_parse_is_identity(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            proptest::prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }

        #[test]
        fn pattern_and_parser_agree(s in "[0-9hmsd. -]{0,8}") {
            // Overflow is the one refusal the pattern cannot express; 8 characters never
            // overflow.
            proptest::prop_assert_eq!(s.parse::<Duration>().is_ok(), schema_accepts(&s), "{:?}", s);
        }
    }
}
