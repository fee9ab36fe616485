//! Table tests of [`decide`]: one observed world and a time in, the plan out, no cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::*;
use crate::api::check::{EgressCheckStatus, RunRecord, RunState, RunTrigger};
use crate::api::conditions::{reasons, types};
use crate::api::result::{Outcome, ProbeResult};
use crate::api::{ConnectivityProfile, EgressCheck};
use crate::controller::check::jobs::{JobEnd, JobFailure, RunJob};
use crate::controller::check::observe::{FinishedRun, Observed, ProfileLookup, RunFailure};
use crate::controller::run::{RUN_KEY_ANNOTATION, TRIGGER_ANNOTATION};

const IMAGE: &str = "netreach:test";
const UID: &str = "check-uid";

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}

/// A check over profile `vendor`, generation 1, probed every 60 s.
fn check() -> EgressCheck {
    serde_json::from_value(json!({
        "apiVersion": "netreach.dev/v1alpha1",
        "kind": "EgressCheck",
        "metadata": {"name": "agent", "namespace": "mdm", "uid": UID, "generation": 1},
        "spec": {"profileRef": {"name": "vendor"}, "interval": "60s"}
    }))
    .unwrap()
}

fn profile(generation: i64) -> ProfileLookup {
    ProfileLookup::Found(Box::new(
        serde_json::from_value::<ConnectivityProfile>(json!({
            "apiVersion": "netreach.dev/v1alpha1",
            "kind": "ConnectivityProfile",
            "metadata": {"name": "vendor", "namespace": "mdm", "generation": generation},
            "spec": {"endpoints": [{"name": "api", "host": "api.example.com",
                                    "ports": [{"port": 443, "protocol": "HTTPS"}]}]}
        }))
        .unwrap(),
    ))
}

/// The key of the check above over profile generation 1.
const KEY: &str = "1/1/";

fn observed() -> Observed {
    Observed {
        check: check(),
        profile: profile(1),
        ca_bundles: Ok(BTreeMap::new()),
        jobs: Vec::new(),
        finished: None,
        next_run_config: None,
    }
}

fn job(run: i64, key: &str, completed: Option<i64>) -> RunJob {
    RunJob {
        name: format!("agent-{run}"),
        uid: format!("job-{run}"),
        owner_uid: Some(UID.into()),
        run,
        run_key: Some(key.into()),
        trigger: Some(RunTrigger::Interval),
        end: completed.map(|_| JobEnd::Complete),
        start_time: Some(at(900)),
        completion_time: completed.map(at),
    }
}

fn row(outcome: Outcome) -> ProbeResult {
    serde_json::from_value(json!({
        "endpoint": "api", "host": "api.example.com", "port": 443, "protocol": "HTTPS",
        "required": true, "outcome": outcome,
        "stage": if outcome == Outcome::Fail { "Connect" } else { "Protocol" },
        "reason": if outcome == Outcome::Fail { "ConnectionRefused" } else { "Reachable" },
        "message": "m"
    }))
    .unwrap()
}

/// The status after run `run` (key `key`, finished at 1000) passed and was recorded.
fn passed_status(run: i64, key: &str) -> EgressCheckStatus {
    let mut observed = observed();
    observed.check.status = None;
    observed.jobs = vec![job(run, key, Some(1000))];
    observed.finished = Some(FinishedRun {
        job: job(run, key, Some(1000)),
        outcome: Ok(vec![row(Outcome::Pass)]),
    });
    let plan = decide(&observed, &at(1001), IMAGE);
    let mut status = plan.status.expect("a first result is written");
    status.current_run = None;
    status
}

/// The check after run 1 passed, with these Jobs.
fn after_first_run(jobs: Vec<RunJob>) -> Observed {
    with_status(Observed { jobs, ..observed() }, passed_status(1, KEY))
}

fn with_status(mut observed: Observed, status: EgressCheckStatus) -> Observed {
    observed.check.status = Some(status);
    observed
}

fn condition<'a>(status: &'a EgressCheckStatus, type_: &str) -> (&'a str, &'a str) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", status.conditions));
    (c.status.as_str(), c.reason.as_str())
}

fn config_map(run: i64, created: i64) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("agent-{run}")),
            creation_timestamp: Some(at(created)),
            owner_references: Some(vec![OwnerReference {
                uid: UID.into(),
                ..OwnerReference::default()
            }]),
            annotations: Some(BTreeMap::from([
                (RUN_KEY_ANNOTATION.to_owned(), KEY.to_owned()),
                (TRIGGER_ANNOTATION.to_owned(), "Interval".to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

fn trigger(plan: &Plan) -> Option<RunTrigger> {
    plan.run.as_ref().map(|r| r.trigger)
}

#[test]
fn a_new_check_starts_its_first_run_and_says_so() {
    let plan = decide(&observed(), &at(1000), IMAGE);
    assert_eq!(trigger(&plan), Some(RunTrigger::Created));
    let run = plan.run.as_ref().unwrap();
    assert_eq!(run.objects.job.metadata.name.as_deref(), Some("agent-1"));
    let status = plan.status.as_ref().unwrap();
    let current = status.current_run.as_ref().unwrap();
    assert_eq!(
        (current.run, current.state),
        (Some(1), Some(RunState::Running))
    );
    assert_eq!(
        condition(status, types::READY),
        ("False", reasons::AWAITING_FIRST_RUN)
    );
    assert_eq!(
        condition(status, types::RECONCILING),
        ("True", reasons::RUN_IN_PROGRESS)
    );
    assert_eq!(condition(status, types::STALLED).0, "False");
    assert_eq!(plan.requeue(), Requeue::After(IN_FLIGHT_RECHECK));
    assert!(plan.events.is_empty());
}

#[test]
fn a_due_interval_starts_a_run_the_status_does_not_record() {
    let observed = after_first_run(vec![job(1, KEY, Some(1000))]);
    let plan = decide(&observed, &at(1061), IMAGE);
    assert_eq!(trigger(&plan), Some(RunTrigger::Interval));
    assert!(plan.status.is_none(), "a periodic run writes no status");
}

#[test]
fn an_interval_not_yet_due_waits_until_it_is() {
    let observed = after_first_run(vec![job(1, KEY, Some(1000))]);
    let plan = decide(&observed, &at(1030), IMAGE);
    assert!(plan.run.is_none());
    assert!(plan.status.is_none());
    assert_eq!(plan.requeue(), Requeue::After(Duration::from_secs(30)));
}

#[test]
fn a_new_run_now_value_starts_a_run_and_is_remembered() {
    let mut observed = after_first_run(vec![job(1, KEY, Some(1000))]);
    observed.check.metadata.annotations = Some(BTreeMap::from([(
        RUN_NOW_ANNOTATION.to_owned(),
        "now-1".to_owned(),
    )]));
    let plan = decide(&observed, &at(1010), IMAGE);
    assert_eq!(trigger(&plan), Some(RunTrigger::RunNow));
    let status = plan.status.unwrap();
    assert_eq!(status.last_run_now.as_deref(), Some("now-1"));
    assert_eq!(
        status.current_run.unwrap().trigger,
        Some(RunTrigger::RunNow)
    );
}

#[test]
fn a_run_now_value_already_probed_starts_nothing() {
    let key = "1/1/now-1";
    let mut observed = with_status(
        Observed {
            jobs: vec![job(1, key, Some(1000))],
            ..observed()
        },
        passed_status(1, key),
    );
    observed.check.metadata.annotations = Some(BTreeMap::from([(
        RUN_NOW_ANNOTATION.to_owned(),
        "now-1".to_owned(),
    )]));
    let plan = decide(&observed, &at(1010), IMAGE);
    assert!(plan.run.is_none());
}

#[test]
fn a_spec_change_during_a_run_waits_for_it() {
    let mut observed = after_first_run(vec![job(1, KEY, Some(1000)), job(2, KEY, None)]);
    observed.check.metadata.generation = Some(2);
    let plan = decide(&observed, &at(1070), IMAGE);
    assert!(plan.run.is_none(), "one run at a time");
    assert_eq!(plan.requeue(), Requeue::After(IN_FLIGHT_RECHECK));
    let status = plan.status.unwrap();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(condition(&status, types::RECONCILING).0, "True");
}

#[test]
fn a_spec_change_after_a_run_starts_the_next_one() {
    let mut observed = after_first_run(vec![job(1, KEY, Some(1000))]);
    observed.check.metadata.generation = Some(2);
    let plan = decide(&observed, &at(1010), IMAGE);
    assert_eq!(trigger(&plan), Some(RunTrigger::SpecChanged));
    assert_eq!(
        plan.run.unwrap().objects.job.metadata.name.as_deref(),
        Some("agent-2")
    );
}

#[test]
fn a_profile_change_during_a_run_waits_and_then_reruns() {
    let base = with_status(
        Observed {
            profile: profile(2),
            ..observed()
        },
        passed_status(1, KEY),
    );
    let in_flight = Observed {
        jobs: vec![job(1, KEY, Some(1000)), job(2, KEY, None)],
        ..base.clone()
    };
    assert!(decide(&in_flight, &at(1010), IMAGE).run.is_none());
    let done = Observed {
        jobs: vec![job(1, KEY, Some(1000))],
        ..base
    };
    assert_eq!(
        trigger(&decide(&done, &at(1010), IMAGE)),
        Some(RunTrigger::ProfileChanged)
    );
}

#[test]
fn a_run_of_a_change_in_flight_is_adopted_after_a_restart() {
    let mut observed = after_first_run(vec![job(1, KEY, Some(1000)), job(2, "2/1/", None)]);
    observed.check.metadata.generation = Some(2);
    let plan = decide(&observed, &at(1010), IMAGE);
    assert!(plan.run.is_none());
    let current = plan.status.unwrap().current_run.unwrap();
    assert_eq!(current.job_name.as_deref(), Some("agent-2"));
    assert_eq!(current.state, Some(RunState::Running));
}

#[test]
fn a_recorded_run_whose_job_was_deleted_fails_once_and_is_not_rerun() {
    let mut status = passed_status(1, KEY);
    status.current_run = Some(RunRecord {
        run: Some(2),
        job_name: Some("agent-2".into()),
        run_key: Some("1/1/x".into()),
        state: Some(RunState::Running),
        ..RunRecord::default()
    });
    let mut observed = with_status(
        Observed {
            jobs: vec![job(1, KEY, Some(1000))],
            ..observed()
        },
        status,
    );
    observed.check.metadata.annotations = Some(BTreeMap::from([(
        RUN_NOW_ANNOTATION.to_owned(),
        "x".to_owned(),
    )]));
    let plan = decide(&observed, &at(1010), IMAGE);
    assert!(plan.run.is_none(), "the deleted run is not started again");
    let status = plan.status.unwrap();
    assert_eq!(
        condition(&status, types::READY),
        ("False", reasons::RUN_FAILED)
    );
    assert!(status.current_run.is_none());
    assert_eq!(status.last_run.unwrap().state, Some(RunState::Failed));
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.events[0].reason, "RunFailed");
    assert!(plan.events[0].note.contains("agent-2 was deleted"));
    assert_eq!(plan.delete_configs, ["agent-2"]);
}

#[test]
fn a_periodic_run_whose_job_was_deleted_is_found_by_its_config_map() {
    let observed = with_status(
        Observed {
            jobs: vec![job(1, KEY, Some(1000))],
            next_run_config: Some(config_map(2, 1061)),
            ..observed()
        },
        passed_status(1, KEY),
    );
    let plan = decide(&observed, &at(1100), IMAGE);
    let status = plan.status.unwrap();
    let last = status.last_run.unwrap();
    assert_eq!((last.run, last.state), (Some(2), Some(RunState::Failed)));
    assert_eq!(plan.events[0].reason, "RunFailed");
    assert!(plan.run.is_none(), "its number is not reused at once");
}

#[test]
fn a_fresh_config_map_waits_for_its_job() {
    let observed = with_status(
        Observed {
            jobs: vec![job(1, KEY, Some(1000))],
            next_run_config: Some(config_map(2, 1098)),
            ..observed()
        },
        passed_status(1, KEY),
    );
    let plan = decide(&observed, &at(1100), IMAGE);
    assert!(plan.run.is_none() && plan.status.is_none() && plan.events.is_empty());
    assert_eq!(
        plan.requeue(),
        Requeue::After(Duration::from_secs(3) + Duration::from_millis(100))
    );
}

fn failed_run(job_run: i64, summary: &str) -> Observed {
    let mut failed = job(job_run, KEY, Some(1060));
    failed.end = Some(JobEnd::Failed(Box::new(JobFailure {
        reason: Some("BackoffLimitExceeded".into()),
        message: None,
    })));
    with_status(
        Observed {
            jobs: vec![job(1, KEY, Some(1000)), failed.clone()],
            finished: Some(FinishedRun {
                job: failed,
                outcome: Err(RunFailure::new(
                    summary.replace("<job>", &format!("agent-{job_run}")),
                    "exit 1",
                )),
            }),
            ..observed()
        },
        passed_status(1, KEY),
    )
}

#[test]
fn a_failed_probe_pod_turns_ready_false_with_one_event() {
    let plan = decide(
        &failed_run(2, "the probe pod of job <job> exited with 1"),
        &at(1061),
        IMAGE,
    );
    let status = plan.status.unwrap();
    assert_eq!(
        condition(&status, types::READY),
        ("False", reasons::RUN_FAILED)
    );
    assert_eq!(
        status.results,
        passed_status(1, KEY).results,
        "last results stay"
    );
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.collected.as_deref(), Some("job-2"));
    assert_eq!(plan.delete_configs, ["agent-2"]);
    assert!(plan.record_run.is_none(), "no rows to record");
}

#[test]
fn results_that_do_not_come_back_whole_fail_the_run() {
    let plan = decide(
        &failed_run(2, "the results of probe job <job> did not come back whole"),
        &at(1061),
        IMAGE,
    );
    let last = plan.status.unwrap().last_run.unwrap();
    assert_eq!(last.state, Some(RunState::Failed));
    assert!(last.message.unwrap().contains("did not come back whole"));
}

#[test]
fn the_same_failure_again_after_a_restart_publishes_nothing() {
    let first = decide(
        &failed_run(2, "the probe pod of job <job> exited with 1"),
        &at(1061),
        IMAGE,
    );
    let failed_status = first.status.unwrap();
    // A restarted replica reads run 3, failing the same way, against the written status.
    let mut again = failed_run(3, "the probe pod of job <job> exited with 1");
    again.check.status = Some(failed_status);
    let plan = decide(&again, &at(1130), IMAGE);
    assert!(plan.events.is_empty(), "{:?}", plan.events);
    assert!(plan.status.is_none(), "nothing new to write");
    assert_eq!(plan.collected.as_deref(), Some("job-3"));
}

#[test]
fn unchanged_results_write_nothing() {
    let observed = with_status(
        Observed {
            jobs: vec![job(1, KEY, Some(1000)), job(2, KEY, Some(1060))],
            finished: Some(FinishedRun {
                job: job(2, KEY, Some(1060)),
                outcome: Ok(vec![row(Outcome::Pass)]),
            }),
            ..observed()
        },
        passed_status(1, KEY),
    );
    let plan = decide(&observed, &at(1061), IMAGE);
    assert!(plan.status.is_none());
    assert!(plan.events.is_empty());
    assert!(plan.record_run.is_some(), "metrics still see the run");
    assert_eq!(plan.requeue(), Requeue::After(Duration::from_secs(59)));
}

#[test]
fn a_failing_endpoint_turns_ready_false_with_an_event() {
    let observed = with_status(
        Observed {
            jobs: vec![job(1, KEY, Some(1000)), job(2, KEY, Some(1060))],
            finished: Some(FinishedRun {
                job: job(2, KEY, Some(1060)),
                outcome: Ok(vec![row(Outcome::Fail)]),
            }),
            ..observed()
        },
        passed_status(1, KEY),
    );
    let plan = decide(&observed, &at(1061), IMAGE);
    let status = plan.status.unwrap();
    assert_eq!(
        condition(&status, types::READY),
        ("False", reasons::REQUIRED_FAILING)
    );
    assert_eq!(status.last_run.unwrap().run, Some(2));
    assert_eq!(plan.events.len(), 1);
    assert_eq!(plan.events[0].reason, "EndpointUnreachable");
}

#[test]
fn a_success_after_a_failed_run_brings_ready_back() {
    let failed_status = decide(
        &failed_run(2, "the probe pod of job <job> exited with 1"),
        &at(1061),
        IMAGE,
    )
    .status
    .unwrap();
    let observed = with_status(
        Observed {
            jobs: vec![job(1, KEY, Some(1000)), job(3, KEY, Some(1130))],
            finished: Some(FinishedRun {
                job: job(3, KEY, Some(1130)),
                outcome: Ok(vec![row(Outcome::Pass)]),
            }),
            ..observed()
        },
        failed_status,
    );
    let status = decide(&observed, &at(1131), IMAGE).status.unwrap();
    assert_eq!(condition(&status, types::READY).0, "True");
}

#[test]
fn a_suspended_check_starts_nothing_and_waits_for_a_change() {
    let mut observed = after_first_run(vec![job(1, KEY, Some(1000))]);
    observed.check.spec.suspend = Some(true);
    let plan = decide(&observed, &at(5000), IMAGE);
    assert!(plan.run.is_none());
    assert_eq!(plan.requeue(), Requeue::AwaitChange);
}

#[test]
fn a_missing_profile_stalls_the_check() {
    let observed = Observed {
        profile: ProfileLookup::Missing {
            name: "vendor".into(),
        },
        ..observed()
    };
    let plan = decide(&observed, &at(1000), IMAGE);
    let status = plan.status.as_ref().unwrap();
    assert_eq!(
        condition(status, types::STALLED),
        ("True", reasons::PROFILE_NOT_FOUND)
    );
    assert_eq!(condition(status, types::READY).0, "False");
    assert!(plan.run.is_none());
    assert_eq!(plan.requeue(), Requeue::After(STALLED_RECHECK));
}

#[test]
fn a_profile_that_does_not_decode_stalls_the_check_saying_why() {
    let observed = Observed {
        profile: ProfileLookup::Undecodable {
            name: "vendor".into(),
            error: "unknown field `hosts`".into(),
        },
        ..observed()
    };
    let status = decide(&observed, &at(1000), IMAGE).status.unwrap();
    let stalled = status
        .conditions
        .iter()
        .find(|c| c.type_ == types::STALLED)
        .unwrap();
    assert_eq!(stalled.reason, reasons::INVALID_SPEC);
    assert!(
        stalled.message.contains("unknown field `hosts`"),
        "{}",
        stalled.message
    );
}

#[test]
fn a_missing_ca_bundle_stalls_the_check() {
    let observed = Observed {
        ca_bundles: Err("CA bundle ConfigMap mdm/corp-ca has no key ca.crt".into()),
        ..observed()
    };
    let plan = decide(&observed, &at(1000), IMAGE);
    assert_eq!(
        condition(plan.status.as_ref().unwrap(), types::STALLED),
        ("True", reasons::INVALID_SPEC)
    );
    assert!(plan.run.is_none());
}

#[test]
fn a_stall_already_shown_writes_nothing_again() {
    let observed = Observed {
        profile: ProfileLookup::Missing {
            name: "vendor".into(),
        },
        ..observed()
    };
    let status = decide(&observed, &at(1000), IMAGE).status.unwrap();
    let again = with_status(observed, status);
    assert!(decide(&again, &at(1300), IMAGE).status.is_none());
}

#[test]
fn finished_runs_beyond_the_history_limit_are_pruned_oldest_first() {
    let mut observed = with_status(
        Observed {
            jobs: (1..=7).map(|r| job(r, KEY, Some(1000 + r))).collect(),
            finished: Some(FinishedRun {
                job: job(7, KEY, Some(1007)),
                outcome: Ok(vec![row(Outcome::Pass)]),
            }),
            ..observed()
        },
        passed_status(1, KEY),
    );
    observed.check.spec.history_limit = Some(5);
    let plan = decide(&observed, &at(1010), IMAGE);
    assert_eq!(plan.prune_jobs, ["agent-2", "agent-1"]);
}

#[test]
fn a_check_being_deleted_only_forgets_its_metrics() {
    let mut observed = observed();
    observed.check.metadata.deletion_timestamp = Some(at(999));
    let plan = decide(&observed, &at(1000), IMAGE);
    assert!(plan.forget_metrics);
    assert!(plan.run.is_none() && plan.status.is_none());
    assert_eq!(plan.requeue(), Requeue::AwaitChange);
}

#[test]
fn decide_reads_no_clock() {
    let a = decide(&observed(), &at(1000), IMAGE);
    let b = decide(&observed(), &at(1000), IMAGE);
    assert_eq!(
        serde_json::to_value(a.status).unwrap(),
        serde_json::to_value(b.status).unwrap()
    );
}

fn run_of(observed: Observed, run: i64, outcome: Outcome, at_second: i64) -> Observed {
    let mut jobs = observed.jobs.clone();
    jobs.push(job(run, KEY, Some(at_second)));
    Observed {
        jobs,
        finished: Some(FinishedRun {
            job: job(run, KEY, Some(at_second)),
            outcome: Ok(vec![row(outcome)]),
        }),
        ..observed
    }
}

#[test]
fn under_a_failure_threshold_one_failed_run_changes_no_condition_and_opens_no_outage() {
    let mut observed = after_first_run(vec![job(1, KEY, Some(1000))]);
    observed.check.spec.failure_threshold = Some(3);
    let plan = decide(&run_of(observed, 2, Outcome::Fail, 1060), &at(1061), IMAGE);
    let status = plan.status.expect("the row's failure count moves");
    assert_eq!(
        status.results[0].outcome,
        Outcome::Fail,
        "the row shows the run"
    );
    assert_eq!(status.results[0].streak.consecutive_failures, Some(1));
    assert_eq!(condition(&status, types::READY).0, "True");
    assert!(status.outages.is_empty());
    assert!(plan.events.is_empty(), "{:?}", plan.events);
    assert!(plan.opened.is_empty());
}

#[test]
fn the_third_failed_run_opens_the_outage_from_the_status_alone() {
    let mut observed = after_first_run(vec![job(1, KEY, Some(1000))]);
    observed.check.spec.failure_threshold = Some(3);
    for (run, second) in [(2, 1060), (3, 1120), (4, 1180)] {
        let plan = decide(
            &run_of(observed.clone(), run, Outcome::Fail, second),
            &at(second + 1),
            IMAGE,
        );
        let status = plan.status.unwrap();
        if run < 4 {
            assert!(status.outages.is_empty(), "run {run}");
            assert!(plan.events.is_empty(), "run {run}: {:?}", plan.events);
        } else {
            assert_eq!(status.outages.len(), 1);
            assert_eq!(condition(&status, types::READY).0, "False");
            assert_eq!(plan.events[0].reason, "EndpointUnreachable");
            assert_eq!(plan.opened.len(), 1);
        }
        observed.jobs.push(job(run, KEY, Some(second)));
        observed.check.status = Some(status);
    }
}

#[test]
fn a_run_the_status_already_records_is_not_counted_again() {
    let observed = after_first_run(vec![job(1, KEY, Some(1000))]);
    // The run that wrote the status, read again by a restarted replica.
    let again = Observed {
        finished: Some(FinishedRun {
            job: job(1, KEY, Some(1000)),
            outcome: Ok(vec![row(Outcome::Pass)]),
        }),
        ..observed
    };
    let plan = decide(&again, &at(1010), IMAGE);
    assert!(plan.status.is_none());
    assert!(plan.events.is_empty());
}
