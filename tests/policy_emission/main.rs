//! Policy emission, one module per concern: `schema` (every flavor, golden file and rendered
//! example accepted by the upstream CRD schemas, in kube-sim and by an independent validator),
//! `golden` (`netreach render`, golden files, allowlists), `merge` (the shared EgressFirewall),
//! `oracle` (the property test: nothing undeclared allowed on any transport, no pod selected
//! beyond the profile's), `e2e` (the operator applying policies on kube-sim).
//! Shared here: the profiles several modules use.

#[path = "../support/mod.rs"]
mod support;

mod e2e;
mod golden;
mod merge;
mod oracle;
mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::IpNet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use netreach::api::{ConnectivityProfileSpec, Flavor, Protocol};
use netreach::emit::{
    EGRESS_FIREWALL_RULES_ANNOTATION, Input, allowlist, emit, merge_egress_firewall, to_yaml,
    unmerge_egress_firewall,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use strum::IntoEnumIterator;
use support::cluster::{Cluster, eventually};

use golden::*;
use merge::*;
use oracle::*;
use schema::*;

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn spec(value: Value) -> ConnectivityProfileSpec {
    serde_json::from_value(value).unwrap()
}

/// What the emitters read: one profile's spec and its resolved addresses.
pub(crate) fn profile_input<'a>(
    name: &'a str,
    namespace: &'a str,
    spec: &'a ConnectivityProfileSpec,
    addresses: &'a BTreeMap<String, Vec<IpAddr>>,
) -> Input<'a> {
    Input {
        name,
        namespace,
        spec,
        addresses,
    }
}

/// A profile that uses every kind of endpoint and every option.
pub(crate) fn rich_profile() -> (ConnectivityProfileSpec, BTreeMap<String, Vec<IpAddr>>) {
    let spec = spec(json!({
        "endpoints": [
            {"name": "mpnsv2-m3", "host": "mpnsv2.m3.maas360.com", "ports": [{"port": 443, "protocol": "HTTPS"}]},
            {"name": "internet-test", "host": "internettest.fiberlink.com", "ports": [{"port": 80, "protocol": "HTTP"}]},
            {"name": "directory", "host": "ad.customer.example.com", "ports": [{"port": 389, "protocol": "LDAP"}, {"port": 636, "protocol": "LDAPS"}]},
            {"name": "vendor-primary", "cidr": "18.233.3.236/32", "ports": [{"port": 443, "protocol": "TCP"}]},
            {"name": "vendor-range", "cidr": "2001:db8::/64", "ports": [{"port": 8443, "protocol": "TLS"}]},
            {"name": "not-example", "host": "example.org", "ports": [{"port": 443, "protocol": "HTTPS", "expect": "Blocked"}]},
            {"name": "not-internal", "cidr": "192.0.2.0/24", "ports": [{"port": 443, "protocol": "TCP", "expect": "Blocked"}, {"port": 22, "protocol": "TCP", "expect": "Blocked"}]},
        ],
        "policy": {
            "podSelector": {"matchLabels": {"app": "cloud-extender"}},
            "flavors": ["NetworkPolicy"],
            "egressGateway": {"nodeSelector": {"egress": "true"}, "egressIP": "192.0.2.10"},
            "istio": {"egressGateway": true, "registryOnly": true, "waypoint": "egress"},
        },
    }));
    let addresses = BTreeMap::from([
        (
            "not-example".to_owned(),
            vec!["93.184.215.14".parse().unwrap()],
        ),
        (
            "mpnsv2-m3".to_owned(),
            vec![
                "203.0.113.7".parse().unwrap(),
                "2001:db8:1::7".parse().unwrap(),
            ],
        ),
        (
            "internet-test".to_owned(),
            vec!["198.51.100.20".parse().unwrap()],
        ),
        (
            "directory".to_owned(),
            vec!["198.51.100.30".parse().unwrap()],
        ),
    ]);
    (spec, addresses)
}

/// The documents of a YAML stream, comments and empty documents left out.
pub(crate) fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// FTP with a passive range, FTPS without one, and two IKE peers, as an ITSM integration
/// declares them.
pub(crate) fn ftp_and_ike_profile() -> (ConnectivityProfileSpec, BTreeMap<String, Vec<IpAddr>>) {
    let spec = spec(json!({
        "endpoints": [
            {"name": "bulk", "host": "ftp.vendor.example.com", "ports": [{"port": 21, "protocol": "FTP", "ftp": {"passivePorts": {"from": 50000, "to": 50100}}}]},
            {"name": "bulk-legacy", "cidr": "203.0.113.50/32", "ports": [{"port": 990, "protocol": "FTPS"}]},
            {"name": "vpn-primary", "cidr": "18.233.3.236/32", "ports": [{"port": 500, "protocol": "IKE"}]},
            {"name": "vpn-dr", "cidr": "34.208.112.206/32", "ports": [{"port": 500, "protocol": "IKE", "ike": {"version": 1}}]},
        ],
        "policy": {
            "podSelector": {"matchLabels": {"app": "itsm-integration"}},
            "flavors": ["NetworkPolicy"],
            "egressGateway": {"nodeSelector": {"egress": "true"}, "egressIP": "192.0.2.10"},
        },
    }));
    let addresses = BTreeMap::from([("bulk".to_owned(), vec!["198.51.100.21".parse().unwrap()])]);
    (spec, addresses)
}
