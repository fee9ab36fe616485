//! The shipped Argo CD health check (Lua) maps the conditions the operator writes the way
//! kstatus (Flux, `kubectl wait`) reads them. Runs the snippet with the real Lua interpreter
//! on statuses the operator's own reconcile decision writes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use netreach::api::EgressCheck;
use netreach::api::check::{EgressCheckStatus, RunTrigger};
use netreach::api::result::ProbeResult;
use netreach::controller::check::decide::decide;
use netreach::controller::check::jobs::{JobEnd, RunJob};
use netreach::controller::check::observe::{FinishedRun, Observed, ProfileLookup};
use serde_json::json;

const RUNNER: &str = r#"
local cjson = require("cjson")
obj = cjson.decode(io.read("*a"))
local check = assert(loadfile(arg[1]))
local hs = check()
io.write(hs.status, "\t", hs.message or "")
"#;

/// Runs the health check on an EgressCheck with `generation` and `status`.
fn health(generation: i64, status: Option<&EgressCheckStatus>) -> (String, String) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/argocd/egresscheck-health.lua");
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("run.lua");
    std::fs::write(&runner, RUNNER).unwrap();
    let mut object = json!({"apiVersion": "netreach.dev/v1alpha1", "kind": "EgressCheck", "metadata": {"name": "c", "generation": generation}});
    if let Some(status) = status {
        object["status"] = serde_json::to_value(status).unwrap();
    }
    let mut child = Command::new("lua5.4")
        .arg(&runner)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lua5.4 is installed by tests/peers/install.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\t').unwrap();
    (status.to_owned(), message.to_owned())
}

/// A check over a one-endpoint profile, at `generation`, with `status`.
fn check(generation: i64, status: Option<EgressCheckStatus>) -> EgressCheck {
    let mut check: EgressCheck = serde_json::from_value(json!({
        "apiVersion": "netreach.dev/v1alpha1", "kind": "EgressCheck",
        "metadata": {"name": "c", "namespace": "ns", "uid": "u", "generation": generation},
        "spec": {"profileRef": {"name": "p"}}
    }))
    .unwrap();
    check.status = status;
    check
}

fn profile() -> ProfileLookup {
    ProfileLookup::Found(Box::new(
        serde_json::from_value(json!({
            "apiVersion": "netreach.dev/v1alpha1", "kind": "ConnectivityProfile",
            "metadata": {"name": "p", "namespace": "ns", "generation": 1},
            "spec": {"endpoints": [{"name": "mpnsv2-m3", "host": "mpnsv2.m3.maas360.com",
                                    "ports": [{"port": 443, "protocol": "HTTPS"}]}]}
        }))
        .unwrap(),
    ))
}

fn run_job(run: i64, generation: i64, finished: bool) -> RunJob {
    RunJob {
        name: format!("c-{run}"),
        uid: format!("job-{run}"),
        owner_uid: Some("u".into()),
        run,
        run_key: Some(format!("{generation}/1/")),
        trigger: Some(RunTrigger::Created),
        end: finished.then_some(JobEnd::Complete),
        start_time: None,
        completion_time: finished.then(|| Time(Timestamp::now())),
    }
}

fn row(reason: &str) -> ProbeResult {
    let passed = reason == "Reachable";
    serde_json::from_value(json!({
        "endpoint": "mpnsv2-m3", "host": "mpnsv2.m3.maas360.com", "port": 443,
        "protocol": "HTTPS", "required": true,
        "outcome": if passed { "Pass" } else { "Fail" },
        "stage": if passed { "Protocol" } else { "Issuer" },
        "reason": reason, "message": "m"
    }))
    .unwrap()
}

/// The status the operator's reconcile writes for `observed`.
fn written(observed: &Observed) -> EgressCheckStatus {
    decide(observed, &Time(Timestamp::now()), "netreach:test")
        .status
        .expect("the operator writes a status")
}

fn observed(generation: i64, status: Option<EgressCheckStatus>) -> Observed {
    Observed {
        check: check(generation, status),
        profile: profile(),
        ca_bundles: Ok(Default::default()),
        jobs: Vec::new(),
        finished: None,
        next_run_config: None,
    }
}

/// The status after run 1 of generation `generation` returned `rows`.
fn after_run(generation: i64, rows: Vec<ProbeResult>) -> EgressCheckStatus {
    let probing = written(&observed(generation, None));
    written(&Observed {
        jobs: vec![run_job(1, generation, true)],
        finished: Some(FinishedRun {
            job: run_job(1, generation, true),
            outcome: Ok(rows),
        }),
        ..observed(generation, Some(probing))
    })
}

#[test]
fn the_argocd_health_check_follows_the_operators_conditions() {
    assert_eq!(health(1, None).0, "Progressing");
    // The first run in flight.
    let probing = written(&observed(2, None));
    let (state, message) = health(2, Some(&probing));
    assert_eq!(state, "Progressing");
    assert!(message.contains("probe job c-1 is running"), "{message}");

    let ready = after_run(2, vec![row("Reachable")]);
    assert_eq!(health(2, Some(&ready)).0, "Healthy");
    assert_eq!(
        health(3, Some(&ready)).0,
        "Progressing",
        "a newer generation is not yet probed"
    );

    let failing = after_run(2, vec![row("IssuerMismatch")]);
    let (state, message) = health(2, Some(&failing));
    assert_eq!(state, "Degraded");
    assert!(message.contains("IssuerMismatch"), "{message}");

    let stalled = written(&Observed {
        profile: ProfileLookup::Missing { name: "p".into() },
        ..observed(2, Some(ready))
    });
    let (state, message) = health(2, Some(&stalled));
    assert_eq!(state, "Degraded");
    assert!(
        message.contains("ConnectivityProfile ns/p does not exist"),
        "{message}"
    );
}
