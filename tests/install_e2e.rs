//! The README's install, for real on one machine: the image built by `build/image.sh`, kube-sim
//! running pods as podman containers, `kubectl create namespace`, `helm install` of the chart
//! (NetworkPolicy enabled) with that image, the operator Deployment becoming available as a
//! container (user 65532, read-only root), a check whose probe pod runs as a container from
//! the same image and reads its mounted spec, CA bundle and bind Secret becoming Ready, and
//! `helm uninstall` keeping the CRDs and the check while the operator releases its lease.
//! Needs podman (tests/peers/install.sh installs it); every container and image it starts is
//! removed at the end.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Peers;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command, returning (success, stdout, stderr).
fn run(command: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} cannot start: {e}"));
    if let Some(text) = stdin {
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

fn podman(args: &[&str]) -> (bool, String, String) {
    run(Command::new("podman").args(args), None)
}

/// Removes the image (and the containers still using it) when the test ends, however it ends.
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--force", "--ignore", &self.0]);
    }
}

/// Removes a container started outside kube-sim when the test ends.
struct ContainerGuard(String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--ignore", "--time", "0", &self.0]);
    }
}

/// Builds the image with the project's recipe from the binary under test.
fn build_image(tag: &str) -> ImageGuard {
    let (ok, _, stderr) = podman(&["version"]);
    assert!(
        ok,
        "podman does not work here (bash tests/peers/install.sh installs it and writes /etc/containers/containers.conf): {stderr}"
    );
    let guard = ImageGuard(tag.to_owned());
    let (ok, stdout, stderr) = run(
        Command::new("bash")
            .arg(repo().join("build/image.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_netreach"), "--tag", tag]),
        None,
    );
    assert!(ok, "build/image.sh failed:\n{stderr}");
    assert_eq!(stdout.trim(), tag, "image.sh prints the tag");
    guard
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, stdout, stderr) = run(
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", kubeconfig.parent().unwrap()),
        stdin,
    );
    assert!(ok, "kubectl {args:?}: {stderr}");
    stdout
}

fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(kubeconfig, &all, None)).unwrap()
}

/// Installs or uninstalls the chart with the real Helm engine (tests/chart/release.py).
fn helm(args: &[&str], values: Option<&Value>) -> Value {
    let (ok, stdout, stderr) = run(
        Command::new("python3")
            .arg(repo().join("tests/chart/release.py"))
            .args(args),
        values.map(|v| v.to_string()).as_deref(),
    );
    assert!(
        ok,
        "helm {args:?} failed (is helm-python-sdk installed by tests/peers/install.sh?):\n{stderr}"
    );
    serde_json::from_str(&stdout).unwrap()
}

/// Polls `probe` every 200 ms until it returns Some, or panics after `timeout`.
fn eventually<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn step(start: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_install_runs_the_operator_and_its_probes_as_containers() {
    let start = Instant::now();
    let peers = Peers::get();
    let tag = format!("localhost/netreach:install-e2e-{}", std::process::id());
    let _image = build_image(&tag);
    step(start, "image built");

    // The image as a platform engineer meets it: locked down, versioned, nothing extra.
    let (ok, version, stderr) = podman(&[
        "run",
        "--rm",
        "--read-only",
        "--user",
        "65532",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        &tag,
        "--version",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        version.starts_with(&format!("netreach {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let revision = version
        .trim()
        .rsplit('(')
        .next()
        .unwrap()
        .trim_end_matches(')');
    assert!(
        revision.len() >= 7 && revision.chars().all(|c| c.is_ascii_hexdigit())
            || revision == "unknown",
        "a git revision: {version}"
    );
    let (ok, config, _) = podman(&["image", "inspect", "--format", "{{json .Config}}", &tag]);
    assert!(ok);
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(config["Entrypoint"], json!(["/netreach"]), "{config}");
    let files = image_files(&tag);
    let unexpected: Vec<&String> = files
        .iter()
        .filter(|f| {
            !(f.as_str() == "netreach"
                || f.starts_with("lib")
                || f.starts_with("usr/lib")
                || [
                    "etc/passwd",
                    "etc/group",
                    "etc/nsswitch.conf",
                    "etc/ssl/certs/ca-certificates.crt",
                ]
                .contains(&f.as_str()))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "the image holds only what the binary needs: {unexpected:?}"
    );
    assert!(files.iter().any(|f| f.contains("libc.so")), "{files:?}");
    step(start, "image checked");

    // SIGTERM as PID 1: `netreach probe` stops at once, with no partial results.
    sigterm_stops_a_probe_at_once(&tag);
    step(start, "probe stopped by SIGTERM");

    let sim = kube_sim::KubeSim::start(kube_sim::Options {
        runtime: kube_sim::Runtime::Podman,
        ..Default::default()
    })
    .await
    .unwrap();
    let kubeconfig = sim.kubeconfig_path().to_owned();
    let kubeconfig_arg = kubeconfig.to_str().unwrap();
    let api_server = sim
        .https_address()
        .expect("the podman runtime serves HTTPS");
    let kc = |args: &[&str]| kubectl(&kubeconfig, args, None);

    // The README's steps: a namespace (kubectl sends protobuf), the API server's endpoints
    // for the NetworkPolicy, then helm install.
    kc(&["create", "namespace", "netreach-system"]);
    let endpoints = kc(&[
        "get",
        "endpoints",
        "kubernetes",
        "-n",
        "default",
        "-o",
        r#"jsonpath={.subsets[*].addresses[*].ip} {.subsets[*].ports[*].port}"#,
    ]);
    assert_eq!(
        endpoints.trim(),
        format!("{} {}", api_server.ip(), api_server.port()),
        "the kubernetes endpoints name the address pods reach the API server at"
    );
    let (api_address, api_port) = endpoints.trim().split_once(' ').unwrap();
    let api_port: u16 = api_port.parse().unwrap();
    let (metrics_port, health_port) = (free_port(), free_port());
    let values = json!({
        "image": {"repository": tag.rsplit_once(':').unwrap().0, "tag": tag.rsplit_once(':').unwrap().1, "pullPolicy": "Never"},
        // One replica: pods share the host's network here, so a second would find its ports taken.
        "replicaCount": 1,
        "logFormat": "json",
        "metrics": {"port": metrics_port},
        "health": {"port": health_port},
        "networkPolicy": {
            "enabled": true,
            "apiServer": {"addresses": [api_address], "port": api_port},
        },
    });
    let release = helm(
        &[
            "install",
            kubeconfig_arg,
            repo().join("charts/netreach").to_str().unwrap(),
            "netreach",
            "netreach-system",
        ],
        Some(&values),
    );
    assert_eq!(release["status"], "deployed", "{release}");
    step(start, "helm install done");
    // As the README says: the rollout, then Available.
    kubectl(
        &kubeconfig,
        &[
            "rollout",
            "status",
            "deployment/netreach",
            "-n",
            "netreach-system",
            "--timeout=120s",
        ],
        None,
    );
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Available",
            "deployment/netreach",
            "-n",
            "netreach-system",
            "--timeout=10s",
        ],
        None,
    );
    step(start, "operator Deployment available");

    // The operator runs as a container with the chart's securityContext, as the runtime sees it.
    let pods = kubectl_json(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-n",
            "netreach-system",
            "-l",
            "app.kubernetes.io/name=netreach",
        ],
    );
    let pod = &pods["items"][0];
    let container_id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap();
    let name = container_id
        .strip_prefix("podman://")
        .unwrap_or_else(|| panic!("a podman container: {container_id}"));
    let (ok, inspect, stderr) = podman(&["container", "inspect", name]);
    assert!(ok, "{stderr}");
    let inspect: Value = serde_json::from_str(&inspect).unwrap();
    let inspect = &inspect[0];
    assert_eq!(
        inspect["Config"]["User"], "65532:65532",
        "runs as the chart's user"
    );
    assert_eq!(
        inspect["HostConfig"]["ReadonlyRootfs"], true,
        "read-only root"
    );
    assert!(
        inspect["HostConfig"]["SecurityOpt"]
            .to_string()
            .contains("no-new-privileges"),
        "{}",
        inspect["HostConfig"]["SecurityOpt"]
    );
    assert_eq!(
        inspect["EffectiveCaps"],
        json!(null),
        "every capability dropped: {}",
        inspect["EffectiveCaps"]
    );
    let mounts = inspect["Mounts"].to_string();
    assert!(
        mounts.contains("/var/run/secrets/kubernetes.io/serviceaccount"),
        "{mounts}"
    );
    // It answers on its metrics port and holds the lease.
    let metrics = eventually(Duration::from_secs(10), "metrics", || scrape(metrics_port));
    assert!(
        metrics.contains("netreach_reconcile_errors_total"),
        "{metrics}"
    );
    let lease = kubectl_json(
        &kubeconfig,
        &["get", "lease", "netreach", "-n", "netreach-system"],
    );
    assert_eq!(
        lease["spec"]["holderIdentity"].as_str(),
        pod["metadata"]["name"].as_str(),
        "{lease}"
    );
    let policy = kubectl_json(
        &kubeconfig,
        &["get", "networkpolicy", "netreach", "-n", "netreach-system"],
    );
    assert_eq!(
        policy["spec"]["egress"][0]["ports"][0]["port"],
        json!(api_server.port()),
        "{policy}"
    );

    // A check in a namespace of its own, against the loopback peers.
    kc(&["create", "namespace", "mdm"]);
    kubectl(
        &kubeconfig,
        &["apply", "-f", "-"],
        Some(&check_manifests(peers)),
    );
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            "echk/cloud-extender",
            "-n",
            "mdm",
            "--timeout=120s",
        ],
        None,
    );
    step(start, "check Ready");
    let check = kubectl_json(&kubeconfig, &["get", "echk", "cloud-extender", "-n", "mdm"]);
    let rows = check["status"]["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{check}");
    assert!(rows.iter().all(|r| r["outcome"] == "Pass"), "{rows:?}");
    // The probe pod ran as a container from the same image and finished cleanly.
    let probe_pods = kubectl_json(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-n",
            "mdm",
            "-l",
            "netreach.dev/check=cloud-extender",
        ],
    );
    let probe = &probe_pods["items"][0];
    let state = &probe["status"]["containerStatuses"][0];
    assert!(
        state["containerID"]
            .as_str()
            .unwrap()
            .starts_with("podman://"),
        "{state}"
    );
    assert_eq!(state["state"]["terminated"]["exitCode"], 0, "{state}");
    assert_eq!(probe["spec"]["containers"][0]["image"], json!(tag));
    let operator_pod = pod["metadata"]["name"].as_str().unwrap().to_owned();

    // helm uninstall: the operator stops (and hands its lease back); CRDs and checks stay.
    let uninstalled = Instant::now();
    let removed = helm(
        &["uninstall", kubeconfig_arg, "netreach", "netreach-system"],
        None,
    );
    assert_eq!(removed["status"], "uninstalled", "{removed}");
    eventually(
        Duration::from_secs(40),
        "the operator's container to stop",
        || {
            let (_, names, _) = podman(&["ps", "--all", "--format", "{{.Names}}"]);
            (!names.lines().any(|n| n == name)).then_some(())
        },
    );
    eprintln!(
        "the operator's container stopped {:?} after helm uninstall began",
        uninstalled.elapsed()
    );
    let lease = kubectl_json(
        &kubeconfig,
        &["get", "lease", "netreach", "-n", "netreach-system"],
    );
    assert_eq!(
        lease["spec"]["holderIdentity"],
        Value::Null,
        "released on SIGTERM by {operator_pod}: {lease}"
    );
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1, "{lease}");
    kc(&[
        "get",
        "crd",
        "egresschecks.netreach.dev",
        "connectivityprofiles.netreach.dev",
    ]);
    kc(&["get", "echk", "cloud-extender", "-n", "mdm"]);
    step(start, "helm uninstall done");
    let label = format!("label={}", sim.podman_label());
    sim.stop().await;
    let (_, left, _) = podman(&["ps", "--all", "--format", "{{.Names}}", "--filter", &label]);
    assert!(left.trim().is_empty(), "containers left behind: {left}");
    let elapsed = start.elapsed();
    eprintln!("install e2e took {:.1}s", elapsed.as_secs_f64());
    assert!(
        elapsed < Duration::from_secs(300),
        "the install test must stay under a few minutes"
    );
}

/// The metrics page, once it answers.
fn scrape(port: u16) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// Every file of the image (directories and symlinks left out).
fn image_files(tag: &str) -> Vec<String> {
    let name = format!("install-e2e-files-{}", std::process::id());
    let (ok, _, stderr) = podman(&["create", "--name", &name, tag]);
    assert!(ok, "{stderr}");
    let _container = ContainerGuard(name.clone());
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("podman export {name} | tar -tvf -"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|f| f.trim_start_matches("./").to_owned())
        .collect()
}

/// `netreach probe` as PID 1 stuck on a silent server: `podman stop` ends it at once with
/// 128+SIGTERM, not after podman's 10 s SIGKILL timeout.
fn sigterm_stops_a_probe_at_once(tag: &str) {
    // A server that accepts and never answers keeps the probe waiting for its 60s timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let port = silent.local_addr().unwrap().port();
    let spec = format!(
        "targets:\n- {{endpoint: silent, host: 127.0.0.1, port: {port}, protocol: HTTP, required: true, timeoutMs: 60000, tls: {{mode: Disabled, onMismatch: Fail, minDaysValid: 0}}}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    let name = format!("install-e2e-sigterm-{}", std::process::id());
    let _container = ContainerGuard(name.clone());
    let mount = format!("{}:/spec:ro", dir.path().display());
    let (ok, _, stderr) = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--log-driver",
        "k8s-file",
        "--network",
        "host",
        "--read-only",
        "--user",
        "65532",
        "--cap-drop",
        "ALL",
        "-v",
        &mount,
        tag,
        "probe",
        "--spec",
        "/spec/spec.yaml",
    ]);
    assert!(ok, "{stderr}");
    // Stop only once the probe is connected (a positive signal), so SIGTERM meets it mid-probe.
    let _peer = eventually(Duration::from_secs(20), "the probe to connect", || {
        silent.accept().ok()
    });
    let stopped = Instant::now();
    let (ok, _, stderr) = podman(&["stop", "--time", "10", &name]);
    let took = stopped.elapsed();
    assert!(ok, "{stderr}");
    // Unhandled, SIGTERM would leave podman waiting its 10 s for SIGKILL; handled, the stop
    // takes a fraction of a second (the margin is for a loaded CI machine).
    eprintln!("podman stop of a busy probe took {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "podman stop took {took:?}: SIGTERM was not handled"
    );
    let (_, code, _) = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(code.trim(), "143", "128 + SIGTERM");
    // podman logs replays the container's stderr on its own stderr.
    let (_, out, err) = podman(&["logs", &name]);
    let logs = out + &err;
    assert!(logs.contains("stopped by SIGTERM"), "{logs}");
    assert!(
        !logs.contains("NETREACH-RESULTS-BEGIN"),
        "no partial results: {logs}"
    );
}

/// A profile and check in `mdm` against the loopback peers: HTTPS with an expected issuer and
/// a CA bundle from a ConfigMap, LDAP with a bind Secret, so the probe pod reads its spec,
/// a ConfigMap and a Secret mounted as a kubelet mounts them.
fn check_manifests(peers: &Peers) -> String {
    let pem = std::fs::read_to_string(peers.public_ca()).unwrap();
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: peers-ca, namespace: mdm}}
data:
  ca.crt: |
{indented}---
apiVersion: v1
kind: Secret
metadata: {{name: ldap-bind, namespace: mdm}}
stringData: {{bindDN: "{bind_dn}", password: "{password}"}}
---
apiVersion: netreach.dev/v1alpha1
kind: ConnectivityProfile
metadata: {{name: maas360-local, namespace: mdm}}
spec:
  defaults: {{timeout: 3s}}
  dns: {{nameservers: ["{dns}"]}}
  endpoints:
    - name: mpnsv2-m3
      host: mpnsv2.m3.maas360.com
      ports: [{{port: {https}, protocol: HTTPS, tls: {{expectedIssuer: {{organization: Test Public CA}}, caBundleRef: {{configMap: peers-ca}}}}}}]
    - name: directory
      host: 127.0.0.1
      ports: [{{port: {ldap}, protocol: LDAP, ldap: {{bindSecretRef: {{name: ldap-bind}}}}}}]
---
apiVersion: netreach.dev/v1alpha1
kind: EgressCheck
metadata: {{name: cloud-extender, namespace: mdm}}
spec:
  profileRef: {{name: maas360-local}}
  runner: {{podLabels: {{app: cloud-extender}}}}
"#,
        dns = peers.dns(),
        https = peers.port("PEER_HTTPS_PORT"),
        ldap = peers.port("PEER_LDAP_PORT"),
        bind_dn = peers.var("PEER_LDAP_BIND_DN"),
        password = peers.var("PEER_LDAP_BIND_PASSWORD"),
    )
}

/// Pods whose securityContext or image a kubelet cannot satisfy fail as a kubelet fails them,
/// a pod past its activeDeadlineSeconds is stopped, and secret volumes get the kubelet's
/// layout, modes and group ownership.
#[tokio::test(flavor = "multi_thread")]
async fn podman_pods_fail_and_mount_as_a_kubelet_does() {
    let tag = format!("localhost/netreach:install-e2e-pods-{}", std::process::id());
    let _image = build_image(&tag);
    // The same image with a named user, which runAsNonRoot cannot verify.
    let named = format!("{tag}-named-user");
    let _named = ImageGuard(named.clone());
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Containerfile"),
        format!("FROM {tag}\nUSER nonroot\n"),
    )
    .unwrap();
    let (ok, _, stderr) = podman(&[
        "build",
        "--quiet",
        "--layers=false",
        "-t",
        &named,
        context.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let data = tempfile::tempdir().unwrap();
    let sim = kube_sim::KubeSim::start(kube_sim::Options {
        runtime: kube_sim::Runtime::Podman,
        data_dir: Some(data.path().to_owned()),
        ..Default::default()
    })
    .await
    .unwrap();
    let kubeconfig = sim.kubeconfig_path().to_owned();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!(
        "targets:\n- {{endpoint: silent, host: 127.0.0.1, port: {}, protocol: HTTP, required: true, timeoutMs: 60000, tls: {{mode: Disabled, onMismatch: Fail, minDaysValid: 0}}}}\n",
        silent.local_addr().unwrap().port()
    );
    let indented: String = spec.lines().map(|l| format!("    {l}\n")).collect();
    let manifests = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: hunter2}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: spec}}
data:
  spec.yaml: |
{indented}---
apiVersion: v1
kind: Pod
metadata: {{name: named-user}}
spec:
  restartPolicy: Never
  securityContext: {{runAsNonRoot: true}}
  containers: [{{name: main, image: "{named}", args: ["--version"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: missing-image}}
spec:
  restartPolicy: Never
  containers: [{{name: main, image: "localhost/netreach:absent", imagePullPolicy: Never}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: deadline}}
spec:
  restartPolicy: Never
  activeDeadlineSeconds: 2
  terminationGracePeriodSeconds: 5
  securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}}
  volumes:
    - {{name: spec, configMap: {{name: spec}}}}
    - {{name: creds, secret: {{secretName: creds, defaultMode: 0400}}}}
  containers:
    - name: main
      image: "{tag}"
      args: [probe, --spec, /etc/netreach/spec.yaml]
      securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
      volumeMounts:
        - {{name: spec, mountPath: /etc/netreach}}
        - {{name: creds, mountPath: /var/run/secrets/creds}}
"#
    );
    kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&manifests));
    let waiting = |pod: &str| {
        let pod = kubectl_json(&kubeconfig, &["get", "pod", pod]);
        let state = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        state.is_object().then_some(state)
    };
    let state = eventually(Duration::from_secs(30), "runAsNonRoot to refuse", || {
        waiting("named-user")
    });
    assert_eq!(state["reason"], "CreateContainerConfigError", "{state}");
    assert!(
        state["message"].as_str().unwrap().starts_with(
            "container has runAsNonRoot and image has non-numeric user (nonroot), cannot verify user is non-root"
        ),
        "{state}"
    );
    let state = eventually(Duration::from_secs(30), "the missing image", || {
        waiting("missing-image")
    });
    assert_eq!(state["reason"], "ErrImageNeverPull", "{state}");
    // The probe connects (it read its mounted spec), hangs on the silent server, and the
    // deadline stops it: SIGTERM, Failed, DeadlineExceeded.
    silent.set_nonblocking(true).unwrap();
    let _peer = eventually(Duration::from_secs(30), "the probe to connect", || {
        silent.accept().ok()
    });
    let pod = eventually(Duration::from_secs(30), "the deadline", || {
        let pod = kubectl_json(&kubeconfig, &["get", "pod", "deadline"]);
        (pod["status"]["phase"] == "Failed").then_some(pod)
    });
    assert_eq!(pod["status"]["reason"], "DeadlineExceeded", "{pod}");
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        terminated["exitCode"], 143,
        "stopped by SIGTERM: {terminated}"
    );
    let log = kubectl(&kubeconfig, &["logs", "deadline"], None);
    assert!(log.contains("stopped by SIGTERM"), "{log}");
    // The secret volume as a kubelet writes it: ..data links to a timestamped directory, the
    // key links into ..data, defaultMode 0400 widened to 0440 and group fsGroup.
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let volume = data.path().join("pods").join(uid).join("volumes/creds");
    let link = std::fs::read_link(volume.join("password")).unwrap();
    assert_eq!(link, PathBuf::from("..data/password"));
    assert!(
        std::fs::read_link(volume.join("..data"))
            .unwrap()
            .to_string_lossy()
            .starts_with("..")
    );
    let file = std::fs::metadata(volume.join("password")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(file.permissions().mode() & 0o7777, 0o440);
    assert_eq!((file.uid(), file.gid()), (0, 65532));
    assert_eq!(
        std::fs::read_to_string(volume.join("password")).unwrap(),
        "hunter2"
    );
    let label = format!("label={}", sim.podman_label());
    sim.stop().await;
    let (_, left, _) = podman(&["ps", "--all", "--format", "{{.Names}}", "--filter", &label]);
    assert!(left.trim().is_empty(), "containers left behind: {left}");
}
