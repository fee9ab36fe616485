//! `netreach check` and `netreach probe`.
use crate::cli::{CheckArgs, ProbeArgs, load_or_exit};
use std::process::ExitCode;
pub fn run_check(args: CheckArgs) -> ExitCode {
    match load_or_exit(&args.files) {
        Ok(_) => ExitCode::SUCCESS,
        Err(c) => c,
    }
}
pub fn run_probe(_args: &ProbeArgs) -> ExitCode {
    ExitCode::FAILURE
}
