//! `netreach check` (probe YAML inputs from this machine) and `netreach probe` (what probe pods
//! run): flags to a probe context, results to the chosen output, outcome to an exit code.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use super::dns::parse_nameserver;
use super::engine::{ProbeContext, probe_all};
use super::net::ProxyTarget;
use super::plan::plan_documents;
use super::report::{self, GroupResults, Report};
use super::spec::{self, ProbeSpec};
use super::tls::TrustRoots;
use crate::api::SpecDuration;
use crate::cli::{
    CheckArgs, EXIT_FAILED, EXIT_INVALID_INPUT, OutputFormat, ProbeArgs, error_chain, load_or_exit,
};

fn invalid(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_INVALID_INPUT)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Builds the probe context from flags; errors are invalid input.
fn context(args: &CheckArgs) -> Result<ProbeContext, String> {
    let mut extra = Vec::new();
    for path in &args.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
        extra.push((path.display().to_string(), pem));
    }
    let roots = TrustRoots::new(args.system_roots, &extra).map_err(|e| error_chain(&e))?;
    for server in &args.nameserver {
        parse_nameserver(server).map_err(|e| format!("--nameserver: {e}"))?;
    }
    let proxy = match &args.proxy {
        Some(url) => Some(ProxyTarget::parse(url).map_err(|e| format!("--proxy: {e}"))?),
        None => None,
    };
    let mut ctx = ProbeContext::new(roots);
    ctx.nameservers = args.nameserver.clone();
    ctx.proxy = proxy;
    ctx.first_address_only = args.first_address_only;
    ctx.secrets_dir = args.secrets_dir.clone();
    Ok(ctx)
}

pub fn run_check(args: CheckArgs) -> ExitCode {
    let loaded = match load_or_exit(&args.files) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let mut groups = match plan_documents(&loaded) {
        Ok(groups) => groups,
        Err(e) => return invalid(e),
    };
    if let Some(timeout) = &args.timeout {
        let timeout: SpecDuration = match timeout.parse() {
            Ok(t) => t,
            Err(e) => return invalid(format!("--timeout: {e}")),
        };
        for target in groups.iter_mut().flat_map(|g| g.targets.iter_mut()) {
            target.timeout_ms = timeout.as_duration().as_millis() as u64;
        }
    }
    if !args.only.is_empty() {
        let known: Vec<&str> = groups
            .iter()
            .flat_map(|g| g.targets.iter().map(|t| t.endpoint.as_str()))
            .collect();
        if let Some(unknown) = args
            .only
            .iter()
            .find(|name| !known.contains(&name.as_str()))
        {
            return invalid(format!(
                "--only {unknown}: no endpoint of that name in the input"
            ));
        }
        for group in &mut groups {
            group.targets.retain(|t| args.only.contains(&t.endpoint));
        }
        groups.retain(|g| !g.targets.is_empty());
    }
    let ctx = match context(&args) {
        Ok(ctx) => Arc::new(ctx),
        Err(message) => return invalid(message),
    };
    let interactive = std::io::stderr().is_terminal();
    let total: usize = groups.iter().map(|g| g.targets.len()).sum();
    let all_targets: Vec<_> = groups
        .iter()
        .flat_map(|g| g.targets.iter().cloned())
        .collect();
    let progress = |done: usize, total: usize| {
        eprint!("\rprobing {done}/{total} endpoint×port rows…");
        if done == total {
            eprint!("\r\x1b[K");
        }
        let _ = std::io::stderr().flush();
    };
    let progress: Option<&(dyn Fn(usize, usize) + Sync)> = if interactive && total > 0 {
        Some(&progress)
    } else {
        None
    };
    let results = runtime().block_on(probe_all(
        &all_targets,
        ctx,
        usize::from(args.concurrency),
        progress,
    ));
    let mut rows = results.into_iter();
    let groups: Vec<GroupResults> = groups
        .into_iter()
        .map(|g| GroupResults {
            source: g.source,
            results: rows.by_ref().take(g.targets.len()).collect(),
        })
        .collect();
    let report = Report::new(groups);
    let text = match args.output {
        OutputFormat::Table => report::table(&report, std::io::stdout().is_terminal()),
        OutputFormat::Json => {
            serde_json::to_string_pretty(&report).expect("report serializes") + "\n"
        }
        OutputFormat::Junit => report::junit(&report),
    };
    print!("{text}");
    if report.required_failed > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs a probe spec and prints the framed results; writes the digest to
/// `--termination-log` (the pod's termination message path).
pub fn run_probe(args: &ProbeArgs) -> ExitCode {
    let text = if args.spec.as_os_str() == "-" {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            return invalid(format!(
                "cannot read the probe spec from standard input: {e}"
            ));
        }
        text
    } else {
        match std::fs::read_to_string(&args.spec) {
            Ok(text) => text,
            Err(e) => {
                return invalid(format!(
                    "cannot read probe spec {}: {e}",
                    args.spec.display()
                ));
            }
        }
    };
    let spec: ProbeSpec = match serde_norway::from_str(&text) {
        Ok(spec) => spec,
        Err(e) => return invalid(format!("probe spec {}: {e}", args.spec.display())),
    };
    let roots = match TrustRoots::new(false, &[]) {
        Ok(roots) => roots,
        Err(e) => return invalid(error_chain(&e)),
    };
    let mut ctx = ProbeContext::new(roots);
    ctx.first_address_only = spec.first_address_only;
    ctx.secrets_dir = Some(
        spec.secrets_dir
            .clone()
            .unwrap_or_else(|| spec::DEFAULT_SECRETS_DIR.into()),
    );
    let concurrency = spec.concurrency.unwrap_or(64);
    // Stopped before the end (the pod deleted, its deadline passed): no partial results.
    let results = runtime().block_on(async {
        tokio::select! {
            results = probe_all(&spec.targets, Arc::new(ctx), concurrency, None) => Ok(results),
            stopped = crate::shutdown::signal() => Err(stopped),
        }
    });
    let results = match results {
        Ok(results) => results,
        Err((signal, status)) => {
            eprintln!(
                "netreach probe: stopped by {signal} before every endpoint was probed; no results were written"
            );
            return ExitCode::from(status);
        }
    };
    let (log, digest) = spec::encode(&results);
    print!("{log}");
    let _ = std::io::stdout().flush();
    if let Some(path) = &args.termination_log
        && let Err(e) = std::fs::write(path, &digest)
    {
        eprintln!(
            "error: cannot write the termination message to {}: {e}",
            path.display()
        );
        return ExitCode::from(EXIT_FAILED);
    }
    ExitCode::SUCCESS
}
