//! The probe result model: one row per endpoint×port, shared by the CLI, probe pods and
//! EgressCheck status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::api::Protocol;

crate::wire_enum! {
    /// Verdict of one endpoint×port.
    pub enum Outcome {
        Pass,
        Warn,
        Fail,
    }
}

crate::wire_enum! {
    /// The stage a probe reached: the failing one, or the last one passed.
    pub enum Stage {
        #[serde(rename = "DNS")]
        Dns,
        Connect,
        Proxy,
        #[serde(rename = "StartTLS")]
        StartTls,
        #[serde(rename = "TLS")]
        Tls,
        Issuer,
        Protocol,
        Auth,
    }
}

crate::wire_enum! {
    /// Why a row has its outcome (CamelCase, stable: dashboards and alerts match on it).
    pub enum Reason {
        /// Every stage passed.
        Reachable,
        #[serde(rename = "NXDomain")]
        NxDomain,
        NoAnswer,
        ServFail,
        DnsTimeout,
        DnsError,
        WildcardHost,
        ConnectionRefused,
        ConnectTimeout,
        HostUnreachable,
        NetworkUnreachable,
        ConnectError,
        ProxyRejected,
        ProxyAuthRequired,
        ProxyTimeout,
        ProxyError,
        BannerMismatch,
        BannerTimeout,
        #[serde(rename = "StartTLSNotOffered")]
        StartTlsNotOffered,
        #[serde(rename = "StartTLSRejected")]
        StartTlsRejected,
        #[serde(rename = "TLSHandshakeFailed")]
        TlsHandshakeFailed,
        #[serde(rename = "TLSTimeout")]
        TlsTimeout,
        UntrustedIssuer,
        HostnameMismatch,
        CertificateExpired,
        CertificateNotYetValid,
        CertificateExpiringSoon,
        IssuerMismatch,
        PinMismatch,
        #[serde(rename = "HTTPStatusMismatch")]
        HttpStatusMismatch,
        ProtocolError,
        ResponseTimeout,
        AuthMechanismMissing,
        CapabilityMissing,
        BindFailed,
        SearchFailed,
        /// The login mechanism the port is configured with is not among those the server offers.
        MechanismNotOffered,
        /// The server refused the login (SMTP 535, IMAP NO, POP3 -ERR).
        AuthFailed,
        /// The server refuses to log anyone in before TLS.
        #[serde(rename = "AuthRequiresTLS")]
        AuthRequiresTls,
        /// The SMTP relay refused MAIL FROM.
        SenderRejected,
        /// The SMTP relay refused a RCPT TO.
        RecipientRejected,
        /// The IMAP mailbox cannot be opened.
        MailboxNotFound,
        /// The LDAP search base does not exist (noSuchObject).
        #[serde(rename = "NoSuchBaseDN")]
        NoSuchBaseDn,
        /// The LDAP search returned fewer entries than `minEntries`.
        TooFewEntries,
        CredentialsUnavailable,
        /// The `caBundleRef` of the port cannot be read or holds no certificate.
        #[serde(rename = "CABundleUnavailable")]
        CaBundleUnavailable,
        DeadlineExceeded,
        /// The FTP control channel works, but the data connection is refused or times out.
        DataChannelBlocked,
        /// The server requires TLS before it accepts a login (FTP 534, or 530 before AUTH TLS).
        #[serde(rename = "TLSRequired")]
        TlsRequired,
        /// A port expected to be Blocked was blocked, as it should be; `blockedBy` says how.
        Blocked,
        /// A port expected to be Blocked accepted the connection: no policy stops it.
        UnexpectedlyReachable,
        /// The echo service saw another source address than the expected ones.
        #[serde(rename = "SourceIPMismatch")]
        SourceIpMismatch,
    }
}

impl Reason {
    /// What to do next about a row with this reason, written for whoever owns the profile;
    /// `{target}` stands for the row's host:port and `{host}` for its host. None only for
    /// [`Reason::Reachable`]: a new reason cannot be added without its remedy. The stage tells
    /// a name without records (`NoAnswer` at DNS) from a UDP peer that stays silent (IKE).
    pub const fn remedy(self, stage: Stage) -> Option<&'static str> {
        Some(match self {
            Reason::Reachable | Reason::Blocked => return None,
            Reason::NoAnswer if !matches!(stage, Stage::Dns) => {
                "allow UDP 500 and 4500 (and ESP) to {host} in the firewalls on the path, and check that the peer is configured for this source address"
            }
            Reason::NxDomain => {
                "check the host name in the profile, or the DNS view this network gets (split-horizon DNS)"
            }
            Reason::NoAnswer => {
                "check the host name in the profile, or add its A or AAAA records to the zone"
            }
            Reason::ServFail => {
                "check that the resolver can reach the zone's nameservers, and the zone's DNSSEC"
            }
            Reason::DnsTimeout => {
                "allow DNS (UDP and TCP 53) to the nameserver, or set dns.nameservers in the profile to one that answers"
            }
            Reason::DnsError => {
                "the nameserver answers but its answer cannot be used: check its software and anything rewriting DNS in the path, or set dns.nameservers in the profile to another one"
            }
            Reason::WildcardHost => {
                "to probe it, add an endpoint with a concrete host name under the wildcard"
            }
            Reason::ConnectionRefused => {
                "allow egress to {target}, or check that the service listens on that port"
            }
            Reason::ConnectTimeout => {
                "allow egress to {target} in the firewalls and network policies on the path (a silent drop looks like this)"
            }
            Reason::HostUnreachable => {
                "check the routes to {host} from this network, or allow egress to it"
            }
            Reason::NetworkUnreachable => {
                "check this network's routes to {host} (and IPv6 support, for an IPv6 address)"
            }
            Reason::ConnectError => "check the network path to {target}",
            Reason::ProxyRejected => "allow {target} on the proxy",
            Reason::ProxyAuthRequired => {
                "set proxy.credentialsSecretRef in the profile to a Secret holding a username and password the proxy accepts"
            }
            Reason::ProxyTimeout => {
                "check that the proxy in the profile's proxy.url is up and answers CONNECT, or fix proxy.url"
            }
            Reason::ProxyError => {
                "check that the profile's proxy.url points at an HTTP CONNECT proxy and that the proxy is healthy"
            }
            Reason::BannerMismatch => {
                "check that the profile names the port the service listens on and the protocol it speaks"
            }
            Reason::BannerTimeout => {
                "check that {target} speaks the protocol set in the profile, and that nothing in the path holds the connection open"
            }
            Reason::StartTlsNotOffered => {
                "enable STARTTLS on the server and make sure nothing in the path strips it (or set tls.mode: Disabled for a port meant to stay plain)"
            }
            Reason::StartTlsRejected => {
                "enable TLS on the server, or probe its implicit-TLS port (protocol SMTPS, IMAPS, POP3S or LDAPS)"
            }
            Reason::TlsHandshakeFailed => {
                "check that {target} speaks TLS and that no middlebox breaks it (set tls.serverName if the server expects another name)"
            }
            Reason::TlsTimeout => {
                "check that {target} speaks TLS and that nothing in the path holds TLS traffic"
            }
            Reason::UntrustedIssuer => {
                "if a TLS-inspecting proxy re-signs traffic, exclude {host} from SSL decryption, else add the issuing CA to the port's tls.caBundleRef"
            }
            Reason::HostnameMismatch => {
                "make sure {host} reaches the real server, not a proxy or load balancer, or set tls.serverName to the name the certificate is for"
            }
            Reason::CertificateExpired => "the server must renew its certificate",
            Reason::CertificateNotYetValid => {
                "check the server's certificate, and this machine's clock"
            }
            Reason::CertificateExpiringSoon => {
                "renew the certificate on the server before it expires (or lower tls.minDaysValid)"
            }
            Reason::IssuerMismatch => {
                "exclude {host} from SSL decryption on the proxy or firewall, or update tls.expectedIssuer if the server changed CA"
            }
            Reason::PinMismatch => {
                "if a proxy decrypts TLS, exclude {host} from SSL decryption, else update tls.spkiPins"
            }
            Reason::HttpStatusMismatch => {
                "check http.path and http.expectedStatus in the profile, or what answers on {target}"
            }
            Reason::ProtocolError => {
                "check that {target} speaks the protocol set in the profile and that nothing in the path rewrites it"
            }
            Reason::ResponseTimeout => {
                "check that the server is healthy and nothing in the path holds the exchange; raise the endpoint's timeout if it is just slow"
            }
            Reason::AuthMechanismMissing => {
                "enable the mechanisms on the mail server, or adjust smtp.expectedAuth in the profile"
            }
            Reason::CapabilityMissing => {
                "enable them on the server, or adjust mail.expectedCapabilities in the profile"
            }
            Reason::BindFailed => {
                "check the bindDN and password in the Secret of ldap.bindSecretRef, and that the account may bind"
            }
            Reason::SearchFailed => {
                "check ldap.baseDN in the profile, and that the bind account may read it"
            }
            Reason::CredentialsUnavailable => {
                "create that Secret, with that key, in the check's namespace"
            }
            Reason::CaBundleUnavailable => {
                "create the ConfigMap or Secret that tls.caBundleRef names, with PEM certificates under its key, in the check's namespace"
            }
            Reason::DeadlineExceeded => {
                "check the path to {target}, or raise the endpoint's timeout if the server is just slow"
            }
            Reason::MechanismNotOffered => {
                "enable the mechanism on the server, or set the port's auth.mechanism to one it offers"
            }
            Reason::AuthFailed => {
                "check the username and password in the Secret the port's credentialsSecretRef names, and that the account is enabled and its password not expired"
            }
            Reason::AuthRequiresTls => {
                "set the port's tls.mode to StartTLS (or use the implicit-TLS protocol) so the login runs over TLS"
            }
            Reason::SenderRejected => {
                "set smtp.envelope.from to an address the relay accepts from this account"
            }
            Reason::RecipientRejected => {
                "ask the relay's owner to accept mail for that recipient from this account, or fix smtp.envelope.to"
            }
            Reason::MailboxNotFound => {
                "check mail.mailbox in the profile, and that the account may open that mailbox"
            }
            Reason::NoSuchBaseDn => {
                "check ldap.baseDN in the profile against the directory's naming contexts"
            }
            Reason::TooFewEntries => {
                "check ldap.search (filter, scope, minEntries) and that the bind account may read the entries"
            }
            Reason::DataChannelBlocked => {
                "allow egress to the server's passive port range (declare it in ftp.passivePorts), and check that a NAT'd server advertises its public address"
            }
            Reason::UnexpectedlyReachable => {
                "the policy that should block {target} does not: check that it is applied (the profile's PolicyApplied condition) and selects this pod, and that the CNI enforces it"
            }
            Reason::SourceIpMismatch => {
                "check the egress gateway or NAT that should carry this pod's traffic (a CiliumEgressGatewayPolicy selecting it, the node's SNAT), or fix http.sourceIP.expected"
            }
            Reason::TlsRequired => {
                "set the port's tls.mode to StartTLS (or use FTPS) so the login runs over TLS"
            }
        })
    }

    /// The remedy with the row's host and host:port filled in.
    pub fn next_step(self, stage: Stage, host: &str, target: &str) -> Option<String> {
        self.remedy(stage)
            .map(|r| r.replace("{target}", target).replace("{host}", host))
    }

    /// A row's message: what happened, naming `target` (host:port) even when the diagnosis
    /// does not, then the next step, unless the diagnosis already gives it.
    pub fn explain(self, stage: Stage, diagnosis: &str, host: &str, target: &str) -> String {
        let mut message = if diagnosis.contains(target) {
            diagnosis.to_owned()
        } else {
            format!("{target}: {diagnosis}")
        };
        if let Some(step) = self.next_step(stage, host, target)
            && !message.contains(&step)
        {
            message = format!("{}; {step}", message.trim_end_matches(['.', ';', ' ']));
        }
        message
    }
}

/// One endpoint×port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// Endpoint name.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    pub port: i32,
    pub protocol: Protocol,
    /// Whether a failure fails the check.
    pub required: bool,
    pub outcome: Outcome,
    /// The failing stage, or the last one passed.
    pub stage: Stage,
    pub reason: Reason,
    /// What happened, to what, and what to do next.
    pub message: String,
    /// TLS is re-signed by something in the path (issuer or pin mismatch).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub intercepted: bool,
    /// Per-address results (every resolved A and AAAA address unless limited).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<AddressResult>,
    /// Milliseconds per stage.
    #[serde(default)]
    pub latency: Latency,
    /// What the TLS handshake showed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFacts>,
    /// What the application stage saw: HTTP status line, AUTH mechanisms, capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How a port expected to be Blocked was blocked (ConnectionRefused, ConnectTimeout,
    /// ProxyRejected, NXDomain, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<Reason>,
    /// The source address the echo service saw (ports with `http.sourceIP`).
    #[serde(default, rename = "sourceIP", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// When this row's outcome last changed (set by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Consecutive failed and passing runs and the outage the row is in (set by the operator).
    #[serde(default, flatten)]
    pub streak: crate::api::check::Streak,
}

impl ProbeResult {
    /// The key rows are matched on across runs.
    pub fn key(&self) -> (&str, i32) {
        (&self.endpoint, self.port)
    }

    /// Whether the row failed on the network (DNS, connect or proxy), as the Reachable
    /// condition counts it. A port expected Blocked that connected fails at Connect too, but
    /// because it was reachable: it does not count.
    pub fn unreachable(&self) -> bool {
        self.outcome == Outcome::Fail
            && matches!(self.stage, Stage::Dns | Stage::Connect | Stage::Proxy)
            && self.reason != Reason::UnexpectedlyReachable
    }

    /// `host:port` or `cidr:port`, as people write it.
    pub fn target(&self) -> String {
        let host = self.host.as_deref().or(self.cidr.as_deref()).unwrap_or("?");
        if host.contains(':') && !host.contains('/') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// The result for one resolved address of an endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressResult {
    pub address: String,
    pub outcome: Outcome,
    pub stage: Stage,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

/// Milliseconds spent per stage (absent: stage not reached).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

/// Facts from the TLS handshake and the presented chain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsFacts {
    /// e.g. TLSv1.3.
    pub version: String,
    pub cipher_suite: String,
    /// Leaf subject DN.
    pub subject: String,
    /// Leaf issuer DN, e.g. `CN=Web Proxy, O=Example Corp., OU=IT`.
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_organizational_unit: Option<String>,
    /// Subject alternative names of the leaf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
    /// Leaf notAfter, RFC 3339.
    pub not_after: String,
    /// Whole days until notAfter (negative when expired).
    pub days_remaining: i64,
    /// Base64 SHA-256 of the leaf SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Certificates presented.
    pub chain_length: i32,
    /// The chain verified against the probe's roots (a corporate CA installed as a root makes
    /// an intercepting proxy trusted).
    pub trusted: bool,
    /// Why verification failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<String>,
    /// The issuer the spec expects, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_issuer: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn every_failure_reason_has_a_remedy_and_its_message_names_the_target_and_the_step() {
        let (host, target) = ("vendor.example.com", "vendor.example.com:8443");
        for reason in Reason::iter() {
            let Some(step) = reason.next_step(Stage::Dns, host, target) else {
                assert!(
                    matches!(reason, Reason::Reachable | Reason::Blocked),
                    "{reason} has no remedy"
                );
                continue;
            };
            assert!(!step.trim().is_empty(), "{reason}: empty remedy");
            assert!(
                !step.contains('{'),
                "{reason}: unfilled placeholder in {step:?}"
            );
            assert!(
                !step.contains("--"),
                "{reason}: remedies name profile fields, not flags"
            );
            // Whether or not the diagnosis names the target, the message does, with the step.
            for diagnosis in [
                "the server closed the connection",
                "vendor.example.com:8443 sent garbage",
            ] {
                let message = reason.explain(Stage::Dns, diagnosis, host, target);
                assert!(message.contains(target), "{reason}: {message}");
                assert!(message.contains(&step), "{reason}: {message}");
                assert_eq!(
                    message.matches(&step).count(),
                    1,
                    "{reason}: the step once: {message}"
                );
            }
        }
    }
}
