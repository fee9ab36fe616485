//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas never both act:
//! the holder renews it, a standby takes it over once it has not been renewed for its duration,
//! and the holder stops acting a margin before that.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::instrument::WithSubscriber;
use tracing::{debug, info, warn};

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The lease record last seen and when, on this replica's monotonic clock. As in
    /// client-go, a lease expires when its record has not changed for its duration as *this*
    /// replica saw it: the holder's wall clock, which wrote renewTime, may be skewed.
    observed: std::sync::Mutex<Option<ObservedRecord>>,
}

#[derive(Debug)]
struct ObservedRecord {
    holder: String,
    renew_time: Option<Timestamp>,
    at: Instant,
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    Following(String),
}

impl LeaderElection {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: std::sync::Mutex::default(),
        }
    }

    /// How often the holder renews and a standby looks.
    pub fn renew_period(&self) -> Duration {
        self.lease_duration() / 3
    }

    /// The duration written into the Lease (whole seconds, at least one), which is what a
    /// standby goes by.
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(lease_seconds(self.duration) as u64)
    }

    /// How long after the start of its last successful renewal the holder may act: a third
    /// of the lease short of a standby's takeover, for clock skew between replicas and for
    /// the work in flight to be dropped.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration() * 2 / 3
    }

    /// Runs `work` while this replica holds the lease, forever: takes the lease (waiting as a
    /// standby while another replica holds it), starts `work`, renews, and drops `work` once
    /// a renewal fails to land before [`Self::renew_deadline`] or another replica took over;
    /// then starts over.
    ///
    /// # Guarantees
    /// `work` is dropped (not merely asked to stop) before `renew_deadline` has passed since
    /// the start of the last renewal that succeeded, even when the API server hangs.
    pub async fn lead<W, F>(&self, mut work: W)
    where
        W: FnMut() -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        loop {
            let attempt = Instant::now();
            match self.try_acquire().await {
                Ok(Attempt::Leading) => {}
                Ok(Attempt::Following(holder)) => {
                    debug!(%holder, "standing by");
                    tokio::time::sleep(self.renew_period()).await;
                    continue;
                }
                Err(e) => {
                    warn!(error = &e as &dyn std::error::Error, lease = %self.name, "reading the lease failed; retrying");
                    tokio::time::sleep(self.renew_period()).await;
                    continue;
                }
            }
            if attempt.elapsed() >= self.renew_deadline() {
                // Taking the lease took so long that it is nearly a standby's again.
                continue;
            }
            info!(identity = %self.identity, "leading");
            // Its own task, so a busy controller cannot delay the renewals; it logs where
            // its caller does.
            let mut running = AbortOnDrop(tokio::spawn(work().with_current_subscriber()));
            self.keep_renewing(attempt).await;
            running.0.abort();
            // Only once the task is gone has this replica stopped acting.
            let _ = (&mut running.0).await;
            info!(identity = %self.identity, "stopped acting");
        }
    }

    /// Renews the lease until it cannot: returns when another replica holds it, or when no
    /// renewal succeeded within the deadline. `renewed` is when the last successful attempt
    /// started (the lease's renewTime is taken after it).
    async fn keep_renewing(&self, mut renewed: Instant) {
        let retry = (self.renew_period() / 4).max(Duration::from_millis(100));
        let mut wait = self.renew_period();
        loop {
            let deadline = renewed + self.renew_deadline();
            tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
            let attempt = Instant::now();
            match tokio::time::timeout_at(deadline, self.try_acquire()).await {
                Ok(Ok(Attempt::Leading)) => {
                    renewed = attempt;
                    wait = self.renew_period();
                }
                Ok(Ok(Attempt::Following(holder))) => {
                    warn!(%holder, "lost the lease; standing down");
                    return;
                }
                Ok(Err(e)) if Instant::now() + retry < deadline => {
                    warn!(
                        error = &e as &dyn std::error::Error,
                        "renewing the lease failed; retrying"
                    );
                    wait = retry;
                }
                Ok(Err(e)) => {
                    warn!(
                        error = &e as &dyn std::error::Error,
                        "could not renew the lease in time; standing down before a standby takes over"
                    );
                    return;
                }
                Err(_) => {
                    warn!(
                        deadline = ?self.renew_deadline(),
                        "renewing the lease did not finish in time; standing down before a standby takes over"
                    );
                    return;
                }
            }
        }
    }

    /// Takes or renews the lease if it is free, ours, or expired.
    pub async fn try_acquire(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let ours = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(lease_seconds(self.duration)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(ours),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    info!(identity = %self.identity, "took the lease");
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Attempt::Following("another replica".into()))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
        );
        let expired = self.unchanged_for(&holder, spec.renew_time.as_ref().map(|t| t.0)) > held_for;
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(Attempt::Following(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != self.identity);
        lease.spec = Some(LeaseSpec {
            acquire_time: if holder == self.identity {
                spec.acquire_time
            } else {
                Some(MicroTime(now))
            },
            lease_transitions: Some(transitions),
            ..ours
        });
        // The resourceVersion in the body makes this a compare-and-swap: one replica wins.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if holder != self.identity {
                    info!(identity = %self.identity, previous = %holder, "took over the lease");
                }
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!("lost a race for the lease");
                Ok(Attempt::Following(holder))
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if this replica holds it (on shutdown), as client-go's
    /// ReleaseOnCancel does: no holder and a one-second duration, so a standby takes over at
    /// its next look instead of waiting out the lease. Returns whether it was released.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let now = MicroTime(Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it since: it is no longer ours to release.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl LeaderElection {
    /// How long the lease record (holder, renewTime) has looked the same to this replica.
    fn unchanged_for(&self, holder: &str, renew_time: Option<Timestamp>) -> Duration {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match observed.as_ref() {
            Some(seen) if seen.holder == holder && seen.renew_time == renew_time => {
                now.duration_since(seen.at)
            }
            _ => {
                *observed = Some(ObservedRecord {
                    holder: holder.to_owned(),
                    renew_time,
                    at: now,
                });
                Duration::ZERO
            }
        }
    }
}

/// Aborts the work when leading itself is dropped (the operator stops): it must not outlive
/// the renewals that entitle it to act.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lease_seconds(duration: Duration) -> i32 {
    duration.as_secs().clamp(1, i32::MAX as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn the_holder_stops_acting_a_third_of_the_lease_before_a_standby_may_take_over() {
        let api = || {
            // Never called: building an Api needs a client, not a server.
            let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
            Api::<Lease>::namespaced(kube::Client::try_from(config).unwrap(), "default")
        };
        let election = LeaderElection::new(api(), "l", "a", Duration::from_secs(15));
        assert_eq!(election.renew_deadline(), Duration::from_secs(10));
        assert_eq!(election.renew_period(), Duration::from_secs(5));
        // What a standby goes by is the whole seconds in the Lease.
        let short = LeaderElection::new(api(), "l", "a", Duration::from_millis(1500));
        assert_eq!(short.lease_duration(), Duration::from_secs(1));
        assert!(short.renew_deadline() < Duration::from_secs(1));
        let tiny = LeaderElection::new(api(), "l", "a", Duration::from_millis(10));
        assert_eq!(tiny.lease_duration(), Duration::from_secs(1));
    }

    /// Marks work as acting while it lives, and when it was dropped.
    struct Acting {
        stopped: Arc<Mutex<Option<Timestamp>>>,
    }

    impl Drop for Acting {
        fn drop(&mut self) {
            *self.stopped.lock().unwrap() = Some(Timestamp::now());
        }
    }

    /// Leads with a 2s lease, breaks lease renewals with `fault`, and checks the work was
    /// dropped before the lease's last renewTime plus its duration, when a standby may act.
    async fn stops_acting_before_a_standby_may(fault: impl FnOnce(&kube_sim::faults::Faults)) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = kube_sim::KubeSim::start(kube_sim::Options::default())
            .await
            .unwrap();
        let leases: Api<Lease> = Api::namespaced(sim.client(), "default");
        let election = LeaderElection::new(leases.clone(), "lease", "a", Duration::from_secs(2));
        let acting = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(Mutex::new(None));
        let leader = {
            let (acting, stopped) = (acting.clone(), stopped.clone());
            tokio::spawn(async move {
                election
                    .lead(move || {
                        let guard = Acting {
                            stopped: stopped.clone(),
                        };
                        let acting = acting.clone();
                        async move {
                            let _guard = guard;
                            acting.store(true, Ordering::SeqCst);
                            std::future::pending::<()>().await
                        }
                    })
                    .await
            })
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while !acting.load(Ordering::SeqCst) {
            assert!(tokio::time::Instant::now() < until, "never took the lease");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let a renewal or two land first.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            stopped.lock().unwrap().is_none(),
            "stood down while renewing"
        );
        fault(sim.faults());
        let until = tokio::time::Instant::now() + Duration::from_secs(6);
        let stopped_at = loop {
            if let Some(at) = *stopped.lock().unwrap() {
                break at;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "still acting 6s after renewals stopped working, with a 2s lease"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Reads are not broken: the lease shows the last renewal that landed.
        let spec = leases.get("lease").await.unwrap().spec.unwrap();
        let renewed = spec.renew_time.unwrap().0;
        let takeover = renewed
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap(),
            )))
            .unwrap();
        assert!(
            stopped_at < takeover,
            "acted until {stopped_at}, a standby could act from {takeover}"
        );
        leader.abort();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_holder_whose_renewals_fail_stops_acting_before_a_standby_may() {
        stops_acting_before_a_standby_may(|faults| faults.fail_next("update", "leases", 1000, 500))
            .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_holder_whose_renewals_hang_stops_acting_before_a_standby_may() {
        stops_acting_before_a_standby_may(|faults| {
            faults.delay_next("update", "leases", 1000, Duration::from_secs(60))
        })
        .await;
    }

    #[tokio::test]
    async fn a_standby_judges_expiry_by_its_own_clock_not_the_holders() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sim = kube_sim::KubeSim::start(kube_sim::Options::default())
            .await
            .unwrap();
        let leases: Api<Lease> = Api::namespaced(sim.client(), "default");
        // The holder's clock runs an hour behind: every renewTime it writes is an hour old.
        let skewed =
            || MicroTime(Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1));
        let mut lease = leases
            .create(
                &PostParams::default(),
                &Lease {
                    metadata: ObjectMeta {
                        name: Some("lease".into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some("behind".into()),
                        lease_duration_seconds: Some(1),
                        renew_time: Some(skewed()),
                        ..LeaseSpec::default()
                    }),
                },
            )
            .await
            .unwrap();
        let standby =
            LeaderElection::new(leases.clone(), "lease", "standby", Duration::from_secs(1));
        // While the holder renews, however old its renewTime reads, the standby follows.
        for _ in 0..8 {
            assert_eq!(
                standby.try_acquire().await.unwrap(),
                Attempt::Following("behind".into())
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            lease.spec.as_mut().unwrap().renew_time = Some(skewed());
            lease = leases
                .replace("lease", &PostParams::default(), &lease)
                .await
                .unwrap();
        }
        // Once it stops renewing, the standby takes over after the lease's duration.
        let started = Instant::now();
        let mut attempt = standby.try_acquire().await.unwrap();
        while attempt != Attempt::Leading {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never took over"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            attempt = standby.try_acquire().await.unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "took over {:?} after the last renewal, before the lease's duration",
            started.elapsed()
        );
    }
}
