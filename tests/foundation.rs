//! The foundation's contract: generated CRDs match `crds/`, every example loads, and each
//! kind of bad input is refused with exit code 2 and a message naming the field.

use std::path::{Path, PathBuf};
use std::process::Command;

fn netreach() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netreach"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crds_directory_matches_what_the_types_generate() {
    let dir = tempfile::tempdir().unwrap();
    let status = netreach()
        .arg("crds")
        .arg("--output-dir")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let committed = repo().join("crds");
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "connectivityprofiles.netreach.dev.yaml",
            "egresschecks.netreach.dev.yaml"
        ]
    );
    for name in names {
        let generated = std::fs::read(dir.path().join(&name)).unwrap();
        let stored = std::fs::read(committed.join(&name)).unwrap_or_default();
        assert!(
            generated == stored,
            "crds/{} drifted from the API types; regenerate with `cargo run -- crds --output-dir crds`",
            name.to_string_lossy()
        );
    }
}

#[test]
fn crds_without_output_dir_prints_both_documents() {
    let out = netreach().arg("crds").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 2);
    assert!(text.contains("name: connectivityprofiles.netreach.dev"));
    assert!(text.contains("name: egresschecks.netreach.dev"));
}

#[test]
fn every_shipped_example_loads() {
    let loaded = netreach::api::load::load_paths(&[repo().join("examples")])
        .unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<String> = loaded
        .iter()
        .map(|l| format!("{} {}", l.document.kind(), l.document.name()))
        .collect();
    for expected in [
        "ConnectivityProfile maas360-m3",
        "EgressCheck cloud-extender",
        "ConnectivityProfile itsm-cloud",
        "EgressCheck itsm-integration",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} missing from {kinds:?}"
        );
    }
}

fn profile_with(endpoints: &str) -> String {
    format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: p, namespace: ns}}\nspec:\n  endpoints:\n{endpoints}"
    )
}

/// Runs `netreach check` on `yaml` and returns (exit code, stderr).
fn check_yaml(dir: &Path, yaml: &str) -> (i32, String) {
    let file = dir.join("input.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = netreach().arg("check").arg(&file).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_schema_rule_refuses_bad_input_with_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no endpoints",
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: p}\nspec:\n  endpoints: []\n".into(),
            "spec.endpoints: Invalid value: 0",
        ),
        (
            "host and cidr",
            profile_with("    - {name: a, host: a.example.com, cidr: 10.0.0.1/32, ports: [{port: 443, protocol: TCP}]}\n"),
            "spec.endpoints[0]: Invalid value: exactly one of host or cidr",
        ),
        (
            "neither host nor cidr",
            profile_with("    - {name: a, ports: [{port: 443, protocol: TCP}]}\n"),
            "spec.endpoints[0]: Invalid value: exactly one of host or cidr",
        ),
        (
            "invalid host",
            profile_with("    - {name: a, host: bad_host.example.com, ports: [{port: 443, protocol: TCP}]}\n"),
            "spec.endpoints[0].host: Invalid value: \"bad_host.example.com\"",
        ),
        (
            "wildcard in the middle",
            profile_with("    - {name: a, host: api.*.example.com, ports: [{port: 443, protocol: TCP}]}\n"),
            "spec.endpoints[0].host: Invalid value",
        ),
        (
            "invalid cidr",
            profile_with("    - {name: a, cidr: 10.0.0.300/32, ports: [{port: 443, protocol: TCP}]}\n"),
            "spec.endpoints[0].cidr: Invalid value",
        ),
        (
            "cidr with host bits",
            profile_with("    - {name: a, cidr: 10.0.0.5/24, ports: [{port: 443, protocol: TCP}]}\n"),
            "spec.endpoints[0].cidr: Invalid value: must be an IP address or a canonical CIDR",
        ),
        (
            "port 0",
            profile_with("    - {name: a, host: a.example.com, ports: [{port: 0, protocol: TCP}]}\n"),
            "spec.endpoints[0].ports[0].port: Invalid value: 0",
        ),
        (
            "port 70000",
            profile_with("    - {name: a, host: a.example.com, ports: [{port: 70000, protocol: TCP}]}\n"),
            "spec.endpoints[0].ports[0].port: Invalid value: 70000",
        ),
        (
            "unknown protocol",
            profile_with("    - {name: a, host: a.example.com, ports: [{port: 70, protocol: GOPHER}]}\n"),
            "spec.endpoints[0].ports[0].protocol: Unsupported value: \"GOPHER\"",
        ),
        (
            "ftp settings on a port that is not FTP",
            profile_with("    - {name: a, host: a.example.com, ports: [{port: 443, protocol: HTTPS, ftp: {path: /}}]}\n"),
            "spec.endpoints[0].ports[0]: Invalid value: ftp settings apply only to FTP and FTPS ports",
        ),
        (
            "a passive range that ends before it starts",
            profile_with("    - {name: a, host: a.example.com, ports: [{port: 21, protocol: FTP, ftp: {passivePorts: {from: 50100, to: 50000}}}]}\n"),
            "spec.endpoints[0].ports[0].ftp.passivePorts: Invalid value: from must not be greater than to",
        ),
        (
            "ike version 3",
            profile_with("    - {name: a, cidr: 18.233.3.236, ports: [{port: 500, protocol: IKE, ike: {version: 3}}]}\n"),
            "spec.endpoints[0].ports[0].ike.version: Invalid value: 3",
        ),
        (
            "IKE through a proxy",
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: p}\nspec:\n  proxy: {url: http://proxy.corp:3128}\n  endpoints: [{name: vpn, cidr: 18.233.3.236, ports: [{port: 500, protocol: IKE}]}]\n".into(),
            "spec: Invalid value: IKE runs over UDP and cannot go through an HTTP CONNECT proxy",
        ),
        (
            "duplicate endpoint names",
            profile_with(
                "    - {name: a, host: a.example.com, ports: [{port: 443, protocol: TCP}]}\n    - {name: a, host: b.example.com, ports: [{port: 443, protocol: TCP}]}\n",
            ),
            "spec.endpoints[1]: Duplicate value",
        ),
        (
            "bad duration",
            profile_with("    - {name: a, host: a.example.com, timeout: 5 minutes, ports: [{port: 443, protocol: TCP}]}\n"),
            "spec.endpoints[0].timeout: Invalid value: \"5 minutes\"",
        ),
        (
            "unknown field",
            profile_with("    - {name: a, host: a.example.com, prots: [], ports: [{port: 443, protocol: TCP}]}\n"),
            "spec.endpoints[0].prots: unknown field",
        ),
        (
            "tls mode that does not fit the protocol",
            profile_with("    - {name: a, host: a.example.com, ports: [{port: 80, protocol: HTTP, tls: {mode: StartTLS}}]}\n"),
            "spec.endpoints[0].ports[0]: Invalid value: tls.mode does not fit the protocol",
        ),
        (
            "check with profileRef and endpoints",
            "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {name: c}\nspec:\n  profileRef: {name: p}\n  endpoints: [{name: a, host: a.example.com, ports: [{port: 1, protocol: TCP}]}]\n".into(),
            "spec: Invalid value: set exactly one of profileRef or endpoints",
        ),
        (
            "check with bad interval",
            "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {name: c}\nspec:\n  profileRef: {name: p}\n  interval: 10\n".into(),
            "spec.interval: Invalid value",
        ),
        (
            "missing name",
            "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {}\nspec:\n  profileRef: {name: p}\n".into(),
            "metadata.name: Required value",
        ),
        (
            "unknown kind",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n".into(),
            "kind: unknown kind \"ConfigMap\"",
        ),
        (
            "wrong apiVersion",
            "apiVersion: netreach.dev/v1\nkind: EgressCheck\nmetadata: {name: c}\nspec: {profileRef: {name: p}}\n".into(),
            "apiVersion: Unsupported value: \"netreach.dev/v1\"",
        ),
        (
            "malformed YAML",
            "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {name: c\nspec: [\n".into(),
            "malformed YAML at line",
        ),
    ];
    for (what, yaml, expected) in cases {
        let (code, stderr) = check_yaml(dir.path(), &yaml);
        assert_eq!(
            code, 2,
            "{what}: expected exit 2, got {code}; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{what}: expected {expected:?} in:\n{stderr}"
        );
        assert!(
            stderr.contains("input.yaml: document 1"),
            "{what}: file and document not named:\n{stderr}"
        );
    }
}

#[test]
fn errors_name_the_document_they_are_in() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}---\n{}",
        profile_with("    - {name: a, host: a.example.com, ports: [{port: 443, protocol: TCP}]}\n"),
        profile_with(
            "    - {name: a, host: a.example.com, ports: [{port: 99999, protocol: TCP}]}\n"
        )
    );
    let (code, stderr) = check_yaml(dir.path(), &yaml);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(
            "input.yaml: document 2 (ConnectivityProfile ns/p): spec.endpoints[0].ports[0].port"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("document 1"), "{stderr}");
}

#[test]
fn a_missing_file_is_invalid_input() {
    let out = netreach()
        .args(["check", "/nonexistent/profile.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/profile.yaml: cannot read")
    );
}
