//! Istio ServiceEntry, and the egress-gateway objects when the profile routes through one.

use std::collections::BTreeMap;

use super::types::{Object, istio};
use super::{Input, Note, Output, PortRule, allows, denies, metadata, object_name};
use crate::api::endpoint::Transport;
use crate::api::{Flavor, Protocol};

use super::shared::*;

fn istio_protocol(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http => "HTTP",
        Protocol::Https
        | Protocol::Tls
        | Protocol::Smtps
        | Protocol::Imaps
        | Protocol::Pop3s
        | Protocol::Ldaps
        | Protocol::Ftps => "TLS",
        Protocol::Tcp
        | Protocol::Smtp
        | Protocol::Imap
        | Protocol::Pop3
        | Protocol::Ldap
        | Protocol::Ftp => "TCP",
        // Never emitted: sidecars do not carry UDP (see below).
        Protocol::Ike => "UDP",
    }
}

/// Ambient mode: the label that sends a ServiceEntry's traffic through a waypoint.
const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";

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
    let allowed: BTreeMap<String, super::Allow> = allows(input)
        .into_iter()
        .map(|a| (a.endpoint.clone(), a))
        .collect();
    let denied = denies(input);
    let mut tls_hosts: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    let mut endpoints: Vec<_> = input.spec.endpoints.iter().collect();
    endpoints.sort_by(|a, b| a.name.cmp(&b.name));
    for endpoint in endpoints {
        // A Blocked port stays out of the registry (with REGISTRY_ONLY nothing reaches it),
        // and so does a port of a range that holds a Blocked address: Istio cannot deny.
        let Some(allow) = allowed.get(&endpoint.name) else {
            continue;
        };
        output.notes.extend(protocol_notes(flavor, allow, true));
        let port = |number: u16, protocol: &str| istio::Port {
            number,
            name: format!("{}-{number}", protocol.to_ascii_lowercase()),
            protocol: protocol.into(),
        };
        let mut ports: Vec<istio::Port> = Vec::new();
        for spec in &endpoint.ports {
            let rule = PortRule::single(spec.protocol.transport(), spec.port as u16);
            if spec.protocol == Protocol::Ike || !allow.ports.iter().any(|p| p.overlaps(&rule)) {
                continue;
            }
            let holds_blocked = allow.nets.iter().any(|net| {
                !blocked_inside(net, &[rule], &denied).is_empty()
                    || inside_blocked(net, &[rule], &denied)
            });
            if holds_blocked {
                output.notes.push(note(
                    flavor,
                    allow,
                    format!("port {} reaches addresses that overlap an endpoint expected Blocked, which Istio cannot deny; left out", spec.port),
                ));
                continue;
            }
            ports.push(port(spec.port as u16, istio_protocol(spec.protocol)));
            // The FTP passive range: plain TCP, port by port (a ServiceEntry has no ranges).
            if let Some(range) = spec.ftp.as_ref().and_then(|f| f.passive_ports.as_ref()) {
                let rule = PortRule {
                    transport: Transport::Tcp,
                    from: range.from as u16,
                    to: range.to as u16,
                };
                match listed_ports(&rule) {
                    Some(listed) => ports.extend(listed.into_iter().map(|n| port(n, "TCP"))),
                    None => output.notes.push(range_note(flavor, allow, &rule)),
                }
            }
        }
        if allow.esp {
            output.notes.push(note(
                flavor,
                allow,
                "Istio's sidecars carry neither UDP nor ESP, so IKE and the IPsec tunnel bypass the mesh: no ServiceEntry port is emitted for them; allow them with a network-layer flavor",
            ));
        }
        ports.sort_by_key(|p| p.number);
        ports.dedup_by_key(|p| p.number);
        if ports.is_empty() {
            continue;
        }
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
        let mut meta = metadata(input, name, false);
        if let Some(waypoint) = &options.waypoint {
            // Ambient mode: egress to this entry goes through the namespace's waypoint.
            meta.labels
                .get_or_insert_default()
                .insert(USE_WAYPOINT_LABEL.to_owned(), waypoint.clone());
        }
        output.objects.push(to_value(&Object {
            api_version: "networking.istio.io/v1".into(),
            kind: "ServiceEntry".into(),
            metadata: meta,
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
