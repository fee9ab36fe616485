//! Hostile servers and hostile files, all made here on loopback: every probe ends within its
//! timeout with the right reason and stage, a message that names the target and says what to do,
//! and bounded memory; the worst input files are refused fast under an address-space limit.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netreach::api::load::load_str;
use netreach::api::result::{Outcome, ProbeResult, Reason, Stage};
use netreach::probe::engine::{ProbeContext, probe_all};
use netreach::probe::plan::plan_documents;
use netreach::probe::tls::TrustRoots;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Every case's timeout: short, so the suite stays fast.
const TIMEOUT: Duration = Duration::from_secs(1);
/// What a probe may take beyond its timeout.
const GRACE: Duration = Duration::from_millis(500);
/// Peak resident memory of this whole test process, every hostile case included.
const PEAK_RSS_LIMIT_KIB: u64 = 100 * 1024;

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TCP server on loopback that runs `behaviour` on every connection it accepts.
async fn server<F, Fut>(behaviour: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(listener, behaviour)
}

fn serve<F, Fut>(listener: TcpListener, behaviour: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let port = listener.local_addr().unwrap().port();
    let behaviour = Arc::new(behaviour);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(behaviour(stream));
        }
    });
    port
}

/// Holds a connection open, saying nothing, well past any probe's timeout.
async fn hold(stream: TcpStream) {
    tokio::time::sleep(Duration::from_secs(20)).await;
    drop(stream);
}

/// Reads whatever the client sends first (a ClientHello, a request), up to 16 KiB.
async fn read_some(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let _ = stream.read(&mut buf).await;
}

/// Writes `chunk` again and again until the client goes away or `total` bytes are out.
async fn stream_forever(stream: &mut TcpStream, chunk: &[u8], total: usize) {
    let mut sent = 0;
    while sent < total {
        if stream.write_all(chunk).await.is_err() {
            return;
        }
        sent += chunk.len();
    }
}

/// Probes the endpoints (YAML list items, indented four spaces) of one profile whose spec
/// also holds `extra` (indented two spaces); returns the rows and how long probing took.
async fn probe(endpoints: &str, extra: &str) -> (Vec<ProbeResult>, Duration) {
    install_provider();
    let yaml = format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: hostile, namespace: test}}\nspec:\n  defaults: {{timeout: 1s}}\n{extra}  endpoints:\n{endpoints}"
    );
    let loaded =
        load_str(Path::new("hostile.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let targets: Vec<_> = plan_documents(&loaded)
        .unwrap()
        .into_iter()
        .flat_map(|g| g.targets)
        .collect();
    let ctx = ProbeContext::new(TrustRoots::new(false, &[]).unwrap());
    let started = Instant::now();
    let rows = probe_all(&targets, Arc::new(ctx), 16, None).await;
    (rows, started.elapsed())
}

/// One endpoint on 127.0.0.1:`port` speaking `protocol`, probed directly.
async fn probe_port(port: u16, protocol: &str) -> (ProbeResult, Duration) {
    let (mut rows, took) = probe(
        &format!("    - name: hostile\n      cidr: 127.0.0.1\n      ports: [{{port: {port}, protocol: {protocol}}}]\n"),
        "",
    )
    .await;
    (rows.remove(0), took)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The verdict every hostile case must meet: the expected reason and stage, within the
/// timeout plus grace, a message naming the target with the reason's next step, bounded memory.
fn assert_hostile(
    row: &ProbeResult,
    took: Duration,
    outcome: Outcome,
    stage: Stage,
    reason: Reason,
) {
    assert_eq!(
        (row.outcome, row.stage, row.reason),
        (outcome, stage, reason),
        "{}: {}",
        row.target(),
        row.message
    );
    assert!(
        took <= TIMEOUT + GRACE,
        "{}: took {took:?}: {}",
        row.target(),
        row.message
    );
    let target = row.target();
    assert!(
        row.message.contains(&target),
        "names {target}: {}",
        row.message
    );
    let host = row.host.as_deref().or(row.cidr.as_deref()).unwrap();
    if let Some(step) = reason.next_step(row.stage, host, &target) {
        assert!(
            row.message.contains(&step),
            "next step {step:?} in {}",
            row.message
        );
    }
    assert!(
        !row.message.chars().any(|c| c.is_control()),
        "server bytes are escaped: {:?}",
        row.message
    );
    let peak = peak_rss_kib();
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak} KiB after {}",
        row.target()
    );
}

// ---- stalls ----

#[tokio::test]
async fn a_server_that_stalls_before_the_banner() {
    let port = server(hold).await;
    let (row, took) = probe_port(port, "SMTP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::BannerTimeout,
    );
    assert!(
        row.message.contains("timeout 1s reached"),
        "{}",
        row.message
    );
}

#[tokio::test]
async fn a_server_that_stalls_after_the_banner() {
    let port = server(|mut s| async move {
        let _ = s.write_all(b"220 mail.example.com ESMTP\r\n").await;
        hold(s).await;
    })
    .await;
    let (row, took) = probe_port(port, "SMTP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::ResponseTimeout,
    );
    assert!(row.message.contains("answer to EHLO"), "{}", row.message);
}

#[tokio::test]
async fn a_server_that_stalls_during_tls() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        hold(s).await;
    })
    .await;
    let (row, took) = probe_port(port, "HTTPS").await;
    assert_hostile(&row, took, Outcome::Fail, Stage::Tls, Reason::TlsTimeout);
}

#[tokio::test]
async fn a_server_that_stalls_during_the_http_head() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Ty").await;
        hold(s).await;
    })
    .await;
    let (row, took) = probe_port(port, "HTTP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::ResponseTimeout,
    );
}

// ---- endless and oversized answers ----

#[tokio::test]
async fn an_endless_banner() {
    let port = server(|mut s| async move {
        stream_forever(&mut s, b"220-still greeting you\r\n", 256 << 20).await;
    })
    .await;
    let (row, took) = probe_port(port, "SMTP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::ProtocolError,
    );
    assert!(
        row.message.contains("endless SMTP reply"),
        "{}",
        row.message
    );
}

#[tokio::test]
async fn an_endless_http_header() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Endless: ").await;
        stream_forever(&mut s, &[b'a'; 4096], 256 << 20).await;
    })
    .await;
    let (row, took) = probe_port(port, "HTTP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::ProtocolError,
    );
}

#[tokio::test]
async fn a_ten_megabyte_line() {
    let port = server(|mut s| async move {
        let _ = s.write_all(b"220 ").await;
        stream_forever(&mut s, &[b'x'; 64 * 1024], 10 << 20).await;
        hold(s).await;
    })
    .await;
    let (row, took) = probe_port(port, "SMTP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::ProtocolError,
    );
    assert!(
        row.message.contains("line longer than 8192 bytes"),
        "{}",
        row.message
    );
}

#[tokio::test]
async fn one_byte_per_second() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" {
            if s.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let (row, took) = probe_port(port, "HTTP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::ResponseTimeout,
    );
}

#[tokio::test]
async fn a_hundred_thousand_http_headers() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
        stream_forever(&mut s, b"X-Header: value\r\n", 100_000 * 17).await;
        let _ = s.write_all(b"\r\n").await;
    })
    .await;
    let (row, took) = probe_port(port, "HTTP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::ProtocolError,
    );
}

#[tokio::test]
async fn a_body_that_never_ends_passes_on_its_head() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        stream_forever(&mut s, b"4000\r\n", 1).await;
        stream_forever(&mut s, &[b'b'; 16 * 1024], 256 << 20).await;
    })
    .await;
    let (row, took) = probe_port(port, "HTTP").await;
    // The probe needs only the head: it passes at once and leaves the body unread.
    assert_hostile(
        &row,
        took,
        Outcome::Pass,
        Stage::Protocol,
        Reason::Reachable,
    );
    assert!(took < TIMEOUT, "took {took:?}");
}

// ---- the wrong protocol, or garbage ----

#[tokio::test]
async fn garbage_instead_of_a_server_hello() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s
            .write_all(&[0x17, 0x00, 0xff, b'g', b'a', b'r', b'b', 0x00, 0x01])
            .await;
        stream_forever(&mut s, b"\x00garbage\xff", 1 << 20).await;
    })
    .await;
    let (row, took) = probe_port(port, "TLS").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Tls,
        Reason::TlsHandshakeFailed,
    );
}

#[tokio::test]
async fn a_reset_after_the_client_hello() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let (row, took) = probe_port(port, "HTTPS").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Tls,
        Reason::TlsHandshakeFailed,
    );
}

#[tokio::test]
async fn an_ssh_banner_on_an_https_port() {
    let port = server(|mut s| async move {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        hold(s).await;
    })
    .await;
    let (row, took) = probe_port(port, "HTTPS").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Tls,
        Reason::TlsHandshakeFailed,
    );
}

#[tokio::test]
async fn an_http_server_on_an_smtp_port() {
    // Like any HTTP server: silent until it gets a request, then 400 for anything else.
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    })
    .await;
    let (row, took) = probe_port(port, "SMTP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::BannerTimeout,
    );
    assert!(
        row.message.contains("sent no SMTP banner"),
        "{}",
        row.message
    );
}

#[tokio::test]
async fn a_ber_length_of_four_gibibytes() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s
            .write_all(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x02, 0x01])
            .await;
        hold(s).await;
    })
    .await;
    let (row, took) = probe_port(port, "LDAP").await;
    // No credentials are configured, so no stage is Auth.
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::ProtocolError,
    );
    assert!(row.message.contains("too large"), "{}", row.message);
}

#[tokio::test]
async fn an_ldap_server_that_stalls_without_credentials_configured_is_not_at_auth() {
    let port = server(|mut s| async move {
        read_some(&mut s).await;
        hold(s).await;
    })
    .await;
    let (row, took) = probe_port(port, "LDAP").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Protocol,
        Reason::ResponseTimeout,
    );
}

// ---- proxies ----

/// One endpoint probed through the HTTP CONNECT proxy on 127.0.0.1:`proxy`.
async fn probe_through(proxy: u16, protocol: &str) -> (ProbeResult, Duration) {
    let (mut rows, took) = probe(
        &format!("    - name: behind-proxy\n      host: vendor.example.com\n      ports: [{{port: 443, protocol: {protocol}}}]\n"),
        &format!("  proxy: {{url: \"http://127.0.0.1:{proxy}\"}}\n"),
    )
    .await;
    let row = rows.remove(0);
    assert!(
        row.message.contains(&format!("127.0.0.1:{proxy}")),
        "every proxied row names the proxy: {}",
        row.message
    );
    (row, took)
}

#[tokio::test]
async fn a_proxy_that_answers_connect_with_garbage_fails_at_once() {
    let proxy = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s.write_all(b"\x00\x1b[31mnot http\r\n").await;
        hold(s).await;
    })
    .await;
    let (row, took) = probe_through(proxy, "HTTPS").await;
    assert_hostile(&row, took, Outcome::Fail, Stage::Proxy, Reason::ProxyError);
    assert!(
        took < Duration::from_millis(500),
        "at once, not after the timeout: {took:?}"
    );
    assert!(
        row.message
            .contains("answered with non-HTTP data: \"\\0\\u{1b}[31mnot http"),
        "{}",
        row.message
    );
}

#[tokio::test]
async fn a_proxy_that_accepts_connect_then_closes() {
    let proxy = server(|mut s| async move {
        read_some(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await;
    })
    .await;
    let (row, took) = probe_through(proxy, "HTTPS").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Tls,
        Reason::TlsHandshakeFailed,
    );
}

#[tokio::test]
async fn a_silent_proxy() {
    let proxy = server(hold).await;
    let (row, took) = probe_through(proxy, "HTTPS").await;
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Proxy,
        Reason::ProxyTimeout,
    );
}

// ---- DNS ----

/// A DNS server on 127.0.0.1 (UDP, and TCP on the same port) answering each UDP query with
/// `answer(query)`, or nothing when it returns None; TCP connections are held silent.
async fn dns_server(answer: fn(&[u8]) -> Option<Vec<u8>>) -> SocketAddr {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        // The same port for TCP, for answers with the TC bit; try again if it is taken.
        let Ok(tcp) = TcpListener::bind(addr).await else {
            continue;
        };
        serve(tcp, hold);
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                if let Some(reply) = answer(&buf[..n]) {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
        });
        return addr;
    }
}

/// The query turned into a response header with `flags` set and `answers` claimed.
fn response(query: &[u8], flags: u8, answers: u8) -> Vec<u8> {
    let mut reply = query.to_vec();
    reply[2] |= 0x80 | flags;
    reply[7] = answers;
    reply[10] = 0;
    reply[11] = 0;
    let end = 12 + reply[12..].iter().position(|b| *b == 0).unwrap_or(0) + 1 + 4;
    reply.truncate(end.min(reply.len()));
    reply
}

async fn probe_name(nameserver: SocketAddr) -> (ProbeResult, Duration) {
    let (mut rows, took) = probe(
        "    - name: named\n      host: vendor.hostile.test\n      ports: [{port: 443, protocol: HTTPS}]\n",
        &format!("  dns: {{nameservers: [\"{nameserver}\"]}}\n"),
    )
    .await;
    (rows.remove(0), took)
}

#[tokio::test]
async fn a_truncated_dns_answer() {
    // Claims one answer record and ends in the middle of it.
    let ns = dns_server(|q| {
        let mut reply = response(q, 0, 1);
        reply.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01]);
        Some(reply)
    })
    .await;
    let (row, took) = probe_name(ns).await;
    assert_hostile(&row, took, Outcome::Fail, Stage::Dns, Reason::DnsError);
    assert!(!row.message.contains("is up"), "{}", row.message);
}

#[tokio::test]
async fn a_garbage_dns_answer() {
    // The query's id, then noise.
    let ns = dns_server(|q| {
        let mut reply = q[..2].to_vec();
        reply.extend_from_slice(&[
            0x81, 0x80, 0xff, 0xff, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef, 0x00,
        ]);
        Some(reply)
    })
    .await;
    let (row, took) = probe_name(ns).await;
    assert_hostile(&row, took, Outcome::Fail, Stage::Dns, Reason::DnsError);
}

#[tokio::test]
async fn a_silent_nameserver() {
    let ns = dns_server(|_| None).await;
    let (row, took) = probe_name(ns).await;
    assert_hostile(&row, took, Outcome::Fail, Stage::Dns, Reason::DnsTimeout);
    assert!(row.message.contains("within 1s"), "{}", row.message);
}

#[tokio::test]
async fn a_truncated_flag_then_a_silent_tcp_nameserver() {
    let ns = dns_server(|q| Some(response(q, 0x02, 0))).await;
    let (row, took) = probe_name(ns).await;
    assert_hostile(&row, took, Outcome::Fail, Stage::Dns, Reason::DnsTimeout);
}

#[tokio::test]
async fn a_name_with_sixty_addresses_opens_at_most_thirty_two_connections() {
    // 127.0.0.1 to 127.0.0.60 for A; no AAAA.
    let ns = dns_server(|q| {
        let question_end = 12 + q[12..].iter().position(|b| *b == 0)? + 1;
        let qtype = u16::from_be_bytes([q[question_end], q[question_end + 1]]);
        if qtype != 1 {
            return Some(response(q, 0, 0));
        }
        let mut reply = response(q, 0, 60);
        for i in 1..=60u8 {
            reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, i]);
        }
        Some(reply)
    })
    .await;
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut rows, took) = probe(
        &format!("    - name: many\n      host: many.hostile.test\n      ports: [{{port: {port}, protocol: TCP}}]\n"),
        &format!("  dns: {{nameservers: [\"{ns}\"]}}\n"),
    )
    .await;
    let row = rows.remove(0);
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Connect,
        Reason::ConnectionRefused,
    );
    assert_eq!(row.addresses.len(), 32, "{:?}", row.addresses);
    assert!(
        row.message
            .contains("DNS returned 60 addresses; the first 32 were probed"),
        "{}",
        row.message
    );
}

// ---- hostile files ----

/// The worst input files, refused by the `netreach` binary under a 256 MiB address-space
/// limit, each in under a second with exit code 2 and a message saying why.
#[test]
fn the_worst_input_files_are_refused_fast_in_little_memory() {
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    let header = "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\n";
    // Written piecewise: a forked child starts with this process's resident memory.
    let write = |name: &str, parts: &mut dyn Iterator<Item = String>| {
        let path = dir.path().join(name);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for part in parts {
            file.write_all(part.as_bytes()).unwrap();
        }
        file.flush().unwrap();
        path
    };
    let bomb = write(
        "bomb.yaml",
        &mut [
            format!("{header}metadata: {{name: bomb}}\nspec:\n  x: &a ["),
            vec!["x"; 50_000].join(","),
            "]\n  y: [".to_owned(),
            vec!["*a"; 100].join(","),
            "]\n".to_owned(),
        ]
        .into_iter(),
    );
    let endpoint = |i: usize| {
        format!(
            "  - {{name: e{i}, host: h{i}.example.com, ports: [{{port: 443, protocol: HTTPS}}]}}\n"
        )
    };
    let big = write(
        "big.yaml",
        &mut std::iter::once(format!(
            "{header}metadata: {{name: big}}\nspec:\n  endpoints:\n"
        ))
        .chain((0..700_000).map(endpoint)),
    );
    let value = "x".repeat(1000);
    let annotations = write(
        "annotations.yaml",
        &mut std::iter::once(format!("{header}metadata:\n  name: annotated\n  annotations:\n"))
            .chain((0..50_000).map(|i| format!("    a{i}: \"{value}\"\n")))
            .chain(std::iter::once(
                "spec:\n  endpoints:\n  - {name: a, host: a.example.com, ports: [{port: 443, protocol: HTTPS}]}\n".to_owned(),
            )),
    );
    // A small file whose every item is wrong: refused on its node count before it is built.
    let items = write(
        "items.yaml",
        &mut std::iter::once(format!(
            "{header}metadata: {{name: items}}\nspec:\n  endpoints: ["
        ))
        .chain((0..80_000).map(|_| "{z: 1},".to_owned()))
        .chain(std::iter::once("{z: 1}]\n".to_owned())),
    );
    for path in [&big, &annotations] {
        assert!(std::fs::metadata(path).unwrap().len() > 50_000_000);
    }
    let cases = [
        (&bomb, "through its aliases", vec!["check"]),
        (&items, "more than 100000 YAML nodes", vec!["check"]),
        (&big, "more than the limit of 3 MiB", vec!["check"]),
        (&annotations, "more than the limit of 3 MiB", vec!["check"]),
        // With the file limit raised, the document limit still refuses it.
        (
            &annotations,
            "larger than 3 MiB, the API server's request limit",
            vec!["check", "--max-file-mib", "64"],
        ),
        (
            &bomb,
            "through its aliases",
            vec!["render", "--flavor", "NetworkPolicy"],
        ),
        (&bomb, "through its aliases", vec!["probe", "--spec"]),
        (
            &big,
            "more than the limit of 3 MiB",
            vec!["probe", "--spec"],
        ),
    ];
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_netreach"))
        .args(["check", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--max-file-mib"),
        "{} is not a build of this tree (no --max-file-mib): was the target directory shared?",
        env!("CARGO_BIN_EXE_netreach")
    );
    for (path, expected, args) in cases {
        let name = path.file_name().unwrap().to_string_lossy();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_netreach"));
        command.args(&args).arg(path);
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 256 << 20,
                    rlim_max: 256 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let output = command.output().unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(
            took < Duration::from_secs(1),
            "{name}: refused after {took:?}"
        );
        assert!(output.stdout.is_empty(), "{name}: nothing probed");
    }
    // The largest of the children's peak resident sets.
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        assert_eq!(
            libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()),
            0
        );
        usage.assume_init()
    };
    assert!(
        usage.ru_maxrss < 100 * 1024,
        "peak RSS of a refusal: {} KiB",
        usage.ru_maxrss
    );
}

// ---- certificates ----

/// A TLS server on loopback presenting a leaf for `name`, valid 2019 to 2021, from a CA
/// nobody trusts.
async fn expired_untrusted_server(name: &str) -> u16 {
    install_provider();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Nobody Trusts This CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    leaf_params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    leaf_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    server(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
                drop(tls);
            }
        }
    })
    .await
}

#[tokio::test]
async fn an_expired_certificate_from_an_untrusted_issuer_reports_both() {
    let port = expired_untrusted_server("127.0.0.1").await;
    let (row, took) = probe_port(port, "TLS").await;
    // The issuer comes first: a renewed certificate from it would still not be trusted.
    assert_hostile(
        &row,
        took,
        Outcome::Fail,
        Stage::Tls,
        Reason::UntrustedIssuer,
    );
    for part in [
        "CN=Nobody Trusts This CA",
        "not trusted",
        "expired on 2021-01-01",
    ] {
        assert!(row.message.contains(part), "{part:?} in {}", row.message);
    }
    let facts = row.tls.as_ref().unwrap();
    assert!(!facts.trusted && facts.days_remaining < 0, "{facts:?}");
}
