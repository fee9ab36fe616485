//! The probe result model: one row per endpoint×port, shared by the CLI, probe pods and
//! EgressCheck status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::api::Protocol;

/// Verdict of one endpoint×port.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::EnumIter,
)]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

crate::wire_names!(Outcome);

/// The stage a probe reached: the failing one, or the last one passed.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::EnumIter,
)]
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

crate::wire_names!(Stage);

/// Why a row has its outcome (CamelCase, stable: dashboards and alerts match on it).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::EnumIter,
)]
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
    CredentialsUnavailable,
    /// The `caBundleRef` of the port cannot be read or holds no certificate.
    #[serde(rename = "CABundleUnavailable")]
    CaBundleUnavailable,
    DeadlineExceeded,
    /// A port expected to be Blocked was blocked, as it should be; `blockedBy` says how.
    Blocked,
    /// A port expected to be Blocked accepted the connection: no policy stops it.
    UnexpectedlyReachable,
    /// The echo service saw another source address than the expected ones.
    #[serde(rename = "SourceIPMismatch")]
    SourceIpMismatch,
}

crate::wire_names!(Reason);

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
