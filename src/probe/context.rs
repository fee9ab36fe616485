//! Settings shared by every probe of a run: trust roots, resolvers, proxy, mounted secrets,
//! and the certificate chains seen, when they are to be saved.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::dns::Resolvers;
use super::net::{Failure, ProxyTarget};
use super::plan::Target;
use super::tls::{self, TrustRoots};
use crate::api::result::{Reason, Stage};

/// Settings shared by every probe of a run.
pub struct ProbeContext {
    pub roots: TrustRoots,
    pub resolvers: Resolvers,
    /// Nameservers that override every target's own (`--nameserver`).
    pub nameservers: Vec<String>,
    /// A proxy that overrides every target's own (`--proxy`).
    pub proxy: Option<ProxyTarget>,
    /// Probe only the first address that answers instead of all of them.
    pub first_address_only: bool,
    /// Where Secrets are mounted: `DIR/<secret>/<key>`.
    pub secrets_dir: Option<PathBuf>,
    /// When set, the chain each endpoint×port presented (DER, leaf first) is kept here,
    /// the first one seen per (endpoint, port).
    pub chains: Option<Mutex<Chains>>,
}

/// Presented certificate chains by (endpoint, port), DER, leaf first.
pub type Chains = BTreeMap<(String, u16), Vec<Vec<u8>>>;

impl ProbeContext {
    pub fn new(roots: TrustRoots) -> Self {
        Self {
            roots,
            resolvers: Resolvers::default(),
            nameservers: Vec::new(),
            proxy: None,
            first_address_only: false,
            secrets_dir: None,
            chains: None,
        }
    }

    /// Keeps the chain `target` presented, when chains are being saved.
    pub(super) fn record_chain(&self, target: &Target, chain: &[Vec<u8>]) {
        if let Some(chains) = &self.chains
            && !chain.is_empty()
        {
            let mut chains = chains.lock().unwrap_or_else(|p| p.into_inner());
            chains
                .entry((target.endpoint.clone(), target.port))
                .or_insert_with(|| chain.to_vec());
        }
    }

    /// The chains kept so far.
    pub fn saved_chains(&self) -> Chains {
        self.chains
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Reads a key of a mounted Secret that may be absent: None when the Secret has no such
    /// key, an error when the Secret itself is not there.
    pub(super) fn optional_secret(
        &self,
        secret: &str,
        key: &str,
        target: &str,
    ) -> Result<Option<String>, String> {
        if let Some(dir) = &self.secrets_dir
            && dir.join(secret).is_dir()
            && !dir.join(secret).join(key).exists()
        {
            return Ok(None);
        }
        self.secret(secret, key, target).map(Some)
    }

    /// Reads one key of a mounted Secret that probing `target` needs.
    pub(super) fn secret(&self, secret: &str, key: &str, target: &str) -> Result<String, String> {
        self.mounted("Secret", secret, key, target)
            .map(|v| v.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Reads one key of a mounted Secret or ConfigMap (`kind`), as a pod mounts them:
    /// `DIR/<name>/<key>`. Messages never hold the value.
    pub(super) fn mounted(
        &self,
        kind: &str,
        name: &str,
        key: &str,
        target: &str,
    ) -> Result<String, String> {
        let Some(dir) = &self.secrets_dir else {
            return Err(format!(
                "probing {target} needs key {key} of {kind} {name}, but no {kind} is mounted for this probe (probe pods mount it as {name}/{key})"
            ));
        };
        let path = dir.join(name).join(key);
        std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "probing {target} needs key {key} of {kind} {name}, which cannot be read at {}: {e}",
                path.display()
            )
        })
    }

    /// The PEM text of a target's `caBundleRef` when the plan names one the operator has not
    /// already read in (`netreach check` reads it from the secrets directory); None when
    /// there is nothing to read.
    pub(super) fn ca_bundle(&self, target: &Target) -> Result<Option<String>, Failure> {
        let Some(reference) = &target.tls.ca_bundle_ref else {
            return Ok(None);
        };
        if target.tls.ca_bundle_pem.is_some() {
            return Ok(None);
        }
        let key = reference.key.as_deref().unwrap_or(tls::DEFAULT_BUNDLE_KEY);
        let (kind, name) = match (&reference.config_map, &reference.secret) {
            (Some(name), _) => ("ConfigMap", name),
            (None, Some(name)) => ("Secret", name),
            (None, None) => return Ok(None),
        };
        self.mounted(kind, name, key, &target.display())
            .map(Some)
            .map_err(|message| {
                Failure::new(
                    Stage::Tls,
                    Reason::CaBundleUnavailable,
                    format!(
                        "{message} (caBundleRef: without it the issuer it vouches for is reported as untrusted)"
                    ),
                )
            })
    }
}
