//! EgressCheck status from run results, without a client: conditions, per-row transition
//! times, summary, history, failed runs, and the events a change deserves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::check::{EgressCheckStatus, ResultSummary, RunRecord, RunState};
use crate::api::conditions::{conditions_equal_ignoring_time, set_condition, short_message};
use crate::api::conditions::{reasons, types};
use crate::api::result::ProbeResult;

use crate::controller::outages::counts_as_failing;

/// An event a status change deserves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// Rows as compared across runs: measurements that move every run (latency, days left) do not
/// count as a change.
fn significant(row: &ProbeResult) -> ProbeResult {
    let mut row = row.clone();
    row.latency = Default::default();
    row.last_transition_time = None;
    for address in &mut row.addresses {
        address.total_ms = None;
    }
    if let Some(tls) = &mut row.tls {
        tls.days_remaining = 0;
    }
    row
}

/// Carries each row's `lastTransitionTime` over unless its outcome changed, and lists the
/// interceptions worth an event (outages and their events come from `outages::apply`).
pub fn merge_results(
    previous: &[ProbeResult],
    mut rows: Vec<ProbeResult>,
    now: &Time,
) -> (Vec<ProbeResult>, Vec<Transition>) {
    let mut transitions = Vec::new();
    for row in &mut rows {
        let before = previous.iter().find(|p| p.key() == row.key());
        let changed = before.is_none_or(|b| b.outcome != row.outcome);
        row.last_transition_time = match before {
            Some(b) if !changed => b.last_transition_time.clone().or_else(|| Some(now.clone())),
            _ => Some(now.clone()),
        };
        let where_ = format!("{} ({})", row.endpoint, row.target());
        if row.intercepted && !before.is_some_and(|b| b.intercepted) {
            transitions.push(Transition {
                warning: true,
                reason: "TLSInterceptionDetected",
                note: short_message(&format!("{where_}: {}", row.message)),
            });
        }
    }
    (rows, transitions)
}

fn describe(rows: &[&ProbeResult]) -> String {
    let shown: Vec<String> = rows
        .iter()
        .take(5)
        .map(|r| format!("{} ({}): {}", r.endpoint, r.target(), r.reason))
        .collect();
    let more = rows.len().saturating_sub(shown.len());
    let mut text = shown.join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

/// Sets Ready, Reachable, TLSIntercepted and Degraded from the results.
pub fn result_conditions(status: &mut EgressCheckStatus, generation: Option<i64>, now: &Time) {
    let rows = &status.results;
    let required_failing: Vec<&ProbeResult> = rows
        .iter()
        .filter(|r| r.required && counts_as_failing(r))
        .collect();
    let optional_failing: Vec<&ProbeResult> = rows
        .iter()
        .filter(|r| !r.required && counts_as_failing(r))
        .collect();
    let unreachable: Vec<&ProbeResult> = rows
        .iter()
        .filter(|r| counts_as_failing(r) && r.unreachable())
        .collect();
    let intercepted: Vec<&ProbeResult> = rows.iter().filter(|r| r.intercepted).collect();
    let conditions = &mut status.conditions;
    if required_failing.is_empty() {
        set_condition(
            conditions,
            types::READY,
            true,
            reasons::ALL_REQUIRED_PASS,
            format!(
                "all {} required endpoint×port rows pass",
                rows.iter().filter(|r| r.required).count()
            ),
            generation,
            now,
        );
    } else {
        set_condition(
            conditions,
            types::READY,
            false,
            reasons::REQUIRED_FAILING,
            short_message(&format!(
                "{} required failing: {}",
                required_failing.len(),
                describe(&required_failing)
            )),
            generation,
            now,
        );
    }
    if unreachable.is_empty() {
        set_condition(
            conditions,
            types::REACHABLE,
            true,
            "AllEndpointsReachable",
            "every endpoint answered on the network",
            generation,
            now,
        );
    } else {
        set_condition(
            conditions,
            types::REACHABLE,
            false,
            "EndpointsUnreachable",
            short_message(&format!("not reachable: {}", describe(&unreachable))),
            generation,
            now,
        );
    }
    match intercepted.first() {
        None => set_condition(
            conditions,
            types::TLS_INTERCEPTED,
            false,
            reasons::NO_INTERCEPTION,
            "every certificate came from its expected issuer",
            generation,
            now,
        ),
        Some(first) => {
            let presented = first
                .tls
                .as_ref()
                .map(|t| t.issuer.clone())
                .unwrap_or_default();
            let expected = first
                .tls
                .as_ref()
                .and_then(|t| t.expected_issuer.clone())
                .unwrap_or_else(|| "the pinned keys".into());
            set_condition(
                conditions,
                types::TLS_INTERCEPTED,
                true,
                reasons::INTERCEPTION_DETECTED,
                short_message(&format!(
                    "{} row(s) intercepted: {} presents {presented}, expected {expected}; exclude the host from SSL decryption",
                    intercepted.len(),
                    first.target()
                )),
                generation,
                now,
            );
        }
    }
    if required_failing.is_empty() && !optional_failing.is_empty() {
        set_condition(
            conditions,
            types::DEGRADED,
            true,
            reasons::OPTIONAL_FAILING,
            short_message(&format!(
                "optional endpoints failing: {}",
                describe(&optional_failing)
            )),
            generation,
            now,
        );
    } else {
        set_condition(
            conditions,
            types::DEGRADED,
            false,
            if required_failing.is_empty() {
                reasons::ALL_REQUIRED_PASS
            } else {
                reasons::REQUIRED_FAILING
            },
            "",
            generation,
            now,
        );
    }
}

/// Statuses equal for the purpose of writing: timestamps and measurements aside.
pub fn same_status(a: &EgressCheckStatus, b: &EgressCheckStatus) -> bool {
    let rows = |s: &EgressCheckStatus| s.results.iter().map(significant).collect::<Vec<_>>();
    let strip_run = |r: &RunRecord| {
        let mut r = r.clone();
        r.start_time = None;
        r.completion_time = None;
        r
    };
    let strip = |r: &Option<RunRecord>| r.as_ref().map(strip_run);
    let history = |s: &EgressCheckStatus| s.history.iter().map(strip_run).collect::<Vec<_>>();
    a.observed_generation == b.observed_generation
        && conditions_equal_ignoring_time(&a.conditions, &b.conditions)
        && a.summary == b.summary
        && rows(a) == rows(b)
        && strip(&a.current_run) == strip(&b.current_run)
        && strip(&a.last_run) == strip(&b.last_run)
        && history(a) == history(b)
        && a.last_run_now == b.last_run_now
        && a.outages == b.outages
}

/// A failure summary with the run's own Job name taken out, so that the same failure in two
/// runs compares equal.
fn failure_signature(record: &RunRecord) -> Option<String> {
    let message = record.message.as_deref()?;
    Some(match record.job_name.as_deref() {
        Some(job) if !job.is_empty() => message.replace(job, "<job>"),
        _ => message.to_owned(),
    })
}

/// Whether `record` fails the way the status already shows: the recorded last run failed with
/// the same message, for the same change (run key), and Ready says so.
pub fn same_failure(status: &EgressCheckStatus, record: &RunRecord) -> bool {
    let Some(last) = status.last_run.as_ref() else {
        return false;
    };
    let ready_says_so = status
        .conditions
        .iter()
        .any(|c| c.type_ == types::READY && c.status == "False" && c.reason == reasons::RUN_FAILED);
    ready_says_so
        && last.state == Some(RunState::Failed)
        && last.run_key == record.run_key
        && failure_signature(last) == failure_signature(record)
}

/// The check generation a run key (`generation/profileGeneration/runNow`) was made for.
pub fn key_generation(key: Option<&str>) -> Option<i64> {
    key?.split('/').next()?.parse().ok()
}

/// A failed run in words: its number, the recorded summary, and the detail the cluster gave.
pub fn failure_text(record: &RunRecord, detail: Option<&str>) -> String {
    let mut text = format!(
        "probe run {} failed: {}",
        record.run.unwrap_or_default(),
        record.message.as_deref().unwrap_or("no reason given")
    );
    if let Some(detail) = detail {
        text.push_str(&format!(" ({detail})"));
    }
    short_message(&text)
}

/// Records a run that failed (its Job failed, vanished, or its results did not come back):
/// it becomes `lastRun`, enters the history, and Ready turns False with reason RunFailed,
/// saying when the next run comes. The other conditions keep describing the last results.
///
/// `must_record` is for a run whose Job is gone: only the status remembers it, so it is
/// recorded even when it fails like the last one. Returns whether the failure is news,
/// i.e. the status did not show it yet and it deserves a RunFailed event; a check failing
/// the same way on every run neither writes nor publishes again.
pub fn record_run_failure(
    status: &mut EgressCheckStatus,
    record: RunRecord,
    detail: Option<&str>,
    must_record: bool,
    history: usize,
    next_run: Option<&Time>,
    now: &Time,
) -> bool {
    let news = !same_failure(status, &record);
    if !news && !must_record {
        return false;
    }
    let what_next = match next_run {
        Some(next) => format!("the next run is due at {}", next.0),
        None => "set the netreach.dev/run-now annotation to a new value to run again".to_owned(),
    };
    let message = format!(
        "{}; the results shown are from the last run that finished, {what_next}",
        failure_text(&record, detail)
    );
    let generation = key_generation(record.run_key.as_deref());
    set_condition(
        &mut status.conditions,
        types::READY,
        false,
        reasons::RUN_FAILED,
        short_message(&message),
        generation,
        now,
    );
    status.next_run_time = next_run.cloned();
    status.last_run = Some(record.clone());
    push_history(status, record, history);
    news
}

/// Whether a run's results change anything (then lastRun and history move too).
pub fn results_changed(previous: &EgressCheckStatus, rows: &[ProbeResult]) -> bool {
    previous.results.len() != rows.len()
        || previous
            .results
            .iter()
            .map(significant)
            .ne(rows.iter().map(significant))
}

/// Prepends a run to the bounded history.
pub fn push_history(status: &mut EgressCheckStatus, run: RunRecord, limit: usize) {
    status.history.insert(0, run);
    status.history.truncate(limit.max(1));
}

pub fn summarize(status: &mut EgressCheckStatus) {
    status.summary = Some(ResultSummary::of(&status.results));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Protocol;
    use crate::api::check::RunTrigger;
    use crate::api::result::{Latency, Outcome, Reason, Stage, TlsFacts};
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn row(endpoint: &str, outcome: Outcome, required: bool) -> ProbeResult {
        ProbeResult {
            endpoint: endpoint.into(),
            host: Some(format!("{endpoint}.example.com")),
            cidr: None,
            port: 443,
            protocol: Protocol::Https,
            required,
            outcome,
            stage: if outcome == Outcome::Fail {
                Stage::Connect
            } else {
                Stage::Protocol
            },
            reason: if outcome == Outcome::Fail {
                Reason::ConnectionRefused
            } else {
                Reason::Reachable
            },
            message: "m".into(),
            intercepted: false,
            addresses: vec![],
            latency: Latency {
                total_ms: Some(5),
                ..Latency::default()
            },
            tls: None,
            detail: None,
            blocked_by: None,
            source_ip: None,
            last_transition_time: None,
            // Failing rows are in an outage, as the ledger leaves them with default thresholds.
            streak: crate::api::check::Streak {
                outage_since: (outcome == Outcome::Fail).then(|| at(0)),
                ..Default::default()
            },
        }
    }

    #[test]
    fn interceptions_are_reported_once_and_times_carry_over() {
        let mut intercepted = row("b", Outcome::Warn, true);
        intercepted.intercepted = true;
        let (first, events) = merge_results(
            &[],
            vec![
                row("a", Outcome::Pass, true),
                intercepted.clone(),
                row("c", Outcome::Fail, true),
            ],
            &at(10),
        );
        // Outages and their events are the ledger's (outages.rs), not this function's.
        assert_eq!(
            events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            ["TLSInterceptionDetected"]
        );
        let mut again = vec![
            row("a", Outcome::Pass, true),
            intercepted,
            row("c", Outcome::Fail, true),
        ];
        again[0].latency.total_ms = Some(99);
        let (second, events) = merge_results(&first, again, &at(20));
        assert!(events.is_empty(), "no event for an unchanged run");
        assert_eq!(second[0].last_transition_time, Some(at(10)));
        assert!(!results_changed(
            &EgressCheckStatus {
                results: first.clone(),
                ..Default::default()
            },
            &second
        ));
        let (third, _) = merge_results(
            &second,
            vec![
                row("a", Outcome::Pass, true),
                row("b", Outcome::Pass, true),
                row("c", Outcome::Pass, true),
            ],
            &at(30),
        );
        assert_eq!(third[1].last_transition_time, Some(at(30)));
        assert_eq!(third[0].last_transition_time, Some(at(10)));
    }

    #[test]
    fn a_failed_row_below_the_failure_threshold_changes_no_condition() {
        let mut once = row("a", Outcome::Fail, true);
        once.streak = crate::api::check::Streak {
            consecutive_failures: Some(1),
            ..Default::default()
        };
        let mut status = EgressCheckStatus {
            results: vec![once],
            ..Default::default()
        };
        result_conditions(&mut status, Some(1), &at(1));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let reachable = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Reachable")
            .unwrap();
        assert_eq!(reachable.status, "True");
        // Once the ledger counts it as failing, it does.
        status.results[0].streak.outage_since = Some(at(1));
        result_conditions(&mut status, Some(1), &at(2));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
    }

    #[test]
    fn an_outage_counts_as_a_change_to_write() {
        let a = EgressCheckStatus::default();
        let mut b = a.clone();
        b.outages.push(crate::api::check::Outage {
            endpoint: "a".into(),
            port: 443,
            start: at(1),
            end: None,
            reason: "ConnectionRefused".into(),
            message: "m".into(),
            runs: 1,
            recovery: None,
        });
        assert!(!same_status(&a, &b));
    }

    #[test]
    fn conditions_follow_required_optional_and_interception() {
        let mut intercepted = row("c", Outcome::Fail, true);
        intercepted.intercepted = true;
        intercepted.stage = Stage::Issuer;
        intercepted.tls = Some(TlsFacts {
            issuer: "CN=Web Proxy, O=Example Corp., OU=IT".into(),
            expected_issuer: Some("O=DigiCert Inc".into()),
            ..TlsFacts::default()
        });
        let mut status = EgressCheckStatus {
            results: vec![
                row("a", Outcome::Pass, true),
                row("b", Outcome::Fail, false),
            ],
            ..Default::default()
        };
        result_conditions(&mut status, Some(3), &at(1));
        let get = |s: &EgressCheckStatus, t: &str| {
            s.conditions.iter().find(|c| c.type_ == t).unwrap().clone()
        };
        assert_eq!(get(&status, "Ready").status, "True");
        assert_eq!(get(&status, "Degraded").status, "True");
        assert_eq!(get(&status, "Reachable").status, "False");
        assert_eq!(get(&status, "Ready").observed_generation, Some(3));
        status.results.push(intercepted);
        result_conditions(&mut status, Some(3), &at(2));
        assert_eq!(get(&status, "Ready").status, "False");
        assert_eq!(get(&status, "Degraded").status, "False");
        let tls = get(&status, "TLSIntercepted");
        assert_eq!(tls.status, "True");
        assert!(
            tls.message.contains("CN=Web Proxy, O=Example Corp., OU=IT")
                && tls.message.contains("O=DigiCert Inc"),
            "{}",
            tls.message
        );
    }
    fn failed_run(run: i64, key: &str, message: &str) -> RunRecord {
        let job = format!("vendor-{run}");
        RunRecord {
            run: Some(run),
            job_name: Some(job.clone()),
            run_key: Some(key.into()),
            trigger: Some(RunTrigger::Interval),
            state: Some(RunState::Failed),
            message: Some(message.replace("<job>", &job)),
            ..RunRecord::default()
        }
    }

    #[test]
    fn a_failed_run_turns_ready_false_once_and_the_same_failure_again_changes_nothing() {
        let mut status = EgressCheckStatus {
            results: vec![row("a", Outcome::Pass, true)],
            ..Default::default()
        };
        result_conditions(&mut status, Some(1), &at(1));
        let before = status.clone();
        let exited = "the probe pod of job <job> exited with 1";
        let news = record_run_failure(
            &mut status,
            failed_run(4, "1/1/", exited),
            Some("container 0123abcd: exec failed"),
            false,
            5,
            Some(&at(100)),
            &at(10),
        );
        assert!(news, "the first failure is news");
        assert!(!same_status(&before, &status), "a failed run is written");
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RunFailed")
        );
        assert!(
            ready.message.contains("vendor-4 exited with 1")
                && ready.message.contains("container 0123abcd"),
            "{}",
            ready.message
        );
        assert_eq!(status.history.len(), 1);

        // The next run fails the same way: no event, nothing to write.
        let written = status.clone();
        let news = record_run_failure(
            &mut status,
            failed_run(5, "1/1/", exited),
            Some("container 4567ef01: exec failed"),
            false,
            5,
            Some(&at(200)),
            &at(20),
        );
        assert!(!news);
        assert!(same_status(&written, &status));
        assert_eq!(status.last_run.as_ref().unwrap().run, Some(4));

        // A deleted Job is always recorded (only the status remembers it), an event only
        // when its failure differs.
        let deleted = "probe job <job> was deleted before its results were read";
        assert!(record_run_failure(
            &mut status,
            failed_run(6, "1/1/", deleted),
            None,
            true,
            5,
            None,
            &at(30),
        ));
        assert!(!record_run_failure(
            &mut status,
            failed_run(7, "1/1/", deleted),
            None,
            true,
            5,
            None,
            &at(40),
        ));
        assert_eq!(status.last_run.as_ref().unwrap().run, Some(7));
        assert_eq!(status.history.len(), 3);
    }

    #[test]
    fn last_run_and_history_count_as_changes_but_their_times_do_not() {
        let a = EgressCheckStatus {
            last_run: Some(failed_run(1, "1/1/", "x")),
            ..Default::default()
        };
        let mut b = a.clone();
        b.last_run.as_mut().unwrap().completion_time = Some(at(5));
        assert!(same_status(&a, &b));
        b.last_run = Some(failed_run(2, "1/1/", "x"));
        assert!(!same_status(&a, &b));
        let mut c = a.clone();
        push_history(&mut c, failed_run(1, "1/1/", "x"), 5);
        assert!(!same_status(&a, &c));
    }
}
