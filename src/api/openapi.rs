//! Structural OpenAPI v3 checks of an object against a CRD schema, as the API server does them
//! (types, required, enum, pattern, bounds, list-type uniqueness, unknown fields), so input is
//! refused before it reaches a cluster. CEL rules are evaluated separately.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use regex::Regex;
use serde_json::Value;

/// One problem at one field, worded like the API server's field errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with indices, e.g. `spec.endpoints[2].ports[0].port`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Most problems reported for one object: past them the checks stop, so a hostile object
/// with a problem in each of a hundred thousand items costs no more than a broken one.
pub const MAX_ERRORS: usize = 100;

/// Checks `value` against `schema`; `path` names `value` in messages.
pub fn check(schema: &Value, value: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_node(schema, value, path, &mut errors);
    if errors.len() >= MAX_ERRORS {
        errors.truncate(MAX_ERRORS);
        errors.push(FieldError {
            path: String::new(),
            message: format!("stopped after {MAX_ERRORS} problems; fix these and check again"),
        });
    }
    errors
}

fn push(errors: &mut Vec<FieldError>, path: &str, message: String) {
    errors.push(FieldError {
        path: path.to_owned(),
        message,
    });
}

/// Compiled patterns, shared: a cloned `Regex` would start a fresh match cache each time.
fn compiled_pattern(pattern: &str) -> Option<Arc<Regex>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Arc<Regex>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Look up by &str first: schemas hold few patterns, objects many strings.
    if let Some(compiled) = cache.get(pattern) {
        return compiled.clone();
    }
    let compiled = Regex::new(pattern).ok().map(Arc::new);
    cache.insert(pattern.to_owned(), compiled.clone());
    compiled
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as error messages quote it: at most 80 characters, cut on a character boundary
/// (user input may be any UTF-8), URL credentials masked.
fn short(value: &Value) -> String {
    let text = shown(&value.to_string());
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(77).collect::<String>())
    } else {
        text
    }
}

/// A string as error messages quote it: a URL's userinfo (`http://user:pass@proxy`) is
/// masked, because the message lands in terminals, CI logs and Events.
/// A value for a message: userinfo masked, invisible and control characters escaped.
pub fn shown(text: &str) -> String {
    let text = if text.contains("://") && text.contains('@') {
        redact_userinfo(text)
    } else {
        text.to_owned()
    };
    const SHOWN: usize = 128;
    let mut out: String = text
        .chars()
        .take(SHOWN)
        .map(|c| {
            // Control and invisible characters (zero-width, direction marks, BOM) escaped.
            let invisible = c.is_control()
                || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}');
            if invisible {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    if text.chars().nth(SHOWN).is_some() {
        out.push('…');
    }
    out
}

/// `url` with any userinfo masked (`http://user:***@host:port`), for messages: proxy
/// credentials written into a URL never reach a status, an event or a log. Everything before
/// the last `@` of the authority counts as userinfo, so a password holding `/` or `@` stays
/// hidden too; only a user name before a `:` is kept.
pub fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) if !user.contains('/') => format!("{scheme}{user}:***@{host}"),
        _ => format!("{scheme}***@{host}"),
    }
}

fn check_node(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(schema) = schema.as_object() else {
        return;
    };
    if errors.len() >= MAX_ERRORS {
        return;
    }
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            push(
                errors,
                path,
                "Invalid value: \"null\": must not be null".into(),
            );
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            push(
                errors,
                path,
                format!(
                    "Invalid value: \"{}\": must be an integer or a string",
                    type_name(value)
                ),
            );
        }
        return;
    }
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let fits = actual == expected || (expected == "number" && actual == "integer");
        if !fits {
            push(
                errors,
                path,
                format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""
                ),
            );
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        push(
            errors,
            path,
            format!(
                "Unsupported value: {}: supported values: {}",
                short(value),
                list.join(", ")
            ),
        );
    }
    match value {
        Value::String(text) => check_string(schema, text, path, errors),
        Value::Number(number) => check_number(schema, number, path, errors),
        Value::Array(items) => check_array(schema, items, path, errors),
        Value::Object(fields) => check_object(schema, fields, path, errors),
        _ => {}
    }
}

fn check_string(
    schema: &serde_json::Map<String, Value>,
    text: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let chars = text.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        push(
            errors,
            path,
            format!("Too long: may not be more than {max} bytes"),
        );
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        push(
            errors,
            path,
            format!(
                "Invalid value: \"{}\": {path} in body should be at least {min} chars long",
                shown(text)
            ),
        );
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match compiled_pattern(pattern) {
            Some(re) if !re.is_match(text) => push(
                errors,
                path,
                format!(
                    "Invalid value: \"{}\": {path} in body should match '{pattern}'",
                    shown(text)
                ),
            ),
            Some(_) => {}
            None => push(
                errors,
                path,
                format!("schema pattern '{pattern}' does not compile"),
            ),
        }
    }
}

fn check_number(
    schema: &serde_json::Map<String, Value>,
    number: &serde_json::Number,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let Some(n) = number.as_f64() else { return };
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
        if n > max || (exclusive && n == max) {
            let op = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            push(
                errors,
                path,
                format!("Invalid value: {number}: {path} in body should be {op} {max}"),
            );
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
        if n < min || (exclusive && n == min) {
            let op = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            push(
                errors,
                path,
                format!("Invalid value: {number}: {path} in body should be {op} {min}"),
            );
        }
    }
}

fn check_array(
    schema: &serde_json::Map<String, Value>,
    items: &[Value],
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let len = items.len() as u64;
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && len > max
    {
        push(
            errors,
            path,
            format!("Too many: {len}: must have at most {max} items"),
        );
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && len < min
    {
        push(
            errors,
            path,
            format!("Invalid value: {len}: {path} in body should have at least {min} items"),
        );
    }
    if let Some(item_schema) = schema.get("items") {
        for (index, item) in items.iter().enumerate() {
            check_node(item_schema, item, &format!("{path}[{index}]"), errors);
        }
    }
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            let mut seen = BTreeSet::new();
            for (index, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    push(
                        errors,
                        &format!("{path}[{index}]"),
                        format!("Duplicate value: {}", short(item)),
                    );
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for (index, item) in items.iter().enumerate() {
                let key: Vec<String> = keys
                    .iter()
                    .map(|k| item.get(*k).map(Value::to_string).unwrap_or_default())
                    .collect();
                if !seen.insert(key.clone()) {
                    let shown: Vec<String> = keys
                        .iter()
                        .zip(&key)
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    push(
                        errors,
                        &format!("{path}[{index}]"),
                        format!(
                            "Duplicate value: map[string]interface {{}}{{{}}}",
                            shown.join(", ")
                        ),
                    );
                }
            }
        }
        _ => {}
    }
}

fn check_object(
    schema: &serde_json::Map<String, Value>,
    fields: &serde_json::Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            if !fields.contains_key(key) {
                push(errors, &join(key), "Required value".into());
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let additional = schema.get("additionalProperties");
    for (key, child) in fields {
        // Type and object meta at the root are the API server's, not the schema's.
        if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let child_path = join(key);
        if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
            check_node(child_schema, child, &child_path, errors);
        } else if let Some(additional) = additional.filter(|a| a.is_object()) {
            check_node(additional, child, &child_path, errors);
        } else if !preserve
            && additional.and_then(Value::as_bool) != Some(true)
            && properties.is_some()
        {
            push(
                errors,
                &child_path,
                "unknown field: not declared in the schema".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["port"],
            "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "protocol": {"type": "string", "enum": ["TCP", "TLS"]},
                "host": {"type": "string", "pattern": "^[a-z.]+$", "maxLength": 10},
                "items": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}}}
                }
            }
        })
    }

    #[test]
    fn out_of_range_port_names_the_field_and_bound() {
        let errors = check(&schema(), &json!({"port": 70000}), "spec");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "spec.port");
        assert!(
            errors[0].message.contains("less than or equal to 65535"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn each_structural_rule_is_reported() {
        let value = json!({
            "protocol": "FTP",
            "host": "Not_A_Host_And_Too_Long",
            "extra": 1,
            "items": [{"name": "a"}, {"name": "a"}]
        });
        let errors = check(&schema(), &value, "spec");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let joined = text.join("\n");
        assert!(joined.contains("spec.port: Required value"), "{joined}");
        assert!(
            joined.contains("spec.protocol: Unsupported value: \"FTP\""),
            "{joined}"
        );
        assert!(joined.contains("spec.host: Too long"), "{joined}");
        assert!(joined.contains("spec.host: Invalid value"), "{joined}");
        assert!(joined.contains("spec.extra: unknown field"), "{joined}");
        assert!(
            joined.contains("spec.items[1]: Duplicate value"),
            "{joined}"
        );
    }

    #[test]
    fn long_multibyte_values_are_cut_on_a_character_boundary() {
        // 100 three-byte characters: byte 77 falls inside one.
        let long = "€".repeat(100);
        let errors = check(&schema(), &json!({"port": 1, "protocol": long}), "spec");
        assert_eq!(errors.len(), 1, "{errors:?}");
        let message = &errors[0].message;
        assert!(
            message.contains(&format!("\"{}…", "€".repeat(76))),
            "{message}"
        );
        // Up to 80 characters (quotes included) are quoted whole.
        let fits = "ü".repeat(78);
        assert_eq!(short(&json!(fits)), format!("\"{fits}\""));
    }

    #[test]
    fn userinfo_is_masked_in_proxy_urls() {
        assert_eq!(
            redact_userinfo("http://alice:s3cret@proxy.corp:3128/"),
            "http://alice:***@proxy.corp:3128/"
        );
        // A password holding `@` or `/` stays hidden; a bare token is hidden whole.
        assert_eq!(
            redact_userinfo("http://alice:p@ss/w@proxy:1"),
            "http://alice:***@proxy:1"
        );
        assert_eq!(
            redact_userinfo("http://tok3n@proxy:1"),
            "http://***@proxy:1"
        );
        assert_eq!(redact_userinfo("alice:s3cret@proxy:1"), "alice:***@proxy:1");
        assert_eq!(redact_userinfo("http://proxy:1"), "http://proxy:1");
    }

    #[test]
    fn credentials_in_a_url_are_never_quoted() {
        let schema = json!({
            "type": "object",
            "properties": {"url": {"type": "string", "pattern": "^http://[^\\s/@]+$"}}
        });
        let errors = check(
            &schema,
            &json!({"url": "http://alice:s3cret@proxy.corp:3128"}),
            "spec.proxy",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        let message = &errors[0].message;
        assert!(!message.contains("s3cret"), "{message}");
        assert!(
            message.contains("http://alice:***@proxy.corp:3128"),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_stops_descent() {
        let errors = check(&schema(), &json!({"port": "443"}), "spec");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("must be of type integer"));
    }
}
