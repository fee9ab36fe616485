//! The operator end to end: kube-sim (or a real cluster) runs the probe Jobs as real
//! `netreach probe` processes against the loopback peers; the tests read what a user would.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use netreach::api::EgressCheck;
use netreach::probe::result::{Outcome, Reason};
use serde_json::json;
use support::Peers;
use support::cluster::{Cluster, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// A plain HTTP server on loopback answering 204; dropping the handle stops it.
async fn http_endpoint() -> (u16, tokio::task::JoinHandle<()>) {
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

async fn peers_ca(cluster: &Cluster) {
    let pem = std::fs::read_to_string(Peers::get().public_ca()).unwrap();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "peers-ca"}, "data": {"ca.crt": pem}}))
            .unwrap();
    cluster
        .api::<ConfigMap>()
        .patch(
            "peers-ca",
            &PatchParams::apply("netreach-e2e"),
            &Patch::Apply(&cm),
        )
        .await
        .unwrap();
}

fn condition(check: &EgressCheck, type_: &str) -> Option<(String, String, String)> {
    check
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_condition(cluster: &Cluster, name: &str, type_: &str, status: &str) -> EgressCheck {
    let api = cluster.api::<EgressCheck>();
    eventually(WAIT, &format!("{name} {type_}={status}"), || {
        let api = api.clone();
        async move {
            let check = api.get(name).await.ok()?;
            (condition(&check, type_)?.0 == status).then_some(check)
        }
    })
    .await
}

async fn jobs(cluster: &Cluster, check: &str) -> Vec<Job> {
    cluster
        .api::<Job>()
        .list(&ListParams::default().labels(&format!("netreach.dev/check={check}")))
        .await
        .unwrap()
        .items
}

async fn events(cluster: &Cluster, reason: &str) -> Vec<Event> {
    cluster
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

fn profile_yaml(name: &str, endpoints: &str) -> String {
    let peers = Peers::get();
    format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: {name}}}\nspec:\n  defaults: {{timeout: 3s, tls: {{expectedIssuer: {{organization: Test Public CA}}, caBundleRef: {{configMap: peers-ca}}}}}}\n  dns: {{nameservers: [\"{}\"]}}\n  endpoints:\n{endpoints}",
        peers.dns()
    )
}

fn check_yaml(name: &str, profile: &str, extra: &str) -> String {
    format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {{name: {name}}}\nspec:\n  profileRef: {{name: {profile}}}\n  runner: {{podLabels: {{app: cloud-extender}}}}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_becomes_ready_then_a_stopped_endpoint_flips_it_with_one_event() {
    let cluster = Cluster::start("ready-then-down").await;
    peers_ca(&cluster).await;
    let (port, server) = http_endpoint().await;
    let https = Peers::get().port("PEER_HTTPS_PORT");
    let endpoints = format!(
        "    - {{name: mpnsv2, host: mpnsv2.m3.maas360.com, ports: [{{port: {https}, protocol: HTTPS}}]}}\n    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n"
    );
    cluster
        .apply_yaml(&profile_yaml("vendor", &endpoints))
        .await;
    cluster
        .apply_yaml(&check_yaml("vendor", "vendor", "  interval: 2s\n"))
        .await;
    let (ctx, operator) = cluster.operator(cluster.settings("one"));

    let ready = wait_condition(&cluster, "vendor", "Ready", "True").await;
    let status = ready.status.clone().unwrap();
    assert_eq!(status.results.len(), 2);
    assert!(
        status.results.iter().all(|r| r.outcome == Outcome::Pass),
        "{:?}",
        status.results
    );
    assert_eq!(status.summary.as_ref().unwrap().passed, 2);
    assert_eq!(condition(&ready, "Reconciling").unwrap().0, "False");
    assert_eq!(condition(&ready, "Stalled").unwrap().0, "False");
    let tls = status.results[0].tls.as_ref().unwrap();
    assert_eq!(tls.issuer_organization.as_deref(), Some("Test Public CA"));

    server.abort();
    let down = wait_condition(&cluster, "vendor", "Ready", "False").await;
    let (_, reason, message) = condition(&down, "Ready").unwrap();
    assert_eq!(reason, "RequiredEndpointsFailing");
    assert!(message.contains("api (127.0.0.1:"), "{message}");
    let row = down
        .status
        .as_ref()
        .unwrap()
        .results
        .iter()
        .find(|r| r.endpoint == "api")
        .unwrap()
        .clone();
    assert_eq!(
        (row.outcome, row.reason),
        (Outcome::Fail, Reason::ConnectionRefused)
    );
    assert_eq!(condition(&down, "Reachable").unwrap().0, "False");
    // More runs of the same failure add no events.
    eventually(WAIT, "two more runs", || {
        let cluster = &cluster;
        async move { (ctx_runs(cluster).await >= 2).then_some(()) }
    })
    .await;
    let unreachable = events(&cluster, "EndpointUnreachable").await;
    assert_eq!(unreachable.len(), 1, "{unreachable:?}");
    assert!(
        unreachable[0]
            .message
            .as_deref()
            .unwrap()
            .contains("api (127.0.0.1:")
    );
    assert!(ctx.status_writes.load(Ordering::Relaxed) > 0);
    operator.abort();
}

/// Runs finished after the first failure was recorded (from the probe jobs' history).
async fn ctx_runs(cluster: &Cluster) -> usize {
    let check = cluster.api::<EgressCheck>().get("vendor").await.unwrap();
    let failed_at = check
        .status
        .and_then(|s| s.last_run)
        .and_then(|r| r.run)
        .unwrap_or(i64::MAX);
    jobs(cluster, "vendor")
        .await
        .iter()
        .filter(|j| {
            j.labels()
                .get("netreach.dev/run")
                .and_then(|r| r.parse::<i64>().ok())
                .unwrap_or(0)
                > failed_at
        })
        .filter(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_periodic_runs_write_no_status() {
    let cluster = Cluster::start("no-writes").await;
    peers_ca(&cluster).await;
    let (port, _server) = http_endpoint().await;
    cluster
        .apply_yaml(&profile_yaml(
            "steady",
            &format!(
                "    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n"
            ),
        ))
        .await;
    cluster
        .apply_yaml(&check_yaml(
            "steady",
            "steady",
            "  interval: 1s\n  historyLimit: 10\n",
        ))
        .await;
    let (ctx, operator) = cluster.operator(cluster.settings("one"));
    wait_condition(&cluster, "steady", "Reconciling", "False").await;
    let writes = ctx.status_writes.load(Ordering::Relaxed);
    let version = cluster
        .api::<EgressCheck>()
        .get("steady")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let before = jobs(&cluster, "steady").await.len();
    eventually(WAIT, "three more runs", || {
        let cluster = &cluster;
        async move {
            let done = jobs(cluster, "steady")
                .await
                .iter()
                .filter(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0)
                .count();
            (done >= before + 3).then_some(())
        }
    })
    .await;
    // Give the last run's collection a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ctx.status_writes.load(Ordering::Relaxed),
        writes,
        "unchanged runs wrote status"
    );
    let after = cluster.api::<EgressCheck>().get("steady").await.unwrap();
    assert_eq!(after.metadata.resource_version, version);
    assert!(
        jobs(&cluster, "steady").await.len() <= 10,
        "history limit prunes old jobs"
    );
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mitmproxy_path_raises_tls_intercepted_naming_the_proxy_ca() {
    let cluster = Cluster::start("intercepted").await;
    peers_ca(&cluster).await;
    let peers = Peers::get();
    let endpoints = format!(
        "    - {{name: mpnsv2, host: mpnsv2.m3.maas360.com, ports: [{{port: {}, protocol: HTTPS}}]}}\n",
        peers.port("PEER_HTTPS_PORT")
    );
    cluster
        .apply_yaml(&profile_yaml("vendor", &endpoints))
        .await;
    let proxy = format!(
        "  proxy: {{url: \"http://127.0.0.1:{}\"}}\n",
        peers.port("PEER_MITM_PORT")
    );
    cluster
        .apply_yaml(&check_yaml("via-proxy", "vendor", &proxy))
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("one"));
    let check = wait_condition(&cluster, "via-proxy", "TLSIntercepted", "True").await;
    let (_, reason, message) = condition(&check, "TLSIntercepted").unwrap();
    assert_eq!(reason, "InterceptionDetected");
    assert!(
        message.contains("CN=Web Proxy, O=Example Corp., OU=IT"),
        "{message}"
    );
    assert!(message.contains("O=Test Public CA"), "{message}");
    assert_eq!(condition(&check, "Ready").unwrap().0, "False");
    assert_eq!(
        check
            .status
            .as_ref()
            .unwrap()
            .summary
            .as_ref()
            .unwrap()
            .intercepted,
        1
    );
    let detected = eventually(WAIT, "an interception event", || {
        let cluster = &cluster;
        async move {
            events(cluster, "TLSInterceptionDetected")
                .await
                .into_iter()
                .next()
        }
    })
    .await;
    assert!(
        detected
            .message
            .unwrap()
            .contains("exclude mpnsv2.m3.maas360.com from SSL decryption")
    );
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn run_now_starts_a_run_and_the_probe_pod_is_locked_down() {
    let cluster = Cluster::start("run-now").await;
    peers_ca(&cluster).await;
    let (port, _server) = http_endpoint().await;
    cluster
        .apply_yaml(&profile_yaml(
            "once",
            &format!(
                "    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n"
            ),
        ))
        .await;
    cluster.apply_yaml(&check_yaml("once", "once", "")).await;
    let (_ctx, operator) = cluster.operator(cluster.settings("one"));
    wait_condition(&cluster, "once", "Ready", "True").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        jobs(&cluster, "once").await.len(),
        1,
        "without an interval a check runs once per change"
    );
    let api = cluster.api::<EgressCheck>();
    api.patch(
        "once",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"netreach.dev/run-now": "1"}}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "a second run", || {
        let cluster = &cluster;
        async move { (jobs(cluster, "once").await.len() == 2).then_some(()) }
    })
    .await;
    let check = eventually(WAIT, "the run-now run recorded", || {
        let api = api.clone();
        async move {
            api.get("once").await.ok().filter(|c| {
                c.status
                    .as_ref()
                    .and_then(|s| s.last_run.as_ref())
                    .and_then(|r| r.trigger.as_deref())
                    == Some("RunNow")
            })
        }
    })
    .await;
    assert_eq!(check.status.unwrap().last_run_now.as_deref(), Some("1"));
    let job = jobs(&cluster, "once").await.remove(0);
    let spec = job.spec.unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert!(spec.active_deadline_seconds.unwrap() > 0);
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(
        labels.get("app").map(String::as_str),
        Some("cloud-extender")
    );
    let security = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.unwrap().drop,
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_operator_adopts_the_job_in_flight() {
    let cluster = Cluster::start("adopt").await;
    peers_ca(&cluster).await;
    // A server that accepts and never answers keeps the run busy for its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    cluster
        .apply_yaml(&profile_yaml("slow", &format!("    - {{name: slow, cidr: 127.0.0.1, timeout: 3s, ports: [{{port: {port}, protocol: HTTP}}]}}\n")))
        .await;
    cluster.apply_yaml(&check_yaml("slow", "slow", "")).await;
    let (_first, operator) = cluster.operator(cluster.settings("first"));
    eventually(WAIT, "the first job", || {
        let cluster = &cluster;
        async move { (!jobs(cluster, "slow").await.is_empty()).then_some(()) }
    })
    .await;
    operator.abort();
    let (_second, operator) = cluster.operator(cluster.settings("second"));
    let done = wait_condition(&cluster, "slow", "Reconciling", "False").await;
    assert_eq!(
        jobs(&cluster, "slow").await.len(),
        1,
        "the restarted operator adopted the job instead of starting another"
    );
    let row = &done.status.unwrap().results[0];
    assert_eq!(row.reason, Reason::ResponseTimeout);
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_elect_one_leader_and_the_standby_takes_over() {
    let cluster = Cluster::start("leader").await;
    peers_ca(&cluster).await;
    let (port, _server) = http_endpoint().await;
    cluster
        .apply_yaml(&profile_yaml(
            "ha",
            &format!(
                "    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n"
            ),
        ))
        .await;
    let elected = |identity: &str| netreach::controller::Settings {
        leader_election: true,
        ..cluster.settings(identity)
    };
    let (a, a_handle) = cluster.operator(elected("replica-a"));
    let leases: Api<Lease> = cluster.api();
    let holder = |leases: Api<Lease>| async move {
        leases
            .get_opt("netreach-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    eventually(WAIT, "replica-a leading", || {
        let leases = leases.clone();
        async move { (holder(leases).await.as_deref() == Some("replica-a")).then_some(()) }
    })
    .await;
    let (b, b_handle) = cluster.operator(elected("replica-b"));
    cluster
        .apply_yaml(&check_yaml("ha", "ha", "  interval: 1s\n"))
        .await;
    wait_condition(&cluster, "ha", "Ready", "True").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.status_writes.load(Ordering::Relaxed) > 0);
    assert_eq!(
        b.status_writes.load(Ordering::Relaxed),
        0,
        "the standby must not act"
    );
    assert!(
        b.metrics
            .encode()
            .lines()
            .all(|l| !l.starts_with("netreach_reconcile_total{controller=\"egresscheck\"}"))
    );
    // The leader dies; the standby takes the lease once it expires and carries on.
    a_handle.abort();
    eventually(WAIT, "replica-b leading", || {
        let leases = leases.clone();
        async move { (holder(leases).await.as_deref() == Some("replica-b")).then_some(()) }
    })
    .await;
    let api = cluster.api::<EgressCheck>();
    api.patch(
        "ha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"interval": "2s"}})),
    )
    .await
    .unwrap();
    eventually(WAIT, "the change probed by the new leader", || {
        let api = api.clone();
        async move {
            let check = api.get("ha").await.ok()?;
            let generation = check.metadata.generation;
            let done = condition(&check, "Reconciling")?.0 == "False"
                && check.status?.observed_generation == generation
                && generation == Some(2);
            done.then_some(())
        }
    })
    .await;
    assert!(
        b.status_writes.load(Ordering::Relaxed) > 0,
        "the new leader acts"
    );
    b_handle.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_api_faults_change_nothing_in_the_final_state() {
    let cluster = Cluster::start("faults").await;
    peers_ca(&cluster).await;
    let (port, _server) = http_endpoint().await;
    cluster
        .apply_yaml(&profile_yaml(
            "flaky",
            &format!(
                "    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n"
            ),
        ))
        .await;
    cluster.apply_yaml(&check_yaml("flaky", "flaky", "")).await;
    let sim = cluster
        .sim
        .as_ref()
        .expect("fault injection needs kube-sim");
    sim.faults()
        .fail_next("patch", "egresschecks/status", 3, 500);
    sim.faults().fail_next("create", "jobs", 2, 503);
    sim.faults().fail_next("list", "jobs", 1, 500);
    let (_ctx, operator) = cluster.operator(cluster.settings("one"));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sim.faults().close_watches();
    }
    sim.expire_resource_versions();
    sim.faults().close_watches();
    let check = wait_condition(&cluster, "flaky", "Ready", "True").await;
    let created = jobs(&cluster, "flaky").await;
    assert_eq!(
        created.len(),
        1,
        "faults must not duplicate the run: {:?}",
        created.iter().map(|j| j.name_any()).collect::<Vec<_>>()
    );
    assert_eq!(check.status.unwrap().results.len(), 1);
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_profile_stalls_the_check_until_it_exists() {
    let cluster = Cluster::start("stalled").await;
    peers_ca(&cluster).await;
    let (port, _server) = http_endpoint().await;
    cluster
        .apply_yaml(&check_yaml("waiting", "later", ""))
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("one"));
    let stalled = wait_condition(&cluster, "waiting", "Stalled", "True").await;
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(reason, "ProfileNotFound");
    assert!(message.contains("later"), "{message}");
    cluster
        .apply_yaml(&profile_yaml(
            "later",
            &format!(
                "    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n"
            ),
        ))
        .await;
    let ready = wait_condition(&cluster, "waiting", "Ready", "True").await;
    assert_eq!(condition(&ready, "Stalled").unwrap().0, "False");
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_rows_come_back_intact() {
    let cluster = Cluster::start("five-hundred").await;
    peers_ca(&cluster).await;
    let (port_a, _a) = http_endpoint().await;
    let (port_b, _b) = http_endpoint().await;
    let endpoints: String = (0..250)
        .map(|i| format!("    - {{name: e{i:03}, cidr: 127.0.0.1, ports: [{{port: {port_a}, protocol: HTTP}}, {{port: {port_b}, protocol: TCP}}]}}\n"))
        .collect();
    cluster.apply_yaml(&profile_yaml("big", &endpoints)).await;
    cluster.apply_yaml(&check_yaml("big", "big", "")).await;
    let (_ctx, operator) = cluster.operator(cluster.settings("one"));
    let check = wait_condition(&cluster, "big", "Ready", "True").await;
    let status = check.status.unwrap();
    assert_eq!(status.results.len(), 500);
    assert_eq!(status.summary.unwrap().passed, 500);
    let names: std::collections::BTreeSet<(String, i32)> = status
        .results
        .iter()
        .map(|r| (r.endpoint.clone(), r.port))
        .collect();
    assert_eq!(names.len(), 500);
    operator.abort();
}

/// A DNS server on loopback answering A queries with whatever address the test sets.
async fn scripted_dns(answer: std::sync::Arc<std::sync::Mutex<std::net::Ipv4Addr>>) -> String {
    use hickory_resolver::proto::op::{Message, MessageType};
    use hickory_resolver::proto::rr::{RData, Record, RecordType, rdata::A};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut buffer = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buffer).await {
            let Ok(query) = Message::from_vec(&buffer[..n]) else {
                continue;
            };
            let mut reply = Message::new(
                query.metadata.id,
                MessageType::Response,
                query.metadata.op_code,
            );
            reply.metadata.authoritative = true;
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            for question in &query.queries {
                reply.add_query(question.clone());
                if question.query_type() == RecordType::A {
                    let ip = *answer.lock().unwrap();
                    reply.add_answer(Record::from_rdata(
                        question.name().clone(),
                        1,
                        RData::A(A(ip)),
                    ));
                }
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_change_updates_the_network_policy_and_deletion_cleans_up() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use netreach::api::ConnectivityProfile;
    let cluster = Cluster::start("policy").await;
    // The AdminNetworkPolicy CRD is installed; Cilium's is not.
    if cluster.sim.is_some() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/upstream-crds/adminnetworkpolicy.yaml"),
        )
        .unwrap();
        let crd: CustomResourceDefinition = serde_norway::from_str(&text).unwrap();
        Api::<CustomResourceDefinition>::all(cluster.client.clone())
            .create(&Default::default(), &crd)
            .await
            .unwrap();
    }
    let answer = std::sync::Arc::new(std::sync::Mutex::new(std::net::Ipv4Addr::new(
        203, 0, 113, 1,
    )));
    let dns = scripted_dns(answer.clone()).await;
    let profile = format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: vendor}}\nspec:\n  dns: {{nameservers: [\"{dns}\"]}}\n  endpoints:\n    - {{name: api, host: api.vendor.test, ports: [{{port: 443, protocol: HTTPS}}]}}\n  policy:\n    podSelector: {{matchLabels: {{app: agent}}}}\n    flavors: [NetworkPolicy, AdminNetworkPolicy]\n    refreshInterval: 1s\n"
    );
    cluster.apply_yaml(&profile).await;
    let (_ctx, operator) = cluster.operator(cluster.settings("one"));
    let policies = cluster.api::<NetworkPolicy>();
    let cidrs = |policy: &NetworkPolicy| -> Vec<String> {
        policy
            .spec
            .as_ref()
            .unwrap()
            .egress
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|r| r.to.iter().flatten())
            .filter_map(|p| p.ip_block.as_ref().map(|b| b.cidr.clone()))
            .collect()
    };
    let first = eventually(WAIT, "the NetworkPolicy", || {
        let policies = policies.clone();
        async move { policies.get_opt("netreach-vendor").await.ok().flatten() }
    })
    .await;
    assert_eq!(cidrs(&first), ["203.0.113.1/32"]);
    assert_eq!(
        first.owner_references().first().map(|o| o.kind.as_str()),
        Some("ConnectivityProfile")
    );
    let anps: Api<kube::api::DynamicObject> = Api::all_with(
        cluster.client.clone(),
        &kube::api::ApiResource {
            group: "policy.networking.k8s.io".into(),
            version: "v1alpha1".into(),
            api_version: "policy.networking.k8s.io/v1alpha1".into(),
            kind: "AdminNetworkPolicy".into(),
            plural: "adminnetworkpolicies".into(),
        },
    );
    let anp_name = format!("netreach-{}-vendor", cluster.namespace);
    assert!(
        anps.get_opt(&anp_name).await.unwrap().is_some(),
        "the cluster-scoped policy is applied"
    );

    *answer.lock().unwrap() = std::net::Ipv4Addr::new(203, 0, 113, 2);
    let moved = eventually(WAIT, "the new address in the NetworkPolicy", || {
        let policies = policies.clone();
        async move {
            policies
                .get("netreach-vendor")
                .await
                .ok()
                .filter(|p| cidrs(p).contains(&"203.0.113.2/32".to_owned()))
        }
    })
    .await;
    assert!(
        cidrs(&moved).contains(&"203.0.113.1/32".to_owned()),
        "the old address stays for its window: {:?}",
        cidrs(&moved)
    );
    eventually(WAIT, "the old address to age out", || {
        let policies = policies.clone();
        async move {
            policies
                .get("netreach-vendor")
                .await
                .ok()
                .filter(|p| cidrs(p) == ["203.0.113.2/32"])
        }
    })
    .await;
    let profiles = cluster.api::<ConnectivityProfile>();
    let status = profiles.get("vendor").await.unwrap().status.unwrap();
    let applied = status
        .conditions
        .iter()
        .find(|c| c.type_ == "PolicyApplied")
        .unwrap();
    assert_eq!(applied.status, "True", "{}", applied.message);
    assert_eq!(status.policies.len(), 2);

    // A flavor whose CRD is missing is a condition, not a crash loop.
    profiles
        .patch("vendor", &PatchParams::default(), &Patch::Merge(json!({"spec": {"policy": {"flavors": ["NetworkPolicy", "AdminNetworkPolicy", "Cilium"]}}})))
        .await
        .unwrap();
    let missing = eventually(WAIT, "CRDNotInstalled", || {
        let profiles = profiles.clone();
        async move {
            let status = profiles.get("vendor").await.ok()?.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "PolicyApplied" && c.reason == "CRDNotInstalled")
        }
    })
    .await;
    assert!(
        missing.message.contains("CiliumNetworkPolicy"),
        "{}",
        missing.message
    );

    profiles
        .delete("vendor", &Default::default())
        .await
        .unwrap();
    eventually(WAIT, "the profile and its policies gone", || {
        let (profiles, policies, anps, anp_name) = (
            profiles.clone(),
            policies.clone(),
            anps.clone(),
            anp_name.clone(),
        );
        async move {
            let gone = profiles.get_opt("vendor").await.ok()?.is_none()
                && policies.get_opt("netreach-vendor").await.ok()?.is_none()
                && anps.get_opt(&anp_name).await.ok()?.is_none();
            gone.then_some(())
        }
    })
    .await;
    operator.abort();
}
