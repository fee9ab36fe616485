//! Endpoint, port and expectation types shared by ConnectivityProfile and inline EgressCheck
//! endpoints. Field docs here become `kubectl explain` text.

use std::{collections::BTreeMap, fmt, str::FromStr};

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::duration::SpecDuration;

/// RFC 1123 host name, lower case, with an optional leading `*.` wildcard label.
pub const HOST_PATTERN: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// What a host name that does not match [`HOST_PATTERN`] got wrong, in words.
pub fn host_name_problem(text: &str) -> String {
    let offending = text.char_indices().find(|(_, c)| !c.is_ascii());
    match offending {
        Some((at, c)) => format!(
            "host names are lowercase ASCII; write internationalized names in punycode (xn--…): {} at byte {at} is not ASCII",
            c.escape_unicode()
        ),
        None => match text.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '*'))) {
            Some(c) => format!(
                "host names are lowercase letters, digits, '-' and '.' (with an optional leading '*.'): {} is not allowed",
                c.escape_debug()
            ),
            None => "host names are dot-separated labels of at most 63 lowercase letters, digits and '-', each starting and ending with a letter or digit, with an optional leading '*.'".to_owned(),
        },
    }
}

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
#[x_kube(validation = Rule::new("!has(self.mail) || !has(self.mail.auth) || !(self.mail.auth.mechanism in ['APOP', 'USER']) || self.protocol in ['POP3', 'POP3S']").message("mail.auth.mechanism APOP and USER apply only to POP3 and POP3S ports; IMAP logs in with LOGIN, PLAIN, CRAM-MD5 or NTLM").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.mail) || !has(self.mail.mailbox) || self.protocol in ['IMAP', 'IMAPS']").message("mail.mailbox applies only to IMAP and IMAPS ports (POP3 has only the inbox)").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.ftp) || self.protocol in ['FTP', 'FTPS']").message("ftp settings apply only to FTP and FTPS ports").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.ike) || self.protocol == 'IKE'").message("ike settings apply only to IKE ports").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.tls) || !has(self.tls.mode) || (self.tls.mode == 'Implicit' ? self.protocol in ['TLS', 'HTTPS', 'SMTPS', 'IMAPS', 'POP3S', 'LDAPS', 'FTPS'] : self.tls.mode == 'Disabled' ? self.protocol in ['TCP', 'HTTP', 'SMTP', 'IMAP', 'POP3', 'LDAP', 'FTP', 'IKE'] : self.protocol in ['SMTP', 'IMAP', 'POP3', 'LDAP', 'FTP'])").message("tls.mode does not fit the protocol: Implicit goes with TLS, HTTPS, SMTPS, IMAPS, POP3S, LDAPS and FTPS; StartTLS and Opportunistic with SMTP, IMAP, POP3, LDAP and FTP; Disabled with plain protocols").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.blockedBy) || (has(self.expect) && self.expect == 'Blocked')").message("blockedBy applies only to ports with expect: Blocked").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.expect) || self.expect != 'Blocked' || !(has(self.tls) || has(self.http) || has(self.smtp) || has(self.mail) || has(self.ldap) || has(self.ftp) || has(self.ike))").message("a port with expect: Blocked is never connected to, so it takes no tls, http, smtp, mail, ldap, ftp or ike settings").reason(Reason::FieldValueInvalid))]
pub struct PortSpec {
    /// Port number (TCP; UDP for IKE).
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

    /// FTP/FTPS check: login, data channel and path to list; the server's passive range for
    /// policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftp: Option<FtpExpectation>,

    /// IKE check: the IKE version to speak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike: Option<IkeExpectation>,
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
    /// FTP with optional AUTH TLS, login and a passive data channel (LIST).
    Ftp,
    /// FTP over implicit TLS.
    Ftps,
    /// IPsec VPN reachability: one IKE_SA_INIT (or IKEv1 Main Mode) exchange over UDP.
    Ike,
}

impl Protocol {
    pub const ALL: [Protocol; 15] = [
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
        Protocol::Ftp,
        Protocol::Ftps,
        Protocol::Ike,
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
            Protocol::Ftp => "FTP",
            Protocol::Ftps => "FTPS",
            Protocol::Ike => "IKE",
        }
    }

    /// The transport a firewall sees for this protocol: UDP for IKE, TCP for the rest.
    pub fn transport(self) -> Transport {
        match self {
            Protocol::Ike => Transport::Udp,
            _ => Transport::Tcp,
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
            | Protocol::Ldaps
            | Protocol::Ftps => TlsMode::Implicit,
            Protocol::Smtp | Protocol::Imap | Protocol::Pop3 | Protocol::Ftp => {
                TlsMode::Opportunistic
            }
            Protocol::Tcp | Protocol::Http | Protocol::Ldap | Protocol::Ike => TlsMode::Disabled,
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

/// How TLS is reached on a port. Default: Implicit for TLS, HTTPS, SMTPS, IMAPS, POP3S, LDAPS
/// and FTPS; Opportunistic for SMTP, IMAP, POP3 and FTP; Disabled for TCP, HTTP, LDAP and IKE.
///
/// On a port, the mode must fit its protocol: Implicit goes with TLS, HTTPS, SMTPS, IMAPS,
/// POP3S, LDAPS and FTPS; StartTLS and Opportunistic (FTP: AUTH TLS) with SMTP, IMAP, POP3,
/// LDAP and FTP; Disabled with TCP, HTTP, SMTP, IMAP, POP3, LDAP, FTP and IKE. On an endpoint or in `defaults`, the mode applies
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
                P::Tls | P::Https | P::Smtps | P::Imaps | P::Pop3s | P::Ldaps | P::Ftps
            ),
            TlsMode::Disabled => matches!(
                protocol,
                P::Tcp | P::Http | P::Smtp | P::Imap | P::Pop3 | P::Ldap | P::Ftp | P::Ike
            ),
            TlsMode::StartTls | TlsMode::Opportunistic => {
                matches!(protocol, P::Smtp | P::Imap | P::Pop3 | P::Ldap | P::Ftp)
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
    /// `expected`. `sourceIP: {}` expects the profile's CiliumEgressGateway `egressIP` (any of
    /// them with several gateways, when each names one).
    #[serde(default, rename = "sourceIP", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<SourceIpExpectation>,
}

/// The source address an echo service must see.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceIpExpectation {
    /// Addresses or CIDRs the echoed address must fall in, e.g. the egress gateway's
    /// `192.0.2.10/32` or the agency's TIC/MTIPS egress range. Empty: the `egressIP` of the
    /// profile's CiliumEgressGateway policy (any gateway's, with several, when each names one).
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
    /// Log in to the relay for real with one mechanism (after STARTTLS when TLS is used), as
    /// the application would. A refused login fails the port with AuthFailed. PLAIN and LOGIN,
    /// which send the password as it is, run only over TLS unless `tls.mode` is Disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SmtpAuth>,
    /// Sender and recipients to try: MAIL FROM and each RCPT TO are sent, then RSET and QUIT.
    /// No DATA is ever sent, so no message is: this only proves the relay would accept them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<SmtpEnvelope>,
}

/// A real SMTP login.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmtpAuth {
    /// The AUTH mechanism the application uses.
    pub mechanism: SmtpMechanism,
    /// Secret with the keys `username` and `password`, plus `domain` for NTLM (optional when
    /// the username carries it as `DOMAIN\user` or `user@domain`).
    pub credentials_secret_ref: SecretRef,
}

/// SMTP AUTH mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SmtpMechanism {
    /// SASL PLAIN (RFC 4616).
    #[serde(rename = "PLAIN")]
    Plain,
    /// AUTH LOGIN: username, then password.
    #[serde(rename = "LOGIN")]
    Login,
    /// CRAM-MD5 (RFC 2195) challenge-response.
    #[serde(rename = "CRAM-MD5")]
    CramMd5,
    /// NTLM (NTLMv2), as Exchange offers it.
    #[serde(rename = "NTLM")]
    Ntlm,
}

/// The SMTP envelope to try; nothing is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmtpEnvelope {
    /// Sender address for MAIL FROM, e.g. `itsm@customer.example.com`.
    #[schemars(regex(pattern = MAIL_ADDRESS_PATTERN), length(max = 320))]
    pub from: String,
    /// Recipients for RCPT TO; each must be accepted.
    #[schemars(length(min = 1, max = 16), inner(regex(pattern = MAIL_ADDRESS_PATTERN), length(max = 320)))]
    pub to: Vec<String>,
}

/// An e-mail address as MAIL FROM and RCPT TO carry it (no spaces, brackets or line breaks).
pub const MAIL_ADDRESS_PATTERN: &str = r"^[^\s<>@]+@[^\s<>@]+$";

/// IMAP/POP3 expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MailExpectation {
    /// Capabilities (IMAP CAPABILITY / POP3 CAPA items, e.g. IDLE, AUTH=PLAIN, USER) the
    /// server must announce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    pub expected_capabilities: Vec<String>,
    /// Log in to the mailbox for real with one mechanism, as the application would. IMAP:
    /// LOGIN (the IMAP LOGIN command), PLAIN, CRAM-MD5 or NTLM. POP3: USER (USER/PASS),
    /// APOP, PLAIN, LOGIN, CRAM-MD5 or NTLM. After the login IMAP opens `mailbox` read-only
    /// (EXAMINE) and POP3 runs STAT; both record the message count. Nothing is read or
    /// deleted. LOGIN, PLAIN and USER, which send the password as it is, run only over TLS
    /// unless `tls.mode` is Disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<MailAuth>,
    /// IMAP mailbox to open read-only after the login. Default: `INBOX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub mailbox: Option<String>,
}

/// A real IMAP or POP3 login.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MailAuth {
    /// The login mechanism the application uses.
    pub mechanism: MailMechanism,
    /// Secret with the keys `username` and `password`, plus `domain` for NTLM (optional when
    /// the username carries it as `DOMAIN\user` or `user@domain`).
    pub credentials_secret_ref: SecretRef,
}

/// IMAP and POP3 login mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum MailMechanism {
    /// IMAP: the LOGIN command. POP3: AUTH LOGIN.
    #[serde(rename = "LOGIN")]
    Login,
    /// SASL PLAIN through AUTHENTICATE (IMAP) or AUTH (POP3).
    #[serde(rename = "PLAIN")]
    Plain,
    /// CRAM-MD5 challenge-response.
    #[serde(rename = "CRAM-MD5")]
    CramMd5,
    /// NTLM (NTLMv2), as Exchange offers it.
    #[serde(rename = "NTLM")]
    Ntlm,
    /// POP3 only: APOP, the digest of the greeting's timestamp and the password.
    #[serde(rename = "APOP")]
    Apop,
    /// POP3 only: USER and PASS.
    #[serde(rename = "USER")]
    User,
}

/// LDAP expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.search) || has(self.baseDN)").message("ldap.search needs baseDN: the entry to search under").reason(Reason::FieldValueRequired))]
pub struct LdapExpectation {
    /// Secret holding `bindDN` and `password` for a simple bind. The bind name is passed as
    /// written, so AD's `DOMAIN\user` and `user@domain` forms work. Without it the probe
    /// binds anonymously (or only reads the root DSE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_secret_ref: Option<SecretRef>,
    /// Base DN to read after the bind (scope base), proving the account can read it, e.g.
    /// `OU=Staff,DC=corp,DC=example,DC=com`.
    #[serde(default, rename = "baseDN", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub base_dn: Option<String>,
    /// Search under `baseDN` as the directory import does, and require entries back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<LdapSearch>,
}

/// An LDAP search that must return entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LdapSearch {
    /// RFC 4515 filter, e.g. `(&(objectClass=user)(mail=*))`. Default: `(objectClass=*)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\(.*\)$"), length(max = 4096))]
    pub filter: Option<String>,
    /// How deep to search under `baseDN`. Default: Subtree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<SearchScope>,
    /// Fewest entries the search must return (an account without read rights often gets an
    /// empty success, not an error). The probe asks for no attributes and at most this many
    /// entries. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_entries: Option<i32>,
}

/// LDAP search scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SearchScope {
    /// The base entry only.
    Base,
    /// The entries right below the base.
    OneLevel,
    /// The base and everything below it.
    Subtree,
}

/// FTP/FTPS expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FtpExpectation {
    /// Secret holding `username` and `password` to log in with. Without it the probe logs in
    /// anonymously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// How the data channel is opened; the choices are on [`FtpDataChannel`], whose
    /// description is what the CRD schema shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_channel: Option<FtpDataChannel>,
    /// Directory to LIST over the data channel. Default: `/`. Nothing is ever written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^\r\n]*$"), length(max = 1024))]
    pub path: Option<String>,
    /// The server's passive port range (its `pasv_min_port`/`pasv_max_port`), so emitted
    /// policy allows the data connections too. Without it only the control port is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_ports: Option<PortRange>,
}

/// How the FTP data channel is opened: Passive (PASV, default), ExtendedPassive (EPSV) or
/// None (control channel and login only). The listing of `path` proves the data channel;
/// the probe never writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum FtpDataChannel {
    /// PASV: the server names an address and port (the probe connects to the control
    /// connection's address, and reports when the named address differs).
    Passive,
    /// EPSV: the server names only a port, on the control connection's address.
    ExtendedPassive,
    /// No data channel: the control connection and login only.
    None,
}

/// An inclusive range of ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.from <= self.to").message("from must not be greater than to").reason(Reason::FieldValueInvalid))]
pub struct PortRange {
    /// First port of the range.
    #[schemars(range(min = 1, max = 65535))]
    pub from: i32,
    /// Last port of the range (inclusive).
    #[schemars(range(min = 1, max = 65535))]
    pub to: i32,
}

/// IKE expectations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IkeExpectation {
    /// IKE version to send: 2 (IKE_SA_INIT, default) or 1 (Main Mode, for older
    /// concentrators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2))]
    pub version: Option<i32>,
}

/// The IKE port. On any other port IKE goes with the NAT-T non-ESP marker (RFC 3948).
pub const IKE_PORT: u16 = 500;
/// The NAT traversal port IKE and ESP float to behind NAT.
pub const NAT_T_PORT: u16 = 4500;

/// The transport a firewall rule matches: TCP, UDP, or ESP (IP protocol 50, IPsec's payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Transport {
    Tcp,
    Udp,
    Esp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
            Transport::Esp => "ESP",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
