//! One row from what each address's session found: the worst address decides, or with
//! first-working-address probing the first that works.

use std::net::IpAddr;

use super::net::Failure;
use super::plan::Target;
use crate::api::result::{AddressResult, Latency, Outcome, ProbeResult, Reason, Stage, TlsFacts};

/// A row; its message gets the target and the reason's next step (see [`Reason::explain`]).
pub(super) fn row(
    target: &Target,
    outcome: Outcome,
    stage: Stage,
    reason: Reason,
    message: String,
) -> ProbeResult {
    let host = target
        .host
        .as_deref()
        .or(target.cidr.as_deref())
        .unwrap_or("?");
    let message = reason.explain(stage, &message, host, &target.display());
    ProbeResult {
        endpoint: target.endpoint.clone(),
        host: target.host.clone(),
        cidr: target.cidr.clone(),
        port: i32::from(target.port),
        protocol: target.protocol,
        required: target.required,
        outcome,
        stage,
        reason,
        message,
        intercepted: false,
        addresses: Vec::new(),
        latency: Latency::default(),
        tls: None,
        detail: None,
        blocked_by: None,
        source_ip: None,
        last_transition_time: None,
        streak: Default::default(),
    }
}

/// What one session (one address, or the proxy tunnel) found.
pub(super) struct Session {
    pub(super) outcome: Outcome,
    pub(super) stage: Stage,
    pub(super) reason: Reason,
    pub(super) message: String,
    pub(super) intercepted: bool,
    pub(super) tls: Option<TlsFacts>,
    pub(super) detail: Option<String>,
    pub(super) latency: Latency,
    /// How a port expected to be Blocked was blocked.
    pub(super) blocked_by: Option<Reason>,
    /// The source address an echo service saw.
    pub(super) source_ip: Option<String>,
}

impl Session {
    pub(super) fn failed(failure: Failure, latency: Latency, tls: Option<TlsFacts>) -> Self {
        Self {
            outcome: Outcome::Fail,
            stage: failure.stage,
            reason: failure.reason,
            message: failure.message,
            intercepted: failure.intercepted,
            tls,
            detail: None,
            latency,
            blocked_by: None,
            source_ip: None,
        }
    }

    /// A port expected to be Blocked that was: it passes, and records how.
    pub(super) fn blocked(target: &Target, failure: Failure, latency: Latency) -> Self {
        Self {
            outcome: Outcome::Pass,
            stage: failure.stage,
            reason: Reason::Blocked,
            message: format!(
                "{} is blocked, as expected ({}): {}",
                target.display(),
                failure.reason,
                // What happened, without the remedy a failure would carry.
                failure.message.split("; ").next().unwrap_or_default()
            ),
            intercepted: false,
            tls: None,
            detail: None,
            latency,
            blocked_by: Some(failure.reason),
            source_ip: None,
        }
    }
}

pub(super) fn from_session(target: &Target, session: Session) -> ProbeResult {
    ProbeResult {
        intercepted: session.intercepted,
        latency: session.latency,
        tls: session.tls,
        detail: session.detail,
        blocked_by: session.blocked_by,
        source_ip: session.source_ip,
        ..row(
            target,
            session.outcome,
            session.stage,
            session.reason,
            session.message,
        )
    }
}

/// One row from the per-address sessions. Every address probed: the worst address decides,
/// and the message says how many failed, because one dead address behind a name is exactly
/// what to catch. `first_working` (`--first-address-only`, addresses tried in order until one
/// works): the address that works decides, else the failure of the attempts; the addresses
/// list still shows every attempt.
pub(super) fn aggregate(
    target: &Target,
    sessions: Vec<(IpAddr, Session)>,
    first_working: bool,
) -> ProbeResult {
    let addresses: Vec<AddressResult> = sessions
        .iter()
        .map(|(address, s)| AddressResult {
            address: address.to_string(),
            outcome: s.outcome,
            stage: s.stage,
            reason: s.reason,
            message: if s.outcome == Outcome::Pass {
                String::new()
            } else {
                s.message.clone()
            },
            total_ms: Some(
                s.latency.connect_ms.unwrap_or(0)
                    + s.latency.tls_ms.unwrap_or(0)
                    + s.latency.protocol_ms.unwrap_or(0),
            ),
        })
        .collect();
    let total = sessions.len();
    let failed = sessions
        .iter()
        .filter(|(_, s)| s.outcome == Outcome::Fail)
        .count();
    let working = sessions
        .iter()
        .position(|(_, s)| s.outcome != Outcome::Fail)
        .filter(|_| first_working);
    let verdict = match working {
        Some(index) => sessions.into_iter().nth(index),
        None => sessions
            .into_iter()
            .max_by_key(|(_, s)| (s.outcome, s.intercepted)),
    };
    let Some((address, verdict)) = verdict else {
        return row(
            target,
            Outcome::Fail,
            Stage::Dns,
            Reason::NoAnswer,
            format!(
                "{} has no address to probe; check the host's A and AAAA records",
                target.display()
            ),
        );
    };
    let mut result = from_session(target, verdict);
    if working.is_some() && failed > 0 {
        result.message = format!(
            "{}; {address} is the first address that works, after {failed} that failed (probing stops at the first working address)",
            result.message
        );
    } else if total > 1 && failed > 0 && failed < total {
        result.message = format!(
            "{failed} of {total} addresses fail; {address}: {}",
            result.message
        );
    }
    result.addresses = addresses;
    result
}
