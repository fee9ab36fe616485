//! The policy.networking.k8s.io kinds: AdminNetworkPolicy and ClusterNetworkPolicy.

use std::collections::BTreeMap;

use super::types::{Object, network_policy_api as npa};
use super::{Input, Note, Output, PortRule, allows, cluster_dns, metadata, object_name};
use crate::api::Flavor;
use crate::api::endpoint::Transport;

use super::shared::*;

/// The peers and ports of the policy-API kinds, shared by ANP and CNP. Host names become
/// domainNames; CIDRs become networks.
fn policy_api_rules(
    flavor: Flavor,
    input: &Input<'_>,
    output: &mut Output,
) -> Vec<(String, npa::Peer, Vec<PortRule>)> {
    let mut rules = Vec::new();
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
        rules.push((allow.endpoint.clone(), peer, allow.ports.clone()));
    }
    if rules.len() > ANP_MAX_RULES - 1 {
        for (endpoint, _, _) in rules.split_off(ANP_MAX_RULES - 1) {
            output.notes.push(Note {
                flavor,
                endpoint,
                message: "a policy holds at most 100 egress rules".into(),
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
    let mut egress: Vec<npa::AdminEgressRule> = policy_api_rules(flavor, input, &mut output)
        .into_iter()
        .map(|(name, peer, ports)| npa::AdminEgressRule {
            name,
            action: npa::AdminAction::Allow,
            to: vec![peer],
            ports: ports.iter().map(rule_port).collect(),
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
    let mut egress: Vec<npa::ClusterEgressRule> = policy_api_rules(flavor, input, &mut output)
        .into_iter()
        .map(|(name, peer, ports)| npa::ClusterEgressRule {
            name,
            action: npa::ClusterAction::Accept,
            to: vec![peer],
            protocols: ports.iter().map(protocol_port).collect(),
        })
        .collect();
    egress.push(npa::ClusterEgressRule {
        name: "cluster-dns".into(),
        action: npa::ClusterAction::Accept,
        to: vec![dns_peer(input)],
        protocols: vec![
            protocol_port(&PortRule::single(Transport::Udp, 53)),
            tcp(53),
        ],
    });
    output.objects.push(to_value(&Object {
        api_version: "policy.networking.k8s.io/v1alpha2".into(),
        kind: "ClusterNetworkPolicy".into(),
        metadata: metadata(input, object_name(input, true), true),
        spec: npa::ClusterSpec {
            tier: npa::Tier::Admin,
            priority: priority(input),
            subject: policy_api_subject(input, labels),
            egress,
        },
    }));
    output
}
