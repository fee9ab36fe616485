//! Kubernetes NetworkPolicy: ipBlocks from resolved addresses, TCP and UDP ports and ranges,
//! cluster DNS.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Input, Output, PortRule, allows, cluster_dns, denies, metadata, object_name};
use crate::api::Flavor;

use super::shared::*;

pub fn network_policy(input: &Input<'_>) -> Output {
    let mut output = Output::default();
    let port = |rule: &PortRule| NetworkPolicyPort {
        protocol: Some(rule.transport.as_str().into()),
        port: Some(IntOrString::Int(i32::from(rule.from))),
        end_port: rule.is_range().then_some(i32::from(rule.to)),
    };
    let mut egress = Vec::new();
    // NetworkPolicy cannot deny: a Blocked endpoint is simply not allowed, and carved out of
    // any allowed range that holds it.
    let denies = denies(input);
    for allow in allows(input) {
        output
            .notes
            .extend(protocol_notes(Flavor::NetworkPolicy, &allow, false));
        match address_nets(Flavor::NetworkPolicy, &allow) {
            Ok(nets) => {
                let mut peers = Vec::new();
                for net in nets {
                    if inside_blocked(&net, &allow.ports, &denies) {
                        output.notes.push(note(
                            Flavor::NetworkPolicy,
                            &allow,
                            format!(
                                "{} lies inside an endpoint expected Blocked on a port it allows; left out, as the flavors that deny block it",
                                net.trunc()
                            ),
                        ));
                        continue;
                    }
                    let except = blocked_inside(&net, &allow.ports, &denies);
                    peers.push(NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: net.trunc().to_string(),
                            except: (!except.is_empty())
                                .then(|| except.iter().map(ToString::to_string).collect()),
                        }),
                        ..NetworkPolicyPeer::default()
                    });
                }
                if !peers.is_empty() {
                    egress.push(NetworkPolicyEgressRule {
                        to: Some(peers),
                        ports: Some(allow.ports.iter().map(port).collect()),
                    });
                }
            }
            Err(n) => output.notes.push(n),
        }
    }
    let (dns_namespace, dns_labels) = cluster_dns(input);
    egress.push(NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    dns_namespace,
                )])),
                match_expressions: None,
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(dns_labels),
                match_expressions: None,
            }),
            ip_block: None,
        }]),
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    protocol: Some(protocol.into()),
                    port: Some(IntOrString::Int(53)),
                    end_port: None,
                })
                .collect(),
        ),
    });
    let selector = input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.pod_selector.clone())
        .unwrap_or_default();
    let policy = NetworkPolicy {
        metadata: metadata(input, object_name(input, false), false),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(egress),
            ingress: None,
        }),
    };
    let mut value = to_value(&policy);
    value["apiVersion"] = "networking.k8s.io/v1".into();
    value["kind"] = "NetworkPolicy".into();
    output.objects.push(value);
    output
}
