//! The standalone `kube-sim` binary as scripts use it: it writes the kubeconfig once it
//! serves, runs a Job's pod from `--image IMAGE=EXECUTABLE`, and on SIGTERM exits and leaves
//! no pod process behind.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

/// Whether a process is gone: no /proc entry, or a zombie nobody reaped yet (it runs nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) state ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Kills the emulator if the test fails before it sends SIGTERM.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn the_binary_runs_a_job_pod_and_kills_it_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let pid_file = dir.path().join("pod.pid");
    // The "image": a script that records its pid, then becomes a long sleep (same pid).
    let script = dir.path().join("sleeper.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho $$ > \"$PID_FILE\"\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut sim = Running(
        Command::new(env!("CARGO_BIN_EXE_kube-sim"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--image")
            .arg(format!("example.com/sleeper:1={}", script.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the kubeconfig", Duration::from_secs(30), || {
        kubeconfig.exists()
    });

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = json!({
        "metadata": {"name": "sleeper"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "sleeper",
                "image": "example.com/sleeper:1",
                "env": [{"name": "PID_FILE", "value": pid_file.display().to_string()}],
            }],
        }}},
    });
    jobs.create(
        &PostParams::default(),
        &serde_json::from_value(job).unwrap(),
    )
    .await
    .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = pods
            .list(&ListParams::default().labels("job-name=sleeper"))
            .await
            .unwrap();
        let phase = listed
            .items
            .first()
            .and_then(|p| p.status.as_ref()?.phase.clone());
        if phase.as_deref() == Some("Running") && pid_file.exists() {
            break;
        }
        assert!(Instant::now() < deadline, "the pod did not run: {phase:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!gone(pid), "the pod process {pid} runs while kube-sim does");

    // SAFETY: signalling the child we started.
    unsafe {
        libc::kill(sim.0.id() as i32, libc::SIGTERM);
    }
    let mut status = None;
    wait_for("kube-sim to exit", Duration::from_secs(20), || {
        status = sim.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "kube-sim exited with {status:?}");
    wait_for("the pod process to be gone", Duration::from_secs(5), || {
        gone(pid)
    });
}
