//! The EgressCheck kind: where and when a profile's endpoints are probed, and what was found.

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::duration::SpecDuration;
use super::endpoint::{DnsSpec, Endpoint, EndpointDefaults, Labels, ProxySpec};
use crate::api::result::ProbeResult;

/// Annotation whose every new value triggers a run.
pub const RUN_NOW_ANNOTATION: &str = "netreach.dev/run-now";

/// Runs a profile's probes from a chosen place in the cluster, on a schedule, and reports.
// Several printer columns share a type, which clippy mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.profileRef) != has(self.endpoints)").message("set exactly one of profileRef or endpoints").reason(Reason::FieldValueInvalid))]
#[x_kube(validation = Rule::new("!has(self.proxy) || !has(self.endpoints) || self.endpoints.all(e, e.ports.all(p, p.protocol != 'IKE'))").message("IKE runs over UDP and cannot go through an HTTP CONNECT proxy: remove proxy, or move the IKE ports to a check without one").reason(Reason::FieldValueInvalid))]
#[kube(
    group = "netreach.dev",
    version = "v1alpha1",
    kind = "EgressCheck",
    doc = "Probes a profile's endpoints from a chosen place in the cluster on a schedule, and reports what works and why the rest does not.",
    namespaced,
    status = "EgressCheckStatus",
    shortname = "echk",
    category = "netreach",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "All required endpoints pass"
    ),
    printcolumn(
        name = "Pass",
        type_ = "integer",
        json_path = ".status.summary.passed",
        description = "Endpoint×port rows that pass"
    ),
    printcolumn(
        name = "Fail",
        type_ = "integer",
        json_path = ".status.summary.failed",
        description = "Endpoint×port rows that fail"
    ),
    printcolumn(
        name = "Intercepted",
        type_ = "integer",
        json_path = ".status.summary.intercepted",
        description = "Rows whose TLS is re-signed by something in the path"
    ),
    printcolumn(
        name = "Last Run",
        type_ = "date",
        json_path = ".status.lastRun.completionTime",
        description = "When the last run finished"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressCheckSpec {
    /// The ConnectivityProfile (same namespace) whose endpoints are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_ref: Option<ProfileRef>,

    /// Inline endpoints, instead of a profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub endpoints: Option<Vec<Endpoint>>,

    /// Defaults for inline endpoints (a profile brings its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<EndpointDefaults>,

    /// Proxy to probe through; overrides the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,

    /// Name resolution settings; override the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsSpec>,

    /// Time between runs. Absent: run once per change of the check or its profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<SpecDuration>,

    /// Stop scheduling runs (a run in flight finishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// Placement of the probe pod, so it shares the workload's network path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<Runner>,

    /// Finished probe Jobs and history entries to keep. Default: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub history_limit: Option<i32>,

    /// Consecutive failed runs before a row counts as failing (conditions, events, outages).
    /// Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,

    /// Consecutive passing runs before a failing row counts as recovered. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<i32>,
}

/// Reference to a ConnectivityProfile in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileRef {
    /// Profile name.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,
}

/// Where and how the probe pod runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Runner {
    /// Labels for the probe pod, typically the workload's own, so its NetworkPolicies apply
    /// to the probe as well.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub pod_labels: Labels,
    /// Node selector for the probe pod.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub node_selector: Labels,
    /// Tolerations for the probe pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Resources of the probe container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Probe image override. Default: the operator's probe image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Service account for the probe pod (its token is never mounted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
}

/// Observed state of an EgressCheck.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressCheckStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reachable, TLSIntercepted, Degraded, Reconciling, Stalled and Running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Counts over the last run's results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<ResultSummary>,
    /// One row per endpoint×port from the last completed run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<ProbeResult>,
    /// The last completed run that changed this status. A periodic run whose results match
    /// the previous ones writes nothing; its Job and the
    /// `netreach_check_last_run_timestamp_seconds` metric show it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunRecord>,
    /// The run in flight while the check is reconciling a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_run: Option<RunRecord>,
    /// When the next scheduled run starts (as of the last status change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// Recent runs that changed the status, newest first, bounded by historyLimit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RunRecord>,
    /// The last `netreach.dev/run-now` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_now: Option<String>,
    /// Outages per endpoint×port, newest first, the newest 20 kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outages: Vec<Outage>,
}

/// One endpoint×port outage: from the run that made the row count as failing (its start is
/// the first failed run of the streak) to the run that made it count as recovered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outage {
    /// Endpoint name.
    pub endpoint: String,
    pub port: i32,
    /// The first failed run of the streak that opened it.
    pub start: Time,
    /// The run that counted as recovered; absent while the outage goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
    /// The reason of the row when the outage opened.
    pub reason: String,
    /// The message of the row when the outage opened.
    pub message: String,
    /// Failed runs in the outage.
    pub runs: i32,
    /// How it ended, e.g. `restored after 3m12s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<String>,
}

/// Where a result row stands across runs, kept in the status so that a restarted operator
/// carries on counting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Streak {
    /// Failed runs in a row, this one included; absent when the last run passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<i32>,
    /// Passing runs in a row while the row still counts as failing (successThreshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_passes: Option<i32>,
    /// Start of the outage the row is in: set while it counts as failing for conditions,
    /// events and the outage ledger (after failureThreshold failed runs, until
    /// successThreshold passing runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_since: Option<Time>,
}

/// Counts of result rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultSummary {
    pub total: i32,
    pub passed: i32,
    pub warned: i32,
    pub failed: i32,
    pub intercepted: i32,
}

impl ResultSummary {
    pub fn of(results: &[ProbeResult]) -> Self {
        use crate::api::result::Outcome;
        let count =
            |pred: &dyn Fn(&ProbeResult) -> bool| results.iter().filter(|r| pred(r)).count() as i32;
        Self {
            total: results.len() as i32,
            passed: count(&|r| r.outcome == Outcome::Pass),
            warned: count(&|r| r.outcome == Outcome::Warn),
            failed: count(&|r| r.outcome == Outcome::Fail),
            intercepted: count(&|r| r.intercepted),
        }
    }
}

crate::wire_enum! {
    /// What started a probe run.
    pub enum RunTrigger {
        /// The check's first run.
        Created,
        /// The check's spec changed.
        SpecChanged,
        /// The referenced profile changed.
        ProfileChanged,
        /// The `netreach.dev/run-now` annotation got a new value.
        RunNow,
        /// The interval elapsed.
        Interval,
    }
}

crate::wire_enum! {
    /// How a probe run itself went (not its endpoints).
    pub enum RunState {
        Running,
        Succeeded,
        /// The Job failed, vanished, or its results did not come back whole.
        Failed,
    }
}

/// One probe run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Sequence number of the run for this check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// The probe Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// What the run checked: the check's generation, the profile's generation and the
    /// run-now value, as `generation/profileGeneration/runNow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_key: Option<String>,
    /// What started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<RunTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How the run itself went (not the endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warned: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<i32>,
    /// Why the run itself failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
