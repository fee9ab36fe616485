//! Applying a profile's policy flavors in the cluster: server-side apply under one field
//! manager, ownership (namespaced objects owned by the profile; cluster-scoped ones and the
//! shared EgressFirewall cleaned up through a finalizer), removal of objects no longer
//! emitted, and a clear answer when a flavor's CRD is not installed. The namespace's shared
//! EgressFirewall is written as a compare-and-swap, one profile of the namespace at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
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
        wanted.extend(
            output
                .objects
                .iter()
                .map(|o| (text(&o["kind"]), text(&o["metadata"]["name"]))),
        );
        for object in output.objects {
            let target = Target {
                flavor,
                profile: &name,
                namespace: &namespace,
                owner: owner.as_ref(),
            };
            match write_object(ctx, target, object).await {
                Ok(written) => {
                    applied.notes.extend(written.notes);
                    applied.policies.push(written.policy);
                }
                Err(WriteFailure::Lookup(message)) => {
                    // The flavor's kind is not served: its other objects would fail alike.
                    applied
                        .failures
                        .push(format!("{}: {message}", flavor.as_str()));
                    break;
                }
                Err(WriteFailure::Write(message)) => applied
                    .failures
                    .push(format!("{}: {message}", flavor.as_str())),
            }
        }
    }
    prune(ctx, &name, previous, &wanted, &mut applied).await;
    applied
        .policies
        .sort_by(|a, b| (&a.flavor, &a.kind, &a.name).cmp(&(&b.flavor, &b.kind, &b.name)));
    applied
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Where one emitted object goes: its flavor, and the profile that emits it.
#[derive(Clone, Copy)]
struct Target<'a> {
    flavor: crate::api::Flavor,
    profile: &'a str,
    namespace: &'a str,
    owner: Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

/// One object written: its record, and what merging it noted.
struct Written {
    policy: AppliedPolicy,
    notes: Vec<String>,
}

enum WriteFailure {
    /// The kind could not be looked up.
    Lookup(String),
    /// The write itself failed.
    Write(String),
}

/// Writes one emitted object: merged into the namespace's shared EgressFirewall, or applied
/// server-side (namespaced objects owned by the profile).
async fn write_object(
    ctx: &Context,
    target: Target<'_>,
    mut object: Value,
) -> Result<Written, WriteFailure> {
    let api_version = text(&object["apiVersion"]);
    let kind = text(&object["kind"]);
    let name = text(&object["metadata"]["name"]);
    let (resource, namespaced) = resource_of(ctx, &api_version, &kind)
        .await
        .map_err(|lookup| WriteFailure::Lookup(lookup.message()))?;
    let object_namespace = namespaced.then(|| target.namespace.to_owned());
    let api = api_for(ctx, &resource, object_namespace.as_deref());
    let (what, written) = if kind == "EgressFirewall" {
        // Shared by the namespace: merge with what others wrote, never clobber.
        let written = write_shared(ctx, &api, target.namespace, &name, |existing| {
            let merged = merge_egress_firewall(existing, &object, target.profile);
            (Some(merged.object), merged.notes)
        })
        .await;
        let what = format!(
            "merging NetReach's rules into EgressFirewall {}/{name}",
            target.namespace
        );
        (what, written)
    } else {
        if namespaced && let Some(owner) = target.owner {
            object["metadata"]["ownerReferences"] = json!([owner]);
        }
        let written = api
            .patch(&name, &apply_params(), &Patch::Apply(&object))
            .await
            .map(|_| Vec::new());
        (format!("applying {kind} {name}"), written)
    };
    let notes =
        written.map_err(|e| WriteFailure::Write(write_failure(&what, &kind, &object, &e)))?;
    Ok(Written {
        policy: AppliedPolicy {
            flavor: target.flavor.as_str().into(),
            api_version,
            kind,
            name,
            namespace: object_namespace,
        },
        notes,
    })
}

/// Server-side apply, which refuses fields the installed CRD does not declare whatever the
/// validation directive; strict also refuses duplicate fields.
fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force().validation_strict()
}

/// Creates `object` (409 when someone created it meanwhile) with strict field validation: a
/// plain create would drop fields the CRD lacks and succeed, and a rule missing a field can
/// allow more than the profile says. kube's `PostParams` carries no validation directive.
async fn create_strict(
    ctx: &Context,
    api: &Api<DynamicObject>,
    object: &Value,
) -> Result<(), kube::Error> {
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
    let request = kube::core::Request::new(api.resource_url())
        .create(&params, body)
        .map_err(kube::Error::BuildRequest)?;
    let (mut parts, body) = request.into_parts();
    // The query already holds fieldManager.
    parts.uri = format!("{}&fieldValidation=Strict", parts.uri)
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| {
            kube::Error::BuildRequest(kube::core::request::Error::Validation(e.to_string()))
        })?;
    ctx.client
        .request::<DynamicObject>(hyper::Request::from_parts(parts, body))
        .await
        .map(|_| ())
}

/// Why writing an emitted object failed: a refusal of a field the CRD lacks (retrying cannot
/// help) with what to do, or a failure the next pass retries.
fn write_failure(what: &str, kind: &str, object: &Value, error: &kube::Error) -> String {
    let kube::Error::Api(status) = error else {
        return format!(
            "{what} failed, retrying: {}",
            crate::error::error_chain(error)
        );
    };
    let message = &status.message;
    // A create with strict validation answers 400 "unknown field"; a server-side apply, always
    // strict, "field not declared in schema" (with a 500 on today's API servers).
    let unknown_field = (status.code == 400 && message.contains("unknown field"))
        || message.contains("field not declared in schema");
    if !unknown_field {
        return format!("{what} failed, retrying: {message} ({})", status.code);
    }
    let advice = if kind == "CiliumEgressGatewayPolicy"
        && object["spec"]["egressGateways"].is_array()
        && message.contains("egressGateways")
    {
        "this Cilium's CiliumEgressGatewayPolicy CRD has no egressGateways (several gateways): upgrade Cilium, or list one gateway in spec.policy.egressGateway"
    } else {
        "the installed CRD of this kind lacks a field NetReach emits: upgrade the CRD, or remove the flavor"
    };
    format!("{what} was refused: {message}; {advice}")
}

/// Deletes what an earlier pass applied and this one no longer emits. An object still
/// emitted but not written this pass (its failure is reported), or one whose removal failed,
/// stays on record so the next pass (or the finalizer) retries.
async fn prune(
    ctx: &Context,
    profile: &str,
    previous: &[AppliedPolicy],
    wanted: &BTreeSet<(String, String)>,
    applied: &mut Applied,
) {
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
            applied.policies.push(old.clone());
            continue;
        }
        if let Err(failure) = remove(ctx, profile, old).await {
            applied.failures.push(failure);
            applied.policies.push(old.clone());
        }
    }
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
        let namespace = old.namespace.clone().unwrap_or_default();
        return write_shared(ctx, &api, &namespace, &old.name, |existing| {
            let Some(existing) = existing else {
                return (None, Vec::new());
            };
            let body = unmerge_egress_firewall(existing, profile).map(|mut body| {
                body["apiVersion"] = Value::String(old.api_version.clone());
                body["kind"] = Value::String(old.kind.clone());
                body
            });
            (body, Vec::new())
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("taking NetReach's rules out of {place} failed, retrying: {e}"));
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

/// Per-namespace locks: the namespace's one EgressFirewall is read, merged and written by one
/// profile reconcile at a time, so two profiles never race each other.
#[derive(Default)]
pub struct NamespaceLocks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl NamespaceLocks {
    fn of(&self, namespace: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(namespace.to_owned()).or_default().clone()
    }
}

/// How often a read-merge-write of a shared object starts over after someone else wrote it.
const SHARED_WRITE_ATTEMPTS: usize = 8;

/// Read-merge-write of a shared object as a compare-and-swap: `merge` gets what was read and
/// returns the object to write (or `None` to delete it) and notes; the write carries the
/// read `resourceVersion` (a create when nothing was read, a delete with a precondition), and
/// a 409 (someone wrote in between) starts over from a fresh read. Returns the notes of the
/// write that went through.
async fn write_shared(
    ctx: &Context,
    api: &Api<DynamicObject>,
    namespace: &str,
    name: &str,
    merge: impl Fn(Option<&Value>) -> (Option<Value>, Vec<String>),
) -> Result<Vec<String>, kube::Error> {
    let lock = ctx.egress_firewall_locks.of(namespace);
    let _turn = lock.lock().await;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let existing = api
            .get_opt(name)
            .await?
            .map(|o| serde_json::to_value(o).unwrap_or_default());
        let version = existing
            .as_ref()
            .and_then(|e| e["metadata"]["resourceVersion"].as_str())
            .map(str::to_owned);
        let (wanted, notes) = merge(existing.as_ref());
        let written = match (wanted, version) {
            (None, None) => return Ok(notes),
            (None, Some(version)) => {
                let params = DeleteParams::default().preconditions(Preconditions {
                    resource_version: Some(version),
                    uid: None,
                });
                match api.delete(name, &params).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    other => other.map(|_| ()),
                }
            }
            (Some(object), None) => create_strict(ctx, api, &object).await,
            (Some(mut object), Some(version)) => {
                object["metadata"]["resourceVersion"] = Value::String(version);
                api.patch(name, &apply_params(), &Patch::Apply(&object))
                    .await
                    .map(|_| ())
            }
        };
        match written {
            Ok(()) => return Ok(notes),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < SHARED_WRITE_ATTEMPTS => {
                debug!(%namespace, %name, attempt, "written by someone else meanwhile, merging again");
            }
            Err(e) => return Err(e),
        }
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
