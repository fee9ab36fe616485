//! Command-line interface: argument parsing and the startup of each subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{crdgen, load};

/// Exit code for input the tool refuses (bad YAML, schema violations, bad flags).
pub const EXIT_INVALID_INPUT: u8 = 2;
/// Exit code when a required endpoint fails.
pub const EXIT_FAILED: u8 = 1;

/// Prove that workloads can reach the outbound endpoints they depend on.
///
/// NetReach checks hosts and IPs, ports, protocols and TLS issuers from where the workload
/// runs, explains why an endpoint cannot be reached (DNS, firewall, proxy, TLS interception,
/// expiry) and emits the network policy that allows exactly those endpoints.
#[derive(Debug, Parser)]
#[command(name = "netreach", version = crate::VERSION, propagate_version = true)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Probe the endpoints of profiles and checks from this machine (no cluster needed).
    ///
    /// Reads ConnectivityProfile and EgressCheck YAML (files or directories), probes every
    /// endpoint×port and prints what works and why the rest does not. Exit status: 0 when
    /// every required endpoint passes, 1 when one fails, 2 on invalid input.
    Check(CheckArgs),
    /// Print the network policy (or a firewall allowlist) for profiles, for GitOps.
    Render(RenderArgs),
    /// Print the CustomResourceDefinitions, or write one file per CRD.
    Crds(CrdsArgs),
    /// Run the operator: watch EgressChecks and ConnectivityProfiles in a cluster.
    ///
    /// Connects like every client (KUBECONFIG, else the in-cluster service account), runs each
    /// check's probes as Jobs, writes status, events and metrics.
    Run(RunArgs),
    /// Run a probe spec and print its results (what probe Jobs execute).
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// YAML files or directories holding ConnectivityProfiles and EgressChecks.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Ask this nameserver (IP or IP:port) instead of the system resolver; repeatable.
    #[arg(long, value_name = "ADDR")]
    pub nameserver: Vec<String>,
    /// Probe through this HTTP CONNECT proxy (http://[user:pass@]host:port).
    #[arg(long, value_name = "URL", env = "NETREACH_PROXY")]
    pub proxy: Option<String>,
    /// Deadline per endpoint×port, all stages included (overrides the files), e.g. 5s.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// How many endpoint×port probes run at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Extra CA certificates (PEM) to trust besides the public web PKI roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Vec<PathBuf>,
    /// Trust the system's CA store instead of the bundled web PKI roots.
    #[arg(long)]
    pub system_roots: bool,
    /// Probe only the endpoints with this name; repeatable.
    #[arg(long, value_name = "NAME")]
    pub only: Vec<String>,
    /// Directory of Secrets as files, `DIR/<secret>/<key>` (as a pod mounts them).
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Stop at the first address that answers instead of probing every resolved address.
    #[arg(long)]
    pub first_address_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table for people.
    Table,
    /// The result model as JSON.
    Json,
    /// JUnit XML, one testcase per endpoint×port, for CI gates.
    Junit,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Image of the probe pods.
    #[arg(long, env = "NETREACH_PROBE_IMAGE", default_value = concat!("ghcr.io/netreach/netreach:", env!("CARGO_PKG_VERSION")))]
    pub probe_image: String,
    /// Watch only this namespace; repeatable (default: all namespaces).
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Where to serve /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Where to serve /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub health_addr: std::net::SocketAddr,
    /// Elect a leader through a Lease so only one replica acts.
    #[arg(long)]
    pub leader_election: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "netreach-operator")]
    pub lease_name: String,
    /// How long the Lease holds without renewal before a standby takes over, e.g. 15s.
    #[arg(long, default_value = "15s")]
    pub lease_duration: crate::api::SpecDuration,
    /// Reconciles in flight at once, served in arrival order, plus a quarter as many for
    /// changes people make; bounds memory and API connections when many objects change
    /// together.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// This replica's identity in the Lease (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// YAML files or directories holding ConnectivityProfiles.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Flavors to render, comma-separated, case-insensitive: NetworkPolicy, Cilium,
    /// CiliumEgressGateway, Calico, Istio, AdminNetworkPolicy, ClusterNetworkPolicy,
    /// EgressFirewall, AllowlistCSV, AllowlistMarkdown.
    #[arg(long, value_delimiter = ',', required = true, value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<crate::emit::RenderFormat>()))]
    pub flavor: Vec<crate::emit::RenderFormat>,
    /// Resolve host names now (address-based flavors need addresses; without this, those in
    /// the profiles' status are used).
    #[arg(long)]
    pub resolve: bool,
    /// Nameserver for --resolve (IP or IP:port), instead of the profile's or the system's.
    #[arg(long, value_name = "ADDR")]
    pub nameserver: Vec<String>,
    /// Fail (exit 1) when a flavor cannot express an endpoint, instead of warning.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write `DIR/<crd name>.yaml` per CRD instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Probe spec (JSON or YAML); `-` reads standard input.
    #[arg(long, value_name = "FILE", default_value = "-")]
    pub spec: PathBuf,
    /// Also write the result digest here (the pod's terminationMessagePath).
    #[arg(long, value_name = "FILE")]
    pub termination_log: Option<PathBuf>,
}

impl Args {
    /// Parses the command line and runs the chosen subcommand.
    pub fn parse_and_run() -> ExitCode {
        let args = Args::parse();
        args.run()
    }

    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Crds(args) => run_crds(&args),
            Command::Check(args) => crate::probe::cli::run_check(args),
            Command::Probe(args) => crate::probe::cli::run_probe(&args),
            Command::Render(args) => crate::emit::cli::run_render(&args),
            Command::Run(args) => run_operator(args),
        }
    }
}

/// glibc gives each thread that meets contention an arena of its own, up to eight per core;
/// the operator's small, long-lived objects then fragment across them, and its peak RSS at
/// 5,000 checks varied from 56 to 70 MiB between identical runs; two arenas held it at
/// 50-53 MiB. Must run before the runtime starts its threads.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no other thread is allocating yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn run_operator(args: RunArgs) -> ExitCode {
    bound_malloc_arenas();
    crate::telemetry::init(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(async {
        let client = kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the Kubernetes API (set KUBECONFIG or run in a cluster): {}",
                error_chain(&e)
            )
        })?;
        let identity = args.identity.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "netreach".into());
            format!("{host}-{}", std::process::id())
        });
        let settings = crate::controller::Settings {
            probe_image: args.probe_image.clone(),
            namespaces: args.namespaces.clone(),
            leader_election: args.leader_election,
            lease_namespace: args.lease_namespace.clone(),
            lease_name: args.lease_name.clone(),
            lease_duration: args.lease_duration.as_duration(),
            identity,
            max_concurrent_reconciles: args.max_concurrent_reconciles,
        };
        let addresses = if args.metrics_addr == args.health_addr {
            vec![args.metrics_addr]
        } else {
            vec![args.metrics_addr, args.health_addr]
        };
        let ctx = std::sync::Arc::new(crate::controller::Context::new(
            client,
            settings,
            Default::default(),
        ));
        crate::controller::run(ctx, addresses, shutdown_signal()).await;
        Ok::<_, anyhow::Error>(())
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// Loads the inputs, printing every error and returning exit code 2 on any.
pub fn load_or_exit(files: &[PathBuf]) -> Result<Vec<load::Loaded>, ExitCode> {
    load::load_paths(files).map_err(|errors| {
        for error in &errors.0 {
            eprintln!("error: {error}");
        }
        eprintln!("{} problem(s) found; nothing was probed", errors.0.len());
        ExitCode::from(EXIT_INVALID_INPUT)
    })
}

fn run_crds(args: &CrdsArgs) -> ExitCode {
    let result = match &args.output_dir {
        Some(dir) => crdgen::write_crds(dir).map(|paths| {
            for path in paths {
                eprintln!("wrote {}", path.display());
            }
        }),
        None => crdgen::all_crds_yaml().map(|yaml| print!("{yaml}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `outer: inner: root` for an error and its sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
