//! The real kubectl against the emulator: apply (client- and server-side), get with printer
//! columns and categories, explain, describe, annotate, wait, delete with finalizers, logs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube_sim::{KubeSim, Options};
use serde_json::json;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs kubectl against the emulator; returns (success, stdout, stderr).
fn kubectl(sim: &KubeSim, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut command = Command::new("kubectl");
    command
        .args(args)
        .env("KUBECONFIG", sim.kubeconfig_path())
        .env("HOME", sim.kubeconfig_path().parent().unwrap());
    let output = match stdin {
        Some(text) => {
            use std::io::Write;
            let mut child = command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kubectl 1.32 is installed");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
        None => command.output().expect("kubectl 1.32 is installed"),
    };
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(sim: &KubeSim, args: &[&str]) -> String {
    let (success, stdout, stderr) = kubectl(sim, args, None);
    assert!(success, "kubectl {args:?} failed:\n{stderr}\n{stdout}");
    stdout
}

fn ok_stdin(sim: &KubeSim, args: &[&str], stdin: &str) -> String {
    let (success, stdout, stderr) = kubectl(sim, args, Some(stdin));
    assert!(success, "kubectl {args:?} failed:\n{stderr}\n{stdout}");
    stdout
}

async fn sim_with_examples() -> KubeSim {
    let sim = KubeSim::start(Options::default()).await.unwrap();
    let crds = repo().join("crds");
    ok(&sim, &["apply", "-f", crds.to_str().unwrap()]);
    ok_stdin(
        &sim,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mdm\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: itsm\n",
    );
    let examples = repo().join("examples");
    ok(&sim, &["apply", "-R", "-f", examples.to_str().unwrap()]);
    sim
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_applies_the_crds_and_examples_and_prints_the_columns() {
    let sim = sim_with_examples().await;
    let table = ok(&sim, &["get", "echk", "-n", "mdm"]);
    let header = table.lines().next().unwrap();
    for column in [
        "NAME",
        "READY",
        "PASS",
        "FAIL",
        "INTERCEPTED",
        "LAST RUN",
        "AGE",
    ] {
        assert!(header.contains(column), "{column} missing from {header:?}");
    }
    assert!(table.contains("cloud-extender"), "{table}");
    let profiles = ok(&sim, &["get", "cprof", "-n", "mdm"]);
    for column in ["ENDPOINTS", "RESOLVED", "POLICY"] {
        assert!(
            profiles.lines().next().unwrap().contains(column),
            "{profiles}"
        );
    }
    let everything = ok(&sim, &["get", "netreach", "-A"]);
    assert!(
        everything.contains("connectivityprofile.netreach.dev/maas360-m3"),
        "{everything}"
    );
    assert!(
        everything.contains("egresscheck.netreach.dev/cloud-extender"),
        "{everything}"
    );
    assert!(
        everything.contains("egresscheck.netreach.dev/itsm-integration"),
        "{everything}"
    );
    let explained = ok(&sim, &["explain", "egresscheck.spec.runner.podLabels"]);
    assert!(
        explained.contains("Labels for the probe pod"),
        "{explained}"
    );
    // A second apply of the same files changes nothing.
    let again = ok(
        &sim,
        &[
            "apply",
            "-R",
            "-f",
            repo().join("examples").to_str().unwrap(),
        ],
    );
    assert!(again.lines().all(|l| l.ends_with("unchanged")), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_custom_resources_are_refused_with_422_naming_the_field() {
    let sim = sim_with_examples().await;
    let profile = |endpoint: &str| {
        format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: bad, namespace: mdm}}\nspec:\n  endpoints:\n  - {endpoint}\n"
        )
    };
    for (endpoint, field) in [
        (
            "{name: a, host: a.example.com, ports: [{port: 70000, protocol: HTTPS}]}",
            "spec.endpoints[0].ports[0].port",
        ),
        (
            "{name: a, host: a.example.com, cidr: 10.0.0.1/32, ports: [{port: 443, protocol: TCP}]}",
            "exactly one of host or cidr",
        ),
        (
            "{name: a, host: a.example.com, ports: [{port: 21, protocol: GOPHER}]}",
            "spec.endpoints[0].ports[0].protocol",
        ),
    ] {
        let (success, _, stderr) = kubectl(&sim, &["apply", "-f", "-"], Some(&profile(endpoint)));
        assert!(!success, "{endpoint} was accepted");
        assert!(stderr.contains("is invalid"), "{stderr}");
        assert!(stderr.contains(field), "{field} not named in {stderr}");
    }
    let (success, _, stderr) = kubectl(
        &sim,
        &["apply", "-f", "-"],
        Some(&profile(
            "{name: a, host: a.example.com, portz: [], ports: [{port: 1, protocol: TCP}]}",
        )),
    );
    assert!(!success);
    assert!(stderr.contains("unknown field"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn annotate_wait_describe_and_delete_with_finalizers() {
    let sim = sim_with_examples().await;
    ok(
        &sim,
        &[
            "annotate",
            "echk",
            "cloud-extender",
            "-n",
            "mdm",
            "netreach.dev/run-now=1",
        ],
    );
    let annotated = ok(
        &sim,
        &[
            "get",
            "echk",
            "cloud-extender",
            "-n",
            "mdm",
            "-o",
            "jsonpath={.metadata.annotations.netreach\\.dev/run-now}",
        ],
    );
    assert_eq!(annotated, "1");
    // Status written the way the operator writes it satisfies kubectl wait.
    let resource = ApiResource {
        group: "netreach.dev".into(),
        version: "v1alpha1".into(),
        api_version: "netreach.dev/v1alpha1".into(),
        kind: "EgressCheck".into(),
        plural: "egresschecks".into(),
    };
    let checks: Api<DynamicObject> = Api::namespaced_with(sim.client(), "mdm", &resource);
    let status = json!({
        "apiVersion": "netreach.dev/v1alpha1", "kind": "EgressCheck",
        "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True", "reason": "AllRequiredEndpointsPass", "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]},
    });
    let waiter = {
        let path = sim.kubeconfig_path().to_owned();
        std::thread::spawn(move || {
            Command::new("kubectl")
                .args([
                    "wait",
                    "--for=condition=Ready",
                    "echk/cloud-extender",
                    "-n",
                    "mdm",
                    "--timeout=20s",
                ])
                .env("KUBECONFIG", &path)
                .env("HOME", path.parent().unwrap())
                .output()
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    checks
        .patch_status(
            "cloud-extender",
            &PatchParams::apply("netreach/test").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let waited = tokio::task::spawn_blocking(move || waiter.join().unwrap())
        .await
        .unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let described = ok(&sim, &["describe", "echk", "cloud-extender", "-n", "mdm"]);
    assert!(
        described.contains("AllRequiredEndpointsPass"),
        "{described}"
    );
    let ready = ok(&sim, &["get", "echk", "cloud-extender", "-n", "mdm"]);
    assert!(ready.lines().nth(1).unwrap().contains("True"), "{ready}");

    ok(
        &sim,
        &[
            "patch",
            "echk",
            "cloud-extender",
            "-n",
            "mdm",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":["netreach.dev/cleanup"]}}"#,
        ],
    );
    ok(
        &sim,
        &[
            "delete",
            "echk",
            "cloud-extender",
            "-n",
            "mdm",
            "--wait=false",
        ],
    );
    let pending = ok(
        &sim,
        &[
            "get",
            "echk",
            "cloud-extender",
            "-n",
            "mdm",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
    );
    assert!(!pending.is_empty(), "the finalizer holds the object");
    ok(
        &sim,
        &[
            "patch",
            "echk",
            "cloud-extender",
            "-n",
            "mdm",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    );
    let (found, _, stderr) = kubectl(&sim, &["get", "echk", "cloud-extender", "-n", "mdm"], None);
    assert!(!found && stderr.contains("NotFound"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_apply_and_job_logs_through_kubectl() {
    let images = HashMap::from([("busybox".to_owned(), PathBuf::from("/bin/sh"))]);
    let sim = KubeSim::start(Options {
        images,
        ..Options::default()
    })
    .await
    .unwrap();
    let config_map =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n";
    let applied = ok_stdin(&sim, &["apply", "--server-side", "-f", "-"], config_map);
    assert!(applied.contains("serverside-applied"), "{applied}");
    let (success, _, stderr) = kubectl(
        &sim,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "rival",
            "-f",
            "-",
        ],
        Some(&config_map.replace("fast", "slow")),
    );
    assert!(!success && stderr.contains("conflict"), "{stderr}");
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: hello\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: hello\n        image: busybox\n        command: [sh, -c, 'echo hello from kube-sim']\n";
    ok_stdin(&sim, &["apply", "-f", "-"], job);
    ok(
        &sim,
        &[
            "wait",
            "--for=condition=complete",
            "job/hello",
            "--timeout=20s",
        ],
    );
    let logs = ok(&sim, &["logs", "job/hello"]);
    assert_eq!(logs, "hello from kube-sim\n");
}

/// kubectl's imperative commands send protobuf for built-in kinds; each object arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn imperative_kubectl_create_commands_send_protobuf_and_work() {
    let images = HashMap::from([("busybox".to_owned(), PathBuf::from("/bin/sh"))]);
    let sim = KubeSim::start(Options {
        images,
        ..Options::default()
    })
    .await
    .unwrap();
    let get = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend(args);
        all.extend(["-o", "json"]);
        serde_json::from_str(&ok(&sim, &all)).unwrap()
    };
    ok(&sim, &["create", "namespace", "mdm"]);
    assert_eq!(get(&["namespace", "mdm"])["status"]["phase"], "Active");
    ok(
        &sim,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "mdm",
            "--from-literal=mode=fast",
            "--from-literal=level=3",
        ],
    );
    assert_eq!(
        get(&["configmap", "settings", "-n", "mdm"])["data"],
        json!({"mode": "fast", "level": "3"})
    );
    ok(
        &sim,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "-n",
            "mdm",
            "--from-literal=password=hunter2",
        ],
    );
    let secret = get(&["secret", "creds", "-n", "mdm"]);
    assert_eq!(secret["data"], json!({"password": "aHVudGVyMg=="}));
    ok(&sim, &["create", "serviceaccount", "runner", "-n", "mdm"]);
    ok(
        &sim,
        &[
            "create",
            "job",
            "hello",
            "-n",
            "mdm",
            "--image=busybox",
            "--",
            "/bin/sh",
            "-c",
            "echo hello from a job",
        ],
    );
    let job = get(&["job", "hello", "-n", "mdm"]);
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "busybox");
    assert_eq!(
        container["command"],
        json!(["/bin/sh", "-c", "echo hello from a job"])
    );
    ok(
        &sim,
        &[
            "wait",
            "--for=condition=Complete",
            "job/hello",
            "-n",
            "mdm",
            "--timeout=30s",
        ],
    );
    assert_eq!(
        ok(&sim, &["logs", "job/hello", "-n", "mdm"]).trim(),
        "hello from a job"
    );
    // What kube-sim does not decode is refused with what to do instead, not half-stored.
    let (success, _, stderr) = kubectl(
        &sim,
        &[
            "create",
            "deployment",
            "web",
            "-n",
            "mdm",
            "--image=busybox",
        ],
        None,
    );
    assert!(!success);
    assert!(
        stderr.contains("apps/v1 Deployment") && stderr.contains("JSON"),
        "{stderr}"
    );
    ok(&sim, &["delete", "namespace", "mdm"]);
}
