//! Turning profiles and checks into a probe plan: one fully resolved [`Target`] per
//! endpoint×port, with defaults merged, ready to hand to the engine or to a probe pod.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::endpoint::{
    BlockedBy, CaBundleRef, DnsSpec, Expect, FtpExpectation, HttpExpectation, IkeExpectation,
    IssuerMatch, LdapExpectation, MailExpectation, MismatchAction, ProxySpec, SmtpExpectation,
    TlsExpectation,
};
use crate::api::load::{Document, Loaded};
use crate::api::profile::PolicySpec;
use crate::api::source::EndpointSource;
use crate::api::{ConnectivityProfileSpec, Flavor, Protocol, TlsMode};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MIN_DAYS_VALID: i32 = 14;

/// Everything the engine needs to probe one endpoint×port; serializable so the operator can
/// hand it to a probe pod as is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub required: bool,
    pub timeout_ms: u64,
    pub tls: TlsPlan,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpExpectation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpExpectation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<MailExpectation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<LdapExpectation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftp: Option<FtpExpectation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike: Option<IkeExpectation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSpec>,
    /// Reachable (default) or Blocked.
    #[serde(default, skip_serializing_if = "is_reachable")]
    pub expect: Expect,
    /// Further ways a Blocked port may be blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_by: Vec<BlockedBy>,
    /// The policies the profile emits that should block a Blocked port, as `Kind name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The source-address check of an HTTP(S) port, with its defaults applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<SourceIpPlan>,
}

fn is_reachable(expect: &Expect) -> bool {
    *expect == Expect::Reachable
}

/// What source address an echo service must report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceIpPlan {
    /// Addresses or CIDRs; empty when neither the port nor the profile's egress gateway
    /// names one (the probe then says what to set).
    #[serde(default)]
    pub expected: Vec<String>,
    /// JSON field holding the address when the echo answers JSON.
    pub json_field: String,
    /// The profile routes this traffic through a CiliumEgressGateway policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub egress_gateway: bool,
    /// How many gateways that policy spreads the pods over.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gateways: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The default JSON field of an echo service's answer.
pub const DEFAULT_SOURCE_IP_FIELD: &str = "ip";

/// TLS settings of one target with defaults applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsPlan {
    pub mode: TlsMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_issuer: Option<IssuerMatch>,
    pub on_mismatch: MismatchAction,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spki_pins: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    pub min_days_valid: i32,
    /// The extra CA bundle as PEM text, filled in by the operator from the ConfigMap or
    /// Secret before a probe pod runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_pem: Option<String>,
    /// Where the extra CA bundle lives, when set; the engine reads it from the secrets
    /// directory when `ca_bundle_pem` has not been filled in (`netreach check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_ref: Option<CaBundleRef>,
}

impl Target {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `host:port` as people write it.
    pub fn display(&self) -> String {
        let host = self.host.as_deref().or(self.cidr.as_deref()).unwrap_or("?");
        if host.contains(':') && !host.contains('/') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Planning is defined here, beside [`Target`]; the source itself is API-level.
impl EndpointSource<'_> {
    /// One target per endpoint×port, in declaration order.
    pub fn targets(&self) -> Vec<Target> {
        let defaults = self.defaults.cloned().unwrap_or_default();
        let policies = blocking_policies(self.policy, self.profile);
        let gateway = self
            .policy
            .filter(|p| p.flavors.contains(&Flavor::CiliumEgressGateway));
        // With several gateways the pods are spread over them: any of their addresses will do.
        // A gateway without one (an interface's address) leaves nothing to expect by default:
        // a partial list would fail only the runs that leave through that gateway.
        let gateways = gateway.map(|p| p.gateways()).unwrap_or_default();
        let mut gateway_ips: Vec<String> = gateways
            .iter()
            .map(|g| {
                let ip: std::net::IpAddr = g.egress_ip.as_deref()?.parse().ok()?;
                Some(ipnet::IpNet::from(ip).to_string())
            })
            .collect::<Option<_>>()
            .unwrap_or_default();
        gateway_ips.sort();
        gateway_ips.dedup();
        let mut targets = Vec::new();
        for endpoint in self.endpoints {
            let timeout = endpoint
                .timeout
                .as_ref()
                .or(defaults.timeout.as_ref())
                .map(|d| d.as_duration())
                .unwrap_or(DEFAULT_TIMEOUT);
            let required = endpoint.required.or(defaults.required).unwrap_or(true);
            for port in &endpoint.ports {
                let layers = [
                    port.tls.as_ref(),
                    endpoint.tls.as_ref(),
                    defaults.tls.as_ref(),
                ];
                let tls = merge_tls(&layers);
                targets.push(Target {
                    endpoint: endpoint.name.clone(),
                    host: endpoint.host.clone(),
                    cidr: endpoint.cidr.clone(),
                    port: u16::try_from(port.port).unwrap_or(0),
                    protocol: port.protocol,
                    required,
                    timeout_ms: timeout.as_millis() as u64,
                    tls: TlsPlan {
                        mode: tls_mode(&layers, port.protocol),
                        expected_issuer: tls.expected_issuer,
                        on_mismatch: tls.on_mismatch.unwrap_or(MismatchAction::Fail),
                        spki_pins: tls.spki_pins,
                        server_name: tls.server_name,
                        min_days_valid: tls.min_days_valid.unwrap_or(DEFAULT_MIN_DAYS_VALID),
                        ca_bundle_pem: None,
                        ca_bundle_ref: tls.ca_bundle_ref,
                    },
                    http: port.http.clone(),
                    smtp: port.smtp.clone(),
                    mail: port.mail.clone(),
                    ldap: port.ldap.clone(),
                    ftp: port.ftp.clone(),
                    ike: port.ike.clone(),
                    proxy: self.proxy.cloned(),
                    dns: self.dns.cloned(),
                    expect: port.expect.unwrap_or_default(),
                    blocked_by: port.blocked_by.clone(),
                    policies: if port.blocked() {
                        policies.clone()
                    } else {
                        Vec::new()
                    },
                    source_ip: port
                        .http
                        .as_ref()
                        .and_then(|h| h.source_ip.as_ref())
                        .map(|check| SourceIpPlan {
                            expected: if check.expected.is_empty() {
                                gateway_ips.clone()
                            } else {
                                check.expected.clone()
                            },
                            json_field: check
                                .json_field
                                .clone()
                                .unwrap_or_else(|| DEFAULT_SOURCE_IP_FIELD.to_owned()),
                            egress_gateway: gateway.is_some(),
                            gateways: gateways.len(),
                        }),
                });
            }
        }
        targets
    }
}

/// The objects the profile emits that can block traffic, as `Kind name`, named as the
/// emitters name them (`netreach-<profile>`, cluster-scoped `netreach-<namespace>-<profile>`,
/// the namespace's EgressFirewall `default`). Without a name: `the profile's <Kind>`.
fn blocking_policies(
    policy: Option<&PolicySpec>,
    profile: Option<(&str, Option<&str>)>,
) -> Vec<String> {
    let Some(policy) = policy else {
        return Vec::new();
    };
    let mut flavors = policy.flavors.clone();
    flavors.sort();
    flavors.dedup();
    let named = |kind: &str, cluster_scoped: bool| match profile {
        Some((name, Some(namespace))) if cluster_scoped => {
            format!("{kind} netreach-{namespace}-{name}")
        }
        Some((name, _)) if !cluster_scoped => format!("{kind} netreach-{name}"),
        _ => format!("the profile's {kind}"),
    };
    flavors
        .into_iter()
        .filter_map(|flavor| match flavor {
            Flavor::NetworkPolicy => Some(named("NetworkPolicy", false)),
            Flavor::Cilium => Some(named("CiliumNetworkPolicy", false)),
            Flavor::Calico => Some(named("Calico NetworkPolicy", false)),
            Flavor::AdminNetworkPolicy => Some(named("AdminNetworkPolicy", true)),
            Flavor::ClusterNetworkPolicy => Some(named("ClusterNetworkPolicy", true)),
            Flavor::EgressFirewall => Some("EgressFirewall default".to_owned()),
            Flavor::Istio if policy.istio.as_ref().and_then(|i| i.registry_only) == Some(true) => {
                Some(format!("{} (REGISTRY_ONLY)", named("Sidecar", false)))
            }
            // ServiceEntries and egress gateways route; they block nothing by themselves.
            Flavor::Istio | Flavor::CiliumEgressGateway => None,
        })
        .collect()
}

/// The TLS mode of one port. The port's own mode is taken as written (the schema's CEL rule
/// makes it fit the protocol); an endpoint's or the defaults' mode is inherited only where it
/// fits, because `defaults.tls.mode: Disabled` must not strip TLS from HTTPS, nor `StartTLS`
/// on an endpoint turn IMAPS into plaintext, nor `Implicit` wrap plain HTTP in TLS.
fn tls_mode(layers: &[Option<&TlsExpectation>; 3], protocol: Protocol) -> TlsMode {
    let [port, inherited @ ..] = layers;
    port.and_then(|t| t.mode)
        .or_else(|| {
            inherited
                .iter()
                .flatten()
                .filter_map(|t| t.mode)
                .find(|mode| mode.fits(protocol))
        })
        .unwrap_or_else(|| protocol.default_tls_mode())
}

/// Field-by-field merge, first set value wins (the mode aside: see [`tls_mode`]).
fn merge_tls(layers: &[Option<&TlsExpectation>]) -> TlsExpectation {
    let mut merged = TlsExpectation::default();
    for layer in layers.iter().flatten() {
        merged.expected_issuer = merged
            .expected_issuer
            .take()
            .or_else(|| layer.expected_issuer.clone());
        merged.on_mismatch = merged.on_mismatch.or(layer.on_mismatch);
        if merged.spki_pins.is_empty() {
            merged.spki_pins = layer.spki_pins.clone();
        }
        merged.server_name = merged
            .server_name
            .take()
            .or_else(|| layer.server_name.clone());
        merged.min_days_valid = merged.min_days_valid.or(layer.min_days_valid);
        merged.ca_bundle_ref = merged
            .ca_bundle_ref
            .take()
            .or_else(|| layer.ca_bundle_ref.clone());
    }
    merged
}

/// A named group of targets (one per profile or check in the input).
#[derive(Clone, Debug)]
pub struct PlanGroup {
    /// `ConnectivityProfile ns/name` or `EgressCheck ns/name`.
    pub source: String,
    pub targets: Vec<Target>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "EgressCheck {check} refers to ConnectivityProfile {profile}, which none of the input files holds; pass the profile's file too"
)]
pub struct MissingProfile {
    pub check: String,
    pub profile: String,
}

/// Plans what `netreach check` probes: every profile, and every check with inline endpoints
/// or with a profile that is not itself in the input (a check of a profile in the input adds
/// nothing new from this machine).
pub fn plan_documents(documents: &[Loaded]) -> Result<Vec<PlanGroup>, MissingProfile> {
    let key = |ns: &Option<String>, name: &Option<String>| {
        format!(
            "{}/{}",
            ns.as_deref().unwrap_or("default"),
            name.as_deref().unwrap_or_default()
        )
    };
    let profiles: Vec<(String, &ConnectivityProfileSpec)> = documents
        .iter()
        .filter_map(|l| match &l.document {
            Document::Profile(p) => Some((key(&p.metadata.namespace, &p.metadata.name), &p.spec)),
            Document::Check(_) => None,
        })
        .collect();
    let mut groups = Vec::new();
    for loaded in documents {
        match &loaded.document {
            Document::Profile(p) => groups.push(PlanGroup {
                source: format!(
                    "ConnectivityProfile {}",
                    key(&p.metadata.namespace, &p.metadata.name)
                ),
                targets: EndpointSource::from_profile(&p.spec)
                    .named(
                        p.metadata.namespace.as_deref().unwrap_or("default"),
                        p.metadata.name.as_deref().unwrap_or_default(),
                    )
                    .targets(),
            }),
            Document::Check(c) => {
                let check_key = key(&c.metadata.namespace, &c.metadata.name);
                let profile = match &c.spec.profile_ref {
                    Some(r) => {
                        let wanted = key(&c.metadata.namespace, &Some(r.name.clone()));
                        let found = profiles
                            .iter()
                            .find(|(k, _)| *k == wanted)
                            .map(|(_, spec)| *spec);
                        if found.is_none() {
                            return Err(MissingProfile {
                                check: check_key,
                                profile: wanted,
                            });
                        }
                        // The profile's own group already probes these endpoints, unless the
                        // check changes how (proxy or DNS).
                        if c.spec.proxy.is_none() && c.spec.dns.is_none() {
                            continue;
                        }
                        found
                    }
                    None => None,
                };
                if let Some(mut source) = EndpointSource::from_check(&c.spec, profile) {
                    let namespace = c.metadata.namespace.as_deref().unwrap_or("default");
                    source.profile = source.profile.map(|(name, _)| (name, Some(namespace)));
                    groups.push(PlanGroup {
                        source: format!("EgressCheck {check_key}"),
                        targets: source.targets(),
                    });
                }
            }
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::api::load::{Loaded, load_str};

    /// A profile `vendor` in `mdm` with one endpoint `e` (example.com), its `ports` (a YAML
    /// list) and, when given, `policy`.
    fn one_endpoint(ports: &str, policy: Option<&str>) -> Result<Vec<Loaded>, String> {
        let policy = policy
            .map(|p| format!("  policy: {p}\n"))
            .unwrap_or_default();
        let yaml = format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: vendor, namespace: mdm}}\nspec:\n  endpoints:\n    - {{name: e, host: example.com, ports: {ports}}}\n{policy}"
        );
        load_str(Path::new("t.yaml"), &yaml).map_err(|e| format!("{e}\n{yaml}"))
    }

    fn targets(defaults: &str, endpoint_tls: &str, ports: &str) -> Vec<Target> {
        let yaml = format!(
            "apiVersion: netreach.dev/v1alpha1\nkind: ConnectivityProfile\nmetadata: {{name: t}}\nspec:\n  defaults: {defaults}\n  endpoints:\n    - name: e\n      host: example.com\n      tls: {endpoint_tls}\n      ports: {ports}\n"
        );
        let loaded = load_str(Path::new("t.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        plan_documents(&loaded).unwrap().remove(0).targets
    }

    fn modes(targets: &[Target]) -> Vec<(Protocol, TlsMode)> {
        targets.iter().map(|t| (t.protocol, t.tls.mode)).collect()
    }

    #[test]
    fn an_inherited_tls_mode_applies_only_to_the_protocols_it_fits() {
        let all = "[{port: 1, protocol: HTTPS}, {port: 2, protocol: HTTP}, {port: 3, protocol: IMAPS}, {port: 4, protocol: IMAP}, {port: 5, protocol: LDAPS}, {port: 6, protocol: TCP}]";
        let disabled = targets("{tls: {mode: Disabled}}", "{}", all);
        assert_eq!(
            modes(&disabled),
            [
                (Protocol::Https, TlsMode::Implicit),
                (Protocol::Http, TlsMode::Disabled),
                (Protocol::Imaps, TlsMode::Implicit),
                (Protocol::Imap, TlsMode::Disabled),
                (Protocol::Ldaps, TlsMode::Implicit),
                (Protocol::Tcp, TlsMode::Disabled),
            ]
        );
        let starttls = targets("{}", "{mode: StartTLS}", all);
        assert_eq!(
            modes(&starttls),
            [
                (Protocol::Https, TlsMode::Implicit),
                (Protocol::Http, TlsMode::Disabled),
                (Protocol::Imaps, TlsMode::Implicit),
                (Protocol::Imap, TlsMode::StartTls),
                (Protocol::Ldaps, TlsMode::Implicit),
                (Protocol::Tcp, TlsMode::Disabled),
            ]
        );
        let implicit = targets("{}", "{mode: Implicit}", all);
        assert_eq!(
            modes(&implicit),
            [
                (Protocol::Https, TlsMode::Implicit),
                (Protocol::Http, TlsMode::Disabled),
                (Protocol::Imaps, TlsMode::Implicit),
                (Protocol::Imap, TlsMode::Opportunistic),
                (Protocol::Ldaps, TlsMode::Implicit),
                (Protocol::Tcp, TlsMode::Disabled),
            ]
        );
        // The endpoint's mode does not fit IMAP, the defaults' does: the next layer applies.
        let layered = targets(
            "{tls: {mode: StartTLS}}",
            "{mode: Implicit}",
            "[{port: 1, protocol: IMAP}, {port: 2, protocol: IMAPS}]",
        );
        assert_eq!(
            modes(&layered),
            [
                (Protocol::Imap, TlsMode::StartTls),
                (Protocol::Imaps, TlsMode::Implicit)
            ]
        );
        // A port's own mode wins over every inherited one.
        let own = targets(
            "{tls: {mode: StartTLS}}",
            "{}",
            "[{port: 1, protocol: SMTP, tls: {mode: Disabled}}]",
        );
        assert_eq!(modes(&own), [(Protocol::Smtp, TlsMode::Disabled)]);
    }

    #[test]
    fn fits_agrees_with_the_port_level_schema_rule() {
        for protocol in Protocol::ALL {
            for (mode, name) in [
                (TlsMode::Disabled, "Disabled"),
                (TlsMode::Implicit, "Implicit"),
                (TlsMode::StartTls, "StartTLS"),
                (TlsMode::Opportunistic, "Opportunistic"),
            ] {
                let port = format!("[{{port: 1, protocol: {protocol}, tls: {{mode: {name}}}}}]");
                let accepted = one_endpoint(&port, None).is_ok();
                assert_eq!(accepted, mode.fits(protocol), "{protocol} with {name}");
            }
        }
    }

    #[test]
    fn logins_are_accepted_only_on_the_protocols_they_fit() {
        let profile = |ports: &str| one_endpoint(&format!("[{ports}]"), None);
        let auth = |mechanism: &str| {
            format!("auth: {{mechanism: {mechanism}, credentialsSecretRef: {{name: m}}}}")
        };
        for (protocol, mechanism) in [("POP3", "APOP"), ("POP3S", "USER"), ("IMAP", "LOGIN")] {
            let ports = format!(
                "{{port: 1, protocol: {protocol}, mail: {{{}}}}}",
                auth(mechanism)
            );
            assert!(
                profile(&ports).is_ok(),
                "{protocol} {mechanism}: {:?}",
                profile(&ports)
            );
        }
        for (ports, complaint) in [
            (
                format!("{{port: 1, protocol: IMAPS, mail: {{{}}}}}", auth("APOP")),
                "APOP and USER apply only to POP3 and POP3S ports",
            ),
            (
                format!(
                    "{{port: 1, protocol: POP3, mail: {{mailbox: Archive, {}}}}}",
                    auth("USER")
                ),
                "mail.mailbox applies only to IMAP and IMAPS ports",
            ),
            (
                format!("{{port: 1, protocol: SMTP, smtp: {{{}}}}}", auth("USER")),
                "supported values: \"PLAIN\", \"LOGIN\", \"CRAM-MD5\", \"NTLM\"",
            ),
            (
                "{port: 1, protocol: LDAP, ldap: {search: {filter: \"(uid=*)\"}}}".to_owned(),
                "ldap.search needs baseDN",
            ),
            (
                "{port: 1, protocol: SMTP, smtp: {envelope: {from: a@b, to: [\"x y@z\"]}}}"
                    .to_owned(),
                "smtp.envelope.to",
            ),
        ] {
            let error = profile(&ports).expect_err(&ports);
            assert!(error.contains(complaint), "{ports}: {error}");
        }
    }

    #[test]
    fn the_ca_bundle_reference_reaches_the_plan() {
        let planned = targets(
            "{tls: {caBundleRef: {configMap: corp-ca}}}",
            "{}",
            "[{port: 443, protocol: HTTPS}]",
        );
        let reference = planned[0].tls.ca_bundle_ref.as_ref().unwrap();
        assert_eq!(reference.config_map.as_deref(), Some("corp-ca"));
        assert_eq!(planned[0].tls.ca_bundle_pem, None);
    }

    fn planned(policy: &str, ports: &str) -> Vec<Target> {
        let loaded = one_endpoint(ports, Some(policy)).unwrap_or_else(|e| panic!("{e}"));
        plan_documents(&loaded).unwrap().remove(0).targets
    }

    #[test]
    fn a_blocked_port_names_the_policies_that_should_block_it() {
        let planned = planned(
            "{flavors: [EgressFirewall, NetworkPolicy, CiliumEgressGateway, AdminNetworkPolicy], egressGateway: {nodeSelector: {gw: x}}}",
            "[{port: 443, protocol: HTTPS, expect: Blocked}, {port: 80, protocol: HTTP}]",
        );
        assert_eq!(planned[0].expect, Expect::Blocked);
        assert_eq!(
            planned[0].policies,
            [
                "NetworkPolicy netreach-vendor",
                "AdminNetworkPolicy netreach-mdm-vendor",
                "EgressFirewall default"
            ]
        );
        assert_eq!(planned[1].expect, Expect::Reachable);
        assert!(planned[1].policies.is_empty());
    }

    #[test]
    fn an_empty_source_ip_check_expects_the_egress_gateways_address() {
        let port = "[{port: 443, protocol: HTTPS, http: {sourceIP: {}}}]";
        let gateway = planned(
            "{flavors: [CiliumEgressGateway], egressGateway: {nodeSelector: {gw: x}, egressIP: 192.0.2.10}}",
            port,
        );
        let plan = gateway[0].source_ip.as_ref().unwrap();
        assert_eq!(plan.expected, ["192.0.2.10/32"]);
        assert_eq!(plan.json_field, "ip");
        assert!(plan.egress_gateway);
        // The gateway settings alone, without the flavor, set no expectation.
        let unused = planned(
            "{flavors: [Cilium], egressGateway: {nodeSelector: {gw: x}, egressIP: 192.0.2.10}}",
            port,
        );
        assert!(unused[0].source_ip.as_ref().unwrap().expected.is_empty());
        let explicit = planned(
            "{flavors: [CiliumEgressGateway], egressGateway: {nodeSelector: {gw: x}, egressIP: 192.0.2.10}}",
            "[{port: 443, protocol: HTTPS, http: {sourceIP: {expected: [198.51.100.0/24], jsonField: origin}}}]",
        );
        let plan = explicit[0].source_ip.as_ref().unwrap();
        assert_eq!(plan.expected, ["198.51.100.0/24"]);
        assert_eq!(plan.json_field, "origin");
    }

    #[test]
    fn with_several_gateways_any_of_their_addresses_is_expected_when_each_names_one() {
        let several = planned(
            "{flavors: [CiliumEgressGateway], egressGateways: [{nodeSelector: {gw: a}, egressIP: 192.0.2.10}, {nodeSelector: {gw: b}, interface: eth1}, {nodeSelector: {gw: c}, egressIP: 192.0.2.12}]}",
            "[{port: 443, protocol: HTTPS, http: {sourceIP: {}}}]",
        );
        let plan = several[0].source_ip.as_ref().unwrap();
        // The gateway that names an interface has no address to expect, and a run through it
        // would fail where the others pass: no default, and the probe says what to set.
        assert!(plan.expected.is_empty(), "{:?}", plan.expected);
        assert!(plan.egress_gateway);
        assert_eq!(plan.gateways, 3);
        let every = planned(
            "{flavors: [CiliumEgressGateway], egressGateways: [{nodeSelector: {gw: a}, egressIP: 192.0.2.12}, {nodeSelector: {gw: b}, egressIP: 192.0.2.10}, {nodeSelector: {gw: c}, egressIP: 192.0.2.12}]}",
            "[{port: 443, protocol: HTTPS, http: {sourceIP: {}}}]",
        );
        let plan = every[0].source_ip.as_ref().unwrap();
        assert_eq!(plan.expected, ["192.0.2.10/32", "192.0.2.12/32"]);
        assert_eq!(plan.gateways, 3);
    }

    #[test]
    fn blocked_by_and_expectations_on_a_blocked_port_are_refused_by_the_schema() {
        let refused = |port: &str| one_endpoint(&format!("[{port}]"), None).is_err();
        assert!(!refused(
            "{port: 1, protocol: TCP, expect: Blocked, blockedBy: [DNS]}"
        ));
        assert!(refused("{port: 1, protocol: TCP, blockedBy: [DNS]}"));
        assert!(refused(
            "{port: 1, protocol: HTTPS, expect: Blocked, http: {path: /}}"
        ));
        assert!(refused("{port: 1, protocol: TCP, http: {sourceIP: {}}}"));
        assert!(refused(
            "{port: 1, protocol: HTTP, http: {sourceIP: {expected: [not-an-ip]}}}"
        ));
    }

    #[test]
    fn one_gateway_or_several_but_not_both() {
        let loads = |policy: &str| one_endpoint("[{port: 1, protocol: TCP}]", Some(policy));
        let gw = "{nodeSelector: {gw: a}}";
        assert!(
            loads(&format!(
                "{{flavors: [CiliumEgressGateway], egressGateways: [{gw}, {gw}]}}"
            ))
            .is_ok()
        );
        let both = loads(&format!(
            "{{flavors: [CiliumEgressGateway], egressGateway: {gw}, egressGateways: [{gw}]}}"
        ))
        .unwrap_err();
        assert!(both.contains("not both"), "{both}");
        assert!(loads("{flavors: [CiliumEgressGateway], egressGateways: []}").is_err());
    }
}
