//! Application stages: HTTP GET, the SMTP/IMAP/POP3 dialogues with their STARTTLS upgrades,
//! and LDAP (StartTLS, simple bind, base search). Every read is bounded in size and time.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::net::{BoxStream, Deadline, Failure, MAX_REPLY_LINES, Wire};
use crate::api::endpoint::HttpExpectation;
use crate::api::result::{Reason, Stage};

/// Largest response head (status line and headers) accepted from an HTTP server.
const MAX_HTTP_HEAD: usize = 64 * 1024;

fn io_failure(stage: Stage, target: &str, what: &str, error: impl std::fmt::Display) -> Failure {
    Failure::new(
        stage,
        Reason::ProtocolError,
        format!("{what} with {target} failed: {error}"),
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
    http_exchange(stream, host_header, expectation, target, deadline, 0)
        .await
        .map(|(line, _)| line)
}

/// Most of an echo service's answer read: an address, or a small JSON object.
pub const MAX_ECHO_BODY: usize = 4 * 1024;

/// GET on an echo service: the status line and the body (at most [`MAX_ECHO_BODY`] bytes).
pub async fn http_echo(
    stream: BoxStream,
    host_header: &str,
    expectation: Option<&HttpExpectation>,
    target: &str,
    deadline: &Deadline,
) -> Result<(String, Vec<u8>), Failure> {
    http_exchange(
        stream,
        host_header,
        expectation,
        target,
        deadline,
        MAX_ECHO_BODY,
    )
    .await
}

/// The address an echo service reported: a bare IP (first line), or `field` of a JSON
/// object (dots walk into nested objects).
pub fn echoed_address(body: &[u8], field: &str) -> Result<std::net::IpAddr, String> {
    let text = std::str::from_utf8(body).map_err(|_| "its answer is not text".to_owned())?;
    let text = text.trim();
    if text.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|_| "its JSON answer does not parse".to_owned())?;
        let found = field
            .split('.')
            .try_fold(&value, |v, key| v.get(key))
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("its JSON answer has no string field {field}"))?;
        return found
            .trim()
            .parse()
            .map_err(|_| format!("its field {field} is not an IP address"));
    }
    let first = text.lines().next().unwrap_or_default().trim();
    first.parse().map_err(|_| {
        let shown: String = first.chars().take(64).collect();
        format!("its answer {shown:?} is not an IP address")
    })
}

async fn http_exchange(
    stream: BoxStream,
    host_header: &str,
    expectation: Option<&HttpExpectation>,
    target: &str,
    deadline: &Deadline,
    body_limit: usize,
) -> Result<(String, Vec<u8>), Failure> {
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
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("netreach/", env!("CARGO_PKG_VERSION")),
            )
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| io_failure(Stage::Protocol, target, "building the HTTP request", e))?;
        // Drive the connection in this task, not a spawned one: the probe needs only the
        // response head (and a bounded body for echo services), and the connection is
        // dropped with it (no close_notify round trip).
        let answer = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| io_failure(Stage::Protocol, target, "HTTP GET", e))?;
            let status = response.status();
            if body_limit == 0 {
                return Ok((status, Vec::new()));
            }
            let body = http_body_util::Limited::new(response.into_body(), body_limit)
                .collect()
                .await
                .map_err(|e| {
                    Failure::new(
                        Stage::Protocol,
                        Reason::ProtocolError,
                        format!(
                            "reading the answer of {target} failed: {e} (at most {body_limit} bytes are read)"
                        ),
                    )
                })?;
            Ok((status, body.to_bytes().to_vec()))
        };
        match futures::future::select(std::pin::pin!(answer), connection).await {
            futures::future::Either::Left((answer, _)) => answer,
            futures::future::Either::Right((ended, pending)) => match ended {
                Ok(()) => pending.await,
                Err(e) => Err(io_failure(Stage::Protocol, target, "HTTP GET", e)),
            },
        }
    };
    let (status, body) = deadline
        .run(
            Stage::Protocol,
            Reason::ResponseTimeout,
            || format!("{target} accepted the connection but did not complete an HTTP answer to GET {path}"),
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
    Ok((line, body))
}

/// Reads one line within the deadline.
pub(super) async fn line(
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

pub(super) async fn send(
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
pub(super) async fn smtp_reply(
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
                    "{target} does not speak SMTP: expected a reply code, got {}",
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

/// Server text for a message: escaped and truncated.
pub(super) fn truncate(text: &str) -> String {
    super::net::escaped(text.as_bytes())
}

/// What a text-protocol dialogue found, and the stream to continue on after an upgrade.
pub struct Dialogue {
    pub wire: Wire,
    /// The greeting line (POP3's carries the APOP timestamp).
    pub greeting: String,
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

/// The mail protocols: each greets, lists capabilities, and upgrades with its own command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailProtocol<'a> {
    Smtp { ehlo_name: &'a str },
    Imap,
    Pop3,
}

impl MailProtocol<'_> {
    /// The upgrade command, as servers advertise it.
    pub fn starttls(self) -> &'static str {
        match self {
            MailProtocol::Pop3 => "STLS",
            _ => "STARTTLS",
        }
    }

    async fn greet(
        self,
        wire: &mut Wire,
        target: &str,
        deadline: &Deadline,
    ) -> Result<String, Failure> {
        let (name, greeting) = match self {
            MailProtocol::Smtp { .. } => {
                let (code, banner) = smtp_reply(
                    wire,
                    target,
                    "SMTP banner",
                    Stage::Protocol,
                    Reason::BannerTimeout,
                    deadline,
                )
                .await?;
                if code == 220 {
                    return Ok(banner.join(" "));
                }
                return Err(Failure::new(
                    Stage::Protocol,
                    Reason::BannerMismatch,
                    format!(
                        "{target} greeted with {code} {} instead of 220: the server refuses service",
                        truncate(&banner.join(" "))
                    ),
                ));
            }
            MailProtocol::Imap => (
                "IMAP",
                line(
                    wire,
                    Stage::Protocol,
                    Reason::BannerTimeout,
                    target,
                    "IMAP greeting",
                    deadline,
                )
                .await?,
            ),
            MailProtocol::Pop3 => (
                "POP3",
                line(
                    wire,
                    Stage::Protocol,
                    Reason::BannerTimeout,
                    target,
                    "POP3 greeting",
                    deadline,
                )
                .await?,
            ),
        };
        let fine = match self {
            MailProtocol::Imap => greeting.starts_with("* OK") || greeting.starts_with("* PREAUTH"),
            _ => greeting.starts_with("+OK"),
        };
        if fine {
            Ok(greeting)
        } else {
            Err(Failure::new(
                Stage::Protocol,
                Reason::BannerMismatch,
                format!(
                    "{target} did not greet like a {name} server: {}",
                    truncate(&greeting)
                ),
            ))
        }
    }

    /// EHLO keywords (AUTH mechanisms as `AUTH=MECH`), IMAP CAPABILITY atoms or POP3 CAPA lines.
    pub async fn capabilities(
        self,
        wire: &mut Wire,
        target: &str,
        deadline: &Deadline,
    ) -> Result<Vec<String>, Failure> {
        match self {
            MailProtocol::Smtp { ehlo_name } => smtp_ehlo(wire, ehlo_name, target, deadline).await,
            MailProtocol::Imap => imap_capability(wire, target, deadline).await,
            MailProtocol::Pop3 => pop3_capa(wire, target, deadline).await,
        }
    }

    /// Sends the upgrade command; Ok means the server is ready for the TLS handshake.
    async fn request_tls(
        self,
        wire: &mut Wire,
        target: &str,
        deadline: &Deadline,
    ) -> Result<(), Failure> {
        let refused = |answer: String| {
            Failure::new(
                Stage::StartTls,
                Reason::StartTlsRejected,
                format!(
                    "{target} refused {}: {}",
                    self.starttls(),
                    truncate(&answer)
                ),
            )
        };
        match self {
            MailProtocol::Smtp { .. } => {
                send(wire, "STARTTLS", Stage::StartTls, target, deadline).await?;
                let (code, text) = smtp_reply(
                    wire,
                    target,
                    "answer to STARTTLS",
                    Stage::StartTls,
                    Reason::ResponseTimeout,
                    deadline,
                )
                .await?;
                if code == 220 {
                    Ok(())
                } else {
                    Err(refused(format!("{code} {}", text.join(" "))))
                }
            }
            MailProtocol::Imap => {
                send(wire, "a2 STARTTLS", Stage::StartTls, target, deadline).await?;
                let answer = imap_tagged(wire, "a2", target, Stage::StartTls, deadline)
                    .await?
                    .0;
                if answer.starts_with("a2 OK") {
                    Ok(())
                } else {
                    Err(refused(answer))
                }
            }
            MailProtocol::Pop3 => {
                send(wire, "STLS", Stage::StartTls, target, deadline).await?;
                let answer = line(
                    wire,
                    Stage::StartTls,
                    Reason::ResponseTimeout,
                    target,
                    "answer to STLS",
                    deadline,
                )
                .await?;
                if answer.starts_with("+OK") {
                    Ok(())
                } else {
                    Err(refused(answer))
                }
            }
        }
    }

    /// Says goodbye; politeness only, the verdict is already known.
    pub async fn close(self, wire: &mut Wire, target: &str, deadline: &Deadline) {
        let goodbye = match self {
            MailProtocol::Smtp { .. } | MailProtocol::Pop3 => "QUIT",
            MailProtocol::Imap => "a9 LOGOUT",
        };
        let _ = send(wire, goodbye, Stage::Protocol, target, deadline).await;
    }
}

/// Greeting, capabilities, and the STARTTLS/STLS upgrade when asked for and offered.
pub async fn open_mail(
    protocol: MailProtocol<'_>,
    mut wire: Wire,
    upgrade: Upgrade,
    target: &str,
    deadline: &Deadline,
) -> Result<Dialogue, Failure> {
    let greeting = protocol.greet(&mut wire, target, deadline).await?;
    let capabilities = protocol.capabilities(&mut wire, target, deadline).await?;
    let offered = capabilities.iter().any(|c| c == protocol.starttls());
    if upgrade == Upgrade::No || (upgrade == Upgrade::IfOffered && !offered) {
        return Ok(Dialogue {
            wire,
            greeting,
            capabilities,
            upgrade: false,
        });
    }
    if !offered {
        return Err(Failure::new(
            Stage::StartTls,
            Reason::StartTlsNotOffered,
            format!(
                "{target} does not offer {0}: mail would travel unencrypted (or a middlebox strips {0})",
                protocol.starttls()
            ),
        ));
    }
    protocol.request_tls(&mut wire, target, deadline).await?;
    Ok(Dialogue {
        wire,
        greeting,
        capabilities,
        upgrade: true,
    })
}

/// Sends EHLO and returns the keywords (AUTH mechanisms as `AUTH=MECH`).
async fn smtp_ehlo(
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
            format!(
                "{target} refused EHLO: {code} {}",
                truncate(&lines.join(" "))
            ),
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

/// Reads untagged lines until the tagged completion; returns it and the untagged lines.
pub(super) async fn imap_tagged(
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

async fn imap_capability(
    wire: &mut Wire,
    target: &str,
    deadline: &Deadline,
) -> Result<Vec<String>, Failure> {
    send(wire, "a1 CAPABILITY", Stage::Protocol, target, deadline).await?;
    let (done, untagged) = imap_tagged(wire, "a1", target, Stage::Protocol, deadline).await?;
    if !done.starts_with("a1 OK") {
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

async fn pop3_capa(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echoed_address_is_read_from_text_or_a_json_field() {
        let ip = |text: &str, field: &str| echoed_address(text.as_bytes(), field);
        assert_eq!(
            ip("198.51.100.7\n", "ip"),
            Ok("198.51.100.7".parse().unwrap())
        );
        assert_eq!(ip("{\"ip\": \"::1\"}", "ip"), Ok("::1".parse().unwrap()));
        assert_eq!(
            ip("{\"client\": {\"addr\": \"192.0.2.10\"}}", "client.addr"),
            Ok("192.0.2.10".parse().unwrap())
        );
        assert!(
            ip("{\"origin\": \"x\"}", "ip")
                .unwrap_err()
                .contains("no string field ip")
        );
        assert!(
            ip("<html>hello</html>", "ip")
                .unwrap_err()
                .contains("is not an IP address")
        );
        assert!(echoed_address(&[0xff, 0xfe], "ip").is_err());
    }
}
