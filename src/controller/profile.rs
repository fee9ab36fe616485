//! The ConnectivityProfile controller: validates what the schema cannot (Accepted), resolves
//! host endpoints periodically (Resolved, addresses in status), and reports policy emission.

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
use crate::probe::dns::parse_nameserver;
use crate::probe::net::ProxyTarget;

pub use super::policy::MANAGER;
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

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

#[instrument(skip(profile, ctx), fields(namespace = profile.namespace().unwrap_or_default(), profile = profile.name_any()))]
pub async fn reconcile(profile: Arc<ConnectivityProfile>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&profile, &ctx).await;
    ctx.metrics.reconciled(
        "connectivityprofile",
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::reason),
    );
    result
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

async fn reconcile_inner(profile: &ConnectivityProfile, ctx: &Context) -> Result<Action> {
    let now = Time(Timestamp::now());
    let generation = profile.metadata.generation;
    let old = profile.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let spec = &profile.spec;
    let write_error = |source| Error::Write {
        what: format!("ConnectivityProfile {}", profile.name_any()),
        source,
    };

    if profile.metadata.deletion_timestamp.is_some() {
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
    let cluster_scoped_left = old
        .policies
        .iter()
        .any(|p| p.namespace.is_none() || p.kind == "EgressFirewall");
    policy::set_finalizer(
        ctx,
        profile,
        policy::needs_finalizer(profile) || cluster_scoped_left,
    )
    .await
    .map_err(write_error)?;

    status.observed_generation = generation;
    status.endpoint_count = Some(spec.endpoints.len() as i32);
    let problems = semantic_problems(spec);
    if problems.is_empty() {
        set_condition(
            &mut status.conditions,
            types::ACCEPTED,
            true,
            reasons::VALID,
            "the profile is valid",
            generation,
            &now,
        );
    } else {
        set_condition(
            &mut status.conditions,
            types::ACCEPTED,
            false,
            reasons::INVALID_SPEC,
            short_message(&problems.join("; ")),
            generation,
            &now,
        );
    }
    let refresh = refresh_interval(spec);
    let nameservers = spec
        .dns
        .as_ref()
        .map(|d| d.nameservers.clone())
        .unwrap_or_default();
    let mut resolved = Vec::new();
    let mut failures = Vec::new();
    for endpoint in &spec.endpoints {
        let Some(host) = &endpoint.host else { continue };
        if host.starts_with("*.") || host.parse::<IpAddr>().is_ok() {
            continue;
        }
        let previous = old.endpoints.iter().find(|e| e.name == endpoint.name);
        let entry = match ctx
            .resolvers
            .resolve(host, &nameservers, RESOLVE_TIMEOUT)
            .await
        {
            Ok(addresses) => {
                let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                let resolved_at = match previous {
                    Some(p) if p.addresses == addresses => p.resolved_at.clone(),
                    _ => Some(now.clone()),
                };
                let retained = retain(previous, &addresses, &now, refresh * 2);
                ResolvedEndpoint {
                    name: endpoint.name.clone(),
                    addresses,
                    resolved_at,
                    error: None,
                    retained,
                }
            }
            Err(failure) => {
                failures.push(format!("{} ({host}): {}", endpoint.name, failure.reason));
                ResolvedEndpoint {
                    name: endpoint.name.clone(),
                    // Keep the last known addresses: a resolver hiccup must not drop live traffic.
                    addresses: previous.map(|p| p.addresses.clone()).unwrap_or_default(),
                    resolved_at: previous.and_then(|p| p.resolved_at.clone()),
                    error: Some(short_message(&failure.message)),
                    retained: previous.map(|p| p.retained.clone()).unwrap_or_default(),
                }
            }
        };
        resolved.push(entry);
    }
    status.endpoints = resolved;
    if failures.is_empty() {
        set_condition(
            &mut status.conditions,
            types::RESOLVED,
            true,
            reasons::ALL_RESOLVED,
            "every host endpoint resolved",
            generation,
            &now,
        );
    } else {
        set_condition(
            &mut status.conditions,
            types::RESOLVED,
            false,
            reasons::RESOLUTION_FAILED,
            short_message(&failures.join("; ")),
            generation,
            &now,
        );
    }

    let addresses: BTreeMap<String, Vec<IpAddr>> = status
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
        .collect();
    let applied = policy::apply(ctx, profile, &addresses, &old.policies).await;
    status.policies = applied.policies.clone();
    match spec.policy.as_ref().filter(|p| !p.flavors.is_empty()) {
        None => set_condition(
            &mut status.conditions,
            types::POLICY_APPLIED,
            false,
            reasons::NOT_CONFIGURED,
            "no policy flavors requested",
            generation,
            &now,
        ),
        Some(_) if !applied.failures.is_empty() => {
            let reason = if applied.failures.iter().any(|f| f.contains("is not served")) {
                "CRDNotInstalled"
            } else {
                "ApplyFailed"
            };
            set_condition(
                &mut status.conditions,
                types::POLICY_APPLIED,
                false,
                reason,
                short_message(&applied.failures.join("; ")),
                generation,
                &now,
            );
        }
        Some(_) => {
            let mut message = format!("applied {} object(s)", applied.policies.len());
            if !applied.notes.is_empty() {
                message.push_str(&format!("; left out: {}", applied.notes.join("; ")));
            }
            set_condition(
                &mut status.conditions,
                types::POLICY_APPLIED,
                true,
                "Applied",
                short_message(&message),
                generation,
                &now,
            );
        }
    }
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
    Ok(Action::requeue(refresh))
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
}
