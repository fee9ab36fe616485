//! Rendering results for people (an aligned table), for machines (JSON) and for CI gates
//! (JUnit XML), and the framed form probe pods print for the operator to collect.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::api::check::ResultSummary;
use crate::api::result::{Outcome, ProbeResult};

/// Results of one profile or check.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupResults {
    /// `ConnectivityProfile ns/name` or `EgressCheck ns/name`.
    pub source: String,
    pub results: Vec<ProbeResult>,
}

/// The JSON document of `netreach check -o json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub summary: ResultSummary,
    /// Required rows that fail.
    pub required_failed: i32,
    pub groups: Vec<GroupResults>,
}

impl Report {
    pub fn new(groups: Vec<GroupResults>) -> Self {
        let all: Vec<ProbeResult> = groups
            .iter()
            .flat_map(|g| g.results.iter().cloned())
            .collect();
        Self {
            summary: ResultSummary::of(&all),
            required_failed: all
                .iter()
                .filter(|r| r.required && r.outcome == Outcome::Fail)
                .count() as i32,
            groups,
        }
    }
}

fn paint(text: &str, outcome: Outcome, colour: bool) -> String {
    if !colour {
        return text.to_owned();
    }
    let code = match outcome {
        Outcome::Pass => "32",
        Outcome::Warn => "33",
        Outcome::Fail => "31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The reason, with how a Blocked port was blocked or the source address an echo saw.
fn reason_cell(r: &ProbeResult) -> String {
    match (&r.blocked_by, &r.source_ip) {
        (Some(how), _) => format!("{} ({how})", r.reason),
        (None, Some(ip)) => format!("{} (from {ip})", r.reason),
        (None, None) => r.reason.to_string(),
    }
}

/// An aligned table per group, then the explanation of every row that is not a clean pass.
pub fn table(report: &Report, colour: bool) -> String {
    let mut out = String::new();
    for group in &report.groups {
        let _ = writeln!(out, "{}", group.source);
        let headers = [
            "OUTCOME", "ENDPOINT", "TARGET", "PROTOCOL", "STAGE", "REASON", "TIME",
        ];
        let rows: Vec<[String; 7]> = group
            .results
            .iter()
            .map(|r| {
                let outcome = if r.required || r.outcome == Outcome::Pass {
                    r.outcome.to_string()
                } else {
                    format!("{} (optional)", r.outcome)
                };
                [
                    outcome,
                    r.endpoint.clone(),
                    r.target(),
                    r.protocol.to_string(),
                    r.stage.to_string(),
                    reason_cell(r),
                    r.latency
                        .total_ms
                        .map(|ms| format!("{ms}ms"))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: &[String; 7], outcome: Option<Outcome>| {
            let mut text = String::from("  ");
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                let padded = format!("{cell:<width$}");
                let padded = match (i, outcome) {
                    (0, Some(o)) => paint(&padded, o, colour),
                    _ => padded,
                };
                text.push_str(&padded);
                if i + 1 < cells.len() {
                    text.push_str("  ");
                }
            }
            text.trim_end().to_owned()
        };
        let _ = writeln!(out, "{}", line(&headers.map(str::to_owned), None));
        for (row, result) in rows.iter().zip(&group.results) {
            let _ = writeln!(out, "{}", line(row, Some(result.outcome)));
        }
        let notes: Vec<&ProbeResult> = group
            .results
            .iter()
            .filter(|r| r.outcome != Outcome::Pass)
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(out);
        }
        for r in notes {
            let _ = writeln!(
                out,
                "  {} {}: {}",
                paint(&r.outcome.to_string(), r.outcome, colour),
                r.endpoint,
                r.message
            );
        }
        let _ = writeln!(out);
    }
    let s = &report.summary;
    let _ = writeln!(
        out,
        "{} rows: {} pass, {} warn, {} fail ({} required), {} intercepted",
        s.total, s.passed, s.warned, s.failed, report.required_failed, s.intercepted
    );
    out
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: a testsuite per group, a testcase per endpoint×port; a failing required row is
/// a `<failure>`, a failing optional one a `<skipped>` with the reason, a warning goes to
/// `<system-out>`.
pub fn junit(report: &Report) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"netreach\" tests=\"{}\" failures=\"{}\">",
        report.summary.total, report.required_failed
    );
    for group in &report.groups {
        let failures = group
            .results
            .iter()
            .filter(|r| r.required && r.outcome == Outcome::Fail)
            .count();
        let skipped = group
            .results
            .iter()
            .filter(|r| !r.required && r.outcome == Outcome::Fail)
            .count();
        let seconds: f64 = group
            .results
            .iter()
            .filter_map(|r| r.latency.total_ms)
            .sum::<u64>() as f64
            / 1000.0;
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{seconds:.3}\">",
            xml_escape(&group.source),
            group.results.len()
        );
        for r in &group.results {
            let name = format!("{} {} {}", r.endpoint, r.target(), r.protocol);
            let time = r.latency.total_ms.unwrap_or(0) as f64 / 1000.0;
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{time:.3}\"",
                xml_escape(&group.source),
                xml_escape(&name)
            );
            match (r.outcome, r.required) {
                (Outcome::Pass, _) => out.push_str("/>\n"),
                (Outcome::Fail, true) => {
                    let _ = writeln!(
                        out,
                        ">\n      <failure type=\"{}\" message=\"{}\">{}</failure>\n    </testcase>",
                        r.stage,
                        r.reason,
                        xml_escape(&r.message)
                    );
                }
                (Outcome::Fail, false) => {
                    let _ = writeln!(
                        out,
                        ">\n      <skipped message=\"optional endpoint fails: {}: {}\"/>\n    </testcase>",
                        r.reason,
                        xml_escape(&r.message)
                    );
                }
                (Outcome::Warn, _) => {
                    let _ = writeln!(
                        out,
                        ">\n      <system-out>warning {}: {}</system-out>\n    </testcase>",
                        r.reason,
                        xml_escape(&r.message)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Protocol;
    use crate::api::result::{Latency, Reason, Stage};

    fn result(endpoint: &str, outcome: Outcome, required: bool) -> ProbeResult {
        ProbeResult {
            endpoint: endpoint.into(),
            host: Some("a.example.com".into()),
            cidr: None,
            port: 443,
            protocol: Protocol::Https,
            required,
            outcome,
            stage: Stage::Connect,
            reason: if outcome == Outcome::Pass {
                Reason::Reachable
            } else {
                Reason::ConnectionRefused
            },
            message: "connection to <127.0.0.1:443> refused & more".into(),
            intercepted: false,
            addresses: vec![],
            latency: Latency {
                total_ms: Some(12),
                ..Latency::default()
            },
            tls: None,
            detail: None,
            blocked_by: None,
            source_ip: None,
            last_transition_time: None,
            streak: Default::default(),
        }
    }

    fn report() -> Report {
        Report::new(vec![GroupResults {
            source: "ConnectivityProfile ns/p".into(),
            results: vec![
                result("ok", Outcome::Pass, true),
                result("down", Outcome::Fail, true),
                result("extra", Outcome::Fail, false),
            ],
        }])
    }

    #[test]
    fn summary_counts_required_failures_apart() {
        let report = report();
        assert_eq!(report.summary.total, 3);
        assert_eq!(report.summary.failed, 2);
        assert_eq!(report.required_failed, 1);
    }

    #[test]
    fn junit_has_one_testcase_per_row_and_escapes_messages() {
        let xml = junit(&report());
        assert_eq!(xml.matches("<testcase ").count(), 3);
        assert_eq!(xml.matches("<failure ").count(), 1);
        assert_eq!(xml.matches("<skipped ").count(), 1);
        assert!(xml.contains("&lt;127.0.0.1:443&gt; refused &amp; more"));
        assert!(!xml.contains("<127.0.0.1"));
    }

    #[test]
    fn table_aligns_columns_and_explains_failures() {
        let text = table(&report(), false);
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.trim_start().starts_with("OUTCOME"))
            .unwrap();
        let column = lines[header].find("ENDPOINT").unwrap();
        assert_eq!(lines[header + 1].find("ok"), Some(column));
        assert_eq!(lines[header + 2].find("down"), Some(column));
        assert!(text.contains("Fail down: connection to"));
        assert!(text.contains("Fail (optional)"));
        assert!(!text.contains('\x1b'));
    }
}
