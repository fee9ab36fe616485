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
        results[3]
            .message
            .contains("refused the bind as cn=reader,dc=example,dc=com: invalidCredentials (49)"),
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
        Stage::Auth,
        Reason::NoSuchBaseDn,
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

/// A secrets directory as a pod mounts it: `mail` (right), `wrong` (wrong password),
/// `no-password` (no password key), `reader` and `wrong-reader` (LDAP).
fn login_secrets() -> tempfile::TempDir {
    let peers = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let user = peers.var("PEER_MAIL_USER");
    let write = |secret: &str, entries: &[(&str, &str)]| {
        std::fs::create_dir_all(dir.path().join(secret)).unwrap();
        for (key, value) in entries {
            std::fs::write(dir.path().join(secret).join(key), value).unwrap();
        }
    };
    write(
        "mail",
        &[
            ("username", user),
            ("password", peers.var("PEER_MAIL_PASSWORD")),
        ],
    );
    write(
        "wrong",
        &[("username", user), ("password", WRONG_MAIL_PASSWORD)],
    );
    write("no-password", &[("username", user)]);
    write(
        "reader",
        &[
            ("bindDN", peers.var("PEER_LDAP_BIND_DN")),
            ("password", peers.var("PEER_LDAP_BIND_PASSWORD")),
        ],
    );
    write(
        "wrong-reader",
        &[
            ("bindDN", peers.var("PEER_LDAP_BIND_DN")),
            ("password", WRONG_MAIL_PASSWORD),
        ],
    );
    dir
}

const WRONG_MAIL_PASSWORD: &str = "Wr0ng-mail-pw-5c1d";

fn auth(mechanism: &str, secret: &str) -> String {
    format!("auth: {{mechanism: {mechanism}, credentialsSecretRef: {{name: {secret}}}}}")
}

#[tokio::test]
async fn logins_pass_with_every_mechanism_the_servers_offer_and_count_the_messages() {
    let peers = Peers::get();
    let secrets = login_secrets();
    let (smtp, smtps, submission) = (
        peers.port("PEER_SMTP_PORT"),
        peers.port("PEER_SMTPS_PORT"),
        peers.port("PEER_SUBMISSION_PORT"),
    );
    let (imap, imaps, pop3, pop3s) = (
        peers.port("PEER_IMAP_PORT"),
        peers.port("PEER_IMAPS_PORT"),
        peers.port("PEER_POP3_PORT"),
        peers.port("PEER_POP3S_PORT"),
    );
    let good = peers.var("PEER_SMTP_GOOD_RCPT");
    let envelope = format!("envelope: {{from: itsm@example.com, to: [{good}]}}");
    let ports = [
        (
            smtp,
            "SMTP",
            "StartTLS",
            format!("smtp: {{{}, {envelope}}}", auth("PLAIN", "mail")),
        ),
        (
            smtps,
            "SMTPS",
            "",
            format!("smtp: {{{}}}", auth("CRAM-MD5", "mail")),
        ),
        (
            submission,
            "SMTP",
            "StartTLS",
            format!("smtp: {{{}, {envelope}}}", auth("LOGIN", "mail")),
        ),
        (
            imap,
            "IMAP",
            "StartTLS",
            format!("mail: {{{}}}", auth("LOGIN", "mail")),
        ),
        (
            imaps,
            "IMAPS",
            "",
            format!("mail: {{{}, mailbox: INBOX}}", auth("PLAIN", "mail")),
        ),
        (
            imaps,
            "IMAPS",
            "",
            format!("mail: {{{}}}", auth("CRAM-MD5", "mail")),
        ),
        (
            pop3,
            "POP3",
            "StartTLS",
            format!("mail: {{{}}}", auth("USER", "mail")),
        ),
        (
            pop3,
            "POP3",
            "StartTLS",
            format!("mail: {{{}}}", auth("APOP", "mail")),
        ),
        (
            pop3s,
            "POP3S",
            "",
            format!("mail: {{{}}}", auth("PLAIN", "mail")),
        ),
        (
            pop3s,
            "POP3S",
            "",
            format!("mail: {{{}}}", auth("LOGIN", "mail")),
        ),
        (
            pop3s,
            "POP3S",
            "",
            format!("mail: {{{}}}", auth("CRAM-MD5", "mail")),
        ),
    ];
    // One endpoint per row: ports of an endpoint must differ.
    let mut endpoints = String::new();
    for (i, (port, protocol, mode, expectation)) in ports.iter().enumerate() {
        let tls = if mode.is_empty() {
            String::new()
        } else {
            format!(", tls: {{mode: {mode}}}")
        };
        endpoints.push_str(&format!(
            "    - name: mail-{i}\n      cidr: 127.0.0.1\n      tls: {{serverName: localhost}}\n      ports: [{{port: {port}, protocol: {protocol}{tls}, {expectation}}}]\n"
        ));
    }
    endpoints.push_str(&format!(
        "    - name: directory\n      cidr: 127.0.0.1\n      tls: {{serverName: localhost}}\n      ports: [{{port: {}, protocol: LDAP, tls: {{mode: StartTLS}}, ldap: {{bindSecretRef: {{name: reader}}, baseDN: \"{}\", search: {{filter: \"(&(objectClass=inetOrgPerson)(mail=*@example.com))\", scope: OneLevel, minEntries: {}}}}}}}]\n",
        peers.port("PEER_LDAP_PORT"),
        peers.var("PEER_LDAP_SUBTREE"),
        peers.var("PEER_LDAP_SUBTREE_ENTRIES"),
    ));
    let results = probe_endpoints(
        &endpoints,
        Options {
            secrets_dir: Some(secrets.path().to_owned()),
            ..Options::default()
        },
    )
    .await;
    assert_eq!(results.len(), ports.len() + 1);
    for result in &results {
        assert_row(result, Outcome::Pass, Stage::Auth, Reason::Reachable);
        assert!(
            result.tls.is_some(),
            "{}: logged in over TLS",
            result.endpoint
        );
    }
    let detail = |i: usize| results[i].detail.clone().unwrap_or_default();
    assert!(detail(0).starts_with("logged in as user@example.com with AUTH PLAIN; MAIL FROM <itsm@example.com> and RCPT TO <listener@example.com> accepted (no message sent)"), "{}", detail(0));
    assert_eq!(
        detail(1),
        "logged in as user@example.com with AUTH CRAM-MD5"
    );
    let messages = peers.var("PEER_MAIL_MESSAGES");
    for i in 3..6 {
        assert!(
            detail(i).ends_with(&format!("INBOX holds {messages} message")),
            "{}",
            detail(i)
        );
    }
    for i in 6..11 {
        assert!(
            detail(i).ends_with(&format!("the mailbox holds {messages} message")),
            "{}",
            detail(i)
        );
    }
    assert!(detail(7).contains("with APOP"), "{}", detail(7));
    assert!(
        detail(11).contains(&format!(
            "found {} entries",
            peers.var("PEER_LDAP_SUBTREE_ENTRIES")
        )),
        "{}",
        detail(11)
    );
}

#[tokio::test]
async fn each_wrong_login_input_lands_on_its_reason() {
    let peers = Peers::get();
    let secrets = login_secrets();
    let (smtp, submission, imap, pop3, ldap) = (
        peers.port("PEER_SMTP_PORT"),
        peers.port("PEER_SUBMISSION_PORT"),
        peers.port("PEER_IMAP_PORT"),
        peers.port("PEER_POP3_PORT"),
        peers.port("PEER_LDAP_PORT"),
    );
    let bad = peers.var("PEER_SMTP_BAD_RCPT");
    let good = peers.var("PEER_SMTP_GOOD_RCPT");
    let rows = [
        // 0: wrong password on each protocol
        (
            smtp,
            "SMTP",
            "StartTLS",
            format!("smtp: {{{}}}", auth("PLAIN", "wrong")),
        ),
        (
            imap,
            "IMAP",
            "StartTLS",
            format!("mail: {{{}}}", auth("LOGIN", "wrong")),
        ),
        (
            pop3,
            "POP3",
            "StartTLS",
            format!("mail: {{{}}}", auth("APOP", "wrong")),
        ),
        // 3: an unknown mailbox
        (
            imap,
            "IMAP",
            "StartTLS",
            format!(
                "mail: {{{}, mailbox: Archive/Missing}}",
                auth("PLAIN", "mail")
            ),
        ),
        // 4: a refused recipient
        (
            smtp,
            "SMTP",
            "StartTLS",
            format!(
                "smtp: {{{}, envelope: {{from: itsm@example.com, to: [{good}, {bad}]}}}}",
                auth("LOGIN", "mail")
            ),
        ),
        // 5, 6: a mechanism the server does not offer
        (
            smtp,
            "SMTP",
            "StartTLS",
            format!("smtp: {{{}}}", auth("NTLM", "mail")),
        ),
        (
            imap,
            "IMAP",
            "StartTLS",
            format!("mail: {{{}}}", auth("NTLM", "mail")),
        ),
        // 7: a Secret without its password key
        (
            imap,
            "IMAP",
            "StartTLS",
            format!("mail: {{{}}}", auth("LOGIN", "no-password")),
        ),
        // 8: AUTH before STARTTLS
        (
            smtp,
            "SMTP",
            "Disabled",
            format!("smtp: {{{}}}", auth("PLAIN", "mail")),
        ),
        // 9: MAIL FROM without the login the submission port wants
        (
            submission,
            "SMTP",
            "StartTLS",
            format!("smtp: {{envelope: {{from: itsm@example.com, to: [{good}]}}}}"),
        ),
        // 10: a Secret that does not exist
        (
            pop3,
            "POP3",
            "StartTLS",
            format!("mail: {{{}}}", auth("USER", "absent")),
        ),
    ];
    let mut endpoints = String::new();
    for (i, (port, protocol, mode, expectation)) in rows.iter().enumerate() {
        endpoints.push_str(&format!(
            "    - name: wrong-{i}\n      cidr: 127.0.0.1\n      tls: {{serverName: localhost}}\n      ports: [{{port: {port}, protocol: {protocol}, tls: {{mode: {mode}}}, {expectation}}}]\n"
        ));
    }
    let ldap_row = |name: &str, expectation: String| {
        format!(
            "    - name: {name}\n      cidr: 127.0.0.1\n      tls: {{serverName: localhost}}\n      ports: [{{port: {ldap}, protocol: LDAP, tls: {{mode: StartTLS}}, ldap: {expectation}}}]\n"
        )
    };
    endpoints.push_str(&ldap_row(
        "ldap-wrong",
        "{bindSecretRef: {name: wrong-reader}}".into(),
    ));
    endpoints.push_str(&ldap_row(
        "ldap-missing-base",
        "{bindSecretRef: {name: reader}, baseDN: \"ou=gone,dc=example,dc=com\", search: {filter: \"(objectClass=*)\"}}".into(),
    ));
    endpoints.push_str(&ldap_row(
        "ldap-empty",
        format!(
            "{{bindSecretRef: {{name: reader}}, baseDN: \"{}\", search: {{filter: \"(uid=*)\", minEntries: 1}}}}",
            peers.var("PEER_LDAP_EMPTY_SUBTREE")
        ),
    ));
    endpoints.push_str(&ldap_row(
        "ldap-anonymous",
        format!(
            "{{baseDN: \"{}\", search: {{filter: \"(uid=*)\"}}}}",
            peers.var("PEER_LDAP_SUBTREE")
        ),
    ));
    let started = Instant::now();
    let results = probe_endpoints(
        &endpoints,
        Options {
            secrets_dir: Some(secrets.path().to_owned()),
            ..Options::default()
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let expect = |i: usize, stage: Stage, reason: Reason, parts: &[&str]| {
        let row = &results[i];
        assert_row(row, Outcome::Fail, stage, reason);
        for part in parts {
            assert!(row.message.contains(part), "{part:?} in {}", row.message);
        }
        assert!(
            !row.message.contains(WRONG_MAIL_PASSWORD)
                && !row.message.contains(peers.var("PEER_MAIL_PASSWORD")),
            "{}",
            row.message
        );
    };
    let at = |port: u16| format!("127.0.0.1:{port}");
    expect(
        0,
        Stage::Auth,
        Reason::AuthFailed,
        &[
            &at(smtp),
            "refused the PLAIN login as user@example.com: 535",
            "Secret wrong",
        ],
    );
    expect(
        1,
        Stage::Auth,
        Reason::AuthFailed,
        &[&at(imap), "refused the LOGIN login", "AUTHENTICATIONFAILED"],
    );
    expect(
        2,
        Stage::Auth,
        Reason::AuthFailed,
        &[&at(pop3), "refused the APOP login", "-ERR"],
    );
    expect(
        3,
        Stage::Auth,
        Reason::MailboxNotFound,
        &[&at(imap), "\"Archive/Missing\"", "check mail.mailbox"],
    );
    expect(
        4,
        Stage::Auth,
        Reason::RecipientRejected,
        &[
            &at(smtp),
            &format!("RCPT TO:<{bad}>: 550"),
            "refused 1 of 2 recipients",
        ],
    );
    assert!(
        !results[4].message.contains(&format!("<{good}>:")),
        "{}",
        results[4].message
    );
    expect(
        5,
        Stage::Auth,
        Reason::MechanismNotOffered,
        &["does not offer AUTH NTLM (offers: ", "CRAM-MD5", "PLAIN"],
    );
    expect(
        6,
        Stage::Auth,
        Reason::MechanismNotOffered,
        &["does not offer AUTH NTLM", "AUTH=PLAIN"],
    );
    expect(
        7,
        Stage::Auth,
        Reason::CredentialsUnavailable,
        &[&at(imap), "key password of Secret no-password"],
    );
    expect(
        8,
        Stage::Auth,
        Reason::AuthRequiresTls,
        &[
            &at(smtp),
            "refuses AUTH PLAIN before TLS",
            "tls.mode: StartTLS",
        ],
    );
    expect(
        9,
        Stage::Protocol,
        Reason::SenderRejected,
        &[
            &at(submission),
            "MAIL FROM:<itsm@example.com>: 530",
            "set smtp.auth",
        ],
    );
    expect(
        10,
        Stage::Auth,
        Reason::CredentialsUnavailable,
        &["key username of Secret absent"],
    );
    let ldap_at = at(ldap);
    expect(
        11,
        Stage::Auth,
        Reason::BindFailed,
        &[&ldap_at, "invalidCredentials (49)"],
    );
    expect(
        12,
        Stage::Auth,
        Reason::NoSuchBaseDn,
        &[
            "ou=gone,dc=example,dc=com does not exist",
            "noSuchObject (32)",
        ],
    );
    expect(
        13,
        Stage::Auth,
        Reason::TooFewEntries,
        &["returned 0 entries, fewer than minEntries 1"],
    );
    // Without credentials nothing was authenticated: the hidden subtree is the protocol's.
    expect(14, Stage::Protocol, Reason::NoSuchBaseDn, &[&ldap_at]);
}

/// A plain SMTP server offering AUTH NTLM (Debian's dovecot has none) and PLAIN, no STARTTLS:
/// it sends the MS-NLMP example CHALLENGE and accepts the AUTHENTICATE only when its NTLMv2
/// response is the one `User`/`Domain`/`Password` give for the client challenge and time it
/// carries. It takes any PLAIN login, and counts the AUTH PLAIN commands it gets.
async fn ntlm_smtp_server(plain_logins: Arc<std::sync::atomic::AtomicUsize>) -> u16 {
    use base64::Engine as _;
    use netreach::probe::sasl::ntlm;
    use tokio::io::{AsyncBufReadExt, BufReader};
    const CHALLENGE: &str = "4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef00000000000000002400240044000000060070170000000f53006500720076006500720002000c0044006f006d00610069006e0001000c0053006500720076006500720000000000";
    let challenge: Vec<u8> = (0..CHALLENGE.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&CHALLENGE[i..i + 2], 16).unwrap())
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let challenge = challenge.clone();
            let plain_logins = plain_logins.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let b64 = base64::engine::general_purpose::STANDARD;
                write.write_all(b"220 ntlm.test ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: String = if line.starts_with("EHLO") {
                        "250-ntlm.test\r\n250 AUTH NTLM PLAIN\r\n".into()
                    } else if line == "AUTH NTLM" {
                        "334 \r\n".into()
                    } else if line == "AUTH PLAIN" {
                        plain_logins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        "334 \r\n".into()
                    } else if line == "QUIT" {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else if let Ok(message) = b64.decode(line.trim()) {
                        match message.get(8).filter(|_| message.starts_with(b"NTLMSSP")) {
                            Some(1) => format!("334 {}\r\n", b64.encode(&challenge)),
                            Some(3) => {
                                let field = |i: usize| {
                                    let at = 12 + i * 8;
                                    let len =
                                        u16::from_le_bytes([message[at], message[at + 1]]) as usize;
                                    let off = u32::from_le_bytes(
                                        message[at + 4..at + 8].try_into().unwrap(),
                                    ) as usize;
                                    message[off..off + len].to_vec()
                                };
                                let text = |bytes: Vec<u8>| {
                                    String::from_utf16(
                                        &bytes
                                            .chunks(2)
                                            .map(|c| u16::from_le_bytes([c[0], c[1]]))
                                            .collect::<Vec<_>>(),
                                    )
                                    .unwrap()
                                };
                                let (nt, domain, user) = (field(1), text(field(2)), text(field(3)));
                                let parsed = ntlm::Challenge::parse(&challenge).unwrap();
                                let blob = &nt[16..];
                                let expected = ntlm::ntlmv2_response(
                                    &ntlm::ntowf_v2("Password", "User", "Domain"),
                                    &parsed.server_challenge,
                                    blob[16..24].try_into().unwrap(),
                                    u64::from_le_bytes(blob[8..16].try_into().unwrap()),
                                    &parsed.target_info,
                                );
                                if (user.as_str(), domain.as_str()) == ("User", "Domain")
                                    && nt == expected
                                {
                                    "235 2.7.0 Authentication successful\r\n".into()
                                } else {
                                    format!(
                                        "535 5.7.8 Authentication failed for {domain}\\{user}\r\n"
                                    )
                                }
                            }
                            _ if message.starts_with(b"\0") => "235 2.7.0 ok\r\n".into(),
                            _ => "501 5.5.2 what\r\n".into(),
                        }
                    } else {
                        "500 5.5.1 unknown\r\n".into()
                    };
                    write.write_all(reply.as_bytes()).await.unwrap();
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn ntlm_logins_run_the_three_message_dialogue_and_a_wrong_password_fails() {
    let plain_logins = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let port = ntlm_smtp_server(plain_logins.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    for (secret, entries) in [
        (
            "ntlm",
            vec![
                ("username", "User"),
                ("password", "Password"),
                ("domain", "Domain"),
            ],
        ),
        (
            "ntlm-backslash",
            vec![("username", "Domain\\User"), ("password", "Password")],
        ),
        (
            "ntlm-wrong",
            vec![
                ("username", "User"),
                ("password", "Passw0rd-wrong"),
                ("domain", "Domain"),
            ],
        ),
    ] {
        std::fs::create_dir_all(dir.path().join(secret)).unwrap();
        for (key, value) in entries {
            std::fs::write(dir.path().join(secret).join(key), value).unwrap();
        }
    }
    let mut endpoints = String::new();
    for secret in ["ntlm", "ntlm-backslash", "ntlm-wrong"] {
        endpoints.push_str(&format!(
            "    - name: {secret}\n      cidr: 127.0.0.1\n      ports: [{{port: {port}, protocol: SMTP, tls: {{mode: Disabled}}, smtp: {{{}}}}}]\n",
            auth("NTLM", secret)
        ));
    }
    let results = probe_endpoints(
        &endpoints,
        Options {
            secrets_dir: Some(dir.path().to_owned()),
            ..Options::default()
        },
    )
    .await;
    for row in &results[..2] {
        assert_row(row, Outcome::Pass, Stage::Auth, Reason::Reachable);
        assert_eq!(
            row.detail.as_deref(),
            Some(
                format!(
                    "logged in as {} with AUTH NTLM",
                    if row.endpoint == "ntlm" {
                        "User"
                    } else {
                        "Domain\\User"
                    }
                )
                .as_str()
            )
        );
    }
    assert_row(&results[2], Outcome::Fail, Stage::Auth, Reason::AuthFailed);
    assert!(
        results[2]
            .message
            .contains("535 5.7.8 Authentication failed for Domain\\User"),
        "{}",
        results[2].message
    );
    assert!(!results[2].message.contains("Passw0rd-wrong"));

    // A password sent as it is (PLAIN) travels in the clear only where the port says so.
    let endpoints = format!(
        "    - name: opportunistic\n      cidr: 127.0.0.1\n      ports: [{{port: {port}, protocol: SMTP, smtp: {{{plain}}}}}]\n    - name: cleartext-allowed\n      cidr: 127.0.0.1\n      ports: [{{port: {port}, protocol: SMTP, tls: {{mode: Disabled}}, smtp: {{{plain}}}}}]\n",
        plain = auth("PLAIN", "ntlm")
    );
    let results = probe_endpoints(
        &endpoints,
        Options {
            secrets_dir: Some(dir.path().to_owned()),
            ..Options::default()
        },
    )
    .await;
    assert_row(
        &results[0],
        Outcome::Fail,
        Stage::StartTls,
        Reason::StartTlsNotOffered,
    );
    assert!(
        results[0].message.contains(&format!(
            "127.0.0.1:{port} does not offer STARTTLS, so the PLAIN login would send the password unencrypted; it was not sent"
        )),
        "{}",
        results[0].message
    );
    assert_row(&results[1], Outcome::Pass, Stage::Auth, Reason::Reachable);
    assert_eq!(
        plain_logins.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the port with tls.mode: Disabled sent AUTH PLAIN"
    );
}

/// Secrets for the FTP peer: the real account and one with a wrong password.
fn ftp_secrets() -> tempfile::TempDir {
    let peers = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    for (name, password) in [
        ("ftp-user", peers.var("PEER_FTP_PASSWORD")),
        ("ftp-wrong", "not-the-password"),
    ] {
        std::fs::create_dir_all(dir.path().join(name)).unwrap();
        std::fs::write(
            dir.path().join(name).join("username"),
            peers.var("PEER_FTP_USER"),
        )
        .unwrap();
        std::fs::write(dir.path().join(name).join("password"), password).unwrap();
    }
    dir
}

fn row<'a>(results: &'a [ProbeResult], endpoint: &str, port: u16) -> &'a ProbeResult {
    results
        .iter()
        .find(|r| r.endpoint == endpoint && r.port == i32::from(port))
        .unwrap_or_else(|| panic!("no row {endpoint}:{port} in {results:?}"))
}

fn ftp_endpoints() -> String {
    let peers = Peers::get();
    format!(
        r#"    - name: ftp-anonymous
      cidr: 127.0.0.1
      ports: [{{port: {ftp}, protocol: FTP, tls: {{mode: Disabled}}}}]
    - name: ftp-user
      cidr: 127.0.0.1
      tls: {{expectedIssuer: {{organization: Test Public CA}}}}
      ports:
        - {{port: {ftp}, protocol: FTP, tls: {{mode: StartTLS}}, ftp: {{credentialsSecretRef: {{name: ftp-user}}, path: /pub}}}}
        - {{port: {ftps}, protocol: FTPS, ftp: {{credentialsSecretRef: {{name: ftp-user}}, dataChannel: ExtendedPassive}}}}
    - name: ftp-session-reuse
      cidr: 127.0.0.1
      ports: [{{port: {reuse}, protocol: FTP, tls: {{mode: StartTLS}}, ftp: {{credentialsSecretRef: {{name: ftp-user}}}}}}]
    - name: ftp-wrong-password
      cidr: 127.0.0.1
      timeout: 10s                  # PAM and vsftpd delay a failed login by about 3s
      ports: [{{port: {ftp}, protocol: FTP, tls: {{mode: StartTLS}}, ftp: {{credentialsSecretRef: {{name: ftp-wrong}}}}}}]
    - name: ftp-bad-pasv
      cidr: 127.0.0.1
      ports:
        - {{port: {bad}, protocol: FTP, tls: {{mode: StartTLS}}, ftp: {{credentialsSecretRef: {{name: ftp-user}}, passivePorts: {{from: {min}, to: {max}}}}}}}
    - name: ftp-bad-epsv
      cidr: 127.0.0.1
      ports: [{{port: {bad}, protocol: FTP, ftp: {{dataChannel: ExtendedPassive}}}}]
    - name: ftp-bad-control-only
      cidr: 127.0.0.1
      ports: [{{port: {bad}, protocol: FTP, ftp: {{dataChannel: None}}}}]
"#,
        ftp = peers.port("PEER_FTP_PORT"),
        ftps = peers.port("PEER_FTPS_PORT"),
        bad = peers.port("PEER_FTP_BADPASV_PORT"),
        reuse = peers.port("PEER_FTP_REUSE_PORT"),
        min = peers.port("PEER_FTP_PASV_MIN"),
        max = peers.port("PEER_FTP_PASV_MAX"),
    )
}

/// What every FTP row must show, directly or through squid.
fn assert_ftp_rows(results: &[ProbeResult], through: &str) {
    let peers = Peers::get();
    let ftp = peers.port("PEER_FTP_PORT");
    let ftps = peers.port("PEER_FTPS_PORT");
    let bad = peers.port("PEER_FTP_BADPASV_PORT");
    let anonymous = row(results, "ftp-anonymous", ftp);
    assert_row(anonymous, Outcome::Pass, Stage::Protocol, Reason::Reachable);
    let detail = anonymous.detail.as_deref().unwrap();
    assert!(
        detail.starts_with("anonymous logged in (plain); LIST / over the PASV data connection to"),
        "{through}: {detail}"
    );
    assert!(anonymous.tls.is_none(), "{through}: plain FTP has no TLS");

    // This server refuses a data connection that does not resume the control channel's TLS
    // session (522), as vsftpd does by default.
    let reuse = row(
        results,
        "ftp-session-reuse",
        peers.port("PEER_FTP_REUSE_PORT"),
    );
    assert_row(reuse, Outcome::Pass, Stage::Protocol, Reason::Reachable);
    assert!(
        reuse.detail.as_deref().unwrap().contains("(TLS)"),
        "{through}: {:?}",
        reuse.detail
    );

    let explicit = row(results, "ftp-user", ftp);
    assert_row(explicit, Outcome::Pass, Stage::Protocol, Reason::Reachable);
    let detail = explicit.detail.as_deref().unwrap();
    assert!(
        detail.starts_with("peerftp logged in (AUTH TLS); LIST /pub over the PASV data connection"),
        "{through}: {detail}"
    );
    assert!(
        detail.contains("(TLS)"),
        "{through}: the listing came over TLS: {detail}"
    );
    let tls = explicit.tls.as_ref().expect("AUTH TLS facts");
    assert_eq!(tls.issuer_organization.as_deref(), Some("Test Public CA"));
    assert!(explicit.latency.tls_ms.is_some() && explicit.latency.protocol_ms.is_some());

    let implicit = row(results, "ftp-user", ftps);
    assert_row(implicit, Outcome::Pass, Stage::Protocol, Reason::Reachable);
    let detail = implicit.detail.as_deref().unwrap();
    assert!(
        detail
            .starts_with("peerftp logged in (implicit TLS); LIST / over the EPSV data connection")
            && detail.contains("(TLS)"),
        "{through}: {detail}"
    );
    assert!(implicit.tls.is_some());

    let wrong = row(results, "ftp-wrong-password", ftp);
    assert_row(wrong, Outcome::Fail, Stage::Auth, Reason::AuthFailed);
    assert!(
        wrong.message.contains("refused the login of peerftp (530")
            && wrong.message.contains("Secret ftp-wrong"),
        "{through}: {}",
        wrong.message
    );
    assert!(!wrong.message.contains("not-the-password"));

    // Login passes, the data connection is refused: reported on its own, naming the port.
    let blocked = row(results, "ftp-bad-pasv", bad);
    assert_row(
        blocked,
        Outcome::Fail,
        Stage::Protocol,
        Reason::DataChannelBlocked,
    );
    let pasv_min = peers.port("PEER_FTP_PASV_MAX") + 1;
    let advertised = peers.var("PEER_FTP_BADPASV_ADDR");
    assert!(
        blocked.message.starts_with(&format!(
            "login to 127.0.0.1:{bad} works, but the data connection to 127.0.0.1:"
        )) && blocked.message.contains("(from PASV)"),
        "{through}: {}",
        blocked.message
    );
    let port: u16 = blocked.message["login to 127.0.0.1:".len()..]
        .split("data connection to 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{through}: no data port in {}", blocked.message));
    assert!(
        (pasv_min..pasv_min + 5).contains(&port),
        "{through}: the data port {port} is the one the server offered"
    );
    assert!(
        blocked.message.contains(&format!(
            "allow egress to 127.0.0.1 ports {}-{}",
            peers.var("PEER_FTP_PASV_MIN"),
            peers.var("PEER_FTP_PASV_MAX")
        )),
        "{through}: {}",
        blocked.message
    );
    if through == "directly" {
        assert!(
            blocked.message.contains("was refused"),
            "{}",
            blocked.message
        );
        assert!(
            blocked.message.contains(&format!(
                "PASV advertised {advertised}:{port}, a private or unroutable address"
            )) && blocked.message.contains("pasv_address"),
            "{}",
            blocked.message
        );
    }
    let epsv = row(results, "ftp-bad-epsv", bad);
    assert_row(
        epsv,
        Outcome::Fail,
        Stage::Protocol,
        Reason::DataChannelBlocked,
    );
    assert!(
        epsv.message.contains("(from EPSV)"),
        "{through}: {}",
        epsv.message
    );
    let control = row(results, "ftp-bad-control-only", bad);
    assert_row(control, Outcome::Pass, Stage::Protocol, Reason::Reachable);
    assert!(
        control
            .detail
            .as_deref()
            .unwrap()
            .contains("data channel not checked"),
        "{through}: {:?}",
        control.detail
    );
}

#[tokio::test]
async fn ftp_logs_in_lists_over_a_tls_data_channel_and_reports_a_blocked_one() {
    let secrets = ftp_secrets();
    let results = probe_endpoints(
        &ftp_endpoints(),
        Options {
            secrets_dir: Some(secrets.path().to_owned()),
            ..Options::default()
        },
    )
    .await;
    assert_ftp_rows(&results, "directly");
}

#[tokio::test]
async fn ftp_through_squid_tunnels_the_data_connection_too() {
    let peers = Peers::get();
    let secrets = ftp_secrets();
    let results = probe_endpoints(
        &ftp_endpoints(),
        Options {
            proxy: Some(peers.port("PEER_SQUID_PORT")),
            secrets_dir: Some(secrets.path().to_owned()),
            ..Options::default()
        },
    )
    .await;
    assert_ftp_rows(&results, "through squid");
    let explicit = row(&results, "ftp-user", peers.port("PEER_FTP_PORT"));
    assert!(
        explicit.message.contains("through proxy 127.0.0.1:"),
        "{}",
        explicit.message
    );
    // squid saw both the control and the data tunnel.
    let log = std::fs::read_to_string(peers.dir.join("squid/access.log")).unwrap();
    let data_port = explicit
        .detail
        .as_deref()
        .unwrap()
        .split("data connection to 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split([' ', ':']).next())
        .unwrap()
        .to_owned();
    assert!(
        log.contains(&format!("CONNECT 127.0.0.1:{data_port}")),
        "no CONNECT to the data port {data_port} in squid's log:\n{log}"
    );
}

#[tokio::test]
async fn an_ftp_server_that_wants_tls_before_login_is_told_apart_from_a_wrong_password() {
    use tokio::io::AsyncBufReadExt;
    // vsftpd's answer with force_local_logins_ssl=YES, and a plain 534.
    let server = |answer: &'static str| {
        raw_server(move |stream| async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            let _ = write.write_all(b"220-welcome\r\n220 ready\r\n").await;
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: &[u8] = if line.starts_with("USER") {
                    answer.as_bytes()
                } else {
                    b"500 unknown\r\n"
                };
                let _ = write.write_all(reply).await;
            }
        })
    };
    let encryption = server("530 Non-anonymous sessions must use encryption.\r\n").await;
    let code_534 = server("534 Policy requires SSL.\r\n").await;
    let refused = server("530 This FTP server is anonymous only.\r\n").await;
    let results = probe_endpoints(
        &format!(
            "    - name: wants-tls\n      cidr: 127.0.0.1\n      ports: [{{port: {encryption}, protocol: FTP, tls: {{mode: Disabled}}}}, {{port: {code_534}, protocol: FTP, tls: {{mode: Disabled}}}}, {{port: {refused}, protocol: FTP, tls: {{mode: Disabled}}}}]\n"
        ),
        Options::default(),
    )
    .await;
    assert_row(
        &results[0],
        Outcome::Fail,
        Stage::StartTls,
        Reason::TlsRequired,
    );
    assert!(
        results[0].message.contains("requires TLS before login")
            && results[0].message.contains("set tls.mode: StartTLS"),
        "{}",
        results[0].message
    );
    assert_row(
        &results[1],
        Outcome::Fail,
        Stage::StartTls,
        Reason::TlsRequired,
    );
    assert_row(&results[2], Outcome::Fail, Stage::Auth, Reason::AuthFailed);
    assert!(
        results[2].message.contains("anonymous logins are refused"),
        "{}",
        results[2].message
    );
}

#[tokio::test]
async fn ike_passes_against_strongswan_and_a_silent_or_closed_udp_port_fails() {
    let peers = Peers::get();
    // Silent: bound, reads what arrives, never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    // Closed: bound once for a free port, then released, so the kernel answers ICMP.
    let closed_port = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let results = probe_endpoints(
        &format!(
            r#"    - name: vpn-primary
      cidr: 127.0.0.1
      timeout: 2s
      ports: [{{port: {ike}, protocol: IKE}}, {{port: {natt}, protocol: IKE}}]
    - name: vpn-legacy
      cidr: 127.0.0.1
      timeout: 2s
      ports: [{{port: {ike}, protocol: IKE, ike: {{version: 1}}}}]
    - name: vpn-silent
      cidr: 127.0.0.1
      timeout: 2s
      ports: [{{port: {silent_port}, protocol: IKE}}]
    - name: vpn-closed
      cidr: 127.0.0.1
      timeout: 2s
      ports: [{{port: {closed_port}, protocol: IKE}}]
"#,
            ike = peers.port("PEER_IKE_PORT"),
            natt = peers.port("PEER_IKE_NATT_PORT"),
        ),
        Options::default(),
    )
    .await;
    let elapsed = started.elapsed();
    let primary = row(&results, "vpn-primary", peers.port("PEER_IKE_PORT"));
    assert_row(primary, Outcome::Pass, Stage::Protocol, Reason::Reachable);
    // The responder's first proposal is AES-256/SHA-256/MODP-2048: it asks for group 14 first.
    let detail = primary.detail.as_deref().unwrap();
    assert_eq!(
        detail,
        "asked for group MODP_2048 (INVALID_KE_PAYLOAD), then IKEv2 responder chose AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
        "{}",
        primary.message
    );
    assert!(primary.latency.protocol_ms.is_some());
    assert_eq!(primary.addresses.len(), 1);
    let natt = row(&results, "vpn-primary", peers.port("PEER_IKE_NATT_PORT"));
    assert_row(natt, Outcome::Pass, Stage::Protocol, Reason::Reachable);
    let legacy = row(&results, "vpn-legacy", peers.port("PEER_IKE_PORT"));
    assert_eq!(legacy.outcome, Outcome::Pass, "{}", legacy.message);
    assert!(
        legacy
            .detail
            .as_deref()
            .unwrap()
            .contains("IKEv1 responder (Main Mode)"),
        "{:?}",
        legacy.detail
    );

    // The silent port got our request (with the non-ESP marker), and the row still failed.
    let mut buffer = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), silent.recv_from(&mut buffer))
        .await
        .expect("the probe's request reached the silent port")
        .unwrap();
    assert!(n > 32 && buffer[..4] == [0, 0, 0, 0], "NAT-T marker first");
    assert_eq!(buffer[4 + 18], 34, "an IKE_SA_INIT");
    let silent_row = row(&results, "vpn-silent", silent_port);
    assert_row(silent_row, Outcome::Fail, Stage::Connect, Reason::NoAnswer);
    assert!(
        silent_row.message.contains(&format!(
            "UDP {silent_port} to 127.0.0.1 unanswered: a firewall may drop IKE, or the peer is not configured for this source address"
        )) && silent_row.message.contains("allow UDP 500 and 4500"),
        "{}",
        silent_row.message
    );
    let closed = row(&results, "vpn-closed", closed_port);
    assert_row(
        closed,
        Outcome::Fail,
        Stage::Connect,
        Reason::ConnectionRefused,
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "every row ends within its 2s timeout (took {elapsed:?})"
    );
}

#[tokio::test]
async fn ike_goes_direct_even_when_a_proxy_is_set_and_says_so() {
    let peers = Peers::get();
    let results = probe_endpoints(
        &format!(
            "    - name: vpn\n      cidr: 127.0.0.1\n      ports: [{{port: {}, protocol: IKE}}]\n",
            peers.port("PEER_IKE_PORT")
        ),
        Options {
            proxy: Some(peers.port("PEER_SQUID_PORT")),
            ..Options::default()
        },
    )
    .await;
    assert_row(
        &results[0],
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );
    assert!(
        results[0]
            .message
            .contains("not through the proxy: IKE is UDP"),
        "{}",
        results[0].message
    );
}

#[tokio::test]
async fn an_endless_ftp_listing_is_cut_at_its_cap_within_the_timeout() {
    use tokio::io::AsyncBufReadExt;
    let data = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data_port = data.local_addr().unwrap().port();
    let data = Arc::new(data);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let streamed = sent.clone();
    let control = raw_server(move |stream| {
        let data = data.clone();
        let sent = streamed.clone();
        async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            let _ = write.write_all(b"220 endless\r\n").await;
            while let Ok(Some(line)) = lines.next_line().await {
                let verb = line
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let reply = match verb.as_str() {
                    "USER" => "230 in".to_owned(),
                    "PASV" => format!(
                        "227 Entering Passive Mode (127,0,0,1,{},{})",
                        data_port >> 8,
                        data_port & 0xff
                    ),
                    "LIST" => "150 here it comes, forever".to_owned(),
                    _ => "200 ok".to_owned(),
                };
                let _ = write.write_all(format!("{reply}\r\n").as_bytes()).await;
                if verb == "LIST" {
                    // Bounded too: stops after 256 MiB, far more than any probe may read.
                    let (mut stream, _) = data.accept().await.unwrap();
                    let chunk = vec![b'x'; 64 * 1024];
                    for _ in 0..4096 {
                        if stream.write_all(&chunk).await.is_err() {
                            break;
                        }
                        sent.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
    })
    .await;
    let started = Instant::now();
    let results = probe_endpoints(
        &format!(
            "    - name: endless\n      cidr: 127.0.0.1\n      ports: [{{port: {control}, protocol: FTP, tls: {{mode: Disabled}}}}]\n"
        ),
        Options::default(),
    )
    .await;
    let elapsed = started.elapsed();
    assert_row(
        &results[0],
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );
    let detail = results[0].detail.as_deref().unwrap();
    assert!(detail.contains(": at least 6"), "{detail}");
    assert!(
        sent.load(std::sync::atomic::Ordering::Relaxed) >= 64 * 1024,
        "the server streamed the listing"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

/// An IKE response from a fake responder: the request's SPI, one notify payload.
fn ike_notify_response(request: &[u8], kind: u16, data: &[u8]) -> Vec<u8> {
    let mut message = request[..8].to_vec();
    message.extend_from_slice(&[9; 8]);
    message.extend_from_slice(&[41, 0x20, 34, 0x20, 0, 0, 0, 0]);
    let length = 28 + 8 + data.len();
    message.extend_from_slice(&(length as u32).to_be_bytes());
    message.extend_from_slice(&[0, 0]);
    message.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    message.extend_from_slice(&[0, 0]);
    message.extend_from_slice(&kind.to_be_bytes());
    message.extend_from_slice(data);
    let mut datagram = vec![0; 4]; // the non-ESP marker: this port is not 500
    datagram.extend(message);
    datagram
}

#[tokio::test]
async fn an_ike_cookie_is_sent_back_once_and_no_proposal_chosen_still_proves_reachability() {
    let responder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = responder.local_addr().unwrap().port();
    let fake = tokio::spawn(async move {
        let mut buffer = vec![0u8; 65536];
        let mut requests = Vec::new();
        for kind in [16390u16, 14] {
            let (n, from) = responder.recv_from(&mut buffer).await.unwrap();
            let request = buffer[4..n].to_vec();
            let data: &[u8] = if kind == 16390 {
                b"a-cookie-of-ours"
            } else {
                b""
            };
            responder
                .send_to(&ike_notify_response(&request, kind, data), from)
                .await
                .unwrap();
            requests.push(request);
        }
        requests
    });
    let results = probe_endpoints(
        &format!(
            "    - name: vpn\n      cidr: 127.0.0.1\n      timeout: 2s\n      ports: [{{port: {port}, protocol: IKE}}]\n"
        ),
        Options::default(),
    )
    .await;
    assert_row(
        &results[0],
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );
    assert!(
        results[0].detail.as_deref().unwrap().starts_with(
            "sent a COOKIE, then IKEv2 responder answered NO_PROPOSAL_CHOSEN: the VPN endpoint is reachable"
        ),
        "{:?}",
        results[0].detail
    );
    let requests = fake.await.unwrap();
    // The retry carries the cookie as its first payload (a notify), with the same SPI.
    let retry = &requests[1];
    assert_eq!(retry[..8], requests[0][..8]);
    assert_eq!(retry[16], 41, "the first payload is a notify");
    let notify_length = u16::from_be_bytes([retry[30], retry[31]]) as usize;
    assert_eq!(
        &retry[28 + 8..28 + notify_length],
        b"a-cookie-of-ours".as_slice()
    );
}

#[tokio::test]
async fn a_filtered_ftp_data_port_is_data_channel_blocked_within_the_deadline() {
    use tokio::io::AsyncBufReadExt;
    // The data port drops SYNs (a full accept queue), as a firewall that blocks it does.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let filtered = socket.listen(0).unwrap();
    let data_port = filtered.local_addr().unwrap().port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", data_port)),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let control = raw_server(move |stream| async move {
        let (read, mut write) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let _ = write.write_all(b"220 ready\r\n").await;
        while let Ok(Some(line)) = lines.next_line().await {
            let reply = match line.split_whitespace().next().unwrap_or_default() {
                "USER" => "230 in".to_owned(),
                "PASV" => format!(
                    "227 Entering Passive Mode (127,0,0,1,{},{})",
                    data_port >> 8,
                    data_port & 0xff
                ),
                _ => "200 ok".to_owned(),
            };
            let _ = write.write_all(format!("{reply}\r\n").as_bytes()).await;
        }
    })
    .await;
    let started = Instant::now();
    let results = probe_endpoints(
        &format!(
            "    - name: filtered-data\n      cidr: 127.0.0.1\n      timeout: 1s\n      ports: [{{port: {control}, protocol: FTP, tls: {{mode: Disabled}}}}]\n"
        ),
        Options::default(),
    )
    .await;
    let took = started.elapsed();
    assert_row(
        &results[0],
        Outcome::Fail,
        Stage::Protocol,
        Reason::DataChannelBlocked,
    );
    assert!(
        results[0].message.starts_with(&format!(
            "login to 127.0.0.1:{control} works, but the data connection to 127.0.0.1:{data_port} (from PASV) timed out"
        )),
        "{}",
        results[0].message
    );
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    drop(filtered);
}
