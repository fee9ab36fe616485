//! The `netreach.dev/v1alpha1` API: kinds, shared endpoint types, conditions, and validation of
//! raw objects against the same schema (OpenAPI and CEL) the API server enforces.

pub mod check;
pub mod conditions;
pub mod duration;
pub mod endpoint;
pub mod limits;
pub mod load;
pub mod openapi;
pub mod profile;
pub mod result;
pub mod source;
pub mod wire;

use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde_json::Value;

pub use check::{EgressCheck, EgressCheckSpec, EgressCheckStatus};
pub use duration::SpecDuration;
pub use endpoint::{Endpoint, PortSpec, Protocol, TlsExpectation, TlsMode};
pub use openapi::FieldError;
pub use profile::{
    ConnectivityProfile, ConnectivityProfileSpec, ConnectivityProfileStatus, Flavor,
};

pub const GROUP: &str = "netreach.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "netreach.dev/v1alpha1";

/// The kinds this API defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ConnectivityProfile,
    EgressCheck,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::ConnectivityProfile, Kind::EgressCheck];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConnectivityProfile => "ConnectivityProfile",
            Kind::EgressCheck => "EgressCheck",
        }
    }

    pub fn from_name(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    pub fn crd(self) -> CustomResourceDefinition {
        match self {
            Kind::ConnectivityProfile => ConnectivityProfile::crd(),
            Kind::EgressCheck => EgressCheck::crd(),
        }
    }

    /// `connectivityprofiles.netreach.dev`
    pub fn crd_name(self) -> String {
        self.crd().metadata.name.unwrap_or_default()
    }

    fn schemas(self) -> &'static (Value, CompiledSchema) {
        static PROFILE: OnceLock<(Value, CompiledSchema)> = OnceLock::new();
        static CHECK: OnceLock<(Value, CompiledSchema)> = OnceLock::new();
        let cell = match self {
            Kind::ConnectivityProfile => &PROFILE,
            Kind::EgressCheck => &CHECK,
        };
        cell.get_or_init(|| {
            let schema = self
                .crd()
                .spec
                .versions
                .into_iter()
                .find_map(|v| v.schema.and_then(|s| s.open_api_v3_schema))
                .map(|s| serde_json::to_value(s).expect("schema serializes"))
                .expect("derived CRDs carry a schema");
            let compiled = compile_schema(&schema);
            (schema, compiled)
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Both CRDs, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    Kind::ALL.into_iter().map(Kind::crd).collect()
}

/// The value at a field path as errors write it (`spec.endpoints[2].host`).
fn value_at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut value = object;
    for part in path.split('.') {
        let (field, indices) = part.split_once('[').unwrap_or((part, ""));
        if !field.is_empty() {
            value = value.get(field)?;
        }
        for index in indices.split('[').filter(|i| !i.is_empty()) {
            value = value.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(value)
}

/// Checks a whole object of `kind` (apiVersion, kind, metadata, spec) the way the API server
/// would admit it: OpenAPI structure first, then the CEL rules when the structure is sound.
pub fn validate_object(kind: Kind, object: &Value) -> Vec<FieldError> {
    let (schema, compiled) = kind.schemas();
    let mut errors = openapi::check(schema, object, "");
    // Host names fail a regex; say in words what is wrong with them.
    let host_mismatch = format!("should match '{}'", endpoint::HOST_PATTERN);
    for error in &mut errors {
        if error.message.ends_with(&host_mismatch)
            && let Some(text) = value_at(object, &error.path).and_then(Value::as_str)
        {
            error.message = format!(
                "Invalid value: \"{}\": {}",
                openapi::shown(text),
                endpoint::host_name_problem(text)
            );
        }
    }
    if errors.is_empty()
        && let Err(cel_errors) = Validator::new().validate_compiled(compiled, object, None)
    {
        errors.extend(cel_errors.into_vec().into_iter().map(|e| FieldError {
            path: e.field_path.clone(),
            message: format!("Invalid value: {}", e.message),
        }));
    }
    errors
}
