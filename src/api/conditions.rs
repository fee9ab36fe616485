//! Condition types and reasons written by the controllers, in one place, and the helpers that
//! set a condition (keeping `lastTransitionTime` unless the status flips) and compare statuses
//! ignoring timestamps, so unchanged runs cause no writes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types (adjectives, kstatus-compatible).
pub mod types {
    pub const READY: &str = "Ready";
    pub const REACHABLE: &str = "Reachable";
    pub const TLS_INTERCEPTED: &str = "TLSIntercepted";
    pub const DEGRADED: &str = "Degraded";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    pub const RUNNING: &str = "Running";
    pub const ACCEPTED: &str = "Accepted";
    pub const RESOLVED: &str = "Resolved";
    pub const POLICY_APPLIED: &str = "PolicyApplied";
}

/// Condition reasons (CamelCase).
pub mod reasons {
    pub const ALL_REQUIRED_PASS: &str = "AllRequiredEndpointsPass";
    pub const REQUIRED_FAILING: &str = "RequiredEndpointsFailing";
    pub const OPTIONAL_FAILING: &str = "OptionalEndpointsFailing";
    pub const NO_INTERCEPTION: &str = "NoInterception";
    pub const INTERCEPTION_DETECTED: &str = "InterceptionDetected";
    pub const AWAITING_FIRST_RUN: &str = "AwaitingFirstRun";
    pub const RUN_IN_PROGRESS: &str = "RunInProgress";
    pub const RUN_COMPLETE: &str = "RunComplete";
    pub const RUN_FAILED: &str = "RunFailed";
    pub const SUSPENDED: &str = "Suspended";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PROFILE_NOT_FOUND: &str = "ProfileNotFound";
    pub const VALID: &str = "Valid";
    pub const ALL_RESOLVED: &str = "AllResolved";
    pub const RESOLUTION_FAILED: &str = "ResolutionFailed";
    pub const NOT_CONFIGURED: &str = "NotConfigured";
}

/// Sets (or adds) condition `type_`; `lastTransitionTime` moves only when the status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now.clone();
            }
            existing.status = status;
            existing.reason = reason.to_owned();
            existing.message = message;
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Condition lists equal but for `lastTransitionTime`.
pub fn conditions_equal_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    let strip = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    a.len() == b.len() && a.iter().map(strip).eq(b.iter().map(strip))
}

/// Conditions truncate messages to what the API allows (32 KiB); keep them far shorter.
pub fn short_message(text: &str) -> String {
    const MAX: usize = 1024;
    if text.len() <= MAX {
        text.to_owned()
    } else {
        let cut = text.floor_char_boundary(MAX - 1);
        format!("{}…", &text[..cut])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            "Ready",
            false,
            "AwaitingFirstRun",
            "waiting",
            Some(1),
            &at(100),
        );
        set_condition(
            &mut conditions,
            "Ready",
            false,
            "RequiredEndpointsFailing",
            "down",
            Some(2),
            &at(200),
        );
        assert_eq!(conditions[0].last_transition_time, at(100));
        assert_eq!(conditions[0].reason, "RequiredEndpointsFailing");
        assert_eq!(conditions[0].observed_generation, Some(2));
        set_condition(
            &mut conditions,
            "Ready",
            true,
            "AllRequiredEndpointsPass",
            "up",
            Some(2),
            &at(300),
        );
        assert_eq!(conditions[0].last_transition_time, at(300));
        assert!(is_true(&conditions, "Ready"));
    }

    #[test]
    fn comparison_ignores_only_timestamps() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        set_condition(&mut a, "Ready", true, "R", "m", Some(1), &at(1));
        set_condition(&mut b, "Ready", true, "R", "m", Some(1), &at(2));
        assert!(conditions_equal_ignoring_time(&a, &b));
        set_condition(&mut b, "Ready", true, "R", "other", Some(1), &at(2));
        assert!(!conditions_equal_ignoring_time(&a, &b));
    }
}
