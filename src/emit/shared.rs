//! Helpers every flavor's emitter shares: notes, address and label selection, selectors.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::Value;

use super::types::MatchLabels;
use super::{Allow, Input, Note, PortRule, pod_labels};
use crate::api::Flavor;

pub(super) const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
pub(super) const ANP_MAX_RULES: usize = 100;
pub(super) const ANP_MAX_PEERS: usize = 25;
/// Most ports a range is listed as, port by port, in flavors without ranges.
pub(super) const MAX_LISTED_RANGE: usize = 256;

/// The notes every flavor owes an endpoint for what its protocols need beyond the declared
/// ports: FTP data ports that are unknown, and ESP where the flavor cannot express it.
pub(super) fn protocol_notes(flavor: Flavor, allow: &Allow, esp_expressible: bool) -> Vec<Note> {
    let mut notes: Vec<Note> = allow
        .ftp_without_range
        .iter()
        .map(|port| super::ftp_range_note(flavor, allow, *port))
        .collect();
    if allow.esp && !esp_expressible {
        notes.push(super::esp_note(flavor, allow));
    }
    notes
}

/// Each port of `rule`, for flavors that only take single ports; None (and the caller notes
/// it) when the range is too long to list.
pub(super) fn listed_ports(rule: &PortRule) -> Option<Vec<u16>> {
    let count = usize::from(rule.to - rule.from) + 1;
    (count <= MAX_LISTED_RANGE).then(|| (rule.from..=rule.to).collect())
}

/// The note of a range too long to list port by port.
pub(super) fn range_note(flavor: Flavor, allow: &Allow, rule: &PortRule) -> Note {
    note(
        flavor,
        allow,
        format!(
            "{} spans more than {MAX_LISTED_RANGE} ports, and this flavor has no port ranges; it is left out, narrow the server's passive range",
            rule.shown()
        ),
    )
}

pub(super) fn to_value<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("emitted objects serialize")
}

pub(super) fn note(flavor: Flavor, allow: &Allow, message: impl Into<String>) -> Note {
    Note {
        flavor,
        endpoint: allow.endpoint.clone(),
        message: message.into(),
    }
}

/// The networks an address-based flavor may use for an endpoint, or the note why none.
pub(super) fn address_nets(flavor: Flavor, allow: &Allow) -> Result<Vec<IpNet>, Note> {
    if allow.is_wildcard() {
        return Err(note(
            flavor,
            allow,
            "a wildcard host has no addresses to allow; this flavor matches addresses only",
        ));
    }
    if allow.nets.is_empty() {
        let host = allow.host.as_deref().unwrap_or("?");
        return Err(note(
            flavor,
            allow,
            format!(
                "no resolved addresses for {host} yet; resolve it when rendering, or let the operator record its addresses in the profile's status"
            ),
        ));
    }
    Ok(allow.nets.clone())
}

/// The profile's pod selector as plain labels, or a note when it has expressions this flavor
/// cannot carry (dropping them would select more pods).
pub(super) fn plain_labels(
    flavor: Flavor,
    input: &Input<'_>,
) -> Result<BTreeMap<String, String>, Note> {
    let has_expressions = input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.pod_selector.as_ref())
        .and_then(|s| s.match_expressions.as_ref())
        .is_some_and(|e| !e.is_empty());
    if has_expressions {
        return Err(Note {
            flavor,
            endpoint: "*".into(),
            message: "spec.policy.podSelector.matchExpressions cannot be expressed in this flavor; use matchLabels".into(),
        });
    }
    Ok(pod_labels(input))
}

pub(super) fn labels_selector(labels: BTreeMap<String, String>) -> MatchLabels {
    MatchLabels {
        match_labels: labels,
    }
}

pub(super) fn namespace_selector(namespace: &str) -> MatchLabels {
    labels_selector(BTreeMap::from([(
        NAMESPACE_NAME_LABEL.to_owned(),
        namespace.to_owned(),
    )]))
}

/// The networks an explicit Deny of a Blocked endpoint can name, or the note why there are
/// none: the endpoint stays unallowed, only the explicit Deny is missing.
pub(super) fn deny_nets(flavor: Flavor, deny: &Allow) -> Result<Vec<IpNet>, Note> {
    if deny.nets.is_empty() || deny.is_wildcard() {
        let host = deny.host.as_deref().unwrap_or("?");
        return Err(note(
            flavor,
            deny,
            format!(
                "expected Blocked, so nothing allows it, but this flavor denies addresses only and {host} has none resolved; resolve it to also emit an explicit Deny"
            ),
        ));
    }
    Ok(deny.nets.clone())
}

/// Blocked networks inside `net` on a port `ports` also allow: what an allow of `net` must
/// carve out.
pub(super) fn blocked_inside(net: &IpNet, ports: &[PortRule], denies: &[Allow]) -> Vec<IpNet> {
    let mut inside: Vec<IpNet> = denies
        .iter()
        .filter(|d| d.ports.iter().any(|p| ports.iter().any(|q| p.overlaps(q))))
        .flat_map(|d| d.nets.iter())
        .filter(|d| net.contains(*d))
        .map(IpNet::trunc)
        .collect();
    inside.sort();
    inside.dedup();
    inside
}

/// Whether `net` lies inside a network expected Blocked on one of `ports`: the flavors that
/// deny put the Deny first, so such an allow is blocked there, and the others leave it out to
/// mean the same.
pub(super) fn inside_blocked(net: &IpNet, ports: &[PortRule], denies: &[Allow]) -> bool {
    denies
        .iter()
        .filter(|d| d.ports.iter().any(|p| ports.iter().any(|q| p.overlaps(q))))
        .flat_map(|d| d.nets.iter())
        .any(|d| d.contains(net))
}
