//! Termination signals: SIGTERM (what a kubelet or `podman stop` sends) and SIGINT. As PID 1 in
//! a container the kernel ignores a signal that has no handler, so every long-running command
//! waits for these itself.

/// Runs `work` to the end on a new runtime, or until SIGTERM or SIGINT: then the signal's name
/// and exit status. Either way it does not wait for blocking lookups (the system resolver)
/// still running.
pub fn run_until_signal<F: std::future::Future>(work: F) -> Result<F::Output, (&'static str, u8)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let outcome = runtime.block_on(async {
        tokio::select! {
            done = work => Ok(done),
            stopped = signal() => Err(stopped),
        }
    });
    runtime.shutdown_background();
    outcome
}

/// Resolves at the first SIGTERM or SIGINT with the signal's name and the exit status a
/// process killed by it reports (128 + its number).
pub async fn signal() -> (&'static str, u8) {
    use tokio::signal::unix::{SignalKind, signal};
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            // No handler could be installed: never resolve rather than stop at once.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = wait(SignalKind::terminate()) => ("SIGTERM", 128 + 15),
        _ = wait(SignalKind::interrupt()) => ("SIGINT", 128 + 2),
    }
}
