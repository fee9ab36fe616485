//! The API server's semantics: create, read, update, patch, apply and delete with validation,
//! resource versions, generations, status subresources, finalizers and garbage collection.

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
use crate::store::{EventType, Location, Store};

/// Query parameters the verbs understand.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub label_selector: Option<LabelSelector>,
    pub field_selector: Option<FieldSelector>,
    pub watch: bool,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub field_manager: Option<String>,
    pub force: bool,
    pub dry_run: bool,
    pub field_validation: Option<String>,
    pub propagation_policy: Option<String>,
    pub container: Option<String>,
    pub tail_lines: Option<usize>,
    pub follow: bool,
    pub as_table: bool,
}

impl Query {
    pub fn parse(query: Option<&str>) -> ApiResult<Self> {
        let mut q = Query::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            let truthy = matches!(value.as_str(), "true" | "1" | "");
            match key {
                "labelSelector" => {
                    q.label_selector = Some(LabelSelector::parse(&value).map_err(|e| {
                        ApiError::bad_request(format!("unable to parse requirement: {e}"))
                    })?)
                }
                "fieldSelector" => {
                    q.field_selector =
                        Some(FieldSelector::parse(&value).map_err(ApiError::bad_request)?)
                }
                "watch" => q.watch = truthy,
                "resourceVersion" => q.resource_version = Some(value).filter(|v| !v.is_empty()),
                "timeoutSeconds" => q.timeout_seconds = value.parse().ok(),
                "allowWatchBookmarks" => q.allow_bookmarks = truthy,
                "sendInitialEvents" => q.send_initial_events = truthy,
                "limit" => q.limit = value.parse().ok().filter(|l| *l > 0),
                "continue" => q.continue_token = Some(value).filter(|v| !v.is_empty()),
                "fieldManager" => q.field_manager = Some(value),
                "force" => q.force = truthy,
                "dryRun" => q.dry_run = value == "All",
                "fieldValidation" => q.field_validation = Some(value),
                "propagationPolicy" => q.propagation_policy = Some(value),
                "container" => q.container = Some(value),
                "tailLines" => q.tail_lines = value.parse().ok(),
                "follow" => q.follow = truthy,
                _ => {}
            }
        }
        Ok(q)
    }
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], decoded) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

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

    /// Creates an object (also the path of server-side apply to a missing object).
    pub fn create(&self, target: &Target, mut body: Value, query: &Query) -> ApiResult<Arc<Value>> {
        let mut st = self.lock();
        let ty = target.ty.clone();
        check_type_meta(&ty, &body)?;
        let meta = body["metadata"].as_object().cloned().unwrap_or_default();
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(name) => name.to_owned(),
            None => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) => format!("{prefix}{}", self.suffix()),
                None => {
                    return Err(ApiError::invalid(
                        &ty.kind,
                        &ty.group,
                        "",
                        &[(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            },
        };
        let namespace = if ty.namespaced {
            let body_ns = meta.get("namespace").and_then(Value::as_str);
            let ns = target
                .namespace
                .clone()
                .or(body_ns.map(str::to_owned))
                .unwrap_or_else(|| "default".into());
            if let Some(body_ns) = body_ns
                && body_ns != ns
            {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                )));
            }
            match st.store.get("namespaces", "", &ns) {
                None => return Err(ApiError::not_found("namespaces", &ns)),
                Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            ty.key()
                        ),
                    ));
                }
                Some(_) => {}
            }
            Some(ns)
        } else {
            None
        };
        let valid_name = if ty.plural == "namespaces" {
            valid_label(&name)
        } else {
            valid_subdomain(&name)
        };
        if !valid_name {
            return Err(ApiError::invalid(
                &ty.kind,
                &ty.group,
                &name,
                &[(
                    "metadata.name".into(),
                    format!(
                        "Invalid value: \"{name}\": a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.'",
                        if ty.plural == "namespaces" {
                            "label"
                        } else {
                            "subdomain"
                        }
                    ),
                )],
            ));
        }
        if st
            .store
            .get(&ty.key(), namespace.as_deref().unwrap_or_default(), &name)
            .is_some()
        {
            return Err(ApiError::already_exists(&ty.key(), &name));
        }
        let meta_obj = body["metadata"].as_object_mut().expect("checked above");
        meta_obj.insert("name".into(), Value::String(name.clone()));
        match &namespace {
            Some(ns) => {
                meta_obj.insert("namespace".into(), Value::String(ns.clone()));
            }
            None => {
                meta_obj.remove("namespace");
            }
        }
        for server_owned in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            meta_obj.remove(server_owned);
        }
        meta_obj.insert("uid".into(), Value::String(self.uid()));
        meta_obj.insert("creationTimestamp".into(), Value::String(now()));
        if ty.tracks_generation() {
            meta_obj.insert("generation".into(), json!(1));
        }
        if ty.has_status
            && let Some(obj) = body.as_object_mut()
        {
            obj.remove("status");
        }
        let mut body = admit(&ty, body, query, None)?;
        if let Some(manager) = &query.field_manager {
            patch::track_update(
                &json!({"metadata": {}}),
                &mut body,
                shape(&ty),
                manager,
                &ty.api_version(),
                &now(),
                None,
            );
        }
        on_create_defaults(&ty, &mut body);
        if query.dry_run {
            return Ok(Arc::new(body));
        }
        if ty.plural == "customresourcedefinitions" {
            st.registry.register_crd(&body).map_err(|m| {
                ApiError::invalid(&ty.kind, &ty.group, &name, &[("spec".into(), m)])
            })?;
            body["status"] = crd_status(&body);
        }
        let stored = st.store.put(&ty.key(), body, EventType::Added);
        mirror_event(st_mut(&mut st), &ty, &stored);
        if ty.plural == "namespaces" {
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name, "uid": self.uid(), "creationTimestamp": now()}});
            st.store.put("serviceaccounts", sa, EventType::Added);
        }
        Ok(stored)
    }

    /// PUT: replaces an object, with optimistic concurrency on resourceVersion.
    pub fn update(&self, target: &Target, body: Value, query: &Query) -> ApiResult<Arc<Value>> {
        check_type_meta(&target.ty, &body)?;
        let mut st = self.lock();
        let old = st
            .store
            .get(&target.ty.key(), target.ns(), target.name_or_empty())
            .ok_or_else(|| ApiError::not_found(&target.ty.key(), target.name_or_empty()))?;
        // Custom resources allow no unconditional update: a PUT must say which version it
        // replaces. (Built-in kinds allow it, and so does this emulator for them.)
        let rv_missing = body["metadata"]["resourceVersion"]
            .as_str()
            .is_none_or(str::is_empty);
        if target.ty.crd.is_some() && rv_missing {
            return Err(ApiError::invalid(
                &target.ty.plural,
                &target.ty.group,
                target.name_or_empty(),
                &[(
                    "metadata.resourceVersion".into(),
                    "Invalid value: 0: must be specified for an update".into(),
                )],
            ));
        }
        if let Some(rv) = body["metadata"]["resourceVersion"]
            .as_str()
            .filter(|rv| !rv.is_empty())
            && rv
                != old["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
        {
            return Err(ApiError::conflict(
                &target.ty.key(),
                target.name_or_empty(),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        self.commit(&mut st, target, &old, body, query, None)
    }

    /// PATCH in any of the four patch types.
    pub fn patch(
        &self,
        target: &Target,
        content_type: &str,
        body: &[u8],
        query: &Query,
    ) -> ApiResult<Arc<Value>> {
        let ty = target.ty.clone();
        let parse = |bytes: &[u8]| -> ApiResult<Value> {
            serde_norway::from_slice(bytes)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
        };
        let mut st = self.lock();
        let existing = st.store.get(&ty.key(), target.ns(), target.name_or_empty());
        let kind = content_type.split(';').next().unwrap_or_default().trim();
        if kind == "application/apply-patch+yaml" {
            let applied = parse(body)?;
            check_type_meta(&ty, &applied)?;
            if applied["apiVersion"].is_null() || applied["kind"].is_null() {
                return Err(ApiError::bad_request(
                    "apiVersion and kind must be set in an apply configuration",
                ));
            }
            let manager = query.field_manager.clone().ok_or_else(|| {
                ApiError::bad_request("PATCH requests with apply-patch must set fieldManager")
            })?;
            let request = ApplyRequest {
                manager: &manager,
                force: query.force,
                api_version: &ty.api_version(),
                now: &now(),
                subresource: target.subresource.as_deref(),
            };
            let Some(live) = existing else {
                if target.subresource.is_some() {
                    return Err(ApiError::not_found(&ty.key(), target.name_or_empty()));
                }
                let mut fresh =
                    patch::apply(&json!({"metadata": {}}), &applied, shape(&ty), &request)
                        .map_err(|c| ApiError::new(409, "Conflict", patch::conflict_message(&c)))?;
                fresh["metadata"]["name"] = json!(target.name_or_empty());
                let managed = fresh["metadata"]["managedFields"].clone();
                drop(st);
                let created = self.create(
                    target,
                    fresh,
                    &Query {
                        field_manager: None,
                        ..query.clone()
                    },
                )?;
                // Keep the ownership apply recorded.
                let mut st = self.lock();
                let mut with_managed = (*created).clone();
                with_managed["metadata"]["managedFields"] = managed;
                return Ok(st.store.put(&ty.key(), with_managed, EventType::Modified));
            };
            // An apply configuration that names a resourceVersion is a precondition.
            if let Some(rv) = applied["metadata"]["resourceVersion"].as_str()
                && Some(rv) != live["metadata"]["resourceVersion"].as_str()
            {
                return Err(ApiError::conflict(
                    &ty.key(),
                    target.name_or_empty(),
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            let merged = match patch::apply(&live, &applied, shape(&ty), &request) {
                Ok(merged) => merged,
                // Upgrading from client-side apply: conflicts only with what kubectl applied
                // client-side (its last-applied annotation present) are taken over, as the
                // API server's last-applied handling does.
                Err(conflicts)
                    if conflicts.iter().all(|c| c.manager == "kubectl-client-side-apply")
                        && live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string() =>
                {
                    let forced = ApplyRequest { force: true, ..request };
                    patch::apply(&live, &applied, shape(&ty), &forced).map_err(|c| ApiError::new(409, "Conflict", patch::conflict_message(&c)))?
                }
                Err(conflicts) => return Err(ApiError::new(409, "Conflict", patch::conflict_message(&conflicts))),
            };
            let managed = merged["metadata"]["managedFields"].clone();
            return self.commit(
                &mut st,
                target,
                &live,
                merged,
                &Query {
                    field_manager: None,
                    ..query.clone()
                },
                Some(managed),
            );
        }
        let live =
            existing.ok_or_else(|| ApiError::not_found(&ty.key(), target.name_or_empty()))?;
        let mut patched = (*live).clone();
        match kind {
            "application/merge-patch+json" => {
                json_patch::merge(&mut patched, &parse(body)?);
            }
            "application/json-patch+json" => {
                let ops: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                    ApiError::bad_request(format!("error decoding JSON patch: {e}"))
                })?;
                json_patch::patch(&mut patched, &ops).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!("the JSON patch could not be applied: {e}"),
                    )
                })?;
            }
            "application/strategic-merge-patch+json" => {
                if ty.crd.is_some() {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "strategic merge patch is not supported for custom resources; use a merge patch",
                    ));
                }
                patch::strategic_merge(&mut patched, &parse(body)?, Shape::Builtin, true);
            }
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})"
                    ),
                ));
            }
        }
        // A patch that names a resourceVersion is a precondition.
        if let Some(rv) = patched["metadata"]["resourceVersion"].as_str()
            && rv
                != live["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
        {
            return Err(ApiError::conflict(
                &ty.key(),
                target.name_or_empty(),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        self.commit(&mut st, target, &live, patched, query, None)
    }

    /// The shared write path of update, patch and apply on an existing object.
    fn commit(
        &self,
        st: &mut State,
        target: &Target,
        old: &Arc<Value>,
        mut new: Value,
        query: &Query,
        applied_managed: Option<Value>,
    ) -> ApiResult<Arc<Value>> {
        let ty = target.ty.clone();
        let status_write = target.subresource.as_deref() == Some("status");
        if status_write {
            // Through /status only the status changes.
            let status = new.get("status").cloned();
            let managed = new["metadata"]["managedFields"].clone();
            new = (**old).clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            if !managed.is_null() {
                new["metadata"]["managedFields"] = managed;
            }
        } else if ty.has_status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        // Identity and server-owned metadata cannot change.
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for key in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old["metadata"].get(key) {
                Some(v) => new["metadata"][key] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(key);
                    }
                }
            }
        }
        new["apiVersion"] = json!(ty.api_version());
        new["kind"] = json!(ty.kind);
        let mut new = admit(&ty, new, query, Some(old))?;
        if ty.tracks_generation() && spec_of(old) != spec_of(&new) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        match applied_managed {
            Some(managed) => new["metadata"]["managedFields"] = managed,
            // A client that rewrites managedFields itself (kubectl's client-side to
            // server-side apply migration does) gets them as written.
            None if new["metadata"]["managedFields"] != old["metadata"]["managedFields"] => {}
            None => {
                let manager = query
                    .field_manager
                    .clone()
                    .unwrap_or_else(|| "unknown".into());
                patch::track_update(
                    old,
                    &mut new,
                    shape(&ty),
                    &manager,
                    &ty.api_version(),
                    &now(),
                    target.subresource.as_deref(),
                );
            }
        }
        if query.dry_run {
            return Ok(Arc::new(new));
        }
        // Nothing changed: no new resourceVersion, no event (what real servers do).
        let mut unchanged = new.clone();
        unchanged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if unchanged == **old {
            return Ok(old.clone());
        }
        if ty.plural == "customresourcedefinitions" && !status_write {
            st.registry.register_crd(&new).map_err(|m| {
                ApiError::invalid(
                    &ty.kind,
                    &ty.group,
                    target.name_or_empty(),
                    &[("spec".into(), m)],
                )
            })?;
            new["status"] = crd_status(&new);
        }
        let finalizers_empty = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        if new["metadata"]["deletionTimestamp"].is_string() && finalizers_empty {
            let removed = self.remove(st, &ty, target.ns(), target.name_or_empty());
            // Its dependents go now that it is gone.
            self.collect_garbage(st);
            return removed.ok_or_else(|| ApiError::not_found(&ty.key(), target.name_or_empty()));
        }
        let stored = st.store.put(&ty.key(), new, EventType::Modified);
        mirror_event(st, &ty, &stored);
        Ok(stored)
    }

    /// DELETE of one object: honours finalizers and the propagation policy.
    pub fn delete(&self, target: &Target, query: &Query, body: Option<&Value>) -> ApiResult<Value> {
        let policy = query
            .propagation_policy
            .clone()
            .or_else(|| body.and_then(|b| b["propagationPolicy"].as_str().map(str::to_owned)))
            .unwrap_or_else(|| {
                if target.ty.plural == "jobs" {
                    "Orphan".into()
                } else {
                    "Background".into()
                }
            });
        if let Some(rv) = body.and_then(|b| b["preconditions"]["resourceVersion"].as_str()) {
            let current = self.get(target)?;
            if current["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err(ApiError::conflict(
                    &target.ty.key(),
                    target.name_or_empty(),
                    "the ResourceVersion in the precondition does not match the ResourceVersion in record. The object might have been modified",
                ));
            }
        }
        if let Some(uid) = body.and_then(|b| b["preconditions"]["uid"].as_str()) {
            let current = self.get(target)?;
            if current["metadata"]["uid"].as_str() != Some(uid) {
                return Err(ApiError::conflict(
                    &target.ty.key(),
                    target.name_or_empty(),
                    "the UID in the precondition does not match the UID in record",
                ));
            }
        }
        let mut st = self.lock();
        let result = self.delete_locked(
            &mut st,
            &target.ty,
            target.ns(),
            target.name_or_empty(),
            &policy,
        )?;
        self.collect_garbage(&mut st);
        Ok(result)
    }

    fn delete_locked(
        &self,
        st: &mut State,
        ty: &Arc<ResourceType>,
        namespace: &str,
        name: &str,
        policy: &str,
    ) -> ApiResult<Value> {
        let current = st
            .store
            .get(&ty.key(), namespace, name)
            .ok_or_else(|| ApiError::not_found(&ty.key(), name))?;
        let mut object = (*current).clone();
        let uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match policy {
            "Orphan" => {
                // Dependents lose this owner instead of being deleted.
                let dependents: Vec<(String, Value)> = st
                    .store
                    .dependents_of(&uid)
                    .into_iter()
                    .filter_map(|(key, ns, name)| {
                        st.store.get(&key, &ns, &name).map(|o| (key, (*o).clone()))
                    })
                    .collect();
                for (key, mut dependent) in dependents {
                    if let Some(refs) = dependent["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(&uid));
                    }
                    st.store.put(&key, dependent, EventType::Modified);
                }
            }
            "Foreground" => {
                let finalizers = object["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !finalizers.iter().any(|f| f == "foregroundDeletion") && has_dependents(st, &uid)
                {
                    let mut finalizers = finalizers;
                    finalizers.push(json!("foregroundDeletion"));
                    object["metadata"]["finalizers"] = Value::Array(finalizers);
                }
            }
            _ => {}
        }
        let finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if ty.plural == "namespaces" {
            return self.delete_namespace(st, object, name);
        }
        if finalizers {
            if object["metadata"]["deletionTimestamp"].is_null() {
                object["metadata"]["deletionTimestamp"] = json!(now());
                object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                return Ok((*st.store.put(&ty.key(), object, EventType::Modified)).clone());
            }
            return Ok((*current).clone());
        }
        let removed = self
            .remove(st, ty, namespace, name)
            .ok_or_else(|| ApiError::not_found(&ty.key(), name))?;
        Ok((*removed).clone())
    }

    fn delete_namespace(
        &self,
        st: &mut State,
        mut namespace: Value,
        name: &str,
    ) -> ApiResult<Value> {
        namespace["metadata"]["deletionTimestamp"] = json!(now());
        namespace["status"]["phase"] = json!("Terminating");
        st.store.put("namespaces", namespace, EventType::Modified);
        let contents: Vec<(String, String)> = st
            .store
            .all()
            .filter(|(_, o)| o["metadata"]["namespace"].as_str() == Some(name))
            .map(|(k, o)| {
                (
                    k.clone(),
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        for (key, object_name) in contents {
            if let Some(ty) = st.registry.by_key(&key) {
                let _ = self.delete_locked(st, &ty, name, &object_name, "Background");
            }
        }
        self.finish_namespace_deletions(st);
        Ok(st
            .store
            .get("namespaces", "", name)
            .map(|v| (*v).clone())
            .unwrap_or_else(|| json!({"kind": "Status", "status": "Success"})))
    }

    /// Terminating namespaces go away once they are empty.
    fn finish_namespace_deletions(&self, st: &mut State) {
        let terminating: Vec<String> = st
            .store
            .list("namespaces", None)
            .iter()
            .filter(|n| n["metadata"]["deletionTimestamp"].is_string())
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        for ns in terminating {
            let empty = !st
                .store
                .all()
                .any(|(_, o)| o["metadata"]["namespace"].as_str() == Some(ns.as_str()));
            if empty {
                st.store.remove("namespaces", "", &ns);
            }
        }
    }

    fn remove(
        &self,
        st: &mut State,
        ty: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Value>> {
        let removed = st.store.remove(&ty.key(), namespace, name)?;
        if ty.plural == "customresourcedefinitions" {
            st.registry.unregister_crd(name);
            // The custom resources go with their definition.
            let group = removed["spec"]["group"].as_str().unwrap_or_default();
            let plural = removed["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default();
            let key = format!("{plural}.{group}");
            let victims: Vec<(String, String)> = st
                .store
                .list(&key, None)
                .iter()
                .map(|o| {
                    (
                        o["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        o["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    )
                })
                .collect();
            for (ns, n) in victims {
                st.store.remove(&key, &ns, &n);
            }
        }
        Some(removed)
    }

    /// Deletes dependents whose owners are gone, and completes foreground deletions.
    pub fn collect_garbage(&self, st: &mut State) {
        loop {
            let live = |uid: &str| st.store.locate_uid(uid).is_some();
            let foreground = st.store.foreground_uids();
            // Only dependents of a missing or foreground-deleting owner can be orphans.
            let suspects: BTreeSet<Location> = st
                .store
                .named_owners()
                .filter(|owner| !live(owner) || foreground.contains(*owner))
                .flat_map(|owner| st.store.dependents_of(owner))
                .collect();
            let orphans: Vec<(String, String, String)> = suspects
                .into_iter()
                .filter(|(key, ns, name)| {
                    st.store.get(key, ns, name).is_some_and(|o| {
                        let owners = owner_uids(&o);
                        o["metadata"]["deletionTimestamp"].is_null()
                            && (owners.iter().all(|u| !live(u))
                                || owners.iter().any(|u| foreground.contains(u)))
                    })
                })
                .collect();
            // Foreground owners whose blocking dependents are gone lose their finalizer.
            let mut released = Vec::new();
            for uid in foreground {
                if !has_dependents(st, uid)
                    && let Some((key, ns, name)) = st.store.locate_uid(uid)
                    && let Some(o) = st.store.get(key, ns, name)
                {
                    released.push((key.clone(), (*o).clone()));
                }
            }
            if orphans.is_empty() && released.is_empty() {
                break;
            }
            for (key, ns, name) in orphans {
                if let Some(ty) = st.registry.by_key(&key) {
                    let _ = self.delete_locked(st, &ty, &ns, &name, "Background");
                }
            }
            for (key, mut owner) in released {
                if let Some(f) = owner["metadata"]["finalizers"].as_array_mut() {
                    f.retain(|x| x != "foregroundDeletion");
                }
                let ns = owner["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let name = owner["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let done = owner["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty);
                if done {
                    if let Some(ty) = st.registry.by_key(&key) {
                        self.remove(st, &ty, &ns, &name);
                    }
                } else {
                    st.store.put(&key, owner, EventType::Modified);
                }
            }
        }
        self.finish_namespace_deletions(st);
    }

    /// DELETE on a collection.
    pub fn delete_collection(&self, target: &Target, query: &Query) -> ApiResult<Value> {
        let list = self.list(
            target,
            &Query {
                limit: None,
                continue_token: None,
                ..query.clone()
            },
        )?;
        let mut deleted = Vec::new();
        let mut st = self.lock();
        for item in list["items"].as_array().into_iter().flatten() {
            let ns = item["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            if let Ok(v) = self.delete_locked(
                &mut st,
                &target.ty,
                ns,
                name,
                query.propagation_policy.as_deref().unwrap_or("Background"),
            ) {
                deleted.push(v);
            }
        }
        self.collect_garbage(&mut st);
        Ok(
            json!({"apiVersion": target.ty.api_version(), "kind": format!("{}List", target.ty.kind), "metadata": {}, "items": deleted}),
        )
    }

    /// Writes an object as a controller inside the emulator would (Job controller, kubelet).
    pub fn internal_put(&self, key: &str, object: Value) -> Option<Arc<Value>> {
        let mut st = self.lock();
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let current = st.store.get(key, &ns, &name)?;
        if current["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
            return None;
        }
        Some(st.store.put(key, object, EventType::Modified))
    }

    /// Deletes an object on behalf of an emulator controller.
    pub fn internal_delete(&self, key: &str, namespace: &str, name: &str, policy: &str) {
        let mut st = self.lock();
        if let Some(ty) = st.registry.by_key(key) {
            let _ = self.delete_locked(&mut st, &ty, namespace, name, policy);
            self.collect_garbage(&mut st);
        }
    }
}

fn st_mut<'a>(guard: &'a mut MutexGuard<'_, State>) -> &'a mut State {
    guard
}

/// events.k8s.io/v1 and core/v1 Events are one resource on a real server: an event written
/// through one API is listed by the other (kubectl describe reads core/v1).
fn mirror_event(st: &mut State, ty: &ResourceType, event: &Value) {
    if ty.key() != "events.events.k8s.io" {
        return;
    }
    let when = event["eventTime"].clone();
    let count = event["series"]["count"]
        .as_i64()
        .or(event["deprecatedCount"].as_i64())
        .unwrap_or(1);
    let last = event["series"]["lastObservedTime"].as_str().map(|t| {
        json!(
            t.split('.')
                .next()
                .unwrap_or(t)
                .trim_end_matches('Z')
                .to_owned()
                + "Z"
        )
    });
    let first = event["deprecatedFirstTimestamp"].clone();
    let truncate = |v: &Value| {
        v.as_str()
            .map(|t| {
                json!(
                    t.split('.')
                        .next()
                        .unwrap_or(t)
                        .trim_end_matches('Z')
                        .to_owned()
                        + "Z"
                )
            })
            .unwrap_or(Value::Null)
    };
    let core = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event["metadata"]["name"],
            "namespace": event["metadata"]["namespace"],
            "uid": event["metadata"]["uid"],
            "creationTimestamp": event["metadata"]["creationTimestamp"],
        },
        "involvedObject": event["regarding"],
        "related": event["related"],
        "reason": event["reason"],
        "message": event["note"],
        "type": event["type"],
        "action": event["action"],
        "count": count,
        "eventTime": when,
        "firstTimestamp": if first.is_null() { truncate(&when) } else { first },
        "lastTimestamp": last.unwrap_or_else(|| truncate(&when)),
        "source": {"component": event["reportingController"]},
        "reportingComponent": event["reportingController"],
        "reportingInstance": event["reportingInstance"],
    });
    let kind = if st
        .store
        .get(
            "events",
            core["metadata"]["namespace"].as_str().unwrap_or_default(),
            core["metadata"]["name"].as_str().unwrap_or_default(),
        )
        .is_some()
    {
        EventType::Modified
    } else {
        EventType::Added
    };
    st.store.put("events", core, kind);
}

fn owner_uids(object: &Value) -> Vec<String> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn has_dependents(st: &State, uid: &str) -> bool {
    st.store.dependents_of(uid).iter().any(|(key, ns, name)| {
        st.store.get(key, ns, name).is_some_and(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| {
                    refs.iter().any(|r| {
                        r["uid"].as_str() == Some(uid) && r["blockOwnerDeletion"] == json!(true)
                    })
                })
        })
    })
}

/// Everything but metadata and status: what `generation` tracks.
fn spec_of(object: &Value) -> Value {
    let mut rest = object.as_object().cloned().unwrap_or_default();
    for key in ["metadata", "status", "apiVersion", "kind"] {
        rest.remove(key);
    }
    Value::Object(rest)
}

pub fn shape(ty: &ResourceType) -> Shape<'_> {
    match &ty.crd {
        Some(crd) => Shape::Schema(Some(&crd.schema)),
        None => Shape::Builtin,
    }
}

fn check_type_meta(ty: &ResourceType, body: &Value) -> ApiResult<()> {
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
fn admit(
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

fn on_create_defaults(ty: &ResourceType, body: &mut Value) {
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

fn crd_status(crd: &Value) -> Value {
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
