//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0` envelope around
//! a `runtime.Unknown`, decoded with the Kubernetes protobuf types of `k8s-pb` into the JSON the
//! rest of the emulator stores. kubectl's imperative commands and Helm's release storage send
//! these for built-in kinds; decoded are Namespace, ConfigMap, Secret, ServiceAccount, Job
//! (the pod template's common fields) and DeleteOptions. Anything else, or a pod template field not decoded here,
//! is refused with 415 naming what to send instead, never dropped silently.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

/// The object a protobuf body holds, as JSON; errors say why it cannot be decoded.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let raw = body
        .strip_prefix(MAGIC)
        .ok_or("a protobuf body must start with the k8s\\0 envelope")?;
    let unknown = Unknown::decode(raw).map_err(|e| format!("the protobuf envelope: {e}"))?;
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err("protobuf bodies with a content encoding are not decoded".into());
    }
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let bad = |e: prost::DecodeError| format!("{api_version} {kind}: {e}");
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns = core::Namespace::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object_meta(ns.metadata.as_ref());
            if let Some(spec) = ns.spec.filter(|s| !s.finalizers.is_empty()) {
                o.insert("spec".into(), json!({"finalizers": spec.finalizers}));
            }
            o
        }
        ("v1", "ConfigMap") => {
            let cm = core::ConfigMap::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object_meta(cm.metadata.as_ref());
            insert_map(&mut o, "data", &cm.data);
            if !cm.binary_data.is_empty() {
                o.insert("binaryData".into(), base64_map(&cm.binary_data));
            }
            if let Some(immutable) = cm.immutable {
                o.insert("immutable".into(), json!(immutable));
            }
            o
        }
        ("v1", "Secret") => {
            let secret = core::Secret::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object_meta(secret.metadata.as_ref());
            if !secret.data.is_empty() {
                o.insert("data".into(), base64_map(&secret.data));
            }
            insert_map(&mut o, "stringData", &secret.string_data);
            insert_str(&mut o, "type", &secret.r#type);
            if let Some(immutable) = secret.immutable {
                o.insert("immutable".into(), json!(immutable));
            }
            o
        }
        ("v1", "ServiceAccount") => {
            let sa = core::ServiceAccount::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object_meta(sa.metadata.as_ref());
            if !sa.secrets.is_empty() {
                let secrets: Vec<Value> = sa
                    .secrets
                    .iter()
                    .map(|r| {
                        let mut m = Map::new();
                        insert_str(&mut m, "name", &r.name);
                        insert_str(&mut m, "namespace", &r.namespace);
                        Value::Object(m)
                    })
                    .collect();
                o.insert("secrets".into(), json!(secrets));
            }
            if !sa.image_pull_secrets.is_empty() {
                o.insert(
                    "imagePullSecrets".into(),
                    local_references(&sa.image_pull_secrets),
                );
            }
            if let Some(automount) = sa.automount_service_account_token {
                o.insert("automountServiceAccountToken".into(), json!(automount));
            }
            o
        }
        // The body of a DELETE (Helm sends it as protobuf when purging a release).
        ("v1" | "meta.k8s.io/v1", "DeleteOptions") => {
            let options = meta::DeleteOptions::decode(raw.as_slice()).map_err(bad)?;
            let mut o = Map::new();
            insert_str(&mut o, "propagationPolicy", &options.propagation_policy);
            if let Some(seconds) = options.grace_period_seconds {
                o.insert("gracePeriodSeconds".into(), json!(seconds));
            }
            if let Some(orphan) = options.orphan_dependents {
                o.insert("orphanDependents".into(), json!(orphan));
            }
            if !options.dry_run.is_empty() {
                o.insert("dryRun".into(), json!(options.dry_run));
            }
            if let Some(p) = &options.preconditions {
                let mut m = Map::new();
                insert_str(&mut m, "uid", &p.uid);
                insert_str(&mut m, "resourceVersion", &p.resource_version);
                o.insert("preconditions".into(), Value::Object(m));
            }
            o
        }
        ("batch/v1", "Job") => {
            let job = batch::Job::decode(raw.as_slice()).map_err(bad)?;
            let mut o = object_meta(job.metadata.as_ref());
            let spec = job.spec.unwrap_or_default();
            o.insert("spec".into(), job_spec(&spec)?);
            o
        }
        _ => {
            return Err(format!(
                "kube-sim decodes protobuf bodies of Namespace, ConfigMap, Secret, ServiceAccount, Job and DeleteOptions only, not {api_version} {kind}: send it as JSON (kubectl apply -f, or kubectl create … -o json --dry-run=client | kubectl create -f -)"
            ));
        }
    };
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

/// A string field as JSON has it: Go's protobuf writes empty strings, JSON omits them.
fn text(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

fn insert_str(object: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(value) = text(value) {
        object.insert(key.into(), json!(value));
    }
}

fn insert_map(object: &mut Map<String, Value>, key: &str, map: &BTreeMap<String, String>) {
    if !map.is_empty() {
        object.insert(key.into(), json!(map));
    }
}

fn base64_map(map: &BTreeMap<String, Vec<u8>>) -> Value {
    let engine = base64::engine::general_purpose::STANDARD;
    json!(
        map.iter()
            .map(|(k, v)| (k.clone(), engine.encode(v)))
            .collect::<BTreeMap<_, _>>()
    )
}

fn local_references(references: &[core::LocalObjectReference]) -> Value {
    json!(
        references
            .iter()
            .map(|r| json!({"name": text(&r.name).unwrap_or_default()}))
            .collect::<Vec<_>>()
    )
}

/// The fields of ObjectMeta a client may set; what the server sets is left to the server.
fn object_meta(metadata: Option<&meta::ObjectMeta>) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(metadata) = metadata {
        insert_str(&mut m, "name", &metadata.name);
        insert_str(&mut m, "generateName", &metadata.generate_name);
        insert_str(&mut m, "namespace", &metadata.namespace);
        insert_str(&mut m, "uid", &metadata.uid);
        insert_str(&mut m, "resourceVersion", &metadata.resource_version);
        insert_map(&mut m, "labels", &metadata.labels);
        insert_map(&mut m, "annotations", &metadata.annotations);
        if !metadata.finalizers.is_empty() {
            m.insert("finalizers".into(), json!(metadata.finalizers));
        }
        if !metadata.owner_references.is_empty() {
            let references: Vec<Value> = metadata
                .owner_references
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    insert_str(&mut o, "apiVersion", &r.api_version);
                    insert_str(&mut o, "kind", &r.kind);
                    insert_str(&mut o, "name", &r.name);
                    insert_str(&mut o, "uid", &r.uid);
                    if let Some(c) = r.controller {
                        o.insert("controller".into(), json!(c));
                    }
                    if let Some(b) = r.block_owner_deletion {
                        o.insert("blockOwnerDeletion".into(), json!(b));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("ownerReferences".into(), json!(references));
        }
    }
    let mut object = Map::new();
    object.insert("metadata".into(), Value::Object(m));
    object
}

fn job_spec(spec: &batch::JobSpec) -> Result<Value, String> {
    let unsupported = [
        ("podFailurePolicy", spec.pod_failure_policy.is_some()),
        ("successPolicy", spec.success_policy.is_some()),
        ("selector", spec.selector.is_some()),
    ];
    refuse_unsupported("Job spec", &unsupported)?;
    let mut o = Map::new();
    let numbers = [
        ("parallelism", spec.parallelism.map(i64::from)),
        ("completions", spec.completions.map(i64::from)),
        ("activeDeadlineSeconds", spec.active_deadline_seconds),
        ("backoffLimit", spec.backoff_limit.map(i64::from)),
        (
            "ttlSecondsAfterFinished",
            spec.ttl_seconds_after_finished.map(i64::from),
        ),
    ];
    for (key, value) in numbers {
        if let Some(value) = value {
            o.insert(key.into(), json!(value));
        }
    }
    if let Some(suspend) = spec.suspend {
        o.insert("suspend".into(), json!(suspend));
    }
    insert_str(&mut o, "completionMode", &spec.completion_mode);
    let template = spec.template.clone().unwrap_or_default();
    let mut t = object_meta(template.metadata.as_ref());
    t.insert("spec".into(), pod_spec(&template.spec.unwrap_or_default())?);
    o.insert("template".into(), Value::Object(t));
    Ok(Value::Object(o))
}

fn refuse_unsupported(what: &str, fields: &[(&str, bool)]) -> Result<(), String> {
    let set: Vec<&str> = fields.iter().filter(|(_, s)| *s).map(|(f, _)| *f).collect();
    if set.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "kube-sim does not decode {what} field(s) {} from protobuf: send the object as JSON (kubectl apply -f)",
            set.join(", ")
        ))
    }
}

/// The pod spec fields imperative commands set; richer specs come as JSON from `apply`.
fn pod_spec(spec: &core::PodSpec) -> Result<Value, String> {
    refuse_unsupported(
        "pod spec",
        &[
            ("volumes", !spec.volumes.is_empty()),
            ("initContainers", !spec.init_containers.is_empty()),
            ("securityContext", spec.security_context.is_some()),
            ("affinity", spec.affinity.is_some()),
            ("tolerations", !spec.tolerations.is_empty()),
            ("nodeSelector", !spec.node_selector.is_empty()),
            ("dnsConfig", spec.dns_config.is_some()),
            ("hostAliases", !spec.host_aliases.is_empty()),
            (
                "topologySpreadConstraints",
                !spec.topology_spread_constraints.is_empty(),
            ),
        ],
    )?;
    let mut o = Map::new();
    let containers: Result<Vec<Value>, String> = spec.containers.iter().map(container).collect();
    o.insert("containers".into(), json!(containers?));
    insert_str(&mut o, "restartPolicy", &spec.restart_policy);
    insert_str(&mut o, "serviceAccountName", &spec.service_account_name);
    insert_str(&mut o, "dnsPolicy", &spec.dns_policy);
    if let Some(seconds) = spec.termination_grace_period_seconds {
        o.insert("terminationGracePeriodSeconds".into(), json!(seconds));
    }
    if let Some(seconds) = spec.active_deadline_seconds {
        o.insert("activeDeadlineSeconds".into(), json!(seconds));
    }
    if let Some(automount) = spec.automount_service_account_token {
        o.insert("automountServiceAccountToken".into(), json!(automount));
    }
    if !spec.image_pull_secrets.is_empty() {
        o.insert(
            "imagePullSecrets".into(),
            local_references(&spec.image_pull_secrets),
        );
    }
    Ok(Value::Object(o))
}

fn container(c: &core::Container) -> Result<Value, String> {
    refuse_unsupported(
        "container",
        &[
            ("envFrom", !c.env_from.is_empty()),
            ("volumeMounts", !c.volume_mounts.is_empty()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
            ("lifecycle", c.lifecycle.is_some()),
            ("securityContext", c.security_context.is_some()),
            (
                "env valueFrom",
                c.env.iter().any(|e| e.value_from.is_some()),
            ),
        ],
    )?;
    let mut o = Map::new();
    insert_str(&mut o, "name", &c.name);
    insert_str(&mut o, "image", &c.image);
    if !c.command.is_empty() {
        o.insert("command".into(), json!(c.command));
    }
    if !c.args.is_empty() {
        o.insert("args".into(), json!(c.args));
    }
    insert_str(&mut o, "workingDir", &c.working_dir);
    insert_str(&mut o, "imagePullPolicy", &c.image_pull_policy);
    insert_str(
        &mut o,
        "terminationMessagePath",
        &c.termination_message_path,
    );
    insert_str(
        &mut o,
        "terminationMessagePolicy",
        &c.termination_message_policy,
    );
    if !c.env.is_empty() {
        let env: Vec<Value> = c
            .env
            .iter()
            .map(|e| json!({"name": text(&e.name).unwrap_or_default(), "value": e.value.clone().unwrap_or_default()}))
            .collect();
        o.insert("env".into(), json!(env));
    }
    if !c.ports.is_empty() {
        let ports: Vec<Value> = c
            .ports
            .iter()
            .map(|p| {
                let mut m = Map::new();
                insert_str(&mut m, "name", &p.name);
                m.insert("containerPort".into(), json!(p.container_port.unwrap_or(0)));
                insert_str(&mut m, "protocol", &p.protocol);
                if let Some(host_port) = p.host_port.filter(|p| *p != 0) {
                    m.insert("hostPort".into(), json!(host_port));
                }
                Value::Object(m)
            })
            .collect();
        o.insert("ports".into(), json!(ports));
    }
    if let Some(resources) = &c.resources {
        let quantities =
            |map: &BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>| {
                json!(
                    map.iter()
                        .map(|(k, q)| (k.clone(), q.string.clone().unwrap_or_default()))
                        .collect::<BTreeMap<_, _>>()
                )
            };
        let mut r = Map::new();
        if !resources.limits.is_empty() {
            r.insert("limits".into(), quantities(&resources.limits));
        }
        if !resources.requests.is_empty() {
            r.insert("requests".into(), quantities(&resources.requests));
        }
        o.insert("resources".into(), Value::Object(r));
    }
    for (key, value) in [
        ("stdin", c.stdin),
        ("stdinOnce", c.stdin_once),
        ("tty", c.tty),
    ] {
        if value == Some(true) {
            o.insert(key.into(), json!(true));
        }
    }
    Ok(Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        [MAGIC, &unknown.encode_to_vec()].concat()
    }

    #[test]
    fn a_secret_decodes_with_its_data_in_base64_and_empty_strings_omitted() {
        let secret = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("creds".into()),
                namespace: Some(String::new()),
                labels: BTreeMap::from([("a".into(), "b".into())]),
                ..Default::default()
            }),
            data: BTreeMap::from([("password".into(), b"hunter2".to_vec())]),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let object = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "labels": {"a": "b"}},
                   "data": {"password": "aHVudGVyMg=="}, "type": "Opaque"})
        );
    }

    #[test]
    fn kinds_and_fields_not_decoded_are_refused_by_name() {
        let error = decode(&envelope("apps/v1", "Deployment", Vec::new())).unwrap_err();
        assert!(error.contains("not apps/v1 Deployment"), "{error}");
        let job = batch::Job {
            spec: Some(batch::JobSpec {
                template: Some(core::PodTemplateSpec {
                    metadata: None,
                    spec: Some(core::PodSpec {
                        volumes: vec![core::Volume::default()],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let error = decode(&envelope("batch/v1", "Job", job.encode_to_vec())).unwrap_err();
        assert!(error.contains("volumes"), "{error}");
        assert!(decode(b"{}").is_err());
    }
}
