//! The Deployment and ReplicaSet controllers: a Deployment owns one ReplicaSet per pod template
//! (named by the template's hash, `pod-template-hash` label), a template change rolls out a
//! new ReplicaSet while the old ones scale down as new pods become ready (Recreate: old ones
//! first), and each ReplicaSet keeps `replicas` pods; status counts replicas, updated, ready
//! and available pods, with the Available and Progressing conditions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::api::{Api, Query, now};
use crate::store::Event;

const DEPLOYMENTS: &str = "deployments.apps";
const REPLICA_SETS: &str = "replicasets.apps";
const REVISION: &str = "deployment.kubernetes.io/revision";
/// Failed pods a ReplicaSet keeps replacing before it stops: kube-sim restarts no container,
/// so a crashing one would otherwise be replaced for ever (a kubelet backs off instead).
const MAX_FAILED_PODS: usize = 5;

pub struct DeploymentController {
    api: Arc<Api>,
}

impl DeploymentController {
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }

    /// Reconciles the namespaces a Deployment, ReplicaSet or their pods changed in, and every
    /// namespace each second. Runs until the task is dropped.
    pub async fn run(self) {
        let mut events = self.api.lock().store.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            // None: every namespace; otherwise those where something changed.
            let mut due: Option<BTreeSet<String>> = Some(BTreeSet::new());
            tokio::select! {
                _ = tick.tick() => due = None,
                event = events.recv() => match event {
                    Ok(e) => note(&mut due, &e),
                    Err(broadcast::error::RecvError::Lagged(_)) => due = None,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
            loop {
                match events.try_recv() {
                    Ok(e) => note(&mut due, &e),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => due = None,
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                }
            }
            let (deployments, replica_sets) = {
                let api = self.api.lock();
                let list = |key: &str| -> Vec<Arc<Value>> {
                    match &due {
                        None => api.store.list(key, None),
                        Some(namespaces) => namespaces
                            .iter()
                            .flat_map(|ns| api.store.list(key, Some(ns)))
                            .collect(),
                    }
                };
                (list(DEPLOYMENTS), list(REPLICA_SETS))
            };
            for deployment in deployments {
                self.reconcile_deployment(&deployment);
            }
            for replica_set in replica_sets {
                self.reconcile_replica_set(&replica_set);
            }
        }
    }

    fn owned(&self, key: &str, namespace: &str, owner_uid: &Value) -> Vec<Arc<Value>> {
        self.api
            .lock()
            .store
            .list(key, Some(namespace))
            .into_iter()
            .filter(|o| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == *owner_uid))
            })
            .collect()
    }

    fn reconcile_deployment(&self, deployment: &Value) {
        let metadata = &deployment["metadata"];
        if metadata["deletionTimestamp"].is_string() {
            return;
        }
        let namespace = metadata["namespace"].as_str().unwrap_or_default();
        let spec = &deployment["spec"];
        let desired = spec["replicas"].as_i64().unwrap_or(1).max(0);
        let hash = template_hash(&spec["template"]);
        let mut sets = self.owned(REPLICA_SETS, namespace, &metadata["uid"]);
        let revision_of = |rs: &Value| {
            rs["metadata"]["annotations"][REVISION]
                .as_str()
                .and_then(|r| r.parse::<i64>().ok())
                .unwrap_or(0)
        };
        sets.sort_by_key(|rs| revision_of(rs));
        let current = sets
            .iter()
            .find(|rs| rs["metadata"]["labels"]["pod-template-hash"] == json!(hash))
            .cloned();
        let old: Vec<Arc<Value>> = sets
            .iter()
            .filter(|rs| rs["metadata"]["labels"]["pod-template-hash"] != json!(hash))
            .cloned()
            .collect();
        let count = |rs: &Value, field: &str| rs["status"][field].as_i64().unwrap_or(0);
        let old_pods: i64 = old.iter().map(|rs| count(rs, "replicas")).sum();
        let recreate = spec["strategy"]["type"] == json!("Recreate");
        let current = match current {
            Some(rs) => rs,
            None => {
                let revision = sets.iter().map(|rs| revision_of(rs)).max().unwrap_or(0) + 1;
                let replicas = if recreate && old_pods > 0 { 0 } else { desired };
                match self.create_replica_set(deployment, &hash, revision, replicas) {
                    Some(rs) => rs,
                    None => return,
                }
            }
        };
        let new_ready = count(&current, "readyReplicas");
        // Rolling update: old pods go as new ones become ready; Recreate: old pods first.
        let old_wanted = if recreate {
            0
        } else {
            (desired - new_ready).max(0)
        };
        let new_wanted = if recreate && old_pods > 0 { 0 } else { desired };
        let mut remaining_old = old_wanted;
        for rs in old.iter().rev() {
            let keep = remaining_old.min(rs["spec"]["replicas"].as_i64().unwrap_or(0));
            remaining_old -= keep;
            self.scale(rs, keep);
        }
        self.scale(&current, new_wanted);

        let all: Vec<&Value> = old
            .iter()
            .map(|rs| &**rs)
            .chain(std::iter::once(&*current))
            .collect();
        let total = |field: &str| all.iter().map(|rs| count(rs, field)).sum::<i64>();
        let (replicas, ready, available) = (
            total("replicas"),
            total("readyReplicas"),
            total("availableReplicas"),
        );
        let updated = count(&current, "replicas");
        let max_unavailable = max_unavailable(spec, desired);
        let time = now();
        let condition = |kind: &str, ok: bool, reason: &str, message: String| {
            json!({"type": kind, "status": if ok { "True" } else { "False" }, "reason": reason,
                   "message": message, "lastUpdateTime": time, "lastTransitionTime": time})
        };
        let is_available = available >= desired - max_unavailable;
        let complete = updated == desired && replicas == desired && available == desired;
        let rs_name = current["metadata"]["name"].as_str().unwrap_or_default();
        let conditions = vec![
            condition(
                "Available",
                is_available,
                if is_available {
                    "MinimumReplicasAvailable"
                } else {
                    "MinimumReplicasUnavailable"
                },
                if is_available {
                    "Deployment has minimum availability.".into()
                } else {
                    "Deployment does not have minimum availability.".into()
                },
            ),
            condition(
                "Progressing",
                true,
                if complete {
                    "NewReplicaSetAvailable"
                } else {
                    "ReplicaSetUpdated"
                },
                if complete {
                    format!("ReplicaSet \"{rs_name}\" has successfully progressed.")
                } else {
                    format!("ReplicaSet \"{rs_name}\" is progressing.")
                },
            ),
        ];
        let mut status = json!({
            "observedGeneration": metadata["generation"],
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (desired - available).max(0),
        });
        // Conditions keep their transition time while their status stays.
        let previous = deployment["status"]["conditions"].as_array();
        status["conditions"] = json!(
            conditions
                .into_iter()
                .map(|mut c| {
                    if let Some(old) =
                        previous.and_then(|p| p.iter().find(|o| o["type"] == c["type"]))
                        && old["status"] == c["status"]
                    {
                        c["lastTransitionTime"] = old["lastTransitionTime"].clone();
                        if old["reason"] == c["reason"] {
                            c["lastUpdateTime"] = old["lastUpdateTime"].clone();
                        }
                    }
                    c
                })
                .collect::<Vec<_>>()
        );
        let revision = current["metadata"]["annotations"][REVISION].clone();
        if status != deployment["status"]
            || deployment["metadata"]["annotations"][REVISION] != revision
        {
            let mut updated = deployment.clone();
            updated["status"] = status;
            if !updated["metadata"]["annotations"].is_object() {
                updated["metadata"]["annotations"] = json!({});
            }
            updated["metadata"]["annotations"][REVISION] = revision;
            let _ = self.api.internal_put(DEPLOYMENTS, updated);
        }
    }

    fn create_replica_set(
        &self,
        deployment: &Value,
        hash: &str,
        revision: i64,
        replicas: i64,
    ) -> Option<Arc<Value>> {
        let metadata = &deployment["metadata"];
        let namespace = metadata["namespace"].as_str().unwrap_or_default();
        let name = metadata["name"].as_str().unwrap_or_default();
        let mut template = deployment["spec"]["template"].clone();
        if !template["metadata"].is_object() {
            template["metadata"] = json!({});
        }
        if !template["metadata"]["labels"].is_object() {
            template["metadata"]["labels"] = json!({});
        }
        template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let mut selector = deployment["spec"]["selector"].clone();
        if !selector["matchLabels"].is_object() {
            selector["matchLabels"] = json!({});
        }
        selector["matchLabels"]["pod-template-hash"] = json!(hash);
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{name}-{hash}"),
                "namespace": namespace,
                "labels": template["metadata"]["labels"],
                "annotations": {REVISION: revision.to_string()},
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                    "uid": metadata["uid"], "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": {"replicas": replicas, "selector": selector, "template": template},
        });
        let target = self
            .api
            .target("apps", "v1", "replicasets", Some(namespace), None, None)
            .ok()?;
        match self.api.create(&target, rs, &Query::default()) {
            Ok(rs) => Some(rs),
            Err(e) => {
                tracing::warn!(deployment = %name, error = ?e, "creating the ReplicaSet failed");
                None
            }
        }
    }

    fn scale(&self, rs: &Value, replicas: i64) {
        if rs["spec"]["replicas"].as_i64() == Some(replicas) {
            return;
        }
        let namespace = rs["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = rs["metadata"]["name"].as_str().unwrap_or_default();
        // Bound first: the store's lock must be released before the write takes it again.
        let current = self.api.lock().store.get(REPLICA_SETS, namespace, name);
        if let Some(current) = current {
            let mut updated = (*current).clone();
            updated["spec"]["replicas"] = json!(replicas);
            let generation = updated["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            updated["metadata"]["generation"] = json!(generation);
            let _ = self.api.internal_put(REPLICA_SETS, updated);
        }
    }

    fn reconcile_replica_set(&self, rs: &Value) {
        let metadata = &rs["metadata"];
        if metadata["deletionTimestamp"].is_string() {
            return;
        }
        let namespace = metadata["namespace"].as_str().unwrap_or_default();
        let desired = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let pods = self.owned("pods", namespace, &metadata["uid"]);
        let phase = |p: &Value| p["status"]["phase"].as_str().unwrap_or_default().to_owned();
        let failed = pods.iter().filter(|p| phase(p) == "Failed").count();
        let mut active: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| {
                !matches!(phase(p).as_str(), "Succeeded" | "Failed")
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .collect();
        let is_ready = |p: &Value| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == json!("Ready") && c["status"] == json!("True"))
            })
        };
        if active.len() < desired && failed < MAX_FAILED_PODS {
            for _ in active.len()..desired {
                self.create_pod(rs);
            }
        } else if active.len() > desired {
            // Not-ready pods go first, then the newest.
            active.sort_by_key(|p| {
                (
                    is_ready(p),
                    std::cmp::Reverse(
                        p["metadata"]["creationTimestamp"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                )
            });
            for pod in active.drain(..active.len() - desired) {
                self.api.internal_delete(
                    "pods",
                    namespace,
                    pod["metadata"]["name"].as_str().unwrap_or_default(),
                    "Background",
                );
            }
        }
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": active.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": metadata["generation"],
        });
        if status != rs["status"] {
            let Some(current) = self.api.lock().store.get(
                REPLICA_SETS,
                namespace,
                metadata["name"].as_str().unwrap_or_default(),
            ) else {
                return;
            };
            let mut updated = (*current).clone();
            updated["status"] = status;
            let _ = self.api.internal_put(REPLICA_SETS, updated);
        }
    }

    fn create_pod(&self, rs: &Value) {
        let namespace = rs["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = rs["metadata"]["name"].as_str().unwrap_or_default();
        let template = &rs["spec"]["template"];
        let mut metadata = template["metadata"].clone();
        if !metadata.is_object() {
            metadata = json!({});
        }
        metadata["generateName"] = json!(format!("{name}-"));
        metadata["namespace"] = json!(namespace);
        metadata["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": rs["metadata"]["uid"],
            "controller": true, "blockOwnerDeletion": true,
        }]);
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]});
        let Ok(target) = self
            .api
            .target("", "v1", "pods", Some(namespace), None, None)
        else {
            return;
        };
        if let Err(e) = self.api.create(&target, pod, &Query::default()) {
            tracing::warn!(replicaset = %name, error = ?e, "creating a pod failed");
        }
    }
}

/// Adds the namespace of a Deployment, ReplicaSet or ReplicaSet-owned pod event to `due`.
fn note(due: &mut Option<BTreeSet<String>>, event: &Event) {
    let Some(due) = due else { return };
    let relevant = match event.key.as_str() {
        DEPLOYMENTS | REPLICA_SETS => true,
        "pods" => event.object["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["kind"] == "ReplicaSet")),
        _ => false,
    };
    if relevant {
        due.insert(event.namespace.clone());
    }
}

/// The pods a rolling update may have unavailable: `maxUnavailable` as a number or a
/// percentage of the replicas rounded down (default 25%); none for Recreate.
fn max_unavailable(spec: &Value, desired: i64) -> i64 {
    if spec["strategy"]["type"] == json!("Recreate") {
        return 0;
    }
    let value = &spec["strategy"]["rollingUpdate"]["maxUnavailable"];
    if let Some(n) = value.as_i64() {
        return n;
    }
    let percent = value
        .as_str()
        .and_then(|p| p.strip_suffix('%'))
        .and_then(|p| p.parse::<i64>().ok())
        .unwrap_or(25);
    desired * percent / 100
}

/// The `pod-template-hash` of a template: FNV-1a of its JSON, spelled with the API
/// machinery's safe alphabet (no vowels, no look-alike digits), as the controller does.
pub fn template_hash(template: &Value) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d - b'0')] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_hash_changes_with_the_template_only() {
        let a = json!({"spec": {"containers": [{"name": "x", "image": "i:1"}]}});
        let b = json!({"spec": {"containers": [{"name": "x", "image": "i:2"}]}});
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert!(
            template_hash(&a)
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
    }

    #[test]
    fn max_unavailable_rounds_percentages_down() {
        assert_eq!(max_unavailable(&json!({}), 1), 0);
        assert_eq!(max_unavailable(&json!({}), 4), 1);
        let spec = json!({"strategy": {"rollingUpdate": {"maxUnavailable": 2}}});
        assert_eq!(max_unavailable(&spec, 4), 2);
        let spec = json!({"strategy": {"type": "Recreate"}});
        assert_eq!(max_unavailable(&spec, 4), 0);
    }
}
