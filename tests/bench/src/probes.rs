//! Probe throughput and cost: `netreach check`, the Prometheus blackbox exporter and a bare
//! rustls client (the floor), on the same loopback HTTPS and TCP+TLS targets, same concurrency.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{self, Peers, Usage, percentile, release_binary, run_measured, table};

#[derive(Clone, Copy)]
pub struct Settings {
    pub https: usize,
    pub tls: usize,
    pub concurrency: usize,
    pub rounds: usize,
}

const HTTPS_PORT: u16 = 18443;
const BLACKBOX_PORT: u16 = 19115;

/// One tool's figures for one round.
#[derive(Clone, Debug, Default)]
struct Figures {
    probes: usize,
    wall: Duration,
    cpu: Duration,
    rss_kib: u64,
    latencies_ms: Vec<f64>,
}

impl Figures {
    fn row(&self, name: &str) -> Vec<String> {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        vec![
            name.into(),
            self.probes.to_string(),
            format!("{:.2}", self.wall.as_secs_f64()),
            format!("{:.0}", self.probes as f64 / self.wall.as_secs_f64()),
            format!("{:.2}", self.cpu.as_secs_f64()),
            format!("{:.0}", self.probes as f64 / self.cpu.as_secs_f64()),
            format!(
                "{:.3}",
                self.cpu.as_secs_f64() * 1000.0 / self.probes as f64
            ),
            format!("{:.1}", percentile(&sorted, 50.0)),
            format!("{:.1}", percentile(&sorted, 99.0)),
            format!("{:.1}", self.rss_kib as f64 / 1024.0),
        ]
    }

    fn json(&self) -> Value {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        json!({
            "probes": self.probes,
            "wallSeconds": self.wall.as_secs_f64(),
            "probesPerSecond": self.probes as f64 / self.wall.as_secs_f64(),
            "cpuSeconds": self.cpu.as_secs_f64(),
            "probesPerCpuSecond": self.probes as f64 / self.cpu.as_secs_f64(),
            "cpuMsPerProbe": self.cpu.as_secs_f64() * 1000.0 / self.probes as f64,
            "p50Ms": percentile(&sorted, 50.0),
            "p99Ms": percentile(&sorted, 99.0),
            "peakRssMiB": self.rss_kib as f64 / 1024.0,
        })
    }
}

/// The median round by CPU per probe.
fn median(mut rounds: Vec<Figures>) -> Figures {
    rounds.sort_by(|a, b| {
        (a.cpu.as_secs_f64() / a.probes as f64).total_cmp(&(b.cpu.as_secs_f64() / b.probes as f64))
    });
    rounds.swap_remove(rounds.len() / 2)
}

/// Profiles of at most 1,000 endpoints each (the CRD's limit), one endpoint×port per row.
fn profile_yaml(settings: &Settings) -> String {
    let rows = (0..settings.https)
        .map(|i| {
            format!(
                "https-{i:05}, cidr: 127.0.0.1, ports: [{{port: {HTTPS_PORT}, protocol: HTTPS}}]"
            )
        })
        .chain((0..settings.tls).map(|i| {
            format!("tls-{i:05}, cidr: 127.0.0.1, ports: [{{port: {HTTPS_PORT}, protocol: TLS}}]")
        }))
        .collect::<Vec<_>>();
    rows.chunks(1000)
        .enumerate()
        .map(|(n, chunk)| {
            let mut yaml = format!(
                "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: bench-{n}, namespace: bench}}\nspec:\n  defaults: {{timeout: 10s}}\n  endpoints:\n"
            );
            for row in chunk {
                yaml.push_str(&format!("    - {{name: {row}}}\n"));
            }
            yaml
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn run_netreach(
    settings: &Settings,
    profile: &std::path::Path,
    ca: &std::path::Path,
) -> anyhow::Result<Figures> {
    let (usage, output) = run_measured(
        Command::new(release_binary("netreach")?)
            .arg("check")
            .arg(profile)
            .arg("--ca-file")
            .arg(ca)
            .args([
                "--concurrency",
                &settings.concurrency.to_string(),
                "-o",
                "json",
            ])
            .stderr(std::process::Stdio::null()),
    )?;
    let report: Value = serde_json::from_slice(&output).with_context(|| {
        format!(
            "netreach check printed no JSON (exit {}); run it by hand on {}",
            usage.exit_code,
            profile.display()
        )
    })?;
    let rows: Vec<Value> = report["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["results"].as_array().cloned().unwrap_or_default())
        .collect();
    let passed = rows.iter().filter(|r| r["outcome"] == "Pass").count();
    anyhow::ensure!(
        usage.exit_code == 0 && passed == rows.len() && !rows.is_empty(),
        "netreach: {passed} of {} rows passed",
        rows.len()
    );
    Ok(Figures {
        probes: rows.len(),
        wall: usage.wall,
        cpu: usage.cpu,
        rss_kib: usage.max_rss_kib,
        latencies_ms: rows
            .iter()
            .filter_map(|r| r["latency"]["totalMs"].as_f64())
            .collect(),
    })
}

async fn blackbox_probe(module: &str, target: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", BLACKBOX_PORT)).await?;
    let request = format!(
        "GET /probe?module={module}&target={target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    anyhow::ensure!(
        body.contains("\nprobe_success 1"),
        "blackbox probe of {target} ({module}) failed"
    );
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn run_blackbox(settings: &Settings, peers: &Peers) -> anyhow::Result<Figures> {
    let pid = peers.pid("blackbox")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let jobs: Vec<(&str, String)> = (0..settings.https)
        .map(|_| ("http_404", format!("https://127.0.0.1:{HTTPS_PORT}/")))
        .chain((0..settings.tls).map(|_| ("tls_connect", format!("127.0.0.1:{HTTPS_PORT}"))))
        .collect();
    let cpu_before = util::process_cpu(pid)?;
    let started = Instant::now();
    let latencies: Vec<f64> = runtime.block_on(async {
        futures::stream::iter(
            jobs.iter()
                .map(|(module, target)| blackbox_probe(module, target)),
        )
        .buffer_unordered(settings.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<f64>>>()
    })?;
    let wall = started.elapsed();
    let cpu = util::process_cpu(pid)? - cpu_before;
    Ok(Figures {
        probes: latencies.len(),
        wall,
        cpu,
        rss_kib: util::process_peak_rss_kib(pid)?,
        latencies_ms: latencies,
    })
}

fn run_floor(settings: &Settings, ca: &std::path::Path) -> anyhow::Result<Figures> {
    let (usage, output): (Usage, Vec<u8>) = run_measured(
        Command::new(std::env::current_exe()?)
            .arg("floor")
            .arg("--ca")
            .arg(ca)
            .args([
                "--https",
                &settings.https.to_string(),
                "--tls",
                &settings.tls.to_string(),
            ])
            .args(["--concurrency", &settings.concurrency.to_string()]),
    )?;
    let latencies: Vec<f64> =
        serde_json::from_slice(&output).context("the floor printed no latencies")?;
    Ok(Figures {
        probes: latencies.len(),
        wall: usage.wall,
        cpu: usage.cpu,
        rss_kib: usage.max_rss_kib,
        latencies_ms: latencies,
    })
}

/// The floor itself (a child process): handshakes (and one GET for the HTTPS share) with a
/// plain rustls client, no session resumption.
pub fn floor(
    ca: &std::path::Path,
    https: usize,
    tls: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let latencies: Vec<f64> = runtime.block_on(async {
        let one = |get: bool| {
            let connector = connector.clone();
            async move {
                let started = Instant::now();
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", HTTPS_PORT)).await?;
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
                let mut tls = connector.connect(name, tcp).await?;
                if get {
                    tls.write_all(
                        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                    )
                    .await?;
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = tls.read(&mut buffer).await?;
                        anyhow::ensure!(n > 0, "closed before the response head");
                        head.extend_from_slice(&buffer[..n]);
                    }
                }
                Ok::<f64, anyhow::Error>(started.elapsed().as_secs_f64() * 1000.0)
            }
        };
        futures::stream::iter(
            (0..https)
                .map(|_| true)
                .chain((0..tls).map(|_| false))
                .map(one),
        )
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<f64>>>()
    })?;
    println!("{}", serde_json::to_string(&latencies)?);
    Ok(())
}

/// Median figures of each tool at one size.
fn measure(
    settings: &Settings,
    peers: &Peers,
    ca: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<([Figures; 3], Duration)> {
    let profile = dir.join(format!("profile-{}.yaml", settings.https + settings.tls));
    std::fs::write(&profile, profile_yaml(settings))?;
    let mut netreach = Vec::new();
    let mut blackbox = Vec::new();
    let mut floor = Vec::new();
    let mut loading = Vec::new();
    for _ in 0..settings.rounds {
        netreach.push(run_netreach(settings, &profile, ca)?);
        blackbox.push(run_blackbox(settings, peers)?);
        floor.push(run_floor(settings, ca)?);
        loading.push(load_cpu(&profile)?);
    }
    loading.sort();
    Ok((
        [median(netreach), median(blackbox), median(floor)],
        loading[loading.len() / 2],
    ))
}

/// CPU of everything `netreach check` does before probing: parsing the YAML and validating
/// it against the CRD schema and CEL rules, measured through `render`, which does the same.
fn load_cpu(profile: &std::path::Path) -> anyhow::Result<Duration> {
    let (usage, _) = run_measured(
        Command::new(release_binary("netreach")?)
            .arg("render")
            .arg(profile)
            .args(["--flavor", "AllowlistCSV"])
            .stderr(std::process::Stdio::null()),
    )?;
    anyhow::ensure!(
        usage.exit_code == 0,
        "netreach render failed on {}",
        profile.display()
    );
    Ok(usage.cpu)
}

/// CPU per probe beyond start-up: the difference between a run of 2N and one of N rows.
fn marginal_cpu_ms(small: &Figures, large: &Figures) -> f64 {
    (large.cpu.as_secs_f64() - small.cpu.as_secs_f64()) * 1000.0
        / (large.probes - small.probes) as f64
}

pub fn run(settings: Settings) -> anyhow::Result<()> {
    let peers = Peers::start("nginx blackbox")?;
    let ca = peers.file("certs/public-root.pem");
    let dir = std::env::temp_dir().join(format!("netreach-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let doubled = Settings {
        https: settings.https * 2,
        tls: settings.tls * 2,
        ..settings
    };
    // Warm-up: nginx workers, page cache, the exporter's first-request costs.
    measure(
        &Settings {
            rounds: 1,
            ..settings
        },
        &peers,
        &ca,
        &dir,
    )?;
    let ([n_small, b_small, f_small], load_small) = measure(&settings, &peers, &ca, &dir)?;
    let ([netreach, blackbox, floor], load_large) = measure(&doubled, &peers, &ca, &dir)?;
    let headers = [
        "tool",
        "probes",
        "wall s",
        "probes/s",
        "CPU s",
        "probes/CPU-s",
        "CPU ms/probe",
        "p50 ms",
        "p99 ms",
        "peak RSS MiB",
    ];
    let rows = vec![
        netreach.row("netreach check"),
        blackbox.row("blackbox exporter"),
        floor.row("rustls floor"),
    ];
    let per_probe = |f: &Figures| f.cpu.as_secs_f64() / f.probes as f64;
    let throughput = |f: &Figures| f.probes as f64 / f.wall.as_secs_f64();
    println!(
        "Probe cost: {} HTTPS (GET, 404) + {} TCP+TLS rows against loopback nginx, {} in flight, median of {} rounds\n",
        doubled.https, doubled.tls, doubled.concurrency, doubled.rounds
    );
    print!("{}", table(&headers, &rows));
    let marginal = [
        marginal_cpu_ms(&n_small, &netreach),
        marginal_cpu_ms(&b_small, &blackbox),
        marginal_cpu_ms(&f_small, &floor),
    ];
    println!(
        "\nCPU per probe beyond start-up ({} vs {} rows): netreach {:.3} ms, blackbox exporter {:.3} ms, rustls floor {:.3} ms",
        settings.https + settings.tls,
        doubled.https + doubled.tls,
        marginal[0],
        marginal[1],
        marginal[2]
    );
    // The probe engine alone: the marginal CPU without loading and validating the input.
    let engine = ((netreach.cpu.saturating_sub(load_large)).as_secs_f64()
        - (n_small.cpu.saturating_sub(load_small)).as_secs_f64())
        * 1000.0
        / (netreach.probes - n_small.probes) as f64;
    let load_per_row = (load_large.as_secs_f64() - load_small.as_secs_f64()) * 1000.0
        / (netreach.probes - n_small.probes) as f64;
    let engine_vs_floor = engine / marginal[2];
    println!(
        "netreach probe engine (without loading and validating the input, {load_per_row:.3} ms per row): {engine:.3} ms per probe, {engine_vs_floor:.2}× the rustls floor"
    );
    println!(
        "netreach peak RSS: {:.1} MiB for {} rows, {:.1} MiB for {} rows",
        n_small.rss_kib as f64 / 1024.0,
        n_small.probes,
        netreach.rss_kib as f64 / 1024.0,
        netreach.probes
    );
    let cpu_vs_floor = per_probe(&netreach) / per_probe(&floor);
    let marginal_vs_floor = marginal[0] / marginal[2];
    let cpu_vs_blackbox = per_probe(&netreach) / per_probe(&blackbox);
    let throughput_vs_blackbox = throughput(&netreach) / throughput(&blackbox);
    println!(
        "netreach CPU per probe: {marginal_vs_floor:.2}× the rustls floor beyond start-up ({cpu_vs_floor:.2}× for the whole run, start-up included); {cpu_vs_blackbox:.2}× the blackbox exporter's"
    );
    println!(
        "netreach throughput: {throughput_vs_blackbox:.2}× the blackbox exporter's at equal concurrency"
    );
    let summary = json!({
        "benchmark": "probes",
        "https": doubled.https,
        "tls": doubled.tls,
        "concurrency": doubled.concurrency,
        "rounds": doubled.rounds,
        "netreach": netreach.json(),
        "blackbox": blackbox.json(),
        "floor": floor.json(),
        "engineCpuMsPerProbe": engine,
        "netreachPeakRssMiBByRows": {n_small.probes.to_string(): n_small.rss_kib as f64 / 1024.0, netreach.probes.to_string(): netreach.rss_kib as f64 / 1024.0},
        "loadCpuMsPerRow": load_per_row,
        "marginalCpuMsPerProbe": {"netreach": marginal[0], "blackbox": marginal[1], "floor": marginal[2]},
        "ratios": {
            "netreachMarginalCpuPerProbeVsFloor": marginal_vs_floor,
            "netreachEngineCpuPerProbeVsFloor": engine_vs_floor,
            "netreachCpuPerProbeVsFloor": cpu_vs_floor,
            "netreachCpuPerProbeVsBlackbox": cpu_vs_blackbox,
            "netreachThroughputVsBlackbox": throughput_vs_blackbox,
        },
    });
    util::write_summary("probes", &summary)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
