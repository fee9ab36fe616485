//! The probe pipeline for one endpoint×port — DNS, connect (or proxy), StartTLS, TLS, issuer,
//! protocol, auth — and the bounded fan-out over many targets.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::dns::Resolvers;
use super::ldap::LdapConn;
use super::net::{self, BoxStream, Deadline, Failure, ProxyTarget, Wire};
use super::plan::Target;
use super::protocols::{self, MailProtocol, Upgrade};
use super::result::{AddressResult, Latency, Outcome, ProbeResult, Reason, Stage, TlsFacts};
use super::tls::{self, TrustRoots};
use crate::api::{Protocol, TlsMode};

/// Grace on top of a target's timeout before the outer guard cuts a probe off; stages time
/// themselves out first, so this only catches a stage that forgot to.
const GUARD_MARGIN: Duration = Duration::from_millis(500);
const DEFAULT_EHLO_NAME: &str = "netreach.invalid";

/// Settings shared by every probe of a run.
pub struct ProbeContext {
    pub roots: TrustRoots,
    pub resolvers: Resolvers,
    /// Nameservers that override every target's own (`--nameserver`).
    pub nameservers: Vec<String>,
    /// A proxy that overrides every target's own (`--proxy`).
    pub proxy: Option<ProxyTarget>,
    /// Probe only the first address that answers instead of all of them.
    pub first_address_only: bool,
    /// Where Secrets are mounted: `DIR/<secret>/<key>`.
    pub secrets_dir: Option<PathBuf>,
}

impl ProbeContext {
    pub fn new(roots: TrustRoots) -> Self {
        Self {
            roots,
            resolvers: Resolvers::default(),
            nameservers: Vec::new(),
            proxy: None,
            first_address_only: false,
            secrets_dir: None,
        }
    }

    /// Reads one key of a mounted Secret that probing `target` needs.
    fn secret(&self, secret: &str, key: &str, target: &str) -> Result<String, String> {
        self.mounted("Secret", secret, key, target)
            .map(|v| v.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Reads one key of a mounted Secret or ConfigMap (`kind`), as a pod mounts them:
    /// `DIR/<name>/<key>`. Messages never hold the value.
    fn mounted(&self, kind: &str, name: &str, key: &str, target: &str) -> Result<String, String> {
        let Some(dir) = &self.secrets_dir else {
            return Err(format!(
                "probing {target} needs key {key} of {kind} {name}, but no secrets directory is set; pass --secrets-dir DIR holding DIR/{name}/{key}"
            ));
        };
        let path = dir.join(name).join(key);
        std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "probing {target} needs key {key} of {kind} {name}, which cannot be read at {}: {e}; check that {kind} {name} exists with key {key} and is mounted there",
                path.display()
            )
        })
    }

    /// The PEM text of a target's `caBundleRef` when the plan names one the operator has not
    /// already read in (`netreach check` reads it from the secrets directory); None when
    /// there is nothing to read.
    fn ca_bundle(&self, target: &Target) -> Result<Option<String>, Failure> {
        let Some(reference) = &target.tls.ca_bundle_ref else {
            return Ok(None);
        };
        if target.tls.ca_bundle_pem.is_some() {
            return Ok(None);
        }
        let key = reference.key.as_deref().unwrap_or(tls::DEFAULT_BUNDLE_KEY);
        let (kind, name) = match (&reference.config_map, &reference.secret) {
            (Some(name), _) => ("ConfigMap", name),
            (None, Some(name)) => ("Secret", name),
            (None, None) => return Ok(None),
        };
        self.mounted(kind, name, key, &target.display())
            .map(Some)
            .map_err(|message| {
                Failure::new(
                    Stage::Tls,
                    Reason::CaBundleUnavailable,
                    format!(
                        "{message} (caBundleRef: without it the issuer it vouches for is reported as untrusted)"
                    ),
                )
            })
    }
}

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
            "probing {} did not finish within its timeout of {:?}: the server or something in the path holds the exchange open; check the path to it, or raise the endpoint's timeout if the server is just slow",
            target.display(),
            target.timeout()
        ),
    )
}

fn row(
    target: &Target,
    outcome: Outcome,
    stage: Stage,
    reason: Reason,
    message: String,
) -> ProbeResult {
    ProbeResult {
        endpoint: target.endpoint.clone(),
        host: target.host.clone(),
        cidr: target.cidr.clone(),
        port: i32::from(target.port),
        protocol: target.protocol,
        required: target.required,
        outcome,
        stage,
        reason,
        message,
        intercepted: false,
        addresses: Vec::new(),
        latency: Latency::default(),
        tls: None,
        detail: None,
        last_transition_time: None,
        streak: Default::default(),
    }
}

/// What one session (one address, or the proxy tunnel) found.
struct Session {
    outcome: Outcome,
    stage: Stage,
    reason: Reason,
    message: String,
    intercepted: bool,
    tls: Option<TlsFacts>,
    detail: Option<String>,
    latency: Latency,
}

impl Session {
    fn failed(failure: Failure, latency: Latency, tls: Option<TlsFacts>) -> Self {
        Self {
            outcome: Outcome::Fail,
            stage: failure.stage,
            reason: failure.reason,
            message: failure.message,
            intercepted: failure.intercepted,
            tls,
            detail: None,
            latency,
        }
    }
}

async fn probe_inner(target: &Target, ctx: &ProbeContext) -> ProbeResult {
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
                "{shown} is a wildcard used for policy only and cannot be probed; to probe port {} add an endpoint with a concrete host name under {}, such as {example}",
                target.port,
                &host[2..]
            ),
        );
    }
    // A Secret or ConfigMap the TLS stage needs: read it now, so a missing one is told
    // apart from an untrusted issuer.
    let bundle = if target.tls.mode == TlsMode::Disabled {
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
    let proxy = match ctx.proxy.clone().map(Ok).or_else(|| {
        target
            .proxy
            .as_ref()
            .map(|p| proxy_from_spec(p, ctx, &shown))
    }) {
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
        let session = match net::connect_via_proxy(&proxy, &peer_host, target.port, &deadline).await
        {
            Ok(stream) => {
                latency.connect_ms = Some(started.elapsed().as_millis() as u64);
                session(
                    Box::new(stream),
                    target,
                    &peer_host,
                    ctx,
                    &deadline,
                    latency,
                )
                .await
            }
            Err(failure) => Session::failed(failure, latency, None),
        };
        let mut result = from_session(target, session);
        if result.outcome == Outcome::Pass {
            result.message = format!("{} (through proxy {})", result.message, proxy.display());
        }
        return result;
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
                    let mut result = row(
                        target,
                        Outcome::Fail,
                        Stage::Dns,
                        failure.reason,
                        format!("{shown}: {}", failure.message),
                    );
                    result.latency = latency;
                    return result;
                }
            }
        }
        (None, Some(cidr)) => probe_address(cidr).into_iter().collect(),
        (None, None) => Vec::new(),
    };

    let sessions: Vec<(IpAddr, Session)> = if ctx.first_address_only {
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
    aggregate(target, sessions, ctx.first_address_only)
}

async fn address_session(
    address: IpAddr,
    target: &Target,
    peer_host: &str,
    ctx: &ProbeContext,
    deadline: &Deadline,
    mut latency: Latency,
) -> Session {
    let shown = target.display();
    let started = Instant::now();
    match net::connect(SocketAddr::new(address, target.port), &shown, deadline).await {
        Ok(stream) => {
            latency.connect_ms = Some(started.elapsed().as_millis() as u64);
            session(Box::new(stream), target, peer_host, ctx, deadline, latency).await
        }
        Err(failure) => Session::failed(failure, latency, None),
    }
}

/// The first address a CIDR is probed at: the address itself, or the first host of a range.
fn probe_address(cidr: &str) -> Option<IpAddr> {
    if let Ok(ip) = cidr.parse::<IpAddr>() {
        return Some(ip);
    }
    let net: ipnet::IpNet = cidr.parse().ok()?;
    if net.prefix_len() >= net.max_prefix_len() - 1 {
        return Some(net.network());
    }
    net.hosts().next()
}

fn proxy_from_spec(
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
        let unavailable =
            |message| Failure::new(Stage::Proxy, Reason::CredentialsUnavailable, message);
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

fn tls_server_name<'a>(target: &'a Target, peer_host: &'a str) -> &'a str {
    target.tls.server_name.as_deref().unwrap_or(peer_host)
}

/// What a session has gathered so far, carried through the stages.
struct Progress {
    tls: Option<TlsFacts>,
    /// A problem that does not stop the probe (expiry soon, a mismatch set to warn).
    warning: Option<Failure>,
    latency: Latency,
}

/// Where a session runs: the target, the name to verify, shared settings and the deadline.
struct Scope<'a> {
    target: &'a Target,
    peer_host: &'a str,
    ctx: &'a ProbeContext,
    deadline: &'a Deadline,
}

/// Runs the stages after connect on one stream.
async fn session(
    stream: BoxStream,
    target: &Target,
    peer_host: &str,
    ctx: &ProbeContext,
    deadline: &Deadline,
    latency: Latency,
) -> Session {
    let shown = target.display();
    let scope = Scope {
        target,
        peer_host,
        ctx,
        deadline,
    };
    let mut progress = Progress {
        tls: None,
        warning: None,
        latency,
    };

    // Implicit TLS first, for every protocol that has it.
    let stream = if target.tls.mode == TlsMode::Implicit {
        let started = Instant::now();
        match tls::handshake(
            stream,
            tls_server_name(target, peer_host),
            &target.tls,
            &ctx.roots,
            &shown,
            deadline,
        )
        .await
        {
            Ok(done) => {
                progress.latency.tls_ms = Some(started.elapsed().as_millis() as u64);
                progress.tls = Some(done.facts);
                progress.warning = done.warning;
                done.stream
            }
            Err(rejected) => {
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
            }
        }
    }
}

fn reachable_message(target: &Target, detail: &Option<String>, tls: Option<&TlsFacts>) -> String {
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
async fn upgrade(
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<BoxStream, Failure> {
    let target = scope.target;
    let started = Instant::now();
    let server_name = tls_server_name(target, scope.peer_host);
    let done = tls::handshake(
        stream,
        server_name,
        &target.tls,
        &scope.ctx.roots,
        &target.display(),
        scope.deadline,
    )
    .await
    .map_err(|rejected| {
        progress.tls = rejected.facts;
        rejected.failure
    })?;
    progress.latency.tls_ms = Some(started.elapsed().as_millis() as u64);
    progress.tls = Some(done.facts);
    progress.warning = done.warning;
    Ok(done.stream)
}

fn upgrade_policy(mode: TlsMode) -> Upgrade {
    match mode {
        TlsMode::StartTls => Upgrade::Required,
        TlsMode::Opportunistic => Upgrade::IfOffered,
        TlsMode::Disabled | TlsMode::Implicit => Upgrade::No,
    }
}

/// The protocol stage (and StartTLS where the protocol has it). Returns the stage reached and
/// what it saw.
async fn application(
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<(Stage, Option<String>), Failure> {
    let Scope {
        target,
        peer_host,
        ctx,
        deadline,
    } = *scope;
    let shown = target.display();
    let mode = target.tls.mode;
    match target.protocol {
        Protocol::Tcp => Ok((Stage::Connect, None)),
        Protocol::Tls => Ok((Stage::Tls, None)),
        Protocol::Http | Protocol::Https => {
            let host_header = match target.port {
                80 | 443 => peer_host.to_owned(),
                port => format!("{peer_host}:{port}"),
            };
            let line =
                protocols::http_get(stream, &host_header, target.http.as_ref(), &shown, deadline)
                    .await?;
            Ok((Stage::Protocol, Some(line)))
        }
        Protocol::Smtp | Protocol::Smtps => {
            let ehlo_name = target
                .smtp
                .as_ref()
                .and_then(|s| s.ehlo_name.as_deref())
                .unwrap_or(DEFAULT_EHLO_NAME);
            let capabilities =
                mail_session(MailProtocol::Smtp { ehlo_name }, stream, scope, progress).await?;
            let offered: Vec<String> = capabilities
                .iter()
                .filter_map(|c| c.strip_prefix("AUTH="))
                .map(str::to_owned)
                .collect();
            let expected = target
                .smtp
                .as_ref()
                .map(|s| s.expected_auth.as_slice())
                .unwrap_or_default();
            let missing = protocols::missing_items(expected, &offered);
            if !missing.is_empty() {
                return Err(Failure::new(
                    Stage::Auth,
                    Reason::AuthMechanismMissing,
                    format!(
                        "{shown} does not offer AUTH {} (offers: {}); enable them on the mail server{}",
                        missing.join(", "),
                        if offered.is_empty() {
                            "none".into()
                        } else {
                            offered.join(" ")
                        },
                        if progress.tls.is_none() {
                            ", or use STARTTLS: many servers offer AUTH only over TLS"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            let detail = if offered.is_empty() {
                "AUTH not offered".to_owned()
            } else {
                format!("AUTH {}", offered.join(" "))
            };
            let stage = if expected.is_empty() {
                Stage::Protocol
            } else {
                Stage::Auth
            };
            Ok((stage, Some(detail)))
        }
        Protocol::Imap | Protocol::Imaps => {
            let capabilities = mail_session(MailProtocol::Imap, stream, scope, progress).await?;
            check_capabilities(target, &capabilities, &shown)
        }
        Protocol::Pop3 | Protocol::Pop3s => {
            let capabilities = mail_session(MailProtocol::Pop3, stream, scope, progress).await?;
            check_capabilities(target, &capabilities, &shown)
        }
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
            conn.bind(&dn, &password, &shown, deadline).await?;
            let base = ldap.and_then(|l| l.base_dn.as_deref()).unwrap_or("");
            conn.search_base(base, &shown, deadline).await?;
            conn.unbind().await;
            let who = if dn.is_empty() {
                "anonymous bind".to_owned()
            } else {
                format!("bound as {dn}")
            };
            let what = if base.is_empty() {
                "root DSE read".to_owned()
            } else {
                format!("{base} readable")
            };
            Ok((Stage::Protocol, Some(format!("{who}, {what}"))))
        }
    }
}

/// A mail dialogue with its STARTTLS upgrade when the port's TLS mode asks for one; returns
/// the capabilities seen last (after TLS when upgraded).
async fn mail_session(
    protocol: MailProtocol<'_>,
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<Vec<String>, Failure> {
    let Scope {
        target, deadline, ..
    } = *scope;
    let shown = target.display();
    let implicit = matches!(
        target.protocol,
        Protocol::Smtps | Protocol::Imaps | Protocol::Pop3s
    );
    let expected = tls_expected(target);
    let policy = match (implicit, upgrade_policy(target.tls.mode)) {
        (true, _) => Upgrade::No,
        // An issuer or pin can only be checked over TLS: a server that stays plain (or a
        // middlebox that strips STARTTLS from its capabilities) must not pass unchecked.
        (false, Upgrade::IfOffered) if expected.is_some() => Upgrade::Required,
        (false, policy) => policy,
    };
    let dialogue = protocols::open_mail(protocol, Wire::new(stream), policy, &shown, deadline)
        .await
        .map_err(|failure| match &expected {
            Some(why)
                if failure.reason == Reason::StartTlsNotOffered
                    && target.tls.mode == TlsMode::Opportunistic =>
            {
                stripped(protocol.starttls(), &shown, why)
            }
            _ => failure,
        })?;
    let (mut wire, capabilities) = if dialogue.upgrade {
        let stream = dialogue
            .wire
            .into_stream()
            .map_err(|e| starttls_injection(&shown, e))?;
        let mut wire = Wire::new(upgrade(stream, scope, progress).await?);
        let capabilities = protocol.capabilities(&mut wire, &shown, deadline).await?;
        (wire, capabilities)
    } else {
        (dialogue.wire, dialogue.capabilities)
    };
    protocol.close(&mut wire, &shown, deadline).await;
    Ok(capabilities)
}

/// Why a port must reach TLS even when its mode would settle for plain: the expectation that
/// only a certificate can satisfy.
fn tls_expected(target: &Target) -> Option<String> {
    match (&target.tls.expected_issuer, target.tls.spki_pins.is_empty()) {
        (Some(issuer), _) => Some(format!("an issuer is expected ({issuer})")),
        (None, false) => Some("SPKI pins are expected".to_owned()),
        (None, true) => None,
    }
}

/// The failure of an opportunistic upgrade that had to happen: the plain session would leave
/// the expected issuer or pins unchecked.
fn stripped(command: &str, shown: &str, why: &str) -> Failure {
    Failure::new(
        Stage::StartTls,
        Reason::StartTlsNotOffered,
        format!(
            "{shown} did not upgrade with {command}, but TLS was expected because {why}: a downgrade, or a middlebox stripping {command}, would leave the certificate unchecked; make sure the server offers {command} and that nothing in the path removes it (or set tls.mode: Disabled if this port is meant to stay plain)"
        ),
    )
}

fn starttls_injection(target: &str, detail: String) -> Failure {
    Failure::new(
        Stage::StartTls,
        Reason::ProtocolError,
        format!("{target}: {detail}; refusing to upgrade"),
    )
}

fn check_capabilities(
    target: &Target,
    capabilities: &[String],
    shown: &str,
) -> Result<(Stage, Option<String>), Failure> {
    let expected = target
        .mail
        .as_ref()
        .map(|m| m.expected_capabilities.as_slice())
        .unwrap_or_default();
    let missing = protocols::missing_items(expected, capabilities);
    if !missing.is_empty() {
        return Err(Failure::new(
            Stage::Protocol,
            Reason::CapabilityMissing,
            format!(
                "{shown} does not announce {} (announces: {})",
                missing.join(", "),
                capabilities.join(" ")
            ),
        ));
    }
    Ok((
        Stage::Protocol,
        Some(format!("capabilities: {}", capabilities.join(" "))),
    ))
}

fn from_session(target: &Target, session: Session) -> ProbeResult {
    ProbeResult {
        intercepted: session.intercepted,
        latency: session.latency,
        tls: session.tls,
        detail: session.detail,
        ..row(
            target,
            session.outcome,
            session.stage,
            session.reason,
            session.message,
        )
    }
}

/// One row from the per-address sessions. Every address probed: the worst address decides,
/// and the message says how many failed, because one dead address behind a name is exactly
/// what to catch. `first_working` (`--first-address-only`, addresses tried in order until one
/// works): the address that works decides, else the failure of the attempts; the addresses
/// list still shows every attempt.
fn aggregate(
    target: &Target,
    sessions: Vec<(IpAddr, Session)>,
    first_working: bool,
) -> ProbeResult {
    let addresses: Vec<AddressResult> = sessions
        .iter()
        .map(|(address, s)| AddressResult {
            address: address.to_string(),
            outcome: s.outcome,
            stage: s.stage,
            reason: s.reason,
            message: if s.outcome == Outcome::Pass {
                String::new()
            } else {
                s.message.clone()
            },
            total_ms: Some(
                s.latency.connect_ms.unwrap_or(0)
                    + s.latency.tls_ms.unwrap_or(0)
                    + s.latency.protocol_ms.unwrap_or(0),
            ),
        })
        .collect();
    let total = sessions.len();
    let failed = sessions
        .iter()
        .filter(|(_, s)| s.outcome == Outcome::Fail)
        .count();
    let working = sessions
        .iter()
        .position(|(_, s)| s.outcome != Outcome::Fail)
        .filter(|_| first_working);
    let verdict = match working {
        Some(index) => sessions.into_iter().nth(index),
        None => sessions
            .into_iter()
            .max_by_key(|(_, s)| (s.outcome, s.intercepted)),
    };
    let Some((address, verdict)) = verdict else {
        return row(
            target,
            Outcome::Fail,
            Stage::Dns,
            Reason::NoAnswer,
            format!(
                "{} has no address to probe; check the host's A and AAAA records",
                target.display()
            ),
        );
    };
    let mut result = from_session(target, verdict);
    if working.is_some() && failed > 0 {
        result.message = format!(
            "{}; {address} is the first address that works, after {failed} that failed (only the first working address counts with --first-address-only)",
            result.message
        );
    } else if total > 1 && failed > 0 && failed < total {
        result.message = format!(
            "{failed} of {total} addresses fail; {address}: {}",
            result.message
        );
    }
    result.addresses = addresses;
    result
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
            proxy: None,
            dns: None,
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
