//! Policy emission: a profile and its resolved addresses in, the objects of one policy flavor
//! out (no client). Every object allows exactly the declared endpoints and ports plus cluster
//! DNS; what a flavor cannot express is reported, never widened.

pub mod allowlist;
mod calico;
mod cilium;
mod egress_firewall;
mod istio;
mod networkpolicy;
mod networkpolicyapi;
mod shared;
pub mod types;

pub use egress_firewall::{
    Merged as MergedEgressFirewall, RULES_ANNOTATION as EGRESS_FIREWALL_RULES_ANNOTATION,
    merge_egress_firewall, unmerge_egress_firewall,
};

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use strum::IntoEnumIterator;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::api::endpoint::{IKE_PORT, NAT_T_PORT, Transport};
use crate::api::{ConnectivityProfileSpec, Flavor, PortSpec, Protocol};

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "netreach");
pub const PROFILE_LABEL: &str = "netreach.dev/profile";
pub const PROFILE_NAMESPACE_ANNOTATION: &str = "netreach.dev/profile-namespace";

/// What `netreach render` can produce: a policy flavor or an allowlist for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RenderFormat {
    Policy(Flavor),
    AllowlistCsv,
    AllowlistMarkdown,
}

impl FromStr for RenderFormat {
    type Err = String;

    /// Any case (`--flavor networkpolicy`). `spec.policy.flavors` is a schema enum and takes
    /// only the canonical spelling of [`Flavor::as_str`], which `Display` prints.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim();
        if wanted.eq_ignore_ascii_case("AllowlistCSV") {
            return Ok(RenderFormat::AllowlistCsv);
        }
        if wanted.eq_ignore_ascii_case("AllowlistMarkdown") {
            return Ok(RenderFormat::AllowlistMarkdown);
        }
        Flavor::iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(wanted))
            .map(RenderFormat::Policy)
            .ok_or_else(|| {
                let known: Vec<&str> = Flavor::iter()
                    .map(Flavor::as_str)
                    .chain(["AllowlistCSV", "AllowlistMarkdown"])
                    .collect();
                format!("unknown flavor {text:?}; known: {}", known.join(", "))
            })
    }
}

impl fmt::Display for RenderFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderFormat::Policy(flavor) => f.write_str(flavor.as_str()),
            RenderFormat::AllowlistCsv => f.write_str("AllowlistCSV"),
            RenderFormat::AllowlistMarkdown => f.write_str("AllowlistMarkdown"),
        }
    }
}

/// A profile to emit for.
pub struct Input<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub spec: &'a ConnectivityProfileSpec,
    /// Resolved addresses of host endpoints, by endpoint name.
    pub addresses: &'a BTreeMap<String, Vec<IpAddr>>,
}

/// One port, or an inclusive range of ports, of one transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub transport: Transport,
    pub from: u16,
    /// Equal to `from` for a single port.
    pub to: u16,
}

impl PortRule {
    pub fn single(transport: Transport, port: u16) -> Self {
        Self {
            transport,
            from: port,
            to: port,
        }
    }

    /// Whether the two share a port of the same transport.
    pub fn overlaps(&self, other: &PortRule) -> bool {
        self.transport == other.transport && self.from <= other.to && other.from <= self.to
    }

    pub fn is_range(&self) -> bool {
        self.to > self.from
    }

    /// `TCP 21`, `TCP 50000-50100`, for messages.
    pub fn shown(&self) -> String {
        if self.is_range() {
            format!("{} {}-{}", self.transport, self.from, self.to)
        } else {
            format!("{} {}", self.transport, self.from)
        }
    }
}

/// One endpoint as policies see it: a name to match, or networks, and ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    pub endpoint: String,
    /// The declared host, when the endpoint has one.
    pub host: Option<String>,
    /// The declared CIDR, or the host's resolved addresses as /32 and /128.
    pub nets: Vec<IpNet>,
    /// TCP and UDP ports and ranges: every declared port with its protocol's transport, an FTP
    /// port's declared passive range, and for IKE on 500 also UDP 4500 (NAT traversal).
    /// Sorted, without duplicates.
    pub ports: Vec<PortRule>,
    /// An IKE port is declared: IPsec's ESP (IP protocol 50) should pass too.
    pub esp: bool,
    /// FTP control ports declared without `ftp.passivePorts`: their data ports are unknown.
    pub ftp_without_range: Vec<u16>,
}

impl Allow {
    pub fn is_wildcard(&self) -> bool {
        self.host.as_deref().is_some_and(|h| h.starts_with("*."))
    }
}

/// The port rules one declared port needs.
pub fn port_rules(port: &PortSpec) -> Vec<PortRule> {
    let number = port.port as u16;
    let mut rules = vec![PortRule::single(port.protocol.transport(), number)];
    match port.protocol {
        Protocol::Ftp | Protocol::Ftps => {
            if let Some(range) = port.ftp.as_ref().and_then(|f| f.passive_ports.as_ref()) {
                rules.push(PortRule {
                    transport: Transport::Tcp,
                    from: range.from as u16,
                    to: range.to as u16,
                });
            }
        }
        Protocol::Ike if number == IKE_PORT => {
            rules.push(PortRule::single(Transport::Udp, NAT_T_PORT));
        }
        _ => {}
    }
    rules
}

/// The note of an FTP port whose passive range is unknown.
pub fn ftp_range_note(flavor: Flavor, allow: &Allow, port: u16) -> Note {
    Note {
        flavor,
        endpoint: allow.endpoint.clone(),
        message: format!(
            "FTP on port {port} without ftp.passivePorts: the passive data ports are unknown, so only the control port is allowed and listings and transfers will fail; declare the server's passive range"
        ),
    }
}

/// The note of an IKE endpoint in a flavor without ESP.
pub fn esp_note(flavor: Flavor, allow: &Allow) -> Note {
    Note {
        flavor,
        endpoint: allow.endpoint.clone(),
        message: "ESP (IP protocol 50) cannot be expressed in this flavor and is left out: the IPsec tunnel's traffic passes only if NAT traversal wraps it in UDP 4500, or if it is allowed elsewhere".into(),
    }
}

/// What the profile allows, endpoint by endpoint, in name order: the ports that are not
/// expected to be Blocked. A port one endpoint declares Blocked is allowed by no other
/// endpoint of the same host or CIDR (Blocked wins).
pub fn allows(input: &Input<'_>) -> Vec<Allow> {
    let blocked: Vec<(Option<&str>, Option<&str>, i32)> = input
        .spec
        .endpoints
        .iter()
        .flat_map(|e| {
            e.ports
                .iter()
                .filter(|p| p.blocked())
                .map(|p| (e.host.as_deref(), e.cidr.as_deref(), p.port))
        })
        .collect();
    endpoint_ports(input, |endpoint, port| {
        !port.blocked()
            && !blocked.contains(&(
                endpoint.host.as_deref(),
                endpoint.cidr.as_deref(),
                port.port,
            ))
    })
}

/// What the profile expects to be Blocked, endpoint by endpoint, in name order: emitters
/// never allow it, and flavors that can deny put an explicit Deny for it before their allows.
pub fn denies(input: &Input<'_>) -> Vec<Allow> {
    endpoint_ports(input, |_, port| port.blocked())
}

/// Endpoints with the ports `keep` selects (endpoints left without ports are left out), with
/// their networks: the declared CIDR, or the host's resolved addresses.
fn endpoint_ports(
    input: &Input<'_>,
    keep: impl Fn(&crate::api::endpoint::Endpoint, &crate::api::endpoint::PortSpec) -> bool,
) -> Vec<Allow> {
    let mut allows: Vec<Allow> = input
        .spec
        .endpoints
        .iter()
        .filter_map(|endpoint| {
            let kept: Vec<&crate::api::endpoint::PortSpec> = endpoint
                .ports
                .iter()
                .filter(|p| keep(endpoint, p))
                .collect();
            if kept.is_empty() {
                return None;
            }
            let nets = match (&endpoint.cidr, &endpoint.host) {
                (Some(cidr), _) => cidr
                    .parse::<IpNet>()
                    .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| vec![n])
                    .unwrap_or_default(),
                (None, Some(_)) => {
                    let mut nets: Vec<IpNet> = input
                        .addresses
                        .get(&endpoint.name)
                        .into_iter()
                        .flatten()
                        .map(|ip| IpNet::from(*ip))
                        .collect();
                    nets.sort();
                    nets.dedup();
                    nets
                }
                (None, None) => Vec::new(),
            };
            let mut ports: Vec<PortRule> = kept.iter().copied().flat_map(port_rules).collect();
            ports.sort_unstable();
            ports.dedup();
            let mut ftp_without_range: Vec<u16> = kept
                .iter()
                .filter(|p| matches!(p.protocol, Protocol::Ftp | Protocol::Ftps))
                .filter(|p| {
                    p.ftp
                        .as_ref()
                        .and_then(|f| f.passive_ports.as_ref())
                        .is_none()
                })
                .map(|p| p.port as u16)
                .collect();
            ftp_without_range.sort_unstable();
            ftp_without_range.dedup();
            Some(Allow {
                endpoint: endpoint.name.clone(),
                host: endpoint.host.clone(),
                nets,
                ports,
                esp: kept.iter().any(|p| p.protocol == Protocol::Ike),
                ftp_without_range,
            })
        })
        .collect();
    allows.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    allows
}

/// Something a flavor cannot express exactly, so it was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub flavor: Flavor,
    pub endpoint: String,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: endpoint {}: {}",
            self.flavor.as_str(),
            self.endpoint,
            self.message
        )
    }
}

/// The objects of one flavor, and what was left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    pub objects: Vec<Value>,
    pub notes: Vec<Note>,
}

/// Emits one flavor's objects for a profile.
pub fn emit(flavor: Flavor, input: &Input<'_>) -> Output {
    let mut output = match flavor {
        Flavor::NetworkPolicy => networkpolicy::network_policy(input),
        Flavor::Cilium => cilium::cilium(input),
        Flavor::CiliumEgressGateway => cilium::cilium_egress_gateway(input),
        Flavor::Calico => calico::calico(input),
        Flavor::Istio => istio::istio(input),
        Flavor::AdminNetworkPolicy => networkpolicyapi::admin_network_policy(input),
        Flavor::ClusterNetworkPolicy => networkpolicyapi::cluster_network_policy(input),
        Flavor::EgressFirewall => egress_firewall::egress_firewall(input),
    };
    output
        .notes
        .sort_by(|a, b| (&a.endpoint, &a.message).cmp(&(&b.endpoint, &b.message)));
    output
}

/// `netreach-<profile>` for namespaced objects; cluster-scoped ones carry the namespace too.
pub fn object_name(input: &Input<'_>, cluster_scoped: bool) -> String {
    let name = if cluster_scoped {
        format!("netreach-{}-{}", input.namespace, input.name)
    } else {
        format!("netreach-{}", input.name)
    };
    name.chars().take(253).collect()
}

/// Metadata every emitted object carries: managed by netreach, pointing back at its profile.
pub fn metadata(input: &Input<'_>, name: String, cluster_scoped: bool) -> ObjectMeta {
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (
            PROFILE_LABEL.to_owned(),
            input.name.chars().take(63).collect(),
        ),
    ]);
    let annotations = BTreeMap::from([(
        PROFILE_NAMESPACE_ANNOTATION.to_owned(),
        input.namespace.to_owned(),
    )]);
    ObjectMeta {
        name: Some(name),
        namespace: (!cluster_scoped).then(|| input.namespace.to_owned()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    }
}

/// The profile's pod selector labels (matchLabels only; expressions are refused by emitters
/// that cannot carry them).
pub fn pod_labels(input: &Input<'_>) -> BTreeMap<String, String> {
    input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.pod_selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default()
}

/// Cluster DNS namespace and pod labels.
pub fn cluster_dns(input: &Input<'_>) -> (String, BTreeMap<String, String>) {
    let dns = input
        .spec
        .policy
        .as_ref()
        .and_then(|p| p.dns.clone())
        .unwrap_or_default();
    let namespace = dns.namespace.unwrap_or_else(|| "kube-system".into());
    let labels = if dns.pod_labels.is_empty() {
        BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())])
    } else {
        dns.pod_labels
    };
    (namespace, labels)
}

/// Serializes emitted objects as a deterministic multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| {
            format!(
                "---\n{}",
                serde_norway::to_string(o).expect("emitted objects serialize")
            )
        })
        .collect()
}
