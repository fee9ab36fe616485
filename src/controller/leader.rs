//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas never both act:
//! the holder renews it, a standby takes it over once it has not been renewed for its duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tracing::{debug, info};

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
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
        }
    }

    pub fn renew_period(&self) -> Duration {
        self.duration / 3
    }

    /// Takes or renews the lease if it is free, ours, or expired.
    pub async fn try_acquire(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let ours = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
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
        let renewed = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let held_for = i64::from(spec.lease_duration_seconds.unwrap_or(15)) * 1000;
        let expired = now.as_millisecond() - renewed.as_millisecond() > held_for;
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
}
