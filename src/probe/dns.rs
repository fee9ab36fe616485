//! The DNS stage: A and AAAA through the system resolver or explicit nameservers, with
//! NXDOMAIN, no answer, SERVFAIL and timeouts told apart.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;

use crate::api::result::Reason;

/// Why a name did not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsFailure {
    pub reason: Reason,
    pub message: String,
}

/// Resolvers by nameserver list, built once and shared by all probes.
#[derive(Default)]
pub struct Resolvers {
    by_servers: Mutex<HashMap<Vec<String>, TokioResolver>>,
}

/// Parses `IP`, `IP:port` or `[IPv6]:port` (port 53 when absent).
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("invalid nameserver {text:?}: expected IP, IP:port or [IPv6]:port"))
}

impl Resolvers {
    fn resolver(
        &self,
        nameservers: &[String],
        timeout: Duration,
    ) -> Result<TokioResolver, DnsFailure> {
        let mut cache = self.by_servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(resolver) = cache.get(nameservers) {
            return Ok(resolver.clone());
        }
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| DnsFailure {
                reason: Reason::DnsError,
                message: format!(
                    "cannot read the system resolver configuration: {e}; set dns.nameservers in the profile"
                ),
            })?
        } else {
            let mut servers = Vec::new();
            for text in nameservers {
                let addr = parse_nameserver(text).map_err(|message| DnsFailure {
                    reason: Reason::DnsError,
                    message,
                })?;
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                servers.push(server);
            }
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let options = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = timeout;
        options.attempts = 1;
        // Probes must see what DNS says now, not what it said a while ago.
        options.cache_size = 0;
        let resolver = builder.build().map_err(|e| DnsFailure {
            reason: Reason::DnsError,
            message: format!("cannot set up the resolver: {e}; check the nameservers"),
        })?;
        cache.insert(nameservers.to_vec(), resolver.clone());
        Ok(resolver)
    }

    /// Resolves `host` to its A and AAAA addresses (IPv4 first), deduplicated.
    pub async fn resolve(
        &self,
        host: &str,
        nameservers: &[String],
        timeout: Duration,
    ) -> Result<Vec<IpAddr>, DnsFailure> {
        let resolver = self.resolver(nameservers, timeout)?;
        let via = if nameservers.is_empty() {
            "the system resolver".to_owned()
        } else {
            nameservers.join(", ")
        };
        // A trailing dot stops search-list expansion: the name is probed as written.
        let fqdn = if host.ends_with('.') {
            host.to_owned()
        } else {
            format!("{host}.")
        };
        let lookup = tokio::time::timeout(timeout, resolver.lookup_ip(fqdn.as_str())).await;
        let lookup = match lookup {
            Err(_) => return Err(timeout_failure(host, &via, timeout)),
            Ok(result) => result.map_err(|e| classify(host, &via, timeout, &e))?,
        };
        let mut addresses: Vec<IpAddr> = lookup.iter().collect();
        addresses.sort_by_key(|ip| (ip.is_ipv6(), *ip));
        addresses.dedup();
        if addresses.is_empty() {
            return Err(DnsFailure {
                reason: Reason::NoAnswer,
                message: format!("{host} has no A or AAAA record (asked {via})"),
            });
        }
        Ok(addresses)
    }
}

/// Server-supplied text, printable and short.
fn escape(text: &str) -> String {
    let shown: String = text.chars().take(200).collect();
    let shown = shown.escape_debug().to_string();
    if text.chars().count() > 200 {
        format!("{shown}…")
    } else {
        shown
    }
}

fn timeout_failure(host: &str, via: &str, timeout: Duration) -> DnsFailure {
    DnsFailure {
        reason: Reason::DnsTimeout,
        message: format!(
            "no DNS answer for {host} within {} from {via}",
            crate::api::duration::human(timeout)
        ),
    }
}

fn classify(host: &str, via: &str, timeout: Duration, error: &NetError) -> DnsFailure {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no_records))
            if no_records.response_code == ResponseCode::NXDomain =>
        {
            DnsFailure {
                reason: Reason::NxDomain,
                message: format!("{host} does not exist in DNS (NXDOMAIN from {via})"),
            }
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => DnsFailure {
            reason: Reason::NoAnswer,
            message: format!("{host} has no A or AAAA record (asked {via})"),
        },
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => DnsFailure {
            reason: Reason::ServFail,
            message: format!(
                "DNS server failure (SERVFAIL) resolving {host} via {via}: the resolver cannot get an answer from the zone's nameservers"
            ),
        },
        NetError::Timeout => timeout_failure(host, via, timeout),
        other => DnsFailure {
            reason: Reason::DnsError,
            message: format!(
                "resolving {host} via {via} failed: {}",
                escape(&other.to_string())
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_parse_with_and_without_port() {
        assert_eq!(
            parse_nameserver("10.0.0.10").unwrap(),
            "10.0.0.10:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("127.0.0.1:15353").unwrap(),
            "127.0.0.1:15353".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[::1]:53").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert!(parse_nameserver("dns.example.com").is_err());
    }
}
