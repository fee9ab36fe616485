//! Allowlists for perimeter firewall teams: every declared host, CIDR and port with its
//! resolved addresses and TLS expectation, as CSV or Markdown.

use super::Input;
use crate::api::TlsMode;
use crate::api::source::EndpointSource;

/// One row per endpoint×port.
struct Row {
    profile: String,
    endpoint: String,
    destination: String,
    port: u16,
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
            rows.push(Row {
                profile: format!("{}/{}", input.namespace, input.name),
                endpoint: target.endpoint.clone(),
                destination: target
                    .host
                    .clone()
                    .or(target.cidr.clone())
                    .unwrap_or_default(),
                port: target.port,
                protocol: target.protocol.to_string(),
                addresses,
                tls,
                required: target.required,
            });
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
        "profile,endpoint,destination,port,protocol,resolved_addresses,tls,required\n",
    );
    for r in rows(inputs) {
        let fields = [
            r.profile,
            r.endpoint,
            r.destination,
            r.port.to_string(),
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
        "| Profile | Endpoint | Destination | Port | Protocol | Resolved addresses | TLS | Required |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows(inputs) {
        let cell = |t: &str| t.replace('|', "\\|");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&r.profile),
            cell(&r.endpoint),
            cell(&r.destination),
            r.port,
            r.protocol,
            cell(&r.addresses),
            cell(&r.tls),
            if r.required { "yes" } else { "no" }
        ));
    }
    out
}
