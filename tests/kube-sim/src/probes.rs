//! Container probes as a kubelet runs them: `httpGet` (a status from 200 to 399 passes),
//! `tcpSocket` (a connection passes) and `exec` (exit 0 passes), each within `timeoutSeconds`,
//! against the pod's address (loopback: pods share the host's network).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The address probes go to: the pod IP kube-sim reports.
const POD_IP: &str = "127.0.0.1";

/// One probe attempt; true when it passes. `podman_name` is the container (podman runtime)
/// that `exec` probes run in.
pub async fn run(probe: &Value, container: &Value, podman_name: Option<&str>) -> bool {
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
    if let Some(http) = probe["httpGet"].as_object() {
        let Some(port) = port(&http["port"], container) else {
            return false;
        };
        let host = http
            .get("host")
            .and_then(Value::as_str)
            .unwrap_or(POD_IP)
            .to_owned();
        let path = http.get("path").and_then(Value::as_str).unwrap_or("/");
        let headers: Vec<(String, String)> = http
            .get("httpHeaders")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|h| {
                let text = |k: &str| h[k].as_str().unwrap_or_default().to_owned();
                (text("name"), text("value"))
            })
            .collect();
        // HTTPS probes skip certificate checks on a kubelet; kube-sim speaks plain HTTP only.
        if http.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
            return tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
                .await
                .is_ok_and(|c| c.is_ok());
        }
        return matches!(
            tokio::time::timeout(timeout, http_status(&host, port, path, &headers)).await,
            Ok(Some(200..=399))
        );
    }
    if let Some(tcp) = probe["tcpSocket"].as_object() {
        let Some(port) = port(&tcp["port"], container) else {
            return false;
        };
        let host = tcp.get("host").and_then(Value::as_str).unwrap_or(POD_IP);
        return tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .is_ok_and(|c| c.is_ok());
    }
    if let Some(exec) = probe["exec"].as_object() {
        let command: Vec<String> = exec
            .get("command")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        let Some((program, args)) = command.split_first() else {
            return false;
        };
        return match podman_name {
            Some(name) => crate::podman::exec(name, &command, timeout).await,
            // Process runtime: the command runs on the host, as the container's process does.
            None => {
                let status = tokio::process::Command::new(program)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status();
                matches!(tokio::time::timeout(timeout, status).await, Ok(Ok(s)) if s.success())
            }
        };
    }
    // gRPC probes are not run: the container never becomes ready, which shows.
    false
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(port: &Value, container: &Value) -> Option<u16> {
    if let Some(number) = port.as_u64() {
        return u16::try_from(number).ok();
    }
    let name = port.as_str()?;
    if let Ok(number) = name.parse() {
        return Some(number);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// The status code of a GET, as a kubelet sends it.
async fn http_status(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Option<u16> {
    let mut stream = TcpStream::connect((host, port)).await.ok()?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_ports_resolve_through_the_container() {
        let container = json!({"ports": [{"name": "health", "containerPort": 8081}]});
        assert_eq!(port(&json!("health"), &container), Some(8081));
        assert_eq!(port(&json!(9090), &container), Some(9090));
        assert_eq!(port(&json!("metrics"), &container), None);
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_3xx_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer).await;
                let response = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                stream.write_all(response.as_bytes()).await.unwrap();
            }
        });
        let probe = json!({"httpGet": {"path": "/readyz", "port": port}});
        assert!(run(&probe, &json!({}), None).await);
        assert!(!run(&probe, &json!({}), None).await);
    }
}
