//! API server semantics the emulator must not simplify away: format validation and CEL rules
//! (with `oldSelf`) in the API server's error shape, strict decoding, conditional updates of
//! custom resources, resourceVersion preconditions on apply and delete, which field selectors
//! a kind supports, which verbs the all-namespaces path serves, resource versions the store
//! does not have, generateName, and watch bookmarks and timeouts.

mod common;

use std::time::{Duration, Instant};

use common::{api_error, causes, check, checks, install_crds, start};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    ValidationDirective, VersionMatch, WatchEvent, WatchParams,
};
use serde_json::json;

const NOT_CHECKED: &str = "Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";

#[tokio::test]
async fn malformed_formats_are_422_with_a_cause_per_field() {
    let (_sim, client) = start(&[]).await;
    install_crds(&client).await;
    let api = checks(&client);
    api.create(&PostParams::default(), &check("c", "10m"))
        .await
        .unwrap();
    let status = api_error(
        api.patch_status(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"currentRun": {"startTime": "yesterday", "passed": 3_000_000_000_i64}}})),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    let causes = causes(&status);
    for expected in [
        (
            "status.currentRun.startTime",
            "FieldValueTypeInvalid",
            "Invalid value: \"yesterday\": status.currentRun.startTime in body must be of type date-time: \"yesterday\"",
        ),
        // The API server reports an integer out of its format's range against no field.
        (
            "<nil>",
            "FieldValueInvalid",
            "Invalid value: \"\": Checked value must be of type integer with format int32 in status.currentRun.passed",
        ),
        // A type error keeps the CRD's CEL rules from running, and the API server says so.
        ("<nil>", "FieldValueInvalid", NOT_CHECKED),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
        );
        assert!(causes.contains(&expected), "{expected:?} not in {causes:?}");
    }
    assert_eq!(causes.len(), 3, "{causes:?}");
    assert!(
        status
            .message
            .contains("status.currentRun.startTime: Invalid value: \"yesterday\""),
        "{}",
        status.message
    );

    let fine = api
        .patch_status(
            "c",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"currentRun": {"startTime": "2025-02-28T23:59:59.5+01:00", "passed": 3}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(fine.data["status"]["currentRun"]["passed"], 3);
}

#[tokio::test]
async fn cel_rules_run_unless_a_schema_error_blocks_them() {
    let (_sim, client) = start(&[]).await;
    install_crds(&client).await;
    let api = checks(&client);
    // Out of bounds is not blocking: the CEL rule (exactly one of host or cidr) runs too.
    let mut both = check("both", "10m");
    both.data["spec"]["endpoints"][0]["cidr"] = json!("10.0.0.1/32");
    both.data["spec"]["endpoints"][0]["ports"][0]["port"] = json!(70000);
    let status = api_error(api.create(&PostParams::default(), &both).await);
    let causes_found = causes(&status);
    let fields: Vec<&str> = causes_found.iter().map(|(f, ..)| f.as_str()).collect();
    assert!(
        fields.contains(&"spec.endpoints[0].ports[0].port"),
        "{causes_found:?}"
    );
    assert!(
        causes_found
            .iter()
            .any(|(f, _, m)| f == "spec.endpoints[0]" && m.contains("exactly one of host or cidr")),
        "{causes_found:?}"
    );
    // A wrong type blocks them.
    both.data["spec"]["endpoints"][0]["ports"][0]["port"] = json!("443");
    let status = api_error(api.create(&PostParams::default(), &both).await);
    let causes_found = causes(&status);
    assert!(
        !causes_found
            .iter()
            .any(|(.., m)| m.contains("exactly one of host or cidr")),
        "{causes_found:?}"
    );
    assert!(
        causes_found
            .iter()
            .any(|(f, r, m)| f == "spec.endpoints[0].ports[0].port"
                && r == "FieldValueTypeInvalid"
                && m.contains("must be of type integer")),
        "{causes_found:?}"
    );
    assert!(
        causes_found
            .iter()
            .any(|(f, _, m)| f == "<nil>" && m == NOT_CHECKED),
        "{causes_found:?}"
    );
}

#[tokio::test]
async fn transition_rules_compare_with_the_old_object() {
    let (_sim, client) = start(&[]).await;
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "counters.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "counters", "singular": "counter", "kind": "Counter"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {"type": "object", "properties": {"count": {
                    "type": "integer",
                    "x-kubernetes-validations": [{"rule": "self >= oldSelf", "message": "may not decrease"}],
                }}}},
            }}}],
        },
    });
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(crd).unwrap(),
    )
    .await
    .unwrap();
    let resource = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Counter".into(),
        plural: "counters".into(),
    };
    let counters: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let counter = serde_json::from_value(json!({
        "apiVersion": "example.com/v1",
        "kind": "Counter",
        "metadata": {"name": "n"},
        "spec": {"count": 3},
    }))
    .unwrap();
    // On create there is no old object: the transition rule does not apply.
    counters
        .create(&PostParams::default(), &counter)
        .await
        .unwrap();
    let set = |count: i64| Patch::Merge(json!({"spec": {"count": count}}));
    let status = api_error(counters.patch("n", &PatchParams::default(), &set(2)).await);
    assert_eq!(status.code, 422);
    assert_eq!(
        causes(&status),
        [(
            "spec.count".to_owned(),
            "FieldValueInvalid".to_owned(),
            "Invalid value: \"integer\": may not decrease".to_owned()
        )]
    );
    let raised = counters
        .patch("n", &PatchParams::default(), &set(5))
        .await
        .unwrap();
    assert_eq!(raised.data["spec"]["count"], 5);
}

#[tokio::test]
async fn strict_validation_names_unknown_fields_like_the_api_server() {
    let (_sim, client) = start(&[]).await;
    install_crds(&client).await;
    let api = checks(&client);
    api.create(&PostParams::default(), &check("c", "10m"))
        .await
        .unwrap();
    let strict = PatchParams::default().validation(ValidationDirective::Strict);
    let status = api_error(
        api.patch(
            "c",
            &strict,
            &Patch::Merge(json!({"spec": {"bogus": 1, "interval": "5m"}})),
        )
        .await,
    );
    assert_eq!(status.code, 400);
    assert_eq!(
        status.message,
        "strict decoding error: unknown field \"spec.bogus\""
    );
    // Without Strict the field is pruned and the rest applies.
    let pruned = api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"bogus": 1, "interval": "5m"}})),
        )
        .await
        .unwrap();
    assert!(pruned.data["spec"].get("bogus").is_none());
}

#[tokio::test]
async fn a_custom_resource_update_must_name_its_resource_version() {
    let (_sim, client) = start(&[]).await;
    install_crds(&client).await;
    let api = checks(&client);
    let mut created = api
        .create(&PostParams::default(), &check("c", "10m"))
        .await
        .unwrap();
    created.metadata.resource_version = None;
    created.data["spec"]["interval"] = json!("5m");
    let status = api_error(api.replace("c", &PostParams::default(), &created).await);
    assert_eq!(status.code, 422);
    assert_eq!(
        status.message,
        "egresschecks.netreach.dev \"c\" is invalid: metadata.resourceVersion: Invalid value: 0: must be specified for an update"
    );
    assert_eq!(
        causes(&status),
        [(
            "metadata.resourceVersion".to_owned(),
            "FieldValueInvalid".to_owned(),
            "Invalid value: 0: must be specified for an update".to_owned()
        )]
    );
    // Built-in kinds allow the unconditional update.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut map = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "m"}})).unwrap(),
        )
        .await
        .unwrap();
    map.metadata.resource_version = None;
    map.data = Some([("k".to_owned(), "v".to_owned())].into());
    maps.replace("m", &PostParams::default(), &map)
        .await
        .unwrap();
}

#[tokio::test]
async fn field_selectors_take_only_the_fields_the_kind_supports() {
    let (_sim, client) = start(&[]).await;
    install_crds(&client).await;
    let api = checks(&client);
    for name in ["a", "b"] {
        api.create(&PostParams::default(), &check(name, "10m"))
            .await
            .unwrap();
    }
    let named = api
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(named.items.len(), 1);
    assert_eq!(named.items[0].name_any(), "b");
    let status = api_error(
        api.list(&ListParams::default().fields("spec.interval=10m"))
            .await,
    );
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, "field label not supported: spec.interval")
    );
    let watched = api
        .watch(&WatchParams::default().fields("spec.interval=10m"), "0")
        .await
        .map(|_| "a stream");
    assert_eq!(api_error(watched).code, 400);

    // A kind without field labels of its own: the name and namespace only.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let status = api_error(maps.list(&ListParams::default().fields("data.k=v")).await);
    assert_eq!(
        (status.code, status.message.as_str()),
        (
            400,
            "\"data.k\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
        )
    );

    // Pods: phase and spec fields, an absent bool reading as false.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "not-mapped"}]}})).unwrap(),
    )
    .await
    .unwrap();
    let count = |selector: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().fields(selector))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(
        count("status.phase=Pending,spec.hostNetwork=false").await,
        1
    );
    assert_eq!(count("status.phase=Running").await, 0);
    let status = api_error(
        pods.list(&ListParams::default().fields("spec.image=x"))
            .await,
    );
    assert_eq!(status.message, "field label not supported: spec.image");
}

#[tokio::test]
async fn the_all_namespaces_path_serves_only_list_and_watch() {
    let (_sim, client) = start(&[]).await;
    let everywhere: Api<ConfigMap> = Api::all(client.clone());
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "m", "namespace": "default"}})).unwrap();
    let status = api_error(everywhere.create(&PostParams::default(), &map).await);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (405, "MethodNotAllowed")
    );
    let status = api_error(
        everywhere
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await,
    );
    assert_eq!(status.code, 405);
    assert_eq!(api_error(everywhere.get("m").await).code, 404);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    maps.create(&PostParams::default(), &map).await.unwrap();
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn generate_name_gives_each_object_its_own_suffix() {
    let (_sim, client) = start(&[]).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let template: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).unwrap();
    let first = maps
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
    let second = maps
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
    for made in [&first, &second] {
        let name = made.name_any();
        assert!(
            name.starts_with("gen-") && name.len() == "gen-".len() + 5,
            "{name}"
        );
        assert_eq!(made.metadata.generate_name.as_deref(), Some("gen-"));
    }
    assert_ne!(first.name_any(), second.name_any());
}

#[tokio::test]
async fn versions_newer_than_the_store_are_refused_not_waited_for() {
    let (sim, _) = start(&[]).await;
    // kube-rs retries a 504 fifteen times by default; this test wants the first answer.
    let mut config = sim.kube_config();
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let current: u64 = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    let future = (current + 1000).to_string();
    let status = api_error(
        maps.list(
            &ListParams::default()
                .at(&future)
                .matching(VersionMatch::NotOlderThan),
        )
        .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (504, "Timeout"));
    assert_eq!(
        causes(&status),
        [(
            String::new(),
            "ResourceVersionTooLarge".to_owned(),
            "Too large resource version".to_owned()
        )]
    );
    // A watch from it ends at once with 410, so that the client relists.
    let mut stream = maps
        .watch(&WatchParams::default(), &future)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the watch answers at once")
        .unwrap()
        .unwrap();
    match first {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert!(
                e.message.contains("Too large resource version"),
                "{}",
                e.message
            );
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn watches_send_bookmarks_and_end_at_their_timeout() {
    let (_sim, client) = start(&[]).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let started = Instant::now();
    let events: Vec<WatchEvent<ConfigMap>> = tokio::time::timeout(
        Duration::from_secs(10),
        maps.watch(&WatchParams::default().timeout(2), &rv)
            .await
            .unwrap()
            .try_collect(),
    )
    .await
    .expect("the watch ends at its timeout")
    .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900),
        "ended after {elapsed:?}"
    );
    let bookmark = events
        .iter()
        .find_map(|e| match e {
            WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no bookmark in {events:?}"));
    assert_eq!(
        bookmark, rv,
        "nothing changed: the bookmark holds the version"
    );
}

#[tokio::test]
async fn a_resource_version_in_an_apply_or_a_delete_precondition_must_be_the_current_one() {
    let (_sim, client) = start(&[]).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let apply = |data: &str, version: Option<&str>| {
        let mut body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"k": data}});
        if let Some(version) = version {
            body["metadata"]["resourceVersion"] = json!(version);
        }
        body
    };
    let params = PatchParams::apply("writer").force();
    let first = api
        .patch("shared", &params, &Patch::Apply(apply("1", None)))
        .await
        .unwrap();
    let read = first.resource_version().unwrap();
    let second = api
        .patch("shared", &params, &Patch::Apply(apply("2", Some(&read))))
        .await
        .unwrap();
    // The version read before the last write is stale now: both refused, nothing changed.
    let stale = api_error(
        api.patch("shared", &params, &Patch::Apply(apply("3", Some(&read))))
            .await,
    );
    assert_eq!(stale.code, 409, "{stale:?}");
    let precondition = |version: &str| {
        DeleteParams::default().preconditions(kube::api::Preconditions {
            resource_version: Some(version.to_owned()),
            uid: None,
        })
    };
    let refused = api_error(api.delete("shared", &precondition(&read)).await);
    assert_eq!(refused.code, 409, "{refused:?}");
    let kept = api.get("shared").await.unwrap();
    assert_eq!(kept.data.unwrap()["k"], "2");
    api.delete("shared", &precondition(&second.resource_version().unwrap()))
        .await
        .unwrap();
    assert!(api.get_opt("shared").await.unwrap().is_none());
}
