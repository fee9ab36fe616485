//! The ConnectivityProfile kind: what must be reachable, and the policy that allows it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::duration::SpecDuration;
use super::endpoint::{DnsSpec, Endpoint, EndpointDefaults, ProxySpec};

/// A named, reusable list of outbound endpoints (typically one per vendor instance), with
/// defaults and optional policy emission.
// Several printer columns share a type, which clippy mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "netreach.dev",
    version = "v1alpha1",
    kind = "ConnectivityProfile",
    doc = "A reusable list of outbound endpoints (hosts or IPs, ports, protocols, TLS expectations) that workloads depend on, with optional policy emission.",
    namespaced,
    status = "ConnectivityProfileStatus",
    shortname = "cprof",
    category = "netreach",
    printcolumn(
        name = "Endpoints",
        type_ = "integer",
        json_path = ".status.endpointCount",
        description = "Endpoints declared"
    ),
    printcolumn(
        name = "Resolved",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Resolved\")].status",
        description = "Whether every host endpoint resolved"
    ),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"PolicyApplied\")].reason",
        description = "State of policy emission"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.proxy) || self.endpoints.all(e, e.ports.all(p, p.protocol != 'IKE'))").message("IKE runs over UDP and cannot go through an HTTP CONNECT proxy: remove proxy, or move the IKE ports to a profile without one").reason(Reason::FieldValueInvalid))]
pub struct ConnectivityProfileSpec {
    /// What this profile is for, e.g. "MaaS360 Cloud Extender, instance M3".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Defaults applied to every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<EndpointDefaults>,

    /// The endpoints that must be reachable. Names are unique.
    #[schemars(length(min = 1, max = 1000))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub endpoints: Vec<Endpoint>,

    /// HTTP CONNECT proxy the workloads (and so the probes) go through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,

    /// Name resolution settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSpec>,

    /// Network policy to emit for these endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
}

/// Policy emission settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!(has(self.egressGateway) && has(self.egressGateways))").message("set egressGateway (one gateway) or egressGateways (several), not both").reason(Reason::FieldValueInvalid))]
pub struct PolicySpec {
    /// Pods the emitted policy applies to (the workload that needs the endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// Policy formats to emit.
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub flavors: Vec<Flavor>,

    /// How often host names are re-resolved to refresh address-based policy. Default: 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<SpecDuration>,

    /// Where cluster DNS runs, so emitted policies keep name resolution working. Default:
    /// pods labelled `k8s-app: kube-dns` in `kube-system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<ClusterDns>,

    /// CiliumEgressGateway: the gateway nodes and the source address they use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_gateway: Option<EgressGateway>,

    /// CiliumEgressGateway with several gateways: Cilium spreads the pods over them. Emits
    /// `egressGateways` (the first also as `egressGateway`), which needs a Cilium whose
    /// CiliumEgressGatewayPolicy has that field; older ones refuse the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 16))]
    pub egress_gateways: Vec<EgressGateway>,

    /// Istio extras: route through `istio-egressgateway`, restrict the sidecar to the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioOptions>,

    /// Calico Enterprise adds domain rules (`destination.domains`); OSS Calico has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico_enterprise: Option<bool>,

    /// Priority of the AdminNetworkPolicy / ClusterNetworkPolicy (0–1000, lower wins). Default: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: Option<i32>,
}

/// The cluster DNS pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterDns {
    /// Namespace of the DNS pods. Default: kube-system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Labels of the DNS pods. Default: `k8s-app: kube-dns`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub pod_labels: std::collections::BTreeMap<String, String>,
}

impl PolicySpec {
    /// The egress gateways the profile names, in order: `egressGateways`, or the one
    /// `egressGateway`.
    pub fn gateways(&self) -> Vec<EgressGateway> {
        match &self.egress_gateway {
            Some(one) if self.egress_gateways.is_empty() => vec![one.clone()],
            _ => self.egress_gateways.clone(),
        }
    }
}

/// Gateway nodes for CiliumEgressGatewayPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!(has(self.egressIP) && has(self.interface))").message("set at most one of egressIP or interface").reason(Reason::FieldValueInvalid))]
pub struct EgressGateway {
    /// Labels of the gateway nodes.
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Source IP the gateway uses (what the vendor allowlists).
    #[serde(default, rename = "egressIP", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IP address").reason(Reason::FieldValueInvalid))]
    #[schemars(length(max = 64))]
    pub egress_ip: Option<String>,
    /// Interface whose first address is the source IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub interface: Option<String>,
}

/// Istio extras.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioOptions {
    /// Also emit Gateway, VirtualService and DestinationRule that send TLS through
    /// `istio-egressgateway` (passthrough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_gateway: Option<bool>,
    /// Also emit a Sidecar for the profile's pods with outboundTrafficPolicy REGISTRY_ONLY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_only: Option<bool>,
    /// Ambient mode: the waypoint (a Gateway of class `istio-waypoint` in the profile's
    /// namespace) egress goes through; ServiceEntries get the `istio.io/use-waypoint` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub waypoint: Option<String>,
}

crate::wire_enum! {
    /// A policy format NetReach can emit.
    pub enum Flavor {
        /// Kubernetes networking.k8s.io/v1 NetworkPolicy (ipBlocks from resolved addresses).
        NetworkPolicy,
        /// CiliumNetworkPolicy with toFQDNs.
        Cilium,
        /// CiliumEgressGatewayPolicy: fixed source IP through gateway nodes.
        CiliumEgressGateway,
        /// Calico projectcalico.org/v3 NetworkPolicy and GlobalNetworkSet.
        Calico,
        /// Istio ServiceEntry (and optional egress gateway objects).
        Istio,
        /// policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy.
        AdminNetworkPolicy,
        /// policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy.
        ClusterNetworkPolicy,
        /// OVN-Kubernetes / OpenShift k8s.ovn.org/v1 EgressFirewall.
        EgressFirewall,
    }
}

/// Observed state of a ConnectivityProfile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectivityProfileStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted, Resolved and PolicyApplied conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Number of endpoints declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_count: Option<i32>,
    /// Addresses each host endpoint resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ResolvedEndpoint>,
    /// Policy objects applied for this profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AppliedPolicy>,
}

/// Addresses of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedEndpoint {
    /// Endpoint name.
    pub name: String,
    /// Resolved IPv4 and IPv6 addresses, sorted.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// When the addresses were last resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Time>,
    /// Why resolution failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Addresses DNS stopped returning, still allowed until their window ends (two refresh
    /// intervals), so a CDN rotation never drops live connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained: Vec<RetainedAddress>,
}

/// An address kept in policy after DNS stopped returning it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetainedAddress {
    pub address: String,
    /// When DNS last returned it.
    pub last_seen: Time,
}

/// One emitted policy object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicy {
    /// Flavor that produced it.
    pub flavor: String,
    /// apiVersion of the object.
    pub api_version: String,
    /// Kind of the object.
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// Namespace of the object (empty for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}
