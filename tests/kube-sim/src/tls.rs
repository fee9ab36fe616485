//! HTTPS for pods that reach the API server as in a cluster: a CA of kube-sim's own and a
//! serving certificate for its loopback address, generated at start. Clients outside pods use
//! the plain HTTP address of the kubeconfig.

use std::sync::Arc;

use anyhow::Context as _;

/// The CA pods trust (their `ca.crt`) and the acceptor for the HTTPS listener.
pub struct Tls {
    pub ca_pem: String,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// A fresh CA and a certificate it signs for `host`, `localhost` and the `kubernetes`
/// service's names.
pub fn generate(host: &str) -> anyhow::Result<Tls> {
    let ca_key = rcgen::KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-sim CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().context("generating the serving key")?;
    let names = [
        host,
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    let cert = params.signed_by(&key, &issuer)?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("the serving key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)?;
    Ok(Tls {
        ca_pem,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    })
}
