//! The authenticated mail transactions: SMTP AUTH and the envelope (MAIL FROM, RCPT TO, RSET:
//! never DATA), IMAP login and EXAMINE, POP3 login and STAT (never RETR or DELE). Server
//! replies are quoted scrubbed of everything sent, so no credential reaches a message.

use base64::Engine as _;

use super::net::{Deadline, Failure, MAX_REPLY_LINES, Wire};
use super::protocols::{imap_tagged, line, send, smtp_reply};
use super::sasl::{self, Credentials, Mechanism, SaslClient};
use crate::api::result::{Reason, Stage};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Most challenge rounds one login may take (NTLM needs two, LOGIN two).
const MAX_ROUNDS: usize = 8;

/// A server reply as quoted in messages: enough for a rejection's reason, bounded.
fn truncate(text: &str) -> String {
    const QUOTED: usize = 240;
    if text.chars().count() <= QUOTED {
        text.to_owned()
    } else {
        text.chars().take(QUOTED).chain("…".chars()).collect()
    }
}

/// Where the login runs and what protects it.
pub struct LoginScope<'a> {
    pub target: &'a str,
    pub deadline: &'a Deadline,
    /// The session is encrypted (implicit TLS, or after STARTTLS).
    pub tls: bool,
    /// The Secret the credentials come from, for messages.
    pub secret: &'a str,
}

impl LoginScope<'_> {
    fn fail(&self, reason: Reason, message: String) -> Failure {
        Failure::new(Stage::Auth, reason, message)
    }

    fn not_offered(&self, what: &str, offered: &[String]) -> Failure {
        let offered = if offered.is_empty() {
            "none".to_owned()
        } else {
            offered.join(" ")
        };
        self.fail(
            Reason::MechanismNotOffered,
            format!(
                "{} does not offer {what} (offers: {offered}); enable {what} on the server, or set the mechanism the server offers in the port's auth",
                self.target
            ),
        )
    }

    fn requires_tls(&self, what: &str, reply: &str) -> Failure {
        self.fail(
            Reason::AuthRequiresTls,
            format!(
                "{} refuses {what} before TLS: {}; set tls.mode: StartTLS on the port (or use the implicit-TLS port) so the login is encrypted",
                self.target,
                truncate(reply)
            ),
        )
    }

    fn refused(&self, what: &str, user: &str, reply: &str) -> Failure {
        self.fail(
            Reason::AuthFailed,
            format!(
                "{} refused the {what} login as {user}: {}; check the username and password in Secret {} (an expired or changed password, or a locked account, looks the same)",
                self.target,
                truncate(reply),
                self.secret
            ),
        )
    }
}

/// Whether a refusal says the login needs TLS (SMTP 530/538, IMAP PRIVACYREQUIRED, dovecot's
/// "disallowed on non-secure connections").
fn says_tls_required(code: Option<u16>, reply: &str) -> bool {
    let text = reply.to_ascii_lowercase();
    matches!(code, Some(530 | 538))
        || [
            "starttls",
            "tls",
            "ssl",
            "encryption",
            "privacyrequired",
            "non-secure",
        ]
        .iter()
        .any(|word| text.contains(word))
}

/// The protocol dialects of a SASL exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Smtp,
    Imap,
    Pop3,
}

/// What the server answered to one step of a login.
enum Answer {
    /// A challenge (base64-decoded).
    Challenge(Vec<u8>),
    /// The final answer: accepted or not, with the reply as shown (code and text).
    Done {
        accepted: bool,
        code: Option<u16>,
        text: String,
    },
}

const IMAP_AUTH_TAG: &str = "a3";

async fn read_answer(
    wire: &mut Wire,
    dialect: Dialect,
    scope: &LoginScope<'_>,
) -> Result<Answer, Failure> {
    let (target, deadline) = (scope.target, scope.deadline);
    let decode = |text: &str| {
        B64.decode(text.trim()).map_err(|_| {
            Failure::new(
                Stage::Auth,
                Reason::ProtocolError,
                format!(
                    "{target} sent a login challenge that is not base64: {:?}",
                    truncate(text)
                ),
            )
        })
    };
    match dialect {
        Dialect::Smtp => {
            let (code, lines) = smtp_reply(
                wire,
                target,
                "answer to AUTH",
                Stage::Auth,
                Reason::ResponseTimeout,
                deadline,
            )
            .await?;
            if code == 334 {
                return Ok(Answer::Challenge(decode(
                    lines.first().map(String::as_str).unwrap_or(""),
                )?));
            }
            Ok(Answer::Done {
                accepted: code == 235,
                code: Some(code),
                text: format!("{code} {}", lines.join(" ")),
            })
        }
        Dialect::Imap => {
            for _ in 0..MAX_REPLY_LINES {
                let text = line(
                    wire,
                    Stage::Auth,
                    Reason::ResponseTimeout,
                    target,
                    "answer to AUTHENTICATE",
                    deadline,
                )
                .await?;
                if let Some(challenge) = text.strip_prefix('+') {
                    return Ok(Answer::Challenge(decode(challenge)?));
                }
                if let Some(rest) = text.strip_prefix(&format!("{IMAP_AUTH_TAG} ")) {
                    return Ok(Answer::Done {
                        accepted: rest.starts_with("OK"),
                        code: None,
                        text: rest.to_owned(),
                    });
                }
                // Untagged lines (a CAPABILITY update, an ALERT) before the completion.
            }
            Err(Failure::new(
                Stage::Auth,
                Reason::ProtocolError,
                format!("{target} sent an endless IMAP answer to the login"),
            ))
        }
        Dialect::Pop3 => {
            let text = line(
                wire,
                Stage::Auth,
                Reason::ResponseTimeout,
                target,
                "answer to the login",
                deadline,
            )
            .await?;
            if text.starts_with("+OK") || text.starts_with("-ERR") || !text.starts_with('+') {
                return Ok(Answer::Done {
                    accepted: text.starts_with("+OK"),
                    code: None,
                    text,
                });
            }
            Ok(Answer::Challenge(decode(&text[1..])?))
        }
    }
}

/// Runs one SASL mechanism to its end. `advertised`: the server lists the mechanism; when it
/// does not, a plain session still asks (sending no credential) to tell "needs TLS" apart.
async fn sasl_login(
    wire: &mut Wire,
    dialect: Dialect,
    mechanism: Mechanism,
    credentials: &Credentials,
    advertised: bool,
    offered: &[String],
    scope: &LoginScope<'_>,
) -> Result<(), Failure> {
    let what = format!("AUTH {mechanism}");
    if !advertised && scope.tls {
        return Err(scope.not_offered(&what, offered));
    }
    let command = match dialect {
        Dialect::Smtp | Dialect::Pop3 => format!("AUTH {mechanism}"),
        Dialect::Imap => format!("{IMAP_AUTH_TAG} AUTHENTICATE {mechanism}"),
    };
    send(wire, &command, Stage::Auth, scope.target, scope.deadline).await?;
    let mut client = SaslClient::new(mechanism, credentials);
    for _ in 0..MAX_ROUNDS {
        match read_answer(wire, dialect, scope).await? {
            Answer::Challenge(challenge) => {
                if !advertised {
                    // The server would take it after all; nothing was sent yet, so cancel.
                    let _ = send(wire, "*", Stage::Auth, scope.target, scope.deadline).await;
                    return Err(scope.not_offered(&what, offered));
                }
                match client.respond(&challenge) {
                    Ok(answer) => {
                        send(
                            wire,
                            &B64.encode(answer),
                            Stage::Auth,
                            scope.target,
                            scope.deadline,
                        )
                        .await?
                    }
                    Err(problem) => {
                        let _ = send(wire, "*", Stage::Auth, scope.target, scope.deadline).await;
                        return Err(Failure::new(
                            Stage::Auth,
                            Reason::ProtocolError,
                            format!(
                                "{} sent a {mechanism} challenge this probe cannot answer: {problem}",
                                scope.target
                            ),
                        ));
                    }
                }
            }
            Answer::Done {
                accepted,
                code,
                text,
            } => {
                let text = sasl::scrub(&text, &client.secrets());
                if accepted {
                    return Ok(());
                }
                if !scope.tls && says_tls_required(code, &text) {
                    return Err(scope.requires_tls(&what, &text));
                }
                if !advertised || code == Some(504) {
                    return Err(scope.not_offered(&what, offered));
                }
                return Err(scope.refused(mechanism.name(), &credentials.username, &text));
            }
        }
    }
    Err(Failure::new(
        Stage::Auth,
        Reason::ProtocolError,
        format!(
            "{} kept challenging the {mechanism} login past {MAX_ROUNDS} rounds",
            scope.target
        ),
    ))
}

/// SMTP: AUTH with `mechanism`; `offered` are the mechanisms of the last EHLO.
pub async fn smtp_auth(
    wire: &mut Wire,
    mechanism: Mechanism,
    credentials: &Credentials,
    offered: &[String],
    scope: &LoginScope<'_>,
) -> Result<(), Failure> {
    let advertised = offered.iter().any(|m| m == mechanism.name());
    sasl_login(
        wire,
        Dialect::Smtp,
        mechanism,
        credentials,
        advertised,
        offered,
        scope,
    )
    .await
}

/// SMTP: MAIL FROM and every RCPT TO, then RSET. Never DATA. Returns what was accepted.
pub async fn smtp_envelope(
    wire: &mut Wire,
    from: &str,
    to: &[String],
    stage: Stage,
    scope: &LoginScope<'_>,
) -> Result<String, Failure> {
    let (target, deadline) = (scope.target, scope.deadline);
    let mut ask = async |command: String, waiting_for: &str| {
        send(wire, &command, stage, target, deadline).await?;
        smtp_reply(
            wire,
            target,
            waiting_for,
            stage,
            Reason::ResponseTimeout,
            deadline,
        )
        .await
        .map(|(code, lines)| (code, format!("{code} {}", lines.join(" "))))
    };
    let (code, reply) = ask(format!("MAIL FROM:<{from}>"), "answer to MAIL FROM").await?;
    if code != 250 {
        let hint = if code == 530 && !says_tls_required(None, &reply) {
            "the relay requires a login first: set smtp.auth on the port"
        } else if code == 530 {
            "the relay requires TLS first: set tls.mode: StartTLS on the port"
        } else {
            "allow this sender on the relay, or fix smtp.envelope.from"
        };
        return Err(Failure::new(
            stage,
            Reason::SenderRejected,
            format!(
                "{target} refused the sender MAIL FROM:<{from}>: {}; {hint}",
                truncate(&reply)
            ),
        ));
    }
    let mut refused = Vec::new();
    for rcpt in to {
        let (code, reply) = ask(format!("RCPT TO:<{rcpt}>"), "answer to RCPT TO").await?;
        if !matches!(code, 250 | 251) {
            refused.push(format!("RCPT TO:<{rcpt}>: {}", truncate(&reply)));
        }
    }
    // Resets the transaction; its answer does not change the verdict.
    let _ = ask("RSET".to_owned(), "answer to RSET").await;
    if !refused.is_empty() {
        return Err(Failure::new(
            stage,
            Reason::RecipientRejected,
            format!(
                "{target} refused {} of {} recipients from <{from}>: {}; allow the sender to relay to them, or fix smtp.envelope.to",
                refused.len(),
                to.len(),
                refused.join("; ")
            ),
        ));
    }
    Ok(format!(
        "MAIL FROM <{from}> and RCPT TO {} accepted (no message sent)",
        to.iter()
            .map(|t| format!("<{t}>"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// An IMAP quoted string; None when the text holds a character a quoted string cannot carry.
fn imap_quoted(text: &str) -> Option<String> {
    if text.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(format!(
        "\"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// IMAP: LOGIN (the command) or AUTHENTICATE with a SASL mechanism.
pub async fn imap_login(
    wire: &mut Wire,
    mechanism: Option<Mechanism>,
    credentials: &Credentials,
    capabilities: &[String],
    scope: &LoginScope<'_>,
) -> Result<(), Failure> {
    let offered: Vec<String> = capabilities
        .iter()
        .filter(|c| c.starts_with("AUTH=") || *c == "LOGINDISABLED")
        .cloned()
        .collect();
    if let Some(mechanism) = mechanism {
        let advertised = capabilities
            .iter()
            .any(|c| c.strip_prefix("AUTH=") == Some(mechanism.name()));
        return sasl_login(
            wire,
            Dialect::Imap,
            mechanism,
            credentials,
            advertised,
            &offered,
            scope,
        )
        .await;
    }
    if capabilities.iter().any(|c| c == "LOGINDISABLED") {
        return Err(if scope.tls {
            scope.not_offered("LOGIN", &offered)
        } else {
            scope.requires_tls("LOGIN", "the server announces LOGINDISABLED")
        });
    }
    let (Some(user), Some(pass)) = (
        imap_quoted(&credentials.username),
        imap_quoted(&credentials.password),
    ) else {
        return Err(scope.fail(
            Reason::CredentialsUnavailable,
            format!(
                "the username or password in Secret {} holds a line break or control character, which IMAP LOGIN cannot send; fix the Secret or use mechanism PLAIN",
                scope.secret
            ),
        ));
    };
    let secrets = vec![credentials.password.clone(), pass.clone()];
    send(
        wire,
        &format!("{IMAP_AUTH_TAG} LOGIN {user} {pass}"),
        Stage::Auth,
        scope.target,
        scope.deadline,
    )
    .await?;
    let (done, _) = imap_tagged(
        wire,
        IMAP_AUTH_TAG,
        scope.target,
        Stage::Auth,
        scope.deadline,
    )
    .await?;
    let text = sasl::scrub(&done[IMAP_AUTH_TAG.len() + 1..], &secrets);
    if text.starts_with("OK") {
        return Ok(());
    }
    if !scope.tls && says_tls_required(None, &text) {
        return Err(scope.requires_tls("LOGIN", &text));
    }
    Err(scope.refused("LOGIN", &credentials.username, &text))
}

/// IMAP: EXAMINE (read-only) the mailbox; returns its message count.
pub async fn imap_examine(
    wire: &mut Wire,
    mailbox: &str,
    scope: &LoginScope<'_>,
) -> Result<u64, Failure> {
    let Some(quoted) = imap_quoted(mailbox) else {
        return Err(scope.fail(
            Reason::MailboxNotFound,
            format!(
                "mail.mailbox {mailbox:?} holds a control character; fix the mailbox name in the profile"
            ),
        ));
    };
    send(
        wire,
        &format!("a4 EXAMINE {quoted}"),
        Stage::Auth,
        scope.target,
        scope.deadline,
    )
    .await?;
    let (done, untagged) =
        imap_tagged(wire, "a4", scope.target, Stage::Auth, scope.deadline).await?;
    if !done.starts_with("a4 OK") {
        return Err(scope.fail(
            Reason::MailboxNotFound,
            format!(
                "{} cannot open mailbox {mailbox:?} for the logged-in account: {}; check mail.mailbox in the profile (names are case-sensitive except INBOX) and that the account may read it",
                scope.target,
                truncate(&done[3..])
            ),
        ));
    }
    Ok(untagged
        .iter()
        .filter_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
        .next_back()
        .unwrap_or(0))
}

/// How a POP3 login is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pop3Login {
    User,
    Apop,
    Sasl(Mechanism),
}

/// POP3: USER/PASS, APOP or AUTH. `capabilities` are the CAPA lines (empty when the server
/// has no CAPA: then everything is tried).
pub async fn pop3_login(
    wire: &mut Wire,
    login: Pop3Login,
    credentials: &Credentials,
    greeting: &str,
    capabilities: &[String],
    scope: &LoginScope<'_>,
) -> Result<(), Failure> {
    let sasl_offered: Vec<String> = capabilities
        .iter()
        .filter_map(|c| c.strip_prefix("SASL"))
        .flat_map(|rest| rest.split_whitespace().map(str::to_owned))
        .collect();
    let mut offered: Vec<String> = sasl_offered.iter().map(|m| format!("AUTH {m}")).collect();
    if capabilities.iter().any(|c| c == "USER") {
        offered.push("USER".into());
    }
    if sasl::apop_timestamp(greeting).is_some() {
        offered.push("APOP".into());
    }
    match login {
        Pop3Login::Sasl(mechanism) => {
            let advertised =
                capabilities.is_empty() || sasl_offered.iter().any(|m| m == mechanism.name());
            sasl_login(
                wire,
                Dialect::Pop3,
                mechanism,
                credentials,
                advertised,
                &offered,
                scope,
            )
            .await
        }
        Pop3Login::Apop => {
            let Some(stamp) = sasl::apop_timestamp(greeting) else {
                return Err(scope.not_offered("APOP (its greeting has no <timestamp>)", &offered));
            };
            let digest = sasl::apop(stamp, &credentials.password);
            let secrets = vec![credentials.password.clone(), digest.clone()];
            let reply = pop3_ask(
                wire,
                &format!("APOP {} {digest}", credentials.username),
                scope,
            )
            .await?;
            let reply = sasl::scrub(&reply, &secrets);
            if reply.starts_with("+OK") {
                Ok(())
            } else {
                Err(scope.refused("APOP", &credentials.username, &reply))
            }
        }
        Pop3Login::User => {
            let advertised = capabilities.is_empty() || capabilities.iter().any(|c| c == "USER");
            if !advertised && scope.tls {
                return Err(scope.not_offered("USER", &offered));
            }
            let reply = pop3_ask(wire, &format!("USER {}", credentials.username), scope).await?;
            if !reply.starts_with("+OK") {
                if !scope.tls && says_tls_required(None, &reply) {
                    return Err(scope.requires_tls("USER", &reply));
                }
                return Err(scope.refused("USER", &credentials.username, &reply));
            }
            let secrets = vec![credentials.password.clone()];
            let reply = pop3_ask(wire, &format!("PASS {}", credentials.password), scope).await?;
            let reply = sasl::scrub(&reply, &secrets);
            if reply.starts_with("+OK") {
                Ok(())
            } else if !scope.tls && says_tls_required(None, &reply) {
                Err(scope.requires_tls("USER/PASS", &reply))
            } else {
                Err(scope.refused("USER/PASS", &credentials.username, &reply))
            }
        }
    }
}

async fn pop3_ask(
    wire: &mut Wire,
    command: &str,
    scope: &LoginScope<'_>,
) -> Result<String, Failure> {
    send(wire, command, Stage::Auth, scope.target, scope.deadline).await?;
    line(
        wire,
        Stage::Auth,
        Reason::ResponseTimeout,
        scope.target,
        "answer to the login",
        scope.deadline,
    )
    .await
}

/// POP3: STAT; returns the message count. Never RETR, never DELE.
pub async fn pop3_stat(wire: &mut Wire, scope: &LoginScope<'_>) -> Result<u64, Failure> {
    let reply = pop3_ask(wire, "STAT", scope).await?;
    reply
        .strip_prefix("+OK ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Failure::new(
                Stage::Auth,
                Reason::ProtocolError,
                format!(
                    "{} answered STAT with {:?} after the login; the mailbox may be locked by another session",
                    scope.target,
                    truncate(&reply)
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_refusals_are_told_apart_from_wrong_passwords() {
        assert!(says_tls_required(
            Some(538),
            "538 5.7.11 Encryption required for requested authentication mechanism"
        ));
        assert!(says_tls_required(
            None,
            "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
        ));
        assert!(!says_tls_required(
            Some(535),
            "535 5.7.8 Authentication credentials invalid"
        ));
        assert!(!says_tls_required(
            None,
            "NO [AUTHENTICATIONFAILED] Authentication failed."
        ));
    }

    #[test]
    fn imap_quoting_escapes_and_refuses_line_breaks() {
        assert_eq!(imap_quoted(r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert_eq!(imap_quoted("a\r\nb"), None);
    }
}
