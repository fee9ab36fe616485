//! Patches and server-side apply: JSON merge patch, JSON patch, strategic merge patch (the
//! directives kubectl sends), and apply with field managers, ownership and conflicts.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// How a list merges: replaced whole, as a set of scalars, or item by item on key fields.
#[derive(Clone, Debug, PartialEq)]
pub enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// Where in the schema a value sits, to learn list kinds: a CRD schema node, or the built-in
/// field-name conventions.
#[derive(Clone, Copy)]
pub enum Shape<'a> {
    Schema(Option<&'a Value>),
    Builtin,
}

impl<'a> Shape<'a> {
    pub fn child(self, field: &str) -> Shape<'a> {
        match self {
            Shape::Schema(node) => {
                let node = node.and_then(|n| {
                    n.get("properties")
                        .and_then(|p| p.get(field))
                        .or_else(|| n.get("additionalProperties").filter(|a| a.is_object()))
                });
                Shape::Schema(node)
            }
            Shape::Builtin => Shape::Builtin,
        }
    }

    pub fn items(self) -> Shape<'a> {
        match self {
            Shape::Schema(node) => Shape::Schema(node.and_then(|n| n.get("items"))),
            Shape::Builtin => Shape::Builtin,
        }
    }

    /// The kind of the list stored in `field` (whose value is `list`) under this shape.
    pub fn list_kind(self, field: &str, list: &[Value]) -> ListKind {
        match self {
            Shape::Schema(node) => {
                // Metadata is shared by every kind; its lists follow the built-in rules.
                if node.is_none() && matches!(field, "finalizers" | "ownerReferences") {
                    return Shape::Builtin.list_kind(field, list);
                }
                let node = node
                    .and_then(|n| n.get("properties"))
                    .and_then(|p| p.get(field));
                match node
                    .and_then(|n| n.get("x-kubernetes-list-type"))
                    .and_then(Value::as_str)
                {
                    Some("set") => ListKind::Set,
                    Some("map") => ListKind::Map(
                        node.and_then(|n| n.get("x-kubernetes-list-map-keys"))
                            .and_then(Value::as_array)
                            .map(|keys| {
                                keys.iter()
                                    .filter_map(|k| k.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    _ => ListKind::Atomic,
                }
            }
            Shape::Builtin => match field {
                "containers"
                | "initContainers"
                | "ephemeralContainers"
                | "volumes"
                | "env"
                | "imagePullSecrets" => ListKind::Map(vec!["name".into()]),
                "volumeMounts" => ListKind::Map(vec!["mountPath".into()]),
                "ports" if list.iter().any(|p| p.get("containerPort").is_some()) => {
                    ListKind::Map(vec!["containerPort".into()])
                }
                "ports" => ListKind::Map(vec!["port".into()]),
                "conditions" => ListKind::Map(vec!["type".into()]),
                "ownerReferences" => ListKind::Map(vec!["uid".into()]),
                "finalizers" => ListKind::Set,
                _ => ListKind::Atomic,
            },
        }
    }
}

/// Shape for a whole object: metadata always follows built-in rules.
fn field_shape<'a>(shape: Shape<'a>, field: &str, at_root: bool) -> Shape<'a> {
    if at_root && field == "metadata" {
        Shape::Schema(None)
    } else {
        shape.child(field)
    }
}

fn item_key(item: &Value, keys: &[String]) -> String {
    let mut map = Map::new();
    for key in keys {
        if let Some(v) = item.get(key) {
            map.insert(key.clone(), v.clone());
        }
    }
    format!("k:{}", Value::Object(map))
}

fn find_item<'v>(list: &'v [Value], element: &str, keys: &[String]) -> Option<&'v Value> {
    list.iter().find(|item| item_key(item, keys) == element)
}

/// A field path as managedFields write it: `f:spec`, `k:{"name":"a"}`, `v:"x"`, `.`.
pub type FieldPath = Vec<String>;

/// Fields whose ownership is never tracked.
fn untracked(path: &[String]) -> bool {
    matches!(
        path.first().map(String::as_str),
        Some("f:apiVersion" | "f:kind")
    ) || (path.first().map(String::as_str) == Some("f:metadata")
        && !matches!(
            path.get(1).map(String::as_str),
            Some("f:labels" | "f:annotations" | "f:finalizers" | "f:ownerReferences")
        ))
        || path.first().map(String::as_str) == Some("f:status") && path.len() == 1
}

/// The leaf field paths set in `value`.
pub fn field_paths(value: &Value, shape: Shape<'_>) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    collect_paths(value, shape, &mut Vec::new(), &mut out, true);
    out.retain(|p| !untracked(p));
    out
}

fn collect_paths(
    value: &Value,
    shape: Shape<'_>,
    prefix: &mut FieldPath,
    out: &mut BTreeSet<FieldPath>,
    at_root: bool,
) {
    let Value::Object(fields) = value else {
        out.insert(prefix.clone());
        return;
    };
    if fields.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (key, child) in fields {
        let child_shape = field_shape(shape, key, at_root);
        prefix.push(format!("f:{key}"));
        match child {
            Value::Array(list) => match shape.list_kind(key, list) {
                ListKind::Atomic => {
                    out.insert(prefix.clone());
                }
                ListKind::Set => {
                    for item in list {
                        prefix.push(format!("v:{item}"));
                        out.insert(prefix.clone());
                        prefix.pop();
                    }
                }
                ListKind::Map(keys) => {
                    for item in list {
                        prefix.push(item_key(item, &keys));
                        let mut with_dot = prefix.clone();
                        with_dot.push(".".into());
                        out.insert(with_dot);
                        collect_paths(item, child_shape.items(), prefix, out, false);
                        prefix.pop();
                    }
                }
            },
            Value::Object(_) => collect_paths(child, child_shape, prefix, out, false),
            _ => {
                out.insert(prefix.clone());
            }
        }
        prefix.pop();
    }
}

/// The key fields named by a `k:{…}` path element.
fn element_keys(element: &str) -> Option<Vec<String>> {
    let json = element.strip_prefix("k:")?;
    serde_json::from_str::<Map<String, Value>>(json)
        .ok()
        .map(|m| m.keys().cloned().collect())
}

/// The value at a field path.
pub fn value_at<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut node = value;
    for element in path {
        if element == "." {
            return Some(node);
        }
        if let Some(field) = element.strip_prefix("f:") {
            node = node.get(field)?;
        } else if let Some(wanted) = element.strip_prefix("v:") {
            let wanted: Value = serde_json::from_str(wanted).ok()?;
            return node.as_array()?.iter().find(|v| **v == wanted);
        } else if let Some(keys) = element_keys(element) {
            node = find_item(node.as_array()?, element, &keys)?;
        }
    }
    Some(node)
}

/// Removes the value at a field path (an item of a list, or a field).
pub fn remove_at(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if last == "." {
        remove_at(value, parents);
        return;
    }
    let mut node = value;
    for element in parents {
        let next = if let Some(field) = element.strip_prefix("f:") {
            node.get_mut(field)
        } else if let Some(keys) = element_keys(element) {
            node.as_array_mut().and_then(|list| {
                list.iter_mut()
                    .find(|item| item_key(item, &keys) == *element)
            })
        } else {
            None
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = node.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(wanted) = last.strip_prefix("v:") {
        if let Some(list) = node.as_array_mut() {
            let wanted: Value = serde_json::from_str(wanted).unwrap_or(Value::Null);
            list.retain(|v| *v != wanted);
        }
    } else if let Some(keys) = element_keys(last)
        && let Some(list) = node.as_array_mut()
    {
        list.retain(|item| item_key(item, &keys) != *last);
    }
}

/// Deep merge of an applied configuration into the live object.
pub fn merge_applied(live: &mut Value, applied: &Value, shape: Shape<'_>, at_root: bool) {
    let (Value::Object(live_fields), Value::Object(applied_fields)) = (&mut *live, applied) else {
        *live = applied.clone();
        return;
    };
    for (key, value) in applied_fields {
        let child_shape = field_shape(shape, key, at_root);
        match (live_fields.get_mut(key), value) {
            (Some(existing @ Value::Object(_)), Value::Object(_)) => {
                merge_applied(existing, value, child_shape, false)
            }
            (Some(Value::Array(existing)), Value::Array(items)) => {
                match shape.list_kind(key, items) {
                    ListKind::Atomic => *existing = items.clone(),
                    ListKind::Set => {
                        for item in items {
                            if !existing.contains(item) {
                                existing.push(item.clone());
                            }
                        }
                    }
                    ListKind::Map(keys) => {
                        for item in items {
                            let wanted = item_key(item, &keys);
                            match existing.iter_mut().find(|e| item_key(e, &keys) == wanted) {
                                Some(slot) => merge_applied(slot, item, child_shape.items(), false),
                                None => existing.push(item.clone()),
                            }
                        }
                    }
                }
            }
            _ => {
                live_fields.insert(key.clone(), value.clone());
            }
        }
    }
}

/// FieldsV1 JSON from a set of paths.
pub fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for element in path {
            node = node
                .entry(element.clone())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("field trees hold objects");
        }
    }
    Value::Object(root)
}

/// Paths from FieldsV1 JSON.
pub fn from_fields_v1(fields: &Value) -> BTreeSet<FieldPath> {
    fn walk(node: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        match node.as_object() {
            Some(map) if !map.is_empty() => {
                for (key, child) in map {
                    prefix.push(key.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

/// One managedFields entry.
#[derive(Clone, Debug)]
pub struct ManagedEntry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: BTreeSet<FieldPath>,
}

pub fn read_managed(object: &Value) -> Vec<ManagedEntry> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| ManagedEntry {
                    manager: e["manager"].as_str().unwrap_or_default().to_owned(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_owned(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().to_owned(),
                    time: e["time"].as_str().unwrap_or_default().to_owned(),
                    subresource: e["subresource"].as_str().map(str::to_owned),
                    fields: from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_managed(object: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut entry = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(sub) = &e.subresource {
                entry["subresource"] = Value::String(sub.clone());
            }
            entry
        })
        .collect();
    if list.is_empty() {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
    } else {
        object["metadata"]["managedFields"] = Value::Array(list);
    }
}

/// A field another manager owns with a different value.
#[derive(Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub path: String,
}

fn render_path(path: &[String]) -> String {
    path.iter()
        .map(|e| {
            if let Some(f) = e.strip_prefix("f:") {
                format!(".{f}")
            } else if let Some(k) = e.strip_prefix("k:") {
                format!("[{k}]")
            } else if let Some(v) = e.strip_prefix("v:") {
                format!("[={v}]")
            } else {
                String::new()
            }
        })
        .collect()
}

/// Who applies, and how.
pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub force: bool,
    pub api_version: &'a str,
    pub now: &'a str,
    pub subresource: Option<&'a str>,
}

/// Server-side apply of `applied` onto `live` (an empty object when creating). Returns the
/// new object with managedFields updated, or the conflicts.
pub fn apply(
    live: &Value,
    applied: &Value,
    shape: Shape<'_>,
    request: &ApplyRequest<'_>,
) -> Result<Value, Vec<Conflict>> {
    let mut managed = read_managed(live);
    let mine = |e: &ManagedEntry| {
        e.manager == request.manager
            && e.operation == "Apply"
            && e.subresource.as_deref() == request.subresource
    };
    let applied_paths = field_paths(applied, shape);
    let mut conflicts = Vec::new();
    for entry in managed.iter().filter(|e| !mine(e)) {
        for path in applied_paths.intersection(&entry.fields) {
            if path.last().map(String::as_str) == Some(".") {
                continue;
            }
            if value_at(live, path) != value_at(applied, path) {
                conflicts.push(Conflict {
                    manager: entry.manager.clone(),
                    path: render_path(path),
                });
            }
        }
    }
    if !conflicts.is_empty() && !request.force {
        return Err(conflicts);
    }
    let previous: BTreeSet<FieldPath> = managed
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.clone())
        .collect();
    let mut result = live.clone();
    merge_applied(&mut result, applied, shape, true);
    // Fields this manager applied before and no longer does go away, unless someone else owns them.
    let others: BTreeSet<FieldPath> = managed
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.fields.clone())
        .collect();
    for path in previous.difference(&applied_paths) {
        if !others.contains(path) {
            remove_at(&mut result, path);
            // A struct left empty by the removal goes too, unless someone still sets it.
            for len in (1..path.len()).rev() {
                let parent = &path[..len];
                let still_set = applied_paths
                    .iter()
                    .chain(others.iter())
                    .any(|p| p.starts_with(parent));
                let empty = value_at(&result, parent)
                    .is_some_and(|v| v.as_object().is_some_and(|m| m.is_empty()));
                if still_set || !empty {
                    break;
                }
                remove_at(&mut result, parent);
            }
        }
    }
    // A forced or identical value shares or takes ownership: others lose what changed.
    for entry in managed.iter_mut().filter(|e| !mine(e)) {
        entry
            .fields
            .retain(|p| !applied_paths.contains(p) || value_at(live, p) == value_at(applied, p));
    }
    managed.retain(|e| !mine(e));
    managed.push(ManagedEntry {
        manager: request.manager.to_owned(),
        operation: "Apply".into(),
        api_version: request.api_version.to_owned(),
        time: request.now.to_owned(),
        subresource: request.subresource.map(str::to_owned),
        fields: applied_paths,
    });
    write_managed(&mut result, &managed);
    Ok(result)
}

/// Records that `manager` changed fields with an Update (PUT or patch): it owns what it
/// changed, and others stop owning those fields.
pub fn track_update(
    old: &Value,
    new: &mut Value,
    shape: Shape<'_>,
    manager: &str,
    api_version: &str,
    now: &str,
    subresource: Option<&str>,
) {
    let mut managed = read_managed(old);
    let old_paths = field_paths(old, shape);
    let new_paths = field_paths(new, shape);
    let changed: BTreeSet<FieldPath> = new_paths
        .iter()
        .filter(|p| !old_paths.contains(*p) || value_at(old, p) != value_at(new, p))
        .cloned()
        .collect();
    for entry in &mut managed {
        entry
            .fields
            .retain(|p| new_paths.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        match managed.iter_mut().find(|e| {
            e.manager == manager
                && e.operation == "Update"
                && e.subresource.as_deref() == subresource
        }) {
            Some(entry) => {
                entry.fields.extend(changed);
                entry.time = now.to_owned();
            }
            None => managed.push(ManagedEntry {
                manager: manager.to_owned(),
                operation: "Update".into(),
                api_version: api_version.to_owned(),
                time: now.to_owned(),
                subresource: subresource.map(str::to_owned),
                fields: changed,
            }),
        }
    }
    write_managed(new, &managed);
}

/// Strategic merge patch, with the directives kubectl sends (`$patch`, `$retainKeys`,
/// `$setElementOrder/…`, `$deleteFromPrimitiveList/…`).
pub fn strategic_merge(target: &mut Value, patch: &Value, shape: Shape<'_>, at_root: bool) {
    let Value::Object(patch_fields) = patch else {
        *target = patch.clone();
        return;
    };
    if patch_fields.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        strip_directives(&mut replacement);
        *target = replacement;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> = patch_fields
        .get("$retainKeys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        });
    let target_fields = target.as_object_mut().expect("made an object above");
    for (key, value) in patch_fields {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target_fields.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let child_shape = field_shape(shape, key, at_root);
        if value.is_null() {
            target_fields.remove(key);
            continue;
        }
        match value {
            Value::Object(_) => {
                let slot = target_fields.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value, child_shape, false);
            }
            Value::Array(items) => match shape.list_kind(key, items) {
                ListKind::Map(keys) => {
                    let slot = target_fields
                        .entry(key.clone())
                        .or_insert_with(|| Value::Array(vec![]));
                    if !slot.is_array() {
                        *slot = Value::Array(vec![]);
                    }
                    let existing = slot.as_array_mut().expect("made an array above");
                    for item in items {
                        let wanted = item_key(item, &keys);
                        let directive = item.get("$patch").and_then(Value::as_str);
                        let position = existing.iter().position(|e| item_key(e, &keys) == wanted);
                        match (directive, position) {
                            (Some("delete"), Some(i)) => {
                                existing.remove(i);
                            }
                            (Some("delete"), None) => {}
                            (_, Some(i)) => {
                                strategic_merge(&mut existing[i], item, child_shape.items(), false)
                            }
                            (_, None) => {
                                let mut fresh = item.clone();
                                strip_directives(&mut fresh);
                                existing.push(fresh);
                            }
                        }
                    }
                }
                _ => {
                    let mut fresh = value.clone();
                    strip_directives(&mut fresh);
                    target_fields.insert(key.clone(), fresh);
                }
            },
            _ => {
                target_fields.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(keep) = retain {
        target_fields.retain(|k, _| keep.contains(k));
    }
}

fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(list) => list.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// Conflicts as the API server words them.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(&c.manager).or_default().push(&c.path);
    }
    let parts: Vec<String> = by_manager
        .iter()
        .flat_map(|(m, paths)| {
            paths
                .iter()
                .map(move |p| format!("conflict with \"{m}\": {p}"))
        })
        .collect();
    format!(
        "Apply failed with {} conflict{}: {}",
        conflicts.len(),
        if conflicts.len() == 1 { "" } else { "s" },
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(manager: &'a str, force: bool) -> ApplyRequest<'a> {
        ApplyRequest {
            manager,
            force,
            api_version: "v1",
            now: "2026-01-01T00:00:00Z",
            subresource: None,
        }
    }

    #[test]
    fn apply_creates_merges_and_removes_fields_it_no_longer_applies() {
        let empty = json!({"metadata": {"name": "a"}});
        let first = apply(
            &empty,
            &json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"a": "1", "b": "2"}}),
            Shape::Builtin,
            &request("op", false),
        )
        .unwrap();
        assert_eq!(first["data"], json!({"a": "1", "b": "2"}));
        let second = apply(
            &first,
            &json!({"metadata": {"name": "a"}, "data": {"a": "1"}}),
            Shape::Builtin,
            &request("op", false),
        )
        .unwrap();
        assert_eq!(second["data"], json!({"a": "1"}));
        assert!(second["metadata"]["labels"].get("x").is_none());
        assert_eq!(second["metadata"]["managedFields"][0]["manager"], "op");
    }

    #[test]
    fn a_struct_emptied_by_apply_is_removed() {
        let empty = json!({"metadata": {"name": "a"}});
        let first = apply(
            &empty,
            &json!({"status": {"current": {"job": "x"}, "kept": 1}}),
            Shape::Builtin,
            &request("op", false),
        )
        .unwrap();
        let second = apply(
            &first,
            &json!({"status": {"kept": 1}}),
            Shape::Builtin,
            &request("op", false),
        )
        .unwrap();
        assert_eq!(second["status"], json!({"kept": 1}));
    }

    #[test]
    fn a_second_manager_conflicts_unless_forced() {
        let empty = json!({"metadata": {"name": "a"}});
        let owned = apply(
            &empty,
            &json!({"data": {"a": "1"}}),
            Shape::Builtin,
            &request("one", false),
        )
        .unwrap();
        let conflicts = apply(
            &owned,
            &json!({"data": {"a": "2"}}),
            Shape::Builtin,
            &request("two", false),
        )
        .unwrap_err();
        assert_eq!(
            conflicts,
            vec![Conflict {
                manager: "one".into(),
                path: ".data.a".into()
            }]
        );
        // Same value: shared ownership, no conflict.
        assert!(
            apply(
                &owned,
                &json!({"data": {"a": "1"}}),
                Shape::Builtin,
                &request("two", false)
            )
            .is_ok()
        );
        let forced = apply(
            &owned,
            &json!({"data": {"a": "2"}}),
            Shape::Builtin,
            &request("two", true),
        )
        .unwrap();
        assert_eq!(forced["data"]["a"], "2");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(
            managers,
            ["two"],
            "the forced field moved to the new manager"
        );
    }

    #[test]
    fn map_lists_merge_by_key() {
        let schema = json!({"properties": {"spec": {"properties": {"items": {
            "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object"}
        }}}}});
        let live = json!({"spec": {"items": [{"name": "a", "v": 1}, {"name": "b", "v": 2}]}});
        let mut merged = live.clone();
        merge_applied(
            &mut merged,
            &json!({"spec": {"items": [{"name": "b", "v": 3}]}}),
            Shape::Schema(Some(&schema)),
            true,
        );
        assert_eq!(
            merged["spec"]["items"],
            json!([{"name": "a", "v": 1}, {"name": "b", "v": 3}])
        );
    }

    #[test]
    fn fields_v1_round_trips() {
        let value = json!({"metadata": {"labels": {"a": "b"}, "finalizers": ["x"]}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let paths = field_paths(&value, Shape::Builtin);
        assert_eq!(from_fields_v1(&to_fields_v1(&paths)), paths);
        assert!(paths.contains(&vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
            "f:image".into()
        ]));
        assert!(paths.contains(&vec![
            "f:metadata".into(),
            "f:finalizers".into(),
            "v:\"x\"".into()
        ]));
    }

    #[test]
    fn strategic_merge_follows_kubectl_directives() {
        let mut live = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}, "metadata": {"labels": {"x": "1", "y": "2"}}});
        let patch = json!({
            "metadata": {"labels": {"y": null}},
            "spec": {
                "$setElementOrder/containers": [{"name": "a"}],
                "containers": [{"name": "a", "image": "3"}, {"name": "b", "$patch": "delete"}]
            }
        });
        strategic_merge(&mut live, &patch, Shape::Builtin, true);
        assert_eq!(
            live["spec"]["containers"],
            json!([{"name": "a", "image": "3"}])
        );
        assert_eq!(live["metadata"]["labels"], json!({"x": "1"}));
    }
}
