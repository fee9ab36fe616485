//! Every read an EgressCheck reconcile makes, in one place: the check as the API server has it,
//! its profile (from the profile watch's store), the CA bundles its ports reference, its runs
//! (from the Job index), the results of the newest finished run, and the probe-spec ConfigMap
//! of a run that may have lost its Job.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use tracing::warn;

use super::jobs::{JobEnd, RunJob};
use crate::api::conditions::short_message;
use crate::api::endpoint::CaBundleRef;
use crate::api::result::ProbeResult;
use crate::api::source::EndpointSource;
use crate::api::{ConnectivityProfile, EgressCheck};
use crate::controller::run;
use crate::controller::{Context, Error, Result};
use crate::probe::spec;

/// The check's profile, as far as it could be found.
#[derive(Clone, Debug)]
pub enum ProfileLookup {
    /// The check lists its own endpoints.
    NotReferenced,
    Found(Box<ConnectivityProfile>),
    Missing {
        name: String,
    },
    /// It exists but does not decode.
    Undecodable {
        name: String,
        error: String,
    },
}

/// Why a run failed: a summary that names the Job but not its pod and leaves out what the
/// cluster adds (runtime messages can carry container ids), so the same failure reads the
/// same in every run; and that detail, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFailure {
    pub summary: String,
    pub detail: Option<String>,
}

impl RunFailure {
    pub fn new(summary: String, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self {
            summary,
            detail: (!detail.trim().is_empty()).then(|| short_message(detail.trim())),
        }
    }
}

/// The newest finished run, read for this reconcile.
#[derive(Clone, Debug)]
pub struct FinishedRun {
    pub job: RunJob,
    pub outcome: std::result::Result<Vec<ProbeResult>, RunFailure>,
}

/// What one reconcile knows, read once.
#[derive(Clone, Debug)]
pub struct Observed {
    pub check: EgressCheck,
    pub profile: ProfileLookup,
    /// PEM text of each CA bundle a port references, by (endpoint, port), or why one cannot be
    /// read (a spec problem only a change fixes).
    pub ca_bundles: std::result::Result<BTreeMap<(String, u16), String>, String>,
    /// The check's probe Jobs, by run number.
    pub jobs: Vec<RunJob>,
    /// The newest finished run, when it has not been read before.
    pub finished: Option<FinishedRun>,
    /// The probe-spec ConfigMap named after the next run, when one is there: a run started
    /// whose Job has not appeared yet, or was deleted.
    pub next_run_config: Option<ConfigMap>,
}

/// Reads what the reconcile of `check` needs.
pub async fn observe(ctx: &Context, check: EgressCheck) -> Result<Observed> {
    let namespace = check.namespace().unwrap_or_default();
    let name = check.name_any();
    let uid = check.metadata.uid.clone().unwrap_or_default();
    let profile = profile(ctx, &check, &namespace).await;
    let ca_bundles = match &profile {
        ProfileLookup::Missing { .. } | ProfileLookup::Undecodable { .. } => Ok(BTreeMap::new()),
        ProfileLookup::NotReferenced | ProfileLookup::Found(_) => {
            let profile_spec = match &profile {
                ProfileLookup::Found(p) => Some(&p.spec),
                _ => None,
            };
            match EndpointSource::from_check(&check.spec, profile_spec) {
                Some(source) => ca_bundles(ctx, &namespace, &ca_bundle_refs(&source)).await?,
                None => Ok(BTreeMap::new()),
            }
        }
    };
    let index = ctx.job_index(&namespace);
    index.ready().await;
    let jobs = index.runs(&namespace, &name, &uid);
    let status = check.status.clone().unwrap_or_default();
    // A run the status already has a newer one than (a later run whose Job vanished) is not
    // read again, nor one this replica has read.
    let last_recorded = status.last_run.as_ref().and_then(|r| r.run);
    let newest_finished = jobs.iter().rev().find(|j| j.finished());
    let finished = match newest_finished {
        Some(job)
            if last_recorded <= Some(job.run) && !ctx.collected(&namespace, &name, &job.uid) =>
        {
            Some(FinishedRun {
                job: job.clone(),
                outcome: collect(ctx, &namespace, job).await?,
            })
        }
        _ => None,
    };
    // Only a run that was started and has no Job leaves its ConfigMap without one. Right
    // after reading a finished run there is none to look for: a run started after it would
    // be in flight, and one deleted is found by the reconcile its deletion triggers.
    let next_run_config = if finished.is_none() && jobs.iter().all(RunJob::finished) {
        let next = super::next_run_number(&jobs, &status);
        let config_name = run::job_name(&name, next);
        let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
        maps.get_opt(&config_name)
            .await
            .map_err(|source| Error::Read {
                what: format!("ConfigMap {namespace}/{config_name}"),
                source,
            })?
            .filter(|cm| cm.owner_references().iter().any(|o| o.uid == uid))
    } else {
        None
    };
    Ok(Observed {
        check,
        profile,
        ca_bundles,
        jobs,
        finished,
        next_run_config,
    })
}

/// The referenced profile from the profile watch's store.
async fn profile(ctx: &Context, check: &EgressCheck, namespace: &str) -> ProfileLookup {
    let Some(reference) = &check.spec.profile_ref else {
        return ProfileLookup::NotReferenced;
    };
    let store = ctx.profile_store(namespace);
    if store.wait_until_ready().await.is_err() {
        warn!("the profile watch stopped; profiles read as missing until it restarts");
    }
    let key =
        ObjectRef::<DeserializeGuard<ConnectivityProfile>>::new(&reference.name).within(namespace);
    match store.get(&key).as_deref() {
        Some(DeserializeGuard(Ok(profile))) => ProfileLookup::Found(Box::new(profile.clone())),
        Some(DeserializeGuard(Err(invalid))) => ProfileLookup::Undecodable {
            name: reference.name.clone(),
            error: invalid.error.to_string(),
        },
        None => ProfileLookup::Missing {
            name: reference.name.clone(),
        },
    }
}

/// The CA bundle references of every endpoint×port, by (endpoint, port).
fn ca_bundle_refs(source: &EndpointSource<'_>) -> BTreeMap<(String, u16), CaBundleRef> {
    let mut refs = BTreeMap::new();
    let default = source
        .defaults
        .and_then(|d| d.tls.as_ref())
        .and_then(|t| t.ca_bundle_ref.clone());
    for endpoint in source.endpoints {
        for port in &endpoint.ports {
            let found = port
                .tls
                .as_ref()
                .and_then(|t| t.ca_bundle_ref.clone())
                .or_else(|| endpoint.tls.as_ref().and_then(|t| t.ca_bundle_ref.clone()))
                .or_else(|| default.clone());
            if let Some(found) = found {
                refs.insert((endpoint.name.clone(), port.port as u16), found);
            }
        }
    }
    refs
}

/// Reads the CA bundles the ports reference (public certificates, not secrets). The outer
/// error is the API failing us; the inner one a bundle that is not there.
async fn ca_bundles(
    ctx: &Context,
    namespace: &str,
    refs: &BTreeMap<(String, u16), CaBundleRef>,
) -> Result<std::result::Result<BTreeMap<(String, u16), String>, String>> {
    let mut found = BTreeMap::new();
    for (target, reference) in refs {
        let key = reference.key.clone().unwrap_or_else(|| "ca.crt".into());
        let pem = if let Some(name) = &reference.config_map {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
            let map = api.get_opt(name).await.map_err(|source| Error::Read {
                what: format!("ConfigMap {namespace}/{name}"),
                source,
            })?;
            match map.and_then(|cm| cm.data.and_then(|d| d.get(&key).cloned())) {
                Some(pem) => pem,
                None => {
                    return Ok(Err(format!(
                        "CA bundle ConfigMap {namespace}/{name} has no key {key}"
                    )));
                }
            }
        } else if let Some(name) = &reference.secret {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            let secret = api.get_opt(name).await.map_err(|source| Error::Read {
                what: format!("Secret {namespace}/{name}"),
                source,
            })?;
            let value = secret.and_then(|s| {
                s.data.and_then(|d| {
                    d.get(&key)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                })
            });
            match value {
                Some(pem) => pem,
                None => {
                    return Ok(Err(format!(
                        "CA bundle Secret {namespace}/{name} has no key {key}"
                    )));
                }
            }
        } else {
            continue;
        };
        found.insert(target.clone(), pem);
    }
    Ok(Ok(found))
}

/// Reads a finished run's rows from its pod: the log holds them, the termination message
/// vouches for them. The pod itself never talks to the API.
///
/// The outer error is the API failing us (retried); the inner one is the run having failed.
async fn collect(
    ctx: &Context,
    namespace: &str,
    job: &RunJob,
) -> Result<std::result::Result<Vec<ProbeResult>, RunFailure>> {
    let job_name = &job.name;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("job-name={job_name}")))
        .await
        .map_err(|source| Error::Read {
            what: format!("the pods of probe job {namespace}/{job_name}"),
            source,
        })?;
    let (job_failed, failed_reason, failed_message) = match &job.end {
        Some(JobEnd::Failed(failure)) => (
            true,
            failure
                .reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            failure.message.clone().unwrap_or_default(),
        ),
        _ => (false, String::new(), String::new()),
    };
    let Some(pod) = listed
        .items
        .into_iter()
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
    else {
        return Ok(Err(if job_failed {
            RunFailure::new(
                format!("probe job {job_name} failed before its pod ran{failed_reason}"),
                failed_message,
            )
        } else {
            RunFailure::new(
                format!("the pod of probe job {job_name} is gone; its results are lost"),
                "",
            )
        }));
    };
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "probe"))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone());
    let Some(terminated) = terminated else {
        return Ok(Err(RunFailure::new(
            format!("the probe pod of job {job_name} did not finish{failed_reason}"),
            failed_message,
        )));
    };
    let message = terminated.message.clone().unwrap_or_default();
    if terminated.exit_code != 0 {
        let reason = terminated
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        return Ok(Err(RunFailure::new(
            format!(
                "the probe pod of job {job_name} exited with {}{reason}; its log says why, and an image other than netreach's (spec.runner.image, --probe-image) fails this way",
                terminated.exit_code
            ),
            message,
        )));
    }
    let log = pods
        .logs(
            &pod.name_any(),
            &LogParams {
                container: Some("probe".into()),
                ..LogParams::default()
            },
        )
        .await
        .map_err(|source| Error::Read {
            what: format!("the log of probe pod {namespace}/{}", pod.name_any()),
            source,
        })?;
    Ok(spec::decode(&log, &message).map_err(|e| {
        RunFailure::new(
            format!("the results of probe job {job_name} did not come back whole"),
            e.to_string(),
        )
    }))
}

/// The check as the API server has it now: the controller caches only what routes triggers,
/// and what a run changes, which events it deserves and which run comes next are all decided
/// against the status, which must not be older than this controller's last write. None when
/// there is nothing to do: the check is gone (its series go with it) or does not decode (it
/// waits for a change).
pub async fn read_fresh(namespace: &str, name: &str, ctx: &Context) -> Result<Option<EgressCheck>> {
    let api: Api<DeserializeGuard<EgressCheck>> = Api::namespaced(ctx.client.clone(), namespace);
    let found = api.get_opt(name).await.map_err(|source| Error::Read {
        what: format!("EgressCheck {namespace}/{name}"),
        source,
    })?;
    Ok(match found {
        Some(DeserializeGuard(Ok(fresh))) => Some(fresh),
        Some(DeserializeGuard(Err(invalid))) => {
            warn!(
                namespace,
                name,
                error = %invalid.error,
                "skipping an EgressCheck that does not decode until it changes; correct it and apply it again"
            );
            None
        }
        None => {
            ctx.metrics.forget_check(namespace, name);
            None
        }
    })
}
