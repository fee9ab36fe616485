//! `netreach render`: policy objects or allowlists for profiles, as deterministic output.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;

use super::{EXIT_FAILED, EXIT_INVALID_INPUT, load_or_exit};
use crate::api::ConnectivityProfile;
use crate::api::load::Document;
use crate::emit::{Input, RenderFormat, allowlist, emit, to_yaml};
use crate::probe::dns::{Resolvers, parse_nameserver};

/// Addresses known for a profile: its status (from `kubectl get -o yaml`), then a fresh
/// resolution when asked for.
fn addresses(
    profile: &ConnectivityProfile,
    resolve: bool,
    nameservers: &[String],
    runtime: &tokio::runtime::Runtime,
    resolvers: &Resolvers,
) -> (BTreeMap<String, Vec<IpAddr>>, Vec<String>) {
    let mut known: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for endpoint in profile.status.iter().flat_map(|s| s.endpoints.iter()) {
        let ips = endpoint
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        known.insert(endpoint.name.clone(), ips);
    }
    let mut problems = Vec::new();
    if !resolve {
        return (known, problems);
    }
    let servers = if nameservers.is_empty() {
        profile
            .spec
            .dns
            .as_ref()
            .map(|d| d.nameservers.clone())
            .unwrap_or_default()
    } else {
        nameservers.to_vec()
    };
    for endpoint in &profile.spec.endpoints {
        let Some(host) = endpoint.host.as_deref().filter(|h| !h.starts_with("*.")) else {
            continue;
        };
        match runtime.block_on(resolvers.resolve(host, &servers, Duration::from_secs(5))) {
            Ok(ips) => {
                known.insert(endpoint.name.clone(), ips);
            }
            Err(failure) => {
                problems.push(format!("endpoint {}: {}", endpoint.name, failure.message))
            }
        }
    }
    (known, problems)
}

pub(super) fn run_render(args: &RenderArgs) -> ExitCode {
    let loaded = match load_or_exit(&args.files, &args.input) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    for server in &args.nameserver {
        if let Err(e) = parse_nameserver(server) {
            eprintln!("error: --nameserver: {e}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    }
    let profiles: Vec<&ConnectivityProfile> = loaded
        .iter()
        .filter_map(|l| match &l.document {
            Document::Profile(p) => Some(&**p),
            Document::Check(_) => None,
        })
        .collect();
    if profiles.is_empty() {
        eprintln!("error: no ConnectivityProfile in the input; render works on profiles");
        return ExitCode::from(EXIT_INVALID_INPUT);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let resolvers = Resolvers::default();
    let mut resolved = Vec::new();
    let mut warnings = Vec::new();
    for profile in &profiles {
        let (known, problems) = addresses(
            profile,
            args.resolve,
            &args.nameserver,
            &runtime,
            &resolvers,
        );
        let name = format!(
            "{}/{}",
            profile.metadata.namespace.as_deref().unwrap_or("default"),
            profile.metadata.name.as_deref().unwrap_or_default()
        );
        warnings.extend(problems.into_iter().map(|p| format!("{name}: {p}")));
        resolved.push(known);
    }
    let inputs: Vec<Input<'_>> = profiles
        .iter()
        .zip(&resolved)
        .map(|(profile, addresses)| Input {
            name: profile.metadata.name.as_deref().unwrap_or_default(),
            namespace: profile.metadata.namespace.as_deref().unwrap_or("default"),
            spec: &profile.spec,
            addresses,
        })
        .collect();
    let mut text = String::new();
    let mut objects = Vec::new();
    for format in &args.flavor {
        match format {
            RenderFormat::AllowlistCsv => text.push_str(&allowlist::csv(&inputs)),
            RenderFormat::AllowlistMarkdown => text.push_str(&allowlist::markdown(&inputs)),
            RenderFormat::Policy(flavor) => {
                for input in &inputs {
                    let output = emit(*flavor, input);
                    objects.extend(output.objects);
                    warnings.extend(
                        output
                            .notes
                            .iter()
                            .map(|n| format!("{}/{}: {n}", input.namespace, input.name)),
                    );
                }
            }
        }
    }
    text.push_str(&to_yaml(&objects));
    let _ = std::io::stdout().write_all(text.as_bytes());
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if args.strict && !warnings.is_empty() {
        eprintln!(
            "error: {} endpoint(s) could not be expressed exactly (--strict)",
            warnings.len()
        );
        return ExitCode::from(EXIT_FAILED);
    }
    ExitCode::SUCCESS
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// YAML files or directories holding ConnectivityProfiles.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub input: super::InputArgs,
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
