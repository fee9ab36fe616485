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
use crate::emit::{self, Input, merge_egress_firewall, unmerge_egress_firewall};

pub const MANAGER: &str = "netreach/connectivityprofile";
pub const FINALIZER: &str = "connectivityprofiles.netreach.dev/cleanup";

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

/// Why a policy kind could not be looked up.
enum Lookup {
    /// The cluster does not serve the kind: its CRD is not installed.
    NotServed(String),
    /// Discovery itself failed (connection, server error): worth retrying.
    Failed(String),
}

impl Lookup {
    fn message(self) -> String {
        match self {
            Lookup::NotServed(m) | Lookup::Failed(m) => m,
        }
    }
}

fn not_found(error: &kube::Error) -> bool {
    use kube::error::DiscoveryError::{MissingApiGroup, MissingKind, MissingResource};
    match error {
        kube::Error::Api(status) => status.code == 404,
        kube::Error::Discovery(MissingKind(_) | MissingApiGroup(_) | MissingResource(_)) => true,
        _ => false,
    }
}

async fn resource_of(
    ctx: &Context,
    api_version: &str,
    kind: &str,
) -> Result<(ApiResource, bool), Lookup> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    match discovery::pinned_kind(&ctx.client, &gvk).await {
        Ok((resource, capabilities)) => Ok((resource, capabilities.scope == Scope::Namespaced)),
        Err(e) if not_found(&e) => Err(Lookup::NotServed(format!(
            "{kind} ({api_version}) is not served by this cluster: install its CRD or remove the flavor ({e})"
        ))),
        Err(e) => Err(Lookup::Failed(format!(
            "looking up {kind} ({api_version}) in the API server's discovery failed, retrying: {e}"
        ))),
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
    // Everything emitted this pass, applied or not: a failed apply must not delete the copy
    // applied earlier.
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for flavor in flavors {
        let output = emit::emit(flavor, &input);
        applied
            .notes
            .extend(output.notes.iter().map(ToString::to_string));
        wanted.extend(output.objects.iter().map(|o| {
            (
                o["kind"].as_str().unwrap_or_default().to_owned(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }));
        for mut object in output.objects {
            let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
            let kind = object["kind"].as_str().unwrap_or_default().to_owned();
            let object_name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let (resource, namespaced) = match resource_of(ctx, &api_version, &kind).await {
                Ok(found) => found,
                Err(lookup) => {
                    applied
                        .failures
                        .push(format!("{}: {}", flavor.as_str(), lookup.message()));
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
                            "{}: reading EgressFirewall {namespace}/{object_name} to merge NetReach's rules into it failed, retrying: {e}",
                            flavor.as_str()
                        ));
                        break;
                    }
                };
                let merged = merge_egress_firewall(existing.as_ref(), &object, &name);
                object = merged.object;
                applied.notes.extend(merged.notes);
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
                    flavor: flavor.as_str().into(),
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                    name: object_name,
                    namespace: object_namespace,
                }),
                Err(e) => applied.failures.push(format!(
                    "{}: applying {kind} {object_name} failed: {e}",
                    flavor.as_str()
                )),
            }
        }
    }
    let keep: BTreeSet<(String, String, Option<String>)> = applied
        .policies
        .iter()
        .map(|p| (p.kind.clone(), p.name.clone(), p.namespace.clone()))
        .collect();
    for old in previous {
        if keep.contains(&(old.kind.clone(), old.name.clone(), old.namespace.clone())) {
            continue;
        }
        if wanted.contains(&(old.kind.clone(), old.name.clone())) {
            // Still wanted but not applied this pass (the failure is reported): it stays.
            applied.policies.push(old.clone());
            continue;
        }
        if let Err(failure) = remove(ctx, &name, old).await {
            applied.failures.push(failure);
            // Still there: keep it on record so the next pass (or the finalizer) retries.
            applied.policies.push(old.clone());
        }
    }
    applied
        .policies
        .sort_by(|a, b| (&a.flavor, &a.kind, &a.name).cmp(&(&b.flavor, &b.kind, &b.name)));
    applied
}

/// Deletes one object `profile` applied earlier, or takes its rules out of the shared
/// EgressFirewall. A kind the cluster no longer serves or an object already gone needs
/// nothing; any other failure is returned, so the caller keeps the object on record (and the
/// finalizer in place) and retries instead of leaving rules behind.
async fn remove(ctx: &Context, profile: &str, old: &AppliedPolicy) -> Result<(), String> {
    let place = match &old.namespace {
        Some(ns) => format!("{} {ns}/{}", old.kind, old.name),
        None => format!("{} {}", old.kind, old.name),
    };
    let resource = match resource_of(ctx, &old.api_version, &old.kind).await {
        Ok((resource, _)) => resource,
        // Uninstalling a CRD deletes its objects: nothing is left behind.
        Err(Lookup::NotServed(message)) => {
            debug!(kind = %old.kind, name = %old.name, %message, "nothing to remove");
            return Ok(());
        }
        Err(Lookup::Failed(message)) => return Err(format!("removing {place}: {message}")),
    };
    let api = api_for(ctx, &resource, old.namespace.as_deref());
    if old.kind == "EgressFirewall" {
        let existing = match api.get_opt(&old.name).await {
            Ok(Some(existing)) => serde_json::to_value(existing).unwrap_or_default(),
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(format!(
                    "reading {place} to take NetReach's rules out failed, retrying: {e}"
                ));
            }
        };
        return match unmerge_egress_firewall(&existing, profile) {
            None => match api.delete(&old.name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(format!("deleting {place} failed, retrying: {e}")),
            },
            Some(mut body) => {
                body["apiVersion"] = Value::String(old.api_version.clone());
                body["kind"] = Value::String(old.kind.clone());
                api.patch(
                    &old.name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map(|_| ())
                .map_err(|e| {
                    format!("taking NetReach's rules out of {place} failed, retrying: {e}")
                })
            }
        };
    }
    match api.delete(&old.name, &DeleteParams::default()).await {
        Ok(_) => {
            info!(kind = %old.kind, name = %old.name, "deleted a policy object no longer emitted");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(format!("deleting {place} failed, retrying: {e}")),
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
        if let Err(failure) = remove(ctx, &profile.name_any(), old).await {
            failures.push(failure);
        }
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
