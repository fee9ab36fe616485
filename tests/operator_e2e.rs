//! The operator end to end: kube-sim (or a real cluster) runs the probe Jobs as real
//! `netreach probe` processes against the loopback peers; the tests read what a user would.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use netreach::api::EgressCheck;
use netreach::api::check::{RunState, RunTrigger};
use netreach::api::result::{Outcome, Reason};
use netreach::controller::Context;
use serde_json::json;
use support::Peers;
use support::cluster::{BROKEN_PROBE_IMAGE, Cluster, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// A plain HTTP server on loopback answering 204; aborting the handle stops it.
async fn http_endpoint() -> (u16, tokio::task::JoinHandle<()>) {
    http_endpoint_on(0, Arc::default()).await
}

/// A plain HTTP server on `port` (0: any) answering 204, or, while `hang` is set, accepting
/// and never answering.
async fn http_endpoint_on(port: u16, hang: Arc<AtomicBool>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            if hang.load(Ordering::SeqCst) {
                held.push(stream);
                continue;
            }
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

/// The profile row most tests probe: plain HTTP on a loopback port.
fn http_row(port: u16) -> String {
    format!("    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n")
}

fn check_yaml(name: &str, profile: &str, extra: &str) -> String {
    format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {{name: {name}}}\nspec:\n  profileRef: {{name: {profile}}}\n  runner: {{podLabels: {{app: cloud-extender}}}}\n{extra}"
    )
}

/// One e2e setting: a cluster with the peers' CA, a loopback HTTP endpoint (`port`), and the
/// profiles and checks a test applies; derefs to its [`Cluster`].
struct Scenario {
    cluster: Cluster,
    /// The HTTP endpoint's port, and the server (abort it to take the endpoint down).
    port: u16,
    server: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for Scenario {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl Scenario {
    async fn start(test: &str) -> Scenario {
        let cluster = Cluster::start(test).await;
        peers_ca(&cluster).await;
        let (port, server) = http_endpoint().await;
        Scenario {
            cluster,
            port,
            server,
        }
    }

    /// Applies profile `name` with these endpoint rows.
    async fn profile(&self, name: &str, endpoints: &str) -> &Self {
        self.apply_yaml(&profile_yaml(name, endpoints)).await;
        self
    }

    /// Applies profile `name` probing the HTTP endpoint.
    async fn http_profile(&self, name: &str) -> &Self {
        self.profile(name, &http_row(self.port)).await
    }

    /// Applies check `name` over `profile`, with `extra` spec lines.
    async fn check(&self, name: &str, profile: &str, extra: &str) -> &Self {
        self.apply_yaml(&check_yaml(name, profile, extra)).await;
        self
    }

    /// Starts one operator replica.
    fn start_operator(&self) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
        self.cluster.operator(self.settings("one"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_endpoint_flips_a_ready_check_and_its_return_recovers_it_with_one_event_each() {
    let cluster = Scenario::start("ready-then-down").await;
    let port = cluster.port;
    let https = Peers::get().port("PEER_HTTPS_PORT");
    let endpoints = format!(
        "    - {{name: mpnsv2, host: mpnsv2.m3.maas360.com, ports: [{{port: {https}, protocol: HTTPS}}]}}\n{}",
        http_row(port)
    );
    cluster.profile("vendor", &endpoints).await;
    cluster.check("vendor", "vendor", "  interval: 2s\n").await;
    let (ctx, operator) = cluster.start_operator();

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

    cluster.server.abort();
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
    let failed_at = down
        .status
        .as_ref()
        .and_then(|s| s.last_run.as_ref())
        .and_then(|r| r.run)
        .unwrap();
    // More runs of the same failure add no events.
    eventually(WAIT, "two more runs", || {
        let cluster = &cluster;
        async move { (ctx_runs(cluster, failed_at).await >= 2).then_some(()) }
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

    // The endpoint comes back on its port: Ready again, with one EndpointRecovered event.
    let (_, _server) = http_endpoint_on(port, Arc::default()).await;
    let up = wait_condition(&cluster, "vendor", "Ready", "True").await;
    assert_eq!(condition(&up, "Reachable").unwrap().0, "True");
    let recovered = eventually(WAIT, "an EndpointRecovered event", || {
        let cluster = &cluster;
        async move {
            let found = events(cluster, "EndpointRecovered").await;
            (!found.is_empty()).then_some(found)
        }
    })
    .await;
    let message = recovered[0].message.as_deref().unwrap();
    assert!(
        message.contains("api (127.0.0.1:") && message.contains(" again after "),
        "the recovery says how long it was down: {recovered:?}"
    );
    // The outage ledger has the one outage: start, end, how long, why.
    let outages = wait_condition(&cluster, "vendor", "Ready", "True")
        .await
        .status
        .unwrap()
        .outages;
    assert_eq!(outages.len(), 1, "{outages:?}");
    let outage = &outages[0];
    assert_eq!(
        (outage.endpoint.as_str(), outage.reason.as_str()),
        ("api", "ConnectionRefused")
    );
    assert!(outage.message.contains("refused"), "{outage:?}");
    assert!(outage.runs >= 3, "the failed runs it counted: {outage:?}");
    let end = outage.end.as_ref().expect("the outage ended");
    assert!(end.0 >= outage.start.0, "{outage:?}");
    assert!(
        outage
            .recovery
            .as_deref()
            .is_some_and(|r| r.starts_with("restored after ")),
        "{outage:?}"
    );
    // kubectl describe shows the ledger.
    let described = std::process::Command::new("kubectl")
        .args([
            "describe",
            "egresscheck",
            "vendor",
            "-n",
            &cluster.namespace,
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .expect("kubectl runs");
    let described = String::from_utf8_lossy(&described.stdout);
    let ledger = &described[described.find("  Outages:").expect("an Outages section")..];
    for field in [
        "End:",
        "Endpoint:  api",
        "Reason:    ConnectionRefused",
        "Recovery:  restored after",
        "Runs:",
        "Start:",
    ] {
        assert!(ledger.contains(field), "{field} missing from:\n{described}");
    }
    let down_row = row.streak.clone();
    assert!(
        down_row.consecutive_failures >= Some(1)
            && down_row.outage_since == Some(outage.start.clone()),
        "while down, the row counted its failures and named the outage: {down_row:?}"
    );
    // More passing runs add no events of either kind.
    read_more_runs(&ctx, 2).await;
    assert_eq!(events(&cluster, "EndpointRecovered").await.len(), 1);
    assert_eq!(events(&cluster, "EndpointUnreachable").await.len(), 1);
    operator.abort();
}

/// Waits until `ctx` has read and applied `more` finished runs beyond those it had read when
/// called: the positive signal before asserting that runs changed nothing.
async fn read_more_runs(ctx: &Context, more: u64) {
    let start = ctx.runs_read.load(Ordering::SeqCst);
    eventually(WAIT, &format!("{more} more runs read"), || async move {
        (ctx.runs_read.load(Ordering::SeqCst) >= start + more).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_failure_threshold_of_three_one_failed_run_changes_nothing_and_the_third_opens_an_outage()
 {
    let cluster = Cluster::start("failure-threshold").await;
    let (port, server) = http_endpoint().await;
    cluster
        .apply_yaml(&format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {{name: flappy}}\nspec:\n  interval: 1s\n  failureThreshold: 3\n  endpoints:\n    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n"
        ))
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("one"));
    wait_condition(&cluster, "flappy", "Ready", "True").await;
    let api = cluster.api::<EgressCheck>();
    let failures = |check: &EgressCheck| {
        check
            .status
            .as_ref()
            .and_then(|s| s.results.first())
            .and_then(|r| r.streak.consecutive_failures)
    };

    // One failed run: the row shows it, nothing else moves.
    server.abort();
    let once = eventually(WAIT, "a failed run on the row", || {
        let api = api.clone();
        async move {
            let check = api.get("flappy").await.ok()?;
            (failures(&check).is_some()).then_some(check)
        }
    })
    .await;
    let (_, server) = http_endpoint_on(port, Arc::default()).await;
    let status = once.status.clone().unwrap();
    assert_eq!(status.results[0].outcome, Outcome::Fail);
    assert!(failures(&once) < Some(3), "{:?}", status.results[0]);
    assert!(status.results[0].streak.outage_since.is_none());
    assert_eq!(condition(&once, "Ready").unwrap().0, "True");
    assert_eq!(condition(&once, "Reachable").unwrap().0, "True");
    assert!(status.outages.is_empty(), "{:?}", status.outages);
    // It passes again, the count goes, and no outage, event or condition change happened.
    let passed = eventually(WAIT, "a passing run again", || {
        let api = api.clone();
        async move {
            let check = api.get("flappy").await.ok()?;
            let row = check.status.as_ref()?.results.first()?.clone();
            (row.outcome == Outcome::Pass).then_some(check)
        }
    })
    .await;
    assert_eq!(failures(&passed), None);
    assert!(passed.status.as_ref().unwrap().outages.is_empty());
    assert_eq!(condition(&passed, "Ready").unwrap().0, "True");
    assert!(events(&cluster, "EndpointUnreachable").await.is_empty());

    // Down for good: the third failed run opens the outage, starting at the first.
    server.abort();
    let down = wait_condition(&cluster, "flappy", "Ready", "False").await;
    let status = down.status.clone().unwrap();
    assert!(failures(&down) >= Some(3), "{:?}", status.results[0]);
    assert_eq!(status.outages.len(), 1, "{:?}", status.outages);
    assert!(status.outages[0].runs >= 3 && status.outages[0].end.is_none());
    // It started at the first failed run of the three, when the row's outcome changed.
    assert_eq!(
        Some(&status.outages[0].start),
        status.results[0].last_transition_time.as_ref()
    );
    assert_eq!(
        status.results[0].streak.outage_since.as_ref(),
        Some(&status.outages[0].start)
    );
    let unreachable = eventually(WAIT, "an EndpointUnreachable event", || {
        let cluster = &cluster;
        async move {
            let found = events(cluster, "EndpointUnreachable").await;
            (!found.is_empty()).then_some(found)
        }
    })
    .await;
    assert_eq!(unreachable.len(), 1);
    assert!(
        unreachable[0]
            .message
            .as_deref()
            .unwrap()
            .contains("3 failed runs in a row"),
        "{unreachable:?}"
    );
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_operator_carries_on_counting_failed_runs_from_the_status() {
    let cluster = Cluster::start("threshold-restart").await;
    let (port, server) = http_endpoint().await;
    cluster
        .apply_yaml(&format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {{name: flappy}}\nspec:\n  interval: 2s\n  failureThreshold: 3\n  endpoints:\n    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n"
        ))
        .await;
    let (_ctx, operator) = cluster.operator(cluster.settings("one"));
    wait_condition(&cluster, "flappy", "Ready", "True").await;
    let api = cluster.api::<EgressCheck>();
    server.abort();
    // Two failed runs recorded; the operator stops before the third.
    let two = eventually(WAIT, "two failed runs on the row", || {
        let api = api.clone();
        async move {
            let check = api.get("flappy").await.ok()?;
            let row = check.status.as_ref()?.results.first()?.clone();
            (row.streak.consecutive_failures == Some(2)).then_some(check)
        }
    })
    .await;
    operator.abort();
    let _ = operator.await;
    let status = two.status.clone().unwrap();
    assert!(status.outages.is_empty(), "{:?}", status.outages);
    assert_eq!(condition(&two, "Ready").unwrap().0, "True");
    let first_failure = status.results[0].last_transition_time.clone().unwrap();

    // A new operator, with nothing in memory: its first failed run is the third.
    let (_ctx, operator) = cluster.operator(cluster.settings("two"));
    let down = wait_condition(&cluster, "flappy", "Ready", "False").await;
    let status = down.status.clone().unwrap();
    assert_eq!(status.outages.len(), 1, "{:?}", status.outages);
    assert_eq!(status.outages[0].start, first_failure);
    assert_eq!(status.results[0].streak.consecutive_failures, Some(3));
    assert_eq!(status.outages[0].runs, 3);
    // ...from a run of its own: the one the first operator recorded is not counted again.
    let run = |check: &EgressCheck| check.status.as_ref()?.last_run.as_ref()?.run;
    assert!(
        run(&down) > run(&two),
        "{:?} after {:?}",
        run(&down),
        run(&two)
    );
    operator.abort();
}

/// Runs of "vendor" finished after run `failed_at` (from the probe jobs' history).
async fn ctx_runs(cluster: &Cluster, failed_at: i64) -> usize {
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

/// With one turn and checks due every second, reconciles wait in line: every check is served,
/// and an edit made meanwhile is probed through the change lane.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_serves_every_check_and_an_edit_still_gets_probed() {
    let cluster = Scenario::start("backlog").await;
    cluster.http_profile("shared").await;
    let names: Vec<String> = (0..12).map(|i| format!("busy-{i}")).collect();
    for name in &names {
        cluster
            .check(name, "shared", "  interval: 1s\n  historyLimit: 1\n")
            .await;
    }
    let mut settings = cluster.settings("one");
    settings.max_concurrent_reconciles = 1;
    let (_ctx, _operator) = cluster.operator(settings);
    for name in &names {
        wait_condition(&cluster, name, "Ready", "True").await;
    }
    let edited = cluster
        .api::<EgressCheck>()
        .patch(
            "busy-7",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"interval": "2s"}})),
        )
        .await
        .unwrap();
    let generation = edited.metadata.generation.unwrap();
    eventually(WAIT, "the edit probed", || {
        let api = cluster.api::<EgressCheck>();
        async move {
            let check = api.get("busy-7").await.ok()?;
            let key = check.status?.last_run?.run_key?;
            key.starts_with(&format!("{generation}/")).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_periodic_runs_write_no_status() {
    let cluster = Scenario::start("no-writes").await;
    cluster.http_profile("steady").await;
    cluster
        .check("steady", "steady", "  interval: 1s\n  historyLimit: 10\n")
        .await;
    let (ctx, operator) = cluster.start_operator();
    wait_condition(&cluster, "steady", "Reconciling", "False").await;
    let writes = ctx.status_writes.load(Ordering::Relaxed);
    let version = cluster
        .api::<EgressCheck>()
        .get("steady")
        .await
        .unwrap()
        .metadata
        .resource_version;
    read_more_runs(&ctx, 3).await;
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

/// What a periodic run whose results do not change costs in API requests: start it (read
/// the check, look for a run that lost its Job, create the ConfigMap and the Job), then read
/// it (read the check, list its pod, read its log, prune a Job, delete the ConfigMap).
#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_periodic_run_costs_at_most_nine_api_requests() {
    let cluster = Scenario::start("request-budget").await;
    let Some(sim) = cluster.sim_or_skip("counting requests") else {
        return;
    };
    // No CA bundle to read: each reconcile would read it once more.
    cluster
        .apply_yaml(&format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: steady}}\nspec:\n  endpoints:\n{}",
            http_row(cluster.port)
        ))
        .await;
    cluster
        .check("steady", "steady", "  interval: 2s\n  historyLimit: 1\n")
        .await;
    // The operator's own client, told apart by its user agent.
    let mut config = sim.kube_config();
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("netreach-operator"),
    ));
    let ctx = Arc::new(Context::new(
        kube::Client::try_from(config).unwrap(),
        cluster.settings("budget"),
        Default::default(),
    ));
    let running = ctx.clone();
    let operator = tokio::spawn(async move {
        netreach::controller::run(running, vec![], std::future::pending()).await
    });
    wait_condition(&cluster, "steady", "Reconciling", "False").await;
    read_more_runs(&ctx, 2).await;
    // Counted between the moments two runs have just been read: the next run starts an
    // interval later, so the span holds whole runs, each started and read.
    let just_read = |runs: u64| {
        let ctx = &ctx;
        async move {
            eventually(WAIT, "a run read", || async move {
                let now = ctx.runs_read.load(Ordering::SeqCst);
                (now >= runs).then_some(now)
            })
            .await
        }
    };
    let first = just_read(ctx.runs_read.load(Ordering::SeqCst) + 1).await;
    let before = sim.request_counts("netreach-operator");
    let last = just_read(first + 5).await;
    let made: BTreeMap<_, u64> = sim
        .request_counts("netreach-operator")
        .into_iter()
        .map(|(call, count)| {
            let earlier = before.get(&call).copied().unwrap_or(0);
            (call, count - earlier)
        })
        .filter(|(_, count)| *count > 0)
        .collect();
    let requests: u64 = made.values().sum();
    let runs = last - first;
    eprintln!("{requests} requests for {runs} unchanged runs: {made:?}");
    assert!(
        requests <= 9 * runs,
        "{requests} requests for {runs} unchanged runs ({:.1} a run): {made:?}",
        requests as f64 / runs as f64
    );
    assert!(
        requests >= 5 * runs,
        "{requests} for {runs} runs: were they counted?"
    );
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mitmproxy_path_raises_tls_intercepted_naming_the_proxy_ca() {
    let cluster = Scenario::start("intercepted").await;
    let peers = Peers::get();
    let endpoints = format!(
        "    - {{name: mpnsv2, host: mpnsv2.m3.maas360.com, ports: [{{port: {}, protocol: HTTPS}}]}}\n",
        peers.port("PEER_HTTPS_PORT")
    );
    cluster.profile("vendor", &endpoints).await;
    let proxy = format!(
        "  proxy: {{url: \"http://127.0.0.1:{}\"}}\n",
        peers.port("PEER_MITM_PORT")
    );
    cluster.check("via-proxy", "vendor", &proxy).await;
    let (_ctx, operator) = cluster.start_operator();
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
    let cluster = Scenario::start("run-now").await;
    cluster.http_profile("once").await;
    cluster.check("once", "once", "").await;
    let (ctx, operator) = cluster.start_operator();
    wait_condition(&cluster, "once", "Ready", "True").await;
    // The reconcile that read the run has decided what comes next.
    eventually(WAIT, "the first run read", || {
        let ctx = &ctx;
        async move { (ctx.runs_read.load(Ordering::SeqCst) >= 1).then_some(()) }
    })
    .await;
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
                    .and_then(|r| r.trigger)
                    == Some(RunTrigger::RunNow)
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
    let cluster = Scenario::start("adopt").await;
    // A server that accepts and never answers keeps the run busy for its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    cluster.profile("slow", &format!("    - {{name: slow, cidr: 127.0.0.1, timeout: 3s, ports: [{{port: {port}, protocol: HTTP}}]}}\n")).await;
    cluster.check("slow", "slow", "").await;
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
    let cluster = Scenario::start("leader").await;
    cluster.http_profile("ha").await;
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
    cluster.check("ha", "ha", "  interval: 1s\n").await;
    wait_condition(&cluster, "ha", "Ready", "True").await;
    read_more_runs(&a, 2).await;
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
    let cluster = Scenario::start("faults").await;
    cluster.http_profile("flaky").await;
    cluster.check("flaky", "flaky", "").await;
    let Some(sim) = cluster.sim_or_skip("fault injection") else {
        return;
    };
    sim.faults()
        .fail_next("patch", "egresschecks/status", 3, 500);
    sim.faults().fail_next("create", "jobs", 2, 503);
    sim.faults().fail_next("list", "jobs", 1, 500);
    let (_ctx, operator) = cluster.start_operator();
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
    let cluster = Scenario::start("stalled").await;
    cluster.check("waiting", "later", "").await;
    let (_ctx, operator) = cluster.start_operator();
    let stalled = wait_condition(&cluster, "waiting", "Stalled", "True").await;
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(reason, "ProfileNotFound");
    assert!(message.contains("later"), "{message}");
    cluster.http_profile("later").await;
    let ready = wait_condition(&cluster, "waiting", "Ready", "True").await;
    assert_eq!(condition(&ready, "Stalled").unwrap().0, "False");
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_rows_come_back_intact() {
    let cluster = Scenario::start("five-hundred").await;
    let (port_a, _a) = http_endpoint().await;
    let (port_b, _b) = http_endpoint().await;
    let endpoints: String = (0..250)
        .map(|i| format!("    - {{name: e{i:03}, cidr: 127.0.0.1, ports: [{{port: {port_a}, protocol: HTTP}}, {{port: {port_b}, protocol: TCP}}]}}\n"))
        .collect();
    cluster.profile("big", &endpoints).await;
    cluster.check("big", "big", "").await;
    let (_ctx, operator) = cluster.start_operator();
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

/// events.k8s.io events of `reason` (the Recorder folds repeats into one event's series, so
/// counting objects alone would miss them).
async fn reported(cluster: &Cluster, reason: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
    cluster
        .api::<k8s_openapi::api::events::v1::Event>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// How many times events of `reason` were published, repeats included.
async fn published(cluster: &Cluster, reason: &str) -> i32 {
    reported(cluster, reason)
        .await
        .iter()
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

fn run_of(job: &Job) -> i64 {
    job.labels()
        .get("netreach.dev/run")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn job_state(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

/// Waits until a run numbered `run` or later of `check` has finished.
async fn finished_run(cluster: &Cluster, check: &str, run: i64) {
    eventually(
        WAIT,
        &format!("run {run} of {check} finished"),
        || async move {
            jobs(cluster, check)
                .await
                .iter()
                .any(|j| run_of(j) >= run && job_state(j).is_some())
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_periodic_run_whose_job_is_deleted_is_reported_once_and_not_run_again() {
    let cluster = Scenario::start("job-deleted").await;
    let hang = Arc::new(AtomicBool::new(false));
    let (port, _server) = http_endpoint_on(0, hang.clone()).await;
    cluster.profile("vendor",
            &format!("    - {{name: api, cidr: 127.0.0.1, timeout: 20s, ports: [{{port: {port}, protocol: HTTP}}]}}\n")).await;
    cluster.check("vendor", "vendor", "  interval: 1s\n").await;
    let (ctx, operator) = cluster.start_operator();
    wait_condition(&cluster, "vendor", "Ready", "True").await;

    // A periodic run hangs on the silent endpoint, and someone deletes its Job.
    hang.store(true, Ordering::SeqCst);
    let job = eventually(WAIT, "a periodic run in flight", || {
        let cluster = &cluster;
        async move {
            jobs(cluster, "vendor").await.into_iter().find(|j| {
                job_state(j).is_none()
                    && j.annotations()
                        .get("netreach.dev/trigger")
                        .map(String::as_str)
                        == Some("Interval")
            })
        }
    })
    .await;
    let (deleted, run) = (job.name_any(), run_of(&job));
    cluster
        .api::<Job>()
        .delete(&deleted, &DeleteParams::background())
        .await
        .unwrap();
    hang.store(false, Ordering::SeqCst);

    // Reported as the run it was: a failed run in the history, one RunFailed event.
    let api = cluster.api::<EgressCheck>();
    let reported_run = eventually(WAIT, "the deleted run in the history", || {
        let (api, deleted) = (api.clone(), deleted.clone());
        async move {
            api.get("vendor")
                .await
                .ok()?
                .status?
                .history
                .into_iter()
                .find(|r| r.job_name.as_deref() == Some(deleted.as_str()))
        }
    })
    .await;
    assert_eq!(reported_run.state, Some(RunState::Failed));
    assert_eq!(reported_run.run, Some(run));
    assert!(
        reported_run
            .message
            .as_deref()
            .unwrap()
            .contains("was deleted"),
        "{reported_run:?}"
    );

    // Later runs carry on under new numbers and pass; the deleted one never comes back.
    let recovered = eventually(WAIT, "a later run passing", || {
        let api = api.clone();
        async move {
            let check = api.get("vendor").await.ok()?;
            let last = check.status.as_ref()?.last_run.clone()?;
            (last.run? > run
                && last.state == Some(RunState::Succeeded)
                && condition(&check, "Ready")?.0 == "True")
                .then_some(check)
        }
    })
    .await;
    assert_eq!(
        condition(&recovered, "Ready").unwrap().1,
        "AllRequiredEndpointsPass"
    );
    read_more_runs(&ctx, 3).await;
    let names: Vec<(String, i64)> = jobs(&cluster, "vendor")
        .await
        .iter()
        .map(|j| (j.name_any(), run_of(j)))
        .collect();
    assert!(
        names.iter().all(|(name, n)| *name != deleted && *n != run),
        "the deleted run was started again: {names:?}"
    );
    assert_eq!(published(&cluster, "RunFailed").await, 1);
    let event = reported(&cluster, "RunFailed").await.remove(0);
    assert!(
        event.note.as_deref().unwrap().contains(&deleted),
        "{event:?}"
    );
    assert!(
        cluster
            .api::<ConfigMap>()
            .get_opt(&deleted)
            .await
            .unwrap()
            .is_none(),
        "the deleted run's probe spec is cleaned up"
    );
    operator.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_probe_pod_sets_ready_false_with_one_run_failed_event_even_across_a_restart() {
    let cluster = Scenario::start("pod-fails").await;
    cluster.http_profile("vendor").await;
    cluster
        .apply_yaml(&format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: EgressCheck\nmetadata: {{name: broken}}\nspec:\n  profileRef: {{name: vendor}}\n  interval: 1s\n  runner: {{image: \"{BROKEN_PROBE_IMAGE}\"}}\n"
        ))
        .await;
    let (ctx, operator) = cluster.start_operator();
    let api = cluster.api::<EgressCheck>();
    let failed = eventually(WAIT, "Ready=False for a failed run", || {
        let api = api.clone();
        async move {
            let check = api.get("broken").await.ok()?;
            let (status, reason, _) = condition(&check, "Ready")?;
            (status == "False" && reason == "RunFailed").then_some(check)
        }
    })
    .await;
    let (_, _, message) = condition(&failed, "Ready").unwrap();
    assert!(message.contains("exited with"), "{message}");
    let last = failed.status.as_ref().unwrap().last_run.clone().unwrap();
    assert_eq!(last.state, Some(RunState::Failed));
    let first_failed = last.run.unwrap();

    // Failing the same way again writes nothing and publishes nothing.
    let writes = ctx.status_writes.load(Ordering::Relaxed);
    let read = ctx.runs_read.load(Ordering::SeqCst);
    finished_run(&cluster, "broken", first_failed + 3).await;
    eventually(WAIT, "run +3 read", || {
        let ctx = &ctx;
        async move { (ctx.runs_read.load(Ordering::SeqCst) > read).then_some(()) }
    })
    .await;
    assert_eq!(ctx.status_writes.load(Ordering::Relaxed), writes);
    assert_eq!(published(&cluster, "RunFailed").await, 1);

    // A restarted operator knows from the status that this failure was reported.
    operator.abort();
    let (ctx, operator) = cluster.operator(cluster.settings("two"));
    finished_run(&cluster, "broken", first_failed + 6).await;
    read_more_runs(&ctx, 1).await;
    assert_eq!(published(&cluster, "RunFailed").await, 1);
    let check = api.get("broken").await.unwrap();
    assert_eq!(condition(&check, "Ready").unwrap().1, "RunFailed");

    // The right image brings it back.
    api.patch(
        "broken",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runner": {"image": null}}})),
    )
    .await
    .unwrap();
    let ready = wait_condition(&cluster, "broken", "Ready", "True").await;
    assert_eq!(
        ready.status.unwrap().last_run.unwrap().state,
        Some(RunState::Succeeded)
    );
    assert_eq!(published(&cluster, "RunFailed").await, 1);
    operator.abort();
}

/// The profile CRD as an earlier release could have had it: `defaults.timeout` a number of
/// seconds rather than a duration string.
fn profile_crd_before_durations() -> serde_json::Value {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(netreach::api::ConnectivityProfile::crd()).unwrap();
    let timeout = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/defaults/properties/timeout")
        .expect("defaults.timeout in the schema");
    *timeout = json!({"type": "integer", "description": "Seconds per endpoint×port."});
    crd
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_that_no_longer_decodes_stalls_only_its_own_checks() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    let cluster = Scenario::start("undecodable").await;
    let port = cluster.port;
    let endpoint = http_row(port);
    // Written under an earlier schema, the object stays as it was when the CRD changes.
    let crds = Api::<CustomResourceDefinition>::all(cluster.client.clone());
    let stored_profiles: Api<kube::api::DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        &cluster.namespace,
        &kube::api::ApiResource::erase::<netreach::api::ConnectivityProfile>(&()),
    );
    let crd_name = netreach::api::ConnectivityProfile::crd_name();
    let apply = PatchParams::apply("netreach-e2e").force();
    crds.patch(
        crd_name,
        &apply,
        &Patch::Apply(profile_crd_before_durations()),
    )
    .await
    .unwrap();
    let old = format!(
        "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: legacy}}\nspec:\n  defaults: {{timeout: 5}}\n  endpoints:\n{endpoint}"
    );
    let value: serde_json::Value = serde_norway::from_str(&old).unwrap();
    // A real API server takes a moment to serve a changed schema.
    eventually(WAIT, "the profile accepted under the old schema", || {
        let (api, value) = (stored_profiles.clone(), value.clone());
        async move {
            api.patch(
                "legacy",
                &PatchParams::apply("netreach-e2e"),
                &Patch::Apply(&value),
            )
            .await
            .ok()
        }
    })
    .await;
    crds.patch(
        crd_name,
        &apply,
        &Patch::Apply(netreach::api::ConnectivityProfile::crd()),
    )
    .await
    .unwrap();
    let stored = stored_profiles.get("legacy").await.unwrap();
    assert!(
        serde_json::from_value::<netreach::api::ConnectivityProfile>(
            serde_json::to_value(&stored).unwrap()
        )
        .is_err(),
        "the premise: the stored profile does not decode"
    );

    cluster.profile("good", &endpoint).await;
    cluster.check("good", "good", "").await;
    cluster.check("on-legacy", "legacy", "").await;
    let (ctx, operator) = cluster.start_operator();

    let good = wait_condition(&cluster, "good", "Ready", "True").await;
    let stalled = wait_condition(&cluster, "on-legacy", "Stalled", "True").await;
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains("ConnectivityProfile e2e-undecodable/legacy cannot be read")
            && message.contains("integer"),
        "{message}"
    );
    assert_eq!(condition(&stalled, "Ready").unwrap().0, "False");

    // The profile watch still works for the others: a change re-runs the check using it.
    let first_run = good.status.unwrap().last_run.unwrap().run.unwrap();
    cluster.profile("good",
            &format!("{endpoint}    - {{name: again, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: TCP}}]}}\n")).await;
    let api = cluster.api::<EgressCheck>();
    let rerun = eventually(WAIT, "the profile change probed", || {
        let api = api.clone();
        async move {
            let check = api.get("good").await.ok()?;
            let status = check.status.clone()?;
            (status.last_run.as_ref()?.run? > first_run && status.results.len() == 2)
                .then_some(status)
        }
    })
    .await;
    assert_eq!(
        rerun.last_run.unwrap().trigger,
        Some(RunTrigger::ProfileChanged)
    );
    // Stalled waits for a change instead of failing and retrying.
    let text = ctx.metrics.encode();
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("netreach_reconcile_errors_total{controller=\"egresscheck\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(failures.is_empty(), "{failures:?}");

    // Correcting the profile brings its check back.
    cluster.profile("legacy", &endpoint).await;
    let fixed = wait_condition(&cluster, "on-legacy", "Ready", "True").await;
    assert_eq!(condition(&fixed, "Stalled").unwrap().0, "False");
    operator.abort();
}

/// The value of the sample `name{labels…}` whose labels include every one of `with`.
fn sample(text: &str, name: &str, with: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| with.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_describe_each_endpoint_and_leave_with_the_check() {
    let cluster = Scenario::start("metrics").await;
    let port = cluster.port;
    let https = Peers::get().port("PEER_HTTPS_PORT");
    cluster.profile("vendor",
            &format!("    - {{name: mpnsv2, host: mpnsv2.m3.maas360.com, ports: [{{port: {https}, protocol: HTTPS}}]}}\n    - {{name: api, cidr: 127.0.0.1, ports: [{{port: {port}, protocol: HTTP}}]}}\n    - {{name: closed, cidr: 127.0.0.1, required: false, ports: [{{port: 1, protocol: TCP}}]}}\n")).await;
    cluster.check("vendor", "vendor", "").await;
    cluster.check("other", "vendor", "").await;
    if let Some(sim) = &cluster.sim {
        // A failed status write, so the error counter counts one.
        sim.faults()
            .fail_next("patch", "egresschecks/status", 1, 500);
    }
    let operator = cluster.observed_operator(cluster.settings("one")).await;
    wait_condition(&cluster, "vendor", "Ready", "True").await;
    wait_condition(&cluster, "other", "Ready", "True").await;
    let text = operator.scrape().await;
    let vendor = "check=\"vendor\"";
    assert_eq!(
        sample(
            &text,
            "netreach_endpoint_up",
            &[vendor, "endpoint=\"api\"", "protocol=\"HTTP\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "netreach_endpoint_up",
            &[vendor, "endpoint=\"closed\"", "port=\"1\""]
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "netreach_endpoint_tls_intercepted",
            &[vendor, "endpoint=\"mpnsv2\""]
        ),
        Some(0.0)
    );
    let now = k8s_openapi::jiff::Timestamp::now().as_second() as f64;
    let expiry = sample(
        &text,
        "netreach_endpoint_cert_expiry_timestamp_seconds",
        &[vendor, "endpoint=\"mpnsv2\""],
    )
    .expect("the HTTPS endpoint's certificate expiry");
    assert!(expiry > now, "the peers' certificate is valid: {expiry}");
    assert!(
        sample(
            &text,
            "netreach_endpoint_cert_expiry_timestamp_seconds",
            &[vendor, "endpoint=\"api\""]
        )
        .is_none(),
        "plain HTTP presents no certificate"
    );
    let namespace = format!("namespace=\"{}\"", cluster.namespace);
    let probes = sample(
        &text,
        "netreach_probe_duration_seconds_count",
        &[&namespace],
    )
    .unwrap();
    assert!(
        probes >= 6.0 && probes % 3.0 == 0.0,
        "one observation per endpoint×port of each check's runs: {text}"
    );
    assert!(sample(&text, "netreach_probe_duration_seconds_sum", &[&namespace]).unwrap() > 0.0);
    let durations = ["api", "mpnsv2"].map(|endpoint| {
        sample(
            &text,
            "netreach_endpoint_probe_duration_seconds",
            &[vendor, &format!("endpoint=\"{endpoint}\"")],
        )
    });
    assert!(
        durations.iter().all(|d| d.is_some_and(|s| s >= 0.0)),
        "the last probe's duration per endpoint: {text}"
    );
    let last_run = sample(
        &text,
        "netreach_check_last_run_timestamp_seconds",
        &[vendor],
    )
    .unwrap();
    assert!((now - last_run).abs() < 120.0, "{last_run}");
    assert!(
        sample(
            &text,
            "netreach_reconcile_total",
            &["controller=\"egresscheck\""]
        )
        .unwrap()
            >= 2.0
    );
    // Every reason is there from the start, so a rate over it needs no first failure.
    let errors = |reason: &str| {
        sample(
            &text,
            "netreach_reconcile_errors_total",
            &[
                "controller=\"egresscheck\"",
                &format!("reason=\"{reason}\""),
            ],
        )
    };
    assert_eq!(errors("ReadFailed"), Some(0.0), "{text}");
    assert_eq!(
        errors("WriteFailed"),
        Some(if cluster.sim.is_some() { 1.0 } else { 0.0 }),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "netreach_reconcile_duration_seconds_count",
            &["controller=\"egresscheck\""]
        )
        .unwrap()
            >= 2.0
    );

    // A deleted check takes its series along; the other keeps its own.
    cluster
        .api::<EgressCheck>()
        .delete("vendor", &Default::default())
        .await
        .unwrap();
    let text = eventually(WAIT, "the deleted check's series gone", || async {
        let text = operator.scrape().await;
        (!text.contains(vendor)).then_some(text)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "netreach_endpoint_up",
            &["check=\"other\"", "endpoint=\"api\""]
        ),
        Some(1.0),
        "{text}"
    );
    operator.handle.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bind_or_mail_password_appears_in_no_status_event_log_or_metric() {
    let cluster = Scenario::start("secrets").await;
    let peers = Peers::get();
    let password = peers.var("PEER_LDAP_BIND_PASSWORD").to_owned();
    let mail_password = peers.var("PEER_MAIL_PASSWORD").to_owned();
    let wrong = "not-the-password-7f3a91";
    let secret = |name: &str, password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{bindDN: \"{}\", password: \"{password}\"}}\n---\n",
            peers.var("PEER_LDAP_BIND_DN")
        )
    };
    let mail_secret = |name: &str, password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{username: \"{}\", password: \"{password}\"}}\n---\n",
            peers.var("PEER_MAIL_USER")
        )
    };
    cluster
        .apply_yaml(&format!(
            "{}{}{}{}",
            secret("reader", &password),
            secret("wrong", wrong),
            mail_secret("mailbox", &mail_password),
            mail_secret("mailbox-wrong", wrong)
        ))
        .await;
    let ldap = peers.port("PEER_LDAP_PORT");
    let (imap, smtp) = (peers.port("PEER_IMAP_PORT"), peers.port("PEER_SMTP_PORT"));
    cluster
        .profile(
            "directory",
            &format!("    - name: ad\n      cidr: 127.0.0.1\n      tls: {{serverName: localhost}}\n      ports: [{{port: {ldap}, protocol: LDAP, tls: {{mode: StartTLS}}, ldap: {{bindSecretRef: {{name: reader}}, baseDN: \"dc=example,dc=com\"}}}}]\n    - name: ad-wrong\n      cidr: 127.0.0.1\n      required: false\n      ports: [{{port: {ldap}, protocol: LDAP, ldap: {{bindSecretRef: {{name: wrong}}}}}}]\n    - name: mailbox\n      cidr: 127.0.0.1\n      tls: {{serverName: localhost}}\n      ports: [{{port: {imap}, protocol: IMAP, tls: {{mode: StartTLS}}, mail: {{auth: {{mechanism: PLAIN, credentialsSecretRef: {{name: mailbox}}}}}}}}]\n    - name: relay-wrong\n      cidr: 127.0.0.1\n      tls: {{serverName: localhost}}\n      required: false\n      ports: [{{port: {smtp}, protocol: SMTP, tls: {{mode: StartTLS}}, smtp: {{auth: {{mechanism: LOGIN, credentialsSecretRef: {{name: mailbox-wrong}}}}}}}}]\n"),
        )
        .await;
    cluster.check("directory", "directory", "").await;
    let operator = cluster.observed_operator(cluster.settings("one")).await;
    let check = wait_condition(&cluster, "directory", "Reconciling", "False").await;
    let status = check.status.clone().unwrap();
    let bound = status
        .results
        .iter()
        .find(|r| r.endpoint == "ad")
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(bound.outcome, Outcome::Pass, "{}", bound.message);
    assert!(
        bound
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("bound as cn=reader"),
        "{bound:?}"
    );
    let refused = status
        .results
        .iter()
        .find(|r| r.endpoint == "ad-wrong")
        .unwrap();
    assert_eq!(
        refused.outcome,
        Outcome::Fail,
        "the wrong password is refused: {refused:?}"
    );
    let row = |name: &str| status.results.iter().find(|r| r.endpoint == name).unwrap();
    assert_eq!(
        (row("mailbox").outcome, row("mailbox").stage),
        (Outcome::Pass, netreach::api::result::Stage::Auth),
        "the probe pod mounted the mail Secret and logged in: {:?}",
        row("mailbox")
    );
    assert_eq!(
        row("relay-wrong").reason,
        Reason::AuthFailed,
        "{:?}",
        row("relay-wrong")
    );
    eventually(WAIT, "the failed bind's event", || {
        let cluster = &cluster;
        async move { (!events(cluster, "EndpointUnreachable").await.is_empty()).then_some(()) }
    })
    .await;

    let mut seen = vec![
        ("the EgressCheck", serde_json::to_string(&check).unwrap()),
        (
            "the events",
            serde_json::to_string(
                &cluster
                    .api::<Event>()
                    .list(&ListParams::default())
                    .await
                    .unwrap(),
            )
            .unwrap(),
        ),
        (
            "the events.k8s.io events",
            serde_json::to_string(
                &cluster
                    .api::<k8s_openapi::api::events::v1::Event>()
                    .list(&ListParams::default())
                    .await
                    .unwrap(),
            )
            .unwrap(),
        ),
        ("the operator's log", operator.logs.text()),
        ("the metrics", operator.scrape().await),
    ];
    let pods = cluster.api::<Pod>();
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        let log = pods
            .logs(
                &pod.name_any(),
                &LogParams {
                    container: Some("probe".into()),
                    ..LogParams::default()
                },
            )
            .await
            .unwrap();
        assert!(log.contains("NETREACH-RESULTS-BEGIN"), "{log}");
        seen.push(("a probe pod's log", log));
    }
    assert!(
        seen[3].1.contains("run changed the status"),
        "the log was captured: {}",
        seen[3].1
    );
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let user = peers.var("PEER_MAIL_USER");
    for (what, text) in &seen {
        for value in [password.as_str(), mail_password.as_str(), wrong] {
            for form in [
                value.to_owned(),
                b64(value),
                b64(&format!("\0{user}\0{value}")),
            ] {
                assert!(
                    !text.contains(&form),
                    "a password ({form}) appears in {what}:\n{text}"
                );
            }
        }
    }
    operator.handle.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn ftp_credentials_reach_the_probe_pod_and_an_ike_row_comes_back() {
    let cluster = Cluster::start("ftp-ike").await;
    peers_ca(&cluster).await;
    let peers = Peers::get();
    cluster
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: ftp-account}}\nstringData: {{username: \"{}\", password: \"{}\"}}\n",
            peers.var("PEER_FTP_USER"),
            peers.var("PEER_FTP_PASSWORD")
        ))
        .await;
    cluster
        .apply_yaml(&profile_yaml(
            "bulk",
            &format!(
                "    - name: bulk\n      cidr: 127.0.0.1\n      ports: [{{port: {}, protocol: FTPS, ftp: {{credentialsSecretRef: {{name: ftp-account}}}}}}]\n    - name: vpn\n      cidr: 127.0.0.1\n      ports: [{{port: {}, protocol: IKE}}]\n",
                peers.port("PEER_FTPS_PORT"),
                peers.port("PEER_IKE_NATT_PORT")
            ),
        ))
        .await;
    cluster.apply_yaml(&check_yaml("bulk", "bulk", "")).await;
    let (_ctx, handle) = cluster.operator(cluster.settings("one"));
    let check = wait_condition(&cluster, "bulk", "Reconciling", "False").await;
    let status = check.status.clone().unwrap();
    let bulk = status
        .results
        .iter()
        .find(|r| r.endpoint == "bulk")
        .unwrap();
    assert_eq!(bulk.outcome, Outcome::Pass, "{}", bulk.message);
    assert!(
        bulk.detail
            .as_deref()
            .unwrap_or_default()
            .starts_with("peerftp logged in (implicit TLS)"),
        "the mounted Secret logged in: {bulk:?}"
    );
    let vpn = status.results.iter().find(|r| r.endpoint == "vpn").unwrap();
    assert_eq!(vpn.outcome, Outcome::Pass, "{}", vpn.message);
    assert_eq!(condition(&check, "Ready").unwrap().0, "True");
    handle.abort();
}

/// An echo service on loopback: answers the caller's address as text.
async fn echo_endpoint() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let body = format!("{}\n", peer.ip());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, handle)
}

#[tokio::test(flavor = "multi_thread")]
async fn blocked_ports_and_source_addresses_reach_status_conditions_and_metrics_from_probe_pods() {
    let cluster = Cluster::start("proof").await;
    peers_ca(&cluster).await;
    let (open, _server) = http_endpoint().await;
    let (echo, _echo) = echo_endpoint().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut profile = profile_yaml(
        "vendor",
        &format!(
            "    - {{name: closed, cidr: 127.0.0.1, ports: [{{port: {closed}, protocol: TCP, expect: Blocked}}]}}\n    - {{name: leak, cidr: 127.0.0.1, ports: [{{port: {open}, protocol: TCP, expect: Blocked}}]}}\n    - {{name: egress, cidr: 127.0.0.1, ports: [{{port: {echo}, protocol: HTTP, http: {{sourceIP: {{expected: [127.0.0.1/32]}}}}}}]}}\n"
        ),
    );
    profile.push_str(
        "  policy: {podSelector: {matchLabels: {app: cloud-extender}}, flavors: [NetworkPolicy]}\n",
    );
    cluster.apply_yaml(&profile).await;
    cluster
        .apply_yaml(&check_yaml("vendor", "vendor", ""))
        .await;
    let operator = cluster.observed_operator(cluster.settings("one")).await;
    let check = eventually(WAIT, "the first run's rows", || {
        let api = cluster.api::<EgressCheck>();
        async move {
            let check = api.get("vendor").await.ok()?;
            (check.status.as_ref()?.results.len() == 3).then_some(check)
        }
    })
    .await;
    let status = check.status.as_ref().unwrap();
    let row = |name: &str| status.results.iter().find(|r| r.endpoint == name).unwrap();
    assert_eq!(
        (
            row("closed").outcome,
            row("closed").reason,
            row("closed").blocked_by
        ),
        (
            Outcome::Pass,
            Reason::Blocked,
            Some(Reason::ConnectionRefused)
        )
    );
    assert_eq!(
        (row("leak").outcome, row("leak").reason),
        (Outcome::Fail, Reason::UnexpectedlyReachable)
    );
    assert!(
        row("leak")
            .message
            .contains("NetworkPolicy netreach-vendor should block it"),
        "{}",
        row("leak").message
    );
    assert_eq!(
        row("egress").outcome,
        Outcome::Pass,
        "{}",
        row("egress").message
    );
    assert_eq!(row("egress").source_ip.as_deref(), Some("127.0.0.1"));
    let (ready, _, message) = condition(&check, "Ready").unwrap();
    assert_eq!(ready, "False", "the leak fails the check: {message}");
    let text = operator.scrape().await;
    let up = |endpoint: &str| {
        sample(
            &text,
            "netreach_endpoint_up",
            &["check=\"vendor\"", &format!("endpoint=\"{endpoint}\"")],
        )
    };
    assert_eq!(up("closed"), Some(1.0), "{text}");
    assert_eq!(up("leak"), Some(0.0), "{text}");
    assert_eq!(up("egress"), Some(1.0), "{text}");
}
