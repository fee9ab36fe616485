//! The policy.networking.k8s.io kinds: AdminNetworkPolicy and ClusterNetworkPolicy.

use std::collections::BTreeMap;

use super::types::{Object, network_policy_api as npa};
use super::{Input, Note, Output, PortRule, allows, cluster_dns, denies, metadata, object_name};
use crate::api::Flavor;
use crate::api::endpoint::Transport;

use super::shared::*;

/// ClusterNetworkPolicy v1alpha2: at most 25 rules per policy and 25 protocols per rule.
const CNP_MAX_ITEMS: usize = 25;
/// The highest (last-deciding) priority of the policy-API kinds.
const MAX_PRIORITY: i32 = 1000;

/// One rule of the policy-API kinds, before it takes the shape of ANP or CNP.
struct PolicyApiRule {
    name: String,
    deny: bool,
    peer: npa::Peer,
    ports: Vec<PortRule>,
}

/// The rules of the policy-API kinds, shared by ANP and CNP: the Deny of every Blocked
/// endpoint first (rules are evaluated in order), then the allows. Host names become
/// domainNames (Allow only, upstream); CIDRs and resolved addresses become networks.
fn policy_api_rules(
    flavor: Flavor,
    input: &Input<'_>,
    output: &mut Output,
    max_rules: Option<usize>,
) -> Vec<PolicyApiRule> {
    let mut rules = Vec::new();
    for deny in denies(input) {
        match deny_nets(flavor, &deny) {
            Ok(nets) if nets.len() > ANP_MAX_PEERS => output.notes.push(note(
                flavor,
                &deny,
                "expected Blocked, so nothing allows it, but its more than 25 networks do not fit one Deny peer",
            )),
            Ok(nets) => rules.push(PolicyApiRule {
                name: format!("deny-{}", deny.endpoint),
                deny: true,
                peer: npa::Peer {
                    networks: nets.iter().map(|n| n.trunc().to_string()).collect(),
                    ..npa::Peer::default()
                },
                ports: deny.ports.clone(),
            }),
            Err(n) => output.notes.push(n),
        }
    }
    for allow in allows(input) {
        output.notes.extend(protocol_notes(flavor, &allow, false));
        let peer = match &allow.host {
            Some(host) if allow.is_wildcard() => {
                output.notes.push(note(
                    flavor,
                    &allow,
                    format!("domainNames {host} would match one or more labels, wider than the profile's one label; list the hosts"),
                ));
                continue;
            }
            // The CRDs' pattern wants at least one dot: a single label would be refused.
            Some(host) if !host.contains('.') => {
                output.notes.push(note(
                    flavor,
                    &allow,
                    format!("domainNames must hold a dotted name; {host} is a single label, use its fully qualified name"),
                ));
                continue;
            }
            Some(host) => npa::Peer {
                domain_names: vec![host.clone()],
                ..npa::Peer::default()
            },
            None => npa::Peer {
                networks: allow.nets.iter().map(|n| n.trunc().to_string()).collect(),
                ..npa::Peer::default()
            },
        };
        if peer.networks.len() > ANP_MAX_PEERS {
            output
                .notes
                .push(note(flavor, &allow, "more than 25 networks in one peer"));
            continue;
        }
        rules.push(PolicyApiRule {
            name: allow.endpoint.clone(),
            deny: false,
            peer,
            ports: allow.ports.clone(),
        });
    }
    if let Some(max) = max_rules
        && rules.len() > max - 1
    {
        for rule in rules.split_off(max - 1) {
            output.notes.push(Note {
                flavor,
                endpoint: rule.name,
                message: format!("a policy holds at most {max} egress rules"),
            });
        }
    }
    rules
}

fn policy_api_subject(input: &Input<'_>, labels: BTreeMap<String, String>) -> npa::Subject {
    npa::Subject {
        pods: npa::PodsSelector {
            namespace_selector: namespace_selector(input.namespace),
            pod_selector: labels_selector(labels),
        },
    }
}

fn dns_peer(input: &Input<'_>) -> npa::Peer {
    let (dns_namespace, dns_labels) = cluster_dns(input);
    npa::Peer {
        pods: Some(npa::PodsSelector {
            namespace_selector: namespace_selector(&dns_namespace),
            pod_selector: labels_selector(dns_labels),
        }),
        ..npa::Peer::default()
    }
}

fn priority(input: &Input<'_>) -> i32 {
    input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.priority)
        .unwrap_or(50)
}

pub fn admin_network_policy(input: &Input<'_>) -> Output {
    let flavor = Flavor::AdminNetworkPolicy;
    let mut output = Output::default();
    let labels = match plain_labels(flavor, input) {
        Ok(labels) => labels,
        Err(n) => {
            output.notes.push(n);
            return output;
        }
    };
    let port = |port: u16, protocol: &str| npa::AdminPort {
        port_number: Some(npa::PortNumber {
            port,
            protocol: protocol.into(),
        }),
        port_range: None,
    };
    let rule_port = |rule: &PortRule| {
        if rule.is_range() {
            npa::AdminPort {
                port_number: None,
                port_range: Some(npa::PortRange {
                    protocol: rule.transport.as_str().into(),
                    start: rule.from,
                    end: rule.to,
                }),
            }
        } else {
            port(rule.from, rule.transport.as_str())
        }
    };
    let mut egress: Vec<npa::AdminEgressRule> =
        policy_api_rules(flavor, input, &mut output, Some(ANP_MAX_RULES))
            .into_iter()
            .map(|rule| npa::AdminEgressRule {
                name: rule.name,
                action: if rule.deny {
                    npa::AdminAction::Deny
                } else {
                    npa::AdminAction::Allow
                },
                to: vec![rule.peer],
                ports: rule.ports.iter().map(rule_port).collect(),
            })
            .collect();
    egress.push(npa::AdminEgressRule {
        name: "cluster-dns".into(),
        action: npa::AdminAction::Allow,
        to: vec![dns_peer(input)],
        ports: vec![port(53, "UDP"), port(53, "TCP")],
    });
    output.objects.push(to_value(&Object {
        api_version: "policy.networking.k8s.io/v1alpha1".into(),
        kind: "AdminNetworkPolicy".into(),
        metadata: metadata(input, object_name(input, true), true),
        spec: npa::AdminSpec {
            priority: priority(input),
            subject: policy_api_subject(input, labels),
            egress,
        },
    }));
    output
}

pub fn cluster_network_policy(input: &Input<'_>) -> Output {
    let flavor = Flavor::ClusterNetworkPolicy;
    let mut output = Output::default();
    let labels = match plain_labels(flavor, input) {
        Ok(labels) => labels,
        Err(n) => {
            output.notes.push(n);
            return output;
        }
    };
    let destination = |rule: &PortRule| npa::DestinationPort {
        destination_port: if rule.is_range() {
            npa::Number {
                number: None,
                range: Some(npa::Range {
                    start: rule.from,
                    end: rule.to,
                }),
            }
        } else {
            npa::Number {
                number: Some(rule.from),
                range: None,
            }
        },
    };
    let protocol_port = |rule: &PortRule| match rule.transport {
        Transport::Udp => npa::ProtocolPort {
            tcp: None,
            udp: Some(destination(rule)),
        },
        _ => npa::ProtocolPort {
            tcp: Some(destination(rule)),
            udp: None,
        },
    };
    let tcp = |p: u16| protocol_port(&PortRule::single(Transport::Tcp, p));
    // At most 25 protocols per rule and 25 rules per policy (v0.2.0): a long port list
    // becomes several rules, and the rules several policies in a stable order.
    let mut egress: Vec<npa::ClusterEgressRule> = Vec::new();
    for rule in policy_api_rules(flavor, input, &mut output, None) {
        for (i, ports) in rule.ports.chunks(CNP_MAX_ITEMS).enumerate() {
            egress.push(npa::ClusterEgressRule {
                name: match i {
                    0 => rule.name.clone(),
                    i => format!("{}-{}", rule.name, i + 1),
                },
                action: if rule.deny {
                    npa::ClusterAction::Deny
                } else {
                    npa::ClusterAction::Accept
                },
                to: vec![rule.peer.clone()],
                protocols: ports.iter().map(protocol_port).collect(),
            });
        }
    }
    egress.push(npa::ClusterEgressRule {
        name: "cluster-dns".into(),
        action: npa::ClusterAction::Accept,
        to: vec![dns_peer(input)],
        protocols: vec![
            protocol_port(&PortRule::single(Transport::Udp, 53)),
            tcp(53),
        ],
    });
    let base = object_name(input, true);
    let first_priority = priority(input);
    for (i, rules) in egress.chunks(CNP_MAX_ITEMS).enumerate() {
        // Lower numbers decide first: the chunks keep the rules' order (denies first).
        let priority = first_priority + i as i32;
        if priority > MAX_PRIORITY {
            for rule in rules {
                output.notes.push(Note {
                    flavor,
                    endpoint: rule.name.clone(),
                    message: format!(
                        "the rules fill more ClusterNetworkPolicies than priorities are left above {first_priority}; lower spec.policy.priority"
                    ),
                });
            }
            continue;
        }
        let name = match i {
            0 => base.clone(),
            i => format!("{base}-{}", i + 1),
        };
        output.objects.push(to_value(&Object {
            api_version: "policy.networking.k8s.io/v1alpha2".into(),
            kind: "ClusterNetworkPolicy".into(),
            metadata: metadata(input, name, true),
            spec: npa::ClusterSpec {
                tier: npa::Tier::Admin,
                priority,
                subject: policy_api_subject(input, labels.clone()),
                egress: rules.to_vec(),
            },
        }));
    }
    output
}
