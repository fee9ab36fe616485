//! The OpenAPI `format` checks the API server applies to custom resources, which the shared
//! structural checks leave out: string formats (`date-time`, `date`, `byte`, `uuid`, `ipv4`,
//! `ipv6`, `cidr`) as kube-openapi's format registry decides them, and the integer ranges of
//! `int32`/`int64`. Errors carry the API server's field paths and wording, including its odd
//! ones (a range error is reported against no field, `<nil>`). Other formats the API server
//! knows (`email`, `hostname`, `uri`, `mac`, …) are not checked here; unknown formats are
//! ignored, as the API server ignores them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

/// One field error: (field path, message in the API server's words).
pub type Cause = (String, String);

/// The field the API server names for an error it cannot place (a nil `field.Path`).
pub const NO_FIELD: &str = "<nil>";

/// Checks every `format` under `schema` against `value`; `path` names `value`.
pub fn check(schema: &Value, value: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    walk(schema, value, path, &mut causes);
    causes
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        check_one(schema, format, value, path, causes);
    }
    for sub in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(sub, value, path, causes);
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, field) in fields {
                if let Some(sub) = properties.and_then(|p| p.get(key)).or(additional) {
                    walk(sub, field, &child(path, key), causes);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(sub, item, &format!("{path}[{i}]"), causes);
                }
            }
        }
        _ => {}
    }
}

fn check_one(schema: &Value, format: &str, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    match value {
        Value::String(text) => {
            let valid = match format {
                "date-time" | "datetime" => is_date_time(text),
                "date" => is_date(text),
                "byte" => is_base64(text),
                "uuid" => uuid().is_match(text),
                "ipv4" => text.contains('.') && text.parse::<IpAddr>().is_ok(),
                "ipv6" => text.contains(':') && text.parse::<Ipv6Addr>().is_ok(),
                "cidr" => is_cidr(text),
                _ => true,
            };
            if !valid {
                // kube-openapi's InvalidType error, which the API server turns into a
                // FieldValueTypeInvalid cause at the field.
                let quoted = Value::String(text.clone()).to_string();
                causes.push((
                    path.to_owned(),
                    format!(
                        "Invalid value: {quoted}: {path} in body must be of type {format}: {quoted}"
                    ),
                ));
            }
        }
        Value::Number(number) if schema.get("type").and_then(Value::as_str) == Some("integer") => {
            let fits = match format {
                "int32" => number.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                "int64" => number.as_i64().is_some(),
                _ => true,
            };
            if !fits {
                // kube-openapi reports a range error as a plain error, which the API server
                // attaches to the object's root path: nil, printed `<nil>`.
                causes.push((
                    NO_FIELD.to_owned(),
                    format!(
                        "Invalid value: \"\": Checked value must be of type integer with format {format} in {path}"
                    ),
                ));
            }
        }
        _ => {}
    }
}

fn uuid() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
            .expect("valid pattern")
    })
}

/// go-openapi's `IsDate`: `time.Parse("2006-01-02", s)`, a real calendar date.
fn is_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    let shape = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shape {
        return false;
    }
    let number = |range: std::ops::Range<usize>| text[range].parse::<i16>().unwrap_or(-1);
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    k8s_openapi::jiff::civil::Date::new(year, month as i8, day as i8).is_ok()
}

/// go-openapi's `IsDateTime`: a date, `t`, then `hh:mm:ss[.frac](z|±hh:mm)`, compared as text
/// (so `23:59:59` is the latest time it accepts), case-insensitive.
fn is_date_time(text: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    let time = RE.get_or_init(|| {
        Regex::new(r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$")
            .expect("valid pattern")
    });
    if text.len() < 4 {
        return false;
    }
    let lower = text.to_lowercase();
    let parts: Vec<&str> = lower.split('t').collect();
    if parts.len() < 2 || !is_date(parts[0]) {
        return false;
    }
    time.captures(parts[1])
        .is_some_and(|c| &c[1] <= "23" && &c[2] <= "59" && &c[3] <= "59")
}

/// govalidator's `IsBase64`: padded standard base64 of at least one group.
fn is_base64(text: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$",
        )
        .expect("valid pattern")
    })
    .is_match(text)
}

/// Go's `net.ParseCIDR`: an address, `/`, a prefix length that fits its family.
fn is_cidr(text: &str) -> bool {
    let Some((address, prefix)) = text.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    if address.parse::<Ipv4Addr>().is_ok() {
        return prefix <= 32;
    }
    address.parse::<Ipv6Addr>().is_ok() && prefix <= 128
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn date_times_follow_go_openapi() {
        for good in [
            "2024-02-29T23:59:59Z",
            "2024-01-01t00:00:00.123456+02:00",
            "2024-01-01T10:00:00-05:30",
        ] {
            assert!(is_date_time(good), "{good}");
        }
        for bad in [
            "",
            "yesterday",
            "2023-02-29T00:00:00Z",
            "2024-01-01",
            "2024-01-01T24:00:00Z",
            "2024-01-01T10:00:00",
            "2024-13-01T10:00:00Z",
        ] {
            assert!(!is_date_time(bad), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_field_as_the_api_server_does() {
        let schema = json!({"type": "object", "properties": {
            "at": {"type": "string", "format": "date-time"},
            "data": {"type": "string", "format": "byte"},
            "list": {"type": "array", "items": {"type": "integer", "format": "int32"}},
            "big": {"type": "integer", "format": "int64"},
        }});
        let causes = check(
            &schema,
            &json!({"at": "soon", "data": "aGk=", "list": [1, 2_147_483_648_i64], "big": 9_223_372_036_854_775_807_i64}),
            "status",
        );
        assert_eq!(
            causes,
            vec![
                (
                    "status.at".to_owned(),
                    "Invalid value: \"soon\": status.at in body must be of type date-time: \"soon\"".to_owned()
                ),
                (
                    "<nil>".to_owned(),
                    "Invalid value: \"\": Checked value must be of type integer with format int32 in status.list[1]".to_owned()
                ),
            ]
        );
        assert!(!is_base64("aGk"));
        assert!(is_cidr("10.0.0.0/8") && !is_cidr("10.0.0.0/33") && is_cidr("fd00::/64"));
    }
}
