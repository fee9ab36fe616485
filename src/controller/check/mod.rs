//! The EgressCheck controller: runs probe Jobs when a run is due, adopts the one in flight,
//! collects results from the finished pod (log + termination message, no API credentials in
//! the pod), and writes status and events only when something changed. Each reconcile reads
//! as its three steps: [`observe`] (every read), [`decide`] (pure), [`apply`] (the writes).

pub mod apply;
pub mod decide;
pub mod jobs;
pub mod observe;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use tracing::instrument;

use super::{Context, Error, Result};
use crate::api::check::EgressCheckStatus;
use jobs::RunJob;

pub const MANAGER: &str = "netreach/egresscheck";

#[instrument(skip_all, fields(namespace = namespace, check = name))]
pub async fn reconcile(namespace: &str, name: &str, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_steps(namespace, name, &ctx).await;
    ctx.metrics.reconciled(
        "egresscheck",
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::reason),
    );
    result
}

async fn reconcile_steps(namespace: &str, name: &str, ctx: &Context) -> Result<Action> {
    let Some(check) = observe::read_fresh(namespace, name, ctx).await? else {
        return Ok(Action::await_change());
    };
    let observed = observe::observe(ctx, check).await?;
    let plan = decide::decide(
        &observed,
        &Time(Timestamp::now()),
        &ctx.settings.probe_image,
    );
    apply::apply(ctx, &observed.check, plan).await
}

/// The number the next run gets: above every run the Jobs or the status know of.
pub fn next_run_number(jobs: &[RunJob], status: &EgressCheckStatus) -> i64 {
    jobs.iter()
        .map(|j| j.run)
        .chain(status.last_run.as_ref().and_then(|r| r.run))
        .chain(status.current_run.as_ref().and_then(|r| r.run))
        .max()
        .unwrap_or(0)
        + 1
}
