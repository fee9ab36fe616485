//! Prometheus metrics: per-endpoint reachability, outages, interception, certificate expiry and
//! probe duration, probe latency per namespace and stage, runs per check, and reconcile counts,
//! errors and durations. A check's series live as long as the check and its endpoints do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::api::result::{Outcome, ProbeResult};

/// Every family keeps its own copy of each series' label set: the text is shared (`Arc<str>`),
/// and numbers and names stay numbers and static names, so a copy allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub namespace: Arc<str>,
    pub check: Arc<str>,
    pub endpoint: Arc<str>,
    pub port: i32,
    pub protocol: &'static str,
}

impl EndpointLabels {
    fn of(namespace: &Arc<str>, check: &Arc<str>, row: &ProbeResult) -> Self {
        EndpointLabels {
            namespace: namespace.clone(),
            check: check.clone(),
            endpoint: row.endpoint.as_str().into(),
            port: row.port,
            protocol: row.protocol.as_str(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CheckLabels {
    pub namespace: Arc<str>,
    pub check: Arc<str>,
}

/// An endpoint's labels and whether it is required, for the series alerts page on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutageLabels {
    pub namespace: Arc<str>,
    pub check: Arc<str>,
    pub endpoint: Arc<str>,
    pub port: i32,
    pub protocol: &'static str,
    pub required: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub namespace: Arc<str>,
    pub check: Arc<str>,
    /// succeeded (results came back) or failed (the run itself failed).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub namespace: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub reason: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    endpoint_up: Family<EndpointLabels, Gauge>,
    tls_intercepted: Family<EndpointLabels, Gauge>,
    cert_expiry: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    probe_duration: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    outage_active: Family<OutageLabels, Gauge>,
    outages: Family<EndpointLabels, Counter>,
    consecutive_failures: Family<EndpointLabels, Gauge>,
    /// Per namespace and stage, like `probe_latency`.
    stage_latency: Family<StageLabels, Histogram>,
    /// Per namespace, not per check: a histogram is 15 series, and with thousands of checks
    /// per-check histograms were most of the exposition (and of a scrape's memory).
    probe_latency: Family<NamespaceLabels, Histogram>,
    last_run: Family<CheckLabels, Gauge<f64, AtomicU64>>,
    interval: Family<CheckLabels, Gauge<f64, AtomicU64>>,
    runs: Family<RunLabels, Counter>,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    /// The endpoint series each check has, with whether each is required, so the ones it no
    /// longer has can be removed (a metric family cannot list its series).
    endpoints: Mutex<HashMap<CheckLabels, Vec<(EndpointLabels, bool)>>>,
    /// Length of the last encoding.
    encoded_len: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("netreach");
        let endpoint_up = Family::<EndpointLabels, Gauge>::default();
        let tls_intercepted = Family::<EndpointLabels, Gauge>::default();
        let cert_expiry = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        let probe_duration = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        let probe_latency = Family::<NamespaceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let last_run = Family::<CheckLabels, Gauge<f64, AtomicU64>>::default();
        let outage_active = Family::<OutageLabels, Gauge>::default();
        let outages = Family::<EndpointLabels, Counter>::default();
        let consecutive_failures = Family::<EndpointLabels, Gauge>::default();
        let stage_latency = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let interval = Family::<CheckLabels, Gauge<f64, AtomicU64>>::default();
        let runs = Family::<RunLabels, Counter>::default();
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            });
        registry.register(
            "endpoint_up",
            "Whether the endpoint×port passed its last probe (1) or not (0)",
            endpoint_up.clone(),
        );
        registry.register(
            "endpoint_tls_intercepted",
            "Whether TLS to the endpoint×port is re-signed by something in the path",
            tls_intercepted.clone(),
        );
        registry.register(
            "endpoint_cert_expiry_timestamp_seconds",
            "When the endpoint's leaf certificate expires, as a Unix time",
            cert_expiry.clone(),
        );
        registry.register(
            "endpoint_probe_duration_seconds",
            "Time the endpoint×port's last probe took",
            probe_duration.clone(),
        );
        registry.register(
            "endpoint_outage_active",
            "Whether the endpoint×port is in an outage (1): it failed failureThreshold runs in a row and has not passed successThreshold since",
            outage_active.clone(),
        );
        registry.register(
            "endpoint_outages",
            "Outages of the endpoint×port opened (the EndpointUnreachable events)",
            outages.clone(),
        );
        registry.register(
            "endpoint_consecutive_failures",
            "Failed runs in a row of the endpoint×port (0 when the last one passed)",
            consecutive_failures.clone(),
        );
        registry.register(
            "probe_stage_duration_seconds",
            "Time one probe stage (dns, connect, tls, protocol) took, over every check of the namespace",
            stage_latency.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "Time one endpoint×port probe took, over every check of the namespace",
            probe_latency.clone(),
        );
        registry.register(
            "check_last_run_timestamp_seconds",
            "When the check's last probe run finished, as a Unix time",
            last_run.clone(),
        );
        registry.register(
            "check_interval_seconds",
            "The check's interval between runs (absent for a suspended check or one without interval)",
            interval.clone(),
        );
        registry.register(
            "check_runs",
            "Finished probe runs by result: succeeded (results came back) or failed (the run itself failed)",
            runs.clone(),
        );
        registry.register("reconcile", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_duration.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            endpoint_up,
            tls_intercepted,
            cert_expiry,
            probe_duration,
            outage_active,
            outages,
            consecutive_failures,
            stage_latency,
            probe_latency,
            last_run,
            interval,
            runs,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            endpoints: Mutex::default(),
            encoded_len: AtomicUsize::new(0),
        }
    }
}

fn outage_labels(labels: &EndpointLabels, required: bool) -> OutageLabels {
    OutageLabels {
        namespace: labels.namespace.clone(),
        check: labels.check.clone(),
        endpoint: labels.endpoint.clone(),
        port: labels.port,
        protocol: labels.protocol,
        required,
    }
}

impl Metrics {
    /// Records a finished run's rows; series of endpoints the run no longer has are removed,
    /// and so is the expiry of a row that presented no certificate this time.
    pub fn record_run(&self, namespace: &str, check: &str, rows: &[ProbeResult], finished_at: f64) {
        let check_labels = CheckLabels {
            namespace: namespace.into(),
            check: check.into(),
        };
        let (namespace_label, check_label) = (&check_labels.namespace, &check_labels.check);
        self.last_run.get_or_create(&check_labels).set(finished_at);
        self.run_finished(namespace, check, true);
        let mut current = HashMap::new();
        for row in rows {
            let labels = EndpointLabels::of(namespace_label, check_label, row);
            self.endpoint_up
                .get_or_create(&labels)
                .set(i64::from(row.outcome != Outcome::Fail));
            self.tls_intercepted
                .get_or_create(&labels)
                .set(i64::from(row.intercepted));
            match row
                .tls
                .as_ref()
                .and_then(|t| t.not_after.parse::<k8s_openapi::jiff::Timestamp>().ok())
            {
                Some(expiry) => {
                    self.cert_expiry
                        .get_or_create(&labels)
                        .set(expiry.as_second() as f64);
                }
                // A last-known expiry would keep alerting on a certificate nobody presents now.
                None => {
                    self.cert_expiry.remove(&labels);
                }
            }
            self.outage_active
                .get_or_create(&outage_labels(&labels, row.required))
                .set(i64::from(row.streak.outage_since.is_some()));
            self.consecutive_failures
                .get_or_create(&labels)
                .set(i64::from(row.streak.consecutive_failures.unwrap_or(0)));
            // Created at 0, so the first outage shows as an increase.
            let _ = self.outages.get_or_create(&labels);
            for (stage, ms) in [
                ("dns", row.latency.dns_ms),
                ("connect", row.latency.connect_ms),
                ("tls", row.latency.tls_ms),
                ("protocol", row.latency.protocol_ms),
            ] {
                if let Some(ms) = ms {
                    self.stage_latency
                        .get_or_create(&StageLabels {
                            namespace: namespace.into(),
                            stage: stage.into(),
                        })
                        .observe(ms as f64 / 1000.0);
                }
            }
            if let Some(ms) = row.latency.total_ms {
                let seconds = ms as f64 / 1000.0;
                self.probe_duration.get_or_create(&labels).set(seconds);
                self.probe_latency
                    .get_or_create(&NamespaceLabels {
                        namespace: namespace.into(),
                    })
                    .observe(seconds);
            }
            current.insert(labels, row.required);
        }
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let kept: Vec<(EndpointLabels, bool)> =
            current.iter().map(|(l, r)| (l.clone(), *r)).collect();
        let previous = endpoints.insert(check_labels, kept);
        for (gone, required) in previous.iter().flatten() {
            match current.get(gone) {
                None => self.remove_endpoint(gone, *required),
                // Required or not is a label: the series under the old value goes.
                Some(now) if now != required => {
                    self.outage_active.remove(&outage_labels(gone, *required));
                }
                Some(_) => {}
            }
        }
    }

    /// Counts a run that failed as a run (no results came back).
    pub fn record_failed_run(&self, namespace: &str, check: &str) {
        self.run_finished(namespace, check, false);
    }

    fn run_finished(&self, namespace: &str, check: &str, succeeded: bool) {
        self.observe_runs(namespace, check);
        self.runs
            .get_or_create(&RunLabels {
                namespace: namespace.into(),
                check: check.into(),
                result: if succeeded { "succeeded" } else { "failed" },
            })
            .inc();
    }

    /// Creates the check's run counters at 0 (so that its first failed run shows as an
    /// increase) and notes the check, so that forgetting it takes them along.
    fn observe_runs(&self, namespace: &str, check: &str) {
        let (namespace, check): (Arc<str>, Arc<str>) = (namespace.into(), check.into());
        for result in ["succeeded", "failed"] {
            let _ = self.runs.get_or_create(&RunLabels {
                namespace: namespace.clone(),
                check: check.clone(),
                result,
            });
        }
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(CheckLabels { namespace, check })
            .or_default();
    }

    /// Records what a reconcile knows of a check: its interval while runs are scheduled
    /// (`None` when suspended or without interval), and its run counters.
    pub fn observe_check(&self, namespace: &str, check: &str, interval: Option<f64>) {
        self.observe_runs(namespace, check);
        let labels = CheckLabels {
            namespace: namespace.into(),
            check: check.into(),
        };
        match interval {
            Some(seconds) => {
                self.interval.get_or_create(&labels).set(seconds);
            }
            None => {
                self.interval.remove(&labels);
            }
        }
    }

    /// Counts an outage the ledger opened for the endpoint×port of `row`.
    pub fn outage_opened(&self, namespace: &str, check: &str, row: &ProbeResult) {
        self.outages
            .get_or_create(&EndpointLabels::of(&namespace.into(), &check.into(), row))
            .inc();
    }

    fn remove_endpoint(&self, labels: &EndpointLabels, required: bool) {
        self.endpoint_up.remove(labels);
        self.tls_intercepted.remove(labels);
        self.cert_expiry.remove(labels);
        self.probe_duration.remove(labels);
        self.outage_active.remove(&outage_labels(labels, required));
        self.outages.remove(labels);
        self.consecutive_failures.remove(labels);
    }

    /// Drops every series of a check (deleted, or no longer ours to report).
    pub fn forget_check(&self, namespace: &str, check: &str) {
        let check_labels = CheckLabels {
            namespace: namespace.into(),
            check: check.into(),
        };
        self.last_run.remove(&check_labels);
        self.interval.remove(&check_labels);
        for result in ["succeeded", "failed"] {
            self.runs.remove(&RunLabels {
                namespace: check_labels.namespace.clone(),
                check: check_labels.check.clone(),
                result,
            });
        }
        let removed = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&check_labels);
        for (labels, required) in removed.iter().flatten() {
            self.remove_endpoint(labels, *required);
        }
    }

    /// The checks that have series, as (namespace, name).
    pub fn checks(&self) -> Vec<(String, String)> {
        let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let mut checks: Vec<(String, String)> = endpoints
            .keys()
            .map(|c| (c.namespace.to_string(), c.check.to_string()))
            .collect();
        checks.sort();
        checks
    }

    /// Drops the series of every check `keep` says no to.
    pub fn retain_checks(&self, keep: impl Fn(&str, &str) -> bool) {
        for (namespace, check) in self.checks() {
            if !keep(&namespace, &check) {
                self.forget_check(&namespace, &check);
            }
        }
    }

    /// Creates a controller's error series at zero, so they exist before the first failure
    /// (a series that appears only with its first increment hides that increase from rate()).
    pub fn expect_errors(&self, controller: &str, reasons: &[&str]) {
        for reason in reasons {
            // Creating the series is the point; the guard is not needed.
            let _ = self.reconcile_errors.get_or_create(&ErrorLabels {
                controller: controller.into(),
                reason: (*reason).into(),
            });
        }
    }

    pub fn reconciled(&self, controller: &str, seconds: f64, error: Option<&str>) {
        let labels = ControllerLabels {
            controller: controller.into(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(seconds);
        if let Some(reason) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    controller: controller.into(),
                    reason: reason.into(),
                })
                .inc();
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        // Sized from the last scrape: with thousands of checks the text is megabytes, and
        // growing it by doubling would hold up to twice that at once.
        let last = self.encoded_len.load(Ordering::Relaxed);
        let mut text = String::with_capacity(last + last / 16);
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        self.encoded_len.store(text.len(), Ordering::Relaxed);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Protocol;
    use crate::api::result::{Latency, Reason, Stage, TlsFacts};

    fn row(endpoint: &str, tls: bool) -> ProbeResult {
        ProbeResult {
            endpoint: endpoint.into(),
            host: None,
            cidr: Some("127.0.0.1".into()),
            port: 443,
            protocol: Protocol::Https,
            required: true,
            outcome: Outcome::Pass,
            stage: Stage::Protocol,
            reason: Reason::Reachable,
            message: "m".into(),
            intercepted: false,
            addresses: vec![],
            latency: Latency {
                total_ms: Some(12),
                ..Latency::default()
            },
            tls: tls.then(|| TlsFacts {
                not_after: "2030-01-01T00:00:00Z".into(),
                ..TlsFacts::default()
            }),
            detail: None,
            blocked_by: None,
            source_ip: None,
            last_transition_time: None,
            streak: Default::default(),
        }
    }

    fn series(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains('{'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn endpoints_gone_from_the_results_lose_their_series() {
        let metrics = Metrics::default();
        metrics.record_run("ns", "c", &[row("a", true), row("b", true)], 1.0);
        assert_eq!(series(&metrics, "netreach_endpoint_up").len(), 2);
        assert_eq!(
            series(&metrics, "netreach_endpoint_cert_expiry_timestamp_seconds").len(),
            2
        );
        // "b" left the profile, "a" no longer presents a certificate.
        metrics.record_run("ns", "c", &[row("a", false)], 2.0);
        let up = series(&metrics, "netreach_endpoint_up");
        assert_eq!(up.len(), 1, "{up:?}");
        assert!(up[0].contains("endpoint=\"a\""));
        assert!(series(&metrics, "netreach_endpoint_tls_intercepted").len() == 1);
        assert!(series(&metrics, "netreach_endpoint_cert_expiry_timestamp_seconds").is_empty());
        let durations = series(&metrics, "netreach_endpoint_probe_duration_seconds");
        assert_eq!(durations.len(), 1, "{durations:?}");
        assert!(durations[0].ends_with(" 0.012"), "{durations:?}");
        // Three probes of namespace ns so far, whichever check they belonged to.
        assert_eq!(
            series(&metrics, "netreach_probe_duration_seconds_count"),
            ["netreach_probe_duration_seconds_count{namespace=\"ns\"} 3"]
        );
    }

    #[test]
    fn outages_streaks_runs_and_intervals_have_series_that_leave_with_the_check() {
        let metrics = Metrics::default();
        metrics.observe_check("ns", "c", Some(60.0));
        // Before any run: the run counters exist at 0, and the interval.
        let runs = series(&metrics, "netreach_check_runs_total");
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(runs.iter().all(|l| l.ends_with(" 0")), "{runs:?}");
        assert_eq!(
            series(&metrics, "netreach_check_interval_seconds"),
            ["netreach_check_interval_seconds{namespace=\"ns\",check=\"c\"} 60.0"]
        );
        let mut failing = row("a", false);
        failing.outcome = Outcome::Fail;
        failing.latency.dns_ms = Some(3);
        failing.latency.connect_ms = Some(4);
        failing.streak.consecutive_failures = Some(2);
        failing.streak.outage_since = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
        ));
        metrics.record_run("ns", "c", &[failing.clone(), row("b", false)], 1.0);
        metrics.record_failed_run("ns", "c");
        let active = series(&metrics, "netreach_endpoint_outage_active");
        assert!(
            active.contains(&"netreach_endpoint_outage_active{namespace=\"ns\",check=\"c\",endpoint=\"a\",port=\"443\",protocol=\"HTTPS\",required=\"true\"} 1".to_owned()),
            "{active:?}"
        );
        assert!(
            active
                .iter()
                .any(|l| l.contains("endpoint=\"b\"") && l.ends_with(" 0"))
        );
        assert!(
            series(&metrics, "netreach_endpoint_consecutive_failures")
                .iter()
                .any(|l| l.contains("endpoint=\"a\"") && l.ends_with(" 2"))
        );
        // Outage counters exist at 0 until the ledger opens one.
        assert!(
            series(&metrics, "netreach_endpoint_outages_total")
                .iter()
                .all(|l| l.ends_with(" 0"))
        );
        metrics.outage_opened("ns", "c", &failing);
        assert!(
            series(&metrics, "netreach_endpoint_outages_total")
                .iter()
                .any(|l| l.contains("endpoint=\"a\"") && l.ends_with(" 1"))
        );
        let runs = series(&metrics, "netreach_check_runs_total");
        assert!(
            runs.iter()
                .any(|l| l.contains("succeeded") && l.ends_with(" 1")),
            "{runs:?}"
        );
        assert!(
            runs.iter()
                .any(|l| l.contains("failed") && l.ends_with(" 1")),
            "{runs:?}"
        );
        let stages = series(&metrics, "netreach_probe_stage_duration_seconds_count");
        assert_eq!(stages.len(), 2, "dns and connect were measured: {stages:?}");
        // "a" becomes optional: its outage series moves to required="false".
        failing.required = false;
        metrics.record_run("ns", "c", &[failing, row("b", false)], 2.0);
        let active = series(&metrics, "netreach_endpoint_outage_active");
        assert_eq!(active.len(), 2, "{active:?}");
        assert!(
            active
                .iter()
                .any(|l| l.contains("endpoint=\"a\"") && l.contains("required=\"false\""))
        );
        // Suspended: no interval, so no staleness alert.
        metrics.observe_check("ns", "c", None);
        assert!(series(&metrics, "netreach_check_interval_seconds").is_empty());
        metrics.forget_check("ns", "c");
        let text = metrics.encode();
        assert!(!text.contains("check=\"c\""), "{text}");
    }

    #[test]
    fn a_forgotten_check_has_no_series_left_and_others_keep_theirs() {
        let metrics = Metrics::default();
        metrics.record_run("ns", "gone", &[row("a", true)], 1.0);
        metrics.record_run("ns", "kept", &[row("a", true)], 1.0);
        metrics.retain_checks(|_, check| check == "kept");
        let text = metrics.encode();
        assert!(!text.contains("check=\"gone\""), "{text}");
        assert!(text.contains("netreach_endpoint_up{") && text.contains("check=\"kept\""));
        assert_eq!(metrics.checks(), [("ns".to_owned(), "kept".to_owned())]);
    }
}
