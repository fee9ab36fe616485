//! What an EgressCheck reconcile does, decided from what it observed and the time: the status
//! to write, the run to start, the events to publish, what to clean up and when to look
//! again. No client and no clock: every case is a table test.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::jobs::RunJob;
use super::observe::{FinishedRun, Observed, ProfileLookup};
use super::status::{
    Transition, failure_text, key_generation, merge_results, push_history, record_run_failure,
    result_conditions, results_changed, same_status, summarize,
};
use crate::api::EgressCheck;
use crate::api::check::{EgressCheckStatus, RUN_NOW_ANNOTATION, RunRecord, RunState, RunTrigger};
use crate::api::conditions::{reasons, set_condition, short_message, types};
use crate::api::result::ProbeResult;
use crate::api::source::EndpointSource;
use crate::controller::outages::{self, Thresholds};
use crate::controller::run::{self, RUN_KEY_ANNOTATION, RunObjects};
use crate::probe::plan::Target;

const DEFAULT_HISTORY: i32 = 5;
/// How long a run's ConfigMap may go without its Job: the Job is created right after it, by
/// this replica or (briefly, while leadership changes hands) another.
pub const JOB_CREATION_GRACE: Duration = Duration::from_secs(5);
/// When a stalled check looks again, besides the watches that bring it back on a change.
const STALLED_RECHECK: Duration = Duration::from_secs(300);
/// The safety net while a run is in flight; the Job watch wakes the check when it finishes.
const IN_FLIGHT_RECHECK: Duration = Duration::from_secs(60);
/// Transition events one run may publish.
const MAX_EVENTS_PER_RUN: usize = 20;

/// When to reconcile again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    After(Duration),
    AwaitChange,
}

/// An event to publish once the status is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl From<Transition> for PlannedEvent {
    fn from(t: Transition) -> Self {
        Self {
            warning: t.warning,
            reason: t.reason,
            note: t.note,
        }
    }
}

/// A run to start.
pub struct StartRun {
    pub objects: RunObjects,
    pub trigger: RunTrigger,
}

/// The rows of a run read this reconcile, for the metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordRun {
    pub rows: Vec<ProbeResult>,
    /// When the run finished, in seconds since the epoch.
    pub finished_at: f64,
}

/// What is done with what was observed.
#[derive(Default)]
pub struct Plan {
    /// The status to write; None when it would not change.
    pub status: Option<EgressCheckStatus>,
    pub run: Option<StartRun>,
    pub events: Vec<PlannedEvent>,
    /// Finished Jobs beyond the history limit.
    pub prune_jobs: Vec<String>,
    /// Probe-spec ConfigMaps of runs whose outcome is recorded.
    pub delete_configs: Vec<String>,
    /// The uid of the finished Job read this reconcile, once its outcome is written.
    pub collected: Option<String>,
    pub record_run: Option<RecordRun>,
    /// Runs that failed (a failed pod, a vanished Job), for the metrics.
    pub failed_runs: u32,
    /// Rows whose outage opened this run, counted once the status is written.
    pub opened: Vec<ProbeResult>,
    /// The check is being deleted: its metric series go.
    pub forget_metrics: bool,
    pub requeue: Option<Requeue>,
}

impl Plan {
    pub fn requeue(&self) -> Requeue {
        self.requeue.unwrap_or(Requeue::AwaitChange)
    }
}

/// What the status is known to hold of finished runs, for deciding which run is due.
struct LatestRun {
    run: i64,
    finished: run::FinishedRun,
}

/// Decides one reconcile of `observed.check`.
pub fn decide(observed: &Observed, now: &Time, probe_image: &str) -> Plan {
    let check = &observed.check;
    if check.metadata.deletion_timestamp.is_some() {
        return Plan {
            forget_metrics: true,
            ..Plan::default()
        };
    }
    let old = check.status.clone().unwrap_or_default();
    let mut status = old.clone();
    // A run record without a job is no run.
    status.current_run = status.current_run.filter(|r| r.job_name.is_some());
    let (profile, targets) = match runnable(observed) {
        Ok(found) => found,
        Err((reason, message)) => return stalled(check, old, status, reason, &message, now),
    };
    let generation = check.metadata.generation;
    set_condition(
        &mut status.conditions,
        types::STALLED,
        false,
        reasons::VALID,
        "",
        generation,
        now,
    );
    let mut plan = Plan::default();
    let history = check.spec.history_limit.unwrap_or(DEFAULT_HISTORY).max(1) as usize;
    let interval = check.spec.interval.as_ref().map(|i| i.as_duration());
    let next_after = |completed: Option<&Time>| {
        interval
            .zip(completed)
            .map(|(i, done)| run::next_run(done, i))
    };
    if let Some(finished) = &observed.finished {
        let thresholds = Thresholds::of(check.spec.failure_threshold, check.spec.success_threshold);
        take_finished_run(
            &mut plan,
            &mut status,
            &old,
            finished,
            thresholds,
            history,
            now,
            next_after,
        );
        plan.prune_jobs = prunable(&observed.jobs, history);
    }
    // A run whose Job vanished was deleted by someone: report it, and count it as the run it
    // was, so it is neither re-run in a loop nor its number reused.
    let mut starting = None;
    match untracked_run(observed, &status, now) {
        Untracked::None => {}
        Untracked::Starting(wait) => starting = Some(wait),
        Untracked::Vanished(record) => {
            let next = next_after(Some(now));
            take_vanished_run(&mut plan, &mut status, record, history, now, next)
        }
    }
    let schedule = Schedule {
        key: run::run_key(check, profile.and_then(|p| p.metadata.generation)),
        latest: latest_run(&observed.jobs, &status, now),
        interval,
        suspended: check.spec.suspend == Some(true),
        starting,
    };
    plan.run = start_or_adopt(observed, &mut status, &schedule, &targets, probe_image, now);
    progress_conditions(&mut status, generation, schedule.suspended, now);
    plan.status = (!same_status(&old, &status)).then_some(status);
    let busy = plan.run.is_some() || observed.jobs.iter().any(|j| !j.finished());
    plan.requeue = Some(schedule.requeue(busy, now));
    plan
}

/// When runs happen for a check, as far as this reconcile knows.
struct Schedule {
    /// What a run now would check (`generation/profileGeneration/runNow`).
    key: String,
    latest: Option<LatestRun>,
    interval: Option<Duration>,
    suspended: bool,
    /// A run's ConfigMap waits for its Job for this long yet.
    starting: Option<Duration>,
}

impl Schedule {
    /// When to look again.
    fn requeue(&self, busy: bool, now: &Time) -> Requeue {
        if busy {
            return Requeue::After(IN_FLIGHT_RECHECK);
        }
        if let Some(wait) = self.starting {
            return Requeue::After(wait + Duration::from_millis(100));
        }
        match (self.interval, self.suspended) {
            (Some(interval), false) => Requeue::After(
                self.latest
                    .as_ref()
                    .map(|l| run::next_run(&l.finished.completed, interval))
                    .map(|next| {
                        let left = next.0.as_second().saturating_sub(now.0.as_second());
                        Duration::from_secs(left.max(1) as u64)
                    })
                    .unwrap_or(interval),
            ),
            _ => Requeue::AwaitChange,
        }
    }
}

/// Starts the run that is due, if one is and none is in flight; or adopts the run of a change
/// in flight that the status does not show (after a restart).
fn start_or_adopt(
    observed: &Observed,
    status: &mut EgressCheckStatus,
    schedule: &Schedule,
    targets: &[Target],
    probe_image: &str,
    now: &Time,
) -> Option<StartRun> {
    let check = &observed.check;
    let key = &schedule.key;
    let in_flight = observed.jobs.iter().find(|j| !j.finished());
    if let (None, None, false) = (in_flight, schedule.starting, schedule.suspended)
        && let Some(trigger) = run::due_run(
            key,
            schedule.latest.as_ref().map(|l| &l.finished),
            schedule.interval,
            now,
        )
    {
        let next = super::next_run_number(&observed.jobs, status);
        let objects = run::build_run(check, targets, next, key, trigger, probe_image);
        // A periodic run is not recorded: that would write status twice per run. Its
        // ConfigMap tracks it instead (see `untracked_run`).
        if trigger != RunTrigger::Interval {
            status.current_run = Some(RunRecord {
                run: Some(next),
                job_name: objects.job.metadata.name.clone(),
                run_key: Some(key.clone()),
                trigger: Some(trigger),
                start_time: Some(now.clone()),
                state: Some(RunState::Running),
                ..RunRecord::default()
            });
        }
        if trigger == RunTrigger::RunNow {
            status.last_run_now = check.annotations().get(RUN_NOW_ANNOTATION).cloned();
        }
        return Some(StartRun { objects, trigger });
    }
    if let Some(job) = in_flight
        && status.current_run.is_none()
        && job.run_key.as_ref() == Some(key)
        && status.last_run.as_ref().and_then(|r| r.run_key.as_ref()) != Some(key)
    {
        status.current_run = Some(RunRecord {
            state: Some(RunState::Running),
            ..job.record()
        });
    }
    None
}

/// The profile the check's endpoints come from and its probe targets (CA bundles filled in),
/// or why the check is stalled.
type Runnable<'a> = (Option<&'a crate::api::ConnectivityProfile>, Vec<Target>);

fn runnable(observed: &Observed) -> Result<Runnable<'_>, (&'static str, String)> {
    let check = &observed.check;
    let namespace = check.namespace().unwrap_or_default();
    let profile = match &observed.profile {
        ProfileLookup::NotReferenced => None,
        ProfileLookup::Found(profile) => Some(profile.as_ref()),
        ProfileLookup::Missing { name } => {
            return Err((
                reasons::PROFILE_NOT_FOUND,
                format!(
                    "ConnectivityProfile {namespace}/{name} does not exist; create it or fix spec.profileRef"
                ),
            ));
        }
        ProfileLookup::Undecodable { name, error } => {
            return Err((
                reasons::INVALID_SPEC,
                format!(
                    "ConnectivityProfile {namespace}/{name} cannot be read ({error}); correct it and apply it again"
                ),
            ));
        }
    };
    let source = EndpointSource::from_check(&check.spec, profile.map(|p| &p.spec)).ok_or((
        reasons::INVALID_SPEC,
        "spec needs profileRef or endpoints".to_owned(),
    ))?;
    let bundles = observed
        .ca_bundles
        .as_ref()
        .map_err(|message| (reasons::INVALID_SPEC, message.clone()))?;
    let mut targets = source.targets();
    for target in &mut targets {
        target.tls.ca_bundle_pem = bundles
            .get(&(target.endpoint.clone(), target.port))
            .cloned();
    }
    Ok((profile, targets))
}

/// A plan that marks the check Stalled (and not Ready) for a reason only a change can fix.
fn stalled(
    check: &EgressCheck,
    old: EgressCheckStatus,
    mut status: EgressCheckStatus,
    reason: &str,
    message: &str,
    now: &Time,
) -> Plan {
    let generation = check.metadata.generation;
    let message = short_message(message);
    status.observed_generation = generation;
    for (type_, value) in [
        (types::STALLED, true),
        (types::READY, false),
        (types::RECONCILING, false),
    ] {
        set_condition(
            &mut status.conditions,
            type_,
            value,
            reason,
            &message,
            generation,
            now,
        );
    }
    Plan {
        status: (!same_status(&old, &status)).then_some(status),
        // The watches bring the check back when it or its profile changes.
        requeue: Some(Requeue::After(STALLED_RECHECK)),
        ..Plan::default()
    }
}

/// Records a finished run read this reconcile: its rows when they change anything (or after
/// a failed run), through the outage ledger, or its failure when that is news.
#[allow(clippy::too_many_arguments)]
fn take_finished_run(
    plan: &mut Plan,
    status: &mut EgressCheckStatus,
    old: &EgressCheckStatus,
    finished: &FinishedRun,
    thresholds: Thresholds,
    history: usize,
    now: &Time,
    next_after: impl Fn(Option<&Time>) -> Option<Time>,
) {
    let job = &finished.job;
    plan.collected = Some(job.uid.clone());
    plan.delete_configs.push(job.name.clone());
    let mut record = job.record();
    let last_failed = old.last_run.as_ref().and_then(|r| r.state) == Some(RunState::Failed);
    match &finished.outcome {
        Ok(rows) => {
            let finished_at = record
                .completion_time
                .as_ref()
                .map(|t| t.0.as_second() as f64)
                .unwrap_or_default();
            let new_key = old.last_run.as_ref().and_then(|r| r.run_key.clone()) != job.run_key;
            // A run the status already records (read again after a restart) must not count
            // twice in the rows' streaks.
            let recorded = old
                .last_run
                .as_ref()
                .is_some_and(|r| r.run == Some(job.run) && r.state == Some(RunState::Succeeded));
            if recorded {
                plan.record_run = Some(RecordRun {
                    rows: old.results.clone(),
                    finished_at,
                });
            } else if new_key || last_failed || results_changed(old, rows) {
                // After a failed run, a success is news even with the same results: Ready
                // has to come back from RunFailed.
                let (rows, transitions) = merge_results(&old.results, rows.clone(), now);
                let ledger = outages::apply(&old.results, &old.outages, rows, thresholds, now);
                status.results = ledger.rows;
                status.outages = ledger.outages;
                plan.record_run = Some(RecordRun {
                    rows: status.results.clone(),
                    finished_at,
                });
                plan.opened = ledger
                    .opened
                    .iter()
                    .filter_map(|(endpoint, port)| {
                        status
                            .results
                            .iter()
                            .find(|r| (&r.endpoint, r.port) == (endpoint, *port))
                            .cloned()
                    })
                    .collect();
                plan.events
                    .extend(ledger.events.into_iter().map(|e| PlannedEvent {
                        warning: e.warning,
                        reason: e.reason,
                        note: e.note,
                    }));
                summarize(status);
                result_conditions(status, key_generation(job.run_key.as_deref()), now);
                let summary = status.summary.clone().unwrap_or_default();
                record.state = Some(RunState::Succeeded);
                record.passed = Some(summary.passed);
                record.warned = Some(summary.warned);
                record.failed = Some(summary.failed);
                status.next_run_time = next_after(record.completion_time.as_ref());
                status.last_run = Some(record.clone());
                push_history(status, record, history);
                plan.events
                    .extend(transitions.into_iter().map(PlannedEvent::from));
                plan.events.truncate(MAX_EVENTS_PER_RUN);
            } else {
                // Nothing new, so no row has a streak: the rows as they came are current.
                plan.record_run = Some(RecordRun {
                    rows: rows.clone(),
                    finished_at,
                });
            }
        }
        Err(failure) => {
            plan.failed_runs += 1;
            record.state = Some(RunState::Failed);
            record.message = Some(short_message(&failure.summary));
            let next = next_after(record.completion_time.as_ref());
            let text = failure_text(&record, failure.detail.as_deref());
            let news = record_run_failure(
                status,
                record,
                failure.detail.as_deref(),
                false,
                history,
                next.as_ref(),
                now,
            );
            if news {
                plan.events.push(PlannedEvent {
                    warning: true,
                    reason: "RunFailed",
                    note: text,
                });
            }
        }
    }
    if status
        .current_run
        .as_ref()
        .and_then(|r| r.job_name.as_deref())
        == Some(&job.name)
    {
        status.current_run = None;
    }
}

/// Records a run whose Job was deleted before its results were read.
fn take_vanished_run(
    plan: &mut Plan,
    status: &mut EgressCheckStatus,
    mut record: RunRecord,
    history: usize,
    now: &Time,
    next: Option<Time>,
) {
    plan.failed_runs += 1;
    let job_name = record.job_name.clone().unwrap_or_default();
    let message = format!(
        "probe job {job_name} was deleted before its results were read; it is not run again, the next run starts on the next change or interval"
    );
    record.state = Some(RunState::Failed);
    record.completion_time = Some(now.clone());
    record.message = Some(message.clone());
    if status
        .current_run
        .as_ref()
        .is_some_and(|c| c.job_name == record.job_name)
    {
        status.current_run = None;
    }
    // Only the status remembers a run whose Job is gone: it is recorded even when it fails
    // like the last one.
    if record_run_failure(status, record, None, true, history, next.as_ref(), now) {
        plan.events.push(PlannedEvent {
            warning: true,
            reason: "RunFailed",
            note: message,
        });
    }
    plan.delete_configs.push(job_name);
}

/// Finished Jobs beyond the history limit, oldest last.
fn prunable(jobs: &[RunJob], history: usize) -> Vec<String> {
    let mut finished: Vec<&RunJob> = jobs.iter().filter(|j| j.finished()).collect();
    finished.sort_by_key(|j| std::cmp::Reverse(j.run));
    finished
        .into_iter()
        .skip(history.max(1))
        .map(|j| j.name.clone())
        .collect()
}

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
fn untracked_run(observed: &Observed, status: &EgressCheckStatus, now: &Time) -> Untracked {
    let jobs = &observed.jobs;
    if let Some(current) = &status.current_run
        && !jobs
            .iter()
            .any(|j| Some(&j.name) == current.job_name.as_ref())
        && status.last_run.as_ref().and_then(|r| r.job_name.clone()) != current.job_name
    {
        return Untracked::Vanished(current.clone());
    }
    if jobs.iter().any(|j| !j.finished()) {
        return Untracked::None;
    }
    let next = super::next_run_number(jobs, status);
    let name = run::job_name(&observed.check.name_any(), next);
    let Some(cm) = observed
        .next_run_config
        .as_ref()
        .filter(|cm| cm.metadata.name.as_deref() == Some(&name))
    else {
        return Untracked::None;
    };
    let created = cm.metadata.creation_timestamp.clone();
    let age = created
        .as_ref()
        .map(|t| now.0.duration_since(t.0).unsigned_abs())
        .unwrap_or(JOB_CREATION_GRACE);
    if age < JOB_CREATION_GRACE {
        return Untracked::Starting(JOB_CREATION_GRACE - age);
    }
    Untracked::Vanished(RunRecord {
        run: Some(next),
        job_name: Some(name),
        run_key: cm.annotations().get(RUN_KEY_ANNOTATION).cloned(),
        trigger: cm
            .annotations()
            .get(run::TRIGGER_ANNOTATION)
            .and_then(|t| RunTrigger::from_wire(t)),
        start_time: created,
        ..RunRecord::default()
    })
}

/// The newest finished run: from the Jobs, or a failed one only the status remembers.
fn latest_run(jobs: &[RunJob], status: &EgressCheckStatus, now: &Time) -> Option<LatestRun> {
    let from_jobs = jobs.iter().rev().find(|j| j.finished()).map(|j| LatestRun {
        run: j.run,
        finished: run::FinishedRun {
            key: j.run_key.clone().unwrap_or_default(),
            completed: j.completion_time.clone().unwrap_or_else(|| now.clone()),
        },
    });
    let from_status = status
        .last_run
        .as_ref()
        .filter(|r| r.state == Some(RunState::Failed))
        .map(|r| LatestRun {
            run: r.run.unwrap_or(0),
            finished: run::FinishedRun {
                key: r.run_key.clone().unwrap_or_default(),
                completed: r.completion_time.clone().unwrap_or_else(|| now.clone()),
            },
        });
    [from_jobs, from_status]
        .into_iter()
        .flatten()
        .max_by_key(|l| l.run)
}

/// kstatus: Reconciling until the first run for this generation completed; Ready is False
/// until a run has finished.
fn progress_conditions(
    status: &mut EgressCheckStatus,
    generation: Option<i64>,
    suspended: bool,
    now: &Time,
) {
    status.observed_generation = generation;
    let results_generation = status
        .last_run
        .as_ref()
        .and_then(|r| key_generation(r.run_key.as_deref()));
    let (reconciling, reason, message) = if results_generation == generation {
        (
            false,
            reasons::RUN_COMPLETE,
            "the last change has been probed".to_owned(),
        )
    } else if suspended {
        (
            true,
            reasons::SUSPENDED,
            "suspended before the change was probed".to_owned(),
        )
    } else if let Some(job) = status.current_run.as_ref().and_then(|r| r.job_name.clone()) {
        (
            true,
            reasons::RUN_IN_PROGRESS,
            format!("probe job {job} is running"),
        )
    } else {
        (
            true,
            reasons::AWAITING_FIRST_RUN,
            "waiting for a probe run".to_owned(),
        )
    };
    set_condition(
        &mut status.conditions,
        types::RECONCILING,
        reconciling,
        reason,
        message,
        generation,
        now,
    );
    if !status.conditions.iter().any(|c| c.type_ == types::READY) {
        set_condition(
            &mut status.conditions,
            types::READY,
            false,
            reasons::AWAITING_FIRST_RUN,
            "no probe run has finished yet",
            generation,
            now,
        );
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
