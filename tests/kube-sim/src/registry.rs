//! The resource types the emulator serves: the built-in kinds it knows from k8s-openapi, and
//! the kinds registered by CustomResourceDefinitions.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use kube::core::cel::{CompiledSchema, compile_schema};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Checks a built-in object by decoding it into its k8s-openapi type; returns the fields the
/// type does not know (what a strict decoder would reject).
pub type TypedCheck = fn(&Value) -> Result<Vec<String>, String>;
/// The JSON schema of a built-in kind, for OpenAPI documents.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

/// How a CRD-backed type is validated and shown.
pub struct CrdInfo {
    pub crd_name: String,
    pub schema: Value,
    pub compiled: CompiledSchema,
    pub printer_columns: Vec<Value>,
    /// `selectableFields` of the served version, as field labels (`spec.color`).
    pub selectable_fields: Vec<String>,
    /// Whether the schema has any `x-kubernetes-validations` (CEL rules).
    pub has_rules: bool,
}

fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => {
            map.contains_key("x-kubernetes-validations") || map.values().any(has_rules)
        }
        Value::Array(items) => items.iter().any(has_rules),
        _ => false,
    }
}

impl std::fmt::Debug for CrdInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdInfo")
            .field("crd_name", &self.crd_name)
            .finish()
    }
}

#[derive(Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub has_status: bool,
    /// Extra subresources besides status (`log` for pods).
    pub extra_subresources: Vec<&'static str>,
    pub crd: Option<CrdInfo>,
    pub typed: Option<TypedCheck>,
    pub schema: Option<SchemaFn>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or `plural` for the core group): how the store and errors name it.
    pub fn key(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Kinds whose `metadata.generation` tracks spec changes.
    pub fn tracks_generation(&self) -> bool {
        self.crd.is_some() || self.has_status
    }
}

fn check_typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Vec<String>, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let round_trip = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(value, &round_trip, "", &mut unknown);
    Ok(unknown)
}

/// Fields present in `input` that did not survive a typed round trip.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(other) => unknown_fields(value, other, &child, out),
                    // An explicit null or empty value the type drops is not unknown.
                    None if value.is_null()
                        || value == &Value::Object(Default::default())
                        || value == &Value::Array(vec![]) => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn schema_of<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    generator.subschema_for::<T>()
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    all: bool,
    status: bool,
    typed: TypedCheck,
    schema: SchemaFn,
}

macro_rules! builtin {
    ($group:expr, $version:expr, $ty:ty, $plural:expr, $namespaced:expr, $short:expr, $all:expr, $status:expr) => {
        Builtin {
            group: $group,
            version: $version,
            kind: <$ty as k8s_openapi::Resource>::KIND,
            plural: $plural,
            namespaced: $namespaced,
            short_names: $short,
            all: $all,
            status: $status,
            typed: check_typed::<$ty>,
            schema: schema_of::<$ty>,
        }
    };
}

fn builtins() -> Vec<Builtin> {
    vec![
        builtin!(
            "",
            "v1",
            api::core::v1::Namespace,
            "namespaces",
            false,
            &["ns"],
            false,
            true
        ),
        builtin!(
            "",
            "v1",
            api::core::v1::ConfigMap,
            "configmaps",
            true,
            &["cm"],
            false,
            false
        ),
        builtin!(
            "",
            "v1",
            api::core::v1::Secret,
            "secrets",
            true,
            &[],
            false,
            false
        ),
        builtin!(
            "",
            "v1",
            api::core::v1::ServiceAccount,
            "serviceaccounts",
            true,
            &["sa"],
            false,
            false
        ),
        builtin!(
            "",
            "v1",
            api::core::v1::Service,
            "services",
            true,
            &["svc"],
            true,
            true
        ),
        builtin!(
            "",
            "v1",
            api::core::v1::Pod,
            "pods",
            true,
            &["po"],
            true,
            true
        ),
        builtin!(
            "",
            "v1",
            api::core::v1::Event,
            "events",
            true,
            &["ev"],
            false,
            false
        ),
        builtin!(
            "events.k8s.io",
            "v1",
            api::events::v1::Event,
            "events",
            true,
            &["ev"],
            false,
            false
        ),
        builtin!(
            "batch",
            "v1",
            api::batch::v1::Job,
            "jobs",
            true,
            &[],
            true,
            true
        ),
        builtin!(
            "apps",
            "v1",
            api::apps::v1::Deployment,
            "deployments",
            true,
            &["deploy"],
            true,
            true
        ),
        builtin!(
            "",
            "v1",
            api::core::v1::Endpoints,
            "endpoints",
            true,
            &["ep"],
            false,
            false
        ),
        builtin!(
            "apps",
            "v1",
            api::apps::v1::ReplicaSet,
            "replicasets",
            true,
            &["rs"],
            true,
            true
        ),
        builtin!(
            "coordination.k8s.io",
            "v1",
            api::coordination::v1::Lease,
            "leases",
            true,
            &[],
            false,
            false
        ),
        builtin!(
            "networking.k8s.io",
            "v1",
            api::networking::v1::NetworkPolicy,
            "networkpolicies",
            true,
            &["netpol"],
            false,
            false
        ),
        builtin!(
            "policy",
            "v1",
            api::policy::v1::PodDisruptionBudget,
            "poddisruptionbudgets",
            true,
            &["pdb"],
            false,
            true
        ),
        builtin!(
            "rbac.authorization.k8s.io",
            "v1",
            api::rbac::v1::Role,
            "roles",
            true,
            &[],
            false,
            false
        ),
        builtin!(
            "rbac.authorization.k8s.io",
            "v1",
            api::rbac::v1::RoleBinding,
            "rolebindings",
            true,
            &[],
            false,
            false
        ),
        builtin!(
            "rbac.authorization.k8s.io",
            "v1",
            api::rbac::v1::ClusterRole,
            "clusterroles",
            false,
            &[],
            false,
            false
        ),
        builtin!(
            "rbac.authorization.k8s.io",
            "v1",
            api::rbac::v1::ClusterRoleBinding,
            "clusterrolebindings",
            false,
            &[],
            false,
            false
        ),
        builtin!(
            "apiextensions.k8s.io",
            "v1",
            apiext::CustomResourceDefinition,
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            false,
            true
        ),
    ]
}

/// All types served, by `plural.group` key.
#[derive(Default)]
pub struct Registry {
    types: BTreeMap<String, Arc<ResourceType>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut registry = Registry::default();
        for b in builtins() {
            let resource = ResourceType {
                group: b.group.into(),
                version: b.version.into(),
                kind: b.kind.into(),
                plural: b.plural.into(),
                singular: b.kind.to_ascii_lowercase(),
                namespaced: b.namespaced,
                short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
                categories: if b.all { vec!["all".into()] } else { vec![] },
                has_status: b.status,
                extra_subresources: if b.plural == "pods" {
                    vec!["log"]
                } else {
                    vec![]
                },
                crd: None,
                typed: Some(b.typed),
                schema: Some(b.schema),
            };
            registry.types.insert(resource.key(), Arc::new(resource));
        }
        registry
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        let key = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        self.types
            .get(&key)
            .filter(|t| t.version == version)
            .cloned()
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<ResourceType>> {
        self.types.get(key).cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.types.values()
    }

    /// Registers (or replaces) the types a CRD defines; returns the error the API server
    /// would give for a CRD it cannot serve.
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), String> {
        let crd: apiext::CustomResourceDefinition = serde_json::from_value(crd.clone())
            .map_err(|e| format!("invalid CustomResourceDefinition: {e}"))?;
        let spec = &crd.spec;
        let name = crd.metadata.name.clone().unwrap_or_default();
        let expected = format!("{}.{}", spec.names.plural, spec.group);
        if name != expected {
            return Err(format!(
                "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
            ));
        }
        let served: Vec<&apiext::CustomResourceDefinitionVersion> =
            spec.versions.iter().filter(|v| v.served).collect();
        // One served version is what the emulator supports; conversion between versions is not.
        let version = served
            .iter()
            .find(|v| v.storage)
            .or_else(|| served.first())
            .ok_or_else(|| "spec.versions: Invalid value: no served version".to_owned())?;
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(|s| serde_json::to_value(s).expect("schema serializes"))
            .ok_or_else(|| {
                format!(
                    "spec.versions[{}].schema.openAPIV3Schema: Required value",
                    version.name
                )
            })?;
        let compiled = compile_schema(&schema);
        if let Some(error) = compiled.compilation_errors().into_iter().next() {
            return Err(format!(
                "spec.validation.openAPIV3Schema: Invalid value: compilation failed: {error}"
            ));
        }
        let resource = ResourceType {
            group: spec.group.clone(),
            version: version.name.clone(),
            kind: spec.names.kind.clone(),
            plural: spec.names.plural.clone(),
            singular: spec
                .names
                .singular
                .clone()
                .unwrap_or_else(|| spec.names.kind.to_ascii_lowercase()),
            namespaced: spec.scope == "Namespaced",
            short_names: spec.names.short_names.clone().unwrap_or_default(),
            categories: spec.names.categories.clone().unwrap_or_default(),
            has_status: version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            extra_subresources: vec![],
            crd: Some(CrdInfo {
                has_rules: has_rules(&schema),
                crd_name: name,
                schema,
                compiled,
                printer_columns: version
                    .additional_printer_columns
                    .iter()
                    .flatten()
                    .map(|c| serde_json::to_value(c).expect("column serializes"))
                    .collect(),
                selectable_fields: version
                    .selectable_fields
                    .iter()
                    .flatten()
                    .map(|f| f.json_path.trim_start_matches('.').to_owned())
                    .collect(),
            }),
            typed: None,
            schema: None,
        };
        self.types.insert(resource.key(), Arc::new(resource));
        Ok(())
    }

    /// Forgets the types of a deleted CRD.
    pub fn unregister_crd(&mut self, crd_name: &str) {
        self.types
            .retain(|_, t| t.crd.as_ref().is_none_or(|c| c.crd_name != crd_name));
    }
}
