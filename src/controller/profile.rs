//! The ConnectivityProfile controller: validates what the schema cannot (Accepted), resolves
//! host endpoints periodically (Resolved, addresses in status), and reports policy emission.
//! A reconcile reads as [`observe`] (the DNS lookups), [`decide`] (pure) and [`apply`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::instrument;

use super::{Context, Error, Result, policy};
use crate::api::conditions::{conditions_equal_ignoring_time, set_condition, short_message};
use crate::api::conditions::{reasons, types};
use crate::api::profile::{ConnectivityProfileStatus, ResolvedEndpoint, RetainedAddress};
use crate::api::{ConnectivityProfile, ConnectivityProfileSpec};
use crate::probe::dns::{DnsFailure, parse_nameserver};
use crate::probe::net::ProxyTarget;

pub use super::policy::MANAGER;
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a pass that could not apply every flavor is tried again, at the latest.
const APPLY_RETRY: Duration = Duration::from_secs(30);

/// Problems the schema cannot see.
pub fn semantic_problems(spec: &ConnectivityProfileSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(proxy) = &spec.proxy
        && let Err(e) = ProxyTarget::parse(&proxy.url)
    {
        problems.push(format!("spec.proxy.url: {e}"));
    }
    for (i, server) in spec
        .dns
        .iter()
        .flat_map(|d| d.nameservers.iter())
        .enumerate()
    {
        if let Err(e) = parse_nameserver(server) {
            problems.push(format!("spec.dns.nameservers[{i}]: {e}"));
        }
    }
    let mut hosts = BTreeSet::new();
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        let target = endpoint
            .host
            .clone()
            .or_else(|| endpoint.cidr.clone())
            .unwrap_or_default();
        for port in &endpoint.ports {
            if !hosts.insert((target.clone(), port.port)) {
                problems.push(format!(
                    "spec.endpoints[{i}]: {target}:{} is declared by another endpoint too; merge them so results are not split",
                    port.port
                ));
            }
        }
    }
    problems
}

fn same(a: &ConnectivityProfileStatus, b: &ConnectivityProfileStatus) -> bool {
    let strip = |s: &ConnectivityProfileStatus| {
        s.endpoints
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.addresses.clone(),
                    e.error.clone(),
                    e.retained.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    a.observed_generation == b.observed_generation
        && a.endpoint_count == b.endpoint_count
        && conditions_equal_ignoring_time(&a.conditions, &b.conditions)
        && strip(a) == strip(b)
        && a.policies == b.policies
}

fn refresh_interval(spec: &ConnectivityProfileSpec) -> Duration {
    spec.policy
        .as_ref()
        .and_then(|p| p.refresh_interval.as_ref())
        .map(|d| d.as_duration())
        .unwrap_or(DEFAULT_REFRESH)
}

/// Carries addresses DNS stopped returning for two refresh intervals.
fn retain(
    previous: Option<&ResolvedEndpoint>,
    current: &[String],
    now: &Time,
    window: Duration,
) -> Vec<RetainedAddress> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let window = window.as_secs() as i64;
    let mut retained: Vec<RetainedAddress> = previous
        .retained
        .iter()
        .filter(|r| {
            !current.contains(&r.address) && now.0.as_second() - r.last_seen.0.as_second() < window
        })
        .cloned()
        .collect();
    for address in previous.addresses.iter().filter(|a| !current.contains(a)) {
        if !retained.iter().any(|r| &r.address == address) {
            retained.push(RetainedAddress {
                address: address.clone(),
                last_seen: now.clone(),
            });
        }
    }
    retained.sort_by(|a, b| a.address.cmp(&b.address));
    retained
}

#[instrument(skip(profile, ctx), fields(namespace = profile.namespace().unwrap_or_default(), profile = profile.name_any()))]
pub async fn reconcile(profile: Arc<ConnectivityProfile>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_steps(&profile, &ctx).await;
    ctx.metrics.reconciled(
        "connectivityprofile",
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::reason),
    );
    result
}

async fn reconcile_steps(profile: &ConnectivityProfile, ctx: &Context) -> Result<Action> {
    let observed = observe(ctx, profile).await;
    let plan = decide(profile, &observed, &Time(Timestamp::now()));
    apply(ctx, profile, plan).await
}

/// What one reconcile of a profile reads: each host endpoint's addresses, resolved now.
pub struct ObservedProfile {
    /// By endpoint name: the host and what resolving it gave.
    pub resolutions: BTreeMap<String, (String, std::result::Result<Vec<IpAddr>, DnsFailure>)>,
}

async fn observe(ctx: &Context, profile: &ConnectivityProfile) -> ObservedProfile {
    let mut resolutions = BTreeMap::new();
    if profile.metadata.deletion_timestamp.is_some() {
        return ObservedProfile { resolutions };
    }
    let spec = &profile.spec;
    let nameservers = spec
        .dns
        .as_ref()
        .map(|d| d.nameservers.clone())
        .unwrap_or_default();
    for endpoint in &spec.endpoints {
        let Some(host) = &endpoint.host else { continue };
        if host.starts_with("*.") || host.parse::<IpAddr>().is_ok() {
            continue;
        }
        let resolved = ctx
            .resolvers
            .resolve(host, &nameservers, RESOLVE_TIMEOUT)
            .await;
        resolutions.insert(endpoint.name.clone(), (host.clone(), resolved));
    }
    ObservedProfile { resolutions }
}

/// What a profile reconcile does, decided without a client or a clock.
#[derive(Debug, PartialEq)]
pub enum ProfilePlan {
    /// The profile is being deleted: clean up what it applied, then release it.
    Cleanup,
    Converge {
        /// Whether the cleanup finalizer must be on the profile.
        finalizer: bool,
        /// The status with every part but the applied policies decided.
        status: Box<ConnectivityProfileStatus>,
        /// The addresses each endpoint may be reached at (current and retained).
        addresses: BTreeMap<String, Vec<IpAddr>>,
        requeue: Duration,
    },
}

/// Decides a profile reconcile from what was observed and the time.
pub fn decide(
    profile: &ConnectivityProfile,
    observed: &ObservedProfile,
    now: &Time,
) -> ProfilePlan {
    if profile.metadata.deletion_timestamp.is_some() {
        return ProfilePlan::Cleanup;
    }
    let generation = profile.metadata.generation;
    let old = profile.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let spec = &profile.spec;
    // Cluster-scoped objects and the shared EgressFirewall need the finalizer to be cleaned up,
    // also when the profile stopped asking for them but they are still on record.
    let cluster_scoped_left = old
        .policies
        .iter()
        .any(|p| p.namespace.is_none() || p.kind == "EgressFirewall");
    let finalizer = policy::needs_finalizer(profile) || cluster_scoped_left;
    status.observed_generation = generation;
    status.endpoint_count = Some(spec.endpoints.len() as i32);
    let problems = semantic_problems(spec);
    let (accepted, reason, message) = if problems.is_empty() {
        (true, reasons::VALID, "the profile is valid".to_owned())
    } else {
        (
            false,
            reasons::INVALID_SPEC,
            short_message(&problems.join("; ")),
        )
    };
    set_condition(
        &mut status.conditions,
        types::ACCEPTED,
        accepted,
        reason,
        message,
        generation,
        now,
    );
    let refresh = refresh_interval(spec);
    let (endpoints, failures) = resolved_endpoints(spec, &old, observed, now, refresh);
    status.endpoints = endpoints;
    let (resolved, reason, message) = if failures.is_empty() {
        (
            true,
            reasons::ALL_RESOLVED,
            "every host endpoint resolved".to_owned(),
        )
    } else {
        (
            false,
            reasons::RESOLUTION_FAILED,
            short_message(&failures.join("; ")),
        )
    };
    set_condition(
        &mut status.conditions,
        types::RESOLVED,
        resolved,
        reason,
        message,
        generation,
        now,
    );
    let addresses = allowed_addresses(&status);
    ProfilePlan::Converge {
        finalizer,
        status: Box::new(status),
        addresses,
        requeue: refresh,
    }
}

/// Each host endpoint's entry in status from what resolving it gave, in declaration order,
/// and the failures in words.
fn resolved_endpoints(
    spec: &ConnectivityProfileSpec,
    old: &ConnectivityProfileStatus,
    observed: &ObservedProfile,
    now: &Time,
    refresh: Duration,
) -> (Vec<ResolvedEndpoint>, Vec<String>) {
    let mut failures = Vec::new();
    let mut endpoints: Vec<ResolvedEndpoint> = observed
        .resolutions
        .iter()
        .map(|(name, (host, resolved))| {
            let previous = old.endpoints.iter().find(|e| &e.name == name);
            match resolved {
                Ok(addresses) => {
                    let addresses: Vec<String> =
                        addresses.iter().map(ToString::to_string).collect();
                    let resolved_at = match previous {
                        Some(p) if p.addresses == addresses => p.resolved_at.clone(),
                        _ => Some(now.clone()),
                    };
                    let retained = retain(previous, &addresses, now, refresh * 2);
                    ResolvedEndpoint {
                        name: name.clone(),
                        addresses,
                        resolved_at,
                        error: None,
                        retained,
                    }
                }
                Err(failure) => {
                    failures.push(format!("{name} ({host}): {}", failure.reason));
                    // The last known addresses stay allowed through a resolver failure.
                    ResolvedEndpoint {
                        name: name.clone(),
                        addresses: previous.map(|p| p.addresses.clone()).unwrap_or_default(),
                        resolved_at: previous.and_then(|p| p.resolved_at.clone()),
                        error: Some(short_message(&failure.message)),
                        retained: previous.map(|p| p.retained.clone()).unwrap_or_default(),
                    }
                }
            }
        })
        .collect();
    endpoints.sort_by_key(|e| spec.endpoints.iter().position(|d| d.name == e.name));
    (endpoints, failures)
}

/// The addresses each endpoint may be reached at: current and retained.
fn allowed_addresses(status: &ConnectivityProfileStatus) -> BTreeMap<String, Vec<IpAddr>> {
    status
        .endpoints
        .iter()
        .map(|e| {
            let ips = e
                .addresses
                .iter()
                .chain(e.retained.iter().map(|r| &r.address))
                .filter_map(|a| a.parse().ok())
                .collect();
            (e.name.clone(), ips)
        })
        .collect()
}

/// Sets `PolicyApplied` from what applying the flavors did.
fn policy_condition(
    status: &mut ConnectivityProfileStatus,
    spec: &ConnectivityProfileSpec,
    applied: &policy::Applied,
    generation: Option<i64>,
    now: &Time,
) {
    status.policies = applied.policies.clone();
    let (value, reason, message) = if spec.policy.as_ref().is_none_or(|p| p.flavors.is_empty()) {
        (
            false,
            reasons::NOT_CONFIGURED,
            "no policy flavors requested".to_owned(),
        )
    } else if !applied.failures.is_empty() {
        let reason = if applied.failures.iter().any(|f| f.contains("is not served")) {
            "CRDNotInstalled"
        } else {
            "ApplyFailed"
        };
        (false, reason, short_message(&applied.failures.join("; ")))
    } else {
        let mut message = format!("applied {} object(s)", applied.policies.len());
        if !applied.notes.is_empty() {
            message.push_str(&format!("; left out: {}", applied.notes.join("; ")));
        }
        (true, "Applied", short_message(&message))
    };
    set_condition(
        &mut status.conditions,
        types::POLICY_APPLIED,
        value,
        reason,
        message,
        generation,
        now,
    );
}

/// The writes: the finalizer, the policy objects, then the status when it changed.
async fn apply(ctx: &Context, profile: &ConnectivityProfile, plan: ProfilePlan) -> Result<Action> {
    let write_error = |source| Error::Write {
        what: format!("ConnectivityProfile {}", profile.name_any()),
        source,
    };
    let (finalizer, mut status, addresses, requeue) = match plan {
        ProfilePlan::Cleanup => {
            if profile.finalizers().iter().any(|f| f == policy::FINALIZER) {
                let failures = policy::cleanup(ctx, profile).await;
                if !failures.is_empty() {
                    return Err(Error::Cleanup(failures.join("; ")));
                }
                policy::set_finalizer(ctx, profile, false)
                    .await
                    .map_err(write_error)?;
            }
            return Ok(Action::await_change());
        }
        ProfilePlan::Converge {
            finalizer,
            status,
            addresses,
            requeue,
        } => (finalizer, status, addresses, requeue),
    };
    policy::set_finalizer(ctx, profile, finalizer)
        .await
        .map_err(write_error)?;
    let old = profile.status.clone().unwrap_or_default();
    let applied = policy::apply(ctx, profile, &addresses, &old.policies).await;
    policy_condition(
        &mut status,
        &profile.spec,
        &applied,
        profile.metadata.generation,
        &Time(Timestamp::now()),
    );
    if !same(&old, &status) {
        let api: Api<ConnectivityProfile> =
            Api::namespaced(ctx.client.clone(), &profile.namespace().unwrap_or_default());
        let body = json!({"apiVersion": ConnectivityProfile::api_version(&()), "kind": ConnectivityProfile::kind(&()), "status": status});
        api.patch_status(
            &profile.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| Error::Write {
            what: format!("status of ConnectivityProfile {}", profile.name_any()),
            source,
        })?;
    }
    // A failed apply leaves the cluster short of the profile: try again well before the next
    // refresh.
    if applied.failures.is_empty() {
        Ok(Action::requeue(requeue))
    } else {
        Ok(Action::requeue(requeue.min(APPLY_RETRY)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_targets_and_bad_proxy_urls_are_not_accepted() {
        let spec: ConnectivityProfileSpec = serde_json::from_value(json!({
            "proxy": {"url": "http://proxy:99999"},
            "endpoints": [
                {"name": "a", "host": "a.example.com", "ports": [{"port": 443, "protocol": "HTTPS"}]},
                {"name": "b", "host": "a.example.com", "ports": [{"port": 443, "protocol": "TLS"}]}
            ]
        }))
        .unwrap();
        let problems = semantic_problems(&spec);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("spec.proxy.url"));
        assert!(problems[1].contains("a.example.com:443 is declared by another endpoint"));
    }

    fn profile(flavors: &[&str]) -> ConnectivityProfile {
        serde_json::from_value(json!({
            "apiVersion": "netreach.dev/v1alpha1", "kind": "ConnectivityProfile",
            "metadata": {"name": "vendor", "namespace": "mdm", "generation": 2},
            "spec": {
                "endpoints": [
                    {"name": "api", "host": "api.example.com", "ports": [{"port": 443, "protocol": "HTTPS"}]},
                    {"name": "net", "cidr": "192.0.2.0/24", "ports": [{"port": 443, "protocol": "TLS"}]}
                ],
                "policy": {"flavors": flavors, "refreshInterval": "60s"}
            }
        }))
        .unwrap()
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn resolved(addresses: &[&str]) -> ObservedProfile {
        let ips = addresses.iter().map(|a| a.parse().unwrap()).collect();
        ObservedProfile {
            resolutions: BTreeMap::from([(
                "api".to_owned(),
                ("api.example.com".to_owned(), Ok(ips)),
            )]),
        }
    }

    fn converged(
        plan: ProfilePlan,
    ) -> (
        bool,
        ConnectivityProfileStatus,
        BTreeMap<String, Vec<IpAddr>>,
    ) {
        match plan {
            ProfilePlan::Converge {
                finalizer,
                status,
                addresses,
                ..
            } => (finalizer, *status, addresses),
            ProfilePlan::Cleanup => panic!("not deleting"),
        }
    }

    fn condition<'a>(status: &'a ConnectivityProfileStatus, type_: &str) -> (&'a str, &'a str) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_deleted_profile_is_cleaned_up() {
        let mut deleted = profile(&["NetworkPolicy"]);
        deleted.metadata.deletion_timestamp = Some(at(1));
        assert_eq!(
            decide(&deleted, &resolved(&[]), &at(2)),
            ProfilePlan::Cleanup
        );
    }

    #[test]
    fn resolved_addresses_are_allowed_and_cluster_scoped_flavors_need_the_finalizer() {
        let (finalizer, status, addresses) = converged(decide(
            &profile(&["NetworkPolicy"]),
            &resolved(&["192.0.2.7"]),
            &at(10),
        ));
        assert!(!finalizer, "namespaced objects are owned, not finalized");
        assert_eq!(condition(&status, types::RESOLVED).0, "True");
        assert_eq!(condition(&status, types::ACCEPTED).0, "True");
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(addresses["api"], ["192.0.2.7".parse::<IpAddr>().unwrap()]);
        let (finalizer, ..) = converged(decide(
            &profile(&["AdminNetworkPolicy"]),
            &resolved(&["192.0.2.7"]),
            &at(10),
        ));
        assert!(finalizer);
    }

    #[test]
    fn an_address_dns_stops_returning_stays_allowed_for_two_refresh_intervals() {
        let mut current = profile(&["NetworkPolicy"]);
        let (_, first, _) = converged(decide(&current, &resolved(&["192.0.2.7"]), &at(10)));
        current.status = Some(first);
        let (_, moved, addresses) = converged(decide(&current, &resolved(&["192.0.2.8"]), &at(20)));
        assert_eq!(moved.endpoints[0].retained[0].address, "192.0.2.7");
        assert_eq!(addresses["api"].len(), 2, "{addresses:?}");
        current.status = Some(moved);
        let (_, later, addresses) =
            converged(decide(&current, &resolved(&["192.0.2.8"]), &at(200)));
        assert!(
            later.endpoints[0].retained.is_empty(),
            "dropped after 120 s"
        );
        assert_eq!(addresses["api"].len(), 1);
    }

    #[test]
    fn a_resolver_failure_keeps_the_last_known_addresses() {
        let mut current = profile(&["NetworkPolicy"]);
        let (_, first, _) = converged(decide(&current, &resolved(&["192.0.2.7"]), &at(10)));
        current.status = Some(first);
        let failed = ObservedProfile {
            resolutions: BTreeMap::from([(
                "api".to_owned(),
                (
                    "api.example.com".to_owned(),
                    Err(DnsFailure {
                        reason: crate::api::result::Reason::DnsTimeout,
                        message: "no answer within 5s".into(),
                    }),
                ),
            )]),
        };
        let (_, status, addresses) = converged(decide(&current, &failed, &at(20)));
        assert_eq!(
            condition(&status, types::RESOLVED),
            ("False", reasons::RESOLUTION_FAILED)
        );
        assert_eq!(status.endpoints[0].addresses, ["192.0.2.7"]);
        assert_eq!(
            status.endpoints[0].error.as_deref(),
            Some("no answer within 5s")
        );
        assert_eq!(addresses["api"].len(), 1);
    }

    #[test]
    fn policy_applied_says_what_applying_did() {
        let spec = profile(&["NetworkPolicy"]).spec;
        let mut status = ConnectivityProfileStatus::default();
        let failed = policy::Applied {
            failures: vec!["AdminNetworkPolicy is not served by this cluster".into()],
            ..Default::default()
        };
        policy_condition(&mut status, &spec, &failed, Some(2), &at(1));
        assert_eq!(
            condition(&status, types::POLICY_APPLIED),
            ("False", "CRDNotInstalled")
        );
        policy_condition(
            &mut status,
            &spec,
            &policy::Applied::default(),
            Some(2),
            &at(2),
        );
        assert_eq!(
            condition(&status, types::POLICY_APPLIED),
            ("True", "Applied")
        );
        let unconfigured = profile(&[]).spec;
        policy_condition(
            &mut status,
            &unconfigured,
            &policy::Applied::default(),
            Some(2),
            &at(3),
        );
        assert_eq!(
            condition(&status, types::POLICY_APPLIED),
            ("False", reasons::NOT_CONFIGURED)
        );
    }
}
