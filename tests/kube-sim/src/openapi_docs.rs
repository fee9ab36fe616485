//! OpenAPI v3 documents, one per group-version, built from the k8s-openapi types of built-in
//! kinds and from CRD schemas: what `kubectl apply` (field validation support), `explain` and
//! other clients read.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::api::Api;
use crate::registry::ResourceType;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The index: one entry per group-version, its URL carrying a hash that changes with the types.
pub fn index(api: &Api) -> Value {
    let st = api.lock();
    let gvs: BTreeSet<(String, String)> = st
        .registry
        .all()
        .map(|t| (t.group.clone(), t.version.clone()))
        .collect();
    let mut paths = Map::new();
    for (group, version) in gvs {
        let path = gv_path(&group, &version);
        let hash: u64 = st
            .registry
            .all()
            .filter(|t| t.group == group && t.version == version)
            .map(|t| {
                t.crd
                    .as_ref()
                    .map(|c| c.schema.to_string().len() as u64)
                    .unwrap_or(1)
                    + t.plural.len() as u64
            })
            .sum();
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash:016X}")}),
        );
    }
    json!({"paths": paths})
}

fn definition_name(ty: &ResourceType) -> String {
    let reversed: Vec<&str> = ty.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), ty.version, ty.kind)
}

fn parameter(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(ty: &ResourceType, action: &str, params: &[&str], schema_ref: &str) -> Value {
    json!({
        "operationId": format!("{action}{}", ty.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": ty.group, "version": ty.version, "kind": ty.kind},
        "parameters": params.iter().map(|p| parameter(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
    })
}

/// The document of one group-version (`api/v1`, `apis/netreach.dev/v1alpha1`).
pub fn document(api: &Api, gv: &str) -> Option<Value> {
    let st = api.lock();
    let types: Vec<_> = st
        .registry
        .all()
        .filter(|t| gv_path(&t.group, &t.version) == gv)
        .cloned()
        .collect();
    drop(st);
    if types.is_empty() {
        return None;
    }
    let mut generator = SchemaSettings::openapi3().into_generator();
    let meta_ref = generator.subschema_for::<ObjectMeta>();
    let mut named: Vec<(String, &ResourceType, Option<Value>)> = Vec::new();
    for ty in &types {
        match (&ty.crd, ty.schema) {
            (Some(crd), _) => {
                let mut schema = crd.schema.clone();
                schema["properties"]["metadata"] =
                    serde_json::to_value(&meta_ref).expect("schemas serialize");
                named.push((definition_name(ty), ty, Some(schema)));
            }
            (None, Some(schema_fn)) => {
                let reference =
                    serde_json::to_value(schema_fn(&mut generator)).expect("schemas serialize");
                let name = reference["$ref"]
                    .as_str()
                    .unwrap_or_default()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                named.push((name, ty, None));
            }
            (None, None) => {}
        }
    }
    let mut schemas: Map<String, Value> = generator
        .take_definitions(true)
        .into_iter()
        .map(|(name, schema)| {
            (
                name,
                serde_json::to_value(schema).expect("schemas serialize"),
            )
        })
        .collect();
    let mut paths = Map::new();
    for (name, ty, crd_schema) in named {
        if let Some(schema) = crd_schema {
            schemas.insert(name.clone(), schema);
        }
        if let Some(definition) = schemas.get_mut(&name) {
            definition["x-kubernetes-group-version-kind"] =
                json!([{"group": ty.group, "version": ty.version, "kind": ty.kind}]);
        }
        let schema_ref = format!("#/components/schemas/{name}");
        let base = if ty.group.is_empty() {
            format!("/api/{}", ty.version)
        } else {
            format!("/apis/{}/{}", ty.group, ty.version)
        };
        let scope = if ty.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let collection = format!("{base}{scope}/{}", ty.plural);
        let item = format!("{collection}/{{name}}");
        let writes = ["dryRun", "fieldManager", "fieldValidation"];
        paths.insert(
            collection,
            json!({
                "get": operation(ty, "list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch"], &schema_ref),
                "post": operation(ty, "post", &writes, &schema_ref),
                "delete": operation(ty, "deletecollection", &["labelSelector", "fieldSelector"], &schema_ref),
            }),
        );
        paths.insert(
            item.clone(),
            json!({
                "get": operation(ty, "get", &[], &schema_ref),
                "put": operation(ty, "put", &writes, &schema_ref),
                "patch": operation(ty, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"], &schema_ref),
                "delete": operation(ty, "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"], &schema_ref),
            }),
        );
        if ty.has_status {
            paths.insert(
                format!("{item}/status"),
                json!({
                    "get": operation(ty, "get", &[], &schema_ref),
                    "put": operation(ty, "put", &writes, &schema_ref),
                    "patch": operation(ty, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"], &schema_ref),
                }),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
