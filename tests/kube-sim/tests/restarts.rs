//! API server restarts: one that keeps the store leaves pods running, as in a cluster; one
//! that loses it stops their processes, and a kube-rs watcher resuming from a version of the
//! lost store relists instead of silently missing what the new store holds.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{check, checks, install_crds, start};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

/// A pod whose container records its pid, then sleeps `seconds` (same pid). `$$$$` because
/// Kubernetes expands `$$` in a command to `$`.
fn sleeper(name: &str, pid_file: &std::path::Path, seconds: u32) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "c",
            "image": "busybox",
            "command": ["sh", "-c", format!("echo $$$$ > {}; exec sleep {seconds}", pid_file.display())],
        }]},
    }))
    .unwrap()
}

async fn wait_for_phase(pods: &Api<Pod>, name: &str, phase: &str) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod = pods.get(name).await.unwrap();
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {phase}: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pid the container wrote (it runs once the pod is Running, so wait for it).
async fn container_pid(file: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.ends_with('\n') {
            return text.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "the container wrote no pid");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn a_restart_that_keeps_the_store_leaves_pods_running() {
    let (mut sim, client) = start(&[("busybox", "/bin/sh")]).await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &sleeper("p", &pid_file, 3))
        .await
        .unwrap();
    let running = wait_for_phase(&pods, "p", "Running").await;
    let pid = container_pid(&pid_file).await;
    let container_id = |pod: &Pod| {
        pod.status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .container_id
            .clone()
    };
    sim.restart(true).await.unwrap();
    let after = pods.get("p").await.unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().phase.as_deref(),
        Some("Running"),
        "{:?}",
        after.status
    );
    assert_eq!(container_id(&after), container_id(&running));
    assert!(alive(&pid), "the container process survived");
    // It runs to its end and succeeds: no kill, no 137.
    let done = wait_for_phase(&pods, "p", "Succeeded").await;
    let terminated = done.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(terminated.exit_code, 0);
}

#[tokio::test]
async fn a_restart_that_loses_the_store_stops_the_pods_it_had() {
    let (mut sim, client) = start(&[("busybox", "/bin/sh")]).await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &sleeper("p", &pid_file, 600))
        .await
        .unwrap();
    wait_for_phase(&pods, "p", "Running").await;
    let pid = container_pid(&pid_file).await;
    assert!(alive(&pid));
    sim.restart(false).await.unwrap();
    assert!(pods.get_opt("p").await.unwrap().is_none());
    assert!(!alive(&pid), "the lost pod's process was stopped");
}

#[tokio::test]
async fn a_watch_from_a_lost_store_gets_410_not_silence() {
    let (mut sim, client) = start(&[]).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..20 {
        maps.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("m{i}")}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let old_rv = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    sim.restart(false).await.unwrap();
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "new"}})).unwrap(),
    )
    .await
    .unwrap();
    let mut stream = maps
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the watch answers at once")
        .unwrap()
        .unwrap();
    assert!(
        matches!(first, WatchEvent::Error(ref e) if e.code == 410),
        "{first:?}"
    );
}

#[tokio::test]
async fn a_watcher_across_a_restart_that_loses_the_store_ends_on_the_new_state() {
    let (mut sim, client) = start(&[]).await;
    install_crds(&client).await;
    let api = checks(&client);
    for (name, interval) in [("old-1", "1m"), ("old-2", "2m"), ("kept", "3m")] {
        api.create(&PostParams::default(), &check(name, interval))
            .await
            .unwrap();
    }
    let (tx, mut rx) = tokio::sync::watch::channel(BTreeMap::<String, Value>::new());
    let watching = tokio::spawn({
        let api = api.clone();
        async move {
            let mut state = BTreeMap::new();
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            tokio::pin!(stream);
            // Errors (the server down, the CRD not there yet) are the watcher's to retry.
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        state.insert(o.name_any(), o.data["spec"]["interval"].clone());
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        state.remove(&o.name_any());
                    }
                    Ok(watcher::Event::Init) => state.clear(),
                    Ok(watcher::Event::InitDone) | Err(_) => {}
                }
                let _ = tx.send(state.clone());
            }
        }
    });
    let until = |rx: &mut tokio::sync::watch::Receiver<BTreeMap<String, Value>>,
                 expected: BTreeMap<String, Value>| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                rx.wait_for(|state| *state == expected),
            )
            .await
            .unwrap_or_else(|_| panic!("the watcher never saw {expected:?}"))
            .map(|_| ())
            .unwrap();
        }
    };
    let expect = |pairs: &[(&str, &str)]| -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(n, i)| (n.to_string(), json!(i)))
            .collect()
    };
    until(
        &mut rx,
        expect(&[("old-1", "1m"), ("old-2", "2m"), ("kept", "3m")]),
    )
    .await;

    // The store is lost; the new one gets the CRDs again and other objects, one of them
    // named as before with another spec.
    sim.restart(false).await.unwrap();
    install_crds(&client).await;
    for (name, interval) in [("kept", "4m"), ("new", "5m")] {
        api.create(&PostParams::default(), &check(name, interval))
            .await
            .unwrap();
    }
    until(&mut rx, expect(&[("kept", "4m"), ("new", "5m")])).await;
    watching.abort();
}
