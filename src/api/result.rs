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
