//! API errors in the `metav1.Status` shape clients parse.

use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn not_found(resource: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"));
        let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
        e.details = json!({"name": name, "group": group, "kind": kind});
        e
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        );
        let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
        e.details = json!({"name": name, "group": group, "kind": kind});
        e
    }

    pub fn conflict(resource: &str, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        );
        let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
        e.details = json!({"name": name, "group": group, "kind": kind});
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 with one cause per field error (`path: message`).
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[(String, String)]) -> Self {
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let listed: Vec<String> = causes
            .iter()
            .map(|(field, message)| {
                if field.is_empty() {
                    message.clone()
                } else {
                    format!("{field}: {message}")
                }
            })
            .collect();
        let message = if listed.len() == 1 {
            format!("{qualified} \"{name}\" is invalid: {}", listed[0])
        } else {
            format!("{qualified} \"{name}\" is invalid: [{}]", listed.join(", "))
        };
        let mut e = Self::new(422, "Invalid", message);
        e.details = json!({
            "name": name,
            "group": group,
            "kind": kind,
            "causes": causes.iter().map(|(field, message)| json!({
                "reason": cause_reason(message),
                "message": message,
                "field": field,
            })).collect::<Vec<_>>(),
        });
        e
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// What the API server answers a read "not older than" a version it does not have yet.
    pub fn too_large_resource_version(wanted: u64, current: u64) -> Self {
        let mut e = Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {wanted}, current: {current}"),
        );
        e.details = json!({
            "retryAfterSeconds": 1,
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        });
        e
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

fn cause_reason(message: &str) -> &'static str {
    if message.starts_with("Required value") {
        "FieldValueRequired"
    } else if message.starts_with("Unsupported value") {
        "FieldValueNotSupported"
    } else if message.starts_with("Duplicate value") {
        "FieldValueDuplicate"
    } else if message.starts_with("Too long") {
        "FieldValueTooLong"
    } else if message.starts_with("Too many") {
        "FieldValueTooMany"
    } else if message.starts_with("Forbidden") {
        "FieldValueForbidden"
    } else if message.contains(" in body must be of type ") {
        // kube-openapi's type and format errors, which the API server reports as TypeInvalid.
        "FieldValueTypeInvalid"
    } else {
        "FieldValueInvalid"
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;
