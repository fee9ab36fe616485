//! Prometheus metrics: per-endpoint reachability, interception and certificate expiry, probe
//! latency, and reconcile counts, errors and durations.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::probe::result::{Outcome, ProbeResult};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub namespace: String,
    pub check: String,
    pub endpoint: String,
    pub port: String,
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub namespace: String,
    pub check: String,
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
    probe_latency: Family<CheckLabels, Histogram>,
    last_run: Family<CheckLabels, Gauge<f64, AtomicU64>>,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("netreach");
        let endpoint_up = Family::<EndpointLabels, Gauge>::default();
        let tls_intercepted = Family::<EndpointLabels, Gauge>::default();
        let cert_expiry = Family::<EndpointLabels, Gauge<f64, AtomicU64>>::default();
        let probe_latency = Family::<CheckLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let last_run = Family::<CheckLabels, Gauge<f64, AtomicU64>>::default();
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
            "probe_duration_seconds",
            "Time one endpoint×port probe took",
            probe_latency.clone(),
        );
        registry.register(
            "check_last_run_timestamp_seconds",
            "When the check's last probe run finished, as a Unix time",
            last_run.clone(),
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
            probe_latency,
            last_run,
            reconciles,
            reconcile_errors,
            reconcile_duration,
        }
    }
}

impl Metrics {
    /// Records a finished run's rows.
    pub fn record_run(&self, namespace: &str, check: &str, rows: &[ProbeResult], finished_at: f64) {
        let check_labels = CheckLabels {
            namespace: namespace.into(),
            check: check.into(),
        };
        self.last_run.get_or_create(&check_labels).set(finished_at);
        for row in rows {
            let labels = EndpointLabels {
                namespace: namespace.into(),
                check: check.into(),
                endpoint: row.endpoint.clone(),
                port: row.port.to_string(),
                protocol: row.protocol.to_string(),
            };
            self.endpoint_up
                .get_or_create(&labels)
                .set(i64::from(row.outcome != Outcome::Fail));
            self.tls_intercepted
                .get_or_create(&labels)
                .set(i64::from(row.intercepted));
            if let Some(expiry) = row
                .tls
                .as_ref()
                .and_then(|t| t.not_after.parse::<k8s_openapi::jiff::Timestamp>().ok())
            {
                self.cert_expiry
                    .get_or_create(&labels)
                    .set(expiry.as_second() as f64);
            }
            if let Some(ms) = row.latency.total_ms {
                self.probe_latency
                    .get_or_create(&check_labels)
                    .observe(ms as f64 / 1000.0);
            }
        }
    }

    /// Drops the series of a deleted check.
    pub fn forget_check(&self, namespace: &str, check: &str) {
        let check_labels = CheckLabels {
            namespace: namespace.into(),
            check: check.into(),
        };
        self.last_run.remove(&check_labels);
        self.probe_latency.remove(&check_labels);
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
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}
