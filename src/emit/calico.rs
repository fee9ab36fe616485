//! Calico projectcalico.org/v3 NetworkPolicy (TCP, UDP and ESP rules) with a GlobalNetworkSet
//! of the allowed networks.

use std::collections::BTreeMap;

use super::types::{Object, calico};
use super::{Input, Output, allows, cluster_dns, denies, metadata, object_name};
use crate::api::Flavor;
use crate::api::endpoint::Transport;

use super::shared::*;

/// A Calico selector expression from labels (`all()` when empty).
fn calico_selector(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "all()".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k} == '{v}'"))
        .collect::<Vec<_>>()
        .join(" && ")
}

pub fn calico(input: &Input<'_>) -> Output {
    let flavor = Flavor::Calico;
    let mut output = Output::default();
    let labels = match plain_labels(flavor, input) {
        Ok(labels) => labels,
        Err(n) => {
            output.notes.push(n);
            return output;
        }
    };
    let enterprise = input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.calico_enterprise)
        .unwrap_or(false);
    // Deny rules first: Calico evaluates a policy's rules in order.
    let mut rules = Vec::new();
    for deny in denies(input) {
        match deny_nets(flavor, &deny) {
            Ok(nets) => {
                for (transport, protocol) in [
                    (Transport::Tcp, calico::Protocol::TCP),
                    (Transport::Udp, calico::Protocol::UDP),
                ] {
                    let ports: Vec<calico::Port> = deny
                        .ports
                        .iter()
                        .filter(|p| p.transport == transport)
                        .map(|p| calico::Port::Number(p.from))
                        .collect();
                    if !ports.is_empty() {
                        rules.push(calico::Rule {
                            action: calico::Action::Deny,
                            protocol,
                            destination: calico::EntityRule {
                                nets: nets.iter().map(|n| n.trunc().to_string()).collect(),
                                ports,
                                ..calico::EntityRule::default()
                            },
                        });
                    }
                }
            }
            Err(n) => output.notes.push(n),
        }
    }
    let mut all_nets = Vec::new();
    for allow in allows(input) {
        output.notes.extend(protocol_notes(flavor, &allow, true));
        // One rule per protocol: TCP and UDP with their ports, ESP (IP protocol 50) without.
        let per_protocol = |destination: calico::EntityRule| -> Vec<calico::Rule> {
            let mut rules = Vec::new();
            for (transport, protocol) in [
                (Transport::Tcp, calico::Protocol::TCP),
                (Transport::Udp, calico::Protocol::UDP),
            ] {
                let ports: Vec<calico::Port> = allow
                    .ports
                    .iter()
                    .filter(|p| p.transport == transport)
                    .map(|p| {
                        if p.is_range() {
                            calico::Port::Range(format!("{}:{}", p.from, p.to))
                        } else {
                            calico::Port::Number(p.from)
                        }
                    })
                    .collect();
                if !ports.is_empty() {
                    rules.push(calico::Rule {
                        action: calico::Action::Allow,
                        protocol,
                        destination: calico::EntityRule {
                            ports,
                            ..destination.clone()
                        },
                    });
                }
            }
            if allow.esp {
                rules.push(calico::Rule {
                    action: calico::Action::Allow,
                    protocol: calico::Protocol::ESP,
                    destination,
                });
            }
            rules
        };
        match (&allow.host, enterprise, address_nets(flavor, &allow)) {
            // Calico Enterprise learns a domain's addresses from DNS answers.
            (Some(host), true, _) if !allow.is_wildcard() => {
                rules.extend(per_protocol(calico::EntityRule {
                    domains: vec![host.clone()],
                    ..calico::EntityRule::default()
                }))
            }
            (_, _, Ok(nets)) => {
                let nets: Vec<String> = nets.iter().map(|n| n.trunc().to_string()).collect();
                all_nets.extend(nets.clone());
                rules.extend(per_protocol(calico::EntityRule {
                    nets,
                    ..calico::EntityRule::default()
                }));
            }
            (_, _, Err(n)) => output.notes.push(n),
        }
    }
    let (dns_namespace, dns_labels) = cluster_dns(input);
    for protocol in [calico::Protocol::UDP, calico::Protocol::TCP] {
        rules.push(calico::Rule {
            action: calico::Action::Allow,
            protocol,
            destination: calico::EntityRule {
                selector: Some(calico_selector(&dns_labels)),
                namespace_selector: Some(format!("projectcalico.org/name == '{dns_namespace}'")),
                ports: vec![calico::Port::Number(53)],
                ..calico::EntityRule::default()
            },
        });
    }
    output.objects.push(to_value(&Object {
        api_version: "projectcalico.org/v3".into(),
        kind: "NetworkPolicy".into(),
        metadata: metadata(input, object_name(input, false), false),
        spec: calico::NetworkPolicySpec {
            selector: calico_selector(&labels),
            types: vec![calico::PolicyType::Egress],
            egress: rules,
        },
    }));
    all_nets.sort();
    all_nets.dedup();
    if !all_nets.is_empty() {
        // The same networks as a set other policies (and perimeter tooling) can select.
        output.objects.push(to_value(&Object {
            api_version: "projectcalico.org/v3".into(),
            kind: "GlobalNetworkSet".into(),
            metadata: metadata(input, object_name(input, true), true),
            spec: calico::GlobalNetworkSetSpec { nets: all_nets },
        }));
    }
    output
}
