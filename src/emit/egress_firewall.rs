//! OVN-Kubernetes EgressFirewall: the emitter, and sharing a namespace's one `default` object
//! with whoever else writes it. Rules are evaluated in order and the first match wins, so
//! NetReach's Allow rules go after every rule someone else wrote (nobody's explicit Deny is
//! overridden) and before one closing deny-all; what each profile added is recorded on the
//! object, so it can be taken out again without touching anyone else's rules.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::shared::*;
use super::types::{Object, ovn};
use super::{Input, Note, Output, allows, denies, metadata};
use crate::api::Flavor;

/// Annotation on the shared EgressFirewall: the rules each NetReach profile added, as a JSON
/// object from profile name to rules (an older single list belongs to the profile reading it).
pub const RULES_ANNOTATION: &str = "netreach.dev/egress-rules";

/// NetReach's rules merged into the namespace's EgressFirewall.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    /// The object to apply: everyone's rules in order, and the record of what each profile added.
    pub object: Value,
    /// Rules someone else wrote that decide before NetReach's could (a catch-all among them).
    pub notes: Vec<String>,
}

/// The CIDR of a rule that matches every port to `0.0.0.0/0` or `::/0`.
fn catch_all(rule: &Value) -> Option<&str> {
    let cidr = rule["to"]["cidrSelector"]
        .as_str()
        .filter(|c| matches!(*c, "0.0.0.0/0" | "::/0"))?;
    let has_ports = rule["ports"].as_array().is_some_and(|p| !p.is_empty());
    (!has_ports).then_some(cidr)
}

/// Whether a rule is a deny-all of the kind that closes an allowlist.
fn closes(rule: &Value) -> bool {
    rule["type"] == "Deny" && catch_all(rule).is_some()
}

/// The rules before the closing run of deny-alls, and that run.
fn split_closing(rules: &[Value]) -> (&[Value], &[Value]) {
    let body = rules.iter().rposition(|r| !closes(r)).map_or(0, |i| i + 1);
    rules.split_at(body)
}

/// What each profile recorded on the object.
fn records(existing: Option<&Value>, profile: &str) -> BTreeMap<String, Vec<Value>> {
    let Some(text) = existing.and_then(|e| e["metadata"]["annotations"][RULES_ANNOTATION].as_str())
    else {
        return BTreeMap::new();
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map
            .into_iter()
            .map(|(name, rules)| (name, rules.as_array().cloned().unwrap_or_default()))
            .collect(),
        Ok(Value::Array(rules)) => BTreeMap::from([(profile.to_owned(), rules)]),
        _ => BTreeMap::new(),
    }
}

fn rules_of(object: Option<&Value>) -> Vec<Value> {
    object
        .and_then(|o| o["spec"]["egress"].as_array().cloned())
        .unwrap_or_default()
}

fn record_text(records: &BTreeMap<String, Vec<Value>>) -> Value {
    Value::String(serde_json::to_string(records).expect("rules serialize"))
}

/// Merges `profile`'s emitted EgressFirewall (`ours`) into the namespace's `existing` one.
///
/// # Guarantees
/// - Rules nobody in NetReach wrote keep their relative order and come first, so an Allow of
///   ours can never override someone's explicit Deny (first match wins).
/// - Other NetReach profiles' rules follow, then this profile's, then the closing deny-all.
/// - A deny-all someone else ended their list with stays theirs (it closes ours too); the
///   closing denies NetReach adds are recorded, so removing our rules restores their list.
pub fn merge_egress_firewall(existing: Option<&Value>, ours: &Value, profile: &str) -> Merged {
    let mut records = records(existing, profile);
    let previous = records.remove(profile).unwrap_or_default();
    let others: Vec<Value> = records.values().flatten().cloned().collect();
    let netreach = |rule: &Value| previous.contains(rule) || others.contains(rule);
    let rules = rules_of(existing);
    let (body, tail) = split_closing(&rules);
    let foreign: Vec<Value> = body.iter().filter(|r| !netreach(r)).cloned().collect();
    let wanted: Vec<Value> = rules_of(Some(ours))
        .into_iter()
        .filter(|r| !closes(r))
        .collect();
    // A rule another profile also wants comes once, in this profile's place.
    let theirs: Vec<Value> = body
        .iter()
        .filter(|r| others.contains(r) && !wanted.contains(r))
        .cloned()
        .collect();
    // A rule someone else wrote stays theirs even when it equals one of ours.
    let added: Vec<Value> = wanted
        .into_iter()
        .filter(|r| !foreign.contains(r))
        .collect();
    let foreign_tail: Vec<Value> = tail.iter().filter(|r| !netreach(r)).cloned().collect();
    let closing: Vec<Value> = egress_firewall_denies()
        .iter()
        .map(|d| serde_json::to_value(d).expect("rules serialize"))
        .filter(|d| !foreign_tail.iter().any(|t| catch_all(t) == catch_all(d)))
        .collect();

    let namespace = ours["metadata"]["namespace"].as_str().unwrap_or_default();
    let notes = foreign
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| {
            let cidr = catch_all(rule)?;
            let what = if rule["type"] == "Deny" { "denies" } else { "allows" };
            Some(format!(
                "EgressFirewall {namespace}/default: spec.egress[{i}] {what} all traffic to {cidr}; someone else wrote it and it decides before NetReach's rules (first match wins); move it to the end of spec.egress for them to apply"
            ))
        })
        .collect();

    let mut egress = foreign;
    egress.extend(theirs);
    egress.extend(added.iter().cloned());
    egress.extend(foreign_tail);
    egress.extend(closing.iter().cloned());
    records.insert(
        profile.to_owned(),
        added.into_iter().chain(closing).collect(),
    );
    let mut object = ours.clone();
    object["spec"]["egress"] = Value::Array(egress);
    object["metadata"]["annotations"][RULES_ANNOTATION] = record_text(&records);
    Merged { object, notes }
}

/// The namespace's EgressFirewall without what `profile` added: the object to apply, or
/// `None` when nothing anyone else wrote is left and it can be deleted. Rules someone else
/// wrote, and rules another profile still records, stay in their order.
pub fn unmerge_egress_firewall(existing: &Value, profile: &str) -> Option<Value> {
    let mut records = records(Some(existing), profile);
    let ours = records.remove(profile).unwrap_or_default();
    let others: Vec<Value> = records.values().flatten().cloned().collect();
    let rules = rules_of(Some(existing));
    let (body, tail) = split_closing(&rules);
    let only_ours = |rule: &Value| ours.contains(rule) && !others.contains(rule);
    // NetReach adds deny-alls only at the end: one earlier in the list is someone else's.
    let remaining: Vec<Value> = body
        .iter()
        .filter(|r| closes(r) || !only_ours(r))
        .chain(tail.iter().filter(|r| !only_ours(r)))
        .cloned()
        .collect();
    if remaining.is_empty() {
        return None;
    }
    let mut metadata = json!({
        "name": existing["metadata"]["name"],
        "namespace": existing["metadata"]["namespace"],
    });
    if !records.is_empty() {
        metadata["annotations"] = json!({RULES_ANNOTATION: record_text(&records)});
        metadata["labels"] = json!({super::MANAGED_BY.0: super::MANAGED_BY.1});
    }
    Some(json!({
        "apiVersion": existing["apiVersion"],
        "kind": existing["kind"],
        "metadata": metadata,
        "spec": {"egress": remaining},
    }))
}

/// The deny rules that close an EgressFirewall allowlist.
pub(super) fn egress_firewall_denies() -> Vec<ovn::EgressFirewallRule> {
    ["0.0.0.0/0", "::/0"]
        .into_iter()
        .map(|cidr| ovn::EgressFirewallRule {
            type_: ovn::RuleType::Deny,
            to: ovn::Destination {
                cidr_selector: Some(cidr.into()),
                dns_name: None,
            },
            ports: vec![],
        })
        .collect()
}

/// Whether the profile narrows its policy to some pods, which EgressFirewall cannot do.
fn selects_some_pods(input: &Input<'_>) -> bool {
    input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.pod_selector.as_ref())
        .is_some_and(|s| {
            s.match_labels.as_ref().is_some_and(|l| !l.is_empty())
                || s.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
        })
}

/// The namespace's `default` EgressFirewall. What it cannot do, it says: it has no pod
/// selector (it covers every pod of the namespace), and its closing deny-all also blocks the
/// Kubernetes API server and any DNS server outside the pod network unless the profile
/// declares them as endpoints. Cluster DNS pods need no rule: EgressFirewall only governs
/// traffic to destinations outside the cluster (CRD description).
pub fn egress_firewall(input: &Input<'_>) -> Output {
    let flavor = Flavor::EgressFirewall;
    let mut output = Output::default();
    if selects_some_pods(input) {
        output.notes.push(Note {
            flavor,
            endpoint: "*".into(),
            message: format!(
                "cannot select pods: it applies to every pod in namespace {}, not only to those of spec.policy.podSelector; use a flavor with a pod selector to confine the policy to them",
                input.namespace
            ),
        });
    }
    // First match wins: the Deny of every Blocked endpoint goes before the allows.
    let mut egress = Vec::new();
    for deny in denies(input) {
        // A Blocked endpoint's ports are single ports, never ranges.
        let ports: Vec<ovn::Port> = deny
            .ports
            .iter()
            .flat_map(|rule| {
                (rule.from..=rule.to).map(|port| ovn::Port {
                    protocol: rule.transport.as_str().into(),
                    port,
                })
            })
            .collect();
        let destinations: Vec<ovn::Destination> = match (&deny.host, deny.nets.is_empty()) {
            // Addresses when known: OVN-Kubernetes resolves a dnsName itself, and upstream
            // advises against names in Deny rules.
            (_, false) => deny
                .nets
                .iter()
                .map(|n| ovn::Destination {
                    cidr_selector: Some(n.trunc().to_string()),
                    dns_name: None,
                })
                .collect(),
            (Some(host), true) => vec![ovn::Destination {
                cidr_selector: None,
                dns_name: Some(host.clone()),
            }],
            (None, true) => Vec::new(),
        };
        for to in destinations {
            egress.push(ovn::EgressFirewallRule {
                type_: ovn::RuleType::Deny,
                to,
                ports: ports.clone(),
            });
        }
    }
    for allow in allows(input) {
        output.notes.extend(protocol_notes(flavor, &allow, false));
        let mut ports: Vec<ovn::Port> = Vec::new();
        for rule in &allow.ports {
            match listed_ports(rule) {
                Some(listed) => ports.extend(listed.into_iter().map(|port| ovn::Port {
                    protocol: rule.transport.as_str().into(),
                    port,
                })),
                None => output.notes.push(range_note(flavor, &allow, rule)),
            }
        }
        // A rule without ports would allow every port.
        if ports.is_empty() {
            continue;
        }
        let destinations: Vec<ovn::Destination> = match &allow.host {
            Some(host) => {
                if allow.is_wildcard() {
                    output.notes.push(note(
                        flavor,
                        &allow,
                        "wildcard dnsName rules need OVN-Kubernetes' DNSNameResolver feature",
                    ));
                }
                vec![ovn::Destination {
                    cidr_selector: None,
                    dns_name: Some(host.clone()),
                }]
            }
            None => allow
                .nets
                .iter()
                .map(|n| ovn::Destination {
                    cidr_selector: Some(n.trunc().to_string()),
                    dns_name: None,
                })
                .collect(),
        };
        for to in destinations {
            egress.push(ovn::EgressFirewallRule {
                type_: ovn::RuleType::Allow,
                to,
                ports: ports.clone(),
            });
        }
    }
    // First match wins and unmatched traffic is allowed: an allowlist ends in deny-all.
    egress.extend(egress_firewall_denies());
    let mut meta = metadata(input, "default".into(), false);
    meta.name = Some("default".into());
    output.objects.push(to_value(&Object {
        api_version: "k8s.ovn.org/v1".into(),
        kind: "EgressFirewall".into(),
        metadata: meta,
        spec: ovn::EgressFirewallSpec { egress },
    }));
    output
}
