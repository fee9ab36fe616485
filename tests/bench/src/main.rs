//! `netreach-bench`: NetReach's benchmarks, each printing a table and writing a JSON summary
//! under target/bench/. Build the release binaries first:
//!   cargo build --release --bins --workspace
//!   target/release/netreach-bench probes | operator | steady | detection | all

mod operator;
mod probes;
mod util;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netreach-bench",
    about = "NetReach benchmarks, measured side by side with their peers"
)]
struct Args {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// netreach check vs the blackbox exporter vs a bare rustls client, on loopback nginx.
    Probes {
        #[arg(long, default_value_t = 200)]
        https: usize,
        #[arg(long, default_value_t = 200)]
        tls: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The operator with 100, 1,000 and 5,000 EgressChecks on kube-sim.
    Operator {
        #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 5000])]
        sizes: Vec<usize>,
        /// Check interval, seconds.
        #[arg(long, default_value_t = 30)]
        interval: u64,
    },
    /// CPU per run at the same runs per second with 100, 1,000 and 5,000 EgressChecks.
    Steady {
        #[arg(long, value_delimiter = ',', default_values_t = [100, 1000, 5000])]
        sizes: Vec<usize>,
        /// Runs per second at every size (kube-sim starts about 14 probe pods a second here).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// How long a failing endpoint takes to show as Ready=False.
    Detection {
        #[arg(long, default_value_t = 10)]
        interval: u64,
        #[arg(long, default_value_t = 2)]
        timeout: u64,
        #[arg(long, default_value_t = 5)]
        samples: usize,
    },
    /// Every benchmark with its defaults.
    All,
    /// (internal) the rustls floor, run as a child so its CPU is measured alone.
    #[command(hide = true)]
    Floor {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        https: usize,
        #[arg(long)]
        tls: usize,
        #[arg(long)]
        concurrency: usize,
    },
}

fn probes_default() -> probes::Settings {
    probes::Settings {
        https: 200,
        tls: 200,
        concurrency: 32,
        rounds: 3,
    }
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Args::parse().command {
        Bench::Probes {
            https,
            tls,
            concurrency,
            rounds,
        } => probes::run(probes::Settings {
            https,
            tls,
            concurrency,
            rounds,
        }),
        Bench::Operator { sizes, interval } => operator::run_scale(&sizes, interval),
        Bench::Steady { sizes, rate } => operator::run_steady(&sizes, rate),
        Bench::Detection {
            interval,
            timeout,
            samples,
        } => operator::run_detection(interval, timeout, samples),
        Bench::All => {
            probes::run(probes_default())?;
            println!();
            operator::run_scale(&[100, 1000, 5000], 30)?;
            println!();
            operator::run_steady(&[100, 1000, 5000], 10.0)?;
            println!();
            operator::run_detection(10, 2, 5)
        }
        Bench::Floor {
            ca,
            https,
            tls,
            concurrency,
        } => probes::floor(&ca, https, tls, concurrency),
    }
}
