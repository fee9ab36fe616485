//! The probe engine against real servers on loopback: nginx, an SMTP server, dovecot, slapd,
//! dnsmasq, squid and mitmproxy from the peers harness, plus hostile servers made here
//! (expired and wrong-host certificates, filtered port, stalled and garbage-streaming servers).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netreach::api::load::load_str;
use netreach::api::result::{Outcome, ProbeResult, Reason, Stage};
use netreach::probe::engine::{ProbeContext, probe_all};
use netreach::probe::net::ProxyTarget;
use netreach::probe::plan::plan_documents;
use netreach::probe::tls::TrustRoots;
use support::Peers;
use tokio::io::AsyncWriteExt;

struct Options {
    proxy: Option<u16>,
    extra_ca: Vec<PathBuf>,
    first_address_only: bool,
    secrets_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            proxy: None,
            extra_ca: vec![Peers::get().public_ca()],
            first_address_only: false,
            secrets_dir: None,
        }
    }
}

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Probes the endpoints of a profile whose `endpoints:` list is `endpoints` (YAML, indented by
/// four spaces), resolving names through the peers' dnsmasq.
async fn probe_endpoints(endpoints: &str, options: Options) -> Vec<ProbeResult> {
    install_provider();
    let peers = Peers::get();
    let yaml = format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: t, namespace: test}}\nspec:\n  defaults: {{timeout: 3s}}\n  dns: {{nameservers: [\"{}\"]}}\n  endpoints:\n{endpoints}",
        peers.dns()
    );
    let loaded = load_str(Path::new("test.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let targets: Vec<_> = plan_documents(&loaded)
        .unwrap()
        .into_iter()
        .flat_map(|g| g.targets)
        .collect();
    let extra: Vec<(String, Vec<u8>)> = options
        .extra_ca
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
        .collect();
    let mut ctx = ProbeContext::new(TrustRoots::new(false, &extra).unwrap());
    ctx.proxy = options
        .proxy
        .map(|port| ProxyTarget::parse(&format!("http://127.0.0.1:{port}")).unwrap());
    ctx.first_address_only = options.first_address_only;
    ctx.secrets_dir = options.secrets_dir;
    probe_all(&targets, Arc::new(ctx), 16, None).await
}

fn assert_row(result: &ProbeResult, outcome: Outcome, stage: Stage, reason: Reason) {
    assert_eq!(
        (result.outcome, result.stage, result.reason),
        (outcome, stage, reason),
        "{} {}: {}",
        result.endpoint,
        result.target(),
        result.message
    );
}

fn ldap_secrets() -> tempfile::TempDir {
    let peers = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    for (name, dn, password) in [
        (
            "reader",
            peers.var("PEER_LDAP_BIND_DN"),
            peers.var("PEER_LDAP_BIND_PASSWORD"),
        ),
        ("wrong", peers.var("PEER_LDAP_BIND_DN"), "not-the-password"),
    ] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("bindDN"), dn).unwrap();
        std::fs::write(dir.path().join(name).join("password"), password).unwrap();
    }
    dir
}

#[tokio::test]
async fn every_protocol_passes_against_the_real_servers() {
    let peers = Peers::get();
    let secrets = ldap_secrets();
    let endpoints = format!(
        r#"    - name: mpnsv2
      host: mpnsv2.m3.maas360.com
      tls: {{expectedIssuer: {{organization: Test Public CA}}}}
      ports: [{{port: {https}, protocol: HTTPS}}, {{port: {http}, protocol: HTTP}}]
    - name: mpnsv2-tls
      host: mpnsv2.m3.maas360.com
      tls: {{expectedIssuer: {{organization: Test Public CA}}}}
      ports: [{{port: {https}, protocol: TLS}}]
    - name: mail
      host: mail.example.com
      ports:
        - {{port: {smtp}, protocol: SMTP, tls: {{mode: StartTLS}}, smtp: {{expectedAuth: [LOGIN, CRAM-MD5, PLAIN]}}}}
        - {{port: {smtps}, protocol: SMTPS}}
        - {{port: {imap}, protocol: IMAP, tls: {{mode: StartTLS}}, mail: {{expectedCapabilities: [IMAP4REV1]}}}}
        - {{port: {imaps}, protocol: IMAPS}}
        - {{port: {pop3}, protocol: POP3, tls: {{mode: StartTLS}}, mail: {{expectedCapabilities: [USER]}}}}
        - {{port: {pop3s}, protocol: POP3S}}
    - name: directory
      cidr: 127.0.0.1
      tls: {{serverName: localhost}}
      ports:
        - {{port: {ldap}, protocol: LDAP, tls: {{mode: StartTLS}}, ldap: {{bindSecretRef: {{name: reader}}, baseDN: "dc=example,dc=com"}}}}
        - {{port: {ldaps}, protocol: LDAPS, ldap: {{bindSecretRef: {{name: reader}}, baseDN: "dc=example,dc=com"}}}}
    - name: directory-anonymous
      cidr: 127.0.0.1
      ports: [{{port: {ldap}, protocol: LDAP}}]
"#,
        https = peers.port("PEER_HTTPS_PORT"),
        http = peers.port("PEER_HTTP_PORT"),
        smtp = peers.port("PEER_SMTP_PORT"),
        smtps = peers.port("PEER_SMTPS_PORT"),
        imap = peers.port("PEER_IMAP_PORT"),
        imaps = peers.port("PEER_IMAPS_PORT"),
        pop3 = peers.port("PEER_POP3_PORT"),
        pop3s = peers.port("PEER_POP3S_PORT"),
        ldap = peers.port("PEER_LDAP_PORT"),
        ldaps = peers.port("PEER_LDAPS_PORT"),
    );
    let results = probe_endpoints(
        &endpoints,
        Options {
            secrets_dir: Some(secrets.path().to_owned()),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(results.len(), 12);
    for result in &results {
        assert_eq!(
            result.outcome,
            Outcome::Pass,
            "{} {}: {}",
            result.endpoint,
            result.target(),
            result.message
        );
        assert_eq!(result.reason, Reason::Reachable);
    }
    let https = &results[0];
    assert_eq!(
        https.detail.as_deref(),
        Some("HTTP 404 Not Found"),
        "any HTTP status is reachable"
    );
    let tls = https.tls.as_ref().expect("TLS facts recorded");
    assert_eq!(tls.issuer_organization.as_deref(), Some("Test Public CA"));
    assert_eq!(
        tls.issuer_common_name.as_deref(),
        Some("Test Public Issuing CA 1")
    );
    assert!(tls.trusted);
    assert_eq!(tls.chain_length, 2);
    assert!(tls.sans.iter().any(|s| s == "*.m3.maas360.com"));
    assert!(tls.version.starts_with("TLSv1."));
    assert_eq!(tls.spki_sha256.len(), 44);
    assert!(https.latency.dns_ms.is_some() && https.latency.tls_ms.is_some());
    // Plain HTTP has no TLS stage; SMTP after STARTTLS does.
    assert!(results[1].tls.is_none());
    assert_eq!(results[3].stage, Stage::Auth);
    assert!(
        results[3].tls.is_some(),
        "STARTTLS upgraded the SMTP session"
    );
    assert!(results[3].detail.as_deref().unwrap().contains("CRAM-MD5"));
    assert!(
        results[5].tls.is_some() && results[7].tls.is_some(),
        "IMAP and POP3 upgraded"
    );
    assert!(
        results[9]
            .detail
            .as_deref()
            .unwrap()
            .contains("bound as cn=reader")
    );
    assert!(results[9].tls.is_some(), "LDAP StartTLS upgraded");
    assert!(
        results[11].tls.is_none()
            && results[11]
                .detail
                .as_deref()
                .unwrap()
                .contains("anonymous bind")
    );
}

#[tokio::test]
async fn an_endpoint_passes_through_squid_and_is_intercepted_through_mitmproxy() {
    let peers = Peers::get();
    let endpoints = format!(
        "    - name: mpnsv2\n      host: mpnsv2.m3.maas360.com\n      tls: {{expectedIssuer: {{organization: Test Public CA}}}}\n      ports: [{{port: {}, protocol: HTTPS}}]\n",
        peers.port("PEER_HTTPS_PORT")
    );
    let direct = probe_endpoints(&endpoints, Options::default()).await;
    assert_row(
        &direct[0],
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );

    let squid = probe_endpoints(
        &endpoints,
        Options {
            proxy: Some(peers.port("PEER_SQUID_PORT")),
            ..Options::default()
        },
    )
    .await;
    assert_row(&squid[0], Outcome::Pass, Stage::Protocol, Reason::Reachable);
    assert!(
        squid[0].message.contains("through proxy 127.0.0.1:"),
        "{}",
        squid[0].message
    );

    let mitm = probe_endpoints(
        &endpoints,
        Options {
            proxy: Some(peers.port("PEER_MITM_PORT")),
            ..Options::default()
        },
    )
    .await;
    let row = &mitm[0];
    assert_row(row, Outcome::Fail, Stage::Issuer, Reason::IssuerMismatch);
    assert!(row.intercepted);
    let tls = row.tls.as_ref().unwrap();
    assert_eq!(tls.issuer_common_name.as_deref(), Some("Web Proxy"));
    assert_eq!(tls.issuer_organization.as_deref(), Some("Example Corp."));
    assert_eq!(tls.issuer_organizational_unit.as_deref(), Some("IT"));
    assert!(!tls.trusted);
    assert!(
        row.message.contains("CN=Web Proxy, O=Example Corp., OU=IT"),
        "{}",
        row.message
    );
    assert!(
        row.message.contains("instead of O=Test Public CA"),
        "{}",
        row.message
    );
    assert!(
        row.message
            .contains("exclude mpnsv2.m3.maas360.com from SSL decryption"),
        "{}",
        row.message
    );
    assert!(row.message.contains("not trusted"), "{}", row.message);

    // With the corporate CA installed, the chain is trusted and still reported as intercepted.
    let trusted = probe_endpoints(
        &endpoints,
        Options {
            proxy: Some(peers.port("PEER_MITM_PORT")),
            extra_ca: vec![peers.public_ca(), peers.proxy_ca()],
            ..Options::default()
        },
    )
    .await;
    assert_row(
        &trusted[0],
        Outcome::Fail,
        Stage::Issuer,
        Reason::IssuerMismatch,
    );
    assert!(trusted[0].tls.as_ref().unwrap().trusted);
    assert!(
        trusted[0].message.contains("a corporate CA is installed"),
        "{}",
        trusted[0].message
    );
}

#[tokio::test]
async fn interception_can_be_set_to_warn() {
    let peers = Peers::get();
    let endpoints = format!(
        "    - name: mpnsv2\n      host: mpnsv2.m3.maas360.com\n      tls: {{expectedIssuer: {{organization: Test Public CA}}, onMismatch: Warn}}\n      ports: [{{port: {}, protocol: HTTPS}}]\n",
        peers.port("PEER_HTTPS_PORT")
    );
    let results = probe_endpoints(
        &endpoints,
        Options {
            proxy: Some(peers.port("PEER_MITM_PORT")),
            extra_ca: vec![peers.public_ca(), peers.proxy_ca()],
            ..Options::default()
        },
    )
    .await;
    assert_row(
        &results[0],
        Outcome::Warn,
        Stage::Issuer,
        Reason::IssuerMismatch,
    );
    assert!(results[0].intercepted);
    assert_eq!(
        results[0].detail.as_deref(),
        Some("HTTP 404 Not Found"),
        "the application stage still ran"
    );
}

#[tokio::test]
async fn dns_and_connect_failures_are_told_apart() {
    let endpoints = "    - name: nx\n      host: does-not-exist.invalid\n      ports: [{port: 443, protocol: HTTPS}]\n    - name: refused\n      cidr: 127.0.0.1\n      ports: [{port: 1, protocol: TCP}]\n";
    let results = probe_endpoints(endpoints, Options::default()).await;
    assert_row(&results[0], Outcome::Fail, Stage::Dns, Reason::NxDomain);
    assert!(
        results[0]
            .message
            .contains("does-not-exist.invalid does not exist in DNS"),
        "{}",
        results[0].message
    );
    assert_row(
        &results[1],
        Outcome::Fail,
        Stage::Connect,
        Reason::ConnectionRefused,
    );
    assert!(
        results[1].message.contains("allow egress to 127.0.0.1:1"),
        "{}",
        results[1].message
    );
}

#[tokio::test]
async fn a_filtered_port_times_out_at_connect_within_the_deadline() {
    // A listener whose accept queue is full drops new SYNs, as a filtering firewall does.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let endpoints = format!(
        "    - name: filtered\n      cidr: 127.0.0.1\n      timeout: 1s\n      ports: [{{port: {port}, protocol: TCP}}]\n"
    );
    let started = Instant::now();
    let results = probe_endpoints(&endpoints, Options::default()).await;
    let took = started.elapsed();
    assert_row(
        &results[0],
        Outcome::Fail,
        Stage::Connect,
        Reason::ConnectTimeout,
    );
    assert!(
        results[0].message.contains("firewall"),
        "{}",
        results[0].message
    );
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    drop(listener);
}

#[tokio::test]
async fn every_resolved_address_is_probed_and_a_dead_one_fails_the_row() {
    let peers = Peers::get();
    // maas360.com answers A 127.0.0.1 and AAAA ::1; nginx listens on both, SMTP only on IPv4.
    let endpoints = format!(
        "    - name: both-up\n      host: maas360.com\n      ports: [{{port: {}, protocol: HTTP}}]\n    - name: v6-dead\n      host: maas360.com\n      ports: [{{port: {}, protocol: SMTP}}]\n",
        peers.port("PEER_HTTP_PORT"),
        peers.port("PEER_SMTP_PORT")
    );
    let results = probe_endpoints(&endpoints, Options::default()).await;
    assert_row(
        &results[0],
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );
    let addresses: Vec<&str> = results[0]
        .addresses
        .iter()
        .map(|a| a.address.as_str())
        .collect();
    assert_eq!(addresses, ["127.0.0.1", "::1"]);
    assert_row(
        &results[1],
        Outcome::Fail,
        Stage::Connect,
        Reason::ConnectionRefused,
    );
    assert!(
        results[1]
            .message
            .starts_with("1 of 2 addresses fail; ::1:"),
        "{}",
        results[1].message
    );
    assert_eq!(results[1].addresses[0].outcome, Outcome::Pass);
    assert_eq!(results[1].addresses[1].outcome, Outcome::Fail);

    let first_only = probe_endpoints(
        &endpoints,
        Options {
            first_address_only: true,
            ..Options::default()
        },
    )
    .await;
    assert_row(
        &first_only[1],
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );
    assert_eq!(first_only[1].addresses.len(), 1);
}

#[tokio::test]
async fn application_expectations_fail_at_their_stage() {
    let peers = Peers::get();
    let secrets = ldap_secrets();
    let endpoints = format!(
        r#"    - name: status
      host: maas360.com
      ports: [{{port: {http}, protocol: HTTP, http: {{path: /health, expectedStatus: [200]}}}}]
    - name: auth
      host: mail.example.com
      ports: [{{port: {smtp}, protocol: SMTP, smtp: {{expectedAuth: [NTLM]}}}}]
    - name: caps
      host: mail.example.com
      ports: [{{port: {imap}, protocol: IMAP, mail: {{expectedCapabilities: [X-NOT-THERE]}}}}]
    - name: bind
      cidr: 127.0.0.1
      ports: [{{port: {ldap}, protocol: LDAP, ldap: {{bindSecretRef: {{name: wrong}}}}}}]
    - name: base
      cidr: 127.0.0.1
      ports: [{{port: {ldap}, protocol: LDAP, ldap: {{bindSecretRef: {{name: reader}}, baseDN: "dc=missing,dc=com"}}}}]
    - name: no-secret
      cidr: 127.0.0.1
      ports: [{{port: {ldap}, protocol: LDAP, ldap: {{bindSecretRef: {{name: absent}}}}}}]
    - name: not-smtp
      host: maas360.com
      ports: [{{port: {http}, protocol: SMTP}}]
"#,
        http = peers.port("PEER_HTTP_PORT"),
        smtp = peers.port("PEER_SMTP_PORT"),
        imap = peers.port("PEER_IMAP_PORT"),
        ldap = peers.port("PEER_LDAP_PORT"),
    );
    let results = probe_endpoints(
        &endpoints,
        Options {
            secrets_dir: Some(secrets.path().to_owned()),
            ..Options::default()
        },
    )
    .await;
    assert_row(
        &results[0],
        Outcome::Fail,
        Stage::Protocol,
        Reason::HttpStatusMismatch,
    );
    assert!(
        results[0]
            .message
            .contains("answered HTTP 404 Not Found, expected 200"),
        "{}",
        results[0].message
    );
    assert_row(
        &results[1],
        Outcome::Fail,
        Stage::Auth,
        Reason::AuthMechanismMissing,
    );
    assert!(
        results[1].message.contains("does not offer AUTH NTLM"),
        "{}",
        results[1].message
    );
    assert_row(
        &results[2],
        Outcome::Fail,
        Stage::Protocol,
        Reason::CapabilityMissing,
    );
    assert_row(&results[3], Outcome::Fail, Stage::Auth, Reason::BindFailed);
    assert!(
        results[3].message.contains("invalid credentials"),
        "{}",
        results[3].message
    );
    assert!(
        !results[3].message.contains("not-the-password"),
        "the secret never reaches a result"
    );
    assert_row(
        &results[4],
        Outcome::Fail,
        Stage::Protocol,
        Reason::SearchFailed,
    );
    assert_row(
        &results[5],
        Outcome::Fail,
        Stage::Auth,
        Reason::CredentialsUnavailable,
    );
    // nginx waits for a request, so an SMTP probe waits for a banner that never comes.
    assert_eq!(results[6].outcome, Outcome::Fail);
    assert_eq!(results[6].stage, Stage::Protocol);
}

/// A TLS server on loopback presenting `cert` (signed by `ca`).
async fn tls_server(cert: rcgen::Certificate, key: rcgen::KeyPair) -> u16 {
    let certs = vec![cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(b"hello\n").await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
    });
    port
}

/// A CA (written to a PEM file) and a leaf for `names`, valid from the start of `from_year` to
/// the start of `to_year` (0: ten days from now).
fn ca_and_leaf(
    names: &[&str],
    from_year: i32,
    to_year: i32,
    dir: &Path,
) -> (PathBuf, rcgen::Certificate, rcgen::KeyPair) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Generated Test CA");
    // A distinct name per CA, so verifiers never mix them up.
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Generated Root for {}", names[0]),
    );
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.join(format!("ca-for-{}.pem", names[0]));
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    leaf_params.not_before = rcgen::date_time_ymd(from_year, 1, 1);
    leaf_params.not_after = if to_year == 0 {
        let soon = (k8s_openapi::jiff::Timestamp::now()
            + k8s_openapi::jiff::SignedDuration::from_hours(240))
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .date();
        rcgen::date_time_ymd(i32::from(soon.year()), soon.month() as u8, soon.day() as u8)
    } else {
        rcgen::date_time_ymd(to_year, 1, 1)
    };
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    (ca_path, leaf, leaf_key)
}

#[tokio::test]
async fn expired_and_wrong_host_certificates_fail_at_tls() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let (ca, expired, expired_key) = ca_and_leaf(&["expired.example.com"], 2019, 2021, dir.path());
    let expired_port = tls_server(expired, expired_key).await;
    let (ca2, wrong, wrong_key) = ca_and_leaf(&["other.example.net"], 2024, 2099, dir.path());
    let wrong_port = tls_server(wrong, wrong_key).await;
    let (ca3, soon, soon_key) = ca_and_leaf(&["soon.example.com"], 2024, 0, dir.path());
    let soon_port = tls_server(soon, soon_key).await;
    let endpoints = format!(
        "    - name: expired\n      host: expired.example.com\n      ports: [{{port: {expired_port}, protocol: TLS}}]\n    - name: wrong-host\n      host: right.example.com\n      ports: [{{port: {wrong_port}, protocol: TLS}}]\n    - name: soon\n      host: soon.example.com\n      tls: {{minDaysValid: 30}}\n      ports: [{{port: {soon_port}, protocol: TLS}}]\n"
    );
    let cas = vec![ca, ca2, ca3];
    let results = probe_endpoints(
        &endpoints,
        Options {
            extra_ca: cas,
            ..Options::default()
        },
    )
    .await;
    assert_row(
        &results[0],
        Outcome::Fail,
        Stage::Tls,
        Reason::CertificateExpired,
    );
    assert!(results[0].tls.as_ref().unwrap().days_remaining < 0);
    assert!(
        results[0].message.contains("expired on 2021-01-01"),
        "{}",
        results[0].message
    );
    assert_row(
        &results[1],
        Outcome::Fail,
        Stage::Tls,
        Reason::HostnameMismatch,
    );
    assert!(
        results[1]
            .message
            .contains("other.example.net not right.example.com"),
        "{}",
        results[1].message
    );
    assert_row(
        &results[2],
        Outcome::Warn,
        Stage::Tls,
        Reason::CertificateExpiringSoon,
    );
}

/// A plain server that runs `behaviour` on every connection.
async fn raw_server<F, Fut>(behaviour: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let behaviour = Arc::new(behaviour);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(behaviour(stream));
        }
    });
    port
}

#[tokio::test]
async fn stalled_and_garbage_servers_end_within_the_timeout() {
    let stall = raw_server(|mut stream| async move {
        let _ = stream.write_all(b"220-mail.example.com ESMTP sta").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let silent = raw_server(|stream| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    })
    .await;
    // Bounded too: the server stops after 256 MiB, far more than any probe may read.
    let garbage = raw_server(|mut stream| async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..4096 {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut endpoints = String::new();
    let cases = [
        (stall, "SMTP"),
        (silent, "TLS"),
        (silent, "HTTP"),
        (garbage, "SMTP"),
        (garbage, "IMAP"),
        (garbage, "POP3"),
        (garbage, "HTTP"),
        (garbage, "TLS"),
        (garbage, "LDAP"),
    ];
    for (i, (port, protocol)) in cases.iter().enumerate() {
        endpoints.push_str(&format!(
            "    - name: case-{i}\n      cidr: 127.0.0.1\n      timeout: 1s\n      ports: [{{port: {port}, protocol: {protocol}}}]\n"
        ));
    }
    let started = Instant::now();
    let results = probe_endpoints(&endpoints, Options::default()).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1600),
        "all probes together took {took:?}"
    );
    for result in &results {
        assert_eq!(
            result.outcome,
            Outcome::Fail,
            "{} {}: {}",
            result.endpoint,
            result.protocol,
            result.message
        );
        assert!(
            result.latency.total_ms.unwrap() <= 1500,
            "{}: {:?}",
            result.protocol,
            result.latency
        );
    }
    assert_row(
        &results[0],
        Outcome::Fail,
        Stage::Protocol,
        Reason::BannerTimeout,
    );
    assert_eq!(results[1].reason, Reason::TlsTimeout);
    assert_eq!(results[2].reason, Reason::ResponseTimeout);
    assert!(
        results[3].message.contains("line longer than"),
        "{}",
        results[3].message
    );
    assert_eq!(results[3].reason, Reason::ProtocolError);
}

/// A UDP DNS server on loopback that answers every query with `rcode` and no records, or
/// never answers when `rcode` is None.
async fn fake_dns(rcode: Option<u8>) -> String {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Some(rcode) = rcode else { continue };
            let mut reply = buf[..n].to_vec();
            if reply.len() < 12 {
                continue;
            }
            reply[2] |= 0x80; // QR: response
            reply[3] = (reply[3] & 0xf0) | rcode;
            // Keep the question; drop any additional records the client sent (EDNS).
            reply[10] = 0;
            reply[11] = 0;
            let question_end = 12 + reply[12..].iter().position(|b| *b == 0).unwrap_or(0) + 1 + 4;
            reply.truncate(question_end.min(reply.len()));
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr.to_string()
}

async fn probe_with_nameserver(nameserver: &str) -> ProbeResult {
    install_provider();
    let yaml = format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: t}}\nspec:\n  dns: {{nameservers: [\"{nameserver}\"]}}\n  endpoints:\n    - {{name: a, host: vendor.example.org, timeout: 1s, ports: [{{port: 443, protocol: TCP}}]}}\n"
    );
    let loaded = load_str(Path::new("dns.yaml"), &yaml).unwrap();
    let targets: Vec<_> = plan_documents(&loaded)
        .unwrap()
        .into_iter()
        .flat_map(|g| g.targets)
        .collect();
    let ctx = ProbeContext::new(TrustRoots::new(false, &[]).unwrap());
    probe_all(&targets, Arc::new(ctx), 1, None).await.remove(0)
}

#[tokio::test]
async fn servfail_no_answer_and_dns_timeout_are_told_apart() {
    let servfail = probe_with_nameserver(&fake_dns(Some(2)).await).await;
    assert_row(&servfail, Outcome::Fail, Stage::Dns, Reason::ServFail);
    let empty = probe_with_nameserver(&fake_dns(Some(0)).await).await;
    assert_row(&empty, Outcome::Fail, Stage::Dns, Reason::NoAnswer);
    let nxdomain = probe_with_nameserver(&fake_dns(Some(3)).await).await;
    assert_row(&nxdomain, Outcome::Fail, Stage::Dns, Reason::NxDomain);
    let started = Instant::now();
    let silent = probe_with_nameserver(&fake_dns(None).await).await;
    assert_row(&silent, Outcome::Fail, Stage::Dns, Reason::DnsTimeout);
    assert!(
        started.elapsed() < Duration::from_millis(1600),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn proxy_authentication_is_sent_and_its_refusal_reported() {
    use tokio::io::AsyncReadExt;
    // A proxy that wants Basic user:secret and answers 407 otherwise.
    let proxy = raw_server(|mut stream| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let answer: &[u8] = if head.contains("Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=") {
            b"HTTP/1.1 403 Forbidden\r\n\r\n"
        } else {
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"
        };
        let _ = stream.write_all(answer).await;
    })
    .await;
    let endpoints = "    - name: vendor\n      host: mpnsv2.m3.maas360.com\n      ports: [{port: 443, protocol: HTTPS}]\n";
    install_provider();
    let run = |url: String| async move {
        let yaml = format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: t}}\nspec:\n  endpoints:\n{endpoints}"
        );
        let loaded = load_str(Path::new("p.yaml"), &yaml).unwrap();
        let targets: Vec<_> = plan_documents(&loaded)
            .unwrap()
            .into_iter()
            .flat_map(|g| g.targets)
            .collect();
        let mut ctx = ProbeContext::new(TrustRoots::new(false, &[]).unwrap());
        ctx.proxy = Some(ProxyTarget::parse(&url).unwrap());
        probe_all(&targets, Arc::new(ctx), 1, None).await.remove(0)
    };
    let anonymous = run(format!("http://127.0.0.1:{proxy}")).await;
    assert_row(
        &anonymous,
        Outcome::Fail,
        Stage::Proxy,
        Reason::ProxyAuthRequired,
    );
    let authenticated = run(format!("http://user:secret@127.0.0.1:{proxy}")).await;
    assert_row(
        &authenticated,
        Outcome::Fail,
        Stage::Proxy,
        Reason::ProxyRejected,
    );
    assert!(
        authenticated.message.contains("403 Forbidden"),
        "{}",
        authenticated.message
    );
    assert!(
        !authenticated.message.contains("secret"),
        "credentials never reach a result"
    );
}

#[tokio::test]
async fn spki_pins_pass_when_a_chain_key_matches_and_flag_interception_otherwise() {
    let peers = Peers::get();
    let pem = std::fs::read(peers.var("PEERS_SERVER_CERT")).unwrap();
    let leaf = rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
        .map(|c: Result<rustls::pki_types::CertificateDer<'static>, _>| c.unwrap())
        .next()
        .unwrap();
    let pin = netreach::probe::tls::spki_sha256(&leaf).unwrap();
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let endpoints = format!(
        "    - name: pinned\n      host: maas360.com\n      tls: {{spkiPins: [\"{pin}\"]}}\n      ports: [{{port: {port}, protocol: TLS}}]\n    - name: wrong-pin\n      host: maas360.com\n      tls: {{spkiPins: [\"{wrong}\"]}}\n      ports: [{{port: {port}, protocol: TLS}}]\n",
        port = peers.port("PEER_HTTPS_PORT")
    );
    let results = probe_endpoints(&endpoints, Options::default()).await;
    assert_row(&results[0], Outcome::Pass, Stage::Tls, Reason::Reachable);
    assert_row(
        &results[1],
        Outcome::Fail,
        Stage::Issuer,
        Reason::PinMismatch,
    );
    assert!(results[1].intercepted);
}

/// A listener on `[::1]` only, whose port nothing listens on at 127.0.0.1: a host answering A
/// 127.0.0.1 and AAAA ::1 then has a dead first address and a working second one.
async fn ipv6_only_listener() -> tokio::net::TcpListener {
    loop {
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Binding the IPv4 side proves it free; dropping it leaves it refusing.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return listener;
        }
    }
}

#[tokio::test]
async fn with_first_address_only_a_dead_first_address_before_a_working_one_passes() {
    let listener = ipv6_only_listener().await;
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    // maas360.com answers A 127.0.0.1 then AAAA ::1 (from the peers' dnsmasq).
    let endpoints = format!(
        "    - name: v4-dead\n      host: maas360.com\n      ports: [{{port: {port}, protocol: TCP}}]\n"
    );
    let every = probe_endpoints(&endpoints, Options::default()).await;
    assert_row(
        &every[0],
        Outcome::Fail,
        Stage::Connect,
        Reason::ConnectionRefused,
    );
    let first_only = probe_endpoints(
        &endpoints,
        Options {
            first_address_only: true,
            ..Options::default()
        },
    )
    .await;
    let row = &first_only[0];
    assert_row(row, Outcome::Pass, Stage::Connect, Reason::Reachable);
    let tried: Vec<(&str, Outcome, Reason)> = row
        .addresses
        .iter()
        .map(|a| (a.address.as_str(), a.outcome, a.reason))
        .collect();
    assert_eq!(
        tried,
        [
            ("127.0.0.1", Outcome::Fail, Reason::ConnectionRefused),
            ("::1", Outcome::Pass, Reason::Reachable)
        ],
        "the row lists every address tried"
    );
    assert!(
        row.message
            .contains("::1 is the first address that works, after 1 that failed"),
        "{}",
        row.message
    );

    // Nothing works: the failure of the attempts.
    let closed =
        "    - name: closed\n      host: maas360.com\n      ports: [{port: 1, protocol: TCP}]\n";
    let none = probe_endpoints(
        closed,
        Options {
            first_address_only: true,
            ..Options::default()
        },
    )
    .await;
    assert_row(
        &none[0],
        Outcome::Fail,
        Stage::Connect,
        Reason::ConnectionRefused,
    );
    assert_eq!(none[0].addresses.len(), 2);
}

#[tokio::test]
async fn an_inherited_tls_mode_never_applies_to_a_protocol_it_does_not_fit() {
    let peers = Peers::get();
    // defaults Disabled must not strip TLS from HTTPS; StartTLS on an endpoint must not make
    // IMAPS plaintext; Implicit on an endpoint must not wrap plain HTTP in TLS. Each would
    // still "pass" against these servers (nginx answers 400 to plain HTTP on its TLS port),
    // so the TLS facts tell what really happened.
    let yaml_endpoints = format!(
        r#"    - name: https
      host: mpnsv2.m3.maas360.com
      ports: [{{port: {https}, protocol: HTTPS}}]
    - name: imaps
      host: mail.example.com
      tls: {{mode: StartTLS}}
      ports: [{{port: {imaps}, protocol: IMAPS}}, {{port: {imap}, protocol: IMAP}}]
    - name: http
      host: maas360.com
      tls: {{mode: Implicit}}
      ports: [{{port: {http}, protocol: HTTP}}]
"#,
        https = peers.port("PEER_HTTPS_PORT"),
        imaps = peers.port("PEER_IMAPS_PORT"),
        imap = peers.port("PEER_IMAP_PORT"),
        http = peers.port("PEER_HTTP_PORT"),
    );
    install_provider();
    let yaml = format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: t}}\nspec:\n  defaults: {{timeout: 3s, tls: {{mode: Disabled}}}}\n  dns: {{nameservers: [\"{}\"]}}\n  endpoints:\n{yaml_endpoints}",
        peers.dns()
    );
    let loaded = load_str(Path::new("modes.yaml"), &yaml).unwrap();
    let targets: Vec<_> = plan_documents(&loaded)
        .unwrap()
        .into_iter()
        .flat_map(|g| g.targets)
        .collect();
    let extra = vec![(
        "public".to_owned(),
        std::fs::read(peers.public_ca()).unwrap(),
    )];
    let ctx = ProbeContext::new(TrustRoots::new(false, &extra).unwrap());
    let results = probe_all(&targets, Arc::new(ctx), 4, None).await;
    for result in &results {
        assert_eq!(
            result.outcome,
            Outcome::Pass,
            "{}: {}",
            result.target(),
            result.message
        );
    }
    let https = results[0]
        .tls
        .as_ref()
        .expect("HTTPS did TLS despite defaults Disabled");
    assert_eq!(https.issuer_organization.as_deref(), Some("Test Public CA"));
    assert_eq!(results[0].detail.as_deref(), Some("HTTP 404 Not Found"));
    assert!(
        results[1].tls.is_some(),
        "IMAPS did implicit TLS despite the endpoint's StartTLS"
    );
    assert!(
        results[2].tls.is_some(),
        "IMAP upgraded with the endpoint's StartTLS, which fits it"
    );
    assert!(
        results[3].tls.is_none(),
        "plain HTTP got no TLS from the endpoint's Implicit"
    );
}

/// A middlebox that relays to `upstream` and rewrites every STARTTLS/STLS the server
/// announces into X's, as STARTTLS-stripping firewalls do.
async fn stripping_relay(upstream: u16) -> u16 {
    use tokio::io::{AsyncBufReadExt, BufReader};
    raw_server(move |client| async move {
        let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
            return;
        };
        let (client_read, mut client_write) = client.into_split();
        let (server_read, mut server_write) = server.into_split();
        let upward = tokio::spawn(async move {
            let mut client_read = client_read;
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        });
        let mut lines = BufReader::new(server_read);
        let mut line = Vec::new();
        while matches!(lines.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line)
                .replace("STARTTLS", "XXXXXXXX")
                .replace("STLS", "XXXX");
            if client_write.write_all(text.as_bytes()).await.is_err() {
                break;
            }
            line.clear();
        }
        upward.abort();
    })
    .await
}

#[tokio::test]
async fn a_stripped_starttls_fails_where_an_issuer_or_pin_is_expected() {
    let peers = Peers::get();
    let smtp = stripping_relay(peers.port("PEER_SMTP_PORT")).await;
    let imap = stripping_relay(peers.port("PEER_IMAP_PORT")).await;
    let pop3 = stripping_relay(peers.port("PEER_POP3_PORT")).await;
    let pin = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let endpoints = format!(
        r#"    - name: smtp-issuer
      host: mail.example.com
      tls: {{expectedIssuer: {{organization: Test Public CA}}}}
      ports: [{{port: {smtp}, protocol: SMTP}}]
    - name: imap-issuer
      host: mail.example.com
      tls: {{expectedIssuer: {{organization: Test Public CA}}}}
      ports: [{{port: {imap}, protocol: IMAP}}]
    - name: pop3-pin
      host: mail.example.com
      tls: {{spkiPins: ["{pin}"]}}
      ports: [{{port: {pop3}, protocol: POP3}}]
    - name: smtp-plain-ok
      host: mail.example.com
      ports: [{{port: {smtp}, protocol: SMTP}}]
    - name: smtp-direct
      host: mail.example.com
      tls: {{expectedIssuer: {{organization: Test Public CA}}}}
      ports: [{{port: {direct}, protocol: SMTP}}]
"#,
        direct = peers.port("PEER_SMTP_PORT"),
    );
    let results = probe_endpoints(&endpoints, Options::default()).await;
    for (row, command, why) in [
        (
            &results[0],
            "STARTTLS",
            "an issuer is expected (O=Test Public CA)",
        ),
        (
            &results[1],
            "STARTTLS",
            "an issuer is expected (O=Test Public CA)",
        ),
        (&results[2], "STLS", "SPKI pins are expected"),
    ] {
        assert_row(
            row,
            Outcome::Fail,
            Stage::StartTls,
            Reason::StartTlsNotOffered,
        );
        assert!(row.tls.is_none());
        for part in [
            format!("mail.example.com:{}", row.port),
            format!("TLS was expected because {why}"),
            format!("a middlebox stripping {command}"),
        ] {
            assert!(row.message.contains(&part), "{part:?} in {}", row.message);
        }
    }
    // Without an expectation the opportunistic upgrade may stay plain.
    assert_row(
        &results[3],
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );
    assert!(results[3].tls.is_none());
    // Without the middlebox, the same expectation upgrades and checks the issuer.
    assert_row(
        &results[4],
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );
    assert!(results[4].tls.is_some());
}

#[tokio::test]
async fn a_ca_bundle_ref_is_read_from_the_secrets_directory_or_reported_missing() {
    let peers = Peers::get();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(secrets.path().join("peers-ca")).unwrap();
    std::fs::copy(
        peers.public_ca(),
        secrets.path().join("peers-ca").join("ca.crt"),
    )
    .unwrap();
    std::fs::create_dir_all(secrets.path().join("empty-ca")).unwrap();
    std::fs::write(
        secrets.path().join("empty-ca").join("bundle.pem"),
        "nothing",
    )
    .unwrap();
    let endpoints = format!(
        r#"    - name: bundle
      host: mpnsv2.m3.maas360.com
      tls: {{caBundleRef: {{configMap: peers-ca}}}}
      ports: [{{port: {https}, protocol: HTTPS}}]
    - name: no-bundle
      host: mpnsv2.m3.maas360.com
      ports: [{{port: {https}, protocol: HTTPS}}]
    - name: secret-bundle
      host: mpnsv2.m3.maas360.com
      ports: [{{port: {https}, protocol: HTTPS, tls: {{caBundleRef: {{secret: empty-ca, key: bundle.pem}}}}}}]
"#,
        https = peers.port("PEER_HTTPS_PORT"),
    );
    // Only the web PKI roots: the peers' CA comes from the bundle or not at all.
    let with_dir = probe_endpoints(
        &endpoints,
        Options {
            extra_ca: Vec::new(),
            secrets_dir: Some(secrets.path().to_owned()),
            ..Options::default()
        },
    )
    .await;
    assert_row(
        &with_dir[0],
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );
    assert!(with_dir[0].tls.as_ref().unwrap().trusted);
    assert_row(
        &with_dir[1],
        Outcome::Fail,
        Stage::Tls,
        Reason::UntrustedIssuer,
    );
    assert_row(
        &with_dir[2],
        Outcome::Fail,
        Stage::Tls,
        Reason::CaBundleUnavailable,
    );
    assert!(
        with_dir[2]
            .message
            .contains("CA bundle Secret empty-ca (key bundle.pem) holds no usable PEM certificate"),
        "{}",
        with_dir[2].message
    );

    let without_dir = probe_endpoints(
        &endpoints,
        Options {
            extra_ca: Vec::new(),
            ..Options::default()
        },
    )
    .await;
    let row = &without_dir[0];
    assert_row(row, Outcome::Fail, Stage::Tls, Reason::CaBundleUnavailable);
    for part in [
        "mpnsv2.m3.maas360.com:",
        "key ca.crt of ConfigMap peers-ca",
        "create the ConfigMap or Secret that tls.caBundleRef names",
    ] {
        assert!(row.message.contains(part), "{part:?} in {}", row.message);
    }
}

#[tokio::test]
async fn messages_name_host_port_and_a_next_step() {
    let endpoints = "    - name: nx\n      host: does-not-exist.invalid\n      ports: [{port: 443, protocol: HTTPS}]\n    - name: wildcard\n      host: \"*.maas360.com\"\n      ports: [{port: 443, protocol: HTTPS}]\n    - name: proxy-creds\n      host: mpnsv2.m3.maas360.com\n      ports: [{port: 443, protocol: HTTPS}]\n";
    install_provider();
    let peers = Peers::get();
    let yaml = format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: t}}\nspec:\n  dns: {{nameservers: [\"{}\"]}}\n  endpoints:\n{endpoints}",
        peers.dns()
    );
    let loaded = load_str(Path::new("m.yaml"), &yaml).unwrap();
    let mut targets: Vec<_> = plan_documents(&loaded)
        .unwrap()
        .into_iter()
        .flat_map(|g| g.targets)
        .collect();
    targets[2].proxy = Some(netreach::api::endpoint::ProxySpec {
        url: "http://127.0.0.1:3128".into(),
        credentials_secret_ref: Some(netreach::api::endpoint::SecretRef {
            name: "proxy-auth".into(),
        }),
    });
    let ctx = ProbeContext::new(TrustRoots::new(false, &[]).unwrap());
    let results = probe_all(&targets, Arc::new(ctx), 3, None).await;
    assert_row(&results[0], Outcome::Fail, Stage::Dns, Reason::NxDomain);
    assert!(
        results[0].message.starts_with(
            "does-not-exist.invalid:443: does-not-exist.invalid does not exist in DNS"
        ),
        "{}",
        results[0].message
    );
    assert!(results[0].message.contains("check the host name"));
    assert_row(&results[1], Outcome::Warn, Stage::Dns, Reason::WildcardHost);
    assert!(
        results[1]
            .message
            .starts_with("*.maas360.com:443 is a wildcard")
            && results[1].message.contains("such as www.maas360.com"),
        "{}",
        results[1].message
    );
    assert_row(
        &results[2],
        Outcome::Fail,
        Stage::Proxy,
        Reason::CredentialsUnavailable,
    );
    assert!(
        results[2].message.contains("mpnsv2.m3.maas360.com:443")
            && results[2]
                .message
                .contains("needs key username of Secret proxy-auth")
            && results[2].message.contains("proxy 127.0.0.1:3128")
            && results[2].message.contains("create that Secret"),
        "{}",
        results[2].message
    );
}
