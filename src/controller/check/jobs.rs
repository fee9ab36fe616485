//! Probe Jobs as the EgressCheck controller sees them: a slim summary of each Job, and an
//! index of them by check fed from the Job watch, so a reconcile reads its runs from memory.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::api::check::{RunRecord, RunTrigger};
use crate::controller::run::{CHECK_LABEL, RUN_KEY_ANNOTATION, RUN_LABEL, TRIGGER_ANNOTATION};

/// How a Job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEnd {
    Complete,
    /// Boxed: most runs complete, and every check keeps several summaries.
    Failed(Box<JobFailure>),
}

/// The Job's `Failed` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    /// `BackoffLimitExceeded`, `DeadlineExceeded`, …
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// What a reconcile needs to know of one probe Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunJob {
    pub name: String,
    pub uid: String,
    /// The uid of the controlling owner (the check).
    pub owner_uid: Option<String>,
    pub run: i64,
    pub run_key: Option<String>,
    pub trigger: Option<RunTrigger>,
    pub end: Option<JobEnd>,
    pub start_time: Option<Time>,
    pub completion_time: Option<Time>,
}

impl RunJob {
    pub fn from_job(job: &Job) -> Self {
        let annotations = job.annotations();
        let status = job.status.as_ref();
        let condition = |type_: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == type_ && c.status == "True"))
        };
        let end = if condition("Complete").is_some() {
            Some(JobEnd::Complete)
        } else {
            condition("Failed").map(|c| {
                JobEnd::Failed(Box::new(JobFailure {
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                }))
            })
        };
        let completion_time = status
            .and_then(|s| s.completion_time.clone())
            .or_else(|| condition("Failed").and_then(|c| c.last_transition_time.clone()));
        Self {
            name: job.name_any(),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            owner_uid: job
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            run: job
                .labels()
                .get(RUN_LABEL)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            run_key: annotations.get(RUN_KEY_ANNOTATION).cloned(),
            trigger: annotations
                .get(TRIGGER_ANNOTATION)
                .and_then(|t| RunTrigger::from_wire(t)),
            end,
            start_time: status.and_then(|s| s.start_time.clone()),
            completion_time,
        }
    }

    pub fn finished(&self) -> bool {
        self.end.is_some()
    }

    /// The run as the status records it (state and counts are filled in by the caller).
    pub fn record(&self) -> RunRecord {
        RunRecord {
            run: Some(self.run),
            job_name: Some(self.name.clone()),
            run_key: self.run_key.clone(),
            trigger: self.trigger,
            start_time: self.start_time.clone(),
            completion_time: self.completion_time.clone(),
            ..RunRecord::default()
        }
    }
}

/// Whether a Job event means a run finished or went away unfinished (what wakes a check).
pub fn job_finished(job: &Job) -> bool {
    RunJob::from_job(job).finished()
}

type CheckKey = (String, String);

/// The probe Jobs of every check in one watch scope, by (namespace, check), kept current by
/// that scope's Job watch. Relists replace the whole index when they complete.
///
/// A check has a handful of Jobs (its history and the run in flight): a `Vec` each, since a
/// map would allocate room for eleven summaries per check.
#[derive(Debug)]
pub struct JobIndex {
    jobs: Mutex<HashMap<CheckKey, Vec<RunJob>>>,
    relisting: Mutex<Option<HashMap<CheckKey, Vec<RunJob>>>>,
    ready: watch::Sender<bool>,
}

impl Default for JobIndex {
    fn default() -> Self {
        Self {
            jobs: Mutex::default(),
            relisting: Mutex::default(),
            ready: watch::Sender::new(false),
        }
    }
}

fn key_of(job: &Job) -> Option<CheckKey> {
    Some((job.namespace()?, job.labels().get(CHECK_LABEL)?.clone()))
}

/// Replaces the summary of `job` among a check's runs, or adds it.
fn upsert(runs: &mut Vec<RunJob>, job: &Job) {
    let summary = RunJob::from_job(job);
    match runs.iter_mut().find(|r| r.name == summary.name) {
        Some(known) => *known = summary,
        None => {
            runs.push(summary);
            runs.shrink_to_fit();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl JobIndex {
    /// Applies one event of the Job watch.
    pub fn apply(&self, event: &watcher::Event<Job>) {
        match event {
            watcher::Event::Apply(job) => {
                if let Some(key) = key_of(job) {
                    upsert(lock(&self.jobs).entry(key).or_default(), job);
                }
            }
            watcher::Event::Delete(job) => {
                if let Some(key) = key_of(job) {
                    let mut jobs = lock(&self.jobs);
                    if let Some(runs) = jobs.get_mut(&key) {
                        let name = job.name_any();
                        runs.retain(|r| r.name != name);
                        if runs.capacity() > 2 * runs.len() + 2 {
                            runs.shrink_to_fit();
                        }
                        if runs.is_empty() {
                            jobs.remove(&key);
                        }
                    }
                }
            }
            watcher::Event::Init => *lock(&self.relisting) = Some(HashMap::new()),
            watcher::Event::InitApply(job) => {
                if let (Some(key), Some(relist)) = (key_of(job), lock(&self.relisting).as_mut()) {
                    upsert(relist.entry(key).or_default(), job);
                }
            }
            watcher::Event::InitDone => {
                if let Some(mut relist) = lock(&self.relisting).take() {
                    relist.values_mut().for_each(|runs| runs.shrink_to_fit());
                    *lock(&self.jobs) = relist;
                }
                self.ready.send_replace(true);
            }
        }
    }

    /// Waits for the first complete list: until then, no Jobs would read as no runs.
    pub async fn ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The check's Jobs owned by `owner_uid`, by run number.
    pub fn runs(&self, namespace: &str, check: &str, owner_uid: &str) -> Vec<RunJob> {
        let jobs = lock(&self.jobs);
        let mut runs: Vec<RunJob> = jobs
            .get(&(namespace.to_owned(), check.to_owned()))
            .map(|runs| {
                runs.iter()
                    .filter(|j| j.owner_uid.as_deref() == Some(owner_uid))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        runs.sort_by_key(|j| j.run);
        runs
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn job(name: &str, check: &str, run: i64, owner: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([
                    (CHECK_LABEL.to_owned(), check.to_owned()),
                    (RUN_LABEL.to_owned(), run.to_string()),
                ])),
                owner_references: Some(vec![OwnerReference {
                    uid: owner.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..Job::default()
        }
    }

    #[test]
    fn the_index_follows_applies_deletes_and_relists() {
        let index = JobIndex::default();
        index.apply(&watcher::Event::Apply(job("a-2", "a", 2, "u1")));
        index.apply(&watcher::Event::Apply(job("a-1", "a", 1, "u1")));
        index.apply(&watcher::Event::Apply(job("a-3", "a", 3, "someone-else")));
        let runs: Vec<i64> = index.runs("ns", "a", "u1").iter().map(|j| j.run).collect();
        assert_eq!(runs, [1, 2], "owned Jobs only, by run number");
        index.apply(&watcher::Event::Delete(job("a-1", "a", 1, "u1")));
        assert_eq!(index.runs("ns", "a", "u1").len(), 1);
        // A relist drops what it no longer lists, once it is complete.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(job("a-4", "a", 4, "u1")));
        assert_eq!(index.runs("ns", "a", "u1")[0].run, 2, "old view until done");
        index.apply(&watcher::Event::InitDone);
        let runs: Vec<i64> = index.runs("ns", "a", "u1").iter().map(|j| j.run).collect();
        assert_eq!(runs, [4]);
    }
}
