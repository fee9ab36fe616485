//! The upstream policy kinds as typed structs, with exactly the upstream field names and enum
//! values (unknown fields refused), so an emitter cannot write a field that does not exist.
//! Only the fields NetReach emits are modelled.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

/// `matchLabels`-only selector (every selector NetReach writes is one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabels {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
}

/// A top-level object: apiVersion, kind, metadata, spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
}

pub mod cilium {
    //! cilium.io/v2 CiliumNetworkPolicy and CiliumEgressGatewayPolicy.
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct NetworkPolicySpec {
        pub endpoint_selector: MatchLabels,
        pub egress: Vec<EgressRule>,
        /// Deny rules win over every allow (toFQDNs is not supported in them).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub egress_deny: Vec<EgressRule>,
    }

    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EgressRule {
        #[serde(default, rename = "toFQDNs", skip_serializing_if = "Vec::is_empty")]
        pub to_fqdns: Vec<FqdnSelector>,
        #[serde(default, rename = "toCIDR", skip_serializing_if = "Vec::is_empty")]
        pub to_cidr: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub to_endpoints: Vec<MatchLabels>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub to_ports: Vec<PortRule>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct FqdnSelector {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub match_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub match_pattern: Option<String>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PortRule {
        pub ports: Vec<PortProtocol>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub rules: Option<L7Rules>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PortProtocol {
        /// A string upstream.
        pub port: String,
        /// The last port of a range.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub end_port: Option<u16>,
        pub protocol: L4Protocol,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "UPPERCASE")]
    pub enum L4Protocol {
        Tcp,
        Udp,
        Any,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct L7Rules {
        pub dns: Vec<FqdnSelector>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EgressGatewayPolicySpec {
        pub selectors: Vec<EgressSelector>,
        #[serde(rename = "destinationCIDRs")]
        pub destination_cidrs: Vec<String>,
        pub egress_gateway: EgressGateway,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub egress_gateways: Vec<EgressGateway>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EgressSelector {
        pub pod_selector: MatchLabels,
        pub namespace_selector: MatchLabels,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EgressGateway {
        pub node_selector: MatchLabels,
        #[serde(default, rename = "egressIP", skip_serializing_if = "Option::is_none")]
        pub egress_ip: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interface: Option<String>,
    }
}

pub mod calico {
    //! projectcalico.org/v3 NetworkPolicy and GlobalNetworkSet.
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct NetworkPolicySpec {
        pub selector: String,
        pub types: Vec<PolicyType>,
        pub egress: Vec<Rule>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum PolicyType {
        Egress,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Rule {
        pub action: Action,
        pub protocol: Protocol,
        pub destination: EntityRule,
    }

    /// A port or a `from:to` range (Calico's port is an int-or-string).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum Port {
        Number(u16),
        Range(String),
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Action {
        Allow,
        Deny,
    }

    /// A protocol name, or an IP protocol number (Calico's protocol is an int-or-string).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum Protocol {
        Named(ProtocolName),
        Number(u8),
    }

    impl Protocol {
        pub const TCP: Protocol = Protocol::Named(ProtocolName::Tcp);
        pub const UDP: Protocol = Protocol::Named(ProtocolName::Udp);
        /// IPsec's Encapsulating Security Payload.
        pub const ESP: Protocol = Protocol::Number(50);
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "UPPERCASE")]
    pub enum ProtocolName {
        Tcp,
        Udp,
    }

    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EntityRule {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub selector: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub namespace_selector: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub nets: Vec<String>,
        /// Calico Enterprise only.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub domains: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub ports: Vec<Port>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct GlobalNetworkSetSpec {
        pub nets: Vec<String>,
    }
}

pub mod istio {
    //! networking.istio.io/v1 ServiceEntry, Gateway, VirtualService, DestinationRule, Sidecar.
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ServiceEntrySpec {
        pub hosts: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub addresses: Vec<String>,
        pub ports: Vec<Port>,
        pub location: Location,
        pub resolution: Resolution,
        pub export_to: Vec<String>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Port {
        pub number: u16,
        pub name: String,
        pub protocol: String,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum Location {
        MeshExternal,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum Resolution {
        None,
        Static,
        Dns,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct GatewaySpec {
        pub selector: Labels,
        pub servers: Vec<Server>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Server {
        pub port: Port,
        pub hosts: Vec<String>,
        pub tls: ServerTls,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ServerTls {
        pub mode: String,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct VirtualServiceSpec {
        pub hosts: Vec<String>,
        pub gateways: Vec<String>,
        pub export_to: Vec<String>,
        pub tls: Vec<TlsRoute>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct TlsRoute {
        #[serde(rename = "match")]
        pub matches: Vec<TlsMatch>,
        pub route: Vec<RouteDestination>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct TlsMatch {
        pub gateways: Vec<String>,
        pub port: u16,
        pub sni_hosts: Vec<String>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct RouteDestination {
        pub destination: Destination,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Destination {
        pub host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub subset: Option<String>,
        pub port: PortSelector,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PortSelector {
        pub number: u16,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct DestinationRuleSpec {
        pub host: String,
        pub export_to: Vec<String>,
        pub subsets: Vec<Subset>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Subset {
        pub name: String,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct SidecarSpec {
        pub workload_selector: WorkloadSelector,
        pub egress: Vec<EgressListener>,
        pub outbound_traffic_policy: OutboundTrafficPolicy,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct WorkloadSelector {
        pub labels: Labels,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EgressListener {
        pub hosts: Vec<String>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct OutboundTrafficPolicy {
        pub mode: String,
    }
}

pub mod network_policy_api {
    //! policy.networking.k8s.io AdminNetworkPolicy (v1alpha1) and ClusterNetworkPolicy (v1alpha2).
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Subject {
        pub pods: PodsSelector,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PodsSelector {
        pub namespace_selector: MatchLabels,
        pub pod_selector: MatchLabels,
    }

    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Peer {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub networks: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub domain_names: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pods: Option<PodsSelector>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct AdminSpec {
        pub priority: i32,
        pub subject: Subject,
        pub egress: Vec<AdminEgressRule>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct AdminEgressRule {
        pub name: String,
        pub action: AdminAction,
        pub to: Vec<Peer>,
        pub ports: Vec<AdminPort>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum AdminAction {
        Allow,
        Deny,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct AdminPort {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub port_number: Option<PortNumber>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub port_range: Option<PortRange>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PortRange {
        pub protocol: String,
        pub start: u16,
        pub end: u16,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PortNumber {
        pub port: u16,
        pub protocol: String,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ClusterSpec {
        pub tier: Tier,
        pub priority: i32,
        pub subject: Subject,
        pub egress: Vec<ClusterEgressRule>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Tier {
        Admin,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ClusterEgressRule {
        pub name: String,
        pub action: ClusterAction,
        pub to: Vec<Peer>,
        pub protocols: Vec<ProtocolPort>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum ClusterAction {
        Accept,
        Deny,
    }

    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ProtocolPort {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tcp: Option<DestinationPort>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub udp: Option<DestinationPort>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct DestinationPort {
        pub destination_port: Number,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Number {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub number: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub range: Option<Range>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Range {
        pub start: u16,
        pub end: u16,
    }
}

pub mod ovn {
    //! k8s.ovn.org/v1 EgressFirewall.
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EgressFirewallSpec {
        pub egress: Vec<EgressFirewallRule>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct EgressFirewallRule {
        #[serde(rename = "type")]
        pub type_: RuleType,
        pub to: Destination,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub ports: Vec<Port>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum RuleType {
        Allow,
        Deny,
    }

    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Destination {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cidr_selector: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub dns_name: Option<String>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Port {
        pub protocol: String,
        pub port: u16,
    }
}
