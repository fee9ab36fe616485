//! Admission of a written object: type meta, schema pruning, strict field validation, CEL
//! rules, defaults on create, and the status of a new CRD.

use super::*;

pub(super) fn check_type_meta(ty: &ResourceType, body: &Value) -> ApiResult<()> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    if let Some(api_version) = body["apiVersion"].as_str()
        && api_version != ty.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            ty.api_version()
        )));
    }
    if let Some(kind) = body["kind"].as_str()
        && kind != ty.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            ty.kind
        )));
    }
    if !body["metadata"].is_object() && !body["metadata"].is_null() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// Validates, prunes and defaults an object about to be stored; `old` is the object it
/// replaces (for CEL transition rules, which use `oldSelf`).
pub(super) fn admit(
    ty: &ResourceType,
    mut body: Value,
    query: &Query,
    old: Option<&Value>,
) -> ApiResult<Value> {
    body["apiVersion"] = json!(ty.api_version());
    body["kind"] = json!(ty.kind);
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let strict = query.field_validation.as_deref() == Some("Strict");
    if let Some(crd) = &ty.crd {
        let mut unknown = Vec::new();
        prune(&crd.schema, &mut body, "", &mut unknown, true);
        if strict && !unknown.is_empty() {
            return Err(strict_decoding_error(&unknown));
        }
        body = kube::core::cel::apply_defaults(&crd.schema, &body);
        let mut causes: Vec<(String, String)> = openapi_check::check(&crd.schema, &body, "")
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect();
        causes.extend(formats::check(&crd.schema, &body, ""));
        // The API server evaluates x-kubernetes-validations unless a schema error "blocks"
        // them (wrong type, missing, unsupported, too long, too many), and says so then.
        let blocked = causes.iter().any(|(_, message)| blocks_cel(message));
        if crd.has_rules && blocked {
            causes.push((
                formats::NO_FIELD.to_owned(),
                "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation".to_owned(),
            ));
        } else if crd.has_rules
            && let Err(cel_errors) =
                kube::core::cel::Validator::new().validate_compiled(&crd.compiled, &body, old)
        {
            causes.extend(
                cel_errors
                    .into_vec()
                    .into_iter()
                    .map(|e| cel_cause(&crd.schema, e)),
            );
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(&ty.kind, &ty.group, &name, &causes));
        }
        return Ok(body);
    }
    if ty.plural == "secrets"
        && let Some(Value::Object(string_data)) =
            body.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        use base64::Engine as _;
        for (key, value) in string_data {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(value.as_str().unwrap_or_default());
            body["data"][key] = Value::String(encoded);
        }
    }
    if let Some(check) = ty.typed {
        let unknown = check(&body)
            .map_err(|e| ApiError::bad_request(format!("error decoding {}: {e}", ty.kind)))?;
        if strict && !unknown.is_empty() {
            return Err(strict_decoding_error(&unknown));
        }
        for path in unknown {
            remove_dotted(&mut body, &path);
        }
    }
    Ok(body)
}

/// Server-side apply types the apply configuration against the schema before anything else,
/// whatever the field validation asks: a field the CRD does not declare fails the request,
/// with the 500 Kubernetes answers it with (kubernetes/kubernetes#139253).
pub(super) fn check_apply_fields(
    ty: &ResourceType,
    applied: &Value,
    target: &Target,
) -> ApiResult<()> {
    let Some(crd) = &ty.crd else {
        return Ok(());
    };
    let mut typed = applied.clone();
    let mut unknown = Vec::new();
    prune(&crd.schema, &mut typed, "", &mut unknown, true);
    match unknown.first() {
        None => Ok(()),
        Some(field) => Err(ApiError::new(
            500,
            "InternalError",
            format!(
                "failed to create typed patch object ({}/{}; {}, Kind={}): .{field}: field not declared in schema",
                target.ns(),
                target.name_or_empty(),
                ty.api_version(),
                ty.kind
            ),
        )),
    }
}

/// What the API server answers a `fieldValidation=Strict` write with unknown fields.
fn strict_decoding_error(unknown: &[String]) -> ApiError {
    let listed: Vec<String> = unknown
        .iter()
        .map(|u| format!("unknown field \"{u}\""))
        .collect();
    ApiError::bad_request(format!("strict decoding error: {}", listed.join(", ")))
}

/// Schema errors after which the API server does not evaluate CEL rules: its field error
/// types Required, NotSupported, TooLong, TooMany and TypeInvalid (wrong type, bad format,
/// null where not nullable).
fn blocks_cel(message: &str) -> bool {
    [
        "Required value",
        "Unsupported value",
        "Too long",
        "Too many",
    ]
    .iter()
    .any(|prefix| message.starts_with(prefix))
        || message.contains(" in body must be of type ")
        || message.ends_with("must not be null")
}

/// A failed CEL rule as the API server words it: by the rule's reason, an invalid value
/// quoted as the schema type of the field the rule sits on.
fn cel_cause(schema: &Value, error: kube::core::cel::ValidationError) -> (String, String) {
    let message = match error.reason.as_deref() {
        Some("FieldValueRequired") => format!("Required value: {}", error.message),
        Some("FieldValueForbidden") => format!("Forbidden: {}", error.message),
        Some("FieldValueDuplicate") => format!("Duplicate value: {}", error.message),
        _ => format!(
            "Invalid value: \"{}\": {}",
            schema_type_at(schema, &error.field_path).unwrap_or("object"),
            error.message
        ),
    };
    (error.field_path, message)
}

/// The `type` of the schema node at a field path like `spec.endpoints[0].ports`.
fn schema_type_at<'a>(schema: &'a Value, path: &str) -> Option<&'a str> {
    let mut node = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (field, indices) = match part.find('[') {
            Some(i) => (&part[..i], part[i..].matches('[').count()),
            None => (part, 0),
        };
        if !field.is_empty() {
            node = node
                .get("properties")
                .and_then(|p| p.get(field))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?;
        }
        for _ in 0..indices {
            node = node.get("items")?;
        }
    }
    node.get("type").and_then(Value::as_str)
}

fn remove_dotted(value: &mut Value, path: &str) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut node = value;
    for part in parts {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        node = match node.get_mut(field) {
            Some(n) => n,
            None => return,
        };
        if let Some(i) = index {
            node = match node.get_mut(i) {
                Some(n) => n,
                None => return,
            };
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(last);
    }
}

/// Structural pruning: drops fields the schema does not declare (recording them).
fn prune(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>, root: bool) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
        && schema.get("properties").is_none()
    {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (properties.and_then(|p| p.get(&key)), additional) {
                    (Some(child), _) | (None, Some(child)) => {
                        if let Some(v) = map.get_mut(&key) {
                            prune(child, v, &child_path, unknown, false);
                        }
                    }
                    (None, None)
                        if preserve || properties.is_none() && schema.get("type").is_none() => {}
                    (None, None) => {
                        map.remove(&key);
                        unknown.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), unknown, false);
                }
            }
        }
        _ => {}
    }
}

pub(super) fn on_create_defaults(ty: &ResourceType, body: &mut Value) {
    match ty.plural.as_str() {
        "namespaces" => {
            body["status"] = json!({"phase": "Active"});
            body["spec"] = json!({"finalizers": ["kubernetes"]});
            body["metadata"]["labels"]["kubernetes.io/metadata.name"] =
                body["metadata"]["name"].clone();
        }
        "pods" => {
            body["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            let spec = &mut body["spec"];
            if spec["restartPolicy"].is_null() {
                spec["restartPolicy"] = json!("Always");
            }
            if spec["serviceAccountName"].is_null() {
                spec["serviceAccountName"] = json!("default");
            }
            for list in ["initContainers", "containers"] {
                for c in spec[list].as_array_mut().into_iter().flatten() {
                    if c["terminationMessagePath"].is_null() {
                        c["terminationMessagePath"] = json!("/dev/termination-log");
                    }
                    if c["terminationMessagePolicy"].is_null() {
                        c["terminationMessagePolicy"] = json!("File");
                    }
                    if c["imagePullPolicy"].is_null() {
                        c["imagePullPolicy"] = json!("IfNotPresent");
                    }
                }
            }
        }
        "jobs" => {
            let spec = &mut body["spec"];
            for (key, default) in [
                ("backoffLimit", json!(6)),
                ("completions", json!(1)),
                ("parallelism", json!(1)),
                ("completionMode", json!("NonIndexed")),
                ("suspend", json!(false)),
            ] {
                if spec[key].is_null() {
                    spec[key] = default;
                }
            }
            let uid = body["metadata"]["uid"].clone();
            let name = body["metadata"]["name"].clone();
            if body["spec"]["selector"].is_null() {
                body["spec"]["selector"] =
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
            }
            let labels = &mut body["spec"]["template"]["metadata"]["labels"];
            labels["batch.kubernetes.io/controller-uid"] = uid.clone();
            labels["batch.kubernetes.io/job-name"] = name.clone();
            labels["controller-uid"] = uid;
            labels["job-name"] = name;
            if body["spec"]["template"]["spec"]["restartPolicy"].is_null() {
                body["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
            }
            body["status"] = json!({});
        }
        _ => {}
    }
}

pub(super) fn crd_status(crd: &Value) -> Value {
    let time = now();
    json!({
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": crd["spec"]["versions"].as_array().into_iter().flatten().filter(|v| v["storage"] == json!(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": time},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": time},
        ],
    })
}
