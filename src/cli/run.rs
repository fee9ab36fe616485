//! `netreach run`: the operator's flags and start-up (runtime, client, signals).

use std::process::ExitCode;

use super::EXIT_FAILED;
use crate::error::error_chain;

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

pub(super) fn run_operator(args: RunArgs) -> ExitCode {
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
        crate::controller::run(ctx, addresses, async {
            super::shutdown::signal().await;
        })
        .await;
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
