//! Command-line interface: the subcommands, their flags and exit codes (one file per
//! subcommand); the only layer that knows about either.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api::limits::Limits;
use crate::api::load;

mod check;
mod crds;
mod probe;
mod render;
mod run;
mod shutdown;

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
    Check(check::CheckArgs),
    /// Print the network policy (or a firewall allowlist) for profiles, for GitOps.
    Render(render::RenderArgs),
    /// Print the CustomResourceDefinitions, or write one file per CRD.
    Crds(crds::CrdsArgs),
    /// Run the operator: watch EgressChecks and ConnectivityProfiles in a cluster.
    ///
    /// Connects like every client (KUBECONFIG, else the in-cluster service account), runs each
    /// check's probes as Jobs, writes status, events and metrics.
    Run(run::RunArgs),
    /// Run a probe spec and print its results (what probe Jobs execute).
    Probe(probe::ProbeArgs),
}

impl Args {
    /// Parses the command line and runs the chosen subcommand.
    pub fn parse_and_run() -> ExitCode {
        let args = Args::parse();
        args.run()
    }

    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Crds(args) => crds::run_crds(&args),
            Command::Check(args) => check::run_check(args),
            Command::Probe(args) => probe::run_probe(&args),
            Command::Render(args) => render::run_render(&args),
            Command::Run(args) => run::run_operator(args),
        }
    }
}

/// Input size flags shared by the commands that read files.
#[derive(Debug, clap::Args)]
pub struct InputArgs {
    /// Largest input file accepted, in MiB. The default is the API server's request limit,
    /// so what is accepted here can be applied; raise it for large multi-document files.
    #[arg(long, value_name = "MIB", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_file_mib: u16,
}

impl InputArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_file_bytes: usize::from(self.max_file_mib) * 1024 * 1024,
            raised_by: Some("--max-file-mib"),
        }
    }
}

/// Loads the inputs, printing every error and returning exit code 2 on any.
pub fn load_or_exit(files: &[PathBuf], input: &InputArgs) -> Result<Vec<load::Loaded>, ExitCode> {
    load::load_paths_with(files, &input.limits()).map_err(|errors| {
        for error in &errors.0 {
            eprintln!("error: {error}");
        }
        eprintln!("{} problem(s) found; nothing was probed", errors.0.len());
        ExitCode::from(EXIT_INVALID_INPUT)
    })
}

fn invalid(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_INVALID_INPUT)
}
