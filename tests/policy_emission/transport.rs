//! The FTP and IKE oracle: passive ranges, UDP, NAT-T and ESP never opened beyond the declared.

use super::*;

/// Every port of `from..=to`.
pub(crate) fn span(from: &Value, to: &Value) -> Vec<u16> {
    let from = port_of(from);
    let to = if to.is_null() { from } else { port_of(to) };
    (from..=to).collect()
}

pub(crate) fn port_of(value: &Value) -> u16 {
    value
        .as_u64()
        .map(|p| p as u16)
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap()
}

/// What an emitted object allows, as (destination, transport, port); cluster DNS as ("dns",
/// transport, port); ESP with port 0; a destination without ports (gateway routes, network
/// sets) as ("ANY", 0).
pub(crate) fn allowed(object: &Value) -> BTreeSet<(String, String, u16)> {
    let mut set = BTreeSet::new();
    let kind = object["kind"].as_str().unwrap();
    let api_version = object["apiVersion"].as_str().unwrap();
    let spec = &object["spec"];
    let rules = |key: &str| spec[key].as_array().cloned().unwrap_or_default();
    match (api_version, kind) {
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            for rule in rules("egress") {
                let ports: Vec<(String, u16)> = rule["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|p| {
                        let transport = p["protocol"].as_str().unwrap().to_owned();
                        span(&p["port"], &p["endPort"])
                            .into_iter()
                            .map(move |n| (transport.clone(), n))
                    })
                    .collect();
                for peer in rule["to"].as_array().unwrap() {
                    let destination = peer["ipBlock"]["cidr"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| "dns".into());
                    set.extend(
                        ports
                            .iter()
                            .map(|(t, p)| (destination.clone(), t.clone(), *p)),
                    );
                }
            }
        }
        (_, "CiliumNetworkPolicy") => {
            for rule in rules("egress") {
                let ports: Vec<(String, u16)> = rule["toPorts"][0]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|p| {
                        let transport = p["protocol"].as_str().unwrap().to_owned();
                        span(&p["port"], &p["endPort"])
                            .into_iter()
                            .map(move |n| (transport.clone(), n))
                    })
                    .collect();
                let mut destinations: Vec<String> = rule["toFQDNs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        f["matchName"]
                            .as_str()
                            .or(f["matchPattern"].as_str())
                            .unwrap()
                            .to_owned()
                    })
                    .collect();
                destinations.extend(
                    rule["toCIDR"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| c.as_str().unwrap().to_owned()),
                );
                if rule["toEndpoints"].is_array() {
                    destinations.push("dns".into());
                }
                for d in destinations {
                    set.extend(ports.iter().map(|(t, p)| (d.clone(), t.clone(), *p)));
                }
            }
        }
        (_, "CiliumEgressGatewayPolicy") => {
            for cidr in spec["destinationCIDRs"].as_array().unwrap() {
                set.insert((cidr.as_str().unwrap().to_owned(), "ANY".into(), 0));
            }
        }
        ("projectcalico.org/v3", "NetworkPolicy") => {
            for rule in rules("egress") {
                let d = &rule["destination"];
                let transport = match &rule["protocol"] {
                    Value::Number(n) if n.as_u64() == Some(50) => "ESP".to_owned(),
                    Value::String(name) => name.clone(),
                    other => panic!("unexpected Calico protocol {other}"),
                };
                let ports: Vec<(String, u16)> = if transport == "ESP" {
                    assert!(d["ports"].is_null(), "ESP has no ports: {rule}");
                    vec![(transport.clone(), 0)]
                } else {
                    d["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|p| match p.as_str().and_then(|r| r.split_once(':')) {
                            Some((from, to)) => (from.parse::<u16>().unwrap()
                                ..=to.parse().unwrap())
                                .collect::<Vec<_>>(),
                            None => vec![port_of(p)],
                        })
                        .map(|n| (transport.clone(), n))
                        .collect()
                };
                let mut destinations: Vec<String> = d["nets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(d["domains"].as_array().into_iter().flatten())
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                if d["selector"].is_string() {
                    destinations.push("dns".into());
                }
                for dest in destinations {
                    set.extend(ports.iter().map(|(t, p)| (dest.clone(), t.clone(), *p)));
                }
            }
        }
        (_, "GlobalNetworkSet") => {
            for net in spec["nets"].as_array().unwrap() {
                set.insert((net.as_str().unwrap().to_owned(), "ANY".into(), 0));
            }
        }
        (_, "ServiceEntry") => {
            // Sidecars carry TCP only, whatever the port's application protocol.
            let ports: Vec<u16> = spec["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| port_of(&p["number"]))
                .collect();
            let destinations: Vec<String> = match spec["addresses"].as_array() {
                Some(addresses) => addresses
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect(),
                None => spec["hosts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h.as_str().unwrap().to_owned())
                    .collect(),
            };
            for d in destinations {
                set.extend(ports.iter().map(|p| (d.clone(), "TCP".to_owned(), *p)));
            }
        }
        (_, "AdminNetworkPolicy" | "ClusterNetworkPolicy") => {
            for rule in rules("egress") {
                let ports: Vec<(String, u16)> = match kind {
                    "AdminNetworkPolicy" => rule["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|p| {
                            let (transport, ports) = if p["portRange"].is_object() {
                                let r = &p["portRange"];
                                (
                                    r["protocol"].as_str().unwrap().to_owned(),
                                    span(&r["start"], &r["end"]),
                                )
                            } else {
                                let n = &p["portNumber"];
                                (
                                    n["protocol"].as_str().unwrap().to_owned(),
                                    vec![port_of(&n["port"])],
                                )
                            };
                            ports.into_iter().map(move |n| (transport.clone(), n))
                        })
                        .collect(),
                    _ => rule["protocols"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|p| {
                            let (transport, d) = if p["tcp"].is_object() {
                                ("TCP", &p["tcp"]["destinationPort"])
                            } else {
                                ("UDP", &p["udp"]["destinationPort"])
                            };
                            let ports = if d["range"].is_object() {
                                span(&d["range"]["start"], &d["range"]["end"])
                            } else {
                                vec![port_of(&d["number"])]
                            };
                            ports.into_iter().map(move |n| (transport.to_owned(), n))
                        })
                        .collect(),
                };
                for peer in rule["to"].as_array().unwrap() {
                    let mut destinations: Vec<String> = peer["networks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .chain(peer["domainNames"].as_array().into_iter().flatten())
                        .map(|v| v.as_str().unwrap().to_owned())
                        .collect();
                    if peer["pods"].is_object() {
                        destinations.push("dns".into());
                    }
                    for d in destinations {
                        set.extend(ports.iter().map(|(t, p)| (d.clone(), t.clone(), *p)));
                    }
                }
            }
        }
        (_, "EgressFirewall") => {
            for rule in rules("egress").iter().filter(|r| r["type"] == "Allow") {
                let destination = rule["to"]["dnsName"]
                    .as_str()
                    .or(rule["to"]["cidrSelector"].as_str())
                    .unwrap()
                    .to_owned();
                let ports = rule["ports"].as_array().unwrap();
                assert!(
                    !ports.is_empty(),
                    "an Allow without ports allows every port: {rule}"
                );
                for port in ports {
                    set.insert((
                        destination.clone(),
                        port["protocol"].as_str().unwrap().to_owned(),
                        port_of(&port["port"]),
                    ));
                }
            }
        }
        // The egress gateway accepts (Gateway) and forwards (VirtualService) declared hosts only.
        (_, "Gateway") => {
            for server in rules("servers") {
                let port = port_of(&server["port"]["number"]);
                for host in server["hosts"].as_array().unwrap() {
                    set.insert((host.as_str().unwrap().to_owned(), "TCP".into(), port));
                }
            }
        }
        (_, "VirtualService") => {
            for route in rules("tls") {
                for destination in route["route"].as_array().unwrap() {
                    let host = destination["destination"]["host"].as_str().unwrap();
                    // The hop to the gateway itself is routing, not a destination.
                    if host != "istio-egressgateway.istio-system.svc.cluster.local" {
                        let port = port_of(&destination["destination"]["port"]["number"]);
                        set.insert((host.to_owned(), "TCP".into(), port));
                    }
                }
            }
        }
        // The gateway hop's subset and the REGISTRY_ONLY Sidecar allow nothing by themselves.
        (_, "DestinationRule" | "Sidecar") => {}
        other => panic!("unexpected {other:?}"),
    }
    set
}

/// Tiny deterministic PRNG for the FTP and IKE property test.
pub(crate) struct TransportRng(u64);

impl TransportRng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub(crate) fn random_ftp_ike_profile(
    rng: &mut TransportRng,
) -> (ConnectivityProfileSpec, BTreeMap<String, Vec<IpAddr>>) {
    let mut endpoints = Vec::new();
    let mut addresses = BTreeMap::new();
    let labels = ["a", "vendor", "m3", "api", "x1"];
    for i in 0..(1 + rng.below(8)) {
        let name = format!("e{i}");
        let ports: BTreeSet<u16> = (0..(1 + rng.below(3)))
            .map(|_| 1 + rng.below(65535) as u16)
            .collect();
        let protocols = [
            "TCP", "TLS", "HTTP", "HTTPS", "SMTP", "LDAPS", "FTP", "FTPS", "IKE",
        ];
        let ports: Vec<Value> = ports
            .into_iter()
            .map(|p| {
                let protocol = protocols[rng.below(protocols.len() as u64) as usize];
                // IKE on 500 brings NAT traversal on 4500: make it common.
                let p = if protocol == "IKE" && rng.below(2) == 0 {
                    500
                } else {
                    p
                };
                let mut port = json!({"port": p, "protocol": protocol});
                if protocol.starts_with("FTP") && rng.below(3) != 0 {
                    let from = 1024 + rng.below(60000) as u16;
                    let width = if rng.below(4) == 0 { 400 } else { 30 };
                    let to = from.saturating_add(rng.below(width) as u16);
                    port["ftp"] = json!({"passivePorts": {"from": from, "to": to}});
                }
                port
            })
            .collect();
        let endpoint = match rng.below(4) {
            0 => {
                let v4 = std::net::Ipv4Addr::from(rng.next() as u32);
                let net = IpNet::new(IpAddr::V4(v4), 16 + rng.below(17) as u8)
                    .unwrap()
                    .trunc();
                json!({"name": name, "cidr": net.to_string(), "ports": ports})
            }
            1 => {
                let v6 =
                    std::net::Ipv6Addr::from(((rng.next() as u128) << 64) | rng.next() as u128);
                let net = IpNet::new(IpAddr::V6(v6), 48 + rng.below(81) as u8)
                    .unwrap()
                    .trunc();
                json!({"name": name, "cidr": net.to_string(), "ports": ports})
            }
            kind => {
                let wildcard = kind == 2 && rng.below(3) == 0;
                let host = format!(
                    "{}{}.{}.example.com",
                    if wildcard { "*." } else { "" },
                    labels[rng.below(5) as usize],
                    labels[rng.below(5) as usize]
                );
                if !wildcard && rng.below(2) == 0 {
                    let ips: Vec<IpAddr> = (0..(1 + rng.below(3)))
                        .map(|_| IpAddr::V4(std::net::Ipv4Addr::from(rng.next() as u32)))
                        .collect();
                    addresses.insert(name.clone(), ips);
                }
                json!({"name": name, "host": host, "ports": ports})
            }
        };
        endpoints.push(endpoint);
    }
    let mut policy = json!({
        "flavors": [],
        "egressGateway": {"nodeSelector": {"gw": "1"}, "interface": "eth1"},
        "istio": {"egressGateway": rng.below(2) == 0, "registryOnly": rng.below(2) == 0},
        "calicoEnterprise": rng.below(2) == 0,
    });
    // No selector and an empty one select every pod of the namespace; expressions are what
    // label-only flavors cannot carry.
    match rng.below(4) {
        0 => {}
        1 => policy["podSelector"] = json!({}),
        2 => policy["podSelector"] = json!({"matchLabels": {"app": "w", "tier": "edge"}}),
        _ => {
            policy["podSelector"] = json!({
                "matchLabels": {"app": "w"},
                "matchExpressions": [{"key": "track", "operator": "In", "values": ["stable"]}],
            })
        }
    }
    let spec = spec(json!({"endpoints": endpoints, "policy": policy}));
    (spec, addresses)
}

/// (destination, transport, port) the profile declares: hosts, CIDRs and resolved addresses,
/// with each port's transport; an FTP port's passive range; for IKE, UDP 4500 beside UDP 500
/// and ESP (port 0).
pub(crate) fn declared_with_transport(
    spec: &ConnectivityProfileSpec,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> BTreeSet<(String, String, u16)> {
    let mut set = BTreeSet::new();
    for endpoint in &spec.endpoints {
        let destinations = destinations(endpoint, addresses);
        for port in &endpoint.ports {
            let number = port.port as u16;
            let mut allowed: Vec<(&str, u16)> = Vec::new();
            match port.protocol {
                Protocol::Ike => {
                    allowed.push(("UDP", number));
                    if number == 500 {
                        allowed.push(("UDP", 4500));
                    }
                    allowed.push(("ESP", 0));
                }
                _ => allowed.push(("TCP", number)),
            }
            if let Some(range) = port.ftp.as_ref().and_then(|f| f.passive_ports.as_ref()) {
                allowed.extend((range.from as u16..=range.to as u16).map(|p| ("TCP", p)));
            }
            for destination in &destinations {
                for (transport, port) in &allowed {
                    set.insert((destination.clone(), transport.to_string(), *port));
                }
            }
        }
    }
    set
}

#[test]
fn with_ftp_and_ike_no_flavor_opens_a_transport_or_port_beyond_the_declared() {
    let mut rng = TransportRng(0x9E37_79B9_7F4A_7C15);
    let mut kinds = BTreeSet::new();
    let mut calico_domains = false;
    // What FTP and IKE bring beside their own port reached some object.
    let (mut nat_t, mut esp, mut ranged) = (false, false, false);
    for round in 0..300 {
        let (spec, addresses) = random_ftp_ike_profile(&mut rng);
        let declared = declared_with_transport(&spec, &addresses);
        let declared_nets: BTreeSet<String> = declared.iter().map(|(d, _, _)| d.clone()).collect();
        let input = Input {
            name: "random",
            namespace: "ns",
            spec: &spec,
            addresses: &addresses,
        };
        for flavor in Flavor::iter() {
            let output = emit(flavor, &input);
            for object in &output.objects {
                kinds.insert(object["kind"].as_str().unwrap().to_owned());
                calico_domains |= object["apiVersion"] == "projectcalico.org/v3"
                    && object["spec"]["egress"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|r| r["destination"]["domains"].is_array());
                if let Err(widened) = check_selection(object, &spec, "ns", &output.notes) {
                    panic!(
                        "round {round}: {} selects more pods than the profile: {widened}\nprofile: {}\nobject: {object}",
                        flavor.as_str(),
                        serde_json::to_string(&spec).unwrap()
                    );
                }
                let ranges: Vec<(u16, u16)> = spec
                    .endpoints
                    .iter()
                    .flat_map(|e| &e.ports)
                    .filter_map(|p| p.ftp.as_ref()?.passive_ports.as_ref())
                    .filter(|r| r.to > r.from)
                    .map(|r| (r.from as u16 + 1, r.to as u16))
                    .collect();
                for (destination, transport, port) in allowed(object) {
                    nat_t |= transport == "UDP" && port == 4500;
                    esp |= transport == "ESP";
                    ranged |=
                        transport == "TCP" && ranges.iter().any(|(a, b)| (*a..=*b).contains(&port));
                    if destination == "dns" {
                        assert_eq!(
                            port,
                            53,
                            "round {round}: {} allows DNS on {port}",
                            flavor.as_str()
                        );
                        continue;
                    }
                    // Destinations without ports (gateway routes, network sets) must be declared networks.
                    let ok = if transport == "ANY" {
                        declared_nets.contains(&destination)
                    } else {
                        declared.contains(&(destination.clone(), transport.clone(), port))
                    };
                    assert!(
                        ok,
                        "round {round}: {} allows {transport} {destination}:{port}, undeclared\nprofile: {}\nobject: {object}",
                        flavor.as_str(),
                        serde_json::to_string(&spec).unwrap()
                    );
                }
            }
        }
    }
    // The random options reached every kind: egress gateway routing, Sidecars, network sets.
    for kind in [
        "Gateway",
        "VirtualService",
        "DestinationRule",
        "Sidecar",
        "GlobalNetworkSet",
        "CiliumEgressGatewayPolicy",
        "EgressFirewall",
    ] {
        assert!(kinds.contains(kind), "{kind} never emitted: {kinds:?}");
    }
    assert!(
        calico_domains,
        "calicoEnterprise never produced a domain rule"
    );
    assert!(
        nat_t && esp && ranged,
        "IKE's 4500 ({nat_t}), ESP ({esp}) or an FTP passive range ({ranged}) never emitted"
    );
}
