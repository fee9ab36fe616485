//! CiliumNetworkPolicy (toFQDNs with its DNS-proxy rule) and CiliumEgressGatewayPolicy.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::types::{Object, cilium};
use super::{Input, Note, Output, PortRule, allows, cluster_dns, denies, metadata, object_name};
use crate::api::Flavor;
use crate::api::endpoint::Transport;

use super::shared::*;

fn cilium_ports(ports: &[PortRule]) -> Vec<cilium::PortRule> {
    vec![cilium::PortRule {
        ports: ports
            .iter()
            .map(|p| cilium::PortProtocol {
                port: p.from.to_string(),
                end_port: p.is_range().then_some(p.to),
                protocol: match p.transport {
                    Transport::Udp => cilium::L4Protocol::Udp,
                    _ => cilium::L4Protocol::Tcp,
                },
            })
            .collect(),
        rules: None,
    }]
}

pub fn cilium(input: &Input<'_>) -> Output {
    let mut output = Output::default();
    let labels = match plain_labels(Flavor::Cilium, input) {
        Ok(labels) => labels,
        Err(n) => {
            output.notes.push(n);
            return output;
        }
    };
    let mut egress = Vec::new();
    for allow in allows(input) {
        output
            .notes
            .extend(protocol_notes(Flavor::Cilium, &allow, false));
        // A toFQDNs rule may not carry other L3 peers: names and CIDRs go in separate rules.
        let rule = match &allow.host {
            Some(host) if allow.is_wildcard() => cilium::EgressRule {
                // Cilium's `*.` matches exactly one label, as the profile means it.
                to_fqdns: vec![cilium::FqdnSelector {
                    match_name: None,
                    match_pattern: Some(host.clone()),
                }],
                to_ports: cilium_ports(&allow.ports),
                ..cilium::EgressRule::default()
            },
            Some(host) => cilium::EgressRule {
                to_fqdns: vec![cilium::FqdnSelector {
                    match_name: Some(host.clone()),
                    match_pattern: None,
                }],
                to_ports: cilium_ports(&allow.ports),
                ..cilium::EgressRule::default()
            },
            None => cilium::EgressRule {
                to_cidr: allow.nets.iter().map(|n| n.trunc().to_string()).collect(),
                to_ports: cilium_ports(&allow.ports),
                ..cilium::EgressRule::default()
            },
        };
        egress.push(rule);
    }
    let (dns_namespace, dns_labels) = cluster_dns(input);
    let mut dns_selector: BTreeMap<String, String> = dns_labels
        .into_iter()
        .map(|(k, v)| (format!("k8s:{k}"), v))
        .collect();
    dns_selector.insert("k8s:io.kubernetes.pod.namespace".into(), dns_namespace);
    // toFQDNs only works through the DNS proxy, which needs this rule.
    egress.push(cilium::EgressRule {
        to_endpoints: vec![labels_selector(dns_selector)],
        to_ports: vec![cilium::PortRule {
            ports: vec![cilium::PortProtocol {
                port: "53".into(),
                end_port: None,
                protocol: cilium::L4Protocol::Any,
            }],
            rules: Some(cilium::L7Rules {
                dns: vec![cilium::FqdnSelector {
                    match_name: None,
                    match_pattern: Some("*".into()),
                }],
            }),
        }],
        ..cilium::EgressRule::default()
    });
    let mut egress_deny = Vec::new();
    for deny in denies(input) {
        match deny_nets(Flavor::Cilium, &deny) {
            Ok(nets) => egress_deny.push(cilium::EgressRule {
                to_cidr: nets.iter().map(|n| n.trunc().to_string()).collect(),
                to_ports: cilium_ports(&deny.ports),
                ..cilium::EgressRule::default()
            }),
            Err(n) => output.notes.push(n),
        }
    }
    output.objects.push(to_value(&Object {
        api_version: "cilium.io/v2".into(),
        kind: "CiliumNetworkPolicy".into(),
        metadata: metadata(input, object_name(input, false), false),
        spec: cilium::NetworkPolicySpec {
            endpoint_selector: labels_selector(labels),
            egress,
            egress_deny,
        },
    }));
    output
}

pub fn cilium_egress_gateway(input: &Input<'_>) -> Output {
    let flavor = Flavor::CiliumEgressGateway;
    let mut output = Output::default();
    let gateways: Vec<cilium::EgressGateway> = input
        .spec
        .policy
        .as_ref()
        .map(|p| p.gateways())
        .unwrap_or_default()
        .into_iter()
        .map(|g| cilium::EgressGateway {
            node_selector: labels_selector(g.node_selector),
            egress_ip: g.egress_ip,
            interface: g.interface,
        })
        .collect();
    let Some(first) = gateways.first().cloned() else {
        output.notes.push(Note {
            flavor,
            endpoint: "*".into(),
            message: "set spec.policy.egressGateway (gateway nodeSelector, and egressIP or interface), or egressGateways for several".into(),
        });
        return output;
    };
    let labels = match plain_labels(flavor, input) {
        Ok(labels) => labels,
        Err(n) => {
            output.notes.push(n);
            return output;
        }
    };
    let mut destinations = Vec::new();
    for allow in allows(input) {
        match address_nets(flavor, &allow) {
            Ok(nets) => {
                for net in nets {
                    match net {
                        IpNet::V4(v4) => destinations.push(v4.trunc().to_string()),
                        IpNet::V6(v6) => output.notes.push(note(
                            flavor,
                            &allow,
                            format!("{v6} is IPv6; egress gateways route IPv4 only"),
                        )),
                    }
                }
            }
            Err(n) => output.notes.push(n),
        }
    }
    destinations.sort();
    destinations.dedup();
    if destinations.is_empty() {
        return output;
    }
    output.objects.push(to_value(&Object {
        api_version: "cilium.io/v2".into(),
        kind: "CiliumEgressGatewayPolicy".into(),
        metadata: metadata(input, object_name(input, true), true),
        spec: cilium::EgressGatewayPolicySpec {
            selectors: vec![cilium::EgressSelector {
                pod_selector: labels_selector(labels),
                namespace_selector: namespace_selector(input.namespace),
            }],
            destination_cidrs: destinations,
            // As in Cilium's multi-gateway design: the first gateway is also `egressGateway`,
            // which every version requires; a single gateway leaves the list out.
            egress_gateway: first,
            egress_gateways: if gateways.len() > 1 {
                gateways
            } else {
                Vec::new()
            },
        },
    }));
    output
}
