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
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::check_status::{
    merge_results, push_history, result_conditions, results_changed, same_status, summarize,
};
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

fn job_finished(job: &Job) -> Option<&'static str> {
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

fn key_generation(key: Option<&str>) -> Option<i64> {
    key?.split('/').next()?.parse().ok()
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

/// Reads a finished run's rows from its pod: the log holds them, the termination message
/// vouches for them. The pod itself never talks to the API.
async fn collect(
    ctx: &Context,
    namespace: &str,
    job: &Job,
) -> std::result::Result<Vec<ProbeResult>, String> {
    let job_name = job.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("job-name={job_name}")))
        .await
        .map_err(|e| format!("cannot list the pods of job {job_name}: {e}"))?;
    let failed_reason = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"))
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
        });
    let Some(pod) = listed
        .items
        .into_iter()
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
    else {
        return Err(match failed_reason {
            Some(reason) => format!("probe job {job_name} failed before its pod ran ({reason})"),
            None => format!("the pod of probe job {job_name} is gone; its results are lost"),
        });
    };
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "probe"))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone());
    let Some(terminated) = terminated else {
        return Err(format!(
            "probe pod {} of job {job_name} did not finish{}",
            pod.name_any(),
            failed_reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ));
    };
    let message = terminated.message.clone().unwrap_or_default();
    if terminated.exit_code != 0 {
        return Err(format!(
            "probe pod {} exited with {}: {}",
            pod.name_any(),
            terminated.exit_code,
            short_message(message.trim())
        ));
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
        .map_err(|e| format!("cannot read the log of probe pod {}: {e}", pod.name_any()))?;
    spec::decode(&log, &message)
        .map_err(|e| format!("results of probe pod {}: {e}", pod.name_any()))
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
    if let Err(e) = ctx.recorder.publish(&event, &check.object_ref(&())).await {
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

#[instrument(skip(check, ctx), fields(namespace = check.namespace().unwrap_or_default(), check = check.name_any()))]
pub async fn reconcile(check: Arc<EgressCheck>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&check, &ctx).await;
    ctx.metrics.reconciled(
        "egresscheck",
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::reason),
    );
    result
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

    let profile = match &check.spec.profile_ref {
        Some(reference) => {
            let profiles: Api<ConnectivityProfile> =
                Api::namespaced(ctx.client.clone(), &namespace);
            let found = profiles
                .get_opt(&reference.name)
                .await
                .map_err(|source| Error::Read {
                    what: format!("ConnectivityProfile {namespace}/{}", reference.name),
                    source,
                })?;
            if found.is_none() {
                let message = format!(
                    "ConnectivityProfile {namespace}/{} does not exist; create it or fix spec.profileRef",
                    reference.name
                );
                stall(
                    &mut status,
                    generation,
                    reasons::PROFILE_NOT_FOUND,
                    &message,
                    &now,
                );
                if !same_status(&old, &status) {
                    write_status(ctx, check, &status).await?;
                }
                // The profile watch brings the check back when the profile appears.
                return Ok(Action::requeue(Duration::from_secs(300)));
            }
            found
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

    // Collect the newest finished run once; events wait until its status is written.
    let mut pending_events: Vec<(bool, &'static str, String)> = Vec::new();
    let mut collected_job: Option<String> = None;
    if let Some(job) = &latest_finished
        && !ctx.collected(
            &namespace,
            &name,
            job.metadata.uid.as_deref().unwrap_or_default(),
        )
    {
        collected_job = job.metadata.uid.clone();
        let mut record = record_of(job);
        let job_key = record.run_key.clone();
        match collect(ctx, &namespace, job).await {
            Ok(rows) => {
                let finished_at = record
                    .completion_time
                    .as_ref()
                    .map(|t| t.0.as_second() as f64)
                    .unwrap_or_default();
                ctx.metrics
                    .record_run(&namespace, &name, &rows, finished_at);
                let new_key = old.last_run.as_ref().and_then(|r| r.run_key.clone()) != job_key;
                if new_key || results_changed(&old, &rows) {
                    let (rows, transitions) = merge_results(&old.results, rows, &now);
                    status.results = rows;
                    summarize(&mut status);
                    result_conditions(&mut status, key_generation(job_key.as_deref()), &now);
                    let summary = status.summary.clone().unwrap_or_default();
                    record.state = Some("Succeeded".into());
                    record.passed = Some(summary.passed);
                    record.warned = Some(summary.warned);
                    record.failed = Some(summary.failed);
                    status.next_run_time = interval
                        .zip(record.completion_time.as_ref())
                        .map(|(i, done)| run::next_run(done, i));
                    status.last_run = Some(record.clone());
                    push_history(&mut status, record, history);
                    pending_events.extend(
                        transitions
                            .into_iter()
                            .take(20)
                            .map(|t| (t.warning, t.reason, t.note)),
                    );
                    info!(job = %job.name_any(), passed = summary.passed, failed = summary.failed, "run changed the status");
                } else {
                    debug!(job = %job.name_any(), "run found nothing new");
                }
            }
            Err(message) => {
                warn!(job = %job.name_any(), %message, "run failed");
                record.state = Some("Failed".into());
                record.message = Some(short_message(&message));
                status.last_run = Some(record.clone());
                push_history(&mut status, record, history);
                pending_events.push((true, "RunFailed", message));
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

    // A run in flight whose Job vanished was deleted by someone: report it, do not loop.
    if let Some(current) = status.current_run.clone()
        && !jobs.iter().any(|j| Some(j.name_any()) == current.job_name)
        && status.last_run.as_ref().and_then(|r| r.job_name.clone()) != current.job_name
    {
        let job_name = current.job_name.clone().unwrap_or_default();
        let message = format!(
            "probe job {job_name} was deleted before it finished; the next run starts on the next change or interval"
        );
        let mut record = current;
        record.state = Some("Failed".into());
        record.completion_time = Some(now.clone());
        record.message = Some(message.clone());
        status.last_run = Some(record.clone());
        push_history(&mut status, record, history);
        status.current_run = None;
        pending_events.push((true, "RunFailed", message));
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
        && !suspended
        && let Some(trigger) = run::due_run(&key, latest.as_ref(), interval, &now)
    {
        let next = jobs
            .iter()
            .map(job_run)
            .chain(status.last_run.as_ref().and_then(|r| r.run))
            .chain(status.current_run.as_ref().and_then(|r| r.run))
            .max()
            .unwrap_or(0)
            + 1;
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
        create_if_missing(&jobs_api, &objects.job).await?;
        info!(job = %objects.job.name_any(), trigger, "started a probe run");
        started_run = true;
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
    for (warning, reason, note) in pending_events {
        publish(ctx, check, warning, reason, note).await;
    }

    Ok(if in_flight.is_some() || started_run {
        // The Job watch wakes us when it finishes; this is a safety net.
        Action::requeue(Duration::from_secs(60))
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
