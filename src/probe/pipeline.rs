//! The stages after connect on one stream: StartTLS, TLS, issuer, then the application
//! protocol and its authentication, carrying what each stage found.

use std::net::IpAddr;
use std::time::Instant;

use super::aggregate::*;
use super::context::ProbeContext;
use super::engine::*;
use super::ftp;
use super::ldap::LdapConn;
use super::ldap_filter;
use super::mail::{imap, pop3, smtp};
use super::net::{BoxStream, Deadline, Failure, ProxyTarget};
use super::plan::{SourceIpPlan, Target};
use super::protocols::{self, Upgrade};
use super::tls::{self};
use crate::api::endpoint::SearchScope;
use crate::api::result::{Latency, Outcome, Reason, Stage, TlsFacts};
use crate::api::{Protocol, TlsMode};

/// What a session has gathered so far, carried through the stages.
pub(super) struct Progress {
    pub(super) tls: Option<TlsFacts>,
    /// A problem that does not stop the probe (expiry soon, a mismatch set to warn).
    pub(super) warning: Option<Failure>,
    pub(super) latency: Latency,
    /// The source address an echo service reported.
    pub(super) source_ip: Option<String>,
}

/// How a session's connection was made, so a protocol that opens more connections (FTP's
/// data channel) opens them the same way.
#[derive(Clone, Debug)]
pub(super) enum Route {
    /// Straight to this address.
    Direct(IpAddr),
    /// Tunnelled through this HTTP CONNECT proxy.
    Proxy(ProxyTarget),
}

/// Where a session runs: the target, the name to verify, shared settings and the deadline.
pub(super) struct Scope<'a> {
    pub(super) target: &'a Target,
    pub(super) peer_host: &'a str,
    pub(super) ctx: &'a ProbeContext,
    pub(super) deadline: &'a Deadline,
    pub(super) route: &'a Route,
    /// TLS sessions to resume on further connections of this session (FTP data channels).
    pub(super) tls_sessions: Option<tls::SessionCache>,
}

/// Runs the stages after connect on one stream.
pub(super) async fn session(
    stream: BoxStream,
    target: &Target,
    peer_host: &str,
    ctx: &ProbeContext,
    deadline: &Deadline,
    latency: Latency,
    route: &Route,
) -> Session {
    let shown = target.display();
    let scope = Scope {
        target,
        peer_host,
        ctx,
        deadline,
        route,
        tls_sessions: matches!(target.protocol, Protocol::Ftp | Protocol::Ftps)
            .then(tls::session_cache),
    };
    let mut progress = Progress {
        tls: None,
        warning: None,
        latency,
        source_ip: None,
    };

    // Implicit TLS first, for every protocol that has it.
    let stream = if target.tls.mode == TlsMode::Implicit {
        let started = Instant::now();
        match tls::handshake_with(
            stream,
            tls_server_name(target, peer_host),
            &target.tls,
            &ctx.roots,
            &shown,
            deadline,
            scope.tls_sessions.as_ref(),
        )
        .await
        {
            Ok(done) => {
                ctx.record_chain(target, &done.chain);
                progress.latency.tls_ms = Some(started.elapsed().as_millis() as u64);
                progress.tls = Some(done.facts);
                progress.warning = done.warning;
                done.stream
            }
            Err(rejected) => {
                ctx.record_chain(target, &rejected.chain);
                return Session::failed(rejected.failure, progress.latency, rejected.facts);
            }
        }
    } else {
        stream
    };

    let started = Instant::now();
    let outcome = application(stream, &scope, &mut progress).await;
    let Progress {
        tls,
        warning,
        mut latency,
        source_ip,
    } = progress;
    if !matches!(target.protocol, Protocol::Tcp | Protocol::Tls) {
        latency.protocol_ms = Some(started.elapsed().as_millis() as u64);
    }
    match outcome {
        Err(failure) => {
            // A failure after an issuer warning still carries the interception flag.
            let intercepted =
                failure.intercepted || warning.as_ref().is_some_and(|w| w.intercepted);
            let mut session = Session::failed(failure, latency, tls);
            session.intercepted = intercepted;
            session.source_ip = source_ip;
            session
        }
        Ok((stage, detail)) => {
            let (outcome, stage, reason, message, intercepted) = match warning {
                Some(w) => (Outcome::Warn, w.stage, w.reason, w.message, w.intercepted),
                None => (
                    Outcome::Pass,
                    stage,
                    Reason::Reachable,
                    reachable_message(target, &detail, tls.as_ref()),
                    false,
                ),
            };
            Session {
                outcome,
                stage,
                reason,
                message,
                intercepted,
                tls,
                detail,
                latency,
                blocked_by: None,
                source_ip,
            }
        }
    }
}

pub(super) fn reachable_message(
    target: &Target,
    detail: &Option<String>,
    tls: Option<&TlsFacts>,
) -> String {
    let mut message = format!("{} reachable over {}", target.display(), target.protocol);
    if let Some(detail) = detail {
        message.push_str(&format!(": {detail}"));
    }
    if let Some(tls) = tls {
        message.push_str(&format!(
            "; {} certificate issued by {}",
            tls.version, tls.issuer
        ));
    }
    message
}

/// Runs a TLS upgrade on a stream after STARTTLS was accepted.
pub(super) async fn upgrade(
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<BoxStream, Failure> {
    let target = scope.target;
    let started = Instant::now();
    let server_name = tls_server_name(target, scope.peer_host);
    let done = tls::handshake_with(
        stream,
        server_name,
        &target.tls,
        &scope.ctx.roots,
        &target.display(),
        scope.deadline,
        scope.tls_sessions.as_ref(),
    )
    .await
    .map_err(|rejected| {
        scope.ctx.record_chain(target, &rejected.chain);
        progress.tls = rejected.facts;
        rejected.failure
    })?;
    scope.ctx.record_chain(target, &done.chain);
    progress.latency.tls_ms = Some(started.elapsed().as_millis() as u64);
    progress.tls = Some(done.facts);
    progress.warning = done.warning;
    Ok(done.stream)
}

pub(super) fn upgrade_policy(mode: TlsMode) -> Upgrade {
    match mode {
        TlsMode::StartTls => Upgrade::Required,
        TlsMode::Opportunistic => Upgrade::IfOffered,
        TlsMode::Disabled | TlsMode::Implicit => Upgrade::No,
    }
}

/// The protocol stage (and StartTLS where the protocol has it). Returns the stage reached and
/// what it saw.
pub(super) async fn application(
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<(Stage, Option<String>), Failure> {
    let Scope {
        target,
        peer_host,
        ctx,
        deadline,
        ..
    } = *scope;
    let shown = target.display();
    let mode = target.tls.mode;
    match target.protocol {
        Protocol::Tcp => Ok((Stage::Connect, None)),
        Protocol::Ftp | Protocol::Ftps => ftp::session(stream, scope, progress).await,
        // IKE is UDP and never reaches a stream session (see engine).
        Protocol::Ike => Ok((Stage::Protocol, None)),
        Protocol::Tls => Ok((Stage::Tls, None)),
        Protocol::Http | Protocol::Https => {
            let host_header = match target.port {
                80 | 443 => peer_host.to_owned(),
                port => format!("{peer_host}:{port}"),
            };
            let Some(check) = &target.source_ip else {
                let line = protocols::http_get(
                    stream,
                    &host_header,
                    target.http.as_ref(),
                    &shown,
                    deadline,
                )
                .await?;
                return Ok((Stage::Protocol, Some(line)));
            };
            let (line, body) =
                protocols::http_echo(stream, &host_header, target.http.as_ref(), &shown, deadline)
                    .await?;
            let seen = protocols::echoed_address(&body, &check.json_field).map_err(|why| {
                Failure::new(
                    Stage::Protocol,
                    Reason::ProtocolError,
                    format!(
                        "{shown} answered {line} but {why}; point this port at an echo service that answers the caller's address (a bare IP, or JSON with field {})",
                        check.json_field
                    ),
                )
            })?;
            progress.source_ip = Some(seen.to_string());
            source_ip_matches(&shown, seen, check)?;
            Ok((Stage::Protocol, Some(format!("{line}; source {seen}"))))
        }
        Protocol::Smtp | Protocol::Smtps => smtp(stream, scope, progress).await,
        Protocol::Imap | Protocol::Imaps => imap(stream, scope, progress).await,
        Protocol::Pop3 | Protocol::Pop3s => pop3(stream, scope, progress).await,
        Protocol::Ldap | Protocol::Ldaps => {
            let mut conn = LdapConn::new(stream);
            if target.protocol == Protocol::Ldap
                && matches!(mode, TlsMode::StartTls | TlsMode::Opportunistic)
            {
                match conn.start_tls(&shown, deadline).await {
                    Ok(()) => {
                        let stream = upgrade(conn.stream, scope, progress).await?;
                        conn = LdapConn::new(stream);
                    }
                    Err(failure) if mode == TlsMode::StartTls => return Err(failure),
                    // Opportunistic: the refusal leaves the plain session usable, unless an
                    // issuer or pin would then go unchecked.
                    Err(_) => {
                        if let Some(why) = tls_expected(target) {
                            return Err(stripped("StartTLS", &shown, &why));
                        }
                    }
                }
            }
            let ldap = target.ldap.as_ref();
            let (dn, password) = match ldap.and_then(|l| l.bind_secret_ref.as_ref()) {
                Some(secret) => {
                    let creds = ctx.secret(&secret.name, "bindDN", &shown).and_then(|dn| {
                        ctx.secret(&secret.name, "password", &shown)
                            .map(|pw| (dn, pw))
                    });
                    match creds {
                        Ok(creds) => creds,
                        Err(message) => {
                            return Err(Failure::new(
                                Stage::Auth,
                                Reason::CredentialsUnavailable,
                                message,
                            ));
                        }
                    }
                }
                None => (String::new(), String::new()),
            };
            // Without credentials nothing is authenticated: every failure is the protocol's.
            let stage = if dn.is_empty() {
                Stage::Protocol
            } else {
                Stage::Auth
            };
            conn.bind(&dn, &password, &shown, deadline).await?;
            let base = ldap.and_then(|l| l.base_dn.as_deref()).unwrap_or("");
            let what = match ldap.and_then(|l| l.search.as_ref()) {
                Some(search) => {
                    let text = search.filter.as_deref().unwrap_or("(objectClass=*)");
                    let filter = ldap_filter::encode(text).map_err(|problem| {
                        Failure::new(
                            Stage::Protocol,
                            Reason::ProtocolError,
                            format!(
                                "ldap.search.filter {text:?} for {shown} is not a valid LDAP filter: {problem}; fix the filter in the profile"
                            ),
                        )
                    })?;
                    let scope = search.scope.unwrap_or(SearchScope::Subtree);
                    let wanted = u32::try_from(search.min_entries.unwrap_or(1)).unwrap_or(1);
                    let found = conn
                        .search(base, scope, &filter, wanted.max(1), stage, &shown, deadline)
                        .await?;
                    if (found as u32) < wanted {
                        conn.unbind().await;
                        return Err(Failure::new(
                            stage,
                            Reason::TooFewEntries,
                            format!(
                                "searching {base} ({scope:?}) on {shown} for {text} returned {found} entries, fewer than minEntries {wanted}; the bind account may lack read rights on the subtree, or the filter matches nothing"
                            ),
                        ));
                    }
                    format!(
                        "{text} under {base} ({scope:?}) found {found} entries (at most {} asked)",
                        wanted.max(1)
                    )
                }
                None => {
                    conn.search_base(base, stage, &shown, deadline).await?;
                    if base.is_empty() {
                        "root DSE read".to_owned()
                    } else {
                        format!("{base} readable")
                    }
                }
            };
            conn.unbind().await;
            let who = if dn.is_empty() {
                "anonymous bind".to_owned()
            } else {
                format!("bound as {dn}")
            };
            Ok((stage, Some(format!("{who}, {what}"))))
        }
    }
}

/// Whether the address the echo service saw is one of the expected sources.
pub(super) fn source_ip_matches(
    shown: &str,
    seen: std::net::IpAddr,
    check: &SourceIpPlan,
) -> Result<(), Failure> {
    let gateway = if check.egress_gateway && check.gateways > 1 {
        " (the egress gateways): is the CiliumEgressGatewayPolicy selecting this pod, and are its gateway nodes up?"
    } else if check.egress_gateway {
        " (the egress gateway): is the CiliumEgressGatewayPolicy selecting this pod, and is its gateway node up?"
    } else {
        ": check the NAT or egress gateway this traffic should leave through"
    };
    if check.expected.is_empty() && check.gateways > 1 {
        return Err(Failure::new(
            Stage::Protocol,
            Reason::SourceIpMismatch,
            format!(
                "traffic to {shown} leaves as {seen}, and not every one of the {} egress gateways names an egressIP, so there is no address to expect; set egressIP on each of spec.policy.egressGateways, or http.sourceIP.expected on the port",
                check.gateways
            ),
        ));
    }
    if check.expected.is_empty() {
        return Err(Failure::new(
            Stage::Protocol,
            Reason::SourceIpMismatch,
            format!(
                "traffic to {shown} leaves as {seen}, and the profile names no expected source; set http.sourceIP.expected on the port, or, with the CiliumEgressGateway flavor, egressIP on spec.policy.egressGateway (or on every one of spec.policy.egressGateways)"
            ),
        ));
    }
    let matches = check.expected.iter().any(|expected| {
        expected
            .parse::<ipnet::IpNet>()
            .map(|net| net.contains(&seen))
            .or_else(|_| expected.parse::<std::net::IpAddr>().map(|ip| ip == seen))
            .unwrap_or(false)
    });
    if matches {
        return Ok(());
    }
    Err(Failure::new(
        Stage::Protocol,
        Reason::SourceIpMismatch,
        format!(
            "traffic to {shown} leaves as {seen}, expected {}{gateway}",
            check.expected.join(" or ")
        ),
    ))
}

/// Why a port must reach TLS even when its mode would settle for plain: the expectation that
/// only a certificate can satisfy.
pub(super) fn tls_expected(target: &Target) -> Option<String> {
    match (&target.tls.expected_issuer, target.tls.spki_pins.is_empty()) {
        (Some(issuer), _) => Some(format!("an issuer is expected ({issuer})")),
        (None, false) => Some("SPKI pins are expected".to_owned()),
        (None, true) => None,
    }
}

/// The failure of an opportunistic upgrade that had to happen: the plain session would leave
/// the expected issuer or pins unchecked.
pub(super) fn stripped(command: &str, shown: &str, why: &str) -> Failure {
    Failure::new(
        Stage::StartTls,
        Reason::StartTlsNotOffered,
        format!(
            "{shown} did not upgrade with {command}, but TLS was expected because {why}: a downgrade, or a middlebox stripping {command}, would leave the certificate unchecked"
        ),
    )
}

pub(super) fn starttls_injection(target: &str, detail: String) -> Failure {
    Failure::new(
        Stage::StartTls,
        Reason::ProtocolError,
        format!("{target}: {detail}; refusing to upgrade"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(expected: &[&str], gateways: usize) -> SourceIpPlan {
        SourceIpPlan {
            expected: expected.iter().map(|e| e.to_string()).collect(),
            json_field: "ip".into(),
            egress_gateway: gateways > 0,
            gateways,
        }
    }

    #[test]
    fn a_source_ip_matches_any_expected_network_and_a_mismatch_names_every_gateway() {
        let seen: std::net::IpAddr = "192.0.2.12".parse().unwrap();
        let gateways = plan(&["192.0.2.10/32", "192.0.2.12/32"], 2);
        assert!(source_ip_matches("echo:443", seen, &gateways).is_ok());
        let other: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        let failure = source_ip_matches("echo:443", other, &gateways).unwrap_err();
        assert_eq!(failure.reason, Reason::SourceIpMismatch);
        assert_eq!(
            failure.message,
            "traffic to echo:443 leaves as 198.51.100.7, expected 192.0.2.10/32 or 192.0.2.12/32 (the egress gateways): is the CiliumEgressGatewayPolicy selecting this pod, and are its gateway nodes up?"
        );
        let one = source_ip_matches("echo:443", other, &plan(&["192.0.2.10/32"], 1)).unwrap_err();
        assert!(one.message.ends_with("(the egress gateway): is the CiliumEgressGatewayPolicy selecting this pod, and is its gateway node up?"), "{}", one.message);
        // Two ranges the user expects, one gateway: the singular.
        let ranges = plan(&["192.0.2.0/28", "198.51.100.64/28"], 1);
        let failure = source_ip_matches("echo:443", other, &ranges).unwrap_err();
        assert!(
            failure.message.contains("(the egress gateway)"),
            "{}",
            failure.message
        );
        // Several gateways, one of which has no address to expect: what to set.
        let unnamed = source_ip_matches("echo:443", other, &plan(&[], 2)).unwrap_err();
        assert!(
            unnamed
                .message
                .contains("not every one of the 2 egress gateways names an egressIP"),
            "{}",
            unnamed.message
        );
        let nothing = source_ip_matches("echo:443", other, &plan(&[], 0)).unwrap_err();
        assert!(
            nothing.message.ends_with(
                "egressIP on spec.policy.egressGateway (or on every one of spec.policy.egressGateways)"
            ),
            "{}",
            nothing.message
        );
    }
}
