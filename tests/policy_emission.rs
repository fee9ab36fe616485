//! Policy emission: every flavor, every golden file and `netreach render` of the shipped
//! examples accepted by the upstream CRD schemas (installed in kube-sim, applied with strict
//! validation), golden files, byte-identical output, nothing undeclared allowed and no pod
//! selected beyond the profile's (a property test over random profiles), allowlists, and the
//! operator sharing the namespace's EgressFirewall without overriding anyone's rules.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::IpNet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use netreach::api::{ConnectivityProfileSpec, Flavor, Protocol};
use netreach::emit::{
    EGRESS_FIREWALL_RULES_ANNOTATION, Input, allowlist, emit, merge_egress_firewall, to_yaml,
    unmerge_egress_firewall,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use strum::IntoEnumIterator;
use support::cluster::{Cluster, eventually};

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
            {"name": "not-example", "host": "example.org", "ports": [{"port": 443, "protocol": "HTTPS", "expect": "Blocked"}]},
            {"name": "not-internal", "cidr": "192.0.2.0/24", "ports": [{"port": 443, "protocol": "TCP", "expect": "Blocked"}, {"port": 22, "protocol": "TCP", "expect": "Blocked"}]},
        ],
        "policy": {
            "podSelector": {"matchLabels": {"app": "cloud-extender"}},
            "flavors": ["NetworkPolicy"],
            "egressGateway": {"nodeSelector": {"egress": "true"}, "egressIP": "192.0.2.10"},
            "istio": {"egressGateway": true, "registryOnly": true, "waypoint": "egress"},
        },
    }));
    let addresses = BTreeMap::from([
        (
            "not-example".to_owned(),
            vec!["93.184.215.14".parse().unwrap()],
        ),
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

/// kube-sim with every upstream CRD of `tests/fixtures/upstream-crds` installed, to apply
/// emitted objects with strict field validation (structure and CEL rules).
struct UpstreamSchemas {
    _sim: kube_sim::KubeSim,
    client: kube::Client,
    namespaces: BTreeSet<String>,
    applied: usize,
}

impl UpstreamSchemas {
    async fn start() -> UpstreamSchemas {
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
        UpstreamSchemas {
            _sim: sim,
            client,
            namespaces: BTreeSet::new(),
            applied: 0,
        }
    }

    /// Applies `object` with strict validation, after the independent schema validator
    /// accepted it; `source` says where it came from.
    async fn apply(&mut self, object: &Value, source: &str) {
        assert_schema_valid(object, source);
        if let Some(namespace) = object["metadata"]["namespace"].as_str()
            && self.namespaces.insert(namespace.to_owned())
        {
            Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
                )
                .await
                .unwrap();
        }
        let resource = resource_of(object);
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        api.patch(
            &name,
            &PatchParams::apply("netreach-test").validation_strict(),
            &Patch::Apply(object),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} {name} ({source}) was refused by its upstream CRD: {e}\n{}",
                resource.kind,
                serde_norway::to_string(object).unwrap()
            )
        });
        self.applied += 1;
    }
}

/// The documents of a YAML stream, comments and empty documents left out.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

#[tokio::test]
async fn every_flavor_is_accepted_by_its_upstream_crd_schema() {
    let mut schemas = UpstreamSchemas::start().await;
    let (spec, addresses) = rich_profile();
    let input = Input {
        name: "maas360-m3",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    for flavor in Flavor::iter() {
        let output = emit(flavor, &input);
        assert!(
            !output.objects.is_empty(),
            "{} emitted nothing: {:?}",
            flavor.as_str(),
            output.notes
        );
        for object in output.objects {
            schemas.apply(&object, flavor.as_str()).await;
        }
    }
    assert!(schemas.applied >= 12, "applied {} objects", schemas.applied);
}

/// FTP with a passive range, FTPS without one, and two IKE peers, as an ITSM integration
/// declares them.
fn ftp_and_ike_profile() -> (ConnectivityProfileSpec, BTreeMap<String, Vec<IpAddr>>) {
    let spec = spec(json!({
        "endpoints": [
            {"name": "bulk", "host": "ftp.vendor.example.com", "ports": [{"port": 21, "protocol": "FTP", "ftp": {"passivePorts": {"from": 50000, "to": 50100}}}]},
            {"name": "bulk-legacy", "cidr": "203.0.113.50/32", "ports": [{"port": 990, "protocol": "FTPS"}]},
            {"name": "vpn-primary", "cidr": "18.233.3.236/32", "ports": [{"port": 500, "protocol": "IKE"}]},
            {"name": "vpn-dr", "cidr": "34.208.112.206/32", "ports": [{"port": 500, "protocol": "IKE", "ike": {"version": 1}}]},
        ],
        "policy": {
            "podSelector": {"matchLabels": {"app": "itsm-integration"}},
            "flavors": ["NetworkPolicy"],
            "egressGateway": {"nodeSelector": {"egress": "true"}, "egressIP": "192.0.2.10"},
        },
    }));
    let addresses = BTreeMap::from([("bulk".to_owned(), vec!["198.51.100.21".parse().unwrap()])]);
    (spec, addresses)
}

#[tokio::test]
async fn ftp_data_ranges_ike_udp_and_esp_render_to_valid_objects_and_say_what_is_left_out() {
    let mut schemas = UpstreamSchemas::start().await;
    let (spec, addresses) = ftp_and_ike_profile();
    let input = Input {
        name: "itsm",
        namespace: "itsm",
        spec: &spec,
        addresses: &addresses,
    };
    let mut by_flavor = BTreeMap::new();
    for flavor in Flavor::iter() {
        let output = emit(flavor, &input);
        for object in &output.objects {
            schemas.apply(object, flavor.as_str()).await;
        }
        by_flavor.insert(flavor, output);
    }
    let has = |flavor: Flavor, wanted: (&str, &str, u16)| {
        by_flavor[&flavor]
            .objects
            .iter()
            .flat_map(allowed)
            .any(|(d, t, p)| (d.as_str(), t.as_str(), p) == wanted)
    };
    let noted = |flavor: Flavor, endpoint: &str, text: &str| {
        by_flavor[&flavor]
            .notes
            .iter()
            .any(|n| n.endpoint == endpoint && n.message.contains(text))
    };
    for flavor in [
        Flavor::NetworkPolicy,
        Flavor::Calico,
        Flavor::AdminNetworkPolicy,
        Flavor::ClusterNetworkPolicy,
        Flavor::EgressFirewall,
    ] {
        let name = flavor.as_str();
        // Address-based flavors allow the resolved address, the others the name.
        let bulk = match flavor {
            Flavor::NetworkPolicy | Flavor::Calico => "198.51.100.21/32",
            _ => "ftp.vendor.example.com",
        };
        assert!(has(flavor, (bulk, "TCP", 21)), "{name}: control port");
        assert!(
            has(flavor, (bulk, "TCP", 50000)),
            "{name}: passive range start"
        );
        assert!(
            has(flavor, (bulk, "TCP", 50100)),
            "{name}: passive range end"
        );
        assert!(
            !has(flavor, (bulk, "TCP", 50101)),
            "{name}: not beyond the range"
        );
        assert!(has(flavor, ("18.233.3.236/32", "UDP", 500)), "{name}: IKE");
        assert!(
            has(flavor, ("18.233.3.236/32", "UDP", 4500)),
            "{name}: NAT-T"
        );
        assert!(
            !has(flavor, ("18.233.3.236/32", "TCP", 500)),
            "{name}: IKE is not TCP"
        );
        assert!(
            noted(
                flavor,
                "bulk-legacy",
                "FTP on port 990 without ftp.passivePorts"
            ),
            "{name}: {:?}",
            by_flavor[&flavor].notes
        );
    }
    // Cilium names hosts: the same ports to the name.
    assert!(has(
        Flavor::Cilium,
        ("ftp.vendor.example.com", "TCP", 50042)
    ));
    assert!(has(Flavor::Cilium, ("34.208.112.206/32", "UDP", 4500)));
    // ESP where the flavor has it (Calico: IP protocol 50), a note where it has not.
    assert!(has(Flavor::Calico, ("18.233.3.236/32", "ESP", 0)));
    assert!(!noted(Flavor::Calico, "vpn-primary", "ESP"));
    for flavor in [
        Flavor::NetworkPolicy,
        Flavor::Cilium,
        Flavor::AdminNetworkPolicy,
        Flavor::ClusterNetworkPolicy,
        Flavor::EgressFirewall,
    ] {
        assert!(
            noted(
                flavor,
                "vpn-primary",
                "ESP (IP protocol 50) cannot be expressed"
            ),
            "{}: {:?}",
            flavor.as_str(),
            by_flavor[&flavor].notes
        );
    }
    // Istio's sidecars carry TCP only: the FTP ports listed one by one, IKE left out, said so.
    assert!(has(Flavor::Istio, ("ftp.vendor.example.com", "TCP", 50100)));
    assert!(noted(Flavor::Istio, "vpn-dr", "bypass the mesh"));
    assert!(
        by_flavor[&Flavor::Istio]
            .objects
            .iter()
            .all(|o| !o["metadata"]["name"].as_str().unwrap().ends_with("vpn-dr")),
        "no ServiceEntry without ports"
    );
    assert!(schemas.applied >= 8, "applied {} objects", schemas.applied);

    let csv = allowlist::csv(std::slice::from_ref(&input));
    assert!(
        csv.starts_with("profile,endpoint,destination,port,transport,protocol,"),
        "{csv}"
    );
    for row in [
        "itsm/itsm,bulk,ftp.vendor.example.com,21,TCP,FTP,198.51.100.21,",
        "itsm/itsm,bulk,ftp.vendor.example.com,50000-50100,TCP,FTP data (passive),198.51.100.21,none,true",
        "itsm/itsm,vpn-primary,18.233.3.236/32,500,UDP,IKE,18.233.3.236/32,none,true",
        "itsm/itsm,vpn-primary,18.233.3.236/32,4500,UDP,IKE (NAT traversal),",
        "itsm/itsm,vpn-dr,34.208.112.206/32,,ESP,IPsec ESP,34.208.112.206/32,none,true",
    ] {
        assert!(csv.contains(row), "{row} missing:\n{csv}");
    }
    let markdown = allowlist::markdown(std::slice::from_ref(&input));
    assert!(
        markdown.contains("| itsm/itsm | vpn-dr | 34.208.112.206/32 | 500 | UDP | IKE |"),
        "{markdown}"
    );
}

#[tokio::test]
async fn every_golden_file_is_accepted_by_its_upstream_crd_schema() {
    let mut schemas = UpstreamSchemas::start().await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/golden"))
        .unwrap()
        .flat_map(|profile| std::fs::read_dir(profile.unwrap().path()).unwrap())
        .map(|file| file.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2 * Flavor::iter().count(), "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for object in documents(&text) {
            schemas.apply(&object, &file.display().to_string()).await;
        }
    }
    assert!(schemas.applied >= 20, "applied {} objects", schemas.applied);
}

#[tokio::test]
async fn render_of_the_shipped_examples_is_accepted_by_the_upstream_crd_schemas() {
    let mut schemas = UpstreamSchemas::start().await;
    let every = Flavor::iter()
        .map(Flavor::as_str)
        .collect::<Vec<_>>()
        .join(",");
    let (ok, stdout, stderr) = render(&["--flavor", &every], &repo().join("examples"));
    assert!(ok, "{stderr}");
    let objects = documents(&stdout);
    for object in &objects {
        schemas.apply(object, "netreach render examples/").await;
    }
    assert!(schemas.applied >= 10, "applied {} objects", schemas.applied);
}

/// Golden files: `NETREACH_UPDATE_GOLDEN=1 cargo test --test policy_emission` rewrites them.
#[test]
fn the_shipped_examples_render_as_their_golden_files() {
    let loaded = netreach::api::load::load_paths(&[repo().join("examples")]).unwrap();
    for document in loaded {
        let netreach::api::load::Document::Profile(profile) = document.document else {
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
        for flavor in Flavor::iter() {
            let output = emit(flavor, &input);
            let mut text = to_yaml(&output.objects);
            for note in &output.notes {
                text.push_str(&format!("# note: {note}\n"));
            }
            let path = repo()
                .join("tests/golden")
                .join(&name)
                .join(format!("{}.yaml", flavor.as_str()));
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
    // The profile selects pods; an EgressFirewall covers the whole namespace and says so.
    let (ok, stdout, stderr) = render(&["--flavor", "EgressFirewall"], &file);
    assert!(ok && stdout.contains("kind: EgressFirewall"), "{stderr}");
    assert!(
        stderr.contains("warning: mdm/local: EgressFirewall: endpoint *: cannot select pods: it applies to every pod in namespace mdm"),
        "{stderr}"
    );
    let (ok, _, _) = render(&["--flavor", "EgressFirewall", "--strict"], &file);
    assert!(!ok, "--strict refuses the namespace-wide EgressFirewall");
}

#[test]
fn flavors_take_any_case_on_the_command_line_and_the_canonical_spelling_in_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let profile = |flavor: &str| {
        format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: p, namespace: mdm}}\nspec:\n  policy: {{flavors: [{flavor}]}}\n  endpoints:\n    - {{name: vendor, cidr: 18.233.3.236/32, ports: [{{port: 443, protocol: TCP}}]}}\n"
        )
    };
    let canonical = dir.path().join("canonical.yaml");
    std::fs::write(&canonical, profile("NetworkPolicy")).unwrap();
    for spelling in ["NetworkPolicy", "networkpolicy", "NETWORKPOLICY"] {
        let (ok, stdout, stderr) = render(&["--flavor", spelling], &canonical);
        assert!(
            ok && stdout.contains("cidr: 18.233.3.236/32"),
            "{spelling}: {stderr}"
        );
    }
    // The CRD's enum takes the canonical spelling only, and render enforces the same schema.
    let lowercase = dir.path().join("lowercase.yaml");
    std::fs::write(&lowercase, profile("networkpolicy")).unwrap();
    let (ok, _, stderr) = render(&["--flavor", "NetworkPolicy"], &lowercase);
    assert!(
        !ok,
        "a lowercase flavor in a profile is refused, as kubectl apply refuses it"
    );
    assert!(
        stderr.contains(r#"Unsupported value: "networkpolicy": supported values: "NetworkPolicy""#),
        "{stderr}"
    );
}

#[test]
fn policy_api_flavors_leave_out_single_label_hosts_their_crds_refuse() {
    let spec = spec(json!({
        "endpoints": [
            {"name": "intranet", "host": "intranet", "ports": [{"port": 443, "protocol": "HTTPS"}]},
            {"name": "vendor", "host": "api.vendor.example", "ports": [{"port": 443, "protocol": "HTTPS"}]},
        ],
        "policy": {"flavors": []},
    }));
    let addresses = BTreeMap::new();
    let input = Input {
        name: "p",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    for flavor in [Flavor::AdminNetworkPolicy, Flavor::ClusterNetworkPolicy] {
        let output = emit(flavor, &input);
        let text = serde_json::to_string(&output.objects).unwrap();
        assert!(!text.contains("\"intranet\""), "{text}");
        assert!(text.contains("api.vendor.example"), "{text}");
        assert!(
            output
                .notes
                .iter()
                .any(|n| n.endpoint == "intranet" && n.message.contains("single label")),
            "{:?}",
            output.notes
        );
    }
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
            let transport = port.protocol.transport().as_str();
            let csv_row = format!(
                "mdm/maas360-m3,{},{destination},{},{transport},{}",
                endpoint.name, port.port, port.protocol
            );
            // What must stay closed is no part of what the perimeter should open.
            if port.blocked() {
                assert!(!csv.contains(&csv_row), "{csv_row} listed:\n{csv}");
                continue;
            }
            assert!(csv.contains(&csv_row), "{csv_row} missing:\n{csv}");
            let md_row = format!(
                "| mdm/maas360-m3 | {} | {destination} | {} | {transport} | {} |",
                endpoint.name, port.port, port.protocol
            );
            assert!(markdown.contains(&md_row), "{md_row} missing:\n{markdown}");
        }
    }
    assert!(csv.contains("203.0.113.7 2001:db8:1::7"));
    assert!(csv.lines().count() == 1 + 6, "{csv}");
}

fn deny(cidr: &str) -> Value {
    json!({"type": "Deny", "to": {"cidrSelector": cidr}})
}

fn allow_tcp(to: Value, port: u16) -> Value {
    json!({"type": "Allow", "to": to, "ports": [{"protocol": "TCP", "port": port}]})
}

/// The EgressFirewall a small profile emits: two CIDR endpoints, one inside someone else's
/// Deny.
fn vendor_firewall(profile: &str, cidrs: &[(&str, u16)]) -> Value {
    let endpoints: Vec<Value> = cidrs
        .iter()
        .enumerate()
        .map(|(i, (cidr, port))| json!({"name": format!("e{i}"), "cidr": cidr, "ports": [{"port": port, "protocol": "TCP"}]}))
        .collect();
    let spec = spec(json!({"endpoints": endpoints, "policy": {"flavors": ["EgressFirewall"]}}));
    let addresses = BTreeMap::new();
    let input = Input {
        name: profile,
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    emit(Flavor::EgressFirewall, &input).objects.remove(0)
}

fn firewall_with(rules: Vec<Value>) -> Value {
    json!({"apiVersion": "k8s.ovn.org/v1", "kind": "EgressFirewall", "metadata": {"name": "default", "namespace": "mdm"}, "spec": {"egress": rules}})
}

fn egress(object: &Value) -> Vec<Value> {
    object["spec"]["egress"].as_array().unwrap().clone()
}

#[test]
fn egress_firewall_merge_puts_others_rules_first_so_our_allows_never_override_their_denies() {
    let their_deny = deny("203.0.113.0/24");
    let their_allow = allow_tcp(json!({"dnsName": "registry.example.org"}), 443);
    let existing = firewall_with(vec![
        their_deny.clone(),
        their_allow.clone(),
        deny("0.0.0.0/0"),
    ]);
    let ours = vendor_firewall(
        "vendor",
        &[("203.0.113.7/32", 443), ("198.51.100.0/24", 8443)],
    );
    let merged = merge_egress_firewall(Some(&existing), &ours, "vendor");
    let ours_first = allow_tcp(json!({"cidrSelector": "203.0.113.7/32"}), 443);
    let ours_second = allow_tcp(json!({"cidrSelector": "198.51.100.0/24"}), 8443);
    // First match wins: their Deny of 203.0.113.0/24 still decides for 203.0.113.7.
    assert_eq!(
        egress(&merged.object),
        [
            their_deny.clone(),
            their_allow.clone(),
            ours_first.clone(),
            ours_second.clone(),
            deny("0.0.0.0/0"),
            deny("::/0"),
        ]
    );
    assert!(merged.notes.is_empty(), "{:?}", merged.notes);
    // Their deny-all closes our rules too and stays theirs; we record only what we added.
    let record: Value = serde_json::from_str(
        merged.object["metadata"]["annotations"][EGRESS_FIREWALL_RULES_ANNOTATION]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        record,
        json!({"vendor": [ours_first, ours_second, deny("::/0")]})
    );
    // Taking ours out restores their list exactly.
    let left = unmerge_egress_firewall(&merged.object, "vendor").expect("their rules stay");
    assert_eq!(egress(&left), egress(&existing));
    assert!(left["metadata"]["annotations"].is_null(), "{left}");
}

#[test]
fn egress_firewall_merge_replaces_our_old_rules_and_keeps_other_profiles_rules() {
    let first = merge_egress_firewall(None, &vendor_firewall("a", &[("192.0.2.1/32", 443)]), "a");
    let a_rule = allow_tcp(json!({"cidrSelector": "192.0.2.1/32"}), 443);
    assert_eq!(
        egress(&first.object),
        [a_rule.clone(), deny("0.0.0.0/0"), deny("::/0")]
    );
    // Someone appends a rule of their own before the closing deny-all.
    let mut rules = egress(&first.object);
    let theirs = allow_tcp(json!({"dnsName": "mirror.example.org"}), 443);
    rules.insert(1, theirs.clone());
    let mut shared = first.object.clone();
    shared["spec"]["egress"] = Value::Array(rules);
    // A second profile in the namespace, which also wants a's rule.
    let b = vendor_firewall("b", &[("192.0.2.1/32", 443), ("192.0.2.2/32", 22)]);
    let b_rule = allow_tcp(json!({"cidrSelector": "192.0.2.2/32"}), 22);
    let shared = merge_egress_firewall(Some(&shared), &b, "b").object;
    assert_eq!(
        egress(&shared),
        [
            theirs.clone(),
            a_rule.clone(),
            b_rule.clone(),
            deny("0.0.0.0/0"),
            deny("::/0")
        ]
    );
    // a changes its endpoint: its old rule goes, b's copy of it stays.
    let a_now = allow_tcp(json!({"cidrSelector": "192.0.2.3/32"}), 443);
    let shared = merge_egress_firewall(
        Some(&shared),
        &vendor_firewall("a", &[("192.0.2.3/32", 443)]),
        "a",
    )
    .object;
    assert_eq!(
        egress(&shared),
        [
            theirs.clone(),
            a_rule.clone(),
            b_rule.clone(),
            a_now.clone(),
            deny("0.0.0.0/0"),
            deny("::/0")
        ]
    );
    // a leaves: b's rules and the deny-all b relies on stay.
    let shared = unmerge_egress_firewall(&shared, "a").unwrap();
    assert_eq!(
        egress(&shared),
        [
            theirs.clone(),
            a_rule.clone(),
            b_rule,
            deny("0.0.0.0/0"),
            deny("::/0")
        ]
    );
    // b leaves: only the rule someone else wrote is left, as they wrote it.
    let shared = unmerge_egress_firewall(&shared, "b").unwrap();
    assert_eq!(egress(&shared), [theirs]);
    // Nothing anyone else wrote: the object goes.
    let alone = merge_egress_firewall(None, &vendor_firewall("a", &[("192.0.2.1/32", 443)]), "a");
    assert_eq!(unmerge_egress_firewall(&alone.object, "a"), None);
}

#[test]
fn egress_firewall_merge_never_removes_or_reorders_someone_elses_deny_all() {
    // Someone blocks all egress of the namespace: after NetReach comes and goes, it still does.
    let blocked = firewall_with(vec![deny("0.0.0.0/0"), deny("::/0")]);
    let merged = merge_egress_firewall(
        Some(&blocked),
        &vendor_firewall("vendor", &[("192.0.2.1/32", 443)]),
        "vendor",
    );
    let left = unmerge_egress_firewall(&merged.object, "vendor").expect("their deny-all stays");
    assert_eq!(egress(&left), egress(&blocked));

    // A deny-all in the middle of someone's list decides before our rules: said, not moved.
    let shadowing = firewall_with(vec![
        deny("0.0.0.0/0"),
        allow_tcp(json!({"dnsName": "dead.example.org"}), 443),
    ]);
    let merged = merge_egress_firewall(
        Some(&shadowing),
        &vendor_firewall("vendor", &[("192.0.2.1/32", 443)]),
        "vendor",
    );
    let rules = egress(&merged.object);
    assert_eq!(rules[..2], egress(&shadowing)[..]);
    assert_eq!(merged.notes.len(), 1, "{:?}", merged.notes);
    assert!(
        merged.notes[0].contains("spec.egress[0] denies all traffic to 0.0.0.0/0"),
        "{}",
        merged.notes[0]
    );
    let left = unmerge_egress_firewall(&merged.object, "vendor").unwrap();
    assert_eq!(egress(&left), egress(&shadowing));

    // The single list older versions recorded belongs to the profile reading it.
    let mut legacy =
        merge_egress_firewall(None, &vendor_firewall("v", &[("192.0.2.1/32", 443)]), "v").object;
    let rules = egress(&legacy);
    legacy["metadata"]["annotations"][EGRESS_FIREWALL_RULES_ANNOTATION] =
        Value::String(serde_json::to_string(&rules).unwrap());
    assert_eq!(unmerge_egress_firewall(&legacy, "v"), None);
}

#[test]
fn egress_firewall_says_it_covers_the_whole_namespace_when_the_profile_selects_pods() {
    let (mut spec, addresses) = rich_profile();
    let input = Input {
        name: "p",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    let output = emit(Flavor::EgressFirewall, &input);
    assert_eq!(output.objects.len(), 1);
    assert!(
        output
            .notes
            .iter()
            .any(|n| n.endpoint == "*"
                && n.message.contains("applies to every pod in namespace mdm")),
        "{:?}",
        output.notes
    );
    spec.policy.as_mut().unwrap().pod_selector = None;
    let input = Input {
        name: "p",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    let output = emit(Flavor::EgressFirewall, &input);
    assert!(
        output.notes.iter().all(|n| n.endpoint != "*"),
        "a profile for every pod of the namespace loses nothing: {:?}",
        output.notes
    );
}

fn random_profile(seed: &ProfileSeed) -> (ConnectivityProfileSpec, BTreeMap<String, Vec<IpAddr>>) {
    let mut endpoints = Vec::new();
    let mut addresses = BTreeMap::new();
    let labels = ["a", "vendor", "m3", "api", "x1"];
    let protocols = ["TCP", "TLS", "HTTP", "HTTPS", "SMTP", "LDAPS"];
    for (i, e) in seed.endpoints.iter().enumerate() {
        let name = format!("e{i}");
        let mut seen = BTreeSet::new();
        let ports: Vec<Value> = e
            .ports
            .iter()
            .filter(|(port, _, _)| seen.insert(*port))
            .map(|(port, protocol, blocked)| {
                let mut spec = json!({"port": port, "protocol": protocols[*protocol]});
                if *blocked {
                    spec["expect"] = json!("Blocked");
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

/// (destination, port) pairs the profile declares reachable: hosts, CIDRs and resolved
/// addresses, less what a Blocked port of the same host or CIDR declares.
fn declared(
    spec: &ConnectivityProfileSpec,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> BTreeSet<(String, u16)> {
    let blocked_declared: BTreeSet<(String, u16)> = spec
        .endpoints
        .iter()
        .flat_map(|e| {
            let target = e.host.clone().or(e.cidr.clone()).unwrap_or_default();
            e.ports
                .iter()
                .filter(|p| p.blocked())
                .map(move |p| (target.clone(), p.port as u16))
        })
        .collect();
    let mut set = BTreeSet::new();
    for endpoint in &spec.endpoints {
        let target = endpoint
            .host
            .clone()
            .or(endpoint.cidr.clone())
            .unwrap_or_default();
        for port in endpoint.ports.iter().filter(|p| !p.blocked()) {
            if blocked_declared.contains(&(target.clone(), port.port as u16)) {
                continue;
            }
            for destination in destinations(endpoint, addresses) {
                set.insert((destination, port.port as u16));
            }
        }
    }
    set
}

/// Every port of `from..=to`.
fn span(from: &Value, to: &Value) -> Vec<u16> {
    let from = port_of(from);
    let to = if to.is_null() { from } else { port_of(to) };
    (from..=to).collect()
}

fn port_of(value: &Value) -> u16 {
    value
        .as_u64()
        .map(|p| p as u16)
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap()
}

/// What an emitted object allows, as (destination, transport, port); cluster DNS as ("dns",
/// transport, port); ESP with port 0; a destination without ports (gateway routes, network
/// sets) as ("ANY", 0).
fn allowed(object: &Value) -> BTreeSet<(String, String, u16)> {
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

/// Which pods an object applies to, checked against the profile's podSelector: the same
/// selector, or (EgressFirewall, which cannot select pods) the whole namespace with a note
/// saying so. Registry objects stay visible to the namespace only.
fn check_selection(
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

#[test]
fn no_flavor_ever_allows_more_than_the_profile_declares() {
    use std::sync::Mutex;
    let kinds = Mutex::new(BTreeSet::new());
    let calico_domains = Mutex::new(false);
    let denies = Mutex::new(BTreeSet::new());
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 500,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    let result = runner.run(&profile_seed(), |seed| {
        let (spec, addresses) = random_profile(&seed);
        let declared = declared(&spec, &addresses);
        let blocked = blocked(&spec, &addresses);
        let input = Input {
            name: "random",
            namespace: "ns",
            spec: &spec,
            addresses: &addresses,
        };
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
                if grants(object)
                    .iter()
                    .any(|g| g.deny && g.ports != ALL_PORTS)
                {
                    denies.lock().unwrap().insert(flavor);
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

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn install_upstream_crd(cluster: &Cluster, file: &str) {
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/upstream-crds").join(file)).unwrap();
    let crd: CustomResourceDefinition = serde_norway::from_str(&text).unwrap();
    Api::<CustomResourceDefinition>::all(cluster.client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
}

fn egress_firewalls(cluster: &Cluster) -> Api<DynamicObject> {
    Api::namespaced_with(
        cluster.client.clone(),
        &cluster.namespace,
        &resource_of(&json!({"apiVersion": "k8s.ovn.org/v1", "kind": "EgressFirewall"})),
    )
}

/// The namespace's EgressFirewall rules, read with `list` (faults injected on `get` stay for
/// the operator).
async fn listed_rules(api: &Api<DynamicObject>) -> Option<Vec<Value>> {
    let list = api.list(&Default::default()).await.ok()?;
    let object = serde_json::to_value(list.items.first()?).ok()?;
    Some(egress(&object))
}

fn policy_condition(profile: &netreach::api::ConnectivityProfile) -> Option<(String, String)> {
    profile
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "PolicyApplied")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_shares_the_egress_firewall_and_keeps_its_finalizer_until_cleanup_succeeds() {
    use netreach::api::ConnectivityProfile;
    let cluster = Cluster::start("egress-firewall").await;
    install_upstream_crd(&cluster, "egressfirewall.yaml").await;
    install_upstream_crd(&cluster, "adminnetworkpolicy.yaml").await;
    let foreign = vec![
        deny("203.0.113.0/24"),
        allow_tcp(json!({"dnsName": "registry.example.org"}), 443),
        deny("0.0.0.0/0"),
    ];
    // Someone else's EgressFirewall, in the test's namespace.
    let mut theirs = firewall_with(foreign.clone());
    theirs["metadata"]["namespace"] = json!(cluster.namespace);
    cluster
        .apply_yaml(&serde_norway::to_string(&theirs).unwrap())
        .await;
    cluster
        .apply_yaml(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: vendor}\nspec:\n  endpoints:\n    - {name: primary, cidr: 203.0.113.7/32, ports: [{port: 443, protocol: TCP}]}\n    - {name: backup, cidr: 198.51.100.0/24, ports: [{port: 8443, protocol: TLS}]}\n  policy:\n    podSelector: {matchLabels: {app: agent}}\n    flavors: [EgressFirewall, AdminNetworkPolicy]\n",
        )
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("egress-firewall"));
    let firewalls = egress_firewalls(&cluster);
    let merged = vec![
        foreign[0].clone(),
        foreign[1].clone(),
        allow_tcp(json!({"cidrSelector": "198.51.100.0/24"}), 8443),
        allow_tcp(json!({"cidrSelector": "203.0.113.7/32"}), 443),
        deny("0.0.0.0/0"),
        deny("::/0"),
    ];
    eventually(
        WAIT,
        "NetReach's rules after the others' and before the deny-all",
        || {
            let (firewalls, merged) = (firewalls.clone(), merged.clone());
            async move { (listed_rules(&firewalls).await? == merged).then_some(()) }
        },
    )
    .await;
    let profiles = cluster.api::<ConnectivityProfile>();
    let (reason, message) = eventually(WAIT, "PolicyApplied", || {
        let profiles = profiles.clone();
        async move { policy_condition(&profiles.get("vendor").await.ok()?) }
    })
    .await;
    assert_eq!(reason, "Applied", "{message}");
    assert!(
        message.contains(
            "EgressFirewall: endpoint *: cannot select pods: it applies to every pod in namespace"
        ),
        "the condition says the firewall is namespace-wide: {message}"
    );

    // Cleanup meets server errors (500: the client does not retry those itself): the
    // finalizer stays and the rules come out on a later attempt.
    let Some(sim) = cluster.sim_or_skip("fault injection") else {
        return;
    };
    sim.faults()
        .fail_next("delete", "adminnetworkpolicies", 1, 500);
    sim.faults().fail_next("get", "egressfirewalls", 3, 500);
    profiles
        .delete("vendor", &Default::default())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let waiting = profiles
        .get_opt("vendor")
        .await
        .unwrap()
        .expect("a failed cleanup keeps the profile");
    assert!(
        waiting
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "connectivityprofiles.netreach.dev/cleanup"),
        "{:?}",
        waiting.metadata.finalizers
    );
    assert_eq!(listed_rules(&firewalls).await.unwrap(), merged);
    eventually(
        WAIT,
        "the profile gone and the others' rules as they wrote them",
        || {
            let (profiles, firewalls, foreign) =
                (profiles.clone(), firewalls.clone(), foreign.clone());
            async move {
                let gone = profiles.get_opt("vendor").await.ok()?.is_none();
                (gone && listed_rules(&firewalls).await? == foreign).then_some(())
            }
        },
    )
    .await;

    // A kind whose CRD was uninstalled has nothing left to clean up: the profile goes.
    cluster
        .apply_yaml(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: gone}\nspec:\n  endpoints:\n    - {name: primary, cidr: 203.0.113.7/32, ports: [{port: 443, protocol: TCP}]}\n  policy: {podSelector: {matchLabels: {app: agent}}, flavors: [AdminNetworkPolicy]}\n",
        )
        .await;
    eventually(WAIT, "the AdminNetworkPolicy applied", || {
        let profiles = profiles.clone();
        async move {
            let profile = profiles.get("gone").await.ok()?;
            (profile.status?.policies.len() == 1).then_some(())
        }
    })
    .await;
    Api::<CustomResourceDefinition>::all(cluster.client.clone())
        .delete(
            "adminnetworkpolicies.policy.networking.k8s.io",
            &Default::default(),
        )
        .await
        .unwrap();
    profiles.delete("gone", &Default::default()).await.unwrap();
    eventually(WAIT, "the profile gone although its CRD is not", || {
        let profiles = profiles.clone();
        async move { profiles.get_opt("gone").await.ok()?.is_none().then_some(()) }
    })
    .await;
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_apply_leaves_the_policy_applied_earlier_in_place() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use netreach::api::ConnectivityProfile;
    let cluster = Cluster::start("apply-failure").await;
    cluster
        .apply_yaml(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: vendor}\nspec:\n  endpoints:\n    - {name: primary, cidr: 203.0.113.7/32, ports: [{port: 443, protocol: TCP}]}\n  policy: {podSelector: {matchLabels: {app: agent}}, flavors: [NetworkPolicy]}\n",
        )
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("apply-failure"));
    let profiles = cluster.api::<ConnectivityProfile>();
    let policies = cluster.api::<NetworkPolicy>();
    eventually(WAIT, "the NetworkPolicy", || {
        let policies = policies.clone();
        async move { policies.get_opt("netreach-vendor").await.ok().flatten() }
    })
    .await;
    let Some(sim) = cluster.sim_or_skip("fault injection") else {
        return;
    };
    sim.faults()
        .fail_next("patch", "networkpolicies", 1000, 500);
    profiles
        .patch(
            "vendor",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"endpoints": [{"name": "primary", "cidr": "203.0.113.8/32", "ports": [{"port": 443, "protocol": "TCP"}]}]}})),
        )
        .await
        .unwrap();
    let (_, message) = eventually(WAIT, "ApplyFailed", || {
        let profiles = profiles.clone();
        async move {
            policy_condition(&profiles.get("vendor").await.ok()?)
                .filter(|(reason, _)| reason == "ApplyFailed")
        }
    })
    .await;
    assert!(
        message.contains("applying NetworkPolicy netreach-vendor failed"),
        "{message}"
    );
    let kept = policies.get_opt("netreach-vendor").await.unwrap();
    assert!(
        kept.is_some(),
        "a failed apply must not delete the policy applied before"
    );
    let status = profiles.get("vendor").await.unwrap().status.unwrap();
    assert_eq!(
        status.policies.len(),
        1,
        "still on record: {:?}",
        status.policies
    );
    operator.abort();
}

/// The upstream CRDs' OpenAPI schemas, checked with an independent JSON Schema validator
/// (draft 4, which OpenAPI 3.0 schemas follow): oneOf, anyOf, not, minProperties and
/// maxProperties included, which structural validation on apply does not all enforce.
struct OpenApiSchemas(BTreeMap<(String, String), jsonschema::Validator>);

impl OpenApiSchemas {
    fn load() -> OpenApiSchemas {
        let mut validators = BTreeMap::new();
        let dir = repo().join("tests/fixtures/upstream-crds");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let crd: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let group = crd["spec"]["group"].as_str().unwrap();
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
            for version in crd["spec"]["versions"].as_array().unwrap() {
                let mut schema = version["schema"]["openAPIV3Schema"].clone();
                ecma_patterns(&mut schema);
                let schema = &schema;
                // Kubernetes matches patterns with Go's RE2, which the regex engine follows.
                let validator = jsonschema::draft4::options()
                    .with_pattern_options(jsonschema::PatternOptions::regex())
                    .build(schema)
                    .unwrap_or_else(|e| panic!("{} does not compile: {e}", path.display()));
                let api_version = format!("{group}/{}", version["name"].as_str().unwrap());
                validators.insert((api_version, kind.to_owned()), validator);
            }
        }
        OpenApiSchemas(validators)
    }

    /// The schema's complaints about `object`; built-in kinds have no CRD (their k8s-openapi
    /// types shape them) and pass.
    fn errors(&self, object: &Value) -> Option<Vec<String>> {
        let key = (
            object["apiVersion"].as_str().unwrap().to_owned(),
            object["kind"].as_str().unwrap().to_owned(),
        );
        let validator = self.0.get(&key)?;
        Some(
            validator
                .iter_errors(object)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect(),
        )
    }
}

/// Kubernetes patterns are RE2, whose one-letter class `\PC` JSON Schema's ECMA syntax
/// writes `\P{C}`: the same class, spelt for the validator.
fn ecma_patterns(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(pattern) if key == "pattern" => {
                        let mut spelt = String::new();
                        let mut chars = pattern.chars().peekable();
                        while let Some(c) = chars.next() {
                            spelt.push(c);
                            if c != '\\' {
                                continue;
                            }
                            let Some(escaped) = chars.next() else { break };
                            spelt.push(escaped);
                            if matches!(escaped, 'p' | 'P')
                                && let Some(class) = chars.next_if(|n| n.is_ascii_alphabetic())
                            {
                                spelt.push_str(&format!("{{{class}}}"));
                            }
                        }
                        *pattern = spelt;
                    }
                    other => ecma_patterns(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(ecma_patterns),
        _ => {}
    }
}

fn openapi_schemas() -> &'static OpenApiSchemas {
    static SCHEMAS: std::sync::OnceLock<OpenApiSchemas> = std::sync::OnceLock::new();
    SCHEMAS.get_or_init(OpenApiSchemas::load)
}

/// Fails when the independent validator refuses `object`.
fn assert_schema_valid(object: &Value, source: &str) {
    let kind = object["kind"].as_str().unwrap_or_default();
    let errors = openapi_schemas().errors(object);
    if object["apiVersion"] != "networking.k8s.io/v1" {
        assert!(
            errors.is_some(),
            "no upstream schema for {} {kind} ({source})",
            object["apiVersion"]
        );
    }
    let errors = errors.unwrap_or_default();
    assert!(
        errors.is_empty(),
        "{kind} ({source}) breaks its upstream schema:\n{}\n{}",
        errors.join("\n"),
        serde_norway::to_string(object).unwrap()
    );
}

#[test]
fn blocked_endpoints_are_denied_first_where_a_flavor_can_deny_and_allowed_nowhere() {
    let (spec, addresses) = rich_profile();
    let input = Input {
        name: "maas360-m3",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    let declared = declared(&spec, &addresses);
    let blocked = blocked(&spec, &addresses);
    assert!(blocked.contains(&("93.184.215.14/32".to_owned(), 443)));
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

#[tokio::test]
async fn a_large_profile_splits_over_cluster_network_policies_the_api_server_accepts() {
    let endpoints: Vec<Value> = (0..40)
        .map(|i| {
            let expect = if i < 3 { "Blocked" } else { "Reachable" };
            let ports: Vec<Value> = (0..30)
                .map(|p| json!({"port": 1000 + p, "protocol": "TCP", "expect": expect}))
                .collect();
            json!({"name": format!("e{i:02}"), "cidr": format!("10.1.{i}.0/24"), "ports": ports})
        })
        .collect();
    let spec = spec(
        json!({"endpoints": endpoints, "policy": {"flavors": ["ClusterNetworkPolicy"], "priority": 100}}),
    );
    let addresses = BTreeMap::new();
    let input = Input {
        name: "big",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
    let output = emit(Flavor::ClusterNetworkPolicy, &input);
    assert!(output.notes.is_empty(), "{:?}", output.notes);
    // 40 endpoints of 30 ports: 80 rules of at most 25 protocols, and DNS: 4 policies.
    let names: Vec<&str> = output
        .objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "netreach-mdm-big",
            "netreach-mdm-big-2",
            "netreach-mdm-big-3",
            "netreach-mdm-big-4"
        ]
    );
    let priorities: Vec<i64> = output
        .objects
        .iter()
        .map(|o| o["spec"]["priority"].as_i64().unwrap())
        .collect();
    assert_eq!(priorities, [100, 101, 102, 103]);
    assert_eq!(output.objects[0]["spec"]["egress"][0]["action"], "Deny");
    assert_eq!(output.objects[0]["spec"]["egress"][0]["name"], "deny-e00");
    assert_eq!(
        widening(
            &output.objects,
            &declared(&spec, &addresses),
            &blocked(&spec, &addresses)
        ),
        None
    );
    let mut schemas = UpstreamSchemas::start().await;
    for object in &output.objects {
        schemas.apply(object, "a profile of 40 endpoints").await;
    }
    // The same rules in one object are what the schema refuses.
    let mut merged = output.objects[0].clone();
    merged["spec"]["egress"] = json!(
        output
            .objects
            .iter()
            .flat_map(|o| o["spec"]["egress"].as_array().unwrap().clone())
            .collect::<Vec<_>>()
    );
    assert!(
        !openapi_schemas().errors(&merged).unwrap().is_empty(),
        "81 rules in one ClusterNetworkPolicy pass the schema"
    );
}

#[test]
fn the_independent_validator_refuses_what_the_upstream_schemas_refuse() {
    let cnp = |protocols: Value| {
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "x"},
            "spec": {"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                "egress": [{"name": "r", "action": "Accept", "to": [{"networks": ["10.0.0.0/8"]}], "protocols": protocols}]}})
    };
    let good = cnp(json!([{"tcp": {"destinationPort": {"number": 443}}}]));
    assert_eq!(openapi_schemas().errors(&good), Some(vec![]));
    // maxProperties 1: a protocol names one of tcp, udp, sctp or destinationNamedPort.
    let both = cnp(
        json!([{"tcp": {"destinationPort": {"number": 443}}, "udp": {"destinationPort": {"number": 53}}}]),
    );
    assert!(!openapi_schemas().errors(&both).unwrap().is_empty());
    let mut wrong_action = good.clone();
    wrong_action["spec"]["egress"][0]["action"] = json!("Allow");
    assert!(!openapi_schemas().errors(&wrong_action).unwrap().is_empty());
}

/// One endpoint of a random profile, as proptest draws it (and shrinks it).
#[derive(Clone, Debug)]
struct EndpointSeed {
    kind: u8,
    v4: u32,
    v6: u128,
    prefix: u8,
    wildcard: bool,
    labels: (usize, usize),
    resolved: Option<Vec<u32>>,
    /// Port, protocol index, Blocked.
    ports: Vec<(u16, usize, bool)>,
}

/// A random profile: endpoints and policy options.
#[derive(Clone, Debug)]
struct ProfileSeed {
    endpoints: Vec<EndpointSeed>,
    selector: u8,
    istio_gateway: bool,
    registry_only: bool,
    calico_enterprise: bool,
    waypoint: bool,
}

fn endpoint_seed() -> impl Strategy<Value = EndpointSeed> {
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
                prop_oneof![Just(443u16), Just(22), 1u16..=65535],
                0usize..6,
                proptest::bool::weighted(0.25),
            ),
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

fn profile_seed() -> impl Strategy<Value = ProfileSeed> {
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
fn pooled(random: u32) -> u32 {
    0x0A00_0000 | (random & 0x0000_0F03)
}

/// The destinations of one endpoint as policies may name them: host, CIDR, resolved addresses.
fn destinations(
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

/// (destination, port) pairs the profile expects Blocked.
fn blocked(
    spec: &ConnectivityProfileSpec,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> BTreeSet<(String, u16)> {
    let mut set = BTreeSet::new();
    for endpoint in &spec.endpoints {
        for port in endpoint.ports.iter().filter(|p| p.blocked()) {
            for destination in destinations(endpoint, addresses) {
                set.insert((destination, port.port as u16));
            }
        }
    }
    set
}

/// The port range of a port item: `port`, up to `endPort` when set.
fn port_range(port: &Value, end: &Value) -> (u16, u16) {
    let first = port_of(port);
    (first, end.as_u64().map_or(first, |e| e as u16))
}

/// Every port (a rule without ports, or with an empty list).
const ALL_PORTS: (u16, u16) = (1, 65535);

/// A destination that matches everything (a rule without peers).
const ANYWHERE: &str = "*";

/// One thing an object grants or denies: a destination (host, CIDR or "dns"), the networks
/// carved out of it, a port range (0..0: no ports, a routing or set entry), and the order in
/// which it is evaluated within its flavor (lower first).
#[derive(Clone, Debug)]
struct Grant {
    destination: String,
    except: Vec<String>,
    ports: (u16, u16),
    deny: bool,
    order: (i64, usize),
}

fn grant(destination: impl Into<String>, ports: (u16, u16), order: (i64, usize)) -> Grant {
    Grant {
        destination: destination.into(),
        except: Vec::new(),
        ports,
        deny: false,
        order,
    }
}

/// The ranges of a list of port items; missing or empty: every port.
fn ranges(ports: &Value, item: impl Fn(&Value) -> (u16, u16)) -> Vec<(u16, u16)> {
    match ports.as_array() {
        Some(list) if !list.is_empty() => list.iter().map(item).collect(),
        _ => vec![ALL_PORTS],
    }
}

/// What an emitted object grants and denies; cluster DNS as the destination "dns".
fn grants(object: &Value) -> Vec<Grant> {
    let mut out = Vec::new();
    let kind = object["kind"].as_str().unwrap();
    let api_version = object["apiVersion"].as_str().unwrap();
    let spec = &object["spec"];
    let rules = |key: &str| spec[key].as_array().cloned().unwrap_or_default();
    let priority = spec["priority"].as_i64().unwrap_or(0);
    match (api_version, kind) {
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            for (i, rule) in rules("egress").iter().enumerate() {
                let ports = ranges(&rule["ports"], |p| port_range(&p["port"], &p["endPort"]));
                let peers = rule["to"].as_array().cloned().unwrap_or_default();
                if peers.is_empty() {
                    out.extend(ports.iter().map(|r| grant(ANYWHERE, *r, (0, i))));
                }
                for peer in peers {
                    let (destination, except) = match peer["ipBlock"]["cidr"].as_str() {
                        Some(cidr) => (
                            cidr.to_owned(),
                            peer["ipBlock"]["except"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|e| e.as_str().unwrap().to_owned())
                                .collect(),
                        ),
                        None => ("dns".to_owned(), Vec::new()),
                    };
                    for range in &ports {
                        out.push(Grant {
                            except: except.clone(),
                            ..grant(destination.clone(), *range, (0, i))
                        });
                    }
                }
            }
        }
        (_, "CiliumNetworkPolicy") => {
            for (deny, key) in [(false, "egress"), (true, "egressDeny")] {
                for (i, rule) in rules(key).iter().enumerate() {
                    // Every toPorts entry counts, and a rule without one allows every port.
                    let ports: Vec<(u16, u16)> = match rule["toPorts"].as_array() {
                        Some(entries) if !entries.is_empty() => entries
                            .iter()
                            .flat_map(|entry| {
                                ranges(&entry["ports"], |p| port_range(&p["port"], &p["endPort"]))
                            })
                            .collect(),
                        _ => vec![ALL_PORTS],
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
                    destinations.extend(
                        rule["toCIDR"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| (c.as_str().unwrap().to_owned(), Vec::new())),
                    );
                    destinations.extend(rule["toCIDRSet"].as_array().into_iter().flatten().map(
                        |c| {
                            let except = c["except"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|e| e.as_str().unwrap().to_owned())
                                .collect();
                            (c["cidr"].as_str().unwrap().to_owned(), except)
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
                                ..grant(destination.clone(), *range, order)
                            });
                        }
                    }
                }
            }
        }
        (_, "CiliumEgressGatewayPolicy") => {
            for cidr in spec["destinationCIDRs"].as_array().unwrap() {
                out.push(grant(cidr.as_str().unwrap(), (0, 0), (0, 0)));
            }
        }
        ("projectcalico.org/v3", "NetworkPolicy") => {
            for (i, rule) in rules("egress").iter().enumerate() {
                let d = &rule["destination"];
                let ports = ranges(&d["ports"], |p| (port_of(p), port_of(p)));
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
                if destinations.is_empty() {
                    destinations.push(ANYWHERE.into());
                }
                for destination in destinations {
                    for range in &ports {
                        out.push(Grant {
                            deny: rule["action"] == "Deny",
                            ..grant(destination.clone(), *range, (0, i))
                        });
                    }
                }
            }
        }
        (_, "GlobalNetworkSet") => {
            for net in spec["nets"].as_array().unwrap() {
                out.push(grant(net.as_str().unwrap(), (0, 0), (0, 0)));
            }
        }
        (_, "ServiceEntry") => {
            let ports: Vec<(u16, u16)> = spec["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (port_of(&p["number"]), port_of(&p["number"])))
                .collect();
            let destinations: Vec<&Value> = match spec["addresses"].as_array() {
                Some(addresses) => addresses.iter().collect(),
                None => spec["hosts"].as_array().unwrap().iter().collect(),
            };
            for destination in destinations {
                for range in &ports {
                    out.push(grant(destination.as_str().unwrap(), *range, (0, 0)));
                }
            }
        }
        (_, "AdminNetworkPolicy" | "ClusterNetworkPolicy") => {
            for (i, rule) in rules("egress").iter().enumerate() {
                let ports = match kind {
                    "AdminNetworkPolicy" => ranges(&rule["ports"], |p| {
                        let n = &p["portNumber"];
                        let range = &p["portRange"];
                        if n.is_object() {
                            (port_of(&n["port"]), port_of(&n["port"]))
                        } else {
                            (port_of(&range["start"]), port_of(&range["end"]))
                        }
                    }),
                    _ => ranges(&rule["protocols"], |p| {
                        let l4 = if p["tcp"].is_object() {
                            &p["tcp"]
                        } else {
                            &p["udp"]
                        };
                        match l4["destinationPort"]["number"].as_u64() {
                            Some(n) => (n as u16, n as u16),
                            None => (
                                port_of(&l4["destinationPort"]["range"]["start"]),
                                port_of(&l4["destinationPort"]["range"]["end"]),
                            ),
                        }
                    }),
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
                    for destination in destinations {
                        for range in &ports {
                            out.push(Grant {
                                deny: rule["action"] == "Deny",
                                ..grant(destination.clone(), *range, (priority, i))
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
                    (port_of(&p["port"]), port_of(&p["port"]))
                });
                // The closing deny-alls are what makes the list an allowlist; the others count.
                for range in ports {
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
                let port = port_of(&server["port"]["number"]);
                for host in server["hosts"].as_array().unwrap() {
                    out.push(grant(host.as_str().unwrap(), (port, port), (0, 0)));
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
                        out.push(grant(host, (port, port), (0, 0)));
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
fn inside(inner: &str, outer: &str) -> bool {
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
fn widening(
    objects: &[Value],
    declared: &BTreeSet<(String, u16)>,
    blocked: &BTreeSet<(String, u16)>,
) -> Option<String> {
    let declared_nets: BTreeSet<&String> = declared.iter().map(|(d, _)| d).collect();
    let all: Vec<Grant> = objects.iter().flat_map(grants).collect();
    for g in all.iter().filter(|g| !g.deny) {
        if g.destination == "dns" {
            if g.ports != (53, 53) {
                return Some(format!("allows DNS on {:?}", g.ports));
            }
            continue;
        }
        // Destinations without ports (gateway routes, network sets) must be declared networks.
        if g.ports == (0, 0) {
            if !declared_nets.contains(&g.destination) {
                return Some(format!("lists {}, undeclared", g.destination));
            }
            continue;
        }
        if let Some(port) =
            (g.ports.0..=g.ports.1).find(|p| !declared.contains(&(g.destination.clone(), *p)))
        {
            return Some(format!(
                "allows {}:{port} (of {:?}), undeclared",
                g.destination, g.ports
            ));
        }
    }
    // Nothing lets a Blocked endpoint through: no allow matches it unless a deny that is
    // evaluated earlier (or an except) takes it out.
    for (destination, port) in blocked {
        let covers = |g: &Grant| {
            (g.ports.0..=g.ports.1).contains(port)
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
                    "allows {destination}:{port}, expected Blocked (through {} {:?})",
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
    let declared = BTreeSet::from([("10.0.0.0/24".to_owned(), 443)]);
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
    let blocked = BTreeSet::from([("10.0.0.7/32".to_owned(), 443)]);
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
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_profiles_and_a_foreign_writer_lose_no_egress_firewall_rule() {
    use netreach::api::ConnectivityProfile;
    let cluster = Cluster::start("egress-firewall-cas").await;
    install_upstream_crd(&cluster, "egressfirewall.yaml").await;
    let foreign = vec![
        deny("203.0.113.0/24"),
        allow_tcp(json!({"dnsName": "registry.example.org"}), 443),
        deny("0.0.0.0/0"),
    ];
    let mut theirs = firewall_with(foreign.clone());
    theirs["metadata"]["namespace"] = json!(cluster.namespace);
    cluster
        .apply_yaml(&serde_norway::to_string(&theirs).unwrap())
        .await;
    let Some(sim) = cluster.sim_or_skip("holding a request") else {
        return;
    };
    // The first write of NetReach's merge waits, after its read, until the test releases it.
    let held = sim.faults().hold_next("patch", "egressfirewalls");
    for (profile, cidr, port) in [
        ("alpha", "198.51.100.0/24", 8443),
        ("beta", "192.0.2.0/25", 443),
    ] {
        cluster
            .apply_yaml(&format!(
                "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: {profile}}}\nspec:\n  endpoints:\n    - {{name: vendor, cidr: {cidr}, ports: [{{port: {port}, protocol: TCP}}]}}\n  policy: {{flavors: [EgressFirewall]}}\n"
            ))
            .await;
    }
    let (_ctx, operator) = cluster.operator(cluster.settings("egress-firewall-cas"));
    tokio::time::timeout(WAIT, held.arrived())
        .await
        .expect("a profile writes the EgressFirewall");
    // Someone else adds a Deny between NetReach's read and its write.
    let firewalls = egress_firewalls(&cluster);
    let mut current = serde_json::to_value(firewalls.get("default").await.unwrap()).unwrap();
    let late_deny = deny("192.0.2.128/25");
    let mut rules = egress(&current);
    rules.insert(0, late_deny.clone());
    current["spec"]["egress"] = json!(rules);
    firewalls
        .replace(
            "default",
            &PostParams::default(),
            &serde_json::from_value(current).unwrap(),
        )
        .await
        .unwrap();
    held.release();

    let alpha = allow_tcp(json!({"cidrSelector": "198.51.100.0/24"}), 8443);
    let beta = allow_tcp(json!({"cidrSelector": "192.0.2.0/25"}), 443);
    let merged = eventually(WAIT, "both profiles' rules and every foreign one", || {
        let (firewalls, alpha, beta) = (firewalls.clone(), alpha.clone(), beta.clone());
        async move {
            let rules = listed_rules(&firewalls).await?;
            (rules.contains(&alpha) && rules.contains(&beta)).then_some(rules)
        }
    })
    .await;
    // Theirs first in their order (the late Deny included), then NetReach's, then the
    // deny-alls: first match wins, so no Allow of ours overrides a Deny of theirs.
    assert_eq!(
        merged[..3],
        [late_deny, foreign[0].clone(), foreign[1].clone()],
        "{merged:#?}"
    );
    let ours = &merged[3..5];
    assert!(ours.contains(&alpha) && ours.contains(&beta), "{merged:#?}");
    assert_eq!(
        merged[5..],
        [deny("0.0.0.0/0"), deny("::/0")],
        "{merged:#?}"
    );
    let profiles = cluster.api::<ConnectivityProfile>();
    for name in ["alpha", "beta"] {
        let (reason, message) = eventually(WAIT, "PolicyApplied", || {
            let profiles = profiles.clone();
            async move { policy_condition(&profiles.get(name).await.ok()?) }
        })
        .await;
        assert_eq!(reason, "Applied", "{name}: {message}");
    }
    operator.abort();
}

#[test]
fn an_endpoint_inside_a_blocked_range_is_blocked_by_every_flavor() {
    let spec = spec(json!({"endpoints": [
        {"name": "vendor", "cidr": "10.0.0.7/32", "ports": [{"port": 443, "protocol": "TCP"}, {"port": 8443, "protocol": "TCP"}]},
        {"name": "subnet", "cidr": "10.0.0.0/24", "ports": [{"port": 443, "protocol": "TCP", "expect": "Blocked"}]},
    ], "policy": {"flavors": []}}));
    let addresses = BTreeMap::new();
    let input = Input {
        name: "p",
        namespace: "mdm",
        spec: &spec,
        addresses: &addresses,
    };
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

/// Tiny deterministic PRNG for the FTP and IKE property test.
struct TransportRng(u64);

impl TransportRng {
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

fn random_ftp_ike_profile(
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
fn declared_with_transport(
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
