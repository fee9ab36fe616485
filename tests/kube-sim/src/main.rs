//! `kube-sim`: run the Kubernetes API emulator standalone, for scripts and manual testing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// A Kubernetes API emulator: kubectl and kube-rs talk to it over HTTP; Jobs and Deployments run
/// their pods as local processes or podman containers.
#[derive(Debug, Parser)]
#[command(name = "kube-sim", version)]
struct Args {
    /// Address to serve on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for clients here once serving.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Map a container image to a local executable, IMAGE=PATH; repeatable.
    #[arg(long = "image", value_name = "IMAGE=PATH")]
    images: Vec<String>,
    /// Where pod volumes and logs go (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How pods run: `process` (local processes, images mapped with --image) or `podman`
    /// (real containers from podman's local images, host network, HTTPS for in-cluster
    /// clients).
    #[arg(long, value_enum, default_value_t = RuntimeArg::Process)]
    runtime: RuntimeArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RuntimeArg {
    Process,
    Podman,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut images = HashMap::new();
    for mapping in &args.images {
        let (image, path) = mapping
            .split_once('=')
            .with_context(|| format!("--image {mapping:?}: expected IMAGE=PATH"))?;
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("--image {image}: {path} does not exist"))?;
        images.insert(image.to_owned(), path);
    }
    let sim = kube_sim::KubeSim::start(kube_sim::Options {
        listen: args.listen,
        kubeconfig: Some(args.kubeconfig.clone()),
        images,
        data_dir: args.data_dir,
        runtime: match args.runtime {
            RuntimeArg::Process => kube_sim::Runtime::Process,
            RuntimeArg::Podman => kube_sim::Runtime::Podman,
        },
    })
    .await?;
    eprintln!(
        "kube-sim serving on {} (kubeconfig {})",
        sim.url(),
        args.kubeconfig.display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    sim.stop().await;
    eprintln!("kube-sim stopped");
    Ok(())
}
