//! The writing verbs: create, update, patch and apply, the commit they share, and the mirror
//! between the two Event APIs.

use super::admission::*;
use super::*;

impl Api {
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
            check_apply_fields(&ty, &applied, target)?;
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
}

fn st_mut<'a>(guard: &'a mut MutexGuard<'_, State>) -> &'a mut State {
    guard
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
    // core/v1 timestamps have whole seconds; events.k8s.io's MicroTime has fractions.
    let truncate = |v: &Value| {
        v.as_str()
            .map(|t| {
                json!(format!(
                    "{}Z",
                    t.split('.').next().unwrap_or(t).trim_end_matches('Z')
                ))
            })
            .unwrap_or(Value::Null)
    };
    let last = truncate(&event["series"]["lastObservedTime"]);
    let first = event["deprecatedFirstTimestamp"].clone();
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
        "lastTimestamp": if last.is_null() { truncate(&when) } else { last },
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
