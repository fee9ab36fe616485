//! What the integration test files share: an emulator with the repository's CRDs, EgressCheck
//! objects, and the API error of a failed call.

#![allow(dead_code)] // each test file uses its own part

use std::collections::HashMap;
use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::{Client, core::Status};
use kube_sim::{KubeSim, Options};
use serde_json::json;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An emulator whose images map to local executables, and a client for it.
pub async fn start(images: &[(&str, &str)]) -> (KubeSim, Client) {
    let images: HashMap<String, PathBuf> = images
        .iter()
        .map(|(image, path)| (image.to_string(), PathBuf::from(path)))
        .collect();
    let sim = KubeSim::start(Options {
        images,
        ..Options::default()
    })
    .await
    .unwrap();
    let client = sim.client();
    (sim, client)
}

/// Installs the repository's CRDs.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in [
        "connectivityprofiles.netreach.dev.yaml",
        "egresschecks.netreach.dev.yaml",
    ] {
        let text = std::fs::read_to_string(repo().join("crds").join(file)).unwrap();
        let crd: CustomResourceDefinition = serde_norway::from_str(&text).unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
}

pub fn checks_resource() -> ApiResource {
    ApiResource {
        group: "netreach.dev".into(),
        version: "v1alpha1".into(),
        api_version: "netreach.dev/v1alpha1".into(),
        kind: "EgressCheck".into(),
        plural: "egresschecks".into(),
    }
}

pub fn check(name: &str, interval: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "netreach.dev/v1alpha1",
        "kind": "EgressCheck",
        "metadata": {"name": name, "labels": {"team": "mdm"}},
        "spec": {"endpoints": [{"name": "a", "host": "a.example.com", "ports": [{"port": 443, "protocol": "HTTPS"}]}], "interval": interval},
    }))
    .unwrap()
}

pub fn checks(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), "default", &checks_resource())
}

/// The API error of a call that must fail.
pub fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// (field, reason, message) of each cause of an error.
pub fn causes(status: &Status) -> Vec<(String, String, String)> {
    status
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| (c.field.clone(), c.reason.clone(), c.message.clone()))
                .collect()
        })
        .unwrap_or_default()
}
