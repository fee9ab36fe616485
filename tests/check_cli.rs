//! `netreach check` and `netreach probe` as users and probe pods run them, against the
//! loopback peers: JSON and JUnit output, exit codes, flags, the pod result framing, and
//! proof of enforcement (Blocked ports, source addresses seen by an echo service).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use netreach::api::result::{Outcome, Reason, Stage};
use netreach::probe::report::Report;
use support::Peers;

fn netreach() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netreach"))
}

/// A profile of loopback endpoints: two that pass, one refused (required or optional).
fn write_profile(dir: &Path, refused_required: bool) -> std::path::PathBuf {
    let peers = Peers::get();
    let yaml = format!(
        r#"apiVersion: netreach.dev/v1alpha1
kind: ConnectivityProfile
metadata: {{name: local, namespace: test}}
spec:
  defaults: {{timeout: 3s, tls: {{expectedIssuer: {{organization: Test Public CA}}}}}}
  endpoints:
    - name: mpnsv2
      host: mpnsv2.m3.maas360.com
      ports: [{{port: {https}, protocol: HTTPS}}]
    - name: mail
      host: mail.example.com
      ports: [{{port: {smtp}, protocol: SMTP, tls: {{mode: StartTLS}}, smtp: {{expectedAuth: [LOGIN, CRAM-MD5]}}}}]
    - name: closed
      cidr: 127.0.0.1
      required: {refused_required}
      ports: [{{port: 1, protocol: TCP}}]
"#,
        https = peers.port("PEER_HTTPS_PORT"),
        smtp = peers.port("PEER_SMTP_PORT"),
    );
    let path = dir.join("profile.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn check(args: &[&str], file: &Path) -> (i32, String, String) {
    let peers = Peers::get();
    let out = netreach()
        .arg("check")
        .arg(file)
        .args(["--nameserver", &peers.dns(), "--ca-file"])
        .arg(peers.public_ca())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn json_output_lands_each_case_on_its_stage_and_reason_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_profile(dir.path(), true);
    let (code, stdout, stderr) = check(&["-o", "json"], &file);
    assert_eq!(code, 1, "a required endpoint fails: {stderr}");
    let report: Report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report.groups.len(), 1);
    assert_eq!(report.groups[0].source, "ConnectivityProfile test/local");
    let rows = &report.groups[0].results;
    let summary: Vec<(&str, Outcome, Stage, Reason)> = rows
        .iter()
        .map(|r| (r.endpoint.as_str(), r.outcome, r.stage, r.reason))
        .collect();
    assert_eq!(
        summary,
        [
            ("mpnsv2", Outcome::Pass, Stage::Protocol, Reason::Reachable),
            ("mail", Outcome::Pass, Stage::Auth, Reason::Reachable),
            (
                "closed",
                Outcome::Fail,
                Stage::Connect,
                Reason::ConnectionRefused
            ),
        ]
    );
    assert_eq!(report.summary.total, 3);
    assert_eq!(report.required_failed, 1);
    // The raw JSON uses the documented field names and CamelCase reasons.
    let raw: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let first = &raw["groups"][0]["results"][0];
    assert_eq!(first["endpoint"], "mpnsv2");
    assert_eq!(first["outcome"], "Pass");
    assert_eq!(first["stage"], "Protocol");
    assert_eq!(first["reason"], "Reachable");
    assert_eq!(first["tls"]["issuerOrganization"], "Test Public CA");
    assert_eq!(
        raw["groups"][0]["results"][2]["reason"],
        "ConnectionRefused"
    );
}

#[test]
fn optional_failures_exit_0_and_only_narrows_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_profile(dir.path(), false);
    let (code, stdout, _) = check(&[], &file);
    assert_eq!(code, 0, "only an optional endpoint fails:\n{stdout}");
    assert!(stdout.contains("Fail (optional)"), "{stdout}");
    assert!(
        stdout.contains("3 rows: 2 pass, 0 warn, 1 fail (0 required)"),
        "{stdout}"
    );

    let (code, stdout, _) = check(&["--only", "mpnsv2", "-o", "json"], &file);
    assert_eq!(code, 0);
    let report: Report = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report.summary.total, 1);

    let (code, _, stderr) = check(&["--only", "nope"], &file);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--only nope: no endpoint of that name"),
        "{stderr}"
    );
}

#[test]
fn junit_output_has_a_testcase_per_row_and_a_failure_for_the_refused_port() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_profile(dir.path(), true);
    let (code, stdout, _) = check(&["-o", "junit"], &file);
    assert_eq!(code, 1);
    assert!(stdout.starts_with("<?xml"));
    assert_eq!(stdout.matches("<testcase ").count(), 3, "{stdout}");
    assert_eq!(stdout.matches("<failure ").count(), 1, "{stdout}");
    assert!(stdout.contains("message=\"ConnectionRefused\""), "{stdout}");
}

#[test]
fn bad_flags_are_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_profile(dir.path(), true);
    for (args, expected) in [
        (vec!["--proxy", "https://proxy:1"], "--proxy: proxy URL"),
        (
            vec!["--nameserver", "dns.example.com"],
            "--nameserver: invalid nameserver",
        ),
        (vec!["--timeout", "soon"], "--timeout: invalid duration"),
    ] {
        let (code, _, stderr) = check(&args, &file);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let missing_ca = netreach()
        .arg("check")
        .arg(&file)
        .args(["--ca-file", "/nonexistent.pem"])
        .output()
        .unwrap();
    assert_eq!(missing_ca.status.code(), Some(2));
}

#[test]
fn a_check_naming_a_profile_not_in_the_input_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("check.yaml");
    std::fs::write(
        &file,
        "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {name: c, namespace: mdm}\nspec: {profileRef: {name: maas360-m3}}\n",
    )
    .unwrap();
    let out = netreach().arg("check").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("EgressCheck mdm/c refers to ConnectivityProfile mdm/maas360-m3"),
        "{stderr}"
    );
}

#[test]
fn probe_prints_framed_results_that_match_its_termination_message() {
    let peers = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let spec = serde_json::json!({
        "targets": [
            {
                "endpoint": "web", "host": "127.0.0.1", "port": peers.port("PEER_HTTP_PORT"), "protocol": "HTTP",
                "required": true, "timeoutMs": 3000,
                "tls": {"mode": "Disabled", "onMismatch": "Fail", "minDaysValid": 14}
            },
            {
                "endpoint": "closed", "cidr": "127.0.0.1", "port": 1, "protocol": "TCP",
                "required": true, "timeoutMs": 3000,
                "tls": {"mode": "Disabled", "onMismatch": "Fail", "minDaysValid": 14}
            }
        ]
    });
    let termination = dir.path().join("termination-log");
    let mut child = netreach()
        .args(["probe", "--spec", "-", "--termination-log"])
        .arg(&termination)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "probe itself succeeds even when endpoints fail"
    );
    let log = String::from_utf8(out.stdout).unwrap();
    let digest = std::fs::read_to_string(&termination).unwrap();
    let rows = netreach::probe::spec::decode(&log, &digest).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].outcome, rows[0].reason),
        (Outcome::Pass, Reason::Reachable)
    );
    assert_eq!(
        (rows[1].outcome, rows[1].reason),
        (Outcome::Fail, Reason::ConnectionRefused)
    );
}

/// A profile expecting the public test issuer on the HTTPS peer.
fn write_issuer_profile(dir: &Path, tls: &str) -> std::path::PathBuf {
    let peers = Peers::get();
    let yaml = format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: vendor, namespace: test}}\nspec:\n  defaults: {{timeout: 3s}}\n  endpoints:\n    - name: mpnsv2\n      host: mpnsv2.m3.maas360.com\n      tls: {tls}\n      ports: [{{port: {}, protocol: HTTPS}}]\n",
        peers.port("PEER_HTTPS_PORT")
    );
    let path = dir.join("vendor.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn only_row(stdout: &str) -> netreach::api::result::ProbeResult {
    let report: Report = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report.summary.total, 1, "{stdout}");
    report.groups[0].results[0].clone()
}

#[test]
fn check_passes_through_squid_and_reports_interception_through_mitmproxy() {
    let peers = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let file = write_issuer_profile(
        dir.path(),
        "{expectedIssuer: {organization: Test Public CA}}",
    );
    let squid = format!("http://127.0.0.1:{}", peers.port("PEER_SQUID_PORT"));
    let (code, stdout, stderr) = check(&["-o", "json", "--proxy", &squid], &file);
    assert_eq!(code, 0, "through squid: {stdout}{stderr}");
    let row = only_row(&stdout);
    assert_eq!(
        (row.outcome, row.stage, row.reason),
        (Outcome::Pass, Stage::Protocol, Reason::Reachable),
        "{}",
        row.message
    );
    assert!(
        row.message.contains(&format!(
            "through proxy 127.0.0.1:{}",
            peers.port("PEER_SQUID_PORT")
        )),
        "{}",
        row.message
    );

    let mitm = format!("http://127.0.0.1:{}", peers.port("PEER_MITM_PORT"));
    let (code, stdout, stderr) = check(&["-o", "json", "--proxy", &mitm], &file);
    assert_eq!(code, 1, "through mitmproxy: {stdout}{stderr}");
    let row = only_row(&stdout);
    assert_eq!(
        (row.outcome, row.stage, row.reason),
        (Outcome::Fail, Stage::Issuer, Reason::IssuerMismatch),
        "{}",
        row.message
    );
    assert!(row.intercepted);
    for part in [
        "CN=Web Proxy, O=Example Corp., OU=IT",
        "instead of O=Test Public CA",
        "exclude mpnsv2.m3.maas360.com from SSL decryption",
    ] {
        assert!(row.message.contains(part), "{part:?} in {}", row.message);
    }
}

#[test]
fn an_unusable_system_root_store_is_invalid_input_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_issuer_profile(dir.path(), "{}");
    // rustls-native-certs reads only these when they are set: an empty store.
    let empty = dir.path().join("no-certs.pem");
    std::fs::write(&empty, "").unwrap();
    let out = netreach()
        .arg("check")
        .arg(&file)
        .arg("--system-roots")
        .env("SSL_CERT_FILE", &empty)
        .env("SSL_CERT_DIR", dir.path().join("no-such-dir"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("cannot verify certificates with the system root store (0 certificates")
            && stderr.contains("drop --system-roots"),
        "{stderr}"
    );
}

#[test]
fn check_reads_a_ca_bundle_ref_from_the_secrets_dir_and_says_when_it_cannot() {
    let peers = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let file = write_issuer_profile(dir.path(), "{caBundleRef: {configMap: corp-ca}}");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("corp-ca")).unwrap();
    std::fs::copy(peers.public_ca(), secrets.join("corp-ca").join("ca.crt")).unwrap();
    // No --ca-file: the peers' CA is trusted only through the bundle.
    let run = |extra: &[&std::ffi::OsStr]| {
        let out = netreach()
            .arg("check")
            .arg(&file)
            .args(["--nameserver", &peers.dns(), "-o", "json"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, stdout, stderr) = run(&["--secrets-dir".as_ref(), secrets.as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let row = only_row(&stdout);
    assert_eq!(row.reason, Reason::Reachable, "{}", row.message);
    assert!(row.tls.as_ref().unwrap().trusted);

    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let row = only_row(&stdout);
    assert_eq!(
        (row.stage, row.reason),
        (Stage::Tls, Reason::CaBundleUnavailable),
        "{}",
        row.message
    );
    assert!(
        row.message
            .contains("create ConfigMap corp-ca with key ca.crt"),
        "{}",
        row.message
    );
    assert!(
        stderr.contains("pass --secrets-dir DIR holding DIR/<name>/<key>"),
        "{stderr}"
    );
}

/// A loopback server on an ephemeral port answering every connection with `answer(peer)`
/// after the request head; it lives as long as the test process.
fn serve(answer: fn(std::net::SocketAddr, &str) -> String) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let peer = stream.peer_addr().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                while reader.read_line(&mut head).is_ok_and(|n| n > 0)
                    && !head.ends_with("\r\n\r\n")
                {}
                let _ = (&stream).write_all(answer(peer, &head).as_bytes());
            });
        }
    });
    port
}

/// An echo service: the caller's address as text on `/`, as JSON on `/json`.
fn echo(peer: std::net::SocketAddr, head: &str) -> String {
    let body = if head.starts_with("GET /json ") {
        format!("{{\"ip\": \"{}\"}}\n", peer.ip())
    } else {
        format!("{}\n", peer.ip())
    };
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn blocked_ports_pass_when_refused_and_fail_when_reachable_and_source_ips_are_compared() {
    let echo_port = serve(echo);
    let refusing_proxy = serve(|_, _| "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".into());
    // A port nothing listens on: bound once for a free number, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proof.yaml");
    std::fs::write(
        &file,
        format!(
            r#"apiVersion: netreach.dev/v1alpha1
kind: ConnectivityProfile
metadata: {{name: proof, namespace: mdm}}
spec:
  defaults: {{timeout: 3s}}
  endpoints:
    - {{name: closed, cidr: 127.0.0.1, ports: [{{port: {closed}, protocol: HTTPS, expect: Blocked}}]}}
    - {{name: open, cidr: 127.0.0.1, ports: [{{port: {echo_port}, protocol: TCP, expect: Blocked}}]}}
    - {{name: nowhere, host: nothing.invalid, ports: [{{port: 443, protocol: TCP, expect: Blocked, blockedBy: [DNS]}}]}}
    - {{name: egress-ok, cidr: 127.0.0.1, ports: [{{port: {echo_port}, protocol: HTTP, http: {{sourceIP: {{expected: [127.0.0.1/32]}}}}}}]}}
    - {{name: egress-json, cidr: 127.0.0.1, ports: [{{port: {echo_port}, protocol: HTTP, http: {{path: /json, sourceIP: {{expected: [10.0.0.0/8, 127.0.0.0/8]}}}}}}]}}
    - {{name: egress-wrong, cidr: 127.0.0.1, ports: [{{port: {echo_port}, protocol: HTTP, http: {{sourceIP: {{}}}}}}]}}
  policy:
    flavors: [NetworkPolicy, EgressFirewall, CiliumEgressGateway]
    egressGateway: {{nodeSelector: {{egress: "true"}}, egressIP: 192.0.2.10}}
---
apiVersion: netreach.dev/v1alpha1
kind: ConnectivityProfile
metadata: {{name: proxied, namespace: mdm}}
spec:
  defaults: {{timeout: 3s}}
  proxy: {{url: "http://127.0.0.1:{refusing_proxy}"}}
  endpoints:
    - {{name: denied, host: example.org, ports: [{{port: 443, protocol: HTTPS, expect: Blocked}}]}}
"#
        ),
    )
    .unwrap();
    // The peers' DNS answers NXDOMAIN for every name it does not know.
    let nameserver = Peers::get().dns();
    let out = netreach()
        .args(["check", "-o", "json", "--nameserver", &nameserver])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: Report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    let rows: Vec<&netreach::api::result::ProbeResult> =
        report.groups.iter().flat_map(|g| &g.results).collect();
    let row = |name: &str| *rows.iter().find(|r| r.endpoint == name).unwrap();
    let verdict = |name: &str| {
        let r = row(name);
        (r.outcome, r.stage, r.reason, r.blocked_by)
    };
    assert_eq!(
        verdict("closed"),
        (
            Outcome::Pass,
            Stage::Connect,
            Reason::Blocked,
            Some(Reason::ConnectionRefused)
        )
    );
    assert!(
        row("closed")
            .message
            .contains("is blocked, as expected (ConnectionRefused)"),
        "{}",
        row("closed").message
    );
    assert_eq!(
        verdict("open"),
        (
            Outcome::Fail,
            Stage::Connect,
            Reason::UnexpectedlyReachable,
            None
        )
    );
    let leak = &row("open").message;
    assert!(
        leak.contains(&format!("127.0.0.1:{echo_port} accepted a connection"))
            && leak
                .contains("NetworkPolicy netreach-proof, EgressFirewall default should block it"),
        "the message names the profile's policies: {leak}"
    );
    assert_eq!(
        verdict("nowhere"),
        (
            Outcome::Pass,
            Stage::Dns,
            Reason::Blocked,
            Some(Reason::NxDomain)
        )
    );
    assert_eq!(
        verdict("denied"),
        (
            Outcome::Pass,
            Stage::Proxy,
            Reason::Blocked,
            Some(Reason::ProxyRejected)
        )
    );
    for name in ["egress-ok", "egress-json"] {
        let r = row(name);
        assert_eq!(
            (r.outcome, r.reason),
            (Outcome::Pass, Reason::Reachable),
            "{name}: {}",
            r.message
        );
        assert_eq!(r.source_ip.as_deref(), Some("127.0.0.1"), "{name}");
    }
    // `sourceIP: {}` expects the egress gateway's address, and the message names both.
    let wrong = row("egress-wrong");
    assert_eq!(
        (wrong.outcome, wrong.stage, wrong.reason),
        (Outcome::Fail, Stage::Protocol, Reason::SourceIpMismatch)
    );
    assert!(
        wrong.message.contains("leaves as 127.0.0.1, expected 192.0.2.10/32 (the egress gateway): is the CiliumEgressGatewayPolicy selecting this pod"),
        "{}",
        wrong.message
    );
    assert_eq!(wrong.source_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "the leak and the mismatch fail the check"
    );
    // The table shows how a port was blocked and the address the echo saw.
    let table = netreach()
        .args(["check", "--nameserver", &nameserver])
        .arg(&file)
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("Blocked (ConnectionRefused)"), "{table}");
    assert!(table.contains("Reachable (from 127.0.0.1)"), "{table}");
    assert!(
        table.contains("SourceIPMismatch (from 127.0.0.1)"),
        "{table}"
    );
}
