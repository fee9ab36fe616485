//! The Helm chart with the real Helm engine (helm-python-sdk): lint, render with default and
//! non-default values, values the schema refuses, no wildcard RBAC, RBAC that grants exactly
//! the calls the operator makes (each call granted, each grant called), CRDs in sync, the
//! rendered chart applied to kube-sim with kubectl, and the image recipe's tag.

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

/// Lints and renders the chart in `chart` with `values` as release `netreach` in
/// `netreach-system`, or says why Helm refused.
fn try_render(chart: &std::path::Path, values: &Value) -> Result<Rendered, String> {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/chart/helm.py"))
        .arg(chart)
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
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
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
    Ok(Rendered {
        lint: result["lint"].clone(),
        objects,
    })
}

/// Lints and renders the chart with `values`, which must be accepted.
fn render(values: Value) -> Rendered {
    try_render(&repo().join("charts/netreach"), &values).unwrap_or_else(|stderr| {
        panic!(
            "helm refused {values} (is helm-python-sdk installed by tests/peers/install.sh?):\n{stderr}"
        )
    })
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
    let chart = repo().join("charts/netreach");
    // The error, not NOTES.txt (which lists the flavors), must name the bad value.
    let refused = try_render(&chart, &json!({"policy": {"allowedFlavors": ["Bogus"]}}))
        .err()
        .expect("a flavor outside the schema is refused");
    assert!(
        refused.contains("/policy/allowedFlavors/0") && refused.contains("must be one of"),
        "{refused}"
    );
    // Two replicas without a Lease would both act.
    let refused = try_render(
        &chart,
        &json!({"replicaCount": 2, "leaderElection": {"enabled": false}}),
    )
    .err()
    .expect("replicas without leader election are refused");
    assert!(refused.contains("/replicaCount"), "{refused}");
    for accepted in [
        json!({"replicaCount": 1, "leaderElection": {"enabled": false}}),
        json!({"replicaCount": 3}),
    ] {
        assert!(
            try_render(&chart, &accepted).is_ok(),
            "{accepted} is refused"
        );
    }
}

#[test]
fn the_deployment_template_refuses_replicas_without_leader_election_even_without_the_schema() {
    // `helm install --skip-schema-validation` bypasses values.schema.json; the template holds.
    let copy = tempfile::tempdir().unwrap();
    let chart = copy.path().join("netreach");
    copy_dir(&repo().join("charts/netreach"), &chart);
    std::fs::remove_file(chart.join("values.schema.json")).unwrap();
    let refused = try_render(
        &chart,
        &json!({"replicaCount": 2, "leaderElection": {"enabled": false}}),
    )
    .err()
    .expect("the template refuses two replicas without a Lease");
    assert!(
        refused.contains("replicaCount is 2 but leaderElection.enabled is false"),
        "{refused}"
    );
    assert!(
        try_render(
            &chart,
            &json!({"replicaCount": 1, "leaderElection": {"enabled": false}})
        )
        .is_ok()
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
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

const EVERY_FLAVOR: [&str; 8] = [
    "NetworkPolicy",
    "Cilium",
    "CiliumEgressGateway",
    "Calico",
    "Istio",
    "AdminNetworkPolicy",
    "ClusterNetworkPolicy",
    "EgressFirewall",
];

/// Answers every connection with an empty 200, on a free loopback port.
async fn http_server() -> u16 {
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
    port
}

/// Grants the operator has but the scenario below cannot make it use, each with the reason.
/// Everything else the chart grants must show up in the calls.
const GRANTED_BUT_NOT_EXERCISED: [(&str, &str, &str, &str); 1] = [(
    "patch",
    "events.k8s.io",
    "events",
    "kube's Recorder patches an event only when the same event repeats (series)",
)];

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_rbac_grants_exactly_the_calls_the_operator_makes() {
    use support::cluster::{Cluster, eventually};
    let cluster = Cluster::start("rbac").await;
    let Some(sim) = cluster.sim_or_skip("auditing the calls") else {
        return;
    };
    // Every flavor's CRD, so every policy kind is applied and then deleted.
    let crds = kube::Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(cluster.client.clone());
    for file in support::upstream_crd_files() {
        let crd = serde_norway::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        crds.create(&Default::default(), &crd).await.unwrap();
    }
    let (port, tls_port) = (http_server().await, http_server().await);
    let dns = support::Peers::get().dns();
    let pem = std::fs::read_to_string(support::Peers::get().public_ca()).unwrap();
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    // A CA bundle from a ConfigMap and one from a Secret; a TLS endpoint that fails (an event;
    // the Istio egress gateway objects); every flavor.
    cluster
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: extra-ca}}\ndata:\n  ca.crt: |\n{indented}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: extra-ca}}\nstringData:\n  ca.crt: |\n{indented}---\napiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: p}}\nspec:\n  dns: {{nameservers: [\"{dns}\"]}}\n  defaults: {{tls: {{caBundleRef: {{configMap: extra-ca}}}}}}\n  endpoints:\n    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n    - {{name: secret-ca, cidr: 127.0.0.1/32, ports: [{{port: {tls_port}, protocol: HTTP, tls: {{caBundleRef: {{secret: extra-ca}}}}}}]}}\n    - {{name: web, host: mpnsv2.m3.maas360.com, required: false, ports: [{{port: {tls_port}, protocol: HTTPS}}]}}\n  policy:\n    podSelector: {{matchLabels: {{app: a}}}}\n    flavors: [{}]\n    egressGateway: {{nodeSelector: {{egress: \"true\"}}, egressIP: 192.0.2.10}}\n    istio: {{egressGateway: true, registryOnly: true}}\n    refreshInterval: 1s\n---\napiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {{name: c}}\nspec:\n  profileRef: {{name: p}}\n  interval: 1s\n  historyLimit: 1\n",
            EVERY_FLAVOR.join(", ")
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
    eventually(Duration::from_secs(30), "a first run", || {
        let checks = checks.clone();
        async move {
            let check = checks.get("c").await.ok()?;
            (check.status?.last_run?.run? >= 1).then_some(())
        }
    })
    .await;
    let profiles = cluster.api::<netreach::api::ConnectivityProfile>();
    let applied = eventually(Duration::from_secs(30), "every flavor applied", || {
        let profiles = profiles.clone();
        async move {
            let policies = profiles.get("p").await.ok()?.status?.policies;
            let flavors: BTreeSet<String> = policies.iter().map(|p| p.flavor.clone()).collect();
            (flavors.len() == EVERY_FLAVOR.len()).then_some(policies)
        }
    })
    .await;
    assert!(applied.len() >= 12, "{applied:?}");
    // Runs every second with historyLimit 1: finished Jobs get pruned; the Lease is renewed.
    eventually(
        Duration::from_secs(30),
        "a job pruned and the lease renewed",
        || {
            let calls = sim.audit("netreach-operator");
            async move {
                let made = |verb: &str, group: &str, resource: &str| {
                    calls.contains(&(verb.into(), group.into(), resource.into()))
                };
                (made("delete", "batch", "jobs") && made("update", "coordination.k8s.io", "leases"))
                    .then_some(())
            }
        },
    )
    .await;
    // No flavors any more: every kind is deleted (and the EgressFirewall read first).
    profiles
        .patch(
            "p",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"policy": {"flavors": []}}})),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "every policy object removed",
        || {
            let profiles = profiles.clone();
            async move {
                let status = profiles.get("p").await.ok()?.status?;
                status.policies.is_empty().then_some(())
            }
        },
    )
    .await;
    profiles.delete("p", &Default::default()).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the profile's cleanup finalizer released",
        || {
            let profiles = profiles.clone();
            async move { profiles.get_opt("p").await.ok()?.is_none().then_some(()) }
        },
    )
    .await;
    operator.abort();

    let calls: BTreeSet<(String, String, String)> = sim
        .audit("netreach-operator")
        .into_iter()
        // Discovery and the CRDs' own group are readable by every authenticated client.
        .filter(|(_, _, resource)| resource != "customresourcedefinitions")
        .collect();
    let rendered = render(json!({"policy": {"allowedFlavors": EVERY_FLAVOR}}));
    let granted = granted(&rendered);
    for (verb, group, resource) in &calls {
        assert!(
            granted.contains(&(verb.clone(), group.clone(), resource.clone())),
            "the operator called {verb} {group}/{resource}, which the chart's RBAC does not grant"
        );
    }
    for (verb, group, resource) in &granted {
        let excused = GRANTED_BUT_NOT_EXERCISED
            .iter()
            .any(|(v, g, r, _)| (*v, *g, *r) == (verb.as_str(), group.as_str(), resource.as_str()));
        assert!(
            excused || calls.contains(&(verb.clone(), group.clone(), resource.clone())),
            "the chart grants {verb} {group}/{resource} but the operator never called it: remove the grant (or exercise the call here)\ncalls: {calls:?}"
        );
    }
    for expected in [
        ("get", "", "pods/log"),
        ("delete", "batch", "jobs"),
        ("get", "", "secrets"),
        ("update", "coordination.k8s.io", "leases"),
        ("create", "events.k8s.io", "events"),
    ] {
        assert!(
            calls.contains(&(expected.0.into(), expected.1.into(), expected.2.into())),
            "{expected:?} was exercised: {calls:?}"
        );
    }
}

#[test]
fn the_image_recipe_tags_the_version_the_chart_pulls_by_default() {
    let output = Command::new("bash")
        .arg(repo().join("build/image.sh"))
        .arg("--print-tag")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let chart = std::fs::read_to_string(repo().join("charts/netreach/Chart.yaml")).unwrap();
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .unwrap()
        .trim()
        .trim_matches('"');
    assert_eq!(app_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        format!("localhost/netreach:{app_version}"),
        "the image tag the chart's default image.tag (its appVersion) names"
    );
}

#[test]
fn the_network_policy_allows_the_api_server_dns_and_the_operators_own_ports_only() {
    assert!(
        !kinds(&render(json!({}))).contains(&"NetworkPolicy".to_owned()),
        "off by default"
    );
    let rendered = render(json!({
        "metrics": {"port": 9090},
        "networkPolicy": {"enabled": true, "apiServer": {"addresses": ["10.0.0.5", "fd00::5", "10.1.0.0/28"], "port": 6443}},
    }));
    let policy = rendered
        .objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy");
    let spec = &policy["spec"];
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "netreach"
    );
    assert_eq!(
        spec["ingress"],
        json!([{"ports": [{"port": 9090, "protocol": "TCP"}, {"port": 8081, "protocol": "TCP"}]}])
    );
    let egress = spec["egress"].as_array().unwrap();
    assert_eq!(
        egress.len(),
        2,
        "the API server and DNS, nothing else: {egress:?}"
    );
    assert_eq!(
        egress[0],
        json!({"to": [{"ipBlock": {"cidr": "10.0.0.5/32"}}, {"ipBlock": {"cidr": "fd00::5/128"}}, {"ipBlock": {"cidr": "10.1.0.0/28"}}],
               "ports": [{"port": 6443, "protocol": "TCP"}]})
    );
    assert_eq!(
        egress[1]["ports"],
        json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
    );
    assert_eq!(
        egress[1]["to"][0]["podSelector"]["matchLabels"]["k8s-app"],
        "kube-dns"
    );
    // Enabled without the API server's addresses would cut the operator off: refused.
    let refused = try_render(
        &repo().join("charts/netreach"),
        &json!({"networkPolicy": {"enabled": true}}),
    )
    .err()
    .expect("no addresses is refused");
    assert!(
        refused.contains("/networkPolicy/apiServer/addresses"),
        "{refused}"
    );
}
