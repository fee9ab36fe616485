//! Where a list of endpoints and its settings come from: a profile, or a check's own endpoints
//! over its profile, with the check's proxy and DNS taking precedence.

use crate::api::endpoint::{DnsSpec, Endpoint, EndpointDefaults, ProxySpec};
use crate::api::{ConnectivityProfileSpec, EgressCheckSpec};

/// Where a list of endpoints and its settings come from.
pub struct EndpointSource<'a> {
    pub endpoints: &'a [Endpoint],
    pub defaults: Option<&'a EndpointDefaults>,
    pub proxy: Option<&'a ProxySpec>,
    pub dns: Option<&'a DnsSpec>,
}

impl<'a> EndpointSource<'a> {
    pub fn from_profile(spec: &'a ConnectivityProfileSpec) -> Self {
        Self {
            endpoints: &spec.endpoints,
            defaults: spec.defaults.as_ref(),
            proxy: spec.proxy.as_ref(),
            dns: spec.dns.as_ref(),
        }
    }

    /// A check over a profile: the check's proxy and dns override the profile's.
    pub fn from_check(
        check: &'a EgressCheckSpec,
        profile: Option<&'a ConnectivityProfileSpec>,
    ) -> Option<Self> {
        let base = match (&check.endpoints, profile) {
            (Some(endpoints), _) => Self {
                endpoints,
                defaults: check.defaults.as_ref(),
                proxy: None,
                dns: None,
            },
            (None, Some(profile)) => Self::from_profile(profile),
            (None, None) => return None,
        };
        Some(Self {
            proxy: check.proxy.as_ref().or(base.proxy),
            dns: check.dns.as_ref().or(base.dns),
            ..base
        })
    }
}
