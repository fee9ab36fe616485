//! Endpoint, port and expectation types shared by ConnectivityProfile and inline EgressCheck
//! endpoints. Field docs here become `kubectl explain` text.

use std::{collections::BTreeMap, fmt, str::FromStr};

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::duration::SpecDuration;

/// RFC 1123 host name, lower case, with an optional leading `*.` wildcard label.
pub const HOST_PATTERN: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// DNS label used for endpoint names (they become result keys and policy rule names).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// Base64 of a SHA-256 digest (44 characters with padding).
pub const SPKI_PIN_PATTERN: &str = r"^[A-Za-z0-9+/]{43}=$";

/// One destination a workload depends on: a host name or an IP/CIDR, with its ports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.host) != has(self.cidr)").message("exactly one of host or cidr must be set").reason(Reason::FieldValueInvalid))]
pub struct Endpoint {
    /// Unique name of the endpoint within its list (a DNS label); results are keyed by it.
    #[schemars(regex(pattern = NAME_PATTERN), length(max = 63))]
    pub name: String,

    /// Host name to resolve and connect to (RFC 1123). A leading `*.` wildcard is accepted for
    /// policy emission only; wildcard hosts cannot be probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HOST_PATTERN), length(max = 253))]
    pub host: Option<String>,

    /// IP address or CIDR (canonical: no host bits set), instead of a host name. A CIDR wider
    /// than one address is probed at its first address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self) || (isCIDR(self) && cidr(self).masked() == cidr(self))").message("must be an IP address or a canonical CIDR such as 10.0.0.0/24 (no host bits set)").reason(Reason::FieldValueInvalid))]
    #[schemars(length(max = 64))]
    pub cidr: Option<String>,

    /// Ports to check on this endpoint, each with its protocol.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["port".into()]))]
    pub ports: Vec<PortSpec>,

    /// Whether a failure of this endpoint makes the check fail (Ready=False). Optional
    /// endpoints that fail only mark the check Degraded. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,

    /// Deadline for each port of this endpoint, all stages included. Default: the profile's
    /// `defaults.timeout`, else 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,

    /// TLS expectations for every TLS-capable port of this endpoint (a port's own `tls`
    /// overrides field by field). A `mode` set here applies only to the ports whose protocol
    /// it fits; the other ports keep the defaults' mode, else their protocol's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsExpectation>,
}

/// One port of an endpoint, with what must hold on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.http) || self.protocol in ['HTTP', 'HTTPS']").message("http expectations apply only to HTTP and HTTPS ports").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.smtp) || self.protocol in ['SMTP', 'SMTPS']").message("smtp expectations apply only to SMTP and SMTPS ports").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.mail) || self.protocol in ['IMAP', 'IMAPS', 'POP3', 'POP3S']").message("mail expectations apply only to IMAP, IMAPS, POP3 and POP3S ports").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.ldap) || self.protocol in ['LDAP', 'LDAPS']").message("ldap expectations apply only to LDAP and LDAPS ports").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.blockedBy) || (has(self.expect) && self.expect == 'Blocked')").message("blockedBy applies only to ports with expect: Blocked").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.expect) || self.expect != 'Blocked' || !(has(self.tls) || has(self.http) || has(self.smtp) || has(self.mail) || has(self.ldap))").message("a port with expect: Blocked is never connected to, so it takes no tls, http, smtp, mail or ldap expectations").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.tls) || !has(self.tls.mode) || (self.tls.mode == 'Implicit' ? self.protocol in ['TLS', 'HTTPS', 'SMTPS', 'IMAPS', 'POP3S', 'LDAPS'] : self.tls.mode == 'Disabled' ? self.protocol in ['TCP', 'HTTP', 'SMTP', 'IMAP', 'POP3', 'LDAP'] : self.protocol in ['SMTP', 'IMAP', 'POP3', 'LDAP'])").message("tls.mode does not fit the protocol: Implicit goes with TLS, HTTPS, SMTPS, IMAPS, POP3S and LDAPS; StartTLS and Opportunistic with SMTP, IMAP, POP3 and LDAP; Disabled with plain protocols").reason(Reason::FieldValueInvalid))]
pub struct PortSpec {
    /// TCP port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Protocol spoken on the port; it decides the stages the probe goes through.
    pub protocol: Protocol,

    /// What must hold: `Reachable` (default), or `Blocked` to prove that policy stops this
    /// port. A Blocked port passes when the connection fails before any application byte
    /// (refused, reset or timed out, or the proxy refuses CONNECT) and fails as
    /// UnexpectedlyReachable when it connects. Emitted policies never allow a Blocked port;
    /// flavors that can deny emit an explicit Deny for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,

    /// Further ways a Blocked port may be blocked: `DNS` also accepts a name that does not
    /// resolve (NXDOMAIN or no answer), as DNS-filtering firewalls block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub blocked_by: Vec<BlockedBy>,

    /// TLS expectations for this port (overrides the endpoint's and the defaults' field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsExpectation>,

    /// HTTP(S) check: path and expected status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpExpectation>,

    /// SMTP check: the AUTH mechanisms the server must offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpExpectation>,

    /// IMAP/POP3 check: the capabilities the server must announce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<MailExpectation>,

    /// LDAP check: optional simple bind and base-DN search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<LdapExpectation>,
}

/// What a port must do.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Expect {
    /// The port answers and every expectation holds.
    #[default]
    Reachable,
    /// Policy stops the connection before any application byte.
    Blocked,
}

/// A way of blocking that a Blocked port accepts besides a failed connection.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum BlockedBy {
    /// The name does not resolve (NXDOMAIN or no answer).
    #[serde(rename = "DNS")]
    Dns,
}

impl PortSpec {
    /// Whether the port must be blocked.
    pub fn blocked(&self) -> bool {
        self.expect == Some(Expect::Blocked)
    }
}

/// Application protocol spoken on a port.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Plain TCP connect.
    Tcp,
    /// TLS handshake right after connect.
    Tls,
    /// HTTP/1.1 GET.
    Http,
    /// HTTP/1.1 GET over TLS.
    Https,
    /// SMTP with optional STARTTLS.
    Smtp,
    /// SMTP over implicit TLS.
    Smtps,
    /// IMAP with optional STARTTLS.
    Imap,
    /// IMAP over implicit TLS.
    Imaps,
    /// POP3 with optional STLS.
    Pop3,
    /// POP3 over implicit TLS.
    Pop3s,
    /// LDAP with optional StartTLS extended operation.
    Ldap,
    /// LDAP over implicit TLS.
    Ldaps,
}

impl Protocol {
    pub const ALL: [Protocol; 12] = [
        Protocol::Tcp,
        Protocol::Tls,
        Protocol::Http,
        Protocol::Https,
        Protocol::Smtp,
        Protocol::Smtps,
        Protocol::Imap,
        Protocol::Imaps,
        Protocol::Pop3,
        Protocol::Pop3s,
        Protocol::Ldap,
        Protocol::Ldaps,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Smtp => "SMTP",
            Protocol::Smtps => "SMTPS",
            Protocol::Imap => "IMAP",
            Protocol::Imaps => "IMAPS",
            Protocol::Pop3 => "POP3",
            Protocol::Pop3s => "POP3S",
            Protocol::Ldap => "LDAP",
            Protocol::Ldaps => "LDAPS",
        }
    }

    /// The TLS mode a port gets when its spec names none.
    pub fn default_tls_mode(self) -> TlsMode {
        match self {
            Protocol::Tls
            | Protocol::Https
            | Protocol::Smtps
            | Protocol::Imaps
            | Protocol::Pop3s
            | Protocol::Ldaps => TlsMode::Implicit,
            Protocol::Smtp | Protocol::Imap | Protocol::Pop3 => TlsMode::Opportunistic,
            Protocol::Tcp | Protocol::Http | Protocol::Ldap => TlsMode::Disabled,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown protocol {s:?}"))
    }
}

/// How TLS is reached on a port. Default: Implicit for TLS, HTTPS, SMTPS, IMAPS, POP3S and
/// LDAPS; Opportunistic for SMTP, IMAP and POP3; Disabled for TCP, HTTP and LDAP.
///
/// On a port, the mode must fit its protocol: Implicit goes with TLS, HTTPS, SMTPS, IMAPS,
/// POP3S and LDAPS; StartTLS and Opportunistic with SMTP, IMAP, POP3 and LDAP; Disabled with
/// TCP, HTTP, SMTP, IMAP, POP3 and LDAP. On an endpoint or in `defaults`, the mode applies
/// only to the ports it fits and the others keep their own: an implicit-TLS protocol always
/// does TLS, and HTTP or TCP never gets TLS from an inherited mode.
///
/// Opportunistic upgrades when the server offers STARTTLS and stays plain otherwise, unless
/// `expectedIssuer` or `spkiPins` is set: those can only be checked over TLS, so a server
/// that does not offer STARTTLS (or a middlebox stripping it) fails the port with
/// StartTLSNotOffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum TlsMode {
    /// No TLS: the plain protocol only.
    Disabled,
    /// TLS from the first byte (HTTPS, SMTPS, IMAPS, POP3S, LDAPS, TLS).
    Implicit,
    /// Upgrade with STARTTLS/STLS/StartTLS; the server must support it.
    #[serde(rename = "StartTLS")]
    StartTls,
    /// Upgrade when the server offers it, stay plain otherwise.
    Opportunistic,
}

impl TlsMode {
    /// Whether this mode makes sense for `protocol`: the table of the port-level CEL rule.
    /// Implicit-TLS protocols only ever do TLS, plain protocols without an upgrade never do.
    pub fn fits(self, protocol: Protocol) -> bool {
        use Protocol as P;
        match self {
            TlsMode::Implicit => matches!(
                protocol,
                P::Tls | P::Https | P::Smtps | P::Imaps | P::Pop3s | P::Ldaps
            ),
            TlsMode::Disabled => matches!(
                protocol,
                P::Tcp | P::Http | P::Smtp | P::Imap | P::Pop3 | P::Ldap
            ),
            TlsMode::StartTls | TlsMode::Opportunistic => {
                matches!(protocol, P::Smtp | P::Imap | P::Pop3 | P::Ldap)
            }
        }
    }
}

/// What the presented TLS certificate must look like.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsExpectation {
    /// How TLS is reached; the defaults and inheritance rules are on [`TlsMode`], whose
    /// description is what the CRD schema shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,

    /// The issuer the certificate must come from. A different issuer means something in the
    /// path re-signs the traffic (an SSL-decrypting proxy): reported as TLS interception.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_issuer: Option<IssuerMatch>,

    /// What a mismatch of `expectedIssuer` or `spkiPins` does: Fail (default) or Warn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_mismatch: Option<MismatchAction>,

    /// Base64 SHA-256 hashes of acceptable SubjectPublicKeyInfo; any certificate in the
    /// presented chain may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = SPKI_PIN_PATTERN)))]
    pub spki_pins: Vec<String>,

    /// Server name to send (SNI) and to verify, when it differs from the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HOST_PATTERN), length(max = 253))]
    pub server_name: Option<String>,

    /// Warn when the leaf certificate expires within this many days. Default: 14.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3650))]
    pub min_days_valid: Option<i32>,

    /// Extra CA certificates (PEM) to trust besides the public web PKI roots. The operator
    /// reads them from the ConfigMap or Secret; `netreach check` reads them from
    /// `--secrets-dir DIR` as `DIR/<name>/<key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_ref: Option<CaBundleRef>,
}

/// Issuer distinguished-name attributes to match; every attribute set must match exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.organization) || has(self.commonName) || has(self.organizationalUnit)").message("set at least one of organization, commonName or organizationalUnit").reason(Reason::FieldValueRequired))]
pub struct IssuerMatch {
    /// Issuer O, e.g. `DigiCert Inc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub organization: Option<String>,
    /// Issuer CN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub common_name: Option<String>,
    /// Issuer OU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub organizational_unit: Option<String>,
}

impl fmt::Display for IssuerMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            ("CN", &self.common_name),
            ("O", &self.organization),
            ("OU", &self.organizational_unit),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={v}")))
        .collect();
        f.write_str(&parts.join(", "))
    }
}

/// What an issuer or pin mismatch does to the endpoint's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum MismatchAction {
    /// The endpoint fails.
    Fail,
    /// The endpoint passes with a warning.
    Warn,
}

/// A PEM bundle held in a ConfigMap or a Secret of the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.secret)").message("set exactly one of configMap or secret").reason(Reason::FieldValueInvalid))]
pub struct CaBundleRef {
    /// ConfigMap name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub config_map: Option<String>,
    /// Secret name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret: Option<String>,
    /// Key holding the PEM data. Default: `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// HTTP(S) expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpExpectation {
    /// Path to GET. Default: `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^\s]*$"), length(max = 2048))]
    pub path: Option<String>,
    /// Status codes that count as a pass. Empty (default): any HTTP answer means reachable,
    /// "404 Not Found" included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 100, max = 599)))]
    pub expected_status: Vec<i32>,
    /// Host header to send. Default: the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HOST_PATTERN), length(max = 253))]
    pub host_header: Option<String>,
    /// Check the source address traffic leaves with: the port is an echo service that
    /// answers the caller's address (a bare IP, or a JSON object), which must fall in
    /// `expected`. `sourceIP: {}` expects the profile's CiliumEgressGateway `egressIP`.
    #[serde(default, rename = "sourceIP", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<SourceIpExpectation>,
}

/// The source address an echo service must see.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceIpExpectation {
    /// Addresses or CIDRs the echoed address must fall in, e.g. the egress gateway's
    /// `192.0.2.10/32` or the agency's TIC/MTIPS egress range. Empty: the `egressIP` of the
    /// profile's CiliumEgressGateway policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isIP(c) || isCIDR(c))").message("each expected source must be an IP address or a CIDR").reason(Reason::FieldValueInvalid))]
    pub expected: Vec<String>,
    /// The JSON field holding the address when the echo answers JSON. Default: `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$"))]
    pub json_field: Option<String>,
}

/// SMTP expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmtpExpectation {
    /// AUTH mechanisms (LOGIN, PLAIN, CRAM-MD5, NTLM, …) the server must offer after EHLO
    /// (after STARTTLS when TLS is used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(regex(pattern = r"^[A-Z0-9][-_A-Z0-9]{0,31}$"))
    )]
    pub expected_auth: Vec<String>,
    /// Name to send in EHLO. Default: `netreach.invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HOST_PATTERN), length(max = 253))]
    pub ehlo_name: Option<String>,
}

/// IMAP/POP3 expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MailExpectation {
    /// Capabilities (IMAP CAPABILITY / POP3 CAPA items, e.g. IDLE, AUTH=PLAIN, USER) the
    /// server must announce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    pub expected_capabilities: Vec<String>,
}

/// LDAP expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LdapExpectation {
    /// Secret holding `bindDN` and `password` for a simple bind. Without it the probe binds
    /// anonymously (or only reads the root DSE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_secret_ref: Option<SecretRef>,
    /// Base DN to search (scope base) after the bind, proving the account can read it.
    #[serde(default, rename = "baseDN", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub base_dn: Option<String>,
}

/// A Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Secret name.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,
}

/// Defaults applied to every endpoint of the list.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointDefaults {
    /// Deadline per endpoint×port, all stages included. Default: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<SpecDuration>,
    /// TLS expectations for every TLS-capable port. A `mode` set here applies only to the
    /// ports whose protocol it fits; the other ports keep their protocol's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsExpectation>,
    /// Whether endpoints are required unless they say otherwise. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

/// An HTTP CONNECT proxy the probes go through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySpec {
    /// Proxy URL, `http://host:port`.
    #[schemars(
        regex(pattern = r"^http://[^\s/@]+(:[0-9]{1,5})?/?$"),
        length(max = 512)
    )]
    pub url: String,
    /// Secret with `username` and `password` for Basic proxy authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// Name resolution settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsSpec {
    /// Nameservers to ask instead of the system resolver, as `IP` or `IP:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new(r"self.all(ns, isIP(ns) || (ns.matches('^[0-9.]+:[0-9]{1,5}$') && isIP(ns.substring(0, ns.indexOf(':')))) || (ns.matches('^\\[[0-9a-fA-F:.]+\\]:[0-9]{1,5}$') && isIP(ns.substring(1, ns.indexOf(']')))))").message("each nameserver must be an IP address, IPv4:port or [IPv6]:port").reason(Reason::FieldValueInvalid))]
    pub nameservers: Vec<String>,
}

/// Labels, as Kubernetes writes them.
pub type Labels = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_tls_protocols_fit_only_implicit_and_plain_ones_never_get_tls() {
        for protocol in Protocol::ALL {
            assert!(
                protocol.default_tls_mode().fits(protocol),
                "{protocol}: its default mode fits"
            );
        }
        assert!(!TlsMode::Disabled.fits(Protocol::Https));
        assert!(!TlsMode::StartTls.fits(Protocol::Imaps));
        assert!(!TlsMode::Implicit.fits(Protocol::Http));
        assert!(!TlsMode::Opportunistic.fits(Protocol::Tcp));
        assert!(TlsMode::Disabled.fits(Protocol::Smtp));
    }
}
