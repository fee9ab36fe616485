//! Server-side printing: `meta.k8s.io/v1` Tables from CRD printer columns (or Name and Age
//! for built-ins), with the JSONPath subset printer columns use.

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// Evaluates a printer-column JSONPath: `.a.b`, `.a[0]`, `.a[?(@.k=="v")].b`.
pub fn json_path<'v>(value: &'v Value, path: &str) -> Vec<&'v Value> {
    let mut current = vec![value];
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let field = &after[..end];
            current = current.into_iter().filter_map(|v| v.get(field)).collect();
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let Some(end) = after.find(']') else {
                return Vec::new();
            };
            let inner = &after[..end];
            rest = &after[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (key, wanted) = match filter.split_once("==") {
                    Some((k, v)) => (k.trim(), v.trim().trim_matches(['"', '\''])),
                    None => return Vec::new(),
                };
                current = current
                    .into_iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .filter(|item| match &item[key] {
                        Value::String(s) => s == wanted,
                        other => serde_json::from_str::<Value>(wanted).is_ok_and(|w| w == *other),
                    })
                    .collect();
            } else if inner == "*" {
                current = current
                    .into_iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .collect();
            } else if let Ok(index) = inner.parse::<usize>() {
                current = current.into_iter().filter_map(|v| v.get(index)).collect();
            } else {
                return Vec::new();
            }
        } else {
            return Vec::new();
        }
    }
    current
}

/// `5s`, `3m`, `2h`, `4d` as kubectl shows ages.
pub fn human_age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<invalid>".into();
    };
    let seconds = k8s_openapi::jiff::Timestamp::now().as_second() - then.as_second();
    match seconds {
        s if s < 0 => "0s".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn cell(value: Option<&Value>, column_type: &str) -> Value {
    match (value, column_type) {
        (None | Some(Value::Null), _) => Value::Null,
        (Some(Value::String(s)), "date") => Value::String(human_age(s)),
        (Some(v), _) => v.clone(),
    }
}

fn columns(ty: &ResourceType) -> Vec<(String, String, String, String)> {
    let mut columns = vec![(
        "Name".to_owned(),
        "string".to_owned(),
        ".metadata.name".to_owned(),
        "Name must be unique within a namespace.".to_owned(),
    )];
    match &ty.crd {
        Some(crd) if !crd.printer_columns.is_empty() => {
            for c in &crd.printer_columns {
                columns.push((
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    c["type"].as_str().unwrap_or("string").to_owned(),
                    c["jsonPath"].as_str().unwrap_or_default().to_owned(),
                    c["description"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        _ => columns.push((
            "Age".into(),
            "date".into(),
            ".metadata.creationTimestamp".into(),
            "CreationTimestamp is when this object was created.".into(),
        )),
    }
    columns
}

/// A Table of `objects`; `include` is the includeObject parameter (None, Metadata, Object).
pub fn table(ty: &ResourceType, objects: &[Value], resource_version: &str, include: &str) -> Value {
    let columns = columns(ty);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|(name, kind, _, description)| {
            let format = if name == "Name" { "name" } else { "" };
            json!({"name": name, "type": if kind == "date" { "string" } else { kind.as_str() }, "format": format, "description": description, "priority": 0})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let cells: Vec<Value> = columns
                .iter()
                .map(|(_, kind, path, _)| cell(json_path(object, path).first().copied(), kind))
                .collect();
            let mut row = json!({"cells": cells});
            match include {
                "None" => {}
                "Object" => row["object"] = object.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": object["metadata"],
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths_resolve() {
        let object = json!({
            "status": {
                "conditions": [{"type": "Reachable", "status": "False"}, {"type": "Ready", "status": "True"}],
                "summary": {"passed": 3},
                "list": [1, 2]
            }
        });
        assert_eq!(
            json_path(&object, ".status.conditions[?(@.type==\"Ready\")].status"),
            [&json!("True")]
        );
        assert_eq!(json_path(&object, ".status.summary.passed"), [&json!(3)]);
        assert_eq!(json_path(&object, ".status.list[1]"), [&json!(2)]);
        assert!(json_path(&object, ".status.missing").is_empty());
    }
}
