//! The operator at scale on kube-sim, and how fast a failure is detected. kube-sim and
//! `netreach run` are separate processes, measured from /proc; probe pods run the real
//! `netreach probe` against a TCP listener on loopback (one row per check).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::util::{self, Guard, release_binary, table};

const IMAGE: &str = "ghcr.io/netreach/netreach:bench";
const NAMESPACE: &str = "bench";
const AGENT: &str = "netreach-bench";
/// How often a long wait reports how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

struct Cluster {
    _sim: Guard,
    kubeconfig: std::path::PathBuf,
    url: String,
    client: kube::Client,
    _dir: std::path::PathBuf,
}

fn checks_resource() -> ApiResource {
    ApiResource {
        group: "netreach.dev".into(),
        version: "v1alpha1".into(),
        api_version: "netreach.dev/v1alpha1".into(),
        kind: "EgressCheck".into(),
        plural: "egresschecks".into(),
    }
}

async fn start_cluster(tag: &str) -> anyhow::Result<Cluster> {
    let dir = std::env::temp_dir().join(format!("netreach-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    let sim = Command::new(release_binary("kube-sim")?)
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--image")
        .arg(format!("{IMAGE}={}", release_binary("netreach")?.display()))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stderr(Stdio::null())
        .spawn()?;
    let sim = Guard(sim);
    util::wait_for_file(&kubeconfig, Duration::from_secs(10))?;
    let text = std::fs::read_to_string(&kubeconfig)?;
    let url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .context("no server in kubeconfig")?
        .to_owned();
    let mut config = kube::Config::new(url.parse()?);
    config
        .headers
        .push((http_header("user-agent"), AGENT.parse()?));
    let client = kube::Client::try_from(config)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in [
        "connectivityprofiles.netreach.dev.yaml",
        "egresschecks.netreach.dev.yaml",
    ] {
        let crd: CustomResourceDefinition = serde_norway::from_str(&std::fs::read_to_string(
            util::repo().join("crds").join(file),
        )?)?;
        crds.create(&PostParams::default(), &crd).await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    Ok(Cluster {
        _sim: sim,
        kubeconfig,
        url,
        client,
        _dir: dir,
    })
}

fn http_header(name: &'static str) -> http::HeaderName {
    http::HeaderName::from_static(name)
}

fn start_operator(cluster: &Cluster, metrics_port: u16) -> anyhow::Result<Guard> {
    let child = Command::new(release_binary("netreach")?)
        .args(["run", "--probe-image", IMAGE, "--namespace", NAMESPACE])
        .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
        .arg(format!("--health-addr=127.0.0.1:{metrics_port}"))
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Guard(child))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_get(url: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let authority = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// Requests made by everyone but the benchmark itself, by (verb, resource).
fn operator_requests(cluster: &Cluster) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    let stats: Value = serde_json::from_str(&http_get(&cluster.url, "/kube-sim/stats")?)?;
    let mut counts = BTreeMap::new();
    for row in stats["requests"].as_array().context("no stats")? {
        if row["agent"] == AGENT {
            continue;
        }
        let key = (
            row["verb"].as_str().unwrap_or_default().to_owned(),
            row["resource"].as_str().unwrap_or_default().to_owned(),
        );
        *counts.entry(key).or_insert(0) += row["count"].as_u64().unwrap_or(0);
    }
    Ok(counts)
}

fn reconciles(metrics_port: u16) -> anyhow::Result<f64> {
    let text = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("netreach_reconcile_total{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum())
}

fn ready_count(items: &[DynamicObject]) -> usize {
    items
        .iter()
        .filter(|c| {
            c.data["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count()
}

async fn wait_ready(
    api: &Api<DynamicObject>,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let items = api.list(&ListParams::default()).await?.items;
        let ready = ready_count(&items);
        if ready >= n {
            return Ok(started.elapsed());
        }
        if reported.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "  {ready} of {n} checks Ready after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        if started.elapsed() > timeout {
            bail!(
                "only {} of {n} checks Ready after {timeout:?}",
                ready_count(&items)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn tcp_target() -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let handle = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    Ok((port, handle))
}

fn sum(counts: &BTreeMap<(String, String), u64>) -> u64 {
    counts.values().sum()
}

fn count(counts: &BTreeMap<(String, String), u64>, verb: &str, resource: &str) -> u64 {
    counts
        .get(&(verb.to_owned(), resource.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// The bench's namespace with one ConnectivityProfile, `target`, naming a TCP listener.
async fn create_profile(cluster: &Cluster, port: u16) -> anyhow::Result<()> {
    let profiles: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        NAMESPACE,
        &ApiResource {
            group: "netreach.dev".into(),
            version: "v1alpha1".into(),
            api_version: "netreach.dev/v1alpha1".into(),
            kind: "ConnectivityProfile".into(),
            plural: "connectivityprofiles".into(),
        },
    );
    let profile = json!({
        "apiVersion": "netreach.dev/v1alpha1", "kind": "ConnectivityProfile", "metadata": {"name": "target"},
        "spec": {"endpoints": [{"name": "api", "cidr": "127.0.0.1", "ports": [{"port": port, "protocol": "TCP"}]}]},
    });
    profiles
        .create(&PostParams::default(), &serde_json::from_value(profile)?)
        .await?;
    Ok(())
}

fn check_object(i: usize, interval: u64) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "netreach.dev/v1alpha1", "kind": "EgressCheck", "metadata": {"name": format!("c{i:05}")},
        "spec": {"profileRef": {"name": "target"}, "interval": format!("{interval}s"), "historyLimit": 1},
    }))?)
}

/// `n` checks using the profile, created 16 at a time.
async fn create_checks(checks: &Api<DynamicObject>, n: usize, interval: u64) -> anyhow::Result<()> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            checks
                .create(&PostParams::default(), &check_object(i, interval)?)
                .await?;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(())
}

/// What the operator spends on its next `n` runs (every check once) from now: CPU, reconciles,
/// API requests by verb and resource, status writes.
async fn periodic_round(
    cluster: &Cluster,
    pid: u32,
    metrics_port: u16,
    n: usize,
    deadline: Duration,
) -> anyhow::Result<Value> {
    let cpu_before = util::process_cpu(pid)?;
    let reconciles_before = reconciles(metrics_port)?;
    let requests_before = operator_requests(cluster)?;
    let jobs_before = count(&requests_before, "create", "jobs");
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let now = operator_requests(cluster)?;
        let runs = count(&now, "create", "jobs") - jobs_before;
        if runs >= n as u64 {
            break;
        }
        if reported.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "  periodic round: {runs} of {n} runs after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        if started.elapsed() > deadline {
            bail!("the periodic round did not finish in {deadline:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delta: BTreeMap<(String, String), u64> = operator_requests(cluster)?
        .into_iter()
        .map(|(k, v)| {
            let before = requests_before.get(&k).copied().unwrap_or(0);
            (k, v - before)
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    let cpu = util::process_cpu(pid)? - cpu_before;
    let runs = count(&delta, "create", "jobs");
    Ok(json!({
        "seconds": seconds,
        "runsPerSecond": runs as f64 / seconds,
        "apiRequests": sum(&delta),
        "apiRequestsPerCheck": sum(&delta) as f64 / n as f64,
        "apiRequestsPerRun": sum(&delta) as f64 / runs.max(1) as f64,
        "statusWrites": count(&delta, "patch", "egresschecks/status"),
        "cpuSeconds": cpu.as_secs_f64(),
        "reconciles": reconciles(metrics_port)? - reconciles_before,
        "runs": runs,
        "cpuMsPerRun": cpu.as_secs_f64() * 1000.0 / runs.max(1) as f64,
        "byRequest": delta.iter().map(|((verb, resource), count)| json!({"verb": verb, "resource": resource, "count": count})).collect::<Vec<_>>(),
    }))
}

/// One scale point: `n` checks of one TCP row each, created before the operator starts.
async fn scale_point(n: usize, interval: u64) -> anyhow::Result<Value> {
    let cluster = start_cluster(&format!("scale{n}")).await?;
    let (port, _target) = tcp_target().await?;
    create_profile(&cluster, port).await?;
    let checks: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), NAMESPACE, &checks_resource());
    create_checks(&checks, n, interval).await?;
    let metrics_port = free_port()?;
    let operator = start_operator(&cluster, metrics_port)?;
    let pid = operator.0.id();
    let started = Instant::now();
    let until_ready = wait_ready(&checks, n, Duration::from_secs(60 + n as u64)).await?;
    let cpu_ready = util::process_cpu(pid)?;
    let reconciles_ready = reconciles(metrics_port)?;
    let requests_ready = operator_requests(&cluster)?;
    let rss_ready_kib = util::process_peak_rss_kib(pid)?;

    // A full periodic round: every check runs again with the same result.
    let round = periodic_round(
        &cluster,
        pid,
        metrics_port,
        n,
        Duration::from_secs(interval * 3 + n as u64),
    )
    .await?;
    let rss_round_kib = util::process_peak_rss_kib(pid)?;

    // Watch-restart recovery: drop every watch, change one check, time until it is probed.
    let probe = checks.get("c00000").await?;
    let generation = probe.metadata.generation.unwrap_or(1);
    http_post(&cluster.url, "/kube-sim/close-watches")?;
    let recovery_started = Instant::now();
    checks
        .patch(
            "c00000",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"interval": format!("{}s", interval + 1)}})),
        )
        .await?;
    loop {
        let check = checks.get("c00000").await?;
        let observed = check.data["status"]["lastRun"]["runKey"]
            .as_str()
            .unwrap_or_default()
            .split('/')
            .next()
            .and_then(|g| g.parse::<i64>().ok());
        if observed == Some(generation + 1) {
            break;
        }
        if recovery_started.elapsed() > Duration::from_secs(60) {
            bail!("no recovery after dropped watches");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovery = recovery_started.elapsed();
    let rss_kib = util::process_peak_rss_kib(pid)?;
    drop(operator);
    let total = started.elapsed();
    Ok(json!({
        "checks": n,
        "secondsUntilAllReady": until_ready.as_secs_f64(),
        "operatorCpuSecondsUntilReady": cpu_ready.as_secs_f64(),
        "reconcilesUntilReady": reconciles_ready,
        "cpuMsPerReconcile": cpu_ready.as_secs_f64() * 1000.0 / reconciles_ready.max(1.0),
        "apiRequestsUntilReady": sum(&requests_ready),
        "apiRequestsPerCheckUntilReady": sum(&requests_ready) as f64 / n as f64,
        "periodicRound": round,
        "watchRestartRecoverySeconds": recovery.as_secs_f64(),
        "operatorPeakRssMiB": rss_kib as f64 / 1024.0,
        "operatorPeakRssMiBUntilReady": rss_ready_kib as f64 / 1024.0,
        "operatorPeakRssMiBUntilRoundEnd": rss_round_kib as f64 / 1024.0,
        "benchSeconds": total.as_secs_f64(),
    }))
}

fn http_post(url: &str, path: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let authority = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.write_all(format!("POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    anyhow::ensure!(text.starts_with("HTTP/1.1 200"), "POST {path}: {text}");
    Ok(())
}

/// The same load at every size: the operator runs first, checks arrive at `rate` a second and
/// each runs every n / rate seconds, so every size sees `rate` runs a second spread evenly.
/// What a run costs then depends only on the number of checks the operator keeps.
async fn steady_point(n: usize, rate: f64) -> anyhow::Result<Value> {
    let interval = (n as f64 / rate).ceil().max(1.0) as u64;
    let cluster = start_cluster(&format!("steady{n}")).await?;
    let (port, _target) = tcp_target().await?;
    create_profile(&cluster, port).await?;
    let checks: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), NAMESPACE, &checks_resource());
    let metrics_port = free_port()?;
    let operator = start_operator(&cluster, metrics_port)?;
    let pid = operator.0.id();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut reported = Instant::now();
    for i in 0..n {
        pace.tick().await;
        checks
            .create(&PostParams::default(), &check_object(i, interval)?)
            .await?;
        if reported.elapsed() >= PROGRESS_EVERY {
            eprintln!("  created {} of {n} checks", i + 1);
            reported = Instant::now();
        }
    }
    wait_ready(&checks, n, Duration::from_secs(interval + 120)).await?;
    let round = periodic_round(
        &cluster,
        pid,
        metrics_port,
        n,
        Duration::from_secs(interval * 3 + 60),
    )
    .await?;
    let rss_kib = util::process_peak_rss_kib(pid)?;
    Ok(json!({
        "checks": n,
        "intervalSeconds": interval,
        "round": round,
        "operatorPeakRssMiB": rss_kib as f64 / 1024.0,
    }))
}

/// The bench's own client side: two threads, like the machine.
fn client_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// One point per size, one after another, each on a fresh cluster.
fn each_size<Point>(sizes: &[usize], point: impl Fn(usize) -> Point) -> anyhow::Result<Vec<Value>>
where
    Point: std::future::Future<Output = anyhow::Result<Value>>,
{
    let runtime = client_runtime()?;
    sizes.iter().map(|&n| runtime.block_on(point(n))).collect()
}

/// A JSON number as a table cell with `digits` decimals.
fn number(value: &Value, digits: usize) -> String {
    format!("{:.*}", digits, value.as_f64().unwrap_or(0.0))
}

/// CPU per run at equal runs per second, for each size: the operator's linearity in checks.
pub fn run_steady(sizes: &[usize], rate: f64) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0.0, "--rate must be above zero");
    let points = each_size(sizes, |n| {
        eprintln!("operator steady load: {n} checks at {rate} runs/s…");
        steady_point(n, rate)
    })?;
    let headers = [
        "checks",
        "interval s",
        "runs/s",
        "CPU ms/run",
        "reconciles/run",
        "API req/run",
        "status writes",
        "peak RSS MiB",
    ];
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            let round = &p["round"];
            let runs = round["runs"].as_f64().unwrap_or(0.0).max(1.0);
            vec![
                p["checks"].to_string(),
                p["intervalSeconds"].to_string(),
                number(&round["runsPerSecond"], 1),
                number(&round["cpuMsPerRun"], 2),
                format!("{:.2}", round["reconciles"].as_f64().unwrap_or(0.0) / runs),
                number(&round["apiRequestsPerRun"], 1),
                round["statusWrites"].to_string(),
                number(&p["operatorPeakRssMiB"], 1),
            ]
        })
        .collect();
    println!(
        "Operator on kube-sim at a steady {rate} runs/s: checks arrive at that rate and run every checks/rate seconds\n"
    );
    print!("{}", table(&headers, &rows));
    util::write_summary(
        "steady",
        &json!({"benchmark": "steady", "runsPerSecond": rate, "points": points}),
    )?;
    Ok(())
}

pub fn run_scale(sizes: &[usize], interval: u64) -> anyhow::Result<()> {
    let points = each_size(sizes, |n| {
        eprintln!("operator scale: {n} checks…");
        scale_point(n, interval)
    })?;
    let headers = [
        "checks",
        "all Ready s",
        "CPU s",
        "reconciles",
        "CPU ms/reconcile",
        "API req/check",
        "round API req/check",
        "round CPU ms/run",
        "round status writes",
        "watch recovery s",
        "peak RSS MiB",
    ];
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                p["checks"].to_string(),
                number(&p["secondsUntilAllReady"], 1),
                number(&p["operatorCpuSecondsUntilReady"], 2),
                p["reconcilesUntilReady"].to_string(),
                number(&p["cpuMsPerReconcile"], 2),
                number(&p["apiRequestsPerCheckUntilReady"], 1),
                number(&p["periodicRound"]["apiRequestsPerCheck"], 1),
                number(&p["periodicRound"]["cpuMsPerRun"], 2),
                p["periodicRound"]["statusWrites"].to_string(),
                number(&p["watchRestartRecoverySeconds"], 2),
                number(&p["operatorPeakRssMiB"], 1),
            ]
        })
        .collect();
    println!(
        "Operator on kube-sim: EgressChecks of one TCP row each, real `netreach probe` pods, interval {interval}s\n"
    );
    print!("{}", table(&headers, &rows));
    util::write_summary(
        "operator",
        &json!({"benchmark": "operator", "intervalSeconds": interval, "points": points}),
    )?;
    Ok(())
}

/// Time from an endpoint going down until the check says so, against interval + timeout.
pub fn run_detection(interval: u64, timeout: u64, samples: usize) -> anyhow::Result<()> {
    let runtime = client_runtime()?;
    let results = runtime.block_on(async {
        let cluster = start_cluster("detect").await?;
        let metrics_port = free_port()?;
        let _operator = start_operator(&cluster, metrics_port)?;
        let checks: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), NAMESPACE, &checks_resource());
        let mut latencies = Vec::new();
        for sample in 0..samples {
            let (port, target) = tcp_target().await?;
            let name = format!("detect-{sample}");
            let check = json!({
                "apiVersion": "netreach.dev/v1alpha1", "kind": "EgressCheck", "metadata": {"name": name},
                "spec": {"endpoints": [{"name": "api", "cidr": "127.0.0.1", "timeout": format!("{timeout}s"), "ports": [{"port": port, "protocol": "TCP"}]}], "interval": format!("{interval}s")},
            });
            checks.create(&PostParams::default(), &serde_json::from_value(check)?).await?;
            loop {
                let c = checks.get(&name).await?;
                if ready_count(std::slice::from_ref(&c)) == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Go down at a random point of the interval.
            tokio::time::sleep(Duration::from_millis(317 * (sample as u64 % 7))).await;
            target.abort();
            let down = Instant::now();
            // The first run scheduled after the endpoint went down.
            let scheduled = checks.get(&name).await?.data["status"]["nextRunTime"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .context("no nextRunTime in the check's status")?;
            loop {
                let c = checks.get(&name).await?;
                let failed = c.data["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "False"));
                if failed {
                    let after_schedule = Timestamp::now().duration_since(scheduled).as_secs_f64();
                    latencies.push((down.elapsed().as_secs_f64(), after_schedule));
                    break;
                }
                if down.elapsed() > Duration::from_secs(interval + timeout + 60) {
                    bail!("{name}: the failure was not reported");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            checks.delete(&name, &Default::default()).await?;
        }
        Ok::<_, anyhow::Error>(latencies)
    })?;
    let sorted = |pick: fn(&(f64, f64)) -> f64| {
        let mut values: Vec<f64> = results.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values
    };
    let latencies = sorted(|r| r.0);
    let overheads = sorted(|r| r.1);
    let bound = (interval + timeout) as f64;
    let worst = latencies.last().copied().unwrap_or(0.0);
    let worst_overhead = overheads.last().copied().unwrap_or(0.0);
    println!(
        "Detection latency: endpoint stops accepting → Ready=False, interval {interval}s, timeout {timeout}s, {samples} samples\n"
    );
    print!(
        "{}",
        table(
            &[
                "interval+timeout s",
                "p50 s",
                "max s",
                "within bound",
                "after scheduled run p50 s",
                "max s"
            ],
            &[vec![
                format!("{bound:.1}"),
                format!("{:.2}", util::percentile(&latencies, 50.0)),
                format!("{worst:.2}"),
                (worst <= bound).to_string(),
                format!("{:.3}", util::percentile(&overheads, 50.0)),
                format!("{worst_overhead:.3}"),
            ]]
        )
    );
    util::write_summary(
        "detection",
        &json!({
            "benchmark": "detection",
            "intervalSeconds": interval,
            "timeoutSeconds": timeout,
            "latenciesSeconds": latencies,
            "boundSeconds": bound,
            "withinBound": worst <= bound,
            "overheadAfterScheduledRunSeconds": overheads,
        }),
    )?;
    Ok(())
}
