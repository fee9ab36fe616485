//! The monitoring mixin with the real tools: the chart's PrometheusRule checked and unit-tested
//! by promtool, the dashboard's queries parsed by Prometheus, and a real Prometheus scraping
//! `netreach run` on kube-sim that evaluates every dashboard query and alert expression and
//! fires NetReachEndpointUnreachable when an endpoint stops.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use netreach::api::EgressCheck;
use netreach::api::check::RunState;
use serde_json::{Value, json};
use support::cluster::{BROKEN_PROBE_IMAGE, Cluster, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const ALERTS: [&str; 7] = [
    "NetReachEndpointUnreachable",
    "NetReachTLSIntercepted",
    "NetReachCertificateExpiringSoon",
    "NetReachCertificateExpired",
    "NetReachCheckNotRunning",
    "NetReachProbeRunsFailing",
    "NetReachOperatorDown",
];

/// Every object the chart renders with `values` (as release `netreach` in `netreach-system`).
fn render(values: &Value) -> Vec<Value> {
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
        "helm refused {values} (is helm-python-sdk installed by tests/peers/install.sh?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut objects = Vec::new();
    for (template, text) in result["manifests"].as_object().unwrap() {
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
    objects
}

fn monitoring_values() -> Value {
    json!({"monitoring": {"prometheusRule": {"enabled": true}, "dashboards": {"enabled": true}}})
}

/// The rule groups of the chart's PrometheusRule, as a Prometheus rule file.
fn rendered_rules(values: &Value) -> Value {
    let objects = render(values);
    let rules: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "PrometheusRule")
        .collect();
    assert_eq!(rules.len(), 1, "one PrometheusRule with {values}");
    rules[0]["spec"].clone()
}

fn alert_rules(rules: &Value) -> Vec<Value> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// Runs promtool, returning whether it succeeded and what it printed.
fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (Debian package prometheus, installed by tests/peers/install.sh)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write_yaml(path: &Path, value: &Value) {
    std::fs::write(path, serde_norway::to_string(value).unwrap()).unwrap();
}

#[test]
fn the_charts_monitoring_files_are_the_ones_in_monitoring() {
    for name in ["netreach.rules.yaml", "netreach-dashboard.json"] {
        let chart = std::fs::read(repo().join("charts/netreach/files").join(name)).unwrap();
        let mixin = std::fs::read(repo().join("monitoring").join(name)).unwrap();
        assert!(
            chart == mixin,
            "charts/netreach/files/{name} drifted; copy monitoring/{name} over it"
        );
    }
    let objects = render(&monitoring_values());
    let dashboards: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 1, "one dashboard ConfigMap");
    let shipped: Value =
        serde_json::from_str(dashboards[0]["data"]["netreach.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("monitoring/netreach-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, file);
    // The rendered rules are the mixin's, the operator's job being the metrics Service's.
    let mixin: Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("monitoring/netreach.rules.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rendered_rules(&monitoring_values()), mixin);
    // Both are off by default.
    let defaults = render(&json!({}));
    assert!(
        !defaults.iter().any(|o| o["kind"] == "PrometheusRule"
            || o["metadata"]["labels"]["grafana_dashboard"] == "1")
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_charts_rendered_rules() {
    let dir = tempfile::tempdir().unwrap();
    write_yaml(
        &dir.path().join("netreach.rules.yaml"),
        &rendered_rules(&monitoring_values()),
    );
    let (ok, out) = promtool(&["check", "rules", "netreach.rules.yaml"], dir.path());
    assert!(ok && out.contains("SUCCESS: 7 rules found"), "{out}");
    // The unit tests name the rule file as ../netreach.rules.yaml, as in monitoring/.
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::copy(
        repo().join("monitoring/tests/netreach.rules.test.yaml"),
        dir.path().join("tests/netreach.rules.test.yaml"),
    )
    .unwrap();
    let (ok, out) = promtool(
        &["test", "rules", "netreach.rules.test.yaml"],
        &dir.path().join("tests"),
    );
    assert!(ok && out.contains("SUCCESS"), "{out}");

    // A different job for NetReachOperatorDown reaches the rules; promtool still agrees.
    let custom = rendered_rules(
        &json!({"monitoring": {"prometheusRule": {"enabled": true, "operatorJob": "egress-operator", "labels": {"release": "kube-prometheus-stack"}}}}),
    );
    let down = alert_rules(&custom)
        .into_iter()
        .find(|r| r["alert"] == "NetReachOperatorDown")
        .unwrap();
    assert_eq!(
        down["expr"].as_str().unwrap().trim(),
        "absent(up{job=\"egress-operator\"} == 1)"
    );
    write_yaml(&dir.path().join("custom.rules.yaml"), &custom);
    let (ok, out) = promtool(&["check", "rules", "custom.rules.yaml"], dir.path());
    assert!(ok, "{out}");
    // And promtool does refuse a broken rule, so its verdict above means something.
    let mut broken = custom.clone();
    broken["groups"][0]["rules"][0]["expr"] = json!("max by (namespace (netreach_endpoint_up");
    write_yaml(&dir.path().join("broken.rules.yaml"), &broken);
    let (ok, out) = promtool(&["check", "rules", "broken.rules.yaml"], dir.path());
    assert!(!ok, "{out}");
}

#[test]
fn every_alert_has_a_runbook_and_unit_tests_where_it_fires_and_where_it_does_not() {
    let rules = rendered_rules(&monitoring_values());
    let alerts = alert_rules(&rules);
    let names: BTreeSet<&str> = alerts
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert_eq!(names, ALERTS.into_iter().collect());
    for alert in &alerts {
        let runbook = alert["annotations"]["runbook"].as_str().unwrap_or_default();
        assert!(
            runbook.len() > 80 && alert["annotations"]["summary"].is_string(),
            "{alert}"
        );
        assert!(alert["labels"]["severity"].is_string(), "{alert}");
    }
    let tests: Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("monitoring/tests/netreach.rules.test.yaml")).unwrap(),
    )
    .unwrap();
    // alert -> (a case where it fires, a case where it does not)
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for test in tests["tests"].as_array().unwrap() {
        assert!(
            !test["input_series"].as_array().unwrap().is_empty(),
            "{test}"
        );
        for case in test["alert_rule_test"].as_array().unwrap() {
            let entry = cases
                .entry(case["alertname"].as_str().unwrap().to_owned())
                .or_default();
            if case["exp_alerts"].as_array().unwrap().is_empty() {
                entry.1 = true;
            } else {
                entry.0 = true;
            }
        }
    }
    for name in ALERTS {
        assert_eq!(
            cases.get(name),
            Some(&(true, true)),
            "{name} needs a case where it fires and one where it does not"
        );
    }
}

/// Every (panel id, title, expression) of the dashboard, its variables set: `$namespace` and
/// `$check` to all, `$__rate_interval` to `rate_interval`.
fn dashboard_queries(rate_interval: &str) -> Vec<(i64, String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("monitoring/netreach-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", rate_interval)
                .replace("$namespace", ".*")
                .replace("$check", ".*");
            queries.push((
                panel["id"].as_i64().unwrap(),
                panel["title"].as_str().unwrap().to_owned(),
                expr,
            ));
        }
    }
    queries
}

#[test]
fn the_dashboard_has_unique_panel_ids_and_every_query_parses() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("monitoring/netreach-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_i64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        if panel["type"] != "row" {
            let targets = panel["targets"].as_array().expect("panel targets");
            assert!(!targets.is_empty(), "{}", panel["title"]);
            let refs: BTreeSet<&str> = targets
                .iter()
                .map(|t| t["refId"].as_str().unwrap())
                .collect();
            assert_eq!(
                refs.len(),
                targets.len(),
                "refIds repeat in {}",
                panel["title"]
            );
            assert_eq!(panel["datasource"]["uid"], "${datasource}");
        }
    }
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Endpoints up per check",
        "TLS interception",
        "Certificate expiry",
        "Probe latency per stage (p95)",
        "Probe run failures",
        "Outages over time",
        "Reconciles",
    ] {
        assert!(titles.contains(&wanted), "{wanted} missing from {titles:?}");
    }
    // Prometheus's own parser: each expression becomes a recording rule for promtool.
    let queries = dashboard_queries("5m");
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (id, _, expr))| json!({"record": format!("dashboard:panel_{id}:{i}"), "expr": expr}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    write_yaml(
        &dir.path().join("dashboard.rules.yaml"),
        &json!({"groups": [{"name": "dashboard", "rules": rules}]}),
    );
    let (ok, out) = promtool(&["check", "rules", "dashboard.rules.yaml"], dir.path());
    assert!(
        ok && out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
}

/// Ends a child process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET on loopback (HTTP/1.0, so the body is neither chunked nor kept alive).
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nhost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// An instant query's result vector (empty on error).
async fn query(port: u16, expr: &str) -> Vec<Value> {
    let Some((200, body)) = get(port, &format!("/api/v1/query?query={}", encode(expr))).await
    else {
        return vec![];
    };
    let answer: Value = serde_json::from_str(&body).unwrap_or_default();
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The alerts Prometheus has, as (name, state, labels).
async fn alerts(port: u16) -> Vec<(String, String, Value)> {
    let Some((200, body)) = get(port, "/api/v1/alerts").await else {
        return vec![];
    };
    let answer: Value = serde_json::from_str(&body).unwrap_or_default();
    answer["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                a["state"].as_str().unwrap_or_default().to_owned(),
                a["labels"].clone(),
            )
        })
        .collect()
}

fn firing(alerts: &[(String, String, Value)], name: &str, endpoint: Option<&str>) -> bool {
    alerts.iter().any(|(n, state, labels)| {
        n == name && state == "firing" && endpoint.is_none_or(|e| labels["endpoint"] == e)
    })
}

/// Answers every connection with a 204; aborting the handle stops it.
async fn http_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (port, handle)
}

/// A TLS server presenting `leaf`.
async fn tls_server(leaf: rcgen::Certificate, key: rcgen::KeyPair) -> u16 {
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(b"hello\n").await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
    });
    port
}

/// A CA (its PEM) and two leaves it signs: `soon.example.com`, expiring in ten days, and
/// `old.example.com`, expired in 2021.
fn certificates() -> (String, [(rcgen::Certificate, rcgen::KeyPair); 2]) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Mixin Test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let soon = (k8s_openapi::jiff::Timestamp::now()
        + k8s_openapi::jiff::SignedDuration::from_hours(240))
    .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
    .date();
    let leaf = |name: &str, from: (i32, u8, u8), to: (i32, u8, u8)| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        (params.signed_by(&key, &issuer).unwrap(), key)
    };
    (
        ca.pem(),
        [
            leaf(
                "soon.example.com",
                (2024, 1, 1),
                (i32::from(soon.year()), soon.month() as u8, soon.day() as u8),
            ),
            leaf("old.example.com", (2019, 1, 1), (2021, 1, 1)),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scraping_the_operator_evaluates_every_query_and_fires_endpoint_unreachable()
 {
    let started = Instant::now();
    let cluster = Cluster::start("prometheus-mixin").await;
    let (ca, [(soon, soon_key), (old, old_key)]) = certificates();
    let soon_port = tls_server(soon, soon_key).await;
    let old_port = tls_server(old, old_key).await;
    let (api_port, api_server) = http_server().await;
    let ca_map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "mixin-ca"}, "data": {"ca.crt": ca}}))
            .unwrap();
    cluster
        .api::<ConfigMap>()
        .patch(
            "mixin-ca",
            &PatchParams::apply("netreach-e2e"),
            &Patch::Apply(&ca_map),
        )
        .await
        .unwrap();
    // vendor: an endpoint to stop, a certificate expiring in ten days, interception (a
    // warning) and an expired certificate (optional). broken: runs that fail, later.
    let tls = |name: &str, extra: &str| {
        format!("{{serverName: {name}.example.com, caBundleRef: {{configMap: mixin-ca}}{extra}}}")
    };
    let checks = format!(
        r#"apiVersion: netreach.dev/v1alpha1
kind: EgressCheck
metadata: {{name: vendor}}
spec:
  interval: 1s
  defaults: {{timeout: 2s}}
  endpoints:
    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {api_port}, protocol: HTTP}}]}}
    - {{name: soon, cidr: 127.0.0.1, tls: {soon}, ports: [{{port: {soon_port}, protocol: TLS}}]}}
    - {{name: intercepted, cidr: 127.0.0.1, tls: {intercepted}, ports: [{{port: {soon_port}, protocol: TLS}}]}}
    - {{name: old, cidr: 127.0.0.1, required: false, tls: {old}, ports: [{{port: {old_port}, protocol: TLS}}]}}
---
apiVersion: netreach.dev/v1alpha1
kind: EgressCheck
metadata: {{name: broken}}
spec:
  interval: 1s
  endpoints:
    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {api_port}, protocol: HTTP}}]}}
"#,
        soon = tls("soon", ""),
        intercepted = tls(
            "soon",
            ", expectedIssuer: {organization: Vendor Root CA}, onMismatch: Warn"
        ),
        old = tls("old", ""),
    );
    cluster.apply_yaml(&checks).await;

    // `netreach run` as its own process, as Prometheus would find it in a cluster.
    let metrics_port = free_port();
    let mut operator = Some(Killed(
        Command::new(env!("CARGO_BIN_EXE_netreach"))
            .args(["run", "--probe-image", &cluster.probe_image])
            .args(["--namespace", &cluster.namespace])
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg(format!("--health-addr=127.0.0.1:{}", free_port()))
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));

    // Prometheus: the chart's rules with every `for` at 1s, evaluated and scraped every second.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = rendered_rules(&monitoring_values());
    for group in rules["groups"].as_array_mut().unwrap() {
        for rule in group["rules"].as_array_mut().unwrap() {
            if rule.get("alert").is_some() {
                rule["for"] = json!("1s");
            }
        }
    }
    write_yaml(&dir.path().join("rules.yaml"), &rules);
    write_yaml(
        &dir.path().join("prometheus.yml"),
        &json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{
                "job_name": "netreach-metrics",
                "static_configs": [{"targets": [format!("127.0.0.1:{metrics_port}")]}],
            }],
        }),
    );
    let prometheus_port = free_port();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "prometheus runs (Debian package prometheus, installed by tests/peers/install.sh)",
            ),
    );
    eventually(Duration::from_secs(20), "Prometheus ready", || async {
        matches!(get(prometheus_port, "/-/ready").await, Some((200, _))).then_some(())
    })
    .await;

    // Once broken's first run delivered results, its runs fail from then on.
    let checks_api = cluster.api::<EgressCheck>();
    eventually(Duration::from_secs(30), "a first run of broken", || {
        let checks_api = checks_api.clone();
        async move {
            let check = checks_api.get("broken").await.ok()?;
            (check.status?.last_run?.state == Some(RunState::Succeeded)).then_some(())
        }
    })
    .await;
    checks_api
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runner": {"image": BROKEN_PROBE_IMAGE}}})),
        )
        .await
        .unwrap();

    // Every dashboard query returns data, and so does every alert expression whose condition
    // this setup holds (all but the operator down and the endpoint that has not stopped yet).
    let mut expressions: Vec<(String, String)> = dashboard_queries("15s")
        .into_iter()
        .map(|(id, title, expr)| (format!("panel {id} ({title})"), expr))
        .collect();
    let alert_exprs: BTreeMap<String, String> = alert_rules(&rules)
        .iter()
        .map(|a| {
            (
                a["alert"].as_str().unwrap().to_owned(),
                a["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (name, expr) in &alert_exprs {
        if name != "NetReachOperatorDown" && name != "NetReachEndpointUnreachable" {
            expressions.push((format!("alert {name}"), expr.clone()));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut empty = Vec::new();
        for (what, expr) in &expressions {
            if query(prometheus_port, expr).await.is_empty() {
                empty.push(format!("{what}: {expr}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no data after 60s from:\n{}",
            empty.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for name in [
        "NetReachTLSIntercepted",
        "NetReachCertificateExpiringSoon",
        "NetReachCertificateExpired",
        "NetReachCheckNotRunning",
        "NetReachProbeRunsFailing",
    ] {
        eventually(
            Duration::from_secs(10),
            &format!("{name} firing"),
            || async { firing(&alerts(prometheus_port).await, name, None).then_some(()) },
        )
        .await;
    }
    let Some((200, rule_health)) = get(prometheus_port, "/api/v1/rules").await else {
        panic!("no rules from Prometheus")
    };
    let rule_health: Value = serde_json::from_str(&rule_health).unwrap();
    for group in rule_health["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }

    // The api endpoint is up as far as Prometheus knows, and not alerted on.
    assert!(
        !query(
            prometheus_port,
            "netreach_endpoint_outage_active{check=\"vendor\",endpoint=\"api\"} == 0"
        )
        .await
        .is_empty()
    );
    let before = alerts(prometheus_port).await;
    assert!(
        !before
            .iter()
            .any(|(n, _, l)| n == "NetReachEndpointUnreachable" && l["endpoint"] == "api"),
        "{before:?}"
    );
    // It stops: the alert fires, and its expression returns that endpoint.
    let stopped = Instant::now();
    api_server.abort();
    eventually(
        Duration::from_secs(30),
        "NetReachEndpointUnreachable firing for api",
        || async {
            firing(
                &alerts(prometheus_port).await,
                "NetReachEndpointUnreachable",
                Some("api"),
            )
            .then_some(())
        },
    )
    .await;
    let unreachable = query(prometheus_port, &alert_exprs["NetReachEndpointUnreachable"]).await;
    assert!(
        unreachable
            .iter()
            .any(|s| s["metric"]["check"] == "vendor" && s["metric"]["endpoint"] == "api"),
        "{unreachable:?}"
    );
    // The optional endpoint with the expired certificate is in an outage too, but pages nobody.
    assert!(
        !unreachable.iter().any(|s| s["metric"]["endpoint"] == "old"),
        "{unreachable:?}"
    );
    let to_fire = stopped.elapsed();

    // The operator stops: NetReachOperatorDown.
    drop(operator.take());
    eventually(
        Duration::from_secs(30),
        "NetReachOperatorDown firing",
        || async {
            firing(&alerts(prometheus_port).await, "NetReachOperatorDown", None).then_some(())
        },
    )
    .await;
    assert!(
        !query(prometheus_port, &alert_exprs["NetReachOperatorDown"])
            .await
            .is_empty()
    );
    eprintln!(
        "prometheus mixin e2e: {:.1}s in all, NetReachEndpointUnreachable fired {:.1}s after the endpoint stopped",
        started.elapsed().as_secs_f64(),
        to_fire.as_secs_f64()
    );
}
