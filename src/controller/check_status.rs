//! EgressCheck status from run results, without a client: conditions, per-row transition
//! times, summary, history, and the events a change deserves.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::check::{EgressCheckStatus, ResultSummary, RunRecord};
use crate::api::conditions::{reasons, types};
use crate::probe::result::{Outcome, ProbeResult, Stage};
use crate::status::{conditions_equal_ignoring_time, set_condition, short_message};

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
/// transitions worth an event.
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
        let was_failing = before.is_some_and(|b| b.outcome == Outcome::Fail);
        let where_ = format!("{} ({})", row.endpoint, row.target());
        if row.outcome == Outcome::Fail && !was_failing {
            transitions.push(Transition {
                warning: true,
                reason: "EndpointUnreachable",
                note: short_message(&format!(
                    "{where_} fails at {}: {}: {}",
                    row.stage, row.reason, row.message
                )),
            });
        } else if row.outcome != Outcome::Fail && was_failing {
            transitions.push(Transition {
                warning: false,
                reason: "EndpointRecovered",
                note: short_message(&format!(
                    "{where_} is {} again: {}",
                    row.outcome, row.message
                )),
            });
        }
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
        .filter(|r| r.required && r.outcome == Outcome::Fail)
        .collect();
    let optional_failing: Vec<&ProbeResult> = rows
        .iter()
        .filter(|r| !r.required && r.outcome == Outcome::Fail)
        .collect();
    let unreachable: Vec<&ProbeResult> = rows
        .iter()
        .filter(|r| {
            r.outcome == Outcome::Fail
                && matches!(r.stage, Stage::Dns | Stage::Connect | Stage::Proxy)
        })
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
    let strip_run = |r: &Option<RunRecord>| {
        r.clone().map(|mut r| {
            r.start_time = None;
            r.completion_time = None;
            r
        })
    };
    a.observed_generation == b.observed_generation
        && conditions_equal_ignoring_time(&a.conditions, &b.conditions)
        && a.summary == b.summary
        && rows(a) == rows(b)
        && strip_run(&a.current_run) == strip_run(&b.current_run)
        && a.last_run_now == b.last_run_now
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
    use crate::probe::result::{Latency, Reason, TlsFacts};
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
            last_transition_time: None,
        }
    }

    #[test]
    fn transitions_are_reported_once_and_times_carry_over() {
        let (first, events) = merge_results(
            &[],
            vec![row("a", Outcome::Pass, true), row("b", Outcome::Fail, true)],
            &at(10),
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "EndpointUnreachable");
        let mut again = vec![row("a", Outcome::Pass, true), row("b", Outcome::Fail, true)];
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
        let (third, events) = merge_results(
            &second,
            vec![row("a", Outcome::Pass, true), row("b", Outcome::Pass, true)],
            &at(30),
        );
        assert_eq!(
            events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            ["EndpointRecovered"]
        );
        assert_eq!(third[1].last_transition_time, Some(at(30)));
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
}
