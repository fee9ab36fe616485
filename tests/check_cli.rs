//! `netreach check` and `netreach probe` as users and probe pods run them, against the
//! loopback peers: JSON and JUnit output, exit codes, flags, and the pod result framing.

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
            .contains("needs key ca.crt of ConfigMap corp-ca")
            && row
                .message
                .contains("create the ConfigMap or Secret that tls.caBundleRef names"),
        "{}",
        row.message
    );
    assert!(
        stderr.contains("pass --secrets-dir DIR holding DIR/<name>/<key>"),
        "{stderr}"
    );
}

/// The ITSM example with its placeholders pointed at the peers: every endpoint becomes
/// 127.0.0.1 (certificate name localhost), every port the peer's, the base DN the peers'
/// subtree; the vendor's raw addresses are left out (no network here). `tweak` edits the
/// endpoints further.
fn itsm_example(dir: &Path, tweak: impl Fn(&mut serde_json::Value)) -> std::path::PathBuf {
    let peers = Peers::get();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("examples/ivanti/profile.yaml")).unwrap();
    let mut profile: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let ports = [
        (389, "PEER_LDAP_PORT"),
        (636, "PEER_LDAPS_PORT"),
        (587, "PEER_SUBMISSION_PORT"),
        (143, "PEER_IMAP_PORT"),
        (993, "PEER_IMAPS_PORT"),
        (110, "PEER_POP3_PORT"),
        (995, "PEER_POP3S_PORT"),
    ];
    let endpoints = profile["spec"]["endpoints"].as_array_mut().unwrap();
    // The logins (bulk transfer over FTPS has a test of its own in probe_peers).
    endpoints.retain(|e| {
        e["host"].is_string()
            && e["ports"].as_array().is_some_and(|ports| {
                ports
                    .iter()
                    .all(|p| !["FTP", "FTPS"].contains(&p["protocol"].as_str().unwrap_or_default()))
            })
    });
    for endpoint in endpoints.iter_mut() {
        let object = endpoint.as_object_mut().unwrap();
        object.remove("host");
        object.insert("cidr".into(), "127.0.0.1".into());
        object.insert("tls".into(), serde_json::json!({"serverName": "localhost"}));
        for port in object["ports"].as_array_mut().unwrap() {
            let number = port["port"].as_i64().unwrap();
            let (_, key) = ports
                .iter()
                .find(|(p, _)| i64::from(*p) == number)
                .unwrap_or_else(|| panic!("port {number} of the example has no peer"));
            port["port"] = peers.port(key).into();
            if port["ldap"].is_object() {
                port["ldap"]["baseDN"] = peers.var("PEER_LDAP_SUBTREE").into();
            }
        }
    }
    assert_eq!(endpoints.len(), 3, "directory, mail-gateway, mailbox");
    tweak(&mut profile["spec"]["endpoints"]);
    let path = dir.join("itsm.yaml");
    std::fs::write(&path, serde_norway::to_string(&profile).unwrap()).unwrap();
    path
}

/// Secrets as the probe pod mounts them, with `password` for the mail accounts and
/// `ldap_password` for the directory's.
fn itsm_secrets(dir: &Path, password: &str, ldap_password: &str) -> std::path::PathBuf {
    let peers = Peers::get();
    let secrets = dir.join("mounted");
    for (secret, entries) in [
        (
            "itsm-ldap-reader",
            [
                ("bindDN", peers.var("PEER_LDAP_BIND_DN")),
                ("password", ldap_password),
            ],
        ),
        (
            "itsm-smtp",
            [
                ("username", peers.var("PEER_MAIL_USER")),
                ("password", password),
            ],
        ),
        (
            "itsm-mailbox",
            [
                ("username", peers.var("PEER_MAIL_USER")),
                ("password", password),
            ],
        ),
    ] {
        std::fs::create_dir_all(secrets.join(secret)).unwrap();
        for (key, value) in entries {
            std::fs::write(secrets.join(secret).join(key), value).unwrap();
        }
    }
    secrets
}

/// Runs the example in every output format with tracing at its most verbose; returns the
/// JSON report and everything printed.
fn run_itsm(file: &Path, secrets: &Path) -> (i32, Report, String) {
    let mut everything = String::new();
    let mut json = None;
    let mut exit = None;
    for format in ["json", "table", "junit"] {
        let out = netreach()
            .arg("check")
            .arg(file)
            .args(["--ca-file"])
            .arg(Peers::get().public_ca())
            .arg("--secrets-dir")
            .arg(secrets)
            .args(["-o", format])
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        everything.push_str(&stdout);
        everything.push_str(&String::from_utf8(out.stderr).unwrap());
        let code = out.status.code().unwrap_or(-1);
        assert!(exit.is_none_or(|e| e == code), "{format}: exit {code}");
        exit = Some(code);
        if format == "json" {
            json = Some(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")));
        }
    }
    (exit.unwrap(), json.unwrap(), everything)
}

fn rows(report: &Report) -> Vec<(String, i32, Outcome, Stage, Reason, String)> {
    report.groups[0]
        .results
        .iter()
        .map(|r| {
            (
                r.endpoint.clone(),
                r.port,
                r.outcome,
                r.stage,
                r.reason,
                r.message.clone(),
            )
        })
        .collect()
}

/// Every form a password could leak in: as is, base64, and inside a SASL PLAIN blob.
fn leak_forms(user: &str, password: &str) -> Vec<String> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    vec![
        password.to_owned(),
        b64(password.as_bytes()),
        b64(format!("\0{user}\0{password}").as_bytes()),
    ]
}

#[test]
fn the_itsm_example_logs_in_for_real_and_each_wrong_input_lands_on_its_reason() {
    let peers = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let (user, password) = (peers.var("PEER_MAIL_USER"), peers.var("PEER_MAIL_PASSWORD"));
    let ldap_password = peers.var("PEER_LDAP_BIND_PASSWORD");
    let wrong = "Wr0ng-itsm-pw-81b7";
    let mut printed = String::new();

    // Right credentials: every login passes.
    let file = itsm_example(dir.path(), |_| {});
    let right = itsm_secrets(dir.path(), password, ldap_password);
    let (code, report, all) = run_itsm(&file, &right);
    printed.push_str(&all);
    assert_eq!(code, 0, "{all}");
    let found = rows(&report);
    assert_eq!(found.len(), 7, "{found:?}");
    for (endpoint, port, outcome, stage, reason, message) in &found {
        assert_eq!(
            (*outcome, *stage, *reason),
            (Outcome::Pass, Stage::Auth, Reason::Reachable),
            "{endpoint}:{port}: {message}"
        );
    }
    let details: Vec<String> = report.groups[0]
        .results
        .iter()
        .map(|r| r.detail.clone().unwrap_or_default())
        .collect();
    assert!(details[0].starts_with(&format!("bound as {}", peers.var("PEER_LDAP_BIND_DN"))));
    assert!(details[2].contains("MAIL FROM <itsm@customer.example.com> and RCPT TO <servicedesk@customer.example.com> accepted (no message sent)"), "{}", details[2]);
    assert!(
        details[3].ends_with("INBOX holds 1 message"),
        "{}",
        details[3]
    );

    // Wrong passwords everywhere.
    let wrong_dir = tempfile::tempdir().unwrap();
    let refused = itsm_secrets(wrong_dir.path(), wrong, wrong);
    let (code, report, all) = run_itsm(&file, &refused);
    printed.push_str(&all);
    assert_eq!(code, 1, "{all}");
    for (endpoint, port, outcome, stage, reason, message) in rows(&report) {
        let expected = if endpoint == "directory" {
            Reason::BindFailed
        } else {
            Reason::AuthFailed
        };
        assert_eq!(
            (outcome, stage, reason),
            (Outcome::Fail, Stage::Auth, expected),
            "{endpoint}:{port}: {message}"
        );
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    }

    // Each other wrong input, one per row: an unknown mailbox, a refused recipient, a missing
    // base DN, a search that finds too little, a mechanism the relay does not offer, and a
    // Secret without its password key.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_rcpt = peers.var("PEER_SMTP_BAD_RCPT").to_owned();
    let file = itsm_example(bad_dir.path(), |endpoints| {
        let ports = |name: &str, endpoints: &mut serde_json::Value| {
            endpoints
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|e| e["name"] == name)
                .unwrap()["ports"]
                .as_array_mut()
                .unwrap()
                .clone()
        };
        let mut directory = ports("directory", endpoints);
        directory[0]["ldap"]["baseDN"] = "ou=gone,dc=example,dc=com".into();
        directory[1]["ldap"]["search"]["minEntries"] = 50.into();
        let mut gateway = ports("mail-gateway", endpoints);
        gateway[0]["smtp"]["envelope"]["to"] = serde_json::json!([bad_rcpt]);
        let mut second = gateway[0].clone();
        second["port"] = Peers::get().port("PEER_SMTP_PORT").into();
        second["smtp"]["auth"]["mechanism"] = "NTLM".into();
        gateway.push(second);
        let mut mailbox = ports("mailbox", endpoints);
        mailbox[0]["mail"]["mailbox"] = "Archive/Missing".into();
        mailbox[1]["mail"]["auth"]["credentialsSecretRef"]["name"] = "itsm-no-password".into();
        for (name, value) in [
            ("directory", directory),
            ("mail-gateway", gateway),
            ("mailbox", mailbox),
        ] {
            let endpoint = endpoints
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|e| e["name"] == name)
                .unwrap();
            endpoint["ports"] = value.into();
        }
    });
    let secrets = itsm_secrets(bad_dir.path(), password, ldap_password);
    std::fs::create_dir_all(secrets.join("itsm-no-password")).unwrap();
    std::fs::write(secrets.join("itsm-no-password/username"), user).unwrap();
    let (code, report, all) = run_itsm(&file, &secrets);
    printed.push_str(&all);
    assert_eq!(code, 1, "{all}");
    let found = rows(&report);
    let expect = |index: usize, stage: Stage, reason: Reason, part: &str| {
        let (endpoint, port, outcome, got_stage, got_reason, message) = &found[index];
        assert_eq!(
            (*outcome, *got_stage, *got_reason),
            (Outcome::Fail, stage, reason),
            "{endpoint}:{port}: {message}"
        );
        assert!(message.contains(part), "{part:?} in {message}");
    };
    expect(
        0,
        Stage::Auth,
        Reason::NoSuchBaseDn,
        "ou=gone,dc=example,dc=com does not exist",
    );
    expect(
        1,
        Stage::Auth,
        Reason::TooFewEntries,
        "fewer than minEntries 50",
    );
    expect(
        2,
        Stage::Auth,
        Reason::RecipientRejected,
        &format!("RCPT TO:<{bad_rcpt}>: 550"),
    );
    expect(
        3,
        Stage::Auth,
        Reason::MechanismNotOffered,
        "does not offer AUTH NTLM",
    );
    expect(
        4,
        Stage::Auth,
        Reason::MailboxNotFound,
        "\"Archive/Missing\"",
    );
    expect(
        5,
        Stage::Auth,
        Reason::CredentialsUnavailable,
        "key password of Secret itsm-no-password",
    );
    assert_eq!(found[6].2, Outcome::Pass, "{:?}", found[6]);

    // No password, in any form, in anything printed by any of the runs.
    assert!(
        printed.contains("NETREACH") || printed.contains("rows:"),
        "output was captured"
    );
    for secret in [password, ldap_password, wrong] {
        for form in leak_forms(user, secret) {
            assert!(
                !printed.contains(&form),
                "{form:?} appears in the output:\n{printed}"
            );
        }
    }
}

#[test]
fn save_certs_writes_each_presented_chain_leaf_first_even_for_interception() {
    let peers = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: certs, namespace: test}}\nspec:\n  defaults: {{timeout: 3s}}\n  endpoints:\n    - name: directory\n      cidr: 127.0.0.1\n      tls: {{serverName: localhost}}\n      ports: [{{port: {ldaps}, protocol: LDAPS}}, {{port: {ldap}, protocol: LDAP, tls: {{mode: StartTLS}}}}]\n    - name: vendor\n      host: mpnsv2.m3.maas360.com\n      tls: {{expectedIssuer: {{organization: Test Public CA}}}}\n      ports: [{{port: {https}, protocol: HTTPS}}]\n",
        ldaps = peers.port("PEER_LDAPS_PORT"),
        ldap = peers.port("PEER_LDAP_PORT"),
        https = peers.port("PEER_HTTPS_PORT"),
    );
    let file = dir.path().join("certs.yaml");
    std::fs::write(&file, yaml).unwrap();
    let openssl = |path: &Path| {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-issuer", "-in"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let saved = dir.path().join("direct");
    let (code, stdout, stderr) = check(&["--save-certs", saved.to_str().unwrap()], &file);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "saved 3 certificate chains (PEM, leaf first) to {}",
            saved.display()
        )),
        "{stderr}"
    );
    for port in [peers.port("PEER_LDAPS_PORT"), peers.port("PEER_LDAP_PORT")] {
        let path = saved.join(format!("directory-{port}.pem"));
        assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
        let pem = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            pem.matches("BEGIN CERTIFICATE").count(),
            2,
            "leaf and intermediate"
        );
        let shown = openssl(&path);
        assert!(shown.contains("subject=CN = localhost"), "{shown}");
        assert!(
            shown.contains("issuer=C = US, O = Test Public CA, CN = Test Public Issuing CA 1"),
            "{shown}"
        );
    }

    // Through the intercepting proxy the row fails, and the forged chain is what is saved.
    let intercepted = dir.path().join("intercepted");
    let mitm = format!("http://127.0.0.1:{}", peers.port("PEER_MITM_PORT"));
    let (code, stdout, stderr) = check(
        &[
            "--only",
            "vendor",
            "--proxy",
            &mitm,
            "--save-certs",
            intercepted.to_str().unwrap(),
        ],
        &file,
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("IssuerMismatch"), "{stdout}");
    let shown = openssl(&intercepted.join(format!("vendor-{}.pem", peers.port("PEER_HTTPS_PORT"))));
    assert!(
        shown.contains("issuer=C = US, O = Example Corp., OU = IT, CN = Web Proxy"),
        "{shown}"
    );
    assert!(
        shown.contains("subject=CN = localhost"),
        "the forged leaf copies the subject: {shown}"
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

/// SIGTERM (what `docker stop` and a kubelet send) stops a check at once with 128 + 15 and no
/// report, instead of being ignored as PID 1 or killing the process without a word.
#[test]
fn sigterm_stops_a_check_at_once_and_says_so() {
    // Accepts and never answers: the HTTP row waits for its 60 s timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("silent.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: silent}}\nspec:\n  endpoints:\n    - {{name: silent, cidr: 127.0.0.1, timeout: 60s, ports: [{{port: {port}, protocol: HTTP}}]}}\n"
        ),
    )
    .unwrap();
    let mut child = netreach()
        .arg("check")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Signal only once the probe is connected, so SIGTERM meets it mid-probe.
    silent.set_nonblocking(true).unwrap();
    let waiting = std::time::Instant::now();
    let _peer = loop {
        if let Ok((peer, _)) = silent.accept() {
            break peer;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the check ended ({status}) before connecting: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            waiting.elapsed() < std::time::Duration::from_secs(20),
            "the check never connected"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let sent = std::time::Instant::now();
    // SAFETY: kill(2) with a valid pid of our own child and a standard signal.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "128 + SIGTERM: {stderr}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no partial report: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
