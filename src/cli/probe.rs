//! `netreach probe`: what probe pods run; a probe spec in, framed rows on stdout and the
//! result digest in the termination message.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::{EXIT_FAILED, invalid};
use crate::api::{limits, load};
use crate::error::error_chain;
use crate::probe::engine::{ProbeContext, probe_all};
use crate::probe::spec::{self, ProbeSpec};
use crate::probe::tls::TrustRoots;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Probe spec (JSON or YAML); `-` reads standard input.
    #[arg(long, value_name = "FILE", default_value = "-")]
    pub spec: PathBuf,
    /// Also write the result digest here (the pod's terminationMessagePath).
    #[arg(long, value_name = "FILE")]
    pub termination_log: Option<PathBuf>,
}

/// Runs a probe spec and prints the framed results; writes the digest to
/// `--termination-log` (the pod's termination message path).
pub(super) fn run_probe(args: &ProbeArgs) -> ExitCode {
    // The operator writes specs into ConfigMaps, far below the API server's request limit.
    let max = limits::MAX_DOCUMENT_BYTES;
    let text = if args.spec.as_os_str() == "-" {
        let mut text = String::new();
        if let Err(e) = std::io::stdin()
            .take(max as u64 + 1)
            .read_to_string(&mut text)
        {
            return invalid(format!(
                "cannot read the probe spec from standard input: {e}"
            ));
        }
        if text.len() > max {
            return invalid(format!(
                "the probe spec on standard input is larger than {}",
                limits::human_bytes(max)
            ));
        }
        text
    } else {
        match load::read_bounded(&args.spec, &limits::Limits::default()) {
            Ok(text) => text,
            Err(e) => return invalid(format!("probe spec {e}")),
        }
    };
    if let Err(refusal) = limits::scan(&text) {
        return invalid(format!(
            "probe spec {}: {}",
            args.spec.display(),
            refusal.message
        ));
    }
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
    let results = super::shutdown::run_until_signal(probe_all(
        &spec.targets,
        Arc::new(ctx),
        concurrency,
        None,
    ));
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
