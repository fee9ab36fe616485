//! Applying a profile's policy flavors in the cluster: server-side apply under one field
//! manager, ownership (namespaced objects owned by the profile; cluster-scoped ones and the
//! shared EgressFirewall cleaned up through a finalizer), removal of objects no longer
//! emitted, and a clear answer when a flavor's CRD is not installed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::{self, Scope};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::Context;
use crate::api::ConnectivityProfile;
use crate::api::profile::AppliedPolicy;
use crate::emit::{self, Input, flavor_name, merge_egress_firewall};

pub const MANAGER: &str = "netreach/connectivityprofile";
pub const FINALIZER: &str = "connectivityprofiles.netreach.dev/cleanup";
/// The rules NetReach wrote into a shared EgressFirewall, to replace them next time.
const OUR_RULES_ANNOTATION: &str = "netreach.dev/egress-rules";

/// What applying the flavors did.
#[derive(Debug, Default)]
pub struct Applied {
    pub policies: Vec<AppliedPolicy>,
    /// Flavors that could not be applied, and why.
    pub failures: Vec<String>,
    /// Endpoints a flavor could not express.
    pub notes: Vec<String>,
}

fn api_for(ctx: &Context, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, resource),
        None => Api::all_with(ctx.client.clone(), resource),
    }
}

/// Whether a flavor writes objects the profile cannot own (cluster-scoped, or shared).
pub fn needs_finalizer(profile: &ConnectivityProfile) -> bool {
    use crate::api::Flavor::*;
    profile
        .spec
        .policy
        .iter()
        .flat_map(|p| p.flavors.iter())
        .any(|f| {
            matches!(
                f,
                CiliumEgressGateway
                    | Calico
                    | AdminNetworkPolicy
                    | ClusterNetworkPolicy
                    | EgressFirewall
            )
        })
}

async fn resource_of(
    ctx: &Context,
    api_version: &str,
    kind: &str,
) -> Result<(ApiResource, bool), String> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    match discovery::pinned_kind(&ctx.client, &gvk).await {
        Ok((resource, capabilities)) => Ok((resource, capabilities.scope == Scope::Namespaced)),
        Err(e) => Err(format!(
            "{kind} ({api_version}) is not served by this cluster: install its CRD or remove the flavor ({e})"
        )),
    }
}

/// Applies every configured flavor for `profile` with `addresses`; `previous` is what the
/// last pass applied (from status), so objects no longer emitted are deleted.
pub async fn apply(
    ctx: &Context,
    profile: &ConnectivityProfile,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
    previous: &[AppliedPolicy],
) -> Applied {
    let mut applied = Applied::default();
    let namespace = profile.namespace().unwrap_or_default();
    let name = profile.name_any();
    let Some(policy) = profile.spec.policy.as_ref() else {
        return applied;
    };
    let input = Input {
        name: &name,
        namespace: &namespace,
        spec: &profile.spec,
        addresses,
    };
    let owner = profile.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        o
    });
    let mut flavors = policy.flavors.clone();
    flavors.sort();
    for flavor in flavors {
        let output = emit::emit(flavor, &input);
        applied
            .notes
            .extend(output.notes.iter().map(ToString::to_string));
        for mut object in output.objects {
            let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
            let kind = object["kind"].as_str().unwrap_or_default().to_owned();
            let object_name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let (resource, namespaced) = match resource_of(ctx, &api_version, &kind).await {
                Ok(found) => found,
                Err(message) => {
                    applied
                        .failures
                        .push(format!("{}: {message}", flavor_name(flavor)));
                    break;
                }
            };
            let object_namespace = namespaced.then(|| namespace.clone());
            let api = api_for(ctx, &resource, object_namespace.as_deref());
            if kind == "EgressFirewall" {
                // Shared by the namespace: merge with what others wrote, never clobber.
                let existing = match api.get_opt(&object_name).await {
                    Ok(found) => found.map(|o| serde_json::to_value(o).unwrap_or_default()),
                    Err(e) => {
                        applied.failures.push(format!(
                            "{}: cannot read EgressFirewall {namespace}/{object_name}: {e}",
                            flavor_name(flavor)
                        ));
                        break;
                    }
                };
                let previously_ours: Vec<Value> = existing
                    .as_ref()
                    .and_then(|e| e["metadata"]["annotations"][OUR_RULES_ANNOTATION].as_str())
                    .and_then(|text| serde_json::from_str(text).ok())
                    .unwrap_or_default();
                let ours = object["spec"]["egress"].clone();
                object = merge_egress_firewall(existing.as_ref(), &object, &previously_ours);
                object["metadata"]["annotations"][OUR_RULES_ANNOTATION] =
                    Value::String(ours.to_string());
            } else if namespaced && let Some(owner) = &owner {
                object["metadata"]["ownerReferences"] = json!([owner]);
            }
            match api
                .patch(
                    &object_name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&object),
                )
                .await
            {
                Ok(_) => applied.policies.push(AppliedPolicy {
                    flavor: flavor_name(flavor).into(),
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                    name: object_name,
                    namespace: object_namespace,
                }),
                Err(e) => applied.failures.push(format!(
                    "{}: applying {kind} {object_name} failed: {e}",
                    flavor_name(flavor)
                )),
            }
        }
    }
    applied
        .policies
        .sort_by(|a, b| (&a.flavor, &a.kind, &a.name).cmp(&(&b.flavor, &b.kind, &b.name)));
    let keep: BTreeSet<(String, String, Option<String>)> = applied
        .policies
        .iter()
        .map(|p| (p.kind.clone(), p.name.clone(), p.namespace.clone()))
        .collect();
    for old in previous {
        if !keep.contains(&(old.kind.clone(), old.name.clone(), old.namespace.clone())) {
            remove(ctx, old, &mut applied.failures).await;
        }
    }
    applied
}

/// Deletes one object NetReach applied earlier (or takes its rules out of an EgressFirewall).
async fn remove(ctx: &Context, old: &AppliedPolicy, failures: &mut Vec<String>) {
    let Ok((resource, _)) = resource_of(ctx, &old.api_version, &old.kind).await else {
        return;
    };
    let api = api_for(ctx, &resource, old.namespace.as_deref());
    if old.kind == "EgressFirewall" {
        let Ok(Some(existing)) = api.get_opt(&old.name).await else {
            return;
        };
        let existing = serde_json::to_value(existing).unwrap_or_default();
        let ours: Vec<Value> = existing["metadata"]["annotations"][OUR_RULES_ANNOTATION]
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        let denies: Vec<Value> = emit::egress_firewall_denies()
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect();
        let remaining: Vec<Value> = existing["spec"]["egress"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !ours.contains(r))
            .collect();
        if remaining.iter().all(|r| denies.contains(r)) {
            let _ = api.delete(&old.name, &DeleteParams::default()).await;
        } else {
            let body = json!({
                "apiVersion": old.api_version, "kind": old.kind,
                "metadata": {"name": old.name, "annotations": {OUR_RULES_ANNOTATION: "[]"}},
                "spec": {"egress": remaining},
            });
            if let Err(e) = api
                .patch(
                    &old.name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
            {
                failures.push(format!(
                    "removing NetReach's rules from EgressFirewall {} failed: {e}",
                    old.name
                ));
            }
        }
        return;
    }
    match api.delete(&old.name, &DeleteParams::default()).await {
        Ok(_) => {
            info!(kind = %old.kind, name = %old.name, "deleted a policy object no longer emitted")
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => failures.push(format!("deleting {} {} failed: {e}", old.kind, old.name)),
    }
}

/// On profile deletion: removes what owner references cannot (cluster-scoped objects and the
/// shared EgressFirewall's rules). Returns the failures.
pub async fn cleanup(ctx: &Context, profile: &ConnectivityProfile) -> Vec<String> {
    let mut failures = Vec::new();
    let previous = profile
        .status
        .as_ref()
        .map(|s| s.policies.clone())
        .unwrap_or_default();
    for old in previous
        .iter()
        .filter(|p| p.namespace.is_none() || p.kind == "EgressFirewall")
    {
        remove(ctx, old, &mut failures).await;
    }
    debug!(profile = %profile.name_any(), "cleaned up policy objects");
    failures
}

/// Adds or removes the cleanup finalizer.
pub async fn set_finalizer(
    ctx: &Context,
    profile: &ConnectivityProfile,
    present: bool,
) -> Result<(), kube::Error> {
    let has = profile.finalizers().iter().any(|f| f == FINALIZER);
    if has == present {
        return Ok(());
    }
    let mut finalizers: Vec<String> = profile.finalizers().to_vec();
    if present {
        finalizers.push(FINALIZER.into());
    } else {
        finalizers.retain(|f| f != FINALIZER);
    }
    let api: Api<ConnectivityProfile> =
        Api::namespaced(ctx.client.clone(), &profile.namespace().unwrap_or_default());
    // The resourceVersion makes it a compare-and-swap on the list.
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": profile.resource_version()}});
    api.patch(
        &profile.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}
