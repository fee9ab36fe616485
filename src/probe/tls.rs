//! The TLS stage: handshake with rustls while capturing the presented chain even when it does
//! not verify, then judge it: trust, host name, expiry, expected issuer and SPKI pins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use k8s_openapi::jiff::Timestamp;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::net::{BoxStream, Deadline, Failure};
use super::plan::TlsPlan;
use crate::api::endpoint::{CaBundleRef, IssuerMatch, MismatchAction};
use crate::api::result::{Reason, Stage, TlsFacts};

/// The key of a `caBundleRef` that names none.
pub const DEFAULT_BUNDLE_KEY: &str = "ca.crt";

/// Which roots the probe trusts, and the client configuration built on them once.
#[derive(Clone)]
pub struct TrustRoots {
    store: Arc<RootCertStore>,
    verifier: Arc<WebPkiServerVerifier>,
    config: Arc<rustls::ClientConfig>,
    /// Configurations for endpoints with their own CA bundle, by bundle.
    bundles: Arc<Mutex<HashMap<String, TrustRoots>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read CA file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate")]
    Empty { path: String },
    #[error("{name} holds no usable PEM certificate")]
    EmptyBundle { name: String },
    /// The root store cannot verify anything, e.g. the system store on a machine whose system
    /// store is empty or unreadable.
    #[error(
        "cannot verify certificates with {roots}: it holds no usable CA; use the built-in web PKI roots, or add the CA to trust"
    )]
    Verifier {
        roots: String,
        #[source]
        source: rustls::client::VerifierBuilderError,
    },
    #[error("cannot set up the TLS client with {roots}")]
    Config {
        roots: String,
        #[source]
        source: rustls::Error,
    },
}

impl TrustRoots {
    /// The Mozilla web PKI roots, or the system store when `system` is set, plus `extra_pem`
    /// bundles (path, contents).
    pub fn new(system: bool, extra_pem: &[(String, Vec<u8>)]) -> Result<Self, RootsError> {
        let mut store = RootCertStore::empty();
        let mut roots = if system {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(loaded.certs);
            let mut roots = format!("the system root store ({added} certificates");
            if let Some(error) = loaded.errors.first() {
                roots.push_str(&format!("; {error}"));
            }
            roots.push(')');
            roots
        } else {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            "the built-in web PKI roots".to_owned()
        };
        for (path, pem) in extra_pem {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .filter_map(Result::ok)
                .collect();
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(RootsError::Empty { path: path.clone() });
            }
            roots.push_str(&format!(" and {path}"));
        }
        Self::from_store(store, roots)
    }

    /// The verifier and client configuration over `store`; `roots` names the store in errors.
    fn from_store(store: RootCertStore, roots: String) -> Result<Self, RootsError> {
        let store = Arc::new(store);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .map_err(|source| RootsError::Verifier {
                roots: roots.clone(),
                source,
            })?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| RootsError::Config { roots, source })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DeferredVerifier {
                inner: verifier.clone(),
            }))
            .with_no_client_auth();
        // Every probe must do the full handshake a fresh client does.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            store,
            verifier,
            config: Arc::new(config),
            bundles: Arc::default(),
        })
    }

    /// These roots plus an endpoint's own CA bundle (built once per bundle); `name` says
    /// where the bundle comes from, for errors.
    pub fn with_bundle(&self, pem: &str, name: &str) -> Result<Self, RootsError> {
        let mut bundles = self.bundles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(built) = bundles.get(pem) {
            return Ok(built.clone());
        }
        let mut store = (*self.store).clone();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(RootsError::EmptyBundle {
                name: name.to_owned(),
            });
        }
        let built = Self::from_store(store, format!("the probe's roots and {name}"))?;
        bundles.insert(pem.to_owned(), built.clone());
        Ok(built)
    }
}

/// Accepts any certificate during the handshake (signatures are still checked) so the chain
/// of an untrusted or intercepting server can be read and reported; the web PKI verdict is
/// taken right after the handshake, from the same verifier.
#[derive(Debug)]
struct DeferredVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for DeferredVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A finished handshake: the encrypted stream and the judgement of the certificate.
pub struct Handshake {
    pub stream: BoxStream,
    pub facts: TlsFacts,
    /// The presented chain, DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// A problem that does not stop the probe (expiring soon, or a mismatch set to warn).
    pub warning: Option<Failure>,
}

/// A handshake that did not pass, with what was seen of the certificate (when it got that far).
pub struct Rejected {
    pub failure: Failure,
    pub facts: Option<TlsFacts>,
    /// The presented chain (DER, leaf first), when the handshake got that far.
    pub chain: Vec<Vec<u8>>,
}

impl From<Failure> for Rejected {
    fn from(failure: Failure) -> Self {
        Self {
            failure,
            facts: None,
            chain: Vec::new(),
        }
    }
}

/// TLS sessions shared by the connections of one FTP session, so a data connection resumes
/// the control connection's session (servers may require it, e.g. vsftpd's
/// `require_ssl_reuse`). Each FTP session starts with an empty cache: its first handshake is
/// a full one, as for every other probe.
pub type SessionCache = Arc<dyn rustls::client::ClientSessionStore>;

/// An empty [`SessionCache`].
pub fn session_cache() -> SessionCache {
    Arc::new(rustls::client::ClientSessionMemoryCache::new(4))
}

/// Runs the TLS handshake on `stream` for `server_name` and judges the certificate.
pub async fn handshake(
    stream: BoxStream,
    server_name: &str,
    plan: &TlsPlan,
    roots: &TrustRoots,
    target: &str,
    deadline: &Deadline,
) -> Result<Handshake, Rejected> {
    handshake_with(stream, server_name, plan, roots, target, deadline, None).await
}

/// [`handshake`], storing and resuming sessions in `sessions` when given.
pub async fn handshake_with(
    stream: BoxStream,
    server_name: &str,
    plan: &TlsPlan,
    roots: &TrustRoots,
    target: &str,
    deadline: &Deadline,
    sessions: Option<&SessionCache>,
) -> Result<Handshake, Rejected> {
    let roots = match &plan.ca_bundle_pem {
        Some(pem) => {
            let name = plan
                .ca_bundle_ref
                .as_ref()
                .map(describe_bundle)
                .unwrap_or_else(|| "the caBundleRef bundle".to_owned());
            roots.with_bundle(pem, &name).map_err(|e| {
                Failure::new(
                    Stage::Tls,
                    Reason::CaBundleUnavailable,
                    format!(
                        "TLS to {target}: {}; put PEM certificates in the bundle",
                        crate::error::error_chain(&e)
                    ),
                )
            })?
        }
        None => roots.clone(),
    };
    let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
        Failure::new(
            Stage::Tls,
            Reason::TlsHandshakeFailed,
            format!("{server_name:?} is not a valid TLS server name"),
        )
    })?;
    let config = match sessions {
        Some(store) => {
            let mut config = (*roots.config).clone();
            config.resumption = rustls::client::Resumption::store(store.clone());
            Arc::new(config)
        }
        None => roots.config.clone(),
    };
    let connector = TlsConnector::from(config);
    let tls = deadline
        .run(
            Stage::Tls,
            Reason::TlsTimeout,
            || format!("the TLS handshake with {target} did not finish"),
            async {
                connector.connect(name.clone(), stream).await.map_err(|e| {
                    Failure::new(
                        Stage::Tls,
                        Reason::TlsHandshakeFailed,
                        format!("TLS handshake with {target} failed: {e}"),
                    )
                })
            },
        )
        .await?;
    let (version, suite, chain) = {
        let (_, connection) = tls.get_ref();
        let chain: Vec<CertificateDer<'static>> = connection
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect();
        (
            connection
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .replace("TLSv1_", "TLSv1."),
            connection
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown")
                .to_owned(),
            chain,
        )
    };
    let verify = |at: UnixTime| match chain.split_first() {
        Some((leaf, intermediates)) => roots
            .verifier
            .verify_server_cert(leaf, intermediates, &name, &[], at)
            .map(|_| ()),
        None => Err(rustls::Error::NoCertificatesPresented),
    };
    let mut verdict = verify(UnixTime::now());
    // A time error hides whatever else is wrong with the chain: verify again within the
    // certificate's validity, so an expired certificate from an untrusted issuer says both.
    let mut time_error = None;
    if let Err(error) = &verdict
        && is_time_error(error)
        && let Some(valid_at) = chain.first().and_then(|leaf| moment_of_validity(leaf))
        && let Err(other) = verify(valid_at)
        && !is_time_error(&other)
    {
        time_error = verdict.err();
        verdict = Err(other);
    }
    let now = Timestamp::now().as_second();
    let mut facts = describe_chain(&chain, now).ok_or_else(|| {
        Failure::new(
            Stage::Tls,
            Reason::TlsHandshakeFailed,
            format!("{target} presented a certificate that cannot be parsed"),
        )
    })?;
    facts.version = version;
    facts.cipher_suite = suite;
    facts.trusted = verdict.is_ok();
    facts.verify_error = match (&verdict, &time_error) {
        (Err(error), Some(time)) => Some(format!("{error}; {time}")),
        (Err(error), None) => Some(error.to_string()),
        (Ok(()), _) => None,
    };
    facts.expected_issuer = plan.expected_issuer.as_ref().map(ToString::to_string);
    let warning = match judge(&facts, &verdict, &chain, plan, server_name, target) {
        Ok(warning) => warning,
        Err(mut failure) => {
            if let Some(time) = &time_error
                && failure.stage == Stage::Tls
            {
                let when = match time {
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
                    ) => "is not valid yet".to_owned(),
                    _ => format!("expired on {}", facts.not_after),
                };
                failure.message = format!(
                    "{}; besides, the certificate {when}: renew it on the server once the issuer is sorted out",
                    failure.message
                );
            }
            return Err(Rejected {
                failure,
                facts: Some(facts),
                chain: chain.iter().map(|c| c.to_vec()).collect(),
            });
        }
    };
    Ok(Handshake {
        stream: Box::new(tls),
        facts,
        chain: chain.iter().map(|c| c.to_vec()).collect(),
        warning,
    })
}

/// Decides whether the certificate passes, warns or fails, in order of usefulness: an
/// intercepting proxy is named before the trust error it causes.
fn judge(
    facts: &TlsFacts,
    verdict: &Result<(), rustls::Error>,
    chain: &[CertificateDer<'static>],
    plan: &TlsPlan,
    server_name: &str,
    target: &str,
) -> Result<Option<Failure>, Failure> {
    let trusted_note = if facts.trusted {
        "the chain is trusted by this probe's roots, so a corporate CA is installed"
    } else {
        "the chain is not trusted by this probe's roots"
    };
    let mismatch = if let Some(expected) = &plan.expected_issuer
        && !issuer_matches(expected, facts)
    {
        Some(Failure {
            stage: Stage::Issuer,
            reason: Reason::IssuerMismatch,
            message: format!(
                "TLS to {target} is intercepted: the certificate is issued by {} instead of {expected} ({trusted_note})",
                facts.issuer
            ),
            intercepted: true,
        })
    } else if !plan.spki_pins.is_empty() && !pins_match(&plan.spki_pins, chain) {
        Some(Failure {
            stage: Stage::Issuer,
            reason: Reason::PinMismatch,
            message: format!(
                "no certificate presented by {target} matches the pinned keys (leaf issued by {}, {trusted_note})",
                facts.issuer
            ),
            intercepted: true,
        })
    } else {
        None
    };
    let mut warning = None;
    if let Some(mismatch) = mismatch {
        match plan.on_mismatch {
            MismatchAction::Fail => return Err(mismatch),
            MismatchAction::Warn => warning = Some(mismatch),
        }
    }
    if let Err(error) = verdict {
        let (reason, advice) = match error {
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => (
                Reason::CertificateExpired,
                format!("the certificate expired on {}", facts.not_after),
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => (
                Reason::CertificateNotYetValid,
                format!(
                    "the certificate is not valid yet (this machine's clock says {})",
                    Timestamp::now()
                ),
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => (
                Reason::HostnameMismatch,
                format!(
                    "the certificate is for {} not {server_name}",
                    if facts.sans.is_empty() {
                        facts.subject.clone()
                    } else {
                        facts.sans.join(", ")
                    }
                ),
            ),
            other => (
                Reason::UntrustedIssuer,
                format!(
                    "the certificate issued by {} is not trusted ({other})",
                    facts.issuer
                ),
            ),
        };
        return Err(Failure::new(
            Stage::Tls,
            reason,
            format!("TLS to {target}: {advice}"),
        ));
    }
    if warning.is_none() && facts.days_remaining < i64::from(plan.min_days_valid) {
        warning = Some(Failure::new(
            Stage::Tls,
            Reason::CertificateExpiringSoon,
            format!(
                "the certificate of {target} expires on {} ({} days left, fewer than {})",
                facts.not_after, facts.days_remaining, plan.min_days_valid
            ),
        ));
    }
    Ok(warning)
}

fn is_time_error(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }
        )
    )
}

/// A moment inside the leaf's validity period, to verify everything but the time.
fn moment_of_validity(leaf: &CertificateDer<'_>) -> Option<UnixTime> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let validity = cert.validity();
    let (from, to) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let middle = from.checked_add(to.checked_sub(from)? / 2)?;
    Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(middle).ok()?,
    )))
}

/// `ConfigMap corp-ca (key ca.crt)` or `Secret …`, for messages.
pub fn describe_bundle(reference: &CaBundleRef) -> String {
    let key = reference.key.as_deref().unwrap_or(DEFAULT_BUNDLE_KEY);
    match (&reference.config_map, &reference.secret) {
        (Some(name), _) => format!("CA bundle ConfigMap {name} (key {key})"),
        (None, Some(name)) => format!("CA bundle Secret {name} (key {key})"),
        (None, None) => "an empty caBundleRef".to_owned(),
    }
}

fn issuer_matches(expected: &IssuerMatch, facts: &TlsFacts) -> bool {
    let same = |want: &Option<String>, got: &Option<String>| match want {
        None => true,
        Some(want) => got
            .as_deref()
            .is_some_and(|got| got.trim().eq_ignore_ascii_case(want.trim())),
    };
    same(&expected.organization, &facts.issuer_organization)
        && same(&expected.common_name, &facts.issuer_common_name)
        && same(
            &expected.organizational_unit,
            &facts.issuer_organizational_unit,
        )
}

/// Base64 SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn spki_sha256(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(spki_of(&cert))
}

fn spki_of(cert: &X509Certificate<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn pins_match(pins: &[String], chain: &[CertificateDer<'static>]) -> bool {
    chain
        .iter()
        .filter_map(|c| spki_sha256(c))
        .any(|hash| pins.contains(&hash))
}

/// Leaf facts from a presented chain (leaf first).
fn describe_chain(chain: &[CertificateDer<'static>], now: i64) -> Option<TlsFacts> {
    let leaf_der = chain.first()?;
    let (_, leaf) = X509Certificate::from_der(leaf_der).ok()?;
    let first = |iter: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        iter.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    let issuer = leaf.issuer();
    let issuer_cn = first(&mut issuer.iter_common_name());
    let issuer_o = first(&mut issuer.iter_organization());
    let issuer_ou = first(&mut issuer.iter_organizational_unit());
    let issuer_c = first(&mut issuer.iter_country());
    let dn = |cn: &Option<String>, o: &Option<String>, ou: &Option<String>, c: &Option<String>| {
        [("CN", cn), ("O", o), ("OU", ou), ("C", c)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let subject = leaf.subject();
    let subject_dn = dn(
        &first(&mut subject.iter_common_name()),
        &first(&mut subject.iter_organization()),
        &first(&mut subject.iter_organizational_unit()),
        &first(&mut subject.iter_country()),
    );
    let sans = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => Some(
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string(),
                        ),
                        16 => Some(
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).ok()?)
                                .to_string(),
                        ),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let not_after = leaf.validity().not_after.timestamp();
    Some(TlsFacts {
        subject: subject_dn,
        issuer: dn(&issuer_cn, &issuer_o, &issuer_ou, &issuer_c),
        issuer_organization: issuer_o,
        issuer_common_name: issuer_cn,
        issuer_organizational_unit: issuer_ou,
        sans,
        not_after: Timestamp::from_second(not_after)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        days_remaining: (not_after - now).div_euclid(86_400),
        spki_sha256: spki_of(&leaf),
        chain_length: chain.len() as i32,
        ..TlsFacts::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_root_store_is_an_error_not_a_panic() {
        let error = match TrustRoots::from_store(
            RootCertStore::empty(),
            "the system root store (0 certificates)".into(),
        ) {
            Ok(_) => panic!("an empty store cannot verify anything"),
            Err(error) => error,
        };
        assert!(matches!(error, RootsError::Verifier { .. }), "{error:?}");
        let text = crate::error::error_chain(&error);
        assert!(
            text.starts_with(
                "cannot verify certificates with the system root store (0 certificates): it holds no usable CA"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let roots = TrustRoots::new(false, &[]).unwrap();
        let error = match roots.with_bundle("not PEM", "CA bundle ConfigMap corp-ca (key ca.crt)") {
            Ok(_) => panic!("a bundle without certificates adds nothing"),
            Err(error) => error,
        };
        assert_eq!(
            error.to_string(),
            "CA bundle ConfigMap corp-ca (key ca.crt) holds no usable PEM certificate"
        );
    }
}
