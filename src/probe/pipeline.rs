//! The stages after connect on one stream: StartTLS, TLS, issuer, then the application
//! protocol and its authentication, carrying what each stage found.

use std::time::Instant;

use super::aggregate::*;
use super::context::ProbeContext;
use super::engine::*;
use super::ldap::LdapConn;
use super::ldap_filter;
use super::login::{self, LoginScope, Pop3Login};
use super::net::{BoxStream, Deadline, Failure, Wire};
use super::plan::Target;
use super::protocols::{self, MailProtocol, Upgrade};
use super::sasl::{Credentials, Mechanism};
use super::tls::{self};
use crate::api::endpoint::{MailMechanism, SearchScope, SmtpMechanism};
use crate::api::result::{Latency, Outcome, Reason, Stage, TlsFacts};
use crate::api::{Protocol, TlsMode};

const DEFAULT_EHLO_NAME: &str = "netreach.invalid";

/// What a session has gathered so far, carried through the stages.
pub(super) struct Progress {
    pub(super) tls: Option<TlsFacts>,
    /// A problem that does not stop the probe (expiry soon, a mismatch set to warn).
    pub(super) warning: Option<Failure>,
    pub(super) latency: Latency,
}

/// Where a session runs: the target, the name to verify, shared settings and the deadline.
pub(super) struct Scope<'a> {
    pub(super) target: &'a Target,
    pub(super) peer_host: &'a str,
    pub(super) ctx: &'a ProbeContext,
    pub(super) deadline: &'a Deadline,
}

/// Runs the stages after connect on one stream.
pub(super) async fn session(
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

/// A port's login: the mechanism, the credentials, and the Secret they came from.
struct Login<M> {
    mechanism: M,
    credentials: Credentials,
    secret: String,
}

/// Reads `username`, `password` and the optional `domain` of a credentials Secret. Messages
/// name the Secret and key, never a value.
fn read_login<M>(
    mechanism: M,
    secret: &str,
    ctx: &super::context::ProbeContext,
    shown: &str,
) -> Result<Login<M>, Failure> {
    let unavailable = |message| Failure::new(Stage::Auth, Reason::CredentialsUnavailable, message);
    let username = ctx.secret(secret, "username", shown).map_err(unavailable)?;
    let password = ctx.secret(secret, "password", shown).map_err(unavailable)?;
    let domain = ctx
        .optional_secret(secret, "domain", shown)
        .map_err(unavailable)?
        .unwrap_or_default();
    Ok(Login {
        mechanism,
        credentials: Credentials {
            username,
            password,
            domain,
        },
        secret: secret.to_owned(),
    })
}

fn sasl_mechanism(mechanism: SmtpMechanism) -> Mechanism {
    match mechanism {
        SmtpMechanism::Plain => Mechanism::Plain,
        SmtpMechanism::Login => Mechanism::Login,
        SmtpMechanism::CramMd5 => Mechanism::CramMd5,
        SmtpMechanism::Ntlm => Mechanism::Ntlm,
    }
}

fn mechanism_name(mechanism: MailMechanism) -> &'static str {
    match mechanism {
        MailMechanism::Login => "LOGIN",
        MailMechanism::Plain => "PLAIN",
        MailMechanism::CramMd5 => "CRAM-MD5",
        MailMechanism::Ntlm => "NTLM",
        MailMechanism::Apop => "APOP",
        MailMechanism::User => "USER",
    }
}

fn plural(count: u64, what: &str) -> String {
    if count == 1 {
        format!("1 {what}")
    } else {
        format!("{count} {what}s")
    }
}

/// SMTP: EHLO and the AUTH mechanisms offered, then the login and the envelope when the port
/// asks for them. Never DATA.
async fn smtp(
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<(Stage, Option<String>), Failure> {
    let Scope {
        target,
        ctx,
        deadline,
        ..
    } = *scope;
    let shown = target.display();
    let smtp = target.smtp.as_ref();
    let ehlo_name = smtp
        .and_then(|s| s.ehlo_name.as_deref())
        .unwrap_or(DEFAULT_EHLO_NAME);
    let login = smtp
        .and_then(|s| s.auth.as_ref())
        .map(|auth| {
            read_login(
                auth.mechanism,
                &auth.credentials_secret_ref.name,
                ctx,
                &shown,
            )
        })
        .transpose()?;
    let protocol = MailProtocol::Smtp { ehlo_name };
    let mut session = mail_session(protocol, stream, scope, progress).await?;
    let tls = progress.tls.is_some();
    let outcome = async {
        let offered: Vec<String> = session
            .capabilities
            .iter()
            .filter_map(|c| c.strip_prefix("AUTH="))
            .map(str::to_owned)
            .collect();
        let expected = smtp.map(|s| s.expected_auth.as_slice()).unwrap_or_default();
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
                    if tls {
                        ""
                    } else {
                        ", or use STARTTLS: many servers offer AUTH only over TLS"
                    }
                ),
            ));
        }
        let mut detail = if offered.is_empty() {
            "AUTH not offered".to_owned()
        } else {
            format!("AUTH {}", offered.join(" "))
        };
        let mut stage = if expected.is_empty() {
            Stage::Protocol
        } else {
            Stage::Auth
        };
        if let Some(login) = &login {
            let mechanism = sasl_mechanism(login.mechanism);
            let login_scope = LoginScope {
                target: &shown,
                deadline,
                tls,
                secret: &login.secret,
            };
            login::smtp_auth(
                &mut session.wire,
                mechanism,
                &login.credentials,
                &offered,
                &login_scope,
            )
            .await?;
            stage = Stage::Auth;
            detail = format!(
                "logged in as {} with AUTH {mechanism}",
                login.credentials.username
            );
        }
        if let Some(envelope) = smtp.and_then(|s| s.envelope.as_ref()) {
            let login_scope = LoginScope {
                target: &shown,
                deadline,
                tls,
                secret: "",
            };
            let envelope_stage = if login.is_some() {
                Stage::Auth
            } else {
                Stage::Protocol
            };
            let accepted = login::smtp_envelope(
                &mut session.wire,
                &envelope.from,
                &envelope.to,
                envelope_stage,
                &login_scope,
            )
            .await?;
            detail = format!("{detail}; {accepted}");
        }
        Ok((stage, Some(detail)))
    }
    .await;
    protocol.close(&mut session.wire, &shown, deadline).await;
    outcome
}

/// IMAP: capabilities, then LOGIN or AUTHENTICATE and EXAMINE of the mailbox when the port
/// has `mail.auth`.
async fn imap(
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<(Stage, Option<String>), Failure> {
    let Scope {
        target,
        ctx,
        deadline,
        ..
    } = *scope;
    let shown = target.display();
    let mail = target.mail.as_ref();
    let login = mail
        .and_then(|m| m.auth.as_ref())
        .map(|auth| {
            read_login(
                auth.mechanism,
                &auth.credentials_secret_ref.name,
                ctx,
                &shown,
            )
        })
        .transpose()?;
    let mut session = mail_session(MailProtocol::Imap, stream, scope, progress).await?;
    let tls = progress.tls.is_some();
    let outcome = async {
        let checked = check_capabilities(target, &session.capabilities, &shown)?;
        let Some(login) = &login else {
            return Ok(checked);
        };
        let mechanism = match login.mechanism {
            MailMechanism::Login => None,
            MailMechanism::Plain => Some(Mechanism::Plain),
            MailMechanism::CramMd5 => Some(Mechanism::CramMd5),
            MailMechanism::Ntlm => Some(Mechanism::Ntlm),
            MailMechanism::Apop | MailMechanism::User => {
                return Err(pop3_only(login.mechanism, &shown));
            }
        };
        let login_scope = LoginScope {
            target: &shown,
            deadline,
            tls,
            secret: &login.secret,
        };
        login::imap_login(
            &mut session.wire,
            mechanism,
            &login.credentials,
            &session.capabilities,
            &login_scope,
        )
        .await?;
        let mailbox = mail.and_then(|m| m.mailbox.as_deref()).unwrap_or("INBOX");
        let count = login::imap_examine(&mut session.wire, mailbox, &login_scope).await?;
        Ok((
            Stage::Auth,
            Some(format!(
                "logged in as {} with {}; {mailbox} holds {}",
                login.credentials.username,
                mechanism_name(login.mechanism),
                plural(count, "message")
            )),
        ))
    }
    .await;
    MailProtocol::Imap
        .close(&mut session.wire, &shown, deadline)
        .await;
    outcome
}

/// POP3: capabilities, then USER/PASS, APOP or AUTH and STAT when the port has `mail.auth`.
/// Never RETR, never DELE.
async fn pop3(
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<(Stage, Option<String>), Failure> {
    let Scope {
        target,
        ctx,
        deadline,
        ..
    } = *scope;
    let shown = target.display();
    let login = target
        .mail
        .as_ref()
        .and_then(|m| m.auth.as_ref())
        .map(|auth| {
            read_login(
                auth.mechanism,
                &auth.credentials_secret_ref.name,
                ctx,
                &shown,
            )
        })
        .transpose()?;
    let mut session = mail_session(MailProtocol::Pop3, stream, scope, progress).await?;
    let tls = progress.tls.is_some();
    let outcome = async {
        let checked = check_capabilities(target, &session.capabilities, &shown)?;
        let Some(login) = &login else {
            return Ok(checked);
        };
        let how = match login.mechanism {
            MailMechanism::User => Pop3Login::User,
            MailMechanism::Apop => Pop3Login::Apop,
            MailMechanism::Login => Pop3Login::Sasl(Mechanism::Login),
            MailMechanism::Plain => Pop3Login::Sasl(Mechanism::Plain),
            MailMechanism::CramMd5 => Pop3Login::Sasl(Mechanism::CramMd5),
            MailMechanism::Ntlm => Pop3Login::Sasl(Mechanism::Ntlm),
        };
        let login_scope = LoginScope {
            target: &shown,
            deadline,
            tls,
            secret: &login.secret,
        };
        login::pop3_login(
            &mut session.wire,
            how,
            &login.credentials,
            &session.greeting,
            &session.capabilities,
            &login_scope,
        )
        .await?;
        let count = login::pop3_stat(&mut session.wire, &login_scope).await?;
        Ok((
            Stage::Auth,
            Some(format!(
                "logged in as {} with {}; the mailbox holds {}",
                login.credentials.username,
                mechanism_name(login.mechanism),
                plural(count, "message")
            )),
        ))
    }
    .await;
    MailProtocol::Pop3
        .close(&mut session.wire, &shown, deadline)
        .await;
    outcome
}

/// APOP or USER on an IMAP port, which the schema refuses; a plan written by hand may not.
fn pop3_only(mechanism: MailMechanism, shown: &str) -> Failure {
    Failure::new(
        Stage::Auth,
        Reason::MechanismNotOffered,
        format!(
            "{shown} speaks IMAP, which has no {} login; set mail.auth.mechanism to LOGIN, PLAIN, CRAM-MD5 or NTLM in the profile",
            mechanism_name(mechanism)
        ),
    )
}

/// A mail session after greeting, capabilities and the STARTTLS upgrade.
pub(super) struct MailSession {
    pub(super) wire: Wire,
    pub(super) greeting: String,
    /// Capabilities seen last (after TLS when upgraded).
    pub(super) capabilities: Vec<String>,
}

/// A mail dialogue with its STARTTLS upgrade when the port's TLS mode asks for one; the
/// caller continues on it and says goodbye.
pub(super) async fn mail_session(
    protocol: MailProtocol<'_>,
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<MailSession, Failure> {
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
    let greeting = dialogue.greeting;
    let (wire, capabilities) = if dialogue.upgrade {
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
    Ok(MailSession {
        wire,
        greeting,
        capabilities,
    })
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
            "{shown} did not upgrade with {command}, but TLS was expected because {why}: a downgrade, or a middlebox stripping {command}, would leave the certificate unchecked; make sure the server offers {command} and that nothing in the path removes it (or set tls.mode: Disabled if this port is meant to stay plain)"
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

pub(super) fn check_capabilities(
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
