//! Deletion and what follows it: finalizers, namespace teardown and garbage collection.

use super::*;

impl Api {
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

    pub(super) fn remove(
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
                let (ns, name) = namespaced_name(&owner);
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
        let (ns, name) = namespaced_name(&object);
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
