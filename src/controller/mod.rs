//! The operator: the EgressCheck and ConnectivityProfile controllers, leader election, and the
//! metrics and health endpoints, wired together for `netreach run`.

pub mod check;
pub mod leader;
pub mod line;
pub mod metrics;
pub mod outages;
pub mod policy;
pub mod profile;
pub mod run;
pub mod trigger;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Predicate, PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Semaphore;
use tracing::instrument::WithSubscriber;
use tracing::{error, info, warn};

use crate::api::{ConnectivityProfile, EgressCheck};
use crate::controller::metrics::Metrics;
use crate::probe::dns::Resolvers;
use check::jobs::{JobIndex, job_finished};
use line::Line;
use trigger::CheckTrigger;

/// First retry after a failed reconcile; each further failure of the object doubles it.
const RETRY_BASE: Duration = Duration::from_millis(500);
/// The longest wait between retries of one object.
const RETRY_CAP: Duration = Duration::from_secs(300);
/// How long a turn is kept for a check called from the line before it goes to the next.
const CALL_GRACE: Duration = Duration::from_secs(30);
/// How often series of checks that no longer exist are looked for.
const METRICS_SWEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {what}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write {what}")]
    Write {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid spec: {0}")]
    Invalid(String),
    #[error("cleanup failed: {0}")]
    Cleanup(String),
}

impl Error {
    /// Every [`Error::reason`].
    pub const REASONS: &[&str] = &["ReadFailed", "WriteFailed", "InvalidSpec", "CleanupFailed"];

    /// For metric labels and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Read { .. } => "ReadFailed",
            Error::Write { .. } => "WriteFailed",
            Error::Invalid(_) => "InvalidSpec",
            Error::Cleanup(_) => "CleanupFailed",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of the probe pods.
    pub probe_image: String,
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    /// Elect a leader through a Lease before acting.
    pub leader_election: bool,
    pub lease_namespace: String,
    pub lease_name: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
    /// This replica's name in the Lease.
    pub identity: String,
    /// Reconciles in flight at once (see [`line`]): bounds the operator's memory and
    /// the connections it opens when thousands of objects change together (start-up, relists).
    pub max_concurrent_reconciles: u16,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub resolvers: Resolvers,
    /// The finished Job whose results were last read, per check. Only spares reading a pod
    /// log twice: what a run changes (status, events) is decided against the check's status,
    /// so reading the latest run once more after a restart changes nothing.
    collected: Mutex<HashMap<(String, String), String>>,
    /// Consecutive failed reconciles per object, for backoff.
    retries: Retries,
    /// Status writes made, for tests and benchmarks.
    pub status_writes: AtomicU64,
    /// Finished runs whose outcome was read and applied (status, cleanup, events), for tests
    /// to wait on before asserting that a run changed nothing.
    pub runs_read: AtomicU64,
    /// The turns of EgressCheck reconciles (see [`line`]); a new one each time this replica
    /// starts leading, so turns held by the last term's reconciles cannot leak into it.
    line: Mutex<Arc<Line>>,
    /// ConnectivityProfile reconciles at once (there are few profiles; they wait as tasks).
    profile_permits: Semaphore,
    /// One writer at a time per namespace for its shared EgressFirewall.
    pub(crate) egress_firewall_locks: policy::NamespaceLocks,
    /// What the watches of each scope (a namespace, or all) hold, for reconciles to read.
    scopes: Mutex<Vec<WatchedScope>>,
}

/// The stores one scope's watches keep: profiles and probe Jobs.
#[derive(Clone)]
struct WatchedScope {
    namespace: Option<String>,
    profiles: Store<DeserializeGuard<ConnectivityProfile>>,
    jobs: Arc<JobIndex>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: "netreach".into(),
            instance: Some(settings.identity.clone()),
        };
        Self {
            reporter,
            client,
            metrics,
            resolvers: Resolvers::default(),
            collected: Mutex::default(),
            retries: Retries::default(),
            status_writes: AtomicU64::new(0),
            runs_read: AtomicU64::new(0),
            line: Mutex::new(Arc::new(new_line(&settings))),
            profile_permits: Semaphore::new(usize::from(settings.max_concurrent_reconciles.max(1))),
            scopes: Mutex::default(),
            egress_firewall_locks: policy::NamespaceLocks::default(),
            settings,
        }
    }

    /// A recorder for one event. Not shared: kube-runtime's recorder keeps every event it
    /// published for six minutes and scans them all on each publish, to fold an event into an
    /// earlier one of the same reason, keeping the earlier note. Events here mark transitions
    /// (two of one reason say different things), and with thousands of checks the cache
    /// grew with them.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    fn line(&self) -> Arc<Line> {
        lock(&self.line).clone()
    }

    /// Whether a check's finished Job has been read (and its outcome written) already.
    pub fn collected(&self, namespace: &str, check: &str, job_uid: &str) -> bool {
        let collected = lock(&self.collected);
        collected
            .get(&(namespace.to_owned(), check.to_owned()))
            .map(String::as_str)
            == Some(job_uid)
    }

    /// The scope watching `namespace`: registered by [`controllers`] before any reconcile of it
    /// runs.
    fn scope(&self, namespace: &str) -> WatchedScope {
        lock(&self.scopes)
            .iter()
            .find(|s| s.namespace.as_deref().is_none_or(|ns| ns == namespace))
            .cloned()
            .expect("a reconcile runs only for a watched namespace")
    }

    /// The profiles the watch of `namespace` holds.
    pub fn profile_store(&self, namespace: &str) -> Store<DeserializeGuard<ConnectivityProfile>> {
        self.scope(namespace).profiles
    }

    /// The probe Jobs the watch of `namespace` holds, by check.
    pub fn job_index(&self, namespace: &str) -> Arc<JobIndex> {
        self.scope(namespace).jobs
    }

    fn watch_scope(&self, scope: WatchedScope) {
        let mut scopes = lock(&self.scopes);
        scopes.retain(|s| s.namespace != scope.namespace);
        scopes.push(scope);
    }

    /// Records that a Job's outcome is in the check's status.
    pub fn mark_collected(&self, namespace: &str, check: &str, job_uid: &str) {
        let mut collected = lock(&self.collected);
        collected.insert((namespace.to_owned(), check.to_owned()), job_uid.to_owned());
    }
}

/// Failed reconciles in a row, per object (kind, namespace, name), so a failing object backs
/// off on its own without slowing the others.
#[derive(Default)]
struct Retries {
    failures: Mutex<HashMap<(String, String, String), u32>>,
}

type RetryKey = (String, String, String);

fn retry_key<K: Resource>(object: &ObjectRef<K>) -> RetryKey
where
    K::DynamicType: Clone,
{
    let erased = object.clone().erase();
    (
        erased.dyntype.kind.clone(),
        erased.namespace.clone().unwrap_or_default(),
        erased.name.clone(),
    )
}

/// The wait before retry number `failures` (1 for the first): doubling, capped.
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    RETRY_BASE.saturating_mul(1 << doublings).min(RETRY_CAP)
}

impl Retries {
    /// Counts a failure and says how long to wait before the next attempt.
    fn failed(&self, key: RetryKey) -> Duration {
        let mut failures = lock(&self.failures);
        let count = failures.entry(key).or_default();
        *count = count.saturating_add(1);
        retry_delay(*count)
    }

    /// A success (or the object's deletion) starts the count over.
    fn reset(&self, key: &RetryKey) {
        lock(&self.failures).remove(key);
    }
}

fn error_policy<K>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    match error {
        // Retrying cannot fix the spec; a change to it brings the object back.
        Error::Invalid(_) => Action::await_change(),
        _ => Action::requeue(
            ctx.retries
                .failed(retry_key(&ObjectRef::from_obj(&*object))),
        ),
    }
}

/// A poisoned lock still guards consistent data here: every holder only inserts or removes.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `--max-concurrent-reconciles` turns in line, and a quarter as many again for changes.
fn new_line(settings: &Settings) -> Line {
    let in_line = usize::from(settings.max_concurrent_reconciles.max(1));
    Line::new(in_line, in_line / 4)
}

/// Runs a reconcile and keeps the object's failure count.
async fn counted<K>(
    object: &K,
    ctx: &Context,
    reconcile: impl Future<Output = Result<Action>>,
) -> Result<Action>
where
    K: Resource<DynamicType = ()>,
{
    let result = reconcile.await;
    if result.is_ok() {
        ctx.retries.reset(&retry_key(&ObjectRef::from_obj(object)));
    }
    result
}

async fn reconcile_check(
    guard: Arc<DeserializeGuard<CheckTrigger>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let key = (guard.namespace().unwrap_or_default(), guard.name_any());
    let change = guard.0.as_ref().is_ok_and(CheckTrigger::pending_change);
    // Not its turn: it waits in line and is called again (`Line::calls`) when it is.
    let Some(_turn) = ctx.line().admit(&key, change) else {
        return Ok(Action::await_change());
    };
    // The check is read whole there (one that does not decode is reported there too).
    counted(&*guard, &ctx, check::reconcile(&key.0, &key.1, ctx.clone())).await
}

async fn reconcile_profile(
    guard: Arc<DeserializeGuard<ConnectivityProfile>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let _permit = ctx.profile_permits.acquire().await;
    counted(&*guard, &ctx, async {
        match &guard.0 {
            Ok(profile) => Box::pin(profile::reconcile(Arc::new(profile.clone()), ctx.clone())).await,
            Err(invalid) => {
                warn!(
                    namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
                    name = invalid.metadata.name.as_deref().unwrap_or_default(),
                    error = %invalid.error,
                    "skipping a ConnectivityProfile that does not decode until it changes (its checks are Stalled saying why); correct it and apply it again"
                );
                Ok(Action::await_change())
            }
        }
    })
    .await
}

/// Logs a controller's outcome; a reconcile for an object that is gone clears what was kept
/// for it.
fn finished<K: Resource>(
    ctx: &Context,
    result: Result<(ObjectRef<K>, Action), controller::Error<Error, watcher::Error>>,
    kind: &str,
) {
    match result {
        Ok(_) => {}
        Err(controller::Error::ObjectNotFound(gone)) => {
            ctx.retries.reset(&retry_key(&gone));
            if gone.dyntype.kind == EgressCheck::kind(&()) {
                let namespace = gone.namespace.clone().unwrap_or_default();
                ctx.line().forget(&(namespace, gone.name.clone()));
                ctx.metrics
                    .forget_check(gone.namespace.as_deref().unwrap_or_default(), &gone.name);
            }
        }
        Err(e) => warn!(
            error = &e as &dyn std::error::Error,
            kind, "reconcile failed; retrying with backoff"
        ),
    }
}

/// Drops the metric series of checks gone from `store` (in `namespace`, or anywhere), every
/// few seconds: level-based, so a deletion missed while a watch was down is caught too. Also
/// hands on turns kept for checks whose call was lost.
async fn sweep_metrics(
    ctx: Arc<Context>,
    store: Store<DeserializeGuard<CheckTrigger>>,
    namespace: Option<String>,
) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(METRICS_SWEEP);
    loop {
        tick.tick().await;
        ctx.line().reclaim(CALL_GRACE);
        ctx.metrics.retain_checks(|ns, name| {
            namespace.as_deref().is_some_and(|scope| scope != ns)
                || store.get(&ObjectRef::new(name).within(ns)).is_some()
        });
    }
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The probe Job events that concern its check: a run finished (its results wait to be read),
/// or one not finished is going away (someone deleted it). The rest of a Job's life (created,
/// pod started, pruned once read) would only queue reconciles that find nothing to do.
fn job_trigger(event: watcher::Event<Job>) -> Option<Job> {
    match event {
        watcher::Event::Apply(job) | watcher::Event::InitApply(job) => {
            (job_finished(&job) || job.metadata.deletion_timestamp.is_some()).then_some(job)
        }
        watcher::Event::Delete(job) => (!job_finished(&job)).then_some(job),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// Both controllers for one namespace (or all). Every watch decodes through
/// `DeserializeGuard`, so one object that does not decode cannot stall the others.
fn controllers(ctx: Arc<Context>, namespace: Option<&str>) -> Vec<BoxFuture<'static, ()>> {
    let client = ctx.client.clone();
    let checks: Api<DeserializeGuard<CheckTrigger>> = api_for(&client, namespace);
    let profiles_for_checks: Api<DeserializeGuard<ConnectivityProfile>> =
        api_for(&client, namespace);
    let jobs: Api<Job> = api_for(&client, namespace);
    let profiles: Api<DeserializeGuard<ConnectivityProfile>> = api_for(&client, namespace);
    // The debounce folds triggers that come together (a run finishing as its interval is
    // due, a relist) into one reconcile. Concurrency is bounded by `Context::line`.
    let config = controller::Config::default().debounce(Duration::from_millis(100));
    let (store, writer) = reflector::store();
    let (profile_store, profile_writer) = reflector::store();
    let job_index = Arc::new(JobIndex::default());
    ctx.watch_scope(WatchedScope {
        namespace: namespace.map(str::to_owned),
        profiles: profile_store,
        jobs: job_index.clone(),
    });
    // Status-only changes (this controller's own writes) trigger nothing: generation covers
    // the spec, annotations cover run-now. A relist re-triggers only what changed meanwhile;
    // every check has its own requeue for its interval.
    let check_events = watcher(checks, watcher::Config::default())
        .modify(trigger::slim)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            PredicateConfig::default(),
        )
        .inspect_ok({
            let line = ctx.line();
            move |check| line.expedite(&(check.namespace().unwrap_or_default(), check.name_any()))
        });
    let check_controller = Controller::for_stream(check_events, store.clone())
        .with_config(config.clone())
        .reconcile_on(ctx.line().calls(namespace.map(str::to_owned)));
    let sweep = sweep_metrics(ctx.clone(), store.clone(), namespace.map(str::to_owned));
    let check_ctx = ctx.clone();
    let check_future = check_controller
        .owns_stream(
            watcher(
                jobs,
                watcher::Config::default().labels(&format!(
                    "{}={}",
                    run::MANAGED_BY.0,
                    run::MANAGED_BY.1
                )),
            )
            .inspect_ok(move |event| job_index.apply(event))
            .try_filter_map(|event| std::future::ready(Ok(job_trigger(event)))),
        )
        .watches_stream(
            watcher(profiles_for_checks, watcher::Config::default())
                .reflect(profile_writer)
                .touched_objects(),
            // A profile that does not decode still names itself: its checks learn why.
            move |profile| {
                let namespace = profile.namespace();
                let name = profile.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|guard| match &guard.0 {
                        Ok(check) => {
                            check.namespace() == namespace
                                && check
                                    .spec
                                    .profile_ref
                                    .as_ref()
                                    .is_some_and(|r| r.name == name)
                        }
                        Err(_) => false,
                    })
                    .map(|guard| ObjectRef::from_obj(&*guard))
                    .collect::<Vec<_>>()
            },
        )
        // kube-runtime spawns each reconcile: it logs where this controller does.
        .run(
            |check, ctx| reconcile_check(check, ctx).with_current_subscriber(),
            error_policy,
            ctx.clone(),
        )
        .for_each(move |result| {
            finished(&check_ctx, result, "EgressCheck");
            std::future::ready(())
        });
    let profile_ctx = ctx.clone();
    let profile_future = Controller::new(profiles, watcher::Config::default())
        .with_config(config)
        .run(
            |profile, ctx| reconcile_profile(profile, ctx).with_current_subscriber(),
            error_policy,
            ctx,
        )
        .for_each(move |result| {
            finished(&profile_ctx, result, "ConnectivityProfile");
            std::future::ready(())
        });
    vec![
        Box::pin(check_future),
        Box::pin(profile_future),
        Box::pin(sweep),
    ]
}

/// Forgets every check's series when the controllers stop (this replica no longer leads):
/// a standby's last-known values would never be updated again.
struct ForgetSeriesOnDrop(Arc<Metrics>);

impl Drop for ForgetSeriesOnDrop {
    fn drop(&mut self) {
        self.0.retain_checks(|_, _| false);
    }
}

/// Runs every controller until the future ends (it does not on its own).
async fn run_controllers(ctx: Arc<Context>) {
    let _forget = ForgetSeriesOnDrop(ctx.metrics.clone());
    *lock(&ctx.line) = Arc::new(new_line(&ctx.settings));
    for controller in ["egresscheck", "connectivityprofile"] {
        ctx.metrics.expect_errors(controller, Error::REASONS);
    }
    let namespaces: Vec<Option<String>> = if ctx.settings.namespaces.is_empty() {
        vec![None]
    } else {
        ctx.settings.namespaces.iter().cloned().map(Some).collect()
    };
    let futures: Vec<BoxFuture<'static, ()>> = namespaces
        .iter()
        .flat_map(|ns| controllers(ctx.clone(), ns.as_deref()))
        .collect();
    futures::future::join_all(futures).await;
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `address`.
async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    info!(%address, "serving metrics and health");
    loop {
        let (stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    let ready = ready.clone();
                    async move {
                        let (status, body) = match request.uri().path() {
                            "/metrics" => (200, metrics.encode()),
                            "/healthz" | "/livez" => (200, "ok\n".to_owned()),
                            "/readyz" if ready.load(Ordering::Relaxed) => (200, "ok\n".to_owned()),
                            "/readyz" => (503, "starting\n".to_owned()),
                            _ => (404, "not found\n".to_owned()),
                        };
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)))
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The operator until `shutdown` resolves: serves metrics and health, takes the lease when
/// asked to, runs the controllers while it leads.
pub async fn run(
    ctx: Arc<Context>,
    addresses: Vec<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) {
    let ready = Arc::new(AtomicBool::new(false));
    for address in addresses {
        let metrics = ctx.metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(address, metrics, ready).await {
                error!(%address, error = %e, "the metrics/health endpoint stopped");
            }
        });
    }
    let work = lead_and_run(ctx.client.clone(), ctx.settings.clone(), ctx.clone(), ready);
    tokio::select! {
        _ = work => {}
        _ = shutdown => info!("shutting down"),
    }
    release_lease(&ctx).await;
}

/// Hands the lease over on shutdown (the work was dropped above), bounded so a hung API
/// server cannot hold up the exit.
async fn release_lease(ctx: &Context) {
    let settings = &ctx.settings;
    if !settings.leader_election {
        return;
    }
    let election = leader::LeaderElection::new(
        Api::<Lease>::namespaced(ctx.client.clone(), &settings.lease_namespace),
        &settings.lease_name,
        &settings.identity,
        settings.lease_duration,
    );
    match tokio::time::timeout(Duration::from_secs(2), election.release()).await {
        Ok(Ok(true)) => info!(lease = %settings.lease_name, "released the lease"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => {
            warn!(lease = %settings.lease_name, error = %e, "could not release the lease; a standby takes over once it expires")
        }
        Err(_) => {
            warn!(lease = %settings.lease_name, "releasing the lease timed out; a standby takes over once it expires")
        }
    }
}

async fn lead_and_run(
    client: Client,
    settings: Settings,
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
) {
    if !settings.leader_election {
        ready.store(true, Ordering::Relaxed);
        run_controllers(ctx).await;
        return;
    }
    let election = leader::LeaderElection::new(
        Api::<Lease>::namespaced(client, &settings.lease_namespace),
        &settings.lease_name,
        &settings.identity,
        settings.lease_duration,
    );
    // A standby is ready: it serves health and waits for the lease.
    ready.store(true, Ordering::Relaxed);
    election.lead(|| run_controllers(ctx.clone())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_reason_is_listed() {
        let errors = [
            Error::Read {
                what: String::new(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
            Error::Write {
                what: String::new(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
            Error::Invalid(String::new()),
            Error::Cleanup(String::new()),
        ];
        let reasons: Vec<&str> = errors.iter().map(Error::reason).collect();
        assert_eq!(reasons, Error::REASONS);
    }

    #[test]
    fn retries_back_off_exponentially_per_object_up_to_a_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(2), Duration::from_secs(1));
        assert_eq!(retry_delay(4), Duration::from_secs(4));
        assert_eq!(retry_delay(30), RETRY_CAP);
        assert_eq!(retry_delay(u32::MAX), RETRY_CAP);
        let retries = Retries::default();
        let key = |name: &str| ("EgressCheck".to_owned(), "ns".to_owned(), name.to_owned());
        assert_eq!(retries.failed(key("a")), Duration::from_millis(500));
        assert_eq!(retries.failed(key("a")), Duration::from_secs(1));
        assert_eq!(
            retries.failed(key("b")),
            Duration::from_millis(500),
            "one object's failures do not slow another"
        );
        retries.reset(&key("a"));
        assert_eq!(retries.failed(key("a")), Duration::from_millis(500));
    }
}
