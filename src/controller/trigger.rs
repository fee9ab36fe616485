//! What the check controller keeps of each EgressCheck between reconciles: its name, the
//! profile it uses, and whether a change someone made waits to be probed. Every reconcile
//! reads the whole check afresh, so the cache and each watch event decode only this much.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::DeserializeGuard;
use serde::Deserialize;

use super::check::status::key_generation;
use crate::api::EgressCheck;
use crate::api::check::{ProfileRef, RUN_NOW_ANNOTATION};

/// An EgressCheck as the controller's watch decodes it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CheckTrigger {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TriggerSpec,
    pub status: Option<TriggerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSpec {
    pub profile_ref: Option<ProfileRef>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    pub last_run: Option<RunKey>,
    pub current_run: Option<RunKey>,
    pub last_run_now: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunKey {
    pub run_key: Option<String>,
}

impl Resource for CheckTrigger {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        EgressCheck::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        EgressCheck::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        EgressCheck::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        EgressCheck::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CheckTrigger {
    /// Whether a change someone made waits to be probed: the check is new or its spec
    /// changed since the last run, a run-now is not answered yet, or the run of such a change
    /// is in flight (only those are recorded as the current run). A profile change is not
    /// seen here; its checks re-run in line.
    pub fn pending_change(&self) -> bool {
        let status = self.status.as_ref();
        let probed_generation = status
            .and_then(|s| s.last_run.as_ref())
            .and_then(|r| key_generation(r.run_key.as_deref()));
        let run_now_unanswered = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RUN_NOW_ANNOTATION))
            .is_some_and(|asked| status.and_then(|s| s.last_run_now.as_ref()) != Some(asked));
        status.is_some_and(|s| s.current_run.is_some())
            || run_now_unanswered
            || probed_generation != Some(self.metadata.generation.unwrap_or(0))
    }
}

/// Drops what the cache does not need and a watch event may carry in bulk.
pub fn slim(guard: &mut DeserializeGuard<CheckTrigger>) {
    if let Ok(check) = &mut guard.0 {
        check.metadata.managed_fields = None;
        if let Some(annotations) = &mut check.metadata.annotations {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn trigger(status: serde_json::Value, annotations: serde_json::Value) -> CheckTrigger {
        serde_json::from_value(json!({
            "apiVersion": "netreach.dev/v1alpha1", "kind": "EgressCheck",
            "metadata": {"name": "c", "generation": 2, "annotations": annotations},
            "spec": {"profileRef": {"name": "p"}, "interval": "30s"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn decodes_only_what_routes_triggers() {
        let check = trigger(
            json!({"lastRun": {"runKey": "2/-/", "run": 3}, "results": [{"endpoint": "a"}]}),
            json!({}),
        );
        assert_eq!(check.spec.profile_ref.unwrap().name, "p");
        assert_eq!(
            check.status.unwrap().last_run.unwrap().run_key.as_deref(),
            Some("2/-/")
        );
    }

    #[test]
    fn changes_wait_to_be_probed_until_their_run_is_read() {
        assert!(trigger(json!(null), json!({})).pending_change(), "new");
        let probed = json!({"lastRun": {"runKey": "2/-/"}});
        assert!(!trigger(probed.clone(), json!({})).pending_change());
        assert!(
            trigger(
                json!({"lastRun": {"runKey": "2/-/"}, "currentRun": {"runKey": "2/-/x"}}),
                json!({})
            )
            .pending_change(),
            "the run of a change in flight"
        );
        assert!(
            trigger(json!({"lastRun": {"runKey": "1/-/"}}), json!({})).pending_change(),
            "spec changed since"
        );
        let asked = json!({RUN_NOW_ANNOTATION: "t1"});
        assert!(
            trigger(probed, asked.clone()).pending_change(),
            "run-now asked"
        );
        assert!(
            !trigger(
                json!({"lastRun": {"runKey": "2/-/t1"}, "lastRunNow": "t1"}),
                asked
            )
            .pending_change(),
            "run-now answered"
        );
    }
}
