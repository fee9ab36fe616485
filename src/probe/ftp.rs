//! FTP and FTPS: greeting, AUTH TLS, login, PBSZ/PROT, and one passive data connection that
//! lists a directory. Read-only (no STOR, DELE or MKD, ever) and bounded in size and time.

use std::net::{IpAddr, SocketAddr};

use tokio::io::AsyncReadExt;

use super::engine::tls_server_name;
use super::net::{self, BoxStream, Deadline, Failure, MAX_REPLY_LINES, Wire};
use super::pipeline::{
    Progress, Route, Scope, starttls_injection, stripped, tls_expected, upgrade,
};
use super::tls;
use crate::api::endpoint::FtpDataChannel;
use crate::api::result::{Reason, Stage};
use crate::api::{Protocol, TlsMode};

/// Most bytes of LIST output read; the listing only proves the data channel, it is not kept.
pub const MAX_LIST_BYTES: usize = 64 * 1024;
/// The password of an anonymous login, by convention an address.
const ANONYMOUS_PASSWORD: &str = "netreach@";

/// One FTP reply: its code and its text (lines joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    fn shown(&self) -> String {
        let text: String = self.text.chars().take(160).collect();
        format!("{} {}", self.code, text.trim())
    }
}

/// Parses the first line of a reply: its code and whether more lines follow.
fn reply_start(line: &str) -> Option<(u16, bool, &str)> {
    let code = line.get(..3)?.parse::<u16>().ok().filter(|c| *c >= 100)?;
    match line.as_bytes().get(3) {
        Some(b'-') => Some((code, true, line.get(4..).unwrap_or_default())),
        Some(b' ') | None => Some((code, false, line.get(4..).unwrap_or_default())),
        _ => None,
    }
}

/// Reads one (possibly multi-line) reply within the deadline.
async fn reply(
    wire: &mut Wire,
    shown: &str,
    waiting_for: &str,
    stage: Stage,
    timeout_reason: Reason,
    deadline: &Deadline,
) -> Result<Reply, Failure> {
    let read = async {
        let first = wire.read_line().await.map_err(|e| {
            Failure::new(
                stage,
                Reason::ProtocolError,
                format!("reading the {waiting_for} from {shown} failed: {e}"),
            )
        })?;
        let Some((code, more, text)) = reply_start(&first) else {
            return Err(Failure::new(
                stage,
                Reason::BannerMismatch,
                format!(
                    "{shown} does not speak FTP: expected a reply code, got {:?}",
                    first.chars().take(80).collect::<String>()
                ),
            ));
        };
        let mut lines = vec![text.to_owned()];
        if more {
            let end = format!("{code} ");
            loop {
                let line = wire.read_line().await.map_err(|e| {
                    Failure::new(
                        stage,
                        Reason::ProtocolError,
                        format!("reading the {waiting_for} from {shown} failed: {e}"),
                    )
                })?;
                if line.starts_with(&end) || line == end.trim_end() {
                    lines.push(line.get(4..).unwrap_or_default().to_owned());
                    break;
                }
                lines.push(line);
                if lines.len() > MAX_REPLY_LINES {
                    return Err(Failure::new(
                        stage,
                        Reason::ProtocolError,
                        format!("{shown} sent an endless FTP reply"),
                    ));
                }
            }
        }
        Ok(Reply {
            code,
            text: lines.join(" "),
        })
    };
    deadline
        .run(
            stage,
            timeout_reason,
            || format!("{shown} sent no {waiting_for}"),
            read,
        )
        .await
}

/// Sends a command and reads its reply.
async fn command(
    wire: &mut Wire,
    line: &str,
    shown: &str,
    stage: Stage,
    deadline: &Deadline,
) -> Result<Reply, Failure> {
    let verb = line.split_whitespace().next().unwrap_or(line);
    deadline
        .run(
            stage,
            Reason::ResponseTimeout,
            || format!("{shown} does not accept the {verb} command"),
            async {
                wire.send(line).await.map_err(|e| {
                    Failure::new(
                        stage,
                        Reason::ProtocolError,
                        format!("sending {verb} to {shown} failed: {e}"),
                    )
                })
            },
        )
        .await?;
    reply(
        wire,
        shown,
        &format!("answer to {verb}"),
        stage,
        Reason::ResponseTimeout,
        deadline,
    )
    .await
}

/// The address and port of a `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` reply.
pub fn parse_pasv(text: &str) -> Option<SocketAddr> {
    text.split(|c: char| !(c.is_ascii_digit() || c == ','))
        .find_map(|chunk| {
            let numbers: Vec<u8> = chunk
                .split(',')
                .map(|n| n.parse::<u8>().ok())
                .collect::<Option<_>>()?;
            let [a, b, c, d, high, low] = numbers[..] else {
                return None;
            };
            Some(SocketAddr::new(
                IpAddr::from([a, b, c, d]),
                u16::from_be_bytes([high, low]),
            ))
        })
}

/// The port of a `229 Entering Extended Passive Mode (|||port|)` reply.
pub fn parse_epsv(text: &str) -> Option<u16> {
    let inner = text.split_once('(')?.1.split_once(')')?.0;
    let delimiter = inner.chars().next()?;
    let fields: Vec<&str> = inner.split(delimiter).collect();
    // (<d><d><d>port<d>): empty protocol and address, the port, then nothing.
    match fields[..] {
        ["", "", "", port, ""] => port.parse::<u16>().ok().filter(|p| *p != 0),
        _ => None,
    }
}

/// Whether an address cannot be reached across the internet: private, loopback, link-local,
/// shared (CGNAT) or unspecified.
pub fn unroutable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// How the login goes: who, and with what password (never shown).
struct Login {
    user: String,
    password: String,
    who: String,
    secret: Option<String>,
}

fn login_of(scope: &Scope<'_>, shown: &str) -> Result<Login, Failure> {
    let secret = scope
        .target
        .ftp
        .as_ref()
        .and_then(|f| f.credentials_secret_ref.as_ref());
    let Some(secret) = secret else {
        return Ok(Login {
            user: "anonymous".into(),
            password: ANONYMOUS_PASSWORD.into(),
            who: "anonymous".into(),
            secret: None,
        });
    };
    let read = |key| {
        scope
            .ctx
            .secret(&secret.name, key, shown)
            .map_err(|message| Failure::new(Stage::Auth, Reason::CredentialsUnavailable, message))
    };
    let user = read("username")?;
    let password = read("password")?;
    Ok(Login {
        who: user.clone(),
        user,
        password,
        secret: Some(secret.name.clone()),
    })
}

/// A refused login: wrong credentials, or a server that wants TLS first.
fn refused_login(reply: &Reply, login: &Login, tls_on: bool, shown: &str) -> Failure {
    let text = reply.text.to_ascii_lowercase();
    let wants_tls = ["tls", "ssl", "encrypt", "secure"]
        .iter()
        .any(|w| text.contains(w));
    if reply.code == 534 || (!tls_on && wants_tls) {
        return Failure::new(
            Stage::StartTls,
            Reason::TlsRequired,
            format!(
                "{shown} requires TLS before login ({}); set tls.mode: StartTLS on this port, or use protocol FTPS if the server speaks implicit TLS",
                reply.shown()
            ),
        );
    }
    let remedy = match &login.secret {
        Some(secret) => format!(
            "check username and password in Secret {secret}, and that the account may log in over FTP"
        ),
        None => "anonymous logins are refused; set ftp.credentialsSecretRef to a Secret with username and password".to_owned(),
    };
    Failure::new(
        Stage::Auth,
        Reason::AuthFailed,
        format!(
            "{shown} refused the login of {} ({}); {remedy}",
            login.who,
            reply.shown()
        ),
    )
}

/// USER and PASS; Ok once logged in.
async fn log_in(
    wire: &mut Wire,
    login: &Login,
    tls_on: bool,
    shown: &str,
    deadline: &Deadline,
) -> Result<(), Failure> {
    let answer = command(
        wire,
        &format!("USER {}", login.user),
        shown,
        Stage::Auth,
        deadline,
    )
    .await?;
    let answer = match answer.code {
        230 => return Ok(()),
        331 => command(
            wire,
            &format!("PASS {}", login.password),
            shown,
            Stage::Auth,
            deadline,
        )
        .await
        // The reply to PASS never echoes the password, but be sure nothing else does.
        .map_err(|mut f| {
            f.message = f.message.replace(&login.password, "***");
            f
        })?,
        _ => answer,
    };
    match answer.code {
        230 | 202 => Ok(()),
        530 | 534 => Err(refused_login(&answer, login, tls_on, shown)),
        332 => Err(Failure::new(
            Stage::Auth,
            Reason::ProtocolError,
            format!(
                "{shown} asks for an account (ACCT) after the login of {}, which the probe does not send",
                login.who
            ),
        )),
        _ => Err(Failure::new(
            Stage::Auth,
            Reason::ProtocolError,
            format!(
                "{shown} answered the login of {} with {}",
                login.who,
                answer.shown()
            ),
        )),
    }
}

/// How the data connection was found and reached, for messages.
struct DataTarget {
    command: &'static str,
    /// Where the data connection goes: the control connection's address and the data port.
    shown: String,
    port: u16,
    /// What the PASV reply advertised, when it differs from where the probe connects.
    note: Option<String>,
}

fn data_note(advertised: SocketAddr, control: &Route, peer_host: &str) -> Option<String> {
    let ip = advertised.ip();
    let same = match control {
        Route::Direct(address) => *address == ip,
        Route::Proxy(_) => peer_host.parse::<IpAddr>().ok() == Some(ip),
    };
    if same {
        return None;
    }
    // Through a proxy the control address is the proxy's business: only a private answer is
    // worth saying.
    if matches!(control, Route::Proxy(_)) && !unroutable(ip) {
        return None;
    }
    let kind = if unroutable(ip) {
        "a private or unroutable address"
    } else {
        "not the address of the control connection"
    };
    Some(format!(
        "PASV advertised {advertised}, {kind}; the probe connected to the control connection's address instead, as curl and most clients do; a server behind NAT needs pasv_address (or its equivalent) set to its public address"
    ))
}

/// Asks for a passive data port.
async fn passive(
    wire: &mut Wire,
    mode: FtpDataChannel,
    scope: &Scope<'_>,
    shown: &str,
) -> Result<DataTarget, Failure> {
    let deadline = scope.deadline;
    let control = match scope.route {
        Route::Direct(address) => address.to_string(),
        Route::Proxy(_) => scope.peer_host.to_owned(),
    };
    let at = |port: u16| {
        if control.contains(':') {
            format!("[{control}]:{port}")
        } else {
            format!("{control}:{port}")
        }
    };
    if mode == FtpDataChannel::ExtendedPassive {
        let answer = command(wire, "EPSV", shown, Stage::Protocol, deadline).await?;
        let port = (answer.code == 229)
            .then(|| parse_epsv(&answer.text))
            .flatten()
            .ok_or_else(|| {
                Failure::new(
                    Stage::Protocol,
                    Reason::ProtocolError,
                    format!(
                        "{shown} did not enter extended passive mode ({}); set ftp.dataChannel: Passive",
                        answer.shown()
                    ),
                )
            })?;
        return Ok(DataTarget {
            command: "EPSV",
            shown: at(port),
            port,
            note: None,
        });
    }
    let answer = command(wire, "PASV", shown, Stage::Protocol, deadline).await?;
    let advertised = (answer.code == 227)
        .then(|| parse_pasv(&answer.text))
        .flatten()
        .ok_or_else(|| {
            Failure::new(
                Stage::Protocol,
                Reason::ProtocolError,
                format!(
                    "{shown} did not enter passive mode ({}); set ftp.dataChannel: ExtendedPassive if the server only speaks EPSV",
                    answer.shown()
                ),
            )
        })?;
    Ok(DataTarget {
        command: "PASV",
        shown: at(advertised.port()),
        port: advertised.port(),
        note: data_note(advertised, scope.route, scope.peer_host),
    })
}

/// The failure of a data connection the control channel asked for.
fn blocked(data: &DataTarget, what: &str, scope: &Scope<'_>, shown: &str) -> Failure {
    let declared = scope
        .target
        .ftp
        .as_ref()
        .and_then(|f| f.passive_ports.as_ref())
        .map(|r| format!("ports {}-{}", r.from, r.to))
        .unwrap_or_else(|| format!("port {}", data.port));
    let host = scope
        .target
        .host
        .as_deref()
        .or(scope.target.cidr.as_deref())
        .unwrap_or(scope.peer_host);
    let mut message = format!(
        "login to {shown} works, but the data connection to {} (from {}) {what}; allow egress to {host} {declared} (the server's passive range; declare it as ftp.passivePorts so emitted policy allows it)",
        data.shown, data.command
    );
    if let Some(note) = &data.note {
        message.push_str(&format!("; {note}"));
    }
    Failure::new(Stage::Protocol, Reason::DataChannelBlocked, message)
}

/// Opens the data connection the same way as the control connection.
async fn connect_data(
    data: &DataTarget,
    scope: &Scope<'_>,
    shown: &str,
) -> Result<BoxStream, Failure> {
    let deadline = scope.deadline;
    let connected = match scope.route {
        Route::Direct(address) => net::connect(SocketAddr::new(*address, data.port), deadline)
            .await
            .map(|s| Box::new(s) as BoxStream),
        Route::Proxy(proxy) => net::connect_via_proxy(proxy, scope.peer_host, data.port, deadline)
            .await
            .map(|s| Box::new(s) as BoxStream),
    };
    connected.map_err(|failure| {
        let what = match failure.reason {
            Reason::ConnectionRefused => "was refused".to_owned(),
            Reason::ConnectTimeout | Reason::ProxyTimeout => {
                format!("timed out (timeout {:?})", deadline.total())
            }
            _ => format!("failed: {}", failure.message),
        };
        blocked(data, &what, scope, shown)
    })
}

/// Reads the listing to its end, or to [`MAX_LIST_BYTES`]; returns the bytes read and whether
/// the cap cut it short. The bytes are counted, not kept.
async fn drain(
    stream: &mut BoxStream,
    data: &DataTarget,
    shown: &str,
    deadline: &Deadline,
) -> Result<(usize, bool), Failure> {
    let read = async {
        let mut buffer = [0u8; 4096];
        let mut total = 0usize;
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) => return Ok((total, false)),
                Ok(n) => {
                    total += n;
                    if total >= MAX_LIST_BYTES {
                        return Ok((total, true));
                    }
                }
                // A TLS data connection closed without close_notify still ended the listing.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok((total, false));
                }
                Err(e) => {
                    return Err(Failure::new(
                        Stage::Protocol,
                        Reason::ProtocolError,
                        format!(
                            "reading the listing from the data connection of {shown} ({}) failed: {e}",
                            data.shown
                        ),
                    ));
                }
            }
        }
    };
    deadline
        .run(
            Stage::Protocol,
            Reason::ResponseTimeout,
            || {
                format!(
                    "the data connection of {shown} ({}) opened but the listing never ended",
                    data.shown
                )
            },
            read,
        )
        .await
}

/// LIST over a passive data connection; returns what it saw.
async fn list(
    wire: &mut Wire,
    mode: FtpDataChannel,
    protected: bool,
    scope: &Scope<'_>,
    shown: &str,
) -> Result<String, Failure> {
    let deadline = scope.deadline;
    let target = scope.target;
    let path = target
        .ftp
        .as_ref()
        .and_then(|f| f.path.as_deref())
        .unwrap_or("/");
    let data = passive(wire, mode, scope, shown).await?;
    let mut stream = connect_data(&data, scope, shown).await?;
    let answer = command(
        wire,
        &format!("LIST {path}"),
        shown,
        Stage::Protocol,
        deadline,
    )
    .await?;
    match answer.code {
        125 | 150 => {}
        425 | 426 => {
            return Err(blocked(
                &data,
                &format!("was not accepted by the server ({})", answer.shown()),
                scope,
                shown,
            ));
        }
        _ => {
            return Err(Failure::new(
                Stage::Protocol,
                Reason::ProtocolError,
                format!(
                    "{shown} refused LIST {path} ({}); check ftp.path and the account's permissions",
                    answer.shown()
                ),
            ));
        }
    }
    if protected {
        let done = tls::handshake_with(
            stream,
            tls_server_name(target, scope.peer_host),
            &target.tls,
            &scope.ctx.roots,
            &format!("the data connection of {shown} ({})", data.shown),
            deadline,
            scope.tls_sessions.as_ref(),
        )
        .await
        .map_err(|rejected| rejected.failure)?;
        stream = done.stream;
    }
    let (bytes, capped) = drain(&mut stream, &data, shown, deadline).await?;
    drop(stream);
    if !capped {
        let done = reply(
            wire,
            shown,
            "end of the transfer",
            Stage::Protocol,
            Reason::ResponseTimeout,
            deadline,
        )
        .await?;
        match done.code {
            226 | 250 => {}
            425 | 426 => {
                return Err(blocked(
                    &data,
                    &format!("broke off ({})", done.shown()),
                    scope,
                    shown,
                ));
            }
            _ => {
                return Err(Failure::new(
                    Stage::Protocol,
                    Reason::ProtocolError,
                    format!("{shown} ended LIST {path} with {}", done.shown()),
                ));
            }
        }
    }
    let mut seen = format!(
        "LIST {path} over the {} data connection to {}{}: {}{} bytes",
        data.command,
        data.shown,
        if protected { " (TLS)" } else { "" },
        if capped { "at least " } else { "" },
        bytes
    );
    if let Some(note) = data.note {
        seen.push_str(&format!("; {note}"));
    }
    Ok(seen)
}

/// The FTP stage on a connected (and for FTPS already encrypted) control connection.
pub(super) async fn session(
    stream: BoxStream,
    scope: &Scope<'_>,
    progress: &mut Progress,
) -> Result<(Stage, Option<String>), Failure> {
    let target = scope.target;
    let deadline = scope.deadline;
    let shown = target.display();
    let mut wire = Wire::new(stream);
    let mut greeting = reply(
        &mut wire,
        &shown,
        "FTP greeting",
        Stage::Protocol,
        Reason::BannerTimeout,
        deadline,
    )
    .await?;
    if greeting.code == 120 {
        greeting = reply(
            &mut wire,
            &shown,
            "FTP greeting",
            Stage::Protocol,
            Reason::BannerTimeout,
            deadline,
        )
        .await?;
    }
    if greeting.code != 220 {
        return Err(Failure::new(
            Stage::Protocol,
            Reason::BannerMismatch,
            format!(
                "{shown} greeted with {} instead of 220: the server refuses service",
                greeting.shown()
            ),
        ));
    }
    let implicit = target.protocol == Protocol::Ftps;
    let mut tls_on = implicit;
    let mode = target.tls.mode;
    if !implicit && matches!(mode, TlsMode::StartTls | TlsMode::Opportunistic) {
        let answer = command(&mut wire, "AUTH TLS", &shown, Stage::StartTls, deadline).await?;
        if answer.code == 234 {
            let stream = wire
                .into_stream()
                .map_err(|e| starttls_injection(&shown, e))?;
            wire = Wire::new(upgrade(stream, scope, progress).await?);
            tls_on = true;
        } else if mode == TlsMode::StartTls {
            return Err(Failure::new(
                Stage::StartTls,
                Reason::StartTlsRejected,
                format!(
                    "{shown} refused AUTH TLS ({}): logins and files would travel unencrypted; enable TLS on the FTP server, or a middlebox may block AUTH TLS",
                    answer.shown()
                ),
            ));
        } else if let Some(why) = tls_expected(target) {
            return Err(stripped("AUTH TLS", &shown, &why));
        }
    }
    let how = match (implicit, tls_on) {
        (true, _) => "implicit TLS",
        (false, true) => "AUTH TLS",
        (false, false) => "plain",
    };
    let login = login_of(scope, &shown)?;
    log_in(&mut wire, &login, tls_on, &shown, deadline).await?;
    let mut protected = false;
    let mut notes = Vec::new();
    if tls_on {
        let pbsz = command(&mut wire, "PBSZ 0", &shown, Stage::Protocol, deadline).await?;
        let prot = command(&mut wire, "PROT P", &shown, Stage::Protocol, deadline).await?;
        protected = pbsz.code == 200 && prot.code == 200;
        if !protected {
            notes.push(format!(
                "PROT P refused ({}): data would travel unencrypted",
                prot.shown()
            ));
        }
    }
    let channel = target
        .ftp
        .as_ref()
        .and_then(|f| f.data_channel)
        .unwrap_or(FtpDataChannel::Passive);
    let data = match channel {
        FtpDataChannel::None => "data channel not checked (ftp.dataChannel: None)".to_owned(),
        mode => list(&mut wire, mode, protected, scope, &shown).await?,
    };
    // Politeness only: the verdict is known.
    let _ = deadline
        .run(
            Stage::Protocol,
            Reason::ResponseTimeout,
            String::new,
            async {
                let _ = wire.send("QUIT").await;
                Ok(())
            },
        )
        .await;
    let mut detail = format!("{} logged in ({how}); {data}", login.who);
    for note in notes {
        detail.push_str(&format!("; {note}"));
    }
    Ok((Stage::Protocol, Some(detail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasv_and_epsv_replies_parse_and_garbage_does_not() {
        assert_eq!(
            parse_pasv("Entering Passive Mode (127,0,0,9,39,117)."),
            Some("127.0.0.9:10101".parse().unwrap())
        );
        assert_eq!(
            parse_pasv("=10,1,2,3,0,21"),
            Some("10.1.2.3:21".parse().unwrap())
        );
        assert_eq!(parse_pasv("Entering Passive Mode (300,0,0,1,1,1)"), None);
        assert_eq!(parse_pasv("Entering Passive Mode"), None);
        assert_eq!(parse_pasv(",,,,,"), None);
        assert_eq!(
            parse_epsv("Entering Extended Passive Mode (|||10105|)"),
            Some(10105)
        );
        assert_eq!(parse_epsv("(!!!2121!)"), Some(2121));
        assert_eq!(parse_epsv("(|||0|)"), None);
        assert_eq!(parse_epsv("(|||99999|)"), None);
        assert_eq!(parse_epsv("no parentheses"), None);
        assert_eq!(parse_epsv("()"), None);
    }

    #[test]
    fn reply_codes_are_read_and_non_ftp_lines_refused() {
        assert_eq!(reply_start("220 ready"), Some((220, false, "ready")));
        assert_eq!(reply_start("220-welcome"), Some((220, true, "welcome")));
        assert_eq!(reply_start("230"), Some((230, false, "")));
        assert_eq!(reply_start("HTTP/1.1 400"), None);
        assert_eq!(reply_start("099 low"), None);
        assert_eq!(reply_start("2"), None);
    }

    #[test]
    fn private_and_unspecified_addresses_are_unroutable() {
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "127.0.0.9",
            "0.0.0.0",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert!(unroutable(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["18.233.3.236", "2001:db8::1"] {
            assert!(!unroutable(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn a_pasv_address_differing_from_the_control_address_is_reported() {
        let direct = Route::Direct("203.0.113.5".parse().unwrap());
        let note = data_note(
            "10.0.0.5:50000".parse().unwrap(),
            &direct,
            "ftp.example.com",
        )
        .unwrap();
        assert!(
            note.contains("PASV advertised 10.0.0.5:50000, a private or unroutable address"),
            "{note}"
        );
        assert!(note.contains("pasv_address"), "{note}");
        assert_eq!(
            data_note("203.0.113.5:50000".parse().unwrap(), &direct, "x"),
            None
        );
    }
}
