//! One emitter per flavor. Each turns the profile's allows into that flavor's objects, adds
//! the cluster-DNS rule the flavor needs, and notes whatever it cannot express exactly.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::types::{MatchLabels, Object, calico, cilium, istio, network_policy_api as npa, ovn};
use super::{Allow, Input, Note, Output, allows, cluster_dns, metadata, object_name, pod_labels};
use crate::api::{Flavor, Protocol};

const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
const ANP_MAX_RULES: usize = 100;
const ANP_MAX_PEERS: usize = 25;

fn to_value<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("emitted objects serialize")
}

fn note(flavor: Flavor, allow: &Allow, message: impl Into<String>) -> Note {
    Note {
        flavor,
        endpoint: allow.endpoint.clone(),
        message: message.into(),
    }
}

/// The networks an address-based flavor may use for an endpoint, or the note why none.
fn address_nets(flavor: Flavor, allow: &Allow) -> Result<Vec<IpNet>, Note> {
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
                "no resolved addresses for {host}; render with --resolve, or let the operator resolve it"
            ),
        ));
    }
    Ok(allow.nets.clone())
}

/// The profile's pod selector as plain labels, or a note when it has expressions this flavor
/// cannot carry (dropping them would select more pods).
fn plain_labels(flavor: Flavor, input: &Input<'_>) -> Result<BTreeMap<String, String>, Note> {
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

fn labels_selector(labels: BTreeMap<String, String>) -> MatchLabels {
    MatchLabels {
        match_labels: labels,
    }
}

fn namespace_selector(namespace: &str) -> MatchLabels {
    labels_selector(BTreeMap::from([(
        NAMESPACE_NAME_LABEL.to_owned(),
        namespace.to_owned(),
    )]))
}

pub fn network_policy(input: &Input<'_>) -> Output {
    let mut output = Output::default();
    let tcp = |port: u16| NetworkPolicyPort {
        protocol: Some("TCP".into()),
        port: Some(IntOrString::Int(i32::from(port))),
        end_port: None,
    };
    let mut egress = Vec::new();
    for allow in allows(input) {
        match address_nets(Flavor::NetworkPolicy, &allow) {
            Ok(nets) => egress.push(NetworkPolicyEgressRule {
                to: Some(
                    nets.iter()
                        .map(|net| NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: net.trunc().to_string(),
                                except: None,
                            }),
                            ..NetworkPolicyPeer::default()
                        })
                        .collect(),
                ),
                ports: Some(allow.ports.iter().map(|p| tcp(*p)).collect()),
            }),
            Err(n) => output.notes.push(n),
        }
    }
    let (dns_namespace, dns_labels) = cluster_dns(input);
    egress.push(NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    dns_namespace,
                )])),
                match_expressions: None,
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(dns_labels),
                match_expressions: None,
            }),
            ip_block: None,
        }]),
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    protocol: Some(protocol.into()),
                    port: Some(IntOrString::Int(53)),
                    end_port: None,
                })
                .collect(),
        ),
    });
    let selector = input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.pod_selector.clone())
        .unwrap_or_default();
    let policy = NetworkPolicy {
        metadata: metadata(input, object_name(input, false), false),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(egress),
            ingress: None,
        }),
    };
    let mut value = to_value(&policy);
    value["apiVersion"] = "networking.k8s.io/v1".into();
    value["kind"] = "NetworkPolicy".into();
    output.objects.push(value);
    output
}

fn cilium_ports(ports: &[u16]) -> Vec<cilium::PortRule> {
    vec![cilium::PortRule {
        ports: ports
            .iter()
            .map(|p| cilium::PortProtocol {
                port: p.to_string(),
                protocol: cilium::L4Protocol::Tcp,
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
    output.objects.push(to_value(&Object {
        api_version: "cilium.io/v2".into(),
        kind: "CiliumNetworkPolicy".into(),
        metadata: metadata(input, object_name(input, false), false),
        spec: cilium::NetworkPolicySpec {
            endpoint_selector: labels_selector(labels),
            egress,
        },
    }));
    output
}

pub fn cilium_egress_gateway(input: &Input<'_>) -> Output {
    let flavor = Flavor::CiliumEgressGateway;
    let mut output = Output::default();
    let Some(gateway) = input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.egress_gateway.clone())
    else {
        output.notes.push(Note {
            flavor,
            endpoint: "*".into(),
            message:
                "set spec.policy.egressGateway (gateway nodeSelector, and egressIP or interface)"
                    .into(),
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
            egress_gateway: cilium::EgressGateway {
                node_selector: labels_selector(gateway.node_selector),
                egress_ip: gateway.egress_ip,
                interface: gateway.interface,
            },
        },
    }));
    output
}

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
    let mut rules = Vec::new();
    let mut all_nets = Vec::new();
    for allow in allows(input) {
        match (&allow.host, enterprise, address_nets(flavor, &allow)) {
            // Calico Enterprise learns a domain's addresses from DNS answers.
            (Some(host), true, _) if !allow.is_wildcard() => rules.push(calico::Rule {
                action: calico::Action::Allow,
                protocol: calico::Protocol::Tcp,
                destination: calico::EntityRule {
                    domains: vec![host.clone()],
                    ports: allow.ports.clone(),
                    ..calico::EntityRule::default()
                },
            }),
            (_, _, Ok(nets)) => {
                let nets: Vec<String> = nets.iter().map(|n| n.trunc().to_string()).collect();
                all_nets.extend(nets.clone());
                rules.push(calico::Rule {
                    action: calico::Action::Allow,
                    protocol: calico::Protocol::Tcp,
                    destination: calico::EntityRule {
                        nets,
                        ports: allow.ports.clone(),
                        ..calico::EntityRule::default()
                    },
                });
            }
            (_, _, Err(n)) => output.notes.push(n),
        }
    }
    let (dns_namespace, dns_labels) = cluster_dns(input);
    for protocol in [calico::Protocol::Udp, calico::Protocol::Tcp] {
        rules.push(calico::Rule {
            action: calico::Action::Allow,
            protocol,
            destination: calico::EntityRule {
                selector: Some(calico_selector(&dns_labels)),
                namespace_selector: Some(format!("projectcalico.org/name == '{dns_namespace}'")),
                ports: vec![53],
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

fn istio_protocol(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http => "HTTP",
        Protocol::Https
        | Protocol::Tls
        | Protocol::Smtps
        | Protocol::Imaps
        | Protocol::Pop3s
        | Protocol::Ldaps => "TLS",
        Protocol::Tcp | Protocol::Smtp | Protocol::Imap | Protocol::Pop3 | Protocol::Ldap => "TCP",
    }
}

const ISTIO_GATEWAY_SERVICE: &str = "istio-egressgateway.istio-system.svc.cluster.local";

pub fn istio(input: &Input<'_>) -> Output {
    let flavor = Flavor::Istio;
    let mut output = Output::default();
    let options = input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.istio.clone())
        .unwrap_or_default();
    let mut tls_hosts: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    let mut endpoints: Vec<_> = input.spec.endpoints.iter().collect();
    endpoints.sort_by(|a, b| a.name.cmp(&b.name));
    for endpoint in endpoints {
        let mut ports: Vec<istio::Port> = endpoint
            .ports
            .iter()
            .map(|p| {
                let protocol = istio_protocol(p.protocol);
                istio::Port {
                    number: p.port as u16,
                    name: format!("{}-{}", protocol.to_ascii_lowercase(), p.port),
                    protocol: protocol.into(),
                }
            })
            .collect();
        ports.sort_by_key(|p| p.number);
        ports.dedup_by_key(|p| p.number);
        let name = format!("{}-{}", object_name(input, false), endpoint.name);
        let spec = match (&endpoint.host, &endpoint.cidr) {
            (Some(host), _) if host.starts_with("*.") => {
                output.notes.push(Note {
                    flavor,
                    endpoint: endpoint.name.clone(),
                    message: format!("Istio matches {host} at any depth, wider than the profile's one label; list the hosts"),
                });
                continue;
            }
            (Some(host), _) => {
                for port in ports.iter().filter(|p| p.protocol == "TLS") {
                    tls_hosts.entry(port.number).or_default().push(host.clone());
                }
                istio::ServiceEntrySpec {
                    hosts: vec![host.clone()],
                    addresses: vec![],
                    ports,
                    location: istio::Location::MeshExternal,
                    resolution: istio::Resolution::Dns,
                    export_to: vec![".".into()],
                }
            }
            (None, Some(cidr)) => istio::ServiceEntrySpec {
                // A ServiceEntry needs a host; the address decides what matches.
                hosts: vec![format!(
                    "{}.{}.{}.netreach.internal",
                    endpoint.name, input.name, input.namespace
                )],
                addresses: vec![cidr.clone()],
                ports,
                location: istio::Location::MeshExternal,
                resolution: istio::Resolution::None,
                export_to: vec![".".into()],
            },
            (None, None) => continue,
        };
        output.objects.push(to_value(&Object {
            api_version: "networking.istio.io/v1".into(),
            kind: "ServiceEntry".into(),
            metadata: metadata(input, name, false),
            spec,
        }));
    }
    if options.egress_gateway == Some(true) && !tls_hosts.is_empty() {
        let gateway_name = format!("{}-egress", object_name(input, false));
        let servers = tls_hosts
            .iter()
            .map(|(port, hosts)| istio::Server {
                port: istio::Port {
                    number: *port,
                    name: format!("tls-{port}"),
                    protocol: "TLS".into(),
                },
                hosts: hosts.clone(),
                tls: istio::ServerTls {
                    mode: "PASSTHROUGH".into(),
                },
            })
            .collect();
        output.objects.push(to_value(&Object {
            api_version: "networking.istio.io/v1".into(),
            kind: "Gateway".into(),
            metadata: metadata(input, gateway_name.clone(), false),
            spec: istio::GatewaySpec {
                selector: BTreeMap::from([("istio".to_owned(), "egressgateway".to_owned())]),
                servers,
            },
        }));
        output.objects.push(to_value(&Object {
            api_version: "networking.istio.io/v1".into(),
            kind: "DestinationRule".into(),
            metadata: metadata(input, gateway_name.clone(), false),
            spec: istio::DestinationRuleSpec {
                host: ISTIO_GATEWAY_SERVICE.into(),
                export_to: vec![".".into()],
                subsets: vec![istio::Subset {
                    name: "netreach".into(),
                }],
            },
        }));
        let mut by_host: BTreeMap<&String, Vec<u16>> = BTreeMap::new();
        for (port, hosts) in &tls_hosts {
            for host in hosts {
                by_host.entry(host).or_default().push(*port);
            }
        }
        for (host, ports) in by_host {
            let routes = ports
                .iter()
                .flat_map(|port| {
                    let sni = vec![host.clone()];
                    [
                        istio::TlsRoute {
                            matches: vec![istio::TlsMatch {
                                gateways: vec!["mesh".into()],
                                port: *port,
                                sni_hosts: sni.clone(),
                            }],
                            route: vec![istio::RouteDestination {
                                destination: istio::Destination {
                                    host: ISTIO_GATEWAY_SERVICE.into(),
                                    subset: Some("netreach".into()),
                                    port: istio::PortSelector { number: *port },
                                },
                            }],
                        },
                        istio::TlsRoute {
                            matches: vec![istio::TlsMatch {
                                gateways: vec![gateway_name.clone()],
                                port: *port,
                                sni_hosts: sni,
                            }],
                            route: vec![istio::RouteDestination {
                                destination: istio::Destination {
                                    host: host.clone(),
                                    subset: None,
                                    port: istio::PortSelector { number: *port },
                                },
                            }],
                        },
                    ]
                })
                .collect();
            output.objects.push(to_value(&Object {
                api_version: "networking.istio.io/v1".into(),
                kind: "VirtualService".into(),
                metadata: metadata(
                    input,
                    format!("{}-{}", object_name(input, false), host.replace('.', "-")),
                    false,
                ),
                spec: istio::VirtualServiceSpec {
                    hosts: vec![host.clone()],
                    gateways: vec!["mesh".into(), gateway_name.clone()],
                    export_to: vec![".".into()],
                    tls: routes,
                },
            }));
        }
    }
    if options.registry_only == Some(true) {
        match plain_labels(flavor, input) {
            Ok(labels) if !labels.is_empty() => output.objects.push(to_value(&Object {
                api_version: "networking.istio.io/v1".into(),
                kind: "Sidecar".into(),
                metadata: metadata(input, object_name(input, false), false),
                spec: istio::SidecarSpec {
                    workload_selector: istio::WorkloadSelector { labels },
                    egress: vec![istio::EgressListener { hosts: vec!["./*".into(), "istio-system/*".into()] }],
                    outbound_traffic_policy: istio::OutboundTrafficPolicy { mode: "REGISTRY_ONLY".into() },
                },
            })),
            Ok(_) => output.notes.push(Note {
                flavor,
                endpoint: "*".into(),
                message: "a REGISTRY_ONLY Sidecar needs spec.policy.podSelector.matchLabels; without it, it would cover the whole namespace".into(),
            }),
            Err(n) => output.notes.push(n),
        }
    }
    output
}

/// The peers and ports of the policy-API kinds, shared by ANP and CNP. Host names become
/// domainNames; CIDRs become networks.
fn policy_api_rules(
    flavor: Flavor,
    input: &Input<'_>,
    output: &mut Output,
) -> Vec<(String, npa::Peer, Vec<u16>)> {
    let mut rules = Vec::new();
    for allow in allows(input) {
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
        port_number: npa::PortNumber {
            port,
            protocol: protocol.into(),
        },
    };
    let mut egress: Vec<npa::AdminEgressRule> = policy_api_rules(flavor, input, &mut output)
        .into_iter()
        .map(|(name, peer, ports)| npa::AdminEgressRule {
            name,
            action: npa::AdminAction::Allow,
            to: vec![peer],
            ports: ports.iter().map(|p| port(*p, "TCP")).collect(),
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
    let tcp = |p: u16| npa::ProtocolPort {
        tcp: Some(npa::DestinationPort {
            destination_port: npa::Number { number: p },
        }),
        udp: None,
    };
    let mut egress: Vec<npa::ClusterEgressRule> = policy_api_rules(flavor, input, &mut output)
        .into_iter()
        .map(|(name, peer, ports)| npa::ClusterEgressRule {
            name,
            action: npa::ClusterAction::Accept,
            to: vec![peer],
            protocols: ports.iter().map(|p| tcp(*p)).collect(),
        })
        .collect();
    egress.push(npa::ClusterEgressRule {
        name: "cluster-dns".into(),
        action: npa::ClusterAction::Accept,
        to: vec![dns_peer(input)],
        protocols: vec![
            npa::ProtocolPort {
                tcp: None,
                udp: Some(npa::DestinationPort {
                    destination_port: npa::Number { number: 53 },
                }),
            },
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
    let mut egress = Vec::new();
    for allow in allows(input) {
        let ports: Vec<ovn::Port> = allow
            .ports
            .iter()
            .map(|p| ovn::Port {
                protocol: "TCP".into(),
                port: *p,
            })
            .collect();
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
