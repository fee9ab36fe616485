//! The API server's semantics: create, read, update, patch, apply and delete with validation,
//! resource versions, generations, status subresources, finalizers and garbage collection.
//! Reads live here; query parsing, writes, admission and deletion in the submodules.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};
use crate::formats;
use crate::openapi_check;
use crate::patch::{self, ApplyRequest, Shape};
use crate::registry::{Registry, ResourceType};
use crate::selectors::{FieldLabels, FieldSelector, LabelSelector};
use crate::store::{EventType, Location, Store, namespaced_name};

mod admission;
mod lifecycle;
mod query;
mod write;

pub use query::{Query, percent_decode};
pub use write::shape;

/// Objects of a list with their stored JSON encodings, and the list's metadata.
type Page = (Vec<(Arc<Value>, Bytes)>, Value);

/// What a request addresses.
#[derive(Clone, Debug)]
pub struct Target {
    pub ty: Arc<ResourceType>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }

    fn name_or_empty(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

pub struct State {
    pub registry: Registry,
    pub store: Store,
}

/// The emulated API server's data and logic (no HTTP here).
pub struct Api {
    state: Mutex<State>,
    counter: AtomicU64,
}

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub fn now_micro() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// RFC 1123 subdomain, as most object names must be.
fn valid_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn valid_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && valid_subdomain(name)
}

/// How many changes the store keeps for watches to resume from.
pub const HISTORY_LIMIT: usize = 10_000;

impl Default for Api {
    fn default() -> Self {
        Self::new(Registry::with_builtins(), Store::new(HISTORY_LIMIT))
    }
}

impl Api {
    pub fn new(registry: Registry, store: Store) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let api = Self {
            state: Mutex::new(State { registry, store }),
            counter: AtomicU64::new(seed | 1),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let target = api
                .target("", "v1", "namespaces", None, None, None)
                .expect("namespaces are built in");
            let _ = api.create(
                &target,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                &Query::default(),
            );
        }
        api
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn random(&self) -> u64 {
        // xorshift: unique enough for names and uids in one process.
        let mut x = self
            .counter
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }

    pub fn uid(&self) -> String {
        let (a, b) = (self.random(), self.random());
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    pub fn suffix(&self) -> String {
        let mut r = self.random();
        (0..5)
            .map(|_| {
                let c = NAME_ALPHABET[(r % NAME_ALPHABET.len() as u64) as usize] as char;
                r /= NAME_ALPHABET.len() as u64;
                c
            })
            .collect()
    }

    /// Resolves a request's type; unknown types are 404 like a real server.
    pub fn target(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: Option<&str>,
        subresource: Option<&str>,
    ) -> ApiResult<Target> {
        let ty = self
            .lock()
            .registry
            .get(group, version, plural)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })?;
        if let Some(sub) = subresource
            && !(sub == "status" && ty.has_status)
            && !ty.extra_subresources.contains(&sub)
        {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
        Ok(Target {
            namespace: if ty.namespaced {
                namespace.map(str::to_owned)
            } else {
                None
            },
            ty,
            name: name.map(str::to_owned),
            subresource: subresource.map(str::to_owned),
        })
    }

    pub fn get(&self, target: &Target) -> ApiResult<Arc<Value>> {
        let st = self.lock();
        st.store
            .get(&target.ty.key(), target.ns(), target.name_or_empty())
            .ok_or_else(|| ApiError::not_found(&target.ty.key(), target.name_or_empty()))
    }

    /// One page of a list: the matching objects (with their JSON encodings) and the list's
    /// metadata, selectors and pagination applied.
    fn page(&self, target: &Target, query: &Query) -> ApiResult<Page> {
        let st = self.lock();
        let rv = st.store.resource_version();
        let (offset, list_rv) = match &query.continue_token {
            Some(token) => {
                let (r, o) = token
                    .split_once(':')
                    .and_then(|(r, o)| Some((r.parse::<u64>().ok()?, o.parse::<usize>().ok()?)))
                    .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
                if r < st.store.compacted() {
                    return Err(ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (o, r)
            }
            None => (0, rv),
        };
        // A list "not older than" a version the store never reached cannot be served; the
        // API server waits for its cache briefly, then answers this.
        if query.continue_token.is_none()
            && let Some(wanted) = query
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
            && wanted > rv
        {
            return Err(ApiError::too_large_resource_version(wanted, rv));
        }
        let matching: Vec<(Arc<Value>, Bytes)> = st
            .store
            .list_encoded(&target.ty.key(), target.namespace.as_deref())
            .filter(|(o, _)| query.label_selector.as_ref().is_none_or(|s| s.matches(o)))
            .filter(|(o, _)| query.field_selector.as_ref().is_none_or(|s| s.matches(o)))
            .map(|(o, json)| (o.clone(), json.clone()))
            .collect();
        drop(st);
        let total = matching.len();
        let end = query.limit.map_or(total, |l| (offset + l).min(total));
        let mut metadata = json!({"resourceVersion": list_rv.to_string()});
        if end < total {
            metadata["continue"] = Value::String(format!("{list_rv}:{end}"));
            metadata["remainingItemCount"] = json!(total - end);
        }
        let mut matching = matching;
        matching.truncate(end);
        matching.drain(..offset.min(end));
        Ok((matching, metadata))
    }

    /// A list object with selectors and pagination applied.
    pub fn list(&self, target: &Target, query: &Query) -> ApiResult<Value> {
        let (items, metadata) = self.page(target, query)?;
        let items: Vec<Value> = items.iter().map(|(o, _)| (**o).clone()).collect();
        Ok(json!({
            "apiVersion": target.ty.api_version(),
            "kind": format!("{}List", target.ty.kind),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// The same list, encoded: the stored encodings are concatenated, nothing is cloned or
    /// encoded again (a list of 10,000 objects must stay well under a second).
    pub fn list_json(&self, target: &Target, query: &Query) -> ApiResult<Bytes> {
        let (items, metadata) = self.page(target, query)?;
        let head = json!({
            "apiVersion": target.ty.api_version(),
            "kind": format!("{}List", target.ty.kind),
            "metadata": metadata,
        });
        let head = serde_json::to_vec(&head).expect("values serialize");
        let size: usize = items.iter().map(|(_, json)| json.len() + 1).sum();
        let mut out = Vec::with_capacity(head.len() + size + 16);
        // `{...head fields...,"items":[a,b,c]}`
        out.extend_from_slice(&head[..head.len() - 1]);
        out.extend_from_slice(b",\"items\":[");
        for (i, (_, json)) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(json);
        }
        out.extend_from_slice(b"]}");
        Ok(Bytes::from(out))
    }
}

/// For tests and the binary: object counts per type.
pub fn counts(st: &State) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (key, _) in st.store.all() {
        *counts.entry(key.clone()).or_insert(0) += 1;
    }
    counts
}

/// The field labels the API server lets clients select a kind by (its field label
/// conversion), each with where it is in the object; other labels get a 400.
pub fn field_labels(ty: &ResourceType) -> FieldLabels {
    const UNSUPPORTED: &str = "field label not supported: {label}";
    if let Some(crd) = &ty.crd {
        let mut labels = vec!["metadata.name"];
        if ty.namespaced {
            labels.push("metadata.namespace");
        }
        labels.extend(crd.selectable_fields.iter().map(String::as_str));
        return FieldLabels::of(&labels, UNSUPPORTED);
    }
    let meta = ["metadata.name", "metadata.namespace"];
    let with = |extra: &[&str]| {
        let labels: Vec<&str> = meta.iter().chain(extra).copied().collect();
        FieldLabels::of(&labels, UNSUPPORTED)
    };
    match ty.key().as_str() {
        "pods" => with(&[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ])
        .mapped(
            "spec.schedulerName",
            "spec.schedulerName",
            "default-scheduler",
        )
        .mapped("spec.hostNetwork", "spec.hostNetwork", "false")
        .mapped("status.podIPs", "status.podIP", "")
        // What old clients send for spec.nodeName.
        .mapped("spec.host", "spec.nodeName", ""),
        "events" => with(&[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "type",
        ])
        .mapped("source", "source.component", ""),
        "events.events.k8s.io" => with(&[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ]),
        "namespaces" => FieldLabels::of(&["metadata.name", "status.phase"], UNSUPPORTED),
        "secrets" => with(&["type"]),
        "services" => with(&["spec.clusterIP", "spec.type"]),
        "jobs.batch" => FieldLabels::of(
            &meta,
            r#"field label "{label}" not supported for batchv1.Job"#,
        )
        .mapped("status.successful", "status.succeeded", "0"),
        _ => FieldLabels::metadata_only(),
    }
}

/// Builds an empty metadata map for objects made inside the emulator.
pub fn meta(name: &str, namespace: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("namespace".into(), json!(namespace));
    m
}
