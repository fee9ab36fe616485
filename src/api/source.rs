//! Where a list of endpoints and its settings come from: a profile, or a check's own endpoints
//! over its profile, with the check's proxy and DNS taking precedence.

use crate::api::endpoint::{DnsSpec, Endpoint, EndpointDefaults, ProxySpec};
use crate::api::profile::PolicySpec;
use crate::api::{ConnectivityProfileSpec, EgressCheckSpec};

/// Where a list of endpoints and its settings come from.
pub struct EndpointSource<'a> {
    pub endpoints: &'a [Endpoint],
    pub defaults: Option<&'a EndpointDefaults>,
    pub proxy: Option<&'a ProxySpec>,
    pub dns: Option<&'a DnsSpec>,
    /// The profile's policy, when the endpoints are a profile's: Blocked ports name the
    /// policies that should block them, source-IP checks default to its egress gateway.
    pub policy: Option<&'a PolicySpec>,
    /// The profile's name, and its namespace when known.
    pub profile: Option<(&'a str, Option<&'a str>)>,
}

impl<'a> EndpointSource<'a> {
    pub fn from_profile(spec: &'a ConnectivityProfileSpec) -> Self {
        Self {
            endpoints: &spec.endpoints,
            defaults: spec.defaults.as_ref(),
            proxy: spec.proxy.as_ref(),
            dns: spec.dns.as_ref(),
            policy: spec.policy.as_ref(),
            profile: None,
        }
    }

    /// The same source, knowing the profile's name and namespace.
    pub fn named(self, namespace: &'a str, name: &'a str) -> Self {
        Self {
            profile: Some((name, Some(namespace))),
            ..self
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
                policy: None,
                profile: None,
            },
            (None, Some(profile)) => Self {
                profile: check.profile_ref.as_ref().map(|r| (r.name.as_str(), None)),
                ..Self::from_profile(profile)
            },
            (None, None) => return None,
        };
        Some(Self {
            proxy: check.proxy.as_ref().or(base.proxy),
            dns: check.dns.as_ref().or(base.dns),
            ..base
        })
    }
}
