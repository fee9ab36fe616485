//! The operator: the EgressCheck and ConnectivityProfile controllers, leader election, and the
//! metrics and health endpoints, wired together for `netreach run`.

pub mod check;
pub mod check_status;
pub mod leader;
pub mod policy;
pub mod profile;
pub mod run;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::{error, info, warn};

use crate::api::{ConnectivityProfile, EgressCheck};
use crate::metrics::Metrics;
use crate::probe::dns::Resolvers;

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
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub resolvers: Resolvers,
    /// The finished Job whose results were last read, per check (in memory: after a restart
    /// the latest run is read once more, which changes nothing).
    collected: Mutex<HashMap<(String, String), String>>,
    /// Status writes made, for tests and benchmarks.
    pub status_writes: AtomicU64,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: "netreach".into(),
            instance: Some(settings.identity.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            resolvers: Resolvers::default(),
            collected: Mutex::default(),
            status_writes: AtomicU64::new(0),
        }
    }

    /// Whether a check's finished Job has been read (and its outcome written) already.
    pub fn collected(&self, namespace: &str, check: &str, job_uid: &str) -> bool {
        let collected = self.collected.lock().unwrap_or_else(|p| p.into_inner());
        collected
            .get(&(namespace.to_owned(), check.to_owned()))
            .map(String::as_str)
            == Some(job_uid)
    }

    /// Records that a Job's outcome is in the check's status.
    pub fn mark_collected(&self, namespace: &str, check: &str, job_uid: &str) {
        let mut collected = self.collected.lock().unwrap_or_else(|p| p.into_inner());
        collected.insert((namespace.to_owned(), check.to_owned()), job_uid.to_owned());
    }
}

fn error_policy<K>(_object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        Error::Invalid(_) => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(1)),
    }
}

async fn reconcile_check(
    guard: Arc<DeserializeGuard<EgressCheck>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    match &guard.0 {
        Ok(check) => check::reconcile(Arc::new(check.clone()), ctx).await,
        Err(invalid) => {
            warn!(name = invalid.metadata.name.as_deref().unwrap_or_default(), error = %invalid.error, "skipping an EgressCheck that does not decode");
            Ok(Action::await_change())
        }
    }
}

async fn reconcile_profile(
    guard: Arc<DeserializeGuard<ConnectivityProfile>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    match &guard.0 {
        Ok(profile) => profile::reconcile(Arc::new(profile.clone()), ctx).await,
        Err(invalid) => {
            warn!(name = invalid.metadata.name.as_deref().unwrap_or_default(), error = %invalid.error, "skipping a ConnectivityProfile that does not decode");
            Ok(Action::await_change())
        }
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

/// Both controllers for one namespace (or all).
fn controllers(ctx: Arc<Context>, namespace: Option<&str>) -> Vec<BoxFuture<'static, ()>> {
    let client = ctx.client.clone();
    let checks: Api<DeserializeGuard<EgressCheck>> = api_for(&client, namespace);
    let profiles_for_checks: Api<ConnectivityProfile> = api_for(&client, namespace);
    let jobs: Api<Job> = api_for(&client, namespace);
    let profiles: Api<DeserializeGuard<ConnectivityProfile>> = api_for(&client, namespace);
    let check_controller = Controller::new(checks, watcher::Config::default());
    let store = check_controller.store();
    let check_future = check_controller
        .owns(
            jobs,
            watcher::Config::default().labels(&format!(
                "{}={}",
                run::MANAGED_BY.0,
                run::MANAGED_BY.1
            )),
        )
        .watches(
            profiles_for_checks,
            watcher::Config::default(),
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
        .run(reconcile_check, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(
                    error = &e as &dyn std::error::Error,
                    "EgressCheck reconcile failed"
                );
            }
        });
    let profile_future = Controller::new(profiles, watcher::Config::default())
        .run(reconcile_profile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(
                    error = &e as &dyn std::error::Error,
                    "ConnectivityProfile reconcile failed"
                );
            }
        });
    vec![Box::pin(check_future), Box::pin(profile_future)]
}

/// Runs every controller until the future ends (it does not on its own).
async fn run_controllers(ctx: Arc<Context>) {
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
    loop {
        match election.try_acquire().await {
            Ok(leader::Attempt::Leading) => {}
            Ok(leader::Attempt::Following(holder)) => {
                tracing::debug!(%holder, "standing by");
                tokio::time::sleep(election.renew_period()).await;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "lease check failed");
                tokio::time::sleep(election.renew_period()).await;
                continue;
            }
        }
        info!(identity = %settings.identity, "leading");
        let controllers = tokio::spawn(run_controllers(ctx.clone()));
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(election.renew_period()).await;
            match election.try_acquire().await {
                Ok(leader::Attempt::Leading) => last_renewal = tokio::time::Instant::now(),
                Ok(leader::Attempt::Following(holder)) => {
                    warn!(%holder, "lost the lease");
                    break;
                }
                Err(e) if last_renewal.elapsed() < Duration::from_secs(15) => {
                    warn!(error = %e, "renewing the lease failed; retrying")
                }
                Err(e) => {
                    warn!(error = %e, "could not renew the lease in time; standing down");
                    break;
                }
            }
        }
        controllers.abort();
    }
}
