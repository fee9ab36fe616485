//! Application stages: HTTP GET, the SMTP/IMAP/POP3 dialogues with their STARTTLS upgrades,
//! and LDAP (StartTLS, simple bind, base search). Every read is bounded in size and time.

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::net::{BoxStream, Deadline, Failure, MAX_REPLY_LINES, Wire};
use super::result::{Reason, Stage};
use crate::api::endpoint::HttpExpectation;

/// Largest response head (status line and headers) accepted from an HTTP server.
const MAX_HTTP_HEAD: usize = 64 * 1024;

fn io_failure(stage: Stage, target: &str, what: &str, error: impl std::fmt::Display) -> Failure {
    Failure::new(
        stage,
        Reason::ProtocolError,
        format!("{what} with {target} failed: {error}; the port may speak another protocol"),
    )
}

/// GETs the path and checks the status; returns the status line.
pub async fn http_get(
    stream: BoxStream,
    host_header: &str,
    expectation: Option<&HttpExpectation>,
    target: &str,
    deadline: &Deadline,
) -> Result<String, Failure> {
    let path = expectation.and_then(|e| e.path.as_deref()).unwrap_or("/");
    let host = expectation
        .and_then(|e| e.host_header.as_deref())
        .unwrap_or(host_header);
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HTTP_HEAD)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| io_failure(Stage::Protocol, target, "HTTP", e))?;
        // The connection task ends when the response is dropped; its errors surface there.
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("netreach/", env!("CARGO_PKG_VERSION")),
            )
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| io_failure(Stage::Protocol, target, "building the HTTP request", e))?;
        let response = sender.send_request(request).await;
        driver.abort();
        let response = response.map_err(|e| io_failure(Stage::Protocol, target, "HTTP GET", e))?;
        Ok(response.status())
    };
    let status = deadline
        .run(
            Stage::Protocol,
            Reason::ResponseTimeout,
            || format!("{target} accepted the connection but sent no HTTP answer to GET {path}"),
            exchange,
        )
        .await?;
    let line = format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let line = line.trim_end().to_owned();
    if let Some(expected) = expectation
        .map(|e| &e.expected_status)
        .filter(|s| !s.is_empty())
        && !expected.contains(&i32::from(status.as_u16()))
    {
        let wanted: Vec<String> = expected.iter().map(ToString::to_string).collect();
        return Err(Failure::new(
            Stage::Protocol,
            Reason::HttpStatusMismatch,
            format!(
                "GET {path} on {target} answered {line}, expected {}",
                wanted.join(" or ")
            ),
        ));
    }
    Ok(line)
}

/// Reads one line within the deadline.
async fn line(
    wire: &mut Wire,
    stage: Stage,
    timeout_reason: Reason,
    target: &str,
    waiting_for: &str,
    deadline: &Deadline,
) -> Result<String, Failure> {
    deadline
        .run(
            stage,
            timeout_reason,
            || format!("{target} sent no {waiting_for}"),
            async {
                wire.read_line().await.map_err(|e| {
                    io_failure(stage, target, &format!("reading the {waiting_for}"), e)
                })
            },
        )
        .await
}

async fn send(
    wire: &mut Wire,
    text: &str,
    stage: Stage,
    target: &str,
    deadline: &Deadline,
) -> Result<(), Failure> {
    deadline
        .run(
            stage,
            Reason::ResponseTimeout,
            || format!("{target} does not accept data"),
            async {
                wire.send(text)
                    .await
                    .map_err(|e| io_failure(stage, target, "sending", e))
            },
        )
        .await
}

/// An SMTP reply: code and the text of each line.
async fn smtp_reply(
    wire: &mut Wire,
    target: &str,
    waiting_for: &str,
    stage: Stage,
    timeout_reason: Reason,
    deadline: &Deadline,
) -> Result<(u16, Vec<String>), Failure> {
    let mut lines = Vec::new();
    loop {
        let text = line(wire, stage, timeout_reason, target, waiting_for, deadline).await?;
        let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
        let Some(code) = code else {
            return Err(Failure::new(
                stage,
                Reason::BannerMismatch,
                format!(
                    "{target} does not speak SMTP: expected a reply code, got {:?}",
                    truncate(&text)
                ),
            ));
        };
        lines.push(text.get(4..).unwrap_or_default().to_owned());
        if text.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, lines));
        }
        if lines.len() > MAX_REPLY_LINES {
            return Err(Failure::new(
                stage,
                Reason::ProtocolError,
                format!("{target} sent an endless SMTP reply"),
            ));
        }
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// What a text-protocol dialogue found, and the stream to continue on after an upgrade.
pub struct Dialogue {
    pub wire: Wire,
    /// Capabilities (EHLO keywords, IMAP CAPABILITY atoms, POP3 CAPA lines), upper case.
    pub capabilities: Vec<String>,
    /// The STARTTLS/STLS command was accepted: the caller must now run the TLS handshake.
    pub upgrade: bool,
}

/// How a plain dialogue should treat STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    No,
    IfOffered,
    Required,
}

fn not_offered(target: &str, command: &str) -> Failure {
    Failure::new(
        Stage::StartTls,
        Reason::StartTlsNotOffered,
        format!(
            "{target} does not offer {command}: mail would travel unencrypted; enable TLS on the server, or a middlebox may strip {command}"
        ),
    )
}

/// SMTP: banner, EHLO, and STARTTLS when asked. After an upgrade call [`smtp_ehlo`] again.
pub async fn smtp_open(
    wire: Wire,
    ehlo_name: &str,
    upgrade: Upgrade,
    target: &str,
    deadline: &Deadline,
) -> Result<Dialogue, Failure> {
    let mut wire = wire;
    let (code, banner) = smtp_reply(
        &mut wire,
        target,
        "SMTP banner",
        Stage::Protocol,
        Reason::BannerTimeout,
        deadline,
    )
    .await?;
    if code != 220 {
        return Err(Failure::new(
            Stage::Protocol,
            Reason::BannerMismatch,
            format!(
                "{target} greeted with {code} {} instead of 220: the server refuses service",
                banner.join(" ")
            ),
        ));
    }
    let capabilities = smtp_ehlo(&mut wire, ehlo_name, target, deadline).await?;
    let offered = capabilities.iter().any(|c| c == "STARTTLS");
    if upgrade == Upgrade::No || (upgrade == Upgrade::IfOffered && !offered) {
        return Ok(Dialogue {
            wire,
            capabilities,
            upgrade: false,
        });
    }
    if !offered {
        return Err(not_offered(target, "STARTTLS"));
    }
    send(&mut wire, "STARTTLS", Stage::StartTls, target, deadline).await?;
    let (code, text) = smtp_reply(
        &mut wire,
        target,
        "answer to STARTTLS",
        Stage::StartTls,
        Reason::ResponseTimeout,
        deadline,
    )
    .await?;
    if code != 220 {
        return Err(Failure::new(
            Stage::StartTls,
            Reason::StartTlsRejected,
            format!("{target} refused STARTTLS: {code} {}", text.join(" ")),
        ));
    }
    Ok(Dialogue {
        wire,
        capabilities,
        upgrade: true,
    })
}

/// Sends EHLO and returns the keywords (AUTH mechanisms as `AUTH=MECH`).
pub async fn smtp_ehlo(
    wire: &mut Wire,
    ehlo_name: &str,
    target: &str,
    deadline: &Deadline,
) -> Result<Vec<String>, Failure> {
    send(
        wire,
        &format!("EHLO {ehlo_name}"),
        Stage::Protocol,
        target,
        deadline,
    )
    .await?;
    let (code, lines) = smtp_reply(
        wire,
        target,
        "answer to EHLO",
        Stage::Protocol,
        Reason::ResponseTimeout,
        deadline,
    )
    .await?;
    if code != 250 {
        return Err(Failure::new(
            Stage::Protocol,
            Reason::ProtocolError,
            format!("{target} refused EHLO: {code} {}", lines.join(" ")),
        ));
    }
    let mut keywords = Vec::new();
    for text in lines.iter().skip(1) {
        let mut words = text.split_whitespace().map(str::to_ascii_uppercase);
        if let Some(keyword) = words.next() {
            if keyword == "AUTH" {
                keywords.extend(words.map(|mech| format!("AUTH={mech}")));
            }
            keywords.push(keyword);
        }
    }
    Ok(keywords)
}

pub async fn smtp_quit(wire: &mut Wire, target: &str, deadline: &Deadline) {
    // Politeness only: the verdict is already known.
    let _ = send(wire, "QUIT", Stage::Protocol, target, deadline).await;
}

/// IMAP: greeting, CAPABILITY, and STARTTLS when asked.
pub async fn imap_open(
    wire: Wire,
    upgrade: Upgrade,
    target: &str,
    deadline: &Deadline,
) -> Result<Dialogue, Failure> {
    let mut wire = wire;
    let greeting = line(
        &mut wire,
        Stage::Protocol,
        Reason::BannerTimeout,
        target,
        "IMAP greeting",
        deadline,
    )
    .await?;
    if !(greeting.starts_with("* OK") || greeting.starts_with("* PREAUTH")) {
        return Err(Failure::new(
            Stage::Protocol,
            Reason::BannerMismatch,
            format!(
                "{target} did not greet like an IMAP server: {:?}",
                truncate(&greeting)
            ),
        ));
    }
    let capabilities = imap_capability(&mut wire, "a1", target, deadline).await?;
    let offered = capabilities.iter().any(|c| c == "STARTTLS");
    if upgrade == Upgrade::No || (upgrade == Upgrade::IfOffered && !offered) {
        return Ok(Dialogue {
            wire,
            capabilities,
            upgrade: false,
        });
    }
    if !offered {
        return Err(not_offered(target, "STARTTLS"));
    }
    send(&mut wire, "a2 STARTTLS", Stage::StartTls, target, deadline).await?;
    let answer = imap_tagged(&mut wire, "a2", target, Stage::StartTls, deadline)
        .await?
        .0;
    if !answer.starts_with("a2 OK") {
        return Err(Failure::new(
            Stage::StartTls,
            Reason::StartTlsRejected,
            format!("{target} refused STARTTLS: {}", truncate(&answer)),
        ));
    }
    Ok(Dialogue {
        wire,
        capabilities,
        upgrade: true,
    })
}

/// Reads untagged lines until the tagged completion; returns it and the untagged lines.
async fn imap_tagged(
    wire: &mut Wire,
    tag: &str,
    target: &str,
    stage: Stage,
    deadline: &Deadline,
) -> Result<(String, Vec<String>), Failure> {
    let mut untagged = Vec::new();
    loop {
        let text = line(
            wire,
            stage,
            Reason::ResponseTimeout,
            target,
            "IMAP answer",
            deadline,
        )
        .await?;
        if text.starts_with(&format!("{tag} ")) {
            return Ok((text, untagged));
        }
        untagged.push(text);
        if untagged.len() > MAX_REPLY_LINES {
            return Err(Failure::new(
                stage,
                Reason::ProtocolError,
                format!("{target} sent an endless IMAP answer"),
            ));
        }
    }
}

pub async fn imap_capability(
    wire: &mut Wire,
    tag: &str,
    target: &str,
    deadline: &Deadline,
) -> Result<Vec<String>, Failure> {
    send(
        wire,
        &format!("{tag} CAPABILITY"),
        Stage::Protocol,
        target,
        deadline,
    )
    .await?;
    let (done, untagged) = imap_tagged(wire, tag, target, Stage::Protocol, deadline).await?;
    if !done.starts_with(&format!("{tag} OK")) {
        return Err(Failure::new(
            Stage::Protocol,
            Reason::ProtocolError,
            format!("{target} refused CAPABILITY: {}", truncate(&done)),
        ));
    }
    Ok(untagged
        .iter()
        .filter_map(|l| l.strip_prefix("* CAPABILITY "))
        .flat_map(|l| l.split_whitespace().map(str::to_ascii_uppercase))
        .collect())
}

pub async fn imap_logout(wire: &mut Wire, target: &str, deadline: &Deadline) {
    let _ = send(wire, "a9 LOGOUT", Stage::Protocol, target, deadline).await;
}

/// POP3: greeting, CAPA, and STLS when asked.
pub async fn pop3_open(
    wire: Wire,
    upgrade: Upgrade,
    target: &str,
    deadline: &Deadline,
) -> Result<Dialogue, Failure> {
    let mut wire = wire;
    let greeting = line(
        &mut wire,
        Stage::Protocol,
        Reason::BannerTimeout,
        target,
        "POP3 greeting",
        deadline,
    )
    .await?;
    if !greeting.starts_with("+OK") {
        return Err(Failure::new(
            Stage::Protocol,
            Reason::BannerMismatch,
            format!(
                "{target} did not greet like a POP3 server: {:?}",
                truncate(&greeting)
            ),
        ));
    }
    let capabilities = pop3_capa(&mut wire, target, deadline).await?;
    let offered = capabilities.iter().any(|c| c == "STLS");
    if upgrade == Upgrade::No || (upgrade == Upgrade::IfOffered && !offered) {
        return Ok(Dialogue {
            wire,
            capabilities,
            upgrade: false,
        });
    }
    if !offered {
        return Err(not_offered(target, "STLS"));
    }
    send(&mut wire, "STLS", Stage::StartTls, target, deadline).await?;
    let answer = line(
        &mut wire,
        Stage::StartTls,
        Reason::ResponseTimeout,
        target,
        "answer to STLS",
        deadline,
    )
    .await?;
    if !answer.starts_with("+OK") {
        return Err(Failure::new(
            Stage::StartTls,
            Reason::StartTlsRejected,
            format!("{target} refused STLS: {}", truncate(&answer)),
        ));
    }
    Ok(Dialogue {
        wire,
        capabilities,
        upgrade: true,
    })
}

pub async fn pop3_capa(
    wire: &mut Wire,
    target: &str,
    deadline: &Deadline,
) -> Result<Vec<String>, Failure> {
    send(wire, "CAPA", Stage::Protocol, target, deadline).await?;
    let first = line(
        wire,
        Stage::Protocol,
        Reason::ResponseTimeout,
        target,
        "answer to CAPA",
        deadline,
    )
    .await?;
    if !first.starts_with("+OK") {
        // CAPA is optional (RFC 2449); a server without it still speaks POP3.
        return Ok(Vec::new());
    }
    let mut capabilities = Vec::new();
    loop {
        let text = line(
            wire,
            Stage::Protocol,
            Reason::ResponseTimeout,
            target,
            "CAPA list",
            deadline,
        )
        .await?;
        if text == "." {
            return Ok(capabilities);
        }
        capabilities.push(text.to_ascii_uppercase());
        if capabilities.len() > MAX_REPLY_LINES {
            return Err(Failure::new(
                Stage::Protocol,
                Reason::ProtocolError,
                format!("{target} sent an endless CAPA list"),
            ));
        }
    }
}

pub async fn pop3_quit(wire: &mut Wire, target: &str, deadline: &Deadline) {
    let _ = send(wire, "QUIT", Stage::Protocol, target, deadline).await;
}

/// Checks that every expected item is among the offered ones (case-insensitive). POP3 CAPA
/// lines like `SASL PLAIN LOGIN` also match their first word.
pub fn missing_items(expected: &[String], offered: &[String]) -> Vec<String> {
    expected
        .iter()
        .filter(|want| {
            let want = want.to_ascii_uppercase();
            !offered
                .iter()
                .any(|got| *got == want || got.split_whitespace().next() == Some(want.as_str()))
        })
        .cloned()
        .collect()
}
