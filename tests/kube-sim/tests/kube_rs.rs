//! Conformance of the emulator as kube-rs sees it: the verbs and their semantics, watches
//! across drops and expired versions, a Controller, and Jobs whose pods run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams,
    PostParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kube_sim::KubeSim;
use serde_json::{Value, json};

mod common;

use common::{check, checks, checks_resource, install_crds};

async fn start() -> (KubeSim, Client) {
    common::start(&[]).await
}

#[tokio::test]
async fn custom_resources_are_validated_by_their_crd_schema_and_cel_rules() {
    let (_sim, client) = start().await;
    install_crds(&client).await;
    let api = checks(&client);
    api.create(&PostParams::default(), &check("ok", "10m"))
        .await
        .unwrap();
    let mut bad = check("bad", "10m");
    bad.data["spec"]["endpoints"][0]["ports"][0]["port"] = json!(70000);
    bad.data["spec"]["endpoints"][0]["cidr"] = json!("10.0.0.1/32");
    let error = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = error else {
        panic!("expected an API error, got {error}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("spec.endpoints[0].ports[0].port"),
        "{}",
        status.message
    );
    bad.data["spec"]["endpoints"][0]["ports"][0]["port"] = json!(443);
    let error = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = error else {
        panic!()
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("exactly one of host or cidr"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn writes_follow_resource_versions_generations_and_the_status_subresource() {
    let (_sim, client) = start().await;
    install_crds(&client).await;
    let api = checks(&client);
    let created = api
        .create(&PostParams::default(), &check("c", "10m"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    // A stale resourceVersion is a 409.
    let mut stale = created.clone();
    stale.data["spec"]["interval"] = json!("5m");
    api.replace("c", &PostParams::default(), &stale)
        .await
        .unwrap();
    let error = api
        .replace("c", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 409),
        "{error}"
    );

    // Status through /status does not bump the generation; status on the main endpoint is ignored.
    let status = json!({"status": {"observedGeneration": 2, "summary": {"total": 1, "passed": 1, "warned": 0, "failed": 0, "intercepted": 0}}});
    let after_status = api
        .patch_status("c", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(after_status.metadata.generation, Some(2));
    assert_eq!(after_status.data["status"]["summary"]["passed"], 1);
    let ignored = api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"summary": {"passed": 99}}})),
        )
        .await
        .unwrap();
    assert_eq!(ignored.data["status"]["summary"]["passed"], 1);
    assert_eq!(
        ignored.metadata.generation,
        Some(2),
        "metadata and status changes leave the generation"
    );
    let spec_via_status = api
        .patch_status(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"interval": "1m"}})),
        )
        .await
        .unwrap();
    assert_eq!(spec_via_status.data["spec"]["interval"], "5m");

    // JSON patch, then a label-selected list.
    api.patch(
        "c",
        &PatchParams::default(),
        &Patch::<()>::Json(
            serde_json::from_value(
                json!([{"op": "replace", "path": "/spec/interval", "value": "2m"}]),
            )
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &check("other", "1m"))
        .await
        .unwrap();
    let mut unlabelled = check("unlabelled", "1m");
    unlabelled.metadata.labels = None;
    api.create(&PostParams::default(), &unlabelled)
        .await
        .unwrap();
    let listed = api
        .list(&ListParams::default().labels("team=mdm"))
        .await
        .unwrap();
    let names: Vec<String> = listed.items.iter().map(|o| o.name_any()).collect();
    assert_eq!(names, ["c", "other"]);
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = api
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
}

#[tokio::test]
async fn server_side_apply_tracks_managers_and_conflicts() {
    let (_sim, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owned = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}});
    api.patch(
        "cm",
        &PatchParams::apply("netreach/one"),
        &Patch::Apply(&owned),
    )
    .await
    .unwrap();
    let taking = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "9"}});
    let error = api
        .patch(
            "cm",
            &PatchParams::apply("netreach/two"),
            &Patch::Apply(&taking),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = error else {
        panic!()
    };
    assert_eq!(status.code, 409);
    assert!(
        status.message.contains("conflict with \"netreach/one\""),
        "{}",
        status.message
    );
    let forced = api
        .patch(
            "cm",
            &PatchParams::apply("netreach/two").force(),
            &Patch::Apply(&taking),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["a"], "9");
    // Dropping a field from one's apply removes it.
    let shrink =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {}});
    let shrunk = api
        .patch(
            "cm",
            &PatchParams::apply("netreach/one"),
            &Patch::Apply(&shrink),
        )
        .await
        .unwrap();
    let data = shrunk.data.unwrap_or_default();
    assert_eq!(data.get("b"), None);
    assert_eq!(
        data.get("a").map(String::as_str),
        Some("9"),
        "a is owned by the other manager now"
    );
    let managers: Vec<String> = shrunk
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"netreach/two".to_owned()));
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owners_take_their_dependents_along() {
    let (_sim, client) = start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut held: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["netreach.dev/cleanup"]}}),
    )
    .unwrap();
    maps.create(&PostParams::default(), &held).await.unwrap();
    maps.delete("held", &DeleteParams::default()).await.unwrap();
    held = maps.get("held").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "a finalizer keeps the object, marked for deletion"
    );
    maps.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        maps.get_opt("held").await.unwrap().is_none(),
        "removing the last finalizer deletes it"
    );

    let owner = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let reference = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid, "blockOwnerDeletion": true}]);
    for name in ["dep-1", "dep-2"] {
        maps.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": name, "ownerReferences": reference}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    }
    maps.delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    for name in ["owner", "dep-1", "dep-2"] {
        assert!(
            maps.get_opt(name).await.unwrap().is_none(),
            "{name} should be gone"
        );
    }
    // Orphan keeps dependents and strips the reference.
    let owner = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner2"}})).unwrap(),
        )
        .await
        .unwrap();
    let reference = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner.metadata.uid}]);
    maps.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "kept", "ownerReferences": reference}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    maps.delete("owner2", &DeleteParams::orphan())
        .await
        .unwrap();
    let kept = maps.get("kept").await.unwrap();
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    // deletecollection by label
    maps.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    assert!(
        maps.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_kinds_and_missing_namespaces_are_404() {
    let (sim, client) = start().await;
    let ar = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let error = widgets.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 404),
        "{error}"
    );
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    let error = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 404),
        "{error}"
    );
    drop(sim);
}

/// Collects the latest state per name from a watcher until `done` holds.
async fn watch_until(
    api: Api<DynamicObject>,
    done: impl Fn(&BTreeMap<String, Value>) -> bool,
    sim: &KubeSim,
    disrupt: impl Fn(&KubeSim, usize),
) -> BTreeMap<String, Value> {
    let mut state: BTreeMap<String, Value> = BTreeMap::new();
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    tokio::pin!(stream);
    let mut events = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&state) {
        let event = tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .expect("watch made progress")
            .unwrap()
            .unwrap();
        match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                state.insert(o.name_any(), o.data["spec"]["interval"].clone());
            }
            watcher::Event::Delete(o) => {
                state.remove(&o.name_any());
            }
            watcher::Event::Init => state.clear(),
            watcher::Event::InitDone => {}
        }
        events += 1;
        disrupt(sim, events);
    }
    state
}

#[tokio::test]
async fn watches_resume_after_drops_and_expired_versions_without_losing_the_final_state() {
    let (sim, client) = start().await;
    install_crds(&client).await;
    let api = checks(&client);
    let writer = api.clone();
    tokio::spawn(async move {
        for round in 0..30 {
            let name = format!("c{}", round % 5);
            let interval = format!("{}m", round + 1);
            if writer.get_opt(&name).await.unwrap().is_some() {
                writer
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"interval": interval}})),
                    )
                    .await
                    .unwrap();
            } else {
                writer
                    .create(&PostParams::default(), &check(&name, &interval))
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        writer.delete("c0", &DeleteParams::default()).await.unwrap();
    });
    // Final state: c1..c4 at intervals 27m..30m, c0 deleted.
    let expected: BTreeMap<String, Value> = (1..5)
        .map(|i| (format!("c{i}"), json!(format!("{}m", 25 + i + 1))))
        .collect();
    let disrupt = |sim: &KubeSim, events: usize| {
        if events.is_multiple_of(7) {
            sim.faults().close_watches();
        }
        if events.is_multiple_of(11) {
            sim.expire_resource_versions();
            sim.faults().close_watches();
        }
    };
    let state = watch_until(api, |s| *s == expected, &sim, disrupt).await;
    assert_eq!(state, expected);
}

#[tokio::test]
async fn a_watch_from_an_expired_version_gets_410() {
    let (sim, client) = start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await
        .unwrap();
    maps.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    sim.expire_resource_versions();
    let rv = created.metadata.resource_version.unwrap();
    let mut stream = maps
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let first = stream.next().await.unwrap().unwrap();
    match first {
        kube::api::WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

/// What the test controller saw.
#[derive(Default)]
struct Seen {
    names: std::sync::Mutex<std::collections::BTreeSet<String>>,
    reconciles: AtomicUsize,
}

#[tokio::test]
async fn a_controller_reconciles_each_object_and_injected_faults_only_delay_it() {
    let (sim, client) = start().await;
    install_crds(&client).await;
    let api = checks(&client);
    for i in 0..5 {
        api.create(&PostParams::default(), &check(&format!("c{i}"), "1m"))
            .await
            .unwrap();
    }
    sim.faults().fail_next("list", "egresschecks", 2, 500);
    let context = Arc::new(Seen::default());
    let controller =
        Controller::new_with(api.clone(), watcher::Config::default(), checks_resource())
            .run(
                |object: Arc<DynamicObject>, ctx: Arc<Seen>| async move {
                    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
                    ctx.names.lock().unwrap().insert(object.name_any());
                    Ok::<_, kube::Error>(Action::await_change())
                },
                |_, _, _| Action::requeue(Duration::from_millis(100)),
                context.clone(),
            )
            .for_each(|_| async {});
    let run = tokio::spawn(controller);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while context.names.lock().unwrap().len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "controller saw {:?}",
            context.names.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(context.reconciles.load(Ordering::SeqCst) >= 5);
    run.abort();
}

#[tokio::test]
async fn a_job_runs_its_pod_as_a_process_with_logs_and_termination_message() {
    let (_sim, client) = common::start(&[("busybox", "/bin/sh")]).await;
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
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = json!({
        "metadata": {"name": "probe"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                "containers": [{
                    "name": "probe",
                    "image": "busybox",
                    "command": ["sh", "-c", "echo \"$GREETING from $(id -u)\"; cat /secrets/token; echo; printf done > /dev/termination-log"],
                    "env": [{"name": "GREETING", "value": "hello"}],
                    "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false},
                    "volumeMounts": [{"name": "creds", "mountPath": "/secrets", "readOnly": true}],
                }],
                "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}],
            }},
        },
    });
    jobs.create(
        &PostParams::default(),
        &serde_json::from_value(job).unwrap(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let finished = loop {
        let job = jobs.get("probe").await.unwrap();
        let conditions = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == "Complete" || c.type_ == "Failed")
        {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job did not finish: {:?}",
            job.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = finished.status.unwrap();
    assert_eq!(status.succeeded, Some(1), "{status:?}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = pods
        .list(&ListParams::default().labels("job-name=probe"))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    let terminated = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(terminated.message.as_deref(), Some("done"));
    let log = pods
        .logs(&pod.name_any(), &LogParams::default())
        .await
        .unwrap();
    assert_eq!(log, "hello from 65532\nt0k3n\n");
    // The pod is owned by the Job and goes with it.
    jobs.delete("probe", &DeleteParams::background())
        .await
        .unwrap();
    assert!(
        pods.list(&ListParams::default().labels("job-name=probe"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn failing_and_overdue_jobs_fail_with_their_reasons() {
    let (_sim, client) = common::start(&[("busybox", "/bin/sh")]).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = |name: &str, script: &str, deadline: Option<i64>| {
        let mut spec = json!({"backoffLimit": 0, "ttlSecondsAfterFinished": 3, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", script]}]}}});
        if let Some(d) = deadline {
            spec["activeDeadlineSeconds"] = json!(d);
        }
        serde_json::from_value::<Job>(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    jobs.create(&PostParams::default(), &job("fails", "exit 3", None))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("overdue", "sleep 30", Some(1)))
        .await
        .unwrap();
    let mut unmapped = job("unmapped", "true", None);
    unmapped
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("registry.example/not-mapped:1".into());
    jobs.create(&PostParams::default(), &unmapped)
        .await
        .unwrap();
    let reason = |job: &Job| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Failed"))
            .and_then(|c| c.reason.clone())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let fails = jobs.get_opt("fails").await.unwrap();
        let overdue = jobs.get_opt("overdue").await.unwrap();
        if let (Some(f), Some(o)) = (&fails, &overdue)
            && reason(f).is_some()
            && reason(o).is_some()
        {
            assert_eq!(reason(f).as_deref(), Some("BackoffLimitExceeded"));
            assert_eq!(reason(o).as_deref(), Some("DeadlineExceeded"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs did not fail: {fails:?} {overdue:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ttlSecondsAfterFinished removes finished jobs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while jobs.get_opt("fails").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ttl did not remove the job"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let unmapped = pods
        .list(&ListParams::default().labels("job-name=unmapped"))
        .await
        .unwrap()
        .items
        .remove(0);
    let waiting = unmapped.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ErrImagePull"));
}

#[tokio::test]
async fn a_restart_keeps_or_loses_the_store() {
    let (mut sim, client) = start().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "kept"}})).unwrap(),
        )
        .await
        .unwrap();
    sim.restart(true).await.unwrap();
    assert!(namespaces.get_opt("kept").await.unwrap().is_some());
    sim.restart(false).await.unwrap();
    assert!(namespaces.get_opt("kept").await.unwrap().is_none());
    assert!(namespaces.get_opt("default").await.unwrap().is_some());
}

#[tokio::test]
async fn ten_thousand_resources_list_and_a_hundred_watches_see_a_change() {
    let (sim, client) = start().await;
    install_crds(&client).await;
    let api = checks(&client);
    let started = std::time::Instant::now();
    futures::stream::iter(0..10_000)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &check(&format!("c{i:05}"), "1m"))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    eprintln!("created 10,000 EgressChecks in {:?}", started.elapsed());
    // The requirement: a list of 10,000 objects well under a second. Measured in a debug
    // build: the server answers in ~25 ms (stored encodings concatenated; encoding each object
    // again took ~600 ms), kube-rs decodes in ~250 ms more. The bounds leave room for a loaded
    // machine and still catch the server going back to per-request encoding.
    let request = hyper::Request::get(format!(
        "{}/apis/netreach.dev/v1alpha1/namespaces/default/egresschecks",
        sim.url()
    ))
    .body(Vec::new())
    .unwrap();
    let started = std::time::Instant::now();
    let raw = client.request_text(request).await.unwrap();
    let served = started.elapsed();
    eprintln!("served 10,000 ({} bytes) in {served:?}", raw.len());
    assert!(
        served < Duration::from_millis(400),
        "serving 10,000 objects took {served:?}"
    );
    let started = std::time::Instant::now();
    let all = api.list(&ListParams::default()).await.unwrap();
    let listed = started.elapsed();
    eprintln!("listed 10,000 with kube-rs in {listed:?}");
    assert!(
        listed < Duration::from_secs(1),
        "listing 10,000 objects took {listed:?}"
    );
    assert_eq!(all.items.len(), 10_000);
    let mut watches = Vec::new();
    let rv = all.metadata.resource_version.clone().unwrap();
    for _ in 0..100 {
        watches.push(
            api.watch(&kube::api::WatchParams::default().timeout(30), &rv)
                .await
                .unwrap()
                .boxed(),
        );
    }
    api.patch(
        "c00042",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"interval": "2m"}})),
    )
    .await
    .unwrap();
    for mut watch in watches {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event {
            kube::api::WatchEvent::Modified(o) => assert_eq!(o.name_any(), "c00042"),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(sim);
}
