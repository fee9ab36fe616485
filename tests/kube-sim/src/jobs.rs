//! The Job controller: pods from the template, active/succeeded/failed counts, Complete and
//! Failed conditions, backoffLimit, activeDeadlineSeconds and ttlSecondsAfterFinished.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::api::{Api, Query, now};
use crate::store::{Event, namespaced_name};

pub struct JobController {
    api: Arc<Api>,
}

fn seconds_since(timestamp: &str) -> i64 {
    timestamp
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second())
        .unwrap_or(0)
}

fn has_condition(job: &Value, kind: &str) -> bool {
    job["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == json!(kind) && c["status"] == json!("True"))
    })
}

impl JobController {
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }

    /// Reconciles the Jobs a Job or Pod change concerns as it happens, and every Job each
    /// half second for deadlines and TTLs. Runs until the task is dropped.
    pub async fn run(self) {
        let mut events = self.api.lock().store.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            // None: every Job; otherwise the (namespace, name) of the Jobs that changed.
            let mut due: Option<BTreeSet<(String, String)>> = Some(BTreeSet::new());
            tokio::select! {
                _ = tick.tick() => due = None,
                event = events.recv() => match event {
                    Ok(e) => note(&mut due, &e),
                    Err(broadcast::error::RecvError::Lagged(_)) => due = None,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
            // Take what else is already queued, so a burst costs one pass.
            loop {
                match events.try_recv() {
                    Ok(e) => note(&mut due, &e),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => due = None,
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                }
            }
            let jobs: Vec<Arc<Value>> = {
                let api = self.api.lock();
                match &due {
                    None => api.store.list("jobs.batch", None),
                    Some(due) => due
                        .iter()
                        .filter_map(|(namespace, name)| {
                            api.store.get("jobs.batch", namespace, name)
                        })
                        .collect(),
                }
            };
            for job in jobs {
                self.reconcile(&job);
            }
        }
    }

    fn reconcile(&self, job: &Value) {
        if job["metadata"]["deletionTimestamp"].is_string() {
            return;
        }
        let (namespace, name) = namespaced_name(job);
        let uid = job["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let finished = has_condition(job, "Complete") || has_condition(job, "Failed");
        if finished {
            if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() {
                let done_at = job["status"]["completionTime"]
                    .as_str()
                    .or_else(|| job["status"]["conditions"][0]["lastTransitionTime"].as_str())
                    .unwrap_or_default();
                if seconds_since(done_at) >= ttl {
                    self.api
                        .internal_delete("jobs.batch", &namespace, &name, "Background");
                }
            }
            return;
        }
        if job["spec"]["suspend"] == json!(true) {
            return;
        }
        let pods: Vec<Arc<Value>> = self
            .api
            .lock()
            .store
            .list_prefixed("pods", &namespace, &format!("{name}-"))
            .into_iter()
            .filter(|p| {
                p["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(&uid)))
            })
            .collect();
        let phase = |p: &Value| p["status"]["phase"].as_str().unwrap_or_default().to_owned();
        let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let active: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| {
                !matches!(phase(p).as_str(), "Succeeded" | "Failed")
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .collect();
        let ready = active.iter().filter(|p| phase(p) == "Running").count() as i64;
        let completions = job["spec"]["completions"].as_i64().unwrap_or(1);
        let parallelism = job["spec"]["parallelism"].as_i64().unwrap_or(1);
        let backoff_limit = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
        let start_time = job["status"]["startTime"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(now);
        let deadline_passed = job["spec"]["activeDeadlineSeconds"]
            .as_i64()
            .is_some_and(|d| seconds_since(&start_time) >= d);

        let mut status = job["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        status["startTime"] = json!(start_time);
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        status["active"] = json!(active.len());
        status["ready"] = json!(ready);
        let time = now();
        let finish = |kind: &str, reason: &str, message: &str, status: &mut Value| {
            let interim = if kind == "Complete" {
                "SuccessCriteriaMet"
            } else {
                "FailureTarget"
            };
            status["conditions"] = json!([
                {"type": interim, "status": "True", "reason": reason, "message": message, "lastProbeTime": time, "lastTransitionTime": time},
                {"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": time, "lastTransitionTime": time},
            ]);
            status["active"] = json!(0);
            status["ready"] = json!(0);
        };
        if succeeded >= completions {
            finish(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                &mut status,
            );
            status["completionTime"] = json!(time);
        } else if deadline_passed {
            for pod in &active {
                self.api.internal_delete(
                    "pods",
                    &namespace,
                    pod["metadata"]["name"].as_str().unwrap_or_default(),
                    "Background",
                );
            }
            finish(
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                &mut status,
            );
        } else if failed > backoff_limit {
            for pod in &active {
                self.api.internal_delete(
                    "pods",
                    &namespace,
                    pod["metadata"]["name"].as_str().unwrap_or_default(),
                    "Background",
                );
            }
            finish(
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                &mut status,
            );
        } else {
            let wanted = parallelism.min(completions - succeeded) - active.len() as i64;
            for _ in 0..wanted.max(0) {
                if self.create_pod(job).is_ok() {
                    status["active"] = json!(status["active"].as_i64().unwrap_or(0) + 1);
                }
            }
        }
        if status != job["status"] {
            let mut updated = job.clone();
            updated["status"] = status;
            // A concurrent write wins; the next pass sees it and tries again.
            let _ = self.api.internal_put("jobs.batch", updated);
        }
    }

    fn create_pod(&self, job: &Value) -> Result<(), crate::error::ApiError> {
        let namespace = job["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = job["metadata"]["name"].as_str().unwrap_or_default();
        let template = &job["spec"]["template"];
        let mut metadata = template["metadata"].clone();
        if !metadata.is_object() {
            metadata = json!({});
        }
        metadata["generateName"] = json!(format!("{name}-"));
        metadata["namespace"] = json!(namespace);
        metadata["ownerReferences"] = json!([{
            "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job["metadata"]["uid"],
            "controller": true, "blockOwnerDeletion": true,
        }]);
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]});
        let target = self
            .api
            .target("", "v1", "pods", Some(namespace), None, None)?;
        self.api.create(&target, pod, &Query::default()).map(|_| ())
    }
}

/// Adds the Job a Job or Pod event concerns to `due` (a Pod through its owning Job).
fn note(due: &mut Option<BTreeSet<(String, String)>>, event: &Event) {
    let Some(due) = due else { return };
    let metadata = &event.object["metadata"];
    let job = match event.key.as_str() {
        "jobs.batch" => metadata["name"].as_str(),
        "pods" => metadata["ownerReferences"]
            .as_array()
            .and_then(|refs| refs.iter().find(|r| r["kind"] == "Job"))
            .and_then(|r| r["name"].as_str()),
        _ => None,
    };
    if let Some(job) = job {
        due.insert((event.namespace.clone(), job.to_owned()));
    }
}
