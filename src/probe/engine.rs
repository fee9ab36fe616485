//! The bounded fan-out over many targets and the probe of one endpoint×port: DNS, then a
//! session per address (or through the proxy), under one deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::aggregate::*;
pub use super::context::ProbeContext;
use super::ike;
use super::net::{self, Deadline, Failure, ProxyTarget};
use super::pipeline::*;
use super::plan::Target;
use crate::api::endpoint::{BlockedBy, Expect};
use crate::api::result::{Latency, Outcome, ProbeResult, Reason, Stage};
use crate::api::{Protocol, TlsMode};

/// Grace on top of a target's timeout before the outer guard cuts a probe off; stages time
/// themselves out first, so this only catches a stage that forgot to.
const GUARD_MARGIN: Duration = Duration::from_millis(500);
/// Most addresses of one name probed per port.
pub const MAX_ADDRESSES: usize = 32;

/// Probes every target with at most `concurrency` in flight; results keep the input order.
pub async fn probe_all(
    targets: &[Target],
    ctx: Arc<ProbeContext>,
    concurrency: usize,
    progress: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Vec<ProbeResult> {
    let total = targets.len();
    let mut done = 0;
    let mut results: Vec<Option<ProbeResult>> = vec![None; total];
    let mut stream = futures::stream::iter(targets.iter().enumerate().map(|(index, target)| {
        let ctx = ctx.clone();
        async move { (index, probe(target, &ctx).await) }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some((index, result)) = stream.next().await {
        results[index] = Some(result);
        done += 1;
        if let Some(progress) = progress {
            progress(done, total);
        }
    }
    results.into_iter().flatten().collect()
}

/// Probes one endpoint×port; never takes longer than its timeout plus a small margin.
pub async fn probe(target: &Target, ctx: &ProbeContext) -> ProbeResult {
    let started = Instant::now();
    let guard = target.timeout() + GUARD_MARGIN;
    let mut result = match tokio::time::timeout(guard, probe_inner(target, ctx)).await {
        Ok(result) => result,
        Err(_) => deadline_exceeded(target),
    };
    result.latency.total_ms = Some(started.elapsed().as_millis() as u64);
    result
}

/// The row of a probe the outer guard had to cut off.
fn deadline_exceeded(target: &Target) -> ProbeResult {
    row(
        target,
        Outcome::Fail,
        Stage::Connect,
        Reason::DeadlineExceeded,
        format!(
            "probing {} did not finish within its timeout of {}: the server or something in the path holds the exchange open",
            target.display(),
            crate::api::duration::human(target.timeout())
        ),
    )
}

pub(super) async fn probe_inner(target: &Target, ctx: &ProbeContext) -> ProbeResult {
    let deadline = Deadline::after(target.timeout());
    let shown = target.display();
    if let Some(host) = target.host.as_deref().filter(|h| h.starts_with("*.")) {
        let example = host.replacen('*', "www", 1);
        return row(
            target,
            Outcome::Warn,
            Stage::Dns,
            Reason::WildcardHost,
            format!(
                "{shown} is a wildcard used for policy only and cannot be probed on port {} (a concrete host name under {} can be, such as {example})",
                target.port,
                &host[2..]
            ),
        );
    }
    // A Secret or ConfigMap the TLS stage needs: read it now, so a missing one is told
    // apart from an untrusted issuer.
    let blocked = target.expect == Expect::Blocked;
    let bundle = if target.tls.mode == TlsMode::Disabled || blocked {
        Ok(None)
    } else {
        ctx.ca_bundle(target)
    };
    let with_bundle;
    let target = match bundle {
        Ok(None) => target,
        Ok(Some(pem)) => {
            let mut read = target.clone();
            read.tls.ca_bundle_pem = Some(pem);
            with_bundle = read;
            &with_bundle
        }
        Err(failure) => {
            return row(
                target,
                Outcome::Fail,
                failure.stage,
                failure.reason,
                failure.message,
            );
        }
    };
    // Host name for SNI and verification: the override, else the host, else the IP.
    let peer_host = target.host.clone().or_else(|| {
        target
            .cidr
            .as_deref()
            .and_then(probe_address)
            .map(|ip| ip.to_string())
    });
    let Some(peer_host) = peer_host else {
        return row(
            target,
            Outcome::Fail,
            Stage::Dns,
            Reason::DnsError,
            format!("{shown} has no host or address to probe; set the endpoint's host or cidr"),
        );
    };
    // IKE is UDP: an HTTP CONNECT proxy cannot carry it (the schema refuses `proxy` with
    // IKE; one given on the command line or by a check over a profile is not used).
    let proxy_ignored =
        target.protocol == Protocol::Ike && (ctx.proxy.is_some() || target.proxy.is_some());
    let configured = ctx.proxy.clone().map(Ok).or_else(|| {
        target
            .proxy
            .as_ref()
            .map(|p| proxy_from_spec(p, ctx, &shown))
    });
    let proxy = match configured.filter(|_| !proxy_ignored) {
        Some(Ok(proxy)) => Some(proxy),
        Some(Err(failure)) => {
            return row(
                target,
                Outcome::Fail,
                failure.stage,
                failure.reason,
                failure.message,
            );
        }
        None => None,
    };

    if let Some(proxy) = proxy {
        // Through a proxy, the proxy resolves the name: no local DNS stage, one session.
        let mut latency = Latency::default();
        let started = Instant::now();
        let tunnel = net::connect_via_proxy(&proxy, &peer_host, target.port, &deadline).await;
        if blocked {
            latency.connect_ms = Some(started.elapsed().as_millis() as u64);
            let session = match tunnel {
                Ok(_) => unexpectedly_reachable(target, Some(&proxy.display()), latency),
                Err(failure) if failure.reason == Reason::ProxyRejected => {
                    Session::blocked(target, failure, latency)
                }
                Err(failure) => Session::failed(not_proven(failure), latency, None),
            };
            return from_session(target, session);
        }
        let session = match tunnel {
            Ok(stream) => {
                latency.connect_ms = Some(started.elapsed().as_millis() as u64);
                let route = Route::Proxy(proxy.clone());
                session(
                    Box::new(stream),
                    target,
                    &peer_host,
                    ctx,
                    &deadline,
                    latency,
                    &route,
                )
                .await
            }
            Err(failure) => Session::failed(failure, latency, None),
        };
        // Whatever the outcome, the row says the proxy was in the path.
        let mut session = session;
        if !session.message.contains(&proxy.display()) {
            session.message = format!("{} (through proxy {})", session.message, proxy.display());
        }
        return from_session(target, session);
    }

    let mut latency = Latency::default();
    let addresses: Vec<IpAddr> = match (&target.host, &target.cidr) {
        // An address written as a host name needs no DNS.
        (Some(host), _) if host.parse::<IpAddr>().is_ok() => host.parse().into_iter().collect(),
        (Some(host), _) => {
            let nameservers = if ctx.nameservers.is_empty() {
                target
                    .dns
                    .as_ref()
                    .map(|d| d.nameservers.clone())
                    .unwrap_or_default()
            } else {
                ctx.nameservers.clone()
            };
            let started = Instant::now();
            let resolved = ctx
                .resolvers
                .resolve(host, &nameservers, deadline.remaining())
                .await;
            latency.dns_ms = Some(started.elapsed().as_millis() as u64);
            match resolved {
                Ok(addresses) => addresses,
                Err(failure) => {
                    let failure = Failure::new(
                        Stage::Dns,
                        failure.reason,
                        format!("{shown}: {}", failure.message),
                    );
                    let session = match blocked {
                        true if blocked_by_dns(target, failure.reason) => {
                            Session::blocked(target, failure, latency)
                        }
                        true => Session::failed(not_proven(failure), latency, None),
                        false => Session::failed(failure, latency, None),
                    };
                    return from_session(target, session);
                }
            }
        }
        (None, Some(cidr)) => probe_address(cidr).into_iter().collect(),
        (None, None) => Vec::new(),
    };
    // A name with hundreds of records (or a hostile nameserver) must not open hundreds of
    // connections per port.
    let answered = addresses.len();
    let mut addresses = addresses;
    addresses.truncate(MAX_ADDRESSES);

    // Every address of a Blocked port must be blocked: one that connects is the leak.
    let first_only = ctx.first_address_only && !blocked;
    let sessions: Vec<(IpAddr, Session)> = if first_only {
        let mut tried = Vec::new();
        for address in addresses {
            let session =
                address_session(address, target, &peer_host, ctx, &deadline, latency.clone()).await;
            let passed = session.outcome != Outcome::Fail;
            tried.push((address, session));
            if passed {
                break;
            }
        }
        tried
    } else {
        let all = addresses.iter().map(|address| {
            let latency = latency.clone();
            let peer_host = &peer_host;
            let deadline = &deadline;
            async move {
                (
                    *address,
                    address_session(*address, target, peer_host, ctx, deadline, latency).await,
                )
            }
        });
        futures::future::join_all(all).await
    };
    let mut result = aggregate(target, sessions, first_only);
    if proxy_ignored {
        result.message = format!(
            "{} (sent directly, not through the proxy: IKE is UDP, which an HTTP CONNECT proxy cannot carry)",
            result.message
        );
    }
    if answered > MAX_ADDRESSES {
        result.message.push_str(&format!(
            " (DNS returned {answered} addresses; the first {MAX_ADDRESSES} were probed)"
        ));
    }
    result
}

pub(super) async fn address_session(
    address: IpAddr,
    target: &Target,
    peer_host: &str,
    ctx: &ProbeContext,
    deadline: &Deadline,
    mut latency: Latency,
) -> Session {
    if target.protocol == Protocol::Ike {
        return ike::session(address, target, deadline, latency).await;
    }
    let started = Instant::now();
    let connected = net::connect(SocketAddr::new(address, target.port), deadline).await;
    if target.expect == Expect::Blocked {
        latency.connect_ms = Some(started.elapsed().as_millis() as u64);
        return match connected {
            // Connected: no application byte is sent, the connection is the proof.
            Ok(_) => unexpectedly_reachable(target, None, latency),
            Err(failure) if blocked_at_connect(failure.reason) => {
                Session::blocked(target, failure, latency)
            }
            Err(failure) => Session::failed(not_proven(failure), latency, None),
        };
    }
    match connected {
        Ok(stream) => {
            latency.connect_ms = Some(started.elapsed().as_millis() as u64);
            let route = Route::Direct(address);
            session(
                Box::new(stream),
                target,
                peer_host,
                ctx,
                deadline,
                latency,
                &route,
            )
            .await
        }
        Err(failure) => Session::failed(failure, latency, None),
    }
}

/// Connect failures that prove a path blocked: refused or reset, dropped (timeout), or
/// rejected with an ICMP unreachable.
fn blocked_at_connect(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::ConnectionRefused
            | Reason::ConnectTimeout
            | Reason::HostUnreachable
            | Reason::NetworkUnreachable
    )
}

/// Whether a DNS failure counts as the block (`blockedBy: [DNS]`).
fn blocked_by_dns(target: &Target, reason: Reason) -> bool {
    target.blocked_by.contains(&BlockedBy::Dns)
        && matches!(reason, Reason::NxDomain | Reason::NoAnswer)
}

/// A failure of a Blocked port that does not prove the block.
fn not_proven(mut failure: Failure) -> Failure {
    let hint = if failure.stage == Stage::Dns {
        " (a name that does not resolve counts as blocked only with blockedBy: [DNS])"
    } else {
        ""
    };
    failure.message = format!(
        "{}; the port is expected to be Blocked, but this failure does not show that policy blocks it{hint}",
        failure.message
    );
    failure
}

/// A port expected to be Blocked that accepted the connection.
fn unexpectedly_reachable(target: &Target, proxy: Option<&str>, latency: Latency) -> Session {
    let shown = target.display();
    let how = match proxy {
        Some(proxy) => format!(
            "proxy {proxy} opened a tunnel to {shown}, which is expected to be Blocked; make the proxy refuse CONNECT to it"
        ),
        None => format!("{shown} accepted a connection, but it is expected to be Blocked"),
    };
    let policies = if target.policies.is_empty() {
        "; no policy NetReach emits blocks it: declare the endpoint in a ConnectivityProfile whose spec.policy.flavors has one that does (NetworkPolicy, Cilium, Calico, AdminNetworkPolicy, ClusterNetworkPolicy or EgressFirewall), or block it at the firewall".to_owned()
    } else {
        format!(
            "; {} should block it: check that it is applied, that it selects this pod and that the network plugin enforces it",
            target.policies.join(", ")
        )
    };
    Session {
        outcome: Outcome::Fail,
        stage: Stage::Connect,
        reason: Reason::UnexpectedlyReachable,
        message: format!("{how}{policies}"),
        intercepted: false,
        tls: None,
        detail: None,
        latency,
        blocked_by: None,
        source_ip: None,
    }
}

/// The first address a CIDR is probed at: the address itself, or the first host of a range.
pub(super) fn probe_address(cidr: &str) -> Option<IpAddr> {
    if let Ok(ip) = cidr.parse::<IpAddr>() {
        return Some(ip);
    }
    let net: ipnet::IpNet = cidr.parse().ok()?;
    if net.prefix_len() >= net.max_prefix_len() - 1 {
        return Some(net.network());
    }
    net.hosts().next()
}

pub(super) fn proxy_from_spec(
    spec: &crate::api::endpoint::ProxySpec,
    ctx: &ProbeContext,
    shown: &str,
) -> Result<ProxyTarget, Failure> {
    let mut proxy = ProxyTarget::parse(&spec.url).map_err(|message| {
        Failure::new(
            Stage::Proxy,
            Reason::ProxyError,
            format!("cannot probe {shown} through the proxy: {message}"),
        )
    })?;
    if let Some(secret) = &spec.credentials_secret_ref {
        let through = proxy.display();
        let unavailable = |message| {
            Failure::new(
                Stage::Proxy,
                Reason::CredentialsUnavailable,
                format!("{message} (the credentials for proxy {through})"),
            )
        };
        let user = ctx
            .secret(&secret.name, "username", shown)
            .map_err(unavailable)?;
        let pass = ctx
            .secret(&secret.name, "password", shown)
            .map_err(unavailable)?;
        proxy.credentials = Some((user, pass));
    }
    Ok(proxy)
}

pub(super) fn tls_server_name<'a>(target: &'a Target, peer_host: &'a str) -> &'a str {
    target.tls.server_name.as_deref().unwrap_or(peer_host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::endpoint::MismatchAction;
    use crate::probe::plan::TlsPlan;

    fn target() -> Target {
        Target {
            endpoint: "vendor".into(),
            host: Some("vendor.example.com".into()),
            cidr: None,
            port: 8443,
            protocol: Protocol::Https,
            required: true,
            timeout_ms: 2000,
            tls: TlsPlan {
                mode: TlsMode::Implicit,
                expected_issuer: None,
                on_mismatch: MismatchAction::Fail,
                spki_pins: Vec::new(),
                server_name: None,
                min_days_valid: 14,
                ca_bundle_pem: None,
                ca_bundle_ref: None,
            },
            http: None,
            smtp: None,
            mail: None,
            ldap: None,
            ftp: None,
            ike: None,
            proxy: None,
            dns: None,
            expect: Expect::Reachable,
            blocked_by: Vec::new(),
            policies: Vec::new(),
            source_ip: None,
        }
    }

    fn session(outcome: Outcome, reason: Reason, message: &str) -> Session {
        Session {
            outcome,
            stage: Stage::Connect,
            reason,
            message: message.into(),
            intercepted: false,
            tls: None,
            detail: None,
            latency: Latency::default(),
            blocked_by: None,
            source_ip: None,
        }
    }

    #[test]
    fn with_first_address_only_the_first_working_address_decides() {
        let tried = || {
            vec![
                (
                    "127.0.0.1".parse().unwrap(),
                    session(Outcome::Fail, Reason::ConnectionRefused, "refused"),
                ),
                (
                    "::1".parse().unwrap(),
                    session(Outcome::Pass, Reason::Reachable, "reachable"),
                ),
            ]
        };
        let first = aggregate(&target(), tried(), true);
        assert_eq!(
            (first.outcome, first.reason),
            (Outcome::Pass, Reason::Reachable)
        );
        assert!(
            first
                .message
                .contains("::1 is the first address that works, after 1 that failed"),
            "{}",
            first.message
        );
        let outcomes: Vec<Outcome> = first.addresses.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::Fail, Outcome::Pass],
            "every attempt is listed"
        );
        // Every address probed: the dead one fails the row.
        let all = aggregate(&target(), tried(), false);
        assert_eq!(all.outcome, Outcome::Fail);
        // Nothing works: the failure of the attempts.
        let none = aggregate(
            &target(),
            vec![(
                "127.0.0.1".parse().unwrap(),
                session(Outcome::Fail, Reason::ConnectionRefused, "refused"),
            )],
            true,
        );
        assert_eq!(
            (none.outcome, none.reason),
            (Outcome::Fail, Reason::ConnectionRefused)
        );
    }

    #[test]
    fn a_probe_cut_off_by_the_guard_names_host_port_and_a_next_step() {
        let row = deadline_exceeded(&target());
        assert_eq!(row.reason, Reason::DeadlineExceeded);
        assert!(
            row.message.starts_with(
                "probing vendor.example.com:8443 did not finish within its timeout of 2s"
            ),
            "{}",
            row.message
        );
        assert!(
            row.message.contains("raise the endpoint's timeout"),
            "{}",
            row.message
        );
    }

    #[test]
    fn cidrs_are_probed_at_their_first_host() {
        assert_eq!(
            probe_address("10.0.0.0/24"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            probe_address("18.233.3.236/32"),
            Some("18.233.3.236".parse().unwrap())
        );
        assert_eq!(
            probe_address("2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(probe_address("not-an-ip"), None);
    }
}
