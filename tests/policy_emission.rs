//! Policy emission: every flavor accepted by its upstream CRD schema (installed in kube-sim,
//! applied with strict validation), golden files for the shipped examples, byte-identical
//! output, nothing undeclared allowed (a property test over random profiles), allowlists.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::IpNet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use netreach::api::{ConnectivityProfileSpec, Flavor};
use netreach::emit::{
    FLAVORS, Input, allowlist, emit, flavor_name, merge_egress_firewall, to_yaml,
};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn spec(value: Value) -> ConnectivityProfileSpec {
    serde_json::from_value(value).unwrap()
}

/// A profile that uses every kind of endpoint and every option.
fn rich_profile() -> (ConnectivityProfileSpec, BTreeMap<String, Vec<IpAddr>>) {
    let spec = spec(json!({
        "endpoints": [
            {"name": "mpnsv2-m3", "host": "mpnsv2.m3.maas360.com", "ports": [{"port": 443, "protocol": "HTTPS"}]},
            {"name": "internet-test", "host": "internettest.fiberlink.com", "ports": [{"port": 80, "protocol": "HTTP"}]},
            {"name": "directory", "host": "ad.customer.example.com", "ports": [{"port": 389, "protocol": "LDAP"}, {"port": 636, "protocol": "LDAPS"}]},
            {"name": "vendor-primary", "cidr": "18.233.3.236/32", "ports": [{"port": 443, "protocol": "TCP"}]},
            {"name": "vendor-range", "cidr": "2001:db8::/64", "ports": [{"port": 8443, "protocol": "TLS"}]},
        ],
        "policy": {
            "podSelector": {"matchLabels": {"app": "cloud-extender"}},
            "flavors": ["NetworkPolicy"],
            "egressGateway": {"nodeSelector": {"egress": "true"}, "egressIP": "192.0.2.10"},
            "istio": {"egressGateway": true, "registryOnly": true},
        },
    }));
    let addresses = BTreeMap::from([
        (
            "mpnsv2-m3".to_owned(),
            vec![
                "203.0.113.7".parse().unwrap(),
                "2001:db8:1::7".parse().unwrap(),
            ],
        ),
        (
            "internet-test".to_owned(),
            vec!["198.51.100.20".parse().unwrap()],
        ),
        (
            "directory".to_owned(),
            vec!["198.51.100.30".parse().unwrap()],
        ),
    ]);
    (spec, addresses)
}

fn resource_of(object: &Value) -> ApiResource {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "NetworkPolicy" if group == "projectcalico.org" => "networkpolicies".to_owned(),
        "NetworkPolicy" => "networkpolicies".to_owned(),
        "CiliumNetworkPolicy" => "ciliumnetworkpolicies".to_owned(),
        "CiliumEgressGatewayPolicy" => "ciliumegressgatewaypolicies".to_owned(),
        "GlobalNetworkSet" => "globalnetworksets".to_owned(),
        "ServiceEntry" => "serviceentries".to_owned(),
        "Gateway" => "gateways".to_owned(),
        "VirtualService" => "virtualservices".to_owned(),
        "DestinationRule" => "destinationrules".to_owned(),
        "Sidecar" => "sidecars".to_owned(),
        "AdminNetworkPolicy" => "adminnetworkpolicies".to_owned(),
        "ClusterNetworkPolicy" => "clusternetworkpolicies".to_owned(),
        "EgressFirewall" => "egressfirewalls".to_owned(),
        other => panic!("unexpected kind {other}"),
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural,
    }
}

#[tokio::test]
async fn every_flavor_is_accepted_by_its_upstream_crd_schema() {
    let sim = kube_sim::KubeSim::start(kube_sim::Options::default())
        .await
        .unwrap();
    let client = sim.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo().join("tests/fixtures/upstream-crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_json::from_value(value).unwrap();
            crds.create(&PostParams::default(), &crd)
                .await
                .unwrap_or_else(|e| panic!("{} was refused: {e}", file.display()));
        }
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "mdm"}})).unwrap(),
        )
        .await
        .unwrap();
    let (spec, addresses) = rich_profile();
    let input = Input {
        name: "maas360-m3",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    let mut applied = 0;
    for flavor in FLAVORS {
        let output = emit(flavor, &input);
        assert!(
            !output.objects.is_empty(),
            "{} emitted nothing: {:?}",
            flavor_name(flavor),
            output.notes
        );
        for object in output.objects {
            let resource = resource_of(&object);
            let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let name = object["metadata"]["name"].as_str().unwrap().to_owned();
            api.patch(
                &name,
                &PatchParams::apply("netreach-test").validation_strict(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} {name} ({}) was refused: {e}\n{}",
                    resource.kind,
                    flavor_name(flavor),
                    serde_norway::to_string(&object).unwrap()
                )
            });
            applied += 1;
        }
    }
    assert!(applied >= 12, "applied {applied} objects");
}

/// Golden files: `NETREACH_UPDATE_GOLDEN=1 cargo test --test policy_emission` rewrites them.
#[test]
fn the_shipped_examples_render_as_their_golden_files() {
    let loaded = netreach::load::load_paths(&[repo().join("examples")]).unwrap();
    for document in loaded {
        let netreach::load::Document::Profile(profile) = document.document else {
            continue;
        };
        let name = profile.metadata.name.clone().unwrap();
        // Stable addresses: one per host endpoint, numbered by position.
        let addresses: BTreeMap<String, Vec<IpAddr>> = profile
            .spec
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.host.is_some())
            .map(|(i, e)| {
                (
                    e.name.clone(),
                    vec![format!("203.0.113.{}", i + 1).parse().unwrap()],
                )
            })
            .collect();
        let input = Input {
            name: &name,
            namespace: profile.metadata.namespace.as_deref().unwrap(),
            spec: &profile.spec,
            addresses: &addresses,
        };
        for flavor in FLAVORS {
            let output = emit(flavor, &input);
            let mut text = to_yaml(&output.objects);
            for note in &output.notes {
                text.push_str(&format!("# note: {note}\n"));
            }
            let path = repo()
                .join("tests/golden")
                .join(&name)
                .join(format!("{}.yaml", flavor_name(flavor)));
            if std::env::var_os("NETREACH_UPDATE_GOLDEN").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let golden = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                golden == text,
                "{} differs from its golden file; review and rerun with NETREACH_UPDATE_GOLDEN=1\n{text}",
                path.display()
            );
        }
    }
}

fn render(args: &[&str], file: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netreach"))
        .arg("render")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn render_is_byte_identical_twice_and_resolves_through_the_nameserver() {
    let peers = support::Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profile.yaml");
    std::fs::write(
        &file,
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: local, namespace: mdm}\nspec:\n  policy: {podSelector: {matchLabels: {app: x}}, flavors: [NetworkPolicy]}\n  endpoints:\n    - {name: maas, host: mpnsv2.m3.maas360.com, ports: [{port: 443, protocol: HTTPS}]}\n    - {name: vendor, cidr: 18.233.3.236/32, ports: [{port: 443, protocol: TCP}]}\n",
    )
    .unwrap();
    let all = "networkpolicy,CILIUM,Calico,istio,AdminNetworkPolicy,ClusterNetworkPolicy,EgressFirewall,CiliumEgressGateway";
    let args = ["--flavor", all, "--resolve", "--nameserver", &peers.dns()];
    let (ok1, first, _) = render(&args, &file);
    let (ok2, second, _) = render(&args, &file);
    assert!(ok1 && ok2);
    assert_eq!(first, second, "render must be deterministic");
    assert!(
        first.contains("cidr: 127.0.0.1/32"),
        "resolved address in the NetworkPolicy:\n{first}"
    );
    assert!(first.contains("cidr: ::1/128"), "{first}");
    assert!(first.contains("matchName: mpnsv2.m3.maas360.com"));
    let (ok, _, stderr) = render(&["--flavor", "NetworkPolicy", "--strict"], &file);
    assert!(!ok, "without addresses --strict fails");
    assert!(
        stderr.contains("no resolved addresses for mpnsv2.m3.maas360.com"),
        "{stderr}"
    );
    let (ok, _, stderr) = render(&["--flavor", "Bogus"], &file);
    assert!(!ok && stderr.contains("unknown flavor"), "{stderr}");
}

#[test]
fn allowlists_list_every_declared_host_cidr_and_port() {
    let (spec, addresses) = rich_profile();
    let input = Input {
        name: "maas360-m3",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    let csv = allowlist::csv(std::slice::from_ref(&input));
    let markdown = allowlist::markdown(std::slice::from_ref(&input));
    for endpoint in &spec.endpoints {
        let destination = endpoint.host.clone().or(endpoint.cidr.clone()).unwrap();
        for port in &endpoint.ports {
            let csv_row = format!(
                "mdm/maas360-m3,{},{destination},{},{}",
                endpoint.name, port.port, port.protocol
            );
            assert!(csv.contains(&csv_row), "{csv_row} missing:\n{csv}");
            let md_row = format!(
                "| mdm/maas360-m3 | {} | {destination} | {} | {} |",
                endpoint.name, port.port, port.protocol
            );
            assert!(markdown.contains(&md_row), "{md_row} missing:\n{markdown}");
        }
    }
    assert!(csv.contains("203.0.113.7 2001:db8:1::7"));
    assert!(csv.lines().count() == 1 + 6, "{csv}");
}

#[test]
fn egress_firewall_merge_keeps_other_rules_and_replaces_ours() {
    let (spec, addresses) = rich_profile();
    let input = Input {
        name: "p",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    let ours = emit(Flavor::EgressFirewall, &input).objects.remove(0);
    let theirs = json!({"type": "Allow", "to": {"dnsName": "registry.example.org"}, "ports": [{"protocol": "TCP", "port": 443}]});
    let old_ours = json!({"type": "Allow", "to": {"dnsName": "old.vendor.example"}});
    let existing = json!({"spec": {"egress": [old_ours.clone(), theirs.clone(), {"type": "Deny", "to": {"cidrSelector": "0.0.0.0/0"}}]}});
    let merged = merge_egress_firewall(Some(&existing), &ours, std::slice::from_ref(&old_ours));
    let rules = merged["spec"]["egress"].as_array().unwrap();
    assert!(
        !rules.contains(&old_ours),
        "a rule we no longer want is gone"
    );
    assert!(rules.contains(&theirs), "someone else's rule stays");
    let denies: Vec<&Value> = rules.iter().filter(|r| r["type"] == "Deny").collect();
    assert_eq!(denies.len(), 2);
    assert_eq!(rules[rules.len() - 2]["type"], "Deny");
    let position = rules.iter().position(|r| *r == theirs).unwrap();
    assert!(position < rules.len() - 2, "deny-all closes the list");
}

/// Tiny deterministic PRNG for the property test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_profile(rng: &mut Rng) -> (ConnectivityProfileSpec, BTreeMap<String, Vec<IpAddr>>) {
    let mut endpoints = Vec::new();
    let mut addresses = BTreeMap::new();
    let labels = ["a", "vendor", "m3", "api", "x1"];
    for i in 0..(1 + rng.below(8)) {
        let name = format!("e{i}");
        let ports: BTreeSet<u16> = (0..(1 + rng.below(3)))
            .map(|_| 1 + rng.below(65535) as u16)
            .collect();
        let protocols = ["TCP", "TLS", "HTTP", "HTTPS", "SMTP", "LDAPS"];
        let ports: Vec<Value> = ports
            .into_iter()
            .map(|p| json!({"port": p, "protocol": protocols[rng.below(6) as usize]}))
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
    let spec = spec(json!({
        "endpoints": endpoints,
        "policy": {"podSelector": {"matchLabels": {"app": "w"}}, "flavors": [], "egressGateway": {"nodeSelector": {"gw": "1"}, "interface": "eth1"}},
    }));
    (spec, addresses)
}

/// (destination, port) pairs the profile declares: hosts, CIDRs and resolved addresses.
fn declared(
    spec: &ConnectivityProfileSpec,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> BTreeSet<(String, u16)> {
    let mut set = BTreeSet::new();
    for endpoint in &spec.endpoints {
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
        for port in &endpoint.ports {
            for destination in &destinations {
                set.insert((destination.clone(), port.port as u16));
            }
        }
    }
    set
}

fn port_of(value: &Value) -> u16 {
    value
        .as_u64()
        .map(|p| p as u16)
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap()
}

/// What an emitted object allows, as (destination, port); cluster DNS as ("dns", port).
fn allowed(object: &Value) -> BTreeSet<(String, u16)> {
    let mut set = BTreeSet::new();
    let kind = object["kind"].as_str().unwrap();
    let api_version = object["apiVersion"].as_str().unwrap();
    let spec = &object["spec"];
    let rules = |key: &str| spec[key].as_array().cloned().unwrap_or_default();
    match (api_version, kind) {
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            for rule in rules("egress") {
                let ports: Vec<u16> = rule["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| port_of(&p["port"]))
                    .collect();
                for peer in rule["to"].as_array().unwrap() {
                    let destination = peer["ipBlock"]["cidr"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| "dns".into());
                    set.extend(ports.iter().map(|p| (destination.clone(), *p)));
                }
            }
        }
        (_, "CiliumNetworkPolicy") => {
            for rule in rules("egress") {
                let ports: Vec<u16> = rule["toPorts"][0]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| port_of(&p["port"]))
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
                    set.extend(ports.iter().map(|p| (d.clone(), *p)));
                }
            }
        }
        (_, "CiliumEgressGatewayPolicy") => {
            for cidr in spec["destinationCIDRs"].as_array().unwrap() {
                set.insert((cidr.as_str().unwrap().to_owned(), 0));
            }
        }
        ("projectcalico.org/v3", "NetworkPolicy") => {
            for rule in rules("egress") {
                let d = &rule["destination"];
                let ports: Vec<u16> = d["ports"].as_array().unwrap().iter().map(port_of).collect();
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
                    set.extend(ports.iter().map(|p| (dest.clone(), *p)));
                }
            }
        }
        (_, "GlobalNetworkSet") => {
            for net in spec["nets"].as_array().unwrap() {
                set.insert((net.as_str().unwrap().to_owned(), 0));
            }
        }
        (_, "ServiceEntry") => {
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
                set.extend(ports.iter().map(|p| (d.clone(), *p)));
            }
        }
        (_, "AdminNetworkPolicy" | "ClusterNetworkPolicy") => {
            for rule in rules("egress") {
                let ports: Vec<u16> = match kind {
                    "AdminNetworkPolicy" => rule["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| port_of(&p["portNumber"]["port"]))
                        .collect(),
                    _ => rule["protocols"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| {
                            p["tcp"]["destinationPort"]["number"]
                                .as_u64()
                                .or(p["udp"]["destinationPort"]["number"].as_u64())
                                .unwrap() as u16
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
                        set.extend(ports.iter().map(|p| (d.clone(), *p)));
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
                for port in rule["ports"].as_array().unwrap() {
                    set.insert((destination.clone(), port_of(&port["port"])));
                }
            }
        }
        // Routing objects of the Istio egress gateway and the REGISTRY_ONLY Sidecar allow nothing by themselves.
        (_, "Gateway" | "VirtualService" | "DestinationRule" | "Sidecar") => {}
        other => panic!("unexpected {other:?}"),
    }
    set
}

#[test]
fn no_flavor_ever_allows_more_than_the_profile_declares() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..300 {
        let (spec, addresses) = random_profile(&mut rng);
        let declared = declared(&spec, &addresses);
        let declared_nets: BTreeSet<String> = declared.iter().map(|(d, _)| d.clone()).collect();
        let input = Input {
            name: "random",
            namespace: "ns",
            spec: &spec,
            addresses: &addresses,
        };
        for flavor in FLAVORS {
            for object in emit(flavor, &input).objects {
                for (destination, port) in allowed(&object) {
                    if destination == "dns" {
                        assert_eq!(
                            port,
                            53,
                            "round {round}: {} allows DNS on {port}",
                            flavor_name(flavor)
                        );
                        continue;
                    }
                    // Destinations without ports (gateway routes, network sets) must be declared networks.
                    let ok = if port == 0 {
                        declared_nets.contains(&destination)
                    } else {
                        declared.contains(&(destination.clone(), port))
                    };
                    assert!(
                        ok,
                        "round {round}: {} allows {destination}:{port}, undeclared\nprofile: {}\nobject: {object}",
                        flavor_name(flavor),
                        serde_json::to_string(&spec).unwrap()
                    );
                }
            }
        }
    }
}
