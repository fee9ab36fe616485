//! Deployments through kubectl: a ReplicaSet per pod template, pods that become ready through
//! their readiness probe, `kubectl rollout status`, a rollout on a template change, scaling,
//! and garbage collection on delete.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kube_sim::{KubeSim, Options};
use serde_json::Value;

fn kubectl(sim: &KubeSim, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", sim.kubeconfig_path())
        .env("HOME", sim.kubeconfig_path().parent().unwrap())
        .output()
        .expect("kubectl 1.32 is installed");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn get(sim: &KubeSim, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(sim, &all)).unwrap()
}

fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let start = Instant::now();
    while !probe() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: main
          image: busybox
          command: [/bin/sh, -c, "exec sleep 300"]
          readinessProbe:
            exec: {command: [/bin/true]}
            periodSeconds: 1
"#;

#[tokio::test(flavor = "multi_thread")]
async fn deployments_roll_out_replica_sets_of_ready_pods() {
    let images = HashMap::from([("busybox".to_owned(), PathBuf::from("/bin/sh"))]);
    let sim = KubeSim::start(Options {
        images,
        ..Options::default()
    })
    .await
    .unwrap();
    let path = sim.kubeconfig_path().parent().unwrap().join("web.yaml");
    std::fs::write(&path, DEPLOYMENT).unwrap();
    kubectl(&sim, &["apply", "-f", path.to_str().unwrap()]);
    kubectl(
        &sim,
        &["rollout", "status", "deployment/web", "--timeout=30s"],
    );
    let deployment = get(&sim, &["deployment", "web"]);
    assert_eq!(deployment["status"]["readyReplicas"], 2, "{deployment}");
    assert_eq!(
        deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    let sets = get(&sim, &["replicasets", "-l", "app=web"]);
    let first = sets["items"][0].clone();
    let hash = first["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(first["metadata"]["name"], format!("web-{hash}"));
    assert_eq!(
        first["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );
    let pods = get(&sim, &["pods", "-l", &format!("pod-template-hash={hash}")]);
    assert_eq!(pods["items"].as_array().unwrap().len(), 2);
    assert!(pods["items"].as_array().unwrap().iter().all(|p| {
        p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    }));

    // A template change rolls out a second ReplicaSet and retires the first.
    kubectl(&sim, &["set", "env", "deployment/web", "MODE=fast"]);
    kubectl(
        &sim,
        &["rollout", "status", "deployment/web", "--timeout=30s"],
    );
    let deployment = get(&sim, &["deployment", "web"]);
    assert_eq!(
        deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    eventually("the old pods to go", || {
        get(&sim, &["pods", "-l", &format!("pod-template-hash={hash}")])["items"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    let sets = get(&sim, &["replicasets", "-l", "app=web"]);
    let replicas: Vec<(String, i64)> = sets["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| {
            (
                rs["metadata"]["labels"]["pod-template-hash"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                rs["spec"]["replicas"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    assert!(replicas.contains(&(hash.clone(), 0)), "{replicas:?}");
    assert!(
        replicas.iter().any(|(h, n)| *h != hash && *n == 2),
        "{replicas:?}"
    );

    kubectl(
        &sim,
        &[
            "patch",
            "deployment",
            "web",
            "-p",
            r#"{"spec":{"replicas":1}}"#,
        ],
    );
    eventually("scaled to one pod", || {
        get(&sim, &["pods", "-l", "app=web"])["items"]
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    kubectl(&sim, &["delete", "deployment", "web"]);
    eventually("the ReplicaSets and pods to be collected", || {
        get(&sim, &["replicasets"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
            && get(&sim, &["pods"])["items"].as_array().unwrap().is_empty()
    });
    sim.stop().await;
}
