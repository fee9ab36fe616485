//! What a probe pod receives (the probe spec) and how it hands results back without API
//! credentials: the full rows framed in its log, a digest of them in its termination message.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::plan::Target;
use crate::api::check::ResultSummary;
use crate::api::result::ProbeResult;

/// Format version of the framing; bumped when it changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
const BEGIN: &str = "NETREACH-RESULTS-BEGIN";
const END: &str = "NETREACH-RESULTS-END";
/// Where probe pods find Secrets mounted by the operator: `DIR/<secret>/<key>`.
pub const DEFAULT_SECRETS_DIR: &str = "/var/run/netreach/secrets";

/// The input of `netreach probe`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    pub targets: Vec<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub first_address_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_dir: Option<PathBuf>,
}

/// The termination message: small (the kubelet keeps 4 KiB), it vouches for the log payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Digest {
    pub version: u32,
    pub rows: usize,
    /// Hex SHA-256 of the framed payload lines, newline-joined.
    pub sha256: String,
    pub summary: ResultSummary,
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The log text (one JSON row per line between markers) and the termination message.
pub fn encode(results: &[ProbeResult]) -> (String, String) {
    let lines: Vec<String> = results
        .iter()
        .map(|r| serde_json::to_string(r).expect("results serialize"))
        .collect();
    let payload = lines.join("\n");
    let digest = Digest {
        version: FORMAT_VERSION,
        rows: results.len(),
        sha256: sha256_hex(&payload),
        summary: ResultSummary::of(results),
    };
    let log = format!(
        "{BEGIN} v{FORMAT_VERSION} rows={}\n{payload}\n{END}\n",
        results.len()
    );
    (
        log,
        serde_json::to_string(&digest).expect("digest serializes"),
    )
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the termination message is not a probe digest")]
    BadDigest,
    #[error("probe result format v{0} is not understood by this operator")]
    Version(u32),
    #[error("the pod log holds no complete result block")]
    NoResults,
    #[error(
        "the results in the pod log do not match the digest ({found} rows, {expected} expected, or altered)"
    )]
    Mismatch { found: usize, expected: usize },
    #[error("result row {row} does not parse")]
    BadRow { row: usize },
}

/// Recovers the rows from a pod's log, checked against its termination message. The last
/// complete block wins (a restarted container prints again).
pub fn decode(log: &str, termination_message: &str) -> Result<Vec<ProbeResult>, DecodeError> {
    let digest: Digest =
        serde_json::from_str(termination_message.trim()).map_err(|_| DecodeError::BadDigest)?;
    if digest.version != FORMAT_VERSION {
        return Err(DecodeError::Version(digest.version));
    }
    let lines: Vec<&str> = log.lines().collect();
    let end = lines
        .iter()
        .rposition(|l| *l == END)
        .ok_or(DecodeError::NoResults)?;
    let begin = lines[..end]
        .iter()
        .rposition(|l| l.starts_with(BEGIN))
        .ok_or(DecodeError::NoResults)?;
    let rows = &lines[begin + 1..end];
    let payload = rows.join("\n");
    if rows.len() != digest.rows && !(digest.rows == 0 && payload.is_empty())
        || sha256_hex(&payload) != digest.sha256
    {
        return Err(DecodeError::Mismatch {
            found: rows.len(),
            expected: digest.rows,
        });
    }
    rows.iter()
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(row, l)| serde_json::from_str(l).map_err(|_| DecodeError::BadRow { row }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Protocol;
    use crate::api::result::{Latency, Outcome, Reason, Stage};

    fn rows(n: usize) -> Vec<ProbeResult> {
        (0..n)
            .map(|i| ProbeResult {
                endpoint: format!("endpoint-{i}"),
                host: Some(format!("host-{i}.example.com")),
                cidr: None,
                port: 443,
                protocol: Protocol::Https,
                required: true,
                outcome: if i % 7 == 0 { Outcome::Fail } else { Outcome::Pass },
                stage: Stage::Protocol,
                reason: Reason::Reachable,
                message: format!("host-{i}.example.com:443 reachable over HTTPS: HTTP 404 Not Found, with a long enough message"),
                intercepted: false,
                addresses: vec![],
                latency: Latency::default(),
                tls: None,
                detail: Some("HTTP 404 Not Found".into()),
                blocked_by: None,
                source_ip: None,
                last_transition_time: None,
                streak: Default::default(),
            })
            .collect()
    }

    #[test]
    fn six_hundred_rows_round_trip_intact_with_a_small_termination_message() {
        let results = rows(600);
        let (log, termination) = encode(&results);
        assert!(
            termination.len() < 1024,
            "termination message is {} bytes",
            termination.len()
        );
        let noisy = format!("starting probe\n{log}");
        assert_eq!(decode(&noisy, &termination).unwrap(), results);
    }

    #[test]
    fn a_truncated_or_altered_log_is_refused() {
        let results = rows(20);
        let (log, termination) = encode(&results);
        let cut: String = log.lines().take(10).collect::<Vec<_>>().join("\n");
        assert_eq!(decode(&cut, &termination), Err(DecodeError::NoResults));
        let altered = log.replace("endpoint-3\"", "endpoint-X\"");
        assert!(matches!(
            decode(&altered, &termination),
            Err(DecodeError::Mismatch { .. })
        ));
        assert_eq!(decode(&log, "oops"), Err(DecodeError::BadDigest));
    }

    #[test]
    fn empty_results_round_trip() {
        let (log, termination) = encode(&[]);
        assert_eq!(decode(&log, &termination).unwrap(), vec![]);
    }
}
