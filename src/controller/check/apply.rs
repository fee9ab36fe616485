//! The writes of an EgressCheck reconcile, in the order that keeps a crash harmless: start the
//! run, write the status, then clean up and publish what the status now says.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::MANAGER;
use super::decide::{Plan, PlannedEvent, Requeue};
use crate::api::EgressCheck;
use crate::api::check::EgressCheckStatus;
use crate::api::conditions::short_message;
use crate::controller::{Context, Error, Result};

/// Carries out `plan` for `check`.
pub async fn apply(ctx: &Context, check: &EgressCheck, plan: Plan) -> Result<Action> {
    let namespace = check.namespace().unwrap_or_default();
    let name = check.name_any();
    if plan.forget_metrics {
        ctx.metrics.forget_check(&namespace, &name);
    } else {
        // The interval while runs are scheduled: what staleness alerts compare the last run to.
        let interval = check
            .spec
            .interval
            .as_ref()
            .filter(|_| check.spec.suspend != Some(true))
            .map(|i| i.as_duration().as_secs_f64());
        ctx.metrics.observe_check(&namespace, &name, interval);
    }
    if let Some(run) = &plan.record_run {
        ctx.metrics
            .record_run(&namespace, &name, &run.rows, run.finished_at);
    }
    for _ in 0..plan.failed_runs {
        ctx.metrics.record_failed_run(&namespace, &name);
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    for job in &plan.prune_jobs {
        if let Err(e) = jobs.delete(job, &DeleteParams::background()).await {
            debug!(%job, error = %e, "pruning an old probe job failed");
        }
    }
    if let Some(run) = &plan.run {
        create_if_missing(&maps, &run.objects.config_map).await?;
        if let Err(error) = create_if_missing(&jobs, &run.objects.job).await {
            // Left behind without its Job, the ConfigMap would read as a deleted run.
            delete_config(&maps, &run.objects.job.name_any()).await;
            return Err(error);
        }
        info!(job = %run.objects.job.name_any(), trigger = %run.trigger, "started a probe run");
    }
    if let Some(status) = &plan.status {
        write_status(ctx, check, status).await?;
        if plan.record_run.is_some() {
            let summary = status.summary.clone().unwrap_or_default();
            let job = status.last_run.as_ref().and_then(|r| r.job_name.as_deref());
            info!(
                job,
                passed = summary.passed,
                failed = summary.failed,
                "run changed the status"
            );
        }
    } else if plan.record_run.is_some() {
        debug!("run found nothing new");
    }
    if let Some(uid) = &plan.collected {
        ctx.mark_collected(&namespace, &name, uid);
    }
    for row in &plan.opened {
        ctx.metrics.outage_opened(&namespace, &name, row);
    }
    for config in &plan.delete_configs {
        delete_config(&maps, config).await;
    }
    for event in &plan.events {
        publish(ctx, check, event).await;
    }
    if plan.collected.is_some() {
        ctx.runs_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(match plan.requeue() {
        Requeue::After(wait) => Action::requeue(wait),
        Requeue::AwaitChange => Action::await_change(),
    })
}

async fn write_status(
    ctx: &Context,
    check: &EgressCheck,
    status: &EgressCheckStatus,
) -> Result<()> {
    let api: Api<EgressCheck> =
        Api::namespaced(ctx.client.clone(), &check.namespace().unwrap_or_default());
    let body = json!({"apiVersion": EgressCheck::api_version(&()), "kind": EgressCheck::kind(&()), "status": status});
    api.patch_status(
        &check.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Write {
        what: format!("status of EgressCheck {}", check.name_any()),
        source,
    })?;
    ctx.status_writes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

async fn publish(ctx: &Context, check: &EgressCheck, planned: &PlannedEvent) {
    if planned.reason == "RunFailed" {
        warn!(failure = %planned.note, "run failed");
    }
    let event = Event {
        type_: if planned.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: planned.reason.into(),
        note: Some(short_message(&planned.note)),
        action: "Probe".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder().publish(&event, &check.object_ref(&())).await {
        warn!(error = %e, reason = planned.reason, "publishing an event failed");
    }
}

/// Deletes the probe-spec ConfigMap of a run whose outcome is recorded (it only served the
/// pod); one left behind would read as a run someone deleted.
async fn delete_config(maps: &Api<ConfigMap>, name: &str) {
    match maps.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => debug!(%name, error = %e, "deleting a finished run's ConfigMap failed"),
    }
}

async fn create_if_missing<K>(api: &Api<K>, object: &K) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(Error::Write {
            what: format!(
                "{} {}",
                K::kind(&Default::default()),
                object.meta().name.clone().unwrap_or_default()
            ),
            source,
        }),
    }
}
