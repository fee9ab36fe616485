//! The Helm chart with the real Helm engine (helm-python-sdk): lint, render with default and
//! non-default values, no wildcard RBAC, RBAC that covers every call the operator makes, CRDs
//! in sync, and the rendered chart applied to kube-sim with kubectl.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Rendered {
    lint: Value,
    /// Every rendered object.
    objects: Vec<Value>,
}

/// Lints and renders the chart with `values` as release `netreach` in `netreach-system`.
fn render(values: Value) -> Rendered {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/chart/helm.py"))
        .arg(repo().join("charts/netreach"))
        .args(["netreach", "netreach-system"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(values.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "helm failed (is helm-python-sdk installed by tests/peers/install.sh?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut objects = Vec::new();
    let manifests = result["manifests"].as_object().unwrap();
    for (template, text) in manifests {
        if template.ends_with("NOTES.txt") {
            continue;
        }
        for document in serde_norway::Deserializer::from_str(text.as_str().unwrap()) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{template}: {e}"));
            if !value.is_null() {
                objects.push(value);
            }
        }
    }
    Rendered {
        lint: result["lint"].clone(),
        objects,
    }
}

fn all_flavors() -> Value {
    json!({
        "watchNamespaces": ["mdm", "itsm"],
        "probeImage": "registry.example.com/netreach:probe",
        "replicaCount": 3,
        "logFormat": "text",
        "policy": {"allowedFlavors": ["NetworkPolicy", "Cilium", "CiliumEgressGateway", "Calico", "Istio", "AdminNetworkPolicy", "ClusterNetworkPolicy", "EgressFirewall"]},
        "metrics": {"serviceMonitor": {"enabled": true}},
        "podDisruptionBudget": {"enabled": true},
    })
}

fn kinds(rendered: &Rendered) -> Vec<String> {
    rendered
        .objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_chart_lints_clean_with_defaults_and_with_every_option() {
    for values in [json!({}), all_flavors()] {
        let rendered = render(values.clone());
        let messages = rendered.lint["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let serious: Vec<&Value> = messages
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 2)
            .collect();
        assert!(serious.is_empty(), "lint with {values}: {serious:?}");
        assert!(
            rendered.lint["errors"].as_array().is_none_or(Vec::is_empty),
            "{}",
            rendered.lint
        );
    }
    let defaults = render(json!({}));
    let kinds = kinds(&defaults);
    for expected in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} missing from {kinds:?}"
        );
    }
    let deployment = defaults
        .objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let args: Vec<&str> = spec["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-election"), "{args:?}");
    assert!(
        args.iter()
            .any(|a| a.starts_with("--probe-image=ghcr.io/netreach/netreach:")),
        "{args:?}"
    );
    let security = &spec["containers"][0]["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );

    let every = render(all_flavors());
    let kinds: Vec<String> = every
        .objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains(&"ServiceMonitor".to_owned())
            && kinds.contains(&"PodDisruptionBudget".to_owned())
    );
    let roles: Vec<&Value> = every
        .objects
        .iter()
        .filter(|o| o["kind"] == "Role" && o["metadata"]["namespace"] != "netreach-system")
        .collect();
    assert_eq!(roles.len(), 2, "one Role per watched namespace");
    let args = every
        .objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap()["spec"]["template"]["spec"]["containers"][0]["args"]
        .to_string();
    assert!(
        args.contains("--namespace=mdm")
            && args.contains("--namespace=itsm")
            && args.contains("registry.example.com/netreach:probe")
    );
}

#[test]
fn values_outside_the_schema_are_refused() {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/chart/helm.py"))
        .arg(repo().join("charts/netreach"))
        .args(["netreach", "netreach-system"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"policy": {"allowedFlavors": ["Bogus"]}}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || text.contains("Bogus"),
        "a flavor outside the schema must be refused: {text}"
    );
}

/// Every RBAC rule in the rendered chart as (verb, group, resource).
fn granted(rendered: &Rendered) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for object in rendered
        .objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        for rule in object["rules"].as_array().unwrap() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect()
            };
            for verb in list("verbs") {
                for group in list("apiGroups") {
                    for resource in list("resources") {
                        set.insert((verb.clone(), group.clone(), resource.clone()));
                    }
                }
            }
        }
    }
    set
}

#[test]
fn rendered_rbac_has_no_wildcards() {
    for values in [json!({}), all_flavors()] {
        for (verb, group, resource) in granted(&render(values)) {
            assert!(
                !verb.contains('*') && !group.contains('*') && !resource.contains('*'),
                "wildcard in {verb} {group} {resource}"
            );
        }
    }
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    for name in [
        "connectivityprofiles.netreach.dev.yaml",
        "egresschecks.netreach.dev.yaml",
    ] {
        let chart = std::fs::read(repo().join("charts/netreach/crds").join(name)).unwrap();
        let generated = std::fs::read(repo().join("crds").join(name)).unwrap();
        assert!(
            chart == generated,
            "charts/netreach/crds/{name} drifted; copy crds/{name} over it"
        );
    }
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rendered_chart_applies_to_kube_sim_with_kubectl() {
    let sim = kube_sim::KubeSim::start(kube_sim::Options::default())
        .await
        .unwrap();
    let kubeconfig = sim.kubeconfig_path().to_owned();
    let (ok, out) = kubectl(
        &kubeconfig,
        &[
            "apply",
            "-f",
            repo().join("charts/netreach/crds").to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{out}");
    for namespace in ["netreach-system", "mdm", "itsm"] {
        let (ok, out) = kubectl(
            &kubeconfig,
            &["apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"),
        );
        assert!(ok, "{out}");
    }
    for values in [json!({}), all_flavors()] {
        let rendered = render(values);
        // The ServiceMonitor needs the Prometheus operator's CRD, which kube-sim does not have.
        let documents: String = rendered
            .objects
            .iter()
            .filter(|o| o["kind"] != "ServiceMonitor")
            .map(|o| format!("---\n{}", serde_norway::to_string(o).unwrap()))
            .collect();
        let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", "-"], &documents);
        assert!(ok, "kubectl apply of the rendered chart failed:\n{out}");
        assert!(out.contains("deployment.apps/netreach"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_rbac_covers_every_call_the_operator_makes() {
    use support::cluster::{Cluster, eventually};
    let cluster = Cluster::start("rbac").await;
    let sim = cluster.sim.as_ref().expect("kube-sim audits the calls");
    let text = std::fs::read_to_string(
        repo().join("tests/fixtures/upstream-crds/adminnetworkpolicy.yaml"),
    )
    .unwrap();
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition = serde_norway::from_str(&text).unwrap();
    kube::Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(cluster.client.clone())
        .create(&Default::default(), &crd)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 2048];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let pem = std::fs::read_to_string(support::Peers::get().public_ca()).unwrap();
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    cluster
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: extra-ca}}\ndata:\n  ca.crt: |\n{indented}---\napiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: p}}\nspec:\n  defaults: {{tls: {{caBundleRef: {{configMap: extra-ca}}}}}}\n  endpoints:\n    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n  policy: {{podSelector: {{matchLabels: {{app: a}}}}, flavors: [NetworkPolicy, AdminNetworkPolicy], refreshInterval: 1s}}\n---\napiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {{name: c}}\nspec:\n  profileRef: {{name: p}}\n  interval: 1s\n  historyLimit: 1\n"
        ))
        .await;
    // The operator's own client, told apart by its user agent.
    let mut config = sim.kube_config();
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("netreach-operator"),
    ));
    let client = kube::Client::try_from(config).unwrap();
    let settings = netreach::controller::Settings {
        leader_election: true,
        ..cluster.settings("rbac")
    };
    let ctx = std::sync::Arc::new(netreach::controller::Context::new(
        client,
        settings,
        Default::default(),
    ));
    let running = ctx.clone();
    let operator = tokio::spawn(async move {
        netreach::controller::run(running, vec![], std::future::pending()).await
    });
    let checks = cluster.api::<netreach::api::EgressCheck>();
    eventually(Duration::from_secs(30), "a few runs with pruning", || {
        let checks = checks.clone();
        async move {
            let check = checks.get("c").await.ok()?;
            (check.status?.last_run?.run? >= 1).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster
        .api::<netreach::api::ConnectivityProfile>()
        .delete("p", &Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    operator.abort();

    let calls = sim.audit("netreach-operator");
    assert!(calls.len() > 10, "{calls:?}");
    let rendered =
        render(json!({"policy": {"allowedFlavors": ["NetworkPolicy", "AdminNetworkPolicy"]}}));
    let granted = granted(&rendered);
    for (verb, group, resource) in &calls {
        // Discovery and the CRDs' own group are readable by every authenticated client.
        if resource == "customresourcedefinitions" {
            continue;
        }
        assert!(
            granted.contains(&(verb.clone(), group.clone(), resource.clone())),
            "the operator called {verb} {group}/{resource}, which the chart's RBAC does not grant"
        );
    }
    assert!(
        calls.iter().any(|(v, _, r)| v == "get" && r == "pods/log"),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|(v, _, r)| v == "delete" && r == "jobs"),
        "pruning was exercised: {calls:?}"
    );
}
