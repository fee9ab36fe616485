//! `netreach check`: probe YAML inputs from this machine; flags to a probe context, results to
//! the chosen output, outcome to an exit code.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use super::{EXIT_FAILED, invalid, load_or_exit};
use crate::api::SpecDuration;
use crate::api::result::Reason;
use crate::error::error_chain;
use crate::probe::certs;
use crate::probe::dns::parse_nameserver;
use crate::probe::engine::{ProbeContext, probe_all};
use crate::probe::net::ProxyTarget;
use crate::probe::plan::plan_documents;
use crate::probe::report::{self, GroupResults, Report};
use crate::probe::tls::TrustRoots;
use std::path::PathBuf;

/// Builds the probe context from flags; errors are invalid input.
fn context(args: &CheckArgs) -> Result<ProbeContext, String> {
    let mut extra = Vec::new();
    for path in &args.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
        extra.push((path.display().to_string(), pem));
    }
    let roots = TrustRoots::new(args.system_roots, &extra).map_err(|e| {
        format!(
            "{}; drop --system-roots, or pass --ca-file with the CA to trust",
            error_chain(&e)
        )
    })?;
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
    if args.save_certs.is_some() {
        ctx.chains = Some(Default::default());
    }
    Ok(ctx)
}

pub(super) fn run_check(args: CheckArgs) -> ExitCode {
    let loaded = match load_or_exit(&args.files, &args.input) {
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
    // As PID 1 in a container a signal without a handler is ignored: stop on it, as `probe` does.
    let results = super::shutdown::run_until_signal(probe_all(
        &all_targets,
        ctx.clone(),
        usize::from(args.concurrency),
        progress,
    ));
    let results = match results {
        Ok(results) => results,
        Err((signal, status)) => {
            if interactive {
                eprint!("\r\x1b[K");
            }
            eprintln!(
                "netreach check: stopped by {signal} before every endpoint was probed; no report was written"
            );
            return ExitCode::from(status);
        }
    };
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
    if let Some(dir) = &args.save_certs {
        match certs::save(dir, &ctx.saved_chains()) {
            Ok(written) if written.is_empty() => eprintln!(
                "--save-certs: no endpoint presented a certificate, nothing written to {}",
                dir.display()
            ),
            Ok(written) => {
                eprintln!(
                    "saved {} certificate chains (PEM, leaf first) to {}:",
                    written.len(),
                    dir.display()
                );
                for path in written {
                    eprintln!("  {}", path.display());
                }
            }
            Err(e) => {
                eprintln!(
                    "--save-certs: cannot write to {}: {e}; pass a writable directory",
                    dir.display()
                );
                return ExitCode::from(super::EXIT_INVALID_INPUT);
            }
        }
    }
    let needs_mounts = report.groups.iter().flat_map(|g| &g.results).any(|r| {
        matches!(
            r.reason,
            Reason::CredentialsUnavailable | Reason::CaBundleUnavailable
        )
    });
    if needs_mounts && args.secrets_dir.is_none() {
        eprintln!(
            "hint: rows read Secrets and ConfigMaps as a probe pod mounts them; pass --secrets-dir DIR holding DIR/<name>/<key>"
        );
    }
    if report.required_failed > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// YAML files or directories holding ConnectivityProfiles and EgressChecks.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub input: super::InputArgs,
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
    /// Save the certificate chain each endpoint×port presented as `DIR/<endpoint>-<port>.pem`
    /// (PEM, leaf first), failures included, e.g. to upload a directory's certificate to a
    /// vendor's tenant.
    #[arg(long, value_name = "DIR")]
    pub save_certs: Option<PathBuf>,
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
