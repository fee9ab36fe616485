//! The podman runtime: a pod's containers as real containers run by rootful podman, from
//! images in the local store, on the host's network, with the pod's securityContext, volumes,
//! environment and termination-message file; `podman run` stays attached so its output is the
//! container's log and its exit status the container's.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};

/// The container engine binary.
const PODMAN: &str = "podman";

/// One container to run: everything the kubelet decided from the pod spec.
pub struct Container {
    /// The podman container name (unique per pod uid and container).
    pub name: String,
    pub image: String,
    /// `command`, replacing the image's entrypoint (and its CMD), when the pod sets one.
    pub entrypoint: Option<Vec<String>>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Host path, path in the container, read-only.
    pub mounts: Vec<(PathBuf, String, bool)>,
    pub user: Option<u32>,
    pub group: Option<u32>,
    pub supplemental_groups: Vec<u64>,
    pub read_only_root: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub no_new_privileges: bool,
    pub privileged: bool,
    /// `unconfined`, or None for the runtime's default profile.
    pub seccomp: Option<String>,
    pub working_dir: Option<String>,
    pub pod_uid: String,
    /// Which kube-sim started it (`io.kube-sim.instance`), so a test finds its own.
    pub instance: String,
}

/// Whether `image` is in the local store, and the user its config names (empty: root).
/// Errors are the (reason, message) a kubelet reports for an image it cannot use.
pub fn image_user(image: &str, pull_policy: &str) -> Result<String, (String, String)> {
    let out = std::process::Command::new(PODMAN)
        .args(["image", "inspect", "--format", "{{.Config.User}}", image])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            (
                "RunContainerError".to_owned(),
                format!("kube-sim runs pods with podman (--runtime podman), which cannot be started: {e}; install it with tests/peers/install.sh"),
            )
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    Err(if pull_policy == "Never" {
        (
            "ErrImageNeverPull".into(),
            format!("Container image \"{image}\" is not present with pull policy of Never"),
        )
    } else {
        (
            "ErrImagePull".into(),
            format!(
                "image \"{image}\" is not in podman's local store and kube-sim pulls no images: build or load it first (bash build/image.sh builds netreach's)"
            ),
        )
    })
}

/// The kubelet's runAsNonRoot check against the user the container will run as: the pod's
/// `runAsUser`, else the image's USER (numeric, `uid[:gid]`).
pub fn verify_non_root(run_as_user: Option<u64>, image_user: &str) -> Result<(), String> {
    if let Some(uid) = run_as_user {
        return if uid == 0 {
            Err("container's runAsUser breaks non-root policy".into())
        } else {
            Ok(())
        };
    }
    let user = image_user.split(':').next().unwrap_or_default();
    match user.parse::<u64>() {
        _ if user.is_empty() => Err("container has runAsNonRoot and image will run as root".into()),
        Ok(0) => Err("container has runAsNonRoot and image will run as root".into()),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root"
        )),
    }
}

/// The capabilities of a securityContext as podman names them (`ALL`, or without `CAP_`).
pub fn capabilities(security: &Value, which: &str) -> Vec<String> {
    security["capabilities"][which]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect()
}

/// The seccomp profile: a kubelet runs containers Unconfined unless the pod asks for
/// RuntimeDefault (the container's setting wins over the pod's).
pub fn seccomp(container: &Value, pod: &Value) -> Result<Option<String>, String> {
    let profile = [
        &container["securityContext"]["seccompProfile"],
        &pod["spec"]["securityContext"]["seccompProfile"],
    ]
    .into_iter()
    .find(|p| p.is_object())
    .cloned()
    .unwrap_or(json!({"type": "Unconfined"}));
    match profile["type"].as_str().unwrap_or_default() {
        "RuntimeDefault" => Ok(None),
        "Unconfined" => Ok(Some("unconfined".into())),
        other => Err(format!(
            "seccompProfile type {other:?}: kube-sim's podman runtime supports RuntimeDefault and Unconfined"
        )),
    }
}

/// `podman run` for one container, attached (its output is the container's log) and removed
/// when it exits.
pub fn command(container: &Container) -> tokio::process::Command {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--name".into(),
        container.name.clone(),
        "--label".into(),
        format!("io.kube-sim.pod-uid={}", container.pod_uid),
        "--label".into(),
        format!("io.kube-sim.instance={}", container.instance),
        "--pull".into(),
        "never".into(),
        // Host networking: probes reach loopback peers (the README says so).
        "--network".into(),
        "host".into(),
        "--log-driver".into(),
        "none".into(),
        "--stop-timeout".into(),
        "30".into(),
    ];
    if let Some(uid) = container.user {
        args.push("--user".into());
        args.push(match container.group {
            Some(gid) => format!("{uid}:{gid}"),
            None => uid.to_string(),
        });
    }
    for gid in &container.supplemental_groups {
        args.push("--group-add".into());
        args.push(gid.to_string());
    }
    if container.read_only_root {
        // A kubelet mounts nothing writable over a read-only root; podman would add tmpfs.
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    for cap in &container.cap_drop {
        args.extend(["--cap-drop".into(), cap.clone()]);
    }
    for cap in &container.cap_add {
        args.extend(["--cap-add".into(), cap.clone()]);
    }
    if container.no_new_privileges {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if container.privileged {
        args.push("--privileged".into());
    }
    if let Some(profile) = &container.seccomp {
        args.extend(["--security-opt".into(), format!("seccomp={profile}")]);
    }
    for (source, target, read_only) in &container.mounts {
        let mode = if *read_only { ":ro" } else { "" };
        args.push("--volume".into());
        args.push(format!("{}:{target}{mode}", source.display()));
    }
    for (name, value) in &container.env {
        args.extend(["--env".into(), format!("{name}={value}")]);
    }
    if let Some(dir) = &container.working_dir {
        args.extend(["--workdir".into(), dir.clone()]);
    }
    if let Some(entrypoint) = &container.entrypoint {
        args.push("--entrypoint".into());
        args.push(serde_json::to_string(entrypoint).expect("strings serialize"));
    }
    args.push(container.image.clone());
    args.extend(container.args.iter().cloned());
    let mut command = tokio::process::Command::new(PODMAN);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    command
}

/// Stops containers: SIGTERM, then SIGKILL after `grace_seconds`, and removes them. Blocks.
pub fn remove(names: &[String], grace_seconds: u64) {
    if names.is_empty() {
        return;
    }
    let _ = std::process::Command::new(PODMAN)
        .args([
            "rm",
            "--force",
            "--ignore",
            "--time",
            &grace_seconds.to_string(),
        ])
        .args(names)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `command` inside a running container (exec probes); true when it exits 0.
pub async fn exec(name: &str, command: &[String], timeout: std::time::Duration) -> bool {
    let run = tokio::process::Command::new(PODMAN)
        .arg("exec")
        .arg(name)
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(tokio::time::timeout(timeout, run).await, Ok(Ok(s)) if s.success())
}

/// The container name podman knows a pod's container by.
pub fn container_name(pod: &Value, container: &str) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    format!(
        "k8s_{container}_{}_{}_{}",
        text(&pod["metadata"]["name"]),
        text(&pod["metadata"]["namespace"]),
        text(&pod["metadata"]["uid"]),
    )
}

/// Whether podman answers at all (for a clear error at start-up).
pub fn available() -> Result<(), String> {
    match std::process::Command::new(PODMAN)
        .args(["version", "--format", "{{.Client.Version}}"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "podman version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "podman cannot be started ({e}); tests/peers/install.sh installs it"
        )),
    }
}

/// A path as podman's `--volume` takes it (no `:` or `,` in it).
pub fn check_mount_path(path: &Path) -> Result<(), String> {
    let text = path.to_string_lossy();
    if text.contains(':') || text.contains(',') {
        return Err(format!(
            "{text}: podman cannot mount a path with ':' or ','"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_non_root_follows_the_kubelet() {
        assert!(verify_non_root(Some(65532), "").is_ok());
        assert!(verify_non_root(Some(0), "65532").is_err());
        assert!(verify_non_root(None, "65532:65532").is_ok());
        assert!(
            verify_non_root(None, "")
                .unwrap_err()
                .contains("will run as root")
        );
        assert!(
            verify_non_root(None, "nonroot")
                .unwrap_err()
                .contains("non-numeric user (nonroot)")
        );
    }

    #[test]
    fn seccomp_defaults_to_unconfined_as_a_kubelet_does() {
        let pod = json!({"spec": {}});
        assert_eq!(
            seccomp(&json!({}), &pod).unwrap().as_deref(),
            Some("unconfined")
        );
        let pod =
            json!({"spec": {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}});
        assert_eq!(seccomp(&json!({}), &pod).unwrap(), None);
        let container = json!({"securityContext": {"seccompProfile": {"type": "Localhost"}}});
        assert!(seccomp(&container, &pod).is_err());
    }
}
