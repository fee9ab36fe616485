//! The `netreach` binary: install the TLS crypto provider, then hand over to the CLI.

use std::process::ExitCode;

fn main() -> ExitCode {
    // Both the probe engine and the Kubernetes client use rustls; pin one provider for both.
    let _ = rustls::crypto::ring::default_provider().install_default();
    netreach::cli::Args::parse_and_run()
}
