//! The policy oracle: what each emitted object grants and denies (destination, transport,
//! ports, order), checked against random profiles (proptest, shrinking) so that no flavor
//! allows what the profile does not declare.

use super::*;

/// The protocols a random endpoint's ports use.
const PROTOCOLS: [&str; 9] = [
    "TCP", "TLS", "HTTP", "HTTPS", "SMTP", "LDAPS", "FTP", "FTPS", "IKE",
];

pub(crate) fn random_profile(
    seed: &ProfileSeed,
) -> (ConnectivityProfileSpec, BTreeMap<String, Vec<IpAddr>>) {
    let mut endpoints = Vec::new();
    let mut addresses = BTreeMap::new();
    let labels = ["a", "vendor", "m3", "api", "x1"];
    for (i, e) in seed.endpoints.iter().enumerate() {
        let name = format!("e{i}");
        let mut seen = BTreeSet::new();
        let ports: Vec<Value> = e
            .ports
            .iter()
            .filter(|p| seen.insert(p.port))
            .map(|p| {
                let protocol = PROTOCOLS[p.protocol];
                let mut spec = json!({"port": p.port, "protocol": protocol});
                // A Blocked port takes no options.
                if p.blocked {
                    spec["expect"] = json!("Blocked");
                } else if let (true, Some((start, width))) =
                    (protocol.starts_with("FTP"), p.passive)
                {
                    let from = 1024 + start;
                    spec["ftp"] = json!({"passivePorts": {"from": from, "to": from + width}});
                }
                spec
            })
            .collect();
        let endpoint = match e.kind {
            0 => {
                let net = IpNet::new(IpAddr::V4(pooled(e.v4).into()), 16 + e.prefix % 17)
                    .unwrap()
                    .trunc();
                json!({"name": name, "cidr": net.to_string(), "ports": ports})
            }
            1 => {
                let net = IpNet::new(IpAddr::V6(e.v6.into()), 48 + e.prefix % 81)
                    .unwrap()
                    .trunc();
                json!({"name": name, "cidr": net.to_string(), "ports": ports})
            }
            kind => {
                let wildcard = kind == 2 && e.wildcard;
                let host = format!(
                    "{}{}.{}.example.com",
                    if wildcard { "*." } else { "" },
                    labels[e.labels.0],
                    labels[e.labels.1]
                );
                if let Some(resolved) = e.resolved.as_ref().filter(|_| !wildcard) {
                    let ips: Vec<IpAddr> = resolved
                        .iter()
                        .map(|ip| IpAddr::V4(pooled(*ip).into()))
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
        "istio": {"egressGateway": seed.istio_gateway, "registryOnly": seed.registry_only},
        "calicoEnterprise": seed.calico_enterprise,
    });
    if seed.waypoint {
        policy["istio"]["waypoint"] = json!("egress");
    }
    // No selector and an empty one select every pod of the namespace; expressions are what
    // label-only flavors cannot carry.
    match seed.selector {
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

/// (destination, transport, port) the profile declares reachable: hosts, CIDRs and resolved
/// addresses, each port with its transport (TCP; for IKE, UDP with 4500 beside 500, and ESP as
/// port 0) and an FTP port's passive range, less what a Blocked port of the same host or CIDR
/// declares.
pub(crate) fn declared(
    spec: &ConnectivityProfileSpec,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> BTreeSet<(String, String, u16)> {
    let target = |e: &netreach::api::endpoint::Endpoint| {
        e.host.clone().or(e.cidr.clone()).unwrap_or_default()
    };
    let blocked_declared: BTreeSet<(String, u16)> = spec
        .endpoints
        .iter()
        .flat_map(|e| {
            let target = target(e);
            e.ports
                .iter()
                .filter(|p| p.blocked())
                .map(move |p| (target.clone(), p.port as u16))
        })
        .collect();
    let mut set = BTreeSet::new();
    for endpoint in &spec.endpoints {
        for port in endpoint.ports.iter().filter(|p| !p.blocked()) {
            let number = port.port as u16;
            if blocked_declared.contains(&(target(endpoint), number)) {
                continue;
            }
            let mut opened: Vec<(&str, u16)> = match port.protocol {
                Protocol::Ike if number == 500 => vec![("UDP", 500), ("UDP", 4500), ("ESP", 0)],
                Protocol::Ike => vec![("UDP", number), ("ESP", 0)],
                _ => vec![("TCP", number)],
            };
            if let Some(range) = port.ftp.as_ref().and_then(|f| f.passive_ports.as_ref()) {
                opened.extend((range.from as u16..=range.to as u16).map(|p| ("TCP", p)));
            }
            for destination in destinations(endpoint, addresses) {
                for (transport, port) in &opened {
                    set.insert((destination.clone(), transport.to_string(), *port));
                }
            }
        }
    }
    set
}

/// Which pods an object applies to, checked against the profile's podSelector: the same
/// selector, or (EgressFirewall, which cannot select pods) the whole namespace with a note
/// saying so. Registry objects stay visible to the namespace only.
pub(crate) fn check_selection(
    object: &Value,
    spec: &ConnectivityProfileSpec,
    namespace: &str,
    notes: &[netreach::emit::Note],
) -> Result<(), String> {
    let selector = spec
        .policy
        .as_ref()
        .and_then(|p| p.pod_selector.clone())
        .unwrap_or_default();
    let labels = selector.match_labels.clone().unwrap_or_default();
    let has_expressions = selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty());
    let labels_only = |found: &Value| -> Result<(), String> {
        if has_expressions {
            return Err("matchExpressions were dropped: more pods selected".into());
        }
        let found: BTreeMap<String, String> =
            serde_json::from_value(found.clone()).unwrap_or_default();
        (found == labels)
            .then_some(())
            .ok_or_else(|| format!("selects {found:?}, the profile {labels:?}"))
    };
    let in_namespace = |found: &Value| -> Result<(), String> {
        (found["matchLabels"] == json!({"kubernetes.io/metadata.name": namespace}))
            .then_some(())
            .ok_or_else(|| format!("namespace selector {found} is not just {namespace}"))
    };
    let spec_of = &object["spec"];
    if let Some(ns) = object["metadata"]["namespace"].as_str()
        && ns != namespace
    {
        return Err(format!("emitted into namespace {ns}"));
    }
    match object["kind"].as_str().unwrap() {
        "NetworkPolicy" if object["apiVersion"] == "networking.k8s.io/v1" => {
            let expected = serde_json::to_value(&selector).unwrap();
            (spec_of["podSelector"] == expected)
                .then_some(())
                .ok_or_else(|| format!("podSelector {} is not {expected}", spec_of["podSelector"]))
        }
        "NetworkPolicy" => {
            if has_expressions {
                return Err("matchExpressions were dropped: more pods selected".into());
            }
            let expected = if labels.is_empty() {
                "all()".to_owned()
            } else {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k} == '{v}'"))
                    .collect::<Vec<_>>()
                    .join(" && ")
            };
            (spec_of["selector"] == json!(expected))
                .then_some(())
                .ok_or_else(|| format!("selector {} is not {expected}", spec_of["selector"]))
        }
        "CiliumNetworkPolicy" => labels_only(&spec_of["endpointSelector"]["matchLabels"]),
        "CiliumEgressGatewayPolicy" => {
            for selector in spec_of["selectors"].as_array().unwrap() {
                labels_only(&selector["podSelector"]["matchLabels"])?;
                in_namespace(&selector["namespaceSelector"])?;
            }
            Ok(())
        }
        "AdminNetworkPolicy" | "ClusterNetworkPolicy" => {
            labels_only(&spec_of["subject"]["pods"]["podSelector"]["matchLabels"])?;
            in_namespace(&spec_of["subject"]["pods"]["namespaceSelector"])
        }
        "Sidecar" => {
            if labels.is_empty() {
                return Err("a Sidecar without a workload selector covers the namespace".into());
            }
            labels_only(&spec_of["workloadSelector"]["labels"])
        }
        "EgressFirewall" => {
            let every_pod = labels.is_empty() && !has_expressions;
            let said = notes.iter().any(|n| {
                n.flavor == Flavor::EgressFirewall
                    && n.endpoint == "*"
                    && n.message
                        .contains(&format!("applies to every pod in namespace {namespace}"))
            });
            (every_pod || said).then_some(()).ok_or_else(|| {
                "covers the namespace, wider than the podSelector, without a note".into()
            })
        }
        "ServiceEntry" | "VirtualService" | "DestinationRule" => (spec_of["exportTo"]
            == json!(["."]))
        .then_some(())
        .ok_or_else(|| format!("exported to {}", spec_of["exportTo"])),
        // Selects the egress gateway's pods; selects no pods of the profile.
        "Gateway" => (spec_of["selector"] == json!({"istio": "egressgateway"}))
            .then_some(())
            .ok_or_else(|| format!("gateway selector {}", spec_of["selector"])),
        "GlobalNetworkSet" => Ok(()),
        other => Err(format!("unexpected kind {other}")),
    }
}

/// Random profiles over every protocol (FTP passive ranges, IKE's UDP, NAT-T and ESP
/// included): no flavor opens a destination, transport or port the profile does not declare,
/// selects more pods than the profile, or lets a Blocked endpoint through.
#[test]
fn no_flavor_ever_allows_more_than_the_profile_declares() {
    use std::sync::Mutex;
    let kinds = Mutex::new(BTreeSet::new());
    let calico_domains = Mutex::new(false);
    let denies = Mutex::new(BTreeSet::new());
    // What FTP and IKE bring beside their own port: NAT-T, ESP, a passive range.
    let (nat_t, esp, ranged) = (Mutex::new(false), Mutex::new(false), Mutex::new(false));
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 500,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    let result = runner.run(&profile_seed(), |seed| {
        let (spec, addresses) = random_profile(&seed);
        let declared = declared(&spec, &addresses);
        let blocked = blocked(&spec, &addresses);
        // Ports of passive ranges beyond their first.
        let passive: Vec<(u16, u16)> = spec
            .endpoints
            .iter()
            .flat_map(|e| &e.ports)
            .filter_map(|p| p.ftp.as_ref()?.passive_ports.as_ref())
            .filter(|r| r.to > r.from)
            .map(|r| (r.from as u16 + 1, r.to as u16))
            .collect();
        let input = profile_input("random", "ns", &spec, &addresses);
        for flavor in Flavor::iter() {
            let output = emit(flavor, &input);
            for object in &output.objects {
                kinds
                    .lock()
                    .unwrap()
                    .insert(object["kind"].as_str().unwrap().to_owned());
                *calico_domains.lock().unwrap() |= object["apiVersion"] == "projectcalico.org/v3"
                    && object["spec"]["egress"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|r| r["destination"]["domains"].is_array());
                let granted = grants(object);
                if granted.iter().any(|g| g.deny && g.ports != ALL_PORTS) {
                    denies.lock().unwrap().insert(flavor);
                }
                for g in granted.iter().filter(|g| !g.deny) {
                    let (from, to) = g.ports;
                    *nat_t.lock().unwrap() |= g.transport == "UDP" && (from..=to).contains(&4500);
                    *esp.lock().unwrap() |= g.transport == "ESP";
                    *ranged.lock().unwrap() |=
                        g.transport == "TCP" && passive.iter().any(|(a, b)| from <= *b && *a <= to);
                }
                if let Err(widened) = check_selection(object, &spec, "ns", &output.notes) {
                    return Err(TestCaseError::fail(format!(
                        "{} selects more pods than the profile: {widened}\nobject: {object}",
                        flavor.as_str()
                    )));
                }
            }
            if let Some(widened) = widening(&output.objects, &declared, &blocked) {
                return Err(TestCaseError::fail(format!(
                    "{} {widened}\nprofile: {}\nobjects: {}",
                    flavor.as_str(),
                    serde_json::to_string(&spec).unwrap(),
                    serde_json::to_string(&output.objects).unwrap()
                )));
            }
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The random options reached every kind: egress gateway routing, Sidecars, network sets.
    let kinds = kinds.into_inner().unwrap();
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
        calico_domains.into_inner().unwrap(),
        "calicoEnterprise never produced a domain rule"
    );
    assert!(
        *nat_t.lock().unwrap() && *esp.lock().unwrap() && *ranged.lock().unwrap(),
        "IKE's 4500, ESP or an FTP passive range never emitted"
    );
    // Every flavor that can deny did, for some Blocked endpoint.
    let denies = denies.into_inner().unwrap();
    for flavor in [
        Flavor::Cilium,
        Flavor::Calico,
        Flavor::AdminNetworkPolicy,
        Flavor::ClusterNetworkPolicy,
        Flavor::EgressFirewall,
    ] {
        assert!(
            denies.contains(&flavor),
            "{} never denied: {denies:?}",
            flavor.as_str()
        );
    }
}

#[test]
fn blocked_endpoints_are_denied_first_where_a_flavor_can_deny_and_allowed_nowhere() {
    let (spec, addresses) = rich_profile();
    let input = profile_input("maas360-m3", "mdm", &spec, &addresses);
    let declared = declared(&spec, &addresses);
    let blocked = blocked(&spec, &addresses);
    assert!(blocked.contains(&("93.184.215.14/32".to_owned(), "TCP", 443)));
    for flavor in Flavor::iter() {
        let output = emit(flavor, &input);
        assert_eq!(
            widening(&output.objects, &declared, &blocked),
            None,
            "{}",
            flavor.as_str()
        );
        let all: Vec<Grant> = output.objects.iter().flat_map(grants).collect();
        let denied: BTreeSet<(String, u16)> = all
            .iter()
            .filter(|g| g.deny && g.ports.0 == g.ports.1)
            .map(|g| (g.destination.clone(), g.ports.0))
            .collect();
        let can_deny = matches!(
            flavor,
            Flavor::Cilium
                | Flavor::Calico
                | Flavor::AdminNetworkPolicy
                | Flavor::ClusterNetworkPolicy
                | Flavor::EgressFirewall
        );
        if can_deny {
            for wanted in [
                ("93.184.215.14/32", 443),
                ("192.0.2.0/24", 443),
                ("192.0.2.0/24", 22),
            ] {
                assert!(
                    denied.contains(&(wanted.0.to_owned(), wanted.1)),
                    "{} does not deny {wanted:?}: {denied:?}",
                    flavor.as_str()
                );
            }
            // Ordered before every allow (Cilium's egressDeny wins wherever it is).
            let first_allow = all
                .iter()
                .filter(|g| !g.deny && g.ports != (0, 0))
                .map(|g| g.order)
                .min();
            let last_deny = all
                .iter()
                .filter(|g| g.deny && g.ports != ALL_PORTS)
                .map(|g| g.order)
                .max();
            assert!(
                last_deny < first_allow,
                "{}: denies after allows",
                flavor.as_str()
            );
        } else {
            assert!(denied.is_empty(), "{}", flavor.as_str());
        }
    }
    // Ambient mode: ServiceEntries name the waypoint; a Blocked host is not in the registry.
    let istio = emit(Flavor::Istio, &input);
    let entries: Vec<&Value> = istio
        .objects
        .iter()
        .filter(|o| o["kind"] == "ServiceEntry")
        .collect();
    assert!(!entries.is_empty());
    for entry in entries {
        assert_eq!(
            entry["metadata"]["labels"]["istio.io/use-waypoint"],
            "egress"
        );
        assert_ne!(entry["spec"]["hosts"][0], "example.org");
    }
}

/// One endpoint of a random profile, as proptest draws it (and shrinks it).
#[derive(Clone, Debug)]
pub(crate) struct EndpointSeed {
    kind: u8,
    v4: u32,
    v6: u128,
    prefix: u8,
    wildcard: bool,
    labels: (usize, usize),
    resolved: Option<Vec<u32>>,
    ports: Vec<PortSeed>,
}

/// A port of a random endpoint.
#[derive(Clone, Debug)]
pub(crate) struct PortSeed {
    port: u16,
    /// Index into [`PROTOCOLS`].
    protocol: usize,
    blocked: bool,
    /// An FTP passive range: start (above 1024) and width.
    passive: Option<(u16, u16)>,
}

/// A random profile: endpoints and policy options.
#[derive(Clone, Debug)]
pub(crate) struct ProfileSeed {
    endpoints: Vec<EndpointSeed>,
    selector: u8,
    istio_gateway: bool,
    registry_only: bool,
    calico_enterprise: bool,
    waypoint: bool,
}

pub(crate) fn endpoint_seed() -> impl Strategy<Value = EndpointSeed> {
    (
        0u8..4,
        any::<u32>(),
        any::<u128>(),
        any::<u8>(),
        any::<bool>(),
        (0usize..5, 0usize..5),
        proptest::option::of(proptest::collection::vec(any::<u32>(), 1..4)),
        proptest::collection::vec(
            (
                // IKE on 500 brings NAT traversal on 4500: make it common.
                prop_oneof![Just(443u16), Just(22), Just(500), 1u16..=65535],
                0usize..PROTOCOLS.len(),
                proptest::bool::weighted(0.25),
                proptest::option::of((0u16..60000, prop_oneof![0u16..30, 0u16..400])),
            )
                .prop_map(|(port, protocol, blocked, passive)| PortSeed {
                    port,
                    protocol,
                    blocked,
                    passive,
                }),
            1..4,
        ),
    )
        .prop_map(
            |(kind, v4, v6, prefix, wildcard, labels, resolved, ports)| EndpointSeed {
                kind,
                v4,
                v6,
                prefix,
                wildcard,
                labels,
                resolved,
                ports,
            },
        )
}

pub(crate) fn profile_seed() -> impl Strategy<Value = ProfileSeed> {
    (
        proptest::collection::vec(endpoint_seed(), 1..9),
        0u8..4,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(endpoints, selector, istio_gateway, registry_only, calico_enterprise, waypoint)| {
                ProfileSeed {
                    endpoints,
                    selector,
                    istio_gateway,
                    registry_only,
                    calico_enterprise,
                    waypoint,
                }
            },
        )
}

/// An IPv4 address from a small pool (10.0.0.0/20 but most of it empty), so ranges, resolved
/// addresses and Blocked endpoints overlap often.
pub(crate) fn pooled(random: u32) -> u32 {
    0x0A00_0000 | (random & 0x0000_0F03)
}

/// The destinations of one endpoint as policies may name them: host, CIDR, resolved addresses.
pub(crate) fn destinations(
    endpoint: &netreach::api::endpoint::Endpoint,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> Vec<String> {
    let mut destinations: Vec<String> = endpoint
        .host
        .iter()
        .chain(endpoint.cidr.iter())
        .cloned()
        .collect();
    destinations.extend(
        addresses
            .get(&endpoint.name)
            .into_iter()
            .flatten()
            .map(|ip| IpNet::from(*ip).to_string()),
    );
    destinations
}

/// (destination, transport, port) the profile expects Blocked: the port the probe tries, on
/// its protocol's transport (UDP for IKE, TCP for the rest).
pub(crate) fn blocked(
    spec: &ConnectivityProfileSpec,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> BTreeSet<(String, &'static str, u16)> {
    let mut set = BTreeSet::new();
    for endpoint in &spec.endpoints {
        for port in endpoint.ports.iter().filter(|p| p.blocked()) {
            let transport = port.protocol.transport().as_str();
            for destination in destinations(endpoint, addresses) {
                set.insert((destination, transport, port.port as u16));
            }
        }
    }
    set
}

/// The port range of a port item: `port`, up to `endPort` when set.
pub(crate) fn port_range(port: &Value, end: &Value) -> (u16, u16) {
    let first = port_of(port);
    (first, end.as_u64().map_or(first, |e| e as u16))
}

/// Every port (a rule without ports, or with an empty list).
pub(crate) const ALL_PORTS: (u16, u16) = (1, 65535);

/// A destination that matches everything (a rule without peers).
pub(crate) const ANYWHERE: &str = "*";

/// One thing an object grants or denies: a destination (host, CIDR or "dns"), the networks
/// carved out of it, a transport (TCP, UDP, ESP; ANY for a rule that names none) with a port
/// range (0..0: none, as for ESP and for routing or set entries, which carry ANY), and the
/// order in which it is evaluated within its flavor (lower first).
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub(crate) destination: String,
    pub(crate) except: Vec<String>,
    pub(crate) transport: String,
    pub(crate) ports: (u16, u16),
    pub(crate) deny: bool,
    pub(crate) order: (i64, usize),
}

/// A transport and its port range, as a rule's port item names them.
type Ports = (String, (u16, u16));

pub(crate) fn grant(destination: impl Into<String>, ports: &Ports, order: (i64, usize)) -> Grant {
    Grant {
        destination: destination.into(),
        except: Vec::new(),
        transport: ports.0.clone(),
        ports: ports.1,
        deny: false,
        order,
    }
}

/// A destination without ports: a gateway route or a network set entry.
fn route(destination: &str) -> Grant {
    grant(destination, &("ANY".to_owned(), (0, 0)), (0, 0))
}

/// The port items of a rule; missing or empty: every port of every transport.
pub(crate) fn ranges(ports: &Value, item: impl Fn(&Value) -> Ports) -> Vec<Ports> {
    match ports.as_array() {
        Some(list) if !list.is_empty() => list.iter().map(item).collect(),
        _ => vec![("ANY".to_owned(), ALL_PORTS)],
    }
}

/// A port item with `protocol`, `port` and an optional `endPort` (NetworkPolicy, Cilium).
fn protocol_port(p: &Value) -> Ports {
    let transport = p["protocol"].as_str().unwrap_or("TCP").to_owned();
    (transport, port_range(&p["port"], &p["endPort"]))
}

pub(crate) fn port_of(value: &Value) -> u16 {
    value
        .as_u64()
        .map(|p| p as u16)
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap()
}

/// What an emitted object grants and denies; cluster DNS as the destination "dns".
pub(crate) fn grants(object: &Value) -> Vec<Grant> {
    let mut out = Vec::new();
    let kind = object["kind"].as_str().unwrap();
    let api_version = object["apiVersion"].as_str().unwrap();
    let spec = &object["spec"];
    let rules = |key: &str| spec[key].as_array().cloned().unwrap_or_default();
    let priority = spec["priority"].as_i64().unwrap_or(0);
    let strings = |list: &Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    match (api_version, kind) {
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            for (i, rule) in rules("egress").iter().enumerate() {
                let ports = ranges(&rule["ports"], protocol_port);
                let peers = rule["to"].as_array().cloned().unwrap_or_default();
                if peers.is_empty() {
                    out.extend(ports.iter().map(|r| grant(ANYWHERE, r, (0, i))));
                }
                for peer in peers {
                    let (destination, except) = match peer["ipBlock"]["cidr"].as_str() {
                        Some(cidr) => (cidr.to_owned(), strings(&peer["ipBlock"]["except"])),
                        None => ("dns".to_owned(), Vec::new()),
                    };
                    for range in &ports {
                        out.push(Grant {
                            except: except.clone(),
                            ..grant(destination.clone(), range, (0, i))
                        });
                    }
                }
            }
        }
        (_, "CiliumNetworkPolicy") => {
            for (deny, key) in [(false, "egress"), (true, "egressDeny")] {
                for (i, rule) in rules(key).iter().enumerate() {
                    // Every toPorts entry counts, and a rule without one allows every port.
                    let ports: Vec<Ports> = match rule["toPorts"].as_array() {
                        Some(entries) if !entries.is_empty() => entries
                            .iter()
                            .flat_map(|entry| ranges(&entry["ports"], protocol_port))
                            .collect(),
                        _ => vec![("ANY".to_owned(), ALL_PORTS)],
                    };
                    let mut destinations: Vec<(String, Vec<String>)> = rule["toFQDNs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|f| {
                            let name = f["matchName"].as_str().or(f["matchPattern"].as_str());
                            (name.unwrap().to_owned(), Vec::new())
                        })
                        .collect();
                    destinations.extend(strings(&rule["toCIDR"]).into_iter().map(|c| (c, vec![])));
                    destinations.extend(rule["toCIDRSet"].as_array().into_iter().flatten().map(
                        |c| {
                            (
                                c["cidr"].as_str().unwrap().to_owned(),
                                strings(&c["except"]),
                            )
                        },
                    ));
                    if rule["toEndpoints"].is_array() {
                        destinations.push(("dns".into(), Vec::new()));
                    }
                    if destinations.is_empty() {
                        destinations.push((ANYWHERE.into(), Vec::new()));
                    }
                    // Deny rules win over every allow, whatever their place.
                    let order = if deny { (-1, i) } else { (0, i) };
                    for (destination, except) in destinations {
                        for range in &ports {
                            out.push(Grant {
                                except: except.clone(),
                                deny,
                                ..grant(destination.clone(), range, order)
                            });
                        }
                    }
                }
            }
        }
        (_, "CiliumEgressGatewayPolicy") => {
            out.extend(strings(&spec["destinationCIDRs"]).iter().map(|c| route(c)));
        }
        ("projectcalico.org/v3", "NetworkPolicy") => {
            for (i, rule) in rules("egress").iter().enumerate() {
                let d = &rule["destination"];
                let ports: Vec<Ports> = match &rule["protocol"] {
                    // ESP (IP protocol 50) has no ports.
                    Value::Number(n) if n.as_u64() == Some(50) => {
                        assert!(d["ports"].is_null(), "ESP has no ports: {rule}");
                        vec![("ESP".to_owned(), (0, 0))]
                    }
                    protocol => {
                        let transport = protocol.as_str().unwrap_or("ANY").to_owned();
                        ranges(&d["ports"], |p| {
                            let range = match p.as_str().and_then(|r| r.split_once(':')) {
                                Some((from, to)) => (from.parse().unwrap(), to.parse().unwrap()),
                                None => (port_of(p), port_of(p)),
                            };
                            (transport.clone(), range)
                        })
                    }
                };
                let mut destinations = strings(&d["nets"]);
                destinations.extend(strings(&d["domains"]));
                if d["selector"].is_string() {
                    destinations.push("dns".into());
                }
                if destinations.is_empty() {
                    destinations.push(ANYWHERE.into());
                }
                for destination in destinations {
                    for range in &ports {
                        out.push(Grant {
                            deny: rule["action"] == "Deny",
                            ..grant(destination.clone(), range, (0, i))
                        });
                    }
                }
            }
        }
        (_, "GlobalNetworkSet") => {
            out.extend(strings(&spec["nets"]).iter().map(|n| route(n)));
        }
        (_, "ServiceEntry") => {
            // Sidecars carry TCP only, whatever the port's application protocol.
            let ports: Vec<Ports> = spec["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| ("TCP".to_owned(), port_range(&p["number"], &Value::Null)))
                .collect();
            let destinations = match spec["addresses"].as_array() {
                Some(_) => strings(&spec["addresses"]),
                None => strings(&spec["hosts"]),
            };
            for destination in destinations {
                out.extend(ports.iter().map(|r| grant(destination.clone(), r, (0, 0))));
            }
        }
        (_, "AdminNetworkPolicy" | "ClusterNetworkPolicy") => {
            for (i, rule) in rules("egress").iter().enumerate() {
                let ports = match kind {
                    "AdminNetworkPolicy" => ranges(&rule["ports"], |p| {
                        let (n, range) = (&p["portNumber"], &p["portRange"]);
                        if n.is_object() {
                            let port = port_of(&n["port"]);
                            (n["protocol"].as_str().unwrap().to_owned(), (port, port))
                        } else {
                            let ports = (port_of(&range["start"]), port_of(&range["end"]));
                            (range["protocol"].as_str().unwrap().to_owned(), ports)
                        }
                    }),
                    _ => ranges(&rule["protocols"], |p| {
                        let (transport, l4) = if p["tcp"].is_object() {
                            ("TCP", &p["tcp"]["destinationPort"])
                        } else {
                            ("UDP", &p["udp"]["destinationPort"])
                        };
                        let ports = match l4["number"].as_u64() {
                            Some(n) => (n as u16, n as u16),
                            None => (port_of(&l4["range"]["start"]), port_of(&l4["range"]["end"])),
                        };
                        (transport.to_owned(), ports)
                    }),
                };
                for peer in rule["to"].as_array().unwrap() {
                    let mut destinations = strings(&peer["networks"]);
                    destinations.extend(strings(&peer["domainNames"]));
                    if peer["pods"].is_object() {
                        destinations.push("dns".into());
                    }
                    for destination in destinations {
                        for range in &ports {
                            out.push(Grant {
                                deny: rule["action"] == "Deny",
                                ..grant(destination.clone(), range, (priority, i))
                            });
                        }
                    }
                }
            }
        }
        (_, "EgressFirewall") => {
            for (i, rule) in rules("egress").iter().enumerate() {
                let destination = rule["to"]["dnsName"]
                    .as_str()
                    .or(rule["to"]["cidrSelector"].as_str())
                    .unwrap()
                    .to_owned();
                let ports = ranges(&rule["ports"], |p| {
                    let port = port_of(&p["port"]);
                    (p["protocol"].as_str().unwrap().to_owned(), (port, port))
                });
                // The closing deny-alls are what makes the list an allowlist; the others count.
                for range in &ports {
                    out.push(Grant {
                        deny: rule["type"] == "Deny",
                        ..grant(destination.clone(), range, (0, i))
                    });
                }
            }
        }
        // The egress gateway accepts (Gateway) and forwards (VirtualService) declared hosts only.
        (_, "Gateway") => {
            for server in rules("servers") {
                let port = (
                    "TCP".to_owned(),
                    port_range(&server["port"]["number"], &Value::Null),
                );
                for host in strings(&server["hosts"]) {
                    out.push(grant(host, &port, (0, 0)));
                }
            }
        }
        (_, "VirtualService") => {
            for route in rules("tls") {
                for destination in route["route"].as_array().unwrap() {
                    let host = destination["destination"]["host"].as_str().unwrap();
                    // The hop to the gateway itself is routing, not a destination.
                    if host != "istio-egressgateway.istio-system.svc.cluster.local" {
                        let number = &destination["destination"]["port"]["number"];
                        let port = ("TCP".to_owned(), port_range(number, &Value::Null));
                        out.push(grant(host, &port, (0, 0)));
                    }
                }
            }
        }
        // The gateway hop's subset and the REGISTRY_ONLY Sidecar allow nothing by themselves.
        (_, "DestinationRule" | "Sidecar") => {}
        other => panic!("unexpected {other:?}"),
    }
    out
}

/// Whether network text `inner` lies inside `outer` (both CIDRs or addresses).
pub(crate) fn inside(inner: &str, outer: &str) -> bool {
    let net = |text: &str| {
        text.parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
    };
    match (net(inner), net(outer)) {
        (Some(inner), Some(outer)) => outer.contains(&inner),
        _ => false,
    }
}

/// What a flavor's objects allow beyond the profile, or a Blocked endpoint they allow:
/// the first violation found.
pub(crate) fn widening(
    objects: &[Value],
    declared: &BTreeSet<(String, String, u16)>,
    blocked: &BTreeSet<(String, &'static str, u16)>,
) -> Option<String> {
    let declared_nets: BTreeSet<&String> = declared.iter().map(|(d, _, _)| d).collect();
    let all: Vec<Grant> = objects.iter().flat_map(grants).collect();
    for g in all.iter().filter(|g| !g.deny) {
        if g.destination == "dns" {
            if g.ports != (53, 53) {
                return Some(format!("allows DNS on {} {:?}", g.transport, g.ports));
            }
            continue;
        }
        // Destinations without ports (gateway routes, network sets) must be declared networks.
        if g.transport == "ANY" && g.ports == (0, 0) {
            if !declared_nets.contains(&g.destination) {
                return Some(format!("lists {}, undeclared", g.destination));
            }
            continue;
        }
        // A rule that names no transport opens its ports on every one.
        let (any, one) = (["TCP", "UDP"], [g.transport.as_str()]);
        let transports: &[&str] = if g.transport == "ANY" { &any } else { &one };
        for transport in transports {
            let undeclared =
                |p: &u16| !declared.contains(&(g.destination.clone(), transport.to_string(), *p));
            if let Some(port) = (g.ports.0..=g.ports.1).find(undeclared) {
                return Some(format!(
                    "allows {transport} {}:{port} (of {:?}), undeclared",
                    g.destination, g.ports
                ));
            }
        }
    }
    // Nothing lets a Blocked endpoint through on its transport: no allow matches it unless a
    // deny that is evaluated earlier (or an except) takes it out.
    for (destination, transport, port) in blocked {
        let covers = |g: &Grant| {
            (g.transport == *transport || g.transport == "ANY")
                && (g.ports.0..=g.ports.1).contains(port)
                && (g.destination == *destination || inside(destination, &g.destination))
                && !g.except.iter().any(|e| inside(destination, e))
        };
        for g in all
            .iter()
            .filter(|g| !g.deny && g.ports != (0, 0) && covers(g))
        {
            let denied_first = all.iter().any(|d| d.deny && d.order < g.order && covers(d));
            if !denied_first {
                return Some(format!(
                    "allows {transport} {destination}:{port}, expected Blocked (through {} {:?})",
                    g.destination, g.ports
                ));
            }
        }
    }
    None
}

/// The oracle itself catches what a widening emitter would write: every port of a rule
/// without ports, toPorts beyond the first, endPort ranges, and an allow of a Blocked endpoint
/// no Deny precedes.
#[test]
fn the_oracle_sees_all_ports_later_to_ports_ranges_and_allowed_blocked_endpoints() {
    let declared = BTreeSet::from([("10.0.0.0/24".to_owned(), "TCP".to_owned(), 443)]);
    let none = BTreeSet::new();
    let policy = |egress: Value| json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "spec": {"egress": egress}});
    let exact = policy(
        json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]),
    );
    assert_eq!(widening(&[exact], &declared, &none), None);
    for widened in [
        policy(json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": []}])),
        policy(json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}])),
        policy(json!([{"ports": [{"protocol": "TCP", "port": 443}]}])),
        policy(
            json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 443, "endPort": 444}]}]),
        ),
    ] {
        assert!(
            widening(std::slice::from_ref(&widened), &declared, &none).is_some(),
            "{widened}"
        );
    }
    let cilium = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "spec": {"egress": [
        {"toCIDR": ["10.0.0.0/24"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}, {"ports": [{"port": "22", "protocol": "TCP"}]}]}
    ]}});
    assert!(
        widening(&[cilium], &declared, &none)
            .unwrap()
            .contains(":22")
    );
    // A Blocked address inside an allowed range: allowed, unless a Deny comes first.
    let blocked = BTreeSet::from([("10.0.0.7/32".to_owned(), "TCP", 443)]);
    let firewall = |rules: Value| json!({"apiVersion": "k8s.ovn.org/v1", "kind": "EgressFirewall", "spec": {"egress": rules}});
    let allow = json!({"type": "Allow", "to": {"cidrSelector": "10.0.0.0/24"}, "ports": [{"protocol": "TCP", "port": 443}]});
    let deny = json!({"type": "Deny", "to": {"cidrSelector": "10.0.0.7/32"}, "ports": [{"protocol": "TCP", "port": 443}]});
    assert!(widening(&[firewall(json!([allow, deny]))], &declared, &blocked).is_some());
    assert_eq!(
        widening(&[firewall(json!([deny, allow]))], &declared, &blocked),
        None
    );
    let carved = policy(
        json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/24", "except": ["10.0.0.7/32"]}}], "ports": [{"protocol": "TCP", "port": 443}]}]),
    );
    assert_eq!(widening(&[carved], &declared, &blocked), None);
    // A Blocked IKE port is UDP: an allow of its number on UDP lets it through, one on TCP not.
    let declared = BTreeSet::from([
        ("10.0.0.0/24".to_owned(), "TCP".to_owned(), 500),
        ("10.0.0.0/24".to_owned(), "UDP".to_owned(), 500),
    ]);
    let blocked = BTreeSet::from([("10.0.0.7/32".to_owned(), "UDP", 500)]);
    let allow_on = |transport: &str| {
        firewall(
            json!([{"type": "Allow", "to": {"cidrSelector": "10.0.0.0/24"}, "ports": [{"protocol": transport, "port": 500}]}]),
        )
    };
    assert!(
        widening(&[allow_on("UDP")], &declared, &blocked)
            .unwrap()
            .contains("allows UDP 10.0.0.7/32:500")
    );
    assert_eq!(widening(&[allow_on("TCP")], &declared, &blocked), None);
}

#[test]
fn an_endpoint_inside_a_blocked_range_is_blocked_by_every_flavor() {
    let spec = spec(json!({"endpoints": [
        {"name": "vendor", "cidr": "10.0.0.7/32", "ports": [{"port": 443, "protocol": "TCP"}, {"port": 8443, "protocol": "TCP"}]},
        {"name": "subnet", "cidr": "10.0.0.0/24", "ports": [{"port": 443, "protocol": "TCP", "expect": "Blocked"}]},
    ], "policy": {"flavors": []}}));
    let addresses = BTreeMap::new();
    let input = profile_input("p", "mdm", &spec, &addresses);
    let allows_vendor_443 = |flavor: Flavor| {
        let output = emit(flavor, &input);
        let all: Vec<Grant> = output.objects.iter().flat_map(grants).collect();
        let covers =
            |g: &Grant| g.destination == "10.0.0.7/32" && (g.ports.0..=g.ports.1).contains(&443);
        let allowed = all
            .iter()
            .filter(|g| !g.deny && covers(g))
            .map(|g| g.order)
            .min();
        let denied = all
            .iter()
            .filter(|g| {
                g.deny
                    && (g.ports.0..=g.ports.1).contains(&443)
                    && inside("10.0.0.7/32", &g.destination)
            })
            .map(|g| g.order)
            .min();
        (
            allowed.is_some() && denied.is_none_or(|d| Some(d) > allowed),
            output.notes,
        )
    };
    for flavor in Flavor::iter().filter(|f| *f != Flavor::CiliumEgressGateway) {
        let (allowed, notes) = allows_vendor_443(flavor);
        assert!(
            !allowed,
            "{} lets 10.0.0.7:443 through: {notes:?}",
            flavor.as_str()
        );
    }
    // NetworkPolicy cannot deny: it leaves the address out (with its other ports: ports go
    // per rule, not per peer) and says so.
    let output = emit(Flavor::NetworkPolicy, &input);
    assert!(
        output
            .notes
            .iter()
            .any(|n| n.endpoint == "vendor"
                && n.message.contains("inside an endpoint expected Blocked")),
        "{:?}",
        output.notes
    );
    let granted: Vec<Grant> = output.objects.iter().flat_map(grants).collect();
    assert!(
        !granted.iter().any(|g| g.destination == "10.0.0.7/32"),
        "{granted:?}"
    );
}
