//! `netreach render` and the golden files: byte-identical output, flavor names, allowlists.

use super::*;

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
        let input = profile_input(
            &name,
            profile.metadata.namespace.as_deref().unwrap(),
            &profile.spec,
            &addresses,
        );
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

pub(crate) fn render(args: &[&str], file: &Path) -> (bool, String, String) {
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
    let input = profile_input("p", "mdm", &spec, &addresses);
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
    let input = profile_input("maas360-m3", "mdm", &spec, &addresses);
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
