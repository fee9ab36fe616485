//! The operator as a user runs it: a standalone kube-sim, `netreach run` as its own process,
//! and kubectl to apply, wait, get and describe.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use support::Peers;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubectl(
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    let mut command = Command::new("kubectl");
    command
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("kubectl is installed");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_sees_a_check_become_ready_with_columns_events_and_a_locked_down_probe_pod() {
    let peers = Peers::get();
    let images = HashMap::from([(
        "ghcr.io/netreach/netreach:e2e".to_owned(),
        PathBuf::from(env!("CARGO_BIN_EXE_netreach")),
    )]);
    let sim = kube_sim::KubeSim::start(kube_sim::Options {
        images,
        ..Default::default()
    })
    .await
    .unwrap();
    let kubeconfig = sim.kubeconfig_path().to_owned();
    let ok = |args: &[&str], stdin: Option<&str>| {
        let (success, stdout, stderr) = kubectl(&kubeconfig, args, stdin);
        assert!(success, "kubectl {args:?}: {stderr}");
        stdout
    };
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds");
    ok(&["apply", "-f", crds.to_str().unwrap()], None);
    let pem = std::fs::read_to_string(peers.public_ca()).unwrap();
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    let manifests = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: peers-ca, namespace: default}}
data:
  ca.crt: |
{indented}---
apiVersion: netreach.dev/v1alpha1
kind: ConnectivityProfile
metadata: {{name: maas360-local, namespace: default}}
spec:
  defaults: {{timeout: 3s, tls: {{expectedIssuer: {{organization: Test Public CA}}, caBundleRef: {{configMap: peers-ca}}}}}}
  dns: {{nameservers: ["{dns}"]}}
  endpoints:
    - {{name: mpnsv2-m3, host: mpnsv2.m3.maas360.com, ports: [{{port: {https}, protocol: HTTPS}}]}}
    - {{name: mail, host: mail.example.com, ports: [{{port: {smtp}, protocol: SMTP, tls: {{mode: StartTLS}}, smtp: {{expectedAuth: [LOGIN, CRAM-MD5]}}}}]}}
---
apiVersion: netreach.dev/v1alpha1
kind: EgressCheck
metadata: {{name: cloud-extender, namespace: default}}
spec:
  profileRef: {{name: maas360-local}}
  runner: {{podLabels: {{app: cloud-extender}}}}
"#,
        dns = peers.dns(),
        https = peers.port("PEER_HTTPS_PORT"),
        smtp = peers.port("PEER_SMTP_PORT"),
    );
    ok(&["apply", "-f", "-"], Some(&manifests));
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _operator = Killed(
        Command::new(env!("CARGO_BIN_EXE_netreach"))
            .args([
                "run",
                "--probe-image",
                "ghcr.io/netreach/netreach:e2e",
                "--metrics-addr",
            ])
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--health-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    ok(
        &[
            "wait",
            "--for=condition=Ready",
            "echk/cloud-extender",
            "--timeout=60s",
        ],
        None,
    );
    let table = ok(&["get", "echk"], None);
    let row = table
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    // NAME READY PASS FAIL INTERCEPTED LAST-RUN AGE
    assert_eq!(
        &row[..5],
        ["cloud-extender", "True", "2", "0", "0"],
        "{table}"
    );
    let profiles = ok(&["get", "cprof"], None);
    let row = profiles
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(&row[..3], ["maas360-local", "2", "True"], "{profiles}");
    let pod_spec = ok(
        &[
            "get",
            "jobs",
            "-l",
            "netreach.dev/check=cloud-extender",
            "-o",
            "jsonpath={.items[0].spec.template.spec}",
        ],
        None,
    );
    let pod: serde_json::Value = serde_json::from_str(&pod_spec).unwrap();
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(
        pod["containers"][0]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(
        pod["containers"][0]["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );

    // An interception on the path shows up in describe as an event and in the columns.
    let proxy = format!(
        r#"{{"spec":{{"proxy":{{"url":"http://127.0.0.1:{}"}}}}}}"#,
        peers.port("PEER_MITM_PORT")
    );
    ok(
        &[
            "patch",
            "echk",
            "cloud-extender",
            "--type",
            "merge",
            "-p",
            &proxy,
        ],
        None,
    );
    ok(
        &[
            "wait",
            "--for=condition=TLSIntercepted",
            "echk/cloud-extender",
            "--timeout=60s",
        ],
        None,
    );
    let described = ok(&["describe", "echk", "cloud-extender"], None);
    assert!(described.contains("TLSInterceptionDetected"), "{described}");
    assert!(
        described.contains("CN=Web Proxy, O=Example Corp., OU=IT"),
        "{described}"
    );
    let metrics = http_get(metrics_port, "/metrics").await;
    assert!(
        metrics.contains("netreach_endpoint_tls_intercepted{"),
        "{metrics}"
    );
    assert!(http_get(metrics_port, "/readyz").await.contains("ok"));
}

/// A minimal HTTP GET over a raw socket (the test needs no HTTP client crate for this).
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}
