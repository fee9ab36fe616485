//! The pod runner: each container of a pod becomes a local process (its image mapped to an
//! executable) in its own mount namespace, or with `Runtime::Podman` a real container from a
//! local image; configMap/secret/emptyDir volumes (laid out and owned as a kubelet does) and
//! the termination-message file are mounted where the pod spec puts them, its securityContext
//! honoured, stdout/stderr kept as `pods/log`, readiness probes run, `activeDeadlineSeconds`
//! enforced, and its exit turned into container state.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::api::{Api, now};
use crate::store::EventType;

/// How much of a termination message the kubelet keeps.
const MAX_TERMINATION_MESSAGE: usize = 4096;
/// What FallbackToLogsOnError takes from the log.
const FALLBACK_LOG_LINES: usize = 80;
const FALLBACK_LOG_BYTES: usize = 2048;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How pods run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// Each container a local process, its image mapped to an executable (fast; the default).
    #[default]
    Process,
    /// Each container a real container run by rootful podman from a local image.
    Podman,
}

/// How pods reach the API server as in a cluster: the service-account volume and the
/// `KUBERNETES_SERVICE_*` variables point at kube-sim's HTTPS address.
#[derive(Clone, Debug)]
pub struct InCluster {
    pub host: String,
    pub port: u16,
    pub ca_pem: String,
}

/// Where the service-account token, CA and namespace are mounted.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The longest a deleted pod's containers get to stop before they are killed.
const MAX_GRACE_SECONDS: u64 = 30;

pub struct Kubelet {
    api: Arc<Api>,
    images: HashMap<String, PathBuf>,
    data_dir: PathBuf,
    runtime: Runtime,
    cluster: Option<InCluster>,
    /// Labels the podman containers of this emulator (`io.kube-sim.instance`).
    instance: String,
    /// Pod uid → its running containers.
    running: Mutex<HashMap<String, Vec<Handle>>>,
    started: Mutex<HashSet<String>>,
    /// Pods waiting on something (an image, a ConfigMap): (namespace, name), tried again
    /// every two seconds as a kubelet's sync loop does.
    waiting: Mutex<HashSet<(String, String)>>,
}

/// A running container, as the runtime knows it.
#[derive(Clone, Debug)]
enum Handle {
    /// The process group of a local process.
    Group(i32),
    /// A podman container's name.
    Container(String),
}

/// One container ready to start.
struct Plan {
    container: Value,
    command: tokio::process::Command,
    /// The podman container name (podman runtime).
    podman_name: Option<String>,
}

/// A bind mount to set up inside the container's mount namespace.
struct Mount {
    source: CString,
    target: CString,
    read_only: bool,
}

impl Kubelet {
    pub fn new(
        api: Arc<Api>,
        images: HashMap<String, PathBuf>,
        data_dir: PathBuf,
        runtime: Runtime,
        cluster: Option<InCluster>,
        instance: String,
    ) -> Self {
        Self {
            api,
            images,
            data_dir,
            runtime,
            cluster,
            instance,
            running: Mutex::default(),
            started: Mutex::default(),
            waiting: Mutex::default(),
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("pods").join(uid)
    }

    /// The log of a container that has started.
    pub fn log(&self, uid: &str, container: &str) -> Option<String> {
        let path = self.pod_dir(uid).join(format!("{container}.log"));
        std::fs::read(path)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Kills every container at once (for `Drop`): process groups without waiting, podman
    /// containers removed before it returns.
    pub fn kill_all(&self) -> Vec<i32> {
        let (groups, containers) = self.take_all();
        for pgid in &groups {
            // SAFETY: signalling a process group we started.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        crate::podman::remove(&containers, 0);
        groups
    }

    fn take_all(&self) -> (Vec<i32>, Vec<String>) {
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        split_handles(running.into_values().flatten())
    }

    /// Kills every container and waits up to two seconds until each process group is gone
    /// (their pod tasks reap them), so a stopped emulator leaves no process behind; podman
    /// containers get SIGTERM and two seconds before SIGKILL, and are removed.
    pub async fn stop_all(&self) {
        let (groups, containers) = self.take_all();
        for pgid in &groups {
            // SAFETY: signalling a process group we started.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = tokio::task::spawn_blocking(move || crate::podman::remove(&containers, 2)).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        // SAFETY: signal 0 only asks whether the group still has a process.
        while groups
            .iter()
            .any(|pgid| unsafe { libc::kill(-pgid, 0) } == 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops a pod's containers: processes at once, podman containers with SIGTERM and up to
    /// `grace` seconds before SIGKILL (in the background).
    fn kill_pod(&self, uid: &str, grace: u64) {
        let Some(handles) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid)
        else {
            return;
        };
        let (groups, containers) = split_handles(handles);
        for pgid in groups {
            // SAFETY: signalling a process group we started.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        if !containers.is_empty() {
            tokio::task::spawn_blocking(move || crate::podman::remove(&containers, grace));
        }
    }

    /// Watches pods: starts new ones, kills deleted ones. Runs until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.api.lock().store.subscribe();
        // Pods that exist already (a restart that kept its store) are picked up first.
        let existing: Vec<Arc<Value>> = self.api.lock().store.list("pods", None);
        for pod in existing {
            self.consider(&pod);
        }
        let mut retry = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = retry.tick() => {
                    let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
                    for (namespace, name) in waiting {
                        let pod = self.api.lock().store.get("pods", &namespace, &name);
                        if let Some(pod) = pod {
                            self.consider(&pod);
                        }
                    }
                    continue;
                }
            };
            match event {
                Ok(event) if event.key == "pods" => match event.kind {
                    EventType::Deleted => {
                        if let Some(uid) = event.object["metadata"]["uid"].as_str() {
                            self.kill_pod(uid, grace_seconds(&event.object));
                        }
                    }
                    _ => {
                        if event.object["metadata"]["deletionTimestamp"].is_string() {
                            if let Some(uid) = event.object["metadata"]["uid"].as_str() {
                                self.kill_pod(uid, grace_seconds(&event.object));
                            }
                        } else {
                            self.consider(&event.object);
                        }
                    }
                },
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let pods: Vec<Arc<Value>> = self.api.lock().store.list("pods", None);
                    for pod in pods {
                        self.consider(&pod);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn consider(self: &Arc<Self>, pod: &Value) {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if pod["status"]["phase"] != json!("Pending") || uid.is_empty() {
            return;
        }
        if !self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.clone())
        {
            return;
        }
        let kubelet = self.clone();
        let pod = pod.clone();
        tokio::spawn(async move { kubelet.run_pod(pod).await });
    }

    async fn run_pod(self: Arc<Self>, pod: Value) {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let pod_dir = self.pod_dir(&uid);
        let list = |key: &str| pod["spec"][key].as_array().cloned().unwrap_or_default();
        let (init, containers) = (list("initContainers"), list("containers"));
        // Sidecars (init containers that keep running) would need restarts, which kube-sim
        // does not do: refuse them visibly rather than run them as plain init containers.
        if let Some(sidecar) = init.iter().find(|c| c["restartPolicy"] == json!("Always")) {
            self.set_waiting(
                &pod,
                "CreateContainerConfigError",
                &format!(
                    "init container {} has restartPolicy Always (a sidecar), which kube-sim does not run",
                    sidecar["name"]
                ),
            );
            return;
        }
        let all: Vec<Value> = init.iter().chain(&containers).cloned().collect();
        let mut plans = match self.prepare(&pod, &pod_dir, &all) {
            Ok(plans) => plans,
            Err((reason, message)) => {
                self.set_waiting(&pod, &reason, &message);
                return;
            }
        };
        let main = plans.split_off(init.len());
        // activeDeadlineSeconds counts from the pod's start, init containers included.
        let deadline = pod["spec"]["activeDeadlineSeconds"]
            .as_u64()
            .map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs(s));
        // Init containers run one after another, each to completion, before any container.
        let mut init_statuses: Vec<Value> = Vec::new();
        for plan in plans {
            let started_at = now();
            let Some((container, child, id)) = self.spawn(&pod, &uid, &pod_dir, plan) else {
                return;
            };
            self.update_status(&pod, |status| {
                status["startTime"] = json!(started_at);
                let mut statuses = init_statuses.clone();
                statuses.push(json!({
                    "name": container["name"], "image": container["image"], "imageID": container["image"], "containerID": id,
                    "ready": false, "started": true, "restartCount": 0, "state": {"running": {"startedAt": started_at}},
                }));
                status["initContainerStatuses"] = json!(statuses);
            });
            let (codes, expired) = self.wait_all(&uid, &pod, vec![child], deadline).await;
            let code = codes[0];
            init_statuses.push(self.terminated(&pod_dir, &container, &id, code, &started_at));
            if expired {
                self.deadline_exceeded(&uid, &pod, Some(&init_statuses), Vec::new());
                return;
            }
            if code != 0 {
                self.finish(&uid, &pod, "Failed", Some(&init_statuses), Vec::new());
                return;
            }
            if !self.still_running(&uid) {
                return;
            }
        }
        let started_at = now();
        let mut children = Vec::new();
        for plan in main {
            let podman_name = plan.podman_name.clone();
            let Some((container, child, id)) = self.spawn(&pod, &uid, &pod_dir, plan) else {
                return;
            };
            children.push((container, child, id, podman_name));
        }
        // Without a readiness probe a started container is ready; with one, once it passes.
        let ready: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(
            children
                .iter()
                .map(|(c, ..)| !c["readinessProbe"].is_object())
                .collect(),
        ));
        let running: Vec<Value> = children
            .iter()
            .zip(ready.lock().unwrap_or_else(|p| p.into_inner()).iter())
            .map(|((c, _, id, _), ready)| {
                json!({
                    "name": c["name"], "image": c["image"], "imageID": c["image"], "containerID": id,
                    "ready": ready, "started": true, "restartCount": 0, "state": {"running": {"startedAt": started_at}},
                })
            })
            .collect();
        let all_ready = ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .all(|r| *r);
        self.update_status(&pod, |status| {
            status["phase"] = json!("Running");
            if status["startTime"].is_null() {
                status["startTime"] = json!(started_at);
            }
            status["hostIP"] = json!("127.0.0.1");
            status["podIP"] = json!("127.0.0.1");
            status["podIPs"] = json!([{"ip": "127.0.0.1"}]);
            status["containerStatuses"] = json!(running);
            if !init_statuses.is_empty() {
                status["initContainerStatuses"] = json!(init_statuses);
            }
            status["conditions"] = conditions(all_ready);
        });
        let mut probes = tokio::task::JoinSet::new();
        for (index, (container, _, _, podman_name)) in children.iter().enumerate() {
            if container["readinessProbe"].is_object() {
                probes.spawn(self.clone().readiness(
                    pod.clone(),
                    index,
                    container.clone(),
                    podman_name.clone(),
                    ready.clone(),
                ));
            }
        }
        let (specs, rest): (Vec<(Value, String)>, Vec<tokio::process::Child>) = children
            .into_iter()
            .map(|(c, child, id, _)| ((c, id), child))
            .unzip();
        let (codes, expired) = self.wait_all(&uid, &pod, rest, deadline).await;
        probes.shutdown().await;
        let mut terminated = Vec::new();
        let mut all_succeeded = true;
        for ((container, id), code) in specs.iter().zip(codes) {
            all_succeeded &= code == 0;
            terminated.push(self.terminated(&pod_dir, container, id, code, &started_at));
        }
        let init = (!init_statuses.is_empty()).then_some(&init_statuses);
        if expired {
            self.deadline_exceeded(&uid, &pod, init, terminated);
            return;
        }
        let phase = if all_succeeded { "Succeeded" } else { "Failed" };
        self.finish(&uid, &pod, phase, init, terminated);
    }

    /// Waits until every container exited; once the pod's deadline passes, stops them first
    /// (as a kubelet does). Returns their exit codes in order and whether the deadline passed.
    async fn wait_all(
        &self,
        uid: &str,
        pod: &Value,
        children: Vec<tokio::process::Child>,
        deadline: Option<tokio::time::Instant>,
    ) -> (Vec<i32>, bool) {
        let waits = futures::future::join_all(children.into_iter().map(exit_code));
        tokio::pin!(waits);
        let Some(deadline) = deadline else {
            return (waits.await, false);
        };
        tokio::select! {
            codes = &mut waits => (codes, false),
            _ = tokio::time::sleep_until(deadline) => {
                self.kill_pod(uid, grace_seconds(pod));
                (waits.await, true)
            }
        }
    }

    /// A pod stopped at its `activeDeadlineSeconds`: Failed with the kubelet's reason.
    fn deadline_exceeded(
        &self,
        uid: &str,
        pod: &Value,
        init: Option<&Vec<Value>>,
        containers: Vec<Value>,
    ) {
        self.finish(uid, pod, "Failed", init, containers);
        self.update_status(pod, |status| {
            status["reason"] = json!("DeadlineExceeded");
            status["message"] =
                json!("Pod was active on the node longer than the specified deadline");
        });
    }

    /// Runs a container's readiness probe until the pod ends, recording each transition in
    /// the container's `ready` and the pod's Ready condition.
    async fn readiness(
        self: Arc<Self>,
        pod: Value,
        index: usize,
        container: Value,
        podman_name: Option<String>,
        ready: Arc<Mutex<Vec<bool>>>,
    ) {
        let probe = &container["readinessProbe"];
        let seconds = |key: &str, default: u64| probe[key].as_u64().unwrap_or(default);
        let period = std::time::Duration::from_secs(seconds("periodSeconds", 10).max(1));
        let (successes_needed, failures_needed) = (
            seconds("successThreshold", 1).max(1),
            seconds("failureThreshold", 3).max(1),
        );
        // A kubelet notices a started container about a second later (its pod lifecycle
        // relist) and probes from then on.
        let delay = std::time::Duration::from_secs(seconds("initialDelaySeconds", 0))
            .max(std::time::Duration::from_secs(1));
        tokio::time::sleep(delay).await;
        let (mut successes, mut failures) = (0, 0);
        loop {
            let passed = crate::probes::run(probe, &container, podman_name.as_deref()).await;
            if passed {
                (successes, failures) = (successes + 1, 0);
            } else {
                (successes, failures) = (0, failures + 1);
            }
            let was = ready.lock().unwrap_or_else(|p| p.into_inner())[index];
            let now_ready = if passed && successes >= successes_needed {
                true
            } else if !passed && failures >= failures_needed {
                false
            } else {
                was
            };
            if now_ready != was {
                let flags = {
                    let mut flags = ready.lock().unwrap_or_else(|p| p.into_inner());
                    flags[index] = now_ready;
                    flags.clone()
                };
                self.update_status(&pod, |status| {
                    for (i, flag) in flags.iter().enumerate() {
                        if status["containerStatuses"][i].is_object() {
                            status["containerStatuses"][i]["ready"] = json!(flag);
                        }
                    }
                    status["conditions"] = conditions(flags.iter().all(|r| *r));
                });
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Starts one container and registers it to be stopped with its pod; on failure the
    /// pod's containers wait with RunContainerError. Returns its container ID.
    fn spawn(
        &self,
        pod: &Value,
        uid: &str,
        pod_dir: &Path,
        plan: Plan,
    ) -> Option<(Value, tokio::process::Child, String)> {
        let Plan {
            container,
            mut command,
            podman_name,
        } = plan;
        match command.spawn() {
            Ok(child) => {
                let name = container["name"].as_str().unwrap_or_default();
                let _ = std::fs::rename(
                    pod_dir.join(format!("{name}.log.pending")),
                    pod_dir.join(format!("{name}.log")),
                );
                let pid = child.id().map(|p| p as i32).unwrap_or_default();
                let (handle, id) = match podman_name {
                    Some(name) => (Handle::Container(name.clone()), format!("podman://{name}")),
                    None => (Handle::Group(pid), format!("kube-sim://{pid}")),
                };
                self.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(uid.to_owned())
                    .or_default()
                    .push(handle);
                Some((container, child, id))
            }
            Err(e) => {
                self.set_waiting(
                    pod,
                    "RunContainerError",
                    &format!("starting the container process failed: {e}"),
                );
                None
            }
        }
    }

    /// Whether the pod's processes are still wanted (it was not deleted or stopped).
    fn still_running(&self, uid: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(uid)
    }

    /// A container's terminated status.
    fn terminated(
        &self,
        pod_dir: &Path,
        container: &Value,
        id: &str,
        code: i32,
        started_at: &str,
    ) -> Value {
        let name = container["name"].as_str().unwrap_or_default();
        let message = self.termination_message(pod_dir, name, container, code);
        // 125 is podman's own failure (the container did not start): the runtime's StartError
        // with what podman said, as a kubelet reports a container the runtime could not start.
        let start_error = self.runtime == Runtime::Podman && code == 125;
        let message = if start_error {
            let log = self.log(pod_dir_uid(pod_dir), name).unwrap_or_default();
            log.lines()
                .rfind(|l| l.starts_with("Error"))
                .unwrap_or("podman could not start the container")
                .to_owned()
        } else {
            message
        };
        let mut state = json!({
            "exitCode": if start_error { 128 } else { code },
            "reason": if code == 0 { "Completed" } else if start_error { "StartError" } else { "Error" },
            "startedAt": started_at,
            "finishedAt": now(),
            "containerID": id,
        });
        if !message.is_empty() {
            state["message"] = json!(message);
        }
        json!({
            "name": name, "image": container["image"], "imageID": container["image"], "containerID": id,
            "ready": false, "started": false, "restartCount": 0, "state": {"terminated": state},
        })
    }

    /// Records the pod's end: its phase and final container statuses.
    fn finish(
        &self,
        uid: &str,
        pod: &Value,
        phase: &str,
        init: Option<&Vec<Value>>,
        containers: Vec<Value>,
    ) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        self.update_status(pod, |status| {
            status["phase"] = json!(phase);
            if let Some(init) = init {
                status["initContainerStatuses"] = json!(init);
            }
            if !containers.is_empty() {
                status["containerStatuses"] = json!(containers);
            }
            status["conditions"] = conditions(false);
        });
    }

    fn termination_message(
        &self,
        pod_dir: &Path,
        name: &str,
        container: &Value,
        code: i32,
    ) -> String {
        let file = pod_dir.join(format!("{name}.termination"));
        let mut message = std::fs::read(&file).unwrap_or_default();
        message.truncate(MAX_TERMINATION_MESSAGE);
        let mut text = String::from_utf8_lossy(&message).into_owned();
        if text.is_empty()
            && code != 0
            && container["terminationMessagePolicy"] == json!("FallbackToLogsOnError")
        {
            let log =
                std::fs::read_to_string(pod_dir.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(FALLBACK_LOG_LINES)..].join("\n");
            let start = tail.len().saturating_sub(FALLBACK_LOG_BYTES);
            text = tail[tail.ceil_char_boundary(start)..].to_owned();
        }
        text
    }

    /// Writes volumes and builds each container's command; errors are (reason, message) for
    /// the container's waiting state.
    fn prepare(
        &self,
        pod: &Value,
        pod_dir: &Path,
        containers: &[Value],
    ) -> Result<Vec<Plan>, (String, String)> {
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let config_error = |m: String| ("CreateContainerConfigError".to_owned(), m);
        std::fs::create_dir_all(pod_dir)
            .map_err(|e| config_error(format!("cannot create the pod directory: {e}")))?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let pod_security = &pod["spec"]["securityContext"];
        let fs_group = pod_security["fsGroup"].as_u64();
        let mut volume_dirs: HashMap<String, PathBuf> = HashMap::new();
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or_default();
            let dir = pod_dir.join("volumes").join(name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| config_error(format!("cannot create volume {name}: {e}")))?;
            let (source_key, object_name, optional) = if volume["secret"].is_object() {
                (
                    "secrets",
                    volume["secret"]["secretName"].as_str(),
                    volume["secret"]["optional"] == json!(true),
                )
            } else if volume["configMap"].is_object() {
                (
                    "configmaps",
                    volume["configMap"]["name"].as_str(),
                    volume["configMap"]["optional"] == json!(true),
                )
            } else if volume["emptyDir"].is_object() {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).ok();
                volume_dirs.insert(name.to_owned(), dir);
                continue;
            } else {
                return Err(config_error(format!(
                    "volume {name}: only secret, configMap and emptyDir volumes are supported"
                )));
            };
            let spec = if source_key == "secrets" {
                &volume["secret"]
            } else {
                &volume["configMap"]
            };
            let object =
                self.api
                    .lock()
                    .store
                    .get(source_key, namespace, object_name.unwrap_or_default());
            match object {
                Some(object) => {
                    // Modes in the API are decimal numbers of the octal bits (420 is 0644).
                    let default_mode = spec["defaultMode"].as_u64().unwrap_or(0o644) as u32;
                    let items = spec["items"].as_array();
                    let mut files = Vec::new();
                    for (key, content) in object_files(&object, source_key == "secrets") {
                        let (path, mode) = match items {
                            Some(items) => match items.iter().find(|i| i["key"] == json!(key)) {
                                Some(item) => (
                                    item["path"].as_str().unwrap_or(&key).to_owned(),
                                    item["mode"].as_u64().map_or(default_mode, |m| m as u32),
                                ),
                                None => continue,
                            },
                            None => (key.clone(), default_mode),
                        };
                        files.push((path, content, mode));
                    }
                    write_volume(&dir, &files, fs_group).map_err(config_error)?;
                }
                None if optional => {}
                None => {
                    return Err(config_error(format!(
                        "{} \"{}\" not found",
                        if source_key == "secrets" {
                            "secret"
                        } else {
                            "configmap"
                        },
                        object_name.unwrap_or_default()
                    )));
                }
            }
            volume_dirs.insert(name.to_owned(), dir);
        }
        let podman = self.runtime == Runtime::Podman;
        // The service account's token, the cluster CA and the namespace, as the projected
        // kube-api-access volume a kubelet mounts into every container that did not opt out.
        let service_account = match &self.cluster {
            Some(cluster) if podman && self.automount_token(pod) => {
                let dir = pod_dir.join("volumes").join("kube-api-access");
                let account = pod["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default");
                let files = vec![
                    (
                        "token".to_owned(),
                        format!("kube-sim-token.{namespace}.{account}").into_bytes(),
                        0o644,
                    ),
                    (
                        "ca.crt".to_owned(),
                        cluster.ca_pem.clone().into_bytes(),
                        0o644,
                    ),
                    ("namespace".to_owned(), namespace.as_bytes().to_vec(), 0o644),
                ];
                std::fs::create_dir_all(&dir)
                    .map_err(|e| config_error(format!("cannot create kube-api-access: {e}")))?;
                write_volume(&dir, &files, fs_group).map_err(config_error)?;
                Some(dir)
            }
            _ => None,
        };
        let mut plans = Vec::new();
        for container in containers {
            let name = container["name"].as_str().unwrap_or_default();
            let image = container["image"].as_str().unwrap_or_default();
            let security = &container["securityContext"];
            let uid = security["runAsUser"]
                .as_u64()
                .or_else(|| pod_security["runAsUser"].as_u64());
            let run_as_non_root = security["runAsNonRoot"] == json!(true)
                || pod_security["runAsNonRoot"] == json!(true);
            let executable = if podman {
                // Pull policy Always cannot pull here: the local image is what runs.
                let policy = container["imagePullPolicy"]
                    .as_str()
                    .unwrap_or("IfNotPresent");
                let image_user = crate::podman::image_user(image, policy)?;
                if run_as_non_root {
                    crate::podman::verify_non_root(uid, &image_user).map_err(|m| {
                        config_error(format!(
                            "{m} (pod: \"{}_{namespace}({})\", container: {name})",
                            pod["metadata"]["name"].as_str().unwrap_or_default(),
                            pod["metadata"]["uid"].as_str().unwrap_or_default(),
                        ))
                    })?;
                }
                None
            } else {
                let Some(executable) = self
                    .images
                    .get(image)
                    .or_else(|| self.images.get(image.split('@').next().unwrap_or(image)))
                else {
                    return Err((
                        "ErrImagePull".into(),
                        format!(
                            "image {image:?} is not mapped to a local executable (start kube-sim with --image {image}=PATH)"
                        ),
                    ));
                };
                if !root {
                    return Err((
                        "RunContainerError".into(),
                        "kube-sim runs containers in their own mount namespace, which needs root"
                            .into(),
                    ));
                }
                Some(executable)
            };
            let mut env = self.environment(pod, container).map_err(config_error)?;
            // The log is opened now and named `{name}.log` once the process starts: `pods/log`
            // of a container that never started says so instead of showing an empty log.
            let log_path = pod_dir.join(format!("{name}.log.pending"));
            let log = std::fs::File::create(&log_path)
                .map_err(|e| config_error(format!("cannot create the log: {e}")))?;
            let log_err = log.try_clone().map_err(|e| config_error(e.to_string()))?;
            let termination = pod_dir.join(format!("{name}.termination"));
            std::fs::write(&termination, b"").map_err(|e| config_error(e.to_string()))?;
            std::fs::set_permissions(&termination, std::fs::Permissions::from_mode(0o666)).ok();
            let mut mounts = Vec::new();
            let termination_path = container["terminationMessagePath"]
                .as_str()
                .unwrap_or("/dev/termination-log");
            if !podman {
                ensure_file(Path::new(termination_path)).map_err(config_error)?;
            }
            mounts.push((termination.clone(), termination_path.to_owned(), false));
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let volume = mount["name"].as_str().unwrap_or_default();
                let Some(source) = volume_dirs.get(volume) else {
                    return Err(config_error(format!(
                        "volumeMount {volume} refers to no volume of the pod"
                    )));
                };
                let source = match mount["subPath"].as_str().filter(|s| !s.is_empty()) {
                    Some(sub) if sub.split('/').any(|c| c == "..") => {
                        return Err(config_error(format!(
                            "volumeMount {volume}: subPath {sub:?} must not contain '..'"
                        )));
                    }
                    Some(sub) => source.join(sub),
                    None => source.clone(),
                };
                let target = mount["mountPath"].as_str().unwrap_or_default();
                if !podman {
                    std::fs::create_dir_all(target).map_err(|e| {
                        config_error(format!("cannot create mount point {target}: {e}"))
                    })?;
                }
                // Secret and configMap volumes are always mounted read-only.
                let read_only = mount["readOnly"] == json!(true)
                    || pod["spec"]["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| {
                            v["name"] == json!(volume)
                                && (v["secret"].is_object() || v["configMap"].is_object())
                        });
                mounts.push((source, target.to_owned(), read_only));
            }
            let gid = security["runAsGroup"]
                .as_u64()
                .or_else(|| pod_security["runAsGroup"].as_u64());
            let read_only_root = security["readOnlyRootFilesystem"] == json!(true);
            let Some(executable) = executable else {
                if let Some(dir) = &service_account
                    && !mounts
                        .iter()
                        .any(|(_, target, _)| target == SERVICE_ACCOUNT_DIR)
                {
                    mounts.push((dir.clone(), SERVICE_ACCOUNT_DIR.to_owned(), true));
                }
                for (source, _, _) in &mounts {
                    crate::podman::check_mount_path(source).map_err(config_error)?;
                }
                // The image's PATH applies; the pod's hostname is the node's (host network).
                env.retain(|(n, _)| n != "PATH" && n != "HOSTNAME");
                if let Some(cluster) = &self.cluster {
                    let service = [
                        ("KUBERNETES_SERVICE_HOST", cluster.host.clone()),
                        ("KUBERNETES_SERVICE_PORT", cluster.port.to_string()),
                        ("KUBERNETES_SERVICE_PORT_HTTPS", cluster.port.to_string()),
                        (
                            "KUBERNETES_PORT",
                            format!("tcp://{}:{}", cluster.host, cluster.port),
                        ),
                    ];
                    for (key, value) in service.into_iter().rev() {
                        if !env.iter().any(|(n, _)| n == key) {
                            env.insert(0, (key.to_owned(), value));
                        }
                    }
                }
                let lookup = |n: &str| {
                    env.iter()
                        .rev()
                        .find(|(d, _)| d == n)
                        .map(|(_, v)| v.clone())
                };
                let strings = |v: &Value| -> Vec<String> {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str().map(|s| expand(s, &lookup)))
                        .collect()
                };
                let entrypoint = container["command"]
                    .is_array()
                    .then(|| strings(&container["command"]));
                let args = strings(&container["args"]);
                let seccomp = crate::podman::seccomp(container, pod).map_err(config_error)?;
                let podman_name = crate::podman::container_name(pod, name);
                let run = crate::podman::Container {
                    name: podman_name.clone(),
                    image: image.to_owned(),
                    entrypoint,
                    args,
                    env,
                    mounts,
                    user: uid.map(|u| u as u32),
                    group: gid.map(|g| g as u32),
                    supplemental_groups: fs_group
                        .into_iter()
                        .chain(
                            pod_security["supplementalGroups"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(Value::as_u64),
                        )
                        .collect(),
                    read_only_root,
                    cap_add: crate::podman::capabilities(security, "add"),
                    cap_drop: crate::podman::capabilities(security, "drop"),
                    no_new_privileges: security["allowPrivilegeEscalation"] == json!(false),
                    privileged: security["privileged"] == json!(true),
                    seccomp,
                    working_dir: container["workingDir"].as_str().map(str::to_owned),
                    pod_uid: pod["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    instance: self.instance.clone(),
                };
                let mut command = crate::podman::command(&run);
                command
                    .stdout(Stdio::from(log))
                    .stderr(Stdio::from(log_err));
                plans.push(Plan {
                    container: container.clone(),
                    command,
                    podman_name: Some(podman_name),
                });
                continue;
            };
            let gid = gid.or(uid);
            if run_as_non_root && uid.is_none_or(|u| u == 0) {
                return Err(config_error(
                    "container has runAsNonRoot and image will run as root (set runAsUser to a non-zero uid)".into(),
                ));
            }
            let (program, args) = command_line(container, executable, &env);
            let mut command = tokio::process::Command::new(&program);
            command
                .args(&args)
                .env_clear()
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                .kill_on_drop(true);
            if let Some(dir) = container["workingDir"].as_str() {
                command.current_dir(dir);
            }
            let hardening = Hardening {
                mounts: mounts
                    .iter()
                    .map(|(source, target, read_only)| Mount {
                        source: c_path(source),
                        target: c_path(Path::new(target)),
                        read_only: *read_only,
                    })
                    .collect(),
                read_only_root,
                uid: uid.map(|u| u as libc::uid_t),
                gid: gid.map(|g| g as libc::gid_t),
            };
            // SAFETY: the closure only makes async-signal-safe system calls on data prepared
            // before fork.
            unsafe {
                command.as_std_mut().pre_exec(move || hardening.enter());
            }
            plans.push(Plan {
                container: container.clone(),
                command,
                podman_name: None,
            });
        }
        Ok(plans)
    }

    /// Whether the pod gets a service-account token: its own setting, else its service
    /// account's, else yes.
    fn automount_token(&self, pod: &Value) -> bool {
        if let Some(own) = pod["spec"]["automountServiceAccountToken"].as_bool() {
            return own;
        }
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let account = pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        self.api
            .lock()
            .store
            .get("serviceaccounts", namespace, account)
            .and_then(|sa| sa["automountServiceAccountToken"].as_bool())
            .unwrap_or(true)
    }

    /// The container's environment: `envFrom` sources first, then `env` (which wins), each
    /// `env` value with `$(VAR)` expanded from what is defined before it.
    fn environment(&self, pod: &Value, container: &Value) -> Result<Vec<(String, String)>, String> {
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let mut env = vec![
            ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
            (
                "HOSTNAME".to_owned(),
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
        ];
        let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        };
        for source in container["envFrom"].as_array().into_iter().flatten() {
            let prefix = source["prefix"].as_str().unwrap_or_default();
            let (reference, secret) = if source["secretRef"].is_object() {
                (&source["secretRef"], true)
            } else {
                (&source["configMapRef"], false)
            };
            let object_name = reference["name"].as_str().unwrap_or_default();
            let key = if secret { "secrets" } else { "configmaps" };
            let object = self.api.lock().store.get(key, namespace, object_name);
            match object {
                Some(object) => {
                    for (name, bytes) in object_files(&object, secret) {
                        let name = format!("{prefix}{name}");
                        // The kubelet skips keys that are no valid variable names.
                        if valid_env_name(&name) {
                            set(&mut env, name, String::from_utf8_lossy(&bytes).into_owned());
                        }
                    }
                }
                None if reference["optional"] == json!(true) => {}
                None => {
                    return Err(format!(
                        "{} \"{object_name}\" not found",
                        if secret { "secret" } else { "configmap" }
                    ));
                }
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap_or_default().to_owned();
            let value = if let Some(value) = var["value"].as_str() {
                let defined = env.clone();
                expand(value, &|n: &str| {
                    defined
                        .iter()
                        .rev()
                        .find(|(d, _)| d == n)
                        .map(|(_, v)| v.clone())
                })
            } else if let Some(from) = var["valueFrom"].as_object() {
                if let Some(field) = from.get("fieldRef") {
                    field_value(pod, field["fieldPath"].as_str().unwrap_or_default())
                } else if let Some(key_ref) = from
                    .get("secretKeyRef")
                    .or_else(|| from.get("configMapKeyRef"))
                {
                    let secret = from.contains_key("secretKeyRef");
                    let key = if secret { "secrets" } else { "configmaps" };
                    let object_name = key_ref["name"].as_str().unwrap_or_default();
                    let wanted = key_ref["key"].as_str().unwrap_or_default();
                    let object = self.api.lock().store.get(key, namespace, object_name);
                    let found = object.and_then(|o| {
                        object_files(&o, secret)
                            .into_iter()
                            .find(|(k, _)| k == wanted)
                    });
                    match found {
                        Some((_, bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                        None if key_ref["optional"] == json!(true) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {wanted} in {} {namespace}/{object_name}",
                                if secret { "Secret" } else { "ConfigMap" }
                            ));
                        }
                    }
                } else {
                    return Err(format!(
                        "env {name}: only fieldRef, secretKeyRef and configMapKeyRef are supported by kube-sim"
                    ));
                }
            } else {
                String::new()
            };
            set(&mut env, name, value);
        }
        Ok(env)
    }

    fn set_waiting(&self, pod: &Value, reason: &str, message: &str) {
        let statuses: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "restartCount": 0, "started": false, "state": {"waiting": {"reason": reason, "message": message}}}))
            .collect();
        // A missing image or config can be fixed by creating it; run the pod again then.
        if let Some(uid) = pod["metadata"]["uid"].as_str() {
            self.started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
        }
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((
                text(&pod["metadata"]["namespace"]),
                text(&pod["metadata"]["name"]),
            ));
        self.update_status(pod, |status| {
            status["containerStatuses"] = json!(statuses);
        });
    }

    /// Applies `change` to the pod's current status (retrying on concurrent writes).
    fn update_status(&self, pod: &Value, change: impl Fn(&mut Value)) {
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        for _ in 0..10 {
            let Some(current) = self.api.lock().store.get("pods", namespace, name) else {
                return;
            };
            if current["metadata"]["uid"] != pod["metadata"]["uid"] {
                return;
            }
            let mut updated = (*current).clone();
            change(&mut updated["status"]);
            // A write that changes nothing would wake the pod's watchers (this kubelet too: a
            // waiting pod is tried again on its next change) for nothing, again and again.
            if updated["status"] == current["status"] {
                return;
            }
            if self.api.internal_put("pods", updated).is_some() {
                return;
            }
        }
    }
}

/// Process groups and podman container names among `handles`.
fn split_handles(handles: impl IntoIterator<Item = Handle>) -> (Vec<i32>, Vec<String>) {
    let (mut groups, mut containers) = (Vec::new(), Vec::new());
    for handle in handles {
        match handle {
            Handle::Group(pgid) => groups.push(pgid),
            Handle::Container(name) => containers.push(name),
        }
    }
    (groups, containers)
}

/// How long a stopping pod's containers get between SIGTERM and SIGKILL.
fn grace_seconds(pod: &Value) -> u64 {
    pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30)
        .min(MAX_GRACE_SECONDS)
}

/// Writes a secret or configMap volume as a kubelet's atomic writer does: the files in a
/// timestamped directory, `..data` linking to it and one link per top-level name into
/// `..data`, so readers see an update all at once. With an `fsGroup` every file and directory
/// gets that group and group read (directories also search and setgid), as the kubelet's
/// volume ownership does for read-only volumes; the owner stays root.
fn write_volume(
    dir: &Path,
    files: &[(String, Vec<u8>, u32)],
    fs_group: Option<u64>,
) -> Result<(), String> {
    let stamp = format!(
        "..{}",
        k8s_openapi::jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let data = dir.join(&stamp);
    let fail = |path: &Path, e: std::io::Error| format!("cannot write {}: {e}", path.display());
    std::fs::create_dir_all(&data).map_err(|e| fail(&data, e))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail(&data, e))?;
    let mut top_level = std::collections::BTreeSet::new();
    for (path, content, mode) in files {
        let relative = Path::new(path);
        if relative.is_absolute() || relative.components().any(|c| c.as_os_str() == "..") {
            return Err(format!(
                "item path {path:?} must be relative and must not contain '..'"
            ));
        }
        let file = data.join(relative);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(parent, e))?;
        }
        std::fs::write(&file, content).map_err(|e| fail(&file, e))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode & 0o7777))
            .map_err(|e| fail(&file, e))?;
        if let Some(first) = relative.components().next() {
            top_level.insert(first.as_os_str().to_owned());
        }
    }
    // Swap `..data` to the new directory in one rename (a pod started again rewrites its
    // volumes), then drop the previous directory and links to keys that are gone.
    let link = dir.join("..data");
    let previous = std::fs::read_link(&link).ok();
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(&stamp, &staged).map_err(|e| fail(&staged, e))?;
    std::fs::rename(&staged, &link).map_err(|e| fail(&link, e))?;
    if let Some(previous) = previous.filter(|p| *p != Path::new(&stamp)) {
        let _ = std::fs::remove_dir_all(dir.join(previous));
    }
    for entry in std::fs::read_dir(dir).map_err(|e| fail(dir, e))?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("..") && !top_level.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for name in top_level {
        let link = dir.join(&name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(&name), &link)
                .map_err(|e| fail(&link, e))?;
        }
    }
    if let Some(gid) = fs_group {
        own_by_group(dir, gid as u32).map_err(|e| fail(dir, e))?;
    }
    Ok(())
}

/// The kubelet's SetVolumeOwnership for a read-only volume: group `gid`, g+r, and on
/// directories g+x and setgid; symlinks get the group only.
fn own_by_group(path: &Path, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mut mode = meta.permissions().mode() & 0o7777 | 0o440;
    if meta.is_dir() {
        mode |= 0o110 | 0o2000;
        for entry in std::fs::read_dir(path)? {
            own_by_group(&entry?.path(), gid)?;
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Waits for a container process; a signal death reads as 128 + the signal, as in a runtime.
async fn exit_code(mut child: tokio::process::Child) -> i32 {
    match child.wait().await {
        Ok(status) => status.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(9)
        }),
        Err(_) => 128,
    }
}

fn conditions(ready: bool) -> Value {
    let time = now();
    let ready = if ready { "True" } else { "False" };
    json!([
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": time},
        {"type": "Initialized", "status": "True", "lastTransitionTime": time},
        {"type": "ContainersReady", "status": ready, "lastTransitionTime": time},
        {"type": "Ready", "status": ready, "lastTransitionTime": time},
    ])
}

/// The files a secret or configmap volume holds: key → bytes.
fn object_files(object: &Value, secret: bool) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (key, value) in object["data"].as_object().into_iter().flatten() {
        let text = value.as_str().unwrap_or_default();
        let bytes = if secret {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap_or_default()
        } else {
            text.as_bytes().to_vec()
        };
        files.push((key.clone(), bytes));
    }
    for (key, value) in object["binaryData"].as_object().into_iter().flatten() {
        files.push((
            key.clone(),
            base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap_or_default())
                .unwrap_or_default(),
        ));
    }
    files
}

/// A C identifier-like name, as environment variable names from `envFrom` must be.
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn field_value(pod: &Value, path: &str) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    if let Some(label) = path
        .strip_prefix("metadata.labels['")
        .and_then(|p| p.strip_suffix("']"))
    {
        return text(&pod["metadata"]["labels"][label]);
    }
    if let Some(annotation) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|p| p.strip_suffix("']"))
    {
        return text(&pod["metadata"]["annotations"][annotation]);
    }
    match path {
        "metadata.name" | "metadata.namespace" | "metadata.uid" => {
            text(&pod["metadata"][path.trim_start_matches("metadata.")])
        }
        "spec.nodeName" => "kube-sim".into(),
        "spec.serviceAccountName" => text(&pod["spec"]["serviceAccountName"]),
        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
        "status.podIPs" | "status.hostIPs" => "127.0.0.1".into(),
        _ => String::new(),
    }
}

/// The program and arguments: the image's executable is the entrypoint; `command` replaces it
/// (its first word naming the image's executable maps to it), `args` follow. `$(VAR)` in
/// either is expanded from the container's environment, as the kubelet does.
fn command_line(
    container: &Value,
    executable: &Path,
    env: &[(String, String)],
) -> (PathBuf, Vec<String>) {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(|s| expand(s, &lookup)))
            .collect()
    };
    let command = strings(&container["command"]);
    let args = strings(&container["args"]);
    match command.split_first() {
        Some((first, rest)) => {
            let same = Path::new(first).file_name() == executable.file_name();
            let program = if same {
                executable.to_owned()
            } else {
                PathBuf::from(first)
            };
            (program, rest.iter().cloned().chain(args).collect())
        }
        None => (executable.to_owned(), args),
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an undefined reference is
/// kept as written, `$$` is a literal `$`, any other `$` stays.
fn expand(input: &str, lookup: &impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
        } else if let Some(reference) = after.strip_prefix('(')
            && let Some(end) = reference.find(')')
        {
            let name = &reference[..end];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The pod uid a pod directory is named after.
fn pod_dir_uid(pod_dir: &Path) -> &str {
    pod_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

fn ensure_file(path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(path, b"").map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// What runs between fork and exec: a private mount namespace with the pod's mounts, a
/// read-only root when asked, then the pod's user.
struct Hardening {
    mounts: Vec<Mount>,
    read_only_root: bool,
    uid: Option<libc::uid_t>,
    gid: Option<libc::gid_t>,
}

impl Hardening {
    fn enter(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        let root = c"/";
        // SAFETY: plain system calls on NUL-terminated strings prepared before fork.
        unsafe {
            // Its own process group, so the whole container can be killed at once.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for mount in &self.mounts {
                check(libc::mount(
                    mount.source.as_ptr(),
                    mount.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if mount.read_only {
                    check(libc::mount(
                        std::ptr::null(),
                        mount.target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            if self.read_only_root {
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
            if let Some(gid) = self.gid {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
            }
            if let Some(uid) = self.uid {
                check(libc::setuid(uid))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_maps_the_image_entrypoint() {
        let exe = Path::new("/build/netreach");
        let (program, args) = command_line(&json!({"args": ["probe", "--spec", "/x"]}), exe, &[]);
        assert_eq!(
            (program, args),
            (
                exe.to_owned(),
                vec!["probe".to_owned(), "--spec".into(), "/x".into()]
            )
        );
        let (program, args) = command_line(
            &json!({"command": ["netreach", "probe"], "args": ["-v"]}),
            exe,
            &[],
        );
        assert_eq!(
            (program, args),
            (exe.to_owned(), vec!["probe".to_owned(), "-v".into()])
        );
        let (program, _) = command_line(&json!({"command": ["/bin/sh", "-c", "true"]}), exe, &[]);
        assert_eq!(program, PathBuf::from("/bin/sh"));
    }

    #[test]
    fn variables_expand_like_the_kubelet_does() {
        let env = [
            ("A".to_owned(), "x".to_owned()),
            ("B".to_owned(), "y".to_owned()),
        ];
        let (_, args) = command_line(
            &json!({"args": ["$(A)-$(B)", "$$(A)", "$(MISSING)", "$(A", "cost: $5"]}),
            Path::new("/bin/true"),
            &env,
        );
        assert_eq!(args, ["x-y", "$(A)", "$(MISSING)", "$(A", "cost: $5"]);
    }

    #[test]
    fn volumes_are_written_and_rewritten_as_the_atomic_writer_does() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            ("a".to_owned(), b"1".to_vec(), 0o400),
            ("sub/b".to_owned(), b"2".to_vec(), 0o644),
        ];
        write_volume(dir.path(), &files, Some(4242)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir.path().join("a")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o440);
        assert_eq!(meta.gid(), 4242);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/b")).unwrap(),
            "2"
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("sub")).unwrap(),
            PathBuf::from("..data/sub")
        );
        // Written again (a pod retried): the new content replaces the old, gone keys go.
        write_volume(dir.path(), &[("a".to_owned(), b"3".to_vec(), 0o644)], None).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("a")).unwrap(), "3");
        assert!(std::fs::symlink_metadata(dir.path().join("sub")).is_err());
        let stamped: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .collect();
        assert_eq!(stamped.len(), 1, "the previous directory is removed");
    }

    #[test]
    fn field_refs_resolve() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n", "labels": {"app": "x"}}, "spec": {}});
        assert_eq!(field_value(&pod, "metadata.name"), "p");
        assert_eq!(field_value(&pod, "metadata.labels['app']"), "x");
        assert_eq!(field_value(&pod, "status.podIP"), "127.0.0.1");
    }
}
