//! Go-style duration strings (`30s`, `5m`, `1h30m`) as they appear in specs.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The pattern the API server checks; [`SpecDuration::from_str`] accepts exactly the same
/// language (Go's `time.ParseDuration`, non-negative, with a unit).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// The CEL rule that refuses a zero duration: nothing in the spec can wait for no time at all.
pub const DURATION_POSITIVE_RULE: &str = "duration(self) > duration('0s')";

/// A positive duration written the way Kubernetes writes them, kept verbatim so that objects
/// round-trip unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct SpecDuration {
    text: String,
    value: Duration,
}

impl SpecDuration {
    pub fn as_duration(&self) -> Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseDurationError {
    #[error("invalid duration {text:?}: expected a number with a unit such as 30s, 5m or 1h30m")]
    Syntax { text: String },
    #[error("invalid duration {text:?}: must be greater than zero, such as 5s")]
    Zero { text: String },
}

impl FromStr for SpecDuration {
    type Err = ParseDurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let value = parse_go_duration(text).ok_or_else(|| ParseDurationError::Syntax {
            text: text.to_owned(),
        })?;
        if value.is_zero() {
            return Err(ParseDurationError::Zero {
                text: text.to_owned(),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            value,
        })
    }
}

/// Largest duration Go represents (an int64 of nanoseconds, about 292 years); Go refuses
/// longer ones, and so do we rather than overflow.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses exactly [`DURATION_PATTERN`] (Go's `time.ParseDuration` without signs or a bare
/// "0"), so the CLI and the API server agree; `None` for anything else or an overflow.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return None;
        }
        let whole = &rest[..int_len];
        rest = &rest[int_len..];
        let mut fraction = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            if frac_len == 0 {
                return None;
            }
            fraction = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        let (unit, nanos_per_unit) = [
            ("ns", 1u128),
            ("us", 1_000),
            ("µs", 1_000),
            ("ms", 1_000_000),
            ("s", 1_000_000_000),
            ("m", 60_000_000_000),
            ("h", 3_600_000_000_000),
        ]
        .into_iter()
        .find(|(unit, _)| rest.starts_with(unit))?;
        rest = &rest[unit.len()..];
        let whole: u128 = whole.parse().ok().filter(|w| *w <= MAX_NANOS)?;
        let mut nanos = whole.checked_mul(nanos_per_unit)?;
        // Fraction digits beyond nanosecond precision cannot matter; Go drops them too.
        let mut scale = nanos_per_unit;
        for digit in fraction.bytes().take(20) {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(nanos).filter(|t| *t <= MAX_NANOS)?;
    }
    Some(Duration::from_nanos(u64::try_from(total).ok()?))
}

impl fmt::Debug for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for SpecDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for SpecDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl JsonSchema for SpecDuration {
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
            "x-kubernetes-validations": [{
                "rule": DURATION_POSITIVE_RULE,
                "message": "must be greater than zero, such as 5s",
                "reason": "FieldValueInvalid",
            }],
        })
    }
}

impl From<Duration> for SpecDuration {
    fn from(value: Duration) -> Self {
        let text = if value.subsec_millis() == 0 {
            format!("{}s", value.as_secs())
        } else {
            format!("{}ms", value.as_millis())
        };
        Self { text, value }
    }
}

/// A duration as people write it: `3s`, `1.5s`, `250ms`, `5m`, `1h` (to the millisecond).
pub fn human(duration: Duration) -> String {
    let millis = (duration.as_nanos() + 500_000) / 1_000_000;
    if millis == 0 {
        return format!("{}µs", duration.as_micros());
    }
    match millis {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m >= 60_000 && m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1_000 == 0 => format!("{}s", m / 1_000),
        m if m < 1_000 => format!("{m}ms"),
        m => {
            let seconds = format!("{}.{:03}", m / 1_000, m % 1_000);
            format!("{}s", seconds.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_people_write_them() {
        let cases = [
            (Duration::from_secs(3), "3s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_nanos(2_999_980_311), "3s"),
            (Duration::from_millis(2_050), "2.05s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(7_200), "2h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_micros(20), "20µs"),
        ];
        for (duration, text) in cases {
            assert_eq!(human(duration), text, "{duration:?}");
        }
    }

    #[test]
    fn go_durations_parse_to_their_value() {
        let cases = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1.5s", 1_500),
            ("250ms", 250),
        ];
        for (text, millis) in cases {
            let parsed: SpecDuration = text.parse().unwrap();
            assert_eq!(
                parsed.as_duration(),
                Duration::from_millis(millis),
                "{text}"
            );
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn durations_without_unit_or_with_sign_are_refused() {
        for text in [
            "",
            "10",
            "-5s",
            "+5s",
            "5 m",
            "m",
            "1.s",
            "5d",
            "0",
            "0s",
            "0.0ms",
            "0h0m0s",
            "9999999999999999h",
            "99999999999999999999999999999999999999999s",
            "2562048h",
        ] {
            assert!(
                text.parse::<SpecDuration>().is_err(),
                "{text:?} should be refused"
            );
        }
    }
}
