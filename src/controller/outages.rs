//! Flap control and the outage ledger, without a client: from the previous status and a new
//! run's rows, each row's streak, which rows count as failing, the outages and their events.
//!
//! Everything is derived from the status, so a restarted operator carries on counting.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::check::{Outage, Streak};
use crate::api::conditions::short_message;
use crate::api::result::{Outcome, ProbeResult};

/// Outages kept in the status.
pub const MAX_OUTAGES: usize = 20;

/// Consecutive runs it takes to count a row as failing, and as recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub failure: i32,
    pub success: i32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            failure: 1,
            success: 1,
        }
    }
}

impl Thresholds {
    /// From the spec's `failureThreshold` and `successThreshold` (absent or below 1: 1).
    pub fn of(failure: Option<i32>, success: Option<i32>) -> Self {
        Self {
            failure: failure.unwrap_or(1).max(1),
            success: success.unwrap_or(1).max(1),
        }
    }
}

/// An event an outage deserves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutageEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What a run does to the ledger.
#[derive(Clone, Debug, PartialEq)]
pub struct Ledger {
    /// The run's rows, each with its streak.
    pub rows: Vec<ProbeResult>,
    /// The outages, newest first, at most [`MAX_OUTAGES`].
    pub outages: Vec<Outage>,
    /// EndpointUnreachable for each outage opened, EndpointRecovered for each one closed.
    pub events: Vec<OutageEvent>,
    /// The (endpoint, port) of each outage this run opened.
    pub opened: Vec<(String, i32)>,
}

/// Whether a row counts as failing for conditions, events and the ledger.
pub fn counts_as_failing(row: &ProbeResult) -> bool {
    row.streak.outage_since.is_some()
}

/// `3m12s`, `2h0m5s`, `4d3h`: a duration as on-call people read it.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (days, hours, minutes, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes}m{secs}s")
    } else if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

fn seconds_between(from: &Time, to: &Time) -> i64 {
    to.0.as_second() - from.0.as_second()
}

fn is_open(outage: &Outage, key: (&str, i32)) -> bool {
    outage.end.is_none() && (outage.endpoint.as_str(), outage.port) == key
}

/// Gives each new row its streak and updates the outages.
///
/// `rows` are the run's rows with `lastTransitionTime` already carried over (a failing row's
/// is the first failed run of its streak, which becomes the start of an outage it opens).
/// A failed run counts up `consecutiveFailures`; the `failure`-th opens an outage. A passing
/// (or warning) run of a row in an outage counts up `consecutivePasses`; the `success`-th
/// closes it. An open outage of a row the run no longer has is closed without an event.
pub fn apply(
    previous_rows: &[ProbeResult],
    previous_outages: &[Outage],
    mut rows: Vec<ProbeResult>,
    thresholds: Thresholds,
    now: &Time,
) -> Ledger {
    let mut outages = previous_outages.to_vec();
    let mut events = Vec::new();
    let mut opened = Vec::new();
    for row in &mut rows {
        let before = previous_rows
            .iter()
            .find(|p| p.key() == row.key())
            .map(|p| p.streak.clone())
            .unwrap_or_default();
        let where_ = format!("{} ({})", row.endpoint, row.target());
        let key = (row.endpoint.clone(), row.port);
        let open = outages
            .iter_mut()
            .find(|o| is_open(o, (key.0.as_str(), key.1)));
        row.streak = if row.outcome == Outcome::Fail {
            let failures = before.consecutive_failures.unwrap_or(0) + 1;
            let since = match (before.outage_since, open) {
                (Some(since), Some(outage)) => {
                    outage.runs += 1;
                    Some(since)
                }
                // In an outage the ledger no longer lists (more than it keeps were newer).
                (Some(since), None) => Some(since),
                (None, _) if failures >= thresholds.failure => {
                    let start = row
                        .last_transition_time
                        .clone()
                        .unwrap_or_else(|| now.clone());
                    outages.insert(
                        0,
                        Outage {
                            endpoint: row.endpoint.clone(),
                            port: row.port,
                            start: start.clone(),
                            end: None,
                            reason: row.reason.to_string(),
                            message: short_message(&row.message),
                            runs: failures,
                            recovery: None,
                        },
                    );
                    let after = if failures > 1 {
                        format!(" ({failures} failed runs in a row)")
                    } else {
                        String::new()
                    };
                    events.push(OutageEvent {
                        warning: true,
                        reason: "EndpointUnreachable",
                        note: short_message(&format!(
                            "{where_} fails at {}{after}: {}: {}",
                            row.stage, row.reason, row.message
                        )),
                    });
                    opened.push(key.clone());
                    Some(start)
                }
                (None, _) => None,
            };
            Streak {
                consecutive_failures: Some(failures),
                consecutive_passes: None,
                outage_since: since,
            }
        } else {
            match before.outage_since {
                None => Streak::default(),
                Some(since) => {
                    let passes = before.consecutive_passes.unwrap_or(0) + 1;
                    if passes >= thresholds.success {
                        let lasted = human_duration(seconds_between(&since, now));
                        let recovery = format!("restored after {lasted}");
                        if let Some(outage) = open {
                            outage.end = Some(now.clone());
                            outage.recovery = Some(recovery);
                        }
                        events.push(OutageEvent {
                            warning: false,
                            reason: "EndpointRecovered",
                            note: short_message(&format!(
                                "{where_} is {} again after {lasted} down: {}",
                                row.outcome, row.message
                            )),
                        });
                        Streak::default()
                    } else {
                        Streak {
                            consecutive_failures: None,
                            consecutive_passes: Some(passes),
                            outage_since: Some(since),
                        }
                    }
                }
            }
        };
    }
    // An open outage whose row is gone (left the profile) or no longer counts as failing.
    for outage in outages.iter_mut().filter(|o| o.end.is_none()) {
        let row = rows
            .iter()
            .find(|r| (r.endpoint.as_str(), r.port) == (outage.endpoint.as_str(), outage.port));
        if row.is_none_or(|r| !counts_as_failing(r)) {
            let lasted = human_duration(seconds_between(&outage.start, now));
            outage.end = Some(now.clone());
            outage.recovery = Some(match row {
                None => format!("no longer checked after {lasted}"),
                Some(_) => format!("restored after {lasted}"),
            });
        }
    }
    outages.sort_by_key(|o| std::cmp::Reverse(o.start.0));
    outages.truncate(MAX_OUTAGES);
    Ledger {
        rows,
        outages,
        events,
        opened,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Protocol;
    use crate::api::result::{Latency, Reason, Stage};
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn row(endpoint: &str, outcome: Outcome) -> ProbeResult {
        let fail = outcome == Outcome::Fail;
        ProbeResult {
            endpoint: endpoint.into(),
            host: None,
            cidr: Some("127.0.0.1".into()),
            port: 8080,
            protocol: Protocol::Http,
            required: true,
            outcome,
            stage: if fail {
                Stage::Connect
            } else {
                Stage::Protocol
            },
            reason: if fail {
                Reason::ConnectionRefused
            } else {
                Reason::Reachable
            },
            message: if fail { "refused" } else { "fine" }.into(),
            intercepted: false,
            addresses: vec![],
            latency: Latency::default(),
            tls: None,
            detail: None,
            last_transition_time: None,
            blocked_by: None,
            source_ip: None,
            streak: Streak::default(),
        }
    }

    /// Runs the outcomes in order, one per 60 s from t=1000, the way the controller does
    /// (lastTransitionTime carried over unless the outcome changed), each run's rows and
    /// outages becoming the previous status of the next.
    fn runs(outcomes: &[Outcome], thresholds: Thresholds) -> Vec<Ledger> {
        let mut previous: (Vec<ProbeResult>, Vec<Outage>) = (vec![], vec![]);
        let mut ledgers = Vec::new();
        for (i, outcome) in outcomes.iter().enumerate() {
            let now = at(1000 + 60 * i as i64);
            let mut new = row("api", *outcome);
            new.last_transition_time = match previous.0.first() {
                Some(p) if p.outcome == *outcome => p.last_transition_time.clone(),
                _ => Some(now.clone()),
            };
            let ledger = apply(&previous.0, &previous.1, vec![new], thresholds, &now);
            previous = (ledger.rows.clone(), ledger.outages.clone());
            ledgers.push(ledger);
        }
        ledgers
    }

    fn reasons(ledger: &Ledger) -> Vec<&'static str> {
        ledger.events.iter().map(|e| e.reason).collect()
    }

    use Outcome::{Fail, Pass, Warn};

    #[test]
    fn with_default_thresholds_one_failure_opens_an_outage_and_one_pass_closes_it() {
        let ledgers = runs(&[Pass, Fail, Fail, Pass, Pass], Thresholds::default());
        assert!(ledgers[0].events.is_empty() && ledgers[0].outages.is_empty());
        assert_eq!(reasons(&ledgers[1]), ["EndpointUnreachable"]);
        assert_eq!(ledgers[1].opened, [("api".to_owned(), 8080)]);
        assert!(counts_as_failing(&ledgers[1].rows[0]));
        assert_eq!(ledgers[1].outages.len(), 1);
        let open = &ledgers[1].outages[0];
        assert_eq!(
            (open.start.clone(), open.end.clone(), open.runs),
            (at(1060), None, 1)
        );
        assert_eq!(
            (open.reason.as_str(), open.message.as_str()),
            ("ConnectionRefused", "refused")
        );
        // The second failure adds a run and no event.
        assert!(ledgers[2].events.is_empty());
        assert_eq!(ledgers[2].outages[0].runs, 2);
        assert_eq!(ledgers[2].rows[0].streak.consecutive_failures, Some(2));
        // The first pass closes it, with its duration in the event and the ledger.
        assert_eq!(reasons(&ledgers[3]), ["EndpointRecovered"]);
        assert!(
            ledgers[3].events[0]
                .note
                .contains("api (127.0.0.1:8080) is Pass again after 2m0s down"),
            "{:?}",
            ledgers[3].events
        );
        let closed = &ledgers[3].outages[0];
        assert_eq!(closed.end, Some(at(1180)));
        assert_eq!(closed.recovery.as_deref(), Some("restored after 2m0s"));
        assert_eq!(closed.runs, 2);
        assert_eq!(ledgers[3].rows[0].streak, Streak::default());
        assert!(!counts_as_failing(&ledgers[3].rows[0]));
        // Nothing more happens while it passes.
        assert!(ledgers[4].events.is_empty());
        assert_eq!(ledgers[4].outages, ledgers[3].outages);
    }

    #[test]
    fn a_failure_threshold_of_three_ignores_a_single_failed_run() {
        let three = Thresholds {
            failure: 3,
            success: 1,
        };
        let ledgers = runs(&[Pass, Fail, Pass, Fail, Fail], three);
        for ledger in &ledgers {
            assert!(ledger.events.is_empty(), "{:?}", ledger.events);
            assert!(ledger.outages.is_empty());
            assert!(!counts_as_failing(&ledger.rows[0]));
        }
        // The row shows the latest result and its count all along.
        assert_eq!(ledgers[1].rows[0].outcome, Fail);
        assert_eq!(ledgers[1].rows[0].streak.consecutive_failures, Some(1));
        assert_eq!(ledgers[2].rows[0].streak.consecutive_failures, None);
        assert_eq!(ledgers[4].rows[0].streak.consecutive_failures, Some(2));
    }

    #[test]
    fn the_third_failure_opens_an_outage_that_starts_at_the_first() {
        let three = Thresholds {
            failure: 3,
            success: 1,
        };
        let ledgers = runs(&[Pass, Fail, Fail, Fail, Fail], three);
        assert!(ledgers[2].events.is_empty());
        assert_eq!(reasons(&ledgers[3]), ["EndpointUnreachable"]);
        assert!(
            ledgers[3].events[0].note.contains("3 failed runs in a row"),
            "{:?}",
            ledgers[3].events
        );
        let outage = &ledgers[3].outages[0];
        assert_eq!((outage.start.clone(), outage.runs), (at(1060), 3));
        assert_eq!(ledgers[3].rows[0].streak.outage_since, Some(at(1060)));
        assert_eq!(ledgers[4].outages[0].runs, 4);
        assert!(ledgers[4].events.is_empty());
    }

    #[test]
    fn a_success_threshold_keeps_the_outage_open_through_a_single_pass() {
        let two = Thresholds {
            failure: 1,
            success: 2,
        };
        let ledgers = runs(&[Fail, Pass, Fail, Warn, Pass, Pass], two);
        assert_eq!(reasons(&ledgers[0]), ["EndpointUnreachable"]);
        // One pass: still failing, the row shows the pass and counts it.
        assert!(ledgers[1].events.is_empty());
        assert!(counts_as_failing(&ledgers[1].rows[0]));
        assert_eq!(ledgers[1].rows[0].outcome, Pass);
        assert_eq!(ledgers[1].rows[0].streak.consecutive_passes, Some(1));
        assert_eq!(ledgers[1].rows[0].streak.consecutive_failures, None);
        assert_eq!(ledgers[1].outages[0].end, None);
        // A failure in between starts the count of passes again, in the same outage.
        assert!(ledgers[2].events.is_empty());
        assert_eq!(ledgers[2].outages.len(), 1);
        assert_eq!(ledgers[2].outages[0].runs, 2);
        assert_eq!(ledgers[2].rows[0].streak.consecutive_passes, None);
        // A warning counts as passing; two in a row close the outage.
        assert!(ledgers[3].events.is_empty());
        assert_eq!(reasons(&ledgers[4]), ["EndpointRecovered"]);
        assert_eq!(ledgers[4].outages[0].end, Some(at(1240)));
        assert_eq!(
            ledgers[4].outages[0].recovery.as_deref(),
            Some("restored after 4m0s")
        );
        assert!(ledgers[5].events.is_empty());
    }

    #[test]
    fn a_restart_carries_on_from_the_status_alone() {
        // What a fresh operator reads: the status written after two failed runs of three.
        let three = Thresholds {
            failure: 3,
            success: 1,
        };
        let before = runs(&[Fail, Fail], three);
        let status_rows: Vec<ProbeResult> =
            serde_json::from_value(serde_json::to_value(&before[1].rows).unwrap()).unwrap();
        assert_eq!(status_rows[0].streak.consecutive_failures, Some(2));
        let mut third = row("api", Fail);
        third.last_transition_time = status_rows[0].last_transition_time.clone();
        let ledger = apply(
            &status_rows,
            &before[1].outages,
            vec![third],
            three,
            &at(2000),
        );
        assert_eq!(reasons(&ledger), ["EndpointUnreachable"]);
        assert_eq!(ledger.outages[0].start, at(1000));
    }

    #[test]
    fn a_row_gone_from_the_run_closes_its_outage_without_an_event() {
        let ledgers = runs(&[Fail], Thresholds::default());
        let ledger = apply(
            &ledgers[0].rows,
            &ledgers[0].outages,
            vec![row("other", Pass)],
            Thresholds::default(),
            &at(1090),
        );
        assert!(ledger.events.is_empty());
        assert_eq!(
            ledger.outages[0].recovery.as_deref(),
            Some("no longer checked after 1m30s")
        );
        assert_eq!(ledger.outages[0].end, Some(at(1090)));
    }

    #[test]
    fn the_ledger_keeps_the_newest_twenty_outages_newest_first() {
        let mut rows: Vec<ProbeResult> = vec![];
        let mut outages = vec![];
        for i in 0..25 {
            let outcome = if i % 2 == 0 { Fail } else { Pass };
            let now = at(1000 + 60 * i);
            let mut new = row("api", outcome);
            new.last_transition_time = Some(now.clone());
            let ledger = apply(&rows, &outages, vec![new], Thresholds::default(), &now);
            (rows, outages) = (ledger.rows, ledger.outages);
        }
        // 13 outages opened (runs 0, 2, …, 24); all are kept up to the bound.
        assert_eq!(outages.len(), 13);
        for i in 25..40 {
            let outcome = if i % 2 == 0 { Fail } else { Pass };
            let now = at(1000 + 60 * i);
            let mut new = row("api", outcome);
            new.last_transition_time = Some(now.clone());
            let ledger = apply(&rows, &outages, vec![new], Thresholds::default(), &now);
            (rows, outages) = (ledger.rows, ledger.outages);
        }
        assert_eq!(outages.len(), MAX_OUTAGES);
        assert_eq!(outages[0].start, at(1000 + 60 * 38));
        assert!(outages.windows(2).all(|w| w[0].start.0 > w[1].start.0));
        assert_eq!(outages.iter().filter(|o| o.end.is_none()).count(), 0);
    }

    #[test]
    fn rows_are_kept_apart_by_endpoint_and_port() {
        let mut a = row("api", Fail);
        a.last_transition_time = Some(at(10));
        let mut b = row("api", Pass);
        b.port = 8443;
        let first = apply(
            &[],
            &[],
            vec![a.clone(), b.clone()],
            Thresholds::default(),
            &at(10),
        );
        assert_eq!(first.outages.len(), 1);
        assert_eq!(first.outages[0].port, 8080);
        // Now 8443 fails too, and 8080 recovers: one closes, one opens.
        let mut a2 = row("api", Pass);
        a2.last_transition_time = Some(at(20));
        let mut b2 = row("api", Fail);
        b2.port = 8443;
        b2.last_transition_time = Some(at(20));
        let second = apply(
            &first.rows,
            &first.outages,
            vec![a2, b2],
            Thresholds::default(),
            &at(20),
        );
        assert_eq!(
            reasons(&second),
            ["EndpointRecovered", "EndpointUnreachable"]
        );
        assert_eq!(second.outages.len(), 2);
        assert_eq!(
            (second.outages[0].port, second.outages[0].end.clone()),
            (8443, None)
        );
        assert_eq!(
            (second.outages[1].port, second.outages[1].end.clone()),
            (8080, Some(at(20)))
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(7205), "2h0m5s");
        assert_eq!(human_duration(3 * 86_400 + 7200 + 5), "3d2h");
        assert_eq!(human_duration(-5), "0s");
    }
}
