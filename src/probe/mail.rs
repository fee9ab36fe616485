//! The mail stages after connect: greeting, capabilities and the STARTTLS upgrade, then, when
//! the port asks for it, the real login and what follows it (SMTP envelope, IMAP EXAMINE,
//! POP3 STAT). The login dialogues themselves are in `login`.

use super::context::ProbeContext;
use super::login::{self, LoginScope, Pop3Login};
use super::net::{BoxStream, Deadline, Failure, Wire};
use super::pipeline::{
    Progress, Scope, starttls_injection, stripped, tls_expected, upgrade, upgrade_policy,
};
use super::plan::Target;
use super::protocols::{self, MailProtocol, Upgrade};
use super::sasl::{Credentials, Mechanism};
use crate::api::endpoint::{MailMechanism, SmtpMechanism};
use crate::api::result::{Reason, Stage};
use crate::api::{Protocol, TlsMode};

const DEFAULT_EHLO_NAME: &str = "netreach.invalid";

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
    ctx: &ProbeContext,
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
pub(super) async fn smtp(
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
    if let Some(login) = &login
        && matches!(login.mechanism, SmtpMechanism::Plain | SmtpMechanism::Login)
    {
        refuse_cleartext(
            target,
            tls,
            protocol,
            login.mechanism_name(),
            &mut session,
            deadline,
        )
        .await?;
    }
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
pub(super) async fn imap(
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
    if let Some(login) = &login
        && matches!(login.mechanism, MailMechanism::Login | MailMechanism::Plain)
    {
        let name = mechanism_name(login.mechanism);
        refuse_cleartext(
            target,
            tls,
            MailProtocol::Imap,
            name,
            &mut session,
            deadline,
        )
        .await?;
    }
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
pub(super) async fn pop3(
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
    if let Some(login) = &login
        && matches!(
            login.mechanism,
            MailMechanism::User | MailMechanism::Login | MailMechanism::Plain
        )
    {
        let name = mechanism_name(login.mechanism);
        refuse_cleartext(
            target,
            tls,
            MailProtocol::Pop3,
            name,
            &mut session,
            deadline,
        )
        .await?;
    }
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

impl Login<SmtpMechanism> {
    fn mechanism_name(&self) -> &'static str {
        sasl_mechanism(self.mechanism).name()
    }
}

/// A login that would send the password as it is (PLAIN, LOGIN, USER) happens in the clear
/// only when the port says so (`tls.mode: Disabled`): an opportunistic port whose server
/// offers no STARTTLS (or whose STARTTLS a middlebox strips) fails instead, and nothing is sent.
async fn refuse_cleartext(
    target: &Target,
    tls: bool,
    protocol: MailProtocol<'_>,
    mechanism: &str,
    session: &mut MailSession,
    deadline: &Deadline,
) -> Result<(), Failure> {
    if tls || target.tls.mode == TlsMode::Disabled {
        return Ok(());
    }
    let shown = target.display();
    let command = protocol.starttls();
    protocol.close(&mut session.wire, &shown, deadline).await;
    Err(Failure::new(
        Stage::StartTls,
        Reason::StartTlsNotOffered,
        format!(
            "{shown} does not offer {command}, so the {mechanism} login would send the password unencrypted; it was not sent: enable {command} on the server (or check that nothing in the path strips it), use a challenge mechanism such as CRAM-MD5, or set tls.mode: Disabled on the port to allow a cleartext login"
        ),
    ))
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
