//! NetReach: prove that workloads can reach the outbound endpoints they depend on, explain why
//! when they cannot, and emit the policy that allows exactly those endpoints.

pub mod api;
pub mod cli;
pub mod controller;
pub mod emit;
pub mod error;
pub mod probe;
pub mod telemetry;

/// What `netreach --version` prints: the package version and the git revision it was built
/// from (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("NETREACH_GIT_REVISION"),
    ")"
);
