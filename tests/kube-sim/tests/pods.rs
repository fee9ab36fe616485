//! Pods as local processes: the environment a container gets (secretKeyRef, configMapKeyRef,
//! fieldRef, envFrom, `$(VAR)` expansion), its exit code and termination message in the
//! container state, init containers running to completion first, and a pod waiting for its
//! ConfigMap starting once it exists.

mod common;

use std::time::{Duration, Instant};

use common::start;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::Client;
use kube::api::{Api, LogParams, PostParams};
use serde_json::{Value, json};

/// Creates a pod and waits until it succeeded or failed.
async fn run(client: &Client, pod: Value) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod = pods.get(&name).await.unwrap();
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not finish: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn shell_pod(name: &str, script: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", script]}]},
    })
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().unwrap().phase.as_deref().unwrap()
}

fn terminated(pod: &Pod) -> ContainerStateTerminated {
    pod.status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap()
}

async fn log(client: &Client, pod: &str, container: &str) -> Result<String, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.logs(
        pod,
        &LogParams {
            container: Some(container.into()),
            ..LogParams::default()
        },
    )
    .await
}

#[tokio::test]
async fn a_container_gets_env_from_secrets_config_maps_fields_and_env_from_expanded() {
    let (_sim, client) = start(&[("busybox", "/bin/sh")]).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"token": "t0k3n"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "settings"}, "data": {"mode": "fast", "LEVEL": "3"}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let pod = json!({
        "metadata": {"name": "envpod", "labels": {"app": "probe"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c",
            "image": "busybox",
            // `$(MODE)` here is the kubelet's expansion, the `$X` ones the shell's.
            "command": ["sh", "-c", "echo \"$TOKEN|$MODE|$POD|$NS|$APP|$GREETING|$LATER|$CM_LEVEL|$(MODE)\""],
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "GREETING", "value": "$(MODE)-$(POD)"},
                {"name": "LATER", "value": "$(UNDEFINED)"},
            ],
        }]},
    });
    let pod = run(&client, pod).await;
    assert_eq!(phase(&pod), "Succeeded", "{:?}", pod.status);
    assert_eq!(
        log(&client, "envpod", "c").await.unwrap(),
        "t0k3n|fast|envpod|default|probe|fast-envpod|$(UNDEFINED)|3|fast\n"
    );
}

#[tokio::test]
async fn exit_codes_and_termination_messages_reach_the_container_state() {
    let (_sim, client) = start(&[("busybox", "/bin/sh")]).await;
    let failed = run(&client, shell_pod("exits", "exit 3")).await;
    assert_eq!(phase(&failed), "Failed");
    let state = terminated(&failed);
    assert_eq!(
        (state.exit_code, state.reason.as_deref()),
        (3, Some("Error"))
    );

    // The kubelet keeps at most 4 KiB of a termination message.
    let long = run(
        &client,
        shell_pod(
            "long",
            "head -c 5000 /dev/zero | tr '\\0' x > /dev/termination-log",
        ),
    )
    .await;
    assert_eq!(phase(&long), "Succeeded");
    let message = terminated(&long).message.unwrap();
    assert_eq!(message, "x".repeat(4096));

    // FallbackToLogsOnError: a failed container without a message gets its log's tail.
    let mut fallback = shell_pod("fallback", "echo first; echo last words; exit 1");
    fallback["spec"]["containers"][0]["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    let fallback = run(&client, fallback).await;
    let state = terminated(&fallback);
    assert_eq!(state.exit_code, 1);
    assert_eq!(state.message.as_deref(), Some("first\nlast words"));
}

#[tokio::test]
async fn init_containers_run_to_completion_before_the_containers() {
    let (_sim, client) = start(&[("busybox", "/bin/sh")]).await;
    let mount = "/var/tmp/kube-sim-tests/init-shared";
    let pod = |name: &str, init_script: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "shared", "emptyDir": {}}],
                "initContainers": [{
                    "name": "prepare", "image": "busybox", "command": ["sh", "-c", init_script],
                    "volumeMounts": [{"name": "shared", "mountPath": mount}],
                }],
                "containers": [{
                    "name": "main", "image": "busybox", "command": ["sh", "-c", format!("cat {mount}/flag")],
                    "volumeMounts": [{"name": "shared", "mountPath": mount}],
                }],
            },
        })
    };
    let ok = run(&client, pod("ok", &format!("printf ready > {mount}/flag"))).await;
    assert_eq!(phase(&ok), "Succeeded", "{:?}", ok.status);
    assert_eq!(log(&client, "ok", "main").await.unwrap(), "ready");
    let init = &ok
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(init.name, "prepare");
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );

    // A failing init container fails the pod; its containers never start.
    let failed = run(&client, pod("failed", "exit 2")).await;
    assert_eq!(phase(&failed), "Failed");
    let init = &failed
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        2
    );
    assert!(log(&client, "failed", "main").await.is_err());
}

#[tokio::test]
async fn a_pod_waiting_for_its_config_map_starts_once_it_exists_without_rewriting_its_status() {
    let (_sim, client) = start(&[("busybox", "/bin/sh")]).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // The process runtime mounts over a host path in the container's own mount namespace.
    let mount = tempfile::tempdir().unwrap();
    let path = mount.path().to_str().unwrap();
    let mut pod = shell_pod("needs-config", &format!("cat {path}/mode"));
    pod["spec"]["volumes"] = json!([{"name": "config", "configMap": {"name": "later"}}]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "config", "mountPath": path}]);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let pod = pods.get("needs-config").await.unwrap();
        let state = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.clone())
            .and_then(|s| s.waiting);
        if let Some(waiting) = state {
            break (pod, waiting);
        }
        assert!(Instant::now() < deadline, "the pod never waited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        waiting.1.reason.as_deref(),
        Some("CreateContainerConfigError")
    );
    // Waiting writes its status once, not again at every retry.
    let version = waiting.0.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = pods.get("needs-config").await.unwrap();
    assert_eq!(again.metadata.resource_version, version);
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "later"}, "data": {"mode": "fast"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pod = pods.get("needs-config").await.unwrap();
        if phase(&pod) == "Succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", pod.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log(&client, "needs-config", "c").await.unwrap(), "fast");
}
