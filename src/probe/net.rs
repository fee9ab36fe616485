//! Connections: deadlines, TCP connect with failures told apart, HTTP CONNECT proxies, and a
//! bounded line reader for the text protocols.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::duration::human;
use crate::api::openapi::redact_userinfo;
use crate::api::result::{Reason, Stage};

/// Any bidirectional byte stream a protocol can run over (plain TCP, or TLS on top).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub type BoxStream = Box<dyn Stream>;

/// Longest line a text protocol may send; longer means a broken or hostile server.
pub const MAX_LINE: usize = 8 * 1024;
/// Most lines one reply may have (EHLO, CAPABILITY, CAPA).
pub const MAX_REPLY_LINES: usize = 256;

/// A stage that did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub reason: Reason,
    pub message: String,
    pub intercepted: bool,
}

impl Failure {
    pub fn new(stage: Stage, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            stage,
            reason,
            message: message.into(),
            intercepted: false,
        }
    }
}

/// The time left for one endpoint×port; every stage draws from it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    pub fn after(total: Duration) -> Self {
        Self {
            at: Instant::now() + total,
            total,
        }
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn total(&self) -> Duration {
        self.total
    }

    /// Runs `future` within the time left; on expiry the stage fails with `reason`.
    pub async fn run<T>(
        &self,
        stage: Stage,
        reason: Reason,
        what: impl FnOnce() -> String,
        future: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.remaining(), future).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                stage,
                reason,
                format!("{} (timeout {} reached)", what(), human(self.total)),
            )),
        }
    }
}

/// Connects over TCP, telling refused, filtered (timeout) and unreachable apart.
pub async fn connect(addr: SocketAddr, deadline: &Deadline) -> Result<TcpStream, Failure> {
    let attempt = async {
        TcpStream::connect(addr).await.map_err(|e| {
            let (reason, what) = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => (
                    Reason::ConnectionRefused,
                    format!("connection to {addr} refused: nothing listens there or a firewall rejects it"),
                ),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => (
                    Reason::ConnectionRefused,
                    format!("connection to {addr} reset: a firewall rejects it or the service is closing"),
                ),
                std::io::ErrorKind::HostUnreachable => (Reason::HostUnreachable, format!("{addr} is unreachable (no route to host)")),
                std::io::ErrorKind::NetworkUnreachable => {
                    (Reason::NetworkUnreachable, format!("the network of {addr} is unreachable from here"))
                }
                _ => (Reason::ConnectError, format!("connecting to {addr} failed: {e}")),
            };
            Failure::new(Stage::Connect, reason, what)
        })
    };
    deadline
        .run(
            Stage::Connect,
            Reason::ConnectTimeout,
            || format!("no answer from {addr}: the connection is likely dropped by a firewall"),
            attempt,
        )
        .await
}

/// Proxy endpoint and optional Basic credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyTarget {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
}

impl ProxyTarget {
    /// Parses `http://[user:pass@]host[:port][/]`. Errors quote the URL with its userinfo
    /// masked: they end up in status conditions, Events and logs.
    pub fn parse(url: &str) -> Result<Self, String> {
        let shown = redact_userinfo(url);
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| {
                format!("proxy URL {shown:?} must start with http:// (an HTTP CONNECT proxy); fix the URL")
            })?
            .trim_end_matches('/');
        let (credentials, authority) = match rest.rsplit_once('@') {
            Some((userinfo, authority)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((user.to_owned(), pass.to_owned())), authority)
            }
            None => (None, rest),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse::<u16>().map_err(|_| {
                    format!("proxy URL {shown:?} has an invalid port; use a port from 1 to 65535")
                })?,
            ),
            _ => (authority, 3128),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!(
                "proxy URL {shown:?} has no host; write it as http://host:port"
            ));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            credentials,
        })
    }

    /// `host:port` without credentials, for messages.
    pub fn display(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Opens a tunnel to `host:port` through an HTTP CONNECT proxy.
pub async fn connect_via_proxy(
    proxy: &ProxyTarget,
    host: &str,
    port: u16,
    deadline: &Deadline,
) -> Result<TcpStream, Failure> {
    let shown = proxy.display();
    let proxy_fail = |reason, message: String| Failure::new(Stage::Proxy, reason, message);
    let addrs: Vec<SocketAddr> = deadline
        .run(
            Stage::Proxy,
            Reason::ProxyTimeout,
            || format!("resolving proxy {shown} took too long"),
            async {
                tokio::net::lookup_host((proxy.host.as_str(), proxy.port))
                    .await
                    .map(Iterator::collect)
                    .map_err(|e| {
                        proxy_fail(
                            Reason::ProxyError,
                            format!("cannot resolve proxy {shown}: {e}"),
                        )
                    })
            },
        )
        .await?;
    let Some(addr) = addrs.first().copied() else {
        return Err(proxy_fail(
            Reason::ProxyError,
            format!("proxy {shown} has no address"),
        ));
    };
    let mut stream = connect(addr, deadline).await.map_err(|f| Failure {
        stage: Stage::Proxy,
        reason: if f.reason == Reason::ConnectTimeout {
            Reason::ProxyTimeout
        } else {
            Reason::ProxyError
        },
        message: format!("cannot reach proxy {shown}: {}", f.message),
        intercepted: false,
    })?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request =
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: netreach\r\n");
    if let Some((user, pass)) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await.map_err(|e| {
            proxy_fail(
                Reason::ProxyError,
                format!("sending CONNECT to proxy {shown} failed: {e}"),
            )
        })?;
        // Byte by byte: a server-speaks-first protocol's banner may follow the proxy's answer
        // in the same segment, and it must stay in the socket for the protocol stage.
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if !head.is_empty() && !head.starts_with(b"HTTP/") && !b"HTTP/".starts_with(&head) {
                // Not an HTTP answer: say so now rather than wait for a head that never ends.
                let mut more = [0u8; 64];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(20), stream.read(&mut more)).await
                {
                    head.extend_from_slice(&more[..n]);
                }
                return Err(proxy_fail(
                    Reason::ProxyError,
                    format!(
                        "the proxy at {shown} answered with non-HTTP data: {} (to CONNECT {authority})",
                        escaped(&head)
                    ),
                ));
            }
            if head.len() >= MAX_LINE {
                return Err(proxy_fail(
                    Reason::ProxyError,
                    format!("proxy {shown} sent an oversized answer to CONNECT"),
                ));
            }
            let n = stream.read(&mut byte).await.map_err(|e| {
                proxy_fail(
                    Reason::ProxyError,
                    format!("reading the answer of proxy {shown} failed: {e}"),
                )
            })?;
            if n == 0 {
                return Err(proxy_fail(
                    Reason::ProxyError,
                    format!("proxy {shown} closed the connection during CONNECT"),
                ));
            }
            head.push(byte[0]);
        }
        Ok(head)
    };
    let head = deadline
        .run(
            Stage::Proxy,
            Reason::ProxyTimeout,
            || format!("proxy {shown} did not answer CONNECT {authority}"),
            exchange,
        )
        .await?;
    let status_line =
        String::from_utf8_lossy(head.split(|b| *b == b'\r').next().unwrap_or_default())
            .into_owned();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(200..=299) => Ok(stream),
        Some(407) => Err(proxy_fail(
            Reason::ProxyAuthRequired,
            format!(
                "proxy {shown} requires authentication ({})",
                escaped(status_line.as_bytes())
            ),
        )),
        Some(_) => Err(proxy_fail(
            Reason::ProxyRejected,
            format!(
                "proxy {shown} refused CONNECT {authority}: {}",
                escaped(status_line.as_bytes())
            ),
        )),
        None => Err(proxy_fail(
            Reason::ProxyError,
            format!(
                "the proxy at {shown} answered with non-HTTP data: {} (to CONNECT {authority})",
                escaped(status_line.as_bytes())
            ),
        )),
    }
}

/// Bytes a peer sent, for a message: escaped so control and invisible characters show, and
/// truncated.
pub fn escaped(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
    let mut shown = format!("\"{}\"", text.escape_debug());
    if bytes.len() > SHOWN {
        shown.push('…');
    }
    shown
}

/// A stream with a bounded line reader on top, for SMTP, IMAP and POP3.
pub struct Wire {
    stream: BoxStream,
    buffer: Vec<u8>,
}

impl Wire {
    pub fn new(stream: BoxStream) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Reads one line (without CRLF), at most [`MAX_LINE`] bytes.
    pub async fn read_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buffer.len() > MAX_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("line longer than {MAX_LINE} bytes"),
                ));
            }
            let mut chunk = [0u8; 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.stream.write_all(line.as_bytes()).await?;
        self.stream.write_all(b"\r\n").await?;
        self.stream.flush().await
    }

    /// Hands the stream over for a TLS upgrade. Bytes the server sent ahead of the handshake
    /// would be injected into the TLS session (the STARTTLS injection flaw), so they refuse it.
    pub fn into_stream(self) -> Result<BoxStream, String> {
        if self.buffer.is_empty() {
            Ok(self.stream)
        } else {
            Err(format!(
                "the server sent {} unexpected bytes before the TLS handshake",
                self.buffer.len()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_credentials_and_default_port() {
        let p = ProxyTarget::parse("http://user:pa:ss@proxy.corp:8080/").unwrap();
        assert_eq!(p.host, "proxy.corp");
        assert_eq!(p.port, 8080);
        assert_eq!(p.credentials, Some(("user".into(), "pa:ss".into())));
        assert_eq!(p.display(), "proxy.corp:8080");
        let p = ProxyTarget::parse("http://127.0.0.1").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.credentials),
            ("127.0.0.1", 3128, None)
        );
        assert!(ProxyTarget::parse("https://proxy:1").is_err());
        assert!(ProxyTarget::parse("http://:1").is_err());
    }

    #[test]
    fn proxy_url_errors_never_quote_the_password() {
        for url in [
            "https://alice:s3cret@proxy.corp:3128",
            "http://alice:s3cret@proxy.corp:99999",
            "http://alice:s3cret@:3128",
            "http://alice:s3cret@proxy.corp:port",
        ] {
            let error = ProxyTarget::parse(url).unwrap_err();
            assert!(!error.contains("s3cret"), "{url}: {error}");
            assert!(error.contains("alice:***@"), "{url}: {error}");
        }
    }
}
