//! Allowlists for perimeter firewall teams: every declared host, CIDR and port with its
//! transport (TCP, UDP, ESP), resolved addresses and TLS expectation, as CSV or Markdown.

use super::Input;
use crate::api::endpoint::{IKE_PORT, NAT_T_PORT, Transport};
use crate::api::source::EndpointSource;
use crate::api::{Protocol, TlsMode};

/// One row per endpoint×port, plus the rows a protocol needs beside its port: an FTP server's
/// passive range, IKE's NAT traversal port and ESP.
#[derive(Clone)]
struct Row {
    profile: String,
    endpoint: String,
    destination: String,
    /// A port, a `from-to` range, or empty for ESP (no ports).
    port: String,
    transport: Transport,
    protocol: String,
    addresses: String,
    tls: String,
    required: bool,
}

fn rows(inputs: &[Input<'_>]) -> Vec<Row> {
    let mut rows = Vec::new();
    for input in inputs {
        // A port expected to be Blocked is exactly what the perimeter must not open.
        for target in EndpointSource::from_profile(input.spec)
            .targets()
            .into_iter()
            .filter(|t| t.expect != crate::api::endpoint::Expect::Blocked)
        {
            let addresses = match (&target.host, &target.cidr) {
                (_, Some(cidr)) => cidr.clone(),
                (Some(_), None) => input
                    .addresses
                    .get(&target.endpoint)
                    .map(|a| {
                        a.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| "(not resolved)".into()),
                (None, None) => String::new(),
            };
            let tls = match target.tls.mode {
                TlsMode::Disabled => "none".to_owned(),
                mode => {
                    let how = match mode {
                        TlsMode::Implicit => "TLS",
                        TlsMode::StartTls => "STARTTLS",
                        _ => "STARTTLS if offered",
                    };
                    match &target.tls.expected_issuer {
                        Some(issuer) => format!("{how}, issuer {issuer}, no TLS inspection"),
                        None => how.to_owned(),
                    }
                }
            };
            let row = Row {
                profile: format!("{}/{}", input.namespace, input.name),
                endpoint: target.endpoint.clone(),
                destination: target
                    .host
                    .clone()
                    .or(target.cidr.clone())
                    .unwrap_or_default(),
                port: target.port.to_string(),
                transport: target.protocol.transport(),
                protocol: target.protocol.to_string(),
                addresses,
                tls,
                required: target.required,
            };
            let mut extra = Vec::new();
            match target.protocol {
                Protocol::Ftp | Protocol::Ftps => {
                    if let Some(range) = target.ftp.as_ref().and_then(|f| f.passive_ports.as_ref())
                    {
                        extra.push((
                            format!("{}-{}", range.from, range.to),
                            Transport::Tcp,
                            format!("{} data (passive)", target.protocol),
                        ));
                    }
                }
                Protocol::Ike => {
                    if target.port == IKE_PORT {
                        extra.push((
                            NAT_T_PORT.to_string(),
                            Transport::Udp,
                            "IKE (NAT traversal)".to_owned(),
                        ));
                    }
                    extra.push((String::new(), Transport::Esp, "IPsec ESP".to_owned()));
                }
                _ => {}
            }
            rows.push(row.clone());
            for (port, transport, protocol) in extra {
                rows.push(Row {
                    port,
                    transport,
                    protocol,
                    tls: "none".to_owned(),
                    ..row.clone()
                });
            }
        }
    }
    rows
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

pub fn csv(inputs: &[Input<'_>]) -> String {
    let mut out = String::from(
        "profile,endpoint,destination,port,transport,protocol,resolved_addresses,tls,required\n",
    );
    for r in rows(inputs) {
        let fields = [
            r.profile,
            r.endpoint,
            r.destination,
            r.port,
            r.transport.to_string(),
            r.protocol,
            r.addresses,
            r.tls,
            r.required.to_string(),
        ];
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

pub fn markdown(inputs: &[Input<'_>]) -> String {
    let mut out = String::from(
        "| Profile | Endpoint | Destination | Port | Transport | Protocol | Resolved addresses | TLS | Required |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows(inputs) {
        let cell = |t: &str| t.replace('|', "\\|");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&r.profile),
            cell(&r.endpoint),
            cell(&r.destination),
            r.port,
            r.transport,
            r.protocol,
            cell(&r.addresses),
            cell(&r.tls),
            if r.required { "yes" } else { "no" }
        ));
    }
    out
}
