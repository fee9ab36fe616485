//! The EgressCheck controller: runs probe Jobs when a run is due, adopts the one in flight,
//! collects results from the finished pod (log + termination message, no API credentials in
//! the pod), and writes status and events only when something changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::check_status::{
    failure_text, key_generation, merge_results, push_history, record_run_failure,
    result_conditions, results_changed, same_status, summarize,
};
use super::outages::{self, Thresholds};
use super::run::{
    self, CHECK_LABEL, FinishedRun, RUN_KEY_ANNOTATION, RUN_LABEL, TRIGGER_ANNOTATION,
};
use super::{Context, Error, Result};
use crate::api::check::{EgressCheckStatus, RunRecord};
use crate::api::conditions::{reasons, types};
use crate::api::endpoint::CaBundleRef;
use crate::api::{ConnectivityProfile, EgressCheck};
use crate::probe::plan::{EndpointSource, Target};
use crate::probe::result::ProbeResult;
use crate::probe::spec;
use crate::status::{set_condition, short_message};

pub const MANAGER: &str = "netreach/egresscheck";
const DEFAULT_HISTORY: i32 = 5;

pub(super) fn job_finished(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find_map(|c| match (c.type_.as_str(), c.status.as_str()) {
            ("Complete", "True") => Some("Complete"),
            ("Failed", "True") => Some("Failed"),
            _ => None,
        })
}

fn job_run(job: &Job) -> i64 {
    job.labels()
        .get(RUN_LABEL)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn job_completion(job: &Job) -> Option<Time> {
    let status = job.status.as_ref()?;
    status.completion_time.clone().or_else(|| {
        status
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Failed")
            .and_then(|c| c.last_transition_time.clone())
    })
}

fn record_of(job: &Job) -> RunRecord {
    let annotations = job.annotations();
    RunRecord {
        run: Some(job_run(job)),
        job_name: Some(job.name_any()),
        run_key: annotations.get(RUN_KEY_ANNOTATION).cloned(),
        trigger: annotations.get(TRIGGER_ANNOTATION).cloned(),
        start_time: job.status.as_ref().and_then(|s| s.start_time.clone()),
        completion_time: job_completion(job),
        ..RunRecord::default()
    }
}

/// Reads a CA bundle a target references into the plan (public certificates, not secrets).
async fn resolve_ca_bundles(
    ctx: &Context,
    namespace: &str,
    targets: &mut [Target],
    refs: &BTreeMap<(String, u16), CaBundleRef>,
) -> Result<()> {
    for target in targets.iter_mut() {
        let Some(reference) = refs.get(&(target.endpoint.clone(), target.port)) else {
            continue;
        };
        let key = reference.key.clone().unwrap_or_else(|| "ca.crt".into());
        let pem = if let Some(name) = &reference.config_map {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
            api.get_opt(name)
                .await
                .map_err(|source| Error::Read {
                    what: format!("ConfigMap {namespace}/{name}"),
                    source,
                })?
                .and_then(|cm| cm.data.and_then(|d| d.get(&key).cloned()))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "CA bundle ConfigMap {namespace}/{name} has no key {key}"
                    ))
                })?
        } else if let Some(name) = &reference.secret {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            api.get_opt(name)
                .await
                .map_err(|source| Error::Read {
                    what: format!("Secret {namespace}/{name}"),
                    source,
                })?
                .and_then(|s| {
                    s.data.and_then(|d| {
                        d.get(&key)
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    })
                })
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "CA bundle Secret {namespace}/{name} has no key {key}"
                    ))
                })?
        } else {
            continue;
        };
        target.tls.ca_bundle_pem = Some(pem);
    }
    Ok(())
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

/// Why a run failed: a summary that names the Job but not its pod and leaves out what the
/// cluster adds (runtime messages can carry container ids), so the same failure reads the
/// same in every run; and that detail, for people.
#[derive(Debug)]
struct RunFailure {
    summary: String,
    detail: Option<String>,
}

impl RunFailure {
    fn new(summary: String, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self {
            summary,
            detail: (!detail.trim().is_empty()).then(|| short_message(detail.trim())),
        }
    }
}

/// Reads a finished run's rows from its pod: the log holds them, the termination message
/// vouches for them. The pod itself never talks to the API.
///
/// The outer error is the API failing us (retried); the inner one is the run having failed.
async fn collect(
    ctx: &Context,
    namespace: &str,
    job: &Job,
) -> Result<std::result::Result<Vec<ProbeResult>, RunFailure>> {
    let job_name = job.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("job-name={job_name}")))
        .await
        .map_err(|source| Error::Read {
            what: format!("the pods of probe job {namespace}/{job_name}"),
            source,
        })?;
    let job_failed = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"));
    let failed_reason = job_failed
        .and_then(|c| c.reason.clone())
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let failed_message = job_failed
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    let Some(pod) = listed
        .items
        .into_iter()
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
    else {
        return Ok(Err(match job_failed {
            Some(_) => RunFailure::new(
                format!("probe job {job_name} failed before its pod ran{failed_reason}"),
                failed_message,
            ),
            None => RunFailure::new(
                format!("the pod of probe job {job_name} is gone; its results are lost"),
                "",
            ),
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

/// Deletes finished runs beyond the history limit (their ConfigMaps with them).
async fn prune(ctx: &Context, namespace: &str, jobs: &[Job], keep: usize) {
    let mut finished: Vec<&Job> = jobs.iter().filter(|j| job_finished(j).is_some()).collect();
    finished.sort_by_key(|j| std::cmp::Reverse(job_run(j)));
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    for job in finished.into_iter().skip(keep.max(1)) {
        let name = job.name_any();
        if let Err(e) = jobs_api.delete(&name, &DeleteParams::background()).await {
            debug!(%name, error = %e, "pruning an old probe job failed");
        }
        let _ = maps.delete(&name, &DeleteParams::default()).await;
    }
}

async fn publish(ctx: &Context, check: &EgressCheck, warning: bool, reason: &str, note: String) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(short_message(&note)),
        action: "Probe".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder().publish(&event, &check.object_ref(&())).await {
        warn!(error = %e, reason, "publishing an event failed");
    }
}

/// Marks the check Stalled (and not Ready) for a reason only a change can fix.
fn stall(
    status: &mut EgressCheckStatus,
    generation: Option<i64>,
    reason: &str,
    message: &str,
    now: &Time,
) {
    status.observed_generation = generation;
    set_condition(
        &mut status.conditions,
        types::STALLED,
        true,
        reason,
        message,
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        types::READY,
        false,
        reason,
        message,
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        types::RECONCILING,
        false,
        reason,
        message,
        generation,
        now,
    );
}

async fn write_status(
    ctx: &Context,
    check: &EgressCheck,
    status: &EgressCheckStatus,
) -> Result<()> {
    let api: Api<EgressCheck> =
        Api::namespaced(ctx.client.clone(), &check.namespace().unwrap_or_default());
    let body = json!({"apiVersion": EgressCheck::api_version(&()), "kind": EgressCheck::kind(&()), "status": status});
    api.patch_status(
        &check.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Write {
        what: format!("status of EgressCheck {}", check.name_any()),
        source,
    })?;
    ctx.status_writes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

#[instrument(skip_all, fields(namespace = namespace, check = name))]
pub async fn reconcile(namespace: &str, name: &str, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = match read_fresh(namespace, name, &ctx).await {
        Ok(Some(fresh)) => reconcile_inner(&fresh, &ctx).await,
        Ok(None) => Ok(Action::await_change()),
        Err(e) => Err(e),
    };
    ctx.metrics.reconciled(
        "egresscheck",
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::reason),
    );
    result
}

/// The number the next run gets: above every run the Jobs or the status know of.
fn next_run_number(jobs: &[Job], status: &EgressCheckStatus) -> i64 {
    jobs.iter()
        .map(job_run)
        .chain(status.last_run.as_ref().and_then(|r| r.run))
        .chain(status.current_run.as_ref().and_then(|r| r.run))
        .max()
        .unwrap_or(0)
        + 1
}

/// How long a run's ConfigMap may go without its Job: the Job is created right after it, by
/// this replica or (briefly, while leadership changes hands) another.
const JOB_CREATION_GRACE: Duration = Duration::from_secs(5);

/// What became of the run after the last one the Jobs and the status know of.
enum Untracked {
    /// Nothing: no such run was started.
    None,
    /// Its ConfigMap is fresh and its Job may still be on its way; look again after this.
    Starting(Duration),
    /// Its Job is gone though its results were never read.
    Vanished(RunRecord),
}

/// Finds a run whose Job is gone though its results were never read: the status recorded it
/// as in flight, or its probe-spec ConfigMap is still there (only reading a run's results
/// deletes that, so it outlives a Job someone deleted, and a periodic run needs no status
/// write to be tracked).
async fn untracked_run(
    ctx: &Context,
    check: &EgressCheck,
    jobs: &[Job],
    status: &EgressCheckStatus,
    now: &Time,
) -> Result<Untracked> {
    let namespace = check.namespace().unwrap_or_default();
    if let Some(current) = &status.current_run
        && !jobs.iter().any(|j| Some(j.name_any()) == current.job_name)
        && status.last_run.as_ref().and_then(|r| r.job_name.clone()) != current.job_name
    {
        return Ok(Untracked::Vanished(current.clone()));
    }
    if jobs.iter().any(|j| job_finished(j).is_none()) {
        return Ok(Untracked::None);
    }
    let run = next_run_number(jobs, status);
    let name = run::job_name(&check.name_any(), run);
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let found = maps.get_opt(&name).await.map_err(|source| Error::Read {
        what: format!("ConfigMap {namespace}/{name}"),
        source,
    })?;
    let uid = check.metadata.uid.clone().unwrap_or_default();
    let Some(cm) = found.filter(|cm| cm.owner_references().iter().any(|o| o.uid == uid)) else {
        return Ok(Untracked::None);
    };
    let created = cm.metadata.creation_timestamp.clone();
    let age = created
        .as_ref()
        .map(|t| now.0.duration_since(t.0).unsigned_abs())
        .unwrap_or(JOB_CREATION_GRACE);
    if age < JOB_CREATION_GRACE {
        return Ok(Untracked::Starting(JOB_CREATION_GRACE - age));
    }
    Ok(Untracked::Vanished(RunRecord {
        run: Some(run),
        job_name: Some(name),
        run_key: cm.annotations().get(RUN_KEY_ANNOTATION).cloned(),
        trigger: cm.annotations().get(TRIGGER_ANNOTATION).cloned(),
        start_time: created,
        ..RunRecord::default()
    }))
}

/// Deletes the probe-spec ConfigMap of a run whose outcome is recorded (it only served the
/// pod); one left behind would read as a run someone deleted.
async fn delete_run_config(ctx: &Context, namespace: &str, name: &str) {
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    match maps.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => debug!(%name, error = %e, "deleting a finished run's ConfigMap failed"),
    }
}

/// The check as the API server has it now: the controller caches only what routes triggers,
/// and what a run changes, which events it deserves and which run comes next are all decided
/// against the status, which must not be older than this controller's last write. None when
/// there is nothing to do: the check is gone (its series go with it) or does not decode (it
/// waits for a change).
async fn read_fresh(namespace: &str, name: &str, ctx: &Context) -> Result<Option<EgressCheck>> {
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

async fn reconcile_inner(check: &EgressCheck, ctx: &Context) -> Result<Action> {
    let namespace = check.namespace().unwrap_or_default();
    let name = check.name_any();
    let now = Time(Timestamp::now());
    let generation = check.metadata.generation;
    let old = check.status.clone().unwrap_or_default();
    let mut status = old.clone();
    // A run record without a job is no run.
    status.current_run = status.current_run.filter(|r| r.job_name.is_some());
    if check.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget_check(&namespace, &name);
        return Ok(Action::await_change());
    }
    // The interval while runs are scheduled: what staleness alerts compare the last run to.
    ctx.metrics.observe_check(
        &namespace,
        &name,
        check
            .spec
            .interval
            .as_ref()
            .filter(|_| check.spec.suspend != Some(true))
            .map(|i| i.as_duration().as_secs_f64()),
    );

    let profile = match &check.spec.profile_ref {
        Some(reference) => {
            // Guarded: a profile that does not decode stalls its own checks, nothing else.
            let profiles: Api<DeserializeGuard<ConnectivityProfile>> =
                Api::namespaced(ctx.client.clone(), &namespace);
            let found = profiles
                .get_opt(&reference.name)
                .await
                .map_err(|source| Error::Read {
                    what: format!("ConnectivityProfile {namespace}/{}", reference.name),
                    source,
                })?;
            let (reason, message) = match found {
                Some(DeserializeGuard(Ok(profile))) => (None, Some(profile)),
                None => (
                    Some((
                        reasons::PROFILE_NOT_FOUND,
                        format!(
                            "ConnectivityProfile {namespace}/{} does not exist; create it or fix spec.profileRef",
                            reference.name
                        ),
                    )),
                    None,
                ),
                Some(DeserializeGuard(Err(invalid))) => (
                    Some((
                        reasons::INVALID_SPEC,
                        format!(
                            "ConnectivityProfile {namespace}/{} cannot be read ({}); correct it and apply it again",
                            reference.name, invalid.error
                        ),
                    )),
                    None,
                ),
            };
            if let Some((reason, message)) = reason {
                stall(
                    &mut status,
                    generation,
                    reason,
                    &short_message(&message),
                    &now,
                );
                if !same_status(&old, &status) {
                    write_status(ctx, check, &status).await?;
                }
                // The profile watch brings the check back when the profile changes.
                return Ok(Action::requeue(Duration::from_secs(300)));
            }
            message
        }
        None => None,
    };
    let source = EndpointSource::from_check(&check.spec, profile.as_ref().map(|p| &p.spec))
        .ok_or_else(|| Error::Invalid("spec needs profileRef or endpoints".into()))?;
    let mut targets = source.targets();
    if let Err(error) =
        resolve_ca_bundles(ctx, &namespace, &mut targets, &ca_bundle_refs(&source)).await
    {
        if let Error::Invalid(message) = &error {
            stall(
                &mut status,
                generation,
                reasons::INVALID_SPEC,
                message,
                &now,
            );
            if !same_status(&old, &status) {
                write_status(ctx, check, &status).await?;
            }
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
        return Err(error);
    }
    set_condition(
        &mut status.conditions,
        types::STALLED,
        false,
        reasons::VALID,
        "",
        generation,
        &now,
    );
    let key = run::run_key(check, profile.as_ref().and_then(|p| p.metadata.generation));
    let interval = check.spec.interval.as_ref().map(|i| i.as_duration());
    let history = check.spec.history_limit.unwrap_or(DEFAULT_HISTORY).max(1) as usize;

    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = check.metadata.uid.clone().unwrap_or_default();
    let mut jobs: Vec<Job> = jobs_api
        .list(&ListParams::default().labels(&format!("{CHECK_LABEL}={name}")))
        .await
        .map_err(|source| Error::Read {
            what: format!("probe jobs of {namespace}/{name}"),
            source,
        })?
        .items
        .into_iter()
        .filter(|j| j.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    jobs.sort_by_key(job_run);
    let in_flight = jobs.iter().find(|j| job_finished(j).is_none()).cloned();
    let latest_finished = jobs
        .iter()
        .rev()
        .find(|j| job_finished(j).is_some())
        .cloned();
    let next_after = |completed: Option<&Time>| {
        interval
            .zip(completed)
            .map(|(i, done)| run::next_run(done, i))
    };

    // Collect the newest finished run once; events wait until its status is written. What
    // it changes is judged against the status, so reading it again changes nothing.
    let mut pending_events: Vec<(bool, &'static str, String)> = Vec::new();
    let mut opened: Vec<ProbeResult> = Vec::new();
    let mut collected_job: Option<String> = None;
    let mut finished_configs: Vec<String> = Vec::new();
    // A run the status already has a newer one than (a later run whose Job vanished).
    let superseded = |job: &Job| old.last_run.as_ref().and_then(|r| r.run) > Some(job_run(job));
    if let Some(job) = &latest_finished
        && !superseded(job)
        && !ctx.collected(
            &namespace,
            &name,
            job.metadata.uid.as_deref().unwrap_or_default(),
        )
    {
        collected_job = job.metadata.uid.clone();
        finished_configs.push(job.name_any());
        let mut record = record_of(job);
        let job_key = record.run_key.clone();
        let last_failed = old.last_run.as_ref().and_then(|r| r.state.as_deref()) == Some("Failed");
        match collect(ctx, &namespace, job).await? {
            Ok(rows) => {
                let finished_at = record
                    .completion_time
                    .as_ref()
                    .map(|t| t.0.as_second() as f64)
                    .unwrap_or_default();
                let new_key = old.last_run.as_ref().and_then(|r| r.run_key.clone()) != job_key;
                // After a failed run, a success is news even with the same results: Ready
                // has to come back from RunFailed.
                // A run the status already records (read again after a restart) must not
                // count twice in the rows' streaks.
                let recorded = old.last_run.as_ref().is_some_and(|r| {
                    r.run == Some(job_run(job)) && r.state.as_deref() == Some("Succeeded")
                });
                if recorded {
                    ctx.metrics
                        .record_run(&namespace, &name, &old.results, finished_at);
                    debug!(job = %job.name_any(), "run already in the status");
                } else if new_key || last_failed || results_changed(&old, &rows) {
                    let (rows, transitions) = merge_results(&old.results, rows, &now);
                    let thresholds =
                        Thresholds::of(check.spec.failure_threshold, check.spec.success_threshold);
                    let ledger = outages::apply(&old.results, &old.outages, rows, thresholds, &now);
                    status.results = ledger.rows;
                    status.outages = ledger.outages;
                    ctx.metrics
                        .record_run(&namespace, &name, &status.results, finished_at);
                    opened.extend(ledger.opened.iter().filter_map(|(endpoint, port)| {
                        status
                            .results
                            .iter()
                            .find(|r| (&r.endpoint, r.port) == (endpoint, *port))
                            .cloned()
                    }));
                    pending_events.extend(
                        ledger
                            .events
                            .into_iter()
                            .map(|e| (e.warning, e.reason, e.note)),
                    );
                    summarize(&mut status);
                    result_conditions(&mut status, key_generation(job_key.as_deref()), &now);
                    let summary = status.summary.clone().unwrap_or_default();
                    record.state = Some("Succeeded".into());
                    record.passed = Some(summary.passed);
                    record.warned = Some(summary.warned);
                    record.failed = Some(summary.failed);
                    status.next_run_time = next_after(record.completion_time.as_ref());
                    status.last_run = Some(record.clone());
                    push_history(&mut status, record, history);
                    pending_events.extend(
                        transitions
                            .into_iter()
                            .map(|t| (t.warning, t.reason, t.note)),
                    );
                    pending_events.truncate(20);
                    info!(job = %job.name_any(), passed = summary.passed, failed = summary.failed, "run changed the status");
                } else {
                    // Nothing new, so no row has a streak: the rows as they came are current.
                    ctx.metrics
                        .record_run(&namespace, &name, &rows, finished_at);
                    debug!(job = %job.name_any(), "run found nothing new");
                }
            }
            Err(failure) => {
                ctx.metrics.record_failed_run(&namespace, &name);
                record.state = Some("Failed".into());
                record.message = Some(short_message(&failure.summary));
                let next = next_after(record.completion_time.as_ref());
                let text = failure_text(&record, failure.detail.as_deref());
                if record_run_failure(
                    &mut status,
                    record,
                    failure.detail.as_deref(),
                    false,
                    history,
                    next.as_ref(),
                    &now,
                ) {
                    warn!(job = %job.name_any(), failure = %text, "run failed");
                    pending_events.push((true, "RunFailed", text));
                } else {
                    debug!(job = %job.name_any(), failure = %text, "run failed like the last one");
                }
            }
        }
        if status
            .current_run
            .as_ref()
            .and_then(|r| r.job_name.as_deref())
            == Some(&job.name_any())
        {
            status.current_run = None;
        }
        prune(ctx, &namespace, &jobs, history).await;
    }

    // A run whose Job vanished was deleted by someone: report it, and count it as the run it
    // was, so it is neither re-run in a loop nor its number reused.
    let mut starting: Option<Duration> = None;
    let untracked = untracked_run(ctx, check, &jobs, &status, &now).await?;
    if let Untracked::Starting(wait) = untracked {
        starting = Some(wait);
    }
    if let Untracked::Vanished(mut record) = untracked {
        ctx.metrics.record_failed_run(&namespace, &name);
        let job_name = record.job_name.clone().unwrap_or_default();
        let message = format!(
            "probe job {job_name} was deleted before its results were read; it is not run again, the next run starts on the next change or interval"
        );
        record.state = Some("Failed".into());
        record.completion_time = Some(now.clone());
        record.message = Some(message.clone());
        if status
            .current_run
            .as_ref()
            .is_some_and(|c| c.job_name == record.job_name)
        {
            status.current_run = None;
        }
        let next = next_after(Some(&now));
        if record_run_failure(
            &mut status,
            record,
            None,
            true,
            history,
            next.as_ref(),
            &now,
        ) {
            warn!(job = %job_name, "a probe job was deleted before its results were read");
            pending_events.push((true, "RunFailed", message));
        }
        finished_configs.push(job_name);
    }

    // Is a run due?
    let from_jobs = latest_finished.as_ref().map(|j| {
        (
            job_run(j),
            FinishedRun {
                key: j
                    .annotations()
                    .get(RUN_KEY_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
                completed: job_completion(j).unwrap_or_else(|| now.clone()),
            },
        )
    });
    let from_status = status
        .last_run
        .as_ref()
        .filter(|r| r.state.as_deref() == Some("Failed"))
        .map(|r| {
            (
                r.run.unwrap_or(0),
                FinishedRun {
                    key: r.run_key.clone().unwrap_or_default(),
                    completed: r.completion_time.clone().unwrap_or_else(|| now.clone()),
                },
            )
        });
    let latest = [from_jobs, from_status]
        .into_iter()
        .flatten()
        .max_by_key(|(run, _)| *run)
        .map(|(_, f)| f);
    let suspended = check.spec.suspend == Some(true);
    let mut started_run = false;
    if in_flight.is_none()
        && starting.is_none()
        && !suspended
        && let Some(trigger) = run::due_run(&key, latest.as_ref(), interval, &now)
    {
        let next = next_run_number(&jobs, &status);
        let objects = run::build_run(
            check,
            &targets,
            next,
            &key,
            trigger,
            &ctx.settings.probe_image,
        );
        let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
        create_if_missing(&maps, &objects.config_map).await?;
        if let Err(error) = create_if_missing(&jobs_api, &objects.job).await {
            // Left behind without its Job, the ConfigMap would read as a deleted run.
            delete_run_config(ctx, &namespace, &objects.job.name_any()).await;
            return Err(error);
        }
        info!(job = %objects.job.name_any(), trigger, "started a probe run");
        started_run = true;
        // A periodic run is not recorded: that would write status twice per run. Its
        // ConfigMap tracks it instead (see `untracked_run`).
        if trigger != "Interval" {
            status.current_run = Some(RunRecord {
                run: Some(next),
                job_name: objects.job.metadata.name.clone(),
                run_key: Some(key.clone()),
                trigger: Some(trigger.into()),
                start_time: Some(now.clone()),
                state: Some("Running".into()),
                ..RunRecord::default()
            });
        }
        if trigger == "RunNow" {
            status.last_run_now = check
                .annotations()
                .get(crate::api::check::RUN_NOW_ANNOTATION)
                .cloned();
        }
    } else if let Some(job) = &in_flight
        && status.current_run.is_none()
        && job.annotations().get(RUN_KEY_ANNOTATION) == Some(&key)
        && status.last_run.as_ref().and_then(|r| r.run_key.as_ref()) != Some(&key)
    {
        // Adopted after a restart: the run of a change is in flight.
        let mut record = record_of(job);
        record.state = Some("Running".into());
        status.current_run = Some(record);
    }

    // kstatus: Reconciling until the first run for this generation completed.
    status.observed_generation = generation;
    let results_generation = status
        .last_run
        .as_ref()
        .and_then(|r| key_generation(r.run_key.as_deref()));
    if results_generation == generation {
        set_condition(
            &mut status.conditions,
            types::RECONCILING,
            false,
            reasons::RUN_COMPLETE,
            "the last change has been probed",
            generation,
            &now,
        );
    } else {
        let (reason, message) = if suspended {
            (
                reasons::SUSPENDED,
                "suspended before the change was probed".to_owned(),
            )
        } else if status.current_run.is_some() {
            (
                reasons::RUN_IN_PROGRESS,
                format!(
                    "probe job {} is running",
                    status
                        .current_run
                        .as_ref()
                        .and_then(|r| r.job_name.clone())
                        .unwrap_or_default()
                ),
            )
        } else {
            (
                reasons::AWAITING_FIRST_RUN,
                "waiting for a probe run".to_owned(),
            )
        };
        set_condition(
            &mut status.conditions,
            types::RECONCILING,
            true,
            reason,
            message,
            generation,
            &now,
        );
    }
    if !status.conditions.iter().any(|c| c.type_ == types::READY) {
        set_condition(
            &mut status.conditions,
            types::READY,
            false,
            reasons::AWAITING_FIRST_RUN,
            "no probe run has finished yet",
            generation,
            &now,
        );
    }
    if !same_status(&old, &status) {
        write_status(ctx, check, &status).await?;
    }
    if let Some(uid) = collected_job {
        ctx.mark_collected(&namespace, &name, &uid);
    }
    for config in finished_configs {
        delete_run_config(ctx, &namespace, &config).await;
    }
    for row in &opened {
        ctx.metrics.outage_opened(&namespace, &name, row);
    }
    for (warning, reason, note) in pending_events {
        publish(ctx, check, warning, reason, note).await;
    }

    Ok(if in_flight.is_some() || started_run {
        // The Job watch wakes us when it finishes; this is a safety net.
        Action::requeue(Duration::from_secs(60))
    } else if let Some(wait) = starting {
        Action::requeue(wait + Duration::from_millis(100))
    } else if let (Some(interval), false) = (interval, suspended) {
        let since = latest
            .as_ref()
            .map(|l| run::next_run(&l.completed, interval));
        let wait = since
            .map(|next| {
                Duration::from_secs(
                    next.0.as_second().saturating_sub(now.0.as_second()).max(1) as u64
                )
            })
            .unwrap_or(interval);
        Action::requeue(wait)
    } else {
        Action::await_change()
    })
}

async fn create_if_missing<K>(api: &Api<K>, object: &K) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match api
        .create(
            &PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            },
            object,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(Error::Write {
            what: format!(
                "{} {}",
                K::kind(&Default::default()),
                object.meta().name.clone().unwrap_or_default()
            ),
            source,
        }),
    }
}
