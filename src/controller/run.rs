//! Probe runs of an EgressCheck, without a client: when a run is due, and the ConfigMap and
//! Job that carry one out.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;

use crate::api::EgressCheck;
use crate::api::check::{RUN_NOW_ANNOTATION, RunTrigger};
use crate::probe::plan::Target;
use crate::probe::spec::{DEFAULT_SECRETS_DIR, ProbeSpec};

pub const CHECK_LABEL: &str = "netreach.dev/check";
pub const RUN_LABEL: &str = "netreach.dev/run";
pub const RUN_KEY_ANNOTATION: &str = "netreach.dev/run-key";
pub const TRIGGER_ANNOTATION: &str = "netreach.dev/trigger";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "netreach");
/// The non-root user probe pods run as.
pub const PROBE_UID: i64 = 65532;
const SPEC_DIR: &str = "/etc/netreach";
const SPEC_FILE: &str = "probe-spec.json";
/// Probes running at once inside one probe pod.
pub const PROBE_CONCURRENCY: usize = 64;

/// What a run checks: `generation/profileGeneration/runNow`. A different key means a new run.
pub fn run_key(check: &EgressCheck, profile_generation: Option<i64>) -> String {
    let generation = check.metadata.generation.unwrap_or(0);
    let profile = profile_generation
        .map(|g| g.to_string())
        .unwrap_or_else(|| "-".into());
    let run_now = check
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RUN_NOW_ANNOTATION))
        .map(String::as_str)
        .unwrap_or("");
    format!("{generation}/{profile}/{run_now}")
}

fn key_parts(key: &str) -> (&str, &str, &str) {
    let mut parts = key.splitn(3, '/');
    (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    )
}

/// The latest run that finished (a completed Job, or a failure recorded in status).
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedRun {
    pub key: String,
    pub completed: Time,
}

/// Why a run is due now, if one is.
pub fn due_run(
    current_key: &str,
    latest: Option<&FinishedRun>,
    interval: Option<Duration>,
    now: &Time,
) -> Option<RunTrigger> {
    let Some(latest) = latest else {
        return Some(RunTrigger::Created);
    };
    let (generation, profile, run_now) = key_parts(current_key);
    let (last_generation, last_profile, last_run_now) = key_parts(&latest.key);
    if generation != last_generation {
        return Some(RunTrigger::SpecChanged);
    }
    if profile != last_profile {
        return Some(RunTrigger::ProfileChanged);
    }
    if run_now != last_run_now {
        return Some(RunTrigger::RunNow);
    }
    let interval = interval?;
    let next = next_run(&latest.completed, interval);
    (next.0 <= now.0).then_some(RunTrigger::Interval)
}

pub fn next_run(completed: &Time, interval: Duration) -> Time {
    let span = k8s_openapi::jiff::SignedDuration::try_from(interval)
        .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
    Time(completed.0.checked_add(span).unwrap_or(completed.0))
}

/// `<check>-<run>`, kept within the 63 characters a label value (job-name) allows.
pub fn job_name(check: &str, run: i64) -> String {
    let suffix = format!("-{run}");
    let keep = 63 - suffix.len();
    let base: String = check.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end_matches(['-', '.']))
}

/// The deadline a run gets: enough for every batch of probes to time out, plus slack.
pub fn run_deadline(targets: &[Target]) -> i64 {
    let slowest = targets.iter().map(|t| t.timeout_ms).max().unwrap_or(5_000);
    let batches = targets.len().div_ceil(PROBE_CONCURRENCY).max(1) as u64;
    let seconds = (slowest * batches).div_ceil(1000) + 60;
    seconds.min(3600) as i64
}

/// Secrets the targets need mounted.
pub fn referenced_secrets(targets: &[Target]) -> Vec<String> {
    let mut names: Vec<String> = targets
        .iter()
        .flat_map(|t| {
            let ldap = t
                .ldap
                .as_ref()
                .and_then(|l| l.bind_secret_ref.as_ref())
                .map(|s| s.name.clone());
            let proxy = t
                .proxy
                .as_ref()
                .and_then(|p| p.credentials_secret_ref.as_ref())
                .map(|s| s.name.clone());
            let smtp = t
                .smtp
                .as_ref()
                .and_then(|s| s.auth.as_ref())
                .map(|a| a.credentials_secret_ref.name.clone());
            let mail = t
                .mail
                .as_ref()
                .and_then(|m| m.auth.as_ref())
                .map(|a| a.credentials_secret_ref.name.clone());

            let ftp = t
                .ftp
                .as_ref()
                .and_then(|f| f.credentials_secret_ref.as_ref())
                .map(|s| s.name.clone());
            ldap.into_iter()
                .chain(proxy)
                .chain(smtp)
                .chain(mail)
                .chain(ftp)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Everything a probe run is made of.
pub struct RunObjects {
    pub config_map: ConfigMap,
    pub job: Job,
}

/// Builds the ConfigMap holding the probe spec and the Job that runs it, owned by the check.
pub fn build_run(
    check: &EgressCheck,
    targets: &[Target],
    run: i64,
    key: &str,
    trigger: RunTrigger,
    probe_image: &str,
) -> RunObjects {
    let name = check.metadata.name.clone().unwrap_or_default();
    let namespace = check.metadata.namespace.clone();
    let job_name = job_name(&name, run);
    let owner = OwnerReference {
        api_version: EgressCheck::api_version(&()).into_owned(),
        kind: EgressCheck::kind(&()).into_owned(),
        name: name.clone(),
        uid: check.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (CHECK_LABEL.to_owned(), name.clone()),
        (RUN_LABEL.to_owned(), run.to_string()),
    ]);
    let annotations = BTreeMap::from([
        (RUN_KEY_ANNOTATION.to_owned(), key.to_owned()),
        (TRIGGER_ANNOTATION.to_owned(), trigger.as_str().to_owned()),
    ]);
    let spec = ProbeSpec {
        targets: targets.to_vec(),
        concurrency: Some(PROBE_CONCURRENCY),
        first_address_only: false,
        secrets_dir: Some(DEFAULT_SECRETS_DIR.into()),
    };
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(job_name.clone()),
            namespace: namespace.clone(),
            labels: Some(labels.clone()),
            // So a run whose Job was deleted can still be reported as the run it was.
            annotations: Some(annotations.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            SPEC_FILE.to_owned(),
            serde_json::to_string(&spec).expect("probe specs serialize"),
        )])),
        ..ConfigMap::default()
    };
    let runner = check.spec.runner.clone().unwrap_or_default();
    let mut pod_labels = runner.pod_labels.clone();
    pod_labels.insert(CHECK_LABEL.to_owned(), name.clone());
    pod_labels.insert(RUN_LABEL.to_owned(), run.to_string());
    let (volumes, mounts) = probe_volumes(&job_name, targets);
    let image = runner
        .image
        .clone()
        .unwrap_or_else(|| probe_image.to_owned());
    let pod = PodSpec {
        containers: vec![probe_container(image, runner.resources.clone(), mounts)],
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        service_account_name: runner.service_account_name.clone(),
        node_selector: (!runner.node_selector.is_empty()).then(|| runner.node_selector.clone()),
        tolerations: (!runner.tolerations.is_empty()).then(|| runner.tolerations.clone()),
        volumes: Some(volumes),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(PROBE_UID),
            run_as_group: Some(PROBE_UID),
            fs_group: Some(PROBE_UID),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };
    let job = Job {
        metadata: ObjectMeta {
            name: Some(job_name),
            namespace,
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // A retry would probe twice and double-count; a failed run is reported instead.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(run_deadline(targets)),
            // A day of slack: the operator prunes by historyLimit long before.
            ttl_seconds_after_finished: Some(86_400),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    };
    RunObjects { config_map, job }
}

/// The probe pod's volumes and the container's mounts: the probe spec's ConfigMap, and each
/// Secret the targets reference under the secrets directory.
fn probe_volumes(job_name: &str, targets: &[Target]) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "probe-spec".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: job_name.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "probe-spec".into(),
        mount_path: SPEC_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    for (i, secret) in referenced_secrets(targets).into_iter().enumerate() {
        let volume = format!("secret-{i}");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{DEFAULT_SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// The probe container: `netreach probe` on the mounted spec, restricted as the Pod Security
/// Standards' `restricted` profile asks.
fn probe_container(
    image: String,
    resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: "probe".into(),
        image: Some(image),
        args: Some(vec![
            "probe".into(),
            "--spec".into(),
            format!("{SPEC_DIR}/{SPEC_FILE}"),
            "--termination-log".into(),
            "/dev/termination-log".into(),
        ]),
        resources,
        volume_mounts: Some(mounts),
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(PROBE_UID),
            run_as_group: Some(PROBE_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn every_credentials_secret_the_targets_name_is_mounted_once() {
        let yaml = "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {name: p}\nspec:\n  proxy: {url: http://proxy.corp:3128, credentialsSecretRef: {name: proxy-auth}}\n  endpoints:\n    - {name: ad, host: ad.example.com, ports: [{port: 389, protocol: LDAP, ldap: {bindSecretRef: {name: ldap-reader}}}]}\n    - {name: bulk, host: ftp.example.com, ports: [{port: 990, protocol: FTPS, ftp: {credentialsSecretRef: {name: ftp-account}}}, {port: 21, protocol: FTP, ftp: {credentialsSecretRef: {name: ftp-account}}}]}\n";
        let loaded = crate::api::load::load_str(std::path::Path::new("p.yaml"), yaml).unwrap();
        let targets = crate::probe::plan::plan_documents(&loaded)
            .unwrap()
            .remove(0)
            .targets;
        assert_eq!(
            referenced_secrets(&targets),
            ["ftp-account", "ldap-reader", "proxy-auth"]
        );
    }

    #[test]
    fn a_run_is_due_on_creation_changes_run_now_and_interval() {
        let done = FinishedRun {
            key: "2/5/".into(),
            completed: at(1000),
        };
        let interval = Some(Duration::from_secs(600));
        assert_eq!(
            due_run("2/5/", None, interval, &at(1000)),
            Some(RunTrigger::Created)
        );
        assert_eq!(
            due_run("3/5/", Some(&done), interval, &at(1001)),
            Some(RunTrigger::SpecChanged)
        );
        assert_eq!(
            due_run("2/6/", Some(&done), interval, &at(1001)),
            Some(RunTrigger::ProfileChanged)
        );
        assert_eq!(
            due_run("2/5/x", Some(&done), interval, &at(1001)),
            Some(RunTrigger::RunNow)
        );
        assert_eq!(due_run("2/5/", Some(&done), interval, &at(1599)), None);
        assert_eq!(
            due_run("2/5/", Some(&done), interval, &at(1600)),
            Some(RunTrigger::Interval)
        );
        assert_eq!(
            due_run("2/5/", Some(&done), None, &at(99_999)),
            None,
            "no interval: once per change"
        );
    }

    #[test]
    fn job_names_fit_a_label_value() {
        assert_eq!(job_name("cloud-extender", 12), "cloud-extender-12");
        let long = "a".repeat(80);
        let name = job_name(&long, 123_456);
        assert!(name.len() <= 63 && name.ends_with("-123456"));
    }
}
