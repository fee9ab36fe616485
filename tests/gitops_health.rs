//! The shipped Argo CD health check (Lua) maps the conditions the operator writes the way
//! kstatus (Flux, `kubectl wait`) reads them. Runs the snippet with the real Lua interpreter.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use netreach::api::check::EgressCheckStatus;
use netreach::api::conditions::set_condition;
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

fn status(generation: i64, conditions: &[(&str, bool, &str)]) -> EgressCheckStatus {
    let now = Time(Timestamp::now());
    let mut status = EgressCheckStatus {
        observed_generation: Some(generation),
        ..Default::default()
    };
    for (type_, value, message) in conditions {
        set_condition(
            &mut status.conditions,
            type_,
            *value,
            "Reason",
            *message,
            Some(generation),
            &now,
        );
    }
    status
}

#[test]
fn the_argocd_health_check_follows_the_operators_conditions() {
    assert_eq!(health(1, None).0, "Progressing");
    let ready = status(
        2,
        &[
            ("Ready", true, "all pass"),
            ("Reconciling", false, ""),
            ("Stalled", false, ""),
        ],
    );
    assert_eq!(
        health(2, Some(&ready)),
        ("Healthy".into(), "all pass".into())
    );
    assert_eq!(
        health(3, Some(&ready)).0,
        "Progressing",
        "a newer generation is not yet probed"
    );
    let failing = status(
        2,
        &[
            ("Ready", false, "mpnsv2-m3: IssuerMismatch"),
            ("Reconciling", false, ""),
            ("Stalled", false, ""),
        ],
    );
    assert_eq!(
        health(2, Some(&failing)),
        ("Degraded".into(), "mpnsv2-m3: IssuerMismatch".into())
    );
    let probing = status(
        2,
        &[
            ("Ready", false, "no run yet"),
            ("Reconciling", true, "probe job c-1 is running"),
            ("Stalled", false, ""),
        ],
    );
    assert_eq!(
        health(2, Some(&probing)),
        ("Progressing".into(), "probe job c-1 is running".into())
    );
    let stalled = status(
        2,
        &[
            ("Ready", false, "x"),
            ("Reconciling", false, ""),
            ("Stalled", true, "profile missing"),
        ],
    );
    assert_eq!(
        health(2, Some(&stalled)),
        ("Degraded".into(), "profile missing".into())
    );
}
